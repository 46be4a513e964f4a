//! Key management: per-tenant key-encryption keys (KEKs) that wrap data encryption keys.
//!
//! Two backends implement [`Kms`]: [`vault`] (HashiCorp Vault or OpenBao transit, for
//! production) and [`local`] (key files on disk, for development only).

pub mod local;
pub mod vault;

use std::fmt;

use async_trait::async_trait;

use crate::crypto::{Dek, DekVersion};
use crate::ids::TenantId;

/// Name of a tenant's key-encryption key inside the KMS (e.g. the transit key name).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct KeyRef(String);

impl KeyRef {
    pub fn new(name: impl Into<String>) -> Self {
        Self(name.into())
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for KeyRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A DEK encrypted by the KMS (`vault:v3:...` for transit, `local:v1:...` for the local KMS).
///
/// Not secret by itself, but only the KMS can turn it back into a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WrappedDek(String);

impl WrappedDek {
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
    /// The KEK version that wrapped this DEK, when the format shows it (`<kms>:v<N>:...`).
    pub fn kek_version(&self) -> Option<u32> {
        let mut parts = self.0.splitn(3, ':');
        let _backend = parts.next()?;
        parts.next()?.strip_prefix('v')?.parse().ok()
    }
}

/// Which DEK a KMS call is about: the tenant, its key and the DEK version. The local
/// backend binds tenant and version into the wrapping as associated data.
#[derive(Debug, Clone, Copy)]
pub struct DekContext<'a> {
    pub tenant: &'a TenantId,
    pub key: &'a KeyRef,
    pub version: DekVersion,
}

/// A KMS failure. Messages never include key material, wrapped keys or tokens.
#[derive(Debug, thiserror::Error)]
pub enum KmsError {
    /// The KMS could not be reached or answered a server error; try again later.
    #[error("kms {backend} unavailable: {reason}")]
    Unavailable {
        backend: &'static str,
        reason: String,
    },
    /// The KMS refused the credentials or the policy forbids the operation.
    #[error("kms {backend} denied the request (check the token, role and policy)")]
    Denied { backend: &'static str },
    /// The tenant's key does not exist (never created, or destroyed by crypto-shredding).
    #[error("kms {backend}: key {key} not found")]
    KeyNotFound { backend: &'static str, key: String },
    /// The wrapped key could not be unwrapped: tampered, for another tenant or version,
    /// or wrapped by a KEK version below the minimum decryption version.
    #[error("kms {backend}: wrapped key rejected")]
    UnwrapFailed { backend: &'static str },
    /// The KMS answered something this client cannot use.
    #[error("kms {backend}: unexpected response: {reason}")]
    Protocol {
        backend: &'static str,
        reason: String,
    },
    /// Local configuration is wrong (missing file, unsafe permissions, ...).
    #[error("kms {backend} configuration: {reason}")]
    Config {
        backend: &'static str,
        reason: String,
    },
}

impl KmsError {
    /// Whether the same call may succeed later without a change of configuration.
    pub fn is_retryable(&self) -> bool {
        matches!(self, KmsError::Unavailable { .. })
    }
}

/// A key management service holding one key-encryption key per tenant.
#[async_trait]
pub trait Kms: Send + Sync + 'static {
    /// Short backend name for logs and metrics (`vault`, `local`).
    fn backend(&self) -> &'static str;

    /// Creates the tenant's key-encryption key, or returns the existing one's reference.
    async fn create_tenant_key(&self, tenant: &TenantId) -> Result<KeyRef, KmsError>;

    /// A fresh DEK, in plaintext for immediate use and wrapped for storage.
    async fn generate_dek(&self, ctx: DekContext<'_>) -> Result<(Dek, WrappedDek), KmsError>;

    /// Unwraps a stored DEK.
    async fn unwrap_dek(&self, ctx: DekContext<'_>, wrapped: &WrappedDek) -> Result<Dek, KmsError>;

    /// Re-encrypts a wrapped DEK under the newest KEK version without exposing it.
    async fn rewrap_dek(
        &self,
        ctx: DekContext<'_>,
        wrapped: &WrappedDek,
    ) -> Result<WrappedDek, KmsError>;

    /// Rotates the tenant's KEK; returns the new KEK version.
    async fn rotate_kek(&self, key: &KeyRef) -> Result<u32, KmsError>;

    /// Destroys the tenant's KEK (crypto-shredding): every DEK it wrapped becomes unusable.
    async fn destroy_tenant_key(&self, key: &KeyRef) -> Result<(), KmsError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrapped_dek_reports_its_kek_version() {
        assert_eq!(WrappedDek::new("vault:v3:abc").kek_version(), Some(3));
        assert_eq!(WrappedDek::new("local:v12:abc").kek_version(), Some(12));
        assert_eq!(WrappedDek::new("garbage").kek_version(), None);
    }

    #[test]
    fn only_unavailability_is_retryable() {
        let unavailable = KmsError::Unavailable {
            backend: "vault",
            reason: "connection refused".into(),
        };
        assert!(unavailable.is_retryable());
        assert!(!KmsError::Denied { backend: "vault" }.is_retryable());
    }
}
