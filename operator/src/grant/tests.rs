//! InboxGrant reconcile flows against the Tenant tests' scripted mock apiserver and fake
//! data plane.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use helpr_crds::conditions::{reasons, types};
use helpr_crds::testing::{Fixture, time};
use helpr_crds::{Inbox, InboxGrant};
use http::Method;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::runtime::controller::Action;
use serde_json::Value;

use super::{GrantError, reconcile};
use crate::control::proto;
use crate::tenant::DATA_PLANE_STALE;
use crate::tenant::tests::{FakeVault, Harness, condition, harness, not_ok};

const GRANTS: &str = "/apis/mail.helpr.dev/v1alpha1/namespaces/helpr-test/inboxgrants";
const INBOXES: &str = "/apis/mail.helpr.dev/v1alpha1/namespaces/helpr-test/inboxes";

fn grant() -> InboxGrant {
    InboxGrant::test("alice-support", "support", "alice@example.com")
}

fn run(grant: InboxGrant, h: &Harness) -> tokio::task::JoinHandle<Result<Action, GrantError>> {
    let ctx = h.ctx.clone();
    tokio::spawn(async move { reconcile(Arc::new(grant), ctx).await })
}

fn in_seconds(seconds: i64) -> Time {
    Time(
        Timestamp::now()
            .checked_add(SignedDuration::from_secs(seconds))
            .unwrap(),
    )
}

async fn expect_inbox(h: &mut Harness, found: bool) {
    let (status, body) = if found {
        (
            200,
            serde_json::to_value(Inbox::test("support", "acme")).unwrap(),
        )
    } else {
        (404, not_ok(404, "NotFound"))
    };
    h.server
        .expect(
            Method::GET,
            &format!("{INBOXES}/support"),
            status,
            Some(body),
        )
        .await;
}

async fn expect_status(h: &mut Harness, grant: &InboxGrant) -> Value {
    let seen = h
        .server
        .expect(
            Method::PATCH,
            &format!("{GRANTS}/alice-support/status"),
            200,
            Some(serde_json::to_value(grant).unwrap()),
        )
        .await;
    assert!(seen.query.contains("fieldManager=helpr-operator"));
    assert!(seen.query.contains("force=true"));
    assert_eq!(seen.body["kind"], "InboxGrant");
    seen.body
}

#[tokio::test]
async fn a_new_grant_gets_the_finalizer_and_nothing_else() {
    let mut h = harness(FakeVault::default());
    let task = run(grant(), &h);
    let answer = serde_json::to_value(grant().with_finalizer()).unwrap();
    let seen = h
        .server
        .expect(
            Method::PATCH,
            &format!("{GRANTS}/alice-support"),
            200,
            Some(answer),
        )
        .await;
    let ops = seen.body.as_array().unwrap();
    assert_eq!(ops[1]["op"], "add");
    assert_eq!(ops[1]["path"], "/metadata/finalizers");
    assert_eq!(
        ops[1]["value"],
        serde_json::json!(["inboxgrant.mail.helpr.dev/cleanup"])
    );
    assert_eq!(task.await.unwrap().unwrap(), Action::await_change());
    assert!(h.data_plane.calls.lock().unwrap().is_empty());
}

#[tokio::test]
async fn a_grant_is_applied_with_its_uid_and_generation_and_is_ready() {
    let mut h = harness(FakeVault::default());
    let grant = grant().with_finalizer().with_generation(4);
    let task = run(grant.clone(), &h);
    expect_inbox(&mut h, true).await;
    let status = expect_status(&mut h, &grant).await;
    assert_eq!(
        task.await.unwrap().unwrap(),
        Action::requeue(super::model::MAX_REQUEUE)
    );

    let requests = h.data_plane.grants.lock().unwrap();
    let request = requests.first().unwrap();
    let meta = request.meta.clone().unwrap();
    assert_eq!(meta.uid, grant.metadata.uid.clone().unwrap());
    assert_eq!(meta.generation, 4);
    assert_eq!(meta.namespace, "helpr-test");
    let spec = request.spec.clone().unwrap();
    assert_eq!(spec.inbox, "support");
    assert_eq!(spec.subject_name, "alice@example.com");
    assert_eq!(spec.role, i32::from(proto::Role::Reply));
    assert_eq!(spec.expiration_time, None);

    assert_eq!(status["status"]["observedGeneration"], 4);
    let ready = condition(&status, types::READY).unwrap();
    assert_eq!(ready["status"], "True");
    assert_eq!(ready["reason"], reasons::RECONCILED);
    let synced = condition(&status, types::DATA_PLANE_SYNCED).unwrap();
    assert_eq!(synced["status"], "True");
    assert_eq!(synced["reason"], reasons::SYNCED);
    assert!(condition(&status, types::RECONCILING).is_none());
}

#[tokio::test]
async fn an_expired_grant_is_revoked_and_shows_expired() {
    let mut h = harness(FakeVault::default());
    let grant = grant()
        .with_finalizer()
        .with_expiration(time(1_767_225_600));
    let task = run(grant.clone(), &h);
    h.server
        .expect_event_about("InboxGrant", "Normal", reasons::EXPIRED)
        .await;
    let status = expect_status(&mut h, &grant).await;
    assert_eq!(task.await.unwrap().unwrap(), Action::await_change());

    let uid = grant.metadata.uid.clone().unwrap();
    assert_eq!(
        *h.data_plane.calls.lock().unwrap(),
        [format!("delete grant helpr-test/alice-support {uid}")]
    );
    assert!(h.data_plane.grants.lock().unwrap().is_empty());
    let ready = condition(&status, types::READY).unwrap();
    assert_eq!(ready["status"], "False");
    assert_eq!(ready["reason"], reasons::EXPIRED);
}

#[tokio::test]
async fn an_already_expired_and_revoked_grant_emits_no_second_event() {
    let mut h = harness(FakeVault::default());
    h.data_plane.gone.store(true, Ordering::Relaxed);
    let grant = grant()
        .with_finalizer()
        .with_expiration(time(1_767_225_600))
        .with_condition(
            types::READY,
            helpr_crds::ConditionStatus::False,
            reasons::EXPIRED,
        );
    let task = run(grant.clone(), &h);
    // Straight to status: NOT_FOUND from the data plane is "already revoked".
    let status = expect_status(&mut h, &grant).await;
    assert_eq!(task.await.unwrap().unwrap(), Action::await_change());
    let ready = condition(&status, types::READY).unwrap();
    assert_eq!(ready["reason"], reasons::EXPIRED);
    assert_eq!(ready["lastTransitionTime"], "1970-01-01T00:00:00Z");
}

#[tokio::test]
async fn a_future_expiration_requeues_for_about_that_long() {
    let mut h = harness(FakeVault::default());
    let grant = grant().with_finalizer().with_expiration(in_seconds(120));
    let task = run(grant.clone(), &h);
    expect_inbox(&mut h, true).await;
    expect_status(&mut h, &grant).await;
    let action = task.await.unwrap().unwrap();
    let ok = (110..=122).any(|s| action == Action::requeue(Duration::from_secs(s)))
        || (110_000..=122_000).any(|ms| action == Action::requeue(Duration::from_millis(ms)));
    assert!(ok, "{action:?}");
    let requests = h.data_plane.grants.lock().unwrap();
    assert_eq!(
        requests[0].spec.clone().unwrap().expiration_time,
        Some(grant.spec.expiration_time.unwrap().0.as_millisecond())
    );
}

#[tokio::test]
async fn a_grant_of_a_missing_inbox_waits_with_inbox_not_found() {
    let mut h = harness(FakeVault::default());
    let grant = grant().with_finalizer();
    let task = run(grant.clone(), &h);
    expect_inbox(&mut h, false).await;
    h.server
        .expect_event_about("InboxGrant", "Warning", reasons::INBOX_NOT_FOUND)
        .await;
    let status = expect_status(&mut h, &grant).await;
    let error = task.await.unwrap().unwrap_err();
    assert_eq!(error.category(), reasons::INBOX_NOT_FOUND);
    assert!(!error.is_permanent(), "retried with backoff");
    let ready = condition(&status, types::READY).unwrap();
    assert_eq!(ready["status"], "False");
    assert_eq!(ready["reason"], reasons::INBOX_NOT_FOUND);
    assert!(condition(&status, types::STALLED).is_none());
    assert_eq!(
        condition(&status, types::RECONCILING).unwrap()["status"],
        "True"
    );
    assert!(h.data_plane.calls.lock().unwrap().is_empty());
}

#[tokio::test]
async fn a_stale_outcome_is_reported_and_not_retried() {
    let mut h = harness(FakeVault::default());
    h.data_plane.stale.store(true, Ordering::Relaxed);
    let grant = grant().with_finalizer().with_generation(2);
    let task = run(grant.clone(), &h);
    expect_inbox(&mut h, true).await;
    h.server
        .expect_event_about("InboxGrant", "Warning", DATA_PLANE_STALE)
        .await;
    let status = expect_status(&mut h, &grant).await;
    assert_eq!(task.await.unwrap().unwrap(), Action::await_change());
    let synced = condition(&status, types::DATA_PLANE_SYNCED).unwrap();
    assert_eq!(synced["status"], "False");
    assert_eq!(synced["reason"], DATA_PLANE_STALE);
    assert!(synced["message"].as_str().unwrap().contains("generation 9"));
    assert_eq!(condition(&status, types::READY).unwrap()["status"], "False");
}

#[tokio::test]
async fn deleting_a_grant_revokes_it_then_removes_the_finalizer() {
    let mut h = harness(FakeVault::default());
    let grant = grant()
        .with_finalizer()
        .with_deleted_at(time(1_767_300_000));
    let task = run(grant.clone(), &h);
    h.server
        .expect_event_about("InboxGrant", "Normal", "Revoked")
        .await;
    let seen = h
        .server
        .expect(
            Method::PATCH,
            &format!("{GRANTS}/alice-support"),
            200,
            Some(serde_json::to_value(grant.clone()).unwrap()),
        )
        .await;
    let ops = seen.body.as_array().unwrap();
    assert_eq!(ops[1]["op"], "remove", "{}", seen.body);
    assert_eq!(task.await.unwrap().unwrap(), Action::await_change());
    let uid = grant.metadata.uid.clone().unwrap();
    assert_eq!(
        *h.data_plane.calls.lock().unwrap(),
        [format!("delete grant helpr-test/alice-support {uid}")]
    );
}

#[tokio::test]
async fn a_failed_revoke_keeps_the_finalizer() {
    let mut h = harness(FakeVault::default());
    h.data_plane.unavailable.store(true, Ordering::Relaxed);
    let grant = grant()
        .with_finalizer()
        .with_deleted_at(time(1_767_300_000));
    let task = run(grant, &h);
    h.server
        .expect_event_about("InboxGrant", "Warning", reasons::DATA_PLANE_UNAVAILABLE)
        .await;
    let error = task.await.unwrap().unwrap_err();
    assert_eq!(error.category(), reasons::DATA_PLANE_UNAVAILABLE);
    assert_eq!(h.data_plane.calls.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn an_unavailable_data_plane_is_reported_and_retried() {
    let mut h = harness(FakeVault::default());
    h.data_plane.unavailable.store(true, Ordering::Relaxed);
    let grant = grant().with_finalizer();
    let task = run(grant.clone(), &h);
    expect_inbox(&mut h, true).await;
    h.server
        .expect_event_about("InboxGrant", "Warning", reasons::DATA_PLANE_UNAVAILABLE)
        .await;
    let status = expect_status(&mut h, &grant).await;
    let error = task.await.unwrap().unwrap_err();
    assert!(!error.is_permanent());
    let synced = condition(&status, types::DATA_PLANE_SYNCED).unwrap();
    assert_eq!(synced["status"], "False");
    assert_eq!(synced["reason"], reasons::DATA_PLANE_UNAVAILABLE);
    assert!(
        synced["message"]
            .as_str()
            .unwrap()
            .contains("database unreachable"),
        "{synced}"
    );
    assert_eq!(condition(&status, types::READY).unwrap()["status"], "False");
    assert_eq!(
        condition(&status, types::RECONCILING).unwrap()["status"],
        "True"
    );
}

#[test]
fn a_data_plane_that_does_not_know_the_inbox_yet_means_inbox_not_ready() {
    let error = GrantError::SyncDataPlane {
        grant: "helpr-test/alice-support".to_owned(),
        source: crate::control::ControlError::NotFound("inbox support".to_owned()),
    };
    assert_eq!(error.category(), reasons::INBOX_NOT_READY);
    assert!(!error.is_permanent());
}

#[tokio::test]
async fn a_grant_takes_its_inbox_from_the_shared_store_without_reading_it() {
    let mut h = harness(FakeVault::default());
    h.watched_inbox(Inbox::test("support", "acme"));
    let grant = grant().with_finalizer();
    let task = run(grant.clone(), &h);
    // No GET of the inbox: straight to the status.
    let status = expect_status(&mut h, &grant).await;
    task.await.unwrap().unwrap();
    assert_eq!(condition(&status, types::READY).unwrap()["status"], "True");
    assert_eq!(
        *h.data_plane.calls.lock().unwrap(),
        ["upsert grant helpr-test/alice-support g1"]
    );
}

#[tokio::test]
async fn an_inbox_missing_from_the_store_is_read_from_the_apiserver() {
    let mut h = harness(FakeVault::default());
    h.watched_inbox(Inbox::test("other", "acme"));
    let grant = grant().with_finalizer();
    let task = run(grant.clone(), &h);
    expect_inbox(&mut h, true).await;
    expect_status(&mut h, &grant).await;
    task.await.unwrap().unwrap();
}
