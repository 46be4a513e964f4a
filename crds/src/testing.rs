//! Fixture builders for tests (feature `testing`, and this crate's own tests).
//!
//! Each kind has `Kind::test(..)`, a valid object in namespace [`TEST_NAMESPACE`] with
//! generation 1 and a deterministic uid, and `with_...` modifiers for its spec. The
//! [`Fixture`] trait adds the metadata and status modifiers every kind shares:
//!
//! ```
//! use helpr_crds::testing::{Fixture, time};
//! use helpr_crds::tenant::DeletionPolicy;
//! use helpr_crds::{HelprResource, Tenant};
//!
//! let tenant = Tenant::test("acme")
//!     .with_deletion_policy(DeletionPolicy::Shred)
//!     .with_token_auth("acme-vault-token")
//!     .with_finalizer()
//!     .with_generation(3)
//!     .with_deleted_at(time(1_700_000_000));
//! assert!(tenant.has_finalizer());
//! assert!(tenant.spec.validate().is_ok());
//! ```

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;

use crate::conditions::{Condition, ConditionStatus, StatusConditions};
use crate::inbox::{InboxPubSub, Visibility};
use crate::inbox_grant::{GrantRole, GrantSubject, SubjectKind};
use crate::refs::{CaBundleSecretRef, LocalObjectRef, TokenSecretRef};
use crate::tenant::{
    DeletionPolicy, SearchBackend, SearchMode, ServiceAccountRef, TenantSearch, TenantSync,
    VaultAuth, VaultKms, VaultKubernetesAuth,
};
use crate::{
    HelprResource, Inbox, InboxGrant, InboxGrantSpec, InboxSpec, RetentionPolicy,
    RetentionPolicySpec, Tenant, TenantSpec, retention_policy,
};

/// Namespace of every fixture.
pub const TEST_NAMESPACE: &str = "helpr-test";

/// The time `seconds` after the Unix epoch (clamped to jiff's range).
pub fn time(seconds: i64) -> Time {
    Time(Timestamp::from_second(seconds).unwrap_or(Timestamp::UNIX_EPOCH))
}

fn meta(kind: &str, name: &str) -> ObjectMeta {
    // A stable, UUID-shaped uid derived from kind and name (FNV-1a).
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in kind.bytes().chain([b'/']).chain(name.bytes()) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    ObjectMeta {
        name: Some(name.to_owned()),
        namespace: Some(TEST_NAMESPACE.to_owned()),
        uid: Some(format!(
            "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
            hash >> 32,
            (hash >> 16) & 0xffff,
            hash & 0xfff,
            (hash >> 20) & 0xfff,
            hash & 0xffff_ffff_ffff
        )),
        generation: Some(1),
        creation_timestamp: Some(time(1_767_225_600)),
        ..ObjectMeta::default()
    }
}

/// Metadata and status modifiers shared by every kind's fixture.
pub trait Fixture: HelprResource + Sized {
    /// Sets the namespace.
    fn with_namespace(mut self, namespace: &str) -> Self {
        self.meta_mut().namespace = Some(namespace.to_owned());
        self
    }

    /// Sets `metadata.generation`.
    fn with_generation(mut self, generation: i64) -> Self {
        self.meta_mut().generation = Some(generation);
        self
    }

    /// Adds the kind's finalizer.
    fn with_finalizer(mut self) -> Self {
        self.meta_mut()
            .finalizers
            .get_or_insert_with(Vec::new)
            .push(Self::FINALIZER.to_owned());
        self
    }

    /// Marks the object as being deleted at `at`.
    fn with_deleted_at(mut self, at: Time) -> Self {
        self.meta_mut().deletion_timestamp = Some(at);
        self
    }

    /// Sets `status.observedGeneration`.
    fn with_observed_generation(mut self, generation: i64) -> Self {
        self.status_mut().set_observed_generation(Some(generation));
        self
    }

    /// Sets a condition (observed at the object's current generation, at time 0).
    fn with_condition(mut self, type_: &str, status: ConditionStatus, reason: &str) -> Self {
        let generation = self.meta().generation;
        let message = format!("{type_} is {status:?} because {reason}");
        self.status_mut().set_condition(
            Condition::new(type_, status, reason, message, time(0))
                .with_observed_generation(generation),
        );
        self
    }

    /// Ready True with reason Reconciled, observed at the current generation.
    fn with_ready(self) -> Self {
        let generation = self.meta().generation.unwrap_or(1);
        self.with_condition(
            crate::conditions::types::READY,
            ConditionStatus::True,
            crate::conditions::reasons::RECONCILED,
        )
        .with_observed_generation(generation)
    }
}

impl<T: HelprResource + Sized> Fixture for T {}

impl Tenant {
    /// A valid Tenant: Retain, Kubernetes auth (role `helpr-NAME`, service account
    /// `helpr-NAME`) against `https://vault.vault.svc:8200`, blind Tantivy search, 1 replica.
    pub fn test(name: &str) -> Self {
        let mut tenant = Tenant::new(
            name,
            TenantSpec {
                display_name: format!("{name} (test)"),
                kms: VaultKms {
                    server: "https://vault.vault.svc:8200".to_owned(),
                    namespace: None,
                    transit_mount: "transit".to_owned(),
                    ca_bundle_secret_ref: None,
                    auth: VaultAuth::Kubernetes(VaultKubernetesAuth {
                        mount_path: "kubernetes".to_owned(),
                        role: format!("helpr-{name}"),
                        service_account_ref: ServiceAccountRef {
                            name: format!("helpr-{name}"),
                            audiences: Vec::new(),
                        },
                    }),
                },
                deletion_policy: DeletionPolicy::Retain,
                search: TenantSearch::default(),
                sync: TenantSync::default(),
            },
        );
        tenant.metadata = meta("Tenant", name);
        tenant
    }

    /// Sets `deletionPolicy`.
    pub fn with_deletion_policy(mut self, policy: DeletionPolicy) -> Self {
        self.spec.deletion_policy = policy;
        self
    }

    /// Authenticates with the token under key `token` of Secret `secret`.
    pub fn with_token_auth(mut self, secret: &str) -> Self {
        self.spec.kms.auth = VaultAuth::TokenSecretRef(TokenSecretRef::new(secret));
        self
    }

    /// Authenticates with Kubernetes auth as `role`, presenting service account `service_account`.
    pub fn with_kubernetes_auth(mut self, role: &str, service_account: &str) -> Self {
        self.spec.kms.auth = VaultAuth::Kubernetes(VaultKubernetesAuth {
            mount_path: "kubernetes".to_owned(),
            role: role.to_owned(),
            service_account_ref: ServiceAccountRef {
                name: service_account.to_owned(),
                audiences: Vec::new(),
            },
        });
        self
    }

    /// Sets the KMS server URL.
    pub fn with_kms_server(mut self, server: &str) -> Self {
        self.spec.kms.server = server.to_owned();
        self
    }

    /// Verifies the KMS with the CA bundle under `ca.crt` of Secret `secret`.
    pub fn with_ca_bundle(mut self, secret: &str) -> Self {
        self.spec.kms.ca_bundle_secret_ref = Some(CaBundleSecretRef::new(secret));
        self
    }

    /// Sets the search backend and mode.
    pub fn with_search(mut self, backend: SearchBackend, mode: SearchMode) -> Self {
        self.spec.search = TenantSearch { backend, mode };
        self
    }

    /// Sets the number of sync workers.
    pub fn with_replicas(mut self, replicas: i32) -> Self {
        self.spec.sync.replicas = replicas;
        self
    }
}

impl Inbox {
    /// A valid Inbox of `tenant`: address `NAME@example.com`, visibility Org, Pub/Sub topic
    /// `projects/helpr-test/topics/gmail-TENANT`.
    pub fn test(name: &str, tenant: &str) -> Self {
        let mut inbox = Inbox::new(
            name,
            InboxSpec {
                tenant_ref: LocalObjectRef::new(tenant),
                gmail_address: format!("{name}@example.com"),
                visibility: Visibility::Org,
                team_name: None,
                assignment_limits_visibility: false,
                pub_sub: InboxPubSub {
                    topic: format!("projects/helpr-test/topics/gmail-{tenant}"),
                    push_audience: "https://ingest.helpr.example/push".to_owned(),
                },
            },
        );
        inbox.metadata = meta("Inbox", name);
        inbox
    }

    /// Sets the address.
    pub fn with_address(mut self, address: &str) -> Self {
        self.spec.gmail_address = address.to_owned();
        self
    }

    /// Visibility Org.
    pub fn with_org_visibility(mut self) -> Self {
        self.spec.visibility = Visibility::Org;
        self.spec.team_name = None;
        self
    }

    /// Visibility Team for `team`.
    pub fn with_team_visibility(mut self, team: &str) -> Self {
        self.spec.visibility = Visibility::Team;
        self.spec.team_name = Some(team.to_owned());
        self
    }

    /// Visibility Restricted.
    pub fn with_restricted_visibility(mut self) -> Self {
        self.spec.visibility = Visibility::Restricted;
        self.spec.team_name = None;
        self
    }

    /// Sets `assignmentLimitsVisibility`.
    pub fn with_assignment_limits_visibility(mut self, limits: bool) -> Self {
        self.spec.assignment_limits_visibility = limits;
        self
    }
}

impl InboxGrant {
    /// A valid grant of role Reply on `inbox` to the agent `agent`, without expiration.
    pub fn test(name: &str, inbox: &str, agent: &str) -> Self {
        let mut grant = InboxGrant::new(
            name,
            InboxGrantSpec {
                inbox_ref: LocalObjectRef::new(inbox),
                subject: GrantSubject {
                    kind: SubjectKind::Agent,
                    name: agent.to_owned(),
                },
                role: GrantRole::Reply,
                expiration_time: None,
            },
        );
        grant.metadata = meta("InboxGrant", name);
        grant
    }

    /// Grants to the team `team` instead.
    pub fn with_team(mut self, team: &str) -> Self {
        self.spec.subject = GrantSubject {
            kind: SubjectKind::Team,
            name: team.to_owned(),
        };
        self
    }

    /// Sets the role.
    pub fn with_role(mut self, role: GrantRole) -> Self {
        self.spec.role = role;
        self
    }

    /// Expires at `at`.
    pub fn with_expiration(mut self, at: Time) -> Self {
        self.spec.expiration_time = Some(at);
        self
    }
}

impl RetentionPolicy {
    /// A valid policy for `tenant` with the defaults: 60 days' grace, daily purge at 03:00 UTC,
    /// no auto-delete, no legal hold.
    pub fn test(name: &str, tenant: &str) -> Self {
        let mut policy = RetentionPolicy::new(
            name,
            RetentionPolicySpec {
                tenant_ref: LocalObjectRef::new(tenant),
                grace_period_days: retention_policy::DEFAULT_GRACE_PERIOD_DAYS,
                purge_schedule: retention_policy::DEFAULT_PURGE_SCHEDULE.to_owned(),
                time_zone: None,
                delete_after_days: None,
                legal_hold: false,
            },
        );
        policy.metadata = meta("RetentionPolicy", name);
        policy
    }

    /// Sets `legalHold`.
    pub fn with_legal_hold(mut self, hold: bool) -> Self {
        self.spec.legal_hold = hold;
        self
    }

    /// Sets the schedule and its time zone.
    pub fn with_schedule(mut self, cron: &str, time_zone: Option<&str>) -> Self {
        self.spec.purge_schedule = cron.to_owned();
        self.spec.time_zone = time_zone.map(str::to_owned);
        self
    }

    /// Sets `gracePeriodDays`.
    pub fn with_grace_period_days(mut self, days: i32) -> Self {
        self.spec.grace_period_days = days;
        self
    }

    /// Sets `deleteAfterDays`.
    pub fn with_delete_after_days(mut self, days: Option<i32>) -> Self {
        self.spec.delete_after_days = days;
        self
    }
}
