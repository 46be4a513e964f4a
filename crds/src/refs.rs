//! References to other objects, shared by every kind.
//!
//! All references point into the namespace of the referring object: a `somethingRef` is
//! `{name}`, a secret reference `{name, key}` with a defaulted key (cert-manager's
//! `SecretKeySelector`). There is no cross-namespace reference anywhere in this API.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Regular expression of a Kubernetes object name (DNS subdomain, RFC 1123).
pub const OBJECT_NAME_PATTERN: &str =
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$";

/// Longest Kubernetes object name.
pub const OBJECT_NAME_MAX_LEN: usize = 253;

/// Regular expression of a key in a Secret's `data`.
pub const SECRET_KEY_PATTERN: &str = r"^[-._a-zA-Z0-9]+$";

/// A reference to an object of a known kind in the same namespace.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LocalObjectRef {
    /// Name of the referenced object, in the namespace of this object.
    #[schemars(length(min = 1, max = 253), pattern(OBJECT_NAME_PATTERN))]
    pub name: String,
}

impl LocalObjectRef {
    /// A reference to the object called `name`.
    pub fn new(name: impl Into<String>) -> Self {
        Self { name: name.into() }
    }
}

/// Default key of a CA bundle in its Secret (the key cert-manager writes).
pub const DEFAULT_CA_BUNDLE_KEY: &str = "ca.crt";

/// Default key of a Vault token in its Secret.
pub const DEFAULT_TOKEN_KEY: &str = "token";

fn default_ca_bundle_key() -> String {
    DEFAULT_CA_BUNDLE_KEY.to_owned()
}

fn default_token_key() -> String {
    DEFAULT_TOKEN_KEY.to_owned()
}

/// A PEM CA bundle stored under one key of a Secret in the same namespace.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CaBundleSecretRef {
    /// Name of the Secret, in the namespace of this object.
    #[schemars(length(min = 1, max = 253), pattern(OBJECT_NAME_PATTERN))]
    pub name: String,
    /// Key of the PEM bundle in the Secret's data.
    #[serde(default = "default_ca_bundle_key")]
    #[schemars(length(min = 1, max = 253), pattern(SECRET_KEY_PATTERN))]
    pub key: String,
}

impl CaBundleSecretRef {
    /// The bundle under the default key `ca.crt` of Secret `name`.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            key: default_ca_bundle_key(),
        }
    }
}

/// A Vault token stored under one key of a Secret in the same namespace.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TokenSecretRef {
    /// Name of the Secret, in the namespace of this object.
    #[schemars(length(min = 1, max = 253), pattern(OBJECT_NAME_PATTERN))]
    pub name: String,
    /// Key of the token in the Secret's data.
    #[serde(default = "default_token_key")]
    #[schemars(length(min = 1, max = 253), pattern(SECRET_KEY_PATTERN))]
    pub key: String,
}

impl TokenSecretRef {
    /// The token under the default key `token` of Secret `name`.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            key: default_token_key(),
        }
    }
}
