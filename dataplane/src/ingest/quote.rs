//! Quote stripping: removes the quoted earlier messages a reply carries, before storage.
//!
//! The vault stores every message of a thread, so the copy of the thread that each reply
//! drags along is redundant. This stage keeps what the sender wrote and removes what they
//! quoted, for both bodies of a message:
//!
//! - [`strip_text_quotes`] for `text/plain`: trailing `>` blocks with the attribution line
//!   that introduces them ("On … wrote:" and its localized forms, possibly wrapped over up
//!   to three lines), "-----Original Message-----" style separators, Outlook
//!   From/Sent/To/Subject header blocks (localized), and unquoted originals introduced by a
//!   dated attribution line; each of the last three removes everything after it.
//! - [`strip_html_quotes`] for `text/html`, on a real HTML tree (html5ever): Gmail
//!   `gmail_quote`, `blockquote type=cite` (Apple Mail, Thunderbird) with the
//!   `moz-cite-prefix` or "On … wrote:" attribution before it, Yahoo `yahoo_quoted`,
//!   Outlook `divRplyFwdMsg` / `appendonsend` / `stopSpelling` and the desktop separator
//!   (a top-bordered div holding the From/Sent/To/Subject block); the Outlook markers remove
//!   everything after them.
//!
//! Decisions, the same for both bodies:
//!
//! - **Inline replies keep their answers.** A quote is removed only when no new text follows
//!   it: quotes interleaved with answers stay (they are the questions being answered), and
//!   only the trailing quote after the last answer goes. An attribution line is removed only
//!   together with the quote it introduces.
//! - **Forwards are kept.** A forwarded message is not a quote of this thread: it is new
//!   information for the helpdesk (typically a customer's mail sent on by a colleague). The
//!   marker ("---------- Forwarded message ---------", "Begin forwarded message:", Gmail's
//!   forward attribution, Thunderbird's `moz-forward-container` …) is detected and reported
//!   as [`QuoteMarker::Forward`], and nothing from the marker on is removed. Outlook writes
//!   forwards and replies with the same header block, so they cannot be told apart from the
//!   body alone; one exception: a header block with nothing written before it is a forward
//!   without a note and is kept.
//! - **Signatures are kept** ("-- " is not a quote marker).
//! - Nothing removed means the input is returned byte for byte.
//!
//! Both functions are total: no input panics them, and their cost is linear in the input
//! (bounded look-behind and look-ahead windows, iterative tree walks). They never log.

use std::collections::HashSet;
use std::rc::Rc;

use html5ever::serialize::{SerializeOpts, TraversalScope, serialize};
use html5ever::tendril::TendrilSink;
use html5ever::{ParseOpts, QualName, local_name, ns, parse_document, parse_fragment};
use markup5ever_rcdom::{Handle, NodeData, RcDom, SerializableHandle};

use crate::metrics::Counter;

/// What [`strip_text_quotes`] or [`strip_html_quotes`] kept and removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stripped {
    /// The body without its quoted part (the input unchanged when nothing was removed).
    pub kept: String,
    /// Bytes removed: for text the input length minus `kept`'s; for HTML the difference of
    /// the serialized tree before and after removal.
    pub stripped_bytes: usize,
    /// Whether a quoted part was found and removed.
    pub quote_found: bool,
    /// Every kind of marker seen, in the order found, without duplicates. May be non-empty
    /// while nothing was removed (a forward, an inline reply).
    pub markers: Vec<QuoteMarker>,
}

/// A kind of quote marker, for counters and for the operator's `inspect` output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QuoteMarker {
    /// Text: a trailing block of `>` lines.
    QuotedLines,
    /// "On … wrote:" and its translations, Thunderbird's `moz-cite-prefix`, Gmail's
    /// `gmail_attr`.
    Attribution,
    /// Text: "-----Original Message-----" and its translations.
    OriginalMessage,
    /// Text: an Outlook From/Sent/To/Subject header block.
    HeaderBlock,
    /// A forwarded message: detected, kept.
    Forward,
    /// HTML: Gmail `gmail_quote`.
    GmailQuote,
    /// HTML: `blockquote type="cite"` (Apple Mail, Thunderbird, many others).
    CiteBlockquote,
    /// HTML: Outlook `divRplyFwdMsg`, `appendonsend`, `stopSpelling` and relatives.
    OutlookReply,
    /// HTML: Outlook desktop's top-bordered separator before the header block.
    OutlookSeparator,
    /// HTML: Yahoo `yahoo_quoted`.
    YahooQuoted,
    /// HTML: another quote container (a plain blockquote after an attribution,
    /// ProtonMail's `protonmail_quote`).
    OtherQuote,
    /// Quotes kept because answers are interleaved with them.
    InlineReply,
}

impl QuoteMarker {
    const ALL: [QuoteMarker; 12] = [
        QuoteMarker::QuotedLines,
        QuoteMarker::Attribution,
        QuoteMarker::OriginalMessage,
        QuoteMarker::HeaderBlock,
        QuoteMarker::Forward,
        QuoteMarker::GmailQuote,
        QuoteMarker::CiteBlockquote,
        QuoteMarker::OutlookReply,
        QuoteMarker::OutlookSeparator,
        QuoteMarker::YahooQuoted,
        QuoteMarker::OtherQuote,
        QuoteMarker::InlineReply,
    ];

    /// A stable snake_case name (the metric label).
    pub fn as_str(self) -> &'static str {
        match self {
            QuoteMarker::QuotedLines => "quoted_lines",
            QuoteMarker::Attribution => "attribution",
            QuoteMarker::OriginalMessage => "original_message",
            QuoteMarker::HeaderBlock => "header_block",
            QuoteMarker::Forward => "forward",
            QuoteMarker::GmailQuote => "gmail_quote",
            QuoteMarker::CiteBlockquote => "cite_blockquote",
            QuoteMarker::OutlookReply => "outlook_reply",
            QuoteMarker::OutlookSeparator => "outlook_separator",
            QuoteMarker::YahooQuoted => "yahoo_quoted",
            QuoteMarker::OtherQuote => "other_quote",
            QuoteMarker::InlineReply => "inline_reply",
        }
    }

    fn counter(self) -> &'static Counter {
        let i = Self::ALL.iter().position(|m| *m == self).unwrap_or(0);
        &MARKERS[i]
    }
}

const MARKER_HELP: &str = "quote markers seen while stripping quotes, by kind";
const MARKER_NAME: &str = "helpr_quote_markers_total";
static MARKERS: [Counter; 12] = [
    Counter::new(MARKER_NAME, "marker=\"quoted_lines\"", MARKER_HELP),
    Counter::new(MARKER_NAME, "marker=\"attribution\"", MARKER_HELP),
    Counter::new(MARKER_NAME, "marker=\"original_message\"", MARKER_HELP),
    Counter::new(MARKER_NAME, "marker=\"header_block\"", MARKER_HELP),
    Counter::new(MARKER_NAME, "marker=\"forward\"", MARKER_HELP),
    Counter::new(MARKER_NAME, "marker=\"gmail_quote\"", MARKER_HELP),
    Counter::new(MARKER_NAME, "marker=\"cite_blockquote\"", MARKER_HELP),
    Counter::new(MARKER_NAME, "marker=\"outlook_reply\"", MARKER_HELP),
    Counter::new(MARKER_NAME, "marker=\"outlook_separator\"", MARKER_HELP),
    Counter::new(MARKER_NAME, "marker=\"yahoo_quoted\"", MARKER_HELP),
    Counter::new(MARKER_NAME, "marker=\"other_quote\"", MARKER_HELP),
    Counter::new(MARKER_NAME, "marker=\"inline_reply\"", MARKER_HELP),
];

const MESSAGES_HELP: &str = "message bodies whose quoted part was removed before storage";
static TEXT_MESSAGES: Counter = Counter::new(
    "helpr_quote_stripped_messages_total",
    "part=\"text\"",
    MESSAGES_HELP,
);
static HTML_MESSAGES: Counter = Counter::new(
    "helpr_quote_stripped_messages_total",
    "part=\"html\"",
    MESSAGES_HELP,
);
const BYTES_HELP: &str = "bytes of quoted text removed before storage";
static TEXT_BYTES: Counter = Counter::new(
    "helpr_quote_stripped_bytes_total",
    "part=\"text\"",
    BYTES_HELP,
);
static HTML_BYTES: Counter = Counter::new(
    "helpr_quote_stripped_bytes_total",
    "part=\"html\"",
    BYTES_HELP,
);

fn record(result: &Stripped, messages: &'static Counter, bytes: &'static Counter) {
    if result.quote_found {
        messages.inc();
        bytes.add(u64::try_from(result.stripped_bytes).unwrap_or(u64::MAX));
    }
    for m in &result.markers {
        m.counter().inc();
    }
}

fn push_marker(markers: &mut Vec<QuoteMarker>, m: QuoteMarker) {
    if !markers.contains(&m) {
        markers.push(m);
    }
}

// ---------------------------------------------------------------------------------------
// Vocabulary
// ---------------------------------------------------------------------------------------

/// Words that make a line ending in ':' an attribution ("wrote", "a écrit", …).
const ATTRIBUTION_VERBS: &[&str] = &[
    "wrote",
    "writes",
    "écrit",
    "ecrit",
    "schrieb",
    "escribió",
    "escribio",
    "escreveu",
    "schreef",
    "geschreven",
    "geschrieben",
    "scritto",
    "scrisse",
    "skrev",
    "kirjoitti",
    "napisał",
    "napisal",
    "pisze",
    "napsal",
    "написал",
    "пишет",
    "写道",
    "寫道",
    "yazdı",
    "έγραψε",
    "quoting",
    "zitat von",
    "citando",
];

/// How attribution lines start, for joining a wrapped attribution over several lines.
const ATTRIBUTION_STARTS: &[&str] = &[
    "on ",
    "am ",
    "le ",
    "el ",
    "em ",
    "op ",
    "il ",
    "den ",
    "w dniu",
    "no dia",
    "dne ",
    "a ",
    "quoting",
    "zitat von",
    "citando",
];

/// "-----Original Message-----" and relatives (the text between the dashes, lowercase).
const ORIGINAL_PHRASES: &[&str] = &[
    "original message",
    "original-nachricht",
    "originalnachricht",
    "original nachricht",
    "ursprüngliche nachricht",
    "message original",
    "message d'origine",
    "message d’origine",
    "mensaje original",
    "mensagem original",
    "oorspronkelijk bericht",
    "origineel bericht",
    "messaggio originale",
    "messaggio originale.",
    "ursprungligt meddelande",
    "opprinnelig melding",
    "oprindelig meddelelse",
    "alkuperäinen viesti",
    "wiadomość oryginalna",
    "původní zpráva",
    "исходное сообщение",
    "reply message",
    "original email",
];

/// "---------- Forwarded message ---------" and relatives (between the dashes, lowercase).
const FORWARD_PHRASES: &[&str] = &[
    "forwarded message",
    "forwarded email",
    "forwarded e-mail",
    "weitergeleitete nachricht",
    "nachricht weitergeleitet",
    "message transféré",
    "message transfere",
    "message réexpédié",
    "mensaje reenviado",
    "mensagem encaminhada",
    "mensagem reencaminhada",
    "doorgestuurd bericht",
    "doorgestuurde e-mail",
    "messaggio inoltrato",
    "vidarebefordrat meddelande",
    "videresendt melding",
    "videresendt meddelelse",
    "välitetty viesti",
    "przekazana wiadomość",
    "пересылаемое сообщение",
];

/// "Begin forwarded message:" and relatives (lowercase, without the colon).
const FORWARD_BEGIN_PHRASES: &[&str] = &[
    "begin forwarded message",
    "anfang der weitergeleiteten nachricht",
    "début du message réexpédié",
    "début du message transféré",
    "inicio del mensaje reenviado",
    "comienzo del mensaje reenviado",
    "início da mensagem reencaminhada",
    "início da mensagem encaminhada",
    "inicio da mensagem encaminhada",
    "begin doorgestuurd bericht",
    "inizio messaggio inoltrato",
    "början på vidarebefordrat meddelande",
];

#[derive(Clone, Copy, PartialEq, Eq)]
enum HeaderKey {
    From,
    Date,
    To,
    Cc,
    Subject,
}

const FROM_KEYS: &[&str] = &[
    "from",
    "von",
    "de",
    "van",
    "da",
    "från",
    "fra",
    "od",
    "от",
    "от кого",
    "kimden",
    "lähettäjä",
    "feladó",
    "remetente",
    "expéditeur",
    "发件人",
    "寄件者",
    "差出人",
];
const DATE_KEYS: &[&str] = &[
    "sent",
    "date",
    "gesendet",
    "datum",
    "envoyé",
    "envoye",
    "enviado",
    "enviada",
    "fecha",
    "data",
    "verzonden",
    "verstuurd",
    "inviato",
    "skickat",
    "sendt",
    "wysłano",
    "wysłane",
    "odesláno",
    "отправлено",
    "дата",
    "gönderildi",
    "tarih",
    "lähetetty",
    "päivämäärä",
    "发送时间",
    "日期",
    "送信日時",
    "日付",
];
const TO_KEYS: &[&str] = &[
    "to",
    "an",
    "à",
    "a",
    "para",
    "aan",
    "til",
    "till",
    "do",
    "komu",
    "кому",
    "kime",
    "vastaanottaja",
    "címzett",
    "destinataire",
    "收件人",
    "宛先",
];
const CC_KEYS: &[&str] = &["cc", "kopie", "копия", "bcc", "cco", "cci"];
const SUBJECT_KEYS: &[&str] = &[
    "subject",
    "betreff",
    "objet",
    "asunto",
    "assunto",
    "onderwerp",
    "oggetto",
    "ämne",
    "emne",
    "temat",
    "předmět",
    "тема",
    "konu",
    "aihe",
    "tárgy",
    "sujet",
    "主题",
    "主旨",
    "件名",
];

// ---------------------------------------------------------------------------------------
// Line predicates (shared by text and HTML)
// ---------------------------------------------------------------------------------------

fn is_blank_char(c: char) -> bool {
    c.is_whitespace()
        || matches!(
            c,
            '\u{200b}' | '\u{200c}' | '\u{200d}' | '\u{2060}' | '\u{feff}'
        )
}

fn is_blank(s: &str) -> bool {
    s.chars().all(is_blank_char)
}

/// Whitespace (including no-break spaces) collapsed to single spaces, trimmed.
fn normalize(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for word in s.split(is_blank_char).filter(|w| !w.is_empty()) {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(word);
    }
    out
}

fn is_dash(c: char) -> bool {
    matches!(c, '-' | '_' | '=' | '*' | '–' | '—') || is_blank_char(c)
}

/// The phrase of a dashed separator line ("----- Original Message -----" → "original
/// message"), if the line starts with at least two dashes.
fn dashed_phrase(line: &str) -> Option<String> {
    let t = line.trim_matches(is_blank_char).trim_start_matches('*');
    let dashes = t
        .chars()
        .take_while(|c| matches!(c, '-' | '–' | '—'))
        .count();
    if dashes < 2 || t.len() > 120 {
        return None;
    }
    let phrase = t.trim_matches(is_dash).trim_end_matches(':');
    Some(normalize(phrase).to_lowercase())
}

fn is_original_message_line(line: &str) -> bool {
    dashed_phrase(line).is_some_and(|p| ORIGINAL_PHRASES.contains(&p.as_str()))
}

fn is_forward_line(line: &str) -> bool {
    if let Some(p) = dashed_phrase(line) {
        return FORWARD_PHRASES.contains(&p.as_str());
    }
    if line.len() > 120 {
        return false;
    }
    let n = normalize(line).to_lowercase();
    let n = n
        .trim_start_matches('*')
        .trim_end_matches([':', '：', '*', ' ']);
    FORWARD_BEGIN_PHRASES.contains(&n)
}

/// A line made only of separator characters (Outlook's "________________________________").
fn is_rule_line(line: &str) -> bool {
    let t = line.trim_matches(is_blank_char);
    t.chars().count() >= 5 && t.chars().all(|c| matches!(c, '_' | '-' | '=' | '–' | '—'))
}

fn header_key(line: &str) -> Option<HeaderKey> {
    let t = line
        .trim_start_matches(is_blank_char)
        .trim_start_matches('*');
    let colon = t
        .char_indices()
        .take(24)
        .find(|(_, c)| *c == ':' || *c == '：')
        .map(|(i, _)| i)?;
    let key = t
        .get(..colon)?
        .trim_matches(|c: char| is_blank_char(c) || c == '*');
    let key = key.to_lowercase();
    let key = key.as_str();
    if FROM_KEYS.contains(&key) {
        Some(HeaderKey::From)
    } else if DATE_KEYS.contains(&key) {
        Some(HeaderKey::Date)
    } else if TO_KEYS.contains(&key) {
        Some(HeaderKey::To)
    } else if CC_KEYS.contains(&key) {
        Some(HeaderKey::Cc)
    } else if SUBJECT_KEYS.contains(&key) {
        Some(HeaderKey::Subject)
    } else {
        None
    }
}

/// `lines[0]` is "From: …" and the next lines (up to 8, until a blank line) carry at least
/// two of Sent/Date, To, Cc, Subject, one of them a date or a subject.
fn is_header_block<S: AsRef<str>>(lines: &[S]) -> bool {
    let Some(first) = lines.first() else {
        return false;
    };
    if header_key(first.as_ref()) != Some(HeaderKey::From) {
        return false;
    }
    let (mut date, mut to, mut cc, mut subject) = (false, false, false, false);
    for line in lines.iter().skip(1).take(8) {
        let line = line.as_ref();
        if is_blank(line) {
            break;
        }
        match header_key(line) {
            Some(HeaderKey::Date) => date = true,
            Some(HeaderKey::To) => to = true,
            Some(HeaderKey::Cc) => cc = true,
            Some(HeaderKey::Subject) => subject = true,
            _ => {}
        }
    }
    let count = [date, to, cc, subject].iter().filter(|b| **b).count();
    (date || subject) && count >= 2
}

fn has_time(s: &str) -> bool {
    let b = s.as_bytes();
    b.windows(4).enumerate().any(|(i, w)| {
        w[0].is_ascii_digit()
            && matches!(w[1], b':' | b'.' | b'h')
            && w[2].is_ascii_digit()
            && w[3].is_ascii_digit()
            && b.get(i + 4).is_none_or(|c| !c.is_ascii_digit())
    })
}

fn has_year(s: &str) -> bool {
    let b = s.as_bytes();
    b.windows(4).enumerate().any(|(i, w)| {
        w.iter().all(u8::is_ascii_digit)
            && (w.starts_with(b"19") || w.starts_with(b"20"))
            && (i == 0 || !b[i - 1].is_ascii_digit())
            && b.get(i + 4).is_none_or(|c| !c.is_ascii_digit())
    })
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Follows {
    /// The attribution is followed by `>` lines or a quote element: a loose match will do.
    Quote,
    /// The attribution is followed by unquoted text: it must carry a verb and a date or an
    /// address, or ordinary prose would be cut.
    Unquoted,
}

/// Whether `text` (one logical line, possibly joined from a wrapped one) is an attribution.
fn is_attribution(text: &str, follows: Follows) -> bool {
    if text.len() > 600 {
        return false;
    }
    let n = normalize(text);
    let dashed = n.starts_with("--") && n.ends_with("--");
    let n = n.trim_matches(|c: char| c == '-' || c == ' ');
    let lower = n.to_lowercase();
    let ends_colon = lower.ends_with(':') || lower.ends_with('：');
    if !ends_colon && !dashed {
        return false;
    }
    let verb = ATTRIBUTION_VERBS.iter().any(|v| lower.contains(v));
    let address = lower.contains('@');
    let date = has_time(&lower) || has_year(&lower);
    match follows {
        Follows::Quote => verb || (address && date),
        Follows::Unquoted => verb && (address || has_time(&lower)),
    }
}

/// Whether `first` can open an attribution wrapped over several lines.
fn opens_attribution(first: &str) -> bool {
    let lower = normalize(first).to_lowercase();
    let lower = lower.trim_start_matches(['-', ' ']);
    if lower.ends_with(['.', '!', '?']) {
        return false;
    }
    ATTRIBUTION_STARTS.iter().any(|s| lower.starts_with(s)) || has_year(lower) || has_time(lower)
}

/// The number of lines (1 to 3) at the end of `lines` that form an attribution.
fn attribution_suffix<S: AsRef<str>>(lines: &[S], follows: Follows) -> Option<usize> {
    for k in (1..=3usize).rev() {
        if k > lines.len() {
            continue;
        }
        let part = &lines[lines.len() - k..];
        if part
            .iter()
            .any(|l| is_blank(l.as_ref()) || l.as_ref().len() > 300)
        {
            continue;
        }
        if k > 1 && !opens_attribution(part[0].as_ref()) {
            continue;
        }
        if k > 1
            && part[..k - 1]
                .iter()
                .any(|l| l.as_ref().trim_end().ends_with([':', '：']))
        {
            // An earlier line is complete on its own: only the shorter suffix can match.
            continue;
        }
        let joined = part.iter().map(AsRef::as_ref).collect::<Vec<_>>().join(" ");
        if is_attribution(&joined, follows) {
            return Some(k);
        }
    }
    None
}

/// The number of lines (1 to 3) at the start of `lines` that form an attribution.
fn attribution_prefix<S: AsRef<str>>(lines: &[S], follows: Follows) -> Option<usize> {
    for k in 1..=3usize.min(lines.len()) {
        let part = &lines[..k];
        if part
            .iter()
            .any(|l| is_blank(l.as_ref()) || l.as_ref().len() > 300)
        {
            return None;
        }
        if k > 1 && !opens_attribution(part[0].as_ref()) {
            return None;
        }
        let joined = part.iter().map(AsRef::as_ref).collect::<Vec<_>>().join(" ");
        if is_attribution(&joined, follows) {
            return Some(k);
        }
    }
    None
}

// ---------------------------------------------------------------------------------------
// Plain text
// ---------------------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum LineKind {
    Blank,
    Quoted,
    Text,
}

fn line_kind(line: &str) -> LineKind {
    let t = line.trim_start_matches(is_blank_char);
    if t.is_empty() {
        LineKind::Blank
    } else if t.starts_with('>') {
        LineKind::Quoted
    } else {
        LineKind::Text
    }
}

/// Where a depth-0 marker cuts the text, found scanning from the top.
enum Cut {
    /// A forwarded message starts at this line: keep everything.
    Forward,
    /// Everything from this line on is quoted.
    At(usize, QuoteMarker),
}

fn find_text_cut(lines: &[&str], kinds: &[LineKind]) -> Option<Cut> {
    for i in 0..lines.len() {
        if kinds[i] != LineKind::Text {
            continue;
        }
        let line = lines[i];
        if is_forward_line(line) {
            return Some(Cut::Forward);
        }
        if is_original_message_line(line) {
            return Some(Cut::At(i, QuoteMarker::OriginalMessage));
        }
        if is_header_block(&lines[i..lines.len().min(i + 10)]) {
            // Outlook's rule line above the block belongs to it.
            let mut start = i;
            let mut j = i;
            while j > 0 && kinds[j - 1] == LineKind::Blank {
                j -= 1;
            }
            if j > 0 && is_rule_line(lines[j - 1]) {
                start = j - 1;
            }
            return Some(Cut::At(start, QuoteMarker::HeaderBlock));
        }
        if let Some(k) = attribution_prefix(&lines[i..lines.len().min(i + 3)], Follows::Unquoted) {
            // Only when unquoted text follows: a `>` block after it is handled as a
            // trailing quote, so that inline replies keep their answers.
            let next = (i + k..lines.len()).find(|&j| kinds[j] != LineKind::Blank);
            if next.is_some_and(|j| kinds[j] == LineKind::Text) {
                return Some(Cut::At(i, QuoteMarker::Attribution));
            }
        }
    }
    None
}

/// Removes the quoted part of a `text/plain` body. See the module documentation.
pub fn strip_text_quotes(text: &str) -> Stripped {
    let result = strip_text(text);
    record(&result, &TEXT_MESSAGES, &TEXT_BYTES);
    result
}

fn strip_text(text: &str) -> Stripped {
    let mut markers = Vec::new();
    let mut starts = Vec::new();
    let mut lines = Vec::new();
    let mut offset = 0;
    for raw in text.split_inclusive('\n') {
        starts.push(offset);
        offset += raw.len();
        lines.push(raw.trim_end_matches(['\n', '\r']));
    }
    let kinds: Vec<LineKind> = lines.iter().map(|l| line_kind(l)).collect();

    let mut end = lines.len();
    match find_text_cut(&lines, &kinds) {
        Some(Cut::Forward) => {
            push_marker(&mut markers, QuoteMarker::Forward);
            return unchanged(text, markers);
        }
        Some(Cut::At(i, marker)) => {
            push_marker(&mut markers, marker);
            if kinds[..i].iter().all(|k| *k == LineKind::Blank) {
                // Nothing written before the header: a forward without a note.
                push_marker(&mut markers, QuoteMarker::Forward);
                return unchanged(text, markers);
            }
            end = i;
        }
        None => {}
    }

    // A trailing `>` block (after the last line of new text) goes, with its attribution.
    let last_text = (0..end).rev().find(|&i| kinds[i] == LineKind::Text);
    let last_quoted = (0..end).rev().find(|&i| kinds[i] == LineKind::Quoted);
    if let Some(q) = last_quoted
        && last_text.is_none_or(|t| t < q)
    {
        push_marker(&mut markers, QuoteMarker::QuotedLines);
        end = last_text.map_or(0, |t| t + 1);
        if let Some(t) = last_text {
            let from = t.saturating_sub(2);
            let window: Vec<&str> = (from..=t)
                .rev()
                .take_while(|&j| kinds[j] == LineKind::Text)
                .map(|j| lines[j])
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect();
            if let Some(k) = attribution_suffix(&window, Follows::Quote) {
                push_marker(&mut markers, QuoteMarker::Attribution);
                end = t + 1 - k;
            }
        }
    }
    if kinds[..end].contains(&LineKind::Quoted) {
        push_marker(&mut markers, QuoteMarker::InlineReply);
    }

    let cut_at = starts.get(end).copied().unwrap_or(text.len());
    if cut_at >= text.len() {
        return unchanged(text, markers);
    }
    let kept = text
        .get(..cut_at)
        .unwrap_or(text)
        .trim_end_matches(is_blank_char);
    Stripped {
        kept: kept.to_owned(),
        stripped_bytes: text.len() - kept.len(),
        quote_found: true,
        markers,
    }
}

fn unchanged(input: &str, markers: Vec<QuoteMarker>) -> Stripped {
    Stripped {
        kept: input.to_owned(),
        stripped_bytes: 0,
        quote_found: false,
        markers,
    }
}

// ---------------------------------------------------------------------------------------
// HTML
// ---------------------------------------------------------------------------------------

/// Removes the quoted part of a `text/html` body. See the module documentation.
///
/// A fragment (what the sanitizer produces) comes back as a fragment, a whole document
/// (`<html>`, `<head>` or `<body>` present) as a whole document.
pub fn strip_html_quotes(html: &str) -> Stripped {
    let result = strip_html(html);
    record(&result, &HTML_MESSAGES, &HTML_BYTES);
    result
}

/// What an element is to quote stripping.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Role {
    /// Removes itself and everything after it (Outlook).
    Cut(QuoteMarker),
    /// A container of an attribution and quotes (Gmail's `div.gmail_quote`): removed whole,
    /// unless answers are interleaved inside it.
    Container(QuoteMarker),
    /// A quote.
    Quote(QuoteMarker),
    /// A forwarded message, kept.
    Forward,
    /// An attribution element.
    Attribution,
    /// No content of its own to look at (scripts, styles, head).
    Skip,
    Plain,
}

fn local(h: &Handle) -> Option<&str> {
    match &h.data {
        NodeData::Element { name, .. } => Some(&name.local),
        _ => None,
    }
}

fn attr(h: &Handle, name: &str) -> Option<String> {
    match &h.data {
        NodeData::Element { attrs, .. } => attrs
            .try_borrow()
            .ok()?
            .iter()
            .find(|a| (*a.name.local).eq_ignore_ascii_case(name))
            .map(|a| a.value.to_string()),
        _ => None,
    }
}

/// Outlook on the web prefixes ids and classes of received mail with "x_".
fn strip_x(mut s: &str) -> &str {
    while let Some(rest) = s.strip_prefix("x_") {
        s = rest;
    }
    s
}

fn has_class(h: &Handle, class: &str) -> bool {
    attr(h, "class").is_some_and(|c| {
        c.split_ascii_whitespace()
            .any(|t| strip_x(t).eq_ignore_ascii_case(class))
    })
}

fn children(h: &Handle) -> Vec<Handle> {
    h.children
        .try_borrow()
        .map(|c| c.clone())
        .unwrap_or_default()
}

fn parent(h: &Handle) -> Option<Handle> {
    let weak = h.parent.take();
    let p = weak.as_ref().and_then(std::rc::Weak::upgrade);
    h.parent.set(weak);
    p
}

fn key(h: &Handle) -> usize {
    Rc::as_ptr(h) as usize
}

const BLOCK_ELEMENTS: &[&str] = &[
    "address",
    "article",
    "aside",
    "blockquote",
    "center",
    "dd",
    "div",
    "dl",
    "dt",
    "fieldset",
    "figure",
    "footer",
    "form",
    "h1",
    "h2",
    "h3",
    "h4",
    "h5",
    "h6",
    "header",
    "hr",
    "li",
    "main",
    "nav",
    "ol",
    "p",
    "pre",
    "section",
    "table",
    "tbody",
    "td",
    "tfoot",
    "th",
    "thead",
    "tr",
    "ul",
];

const SKIPPED_ELEMENTS: &[&str] = &[
    "head", "script", "style", "template", "title", "noscript", "meta", "link",
];

/// Text of a subtree, line breaks for `br` and block boundaries, stopping after `limit`
/// bytes.
fn text_of(h: &Handle, limit: usize) -> String {
    let mut out = String::new();
    let mut stack = vec![(h.clone(), false)];
    // Bounds the walk through markup without text, too.
    let mut budget = limit.saturating_mul(2) + 64;
    while let Some((node, closing)) = stack.pop() {
        if out.len() >= limit || budget == 0 {
            break;
        }
        budget -= 1;
        match &node.data {
            NodeData::Text { contents } => {
                if let Ok(c) = contents.try_borrow() {
                    out.push_str(&c);
                }
            }
            NodeData::Element { name, .. } => {
                let name: &str = &name.local;
                if SKIPPED_ELEMENTS.contains(&name) {
                    continue;
                }
                if name == "br" || BLOCK_ELEMENTS.contains(&name) {
                    out.push('\n');
                }
                if !closing {
                    stack.push((node.clone(), true));
                    for c in children(&node).into_iter().rev() {
                        stack.push((c, false));
                    }
                }
            }
            NodeData::Document => {
                for c in children(&node).into_iter().rev() {
                    stack.push((c, false));
                }
            }
            _ => {}
        }
    }
    out
}

fn text_lines(text: &str) -> Vec<String> {
    text.lines()
        .map(normalize)
        .filter(|l| !l.is_empty())
        .collect()
}

/// Whether a subtree starts with a forward marker.
fn starts_with_forward(h: &Handle) -> bool {
    text_lines(&text_of(h, 600))
        .iter()
        .take(3)
        .any(|l| is_forward_line(l))
}

/// Whether a subtree's text starts with an Outlook header block.
fn starts_with_header_block(h: &Handle) -> bool {
    let lines = text_lines(&text_of(h, 1500));
    is_header_block(&lines)
}

fn role(h: &Handle) -> Role {
    let Some(name) = local(h) else {
        return Role::Plain;
    };
    if SKIPPED_ELEMENTS.contains(&name) {
        return Role::Skip;
    }
    let id = attr(h, "id").unwrap_or_default();
    let id = strip_x(&id);
    if id.eq_ignore_ascii_case("divRplyFwdMsg")
        || id.starts_with("divRpF")
        || id.eq_ignore_ascii_case("appendonsend")
        || id.eq_ignore_ascii_case("mail-editor-reference-message-container")
        || (name == "hr" && (id.eq_ignore_ascii_case("stopSpelling") || id == "zwchr"))
        || has_class(h, "OutlookMessageHeader")
    {
        return Role::Cut(QuoteMarker::OutlookReply);
    }
    if has_class(h, "moz-forward-container") {
        return Role::Forward;
    }
    if has_class(h, "gmail_quote") || has_class(h, "gmail_quote_container") {
        return if name == "blockquote" {
            Role::Quote(QuoteMarker::GmailQuote)
        } else {
            Role::Container(QuoteMarker::GmailQuote)
        };
    }
    if name == "blockquote"
        && attr(h, "type").is_some_and(|t| t.trim().eq_ignore_ascii_case("cite"))
    {
        return Role::Quote(QuoteMarker::CiteBlockquote);
    }
    let class = attr(h, "class").unwrap_or_default().to_ascii_lowercase();
    if class.contains("yahoo_quoted") || id.to_ascii_lowercase().contains("yahoo_quoted") {
        return Role::Quote(QuoteMarker::YahooQuoted);
    }
    if has_class(h, "protonmail_quote") {
        return Role::Quote(QuoteMarker::OtherQuote);
    }
    if has_class(h, "moz-cite-prefix") || has_class(h, "gmail_attr") {
        return Role::Attribution;
    }
    if name == "div"
        && is_separator_style(attr(h, "style").as_deref())
        && starts_with_header_block(h)
    {
        return Role::Cut(QuoteMarker::OutlookSeparator);
    }
    Role::Plain
}

/// Outlook desktop's separator: `border:none;border-top:solid #E1E1E1 1.0pt;…`.
fn is_separator_style(style: Option<&str>) -> bool {
    let Some(style) = style else {
        return false;
    };
    let s: String = style
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect::<String>()
        .to_ascii_lowercase();
    s.split(';').any(|decl| {
        decl.strip_prefix("border-top:")
            .is_some_and(|v| !v.starts_with("none") && !v.starts_with('0') && !v.is_empty())
    })
}

fn is_whitespace_node(h: &Handle) -> bool {
    match &h.data {
        NodeData::Text { contents } => contents.try_borrow().is_ok_and(|c| is_blank(&c)),
        NodeData::Comment { .. } => true,
        _ => false,
    }
}

const INLINE_ELEMENTS: &[&str] = &[
    "a", "abbr", "b", "bdi", "bdo", "cite", "code", "em", "font", "i", "small", "span", "strong",
    "sub", "sup", "u", "wbr",
];

/// The nodes just before `h` that attribute it ("On … wrote:"), if any.
fn find_attribution(h: &Handle) -> Option<Vec<Handle>> {
    let p = parent(h)?;
    let siblings = children(&p);
    let idx = siblings.iter().position(|s| Rc::ptr_eq(s, h))?;
    let mut j = idx;
    // Skip blank separation: whitespace, <br>, empty elements (<div><br></div>).
    let mut skipped = 0;
    while j > 0 && skipped < 8 {
        let s = &siblings[j - 1];
        let empty = is_whitespace_node(s)
            || local(s) == Some("br")
            || (local(s).is_some_and(|n| n != "img" && n != "hr")
                && is_blank(&text_of(s, 64))
                && !contains_img(s));
        if !empty {
            break;
        }
        j -= 1;
        skipped += 1;
    }
    if j == 0 {
        return None;
    }
    let prev = &siblings[j - 1];
    if has_class(prev, "moz-cite-prefix") || has_class(prev, "gmail_attr") {
        return Some(vec![prev.clone()]);
    }
    // A run of inline nodes: "On …, John &lt;<a>john@…</a>&gt; wrote:".
    let mut run = Vec::new();
    let mut k = j;
    while k > 0 && run.len() < 24 {
        let s = &siblings[k - 1];
        let inline = match &s.data {
            NodeData::Text { .. } => true,
            NodeData::Element { name, .. } => INLINE_ELEMENTS.contains(&&*name.local),
            _ => false,
        };
        if !inline {
            break;
        }
        run.push(s.clone());
        k -= 1;
    }
    run.reverse();
    let (nodes, text) = if run.is_empty() {
        let text = text_of(prev, 700);
        (vec![prev.clone()], text)
    } else {
        let text: String = run.iter().map(|n| text_of(n, 700)).collect();
        (run, text)
    };
    let lines = text_lines(&text);
    if lines.is_empty() || lines.len() > 3 {
        return None;
    }
    (attribution_suffix(&lines, Follows::Quote) == Some(lines.len())).then_some(nodes)
}

fn contains_img(h: &Handle) -> bool {
    let mut stack = vec![h.clone()];
    let mut seen = 0;
    while let Some(n) = stack.pop() {
        seen += 1;
        if seen > 256 {
            return true;
        }
        if local(&n) == Some("img") {
            return true;
        }
        stack.extend(children(&n));
    }
    false
}

/// Items of the document in order, as quote stripping sees them.
enum Item {
    Quote(Handle, QuoteMarker),
    Attribution(Handle),
    /// New text (or an image): a quote before it is not trailing.
    New,
}

struct Scan {
    items: Vec<Item>,
    cut: Option<(Handle, QuoteMarker)>,
    /// Whether something not quoted was written before the cut.
    new_before_cut: bool,
    markers: Vec<QuoteMarker>,
}

/// Pass 0: plain blockquotes introduced by an attribution, and the attribution nodes of
/// every quote.
fn find_attributions(root: &Handle) -> (HashSet<usize>, HashSet<usize>) {
    let mut attributions = HashSet::new();
    let mut plain_quotes = HashSet::new();
    let mut stack = vec![root.clone()];
    while let Some(node) = stack.pop() {
        if !matches!(node.data, NodeData::Element { .. } | NodeData::Document) {
            continue;
        }
        let r = role(&node);
        if r == Role::Skip {
            continue;
        }
        let is_quote = matches!(r, Role::Quote(_) | Role::Container(_))
            || (r == Role::Plain && local(&node) == Some("blockquote"));
        if is_quote && let Some(nodes) = find_attribution(&node) {
            if r == Role::Plain {
                plain_quotes.insert(key(&node));
            }
            for n in nodes {
                attributions.insert(key(&n));
            }
        }
        stack.extend(children(&node).into_iter().rev());
    }
    (attributions, plain_quotes)
}

fn quote_role(node: &Handle, plain_quotes: &HashSet<usize>) -> Role {
    let r = role(node);
    if r == Role::Plain && plain_quotes.contains(&key(node)) {
        Role::Quote(QuoteMarker::OtherQuote)
    } else {
        r
    }
}

/// Whether a container holds answers: text of its own after one of its quotes (content
/// before the first quote is the attribution, or the quote itself when there is none).
fn has_answers(container: &Handle, attributions: &HashSet<usize>, plain: &HashSet<usize>) -> bool {
    let mut seen_quote = false;
    let mut stack = children(container);
    stack.reverse();
    while let Some(node) = stack.pop() {
        if attributions.contains(&key(&node)) {
            continue;
        }
        match &node.data {
            NodeData::Text { contents }
                if seen_quote && contents.try_borrow().is_ok_and(|c| !is_blank(&c)) =>
            {
                return true;
            }
            NodeData::Element { .. } => match quote_role(&node, plain) {
                Role::Quote(_) | Role::Container(_) => seen_quote = true,
                Role::Attribution | Role::Skip => {}
                Role::Forward | Role::Cut(_) if seen_quote => return true,
                Role::Forward | Role::Cut(_) => {}
                Role::Plain => {
                    if seen_quote && local(&node) == Some("img") {
                        return true;
                    }
                    stack.extend(children(&node).into_iter().rev());
                }
            },
            _ => {}
        }
    }
    false
}

/// Pass 1: the document in order, down to the first Outlook cut.
fn scan(root: &Handle, attributions: &HashSet<usize>, plain: &HashSet<usize>) -> Scan {
    let mut scan = Scan {
        items: Vec::new(),
        cut: None,
        new_before_cut: false,
        markers: Vec::new(),
    };
    // (node, inside a quote container that holds inline answers)
    let mut stack: Vec<(Handle, bool)> = children(root).into_iter().map(|c| (c, false)).collect();
    stack.reverse();
    while let Some((node, in_container)) = stack.pop() {
        if attributions.contains(&key(&node)) {
            scan.items.push(Item::Attribution(node));
            continue;
        }
        match &node.data {
            NodeData::Text { contents } => {
                let Ok(c) = contents.try_borrow() else {
                    continue;
                };
                if is_blank(&c) {
                    continue;
                }
                if c.len() <= 120 && is_forward_line(&c) {
                    // Everything after a forward marker is the forwarded message: kept.
                    push_marker(&mut scan.markers, QuoteMarker::Forward);
                    scan.new_before_cut = true;
                    break;
                }
                if c.len() <= 120 && !in_container && is_original_message_line(&c) {
                    scan.cut = Some((node.clone(), QuoteMarker::OriginalMessage));
                    break;
                }
                scan.new_before_cut = true;
                scan.items.push(Item::New);
            }
            NodeData::Element { .. } => match quote_role(&node, plain) {
                Role::Skip => {}
                // Inside quoted text an Outlook header is an older message, not a cut.
                Role::Cut(_) if in_container => {
                    stack.extend(children(&node).into_iter().rev().map(|c| (c, true)));
                }
                Role::Cut(m) => {
                    scan.cut = Some((node.clone(), m));
                    break;
                }
                Role::Forward => {
                    push_marker(&mut scan.markers, QuoteMarker::Forward);
                    scan.new_before_cut = true;
                    scan.items.push(Item::New);
                }
                Role::Container(m) => {
                    if starts_with_forward(&node) {
                        push_marker(&mut scan.markers, QuoteMarker::Forward);
                        scan.new_before_cut = true;
                        scan.items.push(Item::New);
                    } else if has_answers(&node, attributions, plain) {
                        push_marker(&mut scan.markers, QuoteMarker::InlineReply);
                        stack.extend(children(&node).into_iter().rev().map(|c| (c, true)));
                    } else {
                        scan.items.push(Item::Quote(node.clone(), m));
                    }
                }
                Role::Quote(m) => {
                    if starts_with_forward(&node) {
                        push_marker(&mut scan.markers, QuoteMarker::Forward);
                        scan.new_before_cut = true;
                        scan.items.push(Item::New);
                    } else {
                        scan.items.push(Item::Quote(node.clone(), m));
                    }
                }
                Role::Attribution => scan.items.push(Item::Attribution(node.clone())),
                Role::Plain => {
                    if matches!(local(&node), Some("img" | "video" | "audio" | "object")) {
                        scan.new_before_cut = true;
                        scan.items.push(Item::New);
                    } else {
                        stack.extend(children(&node).into_iter().rev().map(|c| (c, in_container)));
                    }
                }
            },
            _ => {}
        }
    }
    scan
}

/// The cut node and everything after it in document order, below `root`.
fn everything_from(cut: &Handle, root: &Handle) -> Vec<Handle> {
    let mut out = Vec::new();
    let mut start = cut.clone();
    // Outlook puts an <hr> just before divRplyFwdMsg.
    if let Some(p) = parent(cut) {
        let siblings = children(&p);
        if let Some(i) = siblings.iter().position(|s| Rc::ptr_eq(s, cut)) {
            let mut j = i;
            while j > 0 && is_whitespace_node(&siblings[j - 1]) {
                j -= 1;
            }
            if j > 0 && local(&siblings[j - 1]) == Some("hr") {
                start = siblings[j - 1].clone();
            }
        }
    }
    let mut node = start;
    let mut include_self = true;
    loop {
        let Some(p) = parent(&node) else {
            break;
        };
        let siblings = children(&p);
        if let Some(i) = siblings.iter().position(|s| Rc::ptr_eq(s, &node)) {
            let from = if include_self { i } else { i + 1 };
            out.extend(siblings.into_iter().skip(from));
        }
        if Rc::ptr_eq(&p, root) {
            break;
        }
        node = p;
        include_self = false;
    }
    out
}

fn detach(h: &Handle) {
    if let Some(p) = parent(h) {
        if let Ok(mut c) = p.children.try_borrow_mut() {
            c.retain(|x| !Rc::ptr_eq(x, h));
        }
        h.parent.set(None);
    }
}

fn serialize_children(h: &Handle) -> Option<String> {
    let mut buf = Vec::new();
    let opts = SerializeOpts {
        traversal_scope: TraversalScope::ChildrenOnly(None),
        ..SerializeOpts::default()
    };
    serialize(&mut buf, &SerializableHandle::from(h.clone()), opts).ok()?;
    String::from_utf8(buf).ok()
}

fn looks_like_document(html: &str) -> bool {
    let head = html.get(..html.len().min(4096)).unwrap_or(html);
    let lower = head.to_ascii_lowercase();
    ["<html", "<body", "<head", "<!doctype"]
        .iter()
        .any(|t| lower.contains(t))
}

fn find_element(root: &Handle, name: &str) -> Option<Handle> {
    let mut stack = vec![root.clone()];
    while let Some(n) = stack.pop() {
        if local(&n) == Some(name) {
            return Some(n);
        }
        // html > body is shallow: no need to look deep.
        if matches!(n.data, NodeData::Document) || local(&n) == Some("html") {
            stack.extend(children(&n));
        }
    }
    None
}

/// Deeper markup than this is left as it is: html5ever's tree builder spends time
/// proportional to the depth on each tag, so pathological nesting would cost quadratic
/// time. Real mail nests a few dozen levels.
const MAX_NESTING: usize = 1500;

const VOID_OR_SELF_CLOSING: &[&str] = &[
    "area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "param", "source",
    "track", "wbr", "p", "li", "dt", "dd", "tr", "td", "th", "option", "optgroup", "tbody",
    "thead", "tfoot", "colgroup", "caption", "rb", "rt", "rp", "html", "head", "body", "o:p",
];

/// An upper estimate of the element nesting depth, in one pass over the bytes.
fn nesting_estimate(html: &str) -> usize {
    let b = html.as_bytes();
    let (mut depth, mut max) = (0usize, 0usize);
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'<' {
            i += 1;
            continue;
        }
        let closing = b.get(i + 1) == Some(&b'/');
        let start = if closing { i + 2 } else { i + 1 };
        let mut end = start;
        while end < b.len() && (b[end].is_ascii_alphanumeric() || matches!(b[end], b':' | b'-')) {
            end += 1;
        }
        if end == start || !b[start].is_ascii_alphabetic() {
            i += 1;
            continue;
        }
        let name = html.get(start..end).unwrap_or("").to_ascii_lowercase();
        i = end;
        if VOID_OR_SELF_CLOSING.contains(&name.as_str()) {
            continue;
        }
        if closing {
            depth = depth.saturating_sub(1);
        } else {
            depth += 1;
            max = max.max(depth);
        }
    }
    max
}

fn strip_html(html: &str) -> Stripped {
    if nesting_estimate(html) > MAX_NESTING {
        return unchanged(html, Vec::new());
    }
    let whole_document = looks_like_document(html);
    let dom = if whole_document {
        parse_document(RcDom::default(), ParseOpts::default()).one(html)
    } else {
        parse_fragment(
            RcDom::default(),
            ParseOpts::default(),
            QualName::new(None, ns!(html), local_name!("body")),
            Vec::new(),
            false,
        )
        .one(html)
    };
    let document = dom.document.clone();
    // What gets serialized, and where quotes are looked for.
    let (out_root, body) = if whole_document {
        let body = find_element(&document, "body").unwrap_or_else(|| document.clone());
        (document.clone(), body)
    } else {
        let Some(html_el) = find_element(&document, "html") else {
            return unchanged(html, Vec::new());
        };
        (html_el.clone(), html_el)
    };

    let (attributions, plain) = find_attributions(&body);
    let scan = scan(&body, &attributions, &plain);
    let mut markers = scan.markers;
    let mut remove: Vec<Handle> = Vec::new();

    if let Some((cut, m)) = &scan.cut {
        push_marker(&mut markers, *m);
        if scan.new_before_cut {
            remove.extend(everything_from(cut, &body));
        } else {
            // Nothing written before the header: a forward without a note, kept whole.
            push_marker(&mut markers, QuoteMarker::Forward);
        }
    }

    // Pass 2: a quote goes when no new content follows it; an attribution goes with the
    // quote right after it.
    let mut new_after = false;
    let mut next_removed = false;
    for item in scan.items.iter().rev() {
        match item {
            Item::New => {
                new_after = true;
                next_removed = false;
            }
            Item::Quote(h, m) => {
                push_marker(&mut markers, *m);
                if new_after {
                    push_marker(&mut markers, QuoteMarker::InlineReply);
                    next_removed = false;
                } else {
                    remove.push(h.clone());
                    next_removed = true;
                }
            }
            Item::Attribution(h) => {
                if next_removed {
                    push_marker(&mut markers, QuoteMarker::Attribution);
                    remove.push(h.clone());
                }
            }
        }
    }

    if remove.is_empty() {
        return unchanged(html, markers);
    }
    let Some(before) = serialize_children(&out_root) else {
        return unchanged(html, markers);
    };
    for h in &remove {
        detach(h);
    }
    let Some(after) = serialize_children(&out_root) else {
        return unchanged(html, markers);
    };
    let stripped_bytes = before.len().saturating_sub(after.len());
    Stripped {
        kept: after,
        stripped_bytes,
        quote_found: true,
        markers,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(input: &str) -> Stripped {
        strip_text_quotes(input)
    }

    #[test]
    fn text_without_quote_is_returned_unchanged() {
        let input = "Hello,\n\nthe printer on floor 2 is broken again.\n\nThanks,\nAnna\n";
        let s = text(input);
        assert_eq!(s.kept, input);
        assert_eq!(s.stripped_bytes, 0);
        assert!(!s.quote_found);
    }

    #[test]
    fn trailing_quoted_lines_are_removed_with_english_attribution() {
        let input = "Sounds good.\n\nOn Tue, Mar 12, 2024 at 10:15 AM John Smith <john@example.com> wrote:\n> Can we meet?\n>\n> John\n";
        let s = text(input);
        assert_eq!(s.kept, "Sounds good.");
        assert!(s.quote_found);
        assert_eq!(s.stripped_bytes, input.len() - "Sounds good.".len());
        assert!(s.markers.contains(&QuoteMarker::QuotedLines));
        assert!(s.markers.contains(&QuoteMarker::Attribution));
    }

    #[test]
    fn wrapped_attribution_over_two_lines_is_removed() {
        let input = "Yes.\n\nOn Tue, Mar 12, 2024 at 10:15 AM Johnathan Smithsonian <\njohnathan.smithsonian@example.com> wrote:\n\n> Question?\n";
        assert_eq!(text(input).kept, "Yes.");
        let input = "Yes.\n\nOn Tue, Mar 12, 2024 at 10:15 AM Johnathan Smithsonian <johnathan@example.com>\nwrote:\n> Question?\n";
        assert_eq!(text(input).kept, "Yes.");
    }

    #[test]
    fn localized_attributions_are_removed() {
        for attribution in [
            "Am Di., 12. März 2024 um 10:15 Uhr schrieb Max Mustermann <max@example.de>:",
            "Le mar. 12 mars 2024 à 10:15, Jean Dupont <jean@example.fr> a écrit :",
            "El mar, 12 mar 2024 a las 10:15, Juan Pérez (<juan@example.es>) escribió:",
            "Em ter., 12 de mar. de 2024 às 10:15, João Silva <joao@example.pt> escreveu:",
            "Op di 12 mrt 2024 om 10:15 schreef Jan Jansen <jan@example.nl>:",
            "Il giorno mar 12 mar 2024 alle ore 10:15 Mario Rossi <mario@example.it> ha scritto:",
            "Den tis 12 mars 2024 kl 10:15 skrev Sven Svensson <sven@example.se>:",
        ] {
            let input = format!("New text.\n\n{attribution}\n> old text\n");
            let s = text(&input);
            assert_eq!(s.kept, "New text.", "{attribution}");
            assert!(
                s.markers.contains(&QuoteMarker::Attribution),
                "{attribution}"
            );
        }
    }

    #[test]
    fn original_message_separators_cut_everything_after() {
        for sep in [
            "-----Original Message-----",
            "----- Original Message -----",
            "-------- Original-Nachricht --------",
            "-------- Message original --------",
            "-----Mensaje original-----",
            "-----Oorspronkelijk bericht-----",
            "-----Ursprüngliche Nachricht-----",
        ] {
            let input = format!("Done.\n\n{sep}\nFrom: a\nold\n");
            let s = text(&input);
            assert_eq!(s.kept, "Done.", "{sep}");
            assert!(s.markers.contains(&QuoteMarker::OriginalMessage), "{sep}");
        }
    }

    #[test]
    fn outlook_header_blocks_cut_everything_after_in_each_language() {
        for block in [
            "From: John Smith <john@example.com>\nSent: Tuesday, March 12, 2024 10:15 AM\nTo: Anna <anna@example.com>\nSubject: RE: Invoice",
            "Von: Max <max@example.de>\nGesendet: Dienstag, 12. März 2024 10:15\nAn: Anna\nBetreff: AW: Rechnung",
            "De : Jean <jean@example.fr>\nEnvoyé : mardi 12 mars 2024 10:15\nÀ : Anna\nObjet : RE: Facture",
            "De: Juan <juan@example.es>\nEnviado: martes, 12 de marzo de 2024 10:15\nPara: Anna\nAsunto: RE: Factura",
            "Van: Jan <jan@example.nl>\nVerzonden: dinsdag 12 maart 2024 10:15\nAan: Anna\nOnderwerp: RE: Factuur",
            "*From:* John <john@example.com>\n*Sent:* Tuesday, March 12, 2024 10:15 AM\n*To:* Anna\n*Subject:* Invoice",
        ] {
            let input =
                format!("Thanks!\n\n________________________________\n{block}\n\nold body\n");
            let s = text(&input);
            assert_eq!(s.kept, "Thanks!", "{block}");
            assert!(s.markers.contains(&QuoteMarker::HeaderBlock), "{block}");
        }
    }

    #[test]
    fn forwarded_content_is_kept_and_reported() {
        let input = "FYI, see below.\n\n---------- Forwarded message ---------\nFrom: Customer <c@example.com>\nDate: Tue, Mar 12, 2024 at 10:15 AM\nSubject: Broken\nTo: <support@example.com>\n\nMy printer is broken.\n";
        let s = text(input);
        assert_eq!(s.kept, input);
        assert!(!s.quote_found);
        assert_eq!(s.markers, vec![QuoteMarker::Forward]);
        let apple = "Look:\n\nBegin forwarded message:\n\nFrom: C <c@example.com>\nSubject: X\nDate: 12 March 2024 at 10:15:00 CET\nTo: s@example.com\n\nbody\n";
        assert_eq!(text(apple).kept, apple);
    }

    #[test]
    fn outlook_header_block_with_nothing_before_is_a_forward_and_kept() {
        let input = "From: Customer <c@example.com>\nSent: Tuesday, March 12, 2024 10:15 AM\nTo: Support\nSubject: Broken\n\nMy printer is broken.\n";
        let s = text(input);
        assert_eq!(s.kept, input);
        assert!(s.markers.contains(&QuoteMarker::Forward));
    }

    #[test]
    fn inline_reply_keeps_questions_and_answers_and_drops_only_the_trailing_quote() {
        let input = "On Tue, Mar 12, 2024 at 10:15 AM John <john@example.com> wrote:\n> Which room?\nRoom 4.\n\n> What time?\n10 am.\n\n> Thanks,\n> John\n";
        let s = text(input);
        assert_eq!(
            s.kept,
            "On Tue, Mar 12, 2024 at 10:15 AM John <john@example.com> wrote:\n> Which room?\nRoom 4.\n\n> What time?\n10 am."
        );
        assert!(s.markers.contains(&QuoteMarker::InlineReply));
    }

    #[test]
    fn bottom_posted_reply_keeps_the_quote() {
        let input = "John wrote:\n> Which room?\n\nRoom 4.\n";
        let s = text(input);
        assert_eq!(s.kept, input);
        assert!(!s.quote_found);
    }

    #[test]
    fn mentioning_wrote_in_prose_strips_nothing() {
        for input in [
            "As John wrote: the deadline is Friday.\nPlease confirm.\n",
            "On the ticket, the customer wrote:\n\"my printer is broken\"\nCan someone take it?\n",
            "On March 3, 2024, John wrote:\nthat the order was late. I disagree.\n",
        ] {
            let s = text(input);
            assert_eq!(s.kept, input);
            assert!(!s.quote_found, "{input}");
        }
    }

    #[test]
    fn unquoted_original_after_dated_attribution_is_cut() {
        let input = "Got it.\n\nOn Tuesday, March 12, 2024, 10:15:00 AM GMT+1, John <john@example.com> wrote:\n\n\nThe original text.\n";
        let s = text(input);
        assert_eq!(s.kept, "Got it.");
        assert!(s.markers.contains(&QuoteMarker::Attribution));
    }

    #[test]
    fn nested_and_indented_quote_markers_are_quoted_lines() {
        let input = "Reply\n\nOn Mon, Jan 1, 2024 at 9:00 AM A <a@example.com> wrote:\n >> deep\n > > deeper\n>\n";
        assert_eq!(text(input).kept, "Reply");
    }

    #[test]
    fn crlf_line_endings_are_handled() {
        let input =
            "Fine.\r\n\r\nOn Tue, Mar 12, 2024 at 10:15 AM J <j@example.com> wrote:\r\n> q\r\n";
        assert_eq!(text(input).kept, "Fine.");
    }

    #[test]
    fn text_without_newline_and_empty_input_do_not_panic() {
        assert_eq!(text("").kept, "");
        assert_eq!(text(">").kept, "");
        assert_eq!(text("wrote:").kept, "wrote:");
        let odd = "\u{feff}\u{202e}>\u{0}\r\r\n:\u{a0}—\n-- \n";
        let _ = text(odd);
        let _ = strip_html_quotes(odd);
    }

    fn html(input: &str) -> Stripped {
        strip_html_quotes(input)
    }

    #[test]
    fn gmail_quote_is_removed() {
        let input = r#"<div dir="ltr">Sure, Thursday works.</div><br><div class="gmail_quote"><div dir="ltr" class="gmail_attr">On Tue, Mar 12, 2024 at 10:15 AM John &lt;<a href="mailto:john@example.com">john@example.com</a>&gt; wrote:<br></div><blockquote class="gmail_quote" style="margin:0px 0px 0px 0.8ex">Can we meet?</blockquote></div>"#;
        let s = html(input);
        assert!(s.kept.contains("Thursday works"));
        assert!(!s.kept.contains("Can we meet"));
        assert!(!s.kept.contains("wrote:"));
        assert!(s.quote_found);
        assert!(s.stripped_bytes > 0);
        assert!(s.markers.contains(&QuoteMarker::GmailQuote));
    }

    #[test]
    fn gmail_inline_reply_keeps_answers_and_their_questions() {
        let input = r#"<div dir="ltr">See inline.</div><div class="gmail_quote"><div class="gmail_attr">On Tue, Mar 12, 2024 at 10:15 AM John &lt;john@example.com&gt; wrote:<br></div><blockquote class="gmail_quote">Which room?</blockquote><div>Room 4.</div><blockquote class="gmail_quote">What time?</blockquote><div>10 am.</div><blockquote class="gmail_quote">Thanks, John</blockquote></div>"#;
        let s = html(input);
        for keep in [
            "See inline",
            "Which room?",
            "Room 4.",
            "What time?",
            "10 am.",
            "wrote:",
        ] {
            assert!(s.kept.contains(keep), "{keep}");
        }
        assert!(!s.kept.contains("Thanks, John"));
        assert!(s.markers.contains(&QuoteMarker::InlineReply));
    }

    #[test]
    fn gmail_forward_is_kept() {
        let input = r#"<div dir="ltr">FYI<br><br><div class="gmail_quote"><div dir="ltr" class="gmail_attr">---------- Forwarded message ---------<br>From: <strong class="gmail_sendername">Customer</strong> <span>&lt;c@example.com&gt;</span><br>Date: Tue, Mar 12, 2024 at 10:15 AM<br>Subject: Broken<br>To: &lt;support@example.com&gt;<br></div><br><br><div dir="ltr">My printer is broken.</div></div></div>"#;
        let s = html(input);
        assert_eq!(s.kept, input);
        assert!(!s.quote_found);
        assert!(s.markers.contains(&QuoteMarker::Forward));
    }

    #[test]
    fn cite_blockquote_with_moz_cite_prefix_is_removed() {
        let input = r#"<p>Works for me.</p><div class="moz-cite-prefix">On 3/12/24 10:15 AM, John Smith wrote:<br></div><blockquote type="cite" cite="mid:abc@example.com">Old text</blockquote><br>"#;
        let s = html(input);
        assert!(s.kept.contains("Works for me."));
        assert!(!s.kept.contains("Old text"));
        assert!(!s.kept.contains("moz-cite-prefix"));
        assert!(s.markers.contains(&QuoteMarker::CiteBlockquote));
    }

    #[test]
    fn apple_attribution_before_cite_blockquote_is_removed() {
        let input = r#"<div dir="ltr">Sounds good</div><div dir="ltr"><br><blockquote type="cite">On Mar 12, 2024, at 10:15, John Smith &lt;john@example.com&gt; wrote:<br><br></blockquote></div><blockquote type="cite"><div dir="ltr">Original</div></blockquote>"#;
        let s = html(input);
        assert!(s.kept.contains("Sounds good"));
        assert!(!s.kept.contains("Original"));
        assert!(!s.kept.contains("wrote:"));
        let input = r#"<div>Sure.</div><div>On Mar 12, 2024, at 10:15, John &lt;john@example.com&gt; wrote:</div><blockquote style="border-left:1px solid">Original</blockquote>"#;
        let s = html(input);
        assert!(s.kept.contains("Sure."));
        assert!(!s.kept.contains("Original"));
        assert!(!s.kept.contains("wrote:"));
        assert!(s.markers.contains(&QuoteMarker::OtherQuote));
    }

    #[test]
    fn plain_blockquote_without_attribution_is_kept() {
        let input = "<p>As the manual says:</p><blockquote>Restart the router.</blockquote>";
        let s = html(input);
        assert_eq!(s.kept, input);
        assert!(!s.quote_found);
    }

    #[test]
    fn outlook_web_reply_is_cut_from_appendonsend() {
        let input = r#"<div>New answer.</div><div id="appendonsend"></div><hr style="display:inline-block;width:98%" tabindex="-1"><div id="divRplyFwdMsg" dir="ltr"><b>From:</b> John<br><b>Sent:</b> Tuesday<br><b>To:</b> Anna<br><b>Subject:</b> Q</div><div>Old question</div>"#;
        let s = html(input);
        assert!(s.kept.contains("New answer."));
        assert!(!s.kept.contains("Old question"));
        assert!(!s.kept.contains("<hr"));
        assert!(s.markers.contains(&QuoteMarker::OutlookReply));
    }

    #[test]
    fn outlook_desktop_separator_cuts_everything_after_including_ancestor_siblings() {
        let input = r#"<div class="WordSection1"><p class="MsoNormal">Danke!</p><div><div style="border:none;border-top:solid #E1E1E1 1.0pt;padding:3.0pt 0cm 0cm 0cm"><p class="MsoNormal"><b>Von:</b> Max &lt;max@example.de&gt;<br><b>Gesendet:</b> Dienstag, 12. März 2024 10:15<br><b>An:</b> Anna<br><b>Betreff:</b> Frage</p></div></div><p class="MsoNormal">Alte Frage</p></div>"#;
        let s = html(input);
        assert!(s.kept.contains("Danke!"));
        assert!(!s.kept.contains("Alte Frage"));
        assert!(!s.kept.contains("Gesendet"));
        assert!(s.markers.contains(&QuoteMarker::OutlookSeparator));
    }

    #[test]
    fn bordered_div_without_header_block_is_kept() {
        let input = r#"<div style="border-top:1px solid #ccc">Footer: call us</div><p>More</p>"#;
        assert!(!html(input).quote_found);
    }

    #[test]
    fn yahoo_quoted_is_removed() {
        let input = r#"<div class="ydp1a2b3c4dyahoo-style-wrap">Yes, confirmed.</div><div id="ydp9f8e7d6cyahoo_quoted_1234567890" class="ydp9f8e7d6cyahoo_quoted"><div>On Tuesday, March 12, 2024, 10:15:00 AM GMT+1, John &lt;john@example.com&gt; wrote:</div><div><br></div><div>Old</div></div>"#;
        let s = html(input);
        assert!(s.kept.contains("Yes, confirmed."));
        assert!(!s.kept.contains("Old"));
        assert!(s.markers.contains(&QuoteMarker::YahooQuoted));
    }

    #[test]
    fn outlook_ids_prefixed_with_x_are_recognised() {
        let input = r#"<div>Answer</div><hr><div id="x_divRplyFwdMsg"><b>From:</b> J<br><b>Sent:</b> T<br><b>To:</b> A</div><div>Old</div>"#;
        let s = html(input);
        assert!(!s.kept.contains("Old"));
        assert!(s.kept.contains("Answer"));
    }

    #[test]
    fn whole_documents_stay_documents_and_fragments_stay_fragments() {
        let doc = r#"<html><head><style>p{}</style></head><body><p>Hi</p><div class="gmail_quote">old</div></body></html>"#;
        let s = html(doc);
        assert!(s.kept.starts_with("<html>"));
        assert!(s.kept.contains("<style>"));
        assert!(!s.kept.contains("old"));
        let frag = r#"<p>Hi</p><div class="gmail_quote">old</div>"#;
        assert_eq!(html(frag).kept, "<p>Hi</p>");
    }

    #[test]
    fn deeply_nested_and_malformed_html_does_not_panic() {
        let start = std::time::Instant::now();
        let deep = "<blockquote type=cite>".repeat(20_000) + "x";
        assert_eq!(html(&deep).kept, deep);
        let divs = "<div>".repeat(50_000) + "text" + &"</div>".repeat(10);
        assert_eq!(html(&divs).kept, divs);
        let nested = "<blockquote type=cite>".repeat(500) + "x";
        assert!(html(&format!("<p>new</p>{nested}")).quote_found);
        assert!(start.elapsed().as_secs() < 20);
        for junk in [
            "<",
            "</div>",
            "<blockquote type=cite",
            "<<>>",
            "<div class=gmail_quote",
            "\u{0}",
        ] {
            let _ = html(junk);
        }
    }

    #[test]
    fn many_interleaved_quotes_take_linear_time() {
        let mut input = String::new();
        for i in 0..5_000 {
            input.push_str(&format!(
                "<blockquote type=\"cite\">q{i}</blockquote><p>a{i}</p>"
            ));
        }
        let start = std::time::Instant::now();
        let s = html(&input);
        assert!(!s.quote_found);
        assert!(start.elapsed().as_secs() < 10);
        let big = "> quoted line\n".repeat(200_000);
        let s = text(&format!("top\n{big}"));
        assert_eq!(s.kept, "top");
    }

    #[test]
    fn counters_count_stripped_messages_and_bytes() {
        let before = TEXT_BYTES.get();
        let s = text("Yes\n\nOn Tue, Mar 12, 2024 at 10:15 AM J <j@example.com> wrote:\n> q\n");
        assert!(TEXT_BYTES.get() >= before + s.stripped_bytes as u64);
        assert!(TEXT_MESSAGES.get() >= 1);
        assert!(QuoteMarker::QuotedLines.counter().get() >= 1);
    }
}
