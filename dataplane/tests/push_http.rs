//! `POST /v1/push/gmail` over real HTTP: the router on 127.0.0.1:0, a local JWKS endpoint
//! serving real RSA test keys (tests/data, test-only), RS256 tokens signed with ring, and an
//! in-memory [`PushSink`].
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use ring::rand::SystemRandom;
use ring::signature::{self, RsaKeyPair, RsaPublicKeyComponents};
use serde_json::{Value, json};

use helpr_dataplane::ingest::jwt::{PushAuthConfig, Verifier};
use helpr_dataplane::ingest::push::{
    GmailNotification, PushSink, PushState, RecordOutcome, SinkError, router,
};

const AUDIENCE: &str = "https://helpr.test/v1/push/gmail";
const SERVICE_ACCOUNT: &str = "gmail-push@helpr-test.iam.gserviceaccount.com";
const INBOX: &str = "support@acme.test";
const UNAUTHENTICATED_BODY: &str = r#"{"error":"unauthenticated"}"#;

// ---------------------------------------------------------------------------------------
// Keys and tokens

struct TestKey {
    kid: &'static str,
    pair: RsaKeyPair,
}

impl TestKey {
    fn load(kid: &'static str, der: &[u8]) -> Self {
        Self {
            kid,
            pair: RsaKeyPair::from_pkcs8(der).unwrap(),
        }
    }
    fn a() -> Self {
        Self::load("key-a", include_bytes!("data/push_jwt_test_key_a.pk8.der"))
    }
    fn b() -> Self {
        Self::load("key-b", include_bytes!("data/push_jwt_test_key_b.pk8.der"))
    }
    fn attacker() -> Self {
        Self::load(
            "attacker",
            include_bytes!("data/push_jwt_test_key_attacker.pk8.der"),
        )
    }

    fn jwk(&self) -> Value {
        let c = RsaPublicKeyComponents::<Vec<u8>>::from(self.pair.public());
        json!({
            "kty": "RSA", "alg": "RS256", "use": "sig", "kid": self.kid,
            "n": URL_SAFE_NO_PAD.encode(&c.n), "e": URL_SAFE_NO_PAD.encode(&c.e),
        })
    }

    fn sign_with(&self, alg: &'static dyn signature::RsaEncoding, input: &str) -> String {
        let mut sig = vec![0; self.pair.public().modulus_len()];
        self.pair
            .sign(alg, &SystemRandom::new(), input.as_bytes(), &mut sig)
            .unwrap();
        URL_SAFE_NO_PAD.encode(sig)
    }

    /// A compact JWS over the exact header and claims JSON text given.
    fn sign_raw_with(
        &self,
        alg: &'static dyn signature::RsaEncoding,
        header: &str,
        claims: &str,
    ) -> String {
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header),
            URL_SAFE_NO_PAD.encode(claims)
        );
        let sig = self.sign_with(alg, &input);
        format!("{input}.{sig}")
    }

    fn sign_raw(&self, header: &str, claims: &str) -> String {
        self.sign_raw_with(&signature::RSA_PKCS1_SHA256, header, claims)
    }

    fn sign(&self, header: &Value, claims: &Value) -> String {
        self.sign_raw(&header.to_string(), &claims.to_string())
    }

    /// A token as Pub/Sub would send it, with `patch` applied to the claims (null removes).
    fn token(&self, patch: Value) -> String {
        self.sign(&self.header(), &claims(patch))
    }

    fn header(&self) -> Value {
        json!({"alg": "RS256", "kid": self.kid, "typ": "JWT"})
    }
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn claims(patch: Value) -> Value {
    let now = now();
    let mut c = json!({
        "iss": "https://accounts.google.com",
        "aud": AUDIENCE,
        "azp": "112233445566778899000",
        "email": SERVICE_ACCOUNT,
        "email_verified": true,
        "sub": "112233445566778899000",
        "iat": now - 5,
        "exp": now + 3595,
    });
    for (k, v) in patch.as_object().unwrap() {
        if v.is_null() {
            c.as_object_mut().unwrap().remove(k);
        } else {
            c[k] = v.clone();
        }
    }
    c
}

fn b64url(s: &str) -> String {
    URL_SAFE_NO_PAD.encode(s)
}

fn push_body(email: &str, history_id: &str, message_id: &str) -> Vec<u8> {
    let data = json!({"emailAddress": email, "historyId": history_id}).to_string();
    json!({
        "message": {
            "data": STANDARD.encode(data),
            "messageId": message_id,
            "message_id": message_id,
            "publishTime": "2025-01-01T00:00:00.000Z",
            "publish_time": "2025-01-01T00:00:00.000Z",
            "attributes": {},
        },
        "subscription": "projects/helpr-test/subscriptions/gmail-push",
    })
    .to_string()
    .into_bytes()
}

fn good_body() -> Vec<u8> {
    push_body(INBOX, "1000", "msg-1")
}

// ---------------------------------------------------------------------------------------
// The local JWKS endpoint

struct JwksDouble {
    keys: Mutex<Vec<Value>>,
    status: Mutex<StatusCode>,
    max_age: u64,
    hits: AtomicUsize,
}

impl JwksDouble {
    fn serve(&self, keys: Vec<Value>) {
        *self.keys.lock().unwrap() = keys;
    }
    fn set_status(&self, status: StatusCode) {
        *self.status.lock().unwrap() = status;
    }
    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

async fn jwks_handler(State(d): State<Arc<JwksDouble>>) -> Response {
    d.hits.fetch_add(1, Ordering::SeqCst);
    let status = *d.status.lock().unwrap();
    if status != StatusCode::OK {
        return (status, "down").into_response();
    }
    let body = json!({"keys": d.keys.lock().unwrap().clone()}).to_string();
    let mut r = ([(header::CONTENT_TYPE, "application/json")], body).into_response();
    r.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_str(&format!(
            "public, max-age={}, must-revalidate, no-transform",
            d.max_age
        ))
        .unwrap(),
    );
    r
}

async fn serve(app: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    addr
}

async fn start_jwks(keys: Vec<Value>, max_age: u64) -> (Arc<JwksDouble>, String) {
    let double = Arc::new(JwksDouble {
        keys: Mutex::new(keys),
        status: Mutex::new(StatusCode::OK),
        max_age,
        hits: AtomicUsize::new(0),
    });
    let app = Router::new()
        .route("/oauth2/v3/certs", get(jwks_handler))
        .with_state(double.clone());
    let addr = serve(app).await;
    (double, format!("http://{addr}/oauth2/v3/certs"))
}

// ---------------------------------------------------------------------------------------
// The in-memory sink

#[derive(Default)]
struct MemorySink {
    /// address → (connected, high-water historyId)
    inboxes: Mutex<HashMap<String, (bool, u64)>>,
    seen: Mutex<HashSet<String>>,
    jobs: Mutex<Vec<GmailNotification>>,
    unavailable: AtomicBool,
}

impl MemorySink {
    fn with_inbox(address: &str, connected: bool, high_water: u64) -> Self {
        let s = Self::default();
        s.inboxes
            .lock()
            .unwrap()
            .insert(address.to_owned(), (connected, high_water));
        s
    }
    fn jobs(&self) -> Vec<GmailNotification> {
        self.jobs.lock().unwrap().clone()
    }
}

#[async_trait]
impl PushSink for MemorySink {
    async fn record(&self, n: &GmailNotification) -> Result<RecordOutcome, SinkError> {
        if self.unavailable.load(Ordering::SeqCst) {
            return Err(SinkError::Unavailable);
        }
        let Some(&(connected, high_water)) = self.inboxes.lock().unwrap().get(&n.email_address)
        else {
            return Ok(RecordOutcome::UnknownInbox);
        };
        if !connected {
            return Ok(RecordOutcome::Disconnected);
        }
        if n.history_id <= high_water {
            return Ok(RecordOutcome::Replay);
        }
        if !self
            .seen
            .lock()
            .unwrap()
            .insert(n.pubsub_message_id.clone())
        {
            return Ok(RecordOutcome::Duplicate);
        }
        self.jobs.lock().unwrap().push(n.clone());
        Ok(RecordOutcome::Recorded)
    }
}

// ---------------------------------------------------------------------------------------
// The harness

struct Harness {
    url: String,
    jwks: Arc<JwksDouble>,
    sink: Arc<MemorySink>,
    http: reqwest::Client,
}

struct Options {
    jwks_keys: Vec<Value>,
    max_age: u64,
    min_refetch: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            jwks_keys: vec![TestKey::a().jwk()],
            max_age: 300,
            min_refetch: Duration::from_secs(30),
        }
    }
}

impl Harness {
    async fn start() -> Self {
        Self::start_with(Options::default()).await
    }

    async fn start_with(o: Options) -> Self {
        let (jwks, jwks_url) = start_jwks(o.jwks_keys, o.max_age).await;
        let verifier = Verifier::new(PushAuthConfig {
            audience: AUDIENCE.into(),
            additional_audiences: Vec::new(),
            service_account: SERVICE_ACCOUNT.into(),
            jwks_url,
            leeway: Duration::from_secs(60),
            max_age: Duration::from_secs(3600),
            jwks_min_refetch_interval: o.min_refetch,
        })
        .unwrap();
        let sink = Arc::new(MemorySink::with_inbox(INBOX, true, 10));
        let state = PushState {
            verifier: Arc::new(verifier),
            sink: sink.clone(),
        };
        let addr = serve(router(state)).await;
        Self {
            url: format!("http://{addr}/v1/push/gmail"),
            jwks,
            sink,
            http: reqwest::Client::new(),
        }
    }

    async fn post_with(&self, authorization: Option<&str>, body: Vec<u8>) -> (StatusCode, String) {
        let mut req = self
            .http
            .post(&self.url)
            .header(header::CONTENT_TYPE, "application/json")
            .body(body);
        if let Some(a) = authorization {
            req = req.header(header::AUTHORIZATION, a);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status();
        (status, resp.text().await.unwrap())
    }

    async fn post(&self, token: &str, body: Vec<u8>) -> (StatusCode, String) {
        self.post_with(Some(&format!("Bearer {token}")), body).await
    }

    /// Sends a genuine body with `token` and asserts a generic 401 and nothing recorded.
    async fn assert_rejected(&self, token: &str, reason: &str) {
        let before = rejected(reason);
        let (status, body) = self.post(token, good_body()).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{reason}: token {token}");
        assert_eq!(body, UNAUTHENTICATED_BODY);
        assert!(
            self.sink.jobs().is_empty(),
            "{reason}: something was recorded"
        );
        assert!(
            rejected(reason) > before,
            "expected rejection reason {reason} for token {token}"
        );
    }
}

/// The value of `helpr_push_rejected_total{reason="…"}`.
fn rejected(reason: &str) -> u64 {
    counter(&format!("helpr_push_rejected_total{{reason=\"{reason}\"}}"))
}

fn outcome(outcome: &str) -> u64 {
    counter(&format!(
        "helpr_push_requests_total{{outcome=\"{outcome}\"}}"
    ))
}

fn counter(series: &str) -> u64 {
    helpr_dataplane::metrics::render()
        .lines()
        .find_map(|l| l.strip_prefix(series))
        .map_or(0, |v| v.trim().parse().unwrap())
}

// ---------------------------------------------------------------------------------------
// Happy path and outcomes

#[tokio::test]
async fn genuine_push_is_recorded_once_and_acknowledged_with_204() {
    let h = Harness::start().await;
    let (status, body) = h.post(&TestKey::a().token(json!({})), good_body()).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert!(body.is_empty());
    let jobs = h.sink.jobs();
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0].email_address, INBOX);
    assert_eq!(jobs[0].history_id, 1000);
    assert_eq!(jobs[0].pubsub_message_id, "msg-1");
    assert_eq!(h.jwks.hits(), 1);
}

#[tokio::test]
async fn short_issuer_form_is_accepted() {
    let h = Harness::start().await;
    let token = TestKey::a().token(json!({"iss": "accounts.google.com"}));
    assert_eq!(h.post(&token, good_body()).await.0, StatusCode::NO_CONTENT);
    assert_eq!(h.sink.jobs().len(), 1);
}

#[tokio::test]
async fn one_token_is_reused_across_deliveries_and_jwks_is_fetched_once() {
    let h = Harness::start().await;
    let token = TestKey::a().token(json!({}));
    for i in 0..5 {
        let body = push_body(INBOX, &format!("{}", 2000 + i), &format!("m-{i}"));
        assert_eq!(h.post(&token, body).await.0, StatusCode::NO_CONTENT);
    }
    assert_eq!(h.sink.jobs().len(), 5);
    assert_eq!(h.jwks.hits(), 1);
}

#[tokio::test]
async fn repeated_message_id_and_old_history_id_are_acknowledged_without_a_new_job() {
    let h = Harness::start().await;
    let token = TestKey::a().token(json!({}));
    let before_dup = outcome("duplicate");
    let before_replay = outcome("replay");
    assert_eq!(h.post(&token, good_body()).await.0, StatusCode::NO_CONTENT);
    // Pub/Sub redelivers the same message.
    assert_eq!(h.post(&token, good_body()).await.0, StatusCode::NO_CONTENT);
    // historyId at the high-water mark (10) and below it.
    for old in ["10", "3"] {
        let body = push_body(INBOX, old, &format!("replay-{old}"));
        assert_eq!(h.post(&token, body).await.0, StatusCode::NO_CONTENT);
    }
    assert_eq!(h.sink.jobs().len(), 1);
    assert!(outcome("duplicate") > before_dup);
    assert!(outcome("replay") >= before_replay + 2);
}

#[tokio::test]
async fn unknown_and_disconnected_inboxes_are_acknowledged_without_a_job() {
    let h = Harness::start().await;
    h.sink
        .inboxes
        .lock()
        .unwrap()
        .insert("gone@acme.test".into(), (false, 0));
    let token = TestKey::a().token(json!({}));
    let (unknown, disconnected) = (outcome("unknown_inbox"), outcome("disconnected"));
    let body = push_body("stranger@else.test", "5000", "m-unknown");
    assert_eq!(h.post(&token, body).await.0, StatusCode::NO_CONTENT);
    let body = push_body("gone@acme.test", "5000", "m-gone");
    assert_eq!(h.post(&token, body).await.0, StatusCode::NO_CONTENT);
    assert!(h.sink.jobs().is_empty());
    assert!(outcome("unknown_inbox") > unknown);
    assert!(outcome("disconnected") > disconnected);
}

#[tokio::test]
async fn unparseable_authenticated_bodies_are_acknowledged_and_nothing_is_recorded() {
    let h = Harness::start().await;
    let token = TestKey::a().token(json!({}));
    let before = outcome("unparseable");
    let bad_data = |data: &str| {
        json!({"message": {"data": STANDARD.encode(data), "messageId": "p"}})
            .to_string()
            .into_bytes()
    };
    let bodies: Vec<Vec<u8>> = vec![
        b"".to_vec(),
        b"not json".to_vec(),
        br#"{"message":{"messageId":"p"}}"#.to_vec(),
        br#"{"message":{"data":"***","messageId":"p"}}"#.to_vec(),
        bad_data("not json"),
        bad_data(r#"{"emailAddress":"support@acme.test"}"#),
        bad_data(r#"{"emailAddress":"support@acme.test","historyId":"12abc"}"#),
        bad_data(r#"{"historyId":"5000"}"#),
        push_body(INBOX, "5000", ""),
    ];
    let n = bodies.len() as u64;
    for body in bodies {
        let (status, _) = h.post(&token, body).await;
        assert_eq!(status, StatusCode::NO_CONTENT);
    }
    assert!(h.sink.jobs().is_empty());
    assert!(outcome("unparseable") >= before + n);
}

#[tokio::test]
async fn store_unavailable_answers_503_so_pubsub_redelivers() {
    let h = Harness::start().await;
    h.sink.unavailable.store(true, Ordering::SeqCst);
    let token = TestKey::a().token(json!({}));
    let (status, _) = h.post(&token, good_body()).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(h.sink.jobs().is_empty());
    // The redelivery after recovery is recorded.
    h.sink.unavailable.store(false, Ordering::SeqCst);
    assert_eq!(h.post(&token, good_body()).await.0, StatusCode::NO_CONTENT);
    assert_eq!(h.sink.jobs().len(), 1);
}

#[tokio::test]
async fn jwks_endpoint_down_answers_503_and_is_not_hammered() {
    let h = Harness::start_with(Options {
        min_refetch: Duration::from_millis(500),
        ..Options::default()
    })
    .await;
    h.jwks.set_status(StatusCode::INTERNAL_SERVER_ERROR);
    let token = TestKey::a().token(json!({}));
    for _ in 0..5 {
        assert_eq!(
            h.post(&token, good_body()).await.0,
            StatusCode::SERVICE_UNAVAILABLE
        );
    }
    assert_eq!(h.jwks.hits(), 1, "failed fetches are rate limited too");
    assert!(h.sink.jobs().is_empty());

    h.jwks.set_status(StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(h.post(&token, good_body()).await.0, StatusCode::NO_CONTENT);
    assert_eq!(h.jwks.hits(), 2);
    assert_eq!(h.sink.jobs().len(), 1);
}

#[tokio::test]
async fn key_rotation_new_kid_triggers_one_refetch_and_succeeds() {
    let h = Harness::start_with(Options {
        min_refetch: Duration::from_millis(500),
        ..Options::default()
    })
    .await;
    let (a, b) = (TestKey::a(), TestKey::b());
    assert_eq!(
        h.post(&a.token(json!({})), push_body(INBOX, "100", "m1"))
            .await
            .0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(h.jwks.hits(), 1);

    h.jwks.serve(vec![a.jwk(), b.jwk()]);
    tokio::time::sleep(Duration::from_millis(600)).await;
    let token_b = b.token(json!({}));
    assert_eq!(
        h.post(&token_b, push_body(INBOX, "101", "m2")).await.0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(h.jwks.hits(), 2);
    // Both keys are now cached.
    assert_eq!(
        h.post(&token_b, push_body(INBOX, "102", "m3")).await.0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        h.post(&a.token(json!({})), push_body(INBOX, "103", "m4"))
            .await
            .0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(h.jwks.hits(), 2);
    assert_eq!(h.sink.jobs().len(), 4);
}

#[tokio::test]
async fn unknown_kid_flood_refetches_jwks_at_most_once_per_interval() {
    let h = Arc::new(
        Harness::start_with(Options {
            min_refetch: Duration::from_secs(2),
            ..Options::default()
        })
        .await,
    );
    let a = TestKey::a();
    assert_eq!(
        h.post(&a.token(json!({})), good_body()).await.0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(h.jwks.hits(), 1);

    // Within the interval: unknown kids never reach the JWKS endpoint.
    let flood = |tag: &'static str| {
        let h = h.clone();
        async move {
            let tasks: Vec<_> = (0..20)
                .map(|i| {
                    let h = h.clone();
                    let token = TestKey::a().sign(
                        &json!({"alg": "RS256", "kid": format!("{tag}-{i}")}),
                        &claims(json!({})),
                    );
                    tokio::spawn(async move { h.post(&token, good_body()).await.0 })
                })
                .collect();
            for t in tasks {
                assert_eq!(t.await.unwrap(), StatusCode::UNAUTHORIZED);
            }
        }
    };
    flood("early").await;
    assert_eq!(h.jwks.hits(), 1);

    // After the interval: 20 concurrent unknown kids share one refetch.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    flood("late").await;
    assert_eq!(h.jwks.hits(), 2);
    flood("again").await;
    assert_eq!(h.jwks.hits(), 2);
    assert_eq!(h.sink.jobs().len(), 1);
}

#[tokio::test]
async fn oversized_body_is_refused_with_413_after_authentication() {
    let h = Harness::start().await;
    let token = TestKey::a().token(json!({}));
    let mut big = good_body();
    big.extend(std::iter::repeat_n(b' ', 64 * 1024));
    let (status, _) = h.post(&token, big.clone()).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    // Authentication comes first: without a valid token the answer is 401.
    let (status, body) = h.post("a.b.c", big).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body, UNAUTHENTICATED_BODY);
    assert!(h.sink.jobs().is_empty());
    // Exactly 64 KiB (whitespace-padded JSON) is still read.
    let mut limit = good_body();
    limit.resize(64 * 1024, b' ');
    assert_eq!(h.post(&token, limit).await.0, StatusCode::NO_CONTENT);
}

#[tokio::test]
async fn rejection_logs_name_the_reason_but_never_the_token_or_claims() {
    #[derive(Clone, Default)]
    struct Capture(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Capture {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let capture = Capture::default();
    let writer = capture.clone();
    let subscriber = tracing_subscriber::fmt()
        .json()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .finish();
    // Process-wide (a thread-local default races with other tests' callsite registration
    // under `cargo test`); the logs of other tests carry reasons only, so they do no harm.
    tracing::subscriber::set_global_default(subscriber).unwrap();

    let h = Harness::start().await;
    let token = TestKey::a().token(json!({"aud": "https://evil.test/", "email": "spy@evil.test"}));
    h.assert_rejected(&token, "wrong_audience").await;
    let good = TestKey::a().token(json!({}));
    assert_eq!(h.post(&good, good_body()).await.0, StatusCode::NO_CONTENT);

    let logs = String::from_utf8(capture.0.lock().unwrap().clone()).unwrap();
    assert!(logs.contains("push rejected"), "{logs}");
    assert!(logs.contains("wrong_audience"), "{logs}");
    for secret in [
        token.as_str(),
        &token[..20],
        token.rsplit('.').next().unwrap(),
        good.as_str(),
        "evil.test",
        SERVICE_ACCOUNT,
        INBOX,
        "msg-1",
    ] {
        assert!(!logs.contains(secret), "logs contain {secret}: {logs}");
    }
}

// ---------------------------------------------------------------------------------------
// Attack classes: each answered 401 with the generic body, nothing recorded

#[tokio::test]
async fn missing_or_non_bearer_authorization_is_rejected() {
    let h = Harness::start().await;
    let token = TestKey::a().token(json!({}));
    for auth in [
        None,
        Some("".to_owned()),
        Some(format!("Basic {token}")),
        Some(format!("Bearer{token}")),
        Some("Bearer ".to_owned()),
    ] {
        let before = rejected("missing_token");
        let (status, body) = h.post_with(auth.as_deref(), good_body()).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{auth:?}");
        assert_eq!(body, UNAUTHENTICATED_BODY);
        assert!(rejected("missing_token") > before, "{auth:?}");
    }
    assert!(h.sink.jobs().is_empty());
    assert_eq!(h.jwks.hits(), 0);
}

#[tokio::test]
async fn alg_none_in_any_spelling_is_rejected_before_any_key_is_fetched() {
    let h = Harness::start().await;
    let c = claims(json!({})).to_string();
    for alg in ["none", "None", "NONE", "nOnE"] {
        let header = json!({"alg": alg, "kid": "key-a", "typ": "JWT"}).to_string();
        let unsigned = format!("{}.{}", b64url(&header), b64url(&c));
        h.assert_rejected(&format!("{unsigned}."), "unsupported_alg")
            .await;
        // Even with a signature segment the alg decides first.
        let signed = format!(
            "{unsigned}.{}",
            TestKey::a().sign_with(&signature::RSA_PKCS1_SHA256, &unsigned)
        );
        h.assert_rejected(&signed, "unsupported_alg").await;
    }
    let no_alg = TestKey::a().sign(&json!({"kid": "key-a"}), &claims(json!({})));
    h.assert_rejected(&no_alg, "unsupported_alg").await;
    assert_eq!(h.jwks.hits(), 0, "no key was looked up");
}

#[tokio::test]
async fn hs256_signed_with_the_rsa_public_key_is_rejected() {
    let h = Harness::start().await;
    let a = TestKey::a();
    let c = RsaPublicKeyComponents::<Vec<u8>>::from(a.pair.public());
    let secrets: Vec<Vec<u8>> = vec![
        a.pair.public().as_ref().to_vec(), // PKCS#1 DER
        c.n.clone(),
        a.jwk().to_string().into_bytes(),
        URL_SAFE_NO_PAD.encode(&c.n).into_bytes(),
    ];
    let header = json!({"alg": "HS256", "kid": "key-a", "typ": "JWT"}).to_string();
    let input = format!(
        "{}.{}",
        b64url(&header),
        b64url(&claims(json!({})).to_string())
    );
    for secret in secrets {
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &secret);
        let tag = ring::hmac::sign(&key, input.as_bytes());
        let token = format!("{input}.{}", URL_SAFE_NO_PAD.encode(tag.as_ref()));
        h.assert_rejected(&token, "unsupported_alg").await;
    }
    assert_eq!(h.jwks.hits(), 0);
}

#[tokio::test]
async fn rs384_and_ps256_signatures_on_the_same_key_are_rejected() {
    let h = Harness::start().await;
    let a = TestKey::a();
    let c = claims(json!({})).to_string();
    let cases: [(&str, &'static dyn signature::RsaEncoding, &str); 5] = [
        ("RS384", &signature::RSA_PKCS1_SHA384, "unsupported_alg"),
        ("PS256", &signature::RSA_PSS_SHA256, "unsupported_alg"),
        ("RS512", &signature::RSA_PKCS1_SHA512, "unsupported_alg"),
        // The same signatures under an RS256 label fail the RS256 check.
        ("RS256", &signature::RSA_PKCS1_SHA384, "bad_signature"),
        ("RS256", &signature::RSA_PSS_SHA256, "bad_signature"),
    ];
    for (alg, encoding, reason) in cases {
        let header = json!({"alg": alg, "kid": "key-a", "typ": "JWT"}).to_string();
        let token = a.sign_raw_with(encoding, &header, &c);
        h.assert_rejected(&token, reason).await;
    }
}

#[tokio::test]
async fn unknown_kid_is_rejected() {
    let h = Harness::start().await;
    // Signed by a key the JWKS does not have, under its own kid.
    h.assert_rejected(&TestKey::attacker().token(json!({})), "unknown_kid")
        .await;
    // Signed by key B, which is not published (yet).
    h.assert_rejected(&TestKey::b().token(json!({})), "unknown_kid")
        .await;
    // No kid at all.
    let no_kid = TestKey::a().sign(&json!({"alg": "RS256"}), &claims(json!({})));
    h.assert_rejected(&no_kid, "missing_kid").await;
}

#[tokio::test]
async fn kid_with_path_or_sql_injection_is_just_an_unknown_kid() {
    let h = Harness::start().await;
    let a = TestKey::a();
    for kid in [
        "../../../../../../dev/null",
        "/etc/passwd",
        "key-a/../key-a",
        "key-a' OR '1'='1",
        "' UNION SELECT 'key-a' --",
        "key-a\u{0}",
        "key-a ",
        "KEY-A",
    ] {
        let token = a.sign(&json!({"alg": "RS256", "kid": kid}), &claims(json!({})));
        h.assert_rejected(&token, "unknown_kid").await;
    }
    let long = a.sign(
        &json!({"alg": "RS256", "kid": "k".repeat(300)}),
        &claims(json!({})),
    );
    h.assert_rejected(&long, "malformed").await;
    let numeric = a.sign(&json!({"alg": "RS256", "kid": 1}), &claims(json!({})));
    h.assert_rejected(&numeric, "malformed").await;
}

#[tokio::test]
async fn embedded_jwk_and_x5c_are_ignored_for_key_selection() {
    let h = Harness::start().await;
    let evil = TestKey::attacker();
    let mut evil_jwk = evil.jwk();
    // The attacker's key under the kid of a trusted key: the signature is checked with the
    // trusted key from the JWKS and fails.
    evil_jwk["kid"] = json!("key-a");
    let header = json!({"alg": "RS256", "kid": "key-a", "jwk": evil_jwk});
    h.assert_rejected(&evil.sign(&header, &claims(json!({}))), "bad_signature")
        .await;
    let header = json!({"alg": "RS256", "kid": "attacker", "jwk": evil.jwk()});
    h.assert_rejected(&evil.sign(&header, &claims(json!({}))), "unknown_kid")
        .await;
    let header = json!({"alg": "RS256", "kid": "key-a", "x5c": ["MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA"]});
    h.assert_rejected(&evil.sign(&header, &claims(json!({}))), "bad_signature")
        .await;
}

#[tokio::test]
async fn jku_and_x5u_urls_are_never_fetched() {
    let h = Harness::start().await;
    let evil = TestKey::attacker();
    let (evil_jwks, evil_url) = start_jwks(vec![evil.jwk()], 300).await;
    for field in ["jku", "x5u"] {
        for kid in ["attacker", "key-a"] {
            let header = json!({"alg": "RS256", "kid": kid, field: evil_url});
            let reason = if kid == "key-a" {
                "bad_signature"
            } else {
                "unknown_kid"
            };
            h.assert_rejected(&evil.sign(&header, &claims(json!({}))), reason)
                .await;
        }
    }
    assert_eq!(evil_jwks.hits(), 0, "the attacker's key set was fetched");
}

#[tokio::test]
async fn expired_token_is_rejected() {
    let h = Harness::start().await;
    let now = now();
    let token = TestKey::a().token(json!({"iat": now - 3000, "exp": now - 61}));
    h.assert_rejected(&token, "expired").await;
}

#[tokio::test]
async fn token_whose_nbf_is_in_the_future_is_rejected() {
    let h = Harness::start().await;
    let token = TestKey::a().token(json!({"nbf": now() + 120}));
    h.assert_rejected(&token, "not_yet_valid").await;
    let token = TestKey::a().token(json!({"iat": now() + 120, "exp": now() + 3720}));
    h.assert_rejected(&token, "issued_in_future").await;
}

#[tokio::test]
async fn token_issued_more_than_an_hour_ago_is_rejected() {
    let h = Harness::start().await;
    // Still unexpired, but its iat is older than 1 h + leeway.
    let now = now();
    let token = TestKey::a().token(json!({"iat": now - 3700, "exp": now + 600}));
    h.assert_rejected(&token, "too_old").await;
}

#[tokio::test]
async fn missing_or_non_integer_time_claims_are_rejected() {
    let h = Harness::start().await;
    for patch in [
        json!({"exp": null}),
        json!({"iat": null}),
        json!({"exp": (now() + 100).to_string()}),
    ] {
        h.assert_rejected(&TestKey::a().token(patch), "bad_time_claim")
            .await;
    }
}

#[tokio::test]
async fn wrong_issuer_is_rejected() {
    let h = Harness::start().await;
    for iss in [
        json!("https://accounts.google.com/"),
        json!("http://accounts.google.com"),
        json!("https://accounts.google.com.evil.test"),
        json!("https://ACCOUNTS.google.com"),
        json!("accounts.google.co"),
        json!(["https://accounts.google.com"]),
        Value::Null,
    ] {
        h.assert_rejected(&TestKey::a().token(json!({"iss": iss})), "wrong_issuer")
            .await;
    }
}

#[tokio::test]
async fn audience_prefix_suffix_trailing_slash_and_array_are_rejected() {
    let h = Harness::start().await;
    for aud in [
        json!("https://helpr.test/v1/push/gmai"),
        json!("https://helpr.test/v1/push/gmail/"),
        json!("https://helpr.test/v1/push/gmailx"),
        json!("https://helpr.test/v1/push/gmail?x=1"),
        json!("xhttps://helpr.test/v1/push/gmail"),
        json!("https://helpr.test"),
        json!("HTTPS://helpr.test/v1/push/gmail"),
        json!(""),
        json!([AUDIENCE]),
        Value::Null,
    ] {
        h.assert_rejected(&TestKey::a().token(json!({"aud": aud})), "wrong_audience")
            .await;
    }
}

#[tokio::test]
async fn wrong_service_account_email_is_rejected() {
    let h = Harness::start().await;
    for email in [
        json!("attacker@evil-project.iam.gserviceaccount.com"),
        json!("Gmail-push@helpr-test.iam.gserviceaccount.com"),
        json!("gmail-push@helpr-test.iam.gserviceaccount.com "),
        json!("gmail-push@system.gserviceaccount.com"),
        json!([SERVICE_ACCOUNT]),
        Value::Null,
    ] {
        h.assert_rejected(&TestKey::a().token(json!({"email": email})), "wrong_email")
            .await;
    }
}

#[tokio::test]
async fn email_verified_false_or_string_true_is_rejected() {
    let h = Harness::start().await;
    for v in [json!(false), json!("true"), json!(1), Value::Null] {
        h.assert_rejected(
            &TestKey::a().token(json!({"email_verified": v})),
            "email_not_verified",
        )
        .await;
    }
}

#[tokio::test]
async fn tokens_with_two_or_four_segments_are_rejected() {
    let h = Harness::start().await;
    let token = TestKey::a().token(json!({}));
    let parts: Vec<&str> = token.split('.').collect();
    for bad in [
        format!("{}.{}", parts[0], parts[1]),
        format!("{}.{}", parts[0], parts[2]),
        format!("{token}.{}", parts[2]),
        format!("{token}."),
        format!(".{token}"),
    ] {
        h.assert_rejected(&bad, "malformed").await;
    }
    // Three segments with the payload dropped: well-formed, but the signature fails.
    let no_payload = format!("{}..{}", parts[0], parts[2]);
    h.assert_rejected(&no_payload, "bad_signature").await;
}

#[tokio::test]
async fn padding_plus_and_slash_in_base64url_are_rejected() {
    let h = Harness::start().await;
    // A token whose signature contains '-' and '_', so that a lenient decoder would accept
    // the '+' '/' spelling.
    let token = (0..)
        .map(|i| {
            let header = json!({"alg": "RS256", "kid": "key-a"});
            TestKey::a().sign(&header, &claims(json!({"jti": i})))
        })
        .find(|t| {
            let sig = t.rsplit('.').next().unwrap();
            sig.contains('-') && sig.contains('_')
        })
        .unwrap();
    let parts: Vec<&str> = token.split('.').collect();
    let padded = |s: &str| format!("{s}{}", "=".repeat((4 - s.len() % 4) % 4));
    let header_padded = padded(parts[0]);
    assert_ne!(header_padded, parts[0], "header length must need padding");
    let sig_padded = padded(parts[2]);
    let std_sig = parts[2].replace('-', "+").replace('_', "/");
    for bad in [
        format!("{}.{}.{}", parts[0], parts[1], sig_padded),
        format!("{header_padded}.{}.{}", parts[1], parts[2]),
        format!("{}.{}.{std_sig}", parts[0], parts[1]),
        format!("{}.{}.{}=", parts[0], parts[1], parts[2]),
    ] {
        h.assert_rejected(&bad, "malformed").await;
    }
    // The unmodified token is genuine.
    assert_eq!(h.post(&token, good_body()).await.0, StatusCode::NO_CONTENT);
}

#[tokio::test]
async fn duplicate_json_keys_in_header_or_claims_are_rejected() {
    let h = Harness::start().await;
    let a = TestKey::a();
    let good_claims = claims(json!({})).to_string();
    let dup_header = r#"{"alg":"RS256","kid":"key-b","kid":"key-a","typ":"JWT"}"#;
    h.assert_rejected(&a.sign_raw(dup_header, &good_claims), "duplicate_key")
        .await;
    let dup_alg = r#"{"alg":"none","alg":"RS256","kid":"key-a"}"#;
    h.assert_rejected(&a.sign_raw(dup_alg, &good_claims), "duplicate_key")
        .await;
    // Claims where one parser would see the right audience and another the wrong one.
    let inner = good_claims.trim_start_matches('{');
    for prefix in [
        r#"{"aud":"https://evil.test","#,
        r#"{"email_verified":false,"#,
        r#"{"email":"attacker@evil.test","#,
        r#"{"exp":1,"#,
    ] {
        let c = format!("{prefix}{inner}");
        h.assert_rejected(
            &a.sign_raw(r#"{"alg":"RS256","kid":"key-a"}"#, &c),
            "duplicate_key",
        )
        .await;
    }
}

#[tokio::test]
async fn oversized_token_is_rejected_before_decoding() {
    let h = Harness::start().await;
    // Genuinely signed and otherwise valid, but over 16 KiB.
    let token = TestKey::a().token(json!({"pad": "x".repeat(16 * 1024)}));
    assert!(token.len() > 16 * 1024);
    h.assert_rejected(&token, "too_large").await;
    assert_eq!(h.jwks.hits(), 0);
    // Just under the limit it is accepted.
    let pad = 16 * 1024 - TestKey::a().token(json!({"pad": ""})).len();
    let token = TestKey::a().token(json!({"pad": "x".repeat(pad * 3 / 4 - 3)}));
    assert!(token.len() <= 16 * 1024);
    assert_eq!(h.post(&token, good_body()).await.0, StatusCode::NO_CONTENT);
}

#[tokio::test]
async fn crit_header_is_rejected() {
    let h = Harness::start().await;
    let a = TestKey::a();
    for crit in [json!(["exp"]), json!(["b64"]), json!([]), json!("x")] {
        let header = json!({"alg": "RS256", "kid": "key-a", "crit": crit, "b64": false, "exp": 1});
        h.assert_rejected(&a.sign(&header, &claims(json!({}))), "crit_header")
            .await;
    }
}

#[tokio::test]
async fn tampered_claims_or_signature_are_rejected() {
    let h = Harness::start().await;
    let token = TestKey::a().token(json!({}));
    let parts: Vec<&str> = token.split('.').collect();
    let forged = b64url(&claims(json!({"email": SERVICE_ACCOUNT, "sub": "x"})).to_string());
    h.assert_rejected(
        &format!("{}.{forged}.{}", parts[0], parts[2]),
        "bad_signature",
    )
    .await;
    // Another token's signature.
    let other = TestKey::a().token(json!({"jti": "other"}));
    let other_sig = other.rsplit('.').next().unwrap();
    h.assert_rejected(
        &format!("{}.{}.{other_sig}", parts[0], parts[1]),
        "bad_signature",
    )
    .await;
}
