//! Status helpers controllers use: first-reconcile conditions, generation tracking, the Inbox
//! connection condition and the fixtures' modifiers.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use helpr_crds::conditions::{reasons, types};
use helpr_crds::inbox::ConnectionState;
use helpr_crds::testing::{Fixture, TEST_NAMESPACE, time};
use helpr_crds::{
    ConditionStatus, HelprResource, Inbox, InboxGrant, RetentionPolicy, StatusConditions, Tenant,
};

#[test]
fn first_reconcile_writes_every_condition_as_unknown_except_kstatus_ones() {
    let mut tenant = Tenant::test("acme");
    let generation = tenant.generation();
    let status = tenant.status_mut();
    assert!(status.init_conditions(Tenant::CONDITION_TYPES, generation, &time(10)));
    let written: Vec<_> = status
        .conditions()
        .iter()
        .map(|c| (c.type_.as_str(), c.status, c.reason.as_str()))
        .collect();
    assert_eq!(
        written,
        [
            (types::READY, ConditionStatus::Unknown, reasons::PENDING),
            (
                types::KMS_PROVISIONED,
                ConditionStatus::Unknown,
                reasons::PENDING
            ),
            (
                types::DATA_PLANE_SYNCED,
                ConditionStatus::Unknown,
                reasons::PENDING
            ),
        ]
    );
    // A second call keeps what is there.
    assert!(!status.init_conditions(Tenant::CONDITION_TYPES, generation, &time(20)));
    assert!(!status.init_conditions(&[types::RECONCILING, types::STALLED], generation, &time(20)));
    assert!(status.condition(types::RECONCILING).is_none());
}

#[test]
fn status_is_current_only_when_observed_generation_matches() {
    let tenant = Tenant::test("acme").with_generation(2);
    assert!(!tenant.is_status_current(), "no status yet");
    let tenant = tenant.with_ready();
    assert!(tenant.is_status_current() && tenant.is_ready());
    let edited = tenant.with_generation(3);
    assert!(!edited.is_status_current());
    assert!(
        !edited.is_ready(),
        "Ready from an older generation does not count"
    );
}

#[test]
fn kstatus_setters_add_and_remove_reconciling_and_stalled() {
    let mut grant = InboxGrant::test("g", "support", "alice");
    let status = grant.status_mut();
    assert!(status.set_reconciling(
        reasons::PROGRESSING,
        "grant g is being applied",
        Some(1),
        &time(1)
    ));
    assert!(status.set_stalled(
        reasons::INBOX_NOT_FOUND,
        "inbox support of grant g does not exist",
        Some(1),
        &time(1)
    ));
    assert!(
        status.is_condition_true(types::RECONCILING) && status.is_condition_true(types::STALLED)
    );
    assert!(status.clear_reconciling() && status.clear_stalled());
    assert!(status.conditions().is_empty());
    assert!(
        !status.clear_stalled(),
        "clearing an absent condition changes nothing"
    );
}

#[test]
fn inbox_connection_condition_uses_the_three_reasons() {
    let mut inbox = Inbox::test("support", "acme");
    let status = inbox.status_mut();
    assert_eq!(status.connection(), None);
    for state in [
        ConnectionState::Connected,
        ConnectionState::NeedsReconnect,
        ConnectionState::Disconnected,
    ] {
        status.set_connection(state, "inbox support", Some(1), &time(5));
        assert_eq!(status.connection(), Some(state));
        let c = status.condition(types::CONNECTED).unwrap();
        assert_eq!(c.reason, state.reason());
        assert_eq!(c.is_true(), state == ConnectionState::Connected);
    }
    assert_eq!(
        ConnectionState::from_reason("Connected"),
        Some(ConnectionState::Connected)
    );
    assert_eq!(ConnectionState::from_reason("Whatever"), None);
}

#[test]
fn fixtures_are_valid_and_modifiers_apply() {
    let tenant = Tenant::test("acme")
        .with_finalizer()
        .with_deleted_at(time(100))
        .with_namespace("acme");
    assert!(tenant.spec.validate().is_ok());
    assert!(tenant.has_finalizer());
    assert_eq!(tenant.metadata.namespace.as_deref(), Some("acme"));
    assert!(tenant.metadata.deletion_timestamp.is_some());
    assert!(!Tenant::test("acme").has_finalizer());

    let inbox = Inbox::test("support", "acme");
    assert_eq!(inbox.metadata.namespace.as_deref(), Some(TEST_NAMESPACE));
    assert!(inbox.spec.validate().is_ok());
    assert!(
        Inbox::test("billing", "acme")
            .with_team_visibility("billing")
            .spec
            .validate()
            .is_ok()
    );
    assert!(
        InboxGrant::test("g", "support", "alice@acme.example")
            .with_team("tier2")
            .spec
            .validate()
            .is_ok()
    );
    assert!(RetentionPolicy::test("p", "acme").spec.validate().is_ok());
    assert_ne!(
        Tenant::test("a").metadata.uid,
        Tenant::test("b").metadata.uid
    );
    assert_eq!(
        Tenant::test("a").metadata.uid,
        Tenant::test("a").metadata.uid
    );
    assert_ne!(
        Tenant::test("a").metadata.uid,
        Inbox::test("a", "a").metadata.uid
    );

    let with_condition = RetentionPolicy::test("p", "acme").with_condition(
        types::READY,
        ConditionStatus::True,
        reasons::LEGAL_HOLD,
    );
    assert_eq!(
        with_condition
            .status
            .unwrap()
            .condition(types::READY)
            .unwrap()
            .reason,
        reasons::LEGAL_HOLD
    );
}
