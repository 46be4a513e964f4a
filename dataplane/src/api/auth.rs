//! Authentication of agents: OIDC bearer tokens (RS256 JWT) from the configured issuer.
//!
//! Structure, header and signature checks are the push verifier's ([`crate::ingest::jwt`]:
//! size limit, strict base64url, `alg` exactly `RS256` before any key lookup, no `crit`,
//! keys only from the configured JWKS, cached and refetched at most once per interval, JSON
//! without duplicate keys). The claims checked here:
//!
//! - `iss` equal to `api.issuer`;
//! - `aud` equal to `api.audience`, or an array containing it;
//! - `exp` required; `nbf` and `iat` (when present) not in the future; at most
//!   `api.leeway_secs` (≤ 60) of clock skew;
//! - the tenant claim (`api.tenant_claim`) a valid tenant id;
//! - the agent claim (`api.agent_claim`) a non-empty string of at most 320 bytes; when it is
//!   `email`, `email_verified` must be `true`;
//! - the groups claim (`api.groups_claim`) absent (no teams) or an array of at most 1000
//!   non-empty strings of at most 256 bytes.
//!
//! Errors ([`AgentAuthError`]) carry a reason only: never the token or a claim value.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, SystemTime};

use serde_json::Value;

use crate::access::Agent;
use crate::config::ApiSettings;
use crate::ids::TenantId;
use crate::ingest::jwt::{
    Jwks, JwksClientError, JwtError, MAX_LEEWAY, RsaKey, UnverifiedJws, parse_strict_object,
    unix_seconds, verify_signature_with_keys,
};

/// Longest agent name accepted (an email address at most).
const MAX_AGENT_BYTES: usize = 320;
/// Longest team name accepted.
const MAX_TEAM_BYTES: usize = 256;
/// Most teams accepted in one token.
const MAX_TEAMS: usize = 1000;

/// Why an agent token was not accepted. Carries no token or claim value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AgentAuthError {
    /// Structure, header, signature or standard claims (see [`JwtError`]).
    #[error(transparent)]
    Jwt(JwtError),
    #[error("tenant claim missing or not a tenant id")]
    BadTenant,
    #[error("agent claim missing or malformed")]
    BadAgent,
    #[error("groups claim malformed")]
    BadGroups,
}

impl AgentAuthError {
    /// A fixed snake_case name for logs and metric labels.
    pub const fn reason(self) -> &'static str {
        match self {
            AgentAuthError::Jwt(e) => e.reason(),
            AgentAuthError::BadTenant => "bad_tenant",
            AgentAuthError::BadAgent => "bad_agent",
            AgentAuthError::BadGroups => "bad_groups",
        }
    }

    /// True when the failure is ours (the issuer's keys could not be fetched).
    pub const fn is_unavailable(self) -> bool {
        matches!(self, AgentAuthError::Jwt(e) if e.is_unavailable())
    }
}

impl From<JwtError> for AgentAuthError {
    fn from(e: JwtError) -> Self {
        AgentAuthError::Jwt(e)
    }
}

/// Why an [`AgentVerifier`] could not be built.
#[derive(Debug, thiserror::Error)]
pub enum AgentVerifierConfigError {
    #[error(
        "api.{0} is not set (HELPR_API__{upper}); the agent api never runs without authentication", upper = .0.to_ascii_uppercase()
    )]
    Missing(&'static str),
    #[error("api.jwks_url must be https:// (or http:// to a loopback address)")]
    InsecureJwksUrl,
    #[error("api.{0} must be a non-empty claim name")]
    BadClaimName(&'static str),
    #[error(transparent)]
    Client(#[from] JwksClientError),
}

/// The checks of agent tokens, from [`ApiSettings`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentAuthConfig {
    pub issuer: String,
    pub audience: String,
    pub tenant_claim: String,
    pub agent_claim: String,
    pub groups_claim: String,
    /// At most [`MAX_LEEWAY`].
    pub leeway: Duration,
}

impl AgentAuthConfig {
    /// Validates the settings (issuer, audience, claim names) and clamps the leeway.
    pub fn from_settings(s: &ApiSettings) -> Result<Self, AgentVerifierConfigError> {
        if s.issuer.is_empty() {
            return Err(AgentVerifierConfigError::Missing("issuer"));
        }
        if s.audience.is_empty() {
            return Err(AgentVerifierConfigError::Missing("audience"));
        }
        for (name, value) in [
            ("tenant_claim", &s.tenant_claim),
            ("agent_claim", &s.agent_claim),
            ("groups_claim", &s.groups_claim),
        ] {
            if value.trim().is_empty() {
                return Err(AgentVerifierConfigError::BadClaimName(name));
            }
        }
        Ok(Self {
            issuer: s.issuer.clone(),
            audience: s.audience.clone(),
            tenant_claim: s.tenant_claim.clone(),
            agent_claim: s.agent_claim.clone(),
            groups_claim: s.groups_claim.clone(),
            leeway: Duration::from_secs(s.leeway_secs).min(MAX_LEEWAY),
        })
    }
}

/// Whether a JWKS URL is acceptable: `https://`, or `http://` to a loopback host.
fn jwks_url_is_safe(url: &str) -> bool {
    if url.starts_with("https://") {
        return true;
    }
    let Some(rest) = url.strip_prefix("http://") else {
        return false;
    };
    let host = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host = match host.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    };
    host == "localhost"
        || host == "[::1]"
        || host
            .parse::<std::net::Ipv4Addr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Verifies agents' bearer tokens against the configured issuer, audience and JWKS.
#[derive(Debug)]
pub struct AgentVerifier {
    cfg: AgentAuthConfig,
    jwks: Jwks,
}

impl AgentVerifier {
    /// Refuses missing issuer, audience or JWKS URL, and a JWKS URL that is not https.
    pub fn new(settings: &ApiSettings) -> Result<Self, AgentVerifierConfigError> {
        let cfg = AgentAuthConfig::from_settings(settings)?;
        if settings.jwks_url.is_empty() {
            return Err(AgentVerifierConfigError::Missing("jwks_url"));
        }
        if !jwks_url_is_safe(&settings.jwks_url) {
            return Err(AgentVerifierConfigError::InsecureJwksUrl);
        }
        let jwks = Jwks::new(
            settings.jwks_url.clone(),
            Duration::from_secs(settings.jwks_min_refetch_interval_secs),
        )?;
        Ok(Self { cfg, jwks })
    }

    /// The checks in force.
    pub fn config(&self) -> &AgentAuthConfig {
        &self.cfg
    }

    /// Every check; the JWKS is consulted only once structure and `alg` passed.
    pub async fn verify(&self, token: &str, now: SystemTime) -> Result<Agent, AgentAuthError> {
        let jws = UnverifiedJws::parse(token)?;
        let key = self.jwks.key(jws.kid()).await?;
        let payload = jws.verify_signature(&key)?;
        check_agent_claims(&payload, &self.cfg, now)
    }
}

/// Every check against a fixed key set (no JWKS fetching).
pub fn verify_with_keys(
    token: &str,
    keys: &HashMap<String, RsaKey>,
    cfg: &AgentAuthConfig,
    now: SystemTime,
) -> Result<Agent, AgentAuthError> {
    let payload = verify_signature_with_keys(token, keys)?;
    check_agent_claims(&payload, cfg, now)
}

fn secs(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

/// Claims checks on a signature-verified payload (see the module docs).
pub fn check_agent_claims(
    payload: &[u8],
    cfg: &AgentAuthConfig,
    now: SystemTime,
) -> Result<Agent, AgentAuthError> {
    let claims = parse_strict_object(payload)?;
    let string = |name: &str| claims.get(name).and_then(Value::as_str);

    if cfg.issuer.is_empty() || string("iss") != Some(cfg.issuer.as_str()) {
        return Err(JwtError::WrongIssuer.into());
    }
    let audience_ok = match claims.get("aud") {
        Some(Value::String(aud)) => *aud == cfg.audience,
        Some(Value::Array(auds)) => auds
            .iter()
            .any(|a| a.as_str() == Some(cfg.audience.as_str())),
        _ => false,
    };
    if cfg.audience.is_empty() || !audience_ok {
        return Err(JwtError::WrongAudience.into());
    }

    let time = |name: &str| -> Result<Option<i64>, JwtError> {
        match claims.get(name) {
            None => Ok(None),
            Some(v) => v.as_i64().map(Some).ok_or(JwtError::BadTimeClaim),
        }
    };
    let exp = time("exp")?.ok_or(JwtError::BadTimeClaim)?;
    let nbf = time("nbf")?;
    let iat = time("iat")?;
    let now = unix_seconds(now);
    let leeway = secs(cfg.leeway.min(MAX_LEEWAY));
    if now.saturating_sub(leeway) >= exp {
        return Err(JwtError::Expired.into());
    }
    if nbf.is_some_and(|nbf| nbf > now.saturating_add(leeway)) {
        return Err(JwtError::NotYetValid.into());
    }
    if iat.is_some_and(|iat| iat > now.saturating_add(leeway)) {
        return Err(JwtError::IssuedInFuture.into());
    }

    let tenant = string(&cfg.tenant_claim)
        .and_then(|t| TenantId::new(t).ok())
        .ok_or(AgentAuthError::BadTenant)?;
    let name = match string(&cfg.agent_claim) {
        Some(n) if !n.trim().is_empty() && n.len() <= MAX_AGENT_BYTES => n.to_owned(),
        _ => return Err(AgentAuthError::BadAgent),
    };
    if cfg.agent_claim == "email" && claims.get("email_verified") != Some(&Value::Bool(true)) {
        return Err(JwtError::EmailNotVerified.into());
    }
    let teams = match claims.get(&cfg.groups_claim) {
        None | Some(Value::Null) => BTreeSet::new(),
        Some(Value::Array(groups)) if groups.len() <= MAX_TEAMS => groups
            .iter()
            .map(|g| match g.as_str() {
                Some(t) if !t.is_empty() && t.len() <= MAX_TEAM_BYTES => Ok(t.to_owned()),
                _ => Err(AgentAuthError::BadGroups),
            })
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(AgentAuthError::BadGroups),
    };
    Ok(Agent {
        tenant,
        name,
        teams,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::time::UNIX_EPOCH;

    const NOW: i64 = 1_800_000_000;

    fn cfg() -> AgentAuthConfig {
        AgentAuthConfig::from_settings(&ApiSettings {
            issuer: "https://idp.test/realms/helpdesk".into(),
            audience: "helpr-api".into(),
            jwks_url: "https://idp.test/certs".into(),
            ..ApiSettings::default()
        })
        .unwrap()
    }

    fn claims(patch: Value) -> Vec<u8> {
        let mut c = json!({
            "iss": "https://idp.test/realms/helpdesk",
            "aud": "helpr-api",
            "sub": "ann",
            "helpr_tenant": "acme",
            "groups": ["billing", "support"],
            "iat": NOW - 10,
            "exp": NOW + 300,
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
    fn a_genuine_agent_token_yields_tenant_name_and_teams() {
        let a = check_agent_claims(&claims(json!({})), &cfg(), at(NOW)).unwrap();
        assert_eq!(a.tenant.as_str(), "acme");
        assert_eq!(a.name, "ann");
        assert_eq!(
            a.teams.iter().cloned().collect::<Vec<_>>(),
            vec!["billing".to_string(), "support".to_string()]
        );
        let a = check_agent_claims(
            &claims(json!({"aud": ["other", "helpr-api"], "groups": null, "iat": null})),
            &cfg(),
            at(NOW),
        )
        .unwrap();
        assert!(a.teams.is_empty());
    }

    #[test]
    fn each_claim_rule_rejects_with_its_own_reason() {
        use AgentAuthError as E;
        let cases = [
            (
                json!({"iss": "https://idp.test/realms/other"}),
                "wrong_issuer",
            ),
            (json!({"iss": null}), "wrong_issuer"),
            (json!({"aud": "helpr"}), "wrong_audience"),
            (json!({"aud": ["x"]}), "wrong_audience"),
            (json!({"aud": null}), "wrong_audience"),
            (json!({"exp": null}), "bad_time_claim"),
            (json!({"exp": "1800000300"}), "bad_time_claim"),
            (json!({"exp": NOW - 61}), "expired"),
            (json!({"nbf": NOW + 61}), "not_yet_valid"),
            (json!({"iat": NOW + 61}), "issued_in_future"),
            (json!({"helpr_tenant": null}), "bad_tenant"),
            (json!({"helpr_tenant": "Not A Tenant"}), "bad_tenant"),
            (json!({"helpr_tenant": 7}), "bad_tenant"),
            (json!({"sub": null}), "bad_agent"),
            (json!({"sub": ""}), "bad_agent"),
            (json!({"sub": "x".repeat(321)}), "bad_agent"),
            (json!({"groups": "billing"}), "bad_groups"),
            (json!({"groups": ["ok", 3]}), "bad_groups"),
            (json!({"groups": [""]}), "bad_groups"),
        ];
        for (patch, want) in cases {
            let got = check_agent_claims(&claims(patch.clone()), &cfg(), at(NOW));
            assert_eq!(got.err().map(E::reason), Some(want), "{patch}");
        }
        let dup = br#"{"iss":"a","iss":"b"}"#;
        assert_eq!(
            check_agent_claims(dup, &cfg(), at(NOW)).err(),
            Some(E::Jwt(JwtError::DuplicateKey))
        );
    }

    #[test]
    fn an_email_agent_claim_needs_a_verified_email() {
        let mut c = cfg();
        c.agent_claim = "email".into();
        let got = check_agent_claims(&claims(json!({"email": "ann@acme.test"})), &c, at(NOW));
        assert_eq!(
            got.err(),
            Some(AgentAuthError::Jwt(JwtError::EmailNotVerified))
        );
        let got = check_agent_claims(
            &claims(json!({"email": "ann@acme.test", "email_verified": true})),
            &c,
            at(NOW),
        )
        .unwrap();
        assert_eq!(got.name, "ann@acme.test");
    }

    #[test]
    fn settings_without_issuer_audience_or_https_jwks_are_refused() {
        let base = ApiSettings {
            issuer: "https://idp.test".into(),
            audience: "helpr".into(),
            jwks_url: "https://idp.test/certs".into(),
            ..ApiSettings::default()
        };
        assert!(AgentVerifier::new(&base).is_ok());
        for (patch, want) in [
            (
                ApiSettings {
                    issuer: String::new(),
                    ..base.clone()
                },
                "issuer",
            ),
            (
                ApiSettings {
                    audience: String::new(),
                    ..base.clone()
                },
                "audience",
            ),
            (
                ApiSettings {
                    jwks_url: String::new(),
                    ..base.clone()
                },
                "jwks_url",
            ),
        ] {
            let e = AgentVerifier::new(&patch).unwrap_err().to_string();
            assert!(e.contains(want), "{e}");
        }
        for bad in [
            "http://idp.test/certs",
            "http://127.0.0.1.evil.test/certs",
            "ftp://x",
        ] {
            let s = ApiSettings {
                jwks_url: bad.into(),
                ..base.clone()
            };
            assert!(
                matches!(
                    AgentVerifier::new(&s),
                    Err(AgentVerifierConfigError::InsecureJwksUrl)
                ),
                "{bad}"
            );
        }
        for ok in [
            "http://127.0.0.1:8080/certs",
            "http://localhost/certs",
            "http://[::1]:9/x",
        ] {
            let s = ApiSettings {
                jwks_url: ok.into(),
                ..base.clone()
            };
            assert!(AgentVerifier::new(&s).is_ok(), "{ok}");
        }
        let lax = ApiSettings {
            leeway_secs: 3600,
            ..base
        };
        assert_eq!(
            AgentAuthConfig::from_settings(&lax).unwrap().leeway,
            MAX_LEEWAY
        );
    }
}
