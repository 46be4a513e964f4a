//! The handlers of the agent API and what they share: the authenticated [`Caller`], page
//! limits and opaque cursors, and opening sealed fields.
//!
//! Page sizes: conversations default [`DEFAULT_CONVERSATIONS`], at most
//! [`MAX_CONVERSATIONS`]; messages default [`DEFAULT_MESSAGES`], at most [`MAX_MESSAGES`];
//! search hits default [`DEFAULT_HITS`], at most [`MAX_HITS`]. `limit=0`, a non-number or a
//! value above the maximum is a 400.

use std::collections::BTreeSet;
use std::time::SystemTime;

use axum::Json;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};

use super::ApiState;
use super::error::{ApiError, ErrorKind};
use crate::access::{AccessIndex, Agent};
use crate::crypto::{SealContext, SealedField};
use crate::ids::TenantId;
use crate::ingest::jwt::MAX_TOKEN_BYTES;
use crate::metrics::Counter;
use crate::store::{
    ConversationCursor, ConversationRecord, MessageFields, NewAttachment, StoredMessage, now_ms,
};

/// Conversations per page unless `limit` says otherwise.
pub const DEFAULT_CONVERSATIONS: u32 = 25;
/// Most conversations per page.
pub const MAX_CONVERSATIONS: u32 = 100;
/// Messages per page unless `limit` says otherwise.
pub const DEFAULT_MESSAGES: u32 = 50;
/// Most messages per page.
pub const MAX_MESSAGES: u32 = 100;
/// Search hits per page unless `limit` says otherwise.
pub const DEFAULT_HITS: u32 = 20;
/// Most search hits per page.
pub const MAX_HITS: u32 = 100;
/// Longest id accepted in a path (longer ones cannot exist: 404).
const MAX_ID_BYTES: usize = 128;

static AUTH_REJECTED: Counter = Counter::new(
    "helpr_api_auth_rejected_total",
    "",
    "Agent API requests without an acceptable bearer token",
);

/// The authenticated agent making a request (an extractor: rejects with 401).
#[derive(Debug, Clone)]
pub struct Caller {
    pub agent: Agent,
}

impl Caller {
    /// The caller's tenant's access index, read from the store now.
    pub async fn access(&self, state: &ApiState) -> Result<AccessIndex, ApiError> {
        Ok(AccessIndex::load(state.store().as_ref(), &self.agent.tenant).await?)
    }

    fn tenant(&self) -> &TenantId {
        &self.agent.tenant
    }
}

/// The bearer token of a request: exactly one `Authorization` header, scheme `Bearer`
/// (any case), a non-empty token of at most 16 KiB.
pub(crate) fn bearer(headers: &HeaderMap) -> Option<&str> {
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let value = values.next()?;
    if values.next().is_some() || value.len() > MAX_TOKEN_BYTES + 7 {
        return None;
    }
    let (scheme, token) = value.to_str().ok()?.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

impl FromRequestParts<ApiState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &ApiState) -> Result<Self, ApiError> {
        authenticate(state, bearer(&parts.headers)).await
    }
}

/// The caller a bearer token names, or the 401 (503 when the issuer's keys cannot be
/// fetched) of every `/v1` call.
pub(crate) async fn authenticate(
    state: &ApiState,
    token: Option<&str>,
) -> Result<Caller, ApiError> {
    let Some(token) = token else {
        AUTH_REJECTED.inc();
        return Err(ApiError::unauthenticated());
    };
    match state.verifier.verify(token, SystemTime::now()).await {
        Ok(agent) => Ok(Caller { agent }),
        Err(e) if e.is_unavailable() => Err(ApiError::new(
            ErrorKind::Unavailable,
            "the issuer's signing keys are unavailable; try again",
        )),
        Err(e) => {
            AUTH_REJECTED.inc();
            tracing::info!(reason = e.reason(), "agent token rejected");
            Err(ApiError::unauthenticated())
        }
    }
}

// --- parameters -----------------------------------------------------------------------

/// `cursor` and `limit` of a listing.
#[derive(Debug, Default, Deserialize)]
pub struct PageParams {
    pub cursor: Option<String>,
    pub limit: Option<String>,
}

/// Parameters of `GET /v1/search`.
#[derive(Debug, Default, Deserialize)]
pub struct SearchParams {
    pub q: Option<String>,
    pub inbox: Option<String>,
    pub cursor: Option<String>,
    pub limit: Option<String>,
}

pub(crate) fn params<T>(q: Result<Query<T>, QueryRejection>) -> Result<T, ApiError> {
    q.map(|Query(p)| p)
        .map_err(|_| ApiError::invalid("malformed query parameters"))
}

fn limit(raw: Option<&str>, default: u32, max: u32) -> Result<u32, ApiError> {
    match raw {
        None => Ok(default),
        Some(s) => match s.parse::<u32>() {
            Ok(n) if (1..=max).contains(&n) => Ok(n),
            _ => Err(ApiError::new(
                ErrorKind::InvalidArgument,
                format!("limit must be a number from 1 to {max}"),
            )),
        },
    }
}

/// A path id: 404 (not 400) when it cannot be an id, like any unknown id.
fn path_id(p: Result<Path<String>, PathRejection>, what: &'static str) -> Result<String, ApiError> {
    let Ok(Path(id)) = p else {
        return Err(ApiError::not_found(what));
    };
    if is_id(&id) {
        Ok(id)
    } else {
        Err(ApiError::not_found(what))
    }
}

fn is_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_ID_BYTES
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

// --- cursors --------------------------------------------------------------------------

/// Cursor formats: the first byte says which listing a cursor belongs to.
const CONVERSATIONS_CURSOR: u8 = 0xC1;
const MESSAGES_CURSOR: u8 = 0xA1;

/// An opaque cursor: format byte, date (i64 big-endian), id; base64url.
fn encode_cursor(format: u8, date_ms: i64, id: &str) -> String {
    let mut bytes = Vec::with_capacity(9 + id.len());
    bytes.push(format);
    bytes.extend_from_slice(&date_ms.to_be_bytes());
    bytes.extend_from_slice(id.as_bytes());
    URL_SAFE_NO_PAD.encode(bytes)
}

fn decode_cursor(format: u8, s: &str) -> Result<ConversationCursor, ApiError> {
    let bad = || ApiError::invalid("invalid cursor");
    if s.len() > 512 {
        return Err(bad());
    }
    let bytes = URL_SAFE_NO_PAD.decode(s).map_err(|_| bad())?;
    if bytes.len() < 10 || bytes[0] != format {
        return Err(bad());
    }
    let mut date = [0u8; 8];
    date.copy_from_slice(&bytes[1..9]);
    let id = String::from_utf8(bytes[9..].to_vec()).map_err(|_| bad())?;
    if !is_id(&id) {
        return Err(bad());
    }
    Ok(ConversationCursor {
        date_ms: i64::from_be_bytes(date),
        id,
    })
}

// --- opening sealed fields ------------------------------------------------------------

async fn open_bytes(
    state: &ApiState,
    tenant: &TenantId,
    record: &str,
    field: &str,
    sealed: &SealedField,
) -> Result<Vec<u8>, ApiError> {
    Ok(state
        .keyring
        .open(&SealContext::new(tenant.as_str(), record, field), sealed)
        .await?)
}

async fn open_text(
    state: &ApiState,
    tenant: &TenantId,
    record: &str,
    field: &str,
    sealed: &SealedField,
) -> Result<String, ApiError> {
    let bytes = open_bytes(state, tenant, record, field, sealed).await?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

// --- GET /v1/inboxes ------------------------------------------------------------------

/// One inbox the caller may read.
#[derive(Debug, Serialize)]
pub struct InboxView {
    pub id: String,
    /// The shared mailbox's address (configuration, not mail content).
    pub address: String,
    /// `connected`, `needs_reconnect` or `disconnected`.
    pub status: String,
    /// `org`, `team` or `restricted` (`restricted` for inboxes no Inbox resource manages).
    pub visibility: &'static str,
    pub team: Option<String>,
    /// Stored but not enforced yet: there is no assignment model (see [`crate::access`]).
    pub assignment_limits_visibility: bool,
    /// `read`, `reply` or `configure`.
    pub role: &'static str,
}

#[derive(Debug, Serialize)]
pub struct InboxList {
    pub inboxes: Vec<InboxView>,
}

/// `GET /v1/inboxes`.
pub async fn list_inboxes(
    State(state): State<ApiState>,
    caller: Caller,
) -> Result<Json<InboxList>, ApiError> {
    let access = caller.access(&state).await?;
    let inboxes = access
        .readable(&caller.agent, now_ms())
        .into_iter()
        .map(|r| InboxView {
            id: r.inbox.id.clone(),
            address: r.inbox.address.clone(),
            status: r.inbox.status.clone(),
            visibility: r.policy.visibility.as_str(),
            team: r.policy.team.clone(),
            assignment_limits_visibility: r.policy.assignment_limits_visibility,
            role: r.role.as_str(),
        })
        .collect();
    Ok(Json(InboxList { inboxes }))
}

// --- GET /v1/inboxes/{inbox}/conversations --------------------------------------------

/// The newest message of a conversation, opened.
#[derive(Debug, Serialize)]
pub struct LatestMessage {
    pub message_id: String,
    pub date_ms: i64,
    pub subject: String,
    pub from: String,
    pub snippet: String,
}

/// One conversation of an inbox.
#[derive(Debug, Serialize)]
pub struct ConversationView {
    pub id: String,
    pub inbox_id: String,
    pub message_count: u64,
    pub first_message_at_ms: Option<i64>,
    pub last_message_at_ms: i64,
    /// `None` only when the conversation's messages were deleted meanwhile.
    pub latest: Option<LatestMessage>,
}

#[derive(Debug, Serialize)]
pub struct ConversationPage {
    pub conversations: Vec<ConversationView>,
    /// The cursor of the next page, if there is one.
    pub next: Option<String>,
}

async fn conversation_view(
    state: &ApiState,
    tenant: &TenantId,
    c: ConversationRecord,
) -> Result<ConversationView, ApiError> {
    let names = MessageFields::FIELD_NAMES;
    let latest = match &c.latest_message_id {
        None => None,
        Some(id) => match state.store().get_message(tenant, id).await? {
            None => None,
            Some(m) => Some(LatestMessage {
                subject: open_text(state, tenant, &m.id, names[0], &m.fields.subject).await?,
                from: open_text(state, tenant, &m.id, names[1], &m.fields.from_addr).await?,
                snippet: open_text(state, tenant, &m.id, names[7], &m.fields.snippet).await?,
                date_ms: m.internal_date_ms,
                message_id: m.id,
            }),
        },
    };
    Ok(ConversationView {
        id: c.id,
        inbox_id: c.inbox_id,
        message_count: c.message_count,
        first_message_at_ms: c.first_message_at_ms,
        last_message_at_ms: c.last_message_at_ms,
        latest,
    })
}

/// `GET /v1/inboxes/{inbox}/conversations?cursor=&limit=`: newest first.
pub async fn list_conversations(
    State(state): State<ApiState>,
    caller: Caller,
    inbox: Result<Path<String>, PathRejection>,
    query: Result<Query<PageParams>, QueryRejection>,
) -> Result<Json<ConversationPage>, ApiError> {
    let inbox = path_id(inbox, "inbox")?;
    let p = params(query)?;
    let limit = limit(p.limit.as_deref(), DEFAULT_CONVERSATIONS, MAX_CONVERSATIONS)?;
    let before = p
        .cursor
        .as_deref()
        .map(|c| decode_cursor(CONVERSATIONS_CURSOR, c))
        .transpose()?;
    let access = caller.access(&state).await?;
    if access.role(&caller.agent, &inbox, now_ms()).is_none() {
        return Err(ApiError::not_found("inbox"));
    }
    let tenant = caller.tenant();
    let mut rows = state
        .store()
        .list_conversations(tenant, &inbox, before.as_ref(), limit + 1)
        .await?;
    let more = rows.len() > limit as usize;
    rows.truncate(limit as usize);
    let next = match (more, rows.last()) {
        (true, Some(last)) => Some(encode_cursor(
            CONVERSATIONS_CURSOR,
            last.last_message_at_ms,
            &last.id,
        )),
        _ => None,
    };
    let mut conversations = Vec::with_capacity(rows.len());
    for c in rows {
        conversations.push(conversation_view(&state, tenant, c).await?);
    }
    Ok(Json(ConversationPage {
        conversations,
        next,
    }))
}

// --- GET /v1/conversations/{id}/messages ----------------------------------------------

/// An attachment's metadata (its bytes: `GET /v1/messages/{id}/attachments/{ordinal}`).
#[derive(Debug, Serialize)]
pub struct AttachmentView {
    pub ordinal: u32,
    pub name: String,
    pub content_type: String,
    pub size_bytes: u64,
    pub inline: bool,
}

/// One message, opened.
#[derive(Debug, Serialize)]
pub struct MessageView {
    pub id: String,
    pub conversation_id: String,
    pub inbox_id: String,
    pub date_ms: i64,
    pub subject: String,
    pub from: String,
    pub to: String,
    pub cc: String,
    pub reply_to: String,
    /// HTML as the ingest sanitizer left it (no scripts, remote images replaced).
    pub html: String,
    pub text: String,
    pub attachments: Vec<AttachmentView>,
}

#[derive(Debug, Serialize)]
pub struct MessagePage {
    pub messages: Vec<MessageView>,
    pub next: Option<String>,
}

async fn message_view(state: &ApiState, m: StoredMessage) -> Result<MessageView, ApiError> {
    let t = &m.tenant_id;
    let f = &m.fields;
    let n = MessageFields::FIELD_NAMES;
    let mut attachments = Vec::with_capacity(m.attachments.len());
    for a in &m.attachments {
        let an = NewAttachment::FIELD_NAMES;
        attachments.push(AttachmentView {
            ordinal: a.ordinal,
            name: open_text(state, t, &a.id, an[0], &a.name).await?,
            content_type: open_text(state, t, &a.id, an[1], &a.content_type).await?,
            size_bytes: a.size_bytes,
            inline: a.inline,
        });
    }
    Ok(MessageView {
        subject: open_text(state, t, &m.id, n[0], &f.subject).await?,
        from: open_text(state, t, &m.id, n[1], &f.from_addr).await?,
        to: open_text(state, t, &m.id, n[2], &f.to_addrs).await?,
        cc: open_text(state, t, &m.id, n[3], &f.cc_addrs).await?,
        reply_to: open_text(state, t, &m.id, n[4], &f.reply_to).await?,
        text: open_text(state, t, &m.id, n[5], &f.text_body).await?,
        html: open_text(state, t, &m.id, n[6], &f.html_body).await?,
        attachments,
        id: m.id,
        conversation_id: m.conversation_id,
        inbox_id: m.inbox_id,
        date_ms: m.internal_date_ms,
    })
}

/// `GET /v1/conversations/{id}/messages?cursor=&limit=`: oldest first.
/// What a delete or restore did (counts only).
#[derive(Debug, Serialize)]
pub struct LifecycleView {
    /// Messages soft-deleted or restored by this call.
    pub messages: u64,
    /// Restore only: soft-deleted messages past the grace period, left for the purge.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expired: Option<u64>,
}

/// The caller may change the conversation of `inbox_id`: 404 when it may not even read the
/// inbox, 403 when it only reads it (visibility without a `reply` or `configure` grant).
async fn require_writer(state: &ApiState, caller: &Caller, inbox_id: &str) -> Result<(), ApiError> {
    let access = caller.access(state).await?;
    match access.role(&caller.agent, inbox_id, now_ms()) {
        None => Err(ApiError::not_found("conversation")),
        Some(crate::access::Role::Read) => Err(ApiError::new(
            ErrorKind::PermissionDenied,
            "deleting or restoring mail needs a reply or configure grant on the inbox",
        )),
        Some(_) => Ok(()),
    }
}

fn lifecycle(state: &ApiState) -> crate::lifecycle::Lifecycle {
    crate::lifecycle::Lifecycle::new(state.store().clone(), state.search.index().clone())
}

/// `DELETE /v1/conversations/{id}`: soft delete (see the module docs).
pub async fn delete_conversation(
    State(state): State<ApiState>,
    caller: Caller,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<LifecycleView>, ApiError> {
    let id = path_id(id, "conversation")?;
    let tenant = caller.tenant();
    let Some(conversation) = state.store().get_conversation(tenant, &id).await? else {
        return Err(ApiError::not_found("conversation"));
    };
    require_writer(&state, &caller, &conversation.inbox_id).await?;
    let actor = format!("agent:{}", caller.agent.name);
    let outcome = lifecycle(&state)
        .delete_conversation(tenant, &id, &actor, now_ms())
        .await?;
    Ok(Json(LifecycleView {
        messages: outcome.messages,
        expired: None,
    }))
}

/// `POST /v1/conversations/{id}/restore`: restore within the grace period.
pub async fn restore_conversation(
    State(state): State<ApiState>,
    caller: Caller,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<LifecycleView>, ApiError> {
    let id = path_id(id, "conversation")?;
    let tenant = caller.tenant();
    let Some(inbox_id) = state.store().conversation_inbox(tenant, &id).await? else {
        return Err(ApiError::not_found("conversation"));
    };
    require_writer(&state, &caller, &inbox_id).await?;
    let actor = format!("agent:{}", caller.agent.name);
    let outcome = lifecycle(&state)
        .restore_conversation(tenant, &id, &actor, now_ms())
        .await?;
    Ok(Json(LifecycleView {
        messages: outcome.restored,
        expired: Some(outcome.expired),
    }))
}

pub async fn list_messages(
    State(state): State<ApiState>,
    caller: Caller,
    id: Result<Path<String>, PathRejection>,
    query: Result<Query<PageParams>, QueryRejection>,
) -> Result<Json<MessagePage>, ApiError> {
    let id = path_id(id, "conversation")?;
    let p = params(query)?;
    let limit = limit(p.limit.as_deref(), DEFAULT_MESSAGES, MAX_MESSAGES)?;
    let after = p
        .cursor
        .as_deref()
        .map(|c| decode_cursor(MESSAGES_CURSOR, c))
        .transpose()?;
    let tenant = caller.tenant();
    let Some(conversation) = state.store().get_conversation(tenant, &id).await? else {
        return Err(ApiError::not_found("conversation"));
    };
    let access = caller.access(&state).await?;
    if access
        .role(&caller.agent, &conversation.inbox_id, now_ms())
        .is_none()
    {
        return Err(ApiError::not_found("conversation"));
    }
    let mut ids = state
        .store()
        .list_conversation_message_ids(tenant, &id, after.as_ref(), limit + 1)
        .await?;
    let more = ids.len() > limit as usize;
    ids.truncate(limit as usize);
    let mut messages = Vec::with_capacity(ids.len());
    let mut last = None;
    for mid in &ids {
        // Deleted between the two reads: skipped.
        let Some(m) = state.store().get_message(tenant, mid).await? else {
            continue;
        };
        // The conversation's inbox was checked; a message is always in its inbox.
        if m.inbox_id != conversation.inbox_id {
            continue;
        }
        last = Some((m.internal_date_ms, m.id.clone()));
        messages.push(message_view(&state, m).await?);
    }
    let next = match (more, last) {
        (true, Some((date, id))) => Some(encode_cursor(MESSAGES_CURSOR, date, &id)),
        _ => None,
    };
    Ok(Json(MessagePage { messages, next }))
}

// --- GET /v1/messages/{id}/attachments/{ordinal} --------------------------------------

/// Content types answered as stored; anything else is `application/octet-stream`. Every
/// answer is a download (`Content-Disposition: attachment`, `nosniff`, a sandboxing CSP).
const SAFE_CONTENT_TYPES: [&str; 16] = [
    "application/pdf",
    "application/zip",
    "application/msword",
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
    "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
    "application/vnd.ms-excel",
    "image/png",
    "image/jpeg",
    "image/gif",
    "image/webp",
    "text/plain",
    "text/csv",
    "text/calendar",
    "audio/mpeg",
    "video/mp4",
    "application/octet-stream",
];

/// The Content-Type an attachment is served with.
pub fn safe_content_type(stored: &str) -> &'static str {
    let essence = stored
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    SAFE_CONTENT_TYPES
        .iter()
        .find(|t| **t == essence)
        .copied()
        .unwrap_or("application/octet-stream")
}

/// `attachment; filename="<ascii fallback>"; filename*=UTF-8''<percent-encoded>`: no
/// quotes, backslashes, path separators or control characters survive.
pub fn content_disposition(name: &str) -> String {
    let cleaned: String = name
        .chars()
        .filter(|c| !c.is_control())
        .map(|c| if matches!(c, '/' | '\\') { '_' } else { c })
        .take(200)
        .collect();
    let cleaned = cleaned.trim().trim_start_matches('.');
    let cleaned = if cleaned.is_empty() {
        "attachment"
    } else {
        cleaned
    };
    let ascii: String = cleaned
        .chars()
        .map(|c| {
            if (c.is_ascii_graphic() && c != '"' && c != '%') || c == ' ' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let mut encoded = String::new();
    for b in cleaned.bytes() {
        if b.is_ascii_alphanumeric() || b"!#$&+-.^_`|~".contains(&b) {
            encoded.push(char::from(b));
        } else {
            encoded.push_str(&format!("%{b:02X}"));
        }
    }
    format!("attachment; filename=\"{ascii}\"; filename*=UTF-8''{encoded}")
}

/// `GET /v1/messages/{id}/attachments/{ordinal}`.
pub async fn get_attachment(
    State(state): State<ApiState>,
    caller: Caller,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<Response, ApiError> {
    let not_found = || ApiError::not_found("attachment");
    let Ok(Path((id, ordinal))) = path else {
        return Err(not_found());
    };
    let ordinal: u32 = ordinal.parse().map_err(|_| not_found())?;
    if !is_id(&id) {
        return Err(not_found());
    }
    let tenant = caller.tenant();
    let Some(message) = state.store().get_message(tenant, &id).await? else {
        return Err(not_found());
    };
    let access = caller.access(&state).await?;
    if access
        .role(&caller.agent, &message.inbox_id, now_ms())
        .is_none()
    {
        return Err(not_found());
    }
    let Some(a) = message.attachments.iter().find(|a| a.ordinal == ordinal) else {
        return Err(not_found());
    };
    let names = NewAttachment::FIELD_NAMES;
    let name = open_text(&state, tenant, &a.id, names[0], &a.name).await?;
    let content_type = open_text(&state, tenant, &a.id, names[1], &a.content_type).await?;
    // Deleted since the read above: not found, like any deleted message.
    let Some(sealed) = state
        .store()
        .get_attachment_data(tenant, &id, ordinal)
        .await?
    else {
        return Err(not_found());
    };
    let data = open_bytes(&state, tenant, &a.id, names[3], &sealed).await?;
    let disposition = HeaderValue::from_str(&content_disposition(&name))
        .unwrap_or_else(|_| HeaderValue::from_static("attachment"));
    Ok((
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static(safe_content_type(&content_type)),
            ),
            (header::CONTENT_DISPOSITION, disposition),
        ],
        data,
    )
        .into_response())
}

// --- GET /v1/search --------------------------------------------------------------------

/// `GET /v1/search?q=&inbox=&cursor=&limit=`: through [`crate::search::service::SearchService::search`]
/// with the caller's readable inboxes (or the one named, if readable) as the restriction.
pub async fn search(
    State(state): State<ApiState>,
    caller: Caller,
    query: Result<Query<SearchParams>, QueryRejection>,
) -> Result<Json<crate::search::service::ResultPage>, ApiError> {
    let p = params(query)?;
    let q =
        p.q.as_deref()
            .filter(|q| !q.trim().is_empty())
            .ok_or_else(|| ApiError::invalid("q (the query) is required"))?;
    let limit = limit(p.limit.as_deref(), DEFAULT_HITS, MAX_HITS)?;
    let access = caller.access(&state).await?;
    let mut allowed = access.readable_ids(&caller.agent, now_ms());
    if let Some(inbox) = p.inbox.as_deref() {
        if !allowed.contains(inbox) {
            return Err(ApiError::not_found("inbox"));
        }
        allowed = BTreeSet::from([inbox.to_owned()]);
    }
    if allowed.is_empty() {
        return Ok(Json(crate::search::service::ResultPage::default()));
    }
    let page = state
        .search
        .search(
            caller.tenant(),
            &allowed,
            q,
            limit as usize,
            p.cursor.as_deref(),
        )
        .await?;
    Ok(Json(page))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_belong_to_one_listing() {
        let c = encode_cursor(CONVERSATIONS_CURSOR, 1_700_000_000_123, "abc-123");
        let back = decode_cursor(CONVERSATIONS_CURSOR, &c).unwrap();
        assert_eq!(back.date_ms, 1_700_000_000_123);
        assert_eq!(back.id, "abc-123");
        assert!(decode_cursor(MESSAGES_CURSOR, &c).is_err());
        for bad in ["", "!!", "AAAA", &"A".repeat(600)] {
            assert!(decode_cursor(CONVERSATIONS_CURSOR, bad).is_err(), "{bad}");
        }
        let odd = encode_cursor(CONVERSATIONS_CURSOR, 1, "a'b");
        assert!(decode_cursor(CONVERSATIONS_CURSOR, &odd).is_err());
    }

    #[test]
    fn limits_are_bounded() {
        assert_eq!(limit(None, 25, 100).unwrap(), 25);
        assert_eq!(limit(Some("100"), 25, 100).unwrap(), 100);
        for bad in ["0", "101", "-1", "x", ""] {
            assert!(limit(Some(bad), 25, 100).is_err(), "{bad}");
        }
    }

    #[test]
    fn bearer_tokens_need_the_scheme_and_one_header() {
        let mut h = HeaderMap::new();
        assert_eq!(bearer(&h), None);
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer abc"),
        );
        assert_eq!(bearer(&h), Some("abc"));
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("bearer  abc "),
        );
        assert_eq!(bearer(&h), Some("abc"));
        for bad in ["Basic abc", "Bearer", "Bearer ", "abc"] {
            h.insert(header::AUTHORIZATION, HeaderValue::from_static(bad));
            assert_eq!(bearer(&h), None, "{bad}");
        }
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer a"));
        h.append(header::AUTHORIZATION, HeaderValue::from_static("Bearer b"));
        assert_eq!(bearer(&h), None);
    }

    #[test]
    fn attachments_get_safe_types_and_dispositions() {
        assert_eq!(safe_content_type("image/PNG; name=x"), "image/png");
        assert_eq!(safe_content_type("text/html"), "application/octet-stream");
        assert_eq!(
            safe_content_type("image/svg+xml"),
            "application/octet-stream"
        );
        assert_eq!(safe_content_type(""), "application/octet-stream");
        let d = content_disposition("../../etc/pa\"ss\r\nwd é.txt");
        assert!(HeaderValue::from_str(&d).is_ok(), "{d}");
        assert!(d.starts_with("attachment; filename=\""), "{d}");
        assert!(
            !d.contains('/') && !d.contains('\\') && !d.contains('\r'),
            "{d}"
        );
        assert!(d.contains("filename*=UTF-8''"), "{d}");
        assert!(d.contains("%C3%A9"), "{d}");
        assert_eq!(
            content_disposition(""),
            "attachment; filename=\"attachment\"; filename*=UTF-8''attachment"
        );
    }

    #[test]
    fn path_ids_are_restricted_to_id_characters() {
        assert!(is_id("3f2b-aa_01"));
        for bad in ["", "a/b", "a b", "é", &"a".repeat(129)] {
            assert!(!is_id(bad), "{bad}");
        }
    }
}
