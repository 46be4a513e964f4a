//! Apply and cleanup of a Tenant, behind kube-runtime's `finalizer()`.
//!
//! - **apply**: validate → Vault provisioning ([`VaultProvisioner`]) → server-side apply of
//!   the children (field manager `helpr-operator`, forced) → the data plane's tenant record
//!   ([`DataPlane`]) → status (server-side apply on the status subresource). A failed step
//!   writes Ready=False with the step's reason, emits a Warning Event and returns the error
//!   (requeued with backoff by [`error_policy`]). A validation failure writes Stalled=True
//!   and waits for a change of the Tenant (no requeue loop).
//! - **cleanup** (`deletionPolicy`): Retain deletes the sync Deployment, removes the sync
//!   role and policy from Vault (the key stays) and asks the data plane to stop the tenant;
//!   Shred waits while a RetentionPolicy of the tenant has `legalHold`, then deletes the
//!   Deployment, destroys the transit key (crypto-shredding) and asks the data plane to drop
//!   the tenant's data and index. Every step treats "already gone" (404) as done.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use helpr_crds::conditions::{Condition, ConditionStatus, reasons, types};
use helpr_crds::tenant::DeletionPolicy;
use helpr_crds::{HelprResource, Inbox, RetentionPolicy, StatusConditions, Tenant, TenantStatus};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Secret, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::children::{FIELD_MANAGER, build};
use super::{TenantError, ValidTenant, validate};
use crate::confirmed::{Basis, Confirmations};
use crate::control::{ApplyResult, ControlClient, ControlError, proto};
use crate::metrics::Metrics;
use crate::settings::OperatorSettings;
use helpr_dataplane::search::index_auth::IndexSecret;

/// Periodic re-check of a Ready tenant (Vault objects can drift outside Kubernetes).
pub const RESYNC_INTERVAL: Duration = Duration::from_secs(300);
/// Longest wait between retries of a failing tenant, and the wait of a legal hold.
pub const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// First wait after a failure; doubled per consecutive failure.
pub const MIN_BACKOFF: Duration = Duration::from_secs(5);
/// Attempts of a status write that meets a conflict.
const STATUS_ATTEMPTS: usize = 3;

/// The tenant's Vault, as the controller uses it (the real one is
/// [`crate::tenant::kms::KubeVault`]; tests count calls on a fake).
#[async_trait]
pub trait VaultProvisioner: Send + Sync {
    /// Creates or confirms the transit key, the sync policy and the Kubernetes-auth role.
    async fn provision(&self, tenant: &ValidTenant) -> Result<(), TenantError>;
    /// `Retain`: removes the role and policy, keeps the key.
    async fn retain(&self, tenant: &ValidTenant) -> Result<(), TenantError>;
    /// `Shred`: removes the role and policy and destroys the key.
    async fn shred(&self, tenant: &ValidTenant) -> Result<(), TenantError>;
}

/// The data plane's tenant record (the real one is [`ControlClient`]).
#[async_trait]
pub trait DataPlane: Send + Sync {
    /// Creates or updates the tenant at the Tenant's generation.
    async fn upsert_tenant(&self, tenant: &ValidTenant) -> Result<ApplyResult, ControlError>;
    /// Deletes the tenant with the policy of its last upsert (RETAIN stops it, SHRED drops
    /// its data and index).
    async fn delete_tenant(&self, tenant: &ValidTenant) -> Result<ApplyResult, ControlError>;
    /// Creates or updates an inbox at the Inbox's generation.
    async fn upsert_inbox(
        &self,
        request: proto::UpsertInboxRequest,
    ) -> Result<ApplyResult, ControlError>;
    /// Disconnects an inbox and removes its grants (its mail stays until the lifecycle
    /// module's soft delete exists).
    async fn delete_inbox(&self, meta: proto::ObjectMeta) -> Result<ApplyResult, ControlError>;
    /// Creates or updates a grant at the InboxGrant's generation.
    async fn upsert_grant(
        &self,
        request: proto::UpsertGrantRequest,
    ) -> Result<ApplyResult, ControlError>;
    /// Revokes a grant.
    async fn delete_grant(&self, meta: proto::ObjectMeta) -> Result<ApplyResult, ControlError>;
    /// Creates or updates a tenant's retention policy at the RetentionPolicy's generation
    /// (ALREADY_EXISTS when another object owns the tenant's policy).
    async fn upsert_retention_policy(
        &self,
        request: proto::UpsertRetentionPolicyRequest,
    ) -> Result<ApplyResult, ControlError>;
    /// Removes a tenant's retention policy (nothing is purged without one).
    async fn delete_retention_policy(
        &self,
        meta: proto::ObjectMeta,
    ) -> Result<ApplyResult, ControlError>;
    /// The connection and sync state of the inbox an Inbox object manages (NOT_FOUND when
    /// the data plane has no live Inbox of that name).
    async fn inbox_status(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<proto::InboxStatus, ControlError>;
}

fn object_meta(tenant: &ValidTenant) -> proto::ObjectMeta {
    proto::ObjectMeta {
        namespace: tenant.namespace.clone(),
        name: tenant.id.as_str().to_owned(),
        uid: tenant.uid.clone(),
        generation: tenant.generation,
    }
}

#[async_trait]
impl DataPlane for ControlClient {
    async fn upsert_tenant(&self, tenant: &ValidTenant) -> Result<ApplyResult, ControlError> {
        let spec = proto::TenantSpec {
            display_name: tenant.display_name.clone(),
            deletion_policy: match tenant.deletion_policy {
                DeletionPolicy::Retain => proto::DeletionPolicy::Retain,
                DeletionPolicy::Shred => proto::DeletionPolicy::Shred,
            }
            .into(),
            search_mode: match tenant.search_mode {
                helpr_crds::tenant::SearchMode::Blind => proto::SearchMode::Blind,
                helpr_crds::tenant::SearchMode::Plaintext => proto::SearchMode::Plaintext,
            }
            .into(),
        };
        let request = proto::UpsertTenantRequest {
            meta: Some(object_meta(tenant)),
            spec: Some(spec),
        };
        ControlClient::upsert_tenant(&mut self.clone(), request).await
    }

    async fn delete_tenant(&self, tenant: &ValidTenant) -> Result<ApplyResult, ControlError> {
        ControlClient::delete_tenant(&mut self.clone(), object_meta(tenant)).await
    }

    async fn upsert_inbox(
        &self,
        request: proto::UpsertInboxRequest,
    ) -> Result<ApplyResult, ControlError> {
        ControlClient::upsert_inbox(&mut self.clone(), request).await
    }

    async fn delete_inbox(&self, meta: proto::ObjectMeta) -> Result<ApplyResult, ControlError> {
        ControlClient::delete_inbox(&mut self.clone(), meta).await
    }

    async fn upsert_grant(
        &self,
        request: proto::UpsertGrantRequest,
    ) -> Result<ApplyResult, ControlError> {
        ControlClient::upsert_grant(&mut self.clone(), request).await
    }

    async fn delete_grant(&self, meta: proto::ObjectMeta) -> Result<ApplyResult, ControlError> {
        ControlClient::delete_grant(&mut self.clone(), meta).await
    }

    async fn upsert_retention_policy(
        &self,
        request: proto::UpsertRetentionPolicyRequest,
    ) -> Result<ApplyResult, ControlError> {
        ControlClient::upsert_retention_policy(&mut self.clone(), request).await
    }

    async fn delete_retention_policy(
        &self,
        meta: proto::ObjectMeta,
    ) -> Result<ApplyResult, ControlError> {
        ControlClient::delete_retention_policy(&mut self.clone(), meta).await
    }

    async fn inbox_status(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<proto::InboxStatus, ControlError> {
        ControlClient::inbox_status(&mut self.clone(), namespace, name).await
    }
}

/// The control API's identity of a namespaced object (namespace, name, uid, generation).
pub fn meta_of<K: Resource>(object: &K) -> proto::ObjectMeta {
    let meta = object.meta();
    proto::ObjectMeta {
        namespace: meta.namespace.clone().unwrap_or_default(),
        name: meta.name.clone().unwrap_or_default(),
        uid: meta.uid.clone().unwrap_or_default(),
        generation: meta.generation.unwrap_or(0),
    }
}

/// The controllers' reflector stores of the kinds other objects refer to: the Tenant
/// controller's Tenants (parents of Inboxes and RetentionPolicies) and the Inbox
/// controller's Inboxes (parents of InboxGrants). See [`parent_of`].
#[derive(Clone)]
pub struct Parents {
    pub tenants: Store<Tenant>,
    pub inboxes: Store<Inbox>,
}

/// What every reconcile shares.
pub struct Context {
    pub client: kube::Client,
    pub recorder: Recorder,
    pub settings: OperatorSettings,
    pub vault: Arc<dyn VaultProvisioner>,
    pub data_plane: Arc<dyn DataPlane>,
    pub metrics: Arc<Metrics>,
    pub parents: Parents,
    /// What Vault and the data plane last confirmed per object (see [`crate::confirmed`]).
    pub confirmed: Confirmations,
    /// Consecutive failures per tenant (`namespace/name`), for the backoff.
    failures: Mutex<HashMap<String, u32>>,
    /// The index role's secret, when the operator gives tenants index-role tokens.
    index_secret: Option<Arc<IndexSecret>>,
}

impl Context {
    pub fn new(
        client: kube::Client,
        recorder: Recorder,
        settings: OperatorSettings,
        vault: Arc<dyn VaultProvisioner>,
        data_plane: Arc<dyn DataPlane>,
        metrics: Arc<Metrics>,
        parents: Parents,
    ) -> Self {
        Self {
            client,
            recorder,
            settings,
            vault,
            data_plane,
            metrics,
            parents,
            confirmed: Confirmations::default(),
            failures: Mutex::new(HashMap::new()),
            index_secret: None,
        }
    }

    /// Gives each tenant an index-role token made with `secret` (a Secret its data-plane
    /// pods mount; see [`super::children::index_token_secret`]).
    pub fn with_index_secret(mut self, secret: Arc<IndexSecret>) -> Self {
        self.settings.index_tokens = true;
        self.index_secret = Some(secret);
        self
    }

    pub(crate) fn note_success(&self, key: &str) {
        if let Ok(mut f) = self.failures.lock() {
            f.remove(key);
        }
    }

    /// Records a failure; returns the wait before the next attempt.
    pub(crate) fn note_failure(&self, key: &str) -> Duration {
        let n = self
            .failures
            .lock()
            .map(|mut f| {
                let n = f.entry(key.to_owned()).or_default();
                *n = n.saturating_add(1);
                *n
            })
            .unwrap_or(1);
        backoff(n)
    }
}

/// The object `name` in `namespace` that another object refers to (its parent), as the
/// reconcile decides on it: the store's copy when `usable` accepts it (e.g. a Tenant that is
/// Ready there); otherwise, or when the store does not have it, a read from the apiserver.
/// The store can lag behind the watch event that woke the reconcile (the parent just
/// became Ready and the store has not applied that yet), so it never has the last word on
/// a parent being absent or not usable.
pub async fn parent_of<K>(
    client: &kube::Client,
    store: &Store<K>,
    namespace: &str,
    name: &str,
    usable: impl Fn(&K) -> bool,
) -> Result<Option<Arc<K>>, kube::Error>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug,
{
    if let Some(cached) = store.get(&ObjectRef::new(name).within(namespace))
        && usable(&cached)
    {
        return Ok(Some(cached));
    }
    let api: Api<K> = Api::namespaced(client.clone(), namespace);
    Ok(api.get_opt(name).await?.map(Arc::new))
}

/// The object as the apiserver has it now, when the copy being reconciled is likely older
/// than this process's last successful check of it: that check is recent (at `basis`) but
/// its outcome (`evidence`, read from the status) is missing from `object`, as when the
/// reconcile was woken (by a child, a parent) before the status write of the last one had
/// reached the store. One read instead of checking Vault and the data plane again. `None`
/// otherwise, or when the read fails or finds another incarnation or generation, or no
/// evidence either: the reconcile then checks for real.
pub(crate) async fn fresher_copy<K>(
    ctx: &Context,
    object: &K,
    basis: Basis,
    evidence: impl Fn(&K) -> bool,
) -> Option<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug,
{
    if evidence(object) || !ctx.confirmed.is_recent(object, basis) {
        return None;
    }
    let api: Api<K> = Api::namespaced(ctx.client.clone(), &object.namespace()?);
    let fresh = api.get_opt(&object.name_any()).await.ok()??;
    let same = fresh.meta().uid == object.meta().uid
        && fresh.meta().generation == object.meta().generation;
    (same && evidence(&fresh)).then_some(fresh)
}

/// Whether the Tenant's status shows Vault and the data plane confirmed at its generation.
fn tenant_confirmed_in_status(tenant: &Tenant) -> bool {
    is_true_at_generation(tenant, types::KMS_PROVISIONED)
        && is_true_at_generation(tenant, types::DATA_PLANE_SYNCED)
}

/// The wait after `failures` consecutive failures: 5 s doubling up to 5 minutes.
pub fn backoff(failures: u32) -> Duration {
    let exp = failures.saturating_sub(1).min(16);
    MIN_BACKOFF.saturating_mul(1u32 << exp).min(MAX_BACKOFF)
}

fn key_of(tenant: &Tenant) -> String {
    object_key(tenant)
}

/// `namespace/name` of an object, for logs, messages and the backoff.
pub fn object_key<K: Resource>(object: &K) -> String {
    format!(
        "{}/{}",
        object.namespace().unwrap_or_default(),
        object.name_any()
    )
}

/// Reconciles one Tenant: adds the finalizer, then [`apply`] or, once deleted, [`cleanup`].
pub async fn reconcile(tenant: Arc<Tenant>, ctx: Arc<Context>) -> Result<Action, TenantError> {
    ctx.metrics.reconcile();
    let key = key_of(&tenant);
    let namespace = tenant.namespace().unwrap_or_default();
    let api: Api<Tenant> = Api::namespaced(ctx.client.clone(), &namespace);
    let action = finalizer(&api, Tenant::FINALIZER, tenant, |event| async {
        match event {
            Finalizer::Apply(tenant) => apply(&tenant, &ctx).await,
            Finalizer::Cleanup(tenant) => cleanup(&tenant, &ctx).await,
        }
    })
    .await
    .map_err(|source| TenantError::Finalizer {
        tenant: key.clone(),
        source: Box::new(source),
    })?;
    ctx.note_success(&key);
    Ok(action)
}

/// Requeue with backoff; a permanent error (invalid spec) waits for a change instead.
pub fn error_policy(tenant: Arc<Tenant>, error: &TenantError, ctx: Arc<Context>) -> Action {
    requeue_on_error(tenant.as_ref(), error, &ctx)
}

/// What the controllers' shared failure handling needs from their error types.
pub trait ControllerError: std::error::Error {
    /// Event reason and metric label.
    fn category(&self) -> &'static str;
    /// Whether only a change of the object can fix it (no retry).
    fn is_permanent(&self) -> bool;
    /// Whether the object waits for its Tenant to become Ready: the Tenant wakes it then
    /// (see `wakes_dependents` in main.rs), so it is retried only as a safety net, after
    /// [`PARENT_WAIT`], instead of with a backoff that starts at seconds (with thousands
    /// of objects waiting, those retries would crowd out the work that is ready).
    fn waits_for_parent(&self) -> bool {
        false
    }
}

/// Retry interval of an object waiting for its parent (see
/// [`ControllerError::waits_for_parent`]).
pub const PARENT_WAIT: Duration = Duration::from_secs(60);

/// The error policy of every controller: count and log the failure, then requeue with
/// backoff; a permanent error (invalid spec) waits for a change instead.
pub fn requeue_on_error<K: Resource>(
    object: &K,
    error: &impl ControllerError,
    ctx: &Context,
) -> Action {
    ctx.metrics.failure(error.category());
    let key = object_key(object);
    tracing::warn!(
        object = %key,
        category = error.category(),
        error = %error,
        "reconcile failed"
    );
    if error.is_permanent() {
        return Action::requeue(MAX_BACKOFF);
    }
    if error.waits_for_parent() {
        return Action::requeue(PARENT_WAIT);
    }
    Action::requeue(ctx.note_failure(&key))
}

/// Writes Ready=False with the error's reason (Reconciling while it is retried, Stalled when
/// only a change can fix it), emits a Warning Event and patches the status.
pub(crate) async fn report_failure<K>(
    ctx: &Context,
    object: &K,
    draft: &mut StatusDraft<K>,
    error: &impl ControllerError,
) -> Result<(), kube::Error>
where
    K: HelprResource
        + Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug,
    K::Status: Serialize + Clone + PartialEq,
{
    let message = describe(error);
    if error.is_permanent() {
        draft.set(
            types::READY,
            ConditionStatus::False,
            error.category(),
            message.clone(),
        );
        draft.status.clear_reconciling();
        draft.status.set_stalled(
            error.category(),
            message.clone(),
            draft.generation,
            &draft.now,
        );
    } else {
        draft.status.remove_condition(types::STALLED);
        draft.failed(error.category(), message.clone());
    }
    publish(ctx, object, EventType::Warning, error.category(), message).await;
    patch_status_of(ctx, object, &draft.status).await
}

/// The error and its causes, for condition messages and Events (none of them carries secret
/// material: Vault, control API and apiserver errors hold codes and server messages only).
pub fn describe(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

pub(crate) fn now() -> Time {
    Time(Timestamp::now())
}

/// The status under construction: the current one, so unchanged conditions keep their
/// `lastTransitionTime`.
pub(crate) struct StatusDraft<K: HelprResource> {
    pub(crate) status: K::Status,
    pub(crate) generation: Option<i64>,
    pub(crate) now: Time,
}

impl<K: HelprResource> StatusDraft<K>
where
    K::Status: Clone,
{
    pub(crate) fn new(object: &K) -> Self {
        let generation = object.meta().generation;
        let now = now();
        let mut status = HelprResource::status(object).cloned().unwrap_or_default();
        status.init_conditions(K::CONDITION_TYPES, generation, &now);
        status.set_observed_generation(generation);
        Self {
            status,
            generation,
            now,
        }
    }

    pub(crate) fn set(
        &mut self,
        type_: &str,
        status: ConditionStatus,
        reason: &str,
        message: String,
    ) {
        self.status.set_condition(
            Condition::new(type_, status, reason, message, self.now.clone())
                .with_observed_generation(self.generation),
        );
    }

    pub(crate) fn was_true(object: &K, type_: &str) -> bool {
        HelprResource::status(object).is_some_and(|s| s.is_condition_true(type_))
    }

    /// Whether the object's Ready condition has `reason` (to emit an Event once).
    pub(crate) fn had_ready_reason(object: &K, reason: &str) -> bool {
        HelprResource::status(object)
            .and_then(|s| s.condition(types::READY))
            .is_some_and(|c| c.reason == reason)
    }

    pub(crate) fn failed(&mut self, reason: &str, message: String) {
        self.set(
            types::READY,
            ConditionStatus::False,
            reason,
            message.clone(),
        );
        self.status
            .set_reconciling(reasons::PROGRESSING, message, self.generation, &self.now);
    }
}

/// Whether the object's condition `type_` is True and was computed from its current
/// generation (as is its status).
pub(crate) fn is_true_at_generation<K: HelprResource>(object: &K, type_: &str) -> bool {
    object.is_status_current()
        && HelprResource::status(object)
            .and_then(|s| s.condition(type_))
            .is_some_and(|c| {
                c.status == ConditionStatus::True && c.observed_generation == object.generation()
            })
}

/// Publishes an Event about `object` (a failure to publish is logged, never fatal).
pub(crate) async fn publish<K: Resource<DynamicType = ()>>(
    ctx: &Context,
    object: &K,
    type_: EventType,
    reason: &str,
    note: String,
) {
    let event = Event {
        type_,
        reason: reason.to_owned(),
        note: Some(note),
        action: "Reconcile".to_owned(),
        secondary: None,
    };
    if let Err(error) = ctx.recorder.publish(&event, &object.object_ref(&())).await {
        tracing::warn!(object = %object_key(object), %error, "event not published");
    }
}

/// Writes `status` with server-side apply on the status subresource, retrying a conflict.
async fn patch_status(
    ctx: &Context,
    tenant: &Tenant,
    status: &TenantStatus,
) -> Result<(), TenantError> {
    patch_status_of(ctx, tenant, status)
        .await
        .map_err(|source| TenantError::PatchStatus {
            tenant: key_of(tenant),
            source,
        })
}

/// Writes `status` of any helpr kind with server-side apply on the status subresource
/// (field manager `helpr-operator`, forced), retrying a conflict. A status equal to the
/// object's current one is not written: the write would change nothing (conditions keep
/// their `lastTransitionTime` while unchanged), and a newer status the object may have
/// gained meanwhile arrives by the watch and is reconciled again.
pub(crate) async fn patch_status_of<K>(
    ctx: &Context,
    object: &K,
    status: &K::Status,
) -> Result<(), kube::Error>
where
    K: HelprResource
        + Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug,
    K::Status: Serialize + PartialEq,
{
    if HelprResource::status(object) == Some(status) {
        return Ok(());
    }
    let namespace = object.namespace().unwrap_or_default();
    let api: Api<K> = Api::namespaced(ctx.client.clone(), &namespace);
    let patch = Patch::Apply(serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": status,
    }));
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let mut attempt = 0;
    loop {
        attempt += 1;
        match api.patch_status(&object.name_any(), &params, &patch).await {
            Ok(_) => return Ok(()),
            Err(kube::Error::Api(status)) if status.code == 409 && attempt < STATUS_ATTEMPTS => {
                tracing::debug!(object = %object_key(object), attempt, "status conflict, retrying");
            }
            Err(source) => return Err(source),
        }
    }
}

/// Server-side applies `child` (forced, one field manager).
pub(crate) async fn apply_child<K>(
    client: &kube::Client,
    namespace: &str,
    child: &K,
) -> Result<K, kube::Error>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + Serialize
        + DeserializeOwned
        + std::fmt::Debug,
{
    let api: Api<K> = Api::namespaced(client.clone(), namespace);
    let mut child = child.clone();
    // SSA wants apiVersion and kind in the body.
    let mut body = serde_json::to_value(&mut child).map_err(kube::Error::SerdeError)?;
    if let Some(map) = body.as_object_mut() {
        map.insert("apiVersion".into(), K::api_version(&()).into());
        map.insert("kind".into(), K::kind(&()).into());
    }
    let name = child.meta().name.clone().unwrap_or_default();
    api.patch(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(body),
    )
    .await
}

/// Whether the Deployment's controller has seen its current spec and has `want` pods
/// available; with the counts for the message.
fn workers_available(deployment: &Deployment, want: i32) -> (bool, i32) {
    let status = deployment.status.clone().unwrap_or_default();
    let observed =
        status.observed_generation.unwrap_or(0) >= deployment.metadata.generation.unwrap_or(0);
    let available = status.available_replicas.unwrap_or(0);
    (observed && available >= want, available)
}

/// The namespace of an older Tenant with the same name elsewhere in the cluster, if any: the
/// name is the tenant's id in Vault and the data plane, so only the oldest one is served.
async fn older_namesake(tenant: &Tenant, ctx: &Context) -> Result<Option<String>, TenantError> {
    let all: Api<Tenant> = Api::all(ctx.client.clone());
    let name = tenant.name_any();
    let same = all
        .list(&ListParams::default().fields(&format!("metadata.name={name}")))
        .await
        .map_err(|source| TenantError::ListTenants {
            tenant: key_of(tenant),
            source,
        })?;
    let age = |t: &Tenant| {
        (
            t.meta().creation_timestamp.clone().map(|t| t.0),
            t.meta().uid.clone(),
        )
    };
    Ok(same
        .items
        .iter()
        .filter(|other| other.meta().uid != tenant.meta().uid && other.name_any() == name)
        .find(|other| age(other) < age(tenant))
        .map(|other| other.namespace().unwrap_or_default()))
}

/// Converges the tenant's Vault objects, children and data plane record; writes status.
pub async fn apply(tenant: &Tenant, ctx: &Context) -> Result<Action, TenantError> {
    let mut draft = StatusDraft::new(tenant);
    let name = tenant.name_any();

    // Validate (pure). A bad spec stalls until the Tenant changes.
    let valid = match validate(tenant, &ctx.settings) {
        Ok(valid) => valid,
        Err(error) => {
            let message = describe(&error);
            draft.set(
                types::READY,
                ConditionStatus::False,
                error.category(),
                message.clone(),
            );
            draft.status.clear_reconciling();
            draft.status.set_stalled(
                error.category(),
                message.clone(),
                draft.generation,
                &draft.now,
            );
            ctx.metrics.failure(error.category());
            publish(ctx, tenant, EventType::Warning, error.category(), message).await;
            patch_status(ctx, tenant, &draft.status).await?;
            return Ok(Action::await_change());
        }
    };

    // Cross-object: the tenant id must be unique in the cluster, checked before Vault (a
    // second Tenant would otherwise rebind the first one's Vault role to its namespace).
    if let Some(other_namespace) = older_namesake(tenant, ctx).await? {
        let error = TenantError::DuplicateTenant {
            tenant: key_of(tenant),
            other_namespace,
        };
        let message = describe(&error);
        draft.set(
            types::READY,
            ConditionStatus::False,
            error.category(),
            message.clone(),
        );
        draft.status.clear_reconciling();
        draft.status.set_stalled(
            error.category(),
            message.clone(),
            draft.generation,
            &draft.now,
        );
        ctx.metrics.failure(error.category());
        publish(ctx, tenant, EventType::Warning, error.category(), message).await;
        patch_status(ctx, tenant, &draft.status).await?;
        // The other Tenant's deletion does not trigger this one: look again later.
        return Ok(Action::requeue(MAX_BACKOFF));
    }
    draft.status.remove_condition(types::STALLED);

    // Vault and the data plane were confirmed at this generation a moment ago (this
    // reconcile was woken by the status write of that one, or by a child), and the status
    // says so: not again (see `crate::confirmed`). When the store's copy predates that
    // status write, the current one is read.
    let basis = Basis::of(tenant);
    let fresh = fresher_copy(ctx, tenant, basis, tenant_confirmed_in_status).await;
    let tenant = match &fresh {
        Some(fresh) => {
            draft = StatusDraft::new(fresh);
            draft.status.remove_condition(types::STALLED);
            fresh
        }
        None => tenant,
    };
    let confirmed = ctx.confirmed.is_recent(tenant, basis) && tenant_confirmed_in_status(tenant);
    if !confirmed {
        ctx.confirmed.forget(tenant);
    }

    // Vault: transit key, policy, role.
    let provisioned = if confirmed {
        Ok(())
    } else {
        ctx.vault.provision(&valid).await
    };
    if let Err(error) = provisioned {
        let message = describe(&error);
        draft.set(
            types::KMS_PROVISIONED,
            ConditionStatus::False,
            error.category(),
            message.clone(),
        );
        draft.failed(error.category(), message.clone());
        publish(ctx, tenant, EventType::Warning, error.category(), message).await;
        patch_status(ctx, tenant, &draft.status).await?;
        return Err(error);
    }
    if !StatusDraft::was_true(tenant, types::KMS_PROVISIONED) {
        publish(
            ctx,
            tenant,
            EventType::Normal,
            reasons::KEY_PROVISIONED,
            format!(
                "transit key {} and sync role {} provisioned for tenant {name}",
                valid.vault.key.as_str(),
                valid.vault.access.role
            ),
        )
        .await;
    }
    draft.set(
        types::KMS_PROVISIONED,
        ConditionStatus::True,
        reasons::KEY_PROVISIONED,
        format!(
            "transit key {} and its sync policy and role exist",
            valid.vault.key.as_str()
        ),
    );
    draft.status.transit_key_name = Some(valid.vault.key.as_str().to_owned());

    // Children (pure build, then server-side apply).
    let children = build(&valid, &ctx.settings, ctx.index_secret.as_deref());
    let ns = valid.namespace.as_str();
    let child_name = valid.sync_name.clone();
    let applied = async {
        apply_child::<ServiceAccount>(&ctx.client, ns, &children.service_account)
            .await
            .map(drop)
            .map_err(|source| TenantError::ApplyServiceAccount {
                tenant: key_of(tenant),
                name: child_name.clone(),
                source,
            })?;
        apply_child::<NetworkPolicy>(&ctx.client, ns, &children.network_policy)
            .await
            .map(drop)
            .map_err(|source| TenantError::ApplyNetworkPolicy {
                tenant: key_of(tenant),
                name: child_name.clone(),
                source,
            })?;
        if let Some(secret) = &children.index_token {
            apply_child::<Secret>(&ctx.client, ns, secret)
                .await
                .map(drop)
                .map_err(|source| TenantError::ApplyIndexToken {
                    tenant: key_of(tenant),
                    name: super::children::index_token_secret_name(&valid),
                    source,
                })?;
        }
        apply_child::<Deployment>(&ctx.client, ns, &children.deployment)
            .await
            .map_err(|source| TenantError::ApplyDeployment {
                tenant: key_of(tenant),
                name: child_name.clone(),
                source,
            })
    }
    .await;
    let deployment = match applied {
        Ok(deployment) => deployment,
        Err(error) => {
            let message = describe(&error);
            draft.failed(error.category(), message.clone());
            publish(ctx, tenant, EventType::Warning, error.category(), message).await;
            patch_status(ctx, tenant, &draft.status).await?;
            return Err(error);
        }
    };
    let (workers_ready, available) = workers_available(&deployment, valid.sync.replicas);
    let workers = |draft: &mut StatusDraft<Tenant>| {
        if workers_ready {
            draft.set(
                types::READY,
                ConditionStatus::True,
                reasons::RECONCILED,
                format!(
                    "tenant {name}: key provisioned, {available} sync workers available, data plane synced"
                ),
            );
            draft.status.clear_reconciling();
            Action::requeue(RESYNC_INTERVAL)
        } else {
            // The Deployment's status changes wake the controller (owned watch).
            draft.failed(
                reasons::PROGRESSING,
                format!(
                    "tenant {name}: {available} of {} sync workers available in deployment {}",
                    valid.sync.replicas, valid.sync_name
                ),
            );
            Action::requeue(Duration::from_secs(60))
        }
    };

    // The data plane's tenant record (its DataPlaneSynced condition stays as it is when
    // confirmed).
    let upserted = if confirmed {
        None
    } else {
        Some(ctx.data_plane.upsert_tenant(&valid).await)
    };
    let action = match upserted {
        None => workers(&mut draft),
        Some(Ok(result)) if result.outcome == proto::Outcome::Stale => {
            // The data plane has a newer generation than this view: re-read soon.
            draft.set(
                types::DATA_PLANE_SYNCED,
                ConditionStatus::Unknown,
                reasons::PROGRESSING,
                format!(
                    "the data plane has generation {} of tenant {name}, newer than {}",
                    result.applied_generation, valid.generation
                ),
            );
            draft.failed(
                reasons::PROGRESSING,
                "waiting for a current view of the tenant".to_owned(),
            );
            Action::requeue(MIN_BACKOFF)
        }
        Some(Ok(result)) => {
            draft.set(
                types::DATA_PLANE_SYNCED,
                ConditionStatus::True,
                reasons::SYNCED,
                format!(
                    "the data plane applied generation {} of tenant {name}",
                    result.applied_generation
                ),
            );
            let action = workers(&mut draft);
            // Vault and the data plane are confirmed at this generation from now on.
            ctx.confirmed.record(tenant, basis);
            action
        }
        Some(Err(source)) => {
            let error = TenantError::SyncDataPlane {
                tenant: key_of(tenant),
                source,
            };
            let message = describe(&error);
            draft.set(
                types::DATA_PLANE_SYNCED,
                ConditionStatus::False,
                error.category(),
                message.clone(),
            );
            draft.failed(error.category(), message.clone());
            publish(ctx, tenant, EventType::Warning, error.category(), message).await;
            patch_status(ctx, tenant, &draft.status).await?;
            return Err(error);
        }
    };
    patch_status(ctx, tenant, &draft.status).await?;
    Ok(action)
}

pub(crate) fn is_not_found(error: &kube::Error) -> bool {
    matches!(error, kube::Error::Api(status) if status.code == 404)
}

/// Stops the tenant's sync and applies its deletion policy. Idempotent; 404s are done.
pub async fn cleanup(tenant: &Tenant, ctx: &Context) -> Result<Action, TenantError> {
    ctx.confirmed.forget(tenant);
    let name = tenant.name_any();
    let valid = match validate(tenant, &ctx.settings) {
        Ok(valid) => valid,
        Err(error) => {
            // Without a valid model there is no Vault to clean: the deletion waits.
            publish(
                ctx,
                tenant,
                EventType::Warning,
                error.category(),
                format!("deletion waits: {error}"),
            )
            .await;
            return Err(error);
        }
    };
    // Show the deletion in status (kstatus: Reconciling while cleanup runs).
    if tenant
        .status
        .as_ref()
        .and_then(|s| s.condition(types::READY))
        .is_none_or(|c| c.reason != reasons::DELETING)
    {
        let mut draft = StatusDraft::new(tenant);
        let message = format!(
            "tenant {name} is being deleted (deletionPolicy {:?})",
            valid.deletion_policy
        );
        draft.set(
            types::READY,
            ConditionStatus::False,
            reasons::DELETING,
            message.clone(),
        );
        draft
            .status
            .set_reconciling(reasons::DELETING, message, draft.generation, &draft.now);
        patch_status(ctx, tenant, &draft.status).await?;
    }
    if let Some(other) = older_namesake(tenant, ctx).await? {
        // A duplicate never owned the tenant's Vault objects or data: touch nothing of them.
        publish(
            ctx,
            tenant,
            EventType::Normal,
            "DuplicateDeleted",
            format!("tenant {name} deleted without cleanup: the tenant id belongs to the Tenant in namespace {other}"),
        )
        .await;
        return Ok(Action::await_change());
    }
    if valid.deletion_policy == DeletionPolicy::Shred {
        let policies: Api<RetentionPolicy> = Api::namespaced(ctx.client.clone(), &valid.namespace);
        let list = policies
            .list(&ListParams::default())
            .await
            .map_err(|source| TenantError::ListRetentionPolicies {
                tenant: key_of(tenant),
                source,
            })?;
        if let Some(held) = list
            .items
            .iter()
            .find(|p| p.spec.tenant_ref.name == name && p.spec.legal_hold)
        {
            let error = TenantError::LegalHold {
                tenant: key_of(tenant),
                policy: held.name_any(),
            };
            publish(
                ctx,
                tenant,
                EventType::Warning,
                error.category(),
                describe(&error),
            )
            .await;
            return Err(error);
        }
    }

    // Stop sync: the workers go with their Deployment.
    let deployments: Api<Deployment> = Api::namespaced(ctx.client.clone(), &valid.namespace);
    match deployments
        .delete(&valid.sync_name, &DeleteParams::foreground())
        .await
    {
        Ok(_) => {}
        Err(error) if is_not_found(&error) => {}
        Err(source) => {
            let error = TenantError::DeleteDeployment {
                tenant: key_of(tenant),
                name: valid.sync_name.clone(),
                source,
            };
            let note = format!("deletion waits: {}", describe(&error));
            publish(ctx, tenant, EventType::Warning, error.category(), note).await;
            return Err(error);
        }
    }

    let (reason, note) = match valid.deletion_policy {
        DeletionPolicy::Retain => {
            if let Err(error) = ctx.vault.retain(&valid).await {
                let note = format!("deletion waits: {}", describe(&error));
                publish(ctx, tenant, EventType::Warning, error.category(), note).await;
                return Err(error);
            }
            (
                "Retained",
                format!(
                    "tenant {name} deleted: sync stopped, transit key {} kept",
                    valid.vault.key.as_str()
                ),
            )
        }
        DeletionPolicy::Shred => {
            if let Err(error) = ctx.vault.shred(&valid).await {
                let note = format!("deletion waits: {}", describe(&error));
                publish(ctx, tenant, EventType::Warning, error.category(), note).await;
                return Err(error);
            }
            (
                "Shredded",
                format!(
                    "tenant {name} deleted: transit key {} destroyed, data plane asked to drop its data and index",
                    valid.vault.key.as_str()
                ),
            )
        }
    };
    match ctx.data_plane.delete_tenant(&valid).await {
        Ok(_) | Err(ControlError::NotFound(_)) => {}
        Err(source) => {
            let error = TenantError::DeleteFromDataPlane {
                tenant: key_of(tenant),
                source,
            };
            publish(
                ctx,
                tenant,
                EventType::Warning,
                error.category(),
                describe(&error),
            )
            .await;
            return Err(error);
        }
    }
    publish(ctx, tenant, EventType::Normal, reason, note).await;
    Ok(Action::await_change())
}
