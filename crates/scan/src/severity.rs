//! How bad a finding is: the distribution's own rating when it gives one, else the highest CVSS
//! base score (v2, v3.x or v4, computed with the `cvss` crate), else the database's word, else
//! `unknown` (which the gate counts as high unless the policy says otherwise).

use std::str::FromStr;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::db::{Advisory, Affected};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Unknown,
    Low,
    Medium,
    High,
    Critical,
}

impl Severity {
    pub fn parse(word: &str) -> Option<Severity> {
        Some(match word.trim().to_ascii_lowercase().as_str() {
            "critical" => Severity::Critical,
            "high" | "important" => Severity::High,
            "medium" | "moderate" => Severity::Medium,
            "low" | "negligible" | "unimportant" | "none" => Severity::Low,
            "unknown" => Severity::Unknown,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Unknown => "unknown",
            Severity::Low => "low",
            Severity::Medium => "medium",
            Severity::High => "high",
            Severity::Critical => "critical",
        }
    }

    /// The CVSS qualitative rating of a base score.
    pub fn from_score(score: f64) -> Severity {
        match score {
            s if s >= 9.0 => Severity::Critical,
            s if s >= 7.0 => Severity::High,
            s if s >= 4.0 => Severity::Medium,
            _ => Severity::Low,
        }
    }
}

impl std::fmt::Display for Severity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A rating and where it came from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Rating {
    pub severity: Severity,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub score: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vector: Option<String>,
    /// `distro`, `cvss`, `database` or `none`.
    pub source: String,
}

/// The base score of a CVSS vector string, if it is one.
pub fn cvss_score(vector: &str) -> Option<f64> {
    let v = cvss::Cvss::from_str(vector.trim()).ok()?;
    Some(v.score())
}

fn word_in(v: Option<&Value>) -> Option<Severity> {
    let v = v?;
    ["severity", "urgency", "cvss_severity"]
        .iter()
        .find_map(|k| v.get(*k).and_then(Value::as_str).and_then(Severity::parse))
}

pub fn rate(adv: &Advisory, affected: &Affected, os_package: bool) -> Rating {
    // The distribution's own rating (Ubuntu and others put it in `severity` with their own type,
    // or in ecosystem_specific).
    if os_package {
        let distro = affected
            .severity
            .iter()
            .chain(&adv.severity)
            .filter(|s| !s.kind.starts_with("CVSS"))
            .find_map(|s| Severity::parse(&s.score))
            .or_else(|| word_in(affected.ecosystem_specific.as_ref()));
        if let Some(s) = distro {
            return Rating {
                severity: s,
                score: None,
                vector: None,
                source: "distro".into(),
            };
        }
    }
    let mut best: Option<(f64, String)> = None;
    for s in affected.severity.iter().chain(&adv.severity).filter(|s| s.kind.starts_with("CVSS")) {
        if let Some(score) = cvss_score(&s.score) {
            if best.as_ref().is_none_or(|(b, _)| score > *b) {
                best = Some((score, s.score.clone()));
            }
        }
    }
    if let Some((score, vector)) = best {
        return Rating {
            severity: Severity::from_score(score),
            score: Some(score),
            vector: Some(vector),
            source: "cvss".into(),
        };
    }
    if let Some(s) = word_in(adv.database_specific.as_ref())
        .or_else(|| word_in(affected.database_specific.as_ref()))
        .or_else(|| word_in(affected.ecosystem_specific.as_ref()))
    {
        return Rating {
            severity: s,
            score: None,
            vector: None,
            source: "database".into(),
        };
    }
    Rating {
        severity: Severity::Unknown,
        score: None,
        vector: None,
        source: "none".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cvss_vectors_score() {
        assert_eq!(cvss_score("CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H"), Some(9.8));
        assert_eq!(Severity::from_score(9.8), Severity::Critical);
        assert_eq!(cvss_score("CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:N/I:N/A:L"), Some(5.3));
        assert!(cvss_score("CVSS:4.0/AV:N/AC:L/AT:N/PR:N/UI:N/VC:H/VI:H/VA:H/SC:N/SI:N/SA:N").is_some_and(|s| s >= 9.0));
        assert_eq!(cvss_score("not a vector"), None);
    }

    #[test]
    fn a_distribution_rating_wins_for_os_packages() {
        let adv = crate::db::parse_advisory(
            br#"{"id": "UBUNTU-CVE-1", "severity": [{"type": "Ubuntu", "score": "medium"}, {"type": "CVSS_V3", "score": "CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H"}],
                 "affected": [{"package": {"ecosystem": "Ubuntu:22.04:LTS", "name": "openssl"}}]}"#,
        )
        .unwrap();
        let r = rate(&adv, &adv.affected[0], true);
        assert_eq!((r.severity, r.source.as_str()), (Severity::Medium, "distro"));
        let r = rate(&adv, &adv.affected[0], false);
        assert_eq!((r.severity, r.source.as_str()), (Severity::Critical, "cvss"));
        let bare = crate::db::parse_advisory(br#"{"id": "X", "database_specific": {"severity": "MODERATE"}, "affected": [{}]}"#).unwrap();
        assert_eq!(rate(&bare, &bare.affected[0], false).severity, Severity::Medium);
        let none = crate::db::parse_advisory(br#"{"id": "Y", "affected": [{}]}"#).unwrap();
        assert_eq!(rate(&none, &none.affected[0], false).severity, Severity::Unknown);
    }
}
