//! The control API end to end: the real tonic server (`ControlService` behind its bearer
//! token interceptor) on a free port, over a real PostgreSQL database (and SQLite), a local
//! KMS and a tantivy index, driven by the operator's `ControlClient`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use helpr_dataplane::control::{ControlService, ControlToken, serve};
use helpr_dataplane::crypto::SealContext;
use helpr_dataplane::ids::TenantId;
use helpr_dataplane::keyring::{Keyring, KeyringConfig};
use helpr_dataplane::kms::local::LocalKms;
use helpr_dataplane::kms::{DekContext, KeyRef, Kms, KmsError, WrappedDek};
use helpr_dataplane::search::{
    DeleteScope, IndexDoc, IndexStats, SearchError, SearchIndex, SearchPage, SearchRequest,
    TantivyConfig, TantivyIndex,
};
use helpr_dataplane::store::{
    ChangeEvent, ControlKind, GrantRole, PgStore, SqliteStore, Store, SubjectKind, Visibility,
};
use helpr_operator::control::{ControlClient, ControlError, proto};
use helpr_tests::postgres::{TestDatabase, sqlite_url};
use tonic::Code;

// --- harness ------------------------------------------------------------------------------

/// A search index whose `drop_tenant` fails while `down` is set, and whose `delete` fails
/// while `deletes_down` is set (the search tier is unreachable); everything else goes to
/// tantivy.
struct FlakySearch {
    inner: TantivyIndex,
    down: AtomicBool,
    deletes_down: AtomicBool,
}

#[async_trait]
impl SearchIndex for FlakySearch {
    fn backend(&self) -> &'static str {
        "flaky"
    }
    async fn index(&self, t: &TenantId, docs: Vec<IndexDoc>) -> Result<(), SearchError> {
        self.inner.index(t, docs).await
    }
    async fn flush(&self, t: &TenantId) -> Result<(), SearchError> {
        self.inner.flush(t).await
    }
    async fn delete(&self, t: &TenantId, scope: &DeleteScope) -> Result<(), SearchError> {
        if self.deletes_down.load(Ordering::SeqCst) {
            return Err(SearchError::Unavailable("search tier unreachable".into()));
        }
        self.inner.delete(t, scope).await
    }
    async fn drop_tenant(&self, t: &TenantId) -> Result<(), SearchError> {
        if self.down.load(Ordering::SeqCst) {
            return Err(SearchError::Unavailable("search tier unreachable".into()));
        }
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

struct Harness {
    client: ControlClient,
    url: String,
    token: String,
    store: Arc<dyn Store>,
    /// A second handle on the same database, as another process would hold.
    other: Arc<dyn Store>,
    keyring: Arc<Keyring>,
    search: Arc<FlakySearch>,
    kms_dir: std::path::PathBuf,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<()>>,
    _db: Option<TestDatabase>,
    _dir: tempfile::TempDir,
}

impl Harness {
    async fn postgres() -> Harness {
        let db = TestDatabase::create().await.unwrap();
        let store: Arc<dyn Store> = Arc::new(PgStore::connect(&db.url).await.unwrap());
        let other: Arc<dyn Store> = Arc::new(PgStore::connect(&db.url).await.unwrap());
        Self::start(store, other, Some(db), tempfile::tempdir().unwrap()).await
    }

    async fn sqlite() -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let url = sqlite_url(dir.path());
        let store: Arc<dyn Store> = Arc::new(SqliteStore::connect(&url).await.unwrap());
        let other: Arc<dyn Store> = Arc::new(SqliteStore::connect(&url).await.unwrap());
        Self::start(store, other, None, dir).await
    }

    async fn start(
        store: Arc<dyn Store>,
        other: Arc<dyn Store>,
        db: Option<TestDatabase>,
        dir: tempfile::TempDir,
    ) -> Harness {
        let kms_dir = dir.path().join("kms");
        let kms: Arc<dyn Kms> = Arc::new(LocalKms::open(&kms_dir).unwrap());
        let keyring = Arc::new(Keyring::new(kms, store.clone(), KeyringConfig::default()));
        let search = Arc::new(FlakySearch {
            inner: TantivyIndex::open(TantivyConfig::new(dir.path().join("index"))).unwrap(),
            down: AtomicBool::new(false),
            deletes_down: AtomicBool::new(false),
        });
        let token = format!("control-token-{}", uuid::Uuid::new_v4().simple());
        let server_token = ControlToken::new(token.as_bytes());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let service = ControlService::new(keyring.clone(), search.clone());
        let server = tokio::spawn(async move {
            serve(service, server_token, None, listener, async move {
                let _ = stopped.await;
            })
            .await
            .unwrap();
        });
        let client = ControlClient::connect(&url, &token).unwrap();
        Harness {
            client,
            url,
            token,
            store,
            other,
            keyring,
            search,
            kms_dir,
            stop: Some(stop),
            server: Some(server),
            _db: db,
            _dir: dir,
        }
    }

    async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(server) = self.server.take() {
            server.await.unwrap();
        }
    }
}

fn meta(namespace: &str, name: &str, uid: &str, generation: i64) -> proto::ObjectMeta {
    proto::ObjectMeta {
        namespace: namespace.into(),
        name: name.into(),
        uid: uid.into(),
        generation,
    }
}

fn tenant_req(
    name: &str,
    generation: i64,
    policy: proto::DeletionPolicy,
) -> proto::UpsertTenantRequest {
    proto::UpsertTenantRequest {
        meta: Some(meta("acme-ns", name, &format!("uid-{name}"), generation)),
        spec: Some(proto::TenantSpec {
            display_name: format!("Tenant {name}"),
            deletion_policy: policy.into(),
            search_mode: proto::SearchMode::Blind.into(),
        }),
    }
}

fn inbox_req(
    name: &str,
    tenant: &str,
    generation: i64,
    visibility: proto::Visibility,
) -> proto::UpsertInboxRequest {
    proto::UpsertInboxRequest {
        meta: Some(meta("acme-ns", name, &format!("uid-{name}"), generation)),
        spec: Some(proto::InboxSpec {
            tenant: tenant.into(),
            gmail_address: format!("{name}@acme.example"),
            visibility: visibility.into(),
            team: if visibility == proto::Visibility::Team {
                "tier-1".into()
            } else {
                String::new()
            },
            assignment_limits_visibility: false,
            pubsub_topic: TOPIC.into(),
            push_audience: "https://ingest.acme.example/v1/push/gmail".into(),
        }),
    }
}

const TOPIC: &str = "projects/acme-mail/topics/gmail-push";

fn grant_req(name: &str, inbox: &str, agent: &str, generation: i64) -> proto::UpsertGrantRequest {
    proto::UpsertGrantRequest {
        meta: Some(meta("acme-ns", name, &format!("uid-{name}"), generation)),
        spec: Some(proto::GrantSpec {
            inbox: inbox.into(),
            subject_kind: proto::SubjectKind::Agent.into(),
            subject_name: agent.into(),
            role: proto::Role::Reply.into(),
            expiration_time: Some(4_102_444_800_000),
        }),
    }
}

fn tid(s: &str) -> TenantId {
    TenantId::new(s).unwrap()
}

fn outcome(r: Result<helpr_operator::control::ApplyResult, ControlError>) -> proto::Outcome {
    r.unwrap_or_else(|e| panic!("control call failed: {e}"))
        .outcome
}

/// Waits for the feed to deliver a change of `kind` (other changes may come first).
async fn expect_change(
    feed: &mut helpr_dataplane::store::ChangeFeed,
    kind: ControlKind,
    deleted: bool,
) {
    let wait = async {
        loop {
            match feed.next().await.expect("feed ended") {
                ChangeEvent::Change(c) if c.kind == kind && c.deleted == deleted => return c,
                _ => {}
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), wait)
        .await
        .expect("no notification within 10 s");
}

// --- scenarios ----------------------------------------------------------------------------

/// Tenant → inbox → grant, idempotency, stale generations, revocation seen by another
/// store handle through the change feed.
async fn apply_revoke_and_notify(h: &mut Harness) {
    use proto::Outcome::{AlreadyCurrent, Applied, Stale};
    let acme = tid("acme");

    // Tenant: created with its keys.
    let req = tenant_req("acme", 1, proto::DeletionPolicy::Retain);
    assert_eq!(outcome(h.client.upsert_tenant(req.clone()).await), Applied);
    let tenant = h
        .store
        .get_tenant(&acme)
        .await
        .unwrap()
        .expect("tenant exists");
    assert_eq!(tenant.display_name, "Tenant acme");
    assert!(
        h.store.current_key_version(&acme).await.unwrap().is_some(),
        "tenant has a dek"
    );
    // Same generation again: nothing to do.
    assert_eq!(outcome(h.client.upsert_tenant(req).await), AlreadyCurrent);
    assert_eq!(h.store.list_key_versions(&acme).await.unwrap().len(), 1);

    // Inbox and grant.
    let inbox = inbox_req("support", "acme", 3, proto::Visibility::Team);
    assert_eq!(outcome(h.client.upsert_inbox(inbox).await), Applied);
    let settings = h
        .store
        .inbox_settings("acme-ns", "support")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(settings.visibility, Visibility::Team);
    assert_eq!(settings.team.as_deref(), Some("tier-1"));
    assert_eq!(settings.generation, 3);
    let grant = grant_req("ann-support", "support", "ann", 1);
    assert_eq!(outcome(h.client.upsert_grant(grant.clone()).await), Applied);
    let grants = h
        .store
        .list_grants_for_inbox(&settings.inbox_id)
        .await
        .unwrap();
    assert_eq!(grants.len(), 1);
    assert_eq!(grants[0].subject_kind, SubjectKind::Agent);
    assert_eq!(grants[0].role, GrantRole::Reply);
    assert_eq!(
        h.other
            .list_grants_for_subject(&acme, SubjectKind::Agent, "ann")
            .await
            .unwrap()
            .len(),
        1,
        "another process reads the grant"
    );

    // A stale inbox generation writes nothing.
    let stale = h
        .client
        .upsert_inbox(inbox_req("support", "acme", 2, proto::Visibility::Org))
        .await
        .unwrap();
    assert_eq!(stale.outcome, Stale);
    assert_eq!(stale.applied_generation, 3);
    let after = h
        .store
        .inbox_settings("acme-ns", "support")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(after, settings, "a stale generation changed nothing");

    // Revocation: gone, and the other handle is told.
    let mut feed = h.other.subscribe_changes().await.unwrap();
    let applied = h
        .client
        .delete_grant(meta("acme-ns", "ann-support", "uid-ann-support", 2))
        .await
        .unwrap();
    assert_eq!(applied.outcome, Applied);
    expect_change(&mut feed, ControlKind::Grant, true).await;
    assert!(
        h.store
            .list_grants_for_inbox(&settings.inbox_id)
            .await
            .unwrap()
            .is_empty()
    );
    // The deleted grant is not resurrected by a late upsert of the same object.
    assert_eq!(outcome(h.client.upsert_grant(grant).await), Stale);
    assert!(
        h.other
            .list_grants_for_inbox(&settings.inbox_id)
            .await
            .unwrap()
            .is_empty()
    );

    let status = h.client.tenant_status("acme").await.unwrap();
    assert_eq!(status.state(), proto::TenantState::Active);
    assert_eq!(status.applied_generation, 1);
    assert_eq!(status.inbox_count, 1);
    assert_eq!(status.grant_count, 0);
    assert_eq!(status.keys.unwrap().versions, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_applies_revokes_and_notifies() {
    let mut h = Harness::postgres().await;
    apply_revoke_and_notify(&mut h).await;
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_applies_revokes_and_notifies() {
    let mut h = Harness::sqlite().await;
    apply_revoke_and_notify(&mut h).await;
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn missing_or_wrong_token_is_unauthenticated_and_writes_nothing() {
    let h = Harness::postgres().await;
    let mut wrong = ControlClient::connect(&h.url, "not-the-token").unwrap();
    let e = wrong
        .upsert_tenant(tenant_req("acme", 1, proto::DeletionPolicy::Retain))
        .await
        .expect_err("wrong token");
    assert_eq!(e.code(), Some(Code::Unauthenticated), "{e}");
    assert!(!e.is_retryable());
    assert!(!e.to_string().contains(&h.token), "{e}");

    // No authorization header at all.
    let channel = tonic::transport::Endpoint::from_shared(h.url.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut raw = proto::control_client::ControlClient::new(channel);
    let status = raw
        .upsert_tenant(tenant_req("acme", 1, proto::DeletionPolicy::Retain))
        .await
        .expect_err("no token");
    assert_eq!(status.code(), Code::Unauthenticated);
    let status = raw
        .get_tenant_status(proto::GetTenantStatusRequest {
            tenant: "acme".into(),
        })
        .await
        .expect_err("no token");
    assert_eq!(status.code(), Code::Unauthenticated);

    assert!(h.store.get_tenant(&tid("acme")).await.unwrap().is_none());
    assert!(h.store.list_tenants().await.unwrap().is_empty());
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unknown_references_and_bad_requests_are_clear_errors() {
    let mut h = Harness::postgres().await;
    let e = h
        .client
        .upsert_inbox(inbox_req("support", "ghost", 1, proto::Visibility::Org))
        .await
        .expect_err("unknown tenant");
    assert_eq!(e.code(), Some(Code::NotFound), "{e}");
    assert!(e.to_string().contains("tenant ghost"), "{e}");
    assert!(
        !e.to_string().contains("@acme.example"),
        "no address in errors: {e}"
    );

    outcome(
        h.client
            .upsert_tenant(tenant_req("acme", 1, proto::DeletionPolicy::Retain))
            .await,
    );
    let e = h
        .client
        .upsert_grant(grant_req("g", "no-such-inbox", "ann", 1))
        .await
        .expect_err("unknown inbox");
    assert_eq!(e.code(), Some(Code::NotFound), "{e}");
    assert!(e.to_string().contains("acme-ns/no-such-inbox"), "{e}");

    let e = h
        .client
        .upsert_grant(grant_req("g", "support", "ann", 0))
        .await
        .expect_err("generation 0");
    assert_eq!(e.code(), Some(Code::InvalidArgument), "{e}");
    let mut bad = inbox_req("support", "acme", 1, proto::Visibility::Org);
    bad.spec.as_mut().unwrap().gmail_address = "not an address".into();
    let e = h.client.upsert_inbox(bad).await.expect_err("bad address");
    assert_eq!(e.code(), Some(Code::InvalidArgument), "{e}");
    let mut bad = tenant_req("acme", 2, proto::DeletionPolicy::Retain);
    bad.spec.as_mut().unwrap().deletion_policy = proto::DeletionPolicy::Unspecified.into();
    let e = h.client.upsert_tenant(bad).await.expect_err("no policy");
    assert_eq!(e.code(), Some(Code::InvalidArgument), "{e}");

    // A live object of the same name with another uid is refused.
    let mut other = tenant_req("acme", 5, proto::DeletionPolicy::Retain);
    other.meta.as_mut().unwrap().uid = "another-uid".into();
    let e = h
        .client
        .upsert_tenant(other)
        .await
        .expect_err("uid mismatch");
    assert_eq!(e.code(), Some(Code::FailedPrecondition), "{e}");

    // Nothing of the refused calls was written.
    assert!(h.store.list_inboxes(&tid("acme")).await.unwrap().is_empty());
    assert!(
        h.store
            .list_grants_for_tenant(&tid("acme"))
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        h.store
            .tenant_settings(&tid("acme"))
            .await
            .unwrap()
            .unwrap()
            .generation,
        1
    );
    h.shutdown().await;
}

/// RETAIN keeps the data and disconnects; SHRED destroys the key (a sealed value can no
/// longer be opened), survives a search outage with UNAVAILABLE, and is idempotent.
async fn delete_tenants(h: &mut Harness) {
    use proto::Outcome::{AlreadyCurrent, Applied};
    // Retain.
    outcome(
        h.client
            .upsert_tenant(tenant_req("keep", 1, proto::DeletionPolicy::Retain))
            .await,
    );
    outcome(
        h.client
            .upsert_inbox(inbox_req("keep-inbox", "keep", 1, proto::Visibility::Org))
            .await,
    );
    let deleted = h
        .client
        .delete_tenant(meta("acme-ns", "keep", "uid-keep", 2))
        .await;
    assert_eq!(outcome(deleted), Applied);
    let keep = tid("keep");
    assert!(
        h.store.get_tenant(&keep).await.unwrap().is_some(),
        "retained"
    );
    let inboxes = h.store.list_inboxes(&keep).await.unwrap();
    assert_eq!(inboxes.len(), 1);
    assert_eq!(inboxes[0].status, "disconnected");
    assert_eq!(
        h.client.tenant_status("keep").await.unwrap().state(),
        proto::TenantState::Stopped
    );
    let e = h
        .client
        .upsert_inbox(inbox_req("late-inbox", "keep", 1, proto::Visibility::Org))
        .await
        .expect_err("stopped tenant");
    assert_eq!(e.code(), Some(Code::FailedPrecondition), "{e}");

    // Shred.
    outcome(
        h.client
            .upsert_tenant(tenant_req("gone", 1, proto::DeletionPolicy::Shred))
            .await,
    );
    let gone = tid("gone");
    let sealed = h
        .keyring
        .seal(
            &SealContext::new("gone", "rec-1", "test.field"),
            b"secret words",
        )
        .await
        .unwrap();
    let key = h.store.current_key_version(&gone).await.unwrap().unwrap();
    let delete = meta("acme-ns", "gone", "uid-gone", 2);

    h.search.down.store(true, Ordering::SeqCst);
    let e = h
        .client
        .delete_tenant(delete.clone())
        .await
        .expect_err("search down");
    assert_eq!(e.code(), Some(Code::Unavailable), "{e}");
    assert!(e.is_retryable());
    assert!(
        h.store.get_tenant(&gone).await.unwrap().is_some(),
        "nothing recorded yet"
    );
    h.search.down.store(false, Ordering::SeqCst);

    assert_eq!(
        outcome(h.client.delete_tenant(delete.clone()).await),
        Applied
    );
    assert_eq!(
        outcome(h.client.delete_tenant(delete).await),
        AlreadyCurrent
    );
    assert!(h.store.get_tenant(&gone).await.unwrap().is_none());
    assert!(h.store.list_key_versions(&gone).await.unwrap().is_empty());
    assert_eq!(
        h.client.tenant_status("gone").await.unwrap().state(),
        proto::TenantState::Absent
    );
    // The wrapped DEK no longer unwraps, in a fresh process's KMS: the sealed value is lost.
    let kms = LocalKms::open(&h.kms_dir).unwrap();
    let key_ref = KeyRef::new(key.kms_key_ref.clone());
    let unwrapped = kms
        .unwrap_dek(
            DekContext {
                tenant: &gone,
                key: &key_ref,
                version: key.version,
            },
            &WrappedDek::new(key.wrapped_dek.clone()),
        )
        .await;
    assert!(
        matches!(unwrapped, Err(KmsError::KeyNotFound { .. })),
        "{:?}",
        unwrapped.err()
    );
    let fresh = Keyring::new(Arc::new(kms), h.store.clone(), KeyringConfig::default());
    assert!(
        fresh
            .open(&SealContext::new("gone", "rec-1", "test.field"), &sealed)
            .await
            .is_err()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_tenant_deletion_retains_or_shreds() {
    let mut h = Harness::postgres().await;
    delete_tenants(&mut h).await;
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_tenant_deletion_retains_or_shreds() {
    let mut h = Harness::sqlite().await;
    delete_tenants(&mut h).await;
    h.shutdown().await;
}

/// DeleteInbox cascades before answering: the inbox's mail is soft-deleted and gone from
/// search; a search outage answers UNAVAILABLE and the retry completes; mail stored into the
/// deleted inbox afterwards arrives soft-deleted.
async fn delete_inbox_cascades(h: &mut Harness) {
    use helpr_dataplane::search::Mode;
    use helpr_dataplane::search::service::SearchService;
    use helpr_dataplane::tools::{self, RawMessage};
    use std::collections::BTreeSet;
    let acme = tid("acme");
    let req = tenant_req("acme", 1, proto::DeletionPolicy::Retain);
    assert_eq!(
        outcome(h.client.upsert_tenant(req).await),
        proto::Outcome::Applied
    );
    let inbox = inbox_req("support", "acme", 1, proto::Visibility::Org);
    assert_eq!(
        outcome(h.client.upsert_inbox(inbox).await),
        proto::Outcome::Applied
    );
    let settings = h
        .store
        .inbox_settings("acme-ns", "support")
        .await
        .unwrap()
        .unwrap();
    let record = h
        .store
        .get_inbox(&settings.inbox_id)
        .await
        .unwrap()
        .unwrap();
    let svc = SearchService::new(h.keyring.clone(), h.search.clone(), Mode::Blind);
    let mail = |subject: &str| RawMessage {
        origin: subject.into(),
        bytes: format!(
            "From: a@client.example\r\nTo: support@acme.example\r\nSubject: {subject}\r\n\
             Date: Mon, 05 Oct 2026 10:00:00 +0000\r\nMessage-ID: <{}@x>\r\n\r\nrefund please\r\n",
            uuid::Uuid::new_v4()
        )
        .into_bytes(),
    };
    tools::import(
        &svc,
        &h.keyring,
        &record,
        &[mail("Refund one"), mail("Refund two")],
        |_, _| {},
    )
    .await
    .unwrap();
    let inboxes: BTreeSet<String> = [settings.inbox_id.clone()].into();
    async fn count(svc: &SearchService, t: &TenantId, inboxes: &BTreeSet<String>) -> usize {
        svc.search(t, inboxes, "refund", 10, None)
            .await
            .unwrap()
            .hits
            .len()
    }
    assert_eq!(count(&svc, &acme, &inboxes).await, 2);

    // The search tier is down: UNAVAILABLE, the Inbox stays recorded, the mail is already
    // hidden (soft-deleted in the store).
    h.search.deletes_down.store(true, Ordering::SeqCst);
    let e = h
        .client
        .delete_inbox(meta("acme-ns", "support", "uid-support", 2))
        .await
        .expect_err("search tier down");
    assert_eq!(e.code(), Some(Code::Unavailable), "{e}");
    assert!(
        h.store
            .inbox_settings("acme-ns", "support")
            .await
            .unwrap()
            .is_some()
    );
    assert_eq!(count(&svc, &acme, &inboxes).await, 0);
    assert_eq!(h.search.stats(&acme).await.unwrap().documents, 2);

    // The retry completes the cascade: removed from the index, then recorded.
    h.search.deletes_down.store(false, Ordering::SeqCst);
    let done = h
        .client
        .delete_inbox(meta("acme-ns", "support", "uid-support", 2))
        .await
        .unwrap();
    assert_eq!(done.outcome, proto::Outcome::Applied);
    assert_eq!(h.search.stats(&acme).await.unwrap().documents, 0);
    assert!(
        h.store
            .inbox_settings("acme-ns", "support")
            .await
            .unwrap()
            .is_none()
    );
    // The first attempt's markers stay until the indexer confirms (nothing left to index).
    assert_eq!(h.store.index_progress(&acme).await.unwrap().0, 2);
    assert_eq!(
        svc.index_all_pending(&acme, 50, |_, _| {}).await.unwrap(),
        2
    );
    assert_eq!(h.store.index_progress(&acme).await.unwrap().0, 0);
    assert_eq!(h.search.stats(&acme).await.unwrap().documents, 0);
    let soft = h
        .store
        .list_purge_candidates(&acme, i64::MAX, None, 10)
        .await
        .unwrap();
    assert_eq!(soft.len(), 2);
    assert!(soft.iter().all(|c| c.inbox_id == settings.inbox_id));
    let audit = h.store.list_audit_events(&acme, 50).await.unwrap();
    assert!(audit.iter().any(|e| e.actor == "operator"
        && e.action == "inbox.soft_delete"
        && e.target_id == settings.inbox_id));

    // A sync worker storing into the deleted inbox afterwards: soft-deleted on arrival.
    tools::import(
        &svc,
        &h.keyring,
        &record,
        &[mail("Refund three")],
        |_, _| {},
    )
    .await
    .unwrap();
    assert_eq!(count(&svc, &acme, &inboxes).await, 0);
    assert_eq!(h.search.stats(&acme).await.unwrap().documents, 0);
    assert_eq!(
        h.store
            .list_purge_candidates(&acme, i64::MAX, None, 10)
            .await
            .unwrap()
            .len(),
        3
    );
    // Same generation again: nothing to do.
    let again = h
        .client
        .delete_inbox(meta("acme-ns", "support", "uid-support", 2))
        .await
        .unwrap();
    assert_eq!(again.outcome, proto::Outcome::AlreadyCurrent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_delete_inbox_cascades_into_a_soft_delete() {
    let mut h = Harness::postgres().await;
    delete_inbox_cascades(&mut h).await;
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_delete_inbox_cascades_into_a_soft_delete() {
    let mut h = Harness::sqlite().await;
    delete_inbox_cascades(&mut h).await;
    h.shutdown().await;
}

/// GetInboxStatus follows the inbox: pending until a Google account is connected and the
/// first sync commits, connected after it (with its time), needs reconnect when Google
/// refuses the token, NOT_FOUND once the Inbox is deleted. Never the address.
async fn inbox_status_follows_sync(h: &mut Harness) {
    use helpr_dataplane::store::InboxStatus;
    use proto::ConnectionState as C;
    let acme = tid("acme");
    let req = tenant_req("acme", 1, proto::DeletionPolicy::Retain);
    assert_eq!(
        outcome(h.client.upsert_tenant(req).await),
        proto::Outcome::Applied
    );
    let e = h
        .client
        .inbox_status("acme-ns", "support")
        .await
        .expect_err("not applied yet");
    assert_eq!(e.code(), Some(Code::NotFound), "{e}");
    let inbox = inbox_req("support", "acme", 1, proto::Visibility::Org);
    assert_eq!(
        outcome(h.client.upsert_inbox(inbox).await),
        proto::Outcome::Applied
    );
    let no_address = |s: &proto::InboxStatus| {
        assert!(!s.connection_message.contains('@'), "{s:?}");
        assert!(!s.connection_message.is_empty());
    };

    // No Google account yet: pending, saying what to do.
    let s = h.client.inbox_status("acme-ns", "support").await.unwrap();
    assert_eq!(s.connection_state(), C::Pending);
    assert_eq!(s.uid, "uid-support");
    assert_eq!(s.applied_generation, 1);
    assert!(
        s.connection_message
            .contains("connect the inbox's Google account")
    );
    assert_eq!((s.last_sync_time, s.watch_expiration_time), (None, None));
    no_address(&s);

    // A refresh token, no sync yet: still pending.
    let inbox_id = h
        .store
        .inbox_settings("acme-ns", "support")
        .await
        .unwrap()
        .unwrap()
        .inbox_id;
    let ctx = SealContext::new("acme", &inbox_id, "inbox.refresh_token");
    let sealed = h.keyring.seal(&ctx, b"refresh-token").await.unwrap();
    h.store.set_refresh_token(&inbox_id, &sealed).await.unwrap();
    let s = h.client.inbox_status("acme-ns", "support").await.unwrap();
    assert_eq!(s.connection_state(), C::Pending);
    assert!(s.connection_message.contains("first sync"), "{s:?}");
    assert_eq!(s.last_sync_time, None);

    // The sync worker commits its mark: connected, synced at that moment.
    let before = helpr_dataplane::store::now_ms();
    h.store
        .store_synced_messages(&acme, &inbox_id, &[], Some(42))
        .await
        .unwrap();
    let after = helpr_dataplane::store::now_ms();
    let s = h.client.inbox_status("acme-ns", "support").await.unwrap();
    assert_eq!(s.connection_state(), C::Connected);
    let synced = s.last_sync_time.expect("last sync time");
    assert!(
        (before..=after).contains(&synced),
        "{synced} not in {before}..={after}"
    );
    assert_eq!(s.watch_expiration_time, None);
    assert!(s.connection_message.contains("registering"), "{s:?}");
    no_address(&s);

    // The sync worker registered the push watch: its expiration shows.
    h.store
        .record_inbox_watch(&inbox_id, Ok(Some((TOPIC, after + 604_800_000))))
        .await
        .unwrap();
    let s = h.client.inbox_status("acme-ns", "support").await.unwrap();
    assert_eq!(s.connection_state(), C::Connected);
    assert_eq!(s.watch_expiration_time, Some(after + 604_800_000));
    assert!(s.connection_message.contains("pushes changes"), "{s:?}");
    assert!(!s.connection_message.contains(TOPIC));

    // A topic that is no Pub/Sub topic name is refused.
    let mut bad = inbox_req("support", "acme", 2, proto::Visibility::Org);
    if let Some(spec) = bad.spec.as_mut() {
        spec.pubsub_topic = "projects/acme-mail/subscriptions/gmail-push".into();
    }
    let e = h.client.upsert_inbox(bad).await.expect_err("bad topic");
    assert_eq!(e.code(), Some(Code::InvalidArgument), "{e}");

    // A batch without a mark is no sync progress: the time stays.
    h.store
        .store_synced_messages(&acme, &inbox_id, &[], None)
        .await
        .unwrap();
    let s = h.client.inbox_status("acme-ns", "support").await.unwrap();
    assert_eq!(s.last_sync_time, Some(synced));

    // Google refused the token (the sync worker's invalid_grant path).
    h.store
        .set_inbox_status(&inbox_id, InboxStatus::NeedsReconnect)
        .await
        .unwrap();
    let s = h.client.inbox_status("acme-ns", "support").await.unwrap();
    assert_eq!(s.connection_state(), C::NeedsReconnect);
    assert!(
        s.connection_message
            .contains("reconnect the inbox's Google account"),
        "{s:?}"
    );
    assert_eq!(s.last_sync_time, Some(synced));
    no_address(&s);

    // A newer generation shows; bad names are INVALID_ARGUMENT, unknown ones NOT_FOUND.
    let inbox = inbox_req("support", "acme", 2, proto::Visibility::Org);
    assert_eq!(
        outcome(h.client.upsert_inbox(inbox).await),
        proto::Outcome::Applied
    );
    let s = h.client.inbox_status("acme-ns", "support").await.unwrap();
    assert_eq!(s.applied_generation, 2);
    for (ns, name) in [("Acme", "support"), ("acme-ns", "Support"), ("", "support")] {
        let e = h.client.inbox_status(ns, name).await.expect_err(name);
        assert_eq!(e.code(), Some(Code::InvalidArgument), "{ns}/{name}: {e}");
    }
    let e = h
        .client
        .inbox_status("other-ns", "support")
        .await
        .expect_err("other namespace");
    assert_eq!(e.code(), Some(Code::NotFound), "{e}");

    // Deleted: NOT_FOUND, although the data plane keeps the (disconnected) inbox row.
    h.client
        .delete_inbox(meta("acme-ns", "support", "uid-support", 2))
        .await
        .unwrap();
    assert_eq!(
        h.store.get_inbox(&inbox_id).await.unwrap().unwrap().status,
        "disconnected"
    );
    let e = h
        .client
        .inbox_status("acme-ns", "support")
        .await
        .expect_err("deleted");
    assert_eq!(e.code(), Some(Code::NotFound), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_inbox_status_follows_sync() {
    let mut h = Harness::postgres().await;
    inbox_status_follows_sync(&mut h).await;
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_inbox_status_follows_sync() {
    let mut h = Harness::sqlite().await;
    inbox_status_follows_sync(&mut h).await;
    h.shutdown().await;
}
