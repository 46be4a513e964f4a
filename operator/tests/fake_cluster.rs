//! The real `helpr-operator` binary against a fake apiserver (`helpr_tests::kube_fake`), a
//! real OpenBao dev server and the real control API over PostgreSQL: apply a Tenant, an
//! Inbox and an InboxGrant, see them become Ready and reach Vault and the data plane, take
//! the grant away, then delete the (Shred) tenant and see its key destroyed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::Duration;

use helpr_dataplane::ids::TenantId;
use helpr_tests::operator_env::{
    GRANTS, INBOXES, OperatorEnv, RETENTION_POLICIES, TENANTS, condition, is_ready,
};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(60);

fn operator() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_helpr-operator"))
}

fn inbox(namespace: &str, name: &str, tenant: &str) -> Value {
    json!({
        "apiVersion": "mail.helpr.dev/v1alpha1", "kind": "Inbox",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "tenantRef": {"name": tenant},
            "gmailAddress": format!("{name}@{tenant}.example"),
            "visibility": "Restricted",
            "pubSub": {"topic": format!("projects/helpr-test/topics/{name}"), "pushAudience": "https://ingest.example/push"},
        },
    })
}

fn grant(namespace: &str, name: &str, inbox: &str, agent: &str) -> Value {
    json!({
        "apiVersion": "mail.helpr.dev/v1alpha1", "kind": "InboxGrant",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "inboxRef": {"name": inbox},
            "subject": {"kind": "Agent", "name": agent},
            "role": "Reply",
        },
    })
}

fn ready(env: &OperatorEnv, collection: &str, namespace: &str, name: &str) -> bool {
    env.api
        .get(collection, namespace, name)
        .is_some_and(|o| is_ready(&o))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_inbox_and_grant_become_ready_reach_vault_and_the_data_plane_and_go_away_again() {
    let mut env = OperatorEnv::start(operator()).await.unwrap();
    env.vault_secret("acme");
    env.api
        .put(TENANTS, "acme", env.tenant("acme", "acme", "Shred"));
    env.api
        .put(INBOXES, "acme", inbox("acme", "support", "acme"));
    env.api.put(
        GRANTS,
        "acme",
        grant("acme", "support-alice", "support", "alice@acme.example"),
    );

    let result = env
        .wait_for("the tenant, inbox and grant to be Ready", WAIT, |env| {
            ready(env, TENANTS, "acme", "acme")
                && ready(env, INBOXES, "acme", "support")
                && ready(env, GRANTS, "acme", "support-alice")
        })
        .await;
    if let Err(error) = result {
        panic!(
            "{error}\ntenant: {:#}\ninbox: {:#}\ngrant: {:#}",
            env.api.get(TENANTS, "acme", "acme").unwrap_or_default()["status"],
            env.api.get(INBOXES, "acme", "support").unwrap_or_default()["status"],
            env.api
                .get(GRANTS, "acme", "support-alice")
                .unwrap_or_default()["status"],
        );
    }

    // The Kubernetes children of the tenant exist and are the operator's.
    let tenant = env.api.get(TENANTS, "acme", "acme").unwrap();
    assert!(condition(&tenant, "Reconciling").is_none(), "{tenant:#}");
    let deployments = env.api.list("apps/v1/deployments");
    assert_eq!(
        deployments.len(),
        1,
        "one sync Deployment: {deployments:#?}"
    );
    let args = deployments[0]
        .pointer("/spec/template/spec/containers/0/args")
        .unwrap()
        .to_string();
    assert!(args.contains("sync") && args.contains("acme"), "{args}");
    assert!(
        !env.api
            .list("networking.k8s.io/v1/networkpolicies")
            .is_empty()
    );
    assert!(!env.api.list("/v1/serviceaccounts").is_empty());
    // Events were published.
    assert!(
        env.api
            .requests()
            .keys()
            .any(|k| k.starts_with("POST events.k8s.io/v1/events")),
        "{:?}",
        env.api.requests()
    );

    // Vault has the tenant's transit key.
    let keys = env.bao.api("LIST", "transit/keys", None).await.unwrap();
    assert!(keys.to_string().contains("acme"), "{keys}");

    // The data plane has the tenant, the inbox and the grant.
    let id = TenantId::new("acme").unwrap();
    assert!(env.store.tenant_settings(&id).await.unwrap().is_some());
    assert!(
        env.store
            .inbox_settings("acme", "support")
            .await
            .unwrap()
            .is_some()
    );
    // With the Pub/Sub topic the sync worker registers the push watch on.
    let synced = env
        .store
        .inbox_sync_status("acme", "support")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        synced.pubsub_topic.as_deref(),
        Some("projects/helpr-test/topics/support")
    );
    assert_eq!(
        env.store.list_grants_for_tenant(&id).await.unwrap().len(),
        1
    );

    // A RetentionPolicy reaches the data plane and schedules the purge CronJob.
    env.api.put(
        RETENTION_POLICIES,
        "acme",
        json!({
            "apiVersion": "mail.helpr.dev/v1alpha1", "kind": "RetentionPolicy",
            "metadata": {"name": "acme", "namespace": "acme"},
            "spec": {
                "tenantRef": {"name": "acme"},
                "gracePeriodDays": 30,
                "purgeSchedule": "30 2 * * *",
                "timeZone": "Europe/Berlin",
            },
        }),
    );
    env.wait_for("the retention policy to be Ready", WAIT, |env| {
        ready(env, RETENTION_POLICIES, "acme", "acme")
    })
    .await
    .unwrap();
    let policy = env.store.retention_policy(&id).await.unwrap().unwrap();
    assert_eq!(policy.grace_period_days, 30);
    let cron_jobs = env.api.list("batch/v1/cronjobs");
    assert_eq!(cron_jobs.len(), 1, "{cron_jobs:#?}");
    assert_eq!(cron_jobs[0]["spec"]["schedule"], "30 2 * * *");
    let args = cron_jobs[0]
        .pointer("/spec/jobTemplate/spec/template/spec/containers/0/args")
        .unwrap()
        .to_string();
    assert!(args.contains("purge") && args.contains("acme"), "{args}");

    // Taking the grant away reaches the data plane before the object goes.
    assert!(env.api.delete(GRANTS, "acme", "support-alice"));
    env.wait_for("the grant to be gone", WAIT, |env| {
        env.api.get(GRANTS, "acme", "support-alice").is_none()
    })
    .await
    .unwrap();
    assert!(
        env.store
            .list_grants_for_tenant(&id)
            .await
            .unwrap()
            .is_empty()
    );

    // Deleting the inbox and the Shred tenant destroys the key and the tenant's data.
    assert!(env.api.delete(RETENTION_POLICIES, "acme", "acme"));
    assert!(env.api.delete(INBOXES, "acme", "support"));
    assert!(env.api.delete(TENANTS, "acme", "acme"));
    env.wait_for("the tenant to be gone", WAIT, |env| {
        env.api.get(TENANTS, "acme", "acme").is_none()
            && env.api.get(INBOXES, "acme", "support").is_none()
            && env.api.get(RETENTION_POLICIES, "acme", "acme").is_none()
    })
    .await
    .unwrap();
    assert!(env.store.tenant_settings(&id).await.unwrap().is_none());
    let keys = env.bao.api("LIST", "transit/keys", None).await;
    assert!(
        keys.as_ref()
            .map_or(true, |k| !k.to_string().contains("acme")),
        "{keys:?}"
    );
    // The sync Deployment and the purge CronJob went with their owners.
    assert!(env.api.list("apps/v1/deployments").is_empty());
    assert!(env.api.list("batch/v1/cronjobs").is_empty());

    assert!(
        env.shutdown().await.unwrap(),
        "the operator exits cleanly on SIGTERM"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_whose_sync_pods_are_not_available_is_not_ready_and_says_why() {
    let mut env = OperatorEnv::start(operator()).await.unwrap();
    env.api.hold_deployments(true);
    env.vault_secret("globex");
    env.api
        .put(TENANTS, "globex", env.tenant("globex", "globex", "Retain"));
    env.wait_for("the tenant to report its sync workers", WAIT, |env| {
        env.api
            .get(TENANTS, "globex", "globex")
            .and_then(|t| condition(&t, "Ready").cloned())
            .is_some_and(|c| c["status"] == "False")
    })
    .await
    .unwrap();
    let tenant = env.api.get(TENANTS, "globex", "globex").unwrap();
    assert!(!is_ready(&tenant));
    let ready = condition(&tenant, "Ready").unwrap();
    assert!(
        ready["message"]
            .as_str()
            .unwrap_or_default()
            .contains("sync"),
        "{ready:#}"
    );
    // Once the pods are available, it becomes Ready.
    env.api.hold_deployments(false);
    let deployment = env.api.list("apps/v1/deployments").remove(0);
    env.api.put("apps/v1/deployments", "globex", deployment);
    env.wait_for("the tenant to be Ready", WAIT, ready_tenant)
        .await
        .unwrap();
    assert!(env.shutdown().await.unwrap());
}

fn ready_tenant(env: &OperatorEnv) -> bool {
    ready(env, TENANTS, "globex", "globex")
}
