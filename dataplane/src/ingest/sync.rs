//! The sync worker of one tenant (`helpr-dataplane sync --tenant`).
//!
//! It claims the tenant's sync jobs, lists Gmail history from each inbox's high-water mark,
//! fetches every new message (raw), runs the pipeline, seals the result and stores it
//! together with the advanced mark, in batches, one transaction per batch. A periodic poll
//! covers notifications Gmail dropped. Messages are idempotent by (inbox, Gmail id), so a
//! worker killed at any point resumes with nothing lost and nothing stored twice.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Deserialize;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use zeroize::Zeroizing;

use super::gmail::{AccessToken, AddedMessage, GmailClient, GmailError};
use super::oauth::{OAuthError, TokenSource};
use super::pipeline::{self, PipelinedWriter, RawInput};
use crate::crypto::SealContext;
use crate::ids::TenantId;
use crate::keyring::{Keyring, KeyringError};
use crate::metrics::Counter;
use crate::store::{
    InboxRecord, InboxStatus, InsertOutcome, REFRESH_TOKEN_FIELD, Store, StoreError, SyncJob,
    now_ms,
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

    async fn sync_inbox_once(&self, inbox_id: &str) -> Result<InboxSyncReport, SyncError> {
        let inbox = self
            .store
            .get_inbox(inbox_id)
            .await?
            .ok_or(SyncError::NotConnected)?;
        if inbox.tenant_id != self.tenant {
            return Err(SyncError::WrongTenant);
        }
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
                self.store
                    .set_inbox_status(&inbox.id, InboxStatus::NeedsReconnect)
                    .await?;
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
