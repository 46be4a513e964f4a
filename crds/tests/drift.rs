//! The checked-in CRD YAML (crds/yaml/ and charts/helpr/crds/) equals what the types generate.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use helpr_crds::manifests;

#[test]
fn checked_in_crd_yaml_matches_the_types() {
    let files = manifests::files().unwrap();
    let drifts = manifests::drift(&manifests::workspace_root(), &files).unwrap();
    assert!(
        drifts.is_empty(),
        "the checked-in CRDs differ from the Rust types:\n  {}\nrun `cargo run -p helpr-crds --bin crdgen` and commit the result",
        drifts
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n  ")
    );
}

#[test]
fn generated_yaml_is_deterministic_and_round_trips() {
    let first = manifests::files().unwrap();
    assert_eq!(first, manifests::files().unwrap());
    assert_eq!(first.len(), 4);
    for (file, crd) in first.iter().zip(helpr_crds::all_crds()) {
        assert!(file.contents.starts_with(manifests::HEADER));
        let parsed: k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition =
            serde_norway::from_str(&file.contents).unwrap();
        assert_eq!(parsed, crd, "{}", file.file_name);
    }
    let stream = manifests::multi_document().unwrap();
    assert_eq!(
        stream.matches("\n---\n").count() + usize::from(stream.starts_with("---\n")),
        4
    );
}
