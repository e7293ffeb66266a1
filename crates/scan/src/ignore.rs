//! Ignore rules: advisories a team has decided to accept, each with a reason and an expiry date.
//!
//! ```toml
//! [[ignore]]
//! id = "PYSEC-2018-28"          # the advisory or any of its aliases
//! reason = "we never follow redirects to plain HTTP"
//! expires = 2027-01-31          # after this day the rule no longer applies
//! ```

use std::path::Path;

use chrono::NaiveDate;
use serde::Deserialize;

use crate::matcher::Finding;
use crate::{Error, Result};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    ignore: Vec<RawRule>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    id: String,
    reason: String,
    expires: toml::Value,
}

#[derive(Clone, Debug)]
pub struct Rule {
    pub id: String,
    pub reason: String,
    pub expires: NaiveDate,
}

pub fn load(path: &Path) -> Result<Vec<Rule>> {
    let text = std::fs::read_to_string(path).map_err(crate::io_err(path.display()))?;
    let f: File = toml::from_str(&text).map_err(|e| Error::Invalid(format!("{}: {}", path.display(), e.to_string().replace('\n', " "))))?;
    f.ignore
        .into_iter()
        .map(|r| {
            let s = match &r.expires {
                toml::Value::Datetime(d) => d.to_string(),
                toml::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            let expires = NaiveDate::parse_from_str(s.get(..10).unwrap_or(&s), "%Y-%m-%d").map_err(|_| {
                Error::Invalid(format!(
                    "{}: ignore rule for {}: expires {s:?} is not a date (YYYY-MM-DD)",
                    path.display(),
                    r.id
                ))
            })?;
            if r.reason.trim().is_empty() {
                return Err(Error::Invalid(format!(
                    "{}: ignore rule for {} has no reason",
                    path.display(),
                    r.id
                )));
            }
            Ok(Rule {
                id: r.id,
                reason: r.reason,
                expires,
            })
        })
        .collect()
}

/// Mark the findings the rules cover. Returns notices about rules that have expired.
pub fn apply(findings: &mut [Finding], rules: &[Rule], today: NaiveDate) -> Vec<String> {
    let mut notices = Vec::new();
    for r in rules {
        let covers = |f: &Finding| f.id == r.id || f.aliases.contains(&r.id);
        if r.expires < today {
            if findings.iter().any(covers) {
                notices.push(format!(
                    "the ignore rule for {} expired on {}; it no longer applies",
                    r.id, r.expires
                ));
            }
            continue;
        }
        for f in findings.iter_mut().filter(|f| covers(f)) {
            f.ignored = Some(format!("{} (until {})", r.reason, r.expires));
        }
    }
    notices
}
