//! The push endpoint's input: request headers (the bearer token above all) and body.
//!
//! Input format (readable, so that seeds can be written by hand): header lines
//! `name: value` separated by `\n`, an empty line, then the body, like an HTTP/1 request
//! without its request line. Lines that are not a valid header are ignored.
//!
//! Every input is run through:
//!
//! 1. The real router (`push::router`) in-process with `tower::ServiceExt::oneshot` on a
//!    current-thread runtime. The verifier's JWKS URL is unreachable (`127.0.0.1:9`, no
//!    server is started) and its refetch interval is a day, so after the first failed
//!    fetch every token that passes the structural checks is answered 503 without any
//!    network I/O. The answer must be exactly what the token's shape implies: 401 (with
//!    `WWW-Authenticate: Bearer`) when there is no single well-formed `Bearer` token or
//!    `UnverifiedJws::parse` rejects it, 503 otherwise; never anything else, never a panic.
//! 2. `parse_push_body(body)`: on success, the documented field limits hold.
//! 3. The token (first `authorization` header, scheme stripped) through
//!    `UnverifiedJws::parse` and `verify_with_keys` with a fixed key set (test key `a` from
//!    `dataplane/tests/data`, kid `key-a`) and a fixed clock. When the token is
//!    structurally valid and names `key-a`, it is re-signed with that key, so the claims
//!    checks run behind a good signature: the result must equal `check_claims` on its
//!    payload.
//! 4. `check_claims(body)`: the body as a claims payload; on success the accepted claims
//!    satisfy the configured issuer/audience/email/time rules.
#![no_main]

use std::collections::HashMap;
use std::sync::{Arc, LazyLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use axum::Router;
use axum::body::Body;
use axum::http::header::{AUTHORIZATION, WWW_AUTHENTICATE};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use libfuzzer_sys::fuzz_target;
use ring::rand::SystemRandom;
use ring::signature::{self, RsaKeyPair, RsaPublicKeyComponents};
use tower::ServiceExt as _;

use helpr_dataplane::ingest::jwt::{
    JwtError, MAX_LEEWAY, MAX_TOKEN_AGE, PushAuthConfig, RsaKey, UnverifiedJws, Verifier,
    check_claims, verify_with_keys,
};
use helpr_dataplane::ingest::push::{
    GmailNotification, PUSH_PATH, PushSink, PushState, RecordOutcome, SinkError,
    parse_push_body, router,
};

const AUDIENCE: &str = "https://helpr.test/v1/push/gmail";
const SERVICE_ACCOUNT: &str = "gmail-push@helpr-test.iam.gserviceaccount.com";
const KID: &str = "key-a";
/// The fixed clock of the direct checks (the seeds' `iat`/`exp` are around it).
const NOW_SECS: u64 = 1_700_000_000;
const MAX_HEADERS: usize = 16;

fn cfg() -> PushAuthConfig {
    PushAuthConfig {
        audience: AUDIENCE.into(),
        service_account: SERVICE_ACCOUNT.into(),
        // Nothing listens on the discard port: a fetch fails at once (connection refused).
        jwks_url: "http://127.0.0.1:9/certs".into(),
        jwks_min_refetch_interval: Duration::from_secs(24 * 3600),
        ..PushAuthConfig::default()
    }
}

/// A sink that must never be reached (no token can be verified without signing keys).
struct NoSink;

#[async_trait]
impl PushSink for NoSink {
    async fn record(&self, _: &GmailNotification) -> Result<RecordOutcome, SinkError> {
        panic!("push sink reached without signing keys");
    }
}

struct Harness {
    rt: tokio::runtime::Runtime,
    app: Router,
    key_pair: RsaKeyPair,
    keys: HashMap<String, RsaKey>,
    cfg: PushAuthConfig,
    rng: SystemRandom,
}

static HARNESS: LazyLock<Harness> = LazyLock::new(|| {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let verifier = {
        // reqwest's client is built inside the runtime (it may register timers).
        let _guard = rt.enter();
        Verifier::new(cfg()).expect("verifier")
    };
    let app = router(PushState {
        verifier: Arc::new(verifier),
        sink: Arc::new(NoSink),
    });
    let key_pair =
        RsaKeyPair::from_pkcs8(include_bytes!("../../dataplane/tests/data/push_jwt_test_key_a.pk8.der"))
            .expect("test key a");
    let public = RsaPublicKeyComponents::<Vec<u8>>::from(key_pair.public());
    let keys = HashMap::from([(
        KID.to_owned(),
        RsaKey::from_components(&public.n, &public.e).expect("rsa key"),
    )]);
    Harness {
        rt,
        app,
        key_pair,
        keys,
        cfg: cfg(),
        rng: SystemRandom::new(),
    }
});

/// Splits the input into header lines and body (see the module documentation).
fn split_input(data: &[u8]) -> (HeaderMap, &[u8]) {
    let (head, body) = match data.windows(2).position(|w| w == b"\n\n") {
        Some(at) => (&data[..at], &data[at + 2..]),
        None => (data, &[][..]),
    };
    let mut headers = HeaderMap::new();
    for line in head.split(|&b| b == b'\n').take(MAX_HEADERS) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let value = &line[colon + 1..];
        let value = value.strip_prefix(b" ").unwrap_or(value);
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(&line[..colon]),
            HeaderValue::from_bytes(value),
        ) {
            headers.append(name, value);
        }
    }
    (headers, body)
}

/// The bearer token as the endpoint extracts it: exactly one `Authorization` header,
/// visible ASCII, `Bearer` (any case), one space, a non-empty token.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let mut values = headers.get_all(AUTHORIZATION).iter();
    let (Some(value), None) = (values.next(), values.next()) else {
        return None;
    };
    let (scheme, token) = value.to_str().ok()?.split_once(' ')?;
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

fn check_router(h: &Harness, headers: &HeaderMap, body: &[u8]) {
    let expected = match bearer(headers).map(UnverifiedJws::parse) {
        Some(Ok(_)) => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::UNAUTHORIZED,
    };
    let mut request = Request::builder()
        .method(Method::POST)
        .uri(PUSH_PATH)
        .body(Body::from(body.to_vec()))
        .expect("request");
    *request.headers_mut() = headers.clone();
    let response = h
        .rt
        .block_on(h.app.clone().oneshot(request))
        .expect("router is infallible");
    let status = response.status();
    assert!(
        [
            StatusCode::NO_CONTENT,
            StatusCode::UNAUTHORIZED,
            StatusCode::PAYLOAD_TOO_LARGE,
            StatusCode::SERVICE_UNAVAILABLE
        ]
        .contains(&status),
        "unexpected status {status}"
    );
    assert_eq!(status, expected, "status does not match the token's shape");
    if status == StatusCode::UNAUTHORIZED {
        assert_eq!(
            response.headers().get(WWW_AUTHENTICATE).map(HeaderValue::as_bytes),
            Some(&b"Bearer"[..])
        );
    }
}

fn check_push_body(body: &[u8]) {
    if let Ok(n) = parse_push_body(body) {
        assert!(!n.email_address.is_empty() && n.email_address.len() <= 320);
        assert!(n.email_address.contains('@'));
        assert!(!n.pubsub_message_id.is_empty() && n.pubsub_message_id.len() <= 256);
        if let Some(t) = &n.publish_time {
            assert!(!t.is_empty() && t.len() <= 64);
        }
    }
}

fn check_token(h: &Harness, token: &str, now: SystemTime) {
    let parsed = UnverifiedJws::parse(token);
    let verified = verify_with_keys(token, &h.keys, &h.cfg, now);
    match &parsed {
        Err(e) => assert_eq!(verified.as_ref().err(), Some(e), "parse and verify disagree"),
        Ok(jws) => {
            assert!(!jws.kid().is_empty() && jws.kid().len() <= 256);
            if jws.kid() != KID {
                assert_eq!(verified.as_ref().err(), Some(&JwtError::UnknownKid));
            }
        }
    }
    let Ok(jws) = parsed else { return };
    if jws.kid() != KID {
        return;
    }
    // Re-sign header.payload with the key the verifier knows: the claims checks now run
    // behind a valid signature.
    let mut parts = token.splitn(3, '.');
    let (Some(header_b64), Some(payload_b64)) = (parts.next(), parts.next()) else {
        panic!("a parsed token has three segments");
    };
    let signing_input = &token[..header_b64.len() + 1 + payload_b64.len()];
    let mut sig = vec![0; h.key_pair.public().modulus_len()];
    h.key_pair
        .sign(
            &signature::RSA_PKCS1_SHA256,
            &h.rng,
            signing_input.as_bytes(),
            &mut sig,
        )
        .expect("sign");
    let signed = format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(&sig));
    let payload = URL_SAFE_NO_PAD
        .decode(payload_b64)
        .expect("a parsed token has a base64url payload");
    let got = verify_with_keys(&signed, &h.keys, &h.cfg, now);
    let want = check_claims(&payload, &h.cfg, now);
    assert_eq!(got, want, "verified token and its claims disagree");
    if let Ok(v) = &got {
        check_accepted(v.email.as_str(), v.iat, v.exp, now);
    }
}

fn check_accepted(email: &str, iat: i64, exp: i64, now: SystemTime) {
    let now = now.duration_since(UNIX_EPOCH).expect("after epoch").as_secs() as i64;
    let leeway = MAX_LEEWAY.as_secs() as i64;
    assert_eq!(email, SERVICE_ACCOUNT);
    assert!(now - leeway < exp, "expired token accepted");
    assert!(iat <= now + leeway, "token from the future accepted");
    assert!(
        now - iat <= MAX_TOKEN_AGE.as_secs() as i64 + leeway,
        "too old token accepted"
    );
}

fn check_claims_body(h: &Harness, body: &[u8], now: SystemTime) {
    if let Ok(v) = check_claims(body, &h.cfg, now) {
        check_accepted(&v.email, v.iat, v.exp, now);
        let claims: serde_json::Value = serde_json::from_slice(body).expect("accepted json");
        assert!(
            ["https://accounts.google.com", "accounts.google.com"]
                .contains(&claims["iss"].as_str().unwrap_or_default()),
            "wrong issuer accepted"
        );
        assert_eq!(claims["aud"].as_str(), Some(AUDIENCE), "wrong audience accepted");
        assert_eq!(claims["email_verified"], serde_json::Value::Bool(true));
    }
}

fuzz_target!(|data: &[u8]| {
    let h = &*HARNESS;
    let now = UNIX_EPOCH + Duration::from_secs(NOW_SECS);
    let (headers, body) = split_input(data);

    check_router(h, &headers, body);
    check_push_body(body);
    if let Some(value) = headers.get(AUTHORIZATION) {
        let value = String::from_utf8_lossy(value.as_bytes());
        let token = match value.split_once(' ') {
            Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => token,
            _ => &value,
        };
        check_token(h, token, now);
    }
    check_claims_body(h, body, now);
});
