//! Zero plaintext at rest: 1,000 messages whose every field carries a unique canary are
//! stored through the real keyring; then no canary may appear in any column of any table
//! (both backends), nor in the SQLite database file or its -wal and -shm files.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step panics

use std::path::Path;
use std::sync::Arc;

use helpr_dataplane::ids::TenantId;
use helpr_dataplane::keyring::{Keyring, KeyringConfig};
use helpr_dataplane::kms::Kms;
use helpr_dataplane::kms::local::LocalKms;
use helpr_dataplane::kms::vault::{VaultAuth, VaultConfig, VaultKms};
use helpr_dataplane::store::{InsertOutcome, PgStore, SqliteStore, Store};
use helpr_tests::fixtures::{self, PlainMessage};
use helpr_tests::openbao::OpenBao;
use helpr_tests::postgres::{TestDatabase, sqlite_url};
use helpr_tests::scan::{self, Cell, contains_bytes};

const MESSAGES: usize = 1000;
/// Every canary starts with this; no canary can be present if the prefix is absent.
const PREFIX: &str = "CaNaRy";
/// A plaintext column (the inbox address is configuration): the scan must find it, which
/// proves the scan reads what the database holds.
const CONTROL: &str = "scan-control-7f3a";

fn canary(i: usize) -> String {
    format!("{PREFIX}{i:05}x")
}

/// Every canary variant a leak could take: as written, lowercased, uppercased.
fn needles() -> Vec<Vec<u8>> {
    vec![
        PREFIX.as_bytes().to_vec(),
        PREFIX.to_lowercase().into_bytes(),
        PREFIX.to_uppercase().into_bytes(),
    ]
}

async fn store_canaries(keyring: &Keyring, store: &dyn Store) -> Vec<(String, PlainMessage)> {
    let acme = TenantId::new("acme").unwrap();
    keyring.provision_tenant(&acme, "Acme").await.unwrap();
    let inbox = fixtures::create_inbox(store, &acme, &format!("support@{CONTROL}.example")).await;
    let mut stored = Vec::with_capacity(MESSAGES);
    for i in 0..MESSAGES {
        let plain = PlainMessage::marked(&canary(i));
        let msg = fixtures::seal_message(
            keyring,
            &acme,
            &inbox,
            &format!("gmail-{i}"),
            &format!("thread-{}", i / 3),
            &plain,
        )
        .await;
        let outcome = store.insert_message(&msg).await.unwrap();
        assert!(matches!(outcome, InsertOutcome::Inserted { .. }));
        stored.push((msg.id, plain));
    }
    stored
}

/// The canaries really went in: a sample of messages opens back to them.
async fn assert_round_trip(
    keyring: &Keyring,
    store: &dyn Store,
    stored: &[(String, PlainMessage)],
) {
    let acme = TenantId::new("acme").unwrap();
    for (id, plain) in stored.iter().step_by(97) {
        let msg = store.get_message(&acme, id).await.unwrap().unwrap();
        let opened = fixtures::open_message(keyring, store, &msg).await;
        assert_eq!(opened.fields, plain.fields);
        assert_eq!(opened.attachments, plain.attachments);
        assert!(opened.fields.iter().all(|f| f.contains(PREFIX)));
    }
}

fn assert_no_canary_in_cells(cells: &[Cell]) {
    assert!(
        cells
            .iter()
            .any(|(_, _, b)| contains_bytes(b, CONTROL.as_bytes())),
        "control value not found: the scan does not read the tables"
    );
    let tables: std::collections::BTreeSet<&str> = cells.iter().map(|c| c.0.as_str()).collect();
    for t in [
        "messages",
        "attachments",
        "tenant_keys",
        "inboxes",
        "conversations",
    ] {
        assert!(tables.contains(t), "table {t} was not scanned: {tables:?}");
    }
    let sealed_bytes: usize = cells
        .iter()
        .filter(|c| c.0 == "messages" || c.0 == "attachments")
        .map(|c| c.2.len())
        .sum();
    assert!(
        sealed_bytes > MESSAGES * 300,
        "the messages are in the scanned cells"
    );
    for needle in needles() {
        let hits: Vec<_> = cells
            .iter()
            .filter(|(_, _, b)| contains_bytes(b, &needle))
            .map(|(t, c, _)| format!("{t}.{c}"))
            .collect();
        assert!(hits.is_empty(), "canary found in {hits:?}");
    }
}

fn assert_no_canary_in_files(dir: &Path) -> usize {
    let mut scanned = 0;
    let mut control_seen = false;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        if !name.starts_with("helpr.sqlite") {
            continue;
        }
        // SQLite removes its -wal and -shm files when the last connection closes (after
        // checkpointing the WAL into the database file, which is scanned too): a file listed
        // a moment ago may be gone, and then holds nothing.
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => panic!("read {name}: {e}"),
        };
        scanned += 1;
        control_seen |= contains_bytes(&bytes, CONTROL.as_bytes());
        for needle in needles() {
            assert!(!contains_bytes(&bytes, &needle), "canary found in {name}");
        }
    }
    assert!(
        control_seen,
        "control value not found in the database files"
    );
    scanned
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_canary_reaches_any_sqlite_table_or_database_file() {
    let dir = tempfile::tempdir().unwrap();
    let kms: Arc<dyn Kms> = Arc::new(LocalKms::open(dir.path().join("kms")).unwrap());
    let sqlite = SqliteStore::connect(&sqlite_url(dir.path())).await.unwrap();
    let pool = sqlite.pool().clone();
    let store: Arc<dyn Store> = Arc::new(sqlite);
    let keyring = Keyring::new(kms, store.clone(), KeyringConfig::default());
    let stored = store_canaries(&keyring, &*store).await;
    assert_round_trip(&keyring, &*store, &stored).await;

    assert_no_canary_in_cells(&scan::dump_all_bytes_sqlite(&pool).await.unwrap());
    // While the pool is open the WAL and shared-memory files exist and hold recent pages.
    let wal = dir.path().join("helpr.sqlite-wal");
    assert!(wal.exists(), "WAL mode is on, so the -wal file exists");
    assert!(dir.path().join("helpr.sqlite-shm").exists());
    assert_eq!(assert_no_canary_in_files(dir.path()), 3);

    // Deleting messages must not leave their (sealed) bytes in free pages either, and
    // the files stay clean after a checkpoint and close.
    let acme = TenantId::new("acme").unwrap();
    for (id, _) in stored.iter().take(100) {
        assert!(store.delete_message(&acme, id).await.unwrap());
    }
    pool.close().await;
    assert!(assert_no_canary_in_files(dir.path()) >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_canary_reaches_any_postgres_table() {
    let bao = OpenBao::start().await.unwrap();
    let db = TestDatabase::create().await.unwrap();
    let pg = PgStore::connect(&db.url).await.unwrap();
    let pool = pg.pool().clone();
    let store: Arc<dyn Store> = Arc::new(pg);
    let kms = VaultKms::new(VaultConfig::new(
        bao.address.clone(),
        VaultAuth::token(bao.root_token.clone()),
    ))
    .unwrap();
    let keyring = Keyring::new(Arc::new(kms), store.clone(), KeyringConfig::default());
    let stored = store_canaries(&keyring, &*store).await;
    assert_round_trip(&keyring, &*store, &stored).await;
    assert_no_canary_in_cells(&scan::dump_all_bytes_postgres(&pool).await.unwrap());
    drop(db);
}
