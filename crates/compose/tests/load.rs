//! Loading compose files: what is refused (one line, with the file's line), what is derived.

use std::path::Path;

use bulkhead_compose::{load_str, policy, Project, Result};

fn env(name: &str) -> Option<String> {
    match name {
        "DB_PORT" => Some("5432".into()),
        "TAG" => Some("1.36".into()),
        _ => None,
    }
}

fn load(text: &str) -> Result<Project> {
    load_str(text, Path::new("/app/compose.yaml"), Path::new("/app"), Some("app"), &env)
}

const APP: &str = r#"
name: shop
x-bulkhead:
  policy: enforce
services:
  web:
    image: busybox:${TAG:-latest}
    command: httpd -f -p 80
    ports:
      - "127.0.0.1:18080:80"
    depends_on:
      - app
  app:
    image: busybox
    depends_on:
      db:
        condition: service_started
    x-bulkhead:
      talks-to: ["cache:6379"]
  db:
    image: busybox
    expose:
      - "${DB_PORT}"
  cache:
    image: busybox
"#;

#[test]
fn a_three_tier_application_and_its_policy() {
    let p = load(APP).unwrap();
    assert_eq!(p.name, "app", "-p wins over name:");
    assert_eq!(p.order, vec!["db", "app", "web", "cache"]);
    let web = p.model.services.0["web"].as_ref().unwrap();
    assert_eq!(web.image.as_deref(), Some("busybox:1.36"));
    let pol = policy::derive(&p).unwrap();
    let rules: Vec<(String, String, u16, String, usize)> = pol
        .allow
        .iter()
        .map(|a| (a.from.clone(), a.to.clone(), a.port, a.because.clone(), a.line))
        .collect();
    assert_eq!(
        rules,
        vec![
            ("app".into(), "db".into(), 5432, "depends_on".into(), 15),
            ("app".into(), "cache".into(), 6379, "x-bulkhead.talks-to".into(), 19),
        ],
        "{pol:#?}"
    );
    // web depends on app, which exposes nothing: said, nothing allowed.
    assert_eq!(pol.warnings.len(), 1, "{:?}", pol.warnings);
    assert!(pol.warnings[0].contains("web -> app"), "{:?}", pol.warnings);
    assert!(!pol.learn);
}

fn err(text: &str) -> String {
    match load(text).and_then(|p| policy::derive(&p).map(|_| ())) {
        Ok(()) => panic!("accepted: {text:?}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn bad_files_are_refused_with_their_line() {
    let cases = [
        (
            "services:\n  web:\n    image: busybox\n    imagee: x\n",
            "line 4: services.web.imagee: unknown key",
        ),
        (
            "services:\n  web:\n    image: b\n    privileged: true\n",
            "line 4: services.web.privileged",
        ),
        ("services:\n  web:\n    build: .\n", "line 3: services.web.build"),
        (
            "services:\n  web:\n    image: b\n    healthcheck:\n      tests: x\n",
            "line 5: services.web.healthcheck.tests: unknown key",
        ),
        (
            "services:\n  web:\n    image: ${TAG:?needs a tag}${NOPE:?give NOPE}\n",
            "line 3: NOPE: give NOPE",
        ),
        ("services:\n  web:\n    image: ${TAG\n", "line 3:"),
        ("services:\n  web:\n    image: a $b c $\n", "line 3:"),
        (
            "services:\n  a:\n    image: b\n    depends_on: [b]\n  b:\n    image: b\n    depends_on: [a]\n",
            "depends_on makes a cycle: a -> b -> a",
        ),
        (
            "services:\n  a:\n    image: b\n    depends_on: [nope]\n",
            "line 4: services.a.depends_on: no service \"nope\"",
        ),
        (
            "services:\n  a:\n    image: b\n    x-bulkhead:\n      talks-to: [\"ghost:80\"]\n",
            "line 5: services.a.x-bulkhead.talks-to: no service \"ghost\"",
        ),
        (
            "services:\n  a:\n    image: b\n    ports: [\"80-90:80-90\"]\n  c:\n    image: b\n    depends_on: [a]\n",
            "line 4: services.a.ports[0]",
        ),
        ("x-bulkhead:\n  policy: sometimes\nservices: {}\n", "x-bulkhead.policy"),
        (
            "services:\n  web:\n    image: b\n    read_only: maybe\n",
            "line 4: services.web.read_only",
        ),
        (
            "services:\n  web:\n    image: b\n  web:\n    image: c\n",
            "line 4: key \"web\" given twice",
        ),
        ("bogus: 1\n", "line 1: (top level).bogus: unknown key"),
    ];
    for (text, want) in cases {
        let got = err(text);
        assert!(got.contains(want), "{text:?}\n  got:  {got}\n  want: {want}");
        assert!(!got.contains('\n'), "more than one line: {got}");
    }
}

#[test]
fn project_names_are_checked() {
    let e = load_str(
        "name: Not Valid\nservices: {}\n",
        Path::new("/x/compose.yaml"),
        Path::new("/x"),
        None,
        &env,
    )
    .unwrap_err();
    assert!(e.to_string().starts_with("line 1: project name"), "{e}");
    let p = load_str(
        "name: shop\nservices: {}\n",
        Path::new("/x/compose.yaml"),
        Path::new("/x"),
        None,
        &env,
    )
    .unwrap();
    assert_eq!(p.name, "shop");
    assert_eq!(bulkhead_compose::normalize_project_name("My App.v2"), "myappv2");
}

#[test]
fn merges_anchors_and_extensions_as_the_specification_says() {
    let p =
        load("x-common: &c\n  image: busybox\n  read_only: true\nservices:\n  a:\n    <<: *c\n    read_only: false\n  b:\n    <<: *c\n")
            .unwrap();
    let a = p.model.services.0["a"].as_ref().unwrap();
    let b = p.model.services.0["b"].as_ref().unwrap();
    assert_eq!((a.image.as_deref(), a.read_only), (Some("busybox"), false));
    assert_eq!((b.image.as_deref(), b.read_only), (Some("busybox"), true));
    // `$$` is a literal `$`, never a variable.
    let p = load("services:\n  a:\n    image: b\n    command: echo $$HOME\n").unwrap();
    let cmd = format!("{:?}", p.model.services.0["a"].as_ref().unwrap().command);
    assert!(cmd.contains("$HOME"), "{cmd}");
}

#[test]
fn env_files_parse_as_docker_compose_reads_them() {
    let v = bulkhead_compose::parse_env_file("# c\nA=1\nexport B=\"two words\"\nC='x # y'\nD=val # comment\n\n").unwrap();
    assert_eq!(
        v,
        vec![
            ("A".into(), "1".into()),
            ("B".into(), "two words".into()),
            ("C".into(), "x # y".into()),
            ("D".into(), "val".into())
        ]
    );
    assert_eq!(bulkhead_compose::parse_env_file("A=1\nnot a line\n").unwrap_err().0, 2);
    assert!(bulkhead_compose::parse_env_file("1A=x\n").is_err());
}

#[test]
fn mangled_files_never_panic_and_errors_stay_on_one_line() {
    // A poor man's fuzzing (cargo-fuzz is not on this machine; fuzz/fuzz_targets/compose_file.rs
    // is the real target): 20,000 files made by cutting, repeating and splicing bytes of a real
    // one, with a fixed seed.
    let base = APP.as_bytes();
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let alphabet = b"{}[]:-&*<>$!|'\"#\n \t,?%@`";
    for _ in 0..20_000 {
        let mut f = base.to_vec();
        for _ in 0..(next() % 6 + 1) {
            let at = (next() as usize) % f.len().max(1);
            match next() % 4 {
                0 if !f.is_empty() => {
                    f.remove(at.min(f.len() - 1));
                }
                0 => {}
                1 => f.insert(at, alphabet[(next() as usize) % alphabet.len()]),
                2 => {
                    let len = (next() as usize) % 40;
                    let end = (at + len).min(f.len());
                    let piece = f[at..end].to_vec();
                    f.splice(at..at, piece);
                }
                _ => f.truncate(at),
            }
        }
        let Ok(text) = std::str::from_utf8(&f) else { continue };
        if let Err(e) = load(text).and_then(|p| policy::derive(&p).map(|_| ())) {
            assert!(!e.to_string().contains('\n'), "{text:?}: {e}");
        }
    }
}
