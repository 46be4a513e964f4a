//! The RetentionPolicy controller.
//!
//! Reconcile is a pipeline: [`validate`] (pure: bounds, a 5-field cron schedule that fires,
//! an IANA time zone the tz database knows) → the referenced Tenant exists in the policy's
//! namespace and is Ready (its validated model gives the pods' image, Vault and search
//! settings) → `UpsertRetentionPolicy` at the policy's uid and generation (grace period,
//! deleteAfterDays, legal hold; ALREADY_EXISTS when another object owns the tenant's
//! policy) → [`build`] (pure: the purge CronJob running `helpr-dataplane purge --tenant
//! <id>` and the NetworkPolicy of its pods) → server-side apply of both → status
//! (observedGeneration, Ready, DataPlaneSynced, PurgeScheduled, lastPurgeTime and
//! nextPurgeTime). Deleting the policy calls `DeleteRetentionPolicy` before the finalizer is
//! removed; the CronJob and NetworkPolicy go with their owner reference. See [`reconcile`].

pub mod children;
pub mod model;
pub mod reconcile;

pub use children::{PurgeChildren, build, purge_name};
pub use model::{ValidRetentionPolicy, validate};
pub use reconcile::{error_policy, reconcile};

/// Condition and Event reason while the policy's Tenant is being deleted.
pub const TENANT_DELETING: &str = "TenantDeleting";

use helpr_crds::conditions::reasons;
use helpr_crds::{SpecError, SpecErrors};
use tonic::Code;

use crate::control::ControlError;
use crate::tenant::{TenantError, control_reason};

/// A failed step of the RetentionPolicy controller, naming the policy (`namespace/name`).
#[derive(Debug, thiserror::Error)]
pub enum RetentionError {
    #[error("retention policy {policy}: {reason}")]
    InvalidPolicy { policy: String, reason: String },
    #[error("retention policy {policy}: invalid spec: {errors}")]
    InvalidSpec { policy: String, errors: SpecErrors },
    #[error("retention policy {policy}: invalid spec: {source}")]
    InvalidSchedule {
        policy: String,
        #[source]
        source: SpecError,
    },
    #[error(
        "retention policy {policy}: spec.purgeSchedule {schedule:?} never fires (no such date); pick a day that exists"
    )]
    ScheduleNeverFires { policy: String, schedule: String },
    #[error(
        "retention policy {policy}: spec.timeZone {time_zone:?} is not in the tz database; use an IANA name such as UTC or Europe/Berlin"
    )]
    UnknownTimeZone { policy: String, time_zone: String },
    #[error("retention policy {policy}: tenant {tenant} does not exist in the policy's namespace")]
    TenantNotFound { policy: String, tenant: String },
    #[error("retention policy {policy}: tenant {tenant} is not Ready")]
    TenantNotReady { policy: String, tenant: String },
    #[error("retention policy {policy}: tenant {tenant} is being deleted")]
    TenantDeleting { policy: String, tenant: String },
    #[error("retention policy {policy}: suspending the purge CronJob {name} failed")]
    SuspendCronJob {
        policy: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("retention policy {policy}: tenant {tenant} cannot run purges")]
    InvalidTenant {
        policy: String,
        tenant: String,
        #[source]
        source: Box<TenantError>,
    },
    #[error("retention policy {policy}: read tenant {tenant}")]
    ReadTenant {
        policy: String,
        tenant: String,
        #[source]
        source: kube::Error,
    },
    #[error(
        "retention policy {policy}: tenant {tenant} already has a RetentionPolicy from another object; keep one RetentionPolicy per tenant and delete this one or the other"
    )]
    Conflict {
        policy: String,
        tenant: String,
        #[source]
        source: ControlError,
    },
    #[error("retention policy {policy}: push the policy to the data plane")]
    SyncDataPlane {
        policy: String,
        #[source]
        source: ControlError,
    },
    #[error("retention policy {policy}: apply network policy {name}")]
    ApplyNetworkPolicy {
        policy: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("retention policy {policy}: apply cron job {name}")]
    ApplyCronJob {
        policy: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("retention policy {policy}: delete the policy from the data plane")]
    DeleteFromDataPlane {
        policy: String,
        #[source]
        source: ControlError,
    },
    #[error("retention policy {policy}: patch status")]
    PatchStatus {
        policy: String,
        #[source]
        source: kube::Error,
    },
    #[error("retention policy {policy}: {source}")]
    Finalizer {
        policy: String,
        #[source]
        source: Box<kube::runtime::finalizer::Error<RetentionError>>,
    },
}

impl RetentionError {
    /// A failed upsert, as the error that says what to do: ALREADY_EXISTS is a [`Conflict`]
    /// (another object owns the tenant's policy).
    ///
    /// [`Conflict`]: RetentionError::Conflict
    pub fn from_upsert(policy: String, tenant: &str, source: ControlError) -> Self {
        if source.code() == Some(Code::AlreadyExists) {
            RetentionError::Conflict {
                policy,
                tenant: tenant.to_owned(),
                source,
            }
        } else {
            RetentionError::SyncDataPlane { policy, source }
        }
    }

    /// A CamelCase word for Event reasons, condition reasons and metric labels.
    pub fn category(&self) -> &'static str {
        use RetentionError::*;
        match self {
            InvalidPolicy { .. }
            | InvalidSpec { .. }
            | InvalidSchedule { .. }
            | ScheduleNeverFires { .. }
            | UnknownTimeZone { .. } => reasons::INVALID_SPEC,
            TenantNotFound { .. } => reasons::TENANT_NOT_FOUND,
            TenantDeleting { .. } => TENANT_DELETING,
            SuspendCronJob { .. } => "SuspendFailed",
            TenantNotReady { .. } | InvalidTenant { .. } => reasons::TENANT_NOT_READY,
            ReadTenant { .. } => "ReadFailed",
            Conflict { .. } => reasons::CONFLICT,
            // The data plane does not know the tenant yet.
            SyncDataPlane {
                source: ControlError::NotFound(_),
                ..
            } => reasons::TENANT_NOT_READY,
            SyncDataPlane { source, .. } | DeleteFromDataPlane { source, .. } => {
                control_reason(source)
            }
            ApplyNetworkPolicy { .. } => "ApplyNetworkPolicyFailed",
            ApplyCronJob { .. } => "ApplyCronJobFailed",
            PatchStatus { .. } => "StatusUpdateFailed",
            Finalizer { source, .. } => match source.as_ref() {
                kube::runtime::finalizer::Error::ApplyFailed(e)
                | kube::runtime::finalizer::Error::CleanupFailed(e) => e.category(),
                _ => "FinalizerFailed",
            },
        }
    }

    /// Whether only a change to this policy (or to another object) can fix it: reported as
    /// Stalled. A conflict is looked at again after the longest backoff, since deleting the
    /// other policy does not wake this one.
    pub fn is_permanent(&self) -> bool {
        use RetentionError::*;
        match self {
            InvalidPolicy { .. }
            | InvalidSpec { .. }
            | InvalidSchedule { .. }
            | ScheduleNeverFires { .. }
            | UnknownTimeZone { .. }
            | Conflict { .. } => true,
            Finalizer { source, .. } => match source.as_ref() {
                kube::runtime::finalizer::Error::ApplyFailed(e)
                | kube::runtime::finalizer::Error::CleanupFailed(e) => e.is_permanent(),
                _ => false,
            },
            _ => false,
        }
    }
}

impl crate::tenant::reconcile::ControllerError for RetentionError {
    fn category(&self) -> &'static str {
        RetentionError::category(self)
    }

    fn is_permanent(&self) -> bool {
        RetentionError::is_permanent(self)
    }

    fn waits_for_parent(&self) -> bool {
        matches!(self, RetentionError::TenantNotReady { .. })
    }
}

#[cfg(test)]
mod tests;
