//! Each ecosystem's own version order. `None`: a version this ecosystem cannot parse, which then
//! matches no range (never guessed).

use std::cmp::Ordering;
use std::str::FromStr;

use crate::Ecosystem;

pub fn compare(eco: Ecosystem, a: &str, b: &str) -> Option<Ordering> {
    match eco {
        Ecosystem::Debian | Ecosystem::Ubuntu => {
            let (a, b) = (debversion::Version::from_str(a).ok()?, debversion::Version::from_str(b).ok()?);
            Some(a.cmp(&b))
        }
        Ecosystem::Alpine => Some(apk_compare(a, b)),
        Ecosystem::Rpm => Some(rpm_version::rpm_evr_compare(a, b)),
        Ecosystem::PyPI => {
            let (a, b) = (pep440_rs::Version::from_str(a).ok()?, pep440_rs::Version::from_str(b).ok()?);
            Some(a.cmp(&b))
        }
        Ecosystem::Npm | Ecosystem::CratesIo => semver_compare(a, b),
        Ecosystem::Go => semver_compare(a.strip_prefix('v').unwrap_or(a), b.strip_prefix('v').unwrap_or(b)),
        Ecosystem::Maven => Some(maven_compare(a, b)),
        // Upstream versions found in binaries: rpm's order of digit and letter runs fits them.
        Ecosystem::Binary => Some(rpm_version::rpm_evr_compare(a, b)),
    }
}

/// Versions equal in the ecosystem's order (PyPI's `1.0` and `1.0.0` are one version).
pub fn equal(eco: Ecosystem, a: &str, b: &str) -> bool {
    a == b || compare(eco, a, b) == Some(Ordering::Equal)
}

/// SemVer precedence (build metadata, as in Go's `+incompatible`, does not count).
pub fn semver_compare(a: &str, b: &str) -> Option<Ordering> {
    let parse = |s: &str| semver::Version::parse(s.trim().trim_start_matches(['v', '='])).ok();
    Some(parse(a)?.cmp_precedence(&parse(b)?))
}

// ---- Alpine -------------------------------------------------------------------------------------
// Written by hand: no maintained crate implements apk-tools' order. This follows the rules of
// apk-tools' version comparison: digits, a letter, `_suffix` (alpha < beta < pre < rc < (none) <
// cvs < svn < git < hg < p) with an optional number, `~hash`, and `-rN`. Where two versions differ in the
// kind of the next token, a pre-release suffix is older, otherwise the version whose token kind
// comes later in that list is older (so 1.0 < 1.0-r1 < 1.0.1 and 1.0a < 1.0.1).

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum TokKind {
    Digit,
    Letter,
    Suffix,
    SuffixNo,
    /// `~` and a commit hash, compared as text.
    Hash,
    Revision,
    End,
}

#[derive(Debug)]
struct Tok<'a> {
    kind: TokKind,
    text: &'a str,
    value: i64,
}

const PRE: [&str; 4] = ["alpha", "beta", "pre", "rc"];
const POST: [&str; 5] = ["cvs", "svn", "git", "hg", "p"];

fn apk_tokens(v: &str) -> Vec<Tok<'_>> {
    let b = v.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    let digits = |i: usize| i + b[i..].iter().take_while(|c| c.is_ascii_digit()).count();
    let num = |s: &str| s.parse::<i64>().unwrap_or(i64::MAX);
    while i < b.len() {
        let c = b[i];
        if c.is_ascii_digit() {
            let j = digits(i);
            let kind = if matches!(out.last(), Some(Tok { kind: TokKind::Suffix, .. })) {
                TokKind::SuffixNo
            } else {
                TokKind::Digit
            };
            out.push(Tok {
                kind,
                text: &v[i..j],
                value: num(&v[i..j]),
            });
            i = j;
        } else if c == b'.' {
            i += 1;
        } else if c.is_ascii_lowercase()
            && matches!(out.last(), Some(Tok { kind: TokKind::Digit, .. }))
            && b.get(i + 1).is_none_or(|n| !n.is_ascii_lowercase())
        {
            out.push(Tok {
                kind: TokKind::Letter,
                text: &v[i..i + 1],
                value: c as i64,
            });
            i += 1;
        } else if c == b'_' {
            let j = i + 1 + b[i + 1..].iter().take_while(|c| c.is_ascii_lowercase()).count();
            let s = &v[i + 1..j];
            let value = if let Some(k) = PRE.iter().position(|p| *p == s) {
                k as i64 - PRE.len() as i64
            } else if let Some(k) = POST.iter().position(|p| *p == s) {
                k as i64 + 1
            } else {
                // Unknown suffix: apk-tools calls the version invalid; order it after the known ones.
                100
            };
            out.push(Tok {
                kind: TokKind::Suffix,
                text: s,
                value,
            });
            i = j;
        } else if c == b'-' && b.get(i + 1) == Some(&b'r') {
            let j = digits(i + 2);
            out.push(Tok {
                kind: TokKind::Revision,
                text: &v[i + 2..j],
                value: num(&v[i + 2..j]),
            });
            i = j.max(i + 2);
        } else if c == b'~' {
            let j = i + 1 + b[i + 1..].iter().take_while(|c| c.is_ascii_alphanumeric()).count();
            out.push(Tok {
                kind: TokKind::Hash,
                text: &v[i + 1..j],
                value: 0,
            });
            i = j;
        } else {
            i += 1;
        }
    }
    out
}

pub fn apk_compare(a: &str, b: &str) -> Ordering {
    let (ta, tb) = (apk_tokens(a), apk_tokens(b));
    let mut i = 0;
    while i < ta.len() && i < tb.len() && ta[i].kind == tb[i].kind {
        let (x, y) = (&ta[i], &tb[i]);
        let ord = match x.kind {
            // After the first number, a leading zero makes the numbers compare as decimal fractions.
            TokKind::Digit if i > 0 && (x.text.starts_with('0') || y.text.starts_with('0')) => x.text.cmp(y.text),
            TokKind::Hash => x.text.cmp(y.text),
            _ => x.value.cmp(&y.value),
        };
        if ord != Ordering::Equal {
            return ord;
        }
        i += 1;
    }
    let ka = ta.get(i).map_or(TokKind::End, |t| t.kind);
    let kb = tb.get(i).map_or(TokKind::End, |t| t.kind);
    if ka == kb {
        return Ordering::Equal;
    }
    if ka == TokKind::Suffix && ta[i].value < 0 {
        return Ordering::Less;
    }
    if kb == TokKind::Suffix && tb[i].value < 0 {
        return Ordering::Greater;
    }
    kb.cmp(&ka)
}

// ---- Maven --------------------------------------------------------------------------------------
// Maven's ComparableVersion, by hand (no maintained crate): items split at `.`, `-` and changes
// between digits and letters; numbers compare as numbers; qualifiers alpha < beta < milestone <
// rc = cr < snapshot < release (`""`, ga, final) < sp < other qualifiers (alphabetical); missing
// trailing items count as 0 or release.

#[derive(Debug, Clone, PartialEq, Eq)]
enum MavenItem {
    Num(u128),
    Qual(String),
}

fn maven_items(v: &str) -> Vec<MavenItem> {
    let mut items = Vec::new();
    let lower = v.to_ascii_lowercase();
    let mut cur = String::new();
    let push = |cur: &mut String, items: &mut Vec<MavenItem>| {
        if cur.is_empty() {
            return;
        }
        let item = match cur.parse::<u128>() {
            Ok(n) => MavenItem::Num(n),
            Err(_) => MavenItem::Qual(match cur.as_str() {
                "a" => "alpha".into(),
                "b" => "beta".into(),
                "m" => "milestone".into(),
                "cr" => "rc".into(),
                "ga" | "final" | "release" => String::new(),
                s => s.to_string(),
            }),
        };
        items.push(item);
        cur.clear();
    };
    for c in lower.chars() {
        if c == '.' || c == '-' || c == '_' {
            push(&mut cur, &mut items);
        } else {
            if let Some(last) = cur.chars().last() {
                if last.is_ascii_digit() != c.is_ascii_digit() {
                    push(&mut cur, &mut items);
                }
            }
            cur.push(c);
        }
    }
    push(&mut cur, &mut items);
    while matches!(items.last(), Some(MavenItem::Num(0))) || matches!(items.last(), Some(MavenItem::Qual(q)) if q.is_empty()) {
        items.pop();
    }
    items
}

fn qual_rank(q: &str) -> (u8, &str) {
    match q {
        "alpha" => (0, ""),
        "beta" => (1, ""),
        "milestone" => (2, ""),
        "rc" => (3, ""),
        "snapshot" => (4, ""),
        "" => (5, ""),
        "sp" => (6, ""),
        other => (7, other),
    }
}

pub fn maven_compare(a: &str, b: &str) -> Ordering {
    let (ia, ib) = (maven_items(a), maven_items(b));
    for i in 0..ia.len().max(ib.len()) {
        let ord = match (ia.get(i), ib.get(i)) {
            (Some(MavenItem::Num(x)), Some(MavenItem::Num(y))) => x.cmp(y),
            (Some(MavenItem::Num(_)), Some(MavenItem::Qual(_))) => Ordering::Greater,
            (Some(MavenItem::Qual(_)), Some(MavenItem::Num(_))) => Ordering::Less,
            (Some(MavenItem::Qual(x)), Some(MavenItem::Qual(y))) => qual_rank(x).cmp(&qual_rank(y)),
            (Some(MavenItem::Num(x)), None) => x.cmp(&0),
            (None, Some(MavenItem::Num(y))) => 0.cmp(y),
            (Some(MavenItem::Qual(x)), None) => qual_rank(x).cmp(&qual_rank("")),
            (None, Some(MavenItem::Qual(y))) => qual_rank("").cmp(&qual_rank(y)),
            (None, None) => Ordering::Equal,
        };
        if ord != Ordering::Equal {
            return ord;
        }
    }
    Ordering::Equal
}

#[cfg(test)]
mod tests {
    use super::*;
    use Ordering::*;

    fn check(eco: Ecosystem, cases: &[(&str, Ordering, &str)]) {
        for (a, o, b) in cases {
            assert_eq!(compare(eco, a, b), Some(*o), "{eco:?}: {a} vs {b}");
            assert_eq!(compare(eco, b, a), Some(o.reverse()), "{eco:?}: {b} vs {a}");
        }
    }

    #[test]
    fn alpine() {
        check(
            Ecosystem::Alpine,
            &[
                ("1.0", Equal, "1.0"),
                ("1.0", Less, "1.0-r1"),
                ("1.0-r1", Less, "1.0-r2"),
                ("1.0-r9", Less, "1.0-r10"),
                ("1.0_alpha", Less, "1.0"),
                ("1.0_alpha", Less, "1.0_beta"),
                ("1.0_beta2", Less, "1.0_rc1"),
                ("1.0_rc1", Less, "1.0"),
                ("1.0", Less, "1.0_p1"),
                ("1.0_p1", Less, "1.0_p2"),
                ("1.0", Less, "1.0a"),
                ("1.0a", Less, "1.0b"),
                ("1.0a", Less, "1.0.1"),
                ("1.0", Less, "1.0.1"),
                ("1.9", Less, "1.10"),
                ("1.01", Less, "1.1"),
                ("3.1.4-r5", Less, "3.1.4-r6"),
                ("3.0.11-r0", Less, "3.1.0-r0"),
                ("2.36.1_git20230101-r0", Greater, "2.36.1-r0"),
                ("1.0_rc1-r1", Less, "1.0-r0"),
                ("1.0~abc1", Less, "1.0~abd0"),
                ("1.0~abc1-r1", Greater, "1.0~abc1-r0"),
                ("1.0~abc1", Greater, "1.0-r1"),
            ],
        );
    }

    #[test]
    fn rpm() {
        check(
            Ecosystem::Rpm,
            &[
                ("1.0-1", Equal, "1.0-1"),
                ("1.0-1", Less, "1.0-2"),
                ("1.0~rc1-1", Less, "1.0-1"),
                ("1.0^git1-1", Greater, "1.0-1"),
                ("1:1.0-1", Greater, "2.0-1"),
                ("1.010-1", Equal, "1.10-1"),
                ("1.0a-1", Less, "1.0.1-1"),
                ("2.el9", Greater, "1.el9"),
            ],
        );
    }

    #[test]
    fn debian_pypi_semver_go_maven() {
        check(
            Ecosystem::Debian,
            &[
                ("3.0.11-1~deb12u2", Less, "3.0.11-1~deb12u3"),
                ("1:1.0", Greater, "2.0"),
                ("1.0~rc1", Less, "1.0"),
            ],
        );
        check(
            Ecosystem::PyPI,
            &[
                ("2.19.1", Less, "2.20.0"),
                ("2.20.0rc1", Less, "2.20.0"),
                ("1.0", Equal, "1.0.0"),
                ("1.0.post1", Greater, "1.0"),
            ],
        );
        check(Ecosystem::CratesIo, &[("0.9.0", Less, "0.10.0"), ("1.0.0-alpha", Less, "1.0.0")]);
        check(
            Ecosystem::Go,
            &[
                ("v1.2.3", Less, "1.2.4"),
                ("v2.0.0+incompatible", Equal, "2.0.0"),
                ("v0.7.0", Less, "0.17.0"),
            ],
        );
        check(
            Ecosystem::Maven,
            &[
                ("1.0", Equal, "1.0.0"),
                ("1.0-alpha1", Less, "1.0"),
                ("1.0-rc1", Less, "1.0"),
                ("1.0", Less, "1.0-sp1"),
                ("2.9.10.7", Less, "2.9.10.8"),
                ("1.0-SNAPSHOT", Less, "1.0"),
            ],
        );
        assert_eq!(compare(Ecosystem::PyPI, "not a version", "1.0"), None);
    }
}
