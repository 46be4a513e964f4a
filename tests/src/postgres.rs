//! Fresh PostgreSQL databases for tests.
//!
//! [`TestDatabase::create`] makes a uniquely named database on the server named by
//! `HELPR_TEST_PG_URL` (default `postgres://postgres@127.0.0.1:5432/postgres`), and dropping
//! the [`TestDatabase`] drops it again (`WITH (FORCE)`, so open pools do not keep it alive).
//! Tests run in parallel processes, each with its own database.

use std::path::Path;

use sqlx::Connection;
use sqlx::postgres::PgConnection;

/// Environment variable naming the administrative connection URL.
pub const PG_URL_ENV: &str = "HELPR_TEST_PG_URL";
/// Administrative URL used when [`PG_URL_ENV`] is not set.
pub const DEFAULT_PG_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// The administrative connection URL (a database the test user may `CREATE DATABASE` from).
pub fn admin_url() -> String {
    std::env::var(PG_URL_ENV).unwrap_or_else(|_| DEFAULT_PG_URL.to_owned())
}

/// A database created for one test; dropped (forcefully) when this value is dropped.
#[derive(Debug)]
pub struct TestDatabase {
    /// URL of the new database.
    pub url: String,
    /// Its name, `helpr_test_<uuid>`.
    pub name: String,
    admin_url: String,
}

impl TestDatabase {
    /// Creates a fresh, empty database.
    pub async fn create() -> anyhow::Result<TestDatabase> {
        let admin_url = admin_url();
        let name = format!("helpr_test_{}", uuid::Uuid::new_v4().simple());
        let mut url = reqwest::Url::parse(&admin_url)
            .map_err(|e| anyhow::anyhow!("{PG_URL_ENV} is not a valid URL: {e}"))?;
        url.set_path(&format!("/{name}"));

        let mut admin = PgConnection::connect(&admin_url).await.map_err(|e| {
            anyhow::anyhow!("cannot connect to PostgreSQL for tests (set {PG_URL_ENV}): {e}")
        })?;
        sqlx::raw_sql(&format!("CREATE DATABASE \"{name}\""))
            .execute(&mut admin)
            .await?;
        admin.close().await.ok();

        Ok(TestDatabase {
            url: url.to_string(),
            name,
            admin_url,
        })
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let admin_url = self.admin_url.clone();
        let name = self.name.clone();
        // Drop runs in sync code, possibly on a runtime thread: use a separate thread with
        // its own small runtime. Errors are ignored (the database may already be gone).
        let handle = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            runtime.block_on(async move {
                if let Ok(mut admin) = PgConnection::connect(&admin_url).await {
                    let sql = format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)");
                    let _ = sqlx::raw_sql(&sql).execute(&mut admin).await;
                    let _ = admin.close().await;
                }
            });
        });
        let _ = handle.join();
    }
}

/// A `sqlite://` URL for a database file `helpr.sqlite` in `dir` (created on connect).
pub fn sqlite_url(dir: &Path) -> String {
    format!("sqlite://{}", dir.join("helpr.sqlite").display())
}
