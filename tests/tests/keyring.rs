//! The keyring against real components: OpenBao transit and PostgreSQL, and the embedded
//! default (local KMS and SQLite).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step panics

use std::sync::Arc;

use helpr_dataplane::crypto::{DekVersion, SealContext};
use helpr_dataplane::ids::TenantId;
use helpr_dataplane::keyring::{Keyring, KeyringConfig, KeyringError};
use helpr_dataplane::kms::local::LocalKms;
use helpr_dataplane::kms::vault::{VaultAuth, VaultConfig, VaultKms};
use helpr_dataplane::kms::{KeyRef, Kms};
use helpr_dataplane::search::blind::blind;
use helpr_dataplane::search::service::SearchService;
use helpr_dataplane::search::{Field, IndexKey, Mode, TantivyConfig, TantivyIndex};
use helpr_dataplane::store::{PgStore, SqliteStore, Store};
use helpr_tests::fixtures::{self, CountingKms, PlainMessage};
use helpr_tests::openbao::OpenBao;
use helpr_tests::postgres::{TestDatabase, sqlite_url};
use helpr_tests::scan;

fn tenant(id: &str) -> TenantId {
    TenantId::new(id).unwrap()
}

fn vault(bao: &OpenBao) -> VaultKms {
    let mut cfg = VaultConfig::new(
        bao.address.clone(),
        VaultAuth::token(bao.root_token.clone()),
    );
    cfg.request_timeout = std::time::Duration::from_secs(2);
    VaultKms::new(cfg).unwrap()
}

struct Real {
    bao: OpenBao,
    db: TestDatabase,
    store: Arc<dyn Store>,
    pool: sqlx::PgPool,
}

async fn real() -> Real {
    let bao = OpenBao::start().await.unwrap();
    let db = TestDatabase::create().await.unwrap();
    let pg = PgStore::connect(&db.url).await.unwrap();
    let pool = pg.pool().clone();
    Real {
        bao,
        db,
        store: Arc::new(pg),
        pool,
    }
}

async fn embedded(dir: &std::path::Path) -> (Arc<dyn Kms>, Arc<dyn Store>, sqlx::SqlitePool) {
    let kms = LocalKms::open(dir.join("kms")).unwrap();
    let store = SqliteStore::connect(&sqlite_url(dir)).await.unwrap();
    let pool = store.pool().clone();
    (Arc::new(kms), Arc::new(store), pool)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_misses_for_one_version_make_one_openbao_call() {
    let r = real().await;
    let acme = tenant("acme");
    let writer = Keyring::new(
        Arc::new(vault(&r.bao)),
        r.store.clone(),
        KeyringConfig::default(),
    );
    writer.provision_tenant(&acme, "Acme").await.unwrap();
    let ctx = SealContext::new("acme", "rec-1", "message.subject");
    let sealed = writer.seal(&ctx, b"quarterly numbers").await.unwrap();

    // A fresh keyring has an empty cache: 64 concurrent opens must cause one unwrap.
    let counting = Arc::new(CountingKms::new(vault(&r.bao)));
    let reader = Arc::new(Keyring::new(
        counting.clone(),
        r.store.clone(),
        KeyringConfig::default(),
    ));
    let tasks: Vec<_> = (0..64)
        .map(|_| {
            let reader = reader.clone();
            let sealed = sealed.clone();
            tokio::spawn(async move {
                let ctx = SealContext::new("acme", "rec-1", "message.subject");
                reader.open(&ctx, &sealed).await.unwrap()
            })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap(), b"quarterly numbers");
    }
    assert_eq!(
        counting.unwraps(),
        1,
        "one KMS call for 64 concurrent misses"
    );
    // Later opens hit the cache.
    reader.open(&ctx, &sealed).await.unwrap();
    assert_eq!(counting.unwraps(), 1);
    drop(r.db);
}

#[tokio::test]
async fn dek_rotation_seals_with_the_new_version_and_leaves_old_rows_byte_identical() {
    let r = real().await;
    let acme = tenant("acme");
    let keyring = Keyring::new(
        Arc::new(vault(&r.bao)),
        r.store.clone(),
        KeyringConfig::default(),
    );
    keyring.provision_tenant(&acme, "Acme").await.unwrap();
    let inbox = fixtures::create_inbox(&*r.store, &acme, "support@acme.example").await;
    let mut old_ids = Vec::new();
    for i in 0..5 {
        let msg = fixtures::seal_message(
            &keyring,
            &acme,
            &inbox,
            &format!("g{i}"),
            "t1",
            &PlainMessage::marked(&format!("old{i}")),
        )
        .await;
        assert_eq!(msg.fields.subject.key_version().unwrap(), DekVersion::FIRST);
        old_ids.push(msg.id.clone());
        r.store.insert_message(&msg).await.unwrap();
    }
    let before = scan::dump_all_bytes_postgres(&r.pool).await.unwrap();
    let messages_before: Vec<_> = before
        .iter()
        .filter(|c| c.0 == "messages" || c.0 == "attachments")
        .cloned()
        .collect();

    let v2 = keyring.rotate_dek(&acme).await.unwrap();
    assert_eq!(v2.get(), 2);
    let msg = fixtures::seal_message(
        &keyring,
        &acme,
        &inbox,
        "new",
        "t2",
        &PlainMessage::marked("new"),
    )
    .await;
    assert_eq!(msg.fields.subject.key_version().unwrap(), v2);
    assert_eq!(msg.attachments[0].data.key_version().unwrap(), v2);

    let after = scan::dump_all_bytes_postgres(&r.pool).await.unwrap();
    let messages_after: Vec<_> = after
        .iter()
        .filter(|c| c.0 == "messages" || c.0 == "attachments")
        .cloned()
        .collect();
    assert_eq!(
        messages_before, messages_after,
        "rotation re-encrypted nothing"
    );

    // Everything sealed before still opens, through a fresh keyring (cold cache).
    let fresh = Keyring::new(
        Arc::new(vault(&r.bao)),
        r.store.clone(),
        KeyringConfig::default(),
    );
    for (i, id) in old_ids.iter().enumerate() {
        let stored = r.store.get_message(&acme, id).await.unwrap().unwrap();
        let plain = fixtures::open_message(&fresh, r.store.as_ref(), &stored).await;
        assert_eq!(
            plain.fields[0],
            PlainMessage::marked(&format!("old{i}")).fields[0]
        );
    }
    let status = keyring.status(&acme).await.unwrap();
    assert_eq!(status.len(), 2);
    assert!(status[0].retired && !status[0].current);
    assert!(!status[1].retired && status[1].current);
    drop(r.db);
}

#[tokio::test]
async fn kek_rotation_rewraps_every_dek_and_data_opens_after_min_decryption_version_is_raised() {
    let r = real().await;
    let acme = tenant("acme");
    let kms = vault(&r.bao);
    let keyring = Keyring::new(
        Arc::new(vault(&r.bao)),
        r.store.clone(),
        KeyringConfig::default(),
    );
    keyring.provision_tenant(&acme, "Acme").await.unwrap();
    let c1 = SealContext::new("acme", "r1", "message.subject");
    let c2 = SealContext::new("acme", "r2", "message.subject");
    let s1 = keyring.seal(&c1, b"under dek v1").await.unwrap();
    keyring.rotate_dek(&acme).await.unwrap();
    let s2 = keyring.seal(&c2, b"under dek v2").await.unwrap();

    // The search index key is wrapped like a DEK, so it is rewrapped too.
    let keyring = Arc::new(keyring);
    let dir = tempfile::tempdir().unwrap();
    let search = |keyring: Arc<Keyring>| {
        let index = TantivyIndex::open(TantivyConfig::new(dir.path().join("index"))).unwrap();
        SearchService::new(keyring, Arc::new(index), Mode::Blind)
    };
    let index_key = search(keyring.clone()).index_key(&acme).await.unwrap();
    let token = |key: &IndexKey| blind(key, Field::Body, "invoice");
    let before = token(&index_key);

    let rotation = keyring.rotate_kek(&acme).await.unwrap();
    assert_eq!(rotation.kek_version, 2);
    assert_eq!(rotation.rewrapped, 2);
    assert_eq!(rotation.index_keys_rewrapped, 1);
    for v in r.store.list_key_versions(&acme).await.unwrap() {
        assert!(
            v.wrapped_dek.starts_with("vault:v2:"),
            "rewrapped under kek v2"
        );
    }
    for v in r.store.list_index_keys(&acme).await.unwrap() {
        assert!(
            v.wrapped_key.starts_with("vault:v2:"),
            "rewrapped under kek v2"
        );
    }
    let key = KeyRef::new(
        r.store.list_key_versions(&acme).await.unwrap()[0]
            .kms_key_ref
            .clone(),
    );
    kms.set_min_decryption_version(&key, 2).await.unwrap();
    assert_eq!(kms.key_info(&key).await.unwrap().min_decryption_version, 2);

    let fresh = Keyring::new(
        Arc::new(vault(&r.bao)),
        r.store.clone(),
        KeyringConfig::default(),
    );
    assert_eq!(fresh.open(&c1, &s1).await.unwrap(), b"under dek v1");
    assert_eq!(fresh.open(&c2, &s2).await.unwrap(), b"under dek v2");
    let status = fresh.status(&acme).await.unwrap();
    assert!(status.iter().all(|v| v.kek_version == Some(2)));
    // The same index key, so the index needs nothing.
    let unwrapped = search(Arc::new(fresh)).index_key(&acme).await.unwrap();
    assert_eq!(token(&unwrapped), before);
    drop(r.db);
}

#[tokio::test]
async fn a_dek_at_its_seal_bound_is_retired_and_the_next_version_is_created() {
    let dir = tempfile::tempdir().unwrap();
    let (kms, store, _pool) = embedded(dir.path()).await;
    let cfg = KeyringConfig {
        seal_bound: 5,
        seal_reservation: 2,
        ..KeyringConfig::default()
    };
    let acme = tenant("acme");
    let keyring = Keyring::new(kms.clone(), store.clone(), cfg.clone());
    keyring.provision_tenant(&acme, "Acme").await.unwrap();
    let mut sealed = Vec::new();
    for i in 0..12 {
        let record = format!("r{i}");
        let ctx = SealContext::new("acme", &record, "message.subject");
        sealed.push((
            record.clone(),
            keyring.seal(&ctx, record.as_bytes()).await.unwrap(),
        ));
    }
    let versions: Vec<u32> = sealed
        .iter()
        .map(|(_, s)| s.key_version().unwrap().get())
        .collect();
    assert_eq!(versions, [1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 3, 3]);
    let status = keyring.status(&acme).await.unwrap();
    assert_eq!(status.len(), 3);
    assert!(status[0].retired && status[1].retired && !status[2].retired);
    assert_eq!((status[0].seal_count, status[1].seal_count), (5, 5));
    // Counts are reserved in blocks of 2: the stored count covers the 2 seals made.
    assert!(status[2].seal_count >= 2 && status[2].seal_count <= 5);

    // A second process shares the persisted counts and never passes the bound.
    let other = Keyring::new(kms, store.clone(), cfg);
    for i in 0..6 {
        let record = format!("o{i}");
        let ctx = SealContext::new("acme", &record, "message.subject");
        other.seal(&ctx, b"x").await.unwrap();
    }
    for v in store.list_key_versions(&acme).await.unwrap() {
        assert!(
            v.seal_count <= 5,
            "{} sealed {} times",
            v.version,
            v.seal_count
        );
    }
    for (record, s) in &sealed {
        let ctx = SealContext::new("acme", record, "message.subject");
        assert_eq!(other.open(&ctx, s).await.unwrap(), record.as_bytes());
    }
}

#[tokio::test]
async fn seal_many_reserves_across_versions_and_counts_every_seal() {
    let dir = tempfile::tempdir().unwrap();
    let (kms, store, _pool) = embedded(dir.path()).await;
    let cfg = KeyringConfig {
        seal_bound: 10,
        seal_reservation: 4,
        ..KeyringConfig::default()
    };
    let acme = tenant("acme");
    let keyring = Keyring::new(kms, store.clone(), cfg);
    keyring.provision_tenant(&acme, "Acme").await.unwrap();
    let records: Vec<String> = (0..25).map(|i| format!("r{i}")).collect();
    let items: Vec<_> = records
        .iter()
        .map(|r| {
            (
                SealContext::new("acme", r, "message.text_body"),
                r.as_bytes(),
            )
        })
        .collect();
    let sealed = keyring.seal_many(&acme, &items).await.unwrap();
    assert_eq!(sealed.len(), 25);
    let versions = store.list_key_versions(&acme).await.unwrap();
    assert_eq!(versions.len(), 3);
    let total: u64 = versions.iter().map(|v| v.seal_count).sum();
    assert!(total >= 25);
    for v in &versions {
        assert!(v.seal_count <= 10);
    }
    for ((ctx, pt), s) in items.iter().zip(&sealed) {
        assert_eq!(keyring.open(ctx, s).await.unwrap(), *pt);
    }
}

#[tokio::test]
async fn kms_outage_is_retryable_and_writes_nothing() {
    let mut r = real().await;
    let acme = tenant("acme");
    let keyring = Keyring::new(
        Arc::new(vault(&r.bao)),
        r.store.clone(),
        KeyringConfig::default(),
    );
    keyring.provision_tenant(&acme, "Acme").await.unwrap();
    let ctx = SealContext::new("acme", "r1", "message.subject");
    let sealed = keyring.seal(&ctx, b"before the outage").await.unwrap();
    let before = scan::dump_all_bytes_postgres(&r.pool).await.unwrap();

    r.bao.stop();
    let globex = tenant("globex");
    let err = keyring
        .provision_tenant(&globex, "Globex")
        .await
        .unwrap_err();
    assert!(err.is_retryable(), "{err}");
    assert!(matches!(err, KeyringError::Kms(_)), "{err}");
    let err = keyring.rotate_dek(&acme).await.unwrap_err();
    assert!(err.is_retryable(), "{err}");
    let err = keyring.rotate_kek(&acme).await.unwrap_err();
    assert!(err.is_retryable(), "{err}");
    let cold = Keyring::new(
        Arc::new(vault(&r.bao)),
        r.store.clone(),
        KeyringConfig::default(),
    );
    let err = cold.open(&ctx, &sealed).await.unwrap_err();
    assert!(err.is_retryable(), "{err}");

    let after = scan::dump_all_bytes_postgres(&r.pool).await.unwrap();
    assert_eq!(before, after, "nothing was written during the outage");
    assert!(r.store.get_tenant(&globex).await.unwrap().is_none());
    // The warm keyring keeps working from its cache.
    assert_eq!(
        keyring.open(&ctx, &sealed).await.unwrap(),
        b"before the outage"
    );
    drop(r.db);
}

#[tokio::test]
async fn database_outage_is_retryable() {
    let dir = tempfile::tempdir().unwrap();
    let kms: Arc<dyn Kms> = Arc::new(LocalKms::open(dir.path().join("kms")).unwrap());
    let pool = sqlx::postgres::PgPoolOptions::new()
        .acquire_timeout(std::time::Duration::from_millis(500))
        .connect_lazy("postgres://postgres@127.0.0.1:1/none")
        .unwrap();
    let store: Arc<dyn Store> = Arc::new(PgStore::from_pool(pool));
    let keyring = Keyring::new(kms, store, KeyringConfig::default());
    let err = keyring
        .provision_tenant(&tenant("acme"), "Acme")
        .await
        .unwrap_err();
    assert!(err.is_retryable(), "{err}");
    let err = keyring
        .seal(&SealContext::new("acme", "r", "message.subject"), b"x")
        .await
        .unwrap_err();
    assert!(err.is_retryable(), "{err}");
}

#[tokio::test]
async fn cache_is_bounded_and_expires_so_evicted_keys_are_unwrapped_again() {
    let dir = tempfile::tempdir().unwrap();
    let (kms, store, _pool) = embedded(dir.path()).await;
    let counting = Arc::new(CountingKms::new(
        LocalKms::open(dir.path().join("kms")).unwrap(),
    ));
    let setup = Keyring::new(kms, store.clone(), KeyringConfig::default());
    let mut sealed = Vec::new();
    for t in ["t1", "t2", "t3"] {
        setup.provision_tenant(&tenant(t), t).await.unwrap();
        let ctx = SealContext::new(t, "r", "message.subject");
        sealed.push((t, setup.seal(&ctx, t.as_bytes()).await.unwrap()));
    }
    let cfg = KeyringConfig {
        cache_max_entries: 2,
        ..KeyringConfig::default()
    };
    let reader = Keyring::new(counting.clone(), store.clone(), cfg);
    for (t, s) in &sealed {
        let ctx = SealContext::new(t, "r", "message.subject");
        reader.open(&ctx, s).await.unwrap();
        assert!(reader.cached_keys() <= 2);
    }
    assert_eq!(counting.unwraps(), 3);
    // t1 was evicted by size: opening it again asks the KMS again.
    let ctx = SealContext::new("t1", "r", "message.subject");
    reader.open(&ctx, &sealed[0].1).await.unwrap();
    assert_eq!(counting.unwraps(), 4);

    let expiring = Keyring::new(
        counting.clone(),
        store,
        KeyringConfig {
            cache_ttl_secs: 0,
            ..KeyringConfig::default()
        },
    );
    expiring.open(&ctx, &sealed[0].1).await.unwrap();
    assert_eq!(expiring.evict_expired(), 1);
    assert_eq!(expiring.cached_keys(), 0);
    expiring.open(&ctx, &sealed[0].1).await.unwrap();
    assert_eq!(counting.unwraps(), 6, "expired key unwrapped again");
}

#[tokio::test]
async fn unknown_tenant_and_unprovisioned_tenant_get_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let (kms, store, _pool) = embedded(dir.path()).await;
    let keyring = Keyring::new(kms, store, KeyringConfig::default());
    let ghost = tenant("ghost");
    let err = keyring.status(&ghost).await.unwrap_err();
    assert!(matches!(err, KeyringError::UnknownTenant(_)), "{err}");
    let err = keyring
        .seal(&SealContext::new("ghost", "r", "message.subject"), b"x")
        .await
        .unwrap_err();
    assert!(matches!(err, KeyringError::NoKey(_)), "{err}");
    let err = keyring
        .seal(
            &SealContext::new("Not A Tenant", "r", "message.subject"),
            b"x",
        )
        .await
        .unwrap_err();
    assert!(matches!(err, KeyringError::InvalidId(_)), "{err}");
}
