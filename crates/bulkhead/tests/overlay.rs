//! The overlay helper the runtime mounts container root filesystems with: layers in the right order,
//! writes going to the upper directory only.

mod common;

use bulkhead_image::mount::mount_overlay;
use bulkhead_image::Store;
use common::*;

#[test]
fn writable_overlay_stacks_layers_and_writes_only_to_upper() {
    let env = Env::new();
    let layout = env.path("layout");
    umoci_image(
        &layout,
        &[
            &|r: &std::path::Path| {
                busybox_rootfs(r);
                std::fs::write(r.join("which"), "lower").unwrap();
            },
            &|r: &std::path::Path| std::fs::write(r.join("which"), "upper").unwrap(),
        ],
    );
    env.ok(&["image", "import", layout.to_str().unwrap(), "--tag", "ov:1"]);

    let store = Store::open(env.root()).unwrap();
    let rec = store.resolve("ov:1").unwrap();
    let lowers: Vec<_> = rec.layers.iter().rev().map(|l| store.layer_diff(&l.chain_id)).collect();
    let (upper, work, target) = (env.path("upper"), env.path("work"), env.path("merged"));
    for d in [&upper, &work, &target] {
        std::fs::create_dir(d).unwrap();
    }
    mount_overlay(&lowers, Some((&upper, &work)), &target).unwrap();
    // The top layer wins; a write lands in upper and leaves the shared layers alone.
    assert_eq!(std::fs::read_to_string(target.join("which")).unwrap(), "upper");
    std::fs::write(target.join("which"), "container").unwrap();
    std::fs::remove_file(target.join("bin/cat")).unwrap();
    assert_eq!(std::fs::read_to_string(upper.join("which")).unwrap(), "container");
    for l in &lowers {
        assert_ne!(std::fs::read_to_string(l.join("which")).unwrap_or_default(), "container");
    }
    assert!(
        lowers.last().unwrap().join("bin/cat").symlink_metadata().is_ok(),
        "a shared layer was changed"
    );
    rustix::mount::unmount(&target, rustix::mount::UnmountFlags::empty()).unwrap();
    env.ok(&["system", "check"]);
}
