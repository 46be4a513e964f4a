//! The real [`VaultProvisioner`]: a [`VaultKms`] client built per call from the Tenant's KMS
//! settings and the Secrets (or service-account token) they name, then
//! [`crate::vault::provision`], [`crate::vault::retain`] or [`crate::vault::shred`].
//!
//! Credentials never leave memory except as files in a private temporary directory
//! (mode 0600, removed when the call ends), because the data plane's Vault client reads
//! its CA bundle and Kubernetes login token from files.

use std::io::Write as _;
use std::path::PathBuf;

use async_trait::async_trait;
use helpr_dataplane::kms::vault::{VaultAuth, VaultConfig, VaultKms};
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Secret, ServiceAccount};
use kube::api::{Api, PostParams};
use zeroize::Zeroizing;

use super::reconcile::VaultProvisioner;
use super::{KmsAuth, TenantError, ValidTenant};
use crate::settings::OperatorSettings;
use crate::vault;

/// Lifetime of the service-account tokens the operator requests for its Vault login.
const LOGIN_TOKEN_SECONDS: i64 = 600;

/// Provisions tenants in their own Vault, with the credentials their spec names.
pub struct KubeVault {
    client: kube::Client,
    key_prefix: String,
    /// Parent of the per-call temporary directories (writable in the operator's pod).
    work_dir: PathBuf,
}

impl KubeVault {
    pub fn new(client: kube::Client, settings: &OperatorSettings, work_dir: PathBuf) -> Self {
        Self {
            client,
            key_prefix: settings.vault.key_prefix.clone(),
            work_dir,
        }
    }

    fn tenant_key(tenant: &ValidTenant) -> String {
        format!("{}/{}", tenant.namespace, tenant.id.as_str())
    }

    async fn secret_value(
        &self,
        tenant: &ValidTenant,
        secret: &str,
        key: &str,
    ) -> Result<Zeroizing<Vec<u8>>, TenantError> {
        let api: Api<Secret> = Api::namespaced(self.client.clone(), &tenant.namespace);
        let found = api
            .get(secret)
            .await
            .map_err(|source| TenantError::ReadSecret {
                tenant: Self::tenant_key(tenant),
                secret: secret.to_owned(),
                source,
            })?;
        found
            .data
            .and_then(|mut data| data.remove(key))
            .map(|bytes| Zeroizing::new(bytes.0))
            .filter(|bytes| !bytes.is_empty())
            .ok_or_else(|| TenantError::SecretKeyMissing {
                tenant: Self::tenant_key(tenant),
                secret: secret.to_owned(),
                key: key.to_owned(),
            })
    }

    fn write_private(
        &self,
        tenant: &ValidTenant,
        dir: &tempfile::TempDir,
        name: &str,
        bytes: &[u8],
    ) -> Result<PathBuf, TenantError> {
        let path = dir.path().join(name);
        let written = std::fs::File::create(&path).and_then(|mut f| f.write_all(bytes));
        written.map_err(|e| TenantError::VaultClient {
            tenant: Self::tenant_key(tenant),
            source: helpr_dataplane::kms::KmsError::Config {
                backend: "vault",
                reason: format!("write a credential file in the operator's work directory: {e}"),
            },
        })?;
        Ok(path)
    }

    /// A Vault client for `tenant`, and the directory its files live in (drop it after use).
    async fn client_for(
        &self,
        tenant: &ValidTenant,
    ) -> Result<(VaultKms, tempfile::TempDir), TenantError> {
        let dir = tempfile::Builder::new()
            .prefix("vault-")
            .tempdir_in(&self.work_dir)
            .map_err(|e| TenantError::VaultClient {
                tenant: Self::tenant_key(tenant),
                source: helpr_dataplane::kms::KmsError::Config {
                    backend: "vault",
                    reason: format!("create a private work directory: {e}"),
                },
            })?;
        let auth = match &tenant.kms.auth {
            KmsAuth::Token(secret) => {
                let token = self.secret_value(tenant, &secret.name, &secret.key).await?;
                let text =
                    std::str::from_utf8(&token).map_err(|_| TenantError::SecretKeyMissing {
                        tenant: Self::tenant_key(tenant),
                        secret: secret.name.clone(),
                        key: secret.key.clone(),
                    })?;
                VaultAuth::token(text.trim())
            }
            KmsAuth::Kubernetes {
                mount_path,
                role,
                service_account,
                audiences,
            } => {
                let api: Api<ServiceAccount> =
                    Api::namespaced(self.client.clone(), &tenant.namespace);
                let request = TokenRequest {
                    spec: Some(TokenRequestSpec {
                        audiences: Some(audiences.clone()),
                        expiration_seconds: Some(LOGIN_TOKEN_SECONDS),
                        ..TokenRequestSpec::default()
                    }),
                    ..TokenRequest::default()
                };
                let issued: TokenRequest = api
                    .create_subresource("token", service_account, &PostParams::default(), &request)
                    .await
                    .map_err(|source| TenantError::RequestToken {
                        tenant: Self::tenant_key(tenant),
                        service_account: service_account.clone(),
                        source,
                    })?;
                let token = Zeroizing::new(
                    issued
                        .status
                        .and_then(|s| s.token)
                        .unwrap_or_default()
                        .into_bytes(),
                );
                let token_file = self.write_private(tenant, &dir, "token", &token)?;
                VaultAuth::Kubernetes {
                    mount: mount_path.clone(),
                    role: role.clone(),
                    token_file,
                }
            }
        };
        let mut config = VaultConfig::new(tenant.kms.server.clone(), auth);
        config.mount = tenant.kms.transit_mount.clone();
        config.key_prefix = self.key_prefix.clone();
        if let Some(ca) = &tenant.kms.ca_bundle {
            let pem = self.secret_value(tenant, &ca.name, &ca.key).await?;
            config.ca_cert_file = Some(self.write_private(tenant, &dir, "ca.crt", &pem)?);
        }
        let kms = VaultKms::new(config).map_err(|source| TenantError::VaultClient {
            tenant: Self::tenant_key(tenant),
            source,
        })?;
        Ok((kms, dir))
    }
}

#[async_trait]
impl VaultProvisioner for KubeVault {
    async fn provision(&self, tenant: &ValidTenant) -> Result<(), TenantError> {
        let (kms, _dir) = self.client_for(tenant).await?;
        vault::provision(&kms, &tenant.vault)
            .await
            .map_err(|source| TenantError::ProvisionKms {
                tenant: Self::tenant_key(tenant),
                source,
            })
    }

    async fn retain(&self, tenant: &ValidTenant) -> Result<(), TenantError> {
        let (kms, _dir) = self.client_for(tenant).await?;
        vault::retain(&kms, &tenant.vault)
            .await
            .map_err(|source| TenantError::RetainKms {
                tenant: Self::tenant_key(tenant),
                source,
            })
    }

    async fn shred(&self, tenant: &ValidTenant) -> Result<(), TenantError> {
        let (kms, _dir) = self.client_for(tenant).await?;
        vault::shred(&kms, &tenant.vault)
            .await
            .map_err(|source| TenantError::ShredKms {
                tenant: Self::tenant_key(tenant),
                source,
            })
    }
}
