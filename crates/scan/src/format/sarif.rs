//! SARIF 2.1.0, for code-scanning interfaces: one rule per advisory, one result per finding at the
//! file that proves the package; ignored findings carry an external suppression.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use crate::matcher::Finding;
use crate::severity::Severity;
use crate::Bom;

pub fn render(bom: &Bom, findings: &[Finding], unknown_as: Severity) -> Value {
    let mut rules: BTreeMap<&str, Value> = BTreeMap::new();
    let mut results = Vec::new();
    for f in findings {
        let sev = if f.severity() == Severity::Unknown {
            unknown_as
        } else {
            f.severity()
        };
        let score = f.rating.score.unwrap_or(match sev {
            Severity::Critical => 9.5,
            Severity::High => 8.0,
            Severity::Medium => 5.5,
            _ => 2.0,
        });
        rules.entry(f.id.as_str()).or_insert_with(|| {
            json!({
                "id": f.id,
                "name": f.id.replace(['-', '.'], ""),
                "shortDescription": {"text": f.summary.clone().unwrap_or_else(|| f.id.clone())},
                "helpUri": super::advisory_url(&f.id),
                "help": {"text": format!("{} ({}). Aliases: {}", f.id, f.rating.severity, if f.aliases.is_empty() { "none".into() } else { f.aliases.join(", ") })},
                "properties": {"security-severity": format!("{score:.1}"), "tags": ["security", "vulnerability"]},
            })
        });
        let level = match sev {
            Severity::Critical | Severity::High => "error",
            Severity::Medium => "warning",
            _ => "note",
        };
        let fix = if f.fixed.is_empty() {
            "no fixed version is known".to_string()
        } else {
            format!("fixed in {}", f.fixed.join(", "))
        };
        let mut r = json!({
            "ruleId": f.id,
            "level": level,
            "message": {"text": format!("{} {} ({}) in layer {} is affected by {}; {fix}", f.name, f.installed, f.ecosystem, f.layer, f.id)},
            "locations": [{"physicalLocation": {"artifactLocation": {"uri": f.path.trim_start_matches('/').split(':').next().unwrap_or("")}}}],
            "partialFingerprints": {"bulkhead/v1": format!("{}:{}:{}", f.id, f.name, f.installed)},
        });
        if let Some(reason) = &f.ignored {
            r["suppressions"] = json!([{"kind": "external", "justification": reason}]);
        }
        results.push(r);
    }
    json!({
        "version": "2.1.0",
        "$schema": "https://json.schemastore.org/sarif-2.1.0.json",
        "runs": [{
            "tool": {"driver": {"name": "bulkhead", "version": env!("CARGO_PKG_VERSION"), "informationUri": "https://github.com/bulkhead", "rules": rules.into_values().collect::<Vec<_>>()}},
            "automationDetails": {"id": format!("bulkhead-scan/{}", bom.manifest)},
            "results": results,
        }],
    })
}
