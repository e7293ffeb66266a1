//! npm: installed `node_modules/**/package.json` and `package-lock.json` (v1, v2, v3).

use serde_json::Value;

use super::{package, Parsed};
use crate::Ecosystem;

pub fn parse_package_json(data: &[u8]) -> Result<Parsed, String> {
    let v: Value = serde_json::from_slice(data).map_err(|e| format!("package.json: {e}"))?;
    let (Some(name), Some(version)) = (v.get("name").and_then(Value::as_str), v.get("version").and_then(Value::as_str)) else {
        return Err("package.json without name or version".into());
    };
    let mut p = package(name, version, Ecosystem::Npm, "npm");
    p.license = v.get("license").and_then(Value::as_str).map(str::to_string);
    Ok(Parsed {
        packages: vec![p],
        ..Default::default()
    })
}

/// Lock file v2/v3 `packages` (keys `node_modules/NAME`), else v1 `dependencies` (nested).
pub fn parse_lock(data: &[u8]) -> Result<Parsed, String> {
    let v: Value = serde_json::from_slice(data).map_err(|e| format!("package-lock.json: {e}"))?;
    let mut out = Parsed::default();
    if let Some(pkgs) = v.get("packages").and_then(Value::as_object) {
        for (key, p) in pkgs {
            let Some(idx) = key.rfind("node_modules/") else { continue };
            let name = p.get("name").and_then(Value::as_str).unwrap_or(&key[idx + "node_modules/".len()..]);
            if p.get("link").and_then(Value::as_bool) == Some(true) {
                continue;
            }
            if let Some(version) = p.get("version").and_then(Value::as_str) {
                out.packages.push(package(name, version, Ecosystem::Npm, "npm-lock"));
            }
        }
    } else if let Some(deps) = v.get("dependencies") {
        // v1: nested `dependencies`, walked with an explicit stack (no recursion on outside input).
        let mut stack = vec![(deps, 0usize)];
        while let Some((deps, depth)) = stack.pop() {
            let Some(map) = deps.as_object() else { continue };
            for (name, d) in map {
                if let Some(version) = d.get("version").and_then(Value::as_str) {
                    out.packages.push(package(name, version, Ecosystem::Npm, "npm-lock"));
                }
                if let Some(inner) = d.get("dependencies") {
                    if depth < 64 {
                        stack.push((inner, depth + 1));
                    }
                }
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #[test]
    fn lock_v3_and_v1() {
        let v3 = br#"{"lockfileVersion":3,"packages":{"":{"name":"app"},"node_modules/lodash":{"version":"4.17.20"},"node_modules/@a/b":{"version":"1.0.0"},"node_modules/x/node_modules/y":{"version":"2.0.0"}}}"#;
        let p = super::parse_lock(v3).unwrap().packages;
        let names: Vec<_> = p.iter().map(|p| format!("{}@{}", p.name, p.version)).collect();
        assert_eq!(names, ["@a/b@1.0.0", "lodash@4.17.20", "y@2.0.0"]);
        let v1 = br#"{"lockfileVersion":1,"dependencies":{"a":{"version":"1.0.0","dependencies":{"b":{"version":"2.0.0"}}}}}"#;
        assert_eq!(super::parse_lock(v1).unwrap().packages.len(), 2);
        assert!(super::parse_package_json(b"{").is_err());
    }
}
