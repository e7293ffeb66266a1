//! CycloneDX 1.6 JSON: the image as the described component, one library component per package
//! (purl, and properties naming the layer, the file and the cataloger), and, for a scan, a
//! vulnerabilities section that points at the affected components.

use serde_json::{json, Value};

use crate::matcher::Finding;
use crate::Bom;

pub fn render(bom: &Bom, findings: Option<&[Finding]>) -> Value {
    let mut components: Vec<Value> = Vec::new();
    if let Some(d) = &bom.distro {
        components.push(json!({"type": "operating-system", "bom-ref": "os", "name": d.id, "version": d.version_id}));
    }
    for (i, p) in bom.packages.iter().enumerate() {
        let mut c = json!({
            "type": "library",
            "bom-ref": format!("pkg-{i}"),
            "name": p.name,
            "version": p.version,
            "purl": p.purl,
            "properties": [
                {"name": "bulkhead:package:found-by", "value": p.found_by},
                {"name": "bulkhead:location:path", "value": p.path},
                {"name": "bulkhead:layer:index", "value": p.layer.to_string()},
                {"name": "bulkhead:layer:diff-id", "value": p.layer_digest},
            ],
        });
        if let Some(l) = &p.license {
            c["licenses"] = json!([{"license": {"name": l}}]);
        }
        if let (Some(s), Some(v)) = (&p.source_name, &p.source_version) {
            let props = c["properties"].as_array_mut().unwrap();
            props.push(json!({"name": "bulkhead:package:source-name", "value": s}));
            props.push(json!({"name": "bulkhead:package:source-version", "value": v}));
        }
        components.push(c);
    }
    let refs: Vec<Value> = components.iter().map(|c| c["bom-ref"].clone()).collect();
    let mut doc = json!({
        "$schema": "http://cyclonedx.org/schema/bom-1.6.schema.json",
        "bomFormat": "CycloneDX",
        "specVersion": "1.6",
        "serialNumber": format!("urn:uuid:{}", super::uuid_v4()),
        "version": 1,
        "metadata": {
            "timestamp": super::now(),
            "tools": {"components": [{"type": "application", "name": "bulkhead", "version": env!("CARGO_PKG_VERSION")}]},
            "component": {
                "type": "container",
                "bom-ref": "image",
                "name": bom.image,
                "version": bom.manifest,
                "properties": [
                    {"name": "bulkhead:image:config", "value": bom.config},
                    {"name": "bulkhead:image:platform", "value": bom.platform},
                ],
            },
        },
        "components": components,
        "dependencies": [{"ref": "image", "dependsOn": refs}],
    });
    if let Some(findings) = findings {
        let vulns: Vec<Value> = findings
            .iter()
            .enumerate()
            .map(|(i, f)| {
                let mut rating = json!({"severity": f.rating.severity.as_str(), "source": {"name": "OSV", "url": super::advisory_url(&f.id)}});
                if let Some(s) = f.rating.score {
                    rating["score"] = json!(s);
                }
                if let Some(v) = &f.rating.vector {
                    rating["vector"] = json!(v);
                    rating["method"] = json!(if v.starts_with("CVSS:4") {
                        "CVSSv4"
                    } else if v.starts_with("CVSS:3.1") {
                        "CVSSv31"
                    } else if v.starts_with("CVSS:3") {
                        "CVSSv3"
                    } else {
                        "CVSSv2"
                    });
                }
                let mut v = json!({
                    "bom-ref": format!("vuln-{i}"),
                    "id": f.id,
                    "source": {"name": "OSV", "url": super::advisory_url(&f.id)},
                    "references": f.aliases.iter().map(|a| json!({"id": a, "source": {"name": "OSV", "url": super::advisory_url(a)}})).collect::<Vec<_>>(),
                    "ratings": [rating],
                    "affects": [{"ref": format!("pkg-{}", f.package), "versions": [{"version": f.installed, "status": "affected"}]}],
                });
                if let Some(s) = &f.summary {
                    v["description"] = json!(s);
                }
                if !f.fixed.is_empty() {
                    v["recommendation"] = json!(format!("Upgrade {} to {}", f.name, f.fixed.join(" or ")));
                }
                if let Some(reason) = &f.ignored {
                    v["analysis"] = json!({"state": "exploitable", "response": ["will_not_fix"], "detail": reason});
                }
                v
            })
            .collect();
        doc["vulnerabilities"] = json!(vulns);
    }
    doc
}
