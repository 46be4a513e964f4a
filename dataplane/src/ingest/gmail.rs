//! Gmail API client: history, raw messages, message search, the profile and push watches.
//!
//! Reaches Google only through the configured base URL. 429 and 5xx answers (and
//! connection failures) are retried with exponential backoff and full jitter, honouring
//! `Retry-After`. URLs use the `me` user id, so no address ever appears in a request line.

use std::time::Duration;

use base64::Engine;
use serde::Deserialize;
use zeroize::Zeroizing;

use crate::metrics::Counter;

static GMAIL_REQUESTS: Counter = Counter::new(
    "helpr_gmail_requests_total",
    "",
    "Requests sent to the Gmail API",
);
static GMAIL_RETRIES: Counter = Counter::new(
    "helpr_gmail_retries_total",
    "",
    "Gmail API requests retried after 429, 5xx or a connection failure",
);

/// Settings of the Gmail API client (section `gmail`).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GmailConfig {
    /// Base URL of the Gmail API.
    pub api_base_url: String,
    /// Attempts per request, the first included.
    pub max_attempts: u32,
    /// First backoff delay, in milliseconds (doubled per attempt, with full jitter).
    pub initial_backoff_ms: u64,
    /// Largest backoff delay (and largest `Retry-After` honoured), in milliseconds.
    pub max_backoff_ms: u64,
    /// Timeout of one request, in seconds.
    pub request_timeout_secs: u64,
    /// `maxResults` of history and search pages (Gmail allows up to 500).
    pub page_size: u32,
    /// Labels a push watch reports changes of (`labelIds` of users.watch, with
    /// `labelFilterBehavior: include`); empty: every change of the mailbox.
    pub watch_label_ids: Vec<String>,
}

impl Default for GmailConfig {
    fn default() -> Self {
        Self {
            api_base_url: "https://gmail.googleapis.com".into(),
            max_attempts: 6,
            initial_backoff_ms: 500,
            max_backoff_ms: 60_000,
            request_timeout_secs: 30,
            page_size: 500,
            watch_label_ids: vec!["INBOX".into()],
        }
    }
}

/// An OAuth access token: memory only, wiped on drop, never printed.
#[derive(Clone)]
pub struct AccessToken(Zeroizing<String>);

impl AccessToken {
    pub fn new(token: impl Into<String>) -> Self {
        Self(Zeroizing::new(token.into()))
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AccessToken(<redacted>)")
    }
}

/// A Gmail failure. Never carries tokens, addresses or message content.
#[derive(Debug, thiserror::Error)]
pub enum GmailError {
    /// `startHistoryId` is too old (history answered 404): recover another way.
    #[error("gmail history id is too old")]
    StaleHistory,
    /// The message no longer exists (deleted between history and fetch).
    #[error("gmail message not found")]
    MessageGone,
    /// The access token was refused: refresh it and try again.
    #[error("gmail refused the access token")]
    Unauthorized,
    /// Gmail refused the request (403): for a watch, Gmail may not publish to the topic.
    #[error("gmail refused the request (http 403)")]
    Forbidden,
    /// Rate limited or unavailable after every retry.
    #[error("gmail unavailable: {0}")]
    Unavailable(String),
    /// Gmail answered something this client cannot use.
    #[error("gmail protocol error: {0}")]
    Protocol(String),
}

impl GmailError {
    pub fn is_retryable(&self) -> bool {
        matches!(self, GmailError::Unavailable(_))
    }
}

/// A message added to the mailbox, from history or search.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddedMessage {
    pub id: String,
    pub thread_id: String,
    pub label_ids: Vec<String>,
    /// Id of the history record that added it (0 for search results).
    pub history_id: u64,
}

impl AddedMessage {
    /// Drafts and sent mail are not inbound mail: they are never stored.
    pub fn is_draft_or_sent(&self) -> bool {
        is_draft_or_sent(&self.label_ids)
    }
}

fn is_draft_or_sent(labels: &[String]) -> bool {
    labels.iter().any(|l| l == "DRAFT" || l == "SENT")
}

/// All pages of `history.list` since a start id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryChanges {
    pub added: Vec<AddedMessage>,
    /// The mailbox's history id after the last page: the new high-water mark.
    pub history_id: u64,
}

/// A message fetched with `format=raw`.
pub struct RawMessage {
    pub id: String,
    pub thread_id: String,
    pub label_ids: Vec<String>,
    pub history_id: Option<u64>,
    pub internal_date_ms: i64,
    pub raw: Vec<u8>,
}

impl RawMessage {
    pub fn is_draft_or_sent(&self) -> bool {
        is_draft_or_sent(&self.label_ids)
    }
}

/// The Gmail API client.
#[derive(Clone)]
pub struct GmailClient {
    http: reqwest::Client,
    base: String,
    cfg: GmailConfig,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct HistoryPage {
    #[serde(default)]
    history: Vec<HistoryRecord>,
    next_page_token: Option<String>,
    history_id: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct HistoryRecord {
    id: String,
    #[serde(default)]
    messages_added: Vec<MessageAddedRecord>,
}

#[derive(Deserialize)]
struct MessageAddedRecord {
    message: MessageRef,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct MessageRef {
    id: String,
    #[serde(default)]
    thread_id: String,
    #[serde(default)]
    label_ids: Vec<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SearchPage {
    #[serde(default)]
    messages: Vec<MessageRef>,
    next_page_token: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawResponse {
    id: String,
    #[serde(default)]
    thread_id: String,
    #[serde(default)]
    label_ids: Vec<String>,
    history_id: Option<String>,
    internal_date: Option<String>,
    raw: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Profile {
    history_id: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WatchResponse {
    history_id: String,
    expiration: String,
}

/// A push watch Gmail took (users.watch).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Watch {
    /// The mailbox's history id when the watch started.
    pub history_id: u64,
    /// When the watch expires (Unix ms); renew before then.
    pub expiration_ms: i64,
}

/// Whether `s` is a full Pub/Sub topic name `projects/PROJECT/topics/TOPIC`: a project id of
/// 6-30 lowercase letters, digits and `-` (starting with a letter, not ending with `-`) and
/// a topic id of 3-255 letters, digits and `-_.~+%` starting with a letter, not with `goog`.
pub fn is_pubsub_topic(s: &str) -> bool {
    let Some((project, topic)) = s
        .strip_prefix("projects/")
        .and_then(|rest| rest.split_once("/topics/"))
    else {
        return false;
    };
    let project_ok = (6..=30).contains(&project.len())
        && project.starts_with(|c: char| c.is_ascii_lowercase())
        && !project.ends_with('-')
        && project
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    let topic_ok = (3..=255).contains(&topic.len())
        && topic.starts_with(|c: char| c.is_ascii_alphabetic())
        && !topic.to_ascii_lowercase().starts_with("goog")
        && topic
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.~+%".contains(&b));
    project_ok && topic_ok
}

fn parse_id(what: &str, s: &str) -> Result<u64, GmailError> {
    s.parse()
        .map_err(|_| GmailError::Protocol(format!("{what} is not a decimal id")))
}

impl GmailClient {
    pub fn new(cfg: GmailConfig) -> Result<Self, GmailError> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(cfg.request_timeout_secs.max(1)))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|_| GmailError::Protocol("cannot build the http client".into()))?;
        let base = cfg.api_base_url.trim_end_matches('/').to_string();
        if !(base.starts_with("https://") || base.starts_with("http://")) {
            return Err(GmailError::Protocol(
                "gmail.api_base_url must be an http(s) url".into(),
            ));
        }
        Ok(Self { http, base, cfg })
    }

    /// Every message added since `start` (all pages), and the history id to store after.
    pub async fn list_history(
        &self,
        token: &AccessToken,
        start: u64,
    ) -> Result<HistoryChanges, GmailError> {
        let mut added = Vec::new();
        let mut page_token: Option<String> = None;
        let mut last_history_id = start;
        loop {
            let mut query = vec![
                ("startHistoryId", start.to_string()),
                ("historyTypes", "messageAdded".to_string()),
                ("maxResults", self.cfg.page_size.to_string()),
            ];
            if let Some(t) = &page_token {
                query.push(("pageToken", t.clone()));
            }
            let page: HistoryPage = match self
                .get_json("/gmail/v1/users/me/history", &query, token)
                .await
            {
                Err(GmailError::MessageGone) => return Err(GmailError::StaleHistory),
                other => other?,
            };
            for record in page.history {
                let record_id = parse_id("history record id", &record.id)?;
                for m in record.messages_added {
                    added.push(AddedMessage {
                        id: m.message.id,
                        thread_id: m.message.thread_id,
                        label_ids: m.message.label_ids,
                        history_id: record_id,
                    });
                }
            }
            if let Some(h) = page.history_id {
                last_history_id = last_history_id.max(parse_id("historyId", &h)?);
            }
            match page.next_page_token {
                Some(t) if !t.is_empty() => page_token = Some(t),
                _ => break,
            }
        }
        Ok(HistoryChanges {
            added,
            history_id: last_history_id,
        })
    }

    /// Messages received after `after_ms` (Gmail search `after:` has one-second
    /// granularity; callers filter by `internalDate` afterwards). Drafts and sent mail
    /// are excluded by the query and again by the caller.
    pub async fn list_messages_after(
        &self,
        token: &AccessToken,
        after_ms: i64,
    ) -> Result<Vec<AddedMessage>, GmailError> {
        let q = format!("after:{} -in:drafts -in:sent", after_ms.max(0) / 1000);
        let mut out = Vec::new();
        let mut page_token: Option<String> = None;
        loop {
            let mut query = vec![
                ("q", q.clone()),
                ("maxResults", self.cfg.page_size.to_string()),
            ];
            if let Some(t) = &page_token {
                query.push(("pageToken", t.clone()));
            }
            let page: SearchPage = self
                .get_json("/gmail/v1/users/me/messages", &query, token)
                .await?;
            out.extend(page.messages.into_iter().map(|m| AddedMessage {
                id: m.id,
                thread_id: m.thread_id,
                label_ids: m.label_ids,
                history_id: 0,
            }));
            match page.next_page_token {
                Some(t) if !t.is_empty() => page_token = Some(t),
                _ => break,
            }
        }
        Ok(out)
    }

    /// The mailbox's current history id.
    pub async fn current_history_id(&self, token: &AccessToken) -> Result<u64, GmailError> {
        let profile: Profile = self
            .get_json("/gmail/v1/users/me/profile", &[], token)
            .await?;
        parse_id("historyId", &profile.history_id)
    }

    /// Registers (or renews) the mailbox's push watch on `topic`: Gmail publishes a
    /// notification there for each change of the configured labels until the answered
    /// expiration (about 7 days). Calling it again replaces the watch.
    pub async fn watch(&self, token: &AccessToken, topic: &str) -> Result<Watch, GmailError> {
        if !is_pubsub_topic(topic) {
            return Err(GmailError::Protocol(
                "the watch topic is not a Pub/Sub topic name".into(),
            ));
        }
        let mut body = serde_json::json!({ "topicName": topic });
        if !self.cfg.watch_label_ids.is_empty() {
            body["labelIds"] = serde_json::json!(self.cfg.watch_label_ids);
            body["labelFilterBehavior"] = serde_json::json!("include");
        }
        let r: WatchResponse = self
            .send_json(
                reqwest::Method::POST,
                "/gmail/v1/users/me/watch",
                &[],
                Some(&body),
                token,
            )
            .await?;
        let expiration_ms = r
            .expiration
            .parse()
            .map_err(|_| GmailError::Protocol("watch expiration is not a number".into()))?;
        Ok(Watch {
            history_id: parse_id("historyId", &r.history_id)?,
            expiration_ms,
        })
    }

    /// Stops the mailbox's push watch (notifications stop within a few minutes).
    pub async fn stop_watch(&self, token: &AccessToken) -> Result<(), GmailError> {
        let _: serde::de::IgnoredAny = self
            .send_json(
                reqwest::Method::POST,
                "/gmail/v1/users/me/stop",
                &[],
                Some(&serde_json::json!({})),
                token,
            )
            .await?;
        Ok(())
    }

    /// One message in RFC 822 form.
    pub async fn get_raw(&self, token: &AccessToken, id: &str) -> Result<RawMessage, GmailError> {
        if id.is_empty() || !id.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(GmailError::Protocol(
                "gmail message id is not alphanumeric".into(),
            ));
        }
        let path = format!("/gmail/v1/users/me/messages/{id}");
        let r: RawResponse = self
            .get_json(&path, &[("format", "raw".to_string())], token)
            .await?;
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(r.raw.trim_end_matches('='))
            .map_err(|_| GmailError::Protocol("raw message is not base64url".into()))?;
        let internal_date_ms = match r.internal_date {
            Some(d) => d
                .parse()
                .map_err(|_| GmailError::Protocol("internalDate is not a number".into()))?,
            None => 0,
        };
        Ok(RawMessage {
            id: r.id,
            thread_id: r.thread_id,
            label_ids: r.label_ids,
            history_id: r
                .history_id
                .map(|h| parse_id("historyId", &h))
                .transpose()?,
            internal_date_ms,
            raw,
        })
    }

    async fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        query: &[(&str, String)],
        token: &AccessToken,
    ) -> Result<T, GmailError> {
        self.send_json(reqwest::Method::GET, path, query, None, token)
            .await
    }

    async fn send_json<T: serde::de::DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<&serde_json::Value>,
        token: &AccessToken,
    ) -> Result<T, GmailError> {
        let url = format!("{}{}", self.base, path);
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            GMAIL_REQUESTS.inc();
            let mut request = self
                .http
                .request(method.clone(), &url)
                .query(query)
                .bearer_auth(token.expose());
            if let Some(body) = body {
                request = request.json(body);
            }
            let sent = request.send().await;
            let retry_after = match sent {
                Ok(resp) => {
                    let status = resp.status();
                    if status.is_success() {
                        let unexpected =
                            || GmailError::Protocol(format!("unexpected answer to {path}"));
                        let body = resp.bytes().await.map_err(|_| unexpected())?;
                        // An empty answer (users.stop) reads as JSON null.
                        let body: &[u8] = if body.is_empty() { b"null" } else { &body };
                        return serde_json::from_slice::<T>(body).map_err(|_| unexpected());
                    }
                    match status.as_u16() {
                        401 => return Err(GmailError::Unauthorized),
                        403 => return Err(GmailError::Forbidden),
                        404 => return Err(GmailError::MessageGone),
                        429 | 500..=599 => {
                            let hint = retry_after(resp.headers());
                            if attempt >= self.cfg.max_attempts.max(1) {
                                return Err(GmailError::Unavailable(format!(
                                    "http {} after {attempt} attempts",
                                    status.as_u16()
                                )));
                            }
                            hint
                        }
                        code => {
                            return Err(GmailError::Protocol(format!("http {code}")));
                        }
                    }
                }
                Err(e) => {
                    if attempt >= self.cfg.max_attempts.max(1) {
                        let kind = if e.is_timeout() {
                            "timeout"
                        } else {
                            "connection failed"
                        };
                        return Err(GmailError::Unavailable(format!(
                            "{kind} after {attempt} attempts"
                        )));
                    }
                    None
                }
            };
            GMAIL_RETRIES.inc();
            let delay = retry_after
                .map(|d| d.min(Duration::from_millis(self.cfg.max_backoff_ms)))
                .unwrap_or_else(|| {
                    backoff(
                        attempt,
                        self.cfg.initial_backoff_ms,
                        self.cfg.max_backoff_ms,
                    )
                });
            tokio::time::sleep(delay).await;
        }
    }
}

/// `Retry-After` as seconds or an HTTP date.
fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let value = headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate_to_unix(value)?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?
        .as_secs();
    Some(Duration::from_secs(at.saturating_sub(now)))
}

/// Parses an IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`) to Unix seconds.
fn httpdate_to_unix(s: &str) -> Option<u64> {
    let parts: Vec<&str> = s.split_whitespace().collect();
    if parts.len() != 6 || parts[5] != "GMT" {
        return None;
    }
    let day: u64 = parts[1].parse().ok()?;
    let month = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ]
    .iter()
    .position(|m| *m == parts[2])? as u64
        + 1;
    let year: u64 = parts[3].parse().ok()?;
    let hms: Vec<u64> = parts[4]
        .split(':')
        .map(|p| p.parse().ok())
        .collect::<Option<_>>()?;
    if hms.len() != 3 || year < 1970 || !(1..=31).contains(&day) {
        return None;
    }
    // Days from civil (Howard Hinnant's algorithm).
    let (y, m) = if month <= 2 {
        (year - 1, month + 9)
    } else {
        (year, month - 3)
    };
    let era = y / 400;
    let yoe = y - era * 400;
    let doy = (153 * m + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + hms[0] * 3600 + hms[1] * 60 + hms[2])
}

/// Exponential backoff with full jitter: uniform in [0, min(max, initial * 2^(attempt-1))].
pub fn backoff(attempt: u32, initial_ms: u64, max_ms: u64) -> Duration {
    let ceiling = initial_ms
        .saturating_mul(1u64 << attempt.saturating_sub(1).min(30))
        .min(max_ms)
        .max(1);
    let mut bytes = [0u8; 8];
    let random = match getrandom::getrandom(&mut bytes) {
        Ok(()) => u64::from_le_bytes(bytes),
        Err(_) => ceiling / 2,
    };
    Duration::from_millis(random % (ceiling + 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_dates_parse_to_unix_seconds() {
        assert_eq!(
            httpdate_to_unix("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(784_111_777)
        );
        assert_eq!(httpdate_to_unix("Thu, 01 Jan 1970 00:00:00 GMT"), Some(0));
        assert_eq!(httpdate_to_unix("yesterday"), None);
    }

    #[test]
    fn backoff_stays_within_its_ceiling() {
        for attempt in 1..40 {
            let d = backoff(attempt, 100, 5_000);
            assert!(d <= Duration::from_millis(5_000));
            if attempt == 1 {
                assert!(d <= Duration::from_millis(100));
            }
        }
    }

    #[test]
    fn drafts_and_sent_mail_are_recognised() {
        let m = |labels: &[&str]| AddedMessage {
            id: "a".into(),
            thread_id: "t".into(),
            label_ids: labels.iter().map(|s| s.to_string()).collect(),
            history_id: 1,
        };
        assert!(m(&["DRAFT"]).is_draft_or_sent());
        assert!(m(&["SENT", "INBOX"]).is_draft_or_sent());
        assert!(!m(&["INBOX", "UNREAD"]).is_draft_or_sent());
    }

    #[test]
    fn pubsub_topic_names_are_checked() {
        assert!(is_pubsub_topic("projects/acme-mail/topics/gmail-push"));
        assert!(is_pubsub_topic(
            "projects/acme-mail-1/topics/Gmail_push.v2~a+b%20"
        ));
        for bad in [
            "",
            "gmail-push",
            "projects/acme-mail/topics/",
            "projects/acme-mail/topics/ab",
            "projects/acme/topics/gmail-push",
            "projects/Acme-mail/topics/gmail-push",
            "projects/acme-mail-/topics/gmail-push",
            "projects/acme-mail/topics/googmail",
            "projects/acme-mail/topics/1gmail",
            "projects/acme-mail/topics/gmail push",
            "projects/acme-mail/topics/gmail/push",
            "projects/acme-mail/subscriptions/gmail-push",
        ] {
            assert!(!is_pubsub_topic(bad), "{bad}");
        }
    }

    #[test]
    fn access_tokens_do_not_print() {
        let t = AccessToken::new("ya29.secret");
        assert!(!format!("{t:?}").contains("ya29"));
    }
}
