//! `bulkhead compose config|policy` on real files: lookup, `.env`, the environment, `-f`,
//! `--env-file`, and errors that name the file and the line.

use std::process::Command;

fn compose(dir: &std::path::Path, env: &[(&str, &str)], args: &[&str]) -> std::process::Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_bulkhead"));
    c.current_dir(dir).arg("compose").args(args).env_remove("DB_PORT").env_remove("TAG");
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().unwrap()
}

const FILE: &str = r#"services:
  web:
    image: busybox:${TAG}
    ports: ["127.0.0.1:18080:80"]
    depends_on: [app]
  app:
    image: busybox
    expose: ["8080"]
    depends_on:
      db:
        condition: service_started
  db:
    image: busybox
    expose: ["${DB_PORT:-5432}"]
"#;

#[test]
fn config_and_policy_from_the_file_env_and_environment() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("docker-compose.yml"), FILE).unwrap();
    std::fs::write(dir.path().join(".env"), "TAG=1.36\nDB_PORT=6543\n").unwrap();
    // .env fills the variables; the environment wins over it.
    let o = compose(
        dir.path(),
        &[("DB_PORT", "7777")],
        &["--env-file", ".env", "config", "--format", "json"],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["services"]["web"]["image"], "busybox:1.36");
    assert_eq!(v["services"]["db"]["expose"][0], "7777");
    let o = compose(dir.path(), &[], &["policy"]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        out.contains("web    app   8080/tcp") && out.contains("docker-compose.yml:5 depends_on"),
        "{out}"
    );
    assert!(
        out.contains("app    db    6543/tcp") && out.contains("docker-compose.yml:9 depends_on"),
        "{out}"
    );
    assert!(out.contains("everything else between the services of"), "{out}");
    // The project's name is the directory's.
    let name = dir
        .path()
        .file_name()
        .unwrap()
        .to_string_lossy()
        .to_ascii_lowercase()
        .replace('.', "");
    assert!(out.contains(&name), "{out}");
}

#[test]
fn errors_name_the_file_and_the_line_and_nothing_runs() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("other.yaml");
    std::fs::write(&f, format!("{FILE}    restart: sometimes\n    privileged: true\n")).unwrap();
    let o = compose(dir.path(), &[], &["-f", "other.yaml", "config"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("other.yaml: line 16: services.db.privileged"), "{err}");
    // No file at all.
    let empty = tempfile::tempdir().unwrap();
    let o = compose(empty.path(), &[], &["config"]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("no compose file in"));
    // A FIFO where the file should be: refused, not waited on.
    let fifo = dir.path().join("compose.yaml");
    assert!(Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    let o = Command::new("timeout")
        .args(["-s", "KILL", "10", env!("CARGO_BIN_EXE_bulkhead"), "compose", "config"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_ne!(o.status.code(), None, "blocked on a FIFO");
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("not a regular file"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

mod common;
use common::*;

/// A busybox image for the services.
fn image(env: &Env) {
    busybox_image(env, "cbox", &["httpd", "nc", "sleep", "timeout", "echo", "wget"], false);
}

const SHOP: &str = r#"services:
  web:
    image: cbox
    command: httpd -f -p 80 -h /www
    ports: ["127.0.0.1:18190:80"]
    depends_on: [app]
  app:
    image: cbox
    command: httpd -f -p 8080 -h /www
    environment:
      GREETING: hi there
    expose: ["8080"]
    depends_on: [db]
  db:
    image: cbox
    command: ["sh", "-c", "echo db ready; while true; do echo pong | nc -l -p 5432; done"]
    expose: ["5432"]
    deploy:
      replicas: 2
"#;

#[test]
fn up_allows_what_the_file_declares_and_down_leaves_nothing() {
    let env = Env::new();
    image(&env);
    let file = env.path("shop.yaml");
    std::fs::write(&file, SHOP).unwrap();
    let f = file.to_str().unwrap();
    let c = |args: &[&str]| {
        let mut all = vec!["compose", "-f", f, "-p", "shop"];
        all.extend_from_slice(args);
        env.ok(&all)
    };
    c(&["up", "-d", "--wait"]);
    let ps = c(&["ps"]);
    for n in ["shop-web-1", "shop-app-1", "shop-db-1", "shop-db-2"] {
        assert!(ps.contains(n) && ps.contains("running"), "{ps}");
    }
    // Idempotent: a second `up` leaves running containers as they are.
    assert!(c(&["up", "-d"]).contains("shop-db-1 running"));
    // The published port answers from the host.
    let mut got = None;
    for _ in 0..50 {
        got = std::net::TcpStream::connect("127.0.0.1:18190").ok().and_then(|mut s| {
            use std::io::{Read, Write};
            s.write_all(b"GET / HTTP/1.0\r\n\r\n").ok()?;
            let mut b = String::new();
            s.read_to_string(&mut b).ok()?;
            Some(b)
        });
        if got.as_deref().is_some_and(|g| g.contains("hello")) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(got.unwrap_or_default().contains("hello"));
    let tcp = |from: &str, to: &str, port: &str| {
        let o = env.run_bounded(20, &["exec", from, "timeout", "-s", "KILL", "3", "nc", to, port]);
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let http = |from: &str, url: &str| {
        let o = env.run_bounded(20, &["exec", from, "timeout", "-s", "KILL", "3", "wget", "-qO-", url]);
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    // app depends on db: app reaches db:5432 (by service name); web depends on app: web reaches
    // app:8080.
    assert!(tcp("shop-app-1", "db", "5432").contains("pong"), "app cannot reach db:5432");
    assert!(
        http("shop-web-1", "http://app:8080/").contains("hello"),
        "web cannot reach app:8080"
    );
    // Nothing else: web to db, db to app; and the refusals are events.
    assert!(!tcp("shop-web-1", "db", "5432").contains("pong"), "web reached db");
    assert!(!http("shop-db-1", "http://app:8080/").contains("hello"), "db reached app");
    let events = env.ok(&["network", "events"]);
    assert!(
        events.lines().any(|l| l.contains("\"container\":\"shop-web-1\"")
            && l.contains("\"container\":\"shop-db-1\"")
            && l.contains("\"port\":5432")),
        "{events}"
    );
    assert!(c(&["events"]).lines().any(|l| l.contains("shop-web-1") && l.contains("5432")));
    // logs, exec, a one-off run, stop and start.
    assert!(c(&["logs", "db"]).contains("shop-db-1 | db ready"));
    assert_eq!(c(&["exec", "app", "echo", "in app"]).trim(), "in app");
    assert_eq!(c(&["exec", "app", "sh", "-c", "echo $GREETING"]).trim(), "hi there");
    assert_eq!(c(&["run", "--rm", "app", "echo", "one-off"]).trim(), "one-off");
    c(&["stop", "-t", "1", "db"]);
    assert!(c(&["ps", "-a"]).lines().any(|l| l.contains("shop-db-1") && l.contains("exited")));
    c(&["start", "db"]);
    assert!(c(&["ps"]).contains("shop-db-1"));
    let rules = env.ok(&["network", "rules"]);
    assert!(
        rules.contains("compose shop: ") && rules.contains("shop.yaml:6 depends_on"),
        "{rules}"
    );
    // Another project with the same service names lives beside it (names are per network).
    let twin = env.path("twin.yaml");
    std::fs::write(&twin, "services:\n  db:\n    image: cbox\n    command: [\"sleep\", \"100\"]\n").unwrap();
    let t = twin.to_str().unwrap();
    env.ok(&["compose", "-f", t, "-p", "twin", "up", "-d"]);
    assert!(tcp("shop-app-1", "db", "5432").contains("pong"), "shop's db lost its name");
    env.ok(&["compose", "-f", t, "-p", "twin", "down"]);
    // Down: no container, rule or network of the project is left.
    c(&["down"]);
    assert_eq!(c(&["ps", "-a"]).lines().count(), 1, "containers left");
    assert!(!env.ok(&["network", "rules"]).contains("compose shop"));
    assert!(!env.ok(&["network", "ls"]).contains("shop_default"));
}

#[test]
fn a_file_up_cannot_honour_starts_nothing() {
    let env = Env::new();
    image(&env);
    let file = env.path("bad.yaml");
    std::fs::write(&file, format!("{SHOP}    secrets: [token]\n")).unwrap();
    let err = env.fails(&["compose", "-f", file.to_str().unwrap(), "-p", "bad", "up", "-d"]);
    assert!(err.contains("line 20: services.db.secrets"), "{err}");
    assert_eq!(env.ok(&["ps", "-a", "-q"]).trim(), "");
    assert!(!env.ok(&["network", "ls"]).contains("bad_default"));
}

#[test]
fn a_file_from_anywhere_cannot_weaken_a_container_or_read_the_host() {
    let env = Env::new();
    image(&env);
    let dir = env.path("proj");
    std::fs::create_dir_all(dir.join("data")).unwrap();
    std::os::unix::fs::symlink("/etc", dir.join("etc-link")).unwrap();
    let cases = [
        // Option smuggling through values: an image or a user read as `run` options.
        ("    image: \"--privileged\"\n", "--privileged"),
        ("    image: cbox\n    user: \"-v/:/host\"\n", "unable to find user -v/"),
        // Host paths, directly or through a link in the project.
        (
            "    image: cbox\n    volumes: [\"/etc:/host-etc:ro\"]\n",
            "outside the project's directory",
        ),
        (
            "    image: cbox\n    volumes: [\"./etc-link:/x\"]\n",
            "outside the project's directory",
        ),
        (
            "    image: cbox\n    volumes: [\"./data/../..:/x\"]\n",
            "outside the project's directory",
        ),
        ("    image: cbox\n    env_file: /etc/hostname\n", "outside the project's directory"),
        // Another project's rules and names.
        (
            "    image: cbox\n    labels:\n      bulkhead.compose.service: shop.db\n",
            "bulkhead's own",
        ),
        // More options through a mount's target; the host's network through a network's name.
        (
            "    image: cbox\n    volumes: [{type: bind, source: ./data, target: \"/w:idmap\"}]\n",
            "without ':' or ','",
        ),
        ("    image: cbox\n    volumes: [\"./data:/w:idmap\"]\n", "no other options"),
        ("    image: cbox\n    networks: [n]\nnetworks:\n  n:\n    name: host\n", "reserved"),
        // The defaults weakened.
        ("    image: cbox\n    cap_add: [SYS_ADMIN]\n", "weakens the container's defaults"),
        (
            "    image: cbox\n    security_opt: [\"seccomp=unconfined\"]\n",
            "weakens the container's defaults",
        ),
        ("    image: cbox\n    pids_limit: 0\n", "weakens the container's defaults"),
    ];
    for (i, (svc, want)) in cases.iter().enumerate() {
        let file = dir.join(format!("c{i}.yaml"));
        std::fs::write(&file, format!("services:\n  s:\n    command: [\"sleep\", \"100\"]\n{svc}")).unwrap();
        let o = env.run(&["compose", "-f", file.to_str().unwrap(), "-p", &format!("p{i}"), "up", "-d"]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && err.contains(want), "case {i}: {svc:?}: {err}");
        assert_eq!(env.ok(&["ps", "-a", "-q"]).trim(), "", "case {i}: a container was made");
    }
    // `run` alone cannot claim a project's labels either.
    let err = env.fails(&["run", "-d", "--label", "bulkhead.compose.service=shop.db", "cbox", "sleep", "1"]);
    assert!(err.contains("bulkhead's own"), "{err}");
    // Weakening, when asked for, is allowed and said.
    let file = dir.join("weak.yaml");
    std::fs::write(
        &file,
        "services:\n  s:\n    image: cbox\n    cap_add: [SYS_ADMIN]\n    command: [\"sleep\", \"100\"]\n",
    )
    .unwrap();
    let o = env.run(&[
        "compose",
        "-f",
        file.to_str().unwrap(),
        "-p",
        "weak",
        "up",
        "-d",
        "--allow-weakening",
    ]);
    assert!(o.status.success() && String::from_utf8_lossy(&o.stderr).contains("allowed by --allow-weakening"));
    // Another directory's file cannot take the project over, nor bring it down.
    let other = env.path("other");
    std::fs::create_dir_all(&other).unwrap();
    std::fs::write(
        other.join("c.yaml"),
        "services:\n  s:\n    image: cbox\n    command: [\"sleep\", \"100\"]\n",
    )
    .unwrap();
    let other_file = other.join("c.yaml");
    for verb in [&["up", "-d"][..], &["down"][..]] {
        let mut args = vec!["compose", "-f", other_file.to_str().unwrap(), "-p", "weak"];
        args.extend_from_slice(verb);
        let err = env.fails(&args);
        assert!(err.contains("belongs to"), "{verb:?}: {err}");
    }
    env.ok(&["compose", "-f", file.to_str().unwrap(), "-p", "weak", "down"]);
    // Inside the project is fine.
    let file = dir.join("ok.yaml");
    std::fs::write(
        &file,
        "services:\n  s:\n    image: cbox\n    volumes: [\"./data:/data:ro\"]\n    command: [\"sleep\", \"100\"]\n",
    )
    .unwrap();
    env.ok(&["compose", "-f", file.to_str().unwrap(), "-p", "ok", "up", "-d"]);
    env.ok(&["compose", "-f", file.to_str().unwrap(), "-p", "ok", "down"]);
}

#[test]
fn a_restart_policy_from_the_file_restarts_on_failure_twice() {
    let env = Env::new();
    image(&env);
    let file = env.path("crash.yaml");
    std::fs::write(
        &file,
        "services:\n  crashy:\n    image: cbox\n    command: [\"sh\", \"-c\", \"echo run-; exit 1\"]\n    restart: on-failure:2\n",
    )
    .unwrap();
    let f = file.to_str().unwrap();
    env.ok(&["compose", "-f", f, "-p", "crash", "up", "-d"]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let runs = || env.ok(&["logs", "crash-crashy-1"]).matches("run-").count();
    while runs() < 3 {
        assert!(std::time::Instant::now() < deadline, "not restarted twice: {} runs", runs());
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    std::thread::sleep(std::time::Duration::from_millis(1500));
    assert_eq!(runs(), 3, "restarted more than twice");
    env.ok(&["compose", "-f", f, "-p", "crash", "down"]);
}

#[test]
fn service_healthy_waits_for_the_healthcheck() {
    let env = Env::new();
    image(&env);
    let file = env.path("health.yaml");
    std::fs::write(
        &file,
        r#"services:
  db:
    image: cbox
    command: ["sh", "-c", "sleep 1; echo > /tmp/ready; exec sleep 1000"]
    healthcheck:
      test: ["CMD-SHELL", "test -f /tmp/ready"]
      interval: 200ms
      retries: 50
  app:
    image: cbox
    command: ["sleep", "1000"]
    depends_on:
      db:
        condition: service_healthy
"#,
    )
    .unwrap();
    let f = file.to_str().unwrap();
    env.ok(&["compose", "-f", f, "-p", "hc", "up", "-d", "--wait"]);
    let ps = env.ok(&["ps"]);
    assert!(ps.lines().any(|l| l.contains("hc-db-1") && l.contains("(healthy)")), "{ps}");
    // app started only once db was healthy.
    let v: serde_json::Value = serde_json::from_str(&env.ok(&["inspect", "hc-db-1", "hc-app-1"])).unwrap();
    let healthy_at = v[0]["State"]["Health"]["log"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["exit_code"] == 0)
        .map(|l| l["end"].as_str().unwrap().to_owned())
        .expect("a passing check");
    let app_started = v[1]["State"]["StartedAt"].as_str().unwrap().to_owned();
    assert!(app_started >= healthy_at, "app started {app_started}, db healthy {healthy_at}");
    env.ok(&["compose", "-f", f, "-p", "hc", "down"]);
}

const SHARED: &str = r#"services:
  writer:
    image: cbox
    command: ["sh", "-c", "mkdir -p /shared/d && echo data > /shared/d/f && chown -R 1000:1000 /shared/d && sleep 1000"]
    volumes: [shared:/shared]
    secrets: [db_pw]
  reader:
    image: cbox
    user: "1000"
    command: ["sleep", "1000"]
    volumes: ["shared:/shared:ro"]
    configs:
      - source: app_conf
        target: /etc/app.conf
    secrets:
      - source: db_pw
        target: pw
        mode: 0440
  bystander:
    image: cbox
    command: ["sleep", "1000"]
volumes:
  shared:
secrets:
  db_pw:
    file: ./pw.txt
configs:
  app_conf:
    file: ./app.conf
"#;

#[test]
fn a_named_volume_shows_one_owner_to_every_service_and_a_secret_reaches_only_its_services() {
    let env = Env::new();
    image(&env);
    let dir = env.path("proj");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("compose.yaml"), SHARED).unwrap();
    std::fs::write(dir.join("pw.txt"), "s3cr3t-Pa55\n").unwrap();
    std::fs::write(dir.join("app.conf"), "answer=42\n").unwrap();
    let f = dir.join("compose.yaml");
    let f = f.to_str().unwrap();
    let c = |args: &[&str]| {
        let mut all = vec!["compose", "-f", f, "-p", "vol"];
        all.extend_from_slice(args);
        env.ok(&all)
    };
    c(&["up", "-d", "--wait"]);
    let ex = |who: &str, cmd: &str| {
        let o = env.run_bounded(20, &["exec", who, "sh", "-c", cmd]);
        (
            o.status.success(),
            String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr),
        )
    };
    // The writer's files have the same owner in the reader, though their id ranges differ.
    let mut listing = String::new();
    for _ in 0..50 {
        listing = ex("vol-reader-1", "ls -ln /shared/d/f").1;
        if listing.contains(" 1000 ") {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(listing.contains(" 1000     1000 "), "{listing}");
    assert_eq!(ex("vol-writer-1", "ls -ln /shared/d/f").1.split_whitespace().nth(2), Some("1000"));
    assert_eq!(ex("vol-reader-1", "cat /shared/d/f").1.trim(), "data");
    let userns = |n: &str| {
        let v: serde_json::Value = serde_json::from_str(&env.ok(&["inspect", n])).unwrap();
        v[0]["Bulkhead"]["SecurityProfile"]["UserNamespace"].to_string()
    };
    assert_ne!(userns("vol-writer-1"), userns("vol-reader-1"));
    // On disk the volume keeps the ids the containers see (as a layer does).
    let vol = env.root().join("volumes/vol_shared/_data/d/f");
    assert_eq!(std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(&vol).unwrap()), 1000);
    // Read-only where the file says so.
    assert!(!ex("vol-reader-1", "echo x > /shared/d/g").0);
    // The secret: 0400, owned by the service's user, read-only, nosuid, nodev, noexec, on a tmpfs.
    let (ok, out) = ex(
        "vol-writer-1",
        "cat /run/secrets/db_pw; stat -c '%a %u %g' /run/secrets/db_pw; grep ' /run/secrets/db_pw ' /proc/self/mountinfo",
    );
    assert!(ok, "{out}");
    assert!(out.starts_with("s3cr3t-Pa55\n400 0 0\n"), "{out}");
    assert!(out.contains(" ro,nosuid,nodev,noexec") && out.contains(" - tmpfs "), "{out}");
    let (ok, out) = ex(
        "vol-reader-1",
        "cat /run/secrets/pw; stat -c '%a %u %g' /run/secrets/pw /etc/app.conf; cat /etc/app.conf",
    );
    assert!(ok, "{out}");
    assert!(out.contains("s3cr3t-Pa55\n440 1000 0\n444 1000 0\nanswer=42"), "{out}");
    assert!(!ex("vol-reader-1", "echo x > /run/secrets/pw").0);
    // A service that does not name it has nothing of it.
    let (ok, out) = ex("vol-bystander-1", "ls /run/secrets");
    assert!(!ok, "{out}");
    // Not in the environment, inspect, the container's layer, or anywhere in the store.
    for n in ["vol-writer-1", "vol-reader-1"] {
        assert!(!ex(n, "cat /proc/1/environ; env").1.contains("s3cr3t"));
        assert!(!env.ok(&["inspect", n]).contains("s3cr3t"));
    }
    // (The root filesystems are mounts: views of memory and layers, not storage.)
    let grep = Command::new("grep")
        .args(["-rIl", "--exclude-dir=rootfs", "s3cr3t"])
        .arg(env.root())
        .output()
        .unwrap();
    assert!(grep.stdout.is_empty(), "{}", String::from_utf8_lossy(&grep.stdout));
    // Another project may not take this one's volume; declared external, it may.
    let other = env.path("other");
    std::fs::create_dir(&other).unwrap();
    let o = other.join("compose.yaml");
    std::fs::write(
        &o,
        "services:\n  s:\n    image: cbox\n    command: [\"sleep\", \"100\"]\n    volumes: [v:/v]\nvolumes:\n  v:\n    name: vol_shared\n",
    )
    .unwrap();
    let err = env.fails(&["compose", "-f", o.to_str().unwrap(), "-p", "other", "up", "-d"]);
    assert!(err.contains("must start with \"other_\""), "{err}");
    // Nor with -p vol from another directory (a project is its name and its directory).
    let err = env.fails(&["compose", "-f", o.to_str().unwrap(), "-p", "vol", "up", "-d"]);
    assert!(err.contains("belongs to"), "{err}");
    std::fs::write(&o, "services:\n  s:\n    image: cbox\n    command: [\"cat\", \"/v/d/f\"]\n    volumes: [v:/v]\nvolumes:\n  v:\n    name: vol_shared\n    external: true\n").unwrap();
    let err = env.fails(&["compose", "-f", o.to_str().unwrap(), "-p", "other", "up", "-d"]);
    assert!(
        err.contains("belongs to compose project vol") && err.contains("--allow-shared-volumes"),
        "{err}"
    );
    env.ok(&[
        "compose",
        "-f",
        o.to_str().unwrap(),
        "-p",
        "other",
        "up",
        "-d",
        "--allow-shared-volumes",
    ]);
    env.ok(&["compose", "-f", o.to_str().unwrap(), "-p", "other", "down", "-v"]);
    // Nor may a container outside compose mount it by name.
    let err = env.fails(&["run", "--rm", "-v", "vol_shared:/v", "cbox", "true"]);
    assert!(err.contains("belongs to compose project vol"), "{err}");
    // A volume in use is not removed; down -v takes the project's own, and nothing is left.
    assert!(env.fails(&["volume", "rm", "vol_shared"]).contains("in use by"));
    // A container run by hand on the project's network keeps that network, not the rest.
    env.ok(&["run", "-d", "--name", "foreign", "--network", "vol_default", "cbox", "sleep", "100"]);
    let o = env.run(&["compose", "-f", f, "-p", "vol", "down", "-v"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("network vol_default"));
    assert_eq!(env.ok(&["volume", "ls", "-q"]).trim(), "");
    env.ok(&["rm", "-f", "foreign"]);
    c(&["down", "-v"]);
    assert_eq!(env.ok(&["volume", "ls", "-q"]).trim(), "");
    assert_eq!(env.ok(&["ps", "-a", "-q"]).trim(), "");
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains(env.root().to_str().unwrap()), "mounts left");
}

#[test]
fn secrets_and_volumes_that_would_read_the_host_or_block_are_refused() {
    let env = Env::new();
    image(&env);
    let dir = env.path("p");
    std::fs::create_dir(&dir).unwrap();
    let f = dir.join("compose.yaml");
    let up = |file: &str| {
        std::fs::write(&f, file).unwrap();
        env.fails(&["compose", "-f", f.to_str().unwrap(), "-p", "p", "up", "-d"])
    };
    let svc = "services:\n  s:\n    image: cbox\n    command: [\"sleep\", \"100\"]\n";
    // A secret from outside the project's directory (a link counts where it points).
    std::os::unix::fs::symlink("/etc/shadow", dir.join("shadow")).unwrap();
    let e = up(&format!("{svc}    secrets: [s]\nsecrets:\n  s:\n    file: ./shadow\n"));
    assert!(e.contains("outside the project's directory"), "{e}");
    let e = up(&format!("{svc}    secrets: [s]\nsecrets:\n  s:\n    file: /etc/shadow\n"));
    assert!(e.contains("outside the project's directory"), "{e}");
    // From the environment, or undeclared.
    let e = up(&format!("{svc}    secrets: [s]\nsecrets:\n  s:\n    environment: HOME\n"));
    assert!(e.contains("from the environment: not supported"), "{e}");
    let e = up(&format!("{svc}    secrets: [nope]\n"));
    assert!(e.contains("line 5: services.s.secrets: \"nope\" is not declared"), "{e}");
    // A FIFO: refused, not waited on.
    assert!(Command::new("mkfifo").arg(dir.join("fifo")).status().unwrap().success());
    std::fs::write(&f, format!("{svc}    secrets: [s]\nsecrets:\n  s:\n    file: ./fifo\n")).unwrap();
    let o = env.run_bounded(20, &["compose", "-f", f.to_str().unwrap(), "-p", "p", "up", "-d"]);
    assert_ne!(o.status.code(), Some(124), "blocked on a FIFO");
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("not a regular file"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    // Options smuggled through a secret's target or mode.
    std::fs::write(dir.join("pw"), "x").unwrap();
    let e = up(&format!(
        "{svc}    secrets:\n      - source: s\n        target: \"a,uid=0\"\nsecrets:\n  s:\n    file: ./pw\n"
    ));
    assert!(e.contains("',' and '='"), "{e}");
    let e = up(&format!(
        "{svc}    secrets:\n      - source: s\n        mode: 4755\nsecrets:\n  s:\n    file: ./pw\n"
    ));
    assert!(e.contains("at most 0777"), "{e}");
    // An undeclared volume, an anonymous one, another driver.
    let e = up(&format!("{svc}    volumes: [\"data:/data\"]\n"));
    assert!(e.contains("not declared under the top-level `volumes`"), "{e}");
    let e = up(&format!("{svc}    volumes: [\"/data\"]\n"));
    assert!(e.contains("needs a name"), "{e}");
    let e = up(&format!("{svc}    volumes: [\"data:/data\"]\nvolumes:\n  data:\n    driver: nfs\n"));
    assert!(e.contains("only the local driver"), "{e}");
    // Nothing ran, nothing was made.
    assert_eq!(env.ok(&["ps", "-a", "-q"]).trim(), "");
    assert_eq!(env.ok(&["volume", "ls", "-q"]).trim(), "");
}

#[test]
fn learn_lets_through_records_and_suggests_then_enforce_denies() {
    let env = Env::new();
    image(&env);
    let dir = env.path("learnt");
    std::fs::create_dir(&dir).unwrap();
    let file = dir.join("compose.yaml");
    let body = r#"services:
  web:
    image: cbox
    command: ["sleep", "1000"]
    depends_on: [app]
  app:
    image: cbox
    command: ["sh", "-c", "while true; do echo pong | nc -l -p 8080; done"]
    expose: ["8080"]
  db:
    image: cbox
    command: ["sh", "-c", "while true; do echo pong | nc -l -p 5432; done"]
"#;
    std::fs::write(&file, format!("x-bulkhead:\n  policy: learn\n{body}")).unwrap();
    let f = file.to_str().unwrap();
    let c = |args: &[&str]| {
        let mut all = vec!["compose", "-f", f, "-p", "learnt"];
        all.extend_from_slice(args);
        env.ok(&all)
    };
    c(&["up", "-d", "--wait"]);
    let tcp = |from: &str, to: &str, port: &str| {
        let o = env.run_bounded(20, &["exec", from, "timeout", "-s", "KILL", "3", "nc", to, port]);
        String::from_utf8_lossy(&o.stdout).contains("pong")
    };
    let mut reached = false;
    for _ in 0..30 {
        reached = tcp("learnt-web-1", "db", "5432");
        if reached {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    // Learning: what the file does not declare passes, and is recorded.
    assert!(reached, "learning denied web -> db");
    assert!(tcp("learnt-web-1", "app", "8080"));
    let suggested = c(&["policy", "--learned"]);
    assert!(
        suggested.contains("  web:\n    x-bulkhead:\n      talks-to: [\"db:5432\"]"),
        "{suggested}"
    );
    // web -> app is declared (depends_on): not a suggestion.
    assert!(!suggested.contains("app:8080"), "{suggested}");
    assert!(c(&["events"])
        .lines()
        .any(|l| l.contains("\"verdict\":\"learned\"") && l.contains("learnt-db-1")));
    // The suggestion pasted, learning off: web -> db is allowed by the file, app -> db is not.
    std::fs::write(
        &file,
        body.replace(
            "    depends_on: [app]\n",
            "    depends_on: [app]\n    x-bulkhead:\n      talks-to: [\"db:5432\"]\n",
        ),
    )
    .unwrap();
    c(&["up", "-d"]);
    assert!(tcp("learnt-web-1", "db", "5432"), "the pasted rule does not allow web -> db");
    assert!(!tcp("learnt-app-1", "db", "5432"), "enforcing let app -> db through");
    assert!(!env.ok(&["network", "rules"]).contains("learn "));
    c(&["down"]);
}

#[test]
fn up_in_the_foreground_follows_the_output_and_stops_on_sigterm() {
    let env = Env::new();
    image(&env);
    let file = env.path("fg.yaml");
    std::fs::write(
        &file,
        "services:\n  a:\n    image: cbox\n    command: [\"sh\", \"-c\", \"trap 'echo bye; exit 0' TERM; echo hello; while true; do sleep 0.2; done\"]\n",
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_bulkhead"))
        .arg("--root")
        .arg(env.root())
        .arg("--config")
        .arg(env.path("config"))
        .args(["compose", "-f", file.to_str().unwrap(), "-p", "fg", "up"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for l in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(l);
        }
    });
    let wait_for = |what: &str| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while let Ok(l) = rx.recv_timeout(deadline.saturating_duration_since(std::time::Instant::now())) {
            if l.contains(what) {
                return true;
            }
        }
        false
    };
    assert!(wait_for("fg-a-1 | hello"));
    rustix::process::kill_process(rustix::process::Pid::from_child(&child), rustix::process::Signal::TERM).unwrap();
    assert!(wait_for("fg-a-1 | bye"), "the service was not stopped with its stop signal");
    assert!(child.wait().unwrap().success());
    assert!(env
        .ok(&["compose", "-f", file.to_str().unwrap(), "-p", "fg", "ps", "-a"])
        .contains("exited (0)"));
    env.ok(&["compose", "-f", file.to_str().unwrap(), "-p", "fg", "down"]);
}

#[test]
fn depends_on_restart_and_required_are_honoured() {
    let env = Env::new();
    image(&env);
    let file = env.path("deps.yaml");
    std::fs::write(
        &file,
        r#"services:
  db:
    image: cbox
    command: ["sleep", "1000"]
  app:
    image: cbox
    command: ["sleep", "1000"]
    depends_on:
      db:
        condition: service_started
        restart: true
      setup:
        condition: service_completed_successfully
        required: false
  setup:
    image: cbox
    command: ["sh", "-c", "exit 3"]
  other:
    image: cbox
    command: ["sleep", "1000"]
    depends_on: [db]
"#,
    )
    .unwrap();
    let f = file.to_str().unwrap();
    // setup fails, but app does not require it: a warning, and up goes on.
    let o = env.run(&["compose", "-f", f, "-p", "deps", "up", "-d"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stderr).contains("not required: going on"));
    let started = |n: &str| {
        let v: serde_json::Value = serde_json::from_str(&env.ok(&["inspect", n])).unwrap();
        v[0]["State"]["StartedAt"].as_str().unwrap_or("").to_owned()
    };
    let (app, other) = (started("deps-app-1"), started("deps-other-1"));
    let out = env.ok(&["compose", "-f", f, "-p", "deps", "restart", "-t", "1", "db"]);
    assert!(out.contains("deps-app-1 start"), "{out}");
    assert_ne!(started("deps-app-1"), app, "app (restart: true) was not restarted with db");
    assert_eq!(started("deps-other-1"), other, "other (no restart: true) was restarted");
    env.ok(&["compose", "-f", f, "-p", "deps", "down"]);
}
