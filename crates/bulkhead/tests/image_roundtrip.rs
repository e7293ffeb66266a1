//! Round trips with images that umoci and skopeo made and read: what we import and save back out is
//! the same image to them (same manifest digest for OCI, same config digest for docker-archive).

mod common;

use std::path::Path;
use std::process::Command;

use common::*;

fn skopeo_inspect(arg: &str) -> serde_json::Value {
    let o = Command::new("skopeo").args(["inspect", arg]).output().unwrap();
    assert!(o.status.success(), "skopeo inspect {arg}: {}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout).unwrap()
}

fn skopeo_raw_config_digest(arg: &str) -> String {
    let o = Command::new("skopeo").args(["inspect", "--config", "--raw", arg]).output().unwrap();
    assert!(
        o.status.success(),
        "skopeo inspect --config {arg}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    format!("sha256:{}", sha256_hex(&o.stdout))
}

const LONG_DIR: &str = "usr/share/a-directory-name-that-is-quite-long/and-another-one-below-it-that-is-long-too";
const LONG_FILE: &str = "a-file-whose-name-alone-is-longer-than-one-hundred-bytes-which-no-ustar-name-field-can-hold-at-all.txt";

fn two_layer_image(layout: &Path) {
    umoci_image(
        layout,
        &[
            &|r: &Path| {
                busybox_rootfs(r);
                std::fs::create_dir_all(r.join("etc/d")).unwrap();
                std::fs::write(r.join("etc/d/gone"), "x").unwrap();
                std::fs::write(r.join("etc/keep"), "keep").unwrap();
                // Past the 100 bytes of a tar header name: umoci writes PAX records for it.
                let deep = r.join(LONG_DIR);
                std::fs::create_dir_all(&deep).unwrap();
                std::fs::write(deep.join(LONG_FILE), "deep").unwrap();
            },
            &|r: &Path| {
                std::fs::remove_file(r.join("etc/d/gone")).unwrap();
                std::fs::write(r.join("etc/added"), "added").unwrap();
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(r.join("bin/busybox"), std::fs::Permissions::from_mode(0o4755)).unwrap();
            },
        ],
    );
}

#[test]
fn umoci_layout_round_trips_through_oci_and_docker_archive() {
    let env = Env::new();
    let layout = env.path("layout");
    two_layer_image(&layout);
    let layout_s = layout.to_str().unwrap();
    let original = skopeo_inspect(&format!("oci:{layout_s}:t"));
    env.ok(&["image", "import", layout_s, "--tag", "example.com/app:1"]);

    let info = env.inspect("example.com/app:1");
    assert_eq!(info["Bulkhead"]["ManifestDigest"], original["Digest"]);
    assert_eq!(info["RootFS"]["Layers"].as_array().unwrap().len(), 2);
    assert_eq!(info["Bulkhead"]["SetuidFiles"], serde_json::json!(["/bin/busybox"]));
    assert_eq!(info["Config"]["Cmd"], serde_json::json!(["/bin/sh"]));

    // The merged view: the deletion in layer 2 is a whiteout, the addition is there.
    let mnt = env.ok(&["image", "mount", "example.com/app:1"]);
    let mnt = Path::new(mnt.trim());
    assert!(!mnt.join("etc/d/gone").exists());
    assert_eq!(std::fs::read_to_string(mnt.join("etc/added")).unwrap(), "added");
    assert_eq!(std::fs::read_to_string(mnt.join("etc/keep")).unwrap(), "keep");
    assert_eq!(std::fs::read_to_string(mnt.join(LONG_DIR).join(LONG_FILE)).unwrap(), "deep");
    assert!(std::fs::write(mnt.join("etc/new"), "x").is_err(), "image mount must be read-only");
    env.ok(&["image", "unmount", "example.com/app:1"]);

    // OCI directory: skopeo and umoci read it, with the same manifest digest.
    let out = env.path("out-dir");
    env.ok(&[
        "image",
        "save",
        "example.com/app:1",
        "-o",
        out.to_str().unwrap(),
        "--format",
        "oci-dir",
    ]);
    let again = skopeo_inspect(&format!("oci:{}:1", out.display()));
    assert_eq!(again["Digest"], original["Digest"]);
    let ls = Command::new("umoci").args(["ls", "--layout"]).arg(&out).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&ls.stdout).trim(), "1");

    // OCI archive: same digest.
    let tar = env.path("out.tar");
    env.ok(&["image", "save", "example.com/app:1", "-o", tar.to_str().unwrap()]);
    assert_eq!(
        skopeo_inspect(&format!("oci-archive:{}", tar.display()))["Digest"],
        original["Digest"]
    );

    // docker-archive: skopeo reads the same config (the image id) and tag.
    let dtar = env.path("out-docker.tar");
    env.ok(&[
        "image",
        "save",
        "example.com/app:1",
        "-o",
        dtar.to_str().unwrap(),
        "--format",
        "docker-archive",
    ]);
    assert_eq!(
        skopeo_raw_config_digest(&format!("docker-archive:{}", dtar.display())),
        info["Id"].as_str().unwrap()
    );
    let d = skopeo_inspect(&format!("docker-archive:{}", dtar.display()));
    assert_eq!(d["Layers"].as_array().unwrap().len(), 2);

    // And our own archives import back to the same image, in a fresh store.
    let env2 = Env::new();
    env2.ok(&["image", "import", tar.to_str().unwrap()]);
    assert_eq!(env2.inspect("example.com/app:1")["Bulkhead"]["ManifestDigest"], original["Digest"]);
    let env3 = Env::new();
    env3.ok(&["image", "import", dtar.to_str().unwrap()]);
    assert_eq!(env3.inspect("example.com/app:1")["Id"], info["Id"]);
}

#[test]
fn imports_what_skopeo_writes() {
    let env = Env::new();
    let layout = env.path("layout");
    two_layer_image(&layout);
    let layout_s = layout.to_str().unwrap();
    let config_digest = skopeo_raw_config_digest(&format!("oci:{layout_s}:t"));

    let oci_tar = env.path("skopeo-oci.tar");
    sh(Command::new("skopeo").args([
        "copy",
        &format!("oci:{layout_s}:t"),
        &format!("oci-archive:{}:v2", oci_tar.display()),
    ]));
    env.ok(&["image", "import", oci_tar.to_str().unwrap(), "--tag", "from-oci-archive:1"]);
    assert_eq!(env.inspect("from-oci-archive:1")["Id"], config_digest.as_str());

    let dtar = env.path("skopeo-docker.tar");
    sh(Command::new("skopeo").args([
        "copy",
        &format!("oci:{layout_s}:t"),
        &format!("docker-archive:{}:docker.io/library/fromdocker:7", dtar.display()),
    ]));
    let out = env.ok(&["image", "import", dtar.to_str().unwrap()]);
    assert!(out.contains("Loaded image: fromdocker:7"), "{out}");
    assert_eq!(env.inspect("fromdocker:7")["Id"], config_digest.as_str());
}

#[test]
fn picks_the_platform_from_a_multi_platform_index() {
    let env = Env::new();
    let layout = env.path("layout");
    umoci_image(&layout, &[&|r: &Path| busybox_rootfs(r)]);
    // Wrap the manifest in a nested index with two platforms, as registries serve them.
    let index_path = layout.join("index.json");
    let index: serde_json::Value = serde_json::from_slice(&std::fs::read(&index_path).unwrap()).unwrap();
    let m = index["manifests"][0].clone();
    let mut arm = m.clone();
    arm["digest"] = format!("sha256:{}", "1".repeat(64)).into();
    arm["platform"] = serde_json::json!({"os": "linux", "architecture": "arm64"});
    let mut amd = m.clone();
    amd.as_object_mut().unwrap().remove("annotations");
    amd["platform"] = serde_json::json!({"os": "linux", "architecture": "amd64"});
    let nested = serde_json::to_vec(
        &serde_json::json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": [arm, amd]}),
    )
    .unwrap();
    let hex = sha256_hex(&nested);
    std::fs::write(layout.join("blobs/sha256").join(&hex), &nested).unwrap();
    let top = serde_json::json!({"schemaVersion": 2, "manifests": [{"mediaType": "application/vnd.oci.image.index.v1+json", "digest": format!("sha256:{hex}"), "size": nested.len()}]});
    std::fs::write(&index_path, serde_json::to_vec(&top).unwrap()).unwrap();

    env.ok(&["image", "import", layout.to_str().unwrap(), "--tag", "multi:1"]);
    assert_eq!(env.inspect("multi:1")["Bulkhead"]["ManifestDigest"], m["digest"]);
    let err = env.fails(&[
        "image",
        "import",
        layout.to_str().unwrap(),
        "--tag",
        "multi:2",
        "--platform",
        "linux/s390x",
    ]);
    assert!(
        err.contains("no image for platform linux/s390x") && err.contains("linux/arm64"),
        "{err}"
    );
}

#[test]
fn rootfs_import_tag_rm_and_prune() {
    let env = Env::new();
    let rootfs = env.path("rootfs");
    busybox_rootfs(&rootfs);
    std::fs::write(rootfs.join("hello"), "hi").unwrap();
    std::fs::hard_link(rootfs.join("hello"), rootfs.join("hello2")).unwrap();
    // Our own tar writer uses GNU long-name entries past 100 bytes, and for long link targets.
    std::fs::create_dir_all(rootfs.join(LONG_DIR)).unwrap();
    std::fs::write(rootfs.join(LONG_DIR).join(LONG_FILE), "deep").unwrap();
    std::fs::hard_link(rootfs.join(LONG_DIR).join(LONG_FILE), rootfs.join("deep-link")).unwrap();
    std::os::unix::fs::symlink(Path::new("/").join(LONG_DIR).join(LONG_FILE), rootfs.join("deep-sym")).unwrap();
    env.ok(&[
        "image",
        "import",
        "--rootfs",
        rootfs.to_str().unwrap(),
        "--tag",
        "bb",
        "--cmd",
        "[\"/bin/sh\",\"-c\",\"echo hi\"]",
        "-e",
        "A=1",
        "-w",
        "/tmp",
        "-u",
        "1000",
    ]);
    let info = env.inspect("bb");
    assert_eq!(info["RepoTags"], serde_json::json!(["bb:latest"]));
    assert_eq!(info["Config"]["Cmd"], serde_json::json!(["/bin/sh", "-c", "echo hi"]));
    assert_eq!(info["Config"]["User"], "1000");
    assert_eq!(info["Config"]["WorkingDir"], "/tmp");
    assert!(info["Config"]["Env"].as_array().unwrap().iter().any(|e| e == "A=1"));
    // The image is a real OCI image to skopeo too.
    let out = env.path("bb-dir");
    env.ok(&["image", "save", "bb", "-o", out.to_str().unwrap(), "--format", "oci-dir"]);
    let o = Command::new("skopeo")
        .args(["inspect", &format!("oci:{}:latest", out.display())])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // Hard links stay hard links.
    let mnt = env.ok(&["image", "mount", "bb"]);
    use std::os::unix::fs::MetadataExt;
    let a = std::fs::metadata(Path::new(mnt.trim()).join("hello")).unwrap();
    assert_eq!(a.nlink(), 2);
    let m = Path::new(mnt.trim());
    assert_eq!(std::fs::read_to_string(m.join(LONG_DIR).join(LONG_FILE)).unwrap(), "deep");
    assert_eq!(std::fs::metadata(m.join("deep-link")).unwrap().nlink(), 2);
    assert_eq!(
        std::fs::read_link(m.join("deep-sym")).unwrap(),
        Path::new("/").join(LONG_DIR).join(LONG_FILE)
    );
    let err = env.fails(&["image", "rm", "bb"]);
    assert!(err.contains("mounted"), "{err}");
    env.ok(&["image", "unmount", "bb"]);

    let id = info["Id"].as_str().unwrap().to_owned();
    env.ok(&["tag", "bb", "other/name:2"]);
    let err = env.fails(&["image", "rm", &id]);
    assert!(err.contains("tagged 2 times"), "{err}");
    let out = env.ok(&["rmi", "bb"]);
    assert!(out.contains("Untagged: bb:latest") && !out.contains("Deleted"), "{out}");
    assert_eq!(env.inspect("other/name:2")["Id"], id.as_str());
    let out = env.ok(&["image", "rm", "other/name:2"]);
    assert!(out.contains(&format!("Deleted: {id}")), "{out}");
    // Nothing is left: no blob, no layer.
    assert_eq!(std::fs::read_dir(env.root().join("blobs/sha256")).unwrap().count(), 0);
    assert_eq!(std::fs::read_dir(env.root().join("layers")).unwrap().count(), 0);

    // prune removes untagged images and what only they used.
    env.ok(&["image", "import", "--rootfs", rootfs.to_str().unwrap()]);
    assert_eq!(env.ok(&["images", "-q"]).lines().count(), 1);
    let out = env.ok(&["image", "prune", "-f"]);
    assert!(out.contains("Total reclaimed space"), "{out}");
    assert_eq!(env.ok(&["images", "-q"]).lines().count(), 0);
    assert_eq!(std::fs::read_dir(env.root().join("blobs/sha256")).unwrap().count(), 0);
    env.ok(&["system", "check"]);
}

#[test]
fn concurrent_imports_of_the_same_image_both_succeed() {
    let env = Env::new();
    let layout = env.path("layout");
    two_layer_image(&layout);
    let bin = env!("CARGO_BIN_EXE_bulkhead");
    let children: Vec<_> = (0..3)
        .map(|i| {
            Command::new(bin)
                .arg("--root")
                .arg(env.root())
                .args(["image", "import", layout.to_str().unwrap(), "--tag", &format!("c:{i}")])
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for c in children {
        let o = c.wait_with_output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    let ids: std::collections::BTreeSet<String> = (0..3)
        .map(|i| env.inspect(&format!("c:{i}"))["Id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids.len(), 1);
    env.ok(&["system", "check"]);
}

#[test]
fn file_capabilities_are_kept_and_listed() {
    let env = Env::new();
    let rootfs = env.path("rootfs");
    busybox_rootfs(&rootfs);
    std::fs::copy("/bin/busybox", rootfs.join("bin/ping")).unwrap();
    sh(Command::new("setcap").arg("cap_net_raw+ep").arg(rootfs.join("bin/ping")));
    env.ok(&["image", "import", "--rootfs", rootfs.to_str().unwrap(), "--tag", "caps"]);
    assert_eq!(
        env.inspect("caps")["Bulkhead"]["FileCapabilities"],
        serde_json::json!(["/bin/ping"])
    );
    let mnt = env.ok(&["image", "mount", "caps"]);
    let o = Command::new("getcap").arg(Path::new(mnt.trim()).join("bin/ping")).output().unwrap();
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("cap_net_raw=ep"),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    env.ok(&["image", "unmount", "caps"]);
}

#[test]
fn imports_zstd_layers() {
    let env = Env::new();
    let layout = env.path("layout");
    two_layer_image(&layout);
    let zl = env.path("zstd-layout");
    sh(Command::new("skopeo").args([
        "copy",
        "--dest-compress-format",
        "zstd",
        &format!("oci:{}:t", layout.display()),
        &format!("oci:{}:z", zl.display()),
    ]));
    env.ok(&["image", "import", zl.to_str().unwrap(), "--tag", "z:1"]);
    let info = env.inspect("z:1");
    assert!(
        info["Bulkhead"]["Layers"]
            .as_array()
            .unwrap()
            .iter()
            .all(|l| l["MediaType"] == "application/vnd.oci.image.layer.v1.tar+zstd"),
        "{info}"
    );
    let mnt = env.ok(&["image", "mount", "z:1"]);
    assert_eq!(std::fs::read_to_string(Path::new(mnt.trim()).join("etc/added")).unwrap(), "added");
    env.ok(&["image", "unmount", "z:1"]);
}

#[test]
fn accepts_sha512_addressed_blobs() {
    use sha2::Digest as _;
    let env = Env::new();
    let layout = env.path("layout");
    umoci_image(&layout, &[&|r: &Path| busybox_rootfs(r)]);
    // Re-address the layer by sha512, as a registry that uses sha512 would.
    let blob = std::fs::read(layer_blob(&layout, 0)).unwrap();
    let hex = hex::encode(sha2::Sha512::digest(&blob));
    std::fs::create_dir_all(layout.join("blobs/sha512")).unwrap();
    std::fs::write(layout.join("blobs/sha512").join(&hex), &blob).unwrap();
    tamper_layout(&layout, |m, _| m["layers"][0]["digest"] = format!("sha512:{hex}").into());
    env.ok(&["image", "import", layout.to_str().unwrap(), "--tag", "s512:1"]);
    let info = env.inspect("s512:1");
    assert_eq!(info["Bulkhead"]["Layers"][0]["Blob"], format!("sha512:{hex}").as_str());
    assert!(env.root().join("blobs/sha512").join(&hex).is_file());
    env.ok(&["system", "check"]);
    // A sha512 blob whose content does not match is refused like any other.
    let env2 = Env::new();
    let mut bad = blob.clone();
    bad[10] ^= 1;
    std::fs::write(layout.join("blobs/sha512").join(&hex), &bad).unwrap();
    let err = env2.fails(&["image", "import", layout.to_str().unwrap(), "--tag", "s512:1"]);
    assert!(err.contains("blob digest"), "{err}");
}
