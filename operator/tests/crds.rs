//! `crds/` and the Helm chart's copy must be exactly what `crdgen` prints, so users install the
//! schema the operator was built with.

use std::collections::BTreeSet;
use std::path::Path;

fn assert_matches_crdgen(dir: &Path, how: &str) {
    let documents = wpex_operator::crd_documents().expect("render CRDs");
    for (file, yaml) in &documents {
        let committed = std::fs::read_to_string(dir.join(file)).unwrap_or_default();
        assert!(
            committed == *yaml,
            "{}/{file} is stale; {how}",
            dir.display()
        );
    }
    let expected: BTreeSet<String> = documents.into_iter().map(|(f, _)| f).collect();
    let present: BTreeSet<String> = std::fs::read_dir(dir)
        .expect("the CRD directory exists")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect();
    assert_eq!(
        present,
        expected,
        "{} holds exactly one file per CRD",
        dir.display()
    );
}

#[test]
fn committed_crds_match_crdgen() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    assert_matches_crdgen(
        &root.join("crds"),
        "regenerate with: cargo run -p wpex-operator --bin crdgen -- --out-dir crds",
    );
}

#[test]
fn the_charts_crds_match_crdgen() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    assert_matches_crdgen(
        &root.join("charts/wpex/crds"),
        "regenerate with: cargo run -p wpex-operator --bin crdgen -- --out-dir charts/wpex/crds",
    );
}

/// Formats a recent API server knows without a warning.
const KNOWN_FORMATS: &[&str] = &["int32", "int64", "float", "double", "byte", "date-time"];

/// Every property, at every level, has a description and only known formats; returns the
/// paths that break the rule.
fn undocumented(path: &str, schema: &serde_json::Value, out: &mut Vec<String>) {
    if let Some(format) = schema.get("format").and_then(|f| f.as_str())
        && !KNOWN_FORMATS.contains(&format)
    {
        out.push(format!("{path}: format {format}"));
    }
    if let Some(props) = schema.get("properties").and_then(|p| p.as_object()) {
        for (name, prop) in props {
            let here = format!("{path}.{name}");
            let described = prop
                .get("description")
                .and_then(|d| d.as_str())
                .is_some_and(|d| !d.trim().is_empty() && !d.contains("Auto-generated"));
            if !described {
                out.push(format!("{here}: no description"));
            }
            undocumented(&here, prop, out);
        }
    }
    if let Some(items) = schema.get("items") {
        undocumented(&format!("{path}[]"), items, out);
    }
}

#[test]
fn every_field_is_described_and_no_format_makes_the_api_server_warn() {
    use kube::CustomResourceExt;
    for crd in [
        wpex_operator::crd::WireGuardRelay::crd(),
        wpex_operator::crd::WireGuardPeerKey::crd(),
    ] {
        let json = serde_json::to_value(&crd).expect("CRD to JSON");
        let root = &json["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
        let mut problems = Vec::new();
        let root_doc = root["description"].as_str().unwrap_or_default();
        if root_doc.is_empty() || root_doc.contains("Auto-generated") {
            problems.push("root: no description".to_owned());
        }
        undocumented("", root, &mut problems);
        assert!(
            problems.is_empty(),
            "{}: {problems:#?}",
            crd.metadata.name.unwrap_or_default()
        );
    }
}
