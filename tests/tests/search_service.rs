//! Search end to end: import (pipeline, seal, store with the index marker), index keys
//! wrapped by the KMS, the tantivy index, checked search, deletes, crash repair, reindex and
//! two processes on one data directory. Runs on SQLite and PostgreSQL.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use helpr_dataplane::ids::TenantId;
use helpr_dataplane::keyring::{Keyring, KeyringConfig};
use helpr_dataplane::kms::local::LocalKms;
use helpr_dataplane::search::service::{SearchService, ServiceError};
use helpr_dataplane::search::{
    DeleteScope, IndexDoc, IndexStats, Mode, Normalization, SearchError, SearchIndex, SearchPage,
    SearchRequest, TantivyConfig, TantivyIndex,
};
use helpr_dataplane::store::IndexKeyState;
use helpr_dataplane::store::{NewInbox, PgStore, SqliteStore, Store, now_ms};
use helpr_dataplane::tools::{self, RawMessage};
use helpr_tests::postgres::{TestDatabase, sqlite_url};

struct Env {
    keyring: Arc<Keyring>,
    dir: tempfile::TempDir,
    db: Option<TestDatabase>,
}

impl Env {
    async fn new(postgres: bool) -> Env {
        let dir = tempfile::tempdir().unwrap();
        let (store, db): (Arc<dyn Store>, _) = if postgres {
            let db = TestDatabase::create().await.unwrap();
            (Arc::new(PgStore::connect(&db.url).await.unwrap()), Some(db))
        } else {
            (
                Arc::new(SqliteStore::connect(&sqlite_url(dir.path())).await.unwrap()),
                None,
            )
        };
        let kms = Arc::new(LocalKms::open(dir.path().join("kms")).unwrap());
        let keyring = Arc::new(Keyring::new(kms, store, KeyringConfig::default()));
        Env { keyring, dir, db }
    }

    /// Runs one SQL statement on the test's database (what an older build left behind).
    async fn execute(&self, statement: &str) {
        match &self.db {
            Some(db) => {
                let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
                sqlx::query(statement).execute(&pool).await.unwrap();
            }
            None => {
                let pool = sqlx::SqlitePool::connect(&sqlite_url(self.dir.path()))
                    .await
                    .unwrap();
                sqlx::query(statement).execute(&pool).await.unwrap();
            }
        }
    }

    fn index(&self) -> Arc<TantivyIndex> {
        let mut cfg = TantivyConfig::new(self.dir.path().join("index"));
        cfg.commit_interval = Duration::ZERO;
        cfg.writer_heap_bytes = TantivyConfig::MIN_WRITER_HEAP_BYTES;
        Arc::new(TantivyIndex::open(cfg).unwrap())
    }

    fn service(&self, index: Arc<TantivyIndex>, mode: Mode) -> SearchService {
        SearchService::new(self.keyring.clone(), index, mode)
    }

    async fn tenant(&self, id: &str) -> TenantId {
        let t = TenantId::new(id).unwrap();
        self.keyring.provision_tenant(&t, id).await.unwrap();
        t
    }

    async fn inbox(&self, tenant: &TenantId, address: &str) -> String {
        let id = helpr_dataplane::ids::new_record_id();
        self.keyring
            .store()
            .create_inbox(&NewInbox {
                id: id.clone(),
                tenant_id: tenant.clone(),
                address: address.into(),
                connected_at_ms: now_ms(),
            })
            .await
            .unwrap();
        id
    }
}

fn eml(from: &str, subject: &str, date: &str, body: &str) -> RawMessage {
    let text = format!(
        "From: {from}\r\nTo: support@acme.example\r\nSubject: {subject}\r\nDate: {date}\r\n\
         Message-ID: <{}@test.example>\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n{body}\r\n",
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
            "Lena Vogel <lena@kunde.example>",
            "Rechnung März fehlt",
            "Tue, 06 Oct 2026 09:15:00 +0200",
            "Hallo, die Rechnung für März (invoice 2026-03) fehlt in unserem Konto.",
        ),
        eml(
            "Bob Stone <bob@client.example>",
            "Password reset does not arrive",
            "Wed, 07 Oct 2026 10:00:00 +0000",
            "I requested a password reset twice, no email arrived. Is the invoice page down too?",
        ),
        eml(
            "Chloé Martin <chloe@client.example>",
            "Facture en double",
            "Thu, 08 Oct 2026 11:30:00 +0100",
            "Nous avons reçu la facture deux fois.",
        ),
    ]
}

/// Two Hindi messages whose words "कुल" (total) and "कल" (tomorrow) differ only by a vowel
/// sign, which the first folding rules dropped.
fn hindi_pair() -> [RawMessage; 2] {
    [
        eml(
            "Asha <asha@kunde.example>",
            "कुल बिक्री",
            "Tue, 06 Oct 2026 09:15:00 +0530",
            "इस महीने की कुल राशि संलग्न है।",
        ),
        eml(
            "Ravi <ravi@kunde.example>",
            "मुलाकात",
            "Wed, 07 Oct 2026 10:00:00 +0530",
            "हम कल मिलते हैं।",
        ),
    ]
}

fn set(ids: &[&String]) -> BTreeSet<String> {
    ids.iter().map(|s| (*s).clone()).collect()
}

/// Imports [`sample`] into the tenant's inbox `support@acme.example` through `svc`.
async fn import_sample(env: &Env, t: &TenantId, svc: &SearchService) {
    let inbox = tools::find_inbox(&env.keyring, t, "support@acme.example")
        .await
        .unwrap();
    tools::import(svc, &env.keyring, &inbox, &sample(), |_, _| {})
        .await
        .unwrap();
}

async fn subjects(
    svc: &SearchService,
    t: &TenantId,
    inboxes: &BTreeSet<String>,
    q: &str,
) -> Vec<String> {
    svc.search(t, inboxes, q, 50, None)
        .await
        .unwrap()
        .hits
        .into_iter()
        .map(|h| h.subject)
        .collect()
}

async fn import_search_delete_reindex(postgres: bool) {
    let env = Env::new(postgres).await;
    let t = env.tenant("acme").await;
    let a = env.inbox(&t, "support@acme.example").await;
    let b = env.inbox(&t, "billing@acme.example").await;
    let index = env.index();
    let svc = env.service(index.clone(), Mode::Blind);
    let store = env.keyring.store().clone();
    let inbox_a = tools::find_inbox(&env.keyring, &t, "support@acme.example")
        .await
        .unwrap();
    let inbox_b = tools::find_inbox(&env.keyring, &t, " billing@acme.example")
        .await
        .unwrap();
    let msgs = sample();
    let mut calls = 0;
    let r = tools::import(&svc, &env.keyring, &inbox_a, &msgs[..2], |_, _| calls += 1)
        .await
        .unwrap();
    assert_eq!((r.stored, r.already_stored, r.indexed), (2, 0, 2));
    assert_eq!(calls, 2);
    let r = tools::import(&svc, &env.keyring, &inbox_b, &msgs[2..], |_, _| {})
        .await
        .unwrap();
    assert_eq!(r.stored, 1);

    // The index key is wrapped by the KMS and stored; never the key itself.
    let key_record = store.current_index_key(&t).await.unwrap().unwrap();
    assert!(key_record.wrapped_key.starts_with("local:v1:"));

    let both = set(&[&a, &b]);
    let only_a = set(&[&a]);
    assert_eq!(
        subjects(&svc, &t, &both, "invoice").await,
        ["Password reset does not arrive", "Rechnung März fehlt"]
    );
    assert_eq!(
        subjects(&svc, &t, &both, "\"password reset\"").await,
        ["Password reset does not arrive"]
    );
    assert_eq!(
        subjects(&svc, &t, &both, "rechnung marz").await,
        ["Rechnung März fehlt"]
    );
    assert_eq!(
        subjects(&svc, &t, &both, "from:chloe").await,
        ["Facture en double"]
    );
    assert_eq!(
        subjects(&svc, &t, &only_a, "from:chloe").await,
        Vec::<String>::new()
    );
    assert_eq!(
        subjects(&svc, &t, &BTreeSet::new(), "invoice").await,
        Vec::<String>::new()
    );
    let page = svc.search(&t, &both, "facture", 10, None).await.unwrap();
    assert_eq!(
        page.hits[0].snippet,
        "Nous avons reçu la facture deux fois."
    );
    assert_eq!(page.hits[0].inbox_id, b);

    // Bad input: a clear error, nothing else.
    match svc.search(&t, &both, "from:", 10, None).await {
        Err(ServiceError::Query(e)) => assert!(e.to_string().contains("position 5"), "{e}"),
        other => panic!("expected a query error, got {other:?}"),
    }
    assert!(
        svc.search(&t, &both, "x", 10, Some("garbage"))
            .await
            .is_err()
    );
    let nobody = TenantId::new("nobody").unwrap();
    assert!(matches!(
        svc.search(&nobody, &both, "x", 10, None).await,
        Err(ServiceError::UnknownTenant(_))
    ));

    // Importing the same content again stores nothing new.
    let r = tools::import(&svc, &env.keyring, &inbox_a, &msgs[..2], |_, _| {})
        .await
        .unwrap();
    assert_eq!((r.stored, r.already_stored), (0, 2));
    assert_eq!(subjects(&svc, &t, &both, "invoice").await.len(), 2);

    // Delete: gone from search when the call returns.
    let victim = svc
        .search(&t, &both, "password", 10, None)
        .await
        .unwrap()
        .hits[0]
        .message_id
        .clone();
    assert!(svc.delete_message(&t, &victim).await.unwrap());
    assert_eq!(
        subjects(&svc, &t, &both, "invoice").await,
        ["Rechnung März fehlt"]
    );

    // A message deleted from the store but still in the index is not returned (re-check).
    let rechnung = svc
        .search(&t, &both, "rechnung", 10, None)
        .await
        .unwrap()
        .hits[0]
        .message_id
        .clone();
    assert!(store.delete_message(&t, &rechnung).await.unwrap());
    assert_eq!(index.stats(&t).await.unwrap().documents, 2);
    assert_eq!(
        subjects(&svc, &t, &both, "rechnung").await,
        Vec::<String>::new()
    );

    // Crash between store and index: the marker stays set and a later run repairs it.
    let extra = eml(
        "Dana <dana@client.example>",
        "Outage in region eu-west",
        "Fri, 09 Oct 2026 08:00:00 +0000",
        "Dashboards time out since the outage started.",
    );
    let processed = helpr_dataplane::ingest::pipeline::process(&extra.bytes).unwrap();
    let gid = tools::import_message_id(&extra.bytes);
    let sealed = helpr_dataplane::ingest::pipeline::seal_message(
        &env.keyring,
        &helpr_dataplane::ingest::pipeline::GmailOrigin {
            tenant: &t,
            inbox_id: &a,
            gmail_message_id: &gid,
            gmail_thread_id: &gid,
            gmail_history_id: None,
            internal_date_ms: processed.date_ms.unwrap(),
            raw_size: 1,
        },
        &processed,
    )
    .await
    .unwrap();
    store.insert_message(&sealed).await.unwrap();
    assert_eq!(
        subjects(&svc, &t, &both, "outage").await,
        Vec::<String>::new()
    );
    assert_eq!(store.index_progress(&t).await.unwrap(), (1, 2));
    let restarted = env.service(index.clone(), Mode::Blind);
    assert_eq!(
        restarted
            .index_all_pending(&t, 100, |_, _| {})
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        subjects(&restarted, &t, &both, "subject:outage").await,
        ["Outage in region eu-west"]
    );

    // Reindex from the sealed store after losing the index.
    index.drop_tenant(&t).await.unwrap();
    assert_eq!(
        subjects(&svc, &t, &both, "outage").await,
        Vec::<String>::new()
    );
    let mut seen = Vec::new();
    let n = svc
        .reindex(&t, 1, |pending, total| seen.push((pending, total)))
        .await
        .unwrap();
    assert_eq!(n, 2);
    assert_eq!(seen.last(), Some(&(0, 2)));
    // Batches of one share a commit: one progress report per commit.
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(
        subjects(&svc, &t, &both, "outage OR facture").await,
        ["Outage in region eu-west", "Facture en double"]
    );
    // The same index key after a restart (unwrapped again from the store).
    let fresh = env.service(index, Mode::Blind);
    assert_eq!(subjects(&fresh, &t, &both, "facture").await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_import_search_delete_reindex() {
    import_search_delete_reindex(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_import_search_delete_reindex() {
    import_search_delete_reindex(true).await;
}

/// `dev` holds the index writer; an `import` in another process stores the messages and
/// leaves them to the holder, naming it; nothing is corrupted and both see the result.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_process_defers_indexing_to_the_holder() {
    let env = Env::new(false).await;
    let t = env.tenant("acme").await;
    let a = env.inbox(&t, "support@acme.example").await;
    let holder = env.service(env.index(), Mode::Blind);
    let other = env.service(env.index(), Mode::Blind);
    let inbox = tools::find_inbox(&env.keyring, &t, "support@acme.example")
        .await
        .unwrap();
    let msgs = sample();
    // The holder takes the writer by indexing first.
    tools::import(&holder, &env.keyring, &inbox, &msgs[..1], |_, _| {})
        .await
        .unwrap();
    let r = tools::import(&other, &env.keyring, &inbox, &msgs[1..], |_, _| {})
        .await
        .unwrap();
    assert_eq!(r.stored, 2);
    assert_eq!(r.indexed, 0);
    let named = r.index_holder.expect("holder named");
    assert!(
        named.contains(&format!("pid {}", std::process::id())),
        "{named}"
    );
    assert_eq!(
        env.keyring.store().index_progress(&t).await.unwrap(),
        (2, 3)
    );
    assert_eq!(
        holder.index_all_pending(&t, 100, |_, _| {}).await.unwrap(),
        2
    );
    let all = set(&[&a]);
    assert_eq!(
        subjects(&other, &t, &all, "facture OR rechnung OR password")
            .await
            .len(),
        3
    );
}

/// Index-key rotation: queries keep working on the old key while the tenant is re-indexed
/// (even when interrupted midway and resumed by another process), then switch to the new
/// key, and the old key's terms leave the index.
async fn index_key_rotation(postgres: bool) {
    use helpr_dataplane::search::query::{Query, index_query};
    use helpr_dataplane::search::service::IndexKeysReport;
    use helpr_dataplane::search::{IndexKey, Indexer, SearchRequest};
    use helpr_dataplane::store::IndexKeyState;

    let env = Env::new(postgres).await;
    let t = env.tenant("acme").await;
    let a = env.inbox(&t, "support@acme.example").await;
    let index = env.index();
    let svc = env.service(index.clone(), Mode::Blind);
    let store = env.keyring.store().clone();
    import_sample(&env, &t, &svc).await;
    let mine = set(&[&a]);
    let old_key = svc.index_key(&t).await.unwrap();
    assert_eq!(old_key.version().get(), 1);
    let by_key = |key: &IndexKey, q: &str| SearchRequest {
        query: index_query(&Query::parse(q).unwrap(), &Indexer::Blind(key)),
        inboxes: mine.clone(),
        limit: 50,
        after: None,
    };
    let states = |r: &IndexKeysReport| {
        r.versions
            .iter()
            .map(|v| (v.version, v.state))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        index
            .search(&t, &by_key(&old_key, "invoice"))
            .await
            .unwrap()
            .hits
            .len(),
        2
    );

    assert_eq!(svc.rotate_index_key(&t).await.unwrap(), 2);
    assert!(matches!(
        svc.rotate_index_key(&t).await,
        Err(ServiceError::RotationInProgress(_, 2))
    ));
    // Nothing re-indexed yet: queries still run on the old key and find everything.
    assert_eq!(store.index_progress(&t).await.unwrap(), (3, 3));
    assert_eq!(subjects(&svc, &t, &mine, "invoice").await.len(), 2);
    assert_eq!(
        subjects(&svc, &t, &mine, "\"password reset\"").await,
        ["Password reset does not arrive"]
    );
    // One batch, then the process "dies".
    assert_eq!(svc.index_pending(&t, 1).await.unwrap(), 1);
    assert_eq!(store.index_progress(&t).await.unwrap(), (2, 3));
    assert_eq!(subjects(&svc, &t, &mine, "invoice").await.len(), 2);
    assert_eq!(subjects(&svc, &t, &mine, "facture").await.len(), 1);
    assert_eq!(
        states(&svc.index_keys_report(&t).await.unwrap()),
        [(1, IndexKeyState::Active), (2, IndexKeyState::Building)]
    );

    // Another process (same store and index) resumes and finishes the rotation.
    let resumed = env.service(index.clone(), Mode::Blind);
    let mut progress = Vec::new();
    resumed
        .index_all_pending(&t, 1, |pending, total| progress.push((pending, total)))
        .await
        .unwrap();
    let report = resumed.index_keys_report(&t).await.unwrap();
    assert_eq!(
        states(&report),
        [(1, IndexKeyState::Retired), (2, IndexKeyState::Active)]
    );
    assert_eq!((report.pending, report.total), (0, 3));
    // Both passes reported progress down to nothing pending.
    assert_eq!(
        progress.iter().filter(|p| p.0 == 0).count(),
        2,
        "{progress:?}"
    );

    // The first service sees the switch at once (no stale key) and finds everything.
    for svc in [&svc, &resumed] {
        assert_eq!(svc.index_key(&t).await.unwrap().version().get(), 2);
        assert_eq!(subjects(svc, &t, &mine, "invoice").await.len(), 2);
        assert_eq!(
            subjects(svc, &t, &mine, "\"password reset\"").await,
            ["Password reset does not arrive"]
        );
        assert_eq!(
            subjects(svc, &t, &mine, "from:chloe").await,
            ["Facture en double"]
        );
    }
    // The old key's terms are gone from the index; the new key's are there.
    let new_key = svc.index_key(&t).await.unwrap();
    for q in ["invoice", "facture", "\"password reset\"", "from:chloe"] {
        let old_hits = index.search(&t, &by_key(&old_key, q)).await.unwrap().hits;
        assert!(old_hits.is_empty(), "{q}");
        let new_hits = index.search(&t, &by_key(&new_key, q)).await.unwrap().hits;
        assert!(!new_hits.is_empty(), "{q}");
    }
    // The new key is stored wrapped by the KMS, like the first.
    let record = store.current_index_key(&t).await.unwrap().unwrap();
    assert_eq!(record.version, 2);
    assert!(record.wrapped_key.starts_with("local:v"), "wrapped form");

    // Mail that arrives during a rotation is found, before and after the switch.
    assert_eq!(svc.rotate_index_key(&t).await.unwrap(), 3);
    let late = eml(
        "Dana <dana@client.example>",
        "Outage in region eu-west",
        "Fri, 09 Oct 2026 08:00:00 +0000",
        "Dashboards time out since the outage started.",
    );
    let inbox = tools::find_inbox(&env.keyring, &t, "support@acme.example")
        .await
        .unwrap();
    tools::import(&svc, &env.keyring, &inbox, &[late], |_, _| {})
        .await
        .unwrap();
    for svc in [&svc, &resumed] {
        assert_eq!(svc.index_key(&t).await.unwrap().version().get(), 3);
        assert_eq!(
            subjects(svc, &t, &mine, "outage").await,
            ["Outage in region eu-west"]
        );
        assert_eq!(subjects(svc, &t, &mine, "invoice").await.len(), 2);
    }
    // Both services have indexed since version 1 was retired: neither holds that key any
    // more, nor the blind tokens it remembered (only this test's handle is left).
    assert_eq!(std::sync::Arc::strong_count(&old_key), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_index_key_rotation() {
    index_key_rotation(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_index_key_rotation() {
    index_key_rotation(true).await;
}

/// A tenant whose index was made with the first folding rules (every nonspacing mark
/// dropped, so Hindi "कुल" and "कल" were one token) answers with those rules until the
/// indexer has re-indexed it under a new key made with the current rules, which it starts by
/// itself; then the words are told apart.
async fn older_folding_rules_are_replaced_by_a_rotation(postgres: bool) {
    let env = Env::new(postgres).await;
    let t = env.tenant("acme").await;
    let a = env.inbox(&t, "support@acme.example").await;
    let index = env.index();
    let store = env.keyring.store().clone();
    let inbox = tools::find_inbox(&env.keyring, &t, "support@acme.example")
        .await
        .unwrap();
    let mail = hindi_pair();
    tools::import(
        &env.service(index.clone(), Mode::Blind),
        &env.keyring,
        &inbox,
        &mail,
        |_, _| {},
    )
    .await
    .unwrap();
    // What a build of the first rules left: its key (the column's default for keys made
    // before it existed) and an index made with those rules.
    env.execute("UPDATE tenant_index_keys SET normalization = 1")
        .await;
    store.mark_all_for_reindex(&t).await.unwrap();
    let svc = env.service(index.clone(), Mode::Blind);
    assert_eq!(
        svc.index_key(&t).await.unwrap().normalization(),
        Normalization::V1
    );
    assert_eq!(svc.index_pending(&t, 100).await.unwrap(), 2);
    let mine = set(&[&a]);
    // Queries are folded like that index: both messages match either word.
    assert_eq!(subjects(&svc, &t, &mine, "कुल").await.len(), 2);
    assert_eq!(subjects(&svc, &t, &mine, "कल").await.len(), 2);

    // While the KMS cannot make the new key, mail is still indexed under the old one.
    let kms = env.dir.path().join("kms");
    let kms_away = env.dir.path().join("kms-away");
    std::fs::rename(&kms, &kms_away).unwrap();
    store.mark_all_for_reindex(&t).await.unwrap();
    assert_eq!(svc.index_all_pending(&t, 1, |_, _| {}).await.unwrap(), 2);
    assert_eq!(svc.index_keys_report(&t).await.unwrap().versions.len(), 1);
    assert_eq!(subjects(&svc, &t, &mine, "कुल").await.len(), 2);
    std::fs::rename(&kms_away, &kms).unwrap();

    let mut progress = Vec::new();
    svc.index_all_pending(&t, 1, |pending, total| progress.push((pending, total)))
        .await
        .unwrap();
    assert!(!progress.is_empty());
    let report = svc.index_keys_report(&t).await.unwrap();
    let versions: Vec<_> = report
        .versions
        .iter()
        .map(|v| (v.version, v.state, v.normalization))
        .collect();
    assert_eq!(
        versions,
        [
            (1, IndexKeyState::Retired, 1),
            (2, IndexKeyState::Active, Normalization::CURRENT.get())
        ]
    );
    assert_eq!((report.pending, report.total), (0, 2));
    assert_eq!(subjects(&svc, &t, &mine, "कुल").await, ["कुल बिक्री"]);
    assert_eq!(subjects(&svc, &t, &mine, "कल").await, ["मुलाकात"]);
    assert_eq!(subjects(&svc, &t, &mine, "\"कुल राशि\"").await, ["कुल बिक्री"]);
    // Current keys are not rotated again.
    svc.index_all_pending(&t, 1, |_, _| {}).await.unwrap();
    assert_eq!(svc.index_keys_report(&t).await.unwrap().versions.len(), 2);

    // A key made by a newer build's rules is refused with an error that says so.
    env.execute("UPDATE tenant_index_keys SET normalization = 99 WHERE version = 2")
        .await;
    let newer = env.service(index, Mode::Blind);
    let err = newer.search(&t, &mine, "कुल", 10, None).await.unwrap_err();
    assert!(
        matches!(err, ServiceError::UnknownNormalization(_, 2, 99)),
        "{err}"
    );
    assert!(err.to_string().contains("newer build"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_older_folding_rules_are_replaced_by_a_rotation() {
    older_folding_rules_are_replaced_by_a_rotation(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_older_folding_rules_are_replaced_by_a_rotation() {
    older_folding_rules_are_replaced_by_a_rotation(true).await;
}

/// Blind tokens are hashes of whole words: a prefix or fuzzy word is refused, naming where.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blind_mode_refuses_prefix_and_fuzzy_words() {
    let env = Env::new(false).await;
    let t = env.tenant("acme").await;
    let a = env.inbox(&t, "support@acme.example").await;
    let svc = env.service(env.index(), Mode::Blind);
    import_sample(&env, &t, &svc).await;
    for (q, position) in [("invoice fact*", 8), ("pasword~", 0)] {
        let err = svc.search(&t, &set(&[&a]), q, 10, None).await.unwrap_err();
        let ServiceError::Query(e) = &err else {
            panic!("{err}");
        };
        assert_eq!(e.position, position, "{q}");
        assert!(err.to_string().contains("plaintext mode"), "{err}");
    }
    assert_eq!(
        subjects(&svc, &t, &set(&[&a]), "facture").await,
        ["Facture en double"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_mode_has_no_index_key_to_rotate() {
    let env = Env::new(false).await;
    let t = env.tenant("acme").await;
    let svc = env.service(env.index(), Mode::Plaintext);
    assert!(matches!(
        svc.rotate_index_key(&t).await,
        Err(ServiceError::PlaintextMode)
    ));
    assert!(matches!(
        svc.index_key(&t).await,
        Err(ServiceError::PlaintextMode)
    ));
}

/// Plaintext mode (opt-in) answers the same queries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_mode_works() {
    let env = Env::new(false).await;
    let t = env.tenant("acme").await;
    let a = env.inbox(&t, "support@acme.example").await;
    let svc = env.service(env.index(), Mode::Plaintext);
    import_sample(&env, &t, &svc).await;
    assert_eq!(
        subjects(&svc, &t, &set(&[&a]), "\"password reset\"").await,
        ["Password reset does not arrive"]
    );
    // Terms in the clear allow prefix and fuzzy words.
    assert_eq!(
        subjects(&svc, &t, &set(&[&a]), "subject:fact*").await,
        ["Facture en double"]
    );
    assert_eq!(
        subjects(&svc, &t, &set(&[&a]), "pasword~ -subject:rechnung").await,
        ["Password reset does not arrive"]
    );
    // Its version records the mode and the folding rules, and has no key.
    let version = env
        .keyring
        .store()
        .current_index_key(&t)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (version.version, version.mode, version.normalization),
        (1, Mode::Plaintext, Normalization::CURRENT.get())
    );
    assert_eq!(
        (version.wrapped_key.as_str(), version.kms_key_ref.as_str()),
        ("", "")
    );
}

/// The terms of every text field in the index files under `dir` (what a file of the index
/// holds, whatever documents are deleted).
fn index_terms(dir: &std::path::Path) -> Vec<Vec<u8>> {
    let index = tantivy::Index::open_in_dir(dir).unwrap();
    let schema = index.schema();
    let searcher = index.reader().unwrap().searcher();
    let mut out = Vec::new();
    for (field, entry) in schema.fields() {
        if !matches!(entry.field_type(), tantivy::schema::FieldType::Str(_))
            || ["message_id", "conversation_id", "inbox_id"].contains(&entry.name())
        {
            continue;
        }
        for segment in searcher.segment_readers() {
            let inverted = segment.inverted_index(field).unwrap();
            let mut stream = inverted.terms().stream().unwrap();
            while stream.advance() {
                out.push(stream.key().to_vec());
            }
        }
    }
    out
}

/// (version, state, mode) of the tenant's index-key versions.
async fn modes(svc: &SearchService, t: &TenantId) -> Vec<(u32, IndexKeyState, Mode)> {
    svc.index_keys_report(t)
        .await
        .unwrap()
        .versions
        .iter()
        .map(|v| (v.version, v.state, v.mode))
        .collect()
}

/// What the Tenant resource says, as the operator pushes it.
async fn set_tenant_mode(env: &Env, t: &TenantId, mode: Mode, generation: i64) {
    use helpr_dataplane::store::{ApplyOutcome, ControlMeta, DeletionPolicy, TenantSpec};
    let meta = ControlMeta {
        namespace: String::new(),
        name: t.to_string(),
        uid: format!("uid-{t}"),
        generation,
    };
    let spec = TenantSpec {
        display_name: t.to_string(),
        deletion_policy: DeletionPolicy::Retain,
        search_mode: mode,
    };
    assert_eq!(
        env.keyring
            .store()
            .apply_tenant(&meta, &spec)
            .await
            .unwrap(),
        ApplyOutcome::Applied
    );
}

/// The mode comes from the Tenant resource (over the configured one) and changing it
/// rebuilds the index, search working throughout; moving back to blind mode leaves no
/// plaintext term in any index file.
async fn changing_the_search_mode_rebuilds_the_index(postgres: bool) {
    let env = Env::new(postgres).await;
    let t = env.tenant("acme").await;
    let a = env.inbox(&t, "support@acme.example").await;
    let mine = set(&[&a]);
    let index = env.index();
    let tenant_dir = env.dir.path().join("index").join("acme");
    // Configured blind, as the chart configures the API.
    let svc = env.service(index.clone(), Mode::Blind);
    import_sample(&env, &t, &svc).await;
    let has_word = |word: &str| {
        index_terms(&tenant_dir)
            .iter()
            .any(|t| t == word.as_bytes())
    };
    assert!(!has_word("password"));
    assert_eq!(
        modes(&svc, &t).await,
        [(1, IndexKeyState::Active, Mode::Blind)]
    );

    // The Tenant resource asks for plaintext: the indexer rebuilds in a plaintext version.
    set_tenant_mode(&env, &t, Mode::Plaintext, 1).await;
    assert_eq!(svc.wanted_mode(&t).await.unwrap(), Mode::Plaintext);
    assert!(matches!(
        svc.rotate_index_key(&t).await,
        Err(ServiceError::PlaintextMode)
    ));
    // Half way through the first pass, queries still use the blind version and find
    // every message.
    assert!(svc.upgrade_scheme(&t).await.unwrap());
    assert!(
        !svc.upgrade_scheme(&t).await.unwrap(),
        "one rotation at a time"
    );
    assert_eq!(svc.index_pending(&t, 1).await.unwrap(), 1);
    assert_eq!(
        modes(&svc, &t).await,
        [
            (1, IndexKeyState::Active, Mode::Blind),
            (2, IndexKeyState::Building, Mode::Plaintext)
        ]
    );
    assert_eq!(subjects(&svc, &t, &mine, "invoice").await.len(), 2);
    assert_eq!(
        subjects(&svc, &t, &mine, "\"password reset\"").await,
        ["Password reset does not arrive"]
    );
    svc.index_all_pending(&t, 1, |_, _| {}).await.unwrap();
    assert_eq!(
        modes(&svc, &t).await,
        [
            (1, IndexKeyState::Retired, Mode::Blind),
            (2, IndexKeyState::Active, Mode::Plaintext)
        ]
    );
    assert_eq!(
        subjects(&svc, &t, &mine, "\"password reset\"").await,
        ["Password reset does not arrive"]
    );
    assert_eq!(
        subjects(&svc, &t, &mine, "facture").await,
        ["Facture en double"]
    );
    assert!(has_word("password"), "plaintext mode indexes the words");
    // Compacted after the second pass: nothing of the blind version's documents is left.
    let stats = index.stats(&t).await.unwrap();
    assert_eq!((stats.documents, stats.deleted_documents), (3, 0));
    assert!(
        !env.keyring
            .store()
            .retired_index_terms_left(&t)
            .await
            .unwrap()
    );

    // Another process of the same configuration (an API replica) queries in plaintext too.
    let replica = env.service(index.clone(), Mode::Blind);
    assert_eq!(
        subjects(&replica, &t, &mine, "rechnung").await,
        ["Rechnung März fehlt"]
    );

    // Back to blind: rebuilt under a new key, and no file keeps a plaintext term.
    // (`index_all_pending` checks the mode at most every SCHEME_CHECK_INTERVAL; a fresh
    // process at once.)
    set_tenant_mode(&env, &t, Mode::Blind, 2).await;
    let svc = env.service(index.clone(), Mode::Blind);
    svc.index_all_pending(&t, 2, |_, _| {}).await.unwrap();
    assert_eq!(
        modes(&svc, &t).await,
        [
            (1, IndexKeyState::Retired, Mode::Blind),
            (2, IndexKeyState::Retired, Mode::Plaintext),
            (3, IndexKeyState::Active, Mode::Blind)
        ]
    );
    assert_eq!(
        subjects(&replica, &t, &mine, "\"password reset\"").await,
        ["Password reset does not arrive"]
    );
    for word in ["password", "reset", "rechnung", "facture", "lena", "bob"] {
        assert!(!has_word(word), "{word} left in the index files");
    }
    let stats = index.stats(&t).await.unwrap();
    assert_eq!((stats.documents, stats.deleted_documents), (3, 0));
    // Nothing more to do.
    svc.index_all_pending(&t, 2, |_, _| {}).await.unwrap();
    assert_eq!(modes(&svc, &t).await.len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_changing_the_search_mode_rebuilds_the_index() {
    changing_the_search_mode_rebuilds_the_index(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_changing_the_search_mode_rebuilds_the_index() {
    changing_the_search_mode_rebuilds_the_index(true).await;
}

/// A plaintext index made by a build that recorded no versions (nor its folding rules) is
/// taken as made with the first rules, queried with them, and rebuilt with the current
/// ones by the next indexer run; later, the configured mode applies to tenants the control
/// plane does not manage.
async fn plaintext_indexes_of_older_builds_are_rebuilt(postgres: bool) {
    let env = Env::new(postgres).await;
    let t = env.tenant("acme").await;
    let a = env.inbox(&t, "support@acme.example").await;
    let mine = set(&[&a]);
    let index = env.index();
    let inbox = tools::find_inbox(&env.keyring, &t, "support@acme.example")
        .await
        .unwrap();
    let mail = hindi_pair();
    // What an older build left: an index made with the first rules, and no version.
    let svc = env.service(index.clone(), Mode::Plaintext);
    tools::import(&svc, &env.keyring, &inbox, &mail, |_, _| {})
        .await
        .unwrap();
    env.execute("DELETE FROM tenant_index_keys").await;
    env.keyring.store().mark_all_for_reindex(&t).await.unwrap();
    let old = helpr_dataplane::search::Indexer::Plaintext(Normalization::V1);
    let mut docs = Vec::new();
    for id in env.keyring.store().pending_index(&t, 10).await.unwrap() {
        let m = env
            .keyring
            .store()
            .get_message(&t, &id)
            .await
            .unwrap()
            .unwrap();
        docs.push(svc.document(&m, &old, None).await.unwrap());
    }
    index.index(&t, docs).await.unwrap();
    index.flush(&t).await.unwrap();
    env.keyring
        .store()
        .mark_indexed(
            &t,
            &env.keyring.store().pending_index(&t, 10).await.unwrap(),
            None,
        )
        .await
        .unwrap();

    let upgraded = env.service(index.clone(), Mode::Plaintext);
    assert_eq!(
        upgraded.query_normalization(&t).await.unwrap(),
        Normalization::V1
    );
    // Queries fold like that index: both messages match either word.
    assert_eq!(subjects(&upgraded, &t, &mine, "कुल").await.len(), 2);
    assert_eq!(subjects(&upgraded, &t, &mine, "कल").await.len(), 2);
    upgraded.index_all_pending(&t, 1, |_, _| {}).await.unwrap();
    let report = upgraded.index_keys_report(&t).await.unwrap();
    let versions: Vec<_> = report
        .versions
        .iter()
        .map(|v| (v.version, v.state, v.mode, v.normalization))
        .collect();
    assert_eq!(
        versions,
        [
            (1, IndexKeyState::Retired, Mode::Plaintext, 1),
            (
                2,
                IndexKeyState::Active,
                Mode::Plaintext,
                Normalization::CURRENT.get()
            )
        ]
    );
    assert_eq!(subjects(&upgraded, &t, &mine, "कुल").await, ["कुल बिक्री"]);
    assert_eq!(subjects(&upgraded, &t, &mine, "कल").await, ["मुलाकात"]);
    assert_eq!(
        subjects(&upgraded, &t, &mine, "\"कुल राशि\"").await,
        ["कुल बिक्री"]
    );

    // The configuration moves to blind: a tenant without a Tenant resource follows it.
    let blind = env.service(index, Mode::Blind);
    blind.index_all_pending(&t, 10, |_, _| {}).await.unwrap();
    assert_eq!(blind.index_key(&t).await.unwrap().version().get(), 3);
    assert_eq!(subjects(&blind, &t, &mine, "कल").await, ["मुलाकात"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_plaintext_indexes_of_older_builds_are_rebuilt() {
    plaintext_indexes_of_older_builds_are_rebuilt(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_plaintext_indexes_of_older_builds_are_rebuilt() {
    plaintext_indexes_of_older_builds_are_rebuilt(true).await;
}

#[tokio::test]
async fn import_refuses_unknown_tenants_inboxes_and_empty_paths() {
    let env = Env::new(false).await;
    let t = env.tenant("acme").await;
    assert!(matches!(
        tools::find_inbox(&env.keyring, &t, "nope@acme.example").await,
        Err(tools::ImportError::UnknownInbox(_))
    ));
    assert!(matches!(
        tools::find_inbox(
            &env.keyring,
            &TenantId::new("nobody").unwrap(),
            "x@y.example"
        )
        .await,
        Err(tools::ImportError::UnknownTenant(_))
    ));
    let empty = tempfile::tempdir().unwrap();
    assert!(matches!(
        tools::read_messages(empty.path()),
        Err(tools::ImportError::Empty(_))
    ));
    assert!(matches!(
        tools::read_messages(&empty.path().join("missing.eml")),
        Err(tools::ImportError::Read { .. })
    ));
}

#[test]
fn mbox_is_split_and_unquoted() {
    let mbox = b"From alice@example.com Mon Oct  5 10:00:00 2026\nSubject: one\n\nHello\n>From the start\n\nFrom bob@example.com Mon Oct  5 11:00:00 2026\nSubject: two\n\nBye\n";
    let parts = tools::split_mbox(mbox);
    assert_eq!(parts.len(), 2);
    assert_eq!(
        parts[0],
        b"Subject: one\n\nHello\nFrom the start\n".to_vec()
    );
    assert_eq!(parts[1], b"Subject: two\n\nBye\n".to_vec());
}

/// The quick-start samples (`examples/mail`, what the README's run command imports) all go
/// through the real pipeline, and the searches the README and `examples/mail/README.md`
/// suggest find what `examples/mail/EXPECTED.tsv` says.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quick_start_samples_import_and_answer_the_documented_searches() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/mail");
    let env = Env::new(false).await;
    let t = env.tenant("demo").await;
    let a = env.inbox(&t, "support@demo.example").await;
    let svc = env.service(env.index(), Mode::Blind);
    let inbox = tools::find_inbox(&env.keyring, &t, "support@demo.example")
        .await
        .unwrap();
    let messages = tools::read_messages(&dir).unwrap();
    assert!(messages.len() >= 30, "{} samples", messages.len());
    let report = tools::import(&svc, &env.keyring, &inbox, &messages, |_, _| {})
        .await
        .unwrap();
    assert!(report.rejected.is_empty(), "{:?}", report.rejected);
    assert_eq!(report.stored, messages.len(), "every sample is stored");
    assert_eq!(report.indexed as usize, messages.len());

    // The subject each sample is stored with, by file name.
    let subject_of = |file: &str| {
        let raw = std::fs::read(dir.join(file)).unwrap();
        helpr_dataplane::ingest::pipeline::process(&raw)
            .unwrap()
            .subject
    };
    let expected = std::fs::read_to_string(dir.join("EXPECTED.tsv")).unwrap();
    let mine = set(&[&a]);
    let mut checked = 0;
    for line in expected.lines().filter(|l| !l.trim().is_empty()) {
        let (query, files) = line.split_once('\t').unwrap();
        let hits = subjects(&svc, &t, &mine, query).await;
        for file in files.split(',') {
            let want = subject_of(file.trim());
            assert!(
                hits.contains(&want),
                "query {query:?}: {file} ({want:?}) not among {hits:?}"
            );
        }
        checked += 1;
    }
    assert!(checked >= 6, "{checked} documented searches");
    // The README's own examples.
    assert!(!subjects(&svc, &t, &mine, "invoice").await.is_empty());
    assert!(
        !subjects(&svc, &t, &mine, "\"password reset\" after:2026-10-01")
            .await
            .is_empty()
    );
}

/// A tantivy index that counts its commits (flushes).
struct CountingIndex {
    inner: Arc<TantivyIndex>,
    flushes: std::sync::atomic::AtomicUsize,
}

#[async_trait::async_trait]
impl SearchIndex for CountingIndex {
    fn backend(&self) -> &'static str {
        "counting"
    }
    async fn index(&self, t: &TenantId, docs: Vec<IndexDoc>) -> Result<(), SearchError> {
        self.inner.index(t, docs).await
    }
    async fn flush(&self, t: &TenantId) -> Result<(), SearchError> {
        self.flushes
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.inner.flush(t).await
    }
    async fn delete(&self, t: &TenantId, scope: &DeleteScope) -> Result<(), SearchError> {
        self.inner.delete(t, scope).await
    }
    async fn drop_tenant(&self, t: &TenantId) -> Result<(), SearchError> {
        self.inner.drop_tenant(t).await
    }
    async fn search(&self, t: &TenantId, r: &SearchRequest) -> Result<SearchPage, SearchError> {
        self.inner.search(t, r).await
    }
    async fn stats(&self, t: &TenantId) -> Result<IndexStats, SearchError> {
        self.inner.stats(t).await
    }
    async fn compact(&self, t: &TenantId) -> Result<u64, SearchError> {
        self.inner.compact(t).await
    }
}

/// Indexing everything pending commits once per group of batches (about a second of
/// work), not once per batch, and still clears every marker and finds every message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_batches_share_commits_and_lose_nothing() {
    let env = Env::new(false).await;
    let t = env.tenant("acme").await;
    let a = env.inbox(&t, "support@acme.example").await;
    let inbox = tools::find_inbox(&env.keyring, &t, "support@acme.example")
        .await
        .unwrap();
    let msgs: Vec<RawMessage> = (0..60)
        .map(|i| {
            eml(
                "Bob Stone <bob@client.example>",
                &format!("Order {i} delayed"),
                "Wed, 07 Oct 2026 10:00:00 +0000",
                &format!("Where is order number {i}? Parcel tracking says nothing."),
            )
        })
        .collect();
    let first = env.service(env.index(), Mode::Blind);
    tools::import(&first, &env.keyring, &inbox, &msgs, |_, _| {})
        .await
        .unwrap();
    drop(first);
    let store = env.keyring.store().clone();
    assert_eq!(store.mark_all_for_reindex(&t).await.unwrap(), 60);

    // The product's commit cadence: nothing is committed by `index` itself.
    let mut cfg = TantivyConfig::new(env.dir.path().join("index"));
    cfg.commit_interval = Duration::from_secs(3600);
    cfg.writer_heap_bytes = TantivyConfig::MIN_WRITER_HEAP_BYTES;
    let counting = Arc::new(CountingIndex {
        inner: Arc::new(TantivyIndex::open(cfg).unwrap()),
        flushes: Default::default(),
    });
    let svc = SearchService::new(env.keyring.clone(), counting.clone(), Mode::Blind);
    let mut progress = 0;
    let done = svc
        .index_all_pending(&t, 5, |_, _| progress += 1)
        .await
        .unwrap();
    assert_eq!(done, 60);
    let flushes = counting.flushes.load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        (1..12).contains(&flushes),
        "{flushes} commits for 12 batches"
    );
    assert_eq!(progress, flushes, "progress is reported per commit");
    assert_eq!(
        store.index_progress(&t).await.unwrap().0,
        0,
        "markers cleared"
    );
    let page = svc
        .search(&t, &set(&[&a]), "parcel", 100, None)
        .await
        .unwrap();
    assert_eq!(page.hits.len(), 60);
}
