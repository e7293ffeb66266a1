//! bench/tasks' harness (issue 16): the cluster's orchestration, scheduling and dispatch at
//! scale, with agents simulated many per process. This is a harness, not a cluster: the agents
//! are real (each node joins with the worker token and holds its own mutually authenticated
//! dispatcher session, and every task gets its SVID from the leader), but their executor only
//! records, and their identities are not written as files.
//!
//! `taskbench NODES TASKS` runs the managers (three, on loopback, in this process) and a child
//! process with the NODES agents (`taskbench agents ...`), then measures:
//! - the time from `service create` of TASKS replicas until all run (as the leader's store says);
//! - each task's latency from its creation to its node's report that it runs (p50, p99);
//! - a secret's delivery: from `secret create` (and a service naming it) to its one task running
//!   with the file (median of 5);
//! - a rolling update of 1,000 tasks (parallelism 100, no delay, 1 s monitor) to its end;
//! - the managers' process memory (VmHWM, VmRSS).
//!
//! Prints one JSON object.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bulkhead_cluster::manager::{self, Manager};
use bulkhead_cluster::orchestrator::{Constraint, Mode, ServiceSpec};
use bulkhead_cluster::services::{FileRef, TaskTemplate, UpdateConfig};
use bulkhead_cluster::tls;

mod benchkit;
use benchkit::{join_many, now, pct, start_manager};

/// Records starts, runs nothing.
struct Recorder;

impl bulkhead_cluster::agent::Executor for Recorder {
    fn start(
        &self,
        _node: &str,
        t: &bulkhead_cluster::dispatcher::Assignment,
        _files: &[bulkhead_cluster::agent::TaskFile],
        _identity: Option<&bulkhead_cluster::agent::IdentityMount>,
    ) -> Result<bulkhead_cluster::agent::Started, String> {
        Ok(bulkhead_cluster::agent::Started {
            container: format!("c{}", t.id),
            digest: None,
        })
    }
    fn observe(&self, _c: &str) -> bulkhead_cluster::agent::Observed {
        bulkhead_cluster::agent::Observed::Running
    }
    fn stop(&self, _c: &str) -> Result<(), String> {
        Ok(())
    }
    fn remove(&self, _c: &str) -> Result<(), String> {
        Ok(())
    }
    fn adopt(&self) -> Vec<(String, String)> {
        Vec::new()
    }
    fn identity_files(&self) -> bool {
        false
    }
}

fn main() {
    // Warnings and errors on stderr (TASKBENCH_LOG=info,... for more): a run that stalls says why.
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("TASKBENCH_LOG").unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
    let args: Vec<String> = std::env::args().collect();
    // The managers hold a connection of each node, the agents one each.
    bulkhead_cluster::transport::raise_open_files();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(64)
        .enable_all()
        .build()
        .unwrap();
    if args.get(1).map(String::as_str) == Some("agents") {
        rt.block_on(agents(&args[2], &args[3], args[4].parse().unwrap(), &args[5]));
    } else {
        let nodes = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(100);
        let tasks = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(10_000);
        rt.block_on(bench(nodes, tasks));
    }
}

/// The child: `n` nodes join through `addr` with `token`, each runs an agent; "ready" on stdout
/// once all have joined; runs until killed.
async fn agents(addr: &str, token: &str, n: usize, dir: &str) {
    let joined = join_many(addr, token, n).await;
    let targets = Arc::new(std::sync::RwLock::new(vec![addr.to_owned()]));
    for j in joined {
        let d = std::path::Path::new(dir).join(&j.node_id);
        std::fs::create_dir_all(&d).unwrap();
        let agent = bulkhead_cluster::agent::Agent::new(&j.node_id, &d, Arc::new(Recorder));
        let me = tls::Identity::new(&j.cert_pem, &j.key_pem).unwrap();
        let ctls = tls::client_config(&j.ca_pem, Some(me)).unwrap();
        tokio::spawn(bulkhead_cluster::agent::run(agent, ctls, targets.clone()));
    }
    println!("ready");
    std::future::pending::<()>().await;
}

fn spec(name: &str, replicas: u32) -> ServiceSpec {
    ServiceSpec {
        name: name.into(),
        mode: Mode::Replicated { replicas },
        constraints: vec![Constraint::parse("node.role==worker").unwrap()],
        reserve_memory: 0,
        reserve_cpu: 0,
        task: TaskTemplate {
            image: "bench".into(),
            ..Default::default()
        },
        restart: Default::default(),
        update: UpdateConfig {
            parallelism: 100,
            delay_ms: 0,
            monitor_ms: 1000,
            ..Default::default()
        },
    }
}

/// Runs a write until it is not refused for want of a quorum (a write that timed out may have
/// landed: "exists already" then counts as done), saying each retry.
async fn retrying<T, F: std::future::Future<Output = Result<T, manager::Error>>>(what: &str, mut f: impl FnMut() -> F) {
    for attempt in 1.. {
        match f().await {
            Ok(_) => return,
            Err(e) if attempt > 1 && e.to_string().contains("exists already") => return,
            Err(e @ manager::Error::NoQuorum) if attempt < 10 => eprintln!("taskbench: {what}: {e}; again"),
            Err(e) => panic!("{what}: {e}"),
        }
    }
}

/// Waits until `service`'s tasks meant to run are `n` running ones at version `version` (or
/// any if None); the time it took.
async fn until_running(m: &Manager, service: &str, n: usize, version: Option<u64>, limit: Duration) -> Duration {
    let t = Instant::now();
    let mut told = Instant::now();
    loop {
        let running = m.running(service, version);
        if running == n {
            return t.elapsed();
        }
        // Progress, so that a run that does not finish still says how far it got.
        if told.elapsed() > Duration::from_secs(60) {
            eprintln!(
                "taskbench: {service}: {running} of {n} running after {:.0} s",
                t.elapsed().as_secs_f64()
            );
            told = Instant::now();
        }
        assert!(t.elapsed() < limit, "{service}: {running} of {n} running after {limit:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn memory() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kib = |k: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(k)?.trim().strip_suffix("kB")?.trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    (kib("VmHWM:"), kib("VmRSS:"))
}

async fn bench(nodes: usize, tasks: u32) {
    let dir = tempfile::Builder::new().prefix("taskbench-").tempdir_in("/var/tmp").unwrap();
    // Each manager on a runtime of its own, as on a machine of its own.
    let d = dir.path().to_owned();
    let (m1, a1, worker_token, manager_token) =
        benchkit::on_own_runtime(move || async move { benchkit::first_manager(&d, "127.0.0.1", true).await }).await;
    for _ in 0..2 {
        let j = manager::join_cluster(&a1, &manager_token.text()).await.unwrap();
        let raft_id = j.raft_id.unwrap();
        let (d, cert, key, ca) = (dir.path().to_owned(), j.cert_pem, j.key_pem, j.ca_pem);
        let (m, a) =
            benchkit::on_own_runtime(move || async move { start_manager(&d, raft_id, &cert, &key, &ca, "127.0.0.1", true).await }).await;
        manager::request_membership(&a1, m.tls.clone(), raft_id, &a).await.unwrap();
    }
    // The agents' process, its state on a tmpfs.
    let adir = tempfile::Builder::new().prefix("taskbench-agents-").tempdir_in("/dev/shm").unwrap();
    let t = Instant::now();
    let mut child = tokio::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "agents",
            &a1,
            &worker_token.text(),
            &nodes.to_string(),
            adir.path().to_str().unwrap(),
        ])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    {
        use tokio::io::AsyncBufReadExt;
        let mut out = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
        while out.next_line().await.unwrap().as_deref() != Some("ready") {}
    }
    let join_s = t.elapsed().as_secs_f64();
    // Every node's session open (it has been seen by the leader's dispatcher).
    tokio::time::sleep(Duration::from_secs(3)).await;

    // TASKS replicas (services of at most 75,000).
    let t = Instant::now();
    let per = 75_000u32;
    let mut names = Vec::new();
    let mut left = tasks;
    while left > 0 {
        let n = left.min(per);
        let name = format!("bench{}", names.len());
        m1.create_service(spec(&name, n), now()).await.unwrap();
        names.push((name, n));
        left -= n;
    }
    for (name, n) in &names {
        until_running(&m1, name, *n as usize, None, Duration::from_secs(3600)).await;
    }
    let all_running_s = t.elapsed().as_secs_f64();
    eprintln!("taskbench: {tasks} tasks running in {all_running_s:.1} s");
    let mut lat: Vec<f64> = names
        .iter()
        .flat_map(|(name, _)| m1.tasks_of(name))
        .filter_map(|v| Some((v.status?.updated - v.task.created) as f64))
        .collect();
    let (lat_p50, lat_p99) = (pct(&mut lat.clone(), 0.5), pct(&mut lat, 0.99));
    let (hwm_after_tasks, rss_after_tasks) = memory();
    // Said now, so that a later step's failure does not lose them.
    eprintln!(
        "taskbench: create→running p50 {lat_p50:.0} ms, p99 {lat_p99:.0} ms; managers' memory {} MiB (peak {} MiB)",
        rss_after_tasks / 1024,
        hwm_after_tasks / 1024
    );

    // Secret delivery: 5 times, a new secret and a service of one task naming it.
    let mut secret_ms = Vec::new();
    let mut write_ms = Vec::new();
    for i in 0..5 {
        let t = Instant::now();
        let name = format!("s{i}");
        let t_write = Instant::now();
        retrying(&format!("secret create {name}"), || {
            m1.create_secret(bulkhead_cluster::secrets::Kind::Secret, &name, b"bench-secret", now())
        })
        .await;
        write_ms.push(t_write.elapsed().as_secs_f64() * 1000.0);
        let mut s = spec(&format!("sec{i}"), 1);
        s.task.secrets = vec![FileRef {
            source: name.clone(),
            target: name.clone(),
            ..Default::default()
        }];
        retrying(&format!("service create sec{i}"), || m1.create_service(s.clone(), now())).await;
        until_running(&m1, &format!("sec{i}"), 1, None, Duration::from_secs(120)).await;
        secret_ms.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    let secret_p50 = pct(&mut secret_ms, 0.5);
    let write_max = write_ms.iter().cloned().fold(0.0, f64::max);
    eprintln!("taskbench: secrets delivered ({secret_p50:.0} ms; the secret's write itself at most {write_max:.0} ms)");

    // A rolling update of 1,000 tasks.
    retrying("service create roll", || m1.create_service(spec("roll", 1000), now())).await;
    until_running(&m1, "roll", 1000, None, Duration::from_secs(600)).await;
    let mut s = m1.service("roll").unwrap().spec;
    s.task.env = vec!["V=2".into()];
    eprintln!("taskbench: 1000 tasks to update running");
    let t = Instant::now();
    let rec = m1.update_service("roll", s, now()).await.unwrap();
    until_running(&m1, "roll", 1000, Some(rec.version), Duration::from_secs(1200)).await;
    let roll_s = t.elapsed().as_secs_f64();
    let (hwm, rss) = memory();
    println!(
        "{}",
        serde_json::json!({
            "nodes": nodes, "tasks": tasks, "managers": 3,
            "join_s": join_s,
            "all_running_s": all_running_s,
            "create_to_running_ms_p50": lat_p50, "create_to_running_ms_p99": lat_p99,
            "secret_create_to_task_running_ms_p50": secret_p50,
            "secret_write_ms_max": write_max,
            "rolling_update_1000_s": roll_s, "rolling_update": "parallelism 100, delay 0, monitor 1 s",
            "managers_vmhwm_mib_after_tasks": hwm_after_tasks / 1024, "managers_vmrss_mib_after_tasks": rss_after_tasks / 1024,
            "managers_vmhwm_mib": hwm / 1024, "managers_vmrss_mib": rss / 1024,
        })
    );
    let _ = child.kill().await;
    // exit() runs no destructor: the directories go first.
    drop(adir);
    drop(dir);
    std::process::exit(0);
}
