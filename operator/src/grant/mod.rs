//! The InboxGrant controller.
//!
//! Reconcile is a pipeline: [`validate`] (pure: inboxRef, subject, role, expirationTime) →
//! the referenced Inbox exists in the grant's namespace → `UpsertGrant` at the grant's uid and
//! generation, or, once `expirationTime` has passed, `DeleteGrant` (revoke) → status
//! (observedGeneration, Ready, DataPlaneSynced) → requeue at the expiration time
//! ([`requeue_after`], capped) so that the revoke happens on time. Deleting the InboxGrant
//! revokes it (`DeleteGrant`) before the finalizer is removed. See [`reconcile`].

pub mod model;
pub mod reconcile;

pub use model::{ValidGrant, requeue_after, validate};
pub use reconcile::{error_policy, reconcile};

use helpr_crds::SpecErrors;
use helpr_crds::conditions::reasons;

use crate::control::ControlError;
use crate::tenant::control_reason;

/// A failed step of the InboxGrant controller, naming the grant (`namespace/name`).
#[derive(Debug, thiserror::Error)]
pub enum GrantError {
    #[error("inbox grant {grant}: {reason}")]
    InvalidGrant { grant: String, reason: String },
    #[error("inbox grant {grant}: invalid spec: {errors}")]
    InvalidSpec { grant: String, errors: SpecErrors },
    #[error("inbox grant {grant}: inbox {inbox} does not exist in the grant's namespace")]
    InboxNotFound { grant: String, inbox: String },
    #[error("inbox grant {grant}: read inbox {inbox}")]
    ReadInbox {
        grant: String,
        inbox: String,
        #[source]
        source: kube::Error,
    },
    #[error("inbox grant {grant}: push the grant to the data plane")]
    SyncDataPlane {
        grant: String,
        #[source]
        source: ControlError,
    },
    #[error("inbox grant {grant}: revoke the grant on the data plane")]
    Revoke {
        grant: String,
        #[source]
        source: ControlError,
    },
    #[error("inbox grant {grant}: patch status")]
    PatchStatus {
        grant: String,
        #[source]
        source: kube::Error,
    },
    #[error("inbox grant {grant}: {source}")]
    Finalizer {
        grant: String,
        #[source]
        source: Box<kube::runtime::finalizer::Error<GrantError>>,
    },
}

impl GrantError {
    /// A CamelCase word for Event reasons, condition reasons and metric labels.
    pub fn category(&self) -> &'static str {
        use GrantError::*;
        match self {
            InvalidGrant { .. } | InvalidSpec { .. } => reasons::INVALID_SPEC,
            InboxNotFound { .. } => reasons::INBOX_NOT_FOUND,
            ReadInbox { .. } => "ReadFailed",
            // The data plane does not know the inbox yet (its Inbox is not synced).
            SyncDataPlane {
                source: ControlError::NotFound(_),
                ..
            } => reasons::INBOX_NOT_READY,
            SyncDataPlane { source, .. } | Revoke { source, .. } => control_reason(source),
            PatchStatus { .. } => "StatusUpdateFailed",
            Finalizer { source, .. } => match source.as_ref() {
                kube::runtime::finalizer::Error::ApplyFailed(e)
                | kube::runtime::finalizer::Error::CleanupFailed(e) => e.category(),
                _ => "FinalizerFailed",
            },
        }
    }

    /// Whether only a change to the InboxGrant can fix it (reported as Stalled).
    pub fn is_permanent(&self) -> bool {
        match self {
            GrantError::InvalidGrant { .. } | GrantError::InvalidSpec { .. } => true,
            GrantError::Finalizer { source, .. } => match source.as_ref() {
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

impl crate::tenant::reconcile::ControllerError for GrantError {
    fn category(&self) -> &'static str {
        GrantError::category(self)
    }

    fn is_permanent(&self) -> bool {
        GrantError::is_permanent(self)
    }
}
