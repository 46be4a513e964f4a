//! Verification of the OIDC token Google Cloud Pub/Sub attaches to every push request.
//!
//! The pipeline is split so that each step is a plain function with its own tests:
//!
//! 1. [`UnverifiedJws::parse`]: size limit, exactly three base64url segments (no padding, no
//!    `+` or `/`), a header that is a JSON object without duplicate keys, `alg` exactly
//!    `RS256` (checked before any key is looked up), no `crit`, a `kid`. The header fields
//!    `jwk`, `jku`, `x5u` and `x5c` are never read: keys come only from the configured JWKS.
//! 2. Key lookup by `kid` in the [`Jwks`] cache (or a plain map in [`verify_with_keys`]).
//! 3. [`UnverifiedJws::verify_signature`]: RSASSA-PKCS1-v1_5 with SHA-256 (ring).
//! 4. [`check_claims`]: `iss`, `aud`, `email`, `email_verified`, `exp`, `nbf`, `iat`.
//!
//! Errors ([`JwtError`]) carry a reason and nothing else: never the token, a header or claim
//! value, or the `kid`.
//!
//! JWKS unavailable: when the key set cannot be fetched (and no fresh copy is cached) the
//! verifier answers [`JwtError::JwksUnavailable`], which the push endpoint maps to 503 (our
//! fault, Pub/Sub redelivers) rather than 401 (the sender's fault).

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::alphabet;
use base64::engine::DecodePaddingMode;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, URL_SAFE_NO_PAD};
use ring::signature::{RSA_PKCS1_2048_8192_SHA256, RsaPublicKeyComponents};
use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

/// Google's JWKS for the tokens Pub/Sub push sends.
pub const GOOGLE_JWKS_URL: &str = "https://www.googleapis.com/oauth2/v3/certs";
/// The issuers Google's own libraries accept.
pub const GOOGLE_ISSUERS: [&str; 2] = ["https://accounts.google.com", "accounts.google.com"];
/// Largest token accepted, checked before anything is decoded.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;
/// Largest clock skew tolerated on `exp`, `nbf` and `iat`.
pub const MAX_LEEWAY: Duration = Duration::from_secs(60);
/// Oldest token accepted (Pub/Sub tokens live one hour).
pub const MAX_TOKEN_AGE: Duration = Duration::from_secs(3600);
/// Longest `kid` accepted.
const MAX_KID_BYTES: usize = 256;
/// Largest JWKS document read.
const MAX_JWKS_BYTES: usize = 256 * 1024;
/// Cache lifetime when the JWKS response has no usable `Cache-Control: max-age`.
const DEFAULT_JWKS_TTL: Duration = Duration::from_secs(300);
/// Longest cache lifetime, whatever `max-age` says.
const MAX_JWKS_TTL: Duration = Duration::from_secs(24 * 3600);
/// Timeout of one JWKS request.
const JWKS_FETCH_TIMEOUT: Duration = Duration::from_secs(5);
const DUPLICATE_KEY: &str = "duplicate json key";

/// Settings of push authentication: config section `[push]`.
///
/// ```toml
/// [push]
/// audience = "https://helpr.example/v1/push/gmail"
/// # further audiences accepted: one per push subscription the Inbox objects name
/// # additional_audiences = ["https://helpr.example/v1/push/gmail?tenant=acme"]
/// service_account = "pubsub-push@my-project.iam.gserviceaccount.com"
/// # jwks_url = "https://www.googleapis.com/oauth2/v3/certs"
/// # leeway_secs = 60
/// # max_age_secs = 3600
/// # jwks_min_refetch_interval_secs = 30
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PushAuthConfig {
    /// The audience configured on the push subscription (or, when none is set, the push
    /// endpoint URL); compared exactly with the token's `aud`.
    pub audience: String,
    /// Further audiences accepted, compared exactly (at most
    /// [`MAX_ADDITIONAL_AUDIENCES`]): when tenants' inboxes push through subscriptions of
    /// their own, each Inbox names its audience and a push reaches only the inboxes whose
    /// audience it carries.
    pub additional_audiences: Vec<String>,
    /// The service account of the push subscription; compared exactly with `email`.
    pub service_account: String,
    /// Where the signing keys are fetched from.
    pub jwks_url: String,
    /// Tolerated clock skew on `exp`, `nbf` and `iat`; at most 60 s (larger values are clamped).
    #[serde(rename = "leeway_secs", deserialize_with = "duration_from_secs")]
    pub leeway: Duration,
    /// Oldest `iat` accepted; at most 1 h (larger values are clamped).
    #[serde(rename = "max_age_secs", deserialize_with = "duration_from_secs")]
    pub max_age: Duration,
    /// An unknown `kid` refetches the JWKS at most once per this interval.
    #[serde(
        rename = "jwks_min_refetch_interval_secs",
        deserialize_with = "duration_from_secs"
    )]
    pub jwks_min_refetch_interval: Duration,
}

impl Default for PushAuthConfig {
    fn default() -> Self {
        Self {
            audience: String::new(),
            additional_audiences: Vec::new(),
            service_account: String::new(),
            jwks_url: GOOGLE_JWKS_URL.to_owned(),
            leeway: MAX_LEEWAY,
            max_age: MAX_TOKEN_AGE,
            jwks_min_refetch_interval: Duration::from_secs(30),
        }
    }
}

impl PushAuthConfig {
    /// The same settings with `leeway` and `max_age` clamped to their maxima.
    /// Whether `aud` is the configured audience or one of the additional ones (an empty
    /// string never is).
    pub fn accepts_audience(&self, aud: &str) -> bool {
        !aud.is_empty()
            && (aud == self.audience || self.additional_audiences.iter().any(|a| a == aud))
    }

    pub fn clamped(mut self) -> Self {
        self.leeway = self.leeway.min(MAX_LEEWAY);
        self.max_age = self.max_age.min(MAX_TOKEN_AGE);
        self
    }
}

fn duration_from_secs<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    u64::deserialize(d).map(Duration::from_secs)
}

/// Why a token was not accepted. Carries no token, header or claim value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    #[error("token too large")]
    TooLarge,
    #[error("token is not a well-formed compact jws")]
    Malformed,
    #[error("duplicate key in token json")]
    DuplicateKey,
    #[error("unsupported alg")]
    UnsupportedAlg,
    #[error("crit header present")]
    CritHeader,
    #[error("kid missing")]
    MissingKid,
    #[error("unknown kid")]
    UnknownKid,
    #[error("bad signature")]
    BadSignature,
    #[error("wrong issuer")]
    WrongIssuer,
    #[error("wrong audience")]
    WrongAudience,
    #[error("wrong email")]
    WrongEmail,
    #[error("email not verified")]
    EmailNotVerified,
    #[error("exp or iat missing or not an integer")]
    BadTimeClaim,
    #[error("token expired")]
    Expired,
    #[error("token not yet valid")]
    NotYetValid,
    #[error("token issued in the future")]
    IssuedInFuture,
    #[error("token too old")]
    TooOld,
    #[error("signing keys unavailable")]
    JwksUnavailable,
}

impl JwtError {
    /// Every variant, for exhaustive tables (metrics).
    pub const ALL: [JwtError; 18] = [
        JwtError::TooLarge,
        JwtError::Malformed,
        JwtError::DuplicateKey,
        JwtError::UnsupportedAlg,
        JwtError::CritHeader,
        JwtError::MissingKid,
        JwtError::UnknownKid,
        JwtError::BadSignature,
        JwtError::WrongIssuer,
        JwtError::WrongAudience,
        JwtError::WrongEmail,
        JwtError::EmailNotVerified,
        JwtError::BadTimeClaim,
        JwtError::Expired,
        JwtError::NotYetValid,
        JwtError::IssuedInFuture,
        JwtError::TooOld,
        JwtError::JwksUnavailable,
    ];

    /// A fixed snake_case name for logs and metric labels.
    pub const fn reason(self) -> &'static str {
        match self {
            JwtError::TooLarge => "too_large",
            JwtError::Malformed => "malformed",
            JwtError::DuplicateKey => "duplicate_key",
            JwtError::UnsupportedAlg => "unsupported_alg",
            JwtError::CritHeader => "crit_header",
            JwtError::MissingKid => "missing_kid",
            JwtError::UnknownKid => "unknown_kid",
            JwtError::BadSignature => "bad_signature",
            JwtError::WrongIssuer => "wrong_issuer",
            JwtError::WrongAudience => "wrong_audience",
            JwtError::WrongEmail => "wrong_email",
            JwtError::EmailNotVerified => "email_not_verified",
            JwtError::BadTimeClaim => "bad_time_claim",
            JwtError::Expired => "expired",
            JwtError::NotYetValid => "not_yet_valid",
            JwtError::IssuedInFuture => "issued_in_future",
            JwtError::TooOld => "too_old",
            JwtError::JwksUnavailable => "jwks_unavailable",
        }
    }

    /// True when the failure is ours (keys could not be fetched), not the sender's.
    pub const fn is_unavailable(self) -> bool {
        matches!(self, JwtError::JwksUnavailable)
    }
}

/// What a verified push token says, as far as we use it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedPush {
    /// The token's audience: the configured audience or one of the additional ones.
    pub audience: String,
    /// The push service account (equal to the configured one).
    pub email: String,
    pub sub: Option<String>,
    /// Unix seconds.
    pub iat: i64,
    /// Unix seconds.
    pub exp: i64,
}

/// An RSA public key from a JWKS.
#[derive(Clone)]
pub struct RsaKey {
    components: RsaPublicKeyComponents<Vec<u8>>,
}

impl fmt::Debug for RsaKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RsaKey")
            .field("modulus_bits", &(self.components.n.len() * 8))
            .finish()
    }
}

impl RsaKey {
    /// From the big-endian modulus and exponent (leading zeros are ignored). Only moduli of
    /// 2048 to 8192 bits and exponents of at most 32 bits are accepted.
    pub fn from_components(n: &[u8], e: &[u8]) -> Option<Self> {
        let n = strip_leading_zeros(n);
        let e = strip_leading_zeros(e);
        if !(256..=1024).contains(&n.len()) || e.is_empty() || e.len() > 4 {
            return None;
        }
        Some(Self {
            components: RsaPublicKeyComponents {
                n: n.to_vec(),
                e: e.to_vec(),
            },
        })
    }

    /// From a JWK's `n` and `e` (base64url; padding tolerated, since the JWKS is trusted).
    fn from_jwk(n: &str, e: &str) -> Option<Self> {
        let n = JWKS_B64.decode(n).ok()?;
        let e = JWKS_B64.decode(e).ok()?;
        Self::from_components(&n, &e)
    }
}

fn strip_leading_zeros(b: &[u8]) -> &[u8] {
    let first = b.iter().position(|&x| x != 0).unwrap_or(b.len());
    &b[first..]
}

/// Base64url for token segments: no padding, canonical trailing bits.
const TOKEN_B64: GeneralPurpose = URL_SAFE_NO_PAD;
/// Base64url for JWK members: padding tolerated.
const JWKS_B64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::URL_SAFE,
    GeneralPurposeConfig::new()
        .with_encode_padding(false)
        .with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

fn decode_segment(segment: &str) -> Result<Vec<u8>, JwtError> {
    // The engine already rejects `=`, `+`, `/` and other bytes; checked here too so that
    // the rule does not depend on an engine setting.
    if !segment
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(JwtError::Malformed);
    }
    TOKEN_B64.decode(segment).map_err(|_| JwtError::Malformed)
}

/// A JSON value whose objects (at every depth) have no repeated key.
struct StrictValue(Value);

impl<'de> Deserialize<'de> for StrictValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(StrictVisitor)
    }
}

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = StrictValue;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a json value")
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<StrictValue, E> {
        Ok(StrictValue(Value::Bool(v)))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<StrictValue, E> {
        Ok(StrictValue(Value::from(v)))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<StrictValue, E> {
        Ok(StrictValue(Value::from(v)))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<StrictValue, E> {
        Ok(StrictValue(Value::from(v)))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<StrictValue, E> {
        Ok(StrictValue(Value::String(v.to_owned())))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<StrictValue, E> {
        Ok(StrictValue(Value::String(v)))
    }
    fn visit_unit<E: de::Error>(self) -> Result<StrictValue, E> {
        Ok(StrictValue(Value::Null))
    }
    fn visit_none<E: de::Error>(self) -> Result<StrictValue, E> {
        Ok(StrictValue(Value::Null))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<StrictValue, A::Error> {
        let mut out = Vec::new();
        while let Some(StrictValue(v)) = seq.next_element()? {
            out.push(v);
        }
        Ok(StrictValue(Value::Array(out)))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<StrictValue, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if out.contains_key(&key) {
                return Err(de::Error::custom(DUPLICATE_KEY));
            }
            let StrictValue(v) = map.next_value()?;
            out.insert(key, v);
        }
        Ok(StrictValue(Value::Object(out)))
    }
}

/// Parses a JSON object, rejecting repeated keys (a classic parser-differential trick).
pub(crate) fn parse_strict_object(bytes: &[u8]) -> Result<Map<String, Value>, JwtError> {
    match serde_json::from_slice::<StrictValue>(bytes) {
        Ok(StrictValue(Value::Object(map))) => Ok(map),
        Ok(_) => Err(JwtError::Malformed),
        Err(e) if e.to_string().starts_with(DUPLICATE_KEY) => Err(JwtError::DuplicateKey),
        Err(_) => Err(JwtError::Malformed),
    }
}

/// A compact JWS whose structure and header passed every check but whose signature has not
/// been checked yet.
pub struct UnverifiedJws<'a> {
    signing_input: &'a str,
    kid: String,
    payload: Vec<u8>,
    signature: Vec<u8>,
}

impl<'a> UnverifiedJws<'a> {
    /// Structure and header checks, in this order: size, three segments, strict base64url,
    /// header JSON object without duplicate keys, `alg` exactly `RS256`, no `crit`, `kid`.
    pub fn parse(token: &'a str) -> Result<Self, JwtError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(JwtError::TooLarge);
        }
        let mut parts = token.split('.');
        let (Some(header_b64), Some(payload_b64), Some(signature_b64), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(JwtError::Malformed);
        };
        let header = parse_strict_object(&decode_segment(header_b64)?)?;
        if header.get("alg").and_then(Value::as_str) != Some("RS256") {
            return Err(JwtError::UnsupportedAlg);
        }
        if header.contains_key("crit") {
            return Err(JwtError::CritHeader);
        }
        // `jwk`, `jku`, `x5u`, `x5c` are deliberately never read.
        let kid = match header.get("kid") {
            None => return Err(JwtError::MissingKid),
            Some(Value::String(kid)) if !kid.is_empty() && kid.len() <= MAX_KID_BYTES => {
                kid.clone()
            }
            Some(_) => return Err(JwtError::Malformed),
        };
        if signature_b64.is_empty() {
            return Err(JwtError::Malformed);
        }
        let payload = decode_segment(payload_b64)?;
        let signature = decode_segment(signature_b64)?;
        let signing_input = &token[..header_b64.len() + 1 + payload_b64.len()];
        Ok(Self {
            signing_input,
            kid,
            payload,
            signature,
        })
    }

    /// The key id, only ever used as a lookup key.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// Checks the RS256 signature over `header_b64 '.' payload_b64` and hands back the
    /// payload bytes.
    pub fn verify_signature(self, key: &RsaKey) -> Result<Vec<u8>, JwtError> {
        key.components
            .verify(
                &RSA_PKCS1_2048_8192_SHA256,
                self.signing_input.as_bytes(),
                &self.signature,
            )
            .map_err(|_| JwtError::BadSignature)?;
        Ok(self.payload)
    }
}

/// Structure, header and signature checks against a fixed key set; no claims checks.
/// Returns the payload bytes.
pub fn verify_signature_with_keys(
    token: &str,
    keys: &HashMap<String, RsaKey>,
) -> Result<Vec<u8>, JwtError> {
    let jws = UnverifiedJws::parse(token)?;
    let key = keys.get(jws.kid()).ok_or(JwtError::UnknownKid)?;
    jws.verify_signature(key)
}

/// Every check, against a fixed key set (no JWKS fetching).
pub fn verify_with_keys(
    token: &str,
    keys: &HashMap<String, RsaKey>,
    cfg: &PushAuthConfig,
    now: SystemTime,
) -> Result<VerifiedPush, JwtError> {
    let payload = verify_signature_with_keys(token, keys)?;
    check_claims(&payload, cfg, now)
}

pub(crate) fn unix_seconds(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => i64::try_from(e.duration().as_secs()).map_or(i64::MIN, |s| -s),
    }
}

fn secs(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

/// Claims checks on a signature-verified payload.
pub fn check_claims(
    payload: &[u8],
    cfg: &PushAuthConfig,
    now: SystemTime,
) -> Result<VerifiedPush, JwtError> {
    let claims = parse_strict_object(payload)?;
    let string = |name: &str| claims.get(name).and_then(Value::as_str);

    match string("iss") {
        Some(iss) if GOOGLE_ISSUERS.contains(&iss) => {}
        _ => return Err(JwtError::WrongIssuer),
    }
    // Google sends a string; an array is rejected rather than searched.
    let audience = match string("aud") {
        Some(aud) if cfg.accepts_audience(aud) => aud,
        _ => return Err(JwtError::WrongAudience),
    };
    let email = match string("email") {
        Some(email) if !cfg.service_account.is_empty() && email == cfg.service_account => email,
        _ => return Err(JwtError::WrongEmail),
    };
    if claims.get("email_verified") != Some(&Value::Bool(true)) {
        return Err(JwtError::EmailNotVerified);
    }

    let time = |name: &str| -> Result<Option<i64>, JwtError> {
        match claims.get(name) {
            None => Ok(None),
            Some(v) => v.as_i64().map(Some).ok_or(JwtError::BadTimeClaim),
        }
    };
    let exp = time("exp")?.ok_or(JwtError::BadTimeClaim)?;
    let iat = time("iat")?.ok_or(JwtError::BadTimeClaim)?;
    let nbf = time("nbf")?;

    let now = unix_seconds(now);
    let leeway = secs(cfg.leeway.min(MAX_LEEWAY));
    let max_age = secs(cfg.max_age.min(MAX_TOKEN_AGE));
    if now.saturating_sub(leeway) >= exp {
        return Err(JwtError::Expired);
    }
    if let Some(nbf) = nbf
        && nbf > now.saturating_add(leeway)
    {
        return Err(JwtError::NotYetValid);
    }
    if iat > now.saturating_add(leeway) {
        return Err(JwtError::IssuedInFuture);
    }
    if now.saturating_sub(iat) > max_age.saturating_add(leeway) {
        return Err(JwtError::TooOld);
    }

    Ok(VerifiedPush {
        audience: audience.to_owned(),
        email: email.to_owned(),
        sub: string("sub").map(str::to_owned),
        iat,
        exp,
    })
}

/// Why a JWKS fetch failed (logged by reason; never the document).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum JwksFetchError {
    #[error("jwks request failed")]
    Request,
    #[error("jwks endpoint answered a non-200 status")]
    Status,
    #[error("jwks document too large")]
    TooLarge,
    #[error("jwks document is not a json key set")]
    Invalid,
    #[error("jwks has no usable rs256 key")]
    NoKeys,
}

impl JwksFetchError {
    pub const fn reason(self) -> &'static str {
        match self {
            JwksFetchError::Request => "request",
            JwksFetchError::Status => "status",
            JwksFetchError::TooLarge => "too_large",
            JwksFetchError::Invalid => "invalid",
            JwksFetchError::NoKeys => "no_keys",
        }
    }
}

/// Parses a JWKS document: RSA keys with a `kid`, `alg` absent or `RS256`, `use` absent or
/// `sig`. Other keys are skipped; the first key of a repeated `kid` wins.
pub fn parse_jwks(bytes: &[u8]) -> Result<HashMap<String, RsaKey>, JwksFetchError> {
    let doc: Value = serde_json::from_slice(bytes).map_err(|_| JwksFetchError::Invalid)?;
    let keys = doc
        .get("keys")
        .and_then(Value::as_array)
        .ok_or(JwksFetchError::Invalid)?;
    let mut out = HashMap::new();
    for jwk in keys {
        let field = |name: &str| jwk.get(name).and_then(Value::as_str);
        let absent = |name: &str| matches!(jwk.get(name), None | Some(Value::Null));
        let alg_ok = absent("alg") || field("alg") == Some("RS256");
        let use_ok = absent("use") || field("use") == Some("sig");
        if field("kty") != Some("RSA") || !alg_ok || !use_ok {
            continue;
        }
        let Some(kid) = field("kid").filter(|k| !k.is_empty() && k.len() <= MAX_KID_BYTES) else {
            continue;
        };
        let (Some(n), Some(e)) = (field("n"), field("e")) else {
            continue;
        };
        if let Some(key) = RsaKey::from_jwk(n, e) {
            out.entry(kid.to_owned()).or_insert(key);
        }
    }
    if out.is_empty() {
        return Err(JwksFetchError::NoKeys);
    }
    Ok(out)
}

/// The cache lifetime a `Cache-Control` header asks for (`max-age`; `no-cache`/`no-store`
/// mean zero), or `None`.
pub fn cache_control_max_age(value: &str) -> Option<Duration> {
    let mut max_age = None;
    for directive in value.split(',') {
        let directive = directive.trim();
        let (name, arg) = match directive.split_once('=') {
            Some((n, a)) => (n.trim(), Some(a.trim().trim_matches('"'))),
            None => (directive, None),
        };
        if name.eq_ignore_ascii_case("no-store") || name.eq_ignore_ascii_case("no-cache") {
            return Some(Duration::ZERO);
        }
        if name.eq_ignore_ascii_case("max-age")
            && let Some(secs) = arg.and_then(|a| a.parse::<u64>().ok())
        {
            max_age = Some(Duration::from_secs(secs));
        }
    }
    max_age
}

#[derive(Default)]
struct JwksState {
    keys: HashMap<String, Arc<RsaKey>>,
    /// Until when `keys` may be used; `None` before the first successful fetch.
    fresh_until: Option<Instant>,
    /// Start of the last fetch attempt, successful or not.
    last_attempt: Option<Instant>,
    last_attempt_failed: bool,
    /// Incremented by every fetch attempt.
    generation: u64,
}

enum Lookup {
    Found(Arc<RsaKey>),
    Unknown,
    Unavailable,
    Fetch,
}

impl JwksState {
    fn lookup(&self, kid: &str, now: Instant, min_interval: Duration) -> Lookup {
        let fresh = self.fresh_until.is_some_and(|t| now < t);
        let throttled = self
            .last_attempt
            .is_some_and(|t| now.saturating_duration_since(t) < min_interval);
        match (fresh, self.keys.get(kid), throttled) {
            (true, Some(key), _) => Lookup::Found(key.clone()),
            (_, _, false) => Lookup::Fetch,
            (_, _, true) if self.last_attempt_failed => Lookup::Unavailable,
            // Fetched successfully within the interval (a TTL shorter than the interval).
            (_, Some(key), true) => Lookup::Found(key.clone()),
            (_, None, true) => Lookup::Unknown,
        }
    }
}

/// The signing keys, fetched from a URL and cached per the response's `Cache-Control`.
///
/// An unknown `kid` (or an expired cache) triggers a fetch, at most one per
/// `min_refetch_interval` whether it succeeds or not; concurrent callers wait for and share
/// that one fetch.
pub struct Jwks {
    url: String,
    client: reqwest::Client,
    min_refetch_interval: Duration,
    state: Mutex<JwksState>,
    fetching: tokio::sync::Mutex<()>,
}

impl fmt::Debug for Jwks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Jwks")
            .field("url", &self.url)
            .field("min_refetch_interval", &self.min_refetch_interval)
            .finish_non_exhaustive()
    }
}

/// The JWKS HTTP client could not be built (TLS backend initialisation).
#[derive(Debug, thiserror::Error)]
#[error("cannot build the jwks http client")]
pub struct JwksClientError(#[source] reqwest::Error);

impl Jwks {
    pub fn new(url: String, min_refetch_interval: Duration) -> Result<Self, JwksClientError> {
        let client = reqwest::Client::builder()
            .timeout(JWKS_FETCH_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(JwksClientError)?;
        Ok(Self {
            url,
            client,
            min_refetch_interval,
            state: Mutex::new(JwksState::default()),
            fetching: tokio::sync::Mutex::new(()),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, JwksState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The key for `kid`, fetching the key set when needed (see the type's documentation).
    pub async fn key(&self, kid: &str) -> Result<Arc<RsaKey>, JwtError> {
        let seen_generation = {
            let state = self.state();
            match state.lookup(kid, Instant::now(), self.min_refetch_interval) {
                Lookup::Found(key) => return Ok(key),
                Lookup::Unknown => return Err(JwtError::UnknownKid),
                Lookup::Unavailable => return Err(JwtError::JwksUnavailable),
                Lookup::Fetch => state.generation,
            }
        };
        let _fetching = self.fetching.lock().await;
        {
            let state = self.state();
            if state.generation != seen_generation {
                // Someone fetched while we waited: decide on their result.
                match state.lookup(kid, Instant::now(), self.min_refetch_interval) {
                    Lookup::Found(key) => return Ok(key),
                    Lookup::Unknown => return Err(JwtError::UnknownKid),
                    Lookup::Unavailable => return Err(JwtError::JwksUnavailable),
                    Lookup::Fetch => {}
                }
            }
        }
        let started = Instant::now();
        let fetched = self.fetch().await;
        let mut state = self.state();
        state.generation = state.generation.wrapping_add(1);
        state.last_attempt = Some(started);
        match fetched {
            Ok((keys, ttl)) => {
                let ttl = ttl.max(self.min_refetch_interval).min(MAX_JWKS_TTL);
                state.keys = keys.into_iter().map(|(k, v)| (k, Arc::new(v))).collect();
                state.fresh_until = Some(started + ttl);
                state.last_attempt_failed = false;
                tracing::debug!(
                    keys = state.keys.len(),
                    ttl_secs = ttl.as_secs(),
                    "jwks fetched"
                );
                state.keys.get(kid).cloned().ok_or(JwtError::UnknownKid)
            }
            Err(e) => {
                state.last_attempt_failed = true;
                tracing::warn!(reason = e.reason(), "jwks fetch failed");
                match state.fresh_until {
                    // Keys still fresh and known: a failed refetch does not take them away.
                    Some(t) if started < t => state
                        .keys
                        .get(kid)
                        .cloned()
                        .ok_or(JwtError::JwksUnavailable),
                    _ => Err(JwtError::JwksUnavailable),
                }
            }
        }
    }

    async fn fetch(&self) -> Result<(HashMap<String, RsaKey>, Duration), JwksFetchError> {
        let mut response = self
            .client
            .get(&self.url)
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|_| JwksFetchError::Request)?;
        if response.status() != reqwest::StatusCode::OK {
            return Err(JwksFetchError::Status);
        }
        let ttl = response
            .headers()
            .get_all(reqwest::header::CACHE_CONTROL)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .filter_map(cache_control_max_age)
            .min()
            .unwrap_or(DEFAULT_JWKS_TTL);
        if response
            .content_length()
            .is_some_and(|len| len > MAX_JWKS_BYTES as u64)
        {
            return Err(JwksFetchError::TooLarge);
        }
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|_| JwksFetchError::Request)?
        {
            if body.len() + chunk.len() > MAX_JWKS_BYTES {
                return Err(JwksFetchError::TooLarge);
            }
            body.extend_from_slice(&chunk);
        }
        Ok((parse_jwks(&body)?, ttl))
    }
}

/// Why a [`Verifier`] could not be built.
#[derive(Debug, thiserror::Error)]
pub enum VerifierConfigError {
    #[error("push.audience is not set")]
    MissingAudience,
    #[error(
        "push.additional_audiences must hold at most 64 audiences, each non-empty, without whitespace and at most 512 bytes"
    )]
    InvalidAdditionalAudiences,
    #[error("push.service_account is not set")]
    MissingServiceAccount,
    #[error(transparent)]
    Client(#[from] JwksClientError),
}

/// Most additional push audiences accepted.
pub const MAX_ADDITIONAL_AUDIENCES: usize = 64;

/// Verifies push tokens against the configured audience, service account and JWKS.
#[derive(Debug)]
pub struct Verifier {
    cfg: PushAuthConfig,
    jwks: Jwks,
}

impl Verifier {
    /// Clamps leeway and max age; refuses an empty audience or service account.
    pub fn new(cfg: PushAuthConfig) -> Result<Self, VerifierConfigError> {
        let cfg = cfg.clamped();
        if cfg.audience.is_empty() {
            return Err(VerifierConfigError::MissingAudience);
        }
        if cfg.additional_audiences.len() > MAX_ADDITIONAL_AUDIENCES
            || cfg
                .additional_audiences
                .iter()
                .any(|a| a.is_empty() || a.len() > 512 || a.chars().any(char::is_whitespace))
        {
            return Err(VerifierConfigError::InvalidAdditionalAudiences);
        }
        if cfg.service_account.is_empty() {
            return Err(VerifierConfigError::MissingServiceAccount);
        }
        let jwks = Jwks::new(cfg.jwks_url.clone(), cfg.jwks_min_refetch_interval)?;
        Ok(Self { cfg, jwks })
    }

    pub fn config(&self) -> &PushAuthConfig {
        &self.cfg
    }

    /// Every check; the JWKS is only consulted once the structure and `alg` passed.
    pub async fn verify(&self, token: &str, now: SystemTime) -> Result<VerifiedPush, JwtError> {
        let jws = UnverifiedJws::parse(token)?;
        let key = self.jwks.key(jws.kid()).await?;
        let payload = jws.verify_signature(&key)?;
        check_claims(&payload, &self.cfg, now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WYCHEPROOF: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../shared/testdata/wycheproof/jws_rs256_only.json"
    );

    fn wycheproof_keys(doc: &Value) -> HashMap<String, RsaKey> {
        let groups = doc["testGroups"].as_array().unwrap();
        let jwks = serde_json::json!({
            "keys": groups.iter().map(|g| g["public"].clone()).collect::<Vec<_>>()
        });
        parse_jwks(jwks.to_string().as_bytes()).unwrap()
    }

    #[test]
    fn wycheproof_rs256_vectors_accept_exactly_the_valid_ones() {
        let doc: Value = serde_json::from_slice(&std::fs::read(WYCHEPROOF).unwrap()).unwrap();
        let keys = wycheproof_keys(&doc);
        assert_eq!(keys.len(), 2);
        let (mut valid, mut invalid) = (0, 0);
        for group in doc["testGroups"].as_array().unwrap() {
            for t in group["tests"].as_array().unwrap() {
                let id = &t["tcId"];
                let jws = t["jws"].as_str().unwrap();
                let got = verify_signature_with_keys(jws, &keys);
                match t["result"].as_str().unwrap() {
                    "valid" => {
                        assert!(got.is_ok(), "tcId {id} rejected: {got:?}");
                        valid += 1;
                    }
                    "invalid" => {
                        assert!(got.is_err(), "tcId {id} accepted");
                        invalid += 1;
                    }
                    other => panic!("tcId {id}: unexpected result {other}"),
                }
            }
        }
        assert_eq!((valid, invalid), (6, 225));
    }

    #[test]
    fn strict_json_rejects_duplicate_keys_at_any_depth() {
        assert_eq!(
            parse_strict_object(br#"{"a":1,"a":1}"#),
            Err(JwtError::DuplicateKey)
        );
        assert_eq!(
            parse_strict_object(br#"{"a":{"b":1,"b":2}}"#),
            Err(JwtError::DuplicateKey)
        );
        assert_eq!(parse_strict_object(br#"[1]"#), Err(JwtError::Malformed));
        assert_eq!(parse_strict_object(br#"{"a":1"#), Err(JwtError::Malformed));
        let ok = parse_strict_object(br#"{"a":[1,2.5,"x",null,true],"b":{"c":-1}}"#).unwrap();
        assert_eq!(ok.len(), 2);
    }

    #[test]
    fn segments_must_be_unpadded_base64url() {
        assert!(decode_segment("eyJhIjoxfQ").is_ok());
        for bad in ["eyJhIjoxfQ==", "ab+c", "ab/c", "ab c", "ab.c", "a\u{e9}b"] {
            assert_eq!(decode_segment(bad), Err(JwtError::Malformed), "{bad}");
        }
        // Non-canonical trailing bits ("eQ" and "eR" would decode to the same byte).
        assert_eq!(decode_segment("eR"), Err(JwtError::Malformed));
    }

    fn header(json: &str) -> String {
        format!("{}.e30.c2ln", URL_SAFE_NO_PAD.encode(json))
    }

    #[test]
    fn header_checks_run_before_any_key_is_needed() {
        let cases = [
            (r#"{"alg":"none","kid":"k"}"#, JwtError::UnsupportedAlg),
            (r#"{"alg":"HS256","kid":"k"}"#, JwtError::UnsupportedAlg),
            (r#"{"alg":"rs256","kid":"k"}"#, JwtError::UnsupportedAlg),
            (r#"{"kid":"k"}"#, JwtError::UnsupportedAlg),
            (
                r#"{"alg":"RS256","kid":"k","crit":["b64"]}"#,
                JwtError::CritHeader,
            ),
            (r#"{"alg":"RS256"}"#, JwtError::MissingKid),
            (r#"{"alg":"RS256","kid":7}"#, JwtError::Malformed),
            (r#"{"alg":"RS256","kid":""}"#, JwtError::Malformed),
            (
                r#"{"alg":"RS256","alg":"RS256","kid":"k"}"#,
                JwtError::DuplicateKey,
            ),
        ];
        for (json, want) in cases {
            assert_eq!(
                UnverifiedJws::parse(&header(json)).err(),
                Some(want),
                "{json}"
            );
        }
        let long_kid = format!(r#"{{"alg":"RS256","kid":"{}"}}"#, "k".repeat(257));
        assert_eq!(
            UnverifiedJws::parse(&header(&long_kid)).err(),
            Some(JwtError::Malformed)
        );
        let token = header(r#"{"alg":"RS256","kid":"k","jku":"x"}"#);
        let ok = UnverifiedJws::parse(&token).unwrap();
        assert_eq!(ok.kid(), "k");
    }

    #[test]
    fn tokens_over_16_kib_are_rejected_before_decoding() {
        let token = "!".repeat(MAX_TOKEN_BYTES + 1);
        assert_eq!(UnverifiedJws::parse(&token).err(), Some(JwtError::TooLarge));
        for bad in ["a.b", "a.b.c.d", "", "..", ".e30.c2ln"] {
            assert_eq!(
                UnverifiedJws::parse(bad).err(),
                Some(JwtError::Malformed),
                "{bad}"
            );
        }
    }

    fn cfg() -> PushAuthConfig {
        PushAuthConfig {
            audience: "https://helpr.test/v1/push/gmail".into(),
            service_account: "push@proj.iam.gserviceaccount.com".into(),
            ..PushAuthConfig::default()
        }
    }

    const NOW: i64 = 1_700_000_000;

    fn claims(patch: Value) -> Vec<u8> {
        let mut c = serde_json::json!({
            "iss": "https://accounts.google.com",
            "aud": "https://helpr.test/v1/push/gmail",
            "azp": "1234",
            "email": "push@proj.iam.gserviceaccount.com",
            "email_verified": true,
            "sub": "1234",
            "iat": NOW - 10,
            "exp": NOW + 3590,
        });
        for (k, v) in patch.as_object().unwrap() {
            if v.is_null() {
                c.as_object_mut().unwrap().remove(k);
            } else {
                c[k] = v.clone();
            }
        }
        c.to_string().into_bytes()
    }

    fn at(secs: i64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).unwrap())
    }

    #[test]
    fn claims_of_a_genuine_push_token_pass() {
        let v = check_claims(&claims(serde_json::json!({})), &cfg(), at(NOW)).unwrap();
        assert_eq!(v.email, "push@proj.iam.gserviceaccount.com");
        assert_eq!((v.iat, v.exp), (NOW - 10, NOW + 3590));
        let short = serde_json::json!({"iss": "accounts.google.com"});
        assert!(check_claims(&claims(short), &cfg(), at(NOW)).is_ok());
    }

    #[test]
    fn additional_audiences_are_accepted_and_reported_exactly() {
        use serde_json::json;
        let mut c = cfg();
        c.additional_audiences = vec!["https://helpr.test/v1/push/gmail?tenant=acme".into()];
        let v = check_claims(&claims(json!({})), &c, at(NOW)).unwrap();
        assert_eq!(v.audience, "https://helpr.test/v1/push/gmail");
        let other = json!({"aud": "https://helpr.test/v1/push/gmail?tenant=acme"});
        let v = check_claims(&claims(other), &c, at(NOW)).unwrap();
        assert_eq!(v.audience, "https://helpr.test/v1/push/gmail?tenant=acme");
        for aud in [
            "https://helpr.test/v1/push/gmail?tenant=acm",
            "https://helpr.test/v1/push/gmail?tenant=acme ",
            "",
        ] {
            assert_eq!(
                check_claims(&claims(json!({ "aud": aud })), &c, at(NOW)).err(),
                Some(JwtError::WrongAudience),
                "{aud:?}"
            );
        }
        for bad in [
            vec![String::new()],
            vec!["a b".into()],
            vec!["x".into(); 65],
        ] {
            let mut c = cfg();
            c.jwks_url = "http://127.0.0.1:1/certs".into();
            c.additional_audiences = bad;
            assert!(matches!(
                Verifier::new(c),
                Err(VerifierConfigError::InvalidAdditionalAudiences)
            ));
        }
    }

    #[test]
    fn each_claim_rule_rejects_with_its_own_reason() {
        use serde_json::json;
        let cases = [
            (
                json!({"iss": "https://accounts.google.com/"}),
                JwtError::WrongIssuer,
            ),
            (json!({"iss": null}), JwtError::WrongIssuer),
            (
                json!({"aud": "https://helpr.test/v1/push/gmail/"}),
                JwtError::WrongAudience,
            ),
            (
                json!({"aud": "https://helpr.test/v1/push/gmai"}),
                JwtError::WrongAudience,
            ),
            (
                json!({"aud": ["https://helpr.test/v1/push/gmail"]}),
                JwtError::WrongAudience,
            ),
            (
                json!({"email": "PUSH@proj.iam.gserviceaccount.com"}),
                JwtError::WrongEmail,
            ),
            (
                json!({"email_verified": "true"}),
                JwtError::EmailNotVerified,
            ),
            (json!({"email_verified": false}), JwtError::EmailNotVerified),
            (json!({"email_verified": null}), JwtError::EmailNotVerified),
            (json!({"exp": null}), JwtError::BadTimeClaim),
            (json!({"iat": null}), JwtError::BadTimeClaim),
            (json!({"exp": "1800000000"}), JwtError::BadTimeClaim),
            (json!({"exp": NOW - 61}), JwtError::Expired),
            (json!({"nbf": NOW + 61}), JwtError::NotYetValid),
            (json!({"iat": NOW + 61}), JwtError::IssuedInFuture),
            (json!({"iat": NOW - 3661}), JwtError::TooOld),
        ];
        for (patch, want) in cases {
            let got = check_claims(&claims(patch.clone()), &cfg(), at(NOW));
            assert_eq!(got.err(), Some(want), "{patch}");
        }
    }

    #[test]
    fn leeway_is_honoured_and_clamped_to_60_seconds() {
        use serde_json::json;
        for patch in [
            json!({"exp": NOW - 59}),
            json!({"nbf": NOW + 60}),
            json!({"iat": NOW + 60}),
            json!({"iat": NOW - 3660}),
        ] {
            assert!(
                check_claims(&claims(patch.clone()), &cfg(), at(NOW)).is_ok(),
                "{patch}"
            );
        }
        let lax = PushAuthConfig {
            leeway: Duration::from_secs(3600),
            max_age: Duration::from_secs(86400),
            ..cfg()
        };
        let got = check_claims(&claims(json!({"exp": NOW - 120})), &lax, at(NOW));
        assert_eq!(got.err(), Some(JwtError::Expired));
        let got = check_claims(&claims(json!({"iat": NOW - 7200})), &lax, at(NOW));
        assert_eq!(got.err(), Some(JwtError::TooOld));
    }

    #[test]
    fn an_unconfigured_audience_or_service_account_matches_nothing() {
        use serde_json::json;
        let empty = PushAuthConfig::default();
        let got = check_claims(&claims(json!({"aud": ""})), &empty, at(NOW));
        assert_eq!(got.err(), Some(JwtError::WrongAudience));
        assert!(Verifier::new(empty).is_err());
    }

    #[test]
    fn cache_control_max_age_is_read() {
        let ma = cache_control_max_age;
        assert_eq!(
            ma("public, max-age=19813, must-revalidate, no-transform"),
            Some(Duration::from_secs(19813))
        );
        assert_eq!(ma("MAX-AGE=5"), Some(Duration::from_secs(5)));
        assert_eq!(ma("no-store"), Some(Duration::ZERO));
        assert_eq!(ma("public"), None);
        assert_eq!(ma("max-age=abc"), None);
    }

    #[test]
    fn jwks_parsing_keeps_only_rs256_signing_rsa_keys() {
        let doc: Value = serde_json::from_slice(&std::fs::read(WYCHEPROOF).unwrap()).unwrap();
        let public = doc["testGroups"][0]["public"].clone();
        let with = |patch: Value| {
            let mut k = public.clone();
            for (name, v) in patch.as_object().unwrap() {
                k[name] = v.clone();
            }
            k
        };
        use serde_json::json;
        let jwks = json!({"keys": [
            with(json!({"kid": "ok"})),
            with(json!({"kid": "enc", "use": "enc"})),
            with(json!({"kid": "rs384", "alg": "RS384"})),
            with(json!({"kid": "ec", "kty": "EC"})),
            with(json!({"kid": "short", "n": "AQAB"})),
            with(json!({"kid": "ok", "n": "AQAB"})),
            {"kty": "oct", "k": "c2VjcmV0"},
        ]});
        let keys = parse_jwks(jwks.to_string().as_bytes()).unwrap();
        assert_eq!(keys.keys().collect::<Vec<_>>(), vec!["ok"]);
        assert_eq!(parse_jwks(b"{}").err(), Some(JwksFetchError::Invalid));
        assert_eq!(
            parse_jwks(br#"{"keys":[]}"#).err(),
            Some(JwksFetchError::NoKeys)
        );
    }

    #[test]
    fn jwks_lookup_refetches_an_unknown_kid_at_most_once_per_interval() {
        let interval = Duration::from_secs(30);
        let t0 = Instant::now();
        let empty = JwksState::default();
        assert!(matches!(empty.lookup("a", t0, interval), Lookup::Fetch));

        let key = Arc::new(RsaKey::from_components(&[0xC5; 256], &[1, 0, 1]).unwrap());
        let state = JwksState {
            keys: HashMap::from([("a".to_owned(), key)]),
            fresh_until: Some(t0 + Duration::from_secs(300)),
            last_attempt: Some(t0),
            last_attempt_failed: false,
            generation: 1,
        };
        assert!(matches!(state.lookup("a", t0, interval), Lookup::Found(_)));
        assert!(matches!(
            state.lookup("b", t0 + Duration::from_secs(29), interval),
            Lookup::Unknown
        ));
        assert!(matches!(
            state.lookup("b", t0 + Duration::from_secs(30), interval),
            Lookup::Fetch
        ));
        // Expired cache: refetch even for a known kid.
        assert!(matches!(
            state.lookup("a", t0 + Duration::from_secs(300), interval),
            Lookup::Fetch
        ));

        let failed = JwksState {
            last_attempt_failed: true,
            fresh_until: None,
            ..state
        };
        assert!(matches!(
            failed.lookup("a", t0 + Duration::from_secs(1), interval),
            Lookup::Unavailable
        ));
        assert!(matches!(
            failed.lookup("a", t0 + Duration::from_secs(31), interval),
            Lookup::Fetch
        ));
    }

    #[test]
    fn reasons_are_distinct() {
        let mut reasons: Vec<_> = JwtError::ALL.iter().map(|e| e.reason()).collect();
        reasons.sort_unstable();
        reasons.dedup();
        assert_eq!(reasons.len(), JwtError::ALL.len());
    }
}
