//! Per-tenant Vault/OpenBao provisioning, as the Tenant controller does it.
//!
//! For each tenant the operator makes sure of three things in the tenant's Vault, with the
//! credentials the Tenant resource names:
//!
//! 1. the tenant's transit key (`<keyPrefix><tenant>`, type `aes256-gcm96`);
//! 2. a policy that allows exactly `datakey/plaintext`, `decrypt` and `rewrap` on that key
//!    and nothing else (no rotation, configuration, deletion or other keys);
//! 3. a Kubernetes-auth role that binds the tenant's sync ServiceAccount, in the tenant's
//!    namespace, to that policy (and to no default policy).
//!
//! On deletion, `Retain` removes the role and the policy (sync pods lose access; the key
//! and so all data stay recoverable by an administrator), `Shred` also destroys the key,
//! which makes every ciphertext of the tenant unreadable (crypto-shredding). Every step is
//! idempotent and treats "already absent" as done, so a retried reconcile converges.
//!
//! [`TenantVaultPlan`] is the pure part (names derived from the tenant and the operator's
//! naming settings); [`provision`], [`retain`] and [`shred`] apply it through the data
//! plane's [`VaultKms`] client, so the operator and the data plane share one Vault client
//! (TLS, authentication, error classification).

use helpr_dataplane::ids::TenantId;
use helpr_dataplane::kms::vault::{TenantAccess, VaultKms};
use helpr_dataplane::kms::{KeyRef, Kms, KmsError};

/// How the operator names what it creates in Vault (chart values).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VaultNaming {
    /// Transit key name prefix; must match the data plane's `kms.vault.key_prefix`.
    pub key_prefix: String,
    /// Prefix of the policy and role names.
    pub access_prefix: String,
    /// Mount path of the Kubernetes auth method.
    pub auth_mount: String,
    /// Lifetime of the tokens the role issues.
    pub token_ttl: String,
}

impl Default for VaultNaming {
    fn default() -> Self {
        Self {
            key_prefix: "helpr-tenant-".into(),
            access_prefix: "helpr-sync-".into(),
            auth_mount: "kubernetes".into(),
            token_ttl: "1h".into(),
        }
    }
}

/// What the operator provisions in Vault for one tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantVaultPlan {
    pub tenant: TenantId,
    pub key: KeyRef,
    pub access: TenantAccess,
}

impl TenantVaultPlan {
    /// The plan for `tenant`, whose sync pods run as ServiceAccount `service_account` in
    /// `namespace`. Pure.
    pub fn new(
        tenant: &TenantId,
        namespace: &str,
        service_account: &str,
        naming: &VaultNaming,
    ) -> Self {
        let access_name = format!("{}{}", naming.access_prefix, tenant.as_str());
        Self {
            tenant: tenant.clone(),
            key: KeyRef::new(format!("{}{}", naming.key_prefix, tenant.as_str())),
            access: TenantAccess {
                policy: access_name.clone(),
                auth_mount: naming.auth_mount.clone(),
                role: access_name,
                service_account: service_account.to_owned(),
                namespace: namespace.to_owned(),
                token_ttl: naming.token_ttl.clone(),
            },
        }
    }
}

/// Creates (or confirms) the tenant's key, policy and role. `vault` must be configured
/// with the same transit mount and key prefix as the plan.
pub async fn provision(vault: &VaultKms, plan: &TenantVaultPlan) -> Result<(), KmsError> {
    let key = vault.create_tenant_key(&plan.tenant).await?;
    if key != plan.key {
        return Err(KmsError::Config {
            backend: "vault",
            reason: "the vault client's key prefix differs from the operator's naming".into(),
        });
    }
    vault.ensure_tenant_access(&plan.key, &plan.access).await
}

/// `deletionPolicy: Retain`: the tenant's pods lose access; the key is kept.
pub async fn retain(vault: &VaultKms, plan: &TenantVaultPlan) -> Result<(), KmsError> {
    vault.remove_tenant_access(&plan.access).await
}

/// `deletionPolicy: Shred`: access removed and the key destroyed (crypto-shredding).
pub async fn shred(vault: &VaultKms, plan: &TenantVaultPlan) -> Result<(), KmsError> {
    vault.remove_tenant_access(&plan.access).await?;
    vault.destroy_tenant_key(&plan.key).await
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn plan_names_follow_the_tenant_and_the_naming_settings() {
        let plan = TenantVaultPlan::new(
            &TenantId::new("acme").unwrap(),
            "helpr",
            "helpr-sync-acme",
            &VaultNaming::default(),
        );
        assert_eq!(plan.key.as_str(), "helpr-tenant-acme");
        assert_eq!(plan.access.policy, "helpr-sync-acme");
        assert_eq!(plan.access.role, "helpr-sync-acme");
        assert_eq!(plan.access.service_account, "helpr-sync-acme");
        assert_eq!(plan.access.namespace, "helpr");
        assert_eq!(plan.access.auth_mount, "kubernetes");
        let custom = VaultNaming {
            key_prefix: "mail-".into(),
            access_prefix: "mail-sync-".into(),
            auth_mount: "k8s/prod".into(),
            token_ttl: "15m".into(),
        };
        let plan = TenantVaultPlan::new(&TenantId::new("b2").unwrap(), "ns", "sa", &custom);
        assert_eq!(plan.key.as_str(), "mail-b2");
        assert_eq!(plan.access.role, "mail-sync-b2");
        assert_eq!(plan.access.auth_mount, "k8s/prod");
        assert_eq!(plan.access.token_ttl, "15m");
    }
}
