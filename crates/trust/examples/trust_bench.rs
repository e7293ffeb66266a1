//! bench/trust's bulkhead side: in one process, a repository with N signed tags and 3 delegated
//! roles (team0..team2, each trusted for `tK.*` and holding 10 tags) (not timed), then R times
//! each: resolve-and-verify one tag of the last delegated role with a fresh client (nothing
//! trusted before but the root), and sign one new top-level tag (load, add, sign targets +
//! snapshot + timestamp, write). Prints the medians in milliseconds.
//!
//!   trust_bench DIR N R

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use bulkhead_image::Digest;
use bulkhead_trust::repo::{add_delegation, init, resolve, sign_delegated_target, sign_target, sign_targets, Expiry, RoleSpec, Roles};
use bulkhead_trust::{KeyKind, PrivateKey};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (dir, n, r): (std::path::PathBuf, usize, usize) = (args[1].clone().into(), args[2].parse().unwrap(), args[3].parse().unwrap());
    let key = || Arc::new(PrivateKey::generate(KeyKind::Ed25519).unwrap());
    let one = |k: Arc<PrivateKey>| RoleSpec {
        keys: vec![k],
        threshold: 1,
    };
    let (t, s, ts) = (key(), key(), key());
    let roles = Roles {
        root: one(key()),
        targets: one(t.clone()),
        snapshot: one(s.clone()),
        timestamp: one(ts.clone()),
    };
    let meta = dir.join("meta");
    init(&meta, &roles, &Expiry::default()).unwrap();
    let online = vec![t, s, ts];
    let tags: Vec<_> = (0..n)
        .map(|i| {
            (
                format!("1.{i}"),
                Digest::sha256_of(format!("manifest {i}").as_bytes()),
                1000 + i as u64,
                HashMap::new(),
            )
        })
        .collect();
    sign_targets(&meta, &tags, &online, &Expiry::default()).unwrap();
    for team in 0..3 {
        let signer = key();
        let role = format!("team{team}");
        add_delegation(
            &meta,
            &role,
            &[format!("t{team}.*")],
            std::slice::from_ref(&signer),
            1,
            &online,
            &Expiry::default(),
        )
        .unwrap();
        for i in 0..10 {
            let name = format!("t{team}.{i}");
            let d = Digest::sha256_of(name.as_bytes());
            sign_delegated_target(
                &meta,
                &role,
                &name,
                &d,
                500 + i,
                std::slice::from_ref(&signer),
                &online,
                &Expiry::default(),
            )
            .unwrap();
        }
    }
    let root = std::fs::read(meta.join("1.root.json")).unwrap();
    let mut resolves = Vec::new();
    let mut signs = Vec::new();
    for i in 0..r {
        let state = dir.join(format!("state-{i}"));
        let t0 = Instant::now();
        let got = resolve(&root, &meta, &state, "t2.7").unwrap();
        resolves.push(t0.elapsed().as_secs_f64() * 1e3);
        assert_eq!(got.length, 507);
        let t0 = Instant::now();
        sign_target(
            &meta,
            &format!("2.{i}"),
            &Digest::sha256_of(&[i as u8]),
            1,
            HashMap::new(),
            &online,
            &Expiry::default(),
        )
        .unwrap();
        signs.push(t0.elapsed().as_secs_f64() * 1e3);
    }
    println!("resolve {:.2} sign {:.2}", median(resolves), median(signs));
}
