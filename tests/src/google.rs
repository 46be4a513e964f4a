//! A local double of the Google APIs the data plane uses: JWKS with real RS256 signing of
//! Pub/Sub push tokens, the OAuth token and revoke endpoints, and the Gmail history,
//! messages and profile endpoints serving real `.eml` bytes. Faults (429 with
//! `Retry-After`, 5xx) can be injected per path.
#![allow(clippy::expect_used)]

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::signature::{RSA_PKCS1_SHA256, RsaKeyPair};
use serde_json::{Value, json};

/// The test-only RSA key the double signs push tokens with (see
/// dataplane/tests/data/README-push-jwt-test-keys.md).
const SIGNING_KEY: &[u8] = include_bytes!("../../dataplane/tests/data/push_jwt_test_key_a.pk8.der");
const KID: &str = "double-key-1";

/// One message in the double's mailbox.
#[derive(Debug, Clone)]
pub struct Mail {
    pub id: String,
    pub thread_id: String,
    pub labels: Vec<String>,
    pub history_id: u64,
    pub internal_date_ms: i64,
    pub raw: Vec<u8>,
}

#[derive(Debug, Clone, Copy)]
struct Fault {
    status: u16,
    retry_after: Option<u64>,
}

#[derive(Default)]
struct DoubleState {
    email: String,
    history_id: u64,
    oldest_history_id: u64,
    mail: Vec<Mail>,
    next_id: u64,
    refresh_tokens: HashSet<String>,
    access_tokens: HashSet<String>,
    rotate_refresh_tokens: bool,
    faults: HashMap<String, VecDeque<Fault>>,
    requests: Vec<String>,
    revoked: Vec<String>,
    page_size: usize,
    latency_ms: u64,
    /// Pub/Sub topics that exist, and whether Gmail may publish to each.
    topics: HashMap<String, bool>,
    watch: Option<WatchState>,
    watch_calls: Vec<WatchState>,
}

/// A push watch the double took (users.watch), as requested.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchState {
    pub topic: String,
    pub label_ids: Vec<String>,
    pub label_filter_behavior: Option<String>,
    /// The expiration the double answered (Unix ms).
    pub expiration_ms: i64,
}

/// How long the double's watches last, like Gmail's: 7 days.
pub const WATCH_LIFETIME_MS: i64 = 7 * 24 * 3600 * 1000;

/// The running double.
pub struct GoogleDouble {
    pub base_url: String,
    state: Arc<Mutex<DoubleState>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for GoogleDouble {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type Shared = Arc<Mutex<DoubleState>>;

fn lock(s: &Shared) -> std::sync::MutexGuard<'_, DoubleState> {
    s.lock().unwrap_or_else(|p| p.into_inner())
}

impl GoogleDouble {
    /// Starts the double for the mailbox `email`, whose history starts at `history_id`.
    pub async fn start(email: &str, history_id: u64) -> anyhow::Result<Self> {
        let state = Arc::new(Mutex::new(DoubleState {
            email: email.to_string(),
            history_id,
            oldest_history_id: 0,
            next_id: 0x18c0_0000_0000,
            page_size: 2,
            ..DoubleState::default()
        }));
        let app = Router::new()
            .route("/oauth2/v3/certs", get(jwks))
            .route("/token", post(token))
            .route("/revoke", post(revoke))
            .route("/gmail/v1/users/me/history", get(history))
            .route("/gmail/v1/users/me/messages", get(search))
            .route("/gmail/v1/users/me/messages/{id}", get(message))
            .route("/gmail/v1/users/me/profile", get(profile))
            .route("/gmail/v1/users/me/watch", post(watch))
            .route("/gmail/v1/users/me/stop", post(stop))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let base_url = format!("http://{}", listener.local_addr()?);
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self {
            base_url,
            state,
            task,
        })
    }

    pub fn jwks_url(&self) -> String {
        format!("{}/oauth2/v3/certs", self.base_url)
    }

    pub fn token_url(&self) -> String {
        format!("{}/token", self.base_url)
    }

    /// Adds a message (as Gmail would on delivery); returns its id and history id.
    pub fn deliver(&self, raw: &[u8], labels: &[&str], internal_date_ms: i64) -> (String, u64) {
        self.deliver_in_thread(raw, labels, internal_date_ms, None)
    }

    pub fn deliver_in_thread(
        &self,
        raw: &[u8],
        labels: &[&str],
        internal_date_ms: i64,
        thread: Option<&str>,
    ) -> (String, u64) {
        let mut s = lock(&self.state);
        s.next_id += 1;
        s.history_id += 7; // history ids increase but are not contiguous
        let id = format!("{:x}", s.next_id);
        let history_id = s.history_id;
        s.mail.push(Mail {
            id: id.clone(),
            thread_id: thread.map(str::to_string).unwrap_or_else(|| id.clone()),
            labels: labels.iter().map(|l| l.to_string()).collect(),
            history_id,
            internal_date_ms,
            raw: raw.to_vec(),
        });
        (id, history_id)
    }

    /// The mailbox's current history id.
    pub fn history_id(&self) -> u64 {
        lock(&self.state).history_id
    }

    /// History below this id answers 404 (as Gmail does for ids older than about a week).
    pub fn expire_history_before(&self, history_id: u64) {
        lock(&self.state).oldest_history_id = history_id;
    }

    /// Accepts this refresh token at the token endpoint.
    pub fn add_refresh_token(&self, token: &str) {
        lock(&self.state).refresh_tokens.insert(token.to_string());
    }

    /// Every refresh returns a new refresh token (and retires the old one).
    pub fn rotate_refresh_tokens(&self, on: bool) {
        lock(&self.state).rotate_refresh_tokens = on;
    }

    /// Revokes every refresh and access token: refreshes now get `invalid_grant`.
    pub fn revoke_everything(&self) {
        let mut s = lock(&self.state);
        s.refresh_tokens.clear();
        s.access_tokens.clear();
    }

    /// Revokes one refresh token: refreshing with it now gets `invalid_grant`.
    pub fn revoke_refresh_token(&self, token: &str) {
        lock(&self.state).refresh_tokens.remove(token);
    }

    /// Delay of every Gmail message fetch, to widen windows in crash tests.
    pub fn set_fetch_latency_ms(&self, ms: u64) {
        lock(&self.state).latency_ms = ms;
    }

    /// Invalidates issued access tokens (they expired): Gmail answers 401 until a refresh.
    pub fn expire_access_tokens(&self) {
        lock(&self.state).access_tokens.clear();
    }

    /// The refresh tokens the token endpoint currently accepts.
    pub fn valid_refresh_tokens(&self) -> Vec<String> {
        lock(&self.state).refresh_tokens.iter().cloned().collect()
    }

    /// The next `times` requests whose path starts with `path_prefix` answer `status`.
    pub fn fail_next(
        &self,
        path_prefix: &str,
        status: u16,
        retry_after: Option<u64>,
        times: usize,
    ) {
        let mut s = lock(&self.state);
        let queue = s.faults.entry(path_prefix.to_string()).or_default();
        for _ in 0..times {
            queue.push_back(Fault {
                status,
                retry_after,
            });
        }
    }

    /// Requests received whose path starts with `path_prefix`.
    pub fn requests(&self, path_prefix: &str) -> usize {
        lock(&self.state)
            .requests
            .iter()
            .filter(|p| p.starts_with(path_prefix))
            .count()
    }

    /// Tokens revoked through the revoke endpoint.
    pub fn revoked(&self) -> Vec<String> {
        lock(&self.state).revoked.clone()
    }

    /// Makes a Pub/Sub topic exist; `publishable`: Gmail's service account may publish to
    /// it (otherwise users.watch answers 403). Unknown topics answer 404.
    pub fn add_topic(&self, topic: &str, publishable: bool) {
        lock(&self.state)
            .topics
            .insert(topic.to_string(), publishable);
    }

    /// The mailbox's current push watch, if any (stopped or never registered: `None`).
    pub fn watch(&self) -> Option<WatchState> {
        lock(&self.state).watch.clone()
    }

    /// Every users.watch call the double accepted, oldest first.
    pub fn watch_calls(&self) -> Vec<WatchState> {
        lock(&self.state).watch_calls.clone()
    }

    /// Page size of history and search answers (default 2, to exercise pagination).
    pub fn set_page_size(&self, n: usize) {
        lock(&self.state).page_size = n.max(1);
    }

    /// A Pub/Sub push token signed with the double's key (served by its JWKS).
    pub fn sign_push_token(&self, audience: &str, service_account: &str) -> String {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock after 1970")
            .as_secs();
        sign(&json!({
            "iss": "https://accounts.google.com",
            "aud": audience,
            "azp": "1234567890",
            "email": service_account,
            "email_verified": true,
            "sub": "1234567890",
            "iat": now,
            "exp": now + 3600,
        }))
    }

    /// A Pub/Sub push body announcing `history_id` for the mailbox.
    pub fn push_body(&self, history_id: u64, message_id: &str) -> Value {
        let email = lock(&self.state).email.clone();
        let data = base64::engine::general_purpose::STANDARD.encode(
            json!({"emailAddress": email, "historyId": history_id.to_string()}).to_string(),
        );
        json!({
            "message": {"data": data, "messageId": message_id, "publishTime": "2026-12-03T10:00:00Z", "attributes": {}},
            "subscription": "projects/helpr-test/subscriptions/gmail-push"
        })
    }
}

fn key_pair() -> RsaKeyPair {
    RsaKeyPair::from_pkcs8(SIGNING_KEY).expect("test key parses")
}

/// Signs claims as an RS256 JWT with the double's key.
pub fn sign(claims: &Value) -> String {
    let header = json!({"alg": "RS256", "kid": KID, "typ": "JWT"});
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let pair = key_pair();
    let mut sig = vec![0u8; pair.public().modulus_len()];
    pair.sign(
        &RSA_PKCS1_SHA256,
        &ring::rand::SystemRandom::new(),
        input.as_bytes(),
        &mut sig,
    )
    .expect("signing works");
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig))
}

/// Records the request and answers an injected fault, if one is queued for its path.
fn intercept(state: &Shared, uri: &Uri) -> Option<Response> {
    let mut s = lock(state);
    let path = uri.path().to_string();
    s.requests.push(path.clone());
    let fault = s
        .faults
        .iter_mut()
        .find(|(prefix, q)| path.starts_with(prefix.as_str()) && !q.is_empty())
        .and_then(|(_, q)| q.pop_front())?;
    let status = StatusCode::from_u16(fault.status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
    let mut response = (status, "injected fault").into_response();
    if let Some(secs) = fault.retry_after {
        response.headers_mut().insert(
            "retry-after",
            secs.to_string().parse().expect("header value"),
        );
    }
    Some(response)
}

fn authorized(state: &Shared, headers: &HeaderMap) -> bool {
    let token = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    token.is_some_and(|t| lock(state).access_tokens.contains(t))
}

fn gmail_error(code: u16, message: &str) -> Response {
    let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (
        status,
        axum::Json(json!({"error": {"code": code, "message": message}})),
    )
        .into_response()
}

async fn jwks(State(state): State<Shared>, uri: Uri) -> Response {
    if let Some(r) = intercept(&state, &uri) {
        return r;
    }
    let pair = key_pair();
    let public = pair.public();
    let components: ring::rsa::PublicKeyComponents<Vec<u8>> = public.into();
    let (n, e) = (components.n, components.e);
    let body = json!({"keys": [{"kty": "RSA", "alg": "RS256", "use": "sig", "kid": KID,
        "n": URL_SAFE_NO_PAD.encode(n), "e": URL_SAFE_NO_PAD.encode(e)}]});
    (
        [("cache-control", "public, max-age=3600")],
        axum::Json(body),
    )
        .into_response()
}

async fn token(State(state): State<Shared>, uri: Uri, body: String) -> Response {
    if let Some(r) = intercept(&state, &uri) {
        return r;
    }
    let form: HashMap<String, String> = url_form(&body);
    if form.get("grant_type").map(String::as_str) != Some("refresh_token") {
        return (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({"error": "unsupported_grant_type"})),
        )
            .into_response();
    }
    let presented = form.get("refresh_token").cloned().unwrap_or_default();
    let mut s = lock(&state);
    if !s.refresh_tokens.contains(&presented) {
        return (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({"error": "invalid_grant", "error_description": "Token has been expired or revoked."})),
        )
            .into_response();
    }
    let access = format!("ya29.{}", uuid::Uuid::new_v4().simple());
    s.access_tokens.insert(access.clone());
    let mut answer = json!({
        "access_token": access,
        "expires_in": 3599,
        "scope": "https://www.googleapis.com/auth/gmail.readonly",
        "token_type": "Bearer",
    });
    if s.rotate_refresh_tokens {
        let next = format!("1//rt-{}", uuid::Uuid::new_v4().simple());
        s.refresh_tokens.remove(&presented);
        s.refresh_tokens.insert(next.clone());
        answer["refresh_token"] = Value::String(next);
    }
    axum::Json(answer).into_response()
}

async fn revoke(
    State(state): State<Shared>,
    uri: Uri,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if let Some(r) = intercept(&state, &uri) {
        return r;
    }
    let mut s = lock(&state);
    match q.get("token") {
        Some(t) if s.refresh_tokens.remove(t) || s.access_tokens.remove(t) => {
            s.revoked.push(t.clone());
            StatusCode::OK.into_response()
        }
        _ => (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({"error": "invalid_token"})),
        )
            .into_response(),
    }
}

fn page<T: Clone>(items: &[T], token: Option<&String>, size: usize) -> (Vec<T>, Option<String>) {
    let start: usize = token.and_then(|t| t.parse().ok()).unwrap_or(0);
    let end = (start + size).min(items.len());
    let next = (end < items.len()).then(|| end.to_string());
    (items.get(start..end).unwrap_or_default().to_vec(), next)
}

async fn history(
    State(state): State<Shared>,
    uri: Uri,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if let Some(r) = intercept(&state, &uri) {
        return r;
    }
    if !authorized(&state, &headers) {
        return gmail_error(401, "Invalid Credentials");
    }
    let Some(start) = q.get("startHistoryId").and_then(|v| v.parse::<u64>().ok()) else {
        return gmail_error(400, "Invalid startHistoryId");
    };
    if q.get("historyTypes").map(String::as_str) != Some("messageAdded") {
        return gmail_error(400, "the data plane must ask for messageAdded only");
    }
    let s = lock(&state);
    if start < s.oldest_history_id {
        return gmail_error(404, "Requested entity was not found.");
    }
    let records: Vec<&Mail> = s.mail.iter().filter(|m| m.history_id > start).collect();
    let (records, next) = page(&records, q.get("pageToken"), s.page_size);
    let history: Vec<Value> = records
        .iter()
        .map(|m| {
            json!({"id": m.history_id.to_string(), "messages": [{"id": m.id, "threadId": m.thread_id}],
                   "messagesAdded": [{"message": {"id": m.id, "threadId": m.thread_id, "labelIds": m.labels}}]})
        })
        .collect();
    let mut body = json!({"history": history, "historyId": s.history_id.to_string()});
    if let Some(n) = next {
        body["nextPageToken"] = Value::String(n);
    }
    axum::Json(body).into_response()
}

async fn search(
    State(state): State<Shared>,
    uri: Uri,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if let Some(r) = intercept(&state, &uri) {
        return r;
    }
    if !authorized(&state, &headers) {
        return gmail_error(401, "Invalid Credentials");
    }
    let query = q.get("q").cloned().unwrap_or_default();
    let after_ms: i64 = query
        .split_whitespace()
        .find_map(|t| t.strip_prefix("after:"))
        .and_then(|v| v.parse::<i64>().ok())
        .map(|s| s * 1000)
        .unwrap_or(0);
    let excludes_drafts_and_sent = query.contains("-in:drafts") && query.contains("-in:sent");
    let s = lock(&state);
    let found: Vec<&Mail> = s
        .mail
        .iter()
        .rev() // Gmail lists newest first
        .filter(|m| m.internal_date_ms > after_ms)
        .filter(|m| {
            !excludes_drafts_and_sent || !m.labels.iter().any(|l| l == "DRAFT" || l == "SENT")
        })
        .collect();
    let (found, next) = page(&found, q.get("pageToken"), s.page_size);
    let messages: Vec<Value> = found
        .iter()
        .map(|m| json!({"id": m.id, "threadId": m.thread_id}))
        .collect();
    let mut body = json!({"messages": messages, "resultSizeEstimate": messages.len()});
    if let Some(n) = next {
        body["nextPageToken"] = Value::String(n);
    }
    axum::Json(body).into_response()
}

async fn message(
    State(state): State<Shared>,
    uri: Uri,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if let Some(r) = intercept(&state, &uri) {
        return r;
    }
    if !authorized(&state, &headers) {
        return gmail_error(401, "Invalid Credentials");
    }
    if q.get("format").map(String::as_str) != Some("raw") {
        return gmail_error(400, "the data plane must ask for format=raw");
    }
    let latency = lock(&state).latency_ms;
    if latency > 0 {
        tokio::time::sleep(std::time::Duration::from_millis(latency)).await;
    }
    let s = lock(&state);
    let Some(m) = s.mail.iter().find(|m| m.id == id) else {
        return gmail_error(404, "Requested entity was not found.");
    };
    axum::Json(json!({
        "id": m.id, "threadId": m.thread_id, "labelIds": m.labels,
        "historyId": m.history_id.to_string(), "internalDate": m.internal_date_ms.to_string(),
        "sizeEstimate": m.raw.len(), "raw": URL_SAFE_NO_PAD.encode(&m.raw),
    }))
    .into_response()
}

async fn profile(State(state): State<Shared>, uri: Uri, headers: HeaderMap) -> Response {
    if let Some(r) = intercept(&state, &uri) {
        return r;
    }
    if !authorized(&state, &headers) {
        return gmail_error(401, "Invalid Credentials");
    }
    let s = lock(&state);
    axum::Json(
        json!({"emailAddress": s.email, "historyId": s.history_id.to_string(),
        "messagesTotal": s.mail.len(), "threadsTotal": s.mail.len()}),
    )
    .into_response()
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// users.watch: checks the request body the way Gmail documents it (topicName required and
/// a full topic name; labelIds a list of strings; labelFilterBehavior include or exclude),
/// then the topic (404 unknown, 403 not publishable), and answers historyId + expiration.
async fn watch(
    State(state): State<Shared>,
    uri: Uri,
    headers: HeaderMap,
    body: String,
) -> Response {
    if let Some(r) = intercept(&state, &uri) {
        return r;
    }
    if !authorized(&state, &headers) {
        return gmail_error(401, "Invalid Credentials");
    }
    if !headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"))
    {
        return gmail_error(400, "Invalid JSON payload: expected application/json");
    }
    let Ok(request) = serde_json::from_str::<Value>(&body) else {
        return gmail_error(400, "Invalid JSON payload received.");
    };
    let Some(fields) = request.as_object() else {
        return gmail_error(400, "Invalid JSON payload received.");
    };
    if let Some(unknown) = fields.keys().find(|k| {
        ![
            "topicName",
            "labelIds",
            "labelFilterBehavior",
            "labelFilterAction",
        ]
        .contains(&k.as_str())
    }) {
        return gmail_error(
            400,
            &format!("Invalid JSON payload received. Unknown name \"{unknown}\""),
        );
    }
    let Some(topic) = fields.get("topicName").and_then(Value::as_str) else {
        return gmail_error(400, "Invalid topicName");
    };
    let well_formed = topic
        .strip_prefix("projects/")
        .and_then(|rest| rest.split_once("/topics/"))
        .is_some_and(|(p, t)| !p.is_empty() && !t.is_empty() && !t.contains('/'));
    if !well_formed {
        return gmail_error(400, "Invalid topicName does not match projects/*/topics/*");
    }
    let label_ids: Vec<String> = match fields.get("labelIds") {
        None => Vec::new(),
        Some(Value::Array(items)) => match items
            .iter()
            .map(|v| v.as_str().map(String::from))
            .collect::<Option<Vec<_>>>()
        {
            Some(ids) => ids,
            None => return gmail_error(400, "Invalid value at 'label_ids'"),
        },
        Some(_) => return gmail_error(400, "Invalid value at 'label_ids'"),
    };
    let behavior = match fields.get("labelFilterBehavior") {
        None => None,
        Some(Value::String(b)) if b == "include" || b == "exclude" => Some(b.clone()),
        Some(_) => return gmail_error(400, "Invalid value at 'label_filter_behavior'"),
    };
    let mut s = lock(&state);
    match s.topics.get(topic) {
        None => return gmail_error(404, "Resource not found"),
        Some(false) => return gmail_error(403, "User not authorized to perform this action."),
        Some(true) => {}
    }
    let taken = WatchState {
        topic: topic.to_string(),
        label_ids,
        label_filter_behavior: behavior,
        expiration_ms: now_ms() + WATCH_LIFETIME_MS,
    };
    s.watch = Some(taken.clone());
    s.watch_calls.push(taken.clone());
    axum::Json(json!({
        "historyId": s.history_id.to_string(),
        "expiration": taken.expiration_ms.to_string(),
    }))
    .into_response()
}

/// users.stop: ends the watch; an empty answer, like Gmail's.
async fn stop(State(state): State<Shared>, uri: Uri, headers: HeaderMap) -> Response {
    if let Some(r) = intercept(&state, &uri) {
        return r;
    }
    if !authorized(&state, &headers) {
        return gmail_error(401, "Invalid Credentials");
    }
    lock(&state).watch = None;
    StatusCode::NO_CONTENT.into_response()
}

fn url_form(body: &str) -> HashMap<String, String> {
    body.split('&')
        .filter_map(|pair| {
            let (k, v) = pair.split_once('=')?;
            Some((percent_decode(k), percent_decode(v)))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
