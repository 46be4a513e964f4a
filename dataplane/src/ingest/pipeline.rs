//! The ingest pipeline: raw RFC 822 bytes → what is stored (before sealing).
//!
//! Stages: parse ([`super::parse`]) → strip quoted text ([`super::quote`]) → sanitize HTML
//! ([`super::sanitize`]) → seal every field ([`seal_message`]).
//!
//! The quote stripper runs on the client's own markup (it needs Gmail's `gmail_quote`
//! class, Outlook's `divRplyFwdMsg` id, `blockquote type=cite`, ...), and the sanitizer
//! runs last, so that no transformation after it can reintroduce markup: what is sealed
//! is exactly the sanitizer's output.

use serde::Serialize;

use super::parse::{self, Address, ParseError, ParsedMessage};
use super::quote;
use super::sanitize;
use crate::crypto::SealContext;
use crate::ids::{TenantId, new_record_id};
use crate::keyring::{Keyring, KeyringError};
use crate::metrics::Counter;
use crate::store::{MessageFields, NewAttachment, NewMessage};

static PIPELINE_OK: Counter = Counter::new(
    "helpr_ingest_pipeline_total",
    "outcome=\"ok\"",
    "messages run through parse, quote stripping and sanitizing",
);
static PIPELINE_UNPARSEABLE: Counter = Counter::new(
    "helpr_ingest_pipeline_total",
    "outcome=\"unparseable\"",
    "messages run through parse, quote stripping and sanitizing",
);

/// Longest snippet, in characters.
pub const SNIPPET_CHARS: usize = 200;

/// An attachment as it will be stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessedAttachment {
    pub name: String,
    pub content_type: String,
    pub content_id: String,
    pub inline: bool,
    pub data: Vec<u8>,
}

/// How much quoted text was removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct QuoteStats {
    pub text_bytes: usize,
    pub html_bytes: usize,
}

/// Everything that will be sealed for one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessedMessage {
    pub subject: String,
    pub from: String,
    pub to: String,
    pub cc: String,
    pub reply_to: String,
    /// Plain text after quote stripping (derived from the HTML when there is no text part).
    pub text: String,
    /// HTML after quote stripping and sanitizing; empty when the message has none.
    pub html: String,
    pub snippet: String,
    pub attachments: Vec<ProcessedAttachment>,
    pub quote_stripped: QuoteStats,
    pub blocked_remote_images: usize,
    pub date_ms: Option<i64>,
}

fn join(addresses: &[Address]) -> String {
    addresses
        .iter()
        .map(Address::display)
        .filter(|a| !a.is_empty())
        .collect::<Vec<_>>()
        .join(", ")
}

/// A one-line preview: whitespace collapsed, at most [`SNIPPET_CHARS`] characters.
pub fn snippet(text: &str) -> String {
    let mut out = String::new();
    for (i, word) in text.split_whitespace().enumerate() {
        if i > 0 {
            out.push(' ');
        }
        out.push_str(word);
        if out.chars().count() >= SNIPPET_CHARS {
            break;
        }
    }
    out.chars().take(SNIPPET_CHARS).collect()
}

/// Runs parse → strip → sanitize on one raw message. Pure: no I/O.
pub fn process(raw: &[u8]) -> Result<ProcessedMessage, ParseError> {
    let parsed = parse::parse(raw).inspect_err(|_| PIPELINE_UNPARSEABLE.inc())?;
    let processed = process_parsed(parsed);
    PIPELINE_OK.inc();
    Ok(processed)
}

/// The stages after parsing.
pub fn process_parsed(parsed: ParsedMessage) -> ProcessedMessage {
    let mut stats = QuoteStats::default();
    let mut blocked_remote_images = 0;
    let html = match parsed.html.as_deref() {
        Some(html) => {
            let stripped = quote::strip_html_quotes(html);
            stats.html_bytes = stripped.stripped_bytes;
            let clean = sanitize::sanitize_html(&stripped.kept);
            blocked_remote_images = clean.blocked_remote_images;
            clean.html
        }
        None => String::new(),
    };
    let text = match parsed.text.as_deref() {
        Some(text) => {
            let stripped = quote::strip_text_quotes(text);
            stats.text_bytes = stripped.stripped_bytes;
            stripped.kept
        }
        None if !html.is_empty() => parse::html_to_text(&html),
        None => String::new(),
    };
    let attachments = parsed
        .attachments
        .into_iter()
        .map(|a| ProcessedAttachment {
            name: a.name.unwrap_or_default(),
            content_type: a.content_type,
            content_id: a.content_id.unwrap_or_default(),
            inline: a.inline,
            data: a.data,
        })
        .collect();
    ProcessedMessage {
        subject: parsed.subject.unwrap_or_default(),
        from: join(&parsed.from),
        to: join(&parsed.to),
        cc: join(&parsed.cc),
        reply_to: join(&parsed.reply_to),
        snippet: snippet(&text),
        text,
        html,
        attachments,
        quote_stripped: stats,
        blocked_remote_images,
        date_ms: parsed.date_ms,
    }
}

/// Where a message came from in Gmail.
#[derive(Debug, Clone)]
pub struct GmailOrigin<'a> {
    pub tenant: &'a TenantId,
    pub inbox_id: &'a str,
    pub gmail_message_id: &'a str,
    pub gmail_thread_id: &'a str,
    pub gmail_history_id: Option<u64>,
    pub internal_date_ms: i64,
    pub raw_size: u64,
}

/// Seals every field and attachment of a processed message with the tenant's DEK.
pub async fn seal_message(
    keyring: &Keyring,
    origin: &GmailOrigin<'_>,
    msg: &ProcessedMessage,
) -> Result<NewMessage, KeyringError> {
    let id = new_record_id();
    let tenant = origin.tenant.as_str();
    let values: [&str; 8] = [
        &msg.subject,
        &msg.from,
        &msg.to,
        &msg.cc,
        &msg.reply_to,
        &msg.text,
        &msg.html,
        &msg.snippet,
    ];
    let attachment_ids: Vec<String> = msg.attachments.iter().map(|_| new_record_id()).collect();
    let mut items: Vec<(SealContext<'_>, &[u8])> = MessageFields::FIELD_NAMES
        .iter()
        .zip(values)
        .map(|(field, value)| (SealContext::new(tenant, &id, field), value.as_bytes()))
        .collect();
    for (aid, a) in attachment_ids.iter().zip(&msg.attachments) {
        let parts: [&[u8]; 4] = [
            a.name.as_bytes(),
            a.content_type.as_bytes(),
            a.content_id.as_bytes(),
            &a.data,
        ];
        for (field, value) in NewAttachment::FIELD_NAMES.iter().zip(parts) {
            items.push((SealContext::new(tenant, aid, field), value));
        }
    }
    let mut sealed = keyring.seal_many(origin.tenant, &items).await?.into_iter();
    let mut next = || {
        sealed
            .next()
            .ok_or(KeyringError::Crypto(crate::crypto::CryptoError::Malformed(
                "fewer sealed values than fields",
            )))
    };
    let fields = MessageFields {
        subject: next()?,
        from_addr: next()?,
        to_addrs: next()?,
        cc_addrs: next()?,
        reply_to: next()?,
        text_body: next()?,
        html_body: next()?,
        snippet: next()?,
    };
    let mut attachments = Vec::with_capacity(msg.attachments.len());
    for (ordinal, (aid, a)) in attachment_ids.iter().zip(&msg.attachments).enumerate() {
        attachments.push(NewAttachment {
            id: aid.clone(),
            ordinal: u32::try_from(ordinal).unwrap_or(u32::MAX),
            name: next()?,
            content_type: next()?,
            content_id: next()?,
            data: next()?,
            size_bytes: a.data.len() as u64,
            inline: a.inline,
        });
    }
    Ok(NewMessage {
        id,
        tenant_id: origin.tenant.clone(),
        inbox_id: origin.inbox_id.to_string(),
        gmail_message_id: origin.gmail_message_id.to_string(),
        gmail_thread_id: origin.gmail_thread_id.to_string(),
        gmail_history_id: origin.gmail_history_id,
        internal_date_ms: origin.internal_date_ms,
        size_bytes: origin.raw_size,
        fields,
        attachments,
    })
}

/// What `helpr-dataplane inspect` prints: exactly what would be stored, before sealing.
#[derive(Debug, Serialize)]
pub struct InspectReport<'a> {
    pub subject: &'a str,
    pub from: &'a str,
    pub to: &'a str,
    pub cc: &'a str,
    pub reply_to: &'a str,
    pub text: &'a str,
    pub html: &'a str,
    pub snippet: &'a str,
    pub attachments: Vec<InspectAttachment<'a>>,
    pub quote_stripped: QuoteStats,
    pub blocked_remote_images: usize,
}

#[derive(Debug, Serialize)]
pub struct InspectAttachment<'a> {
    pub name: &'a str,
    pub content_type: &'a str,
    pub size: usize,
    pub inline: bool,
}

impl ProcessedMessage {
    pub fn inspect_report(&self) -> InspectReport<'_> {
        InspectReport {
            subject: &self.subject,
            from: &self.from,
            to: &self.to,
            cc: &self.cc,
            reply_to: &self.reply_to,
            text: &self.text,
            html: &self.html,
            snippet: &self.snippet,
            attachments: self
                .attachments
                .iter()
                .map(|a| InspectAttachment {
                    name: &a.name,
                    content_type: &a.content_type,
                    size: a.data.len(),
                    inline: a.inline,
                })
                .collect(),
            quote_stripped: self.quote_stripped,
            blocked_remote_images: self.blocked_remote_images,
        }
    }
}

/// Writes batches of sealed messages in the background, so that the next batch is fetched,
/// processed and sealed while the previous one is being committed. Batches are committed
/// one after another, in submission order (each advances the history mark).
pub struct PipelinedWriter {
    store: std::sync::Arc<dyn crate::store::Store>,
    tenant: TenantId,
    inbox_id: String,
    in_flight: Option<
        tokio::task::JoinHandle<Result<Vec<crate::store::InsertOutcome>, crate::store::StoreError>>,
    >,
}

impl PipelinedWriter {
    pub fn new(
        store: std::sync::Arc<dyn crate::store::Store>,
        tenant: TenantId,
        inbox_id: String,
    ) -> Self {
        Self {
            store,
            tenant,
            inbox_id,
            in_flight: None,
        }
    }

    /// Waits for the previous batch (returning its outcomes) and starts writing this one.
    pub async fn submit(
        &mut self,
        batch: Vec<NewMessage>,
        history_id: Option<u64>,
    ) -> Result<Vec<crate::store::InsertOutcome>, crate::store::StoreError> {
        let previous = self.wait().await?;
        let store = self.store.clone();
        let tenant = self.tenant.clone();
        let inbox_id = self.inbox_id.clone();
        self.in_flight = Some(tokio::spawn(async move {
            store
                .store_synced_messages(&tenant, &inbox_id, &batch, history_id)
                .await
        }));
        Ok(previous)
    }

    /// Waits for the batch being written; its outcomes.
    pub async fn wait(
        &mut self,
    ) -> Result<Vec<crate::store::InsertOutcome>, crate::store::StoreError> {
        match self.in_flight.take() {
            None => Ok(Vec::new()),
            Some(handle) => handle.await.map_err(|_| {
                crate::store::StoreError::Unavailable("batch writer task failed".into())
            })?,
        }
    }
}

/// A raw message to process and seal, with where it came from.
pub struct RawInput {
    pub gmail_message_id: String,
    pub gmail_thread_id: String,
    pub gmail_history_id: Option<u64>,
    pub internal_date_ms: i64,
    pub raw: Vec<u8>,
}

/// Processes (on the blocking pool, up to `parallelism` at a time) and seals many messages
/// of one inbox. Results keep the input order; a message that cannot be parsed yields its
/// parse error and does not stop the others.
pub async fn process_and_seal_many(
    keyring: &std::sync::Arc<Keyring>,
    tenant: &TenantId,
    inbox_id: &str,
    inputs: Vec<RawInput>,
    parallelism: usize,
) -> Result<Vec<Result<NewMessage, ParseError>>, KeyringError> {
    let limiter = std::sync::Arc::new(tokio::sync::Semaphore::new(parallelism.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    let count = inputs.len();
    for (index, input) in inputs.into_iter().enumerate() {
        let limiter = limiter.clone();
        let keyring = keyring.clone();
        let tenant = tenant.clone();
        let inbox_id = inbox_id.to_string();
        tasks.spawn(async move {
            let _permit = limiter.acquire_owned().await;
            let raw_size = input.raw.len() as u64;
            let raw = input.raw;
            let processed = tokio::task::spawn_blocking(move || process(&raw))
                .await
                .map_err(|_| {
                    KeyringError::Crypto(crate::crypto::CryptoError::Malformed(
                        "pipeline task failed",
                    ))
                })?;
            let processed = match processed {
                Ok(p) => p,
                Err(e) => return Ok((index, Err(e))),
            };
            let origin = GmailOrigin {
                tenant: &tenant,
                inbox_id: &inbox_id,
                gmail_message_id: &input.gmail_message_id,
                gmail_thread_id: &input.gmail_thread_id,
                gmail_history_id: input.gmail_history_id,
                internal_date_ms: input.internal_date_ms,
                raw_size,
            };
            let sealed = seal_message(&keyring, &origin, &processed).await?;
            Ok::<_, KeyringError>((index, Ok(sealed)))
        });
    }
    let mut out: Vec<Option<Result<NewMessage, ParseError>>> = (0..count).map(|_| None).collect();
    while let Some(joined) = tasks.join_next().await {
        let (index, result) = joined.map_err(|_| {
            KeyringError::Crypto(crate::crypto::CryptoError::Malformed(
                "pipeline task failed",
            ))
        })??;
        if let Some(slot) = out.get_mut(index) {
            *slot = Some(result);
        }
    }
    Ok(out
        .into_iter()
        .map(|r| r.unwrap_or(Err(ParseError::Internal)))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    const REPLY: &[u8] = b"From: Ann Example <ann@example.com>\r\n\
To: support@acme.example\r\n\
Subject: Re: invoice\r\n\
Date: Thu, 03 Dec 2026 10:00:00 +0000\r\n\
Message-ID: <r1@example.com>\r\n\
MIME-Version: 1.0\r\n\
Content-Type: multipart/alternative; boundary=\"b\"\r\n\
\r\n\
--b\r\n\
Content-Type: text/plain; charset=utf-8\r\n\
\r\n\
Thanks, that works.\r\n\
\r\n\
On Wed, Dec 2, 2026 at 9:00 AM Support <support@acme.example> wrote:\r\n\
> Please find the invoice attached.\r\n\
> Regards\r\n\
--b\r\n\
Content-Type: text/html; charset=utf-8\r\n\
\r\n\
<div dir=\"ltr\">Thanks, that works.<img src=\"https://tracker.example/p.gif\"><script>alert(1)</script></div>\
<div class=\"gmail_quote\"><div class=\"gmail_attr\">On Wed, Dec 2, 2026 Support wrote:</div>\
<blockquote class=\"gmail_quote\">Please find the invoice attached.</blockquote></div>\r\n\
--b--\r\n";

    #[test]
    fn a_reply_is_parsed_stripped_and_sanitized() {
        let p = process(REPLY).unwrap();
        assert_eq!(p.subject, "Re: invoice");
        assert_eq!(p.from, "Ann Example <ann@example.com>");
        assert_eq!(p.to, "support@acme.example");
        assert!(p.text.contains("Thanks, that works."));
        assert!(!p.text.contains("Please find the invoice"));
        assert!(p.quote_stripped.text_bytes > 0);
        assert!(p.html.contains("Thanks, that works."));
        assert!(!p.html.contains("invoice attached"), "{}", p.html);
        assert!(p.quote_stripped.html_bytes > 0);
        assert!(!p.html.contains("<script"));
        assert!(
            !p.html.contains(" src=\"https://tracker.example"),
            "{}",
            p.html
        );
        assert!(
            p.html
                .contains("data-helpr-remote-src=\"https://tracker.example"),
            "{}",
            p.html
        );
        assert_eq!(p.blocked_remote_images, 1);
        assert_eq!(p.snippet, "Thanks, that works.");
        let json = serde_json::to_value(p.inspect_report()).unwrap();
        for key in [
            "subject",
            "from",
            "to",
            "cc",
            "text",
            "html",
            "attachments",
            "quote_stripped",
            "blocked_remote_images",
        ] {
            assert!(json.get(key).is_some(), "{key}");
        }
    }

    #[test]
    fn html_only_messages_get_a_text_body_from_the_sanitized_html() {
        let raw = b"From: a@example.com\r\nSubject: hi\r\nContent-Type: text/html\r\n\r\n<p>Hello <b>there</b></p><script>evil()</script>";
        let p = process(raw).unwrap();
        assert!(
            p.text.contains("Hello there") || p.text.contains("Hello"),
            "{}",
            p.text
        );
        assert!(!p.text.contains("evil"));
    }

    #[test]
    fn snippets_are_short_single_lines() {
        let long = "word ".repeat(500);
        let s = snippet(&format!("  first\n\nline\t{long}"));
        assert!(s.starts_with("first line word"));
        assert_eq!(s.chars().count(), SNIPPET_CHARS);
        assert!(!s.contains('\n'));
    }

    #[test]
    fn garbage_is_a_clear_error() {
        assert!(process(b"").is_err());
    }
}
