//! Lifecycle end to end: imported mail is soft-deleted (gone from search at once), restored
//! within the grace period (indexed again from the sealed store), purged once the grace
//! period has passed on an injected clock (no trace left in the store), held by a legal
//! hold, auto-deleted by `delete_after_days`, repaired by the indexer after a crash between
//! store and index, and purged by the `helpr-dataplane purge` binary. SQLite and PostgreSQL.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use helpr_dataplane::ids::TenantId;
use helpr_dataplane::keyring::{Keyring, KeyringConfig};
use helpr_dataplane::kms::local::LocalKms;
use helpr_dataplane::lifecycle::{
    DAY_MS, IndexRemoval, Lifecycle, LifecycleError, PurgeOptions, PurgeReport,
};
use helpr_dataplane::search::service::SearchService;
use helpr_dataplane::search::{Mode, SearchIndex, TantivyConfig, TantivyIndex};
use helpr_dataplane::store::{
    ControlMeta, DeleteReason, Deletion, NewInbox, PgStore, RestoreOutcome, RetentionSpec,
    SqliteStore, Store, now_ms,
};
use helpr_dataplane::tools::{self, RawMessage};
use helpr_tests::postgres::{TestDatabase, sqlite_url};
use helpr_tests::scan;

struct Env {
    keyring: Arc<Keyring>,
    store: Arc<dyn Store>,
    index: Arc<TantivyIndex>,
    svc: SearchService,
    lifecycle: Lifecycle,
    tenant: TenantId,
    inbox: String,
    pg: Option<(sqlx::PgPool, TestDatabase)>,
    sqlite: Option<sqlx::SqlitePool>,
    dir: tempfile::TempDir,
}

impl Env {
    /// The holder's background indexer for the tenant (every 20 ms), and its stop switch.
    fn spawn_indexer(
        &self,
    ) -> (
        tokio::sync::watch::Sender<bool>,
        tokio::task::JoinHandle<()>,
    ) {
        let svc = Arc::new(SearchService::new(
            self.keyring.clone(),
            self.index.clone(),
            Mode::Blind,
        ));
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let indexer = tokio::spawn(tools::run_indexer(
            svc,
            self.store.clone(),
            Duration::from_millis(20),
            Some(self.tenant.clone()),
            stopped,
        ));
        (stop, indexer)
    }

    async fn new(postgres: bool) -> Env {
        let dir = tempfile::tempdir().unwrap();
        let (store, pg, sqlite): (Arc<dyn Store>, _, _) = if postgres {
            let db = TestDatabase::create().await.unwrap();
            let s = PgStore::connect(&db.url).await.unwrap();
            let pool = s.pool().clone();
            (Arc::new(s), Some((pool, db)), None)
        } else {
            let s = SqliteStore::connect(&sqlite_url(dir.path())).await.unwrap();
            let pool = s.pool().clone();
            (Arc::new(s), None, Some(pool))
        };
        let kms = Arc::new(LocalKms::open(dir.path().join("kms")).unwrap());
        let keyring = Arc::new(Keyring::new(kms, store.clone(), KeyringConfig::default()));
        let mut cfg = TantivyConfig::new(dir.path().join("index"));
        cfg.commit_interval = Duration::ZERO;
        cfg.writer_heap_bytes = TantivyConfig::MIN_WRITER_HEAP_BYTES;
        let index = Arc::new(TantivyIndex::open(cfg).unwrap());
        let svc = SearchService::new(keyring.clone(), index.clone(), Mode::Blind);
        let lifecycle = Lifecycle::new(store.clone(), index.clone());
        let tenant = TenantId::new("acme").unwrap();
        keyring.provision_tenant(&tenant, "Acme").await.unwrap();
        let inbox = helpr_dataplane::ids::new_record_id();
        store
            .create_inbox(&NewInbox {
                id: inbox.clone(),
                tenant_id: tenant.clone(),
                address: "support@acme.example".into(),
                connected_at_ms: now_ms(),
            })
            .await
            .unwrap();
        Env {
            keyring,
            store,
            index,
            svc,
            lifecycle,
            tenant,
            inbox,
            pg,
            sqlite,
            dir,
        }
    }

    fn inboxes(&self) -> BTreeSet<String> {
        [self.inbox.clone()].into()
    }

    async fn import(&self, messages: &[RawMessage]) {
        let inbox = tools::find_inbox(&self.keyring, &self.tenant, "support@acme.example")
            .await
            .unwrap();
        let r = tools::import(&self.svc, &self.keyring, &inbox, messages, |_, _| {})
            .await
            .unwrap();
        assert_eq!(r.stored, messages.len());
    }

    /// (subject, conversation id) of each hit.
    async fn search(&self, q: &str) -> Vec<(String, String)> {
        self.svc
            .search(&self.tenant, &self.inboxes(), q, 50, None)
            .await
            .unwrap()
            .hits
            .into_iter()
            .map(|h| (h.subject, h.conversation_id))
            .collect()
    }

    async fn conversation_of(&self, q: &str) -> String {
        let hits = self.search(q).await;
        assert_eq!(hits.len(), 1, "{q}: {hits:?}");
        hits[0].1.clone()
    }

    async fn documents(&self) -> u64 {
        self.index.stats(&self.tenant).await.unwrap().documents
    }

    async fn run(&self, now: i64, dry_run: bool) -> PurgeReport {
        self.lifecycle
            .run_retention(
                &self.tenant,
                PurgeOptions {
                    now_ms: now,
                    batch: 2,
                    dry_run,
                },
            )
            .await
            .unwrap()
    }

    async fn set_policy(&self, generation: i64, grace: u32, after: Option<u32>, hold: bool) {
        let meta = ControlMeta {
            namespace: "acme".into(),
            name: "keep".into(),
            uid: "uid-keep".into(),
            generation,
        };
        let spec = RetentionSpec {
            tenant: self.tenant.clone(),
            grace_period_days: grace,
            delete_after_days: after,
            legal_hold: hold,
        };
        self.store
            .apply_retention_policy(&meta, &spec)
            .await
            .unwrap();
    }

    async fn dump(&self) -> Vec<scan::Cell> {
        match (&self.pg, &self.sqlite) {
            (Some((pool, _)), _) => scan::dump_all_bytes_postgres(pool).await.unwrap(),
            (_, Some(pool)) => scan::dump_all_bytes_sqlite(pool).await.unwrap(),
            _ => unreachable!(),
        }
    }
}

fn eml(subject: &str, date: &str, body: &str) -> RawMessage {
    let text = format!(
        "From: Bob Stone <bob@client.example>\r\nTo: support@acme.example\r\nSubject: {subject}\r\n\
         Date: {date}\r\nMessage-ID: <{}@test.example>\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n{body}\r\n",
        uuid::Uuid::new_v4()
    );
    RawMessage {
        origin: subject.to_owned(),
        bytes: text.into_bytes(),
    }
}

fn sample() -> Vec<RawMessage> {
    vec![
        eml(
            "Password reset does not arrive",
            "Wed, 07 Oct 2026 10:00:00 +0000",
            "I requested a password reset twice, no email arrived.",
        ),
        eml(
            "Invoice for October",
            "Thu, 08 Oct 2026 11:30:00 +0000",
            "Please send the invoice for October again.",
        ),
        eml(
            "Shipping label broken",
            "Fri, 09 Oct 2026 12:00:00 +0000",
            "The shipping label prints blank.",
        ),
    ]
}

/// 2026-11-01T00:00:00Z: the injected clock starts here.
const T0: i64 = 1_793_491_200_000;

async fn soft_delete_restore_grace_purge_and_legal_hold(postgres: bool) {
    let env = Env::new(postgres).await;
    env.import(&sample()).await;
    assert_eq!(env.documents().await, 3);
    let password = env.conversation_of("password").await;
    let invoice = env.conversation_of("invoice").await;
    let shipping = env.conversation_of("shipping").await;
    let t = &env.tenant;

    // Soft delete: gone from search at once, and from the index itself.
    let done = env
        .lifecycle
        .delete_conversation(t, &password, "agent-7", T0)
        .await
        .unwrap();
    assert_eq!((done.messages, done.index), (1, IndexRemoval::Done));
    assert!(env.search("password").await.is_empty());
    assert_eq!(env.documents().await, 2);
    assert_eq!(
        env.store.index_progress(t).await.unwrap().0,
        0,
        "removal confirmed"
    );
    // A repeat changes nothing.
    let again = env
        .lifecycle
        .delete_conversation(t, &password, "agent-7", T0 + 5)
        .await
        .unwrap();
    assert_eq!(again.messages, 0);

    // Restore within the grace period (default 60 days): searchable again once the
    // indexer has indexed it again from the sealed store.
    let restored = env
        .lifecycle
        .restore_conversation(t, &password, "agent-7", T0 + 59 * DAY_MS)
        .await
        .unwrap();
    assert_eq!(
        restored,
        RestoreOutcome {
            restored: 1,
            expired: 0
        }
    );
    assert_eq!(
        env.svc.index_all_pending(t, 50, |_, _| {}).await.unwrap(),
        1
    );
    assert_eq!(env.search("password").await.len(), 1);
    assert_eq!(env.documents().await, 3);

    // Deleted again at T1: not purged one millisecond before the grace period ends, nor
    // restorable after it; purged for good at its end.
    let t1 = T0 + 70 * DAY_MS;
    env.lifecycle
        .delete_conversation(t, &password, "agent-7", t1)
        .await
        .unwrap();
    let early = env.run(t1 + 60 * DAY_MS - 1, false).await;
    assert_eq!((early.purged_messages, early.skipped_legal_hold), (0, 0));
    assert_eq!(early.grace_period_days, 60);
    let late = env
        .lifecycle
        .restore_conversation(t, &password, "agent-7", t1 + 60 * DAY_MS)
        .await
        .unwrap();
    assert_eq!(
        late,
        RestoreOutcome {
            restored: 0,
            expired: 1
        }
    );
    let dry = env.run(t1 + 60 * DAY_MS, true).await;
    assert_eq!((dry.dry_run, dry.purged_messages), (true, 1));
    assert_eq!(
        dry.compacted_index_documents, 0,
        "a dry run changes nothing"
    );
    assert_eq!(
        env.store
            .list_purge_candidates(t, i64::MAX, None, 10)
            .await
            .unwrap()
            .len(),
        1
    );
    let purged = env.run(t1 + 60 * DAY_MS, false).await;
    assert_eq!(
        (purged.purged_messages, purged.purged_conversations),
        (1, 1)
    );
    // The index files keep nothing of deleted mail after a purge.
    assert_eq!(purged.index_compaction, IndexRemoval::Done);
    assert_eq!(env.index.stats(t).await.unwrap().deleted_documents, 0);
    assert_eq!(env.run(t1 + 60 * DAY_MS, false).await.purged_messages, 0);
    assert!(matches!(
        env.lifecycle
            .restore_conversation(t, &password, "agent-7", t1 + 61 * DAY_MS)
            .await,
        Err(LifecycleError::NotFound(_, "conversation"))
    ));
    // Zero trace: the conversation's id survives only in the audit trail.
    let cells = env.dump().await;
    let found = scan::find_bytes(&cells, password.as_bytes());
    assert!(
        found.iter().all(|(table, _)| table == "audit_events"),
        "{found:?}"
    );
    assert_eq!(
        cells
            .iter()
            .filter(|(table, column, _)| table == "messages" && column == "id")
            .count(),
        2
    );

    // Legal hold: nothing is purged or deleted, what was due is reported.
    let t2 = t1 + 100 * DAY_MS;
    env.set_policy(1, 7, Some(30), true).await;
    env.lifecycle
        .delete_conversation(t, &invoice, "agent-7", t2)
        .await
        .unwrap();
    let held = env.run(t2 + 100 * DAY_MS, false).await;
    assert!(held.legal_hold);
    assert_eq!(held.purged_messages, 0);
    assert_eq!(held.soft_deleted_conversations, 0);
    // One purge (invoice) and one auto-delete (shipping) were due.
    assert_eq!(held.skipped_legal_hold, 2);
    assert_eq!(
        env.store
            .list_purge_candidates(t, i64::MAX, None, 10)
            .await
            .unwrap()
            .len(),
        1
    );
    assert_eq!(env.search("shipping").await.len(), 1);

    // Hold lifted (7-day grace, auto-delete after 30 days): the shipping conversation (mail
    // from October 2026) is soft-deleted by retention, the invoice purged.
    env.set_policy(2, 7, Some(30), false).await;
    let dry = env.run(t2 + 8 * DAY_MS, true).await;
    assert_eq!(
        (dry.soft_deleted_conversations, dry.purged_messages),
        (1, 1)
    );
    assert_eq!(
        env.search("shipping").await.len(),
        1,
        "a dry run changes nothing"
    );
    let run = env.run(t2 + 8 * DAY_MS, false).await;
    assert_eq!(
        (
            run.soft_deleted_conversations,
            run.soft_deleted_messages,
            run.purged_messages,
            run.purged_conversations,
            run.skipped_legal_hold,
        ),
        (1, 1, 1, 1, 0)
    );
    assert!(env.search("shipping").await.is_empty());
    assert_eq!(env.documents().await, 0);
    // It can be restored within its own grace period.
    let back = env
        .lifecycle
        .restore_conversation(t, &shipping, "agent-7", t2 + 9 * DAY_MS)
        .await
        .unwrap();
    assert_eq!(back.restored, 1);

    let audit = env.store.list_audit_events(t, 100).await.unwrap();
    assert!(audit.iter().any(|e| e.actor == "retention"
        && e.action == "conversation.soft_delete"
        && e.target_id == shipping));
    assert!(
        audit
            .iter()
            .any(|e| e.actor == "retention" && e.action == "message.purge")
    );

    // Unknown tenant and bad options: clear errors.
    let nobody = TenantId::new("nobody").unwrap();
    assert!(matches!(
        env.lifecycle
            .run_retention(&nobody, PurgeOptions::at(T0))
            .await,
        Err(LifecycleError::UnknownTenant(_))
    ));
    let zero = PurgeOptions {
        batch: 0,
        ..PurgeOptions::at(T0)
    };
    assert!(matches!(
        env.lifecycle.run_retention(t, zero).await,
        Err(LifecycleError::InvalidBatch)
    ));
    drop(env.dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_soft_delete_restore_grace_purge_and_legal_hold() {
    soft_delete_restore_grace_purge_and_legal_hold(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_soft_delete_restore_grace_purge_and_legal_hold() {
    soft_delete_restore_grace_purge_and_legal_hold(true).await;
}

/// A crash after the store recorded a soft delete but before the index delete: searches hide
/// the message at once (per-hit re-check), and the indexer removes it from the index.
async fn crash_between_store_and_index_is_repaired(postgres: bool) {
    let env = Env::new(postgres).await;
    env.import(&sample()).await;
    let t = &env.tenant;
    let hit = env
        .svc
        .search(t, &env.inboxes(), "invoice", 10, None)
        .await
        .unwrap()
        .hits[0]
        .message_id
        .clone();
    // Only the store step happens.
    let deletion = Deletion {
        actor: "agent-7".into(),
        reason: DeleteReason::User,
        at_ms: T0,
    };
    assert!(
        env.store
            .soft_delete_message(t, &hit, &deletion)
            .await
            .unwrap()
    );
    assert!(env.search("invoice").await.is_empty());
    assert_eq!(env.documents().await, 3, "still in the index");
    // The repair path: the indexer sees the marker and removes the message.
    assert_eq!(
        env.svc.index_all_pending(t, 50, |_, _| {}).await.unwrap(),
        1
    );
    assert_eq!(env.documents().await, 2);
    assert_eq!(env.store.index_progress(t).await.unwrap().0, 0);

    // One message through the library API: restored, indexed again, deleted again (gone
    // from the index at once); an unknown id is a clear error.
    let back = env
        .lifecycle
        .restore_message(t, &hit, "agent-7", T0 + DAY_MS)
        .await
        .unwrap();
    assert_eq!(
        back,
        RestoreOutcome {
            restored: 1,
            expired: 0
        }
    );
    assert_eq!(
        env.svc.index_all_pending(t, 50, |_, _| {}).await.unwrap(),
        1
    );
    assert_eq!(env.search("invoice").await.len(), 1);
    let gone = env
        .lifecycle
        .delete_message(t, &hit, "agent-7", T0)
        .await
        .unwrap();
    assert_eq!((gone.messages, gone.index), (1, IndexRemoval::Done));
    assert!(env.search("invoice").await.is_empty());
    assert_eq!(env.documents().await, 2);
    assert!(matches!(
        env.lifecycle
            .delete_message(t, "no-such-id", "agent-7", T0)
            .await,
        Err(LifecycleError::NotFound(_, "message"))
    ));
    // Purge needs no index step any more.
    let r = env.run(T0 + 60 * DAY_MS, false).await;
    assert_eq!((r.purged_messages, r.awaiting_index), (1, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_crash_between_store_and_index_is_repaired() {
    crash_between_store_and_index_is_repaired(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_crash_between_store_and_index_is_repaired() {
    crash_between_store_and_index_is_repaired(true).await;
}

/// The workspace's `helpr-dataplane` binary, built next to this test binary
/// (`HELPR_DATAPLANE_BIN` names another build).
fn binary() -> PathBuf {
    if let Some(bin) = std::env::var_os("HELPR_DATAPLANE_BIN") {
        return PathBuf::from(bin);
    }
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(|deps| deps.parent()).unwrap();
    let bin = dir.join("helpr-dataplane");
    assert!(
        bin.is_file(),
        "{} is missing: build it with cargo build -p helpr-dataplane",
        bin.display()
    );
    bin
}

/// `helpr-dataplane purge --tenant T` against PostgreSQL (what the CronJob runs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_command_on_postgres() {
    let env = Env::new(true).await;
    env.import(&sample()).await;
    let t = &env.tenant;
    let url = env.pg.as_ref().unwrap().1.url.clone();
    let conversation = env.conversation_of("password").await;
    env.lifecycle
        .delete_conversation(t, &conversation, "agent-7", now_ms() - 2 * DAY_MS)
        .await
        .unwrap();
    env.set_policy(1, 1, None, false).await;
    let data_dir = tempfile::tempdir().unwrap();
    let purge = |args: &[&str]| {
        Command::new(binary())
            .args(["--database-url", &url, "purge"])
            .args(args)
            .env("HELPR_DATA_DIR", data_dir.path())
            .env("HELPR_SEARCH__INDEX_DIR", env.dir.path().join("index"))
            .env_remove("HELPR_CONFIG")
            .env("HELPR_LOG", "warn")
            .output()
            .unwrap()
    };
    let out = purge(&["--tenant", "acme", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["purged_messages"], 1);
    assert_eq!(report["purged_conversations"], 1);
    // This test process holds the index writer (as `dev` would): the compaction is left
    // to the holder, and the report says so.
    assert_eq!(report["index_compaction"]["state"], "deferred", "{report}");
    assert!(report["index_compaction"]["holder"].is_string(), "{report}");
    assert_eq!(report["grace_period_days"], 1);
    assert_eq!(report["skipped_legal_hold"], 0);
    assert!(
        env.store
            .list_purge_candidates(t, i64::MAX, None, 10)
            .await
            .unwrap()
            .is_empty()
    );

    let out = purge(&["--tenant", "nobody"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("tenant nobody does not exist"), "{err}");
    assert!(!err.contains("postgres://"), "{err}");
}

/// `purge` in a process that does not hold the index (the embedded default with `dev`
/// running): a due message whose removal from the index is unconfirmed is left for the
/// holder, and purged by the next run once the holder's indexer has removed it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_waits_for_the_index_holder_to_remove_unconfirmed_mail() {
    let env = Env::new(false).await;
    env.import(&sample()).await;
    let t = &env.tenant;
    // A second process's view of the same index directory: the writer is held by `env`.
    let mut cfg = TantivyConfig::new(env.dir.path().join("index"));
    cfg.commit_interval = Duration::ZERO;
    cfg.writer_heap_bytes = TantivyConfig::MIN_WRITER_HEAP_BYTES;
    let other_index = Arc::new(TantivyIndex::open(cfg).unwrap());
    let other = Lifecycle::new(env.store.clone(), other_index);

    let conversation = env.conversation_of("shipping").await;
    let done = other
        .delete_conversation(t, &conversation, "agent-7", T0)
        .await
        .unwrap();
    assert_eq!(done.messages, 1);
    assert!(
        matches!(done.index, IndexRemoval::Deferred { .. }),
        "{done:?}"
    );
    // Hidden at once all the same (the per-hit re-check).
    assert!(env.search("shipping").await.is_empty());

    let options = PurgeOptions::at(T0 + 60 * DAY_MS);
    let first = other.run_retention(t, options).await.unwrap();
    assert_eq!((first.purged_messages, first.awaiting_index), (0, 1));
    assert!(
        matches!(first.index_compaction, IndexRemoval::Deferred { .. }),
        "{first:?}"
    );
    // The holder's indexer removes it from the index and confirms.
    assert_eq!(
        env.svc.index_all_pending(t, 50, |_, _| {}).await.unwrap(),
        1
    );
    assert_eq!(env.documents().await, 2);
    let second = other.run_retention(t, options).await.unwrap();
    assert_eq!((second.purged_messages, second.awaiting_index), (1, 0));
    assert!(matches!(
        second.index_compaction,
        IndexRemoval::Deferred { .. }
    ));

    // The holder's indexer compacts what the purge could not.
    assert!(env.index.stats(t).await.unwrap().deleted_documents > 0);
    let (stop, indexer) = env.spawn_indexer();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while env.index.stats(t).await.unwrap().deleted_documents > 0 {
        assert!(std::time::Instant::now() < deadline, "not compacted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.send(true).unwrap();
    indexer.await.unwrap();
    assert_eq!(env.documents().await, 2);
}

/// The indexer's housekeeping (every deployment that writes mail runs it) prunes live
/// events past their retention, keeping the recent ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_indexer_prunes_live_events_past_their_retention() {
    use helpr_dataplane::store::{DeleteReason, Deletion};
    let env = Env::new(false).await;
    env.import(&sample()).await;
    let t = &env.tenant;
    let conversation = env.conversation_of("shipping").await;
    // A deletion recorded a month ago: its event is past the hour it is kept.
    env.store
        .soft_delete_conversation(
            t,
            &conversation,
            &Deletion {
                actor: "agent-7".into(),
                reason: DeleteReason::User,
                at_ms: T0,
            },
        )
        .await
        .unwrap();
    let events = env.store.mail_events_after(t, 0, 100).await.unwrap();
    assert_eq!(events.iter().filter(|e| e.at_ms == T0).count(), 1);
    let recent = events.len() - 1;
    assert!(recent > 0);

    let (stop, indexer) = env.spawn_indexer();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let left = env.store.mail_events_after(t, 0, 100).await.unwrap();
        if left.len() == recent {
            assert!(left.iter().all(|e| e.at_ms != T0));
            break;
        }
        assert!(std::time::Instant::now() < deadline, "not pruned");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.send(true).unwrap();
    indexer.await.unwrap();
}
