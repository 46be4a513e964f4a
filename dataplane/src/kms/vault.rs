//! OpenBao / HashiCorp Vault transit backend.
//!
//! Each tenant has one transit key, `<key_prefix><tenant id>` (type `aes256-gcm96`). DEKs
//! come from `datakey/plaintext/<key>`: Vault generates 32 random bytes and returns them in
//! plaintext (used immediately, never stored) and wrapped (`vault:vN:...`, stored).
//! Unwrapping is `decrypt/<key>`, re-wrapping under the newest KEK version is
//! `rewrap/<key>` (the DEK never leaves Vault in that case).
//!
//! Authentication is a static token or Kubernetes service-account login
//! (`auth/<mount>/login`). With Kubernetes auth a request refused with 403 (typically an
//! expired Vault token) triggers one fresh login and one retry.
//!
//! Secrets hygiene: tokens live in [`VaultToken`] (redacted `Debug`, wiped on drop), DEK
//! plaintext from Vault is decoded through wiped buffers, and errors carry only status
//! codes and Vault's own error strings, never response bodies, request bodies, tokens or
//! wrapped keys. The HTTP client's internal response buffers are outside our control.

use std::fmt;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine as _;
use serde::{Deserialize, Deserializer};
use vaultrs::api::transit::KeyType;
use vaultrs::api::transit::requests::{
    CreateKeyRequest, DataKeyType, UpdateKeyConfigurationRequest,
};
use vaultrs::api::transit::responses::ReadKeyData;
use vaultrs::client::{VaultClient, VaultClientSettings, VaultClientSettingsBuilder};
use vaultrs::error::ClientError;
use zeroize::Zeroizing;

use super::{DekContext, KeyRef, Kms, KmsError, WrappedDek};
use crate::crypto::{DEK_LEN, Dek};
use crate::ids::TenantId;

const BACKEND: &str = "vault";

/// Default request timeout.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the kubelet mounts a pod's service-account token.
pub const DEFAULT_SERVICE_ACCOUNT_TOKEN_FILE: &str =
    "/var/run/secrets/kubernetes.io/serviceaccount/token";

/// A Vault token. Its `Debug` is redacted and the memory is wiped on drop.
#[derive(Clone)]
pub struct VaultToken(Zeroizing<String>);

impl VaultToken {
    pub fn new(token: impl Into<String>) -> Self {
        Self(Zeroizing::new(token.into()))
    }

    /// The token itself, for the HTTP header. Keep the borrow short.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for VaultToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("VaultToken(<redacted>)")
    }
}

impl<'de> Deserialize<'de> for VaultToken {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Self::new)
    }
}

/// How the data plane authenticates to Vault.
///
/// In a settings file: `method = "token"` with `token = "..."`, or
/// `method = "kubernetes"` with `role = "..."` (and optionally `mount`, `token_file`).
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "method", rename_all = "snake_case", deny_unknown_fields)]
pub enum VaultAuth {
    /// A static Vault token; never renewed, no re-login.
    Token { token: VaultToken },
    /// Kubernetes service-account login, repeated when Vault starts refusing the token.
    Kubernetes {
        /// Mount path of the Kubernetes auth method.
        #[serde(default = "default_kubernetes_mount")]
        mount: String,
        /// Vault role bound to this pod's service account.
        role: String,
        /// The projected service-account JWT, read at every login.
        #[serde(default = "default_token_file")]
        token_file: PathBuf,
    },
}

impl VaultAuth {
    /// Token authentication.
    pub fn token(token: impl Into<String>) -> Self {
        VaultAuth::Token {
            token: VaultToken::new(token),
        }
    }

    /// Kubernetes authentication with the default mount (`kubernetes`) and token file.
    pub fn kubernetes(role: impl Into<String>) -> Self {
        VaultAuth::Kubernetes {
            mount: default_kubernetes_mount(),
            role: role.into(),
            token_file: default_token_file(),
        }
    }

    fn method(&self) -> &'static str {
        match self {
            VaultAuth::Token { .. } => "token",
            VaultAuth::Kubernetes { .. } => "kubernetes",
        }
    }
}

/// Settings of the Vault transit backend.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub struct VaultConfig {
    /// `https://vault.example:8200` (or `http://` for a local dev server).
    pub address: String,
    /// Mount path of the transit engine.
    #[serde(default = "default_mount")]
    pub mount: String,
    /// Prefix of the per-tenant transit key names.
    #[serde(default = "default_key_prefix")]
    pub key_prefix: String,
    /// PEM bundle of CAs to trust for an `https` address (otherwise the system roots).
    #[serde(default)]
    pub ca_cert_file: Option<PathBuf>,
    pub auth: VaultAuth,
    /// Timeout of one HTTP request: seconds as a number, or a string such as `"10s"`,
    /// `"500ms"`, `"2m"`.
    #[serde(
        default = "default_request_timeout",
        deserialize_with = "deserialize_duration"
    )]
    pub request_timeout: Duration,
}

impl VaultConfig {
    /// Settings with the default mount, key prefix and timeout.
    pub fn new(address: impl Into<String>, auth: VaultAuth) -> Self {
        Self {
            address: address.into(),
            mount: default_mount(),
            key_prefix: default_key_prefix(),
            ca_cert_file: None,
            auth,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
        }
    }
}

fn default_mount() -> String {
    "transit".to_owned()
}

fn default_key_prefix() -> String {
    "helpr-tenant-".to_owned()
}

fn default_kubernetes_mount() -> String {
    "kubernetes".to_owned()
}

fn default_token_file() -> PathBuf {
    PathBuf::from(DEFAULT_SERVICE_ACCOUNT_TOKEN_FILE)
}

fn default_request_timeout() -> Duration {
    DEFAULT_REQUEST_TIMEOUT
}

fn deserialize_duration<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Secs(u64),
        Text(String),
    }
    match Raw::deserialize(deserializer)? {
        Raw::Secs(s) => Ok(Duration::from_secs(s)),
        Raw::Text(t) => parse_duration(&t).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "invalid duration {t:?}: use a number of seconds or e.g. \"10s\", \"500ms\", \"2m\""
            ))
        }),
    }
}

fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: u64 = number.parse().ok()?;
    match unit.trim() {
        "" | "s" => Some(Duration::from_secs(n)),
        "ms" => Some(Duration::from_millis(n)),
        "m" => n.checked_mul(60).map(Duration::from_secs),
        _ => None,
    }
}

/// Version information of a tenant's transit key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyInfo {
    /// The version new DEKs are wrapped with.
    pub latest_version: u64,
    /// DEKs wrapped by an older version can no longer be unwrapped (nor re-wrapped).
    pub min_decryption_version: u64,
}

/// The operation being performed, for logs and error mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Login,
    CreateKey,
    GenerateDek,
    UnwrapDek,
    RewrapDek,
    RotateKek,
    ReadKey,
    ConfigureKey,
    DeleteKey,
    ReadPolicy,
    WritePolicy,
    DeletePolicy,
    WriteRole,
    DeleteRole,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::Login => "login",
            Op::CreateKey => "create_key",
            Op::GenerateDek => "generate_dek",
            Op::UnwrapDek => "unwrap_dek",
            Op::RewrapDek => "rewrap_dek",
            Op::RotateKek => "rotate_kek",
            Op::ReadKey => "read_key",
            Op::ConfigureKey => "configure_key",
            Op::DeleteKey => "delete_key",
            Op::ReadPolicy => "read_policy",
            Op::WritePolicy => "write_policy",
            Op::DeletePolicy => "delete_policy",
            Op::WriteRole => "write_kubernetes_role",
            Op::DeleteRole => "delete_kubernetes_role",
        }
    }

    /// Operations that take a wrapped DEK: a 400 answer means Vault rejected it.
    fn takes_wrapped_dek(self) -> bool {
        matches!(self, Op::UnwrapDek | Op::RewrapDek)
    }
}

/// An authenticated client; `generation` changes at every login.
struct Session {
    client: Arc<VaultClient>,
    generation: u64,
}

/// The Vault/OpenBao transit implementation of [`Kms`].
pub struct VaultKms {
    /// Client settings without a token (the session's client carries the token).
    settings: VaultClientSettings,
    mount: String,
    key_prefix: String,
    auth: VaultAuth,
    session: tokio::sync::RwLock<Option<Session>>,
    login_lock: tokio::sync::Mutex<()>,
}

impl fmt::Debug for VaultKms {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VaultKms")
            .field("address", &self.settings.address.as_str())
            .field("mount", &self.mount)
            .field("key_prefix", &self.key_prefix)
            .field("auth", &self.auth.method())
            .finish_non_exhaustive()
    }
}

fn config_error(reason: impl Into<String>) -> KmsError {
    KmsError::Config {
        backend: BACKEND,
        reason: reason.into(),
    }
}

fn protocol_error(reason: impl Into<String>) -> KmsError {
    KmsError::Protocol {
        backend: BACKEND,
        reason: reason.into(),
    }
}

/// Characters allowed in mount paths and key prefixes (they become URL path segments).
fn is_path_safe(s: &str, allow_slash: bool) -> bool {
    s.chars().all(|c| {
        c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' || (allow_slash && c == '/')
    }) && !s
        .split('/')
        .any(|seg| seg.is_empty() || seg == "." || seg == "..")
}

/// A token must be a valid HTTP header value (vaultrs panics otherwise).
fn check_token(token: &str) -> Result<(), KmsError> {
    if token.is_empty() || !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(config_error(
            "vault token is empty or contains characters not allowed in an HTTP header",
        ));
    }
    Ok(())
}

impl VaultKms {
    /// Checks the settings and prepares the client. No network I/O: with Kubernetes auth
    /// the first call logs in.
    pub fn new(config: VaultConfig) -> Result<Self, KmsError> {
        let VaultConfig {
            address,
            mount,
            key_prefix,
            ca_cert_file,
            auth,
            request_timeout,
        } = config;

        let mount = mount.trim_matches('/').to_owned();
        if mount.is_empty() || !is_path_safe(&mount, true) {
            return Err(config_error(
                "transit mount must be a path of letters, digits, '-', '_' and '.'",
            ));
        }
        if !key_prefix.is_empty() && !is_path_safe(&key_prefix, false) {
            return Err(config_error(
                "key prefix may only contain letters, digits, '-', '_' and '.'",
            ));
        }
        if request_timeout.is_zero() {
            return Err(config_error("request timeout must be above zero"));
        }
        if let VaultAuth::Kubernetes { mount, role, .. } = &auth {
            let mount = mount.trim_matches('/');
            if mount.is_empty() || !is_path_safe(mount, true) {
                return Err(config_error(
                    "kubernetes auth mount must be a path of letters, digits, '-', '_' and '.'",
                ));
            }
            if role.is_empty() {
                return Err(config_error("kubernetes auth role is empty"));
            }
        }
        if let VaultAuth::Token { token } = &auth {
            check_token(token.expose())?;
        }

        let url = address.trim();
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(config_error(
                "vault address must start with http:// or https://",
            ));
        }
        let parsed = url
            .parse()
            .map_err(|_| config_error("vault address is not a valid URL"))?;

        let ca_certs = match &ca_cert_file {
            None => Vec::new(),
            Some(path) => {
                if !path.is_file() {
                    return Err(config_error(format!(
                        "CA certificate file {} does not exist",
                        path.display()
                    )));
                }
                let path = path
                    .to_str()
                    .ok_or_else(|| config_error("CA certificate file path is not UTF-8"))?;
                vec![path.to_owned()]
            }
        };

        // The builder's `address` setter panics on a bad URL, and its defaults read
        // VAULT_* environment variables: set every field explicitly and the address
        // after building.
        let mut settings = VaultClientSettingsBuilder::default()
            .address("http://127.0.0.1:8200")
            .token(String::new())
            .ca_certs(ca_certs)
            .identity(None)
            .verify(true)
            .timeout(Some(request_timeout))
            .build()
            .map_err(|_| config_error("invalid vault client settings"))?;
        settings.address = parsed;

        let session = match &auth {
            VaultAuth::Token { token } => Some(Session {
                client: Arc::new(build_client(&settings, token.expose())?),
                generation: 1,
            }),
            // Logs in at the first call.
            VaultAuth::Kubernetes { .. } => None,
        };
        Ok(Self {
            settings,
            mount,
            key_prefix,
            auth,
            session: tokio::sync::RwLock::new(session),
            login_lock: tokio::sync::Mutex::new(()),
        })
    }

    /// The transit key name of a tenant.
    pub fn key_ref(&self, tenant: &TenantId) -> KeyRef {
        KeyRef::new(format!("{}{}", self.key_prefix, tenant.as_str()))
    }

    /// The transit mount path.
    pub fn mount(&self) -> &str {
        &self.mount
    }

    /// Latest version and minimum decryption version of a tenant's key.
    pub async fn key_info(&self, key: &KeyRef) -> Result<KeyInfo, KmsError> {
        let mount = self.mount.as_str();
        let name = key.as_str();
        let resp = self
            .call(Op::ReadKey, name, move |c| async move {
                vaultrs::transit::key::read(&*c, mount, name).await
            })
            .await?;
        let latest = match &resp.keys {
            ReadKeyData::Symmetric(versions) => {
                versions.keys().filter_map(|v| v.parse::<u64>().ok()).max()
            }
            ReadKeyData::Asymmetric(versions) => {
                versions.keys().filter_map(|v| v.parse::<u64>().ok()).max()
            }
        };
        let latest_version =
            latest.ok_or_else(|| protocol_error("key read answer lists no key versions"))?;
        Ok(KeyInfo {
            latest_version,
            min_decryption_version: resp.min_decryption_version,
        })
    }

    /// Sets the key's minimum decryption version: DEKs wrapped by older KEK versions can
    /// no longer be unwrapped. Re-wrap them first.
    pub async fn set_min_decryption_version(
        &self,
        key: &KeyRef,
        version: u64,
    ) -> Result<(), KmsError> {
        let mount = self.mount.as_str();
        let name = key.as_str();
        self.call(Op::ConfigureKey, name, move |c| async move {
            let mut opts = UpdateKeyConfigurationRequest::builder();
            opts.min_decryption_version(version);
            vaultrs::transit::key::update(&*c, mount, name, Some(&mut opts)).await
        })
        .await
    }

    /// The current client, logging in first if there is none yet.
    async fn session(&self) -> Result<(Arc<VaultClient>, u64), KmsError> {
        if let Some(s) = self.session.read().await.as_ref() {
            return Ok((Arc::clone(&s.client), s.generation));
        }
        self.login(None).await
    }

    /// Logs in (again). `stale` is the generation whose token Vault refused: when another
    /// task already replaced it, its session is used instead of logging in once more.
    async fn login(&self, stale: Option<u64>) -> Result<(Arc<VaultClient>, u64), KmsError> {
        let _one_login_at_a_time = self.login_lock.lock().await;
        let previous = {
            let guard = self.session.read().await;
            match guard.as_ref() {
                Some(s) if stale != Some(s.generation) => {
                    return Ok((Arc::clone(&s.client), s.generation));
                }
                Some(s) => s.generation,
                None => 0,
            }
        };

        let client = match &self.auth {
            VaultAuth::Token { token } => build_client(&self.settings, token.expose())?,
            VaultAuth::Kubernetes {
                mount,
                role,
                token_file,
            } => {
                let jwt =
                    Zeroizing::new(tokio::fs::read_to_string(token_file).await.map_err(|e| {
                        config_error(format!(
                            "cannot read service account token file {}: {}",
                            token_file.display(),
                            e.kind()
                        ))
                    })?);
                let jwt = jwt.trim();
                if jwt.is_empty() {
                    return Err(config_error(format!(
                        "service account token file {} is empty",
                        token_file.display()
                    )));
                }
                tracing::debug!(mount = %mount, role = %role, "vault kubernetes login");
                let anonymous = VaultClient::new(self.settings.clone())
                    .map_err(|_| config_error("cannot build the vault HTTP client"))?;
                let auth = vaultrs::auth::kubernetes::login(
                    &anonymous,
                    mount.trim_matches('/'),
                    role,
                    jwt,
                )
                .await
                .map_err(|e| match classify(Op::Login, e) {
                    // A refused login (bad JWT, unknown role, service account not bound)
                    // is a credentials problem.
                    Class::Denied | Class::Status(400, _) => KmsError::Denied { backend: BACKEND },
                    Class::NotFound => config_error(format!(
                        "no kubernetes auth method mounted at auth/{}",
                        mount.trim_matches('/')
                    )),
                    other => other.into_error(""),
                })?;
                let token = Zeroizing::new(auth.client_token);
                build_client(&self.settings, &token)?
            }
        };

        let client = Arc::new(client);
        let generation = previous.wrapping_add(1);
        *self.session.write().await = Some(Session {
            client: Arc::clone(&client),
            generation,
        });
        Ok((client, generation))
    }

    /// Runs one Vault request, logging in again and retrying once when Vault refuses a
    /// Kubernetes-auth token.
    async fn call<T, F, Fut>(&self, op: Op, key: &str, request: F) -> Result<T, KmsError>
    where
        F: Fn(Arc<VaultClient>) -> Fut,
        Fut: Future<Output = Result<T, ClientError>>,
    {
        tracing::debug!(op = op.name(), key, "vault transit request");
        let (client, generation) = self.session().await?;
        match request(client).await {
            Ok(v) => Ok(v),
            Err(e) => match classify(op, e) {
                Class::Denied if matches!(self.auth, VaultAuth::Kubernetes { .. }) => {
                    tracing::debug!(
                        op = op.name(),
                        key,
                        "vault refused the token; logging in again"
                    );
                    let (client, _) = self.login(Some(generation)).await?;
                    request(client)
                        .await
                        .map_err(|e| classify(op, e).into_error(key))
                }
                other => Err(other.into_error(key)),
            },
        }
    }
}

/// What a tenant's sync pods may do in Vault besides holding their service account: a
/// policy allowing exactly `datakey/plaintext`, `decrypt` and `rewrap` on the tenant's
/// transit key, and a Kubernetes-auth role that binds the tenant's service account (in its
/// namespace) to that policy. Provisioned by the operator ([`VaultKms::ensure_tenant_access`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantAccess {
    /// Vault policy name.
    pub policy: String,
    /// Mount path of the Kubernetes auth method (e.g. `kubernetes`).
    pub auth_mount: String,
    /// Kubernetes-auth role name.
    pub role: String,
    pub service_account: String,
    pub namespace: String,
    /// Lifetime of the Vault tokens the role issues (a Vault duration, e.g. `1h`).
    pub token_ttl: String,
}

/// Names that end up in Vault paths or policy text: a strict charset, so that nothing can
/// change the meaning of the policy (no quotes, globs, `+` or `..`).
fn check_vault_name(what: &'static str, value: &str, allow_slash: bool) -> Result<(), KmsError> {
    let ok_char = |c: char| {
        c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' || (allow_slash && c == '/')
    };
    let ok = !value.is_empty()
        && value.len() <= 253
        && value.chars().all(ok_char)
        && !value.contains("..")
        && !value.starts_with('/')
        && !value.ends_with('/');
    if ok {
        Ok(())
    } else {
        Err(config_error(format!(
            "{what} must be 1-253 characters of a-z, A-Z, 0-9, '-', '_', '.'{}",
            if allow_slash { " or inner '/'" } else { "" }
        )))
    }
}

fn check_token_ttl(ttl: &str) -> Result<(), KmsError> {
    let digits = ttl.trim_end_matches(['s', 'm', 'h']);
    let unit_len = ttl.len() - digits.len();
    if unit_len <= 1
        && !digits.is_empty()
        && digits.len() <= 6
        && digits.bytes().all(|b| b.is_ascii_digit())
    {
        Ok(())
    } else {
        Err(config_error(
            "token ttl must be a number with an optional s, m or h unit",
        ))
    }
}

impl TenantAccess {
    fn validate(&self) -> Result<(), KmsError> {
        check_vault_name("policy name", &self.policy, false)?;
        check_vault_name("auth mount", &self.auth_mount, true)?;
        check_vault_name("role name", &self.role, false)?;
        check_vault_name("service account", &self.service_account, false)?;
        check_vault_name("namespace", &self.namespace, false)?;
        check_token_ttl(&self.token_ttl)
    }
}

impl VaultKms {
    /// The policy text for a tenant's sync pods: exactly `datakey/plaintext`, `decrypt` and
    /// `rewrap` on `key` under this client's transit mount.
    pub fn tenant_policy(&self, key: &KeyRef) -> Result<String, KmsError> {
        check_vault_name("transit mount", &self.mount, true)?;
        check_vault_name("transit key", key.as_str(), false)?;
        let (mount, key) = (self.mount.as_str(), key.as_str());
        Ok(format!(
            "# managed by helpr-operator: the sync pods of one tenant, on its key only\n\
             path \"{mount}/datakey/plaintext/{key}\" {{\n  capabilities = [\"update\"]\n}}\n\
             path \"{mount}/decrypt/{key}\" {{\n  capabilities = [\"update\"]\n}}\n\
             path \"{mount}/rewrap/{key}\" {{\n  capabilities = [\"update\"]\n}}\n"
        ))
    }

    /// Writes (or overwrites) the tenant's policy and Kubernetes-auth role; idempotent.
    pub async fn ensure_tenant_access(
        &self,
        key: &KeyRef,
        access: &TenantAccess,
    ) -> Result<(), KmsError> {
        access.validate()?;
        let policy = self.tenant_policy(key)?;
        let name = access.policy.as_str();
        let text = policy.as_str();
        self.call(Op::WritePolicy, name, move |c| async move {
            vaultrs::sys::policy::set(&*c, name, text).await
        })
        .await?;
        let role = access.role.as_str();
        let mount = access.auth_mount.as_str();
        self.call(Op::WriteRole, role, move |c| async move {
            let mut opts =
                vaultrs::api::auth::kubernetes::requests::CreateKubernetesRoleRequest::builder();
            opts.bound_service_account_names(vec![access.service_account.clone()])
                .bound_service_account_namespaces(vec![access.namespace.clone()])
                .token_policies(vec![access.policy.clone()])
                .token_ttl(access.token_ttl.clone())
                .token_no_default_policy(true);
            vaultrs::auth::kubernetes::role::create(&*c, mount, role, Some(&mut opts)).await
        })
        .await
    }

    /// Removes the tenant's Kubernetes-auth role and policy (absent ones are fine): its sync
    /// pods can no longer reach the key. The key itself stays (see `destroy_tenant_key`).
    pub async fn remove_tenant_access(&self, access: &TenantAccess) -> Result<(), KmsError> {
        access.validate()?;
        let role = access.role.as_str();
        let mount = access.auth_mount.as_str();
        match self
            .call(Op::DeleteRole, role, move |c| async move {
                vaultrs::auth::kubernetes::role::delete(&*c, mount, role).await
            })
            .await
        {
            Ok(()) | Err(KmsError::KeyNotFound { .. }) => {}
            Err(e) => return Err(e),
        }
        let name = access.policy.as_str();
        match self
            .call(Op::DeletePolicy, name, move |c| async move {
                vaultrs::sys::policy::delete(&*c, name).await
            })
            .await
        {
            Ok(()) | Err(KmsError::KeyNotFound { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// The text of a policy, `None` when it does not exist.
    pub async fn read_policy(&self, name: &str) -> Result<Option<String>, KmsError> {
        check_vault_name("policy name", name, false)?;
        match self
            .call(Op::ReadPolicy, name, move |c| async move {
                vaultrs::sys::policy::read(&*c, name).await
            })
            .await
        {
            Ok(p) => Ok(Some(p.rules)),
            Err(KmsError::KeyNotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// A client for `settings` that sends `token`.
fn build_client(settings: &VaultClientSettings, token: &str) -> Result<VaultClient, KmsError> {
    check_token(token)?;
    let mut settings = settings.clone();
    settings.token = token.to_owned();
    VaultClient::new(settings).map_err(|e| match e {
        ClientError::FileReadError { path, .. } => {
            config_error(format!("cannot read CA certificate file {path}"))
        }
        ClientError::ParseCertificateError { path, .. } => {
            config_error(format!("CA certificate file {path} is not a PEM bundle"))
        }
        _ => config_error("cannot build the vault HTTP client"),
    })
}

/// What a failed request means, before it becomes a [`KmsError`].
#[derive(Debug)]
enum Class {
    Unavailable(String),
    Denied,
    NotFound,
    Rejected,
    /// Another status: code and Vault's (sanitized) error strings.
    Status(u16, String),
    Protocol(String),
}

impl Class {
    fn into_error(self, key: &str) -> KmsError {
        match self {
            Class::Unavailable(reason) => KmsError::Unavailable {
                backend: BACKEND,
                reason,
            },
            Class::Denied => KmsError::Denied { backend: BACKEND },
            Class::NotFound => KmsError::KeyNotFound {
                backend: BACKEND,
                key: key.to_owned(),
            },
            Class::Rejected => KmsError::UnwrapFailed { backend: BACKEND },
            Class::Status(code, errors) if errors.is_empty() => {
                protocol_error(format!("http {code}"))
            }
            Class::Status(code, errors) => protocol_error(format!("http {code}: {errors}")),
            Class::Protocol(reason) => protocol_error(reason),
        }
    }
}

/// Vault's error strings, kept only when they cannot carry a wrapped key or a token, and
/// shortened.
fn safe_errors(errors: &[String]) -> String {
    let mut out = String::new();
    for e in errors {
        // Vault does not echo inputs in its errors, but be safe about ciphertexts and tokens.
        let suspicious = e.contains("vault:") || e.contains("hvs.") || e.contains("hvb.");
        let text: String = if suspicious {
            "<error text withheld>".to_owned()
        } else {
            e.chars().filter(|c| !c.is_control()).take(200).collect()
        };
        if !out.is_empty() {
            out.push_str("; ");
        }
        out.push_str(&text);
        if out.len() > 400 {
            break;
        }
    }
    out
}

fn errors_say_not_found(errors: &[String]) -> bool {
    errors.iter().any(|e| {
        let e = e.to_ascii_lowercase();
        e.contains("not found") || e.contains("could not be found") || e.contains("could be found")
    })
}

fn errors_say_denied(errors: &[String]) -> bool {
    errors
        .iter()
        .any(|e| e.to_ascii_lowercase().contains("permission denied"))
}

fn classify_status(op: Op, code: u16, errors: &[String]) -> Class {
    match code {
        401 | 403 => Class::Denied,
        404 => Class::NotFound,
        400 if errors_say_denied(errors) => Class::Denied,
        400 if errors_say_not_found(errors) => Class::NotFound,
        400 if op.takes_wrapped_dek() => Class::Rejected,
        // 412: a performance standby is not caught up; 429: rate limited or a standby
        // node; 5xx: sealed, overloaded, or a proxy in front of Vault failed.
        408 | 412 | 429 | 500..=599 => Class::Unavailable(format!("http {code}")),
        _ => Class::Status(code, safe_errors(errors)),
    }
}

/// Why a request could not be sent or answered, from the error chain of the HTTP
/// client. Only error kinds are reported, never URLs or bodies.
fn transport_reason(err: &anyhow::Error) -> String {
    for cause in err.chain() {
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            return match io.kind() {
                std::io::ErrorKind::ConnectionRefused => "connection refused".to_owned(),
                std::io::ErrorKind::ConnectionReset => "connection reset".to_owned(),
                std::io::ErrorKind::ConnectionAborted => "connection aborted".to_owned(),
                std::io::ErrorKind::TimedOut => "timeout".to_owned(),
                std::io::ErrorKind::NotFound => "address not found".to_owned(),
                kind => format!("i/o error: {kind}"),
            };
        }
    }
    let text = err
        .chain()
        .map(|c| c.to_string().to_ascii_lowercase())
        .collect::<Vec<_>>()
        .join(" / ");
    if text.contains("timed out") || text.contains("timeout") {
        "timeout".to_owned()
    } else if text.contains("dns") || text.contains("resolve") {
        "address not found".to_owned()
    } else if text.contains("certificate") || text.contains("tls") {
        "tls error".to_owned()
    } else if text.contains("connect") {
        "connection failed".to_owned()
    } else {
        "request failed".to_owned()
    }
}

fn classify(op: Op, err: ClientError) -> Class {
    use rustify_errors::RestError;
    match err {
        ClientError::APIError { code, errors } => classify_status(op, code, &errors),
        ClientError::RestClientError { source } => match RestError::from(source) {
            RestError::Transport(reason) => Class::Unavailable(reason),
            RestError::Status(code) => classify_status(op, code, &[]),
            RestError::BadResponse => Class::Protocol("malformed response".to_owned()),
            RestError::Other => Class::Protocol("request could not be built".to_owned()),
        },
        ClientError::ResponseEmptyError | ClientError::ResponseDataEmptyError => {
            Class::Protocol("empty response".to_owned())
        }
        ClientError::JsonParseError { .. } => Class::Protocol("malformed response".to_owned()),
        _ => Class::Protocol("client error".to_owned()),
    }
}

/// The HTTP layer's errors, reduced to what is safe to report.
mod rustify_errors {
    use rustify::errors::ClientError as RustifyError;

    use super::transport_reason;

    pub(super) enum RestError {
        Transport(String),
        Status(u16),
        BadResponse,
        Other,
    }

    impl From<RustifyError> for RestError {
        fn from(e: RustifyError) -> Self {
            match e {
                RustifyError::RequestError { source, .. }
                | RustifyError::ResponseError { source } => {
                    RestError::Transport(transport_reason(&source))
                }
                RustifyError::ServerResponseError { code, .. } => RestError::Status(code),
                RustifyError::ResponseParseError { .. }
                | RustifyError::ResponseConversionError { .. }
                | RustifyError::DataParseError { .. } => RestError::BadResponse,
                _ => RestError::Other,
            }
        }
    }
}

/// Decodes Vault's base64 DEK plaintext into a [`Dek`], through wiped buffers.
fn dek_from_base64(plaintext: &str) -> Result<Dek, KmsError> {
    const MAX_B64: usize = 64;
    let text = plaintext.trim();
    if text.len() > MAX_B64 {
        return Err(KmsError::UnwrapFailed { backend: BACKEND });
    }
    let mut buf = Zeroizing::new([0u8; 48]);
    let n = base64::engine::general_purpose::STANDARD
        .decode_slice(text, buf.as_mut_slice())
        .map_err(|_| protocol_error("data key plaintext is not base64"))?;
    if n != DEK_LEN {
        return Err(KmsError::UnwrapFailed { backend: BACKEND });
    }
    let bytes = buf
        .get(..DEK_LEN)
        .ok_or_else(|| protocol_error("data key has the wrong length"))?;
    Dek::from_slice(bytes).map_err(|_| KmsError::UnwrapFailed { backend: BACKEND })
}

fn check_wrapped(ciphertext: String) -> Result<WrappedDek, KmsError> {
    let wrapped = WrappedDek::new(ciphertext);
    if wrapped.as_str().starts_with("vault:v") && wrapped.kek_version().is_some() {
        Ok(wrapped)
    } else {
        Err(protocol_error(
            "vault returned a ciphertext not of the form vault:vN:...",
        ))
    }
}

#[async_trait]
impl Kms for VaultKms {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    async fn create_tenant_key(&self, tenant: &TenantId) -> Result<KeyRef, KmsError> {
        let key = self.key_ref(tenant);
        let mount = self.mount.as_str();
        let name = key.as_str();
        // Creating an existing key is a no-op in transit (whatever its type).
        self.call(Op::CreateKey, name, move |c| async move {
            let mut opts = CreateKeyRequest::builder();
            opts.key_type(KeyType::Aes256Gcm96);
            vaultrs::transit::key::create(&*c, mount, name, Some(&mut opts)).await
        })
        .await?;
        Ok(key)
    }

    async fn generate_dek(&self, ctx: DekContext<'_>) -> Result<(Dek, WrappedDek), KmsError> {
        let mount = self.mount.as_str();
        let name = ctx.key.as_str();
        let resp = self
            .call(Op::GenerateDek, name, move |c| async move {
                vaultrs::transit::generate::data_key(&*c, mount, name, DataKeyType::Plaintext, None)
                    .await
            })
            .await?;
        let plaintext = Zeroizing::new(
            resp.plaintext
                .ok_or_else(|| protocol_error("data key answer has no plaintext"))?,
        );
        let dek = dek_from_base64(&plaintext)
            .map_err(|_| protocol_error("data key plaintext is not a 256-bit key"))?;
        let wrapped = check_wrapped(resp.ciphertext)?;
        Ok((dek, wrapped))
    }

    async fn unwrap_dek(&self, ctx: DekContext<'_>, wrapped: &WrappedDek) -> Result<Dek, KmsError> {
        if !wrapped.as_str().starts_with("vault:v") {
            return Err(KmsError::UnwrapFailed { backend: BACKEND });
        }
        let mount = self.mount.as_str();
        let name = ctx.key.as_str();
        let ciphertext = wrapped.as_str();
        let resp = self
            .call(Op::UnwrapDek, name, move |c| async move {
                vaultrs::transit::data::decrypt(&*c, mount, name, ciphertext, None).await
            })
            .await?;
        let plaintext = Zeroizing::new(resp.plaintext);
        dek_from_base64(&plaintext)
    }

    async fn rewrap_dek(
        &self,
        ctx: DekContext<'_>,
        wrapped: &WrappedDek,
    ) -> Result<WrappedDek, KmsError> {
        if !wrapped.as_str().starts_with("vault:v") {
            return Err(KmsError::UnwrapFailed { backend: BACKEND });
        }
        let mount = self.mount.as_str();
        let name = ctx.key.as_str();
        let ciphertext = wrapped.as_str();
        let resp = self
            .call(Op::RewrapDek, name, move |c| async move {
                vaultrs::transit::data::rewrap(&*c, mount, name, ciphertext, None).await
            })
            .await?;
        check_wrapped(resp.ciphertext)
    }

    async fn rotate_kek(&self, key: &KeyRef) -> Result<u32, KmsError> {
        let mount = self.mount.as_str();
        let name = key.as_str();
        self.call(Op::RotateKek, name, move |c| async move {
            vaultrs::transit::key::rotate(&*c, mount, name).await
        })
        .await?;
        let info = self.key_info(key).await?;
        u32::try_from(info.latest_version)
            .map_err(|_| protocol_error("key version does not fit in 32 bits"))
    }

    async fn destroy_tenant_key(&self, key: &KeyRef) -> Result<(), KmsError> {
        let mount = self.mount.as_str();
        let name = key.as_str();
        let allowed = self
            .call(Op::ConfigureKey, name, move |c| async move {
                let mut opts = UpdateKeyConfigurationRequest::builder();
                opts.deletion_allowed(true);
                vaultrs::transit::key::update(&*c, mount, name, Some(&mut opts)).await
            })
            .await;
        match allowed {
            Ok(()) => {}
            Err(KmsError::KeyNotFound { .. }) => return Ok(()),
            Err(e) => return Err(e),
        }
        match self
            .call(Op::DeleteKey, name, move |c| async move {
                vaultrs::transit::key::delete(&*c, mount, name).await
            })
            .await
        {
            Ok(()) | Err(KmsError::KeyNotFound { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_debug_is_redacted() {
        let auth = VaultAuth::token("hvs.supersecret");
        let shown = format!("{auth:?}");
        assert!(!shown.contains("supersecret"), "{shown}");
        let cfg = VaultConfig::new("http://127.0.0.1:8200", auth);
        assert!(!format!("{cfg:?}").contains("supersecret"));
    }

    fn access() -> TenantAccess {
        TenantAccess {
            policy: "helpr-tenant-acme".into(),
            auth_mount: "kubernetes".into(),
            role: "helpr-sync-acme".into(),
            service_account: "helpr-sync-acme".into(),
            namespace: "helpr".into(),
            token_ttl: "1h".into(),
        }
    }

    #[test]
    fn tenant_policy_allows_exactly_datakey_decrypt_and_rewrap_on_one_key() {
        let kms = VaultKms::new(VaultConfig::new(
            "http://127.0.0.1:8200",
            VaultAuth::token("t"),
        ))
        .unwrap();
        let policy = kms
            .tenant_policy(&KeyRef::new("helpr-tenant-acme"))
            .unwrap();
        let paths: Vec<&str> = policy.lines().filter(|l| l.starts_with("path ")).collect();
        assert_eq!(
            paths,
            [
                "path \"transit/datakey/plaintext/helpr-tenant-acme\" {",
                "path \"transit/decrypt/helpr-tenant-acme\" {",
                "path \"transit/rewrap/helpr-tenant-acme\" {",
            ]
        );
        assert_eq!(policy.matches("capabilities = [\"update\"]").count(), 3);
        assert!(!policy.contains('*') && !policy.contains('+'));
        // Nothing can change the policy's meaning through a name.
        for bad in [
            "a\" { capabilities = [\"sudo\"] } #",
            "x*",
            "x+",
            "../sys",
            "a b",
            "",
        ] {
            assert!(kms.tenant_policy(&KeyRef::new(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn tenant_access_names_and_ttl_are_checked() {
        assert!(access().validate().is_ok());
        for broken in [
            TenantAccess {
                policy: "p\"".into(),
                ..access()
            },
            TenantAccess {
                role: "r/../x".into(),
                ..access()
            },
            TenantAccess {
                namespace: "".into(),
                ..access()
            },
            TenantAccess {
                auth_mount: "/kubernetes".into(),
                ..access()
            },
            TenantAccess {
                token_ttl: "1d".into(),
                ..access()
            },
            TenantAccess {
                token_ttl: "h".into(),
                ..access()
            },
        ] {
            assert!(broken.validate().is_err(), "{broken:?}");
        }
        assert!(
            TenantAccess {
                auth_mount: "k8s/prod".into(),
                token_ttl: "900".into(),
                ..access()
            }
            .validate()
            .is_ok()
        );
    }

    #[test]
    fn config_deserializes_with_defaults() {
        let cfg: VaultConfig = serde_json::from_value(serde_json::json!({
            "address": "https://vault:8200",
            "auth": {"method": "kubernetes", "role": "sync"},
            "request_timeout": "500ms",
        }))
        .unwrap();
        assert_eq!(cfg.mount, "transit");
        assert_eq!(cfg.key_prefix, "helpr-tenant-");
        assert_eq!(cfg.request_timeout, Duration::from_millis(500));
        match cfg.auth {
            VaultAuth::Kubernetes {
                mount,
                role,
                token_file,
            } => {
                assert_eq!(mount, "kubernetes");
                assert_eq!(role, "sync");
                assert_eq!(
                    token_file,
                    PathBuf::from(DEFAULT_SERVICE_ACCOUNT_TOKEN_FILE)
                );
            }
            VaultAuth::Token { .. } => panic!("wrong auth"),
        }
        let cfg: VaultConfig = serde_json::from_value(serde_json::json!({
            "address": "http://127.0.0.1:8200",
            "auth": {"method": "token", "token": "root"},
            "request_timeout": 3,
        }))
        .unwrap();
        assert_eq!(cfg.request_timeout, Duration::from_secs(3));
        assert!(matches!(cfg.auth, VaultAuth::Token { ref token } if token.expose() == "root"));
    }

    #[test]
    fn bad_settings_are_config_errors() {
        for cfg in [
            VaultConfig::new("vault:8200", VaultAuth::token("t")),
            VaultConfig::new("http://", VaultAuth::token("t")),
            VaultConfig::new("http://127.0.0.1:8200", VaultAuth::token("bad\ntoken")),
            VaultConfig {
                key_prefix: "a/b".into(),
                ..VaultConfig::new("http://127.0.0.1:8200", VaultAuth::token("t"))
            },
        ] {
            assert!(matches!(VaultKms::new(cfg), Err(KmsError::Config { .. })));
        }
    }

    #[test]
    fn status_codes_map_to_kms_errors() {
        let e = |code, errs: &[&str], op| {
            let errs: Vec<String> = errs.iter().map(|s| s.to_string()).collect();
            classify_status(op, code, &errs).into_error("k")
        };
        assert!(matches!(
            e(503, &[], Op::UnwrapDek),
            KmsError::Unavailable { .. }
        ));
        assert!(matches!(
            e(403, &["permission denied"], Op::UnwrapDek),
            KmsError::Denied { .. }
        ));
        assert!(matches!(
            e(400, &["encryption key not found"], Op::UnwrapDek),
            KmsError::KeyNotFound { .. }
        ));
        assert!(matches!(
            e(
                400,
                &["cipher: message authentication failed"],
                Op::UnwrapDek
            ),
            KmsError::UnwrapFailed { .. }
        ));
        assert!(matches!(
            e(400, &["bad thing"], Op::CreateKey),
            KmsError::Protocol { .. }
        ));
        let shown = e(400, &["oops vault:v1:abc"], Op::CreateKey).to_string();
        assert!(!shown.contains("vault:v1"), "{shown}");
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("10s"), Some(Duration::from_secs(10)));
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), Some(Duration::from_secs(120)));
        assert_eq!(parse_duration("7"), Some(Duration::from_secs(7)));
        assert_eq!(parse_duration("x"), None);
    }
}
