//! The Tenant controller.
//!
//! Reconcile is a pipeline: dereference (the Tenant, its Secrets) → [`validate`] (pure) →
//! [`build`] (pure: the ServiceAccount, NetworkPolicy and Deployment of the tenant's sync
//! workers) → apply (Vault provisioning, server-side apply of the children, the data plane's
//! tenant record) → status (Ready, KMSProvisioned, DataPlaneSynced). See [`reconcile`].

pub mod children;
pub mod kms;
pub mod model;
pub mod reconcile;

pub use children::{Children, build};
pub use model::{KmsAuth, ValidTenant, validate};
pub use reconcile::{Context, DataPlane, VaultProvisioner, error_policy, reconcile};

use helpr_crds::SpecErrors;
use helpr_crds::conditions::reasons;
use helpr_dataplane::kms::KmsError;

use crate::control::ControlError;

/// A failed step of the Tenant controller, naming the tenant (`namespace/name` where known)
/// and what it was doing. Never carries secret material: Vault and control errors hold
/// status codes and the servers' own messages only.
#[derive(Debug, thiserror::Error)]
pub enum TenantError {
    #[error("tenant {tenant}: {reason}")]
    InvalidTenant { tenant: String, reason: String },
    #[error("tenant {tenant}: invalid spec: {errors}")]
    InvalidSpec { tenant: String, errors: SpecErrors },
    #[error(
        "tenant {tenant}: a Tenant of the same name in namespace {other_namespace} is older; tenant names are ids and must be unique in the cluster"
    )]
    DuplicateTenant {
        tenant: String,
        other_namespace: String,
    },
    #[error("tenant {tenant}: list tenants of the same name")]
    ListTenants {
        tenant: String,
        #[source]
        source: kube::Error,
    },
    #[error("tenant {tenant}: read secret {secret}")]
    ReadSecret {
        tenant: String,
        secret: String,
        #[source]
        source: kube::Error,
    },
    #[error("tenant {tenant}: secret {secret} has no usable key {key}")]
    SecretKeyMissing {
        tenant: String,
        secret: String,
        key: String,
    },
    #[error("tenant {tenant}: request a token for service account {service_account}")]
    RequestToken {
        tenant: String,
        service_account: String,
        #[source]
        source: kube::Error,
    },
    #[error("tenant {tenant}: prepare the vault client")]
    VaultClient {
        tenant: String,
        #[source]
        source: KmsError,
    },
    #[error("tenant {tenant}: provision transit key, policy and role in vault")]
    ProvisionKms {
        tenant: String,
        #[source]
        source: KmsError,
    },
    #[error("tenant {tenant}: remove the sync role and policy from vault")]
    RetainKms {
        tenant: String,
        #[source]
        source: KmsError,
    },
    #[error("tenant {tenant}: destroy the transit key in vault")]
    ShredKms {
        tenant: String,
        #[source]
        source: KmsError,
    },
    #[error("tenant {tenant}: shred waits: retention policy {policy} has legalHold")]
    LegalHold { tenant: String, policy: String },
    #[error("tenant {tenant}: list retention policies")]
    ListRetentionPolicies {
        tenant: String,
        #[source]
        source: kube::Error,
    },
    #[error("tenant {tenant}: apply service account {name}")]
    ApplyServiceAccount {
        tenant: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("tenant {tenant}: apply network policy {name}")]
    ApplyNetworkPolicy {
        tenant: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("tenant {tenant}: apply index token secret {name}")]
    ApplyIndexToken {
        tenant: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("tenant {tenant}: apply deployment {name}")]
    ApplyDeployment {
        tenant: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("tenant {tenant}: delete deployment {name}")]
    DeleteDeployment {
        tenant: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("tenant {tenant}: push the tenant to the data plane")]
    SyncDataPlane {
        tenant: String,
        #[source]
        source: ControlError,
    },
    #[error("tenant {tenant}: delete the tenant from the data plane")]
    DeleteFromDataPlane {
        tenant: String,
        #[source]
        source: ControlError,
    },
    #[error("tenant {tenant}: patch status")]
    PatchStatus {
        tenant: String,
        #[source]
        source: kube::Error,
    },
    #[error("tenant {tenant}: {source}")]
    Finalizer {
        tenant: String,
        #[source]
        source: Box<kube::runtime::finalizer::Error<TenantError>>,
    },
}

impl TenantError {
    /// A CamelCase word for Event reasons, condition reasons and metric labels.
    pub fn category(&self) -> &'static str {
        use TenantError::*;
        match self {
            InvalidTenant { .. } | InvalidSpec { .. } => reasons::INVALID_SPEC,
            DuplicateTenant { .. } => reasons::CONFLICT,
            ListTenants { .. } => "ListFailed",
            ReadSecret { .. } | SecretKeyMissing { .. } => reasons::SECRET_NOT_FOUND,
            RequestToken { .. } => "TokenRequestFailed",
            VaultClient { .. } => "KMSConfigInvalid",
            ProvisionKms { source, .. } | RetainKms { source, .. } | ShredKms { source, .. } => {
                kms_reason(source)
            }
            LegalHold { .. } => reasons::LEGAL_HOLD,
            ListRetentionPolicies { .. } => "ListFailed",
            ApplyServiceAccount { .. } => "ApplyServiceAccountFailed",
            ApplyNetworkPolicy { .. } => "ApplyNetworkPolicyFailed",
            ApplyDeployment { .. } => "ApplyDeploymentFailed",
            ApplyIndexToken { .. } => "ApplyIndexTokenFailed",
            DeleteDeployment { .. } => "DeleteDeploymentFailed",
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

    /// Whether only a change to the Tenant (or an operator setting) can fix it: report as
    /// Stalled and wait for a change instead of retrying.
    pub fn is_permanent(&self) -> bool {
        match self {
            TenantError::InvalidTenant { .. }
            | TenantError::InvalidSpec { .. }
            | TenantError::DuplicateTenant { .. } => true,
            TenantError::VaultClient { .. } => true,
            TenantError::Finalizer { source, .. } => match source.as_ref() {
                kube::runtime::finalizer::Error::ApplyFailed(e)
                | kube::runtime::finalizer::Error::CleanupFailed(e) => e.is_permanent(),
                _ => false,
            },
            _ => false,
        }
    }
}

/// The reason of a failed control call: DataPlaneUnavailable when it may succeed later,
/// DataPlaneRefused otherwise (shared by every controller that talks to the data plane).
pub fn control_reason(error: &ControlError) -> &'static str {
    if error.is_retryable() {
        reasons::DATA_PLANE_UNAVAILABLE
    } else {
        DATA_PLANE_REFUSED
    }
}

/// The reason of a refused control call.
pub const DATA_PLANE_REFUSED: &str = "DataPlaneRefused";
/// The reason of a STALE outcome: the data plane has a newer generation of the object (or
/// has deleted it); nothing was written.
pub const DATA_PLANE_STALE: &str = "DataPlaneStale";

fn kms_reason(error: &KmsError) -> &'static str {
    match error {
        KmsError::Denied { .. } => reasons::KMS_AUTH_FAILED,
        KmsError::Config { .. } => "KMSConfigInvalid",
        _ => reasons::KMS_UNAVAILABLE,
    }
}

#[cfg(test)]
pub(crate) mod tests;

impl crate::tenant::reconcile::ControllerError for TenantError {
    fn category(&self) -> &'static str {
        TenantError::category(self)
    }

    fn is_permanent(&self) -> bool {
        TenantError::is_permanent(self)
    }
}
