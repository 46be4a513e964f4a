//! The control API (`helpr-dataplane control`): the gRPC service the operator pushes the
//! desired state of Tenant, Inbox, InboxGrant and RetentionPolicy resources into
//! (`dataplane/proto/helpr/control/v1/control.proto`).
//!
//! - **Authentication**: a bearer token read from `control.token_file` ([`auth`]), checked
//!   by an interceptor before any method runs; TLS when `control.tls_cert_file` and
//!   `control.tls_key_file` are set.
//! - **Idempotency**: every change carries the object's uid and generation; the store
//!   judges and writes them in one transaction ([`crate::store::control`]). Tenant upserts
//!   and shredding deletes first check the recorded generation without writing, so a
//!   repeated call makes no KMS or search call either.
//! - **Notification**: every applied change lands in the store's change feed in its
//!   transaction (PostgreSQL NOTIFY, SQLite change counter); other processes follow it with
//!   [`Store::subscribe_changes`](crate::store::Store::subscribe_changes).
//! - **Tenant deletion**: policy RETAIN stops the tenant and disconnects its inboxes, data
//!   kept. SHRED destroys the tenant's KMS key(s), drops its search index, then deletes its
//!   rows in one transaction; a KMS or search outage answers UNAVAILABLE having recorded
//!   nothing, and a retry repeats the (idempotent) steps.
//! - **Inbox deletion** cascades: the inbox's mail is soft-deleted ([`crate::lifecycle`]) and
//!   removed from the search index, then its grants are removed and it is marked
//!   disconnected and deleted, before the call answers. A search outage answers UNAVAILABLE
//!   with the soft delete recorded (and hidden from every read); the retry repeats the
//!   idempotent steps. The purge job removes the mail for good after the grace period.

pub mod auth;

use std::collections::BTreeSet;
use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::ids::TenantId;
use crate::ingest::gmail::is_pubsub_topic;
use crate::keyring::{Keyring, KeyringError};
use crate::kms::{KeyRef, KmsError};
use crate::lifecycle::{IndexRemoval, Lifecycle, LifecycleError};
use crate::search::{Mode, SearchError, SearchIndex};
use crate::store::control::{Decision, decide};
use crate::store::{
    ApplyOutcome, AuditEvent, ControlKind, ControlMeta, DeletionPolicy, GrantRole, GrantSpec,
    InboxSpec, InboxStatus, InboxSyncStatus, Rejection, RetentionSpec, Store, StoreError,
    SubjectKind, TenantSpec, TenantState, Visibility, WatchError, now_ms,
};

pub use auth::{BearerAuth, ControlToken, SecretFileError, TokenFileError};

/// Generated from `dataplane/proto/helpr/control/v1/control.proto` (server and client).
#[allow(clippy::all, clippy::unwrap_used, clippy::expect_used, missing_docs)]
pub mod proto {
    tonic::include_proto!("helpr.control.v1");
}

use proto::control_server::{Control, ControlServer};

/// Largest request the server accepts.
const MAX_MESSAGE_BYTES: usize = 1024 * 1024;
/// Longest display name, team or subject name (characters).
const MAX_TEXT_CHARS: usize = 256;
/// Longest push audience (as the Inbox CRD bounds it).
const MAX_AUDIENCE_BYTES: usize = 512;
/// Longest retention period (days), about a century.
const MAX_DAYS: u32 = 36_500;

/// The control API over a keyring (store and KMS) and the search tier.
pub struct ControlService {
    keyring: Arc<Keyring>,
    search: Arc<dyn SearchIndex>,
}

impl ControlService {
    pub fn new(keyring: Arc<Keyring>, search: Arc<dyn SearchIndex>) -> Self {
        Self { keyring, search }
    }

    fn store(&self) -> &dyn Store {
        self.keyring.store().as_ref()
    }

    /// The tonic service behind the bearer-token interceptor.
    pub fn into_service(
        self,
        token: ControlToken,
    ) -> tonic::service::interceptor::InterceptedService<
        ControlServer<ControlService>,
        impl tonic::service::Interceptor + Clone,
    > {
        let auth = BearerAuth::new(token);
        let server = ControlServer::new(self)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        tonic::service::interceptor::InterceptedService::new(server, move |r| auth.check(r))
    }
}

/// TLS identity of the server (PEM certificate chain and private key).
pub struct TlsFiles {
    pub cert_pem: Vec<u8>,
    pub key_pem: zeroize::Zeroizing<Vec<u8>>,
}

/// Why serving failed.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("invalid tls settings: {0}")]
    Tls(String),
    #[error("control server: {0}")]
    Transport(String),
}

/// Serves the control API on `listener` until `shutdown` completes.
pub async fn serve(
    service: ControlService,
    token: ControlToken,
    tls: Option<TlsFiles>,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let incoming = tonic::transport::server::TcpIncoming::from(listener);
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = tls {
        let identity = tonic::transport::Identity::from_pem(&tls.cert_pem, tls.key_pem.as_slice());
        builder = builder
            .tls_config(tonic::transport::ServerTlsConfig::new().identity(identity))
            .map_err(|e| ServeError::Tls(e.to_string()))?;
    }
    builder
        .add_service(service.into_service(token))
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
        .map_err(|e| ServeError::Transport(e.to_string()))
}

// --- validation -----------------------------------------------------------------------------

#[allow(clippy::result_large_err)]
type Checked<T> = Result<T, Status>;

fn invalid(msg: impl Into<String>) -> Status {
    Status::invalid_argument(msg.into())
}

fn is_dns_label(s: &str) -> bool {
    TenantId::new(s).is_ok()
}

/// A DNS subdomain (RFC 1123): dot-separated labels, at most 253 characters.
fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(is_dns_label)
}

fn plain_text(field: &str, s: &str, required: bool) -> Checked<()> {
    if required && s.trim().is_empty() {
        return Err(invalid(format!("{field} must not be empty")));
    }
    if s.chars().count() > MAX_TEXT_CHARS || s.chars().any(char::is_control) {
        return Err(invalid(format!(
            "{field} must be at most {MAX_TEXT_CHARS} characters without control characters"
        )));
    }
    Ok(())
}

/// The object identity of a request; `tenant` objects are keyed by name alone (tenant ids
/// are cluster-wide, so the same name in two namespaces is one tenant).
fn meta_from_wire(meta: Option<proto::ObjectMeta>, kind: ControlKind) -> Checked<ControlMeta> {
    let m = meta.ok_or_else(|| invalid("meta is required"))?;
    if kind == ControlKind::Tenant {
        if !is_dns_label(&m.name) {
            return Err(invalid(
                "tenant name must be a DNS label (1-63 of a-z, 0-9 and '-', starting and ending with a letter or digit)",
            ));
        }
    } else {
        if !is_dns_label(&m.namespace) {
            return Err(invalid("meta.namespace must be a DNS label"));
        }
        if !is_dns_subdomain(&m.name) {
            return Err(invalid("meta.name must be a DNS subdomain"));
        }
    }
    if m.uid.is_empty() || m.uid.len() > 128 || !m.uid.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(invalid("meta.uid must be 1-128 printable characters"));
    }
    if m.generation < 1 {
        return Err(invalid("meta.generation must be at least 1"));
    }
    Ok(ControlMeta {
        namespace: if kind == ControlKind::Tenant {
            String::new()
        } else {
            m.namespace
        },
        name: m.name,
        uid: m.uid,
        generation: m.generation,
    })
}

fn tenant_ref(field: &str, s: &str) -> Checked<TenantId> {
    TenantId::new(s).map_err(|_| invalid(format!("{field} must be a tenant name (a DNS label)")))
}

/// A plausible mailbox address; the message never repeats it.
fn gmail_address(s: &str) -> Checked<String> {
    let ok = s.len() <= 254
        && s.split_once('@').is_some_and(|(local, domain)| {
            !local.is_empty() && domain.contains('.') && !domain.contains('@')
        })
        && s.bytes().all(|b| b.is_ascii_graphic());
    if ok {
        Ok(s.to_owned())
    } else {
        Err(invalid("spec.gmail_address is not an email address"))
    }
}

fn tenant_spec_from_wire(name: &str, spec: Option<proto::TenantSpec>) -> Checked<TenantSpec> {
    let s = spec.ok_or_else(|| invalid("spec is required"))?;
    plain_text("spec.display_name", &s.display_name, false)?;
    let deletion_policy = match proto::DeletionPolicy::try_from(s.deletion_policy) {
        Ok(proto::DeletionPolicy::Retain) => DeletionPolicy::Retain,
        Ok(proto::DeletionPolicy::Shred) => DeletionPolicy::Shred,
        _ => return Err(invalid("spec.deletion_policy must be RETAIN or SHRED")),
    };
    let search_mode = match proto::SearchMode::try_from(s.search_mode) {
        Ok(proto::SearchMode::Unspecified | proto::SearchMode::Blind) => Mode::Blind,
        Ok(proto::SearchMode::Plaintext) => Mode::Plaintext,
        Err(_) => return Err(invalid("spec.search_mode must be BLIND or PLAINTEXT")),
    };
    let display_name = if s.display_name.trim().is_empty() {
        name.to_owned()
    } else {
        s.display_name
    };
    Ok(TenantSpec {
        display_name,
        deletion_policy,
        search_mode,
    })
}

fn inbox_spec_from_wire(spec: Option<proto::InboxSpec>) -> Checked<InboxSpec> {
    let s = spec.ok_or_else(|| invalid("spec is required"))?;
    let visibility = match proto::Visibility::try_from(s.visibility) {
        Ok(proto::Visibility::Org) => Visibility::Org,
        Ok(proto::Visibility::Team) => Visibility::Team,
        Ok(proto::Visibility::Restricted) => Visibility::Restricted,
        _ => return Err(invalid("spec.visibility must be ORG, TEAM or RESTRICTED")),
    };
    plain_text("spec.team", &s.team, visibility == Visibility::Team)?;
    if !s.pubsub_topic.is_empty() && !is_pubsub_topic(&s.pubsub_topic) {
        return Err(invalid(
            "spec.pubsub_topic must be a Pub/Sub topic name projects/PROJECT/topics/TOPIC",
        ));
    }
    if s.push_audience.len() > MAX_AUDIENCE_BYTES
        || s.push_audience.chars().any(char::is_whitespace)
    {
        return Err(invalid(
            "spec.push_audience must be at most 512 bytes without whitespace",
        ));
    }
    Ok(InboxSpec {
        tenant: tenant_ref("spec.tenant", &s.tenant)?,
        address: gmail_address(&s.gmail_address)?,
        visibility,
        team: (!s.team.is_empty()).then_some(s.team),
        assignment_limits_visibility: s.assignment_limits_visibility,
        pubsub_topic: (!s.pubsub_topic.is_empty()).then_some(s.pubsub_topic),
        push_audience: (!s.push_audience.is_empty()).then_some(s.push_audience),
    })
}

fn grant_spec_from_wire(spec: Option<proto::GrantSpec>) -> Checked<GrantSpec> {
    let s = spec.ok_or_else(|| invalid("spec is required"))?;
    if !is_dns_subdomain(&s.inbox) {
        return Err(invalid("spec.inbox must be the name of an Inbox object"));
    }
    let subject_kind = match proto::SubjectKind::try_from(s.subject_kind) {
        Ok(proto::SubjectKind::Agent) => SubjectKind::Agent,
        Ok(proto::SubjectKind::Team) => SubjectKind::Team,
        _ => return Err(invalid("spec.subject_kind must be AGENT or TEAM")),
    };
    plain_text("spec.subject_name", &s.subject_name, true)?;
    let role = match proto::Role::try_from(s.role) {
        Ok(proto::Role::Reply) => GrantRole::Reply,
        Ok(proto::Role::Configure) => GrantRole::Configure,
        _ => return Err(invalid("spec.role must be REPLY or CONFIGURE")),
    };
    if s.expiration_time.is_some_and(|t| t <= 0) {
        return Err(invalid(
            "spec.expiration_time must be a positive unix time in milliseconds",
        ));
    }
    Ok(GrantSpec {
        inbox_name: s.inbox,
        subject_kind,
        subject_name: s.subject_name,
        role,
        expires_at_ms: s.expiration_time,
    })
}

fn retention_spec_from_wire(spec: Option<proto::RetentionPolicySpec>) -> Checked<RetentionSpec> {
    let s = spec.ok_or_else(|| invalid("spec is required"))?;
    if s.grace_period_days > MAX_DAYS {
        return Err(invalid(format!(
            "spec.grace_period_days must be at most {MAX_DAYS}"
        )));
    }
    if s.delete_after_days.is_some_and(|d| d == 0 || d > MAX_DAYS) {
        return Err(invalid(format!(
            "spec.delete_after_days must be between 1 and {MAX_DAYS}"
        )));
    }
    Ok(RetentionSpec {
        tenant: tenant_ref("spec.tenant", &s.tenant)?,
        grace_period_days: s.grace_period_days,
        delete_after_days: s.delete_after_days,
        legal_hold: s.legal_hold,
    })
}

// --- outcomes and errors ------------------------------------------------------------------

fn kind_label(kind: ControlKind) -> &'static str {
    match kind {
        ControlKind::Tenant => "Tenant",
        ControlKind::Inbox => "Inbox",
        ControlKind::Grant => "InboxGrant",
        ControlKind::RetentionPolicy => "RetentionPolicy",
    }
}

fn object_label(kind: ControlKind, meta: &ControlMeta) -> String {
    if meta.namespace.is_empty() {
        format!("{} {}", kind_label(kind), meta.name)
    } else {
        format!("{} {}/{}", kind_label(kind), meta.namespace, meta.name)
    }
}

/// What a change refers to, for error messages.
#[derive(Default)]
struct Refs<'a> {
    tenant: Option<&'a TenantId>,
    inbox: Option<&'a str>,
}

fn respond(
    kind: ControlKind,
    meta: &ControlMeta,
    refs: Refs<'_>,
    outcome: ApplyOutcome,
) -> Checked<Response<proto::ApplyResponse>> {
    let (outcome, applied_generation) = match outcome {
        ApplyOutcome::Applied => (proto::Outcome::Applied, meta.generation),
        ApplyOutcome::AlreadyCurrent => (proto::Outcome::AlreadyCurrent, meta.generation),
        ApplyOutcome::Stale { applied_generation } => (proto::Outcome::Stale, applied_generation),
        ApplyOutcome::Rejected(r) => return Err(rejected(kind, meta, &refs, r)),
    };
    tracing::info!(
        kind = kind.as_str(),
        namespace = %meta.namespace,
        name = %meta.name,
        generation = meta.generation,
        outcome = outcome.as_str_name(),
        "control change"
    );
    Ok(Response::new(proto::ApplyResponse {
        outcome: outcome.into(),
        applied_generation,
    }))
}

fn rejected(kind: ControlKind, meta: &ControlMeta, refs: &Refs<'_>, r: Rejection) -> Status {
    let object = object_label(kind, meta);
    let tenant = refs
        .tenant
        .map(TenantId::as_str)
        .unwrap_or(meta.name.as_str());
    match r {
        Rejection::UnknownTenant => Status::not_found(format!(
            "{object} refers to tenant {tenant}, which the data plane does not have; apply the Tenant first"
        )),
        Rejection::UnknownInbox => Status::not_found(format!(
            "{object} refers to inbox {}/{}, which is not applied; apply the Inbox first",
            meta.namespace,
            refs.inbox.unwrap_or_default()
        )),
        Rejection::TenantDeleted => Status::failed_precondition(format!(
            "{object}: tenant {tenant} was deleted (policy retain) and takes no new configuration"
        )),
        Rejection::UidMismatch { recorded_uid } => Status::failed_precondition(format!(
            "{object} has uid {}, but the data plane holds a live object of that name with uid {recorded_uid}; its delete never reached the data plane",
            meta.uid
        )),
        Rejection::Immutable(field) => Status::failed_precondition(format!(
            "{object}: {field} cannot change once applied; create a new object instead"
        )),
        Rejection::AddressTaken => Status::already_exists(format!(
            "{object}: another Inbox object already manages this gmail address in tenant {tenant}"
        )),
        Rejection::PolicyExists => Status::already_exists(format!(
            "{object}: tenant {tenant} already has a retention policy from another object"
        )),
    }
}

fn store_status(e: StoreError) -> Status {
    tracing::warn!(error = %e, "control change failed in the store");
    if e.is_retryable() {
        Status::unavailable(e.to_string())
    } else {
        Status::internal(e.to_string())
    }
}

fn keyring_status(tenant: &TenantId, e: KeyringError) -> Status {
    tracing::warn!(tenant = %tenant, error = %e, "tenant provisioning failed");
    match e {
        KeyringError::Kms(k) => kms_status(tenant, "creating", k),
        e if e.is_retryable() => Status::unavailable(e.to_string()),
        e => Status::internal(e.to_string()),
    }
}

fn kms_status(tenant: &TenantId, doing: &str, e: KmsError) -> Status {
    let msg = format!("{doing} the key of tenant {tenant}: {e}");
    match e {
        KmsError::Unavailable { .. } => Status::unavailable(msg),
        KmsError::Denied { .. } | KmsError::Config { .. } => Status::failed_precondition(msg),
        _ => Status::internal(msg),
    }
}

fn search_status(tenant: &TenantId, e: SearchError) -> Status {
    let msg = format!("dropping the search index of tenant {tenant}: {e}");
    if e.is_retryable() {
        Status::unavailable(msg)
    } else {
        Status::internal(msg)
    }
}

fn lifecycle_status(tenant: &TenantId, e: LifecycleError) -> Status {
    tracing::warn!(tenant = %tenant, error = %e, "inbox deletion cascade failed");
    match e {
        LifecycleError::Store(e) => store_status(e),
        e if e.is_retryable() => Status::unavailable(e.to_string()),
        e => Status::internal(e.to_string()),
    }
}

impl ControlService {
    /// The generation check without writing: `Some(outcome)` when nothing is to be done.
    async fn precheck(
        &self,
        kind: ControlKind,
        meta: &ControlMeta,
        delete: bool,
    ) -> Result<Option<ApplyOutcome>, Status> {
        let recorded = self
            .store()
            .control_object(kind, &meta.namespace, &meta.name)
            .await
            .map_err(store_status)?;
        Ok(match decide(recorded.as_ref(), meta, delete) {
            Decision::Apply { .. } => None,
            Decision::Skip(outcome) => Some(outcome),
        })
    }

    async fn audit(&self, tenant: &TenantId, action: &str) {
        let event = AuditEvent {
            tenant_id: tenant.clone(),
            actor: "operator".into(),
            action: action.into(),
            target_kind: "tenant".into(),
            target_id: tenant.to_string(),
            at_ms: now_ms(),
        };
        if let Err(e) = self.store().append_audit_event(&event).await {
            tracing::warn!(tenant = %tenant, action, error = %e, "cannot append audit event");
        }
    }

    /// Destroys every KMS key the tenant's stored DEKs and index keys were wrapped under,
    /// then drops its search index. Each step is idempotent.
    async fn shred_outside_store(&self, tenant: &TenantId) -> Result<(), Status> {
        let store = self.store();
        let mut refs = BTreeSet::new();
        for k in store
            .list_key_versions(tenant)
            .await
            .map_err(store_status)?
        {
            refs.insert(k.kms_key_ref);
        }
        for k in store.list_index_keys(tenant).await.map_err(store_status)? {
            refs.insert(k.kms_key_ref);
        }
        for r in refs {
            self.keyring
                .kms()
                .destroy_tenant_key(&KeyRef::new(r))
                .await
                .map_err(|e| kms_status(tenant, "destroying", e))?;
        }
        self.search
            .drop_tenant(tenant)
            .await
            .map_err(|e| search_status(tenant, e))
    }
}

#[tonic::async_trait]
impl Control for ControlService {
    async fn upsert_tenant(
        &self,
        request: Request<proto::UpsertTenantRequest>,
    ) -> Result<Response<proto::ApplyResponse>, Status> {
        const KIND: ControlKind = ControlKind::Tenant;
        let r = request.into_inner();
        let meta = meta_from_wire(r.meta, KIND)?;
        let spec = tenant_spec_from_wire(&meta.name, r.spec)?;
        let tenant = tenant_ref("meta.name", &meta.name)?;
        let refs = || Refs {
            tenant: Some(&tenant),
            inbox: None,
        };
        if let Some(outcome) = self.precheck(KIND, &meta, false).await? {
            return respond(KIND, &meta, refs(), outcome);
        }
        // KMS first (idempotent): a KMS outage writes nothing.
        self.keyring
            .provision_tenant(&tenant, &spec.display_name)
            .await
            .map_err(|e| keyring_status(&tenant, e))?;
        let outcome = self
            .store()
            .apply_tenant(&meta, &spec)
            .await
            .map_err(store_status)?;
        respond(KIND, &meta, refs(), outcome)
    }

    async fn delete_tenant(
        &self,
        request: Request<proto::DeleteRequest>,
    ) -> Result<Response<proto::ApplyResponse>, Status> {
        const KIND: ControlKind = ControlKind::Tenant;
        let meta = meta_from_wire(request.into_inner().meta, KIND)?;
        let tenant = tenant_ref("meta.name", &meta.name)?;
        let refs = || Refs {
            tenant: Some(&tenant),
            inbox: None,
        };
        if let Some(outcome) = self.precheck(KIND, &meta, true).await? {
            return respond(KIND, &meta, refs(), outcome);
        }
        let store = self.store();
        let policy = store
            .tenant_settings(&tenant)
            .await
            .map_err(store_status)?
            .map_or(DeletionPolicy::Retain, |s| s.deletion_policy);
        if policy == DeletionPolicy::Shred {
            self.shred_outside_store(&tenant).await?;
        }
        let outcome = store
            .delete_tenant(&meta, policy)
            .await
            .map_err(store_status)?;
        if outcome == ApplyOutcome::Applied {
            let action = match policy {
                DeletionPolicy::Retain => "tenant.stop",
                DeletionPolicy::Shred => "tenant.shred",
            };
            self.audit(&tenant, action).await;
        }
        respond(KIND, &meta, refs(), outcome)
    }

    async fn upsert_inbox(
        &self,
        request: Request<proto::UpsertInboxRequest>,
    ) -> Result<Response<proto::ApplyResponse>, Status> {
        const KIND: ControlKind = ControlKind::Inbox;
        let r = request.into_inner();
        let meta = meta_from_wire(r.meta, KIND)?;
        let spec = inbox_spec_from_wire(r.spec)?;
        let outcome = self
            .store()
            .apply_inbox(&meta, &spec)
            .await
            .map_err(store_status)?;
        let refs = Refs {
            tenant: Some(&spec.tenant),
            inbox: None,
        };
        respond(KIND, &meta, refs, outcome)
    }

    async fn delete_inbox(
        &self,
        request: Request<proto::DeleteRequest>,
    ) -> Result<Response<proto::ApplyResponse>, Status> {
        const KIND: ControlKind = ControlKind::Inbox;
        let meta = meta_from_wire(request.into_inner().meta, KIND)?;
        if let Some(outcome) = self.precheck(KIND, &meta, true).await? {
            return respond(KIND, &meta, Refs::default(), outcome);
        }
        // The cascade first (idempotent): soft-delete the mail and remove it from search.
        // Only then is the deletion recorded, so a failure here is retried in full.
        let mapped = self
            .store()
            .inbox_settings(&meta.namespace, &meta.name)
            .await
            .map_err(store_status)?;
        if let Some(settings) = mapped {
            let lifecycle = Lifecycle::new(self.keyring.store().clone(), self.search.clone());
            let done = lifecycle
                .delete_inbox(
                    &settings.tenant_id,
                    &settings.inbox_id,
                    "operator",
                    now_ms(),
                )
                .await
                .map_err(|e| lifecycle_status(&settings.tenant_id, e))?;
            if let IndexRemoval::Deferred { holder } = done.index {
                return Err(Status::unavailable(format!(
                    "removing the mail of {} from search: the index of tenant {} is held by {holder}; retry",
                    object_label(KIND, &meta),
                    settings.tenant_id
                )));
            }
        }
        let outcome = self
            .store()
            .delete_inbox(&meta)
            .await
            .map_err(store_status)?;
        respond(KIND, &meta, Refs::default(), outcome)
    }

    async fn upsert_grant(
        &self,
        request: Request<proto::UpsertGrantRequest>,
    ) -> Result<Response<proto::ApplyResponse>, Status> {
        const KIND: ControlKind = ControlKind::Grant;
        let r = request.into_inner();
        let meta = meta_from_wire(r.meta, KIND)?;
        let spec = grant_spec_from_wire(r.spec)?;
        let outcome = self
            .store()
            .apply_grant(&meta, &spec)
            .await
            .map_err(store_status)?;
        let refs = Refs {
            tenant: None,
            inbox: Some(&spec.inbox_name),
        };
        respond(KIND, &meta, refs, outcome)
    }

    async fn delete_grant(
        &self,
        request: Request<proto::DeleteRequest>,
    ) -> Result<Response<proto::ApplyResponse>, Status> {
        const KIND: ControlKind = ControlKind::Grant;
        let meta = meta_from_wire(request.into_inner().meta, KIND)?;
        let outcome = self
            .store()
            .delete_grant(&meta)
            .await
            .map_err(store_status)?;
        respond(KIND, &meta, Refs::default(), outcome)
    }

    async fn upsert_retention_policy(
        &self,
        request: Request<proto::UpsertRetentionPolicyRequest>,
    ) -> Result<Response<proto::ApplyResponse>, Status> {
        const KIND: ControlKind = ControlKind::RetentionPolicy;
        let r = request.into_inner();
        let meta = meta_from_wire(r.meta, KIND)?;
        let spec = retention_spec_from_wire(r.spec)?;
        let outcome = self
            .store()
            .apply_retention_policy(&meta, &spec)
            .await
            .map_err(store_status)?;
        let refs = Refs {
            tenant: Some(&spec.tenant),
            inbox: None,
        };
        respond(KIND, &meta, refs, outcome)
    }

    async fn delete_retention_policy(
        &self,
        request: Request<proto::DeleteRequest>,
    ) -> Result<Response<proto::ApplyResponse>, Status> {
        const KIND: ControlKind = ControlKind::RetentionPolicy;
        let meta = meta_from_wire(request.into_inner().meta, KIND)?;
        let outcome = self
            .store()
            .delete_retention_policy(&meta)
            .await
            .map_err(store_status)?;
        respond(KIND, &meta, Refs::default(), outcome)
    }

    async fn get_tenant_status(
        &self,
        request: Request<proto::GetTenantStatusRequest>,
    ) -> Result<Response<proto::TenantStatus>, Status> {
        let tenant = tenant_ref("tenant", &request.into_inner().tenant)?;
        let store = self.store();
        let record = store
            .control_object(ControlKind::Tenant, "", tenant.as_str())
            .await
            .map_err(store_status)?;
        let (applied_generation, uid) = record.map(|r| (r.generation, r.uid)).unwrap_or_default();
        let mut status = proto::TenantStatus {
            tenant: tenant.to_string(),
            state: proto::TenantState::Absent.into(),
            applied_generation,
            uid,
            ..Default::default()
        };
        if store
            .get_tenant(&tenant)
            .await
            .map_err(store_status)?
            .is_none()
        {
            return Ok(Response::new(status));
        }
        let settings = store.tenant_settings(&tenant).await.map_err(store_status)?;
        status.state = match settings.as_ref().map(|s| s.state) {
            Some(TenantState::Stopped) => proto::TenantState::Stopped,
            _ => proto::TenantState::Active,
        }
        .into();
        status.deletion_policy = match settings.as_ref().map(|s| s.deletion_policy) {
            Some(DeletionPolicy::Retain) => proto::DeletionPolicy::Retain,
            Some(DeletionPolicy::Shred) => proto::DeletionPolicy::Shred,
            None => proto::DeletionPolicy::Unspecified,
        }
        .into();
        let count = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        let inboxes = store.list_inboxes(&tenant).await.map_err(store_status)?;
        status.inbox_count = count(inboxes.len());
        status.connected_inbox_count =
            count(inboxes.iter().filter(|i| i.status == "connected").count());
        status.grant_count = count(
            store
                .list_grants_for_tenant(&tenant)
                .await
                .map_err(store_status)?
                .len(),
        );
        status.has_retention_policy = store
            .retention_policy(&tenant)
            .await
            .map_err(store_status)?
            .is_some();
        let keys = store
            .list_key_versions(&tenant)
            .await
            .map_err(store_status)?;
        status.keys = Some(proto::KeyStatus {
            versions: count(keys.len()),
            current_version: keys
                .iter()
                .filter(|k| !k.retired)
                .map(|k| k.version.get())
                .max()
                .unwrap_or(0),
            retired_versions: count(keys.iter().filter(|k| k.retired).count()),
        });
        Ok(Response::new(status))
    }

    async fn get_inbox_status(
        &self,
        request: Request<proto::GetInboxStatusRequest>,
    ) -> Result<Response<proto::InboxStatus>, Status> {
        let r = request.into_inner();
        if !is_dns_label(&r.namespace) {
            return Err(invalid("namespace must be a DNS label"));
        }
        if !is_dns_subdomain(&r.name) {
            return Err(invalid("name must be a DNS subdomain"));
        }
        let meta = ControlMeta {
            namespace: r.namespace,
            name: r.name,
            uid: String::new(),
            generation: 0,
        };
        let status = self
            .store()
            .inbox_sync_status(&meta.namespace, &meta.name)
            .await
            .map_err(store_status)?
            .ok_or_else(|| {
                Status::not_found(format!(
                    "{} is not applied to the data plane",
                    object_label(ControlKind::Inbox, &meta)
                ))
            })?;
        Ok(Response::new(inbox_status_to_wire(&status)))
    }
}

/// The Connected message of a synced inbox: says whether Gmail pushes its changes and,
/// when the push watch failed, what to do.
fn connected_message(s: &InboxSyncStatus) -> &'static str {
    let watching = s.pubsub_topic.is_some() && s.watch_expires_at_ms.is_some();
    match (&s.pubsub_topic, s.watch_error) {
        (None, _) => "synced with Gmail by polling (no Pub/Sub topic configured)",
        (Some(_), Some(WatchError::Forbidden)) => {
            "synced with Gmail by polling: Gmail may not publish to the Pub/Sub topic; grant roles/pubsub.publisher on it to gmail-api-push@system.gserviceaccount.com"
        }
        (Some(_), Some(WatchError::NotFound)) => {
            "synced with Gmail by polling: the Pub/Sub topic does not exist; create it or fix spec.pubSub.topic"
        }
        (Some(_), Some(WatchError::Rejected)) => {
            "synced with Gmail by polling: Gmail refused the push watch; the topic must be in the Google Cloud project of the OAuth client"
        }
        (Some(_), Some(WatchError::Unavailable)) => {
            "synced with Gmail by polling: Gmail was unavailable when registering the push watch; retrying"
        }
        (Some(_), None) if watching => {
            "synced with Gmail; Gmail pushes changes to the Pub/Sub topic"
        }
        (Some(_), None) => "synced with Gmail by polling; registering the Gmail push watch",
    }
}

/// The wire form of an inbox's sync status: the state and a message for a person, with
/// the actionable step when there is one.
fn inbox_status_to_wire(s: &InboxSyncStatus) -> proto::InboxStatus {
    use proto::ConnectionState as C;
    let (state, message) = match s.status {
        InboxStatus::Connected if !s.has_refresh_token => (
            C::Pending,
            "no Google account connected yet; connect the inbox's Google account",
        ),
        InboxStatus::Connected if s.last_synced_at_ms.is_none() => {
            (C::Pending, "waiting for the first sync with Gmail")
        }
        InboxStatus::Connected => (C::Connected, connected_message(s)),
        InboxStatus::NeedsReconnect => (
            C::NeedsReconnect,
            "Google refused the inbox's refresh token; reconnect the inbox's Google account",
        ),
        InboxStatus::Disconnected => (C::Disconnected, "the data plane disconnected the inbox"),
    };
    proto::InboxStatus {
        uid: s.uid.clone(),
        applied_generation: s.generation,
        connection_state: state.into(),
        connection_message: message.into(),
        last_sync_time: s.last_synced_at_ms,
        watch_expiration_time: s.watch_expires_at_ms,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn synced(
        topic: Option<&str>,
        expires: Option<i64>,
        error: Option<WatchError>,
    ) -> InboxSyncStatus {
        InboxSyncStatus {
            inbox_id: "i1".into(),
            uid: "u1".into(),
            generation: 2,
            status: InboxStatus::Connected,
            has_refresh_token: true,
            last_synced_at_ms: Some(1_000),
            watch_expires_at_ms: expires,
            pubsub_topic: topic.map(String::from),
            watch_error: error,
        }
    }

    #[test]
    fn the_connected_message_says_how_gmail_reaches_the_inbox_and_what_to_fix() {
        const TOPIC: &str = "projects/acme-mail/topics/gmail-push";
        let wire = |s: InboxSyncStatus| {
            let w = inbox_status_to_wire(&s);
            assert_eq!(
                w.connection_state,
                i32::from(proto::ConnectionState::Connected)
            );
            assert!(
                !w.connection_message.contains(TOPIC),
                "no configuration echoed"
            );
            (w.connection_message, w.watch_expiration_time)
        };
        let (m, expires) = wire(synced(Some(TOPIC), Some(9_000), None));
        assert_eq!(
            m,
            "synced with Gmail; Gmail pushes changes to the Pub/Sub topic"
        );
        assert_eq!(expires, Some(9_000));
        assert!(
            wire(synced(None, None, None))
                .0
                .contains("no Pub/Sub topic")
        );
        assert!(
            wire(synced(Some(TOPIC), None, None))
                .0
                .contains("registering")
        );
        let (m, expires) = wire(synced(Some(TOPIC), None, Some(WatchError::Forbidden)));
        assert!(
            m.contains("gmail-api-push@system.gserviceaccount.com"),
            "{m}"
        );
        assert_eq!(expires, None);
        assert!(
            wire(synced(Some(TOPIC), None, Some(WatchError::NotFound)))
                .0
                .contains("does not exist")
        );
        assert!(
            wire(synced(Some(TOPIC), None, Some(WatchError::Rejected)))
                .0
                .contains("refused")
        );
        assert!(
            wire(synced(
                Some(TOPIC),
                Some(9_000),
                Some(WatchError::Unavailable)
            ))
            .0
            .contains("retrying")
        );
    }

    #[test]
    fn inbox_topics_are_checked() {
        let spec = |topic: &str| {
            inbox_spec_from_wire(Some(proto::InboxSpec {
                tenant: "acme".into(),
                gmail_address: "support@acme.example".into(),
                visibility: proto::Visibility::Org.into(),
                team: String::new(),
                assignment_limits_visibility: false,
                pubsub_topic: topic.into(),
                push_audience: String::new(),
            }))
        };
        assert_eq!(spec("").unwrap().pubsub_topic, None);
        assert_eq!(
            spec("projects/acme-mail/topics/gmail-push")
                .unwrap()
                .pubsub_topic
                .as_deref(),
            Some("projects/acme-mail/topics/gmail-push")
        );
        let err = spec("projects/acme-mail/subscriptions/x").unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(err.message().contains("spec.pubsub_topic"));
    }

    #[test]
    fn names_are_checked_like_kubernetes_does() {
        assert!(is_dns_subdomain("support.acme-2"));
        assert!(!is_dns_subdomain("Support"));
        assert!(!is_dns_subdomain("a..b"));
        assert!(!is_dns_subdomain(&"a".repeat(254)));
        assert!(gmail_address("support@acme.example").is_ok());
        for bad in ["", "support", "@acme.example", "a@b", "a b@c.d", "a@b@c.d"] {
            let e = gmail_address(bad).expect_err(bad);
            assert_eq!(e.code(), tonic::Code::InvalidArgument);
        }
    }

    #[test]
    fn meta_must_carry_uid_and_generation() {
        let m = |ns: &str, name: &str, uid: &str, generation| proto::ObjectMeta {
            namespace: ns.into(),
            name: name.into(),
            uid: uid.into(),
            generation,
        };
        let ok = meta_from_wire(Some(m("team-a", "acme", "u", 1)), ControlKind::Tenant);
        assert_eq!(ok.map(|m| m.namespace).ok().as_deref(), Some(""));
        for (meta, kind) in [
            (m("ns", "acme", "u", 0), ControlKind::Tenant),
            (m("ns", "acme", "", 1), ControlKind::Inbox),
            (m("", "acme", "u", 1), ControlKind::Inbox),
            (m("ns", "Acme", "u", 1), ControlKind::Grant),
            (m("ns", "a.b", "u", 1), ControlKind::Tenant),
        ] {
            let e = meta_from_wire(Some(meta), kind).expect_err("invalid");
            assert_eq!(e.code(), tonic::Code::InvalidArgument);
        }
        assert!(meta_from_wire(None, ControlKind::Grant).is_err());
    }
}
