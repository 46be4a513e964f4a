//! Validate: the Tenant resource as a checked model. Pure.
//!
//! After [`validate`] the controller reads only [`ValidTenant`], never the raw resource.

use helpr_crds::tenant::{DeletionPolicy, SearchBackend, SearchMode, VaultAuth};
use helpr_crds::{CaBundleSecretRef, SpecErrors, Tenant, TokenSecretRef};
use helpr_dataplane::ids::TenantId;
use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::Resource;

use super::TenantError;
use crate::settings::OperatorSettings;
use crate::vault::TenantVaultPlan;

/// Prefix of the names of every child of a tenant (ServiceAccount, NetworkPolicy,
/// Deployment): `helpr-sync-<tenant>`.
pub const SYNC_NAME_PREFIX: &str = "helpr-sync-";

/// A Tenant that passed validation, with everything derived from it.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidTenant {
    /// The tenant's id in the data plane and the KMS (the object's name).
    pub id: TenantId,
    pub namespace: String,
    pub uid: String,
    pub generation: i64,
    pub display_name: String,
    pub deletion_policy: DeletionPolicy,
    pub search_backend: SearchBackend,
    pub search_mode: SearchMode,
    pub kms: ValidKms,
    pub sync: ValidSync,
    /// Name of the ServiceAccount, NetworkPolicy and Deployment of the sync workers.
    pub sync_name: String,
    /// What the operator provisions in Vault for the tenant.
    pub vault: TenantVaultPlan,
    /// The reference every child carries (controller: true).
    pub owner: OwnerReference,
}

/// The tenant's Vault, as the operator connects to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidKms {
    pub server: String,
    pub transit_mount: String,
    pub ca_bundle: Option<CaBundleSecretRef>,
    pub auth: KmsAuth,
}

/// How the operator authenticates to the tenant's Vault (the spec's credentials; the sync
/// workers use the role of the [`TenantVaultPlan`] instead).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KmsAuth {
    /// Log in with a short-lived token of `service_account` requested through the
    /// TokenRequest API.
    Kubernetes {
        mount_path: String,
        role: String,
        service_account: String,
        audiences: Vec<String>,
    },
    /// A Vault token in a Secret of the tenant's namespace.
    Token(TokenSecretRef),
}

/// The sync workers.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidSync {
    pub replicas: i32,
    pub resources: ResourceRequirements,
}

/// Requests and limits of a sync worker when the Tenant names none.
pub fn default_sync_resources() -> ResourceRequirements {
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
    let q = |s: &str| Quantity(s.to_owned());
    ResourceRequirements {
        requests: Some(
            [
                ("cpu".to_owned(), q("100m")),
                ("memory".to_owned(), q("128Mi")),
            ]
            .into_iter()
            .collect(),
        ),
        limits: Some([("memory".to_owned(), q("512Mi"))].into_iter().collect()),
        ..ResourceRequirements::default()
    }
}

/// Checks `tenant` and derives the model the rest of the reconcile works from. Pure.
pub fn validate(tenant: &Tenant, settings: &OperatorSettings) -> Result<ValidTenant, TenantError> {
    let name = tenant.metadata.name.clone().unwrap_or_default();
    let invalid = |reason: String| TenantError::InvalidTenant {
        tenant: name.clone(),
        reason,
    };
    let id = TenantId::new(name.clone()).map_err(|_| {
        invalid(format!(
            "the name {name:?} is not a tenant id (a lowercase DNS label of at most 63 characters)"
        ))
    })?;
    let namespace = tenant
        .metadata
        .namespace
        .clone()
        .ok_or_else(|| invalid("the Tenant has no namespace".to_owned()))?;
    let uid = tenant
        .metadata
        .uid
        .clone()
        .ok_or_else(|| invalid("the Tenant has no uid".to_owned()))?;
    let owner = tenant
        .controller_owner_ref(&())
        .ok_or_else(|| invalid("the Tenant has no uid".to_owned()))?;
    tenant
        .spec
        .validate()
        .map_err(|errors: SpecErrors| TenantError::InvalidSpec {
            tenant: name.clone(),
            errors,
        })?;
    let kms = &tenant.spec.kms;
    if kms.namespace.is_some() {
        return Err(invalid(
            "spec.kms.namespace is not supported yet: the Vault client has no namespace support, use a root-namespace mount".to_owned(),
        ));
    }
    let auth = match &kms.auth {
        VaultAuth::Kubernetes(k) => KmsAuth::Kubernetes {
            mount_path: k.mount_path.clone(),
            role: k.role.clone(),
            service_account: k.service_account_ref.name.clone(),
            audiences: tenant.vault_token_audiences().unwrap_or_default(),
        },
        VaultAuth::TokenSecretRef(t) => KmsAuth::Token(t.clone()),
    };
    let sync_name = format!("{SYNC_NAME_PREFIX}{}", id.as_str());
    let vault = TenantVaultPlan::new(&id, &namespace, &sync_name, &settings.vault.naming());
    let resources = tenant
        .spec
        .sync
        .resources
        .as_ref()
        .map(|r| r.to_resource_requirements())
        .unwrap_or_else(default_sync_resources);
    Ok(ValidTenant {
        id,
        namespace,
        uid,
        generation: tenant.metadata.generation.unwrap_or(1),
        display_name: tenant.spec.display_name.clone(),
        deletion_policy: tenant.spec.deletion_policy,
        search_backend: tenant.spec.search.backend,
        search_mode: tenant.spec.search.mode,
        kms: ValidKms {
            server: kms.server.clone(),
            transit_mount: kms.transit_mount.clone(),
            ca_bundle: kms.ca_bundle_secret_ref.clone(),
            auth,
        },
        sync: ValidSync {
            replicas: tenant.spec.sync.replicas,
            resources,
        },
        sync_name,
        vault,
        owner,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::settings::tests::settings;
    use helpr_crds::testing::Fixture;

    #[test]
    fn a_valid_tenant_becomes_a_model_with_the_sync_names_and_vault_plan() {
        let tenant = Tenant::test("acme").with_generation(4);
        let valid = validate(&tenant, &settings()).unwrap();
        assert_eq!(valid.id.as_str(), "acme");
        assert_eq!(valid.namespace, "helpr-test");
        assert_eq!(valid.generation, 4);
        assert_eq!(valid.sync_name, "helpr-sync-acme");
        assert_eq!(valid.vault.key.as_str(), "helpr-tenant-acme");
        assert_eq!(valid.vault.access.role, "helpr-sync-acme");
        assert_eq!(valid.vault.access.service_account, "helpr-sync-acme");
        assert_eq!(valid.vault.access.namespace, "helpr-test");
        assert_eq!(valid.owner.kind, "Tenant");
        assert_eq!(valid.owner.controller, Some(true));
        assert_eq!(valid.sync.resources, default_sync_resources());
        match &valid.kms.auth {
            KmsAuth::Kubernetes {
                role,
                service_account,
                audiences,
                ..
            } => {
                assert_eq!(role, "helpr-acme");
                assert_eq!(service_account, "helpr-acme");
                assert_eq!(audiences, &["vault://helpr-test/acme".to_owned()]);
            }
            other => panic!("unexpected auth {other:?}"),
        }
    }

    #[test]
    fn token_auth_keeps_the_secret_reference_only() {
        let valid = validate(
            &Tenant::test("acme").with_token_auth("acme-vault"),
            &settings(),
        )
        .unwrap();
        assert_eq!(
            valid.kms.auth,
            KmsAuth::Token(TokenSecretRef::new("acme-vault"))
        );
    }

    #[test]
    fn a_name_that_is_not_a_tenant_id_is_invalid() {
        let mut tenant = Tenant::test("acme");
        tenant.metadata.name = Some("Acme_Corp".to_owned());
        let err = validate(&tenant, &settings()).unwrap_err();
        assert_eq!(err.category(), "InvalidSpec");
        assert!(err.is_permanent());
        assert!(err.to_string().contains("Acme_Corp"));
    }

    #[test]
    fn a_spec_error_is_reported_with_its_field() {
        let tenant = Tenant::test("acme").with_replicas(99);
        let err = validate(&tenant, &settings()).unwrap_err();
        assert!(matches!(err, TenantError::InvalidSpec { .. }));
        assert!(err.to_string().contains("spec.sync.replicas"), "{err}");
    }

    #[test]
    fn a_vault_namespace_is_refused_rather_than_ignored() {
        let mut tenant = Tenant::test("acme");
        tenant.spec.kms.namespace = Some("team-a".to_owned());
        let err = validate(&tenant, &settings()).unwrap_err();
        assert_eq!(err.category(), "InvalidSpec");
        assert!(err.to_string().contains("spec.kms.namespace"));
    }
}
