//! `Tenant`: one customer organisation, its KMS, and how its data plane runs.

use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

use crate::conditions::{Condition, impl_status_conditions};
use crate::refs::{CaBundleSecretRef, OBJECT_NAME_PATTERN, TokenSecretRef};
use crate::validation::{self, Collector, SpecError, SpecErrors};

/// Pattern of a tenant's name: a lowercase RFC 1123 label, since the name is the tenant's id in
/// the data plane and part of its transit key's name.
pub const TENANT_NAME_PATTERN: &str = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$";

/// Pattern of a display name: no control characters, no leading or trailing whitespace.
pub const DISPLAY_NAME_PATTERN: &str =
    r"^[^\s\x00-\x1f\x7f]([^\x00-\x1f\x7f]*[^\s\x00-\x1f\x7f])?$";

/// Pattern of a Vault server URL: http(s), a host name or bracketed IPv6 address, an optional
/// port and path; no credentials, query or fragment.
pub const VAULT_SERVER_PATTERN: &str = r"^https?://([A-Za-z0-9]([-A-Za-z0-9]*[A-Za-z0-9])?(\.[A-Za-z0-9]([-A-Za-z0-9]*[A-Za-z0-9])?)*|\[[0-9A-Fa-f:.]+\])(:[0-9]{1,5})?(/[-A-Za-z0-9._~%/]*)?$";

/// Pattern of a Vault mount path or namespace: slash-separated segments, no leading slash.
pub const VAULT_PATH_PATTERN: &str = r"^[-A-Za-z0-9_.]+(/[-A-Za-z0-9_.]+)*$";

/// Pattern of a Vault role name.
pub const VAULT_ROLE_PATTERN: &str = r"^[-A-Za-z0-9_.@]+$";

/// Pattern of a resource quantity (`500m`, `1Gi`, `2`), without a sign.
pub const QUANTITY_PATTERN: &str = r"^(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$";

/// Largest number of sync worker replicas.
pub const MAX_SYNC_REPLICAS: i32 = 32;

fn default_transit_mount() -> String {
    "transit".to_owned()
}

fn default_kubernetes_mount() -> String {
    "kubernetes".to_owned()
}

fn default_replicas() -> i32 {
    1
}

/// Desired state of a Tenant: display name, KMS, deletion policy, search and sync settings.
///
/// The generated [`Tenant`] is one organisation whose shared inboxes, agents and mail are kept
/// apart from every other tenant's, encrypted under keys held in its own KMS.
// clippy's duplicated_attributes mistakes repeated `type_ = "string"` in separate
// printcolumn(...) entries for duplicates.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "mail.helpr.dev",
    version = "v1alpha1",
    kind = "Tenant",
    namespaced,
    status = "TenantStatus",
    derive = "PartialEq",
    shortname = "hvtenant",
    category = "helpr",
    doc = "A tenant of helpr vault: one organisation whose shared inboxes, agents and mail are kept apart from every other tenant's, encrypted under a key-encryption key in its own Vault or OpenBao transit engine. The name is the tenant's id in the data plane: a DNS label, unique in the cluster.",
    validation = Rule::new("self.metadata.name.size() <= 63 && self.metadata.name.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')").message("a Tenant's name must be a DNS label of at most 63 characters (it is the tenant's id in the data plane and names its transit key)"),
    printcolumn(name = "Display Name", type_ = "string", json_path = ".spec.displayName"),
    printcolumn(name = "Deletion", type_ = "string", json_path = ".spec.deletionPolicy", description = "What deleting the tenant does to its data: Retain or Shred"),
    printcolumn(name = "Ready", type_ = "string", json_path = r#".status.conditions[?(@.type=="Ready")].status"#),
    printcolumn(name = "Status", type_ = "string", json_path = r#".status.conditions[?(@.type=="Ready")].reason"#, priority = 1, description = "Reason of the Ready condition"),
    printcolumn(name = "KMS", type_ = "string", json_path = ".spec.kms.server", priority = 1),
    printcolumn(name = "Search", type_ = "string", json_path = ".spec.search.mode", priority = 1),
    printcolumn(name = "Replicas", type_ = "integer", json_path = ".spec.sync.replicas", priority = 1),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct TenantSpec {
    /// Human-readable name of the organisation, shown to agents and in audit logs.
    #[schemars(length(min = 1, max = 128), pattern(DISPLAY_NAME_PATTERN))]
    pub display_name: String,

    /// The Vault or OpenBao transit engine that holds the tenant's key-encryption key. The
    /// operator creates the key (named after the tenant) and a policy that allows only it; data
    /// encryption keys are stored wrapped by it.
    pub kms: VaultKms,

    /// What deleting the Tenant does to its data. Retain (default) removes the tenant from the
    /// data plane but keeps its transit key and ciphertext, so the data can be recovered.
    /// Shred destroys the transit key, which makes every ciphertext of the tenant unreadable at
    /// once, and then deletes the data; it cannot be undone. Deletion waits while a
    /// RetentionPolicy of the tenant has legalHold set.
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,

    /// How the tenant's mail is indexed for search.
    #[serde(default)]
    pub search: TenantSearch,

    /// The tenant's sync workers (the pods that fetch, seal and index its mail).
    #[serde(default)]
    pub sync: TenantSync,
}

/// Connection to a Vault or OpenBao server and the transit engine used as the tenant's KMS, in
/// the inline shape of cert-manager's Vault issuer and External Secrets' Vault provider.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[x_kube(validation = Rule::new("!has(self.caBundleSecretRef) || self.server.startsWith('https://')").message("caBundleSecretRef requires an https:// server"))]
#[x_kube(validation = Rule::new("(has(self.auth.kubernetes) ? 1 : 0) + (has(self.auth.tokenSecretRef) ? 1 : 0) == 1").message("exactly one of auth.kubernetes or auth.tokenSecretRef must be set").field_path(".auth"))]
#[serde(rename_all = "camelCase")]
pub struct VaultKms {
    /// Base URL of the server, e.g. `https://vault.vault.svc:8200`. No credentials, query or
    /// fragment.
    #[schemars(length(min = 1, max = 2048), pattern(VAULT_SERVER_PATTERN))]
    pub server: String,

    /// Vault Enterprise or OpenBao namespace of the transit engine and auth method; absent
    /// means the root namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256), pattern(VAULT_PATH_PATTERN))]
    pub namespace: Option<String>,

    /// Mount path of the transit secrets engine, without a leading slash.
    #[serde(default = "default_transit_mount")]
    #[schemars(length(min = 1, max = 256), pattern(VAULT_PATH_PATTERN))]
    pub transit_mount: String,

    /// PEM CA bundle that verifies the server's TLS certificate; absent means the system's trust
    /// roots. Requires an https:// server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_bundle_secret_ref: Option<CaBundleSecretRef>,

    /// How the operator and the tenant's workers authenticate: exactly one of kubernetes or
    /// tokenSecretRef.
    pub auth: VaultAuth,
}

/// How to authenticate to Vault: exactly one method.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum VaultAuth {
    /// Kubernetes auth: log in with a token of a service account in the tenant's namespace
    /// (recommended: no long-lived secret).
    Kubernetes(VaultKubernetesAuth),
    /// A Vault token read from a Secret in the tenant's namespace.
    TokenSecretRef(TokenSecretRef),
}

/// Vault's Kubernetes auth method.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VaultKubernetesAuth {
    /// Mount path of the Kubernetes auth method, without a leading slash or the auth/ prefix.
    #[serde(default = "default_kubernetes_mount")]
    #[schemars(length(min = 1, max = 256), pattern(VAULT_PATH_PATTERN))]
    pub mount_path: String,

    /// Vault role to log in as; its policy must allow the tenant's transit key and nothing else.
    #[schemars(length(min = 1, max = 256), pattern(VAULT_ROLE_PATTERN))]
    pub role: String,

    /// The service account whose token is presented; the operator requests short-lived tokens
    /// for it through the TokenRequest API.
    pub service_account_ref: ServiceAccountRef,
}

/// A service account in the tenant's namespace and the audiences of its tokens.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceAccountRef {
    /// Name of the ServiceAccount, in the tenant's namespace.
    #[schemars(length(min = 1, max = 253), pattern(OBJECT_NAME_PATTERN))]
    pub name: String,

    /// Audiences of the requested tokens; must match the Vault role's audience. Empty means
    /// vault://NAMESPACE/TENANT (cert-manager's convention).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8), inner(length(min = 1, max = 512)))]
    pub audiences: Vec<String>,
}

/// What deleting a Tenant does to its data.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
pub enum DeletionPolicy {
    /// Keep the transit key and the ciphertext (recoverable).
    #[default]
    Retain,
    /// Destroy the transit key (crypto-shredding), then delete the data.
    Shred,
}

/// Search index settings.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TenantSearch {
    /// Index engine: Tantivy (default, embedded in the index role) or Quickwit.
    #[serde(default)]
    pub backend: SearchBackend,

    /// What the index stores. Blind (default): only keyed HMACs of terms, so the index reveals
    /// nothing without the tenant's index key; exact-word search only. Plaintext: terms in the
    /// clear, which allows prefix (`invoi*`) and, with Tantivy, fuzzy (`recieve~`) search.
    /// Changing it rebuilds the index; search keeps working in the old mode meanwhile.
    #[serde(default)]
    pub mode: SearchMode,
}

/// Search index engine.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
pub enum SearchBackend {
    /// Tantivy, one index per tenant.
    #[default]
    Tantivy,
    /// Quickwit.
    Quickwit,
}

/// What the search index stores.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
pub enum SearchMode {
    /// Keyed HMACs of terms only.
    #[default]
    Blind,
    /// Terms in the clear.
    Plaintext,
}

/// Sync worker settings.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TenantSync {
    /// Number of sync worker pods. 0 pauses fetching new mail (push notifications are still
    /// queued). Workers share the job queue, so more replicas fetch more inboxes at once.
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 0, max = 32))]
    pub replicas: i32,

    /// CPU and memory of each sync worker container; absent means the chart's defaults.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<SyncResources>,
}

impl Default for TenantSync {
    fn default() -> Self {
        Self {
            replicas: default_replicas(),
            resources: None,
        }
    }
}

/// Requests and limits of a container.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SyncResources {
    /// Resources the scheduler reserves for the container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests: Option<ResourceAmounts>,
    /// Most the container may use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<ResourceAmounts>,
}

/// Amounts of CPU and memory.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ResourceAmounts {
    /// CPU, in cores or millicores (e.g. 500m, 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "quantity_schema")]
    pub cpu: Option<Quantity>,
    /// Memory, in bytes with an optional suffix (e.g. 256Mi, 1Gi).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "quantity_schema")]
    pub memory: Option<Quantity>,
}

fn quantity_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "x-kubernetes-int-or-string": true,
        "pattern": QUANTITY_PATTERN,
        "maxLength": 64,
    })
}

impl ResourceAmounts {
    fn to_map(&self) -> Option<BTreeMap<String, Quantity>> {
        let map: BTreeMap<String, Quantity> = [("cpu", &self.cpu), ("memory", &self.memory)]
            .into_iter()
            .filter_map(|(name, q)| q.clone().map(|q| (name.to_owned(), q)))
            .collect();
        (!map.is_empty()).then_some(map)
    }
}

impl SyncResources {
    /// The same amounts as a container's `resources`.
    pub fn to_resource_requirements(&self) -> ResourceRequirements {
        ResourceRequirements {
            requests: self.requests.as_ref().and_then(ResourceAmounts::to_map),
            limits: self.limits.as_ref().and_then(ResourceAmounts::to_map),
            ..Default::default()
        }
    }
}

/// Observed state of a Tenant.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TenantStatus {
    /// The metadata.generation this status was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = i64::MAX))]
    pub observed_generation: Option<i64>,

    /// Ready (summary), Reconciling and Stalled (present only while True), KMSProvisioned,
    /// DataPlaneSynced.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16), extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,

    /// Name of the tenant's transit key in the KMS, once the operator created it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub transit_key_name: Option<String>,
}

impl_status_conditions!(TenantStatus);

/// Checks a Vault server URL beyond the schema's pattern: a port in 1..=65535.
fn vault_server(field: &str, server: &str) -> Result<(), SpecError> {
    validation::length(field, server, 2048)?;
    let expected = "an http:// or https:// URL with a host, an optional port and path, and no credentials, query or fragment";
    let bad = || validation::malformed(field, server, expected);
    let rest = server
        .strip_prefix("https://")
        .or_else(|| server.strip_prefix("http://"))
        .ok_or_else(bad)?;
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    let (host, port) = if let Some(inner) = authority.strip_prefix('[') {
        let (ip, after) = inner.split_once(']').ok_or_else(bad)?;
        if ip.is_empty()
            || !ip
                .chars()
                .all(|c| c.is_ascii_hexdigit() || c == ':' || c == '.')
        {
            return Err(bad());
        }
        let port = match after {
            "" => None,
            _ => Some(after.strip_prefix(':').ok_or_else(bad)?),
        };
        (None, port)
    } else {
        match authority.split_once(':') {
            Some((host, port)) => (Some(host), Some(port)),
            None => (Some(authority), None),
        }
    };
    if let Some(host) = host {
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        };
        if !host.split('.').all(label_ok) {
            return Err(bad());
        }
    }
    if let Some(port) = port {
        let number = (1..=5)
            .contains(&port.len())
            .then(|| port.parse::<u32>().ok())
            .flatten()
            .ok_or_else(bad)?;
        if !(1..=65535).contains(&number) {
            return Err(validation::malformed(
                field,
                server,
                "a URL with a port in 1-65535",
            ));
        }
    }
    if !path
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "-._~%/".contains(c))
    {
        return Err(bad());
    }
    Ok(())
}

fn vault_path(field: &str, value: &str) -> Result<(), SpecError> {
    validation::length(field, value, 256)?;
    let segment_ok = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    };
    if value.split('/').all(segment_ok) {
        Ok(())
    } else {
        Err(validation::malformed(
            field,
            value,
            "a Vault path: segments of letters, digits, '-', '_' and '.' separated by '/', without a leading slash or the v1/auth prefix",
        ))
    }
}

/// Whether `value` is acceptable as a display name (matches [`DISPLAY_NAME_PATTERN`]).
fn is_display_name(value: &str) -> bool {
    !value.is_empty() && !value.chars().any(|c| c.is_control()) && value.trim() == value
}

impl TenantSpec {
    /// Checks the spec; see [`crate::validation`].
    pub fn validate(&self) -> Result<(), SpecErrors> {
        let mut c = Collector::default();
        c.check(validation::length(
            "spec.displayName",
            &self.display_name,
            128,
        ));
        if !self.display_name.is_empty() && !is_display_name(&self.display_name) {
            c.push(validation::malformed(
                "spec.displayName",
                &self.display_name,
                "a name without control characters or leading and trailing whitespace",
            ));
        }
        self.kms.validate_into(&mut c);
        c.check(validation::range(
            "spec.sync.replicas",
            i64::from(self.sync.replicas),
            0,
            i64::from(MAX_SYNC_REPLICAS),
        ));
        if let Some(resources) = &self.sync.resources {
            for (which, amounts) in [
                ("requests", &resources.requests),
                ("limits", &resources.limits),
            ] {
                let Some(amounts) = amounts else { continue };
                for (name, q) in [("cpu", &amounts.cpu), ("memory", &amounts.memory)] {
                    if let Some(q) = q
                        && !is_quantity(&q.0)
                    {
                        c.push(validation::malformed(
                            &format!("spec.sync.resources.{which}.{name}"),
                            &q.0,
                            "a non-negative quantity such as 500m, 2 or 256Mi",
                        ));
                    }
                }
            }
        }
        c.finish()
    }
}

impl VaultKms {
    fn validate_into(&self, c: &mut Collector) {
        c.check(vault_server("spec.kms.server", &self.server));
        if let Some(namespace) = &self.namespace {
            c.check(vault_path("spec.kms.namespace", namespace));
        }
        c.check(vault_path("spec.kms.transitMount", &self.transit_mount));
        if let Some(ca) = &self.ca_bundle_secret_ref {
            c.check(validation::object_name(
                "spec.kms.caBundleSecretRef.name",
                &ca.name,
            ));
            c.check(validation::secret_key(
                "spec.kms.caBundleSecretRef.key",
                &ca.key,
            ));
            if !self.server.starts_with("https://") {
                c.push(SpecError::NotAllowed {
                    field: "spec.kms.caBundleSecretRef".into(),
                    when: "spec.kms.server is not an https:// URL",
                });
            }
        }
        match &self.auth {
            VaultAuth::Kubernetes(k) => {
                c.check(vault_path(
                    "spec.kms.auth.kubernetes.mountPath",
                    &k.mount_path,
                ));
                c.check(validation::length(
                    "spec.kms.auth.kubernetes.role",
                    &k.role,
                    256,
                ));
                if !k.role.is_empty()
                    && !k
                        .role
                        .chars()
                        .all(|ch| ch.is_ascii_alphanumeric() || "-_.@".contains(ch))
                {
                    c.push(validation::malformed(
                        "spec.kms.auth.kubernetes.role",
                        &k.role,
                        "a Vault role name (letters, digits, '-', '_', '.' and '@')",
                    ));
                }
                let sa = &k.service_account_ref;
                c.check(validation::object_name(
                    "spec.kms.auth.kubernetes.serviceAccountRef.name",
                    &sa.name,
                ));
                if sa.audiences.len() > 8 {
                    c.push(SpecError::TooLong {
                        field: "spec.kms.auth.kubernetes.serviceAccountRef.audiences".into(),
                        len: sa.audiences.len(),
                        max: 8,
                    });
                }
                for (i, audience) in sa.audiences.iter().enumerate() {
                    c.check(validation::length(
                        &format!("spec.kms.auth.kubernetes.serviceAccountRef.audiences[{i}]"),
                        audience,
                        512,
                    ));
                }
            }
            VaultAuth::TokenSecretRef(t) => {
                c.check(validation::object_name(
                    "spec.kms.auth.tokenSecretRef.name",
                    &t.name,
                ));
                c.check(validation::secret_key(
                    "spec.kms.auth.tokenSecretRef.key",
                    &t.key,
                ));
            }
        }
    }
}

/// Whether `value` is a non-negative quantity (matches [`QUANTITY_PATTERN`]).
pub fn is_quantity(value: &str) -> bool {
    fn number(s: &str) -> usize {
        // Length of the longest prefix of the form digits[.digits] or .digits.
        let int = s.bytes().take_while(u8::is_ascii_digit).count();
        let rest = &s[int..];
        if let Some(frac) = rest.strip_prefix('.') {
            let f = frac.bytes().take_while(u8::is_ascii_digit).count();
            if int == 0 && f == 0 { 0 } else { int + 1 + f }
        } else {
            int
        }
    }
    let n = number(value);
    if n == 0 || value.len() > 64 {
        return false;
    }
    let suffix = &value[n..];
    match suffix {
        "" | "n" | "u" | "m" | "k" | "M" | "G" | "T" | "P" | "E" => true,
        "Ki" | "Mi" | "Gi" | "Ti" | "Pi" | "Ei" => true,
        _ => {
            let Some(exp) = suffix.strip_prefix(['e', 'E']) else {
                return false;
            };
            let exp = exp.strip_prefix(['+', '-']).unwrap_or(exp);
            let m = number(exp);
            m > 0 && m == exp.len()
        }
    }
}

impl Tenant {
    /// The tenant's id in the data plane and the KMS: its name.
    pub fn tenant_id(&self) -> &str {
        self.metadata.name.as_deref().unwrap_or_default()
    }

    /// Audiences for the service-account tokens presented to Vault's Kubernetes auth: the
    /// spec's list, or `vault://NAMESPACE/TENANT` when it is empty. `None` with token auth.
    pub fn vault_token_audiences(&self) -> Option<Vec<String>> {
        let VaultAuth::Kubernetes(k) = &self.spec.kms.auth else {
            return None;
        };
        if k.service_account_ref.audiences.is_empty() {
            let namespace = self.metadata.namespace.as_deref().unwrap_or("default");
            Some(vec![format!("vault://{namespace}/{}", self.tenant_id())])
        } else {
            Some(k.service_account_ref.audiences.clone())
        }
    }
}
