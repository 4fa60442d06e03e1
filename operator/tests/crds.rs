//! `crds/` must be exactly what `crdgen` prints, so the chart and users install the real schema.

use std::collections::BTreeSet;
use std::path::Path;

#[test]
fn committed_crds_match_crdgen() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../crds");
    let documents = wpex_operator::crd_documents().expect("render CRDs");
    for (file, yaml) in &documents {
        let committed = std::fs::read_to_string(dir.join(file)).unwrap_or_default();
        assert!(
            committed == *yaml,
            "crds/{file} is stale; regenerate with: cargo run -p wpex-operator --bin crdgen -- --out-dir crds"
        );
    }
    let expected: BTreeSet<String> = documents.into_iter().map(|(f, _)| f).collect();
    let present: BTreeSet<String> = std::fs::read_dir(&dir)
        .expect("crds/ exists")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect();
    assert_eq!(present, expected, "crds/ holds exactly one file per CRD");
}
