//! `GET /v1/events`: live mail events over a WebSocket, each checked against the caller's
//! access when it is delivered.
//!
//! - **Authentication** as for every `/v1` call, checked before the upgrade (401 without a
//!   good token): `Authorization: Bearer <token>`, or, for browsers (which cannot set headers
//!   on a WebSocket), the subprotocols `Sec-WebSocket-Protocol: helpr.v1,
//!   bearer.<token>` (as Kubernetes' apiserver takes `base64url.bearer.authorization.k8s.io.`
//!   tokens); the server then selects `helpr.v1`. A token is never accepted from the URL.
//!   Either way the token is verified again every [`TOKEN_RECHECK`]; once it
//!   has expired (or its key is gone) the server closes the socket with code 1008 and the
//!   reason `token expired`; if the issuer's keys cannot be fetched to check it, with 1013
//!   (`issuer keys unavailable`). A client reconnects with a fresh token and `?after=` the
//!   last `seq` it saw.
//! - **Frames**: one JSON text frame per event, ids only, never content:
//!   `{"seq": 7, "type": "message.stored", "inbox_id": "…", "conversation_id": "…",
//!   "message_id": "…", "at_ms": 1764…}`. Types: `message.stored`, `message.deleted`,
//!   `message.restored`, `conversation.deleted`, `conversation.restored` (the latter two
//!   without `message_id`). What changed is read through the other routes, which check access
//!   again.
//! - **Access**: the tenant's inboxes, settings and grants are read from the store for every
//!   batch of events (once per batch for all sockets of the tenant), so a grant revoked (or expired, or an inbox made restricted) through
//!   the control API stops that inbox's events from the next batch on, in every process. An
//!   event of an inbox the caller may not read is skipped, never sent.
//! - **Order and resumption**: a tenant's events are numbered 1, 2, 3, ... in commit order
//!   (see migration `0010_mail_events`); they arrive in that order. Without `after` the socket
//!   delivers what happens from the upgrade on; `after=N` resumes after event N (events are
//!   kept for [`crate::store::MAIL_EVENT_RETENTION_MS`], an hour; a client away longer
//!   reloads its views).
//! - **Delivery** ([`EventHub`]): one task per tenant with open sockets in this process reads
//!   the store and hands each batch, with the tenant's access read once for all of them, to
//!   every socket of the tenant. On PostgreSQL it reads when woken: every transaction that
//!   records events notifies the tenant id at commit (migration 0012), one listening
//!   connection per process forwards that to the tenant's task, and the task polls only
//!   every [`SAFETY_POLL`] besides (and every [`POLL`] while the listener is down). On
//!   SQLite, which cannot notify other processes, it reads every [`POLL`]. A socket that
//!   resumes from an older event, or falls behind, reads the gap from the store itself
//!   first. A ping goes out every [`PING`]; frames from the client other than close are
//!   ignored. While the database is unreachable, events wait (the feed retries); a socket
//!   whose own read fails is closed with code 1011, and the client reconnects with `after`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime};

use axum::extract::rejection::QueryRejection;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, header};
use axum::response::Response;
use serde::Deserialize;
use tokio::sync::{Notify, broadcast};

use super::ApiState;
use super::error::ApiError;
use super::routes::{authenticate, bearer, params};
use crate::access::{AccessIndex, Agent};
use crate::ids::TenantId;
use crate::ingest::jwt::MAX_TOKEN_BYTES;
use crate::metrics::Counter;
use crate::store::{MailEvent, Store, StoreError, now_ms, prune_expired_mail_events};

/// How often a feed reads the store for new events where the database cannot wake it.
pub const POLL: Duration = Duration::from_millis(250);
/// How often a feed reads the store unprompted while wake-ups arrive (a safety net).
pub const SAFETY_POLL: Duration = Duration::from_secs(5);
/// How often the caller's token is verified again.
pub const TOKEN_RECHECK: Duration = Duration::from_secs(5);
/// How often a ping is sent.
pub const PING: Duration = Duration::from_secs(30);
/// Most events read (and sent) per poll.
const BATCH: u32 = 500;
/// Largest frame accepted from a client (they have nothing to say but close).
const MAX_CLIENT_FRAME: usize = 4096;

static DELIVERED: Counter = Counter::new(
    "helpr_api_events_delivered_total",
    "",
    "Live events sent to agents",
);
static FEED_READS: Counter = Counter::new(
    "helpr_api_event_feed_reads_total",
    "",
    "Reads of the live-event log by the per-tenant feeds",
);
static WITHHELD: Counter = Counter::new(
    "helpr_api_events_withheld_total",
    "",
    "Live events not sent because the agent may not read their inbox",
);

/// When this process last pruned old events (epoch ms).
static LAST_PRUNE_MS: AtomicI64 = AtomicI64::new(0);

/// Parameters of `GET /v1/events`.
#[derive(Debug, Default, Deserialize)]
pub struct EventParams {
    pub after: Option<String>,
}

/// The subprotocol a browser client names, and the server selects.
pub const SUBPROTOCOL: &str = "helpr.v1";
/// Prefix of the subprotocol entry that carries a browser client's token.
const TOKEN_PROTOCOL_PREFIX: &str = "bearer.";

/// The token of a browser client: the `bearer.<token>` entry of `Sec-WebSocket-Protocol`,
/// if the header also names [`SUBPROTOCOL`] (exactly one token entry).
fn protocol_token(headers: &HeaderMap) -> Option<&str> {
    let mut named = false;
    let mut token = None;
    for value in headers.get_all(header::SEC_WEBSOCKET_PROTOCOL) {
        for entry in value.to_str().ok()?.split(',').map(str::trim) {
            if entry == SUBPROTOCOL {
                named = true;
            } else if let Some(t) = entry.strip_prefix(TOKEN_PROTOCOL_PREFIX) {
                if token.is_some() || t.is_empty() || t.len() > MAX_TOKEN_BYTES {
                    return None;
                }
                token = Some(t);
            }
        }
    }
    token.filter(|_| named)
}

/// Upgrades to the event socket (see the module docs).
pub async fn events(
    State(state): State<ApiState>,
    headers: HeaderMap,
    query: Result<Query<EventParams>, QueryRejection>,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    // The Authorization header when there is one; else the subprotocol token.
    let token = match bearer(&headers) {
        Some(t) => Some(t),
        None if headers.contains_key(header::AUTHORIZATION) => None,
        None => protocol_token(&headers),
    };
    let caller = authenticate(&state, token).await?;
    // Kept to verify again while the socket is open.
    let token = token.unwrap_or_default().to_owned();
    let p = params(query)?;
    let upgrade = upgrade
        .map_err(|_| ApiError::invalid("this route is a WebSocket: send a WebSocket upgrade"))?;
    let after = match p.after.as_deref() {
        Some(s) => s
            .parse::<i64>()
            .ok()
            .filter(|n| *n >= 0)
            .ok_or_else(|| ApiError::invalid("after must be an event sequence number"))?,
        None => {
            state
                .store()
                .latest_mail_event(&caller.agent.tenant)
                .await?
        }
    };
    Ok(upgrade
        .protocols([SUBPROTOCOL])
        .max_message_size(MAX_CLIENT_FRAME)
        .max_frame_size(MAX_CLIENT_FRAME)
        .on_upgrade(move |socket| stream(socket, state, caller.agent, token, after)))
}

/// Why the server ends a socket.
enum End {
    /// The client left or the connection broke.
    Gone,
    Close(u16, &'static str),
}

/// Events read together, with the tenant's access as read right after them.
pub struct Batch {
    pub events: Vec<MailEvent>,
    pub access: Arc<AccessIndex>,
}

/// The live-event readers of one process: one task per tenant with open sockets reads the
/// store when woken (or every [`POLL`] where the database cannot wake it, see
/// [`EventPolling`]) and hands each batch (with the tenant's access, read once for all
/// sockets) to every socket of that tenant. The task ends when the tenant's last socket
/// does.
pub struct EventHub {
    store: Arc<dyn Store>,
    feeds: Arc<Feeds>,
    polling: EventPolling,
    /// Whether the wake-up listener has been started.
    listener: std::sync::Once,
}

/// The running feeds, and whether wake-ups arrive.
#[derive(Default)]
struct Feeds {
    running: Mutex<HashMap<TenantId, Weak<Feed>>>,
    /// True while the store's listener is connected: feeds then read when woken, and poll
    /// only as a safety net.
    listening: AtomicBool,
}

impl Feeds {
    fn running(&self) -> std::sync::MutexGuard<'_, HashMap<TenantId, Weak<Feed>>> {
        self.running.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn wake(&self, tenant: &TenantId) {
        if let Some(feed) = self.running().get(tenant).and_then(Weak::upgrade) {
            feed.wake.notify_one();
        }
    }

    fn wake_all(&self) {
        for feed in self.running().values().filter_map(Weak::upgrade) {
            feed.wake.notify_one();
        }
    }
}

/// How often feeds read the store unprompted.
#[derive(Clone, Copy, Debug)]
pub struct EventPolling {
    /// Without wake-ups (SQLite, or while the listener is down).
    pub poll: Duration,
    /// With wake-ups (PostgreSQL `NOTIFY`): a safety net only.
    pub safety_poll: Duration,
}

impl Default for EventPolling {
    fn default() -> Self {
        Self {
            poll: POLL,
            safety_poll: SAFETY_POLL,
        }
    }
}

/// One tenant's reader, alive while a socket holds it.
pub struct Feed {
    batches: broadcast::Sender<Arc<Batch>>,
    /// Wakes the reader: events were recorded, or the feed is gone.
    wake: Arc<Notify>,
}

impl Drop for Feed {
    fn drop(&mut self) {
        // The reader sees the feed gone at once rather than at its next poll.
        self.wake.notify_one();
    }
}

/// Batches a slow socket may fall behind by before it reads the store itself.
const FEED_BACKLOG: usize = 64;

impl EventHub {
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self::with_polling(store, EventPolling::default())
    }

    pub fn with_polling(store: Arc<dyn Store>, polling: EventPolling) -> Self {
        Self {
            store,
            feeds: Arc::default(),
            polling,
            listener: std::sync::Once::new(),
        }
    }

    /// The tenant's feed (started if none runs) and a receiver of its batches from now on.
    async fn subscribe(
        &self,
        tenant: &TenantId,
    ) -> Result<(Arc<Feed>, broadcast::Receiver<Arc<Batch>>), StoreError> {
        self.listener.call_once(|| {
            tokio::spawn(listen(self.store.clone(), Arc::downgrade(&self.feeds)));
        });
        if let Some(feed) = self.running(tenant) {
            let rx = feed.batches.subscribe();
            return Ok((feed, rx));
        }
        let start = self.store.latest_mail_event(tenant).await?;
        let mut feeds = self.feeds.running();
        // Another socket may have started it meanwhile.
        if let Some(feed) = feeds.get(tenant).and_then(Weak::upgrade) {
            let rx = feed.batches.subscribe();
            return Ok((feed, rx));
        }
        let (batches, rx) = broadcast::channel(FEED_BACKLOG);
        let wake = Arc::new(Notify::new());
        let feed = Arc::new(Feed {
            batches,
            wake: wake.clone(),
        });
        feeds.retain(|_, f| f.strong_count() > 0);
        feeds.insert(tenant.clone(), Arc::downgrade(&feed));
        // The first read comes at once: a wake-up sent before the feed was in the map (for
        // an event after `start`) found no one to wake.
        wake.notify_one();
        tokio::spawn(read_feed(
            FeedReader {
                store: self.store.clone(),
                tenant: tenant.clone(),
                feed: Arc::downgrade(&feed),
                wake,
                feeds: self.feeds.clone(),
                polling: self.polling,
            },
            start,
        ));
        Ok((feed, rx))
    }

    fn running(&self, tenant: &TenantId) -> Option<Arc<Feed>> {
        self.feeds.running().get(tenant).and_then(Weak::upgrade)
    }
}

/// Forwards the store's wake-ups to the feeds while the hub lives; listens again (after a
/// pause) when the listener is lost, and ends where the store has none.
async fn listen(store: Arc<dyn Store>, feeds: Weak<Feeds>) {
    let mut pause = Duration::from_secs(1);
    loop {
        match store.listen_mail_events().await {
            Ok(None) => return,
            Ok(Some(mut listener)) => {
                let Some(hub) = feeds.upgrade() else { return };
                hub.listening.store(true, Ordering::Release);
                // Events recorded before the listener was up are read now.
                hub.wake_all();
                drop(hub);
                pause = Duration::from_secs(1);
                loop {
                    let next = listener.next().await;
                    let Some(hub) = feeds.upgrade() else { return };
                    match next {
                        Ok(Some(tenant)) => hub.wake(&tenant),
                        Ok(None) => hub.wake_all(),
                        Err(e) => {
                            hub.listening.store(false, Ordering::Release);
                            hub.wake_all();
                            tracing::warn!(error = %e, "live events: wake-ups lost; polling until they are back");
                            break;
                        }
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "live events: cannot listen for wake-ups; polling");
            }
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(30));
        if feeds.strong_count() == 0 {
            return;
        }
    }
}

/// What one tenant's reader needs.
struct FeedReader {
    store: Arc<dyn Store>,
    tenant: TenantId,
    feed: Weak<Feed>,
    wake: Arc<Notify>,
    feeds: Arc<Feeds>,
    polling: EventPolling,
}

/// Reads the tenant's events after `cursor` when woken (see [`EventHub`]) while a socket
/// holds the feed.
async fn read_feed(r: FeedReader, mut cursor: i64) {
    let FeedReader {
        store,
        tenant,
        feed,
        wake,
        feeds,
        polling,
    } = r;
    loop {
        let period = if feeds.listening.load(Ordering::Acquire) {
            polling.safety_poll
        } else {
            polling.poll
        };
        tokio::select! {
            () = wake.notified() => {}
            () = tokio::time::sleep(period) => {}
        }
        let Some(feed) = feed.upgrade() else { return };
        prune(store.as_ref()).await;
        // Read until the log is drained (a burst of more than one batch goes out at once).
        loop {
            FEED_READS.inc();
            match read_batch(store.as_ref(), &tenant, cursor).await {
                Ok(Some(batch)) => {
                    let full = batch.events.len() >= BATCH as usize;
                    if let Some(last) = batch.events.last() {
                        cursor = last.seq;
                    }
                    // No receiver left: the next wake finds the feed gone.
                    let _ = feed.batches.send(Arc::new(batch));
                    if !full {
                        break;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(tenant = %tenant, error = %e, "live events: database unavailable; retrying");
                    break;
                }
            }
        }
    }
}

/// Up to [`BATCH`] events of the tenant after `cursor`, with its access read after them
/// (so a grant revoked before they were read is seen); `None` when there are none.
async fn read_batch(
    store: &dyn Store,
    tenant: &TenantId,
    cursor: i64,
) -> Result<Option<Batch>, StoreError> {
    let events = store.mail_events_after(tenant, cursor, BATCH).await?;
    if events.is_empty() {
        return Ok(None);
    }
    let access = Arc::new(AccessIndex::load(store, tenant).await?);
    Ok(Some(Batch { events, access }))
}

async fn stream(mut socket: WebSocket, state: ApiState, agent: Agent, token: String, after: i64) {
    let end = follow(&mut socket, &state, &agent, &token, after).await;
    if let End::Close(code, reason) = end {
        let _ = socket
            .send(Message::Close(Some(CloseFrame {
                code,
                reason: Utf8Bytes::from_static(reason),
            })))
            .await;
    }
}

/// Sends the events of `batch` after `cursor` that the agent may read; returns the new
/// cursor, or `None` if the client is gone.
async fn deliver(
    socket: &mut WebSocket,
    agent: &Agent,
    batch: &Batch,
    mut cursor: i64,
) -> Option<i64> {
    let at = now_ms();
    let from = cursor;
    for event in batch.events.iter().filter(|e| e.seq > from) {
        cursor = event.seq;
        if batch.access.role(agent, &event.inbox_id, at).is_none() {
            WITHHELD.inc();
            continue;
        }
        if socket
            .send(Message::Text(frame(event).into()))
            .await
            .is_err()
        {
            return None;
        }
        DELIVERED.inc();
    }
    Some(cursor)
}

/// Reads the store itself from `cursor` up to `until` (or to the end): a socket that
/// resumes from an older event, or fell behind its feed. Returns the new cursor.
async fn catch_up(
    socket: &mut WebSocket,
    state: &ApiState,
    agent: &Agent,
    mut cursor: i64,
    until: Option<i64>,
) -> Result<i64, End> {
    loop {
        if until.is_some_and(|u| cursor >= u) {
            return Ok(cursor);
        }
        let mut batch = match read_batch(state.store().as_ref(), &agent.tenant, cursor).await {
            Ok(Some(b)) => b,
            Ok(None) => return Ok(cursor),
            Err(e) => {
                tracing::warn!(tenant = %agent.tenant, error = %e, "live events: database unavailable");
                return Err(End::Close(1011, "database unavailable"));
            }
        };
        if let Some(u) = until {
            batch.events.retain(|e| e.seq <= u);
        }
        if batch.events.is_empty() {
            return Ok(cursor);
        }
        cursor = deliver(socket, agent, &batch, cursor)
            .await
            .ok_or(End::Gone)?;
    }
}

async fn follow(
    socket: &mut WebSocket,
    state: &ApiState,
    agent: &Agent,
    token: &str,
    cursor: i64,
) -> End {
    // Subscribed first, so nothing committed from here on is missed.
    let (_feed, mut batches) = match state.events.subscribe(&agent.tenant).await {
        Ok(f) => f,
        Err(e) => {
            tracing::warn!(tenant = %agent.tenant, error = %e, "live events: database unavailable");
            return End::Close(1011, "database unavailable");
        }
    };
    let mut cursor = match catch_up(socket, state, agent, cursor, None).await {
        Ok(c) => c,
        Err(end) => return end,
    };
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut recheck_at = Instant::now() + TOKEN_RECHECK;
    let mut ping_at = Instant::now() + PING;
    loop {
        tokio::select! {
            batch = batches.recv() => match batch {
                Ok(batch) => {
                    // A gap before this batch (the socket started between two reads, or
                    // missed batches): read it from the store first.
                    if let Some(first) = batch.events.first().map(|e| e.seq)
                        && first > cursor + 1
                    {
                        cursor = match catch_up(socket, state, agent, cursor, Some(first - 1)).await {
                            Ok(c) => c,
                            Err(end) => return end,
                        };
                    }
                    match deliver(socket, agent, &batch, cursor).await {
                        Some(c) => cursor = c,
                        None => return End::Gone,
                    }
                }
                // Fell behind: the next batch's gap is read from the store.
                Err(broadcast::error::RecvError::Lagged(_)) => {}
                // Not while `_feed` (which owns the sender) is held; answered all the same.
                Err(broadcast::error::RecvError::Closed) => {
                    return End::Close(1011, "event feed stopped");
                }
            },
            frame = socket.recv() => match frame {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return End::Gone,
                Some(Ok(_)) => continue,
            },
            _ = tick.tick() => {}
        }
        let now = Instant::now();
        if now >= recheck_at {
            match state.verifier.verify(token, SystemTime::now()).await {
                Ok(again) if again == *agent => {}
                // Fail closed: without the issuer's keys the token cannot be checked again.
                Err(e) if e.is_unavailable() => {
                    return End::Close(1013, "issuer keys unavailable");
                }
                _ => return End::Close(1008, "token expired"),
            }
            recheck_at = now + TOKEN_RECHECK;
        }
        if now >= ping_at {
            if socket
                .send(Message::Ping(Default::default()))
                .await
                .is_err()
            {
                return End::Gone;
            }
            ping_at = now + PING;
        }
    }
}

/// The JSON text of one event.
fn frame(event: &MailEvent) -> String {
    serde_json::to_string(event).unwrap_or_else(|_| String::from("{}"))
}

/// Deletes events older than [`crate::store::MAIL_EVENT_RETENTION_MS`], at most once a
/// minute per process (the indexers' housekeeping prunes too, for deployments without this
/// API).
async fn prune(store: &dyn Store) {
    let now = now_ms();
    let last = LAST_PRUNE_MS.load(Ordering::Relaxed);
    if now - last < 60_000
        || LAST_PRUNE_MS
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_err()
    {
        return;
    }
    if let Err(e) = prune_expired_mail_events(store).await {
        tracing::warn!(error = %e, "live events: old events not pruned");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MailEventKind;

    #[test]
    fn a_browser_token_needs_the_subprotocol_and_comes_once() {
        let headers = |values: &[&str]| {
            let mut h = HeaderMap::new();
            for v in values {
                h.append(
                    header::SEC_WEBSOCKET_PROTOCOL,
                    v.parse()
                        .unwrap_or_else(|_| header::HeaderValue::from_static("")),
                );
            }
            h
        };
        assert_eq!(
            protocol_token(&headers(&["helpr.v1, bearer.abc"])),
            Some("abc")
        );
        // Over two header lines, in any order, with spaces.
        assert_eq!(
            protocol_token(&headers(&["bearer.abc ", " helpr.v1"])),
            Some("abc")
        );
        for refused in [
            &["bearer.abc"][..],
            &["helpr.v1"],
            &["helpr.v1, bearer."],
            &["helpr.v1, bearer.abc, bearer.def"],
            &["helpr.v1", "bearer.abc", "bearer.abc"],
            &["helpr.v2, bearer.abc"],
        ] {
            assert_eq!(protocol_token(&headers(refused)), None, "{refused:?}");
        }
        let long = format!("helpr.v1, bearer.{}", "a".repeat(MAX_TOKEN_BYTES + 1));
        assert_eq!(protocol_token(&headers(&[long.as_str()])), None);
    }

    #[test]
    fn frames_hold_ids_only() {
        let e = MailEvent {
            seq: 7,
            kind: MailEventKind::ConversationDeleted,
            inbox_id: "i1".into(),
            conversation_id: "c1".into(),
            message_id: None,
            at_ms: 5,
        };
        let v: serde_json::Value = serde_json::from_str(&frame(&e)).unwrap_or_default();
        assert_eq!(
            v,
            serde_json::json!({
                "seq": 7, "type": "conversation.deleted", "inbox_id": "i1",
                "conversation_id": "c1", "at_ms": 5
            })
        );
    }
}
