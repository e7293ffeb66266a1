//! Pull and push against a real registry: Debian's docker-registry (CNCF distribution 2.8) on
//! 127.0.0.1, TLS from a test CA made here, htpasswd (bcrypt) auth; skopeo and umoci on the
//! other side.

mod common;

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use common::*;

const USER: &str = "tester";
const PASS: &str = "correct horse battery";

/// A test CA and a server certificate for 127.0.0.1 signed by it (optionally already expired).
struct Tls {
    ca: String,
    cert: String,
    key: String,
}

fn make_tls(expired: bool) -> Tls {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair, SanType};
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(rcgen::DnType::CommonName, "bulkhead test CA");
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let mut params = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    params
        .subject_alt_names
        .push(SanType::IpAddress(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST)));
    let now = time::OffsetDateTime::now_utc();
    if expired {
        params.not_before = now - time::Duration::days(30);
        params.not_after = now - time::Duration::days(1);
    } else {
        params.not_before = now - time::Duration::days(1);
        params.not_after = now + time::Duration::days(30);
    }
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &ca).unwrap();
    Tls {
        ca: ca.pem(),
        cert: cert.pem(),
        key: key.serialize_pem(),
    }
}

/// A running docker-registry, stopped when dropped.
struct Registry {
    child: Child,
    host: String,
    dir: PathBuf,
    tls: Option<Tls>,
}

impl Registry {
    /// Starts a registry in `dir`: with TLS unless `tls` is None, with htpasswd auth if `auth`.
    fn start(dir: &Path, tls: Option<Tls>, auth: bool) -> Registry {
        std::fs::create_dir_all(dir).unwrap();
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let host = format!("127.0.0.1:{port}");
        let mut config = format!(
            "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {host}\n",
            dir.join("data").display()
        );
        if let Some(t) = &tls {
            std::fs::write(dir.join("server.crt"), &t.cert).unwrap();
            std::fs::write(dir.join("server.key"), &t.key).unwrap();
            config += &format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                dir.join("server.crt").display(),
                dir.join("server.key").display()
            );
        }
        if auth {
            let hash = bcrypt::hash(PASS, 5).unwrap();
            std::fs::write(dir.join("htpasswd"), format!("{USER}:{hash}\n")).unwrap();
            config += &format!(
                "auth:\n  htpasswd:\n    realm: bulkhead-test\n    path: {}\n",
                dir.join("htpasswd").display()
            );
        }
        std::fs::write(dir.join("config.yml"), config).unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(dir.join("config.yml"))
            .stdout(std::fs::File::create(dir.join("registry.log")).unwrap())
            .stderr(std::fs::File::create(dir.join("registry.err")).unwrap())
            .spawn()
            .expect("docker-registry (scripts/setup installs it)");
        let r = Registry {
            child,
            host,
            dir: dir.to_path_buf(),
            tls,
        };
        let deadline = Instant::now() + Duration::from_secs(15);
        while TcpStream::connect(&r.host).is_err() {
            assert!(
                Instant::now() < deadline,
                "the registry did not come up: {}",
                std::fs::read_to_string(dir.join("registry.err")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        r
    }

    /// skopeo's certificate directory for this registry (its CA).
    fn skopeo_certs(&self) -> PathBuf {
        let d = self.dir.join("skopeo-certs");
        std::fs::create_dir_all(&d).unwrap();
        if let Some(t) = &self.tls {
            std::fs::write(d.join("ca.crt"), &t.ca).unwrap();
        }
        d
    }

    fn skopeo(&self, args: &[&str]) -> String {
        let certs = self.skopeo_certs();
        let mut cmd = Command::new("skopeo");
        cmd.args(args);
        let o = cmd.env("REGISTRY_AUTH_FILE", self.dir.join("skopeo-auth.json")).output().unwrap();
        let _ = certs;
        assert!(o.status.success(), "skopeo {args:?}: {}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).into_owned()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Makes bulkhead trust the registry's CA (Docker's certs.d layout) and log in.
fn trust_and_login(env: &Env, reg: &Registry) {
    let certs = env.path("config").join("certs.d").join(&reg.host);
    std::fs::create_dir_all(&certs).unwrap();
    std::fs::write(certs.join("ca.crt"), &reg.tls.as_ref().unwrap().ca).unwrap();
    login(env, &reg.host, PASS).unwrap();
}

/// `bulkhead login HOST -u USER --password-stdin`; Err(stderr) when it fails.
fn login(env: &Env, host: &str, password: &str) -> Result<String, String> {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_bulkhead"))
        .arg("--root")
        .arg(env.root())
        .arg("--config")
        .arg(env.path("config"))
        .args(["login", host, "-u", USER, "--password-stdin"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(format!("{password}\n").as_bytes()).unwrap();
    let o = child.wait_with_output().unwrap();
    if o.status.success() {
        Ok(String::from_utf8_lossy(&o.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&o.stderr).into_owned())
    }
}

/// A two-layer busybox image in an OCI layout, built with umoci; returns the layout.
fn layout(env: &Env) -> PathBuf {
    let l = env.path("layout");
    umoci_image(
        &l,
        &[&|r: &Path| busybox_rootfs(r), &|r: &Path| {
            std::fs::create_dir_all(r.join("etc")).unwrap();
            std::fs::write(r.join("etc/greeting"), "hello from the registry\n").unwrap();
        }],
    );
    l
}

fn skopeo_push(reg: &Registry, layout: &Path, repo: &str) {
    let certs = reg.skopeo_certs();
    reg.skopeo(&[
        "copy",
        "--quiet",
        "--dest-cert-dir",
        certs.to_str().unwrap(),
        "--dest-creds",
        &format!("{USER}:{PASS}"),
        &format!("oci:{}:t", layout.display()),
        &format!("docker://{}/{repo}", reg.host),
    ]);
}

fn skopeo_digest(reg: &Registry, repo: &str) -> String {
    let certs = reg.skopeo_certs();
    let out = reg.skopeo(&[
        "inspect",
        "--cert-dir",
        certs.to_str().unwrap(),
        "--creds",
        &format!("{USER}:{PASS}"),
        "--format",
        "{{.Digest}}",
        &format!("docker://{}/{repo}", reg.host),
    ]);
    out.trim().to_owned()
}

#[test]
fn skopeo_pushes_bulkhead_pulls_the_same_digest_and_runs_it() {
    let env = Env::new();
    let reg = Registry::start(&env.path("registry"), Some(make_tls(false)), true);
    let l = layout(&env);
    skopeo_push(&reg, &l, "test/busybox:1");
    let want = skopeo_digest(&reg, "test/busybox:1");
    trust_and_login(&env, &reg);
    // `run` pulls what the store lacks, as docker run does.
    let name = format!("{}/test/busybox:1", reg.host);
    let greeting = env.ok(&["run", "--rm", &name, "cat", "/etc/greeting"]);
    assert_eq!(greeting, "hello from the registry\n", "the content is what umoci put there");
    let inspect = env.inspect(&name);
    assert_eq!(inspect["Bulkhead"]["ManifestDigest"], want);
    assert!(env.ok(&["images"]).contains("test/busybox"));
    let out = env.ok(&["pull", &name]);
    assert!(out.contains(&want), "pull printed {out}, skopeo says {want}");
    // By digest too; and a second pull transfers nothing.
    let again = env.ok(&["pull", &format!("{}/test/busybox@{want}", reg.host)]);
    assert!(again.contains("(0 bytes transferred)"), "{again}");
    // Nothing half-done is left behind.
    assert!(std::fs::read_dir(env.root().join("downloads")).unwrap().next().is_none());
}

#[test]
fn bulkhead_pushes_skopeo_copies_back_and_umoci_unpacks_the_same_files() {
    let env = Env::new();
    let reg = Registry::start(&env.path("registry"), Some(make_tls(false)), true);
    let l = layout(&env);
    env.ok(&[
        "image",
        "import",
        l.to_str().unwrap(),
        "--tag",
        &format!("{}/mine/busybox:2", reg.host),
    ]);
    trust_and_login(&env, &reg);
    let out = env.ok(&["push", &format!("{}/mine/busybox:2", reg.host)]);
    let local = env.inspect(&format!("{}/mine/busybox:2", reg.host));
    let digest = skopeo_digest(&reg, "mine/busybox:2");
    assert_eq!(
        local["Bulkhead"]["ManifestDigest"], digest,
        "the registry has the manifest we stored, byte for byte"
    );
    assert!(out.contains(&digest), "push printed {out}; the registry has {digest}");
    // skopeo copies it back; umoci unpacks it; the files are the ones we pushed.
    let back = env.path("back");
    let certs = reg.skopeo_certs();
    reg.skopeo(&[
        "copy",
        "--quiet",
        "--src-cert-dir",
        certs.to_str().unwrap(),
        "--src-creds",
        &format!("{USER}:{PASS}"),
        &format!("docker://{}/mine/busybox:2", reg.host),
        &format!("oci:{}:back", back.display()),
    ]);
    let bundle = env.path("back-bundle");
    sh(Command::new("umoci")
        .args(["unpack", "--image", &format!("{}:back", back.display())])
        .arg(&bundle));
    assert_eq!(
        std::fs::read_to_string(bundle.join("rootfs/etc/greeting")).unwrap(),
        "hello from the registry\n"
    );
    assert_eq!(
        std::fs::read(bundle.join("rootfs/bin/busybox")).unwrap(),
        std::fs::read("/bin/busybox").unwrap()
    );
    // Pushing again sends nothing; pushing to another repository mounts every blob.
    let again = env.run(&["push", &format!("{}/mine/busybox:2", reg.host)]);
    assert!(String::from_utf8_lossy(&again.stderr).matches("already there").count() >= 3);
    env.ok(&[
        "tag",
        &format!("{}/mine/busybox:2", reg.host),
        &format!("{}/other/copy:1", reg.host),
    ]);
    let mounted = env.run(&["push", &format!("{}/other/copy:1", reg.host)]);
    let err = String::from_utf8_lossy(&mounted.stderr);
    assert!(mounted.status.success(), "{err}");
    assert!(err.matches("mounted from mine/busybox").count() >= 3, "{err}");
    assert_eq!(skopeo_digest(&reg, "other/copy:1"), digest);
}

#[test]
fn wrong_password_unknown_ca_expired_certificate_and_plain_http_fail_with_one_line() {
    let env = Env::new();
    let reg = Registry::start(&env.path("registry"), Some(make_tls(false)), true);
    let l = layout(&env);
    skopeo_push(&reg, &l, "test/busybox:1");
    let name = format!("{}/test/busybox:1", reg.host);
    let one_line = |err: &str| {
        assert_eq!(err.trim_end().lines().count(), 1, "not one line: {err}");
    };

    // Unknown CA: nothing trusted yet.
    let err = env.fails(&["pull", &name]);
    one_line(&err);
    assert!(err.contains("unknown authority") && err.contains("certs.d"), "{err}");

    // Wrong password: login refuses and stores nothing.
    let certs = env.path("config").join("certs.d").join(&reg.host);
    std::fs::create_dir_all(&certs).unwrap();
    std::fs::write(certs.join("ca.crt"), &reg.tls.as_ref().unwrap().ca).unwrap();
    let err = login(&env, &reg.host, "wrong").unwrap_err();
    one_line(&err);
    assert!(err.contains("wrong user name or password"), "{err}");
    assert!(!env.path("config").join("auth.json").exists());
    // Without credentials the pull is refused the same way.
    let err = env.fails(&["pull", &name]);
    one_line(&err);
    assert!(err.contains("authentication failed"), "{err}");
    env.assert_no_images();

    // An expired server certificate.
    let expired = Registry::start(&env.path("registry-expired"), Some(make_tls(true)), false);
    let certs = env.path("config").join("certs.d").join(&expired.host);
    std::fs::create_dir_all(&certs).unwrap();
    std::fs::write(certs.join("ca.crt"), &expired.tls.as_ref().unwrap().ca).unwrap();
    let err = env.fails(&["pull", &format!("{}/test/busybox:1", expired.host)]);
    one_line(&err);
    assert!(err.contains("expired"), "{err}");

    // A plain-HTTP registry: refused unless configured as insecure, and then it says so.
    let plain = Registry::start(&env.path("registry-plain"), None, false);
    let plain_name = format!("{}/test/busybox:1", plain.host);
    let err = env.fails(&["pull", &plain_name]);
    one_line(&err);
    assert!(err.contains("does not speak TLS") && err.contains("insecure"), "{err}");
    std::fs::write(
        env.path("config").join("registries.json"),
        format!(r#"{{"insecure": ["{}"]}}"#, plain.host),
    )
    .unwrap();
    Command::new("skopeo")
        .args(["copy", "--quiet", "--dest-tls-verify=false"])
        .arg(format!("oci:{}:t", l.display()))
        .arg(format!("docker://{plain_name}"))
        .output()
        .unwrap();
    let o = env.run(&["pull", &plain_name]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stderr).contains("plain HTTP"));
}
