//! The sync worker of one tenant (`helpr-dataplane sync --tenant`).
//!
//! It claims the tenant's sync jobs, lists Gmail history from each inbox's high-water mark,
//! fetches every new message (raw), runs the pipeline, seals the result and stores it
//! together with the advanced mark, in batches, one transaction per batch. A periodic poll
//! covers notifications Gmail dropped. Messages are idempotent by (inbox, Gmail id), so a
//! worker killed at any point resumes with nothing lost and nothing stored twice.
//!
//! The worker also keeps each inbox's Gmail push watch (users.watch) on the Pub/Sub topic
//! its Inbox object names: registered when missing or on another topic, renewed a day
//! before it expires (Gmail lets a watch lapse after about 7 days), stopped when the topic
//! is removed. A failure is recorded as a fixed word for the Inbox's status and retried
//! later; polling keeps mail flowing meanwhile.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Deserialize;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use zeroize::Zeroizing;

use super::gmail::{AccessToken, AddedMessage, GmailClient, GmailError, Watch};
use super::oauth::{OAuthError, TokenSource};
use super::pipeline::{self, PipelinedWriter, RawInput};
use crate::crypto::SealContext;
use crate::ids::TenantId;
use crate::keyring::{Keyring, KeyringError};
use crate::metrics::Counter;
use crate::store::{
    InboxRecord, InboxStatus, InboxWatch, InsertOutcome, REFRESH_TOKEN_FIELD, Store, StoreError,
    SyncJob, UnixMillis, WatchError, now_ms,
};

static STORED: Counter = Counter::new(
    "helpr_sync_messages_total",
    "outcome=\"stored\"",
    "Messages seen by sync workers, by outcome",
);
static ALREADY_STORED: Counter = Counter::new(
    "helpr_sync_messages_total",
    "outcome=\"already_stored\"",
    "Messages seen by sync workers, by outcome",
);
static FILTERED: Counter = Counter::new(
    "helpr_sync_messages_total",
    "outcome=\"draft_or_sent\"",
    "Messages seen by sync workers, by outcome",
);
static UNPARSEABLE: Counter = Counter::new(
    "helpr_sync_messages_total",
    "outcome=\"unparseable\"",
    "Messages seen by sync workers, by outcome",
);
static WATCHES_REGISTERED: Counter = Counter::new(
    "helpr_sync_watch_calls_total",
    "outcome=\"registered\"",
    "Gmail push watch registrations, renewals and stops by sync workers, by outcome",
);
static WATCHES_STOPPED: Counter = Counter::new(
    "helpr_sync_watch_calls_total",
    "outcome=\"stopped\"",
    "Gmail push watch registrations, renewals and stops by sync workers, by outcome",
);
static WATCHES_FAILED: Counter = Counter::new(
    "helpr_sync_watch_calls_total",
    "outcome=\"failed\"",
    "Gmail push watch registrations, renewals and stops by sync workers, by outcome",
);
static STALE_RECOVERIES: Counter = Counter::new(
    "helpr_sync_stale_history_recoveries_total",
    "",
    "History ids too old for Gmail: recovered from the connection time or last message",
);

/// Settings of the sync worker (section `sync`).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SyncConfig {
    /// How often every connected inbox is synced even without a notification, seconds.
    pub poll_interval_secs: u64,
    /// Jobs claimed at a time.
    pub claim_limit: u32,
    /// A claimed job not finished after this long is claimed again (worker died), seconds.
    pub lease_secs: u64,
    /// Messages stored per transaction.
    pub store_batch: usize,
    /// First retry delay of a failed job, seconds (doubled per attempt, with jitter).
    pub retry_initial_secs: u64,
    /// Longest retry delay, seconds.
    pub retry_max_secs: u64,
    /// Pause when there is nothing to do, milliseconds.
    pub idle_wait_ms: u64,
    /// Inboxes synced at the same time.
    pub concurrency: usize,
    /// How often the inboxes' push watches are checked, seconds.
    pub watch_check_secs: u64,
    /// A watch is renewed when it expires within this many seconds (Google suggests daily
    /// renewal; a watch lasts about 7 days).
    pub watch_renew_before_secs: u64,
    /// A failed watch registration is tried again after this many seconds.
    pub watch_retry_secs: u64,
}

impl Default for SyncConfig {
    fn default() -> Self {
        Self {
            poll_interval_secs: 300,
            claim_limit: 32,
            lease_secs: 300,
            store_batch: 50,
            retry_initial_secs: 5,
            retry_max_secs: 600,
            idle_wait_ms: 1000,
            concurrency: 4,
            watch_check_secs: 60,
            watch_renew_before_secs: 86_400,
            watch_retry_secs: 900,
        }
    }
}

/// Why an inbox could not be synced. Never carries tokens, addresses or content.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("inbox needs reconnecting (google refused its refresh token)")]
    NeedsReconnect,
    #[error("inbox is not connected")]
    NotConnected,
    #[error("inbox has no refresh token")]
    NoRefreshToken,
    #[error("inbox belongs to another tenant")]
    WrongTenant,
    #[error(transparent)]
    Gmail(#[from] GmailError),
    #[error(transparent)]
    OAuth(#[from] OAuthError),
    #[error(transparent)]
    Keyring(#[from] KeyringError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl SyncError {
    /// A fixed word for the job's `last_error_kind` and for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            SyncError::NeedsReconnect => "needs_reconnect",
            SyncError::NotConnected => "not_connected",
            SyncError::NoRefreshToken => "no_refresh_token",
            SyncError::WrongTenant => "wrong_tenant",
            SyncError::Gmail(_) => "gmail",
            SyncError::OAuth(_) => "oauth",
            SyncError::Keyring(KeyringError::Kms(_)) => "kms",
            SyncError::Keyring(KeyringError::Store(_)) | SyncError::Store(_) => "database",
            SyncError::Keyring(_) => "keyring",
        }
    }

    /// Errors that retrying cannot fix without a person.
    pub fn is_permanent(&self) -> bool {
        matches!(
            self,
            SyncError::NeedsReconnect
                | SyncError::NotConnected
                | SyncError::NoRefreshToken
                | SyncError::WrongTenant
        )
    }
}

fn tally(report: &mut InboxSyncReport, outcomes: Vec<InsertOutcome>) {
    for outcome in outcomes {
        match outcome {
            InsertOutcome::Inserted { .. } => {
                report.stored += 1;
                STORED.inc();
            }
            InsertOutcome::AlreadyStored { .. } => {
                report.already_stored += 1;
                ALREADY_STORED.inc();
            }
        }
    }
}

/// What one inbox sync did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct InboxSyncReport {
    pub stored: usize,
    pub already_stored: usize,
    pub drafts_or_sent: usize,
    pub unparseable: usize,
    pub gone: usize,
    /// The history id was too old: messages were recovered by date instead.
    pub recovered_stale_history: bool,
}

/// What an inbox's push watch needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatchAction<'a> {
    /// Register (or renew) a watch on this topic.
    Register(&'a str),
    /// Stop the watch: the Inbox no longer names a topic (or was disconnected).
    Stop,
    /// Forget a watch nobody wants that has expired already: nothing to ask Gmail.
    Forget,
}

/// Decides what a watch needs at `now`: a watch on the desired topic that expires more
/// than `renew_before_ms` from now needs nothing; a missing, expiring or other-topic watch
/// is registered; a watch nobody wants any more is stopped, or only forgotten once it has
/// expired.
pub fn watch_action(
    w: &InboxWatch,
    now: UnixMillis,
    renew_before_ms: i64,
) -> Option<WatchAction<'_>> {
    match (&w.desired_topic, &w.topic) {
        (Some(want), have) => {
            let same_topic = have.as_deref() == Some(want.as_str());
            let fresh = w
                .expires_at_ms
                .is_some_and(|e| e.saturating_sub(now) > renew_before_ms);
            (!(same_topic && fresh)).then_some(WatchAction::Register(want))
        }
        (None, Some(_)) if w.expires_at_ms.is_some_and(|e| e <= now) => Some(WatchAction::Forget),
        (None, Some(_)) => Some(WatchAction::Stop),
        (None, None) => None,
    }
}

/// The fixed word recorded for a failed watch call.
fn watch_error(e: &GmailError) -> WatchError {
    match e {
        GmailError::Forbidden => WatchError::Forbidden,
        GmailError::MessageGone | GmailError::StaleHistory => WatchError::NotFound,
        GmailError::Unavailable(_) => WatchError::Unavailable,
        GmailError::Unauthorized | GmailError::Protocol(_) => WatchError::Rejected,
    }
}

struct CachedToken {
    token: AccessToken,
    valid_until: Instant,
}

/// The sync worker of one tenant.
pub struct SyncWorker {
    tenant: TenantId,
    store: Arc<dyn Store>,
    keyring: Arc<Keyring>,
    gmail: GmailClient,
    oauth: TokenSource,
    cfg: SyncConfig,
    tokens: Mutex<HashMap<String, CachedToken>>,
    last_synced: Mutex<HashMap<String, Instant>>,
    /// Inboxes whose last watch call failed, and when to try again.
    watch_retry_at: Mutex<HashMap<String, Instant>>,
    watches_checked: Mutex<Option<Instant>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl SyncWorker {
    pub fn new(
        tenant: TenantId,
        store: Arc<dyn Store>,
        keyring: Arc<Keyring>,
        gmail: GmailClient,
        oauth: TokenSource,
        cfg: SyncConfig,
    ) -> Self {
        Self {
            tenant,
            store,
            keyring,
            gmail,
            oauth,
            cfg,
            tokens: Mutex::new(HashMap::new()),
            last_synced: Mutex::new(HashMap::new()),
            watch_retry_at: Mutex::new(HashMap::new()),
            watches_checked: Mutex::new(None),
        }
    }

    /// Runs until `shutdown` turns true: claims jobs, syncs, polls, waits.
    pub async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        tracing::info!(tenant = %self.tenant, "sync worker started");
        while !*shutdown.borrow() {
            let worked = match self.run_once().await {
                Ok(n) => n,
                Err(e) => {
                    tracing::warn!(tenant = %self.tenant, error = %e, "claiming sync jobs failed");
                    0
                }
            };
            let polled = self.poll_due().await;
            let watch_due = lock(&self.watches_checked).is_none_or(|t| {
                t.elapsed() >= Duration::from_secs(self.cfg.watch_check_secs.max(1))
            });
            if watch_due {
                *lock(&self.watches_checked) = Some(Instant::now());
                self.maintain_watches().await;
            }
            if worked + polled == 0 {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(self.cfg.idle_wait_ms)) => {}
                    _ = shutdown.changed() => {}
                }
            }
        }
        tracing::info!(tenant = %self.tenant, "sync worker stopped");
    }

    /// Claims due jobs and syncs their inboxes (each inbox once, several at a time).
    /// Returns the number of inboxes synced.
    pub async fn run_once(self: &Arc<Self>) -> Result<usize, StoreError> {
        let now = now_ms();
        let lease_ms = i64::try_from(self.cfg.lease_secs.saturating_mul(1000)).unwrap_or(i64::MAX);
        let jobs = self
            .store
            .claim_sync_jobs(&self.tenant, self.cfg.claim_limit, now, lease_ms)
            .await?;
        let mut by_inbox: BTreeMap<String, Vec<SyncJob>> = BTreeMap::new();
        for job in jobs {
            by_inbox.entry(job.inbox_id.clone()).or_default().push(job);
        }
        let inboxes = by_inbox.len();
        let limiter = Arc::new(Semaphore::new(self.cfg.concurrency.max(1)));
        let mut set = JoinSet::new();
        for (inbox_id, jobs) in by_inbox {
            let me = self.clone();
            let limiter = limiter.clone();
            set.spawn(async move {
                let _permit = limiter.acquire_owned().await;
                let result = me.sync_inbox(&inbox_id).await;
                me.finish_jobs(&inbox_id, &jobs, &result).await;
            });
        }
        while set.join_next().await.is_some() {}
        Ok(inboxes)
    }

    /// Syncs every connected inbox not synced within the poll interval. Returns how many.
    pub async fn poll_due(self: &Arc<Self>) -> usize {
        let inboxes = match self.store.list_inboxes(&self.tenant).await {
            Ok(i) => i,
            Err(e) => {
                tracing::warn!(tenant = %self.tenant, error = %e, "listing inboxes for the poll failed");
                return 0;
            }
        };
        let interval = Duration::from_secs(self.cfg.poll_interval_secs);
        let due: Vec<String> = {
            let last = lock(&self.last_synced);
            inboxes
                .into_iter()
                .filter(|i| i.status == InboxStatus::Connected.as_str())
                .filter(|i| last.get(&i.id).is_none_or(|t| t.elapsed() >= interval))
                .map(|i| i.id)
                .collect()
        };
        let limiter = Arc::new(Semaphore::new(self.cfg.concurrency.max(1)));
        let mut set = JoinSet::new();
        for inbox_id in due.clone() {
            let me = self.clone();
            let limiter = limiter.clone();
            set.spawn(async move {
                let _permit = limiter.acquire_owned().await;
                if let Err(e) = me.sync_inbox(&inbox_id).await {
                    tracing::warn!(tenant = %me.tenant, inbox = %inbox_id, kind = e.kind(), error = %e, "periodic sync failed");
                }
            });
        }
        while set.join_next().await.is_some() {}
        due.len()
    }

    /// Registers, renews or stops the push watches that need it (see [`watch_action`]),
    /// skipping inboxes whose last attempt failed less than `watch_retry_secs` ago.
    /// Returns how many watch calls succeeded.
    pub async fn maintain_watches(self: &Arc<Self>) -> usize {
        let watches = match self.store.inbox_watches(&self.tenant).await {
            Ok(w) => w,
            Err(e) => {
                tracing::warn!(tenant = %self.tenant, error = %e, "listing push watches failed");
                return 0;
            }
        };
        let renew_before = i64::try_from(self.cfg.watch_renew_before_secs.saturating_mul(1000))
            .unwrap_or(i64::MAX);
        let now = now_ms();
        let due: Vec<InboxWatch> = {
            let mut retry = lock(&self.watch_retry_at);
            retry.retain(|_, at| *at > Instant::now());
            watches
                .into_iter()
                .filter(|w| watch_action(w, now, renew_before).is_some())
                .filter(|w| !retry.contains_key(&w.inbox_id))
                .collect()
        };
        let limiter = Arc::new(Semaphore::new(self.cfg.concurrency.max(1)));
        let mut set = JoinSet::new();
        for w in due {
            let me = self.clone();
            let limiter = limiter.clone();
            set.spawn(async move {
                let _permit = limiter.acquire_owned().await;
                me.keep_watch(&w, now, renew_before).await
            });
        }
        let mut done = 0;
        while let Some(joined) = set.join_next().await {
            done += usize::from(matches!(joined, Ok(true)));
        }
        done
    }

    /// Carries out the watch's action and records the outcome; true when Gmail took it.
    async fn keep_watch(&self, w: &InboxWatch, now: UnixMillis, renew_before: i64) -> bool {
        let Some(action) = watch_action(w, now, renew_before) else {
            return true;
        };
        let called = match self.watch_call(&w.inbox_id, action).await {
            // The access token expired early or was revoked: refresh once and go again.
            Err(SyncError::Gmail(GmailError::Unauthorized)) => {
                lock(&self.tokens).remove(&w.inbox_id);
                self.watch_call(&w.inbox_id, action).await
            }
            other => other,
        };
        let (recorded, ok) = match (&called, action) {
            (Ok(Some(watch)), WatchAction::Register(topic)) => {
                WATCHES_REGISTERED.inc();
                tracing::info!(tenant = %self.tenant, inbox = %w.inbox_id, expires_at_ms = watch.expiration_ms, "gmail push watch registered");
                let r = self
                    .store
                    .record_inbox_watch(&w.inbox_id, Ok(Some((topic, watch.expiration_ms))))
                    .await;
                (r, true)
            }
            (Ok(_), action) => {
                if action == WatchAction::Forget {
                    tracing::info!(tenant = %self.tenant, inbox = %w.inbox_id, "expired gmail push watch forgotten");
                } else {
                    WATCHES_STOPPED.inc();
                    tracing::info!(tenant = %self.tenant, inbox = %w.inbox_id, "gmail push watch stopped");
                }
                (
                    self.store.record_inbox_watch(&w.inbox_id, Ok(None)).await,
                    true,
                )
            }
            (Err(SyncError::Gmail(e)), _) => {
                WATCHES_FAILED.inc();
                let word = watch_error(e);
                tracing::warn!(tenant = %self.tenant, inbox = %w.inbox_id, reason = word.as_str(), error = %e, retry_in_secs = self.cfg.watch_retry_secs, "gmail push watch call failed; polling meanwhile");
                (
                    self.store.record_inbox_watch(&w.inbox_id, Err(word)).await,
                    false,
                )
            }
            (Err(e), _) => {
                // No usable access token (needs reconnecting, KMS or database trouble):
                // the sync path reports that state; the watch is tried again later.
                WATCHES_FAILED.inc();
                tracing::warn!(tenant = %self.tenant, inbox = %w.inbox_id, kind = e.kind(), error = %e, "gmail push watch not renewed");
                (Ok(()), false)
            }
        };
        if let Err(e) = &recorded {
            tracing::warn!(tenant = %self.tenant, inbox = %w.inbox_id, error = %e, "recording the push watch failed");
        }
        if !ok {
            lock(&self.watch_retry_at).insert(
                w.inbox_id.clone(),
                Instant::now() + Duration::from_secs(self.cfg.watch_retry_secs),
            );
        }
        ok && recorded.is_ok()
    }

    async fn watch_call(
        &self,
        inbox_id: &str,
        action: WatchAction<'_>,
    ) -> Result<Option<Watch>, SyncError> {
        let token = match action {
            // An expired watch needs no Gmail call, so no access token either.
            WatchAction::Forget => return Ok(None),
            WatchAction::Register(_) | WatchAction::Stop => {
                let inbox = self.tenant_inbox(inbox_id).await?;
                self.access_token(&inbox).await?
            }
        };
        if let WatchAction::Register(topic) = action {
            return Ok(Some(self.gmail.watch(&token, topic).await?));
        }
        self.gmail.stop_watch(&token).await?;
        Ok(None)
    }

    async fn finish_jobs(
        &self,
        inbox_id: &str,
        jobs: &[SyncJob],
        result: &Result<InboxSyncReport, SyncError>,
    ) {
        let ids: Vec<String> = jobs.iter().map(|j| j.id.clone()).collect();
        let done = match result {
            Ok(report) => {
                tracing::info!(
                    tenant = %self.tenant, inbox = %inbox_id, stored = report.stored,
                    already_stored = report.already_stored, drafts_or_sent = report.drafts_or_sent,
                    unparseable = report.unparseable, "inbox synced"
                );
                self.store.complete_sync_jobs(&ids).await
            }
            Err(e) if e.is_permanent() => {
                tracing::warn!(tenant = %self.tenant, inbox = %inbox_id, kind = e.kind(), error = %e, "inbox cannot be synced until reconnected");
                self.store.fail_sync_jobs(&ids, e.kind()).await
            }
            Err(e) => {
                let attempts = jobs.iter().map(|j| j.attempts).max().unwrap_or(1);
                let delay = super::gmail::backoff(
                    attempts,
                    self.cfg.retry_initial_secs.saturating_mul(1000),
                    self.cfg.retry_max_secs.saturating_mul(1000),
                )
                .max(Duration::from_millis(
                    self.cfg.retry_initial_secs.saturating_mul(500),
                ));
                let at =
                    now_ms().saturating_add(i64::try_from(delay.as_millis()).unwrap_or(i64::MAX));
                tracing::warn!(tenant = %self.tenant, inbox = %inbox_id, kind = e.kind(), error = %e, retry_in_ms = delay.as_millis() as u64, "inbox sync failed; will retry");
                self.store.retry_sync_jobs(&ids, at, e.kind()).await
            }
        };
        if let Err(e) = done {
            // The lease expires and another claim retries the jobs.
            tracing::warn!(tenant = %self.tenant, inbox = %inbox_id, error = %e, "recording the job outcome failed");
        }
    }

    /// Brings one inbox up to date with Gmail.
    pub async fn sync_inbox(&self, inbox_id: &str) -> Result<InboxSyncReport, SyncError> {
        lock(&self.last_synced).insert(inbox_id.to_string(), Instant::now());
        match self.sync_inbox_once(inbox_id).await {
            // The access token expired early or was revoked: refresh once and go again.
            Err(SyncError::Gmail(GmailError::Unauthorized)) => {
                lock(&self.tokens).remove(inbox_id);
                self.sync_inbox_once(inbox_id).await
            }
            other => other,
        }
    }

    /// The inbox, which must belong to this worker's tenant.
    async fn tenant_inbox(&self, inbox_id: &str) -> Result<InboxRecord, SyncError> {
        let inbox = self
            .store
            .get_inbox(inbox_id)
            .await?
            .ok_or(SyncError::NotConnected)?;
        if inbox.tenant_id != self.tenant {
            return Err(SyncError::WrongTenant);
        }
        Ok(inbox)
    }

    async fn sync_inbox_once(&self, inbox_id: &str) -> Result<InboxSyncReport, SyncError> {
        let inbox = self.tenant_inbox(inbox_id).await?;
        match inbox.status.as_str() {
            "connected" => {}
            "needs_reconnect" => return Err(SyncError::NeedsReconnect),
            _ => return Err(SyncError::NotConnected),
        }
        let token = self.access_token(&inbox).await?;
        let history = match inbox.history_id {
            Some(start) => self.gmail.list_history(&token, start).await,
            None => Err(GmailError::StaleHistory),
        };
        match history {
            Ok(changes) => {
                self.store_new(&inbox, &token, changes.added, changes.history_id, None)
                    .await
            }
            Err(GmailError::StaleHistory) => {
                STALE_RECOVERIES.inc();
                // Only mail newer than the connection or the newest stored message: the
                // product never imports older mailbox history.
                let since = self
                    .store
                    .latest_message_date(&inbox.id)
                    .await?
                    .unwrap_or(0)
                    .max(inbox.connected_at_ms);
                // Read the mark first: anything that arrives meanwhile comes through history.
                let mark = self.gmail.current_history_id(&token).await?;
                let found = self.gmail.list_messages_after(&token, since).await?;
                let mut report = self
                    .store_new(&inbox, &token, found, mark, Some(since))
                    .await?;
                report.recovered_stale_history = true;
                Ok(report)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Fetches, processes, seals and stores `added` (oldest history first), advancing the
    /// mark batch by batch and to `final_mark` with the last batch.
    async fn store_new(
        &self,
        inbox: &InboxRecord,
        token: &AccessToken,
        added: Vec<AddedMessage>,
        final_mark: u64,
        not_before_ms: Option<i64>,
    ) -> Result<InboxSyncReport, SyncError> {
        let mut report = InboxSyncReport::default();
        let mut seen = HashSet::new();
        let mut candidates = Vec::new();
        for m in added {
            if m.is_draft_or_sent() {
                report.drafts_or_sent += 1;
                FILTERED.inc();
            } else if seen.insert(m.id.clone()) {
                candidates.push(m);
            }
        }
        let ids: Vec<String> = candidates.iter().map(|m| m.id.clone()).collect();
        let stored: HashSet<String> = self
            .store
            .stored_gmail_ids(&inbox.id, &ids)
            .await?
            .into_iter()
            .collect();
        report.already_stored += stored.len();
        ALREADY_STORED.add(stored.len() as u64);
        candidates.retain(|m| !stored.contains(&m.id));
        candidates.sort_by_key(|m| m.history_id);

        let batch_size = self.cfg.store_batch.max(1);
        let chunks: Vec<&[AddedMessage]> = candidates.chunks(batch_size).collect();
        if chunks.is_empty() {
            self.store
                .store_synced_messages(&self.tenant, &inbox.id, &[], Some(final_mark))
                .await?;
            return Ok(report);
        }
        let mut writer =
            PipelinedWriter::new(self.store.clone(), self.tenant.clone(), inbox.id.clone());
        for (i, chunk) in chunks.iter().enumerate() {
            // Fetch the batch concurrently (I/O), then process and seal it on the blocking
            // pool while the previous batch is being committed.
            let mut fetches = JoinSet::new();
            for (index, m) in chunk.iter().enumerate() {
                let gmail = self.gmail.clone();
                let token = token.clone();
                let id = m.id.clone();
                fetches.spawn(async move { (index, gmail.get_raw(&token, &id).await) });
            }
            let mut fetched = Vec::with_capacity(chunk.len());
            while let Some(joined) = fetches.join_next().await {
                let (index, result) = joined.map_err(|_| {
                    SyncError::Gmail(GmailError::Protocol("fetch task failed".into()))
                })?;
                match result {
                    Ok(raw) => fetched.push((index, raw)),
                    Err(GmailError::MessageGone) => report.gone += 1,
                    Err(e) => return Err(e.into()),
                }
            }
            fetched.sort_by_key(|(index, _)| *index);
            let mut inputs = Vec::with_capacity(fetched.len());
            for (index, raw) in fetched {
                if raw.is_draft_or_sent() {
                    report.drafts_or_sent += 1;
                    FILTERED.inc();
                    continue;
                }
                if not_before_ms.is_some_and(|t| raw.internal_date_ms < t) {
                    continue;
                }
                let listed = &chunk[index];
                inputs.push(RawInput {
                    gmail_thread_id: if raw.thread_id.is_empty() {
                        listed.thread_id.clone()
                    } else {
                        raw.thread_id.clone()
                    },
                    gmail_history_id: raw
                        .history_id
                        .or(Some(listed.history_id).filter(|h| *h > 0)),
                    gmail_message_id: raw.id,
                    internal_date_ms: raw.internal_date_ms,
                    raw: raw.raw,
                });
            }
            let ids: Vec<String> = inputs.iter().map(|r| r.gmail_message_id.clone()).collect();
            let sealed = pipeline::process_and_seal_many(
                &self.keyring,
                &self.tenant,
                &inbox.id,
                inputs,
                self.cfg.concurrency.max(1),
            )
            .await?;
            let mut batch = Vec::with_capacity(sealed.len());
            for (gmail_id, result) in ids.iter().zip(sealed) {
                match result {
                    Ok(message) => batch.push(message),
                    Err(e) => {
                        report.unparseable += 1;
                        UNPARSEABLE.inc();
                        tracing::warn!(tenant = %self.tenant, inbox = %inbox.id, gmail_id = %gmail_id, reason = e.category(), "message is not parseable; skipped");
                    }
                }
            }
            // Everything up to just before the next batch's first history record is done.
            let mark = match chunks.get(i + 1) {
                None => Some(final_mark),
                Some(next) => next
                    .first()
                    .map(|m| m.history_id.saturating_sub(1))
                    .filter(|h| *h > 0),
            };
            let previous = writer.submit(batch, mark).await?;
            tally(&mut report, previous);
        }
        tally(&mut report, writer.wait().await?);
        Ok(report)
    }

    /// An access token for the inbox: cached in memory, or refreshed with the inbox's
    /// sealed refresh token. A rotated refresh token replaces the stored one atomically.
    async fn access_token(&self, inbox: &InboxRecord) -> Result<AccessToken, SyncError> {
        if let Some(cached) = lock(&self.tokens).get(&inbox.id)
            && cached.valid_until > Instant::now()
        {
            return Ok(cached.token.clone());
        }
        let sealed = inbox
            .refresh_token
            .clone()
            .ok_or(SyncError::NoRefreshToken)?;
        let ctx = SealContext::new(self.tenant.as_str(), &inbox.id, REFRESH_TOKEN_FIELD);
        let plain = Zeroizing::new(self.keyring.open(&ctx, &sealed).await?);
        let refresh_token = std::str::from_utf8(&plain).map_err(|_| SyncError::NoRefreshToken)?;
        let refreshed = match self.oauth.refresh(refresh_token).await {
            Ok(r) => r,
            Err(OAuthError::InvalidGrant) => {
                // A disconnected inbox (whose watch is being stopped) stays disconnected.
                if inbox.status == InboxStatus::Connected.as_str() {
                    self.store
                        .set_inbox_status(&inbox.id, InboxStatus::NeedsReconnect)
                        .await?;
                }
                lock(&self.tokens).remove(&inbox.id);
                return Err(SyncError::NeedsReconnect);
            }
            Err(e) => return Err(e.into()),
        };
        if let Some(new) = &refreshed.new_refresh_token {
            let sealed_new = self.keyring.seal(&ctx, new.as_bytes()).await?;
            let replaced = self
                .store
                .replace_refresh_token(&inbox.id, &sealed, &sealed_new)
                .await?;
            if !replaced {
                tracing::warn!(tenant = %self.tenant, inbox = %inbox.id, "refresh token changed concurrently; kept the newer one");
            }
        }
        // Refresh a minute early.
        let valid_for = refreshed.expires_in.saturating_sub(Duration::from_secs(60));
        lock(&self.tokens).insert(
            inbox.id.clone(),
            CachedToken {
                token: refreshed.access_token.clone(),
                valid_until: Instant::now() + valid_for,
            },
        );
        Ok(refreshed.access_token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 86_400_000;

    fn watch(desired: Option<&str>, topic: Option<&str>, expires: Option<i64>) -> InboxWatch {
        InboxWatch {
            inbox_id: "i1".into(),
            desired_topic: desired.map(String::from),
            topic: topic.map(String::from),
            expires_at_ms: expires,
        }
    }

    const T1: &str = "projects/acme-mail/topics/gmail-push";
    const T2: &str = "projects/acme-mail/topics/gmail-push-2";

    #[test]
    fn a_missing_watch_is_registered() {
        let w = watch(Some(T1), None, None);
        assert_eq!(watch_action(&w, 0, DAY), Some(WatchAction::Register(T1)));
    }

    #[test]
    fn a_fresh_watch_on_the_desired_topic_needs_nothing() {
        let now = 1_000 * DAY;
        let w = watch(Some(T1), Some(T1), Some(now + 7 * DAY));
        assert_eq!(watch_action(&w, now, DAY), None);
        // Just outside the renewal window still needs nothing.
        let w = watch(Some(T1), Some(T1), Some(now + DAY + 1));
        assert_eq!(watch_action(&w, now, DAY), None);
    }

    #[test]
    fn a_watch_is_renewed_within_the_window_and_after_it_lapsed() {
        let now = 1_000 * DAY;
        for expires in [now + DAY, now + 1, now, now - 3 * DAY] {
            let w = watch(Some(T1), Some(T1), Some(expires));
            assert_eq!(
                watch_action(&w, now, DAY),
                Some(WatchAction::Register(T1)),
                "expires {expires}"
            );
        }
        // Registered but with no known expiration: register again to learn it.
        let w = watch(Some(T1), Some(T1), None);
        assert_eq!(watch_action(&w, now, DAY), Some(WatchAction::Register(T1)));
    }

    #[test]
    fn a_changed_topic_is_registered_at_once() {
        let now = 1_000 * DAY;
        let w = watch(Some(T2), Some(T1), Some(now + 7 * DAY));
        assert_eq!(watch_action(&w, now, DAY), Some(WatchAction::Register(T2)));
    }

    #[test]
    fn a_watch_nobody_wants_is_stopped() {
        let w = watch(None, Some(T1), Some(7 * DAY));
        assert_eq!(watch_action(&w, 0, DAY), Some(WatchAction::Stop));
        assert_eq!(watch_action(&watch(None, None, None), 0, DAY), None);
        // Expiry unknown: stopped too.
        let w = watch(None, Some(T1), None);
        assert_eq!(watch_action(&w, 0, DAY), Some(WatchAction::Stop));
    }

    #[test]
    fn an_expired_watch_nobody_wants_is_only_forgotten() {
        let now = 1_000 * DAY;
        for expires in [now, now - 1, now - 3 * DAY] {
            let w = watch(None, Some(T1), Some(expires));
            assert_eq!(watch_action(&w, now, DAY), Some(WatchAction::Forget));
        }
        let w = watch(None, Some(T1), Some(now + 1));
        assert_eq!(watch_action(&w, now, DAY), Some(WatchAction::Stop));
    }

    #[test]
    fn watch_failures_are_recorded_as_fixed_words() {
        assert_eq!(watch_error(&GmailError::Forbidden), WatchError::Forbidden);
        assert_eq!(watch_error(&GmailError::MessageGone), WatchError::NotFound);
        assert_eq!(
            watch_error(&GmailError::Unavailable("http 503 after 6 attempts".into())),
            WatchError::Unavailable
        );
        assert_eq!(
            watch_error(&GmailError::Protocol("http 400".into())),
            WatchError::Rejected
        );
    }
}
