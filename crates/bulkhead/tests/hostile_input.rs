//! Bad input: each import must fail with one clear line, leave no image or reference behind, and
//! leave the canary directory beside the store untouched. Images are real umoci layouts; the hostile
//! layer is added verbatim with `umoci raw add-layer`.

mod common;

use std::process::Command;

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
    umoci_image(
        &layout,
        &[&|r: &std::path::Path| {
            busybox_rootfs(r);
            std::fs::write(r.join("bin/su"), "x").unwrap();
            std::fs::set_permissions(r.join("bin/su"), std::os::unix::fs::PermissionsExt::from_mode(0o4755)).unwrap();
        }],
    );
    let mut devices = RawTar::new().dir("dev");
    for i in 0..8 {
        devices = devices.char_device(&format!("dev/mem{i}"));
    }
    add_raw_layer(&layout, &devices.file("ok", b"fine").finish());
    // One plain warning line each, without log decorations, naming what was kept and dropped.
    let o = env.run(&["image", "import", layout.to_str().unwrap(), "--tag", "dev:1"]);
    assert!(o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    let warnings: Vec<&str> = err.lines().filter(|l| l.contains("warning")).collect();
    assert_eq!(warnings.len(), 2, "{err}");
    assert!(warnings.iter().all(|l| l.starts_with("bulkhead: warning: ")), "{err}");
    assert!(warnings[0].contains("setuid") && warnings[0].contains("/bin/su"), "{err}");
    assert!(
        warnings[1].contains("8 device node(s)") && warnings[1].contains("/dev/mem0") && warnings[1].contains("3 more"),
        "{err}"
    );
    assert!(!err.contains('\x1b'), "colour codes in a file: {err}");

    let info = env.inspect("dev:1");
    assert_eq!(info["Bulkhead"]["DroppedDevices"].as_array().unwrap().len(), 8);
    let mnt = env.ok(&["image", "mount", "dev:1"]);
    let mnt = std::path::Path::new(mnt.trim());
    assert!(!mnt.join("dev/mem0").exists(), "the device node was created");
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

/// A FIFO where a file is expected would block its reader forever while it holds the store's lock,
/// and every other command would wait behind it. Each reader refuses it with one line instead.
#[test]
fn special_files_where_files_are_expected_are_refused_without_hanging() {
    let env = Env::new();
    let layout = env.path("layout");
    umoci_image(&layout, &[&|r: &std::path::Path| busybox_rootfs(r)]);
    add_raw_layer(
        &layout,
        &RawTar::new()
            .dir("etc")
            .fifo("etc/passwd")
            .dir("var")
            .dir("var/lib")
            .dir("var/lib/dpkg")
            .fifo("var/lib/dpkg/status")
            .dir("var/lib/rpm")
            .file("var/lib/rpm/rpmdb.sqlite", b"not a database")
            .fifo("var/lib/rpm/rpmdb.sqlite-wal")
            .finish(),
    );
    env.ok(&["image", "import", layout.to_str().unwrap(), "--tag", "fifo:1"]);
    // -u resolves the name in the image's /etc/passwd.
    let o = env.run_bounded(60, &["run", "--rm", "-u", "app", "fifo:1", "true"]);
    assert_ne!(o.status.code(), Some(124), "run hung on a FIFO /etc/passwd");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("/etc/passwd") && err.contains("a FIFO"),
        "{err}"
    );
    assert_eq!(err.lines().filter(|l| l.contains("error:")).count(), 1, "{err}");
    // The scanner: the dpkg status is no regular file (not read at all), and the rpm database's
    // write-ahead log, read beside the database, is a FIFO: a warning for the broken database, and
    // the scan goes on.
    let o = env.run_bounded(60, &["sbom", "fifo:1"]);
    assert_ne!(o.status.code(), Some(124), "sbom hung on a FIFO");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success() && err.contains("rpmdb.sqlite"), "{err}");
    // Files named on the command line.
    let fifo = env.path("pipe");
    rustix::fs::mknodat(
        rustix::fs::CWD,
        &fifo,
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o600),
        0,
    )
    .unwrap();
    for args in [
        vec!["image", "import", "--rootfs", fifo.to_str().unwrap(), "--tag", "x"],
        vec!["image", "import", fifo.to_str().unwrap()],
        vec!["db", "import", fifo.to_str().unwrap()],
    ] {
        let o = env.run_bounded(60, &args);
        assert_ne!(o.status.code(), Some(124), "{args:?} hung on a FIFO");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains("FIFO"), "{args:?}: {err}");
    }
    env.assert_canary_untouched();
}

/// A GNU sparse entry's holes are made up by the tar reader, after the inflating stream's limits:
/// a tiny layer could write gigabytes of zeros. Its real size counts against the layer limit before
/// anything is written; and the refused import leaves nothing behind, not even the busybox layer it
/// had unpacked first (bad input changes nothing).
#[test]
fn sparse_entry_counts_its_real_size_and_a_refused_import_leaves_no_layer() {
    let env = Env::new();
    let layout = env.path("layout");
    umoci_image(&layout, &[&|r: &std::path::Path| busybox_rootfs(r)]);
    // 64 MiB, of which one 512-byte block at the end is data and the rest a hole.
    let real = 64u64 << 20;
    let mut h = tar::Header::new_gnu();
    h.set_path("sparse").unwrap();
    h.set_entry_type(tar::EntryType::GNUSparse);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_size(512);
    {
        let g = h.as_gnu_mut().unwrap();
        g.sparse[0].set_offset(real - 512);
        g.sparse[0].set_length(512);
        g.set_real_size(real);
    }
    h.set_cksum();
    let mut layer = h.as_bytes().to_vec();
    layer.extend_from_slice(&[b'x'; 512]);
    layer.extend(std::iter::repeat_n(0u8, 1024));
    add_raw_layer(&layout, &layer);
    // The same entry in an archive given to `image import`, which is unpacked before it is read.
    let archive = env.path("sparse.tar");
    std::fs::write(&archive, &layer).unwrap();
    let err = env.fails(&["image", "import", archive.to_str().unwrap(), "--max-layer-size", "4194304"]);
    assert!(err.contains("sparse") && err.contains("expands to more than"), "{err}");
    let err = env.fails(&[
        "image",
        "import",
        layout.to_str().unwrap(),
        "--tag",
        "sparse:1",
        "--max-layer-size",
        "4194304",
    ]);
    assert!(err.contains("sparse") && err.contains(&real.to_string()), "{err}");
    env.assert_no_images();
    let layers: Vec<_> = std::fs::read_dir(env.root().join("layers")).unwrap().collect();
    assert!(layers.is_empty(), "the refused import left layers: {layers:?}");
    env.assert_canary_untouched();
    // Within a limit that allows it, the same image imports (the check counts, it does not ban).
    env.ok(&["image", "import", layout.to_str().unwrap(), "--tag", "sparse:1"]);
}

/// The names are signed, but an image record is a file like any other in the store: edit one so
/// that a verified name's record lists another image's config and layers, and `run` must refuse it
/// rather than start the other image under the verified name.
#[test]
fn an_edited_image_record_is_refused() {
    let env = Env::new();
    let records = env.root().join("images/sha256");
    let import = |name: &str, marker: &'static str| {
        let layout = env.path(name);
        umoci_image(
            &layout,
            &[&|r: &std::path::Path| busybox_rootfs(r), &move |r: &std::path::Path| {
                std::fs::write(r.join("marker"), marker).unwrap()
            }],
        );
        env.ok(&["image", "import", layout.to_str().unwrap(), "--tag", &format!("{name}:1")]);
    };
    import("good", "good");
    let good_record = std::fs::read_dir(&records).unwrap().next().unwrap().unwrap().path();
    import("evil", "evil");
    let evil_record = std::fs::read_dir(&records)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p != &good_record)
        .unwrap();
    let out = env.ok(&["run", "--rm", "good:1", "cat", "/marker"]);
    assert_eq!(out, "good");
    let mut good: serde_json::Value = serde_json::from_slice(&std::fs::read(&good_record).unwrap()).unwrap();
    let evil: serde_json::Value = serde_json::from_slice(&std::fs::read(&evil_record).unwrap()).unwrap();
    for field in ["config", "layers"] {
        good[field] = evil[field].clone();
    }
    std::fs::write(&good_record, serde_json::to_vec(&good).unwrap()).unwrap();
    let err = env.fails(&["run", "--rm", "good:1", "cat", "/marker"]);
    assert!(err.contains("does not match its manifest"), "{err}");
    // system check names it, and --repair removes the forged record (the other image stays).
    let o = env.run(&["system", "check", "--repair"]);
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("does not match its manifest"),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    assert_eq!(env.ok(&["run", "--rm", "evil:1", "cat", "/marker"]), "evil");
}

/// An rpm database whose `Packages` is a view over an endless recursive query kept `sbom` at
/// 100 % CPU forever (defensive mode does not stop a recursive query): now refused at once.
#[test]
fn an_rpm_database_that_never_ends_is_not_read() {
    let env = Env::new();
    let db = env.path("rpmdb.sqlite");
    sh(Command::new("python3").args([
        "-c",
        "import sqlite3, sys; c = sqlite3.connect(sys.argv[1]); c.execute(\"CREATE VIEW Packages AS WITH RECURSIVE n(i, blob) AS (SELECT 1, x'00' UNION ALL SELECT i + 1, x'00' FROM n) SELECT blob FROM n\"); c.commit()",
        db.to_str().unwrap(),
    ]));
    let layout = env.path("layout");
    let data = std::fs::read(&db).unwrap();
    umoci_image(
        &layout,
        &[&|r: &std::path::Path| {
            busybox_rootfs(r);
            std::fs::create_dir_all(r.join("var/lib/rpm")).unwrap();
            std::fs::write(r.join("var/lib/rpm/rpmdb.sqlite"), &data).unwrap();
        }],
    );
    env.ok(&["image", "import", layout.to_str().unwrap(), "--tag", "rpmview:1"]);
    let o = env.run_bounded(60, &["sbom", "rpmview:1"]);
    assert_ne!(o.status.code(), Some(124), "sbom did not end");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success() && err.contains("Packages is a view"), "{err}");
}

/// A layer with an entry 2,000 directories deep is refused at import (every later walk and
/// removal of it would pay for the depth); one at the limit's edge is fine.
#[test]
fn refuses_a_layer_deeper_than_the_limit() {
    let env = Env::new();
    let deep = vec!["d"; 2000].join("/") + "/f";
    let err = import_with_layer(&env, RawTar::new().pax(&[("path", &deep)]).file("placeholder", b"x").finish());
    assert!(err.contains("2001 directories deep") && err.contains("256"), "{err}");
}

/// An 8 MiB distroless dpkg status of repeated stanzas, hard-linked three times (an 88 KB layer
/// compressed), took `sbom` to 3.3 GB: now each inode is read once, a file gives at most 50,000
/// packages, and the warnings say what was left out. Peak memory is read by GNU time.
#[test]
fn a_package_database_bomb_is_read_within_bounds() {
    let env = Env::new();
    let layout = env.path("layout");
    umoci_image(
        &layout,
        &[&|r: &std::path::Path| {
            busybox_rootfs(r);
            let dir = r.join("var/lib/dpkg/status.d");
            std::fs::create_dir_all(&dir).unwrap();
            let stanza = "Package: p\nVersion: 1.0\nArchitecture: amd64\nStatus: install ok installed\n\n";
            std::fs::write(dir.join("base"), stanza.repeat((8 << 20) / stanza.len())).unwrap();
            for l in ["b", "c", "d"] {
                std::fs::hard_link(dir.join("base"), dir.join(l)).unwrap();
            }
        }],
    );
    env.ok(&["image", "import", layout.to_str().unwrap(), "--tag", "bomb:1"]);
    let o = Command::new("/usr/bin/time")
        .arg("-f")
        .arg("maxrss_kb=%M")
        .arg("timeout")
        .arg("120")
        .arg(env!("CARGO_BIN_EXE_bulkhead"))
        .arg("--root")
        .arg(env.root())
        .args(["sbom", "--no-cache", "--format", "json", "bomb:1"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    let rss: u64 = err
        .lines()
        .find_map(|l| l.strip_prefix("maxrss_kb="))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    eprintln!("sbom peak RSS: {rss} kB");
    assert!(rss < 512 << 10, "sbom used {rss} kB (1,020,292 kB before the bounds)");
    assert!(
        err.contains("a hard link to") && err.contains("only the first 50000") || err.contains("more than 50000"),
        "{err}"
    );
}

/// A base layer whose package metadata spends the image's whole budget (8 files of 64 MiB: 512
/// MiB) hid what the layers above install: the budget was charged bottom first, so the dpkg
/// database of the top layer went unread and `sbom` listed nothing of it. Now what the merged
/// view shows is read first, top layer first; what is left out is marked incomplete, and the
/// scan gate refuses an incomplete scan.
#[test]
fn a_base_layer_full_of_metadata_cannot_hide_what_the_layers_above_install() {
    let env = Env::new();
    let layout = env.path("layout");
    umoci_image(
        &layout,
        &[
            &|r: &std::path::Path| {
                busybox_rootfs(r);
                for n in 0..8 {
                    let dir = r.join(format!("usr/lib/python3/dist-packages/filler{n}-1.0.dist-info"));
                    std::fs::create_dir_all(&dir).unwrap();
                    let mut data = format!("Metadata-Version: 2.1\nName: filler{n}\nVersion: 1.0\n\n").into_bytes();
                    data.resize(64 << 20, b'\n');
                    std::fs::write(dir.join("METADATA"), data).unwrap();
                }
            },
            &|r: &std::path::Path| {
                std::fs::create_dir_all(r.join("var/lib/dpkg")).unwrap();
                std::fs::write(
                    r.join("var/lib/dpkg/status"),
                    "Package: vulnerable-lib\nVersion: 1.0\nArchitecture: amd64\nStatus: install ok installed\n\n",
                )
                .unwrap();
            },
        ],
    );
    // (Past the 100:1 compression limit at import, which a hostile image would pad its way around.)
    env.ok(&[
        "image",
        "import",
        layout.to_str().unwrap(),
        "--tag",
        "crowded:1",
        "--max-compression-ratio",
        "100000",
    ]);
    let bom: serde_json::Value = serde_json::from_str(&env.ok(&["sbom", "--no-cache", "--format", "json", "crowded:1"])).unwrap();
    let names: Vec<&str> = bom["packages"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["name"].as_str())
        .collect();
    assert!(names.contains(&"vulnerable-lib"), "{names:?}");
    let incomplete: Vec<&serde_json::Value> = bom["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|w| w["incomplete"] == true)
        .collect();
    assert_eq!(incomplete.len(), 1, "{}", bom["warnings"]);
    assert!(incomplete[0]["path"].as_str().unwrap().contains("filler"), "{}", bom["warnings"]);
    // The gate refuses what it could not fully read.
    let adv = env.path("osv");
    std::fs::create_dir_all(&adv).unwrap();
    let rec = r#"{"id": "TEST-1", "modified": "2026-01-01T00:00:00Z", "affected": [{"package": {"ecosystem": "Debian:12", "name": "other"}, "ranges": [{"type": "ECOSYSTEM", "events": [{"introduced": "0"}]}]}]}"#;
    std::fs::write(adv.join("TEST-1.json"), rec).unwrap();
    env.ok(&["db", "import", adv.to_str().unwrap()]);
    std::fs::create_dir_all(env.path("config")).unwrap();
    std::fs::write(env.path("config/policy.toml"), "[scan]\ngate = \"deny\"\n").unwrap();
    let err = env.fails(&["create", "--name", "c", "crowded:1", "/bin/true"]);
    assert!(err.contains("incomplete") && err.contains("refusing"), "{err}");
    let o = env.run(&["scan", "--fail-on", "critical", "crowded:1"]);
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("incomplete"));
}

/// A jar with 65,000 central-directory entries followed by end records that each name one entry
/// more than there is: the zip crate read the whole directory again for every one of them (800:
/// 13 s; 3,000 would take minutes). Now the end records are checked once, linearly, first.
#[test]
fn a_jar_with_forged_end_records_is_refused_at_once() {
    let env = Env::new();
    let jar = env.path("evil.jar");
    sh(Command::new("python3").args([
        "-c",
        r#"
import struct, sys, zipfile
with zipfile.ZipFile(sys.argv[1], "w") as z:
    for i in range(65000):
        z.writestr(f"e{i}", b"")
data = open(sys.argv[1], "rb").read()
at = data.rindex(b"PK\x05\x06")
eocd = bytearray(data[at:at + 22])
entries = struct.unpack_from("<H", eocd, 10)[0]
struct.pack_into("<HH", eocd, 8, entries + 1, entries + 1)
open(sys.argv[1], "ab").write(bytes(eocd) * 3000)
"#,
        jar.to_str().unwrap(),
    ]));
    let data = std::fs::read(&jar).unwrap();
    let layout = env.path("layout");
    umoci_image(
        &layout,
        &[&|r: &std::path::Path| {
            busybox_rootfs(r);
            std::fs::write(r.join("app.jar"), &data).unwrap();
        }],
    );
    env.ok(&["image", "import", layout.to_str().unwrap(), "--tag", "zipbomb:1"]);
    let o = env.run_bounded(60, &["sbom", "--no-cache", "zipbomb:1"]);
    assert_ne!(o.status.code(), Some(124), "sbom did not end");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        o.status.success() && err.contains("app.jar") && err.contains("not a readable archive"),
        "{err}"
    );
}
