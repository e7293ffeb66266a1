//! Helpers for tests that run the real `bulkhead` binary against real tools (umoci, skopeo).
#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use sha2::Digest as _;

/// A private store and work directory; unmounts whatever the test left mounted when dropped,
/// including when the test fails.
pub struct Env {
    pub dir: tempfile::TempDir,
}

impl Env {
    pub fn new() -> Self {
        let dir = tempfile::Builder::new().prefix("bulkhead-test-").tempdir().unwrap();
        std::fs::create_dir(dir.path().join("canary")).unwrap();
        std::fs::write(dir.path().join("canary/keep"), "untouched").unwrap();
        // Test networks come from 198.18.0.0/15 (TESTING.md), never from the private ranges.
        std::fs::create_dir_all(dir.path().join("config")).unwrap();
        std::fs::write(dir.path().join("config/networks.json"), r#"{"pools": ["198.18.0.0/16"]}"#).unwrap();
        Env { dir }
    }

    pub fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    pub fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    /// Runs bulkhead with this store.
    pub fn run(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_bulkhead"))
            .arg("--root")
            .arg(self.root())
            .arg("--config")
            .arg(self.path("config"))
            .args(args)
            .output()
            .unwrap()
    }

    /// Runs bulkhead under timeout(1): a command that hangs is killed after `secs` seconds and
    /// shows as exit status 124, so that a hang fails the test instead of stalling the suite.
    pub fn run_bounded(&self, secs: u32, args: &[&str]) -> Output {
        Command::new("timeout")
            .args(["-s", "KILL", &secs.to_string()])
            .arg(env!("CARGO_BIN_EXE_bulkhead"))
            .arg("--root")
            .arg(self.root())
            .arg("--config")
            .arg(self.path("config"))
            .args(args)
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap()
    }

    /// Runs bulkhead and expects success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(
            o.status.success(),
            "bulkhead {args:?} failed: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8(o.stdout).unwrap()
    }

    /// Runs bulkhead and expects failure with one line on stderr; returns that line.
    pub fn fails(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(
            !o.status.success(),
            "bulkhead {args:?} should have failed: {}",
            String::from_utf8_lossy(&o.stdout)
        );
        let err = String::from_utf8(o.stderr).unwrap();
        let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("bulkhead: error:")).collect();
        assert_eq!(lines.len(), 1, "expected one error line, got: {err}");
        assert!(!err.contains("panicked"), "{err}");
        lines[0].to_owned()
    }

    /// The canary directory beside the store must be exactly as it was made.
    pub fn assert_canary_untouched(&self) {
        let names: Vec<_> = std::fs::read_dir(self.path("canary"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(
            names,
            vec![std::ffi::OsString::from("keep")],
            "something was written into the canary directory"
        );
        assert_eq!(std::fs::read_to_string(self.path("canary/keep")).unwrap(), "untouched");
    }

    /// No image, no reference: what a refused import must leave.
    pub fn assert_no_images(&self) {
        let out = self.ok(&["image", "ls", "--format", "json"]);
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&out).unwrap(),
            serde_json::json!([]),
            "an image was recorded"
        );
        let refs = std::fs::read_to_string(self.root().join("refs.json")).unwrap_or_default();
        assert!(!refs.contains(':'), "a reference was left: {refs}");
    }

    pub fn inspect(&self, image: &str) -> serde_json::Value {
        let v: serde_json::Value = serde_json::from_str(&self.ok(&["image", "inspect", image])).unwrap();
        v[0].clone()
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        // Containers a failed test left: remove them (kills, unmounts), then their cgroups.
        let ids: Vec<String> = std::fs::read_dir(self.root().join("containers"))
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| !n.starts_with('.'))
                    .collect()
            })
            .unwrap_or_default();
        for id in &ids {
            let _ = Command::new(env!("CARGO_BIN_EXE_bulkhead"))
                .arg("--root")
                .arg(self.root())
                .args(["rm", "-f", id])
                .output();
            for ctl in [
                "cpu", "cpuacct", "cpuset", "memory", "devices", "freezer", "blkio", "pids", "systemd", "unified",
            ] {
                let _ = std::fs::remove_dir(format!("/sys/fs/cgroup/{ctl}/bulkhead/{id}"));
            }
        }
        // Its networks: bridges and the store's nftables table go with the last one.
        let nets: Vec<String> = std::fs::read_dir(self.root().join("networks"))
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .filter_map(|e| e.file_name().to_string_lossy().strip_suffix(".json").map(str::to_owned))
                    .filter(|n| !["leases", "rules", "released"].contains(&n.as_str()))
                    .collect()
            })
            .unwrap_or_default();
        for n in &nets {
            let _ = Command::new(env!("CARGO_BIN_EXE_bulkhead"))
                .arg("--root")
                .arg(self.root())
                .arg("--config")
                .arg(self.path("config"))
                .args(["network", "rm", n])
                .output();
        }
        // And if the CLI could not (a test of a broken build): the store's tables, its bridges,
        // its resolver, directly.
        let root = self.root().to_string_lossy().into_owned();
        let hash = {
            use sha2::Digest;
            let h = sha2::Sha256::digest([root.as_bytes(), &[0]].concat());
            h.iter().map(|b| format!("{b:02x}")).collect::<String>()
        };
        for family in ["inet", "bridge"] {
            let _ = Command::new("nft")
                .args(["delete", "table", family, &format!("bulkhead_{}", &hash[..8])])
                .output();
        }
        for n in &nets {
            let h = {
                use sha2::Digest;
                let h = sha2::Sha256::digest([root.as_bytes(), &[0], n.as_bytes(), &[0]].concat());
                h.iter().map(|b| format!("{b:02x}")).collect::<String>()
            };
            let _ = Command::new("ip").args(["link", "del", &format!("bh{}", &h[..10])]).output();
        }
        let _ = Command::new("pkill")
            .args(["-f", &format!("aardvark-dns --config {root}/networks/dns ")])
            .output();
        let prefix = self.dir.path().to_string_lossy().into_owned();
        let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mut mounts: Vec<String> = info
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .filter(|m| m.starts_with(&prefix))
            .map(str::to_owned)
            .collect();
        mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in mounts {
            let _ = Command::new("umount").arg("-l").arg(&m).status();
        }
    }
}

pub fn sh(cmd: &mut Command) {
    let o = cmd.output().unwrap();
    assert!(
        o.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

/// tests/fixtures/NAME.c built static, once per test binary (a program that runs in test
/// containers, which have no libc of their own).
pub fn c_fixture(name: &str) -> PathBuf {
    static BUILT: std::sync::Mutex<Vec<(String, PathBuf)>> = std::sync::Mutex::new(Vec::new());
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, p)) = built.iter().find(|(n, _)| n == name) {
        return p.clone();
    }
    let dir = std::env::temp_dir().join(format!("bulkhead-fixtures-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join(name);
    sh(Command::new("gcc").args(["-static", "-O1", "-o"]).arg(&out).arg(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(format!("{name}.c")),
    ));
    built.push((name.to_owned(), out.clone()));
    out
}

/// Imports a busybox image `tag` with `applets` linked, /tmp, /www/index.html ("hello"), and
/// with `frames`, the raw-frame tool.
pub fn busybox_image(env: &Env, tag: &'static str, applets: &[&str], frames: bool) -> &'static str {
    let rootfs = env.path(&format!("rootfs-{tag}"));
    busybox_rootfs(&rootfs);
    for a in applets {
        std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(a)).unwrap();
    }
    for d in ["etc", "tmp", "www"] {
        std::fs::create_dir_all(rootfs.join(d)).unwrap();
    }
    std::fs::write(rootfs.join("www/index.html"), "hello\n").unwrap();
    if frames {
        std::fs::copy(c_fixture("frames"), rootfs.join("bin/frames")).unwrap();
    }
    env.ok(&[
        "image",
        "import",
        "--rootfs",
        rootfs.to_str().unwrap(),
        "--tag",
        tag,
        "--cmd",
        "/bin/sh",
    ]);
    tag
}

/// A root filesystem with Debian's static busybox.
pub fn busybox_rootfs(dir: &Path) {
    std::fs::create_dir_all(dir.join("bin")).unwrap();
    std::fs::copy("/bin/busybox", dir.join("bin/busybox")).unwrap();
    for a in ["sh", "ls", "cat"] {
        std::os::unix::fs::symlink("busybox", dir.join("bin").join(a)).unwrap();
    }
}

/// Builds an OCI layout at `layout` with umoci: image `t`, one layer per step, each step changing the
/// unpacked root filesystem.
pub fn umoci_image(layout: &Path, steps: &[&dyn Fn(&Path)]) {
    sh(Command::new("umoci").arg("init").arg("--layout").arg(layout));
    let image = format!("{}:t", layout.display());
    sh(Command::new("umoci").args(["new", "--image", &image]));
    for step in steps {
        let bundle = layout.with_extension("bundle");
        sh(Command::new("umoci").args(["unpack", "--image", &image]).arg(&bundle));
        step(&bundle.join("rootfs"));
        sh(Command::new("umoci").args(["repack", "--image", &image]).arg(&bundle));
        std::fs::remove_dir_all(&bundle).unwrap();
    }
    sh(Command::new("umoci").args(["config", "--image", &image, "--config.cmd", "/bin/sh"]));
}

/// Appends an uncompressed tar, verbatim, as a new layer (umoci gzips it and fixes the digests).
pub fn add_raw_layer(layout: &Path, tar: &[u8]) {
    let f = layout.with_extension("layer.tar");
    std::fs::write(&f, tar).unwrap();
    sh(Command::new("umoci")
        .args(["raw", "add-layer", "--image", &format!("{}:t", layout.display())])
        .arg(&f));
}

/// Builds tars with entries no well-behaved tool would write.
pub struct RawTar(pub Vec<u8>);

impl RawTar {
    pub fn new() -> Self {
        RawTar(Vec::new())
    }

    fn header(name: &[u8], kind: tar::EntryType, size: u64, link: &[u8]) -> tar::Header {
        let mut h = tar::Header::new_ustar();
        {
            let old = h.as_old_mut();
            old.name[..name.len()].copy_from_slice(name);
            old.linkname[..link.len()].copy_from_slice(link);
        }
        h.set_entry_type(kind);
        h.set_size(size);
        h.set_mode(0o755);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_700_000_000);
        if kind == tar::EntryType::Char {
            h.set_device_major(1).ok();
            h.set_device_minor(3).ok();
        }
        h.set_cksum();
        h
    }

    fn push(&mut self, h: &tar::Header, data: &[u8]) {
        self.0.extend_from_slice(h.as_bytes());
        self.0.extend_from_slice(data);
        let pad = (512 - data.len() % 512) % 512;
        self.0.extend(std::iter::repeat_n(0u8, pad));
    }

    pub fn file(mut self, name: &str, data: &[u8]) -> Self {
        let h = Self::header(name.as_bytes(), tar::EntryType::Regular, data.len() as u64, b"");
        self.push(&h, data);
        self
    }

    pub fn dir(mut self, name: &str) -> Self {
        let h = Self::header(name.as_bytes(), tar::EntryType::Directory, 0, b"");
        self.push(&h, b"");
        self
    }

    pub fn symlink(mut self, name: &str, target: &str) -> Self {
        let h = Self::header(name.as_bytes(), tar::EntryType::Symlink, 0, target.as_bytes());
        self.push(&h, b"");
        self
    }

    pub fn hardlink(mut self, name: &str, target: &str) -> Self {
        let h = Self::header(name.as_bytes(), tar::EntryType::Link, 0, target.as_bytes());
        self.push(&h, b"");
        self
    }

    pub fn char_device(mut self, name: &str) -> Self {
        let h = Self::header(name.as_bytes(), tar::EntryType::Char, 0, b"");
        self.push(&h, b"");
        self
    }

    pub fn fifo(mut self, name: &str) -> Self {
        let h = Self::header(name.as_bytes(), tar::EntryType::Fifo, 0, b"");
        self.push(&h, b"");
        self
    }

    /// A PAX extended header whose records apply to the next entry.
    pub fn pax(mut self, records: &[(&str, &str)]) -> Self {
        let mut body = Vec::new();
        for (k, v) in records {
            let rest = format!(" {k}={v}\n");
            let mut len = rest.len() + 1;
            while format!("{len}{rest}").len() != len {
                len += 1;
            }
            body.extend_from_slice(format!("{len}{rest}").as_bytes());
        }
        let h = Self::header(b"PaxHeaders/x", tar::EntryType::XHeader, body.len() as u64, b"");
        self.push(&h, &body);
        self
    }

    pub fn finish(mut self) -> Vec<u8> {
        self.0.extend(std::iter::repeat_n(0u8, 1024));
        self.0
    }
}

pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(data))
}

/// Rewrites the manifest and config of image `t` in a real layout (as a tampering registry or a
/// hand-edited archive would), re-hashing and re-pointing so only the intended change remains.
pub fn tamper_layout(layout: &Path, edit: impl FnOnce(&mut serde_json::Value, &mut serde_json::Value)) {
    let read = |d: &str| std::fs::read(layout.join("blobs/sha256").join(d.trim_start_matches("sha256:"))).unwrap();
    let index_path = layout.join("index.json");
    let mut index: serde_json::Value = serde_json::from_slice(&std::fs::read(&index_path).unwrap()).unwrap();
    let mdesc = index["manifests"][0].clone();
    let mut manifest: serde_json::Value = serde_json::from_slice(&read(mdesc["digest"].as_str().unwrap())).unwrap();
    let mut config: serde_json::Value = serde_json::from_slice(&read(manifest["config"]["digest"].as_str().unwrap())).unwrap();
    edit(&mut manifest, &mut config);
    let write = |data: &[u8]| {
        let hex = sha256_hex(data);
        let mut f = std::fs::File::create(layout.join("blobs/sha256").join(&hex)).unwrap();
        f.write_all(data).unwrap();
        (format!("sha256:{hex}"), data.len())
    };
    let cfg = serde_json::to_vec(&config).unwrap();
    let (cd, cs) = write(&cfg);
    if manifest["config"]["digest"] != serde_json::Value::Null {
        manifest["config"]["digest"] = cd.into();
        manifest["config"]["size"] = cs.into();
    }
    let m = serde_json::to_vec(&manifest).unwrap();
    let (md, ms) = write(&m);
    index["manifests"][0]["digest"] = md.into();
    index["manifests"][0]["size"] = ms.into();
    std::fs::write(&index_path, serde_json::to_vec(&index).unwrap()).unwrap();
}

/// The path of a blob of image `t`'s manifest: the config, or layer `n`.
pub fn layer_blob(layout: &Path, n: usize) -> PathBuf {
    let index: serde_json::Value = serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    let md = index["manifests"][0]["digest"]
        .as_str()
        .unwrap()
        .trim_start_matches("sha256:")
        .to_owned();
    let manifest: serde_json::Value = serde_json::from_slice(&std::fs::read(layout.join("blobs/sha256").join(md)).unwrap()).unwrap();
    layout
        .join("blobs/sha256")
        .join(manifest["layers"][n]["digest"].as_str().unwrap().trim_start_matches("sha256:"))
}
