//! The scanner against real content: a debootstrap root filesystem, real `requests` wheels from
//! PyPI, a real binary built with cargo-auditable, real OSV advisories (../shared/data/osv), and
//! the official CycloneDX and SPDX validators. scripts/setup fetches and builds the fixtures.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{busybox_rootfs, sh, umoci_image, Env};
use serde_json::Value;

fn fixtures() -> PathBuf {
    PathBuf::from(std::env::var("BULKHEAD_FIXTURES").unwrap_or_else(|_| "/var/cache/bulkhead-fixtures".into()))
}

fn osv(source: &str) -> PathBuf {
    let base = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/osv");
    match source {
        "pypa" => base.join("pypa/vulns"),
        _ => base.join("rustsec/crates"),
    }
}

fn venv_python() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.venv/bin/python")
}

/// Unpacks a wheel (a zip) into `site` as pip would lay it out.
fn install_wheel(site: &Path, version: &str) {
    std::fs::create_dir_all(site).unwrap();
    let wheel = fixtures().join(format!("wheels/requests-{version}-py2.py3-none-any.whl"));
    sh(Command::new("python3").args(["-m", "zipfile", "-e"]).arg(&wheel).arg(site));
}

fn json(s: &str) -> Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("{e}: {s}"))
}

fn packages(bom: &Value) -> Vec<&Value> {
    bom["packages"].as_array().unwrap().iter().collect()
}

fn find<'a>(bom: &'a Value, name: &str) -> Option<&'a Value> {
    bom["packages"].as_array().unwrap().iter().find(|p| p["name"] == name)
}

fn validate_cyclonedx(file: &Path) {
    let code = "import sys\n\
from cyclonedx.validation.json import JsonStrictValidator\n\
from cyclonedx.schema import SchemaVersion\n\
err = JsonStrictValidator(SchemaVersion.from_version('1.6')).validate_str(open(sys.argv[1]).read())\n\
sys.exit(f'invalid: {err}' if err is not None else 0)\n";
    sh(Command::new(venv_python()).args(["-c", code]).arg(file));
}

fn validate_spdx(file: &Path) {
    let tool = venv_python().with_file_name("pyspdxtools");
    sh(Command::new(tool).arg("-i").arg(file));
}

#[test]
fn debian_minbase_packages_are_what_dpkg_says() {
    let minbase =
        PathBuf::from(std::env::var("BULKHEAD_BENCH_CACHE").unwrap_or_else(|_| "/var/cache/bulkhead-bench".into())).join("minbase");
    assert!(
        minbase.join("var/lib/dpkg/status").is_file(),
        "{} missing: run scripts/setup",
        minbase.display()
    );
    let env = Env::new();
    env.ok(&["image", "import", "--rootfs", minbase.to_str().unwrap(), "-t", "minbase:test"]);
    let bom = json(&env.ok(&["--format", "json", "sbom", "minbase:test"]));

    // What dpkg itself says, in that root.
    let admindir = format!("--admindir={}", minbase.join("var/lib/dpkg").display());
    let out = Command::new("dpkg-query")
        .args([
            admindir.as_str(),
            "-W",
            "-f",
            "${Package}\t${Version}\t${source:Package}\t${source:Version}\n",
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    let mut expected: Vec<String> = String::from_utf8(out.stdout).unwrap().lines().map(str::to_string).collect();
    expected.sort();
    let mut got: Vec<String> = packages(&bom)
        .iter()
        .filter(|p| p["found_by"] == "dpkg")
        .map(|p| {
            format!(
                "{}\t{}\t{}\t{}",
                p["name"].as_str().unwrap(),
                p["version"].as_str().unwrap(),
                p["source_name"].as_str().unwrap(),
                p["source_version"].as_str().unwrap()
            )
        })
        .collect();
    got.sort();
    assert!(expected.len() > 50);
    assert_eq!(
        got, expected,
        "the dpkg cataloger must list exactly what dpkg-query does, sources included"
    );
    // Nothing else: every ELF file belongs to a package, so no binary is reported on its own.
    assert_eq!(packages(&bom).len(), expected.len(), "{bom:#}");
    assert_eq!(bom["distro"]["id"], "debian");
    let libc = find(&bom, "libc6").unwrap();
    assert_eq!(libc["layer"], 1);
    assert!(libc["purl"].as_str().unwrap().starts_with("pkg:deb/debian/libc6@"), "{libc}");
    assert!(libc["purl"].as_str().unwrap().contains("distro=debian-12"), "{libc}");

    // Distribution advisories name source packages: libc6 comes from glibc, and a record for
    // Debian 12 applies while one for Debian 11 or another distribution does not.
    let glibc = libc["source_version"].as_str().unwrap();
    let adv = env.path("debian-osv");
    std::fs::create_dir_all(&adv).unwrap();
    for (id, eco) in [
        ("TEST-DEB-12", "Debian:12"),
        ("TEST-DEB-11", "Debian:11"),
        ("TEST-UBU", "Ubuntu:22.04"),
    ] {
        let rec = serde_json::json!({"id": id, "modified": "2026-01-01T00:00:00Z",
            "affected": [{"package": {"ecosystem": eco, "name": "glibc"},
                          "ranges": [{"type": "ECOSYSTEM", "events": [{"introduced": "0"}, {"fixed": format!("{glibc}+zz1")}]}]}]});
        std::fs::write(adv.join(format!("{id}.json")), rec.to_string()).unwrap();
    }
    env.ok(&["db", "import", adv.to_str().unwrap()]);
    let scan = json(&env.ok(&["--format", "json", "scan", "minbase:test"]));
    let hits: Vec<(&str, &str)> = scan["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| (f["id"].as_str().unwrap(), f["name"].as_str().unwrap()))
        .collect();
    assert!(hits.contains(&("TEST-DEB-12", "libc6")), "{hits:?}");
    assert!(hits.iter().all(|(id, _)| *id == "TEST-DEB-12"), "{hits:?}");

    // Both SBOM formats pass the official validators.
    let cdx = env.path("minbase.cdx.json");
    env.ok(&["--format", "cyclonedx-json", "sbom", "minbase:test", "-o", cdx.to_str().unwrap()]);
    validate_cyclonedx(&cdx);
    let spdx = env.path("minbase.spdx.json");
    env.ok(&["--format", "spdx-json", "sbom", "minbase:test", "-o", spdx.to_str().unwrap()]);
    validate_spdx(&spdx);
    let doc = json(&std::fs::read_to_string(&spdx).unwrap());
    assert_eq!(
        doc["packages"].as_array().unwrap().len(),
        expected.len() + 2,
        "image, OS, and one per package"
    );
}

/// Base (busybox) → old requests → requests upgraded, as three layers.
fn python_image(env: &Env, upgrade: bool) -> String {
    let layout = env.path(if upgrade { "py-upgraded" } else { "py-old" });
    let site = "usr/lib/python3/dist-packages";
    let base = |r: &Path| busybox_rootfs(r);
    let old = |r: &Path| install_wheel(&r.join(site), "2.19.1");
    let new = |r: &Path| {
        std::fs::remove_dir_all(r.join(site).join("requests-2.19.1.dist-info")).unwrap();
        std::fs::remove_dir_all(r.join(site).join("requests")).unwrap();
        install_wheel(&r.join(site), "2.20.0");
    };
    let name = if upgrade { "py:upgraded" } else { "py:old" };
    if upgrade {
        umoci_image(&layout, &[&base, &old, &new]);
    } else {
        umoci_image(&layout, &[&base, &old]);
    }
    env.ok(&["image", "import", layout.to_str().unwrap(), "-t", name]);
    name.to_string()
}

#[test]
fn old_requests_is_found_with_its_fix_and_an_upgrade_removes_it() {
    let env = Env::new();
    // No database yet: scan says what to do; run is not gated.
    let old = python_image(&env, false);
    let err = env.fails(&["scan", &old]);
    assert!(err.contains("no vulnerability database") && err.contains("db import"), "{err}");
    env.ok(&["db", "import", osv("pypa").to_str().unwrap(), "--source", "pypa"]);
    let status = env.ok(&["--format", "json", "db", "status"]);
    let status = json(&status);
    assert_eq!(status["sources"][0]["name"], "pypa");
    assert!(status["ecosystems"]["PyPI"].as_i64().unwrap() > 2000, "{status}");

    // The bill of materials: busybox found in a binary of layer 1, requests in layer 2.
    let bom = json(&env.ok(&["--format", "json", "sbom", &old]));
    let requests = find(&bom, "requests").expect("requests");
    assert_eq!(
        (requests["version"].as_str(), requests["layer"].as_u64()),
        (Some("2.19.1"), Some(2))
    );
    assert_eq!(
        requests["path"],
        "/usr/lib/python3/dist-packages/requests-2.19.1.dist-info/METADATA"
    );
    assert_eq!(requests["purl"], "pkg:pypi/requests@2.19.1");
    let busybox = find(&bom, "busybox").expect("busybox from its banner");
    assert_eq!(
        (busybox["layer"].as_u64(), busybox["path"].as_str()),
        (Some(1), Some("/bin/busybox"))
    );

    let scan = json(&env.ok(&["--format", "json", "scan", &old]));
    let findings = scan["findings"].as_array().unwrap();
    let f = findings
        .iter()
        .find(|f| f["id"] == "PYSEC-2018-28")
        .unwrap_or_else(|| panic!("{scan:#}"));
    assert!(f["aliases"].as_array().unwrap().iter().any(|a| a == "CVE-2018-18074"), "{f}");
    assert_eq!(f["fixed"], serde_json::json!(["2.20.0"]));
    assert_eq!(f["installed"], "2.19.1");
    assert_eq!(f["layer"], 2);
    // PYSEC-2018-28 carries no rating.
    assert_eq!(f["rating"]["severity"], "unknown");
    // One finding per vulnerability: no id appears as another finding's alias.
    let ids: Vec<&str> = findings.iter().map(|f| f["id"].as_str().unwrap()).collect();
    for f in findings {
        for a in f["aliases"].as_array().unwrap() {
            assert!(!ids.contains(&a.as_str().unwrap()), "{a} is both a finding and an alias");
        }
    }

    // The table names package, fix, advisory with aliases, layer and path.
    let table = env.ok(&["scan", &old]);
    let line = table.lines().find(|l| l.contains("PYSEC-2018-28")).unwrap();
    for want in [
        "requests",
        "2.19.1",
        "2.20.0",
        "CVE-2018-18074",
        "unknown",
        "requests-2.19.1.dist-info",
    ] {
        assert!(line.contains(want), "{want} missing from {line:?}");
    }

    // The gate: unknown counts as high unless told otherwise.
    let o = env.run(&["scan", &old, "--fail-on", "high"]);
    assert_eq!(o.status.code(), Some(3), "{}", String::from_utf8_lossy(&o.stderr));
    let o = env.run(&["scan", &old, "--fail-on", "critical", "--unknown-as", "medium"]);
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));

    // Ignore rules apply until they expire.
    let ids_all: Vec<String> = findings.iter().map(|f| f["id"].as_str().unwrap().to_string()).collect();
    let rules = |expires: &str| {
        ids_all
            .iter()
            .map(|id| format!("[[ignore]]\nid = \"{id}\"\nreason = \"test\"\nexpires = {expires}\n"))
            .collect::<String>()
    };
    let ignore = env.path("ignore.toml");
    let scan_ignoring = |rules: String| {
        std::fs::write(&ignore, rules).unwrap();
        env.run(&["scan", &old, "--fail-on", "low", "--ignore", ignore.to_str().unwrap()])
    };
    let o = scan_ignoring(rules("2999-01-01"));
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    let o = scan_ignoring(rules("2020-01-01"));
    assert_eq!(o.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&o.stderr).contains("expired on 2020-01-01"));
    std::fs::write(
        env.path("ignore.toml"),
        "[[ignore]]\nid = \"X\"\nreason = \"\"\nexpires = 2999-01-01\n",
    )
    .unwrap();
    let err = env.fails(&["scan", &old, "--ignore", env.path("ignore.toml").to_str().unwrap()]);
    assert!(err.contains("no reason"), "{err}");

    // SARIF and CycloneDX with vulnerabilities.
    let sarif = json(&env.ok(&["--format", "sarif", "scan", &old]));
    let results = sarif["runs"][0]["results"].as_array().unwrap();
    let r = results.iter().find(|r| r["ruleId"] == "PYSEC-2018-28").unwrap();
    assert_eq!(r["level"], "error");
    assert_eq!(
        r["locations"][0]["physicalLocation"]["artifactLocation"]["uri"],
        "usr/lib/python3/dist-packages/requests-2.19.1.dist-info/METADATA"
    );
    let cdx = env.path("scan.cdx.json");
    env.ok(&["--format", "cyclonedx-json", "scan", &old, "-o", cdx.to_str().unwrap()]);
    validate_cyclonedx(&cdx);
    let doc = json(&std::fs::read_to_string(&cdx).unwrap());
    assert!(doc["vulnerabilities"]
        .as_array()
        .unwrap()
        .iter()
        .any(|v| v["id"] == "PYSEC-2018-28"));

    // Upgraded in a later layer: the finding is gone, the new version belongs to layer 3.
    let new = python_image(&env, true);
    let bom = json(&env.ok(&["--format", "json", "sbom", &new]));
    let requests: Vec<&Value> = packages(&bom).into_iter().filter(|p| p["name"] == "requests").collect();
    assert_eq!(requests.len(), 1, "the deleted version is not reported: {bom:#}");
    assert_eq!(
        (requests[0]["version"].as_str(), requests[0]["layer"].as_u64()),
        (Some("2.20.0"), Some(3))
    );
    assert_eq!(find(&bom, "busybox").unwrap()["layer"], 1);
    let scan = json(&env.ok(&["--format", "json", "scan", &new]));
    assert!(
        !scan["findings"].as_array().unwrap().iter().any(|f| f["id"] == "PYSEC-2018-28"),
        "{scan:#}"
    );

    // The run-time gate: warn by default, refuse when the policy says so.
    let o = env.run(&["run", "--rm", &old, "/bin/sh", "-c", "echo ran"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(String::from_utf8_lossy(&o.stdout), "ran\n");
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("PYSEC-2018-28 in requests 2.19.1"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    std::fs::write(env.path("config/policy.toml"), "[scan]\ngate = \"deny\"\nfail_on = \"high\"\n").unwrap();
    let err = env.fails(&["run", "--rm", &old, "/bin/sh", "-c", "echo ran"]);
    assert!(err.contains("refusing to run py:old") && err.contains("PYSEC-2018-28"), "{err}");
    // 2.20.0 still has CVE-2023-32681 (fixed in 2.31.0): refused too, until the policy's ignore
    // file accepts that one.
    let err = env.fails(&["run", "--rm", &new, "/bin/sh", "-c", "echo ran"]);
    assert!(err.contains("PYSEC-2023-74 in requests 2.20.0"), "{err}");
    std::fs::write(
        env.path("accepted.toml"),
        "[[ignore]]\nid = \"CVE-2023-32681\"\nreason = \"no proxies\"\nexpires = 2999-12-31\n",
    )
    .unwrap();
    let policy = format!("[scan]\ngate = \"deny\"\nignore = \"{}\"\n", env.path("accepted.toml").display());
    std::fs::write(env.path("config/policy.toml"), policy).unwrap();
    let o = env.run(&["run", "--rm", &new, "/bin/sh", "-c", "echo ran"]);
    assert!(
        o.status.success(),
        "the upgraded image runs: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    env.fails(&["run", "--rm", &old, "/bin/sh", "-c", "echo ran"]);
    std::fs::write(env.path("config/policy.toml"), "[scan]\ngate = \"deny\"\nunknown_as = \"low\"\n").unwrap();
    env.ok(&["run", "--rm", &old, "/bin/sh", "-c", "true"]);
}

#[test]
fn binaries_and_broken_databases() {
    let app = fixtures().join("auditable-app");
    assert!(app.is_file(), "{} missing: run scripts/setup", app.display());
    let env = Env::new();
    let layout = env.path("bin");
    let base = |r: &Path| busybox_rootfs(r);
    let add = |r: &Path| {
        std::fs::create_dir_all(r.join("usr/local/bin")).unwrap();
        std::fs::copy(&app, r.join("usr/local/bin/auditable-app")).unwrap();
        std::fs::copy(fixtures().join("go-app"), r.join("usr/local/bin/go-app")).unwrap();
        // A vendored library carrying OpenSSL's version text, as a statically linked copy would.
        let mut lib = std::fs::read("/bin/true").unwrap();
        lib.extend_from_slice(b"\0OpenSSL 1.1.1k  25 Mar 2021\0");
        std::fs::create_dir_all(r.join("opt/vendor/lib")).unwrap();
        std::fs::write(r.join("opt/vendor/lib/libvendored.so.1"), lib).unwrap();
        // Real files from Debian packages, placed where no package manager of the image owns them:
        // the Python runtime library, a Maven-built jar, and that jar nested in a fat jar.
        std::fs::create_dir_all(r.join("opt/py/lib")).unwrap();
        std::fs::copy(
            "/usr/lib/x86_64-linux-gnu/libpython3.11.so.1.0",
            r.join("opt/py/lib/libpython3.11.so.1.0"),
        )
        .unwrap();
        std::fs::create_dir_all(r.join("opt/app/lib")).unwrap();
        std::fs::copy("/usr/share/java/commons-io.jar", r.join("opt/app/lib/commons-io.jar")).unwrap();
        sh(Command::new("python3")
            .args(["-c", "import sys, zipfile\nwith zipfile.ZipFile(sys.argv[1], 'w') as z:\n    z.writestr('META-INF/MANIFEST.MF', 'Manifest-Version: 1.0\\nImplementation-Title: fat\\nImplementation-Version: 9.9\\n')\n    z.write(sys.argv[2], 'BOOT-INF/lib/commons-io-2.11.0.jar')"])
            .arg(r.join("opt/app/fat.jar"))
            .arg("/usr/share/java/commons-io.jar"));
        // npm packages as installed.
        std::fs::create_dir_all(r.join("app/node_modules/lodash")).unwrap();
        std::fs::write(
            r.join("app/node_modules/lodash/package.json"),
            r#"{"name":"lodash","version":"4.17.20","license":"MIT"}"#,
        )
        .unwrap();
        // Hostile and broken inputs: each becomes a warning, never a failure.
        std::fs::create_dir_all(r.join("var/lib/dpkg")).unwrap();
        std::fs::write(r.join("var/lib/dpkg/status"), b"Package: \xff\xfe\n").unwrap();
        let busybox = std::fs::read("/bin/busybox").unwrap();
        std::fs::write(r.join("usr/local/bin/truncated"), &busybox[..200]).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(r.join("usr/local/bin/truncated"), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::write(r.join("app/node_modules/lodash/../broken.jar"), b"PK\x03\x04 not really").unwrap();
        std::fs::create_dir_all(r.join("app/node_modules/bad")).unwrap();
        std::fs::write(r.join("app/node_modules/bad/package.json"), b"{\"name\": ").unwrap();
    };
    umoci_image(&layout, &[&base, &add]);
    env.ok(&["image", "import", layout.to_str().unwrap(), "-t", "bins:1"]);
    let o = env.run(&["--format", "json", "sbom", "bins:1"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let stderr = String::from_utf8_lossy(&o.stderr);
    for broken in [
        "/var/lib/dpkg/status",
        "/usr/local/bin/truncated",
        "/app/node_modules/broken.jar",
        "/app/node_modules/bad/package.json",
    ] {
        assert!(
            stderr.lines().any(|l| l.starts_with("bulkhead: warning:") && l.contains(broken)),
            "no warning for {broken}: {stderr}"
        );
    }
    assert!(!stderr.contains("panicked"));
    let bom = json(&String::from_utf8_lossy(&o.stdout));
    let smallvec = find(&bom, "smallvec").unwrap_or_else(|| panic!("{bom:#}"));
    assert_eq!(
        (
            smallvec["version"].as_str(),
            smallvec["found_by"].as_str(),
            smallvec["layer"].as_u64()
        ),
        (Some("1.6.0"), Some("rust-auditable"), Some(2))
    );
    assert_eq!(smallvec["path"], "/usr/local/bin/auditable-app");
    let openssl = find(&bom, "openssl").unwrap_or_else(|| panic!("{bom:#}"));
    assert_eq!(
        (openssl["version"].as_str(), openssl["path"].as_str()),
        (Some("1.1.1k"), Some("/opt/vendor/lib/libvendored.so.1"))
    );
    assert_eq!(openssl["purl"], "pkg:generic/openssl@1.1.1k");
    assert_eq!(find(&bom, "lodash").unwrap()["purl"], "pkg:npm/lodash@4.17.20");
    // The Go module binary: toolchain, main module, vendored dependency.
    let go: Vec<String> = packages(&bom)
        .iter()
        .filter(|p| p["found_by"] == "go-binary")
        .map(|p| {
            format!(
                "{}@{} {}",
                p["name"].as_str().unwrap(),
                p["version"].as_str().unwrap(),
                p["path"].as_str().unwrap()
            )
        })
        .collect();
    let toolchain = String::from_utf8(Command::new("go").arg("version").output().unwrap().stdout).unwrap();
    let toolchain = toolchain.split_whitespace().nth(2).unwrap().trim_start_matches("go").to_string();
    assert_eq!(
        go,
        [
            format!("stdlib@v{toolchain} /usr/local/bin/go-app"),
            "example.com/scanfixture@(devel) /usr/local/bin/go-app".to_string(),
            "golang.org/x/text@v0.7.0 /usr/local/bin/go-app".to_string()
        ]
    );
    let python = find(&bom, "python").unwrap_or_else(|| panic!("{bom:#}"));
    let debian_python = Command::new("dpkg-query")
        .args(["-W", "-f", "${Version}", "libpython3.11"])
        .output()
        .unwrap();
    let upstream = String::from_utf8_lossy(&debian_python.stdout)
        .split('-')
        .next()
        .unwrap()
        .to_string();
    assert_eq!(
        (python["version"].as_str(), python["path"].as_str()),
        (Some(upstream.as_str()), Some("/opt/py/lib/libpython3.11.so.1.0"))
    );
    let commons: Vec<&Value> = packages(&bom)
        .into_iter()
        .filter(|p| p["name"] == "commons-io:commons-io")
        .collect();
    let paths: Vec<&str> = commons.iter().map(|p| p["path"].as_str().unwrap()).collect();
    assert_eq!(
        paths,
        ["/opt/app/fat.jar:BOOT-INF/lib/commons-io-2.11.0.jar", "/opt/app/lib/commons-io.jar"],
        "{bom:#}"
    );
    assert!(commons
        .iter()
        .all(|p| p["purl"].as_str().unwrap().starts_with("pkg:maven/commons-io/commons-io@2.")));
    assert_eq!(find(&bom, "fat").unwrap()["version"], "9.9");

    // OSV's archives are zip files: import one made from the RustSec records.
    let zip = env.path("crates.io-all.zip");
    sh(Command::new("python3").args(["-c", "import sys, zipfile, pathlib\nwith zipfile.ZipFile(sys.argv[1], 'w', zipfile.ZIP_DEFLATED) as z:\n    [z.write(p, p.name) for p in pathlib.Path(sys.argv[2]).glob('*.json')]"]).arg(&zip).arg(osv("rustsec")));
    let out = env.ok(&["db", "import", zip.to_str().unwrap(), "--source", "rustsec"]);
    assert!(out.contains("rustsec: 1206 advisories imported"), "{out}");
    let scan = json(&env.ok(&["--format", "json", "scan", "bins:1"]));
    let f = scan["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["id"] == "RUSTSEC-2021-0003")
        .unwrap_or_else(|| panic!("{scan:#}"));
    assert_eq!((f["name"].as_str(), f["installed"].as_str()), (Some("smallvec"), Some("1.6.0")));
    assert_eq!(f["fixed"], serde_json::json!(["1.6.1"]));
    // Go advisories name module paths and versions without the v (records written for this test:
    // the shared data has no Go advisories).
    let go_osv = env.path("go-osv");
    std::fs::create_dir_all(&go_osv).unwrap();
    for (id, name, fixed) in [
        ("TEST-GO-TEXT", "golang.org/x/text", "0.7.1"),
        ("TEST-GO-OLD", "golang.org/x/text", "0.3.8"),
        ("TEST-GO-STD", "stdlib", "9.0.0"),
    ] {
        let rec = serde_json::json!({"id": id, "affected": [{"package": {"ecosystem": "Go", "name": name},
            "ranges": [{"type": "SEMVER", "events": [{"introduced": "0"}, {"fixed": fixed}]}]}]});
        std::fs::write(go_osv.join(format!("{id}.json")), rec.to_string()).unwrap();
    }
    env.ok(&["db", "import", go_osv.to_str().unwrap()]);
    let scan = json(&env.ok(&["--format", "json", "scan", "bins:1"]));
    let mut go_ids: Vec<&str> = scan["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["ecosystem"] == "Go")
        .map(|f| f["id"].as_str().unwrap())
        .collect();
    go_ids.sort();
    assert_eq!(go_ids, ["TEST-GO-STD", "TEST-GO-TEXT"]);
    // Importing the same source again replaces it; a file that is not OSV is skipped with a warning.
    let bad = env.path("bad-osv");
    std::fs::create_dir_all(&bad).unwrap();
    std::fs::write(bad.join("x.json"), "{\"id\": 5}").unwrap();
    let err = env.fails(&["db", "import", bad.to_str().unwrap()]);
    assert!(err.contains("no OSV records"), "{err}");
    let status = json(&env.ok(&["--format", "json", "db", "status"]));
    assert_eq!(
        status["sources"].as_array().unwrap().len(),
        2,
        "a failed import changes nothing: {status}"
    );
}

#[test]
fn rpm_database_from_rpm_itself() {
    let env = Env::new();
    let top = env.path("rpmbuild");
    std::fs::create_dir_all(top.join("SPECS")).unwrap();
    std::fs::write(
        top.join("SPECS/demo.spec"),
        "Name: demo-tool\nVersion: 1.2.3\nRelease: 4.el9\nEpoch: 1\nSummary: demo\nLicense: MIT\nBuildArch: noarch\n\
%description\ndemo\n%install\nmkdir -p %{buildroot}/usr/share/demo\necho hi > %{buildroot}/usr/share/demo/hello\n\
%files\n/usr/share/demo/hello\n",
    )
    .unwrap();
    sh(Command::new("rpmbuild")
        .args(["-bb", "--define"])
        .arg(format!("_topdir {}", top.display()))
        .arg(top.join("SPECS/demo.spec")));
    let rpm = top.join("RPMS/noarch/demo-tool-1.2.3-4.el9.noarch.rpm");
    let layout = env.path("rpm-image");
    let install = |r: &Path| {
        busybox_rootfs(r);
        std::fs::create_dir_all(r.join("etc")).unwrap();
        std::fs::write(r.join("etc/os-release"), "ID=\"rocky\"\nVERSION_ID=\"9.3\"\n").unwrap();
        sh(Command::new("rpm")
            .arg("--root")
            .arg(r)
            .args(["--dbpath", "/var/lib/rpm", "--initdb"]));
        sh(Command::new("rpm")
            .arg("--root")
            .arg(r)
            .args(["--dbpath", "/var/lib/rpm", "-i", "--nodeps", "--noscripts", "--ignoreos"])
            .arg(&rpm));
        // What rpm itself lists.
        let out = Command::new("rpm")
            .arg("--root")
            .arg(r)
            .args([
                "--dbpath",
                "/var/lib/rpm",
                "-qa",
                "--qf",
                "%{NAME} %{EPOCH}:%{VERSION}-%{RELEASE}\n",
            ])
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), "demo-tool 1:1.2.3-4.el9\n");
    };
    umoci_image(&layout, &[&install]);
    env.ok(&["image", "import", layout.to_str().unwrap(), "-t", "rpm:1"]);
    // The rpm database in the layer is read, never written: the layers are exactly as before.
    let listing = || {
        let o = Command::new("find")
            .arg(env.root().join("layers"))
            .args(["-printf", "%p %s %T@ %m\n"])
            .output()
            .unwrap();
        let mut lines: Vec<String> = String::from_utf8_lossy(&o.stdout).lines().map(str::to_string).collect();
        lines.sort();
        lines
    };
    let before = listing();
    let bom = json(&env.ok(&["--format", "json", "sbom", "rpm:1"]));
    assert_eq!(listing(), before);
    let p = find(&bom, "demo-tool").unwrap_or_else(|| panic!("{bom:#}"));
    assert_eq!(
        (p["version"].as_str(), p["ecosystem"].as_str(), p["source_name"].as_str()),
        (Some("1:1.2.3-4.el9"), Some("Rpm"), Some("demo-tool"))
    );
    assert_eq!(p["path"], "/var/lib/rpm/rpmdb.sqlite");
    assert!(
        p["purl"].as_str().unwrap().starts_with("pkg:rpm/rocky/demo-tool@1%3A1.2.3-4.el9"),
        "{p}"
    );

    // Advisories for this distribution and release apply; others do not.
    let adv = env.path("rpm-osv");
    std::fs::create_dir_all(&adv).unwrap();
    for (id, eco) in [
        ("TEST-ROCKY-9", "Rocky Linux:9"),
        ("TEST-ROCKY-8", "Rocky Linux:8"),
        ("TEST-ALMA-9", "AlmaLinux:9"),
    ] {
        let rec = serde_json::json!({"id": id, "affected": [{"package": {"ecosystem": eco, "name": "demo-tool"},
            "ranges": [{"type": "ECOSYSTEM", "events": [{"introduced": "0"}, {"fixed": "1:1.2.3-5.el9"}]}]}]});
        std::fs::write(adv.join(format!("{id}.json")), rec.to_string()).unwrap();
    }
    env.ok(&["db", "import", adv.to_str().unwrap()]);
    let scan = json(&env.ok(&["--format", "json", "scan", "rpm:1"]));
    let ids: Vec<&str> = scan["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["TEST-ROCKY-9"]);
}

#[test]
fn an_import_killed_midway_leaves_the_database_as_it_was() {
    let env = Env::new();
    env.ok(&["db", "import", osv("rustsec").to_str().unwrap(), "--source", "rustsec"]);
    let db = env.root().join("vulndb/osv.sqlite3");
    let count = |env: &Env| -> (i64, usize) {
        let st = json(&env.ok(&["--format", "json", "db", "status"]));
        (st["advisories"].as_i64().unwrap(), st["sources"].as_array().unwrap().len())
    };
    assert_eq!(count(&env), (1206, 1));
    // kill -9 an import of another source at moments spread over its run: afterwards the database
    // holds either all of it or none of it, and every command works.
    let mut saw_before = false;
    for delay_ms in (20..800).step_by(60) {
        let mut child = Command::new(env!("CARGO_BIN_EXE_bulkhead"))
            .arg("--root")
            .arg(env.root())
            .arg("--config")
            .arg(env.path("config"))
            .args(["db", "import", osv("pypa").to_str().unwrap(), "--source", "pypa"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(delay_ms));
        let _ = child.kill();
        let _ = child.wait();
        match count(&env) {
            (1206, 1) => saw_before = true,
            (3867, 2) => {}
            other => panic!("after a kill at {delay_ms} ms: {other:?}"),
        }
        // Back to one source for the next round.
        if count(&env).1 == 2 {
            std::fs::remove_file(&db).unwrap();
            env.ok(&["db", "import", osv("rustsec").to_str().unwrap(), "--source", "rustsec"]);
        }
    }
    assert!(saw_before, "no kill landed inside an import");
    // A database that is not one: a one-line error that says what to do.
    std::fs::write(&db, vec![0x42u8; 8192]).unwrap();
    let err = env.fails(&["db", "status"]);
    assert!(err.contains("remove it and import again"), "{err}");
    // system check says so, and --repair removes it (it holds only what an import brings back).
    let o = env.run(&["system", "check"]);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("vulnerability database"),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    env.ok(&["system", "check", "--repair"]);
    assert!(!db.exists());
    env.ok(&["system", "check"]);
}
