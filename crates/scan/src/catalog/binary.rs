//! ELF binaries: Go build information, cargo-auditable dependency lists, and the version strings
//! of software often built in without a package manager (OpenSSL, BusyBox, Python, Node.js).

use memchr::memmem;
use object::{Object, ObjectSection};

use super::{package, Parsed};
use crate::Ecosystem;

/// Limit on the dependency list cargo-auditable embeds, once inflated.
const MAX_AUDIT_JSON: usize = 8 << 20;
const GO_MAGIC: &[u8] = b"\xff Go buildinf:";

pub fn parse_binary(path: &str, data: &[u8]) -> Result<Parsed, String> {
    let mut out = Parsed::default();
    if !data.starts_with(b"\x7fELF") {
        return Ok(out);
    }
    let file = object::File::parse(data).map_err(|e| format!("unreadable ELF file: {e}"))?;
    let go = match file.section_by_name(".go.buildinfo") {
        Some(s) => Some(s.data().map_err(|e| format!("unreadable .go.buildinfo: {e}"))?),
        // Section headers stripped: the build info is 16-byte aligned in a data segment.
        None if file.sections().next().is_none() => find_aligned(data, GO_MAGIC).map(|at| &data[at..]),
        None => None,
    };
    if let Some(info) = go {
        match go_build_info(&file, info) {
            Ok(pkgs) => out.packages.extend(pkgs),
            Err(e) => out.warnings.push(format!("Go build information: {e}")),
        }
    }
    if file.section_by_name(".dep-v0").is_some() {
        match auditable_info::audit_info_from_slice(data, MAX_AUDIT_JSON) {
            Ok(info) => {
                for p in info.packages {
                    if p.kind == auditable_serde::DependencyKind::Build {
                        continue;
                    }
                    out.packages
                        .push(package(&p.name, &p.version.to_string(), Ecosystem::CratesIo, "rust-auditable"));
                }
            }
            Err(e) => out.warnings.push(format!("cargo-auditable data: {e}")),
        }
    }
    let name = path.rsplit('/').next().unwrap_or(path);
    out.packages.extend(version_strings(name, data));
    Ok(out)
}

fn find_aligned(data: &[u8], needle: &[u8]) -> Option<usize> {
    memmem::find_iter(data, needle).find(|at| at % 16 == 0)
}

/// The build information Go writes into every binary: the toolchain version and, for module builds,
/// the main module and every dependency (`dep`, with `=>` replacing the one before).
pub fn go_build_info(file: &object::File, info: &[u8]) -> Result<Vec<crate::Package>, String> {
    if info.len() < 32 || !info.starts_with(GO_MAGIC) {
        return Err("no build information header".into());
    }
    let ptr_size = info[14] as usize;
    let flags = info[15];
    let (version, modinfo) = if flags & 2 != 0 {
        // Go 1.18 and later: two length-prefixed strings after the 32-byte header.
        let mut rest = &info[32..];
        let v = read_varint_string(&mut rest)?;
        let m = read_varint_string(&mut rest)?;
        (v, m)
    } else {
        // Older: two pointers to string headers (pointer, length) elsewhere in the binary.
        if ptr_size != 4 && ptr_size != 8 {
            return Err(format!("pointer size {ptr_size}"));
        }
        let big = flags & 1 != 0;
        let read_ptr = |b: &[u8]| -> Option<u64> {
            Some(match (ptr_size, big) {
                (8, false) => u64::from_le_bytes(b.get(..8)?.try_into().ok()?),
                (8, true) => u64::from_be_bytes(b.get(..8)?.try_into().ok()?),
                (_, false) => u32::from_le_bytes(b.get(..4)?.try_into().ok()?) as u64,
                (_, true) => u32::from_be_bytes(b.get(..4)?.try_into().ok()?) as u64,
            })
        };
        let string_at = |addr: u64| -> Option<Vec<u8>> {
            let hdr = at_address(file, addr, 2 * ptr_size)?;
            let (p, n) = (read_ptr(hdr)?, read_ptr(&hdr[ptr_size..])?);
            if n > 1 << 20 {
                return None;
            }
            Some(at_address(file, p, n as usize)?.to_vec())
        };
        let v = read_ptr(&info[16..]).and_then(string_at).ok_or("unreadable version pointer")?;
        let m = read_ptr(&info[16 + ptr_size..]).and_then(string_at).unwrap_or_default();
        (v, m)
    };
    let version = String::from_utf8_lossy(&version).to_string();
    let mut modinfo = modinfo.as_slice();
    if modinfo.len() >= 33 && modinfo[modinfo.len() - 17] == b'\n' {
        modinfo = &modinfo[16..modinfo.len() - 16];
    }
    let mut pkgs = Vec::new();
    if let Some(v) = version.strip_prefix("go") {
        let v = v.split([' ', '-']).next().unwrap_or(v);
        pkgs.push(package("stdlib", &format!("v{v}"), Ecosystem::Go, "go-binary"));
    }
    for line in String::from_utf8_lossy(modinfo).lines() {
        let f: Vec<&str> = line.split('\t').collect();
        match f.as_slice() {
            ["mod", path, version, ..] | ["dep", path, version, ..] => pkgs.push(package(path, version, Ecosystem::Go, "go-binary")),
            ["=>", path, version, ..] => {
                if let Some(last) = pkgs.last_mut() {
                    if last.name != "stdlib" {
                        *last = package(path, version, Ecosystem::Go, "go-binary");
                    }
                }
            }
            _ => {}
        }
    }
    Ok(pkgs)
}

fn at_address<'a>(file: &object::File<'a>, addr: u64, len: usize) -> Option<&'a [u8]> {
    for s in file.sections() {
        let (start, size) = (s.address(), s.size());
        if addr >= start && addr.checked_add(len as u64)? <= start + size {
            let data = s.data().ok()?;
            let off = (addr - start) as usize;
            return data.get(off..off + len);
        }
    }
    None
}

fn read_varint_string(rest: &mut &[u8]) -> Result<Vec<u8>, String> {
    let mut n: u64 = 0;
    let mut shift = 0;
    loop {
        let (&b, tail) = rest.split_first().ok_or("truncated build information")?;
        *rest = tail;
        n |= ((b & 0x7f) as u64) << shift;
        if b & 0x80 == 0 {
            break;
        }
        shift += 7;
        if shift > 35 {
            return Err("bad length in build information".into());
        }
    }
    let n = n as usize;
    if rest.len() < n {
        return Err("truncated build information".into());
    }
    let (s, tail) = rest.split_at(n);
    *rest = tail;
    Ok(s.to_vec())
}

/// A version made of digits and dots, then letters and digits (1.1.1w, 3.0.11, 1.36.1).
fn version_at(data: &[u8]) -> Option<&str> {
    let end = data
        .iter()
        .take(32)
        .position(|c| !(c.is_ascii_alphanumeric() || *c == b'.'))
        .unwrap_or(data.len().min(32));
    let v = std::str::from_utf8(&data[..end]).ok()?;
    let dots = v.bytes().filter(|&c| c == b'.').count();
    (v.starts_with(|c: char| c.is_ascii_digit()) && dots >= 1 && !v.ends_with('.')).then_some(v)
}

/// Version strings that name a component built into this file.
fn version_strings(name: &str, data: &[u8]) -> Vec<crate::Package> {
    let mut found = Vec::new();
    // OPENSSL_VERSION_TEXT: "OpenSSL 3.0.11 19 Sep 2023", "OpenSSL 1.1.1w  11 Sep 2023".
    for at in memmem::find_iter(data, b"OpenSSL ") {
        let rest = &data[at + 8..];
        let Some(v) = version_at(rest) else { continue };
        let mut tail = &rest[v.len()..];
        if let Some(t) = tail.strip_prefix(b"-fips") {
            tail = t;
        }
        let tail = tail.strip_prefix(b" ").map(|t| t.strip_prefix(b" ").unwrap_or(t));
        if tail.is_some_and(looks_like_date) {
            found.push(package("openssl", v, Ecosystem::Binary, "binary"));
            break;
        }
    }
    // BusyBox's banner: "BusyBox v1.36.1 (2023-11-07 18:53:09 UTC)".
    if let Some(at) = memmem::find(data, b"BusyBox v") {
        if let Some(v) = version_at(&data[at + 9..]) {
            if data.get(at + 9 + v.len()) == Some(&b' ') {
                found.push(package("busybox", v, Ecosystem::Binary, "binary"));
            }
        }
    }
    // The Python interpreter: python3.N or libpython3.N*.so, holding "3.N.M" as a C string.
    let py = name.strip_prefix("libpython").or_else(|| name.strip_prefix("python"));
    if let Some(rest) = py {
        let minor: String = rest.chars().take_while(|c| c.is_ascii_digit() || *c == '.').collect();
        let minor = minor.trim_end_matches('.');
        if minor.matches('.').count() == 1 {
            let needle = format!("\0{minor}.");
            for at in memmem::find_iter(data, needle.as_bytes()) {
                let Some(v) = version_at(&data[at + 1..]) else { continue };
                if data.get(at + 1 + v.len()) == Some(&0) && v.matches('.').count() == 2 {
                    found.push(package("python", v, Ecosystem::Binary, "binary"));
                    break;
                }
            }
        }
    }
    // Node.js: its release URL carries the version.
    if name == "node" || name == "nodejs" {
        if let Some(at) = memmem::find(data, b"nodejs.org/download/release/v") {
            if let Some(v) = version_at(&data[at + 29..]) {
                found.push(package("node", v, Ecosystem::Binary, "binary"));
            }
        }
    }
    found
}

fn looks_like_date(t: &[u8]) -> bool {
    // "19 Sep 2023" or "1 Oct 2024"
    let s = match std::str::from_utf8(&t[..t.len().min(12)]) {
        Ok(s) => s,
        Err(e) => std::str::from_utf8(&t[..e.valid_up_to()]).unwrap_or(""),
    };
    let mut it = s.split(' ');
    let day = it.next().unwrap_or("");
    let month = it.next().unwrap_or("");
    let year = it.next().unwrap_or("");
    (1..=2).contains(&day.len())
        && day.bytes().all(|c| c.is_ascii_digit())
        && month.len() == 3
        && month.bytes().all(|c| c.is_ascii_alphabetic())
        && year.len() >= 4
        && year.bytes().take(4).all(|c| c.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openssl_busybox_python_strings() {
        let p = version_strings("app", b"xx\0OpenSSL 3.0.11 19 Sep 2023\0BusyBox v1.36.1 (2023-11-07)\0");
        let got: Vec<_> = p.iter().map(|p| format!("{}@{}", p.name, p.version)).collect();
        assert_eq!(got, ["openssl@3.0.11", "busybox@1.36.1"]);
        let p = version_strings("app", b"OpenSSL 1.1.1w  11 Sep 2023");
        assert_eq!(p[0].version, "1.1.1w");
        // Mentions are not versions.
        assert!(version_strings("app", b"OpenSSL 3.0 or later is required").is_empty());
        let p = version_strings("libpython3.11.so.1.0", b"\x003.11\x00junk\x003.11.7\x00");
        assert_eq!(p[0].version, "3.11.7");
    }

    #[test]
    fn go_modinfo_inline_strings() {
        let mut info = GO_MAGIC.to_vec();
        info.extend([8u8, 2]);
        info.resize(32, 0);
        let version = b"go1.21.3";
        let modinfo = b"0123456789abcdefpath\texample.com/app\nmod\texample.com/app\t(devel)\t\ndep\tgolang.org/x/net\tv0.7.0\th1:x\ndep\tgolang.org/x/text\tv0.3.0\th1:y\n=>\tgolang.org/x/text\tv0.3.8\th1:z\nbuild\tGOOS=linux\n\n0123456789abcdef";
        info.push(version.len() as u8);
        info.extend(version);
        info.extend([(modinfo.len() & 0x7f) as u8 | 0x80, (modinfo.len() >> 7) as u8]);
        info.extend(modinfo.iter());
        // go_build_info only needs the file for pre-1.18 pointers; any parsed ELF will do.
        let me = std::fs::read("/proc/self/exe").unwrap();
        let file = object::File::parse(&me[..]).unwrap();
        let got: Vec<_> = go_build_info(&file, &info)
            .unwrap()
            .iter()
            .map(|p| format!("{}@{}", p.name, p.version))
            .collect();
        assert_eq!(
            got,
            [
                "stdlib@v1.21.3",
                "example.com/app@(devel)",
                "golang.org/x/net@v0.7.0",
                "golang.org/x/text@v0.3.8"
            ]
        );
        assert!(go_build_info(&file, &info[..40]).is_err());
    }
}
