//! Inbox reconcile flows against the Tenant tests' scripted mock apiserver and fake data
//! plane.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use helpr_crds::conditions::{ConditionStatus, reasons, types};
use helpr_crds::testing::{Fixture, time};
use helpr_crds::{Inbox, Tenant};
use http::Method;
use kube::runtime::controller::Action;
use serde_json::Value;

use super::{InboxError, reconcile};
use crate::control::proto;
use crate::tenant::DATA_PLANE_STALE;
use crate::tenant::tests::{FakeVault, Harness, condition, harness, harness_with, not_ok};

const INBOXES: &str = "/apis/mail.helpr.dev/v1alpha1/namespaces/helpr-test/inboxes";
const TENANTS: &str = "/apis/mail.helpr.dev/v1alpha1/namespaces/helpr-test/tenants";

fn inbox() -> Inbox {
    Inbox::test("support", "acme")
}

fn run(inbox: Inbox, h: &Harness) -> tokio::task::JoinHandle<Result<Action, InboxError>> {
    let ctx = h.ctx.clone();
    tokio::spawn(async move { reconcile(Arc::new(inbox), ctx).await })
}

async fn expect_tenant(h: &mut Harness, tenant: Option<Tenant>) {
    let (status, body) = match tenant {
        Some(tenant) => (200, serde_json::to_value(tenant).unwrap()),
        None => (404, not_ok(404, "NotFound")),
    };
    h.server
        .expect(Method::GET, &format!("{TENANTS}/acme"), status, Some(body))
        .await;
}

async fn expect_status(h: &mut Harness, inbox: &Inbox) -> Value {
    let seen = h
        .server
        .expect(
            Method::PATCH,
            &format!("{INBOXES}/support/status"),
            200,
            Some(serde_json::to_value(inbox).unwrap()),
        )
        .await;
    assert!(seen.query.contains("fieldManager=helpr-operator"));
    assert!(seen.query.contains("force=true"));
    assert_eq!(seen.body["kind"], "Inbox");
    seen.body
}

#[tokio::test]
async fn a_new_inbox_gets_the_finalizer_and_nothing_else() {
    let mut h = harness(FakeVault::default());
    let task = run(inbox(), &h);
    let answer = serde_json::to_value(inbox().with_finalizer()).unwrap();
    let seen = h
        .server
        .expect(
            Method::PATCH,
            &format!("{INBOXES}/support"),
            200,
            Some(answer),
        )
        .await;
    let ops = seen.body.as_array().unwrap();
    assert_eq!(ops[1]["op"], "add");
    assert_eq!(
        ops[1]["value"],
        serde_json::json!(["inbox.mail.helpr.dev/cleanup"])
    );
    assert_eq!(task.await.unwrap().unwrap(), Action::await_change());
    assert!(h.data_plane.calls.lock().unwrap().is_empty());
}

#[tokio::test]
async fn an_inbox_of_a_ready_tenant_is_applied_and_ready() {
    let mut h = harness(FakeVault::default());
    let inbox = inbox()
        .with_finalizer()
        .with_generation(3)
        .with_team_visibility("tier-1")
        .with_assignment_limits_visibility(true);
    let task = run(inbox.clone(), &h);
    expect_tenant(&mut h, Some(Tenant::test("acme").with_ready())).await;
    let status = expect_status(&mut h, &inbox).await;
    assert_eq!(
        task.await.unwrap().unwrap(),
        Action::requeue(Duration::from_secs(300))
    );

    let requests = h.data_plane.inboxes.lock().unwrap();
    let request = requests.first().unwrap();
    let meta = request.meta.clone().unwrap();
    assert_eq!(meta.uid, inbox.metadata.uid.clone().unwrap());
    assert_eq!(meta.generation, 3);
    let spec = request.spec.clone().unwrap();
    assert_eq!(spec.tenant, "acme");
    assert_eq!(spec.gmail_address, "support@example.com");
    assert_eq!(spec.visibility, i32::from(proto::Visibility::Team));
    assert_eq!(spec.team, "tier-1");
    assert!(spec.assignment_limits_visibility);

    assert_eq!(status["status"]["observedGeneration"], 3);
    let ready = condition(&status, types::READY).unwrap();
    assert_eq!(ready["status"], "True");
    assert_eq!(ready["reason"], reasons::RECONCILED);
    let synced = condition(&status, types::DATA_PLANE_SYNCED).unwrap();
    assert_eq!(synced["status"], "True");
    // Connected is the data plane's to report: still Unknown.
    let connected = condition(&status, types::CONNECTED).unwrap();
    assert_eq!(connected["status"], "Unknown");
    assert_eq!(connected["reason"], reasons::PENDING);
}

#[tokio::test]
async fn a_reported_connection_is_kept_while_the_data_plane_cannot_say() {
    let mut h = harness(FakeVault::default());
    h.data_plane
        .status_unavailable
        .store(true, Ordering::Relaxed);
    let mut inbox = inbox().with_finalizer().with_condition(
        types::CONNECTED,
        ConditionStatus::False,
        reasons::NEEDS_RECONNECT,
    );
    inbox.status.get_or_insert_default().last_sync_time = Some(time(1_767_200_000));
    let task = run(inbox.clone(), &h);
    expect_tenant(&mut h, Some(Tenant::test("acme").with_ready())).await;
    let status = expect_status(&mut h, &inbox).await;
    // Still applied and Ready; the status call's outage flips nothing.
    assert_eq!(
        task.await.unwrap().unwrap(),
        Action::requeue(Duration::from_secs(300))
    );
    assert_eq!(condition(&status, types::READY).unwrap()["status"], "True");
    let connected = condition(&status, types::CONNECTED).unwrap();
    assert_eq!(connected["status"], "False");
    assert_eq!(connected["reason"], reasons::NEEDS_RECONNECT);
    assert_eq!(
        status["status"]["lastSyncTime"],
        serde_json::to_value(time(1_767_200_000)).unwrap()
    );
    assert_eq!(
        h.data_plane.calls.lock().unwrap().last().unwrap(),
        "inbox status helpr-test/support"
    );
}

/// Runs one apply with the data plane answering `answer` to GetInboxStatus; the status
/// patch.
async fn applied_with(answer: Option<proto::InboxStatus>, inbox: Inbox) -> Value {
    let mut h = harness(FakeVault::default());
    *h.data_plane.inbox_status.lock().unwrap() = answer;
    let task = run(inbox.clone(), &h);
    expect_tenant(&mut h, Some(Tenant::test("acme").with_ready())).await;
    let status = expect_status(&mut h, &inbox).await;
    assert_eq!(
        task.await.unwrap().unwrap(),
        Action::requeue(Duration::from_secs(300)),
        "requeued at the resync interval so that sync changes show up"
    );
    let calls = h.data_plane.calls.lock().unwrap().clone();
    assert_eq!(
        calls,
        [
            "upsert inbox helpr-test/support g1".to_owned(),
            "inbox status helpr-test/support".to_owned()
        ]
    );
    status
}

#[tokio::test]
async fn a_synced_inbox_is_connected_with_its_sync_and_watch_times() {
    let status = applied_with(
        Some(proto::InboxStatus {
            connection_state: proto::ConnectionState::Connected.into(),
            connection_message: "synced with Gmail".into(),
            last_sync_time: Some(1_767_300_000_123),
            watch_expiration_time: Some(1_767_900_000_000),
            ..Default::default()
        }),
        inbox().with_finalizer(),
    )
    .await;
    let connected = condition(&status, types::CONNECTED).unwrap();
    assert_eq!(connected["status"], "True");
    assert_eq!(connected["reason"], reasons::CONNECTED);
    assert_eq!(connected["message"], "synced with Gmail");
    // Kubernetes times have second precision.
    assert_eq!(status["status"]["lastSyncTime"], "2026-01-01T20:40:00Z");
    assert_eq!(
        status["status"]["watchExpirationTime"],
        "2026-01-08T19:20:00Z"
    );
}

#[tokio::test]
async fn an_inbox_google_refused_needs_reconnecting() {
    let mut inbox = inbox().with_finalizer().with_condition(
        types::CONNECTED,
        ConditionStatus::True,
        reasons::CONNECTED,
    );
    inbox.status.get_or_insert_default().watch_expiration_time = Some(time(1_767_900_000));
    let status = applied_with(
        Some(proto::InboxStatus {
            connection_state: proto::ConnectionState::NeedsReconnect.into(),
            connection_message: "refused".into(),
            last_sync_time: Some(1_767_300_000_000),
            watch_expiration_time: None,
            ..Default::default()
        }),
        inbox,
    )
    .await;
    let connected = condition(&status, types::CONNECTED).unwrap();
    assert_eq!(connected["status"], "False");
    assert_eq!(connected["reason"], reasons::NEEDS_RECONNECT);
    let message = connected["message"].as_str().unwrap();
    assert!(
        message.contains("reconnect the inbox's Google account"),
        "{message}"
    );
    assert!(!message.contains('@'), "{message}");
    assert_eq!(status["status"]["lastSyncTime"], "2026-01-01T20:40:00Z");
    // The data plane has no watch any more: the time goes.
    assert!(status["status"].get("watchExpirationTime").is_none());
}

#[tokio::test]
async fn a_disconnected_inbox_and_a_pending_one_say_so() {
    let status = applied_with(
        Some(proto::InboxStatus {
            connection_state: proto::ConnectionState::Disconnected.into(),
            connection_message: "the data plane disconnected the inbox".into(),
            ..Default::default()
        }),
        inbox().with_finalizer(),
    )
    .await;
    let connected = condition(&status, types::CONNECTED).unwrap();
    assert_eq!(connected["status"], "False");
    assert_eq!(connected["reason"], reasons::DISCONNECTED);
    assert!(status["status"].get("lastSyncTime").is_none());

    let status = applied_with(
        Some(proto::InboxStatus {
            connection_state: proto::ConnectionState::Pending.into(),
            connection_message:
                "no Google account connected yet; connect the inbox's Google account".into(),
            ..Default::default()
        }),
        inbox().with_finalizer(),
    )
    .await;
    let connected = condition(&status, types::CONNECTED).unwrap();
    assert_eq!(connected["status"], "Unknown");
    assert_eq!(connected["reason"], reasons::PENDING);
    assert_eq!(
        connected["message"],
        "no Google account connected yet; connect the inbox's Google account"
    );
}

#[tokio::test]
async fn an_unknown_connection_state_keeps_the_condition() {
    let status = applied_with(
        Some(proto::InboxStatus {
            connection_state: 42,
            ..Default::default()
        }),
        inbox().with_finalizer().with_condition(
            types::CONNECTED,
            ConditionStatus::True,
            reasons::CONNECTED,
        ),
    )
    .await;
    let connected = condition(&status, types::CONNECTED).unwrap();
    assert_eq!(connected["status"], "True");
    assert_eq!(connected["reason"], reasons::CONNECTED);
}

#[tokio::test]
async fn an_inbox_waits_while_its_tenant_is_not_ready() {
    let mut h = harness(FakeVault::default());
    let inbox = inbox().with_finalizer();
    let task = run(inbox.clone(), &h);
    let not_ready = Tenant::test("acme").with_condition(
        types::READY,
        ConditionStatus::False,
        reasons::PROGRESSING,
    );
    expect_tenant(&mut h, Some(not_ready)).await;
    h.server
        .expect_event_about("Inbox", "Warning", reasons::TENANT_NOT_READY)
        .await;
    let status = expect_status(&mut h, &inbox).await;
    let error = task.await.unwrap().unwrap_err();
    assert_eq!(error.category(), reasons::TENANT_NOT_READY);
    assert!(!error.is_permanent(), "retried with backoff");
    let ready = condition(&status, types::READY).unwrap();
    assert_eq!(ready["status"], "False");
    assert_eq!(ready["reason"], reasons::TENANT_NOT_READY);
    assert!(condition(&status, types::STALLED).is_none());
    assert!(h.data_plane.calls.lock().unwrap().is_empty());
}

#[tokio::test]
async fn an_inbox_of_a_missing_tenant_shows_tenant_not_found() {
    let mut h = harness(FakeVault::default());
    let inbox = inbox().with_finalizer();
    let task = run(inbox.clone(), &h);
    expect_tenant(&mut h, None).await;
    h.server
        .expect_event_about("Inbox", "Warning", reasons::TENANT_NOT_FOUND)
        .await;
    let status = expect_status(&mut h, &inbox).await;
    assert_eq!(
        task.await.unwrap().unwrap_err().category(),
        reasons::TENANT_NOT_FOUND
    );
    assert_eq!(
        condition(&status, types::READY).unwrap()["reason"],
        reasons::TENANT_NOT_FOUND
    );
    assert!(h.data_plane.calls.lock().unwrap().is_empty());
}

#[tokio::test]
async fn an_invalid_inbox_stalls_without_touching_the_data_plane() {
    let mut h = harness(FakeVault::default());
    let inbox = inbox().with_finalizer().with_address("Not An Address");
    let task = run(inbox.clone(), &h);
    h.server
        .expect_event_about("Inbox", "Warning", reasons::INVALID_SPEC)
        .await;
    let status = expect_status(&mut h, &inbox).await;
    assert_eq!(task.await.unwrap().unwrap(), Action::await_change());
    assert_eq!(
        condition(&status, types::STALLED).unwrap()["status"],
        "True"
    );
    assert!(h.data_plane.calls.lock().unwrap().is_empty());
}

/// An Inbox naming a push audience the ingest endpoint does not accept stalls with a reason
/// that says what to change, before anything reaches the data plane; an accepted one goes on.
#[tokio::test]
async fn a_push_audience_the_ingest_endpoint_refuses_stalls_the_inbox() {
    let mut settings = crate::settings::tests::settings();
    settings.push_audiences = vec!["https://ingest.other.example/push".into()];
    let mut h = harness_with(FakeVault::default(), settings.clone());
    let inbox = inbox().with_finalizer();
    let task = run(inbox.clone(), &h);
    h.server
        .expect_event_about("Inbox", "Warning", super::PUSH_AUDIENCE_NOT_ACCEPTED)
        .await;
    let status = expect_status(&mut h, &inbox).await;
    assert_eq!(task.await.unwrap().unwrap(), Action::await_change());
    assert_eq!(
        condition(&status, types::STALLED).unwrap()["status"],
        "True"
    );
    let ready = condition(&status, types::READY).unwrap();
    assert_eq!(ready["reason"], super::PUSH_AUDIENCE_NOT_ACCEPTED);
    assert!(
        ready["message"]
            .as_str()
            .unwrap()
            .contains("config.push.additionalAudiences"),
        "{ready}"
    );
    assert!(h.data_plane.calls.lock().unwrap().is_empty());

    // Accepted: the inbox proceeds to its tenant.
    settings
        .push_audiences
        .push(inbox.spec.pub_sub.push_audience.clone());
    let mut h = harness_with(FakeVault::default(), settings);
    let task = run(inbox.clone(), &h);
    expect_tenant(&mut h, None).await;
    h.server
        .expect_event_about("Inbox", "Warning", reasons::TENANT_NOT_FOUND)
        .await;
    expect_status(&mut h, &inbox).await;
    assert_eq!(
        task.await.unwrap().unwrap_err().category(),
        reasons::TENANT_NOT_FOUND
    );
}

#[tokio::test]
async fn a_stale_inbox_outcome_is_reported_and_not_retried() {
    let mut h = harness(FakeVault::default());
    h.data_plane.stale.store(true, Ordering::Relaxed);
    let inbox = inbox().with_finalizer();
    let task = run(inbox.clone(), &h);
    expect_tenant(&mut h, Some(Tenant::test("acme").with_ready())).await;
    h.server
        .expect_event_about("Inbox", "Warning", DATA_PLANE_STALE)
        .await;
    let status = expect_status(&mut h, &inbox).await;
    assert_eq!(task.await.unwrap().unwrap(), Action::await_change());
    let synced = condition(&status, types::DATA_PLANE_SYNCED).unwrap();
    assert_eq!(synced["status"], "False");
    assert_eq!(synced["reason"], DATA_PLANE_STALE);
}

#[tokio::test]
async fn deleting_an_inbox_deletes_it_from_the_data_plane_then_removes_the_finalizer() {
    let mut h = harness(FakeVault::default());
    let inbox = inbox()
        .with_finalizer()
        .with_deleted_at(time(1_767_300_000));
    let task = run(inbox.clone(), &h);
    h.server
        .expect_event_about("Inbox", "Normal", reasons::DISCONNECTED)
        .await;
    let seen = h
        .server
        .expect(
            Method::PATCH,
            &format!("{INBOXES}/support"),
            200,
            Some(serde_json::to_value(inbox.clone()).unwrap()),
        )
        .await;
    assert_eq!(seen.body.as_array().unwrap()[1]["op"], "remove");
    assert_eq!(task.await.unwrap().unwrap(), Action::await_change());
    let uid = inbox.metadata.uid.clone().unwrap();
    assert_eq!(
        *h.data_plane.calls.lock().unwrap(),
        [format!("delete inbox helpr-test/support {uid}")]
    );
}

#[tokio::test]
async fn deleting_an_inbox_the_data_plane_no_longer_has_is_done() {
    let mut h = harness(FakeVault::default());
    h.data_plane.gone.store(true, Ordering::Relaxed);
    let inbox = inbox()
        .with_finalizer()
        .with_deleted_at(time(1_767_300_000));
    let task = run(inbox.clone(), &h);
    h.server
        .expect_event_about("Inbox", "Normal", reasons::DISCONNECTED)
        .await;
    let seen = h
        .server
        .expect(
            Method::PATCH,
            &format!("{INBOXES}/support"),
            200,
            Some(serde_json::to_value(inbox).unwrap()),
        )
        .await;
    assert_eq!(seen.body.as_array().unwrap()[1]["op"], "remove");
    assert_eq!(task.await.unwrap().unwrap(), Action::await_change());
}

#[test]
fn waiting_for_the_tenant_is_retried_as_a_safety_net_not_with_backoff() {
    use crate::tenant::reconcile::ControllerError;
    let waiting = InboxError::TenantNotReady {
        inbox: "acme/support".into(),
        tenant: "acme".into(),
    };
    assert!(waiting.waits_for_parent());
    assert!(!waiting.is_permanent());
    let missing = InboxError::TenantNotFound {
        inbox: "acme/support".into(),
        tenant: "acme".into(),
    };
    assert!(!missing.waits_for_parent());
}

#[tokio::test]
async fn an_inbox_takes_its_ready_tenant_from_the_shared_store_without_reading_it() {
    let mut h = harness(FakeVault::default());
    h.watched_tenant(Tenant::test("acme").with_ready());
    let inbox = inbox().with_finalizer();
    let task = run(inbox.clone(), &h);
    // No GET of the tenant: the upsert, then the status.
    let status = expect_status(&mut h, &inbox).await;
    assert_eq!(
        task.await.unwrap().unwrap(),
        Action::requeue(Duration::from_secs(300))
    );
    assert_eq!(condition(&status, types::READY).unwrap()["status"], "True");
    assert_eq!(
        *h.data_plane.calls.lock().unwrap(),
        [
            "upsert inbox helpr-test/support g1",
            "inbox status helpr-test/support"
        ]
    );
}

#[tokio::test]
async fn a_tenant_not_ready_in_the_store_is_read_from_the_apiserver() {
    // The store may not have applied the change that woke the inbox yet.
    let mut h = harness(FakeVault::default());
    h.watched_tenant(Tenant::test("acme").with_condition(
        types::READY,
        ConditionStatus::False,
        reasons::PROGRESSING,
    ));
    let inbox = inbox().with_finalizer();
    let task = run(inbox.clone(), &h);
    expect_tenant(&mut h, Some(Tenant::test("acme").with_ready())).await;
    let status = expect_status(&mut h, &inbox).await;
    task.await.unwrap().unwrap();
    assert_eq!(condition(&status, types::READY).unwrap()["status"], "True");
}

#[tokio::test]
async fn an_inbox_woken_again_at_its_generation_asks_the_data_plane_nothing_and_writes_nothing() {
    let mut h = harness(FakeVault::default());
    let tenant = Tenant::test("acme").with_ready();
    h.watched_tenant(tenant.clone());
    let first = inbox().with_finalizer();
    let task = run(first.clone(), &h);
    let status = expect_status(&mut h, &first).await;
    task.await.unwrap().unwrap();

    // Woken by its own status write, or by its tenant: nothing to do.
    let mut ready = first.clone();
    ready.status = Some(serde_json::from_value(status["status"].clone()).unwrap());
    let task = run(ready.clone(), &h);
    assert_eq!(
        task.await.unwrap().unwrap(),
        Action::requeue(Duration::from_secs(300))
    );
    h.server.expect_nothing().await;
    assert_eq!(h.data_plane.calls.lock().unwrap().len(), 2);

    // A new generation of its tenant voids the confirmation: asked again; the status,
    // still the same, is not written.
    h.watched_tenant(tenant.with_generation(2).with_ready());
    let task = run(ready.clone(), &h);
    task.await.unwrap().unwrap();
    h.server.expect_nothing().await;
    assert_eq!(
        *h.data_plane.calls.lock().unwrap(),
        [
            "upsert inbox helpr-test/support g1",
            "inbox status helpr-test/support",
            "upsert inbox helpr-test/support g1",
            "inbox status helpr-test/support"
        ]
    );
}

#[tokio::test]
async fn an_inbox_still_waiting_for_its_tenant_does_not_rewrite_its_status() {
    let mut h = harness(FakeVault::default());
    let not_ready = Tenant::test("acme").with_condition(
        types::READY,
        ConditionStatus::False,
        reasons::PROGRESSING,
    );
    let inbox = inbox().with_finalizer();
    let task = run(inbox.clone(), &h);
    expect_tenant(&mut h, Some(not_ready.clone())).await;
    h.server
        .expect_event_about("Inbox", "Warning", reasons::TENANT_NOT_READY)
        .await;
    let status = expect_status(&mut h, &inbox).await;
    assert!(task.await.unwrap().is_err());

    // Reconciled again (a fresh harness, so that the Event is a new one, not a series).
    let mut h = harness(FakeVault::default());
    let mut waiting = inbox.clone();
    waiting.status = Some(serde_json::from_value(status["status"].clone()).unwrap());
    let task = run(waiting, &h);
    expect_tenant(&mut h, Some(not_ready)).await;
    h.server
        .expect_event_about("Inbox", "Warning", reasons::TENANT_NOT_READY)
        .await;
    assert_eq!(
        task.await.unwrap().unwrap_err().category(),
        reasons::TENANT_NOT_READY
    );
    h.server.expect_nothing().await;
}

#[tokio::test]
async fn an_inbox_copy_older_than_the_last_check_is_read_again_instead_of_asking_the_data_plane() {
    let mut h = harness(FakeVault::default());
    h.watched_tenant(Tenant::test("acme").with_ready());
    let stale = inbox().with_finalizer();
    let task = run(stale.clone(), &h);
    let status = expect_status(&mut h, &stale).await;
    task.await.unwrap().unwrap();
    let mut current = stale.clone();
    current.status = Some(serde_json::from_value(status["status"].clone()).unwrap());

    // Woken by its tenant before its own status write reached the store.
    let task = run(stale, &h);
    h.server
        .expect(
            Method::GET,
            &format!("{INBOXES}/support"),
            200,
            Some(serde_json::to_value(&current).unwrap()),
        )
        .await;
    assert_eq!(
        task.await.unwrap().unwrap(),
        Action::requeue(Duration::from_secs(300))
    );
    h.server.expect_nothing().await;
    assert_eq!(h.data_plane.calls.lock().unwrap().len(), 2);
}
