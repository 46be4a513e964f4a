//! The real `helpr-operator` binary running against [`FakeApiServer`], a real OpenBao dev
//! server and the real control API (tonic server over PostgreSQL, a local KMS and a
//! tantivy index): the whole operator loop without a Kubernetes cluster.
//!
//! Used by the operator's fake-cluster tests and by its scale benchmark, which pass the
//! binary's path (`env!("CARGO_BIN_EXE_helpr-operator")`).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use helpr_dataplane::control::{ControlService, ControlToken, serve};
use helpr_dataplane::keyring::{Keyring, KeyringConfig};
use helpr_dataplane::kms::Kms;
use helpr_dataplane::kms::local::LocalKms;
use helpr_dataplane::search::{TantivyConfig, TantivyIndex};
use helpr_dataplane::store::{PgStore, Store};
use serde_json::{Value, json};

use crate::kube_fake::FakeApiServer;
use crate::openbao::OpenBao;
use crate::postgres::TestDatabase;

/// Collections (`<group>/<version>/<plural>`) of the helpr kinds.
pub const TENANTS: &str = "mail.helpr.dev/v1alpha1/tenants";
/// See [`TENANTS`].
pub const INBOXES: &str = "mail.helpr.dev/v1alpha1/inboxes";
/// See [`TENANTS`].
pub const GRANTS: &str = "mail.helpr.dev/v1alpha1/inboxgrants";
/// See [`TENANTS`].
pub const RETENTION_POLICIES: &str = "mail.helpr.dev/v1alpha1/retentionpolicies";
/// Core Secrets.
pub const SECRETS: &str = "/v1/secrets";
/// The Vault token Secret every tenant of [`OperatorEnv::tenant`] names.
pub const VAULT_SECRET: &str = "vault-token";

/// Operator settings for the environment (YAML, as the chart writes them).
const SETTINGS: &str = r#"
syncImage: ghcr.io/helpr/helpr:test
imagePullPolicy: IfNotPresent
network:
  database: { cidrs: ["10.20.0.0/16"], ports: [5432] }
  kms: { cidrs: ["10.30.0.0/16"], ports: [8200] }
  googleApiCidrs: ["142.250.0.0/15"]
"#;

/// Everything around one running operator.
pub struct OperatorEnv {
    /// The fake apiserver the operator talks to.
    pub api: FakeApiServer,
    /// The real OpenBao the tenants' keys live in.
    pub bao: OpenBao,
    /// The data plane's store behind the control API.
    pub store: Arc<dyn Store>,
    /// Address of the operator's /healthz, /readyz, /metrics.
    pub http: String,
    child: Child,
    log: PathBuf,
    stop_control: Option<tokio::sync::oneshot::Sender<()>>,
    control: Option<tokio::task::JoinHandle<()>>,
    _db: TestDatabase,
    dir: tempfile::TempDir,
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

impl OperatorEnv {
    /// Starts OpenBao, PostgreSQL's control API, the fake apiserver (with helpr's CRDs
    /// Established) and `operator_bin run` (one replica, no leader election).
    pub async fn start(operator_bin: &Path) -> anyhow::Result<OperatorEnv> {
        let dir = tempfile::tempdir()?;
        let crds: Vec<Value> = helpr_crds_json()?;
        let api = FakeApiServer::start_with_crds(&crds).await?;
        let bao = OpenBao::start().await?;
        bao.enable_kubernetes_auth(&api.url).await?;

        let db = TestDatabase::create().await?;
        let store: Arc<dyn Store> = Arc::new(PgStore::connect(&db.url).await?);
        let kms: Arc<dyn Kms> = Arc::new(LocalKms::open(dir.path().join("kms"))?);
        let keyring = Arc::new(Keyring::new(kms, store.clone(), KeyringConfig::default()));
        let search: Arc<dyn helpr_dataplane::search::SearchIndex> = Arc::new(TantivyIndex::open(
            TantivyConfig::new(dir.path().join("index")),
        )?);
        let token = format!("control-{}", uuid::Uuid::new_v4().simple());
        let token_file = dir.path().join("control-token");
        std::fs::write(&token_file, &token)?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let control_url = format!("http://{}", listener.local_addr()?);
        let (stop_control, stopped) = tokio::sync::oneshot::channel::<()>();
        let service = ControlService::new(keyring, search);
        let server_token = ControlToken::new(token.as_bytes());
        let control = tokio::spawn(async move {
            if let Err(error) = serve(service, server_token, None, listener, async move {
                let _ = stopped.await;
            })
            .await
            {
                eprintln!("control API stopped: {error}");
            }
        });

        let kubeconfig = dir.path().join("kubeconfig");
        std::fs::write(&kubeconfig, api.kubeconfig("default"))?;
        let settings = dir.path().join("settings.yaml");
        std::fs::write(&settings, SETTINGS)?;
        let work_dir = dir.path().join("work");
        std::fs::create_dir_all(&work_dir)?;
        let http = format!("127.0.0.1:{}", free_port()?);
        let log = dir.path().join("operator.log");
        let child = Command::new(operator_bin)
            .arg("run")
            .arg("--settings")
            .arg(&settings)
            .arg("--control-url")
            .arg(&control_url)
            .arg("--control-token-file")
            .arg(&token_file)
            .arg("--listen")
            .arg(&http)
            .arg("--work-dir")
            .arg(&work_dir)
            .arg("--leader-election")
            .arg("false")
            .env("KUBECONFIG", &kubeconfig)
            .env(
                "HELPR_LOG",
                std::env::var("HELPR_OPERATOR_TEST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log)?)
            .stderr(std::fs::File::create(dir.path().join("operator.stderr"))?)
            .spawn()
            .with_context(|| format!("start {}", operator_bin.display()))?;
        let env = OperatorEnv {
            api,
            bao,
            store,
            http,
            child,
            log,
            stop_control: Some(stop_control),
            control: Some(control),
            _db: db,
            dir,
        };
        Ok(env)
    }

    /// The operator's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The last `lines` of the operator's output (for failure messages).
    pub fn log_tail(&self, lines: usize) -> String {
        let mut text = std::fs::read_to_string(&self.log).unwrap_or_default();
        text.push_str(
            &std::fs::read_to_string(self.dir.path().join("operator.stderr")).unwrap_or_default(),
        );
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Peak resident set size of the operator process (`VmHWM`), in KiB.
    pub fn peak_rss_kib(&self) -> anyhow::Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .context("no VmHWM in /proc/<pid>/status")
    }

    /// Puts the Secret with OpenBao's token into `namespace` (the tenants' `tokenSecretRef`).
    pub fn vault_secret(&self, namespace: &str) {
        use base64::Engine as _;
        let token = base64::engine::general_purpose::STANDARD.encode(&self.bao.root_token);
        self.api.put(
            SECRETS,
            namespace,
            json!({
                "apiVersion": "v1", "kind": "Secret",
                "metadata": {"name": VAULT_SECRET, "namespace": namespace},
                "data": {"token": token},
            }),
        );
    }

    /// A Tenant named `name` in `namespace`, keyed in this environment's OpenBao with the
    /// token of [`OperatorEnv::vault_secret`].
    pub fn tenant(&self, namespace: &str, name: &str, deletion_policy: &str) -> Value {
        json!({
            "apiVersion": "mail.helpr.dev/v1alpha1", "kind": "Tenant",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {
                "displayName": format!("Tenant {name}"),
                "kms": {
                    "server": self.bao.address,
                    "transitMount": "transit",
                    "auth": {"tokenSecretRef": {"name": VAULT_SECRET, "key": "token"}},
                },
                "deletionPolicy": deletion_policy,
                "search": {"backend": "Tantivy", "mode": "Blind"},
                "sync": {"replicas": 1},
            },
        })
    }

    /// Waits until `done` holds, failing with the operator's log after `timeout`.
    pub async fn wait_for(
        &mut self,
        what: &str,
        timeout: Duration,
        mut done: impl FnMut(&OperatorEnv) -> bool,
    ) -> anyhow::Result<Duration> {
        let start = Instant::now();
        loop {
            if done(self) {
                return Ok(start.elapsed());
            }
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "the operator exited ({status}) while waiting for {what}:\n{}",
                    self.log_tail(40)
                );
            }
            if start.elapsed() > timeout {
                bail!(
                    "timed out after {timeout:?} waiting for {what}; operator log:\n{}",
                    self.log_tail(40)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops the operator (SIGTERM, then SIGKILL after 10 s) and the control API; returns
    /// whether the operator exited successfully on SIGTERM.
    pub async fn shutdown(mut self) -> anyhow::Result<bool> {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let start = Instant::now();
        let clean = loop {
            if let Some(status) = self.child.try_wait()? {
                break status.success();
            }
            if start.elapsed() > Duration::from_secs(10) {
                let _ = self.child.kill();
                let _ = self.child.wait();
                break false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        if let Some(stop) = self.stop_control.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.control.take() {
            let _ = task.await;
        }
        Ok(clean)
    }
}

impl Drop for OperatorEnv {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// CPU time (user + system, in seconds) process `pid` has used so far, from
/// `/proc/<pid>/stat` (clock ticks of 1/100 s, Linux's USER_HZ).
pub fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| -> anyhow::Result<u64> {
        fields
            .get(i)
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("no field {i} in /proc/{pid}/stat"))
    };
    // utime and stime: fields 14 and 15 of stat(5), 12th and 13th after the name.
    Ok((ticks(11)? + ticks(12)?) as f64 / 100.0)
}

/// The 1-minute load average of the machine.
pub fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Whether a helpr object's status says `Ready=True` for its current generation.
pub fn is_ready(object: &Value) -> bool {
    // Plain field access, not JSON pointers: the scale bench runs this on every object
    // several times a second, under the fake apiserver's lock.
    let generation = object
        .get("metadata")
        .and_then(|m| m.get("generation"))
        .and_then(Value::as_i64);
    let observed = object
        .get("status")
        .and_then(|s| s.get("observedGeneration"))
        .and_then(Value::as_i64);
    observed.is_some()
        && observed == generation
        && condition(object, "Ready").is_some_and(|c| c["status"] == "True")
}

/// The condition of `type_` in the object's status.
pub fn condition<'a>(object: &'a Value, type_: &str) -> Option<&'a Value> {
    object
        .get("status")
        .and_then(|s| s.get("conditions"))
        .and_then(Value::as_array)?
        .iter()
        .find(|c| c["type"] == type_)
}

/// helpr's CRDs as JSON, read from the checked-in YAML (what `crdgen` writes).
fn helpr_crds_json() -> anyhow::Result<Vec<Value>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../crds/yaml");
    let mut crds = Vec::new();
    for entry in std::fs::read_dir(&dir).with_context(|| format!("read {}", dir.display()))? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let text = std::fs::read_to_string(&path)?;
            let crd: Value = serde_norway::from_str(&text)
                .with_context(|| format!("parse {}", path.display()))?;
            crds.push(crd);
        }
    }
    if crds.is_empty() {
        bail!("no CRDs in {}", dir.display());
    }
    Ok(crds)
}
