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
//!   batch of events, so a grant revoked (or expired, or an inbox made restricted) through
//!   the control API stops that inbox's events from the next batch on, in every process. An
//!   event of an inbox the caller may not read is skipped, never sent.
//! - **Order and resumption**: a tenant's events are numbered 1, 2, 3, ... in commit order
//!   (see migration `0010_mail_events`); they arrive in that order. Without `after` the socket
//!   delivers what happens from the upgrade on; `after=N` resumes after event N (events are
//!   kept for [`crate::store::MAIL_EVENT_RETENTION_MS`], an hour; a client away longer
//!   reloads its views).
//! - **Delivery**: the store is read every [`POLL`]; a ping goes out every [`PING`]. Frames
//!   from the client other than close are ignored. A database outage closes the socket with
//!   code 1011; the client reconnects with `after`.

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use axum::extract::rejection::QueryRejection;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, header};
use axum::response::Response;
use serde::Deserialize;

use super::ApiState;
use super::error::ApiError;
use super::routes::{authenticate, bearer, params};
use crate::access::{AccessIndex, Agent};
use crate::ingest::jwt::MAX_TOKEN_BYTES;
use crate::metrics::Counter;
use crate::store::{MailEvent, now_ms, prune_expired_mail_events};

/// How often the store is read for new events.
pub const POLL: Duration = Duration::from_millis(250);
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
    upgrade: WebSocketUpgrade,
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

async fn follow(
    socket: &mut WebSocket,
    state: &ApiState,
    agent: &Agent,
    token: &str,
    mut cursor: i64,
) -> End {
    let mut poll = tokio::time::interval(POLL);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut recheck_at = Instant::now() + TOKEN_RECHECK;
    let mut ping_at = Instant::now() + PING;
    loop {
        tokio::select! {
            _ = poll.tick() => {}
            frame = socket.recv() => match frame {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return End::Gone,
                Some(Ok(_)) => continue,
            },
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
        prune(state).await;
        let events = match state
            .store()
            .mail_events_after(&agent.tenant, cursor, BATCH)
            .await
        {
            Ok(events) => events,
            Err(e) => {
                tracing::warn!(tenant = %agent.tenant, error = %e, "live events: database unavailable");
                return End::Close(1011, "database unavailable");
            }
        };
        let Some(last) = events.last() else { continue };
        let last = last.seq;
        // Read now, after the events: a grant revoked before they were read is seen.
        let access = match AccessIndex::load(state.store().as_ref(), &agent.tenant).await {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(tenant = %agent.tenant, error = %e, "live events: database unavailable");
                return End::Close(1011, "database unavailable");
            }
        };
        let at = now_ms();
        for event in events {
            if access.role(agent, &event.inbox_id, at).is_none() {
                WITHHELD.inc();
                continue;
            }
            if socket
                .send(Message::Text(frame(&event).into()))
                .await
                .is_err()
            {
                return End::Gone;
            }
            DELIVERED.inc();
        }
        cursor = last;
    }
}

/// The JSON text of one event.
fn frame(event: &MailEvent) -> String {
    serde_json::to_string(event).unwrap_or_else(|_| String::from("{}"))
}

/// Deletes events older than [`crate::store::MAIL_EVENT_RETENTION_MS`], at most once a
/// minute per process (the indexers' housekeeping prunes too, for deployments without this
/// API).
async fn prune(state: &ApiState) {
    let now = now_ms();
    let last = LAST_PRUNE_MS.load(Ordering::Relaxed);
    if now - last < 60_000
        || LAST_PRUNE_MS
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_err()
    {
        return;
    }
    if let Err(e) = prune_expired_mail_events(state.store().as_ref()).await {
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
