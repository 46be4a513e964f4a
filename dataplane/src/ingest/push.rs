//! `POST /v1/push/gmail`: Gmail notifications delivered by Google Cloud Pub/Sub push.
//!
//! Order of work, so that nothing unauthenticated is decoded or stored:
//!
//! 1. `Authorization: Bearer` present and at most 16 KiB, checked before any decoding.
//! 2. Token verified ([`Verifier`]). Failure → 401 with a generic body, a `warn` log and a
//!    counter carrying only the reason. Signing keys unavailable → 503 (Pub/Sub redelivers).
//! 3. Body read, at most 64 KiB (413 above).
//! 4. Body parsed ([`parse_push_body`]). Unparseable → 204 and a counter: a poison message
//!    must not be redelivered forever, and nothing is stored.
//! 5. [`PushSink::record`]. Every outcome → 204 with its own counter, except
//!    [`SinkError::Unavailable`] → 503 so that Pub/Sub redelivers.
//!
//! Logs and counters never carry the token, a claim, an address or a message id.

use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use base64::Engine as _;
use base64::alphabet;
use base64::engine::DecodePaddingMode;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use serde::Deserialize;

use super::jwt::{JwtError, MAX_TOKEN_BYTES, Verifier};
use crate::metrics::Counter;

/// The route this module serves.
pub const PUSH_PATH: &str = "/v1/push/gmail";
/// Largest request body read.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
const MAX_MESSAGE_ID_BYTES: usize = 256;
const MAX_EMAIL_BYTES: usize = 320;
const MAX_PUBLISH_TIME_BYTES: usize = 64;

/// A Gmail notification as delivered by Pub/Sub, after authentication and parsing.
#[derive(Clone, PartialEq, Eq)]
pub struct GmailNotification {
    /// The Gmail address of the watched mailbox, as Gmail sent it.
    pub email_address: String,
    pub history_id: u64,
    /// Pub/Sub's `messageId`: the deduplication key of a delivery.
    pub pubsub_message_id: String,
    /// Pub/Sub's `publishTime` (RFC 3339), when present.
    pub publish_time: Option<String>,
    /// The verified token's audience: a push reaches only inboxes that name this audience
    /// (or name none).
    pub audience: String,
}

impl fmt::Debug for GmailNotification {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GmailNotification")
            .field("email_address", &"<redacted>")
            .field("history_id", &self.history_id)
            .field("pubsub_message_id", &self.pubsub_message_id)
            .field("publish_time", &self.publish_time)
            .field("audience", &self.audience)
            .finish()
    }
}

/// What [`PushSink::record`] did with a notification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordOutcome {
    /// A sync job is durably recorded.
    Recorded,
    /// The historyId is not above the inbox's high-water mark: no job.
    Replay,
    /// This Pub/Sub messageId was recorded before: no second job.
    Duplicate,
    /// No inbox with this address.
    UnknownInbox,
    /// The inbox exists but is disconnected (or needs reconnection).
    Disconnected,
    /// Every connected inbox with this address names another push audience than the
    /// token's: the push came through a subscription that is not theirs.
    OtherAudience,
}

/// Why a notification could not be recorded now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SinkError {
    /// The database or the KMS is down: answer 503 so that Pub/Sub redelivers.
    #[error("database or kms unavailable")]
    Unavailable,
}

/// Where authenticated notifications go; implemented by the data plane over its store.
#[async_trait]
pub trait PushSink: Send + Sync + 'static {
    /// Records a sync job for the connected inbox(es) with this Gmail address, unless the
    /// historyId is not above the inbox's high-water mark or this Pub/Sub messageId was
    /// already recorded.
    async fn record(&self, notification: &GmailNotification) -> Result<RecordOutcome, SinkError>;
}

/// Everything the push route needs.
#[derive(Clone)]
pub struct PushState {
    pub verifier: Arc<Verifier>,
    pub sink: Arc<dyn PushSink>,
}

/// The push route: `POST /v1/push/gmail`.
pub fn router(state: PushState) -> Router {
    Router::new()
        .route(PUSH_PATH, post(push_gmail))
        .with_state(state)
}

const REQUESTS: &str = "helpr_push_requests_total";
const REQUESTS_HELP: &str = "Pub/Sub push requests by outcome";
const REJECTED: &str = "helpr_push_rejected_total";
const REJECTED_HELP: &str = "Pub/Sub push requests rejected as unauthenticated, by reason";

static OUT_RECORDED: Counter = Counter::new(REQUESTS, "outcome=\"recorded\"", REQUESTS_HELP);
static OUT_REPLAY: Counter = Counter::new(REQUESTS, "outcome=\"replay\"", REQUESTS_HELP);
static OUT_DUPLICATE: Counter = Counter::new(REQUESTS, "outcome=\"duplicate\"", REQUESTS_HELP);
static OUT_UNKNOWN_INBOX: Counter =
    Counter::new(REQUESTS, "outcome=\"unknown_inbox\"", REQUESTS_HELP);
static OUT_DISCONNECTED: Counter =
    Counter::new(REQUESTS, "outcome=\"disconnected\"", REQUESTS_HELP);
static OUT_OTHER_AUDIENCE: Counter =
    Counter::new(REQUESTS, "outcome=\"other_audience\"", REQUESTS_HELP);
static OUT_UNPARSEABLE: Counter = Counter::new(REQUESTS, "outcome=\"unparseable\"", REQUESTS_HELP);
static OUT_UNAUTHENTICATED: Counter =
    Counter::new(REQUESTS, "outcome=\"unauthenticated\"", REQUESTS_HELP);
static OUT_BODY_TOO_LARGE: Counter =
    Counter::new(REQUESTS, "outcome=\"body_too_large\"", REQUESTS_HELP);
static OUT_SINK_UNAVAILABLE: Counter =
    Counter::new(REQUESTS, "outcome=\"sink_unavailable\"", REQUESTS_HELP);
static OUT_JWKS_UNAVAILABLE: Counter =
    Counter::new(REQUESTS, "outcome=\"jwks_unavailable\"", REQUESTS_HELP);

macro_rules! rejection_counters {
    ($($name:ident = $reason:literal),* $(,)?) => {
        $(static $name: Counter =
            Counter::new(REJECTED, concat!("reason=\"", $reason, "\""), REJECTED_HELP);)*
    };
}

rejection_counters! {
    REJ_MISSING_TOKEN = "missing_token",
    REJ_TOO_LARGE = "too_large",
    REJ_MALFORMED = "malformed",
    REJ_DUPLICATE_KEY = "duplicate_key",
    REJ_UNSUPPORTED_ALG = "unsupported_alg",
    REJ_CRIT_HEADER = "crit_header",
    REJ_MISSING_KID = "missing_kid",
    REJ_UNKNOWN_KID = "unknown_kid",
    REJ_BAD_SIGNATURE = "bad_signature",
    REJ_WRONG_ISSUER = "wrong_issuer",
    REJ_WRONG_AUDIENCE = "wrong_audience",
    REJ_WRONG_EMAIL = "wrong_email",
    REJ_EMAIL_NOT_VERIFIED = "email_not_verified",
    REJ_BAD_TIME_CLAIM = "bad_time_claim",
    REJ_EXPIRED = "expired",
    REJ_NOT_YET_VALID = "not_yet_valid",
    REJ_ISSUED_IN_FUTURE = "issued_in_future",
    REJ_TOO_OLD = "too_old",
}

/// Why a request is unauthenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AuthFailure {
    /// No `Authorization: Bearer <token>` header (or more than one, or not ASCII).
    MissingToken,
    Token(JwtError),
}

impl AuthFailure {
    fn reason(self) -> &'static str {
        match self {
            AuthFailure::MissingToken => "missing_token",
            AuthFailure::Token(e) => e.reason(),
        }
    }

    fn counter(self) -> &'static Counter {
        match self {
            AuthFailure::MissingToken => &REJ_MISSING_TOKEN,
            AuthFailure::Token(e) => match e {
                JwtError::TooLarge => &REJ_TOO_LARGE,
                JwtError::Malformed => &REJ_MALFORMED,
                JwtError::DuplicateKey => &REJ_DUPLICATE_KEY,
                JwtError::UnsupportedAlg => &REJ_UNSUPPORTED_ALG,
                JwtError::CritHeader => &REJ_CRIT_HEADER,
                JwtError::MissingKid => &REJ_MISSING_KID,
                JwtError::UnknownKid => &REJ_UNKNOWN_KID,
                JwtError::BadSignature => &REJ_BAD_SIGNATURE,
                JwtError::WrongIssuer => &REJ_WRONG_ISSUER,
                JwtError::WrongAudience => &REJ_WRONG_AUDIENCE,
                JwtError::WrongEmail => &REJ_WRONG_EMAIL,
                JwtError::EmailNotVerified => &REJ_EMAIL_NOT_VERIFIED,
                JwtError::BadTimeClaim => &REJ_BAD_TIME_CLAIM,
                JwtError::Expired => &REJ_EXPIRED,
                JwtError::NotYetValid => &REJ_NOT_YET_VALID,
                JwtError::IssuedInFuture => &REJ_ISSUED_IN_FUTURE,
                JwtError::TooOld => &REJ_TOO_OLD,
                // Not a rejection (503); counted as an outcome, never reaches here.
                JwtError::JwksUnavailable => &OUT_JWKS_UNAVAILABLE,
            },
        }
    }
}

/// The bearer token, checked for size before anything else looks at it.
fn bearer_token(headers: &HeaderMap) -> Result<&str, AuthFailure> {
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let (Some(value), None) = (values.next(), values.next()) else {
        return Err(AuthFailure::MissingToken);
    };
    if value.len() > MAX_TOKEN_BYTES + "Bearer ".len() {
        return Err(AuthFailure::Token(JwtError::TooLarge));
    }
    let value = value.to_str().map_err(|_| AuthFailure::MissingToken)?;
    let Some((scheme, token)) = value.split_once(' ') else {
        return Err(AuthFailure::MissingToken);
    };
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() {
        return Err(AuthFailure::MissingToken);
    }
    if token.len() > MAX_TOKEN_BYTES {
        return Err(AuthFailure::Token(JwtError::TooLarge));
    }
    Ok(token)
}

fn json_error(status: StatusCode, error: &'static str) -> Response {
    let body = format!(r#"{{"error":"{error}"}}"#);
    (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response()
}

fn unauthenticated(failure: AuthFailure) -> Response {
    OUT_UNAUTHENTICATED.inc();
    failure.counter().inc();
    tracing::warn!(reason = failure.reason(), "push rejected");
    let mut response = json_error(StatusCode::UNAUTHORIZED, "unauthenticated");
    response
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}

fn body_too_large() -> Response {
    OUT_BODY_TOO_LARGE.inc();
    tracing::warn!("push body too large");
    json_error(StatusCode::PAYLOAD_TOO_LARGE, "payload too large")
}

async fn push_gmail(State(state): State<PushState>, headers: HeaderMap, body: Body) -> Response {
    let token = match bearer_token(&headers) {
        Ok(token) => token,
        Err(failure) => return unauthenticated(failure),
    };
    let audience = match state.verifier.verify(token, SystemTime::now()).await {
        Ok(verified) => verified.audience,
        Err(JwtError::JwksUnavailable) => {
            OUT_JWKS_UNAVAILABLE.inc();
            tracing::warn!(
                reason = JwtError::JwksUnavailable.reason(),
                "push deferred: signing keys unavailable"
            );
            return json_error(StatusCode::SERVICE_UNAVAILABLE, "unavailable");
        }
        Err(e) => return unauthenticated(AuthFailure::Token(e)),
    };

    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > MAX_BODY_BYTES as u64) {
        return body_too_large();
    }
    // The only read failures are exceeding the limit and a client that went away (which
    // sees no answer anyway).
    let Ok(bytes) = axum::body::to_bytes(body, MAX_BODY_BYTES).await else {
        return body_too_large();
    };

    let notification = match parse_push_body(&bytes) {
        Ok(n) => GmailNotification { audience, ..n },
        Err(e) => {
            OUT_UNPARSEABLE.inc();
            tracing::warn!(reason = e.reason(), "push body unparseable, acknowledged");
            return StatusCode::NO_CONTENT.into_response();
        }
    };

    match state.sink.record(&notification).await {
        Ok(outcome) => {
            let (counter, name) = match outcome {
                RecordOutcome::Recorded => (&OUT_RECORDED, "recorded"),
                RecordOutcome::Replay => (&OUT_REPLAY, "replay"),
                RecordOutcome::Duplicate => (&OUT_DUPLICATE, "duplicate"),
                RecordOutcome::UnknownInbox => (&OUT_UNKNOWN_INBOX, "unknown_inbox"),
                RecordOutcome::Disconnected => (&OUT_DISCONNECTED, "disconnected"),
                RecordOutcome::OtherAudience => (&OUT_OTHER_AUDIENCE, "other_audience"),
            };
            counter.inc();
            tracing::debug!(outcome = name, "push acknowledged");
            StatusCode::NO_CONTENT.into_response()
        }
        Err(SinkError::Unavailable) => {
            OUT_SINK_UNAVAILABLE.inc();
            tracing::warn!("push deferred: store unavailable");
            json_error(StatusCode::SERVICE_UNAVAILABLE, "unavailable")
        }
    }
}

/// Why an authenticated push body was not understood.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PushBodyError {
    #[error("body is not a pub/sub push envelope")]
    Envelope,
    #[error("message id missing, too long or inconsistent")]
    MessageId,
    #[error("message data missing or not base64")]
    Data,
    #[error("message data is not a gmail notification")]
    Notification,
    #[error("email address missing or invalid")]
    EmailAddress,
    #[error("history id missing or not a decimal u64")]
    HistoryId,
}

impl PushBodyError {
    pub const fn reason(self) -> &'static str {
        match self {
            PushBodyError::Envelope => "envelope",
            PushBodyError::MessageId => "message_id",
            PushBodyError::Data => "data",
            PushBodyError::Notification => "notification",
            PushBodyError::EmailAddress => "email_address",
            PushBodyError::HistoryId => "history_id",
        }
    }
}

#[derive(Deserialize)]
struct Envelope {
    message: PubsubMessage,
}

#[derive(Deserialize)]
struct PubsubMessage {
    data: Option<String>,
    #[serde(rename = "messageId")]
    message_id_camel: Option<String>,
    #[serde(rename = "message_id")]
    message_id_snake: Option<String>,
    #[serde(rename = "publishTime")]
    publish_time_camel: Option<String>,
    #[serde(rename = "publish_time")]
    publish_time_snake: Option<String>,
}

#[derive(Deserialize)]
struct GmailData {
    #[serde(rename = "emailAddress")]
    email_address: Option<String>,
    #[serde(rename = "historyId")]
    history_id: Option<HistoryIdField>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum HistoryIdField {
    Text(String),
    Number(u64),
}

/// Standard base64 (Pub/Sub's `data`), with or without padding.
const DATA_B64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Parses a Pub/Sub push body carrying a Gmail notification. Both the camelCase and the
/// snake_case field names Pub/Sub sends are accepted (when both are present they must
/// agree); other fields (`attributes`, `subscription`, ...) are ignored.
pub fn parse_push_body(body: &[u8]) -> Result<GmailNotification, PushBodyError> {
    let envelope: Envelope = serde_json::from_slice(body).map_err(|_| PushBodyError::Envelope)?;
    let m = envelope.message;

    let pubsub_message_id = match (m.message_id_camel, m.message_id_snake) {
        (Some(a), Some(b)) if a != b => return Err(PushBodyError::MessageId),
        (Some(id), _) | (None, Some(id)) => id,
        (None, None) => return Err(PushBodyError::MessageId),
    };
    if pubsub_message_id.is_empty() || pubsub_message_id.len() > MAX_MESSAGE_ID_BYTES {
        return Err(PushBodyError::MessageId);
    }
    let publish_time = m
        .publish_time_camel
        .or(m.publish_time_snake)
        .filter(|t| !t.is_empty() && t.len() <= MAX_PUBLISH_TIME_BYTES);

    let data = m.data.ok_or(PushBodyError::Data)?;
    let data = DATA_B64
        .decode(data.as_bytes())
        .map_err(|_| PushBodyError::Data)?;
    let gmail: GmailData =
        serde_json::from_slice(&data).map_err(|_| PushBodyError::Notification)?;

    let email_address = gmail
        .email_address
        .filter(|a| !a.is_empty() && a.len() <= MAX_EMAIL_BYTES && a.contains('@'))
        .ok_or(PushBodyError::EmailAddress)?;
    let history_id = match gmail.history_id {
        Some(HistoryIdField::Number(n)) => n,
        Some(HistoryIdField::Text(s))
            if !s.is_empty() && s.len() <= 20 && s.bytes().all(|b| b.is_ascii_digit()) =>
        {
            s.parse::<u64>().map_err(|_| PushBodyError::HistoryId)?
        }
        _ => return Err(PushBodyError::HistoryId),
    };

    Ok(GmailNotification {
        email_address,
        history_id,
        pubsub_message_id,
        publish_time,
        audience: String::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::STANDARD;
    use serde_json::json;

    fn body(data: &serde_json::Value, message: serde_json::Value) -> Vec<u8> {
        let mut m = json!({"data": STANDARD.encode(data.to_string())});
        for (k, v) in message.as_object().unwrap() {
            m[k] = v.clone();
        }
        json!({"message": m, "subscription": "projects/p/subscriptions/s"})
            .to_string()
            .into_bytes()
    }

    #[test]
    fn a_pubsub_gmail_push_body_parses() {
        let data = json!({"emailAddress": "user@example.com", "historyId": "9876543210"});
        let n = parse_push_body(&body(
            &data,
            json!({"messageId": "42", "message_id": "42", "publishTime": "2024-01-01T00:00:00Z",
                   "attributes": {"a": "b"}}),
        ))
        .unwrap();
        assert_eq!(n.email_address, "user@example.com");
        assert_eq!(n.history_id, 9_876_543_210);
        assert_eq!(n.pubsub_message_id, "42");
        assert_eq!(n.publish_time.as_deref(), Some("2024-01-01T00:00:00Z"));

        let numeric = json!({"emailAddress": "user@example.com", "historyId": 7});
        let n = parse_push_body(&body(
            &numeric,
            json!({"message_id": "m", "publish_time": "t"}),
        ))
        .unwrap();
        assert_eq!((n.history_id, n.pubsub_message_id.as_str()), (7, "m"));
        assert_eq!(n.publish_time.as_deref(), Some("t"));
    }

    #[test]
    fn unpadded_base64_data_is_accepted() {
        let data = STANDARD.encode(r#"{"emailAddress":"u@x.y","historyId":"1"}"#);
        let data = data.trim_end_matches('=');
        let raw = json!({"message": {"data": data, "messageId": "1"}}).to_string();
        assert_eq!(parse_push_body(raw.as_bytes()).unwrap().history_id, 1);
    }

    #[test]
    fn malformed_bodies_are_classified() {
        let good = json!({"emailAddress": "user@example.com", "historyId": "1"});
        let id = json!({"messageId": "1"});
        let cases: Vec<(Vec<u8>, PushBodyError)> = vec![
            (b"not json".to_vec(), PushBodyError::Envelope),
            (br#"{"subscription":"s"}"#.to_vec(), PushBodyError::Envelope),
            (body(&good, json!({})), PushBodyError::MessageId),
            (
                body(&good, json!({"messageId": ""})),
                PushBodyError::MessageId,
            ),
            (
                body(&good, json!({"messageId": "1", "message_id": "2"})),
                PushBodyError::MessageId,
            ),
            (
                json!({"message": {"messageId": "1"}})
                    .to_string()
                    .into_bytes(),
                PushBodyError::Data,
            ),
            (
                json!({"message": {"messageId": "1", "data": "!!"}})
                    .to_string()
                    .into_bytes(),
                PushBodyError::Data,
            ),
            (body(&json!([1]), id.clone()), PushBodyError::Notification),
            (
                body(&json!({"historyId": "1"}), id.clone()),
                PushBodyError::EmailAddress,
            ),
            (
                body(
                    &json!({"emailAddress": "nobody", "historyId": "1"}),
                    id.clone(),
                ),
                PushBodyError::EmailAddress,
            ),
            (
                body(
                    &json!({"emailAddress": "a@b", "historyId": "+1"}),
                    id.clone(),
                ),
                PushBodyError::HistoryId,
            ),
            (
                body(
                    &json!({"emailAddress": "a@b", "historyId": "-1"}),
                    id.clone(),
                ),
                PushBodyError::HistoryId,
            ),
            (
                body(
                    &json!({"emailAddress": "a@b", "historyId": "99999999999999999999"}),
                    id.clone(),
                ),
                PushBodyError::HistoryId,
            ),
            (
                body(
                    &json!({"emailAddress": "a@b", "historyId": 1.5}),
                    id.clone(),
                ),
                PushBodyError::Notification,
            ),
            (
                body(&json!({"emailAddress": "a@b"}), id),
                PushBodyError::HistoryId,
            ),
        ];
        for (raw, want) in cases {
            assert_eq!(
                parse_push_body(&raw).err(),
                Some(want),
                "{}",
                String::from_utf8_lossy(&raw)
            );
        }
    }

    #[test]
    fn notification_debug_hides_the_address() {
        let n = GmailNotification {
            email_address: "secret@example.com".into(),
            history_id: 1,
            pubsub_message_id: "m".into(),
            publish_time: None,
            audience: "https://helpr.test/push".into(),
        };
        assert!(!format!("{n:?}").contains("secret"));
    }

    #[test]
    fn every_rejection_reason_has_a_counter_with_that_label() {
        let failures = std::iter::once(AuthFailure::MissingToken).chain(
            JwtError::ALL
                .into_iter()
                .filter(|e| !e.is_unavailable())
                .map(AuthFailure::Token),
        );
        for failure in failures {
            failure.counter().inc();
            let line = format!("{REJECTED}{{reason=\"{}\"}}", failure.reason());
            assert!(crate::metrics::render().contains(&line), "{line}");
        }
    }

    #[test]
    fn bearer_token_is_size_checked_before_decoding() {
        let mut h = HeaderMap::new();
        assert_eq!(bearer_token(&h), Err(AuthFailure::MissingToken));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic abc"));
        assert_eq!(bearer_token(&h), Err(AuthFailure::MissingToken));
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("bearer a.b.c"),
        );
        assert_eq!(bearer_token(&h), Ok("a.b.c"));
        let big = format!("Bearer {}", "a".repeat(MAX_TOKEN_BYTES + 1));
        h.insert(header::AUTHORIZATION, HeaderValue::from_str(&big).unwrap());
        assert_eq!(
            bearer_token(&h),
            Err(AuthFailure::Token(JwtError::TooLarge))
        );
        h.append(header::AUTHORIZATION, HeaderValue::from_static("Bearer x"));
        assert_eq!(bearer_token(&h), Err(AuthFailure::MissingToken));
    }
}
