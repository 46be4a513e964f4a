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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::settings::tests::settings;
    use crate::tenant::validate;
    use helpr_crds::Tenant;
    use http::{Method, Request, Response};
    use kube::client::Body;
    use serde_json::{Value, json};

    type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

    fn vault(dir: &std::path::Path) -> (KubeVault, Handle) {
        let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let client = kube::Client::new(service, "default");
        (
            KubeVault::new(client, &settings(), dir.to_path_buf()),
            handle,
        )
    }

    async fn answer(
        handle: &mut Handle,
        method: Method,
        path: &str,
        status: u16,
        body: Value,
    ) -> Value {
        let (request, send) =
            tokio::time::timeout(std::time::Duration::from_secs(5), handle.next_request())
                .await
                .expect("timed out")
                .expect("client gone");
        assert_eq!(request.method(), method);
        assert_eq!(request.uri().path(), path);
        let bytes = request.into_body().collect_bytes().await.unwrap();
        send.send_response(
            Response::builder()
                .status(status)
                .body(Body::from(serde_json::to_vec(&body).unwrap()))
                .unwrap(),
        );
        if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap()
        }
    }

    #[tokio::test]
    async fn kubernetes_auth_requests_a_short_lived_token_with_the_audience_and_reaches_vault() {
        let work = tempfile::tempdir().unwrap();
        let (kv, mut handle) = vault(work.path());
        // Nothing listens on port 1: Vault is unreachable after the credentials are ready.
        let tenant = Tenant::test("acme").with_kms_server("http://127.0.0.1:1");
        let valid = validate(&tenant, &settings()).unwrap();
        let call = tokio::spawn(async move { kv.provision(&valid).await });
        let issued = json!({
            "apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
            "metadata": {"name": "helpr-acme"},
            "spec": {"audiences": ["vault://helpr-test/acme"]},
            "status": {"token": "eyJhbGciOi.secret.jwt", "expirationTimestamp": "2030-01-01T00:00:00Z"},
        });
        let request = answer(
            &mut handle,
            Method::POST,
            "/api/v1/namespaces/helpr-test/serviceaccounts/helpr-acme/token",
            201,
            issued,
        )
        .await;
        assert_eq!(
            request["spec"]["audiences"],
            json!(["vault://helpr-test/acme"])
        );
        assert_eq!(request["spec"]["expirationSeconds"], 600);
        let error = call.await.unwrap().unwrap_err();
        assert_eq!(error.category(), "KMSUnavailable", "{error}");
        assert!(!error.to_string().contains("secret.jwt"));
        // The credential file is gone with the call.
        assert_eq!(std::fs::read_dir(work.path()).unwrap().count(), 0);
    }

    #[tokio::test]
    async fn a_token_secret_without_the_key_is_secret_not_found() {
        let work = tempfile::tempdir().unwrap();
        let (kv, mut handle) = vault(work.path());
        let tenant = Tenant::test("acme").with_token_auth("acme-vault");
        let valid = validate(&tenant, &settings()).unwrap();
        let call = tokio::spawn(async move { kv.provision(&valid).await });
        let secret = json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "acme-vault", "namespace": "helpr-test"},
            "data": {"other": "c2VjcmV0"},
        });
        answer(
            &mut handle,
            Method::GET,
            "/api/v1/namespaces/helpr-test/secrets/acme-vault",
            200,
            secret,
        )
        .await;
        let error = call.await.unwrap().unwrap_err();
        assert!(matches!(error, TenantError::SecretKeyMissing { ref key, .. } if key == "token"));
        assert_eq!(error.category(), "SecretNotFound");
    }

    #[tokio::test]
    async fn a_missing_token_secret_is_secret_not_found() {
        let work = tempfile::tempdir().unwrap();
        let (kv, mut handle) = vault(work.path());
        let tenant = Tenant::test("acme").with_token_auth("acme-vault");
        let valid = validate(&tenant, &settings()).unwrap();
        let call = tokio::spawn(async move { kv.retain(&valid).await });
        answer(
            &mut handle,
            Method::GET,
            "/api/v1/namespaces/helpr-test/secrets/acme-vault",
            404,
            json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                   "reason": "NotFound", "code": 404, "message": "secrets \"acme-vault\" not found"}),
        )
        .await;
        let error = call.await.unwrap().unwrap_err();
        assert_eq!(error.category(), "SecretNotFound");
    }
}
