//! One conformance suite for the `Store` trait, run against PostgreSQL and SQLite.
//!
//! Each case in [`cases`] takes a [`Backend`] (an `Arc<dyn Store>` plus the means to read
//! the raw database) and is instantiated once per backend by `conformance!`, giving the
//! tests `postgres::<case>` and `sqlite::<case>`. Every test gets its own database.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use helpr_dataplane::crypto::{Dek, DekVersion, SealContext, SealedField, SealingKey, seal};
use helpr_dataplane::ids::{TenantId, new_record_id};
use helpr_dataplane::search::Mode;
use helpr_dataplane::store::{
    AuditEvent, EnqueueOutcome, InboxStatus, InsertOutcome, KeyVersionRecord, MessageFields,
    NewAttachment, NewInbox, NewMessage, NewSyncJob, NewTenant, PgStore, SealReservation,
    SqliteStore, Store, StoreError, now_ms,
};
use helpr_dataplane::store::{DeleteReason, Deletion, PurgeOutcome, RestoreOutcome};
use helpr_dataplane::store::{SearchTombstone, TombstoneScope};
use helpr_tests::postgres::{TestDatabase, sqlite_url};
use helpr_tests::scan::{self, Cell};
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::sqlite::SqlitePool;

// --- backends ---------------------------------------------------------------------------

enum Raw {
    Postgres {
        pool: PgPool,
        // Dropped last: drops the database.
        _db: TestDatabase,
    },
    Sqlite {
        pool: SqlitePool,
        path: std::path::PathBuf,
        dir: tempfile::TempDir,
    },
}

pub struct Backend {
    store: Arc<dyn Store>,
    raw: Raw,
}

impl Backend {
    async fn postgres() -> anyhow::Result<Self> {
        let db = TestDatabase::create().await?;
        let store = PgStore::connect(&db.url).await?;
        let pool = store.pool().clone();
        Ok(Self {
            store: Arc::new(store),
            raw: Raw::Postgres { pool, _db: db },
        })
    }

    async fn sqlite() -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let url = sqlite_url(dir.path());
        let store = SqliteStore::connect(&url).await?;
        let pool = store.pool().clone();
        let path = dir.path().join("helpr.sqlite");
        anyhow::ensure!(path.exists(), "sqlite_url does not point at {path:?}");
        Ok(Self {
            store: Arc::new(store),
            raw: Raw::Sqlite { pool, path, dir },
        })
    }

    fn store(&self) -> &dyn Store {
        self.store.as_ref()
    }

    /// Every non-NULL cell of every table.
    async fn dump(&self) -> anyhow::Result<Vec<Cell>> {
        match &self.raw {
            Raw::Postgres { pool, .. } => scan::dump_all_bytes_postgres(pool).await,
            Raw::Sqlite { pool, .. } => scan::dump_all_bytes_sqlite(pool).await,
        }
    }

    /// For SQLite, the bytes of the database files after a full checkpoint.
    async fn raw_files(&self) -> anyhow::Result<Option<Vec<u8>>> {
        match &self.raw {
            Raw::Postgres { .. } => Ok(None),
            Raw::Sqlite { pool, path, .. } => {
                sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
                    .execute(pool)
                    .await?;
                let mut bytes = std::fs::read(path)?;
                let wal = path.with_extension("sqlite-wal");
                if wal.exists() {
                    bytes.extend(std::fs::read(wal)?);
                }
                Ok(Some(bytes))
            }
        }
    }

    /// A store of the same backend whose database cannot be reached.
    async fn unreachable_store(&self) -> anyhow::Result<Arc<dyn Store>> {
        match &self.raw {
            Raw::Postgres { .. } => {
                // Nothing listens on port 1; the URL carries a password that must not leak.
                let pool = PgPoolOptions::new()
                    .acquire_timeout(Duration::from_millis(500))
                    .connect_lazy("postgres://postgres:s3cret-pw@127.0.0.1:1/helpr")?;
                Ok(Arc::new(PgStore::from_pool(pool)))
            }
            Raw::Sqlite { dir, .. } => {
                let url = format!("sqlite://{}", dir.path().join("closed.sqlite").display());
                let store = SqliteStore::connect(&url).await?;
                store.pool().close().await;
                Ok(Arc::new(store))
            }
        }
    }
}

// --- fixtures ---------------------------------------------------------------------------

fn tid(s: &str) -> TenantId {
    TenantId::new(s).unwrap()
}

fn key() -> SealingKey {
    SealingKey::new(DekVersion::FIRST, &Dek::generate().unwrap())
}

fn sealed(key: &SealingKey, tenant: &TenantId, record: &str, field: &str) -> SealedField {
    let plaintext = format!("{field} of {record}: {}", new_record_id());
    seal(
        key,
        &SealContext::new(tenant.as_str(), record, field),
        plaintext.as_bytes(),
    )
    .unwrap()
}

/// A sealed value with a valid header but arbitrary body (no key needed).
fn fake_sealed(version: u32, body: &[u8]) -> SealedField {
    let mut bytes = vec![0x01];
    bytes.extend_from_slice(&version.to_be_bytes());
    bytes.extend_from_slice(&[7u8; 12]);
    bytes.extend_from_slice(body);
    bytes.extend_from_slice(&[9u8; 16]);
    SealedField::from_bytes(bytes).unwrap()
}

fn message(
    key: &SealingKey,
    tenant: &TenantId,
    inbox_id: &str,
    gmail_id: &str,
    thread: &str,
    date: i64,
    attachments: usize,
) -> NewMessage {
    let id = new_record_id();
    let [s, f, t, c, r, tb, hb, sn] =
        MessageFields::FIELD_NAMES.map(|n| sealed(key, tenant, &id, n));
    let attachments = (0..attachments)
        .map(|i| {
            let aid = new_record_id();
            let [name, content_type, content_id, data] =
                NewAttachment::FIELD_NAMES.map(|n| sealed(key, tenant, &aid, n));
            NewAttachment {
                id: aid,
                ordinal: u32::try_from(i).unwrap(),
                name,
                content_type,
                content_id,
                data,
                size_bytes: 1000 + i as u64,
                inline: i % 2 == 1,
            }
        })
        .collect();
    NewMessage {
        id,
        tenant_id: tenant.clone(),
        inbox_id: inbox_id.to_owned(),
        gmail_message_id: gmail_id.to_owned(),
        gmail_thread_id: thread.to_owned(),
        gmail_history_id: Some(9_000_000_000_000 + date.unsigned_abs()),
        internal_date_ms: date,
        size_bytes: 123_456,
        fields: MessageFields {
            subject: s,
            from_addr: f,
            to_addrs: t,
            cc_addrs: c,
            reply_to: r,
            text_body: tb,
            html_body: hb,
            snippet: sn,
        },
        attachments,
    }
}

fn sealed_values(m: &NewMessage) -> Vec<&SealedField> {
    let f = &m.fields;
    let mut v = vec![
        &f.subject,
        &f.from_addr,
        &f.to_addrs,
        &f.cc_addrs,
        &f.reply_to,
        &f.text_body,
        &f.html_body,
        &f.snippet,
    ];
    for a in &m.attachments {
        v.extend([&a.name, &a.content_type, &a.content_id, &a.data]);
    }
    v
}

fn key_record(tenant: &TenantId, version: u32, wrapped: &str) -> KeyVersionRecord {
    KeyVersionRecord {
        tenant_id: tenant.clone(),
        version: DekVersion::new(version).unwrap(),
        wrapped_dek: wrapped.to_owned(),
        kms_key_ref: format!("helpr-{tenant}"),
        seal_count: 0,
        retired: false,
        created_at_ms: now_ms(),
    }
}

async fn tenant(store: &dyn Store, id: &str) -> TenantId {
    let id = tid(id);
    store
        .create_tenant(&NewTenant {
            id: id.clone(),
            display_name: format!("Tenant {id}"),
        })
        .await
        .unwrap();
    id
}

async fn inbox(store: &dyn Store, tenant: &TenantId, address: &str) -> String {
    let id = new_record_id();
    store
        .create_inbox(&NewInbox {
            id: id.clone(),
            tenant_id: tenant.clone(),
            address: address.to_owned(),
            connected_at_ms: 1_700_000_000_000,
        })
        .await
        .unwrap();
    id
}

fn count(cells: &[Cell], table: &str, column: &str) -> usize {
    cells
        .iter()
        .filter(|(t, c, _)| t == table && c == column)
        .count()
}

fn values(cells: &[Cell], table: &str, column: &str) -> Vec<String> {
    let mut v: Vec<String> = cells
        .iter()
        .filter(|(t, c, _)| t == table && c == column)
        .map(|(_, _, b)| String::from_utf8_lossy(b).into_owned())
        .collect();
    v.sort();
    v
}

// --- cases ------------------------------------------------------------------------------

mod cases {
    use super::*;

    pub async fn sync_jobs_enqueue_replay_duplicate_and_claim(b: &Backend) -> anyhow::Result<()> {
        let s = b.store();
        let acme = tenant(s, "acme").await;
        let globex = tenant(s, "globex").await;
        let inbox_id = inbox(s, &acme, "Support@Acme.example").await;
        let other = inbox(s, &globex, "help@globex.example").await;

        let found = s.find_inboxes_by_address("support@acme.EXAMPLE").await?;
        assert_eq!(found.len(), 1, "address lookup ignores case");
        assert_eq!(found[0].id, inbox_id);
        assert!(
            s.find_inboxes_by_address("nobody@acme.example")
                .await?
                .is_empty()
        );

        let job = |pubsub: Option<&str>, history: u64| NewSyncJob {
            id: new_record_id(),
            tenant_id: acme.clone(),
            inbox_id: inbox_id.clone(),
            pubsub_message_id: pubsub.map(str::to_owned),
            history_id: history,
        };
        assert_eq!(
            s.enqueue_sync_job(&job(Some("m1"), 100)).await?,
            EnqueueOutcome::Enqueued
        );
        assert_eq!(
            s.enqueue_sync_job(&job(Some("m1"), 101)).await?,
            EnqueueOutcome::Duplicate
        );
        assert_eq!(
            s.enqueue_sync_job(&job(Some("m2"), 102)).await?,
            EnqueueOutcome::Enqueued
        );
        // Another tenant cannot enqueue for this inbox.
        let mut foreign = job(Some("m9"), 500);
        foreign.tenant_id = globex.clone();
        assert!(matches!(
            s.enqueue_sync_job(&foreign).await,
            Err(StoreError::NotFound(_))
        ));

        // Concurrent redeliveries of one Pub/Sub message record one job.
        let tasks: Vec<_> = (0..6)
            .map(|_| {
                let store = b.store.clone();
                let j = job(Some("m3"), 103);
                tokio::spawn(async move { store.enqueue_sync_job(&j).await })
            })
            .collect();
        let mut enqueued = 0;
        for t in tasks {
            if t.await?? == EnqueueOutcome::Enqueued {
                enqueued += 1;
            }
        }
        assert_eq!(enqueued, 1);

        // Claims: each job once, across concurrent claimers.
        let now = now_ms();
        let claimers: Vec<_> = (0..4)
            .map(|_| {
                let store = b.store.clone();
                let acme = acme.clone();
                tokio::spawn(async move { store.claim_sync_jobs(&acme, 2, now, 60_000).await })
            })
            .collect();
        let mut claimed = Vec::new();
        for c in claimers {
            claimed.extend(c.await??);
        }
        let mut ids: Vec<_> = claimed.iter().map(|j| j.id.clone()).collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), 3, "three jobs, each claimed once");
        assert_eq!(claimed.len(), 3);
        assert!(
            claimed
                .iter()
                .all(|j| j.attempts == 1 && j.inbox_id == inbox_id)
        );
        assert!(
            s.claim_sync_jobs(&globex, 10, now, 60_000)
                .await?
                .is_empty()
        );
        assert!(
            s.claim_sync_jobs(&acme, 10, now, 60_000).await?.is_empty(),
            "leased"
        );

        // An expired lease is claimed again (a worker died).
        let reclaimed = s.claim_sync_jobs(&acme, 10, now + 61_000, 60_000).await?;
        assert_eq!(reclaimed.len(), 3);
        assert!(reclaimed.iter().all(|j| j.attempts == 2));

        // Retry later, complete, fail.
        let (first, rest) = ids.split_first().unwrap();
        s.retry_sync_jobs(std::slice::from_ref(first), now + 5_000, "kms_unavailable")
            .await?;
        assert!(
            s.claim_sync_jobs(&acme, 10, now + 4_000, 60_000)
                .await?
                .is_empty(),
            "not due"
        );
        let again = s.claim_sync_jobs(&acme, 10, now + 5_000, 60_000).await?;
        assert_eq!(again.len(), 1);
        assert_eq!(&again[0].id, first);
        s.complete_sync_jobs(std::slice::from_ref(first)).await?;
        s.fail_sync_jobs(rest, "needs_reconnect").await?;
        assert!(
            s.claim_sync_jobs(&acme, 10, now + 10_000_000, 60_000)
                .await?
                .is_empty()
        );
        let cells = b.dump().await?;
        let mut states = values(&cells, "sync_jobs", "state");
        states.dedup();
        assert_eq!(states, vec!["done", "failed"]);
        let _ = other;
        Ok(())
    }

    pub async fn synced_messages_advance_the_high_water_mark_atomically(
        b: &Backend,
    ) -> anyhow::Result<()> {
        let s = b.store();
        let acme = tenant(s, "acme").await;
        let inbox_id = inbox(s, &acme, "support@acme.example").await;
        let k = key();
        let m1 = message(&k, &acme, &inbox_id, "g1", "t1", 1_000, 1);
        let m2 = message(&k, &acme, &inbox_id, "g2", "t1", 2_000, 0);
        let outcomes = s
            .store_synced_messages(&acme, &inbox_id, &[m1.clone(), m2.clone()], Some(500))
            .await?;
        assert!(
            outcomes
                .iter()
                .all(|o| matches!(o, InsertOutcome::Inserted { .. }))
        );
        assert_eq!(s.get_inbox(&inbox_id).await?.unwrap().history_id, Some(500));
        assert_eq!(s.latest_message_date(&inbox_id).await?, Some(2_000));
        let mut stored = s
            .stored_gmail_ids(&inbox_id, &["g1".into(), "g2".into(), "g3".into()])
            .await?;
        stored.sort();
        assert_eq!(stored, vec!["g1", "g2"]);

        // Replays are skipped and the mark never moves backwards.
        let m3 = message(&k, &acme, &inbox_id, "g3", "t2", 3_000, 0);
        let outcomes = s
            .store_synced_messages(&acme, &inbox_id, &[m1.clone(), m3], Some(400))
            .await?;
        assert!(matches!(outcomes[0], InsertOutcome::AlreadyStored { .. }));
        assert!(matches!(outcomes[1], InsertOutcome::Inserted { .. }));
        assert_eq!(s.get_inbox(&inbox_id).await?.unwrap().history_id, Some(500));
        s.store_synced_messages(&acme, &inbox_id, &[], Some(900))
            .await?;
        assert_eq!(s.get_inbox(&inbox_id).await?.unwrap().history_id, Some(900));
        // A job at or below the mark is a replay.
        let replay = NewSyncJob {
            id: new_record_id(),
            tenant_id: acme.clone(),
            inbox_id: inbox_id.clone(),
            pubsub_message_id: Some("late".into()),
            history_id: 900,
        };
        assert_eq!(s.enqueue_sync_job(&replay).await?, EnqueueOutcome::Replay);

        // A batch that fails writes nothing: neither messages nor the mark.
        let before = b.dump().await?;
        let good = message(&k, &acme, &inbox_id, "g4", "t3", 4_000, 0);
        let mut bad = message(&k, &acme, &inbox_id, "g5", "t3", 5_000, 0);
        bad.id = good.id.clone(); // same record id: the second insert violates the key
        let err = s
            .store_synced_messages(&acme, &inbox_id, &[good, bad], Some(2_000))
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::Conflict(_)), "{err}");
        assert_eq!(
            b.dump().await?,
            before,
            "a failed batch leaves nothing behind"
        );
        // Messages of another inbox are refused.
        let elsewhere = inbox(s, &acme, "sales@acme.example").await;
        let stray = message(&k, &acme, &elsewhere, "g6", "t4", 6_000, 0);
        assert!(
            s.store_synced_messages(&acme, &inbox_id, &[stray], None)
                .await
                .is_err()
        );
        Ok(())
    }

    pub async fn inbox_status_and_refresh_token_compare_and_swap(
        b: &Backend,
    ) -> anyhow::Result<()> {
        let s = b.store();
        let acme = tenant(s, "acme").await;
        let inbox_id = inbox(s, &acme, "support@acme.example").await;
        let t1 = fake_sealed(1, b"token one");
        let t2 = fake_sealed(1, b"token two");
        let t3 = fake_sealed(1, b"token three");
        s.set_refresh_token(&inbox_id, &t1).await?;
        assert_eq!(
            s.get_inbox(&inbox_id).await?.unwrap().refresh_token,
            Some(t1.clone())
        );
        assert!(s.replace_refresh_token(&inbox_id, &t1, &t2).await?);
        assert!(
            !s.replace_refresh_token(&inbox_id, &t1, &t3).await?,
            "stale old value"
        );
        assert_eq!(
            s.get_inbox(&inbox_id).await?.unwrap().refresh_token,
            Some(t2)
        );
        s.set_inbox_status(&inbox_id, InboxStatus::NeedsReconnect)
            .await?;
        assert_eq!(
            s.get_inbox(&inbox_id).await?.unwrap().status,
            "needs_reconnect"
        );
        assert!(matches!(
            s.set_inbox_status("missing", InboxStatus::Connected).await,
            Err(StoreError::NotFound(_))
        ));
        assert!(matches!(
            s.set_refresh_token("missing", &t1).await,
            Err(StoreError::NotFound(_))
        ));
        Ok(())
    }

    pub async fn tenants(b: &Backend) -> anyhow::Result<()> {
        let s = b.store();
        assert!(s.list_tenants().await?.is_empty());
        let before = now_ms();
        let beta = s
            .create_tenant(&NewTenant {
                id: tid("beta"),
                display_name: "Beta Inc".into(),
            })
            .await?;
        let acme = s
            .create_tenant(&NewTenant {
                id: tid("acme"),
                display_name: "Acme".into(),
            })
            .await?;
        assert_eq!(acme.id, tid("acme"));
        assert_eq!(acme.display_name, "Acme");
        assert!(acme.created_at_ms >= before && acme.created_at_ms <= now_ms());
        assert_eq!(s.get_tenant(&tid("acme")).await?, Some(acme.clone()));
        assert_eq!(s.get_tenant(&tid("nobody")).await?, None);
        assert_eq!(s.list_tenants().await?, vec![acme, beta]);

        let dup = s
            .create_tenant(&NewTenant {
                id: tid("acme"),
                display_name: "Other".into(),
            })
            .await;
        assert!(matches!(dup, Err(StoreError::Conflict(_))), "{dup:?}");
        assert_eq!(
            s.get_tenant(&tid("acme")).await?.unwrap().display_name,
            "Acme"
        );
        Ok(())
    }

    pub async fn key_versions(b: &Backend) -> anyhow::Result<()> {
        let s = b.store();
        let t = tenant(s, "acme").await;
        assert!(s.list_key_versions(&t).await?.is_empty());
        assert_eq!(s.current_key_version(&t).await?, None);

        let v1 = key_record(&t, 1, "vault:v1:first");
        s.insert_key_version(&v1).await?;
        assert_eq!(s.get_key_version(&t, v1.version).await?, Some(v1.clone()));
        assert_eq!(s.current_key_version(&t).await?, Some(v1.clone()));

        let mut v2 = key_record(&t, 2, "vault:v1:second");
        v2.seal_count = 17;
        s.insert_key_version(&v2).await?;
        let listed = s.list_key_versions(&t).await?;
        assert_eq!(listed.len(), 2);
        assert_eq!(listed[0].version.get(), 1);
        assert!(listed[0].retired, "inserting v2 retires v1");
        assert_eq!(listed[1], v2);
        assert_eq!(s.current_key_version(&t).await?, Some(v2.clone()));

        // An existing version: Conflict, and nothing changes.
        let again = s
            .insert_key_version(&key_record(&t, 2, "vault:v1:racer"))
            .await;
        assert!(matches!(again, Err(StoreError::Conflict(_))), "{again:?}");
        assert_eq!(s.list_key_versions(&t).await?, listed);

        // Conflict writes nothing, not even the retirement of older versions.
        let u = tenant(s, "umbrella").await;
        s.insert_key_version(&key_record(&u, 2, "vault:v1:u2"))
            .await?;
        s.insert_key_version(&key_record(&u, 1, "vault:v1:u1"))
            .await?;
        let before = s.list_key_versions(&u).await?;
        assert!(before.iter().all(|k| !k.retired));
        let dup = s
            .insert_key_version(&key_record(&u, 2, "vault:v1:u2-again"))
            .await;
        assert!(matches!(dup, Err(StoreError::Conflict(_))), "{dup:?}");
        assert_eq!(s.list_key_versions(&u).await?, before);

        // Unknown tenant.
        let missing = s
            .insert_key_version(&key_record(&tid("nobody"), 1, "vault:v1:x"))
            .await;
        assert!(
            matches!(missing, Err(StoreError::NotFound(_))),
            "{missing:?}"
        );
        assert_eq!(
            s.get_key_version(&t, DekVersion::new(9).unwrap()).await?,
            None
        );

        // Values that do not fit the column are refused, not wrapped.
        let mut huge = key_record(&t, 3, "vault:v1:huge");
        huge.seal_count = u64::MAX;
        assert!(s.insert_key_version(&huge).await.is_err());
        assert_eq!(s.list_key_versions(&t).await?, listed);
        Ok(())
    }

    pub async fn reserve_seals_in_blocks(b: &Backend) -> anyhow::Result<()> {
        let s = b.store();
        let t = tenant(s, "acme").await;
        let v1 = DekVersion::FIRST;
        s.insert_key_version(&key_record(&t, 1, "vault:v1:k"))
            .await?;

        assert_eq!(
            s.reserve_seals(&t, v1, 10, 25).await?,
            SealReservation::Granted(10)
        );
        assert_eq!(
            s.reserve_seals(&t, v1, 10, 25).await?,
            SealReservation::Granted(10)
        );
        assert_eq!(
            s.reserve_seals(&t, v1, 10, 25).await?,
            SealReservation::Granted(5)
        );
        let k = s.get_key_version(&t, v1).await?.unwrap();
        assert_eq!((k.seal_count, k.retired), (25, false));

        assert_eq!(
            s.reserve_seals(&t, v1, 10, 25).await?,
            SealReservation::Exhausted
        );
        let k = s.get_key_version(&t, v1).await?.unwrap();
        assert_eq!((k.seal_count, k.retired), (25, true));
        assert_eq!(s.current_key_version(&t).await?, None);
        assert_eq!(
            s.reserve_seals(&t, v1, 1, 1000).await?,
            SealReservation::Exhausted
        );

        // A version retired by rotation grants nothing.
        s.insert_key_version(&key_record(&t, 2, "vault:v1:k2"))
            .await?;
        s.insert_key_version(&key_record(&t, 3, "vault:v1:k3"))
            .await?;
        let v2 = DekVersion::new(2).unwrap();
        assert_eq!(
            s.reserve_seals(&t, v2, 1, 1000).await?,
            SealReservation::Exhausted
        );
        let v3 = DekVersion::new(3).unwrap();
        // A bound above i64::MAX is fine (clamped).
        assert_eq!(
            s.reserve_seals(&t, v3, 5, u64::MAX).await?,
            SealReservation::Granted(5)
        );

        let missing = s
            .reserve_seals(&t, DekVersion::new(9).unwrap(), 1, 10)
            .await;
        assert!(
            matches!(missing, Err(StoreError::NotFound(_))),
            "{missing:?}"
        );
        Ok(())
    }

    pub async fn reserve_seals_concurrently(b: &Backend) -> anyhow::Result<()> {
        const BOUND: u64 = 1000;
        let t = tenant(b.store(), "acme").await;
        let v1 = DekVersion::FIRST;
        b.store()
            .insert_key_version(&key_record(&t, 1, "vault:v1:k"))
            .await?;

        let mut tasks = Vec::new();
        for task in 0..8u64 {
            let store = Arc::clone(&b.store);
            let t = t.clone();
            tasks.push(tokio::spawn(async move {
                let mut total = 0u64;
                loop {
                    match store.reserve_seals(&t, v1, 7 + task, BOUND).await? {
                        SealReservation::Granted(n) => {
                            assert!(n >= 1 && n <= 7 + task);
                            total += n;
                        }
                        SealReservation::Exhausted => return Ok::<_, StoreError>(total),
                    }
                }
            }));
        }
        let mut sum = 0;
        for task in tasks {
            sum += task.await??;
        }
        assert_eq!(sum, BOUND, "granted seals must add up to the bound exactly");
        let k = b.store().get_key_version(&t, v1).await?.unwrap();
        assert_eq!((k.seal_count, k.retired), (BOUND, true));
        Ok(())
    }

    pub async fn replace_wrapped_dek(b: &Backend) -> anyhow::Result<()> {
        let s = b.store();
        let t = tenant(s, "acme").await;
        let v1 = DekVersion::FIRST;
        s.insert_key_version(&key_record(&t, 1, "vault:v1:old"))
            .await?;

        assert!(
            !s.replace_wrapped_dek(&t, v1, "vault:v1:wrong", "vault:v2:new")
                .await?
        );
        assert_eq!(
            s.get_key_version(&t, v1).await?.unwrap().wrapped_dek,
            "vault:v1:old"
        );
        assert!(
            s.replace_wrapped_dek(&t, v1, "vault:v1:old", "vault:v2:new")
                .await?
        );
        assert_eq!(
            s.get_key_version(&t, v1).await?.unwrap().wrapped_dek,
            "vault:v2:new"
        );
        assert!(
            !s.replace_wrapped_dek(&t, v1, "vault:v1:old", "vault:v2:other")
                .await?
        );
        assert_eq!(
            s.get_key_version(&t, v1).await?.unwrap().wrapped_dek,
            "vault:v2:new"
        );
        let v9 = DekVersion::new(9).unwrap();
        assert!(!s.replace_wrapped_dek(&t, v9, "vault:v2:new", "x").await?);
        Ok(())
    }

    pub async fn inboxes(b: &Backend) -> anyhow::Result<()> {
        let s = b.store();
        let t = tenant(s, "acme").await;
        let other = tenant(s, "beta").await;
        let new = NewInbox {
            id: new_record_id(),
            tenant_id: t.clone(),
            address: "support@acme.example".into(),
            connected_at_ms: 1_700_000_000_000,
        };
        let rec = s.create_inbox(&new).await?;
        assert_eq!(rec.id, new.id);
        assert_eq!(rec.tenant_id, t);
        assert_eq!(rec.address, new.address);
        assert_eq!(rec.history_id, None);
        assert_eq!(rec.status, "connected");
        assert_eq!(rec.refresh_token, None);
        assert_eq!(rec.connected_at_ms, new.connected_at_ms);
        assert_eq!(s.get_inbox(&new.id).await?, Some(rec.clone()));
        assert_eq!(s.get_inbox("no-such-inbox").await?, None);

        let second = inbox(s, &t, "sales@acme.example").await;
        let listed = s.list_inboxes(&t).await?;
        assert_eq!(listed.len(), 2);
        // Oldest first, ties (the same millisecond) by id.
        assert!(
            listed
                .windows(2)
                .all(|w| (w[0].created_at_ms, &w[0].id) <= (w[1].created_at_ms, &w[1].id)),
            "{listed:?}"
        );
        assert!(listed.contains(&rec));
        assert!(listed.iter().any(|i| i.id == second));
        assert!(s.list_inboxes(&other).await?.is_empty());

        // Same address in the same tenant: Conflict. In another tenant: fine.
        let dup = s
            .create_inbox(&NewInbox {
                id: new_record_id(),
                ..new.clone()
            })
            .await;
        assert!(matches!(dup, Err(StoreError::Conflict(_))), "{dup:?}");
        inbox(s, &other, "support@acme.example").await;
        // Same id: Conflict.
        let dup_id = s
            .create_inbox(&NewInbox {
                address: "other@acme.example".into(),
                ..new.clone()
            })
            .await;
        assert!(matches!(dup_id, Err(StoreError::Conflict(_))), "{dup_id:?}");
        // Unknown tenant: NotFound.
        let missing = s
            .create_inbox(&NewInbox {
                id: new_record_id(),
                tenant_id: tid("nobody"),
                address: "x@y.example".into(),
                connected_at_ms: 0,
            })
            .await;
        assert!(
            matches!(missing, Err(StoreError::NotFound(_))),
            "{missing:?}"
        );
        assert_eq!(s.list_inboxes(&t).await?.len(), 2);
        Ok(())
    }

    pub async fn message_round_trip(b: &Backend) -> anyhow::Result<()> {
        let s = b.store();
        let t = tenant(s, "acme").await;
        let inbox_id = inbox(s, &t, "support@acme.example").await;
        let k = key();

        let mut m = message(&k, &t, &inbox_id, "gm-1", "th-1", 1_700_000_000_000, 3);
        m.gmail_history_id = Some(i64::MAX.unsigned_abs());
        // Inserted out of order: read back by ordinal.
        m.attachments.swap(0, 2);
        let before = now_ms();
        let InsertOutcome::Inserted { conversation_id } = s.insert_message(&m).await? else {
            panic!("expected Inserted");
        };

        let got = s.get_message(&t, &m.id).await?.expect("stored");
        assert_eq!(got.id, m.id);
        assert_eq!(got.tenant_id, t);
        assert_eq!(got.inbox_id, inbox_id);
        assert_eq!(got.conversation_id, conversation_id);
        assert_eq!(got.gmail_message_id, "gm-1");
        assert_eq!(got.gmail_thread_id, "th-1");
        assert_eq!(got.gmail_history_id, m.gmail_history_id);
        assert_eq!(got.internal_date_ms, m.internal_date_ms);
        assert_eq!(got.size_bytes, m.size_bytes);
        assert!(got.has_attachments);
        assert!(got.created_at_ms >= before && got.created_at_ms <= now_ms());
        assert_eq!(got.fields, m.fields);
        for (name, (a, b)) in
            MessageFields::FIELD_NAMES
                .iter()
                .zip(sealed_values(&m).into_iter().zip([
                    &got.fields.subject,
                    &got.fields.from_addr,
                    &got.fields.to_addrs,
                    &got.fields.cc_addrs,
                    &got.fields.reply_to,
                    &got.fields.text_body,
                    &got.fields.html_body,
                    &got.fields.snippet,
                ]))
        {
            assert_eq!(a.as_bytes(), b.as_bytes(), "{name}");
        }
        let mut expected = m.attachments.clone();
        expected.sort_by_key(|a| a.ordinal);
        assert_eq!(got.attachments.len(), 3);
        for (want, have) in expected.iter().zip(&got.attachments) {
            assert_eq!(have.id, want.id);
            assert_eq!(have.message_id, m.id);
            assert_eq!(have.ordinal, want.ordinal);
            assert_eq!(have.name.as_bytes(), want.name.as_bytes());
            assert_eq!(have.content_type.as_bytes(), want.content_type.as_bytes());
            assert_eq!(have.content_id.as_bytes(), want.content_id.as_bytes());
            // The bytes are read on their own, by ordinal.
            let data = s
                .get_attachment_data(&t, &m.id, want.ordinal)
                .await?
                .expect("attachment data");
            assert_eq!(data.as_bytes(), want.data.as_bytes());
            assert_eq!(have.size_bytes, want.size_bytes);
            assert_eq!(have.inline, want.inline);
        }

        // A message without attachments; an odd but valid sealed shape.
        let mut plain = message(&k, &t, &inbox_id, "gm-2", "th-2", 1_700_000_500_000, 0);
        plain.gmail_history_id = None;
        plain.fields.snippet = fake_sealed(7, &[0u8; 64]);
        s.insert_message(&plain).await?;
        let got = s.get_message(&t, &plain.id).await?.expect("stored");
        assert!(!got.has_attachments);
        assert!(got.attachments.is_empty());
        assert_eq!(got.gmail_history_id, None);
        assert_eq!(got.fields, plain.fields);

        // Listing: newest first, limited, per tenant and inbox.
        let third = message(&k, &t, &inbox_id, "gm-3", "th-1", 1_600_000_000_000, 0);
        s.insert_message(&third).await?;
        assert_eq!(
            s.list_message_ids(&t, &inbox_id, 10).await?,
            vec![plain.id.clone(), m.id.clone(), third.id.clone()]
        );
        assert_eq!(
            s.list_message_ids(&t, &inbox_id, 2).await?,
            vec![plain.id.clone(), m.id.clone()]
        );
        let other = tenant(s, "beta").await;
        assert!(s.list_message_ids(&other, &inbox_id, 10).await?.is_empty());
        assert_eq!(s.get_message(&other, &m.id).await?, None);
        assert_eq!(s.get_message(&t, "no-such-message").await?, None);
        // Attachment bytes: not for another tenant, an unknown ordinal or message.
        assert_eq!(s.get_attachment_data(&other, &m.id, 0).await?, None);
        assert_eq!(s.get_attachment_data(&t, &m.id, 3).await?, None);
        assert_eq!(s.get_attachment_data(&t, "no-such-message", 0).await?, None);

        // u64 values that do not fit are refused, and nothing is written.
        let mut huge = message(&k, &t, &inbox_id, "gm-4", "th-4", 1, 1);
        huge.size_bytes = u64::MAX;
        assert!(s.insert_message(&huge).await.is_err());
        let mut huge = message(&k, &t, &inbox_id, "gm-4", "th-4", 1, 1);
        huge.attachments[0].size_bytes = u64::MAX;
        assert!(s.insert_message(&huge).await.is_err());
        assert_eq!(s.get_message(&t, &huge.id).await?, None);
        let cells = b.dump().await?;
        assert_eq!(count(&cells, "messages", "id"), 3);
        assert_eq!(count(&cells, "attachments", "id"), 3);
        assert!(!values(&cells, "conversations", "gmail_thread_id").contains(&"th-4".into()));
        Ok(())
    }

    pub async fn insert_message_is_idempotent(b: &Backend) -> anyhow::Result<()> {
        let s = b.store();
        let t = tenant(s, "acme").await;
        let inbox_id = inbox(s, &t, "support@acme.example").await;
        let k = key();
        let m = message(&k, &t, &inbox_id, "gm-1", "th-1", 1_700_000_000_000, 2);
        let first = s.insert_message(&m).await?;
        assert!(matches!(first, InsertOutcome::Inserted { .. }));

        // Same Gmail message again (a redelivered notification): new record ids, nothing
        // written.
        let again = message(&k, &t, &inbox_id, "gm-1", "th-1", 1_700_000_000_000, 2);
        assert_eq!(
            s.insert_message(&again).await?,
            InsertOutcome::AlreadyStored {
                message_id: m.id.clone()
            }
        );
        assert_eq!(
            s.insert_message(&m).await?,
            InsertOutcome::AlreadyStored {
                message_id: m.id.clone()
            }
        );
        assert_eq!(s.get_message(&t, &again.id).await?, None);
        assert_eq!(
            s.list_message_ids(&t, &inbox_id, 10).await?,
            vec![m.id.clone()]
        );

        let cells = b.dump().await?;
        assert_eq!(count(&cells, "messages", "id"), 1);
        assert_eq!(count(&cells, "attachments", "id"), 2);
        assert_eq!(count(&cells, "conversations", "id"), 1);
        assert_eq!(values(&cells, "conversations", "message_count"), vec!["1"]);
        for v in sealed_values(&again) {
            assert!(scan::find_bytes(&cells, v.as_bytes()).is_empty());
        }

        // The same Gmail id in another inbox is another message.
        let inbox2 = inbox(s, &t, "sales@acme.example").await;
        let elsewhere = message(&k, &t, &inbox2, "gm-1", "th-1", 1_700_000_000_000, 0);
        assert!(matches!(
            s.insert_message(&elsewhere).await?,
            InsertOutcome::Inserted { .. }
        ));

        // Concurrent inserts of one Gmail message: exactly one is stored.
        let mut tasks = Vec::new();
        for _ in 0..6 {
            let store = Arc::clone(&b.store);
            let m = message(&k, &t, &inbox_id, "gm-race", "th-race", 5, 1);
            tasks.push(tokio::spawn(async move { store.insert_message(&m).await }));
        }
        let mut inserted = 0;
        for task in tasks {
            match task.await?? {
                InsertOutcome::Inserted { .. } => inserted += 1,
                InsertOutcome::AlreadyStored { .. } => {}
            }
        }
        assert_eq!(inserted, 1);
        let cells = b.dump().await?;
        assert_eq!(count(&cells, "messages", "id"), 3);
        assert_eq!(count(&cells, "attachments", "id"), 3);
        Ok(())
    }

    pub async fn messages_group_into_conversations(b: &Backend) -> anyhow::Result<()> {
        let s = b.store();
        let t = tenant(s, "acme").await;
        let inbox_id = inbox(s, &t, "support@acme.example").await;
        let k = key();
        let conv = |o: InsertOutcome| match o {
            InsertOutcome::Inserted { conversation_id } => conversation_id,
            other => panic!("expected Inserted, got {other:?}"),
        };
        let a1 = conv(
            s.insert_message(&message(&k, &t, &inbox_id, "gm-1", "th-a", 2_000, 0))
                .await?,
        );
        let b1 = conv(
            s.insert_message(&message(&k, &t, &inbox_id, "gm-2", "th-b", 3_000, 0))
                .await?,
        );
        let a2 = conv(
            s.insert_message(&message(&k, &t, &inbox_id, "gm-3", "th-a", 1_000, 1))
                .await?,
        );
        assert_eq!(a1, a2);
        assert_ne!(a1, b1);

        // The same thread id in another inbox is another conversation.
        let inbox2 = inbox(s, &t, "sales@acme.example").await;
        let c1 = conv(
            s.insert_message(&message(&k, &t, &inbox2, "gm-1", "th-a", 2_000, 0))
                .await?,
        );
        assert_ne!(c1, a1);

        let cells = b.dump().await?;
        assert_eq!(count(&cells, "conversations", "id"), 3);
        assert_eq!(
            values(&cells, "conversations", "message_count"),
            vec!["1", "1", "2"]
        );
        // last_message_at_ms is the newest message of the thread, not the last inserted.
        assert_eq!(
            values(&cells, "conversations", "last_message_at_ms"),
            vec!["2000", "2000", "3000"]
        );
        Ok(())
    }

    pub async fn insert_refuses_foreign_inbox(b: &Backend) -> anyhow::Result<()> {
        let s = b.store();
        let acme = tenant(s, "acme").await;
        let beta = tenant(s, "beta").await;
        let beta_inbox = inbox(s, &beta, "support@beta.example").await;
        let k = key();

        let m = message(&k, &acme, &beta_inbox, "gm-1", "th-1", 1_000, 2);
        let r = s.insert_message(&m).await;
        assert!(matches!(r, Err(StoreError::NotFound(_))), "{r:?}");
        let m2 = message(&k, &acme, "no-such-inbox", "gm-1", "th-1", 1_000, 1);
        let r = s.insert_message(&m2).await;
        assert!(matches!(r, Err(StoreError::NotFound(_))), "{r:?}");

        let cells = b.dump().await?;
        for table in ["messages", "attachments", "conversations"] {
            assert_eq!(count(&cells, table, "id"), 0, "{table}");
        }
        for v in sealed_values(&m).into_iter().chain(sealed_values(&m2)) {
            assert!(scan::find_bytes(&cells, v.as_bytes()).is_empty());
        }
        assert!(scan::find_bytes(&cells, m.id.as_bytes()).is_empty());
        Ok(())
    }

    /// Stored messages carry the index marker (set in the same row, so in the same
    /// transaction); the indexer clears it, reindex sets it again, deletes remove it.
    pub async fn index_outbox_and_index_keys(b: &Backend) -> anyhow::Result<()> {
        let s = b.store();
        let t = tenant(s, "acme").await;
        let other = tenant(s, "other").await;
        let inbox_id = inbox(s, &t, "support@acme.example").await;
        let other_inbox = inbox(s, &other, "support@other.example").await;
        let k = key();
        let mut ids = Vec::new();
        for i in 0..5 {
            let m = message(
                &k,
                &t,
                &inbox_id,
                &format!("gm-{i}"),
                "th",
                1_700_000_000_000 + i,
                0,
            );
            s.insert_message(&m).await?;
            ids.push(m.id);
        }
        let om = message(&k, &other, &other_inbox, "gm-x", "th", 1_700_000_000_000, 0);
        s.insert_message(&om).await?;
        // Batched sync writes set the marker too.
        let batch = vec![message(
            &k,
            &t,
            &inbox_id,
            "gm-batch",
            "th",
            1_700_000_000_100,
            1,
        )];
        s.store_synced_messages(&t, &inbox_id, &batch, Some(10))
            .await?;
        ids.push(batch[0].id.clone());
        ids.sort();

        assert_eq!(s.index_progress(&t).await?, (6, 6));
        assert_eq!(s.pending_index(&t, 100).await?, ids);
        assert_eq!(s.pending_index(&t, 2).await?, ids[..2].to_vec());
        // Paging by id: what follows an id, in id order, never another tenant's.
        assert_eq!(
            s.pending_index_after(&t, &ids[1], 2).await?,
            ids[2..4].to_vec()
        );
        assert_eq!(s.pending_index_after(&t, "", 100).await?, ids);
        assert!(s.pending_index_after(&t, &ids[5], 100).await?.is_empty());
        // Another tenant's ids are ignored.
        s.mark_indexed(&t, &[ids[0].clone(), ids[1].clone(), om.id.clone()], None)
            .await?;
        assert_eq!(s.pending_index(&t, 100).await?, ids[2..].to_vec());
        assert_eq!(s.pending_index(&other, 100).await?, vec![om.id.clone()]);
        assert_eq!(s.index_progress(&t).await?, (4, 6));
        s.mark_indexed(&t, &ids, None).await?;
        assert_eq!(s.index_progress(&t).await?, (0, 6));
        assert!(s.pending_index(&t, 100).await?.is_empty());
        assert_eq!(s.mark_all_for_reindex(&t).await?, 6);
        assert_eq!(s.index_progress(&t).await?, (6, 6));
        assert!(s.delete_message(&t, &ids[0]).await?);
        assert_eq!(s.pending_index(&t, 100).await?, ids[1..].to_vec());
        assert_eq!(s.index_progress(&other).await?, (1, 1));
        s.mark_indexed(&t, &[], None).await?;

        // Index keys: the first is active; a second active one or a duplicate conflicts.
        use helpr_dataplane::store::{IndexKeyRecord, IndexKeyState};
        assert_eq!(s.current_index_key(&t).await?, None);
        let rec = |v: u32| IndexKeyRecord {
            tenant_id: t.clone(),
            version: v,
            wrapped_key: format!("local:v1:wrapped-{v}"),
            kms_key_ref: "helpr-acme".into(),
            created_at_ms: 1_700_000_000_000,
            state: IndexKeyState::Active,
            // The folding rules' version round-trips (here 1, 2, ...: one per version).
            normalization: v,
            mode: Mode::Blind,
        };
        // A plaintext version has no key; it round-trips (in another tenant) like a blind one.
        let plain = IndexKeyRecord {
            tenant_id: other.clone(),
            wrapped_key: String::new(),
            kms_key_ref: String::new(),
            mode: Mode::Plaintext,
            ..rec(1)
        };
        s.insert_index_key(&plain).await?;
        assert_eq!(s.current_index_key(&other).await?, Some(plain.clone()));
        assert_eq!(s.list_index_keys(&other).await?, vec![plain]);
        s.insert_index_key(&rec(1)).await?;
        assert!(matches!(
            s.insert_index_key(&rec(1)).await,
            Err(StoreError::Conflict(_))
        ));
        assert!(matches!(
            s.insert_index_key(&rec(2)).await,
            Err(StoreError::Conflict(_))
        ));
        assert_eq!(s.current_index_key(&t).await?, Some(rec(1)));
        assert_eq!(s.list_index_keys(&t).await?, vec![rec(1)]);
        // A KEK rotation's rewrap: compare-and-swap of the wrapped form, blind versions only.
        let old = rec(1).wrapped_key;
        assert!(!s.replace_wrapped_index_key(&t, 1, "stale", "x").await?);
        assert!(!s.replace_wrapped_index_key(&t, 2, &old, "x").await?);
        assert!(!s.replace_wrapped_index_key(&other, 1, "", "x").await?);
        assert!(
            s.replace_wrapped_index_key(&t, 1, &old, "local:v2:rewrapped")
                .await?
        );
        assert_eq!(
            s.current_index_key(&t).await?.map(|k| k.wrapped_key),
            Some("local:v2:rewrapped".to_owned())
        );
        assert!(
            s.replace_wrapped_index_key(&t, 1, "local:v2:rewrapped", &old)
                .await?
        );
        assert_eq!(s.current_index_key(&tid("nobody")).await?, None);
        let unknown = IndexKeyRecord {
            tenant_id: tid("nobody"),
            ..rec(1)
        };
        assert!(matches!(
            s.insert_index_key(&unknown).await,
            Err(StoreError::NotFound(_))
        ));
        Ok(())
    }

    /// An index-key rotation: the building key and the markers of every message are set in
    /// one transaction; a marker is cleared only under the key versions it was indexed with;
    /// the switch waits for every message and then marks them all again.
    pub async fn index_key_rotation(b: &Backend) -> anyhow::Result<()> {
        use helpr_dataplane::store::{IndexKeyRecord, IndexKeySet, IndexKeyState};
        let s = b.store();
        let t = tenant(s, "acme").await;
        let other = tenant(s, "other").await;
        let inbox_id = inbox(s, &t, "support@acme.example").await;
        let k = key();
        let mut ids = Vec::new();
        for i in 0..3 {
            let m = message(
                &k,
                &t,
                &inbox_id,
                &format!("gm-{i}"),
                "th",
                1_700_000_000_000 + i,
                0,
            );
            s.insert_message(&m).await?;
            ids.push(m.id);
        }
        ids.sort();
        let rec = |v: u32, state| IndexKeyRecord {
            tenant_id: t.clone(),
            version: v,
            wrapped_key: format!("local:v{v}:wrapped"),
            kms_key_ref: "helpr-acme".into(),
            created_at_ms: 1_700_000_000_000 + i64::from(v),
            state,
            normalization: v,
            // Version 2 moves the tenant to plaintext mode; 3 back to blind.
            mode: if v == 2 { Mode::Plaintext } else { Mode::Blind },
        };
        // Nothing to rotate from yet.
        assert!(matches!(
            s.start_index_key_rotation(&rec(2, IndexKeyState::Building))
                .await,
            Err(StoreError::Conflict(_))
        ));
        s.insert_index_key(&rec(1, IndexKeyState::Active)).await?;
        let v1 = IndexKeySet {
            active: Some(1),
            building: None,
        };
        assert!(s.mark_indexed(&t, &ids, Some(v1)).await?);
        assert_eq!(s.index_progress(&t).await?, (0, 3));

        assert_eq!(
            s.start_index_key_rotation(&rec(2, IndexKeyState::Building))
                .await?,
            3
        );
        assert_eq!(s.index_progress(&t).await?, (3, 3));
        assert_eq!(s.index_progress(&other).await?, (0, 0));
        assert_eq!(
            s.list_index_keys(&t).await?,
            vec![
                rec(1, IndexKeyState::Active),
                rec(2, IndexKeyState::Building)
            ]
        );
        // Queries still use the active key.
        assert_eq!(
            s.current_index_key(&t).await?,
            Some(rec(1, IndexKeyState::Active))
        );
        // One rotation at a time.
        assert!(matches!(
            s.start_index_key_rotation(&rec(3, IndexKeyState::Building))
                .await,
            Err(StoreError::Conflict(_))
        ));
        // A batch blinded before the rotation started does not clear markers.
        assert!(!s.mark_indexed(&t, &ids, Some(v1)).await?);
        assert_eq!(s.index_progress(&t).await?, (3, 3));
        // Nor does the switch happen while messages are pending, or for another version.
        assert!(!s.finish_index_key_rotation(&t, 2).await?);
        let rotating = IndexKeySet {
            active: Some(1),
            building: Some(2),
        };
        assert!(s.mark_indexed(&t, &ids[..2], Some(rotating)).await?);
        assert!(!s.finish_index_key_rotation(&t, 2).await?);
        assert!(s.mark_indexed(&t, &ids[2..], Some(rotating)).await?);
        assert!(!s.finish_index_key_rotation(&t, 3).await?);
        assert!(!s.retired_index_terms_left(&t).await?);
        assert!(s.finish_index_key_rotation(&t, 2).await?);
        assert_eq!(
            s.list_index_keys(&t).await?,
            vec![
                rec(1, IndexKeyState::Retired),
                rec(2, IndexKeyState::Active)
            ]
        );
        assert_eq!(
            s.current_index_key(&t).await?,
            Some(rec(2, IndexKeyState::Active))
        );
        // The second pass: every message again, and only under the new key. The retired
        // key's terms are in the index until that pass is done (and the index compacted).
        assert_eq!(s.index_progress(&t).await?, (3, 3));
        assert!(!s.retired_index_terms_left(&t).await?);
        assert!(!s.mark_indexed(&t, &ids, Some(rotating)).await?);
        let v2 = IndexKeySet {
            active: Some(2),
            building: None,
        };
        assert!(s.mark_indexed(&t, &ids[..2], Some(v2)).await?);
        assert!(!s.retired_index_terms_left(&t).await?);
        assert!(s.mark_indexed(&t, &ids[2..], Some(v2)).await?);
        assert_eq!(s.index_progress(&t).await?, (0, 3));
        assert!(!s.finish_index_key_rotation(&t, 2).await?);
        assert!(s.retired_index_terms_left(&t).await?);
        assert!(!s.retired_index_terms_left(&other).await?);
        s.clear_retired_index_terms(&t).await?;
        assert!(!s.retired_index_terms_left(&t).await?);
        // A later rotation retires version 2 the same way.
        s.start_index_key_rotation(&rec(3, IndexKeyState::Building))
            .await?;
        let rotating = IndexKeySet {
            active: Some(2),
            building: Some(3),
        };
        assert!(s.mark_indexed(&t, &ids, Some(rotating)).await?);
        assert!(s.finish_index_key_rotation(&t, 3).await?);
        let v3 = IndexKeySet {
            active: Some(3),
            building: None,
        };
        assert!(s.mark_indexed(&t, &ids, Some(v3)).await?);
        assert!(s.retired_index_terms_left(&t).await?);
        assert_eq!(
            s.list_index_keys(&t).await?,
            vec![
                rec(1, IndexKeyState::Retired),
                rec(2, IndexKeyState::Retired),
                rec(3, IndexKeyState::Active)
            ]
        );
        Ok(())
    }

    pub async fn delete_message_leaves_no_trace(b: &Backend) -> anyhow::Result<()> {
        let s = b.store();
        let t = tenant(s, "acme").await;
        let other = tenant(s, "beta").await;
        let inbox_id = inbox(s, &t, "support@acme.example").await;
        let k = key();
        // Big enough bodies to spill into overflow pages in SQLite.
        let mut m1 = message(&k, &t, &inbox_id, "gm-del-1", "th-del-a", 1_000, 2);
        m1.fields.html_body = seal(
            &k,
            &SealContext::new(t.as_str(), &m1.id, "message.html_body"),
            &vec![b'x'; 20_000],
        )?;
        m1.attachments[1].data = seal(
            &k,
            &SealContext::new(t.as_str(), &m1.attachments[1].id, "attachment.data"),
            &vec![b'y'; 50_000],
        )?;
        let m2 = message(&k, &t, &inbox_id, "gm-keep-2", "th-del-a", 2_000, 1);
        let m3 = message(&k, &t, &inbox_id, "gm-del-3", "th-del-b", 3_000, 1);
        let conv_a = match s.insert_message(&m1).await? {
            InsertOutcome::Inserted { conversation_id } => conversation_id,
            other => panic!("{other:?}"),
        };
        let conv_b = match s.insert_message(&m3).await? {
            InsertOutcome::Inserted { conversation_id } => conversation_id,
            other => panic!("{other:?}"),
        };
        s.insert_message(&m2).await?;

        // Another tenant cannot delete it.
        assert!(!s.delete_message(&other, &m1.id).await?);
        assert!(s.get_message(&t, &m1.id).await?.is_some());

        assert!(s.delete_message(&t, &m1.id).await?);
        assert_eq!(s.get_message(&t, &m1.id).await?, None);
        assert!(!s.delete_message(&t, &m1.id).await?);
        // The conversation stays for m2, counted down.
        let kept = s.get_message(&t, &m2.id).await?.expect("m2 kept");
        assert_eq!(kept.conversation_id, conv_a);
        assert_eq!(kept.attachments.len(), 1);

        // Of concurrent deletes of one message, exactly one removes it.
        let m4 = message(&k, &t, &inbox_id, "gm-del-4", "th-del-a", 500, 1);
        s.insert_message(&m4).await?;
        let mut tasks = Vec::new();
        for _ in 0..4 {
            let store = Arc::clone(&b.store);
            let (t, id) = (t.clone(), m4.id.clone());
            tasks.push(tokio::spawn(
                async move { store.delete_message(&t, &id).await },
            ));
        }
        let mut removed = 0;
        for task in tasks {
            removed += usize::from(task.await??);
        }
        assert_eq!(removed, 1);

        // The last message of a conversation takes it along.
        assert!(s.delete_message(&t, &m3.id).await?);
        assert_eq!(
            s.list_message_ids(&t, &inbox_id, 10).await?,
            vec![m2.id.clone()]
        );

        let cells = b.dump().await?;
        assert_eq!(count(&cells, "messages", "id"), 1);
        assert_eq!(count(&cells, "attachments", "id"), 1);
        assert_eq!(values(&cells, "conversations", "id"), vec![conv_a.clone()]);
        assert_eq!(values(&cells, "conversations", "message_count"), vec!["1"]);
        assert_eq!(
            values(&cells, "conversations", "last_message_at_ms"),
            vec!["2000"]
        );

        let mut needles: Vec<Vec<u8>> = Vec::new();
        for m in [&m1, &m3, &m4] {
            for v in sealed_values(m) {
                needles.push(v.as_bytes().to_vec());
                // The ciphertext alone, in case a header were stored apart.
                needles.push(v.as_bytes()[17..].to_vec());
            }
            needles.push(m.id.as_bytes().to_vec());
            needles.push(m.gmail_message_id.as_bytes().to_vec());
            for a in &m.attachments {
                needles.push(a.id.as_bytes().to_vec());
            }
        }
        needles.push(conv_b.as_bytes().to_vec());
        needles.push(b"th-del-b".to_vec());
        for needle in &needles {
            let found = scan::find_bytes(&cells, needle);
            assert!(found.is_empty(), "deleted data still in {found:?}");
        }
        // m2 is still found (the scan works).
        assert!(!scan::find_bytes(&cells, m2.fields.subject.as_bytes()).is_empty());
        assert!(!scan::find_bytes(&cells, m2.id.as_bytes()).is_empty());

        // SQLite: not in the files either (secure_delete overwrites freed space).
        if let Some(raw) = b.raw_files().await? {
            assert!(scan::contains_bytes(&raw, m2.fields.subject.as_bytes()));
            for (i, m) in [&m1, &m3, &m4].into_iter().enumerate() {
                for v in sealed_values(m) {
                    assert!(
                        !scan::contains_bytes(&raw, &v.as_bytes()[17..]),
                        "sealed bytes of deleted message {i} remain in the database file"
                    );
                }
            }
        }
        Ok(())
    }

    pub async fn audit_events(b: &Backend) -> anyhow::Result<()> {
        let s = b.store();
        let t = tid("acme");
        let other = tid("beta");
        let event = |tenant: &TenantId, i: i64| AuditEvent {
            tenant_id: tenant.clone(),
            actor: "cli".into(),
            action: format!("keys.action_{i}"),
            target_kind: "tenant_key".into(),
            target_id: format!("{tenant}/v{i}"),
            // Out of time order on purpose: listing follows append order.
            at_ms: 1_000 - i,
        };
        for i in 0..3 {
            s.append_audit_event(&event(&t, i)).await?;
            s.append_audit_event(&event(&other, i + 10)).await?;
        }
        let all = s.list_audit_events(&t, 100).await?;
        assert_eq!(all, (0..3).map(|i| event(&t, i)).collect::<Vec<_>>());
        assert_eq!(s.list_audit_events(&t, 2).await?, all[..2].to_vec());
        assert_eq!(s.list_audit_events(&other, 100).await?.len(), 3);
        assert!(s.list_audit_events(&tid("nobody"), 100).await?.is_empty());
        Ok(())
    }

    pub async fn search_tombstones(b: &Backend) -> anyhow::Result<()> {
        let s = b.store();
        let t = tid("acme");
        let other = tid("beta");
        let stone = |tenant: &TenantId, id: &str, scope: TombstoneScope, at: i64| SearchTombstone {
            id: id.to_owned(),
            tenant_id: tenant.clone(),
            scope,
            scope_id: format!("{id}-scope"),
            cutoff_version: 1_767_225_600_000_000 + at as u64,
            delete_opstamp: None,
            created_at_ms: at,
        };
        let a = stone(&t, "t1", TombstoneScope::Message, 10);
        let c = stone(&t, "t2", TombstoneScope::Conversation, 20);
        let i = stone(&t, "t3", TombstoneScope::Inbox, 30);
        let whole = stone(&t, "t4", TombstoneScope::Tenant, 40);
        for x in [&whole, &i, &c, &a] {
            s.add_search_tombstone(x).await?;
        }
        s.add_search_tombstone(&stone(&other, "o1", TombstoneScope::Message, 5))
            .await?;
        assert!(matches!(
            s.add_search_tombstone(&a).await,
            Err(StoreError::Conflict(_))
        ));
        // Oldest first, only the tenant's own.
        let listed = s.list_search_tombstones(&t).await?;
        assert_eq!(listed, vec![a.clone(), c.clone(), i.clone(), whole.clone()]);
        assert_eq!(
            s.search_tombstone_tenants().await?,
            vec![t.clone(), other.clone()]
        );
        // Opstamps are recorded per tenant.
        assert!(s.set_search_tombstone_opstamp(&t, "t1", 7).await?);
        assert!(s.set_search_tombstone_opstamp(&t, "t2", 9).await?);
        assert!(
            s.set_search_tombstone_opstamp(&t, "t3", u64::MAX >> 1)
                .await?
        );
        assert!(!s.set_search_tombstone_opstamp(&other, "t1", 1).await?);
        assert!(
            s.set_search_tombstone_opstamp(&t, "t4", 1 << 63)
                .await
                .is_err()
        );
        let listed = s.list_search_tombstones(&t).await?;
        assert_eq!(listed[0].delete_opstamp, Some(7));
        assert_eq!(listed[3].delete_opstamp, None);
        // Removing applied tombstones keeps later tasks and tombstones without a task.
        assert_eq!(s.remove_applied_search_tombstones(&t, 8).await?, 1);
        let ids: Vec<String> = s
            .list_search_tombstones(&t)
            .await?
            .into_iter()
            .map(|x| x.id)
            .collect();
        assert_eq!(ids, ["t2", "t3", "t4"]);
        assert_eq!(s.remove_applied_search_tombstones(&t, u64::MAX).await?, 2);
        let left = s.list_search_tombstones(&t).await?;
        assert_eq!(left, vec![whole.clone()]);
        assert_eq!(s.list_search_tombstones(&other).await?.len(), 1);
        assert_eq!(
            s.remove_applied_search_tombstones(&other, u64::MAX).await?,
            0
        );
        Ok(())
    }

    pub async fn inbox_sync_status_follows_the_inbox(b: &Backend) -> anyhow::Result<()> {
        use helpr_dataplane::search::Mode;
        use helpr_dataplane::store::{
            ApplyOutcome, ControlMeta, DeletionPolicy, InboxSpec, TenantSpec, Visibility,
        };
        let s = b.store();
        let m = |ns: &str, name: &str, uid: &str, generation: i64| ControlMeta {
            namespace: ns.into(),
            name: name.into(),
            uid: uid.into(),
            generation,
        };
        let acme = tenant(s, "acme").await;
        let tenant_spec = TenantSpec {
            display_name: "Acme".into(),
            deletion_policy: DeletionPolicy::Retain,
            search_mode: Mode::Blind,
        };
        assert_eq!(
            s.apply_tenant(&m("", "acme", "t", 1), &tenant_spec).await?,
            ApplyOutcome::Applied
        );
        assert_eq!(s.inbox_sync_status("ns", "support").await?, None);
        let spec = InboxSpec {
            tenant: acme.clone(),
            address: "support@acme.example".into(),
            visibility: Visibility::Org,
            team: None,
            assignment_limits_visibility: false,
            pubsub_topic: None,
            push_audience: None,
        };
        assert_eq!(
            s.apply_inbox(&m("ns", "support", "u1", 3), &spec).await?,
            ApplyOutcome::Applied
        );
        let status = s.inbox_sync_status("ns", "support").await?.unwrap();
        let inbox_id = status.inbox_id.clone();
        assert_eq!(
            (status.uid.as_str(), status.generation, status.status),
            ("u1", 3, InboxStatus::Connected)
        );
        assert!(!status.has_refresh_token);
        assert_eq!(
            (status.last_synced_at_ms, status.watch_expires_at_ms),
            (None, None)
        );
        assert_eq!(s.inbox_sync_status("other", "support").await?, None);

        s.set_refresh_token(&inbox_id, &fake_sealed(1, b"token"))
            .await?;
        let before = now_ms();
        s.store_synced_messages(&acme, &inbox_id, &[], Some(10))
            .await?;
        let after = now_ms();
        let status = s.inbox_sync_status("ns", "support").await?.unwrap();
        assert!(status.has_refresh_token);
        let synced = status.last_synced_at_ms.expect("synced");
        assert!((before..=after).contains(&synced));
        // The mark does not move back, but the sync time does move on.
        tokio::time::sleep(Duration::from_millis(5)).await;
        s.store_synced_messages(&acme, &inbox_id, &[], Some(5))
            .await?;
        let later = s.inbox_sync_status("ns", "support").await?.unwrap();
        assert!(later.last_synced_at_ms.expect("synced") > synced);
        assert_eq!(s.get_inbox(&inbox_id).await?.unwrap().history_id, Some(10));

        s.set_inbox_status(&inbox_id, InboxStatus::NeedsReconnect)
            .await?;
        let status = s.inbox_sync_status("ns", "support").await?.unwrap();
        assert_eq!(status.status, InboxStatus::NeedsReconnect);

        assert_eq!(
            s.delete_inbox(&m("ns", "support", "u1", 3)).await?,
            ApplyOutcome::Applied
        );
        assert_eq!(s.inbox_sync_status("ns", "support").await?, None);
        Ok(())
    }

    pub async fn push_watches_follow_the_inbox_topic(b: &Backend) -> anyhow::Result<()> {
        use helpr_dataplane::search::Mode;
        use helpr_dataplane::store::{
            ApplyOutcome, ControlMeta, DeletionPolicy, InboxSpec, InboxStatus, InboxWatch,
            TenantSpec, Visibility, WatchError,
        };
        const T1: &str = "projects/acme-mail/topics/gmail-push";
        const T2: &str = "projects/acme-mail/topics/gmail-push-2";
        let s = b.store();
        let m = |name: &str, generation: i64| ControlMeta {
            namespace: "ns".into(),
            name: name.into(),
            uid: format!("uid-{name}"),
            generation,
        };
        let acme = tenant(s, "acme").await;
        let tenant_spec = TenantSpec {
            display_name: "Acme".into(),
            deletion_policy: DeletionPolicy::Retain,
            search_mode: Mode::Blind,
        };
        s.apply_tenant(&m("acme", 1), &tenant_spec).await?;
        let spec = |address: &str, topic: Option<&str>| InboxSpec {
            tenant: acme.clone(),
            address: address.into(),
            visibility: Visibility::Org,
            team: None,
            assignment_limits_visibility: false,
            pubsub_topic: topic.map(String::from),
            push_audience: None,
        };
        assert_eq!(
            s.apply_inbox(&m("support", 1), &spec("support@acme.example", Some(T1)))
                .await?,
            ApplyOutcome::Applied
        );
        s.apply_inbox(&m("polling", 1), &spec("polling@acme.example", None))
            .await?;
        let id = s
            .inbox_sync_status("ns", "support")
            .await?
            .unwrap()
            .inbox_id;
        let polling = s
            .inbox_sync_status("ns", "polling")
            .await?
            .unwrap()
            .inbox_id;
        // No refresh token yet: nothing to watch with.
        assert_eq!(s.inbox_watches(&acme).await?, vec![]);
        for inbox in [&id, &polling] {
            s.set_refresh_token(inbox, &fake_sealed(1, b"token"))
                .await?;
        }
        let wanted = InboxWatch {
            inbox_id: id.clone(),
            desired_topic: Some(T1.into()),
            topic: None,
            expires_at_ms: None,
        };
        // The polling-only inbox never shows up.
        assert_eq!(s.inbox_watches(&acme).await?, vec![wanted.clone()]);
        let status = s.inbox_sync_status("ns", "support").await?.unwrap();
        assert_eq!(
            (
                status.pubsub_topic.as_deref(),
                status.watch_expires_at_ms,
                status.watch_error
            ),
            (Some(T1), None, None)
        );

        s.record_inbox_watch(&id, Ok(Some((T1, 1_000_000)))).await?;
        assert_eq!(
            s.inbox_watches(&acme).await?,
            vec![InboxWatch {
                topic: Some(T1.into()),
                expires_at_ms: Some(1_000_000),
                ..wanted.clone()
            }]
        );
        let status = s.inbox_sync_status("ns", "support").await?.unwrap();
        assert_eq!(status.watch_expires_at_ms, Some(1_000_000));

        // A failure keeps the watch Gmail still has and is reported.
        s.record_inbox_watch(&id, Err(WatchError::Forbidden))
            .await?;
        let status = s.inbox_sync_status("ns", "support").await?.unwrap();
        assert_eq!(
            (status.watch_expires_at_ms, status.watch_error),
            (Some(1_000_000), Some(WatchError::Forbidden))
        );
        assert_eq!(s.inbox_watches(&acme).await?[0].topic.as_deref(), Some(T1));

        // A new topic: the old watch is no longer the inbox's watch.
        s.apply_inbox(&m("support", 2), &spec("support@acme.example", Some(T2)))
            .await?;
        let status = s.inbox_sync_status("ns", "support").await?.unwrap();
        assert_eq!(
            (status.pubsub_topic.as_deref(), status.watch_expires_at_ms),
            (Some(T2), None)
        );
        s.record_inbox_watch(&id, Ok(Some((T2, 2_000_000)))).await?;
        let status = s.inbox_sync_status("ns", "support").await?.unwrap();
        assert_eq!(
            (status.watch_expires_at_ms, status.watch_error),
            (Some(2_000_000), None),
            "a registration clears the error"
        );

        // Topic removed: listed (to be stopped) until the stop is recorded.
        s.apply_inbox(&m("support", 3), &spec("support@acme.example", None))
            .await?;
        assert_eq!(
            s.inbox_watches(&acme).await?,
            vec![InboxWatch {
                inbox_id: id.clone(),
                desired_topic: None,
                topic: Some(T2.into()),
                expires_at_ms: Some(2_000_000),
            }]
        );
        s.record_inbox_watch(&id, Ok(None)).await?;
        assert_eq!(s.inbox_watches(&acme).await?, vec![]);

        // An inbox that needs reconnecting has no usable token: not listed.
        s.apply_inbox(&m("support", 4), &spec("support@acme.example", Some(T1)))
            .await?;
        s.record_inbox_watch(&id, Ok(Some((T1, 3_000_000)))).await?;
        s.set_inbox_status(&id, InboxStatus::NeedsReconnect).await?;
        assert_eq!(s.inbox_watches(&acme).await?, vec![]);
        s.set_inbox_status(&id, InboxStatus::Connected).await?;
        // Disconnected (the Inbox deleted): its watch is listed to be stopped, wanting none.
        assert_eq!(
            s.delete_inbox(&m("support", 4)).await?,
            ApplyOutcome::Applied
        );
        assert_eq!(
            s.inbox_watches(&acme).await?,
            vec![InboxWatch {
                inbox_id: id.clone(),
                desired_topic: None,
                topic: Some(T1.into()),
                expires_at_ms: Some(3_000_000),
            }]
        );
        s.record_inbox_watch(&id, Ok(None)).await?;
        assert_eq!(s.inbox_watches(&acme).await?, vec![]);
        assert!(matches!(
            s.record_inbox_watch("no-such-inbox", Ok(None)).await,
            Err(StoreError::NotFound(_))
        ));
        Ok(())
    }

    pub async fn control_changes_are_generation_checked(b: &Backend) -> anyhow::Result<()> {
        use helpr_dataplane::search::Mode;
        use helpr_dataplane::store::{
            ApplyOutcome, ControlMeta, DeletionPolicy, GrantRole, GrantSpec, InboxSpec, Rejection,
            RetentionSpec, SubjectKind, TenantSpec, Visibility,
        };
        let s = b.store();
        let m = |ns: &str, name: &str, generation: i64| ControlMeta {
            namespace: ns.into(),
            name: name.into(),
            uid: format!("uid-{name}"),
            generation,
        };
        let spec = |policy| TenantSpec {
            display_name: "Acme".into(),
            deletion_policy: policy,
            search_mode: Mode::Blind,
        };
        // A Tenant needs its tenant row (provisioned with keys first).
        assert_eq!(
            s.apply_tenant(&m("", "acme", 1), &spec(DeletionPolicy::Shred))
                .await?,
            ApplyOutcome::Rejected(Rejection::UnknownTenant)
        );
        let acme = tenant(s, "acme").await;
        let seq0 = s.latest_control_seq().await?;
        assert_eq!(
            s.apply_tenant(&m("", "acme", 2), &spec(DeletionPolicy::Shred))
                .await?,
            ApplyOutcome::Applied
        );
        assert_eq!(
            s.apply_tenant(&m("", "acme", 2), &spec(DeletionPolicy::Retain))
                .await?,
            ApplyOutcome::AlreadyCurrent
        );
        assert_eq!(
            s.apply_tenant(&m("", "acme", 1), &spec(DeletionPolicy::Retain))
                .await?,
            ApplyOutcome::Stale {
                applied_generation: 2
            }
        );
        let settings = s.tenant_settings(&acme).await?.unwrap();
        assert_eq!(
            (settings.deletion_policy, settings.generation),
            (DeletionPolicy::Shred, 2)
        );
        assert_eq!(
            s.latest_control_seq().await?,
            seq0 + 1,
            "only the applied change is logged"
        );

        let inbox = |tenant: &str| InboxSpec {
            tenant: tid(tenant),
            address: "support@acme.example".into(),
            visibility: Visibility::Org,
            team: None,
            assignment_limits_visibility: true,
            pubsub_topic: None,
            push_audience: None,
        };
        assert_eq!(
            s.apply_inbox(&m("ns", "support", 1), &inbox("ghost"))
                .await?,
            ApplyOutcome::Rejected(Rejection::UnknownTenant)
        );
        let grant = GrantSpec {
            inbox_name: "support".into(),
            subject_kind: SubjectKind::Agent,
            subject_name: "ann".into(),
            role: GrantRole::Configure,
            expires_at_ms: None,
        };
        assert_eq!(
            s.apply_grant(&m("ns", "ann", 1), &grant).await?,
            ApplyOutcome::Rejected(Rejection::UnknownInbox)
        );
        assert_eq!(
            s.apply_inbox(&m("ns", "support", 1), &inbox("acme"))
                .await?,
            ApplyOutcome::Applied
        );
        assert_eq!(
            s.apply_grant(&m("ns", "ann", 1), &grant).await?,
            ApplyOutcome::Applied
        );
        let mapped = s.inbox_settings("ns", "support").await?.unwrap();
        assert_eq!(s.list_grants_for_inbox(&mapped.inbox_id).await?.len(), 1);
        let retention = RetentionSpec {
            tenant: acme.clone(),
            grace_period_days: 30,
            delete_after_days: Some(365),
            legal_hold: false,
        };
        assert_eq!(
            s.apply_retention_policy(&m("ns", "keep", 1), &retention)
                .await?,
            ApplyOutcome::Applied
        );
        assert_eq!(
            s.apply_retention_policy(&m("ns", "second", 1), &retention)
                .await?,
            ApplyOutcome::Rejected(Rejection::PolicyExists)
        );
        assert_eq!(
            s.retention_policy(&acme).await?.unwrap().delete_after_days,
            Some(365)
        );

        // Deleting the inbox takes its grants and disconnects it; the mail row stays.
        assert_eq!(
            s.delete_inbox(&m("ns", "support", 1)).await?,
            ApplyOutcome::Applied
        );
        assert!(s.list_grants_for_inbox(&mapped.inbox_id).await?.is_empty());
        assert_eq!(
            s.get_inbox(&mapped.inbox_id).await?.unwrap().status,
            "disconnected"
        );
        assert_eq!(
            s.delete_inbox(&m("ns", "support", 1)).await?,
            ApplyOutcome::AlreadyCurrent
        );
        assert_eq!(
            s.apply_inbox(&m("ns", "support", 2), &inbox("acme"))
                .await?,
            ApplyOutcome::Stale {
                applied_generation: 1
            },
            "a deleted object is not resurrected"
        );
        let changes = s.control_changes_since(seq0, 100).await?;
        assert!(
            changes.windows(2).all(|w| w[1].seq == w[0].seq + 1),
            "no gaps"
        );
        assert!(changes.iter().any(|c| c.deleted && c.name == "support"));

        // Shredding removes every row of the tenant.
        assert_eq!(
            s.delete_tenant(&m("", "acme", 3), DeletionPolicy::Shred)
                .await?,
            ApplyOutcome::Applied
        );
        assert!(s.get_tenant(&acme).await?.is_none());
        assert!(s.get_inbox(&mapped.inbox_id).await?.is_none());
        assert!(s.retention_policy(&acme).await?.is_none());
        assert!(s.tenant_settings(&acme).await?.is_none());
        Ok(())
    }

    fn deletion(actor: &str, reason: DeleteReason, at_ms: i64) -> Deletion {
        Deletion {
            actor: actor.into(),
            reason,
            at_ms,
        }
    }

    fn inserted(outcome: InsertOutcome) -> String {
        match outcome {
            InsertOutcome::Inserted { conversation_id } => conversation_id,
            other => panic!("{other:?}"),
        }
    }

    fn sorted(mut v: Vec<String>) -> Vec<String> {
        v.sort();
        v
    }

    /// Wake-ups for live events: PostgreSQL notifies the tenant of every committed
    /// transaction that recorded events (and only those); SQLite has none.
    pub async fn mail_event_wakeups(b: &Backend) -> anyhow::Result<()> {
        let s = b.store();
        let Some(mut listener) = s.listen_mail_events().await? else {
            assert_eq!(s.backend(), "sqlite");
            return Ok(());
        };
        assert_eq!(s.backend(), "postgres");
        let t = tenant(s, "acme").await;
        let other = tenant(s, "beta").await;
        let inbox_id = inbox(s, &t, "support@acme.example").await;
        let other_inbox = inbox(s, &other, "support@beta.example").await;
        let k = key();
        let mut next = async || {
            tokio::time::timeout(Duration::from_secs(10), listener.next())
                .await
                .expect("a wake-up within 10 s")
        };
        let m1 = message(&k, &t, &inbox_id, "gm-1", "th-a", 1_000, 0);
        s.insert_message(&m1).await?;
        assert_eq!(next().await?, Some(t.clone()));
        // A duplicate delivery records no event and wakes no one: the next wake-up is the
        // other tenant's.
        s.insert_message(&m1).await?;
        let theirs = message(&k, &other, &other_inbox, "gm-9", "th-z", 3_000, 0);
        s.insert_message(&theirs).await?;
        assert_eq!(next().await?, Some(other.clone()));
        let user = deletion("agent-7", DeleteReason::User, 10_000);
        assert!(s.soft_delete_message(&t, &m1.id, &user).await?);
        assert_eq!(next().await?, Some(t.clone()));
        Ok(())
    }

    /// Live events: written in the transaction of each change (stored, soft-deleted,
    /// restored), ids only, per tenant, in order; a duplicate insert writes none; pruned by
    /// age; gone with the tenant's data.
    pub async fn mail_events_follow_changes(b: &Backend) -> anyhow::Result<()> {
        use helpr_dataplane::store::MailEventKind as K;
        let s = b.store();
        let t = tenant(s, "acme").await;
        let other = tenant(s, "beta").await;
        let inbox_id = inbox(s, &t, "support@acme.example").await;
        let other_inbox = inbox(s, &other, "support@beta.example").await;
        let k = key();
        assert_eq!(s.latest_mail_event(&t).await?, 0);
        let start = 0;
        let m1 = message(&k, &t, &inbox_id, "gm-1", "th-a", 1_000, 0);
        let m2 = message(&k, &t, &inbox_id, "gm-2", "th-b", 2_000, 0);
        let conv_a = inserted(s.insert_message(&m1).await?);
        // A second delivery of the same Gmail message stores nothing and says nothing.
        assert!(matches!(
            s.insert_message(&m1).await?,
            InsertOutcome::AlreadyStored { .. }
        ));
        s.store_synced_messages(&t, &inbox_id, &[m2.clone(), m1.clone()], Some(10))
            .await?;
        let theirs = message(&k, &other, &other_inbox, "gm-9", "th-z", 3_000, 0);
        s.insert_message(&theirs).await?;
        let user = |at| deletion("agent-7", DeleteReason::User, at);
        assert!(s.soft_delete_message(&t, &m2.id, &user(10_000)).await?);
        s.soft_delete_conversation(&t, &conv_a, &user(11_000))
            .await?;
        s.restore_conversation(&t, &conv_a, "agent-7", 0, 12_000)
            .await?;
        s.restore_message(&t, &m2.id, "agent-7", 0, 13_000).await?;

        let events = s.mail_events_after(&t, start, 100).await?;
        let seen: Vec<_> = events
            .iter()
            .map(|e| {
                (
                    e.kind,
                    e.inbox_id.as_str(),
                    e.message_id.clone().unwrap_or_default(),
                )
            })
            .collect();
        assert_eq!(
            seen,
            vec![
                (K::MessageStored, inbox_id.as_str(), m1.id.clone()),
                (K::MessageStored, inbox_id.as_str(), m2.id.clone()),
                (K::MessageDeleted, inbox_id.as_str(), m2.id.clone()),
                (K::ConversationDeleted, inbox_id.as_str(), String::new()),
                (K::ConversationRestored, inbox_id.as_str(), String::new()),
                (K::MessageRestored, inbox_id.as_str(), m2.id.clone()),
            ]
        );
        // Per tenant, numbered 1, 2, 3, ... in commit order.
        let seqs: Vec<i64> = events.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, (1..=6).collect::<Vec<_>>());
        assert_eq!(events[0].conversation_id, conv_a);
        assert_eq!(events[3].conversation_id, conv_a);
        assert_eq!(events[2].at_ms, 10_000);
        // Paging by sequence number, and the other tenant's own event.
        let rest = s.mail_events_after(&t, events[1].seq, 2).await?;
        assert_eq!(rest, events[2..4].to_vec());
        let theirs_events = s.mail_events_after(&other, start, 100).await?;
        assert_eq!(theirs_events.len(), 1);
        assert_eq!(
            theirs_events[0].message_id.as_deref(),
            Some(theirs.id.as_str())
        );
        assert_eq!(theirs_events[0].seq, 1);
        assert_eq!(s.latest_mail_event(&t).await?, 6);
        assert_eq!(s.latest_mail_event(&other).await?, 1);

        // Concurrent writers of one tenant: every event numbered, none twice, no gaps.
        let many: Vec<_> = (0..16)
            .map(|i| {
                message(
                    &k,
                    &other,
                    &other_inbox,
                    &format!("gm-c{i}"),
                    "th-c",
                    4_000 + i,
                    0,
                )
            })
            .collect();
        let inserts = futures::future::join_all(many.iter().map(|m| s.insert_message(m))).await;
        assert!(inserts.iter().all(Result::is_ok), "{inserts:?}");
        let seqs: Vec<i64> = s
            .mail_events_after(&other, 1, 100)
            .await?
            .iter()
            .map(|e| e.seq)
            .collect();
        assert_eq!(seqs, (2..=17).collect::<Vec<_>>());

        // Pruned by age: the stored events carry the time of storing, the others theirs.
        assert_eq!(s.prune_mail_events(12_500).await?, 3);
        assert_eq!(s.mail_events_after(&t, start, 100).await?.len(), 3);
        s.prune_mail_events(now_ms() + 1).await?;
        assert!(s.mail_events_after(&t, start, 100).await?.is_empty());
        Ok(())
    }

    pub async fn soft_delete_restore_and_purge(b: &Backend) -> anyhow::Result<()> {
        let s = b.store();
        let t = tenant(s, "acme").await;
        let other = tenant(s, "beta").await;
        let inbox_id = inbox(s, &t, "support@acme.example").await;
        let k = key();
        let m1 = message(&k, &t, &inbox_id, "gm-1", "th-a", 1_000, 2);
        let m2 = message(&k, &t, &inbox_id, "gm-2", "th-a", 2_000, 1);
        let m3 = message(&k, &t, &inbox_id, "gm-3", "th-b", 3_000, 0);
        let conv_a = inserted(s.insert_message(&m1).await?);
        s.insert_message(&m2).await?;
        let conv_b = inserted(s.insert_message(&m3).await?);
        s.mark_indexed(&t, &[m1.id.clone(), m2.id.clone(), m3.id.clone()], None)
            .await?;
        let user = |at| deletion("agent-7", DeleteReason::User, at);

        // Another tenant cannot touch it; unknown ids are NotFound.
        assert!(matches!(
            s.soft_delete_message(&other, &m1.id, &user(10_000)).await,
            Err(StoreError::NotFound("message"))
        ));
        assert!(matches!(
            s.soft_delete_conversation(&other, &conv_a, &user(10_000))
                .await,
            Err(StoreError::NotFound("conversation"))
        ));

        // Soft delete: invisible to reads, marked for the indexer, idempotent.
        assert!(s.get_attachment_data(&t, &m1.id, 1).await?.is_some());
        assert!(s.soft_delete_message(&t, &m1.id, &user(10_000)).await?);
        assert!(!s.soft_delete_message(&t, &m1.id, &user(20_000)).await?);
        assert_eq!(s.get_message(&t, &m1.id).await?, None);
        assert_eq!(s.get_attachment_data(&t, &m1.id, 1).await?, None);
        assert_eq!(
            s.list_message_ids(&t, &inbox_id, 10).await?,
            vec![m3.id.clone(), m2.id.clone()]
        );
        assert_eq!(s.pending_index(&t, 10).await?, vec![m1.id.clone()]);
        // The indexer cannot clear it by indexing; only a confirmed removal does.
        s.mark_indexed(&t, std::slice::from_ref(&m1.id), None)
            .await?;
        assert_eq!(s.pending_index(&t, 10).await?, vec![m1.id.clone()]);
        // Still known to sync (not fetched and stored again).
        assert_eq!(
            s.stored_gmail_ids(&inbox_id, &["gm-1".into()]).await?,
            vec!["gm-1"]
        );
        assert!(matches!(
            s.insert_message(&m1).await?,
            InsertOutcome::AlreadyStored { .. }
        ));

        // The rest of the conversation; a repeat changes nothing.
        assert_eq!(
            s.soft_delete_conversation(&t, &conv_a, &user(10_000))
                .await?,
            vec![m2.id.clone()]
        );
        assert!(
            s.soft_delete_conversation(&t, &conv_a, &user(11_000))
                .await?
                .is_empty()
        );
        s.mark_removed_from_index(&t, &[m1.id.clone(), m2.id.clone(), m3.id.clone()])
            .await?;
        assert!(s.pending_index(&t, 10).await?.is_empty());

        // Purge candidates: by deletion time (the first one's stays 10 000), in id order.
        let candidates = s.list_purge_candidates(&t, 10_000, None, 10).await?;
        assert_eq!(
            candidates
                .iter()
                .map(|c| c.message_id.clone())
                .collect::<Vec<_>>(),
            sorted(vec![m1.id.clone(), m2.id.clone()])
        );
        assert!(candidates.iter().all(|c| c.deleted_at_ms == 10_000
            && c.conversation_id == conv_a
            && c.inbox_id == inbox_id
            && !c.index_pending));
        assert!(
            s.list_purge_candidates(&t, 9_999, None, 10)
                .await?
                .is_empty()
        );
        let first = s.list_purge_candidates(&t, 10_000, None, 1).await?;
        let second = s
            .list_purge_candidates(&t, 10_000, Some(&first[0].message_id), 10)
            .await?;
        assert_eq!(second.len(), 1);
        assert_ne!(first[0].message_id, second[0].message_id);
        assert!(
            s.list_purge_candidates(&other, i64::MAX, None, 10)
                .await?
                .is_empty()
        );

        // Restore only within the grace period (deleted after the cutoff).
        assert_eq!(
            s.restore_message(&t, &m1.id, "agent-7", 10_000, 70_000)
                .await?,
            RestoreOutcome {
                restored: 0,
                expired: 1
            }
        );
        assert_eq!(s.get_message(&t, &m1.id).await?, None);
        assert_eq!(
            s.restore_message(&t, &m1.id, "agent-7", 9_999, 70_000)
                .await?,
            RestoreOutcome {
                restored: 1,
                expired: 0
            }
        );
        let back = s.get_message(&t, &m1.id).await?.expect("restored");
        assert_eq!(back.attachments.len(), 2);
        assert_eq!(back.fields, m1.fields);
        // Marked, so the indexer indexes it again from the sealed store.
        assert_eq!(s.pending_index(&t, 10).await?, vec![m1.id.clone()]);
        assert_eq!(
            s.restore_message(&t, &m1.id, "agent-7", 9_999, 70_000)
                .await?,
            RestoreOutcome::default()
        );
        assert!(matches!(
            s.restore_message(&other, &m1.id, "x", 0, 0).await,
            Err(StoreError::NotFound("message"))
        ));
        // A live message's marker is not cleared by a removal confirmation.
        s.mark_removed_from_index(&t, std::slice::from_ref(&m1.id))
            .await?;
        assert_eq!(s.pending_index(&t, 10).await?, vec![m1.id.clone()]);
        assert_eq!(
            s.restore_conversation(&t, &conv_a, "agent-7", 9_999, 70_000)
                .await?,
            RestoreOutcome {
                restored: 1,
                expired: 0
            }
        );
        assert_eq!(s.list_message_ids(&t, &inbox_id, 10).await?.len(), 3);
        assert!(matches!(
            s.restore_conversation(&t, "nope", "x", 0, 0).await,
            Err(StoreError::NotFound("conversation"))
        ));

        // delete_after_days candidates: conversations with live mail older than the cutoff.
        let old = s.list_conversations_older_than(&t, 2_500, None, 10).await?;
        assert_eq!(old.len(), 1);
        assert_eq!(
            (old[0].conversation_id.as_str(), old[0].last_message_at_ms),
            (conv_a.as_str(), 2_000)
        );
        assert_eq!(
            s.list_conversations_older_than(&t, 3_001, None, 10)
                .await?
                .len(),
            2
        );
        assert!(
            s.list_conversations_older_than(&other, i64::MAX, None, 10)
                .await?
                .is_empty()
        );

        // Purge: only what is still soft-deleted at or before the cutoff.
        let retention = deletion("retention", DeleteReason::Retention, 30_000);
        assert_eq!(
            s.soft_delete_conversation(&t, &conv_a, &retention).await?,
            sorted(vec![m1.id.clone(), m2.id.clone()])
        );
        assert!(
            s.list_conversations_older_than(&t, 2_500, None, 10)
                .await?
                .is_empty()
        );
        assert!(s.soft_delete_message(&t, &m3.id, &user(10_000)).await?);
        let all = vec![m1.id.clone(), m2.id.clone(), m3.id.clone()];
        assert_eq!(
            s.purge_messages(&t, &all, 29_999, "retention", 90_000)
                .await?,
            PurgeOutcome {
                messages: 1,
                conversations: 1
            }
        );
        assert_eq!(
            s.purge_messages(&other, &all, i64::MAX, "retention", 90_000)
                .await?,
            PurgeOutcome::default()
        );
        assert_eq!(
            s.purge_messages(&t, &all, 30_000, "retention", 90_000)
                .await?,
            PurgeOutcome {
                messages: 2,
                conversations: 1
            }
        );
        assert_eq!(
            s.purge_messages(&t, &all, i64::MAX, "retention", 90_000)
                .await?,
            PurgeOutcome::default()
        );
        assert!(matches!(
            s.restore_conversation(&t, &conv_b, "x", 0, 0).await,
            Err(StoreError::NotFound("conversation"))
        ));

        // Every action left an audit row: ids and verbs.
        let audit: Vec<(String, String, String, String)> = s
            .list_audit_events(&t, 100)
            .await?
            .into_iter()
            .map(|e| (e.actor, e.action, e.target_kind, e.target_id))
            .collect();
        let has = |actor: &str, action: &str, id: &str| {
            audit
                .iter()
                .any(|(a, v, _, i)| a == actor && v == action && i == id)
        };
        assert!(has("agent-7", "message.soft_delete", &m1.id));
        assert!(has("agent-7", "conversation.soft_delete", &conv_a));
        assert!(has("agent-7", "message.restore", &m1.id));
        assert!(has("agent-7", "conversation.restore", &conv_a));
        assert!(has("retention", "conversation.soft_delete", &conv_a));
        for m in [&m1, &m2, &m3] {
            assert!(has("retention", "message.purge", &m.id));
        }
        // Repeats wrote no extra rows: one soft delete of m1, one of conv_a by the agent.
        assert_eq!(
            audit
                .iter()
                .filter(|(_, v, _, i)| v == "message.soft_delete" && i == &m1.id)
                .count(),
            1
        );
        assert_eq!(audit.len(), 9, "{audit:?}");
        assert!(s.list_audit_events(&other, 100).await?.is_empty());

        // Zero trace: no row, cell or file byte of the purged mail remains. The audit trail
        // keeps ids (it outlives what it refers to), never content.
        let cells = b.dump().await?;
        assert_eq!(count(&cells, "messages", "id"), 0);
        assert_eq!(count(&cells, "attachments", "id"), 0);
        assert_eq!(count(&cells, "conversations", "id"), 0);
        let mut needles: Vec<Vec<u8>> = Vec::new();
        for m in [&m1, &m2, &m3] {
            for v in sealed_values(m) {
                needles.push(v.as_bytes().to_vec());
                needles.push(v.as_bytes()[17..].to_vec());
            }
            needles.push(m.gmail_message_id.as_bytes().to_vec());
            for a in &m.attachments {
                needles.push(a.id.as_bytes().to_vec());
            }
        }
        needles.push(b"th-a".to_vec());
        needles.push(b"th-b".to_vec());
        for needle in &needles {
            let found = scan::find_bytes(&cells, needle);
            assert!(found.is_empty(), "purged data still in {found:?}");
        }
        for id in [&m1.id, &m2.id, &m3.id, &conv_a, &conv_b] {
            let found = scan::find_bytes(&cells, id.as_bytes());
            assert!(
                found.iter().all(|(table, _)| table == "audit_events"),
                "purged id outside the audit trail: {found:?}"
            );
        }
        if let Some(raw) = b.raw_files().await? {
            for m in [&m1, &m2, &m3] {
                for v in sealed_values(m) {
                    assert!(
                        !scan::contains_bytes(&raw, &v.as_bytes()[17..]),
                        "sealed bytes of a purged message remain in the database file"
                    );
                }
            }
        }
        Ok(())
    }

    pub async fn inbox_soft_delete_cascades_to_later_mail(b: &Backend) -> anyhow::Result<()> {
        let s = b.store();
        let t = tenant(s, "acme").await;
        let other = tenant(s, "beta").await;
        let inbox_id = inbox(s, &t, "support@acme.example").await;
        let kept = inbox(s, &t, "billing@acme.example").await;
        let k = key();
        let m1 = message(&k, &t, &inbox_id, "gm-1", "th-a", 1_000, 1);
        let m2 = message(&k, &t, &inbox_id, "gm-2", "th-b", 2_000, 0);
        let other_inbox = message(&k, &t, &kept, "gm-9", "th-z", 1_500, 0);
        for m in [&m1, &m2, &other_inbox] {
            s.insert_message(m).await?;
        }
        let gone = deletion("operator", DeleteReason::InboxDeleted, 50_000);
        assert!(matches!(
            s.soft_delete_inbox(&other, &inbox_id, &gone).await,
            Err(StoreError::NotFound("inbox"))
        ));
        assert_eq!(
            s.soft_delete_inbox(&t, &inbox_id, &gone).await?,
            sorted(vec![m1.id.clone(), m2.id.clone()])
        );
        assert!(s.soft_delete_inbox(&t, &inbox_id, &gone).await?.is_empty());
        assert!(s.list_message_ids(&t, &inbox_id, 10).await?.is_empty());
        assert_eq!(
            s.list_message_ids(&t, &kept, 10).await?,
            vec![other_inbox.id.clone()]
        );

        // Mail stored into the deleted inbox afterwards arrives soft-deleted, with the
        // inbox's deletion time (one insert, and a synced batch).
        let late = message(&k, &t, &inbox_id, "gm-3", "th-a", 3_000, 0);
        s.insert_message(&late).await?;
        let synced = message(&k, &t, &inbox_id, "gm-4", "th-c", 4_000, 0);
        s.store_synced_messages(&t, &inbox_id, std::slice::from_ref(&synced), Some(77))
            .await?;
        for m in [&late, &synced] {
            assert_eq!(s.get_message(&t, &m.id).await?, None);
        }
        let candidates = s.list_purge_candidates(&t, 50_000, None, 10).await?;
        assert_eq!(candidates.len(), 4);
        assert!(
            candidates
                .iter()
                .all(|c| c.deleted_at_ms == 50_000 && c.index_pending)
        );
        // Nothing can be restored into a deleted inbox.
        assert!(matches!(
            s.restore_message(&t, &m1.id, "agent", 0, 60_000).await,
            Err(StoreError::Conflict(_))
        ));
        let audit = s.list_audit_events(&t, 10).await?;
        assert_eq!(
            audit
                .iter()
                .filter(|e| e.action == "inbox.soft_delete" && e.target_id == inbox_id)
                .count(),
            1
        );
        Ok(())
    }

    pub async fn unavailable_database(b: &Backend) -> anyhow::Result<()> {
        let down = b.unreachable_store().await?;
        let t = tid("acme");
        let results: Vec<Result<(), StoreError>> = vec![
            down.list_tenants().await.map(drop),
            down.get_tenant(&t).await.map(drop),
            down.reserve_seals(&t, DekVersion::FIRST, 1, 10)
                .await
                .map(drop),
            down.insert_message(&message(&key(), &t, "i", "g", "th", 1, 0))
                .await
                .map(drop),
            down.delete_message(&t, "m").await.map(drop),
        ];
        for r in results {
            let e = r.expect_err("database is down");
            assert!(matches!(e, StoreError::Unavailable(_)), "{e:?}");
            assert!(e.is_retryable());
            assert!(!e.to_string().contains("s3cret-pw"), "{e}");
        }
        Ok(())
    }
}

#[tokio::test]
async fn unreachable_postgres_migrate_is_unavailable() -> anyhow::Result<()> {
    let pool = PgPoolOptions::new()
        .acquire_timeout(Duration::from_millis(500))
        .connect_lazy("postgres://postgres:s3cret-pw@127.0.0.1:1/helpr")?;
    let e = PgStore::from_pool(pool).migrate().await.expect_err("down");
    assert!(e.is_retryable(), "{e:?}");
    assert!(!e.to_string().contains("s3cret-pw"), "{e}");
    Ok(())
}

macro_rules! conformance {
    ($($case:ident),* $(,)?) => {
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $case() -> anyhow::Result<()> {
                    let backend = super::Backend::postgres().await?;
                    assert_eq!(backend.store().backend(), "postgres");
                    super::cases::$case(&backend).await
                }
            )*
        }
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $case() -> anyhow::Result<()> {
                    let backend = super::Backend::sqlite().await?;
                    assert_eq!(backend.store().backend(), "sqlite");
                    super::cases::$case(&backend).await
                }
            )*
        }
    };
}

conformance!(
    tenants,
    key_versions,
    reserve_seals_in_blocks,
    reserve_seals_concurrently,
    replace_wrapped_dek,
    inboxes,
    message_round_trip,
    insert_message_is_idempotent,
    messages_group_into_conversations,
    insert_refuses_foreign_inbox,
    delete_message_leaves_no_trace,
    soft_delete_restore_and_purge,
    mail_events_follow_changes,
    mail_event_wakeups,
    inbox_soft_delete_cascades_to_later_mail,
    index_outbox_and_index_keys,
    index_key_rotation,
    audit_events,
    search_tombstones,
    unavailable_database,
    sync_jobs_enqueue_replay_duplicate_and_claim,
    synced_messages_advance_the_high_water_mark_atomically,
    inbox_status_and_refresh_token_compare_and_swap,
    control_changes_are_generation_checked,
    inbox_sync_status_follows_the_inbox,
    push_watches_follow_the_inbox_topic,
);

#[tokio::test]
async fn sqlite_connection_settings() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    // The file does not exist yet: connect creates it.
    let store = SqliteStore::connect(&sqlite_url(dir.path())).await?;
    let mut conn = store.pool().acquire().await?;
    let journal: String = sqlx::query_scalar("PRAGMA journal_mode")
        .fetch_one(&mut *conn)
        .await?;
    assert_eq!(journal.to_lowercase(), "wal");
    for (pragma, want) in [
        ("foreign_keys", 1i64),
        ("secure_delete", 1),
        ("busy_timeout", 5000),
    ] {
        let got: i64 = sqlx::query_scalar(&format!("PRAGMA {pragma}"))
            .fetch_one(&mut *conn)
            .await?;
        assert_eq!(got, want, "{pragma}");
    }
    Ok(())
}

#[tokio::test]
async fn sqlite_in_memory_via_connect() -> anyhow::Result<()> {
    let store = helpr_dataplane::store::connect("sqlite::memory:").await?;
    assert_eq!(store.backend(), "sqlite");
    let t = tenant(store.as_ref(), "acme").await;
    assert_eq!(store.list_tenants().await?.len(), 1);
    assert_eq!(store.get_tenant(&t).await?.map(|r| r.id), Some(t));
    Ok(())
}
