//! Push → sync job → Gmail history → pipeline → sealed storage, against the Google double
//! (real RS256 tokens, real .eml bytes), real PostgreSQL and real OpenBao.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step panics

use std::sync::Arc;
use std::time::{Duration, Instant};

use helpr_dataplane::crypto::SealContext;
use helpr_dataplane::ids::{TenantId, new_record_id};
use helpr_dataplane::ingest::gmail::{GmailClient, GmailConfig};
use helpr_dataplane::ingest::jwt::{PushAuthConfig, Verifier};
use helpr_dataplane::ingest::oauth::{GoogleConfig, SecretString, TokenSource};
use helpr_dataplane::ingest::push::{PushState, router};
use helpr_dataplane::ingest::sink::StorePushSink;
use helpr_dataplane::ingest::sync::{SyncConfig, SyncError, SyncWorker};
use helpr_dataplane::keyring::{Keyring, KeyringConfig};
use helpr_dataplane::kms::vault::{VaultAuth, VaultConfig, VaultKms};
use helpr_dataplane::store::{
    ApplyOutcome, ControlMeta, DeletionPolicy, InboxSpec, InboxStatus, MessageFields, NewInbox,
    PgStore, REFRESH_TOKEN_FIELD, Store, StoredMessage, TenantSpec, Visibility, WatchError, now_ms,
};
use helpr_tests::google::{GoogleDouble, WATCH_LIFETIME_MS};
use helpr_tests::openbao::OpenBao;
use helpr_tests::postgres::TestDatabase;

const AUDIENCE: &str = "https://helpr.test/v1/push/gmail";
/// The audience of tenant acme's own push subscription.
const ACME_AUDIENCE: &str = "https://helpr.test/v1/push/gmail?tenant=acme";
const PUSH_SA: &str = "gmail-push@helpr-test.iam.gserviceaccount.com";
const MAILBOX: &str = "support@acme.example";

fn eml(subject: &str, body: &str) -> Vec<u8> {
    format!(
        "From: Customer <customer@example.org>\r\nTo: {MAILBOX}\r\nSubject: {subject}\r\n\
Date: Thu, 03 Dec 2026 10:00:00 +0000\r\nMessage-ID: <{}@example.org>\r\nMIME-Version: 1.0\r\n\
Content-Type: multipart/alternative; boundary=\"b1\"\r\n\r\n--b1\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n\
{body}\r\n\r\nOn Wed, Dec 2, 2026 at 9:00 AM Support <{MAILBOX}> wrote:\r\n> an earlier answer\r\n\
--b1\r\nContent-Type: text/html; charset=utf-8\r\n\r\n<div>{body}<img src=\"https://tracker.example/o.gif\"><script>alert(1)</script></div>\
<div class=\"gmail_quote\"><blockquote class=\"gmail_quote\">an earlier answer</blockquote></div>\r\n--b1--\r\n",
        new_record_id()
    )
    .into_bytes()
}

struct Env {
    google: GoogleDouble,
    bao: OpenBao,
    db: TestDatabase,
    store: Arc<dyn Store>,
    keyring: Arc<Keyring>,
    tenant: TenantId,
    inbox_id: String,
}

fn vault_kms(bao: &OpenBao) -> VaultKms {
    let mut cfg = VaultConfig::new(
        bao.address.clone(),
        VaultAuth::token(bao.root_token.clone()),
    );
    cfg.request_timeout = Duration::from_secs(2);
    VaultKms::new(cfg).unwrap()
}

fn gmail_config(google: &GoogleDouble) -> GmailConfig {
    GmailConfig {
        api_base_url: google.base_url.clone(),
        initial_backoff_ms: 10,
        max_backoff_ms: 2_000,
        max_attempts: 5,
        ..GmailConfig::default()
    }
}

fn google_config(google: &GoogleDouble) -> GoogleConfig {
    GoogleConfig {
        token_url: google.token_url(),
        client_id: "helpr-test.apps.googleusercontent.com".into(),
        client_secret: SecretString::new("test-client-secret"),
        ..GoogleConfig::default()
    }
}

fn sync_config() -> SyncConfig {
    SyncConfig {
        store_batch: 3,
        retry_initial_secs: 1,
        ..SyncConfig::default()
    }
}

impl Env {
    async fn start() -> Env {
        let google = GoogleDouble::start(MAILBOX, 1_000).await.unwrap();
        let bao = OpenBao::start().await.unwrap();
        let db = TestDatabase::create().await.unwrap();
        let store: Arc<dyn Store> = Arc::new(PgStore::connect(&db.url).await.unwrap());
        let keyring = Arc::new(Keyring::new(
            Arc::new(vault_kms(&bao)),
            store.clone(),
            KeyringConfig::default(),
        ));
        let tenant = TenantId::new("acme").unwrap();
        keyring.provision_tenant(&tenant, "Acme").await.unwrap();
        let mut env = Env {
            google,
            bao,
            db,
            store,
            keyring,
            tenant,
            inbox_id: String::new(),
        };
        env.inbox_id = env
            .add_inbox(MAILBOX, "1//rt-initial", Some(1_000), now_ms() - 60_000)
            .await;
        env
    }

    async fn add_inbox(
        &self,
        address: &str,
        refresh: &str,
        mark: Option<u64>,
        connected_at: i64,
    ) -> String {
        let id = new_record_id();
        self.store
            .create_inbox(&NewInbox {
                id: id.clone(),
                tenant_id: self.tenant.clone(),
                address: address.into(),
                connected_at_ms: connected_at,
            })
            .await
            .unwrap();
        let sealed = self
            .keyring
            .seal(
                &SealContext::new("acme", &id, REFRESH_TOKEN_FIELD),
                refresh.as_bytes(),
            )
            .await
            .unwrap();
        self.store.set_refresh_token(&id, &sealed).await.unwrap();
        if let Some(mark) = mark {
            self.store
                .store_synced_messages(&self.tenant, &id, &[], Some(mark))
                .await
                .unwrap();
        }
        self.google.add_refresh_token(refresh);
        id
    }

    fn worker_with(&self, keyring: Arc<Keyring>) -> Arc<SyncWorker> {
        Arc::new(SyncWorker::new(
            self.tenant.clone(),
            self.store.clone(),
            keyring,
            GmailClient::new(gmail_config(&self.google)).unwrap(),
            TokenSource::new(&google_config(&self.google)).unwrap(),
            sync_config(),
        ))
    }

    fn worker(&self) -> Arc<SyncWorker> {
        self.worker_with(self.keyring.clone())
    }

    async fn push_server(&self, store: Arc<dyn Store>) -> String {
        let verifier = Verifier::new(PushAuthConfig {
            audience: AUDIENCE.into(),
            additional_audiences: vec![ACME_AUDIENCE.into()],
            service_account: PUSH_SA.into(),
            jwks_url: self.google.jwks_url(),
            ..PushAuthConfig::default()
        })
        .unwrap();
        let app = router(PushState {
            verifier: Arc::new(verifier),
            sink: Arc::new(StorePushSink::new(store)),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/v1/push/gmail", listener.local_addr().unwrap());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        url
    }

    async fn push(&self, url: &str, history_id: u64, message_id: &str) -> u16 {
        self.push_as(url, AUDIENCE, history_id, message_id).await
    }

    async fn push_as(&self, url: &str, audience: &str, history_id: u64, message_id: &str) -> u16 {
        reqwest::Client::new()
            .post(url)
            .bearer_auth(self.google.sign_push_token(audience, PUSH_SA))
            .json(&self.google.push_body(history_id, message_id))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    }

    async fn messages(&self, inbox_id: &str) -> Vec<StoredMessage> {
        let ids = self
            .store
            .list_message_ids(&self.tenant, inbox_id, 10_000)
            .await
            .unwrap();
        let mut out = Vec::new();
        for id in ids {
            out.push(
                self.store
                    .get_message(&self.tenant, &id)
                    .await
                    .unwrap()
                    .unwrap(),
            );
        }
        out
    }

    async fn open(&self, msg: &StoredMessage, field: usize) -> String {
        let f = &msg.fields;
        let sealed = [
            &f.subject,
            &f.from_addr,
            &f.to_addrs,
            &f.cc_addrs,
            &f.reply_to,
            &f.text_body,
            &f.html_body,
            &f.snippet,
        ][field];
        let ctx = SealContext::new("acme", &msg.id, MessageFields::FIELD_NAMES[field]);
        String::from_utf8(self.keyring.open(&ctx, sealed).await.unwrap()).unwrap()
    }

    async fn jobs(&self) -> Vec<(String, Option<String>)> {
        let pool = sqlx::PgPool::connect(&self.db.url).await.unwrap();
        let rows: Vec<(String, Option<String>)> =
            sqlx::query_as("SELECT state, last_error_kind FROM sync_jobs ORDER BY created_at_ms")
                .fetch_all(&pool)
                .await
                .unwrap();
        pool.close().await;
        rows
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_verified_push_leads_to_sealed_sanitized_stripped_mail_and_an_advanced_mark() {
    let env = Env::start().await;
    let url = env.push_server(env.store.clone()).await;
    let now = now_ms();
    env.google.deliver(
        &eml("Invoice 17 is wrong", "Please fix the invoice."),
        &["INBOX", "UNREAD"],
        now,
    );
    env.google
        .deliver(&eml("my draft", "draft text"), &["DRAFT"], now);
    env.google
        .deliver(&eml("we sent this", "sent text"), &["SENT"], now);
    let corpus = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../shared/testdata/mime/rfc/000.eml"
    ))
    .unwrap();
    env.google.deliver(&corpus, &["INBOX"], now);
    let (_, last) = env.google.deliver(
        &eml("Second question", "Where is my order?"),
        &["INBOX"],
        now,
    );

    assert_eq!(env.push(&url, last, "pubsub-1").await, 204);
    assert_eq!(
        env.push(&url, last, "pubsub-1").await,
        204,
        "redelivery is acknowledged"
    );
    assert_eq!(
        env.jobs().await.len(),
        1,
        "a redelivered messageId creates no second job"
    );

    let worker = env.worker();
    assert_eq!(worker.run_once().await.unwrap(), 1);
    let msgs = env.messages(&env.inbox_id).await;
    assert_eq!(msgs.len(), 3, "drafts and sent mail are not stored");
    let mut subjects = Vec::new();
    for m in &msgs {
        subjects.push(env.open(m, 0).await);
    }
    assert!(
        subjects.contains(&"Invoice 17 is wrong".to_string()),
        "{subjects:?}"
    );
    assert!(
        !subjects
            .iter()
            .any(|s| s.contains("draft") || s.contains("sent this"))
    );
    let invoice = msgs
        .iter()
        .zip(&subjects)
        .find(|(_, s)| s.contains("Invoice"))
        .unwrap()
        .0;
    let text = env.open(invoice, 5).await;
    assert!(text.contains("Please fix the invoice."));
    assert!(
        !text.contains("an earlier answer"),
        "quoted text stripped: {text}"
    );
    let html = env.open(invoice, 6).await;
    assert!(!html.contains("<script"), "{html}");
    assert!(!html.contains(" src=\"https://tracker.example"), "{html}");
    assert!(
        html.contains("data-helpr-remote-src=\"https://tracker.example"),
        "{html}"
    );
    assert!(!html.contains("an earlier answer"), "{html}");
    assert_eq!(
        env.open(invoice, 1).await,
        "Customer <customer@example.org>"
    );

    let inbox = env.store.get_inbox(&env.inbox_id).await.unwrap().unwrap();
    assert_eq!(inbox.history_id, Some(env.google.history_id()));
    assert_eq!(env.jobs().await, vec![("done".to_string(), None)]);

    // A notification at or below the mark is a replay: no job.
    assert_eq!(env.push(&url, last, "pubsub-2").await, 204);
    assert_eq!(env.jobs().await.len(), 1);
    // Syncing again stores nothing twice.
    let report = worker.sync_inbox(&env.inbox_id).await.unwrap();
    assert_eq!(report.stored, 0);
    assert_eq!(env.messages(&env.inbox_id).await.len(), 3);
    drop(env.bao);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_is_read_across_pages_and_batches_without_duplicates() {
    let env = Env::start().await;
    env.google.set_page_size(2);
    let now = now_ms();
    for i in 0..11 {
        env.google.deliver_in_thread(
            &eml(&format!("message {i}"), "body"),
            &["INBOX"],
            now + i,
            Some(&format!("thread-{}", i % 4)),
        );
    }
    let worker = env.worker();
    let report = worker.sync_inbox(&env.inbox_id).await.unwrap();
    assert_eq!(report.stored, 11);
    let msgs = env.messages(&env.inbox_id).await;
    assert_eq!(msgs.len(), 11);
    let mut gmail_ids: Vec<_> = msgs.iter().map(|m| m.gmail_message_id.clone()).collect();
    gmail_ids.sort();
    gmail_ids.dedup();
    assert_eq!(gmail_ids.len(), 11);
    let mut threads: Vec<_> = msgs.iter().map(|m| m.conversation_id.clone()).collect();
    threads.sort();
    threads.dedup();
    assert_eq!(threads.len(), 4, "messages group into their Gmail threads");
    assert!(
        env.google.requests("/gmail/v1/users/me/history") >= 6,
        "paginated"
    );
    let again = worker.sync_inbox(&env.inbox_id).await.unwrap();
    assert_eq!(
        (again.stored, env.messages(&env.inbox_id).await.len()),
        (0, 11)
    );
    drop(env.bao);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_history_recovers_only_mail_newer_than_the_connection_or_last_message() {
    let env = Env::start().await;
    let connected_at = env
        .store
        .get_inbox(&env.inbox_id)
        .await
        .unwrap()
        .unwrap()
        .connected_at_ms;
    // Mailbox history from before the connection: never imported.
    env.google
        .deliver(&eml("old 1", "old"), &["INBOX"], connected_at - 86_400_000);
    env.google
        .deliver(&eml("old 2", "old"), &["INBOX"], connected_at - 5_000);
    env.google
        .deliver(&eml("new 1", "new"), &["INBOX"], connected_at + 2_000);
    env.google
        .deliver(&eml("new draft", "new"), &["DRAFT"], connected_at + 3_000);
    env.google
        .deliver(&eml("new 2", "new"), &["INBOX"], connected_at + 4_000);
    env.google.expire_history_before(u64::MAX);

    let report = env.worker().sync_inbox(&env.inbox_id).await.unwrap();
    assert!(report.recovered_stale_history);
    let msgs = env.messages(&env.inbox_id).await;
    let mut subjects = Vec::new();
    for m in &msgs {
        subjects.push(env.open(m, 0).await);
    }
    subjects.sort();
    assert_eq!(subjects, vec!["new 1", "new 2"]);
    assert_eq!(
        env.store
            .get_inbox(&env.inbox_id)
            .await
            .unwrap()
            .unwrap()
            .history_id,
        Some(env.google.history_id())
    );
    drop(env.bao);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_refresh_token_replaces_the_sealed_one() {
    let env = Env::start().await;
    env.google.rotate_refresh_tokens(true);
    env.google
        .deliver(&eml("hello", "hi"), &["INBOX"], now_ms());
    env.worker().sync_inbox(&env.inbox_id).await.unwrap();
    let inbox = env.store.get_inbox(&env.inbox_id).await.unwrap().unwrap();
    let ctx = SealContext::new("acme", &env.inbox_id, REFRESH_TOKEN_FIELD);
    let stored = env
        .keyring
        .open(&ctx, inbox.refresh_token.as_ref().unwrap())
        .await
        .unwrap();
    let stored = String::from_utf8(stored).unwrap();
    assert_ne!(stored, "1//rt-initial");
    assert_eq!(env.google.valid_refresh_tokens(), vec![stored.clone()]);
    // A new worker (empty access-token cache) refreshes with the stored, rotated token.
    env.google
        .deliver(&eml("again", "hi"), &["INBOX"], now_ms());
    env.worker().sync_inbox(&env.inbox_id).await.unwrap();
    assert_eq!(env.messages(&env.inbox_id).await.len(), 2);
    drop(env.bao);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_grant_marks_only_that_inbox_for_reconnection() {
    let env = Env::start().await;
    let url = env.push_server(env.store.clone()).await;
    let other = env
        .add_inbox(
            "sales@acme.example",
            "1//rt-sales",
            Some(1_000),
            now_ms() - 60_000,
        )
        .await;
    env.google.revoke_refresh_token("1//rt-initial");
    let (_, h) = env
        .google
        .deliver(&eml("hello", "hi"), &["INBOX"], now_ms());
    assert_eq!(env.push(&url, h, "p-1").await, 204);

    let worker = env.worker();
    worker.run_once().await.unwrap();
    let inbox = env.store.get_inbox(&env.inbox_id).await.unwrap().unwrap();
    assert_eq!(inbox.status, "needs_reconnect");
    assert_eq!(
        env.jobs().await,
        vec![("failed".to_string(), Some("needs_reconnect".to_string()))]
    );
    assert!(matches!(
        worker.sync_inbox(&env.inbox_id).await,
        Err(SyncError::NeedsReconnect)
    ));

    // The other inbox (same mailbox double, its own grant) keeps syncing.
    let report = worker.sync_inbox(&other).await.unwrap();
    assert_eq!(report.stored, 1);
    // Pushes for a disconnected inbox are acknowledged and create no job.
    assert_eq!(env.push(&url, h + 100, "p-2").await, 204);
    drop(env.bao);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_and_server_errors_are_retried_honouring_retry_after() {
    let env = Env::start().await;
    env.google
        .deliver(&eml("hello", "hi"), &["INBOX"], now_ms());
    env.google
        .fail_next("/gmail/v1/users/me/history", 429, Some(1), 1);
    env.google
        .fail_next("/gmail/v1/users/me/messages/", 503, None, 2);
    let started = Instant::now();
    let report = env.worker().sync_inbox(&env.inbox_id).await.unwrap();
    assert_eq!(report.stored, 1);
    assert!(
        started.elapsed() >= Duration::from_millis(950),
        "Retry-After: 1 was honoured"
    );
    assert_eq!(env.google.requests("/gmail/v1/users/me/history"), 2);
    assert_eq!(env.google.requests("/gmail/v1/users/me/messages/"), 3);

    // Persistent failure: a retryable error, the job goes back to pending.
    env.google
        .deliver(&eml("later", "hi"), &["INBOX"], now_ms());
    env.google
        .fail_next("/gmail/v1/users/me/history", 503, None, 50);
    let err = env.worker().sync_inbox(&env.inbox_id).await.unwrap_err();
    assert!(
        matches!(err, SyncError::Gmail(ref e) if e.is_retryable()),
        "{err}"
    );
    drop(env.bao);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kms_outage_keeps_jobs_pending_while_pushes_are_still_acknowledged() {
    let mut env = Env::start().await;
    let url = env.push_server(env.store.clone()).await;
    // A worker with a cold key cache, as after a restart.
    let cold = Arc::new(Keyring::new(
        Arc::new(vault_kms(&env.bao)),
        env.store.clone(),
        KeyringConfig::default(),
    ));
    let worker = env.worker_with(cold);
    let (_, h) = env
        .google
        .deliver(&eml("during outage", "hi"), &["INBOX"], now_ms());
    env.bao.stop();
    assert_eq!(
        env.push(&url, h, "p-1").await,
        204,
        "the job is durable without the KMS"
    );
    worker.run_once().await.unwrap();
    assert!(env.messages(&env.inbox_id).await.is_empty());
    assert_eq!(
        env.jobs().await,
        vec![("pending".to_string(), Some("kms".to_string()))]
    );
    assert_eq!(
        env.store
            .get_inbox(&env.inbox_id)
            .await
            .unwrap()
            .unwrap()
            .history_id,
        Some(1_000),
        "the mark did not move"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_outage_answers_503_so_pubsub_redelivers() {
    let env = Env::start().await;
    let dead = sqlx::postgres::PgPoolOptions::new()
        .acquire_timeout(Duration::from_millis(300))
        .connect_lazy("postgres://postgres@127.0.0.1:1/none")
        .unwrap();
    let url = env.push_server(Arc::new(PgStore::from_pool(dead))).await;
    assert_eq!(env.push(&url, 5_000, "p-1").await, 503);
    drop(env.bao);
}

fn binary() -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap();
    let bin = exe
        .parent()
        .and_then(|d| d.parent())
        .unwrap()
        .join("helpr-dataplane");
    assert!(
        bin.is_file(),
        "{} missing: cargo build -p helpr-dataplane",
        bin.display()
    );
    bin
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_worker_killed_mid_batch_resumes_without_loss_or_duplicates() {
    let env = Env::start().await;
    let url = env.push_server(env.store.clone()).await;
    let total = 24;
    let now = now_ms();
    let mut last = 0;
    for i in 0..total {
        last = env
            .google
            .deliver(
                &eml(&format!("crash test {i}"), "body"),
                &["INBOX"],
                now + i,
            )
            .1;
    }
    env.google.set_fetch_latency_ms(40);
    assert_eq!(env.push(&url, last, "p-crash").await, 204);

    let data_dir = tempfile::tempdir().unwrap();
    let spawn = || {
        std::process::Command::new(binary())
            .args(["sync", "--tenant", "acme"])
            .env("HELPR_DATA_DIR", data_dir.path())
            .env("HELPR_DATABASE__URL", &env.db.url)
            .env("HELPR_KMS__BACKEND", "vault")
            .env("HELPR_KMS__VAULT__ADDRESS", &env.bao.address)
            .env("HELPR_KMS__VAULT__AUTH__METHOD", "token")
            .env("HELPR_KMS__VAULT__AUTH__TOKEN", &env.bao.root_token)
            .env("HELPR_GMAIL__API_BASE_URL", &env.google.base_url)
            .env("HELPR_GMAIL__INITIAL_BACKOFF_MS", "10")
            .env("HELPR_GOOGLE__TOKEN_URL", env.google.token_url())
            .env("HELPR_GOOGLE__CLIENT_ID", "helpr-test")
            .env("HELPR_GOOGLE__CLIENT_SECRET", "test-secret")
            .env("HELPR_SYNC__STORE_BATCH", "4")
            .env("HELPR_SYNC__LEASE_SECS", "1")
            .env("HELPR_SYNC__IDLE_WAIT_MS", "100")
            .env("HELPR_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let mut child = spawn();
    // Kill it once some, but not all, messages are stored.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let n = env
            .store
            .list_message_ids(&env.tenant, &env.inbox_id, 1000)
            .await
            .unwrap()
            .len();
        if n >= 5 {
            assert!(
                n < total as usize,
                "the worker finished before it could be killed"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "worker stored nothing: {:?}",
            child.try_wait()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let after_kill = env.messages(&env.inbox_id).await.len();
    assert!(after_kill < total as usize);

    // The job's lease (1 s) expires; a new worker claims it and finishes.
    env.google.set_fetch_latency_ms(0);
    let mut child = spawn();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let n = env
            .store
            .list_message_ids(&env.tenant, &env.inbox_id, 1000)
            .await
            .unwrap()
            .len();
        let done = env.jobs().await.iter().all(|(s, _)| s == "done");
        // The worker also indexes what it stored (blind tokens into the configured search
        // backend, here the embedded index under its data directory): markers cleared.
        let (pending, indexed_total) = env.store.index_progress(&env.tenant).await.unwrap();
        if n == total as usize && done && pending == 0 && indexed_total == total as u64 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "resumed worker stalled at {n} stored, {pending} not indexed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let msgs = env.messages(&env.inbox_id).await;
    let mut subjects = Vec::new();
    for m in &msgs {
        subjects.push(env.open(m, 0).await);
    }
    subjects.sort();
    let mut expected: Vec<String> = (0..total).map(|i| format!("crash test {i}")).collect();
    expected.sort();
    assert_eq!(subjects, expected, "no message lost, none stored twice");
    assert_eq!(
        env.store
            .get_inbox(&env.inbox_id)
            .await
            .unwrap()
            .unwrap()
            .history_id,
        Some(env.google.history_id())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_periodic_poll_syncs_connected_inboxes_without_a_notification() {
    let env = Env::start().await;
    env.google
        .deliver(&eml("no push for this one", "hi"), &["INBOX"], now_ms());
    let needs_reconnect = env
        .add_inbox("old@acme.example", "1//rt-old", Some(1_000), now_ms())
        .await;
    env.store
        .set_inbox_status(
            &needs_reconnect,
            helpr_dataplane::store::InboxStatus::NeedsReconnect,
        )
        .await
        .unwrap();
    let worker = env.worker();
    assert_eq!(worker.run_once().await.unwrap(), 0, "no jobs");
    assert_eq!(
        worker.poll_due().await,
        1,
        "only the connected inbox is polled"
    );
    assert_eq!(env.messages(&env.inbox_id).await.len(), 1);
    assert_eq!(
        worker.poll_due().await,
        0,
        "not due again before the interval"
    );
    drop(env.bao);
}

/// Applies the tenant and an Inbox object for the test mailbox (adopting the inbox the
/// environment created), naming `topic`, as the operator does.
async fn apply_inbox_topic(env: &Env, generation: i64, topic: Option<&str>) {
    apply_inbox(env, generation, topic, None).await;
}

/// Applies the tenant and an Inbox object for the test mailbox naming `topic` and the push
/// `audience`.
async fn apply_inbox(env: &Env, generation: i64, topic: Option<&str>, audience: Option<&str>) {
    let meta = |name: &str, generation| ControlMeta {
        namespace: "helpdesk".into(),
        name: name.into(),
        uid: format!("uid-{name}"),
        generation,
    };
    let tenant = TenantSpec {
        display_name: "Acme".into(),
        deletion_policy: DeletionPolicy::Retain,
        search_mode: helpr_dataplane::search::Mode::Blind,
    };
    env.store
        .apply_tenant(&meta("acme", 1), &tenant)
        .await
        .unwrap();
    let spec = InboxSpec {
        tenant: env.tenant.clone(),
        address: MAILBOX.into(),
        visibility: Visibility::Org,
        team: None,
        assignment_limits_visibility: false,
        pubsub_topic: topic.map(String::from),
        push_audience: audience.map(String::from),
    };
    assert_eq!(
        env.store
            .apply_inbox(&meta("support", generation), &spec)
            .await
            .unwrap(),
        ApplyOutcome::Applied
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_watches_are_registered_renewed_moved_and_stopped_as_the_inbox_asks() {
    const TOPIC: &str = "projects/helpr-test/topics/gmail-push";
    const MOVED: &str = "projects/helpr-test/topics/gmail-push-moved";
    let env = Env::start().await;
    env.google.add_topic(TOPIC, true);
    apply_inbox_topic(&env, 1, Some(TOPIC)).await;
    let status = || async {
        env.store
            .inbox_sync_status("helpdesk", "support")
            .await
            .unwrap()
            .unwrap()
    };
    assert_eq!(
        status().await.inbox_id,
        env.inbox_id,
        "the inbox is adopted"
    );

    // Registered with the documented body; the expiration Gmail answered is stored.
    let worker = env.worker();
    let before = now_ms();
    assert_eq!(worker.maintain_watches().await, 1);
    let watch = env.google.watch().expect("a watch is registered");
    assert_eq!(watch.topic, TOPIC);
    assert_eq!(watch.label_ids, vec!["INBOX".to_string()]);
    assert_eq!(watch.label_filter_behavior.as_deref(), Some("include"));
    assert!(watch.expiration_ms >= before + WATCH_LIFETIME_MS);
    let s = status().await;
    assert_eq!(s.watch_expires_at_ms, Some(watch.expiration_ms));
    assert_eq!(s.watch_error, None);

    // A fresh watch is left alone.
    assert_eq!(worker.maintain_watches().await, 0);
    assert_eq!(env.google.watch_calls().len(), 1);

    // Within a day of expiring it is renewed, also when the access token expired meanwhile.
    env.store
        .record_inbox_watch(&env.inbox_id, Ok(Some((TOPIC, now_ms() + 3_600_000))))
        .await
        .unwrap();
    env.google.expire_access_tokens();
    assert_eq!(worker.maintain_watches().await, 1);
    assert_eq!(env.google.watch_calls().len(), 2);
    let renewed = env.google.watch().unwrap().expiration_ms;
    assert_eq!(status().await.watch_expires_at_ms, Some(renewed));

    // A new topic Gmail may not publish to: the failure is recorded as a word, the old
    // watch is no longer reported, and it is not retried at once.
    env.google.add_topic(MOVED, false);
    apply_inbox_topic(&env, 2, Some(MOVED)).await;
    let watch_requests = env.google.requests("/gmail/v1/users/me/watch");
    assert_eq!(worker.maintain_watches().await, 0);
    let s = status().await;
    assert_eq!(
        (s.watch_error, s.watch_expires_at_ms),
        (Some(WatchError::Forbidden), None)
    );
    assert_eq!(
        env.google.requests("/gmail/v1/users/me/watch"),
        watch_requests + 1
    );
    assert_eq!(worker.maintain_watches().await, 0);
    assert_eq!(
        env.google.requests("/gmail/v1/users/me/watch"),
        watch_requests + 1,
        "not retried before watch_retry_secs"
    );
    // Mail keeps flowing by polling meanwhile.
    env.google
        .deliver(&eml("while unwatched", "hi"), &["INBOX"], now_ms());
    assert_eq!(worker.poll_due().await, 1);
    assert_eq!(env.messages(&env.inbox_id).await.len(), 1);

    // Publishing allowed: the next worker (or the next retry) moves the watch.
    env.google.add_topic(MOVED, true);
    let worker = env.worker();
    assert_eq!(worker.maintain_watches().await, 1);
    assert_eq!(env.google.watch().unwrap().topic, MOVED);
    let s = status().await;
    assert_eq!(s.watch_error, None);
    assert_eq!(
        s.watch_expires_at_ms,
        Some(env.google.watch().unwrap().expiration_ms)
    );

    // The topic removed from the Inbox: the watch is stopped and nothing more is due.
    apply_inbox_topic(&env, 3, None).await;
    assert_eq!(worker.maintain_watches().await, 1);
    assert_eq!(env.google.watch(), None);
    assert_eq!(env.store.inbox_watches(&env.tenant).await.unwrap(), vec![]);
    assert_eq!(status().await.watch_expires_at_ms, None);
    assert_eq!(worker.maintain_watches().await, 0);

    // The Inbox deleted (the inbox disconnected): its watch is stopped as well, and the
    // inbox stays disconnected.
    apply_inbox_topic(&env, 4, Some(TOPIC)).await;
    assert_eq!(worker.maintain_watches().await, 1);
    assert_eq!(env.google.watch().unwrap().topic, TOPIC);
    let meta = ControlMeta {
        namespace: "helpdesk".into(),
        name: "support".into(),
        uid: "uid-support".into(),
        generation: 4,
    };
    env.store.delete_inbox(&meta).await.unwrap();
    let stops = env.google.requests("/gmail/v1/users/me/stop");
    assert_eq!(worker.maintain_watches().await, 1);
    assert_eq!(env.google.requests("/gmail/v1/users/me/stop"), stops + 1);
    assert_eq!(env.google.watch(), None);
    assert_eq!(env.store.inbox_watches(&env.tenant).await.unwrap(), vec![]);
    let inbox = env.store.get_inbox(&env.inbox_id).await.unwrap().unwrap();
    assert_eq!(inbox.status, "disconnected");
    drop(env.bao);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disconnected_inbox_whose_token_is_refused_stays_disconnected_and_its_expired_watch_is_forgotten()
 {
    const TOPIC: &str = "projects/helpr-test/topics/gmail-push";
    let env = Env::start().await;
    env.google.add_topic(TOPIC, true);
    apply_inbox_topic(&env, 1, Some(TOPIC)).await;
    let worker = env.worker();
    assert_eq!(worker.maintain_watches().await, 1);
    env.store
        .set_inbox_status(&env.inbox_id, InboxStatus::Disconnected)
        .await
        .unwrap();
    env.google.revoke_everything();
    // The stop cannot be made (no access token): retried later, status untouched.
    let worker = env.worker();
    let stops = env.google.requests("/gmail/v1/users/me/stop");
    assert_eq!(worker.maintain_watches().await, 0);
    assert!(env.google.watch().is_some());
    assert_eq!(env.google.requests("/gmail/v1/users/me/stop"), stops);
    let inbox = env.store.get_inbox(&env.inbox_id).await.unwrap().unwrap();
    assert_eq!(inbox.status, "disconnected");
    assert_eq!(env.store.inbox_watches(&env.tenant).await.unwrap().len(), 1);
    // Once the watch has lapsed there is nothing to stop: it is forgotten without a call.
    env.store
        .record_inbox_watch(&env.inbox_id, Ok(Some((TOPIC, now_ms() - 1))))
        .await
        .unwrap();
    let worker = env.worker();
    assert_eq!(worker.maintain_watches().await, 1);
    assert_eq!(env.google.requests("/gmail/v1/users/me/stop"), stops);
    assert_eq!(env.store.inbox_watches(&env.tenant).await.unwrap(), vec![]);
    drop(env.bao);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_topic_and_a_gmail_outage_are_recorded_and_polling_goes_on() {
    const TOPIC: &str = "projects/helpr-test/topics/not-created";
    let env = Env::start().await;
    apply_inbox_topic(&env, 1, Some(TOPIC)).await;
    let worker = env.worker();
    assert_eq!(worker.maintain_watches().await, 0);
    let s = env
        .store
        .inbox_sync_status("helpdesk", "support")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(s.watch_error, Some(WatchError::NotFound));

    env.google.add_topic(TOPIC, true);
    env.google
        .fail_next("/gmail/v1/users/me/watch", 503, None, 10);
    let worker = env.worker();
    assert_eq!(worker.maintain_watches().await, 0);
    let s = env
        .store
        .inbox_sync_status("helpdesk", "support")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(s.watch_error, Some(WatchError::Unavailable));
    assert_eq!(env.google.watch(), None);
    env.google
        .deliver(&eml("still polled", "hi"), &["INBOX"], now_ms());
    assert_eq!(worker.poll_due().await, 1);
    assert_eq!(env.messages(&env.inbox_id).await.len(), 1);
    drop(env.bao);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_reaches_only_inboxes_that_name_its_audience() {
    let env = Env::start().await;
    let url = env.push_server(env.store.clone()).await;
    apply_inbox(&env, 1, None, Some(ACME_AUDIENCE)).await;
    env.google
        .deliver(&eml("audience", "hi"), &["INBOX"], now_ms());
    let history = env.google.history_id();
    // Another subscription's token (accepted by the endpoint): acknowledged, no job.
    assert_eq!(env.push_as(&url, AUDIENCE, history, "m-other").await, 204);
    assert!(env.jobs().await.is_empty());
    // An audience the endpoint does not accept at all: unauthenticated.
    assert_eq!(
        env.push_as(&url, "https://evil.example/push", history, "m-evil")
            .await,
        401
    );
    assert!(env.jobs().await.is_empty());
    // The inbox's own subscription: a job.
    assert_eq!(
        env.push_as(&url, ACME_AUDIENCE, history, "m-acme").await,
        204
    );
    assert_eq!(env.jobs().await.len(), 1);
    // An inbox that names no audience takes any accepted one.
    apply_inbox(&env, 2, None, None).await;
    env.google
        .deliver(&eml("audience 2", "hi"), &["INBOX"], now_ms());
    let history = env.google.history_id();
    assert_eq!(env.push_as(&url, AUDIENCE, history, "m-any").await, 204);
    assert_eq!(env.jobs().await.len(), 2);
    drop(env.bao);
}
