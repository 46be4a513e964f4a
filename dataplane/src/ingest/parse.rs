//! Parse stage: raw RFC 5322 / MIME bytes (Gmail `format=raw`) into a [`ParsedMessage`].
//!
//! Built on mail-parser 0.11, which is lenient: it recovers what it can from broken MIME
//! instead of failing. This module adds the decisions mail-parser leaves to its caller:
//!
//! - what counts as "not a message" (no well-formed header field at all),
//! - which parts are the body (`text`, `html`) and which are attachments,
//! - which attachments are inline (Content-Disposition inline, or referenced by `cid:` from
//!   the HTML body),
//! - an input size limit, and a last line of defence against a panic inside the parser.
//!
//! Errors and logs never carry message content: no subject, address or byte of the input.

use std::borrow::Cow;
use std::collections::HashSet;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::LazyLock;

use mail_parser::decoders::html::text_to_html;
use mail_parser::{
    Encoding, GetHeader, HeaderName, HeaderValue, Message, MessageParser, MessagePart, MimeHeaders,
    PartType,
};

use crate::metrics::Counter;

/// Largest raw message [`parse`] accepts: Gmail's 25 MB limit plus transfer-encoding
/// overhead, with room to spare.
pub const DEFAULT_MAX_BYTES: usize = 50 * 1024 * 1024;

/// Attachment name used for a nested message that has neither a file name nor a subject.
pub const NESTED_MESSAGE_NAME: &str = "message.eml";

const PARSE_HELP: &str = "messages through the parse stage, by outcome";
static PARSE_OK: Counter = Counter::new("helpr_ingest_parse_total", "outcome=\"ok\"", PARSE_HELP);
static PARSE_EMPTY: Counter = Counter::new(
    "helpr_ingest_parse_total",
    "outcome=\"error\",reason=\"empty\"",
    PARSE_HELP,
);
static PARSE_TOO_LARGE: Counter = Counter::new(
    "helpr_ingest_parse_total",
    "outcome=\"error\",reason=\"too_large\"",
    PARSE_HELP,
);
static PARSE_NOT_A_MESSAGE: Counter = Counter::new(
    "helpr_ingest_parse_total",
    "outcome=\"error\",reason=\"not_a_message\"",
    PARSE_HELP,
);
static PARSE_INTERNAL: Counter = Counter::new(
    "helpr_ingest_parse_total",
    "outcome=\"error\",reason=\"internal\"",
    PARSE_HELP,
);

/// One mail-parser configuration for the whole process (it builds a header table).
static PARSER: LazyLock<MessageParser> = LazyLock::new(MessageParser::default);

/// A mailbox from an address header. Groups are flattened into their members.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Address {
    /// Display name, decoded (encoded words, comments), or `None`.
    pub name: Option<String>,
    /// The address itself (`local@domain`), or `None` when the header had only a name.
    pub email: Option<String>,
}

impl Address {
    /// Human-readable form: `Ann Example <ann@example.com>`, `ann@example.com` or
    /// `Ann Example`. A name with RFC 5322 specials is quoted (`"Doe, Ann" <ann@…>`).
    pub fn display(&self) -> String {
        match (&self.name, &self.email) {
            (Some(name), Some(email)) => format!("{} <{email}>", quote_display_name(name)),
            (Some(name), None) => name.clone(),
            (None, Some(email)) => email.clone(),
            (None, None) => String::new(),
        }
    }
}

/// An attachment or an inline part (e.g. a `cid:` image) that is not the body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedAttachment {
    /// File name, decoded (RFC 2231, encoded words), without any directory part.
    /// For a nested message without a file name: its subject, else [`NESTED_MESSAGE_NAME`].
    pub name: Option<String>,
    /// `type/subtype`, lowercased, without parameters.
    pub content_type: String,
    /// Content-ID without angle brackets.
    pub content_id: Option<String>,
    /// Size of `data` in bytes (after transfer decoding).
    pub size: usize,
    /// Content-Disposition inline, or referenced by `cid:` from the HTML body.
    pub inline: bool,
    /// Transfer-decoded content. Text parts (text/*) are converted to UTF-8; a nested
    /// message (message/rfc822) is its raw bytes.
    pub data: Vec<u8>,
}

/// What the pipeline needs from one raw message.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ParsedMessage {
    pub subject: Option<String>,
    pub from: Vec<Address>,
    pub to: Vec<Address>,
    pub cc: Vec<Address>,
    pub reply_to: Vec<Address>,
    /// The Date header as milliseconds since the Unix epoch, if present and valid.
    pub date_ms: Option<i64>,
    /// Message-ID without angle brackets.
    pub message_id: Option<String>,
    /// In-Reply-To ids without angle brackets.
    pub in_reply_to: Vec<String>,
    /// References ids without angle brackets, oldest first.
    pub references: Vec<String>,
    /// The text/plain body (all text/plain body parts joined), or `None`. `None` as well
    /// when the message has only an HTML body: the pipeline derives text from sanitized HTML.
    pub text: Option<String>,
    /// The text/html body (all HTML body parts joined; plain-text parts shown between
    /// them are converted to HTML), or `None` when the message has no HTML body.
    pub html: Option<String>,
    /// Real attachments and inline parts that are not the body.
    pub attachments: Vec<ParsedAttachment>,
    /// Size of the raw input in bytes.
    pub raw_size: usize,
}

/// Why a raw message could not be parsed. Carries no message content.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// Zero bytes, or only whitespace.
    #[error("empty message")]
    Empty,
    /// Larger than the configured limit.
    #[error("message larger than the limit of {limit} bytes")]
    TooLarge { limit: usize },
    /// No well-formed header field (`Name: value`) at the start of the input.
    #[error("input is not an email message: no header fields")]
    NotAMessage,
    /// The MIME parser panicked; caught so one message cannot take the worker down.
    #[error("internal error in the mime parser")]
    Internal,
}

impl ParseError {
    /// A fixed string for metric labels and structured logs.
    pub fn category(&self) -> &'static str {
        match self {
            ParseError::Empty => "empty",
            ParseError::TooLarge { .. } => "too_large",
            ParseError::NotAMessage => "not_a_message",
            ParseError::Internal => "internal",
        }
    }

    fn counter(&self) -> &'static Counter {
        match self {
            ParseError::Empty => &PARSE_EMPTY,
            ParseError::TooLarge { .. } => &PARSE_TOO_LARGE,
            ParseError::NotAMessage => &PARSE_NOT_A_MESSAGE,
            ParseError::Internal => &PARSE_INTERNAL,
        }
    }
}

/// Parses a raw message with the [`DEFAULT_MAX_BYTES`] limit.
pub fn parse(raw: &[u8]) -> Result<ParsedMessage, ParseError> {
    parse_with_limit(raw, DEFAULT_MAX_BYTES)
}

/// Parses a raw message of at most `max_bytes` bytes. Never panics.
///
/// CPU-bound (tens of µs for a typical message, more for large attachments): call it from
/// `spawn_blocking` or a worker thread, not directly on an async task.
pub fn parse_with_limit(raw: &[u8], max_bytes: usize) -> Result<ParsedMessage, ParseError> {
    let outcome = check_and_parse(raw, max_bytes);
    match &outcome {
        Ok(_) => PARSE_OK.inc(),
        Err(err) => {
            err.counter().inc();
            tracing::debug!(
                reason = err.category(),
                raw_size = raw.len(),
                "message not parsed"
            );
        }
    }
    outcome
}

/// Plain text from HTML (tags dropped, entities decoded, block elements as line breaks).
/// A cheap rendering for previews and search, not a sanitizer.
pub fn html_to_text(html: &str) -> String {
    mail_parser::decoders::html::html_to_text(html)
}

fn check_and_parse(raw: &[u8], max_bytes: usize) -> Result<ParsedMessage, ParseError> {
    if raw.len() > max_bytes {
        return Err(ParseError::TooLarge { limit: max_bytes });
    }
    if raw.iter().all(u8::is_ascii_whitespace) {
        return Err(ParseError::Empty);
    }
    // mail-parser documents that it never panics; this is the last line of defence in
    // case it does (its debug assertions included), so a poison message fails alone.
    match catch_unwind(AssertUnwindSafe(|| parse_unguarded(raw))) {
        Ok(outcome) => outcome,
        Err(_) => {
            tracing::error!(raw_size = raw.len(), "mime parser panicked");
            Err(ParseError::Internal)
        }
    }
}

fn parse_unguarded(raw: &[u8]) -> Result<ParsedMessage, ParseError> {
    // mail-parser drops the value of a last header line without a line break. That only
    // matters for a message without a body, so only such input is copied and terminated.
    let input: Cow<'_, [u8]> = if raw.ends_with(b"\n") || has_header_body_separator(raw) {
        Cow::Borrowed(raw)
    } else {
        let mut terminated = Vec::with_capacity(raw.len() + 2);
        terminated.extend_from_slice(raw);
        terminated.extend_from_slice(b"\r\n");
        Cow::Owned(terminated)
    };
    let input = input.as_ref();

    let message = PARSER.parse(input).ok_or(ParseError::NotAMessage)?;
    let root = message.parts.first().ok_or(ParseError::NotAMessage)?;
    if !has_wellformed_header(root, input) {
        return Err(ParseError::NotAMessage);
    }

    let body = Body::of(&message);
    let cid_refs = body.html.as_deref().map(cid_references).unwrap_or_default();
    let attachments = message
        .attachments
        .iter()
        .filter(|&&id| !body.consumed.contains(&id))
        .filter_map(|&id| message.parts.get(id as usize))
        .filter_map(|part| attachment(part, input, &cid_refs))
        .collect();

    Ok(ParsedMessage {
        subject: message.subject().map(str::to_owned),
        from: addresses(&message, HeaderName::From),
        to: addresses(&message, HeaderName::To),
        cc: addresses(&message, HeaderName::Cc),
        reply_to: addresses(&message, HeaderName::ReplyTo),
        date_ms: message
            .date()
            .filter(|d| d.is_valid())
            .and_then(|d| d.to_timestamp().checked_mul(1000)),
        message_id: message
            .header(HeaderName::MessageId)
            .and_then(|v| ids(v).into_iter().next()),
        in_reply_to: ids(message.in_reply_to()),
        references: ids(message.references()),
        text: body.text,
        html: body.html,
        attachments,
        raw_size: raw.len(),
    })
}

/// The body of a message as mail-parser classified it, and the parts it is made of.
struct Body {
    text: Option<String>,
    html: Option<String>,
    /// Part ids shown as body; they are not also reported as attachments.
    consumed: HashSet<u32>,
}

impl Body {
    fn of(message: &Message<'_>) -> Self {
        let part = |id: &u32| message.parts.get(*id as usize).map(|p| (*id, &p.body));
        let mut consumed = HashSet::new();

        // mail-parser lists an HTML-only alternative under text_body too (to be rendered
        // as text); only genuine text/plain parts make our `text`.
        let mut text_parts = Vec::new();
        for (id, body) in message.text_body.iter().filter_map(part) {
            if let PartType::Text(text) = body {
                consumed.insert(id);
                text_parts.push(Cow::Borrowed(text.as_ref()));
            }
        }

        // Likewise a text-only message lists its text part under html_body; there is an
        // HTML body only when at least one part is text/html. Text parts shown between
        // HTML parts (multipart/mixed from some clients) are converted, as mail-parser's
        // own body_html does.
        let has_html = message
            .html_body
            .iter()
            .filter_map(part)
            .any(|(_, body)| matches!(body, PartType::Html(_)));
        let mut html_parts = Vec::new();
        if has_html {
            for (id, body) in message.html_body.iter().filter_map(part) {
                match body {
                    PartType::Html(html) => html_parts.push(Cow::Borrowed(html.as_ref())),
                    PartType::Text(text) => html_parts.push(Cow::Owned(text_to_html(text))),
                    _ => continue,
                }
                consumed.insert(id);
            }
        }

        Body {
            text: join_parts(&text_parts),
            html: join_parts(&html_parts),
            consumed,
        }
    }
}

/// Joins body parts with a line break between them; `None` when there is nothing to show.
fn join_parts(parts: &[Cow<'_, str>]) -> Option<String> {
    if parts.iter().all(|p| p.trim().is_empty()) {
        return None;
    }
    let mut joined = String::with_capacity(parts.iter().map(|p| p.len() + 1).sum());
    for part in parts {
        if !joined.is_empty() && !joined.ends_with('\n') {
            joined.push('\n');
        }
        joined.push_str(part);
    }
    Some(joined)
}

fn attachment(
    part: &MessagePart<'_>,
    input: &[u8],
    cid_refs: &HashSet<String>,
) -> Option<ParsedAttachment> {
    let (data, default_type): (Vec<u8>, &str) = match &part.body {
        PartType::Text(text) => (text.as_bytes().to_vec(), "text/plain"),
        PartType::Html(html) => (html.as_bytes().to_vec(), "text/html"),
        PartType::Binary(bytes) | PartType::InlineBinary(bytes) => {
            (bytes.to_vec(), "application/octet-stream")
        }
        PartType::Message(nested) => (nested_message_bytes(part, nested, input), "message/rfc822"),
        PartType::Multipart(_) => return None,
    };
    // Without its closing boundary (a truncated message) mail-parser gives up on base64
    // and keeps the encoded text; decode what is there when it is base64 at all (not prose
    // or garbage, which stays as it is).
    let data = if part.is_encoding_problem && is_base64_encoded(part) && looks_like_base64(&data) {
        decode_base64_lenient(&data)
    } else {
        data
    };
    let content_type = content_type(part).unwrap_or_else(|| default_type.to_owned());
    let content_id = content_id(part);
    let referenced = content_id
        .as_deref()
        .is_some_and(|cid| cid_refs.contains(cid) || cid_refs.contains(&cid.to_ascii_lowercase()));
    let disposition_inline = part.content_disposition().is_some_and(|d| d.is_inline());
    let name = part
        .attachment_name()
        .and_then(clean_file_name)
        .or_else(|| {
            content_type.starts_with("message/").then(|| {
                match &part.body {
                    PartType::Message(nested) => nested.subject().and_then(clean_file_name),
                    _ => None,
                }
                .unwrap_or_else(|| NESTED_MESSAGE_NAME.to_owned())
            })
        });
    Some(ParsedAttachment {
        name,
        content_type,
        content_id,
        size: data.len(),
        inline: disposition_inline || referenced,
        data,
    })
}

fn is_base64_encoded(part: &MessagePart<'_>) -> bool {
    matches!(
        part.headers.header_value(&HeaderName::ContentTransferEncoding),
        Some(HeaderValue::Text(cte)) if cte.trim().eq_ignore_ascii_case("base64")
    )
}

fn looks_like_base64(data: &[u8]) -> bool {
    data.iter().any(u8::is_ascii_alphanumeric)
        && data
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || b"+/=".contains(b) || b.is_ascii_whitespace())
}

/// Base64 that ignores whitespace, stray characters and padding, and drops an incomplete
/// final quantum.
fn decode_base64_lenient(encoded: &[u8]) -> Vec<u8> {
    use base64::Engine as _;
    let mut clean: Vec<u8> = encoded
        .iter()
        .copied()
        .filter(|b| b.is_ascii_alphanumeric() || *b == b'+' || *b == b'/')
        .collect();
    if clean.len() % 4 == 1 {
        clean.pop();
    }
    let lenient = base64::engine::GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        base64::engine::GeneralPurposeConfig::new()
            .with_decode_padding_mode(base64::engine::DecodePaddingMode::RequireNone)
            .with_decode_allow_trailing_bits(true),
    );
    lenient.decode(&clean).unwrap_or_default()
}

/// The raw bytes of a nested message/rfc822 part.
///
/// Without a transfer encoding the nested message is a slice of the outer input (mail-parser
/// then keeps the whole outer input as the nested `raw_message`); with base64 or
/// quoted-printable, `raw_message` is the decoded nested message itself.
fn nested_message_bytes(part: &MessagePart<'_>, nested: &Message<'_>, input: &[u8]) -> Vec<u8> {
    if part.encoding == Encoding::None {
        let range = part.offset_body as usize..part.offset_end as usize;
        if let Some(bytes) = input.get(range) {
            return bytes.to_vec();
        }
        return nested.raw_message().to_vec();
    }
    nested.raw_message.to_vec()
}

/// `type/subtype` from the Content-Type header, lowercased; `None` when absent or not made of
/// RFC 2045 token characters (the value may end up in an HTTP header).
fn content_type(part: &MessagePart<'_>) -> Option<String> {
    let ct = part.content_type()?;
    let subtype = ct.subtype()?;
    let value = format!("{}/{}", ct.ctype(), subtype).to_ascii_lowercase();
    let is_token = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&b))
    };
    (is_token(ct.ctype()) && is_token(subtype)).then_some(value)
}

fn content_id(part: &MessagePart<'_>) -> Option<String> {
    let value = part.headers.header_value(&HeaderName::ContentId)?;
    let id = ids(value).into_iter().next()?;
    let id = id
        .trim()
        .trim_start_matches('<')
        .trim_end_matches('>')
        .trim();
    (!id.is_empty()).then(|| id.to_owned())
}

/// Message ids (or Content-IDs) of a header value, without angle brackets.
fn ids(value: &HeaderValue<'_>) -> Vec<String> {
    let clean = |s: &str| {
        let s = s
            .trim()
            .trim_start_matches('<')
            .trim_end_matches('>')
            .trim();
        (!s.is_empty()).then(|| s.to_owned())
    };
    match value {
        HeaderValue::Text(id) => clean(id).into_iter().collect(),
        HeaderValue::TextList(list) => list.iter().filter_map(|id| clean(id)).collect(),
        _ => Vec::new(),
    }
}

/// Every mailbox of every occurrence of an address header, groups flattened.
fn addresses(message: &Message<'_>, header: HeaderName<'static>) -> Vec<Address> {
    let non_empty = |s: Option<&str>| {
        s.map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
    };
    message
        .header_values(header)
        .filter_map(HeaderValue::as_address)
        .flat_map(|list| list.iter())
        .map(|addr| Address {
            name: non_empty(addr.name()),
            email: non_empty(addr.address()),
        })
        .filter(|a| a.name.is_some() || a.email.is_some())
        .collect()
}

/// A file name fit for display and download: no directory part, no control characters.
fn clean_file_name(name: &str) -> Option<String> {
    let base = name.rsplit(['/', '\\']).next().unwrap_or(name);
    let cleaned: String = base.chars().filter(|c| !c.is_control()).collect();
    let cleaned = cleaned.trim();
    (!cleaned.is_empty() && cleaned != "." && cleaned != "..").then(|| cleaned.to_owned())
}

fn quote_display_name(name: &str) -> Cow<'_, str> {
    const SPECIALS: &[char] = &[
        '(', ')', '<', '>', '[', ']', ':', ';', '@', '\\', ',', '.', '"',
    ];
    if name.contains(SPECIALS) {
        Cow::Owned(format!(
            "\"{}\"",
            name.replace('\\', "\\\\").replace('"', "\\\"")
        ))
    } else {
        Cow::Borrowed(name)
    }
}

/// Whether the root part has at least one header field that is `name: value` with an
/// RFC 5322 field name (printable ASCII, no space). mail-parser also turns a line without
/// a colon, or binary garbage, into a "header"; such input is not a message.
fn has_wellformed_header(root: &MessagePart<'_>, input: &[u8]) -> bool {
    root.headers.iter().any(|h| {
        let name = h.name.as_str();
        let name_ok =
            !name.is_empty() && name.bytes().all(|b| (33..=126).contains(&b) && b != b':');
        let colon = (h.offset_start as usize)
            .checked_sub(1)
            .and_then(|i| input.get(i))
            == Some(&b':');
        name_ok && colon
    })
}

/// Whether an empty line (`\n\n` or `\n\r\n`) ends a header section somewhere in the input.
fn has_header_body_separator(raw: &[u8]) -> bool {
    raw.iter().enumerate().any(|(i, &b)| {
        b == b'\n'
            && matches!(
                (raw.get(i + 1), raw.get(i + 2)),
                (Some(b'\n'), _) | (Some(b'\r'), Some(b'\n'))
            )
    })
}

/// Content-IDs referenced as `cid:` URLs in HTML, percent-decoded; each also lowercased so
/// the lookup tolerates clients that change the case.
fn cid_references(html: &str) -> HashSet<String> {
    let mut refs = HashSet::new();
    let bytes = html.as_bytes();
    let mut from = 0;
    while let Some(pos) = find_ascii_case_insensitive(bytes, b"cid:", from) {
        let start = pos + 4;
        let end = bytes[start..]
            .iter()
            .position(|&b| b.is_ascii_whitespace() || b"\"'<>()".contains(&b))
            .map_or(bytes.len(), |n| start + n);
        if let Some(raw_ref) = html.get(start..end) {
            let decoded = percent_decode(raw_ref);
            let decoded = decoded.trim_start_matches('<').trim_end_matches('>');
            if !decoded.is_empty() {
                refs.insert(decoded.to_ascii_lowercase());
                refs.insert(decoded.to_owned());
            }
        }
        from = end.max(start);
    }
    refs
}

fn find_ascii_case_insensitive(haystack: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    haystack
        .get(from..)?
        .windows(needle.len())
        .position(|w| w.eq_ignore_ascii_case(needle))
        .map(|p| p + from)
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (bytes[i], bytes.get(i + 1), bytes.get(i + 2)) {
            (b'%', Some(&h), Some(&l)) if hex(h).is_some() && hex(l).is_some() => {
                let value = hex(h).unwrap_or(0) * 16 + hex(l).unwrap_or(0);
                out.push(value as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn crlf(s: &str) -> Vec<u8> {
        s.replace('\n', "\r\n").into_bytes()
    }

    fn ok(raw: &[u8]) -> ParsedMessage {
        parse(raw).expect("message parses")
    }

    #[test]
    fn alternative_yields_both_text_and_html_and_no_attachment() {
        let m = ok(&crlf(
            "From: Ann Example <ann@example.com>\n\
             To: Bob <bob@example.org>, carol@example.net\n\
             Cc: Team: dan@example.com, \"Eve, E.\" <eve@example.com>;\n\
             Reply-To: support@example.com\n\
             Subject: Hello\n\
             Date: Tue, 01 Jul 2025 10:00:00 +0200\n\
             Message-ID: <abc@example.com>\n\
             In-Reply-To: <parent@example.com>\n\
             References: <root@example.com> <parent@example.com>\n\
             MIME-Version: 1.0\n\
             Content-Type: multipart/alternative; boundary=\"b1\"\n\
             \n\
             --b1\n\
             Content-Type: text/plain; charset=utf-8\n\
             \n\
             Hello plain\n\
             --b1\n\
             Content-Type: text/html; charset=utf-8\n\
             \n\
             <p>Hello <b>html</b></p>\n\
             --b1--\n",
        ));
        assert_eq!(m.subject.as_deref(), Some("Hello"));
        assert_eq!(m.text.as_deref().map(str::trim_end), Some("Hello plain"));
        assert_eq!(
            m.html.as_deref().map(str::trim_end),
            Some("<p>Hello <b>html</b></p>")
        );
        assert!(m.attachments.is_empty());
        assert_eq!(m.from[0].display(), "Ann Example <ann@example.com>");
        assert_eq!(
            m.to.iter().map(Address::display).collect::<Vec<_>>(),
            ["Bob <bob@example.org>", "carol@example.net"]
        );
        assert_eq!(
            m.cc.iter().map(Address::display).collect::<Vec<_>>(),
            ["dan@example.com", "\"Eve, E.\" <eve@example.com>"]
        );
        assert_eq!(m.reply_to[0].email.as_deref(), Some("support@example.com"));
        assert_eq!(m.reply_to[0].name, None);
        assert_eq!(m.date_ms, Some(1_751_356_800_000));
        assert_eq!(m.message_id.as_deref(), Some("abc@example.com"));
        assert_eq!(m.in_reply_to, ["parent@example.com"]);
        assert_eq!(m.references, ["root@example.com", "parent@example.com"]);
    }

    #[test]
    fn html_only_message_leaves_text_none() {
        let m = ok(&crlf(
            "From: a@example.com\nSubject: x\nContent-Type: text/html\n\n<p>only html</p>\n",
        ));
        assert_eq!(m.text, None);
        assert_eq!(
            m.html.as_deref().map(str::trim_end),
            Some("<p>only html</p>")
        );
        assert!(html_to_text("<p>only html</p>").contains("only html"));
    }

    #[test]
    fn text_only_message_leaves_html_none() {
        let m = ok(&crlf("From: a@example.com\nSubject: x\n\njust text\n"));
        assert_eq!(m.text.as_deref().map(str::trim_end), Some("just text"));
        assert_eq!(m.html, None);
    }

    #[test]
    fn mixed_with_pdf_reports_name_type_size_and_data() {
        // "%PDF-1.4 test" in base64.
        let m = ok(&crlf(
            "From: a@example.com\n\
             Subject: invoice\n\
             Content-Type: multipart/mixed; boundary=\"mix\"\n\
             \n\
             --mix\n\
             Content-Type: text/plain\n\
             \n\
             See attached.\n\
             --mix\n\
             Content-Type: Application/PDF; name=\"invoice.pdf\"\n\
             Content-Disposition: attachment; filename=\"invoice.pdf\"\n\
             Content-Transfer-Encoding: base64\n\
             \n\
             JVBERi0xLjQgdGVzdA==\n\
             --mix--\n",
        ));
        assert_eq!(m.text.as_deref().map(str::trim_end), Some("See attached."));
        assert_eq!(m.attachments.len(), 1);
        let pdf = &m.attachments[0];
        assert_eq!(pdf.name.as_deref(), Some("invoice.pdf"));
        assert_eq!(pdf.content_type, "application/pdf");
        assert_eq!(pdf.data, b"%PDF-1.4 test");
        assert_eq!(pdf.size, 13);
        assert!(!pdf.inline);
        assert_eq!(pdf.content_id, None);
    }

    #[test]
    fn related_cid_image_is_inline_with_content_id() {
        // A 1x1 GIF, abbreviated: the bytes do not matter, only that they are decoded.
        let m = ok(&crlf(
            "From: a@example.com\n\
             Subject: logo\n\
             Content-Type: multipart/alternative; boundary=\"alt\"\n\
             \n\
             --alt\n\
             Content-Type: text/plain\n\
             \n\
             logo\n\
             --alt\n\
             Content-Type: multipart/related; boundary=\"rel\"\n\
             \n\
             --rel\n\
             Content-Type: text/html\n\
             \n\
             <img src=\"cid:logo%40example.com\"><img src=cid:second@example.com>\n\
             --rel\n\
             Content-Type: image/gif; name=\"logo.gif\"\n\
             Content-ID: <logo@example.com>\n\
             Content-Transfer-Encoding: base64\n\
             \n\
             R0lGODlhAQABAAAAACw=\n\
             --rel\n\
             Content-Type: image/png\n\
             Content-ID: <SECOND@example.com>\n\
             Content-Disposition: attachment; filename=\"second.png\"\n\
             Content-Transfer-Encoding: base64\n\
             \n\
             iVBORw0KGgo=\n\
             --rel\n\
             Content-Type: image/png\n\
             Content-ID: <unused@example.com>\n\
             Content-Disposition: attachment; filename=\"unused.png\"\n\
             Content-Transfer-Encoding: base64\n\
             \n\
             iVBORw0KGgo=\n\
             --rel--\n\
             --alt--\n",
        ));
        assert_eq!(m.text.as_deref().map(str::trim_end), Some("logo"));
        assert!(m.html.as_deref().is_some_and(|h| h.contains("cid:logo")));
        assert_eq!(m.attachments.len(), 3);
        let logo = &m.attachments[0];
        assert_eq!(logo.content_id.as_deref(), Some("logo@example.com"));
        assert_eq!(logo.content_type, "image/gif");
        assert_eq!(logo.name.as_deref(), Some("logo.gif"));
        assert!(logo.inline, "referenced by cid from the html");
        assert_eq!(&logo.data[..6], b"GIF89a");
        let second = &m.attachments[1];
        assert!(second.inline, "cid reference matches case-insensitively");
        let unused = &m.attachments[2];
        assert!(!unused.inline, "attachment not referenced from the html");
    }

    #[test]
    fn disposition_inline_marks_part_inline_without_cid_reference() {
        let m = ok(&crlf(
            "From: a@example.com\n\
             Content-Type: multipart/mixed; boundary=\"m\"\n\
             \n\
             --m\n\
             Content-Type: text/plain\n\
             \n\
             photo below\n\
             --m\n\
             Content-Type: image/jpeg; name=\"p.jpg\"\n\
             Content-Disposition: inline; filename=\"p.jpg\"\n\
             Content-Transfer-Encoding: base64\n\
             \n\
             /9j/4AAQ\n\
             --m--\n",
        ));
        assert_eq!(m.attachments.len(), 1);
        assert!(m.attachments[0].inline);
        assert_eq!(m.attachments[0].data, [0xff, 0xd8, 0xff, 0xe0, 0x00, 0x10]);
    }

    #[test]
    fn encoded_word_subjects_are_decoded() {
        let m = ok(&crlf(
            "From: =?UTF-8?B?w4RubmUgQsO2aG0=?= <anne@example.de>\n\
             Subject: =?UTF-8?B?R3LDvMOfZSBhdXMgS8O2bG4=?=\n\n\
             body\n",
        ));
        assert_eq!(m.subject.as_deref(), Some("Grüße aus Köln"));
        assert_eq!(m.from[0].name.as_deref(), Some("Änne Böhm"));

        let m = ok(&crlf(
            "From: a@example.com\nSubject: =?ISO-8859-1?Q?Caf=E9_cr=E8me?= ok\n\nbody\n",
        ));
        assert_eq!(m.subject.as_deref(), Some("Café crème ok"));
    }

    fn single_part(charset: &str, body: &[u8]) -> ParsedMessage {
        let mut raw = crlf(&format!(
            "From: a@example.com\nSubject: cs\nContent-Type: text/plain; charset={charset}\nContent-Transfer-Encoding: 8bit\n\n"
        ));
        raw.extend_from_slice(body);
        raw.extend_from_slice(b"\r\n");
        ok(&raw)
    }

    #[test]
    fn bodies_in_legacy_charsets_are_decoded_to_utf8() {
        let cases: [(&str, &[u8], &str); 4] = [
            ("iso-8859-1", b"caf\xe9", "café"),
            ("windows-1252", b"\x80\x93ok\x94", "€“ok”"),
            (
                "shift_jis",
                b"\x82\xb1\x82\xf1\x82\xc9\x82\xbf\x82\xcd",
                "こんにちは",
            ),
            ("koi8-r", b"\xf0\xd2\xc9\xd7\xc5\xd4", "Привет"),
        ];
        for (charset, bytes, want) in cases {
            let m = single_part(charset, bytes);
            assert_eq!(
                m.text.as_deref().map(str::trim_end),
                Some(want),
                "{charset}"
            );
        }

        let m = ok(&crlf(
            "From: a@example.com\nContent-Type: text/plain; charset=iso-8859-1\n\
             Content-Transfer-Encoding: quoted-printable\n\nna=EFve r=E9sum=E9\n",
        ));
        assert_eq!(m.text.as_deref().map(str::trim_end), Some("naïve résumé"));
    }

    #[test]
    fn rfc2231_and_encoded_word_file_names_are_decoded() {
        let m = ok(&crlf(
            "From: a@example.com\n\
             Content-Type: multipart/mixed; boundary=\"m\"\n\
             \n\
             --m\n\
             Content-Type: text/plain\n\
             \n\
             two files\n\
             --m\n\
             Content-Type: application/octet-stream\n\
             Content-Disposition: attachment;\n filename*=UTF-8''%C3%BCbersicht%20Q3.xlsx\n\
             \n\
             x\n\
             --m\n\
             Content-Type: application/octet-stream\n\
             Content-Disposition: attachment;\n filename*0*=UTF-8''Gr%C3%B6%C3%9Fe;\n filename*1=\".txt\"\n\
             \n\
             y\n\
             --m\n\
             Content-Type: application/octet-stream; name=\"=?UTF-8?Q?r=C3=A9sum=C3=A9.pdf?=\"\n\
             Content-Disposition: attachment\n\
             \n\
             z\n\
             --m\n\
             Content-Type: application/octet-stream\n\
             Content-Disposition: attachment; filename=\"..\\\\..\\\\evil\u{7}.exe\"\n\
             \n\
             w\n\
             --m--\n",
        ));
        let names: Vec<_> = m.attachments.iter().map(|a| a.name.as_deref()).collect();
        assert_eq!(
            names,
            [
                Some("übersicht Q3.xlsx"),
                Some("Größe.txt"),
                Some("résumé.pdf"),
                Some("evil.exe")
            ]
        );
    }

    #[test]
    fn nested_rfc822_message_is_one_attachment_with_raw_bytes() {
        let nested = "From: inner@example.com\r\nSubject: Inner news\r\n\r\ninner body\r\n";
        let raw = crlf(&format!(
            "From: a@example.com\n\
             Subject: Fwd: news\n\
             Content-Type: multipart/mixed; boundary=\"m\"\n\
             \n\
             --m\n\
             Content-Type: text/plain\n\
             \n\
             forwarding\n\
             --m\n\
             Content-Type: message/rfc822\n\
             \n\
             {}\n\
             --m--\n",
            nested.replace("\r\n", "\n").trim_end()
        ));
        let m = ok(&raw);
        assert_eq!(m.text.as_deref().map(str::trim_end), Some("forwarding"));
        assert_eq!(m.attachments.len(), 1);
        let att = &m.attachments[0];
        assert_eq!(att.content_type, "message/rfc822");
        assert_eq!(att.name.as_deref(), Some("Inner news"));
        assert_eq!(att.data, nested.trim_end().as_bytes());
        assert_eq!(att.size, att.data.len());

        // The same nested message base64-encoded, with a file name and no subject.
        let inner = b"From: inner@example.com\r\n\r\nno subject\r\n";
        let b64 = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, inner);
        let m = ok(&crlf(&format!(
            "From: a@example.com\n\
             Content-Type: multipart/mixed; boundary=\"m\"\n\
             \n\
             --m\n\
             Content-Type: text/plain\n\
             \n\
             fwd\n\
             --m\n\
             Content-Type: message/rfc822\n\
             Content-Transfer-Encoding: base64\n\
             \n\
             {b64}\n\
             --m\n\
             Content-Type: message/rfc822\n\
             Content-Disposition: attachment; filename=\"orig.eml\"\n\
             Content-Transfer-Encoding: base64\n\
             \n\
             {b64}\n\
             --m--\n"
        )));
        assert_eq!(m.attachments.len(), 2);
        assert_eq!(m.attachments[0].data, inner);
        assert_eq!(m.attachments[0].name.as_deref(), Some(NESTED_MESSAGE_NAME));
        assert_eq!(m.attachments[1].name.as_deref(), Some("orig.eml"));
    }

    #[test]
    fn empty_and_whitespace_input_is_an_empty_error() {
        assert_eq!(parse(b""), Err(ParseError::Empty));
        assert_eq!(parse(b" \r\n\t\n"), Err(ParseError::Empty));
    }

    #[test]
    fn input_over_the_limit_is_rejected_before_parsing() {
        let raw = crlf("From: a@example.com\nSubject: big\n\nbody\n");
        assert_eq!(
            parse_with_limit(&raw, 10),
            Err(ParseError::TooLarge { limit: 10 })
        );
        assert!(parse_with_limit(&raw, raw.len()).is_ok());
        let huge = vec![b'a'; DEFAULT_MAX_BYTES + 1];
        assert_eq!(
            parse(&huge),
            Err(ParseError::TooLarge {
                limit: DEFAULT_MAX_BYTES
            })
        );
    }

    #[test]
    fn input_without_a_header_field_is_not_a_message() {
        for raw in [
            &b"hello world"[..],
            b"hello world\r\n\r\nbody",
            b"\r\n\r\nbody without headers",
            b"\x00\x01\x02\xff\xfe\xfd",
            b":::\n",
            b"a b: c\n\nd",
        ] {
            let err = parse(raw).expect_err("not a message");
            assert_eq!(err, ParseError::NotAMessage);
            // The error text says what went wrong without echoing any input.
            assert!(!err.to_string().contains("hello"));
        }
    }

    #[test]
    fn header_only_message_without_final_line_break_keeps_its_header() {
        let m = ok(b"Subject: only a header");
        assert_eq!(m.subject.as_deref(), Some("only a header"));
        assert_eq!(m.text, None);
        assert_eq!(m.raw_size, 22);
    }

    #[test]
    fn error_text_never_contains_message_content() {
        for err in [
            ParseError::Empty,
            ParseError::TooLarge { limit: 5 },
            ParseError::NotAMessage,
            ParseError::Internal,
        ] {
            let text = err.to_string();
            assert!(text.chars().next().is_some_and(char::is_lowercase));
            assert!(!text.ends_with('.'));
            assert!(!err.category().is_empty());
        }
    }

    #[test]
    fn outcomes_are_counted() {
        let before_ok = PARSE_OK.get();
        let before_empty = PARSE_EMPTY.get();
        let _ = parse(b"Subject: counted\r\n\r\nx\r\n");
        let _ = parse(b"");
        assert!(PARSE_OK.get() > before_ok);
        assert!(PARSE_EMPTY.get() > before_empty);
        assert!(crate::metrics::render().contains("helpr_ingest_parse_total{outcome=\"ok\"}"));
    }

    /// Deterministic xorshift64*, enough to mutate inputs reproducibly.
    struct XorShift(u64);

    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        fn below(&mut self, n: usize) -> usize {
            if n == 0 {
                0
            } else {
                (self.next() % n as u64) as usize
            }
        }
    }

    const TOKENS: &[&[u8]] = &[
        b"\r\n",
        b"\n",
        b"\r\n\r\n",
        b"--",
        b"--b1--",
        b":",
        b"=?UTF-8?B?",
        b"=?ISO-8859-1?Q?=E9",
        b"?=",
        b"Content-Type: multipart/mixed; boundary=\"b1\"\r\n",
        b"Content-Type: message/rfc822\r\n",
        b"Content-Type: multipart/digest; boundary=b1\r\n",
        b"Content-Transfer-Encoding: base64\r\n",
        b"Content-Transfer-Encoding: quoted-printable\r\n",
        b"; filename*0*=UTF-8''%E2%82;",
        b"charset=shift_jis",
        b"charset=utf-7",
        b"=\r\n",
        b"=XY",
        b"cid:",
        b"<",
        b">",
        b"\"",
        b"\x00",
        b"\xff\xfe",
    ];

    fn seeds() -> Vec<Vec<u8>> {
        let mut seeds = vec![
            crlf(
                "From: a@example.com\nSubject: s\nContent-Type: multipart/mixed; boundary=\"b1\"\n\n\
                 --b1\nContent-Type: text/plain\n\nx\n--b1\nContent-Type: message/rfc822\n\n\
                 Subject: inner\nContent-Type: multipart/alternative; boundary=b2\n\n--b2\n\n\
                 y\n--b2--\n--b1--\n",
            ),
            crlf("Subject: =?UTF-8?Q?a?=\n\nbody\n"),
        ];
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/testdata/mime");
        for sub in ["rfc", "thirdparty", "malformed"] {
            let Ok(entries) = std::fs::read_dir(format!("{dir}/{sub}")) else {
                continue;
            };
            let mut paths: Vec<_> = entries
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|e| e == "eml"))
                .collect();
            paths.sort();
            seeds.extend(paths.iter().filter_map(|p| std::fs::read(p).ok()));
        }
        seeds
    }

    fn mutate(rng: &mut XorShift, seed: &[u8]) -> Vec<u8> {
        let mut data = seed.to_vec();
        for _ in 0..=rng.below(8) {
            let len = data.len();
            match rng.below(7) {
                0 if len > 0 => {
                    let i = rng.below(len);
                    data[i] ^= 1 << rng.below(8);
                }
                1 => {
                    let token = TOKENS[rng.below(TOKENS.len())];
                    let at = rng.below(len + 1);
                    data.splice(at..at, token.iter().copied());
                }
                2 if len > 0 => {
                    let at = rng.below(len);
                    let end = (at + rng.below(64)).min(len);
                    data.drain(at..end);
                }
                3 => data.truncate(rng.below(len + 1)),
                4 if len > 0 => {
                    let at = rng.below(len);
                    let end = (at + rng.below(256)).min(len);
                    let chunk = data[at..end].to_vec();
                    let to = rng.below(len + 1);
                    data.splice(to..to, chunk);
                }
                5 if len > 0 => {
                    let i = rng.below(len);
                    data[i] = (rng.next() & 0xff) as u8;
                }
                _ => {
                    let n = rng.below(64);
                    let at = rng.below(len + 1);
                    let junk: Vec<u8> = (0..n).map(|_| (rng.next() & 0xff) as u8).collect();
                    data.splice(at..at, junk);
                }
            }
        }
        data
    }

    #[test]
    fn random_and_mutated_input_never_panics() {
        let seeds = seeds();
        let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
        let (mut parsed, mut rejected, mut internal) = (0usize, 0usize, 0usize);
        for i in 0..4000 {
            let input = if i % 5 == 0 {
                let n = rng.below(512);
                (0..n).map(|_| (rng.next() & 0xff) as u8).collect()
            } else {
                let seed = rng.below(seeds.len());
                mutate(&mut rng, &seeds[seed])
            };
            match parse(&input) {
                Ok(m) => {
                    parsed += 1;
                    assert_eq!(m.raw_size, input.len());
                    for a in &m.attachments {
                        assert_eq!(a.size, a.data.len());
                        assert!(!a.content_type.is_empty());
                    }
                }
                Err(ParseError::Internal) => internal += 1,
                Err(_) => rejected += 1,
            }
        }
        println!("mutated inputs: {parsed} parsed, {rejected} rejected, {internal} parser panics");
        assert!(parsed > 1000, "mutations of real mail mostly still parse");
        // mail-parser 0.11 has a `debug_assert!(false, ..)` in its multipart bookkeeping
        // that a few broken nested message/rfc822 parts reach (see tests/data/mime/
        // nested-rfc822-broken-multipart-*.eml): in debug builds it panics, `parse` catches
        // it as Internal; release builds compile it out and recover the message.
        if cfg!(debug_assertions) {
            assert!(internal <= 10, "{internal} parser panics");
        } else {
            assert_eq!(internal, 0, "mail-parser panicked on a mutated input");
        }
    }
}
