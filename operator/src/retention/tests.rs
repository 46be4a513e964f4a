//! RetentionPolicy reconcile flows against the Tenant tests' scripted mock apiserver and fake
//! data plane.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use helpr_crds::conditions::{reasons, types};
use helpr_crds::testing::{Fixture, time};
use helpr_crds::{RetentionPolicy, Tenant};
use http::Method;
use kube::runtime::controller::Action;
use serde_json::{Value, json};

use super::reconcile::POLICY_REMOVED;
use super::{RetentionError, error_policy, reconcile};
use crate::tenant::DATA_PLANE_STALE;
use crate::tenant::tests::{FakeVault, Harness, condition, harness, not_ok};

const POLICIES: &str = "/apis/mail.helpr.dev/v1alpha1/namespaces/helpr-test/retentionpolicies";
const TENANTS: &str = "/apis/mail.helpr.dev/v1alpha1/namespaces/helpr-test/tenants";
const CRON_JOB: &str = "/apis/batch/v1/namespaces/helpr-test/cronjobs/helpr-purge-acme";
const NETWORK_POLICY: &str =
    "/apis/networking.k8s.io/v1/namespaces/helpr-test/networkpolicies/helpr-purge-acme";

fn policy() -> RetentionPolicy {
    RetentionPolicy::test("acme", "acme")
}

fn run(
    policy: RetentionPolicy,
    h: &Harness,
) -> tokio::task::JoinHandle<Result<Action, RetentionError>> {
    let ctx = h.ctx.clone();
    tokio::spawn(async move { reconcile(Arc::new(policy), ctx).await })
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

/// The purge pods' NetworkPolicy, then the CronJob (answered with `cron_status`): both
/// server-side applied, forced, owned by the policy. Returns the CronJob's body.
async fn expect_children(h: &mut Harness, cron_status: Value) -> Value {
    let np = h
        .server
        .expect_apply_owned_by("RetentionPolicy", NETWORK_POLICY, Value::Null)
        .await;
    assert_eq!(np.body["kind"], "NetworkPolicy");
    assert_eq!(
        np.body["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/name"],
        "helpr-purge"
    );
    let cron = h
        .server
        .expect_apply_owned_by("RetentionPolicy", CRON_JOB, cron_status)
        .await;
    assert_eq!(cron.body["kind"], "CronJob");
    assert_eq!(cron.body["apiVersion"], "batch/v1");
    cron.body
}

async fn expect_status(h: &mut Harness, policy: &RetentionPolicy) -> Value {
    let seen = h
        .server
        .expect(
            Method::PATCH,
            &format!("{POLICIES}/acme/status"),
            200,
            Some(serde_json::to_value(policy).unwrap()),
        )
        .await;
    assert!(seen.query.contains("fieldManager=helpr-operator"));
    assert!(seen.query.contains("force=true"));
    assert_eq!(seen.body["kind"], "RetentionPolicy");
    seen.body
}

fn ready_tenant() -> Option<Tenant> {
    Some(Tenant::test("acme").with_ready())
}

#[tokio::test]
async fn a_new_policy_gets_the_finalizer_and_nothing_else() {
    let mut h = harness(FakeVault::default());
    let task = run(policy(), &h);
    let answer = serde_json::to_value(policy().with_finalizer()).unwrap();
    let seen = h
        .server
        .expect(
            Method::PATCH,
            &format!("{POLICIES}/acme"),
            200,
            Some(answer),
        )
        .await;
    let ops = seen.body.as_array().unwrap();
    assert_eq!(ops[1]["op"], "add");
    assert_eq!(
        ops[1]["value"],
        json!(["retentionpolicy.mail.helpr.dev/cleanup"])
    );
    assert_eq!(task.await.unwrap().unwrap(), Action::await_change());
    assert!(h.data_plane.calls.lock().unwrap().is_empty());
}

#[tokio::test]
async fn a_policy_of_a_ready_tenant_reaches_the_data_plane_and_schedules_its_purges() {
    let mut h = harness(FakeVault::default());
    let mut policy = policy()
        .with_finalizer()
        .with_generation(3)
        .with_grace_period_days(30)
        .with_schedule("30 2 * * *", Some("Europe/Berlin"));
    policy.spec.delete_after_days = Some(730);
    let task = run(policy.clone(), &h);
    expect_tenant(&mut h, ready_tenant()).await;
    let cron = expect_children(
        &mut h,
        json!({
            "lastScheduleTime": "2026-03-01T01:30:00Z",
            "lastSuccessfulTime": "2026-03-01T01:42:10Z",
        }),
    )
    .await;
    let status = expect_status(&mut h, &policy).await;
    assert_eq!(
        task.await.unwrap().unwrap(),
        Action::requeue(Duration::from_secs(300))
    );

    // The data plane got the policy at its uid and generation.
    let requests = h.data_plane.retention_policies.lock().unwrap();
    let request = requests.first().unwrap();
    let meta = request.meta.clone().unwrap();
    assert_eq!(meta.uid, policy.metadata.uid.clone().unwrap());
    assert_eq!(meta.generation, 3);
    let spec = request.spec.clone().unwrap();
    assert_eq!(spec.tenant, "acme");
    assert_eq!(spec.grace_period_days, 30);
    assert_eq!(spec.delete_after_days, Some(730));
    assert!(!spec.legal_hold);

    // The CronJob as applied.
    assert_eq!(cron["spec"]["schedule"], "30 2 * * *");
    assert_eq!(cron["spec"]["timeZone"], "Europe/Berlin");
    assert_eq!(cron["spec"]["suspend"], false);
    assert_eq!(cron["spec"]["concurrencyPolicy"], "Forbid");
    let pod = &cron["spec"]["jobTemplate"]["spec"]["template"];
    assert_eq!(pod["metadata"]["labels"]["mail.helpr.dev/plane"], "data");
    assert_eq!(pod["spec"]["serviceAccountName"], "helpr-sync-acme");
    assert_eq!(
        pod["spec"]["containers"][0]["args"],
        json!(["purge", "--tenant", "acme"])
    );
    assert_eq!(
        cron["metadata"]["ownerReferences"][0]["uid"],
        json!(policy.metadata.uid)
    );

    // Status: every condition True, times from the CronJob and the schedule.
    let status_body = &status["status"];
    assert_eq!(status_body["observedGeneration"], 3);
    for (type_, reason) in [
        (types::READY, reasons::RECONCILED),
        (types::DATA_PLANE_SYNCED, reasons::SYNCED),
        (types::PURGE_SCHEDULED, reasons::SCHEDULED),
    ] {
        let c = condition(&status, type_).unwrap();
        assert_eq!(c["status"], "True", "{type_}: {c}");
        assert_eq!(c["reason"], reason, "{type_}");
        assert_eq!(c["observedGeneration"], 3);
    }
    assert!(condition(&status, types::RECONCILING).is_none());
    assert!(condition(&status, types::STALLED).is_none());
    assert_eq!(status_body["lastPurgeTime"], "2026-03-01T01:42:10Z");
    let next: jiff::Timestamp = status_body["nextPurgeTime"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(next > jiff::Timestamp::now());
    // 02:30 in Berlin is 00:30 or 01:30 UTC.
    let utc = next.to_zoned(jiff::tz::TimeZone::UTC);
    assert_eq!(utc.minute(), 30);
    assert!(matches!(utc.hour(), 0 | 1), "{next}");
}

#[tokio::test]
async fn legal_hold_suspends_the_cron_job_and_ready_says_legal_hold() {
    let mut h = harness(FakeVault::default());
    let policy = policy().with_finalizer().with_legal_hold(true);
    let task = run(policy.clone(), &h);
    expect_tenant(&mut h, ready_tenant()).await;
    let cron = expect_children(&mut h, Value::Null).await;
    h.server
        .expect_event_about("RetentionPolicy", "Normal", reasons::LEGAL_HOLD)
        .await;
    let status = expect_status(&mut h, &policy).await;
    task.await.unwrap().unwrap();
    assert_eq!(cron["spec"]["suspend"], true);
    assert!(
        h.data_plane.retention_policies.lock().unwrap()[0]
            .spec
            .as_ref()
            .unwrap()
            .legal_hold
    );
    let scheduled = condition(&status, types::PURGE_SCHEDULED).unwrap();
    assert_eq!(scheduled["status"], "False");
    assert_eq!(scheduled["reason"], reasons::LEGAL_HOLD);
    let ready = condition(&status, types::READY).unwrap();
    assert_eq!(ready["status"], "True");
    assert_eq!(ready["reason"], reasons::LEGAL_HOLD);
    assert!(status["status"].get("nextPurgeTime").is_none());
}

#[tokio::test]
async fn a_policy_already_under_legal_hold_emits_no_new_event() {
    let mut h = harness(FakeVault::default());
    let policy = policy()
        .with_finalizer()
        .with_legal_hold(true)
        .with_condition(
            types::READY,
            helpr_crds::ConditionStatus::True,
            reasons::LEGAL_HOLD,
        );
    let task = run(policy.clone(), &h);
    expect_tenant(&mut h, ready_tenant()).await;
    expect_children(&mut h, Value::Null).await;
    // Straight to the status: no Event in between.
    let status = expect_status(&mut h, &policy).await;
    task.await.unwrap().unwrap();
    assert_eq!(
        condition(&status, types::READY).unwrap()["reason"],
        reasons::LEGAL_HOLD
    );
}

#[tokio::test]
async fn a_policy_waits_while_its_tenant_is_not_ready() {
    let mut h = harness(FakeVault::default());
    let policy = policy().with_finalizer();
    let task = run(policy.clone(), &h);
    let not_ready = Tenant::test("acme").with_condition(
        types::READY,
        helpr_crds::ConditionStatus::False,
        reasons::PROGRESSING,
    );
    expect_tenant(&mut h, Some(not_ready)).await;
    h.server
        .expect_event_about("RetentionPolicy", "Warning", reasons::TENANT_NOT_READY)
        .await;
    let status = expect_status(&mut h, &policy).await;
    let error = task.await.unwrap().unwrap_err();
    assert_eq!(error.category(), reasons::TENANT_NOT_READY);
    assert!(!error.is_permanent(), "retried with backoff");
    let ready = condition(&status, types::READY).unwrap();
    assert_eq!(ready["status"], "False");
    assert_eq!(ready["reason"], reasons::TENANT_NOT_READY);
    assert_eq!(
        condition(&status, types::RECONCILING).unwrap()["status"],
        "True"
    );
    assert!(condition(&status, types::STALLED).is_none());
    assert!(h.data_plane.calls.lock().unwrap().is_empty());
}

#[tokio::test]
async fn a_policy_of_a_missing_tenant_shows_tenant_not_found_and_is_retried() {
    let mut h = harness(FakeVault::default());
    let policy = policy().with_finalizer();
    let task = run(policy.clone(), &h);
    expect_tenant(&mut h, None).await;
    // No CronJob to suspend.
    h.server
        .expect(Method::PATCH, CRON_JOB, 404, Some(not_ok(404, "NotFound")))
        .await;
    h.server
        .expect_event_about("RetentionPolicy", "Warning", reasons::TENANT_NOT_FOUND)
        .await;
    let status = expect_status(&mut h, &policy).await;
    let error = task.await.unwrap().unwrap_err();
    assert_eq!(error.category(), reasons::TENANT_NOT_FOUND);
    assert_eq!(
        condition(&status, types::READY).unwrap()["reason"],
        reasons::TENANT_NOT_FOUND
    );
    assert_eq!(
        error_policy(Arc::new(policy), &error, h.ctx.clone()),
        Action::requeue(Duration::from_secs(5))
    );
    assert!(h.data_plane.calls.lock().unwrap().is_empty());
}

#[tokio::test]
async fn a_bad_schedule_stalls_with_the_cause_without_touching_anything() {
    let mut h = harness(FakeVault::default());
    let policy = policy().with_finalizer().with_schedule("0 25 * * *", None);
    let task = run(policy.clone(), &h);
    let event = h
        .server
        .expect_event_about("RetentionPolicy", "Warning", reasons::INVALID_SPEC)
        .await;
    let note = event.body["note"].as_str().unwrap().to_owned();
    assert!(note.contains("spec.purgeSchedule"), "{note}");
    assert!(note.contains("hour has 25, outside 0-23"), "{note}");
    let status = expect_status(&mut h, &policy).await;
    assert_eq!(task.await.unwrap().unwrap(), Action::await_change());
    let stalled = condition(&status, types::STALLED).unwrap();
    assert_eq!(stalled["status"], "True");
    assert_eq!(stalled["reason"], reasons::INVALID_SPEC);
    assert_eq!(
        condition(&status, types::READY).unwrap()["reason"],
        reasons::INVALID_SPEC
    );
    assert!(h.data_plane.calls.lock().unwrap().is_empty());
}

#[tokio::test]
async fn an_unknown_time_zone_stalls() {
    let mut h = harness(FakeVault::default());
    let policy = policy()
        .with_finalizer()
        .with_schedule("0 3 * * *", Some("Europe/Atlantis"));
    let task = run(policy.clone(), &h);
    let event = h
        .server
        .expect_event_about("RetentionPolicy", "Warning", reasons::INVALID_SPEC)
        .await;
    assert!(
        event.body["note"]
            .as_str()
            .unwrap()
            .contains("Europe/Atlantis")
    );
    let status = expect_status(&mut h, &policy).await;
    assert_eq!(task.await.unwrap().unwrap(), Action::await_change());
    assert_eq!(
        condition(&status, types::STALLED).unwrap()["status"],
        "True"
    );
    assert!(h.data_plane.calls.lock().unwrap().is_empty());
}

#[tokio::test]
async fn an_unavailable_data_plane_sets_data_plane_synced_false_and_is_retried() {
    let mut h = harness(FakeVault::default());
    h.data_plane.unavailable.store(true, Ordering::Relaxed);
    let policy = policy().with_finalizer();
    let task = run(policy.clone(), &h);
    expect_tenant(&mut h, ready_tenant()).await;
    let event = h
        .server
        .expect_event_about(
            "RetentionPolicy",
            "Warning",
            reasons::DATA_PLANE_UNAVAILABLE,
        )
        .await;
    assert!(
        event.body["note"]
            .as_str()
            .unwrap()
            .contains("database unreachable")
    );
    let status = expect_status(&mut h, &policy).await;
    let error = task.await.unwrap().unwrap_err();
    assert!(!error.is_permanent());
    let synced = condition(&status, types::DATA_PLANE_SYNCED).unwrap();
    assert_eq!(synced["status"], "False");
    assert_eq!(synced["reason"], reasons::DATA_PLANE_UNAVAILABLE);
    assert_eq!(
        condition(&status, types::READY).unwrap()["reason"],
        reasons::DATA_PLANE_UNAVAILABLE
    );
    // Nothing scheduled before the data plane holds the policy.
    assert_eq!(
        condition(&status, types::PURGE_SCHEDULED).unwrap()["status"],
        "Unknown"
    );
    assert_eq!(
        error_policy(Arc::new(policy), &error, h.ctx.clone()),
        Action::requeue(Duration::from_secs(5))
    );
}

#[tokio::test]
async fn a_stale_outcome_is_reported_not_scheduled_and_not_retried() {
    let mut h = harness(FakeVault::default());
    h.data_plane.stale.store(true, Ordering::Relaxed);
    let policy = policy().with_finalizer();
    let task = run(policy.clone(), &h);
    expect_tenant(&mut h, ready_tenant()).await;
    h.server
        .expect_event_about("RetentionPolicy", "Warning", DATA_PLANE_STALE)
        .await;
    // No CronJob apply: the status patch comes next.
    let status = expect_status(&mut h, &policy).await;
    assert_eq!(task.await.unwrap().unwrap(), Action::await_change());
    let synced = condition(&status, types::DATA_PLANE_SYNCED).unwrap();
    assert_eq!(synced["status"], "False");
    assert_eq!(synced["reason"], DATA_PLANE_STALE);
    assert_eq!(
        condition(&status, types::READY).unwrap()["reason"],
        DATA_PLANE_STALE
    );
}

#[tokio::test]
async fn a_second_policy_for_the_tenant_stalls_as_a_conflict_without_a_cron_job() {
    let mut h = harness(FakeVault::default());
    h.data_plane.policy_taken.store(true, Ordering::Relaxed);
    let policy = policy().with_finalizer();
    let task = run(policy.clone(), &h);
    expect_tenant(&mut h, ready_tenant()).await;
    let event = h
        .server
        .expect_event_about("RetentionPolicy", "Warning", reasons::CONFLICT)
        .await;
    let note = event.body["note"].as_str().unwrap();
    assert!(note.contains("one RetentionPolicy per tenant"), "{note}");
    let status = expect_status(&mut h, &policy).await;
    let error = task.await.unwrap().unwrap_err();
    assert_eq!(error.category(), reasons::CONFLICT);
    assert!(error.is_permanent());
    let stalled = condition(&status, types::STALLED).unwrap();
    assert_eq!(stalled["status"], "True");
    assert_eq!(stalled["reason"], reasons::CONFLICT);
    let synced = condition(&status, types::DATA_PLANE_SYNCED).unwrap();
    assert_eq!(synced["status"], "False");
    assert_eq!(synced["reason"], reasons::CONFLICT);
    assert!(condition(&status, types::RECONCILING).is_none());
    // Looked at again after the longest backoff: the other policy's deletion does not wake
    // this one.
    assert_eq!(
        error_policy(Arc::new(policy), &error, h.ctx.clone()),
        Action::requeue(Duration::from_secs(300))
    );
}

#[tokio::test]
async fn a_refused_cron_job_sets_purge_scheduled_false_and_is_retried() {
    let mut h = harness(FakeVault::default());
    let policy = policy().with_finalizer();
    let task = run(policy.clone(), &h);
    expect_tenant(&mut h, ready_tenant()).await;
    h.server
        .expect_apply_owned_by("RetentionPolicy", NETWORK_POLICY, Value::Null)
        .await;
    h.server
        .expect(Method::PATCH, CRON_JOB, 422, Some(not_ok(422, "Invalid")))
        .await;
    h.server
        .expect_event_about("RetentionPolicy", "Warning", "ApplyCronJobFailed")
        .await;
    let status = expect_status(&mut h, &policy).await;
    let error = task.await.unwrap().unwrap_err();
    assert!(!error.is_permanent());
    let scheduled = condition(&status, types::PURGE_SCHEDULED).unwrap();
    assert_eq!(scheduled["status"], "False");
    assert_eq!(scheduled["reason"], "ApplyCronJobFailed");
    assert!(
        scheduled["message"]
            .as_str()
            .unwrap()
            .contains("the server says Invalid")
    );
    // The data plane already holds the policy.
    assert_eq!(
        condition(&status, types::DATA_PLANE_SYNCED).unwrap()["status"],
        "True"
    );
}

async fn expect_finalizer_removed(h: &mut Harness, policy: &RetentionPolicy) {
    let seen = h
        .server
        .expect(
            Method::PATCH,
            &format!("{POLICIES}/acme"),
            200,
            Some(serde_json::to_value(policy.clone()).unwrap()),
        )
        .await;
    assert_eq!(seen.body.as_array().unwrap()[1]["op"], "remove");
}

#[tokio::test]
async fn deleting_a_policy_removes_it_from_the_data_plane_then_the_finalizer() {
    let mut h = harness(FakeVault::default());
    let policy = policy()
        .with_finalizer()
        .with_deleted_at(time(1_767_300_000));
    let task = run(policy.clone(), &h);
    h.server
        .expect_event_about("RetentionPolicy", "Normal", POLICY_REMOVED)
        .await;
    expect_finalizer_removed(&mut h, &policy).await;
    assert_eq!(task.await.unwrap().unwrap(), Action::await_change());
    let uid = policy.metadata.uid.clone().unwrap();
    assert_eq!(
        *h.data_plane.calls.lock().unwrap(),
        [format!("delete retention policy helpr-test/acme {uid}")]
    );
}

#[tokio::test]
async fn deleting_a_policy_the_data_plane_no_longer_has_is_done() {
    let mut h = harness(FakeVault::default());
    h.data_plane.gone.store(true, Ordering::Relaxed);
    let policy = policy()
        .with_finalizer()
        .with_deleted_at(time(1_767_300_000));
    let task = run(policy.clone(), &h);
    h.server
        .expect_event_about("RetentionPolicy", "Normal", POLICY_REMOVED)
        .await;
    expect_finalizer_removed(&mut h, &policy).await;
    assert_eq!(task.await.unwrap().unwrap(), Action::await_change());
}

#[tokio::test]
async fn deleting_an_invalid_policy_still_cleans_up() {
    let mut h = harness(FakeVault::default());
    let policy = policy()
        .with_finalizer()
        .with_schedule("garbage", None)
        .with_deleted_at(time(1_767_300_000));
    let task = run(policy.clone(), &h);
    h.server
        .expect_event_about("RetentionPolicy", "Normal", POLICY_REMOVED)
        .await;
    expect_finalizer_removed(&mut h, &policy).await;
    assert_eq!(task.await.unwrap().unwrap(), Action::await_change());
    assert_eq!(h.data_plane.calls.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn deletion_waits_while_the_data_plane_is_unavailable() {
    let mut h = harness(FakeVault::default());
    h.data_plane.unavailable.store(true, Ordering::Relaxed);
    let policy = policy()
        .with_finalizer()
        .with_deleted_at(time(1_767_300_000));
    let task = run(policy.clone(), &h);
    let event = h
        .server
        .expect_event_about(
            "RetentionPolicy",
            "Warning",
            reasons::DATA_PLANE_UNAVAILABLE,
        )
        .await;
    assert!(
        event.body["note"]
            .as_str()
            .unwrap()
            .starts_with("deletion waits: ")
    );
    // The finalizer stays: no further request.
    let error = task.await.unwrap().unwrap_err();
    assert_eq!(error.category(), reasons::DATA_PLANE_UNAVAILABLE);
    assert!(!error.is_permanent());
}

#[tokio::test]
async fn a_policy_takes_its_ready_tenant_from_the_shared_store_without_reading_it() {
    let mut h = harness(FakeVault::default());
    h.watched_tenant(ready_tenant().unwrap());
    let policy = policy().with_finalizer();
    let task = run(policy.clone(), &h);
    // No GET of the tenant: straight to the children.
    expect_children(&mut h, Value::Null).await;
    let status = expect_status(&mut h, &policy).await;
    task.await.unwrap().unwrap();
    assert_eq!(condition(&status, types::READY).unwrap()["status"], "True");
}

/// The Tenant went away (or is going) after its purges were scheduled: the CronJob is
/// suspended, so no purge runs against a tenant that does not exist, and the status says so.
#[tokio::test]
async fn purges_of_a_gone_or_deleting_tenant_are_suspended() {
    let deleting = {
        let mut t = Tenant::test("acme").with_ready();
        t.metadata.deletion_timestamp = Some(time(1_796_360_400));
        Some(t)
    };
    for (tenant, reason) in [
        (None, reasons::TENANT_NOT_FOUND),
        (deleting, super::TENANT_DELETING),
    ] {
        let mut h = harness(FakeVault::default());
        let policy = policy().with_finalizer();
        let task = run(policy.clone(), &h);
        expect_tenant(&mut h, tenant).await;
        let patch = h
            .server
            .expect(
                Method::PATCH,
                CRON_JOB,
                200,
                Some(json!({"kind": "CronJob"})),
            )
            .await;
        assert_eq!(patch.body, json!({"spec": {"suspend": true}}));
        assert!(
            patch.query.contains("fieldManager=helpr-operator"),
            "{}",
            patch.query
        );
        h.server
            .expect_event_about("RetentionPolicy", "Warning", reason)
            .await;
        let status = expect_status(&mut h, &policy).await;
        let error = task.await.unwrap().unwrap_err();
        assert_eq!(error.category(), reason);
        let scheduled = condition(&status, types::PURGE_SCHEDULED).unwrap();
        assert_eq!(scheduled["status"], "False");
        assert_eq!(scheduled["reason"], reason);
        assert!(
            scheduled["message"]
                .as_str()
                .unwrap()
                .contains("purges are suspended (CronJob helpr-purge-acme)"),
            "{scheduled}"
        );
        assert_eq!(condition(&status, types::READY).unwrap()["reason"], reason);
        assert!(h.data_plane.calls.lock().unwrap().is_empty());
    }
}

/// A failed suspension is reported and retried, never silently dropped.
#[tokio::test]
async fn a_failed_suspension_is_reported_and_retried() {
    let mut h = harness(FakeVault::default());
    let policy = policy().with_finalizer();
    let task = run(policy.clone(), &h);
    expect_tenant(&mut h, None).await;
    h.server
        .expect(
            Method::PATCH,
            CRON_JOB,
            500,
            Some(not_ok(500, "InternalError")),
        )
        .await;
    h.server
        .expect_event_about("RetentionPolicy", "Warning", "SuspendFailed")
        .await;
    let status = expect_status(&mut h, &policy).await;
    let error = task.await.unwrap().unwrap_err();
    assert_eq!(error.category(), "SuspendFailed");
    assert_eq!(
        condition(&status, types::READY).unwrap()["reason"],
        "SuspendFailed"
    );
}
