//! Who may call the index role, and for which tenants.
//!
//! The index role holds a secret (`search.index_secret_file`, a mounted Secret only the data
//! plane's user may read). Every call must carry `authorization: Bearer <token>`, where a
//! token names its scope, one tenant or every tenant (`*`), and is the secret's HMAC-SHA256
//! of that scope:
//!
//! ```text
//! helpr-index.v1.<scope>.<base64url(HMAC-SHA256(secret, "helpr/index-token/v1\n" + scope))>
//! ```
//!
//! The shared roles (API, control, purge) hold the secret itself and present the `*` token;
//! the operator, which holds it too, gives each tenant's sync workers and purge jobs a token
//! for that tenant only. So one tenant's pods cannot search, change or drop another tenant's
//! index, and a pod without a token (one that only carries the data plane's labels, which
//! the NetworkPolicy admits) gets nothing. The index role answers UNAUTHENTICATED to a
//! missing, malformed or wrong token and PERMISSION_DENIED to a call for a tenant outside
//! the token's scope, before the request reaches the index. Tokens and the secret never
//! reach `Debug`, logs or error text.

use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::hmac;
use tonic::Status;
use tonic::metadata::{Ascii, MetadataMap, MetadataValue};
use zeroize::Zeroizing;

use crate::control::auth::{SecretFileError, read_private_secret};
use crate::ids::TenantId;

const PREFIX: &str = "helpr-index.v1.";
const MAC_LABEL: &[u8] = b"helpr/index-token/v1\n";
/// The scope of a token for every tenant.
const ALL: &str = "*";
/// Shortest secret accepted, in bytes (the chart generates 48 characters).
pub const MIN_SECRET_BYTES: usize = 32;

/// What a token allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IndexScope {
    /// Every tenant's index (the shared roles).
    All,
    /// One tenant's index (its sync workers and purge jobs).
    Tenant(TenantId),
}

impl IndexScope {
    fn as_str(&self) -> &str {
        match self {
            IndexScope::All => ALL,
            IndexScope::Tenant(t) => t.as_str(),
        }
    }

    /// Whether a call for `tenant` is allowed.
    pub fn allows(&self, tenant: &TenantId) -> bool {
        match self {
            IndexScope::All => true,
            IndexScope::Tenant(t) => t == tenant,
        }
    }
}

/// Why a secret or token could not be used. Never carries either.
#[derive(Debug, thiserror::Error)]
pub enum IndexAuthError {
    #[error(transparent)]
    File(#[from] SecretFileError),
    #[error("index secret file {0} holds fewer than {MIN_SECRET_BYTES} bytes")]
    ShortSecret(PathBuf),
    #[error("index token file {0} does not hold an index token (helpr-index.v1....)")]
    MalformedToken(PathBuf),
}

/// The index role's secret. No `Debug`, no `Display`.
pub struct IndexSecret {
    key: hmac::Key,
}

impl IndexSecret {
    /// A secret from its bytes (tests, and callers that hold it already).
    pub fn new(secret: &[u8]) -> Self {
        Self {
            key: hmac::Key::new(hmac::HMAC_SHA256, secret),
        }
    }

    /// Reads the secret from `path` (private, printable, at least [`MIN_SECRET_BYTES`]).
    pub fn from_file(path: &Path) -> Result<Self, IndexAuthError> {
        let secret = read_private_secret(path, "index secret")?;
        if secret.len() < MIN_SECRET_BYTES {
            return Err(IndexAuthError::ShortSecret(path.to_owned()));
        }
        Ok(Self::new(&secret))
    }

    fn mac(&self, scope: &str) -> hmac::Tag {
        hmac::sign(&self.key, &[MAC_LABEL, scope.as_bytes()].concat())
    }

    /// The token for `scope`.
    pub fn token(&self, scope: &IndexScope) -> IndexToken {
        let scope = scope.as_str();
        IndexToken(Zeroizing::new(format!(
            "{PREFIX}{scope}.{}",
            URL_SAFE_NO_PAD.encode(self.mac(scope).as_ref())
        )))
    }

    /// The scope of `token` if this secret made it (the MAC compared in constant time).
    pub fn verify(&self, token: &[u8]) -> Option<IndexScope> {
        let rest = std::str::from_utf8(token).ok()?.strip_prefix(PREFIX)?;
        let (scope, mac) = rest.rsplit_once('.')?;
        let mac = URL_SAFE_NO_PAD.decode(mac).ok()?;
        // `verify` compares in constant time.
        hmac::verify(&self.key, &[MAC_LABEL, scope.as_bytes()].concat(), &mac).ok()?;
        if scope == ALL {
            return Some(IndexScope::All);
        }
        TenantId::new(scope).ok().map(IndexScope::Tenant)
    }

    /// Lets a call for `tenant` through if its metadata carries a token of this secret whose
    /// scope covers the tenant; otherwise the status to answer.
    #[allow(clippy::result_large_err)] // tonic's Status
    pub fn authorize(&self, metadata: &MetadataMap, tenant: &TenantId) -> Result<(), Status> {
        let Some(value) = metadata.get("authorization") else {
            tracing::warn!("index call without credentials refused");
            return Err(Status::unauthenticated(
                "missing bearer token (authorization: Bearer <index token>)",
            ));
        };
        let presented = value
            .as_bytes()
            .strip_prefix(b"Bearer ")
            .or_else(|| value.as_bytes().strip_prefix(b"bearer "));
        let Some(scope) = presented.and_then(|t| self.verify(t)) else {
            tracing::warn!("index call with a wrong token refused");
            return Err(Status::unauthenticated("invalid index token"));
        };
        if !scope.allows(tenant) {
            tracing::warn!(tenant = %tenant, "index call for a tenant outside the token's scope refused");
            return Err(Status::permission_denied(
                "the index token does not cover this tenant",
            ));
        }
        Ok(())
    }
}

/// A bearer token for the index role. No `Debug`, no `Display`; wiped on drop.
pub struct IndexToken(Zeroizing<String>);

impl IndexToken {
    /// Reads a token (as the operator writes it) from `path` (private, as the secret).
    pub fn from_file(path: &Path) -> Result<Self, IndexAuthError> {
        let bytes = read_private_secret(path, "index token")?;
        match std::str::from_utf8(&bytes) {
            Ok(s) if s.starts_with(PREFIX) => Ok(Self(Zeroizing::new(s.to_owned()))),
            _ => Err(IndexAuthError::MalformedToken(path.to_owned())),
        }
    }

    /// The token's text (what goes into a Secret the operator writes).
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The `authorization` header value.
    pub(crate) fn header(&self) -> MetadataValue<Ascii> {
        // A token is ASCII by construction (prefix, tenant id or `*`, base64url), and a
        // token file is checked to be printable ASCII when read.
        MetadataValue::try_from(format!("Bearer {}", self.0.as_str()))
            .unwrap_or_else(|_| MetadataValue::from_static("Bearer invalid"))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef-index";

    fn tenant(id: &str) -> TenantId {
        TenantId::new(id).unwrap()
    }

    fn metadata(token: Option<&str>) -> MetadataMap {
        let mut m = MetadataMap::new();
        if let Some(t) = token {
            m.insert("authorization", t.parse().unwrap());
        }
        m
    }

    #[test]
    fn tokens_are_scoped_and_bound_to_the_secret() {
        let secret = IndexSecret::new(SECRET);
        let all = secret.token(&IndexScope::All);
        let acme = secret.token(&IndexScope::Tenant(tenant("acme")));
        assert!(acme.expose().starts_with("helpr-index.v1.acme."));
        assert_eq!(
            secret.verify(all.expose().as_bytes()),
            Some(IndexScope::All)
        );
        assert_eq!(
            secret.verify(acme.expose().as_bytes()),
            Some(IndexScope::Tenant(tenant("acme")))
        );
        // Same for the same scope: the operator's Secret does not change on every reconcile.
        assert_eq!(
            secret.token(&IndexScope::Tenant(tenant("acme"))).expose(),
            acme.expose()
        );
        // Another secret's token, a scope swapped under the MAC, a truncated MAC, garbage.
        let other = IndexSecret::new(b"another secret another secret another");
        assert_eq!(
            secret.verify(other.token(&IndexScope::All).expose().as_bytes()),
            None
        );
        let mac = acme.expose().rsplit_once('.').unwrap().1.to_owned();
        for forged in [
            format!("helpr-index.v1.globex.{mac}"),
            format!("helpr-index.v1.*.{mac}"),
            acme.expose()[..acme.expose().len() - 2].to_owned(),
            format!("helpr-index.v2.acme.{mac}"),
            "helpr-index.v1.".to_owned(),
            String::new(),
        ] {
            assert_eq!(secret.verify(forged.as_bytes()), None, "{forged}");
        }
        // A scope that is no tenant id is refused even with a right MAC.
        let bad = IndexSecret::new(SECRET).mac("../x");
        let token = format!(
            "helpr-index.v1.../x.{}",
            URL_SAFE_NO_PAD.encode(bad.as_ref())
        );
        assert_eq!(secret.verify(token.as_bytes()), None);
    }

    #[test]
    fn calls_need_a_token_whose_scope_covers_the_tenant() {
        let secret = IndexSecret::new(SECRET);
        let acme = tenant("acme");
        let globex = tenant("globex");
        let bearer = |scope: &IndexScope| format!("Bearer {}", secret.token(scope).expose());
        let code = |m: MetadataMap, t: &TenantId| secret.authorize(&m, t).err().map(|s| s.code());
        assert_eq!(code(metadata(Some(&bearer(&IndexScope::All))), &acme), None);
        assert_eq!(
            code(metadata(Some(&bearer(&IndexScope::All))), &globex),
            None
        );
        let only_acme = bearer(&IndexScope::Tenant(acme.clone()));
        assert_eq!(code(metadata(Some(&only_acme)), &acme), None);
        assert_eq!(
            code(metadata(Some(&only_acme)), &globex),
            Some(tonic::Code::PermissionDenied)
        );
        for bad in [None, Some("Bearer nope"), Some("Basic abc")] {
            assert_eq!(
                code(metadata(bad), &acme),
                Some(tonic::Code::Unauthenticated),
                "{bad:?}"
            );
        }
        let raw = secret.token(&IndexScope::All);
        assert_eq!(
            code(metadata(Some(raw.expose())), &acme),
            Some(tonic::Code::Unauthenticated),
            "no Bearer prefix"
        );
        // The error never carries the token.
        let err = secret
            .authorize(&metadata(Some(&only_acme)), &globex)
            .unwrap_err();
        assert!(!err.message().contains(only_acme.as_str()));
    }

    #[test]
    fn secret_and_token_files_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, content: &[u8], mode: u32| {
            let path = dir.path().join(name);
            std::fs::write(&path, content).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            path
        };
        let secret = write("secret", SECRET, 0o400);
        assert!(IndexSecret::from_file(&secret).is_ok());
        let open = write("open", SECRET, 0o644);
        let err = IndexSecret::from_file(&open).err().unwrap();
        assert!(err.to_string().contains("index secret file"), "{err}");
        assert!(err.to_string().contains("chmod 600"), "{err}");
        let short = write("short", b"tooshort", 0o600);
        assert!(matches!(
            IndexSecret::from_file(&short),
            Err(IndexAuthError::ShortSecret(_))
        ));
        let token = IndexSecret::new(SECRET).token(&IndexScope::Tenant(tenant("acme")));
        let file = write("token", format!("{}\n", token.expose()).as_bytes(), 0o440);
        let read = IndexToken::from_file(&file).unwrap();
        assert_eq!(read.expose(), token.expose());
        assert!(
            IndexSecret::new(SECRET)
                .authorize(
                    &metadata(Some(read.header().to_str().unwrap())),
                    &tenant("acme")
                )
                .is_ok()
        );
        let not_a_token = write("plain", b"s3cret-but-no-token", 0o600);
        let err = IndexToken::from_file(&not_a_token).err().unwrap();
        assert!(matches!(err, IndexAuthError::MalformedToken(_)), "{err}");
        assert!(!err.to_string().contains("s3cret"), "{err}");
    }
}
