//! The CRDs' CEL rules, evaluated the way the apiserver does (kube-cel walks the generated
//! schema), accept valid objects and reject the combinations the API forbids.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use helpr_crds::inbox_grant::GrantRole;
use helpr_crds::testing::time;
use helpr_crds::{Inbox, InboxGrant, RetentionPolicy, Tenant};
use serde_json::{Value, json};

fn to_json<T: serde::Serialize>(object: &T) -> Value {
    serde_json::to_value(object).unwrap()
}

fn assert_rejected(kind: &str, object: &Value, old: Option<&Value>, message: &str) {
    let errors = support::cel_errors(kind, object, old);
    assert!(
        errors.iter().any(|e| e.contains(message)),
        "{kind}: expected a rejection containing {message:?}, got {errors:#?}"
    );
}

fn assert_accepted(kind: &str, object: &Value, old: Option<&Value>) {
    let errors = support::cel_errors(kind, object, old);
    assert!(
        errors.is_empty(),
        "{kind}: expected no CEL errors, got {errors:#?}"
    );
}

#[test]
fn fixtures_pass_every_rule_on_create_and_update() {
    let objects = [
        ("Tenant", to_json(&Tenant::test("acme"))),
        (
            "Tenant",
            to_json(&Tenant::test("acme").with_token_auth("vault-token")),
        ),
        (
            "Inbox",
            to_json(&Inbox::test("support", "acme").with_team_visibility("billing")),
        ),
        (
            "InboxGrant",
            to_json(
                &InboxGrant::test("g", "support", "alice@acme.example").with_expiration(time(1)),
            ),
        ),
        (
            "RetentionPolicy",
            to_json(&RetentionPolicy::test("acme", "acme").with_legal_hold(true)),
        ),
    ];
    for (kind, object) in &objects {
        assert_accepted(kind, object, None);
        assert_accepted(kind, object, Some(object));
    }
}

#[test]
fn tenant_auth_needs_exactly_one_method() {
    let mut both = to_json(&Tenant::test("acme"));
    both["spec"]["kms"]["auth"]["tokenSecretRef"] = json!({"name": "t", "key": "token"});
    assert_rejected(
        "Tenant",
        &both,
        None,
        "exactly one of auth.kubernetes or auth.tokenSecretRef",
    );

    let mut none = to_json(&Tenant::test("acme"));
    none["spec"]["kms"]["auth"] = json!({});
    assert_rejected(
        "Tenant",
        &none,
        None,
        "exactly one of auth.kubernetes or auth.tokenSecretRef",
    );
}

#[test]
fn tenant_ca_bundle_requires_https() {
    let tenant = Tenant::test("acme")
        .with_kms_server("http://vault:8200")
        .with_ca_bundle("vault-ca");
    assert_rejected(
        "Tenant",
        &to_json(&tenant),
        None,
        "caBundleSecretRef requires an https:// server",
    );
    let tenant = Tenant::test("acme").with_ca_bundle("vault-ca");
    assert_accepted("Tenant", &to_json(&tenant), None);
}

#[test]
fn tenant_name_must_be_a_dns_label() {
    for bad in [&"a".repeat(64), "acme.corp"] {
        let tenant = Tenant::test(bad);
        assert_rejected("Tenant", &to_json(&tenant), None, "must be a DNS label");
    }
}

#[test]
fn inbox_team_name_required_exactly_for_team_visibility() {
    let mut team_without_name =
        to_json(&Inbox::test("support", "acme").with_team_visibility("billing"));
    team_without_name["spec"]
        .as_object_mut()
        .unwrap()
        .remove("teamName");
    assert_rejected(
        "Inbox",
        &team_without_name,
        None,
        "teamName is required when visibility is Team",
    );

    let mut org_with_name = to_json(&Inbox::test("support", "acme"));
    org_with_name["spec"]["teamName"] = json!("billing");
    assert_rejected(
        "Inbox",
        &org_with_name,
        None,
        "teamName may be set only when visibility is Team",
    );

    assert_accepted(
        "Inbox",
        &to_json(&Inbox::test("support", "acme").with_restricted_visibility()),
        None,
    );
}

#[test]
fn inbox_tenant_ref_and_address_are_immutable() {
    let old = to_json(&Inbox::test("support", "acme"));
    let mut moved = old.clone();
    moved["spec"]["tenantRef"]["name"] = json!("globex");
    assert_rejected("Inbox", &moved, Some(&old), "tenantRef is immutable");
    // The same object on create has no old state: accepted.
    assert_accepted("Inbox", &moved, None);

    let readdressed = to_json(&Inbox::test("support", "acme").with_address("help@acme.example"));
    assert_rejected(
        "Inbox",
        &readdressed,
        Some(&old),
        "gmailAddress is immutable",
    );

    // Mutable fields may change.
    let reshared = to_json(&Inbox::test("support", "acme").with_restricted_visibility());
    assert_accepted("Inbox", &reshared, Some(&old));
}

#[test]
fn grant_inbox_and_subject_are_immutable_but_role_is_not() {
    let old = to_json(&InboxGrant::test("g", "support", "alice@acme.example"));
    let mut other_inbox = old.clone();
    other_inbox["spec"]["inboxRef"]["name"] = json!("billing");
    assert_rejected(
        "InboxGrant",
        &other_inbox,
        Some(&old),
        "inboxRef is immutable",
    );

    let other_subject = to_json(&InboxGrant::test("g", "support", "bob@acme.example"));
    assert_rejected(
        "InboxGrant",
        &other_subject,
        Some(&old),
        "subject is immutable",
    );

    let promoted = to_json(
        &InboxGrant::test("g", "support", "alice@acme.example").with_role(GrantRole::Configure),
    );
    assert_accepted("InboxGrant", &promoted, Some(&old));
}

#[test]
fn grant_team_subject_must_be_a_team_name() {
    let grant = InboxGrant::test("g", "support", "x").with_team("Tier_2@acme");
    assert_rejected(
        "InboxGrant",
        &to_json(&grant),
        None,
        "a Team subject's name must be a team name",
    );
    let grant = InboxGrant::test("g", "support", "x").with_team("tier-2");
    assert_accepted("InboxGrant", &to_json(&grant), None);
}

#[test]
fn retention_policy_tenant_ref_is_immutable_but_legal_hold_is_not() {
    let old = to_json(&RetentionPolicy::test("p", "acme"));
    let mut moved = old.clone();
    moved["spec"]["tenantRef"]["name"] = json!("globex");
    assert_rejected(
        "RetentionPolicy",
        &moved,
        Some(&old),
        "tenantRef is immutable",
    );
    let held = to_json(&RetentionPolicy::test("p", "acme").with_legal_hold(true));
    assert_accepted("RetentionPolicy", &held, Some(&old));
}
