//! Opt-in end-to-end suite against a real Kubernetes cluster (kind, k3d or any other):
//! installs the chart, applies examples/, waits for every object to be Ready, adds and
//! removes an InboxGrant and sees it reach the data plane, and deletes a Shred tenant.
//!
//! It runs only when `HELPR_E2E_KUBECONFIG` names a kubeconfig; otherwise each test says so
//! and passes without touching anything. README.md ("End-to-end tests on kind or k3d")
//! explains how to prepare a cluster. Settings (environment):
//!
//! - `HELPR_E2E_KUBECONFIG` (required): the cluster.
//! - `HELPR_E2E_VALUES`: a values file for the chart (image, database, KMS); default none.
//! - `HELPR_E2E_NAMESPACE` (default `helpr-system`) and `HELPR_E2E_RELEASE` (default
//!   `helpr`): where the chart goes.
//! - `HELPR_E2E_VAULT_ADDR` (required): Vault/OpenBao as the cluster reaches it (the
//!   examples' addresses are illustrative, so every example Tenant is pointed there), with
//!   `HELPR_E2E_VAULT_TOKEN` (required) put into each tenant's token Secret.
//! - `HELPR_E2E_SKIP_INSTALL=1`: use the release already installed.
//!
//! `helm` and `kubectl` must be on PATH (kubectl port-forwards the control API).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use helpr_operator::control::{ControlClient, proto};
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::{Client, Config, ResourceExt};
use serde_json::{Value, json};

const FIELD_MANAGER: &str = "helpr-e2e";
const WAIT: Duration = Duration::from_secs(300);
const VAULT_SECRET: &str = "helpr-e2e-vault-token";

struct Settings {
    kubeconfig: PathBuf,
    values: Option<PathBuf>,
    namespace: String,
    release: String,
    vault_addr: String,
    vault_token: String,
    skip_install: bool,
}

fn settings() -> Option<Settings> {
    let Some(kubeconfig) = std::env::var_os("HELPR_E2E_KUBECONFIG") else {
        eprintln!("skipped: set HELPR_E2E_KUBECONFIG to run the end-to-end suite on a cluster");
        return None;
    };
    let var = |name: &str| {
        std::env::var(name).unwrap_or_else(|_| panic!("{name} is required with HELPR_E2E_KUBECONFIG"))
    };
    Some(Settings {
        kubeconfig: PathBuf::from(kubeconfig),
        values: std::env::var_os("HELPR_E2E_VALUES").map(PathBuf::from),
        namespace: std::env::var("HELPR_E2E_NAMESPACE").unwrap_or_else(|_| "helpr-system".into()),
        release: std::env::var("HELPR_E2E_RELEASE").unwrap_or_else(|_| "helpr".into()),
        vault_addr: var("HELPR_E2E_VAULT_ADDR"),
        vault_token: var("HELPR_E2E_VAULT_TOKEN"),
        skip_install: std::env::var("HELPR_E2E_SKIP_INSTALL").is_ok_and(|v| v == "1"),
    })
}

/// The chart's `helpr.fullname` for the release (no overrides).
fn fullname(s: &Settings) -> String {
    if s.release.contains("helpr") {
        s.release.clone()
    } else {
        format!("{}-helpr", s.release)
    }
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

async fn client(s: &Settings) -> Client {
    let kubeconfig = kube::config::Kubeconfig::read_from(&s.kubeconfig).unwrap();
    let config = Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .unwrap();
    Client::try_from(config).unwrap()
}

fn helm_install(s: &Settings) {
    let mut cmd = Command::new("helm");
    cmd.env("KUBECONFIG", &s.kubeconfig)
        .args(["upgrade", "--install", &s.release])
        .arg(repo().join("charts/helpr"))
        .args(["--namespace", &s.namespace, "--create-namespace"])
        .args(["--wait", "--timeout", "10m"]);
    if let Some(values) = &s.values {
        cmd.arg("--values").arg(values);
    }
    let status = cmd.status().expect("run helm (is it on PATH?)");
    assert!(status.success(), "helm upgrade --install failed: {status}");
}

/// The documents of an examples/ file.
fn examples(file: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(repo().join("examples").join(file)).unwrap();
    text.split("\n---")
        .filter_map(|doc| {
            let value: Value = serde_norway::from_str(doc).ok()?;
            value.is_object().then_some(value)
        })
        .collect()
}

fn resource(object: &Value) -> ApiResource {
    let api_version = object["apiVersion"].as_str().unwrap();
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    let kind = object["kind"].as_str().unwrap();
    let gvk = GroupVersionKind::gvk(group, version, kind);
    ApiResource::from_gvk_with_plural(&gvk, &format!("{}s", kind.to_lowercase()))
}

async fn apply(client: &Client, object: &Value) {
    let namespace = object["metadata"]["namespace"].as_str().unwrap();
    let name = object["metadata"]["name"].as_str().unwrap();
    let api: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), namespace, &resource(object));
    api.patch(
        name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(object),
    )
    .await
    .unwrap_or_else(|e| panic!("apply {namespace}/{name}: {e}"));
}

async fn get(client: &Client, object: &Value) -> Option<DynamicObject> {
    let namespace = object["metadata"]["namespace"].as_str().unwrap();
    let name = object["metadata"]["name"].as_str().unwrap();
    let api: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), namespace, &resource(object));
    api.get_opt(name).await.unwrap()
}

async fn delete(client: &Client, object: &Value) {
    let namespace = object["metadata"]["namespace"].as_str().unwrap();
    let name = object["metadata"]["name"].as_str().unwrap();
    let api: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), namespace, &resource(object));
    match api.delete(name, &DeleteParams::default()).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 404 => {}
        Err(e) => panic!("delete {namespace}/{name}: {e}"),
    }
}

fn ready(object: &DynamicObject) -> bool {
    let generation = object.metadata.generation;
    let status = &object.data["status"];
    status["observedGeneration"].as_i64() == generation
        && status["conditions"]
            .as_array()
            .is_some_and(|cs| cs.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"))
}

async fn wait_until<F, Fut>(what: &str, mut done: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !done().await {
        assert!(start.elapsed() < WAIT, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

async fn wait_ready(client: &Client, object: &Value) {
    let what = format!(
        "{} {}/{} to be Ready",
        object["kind"], object["metadata"]["namespace"], object["metadata"]["name"]
    );
    wait_until(&what, || async { get(client, object).await.is_some_and(|o| ready(&o)) }).await;
}

/// Points an example Tenant at the test's Vault with a token Secret.
fn for_this_cluster(mut tenant: Value, s: &Settings) -> Value {
    tenant["spec"]["kms"] = json!({
        "server": s.vault_addr,
        "transitMount": "transit",
        "auth": {"tokenSecretRef": {"name": VAULT_SECRET, "key": "token"}},
    });
    tenant
}

async fn prepare_namespace(client: &Client, namespace: &str, s: &Settings) {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}});
    namespaces
        .patch(namespace, &PatchParams::apply(FIELD_MANAGER), &Patch::Apply(&ns))
        .await
        .unwrap();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let secret = json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": VAULT_SECRET, "namespace": namespace},
        "stringData": {"token": s.vault_token},
    });
    secrets
        .patch(VAULT_SECRET, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&secret))
        .await
        .unwrap();
}

/// `kubectl port-forward` to the control API; the local port and the process.
fn port_forward(s: &Settings) -> (u16, Child) {
    let mut child = Command::new("kubectl")
        .env("KUBECONFIG", &s.kubeconfig)
        .args(["--namespace", &s.namespace, "port-forward"])
        .arg(format!("service/{}-control", fullname(s)))
        .arg(":9090")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("run kubectl (is it on PATH?)");
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let line = lines.next().unwrap().unwrap();
    // "Forwarding from 127.0.0.1:41237 -> 9090"
    let port = line
        .split_whitespace()
        .nth(2)
        .and_then(|a| a.rsplit(':').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("unexpected kubectl output: {line}"));
    (port, child)
}

async fn control_client(client: &Client, s: &Settings, port: u16) -> ControlClient {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &s.namespace);
    let secret = secrets
        .get(&format!("{}-control-token", fullname(s)))
        .await
        .unwrap();
    let token = secret.data.unwrap()["token"].0.clone();
    ControlClient::connect(
        &format!("http://127.0.0.1:{port}"),
        std::str::from_utf8(&token).unwrap().trim(),
    )
    .unwrap()
}

async fn tenant_status(control: &mut ControlClient, tenant: &str) -> proto::TenantStatus {
    control.tenant_status(tenant).await.unwrap()
}

#[tokio::test]
async fn chart_examples_grants_and_a_shredded_tenant_on_a_real_cluster() {
    let Some(s) = settings() else { return };
    if !s.skip_install {
        helm_install(&s);
    }
    let client = client(&s).await;

    // examples/: Tenants (pointed at the test's Vault), Inboxes, InboxGrants, retention.
    let tenants: Vec<Value> = examples("tenants.yaml")
        .into_iter()
        .map(|t| for_this_cluster(t, &s))
        .collect();
    for tenant in &tenants {
        prepare_namespace(&client, tenant["metadata"]["namespace"].as_str().unwrap(), &s).await;
    }
    let inboxes = examples("inboxes.yaml");
    let grants = examples("inbox-grants.yaml");
    let policies = examples("retention-policies.yaml");
    for object in tenants.iter().chain(&inboxes).chain(&grants).chain(&policies) {
        apply(&client, object).await;
    }
    for object in tenants.iter().chain(&inboxes) {
        wait_ready(&client, object).await;
    }
    // RFC 3339 UTC times of one shape compare as strings.
    let now = helpr_tests::kube_fake::now_rfc3339();
    for grant in &grants {
        let unexpired = grant["spec"]["expirationTime"]
            .as_str()
            .is_none_or(|t| t > now.as_str());
        if unexpired {
            wait_ready(&client, grant).await;
        }
    }

    // A new grant reaches the data plane; removing it takes it away.
    let (port, mut forward) = port_forward(&s);
    let mut control = control_client(&client, &s, port).await;
    let inbox = &inboxes[0];
    let namespace = inbox["metadata"]["namespace"].as_str().unwrap();
    let tenant_id = inbox["spec"]["tenantRef"]["name"].as_str().unwrap();
    let before = tenant_status(&mut control, tenant_id).await.grant_count;
    let grant = json!({
        "apiVersion": "mail.helpr.dev/v1alpha1", "kind": "InboxGrant",
        "metadata": {"name": "e2e-bob", "namespace": namespace},
        "spec": {
            "inboxRef": {"name": inbox["metadata"]["name"]},
            "subject": {"kind": "Agent", "name": "bob@e2e.example"},
            "role": "Reply",
        },
    });
    apply(&client, &grant).await;
    wait_ready(&client, &grant).await;
    assert_eq!(tenant_status(&mut control, tenant_id).await.grant_count, before + 1);
    delete(&client, &grant).await;
    wait_until("the e2e grant to be gone", || async { get(&client, &grant).await.is_none() }).await;
    assert_eq!(tenant_status(&mut control, tenant_id).await.grant_count, before);

    // Deleting a Shred tenant (and its inboxes) leaves nothing of it in the data plane.
    let shred = tenants
        .iter()
        .find(|t| t["spec"]["deletionPolicy"] == "Shred")
        .expect("examples/tenants.yaml has a Shred tenant");
    let shred_id = shred["metadata"]["name"].as_str().unwrap();
    for object in grants.iter().chain(&inboxes).chain(&policies) {
        if object["metadata"]["namespace"] == shred["metadata"]["namespace"] {
            delete(&client, object).await;
        }
    }
    delete(&client, shred).await;
    wait_until("the Shred tenant to be gone", || async { get(&client, shred).await.is_none() }).await;
    assert_eq!(
        tenant_status(&mut control, shred_id).await.state(),
        proto::TenantState::Absent
    );

    let _ = forward.kill();
    let _ = forward.wait();
}
