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
