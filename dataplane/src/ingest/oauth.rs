//! Google OAuth: access tokens from an inbox's refresh token (the oauth2 crate's refresh
//! grant). Access tokens live only in memory; refresh tokens only sealed in the store.

use std::time::Duration;

use oauth2::basic::{BasicClient, BasicErrorResponseType};
use oauth2::{
    ClientId, ClientSecret, EndpointNotSet, EndpointSet, RefreshToken, RequestTokenError,
    TokenResponse, TokenUrl,
};
use serde::Deserialize;
use zeroize::Zeroizing;

use super::gmail::AccessToken;
use crate::metrics::Counter;

static REFRESHED: Counter = Counter::new(
    "helpr_oauth_refresh_total",
    "outcome=\"ok\"",
    "Access-token refreshes at Google's token endpoint",
);
static REFRESH_INVALID_GRANT: Counter = Counter::new(
    "helpr_oauth_refresh_total",
    "outcome=\"invalid_grant\"",
    "Access-token refreshes at Google's token endpoint",
);
static REFRESH_FAILED: Counter = Counter::new(
    "helpr_oauth_refresh_total",
    "outcome=\"error\"",
    "Access-token refreshes at Google's token endpoint",
);

/// A secret setting: never printed.
#[derive(Clone, Default, Deserialize)]
#[serde(transparent)]
pub struct SecretString(String);

impl SecretString {
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for SecretString {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Google OAuth client settings (section `google`).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GoogleConfig {
    /// Token endpoint.
    pub token_url: String,
    /// OAuth client id of the deployment.
    pub client_id: String,
    /// OAuth client secret (prefer the `HELPR_GOOGLE__CLIENT_SECRET` variable).
    pub client_secret: SecretString,
    /// Timeout of one token request, in seconds.
    pub request_timeout_secs: u64,
}

impl Default for GoogleConfig {
    fn default() -> Self {
        Self {
            token_url: "https://oauth2.googleapis.com/token".into(),
            client_id: String::new(),
            client_secret: SecretString::default(),
            request_timeout_secs: 30,
        }
    }
}

/// A refresh failure. Never carries a token.
#[derive(Debug, thiserror::Error)]
pub enum OAuthError {
    /// Google refused the refresh token (revoked, expired, password change, ...): the
    /// inbox must be reconnected by a person.
    #[error("google refused the refresh token (invalid_grant); the inbox needs reconnecting")]
    InvalidGrant,
    /// The token endpoint could not be reached or failed; try again later.
    #[error("google token endpoint unavailable: {0}")]
    Unavailable(String),
    /// Misconfiguration or an answer this client cannot use.
    #[error("google oauth error: {0}")]
    Protocol(String),
}

/// The result of a refresh.
pub struct Refreshed {
    pub access_token: AccessToken,
    pub expires_in: Duration,
    /// Google sometimes rotates the refresh token: store this one instead (atomically).
    pub new_refresh_token: Option<Zeroizing<String>>,
}

type Client =
    BasicClient<EndpointNotSet, EndpointNotSet, EndpointNotSet, EndpointNotSet, EndpointSet>;

/// Exchanges refresh tokens for access tokens.
pub struct TokenSource {
    client: Client,
    http: reqwest::Client,
}

impl TokenSource {
    pub fn new(cfg: &GoogleConfig) -> Result<Self, OAuthError> {
        let token_url = TokenUrl::new(cfg.token_url.clone())
            .map_err(|_| OAuthError::Protocol("google.token_url is not a url".into()))?;
        let client = BasicClient::new(ClientId::new(cfg.client_id.clone()))
            .set_client_secret(ClientSecret::new(cfg.client_secret.expose().to_string()))
            .set_token_uri(token_url);
        let http = reqwest::Client::builder()
            // Following redirects would hand the refresh token to another host.
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(cfg.request_timeout_secs.max(1)))
            .build()
            .map_err(|_| OAuthError::Protocol("cannot build the http client".into()))?;
        Ok(Self { client, http })
    }

    /// The refresh grant.
    pub async fn refresh(&self, refresh_token: &str) -> Result<Refreshed, OAuthError> {
        let answer = self
            .client
            .exchange_refresh_token(&RefreshToken::new(refresh_token.to_string()))
            .request_async(&self.http)
            .await;
        match answer {
            Ok(token) => {
                REFRESHED.inc();
                Ok(Refreshed {
                    access_token: AccessToken::new(token.access_token().secret().clone()),
                    expires_in: token.expires_in().unwrap_or(Duration::from_secs(3600)),
                    new_refresh_token: token
                        .refresh_token()
                        .map(|t| Zeroizing::new(t.secret().clone()))
                        .filter(|t| !t.is_empty() && t.as_str() != refresh_token),
                })
            }
            Err(RequestTokenError::ServerResponse(e))
                if *e.error() == BasicErrorResponseType::InvalidGrant =>
            {
                REFRESH_INVALID_GRANT.inc();
                Err(OAuthError::InvalidGrant)
            }
            Err(RequestTokenError::ServerResponse(e)) => {
                REFRESH_FAILED.inc();
                // The error code is a fixed word from the OAuth spec, not a secret.
                Err(OAuthError::Protocol(format!(
                    "token endpoint answered {}",
                    e.error()
                )))
            }
            Err(RequestTokenError::Request(_)) => {
                REFRESH_FAILED.inc();
                Err(OAuthError::Unavailable("request failed".into()))
            }
            // A 5xx with a body that is not an OAuth error lands here: retry later.
            Err(RequestTokenError::Parse(_, _)) => {
                REFRESH_FAILED.inc();
                Err(OAuthError::Unavailable("unexpected answer".into()))
            }
            Err(RequestTokenError::Other(_)) => {
                REFRESH_FAILED.inc();
                Err(OAuthError::Protocol("token request failed".into()))
            }
        }
    }
}
