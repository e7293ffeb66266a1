//! Executors: what turns a bundle into running processes. The default embeds youki's libcontainer;
//! `--runtime runc|PATH` hands the same bundle to an external OCI runtime.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::error::{Error, Result};

/// How a container ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Exit {
    /// The status as a shell reports it: the exit code, or 128 + signal.
    pub code: i32,
    /// The kernel's OOM killer killed a process of the container.
    pub oom_killed: bool,
}

/// How a container's processes are started.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Executor {
    /// youki's libcontainer, in this process (which must be single-threaded when it forks).
    Embedded,
    /// An OCI runtime binary with runc's command line (`--root DIR run --bundle B --pid-file F ID`).
    External(PathBuf),
}

impl Executor {
    /// `--runtime NAME|PATH`: a name is looked up in PATH; "libcontainer" or none is the default.
    pub fn from_flag(flag: Option<&str>) -> Result<Self> {
        match flag {
            None | Some("") | Some("libcontainer") | Some("bulkhead") => Ok(Executor::Embedded),
            Some(p) if p.contains('/') => Ok(Executor::External(PathBuf::from(p))),
            Some(name) => std::env::var_os("PATH")
                .and_then(|paths| std::env::split_paths(&paths).map(|d| d.join(name)).find(|p| p.is_file()))
                .map(Executor::External)
                .ok_or_else(|| Error::Invalid(format!("runtime {name:?} not found in PATH"))),
        }
    }

    pub fn name(&self) -> String {
        match self {
            Executor::Embedded => "libcontainer".into(),
            Executor::External(p) => p.display().to_string(),
        }
    }

    /// Runs the container to completion in the foreground, with this process's stdio.
    /// `on_start` gets the pid of the container's first process; `cgroup` is the spec's cgroupsPath,
    /// read for OOM kills before the cgroup goes away.
    pub fn run(&self, id: &str, bundle: &Path, state_dir: &Path, cgroup: &str, on_start: impl FnOnce(i32)) -> Result<Exit> {
        match self {
            Executor::Embedded => run_embedded(id, bundle, state_dir, cgroup, on_start),
            // runc removes the cgroup as the container exits: its OOM kills are not seen.
            Executor::External(bin) => Ok(Exit {
                code: run_external(bin, id, bundle, state_dir, on_start)?,
                oom_killed: false,
            }),
        }
    }
}

/// libcontainer 0.7 reads the operands of SCMP_CMP_MASKED_EQ the other way round from libseccomp's
/// convention (`SCMP_CMP(arg, SCMP_CMP_MASKED_EQ, mask, datum)`), which runc, crun and Docker's
/// profile follow (`value` = mask, `valueTwo` = datum): it takes `valueTwo` as the mask. Given the
/// spec as written, `clone` with namespace flags got through (a test from inside found it). So the
/// embedded executor gets its own copy of the bundle's config.json with those operands swapped, and
/// the filter means what the spec means. The rootfs path in the spec is absolute, so the copy can
/// live in the executor's state directory.
fn libcontainer_bundle(bundle: &Path, state_dir: &Path) -> Result<PathBuf> {
    let src = bundle.join("config.json");
    let text = std::fs::read(&src).map_err(|e| Error::Executor(format!("{}: {e}", src.display())))?;
    let mut spec: serde_json::Value = serde_json::from_slice(&text).map_err(|e| Error::Executor(format!("{}: {e}", src.display())))?;
    if let Some(rules) = spec.pointer_mut("/linux/seccomp/syscalls").and_then(|v| v.as_array_mut()) {
        for rule in rules {
            for arg in rule.get_mut("args").and_then(|a| a.as_array_mut()).into_iter().flatten() {
                if arg.get("op").and_then(|o| o.as_str()) == Some("SCMP_CMP_MASKED_EQ") {
                    let mask = arg.get("value").cloned().unwrap_or(serde_json::json!(0));
                    let datum = arg.get("valueTwo").cloned().unwrap_or(serde_json::json!(0));
                    arg["value"] = datum;
                    arg["valueTwo"] = mask;
                }
            }
        }
    }
    let dir = state_dir.join("bundle");
    std::fs::create_dir_all(&dir).map_err(|e| Error::Executor(format!("{}: {e}", dir.display())))?;
    let data = serde_json::to_vec(&spec).map_err(|e| Error::Executor(e.to_string()))?;
    std::fs::write(dir.join("config.json"), data).map_err(|e| Error::Executor(format!("{}: {e}", dir.display())))?;
    Ok(dir)
}

fn run_embedded(id: &str, bundle: &Path, state_dir: &Path, cgroup: &str, on_start: impl FnOnce(i32)) -> Result<Exit> {
    use libcontainer::container::builder::ContainerBuilder;
    let bundle = &libcontainer_bundle(bundle, state_dir)?;
    use libcontainer::syscall::syscall::SyscallType;
    let err = |what: &str, e: libcontainer::error::LibcontainerError| Error::Executor(format!("{what}: {e}"));
    let mut c = ContainerBuilder::new(id.to_owned(), SyscallType::default())
        .with_root_path(state_dir)
        .map_err(|e| err("state directory", e))?
        .validate_id()
        .map_err(|e| err("container id", e))?
        .as_init(bundle)
        .with_systemd(false)
        .with_detach(true)
        .build()
        .map_err(|e| err("creating the container", e))?;
    if let Err(e) = c.start() {
        let _ = c.delete(true);
        return Err(err("starting the container", e));
    }
    let Some(pid) = c.pid() else {
        let _ = c.delete(true);
        return Err(Error::Executor("the container has no process".into()));
    };
    on_start(pid.as_raw());
    let status = wait(pid.as_raw());
    let oom = oom_killed(cgroup);
    if let Err(e) = c.delete(true) {
        // The workload's status matters more than a cleanup problem (runc and crun do the same).
        tracing::warn!(id, error = %e, "deleting the container after exit");
    }
    Ok(Exit {
        code: status?,
        oom_killed: oom,
    })
}

fn run_external(bin: &Path, id: &str, bundle: &Path, state_dir: &Path, on_start: impl FnOnce(i32)) -> Result<i32> {
    let pid_file = state_dir.join("pid");
    let mut child = Command::new(bin)
        .arg("--root")
        .arg(state_dir)
        .arg("run")
        .arg("--bundle")
        .arg(bundle)
        .arg("--pid-file")
        .arg(&pid_file)
        .arg(id)
        .spawn()
        .map_err(|e| Error::Executor(format!("starting {}: {e}", bin.display())))?;
    // The runtime writes the pid file once the process exists; wait for it briefly.
    let mut pid = 0;
    for _ in 0..200 {
        if let Some(p) = std::fs::read_to_string(&pid_file).ok().and_then(|s| s.trim().parse::<i32>().ok()) {
            pid = p;
            break;
        }
        if child.try_wait().ok().flatten().is_some() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    on_start(pid);
    let status = child
        .wait()
        .map_err(|e| Error::Executor(format!("waiting for {}: {e}", bin.display())))?;
    use std::os::unix::process::ExitStatusExt;
    Ok(status.code().unwrap_or_else(|| 128 + status.signal().unwrap_or(0)))
}

fn wait(pid: i32) -> Result<i32> {
    let mut status = 0;
    loop {
        // SAFETY: waiting for our own child; `status` is a valid out-pointer.
        let r = unsafe { libc::waitpid(pid, &mut status, 0) };
        if r == pid {
            break;
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(Error::Executor(format!("waiting for the container: {e}")));
        }
    }
    Ok(if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else if libc::WIFSIGNALED(status) {
        128 + libc::WTERMSIG(status)
    } else {
        255
    })
}

/// Whether the kernel OOM-killed a process of the container's cgroup (v1 memory.oom_control, or v2
/// memory.events); read after it exits and before its cgroup is removed.
pub fn oom_killed(cgroup: &str) -> bool {
    let rel = cgroup.trim_start_matches('/');
    let v1 = Path::new("/sys/fs/cgroup/memory").join(rel).join("memory.oom_control");
    let v2 = Path::new("/sys/fs/cgroup").join(rel).join("memory.events");
    [v1, v2].iter().filter_map(|p| std::fs::read_to_string(p).ok()).any(|s| {
        s.lines().any(|l| {
            l.strip_prefix("oom_kill ")
                .and_then(|n| n.trim().parse::<u64>().ok())
                .is_some_and(|n| n > 0)
        })
    })
}
