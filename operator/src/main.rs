//! helpr-operator: reconciles helpr vault's custom resources.
//!
//! - `run`: the Tenant controller (owned Deployments, ServiceAccounts and NetworkPolicies
//!   watched), the Inbox controller (woken by its Tenant's changes) and the InboxGrant
//!   controller (woken by its Inbox's changes), sharing one Context, after the CRDs are
//!   Established; `/healthz`, `/readyz` (ready after the first
//!   successful list of Tenants) and `/metrics` on `--http-addr`; graceful shutdown on SIGTERM
//!   or Ctrl-C; Lease-based leader election (on by default) so that one replica reconciles.
//!   The RetentionPolicy controller (owned purge CronJobs watched, woken by its Tenant's
//!   changes) runs beside them.
//! - `crds`: prints the CRDs as YAML; `--apply` server-side-applies them and waits until
//!   they are Established (the chart's pre-upgrade hook).
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use clap::{Parser, Subcommand};
use futures::StreamExt;
use helpr_crds::{HelprResource, Inbox, InboxGrant, RetentionPolicy, Tenant};
use helpr_operator::control::ControlClient;
use helpr_operator::grant;
use helpr_operator::inbox;
use helpr_operator::leader::LeaderElection;
use helpr_operator::metrics::Metrics;
use helpr_operator::retention;
use helpr_operator::settings::OperatorSettings;
use helpr_operator::tenant::kms::KubeVault;
use helpr_operator::tenant::reconcile::Parents;
use helpr_operator::tenant::{Context, error_policy, reconcile};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::CronJob;
use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::wait::{await_condition, conditions};
use kube::runtime::{Controller, controller, watcher};
use zeroize::Zeroizing;

/// Field manager of the CRDs the operator applies.
const FIELD_MANAGER: &str = "helpr-operator";

/// The pod's namespace, as the kubelet mounts it.
const SERVICE_ACCOUNT_NAMESPACE_FILE: &str =
    "/var/run/secrets/kubernetes.io/serviceaccount/namespace";

/// Label selector of the objects the operator creates.
const MANAGED_BY_SELECTOR: &str = "app.kubernetes.io/managed-by=helpr-operator";

#[derive(Parser)]
#[command(
    name = "helpr-operator",
    version,
    about = "Kubernetes operator of helpr vault"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the controllers until SIGTERM.
    Run(Box<RunArgs>),
    /// Print the CustomResourceDefinitions as YAML (or apply them with --apply).
    Crds {
        /// Server-side apply the CRDs to the cluster and wait until they are Established.
        #[arg(long)]
        apply: bool,
        /// With --apply: apply the `*.yaml` CRD files of this directory (the chart's `crds/`)
        /// instead of the ones built into the binary.
        #[arg(long, value_name = "DIR", requires = "apply")]
        from_dir: Option<PathBuf>,
    },
}

#[derive(clap::Args)]
struct RunArgs {
    /// Operator settings (YAML): sync image, Vault naming, egress targets.
    #[arg(long, env = "HELPR_OPERATOR_SETTINGS", value_name = "FILE")]
    settings: PathBuf,
    /// gRPC URL of the data plane's control API.
    #[arg(long, env = "HELPR_OPERATOR_CONTROL_URL")]
    control_url: String,
    /// File holding the control API's bearer token (a mounted Secret).
    #[arg(long, env = "HELPR_OPERATOR_CONTROL_TOKEN_FILE", value_name = "FILE")]
    control_token_file: PathBuf,
    /// File holding the index role's secret (a mounted Secret): the operator then writes
    /// each tenant a Secret with an index-role token for that tenant alone, which the
    /// tenant's sync workers and purge jobs mount. Without it they get none.
    #[arg(long, env = "HELPR_OPERATOR_INDEX_SECRET_FILE", value_name = "FILE")]
    index_secret_file: Option<PathBuf>,
    /// Address of /healthz, /readyz and /metrics.
    #[arg(
        long = "listen",
        alias = "http-addr",
        env = "HELPR_OPERATOR_LISTEN",
        default_value = "0.0.0.0:8080"
    )]
    http_addr: SocketAddr,
    /// Writable directory for short-lived credential files of Vault logins.
    #[arg(long, env = "HELPR_OPERATOR_WORK_DIR", default_value = "/tmp")]
    work_dir: PathBuf,
    /// Elect a leader through a Lease, so that several replicas can run (one reconciles).
    #[arg(long, env = "HELPR_OPERATOR_LEADER_ELECTION", default_value_t = true, action = clap::ArgAction::Set)]
    leader_election: bool,
    /// Name of the leader election Lease (in the operator's namespace, `POD_NAMESPACE`).
    #[arg(
        long,
        env = "HELPR_OPERATOR_LEASE_NAME",
        default_value = "helpr-operator"
    )]
    lease_name: String,
    /// The operator's namespace (holds the Lease); default: the pod's namespace.
    #[arg(long, env = "HELPR_OPERATOR_NAMESPACE")]
    namespace: Option<String>,
    /// This replica's identity in the Lease and in Events; default: the host name.
    #[arg(long, env = "HELPR_OPERATOR_POD_NAME")]
    pod_name: Option<String>,
    /// Watch only this namespace (empty: all). Several namespaces are not supported yet.
    #[arg(long, env = "HELPR_OPERATOR_WATCH_NAMESPACES", default_value = "")]
    watch_namespaces: String,
    /// How long to wait for the CRDs to be Established.
    #[arg(long, default_value_t = 300)]
    crd_wait_secs: u64,
    /// Reconciles each controller runs at once (each object is only ever reconciled by one
    /// at a time). Bounds the load on Vault, the control API and the apiserver when many
    /// objects change together, e.g. at startup.
    #[arg(
        long,
        env = "HELPR_OPERATOR_CONCURRENCY",
        default_value_t = 16,
        value_parser = clap::value_parser!(u16).range(1..)
    )]
    concurrency: u16,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // kube's TLS uses the process-wide rustls provider; two are compiled in, so pick one.
    let _ = rustls::crypto::ring::default_provider().install_default();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("HELPR_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .json()
        .init();
    match Cli::parse().command {
        Command::Crds { apply: false, .. } => {
            print!("{}", helpr_crds::manifests::multi_document()?);
            Ok(())
        }
        Command::Crds {
            apply: true,
            from_dir,
        } => {
            let crds = match from_dir {
                Some(dir) => read_crds(&dir)?,
                None => helpr_crds::all_crds(),
            };
            let client = kube::Client::try_default()
                .await
                .context("connect to the kubernetes api")?;
            apply_crds(&client, &crds).await?;
            wait_for_crds(&client, Duration::from_secs(300)).await
        }
        Command::Run(args) => run(*args).await,
    }
}

/// The CRDs in the `*.yaml` files of `dir` (one per file, as `crdgen` writes them).
fn read_crds(dir: &std::path::Path) -> anyhow::Result<Vec<CustomResourceDefinition>> {
    let files = helpr_crds::manifests::yaml_files(dir)
        .with_context(|| format!("list {}", dir.display()))?;
    if files.is_empty() {
        bail!("no .yaml files in {}", dir.display());
    }
    files
        .iter()
        .map(|path| {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("read {}", path.display()))?;
            serde_norway::from_str(&text)
                .with_context(|| format!("parse {} as a CustomResourceDefinition", path.display()))
        })
        .collect()
}

async fn apply_crds(
    client: &kube::Client,
    crds: &[CustomResourceDefinition],
) -> anyhow::Result<()> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in crds {
        let name = crd.metadata.name.clone().unwrap_or_default();
        let mut body = serde_json::to_value(crd)?;
        if let Some(map) = body.as_object_mut() {
            map.insert("apiVersion".into(), "apiextensions.k8s.io/v1".into());
            map.insert("kind".into(), "CustomResourceDefinition".into());
        }
        api.patch(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(body),
        )
        .await
        .with_context(|| format!("apply custom resource definition {name}"))?;
        tracing::info!(crd = %name, "custom resource definition applied");
    }
    Ok(())
}

async fn wait_for_crds(client: &kube::Client, timeout: Duration) -> anyhow::Result<()> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in helpr_crds::all_crds() {
        let name = crd.metadata.name.clone().unwrap_or_default();
        tracing::info!(crd = %name, "waiting for the custom resource definition to be established");
        tokio::time::timeout(
            timeout,
            await_condition(api.clone(), &name, conditions::is_crd_established()),
        )
        .await
        .with_context(|| format!("custom resource definition {name} not established in time"))?
        .with_context(|| format!("watch custom resource definition {name}"))?;
    }
    Ok(())
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    let mut settings = OperatorSettings::load(&args.settings)?;
    let index_secret = match &args.index_secret_file {
        Some(path) => {
            let secret = helpr_dataplane::search::index_auth::IndexSecret::from_file(path)
                .context("read the index role's secret")?;
            settings.index_tokens = true;
            Some(Arc::new(secret))
        }
        None => None,
    };
    let token = Zeroizing::new(
        std::fs::read_to_string(&args.control_token_file).with_context(|| {
            format!(
                "read the control api token file {}",
                args.control_token_file.display()
            )
        })?,
    );
    if token.trim().is_empty() {
        bail!(
            "the control api token file {} is empty",
            args.control_token_file.display()
        );
    }
    let control = ControlClient::connect(&args.control_url, token.trim())
        .context("prepare the control api client")?;
    drop(token);

    let client = kube::Client::try_default()
        .await
        .context("connect to the kubernetes api")?;
    let metrics = Arc::new(Metrics::default());

    // Health and metrics first, so liveness holds while the CRDs are awaited.
    let (stop_http, stopped) = tokio::sync::oneshot::channel::<()>();
    let listener = tokio::net::TcpListener::bind(args.http_addr)
        .await
        .with_context(|| format!("listen on {}", args.http_addr))?;
    let router = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .with_state(metrics.clone());
    let http = tokio::spawn(async move {
        axum::serve(listener, router)
            .with_graceful_shutdown(async {
                let _ = stopped.await;
            })
            .await
    });

    wait_for_crds(&client, Duration::from_secs(args.crd_wait_secs)).await?;

    let watched: Vec<&str> = args
        .watch_namespaces
        .split(',')
        .map(str::trim)
        .filter(|ns| !ns.is_empty())
        .collect();
    let scope: Option<String> = match watched.as_slice() {
        [] => None,
        [one] => Some((*one).to_owned()),
        _ => bail!(
            "watching several namespaces ({}) is not supported yet: watch one or all",
            args.watch_namespaces
        ),
    };
    let tenants: Api<Tenant> = scoped_api(&client, scope.as_deref());
    tenants
        .list(&ListParams::default().limit(1))
        .await
        .context("list tenants (check the operator's RBAC)")?;
    metrics.set_ready();

    let identity = args
        .pod_name
        .clone()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| format!("helpr-operator-{}", std::process::id()));
    let election = if args.leader_election {
        let namespace = match &args.namespace {
            Some(ns) => ns.clone(),
            None => std::fs::read_to_string(SERVICE_ACCOUNT_NAMESPACE_FILE)
                .map(|ns| ns.trim().to_owned())
                .context("leader election needs HELPR_OPERATOR_NAMESPACE (or run in a pod)")?,
        };
        let election = LeaderElection::new(client.clone(), &namespace, &args.lease_name, &identity);
        tracing::info!(lease = %args.lease_name, %namespace, %identity, "waiting for leadership");
        tokio::select! {
            () = election.acquire() => {}
            () = shutdown_signal() => {
                let _ = stop_http.send(());
                return Ok(());
            }
        }
        Some(election)
    } else {
        None
    };

    let reporter = Reporter {
        controller: FIELD_MANAGER.to_owned(),
        instance: Some(identity.clone()),
    };
    let limits = controller::Config::default().concurrency(args.concurrency);
    let tenant_controller =
        Controller::new(tenants, watcher::Config::default()).with_config(limits.clone());
    let inbox_controller = Controller::new(
        scoped_api::<Inbox>(&client, scope.as_deref()),
        watcher::Config::default(),
    )
    .with_config(limits.clone());
    // Inboxes and RetentionPolicies read their Tenant, InboxGrants their Inbox, from the
    // stores of those controllers.
    let parents = Parents {
        tenants: tenant_controller.store(),
        inboxes: inbox_controller.store(),
    };
    let mut ctx = Context::new(
        client.clone(),
        Recorder::new(client.clone(), reporter),
        settings.clone(),
        Arc::new(KubeVault::new(client.clone(), &settings, args.work_dir)),
        Arc::new(control),
        metrics.clone(),
        parents,
    );
    if let Some(secret) = index_secret {
        ctx = ctx.with_index_secret(secret);
    }
    let ctx = Arc::new(ctx);
    tracing::info!(finalizer = Tenant::FINALIZER, "tenant controller starting");
    // Only the children the operator made: not every Deployment of the cluster.
    let owned = || watcher::Config::default().labels(MANAGED_BY_SELECTOR);
    let tenant_controller = tenant_controller
        .owns(scoped_api::<Deployment>(&client, scope.as_deref()), owned())
        .owns(
            scoped_api::<ServiceAccount>(&client, scope.as_deref()),
            owned(),
        )
        .owns(
            scoped_api::<NetworkPolicy>(&client, scope.as_deref()),
            owned(),
        )
        .shutdown_on_signal()
        .run(reconcile, error_policy, ctx.clone())
        .for_each(|result| async move {
            match result {
                Ok((object, _)) => tracing::debug!(tenant = %object, "reconciled"),
                Err(error) => tracing::debug!(%error, "reconcile error"),
            }
        });
    tracing::info!(
        finalizer = InboxGrant::FINALIZER,
        "inbox grant controller starting"
    );
    let grant_controller = Controller::new(
        scoped_api::<InboxGrant>(&client, scope.as_deref()),
        watcher::Config::default(),
    )
    .with_config(limits.clone());
    // An Inbox's change (e.g. its creation) wakes the grants that reference it.
    let grants = grant_controller.store();
    let grant_controller = grant_controller
        .watches(
            scoped_api::<Inbox>(&client, scope.as_deref()),
            watcher::Config::default(),
            move |inbox: Inbox| dependents(&inbox, &grants, |g| &g.spec.inbox_ref.name),
        )
        .shutdown_on_signal()
        .run(grant::reconcile, grant::error_policy, ctx.clone())
        .for_each(|result| async move {
            match result {
                Ok((object, _)) => tracing::debug!(grant = %object, "reconciled"),
                Err(error) => tracing::debug!(%error, "reconcile error"),
            }
        });
    tracing::info!(finalizer = Inbox::FINALIZER, "inbox controller starting");
    // A Tenant's change (e.g. becoming Ready) wakes the inboxes that reference it.
    let inboxes = inbox_controller.store();
    let inbox_controller = inbox_controller
        .watches(
            scoped_api::<Tenant>(&client, scope.as_deref()),
            watcher::Config::default(),
            move |tenant: Tenant| dependents(&tenant, &inboxes, |i| &i.spec.tenant_ref.name),
        )
        .shutdown_on_signal()
        .run(inbox::reconcile, inbox::error_policy, ctx.clone())
        .for_each(|result| async move {
            match result {
                Ok((object, _)) => tracing::debug!(inbox = %object, "reconciled"),
                Err(error) => tracing::debug!(%error, "reconcile error"),
            }
        });
    tracing::info!(
        finalizer = RetentionPolicy::FINALIZER,
        "retention policy controller starting"
    );
    let retention_controller = Controller::new(
        scoped_api::<RetentionPolicy>(&client, scope.as_deref()),
        watcher::Config::default(),
    )
    .with_config(limits.clone())
    // The purge CronJob's status (last successful run) flows into the policy's status.
    .owns(scoped_api::<CronJob>(&client, scope.as_deref()), owned());
    // A Tenant's change (e.g. becoming Ready) wakes the policies that reference it.
    let policies = retention_controller.store();
    let retention_controller = retention_controller
        .watches(
            scoped_api::<Tenant>(&client, scope.as_deref()),
            watcher::Config::default(),
            move |tenant: Tenant| dependents(&tenant, &policies, |p| &p.spec.tenant_ref.name),
        )
        .shutdown_on_signal()
        .run(retention::reconcile, retention::error_policy, ctx.clone())
        .for_each(|result| async move {
            match result {
                Ok((object, _)) => tracing::debug!(policy = %object, "reconciled"),
                Err(error) => tracing::debug!(%error, "reconcile error"),
            }
        });
    // Every controller stops on SIGTERM; the binary stops when all have.
    let controller = async {
        futures::future::join4(
            tenant_controller,
            inbox_controller,
            grant_controller,
            retention_controller,
        )
        .await;
    };
    let lost = async {
        match &election {
            Some(election) => election.hold().await,
            None => std::future::pending().await,
        }
    };
    let lost_leadership = tokio::select! {
        () = controller => false,
        () = lost => true,
    };
    let _ = stop_http.send(());
    if lost_leadership {
        bail!("leadership lost: exiting so that only the new leader reconciles");
    }
    tracing::info!("controllers stopped, shutting down");
    http.await
        .context("join the http server")?
        .context("http server")?;
    Ok(())
}

/// Whether a change of `parent` (a Tenant or an Inbox) should wake the objects that refer to
/// it: only once it is Ready at its generation (they were waiting for that) or while it is
/// being deleted. Its other updates (status writes on the way to Ready, child changes)
/// would only wake every dependent for nothing: with thousands of inboxes that is most of
/// the work at startup. A dependent still sees every other change at its resync.
fn wakes_dependents<K: HelprResource>(parent: &K) -> bool {
    parent.is_ready() || parent.meta().deletion_timestamp.is_some()
}

/// The objects of `store` that refer to `parent` (same namespace, `reference` names it),
/// when a change of `parent` should wake them (see [`wakes_dependents`]).
fn dependents<P, K>(
    parent: &P,
    store: &kube::runtime::reflector::Store<K>,
    reference: impl Fn(&K) -> &String,
) -> Vec<ObjectRef<K>>
where
    P: HelprResource,
    K: kube::Resource<DynamicType = ()> + Clone + 'static,
{
    if !wakes_dependents(parent) {
        return Vec::new();
    }
    let (namespace, name) = (
        parent.meta().namespace.as_deref(),
        parent.meta().name.as_deref(),
    );
    // Filtered under the store's lock, without copying the namespace of every object.
    store
        .state_filter(|k| {
            k.meta().namespace.as_deref() == namespace && Some(reference(k).as_str()) == name
        })
        .iter()
        .map(|k| ObjectRef::from_obj(k.as_ref()))
        .collect()
}

/// An Api over one namespace, or all of them.
fn scoped_api<K>(client: &kube::Client, namespace: Option<&str>) -> Api<K>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

async fn readyz(State(metrics): State<Arc<Metrics>>) -> (StatusCode, &'static str) {
    if metrics.is_ready() {
        (StatusCode::OK, "ready")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "waiting for the custom resource definitions",
        )
    }
}

async fn metrics_text(State(metrics): State<Arc<Metrics>>) -> String {
    metrics.render()
}

/// SIGTERM or Ctrl-C.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_charts_crd_files_parse_to_the_built_in_crds() {
        let dir = helpr_crds::manifests::workspace_root().join("charts/helpr/crds");
        let by_name = |mut crds: Vec<CustomResourceDefinition>| {
            crds.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
            crds
        };
        let files = by_name(read_crds(&dir).unwrap());
        assert_eq!(files.len(), 4);
        assert!(
            files == by_name(helpr_crds::all_crds()),
            "chart CRDs differ from the types"
        );
    }
}
