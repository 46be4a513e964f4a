//! Custom resource types of helpr vault: [`Tenant`], [`Inbox`], [`InboxGrant`] and
//! [`RetentionPolicy`], in API group `mail.helpr.dev`, version `v1alpha1`.
//!
//! This crate is the only home of the CRD Rust types. It has no client or runtime: controllers
//! (crate `helpr-operator`) read these types, and `crdgen` writes the YAML that Helm installs.
//!
//! # For controller authors
//!
//! - **Kinds** — one module each: [`tenant`], [`inbox`], [`inbox_grant`], [`retention_policy`].
//!   All are namespaced; every reference (`tenantRef`, `inboxRef`, secret references) points
//!   into the object's own namespace.
//! - **[`HelprResource`]** — implemented by all four: the kind's domain-qualified
//!   [finalizer](HelprResource::FINALIZER) (e.g. `tenant.mail.helpr.dev/cleanup`), the
//!   [condition types](HelprResource::CONDITION_TYPES) it reports, and status accessors
//!   ([`HelprResource::status_mut`] creates the status; [`HelprResource::is_status_current`]
//!   compares `status.observedGeneration` with `metadata.generation`).
//! - **Conditions** — [`conditions`] holds the [`Condition`] type (the `metav1.Condition`
//!   shape with bounds), the condition types ([`conditions::types`]) and
//!   reasons ([`conditions::reasons`]) as constants, and [`StatusConditions`], whose setters keep
//!   `lastTransitionTime` when the status does not change and drop the kstatus conditions
//!   `Reconciling`/`Stalled` unless they are True. Write `Ready` (and the kind's domain
//!   conditions) as Unknown on the first reconcile with [`StatusConditions::init_conditions`].
//!   There is no `phase`.
//! - **Validation** — the schema's bounds and CEL rules are enforced by the apiserver. Each
//!   spec also has a pure `validate()` (and `validate_update(old)` where fields are immutable)
//!   returning [`SpecErrors`]; report a failure as `Ready=False` + `Stalled=True` with reason
//!   [`conditions::reasons::INVALID_SPEC`]. [`cron::CronSchedule`] parses a RetentionPolicy's
//!   `purgeSchedule` and finds the next run.
//! - **Things only the operator can check** (cross-object): a Tenant's name must be unique in the
//!   cluster (it is the tenant's id in the data plane); at most one RetentionPolicy per tenant
//!   (reason [`conditions::reasons::CONFLICT`]); a Shred deletion waits while the tenant's
//!   RetentionPolicy has `legalHold` (reason [`conditions::reasons::LEGAL_HOLD`]).
//! - **CRDs** — [`all_crds`] returns the four CustomResourceDefinitions (the operator's `crds`
//!   subcommand prints them). `cargo run -p helpr-crds --bin crdgen` rewrites the checked-in
//!   YAML in `crds/yaml/` and `charts/helpr/crds/`; `crdgen --check` fails on drift.
//! - **Test fixtures** — with the `testing` feature (or in this crate's tests),
//!   `Tenant::test("acme")`, `Inbox::test("support", "acme")`, `InboxGrant::test(..)` and
//!   `RetentionPolicy::test(..)` build valid objects with `with_...` modifiers; see the `testing` module.
#![forbid(unsafe_code)]

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::{CustomResourceExt, Resource};

pub mod conditions;
pub mod cron;
pub mod inbox;
pub mod inbox_grant;
pub mod manifests;
pub mod refs;
pub mod retention_policy;
pub mod tenant;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod validation;

pub use conditions::{Condition, ConditionStatus, StatusConditions};
pub use inbox::{Inbox, InboxSpec, InboxStatus};
pub use inbox_grant::{InboxGrant, InboxGrantSpec, InboxGrantStatus};
pub use refs::{CaBundleSecretRef, LocalObjectRef, TokenSecretRef};
pub use retention_policy::{RetentionPolicy, RetentionPolicySpec, RetentionPolicyStatus};
pub use tenant::{Tenant, TenantSpec, TenantStatus};
pub use validation::{SpecError, SpecErrors};

/// The API group of every helpr custom resource.
pub const API_GROUP: &str = "mail.helpr.dev";

/// The served and stored version of every helpr custom resource.
pub const API_VERSION: &str = "v1alpha1";

/// The `kubectl get` category of every helpr custom resource (`kubectl get helpr`).
pub const CATEGORY: &str = "helpr";

/// `group/version`, as it appears in a manifest's `apiVersion`.
pub fn api_version() -> String {
    format!("{API_GROUP}/{API_VERSION}")
}

/// Finalizer names, domain-qualified with a path as the apiserver expects.
pub mod finalizers {
    /// Tenant: removes the tenant from the data plane and, with `deletionPolicy: Shred`, destroys
    /// its transit key.
    pub const TENANT: &str = "tenant.mail.helpr.dev/cleanup";
    /// Inbox: stops the Gmail watch and removes the inbox from the data plane.
    pub const INBOX: &str = "inbox.mail.helpr.dev/cleanup";
    /// InboxGrant: revokes the grant in the data plane.
    pub const INBOX_GRANT: &str = "inboxgrant.mail.helpr.dev/cleanup";
    /// RetentionPolicy: removes the policy from the data plane (purge falls back to none).
    pub const RETENTION_POLICY: &str = "retentionpolicy.mail.helpr.dev/cleanup";
}

/// What every helpr kind offers controllers.
pub trait HelprResource: Resource<DynamicType = ()> + CustomResourceExt {
    /// The kind's status type.
    type Status: StatusConditions + Default;

    /// The kind's finalizer (see [`finalizers`]).
    const FINALIZER: &'static str;

    /// The condition types the kind reports besides Reconciling and Stalled, Ready first.
    const CONDITION_TYPES: &'static [&'static str];

    /// The status, if the operator has written one.
    fn status(&self) -> Option<&Self::Status>;

    /// The status, created empty if absent.
    fn status_mut(&mut self) -> &mut Self::Status;

    /// The kind's finalizer (see [`finalizers`]).
    fn finalizer() -> &'static str {
        Self::FINALIZER
    }

    /// Whether the object carries the kind's finalizer.
    fn has_finalizer(&self) -> bool {
        self.meta()
            .finalizers
            .as_ref()
            .is_some_and(|f| f.iter().any(|name| name == Self::FINALIZER))
    }

    /// `metadata.generation`.
    fn generation(&self) -> Option<i64> {
        self.meta().generation
    }

    /// Whether the status was computed from the current generation of the spec.
    fn is_status_current(&self) -> bool {
        self.status()
            .and_then(StatusConditions::observed_generation)
            .is_some_and(|observed| Some(observed) == self.generation())
    }

    /// Whether Ready is True and computed from the current generation.
    fn is_ready(&self) -> bool {
        self.is_status_current() && self.status().is_some_and(StatusConditions::is_ready)
    }
}

macro_rules! impl_helpr_resource {
    ($kind:ty, $status:ty, $finalizer:expr, [$($condition:expr),+ $(,)?]) => {
        impl $crate::HelprResource for $kind {
            type Status = $status;
            const FINALIZER: &'static str = $finalizer;
            const CONDITION_TYPES: &'static [&'static str] = &[$($condition),+];

            fn status(&self) -> Option<&Self::Status> {
                self.status.as_ref()
            }

            fn status_mut(&mut self) -> &mut Self::Status {
                self.status.get_or_insert_with(Default::default)
            }
        }
    };
}

use conditions::types;
impl_helpr_resource!(
    Tenant,
    TenantStatus,
    finalizers::TENANT,
    [
        types::READY,
        types::KMS_PROVISIONED,
        types::DATA_PLANE_SYNCED
    ]
);
impl_helpr_resource!(
    Inbox,
    InboxStatus,
    finalizers::INBOX,
    [types::READY, types::CONNECTED, types::DATA_PLANE_SYNCED]
);
impl_helpr_resource!(
    InboxGrant,
    InboxGrantStatus,
    finalizers::INBOX_GRANT,
    [types::READY, types::DATA_PLANE_SYNCED]
);
impl_helpr_resource!(
    RetentionPolicy,
    RetentionPolicyStatus,
    finalizers::RETENTION_POLICY,
    [
        types::READY,
        types::DATA_PLANE_SYNCED,
        types::PURGE_SCHEDULED
    ]
);

/// The CustomResourceDefinitions of every helpr kind, in a fixed order (Tenant, Inbox,
/// InboxGrant, RetentionPolicy).
pub fn all_crds() -> Vec<CustomResourceDefinition> {
    vec![
        Tenant::crd(),
        Inbox::crd(),
        InboxGrant::crd(),
        RetentionPolicy::crd(),
    ]
}

#[cfg(test)]
mod tests {
    #[test]
    fn api_version_joins_group_and_version() {
        assert_eq!(super::api_version(), "mail.helpr.dev/v1alpha1");
    }
}
