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
            if json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                print_status(&status);
            }
        }
        Command::Keys(KeysCommand::RotateDek { tenant }) => {
            let keyring = settings.open_keyring().await?;
            let version = keyring.rotate_dek(&tenant.tenant).await?;
            println!("tenant {}: new writes now use dek {version}", tenant.tenant);
        }
        Command::Keys(KeysCommand::RotateKek { tenant }) => {
            let keyring = settings.open_keyring().await?;
            let done = keyring.rotate_kek(&tenant.tenant).await?;
            println!(
                "tenant {}: kek rotated to version {}, {} wrapped dek(s) rewrapped",
                tenant.tenant, done.kek_version, done.rewrapped
            );
        }
    }
    Ok(())
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
