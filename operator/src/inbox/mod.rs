//! The Inbox controller.
//!
//! Reconcile is a pipeline: [`validate`] (pure) → the referenced Tenant exists in the inbox's
//! namespace and is Ready → `UpsertInbox` at the inbox's uid and generation (tenant, Gmail
//! address, visibility, team, assignmentLimitsVisibility) → `GetInboxStatus` → status
//! (observedGeneration, Ready, DataPlaneSynced, Connected from the data plane's connection
//! state, lastSyncTime, watchExpirationTime; a failed status call keeps Connected as it was). Deleting the Inbox calls `DeleteInbox` (the data plane disconnects it and removes
//! its grants) before the finalizer is removed; its mail stays until the lifecycle module
//! (cascading soft delete and purge) exists. See [`reconcile`].

pub mod model;
pub mod reconcile;

pub use model::{ValidInbox, validate};
pub use reconcile::{error_policy, reconcile};

/// Reason of an Inbox whose push audience the ingest endpoint does not accept.
pub const PUSH_AUDIENCE_NOT_ACCEPTED: &str = "PushAudienceNotAccepted";

use helpr_crds::SpecErrors;
use helpr_crds::conditions::reasons;

use crate::control::ControlError;
use crate::tenant::control_reason;

/// A failed step of the Inbox controller, naming the inbox (`namespace/name`).
#[derive(Debug, thiserror::Error)]
pub enum InboxError {
    #[error("inbox {inbox}: {reason}")]
    InvalidInbox { inbox: String, reason: String },
    #[error("inbox {inbox}: invalid spec: {errors}")]
    InvalidSpec { inbox: String, errors: SpecErrors },
    #[error(
        "inbox {inbox}: spec.pubSub.pushAudience is not an audience the ingest endpoint accepts, so every push would be refused; use one of the chart's config.push.audience and config.push.additionalAudiences, or add it there"
    )]
    PushAudienceNotAccepted { inbox: String },
    #[error("inbox {inbox}: tenant {tenant} does not exist in the inbox's namespace")]
    TenantNotFound { inbox: String, tenant: String },
    #[error("inbox {inbox}: tenant {tenant} is not Ready")]
    TenantNotReady { inbox: String, tenant: String },
    #[error("inbox {inbox}: read tenant {tenant}")]
    ReadTenant {
        inbox: String,
        tenant: String,
        #[source]
        source: kube::Error,
    },
    #[error("inbox {inbox}: push the inbox to the data plane")]
    SyncDataPlane {
        inbox: String,
        #[source]
        source: ControlError,
    },
    #[error("inbox {inbox}: delete the inbox from the data plane")]
    DeleteFromDataPlane {
        inbox: String,
        #[source]
        source: ControlError,
    },
    #[error("inbox {inbox}: patch status")]
    PatchStatus {
        inbox: String,
        #[source]
        source: kube::Error,
    },
    #[error("inbox {inbox}: {source}")]
    Finalizer {
        inbox: String,
        #[source]
        source: Box<kube::runtime::finalizer::Error<InboxError>>,
    },
}

impl InboxError {
    /// A CamelCase word for Event reasons, condition reasons and metric labels.
    pub fn category(&self) -> &'static str {
        use InboxError::*;
        match self {
            InvalidInbox { .. } | InvalidSpec { .. } => reasons::INVALID_SPEC,
            PushAudienceNotAccepted { .. } => PUSH_AUDIENCE_NOT_ACCEPTED,
            TenantNotFound { .. } => reasons::TENANT_NOT_FOUND,
            TenantNotReady { .. } => reasons::TENANT_NOT_READY,
            ReadTenant { .. } => "ReadFailed",
            // The data plane does not know the tenant yet.
            SyncDataPlane {
                source: ControlError::NotFound(_),
                ..
            } => reasons::TENANT_NOT_READY,
            SyncDataPlane { source, .. } | DeleteFromDataPlane { source, .. } => {
                control_reason(source)
            }
            PatchStatus { .. } => "StatusUpdateFailed",
            Finalizer { source, .. } => match source.as_ref() {
                kube::runtime::finalizer::Error::ApplyFailed(e)
                | kube::runtime::finalizer::Error::CleanupFailed(e) => e.category(),
                _ => "FinalizerFailed",
            },
        }
    }

    /// Whether only a change to the Inbox can fix it (reported as Stalled).
    pub fn is_permanent(&self) -> bool {
        match self {
            InboxError::InvalidInbox { .. }
            | InboxError::InvalidSpec { .. }
            | InboxError::PushAudienceNotAccepted { .. } => true,
            InboxError::Finalizer { source, .. } => match source.as_ref() {
                kube::runtime::finalizer::Error::ApplyFailed(e)
                | kube::runtime::finalizer::Error::CleanupFailed(e) => e.is_permanent(),
                _ => false,
            },
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests;

impl crate::tenant::reconcile::ControllerError for InboxError {
    fn category(&self) -> &'static str {
        InboxError::category(self)
    }

    fn is_permanent(&self) -> bool {
        InboxError::is_permanent(self)
    }

    fn waits_for_parent(&self) -> bool {
        matches!(self, InboxError::TenantNotReady { .. })
    }
}
