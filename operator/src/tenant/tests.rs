//! Reconcile flows against a scripted mock apiserver (kube's tower-test pattern, as in
//! kube-rs/controller-rs's `fixtures.rs`): every request the controller makes is checked in
//! order (method, path, field manager, body) and answered from the script. Vault and the
//! data plane are fakes that record their calls.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use helpr_crds::conditions::{reasons, types};
use helpr_crds::tenant::DeletionPolicy;
use helpr_crds::testing::{Fixture, time};
use helpr_crds::{Inbox, RetentionPolicy, Tenant};
use http::{Method, Request, Response};
use kube::client::Body;
use kube::runtime::controller::Action;
use kube::runtime::events::Recorder;
use kube::runtime::reflector::store::Writer;
use serde_json::{Value, json};

use super::reconcile::{Context, DataPlane, Parents, VaultProvisioner, reconcile};
use super::{TenantError, ValidTenant};
use crate::control::{ApplyResult, ControlError, proto};
use crate::metrics::Metrics;
use crate::settings::tests::settings;

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

/// Records what the controller asked Vault to do.
#[derive(Default)]
pub(crate) struct FakeVault {
    calls: Mutex<Vec<String>>,
    fail_provision: bool,
    fail_shred: bool,
}

#[async_trait]
impl VaultProvisioner for FakeVault {
    async fn provision(&self, tenant: &ValidTenant) -> Result<(), TenantError> {
        self.calls
            .lock()
            .unwrap()
            .push(format!("provision {}", tenant.vault.key.as_str()));
        if self.fail_provision {
            return Err(TenantError::ProvisionKms {
                tenant: tenant.id.as_str().to_owned(),
                source: helpr_dataplane::kms::KmsError::Denied { backend: "vault" },
            });
        }
        Ok(())
    }
    async fn retain(&self, tenant: &ValidTenant) -> Result<(), TenantError> {
        self.calls
            .lock()
            .unwrap()
            .push(format!("retain {}", tenant.vault.access.role));
        Ok(())
    }
    async fn shred(&self, tenant: &ValidTenant) -> Result<(), TenantError> {
        self.calls
            .lock()
            .unwrap()
            .push(format!("shred {}", tenant.vault.key.as_str()));
        if self.fail_shred {
            return Err(TenantError::ShredKms {
                tenant: tenant.id.as_str().to_owned(),
                source: helpr_dataplane::kms::KmsError::Unavailable {
                    backend: "vault",
                    reason: "connection refused".to_owned(),
                },
            });
        }
        Ok(())
    }
}

/// Records what the controller told the data plane (shared with the Inbox and InboxGrant
/// controllers' tests).
#[derive(Default)]
pub(crate) struct FakeDataPlane {
    pub(crate) calls: Mutex<Vec<String>>,
    pub(crate) unavailable: std::sync::atomic::AtomicBool,
    /// Answer upserts of inboxes and grants with STALE (the data plane has generation 9).
    pub(crate) stale: std::sync::atomic::AtomicBool,
    /// Answer deletes of inboxes and grants with NOT_FOUND.
    pub(crate) gone: std::sync::atomic::AtomicBool,
    pub(crate) inboxes: Mutex<Vec<proto::UpsertInboxRequest>>,
    pub(crate) grants: Mutex<Vec<proto::UpsertGrantRequest>>,
    pub(crate) retention_policies: Mutex<Vec<proto::UpsertRetentionPolicyRequest>>,
    /// Answer upserts of retention policies with ALREADY_EXISTS (another object owns the
    /// tenant's policy).
    pub(crate) policy_taken: std::sync::atomic::AtomicBool,
    /// What `GetInboxStatus` answers; `None`: a pending inbox of the requested name.
    pub(crate) inbox_status: Mutex<Option<proto::InboxStatus>>,
    /// Answer `GetInboxStatus` with UNAVAILABLE (upserts still succeed).
    pub(crate) status_unavailable: std::sync::atomic::AtomicBool,
}

impl FakeDataPlane {
    fn answer(&self, generation: i64) -> Result<ApplyResult, ControlError> {
        use std::sync::atomic::Ordering::Relaxed;
        if self.unavailable.load(Relaxed) {
            return Err(ControlError::Unavailable("database unreachable".to_owned()));
        }
        if self.stale.load(Relaxed) {
            return Ok(ApplyResult {
                outcome: proto::Outcome::Stale,
                applied_generation: 9,
            });
        }
        Ok(ApplyResult {
            outcome: proto::Outcome::Applied,
            applied_generation: generation,
        })
    }

    fn deleted(&self, kind: &str, meta: &proto::ObjectMeta) -> Result<ApplyResult, ControlError> {
        self.calls.lock().unwrap().push(format!(
            "delete {kind} {}/{} {}",
            meta.namespace, meta.name, meta.uid
        ));
        if self.gone.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(ControlError::NotFound(format!(
                "{kind} {} not found",
                meta.name
            )));
        }
        self.answer(meta.generation)
    }
}

#[async_trait]
impl DataPlane for FakeDataPlane {
    async fn upsert_tenant(&self, tenant: &ValidTenant) -> Result<ApplyResult, ControlError> {
        self.calls.lock().unwrap().push(format!(
            "upsert {} g{}",
            tenant.id.as_str(),
            tenant.generation
        ));
        if self.unavailable.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(ControlError::Unavailable("database unreachable".to_owned()));
        }
        Ok(ApplyResult {
            outcome: proto::Outcome::Applied,
            applied_generation: tenant.generation,
        })
    }
    async fn delete_tenant(&self, tenant: &ValidTenant) -> Result<ApplyResult, ControlError> {
        self.calls
            .lock()
            .unwrap()
            .push(format!("delete {}", tenant.id.as_str()));
        Ok(ApplyResult {
            outcome: proto::Outcome::Applied,
            applied_generation: tenant.generation,
        })
    }
    async fn upsert_inbox(
        &self,
        request: proto::UpsertInboxRequest,
    ) -> Result<ApplyResult, ControlError> {
        let meta = request.meta.clone().unwrap_or_default();
        self.calls.lock().unwrap().push(format!(
            "upsert inbox {}/{} g{}",
            meta.namespace, meta.name, meta.generation
        ));
        self.inboxes.lock().unwrap().push(request);
        self.answer(meta.generation)
    }
    async fn delete_inbox(&self, meta: proto::ObjectMeta) -> Result<ApplyResult, ControlError> {
        self.deleted("inbox", &meta)
    }
    async fn upsert_grant(
        &self,
        request: proto::UpsertGrantRequest,
    ) -> Result<ApplyResult, ControlError> {
        let meta = request.meta.clone().unwrap_or_default();
        self.calls.lock().unwrap().push(format!(
            "upsert grant {}/{} g{}",
            meta.namespace, meta.name, meta.generation
        ));
        self.grants.lock().unwrap().push(request);
        self.answer(meta.generation)
    }
    async fn delete_grant(&self, meta: proto::ObjectMeta) -> Result<ApplyResult, ControlError> {
        self.deleted("grant", &meta)
    }
    async fn upsert_retention_policy(
        &self,
        request: proto::UpsertRetentionPolicyRequest,
    ) -> Result<ApplyResult, ControlError> {
        let meta = request.meta.clone().unwrap_or_default();
        self.calls.lock().unwrap().push(format!(
            "upsert retention policy {}/{} g{}",
            meta.namespace, meta.name, meta.generation
        ));
        self.retention_policies.lock().unwrap().push(request);
        if self.policy_taken.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(ControlError::from(tonic::Status::already_exists(format!(
                "RetentionPolicy {}/{}: tenant acme already has a retention policy from another object",
                meta.namespace, meta.name
            ))));
        }
        self.answer(meta.generation)
    }
    async fn delete_retention_policy(
        &self,
        meta: proto::ObjectMeta,
    ) -> Result<ApplyResult, ControlError> {
        self.deleted("retention policy", &meta)
    }
    async fn inbox_status(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<proto::InboxStatus, ControlError> {
        self.calls
            .lock()
            .unwrap()
            .push(format!("inbox status {namespace}/{name}"));
        if self.unavailable.load(std::sync::atomic::Ordering::Relaxed)
            || self
                .status_unavailable
                .load(std::sync::atomic::Ordering::Relaxed)
        {
            return Err(ControlError::Unavailable("database unreachable".to_owned()));
        }
        // The identity of the last upsert of that name, as the data plane records it.
        let applied = self
            .inboxes
            .lock()
            .unwrap()
            .iter()
            .rev()
            .filter_map(|r| r.meta.clone())
            .find(|m| m.namespace == namespace && m.name == name)
            .ok_or_else(|| ControlError::NotFound(format!("Inbox {namespace}/{name}")))?;
        let mut status = self
            .inbox_status
            .lock()
            .unwrap()
            .clone()
            .unwrap_or_else(|| proto::InboxStatus {
                connection_state: proto::ConnectionState::Pending.into(),
                connection_message: "waiting for the first sync with Gmail".into(),
                ..Default::default()
            });
        status.uid = applied.uid;
        status.applied_generation = applied.generation;
        Ok(status)
    }
}

pub(crate) struct Harness {
    pub(crate) ctx: Arc<Context>,
    vault: Arc<FakeVault>,
    pub(crate) data_plane: Arc<FakeDataPlane>,
    pub(crate) server: ApiServer,
    /// The Tenant controller's store, as its watch fills it (empty until a test does).
    pub(crate) tenants: Writer<Tenant>,
    /// The Inbox controller's store (empty until a test fills it).
    pub(crate) inboxes: Writer<Inbox>,
}

impl Harness {
    /// Puts `tenant` into the shared Tenant store, as the Tenant controller's watch would.
    pub(crate) fn watched_tenant(&mut self, tenant: Tenant) {
        self.tenants
            .apply_watcher_event(&kube::runtime::watcher::Event::Apply(tenant));
    }

    /// Puts `inbox` into the shared Inbox store, as the Inbox controller's watch would.
    pub(crate) fn watched_inbox(&mut self, inbox: Inbox) {
        self.inboxes
            .apply_watcher_event(&kube::runtime::watcher::Event::Apply(inbox));
    }
}

pub(crate) fn harness(vault: FakeVault) -> Harness {
    harness_with(vault, settings())
}

/// [`harness`] with other operator settings.
pub(crate) fn harness_with(
    vault: FakeVault,
    settings: crate::settings::OperatorSettings,
) -> Harness {
    harness_full(vault, settings, None)
}

/// [`harness_with`], the operator holding the index role's secret when `index_secret` is set.
fn harness_full(
    vault: FakeVault,
    settings: crate::settings::OperatorSettings,
    index_secret: Option<Arc<helpr_dataplane::search::index_auth::IndexSecret>>,
) -> Harness {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(service, "default");
    let vault = Arc::new(vault);
    let data_plane = Arc::new(FakeDataPlane::default());
    let tenants = Writer::<Tenant>::default();
    let inboxes = Writer::<Inbox>::default();
    let mut ctx = Context::new(
        client.clone(),
        Recorder::new(client, "helpr-operator".into()),
        settings,
        vault.clone(),
        data_plane.clone(),
        Arc::new(Metrics::default()),
        Parents {
            tenants: tenants.as_reader(),
            inboxes: inboxes.as_reader(),
        },
    );
    if let Some(secret) = index_secret {
        ctx = ctx.with_index_secret(secret);
    }
    let ctx = Arc::new(ctx);
    Harness {
        ctx,
        vault,
        data_plane,
        server: ApiServer(handle),
        tenants,
        inboxes,
    }
}

/// One request the script expects and its answer.
pub(crate) struct Seen {
    pub(crate) path: String,
    pub(crate) query: String,
    pub(crate) body: Value,
}

pub(crate) struct ApiServer(Handle);

const TENANTS: &str = "/apis/mail.helpr.dev/v1alpha1/namespaces/helpr-test/tenants";
const EVENTS: &str = "/apis/events.k8s.io/v1/namespaces/helpr-test/events";

impl ApiServer {
    /// Waits for the next request, checks its method and path, answers `status` + `body`
    /// (`None`: echo the request body).
    pub(crate) async fn expect(
        &mut self,
        method: Method,
        path: &str,
        status: u16,
        body: Option<Value>,
    ) -> Seen {
        let (request, send) = tokio::time::timeout(Duration::from_secs(5), self.0.next_request())
            .await
            .unwrap_or_else(|_| panic!("timed out waiting for {method} {path}"))
            .unwrap_or_else(|| panic!("client gone before {method} {path}"));
        assert_eq!(request.method(), method, "method of {}", request.uri());
        assert_eq!(request.uri().path(), path);
        let query = request.uri().query().unwrap_or_default().to_owned();
        let bytes = request.into_body().collect_bytes().await.unwrap();
        let seen: Value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap()
        };
        let answer = body.unwrap_or_else(|| seen.clone());
        send.send_response(
            Response::builder()
                .status(status)
                .body(Body::from(serde_json::to_vec(&answer).unwrap()))
                .unwrap(),
        );
        Seen {
            path: path.to_owned(),
            query,
            body: seen,
        }
    }

    /// Checks that the controller made no further request.
    pub(crate) async fn expect_nothing(&mut self) {
        if let Ok(Some((request, _))) =
            tokio::time::timeout(Duration::from_millis(100), self.0.next_request()).await
        {
            panic!("unexpected {} {}", request.method(), request.uri());
        }
    }

    /// The cluster-wide list of Tenants named `acme` (the uniqueness check).
    async fn expect_namesakes(&mut self, items: Vec<Tenant>) {
        let list = json!({
            "apiVersion": "mail.helpr.dev/v1alpha1", "kind": "TenantList",
            "metadata": {"resourceVersion": "9"}, "items": items,
        });
        let seen = self
            .expect(
                Method::GET,
                "/apis/mail.helpr.dev/v1alpha1/tenants",
                200,
                Some(list),
            )
            .await;
        assert!(
            seen.query.contains("fieldSelector=metadata.name%3Dacme"),
            "{}",
            seen.query
        );
    }

    async fn expect_event(&mut self, type_: &str, reason: &str) -> Seen {
        self.expect_event_about("Tenant", type_, reason).await
    }

    /// An Event of `type_` and `reason` about an object of `kind`.
    pub(crate) async fn expect_event_about(
        &mut self,
        kind: &str,
        type_: &str,
        reason: &str,
    ) -> Seen {
        let seen = self.expect(Method::POST, EVENTS, 201, None).await;
        assert_eq!(seen.body["type"], type_, "{}", seen.body);
        assert_eq!(seen.body["reason"], reason, "{}", seen.body);
        assert_eq!(seen.body["regarding"]["kind"], kind);
        seen
    }

    /// A server-side apply of a child, with the operator's field manager, forced.
    async fn expect_apply(&mut self, path: &str) -> Seen {
        self.expect_apply_answering(path, Value::Null).await
    }

    /// Like [`Self::expect_apply`], answering the applied object with `status`.
    async fn expect_apply_answering(&mut self, path: &str, status: Value) -> Seen {
        self.expect_apply_owned_by("Tenant", path, status).await
    }

    /// A server-side apply of a child owned by an object of `owner_kind`, answered with
    /// the applied object and `status`.
    pub(crate) async fn expect_apply_owned_by(
        &mut self,
        owner_kind: &str,
        path: &str,
        status: Value,
    ) -> Seen {
        let (request, send) = tokio::time::timeout(Duration::from_secs(5), self.0.next_request())
            .await
            .expect("timed out waiting for an apply")
            .expect("client gone");
        assert_eq!(request.method(), Method::PATCH);
        assert_eq!(request.uri().path(), path);
        let query = request.uri().query().unwrap_or_default().to_owned();
        let bytes = request.into_body().collect_bytes().await.unwrap();
        let body: Value = serde_json::from_slice(&bytes).unwrap();
        let mut answer = body.clone();
        answer["metadata"]["generation"] = json!(1);
        if !status.is_null() {
            answer["status"] = status;
        }
        send.send_response(
            Response::builder()
                .status(200)
                .body(Body::from(serde_json::to_vec(&answer).unwrap()))
                .unwrap(),
        );
        let seen = Seen {
            path: path.to_owned(),
            query,
            body,
        };
        assert!(
            seen.query.contains("fieldManager=helpr-operator"),
            "{}: {}",
            seen.path,
            seen.query
        );
        assert!(seen.query.contains("force=true"), "{}", seen.query);
        assert_eq!(
            seen.body["metadata"]["ownerReferences"][0]["kind"], owner_kind,
            "{}",
            seen.body
        );
        seen
    }

    async fn expect_status(&mut self, tenant: &Tenant, status: u16) -> Seen {
        let answer = if status == 200 {
            serde_json::to_value(tenant).unwrap()
        } else {
            not_ok(status, "Conflict")
        };
        let seen = self
            .expect(
                Method::PATCH,
                &format!("{TENANTS}/acme/status"),
                status,
                Some(answer),
            )
            .await;
        assert!(seen.query.contains("fieldManager=helpr-operator"));
        assert!(seen.query.contains("force=true"));
        assert_eq!(seen.body["kind"], "Tenant");
        seen
    }
}

pub(crate) fn not_ok(code: u16, reason: &str) -> Value {
    json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": format!("the server says {reason}"), "reason": reason, "code": code,
    })
}

pub(crate) fn condition<'a>(status_body: &'a Value, type_: &str) -> Option<&'a Value> {
    status_body["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == type_)
}

async fn run(tenant: Tenant, h: &Harness) -> tokio::task::JoinHandle<Result<Action, TenantError>> {
    let ctx = h.ctx.clone();
    tokio::spawn(async move { reconcile(Arc::new(tenant), ctx).await })
}

#[tokio::test]
async fn a_new_tenant_gets_the_finalizer_and_nothing_else() {
    let mut h = harness(FakeVault::default());
    let tenant = Tenant::test("acme");
    let task = run(tenant.clone(), &h).await;
    let answer = serde_json::to_value(tenant.clone().with_finalizer()).unwrap();
    let seen = h
        .server
        .expect(Method::PATCH, &format!("{TENANTS}/acme"), 200, Some(answer))
        .await;
    let ops = seen.body.as_array().unwrap();
    assert_eq!(ops[0]["op"], "test");
    assert_eq!(ops[1]["op"], "add");
    assert_eq!(ops[1]["path"], "/metadata/finalizers");
    assert_eq!(ops[1]["value"], json!(["tenant.mail.helpr.dev/cleanup"]));
    assert_eq!(task.await.unwrap().unwrap(), Action::await_change());
    assert!(h.vault.calls.lock().unwrap().is_empty());
    assert!(h.data_plane.calls.lock().unwrap().is_empty());
}

/// The script of the children's server-side applies; the Deployment answers with all its
/// workers available.
async fn expect_children(server: &mut ApiServer) {
    expect_children_with(server, 1).await;
}

async fn expect_children_with(server: &mut ApiServer, available: i32) {
    server
        .expect_apply("/api/v1/namespaces/helpr-test/serviceaccounts/helpr-sync-acme")
        .await;
    let np = server
        .expect_apply(
            "/apis/networking.k8s.io/v1/namespaces/helpr-test/networkpolicies/helpr-sync-acme",
        )
        .await;
    assert_eq!(np.body["kind"], "NetworkPolicy");
    assert_eq!(np.body["apiVersion"], "networking.k8s.io/v1");
    let deployment = server
        .expect_apply_answering(
            "/apis/apps/v1/namespaces/helpr-test/deployments/helpr-sync-acme",
            json!({"observedGeneration": 1, "availableReplicas": available}),
        )
        .await;
    assert_eq!(deployment.body["kind"], "Deployment");
    assert_eq!(
        deployment.body["spec"]["template"]["spec"]["containers"][0]["args"],
        json!(["sync", "--tenant", "acme"])
    );
}

#[tokio::test]
async fn a_tenant_with_the_finalizer_gets_its_children_applied_and_ready_status() {
    let mut h = harness(FakeVault::default());
    let tenant = Tenant::test("acme").with_finalizer().with_generation(2);
    let task = run(tenant.clone(), &h).await;
    h.server.expect_namesakes(vec![]).await;
    h.server
        .expect_event("Normal", reasons::KEY_PROVISIONED)
        .await;
    expect_children(&mut h.server).await;
    let status = h.server.expect_status(&tenant, 200).await;
    assert_eq!(
        task.await.unwrap().unwrap(),
        Action::requeue(Duration::from_secs(300))
    );

    assert_eq!(status.body["status"]["observedGeneration"], 2);
    assert_eq!(status.body["status"]["transitKeyName"], "helpr-tenant-acme");
    let ready = condition(&status.body, types::READY).unwrap();
    assert_eq!(ready["status"], "True");
    assert_eq!(ready["reason"], reasons::RECONCILED);
    assert_eq!(ready["observedGeneration"], 2);
    assert_eq!(
        condition(&status.body, types::KMS_PROVISIONED).unwrap()["status"],
        "True"
    );
    let synced = condition(&status.body, types::DATA_PLANE_SYNCED).unwrap();
    assert_eq!(synced["status"], "True");
    assert_eq!(synced["reason"], reasons::SYNCED);
    assert!(condition(&status.body, types::RECONCILING).is_none());
    assert!(condition(&status.body, types::STALLED).is_none());

    assert_eq!(
        *h.vault.calls.lock().unwrap(),
        ["provision helpr-tenant-acme"]
    );
    assert_eq!(*h.data_plane.calls.lock().unwrap(), ["upsert acme g2"]);
}

/// Holding the index role's secret, the operator applies the tenant's index-token Secret
/// before the Deployment that mounts it.
#[tokio::test]
async fn the_index_token_secret_is_applied_before_the_workers_that_mount_it() {
    use helpr_dataplane::search::index_auth::{IndexScope, IndexSecret};
    let secret = Arc::new(IndexSecret::new(
        b"the index role's secret, 32 bytes or more",
    ));
    let mut h = harness_full(FakeVault::default(), settings(), Some(secret.clone()));
    let tenant = Tenant::test("acme").with_finalizer().with_generation(2);
    let task = run(tenant.clone(), &h).await;
    h.server.expect_namesakes(vec![]).await;
    h.server
        .expect_event("Normal", reasons::KEY_PROVISIONED)
        .await;
    h.server
        .expect_apply("/api/v1/namespaces/helpr-test/serviceaccounts/helpr-sync-acme")
        .await;
    h.server
        .expect_apply(
            "/apis/networking.k8s.io/v1/namespaces/helpr-test/networkpolicies/helpr-sync-acme",
        )
        .await;
    let applied = h
        .server
        .expect_apply("/api/v1/namespaces/helpr-test/secrets/helpr-sync-acme-index-token")
        .await;
    assert_eq!(applied.body["kind"], "Secret");
    use base64::Engine as _;
    let token = base64::engine::general_purpose::STANDARD
        .decode(applied.body["data"]["token"].as_str().unwrap())
        .unwrap();
    assert_eq!(
        secret.verify(&token),
        Some(IndexScope::Tenant(
            helpr_dataplane::ids::TenantId::new("acme").unwrap()
        ))
    );
    let deployment = h
        .server
        .expect_apply_answering(
            "/apis/apps/v1/namespaces/helpr-test/deployments/helpr-sync-acme",
            json!({"observedGeneration": 1, "availableReplicas": 1}),
        )
        .await;
    let pod = &deployment.body["spec"]["template"]["spec"];
    assert!(
        pod["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|v| v["secret"]["secretName"] == "helpr-sync-acme-index-token"),
        "{pod}"
    );
    h.server.expect_status(&tenant, 200).await;
    assert!(task.await.unwrap().is_ok());
}

#[tokio::test]
async fn an_already_provisioned_tenant_emits_no_new_provisioning_event() {
    let mut h = harness(FakeVault::default());
    let tenant = Tenant::test("acme")
        .with_finalizer()
        .with_ready()
        .with_condition(
            types::KMS_PROVISIONED,
            helpr_crds::ConditionStatus::True,
            reasons::KEY_PROVISIONED,
        );
    let task = run(tenant.clone(), &h).await;
    h.server.expect_namesakes(vec![]).await;
    // Straight to the children: no Event.
    expect_children(&mut h.server).await;
    let status = h.server.expect_status(&tenant, 200).await;
    task.await.unwrap().unwrap();
    // The unchanged Ready keeps its lastTransitionTime.
    let ready = condition(&status.body, types::READY).unwrap();
    assert_eq!(ready["lastTransitionTime"], "1970-01-01T00:00:00Z");
}

#[tokio::test]
async fn a_status_conflict_is_retried() {
    let mut h = harness(FakeVault::default());
    let tenant = Tenant::test("acme").with_finalizer();
    let task = run(tenant.clone(), &h).await;
    h.server.expect_namesakes(vec![]).await;
    h.server
        .expect_event("Normal", reasons::KEY_PROVISIONED)
        .await;
    expect_children(&mut h.server).await;
    h.server.expect_status(&tenant, 409).await;
    let second = h.server.expect_status(&tenant, 200).await;
    assert_eq!(
        condition(&second.body, types::READY).unwrap()["status"],
        "True"
    );
    assert!(task.await.unwrap().is_ok());
}

#[tokio::test]
async fn repeated_status_conflicts_fail_the_reconcile_for_a_backoff_retry() {
    let mut h = harness(FakeVault::default());
    let tenant = Tenant::test("acme").with_finalizer();
    let task = run(tenant.clone(), &h).await;
    h.server.expect_namesakes(vec![]).await;
    h.server
        .expect_event("Normal", reasons::KEY_PROVISIONED)
        .await;
    expect_children(&mut h.server).await;
    for _ in 0..3 {
        h.server.expect_status(&tenant, 409).await;
    }
    let error = task.await.unwrap().unwrap_err();
    assert_eq!(error.category(), "StatusUpdateFailed");
    assert!(!error.is_permanent());
    let action = super::error_policy(Arc::new(tenant), &error, h.ctx.clone());
    assert_eq!(action, Action::requeue(Duration::from_secs(5)));
    assert_eq!(h.ctx.metrics.failures("StatusUpdateFailed"), 1);
}

#[tokio::test]
async fn an_invalid_spec_stalls_with_a_reason_and_a_warning_event() {
    let mut h = harness(FakeVault::default());
    let tenant = Tenant::test("acme").with_finalizer().with_replicas(99);
    let task = run(tenant.clone(), &h).await;
    let event = h
        .server
        .expect_event("Warning", reasons::INVALID_SPEC)
        .await;
    assert!(
        event.body["note"]
            .as_str()
            .unwrap()
            .contains("spec.sync.replicas"),
        "{}",
        event.body
    );
    let status = h.server.expect_status(&tenant, 200).await;
    // No hot loop: wait for the Tenant to change.
    assert_eq!(task.await.unwrap().unwrap(), Action::await_change());
    let stalled = condition(&status.body, types::STALLED).unwrap();
    assert_eq!(stalled["status"], "True");
    assert_eq!(stalled["reason"], reasons::INVALID_SPEC);
    let ready = condition(&status.body, types::READY).unwrap();
    assert_eq!(ready["status"], "False");
    assert_eq!(ready["reason"], reasons::INVALID_SPEC);
    assert!(
        ready["message"]
            .as_str()
            .unwrap()
            .contains("spec.sync.replicas")
    );
    assert!(h.vault.calls.lock().unwrap().is_empty());
    assert!(h.data_plane.calls.lock().unwrap().is_empty());
    assert_eq!(h.ctx.metrics.failures(reasons::INVALID_SPEC), 1);
}

#[tokio::test]
async fn a_vault_refusal_sets_kms_provisioned_false_and_applies_nothing() {
    let mut h = harness(FakeVault {
        fail_provision: true,
        ..FakeVault::default()
    });
    let tenant = Tenant::test("acme").with_finalizer();
    let task = run(tenant.clone(), &h).await;
    h.server.expect_namesakes(vec![]).await;
    h.server
        .expect_event("Warning", reasons::KMS_AUTH_FAILED)
        .await;
    let status = h.server.expect_status(&tenant, 200).await;
    let error = task.await.unwrap().unwrap_err();
    assert_eq!(error.category(), reasons::KMS_AUTH_FAILED);
    let kms = condition(&status.body, types::KMS_PROVISIONED).unwrap();
    assert_eq!(kms["status"], "False");
    // The cause is in the message, so a user can act on it.
    assert!(
        kms["message"]
            .as_str()
            .unwrap()
            .contains("denied the request"),
        "{kms}"
    );
    assert_eq!(kms["reason"], reasons::KMS_AUTH_FAILED);
    assert_eq!(
        condition(&status.body, types::READY).unwrap()["status"],
        "False"
    );
    assert_eq!(
        condition(&status.body, types::RECONCILING).unwrap()["status"],
        "True"
    );
    // The data plane heard nothing; no secret appears anywhere in the status.
    assert!(h.data_plane.calls.lock().unwrap().is_empty());
}

#[tokio::test]
async fn retain_deletion_treats_a_missing_deployment_as_done_and_removes_the_finalizer() {
    let mut h = harness(FakeVault::default());
    let tenant = Tenant::test("acme")
        .with_finalizer()
        .with_deleted_at(time(1_800_000_000));
    let task = run(tenant.clone(), &h).await;
    let deleting = h.server.expect_status(&tenant, 200).await;
    assert_eq!(
        condition(&deleting.body, types::READY).unwrap()["reason"],
        reasons::DELETING
    );
    assert_eq!(
        condition(&deleting.body, types::RECONCILING).unwrap()["status"],
        "True"
    );
    h.server.expect_namesakes(vec![]).await;
    h.server
        .expect(
            Method::DELETE,
            "/apis/apps/v1/namespaces/helpr-test/deployments/helpr-sync-acme",
            404,
            Some(not_ok(404, "NotFound")),
        )
        .await;
    h.server.expect_event("Normal", "Retained").await;
    let answer = serde_json::to_value(&tenant).unwrap();
    let seen = h
        .server
        .expect(Method::PATCH, &format!("{TENANTS}/acme"), 200, Some(answer))
        .await;
    let ops = seen.body.as_array().unwrap();
    assert_eq!(ops[0]["op"], "test");
    assert_eq!(ops[0]["value"], "tenant.mail.helpr.dev/cleanup");
    assert_eq!(ops[1]["op"], "remove");
    assert_eq!(ops[1]["path"], "/metadata/finalizers/0");
    task.await.unwrap().unwrap();
    assert_eq!(*h.vault.calls.lock().unwrap(), ["retain helpr-sync-acme"]);
    assert_eq!(*h.data_plane.calls.lock().unwrap(), ["delete acme"]);
}

fn policy_list(items: Vec<RetentionPolicy>) -> Value {
    json!({
        "apiVersion": "mail.helpr.dev/v1alpha1",
        "kind": "RetentionPolicyList",
        "metadata": {"resourceVersion": "7"},
        "items": items,
    })
}

#[tokio::test]
async fn shred_deletion_destroys_the_key_and_asks_the_data_plane_to_drop_the_tenant() {
    let mut h = harness(FakeVault::default());
    let tenant = Tenant::test("acme")
        .with_deletion_policy(DeletionPolicy::Shred)
        .with_finalizer()
        .with_deleted_at(time(1_800_000_000));
    let task = run(tenant.clone(), &h).await;
    let deleting = h.server.expect_status(&tenant, 200).await;
    assert_eq!(
        condition(&deleting.body, types::READY).unwrap()["reason"],
        reasons::DELETING
    );
    assert_eq!(
        condition(&deleting.body, types::RECONCILING).unwrap()["status"],
        "True"
    );
    h.server.expect_namesakes(vec![]).await;
    // Another tenant's legal hold does not hold this one.
    let other = RetentionPolicy::test("other", "globex").with_legal_hold(true);
    h.server
        .expect(
            Method::GET,
            "/apis/mail.helpr.dev/v1alpha1/namespaces/helpr-test/retentionpolicies",
            200,
            Some(policy_list(vec![other])),
        )
        .await;
    let deployment = json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "helpr-sync-acme", "namespace": "helpr-test"},
        "spec": {"selector": {}, "template": {}},
    });
    h.server
        .expect(
            Method::DELETE,
            "/apis/apps/v1/namespaces/helpr-test/deployments/helpr-sync-acme",
            200,
            Some(deployment),
        )
        .await;
    h.server.expect_event("Normal", "Shredded").await;
    h.server
        .expect(
            Method::PATCH,
            &format!("{TENANTS}/acme"),
            200,
            Some(serde_json::to_value(&tenant).unwrap()),
        )
        .await;
    task.await.unwrap().unwrap();
    assert_eq!(*h.vault.calls.lock().unwrap(), ["shred helpr-tenant-acme"]);
    assert_eq!(*h.data_plane.calls.lock().unwrap(), ["delete acme"]);
}

#[tokio::test]
async fn shred_waits_while_a_retention_policy_of_the_tenant_has_legal_hold() {
    let mut h = harness(FakeVault::default());
    let tenant = Tenant::test("acme")
        .with_deletion_policy(DeletionPolicy::Shred)
        .with_finalizer()
        .with_deleted_at(time(1_800_000_000));
    let task = run(tenant.clone(), &h).await;
    let deleting = h.server.expect_status(&tenant, 200).await;
    assert_eq!(
        condition(&deleting.body, types::READY).unwrap()["reason"],
        reasons::DELETING
    );
    assert_eq!(
        condition(&deleting.body, types::RECONCILING).unwrap()["status"],
        "True"
    );
    h.server.expect_namesakes(vec![]).await;
    let held = RetentionPolicy::test("acme-retention", "acme").with_legal_hold(true);
    h.server
        .expect(
            Method::GET,
            "/apis/mail.helpr.dev/v1alpha1/namespaces/helpr-test/retentionpolicies",
            200,
            Some(policy_list(vec![held])),
        )
        .await;
    let event = h.server.expect_event("Warning", reasons::LEGAL_HOLD).await;
    assert!(
        event.body["note"]
            .as_str()
            .unwrap()
            .contains("acme-retention")
    );
    let error = task.await.unwrap().unwrap_err();
    assert_eq!(error.category(), reasons::LEGAL_HOLD);
    // Nothing destroyed, the finalizer stays (no PATCH was scripted).
    assert!(h.vault.calls.lock().unwrap().is_empty());
    assert!(h.data_plane.calls.lock().unwrap().is_empty());
}

#[test]
fn backoff_doubles_from_five_seconds_to_five_minutes() {
    use super::reconcile::backoff;
    assert_eq!(backoff(1), Duration::from_secs(5));
    assert_eq!(backoff(2), Duration::from_secs(10));
    assert_eq!(backoff(4), Duration::from_secs(40));
    assert_eq!(backoff(30), Duration::from_secs(300));
}

fn namesake_in(namespace: &str, created: i64) -> Tenant {
    let mut other = Tenant::test("acme").with_namespace(namespace);
    other.metadata.uid = Some(format!("uid-{namespace}"));
    other.metadata.creation_timestamp = Some(time(created));
    other
}

#[tokio::test]
async fn a_younger_tenant_with_a_taken_name_stalls_before_touching_vault() {
    let mut h = harness(FakeVault::default());
    let tenant = Tenant::test("acme").with_finalizer();
    let task = run(tenant.clone(), &h).await;
    // The fixture was created at 1 767 225 600; the namesake a day earlier.
    h.server
        .expect_namesakes(vec![tenant.clone(), namesake_in("team-b", 1_767_139_200)])
        .await;
    let event = h.server.expect_event("Warning", reasons::CONFLICT).await;
    assert!(event.body["note"].as_str().unwrap().contains("team-b"));
    let status = h.server.expect_status(&tenant, 200).await;
    assert_eq!(
        task.await.unwrap().unwrap(),
        Action::requeue(Duration::from_secs(300))
    );
    let stalled = condition(&status.body, types::STALLED).unwrap();
    assert_eq!(stalled["reason"], reasons::CONFLICT);
    assert_eq!(
        condition(&status.body, types::READY).unwrap()["status"],
        "False"
    );
    assert!(h.vault.calls.lock().unwrap().is_empty());
    assert!(h.data_plane.calls.lock().unwrap().is_empty());
}

#[tokio::test]
async fn the_oldest_tenant_of_a_name_is_served_despite_a_younger_namesake() {
    let mut h = harness(FakeVault::default());
    let tenant = Tenant::test("acme").with_finalizer();
    let task = run(tenant.clone(), &h).await;
    h.server
        .expect_namesakes(vec![tenant.clone(), namesake_in("team-b", 1_800_000_000)])
        .await;
    h.server
        .expect_event("Normal", reasons::KEY_PROVISIONED)
        .await;
    expect_children(&mut h.server).await;
    h.server.expect_status(&tenant, 200).await;
    task.await.unwrap().unwrap();
    assert_eq!(
        *h.vault.calls.lock().unwrap(),
        ["provision helpr-tenant-acme"]
    );
}

#[tokio::test]
async fn deleting_a_duplicate_shreds_nothing_of_the_real_tenant() {
    let mut h = harness(FakeVault::default());
    let tenant = Tenant::test("acme")
        .with_deletion_policy(DeletionPolicy::Shred)
        .with_finalizer()
        .with_deleted_at(time(1_800_000_000));
    let task = run(tenant.clone(), &h).await;
    let deleting = h.server.expect_status(&tenant, 200).await;
    assert_eq!(
        condition(&deleting.body, types::READY).unwrap()["reason"],
        reasons::DELETING
    );
    assert_eq!(
        condition(&deleting.body, types::RECONCILING).unwrap()["status"],
        "True"
    );
    h.server
        .expect_namesakes(vec![namesake_in("team-b", 1_700_000_000)])
        .await;
    h.server.expect_event("Normal", "DuplicateDeleted").await;
    h.server
        .expect(
            Method::PATCH,
            &format!("{TENANTS}/acme"),
            200,
            Some(serde_json::to_value(&tenant).unwrap()),
        )
        .await;
    task.await.unwrap().unwrap();
    assert!(h.vault.calls.lock().unwrap().is_empty());
    assert!(h.data_plane.calls.lock().unwrap().is_empty());
}

#[tokio::test]
async fn ready_waits_for_the_sync_workers_to_be_available() {
    let mut h = harness(FakeVault::default());
    let tenant = Tenant::test("acme").with_finalizer().with_replicas(2);
    let task = run(tenant.clone(), &h).await;
    h.server.expect_namesakes(vec![]).await;
    h.server
        .expect_event("Normal", reasons::KEY_PROVISIONED)
        .await;
    expect_children_with(&mut h.server, 1).await;
    let status = h.server.expect_status(&tenant, 200).await;
    assert_eq!(
        task.await.unwrap().unwrap(),
        Action::requeue(Duration::from_secs(60))
    );
    let ready = condition(&status.body, types::READY).unwrap();
    assert_eq!(ready["status"], "False");
    assert_eq!(ready["reason"], reasons::PROGRESSING);
    assert!(
        ready["message"]
            .as_str()
            .unwrap()
            .contains("1 of 2 sync workers")
    );
    assert_eq!(
        condition(&status.body, types::RECONCILING).unwrap()["status"],
        "True"
    );
    assert_eq!(
        condition(&status.body, types::DATA_PLANE_SYNCED).unwrap()["status"],
        "True"
    );
    assert_eq!(
        condition(&status.body, types::KMS_PROVISIONED).unwrap()["status"],
        "True"
    );
}

#[tokio::test]
async fn a_failed_shred_keeps_the_finalizer_warns_and_tells_the_data_plane_nothing() {
    let mut h = harness(FakeVault {
        fail_shred: true,
        ..FakeVault::default()
    });
    let tenant = Tenant::test("acme")
        .with_deletion_policy(DeletionPolicy::Shred)
        .with_finalizer()
        .with_deleted_at(time(1_800_000_000));
    let task = run(tenant.clone(), &h).await;
    let deleting = h.server.expect_status(&tenant, 200).await;
    assert_eq!(
        condition(&deleting.body, types::READY).unwrap()["reason"],
        reasons::DELETING
    );
    assert_eq!(
        condition(&deleting.body, types::RECONCILING).unwrap()["status"],
        "True"
    );
    h.server.expect_namesakes(vec![]).await;
    h.server
        .expect(
            Method::GET,
            "/apis/mail.helpr.dev/v1alpha1/namespaces/helpr-test/retentionpolicies",
            200,
            Some(policy_list(vec![])),
        )
        .await;
    h.server
        .expect(
            Method::DELETE,
            "/apis/apps/v1/namespaces/helpr-test/deployments/helpr-sync-acme",
            404,
            Some(not_ok(404, "NotFound")),
        )
        .await;
    h.server
        .expect_event("Warning", reasons::KMS_UNAVAILABLE)
        .await;
    let error = task.await.unwrap().unwrap_err();
    assert_eq!(error.category(), reasons::KMS_UNAVAILABLE);
    assert!(!error.is_permanent());
    assert!(h.data_plane.calls.lock().unwrap().is_empty());
}

#[tokio::test]
async fn an_unavailable_data_plane_sets_data_plane_synced_false_and_is_retried() {
    let mut h = harness(FakeVault::default());
    h.data_plane
        .unavailable
        .store(true, std::sync::atomic::Ordering::Relaxed);
    let tenant = Tenant::test("acme").with_finalizer();
    let task = run(tenant.clone(), &h).await;
    h.server.expect_namesakes(vec![]).await;
    h.server
        .expect_event("Normal", reasons::KEY_PROVISIONED)
        .await;
    expect_children(&mut h.server).await;
    let event = h
        .server
        .expect_event("Warning", reasons::DATA_PLANE_UNAVAILABLE)
        .await;
    assert!(
        event.body["note"]
            .as_str()
            .unwrap()
            .contains("database unreachable")
    );
    let status = h.server.expect_status(&tenant, 200).await;
    let error = task.await.unwrap().unwrap_err();
    assert!(!error.is_permanent());
    let synced = condition(&status.body, types::DATA_PLANE_SYNCED).unwrap();
    assert_eq!(synced["status"], "False");
    assert_eq!(synced["reason"], reasons::DATA_PLANE_UNAVAILABLE);
    assert_eq!(
        condition(&status.body, types::KMS_PROVISIONED).unwrap()["status"],
        "True"
    );
    assert_eq!(
        condition(&status.body, types::READY).unwrap()["status"],
        "False"
    );
}

#[tokio::test]
async fn a_tenant_woken_again_at_its_generation_skips_vault_the_data_plane_and_an_unchanged_status()
{
    let mut h = harness(FakeVault::default());
    let tenant = Tenant::test("acme").with_finalizer();
    let task = run(tenant.clone(), &h).await;
    h.server.expect_namesakes(vec![]).await;
    h.server
        .expect_event("Normal", reasons::KEY_PROVISIONED)
        .await;
    expect_children(&mut h.server).await;
    let status = h.server.expect_status(&tenant, 200).await;
    task.await.unwrap().unwrap();

    // Woken by its own status write (or a child): the uniqueness check and the children
    // run again; Vault and the data plane are not asked again and the status, which would
    // not change, is not written.
    let mut ready = tenant.clone();
    ready.status = Some(serde_json::from_value(status.body["status"].clone()).unwrap());
    let task = run(ready.clone(), &h).await;
    h.server.expect_namesakes(vec![]).await;
    expect_children(&mut h.server).await;
    assert_eq!(
        task.await.unwrap().unwrap(),
        Action::requeue(Duration::from_secs(300))
    );
    h.server.expect_nothing().await;
    assert_eq!(
        *h.vault.calls.lock().unwrap(),
        ["provision helpr-tenant-acme"]
    );
    assert_eq!(*h.data_plane.calls.lock().unwrap(), ["upsert acme g1"]);

    // A new generation is checked for real.
    let changed = ready.clone().with_generation(2);
    let task = run(changed.clone(), &h).await;
    h.server.expect_namesakes(vec![]).await;
    expect_children(&mut h.server).await;
    let status = h.server.expect_status(&changed, 200).await;
    task.await.unwrap().unwrap();
    assert_eq!(status.body["status"]["observedGeneration"], 2);
    assert_eq!(
        *h.vault.calls.lock().unwrap(),
        ["provision helpr-tenant-acme", "provision helpr-tenant-acme"]
    );
    assert_eq!(
        *h.data_plane.calls.lock().unwrap(),
        ["upsert acme g1", "upsert acme g2"]
    );
}

#[tokio::test]
async fn a_ready_tenant_this_process_has_not_checked_is_checked_in_vault_and_the_data_plane() {
    // E.g. after a restart of the operator: the status alone never stands for a check.
    let mut h = harness(FakeVault::default());
    let tenant = Tenant::test("acme")
        .with_finalizer()
        .with_ready()
        .with_condition(
            types::KMS_PROVISIONED,
            helpr_crds::ConditionStatus::True,
            reasons::KEY_PROVISIONED,
        )
        .with_condition(
            types::DATA_PLANE_SYNCED,
            helpr_crds::ConditionStatus::True,
            reasons::SYNCED,
        );
    let task = run(tenant.clone(), &h).await;
    h.server.expect_namesakes(vec![]).await;
    expect_children(&mut h.server).await;
    h.server.expect_status(&tenant, 200).await;
    task.await.unwrap().unwrap();
    assert_eq!(
        *h.vault.calls.lock().unwrap(),
        ["provision helpr-tenant-acme"]
    );
    assert_eq!(*h.data_plane.calls.lock().unwrap(), ["upsert acme g1"]);
}

#[tokio::test]
async fn a_failed_data_plane_call_voids_the_confirmation() {
    let mut h = harness(FakeVault::default());
    let tenant = Tenant::test("acme").with_finalizer();
    let task = run(tenant.clone(), &h).await;
    h.server.expect_namesakes(vec![]).await;
    h.server
        .expect_event("Normal", reasons::KEY_PROVISIONED)
        .await;
    expect_children(&mut h.server).await;
    let status = h.server.expect_status(&tenant, 200).await;
    task.await.unwrap().unwrap();
    let mut ready = tenant.clone();
    ready.status = Some(serde_json::from_value(status.body["status"].clone()).unwrap());

    // A later real check fails: its status no longer says DataPlaneSynced, so the next
    // reconcile checks again instead of trusting the earlier confirmation.
    h.data_plane
        .unavailable
        .store(true, std::sync::atomic::Ordering::Relaxed);
    let mut failing = ready.clone();
    failing
        .status
        .as_mut()
        .unwrap()
        .conditions
        .retain(|c| c.type_ != types::DATA_PLANE_SYNCED);
    let task = run(failing.clone(), &h).await;
    h.server.expect_namesakes(vec![]).await;
    // The apiserver's copy says the same: checked for real.
    h.server
        .expect(
            Method::GET,
            &format!("{TENANTS}/acme"),
            200,
            Some(serde_json::to_value(&failing).unwrap()),
        )
        .await;
    expect_children(&mut h.server).await;
    h.server
        .expect_event("Warning", reasons::DATA_PLANE_UNAVAILABLE)
        .await;
    h.server.expect_status(&failing, 200).await;
    assert!(task.await.unwrap().is_err());
    assert_eq!(h.vault.calls.lock().unwrap().len(), 2);
    assert_eq!(h.ctx.confirmed.len(), 0);
}

#[tokio::test]
async fn a_copy_older_than_the_last_check_is_read_again_instead_of_checking_vault_again() {
    let mut h = harness(FakeVault::default());
    let tenant = Tenant::test("acme").with_finalizer();
    let task = run(tenant.clone(), &h).await;
    h.server.expect_namesakes(vec![]).await;
    h.server
        .expect_event("Normal", reasons::KEY_PROVISIONED)
        .await;
    expect_children(&mut h.server).await;
    let status = h.server.expect_status(&tenant, 200).await;
    task.await.unwrap().unwrap();
    let mut current = tenant.clone();
    current.status = Some(serde_json::from_value(status.body["status"].clone()).unwrap());

    // Woken by a child before the status write reached the store: the copy has no status.
    let task = run(tenant.clone(), &h).await;
    h.server.expect_namesakes(vec![]).await;
    h.server
        .expect(
            Method::GET,
            &format!("{TENANTS}/acme"),
            200,
            Some(serde_json::to_value(&current).unwrap()),
        )
        .await;
    expect_children(&mut h.server).await;
    assert_eq!(
        task.await.unwrap().unwrap(),
        Action::requeue(Duration::from_secs(300))
    );
    // The current status is already what this reconcile found: nothing written.
    h.server.expect_nothing().await;
    assert_eq!(h.vault.calls.lock().unwrap().len(), 1);
    assert_eq!(*h.data_plane.calls.lock().unwrap(), ["upsert acme g1"]);
}
