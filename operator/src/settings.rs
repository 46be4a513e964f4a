//! The operator's own settings (chart values, read from a YAML file at startup).
//!
//! They say what the operator cannot learn from a Tenant: the image of the sync workers,
//! how Vault objects are named, where the data plane's dependencies live on the network
//! (for the tenants' NetworkPolicies) and how to reach the control API.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;

use serde::Deserialize;

use crate::vault::VaultNaming;

/// Everything the Tenant controller needs besides the Tenant itself.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OperatorSettings {
    /// Image of the sync workers (runs `helpr-dataplane sync --tenant <id>`).
    pub sync_image: String,
    /// `imagePullPolicy` of the sync workers; absent means the cluster default.
    #[serde(default)]
    pub image_pull_policy: Option<String>,
    /// ConfigMap, in the tenant's namespace, holding the data plane's `helpr.toml`
    /// (mounted at `/etc/helpr/config`); absent means environment variables only.
    #[serde(default)]
    pub data_plane_config_map: Option<String>,
    /// Secret, in the tenant's namespace, whose keys become the sync workers' environment
    /// (e.g. `HELPR_DATABASE__URL`); absent means none.
    #[serde(default)]
    pub data_plane_env_secret: Option<String>,
    /// How the operator names what it creates in Vault.
    #[serde(default)]
    pub vault: VaultNamingSettings,
    /// Where the sync workers may connect to.
    pub network: NetworkSettings,
    /// The push audiences the data plane's ingest endpoint accepts (`push.audience` and
    /// `push.additional_audiences`): an Inbox naming another `spec.pubSub.pushAudience`
    /// is reported instead of having every push refused. Empty: not checked.
    #[serde(default)]
    pub push_audiences: Vec<String>,
    /// Whether the operator holds the index role's secret (`--index-secret-file`, not a
    /// setting): then it writes each tenant an index-role token Secret that the tenant's
    /// data-plane pods mount.
    #[serde(skip)]
    pub index_tokens: bool,
}

/// [`VaultNaming`] as chart values.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct VaultNamingSettings {
    /// Transit key name prefix; must match the data plane's `kms.vault.key_prefix`.
    pub key_prefix: String,
    /// Prefix of the per-tenant policy and role names.
    pub access_prefix: String,
    /// Mount path of the Kubernetes auth method the sync workers log in with.
    pub auth_mount: String,
    /// Lifetime of the Vault tokens the sync role issues (`1h`, `15m`).
    pub token_ttl: String,
}

impl Default for VaultNamingSettings {
    fn default() -> Self {
        let naming = VaultNaming::default();
        Self {
            key_prefix: naming.key_prefix,
            access_prefix: naming.access_prefix,
            auth_mount: naming.auth_mount,
            token_ttl: naming.token_ttl,
        }
    }
}

impl VaultNamingSettings {
    /// The naming the vault module takes.
    pub fn naming(&self) -> VaultNaming {
        VaultNaming {
            key_prefix: self.key_prefix.clone(),
            access_prefix: self.access_prefix.clone(),
            auth_mount: self.auth_mount.clone(),
            token_ttl: self.token_ttl.clone(),
        }
    }
}

/// Egress allowed to the sync workers (everything else is denied).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NetworkSettings {
    /// The cluster DNS.
    #[serde(default)]
    pub dns: EgressTarget,
    /// The data plane's database.
    pub database: EgressTarget,
    /// The tenants' Vault/OpenBao.
    pub kms: EgressTarget,
    /// The search backend (index role or Quickwit); absent when sync does not index.
    #[serde(default)]
    pub search: Option<EgressTarget>,
    /// CIDRs of the Google APIs (Gmail, OAuth), reached on TCP 443.
    #[serde(default)]
    pub google_api_cidrs: Vec<String>,
}

/// Some peers and the TCP (and, for DNS, UDP) ports allowed to them.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EgressTarget {
    /// Labels of the peer namespaces (`kubernetes.io/metadata.name: vault`); with
    /// `podLabels` both must match.
    #[serde(default)]
    pub namespace_labels: BTreeMap<String, String>,
    /// Labels of the peer pods.
    #[serde(default)]
    pub pod_labels: BTreeMap<String, String>,
    /// Peer address ranges, for peers outside the cluster.
    #[serde(default)]
    pub cidrs: Vec<String>,
    /// TCP ports.
    pub ports: Vec<u16>,
    /// Whether the ports are open for UDP too (DNS).
    #[serde(default)]
    pub udp: bool,
}

impl Default for EgressTarget {
    /// The cluster DNS: `kube-system/kube-dns` on port 53, UDP and TCP.
    fn default() -> Self {
        Self {
            namespace_labels: BTreeMap::from([(
                "kubernetes.io/metadata.name".to_owned(),
                "kube-system".to_owned(),
            )]),
            pod_labels: BTreeMap::from([("k8s-app".to_owned(), "kube-dns".to_owned())]),
            cidrs: Vec::new(),
            ports: vec![53],
            udp: true,
        }
    }
}

/// Why the settings cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("read operator settings {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("parse operator settings {path}")]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_norway::Error,
    },
    #[error("operator setting {field} is invalid: {reason}")]
    Invalid { field: String, reason: String },
}

impl OperatorSettings {
    /// Reads and checks the settings file.
    pub fn load(path: &std::path::Path) -> Result<Self, SettingsError> {
        let text = std::fs::read_to_string(path).map_err(|source| SettingsError::Read {
            path: path.to_owned(),
            source,
        })?;
        let settings: Self =
            serde_norway::from_str(&text).map_err(|source| SettingsError::Parse {
                path: path.to_owned(),
                source,
            })?;
        settings.check()?;
        Ok(settings)
    }

    /// Checks what serde cannot: non-empty image, CIDRs, targets with a peer and a port.
    pub fn check(&self) -> Result<(), SettingsError> {
        let invalid = |field: &str, reason: &str| SettingsError::Invalid {
            field: field.to_owned(),
            reason: reason.to_owned(),
        };
        if self.sync_image.trim().is_empty() {
            return Err(invalid("syncImage", "must not be empty"));
        }
        let mut targets = vec![
            ("network.dns", &self.network.dns),
            ("network.database", &self.network.database),
            ("network.kms", &self.network.kms),
        ];
        if let Some(search) = &self.network.search {
            targets.push(("network.search", search));
        }
        for (field, target) in targets {
            if target.ports.is_empty() || target.ports.contains(&0) {
                return Err(invalid(field, "needs at least one port in 1-65535"));
            }
            if target.cidrs.is_empty()
                && target.namespace_labels.is_empty()
                && target.pod_labels.is_empty()
            {
                return Err(invalid(
                    field,
                    "needs cidrs, namespaceLabels or podLabels (an empty peer would allow everything)",
                ));
            }
            for cidr in &target.cidrs {
                if !is_cidr(cidr) {
                    return Err(invalid(field, "cidrs must be address/prefix ranges"));
                }
            }
        }
        for cidr in &self.network.google_api_cidrs {
            if !is_cidr(cidr) {
                return Err(invalid(
                    "network.googleApiCidrs",
                    "must be address/prefix ranges",
                ));
            }
        }
        Ok(())
    }
}

/// Whether `value` is `address/prefix` with a prefix that fits the address family.
pub fn is_cidr(value: &str) -> bool {
    let Some((addr, prefix)) = value.split_once('/') else {
        return false;
    };
    let (Ok(addr), Ok(prefix)) = (addr.parse::<IpAddr>(), prefix.parse::<u8>()) else {
        return false;
    };
    match addr {
        IpAddr::V4(_) => prefix <= 32,
        IpAddr::V6(_) => prefix <= 128,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// Settings as the chart's defaults would give them, with every target set.
    pub(crate) fn settings() -> OperatorSettings {
        let pods = |ns: &str, app: &str, port: u16| EgressTarget {
            namespace_labels: BTreeMap::from([(
                "kubernetes.io/metadata.name".to_owned(),
                ns.to_owned(),
            )]),
            pod_labels: BTreeMap::from([("app.kubernetes.io/name".to_owned(), app.to_owned())]),
            cidrs: Vec::new(),
            ports: vec![port],
            udp: false,
        };
        OperatorSettings {
            sync_image: "ghcr.io/helpr/helpr:0.1.0".to_owned(),
            image_pull_policy: Some("IfNotPresent".to_owned()),
            data_plane_config_map: Some("helpr-dataplane".to_owned()),
            data_plane_env_secret: Some("helpr-dataplane-env".to_owned()),
            vault: VaultNamingSettings::default(),
            network: NetworkSettings {
                dns: EgressTarget::default(),
                database: EgressTarget {
                    cidrs: vec!["10.20.0.0/16".to_owned()],
                    namespace_labels: BTreeMap::new(),
                    pod_labels: BTreeMap::new(),
                    ports: vec![5432],
                    udp: false,
                },
                kms: pods("vault", "openbao", 8200),
                search: Some(pods("helpr", "helpr-index", 7281)),
                google_api_cidrs: vec!["142.250.0.0/15".to_owned(), "2a00:1450::/32".to_owned()],
            },
            push_audiences: Vec::new(),
            index_tokens: false,
        }
    }

    #[test]
    fn settings_parse_from_yaml_and_default_dns_to_kube_dns() {
        let yaml = r#"
syncImage: ghcr.io/helpr/helpr:0.1.0
network:
  database: { cidrs: ["10.20.0.0/16"], ports: [5432] }
  kms: { namespaceLabels: { kubernetes.io/metadata.name: vault }, ports: [8200] }
  googleApiCidrs: ["142.250.0.0/15"]
"#;
        let settings: OperatorSettings = serde_norway::from_str(yaml).unwrap();
        settings.check().unwrap();
        assert_eq!(settings.network.dns, EgressTarget::default());
        assert_eq!(settings.vault.key_prefix, "helpr-tenant-");
        assert!(settings.network.search.is_none());
        assert!(
            settings.push_audiences.is_empty(),
            "not checked unless given"
        );
        let with: OperatorSettings = serde_norway::from_str(&format!(
            "{yaml}pushAudiences: [https://mail.example.com/v1/push/gmail]\n"
        ))
        .unwrap();
        assert_eq!(
            with.push_audiences,
            ["https://mail.example.com/v1/push/gmail"]
        );
    }

    #[test]
    fn settings_check_rejects_a_peerless_target_and_bad_cidrs() {
        let mut s = settings();
        s.network.kms.namespace_labels.clear();
        s.network.kms.pod_labels.clear();
        assert!(
            matches!(s.check(), Err(SettingsError::Invalid { field, .. }) if field == "network.kms")
        );
        let mut s = settings();
        s.network.google_api_cidrs.push("10.0.0.0/33".to_owned());
        assert!(s.check().is_err());
        assert!(is_cidr("2a00:1450::/32"));
        assert!(!is_cidr("example.com/8"));
        assert!(settings().check().is_ok());
    }
}
