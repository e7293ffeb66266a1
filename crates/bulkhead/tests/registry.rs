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

/// What the registry holds under `repo` (a tag or a digest), as skopeo reads it.
fn skopeo_raw(reg: &Registry, repo: &str) -> String {
    let certs = reg.skopeo_certs();
    reg.skopeo(&[
        "inspect",
        "--raw",
        "--cert-dir",
        certs.to_str().unwrap(),
        "--creds",
        &format!("{USER}:{PASS}"),
        &format!("docker://{}/{repo}", reg.host),
    ])
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
    // sbom and scan of a name the store lacks pull it first, as run does.
    env.ok(&["rmi", &name]);
    let bom: serde_json::Value = serde_json::from_str(&env.ok(&["--format", "json", "sbom", &name])).unwrap();
    assert_eq!(bom["manifest"], want);
    assert!(
        bom["packages"].as_array().unwrap().iter().any(|p| p["name"] == "busybox"),
        "{bom:#}"
    );
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

/// What the proxy does to blob responses, and what it saw.
#[derive(Default)]
struct ProxyState {
    /// Serve this blob with its bytes flipped (same length).
    corrupt: Option<String>,
    /// Cut the connection after this many bytes of this blob.
    cut: Option<(String, usize)>,
    /// Blob body bytes sent to the client.
    blob_bytes: usize,
    /// Range headers of blob requests, with the blob.
    ranges: Vec<(String, String)>,
}

/// A one-request-per-connection HTTP proxy in front of a plain-HTTP registry: lets a test serve
/// wrong bytes, cut a transfer, and count what crosses the wire.
struct Proxy {
    host: String,
    state: std::sync::Arc<std::sync::Mutex<ProxyState>>,
}

impl Proxy {
    fn start(upstream: &str) -> Proxy {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let host = listener.local_addr().unwrap().to_string();
        let state = std::sync::Arc::new(std::sync::Mutex::new(ProxyState::default()));
        let (st, up) = (state.clone(), upstream.to_owned());
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let (st, up) = (st.clone(), up.clone());
                std::thread::spawn(move || Proxy::serve(conn, &up, &st));
            }
        });
        Proxy { host, state }
    }

    fn serve(mut client: TcpStream, upstream: &str, state: &std::sync::Mutex<ProxyState>) {
        use std::io::{Read, Write};
        let mut head = Vec::new();
        let mut b = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            if client.read(&mut b).unwrap_or(0) == 0 {
                return;
            }
            head.push(b[0]);
        }
        let text = String::from_utf8_lossy(&head).into_owned();
        let path = text.split_whitespace().nth(1).unwrap_or("").to_owned();
        let blob = path.contains("/blobs/sha256:").then(|| path.rsplit('/').next().unwrap().to_owned());
        let range = text
            .lines()
            .find_map(|l| l.to_ascii_lowercase().strip_prefix("range:").map(|v| v.trim().to_owned()));
        // Forward with the connection closed after the response, so reading to EOF ends it.
        let mut fwd = String::new();
        for (i, line) in text.split("\r\n").enumerate() {
            let lower = line.to_ascii_lowercase();
            if line.is_empty() || lower.starts_with("connection:") || lower.starts_with("host:") {
                continue;
            }
            fwd += line;
            fwd += "\r\n";
            if i == 0 {
                fwd += &format!("Host: {upstream}\r\nConnection: close\r\n");
            }
        }
        fwd += "\r\n";
        let Ok(mut server) = TcpStream::connect(upstream) else { return };
        server.write_all(fwd.as_bytes()).unwrap();
        let mut resp = Vec::new();
        let _ = server.read_to_end(&mut resp);
        let split = resp.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4).unwrap_or(resp.len());
        let (rhead, body) = resp.split_at(split);
        let mut body = body.to_vec();
        let rhead = String::from_utf8_lossy(rhead).replace("Connection: keep-alive", "Connection: close");
        let mut limit = body.len();
        if let (Some(d), true) = (&blob, text.starts_with("GET")) {
            let mut s = state.lock().unwrap();
            if let Some(r) = &range {
                s.ranges.push((d.clone(), r.clone()));
            }
            if s.corrupt.as_ref() == Some(d) {
                for x in body.iter_mut() {
                    *x ^= 0x5a;
                }
            }
            if let Some((cd, n)) = &s.cut {
                if cd == d {
                    limit = (*n).min(body.len());
                }
            }
            s.blob_bytes += limit;
        }
        let _ = client.write_all(rhead.as_bytes());
        let _ = client.write_all(&body[..limit]);
        let _ = client.flush();
        // Dropping both ends here is the cut, when there is one.
    }
}

/// A plain-HTTP registry holding the test image as test/busybox:1 and :2, behind a proxy that
/// bulkhead is configured to reach (as an insecure registry). Returns them and the layer digests.
fn proxied(env: &Env) -> (Registry, Proxy, Vec<String>) {
    let reg = Registry::start(&env.path("registry"), None, false);
    let l = layout(env);
    for tag in ["1", "2"] {
        let o = Command::new("skopeo")
            .args(["copy", "--quiet", "--dest-tls-verify=false"])
            .arg(format!("oci:{}:t", l.display()))
            .arg(format!("docker://{}/test/busybox:{tag}", reg.host))
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    let raw = Command::new("skopeo")
        .args(["inspect", "--raw", "--tls-verify=false"])
        .arg(format!("docker://{}/test/busybox:1", reg.host))
        .output()
        .unwrap();
    let m: serde_json::Value = serde_json::from_slice(&raw.stdout).unwrap();
    let layers = m["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].as_str().unwrap().to_owned())
        .collect();
    let proxy = Proxy::start(&reg.host);
    std::fs::create_dir_all(env.path("config")).unwrap();
    std::fs::write(
        env.path("config").join("registries.json"),
        format!(r#"{{"insecure": ["{}"]}}"#, proxy.host),
    )
    .unwrap();
    (reg, proxy, layers)
}

#[test]
fn wrong_bytes_for_a_blob_fail_the_pull_naming_it_and_store_nothing() {
    let env = Env::new();
    let (_reg, proxy, layers) = proxied(&env);
    let bad = layers.last().unwrap().clone();
    proxy.state.lock().unwrap().corrupt = Some(bad.clone());
    let err = env.fails(&["pull", &format!("{}/test/busybox:1", proxy.host)]);
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.contains(&bad) && err.contains("nothing of it was stored"), "{err}");
    env.assert_no_images();
    let hex = bad.trim_start_matches("sha256:");
    assert!(!env.root().join("blobs/sha256").join(hex).exists(), "the bad blob is in the store");
    assert!(
        std::fs::read_dir(env.root().join("downloads")).unwrap().next().is_none(),
        "the bad download was kept"
    );
    // The same pull with honest bytes succeeds.
    proxy.state.lock().unwrap().corrupt = None;
    env.ok(&["pull", &format!("{}/test/busybox:1", proxy.host)]);
}

#[test]
fn a_cut_transfer_resumes_with_a_range_request_and_present_blobs_cross_no_wire() {
    let env = Env::new();
    let (_reg, proxy, layers) = proxied(&env);
    // The busybox layer is the big one.
    let big = layers[0].clone();
    let name = format!("{}/test/busybox:1", proxy.host);
    proxy.state.lock().unwrap().cut = Some((big.clone(), 300_000));
    let err = env.fails(&["pull", &name]);
    assert!(err.contains(&big) && err.contains("broke off"), "{err}");
    env.assert_no_images();
    let partial = env.root().join("downloads").join(big.replace(':', "-"));
    assert_eq!(std::fs::metadata(&partial).unwrap().len(), 300_000, "what arrived is kept");
    // Kept for the store alone: another local user cannot read it, or even list the directory.
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(env.root().join("downloads")).unwrap().permissions().mode() & 0o777,
        0o700
    );
    assert_eq!(std::fs::metadata(&partial).unwrap().permissions().mode() & 0o777, 0o600);
    std::fs::set_permissions(env.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    for cmd in [
        format!("cat {}", partial.display()),
        format!("ls {}", env.root().join("downloads").display()),
    ] {
        let o = Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "sh", "-c", &cmd])
            .output()
            .unwrap();
        assert!(
            !o.status.success() && String::from_utf8_lossy(&o.stderr).contains("Permission denied"),
            "nobody could: {cmd}"
        );
    }

    let sent_before = {
        let mut s = proxy.state.lock().unwrap();
        s.cut = None;
        s.blob_bytes
    };
    // While another pull holds the partial file (its lock), this one waits and writes nothing.
    let mut other = hold_lock(&partial);
    let waiting = Command::new(env!("CARGO_BIN_EXE_bulkhead"))
        .arg("--root")
        .arg(env.root())
        .arg("--config")
        .arg(env.path("config"))
        .args(["pull", &name])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        std::fs::metadata(&partial).unwrap().len(),
        300_000,
        "written while another pull held it"
    );
    assert!(!env.root().join("blobs/sha256").join(big.trim_start_matches("sha256:")).exists());
    other.kill().unwrap();
    other.wait().unwrap();
    let o = waiting.wait_with_output().unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success() && out.contains("test/busybox:1"),
        "{out}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let s = proxy.state.lock().unwrap();
    assert!(
        s.ranges.iter().any(|(d, r)| d == &big && r == "bytes=300000-"),
        "no resuming range request: {:?}",
        s.ranges
    );
    let blob_size = std::fs::metadata(env.root().join("blobs/sha256").join(big.trim_start_matches("sha256:")))
        .unwrap()
        .len() as usize;
    assert!(
        s.blob_bytes - sent_before < blob_size,
        "the resumed pull sent {} bytes of blobs, the big blob alone is {blob_size}",
        s.blob_bytes - sent_before
    );
    drop(s);
    assert!(!partial.exists());

    // Another tag of the same image: every blob is present, none crosses the wire.
    let before = proxy.state.lock().unwrap().blob_bytes;
    let out = env.ok(&["pull", &format!("{}/test/busybox:2", proxy.host)]);
    assert!(out.contains("(0 bytes transferred)"), "{out}");
    assert_eq!(proxy.state.lock().unwrap().blob_bytes, before, "blob bytes crossed the proxy");
    // Every tag of the repository at once.
    env.ok(&["rmi", &format!("{}/test/busybox:1", proxy.host)]);
    env.ok(&["pull", "--all-tags", &format!("{}/test/busybox", proxy.host)]);
    let images = env.ok(&["images"]);
    assert!(images.matches("test/busybox").count() == 2, "{images}");
}

/// docker-registry 2.8 has no referrers API: attaching keeps the referrers tag schema's index up
/// to date, listing reads it, filtered by type; skopeo sees the index under its tag.
#[test]
fn artifacts_attach_to_an_image_through_the_referrers_tag_schema() {
    let env = Env::new();
    let reg = Registry::start(&env.path("registry"), Some(make_tls(false)), true);
    let l = layout(&env);
    skopeo_push(&reg, &l, "test/busybox:1");
    trust_and_login(&env, &reg);
    let name = format!("{}/test/busybox:1", reg.host);
    let subject = skopeo_digest(&reg, "test/busybox:1");
    assert!(env.ok(&["artifact", "ls", &name]).trim().is_empty(), "no referrers yet");

    std::fs::write(env.path("sbom.json"), r#"{"spdxVersion": "SPDX-2.3"}"#).unwrap();
    std::fs::write(env.path("sig"), b"not really a signature").unwrap();
    let a = env.run(&[
        "artifact",
        "attach",
        &name,
        "--artifact-type",
        "application/spdx+json",
        "--annotation",
        "made-by=test",
        env.path("sbom.json").to_str().unwrap(),
    ]);
    assert!(a.status.success(), "{}", String::from_utf8_lossy(&a.stderr));
    let sbom = String::from_utf8_lossy(&a.stdout).trim().to_owned();
    let sig = env
        .ok(&[
            "artifact",
            "attach",
            &name,
            "--artifact-type",
            "application/vnd.bulkhead.test.sig",
            env.path("sig").to_str().unwrap(),
        ])
        .trim()
        .to_owned();
    let all: serde_json::Value = serde_json::from_str(&env.ok(&["--format", "json", "artifact", "ls", &name])).unwrap();
    let digests: Vec<&str> = all.as_array().unwrap().iter().map(|x| x["digest"].as_str().unwrap()).collect();
    assert!(digests.contains(&sbom.as_str()) && digests.contains(&sig.as_str()), "{all}");
    let only: serde_json::Value = serde_json::from_str(&env.ok(&[
        "--format",
        "json",
        "artifact",
        "ls",
        &name,
        "--artifact-type",
        "application/spdx+json",
    ]))
    .unwrap();
    assert_eq!(only.as_array().unwrap().len(), 1, "{only}");
    assert_eq!(only[0]["digest"], sbom);
    // The index is where the tag schema says, and the artifact manifest names the image.
    let tag = subject.replace(':', "-");
    let index = skopeo_raw(&reg, &format!("test/busybox:{tag}"));
    assert!(index.contains(&sbom) && index.contains(&sig), "{index}");
    let artifact = skopeo_raw(&reg, &format!("test/busybox@{sbom}"));
    let m: serde_json::Value = serde_json::from_str(&artifact).unwrap();
    assert_eq!(m["subject"]["digest"], subject);
    assert_eq!(m["artifactType"], "application/spdx+json");
    assert_eq!(m["annotations"]["made-by"], "test");
}

/// An image pulled by the digest of its index (a cluster pins a service to it) is found again by
/// that digest: `run` of it uses the store, with the registry gone.
#[test]
fn an_image_pulled_by_its_index_digest_runs_by_that_digest_without_the_registry() {
    use sha2::Digest as _;
    let env = Env::new();
    let reg = Registry::start(&env.path("registry"), Some(make_tls(false)), true);
    let l = layout(&env);
    skopeo_push(&reg, &l, "test/multi:m");
    let manifest = skopeo_digest(&reg, "test/multi:m");
    let mut raw = skopeo_raw(&reg, "test/multi:m");
    if format!("sha256:{}", hex::encode(sha2::Sha256::digest(raw.as_bytes()))) != manifest {
        raw.truncate(raw.trim_end().len());
    }
    assert_eq!(format!("sha256:{}", hex::encode(sha2::Sha256::digest(raw.as_bytes()))), manifest);
    let entry = |arch: &str| {
        serde_json::json!({"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": manifest,
            "size": raw.len(), "platform": {"architecture": arch, "os": "linux"}})
    };
    let index = serde_json::json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [entry("arm64"), entry("amd64")]})
    .to_string();
    put_manifest(&reg, "test/multi", "1", &index);
    let index_digest = format!("sha256:{}", hex::encode(sha2::Sha256::digest(index.as_bytes())));
    trust_and_login(&env, &reg);
    let pinned = format!("{}/test/multi@{index_digest}", reg.host);
    let out = env.ok(&["pull", &pinned]);
    assert!(out.contains(&manifest), "the platform's manifest is what was pulled: {out}");
    drop(reg);
    assert_eq!(
        env.ok(&["run", "--rm", &pinned, "cat", "/etc/greeting"]),
        "hello from the registry\n"
    );
    assert_eq!(env.inspect(&pinned)["Bulkhead"]["ManifestDigest"], manifest);
}

/// PUTs `manifest` under `tag` in `repo`, as anyone who can write to the registry could (the
/// registry is not trusted: this is how a test plays the attacker).
fn put_manifest(reg: &Registry, repo: &str, tag: &str, manifest: &str) {
    let ca = reg.dir.join("put-ca.crt");
    std::fs::write(&ca, &reg.tls.as_ref().unwrap().ca).unwrap();
    let script = r#"
import base64, json, ssl, sys, urllib.request
url, ca, user, pw, body = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], sys.stdin.buffer.read()
ctx = ssl.create_default_context(cafile=ca)
req = urllib.request.Request(url, data=body, method="PUT")
try:
    media_type = json.loads(body).get("mediaType")
except Exception:
    media_type = None
req.add_header("Content-Type", media_type or "application/vnd.oci.image.manifest.v1+json")
req.add_header("Authorization", "Basic " + base64.b64encode(f"{user}:{pw}".encode()).decode())
urllib.request.urlopen(req, context=ctx)
"#;
    use std::io::Write;
    let mut child = Command::new("python3")
        .args(["-c", script])
        .arg(format!("https://{}/v2/{repo}/manifests/{tag}", reg.host))
        .arg(&ca)
        .args([USER, PASS])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(manifest.as_bytes()).unwrap();
    assert!(child.wait().unwrap().success(), "PUT of the manifest failed");
}

/// Signed tags, end to end: `trust init` pins the new root in the local policy; `pull` of a
/// covered tag resolves it through the registry's signed metadata; an unsigned tag, a tag the
/// registry moved, a revoked tag and metadata rolled back to an older version are refused or
/// ignored as TUF says; uncovered references follow the policy's default.
#[test]
fn signed_tags_are_enforced_through_the_registrys_metadata() {
    for role in ["ROOT", "TARGETS", "SNAPSHOT", "TIMESTAMP"] {
        std::env::set_var(format!("BULKHEAD_TRUST_{role}_PASSPHRASE"), format!("{role} passphrase"));
    }
    let env = Env::new();
    let reg = Registry::start(&env.path("registry"), Some(make_tls(false)), true);
    let l = layout(&env);
    skopeo_push(&reg, &l, "test/app:1");
    // A second, different image.
    let l2 = env.path("layout2");
    sh(Command::new("cp").arg("-a").arg(&l).arg(&l2));
    sh(Command::new("umoci").args(["config", "--image", &format!("{}:t", l2.display()), "--config.env", "SECOND=1"]));
    skopeo_push(&reg, &l2, "test/app:2");
    let (one, two) = (skopeo_digest(&reg, "test/app:1"), skopeo_digest(&reg, "test/app:2"));
    assert_ne!(one, two);
    trust_and_login(&env, &reg);
    let repo = format!("{}/test/app", reg.host);

    let root = env.ok(&["trust", "init", &repo]).trim().to_owned();
    assert_eq!(root.len(), 64);
    let policy = std::fs::read_to_string(env.path("config").join("policy.toml")).unwrap();
    assert!(policy.contains(&root) && policy.contains(&repo), "{policy}");
    assert!(env.path("config/trust/private").join(format!("{root}.key")).exists());

    // Signed: the pull goes by the signed digest.
    env.ok(&["trust", "sign", &format!("{repo}:1")]);
    let o = env.run(&["pull", &format!("{repo}:1")]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stderr).contains(&format!("is signed as {one}")));
    assert_eq!(env.inspect(&format!("{repo}:1"))["Bulkhead"]["ManifestDigest"], one);
    let view: serde_json::Value = serde_json::from_str(&env.ok(&["--format", "json", "trust", "inspect", &repo])).unwrap();
    let table = env.ok(&["trust", "inspect", &repo]);
    assert!(
        table.contains("TAG") && table.contains(&one) && table.contains("timestamp"),
        "{table}"
    );
    assert_eq!(view["tags"]["1"]["digest"], one, "{view}");
    assert_eq!(view["targets"]["version"], 2, "{view}");
    assert_eq!(view["roles"]["root"]["keys"][0], root, "{view}");

    // Not signed: refused, one line naming the tag.
    let err = env.fails(&["pull", &format!("{repo}:2")]);
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.contains("not signed") && err.contains("\"2\""), "{err}");

    // The registry moves :1 to the other image: the client still gets what was signed.
    skopeo_push(&reg, &l2, "test/app:1");
    env.ok(&["rmi", &format!("{repo}:1")]);
    env.ok(&["pull", &format!("{repo}:1")]);
    assert_eq!(env.inspect(&format!("{repo}:1"))["Bulkhead"]["ManifestDigest"], one);
    // Re-signing signs the image this store has under the name, not what the registry now says.
    assert!(env.ok(&["trust", "sign", &format!("{repo}:1")]).contains(&one));
    // `run` of a covered tag verifies too: a local name pointing elsewhere is put right.
    env.ok(&["tag", &format!("{repo}:1"), "elsewhere:1"]);
    assert!(env
        .ok(&["run", "--rm", &format!("{repo}:1"), "cat", "/etc/greeting"])
        .contains("hello from the registry"));

    // Rollback: the registry serves older, validly signed metadata; this machine has seen newer.
    let old = skopeo_raw(&reg, "test/app:_bulkhead.trust");
    env.ok(&["trust", "sign", &format!("{repo}:2")]);
    assert!(env.run(&["pull", &format!("{repo}:2")]).status.success());
    put_manifest(&reg, "test/app", "_bulkhead.trust", &old);
    let err = env.fails(&["pull", &format!("{repo}:1")]);
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(
        err.contains("version") || err.contains("rollback") || err.contains("older"),
        "{err}"
    );

    // Revoked: refused (after the publisher signs again over the rolled-back copy).
    env.ok(&["trust", "revoke", &format!("{repo}:2")]);
    let err = env.fails(&["pull", &format!("{repo}:2")]);
    assert!(err.contains("not signed"), "{err}");
    assert!(env.run(&["pull", &format!("{repo}:1")]).status.success());

    // Root rotation: the new root key is pinned here; a machine that pinned the old one walks the
    // root chain to the new root (signed by both) and still verifies.
    let new_root = env.ok(&["trust", "rotate", &repo, "root"]).trim().to_owned();
    assert_ne!(new_root, root);
    assert!(std::fs::read_to_string(env.path("config").join("policy.toml"))
        .unwrap()
        .contains(&new_root));
    env.ok(&["trust", "sign", &format!("{repo}:2")]);
    assert!(env.run(&["pull", &format!("{repo}:2")]).status.success());
    let other = Env::new();
    trust_and_login(&other, &reg);
    // The root key as a file (what `trust key export` prints), as a publisher would hand it over.
    std::fs::write(env.path("root-key.json"), serde_json::json!({"keyid": root}).to_string()).unwrap();
    other.ok(&[
        "trust",
        "policy",
        "add",
        &repo,
        "--root-key",
        env.path("root-key.json").to_str().unwrap(),
    ]);
    let o = other.run(&["pull", &format!("{repo}:2")]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(other.inspect(&format!("{repo}:2"))["Bulkhead"]["ManifestDigest"], two);

    // A signer trusted for 3.* only: signs 3.0; cannot sign 4.0.
    std::env::set_var("BULKHEAD_TRUST_KEY_PASSPHRASE", "RELEASES passphrase");
    std::env::set_var("BULKHEAD_TRUST_RELEASES_PASSPHRASE", "RELEASES passphrase");
    env.ok(&["trust", "key", "generate", "releaser", "--type", "ecdsa-p256"]);
    // Keys move between machines encrypted; the public part names the same id.
    let exported: serde_json::Value = serde_json::from_str(&env.ok(&["trust", "key", "export", "releaser"])).unwrap();
    std::fs::write(
        env.path("releaser.pem"),
        env.ok(&["trust", "key", "export", "--private", "releaser"]),
    )
    .unwrap();
    assert!(std::fs::read_to_string(env.path("releaser.pem"))
        .unwrap()
        .contains("ENCRYPTED PRIVATE KEY"));
    let imported = other.ok(&["trust", "key", "import", "releaser", env.path("releaser.pem").to_str().unwrap()]);
    assert_eq!(imported.trim(), exported["keyid"].as_str().unwrap());
    env.ok(&["trust", "signer", "add", "releaser", "--role", "releases", "--paths", "3.*", &repo]);
    env.ok(&["tag", &format!("{repo}:2"), &format!("{repo}:3.0")]);
    env.ok(&["tag", &format!("{repo}:2"), &format!("{repo}:4.0")]);
    env.ok(&["push", &format!("{repo}:3.0")]);
    env.ok(&["push", &format!("{repo}:4.0")]);
    env.ok(&["trust", "sign", "--role", "releases", &format!("{repo}:3.0")]);
    let err = env.fails(&["trust", "sign", "--role", "releases", &format!("{repo}:4.0")]);
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    env.ok(&["rmi", &format!("{repo}:3.0"), &format!("{repo}:4.0")]);
    assert_eq!(
        {
            env.ok(&["pull", &format!("{repo}:3.0")]);
            env.inspect(&format!("{repo}:3.0"))["Bulkhead"]["ManifestDigest"].clone()
        },
        two
    );
    assert!(env.fails(&["pull", &format!("{repo}:4.0")]).contains("not signed"));
    // A policy that requires the releases role: its tags pass, top-level ones do not.
    env.ok(&[
        "trust",
        "policy",
        "add",
        &repo,
        "--root-key",
        &new_root_or(&env, &repo),
        "--role",
        "releases",
    ]);
    env.ok(&["pull", &format!("{repo}:3.0")]);
    let err = env.fails(&["pull", &format!("{repo}:1")]);
    assert!(err.contains("requires signatures by releases"), "{err}");
    env.ok(&["trust", "policy", "add", &repo, "--root-key", &new_root_or(&env, &repo)]);
    // Removing the signer: its tags stop resolving.
    env.ok(&["trust", "signer", "remove", "--role", "releases", &repo]);
    env.ok(&["rmi", &format!("{repo}:3.0")]);
    assert!(env.fails(&["pull", &format!("{repo}:3.0")]).contains("not signed"));

    // The targets key rotates too (the root key signs the change); clients follow.
    env.ok(&["trust", "rotate", &repo, "targets"]);
    env.ok(&["trust", "sign", &format!("{repo}:2")]);
    assert!(env.run(&["pull", &format!("{repo}:2")]).status.success());
    assert!(other.run(&["pull", &format!("{repo}:2")]).status.success());

    // A cron job re-signs the timestamp with the timestamp key alone; clients accept the newer one.
    assert!(env
        .ok(&["trust", "timestamp", "refresh", "--timestamp-expiry-days", "1", &repo])
        .contains("timestamp version"));
    let view: serde_json::Value = serde_json::from_str(&env.ok(&["--format", "json", "trust", "inspect", &repo])).unwrap();
    let expires: jiff::Timestamp = view["timestamp"]["expires"].as_str().unwrap().parse().unwrap();
    assert!(expires < jiff::Timestamp::now() + jiff::SignedDuration::from_hours(25), "{expires}");
    assert!(env.run(&["pull", &format!("{repo}:2")]).status.success());

    // --insecure-skip-verify warns; the policy can forbid it; default deny refuses the uncovered.
    let o = env.run(&["pull", "--insecure-skip-verify", &format!("{repo}:2")]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stderr).contains("without checking its signature"));
    skopeo_push(&reg, &l, "other/app:1");
    let o = env.run(&["pull", &format!("{}/other/app:1", reg.host)]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("not covered by a trust policy"));
    let p = env.path("config").join("policy.toml");
    let text = std::fs::read_to_string(&p).unwrap();
    std::fs::write(
        &p,
        format!(
            "default = \"deny\"\nforbid_skip_verify = true\n{}",
            text.replace("default = \"notice\"\n", "")
                .replace("forbid_skip_verify = false\n", "")
        ),
    )
    .unwrap();
    let err = env.fails(&["pull", &format!("{}/other/app:1", reg.host)]);
    assert!(err.contains("default is deny"), "{err}");
    let err = env.fails(&["pull", "--insecure-skip-verify", &format!("{repo}:2")]);
    assert!(err.contains("forbidden by the trust policy"), "{err}");

    // Two signers on two machines, a threshold of two: Alice's signature alone publishes nothing
    // verifiable; Bob adds his on his machine; Alice's (which holds the snapshot and timestamp
    // keys) then publishes the release.
    std::env::set_var("BULKHEAD_TRUST_KEY_PASSPHRASE", "TARGETS passphrase");
    env.ok(&["trust", "key", "generate", "alice"]);
    env.ok(&["trust", "key", "generate", "bob", "--type", "ecdsa-p256"]);
    let team = format!("{}/test/team", reg.host);
    let team_root = env
        .ok(&[
            "trust",
            "init",
            &team,
            "--targets-key",
            "alice",
            "--targets-key",
            "bob",
            "--targets-threshold",
            "2",
        ])
        .trim()
        .to_owned();
    env.ok(&["tag", &format!("{repo}:1"), &format!("{team}:1")]);
    env.ok(&["push", &format!("{team}:1")]);
    // Bob's key moves to Bob's machine.
    std::fs::write(env.path("bob.pem"), env.ok(&["trust", "key", "export", "--private", "bob"])).unwrap();
    let bob_id: serde_json::Value = serde_json::from_str(&env.ok(&["trust", "key", "export", "bob"])).unwrap();
    std::fs::remove_file(
        env.path("config/trust/private")
            .join(format!("{}.key", bob_id["keyid"].as_str().unwrap())),
    )
    .unwrap();
    other.ok(&["trust", "key", "import", "bob", env.path("bob.pem").to_str().unwrap()]);
    other.ok(&["trust", "policy", "add", &team, "--root-key", &team_root]);

    assert!(env
        .ok(&["trust", "sign", "--partial", &format!("{team}:1")])
        .contains("1 of 2 signatures"));
    assert!(env.fails(&["pull", &format!("{team}:1")]).contains("not signed"));
    let out = other.ok(&["trust", "sign", "--partial", &format!("{team}:1")]);
    assert!(
        out.contains("2 of 2 signatures") && out.contains("snapshot and timestamp keys"),
        "{out}"
    );
    assert!(other.fails(&["pull", &format!("{team}:1")]).contains("not signed"));
    let out = env.ok(&["trust", "sign", "--partial", &format!("{team}:1")]);
    assert!(out.contains("signed") && out.contains("2 of 2"), "{out}");
    env.ok(&["pull", &format!("{team}:1")]);
    assert_eq!(env.inspect(&format!("{team}:1"))["Bulkhead"]["ManifestDigest"], one);
    other.ok(&["pull", &format!("{team}:1")]);
    assert_eq!(other.inspect(&format!("{team}:1"))["Bulkhead"]["ManifestDigest"], one);

    // Metadata over the size limit is refused before a byte of it is fetched.
    let mut forged: serde_json::Value = serde_json::from_str(&skopeo_raw(&reg, "test/team:_bulkhead.trust")).unwrap();
    forged["layers"][0]["size"] = serde_json::json!(1u64 << 40);
    put_manifest(&reg, "test/team", "_bulkhead.trust", &forged.to_string());
    let err = env.fails(&["pull", &format!("{team}:1")]);
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.contains("over the") && err.contains("limit"), "{err}");
}

/// The root key id the policy pins for `repo` now (read back from the policy file).
fn new_root_or(env: &Env, repo: &str) -> String {
    let text = std::fs::read_to_string(env.path("config").join("policy.toml")).unwrap();
    let start = text.find(&format!("repository = \"{repo}\"")).expect("the repository is pinned");
    let rest = &text[start..];
    let keys = rest.find("root_keys").unwrap();
    let q = rest[keys..].find('"').unwrap() + keys + 1;
    let end = rest[q..].find('"').unwrap() + q;
    rest[q..end].to_owned()
}

/// A "registry" that answers every manifest request with a body that does not end (or with a
/// Content-Length of 8 GiB): the pull must stop reading at the manifest limit, not buffer it all.
/// Returns its host and the count of body bytes it managed to send.
fn endless_manifest_server(declared: bool) -> (String, std::sync::Arc<std::sync::atomic::AtomicU64>) {
    use std::io::Write;
    use std::sync::atomic::Ordering;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let host = listener.local_addr().unwrap().to_string();
    let sent = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counter = sent.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let counter = counter.clone();
            std::thread::spawn(move || {
                let mut conn = conn;
                conn.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
                let Some(head) = request_head(&mut conn) else { return };
                let text = String::from_utf8_lossy(&head).into_owned();
                if !text.contains("/manifests/") {
                    let _ = conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}");
                    return;
                }
                let length = if declared { "Content-Length: 8589934592\r\n" } else { "" };
                let _ = conn.write_all(
                    format!("HTTP/1.1 200 OK\r\nContent-Type: application/vnd.oci.image.manifest.v1+json\r\n{length}Connection: close\r\n\r\n{{\"x\":\"").as_bytes(),
                );
                // At most 256 MiB, so that the test ends even if the client never stops.
                let chunk = vec![b'a'; 64 << 10];
                for _ in 0..4096 {
                    if conn.write_all(&chunk).is_err() {
                        return;
                    }
                    counter.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                }
            });
        }
    });
    (host, sent)
}

#[test]
fn a_manifest_that_never_ends_is_cut_at_the_limit() {
    let env = Env::new();
    for declared in [false, true] {
        let (host, sent) = endless_manifest_server(declared);
        std::fs::create_dir_all(env.path("config")).unwrap();
        std::fs::write(env.path("config").join("registries.json"), format!(r#"{{"insecure": ["{host}"]}}"#)).unwrap();
        let err = env.fails(&["pull", &format!("{host}/evil/app:1")]);
        assert!(err.contains("limit"), "{err}");
        let sent = sent.load(std::sync::atomic::Ordering::Relaxed);
        assert!(sent < 64 << 20, "the client read {sent} bytes of a manifest limited to 4 MiB");
    }
    env.assert_no_images();
}

/// The TUF client workflow starts from the newest root this machine has verified, never from what
/// the registry offers: after a rotation, a registry that replays the originally published set
/// byte for byte (root v1, signed by keys since retired), or serves metadata newly signed with the
/// retired keys, is refused, and the machine's trusted root stays where it was.
#[test]
fn replayed_or_retired_key_metadata_after_a_rotation_is_refused() {
    for role in ["ROOT", "TARGETS", "SNAPSHOT", "TIMESTAMP"] {
        std::env::set_var(format!("BULKHEAD_TRUST_{role}_PASSPHRASE"), format!("{role} passphrase"));
    }
    let env = Env::new();
    let reg = Registry::start(&env.path("registry"), Some(make_tls(false)), true);
    let l = layout(&env);
    skopeo_push(&reg, &l, "test/app:1");
    skopeo_push(&reg, &l, "test/app:2");
    trust_and_login(&env, &reg);
    let repo = format!("{}/test/app", reg.host);
    env.ok(&["trust", "init", &repo]);
    env.ok(&["trust", "sign", &format!("{repo}:1")]);
    env.ok(&["pull", &format!("{repo}:1")]);
    // What the registry published first: its tag link, and the publisher's files.
    let link = env.path("registry/data/docker/registry/v2/repositories/test/app/_manifests/tags/_bulkhead.trust/current/link");
    let first_link = std::fs::read(&link).unwrap();
    let publisher = env
        .path("config/trust/repos")
        .join(format!("{}/test/app", reg.host.replace(':', "_")));
    let first_files = env.path("first-files");
    sh(Command::new("cp").arg("-a").arg(&publisher).arg(&first_files));

    // The online keys rotate (root v2); the client follows.
    env.ok(&["trust", "rotate", &repo, "targets"]);
    env.ok(&["trust", "rotate", &repo, "snapshot"]);
    env.ok(&["trust", "rotate", &repo, "timestamp"]);
    env.ok(&["trust", "sign", &format!("{repo}:1")]);
    env.ok(&["rmi", &format!("{repo}:1")]);
    env.ok(&["pull", &format!("{repo}:1")]);
    let state = env.path("config/trust/clients").join(repo.replace(':', "_"));
    let trusted = std::fs::read(state.join("root.json")).unwrap();
    let version = |b: &[u8]| {
        serde_json::from_slice::<serde_json::Value>(b).unwrap()["signed"]["version"]
            .as_u64()
            .unwrap()
    };
    let rotated = version(&trusted);
    assert!(rotated >= 2, "the rotation made no new root");

    // 1. The registry replays the first set, byte for byte.
    std::fs::write(&link, &first_link).unwrap();
    env.ok(&["rmi", &format!("{repo}:1")]);
    let err = env.fails(&["pull", &format!("{repo}:1")]);
    assert!(
        err.contains("root version 1") && err.contains(&format!("root version {rotated}")),
        "{err}"
    );
    assert_eq!(std::fs::read(state.join("root.json")).unwrap(), trusted, "the trusted root moved");

    // 2. Metadata newly signed with the retired keys, at higher versions than ever published.
    let current = env.path("current-files");
    sh(Command::new("cp").arg("-a").arg(&publisher).arg(&current));
    std::fs::remove_dir_all(&publisher).unwrap();
    sh(Command::new("cp").arg("-a").arg(&first_files).arg(&publisher));
    for _ in 0..3 {
        env.ok(&["trust", "timestamp", "refresh", &repo]);
    }
    env.ok(&["trust", "sign", &format!("{repo}:2")]);
    let err = env.fails(&["pull", &format!("{repo}:2")]);
    assert!(err.contains(&format!("root version {rotated}")), "{err}");
    assert_eq!(std::fs::read(state.join("root.json")).unwrap(), trusted, "the trusted root moved");
}

/// A registry that serves one fixed manifest and counts the blob requests it gets.
fn fixed_manifest_server(manifest: String) -> (String, std::sync::Arc<std::sync::atomic::AtomicU64>) {
    use std::io::Write;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let host = listener.local_addr().unwrap().to_string();
    let blobs = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counter = blobs.clone();
    std::thread::spawn(move || {
        for mut conn in listener.incoming().flatten() {
            let head = request_head(&mut conn).unwrap_or_default();
            let text = String::from_utf8_lossy(&head).into_owned();
            let (ctype, body) = if text.contains("/manifests/") {
                ("application/vnd.oci.image.manifest.v1+json", manifest.clone())
            } else {
                if text.contains("/blobs/") {
                    counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                ("application/json", "{}".to_owned())
            };
            let _ = conn.write_all(
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                )
                .as_bytes(),
            );
        }
    });
    (host, blobs)
}

/// A layer that declares more than the layer limit is refused before anything is fetched, and
/// partial downloads are reclaimed: `image prune` removes those older than a day, `system check
/// --repair` every one.
#[test]
fn declared_sizes_are_capped_and_partial_downloads_reclaimed() {
    let env = Env::new();
    let d = |c: char| format!("sha256:{}", c.to_string().repeat(64));
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": d('a'), "size": 100},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": d('b'), "size": 64u64 << 30}],
    })
    .to_string();
    let (host, blobs) = fixed_manifest_server(manifest);
    std::fs::create_dir_all(env.path("config")).unwrap();
    std::fs::write(env.path("config").join("registries.json"), format!(r#"{{"insecure": ["{host}"]}}"#)).unwrap();
    let err = env.fails(&["pull", &format!("{host}/big/app:1")]);
    assert!(
        err.contains("declares 68719476736 bytes") && err.contains("nothing was fetched"),
        "{err}"
    );
    assert_eq!(blobs.load(std::sync::atomic::Ordering::Relaxed), 0, "a blob was requested");
    let downloads = env.root().join("downloads");
    assert!(std::fs::read_dir(&downloads).map(|mut d| d.next().is_none()).unwrap_or(true));

    // Partial downloads: a stale one and a fresh one.
    std::fs::create_dir_all(&downloads).unwrap();
    let (stale, fresh) = (downloads.join(d('c').replace(':', "-")), downloads.join(d('e').replace(':', "-")));
    std::fs::write(&stale, vec![0u8; 4096]).unwrap();
    std::fs::write(&fresh, vec![0u8; 4096]).unwrap();
    sh(Command::new("touch").args(["-d", "2 days ago"]).arg(&stale));
    let out = env.ok(&["image", "prune"]);
    assert!(!stale.exists() && fresh.exists(), "prune removes only the stale one: {out}");
    let o = env.run(&["system", "check"]);
    assert!(
        !String::from_utf8_lossy(&o.stdout).contains("partial download"),
        "a fresh one is no problem yet"
    );
    env.run(&["system", "check", "--repair"]);
    assert!(!fresh.exists(), "--repair removes every partial download");

    // One a pull is writing (it holds the file's lock) is left alone, however old.
    std::fs::write(&stale, vec![0u8; 4096]).unwrap();
    sh(Command::new("touch").args(["-d", "2 days ago"]).arg(&stale));
    let mut pull = hold_lock(&stale);
    env.ok(&["image", "prune"]);
    let o = env.run(&["system", "check", "--repair"]);
    assert!(stale.exists(), "a download in progress was removed");
    assert!(
        !String::from_utf8_lossy(&o.stdout).contains("partial download"),
        "in use is no problem"
    );
    pull.kill().unwrap();
    pull.wait().unwrap();
    env.run(&["system", "check", "--repair"]);
    assert!(!stale.exists(), "once the pull is gone, --repair removes it");
}

/// How a stalling test server behaves.
#[derive(Clone, Copy)]
enum Stall {
    /// Accepts the connection and never answers.
    Silent,
    /// Sends the manifest one byte every 500 ms.
    Trickle,
    /// Serves a manifest whose layer's bytes stop after ten.
    BlobStops,
}

/// A "registry" on 127.0.0.1 that stalls as told; its threads end when the test process does.
fn stalling_server(mode: Stall) -> String {
    use std::io::Write;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let host = listener.local_addr().unwrap().to_string();
    let layer = format!("sha256:{}", "b".repeat(64));
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": format!("sha256:{}", sha256_hex(b"{}")), "size": 2},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": layer, "size": 1000}],
    })
    .to_string();
    std::thread::spawn(move || {
        for mut conn in listener.incoming().flatten() {
            let manifest = manifest.clone();
            std::thread::spawn(move || {
                let Some(head) = request_head(&mut conn) else { return };
                let text = String::from_utf8_lossy(&head).into_owned();
                let hold = || std::thread::sleep(Duration::from_secs(120));
                match mode {
                    Stall::Silent => hold(),
                    _ if !text.contains("/manifests/") && !text.contains("/blobs/") => {
                        let _ = conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}");
                    }
                    Stall::Trickle if text.contains("/manifests/") => {
                        let _ = conn.write_all(
                            b"HTTP/1.1 200 OK\r\nContent-Type: application/vnd.oci.image.manifest.v1+json\r\nConnection: close\r\n\r\n",
                        );
                        for byte in manifest.bytes() {
                            if conn.write_all(&[byte]).is_err() {
                                return;
                            }
                            std::thread::sleep(Duration::from_millis(500));
                        }
                    }
                    _ if text.contains("/manifests/") => {
                        let _ = conn.write_all(
                            format!("HTTP/1.1 200 OK\r\nContent-Type: application/vnd.oci.image.manifest.v1+json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{manifest}", manifest.len())
                                .as_bytes(),
                        );
                    }
                    _ if text.contains(&sha256_hex(b"{}")) => {
                        let _ = conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}");
                    }
                    _ => {
                        let _ = conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\nConnection: close\r\n\r\n0123456789");
                        hold();
                    }
                }
            });
        }
    });
    host
}

/// Every network command ends, naming the server and what stalled: a server that never answers
/// (login, pull), a manifest sent one byte at a time, a blob that stops (what arrived is kept for
/// the next pull). The deadlines are set short in registries.json, as a user may.
#[test]
fn stalled_servers_end_the_command_with_one_line() {
    let env = Env::new();
    std::fs::create_dir_all(env.path("config")).unwrap();
    for (mode, args, says) in [
        (Stall::Silent, vec!["login", "-u", "me", "-p", "pw"], "timed out"),
        (Stall::Silent, vec!["pull"], "timed out"),
        (Stall::Trickle, vec!["pull"], "bytes/s over the last"),
        (Stall::BlobStops, vec!["pull"], "timed out"),
    ] {
        let host = stalling_server(mode);
        std::fs::write(
            env.path("config").join("registries.json"),
            format!(r#"{{"insecure": ["{host}"], "timeouts": {{"idle_seconds": 2, "window_seconds": 3, "min_bytes_per_second": 100}}}}"#),
        )
        .unwrap();
        let mut all = args.clone();
        let target = if args[0] == "login" {
            host.clone()
        } else {
            format!("{host}/slow/app:1")
        };
        all.push(&target);
        let o = env.run_bounded(60, &all);
        assert_ne!(o.status.code(), Some(124), "{args:?} did not end");
        let err = String::from_utf8_lossy(&o.stderr);
        let lines: Vec<&str> = err.lines().filter(|l| l.contains("error:")).collect();
        assert_eq!(lines.len(), 1, "{args:?}: {err}");
        assert!(lines[0].contains(&host) && lines[0].contains(says), "{args:?}: {err}");
    }
    let kept = env.root().join("downloads").join(format!("sha256-{}", "b".repeat(64)));
    assert_eq!(
        std::fs::metadata(&kept).map(|m| m.len()).unwrap_or(0),
        10,
        "what arrived is kept for resuming"
    );
}

/// A registry reached without TLS whose challenge sends credentials to another host, and one
/// whose token service is plain HTTP: the pull is refused before any credential leaves, and the
/// other host never hears from us.
#[test]
fn credentials_never_go_where_the_registry_alone_says() {
    use std::io::Write;
    let env = Env::new();
    // The "token service" on another host (another loopback address), counting connections.
    let thief = std::net::TcpListener::bind("127.0.0.2:0").unwrap();
    let thief_addr = thief.local_addr().unwrap().to_string();
    thief.set_nonblocking(true).unwrap();
    let registry = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let host = registry.local_addr().unwrap().to_string();
    let realm = format!("http://{thief_addr}/token");
    std::thread::spawn(move || {
        for mut conn in registry.incoming().flatten() {
            let _ = request_head(&mut conn);
            let _ = conn.write_all(
                format!("HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Bearer realm=\"{realm}\",service=\"x\"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                    .as_bytes(),
            );
        }
    });
    std::fs::create_dir_all(env.path("config")).unwrap();
    std::fs::write(env.path("config").join("registries.json"), format!(r#"{{"insecure": ["{host}"]}}"#)).unwrap();
    // Credentials stored as `login` stores them (login itself would refuse this registry too).
    std::fs::write(
        env.path("config").join("auth.json"),
        format!(r#"{{"auths": {{"{host}": {{"auth": "dXNlcjpzZWNyZXQ="}}}}}}"#),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(env.path("config").join("auth.json"), std::fs::Permissions::from_mode(0o600)).unwrap();
    let err = env.fails(&["pull", &format!("{host}/app:1")]);
    assert!(err.contains("another host") && err.contains("refused"), "{err}");
    let err = env.fails(&["login", &host, "-u", "user", "-p", "secret"]);
    assert!(err.contains("another host") && err.contains("refused"), "{err}");
    assert!(thief.accept().is_err(), "the other host was contacted");
}

/// The request line and headers a test server reads from a connection (None at end of stream).
fn request_head(conn: &mut TcpStream) -> Option<Vec<u8>> {
    use std::io::Read;
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if conn.read(&mut b).unwrap_or(0) == 0 {
            return None;
        }
        head.push(b[0]);
    }
    Some(head)
}

/// What the token service of [`token_registry`] answers.
#[derive(Clone, Copy, PartialEq)]
enum TokenAnswer {
    /// A token, good for `expires_in` seconds (the registry honours it half a second more).
    Good { expires_in: u64 },
    /// A body that never ends.
    Endless,
    /// A token that would smuggle a header.
    HeaderInjection,
}

/// A registry reached without TLS with credentials stored for it, whose first `/v2/` answer names
/// its own token service and every later one a "thief" on another address; serving `layout`'s
/// image (if given) to requests whose token is still good, the manifest `delay` late. Returns
/// the host, the thief (to check it heard nothing) and the tokens issued.
fn token_registry(
    env: &Env,
    answer: TokenAnswer,
    layout: Option<PathBuf>,
    delay: Duration,
) -> (String, std::net::TcpListener, std::sync::Arc<std::sync::Mutex<Vec<Instant>>>) {
    use std::io::Write;
    use std::sync::{Arc, Mutex};
    let thief = std::net::TcpListener::bind("127.0.0.2:0").unwrap();
    thief.set_nonblocking(true).unwrap();
    let thief_realm = format!("http://{}/token", thief.local_addr().unwrap());
    let registry = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let host = registry.local_addr().unwrap().to_string();
    let issued: Arc<Mutex<Vec<Instant>>> = Arc::default();
    let pings = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (h, iss) = (host.clone(), issued.clone());
    std::thread::spawn(move || {
        for mut conn in registry.incoming().flatten() {
            let (h, iss, pings, thief_realm, layout) = (h.clone(), iss.clone(), pings.clone(), thief_realm.clone(), layout.clone());
            std::thread::spawn(move || {
                let Some(head) = request_head(&mut conn) else { return };
                let text = String::from_utf8_lossy(&head).into_owned();
                let path = text.split_whitespace().nth(1).unwrap_or("").to_owned();
                let send = |conn: &mut TcpStream, status: &str, headers: &str, body: &[u8]| {
                    let _ = conn.write_all(
                        format!(
                            "HTTP/1.1 {status}\r\n{headers}Content-Length: {}\r\nConnection: close\r\n\r\n",
                            body.len()
                        )
                        .as_bytes(),
                    );
                    let _ = conn.write_all(body);
                };
                if path == "/v2/" {
                    let realm = if pings.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0 {
                        format!("http://{h}/token")
                    } else {
                        thief_realm
                    };
                    let challenge = format!("WWW-Authenticate: Bearer realm=\"{realm}\",service=\"test\"\r\n");
                    return send(&mut conn, "401 Unauthorized", &challenge, b"");
                }
                if path.starts_with("/token") {
                    assert!(text.contains("scope=repository%3Aapp%3Apull"), "{text}");
                    match answer {
                        TokenAnswer::Endless => {
                            let _ = conn.write_all(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n{\"token\": \"");
                            let chunk = vec![b'a'; 1 << 16];
                            while conn.write_all(&chunk).is_ok() {}
                        }
                        TokenAnswer::HeaderInjection => {
                            send(&mut conn, "200 OK", "", br#"{"token": "abc\r\nX-Evil: 1", "expires_in": 300}"#)
                        }
                        TokenAnswer::Good { expires_in } => {
                            let n = {
                                let mut v = iss.lock().unwrap();
                                v.push(Instant::now());
                                v.len()
                            };
                            let body = format!(r#"{{"token": "tok-{n}", "expires_in": {expires_in}}}"#);
                            send(&mut conn, "200 OK", "", body.as_bytes());
                        }
                    }
                    return;
                }
                // Registry API: only with a token that is still good.
                let good = text
                    .lines()
                    .find_map(|l| l.to_ascii_lowercase().strip_prefix("authorization: bearer tok-").map(str::to_owned))
                    .and_then(|n| {
                        let n: usize = n.trim().parse().ok()?;
                        let at = *iss.lock().unwrap().get(n - 1)?;
                        let TokenAnswer::Good { expires_in } = answer else { return None };
                        (at.elapsed() <= Duration::from_millis(expires_in * 1000 + 500)).then_some(())
                    });
                if good.is_none() {
                    return send(&mut conn, "401 Unauthorized", "", br#"{"errors":[{"code":"UNAUTHORIZED"}]}"#);
                }
                let Some(layout) = layout else {
                    return send(&mut conn, "404 Not Found", "", br#"{"errors":[{"code":"MANIFEST_UNKNOWN"}]}"#);
                };
                let index: serde_json::Value = serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
                let manifest = index["manifests"][0]["digest"].as_str().unwrap().to_owned();
                let blob = |d: &str| std::fs::read(layout.join("blobs/sha256").join(d.trim_start_matches("sha256:"))).ok();
                if path.contains("/manifests/") {
                    std::thread::sleep(delay);
                    let ct = "Content-Type: application/vnd.oci.image.manifest.v1+json\r\n";
                    send(&mut conn, "200 OK", ct, &blob(&manifest).unwrap());
                } else if let Some(data) = path.split("/blobs/").nth(1).and_then(blob) {
                    send(&mut conn, "200 OK", "", &data);
                } else {
                    send(&mut conn, "404 Not Found", "", b"");
                }
            });
        }
    });
    std::fs::create_dir_all(env.path("config")).unwrap();
    std::fs::write(
        env.path("config").join("registries.json"),
        format!(r#"{{"insecure": ["{host}"], "timeouts": {{"idle_seconds": 10}}}}"#),
    )
    .unwrap();
    std::fs::write(
        env.path("config").join("auth.json"),
        format!(r#"{{"auths": {{"{host}": {{"auth": "dXNlcjpzZWNyZXQ="}}}}}}"#),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(env.path("config").join("auth.json"), std::fs::Permissions::from_mode(0o600)).unwrap();
    (host, thief, issued)
}

/// The token service the registry's challenge names is checked and then followed, the same one:
/// a registry whose later challenges name another host gets no credentials sent there (before,
/// the registry client pinged again after the check and followed the second answer). A token
/// answer that never ends is cut at 64 KiB, and a token that would smuggle a header is refused
/// (before, the registry client put it through `unwrap` and the pull panicked).
#[test]
fn token_services_are_followed_once_and_read_with_bounds() {
    for (answer, says) in [
        (TokenAnswer::Endless, "more than 65536 bytes"),
        (TokenAnswer::HeaderInjection, "spaces or control characters"),
        (TokenAnswer::Good { expires_in: 300 }, "manifest unknown"),
    ] {
        let env = Env::new();
        let (host, thief, _) = token_registry(&env, answer, None, Duration::ZERO);
        let o = env.run_bounded(60, &["pull", &format!("{host}/app:1")]);
        assert_ne!(o.status.code(), Some(124), "the pull did not end");
        let err = String::from_utf8_lossy(&o.stderr);
        let errors: Vec<&str> = err.lines().filter(|l| l.contains("error:")).collect();
        assert!(!o.status.success() && errors.len() == 1 && errors[0].contains(says), "{err}");
        assert!(!err.contains("panicked"), "{err}");
        assert!(thief.accept().is_err(), "the other host was contacted");
    }
}

/// A token that expires during a pull is fetched again (Docker Hub's live 300 s; here 4 s, with
/// the manifest answered 5 s late): the blobs are requested with a fresh one.
#[test]
fn a_token_that_expires_during_a_pull_is_fetched_again() {
    let env = Env::new();
    let l = env.path("layout");
    umoci_image(&l, &[&|r: &Path| std::fs::write(r.join("hello"), "hi\n").unwrap()]);
    let (host, thief, issued) = token_registry(&env, TokenAnswer::Good { expires_in: 4 }, Some(l), Duration::from_secs(5));
    let out = env.ok(&["pull", &format!("{host}/app:1")]);
    assert!(out.contains("sha256:"), "{out}");
    assert!(issued.lock().unwrap().len() >= 2, "the token was not fetched again");
    assert!(thief.accept().is_err(), "the other host was contacted");
}

/// flock(1) holding an exclusive lock on `path` (as a pull holds its partial download), once it
/// has it; kill it to let go.
fn hold_lock(path: &std::path::Path) -> std::process::Child {
    let holder = Command::new("flock")
        .args(["-x", "-o"])
        .arg(path)
        .args(["sleep", "30"])
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !std::fs::read_to_string("/proc/locks")
        .unwrap()
        .contains(&format!(" {} ", holder.id()))
    {
        assert!(std::time::Instant::now() < deadline, "flock did not take the file's lock");
        std::thread::sleep(Duration::from_millis(20));
    }
    holder
}
