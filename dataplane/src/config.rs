//! Settings: a TOML file (optional), overridden by `HELPR_<SECTION>__<KEY>` environment
//! variables, overridden by command-line flags.
//!
//! ```toml
//! data_dir = "./helpr-data"          # embedded default: SQLite + local KMS live here
//!
//! [database]
//! url = "postgres://helpr@db/helpr"  # default: sqlite under data_dir
//!
//! [kms]
//! backend = "vault"                  # or "local" (default, development only)
//!
//! [kms.vault]
//! address = "https://openbao.example:8200"
//! mount = "transit"
//! auth = { method = "kubernetes", role = "helpr-sync-acme" }
//!
//! [keyring]
//! cache_ttl_secs = 900
//! seal_bound = 2147483648
//!
//! [push]
//! audience = "https://helpr.example/v1/push/gmail"
//! service_account = "gmail-push@my-project.iam.gserviceaccount.com"
//!
//! [gmail]
//! api_base_url = "https://gmail.googleapis.com"
//!
//! [google]
//! token_url = "https://oauth2.googleapis.com/token"
//! client_id = "1234.apps.googleusercontent.com"   # secret: HELPR_GOOGLE__CLIENT_SECRET
//!
//! [sync]
//! poll_interval_secs = 300
//!
//! [search]
//! backend = "quickwit"               # or "embedded" (default) or "remote"
//!
//! [search.quickwit]
//! url = "https://quickwit-searcher:7280"
//! ca_cert_file = "/etc/helpr/quickwit/ca.pem"
//! client_cert_file = "/etc/helpr/quickwit/tls.crt"
//! client_key_file = "/etc/helpr/quickwit/tls.key"
//! ```
//!
//! `HELPR_DATABASE__URL`, `HELPR_KMS__BACKEND`, `HELPR_KMS__VAULT__ADDRESS`,
//! `HELPR_KEYRING__SEAL_BOUND`, ... override the file; `HELPR_DATA_DIR` sets `data_dir`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use figment::Figment;
use figment::providers::{Env, Format, Toml};

use crate::ingest::gmail::GmailConfig;
use crate::ingest::jwt::PushAuthConfig;
use crate::ingest::oauth::GoogleConfig;
use crate::ingest::sync::SyncConfig;
use crate::keyring::{Keyring, KeyringConfig};
use crate::kms::local::LocalKms;
use crate::kms::vault::{VaultConfig, VaultKms};
use crate::kms::{Kms, KmsError};
use crate::store::{self, Store, StoreError};

/// Every setting of the data plane.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(default)]
pub struct Settings {
    /// Directory of the embedded default (SQLite database, local KMS keys).
    pub data_dir: PathBuf,
    pub database: DatabaseSettings,
    pub kms: KmsSettings,
    pub keyring: KeyringConfig,
    /// Pub/Sub push authentication (`push.audience`, `push.service_account`, `push.jwks_url`).
    pub push: PushAuthConfig,
    /// Gmail API client (`gmail.api_base_url`, retries).
    pub gmail: GmailConfig,
    /// Google OAuth client (`google.token_url`, `google.client_id`, `google.client_secret`).
    pub google: GoogleConfig,
    /// Sync worker (`sync.poll_interval_secs`, batching, retries).
    pub sync: SyncConfig,
    /// Search (`search.mode`, `search.index_dir`, `search.commit_interval_ms`,
    /// `search.writer_heap_mb`).
    pub search: SearchSettings,
    /// The control API (`control.token_file`, `control.tls_cert_file`, `control.tls_key_file`).
    pub control: ControlSettings,
    /// The agent API (`api.issuer`, `api.audience`, `api.jwks_url`, claim names).
    pub api: ApiSettings,
}

/// The agent API (`helpr-dataplane api`): how agents' OIDC bearer tokens are verified.
///
/// ```toml
/// [api]
/// issuer = "https://login.example.com/realms/helpdesk"
/// audience = "helpr-api"
/// jwks_url = "https://login.example.com/realms/helpdesk/protocol/openid-connect/certs"
/// tenant_claim = "helpr_tenant"   # the tenant id the agent belongs to
/// agent_claim = "sub"             # or "email" (then `email_verified` must be true)
/// groups_claim = "groups"         # the agent's teams: an array of strings
/// ```
///
/// There is no unauthenticated mode: `api` refuses to start without issuer, audience and
/// JWKS URL.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApiSettings {
    /// Exact `iss` of accepted tokens.
    pub issuer: String,
    /// The `aud` accepted tokens must carry (a string equal to it, or an array holding it).
    pub audience: String,
    /// Where the issuer's signing keys are fetched from (`https://`, or `http://` to a
    /// loopback address only).
    pub jwks_url: String,
    /// Claim holding the agent's tenant id.
    pub tenant_claim: String,
    /// Claim naming the agent (`sub` or `email`); grants of subject kind `agent` name it.
    pub agent_claim: String,
    /// Claim listing the agent's teams (an array of strings; absent means none).
    pub groups_claim: String,
    /// Tolerated clock skew on `exp`, `nbf` and `iat`, in seconds (at most 60).
    pub leeway_secs: u64,
    /// An unknown `kid` refetches the JWKS at most once per this many seconds.
    pub jwks_min_refetch_interval_secs: u64,
}

impl Default for ApiSettings {
    fn default() -> Self {
        Self {
            issuer: String::new(),
            audience: String::new(),
            jwks_url: String::new(),
            tenant_claim: "helpr_tenant".into(),
            agent_claim: "sub".into(),
            groups_claim: "groups".into(),
            leeway_secs: 60,
            jwks_min_refetch_interval_secs: 30,
        }
    }
}

/// The control API server (`helpr-dataplane control`).
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ControlSettings {
    /// File holding the bearer token the operator must present (a mounted Secret, mode
    /// 0600 or stricter). Required: the server refuses to start without it.
    pub token_file: Option<PathBuf>,
    /// PEM certificate chain to serve TLS with (together with `tls_key_file`).
    pub tls_cert_file: Option<PathBuf>,
    /// PEM private key of `tls_cert_file` (mode 0600 or stricter).
    pub tls_key_file: Option<PathBuf>,
}

/// The embedded search index (tantivy).
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SearchSettings {
    /// `blind` (default: the index holds no plaintext) or `plaintext` (opt-in).
    pub mode: crate::search::Mode,
    /// Directory of the per-tenant indexes; default `<data_dir>/index`.
    pub index_dir: Option<PathBuf>,
    /// Longest time from indexing to searchable, in milliseconds (default 1000).
    pub commit_interval_ms: u64,
    /// Memory budget of each tenant's index writer, in MiB (default 64, at least 15).
    pub writer_heap_mb: usize,
    /// `embedded` (default: the tantivy index under `index_dir`, in this process),
    /// `remote` (the index role, `helpr-dataplane index`, at `remote_url`) or `quickwit`
    /// (a Quickwit cluster, `[search.quickwit]`).
    pub backend: SearchBackend,
    /// gRPC URL of the index role when `backend = "remote"`, e.g. `http://helpr-index:7070`.
    pub remote_url: Option<String>,
    /// The index role's secret (see [`crate::search::index_auth`]; mode 0600 or stricter):
    /// `helpr-dataplane index` verifies callers' tokens with it, and a `remote` client that
    /// holds it (the shared roles) presents the token for every tenant.
    pub index_secret_file: Option<PathBuf>,
    /// A `remote` client's index token, for one tenant (the operator writes it for each
    /// tenant's sync workers and purge jobs); used instead of `index_secret_file`.
    pub remote_token_file: Option<PathBuf>,
    /// The Quickwit cluster when `backend = "quickwit"` (`search.quickwit.url`, `index_id`,
    /// `commit`, `ca_cert_file`, `client_cert_file`, `client_key_file`,
    /// `allow_insecure_http`, `timeout_secs`, ...).
    pub quickwit: Option<crate::search::quickwit::QuickwitConfig>,
}

/// Where the search index lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SearchBackend {
    #[default]
    Embedded,
    Remote,
    Quickwit,
}

impl Default for SearchSettings {
    fn default() -> Self {
        Self {
            mode: crate::search::Mode::Blind,
            index_dir: None,
            commit_interval_ms: 1000,
            writer_heap_mb: 64,
            backend: SearchBackend::Embedded,
            remote_url: None,
            index_secret_file: None,
            remote_token_file: None,
            quickwit: None,
        }
    }
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("./helpr-data"),
            database: DatabaseSettings::default(),
            kms: KmsSettings::default(),
            keyring: KeyringConfig::default(),
            push: PushAuthConfig::default(),
            gmail: GmailConfig::default(),
            google: GoogleConfig::default(),
            sync: SyncConfig::default(),
            search: SearchSettings::default(),
            control: ControlSettings::default(),
            api: ApiSettings::default(),
        }
    }
}

#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseSettings {
    /// `postgres://...` or `sqlite://...`; default `sqlite://<data_dir>/helpr.db`.
    pub url: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KmsBackend {
    /// Key files under `data_dir` (development only).
    #[default]
    Local,
    /// HashiCorp Vault or OpenBao transit.
    Vault,
}

#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KmsSettings {
    pub backend: KmsBackend,
    pub local: LocalKmsSettings,
    pub vault: Option<VaultConfig>,
}

#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LocalKmsSettings {
    /// Directory of the key files; default `<data_dir>/kms`.
    pub key_dir: Option<PathBuf>,
}

/// A settings problem. Never includes secret values.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid settings: {0}")]
    Invalid(String),
    #[error("cannot create data directory {path}: {kind}")]
    DataDir {
        path: PathBuf,
        kind: std::io::ErrorKind,
    },
    #[error(transparent)]
    Kms(#[from] KmsError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Settings {
    /// Reads the file (if given), then the environment.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        let mut figment = Figment::new();
        if let Some(file) = file {
            if !file.exists() {
                return Err(ConfigError::Invalid(format!(
                    "config file {} does not exist",
                    file.display()
                )));
            }
            figment = figment.merge(Toml::file_exact(file));
        }
        figment = figment.merge(
            Env::prefixed("HELPR_")
                .filter(|k| {
                    k.as_str().contains("__") || k.as_str().eq_ignore_ascii_case("data_dir")
                })
                .split("__"),
        );
        figment.extract().map_err(|e| {
            // figment's messages name the key and the expected type, not the value.
            ConfigError::Invalid(e.to_string())
        })
    }

    /// The database URL in effect.
    pub fn database_url(&self) -> Result<String, ConfigError> {
        match &self.database.url {
            Some(url) => Ok(url.clone()),
            None => {
                let dir = self.ensure_data_dir()?;
                Ok(format!("sqlite://{}", dir.join("helpr.db").display()))
            }
        }
    }

    fn ensure_data_dir(&self) -> Result<PathBuf, ConfigError> {
        std::fs::create_dir_all(&self.data_dir).map_err(|e| ConfigError::DataDir {
            path: self.data_dir.clone(),
            kind: e.kind(),
        })?;
        self.data_dir
            .canonicalize()
            .map_err(|e| ConfigError::DataDir {
                path: self.data_dir.clone(),
                kind: e.kind(),
            })
    }

    /// Opens the store and applies migrations.
    pub async fn open_store(&self) -> Result<Arc<dyn Store>, ConfigError> {
        Ok(store::connect(&self.database_url()?).await?)
    }

    /// Opens the configured KMS.
    pub async fn open_kms(&self) -> Result<Arc<dyn Kms>, ConfigError> {
        match self.kms.backend {
            KmsBackend::Local => {
                let dir = match &self.kms.local.key_dir {
                    Some(dir) => dir.clone(),
                    None => self.ensure_data_dir()?.join("kms"),
                };
                Ok(Arc::new(LocalKms::open(dir)?))
            }
            KmsBackend::Vault => {
                let cfg = self.kms.vault.clone().ok_or_else(|| {
                    ConfigError::Invalid("kms.backend is vault but [kms.vault] is missing".into())
                })?;
                Ok(Arc::new(VaultKms::new(cfg)?))
            }
        }
    }

    /// The tantivy backend under `search.index_dir` (needs a tokio runtime: it starts the
    /// periodic committer).
    pub fn open_search_index(&self) -> Result<crate::search::TantivyIndex, ConfigError> {
        let root = match &self.search.index_dir {
            Some(dir) => dir.clone(),
            None => self.ensure_data_dir()?.join("index"),
        };
        let mut cfg = crate::search::TantivyConfig::new(root);
        cfg.commit_interval = std::time::Duration::from_millis(self.search.commit_interval_ms);
        cfg.writer_heap_bytes = self.search.writer_heap_mb.saturating_mul(1024 * 1024);
        crate::search::TantivyIndex::open(cfg).map_err(|e| ConfigError::Invalid(e.to_string()))
    }

    /// The configured search backend: the embedded tantivy index, the index role, or
    /// Quickwit (which keeps its delete tombstones in `store`).
    pub fn open_search_backend(
        &self,
        store: Arc<dyn Store>,
    ) -> Result<Arc<dyn crate::search::SearchIndex>, ConfigError> {
        match self.search.backend {
            SearchBackend::Quickwit => {
                let cfg = self.search.quickwit.clone().ok_or_else(|| {
                    ConfigError::Invalid(
                        "search.backend is quickwit but [search.quickwit] is missing".into(),
                    )
                })?;
                Ok(Arc::new(
                    crate::search::quickwit::QuickwitIndex::new(cfg, store)
                        .map_err(|e| ConfigError::Invalid(e.to_string()))?,
                ))
            }
            SearchBackend::Embedded => Ok(Arc::new(self.open_search_index()?)),
            SearchBackend::Remote => {
                let url = self.search.remote_url.as_deref().ok_or_else(|| {
                    ConfigError::Invalid(
                        "search.backend is remote but search.remote_url is missing".into(),
                    )
                })?;
                let token = self.index_token()?;
                Ok(Arc::new(
                    crate::search::remote::RemoteIndex::connect(url, &token)
                        .map_err(|e| ConfigError::Invalid(e.to_string()))?,
                ))
            }
        }
    }

    /// The index role's secret (`search.index_secret_file`), which `helpr-dataplane index`
    /// requires: there is no unauthenticated index role.
    pub fn index_secret(&self) -> Result<crate::search::index_auth::IndexSecret, ConfigError> {
        let path = self.search.index_secret_file.as_deref().ok_or_else(|| {
            ConfigError::Invalid(
                "search.index_secret_file is required: the index role serves only callers \
                 with a token of its secret (at least 32 random characters, mode 0600)"
                    .into(),
            )
        })?;
        crate::search::index_auth::IndexSecret::from_file(path)
            .map_err(|e| ConfigError::Invalid(e.to_string()))
    }

    /// The token a `remote` client presents: from `search.remote_token_file`, or the
    /// all-tenants token of `search.index_secret_file`.
    pub fn index_token(&self) -> Result<crate::search::index_auth::IndexToken, ConfigError> {
        use crate::search::index_auth::{IndexScope, IndexToken};
        match (
            &self.search.remote_token_file,
            &self.search.index_secret_file,
        ) {
            (Some(_), Some(_)) => Err(ConfigError::Invalid(
                "search.remote_token_file and search.index_secret_file exclude each other".into(),
            )),
            (Some(path), None) => {
                IndexToken::from_file(path).map_err(|e| ConfigError::Invalid(e.to_string()))
            }
            (None, Some(_)) => Ok(self.index_secret()?.token(&IndexScope::All)),
            (None, None) => Err(ConfigError::Invalid(
                "search.backend is remote but neither search.remote_token_file nor \
                 search.index_secret_file is set: the index role needs a token"
                    .into(),
            )),
        }
    }

    /// Store, KMS and keyring together.
    pub async fn open_keyring(&self) -> Result<Keyring, ConfigError> {
        let store = self.open_store().await?;
        let kms = self.open_kms().await?;
        Ok(Keyring::new(kms, store, self.keyring.clone()))
    }
}

#[cfg(test)]
// figment::Jail's closures return figment's own (large) error type.
#[allow(clippy::result_large_err)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_embedded_setup() {
        figment::Jail::expect_with(|_jail| {
            let s = Settings::load(None).unwrap();
            assert_eq!(s.kms.backend, KmsBackend::Local);
            assert_eq!(s.keyring.seal_bound, 1 << 31);
            assert!(s.database.url.is_none());
            Ok(())
        });
    }

    #[test]
    fn the_api_section_loads_with_defaults_for_claim_names() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "helpr.toml",
                "[api]\nissuer = \"https://idp.test\"\naudience = \"helpr\"\n",
            )?;
            jail.set_env("HELPR_API__AGENT_CLAIM", "email");
            let s = Settings::load(Some(Path::new("helpr.toml"))).unwrap();
            assert_eq!(s.api.issuer, "https://idp.test");
            assert_eq!(s.api.audience, "helpr");
            assert_eq!(s.api.agent_claim, "email");
            assert_eq!(s.api.tenant_claim, "helpr_tenant");
            assert_eq!(s.api.groups_claim, "groups");
            jail.create_file("bad.toml", "[api]\nisuer = \"x\"\n")?;
            assert!(Settings::load(Some(Path::new("bad.toml"))).is_err());
            Ok(())
        });
    }

    #[test]
    fn environment_overrides_the_file() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "helpr.toml",
                "data_dir = \"/tmp/x\"\n[database]\nurl = \"sqlite://file.db\"\n[keyring]\nseal_bound = 10\n",
            )?;
            jail.set_env("HELPR_KEYRING__SEAL_BOUND", "20");
            jail.set_env("HELPR_E2E_KUBECONFIG", "/ignored");
            let s = Settings::load(Some(Path::new("helpr.toml"))).unwrap();
            assert_eq!(s.keyring.seal_bound, 20);
            assert_eq!(s.database.url.as_deref(), Some("sqlite://file.db"));
            assert_eq!(s.data_dir, PathBuf::from("/tmp/x"));
            Ok(())
        });
    }

    #[test]
    fn quickwit_settings_load_and_plain_http_is_refused() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "q.toml",
                "[search]\nbackend = \"quickwit\"\n[search.quickwit]\n\
                 url = \"http://quickwit:7280\"\ncommit = \"force\"\n\
                 ca_cert_file = \"/etc/helpr/quickwit-ca.pem\"\ntimeout_secs = 5\n",
            )?;
            let s = Settings::load(Some(Path::new("q.toml"))).unwrap();
            assert_eq!(s.search.backend, SearchBackend::Quickwit);
            let q = s.search.quickwit.clone().unwrap();
            assert_eq!(q.index_id, "helpr-messages");
            assert_eq!(q.commit, crate::search::quickwit::CommitMode::Force);
            assert_eq!(q.timeout_secs, 5);
            assert!(!q.allow_insecure_http);
            jail.create_file(
                "bad.toml",
                "[search.quickwit]\nurl = \"https://q\"\ntimeout = 5\n",
            )?;
            let err = Settings::load(Some(Path::new("bad.toml"))).unwrap_err();
            assert!(err.to_string().contains("timeout"), "{err}");
            Ok(())
        });
    }

    #[tokio::test]
    async fn the_quickwit_backend_needs_its_section_and_https() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(
            crate::store::SqliteStore::connect(&format!(
                "sqlite://{}",
                dir.path().join("db").display()
            ))
            .await
            .unwrap(),
        );
        let mut s = Settings::default();
        s.search.backend = SearchBackend::Quickwit;
        let err = s.open_search_backend(store.clone()).err().unwrap();
        assert!(err.to_string().contains("[search.quickwit]"), "{err}");
        s.search.quickwit = Some(crate::search::quickwit::QuickwitConfig {
            url: "http://quickwit:7280".into(),
            ..Default::default()
        });
        let err = s.open_search_backend(store.clone()).err().unwrap();
        assert!(err.to_string().contains("allow_insecure_http"), "{err}");
        s.search.quickwit = Some(crate::search::quickwit::QuickwitConfig {
            url: "https://quickwit:7280".into(),
            ..Default::default()
        });
        let index = s.open_search_backend(store).unwrap();
        assert_eq!(index.backend(), "quickwit");
    }

    #[test]
    fn typos_and_bad_values_are_clear_errors() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("a.toml", "[keyring]\nseal_bund = 10\n")?;
            let err = Settings::load(Some(Path::new("a.toml"))).unwrap_err();
            assert!(err.to_string().contains("seal_bund"), "{err}");
            jail.create_file("b.toml", "[kms]\nbackend = \"cloud\"\n")?;
            let err = Settings::load(Some(Path::new("b.toml"))).unwrap_err();
            assert!(err.to_string().contains("backend"), "{err}");
            let err = Settings::load(Some(Path::new("missing.toml"))).unwrap_err();
            assert!(err.to_string().contains("does not exist"), "{err}");
            Ok(())
        });
    }
}
