//! Every sample CR in examples/*.yaml parses into its type, passes the pure validators, the
//! schema's OpenAPI validation and its CEL rules; together they cover each variant the API has.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeSet;

use helpr_crds::inbox::Visibility;
use helpr_crds::inbox_grant::SubjectKind;
use helpr_crds::tenant::{DeletionPolicy, VaultAuth};
use helpr_crds::{Inbox, InboxGrant, RetentionPolicy, Tenant};
use serde_json::Value;

#[derive(Default)]
struct Examples {
    tenants: Vec<Tenant>,
    inboxes: Vec<Inbox>,
    grants: Vec<InboxGrant>,
    policies: Vec<RetentionPolicy>,
}

fn parse<T: serde::de::DeserializeOwned>(file: &str, doc: &Value) -> T {
    serde_json::from_value(doc.clone())
        .unwrap_or_else(|e| panic!("{file}: {}: {e}", doc["metadata"]["name"]))
}

fn load() -> Examples {
    let docs = support::example_documents();
    assert!(
        !docs.is_empty(),
        "no examples in {}",
        support::examples_dir().display()
    );
    let mut examples = Examples::default();
    for (file, doc) in docs {
        let name = &doc["metadata"]["name"];
        assert_eq!(
            doc["apiVersion"], "mail.helpr.dev/v1alpha1",
            "{file}: {name}"
        );
        let kind = doc["kind"]
            .as_str()
            .unwrap_or_else(|| panic!("{file}: {name} has no kind"));
        assert!(
            doc["metadata"]["namespace"].is_string(),
            "{file}: {name} names no namespace"
        );
        let openapi = support::openapi_errors(&support::schema_of(kind), &doc);
        assert!(
            openapi.is_empty(),
            "{file}: {kind} {name} fails the schema: {openapi:#?}"
        );
        let cel = support::cel_errors(kind, &doc, None);
        assert!(
            cel.is_empty(),
            "{file}: {kind} {name} fails CEL rules: {cel:#?}"
        );
        // An unchanged object must also pass the update (transition) rules.
        let cel = support::cel_errors(kind, &doc, Some(&doc));
        assert!(
            cel.is_empty(),
            "{file}: {kind} {name} fails CEL rules on update: {cel:#?}"
        );
        match kind {
            "Tenant" => {
                let t: Tenant = parse(&file, &doc);
                t.spec
                    .validate()
                    .unwrap_or_else(|e| panic!("{file}: {name}: {e}"));
                examples.tenants.push(t);
            }
            "Inbox" => {
                let i: Inbox = parse(&file, &doc);
                i.spec
                    .validate()
                    .unwrap_or_else(|e| panic!("{file}: {name}: {e}"));
                i.spec
                    .validate_update(&i.spec)
                    .unwrap_or_else(|e| panic!("{file}: {name}: {e}"));
                examples.inboxes.push(i);
            }
            "InboxGrant" => {
                let g: InboxGrant = parse(&file, &doc);
                g.spec
                    .validate()
                    .unwrap_or_else(|e| panic!("{file}: {name}: {e}"));
                examples.grants.push(g);
            }
            "RetentionPolicy" => {
                let p: RetentionPolicy = parse(&file, &doc);
                p.spec
                    .validate()
                    .unwrap_or_else(|e| panic!("{file}: {name}: {e}"));
                examples.policies.push(p);
            }
            other => panic!("{file}: unknown kind {other}"),
        }
    }
    examples
}

#[test]
fn every_example_parses_and_passes_schema_cel_and_validators() {
    let e = load();
    assert!(
        !e.tenants.is_empty()
            && !e.inboxes.is_empty()
            && !e.grants.is_empty()
            && !e.policies.is_empty()
    );
}

#[test]
fn examples_cover_each_variant_of_the_api() {
    let e = load();
    assert!(
        e.tenants
            .iter()
            .any(|t| t.spec.deletion_policy == DeletionPolicy::Retain
                && matches!(t.spec.kms.auth, VaultAuth::Kubernetes(_)))
    );
    assert!(
        e.tenants
            .iter()
            .any(|t| t.spec.deletion_policy == DeletionPolicy::Shred
                && matches!(t.spec.kms.auth, VaultAuth::TokenSecretRef(_)))
    );
    for visibility in [Visibility::Org, Visibility::Team, Visibility::Restricted] {
        assert!(
            e.inboxes.iter().any(|i| i.spec.visibility == visibility),
            "{visibility:?}"
        );
    }
    for kind in [SubjectKind::Agent, SubjectKind::Team] {
        for expires in [false, true] {
            assert!(
                e.grants
                    .iter()
                    .any(|g| g.spec.subject.kind == kind
                        && g.spec.expiration_time.is_some() == expires),
                "{kind:?} grant with expiration {expires}"
            );
        }
    }
    assert!(e.policies.iter().any(|p| p.spec.legal_hold));
}

#[test]
fn example_references_resolve_within_their_namespace() {
    let e = load();
    let key = |ns: &Option<String>, name: &str| (ns.clone().unwrap_or_default(), name.to_owned());
    let tenants: BTreeSet<_> = e
        .tenants
        .iter()
        .map(|t| key(&t.metadata.namespace, t.tenant_id()))
        .collect();
    let inboxes: BTreeSet<_> = e
        .inboxes
        .iter()
        .map(|i| key(&i.metadata.namespace, i.metadata.name.as_deref().unwrap()))
        .collect();
    for i in &e.inboxes {
        assert!(
            tenants.contains(&key(&i.metadata.namespace, i.tenant_name())),
            "inbox {:?}",
            i.metadata.name
        );
    }
    for g in &e.grants {
        assert!(
            inboxes.contains(&key(&g.metadata.namespace, g.inbox_name())),
            "grant {:?}",
            g.metadata.name
        );
    }
    let mut governed = BTreeSet::new();
    for p in &e.policies {
        let tenant = key(&p.metadata.namespace, p.tenant_name());
        assert!(tenants.contains(&tenant), "policy {:?}", p.metadata.name);
        assert!(
            governed.insert(tenant),
            "two retention policies for one tenant"
        );
    }
}

#[test]
fn example_defaults_match_the_documented_defaults() {
    let e = load();
    let globex = e
        .policies
        .iter()
        .find(|p| p.tenant_name() == "globex")
        .unwrap();
    // Omitted in the example: the serde defaults apply, as the schema defaults do server-side.
    assert_eq!(globex.spec.purge_schedule, "0 3 * * *");
    assert_eq!(globex.spec.time_zone_or_default(), "UTC");
    let globex_tenant = e
        .tenants
        .iter()
        .find(|t| t.tenant_id() == "globex")
        .unwrap();
    assert_eq!(globex_tenant.spec.sync.replicas, 1);
}
