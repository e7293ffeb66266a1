//! Bad input: each import must fail with one clear line, leave no image or reference behind, and
//! leave the canary directory beside the store untouched. Images are real umoci layouts; the hostile
//! layer is added verbatim with `umoci raw add-layer`.

mod common;

use common::*;

/// A one-layer busybox image plus the hostile `layer`, imported; returns the error line.
fn import_with_layer(env: &Env, layer: Vec<u8>) -> String {
    let layout = env.path("layout");
    umoci_image(&layout, &[&|r: &std::path::Path| busybox_rootfs(r)]);
    add_raw_layer(&layout, &layer);
    let err = env.fails(&["image", "import", layout.to_str().unwrap(), "--tag", "evil:1"]);
    env.assert_canary_untouched();
    env.assert_no_images();
    err
}

fn canary(env: &Env) -> String {
    env.path("canary").to_str().unwrap().to_owned()
}

#[test]
fn refuses_entry_with_parent_dir() {
    let env = Env::new();
    let err = import_with_layer(&env, RawTar::new().file("../../../../../../../../tmp/evil", b"x").finish());
    assert!(err.contains("climbs out"), "{err}");
}

#[test]
fn refuses_absolute_path() {
    let env = Env::new();
    let target = format!("{}/evil", canary(&env));
    let err = import_with_layer(&env, RawTar::new().file(&target, b"x").finish());
    assert!(err.contains("absolute path"), "{err}");
}

#[test]
fn refuses_write_through_symlink_in_same_layer() {
    let env = Env::new();
    let err = import_with_layer(&env, RawTar::new().symlink("link", &canary(&env)).file("link/evil", b"x").finish());
    assert!(err.contains("passes through a symlink"), "{err}");
}

#[test]
fn refuses_write_through_relative_symlink_climbing_out() {
    let env = Env::new();
    let err = import_with_layer(
        &env,
        RawTar::new()
            .symlink("up", "../../../../../../../../..")
            .file("up/tmp/evil", b"x")
            .finish(),
    );
    assert!(err.contains("passes through a symlink"), "{err}");
}

#[test]
fn refuses_write_through_symlink_from_lower_layer() {
    let env = Env::new();
    let layout = env.path("layout");
    let c = canary(&env);
    umoci_image(
        &layout,
        &[&|r: &std::path::Path| {
            busybox_rootfs(r);
            std::os::unix::fs::symlink(&c, r.join("link")).unwrap();
        }],
    );
    add_raw_layer(&layout, &RawTar::new().file("link/evil", b"x").finish());
    let err = env.fails(&["image", "import", layout.to_str().unwrap(), "--tag", "evil:1"]);
    assert!(err.contains("lower layer"), "{err}");
    env.assert_canary_untouched();
    env.assert_no_images();
}

#[test]
fn refuses_hard_link_to_outside_path() {
    let env = Env::new();
    let err = import_with_layer(&env, RawTar::new().hardlink("passwd", "/etc/passwd").finish());
    assert!(err.contains("hard link"), "{err}");
    let env = Env::new();
    let err = import_with_layer(&env, RawTar::new().hardlink("passwd", "../../../../etc/passwd").finish());
    assert!(err.contains("hard link"), "{err}");
}

#[test]
fn refuses_hard_link_through_symlink() {
    let env = Env::new();
    let err = import_with_layer(
        &env,
        RawTar::new().symlink("etc2", "/etc").hardlink("shadow", "etc2/passwd").finish(),
    );
    assert!(err.contains("hard link") && err.contains("outside this layer"), "{err}");
}

#[test]
fn refuses_whiteout_tricks() {
    for name in [".wh...", ".wh.", "dir/.wh..."] {
        let env = Env::new();
        let err = import_with_layer(&env, RawTar::new().dir("dir").file(name, b"").finish());
        assert!(err.contains("invalid whiteout"), "{name}: {err}");
    }
}

#[test]
fn refuses_pax_path_override_that_escapes() {
    let env = Env::new();
    let target = format!("{}/evil", canary(&env));
    let err = import_with_layer(&env, RawTar::new().pax(&[("path", &target)]).file("innocent", b"x").finish());
    assert!(err.contains("absolute path"), "{err}");
    let env = Env::new();
    let err = import_with_layer(&env, RawTar::new().pax(&[("path", "a/../../evil")]).file("innocent", b"x").finish());
    assert!(err.contains("climbs out"), "{err}");
}

#[test]
fn drops_device_nodes_and_reports_them() {
    let env = Env::new();
    let layout = env.path("layout");
    umoci_image(&layout, &[&|r: &std::path::Path| busybox_rootfs(r)]);
    add_raw_layer(
        &layout,
        &RawTar::new().dir("dev").char_device("dev/mem").file("ok", b"fine").finish(),
    );
    env.ok(&["image", "import", layout.to_str().unwrap(), "--tag", "dev:1"]);
    let info = env.inspect("dev:1");
    assert_eq!(info["Bulkhead"]["DroppedDevices"], serde_json::json!(["/dev/mem"]));
    let mnt = env.ok(&["image", "mount", "dev:1"]);
    let mnt = std::path::Path::new(mnt.trim());
    assert!(!mnt.join("dev/mem").exists(), "the device node was created");
    assert_eq!(std::fs::read_to_string(mnt.join("ok")).unwrap(), "fine");
    env.ok(&["image", "unmount", "dev:1"]);
}

#[test]
fn refuses_gzip_bomb() {
    let env = Env::new();
    // 300 MiB of zeros: umoci gzips it to well under 1 MiB, a ratio far over the default 100:1.
    let zeros = vec![0u8; 300 << 20];
    let err = import_with_layer(&env, RawTar::new().file("zeros", &zeros).finish());
    assert!(err.contains("decompression bomb"), "{err}");
}

#[test]
fn refuses_layer_over_size_limit() {
    let env = Env::new();
    let layout = env.path("layout");
    umoci_image(&layout, &[&|r: &std::path::Path| busybox_rootfs(r)]);
    let err = env.fails(&[
        "image",
        "import",
        layout.to_str().unwrap(),
        "--tag",
        "big:1",
        "--max-layer-size",
        "100000",
    ]);
    assert!(err.contains("expands to more than 100000 bytes"), "{err}");
    env.assert_no_images();
}

#[test]
fn refuses_diff_id_mismatch() {
    let env = Env::new();
    let layout = env.path("layout");
    umoci_image(&layout, &[&|r: &std::path::Path| busybox_rootfs(r)]);
    tamper_layout(&layout, |_, c| {
        c["rootfs"]["diff_ids"][0] = format!("sha256:{}", "0".repeat(64)).into()
    });
    let err = env.fails(&["image", "import", layout.to_str().unwrap(), "--tag", "x:1"]);
    assert!(err.contains("diff_id"), "{err}");
    env.assert_no_images();
}

#[test]
fn refuses_blob_digest_mismatch() {
    let env = Env::new();
    let layout = env.path("layout");
    umoci_image(&layout, &[&|r: &std::path::Path| busybox_rootfs(r)]);
    let blob = layer_blob(&layout, 0);
    let mut data = std::fs::read(&blob).unwrap();
    let mid = data.len() / 2;
    data[mid] ^= 0xff;
    std::fs::write(&blob, data).unwrap();
    let err = env.fails(&["image", "import", layout.to_str().unwrap(), "--tag", "x:1"]);
    assert!(err.contains("blob digest"), "{err}");
    env.assert_no_images();
    // Nothing unverified became visible under blobs/.
    let blobs: Vec<_> = std::fs::read_dir(env.root().join("blobs/sha256")).unwrap().collect();
    assert!(blobs.is_empty(), "unverified blobs were stored");
}

#[test]
fn refuses_size_mismatch() {
    let env = Env::new();
    let layout = env.path("layout");
    umoci_image(&layout, &[&|r: &std::path::Path| busybox_rootfs(r)]);
    tamper_layout(&layout, |m, _| {
        let s = m["layers"][0]["size"].as_u64().unwrap();
        m["layers"][0]["size"] = (s - 1).into();
    });
    let err = env.fails(&["image", "import", layout.to_str().unwrap(), "--tag", "x:1"]);
    assert!(err.contains("size of blob"), "{err}");
    env.assert_no_images();
}

#[test]
fn refuses_missing_blob() {
    let env = Env::new();
    let layout = env.path("layout");
    umoci_image(&layout, &[&|r: &std::path::Path| busybox_rootfs(r)]);
    std::fs::remove_file(layer_blob(&layout, 0)).unwrap();
    let err = env.fails(&["image", "import", layout.to_str().unwrap(), "--tag", "x:1"]);
    assert!(err.contains("missing"), "{err}");
    env.assert_no_images();
}

#[test]
fn refuses_oversized_manifest() {
    let env = Env::new();
    let layout = env.path("layout");
    umoci_image(&layout, &[&|r: &std::path::Path| busybox_rootfs(r)]);
    tamper_layout(&layout, |m, _| {
        m["annotations"] = serde_json::json!({"padding": "x".repeat(5 << 20)})
    });
    let err = env.fails(&["image", "import", layout.to_str().unwrap(), "--tag", "x:1"]);
    assert!(err.contains("over the 4194304-byte limit"), "{err}");
    env.assert_no_images();
}

#[test]
fn refuses_malformed_manifest_and_invalid_reference() {
    let env = Env::new();
    let layout = env.path("layout");
    umoci_image(&layout, &[&|r: &std::path::Path| busybox_rootfs(r)]);
    tamper_layout(&layout, |m, _| m["layers"] = serde_json::json!("not a list"));
    let err = env.fails(&["image", "import", layout.to_str().unwrap(), "--tag", "x:1"]);
    assert!(err.contains("malformed manifest"), "{err}");
    env.assert_no_images();
    let err = env.fails(&["image", "inspect", "Alpine:1"]);
    assert!(err.contains("invalid reference"), "{err}");
}

#[test]
fn opaque_whiteout_after_new_file_yields_the_right_directory() {
    let env = Env::new();
    let layout = env.path("layout");
    umoci_image(
        &layout,
        &[&|r: &std::path::Path| {
            busybox_rootfs(r);
            std::fs::create_dir(r.join("d")).unwrap();
            std::fs::write(r.join("d/old"), "old").unwrap();
        }],
    );
    // The new file comes before the opaque marker in tar order; the marker must not hide it.
    add_raw_layer(
        &layout,
        &RawTar::new()
            .dir("d")
            .file("d/new", b"new")
            .file("d/.wh..wh..opq", b"")
            .file("gone", b"")
            .finish(),
    );
    env.ok(&["image", "import", layout.to_str().unwrap(), "--tag", "opq:1"]);
    let mnt = env.ok(&["image", "mount", "opq:1"]);
    let mnt = std::path::Path::new(mnt.trim());
    let mut names: Vec<_> = std::fs::read_dir(mnt.join("d"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, vec!["new"]);
    env.ok(&["image", "unmount", "opq:1"]);
}
