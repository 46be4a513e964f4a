//! Build: the purge CronJob of a tenant and the NetworkPolicy of its pods, from the validated
//! policy and tenant. Pure.
//!
//! One builder per kind: [`cron_job`], [`network_policy`]. The pods are the tenant's
//! data-plane pods ([`crate::tenant::children::data_plane_pod`]: image, settings, Vault
//! login with the tenant's sync role and ServiceAccount, restricted security context) running
//! `helpr-dataplane purge --tenant <id>`.

use std::collections::BTreeMap;

use k8s_openapi::api::batch::v1::{CronJob, CronJobSpec, JobSpec, JobTemplateSpec};
use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicySpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};

use super::ValidRetentionPolicy;
use crate::settings::OperatorSettings;
use crate::tenant::ValidTenant;
use crate::tenant::children::{
    DATA_PLANE_LABEL, DataPlaneCommand, FIELD_MANAGER, TENANT_LABEL, data_plane_egress,
    data_plane_pod,
};

/// Prefix of the names of a tenant's purge CronJob and NetworkPolicy: `helpr-purge-<tenant>`.
pub const PURGE_NAME_PREFIX: &str = "helpr-purge-";

/// Longest CronJob name: the CronJob controller appends an 11-character suffix to name its
/// Jobs, which must stay within 63 characters.
pub const CRON_JOB_NAME_MAX_LEN: usize = 52;

/// Finished purge Jobs kept for `kubectl get jobs` and their logs.
pub const SUCCESSFUL_JOBS_HISTORY_LIMIT: i32 = 3;
/// Failed purge Jobs kept.
pub const FAILED_JOBS_HISTORY_LIMIT: i32 = 3;
/// A run missed by more than this (operator or control plane down) is skipped; the next one
/// catches up, since a purge removes everything that is due.
pub const STARTING_DEADLINE_SECONDS: i64 = 3600;
/// Retries of a failed purge pod within one run.
pub const BACKOFF_LIMIT: i32 = 2;
/// A purge run is stopped after this long (6 hours); the next run continues.
pub const ACTIVE_DEADLINE_SECONDS: i64 = 6 * 3600;

/// The name of `tenant`'s purge CronJob and NetworkPolicy: `helpr-purge-<tenant>`, or, for a
/// tenant id too long for a CronJob name, its first characters and a hash of the whole id.
pub fn purge_name(tenant: &str) -> String {
    let full = format!("{PURGE_NAME_PREFIX}{tenant}");
    if full.len() <= CRON_JOB_NAME_MAX_LEN {
        return full;
    }
    // FNV-1a: stable across releases (the name must not change on an upgrade).
    let mut hash: u32 = 0x811c_9dc5;
    for byte in tenant.bytes() {
        hash ^= u32::from(byte);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    let keep = CRON_JOB_NAME_MAX_LEN - PURGE_NAME_PREFIX.len() - 9;
    // Tenant ids are ASCII DNS labels, so a byte index is a character boundary.
    let head = tenant.get(..keep).unwrap_or(tenant).trim_end_matches('-');
    format!("{PURGE_NAME_PREFIX}{head}-{hash:08x}")
}

/// What the operator creates for a tenant's RetentionPolicy in its namespace.
#[derive(Debug, Clone, PartialEq)]
pub struct PurgeChildren {
    pub network_policy: NetworkPolicy,
    pub cron_job: CronJob,
}

/// Every child of `policy` for `tenant`. Pure.
pub fn build(
    policy: &ValidRetentionPolicy,
    tenant: &ValidTenant,
    settings: &OperatorSettings,
) -> PurgeChildren {
    PurgeChildren {
        network_policy: network_policy(policy, tenant, settings),
        cron_job: cron_job(policy, tenant, settings),
    }
}

/// Labels that select the tenant's purge pods (name + instance + component). They differ from
/// the sync pods' so that neither the sync Deployment nor its NetworkPolicy selects them.
pub fn selector_labels(tenant: &ValidTenant) -> BTreeMap<String, String> {
    BTreeMap::from([
        (
            "app.kubernetes.io/name".to_owned(),
            "helpr-purge".to_owned(),
        ),
        (
            "app.kubernetes.io/instance".to_owned(),
            tenant.id.as_str().to_owned(),
        ),
        ("app.kubernetes.io/component".to_owned(), "purge".to_owned()),
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

/// Labels of the purge pods: [`labels`] and [`DATA_PLANE_LABEL`], so that the chart's
/// NetworkPolicies let them reach the index, the search cluster and the database.
pub fn pod_labels(tenant: &ValidTenant) -> BTreeMap<String, String> {
    let mut labels = labels(tenant);
    labels.insert(DATA_PLANE_LABEL.0.to_owned(), DATA_PLANE_LABEL.1.to_owned());
    labels
}

fn metadata(policy: &ValidRetentionPolicy, tenant: &ValidTenant) -> ObjectMeta {
    ObjectMeta {
        name: Some(purge_name(tenant.id.as_str())),
        namespace: Some(tenant.namespace.clone()),
        labels: Some(labels(tenant)),
        owner_references: Some(vec![policy.owner.clone()]),
        ..ObjectMeta::default()
    }
}

/// Default deny for the purge pods: no ingress; egress only to DNS, the database, the KMS
/// and the search backend (the sync pods' rules without the Google APIs).
pub fn network_policy(
    policy: &ValidRetentionPolicy,
    tenant: &ValidTenant,
    settings: &OperatorSettings,
) -> NetworkPolicy {
    NetworkPolicy {
        metadata: metadata(policy, tenant),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(LabelSelector {
                match_labels: Some(selector_labels(tenant)),
                ..LabelSelector::default()
            }),
            policy_types: Some(vec!["Ingress".to_owned(), "Egress".to_owned()]),
            ingress: Some(Vec::new()),
            egress: Some(data_plane_egress(settings, false)),
        }),
    }
}

/// The purge CronJob: `helpr-dataplane purge --tenant <id>` on the policy's schedule in its
/// time zone, one run at a time, suspended while the legal hold is set.
pub fn cron_job(
    policy: &ValidRetentionPolicy,
    tenant: &ValidTenant,
    settings: &OperatorSettings,
) -> CronJob {
    let pod = data_plane_pod(
        tenant,
        settings,
        DataPlaneCommand {
            container: "purge",
            subcommand: "purge",
            restart_policy: Some("Never"),
        },
    );
    CronJob {
        metadata: metadata(policy, tenant),
        spec: CronJobSpec {
            schedule: policy.schedule.clone(),
            time_zone: Some(policy.time_zone.clone()),
            concurrency_policy: Some("Forbid".to_owned()),
            suspend: Some(policy.legal_hold),
            starting_deadline_seconds: Some(STARTING_DEADLINE_SECONDS),
            successful_jobs_history_limit: Some(SUCCESSFUL_JOBS_HISTORY_LIMIT),
            failed_jobs_history_limit: Some(FAILED_JOBS_HISTORY_LIMIT),
            job_template: JobTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels(tenant)),
                    ..ObjectMeta::default()
                }),
                spec: Some(JobSpec {
                    backoff_limit: Some(BACKOFF_LIMIT),
                    active_deadline_seconds: Some(ACTIVE_DEADLINE_SECONDS),
                    template: PodTemplateSpec {
                        metadata: Some(ObjectMeta {
                            labels: Some(pod_labels(tenant)),
                            ..ObjectMeta::default()
                        }),
                        spec: Some(pod),
                    },
                    ..JobSpec::default()
                }),
            },
        },
        ..CronJob::default()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::settings::tests::settings;
    use helpr_crds::{RetentionPolicy, Tenant};
    use k8s_openapi::api::core::v1::{Container, PodSpec};

    fn valid(policy: &RetentionPolicy, tenant: &Tenant) -> (ValidRetentionPolicy, ValidTenant) {
        (
            crate::retention::validate(policy, jiff::tz::db()).unwrap(),
            crate::tenant::validate(tenant, &settings()).unwrap(),
        )
    }

    fn children(policy: &RetentionPolicy, tenant: &Tenant) -> PurgeChildren {
        let (policy, tenant) = valid(policy, tenant);
        build(&policy, &tenant, &settings())
    }

    fn pod(c: &CronJob) -> &PodSpec {
        c.spec
            .job_template
            .spec
            .as_ref()
            .unwrap()
            .template
            .spec
            .as_ref()
            .unwrap()
    }

    fn container(c: &CronJob) -> &Container {
        &pod(c).containers[0]
    }

    fn env(c: &Container) -> Vec<(String, Option<String>)> {
        c.env
            .clone()
            .unwrap()
            .into_iter()
            .map(|e| (e.name, e.value))
            .collect()
    }

    #[test]
    fn the_cron_job_runs_purge_for_the_tenant_on_the_schedule_one_at_a_time() {
        let policy = RetentionPolicy::test("acme", "acme")
            .with_schedule("30 2 * * *", Some("Europe/Berlin"));
        let cron = children(&policy, &Tenant::test("acme")).cron_job;
        assert_eq!(cron.metadata.name.as_deref(), Some("helpr-purge-acme"));
        assert_eq!(cron.metadata.namespace.as_deref(), Some("helpr-test"));
        let spec = &cron.spec;
        assert_eq!(spec.schedule, "30 2 * * *");
        assert_eq!(spec.time_zone.as_deref(), Some("Europe/Berlin"));
        assert_eq!(spec.concurrency_policy.as_deref(), Some("Forbid"));
        assert_eq!(spec.suspend, Some(false));
        assert_eq!(spec.starting_deadline_seconds, Some(3600));
        assert_eq!(spec.successful_jobs_history_limit, Some(3));
        assert_eq!(spec.failed_jobs_history_limit, Some(3));
        let job = spec.job_template.spec.as_ref().unwrap();
        assert_eq!(job.backoff_limit, Some(2));
        assert_eq!(job.active_deadline_seconds, Some(21600));
        let c = container(&cron);
        assert_eq!(c.name, "purge");
        assert_eq!(
            c.command.as_deref(),
            Some(&["helpr-dataplane".to_owned()][..])
        );
        assert_eq!(
            c.args.as_deref(),
            Some(&["purge".to_owned(), "--tenant".to_owned(), "acme".to_owned()][..])
        );
        assert_eq!(pod(&cron).restart_policy.as_deref(), Some("Never"));
    }

    #[test]
    fn without_a_time_zone_the_cron_job_says_utc_rather_than_the_controller_managers_zone() {
        let cron = children(
            &RetentionPolicy::test("acme", "acme"),
            &Tenant::test("acme"),
        )
        .cron_job;
        let spec = cron.spec;
        assert_eq!(spec.schedule, "0 3 * * *");
        assert_eq!(spec.time_zone.as_deref(), Some("UTC"));
    }

    #[test]
    fn legal_hold_suspends_the_cron_job() {
        let policy = RetentionPolicy::test("acme", "acme").with_legal_hold(true);
        let cron = children(&policy, &Tenant::test("acme")).cron_job;
        assert_eq!(cron.spec.suspend, Some(true));
    }

    #[test]
    fn purge_pods_run_exactly_like_the_sync_workers_but_for_the_subcommand() {
        let tenant = Tenant::test("acme").with_ca_bundle("vault-ca");
        let (policy, valid_tenant) = valid(&RetentionPolicy::test("acme", "acme"), &tenant);
        let settings = settings();
        let cron = cron_job(&policy, &valid_tenant, &settings);
        let deployment = crate::tenant::children::deployment(&valid_tenant, &settings);
        let sync_pod = deployment.spec.template.spec.as_ref().unwrap();
        let sync = &sync_pod.containers[0];
        let purge_pod = pod(&cron);
        let purge = container(&cron);
        // Same image, settings, Vault login (the tenant's sync role), CA bundle, search mode.
        assert_eq!(purge.image, sync.image);
        assert_eq!(purge.image_pull_policy, sync.image_pull_policy);
        assert_eq!(env(purge), env(sync));
        assert!(env(purge).contains(&(
            "HELPR_KMS__VAULT__AUTH__ROLE".to_owned(),
            Some("helpr-sync-acme".to_owned())
        )));
        assert!(env(purge).contains(&(
            "HELPR_KMS__VAULT__CA_CERT_FILE".to_owned(),
            Some("/etc/helpr/kms-ca/ca.crt".to_owned())
        )));
        assert_eq!(purge.env_from, sync.env_from);
        assert_eq!(purge.volume_mounts, sync.volume_mounts);
        assert_eq!(purge_pod.volumes, sync_pod.volumes);
        assert_eq!(purge.resources, sync.resources);
        // Same identity and hardening.
        assert_eq!(
            purge_pod.service_account_name.as_deref(),
            Some("helpr-sync-acme")
        );
        assert_eq!(purge_pod.automount_service_account_token, Some(false));
        assert_eq!(purge_pod.security_context, sync_pod.security_context);
        assert_eq!(purge.security_context, sync.security_context);
        let sc = purge.security_context.as_ref().unwrap();
        assert_eq!(sc.run_as_non_root, Some(true));
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        assert_eq!(
            sc.capabilities.as_ref().unwrap().drop.as_deref(),
            Some(&["ALL".to_owned()][..])
        );
    }

    #[test]
    fn every_child_is_labelled_for_the_data_plane_and_owned_by_the_policy() {
        let policy = RetentionPolicy::test("acme-retention", "acme");
        let c = children(&policy, &Tenant::test("acme"));
        for meta in [&c.cron_job.metadata, &c.network_policy.metadata] {
            assert_eq!(meta.name.as_deref(), Some("helpr-purge-acme"));
            let labels = meta.labels.as_ref().unwrap();
            assert_eq!(labels["app.kubernetes.io/name"], "helpr-purge");
            assert_eq!(labels["app.kubernetes.io/instance"], "acme");
            assert_eq!(labels["app.kubernetes.io/component"], "purge");
            assert_eq!(labels["app.kubernetes.io/part-of"], "helpr");
            assert_eq!(labels["app.kubernetes.io/managed-by"], "helpr-operator");
            assert_eq!(labels[TENANT_LABEL], "acme");
            let owners = meta.owner_references.as_ref().unwrap();
            assert_eq!(owners.len(), 1);
            assert_eq!(owners[0].kind, "RetentionPolicy");
            assert_eq!(owners[0].name, "acme-retention");
            assert_eq!(Some(&owners[0].uid), policy.metadata.uid.as_ref());
            assert_eq!(owners[0].controller, Some(true));
        }
        let pod_labels = c
            .cron_job
            .spec
            .job_template
            .spec
            .as_ref()
            .unwrap()
            .template
            .metadata
            .as_ref()
            .unwrap()
            .labels
            .clone()
            .unwrap();
        // The chart's NetworkPolicies admit data-plane pods by this exact label.
        assert_eq!(pod_labels[DATA_PLANE_LABEL.0], DATA_PLANE_LABEL.1);
        // Not selected by the sync Deployment or the sync NetworkPolicy.
        let tenant = crate::tenant::validate(&Tenant::test("acme"), &settings()).unwrap();
        let sync = crate::tenant::children::selector_labels(&tenant);
        assert!(!sync.iter().all(|(k, v)| pod_labels.get(k) == Some(v)));
    }

    #[test]
    fn the_network_policy_opens_dns_database_kms_and_search_but_not_google() {
        let np = children(
            &RetentionPolicy::test("acme", "acme"),
            &Tenant::test("acme"),
        )
        .network_policy;
        let spec = np.spec.unwrap();
        assert_eq!(
            spec.pod_selector.unwrap().match_labels.unwrap()["app.kubernetes.io/name"],
            "helpr-purge"
        );
        assert_eq!(spec.ingress, Some(Vec::new()));
        let egress = spec.egress.unwrap();
        assert_eq!(egress, data_plane_egress(&settings(), false));
        // DNS, database, KMS, search; the sync pods have Google on top.
        assert_eq!(egress.len(), 4);
        assert_eq!(data_plane_egress(&settings(), true).len(), 5);
        assert!(egress.iter().all(|r| !r.to.as_ref().unwrap().is_empty()));
    }

    #[test]
    fn a_long_tenant_id_gets_a_short_stable_distinct_name() {
        assert_eq!(purge_name("acme"), "helpr-purge-acme");
        let long = "a".repeat(63);
        let name = purge_name(&long);
        assert_eq!(name.len(), CRON_JOB_NAME_MAX_LEN);
        assert!(name.starts_with("helpr-purge-aaaa"));
        assert_eq!(name, purge_name(&long));
        let other = format!("{}b", "a".repeat(62));
        assert_ne!(purge_name(&other), name);
        // The longest id that fits is kept as it is.
        let fits = "b".repeat(CRON_JOB_NAME_MAX_LEN - PURGE_NAME_PREFIX.len());
        assert_eq!(purge_name(&fits), format!("helpr-purge-{fits}"));
        // A cut that ends in a dash does not leave two in a row.
        let dashed = format!("{}-{}", "c".repeat(30), "d".repeat(32));
        let name = purge_name(&dashed);
        assert!(!name.contains("--"), "{name}");
        assert!(name.len() <= CRON_JOB_NAME_MAX_LEN);
    }
}
