//! Build: the Kubernetes children of a tenant, from the validated model. Pure.
//!
//! One builder per kind: [`service_account`], [`network_policy`], [`deployment`],
//! [`index_token_secret`].

use std::collections::BTreeMap;

use helpr_crds::tenant::SearchMode;
use helpr_dataplane::search::index_auth::{IndexScope, IndexSecret};
use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec, DeploymentStrategy};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMapVolumeSource, Container, EmptyDirVolumeSource, EnvFromSource, EnvVar,
    KeyToPath, PodSecurityContext, PodSpec, PodTemplateSpec, ProjectedVolumeSource, SeccompProfile,
    Secret, SecretEnvSource, SecretVolumeSource, SecurityContext, ServiceAccount,
    ServiceAccountTokenProjection, Volume, VolumeMount, VolumeProjection,
};
use k8s_openapi::api::networking::v1::{
    IPBlock, NetworkPolicy, NetworkPolicyEgressRule, NetworkPolicyPeer, NetworkPolicyPort,
    NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::ValidTenant;
use crate::settings::{EgressTarget, OperatorSettings};

/// The field manager of everything the operator applies.
pub const FIELD_MANAGER: &str = "helpr-operator";

/// Label naming the tenant that owns an object.
pub const TENANT_LABEL: &str = "mail.helpr.dev/tenant";

/// Label of the data plane's pods: the chart's NetworkPolicies admit only pods carrying it to
/// the index, the search cluster and the database (charts/helpr `helpr.dataPlaneLabel`).
pub const DATA_PLANE_LABEL: (&str, &str) = ("mail.helpr.dev/plane", "data");

/// UID and GID of the sync workers (distroless `nonroot`).
pub const SYNC_UID: i64 = 65532;

/// Where the sync workers' projected service-account token for Vault login is mounted.
pub const VAULT_TOKEN_DIR: &str = "/var/run/secrets/helpr/vault";
/// Where the tenant's index-role token is mounted (see [`index_token_secret`]).
pub const INDEX_TOKEN_DIR: &str = "/var/run/secrets/helpr/index";
/// Where the KMS CA bundle is mounted.
pub const KMS_CA_DIR: &str = "/etc/helpr/kms-ca";
/// Where the data plane's settings ConfigMap is mounted.
pub const CONFIG_DIR: &str = "/etc/helpr/config";

/// What the operator creates for a tenant in its namespace.
#[derive(Clone, PartialEq)]
pub struct Children {
    pub service_account: ServiceAccount,
    pub network_policy: NetworkPolicy,
    pub deployment: Deployment,
    /// The tenant's index-role token, when the operator holds the index role's secret.
    pub index_token: Option<Secret>,
}

impl std::fmt::Debug for Children {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The Secret's data is a credential: only its name.
        f.debug_struct("Children")
            .field("service_account", &self.service_account)
            .field("network_policy", &self.network_policy)
            .field("deployment", &self.deployment)
            .field(
                "index_token",
                &self.index_token.as_ref().map(|s| &s.metadata.name),
            )
            .finish()
    }
}

/// Every child of `tenant`; `index_secret` is the index role's secret when the operator
/// holds it (then `settings.index_tokens` is set and the pods mount the token). Pure.
pub fn build(
    tenant: &ValidTenant,
    settings: &OperatorSettings,
    index_secret: Option<&IndexSecret>,
) -> Children {
    Children {
        service_account: service_account(tenant),
        network_policy: network_policy(tenant, settings),
        deployment: deployment(tenant, settings),
        index_token: index_secret.map(|secret| index_token_secret(tenant, secret)),
    }
}

/// Name of the Secret holding the tenant's index-role token.
pub fn index_token_secret_name(tenant: &ValidTenant) -> String {
    format!("{}-index-token", tenant.sync_name)
}

/// The tenant's index-role token (`token`): what its sync workers and purge jobs present to
/// the index role, which serves them this tenant's index and no other (see
/// `helpr_dataplane::search::index_auth`). The same for the same secret and tenant, so
/// applying it again changes nothing.
pub fn index_token_secret(tenant: &ValidTenant, secret: &IndexSecret) -> Secret {
    let token = secret.token(&IndexScope::Tenant(tenant.id.clone()));
    Secret {
        metadata: ObjectMeta {
            name: Some(index_token_secret_name(tenant)),
            ..metadata(tenant)
        },
        type_: Some("Opaque".to_owned()),
        immutable: None,
        data: Some(BTreeMap::from([(
            "token".to_owned(),
            ByteString(token.expose().as_bytes().to_vec()),
        )])),
        ..Secret::default()
    }
}

/// Labels that select the tenant's sync pods (name + instance + component).
pub fn selector_labels(tenant: &ValidTenant) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".to_owned(), "helpr-sync".to_owned()),
        (
            "app.kubernetes.io/instance".to_owned(),
            tenant.id.as_str().to_owned(),
        ),
        ("app.kubernetes.io/component".to_owned(), "sync".to_owned()),
    ])
}

/// Every label of a child: the selector labels, part-of, managed-by and the owner label.
pub fn labels(tenant: &ValidTenant) -> BTreeMap<String, String> {
    let mut labels = selector_labels(tenant);
    labels.insert("app.kubernetes.io/part-of".to_owned(), "helpr".to_owned());
    labels.insert(
        "app.kubernetes.io/managed-by".to_owned(),
        FIELD_MANAGER.to_owned(),
    );
    labels.insert(TENANT_LABEL.to_owned(), tenant.id.as_str().to_owned());
    labels
}

/// Labels of the sync pods: [`labels`] and [`DATA_PLANE_LABEL`], so that the chart's
/// NetworkPolicies let them reach the index, the search cluster and the database.
pub fn pod_labels(tenant: &ValidTenant) -> BTreeMap<String, String> {
    let mut labels = labels(tenant);
    labels.insert(DATA_PLANE_LABEL.0.to_owned(), DATA_PLANE_LABEL.1.to_owned());
    labels
}

fn metadata(tenant: &ValidTenant) -> ObjectMeta {
    ObjectMeta {
        name: Some(tenant.sync_name.clone()),
        namespace: Some(tenant.namespace.clone()),
        labels: Some(labels(tenant)),
        owner_references: Some(vec![tenant.owner.clone()]),
        ..ObjectMeta::default()
    }
}

/// The sync workers' ServiceAccount, bound to the tenant's Vault role. No automounted API
/// token: the pods get a projected token for Vault only.
pub fn service_account(tenant: &ValidTenant) -> ServiceAccount {
    ServiceAccount {
        metadata: metadata(tenant),
        automount_service_account_token: Some(false),
        ..ServiceAccount::default()
    }
}

fn port(number: u16, protocol: &str) -> NetworkPolicyPort {
    NetworkPolicyPort {
        port: Some(IntOrString::Int(i32::from(number))),
        protocol: Some(protocol.to_owned()),
        ..NetworkPolicyPort::default()
    }
}

fn selector(labels: &BTreeMap<String, String>) -> Option<LabelSelector> {
    (!labels.is_empty()).then(|| LabelSelector {
        match_labels: Some(labels.clone()),
        ..LabelSelector::default()
    })
}

fn egress_rule(target: &EgressTarget) -> NetworkPolicyEgressRule {
    let mut peers: Vec<NetworkPolicyPeer> = target
        .cidrs
        .iter()
        .map(|cidr| NetworkPolicyPeer {
            ip_block: Some(IPBlock {
                cidr: cidr.clone(),
                except: None,
            }),
            ..NetworkPolicyPeer::default()
        })
        .collect();
    if !target.namespace_labels.is_empty() || !target.pod_labels.is_empty() {
        peers.push(NetworkPolicyPeer {
            namespace_selector: selector(&target.namespace_labels),
            pod_selector: selector(&target.pod_labels),
            ..NetworkPolicyPeer::default()
        });
    }
    let mut ports = Vec::new();
    for number in &target.ports {
        if target.udp {
            ports.push(port(*number, "UDP"));
        }
        ports.push(port(*number, "TCP"));
    }
    NetworkPolicyEgressRule {
        to: Some(peers),
        ports: Some(ports),
    }
}

/// Egress rules of the tenant's data-plane pods: DNS, the database, the KMS and the search
/// backend, plus the Google API ranges (TCP 443) when `google_apis` is set (sync talks to
/// Gmail; a purge does not).
pub fn data_plane_egress(
    settings: &OperatorSettings,
    google_apis: bool,
) -> Vec<NetworkPolicyEgressRule> {
    let network = &settings.network;
    let mut egress = vec![
        egress_rule(&network.dns),
        egress_rule(&network.database),
        egress_rule(&network.kms),
    ];
    if let Some(search) = &network.search {
        egress.push(egress_rule(search));
    }
    if google_apis && !network.google_api_cidrs.is_empty() {
        egress.push(egress_rule(&EgressTarget {
            namespace_labels: BTreeMap::new(),
            pod_labels: BTreeMap::new(),
            cidrs: network.google_api_cidrs.clone(),
            ports: vec![443],
            udp: false,
        }));
    }
    egress
}

/// Default deny for the tenant's sync pods: no ingress; egress only to DNS, the database,
/// the KMS, the search backend and the Google API ranges (TCP 443).
pub fn network_policy(tenant: &ValidTenant, settings: &OperatorSettings) -> NetworkPolicy {
    NetworkPolicy {
        metadata: metadata(tenant),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(LabelSelector {
                match_labels: Some(selector_labels(tenant)),
                ..LabelSelector::default()
            }),
            policy_types: Some(vec!["Ingress".to_owned(), "Egress".to_owned()]),
            ingress: Some(Vec::new()),
            egress: Some(data_plane_egress(settings, true)),
        }),
    }
}

fn env_var(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value: Some(value.into()),
        ..EnvVar::default()
    }
}

fn mount(name: &str, path: &str) -> VolumeMount {
    VolumeMount {
        name: name.to_owned(),
        mount_path: path.to_owned(),
        read_only: Some(true),
        ..VolumeMount::default()
    }
}

/// What differs between the tenant's data-plane pods (sync workers, purge runs): the
/// container's name, the `helpr-dataplane` subcommand and its restart policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataPlaneCommand<'a> {
    /// The container's name (`sync`, `purge`).
    pub container: &'a str,
    /// The `helpr-dataplane` subcommand; it runs with `--tenant <id>`.
    pub subcommand: &'a str,
    /// The pod's restartPolicy: `Never` for a Job; `None` for a Deployment (always `Always`).
    pub restart_policy: Option<&'a str>,
}

/// The pod of `helpr-dataplane <subcommand> --tenant <id>` for `tenant`, as every data-plane
/// pod of a tenant runs: the operator's image, the data plane's settings and env Secret, the
/// tenant's Vault (its sync role, a projected service-account token, the CA bundle) and search
/// mode, the tenant's sync ServiceAccount and resources, under the restricted Pod Security
/// Standard with a read-only root filesystem. Pure.
pub fn data_plane_pod(
    tenant: &ValidTenant,
    settings: &OperatorSettings,
    command: DataPlaneCommand<'_>,
) -> PodSpec {
    let access = &tenant.vault.access;
    let naming = &settings.vault;
    let mut env = vec![
        env_var("HELPR_KMS__BACKEND", "vault"),
        env_var("HELPR_KMS__VAULT__ADDRESS", tenant.kms.server.clone()),
        env_var("HELPR_KMS__VAULT__MOUNT", tenant.kms.transit_mount.clone()),
        env_var("HELPR_KMS__VAULT__KEY_PREFIX", naming.key_prefix.clone()),
        env_var("HELPR_KMS__VAULT__AUTH__METHOD", "kubernetes"),
        env_var("HELPR_KMS__VAULT__AUTH__MOUNT", access.auth_mount.clone()),
        env_var("HELPR_KMS__VAULT__AUTH__ROLE", access.role.clone()),
        env_var(
            "HELPR_KMS__VAULT__AUTH__TOKEN_FILE",
            format!("{VAULT_TOKEN_DIR}/token"),
        ),
        env_var(
            "HELPR_SEARCH__MODE",
            match tenant.search_mode {
                SearchMode::Blind => "blind",
                SearchMode::Plaintext => "plaintext",
            },
        ),
    ];
    let mut volumes = vec![
        Volume {
            name: "tmp".to_owned(),
            empty_dir: Some(EmptyDirVolumeSource::default()),
            ..Volume::default()
        },
        Volume {
            name: "vault-token".to_owned(),
            projected: Some(ProjectedVolumeSource {
                sources: Some(vec![VolumeProjection {
                    service_account_token: Some(ServiceAccountTokenProjection {
                        path: "token".to_owned(),
                        expiration_seconds: Some(3600),
                        audience: None,
                        ..ServiceAccountTokenProjection::default()
                    }),
                    ..VolumeProjection::default()
                }]),
                ..ProjectedVolumeSource::default()
            }),
            ..Volume::default()
        },
    ];
    let mut mounts = vec![
        VolumeMount {
            name: "tmp".to_owned(),
            mount_path: "/tmp".to_owned(),
            ..VolumeMount::default()
        },
        mount("vault-token", VAULT_TOKEN_DIR),
    ];
    if let Some(ca) = &tenant.kms.ca_bundle {
        volumes.push(Volume {
            name: "kms-ca".to_owned(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(ca.name.clone()),
                items: Some(vec![KeyToPath {
                    key: ca.key.clone(),
                    path: "ca.crt".to_owned(),
                    ..KeyToPath::default()
                }]),
                ..SecretVolumeSource::default()
            }),
            ..Volume::default()
        });
        mounts.push(mount("kms-ca", KMS_CA_DIR));
        env.push(env_var(
            "HELPR_KMS__VAULT__CA_CERT_FILE",
            format!("{KMS_CA_DIR}/ca.crt"),
        ));
    }
    if settings.index_tokens {
        volumes.push(Volume {
            name: "index-token".to_owned(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(index_token_secret_name(tenant)),
                default_mode: Some(0o400),
                items: Some(vec![KeyToPath {
                    key: "token".to_owned(),
                    path: "token".to_owned(),
                    ..KeyToPath::default()
                }]),
                ..SecretVolumeSource::default()
            }),
            ..Volume::default()
        });
        mounts.push(mount("index-token", INDEX_TOKEN_DIR));
        env.push(env_var(
            "HELPR_SEARCH__REMOTE_TOKEN_FILE",
            format!("{INDEX_TOKEN_DIR}/token"),
        ));
    }
    if let Some(config_map) = &settings.data_plane_config_map {
        volumes.push(Volume {
            name: "config".to_owned(),
            config_map: Some(ConfigMapVolumeSource {
                name: config_map.clone(),
                ..ConfigMapVolumeSource::default()
            }),
            ..Volume::default()
        });
        mounts.push(mount("config", CONFIG_DIR));
        env.push(env_var("HELPR_CONFIG", format!("{CONFIG_DIR}/helpr.toml")));
    }
    let env_from = settings.data_plane_env_secret.as_ref().map(|secret| {
        vec![EnvFromSource {
            secret_ref: Some(SecretEnvSource {
                name: secret.clone(),
                optional: Some(false),
            }),
            ..EnvFromSource::default()
        }]
    });
    let container = Container {
        name: command.container.to_owned(),
        image: Some(settings.sync_image.clone()),
        image_pull_policy: settings.image_pull_policy.clone(),
        command: Some(vec!["helpr-dataplane".to_owned()]),
        args: Some(vec![
            command.subcommand.to_owned(),
            "--tenant".to_owned(),
            tenant.id.as_str().to_owned(),
        ]),
        env: Some(env),
        env_from,
        resources: Some(tenant.sync.resources.clone()),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            run_as_non_root: Some(true),
            run_as_user: Some(SYNC_UID),
            run_as_group: Some(SYNC_UID),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".to_owned()]),
                add: None,
            }),
            seccomp_profile: Some(runtime_default()),
            ..SecurityContext::default()
        }),
        volume_mounts: Some(mounts),
        ..Container::default()
    };
    PodSpec {
        service_account_name: Some(tenant.sync_name.clone()),
        automount_service_account_token: Some(false),
        enable_service_links: Some(false),
        restart_policy: command.restart_policy.map(str::to_owned),
        security_context: Some(PodSecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(SYNC_UID),
            run_as_group: Some(SYNC_UID),
            fs_group: Some(SYNC_UID),
            seccomp_profile: Some(runtime_default()),
            ..PodSecurityContext::default()
        }),
        containers: vec![container],
        volumes: Some(volumes),
        ..PodSpec::default()
    }
}

/// The sync workers: `helpr-dataplane sync --tenant <id>` under the restricted Pod Security
/// Standard, logging in to Vault with the tenant's sync role (see [`data_plane_pod`]).
pub fn deployment(tenant: &ValidTenant, settings: &OperatorSettings) -> Deployment {
    let pod = data_plane_pod(
        tenant,
        settings,
        DataPlaneCommand {
            container: "sync",
            subcommand: "sync",
            restart_policy: None,
        },
    );
    Deployment {
        metadata: metadata(tenant),
        spec: DeploymentSpec {
            replicas: Some(tenant.sync.replicas),
            selector: LabelSelector {
                match_labels: Some(selector_labels(tenant)),
                ..LabelSelector::default()
            },
            strategy: Some(DeploymentStrategy {
                type_: Some("RollingUpdate".to_owned()),
                ..DeploymentStrategy::default()
            }),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels(tenant)),
                    ..ObjectMeta::default()
                }),
                spec: Some(pod),
            },
            ..DeploymentSpec::default()
        },
        ..Deployment::default()
    }
}

fn runtime_default() -> SeccompProfile {
    SeccompProfile {
        type_: "RuntimeDefault".to_owned(),
        localhost_profile: None,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::settings::tests::settings;
    use crate::tenant::validate;
    use helpr_crds::Tenant;
    use helpr_crds::tenant::{ResourceAmounts, SyncResources};
    use helpr_crds::testing::Fixture;
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

    fn children(tenant: &Tenant) -> Children {
        let settings = settings();
        build(&validate(tenant, &settings).unwrap(), &settings, None)
    }

    fn container(d: &Deployment) -> &Container {
        &d.spec.template.spec.as_ref().unwrap().containers[0]
    }

    fn env_value<'a>(c: &'a Container, name: &str) -> Option<&'a str> {
        c.env
            .as_ref()
            .unwrap()
            .iter()
            .find(|e| e.name == name)
            .and_then(|e| e.value.as_deref())
    }

    /// With the index role's secret, each tenant gets a token for itself alone, in a Secret
    /// its pods mount; the same on every reconcile, and never in `Debug`.
    #[test]
    fn each_tenant_gets_an_index_token_for_itself_alone() {
        let secret = IndexSecret::new(b"the index role's secret, at least 32 bytes long");
        let mut settings = settings();
        settings.index_tokens = true;
        let acme = validate(&Tenant::test("acme"), &settings).unwrap();
        let c = build(&acme, &settings, Some(&secret));
        let token = c.index_token.as_ref().unwrap();
        assert_eq!(
            token.metadata.name.as_deref(),
            Some(format!("{}-index-token", acme.sync_name).as_str())
        );
        assert_eq!(
            token.metadata.namespace.as_deref(),
            Some(acme.namespace.as_str())
        );
        assert_eq!(token.metadata.owner_references.as_ref().unwrap().len(), 1);
        let bytes = &token.data.as_ref().unwrap()["token"].0;
        assert_eq!(
            secret.verify(bytes),
            Some(IndexScope::Tenant(acme.id.clone()))
        );
        assert_eq!(
            build(&acme, &settings, Some(&secret)).index_token.as_ref(),
            Some(token)
        );
        let text = std::str::from_utf8(bytes).unwrap();
        assert!(!format!("{c:?}").contains(text));
        // The sync pods mount it and point the data plane at it.
        let pod = c.deployment.spec.template.spec.as_ref().unwrap();
        let volume = pod
            .volumes
            .as_ref()
            .unwrap()
            .iter()
            .find(|v| v.name == "index-token")
            .unwrap();
        let source = volume.secret.as_ref().unwrap();
        assert_eq!(source.secret_name, token.metadata.name);
        assert_eq!(source.default_mode, Some(0o400));
        let sync = container(&c.deployment);
        assert!(
            sync.volume_mounts
                .as_ref()
                .unwrap()
                .iter()
                .any(|m| m.name == "index-token"
                    && m.mount_path == INDEX_TOKEN_DIR
                    && m.read_only == Some(true))
        );
        assert_eq!(
            env_value(sync, "HELPR_SEARCH__REMOTE_TOKEN_FILE"),
            Some("/var/run/secrets/helpr/index/token")
        );
        // Another tenant's token is another.
        let globex = validate(&Tenant::test("globex"), &settings).unwrap();
        let other = build(&globex, &settings, Some(&secret))
            .index_token
            .unwrap();
        assert_eq!(
            secret.verify(&other.data.unwrap()["token"].0),
            Some(IndexScope::Tenant(globex.id.clone()))
        );
        // Without the secret: no Secret, no mount.
        let plain = children(&Tenant::test("acme"));
        assert!(plain.index_token.is_none());
        assert_eq!(
            env_value(
                container(&plain.deployment),
                "HELPR_SEARCH__REMOTE_TOKEN_FILE"
            ),
            None
        );
    }

    #[test]
    fn every_child_is_named_labelled_and_owned_by_the_tenant() {
        let tenant = Tenant::test("acme");
        let c = children(&tenant);
        for meta in [
            &c.service_account.metadata,
            &c.network_policy.metadata,
            &c.deployment.metadata,
        ] {
            assert_eq!(meta.name.as_deref(), Some("helpr-sync-acme"));
            assert_eq!(meta.namespace.as_deref(), Some("helpr-test"));
            let labels = meta.labels.as_ref().unwrap();
            assert_eq!(labels["app.kubernetes.io/name"], "helpr-sync");
            assert_eq!(labels["app.kubernetes.io/instance"], "acme");
            assert_eq!(labels["app.kubernetes.io/component"], "sync");
            assert_eq!(labels["app.kubernetes.io/part-of"], "helpr");
            assert_eq!(labels["app.kubernetes.io/managed-by"], "helpr-operator");
            assert_eq!(labels[TENANT_LABEL], "acme");
            let owners = meta.owner_references.as_ref().unwrap();
            assert_eq!(owners.len(), 1);
            assert_eq!(owners[0].kind, "Tenant");
            assert_eq!(owners[0].api_version, "mail.helpr.dev/v1alpha1");
            assert_eq!(owners[0].name, "acme");
            assert_eq!(Some(&owners[0].uid), tenant.metadata.uid.as_ref());
            assert_eq!(owners[0].controller, Some(true));
        }
        assert_eq!(
            c.service_account.automount_service_account_token,
            Some(false)
        );
    }

    #[test]
    fn network_policy_denies_ingress_and_allows_only_the_configured_egress() {
        let np = children(&Tenant::test("acme")).network_policy;
        let spec = np.spec.unwrap();
        assert_eq!(
            spec.policy_types.as_deref(),
            Some(&["Ingress".to_owned(), "Egress".to_owned()][..])
        );
        assert_eq!(spec.ingress, Some(Vec::new()));
        assert_eq!(
            spec.pod_selector.unwrap().match_labels.unwrap()["app.kubernetes.io/instance"],
            "acme"
        );
        let egress = spec.egress.unwrap();
        // DNS, database, KMS, search, Google.
        assert_eq!(egress.len(), 5);
        let dns = &egress[0];
        let dns_peer = &dns.to.as_ref().unwrap()[0];
        assert_eq!(
            dns_peer
                .namespace_selector
                .as_ref()
                .unwrap()
                .match_labels
                .as_ref()
                .unwrap()["kubernetes.io/metadata.name"],
            "kube-system"
        );
        assert_eq!(
            dns_peer
                .pod_selector
                .as_ref()
                .unwrap()
                .match_labels
                .as_ref()
                .unwrap()["k8s-app"],
            "kube-dns"
        );
        let dns_ports: Vec<_> = dns
            .ports
            .as_ref()
            .unwrap()
            .iter()
            .map(|p| (p.port.clone(), p.protocol.clone().unwrap()))
            .collect();
        assert_eq!(
            dns_ports,
            vec![
                (Some(IntOrString::Int(53)), "UDP".to_owned()),
                (Some(IntOrString::Int(53)), "TCP".to_owned())
            ]
        );
        let db = &egress[1];
        assert_eq!(
            db.to.as_ref().unwrap()[0].ip_block.as_ref().unwrap().cidr,
            "10.20.0.0/16"
        );
        assert_eq!(
            db.ports.as_ref().unwrap()[0].port,
            Some(IntOrString::Int(5432))
        );
        assert_eq!(
            egress[2].ports.as_ref().unwrap()[0].port,
            Some(IntOrString::Int(8200))
        );
        assert_eq!(
            egress[3].ports.as_ref().unwrap()[0].port,
            Some(IntOrString::Int(7281))
        );
        let google = &egress[4];
        let cidrs: Vec<_> = google
            .to
            .as_ref()
            .unwrap()
            .iter()
            .map(|p| p.ip_block.as_ref().unwrap().cidr.as_str())
            .collect();
        assert_eq!(cidrs, ["142.250.0.0/15", "2a00:1450::/32"]);
        let google_ports = google.ports.as_ref().unwrap();
        assert_eq!(google_ports.len(), 1);
        assert_eq!(google_ports[0].port, Some(IntOrString::Int(443)));
        assert_eq!(google_ports[0].protocol.as_deref(), Some("TCP"));
        // No rule has an empty peer list (which would mean "anywhere").
        assert!(egress.iter().all(|r| !r.to.as_ref().unwrap().is_empty()));
    }

    #[test]
    fn without_search_or_google_ranges_no_rule_opens_them() {
        let mut s = settings();
        s.network.search = None;
        s.network.google_api_cidrs.clear();
        let np = network_policy(&validate(&Tenant::test("acme"), &s).unwrap(), &s);
        assert_eq!(np.spec.unwrap().egress.unwrap().len(), 3);
    }

    #[test]
    fn deployment_runs_sync_for_the_tenant_under_the_restricted_profile() {
        let d = children(&Tenant::test("acme").with_replicas(3)).deployment;
        let spec = &d.spec;
        assert_eq!(spec.replicas, Some(3));
        assert_eq!(
            spec.selector.match_labels.as_ref().unwrap(),
            &selector_labels(&validate(&Tenant::test("acme"), &settings()).unwrap())
        );
        let pod_labels = spec
            .template
            .metadata
            .as_ref()
            .unwrap()
            .labels
            .as_ref()
            .unwrap();
        // The chart's NetworkPolicies admit data-plane pods by this exact label.
        assert_eq!(pod_labels["mail.helpr.dev/plane"], "data");
        assert_eq!(pod_labels["app.kubernetes.io/instance"], "acme");
        assert_eq!(pod_labels[TENANT_LABEL], "acme");
        let pod = spec.template.spec.as_ref().unwrap();
        assert_eq!(pod.service_account_name.as_deref(), Some("helpr-sync-acme"));
        assert_eq!(pod.automount_service_account_token, Some(false));
        let psc = pod.security_context.as_ref().unwrap();
        assert_eq!(psc.run_as_non_root, Some(true));
        assert_eq!(psc.run_as_user, Some(65532));
        assert_eq!(
            psc.seccomp_profile.as_ref().unwrap().type_,
            "RuntimeDefault"
        );
        let c = container(&d);
        assert_eq!(c.image.as_deref(), Some("ghcr.io/helpr/helpr:0.1.0"));
        assert_eq!(
            c.command.as_deref(),
            Some(&["helpr-dataplane".to_owned()][..])
        );
        assert_eq!(
            c.args.as_deref(),
            Some(&["sync".to_owned(), "--tenant".to_owned(), "acme".to_owned()][..])
        );
        let sc = c.security_context.as_ref().unwrap();
        assert_eq!(sc.run_as_non_root, Some(true));
        assert_eq!(sc.run_as_user, Some(65532));
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        assert_eq!(
            sc.capabilities.as_ref().unwrap().drop.as_deref(),
            Some(&["ALL".to_owned()][..])
        );
        assert_eq!(sc.seccomp_profile.as_ref().unwrap().type_, "RuntimeDefault");
    }

    #[test]
    fn deployment_logs_in_to_vault_with_the_plans_sync_role_not_the_operators() {
        let d = children(&Tenant::test("acme")).deployment;
        let c = container(&d);
        assert_eq!(env_value(c, "HELPR_KMS__BACKEND"), Some("vault"));
        assert_eq!(
            env_value(c, "HELPR_KMS__VAULT__ADDRESS"),
            Some("https://vault.vault.svc:8200")
        );
        assert_eq!(
            env_value(c, "HELPR_KMS__VAULT__AUTH__METHOD"),
            Some("kubernetes")
        );
        assert_eq!(
            env_value(c, "HELPR_KMS__VAULT__AUTH__ROLE"),
            Some("helpr-sync-acme")
        );
        assert_eq!(
            env_value(c, "HELPR_KMS__VAULT__AUTH__MOUNT"),
            Some("kubernetes")
        );
        assert_eq!(
            env_value(c, "HELPR_KMS__VAULT__AUTH__TOKEN_FILE"),
            Some("/var/run/secrets/helpr/vault/token")
        );
        assert_eq!(
            env_value(c, "HELPR_KMS__VAULT__KEY_PREFIX"),
            Some("helpr-tenant-")
        );
        assert_eq!(
            env_value(c, "HELPR_CONFIG"),
            Some("/etc/helpr/config/helpr.toml")
        );
        assert_eq!(env_value(c, "HELPR_KMS__VAULT__CA_CERT_FILE"), None);
        // The operator's own Vault role (the spec's) never reaches the pods.
        assert!(
            c.env
                .as_ref()
                .unwrap()
                .iter()
                .all(|e| e.value.as_deref() != Some("helpr-acme"))
        );
        let volumes = d.spec.template.spec.unwrap().volumes.unwrap();
        let token = volumes.iter().find(|v| v.name == "vault-token").unwrap();
        let projection = &token.projected.as_ref().unwrap().sources.as_ref().unwrap()[0];
        assert_eq!(
            projection
                .service_account_token
                .as_ref()
                .unwrap()
                .expiration_seconds,
            Some(3600)
        );
    }

    #[test]
    fn a_ca_bundle_is_mounted_from_its_secret_and_passed_to_the_vault_client() {
        let d = children(&Tenant::test("acme").with_ca_bundle("vault-ca")).deployment;
        assert_eq!(
            env_value(container(&d), "HELPR_KMS__VAULT__CA_CERT_FILE"),
            Some("/etc/helpr/kms-ca/ca.crt")
        );
        let volumes = d.spec.template.spec.unwrap().volumes.unwrap();
        let ca = volumes.iter().find(|v| v.name == "kms-ca").unwrap();
        let secret = ca.secret.as_ref().unwrap();
        assert_eq!(secret.secret_name.as_deref(), Some("vault-ca"));
        assert_eq!(secret.items.as_ref().unwrap()[0].key, "ca.crt");
    }

    #[test]
    fn resources_come_from_the_tenant_or_the_defaults() {
        let mut tenant = Tenant::test("acme");
        tenant.spec.sync.resources = Some(SyncResources {
            requests: Some(ResourceAmounts {
                cpu: Some(Quantity("250m".to_owned())),
                memory: None,
            }),
            limits: Some(ResourceAmounts {
                cpu: None,
                memory: Some(Quantity("1Gi".to_owned())),
            }),
        });
        let d = children(&tenant).deployment;
        let r = container(&d).resources.clone().unwrap();
        assert_eq!(r.requests.unwrap()["cpu"], Quantity("250m".to_owned()));
        assert_eq!(r.limits.unwrap()["memory"], Quantity("1Gi".to_owned()));
        let d = children(&Tenant::test("acme")).deployment;
        assert_eq!(
            container(&d).resources.clone().unwrap(),
            crate::tenant::model::default_sync_resources()
        );
    }

    #[test]
    fn replicas_zero_pauses_the_workers_but_keeps_the_deployment() {
        let d = children(&Tenant::test("acme").with_replicas(0).with_generation(2)).deployment;
        assert_eq!(d.spec.replicas, Some(0));
    }
}
