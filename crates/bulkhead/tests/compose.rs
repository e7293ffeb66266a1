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
