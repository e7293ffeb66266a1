//! SPDX 2.3 JSON: the image as a CONTAINER package that CONTAINS one package per finding of a
//! cataloger, each with its purl and, in `sourceInfo`, the layer and file that prove it.

use serde_json::{json, Value};

use crate::Bom;

pub fn render(bom: &Bom) -> Value {
    let mut packages = vec![json!({
        "name": bom.image,
        "SPDXID": "SPDXRef-Image",
        "versionInfo": bom.manifest,
        "downloadLocation": "NOASSERTION",
        "filesAnalyzed": false,
        "primaryPackagePurpose": "CONTAINER",
        "comment": format!("config {}, platform {}", bom.config, bom.platform),
    })];
    let mut relationships =
        vec![json!({"spdxElementId": "SPDXRef-DOCUMENT", "relationshipType": "DESCRIBES", "relatedSpdxElement": "SPDXRef-Image"})];
    if let Some(d) = &bom.distro {
        packages.push(json!({
            "name": d.id, "SPDXID": "SPDXRef-OperatingSystem", "versionInfo": d.version_id,
            "downloadLocation": "NOASSERTION", "filesAnalyzed": false, "primaryPackagePurpose": "OPERATING-SYSTEM",
        }));
        relationships.push(
            json!({"spdxElementId": "SPDXRef-Image", "relationshipType": "CONTAINS", "relatedSpdxElement": "SPDXRef-OperatingSystem"}),
        );
    }
    for (i, p) in bom.packages.iter().enumerate() {
        let id = format!("SPDXRef-Package-{i}");
        let mut pkg = json!({
            "name": p.name,
            "SPDXID": id,
            "versionInfo": p.version,
            "downloadLocation": "NOASSERTION",
            "filesAnalyzed": false,
            "licenseConcluded": "NOASSERTION",
            "licenseDeclared": "NOASSERTION",
            "copyrightText": "NOASSERTION",
            "primaryPackagePurpose": "LIBRARY",
            "sourceInfo": format!("found by {} in layer {} ({}) at {}", p.found_by, p.layer, p.layer_digest, p.path),
            "externalRefs": [{"referenceCategory": "PACKAGE-MANAGER", "referenceType": "purl", "referenceLocator": p.purl}],
        });
        if let Some(l) = &p.license {
            pkg["comment"] = json!(format!("license as the package states it: {l}"));
        }
        packages.push(pkg);
        relationships.push(json!({"spdxElementId": "SPDXRef-Image", "relationshipType": "CONTAINS", "relatedSpdxElement": id}));
    }
    let namespace_id = bom.config.strip_prefix("sha256:").unwrap_or(&bom.config);
    json!({
        "spdxVersion": "SPDX-2.3",
        "dataLicense": "CC0-1.0",
        "SPDXID": "SPDXRef-DOCUMENT",
        "name": bom.image,
        "documentNamespace": format!("https://bulkhead.invalid/spdx/{namespace_id}/{}", super::uuid_v4()),
        "creationInfo": {"created": super::now(), "creators": [format!("Tool: bulkhead-{}", env!("CARGO_PKG_VERSION"))]},
        "packages": packages,
        "relationships": relationships,
    })
}
