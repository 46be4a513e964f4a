//! `helpr-dataplane`: every data-plane role and the operator's tools, one binary.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use helpr_dataplane::config::Settings;
use helpr_dataplane::ids::TenantId;
use helpr_dataplane::keyring::KeyVersionStatus;

/// The data plane of helpr vault: an encrypted email vault for shared Gmail inboxes.
///
/// Settings come from --config (TOML), then HELPR_<SECTION>__<KEY> environment
/// variables, then flags. Without any, everything lives under ./helpr-data (SQLite and a
/// development-only local KMS).
#[derive(Debug, Parser)]
#[command(name = "helpr-dataplane", version, propagate_version = true)]
struct Cli {
    /// TOML settings file.
    #[arg(long, global = true, env = "HELPR_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Directory of the embedded default (SQLite database and local KMS keys).
    #[arg(long, global = true, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Database URL (postgres://... or sqlite://...); overrides the settings.
    #[arg(long, global = true, value_name = "URL")]
    database_url: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create and list tenants.
    #[command(subcommand)]
    Tenants(TenantsCommand),
    /// Inspect and rotate a tenant's encryption keys.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Add and list shared inboxes.
    #[command(subcommand)]
    Inboxes(InboxesCommand),
    /// Serve the Gmail push endpoint (POST /v1/push/gmail), /healthz and /metrics.
    Ingest {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: std::net::SocketAddr,
    },
    /// Run the sync worker of one tenant until SIGINT or SIGTERM.
    Sync {
        #[command(flatten)]
        tenant: TenantArg,
        /// Sync what is due once and exit instead of running continuously.
        #[arg(long)]
        once: bool,
    },
    /// Run everything in one process on the embedded default (SQLite, tantivy and a local
    /// KMS under --data-dir): creates tenant `demo` with inbox support@demo.example on first
    /// run, indexes new mail, serves /healthz, /metrics and (when push.* is configured) the
    /// push endpoint, and syncs Gmail when google.client_id is configured. Stops on
    /// SIGINT/SIGTERM.
    Dev {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: std::net::SocketAddr,
        /// Import these messages (.eml file, directory or mbox) into the demo inbox at start.
        #[arg(long, value_name = "PATH")]
        import: Option<PathBuf>,
    },
    /// Run the index role: own the tenant search indexes (tantivy under search.index_dir)
    /// and serve index, delete and search over gRPC to the other roles
    /// (search.backend = "remote", search.remote_url), each call carrying a token of
    /// search.index_secret_file whose scope covers its tenant. Stops on SIGINT/SIGTERM.
    Index {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:7070")]
        listen: std::net::SocketAddr,
    },
    /// Serve the control API (gRPC) the operator pushes tenants, inboxes, grants and
    /// retention policies into. Requests must carry the bearer token read from
    /// control.token_file (HELPR_CONTROL__TOKEN_FILE; mode 0600 or stricter); TLS when
    /// control.tls_cert_file and control.tls_key_file are set. Stops on SIGINT/SIGTERM.
    Control {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:7443")]
        listen: std::net::SocketAddr,
    },
    /// Serve the agent API (HTTP/JSON) helpdesk agents read their inboxes through: OIDC
    /// bearer tokens from api.issuer (verified against api.jwks_url), per-inbox access on
    /// every call and search hit, /healthz, /readyz and /metrics. Stops on SIGINT/SIGTERM.
    Api {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: std::net::SocketAddr,
    },
    /// Send local messages (.eml file, directory of .eml files, or mbox) through the ingest
    /// pipeline (parse, strip quotes, sanitize, seal, store) and index them.
    Import {
        #[command(flatten)]
        tenant: TenantArg,
        /// Address of the tenant's inbox to import into.
        #[arg(long)]
        inbox: String,
        /// A .eml file, a directory (searched recursively for .eml and .mbox), or an mbox.
        path: PathBuf,
    },
    /// Search a tenant's mail and print date, inbox, subject and snippet of each hit.
    Search {
        #[command(flatten)]
        tenant: TenantArg,
        /// Restrict to these inbox addresses (repeatable); default every inbox of the tenant.
        #[arg(long = "inbox", value_name = "ADDRESS")]
        inboxes: Vec<String>,
        /// Most hits to print.
        #[arg(long, default_value_t = 20)]
        limit: usize,
        /// Continue after a previous page (the cursor it printed).
        #[arg(long)]
        cursor: Option<String>,
        /// Print JSON instead of lines.
        #[arg(long)]
        json: bool,
        /// The query: words, "phrases", from:, to:, subject:, filename:, has:attachment,
        /// before:/after:YYYY-MM-DD, -negation, OR.
        query: String,
    },
    /// Rebuild a tenant's search index from the sealed store (resumable).
    Reindex {
        #[command(flatten)]
        tenant: TenantArg,
    },
    /// Enforce the tenant's retention policy once (what the RetentionPolicy CronJob runs):
    /// soft-delete conversations older than delete_after_days, then purge for good the mail
    /// soft-deleted longer than the grace period ago (default 60 days). While the tenant is
    /// under legal hold nothing is deleted or purged. Prints the counts; resumable (run it
    /// again after an interruption).
    Purge {
        #[command(flatten)]
        tenant: TenantArg,
        /// Count what would be done and change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Print JSON instead of lines.
        #[arg(long)]
        json: bool,
    },
    /// Soft-delete or restore a conversation (what the agent API calls).
    #[command(subcommand)]
    Conversations(ConversationsCommand),
    /// Run parse, quote stripping and sanitizing on one message and print, as JSON,
    /// exactly what would be stored (before sealing). Stores nothing.
    Inspect {
        /// An RFC 822 message (.eml).
        file: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum ConversationsCommand {
    /// Soft-delete a conversation: its mail disappears from reads and search at once and
    /// is purged after the grace period.
    Delete {
        #[command(flatten)]
        tenant: TenantArg,
        /// The conversation id (as `search --json` prints it).
        #[arg(long)]
        id: String,
    },
    /// Restore a soft-deleted conversation within the grace period; it is indexed again.
    Restore {
        #[command(flatten)]
        tenant: TenantArg,
        /// The conversation id.
        #[arg(long)]
        id: String,
    },
}

#[derive(Debug, Subcommand)]
enum InboxesCommand {
    /// Add a shared inbox to a tenant, optionally with its Google refresh token.
    Add {
        #[command(flatten)]
        tenant: TenantArg,
        /// The Gmail address of the shared inbox.
        #[arg(long)]
        address: String,
        /// File holding the inbox's Google OAuth refresh token ('-' for standard input).
        /// The token is sealed before it is stored.
        #[arg(long, value_name = "FILE")]
        refresh_token_file: Option<PathBuf>,
    },
    /// List a tenant's inboxes.
    List {
        #[command(flatten)]
        tenant: TenantArg,
    },
}

#[derive(Debug, Subcommand)]
enum TenantsCommand {
    /// Create a tenant with its KMS key and first data encryption key (idempotent).
    Create {
        /// Tenant id: a DNS label (a-z, 0-9, '-'), at most 63 characters.
        #[arg(long)]
        id: TenantId,
        /// Human-readable name (defaults to the id).
        #[arg(long)]
        name: Option<String>,
    },
    /// List tenants.
    List,
}

#[derive(Debug, Args)]
struct TenantArg {
    /// Tenant id.
    #[arg(long)]
    tenant: TenantId,
}

#[derive(Debug, Subcommand)]
enum KeysCommand {
    /// Show the tenant's DEK versions: current, retired, seal counts. Never key bytes.
    Status {
        #[command(flatten)]
        tenant: TenantArg,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Create a new DEK version; new writes use it, old data stays readable as it is.
    RotateDek {
        #[command(flatten)]
        tenant: TenantArg,
    },
    /// Rotate the tenant's key-encryption key in the KMS and rewrap every stored DEK.
    RotateKek {
        #[command(flatten)]
        tenant: TenantArg,
    },
    /// Rotate the tenant's search index key: re-index every message from the sealed store
    /// under a new key (queries keep working on the old key until the switch). Runs the
    /// re-index here unless another process holds the index, which then finishes it;
    /// rerun (or `reindex`) to continue an interrupted rotation.
    RotateIndexKey {
        #[command(flatten)]
        tenant: TenantArg,
    },
    /// Print the index-role token for one tenant, made with search.index_secret_file: what
    /// a process that serves only this tenant presents to the index role (the operator gives
    /// one to each tenant's sync workers). Store it in a Secret; it is a credential.
    IndexToken {
        #[command(flatten)]
        tenant: TenantArg,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("HELPR_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let mut settings = Settings::load(cli.config.as_deref())?;
    if let Some(dir) = cli.data_dir {
        settings.data_dir = dir;
    }
    if let Some(url) = cli.database_url {
        settings.database.url = Some(url);
    }
    match cli.command {
        Command::Tenants(TenantsCommand::Create { id, name }) => {
            let keyring = settings.open_keyring().await?;
            let name = name.unwrap_or_else(|| id.to_string());
            keyring.provision_tenant(&id, &name).await?;
            println!("tenant {id} is ready");
            print_status(&keyring.status(&id).await?);
        }
        Command::Tenants(TenantsCommand::List) => {
            let store = settings.open_store().await?;
            for t in store.list_tenants().await? {
                println!("{}\t{}", t.id, t.display_name);
            }
        }
        Command::Keys(KeysCommand::Status { tenant, json }) => {
            let keyring = settings.open_keyring().await?;
            let status = keyring.status(&tenant.tenant).await?;
            let store = keyring.store();
            let index_keys = store.list_index_keys(&tenant.tenant).await?;
            let (pending, total) = store.index_progress(&tenant.tenant).await?;
            if json {
                let index_keys: Vec<_> = index_keys
                    .iter()
                    .map(|k| {
                        serde_json::json!({
                            "version": k.version,
                            "state": k.state,
                            "normalization": k.normalization,
                            "mode": k.mode,
                            "kms_key_ref": k.kms_key_ref,
                        })
                    })
                    .collect();
                let out = serde_json::json!({
                    "deks": status,
                    "index_keys": index_keys,
                    "index_pending": pending,
                    "messages": total,
                });
                println!("{}", serde_json::to_string_pretty(&out)?);
            } else {
                print_status(&status);
                println!();
                println!(
                    "{:<8} {:<9} {:<10} {:<8} KMS KEY",
                    "INDEX", "STATE", "MODE", "FOLDING"
                );
                for k in &index_keys {
                    println!(
                        "{:<8} {:<9} {:<10} {:<8} {}",
                        format!("v{}", k.version),
                        k.state.as_str(),
                        k.mode.as_str(),
                        format!("v{}", k.normalization),
                        if k.kms_key_ref.is_empty() {
                            "-"
                        } else {
                            &k.kms_key_ref
                        }
                    );
                }
                println!("messages waiting to be indexed: {pending} of {total}");
            }
        }
        Command::Keys(KeysCommand::RotateDek { tenant }) => {
            let keyring = settings.open_keyring().await?;
            let version = keyring.rotate_dek(&tenant.tenant).await?;
            println!("tenant {}: new writes now use dek {version}", tenant.tenant);
        }
        Command::Inboxes(InboxesCommand::Add {
            tenant,
            address,
            refresh_token_file,
        }) => {
            add_inbox(
                &settings,
                &tenant.tenant,
                &address,
                refresh_token_file.as_deref(),
            )
            .await?;
        }
        Command::Inboxes(InboxesCommand::List { tenant }) => {
            let store = settings.open_store().await?;
            for i in store.list_inboxes(&tenant.tenant).await? {
                println!(
                    "{}\t{}\t{}\thistory={}",
                    i.id,
                    i.address,
                    i.status,
                    i.history_id
                        .map(|h| h.to_string())
                        .unwrap_or_else(|| "-".into())
                );
            }
        }
        Command::Import {
            tenant,
            inbox,
            path,
        } => run_import(&settings, &tenant.tenant, &inbox, &path).await?,
        Command::Search {
            tenant,
            inboxes,
            limit,
            cursor,
            json,
            query,
        } => {
            run_search(
                &settings,
                &tenant.tenant,
                &inboxes,
                &query,
                limit,
                cursor.as_deref(),
                json,
            )
            .await?
        }
        Command::Reindex { tenant } => run_reindex(&settings, &tenant.tenant).await?,
        Command::Purge {
            tenant,
            dry_run,
            json,
        } => run_purge(&settings, &tenant.tenant, dry_run, json).await?,
        Command::Conversations(command) => run_conversations(&settings, command).await?,
        Command::Control { listen } => run_control(&settings, listen).await?,
        Command::Api { listen } => run_api(&settings, listen).await?,
        Command::Index { listen } => {
            let secret = std::sync::Arc::new(settings.index_secret()?);
            let index = std::sync::Arc::new(settings.open_search_index()?);
            let listener = tokio::net::TcpListener::bind(listen)
                .await
                .map_err(|e| anyhow::anyhow!("cannot listen on {listen}: {e}"))?;
            tracing::info!(listen = %listener.local_addr()?, "index role serving gRPC");
            println!("index role listening on {}", listener.local_addr()?);
            helpr_dataplane::search::remote::serve(index, secret, listener, shutdown_signal())
                .await?;
        }
        Command::Dev { listen, import } => run_dev(&settings, listen, import.as_deref()).await?,
        Command::Ingest { listen } => run_ingest(&settings, listen).await?,
        Command::Sync { tenant, once } => run_sync(&settings, &tenant.tenant, once).await?,
        Command::Inspect { file } => {
            let raw = std::fs::read(&file)
                .map_err(|e| anyhow::anyhow!("cannot read {}: {}", file.display(), e.kind()))?;
            let processed = helpr_dataplane::ingest::pipeline::process(&raw)
                .map_err(|e| anyhow::anyhow!("{} is not a message: {e}", file.display()))?;
            println!(
                "{}",
                serde_json::to_string_pretty(&processed.inspect_report())?
            );
        }
        Command::Keys(KeysCommand::RotateIndexKey { tenant }) => {
            run_rotate_index_key(&settings, &tenant.tenant).await?
        }
        Command::Keys(KeysCommand::IndexToken { tenant }) => {
            use helpr_dataplane::search::index_auth::IndexScope;
            let token = settings
                .index_secret()?
                .token(&IndexScope::Tenant(tenant.tenant.clone()));
            println!("{}", token.expose());
        }
        Command::Keys(KeysCommand::RotateKek { tenant }) => {
            let keyring = settings.open_keyring().await?;
            let done = keyring.rotate_kek(&tenant.tenant).await?;
            println!(
                "tenant {}: kek rotated to version {}, {} wrapped dek(s) and {} index key(s) rewrapped",
                tenant.tenant, done.kek_version, done.rewrapped, done.index_keys_rewrapped
            );
        }
    }
    Ok(())
}

async fn add_inbox(
    settings: &Settings,
    tenant: &TenantId,
    address: &str,
    refresh_token_file: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    use helpr_dataplane::crypto::SealContext;
    use helpr_dataplane::store::{NewInbox, REFRESH_TOKEN_FIELD, now_ms};
    let address = address.trim();
    anyhow::ensure!(
        address.len() <= 320
            && address
                .split_once('@')
                .is_some_and(|(l, d)| !l.is_empty() && d.contains('.')),
        "--address must be an email address"
    );
    let token = match refresh_token_file {
        None => None,
        Some(path) => {
            let raw = if path.as_os_str() == "-" {
                let mut s = String::new();
                std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)?;
                s
            } else {
                std::fs::read_to_string(path)
                    .map_err(|e| anyhow::anyhow!("cannot read {}: {}", path.display(), e.kind()))?
            };
            let token = zeroize::Zeroizing::new(raw.trim().to_string());
            anyhow::ensure!(!token.is_empty(), "the refresh token file is empty");
            Some(token)
        }
    };
    let keyring = settings.open_keyring().await?;
    let store = keyring.store().clone();
    anyhow::ensure!(
        store.get_tenant(tenant).await?.is_some(),
        "tenant {tenant} does not exist; create it with `tenants create --id {tenant}`"
    );
    let id = helpr_dataplane::ids::new_record_id();
    // Seal first: a KMS outage then leaves no inbox without its token.
    let sealed = match &token {
        Some(t) => Some(
            keyring
                .seal(
                    &SealContext::new(tenant.as_str(), &id, REFRESH_TOKEN_FIELD),
                    t.as_bytes(),
                )
                .await?,
        ),
        None => None,
    };
    store
        .create_inbox(&NewInbox {
            id: id.clone(),
            tenant_id: tenant.clone(),
            address: address.to_string(),
            connected_at_ms: now_ms(),
        })
        .await?;
    if let Some(sealed) = sealed {
        store.set_refresh_token(&id, &sealed).await?;
    }
    println!("inbox {id} added to tenant {tenant}");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

async fn run_ingest(settings: &Settings, listen: std::net::SocketAddr) -> anyhow::Result<()> {
    use helpr_dataplane::ingest::jwt::Verifier;
    use helpr_dataplane::ingest::push::{PushState, router};
    use helpr_dataplane::ingest::sink::StorePushSink;
    anyhow::ensure!(
        !settings.push.audience.is_empty() && !settings.push.service_account.is_empty(),
        "push.audience and push.service_account must be set (HELPR_PUSH__AUDIENCE, HELPR_PUSH__SERVICE_ACCOUNT)"
    );
    let store = settings.open_store().await?;
    let verifier = std::sync::Arc::new(Verifier::new(settings.push.clone())?);
    let app = router(PushState {
        verifier,
        sink: std::sync::Arc::new(StorePushSink::new(store)),
    })
    .route("/healthz", axum::routing::get(|| async { "ok" }))
    .route(
        "/metrics",
        axum::routing::get(|| async { helpr_dataplane::metrics::render() }),
    );
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {listen}: {e}"))?;
    tracing::info!(listen = %listener.local_addr()?, "push endpoint listening on /v1/push/gmail");
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown_signal())
        .await?;
    Ok(())
}

async fn run_sync(settings: &Settings, tenant: &TenantId, once: bool) -> anyhow::Result<()> {
    use helpr_dataplane::ingest::gmail::GmailClient;
    use helpr_dataplane::ingest::oauth::TokenSource;
    use helpr_dataplane::ingest::sync::SyncWorker;
    let keyring = std::sync::Arc::new(settings.open_keyring().await?);
    let store = keyring.store().clone();
    anyhow::ensure!(
        store.get_tenant(tenant).await?.is_some(),
        "tenant {tenant} does not exist"
    );
    // The worker holds the plaintext, so it also turns stored messages into index terms
    // (blind tokens) and hands them to the search tier (the index role, Quickwit, or the
    // embedded index), driven by the index markers in the store.
    let service = std::sync::Arc::new(helpr_dataplane::search::service::SearchService::new(
        keyring.clone(),
        settings.open_search_backend(store.clone())?,
        settings.search.mode,
    ));
    let worker = std::sync::Arc::new(SyncWorker::new(
        tenant.clone(),
        store.clone(),
        keyring,
        GmailClient::new(settings.gmail.clone())?,
        TokenSource::new(&settings.google)?,
        settings.sync.clone(),
    ));
    if once {
        let jobs = worker.run_once().await?;
        let polled = worker.poll_due().await;
        let indexed = match service.index_all_pending(tenant, 200, |_, _| {}).await {
            Ok(n) => n.to_string(),
            Err(helpr_dataplane::search::service::ServiceError::Search(
                helpr_dataplane::search::SearchError::Locked { holder, .. },
            )) => format!("0 (the index is held by {holder}, which indexes them)"),
            Err(e) => return Err(e.into()),
        };
        println!("synced {jobs} inbox(es) with jobs and {polled} by poll; indexed {indexed}");
        return Ok(());
    }
    let (tx, rx) = tokio::sync::watch::channel(false);
    let handle = tokio::spawn(worker.run(rx.clone()));
    let interval = std::time::Duration::from_millis(settings.search.commit_interval_ms.max(100));
    let indexer = tokio::spawn(helpr_dataplane::tools::run_indexer(
        service.clone(),
        store,
        interval,
        Some(tenant.clone()),
        rx,
    ));
    shutdown_signal().await;
    let _ = tx.send(true);
    let _ = handle.await;
    let _ = indexer.await;
    if let Err(e) = service.index().flush(tenant).await {
        tracing::warn!(error = %e, "final index commit failed");
    }
    Ok(())
}

async fn open_search(
    settings: &Settings,
) -> anyhow::Result<(
    std::sync::Arc<helpr_dataplane::keyring::Keyring>,
    helpr_dataplane::search::service::SearchService,
)> {
    let keyring = std::sync::Arc::new(settings.open_keyring().await?);
    let index = settings.open_search_backend(keyring.store().clone())?;
    let service = helpr_dataplane::search::service::SearchService::new(
        keyring.clone(),
        index,
        settings.search.mode,
    );
    Ok((keyring, service))
}

/// A one-line progress bar on standard error.
fn progress_bar(label: &str, done: u64, total: u64) {
    use std::io::Write as _;
    let width = 30u64;
    let filled = (done * width)
        .checked_div(total)
        .unwrap_or(width)
        .min(width);
    let mut err = std::io::stderr();
    let _ = write!(
        err,
        "\r{label} [{}{}] {done}/{total}",
        "#".repeat(filled as usize),
        "-".repeat((width - filled) as usize)
    );
    if done >= total {
        let _ = writeln!(err);
    }
    let _ = err.flush();
}

async fn run_import(
    settings: &Settings,
    tenant: &TenantId,
    inbox: &str,
    path: &std::path::Path,
) -> anyhow::Result<()> {
    use helpr_dataplane::tools;
    let messages = tools::read_messages(path)?;
    let (keyring, service) = open_search(settings).await?;
    let inbox = tools::find_inbox(&keyring, tenant, inbox).await?;
    let report = tools::import(&service, &keyring, &inbox, &messages, |done, total| {
        progress_bar("importing", done as u64, total as u64)
    })
    .await?;
    for (origin, reason) in &report.rejected {
        eprintln!("skipped {origin}: {reason}");
    }
    println!(
        "{} stored, {} already stored, {} rejected; {} indexed",
        report.stored,
        report.already_stored,
        report.rejected.len(),
        report.indexed
    );
    if let Some(holder) = report.index_holder {
        println!("the search index is held by {holder}: it indexes the new messages");
    }
    Ok(())
}

async fn run_search(
    settings: &Settings,
    tenant: &TenantId,
    inboxes: &[String],
    query: &str,
    limit: usize,
    cursor: Option<&str>,
    json: bool,
) -> anyhow::Result<()> {
    let (keyring, service) = open_search(settings).await?;
    let store = keyring.store().clone();
    anyhow::ensure!(
        store.get_tenant(tenant).await?.is_some(),
        "tenant {tenant} does not exist"
    );
    let all = store.list_inboxes(tenant).await?;
    let mut allowed = std::collections::BTreeSet::new();
    if inboxes.is_empty() {
        allowed.extend(all.iter().map(|i| i.id.clone()));
    } else {
        for wanted in inboxes {
            let inbox = all
                .iter()
                .find(|i| i.address.eq_ignore_ascii_case(wanted.trim()))
                .ok_or_else(|| {
                    anyhow::anyhow!("tenant {tenant} has no inbox with the address given")
                })?;
            allowed.insert(inbox.id.clone());
        }
    }
    let page = service
        .search(tenant, &allowed, query, limit, cursor)
        .await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&page)?);
        return Ok(());
    }
    let address = |id: &str| {
        all.iter()
            .find(|i| i.id == id)
            .map(|i| i.address.clone())
            .unwrap_or_default()
    };
    for hit in &page.hits {
        println!(
            "{}  {}  {}\n    {}",
            format_date(hit.date_ms),
            address(&hit.inbox_id),
            hit.subject,
            hit.snippet
        );
    }
    println!("{} hit(s)", page.hits.len());
    if let Some(next) = page.next {
        println!("more: --cursor {next}");
    }
    Ok(())
}

const DEMO_TENANT: &str = "demo";
const DEMO_INBOX: &str = "support@demo.example";

async fn run_dev(
    settings: &Settings,
    listen: std::net::SocketAddr,
    import: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    use helpr_dataplane::store::{NewInbox, now_ms};
    use helpr_dataplane::tools;
    use std::sync::Arc;
    let (keyring, service) = open_search(settings).await?;
    let service = Arc::new(service);
    let store = keyring.store().clone();
    let demo = TenantId::new(DEMO_TENANT)?;
    keyring.provision_tenant(&demo, "Demo").await?;
    if !store
        .list_inboxes(&demo)
        .await?
        .iter()
        .any(|i| i.address == DEMO_INBOX)
    {
        store
            .create_inbox(&NewInbox {
                id: helpr_dataplane::ids::new_record_id(),
                tenant_id: demo.clone(),
                address: DEMO_INBOX.into(),
                connected_at_ms: now_ms(),
            })
            .await?;
    }
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {listen}: {e}"))?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut tasks = tokio::task::JoinSet::new();
    // Indexing first: it takes the index writer, so `import` in another terminal defers to us.
    let interval = std::time::Duration::from_millis(settings.search.commit_interval_ms.max(100));
    tasks.spawn(tools::run_indexer(
        service.clone(),
        store.clone(),
        interval,
        None,
        stop_rx.clone(),
    ));
    if let Some(path) = import {
        let messages = tools::read_messages(path)?;
        let inbox = tools::find_inbox(&keyring, &demo, DEMO_INBOX).await?;
        let report = tools::import(&service, &keyring, &inbox, &messages, |done, total| {
            progress_bar("importing", done as u64, total as u64)
        })
        .await?;
        for (origin, reason) in &report.rejected {
            eprintln!("skipped {origin}: {reason}");
        }
        println!(
            "imported {} message(s) ({} already stored) into {DEMO_INBOX}",
            report.stored, report.already_stored
        );
    }
    let mut app = axum::Router::new();
    let push = !settings.push.audience.is_empty() && !settings.push.service_account.is_empty();
    if push {
        use helpr_dataplane::ingest::jwt::Verifier;
        use helpr_dataplane::ingest::push::{PushState, router};
        use helpr_dataplane::ingest::sink::StorePushSink;
        app = router(PushState {
            verifier: Arc::new(Verifier::new(settings.push.clone())?),
            sink: Arc::new(StorePushSink::new(store.clone())),
        });
    }
    let app = app
        .route("/healthz", axum::routing::get(|| async { "ok" }))
        .route(
            "/metrics",
            axum::routing::get(|| async { helpr_dataplane::metrics::render() }),
        );
    let sync = !settings.google.client_id.is_empty();
    if sync {
        use helpr_dataplane::ingest::gmail::GmailClient;
        use helpr_dataplane::ingest::oauth::TokenSource;
        use helpr_dataplane::ingest::sync::SyncWorker;
        for t in store.list_tenants().await? {
            let worker = Arc::new(SyncWorker::new(
                t.id,
                store.clone(),
                keyring.clone(),
                GmailClient::new(settings.gmail.clone())?,
                TokenSource::new(&settings.google)?,
                settings.sync.clone(),
            ));
            tasks.spawn(worker.run(stop_rx.clone()));
        }
    }
    let exe = std::env::args()
        .next()
        .unwrap_or_else(|| "helpr-dataplane".into());
    let dir = settings.data_dir.display();
    println!(
        "helpr vault dev is running on http://{}",
        listener.local_addr()?
    );
    println!("  data:   {dir} (SQLite, tantivy index, local KMS: development only)");
    println!("  tenant: {DEMO_TENANT}, inbox {DEMO_INBOX}");
    println!(
        "  push:   {}",
        if push {
            "POST /v1/push/gmail"
        } else {
            "off (set push.audience and push.service_account)"
        }
    );
    println!(
        "  sync:   {}",
        if sync {
            "on"
        } else {
            "off (set google.client_id and google.client_secret)"
        }
    );
    println!("next, in another terminal:");
    println!(
        "  {exe} --data-dir {dir} import --tenant {DEMO_TENANT} --inbox {DEMO_INBOX} examples/mail"
    );
    println!("  {exe} --data-dir {dir} search --tenant {DEMO_TENANT} 'invoice'");
    println!("stop with Ctrl-C");
    let server = axum::serve(listener, app).with_graceful_shutdown(shutdown_signal());
    server.await?;
    let _ = stop_tx.send(true);
    while tasks.join_next().await.is_some() {}
    // Whatever was indexed but not committed yet becomes durable before exit.
    if let Err(e) = service.index().flush(&demo).await {
        tracing::warn!(error = %e, "final index commit failed");
    }
    println!("stopped");
    Ok(())
}

async fn run_control(settings: &Settings, listen: std::net::SocketAddr) -> anyhow::Result<()> {
    use helpr_dataplane::control::{ControlService, ControlToken, TlsFiles, serve};
    // Credentials first: without a usable token file nothing else is opened.
    let token_file = settings.control.token_file.as_deref().ok_or_else(|| {
        anyhow::anyhow!(
            "control.token_file (HELPR_CONTROL__TOKEN_FILE) is required: the control api never runs without authentication"
        )
    })?;
    let token = ControlToken::from_file(token_file)?;
    let tls = match (
        &settings.control.tls_cert_file,
        &settings.control.tls_key_file,
    ) {
        (None, None) => None,
        (Some(cert), Some(key)) => {
            // The key file gets the same permission check as the token file.
            ControlToken::from_file(key)
                .map(drop)
                .or_else(|e| match e {
                    helpr_dataplane::control::TokenFileError::Malformed { .. } => Ok(()),
                    e => Err(e),
                })?;
            let read = |p: &std::path::Path| {
                std::fs::read(p)
                    .map_err(|e| anyhow::anyhow!("cannot read {}: {}", p.display(), e.kind()))
            };
            Some(TlsFiles {
                cert_pem: read(cert)?,
                key_pem: zeroize::Zeroizing::new(read(key)?),
            })
        }
        _ => anyhow::bail!("control.tls_cert_file and control.tls_key_file go together"),
    };
    let keyring = std::sync::Arc::new(settings.open_keyring().await?);
    let search = settings.open_search_backend(keyring.store().clone())?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {listen}: {e}"))?;
    let addr = listener.local_addr()?;
    tracing::info!(listen = %addr, tls = tls.is_some(), "control api serving gRPC");
    println!("control api listening on {addr}");
    serve(
        ControlService::new(keyring, search),
        token,
        tls,
        listener,
        shutdown_signal(),
    )
    .await?;
    Ok(())
}

async fn run_api(settings: &Settings, listen: std::net::SocketAddr) -> anyhow::Result<()> {
    use helpr_dataplane::api::{AgentVerifier, ApiState, serve};
    // Authentication settings first: without them nothing else is opened.
    let verifier = std::sync::Arc::new(AgentVerifier::new(&settings.api)?);
    let (keyring, search) = open_search(settings).await?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {listen}: {e}"))?;
    let addr = listener.local_addr()?;
    tracing::info!(listen = %addr, "agent api serving http");
    println!("agent api listening on {addr}");
    let state = ApiState::new(keyring, std::sync::Arc::new(search), verifier);
    serve(state, listener, shutdown_signal()).await?;
    Ok(())
}

async fn run_reindex(settings: &Settings, tenant: &TenantId) -> anyhow::Result<()> {
    let (keyring, service) = open_search(settings).await?;
    anyhow::ensure!(
        keyring.store().get_tenant(tenant).await?.is_some(),
        "tenant {tenant} does not exist"
    );
    let done = service
        .reindex(tenant, 200, |pending, total| {
            progress_bar("reindexing", total - pending.min(total), total)
        })
        .await?;
    println!("tenant {tenant}: {done} message(s) indexed");
    Ok(())
}

async fn run_rotate_index_key(settings: &Settings, tenant: &TenantId) -> anyhow::Result<()> {
    use helpr_dataplane::search::SearchError;
    use helpr_dataplane::search::service::ServiceError;
    let (keyring, service) = open_search(settings).await?;
    anyhow::ensure!(
        keyring.store().get_tenant(tenant).await?.is_some(),
        "tenant {tenant} does not exist"
    );
    match service.rotate_index_key(tenant).await {
        Ok(version) => println!("tenant {tenant}: rotating the index key to version {version}"),
        Err(ServiceError::RotationInProgress(_, version)) => {
            println!("tenant {tenant}: continuing the rotation to index key version {version}")
        }
        Err(e) => return Err(e.into()),
    }
    let run = service
        .index_all_pending(tenant, 200, |pending, total| {
            progress_bar("re-indexing", total - pending.min(total), total)
        })
        .await;
    match run {
        Ok(_) => {}
        Err(ServiceError::Search(SearchError::Locked { holder, .. })) => {
            println!(
                "the index is held by {holder}, which re-indexes in the background; \
                 `keys status --tenant {tenant}` shows the progress"
            );
            return Ok(());
        }
        Err(e) => return Err(e.into()),
    }
    let report = service.index_keys_report(tenant).await?;
    match report
        .versions
        .iter()
        .find(|v| v.state == helpr_dataplane::store::IndexKeyState::Active)
    {
        Some(active) => println!(
            "tenant {tenant}: queries use index key version {}; {} message(s) pending",
            active.version, report.pending
        ),
        None => println!("tenant {tenant}: no active index key"),
    }
    Ok(())
}

async fn open_lifecycle(
    settings: &Settings,
) -> anyhow::Result<helpr_dataplane::lifecycle::Lifecycle> {
    let store = settings.open_store().await?;
    let index = settings.open_search_backend(store.clone())?;
    Ok(helpr_dataplane::lifecycle::Lifecycle::new(store, index))
}

async fn run_purge(
    settings: &Settings,
    tenant: &TenantId,
    dry_run: bool,
    json: bool,
) -> anyhow::Result<()> {
    use helpr_dataplane::lifecycle::PurgeOptions;
    let lifecycle = open_lifecycle(settings).await?;
    let options = PurgeOptions {
        dry_run,
        ..PurgeOptions::at(helpr_dataplane::store::now_ms())
    };
    let r = lifecycle.run_retention(tenant, options).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&r)?);
        return Ok(());
    }
    let would = if r.dry_run {
        " (dry run: would be)"
    } else {
        ""
    };
    println!(
        "tenant {}: grace period {} day(s), delete after {}, legal hold {}{would}",
        r.tenant,
        r.grace_period_days,
        r.delete_after_days
            .map_or_else(|| "never".to_owned(), |d| format!("{d} day(s)")),
        if r.legal_hold { "on" } else { "off" },
    );
    println!(
        "soft-deleted by retention: {} conversation(s), {} message(s)",
        r.soft_deleted_conversations, r.soft_deleted_messages
    );
    println!(
        "purged: {} message(s), {} conversation(s)",
        r.purged_messages, r.purged_conversations
    );
    println!("skipped because of legal hold: {}", r.skipped_legal_hold);
    if r.awaiting_index > 0 {
        println!(
            "awaiting removal from the search index by the process holding it: {} (the next run purges them)",
            r.awaiting_index
        );
    }
    Ok(())
}

async fn run_conversations(
    settings: &Settings,
    command: ConversationsCommand,
) -> anyhow::Result<()> {
    use helpr_dataplane::lifecycle::IndexRemoval;
    use helpr_dataplane::store::now_ms;
    let lifecycle = open_lifecycle(settings).await?;
    match command {
        ConversationsCommand::Delete { tenant, id } => {
            let tenant = tenant.tenant;
            let done = lifecycle
                .delete_conversation(&tenant, &id, "cli", now_ms())
                .await?;
            println!(
                "conversation {id}: {} message(s) soft-deleted",
                done.messages
            );
            if let IndexRemoval::Deferred { holder } = done.index {
                println!(
                    "the search index is held by {holder}: it removes them from the index (searches hide them already)"
                );
            }
        }
        ConversationsCommand::Restore { tenant, id } => {
            let tenant = tenant.tenant;
            let done = lifecycle
                .restore_conversation(&tenant, &id, "cli", now_ms())
                .await?;
            println!(
                "conversation {id}: {} message(s) restored (indexed again by the indexer), {} past the grace period",
                done.restored, done.expired
            );
        }
    }
    Ok(())
}

/// `YYYY-MM-DD HH:MM` (UTC) of an epoch-ms instant.
fn format_date(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}",
        rem / 3600,
        (rem % 3600) / 60
    )
}

fn print_status(versions: &[KeyVersionStatus]) {
    println!(
        "{:<8} {:<8} {:<8} {:>14} {:>14} {:<5} KMS KEY",
        "VERSION", "CURRENT", "RETIRED", "SEALS", "BOUND", "KEK"
    );
    for v in versions {
        println!(
            "{:<8} {:<8} {:<8} {:>14} {:>14} {:<5} {}",
            format!("v{}", v.version),
            if v.current { "yes" } else { "" },
            if v.retired { "yes" } else { "" },
            v.seal_count,
            v.seal_bound,
            v.kek_version.map(|k| format!("v{k}")).unwrap_or_default(),
            v.kms_key_ref
        );
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        super::Cli::command().debug_assert();
    }
}
