//! The agent API (`helpr-dataplane api`): HTTP/JSON and a WebSocket for helpdesk agents,
//! with per-inbox access enforced on every call, every search hit and every live event.
//!
//! | route | answer |
//! |---|---|
//! | `GET /v1/inboxes` | the inboxes the caller may read: id, address, status, visibility, team, the caller's role |
//! | `GET /v1/inboxes/{inbox}/conversations?cursor=&limit=` | conversations, newest first, with the subject, sender and snippet of the latest message |
//! | `GET /v1/conversations/{id}/messages?cursor=&limit=` | messages, oldest first: subject, from, to, cc, reply-to, date, sanitized HTML, text, attachment metadata |
//! | `DELETE /v1/conversations/{id}` | soft-deletes the conversation's messages (role `reply` or `configure`); gone from search before the answer; restorable for the grace period |
//! | `POST /v1/conversations/{id}/restore` | restores what was soft-deleted within the grace period (role `reply` or `configure`) |
//! | `GET /v1/messages/{id}/attachments/{ordinal}` | the attachment's bytes (`Content-Disposition: attachment`) |
//! | `GET /v1/search?q=&inbox=&cursor=&limit=` | search restricted to the caller's inboxes (in the index query), every hit re-checked |
//! | `GET /v1/events?after=` | WebSocket of live mail events (ids only), each checked against the caller's access when delivered ([`events`]) |
//! | `GET /healthz`, `/readyz`, `/metrics` | liveness, database reachability, counters (no authentication) |
//!
//! - **Authentication**: every `/v1` call needs `Authorization: Bearer <OIDC token>`
//!   ([`auth`]); otherwise 401 with `WWW-Authenticate: Bearer`. There is no unauthenticated
//!   mode.
//! - **Access**: each call reads the tenant's inboxes, settings and grants from the store and
//!   decides with [`crate::access`]: a revoked or expired grant is denied on the next call.
//!   An inbox, conversation, message or attachment the caller may not read answers 404,
//!   exactly like one that does not exist.
//! - **Errors**: `{"error": {"code", "message"}}`, status from [`error::ErrorKind::status`];
//!   messages are fixed texts, never content.
//! - **Headers** on every answer: `Cache-Control: no-store`, `X-Content-Type-Options:
//!   nosniff`, `Content-Security-Policy: default-src 'none'; frame-ancestors 'none';
//!   sandbox`, `X-Frame-Options: DENY`, `Referrer-Policy: no-referrer`,
//!   `Cross-Origin-Resource-Policy: same-origin`.
//! - **Pages**: `limit` is bounded (see [`routes`]); `cursor` is opaque (the `next` of the
//!   previous page).
//!
//! Adding an endpoint (e.g. conversation delete/restore once the lifecycle module lands):
//! add a route in [`router`], take [`routes::Caller`] as an extractor, load the
//! [`crate::access::AccessIndex`] with [`routes::Caller::access`], answer 404 when
//! [`crate::access::AccessIndex::role`] is `None` and 403 ([`error::ErrorKind::PermissionDenied`])
//! when the role is below what the action needs (e.g. [`crate::access::Role::Reply`]).

pub mod auth;
pub mod error;
pub mod events;
pub mod routes;

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::response::Response;
use axum::routing::get;

use crate::keyring::Keyring;
use crate::metrics::Counter;
use crate::search::service::SearchService;
use crate::store::Store;

pub use auth::AgentVerifier;
pub use error::{ApiError, ErrorKind};

/// Everything the agent API needs.
#[derive(Clone)]
pub struct ApiState {
    /// Opens sealed fields; its store is the database of record.
    pub keyring: Arc<Keyring>,
    /// Checked search over the tenant's index.
    pub search: Arc<SearchService>,
    /// Verifies agents' bearer tokens.
    pub verifier: Arc<AgentVerifier>,
    /// The live-event readers of this process, one per tenant with open sockets.
    events: Arc<events::EventHub>,
}

impl ApiState {
    pub fn new(
        keyring: Arc<Keyring>,
        search: Arc<SearchService>,
        verifier: Arc<AgentVerifier>,
    ) -> Self {
        let events = Arc::new(events::EventHub::new(keyring.store().clone()));
        Self {
            keyring,
            search,
            verifier,
            events,
        }
    }

    /// Live events read with these polling periods rather than the defaults.
    pub fn with_event_polling(mut self, polling: events::EventPolling) -> Self {
        self.events = Arc::new(events::EventHub::with_polling(
            self.store().clone(),
            polling,
        ));
        self
    }

    /// The database of record.
    pub fn store(&self) -> &Arc<dyn Store> {
        self.keyring.store()
    }
}

const REQUESTS: &str = "helpr_api_requests_total";
const REQUESTS_HELP: &str = "Agent API answers by outcome";
static OUT_OK: Counter = Counter::new(REQUESTS, "outcome=\"ok\"", REQUESTS_HELP);
static OUT_UNAUTHENTICATED: Counter =
    Counter::new(REQUESTS, "outcome=\"unauthenticated\"", REQUESTS_HELP);
static OUT_FORBIDDEN: Counter =
    Counter::new(REQUESTS, "outcome=\"permission_denied\"", REQUESTS_HELP);
static OUT_NOT_FOUND: Counter = Counter::new(REQUESTS, "outcome=\"not_found\"", REQUESTS_HELP);
static OUT_INVALID: Counter = Counter::new(REQUESTS, "outcome=\"invalid_argument\"", REQUESTS_HELP);
static OUT_UNAVAILABLE: Counter = Counter::new(REQUESTS, "outcome=\"unavailable\"", REQUESTS_HELP);
static OUT_OTHER: Counter = Counter::new(REQUESTS, "outcome=\"other\"", REQUESTS_HELP);

fn count(status: StatusCode) {
    let counter = match status.as_u16() {
        200..=299 => &OUT_OK,
        401 => &OUT_UNAUTHENTICATED,
        403 => &OUT_FORBIDDEN,
        404 => &OUT_NOT_FOUND,
        400 => &OUT_INVALID,
        503 => &OUT_UNAVAILABLE,
        _ => &OUT_OTHER,
    };
    counter.inc();
}

/// The security headers every answer carries (see the module docs).
pub const SECURITY_HEADERS: [(&str, &str); 6] = [
    ("cache-control", "no-store"),
    ("x-content-type-options", "nosniff"),
    (
        "content-security-policy",
        "default-src 'none'; frame-ancestors 'none'; sandbox",
    ),
    ("x-frame-options", "DENY"),
    ("referrer-policy", "no-referrer"),
    ("cross-origin-resource-policy", "same-origin"),
];

async fn security_headers(mut response: Response) -> Response {
    count(response.status());
    let headers = response.headers_mut();
    for (name, value) in SECURITY_HEADERS {
        headers.insert(
            HeaderName::from_static(name),
            HeaderValue::from_static(value),
        );
    }
    response
}

async fn readyz(axum::extract::State(state): axum::extract::State<ApiState>) -> Response {
    use axum::response::IntoResponse as _;
    match state.store().latest_control_seq().await {
        Ok(_) => (StatusCode::OK, "ready").into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "agent api not ready: database unreachable");
            (StatusCode::SERVICE_UNAVAILABLE, "database unavailable").into_response()
        }
    }
}

/// The agent API's routes (see the module docs), with the security headers on every answer.
pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/v1/inboxes", get(routes::list_inboxes))
        .route(
            "/v1/inboxes/{inbox}/conversations",
            get(routes::list_conversations),
        )
        .route(
            "/v1/conversations/{id}",
            axum::routing::delete(routes::delete_conversation),
        )
        .route(
            "/v1/conversations/{id}/restore",
            axum::routing::post(routes::restore_conversation),
        )
        .route(
            "/v1/conversations/{id}/messages",
            get(routes::list_messages),
        )
        .route(
            "/v1/messages/{id}/attachments/{ordinal}",
            get(routes::get_attachment),
        )
        .route("/v1/search", get(routes::search))
        .route("/v1/events", get(events::events))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route(
            "/metrics",
            get(|| async {
                (
                    [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
                    crate::metrics::render(),
                )
            }),
        )
        .fallback(|| async { ApiError::not_found("route") })
        .with_state(state)
        .layer(axum::middleware::map_response(security_headers))
}

/// Serves the agent API on `listener` until `shutdown` completes.
pub async fn serve(
    state: ApiState,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
}
