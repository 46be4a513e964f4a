//! The distributed search backend: [`QuickwitIndex`] speaks Quickwit's REST API (v0.8/0.9,
//! `api/v1`) over reqwest with rustls.
//!
//! # One index, partitioned by tenant
//!
//! All tenants share one Quickwit index (`index_id`, default `helpr-messages`), created on
//! first use (an index that already exists is fine). `tenant_id` is a tag field and the
//! `partition_key`, so splits hold one tenant each and a tenant filter prunes splits. Every
//! query this client sends is built here from an [`IndexQuery`]: it starts with the tenant
//! filter, and every search derived from a [`SearchRequest`] continues with the inbox filter
//! (`inbox_id:IN [...]`); an empty inbox set answers no hit without sending anything. Terms
//! only ever appear quoted and escaped.
//!
//! # Terms and positions
//!
//! Each text field ([`Field::name`]) is an `array<text>` with the `whitespace` tokenizer
//! (which neither lowercases nor stems: blind tokens and normalized plaintext terms are
//! indexed as given) and `record: position`. The first value of a field is its position
//! sequence: one token per position, separated by spaces, so a phrase is a run of
//! consecutive tokens exactly as in the tantivy backend. Positions that hold several tokens
//! (an email address and its parts share one, see [`super::tokenize`]) keep the first token
//! (the whole address) in the sequence; every other token of such a slot gets its own value:
//! the sequence from [`WINDOW`] positions before to [`WINDOW`] positions after the slot, with
//! that token in the slot. Values are separate for the phrase matcher (tantivy leaves a
//! position gap between the values of a field), so a phrase that uses one address part
//! matches exactly when it matches in tantivy.
//!
//! Remaining difference from tantivy: a phrase that needs *two* non-first tokens of
//! different multi-token slots (two address parts of two adjacent addresses, such as
//! `"example.com helpr.example"` over `a@example.com b@helpr.example`), or that reaches more
//! than [`WINDOW`] positions away from the slot of the address part it uses, does not match.
//! A term that contains ASCII whitespace or is 255 bytes or longer (the tokenizer never
//! produces one) is not indexed.
//!
//! # Idempotent indexing without upsert
//!
//! Quickwit has no document id: indexing a message again adds a second document. Every
//! document therefore carries a `doc_version` (a per-process monotonic clock in
//! microseconds), and a search keeps a hit only if it is the newest version of its message:
//! for the message ids of each batch of hits, one more query (tenant, inbox and
//! `message_id:IN [...]`) reads every version. The newest version is what tantivy's
//! delete-and-add would hold, so a message indexed again with other terms stops matching its
//! old terms as soon as the new version is searchable. A stale version is never shown even
//! before it is gone; when `index` finds older versions already committed, it also creates a
//! delete task for them so the index does not grow. Results are ordered newest first by
//! (`date_ms`, `seq`) like every backend, and the cursor is the same [`Cursor`].
//!
//! # Deletes: tombstones first, then a delete task
//!
//! Quickwit applies delete tasks only to mature splits, hours later. `delete` and
//! `drop_tenant` therefore first store a [`SearchTombstone`] (scope and a version cutoff)
//! and only then create the delete task (`doc_version <= cutoff`, so a message indexed again
//! after its delete is not removed) and record its opstamp. Every query excludes the
//! tenant's tombstones in the query itself, read from the store on every call (no cache, so
//! a just-deleted message is never visible). [`QuickwitIndex::reap_tombstones`] drops
//! tombstones once every published or staged split of the tenant reports a `delete_opstamp`
//! at or above the task's, no document matches them any more, and they are older than the
//! grace period (documents still in flight in the ingest pipeline when the task was
//! created). A tombstone whose delete task could not be created is retried by the reaper.
//!
//! # Commit modes
//!
//! `commit = wait_for` (default) and `force` return from `index` once the documents are
//! searchable, so [`SearchIndex::flush`] has nothing to do. With `auto`, `index` returns when
//! Quickwit has queued the documents, and `flush` waits until the index's
//! `commit_timeout_secs` has passed since this process last ingested for the tenant.
//!
//! # Transport
//!
//! HTTPS with the system's web roots or, when `ca_cert_file` is set, only that CA bundle;
//! optional client certificate (mTLS). Plain `http://` only with `allow_insecure_http`.
//! Errors name the operation and the HTTP status, never a term, token or Quickwit's message
//! (which can echo the query).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde::Deserialize;
use serde_json::{Value, json};
use zeroize::Zeroizing;

use super::blind::{Field, IndexTerm};
use super::index::{
    Cursor, DeleteScope, IndexDoc, IndexStats, SearchError, SearchHit, SearchIndex, SearchPage,
    SearchRequest, validate_request,
};
use super::query::IndexQuery;
use crate::ids::TenantId;
use crate::metrics::Counter;
use crate::store::{SearchTombstone, Store, StoreError, TombstoneScope, now_ms};

static DOCS_INDEXED: Counter = Counter::new(
    "helpr_search_documents_indexed_total",
    r#"backend="quickwit""#,
    "Documents added to (or replaced in) a search index.",
);
static DELETES: Counter = Counter::new(
    "helpr_search_deletes_total",
    r#"backend="quickwit""#,
    "Delete calls applied to a search index.",
);
static SEARCHES: Counter = Counter::new(
    "helpr_search_queries_total",
    r#"backend="quickwit""#,
    "Searches answered by a search index.",
);

/// Positions on each side of a multi-token slot copied into its extra values.
pub const WINDOW: usize = 8;
/// Largest NDJSON body sent in one ingest request (Quickwit accepts 10 MB).
pub const MAX_INGEST_BYTES: usize = 9 * 1024 * 1024;
/// Largest JSON body of a search or delete-task request (Quickwit accepts 1 MiB).
pub const MAX_QUERY_BODY_BYTES: usize = 1024 * 1024 - 4096;
/// Most hits Quickwit returns for one search.
const MAX_HITS: usize = 10_000;
/// Message ids per `message_id:IN [...]` lookup.
const IDS_PER_LOOKUP: usize = 500;
/// Stats count distinct live messages exactly up to this many documents.
const STATS_EXACT_LIMIT: usize = 100_000;
/// Placeholder token for a position that has no token (never a query term).
const GAP_TOKEN: &str = "~";
/// Longest token Quickwit's tokenizers keep (they drop tokens of 255 bytes or more).
const MAX_TERM_BYTES: usize = 254;
const SORT_BY: &str = "-date_ms,-seq";

/// When ingested documents become searchable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CommitMode {
    /// Quickwit commits on its own schedule (`commit_timeout_secs`); `flush` waits for it.
    Auto,
    /// Each ingest request returns once its documents are committed.
    #[default]
    WaitFor,
    /// Each ingest request forces a commit and returns once it is done.
    Force,
}

impl CommitMode {
    pub fn as_str(self) -> &'static str {
        match self {
            CommitMode::Auto => "auto",
            CommitMode::WaitFor => "wait_for",
            CommitMode::Force => "force",
        }
    }
}

/// Settings of the Quickwit backend (`[search.quickwit]`).
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QuickwitConfig {
    /// Base URL of a Quickwit node, e.g. `https://quickwit-searcher:7280`.
    pub url: String,
    /// The one index all tenants share (created on first use).
    pub index_id: String,
    /// `auto`, `wait_for` (default) or `force`.
    pub commit: CommitMode,
    /// `indexing_settings.commit_timeout_secs` of an index this client creates, and how long
    /// `flush` waits in `auto` mode.
    pub commit_timeout_secs: u64,
    /// PEM bundle of the CA(s) that sign Quickwit's certificate; default: web roots.
    pub ca_cert_file: Option<PathBuf>,
    /// PEM client certificate (chain) for mTLS; needs `client_key_file`.
    pub client_cert_file: Option<PathBuf>,
    /// PEM private key of the client certificate.
    pub client_key_file: Option<PathBuf>,
    /// Allow `http://` URLs (development only).
    pub allow_insecure_http: bool,
    /// Timeout of one HTTP request, in seconds.
    pub timeout_secs: u64,
    /// Minimum age of a tombstone before the reaper may drop it, in seconds.
    pub tombstone_grace_secs: u64,
}

impl Default for QuickwitConfig {
    fn default() -> Self {
        Self {
            url: String::new(),
            index_id: "helpr-messages".to_owned(),
            commit: CommitMode::WaitFor,
            commit_timeout_secs: 5,
            ca_cert_file: None,
            client_cert_file: None,
            client_key_file: None,
            allow_insecure_http: false,
            timeout_secs: 60,
            tombstone_grace_secs: 900,
        }
    }
}

/// A settings problem of the Quickwit client. Names files and settings, never their content.
#[derive(Debug, thiserror::Error)]
pub enum QuickwitConfigError {
    #[error("search.quickwit.url is missing or not a valid url")]
    InvalidUrl,
    #[error("search.quickwit.url uses plain http; set allow_insecure_http = true to allow it")]
    InsecureHttp,
    #[error("search.quickwit.url must start with https:// (or http:// when allowed)")]
    UnsupportedScheme,
    #[error(
        "search.quickwit.index_id must be 3-255 letters, digits, '-' or '_', starting with a letter"
    )]
    InvalidIndexId,
    #[error("search.quickwit.client_cert_file and client_key_file must be set together")]
    IncompleteClientIdentity,
    #[error("cannot read {what} {path}: {kind}")]
    ReadFile {
        what: &'static str,
        path: PathBuf,
        kind: std::io::ErrorKind,
    },
    #[error("{what} is not valid PEM")]
    InvalidPem { what: &'static str },
    #[error("cannot build the http client: {0}")]
    Client(String),
}

/// Whether `id` follows Quickwit's index id rules.
pub fn valid_index_id(id: &str) -> bool {
    let mut chars = id.chars();
    (3..=255).contains(&id.len())
        && chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// A process-wide monotonic version clock: microseconds since the epoch, strictly
/// increasing within the process.
struct VersionClock(AtomicU64);

impl VersionClock {
    fn next(&self) -> u64 {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
            .unwrap_or(0);
        // Stored as signed BIGINT in the tombstone table: stay below i64::MAX.
        let now = now.min(i64::MAX as u64 / 2);
        let mut last = self.0.load(Ordering::Acquire);
        loop {
            let next = now.max(last + 1);
            match self
                .0
                .compare_exchange(last, next, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return next,
                Err(seen) => last = seen,
            }
        }
    }
}

static VERSIONS: VersionClock = VersionClock(AtomicU64::new(0));

// --- query strings ------------------------------------------------------------------------

/// `"text"` with `\` and `"` escaped: the only way a value enters a query string.
pub fn quote(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

fn id_set(field: &str, ids: impl IntoIterator<Item = impl AsRef<str>>) -> String {
    let values: Vec<String> = ids.into_iter().map(|s| quote(s.as_ref())).collect();
    format!("{field}:IN [{}]", values.join(" "))
}

fn term_usable(term: &str) -> bool {
    !term.is_empty()
        && term.len() <= MAX_TERM_BYTES
        && !term.bytes().any(|b| b.is_ascii_whitespace())
        && term != GAP_TOKEN
}

/// A query with constants folded: matches everything, nothing, or a query string.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Compiled {
    All,
    Nothing,
    Query(String),
}

fn term_clause(field: Field, term: &IndexTerm) -> Compiled {
    let s = term.to_index_string();
    if term_usable(&s) {
        Compiled::Query(format!("{}:{}", field.name(), quote(&s)))
    } else {
        Compiled::Nothing
    }
}

/// `field:prefix*`, Quickwit's term prefix clause, with every character that is not a
/// letter or digit escaped.
fn prefix_clause(field: Field, term: &IndexTerm) -> Compiled {
    let s = term.to_index_string();
    if !term_usable(&s) {
        return Compiled::Nothing;
    }
    let mut out = format!("{}:", field.name());
    for c in s.chars() {
        if !c.is_alphanumeric() {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('*');
    Compiled::Query(out)
}

/// Whether `q` has a fuzzy node: Quickwit's query language has no fuzzy clause.
fn has_fuzzy(q: &IndexQuery) -> bool {
    match q {
        IndexQuery::And(c) | IndexQuery::Or(c) => c.iter().any(has_fuzzy),
        IndexQuery::Not(inner) => has_fuzzy(inner),
        IndexQuery::Fuzzy { .. } => true,
        _ => false,
    }
}

fn compile(q: &IndexQuery) -> Compiled {
    match q {
        IndexQuery::Term { field, term } => term_clause(*field, term),
        IndexQuery::Prefix { field, term } => prefix_clause(*field, term),
        // Refused before compiling (see `has_fuzzy`).
        IndexQuery::Fuzzy { .. } => Compiled::Nothing,
        IndexQuery::Phrase { field, terms } => match terms.as_slice() {
            [] => Compiled::Nothing,
            [one] => term_clause(*field, one),
            many => {
                let words: Vec<String> = many.iter().map(IndexTerm::to_index_string).collect();
                if words.iter().all(|w| term_usable(w)) {
                    Compiled::Query(format!("{}:{}", field.name(), quote(&words.join(" "))))
                } else {
                    Compiled::Nothing
                }
            }
        },
        IndexQuery::And(children) => {
            let mut positive = Vec::new();
            let mut negative = Vec::new();
            for child in children {
                let (c, negated) = match child {
                    IndexQuery::Not(inner) => (compile(inner), true),
                    other => (compile(other), false),
                };
                match (c, negated) {
                    (Compiled::Nothing, false) | (Compiled::All, true) => {
                        return Compiled::Nothing;
                    }
                    (Compiled::All, false) | (Compiled::Nothing, true) => {}
                    (Compiled::Query(s), false) => positive.push(s),
                    (Compiled::Query(s), true) => negative.push(s),
                }
            }
            if positive.is_empty() && negative.is_empty() {
                return Compiled::All;
            }
            if positive.is_empty() {
                positive.push("*".to_owned());
            }
            let mut parts: Vec<String> = positive;
            parts.extend(negative.into_iter().map(|n| format!("NOT {n}")));
            Compiled::Query(format!("({})", parts.join(" AND ")))
        }
        IndexQuery::Or(children) => {
            let mut parts = Vec::new();
            for child in children {
                match compile(child) {
                    Compiled::All => return Compiled::All,
                    Compiled::Nothing => {}
                    Compiled::Query(s) => parts.push(s),
                }
            }
            match parts.len() {
                0 => Compiled::Nothing,
                _ => Compiled::Query(format!("({})", parts.join(" OR "))),
            }
        }
        IndexQuery::Not(inner) => match compile(inner) {
            Compiled::All => Compiled::Nothing,
            Compiled::Nothing => Compiled::All,
            Compiled::Query(s) => Compiled::Query(format!("(* AND NOT {s})")),
        },
        IndexQuery::HasAttachment => Compiled::Query("has_attachment:true".to_owned()),
        IndexQuery::Before(ms) => Compiled::Query(format!("date_ms:<{ms}")),
        IndexQuery::After(ms) => Compiled::Query(format!("date_ms:>={ms}")),
    }
}

/// The exclusion of the tenant's tombstones: `None` when there are none.
fn tombstone_exclusion(tombstones: &[SearchTombstone]) -> Option<String> {
    let tenant_cutoff = tombstones
        .iter()
        .filter(|t| t.scope == TombstoneScope::Tenant)
        .map(|t| t.cutoff_version)
        .max();
    // Group by (scope, cutoff); a tenant tombstone covers every cutoff up to its own.
    let mut groups: BTreeMap<(&'static str, u64), BTreeSet<&str>> = BTreeMap::new();
    for t in tombstones {
        if t.scope == TombstoneScope::Tenant || tenant_cutoff.is_some_and(|c| t.cutoff_version <= c)
        {
            continue;
        }
        let field = match t.scope {
            TombstoneScope::Message => "message_id",
            TombstoneScope::Conversation => "conversation_id",
            TombstoneScope::Inbox => "inbox_id",
            TombstoneScope::Tenant => continue,
        };
        groups
            .entry((field, t.cutoff_version))
            .or_default()
            .insert(t.scope_id.as_str());
    }
    let mut clauses: Vec<String> = groups
        .into_iter()
        .map(|((field, cutoff), ids)| {
            format!("({} AND doc_version:<={cutoff})", id_set(field, ids))
        })
        .collect();
    if let Some(c) = tenant_cutoff {
        clauses.push(format!("doc_version:<={c}"));
    }
    match clauses.len() {
        0 => None,
        _ => Some(format!("NOT ({})", clauses.join(" OR "))),
    }
}

/// `(date_ms, seq)` strictly below (`inclusive = false`) or at most `key`.
fn key_bound(key: Cursor, inclusive: bool) -> String {
    let op = if inclusive { "<=" } else { "<" };
    format!(
        "(date_ms:<{d} OR (date_ms:{d} AND seq:{op}{s}))",
        d = key.date_ms,
        s = key.seq
    )
}

fn tenant_clause(tenant: &TenantId) -> String {
    format!("tenant_id:{}", quote(tenant.as_str()))
}

/// The delete-task query of one tombstone.
fn tombstone_delete_query(t: &SearchTombstone) -> String {
    let tenant = tenant_clause(&t.tenant_id);
    let cutoff = format!("doc_version:<={}", t.cutoff_version);
    match t.scope {
        TombstoneScope::Message => {
            format!(
                "{tenant} AND message_id:{} AND {cutoff}",
                quote(&t.scope_id)
            )
        }
        TombstoneScope::Conversation => {
            format!(
                "{tenant} AND conversation_id:{} AND {cutoff}",
                quote(&t.scope_id)
            )
        }
        TombstoneScope::Inbox => {
            format!("{tenant} AND inbox_id:{} AND {cutoff}", quote(&t.scope_id))
        }
        TombstoneScope::Tenant => format!("{tenant} AND {cutoff}"),
    }
}

// --- documents ------------------------------------------------------------------------------

/// The values of one text field (see the module docs).
fn field_values(tokens: &[(IndexTerm, u32)]) -> Vec<String> {
    let mut slots: BTreeMap<u32, Vec<String>> = BTreeMap::new();
    for (term, position) in tokens {
        let s = term.to_index_string();
        if !term_usable(&s) {
            continue;
        }
        let slot = slots.entry(*position).or_default();
        if !slot.contains(&s) {
            slot.push(s);
        }
    }
    let Some((&first, _)) = slots.first_key_value() else {
        return Vec::new();
    };
    let last = slots.last_key_value().map(|(p, _)| *p).unwrap_or(first);
    // The position sequence from the first position; gaps get a placeholder.
    let mut sequence: Vec<&str> = Vec::new();
    let mut extra: Vec<(usize, &str)> = Vec::new();
    for position in first..=last {
        match slots.get(&position) {
            Some(slot) => {
                let index = sequence.len();
                sequence.push(slot[0].as_str());
                extra.extend(slot[1..].iter().map(|s| (index, s.as_str())));
            }
            None => sequence.push(GAP_TOKEN),
        }
    }
    let mut values = vec![sequence.join(" ")];
    for (index, token) in extra {
        let from = index.saturating_sub(WINDOW);
        let to = (index + WINDOW + 1).min(sequence.len());
        let mut window: Vec<&str> = sequence[from..to].to_vec();
        window[index - from] = token;
        values.push(window.join(" "));
    }
    values
}

fn doc_json(tenant: &TenantId, doc: &IndexDoc, version: u64) -> Value {
    let mut obj = serde_json::Map::new();
    obj.insert("tenant_id".into(), json!(tenant.as_str()));
    obj.insert("message_id".into(), json!(doc.message_id));
    obj.insert("conversation_id".into(), json!(doc.conversation_id));
    obj.insert("inbox_id".into(), json!(doc.inbox_id));
    obj.insert("date_ms".into(), json!(doc.date_ms));
    obj.insert("seq".into(), json!(doc.seq()));
    obj.insert("doc_version".into(), json!(version));
    obj.insert("has_attachment".into(), json!(doc.has_attachment));
    obj.insert("key_version".into(), json!(doc.key_version.unwrap_or(0)));
    for field in &doc.fields {
        let values = field_values(&field.tokens);
        if !values.is_empty() {
            obj.insert(field.field.name().into(), json!(values));
        }
    }
    Value::Object(obj)
}

/// The index config this client creates (Quickwit's `IndexConfig`, format version 0.8,
/// which Quickwit 0.8 and 0.9 accept).
pub fn index_config(index_id: &str, commit_timeout_secs: u64) -> Value {
    let id = |name: &str| {
        json!({"name": name, "type": "text", "tokenizer": "raw", "record": "basic",
               "stored": true, "fieldnorms": false})
    };
    let mut fields = vec![
        id("tenant_id"),
        id("message_id"),
        id("conversation_id"),
        id("inbox_id"),
        json!({"name": "date_ms", "type": "i64", "indexed": true, "fast": true, "stored": true}),
        json!({"name": "seq", "type": "u64", "indexed": true, "fast": true, "stored": true}),
        json!({"name": "doc_version", "type": "u64", "indexed": true, "fast": true,
               "stored": true}),
        json!({"name": "has_attachment", "type": "bool", "indexed": true, "stored": false}),
        json!({"name": "key_version", "type": "u64", "indexed": true, "stored": true}),
    ];
    for field in Field::ALL {
        fields.push(json!({"name": field.name(), "type": "array<text>",
                           "tokenizer": "whitespace", "record": "position",
                           "stored": false, "fieldnorms": false}));
    }
    json!({
        "version": "0.8",
        "index_id": index_id,
        "doc_mapping": {
            "mode": "strict",
            "field_mappings": fields,
            "tag_fields": ["tenant_id"],
            "partition_key": "tenant_id",
            "max_num_partitions": 1000,
            "store_source": false
        },
        "indexing_settings": {"commit_timeout_secs": commit_timeout_secs},
        "search_settings": {"default_search_fields": []}
    })
}

// --- responses ------------------------------------------------------------------------------

#[derive(Deserialize)]
struct SearchResponse {
    hits: Vec<Value>,
    num_hits: u64,
}

#[derive(Deserialize)]
struct IngestResponse {
    num_docs_for_processing: u64,
    #[serde(default)]
    num_rejected_docs: Option<u64>,
}

#[derive(Deserialize)]
struct DeleteTaskResponse {
    opstamp: u64,
}

#[derive(Deserialize)]
struct SplitsResponse {
    splits: Vec<SplitInfo>,
}

#[derive(Deserialize)]
struct FooterOffsets {
    end: u64,
}

#[derive(Deserialize)]
struct SplitInfo {
    #[serde(default)]
    uncompressed_docs_size_in_bytes: u64,
    #[serde(default)]
    footer_offsets: Option<FooterOffsets>,
    #[serde(default)]
    delete_opstamp: u64,
    #[serde(default)]
    tags: Vec<String>,
}

impl SplitInfo {
    /// Whether the split may hold documents of `tenant` (a split without tenant tags may).
    fn may_hold(&self, tenant: &TenantId) -> bool {
        let mine = format!("tenant_id:{}", tenant.as_str());
        let tagged: Vec<&String> = self
            .tags
            .iter()
            .filter(|t| t.starts_with("tenant_id:"))
            .collect();
        tagged.is_empty() || tagged.iter().any(|t| **t == mine)
    }
}

/// One stored hit.
struct RawHit {
    message_id: String,
    conversation_id: String,
    inbox_id: String,
    date_ms: i64,
    seq: u64,
    version: u64,
}

impl RawHit {
    fn parse(v: &Value) -> Result<Self, SearchError> {
        let text = |name: &str| -> Result<String, SearchError> {
            v.get(name)
                .and_then(Value::as_str)
                .map(str::to_owned)
                .ok_or_else(|| SearchError::Backend(format!("quickwit hit lacks {name}")))
        };
        let num = |name: &str| -> Result<u64, SearchError> {
            v.get(name)
                .and_then(Value::as_u64)
                .ok_or_else(|| SearchError::Backend(format!("quickwit hit lacks {name}")))
        };
        Ok(Self {
            message_id: text("message_id")?,
            conversation_id: text("conversation_id").unwrap_or_default(),
            inbox_id: text("inbox_id").unwrap_or_default(),
            date_ms: v
                .get("date_ms")
                .and_then(Value::as_i64)
                .ok_or_else(|| SearchError::Backend("quickwit hit lacks date_ms".into()))?,
            seq: num("seq")?,
            version: num("doc_version")?,
        })
    }

    fn key(&self) -> Cursor {
        Cursor {
            date_ms: self.date_ms,
            seq: self.seq,
        }
    }
}

// --- the client -----------------------------------------------------------------------------

/// The Quickwit backend (see the module docs).
pub struct QuickwitIndex {
    http: reqwest::Client,
    /// `<url>/api/v1/`.
    base: reqwest::Url,
    cfg: QuickwitConfig,
    store: Arc<dyn Store>,
    index_ready: tokio::sync::OnceCell<()>,
    last_auto_ingest: Mutex<HashMap<TenantId, Instant>>,
}

fn read_file(
    what: &'static str,
    path: &std::path::Path,
) -> Result<Zeroizing<Vec<u8>>, QuickwitConfigError> {
    std::fs::read(path)
        .map(Zeroizing::new)
        .map_err(|e| QuickwitConfigError::ReadFile {
            what,
            path: path.to_path_buf(),
            kind: e.kind(),
        })
}

fn store_err(e: StoreError) -> SearchError {
    if e.is_retryable() {
        SearchError::Unavailable(format!("tombstone store: {e}"))
    } else {
        SearchError::Backend(format!("tombstone store: {e}"))
    }
}

fn transport_err(op: &'static str, e: &reqwest::Error) -> SearchError {
    let what = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "connection failed"
    } else if e.is_decode() {
        "unreadable response"
    } else {
        "request failed"
    };
    if e.is_decode() {
        SearchError::Backend(format!("quickwit {op}: {what}"))
    } else {
        SearchError::Unavailable(format!("quickwit {op}: {what}"))
    }
}

impl QuickwitIndex {
    /// Builds the client (no request is sent until first use).
    pub fn new(cfg: QuickwitConfig, store: Arc<dyn Store>) -> Result<Self, QuickwitConfigError> {
        let mut url =
            reqwest::Url::parse(cfg.url.trim()).map_err(|_| QuickwitConfigError::InvalidUrl)?;
        match url.scheme() {
            "https" => {}
            "http" if cfg.allow_insecure_http => {}
            "http" => return Err(QuickwitConfigError::InsecureHttp),
            _ => return Err(QuickwitConfigError::UnsupportedScheme),
        }
        if url.cannot_be_a_base() || url.host_str().is_none() {
            return Err(QuickwitConfigError::InvalidUrl);
        }
        if !valid_index_id(&cfg.index_id) {
            return Err(QuickwitConfigError::InvalidIndexId);
        }
        let path = format!("{}/api/v1/", url.path().trim_end_matches('/'));
        url.set_path(&path);
        url.set_query(None);

        let mut builder = reqwest::Client::builder()
            .use_rustls_tls()
            .https_only(!cfg.allow_insecure_http)
            .timeout(Duration::from_secs(cfg.timeout_secs.max(1)))
            .connect_timeout(Duration::from_secs(cfg.timeout_secs.clamp(1, 10)));
        if let Some(ca) = &cfg.ca_cert_file {
            let pem = read_file("search.quickwit.ca_cert_file", ca)?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|_| {
                QuickwitConfigError::InvalidPem {
                    what: "search.quickwit.ca_cert_file",
                }
            })?;
            if certs.is_empty() {
                return Err(QuickwitConfigError::InvalidPem {
                    what: "search.quickwit.ca_cert_file",
                });
            }
            builder = builder.tls_built_in_root_certs(false);
            for cert in certs {
                builder = builder.add_root_certificate(cert);
            }
        }
        match (&cfg.client_cert_file, &cfg.client_key_file) {
            (Some(cert), Some(key)) => {
                let mut pem = read_file("search.quickwit.client_cert_file", cert)?;
                let key = read_file("search.quickwit.client_key_file", key)?;
                pem.push(b'\n');
                pem.extend_from_slice(&key);
                let identity = reqwest::Identity::from_pem(&pem).map_err(|_| {
                    QuickwitConfigError::InvalidPem {
                        what: "search.quickwit client certificate or key",
                    }
                })?;
                builder = builder.identity(identity);
            }
            (None, None) => {}
            _ => return Err(QuickwitConfigError::IncompleteClientIdentity),
        }
        let http = builder
            .build()
            .map_err(|e| QuickwitConfigError::Client(e.to_string()))?;
        Ok(Self {
            http,
            base: url,
            cfg,
            store,
            index_ready: tokio::sync::OnceCell::new(),
            last_auto_ingest: Mutex::new(HashMap::new()),
        })
    }

    pub fn config(&self) -> &QuickwitConfig {
        &self.cfg
    }

    fn url(&self, path: &str) -> Result<reqwest::Url, SearchError> {
        self.base
            .join(path)
            .map_err(|_| SearchError::Backend("invalid quickwit url".into()))
    }

    /// Sends a request; answers the status and body (statuses are interpreted by callers).
    async fn send(
        &self,
        op: &'static str,
        request: reqwest::RequestBuilder,
    ) -> Result<(reqwest::StatusCode, Vec<u8>), SearchError> {
        let response = request.send().await.map_err(|e| transport_err(op, &e))?;
        let status = response.status();
        let body = response.bytes().await.map_err(|e| transport_err(op, &e))?;
        Ok((status, body.to_vec()))
    }

    fn status_err(op: &'static str, status: reqwest::StatusCode) -> SearchError {
        let msg = format!("quickwit {op} answered {}", status.as_u16());
        if status.is_server_error() || status == reqwest::StatusCode::TOO_MANY_REQUESTS {
            SearchError::Unavailable(msg)
        } else {
            SearchError::Backend(msg)
        }
    }

    fn parse<T: for<'de> Deserialize<'de>>(
        op: &'static str,
        body: &[u8],
    ) -> Result<T, SearchError> {
        serde_json::from_slice(body)
            .map_err(|_| SearchError::Backend(format!("quickwit {op}: unexpected response")))
    }

    async fn index_exists(&self) -> Result<bool, SearchError> {
        let url = self.url(&format!("indexes/{}", self.cfg.index_id))?;
        let (status, _) = self.send("describe index", self.http.get(url)).await?;
        match status.as_u16() {
            200 => Ok(true),
            404 => Ok(false),
            _ => Err(Self::status_err("describe index", status)),
        }
    }

    /// Creates the index unless it exists (once per process).
    async fn ensure_index(&self) -> Result<(), SearchError> {
        self.index_ready
            .get_or_try_init(|| async {
                if self.index_exists().await? {
                    return Ok(());
                }
                let config = index_config(&self.cfg.index_id, self.cfg.commit_timeout_secs);
                let (status, _) = self
                    .send(
                        "create index",
                        self.http.post(self.url("indexes")?).json(&config),
                    )
                    .await?;
                if status.is_success() {
                    tracing::info!(index = %self.cfg.index_id, "created quickwit index");
                    return Ok(());
                }
                // Another process may have created it meanwhile ("already exists").
                if self.index_exists().await? {
                    return Ok(());
                }
                Err(Self::status_err("create index", status))
            })
            .await
            .map(|_| ())
    }

    /// One search request; `None` when the index does not exist.
    async fn raw_search(
        &self,
        query: &str,
        max_hits: usize,
        sort: bool,
    ) -> Result<Option<SearchResponse>, SearchError> {
        let mut body = json!({"query": query, "max_hits": max_hits});
        if sort {
            body["sort_by"] = json!(SORT_BY);
        }
        let bytes = serde_json::to_vec(&body)
            .map_err(|_| SearchError::Backend("cannot encode a search".into()))?;
        if bytes.len() > MAX_QUERY_BODY_BYTES {
            return Err(SearchError::Backend(
                "quickwit search too large (too many pending tombstones or inboxes)".into(),
            ));
        }
        let url = self.url(&format!("{}/search", self.cfg.index_id))?;
        let (status, body) = self
            .send(
                "search",
                self.http
                    .post(url)
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .body(bytes),
            )
            .await?;
        match status.as_u16() {
            200 => Ok(Some(Self::parse("search", &body)?)),
            404 => Ok(None),
            _ => Err(Self::status_err("search", status)),
        }
    }

    async fn create_delete_task(&self, query: &str) -> Result<u64, SearchError> {
        let url = self.url(&format!("{}/delete-tasks", self.cfg.index_id))?;
        let body = json!({ "query": query });
        let (status, body) = self
            .send("create delete task", self.http.post(url).json(&body))
            .await?;
        if !status.is_success() {
            return Err(Self::status_err("create delete task", status));
        }
        Ok(Self::parse::<DeleteTaskResponse>("create delete task", &body)?.opstamp)
    }

    async fn list_splits(&self) -> Result<Option<Vec<SplitInfo>>, SearchError> {
        let mut url = self.url(&format!("indexes/{}/splits", self.cfg.index_id))?;
        url.query_pairs_mut()
            .append_pair("split_states", "Staged,Published");
        let (status, body) = self.send("list splits", self.http.get(url)).await?;
        match status.as_u16() {
            200 => Ok(Some(
                Self::parse::<SplitsResponse>("list splits", &body)?.splits,
            )),
            404 => Ok(None),
            _ => Err(Self::status_err("list splits", status)),
        }
    }

    async fn ingest(&self, tenant: &TenantId, lines: Vec<String>) -> Result<(), SearchError> {
        let mut chunks: Vec<(String, u64)> = Vec::new();
        let mut current = String::new();
        let mut count = 0u64;
        for line in lines {
            if line.len() + 1 > MAX_INGEST_BYTES {
                return Err(SearchError::InvalidRequest(
                    "a document is larger than the quickwit ingest limit",
                ));
            }
            if current.len() + line.len() + 1 > MAX_INGEST_BYTES {
                chunks.push((std::mem::take(&mut current), count));
                count = 0;
            }
            current.push_str(&line);
            current.push('\n');
            count += 1;
        }
        if count > 0 {
            chunks.push((current, count));
        }
        for (body, count) in chunks {
            let mut url = self.url(&format!("{}/ingest", self.cfg.index_id))?;
            url.query_pairs_mut()
                .append_pair("commit", self.cfg.commit.as_str());
            let (status, answer) = self
                .send(
                    "ingest",
                    self.http
                        .post(url)
                        .header(reqwest::header::CONTENT_TYPE, "application/x-ndjson")
                        .body(body),
                )
                .await?;
            if !status.is_success() {
                return Err(Self::status_err("ingest", status));
            }
            let answer: IngestResponse = Self::parse("ingest", &answer)?;
            if let Some(rejected) = answer.num_rejected_docs.filter(|r| *r > 0) {
                return Err(SearchError::Backend(format!(
                    "quickwit rejected {rejected} document(s) of tenant {tenant}"
                )));
            }
            if answer.num_docs_for_processing != count {
                return Err(SearchError::Backend(format!(
                    "quickwit took {} of {count} document(s)",
                    answer.num_docs_for_processing
                )));
            }
        }
        Ok(())
    }

    /// Every version (message id → doc versions) of these messages.
    async fn versions(
        &self,
        tenant: &TenantId,
        inboxes: Option<&BTreeSet<String>>,
        ids: &BTreeSet<String>,
    ) -> Result<HashMap<String, Vec<u64>>, SearchError> {
        let mut out: HashMap<String, Vec<u64>> = HashMap::new();
        let ids: Vec<&String> = ids.iter().collect();
        for chunk in ids.chunks(IDS_PER_LOOKUP) {
            let mut q = tenant_clause(tenant);
            if let Some(inboxes) = inboxes {
                q.push_str(" AND ");
                q.push_str(&id_set("inbox_id", inboxes));
            }
            q.push_str(" AND ");
            q.push_str(&id_set("message_id", chunk.iter().map(|s| s.as_str())));
            let Some(answer) = self.raw_search(&q, MAX_HITS, false).await? else {
                return Ok(out);
            };
            if answer.num_hits as usize > answer.hits.len() {
                return Err(SearchError::Backend(
                    "too many versions of the same messages in quickwit".into(),
                ));
            }
            for hit in &answer.hits {
                let h = RawHit::parse(hit)?;
                out.entry(h.message_id).or_default().push(h.version);
            }
        }
        Ok(out)
    }

    /// Newest versions of distinct messages matching `filter`, newest first, after `after`,
    /// at most `want`. `inboxes` restricts the version lookup like the filter does.
    async fn collect_live(
        &self,
        tenant: &TenantId,
        filter: &str,
        inboxes: Option<&BTreeSet<String>>,
        after: Option<Cursor>,
        want: usize,
    ) -> Result<Vec<RawHit>, SearchError> {
        let fetch = (2 * want + 8).min(MAX_HITS);
        let mut out: Vec<RawHit> = Vec::new();
        let mut decided: BTreeSet<String> = BTreeSet::new();
        let mut bound: Option<(Cursor, bool)> = after.map(|c| (c, false));
        loop {
            let query = match bound {
                Some((key, inclusive)) => format!("{filter} AND {}", key_bound(key, inclusive)),
                None => filter.to_owned(),
            };
            let Some(answer) = self.raw_search(&query, fetch, true).await? else {
                return Ok(out);
            };
            let hits: Vec<RawHit> = answer
                .hits
                .iter()
                .map(RawHit::parse)
                .collect::<Result<_, _>>()?;
            let full = hits.len() >= fetch && answer.num_hits as usize > hits.len();
            let last_key = hits.last().map(RawHit::key);
            let first_key = hits.first().map(RawHit::key);
            // In a full batch, the hits at the last key may be cut: decide them next round,
            // unless the whole batch is one key (then fetch exactly that key).
            let (hits, next_bound) = match (full, first_key, last_key) {
                (true, Some(first), Some(last)) if first == last => {
                    let exact =
                        format!("{filter} AND date_ms:{} AND seq:{}", last.date_ms, last.seq);
                    let all = self
                        .raw_search(&exact, MAX_HITS, true)
                        .await?
                        .map(|a| a.hits)
                        .unwrap_or_default();
                    let all: Vec<RawHit> =
                        all.iter().map(RawHit::parse).collect::<Result<_, _>>()?;
                    (all, Some((last, false)))
                }
                (true, _, Some(last)) => {
                    let cut: Vec<RawHit> = hits.into_iter().filter(|h| h.key() != last).collect();
                    (cut, Some((last, true)))
                }
                _ => (hits, None),
            };
            let fresh: BTreeSet<String> = hits
                .iter()
                .filter(|h| !decided.contains(&h.message_id))
                .map(|h| h.message_id.clone())
                .collect();
            let versions = self.versions(tenant, inboxes, &fresh).await?;
            for hit in hits {
                if decided.contains(&hit.message_id) {
                    continue;
                }
                let newest = versions
                    .get(&hit.message_id)
                    .and_then(|v| v.iter().max().copied())
                    .unwrap_or(hit.version);
                if hit.version < newest {
                    // A stale version; the newest one decides for itself where it matches.
                    continue;
                }
                decided.insert(hit.message_id.clone());
                out.push(hit);
                if out.len() >= want {
                    return Ok(out);
                }
            }
            match next_bound {
                Some(b) => bound = Some(b),
                None => return Ok(out),
            }
        }
    }

    fn note_auto_ingest(&self, tenant: &TenantId) {
        if self.cfg.commit == CommitMode::Auto {
            self.last_auto_ingest
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(tenant.clone(), Instant::now());
        }
    }

    /// Stores a tombstone, then creates its delete task and records the opstamp.
    async fn tombstone(
        &self,
        tenant: &TenantId,
        scope: TombstoneScope,
        scope_id: &str,
    ) -> Result<(), SearchError> {
        self.ensure_index().await?;
        let tombstone = SearchTombstone {
            id: uuid::Uuid::new_v4().to_string(),
            tenant_id: tenant.clone(),
            scope,
            scope_id: scope_id.to_owned(),
            cutoff_version: VERSIONS.next(),
            delete_opstamp: None,
            created_at_ms: now_ms(),
        };
        self.store
            .add_search_tombstone(&tombstone)
            .await
            .map_err(store_err)?;
        DELETES.inc();
        // From here on the documents are invisible; the delete task only reclaims space.
        match self
            .create_delete_task(&tombstone_delete_query(&tombstone))
            .await
        {
            Ok(opstamp) => {
                self.store
                    .set_search_tombstone_opstamp(tenant, &tombstone.id, opstamp)
                    .await
                    .map_err(store_err)?;
            }
            Err(e) => {
                tracing::warn!(
                    tenant = %tenant, scope = scope.as_str(), error = %e,
                    "quickwit delete task not created; the tombstone reaper retries it"
                );
            }
        }
        Ok(())
    }

    /// Drops the tenant's tombstones whose delete tasks Quickwit has applied everywhere
    /// (see the module docs); creates missing delete tasks. Returns how many were dropped.
    pub async fn reap_tombstones(&self, tenant: &TenantId) -> Result<u64, SearchError> {
        let tombstones = self
            .store
            .list_search_tombstones(tenant)
            .await
            .map_err(store_err)?;
        if tombstones.is_empty() {
            return Ok(0);
        }
        let mut with_opstamps = Vec::with_capacity(tombstones.len());
        for mut t in tombstones {
            if t.delete_opstamp.is_none() {
                let opstamp = self.create_delete_task(&tombstone_delete_query(&t)).await?;
                self.store
                    .set_search_tombstone_opstamp(tenant, &t.id, opstamp)
                    .await
                    .map_err(store_err)?;
                t.delete_opstamp = Some(opstamp);
            }
            with_opstamps.push(t);
        }
        let Some(splits) = self.list_splits().await? else {
            // No index: nothing can hold the documents any more.
            return self
                .store
                .remove_applied_search_tombstones(tenant, u64::MAX)
                .await
                .map_err(store_err);
        };
        let mut through = splits
            .iter()
            .filter(|s| s.may_hold(tenant))
            .map(|s| s.delete_opstamp)
            .min()
            .unwrap_or(u64::MAX);
        let grace_ms =
            i64::try_from(self.cfg.tombstone_grace_secs.saturating_mul(1000)).unwrap_or(i64::MAX);
        let now = now_ms();
        for t in &with_opstamps {
            let opstamp = t.delete_opstamp.unwrap_or(u64::MAX);
            if opstamp <= through && now.saturating_sub(t.created_at_ms) < grace_ms {
                through = opstamp.saturating_sub(1);
            }
        }
        let candidates: Vec<&SearchTombstone> = with_opstamps
            .iter()
            .filter(|t| t.delete_opstamp.is_some_and(|o| o <= through))
            .collect();
        if candidates.is_empty() {
            return Ok(0);
        }
        // The task may report applied while a document still matches (e.g. one that was in
        // flight): keep the tombstones then.
        let scopes: Vec<String> = candidates
            .iter()
            .map(|t| format!("({})", tombstone_delete_query(t)))
            .collect();
        for chunk in scopes.chunks(200) {
            let q = format!("{} AND ({})", tenant_clause(tenant), chunk.join(" OR "));
            if let Some(answer) = self.raw_search(&q, 0, false).await?
                && answer.num_hits > 0
            {
                return Ok(0);
            }
        }
        self.store
            .remove_applied_search_tombstones(tenant, through)
            .await
            .map_err(store_err)
    }

    /// [`QuickwitIndex::reap_tombstones`] for every tenant with tombstones.
    pub async fn reap_all_tombstones(&self) -> Result<u64, SearchError> {
        let tenants = self
            .store
            .search_tombstone_tenants()
            .await
            .map_err(store_err)?;
        let mut dropped = 0;
        for tenant in tenants {
            dropped += self.reap_tombstones(&tenant).await?;
        }
        Ok(dropped)
    }

    /// Runs [`QuickwitIndex::reap_all_tombstones`] every `interval` until `stop` turns true.
    pub async fn run_reaper(
        self: Arc<Self>,
        interval: Duration,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.changed() => return,
            }
            if *stop.borrow() {
                return;
            }
            match self.reap_all_tombstones().await {
                Ok(0) => {}
                Ok(n) => tracing::info!(dropped = n, "search tombstones reaped"),
                Err(e) => tracing::warn!(error = %e, "search tombstone reaping failed"),
            }
        }
    }

    async fn tombstones(&self, tenant: &TenantId) -> Result<Vec<SearchTombstone>, SearchError> {
        self.store
            .list_search_tombstones(tenant)
            .await
            .map_err(store_err)
    }
}

#[async_trait]
impl SearchIndex for QuickwitIndex {
    async fn maintain(&self) -> Result<u64, SearchError> {
        self.reap_all_tombstones().await
    }

    fn backend(&self) -> &'static str {
        "quickwit"
    }

    async fn index(&self, tenant: &TenantId, docs: Vec<IndexDoc>) -> Result<(), SearchError> {
        if docs.is_empty() {
            return Ok(());
        }
        self.ensure_index().await?;
        // A message twice in one batch: the later one wins, as with delete-and-add.
        let mut latest: BTreeMap<String, IndexDoc> = BTreeMap::new();
        for doc in docs {
            latest.insert(doc.message_id.clone(), doc);
        }
        let ids: BTreeSet<String> = latest.keys().cloned().collect();
        let inboxes: BTreeSet<String> = latest.values().map(|d| d.inbox_id.clone()).collect();
        let existing = self.versions(tenant, Some(&inboxes), &ids).await?;
        let mut lines = Vec::with_capacity(latest.len());
        let mut written: Vec<(String, u64)> = Vec::with_capacity(latest.len());
        for doc in latest.values() {
            let version = VERSIONS.next();
            let line = serde_json::to_string(&doc_json(tenant, doc, version))
                .map_err(|_| SearchError::Backend("cannot encode a document".into()))?;
            lines.push(line);
            written.push((doc.message_id.clone(), version));
        }
        let count = lines.len() as u64;
        self.ingest(tenant, lines).await?;
        self.note_auto_ingest(tenant);
        DOCS_INDEXED.add(count);
        // Older versions already committed: hidden at read time; delete them to save space.
        let stale: Vec<String> = written
            .iter()
            .filter(|(id, _)| existing.contains_key(id))
            .map(|(id, version)| format!("(message_id:{} AND doc_version:<{version})", quote(id)))
            .collect();
        for chunk in stale.chunks(500) {
            let q = format!("{} AND ({})", tenant_clause(tenant), chunk.join(" OR "));
            if let Err(e) = self.create_delete_task(&q).await {
                tracing::warn!(tenant = %tenant, error = %e, "quickwit delete task for superseded versions failed");
            }
        }
        Ok(())
    }

    async fn flush(&self, tenant: &TenantId) -> Result<(), SearchError> {
        if self.cfg.commit != CommitMode::Auto {
            return Ok(());
        }
        let last = self
            .last_auto_ingest
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(tenant)
            .copied();
        if let Some(last) = last {
            let due = last
                + Duration::from_secs(self.cfg.commit_timeout_secs)
                + Duration::from_millis(500);
            tokio::time::sleep_until(tokio::time::Instant::from_std(due)).await;
        }
        Ok(())
    }

    async fn delete(&self, tenant: &TenantId, scope: &DeleteScope) -> Result<(), SearchError> {
        let (kind, id) = match scope {
            DeleteScope::Message(id) => (TombstoneScope::Message, id),
            DeleteScope::Conversation(id) => (TombstoneScope::Conversation, id),
            DeleteScope::Inbox(id) => (TombstoneScope::Inbox, id),
        };
        self.tombstone(tenant, kind, id).await
    }

    async fn drop_tenant(&self, tenant: &TenantId) -> Result<(), SearchError> {
        self.tombstone(tenant, TombstoneScope::Tenant, tenant.as_str())
            .await
    }

    async fn search(
        &self,
        tenant: &TenantId,
        request: &SearchRequest,
    ) -> Result<SearchPage, SearchError> {
        validate_request(request)?;
        if has_fuzzy(&request.query) {
            return Err(SearchError::InvalidRequest(
                "fuzzy search is not supported by the quickwit backend (prefix search is)",
            ));
        }
        if request.inboxes.is_empty() {
            return Ok(SearchPage::default());
        }
        if request.after
            == Some(Cursor {
                date_ms: i64::MIN,
                seq: 0,
            })
        {
            return Ok(SearchPage::default());
        }
        let user = match compile(&request.query) {
            Compiled::Nothing => return Ok(SearchPage::default()),
            Compiled::All => None,
            Compiled::Query(q) => Some(q),
        };
        SEARCHES.inc();
        let mut filter = format!(
            "{} AND {}",
            tenant_clause(tenant),
            id_set("inbox_id", &request.inboxes)
        );
        if let Some(user) = user {
            filter.push_str(" AND ");
            filter.push_str(&user);
        }
        if let Some(exclusion) = tombstone_exclusion(&self.tombstones(tenant).await?) {
            filter.push_str(" AND ");
            filter.push_str(&exclusion);
        }
        let mut hits = self
            .collect_live(
                tenant,
                &filter,
                Some(&request.inboxes),
                request.after,
                request.limit + 1,
            )
            .await?;
        let more = hits.len() > request.limit;
        hits.truncate(request.limit);
        let hits: Vec<SearchHit> = hits
            .into_iter()
            .map(|h| SearchHit {
                message_id: h.message_id,
                conversation_id: h.conversation_id,
                inbox_id: h.inbox_id,
                date_ms: h.date_ms,
                seq: h.seq,
            })
            .collect();
        let next = if more {
            hits.last().map(SearchHit::cursor)
        } else {
            None
        };
        Ok(SearchPage { hits, next })
    }

    /// Nothing to do here: Quickwit's delete tasks (created by every delete) rewrite the
    /// splits holding deleted documents once they are mature; the tombstones hide them
    /// until then.
    async fn compact(&self, _tenant: &TenantId) -> Result<u64, SearchError> {
        Ok(0)
    }

    async fn stats(&self, tenant: &TenantId) -> Result<IndexStats, SearchError> {
        let Some(splits) = self.list_splits().await? else {
            return Ok(IndexStats::default());
        };
        let mine: Vec<&SplitInfo> = splits.iter().filter(|s| s.may_hold(tenant)).collect();
        let mut stats = IndexStats {
            segments: mine.len() as u64,
            bytes: mine
                .iter()
                .map(|s| {
                    s.footer_offsets
                        .as_ref()
                        .map(|f| f.end)
                        .unwrap_or(s.uncompressed_docs_size_in_bytes)
                })
                .sum(),
            ..IndexStats::default()
        };
        let all = self
            .raw_search(&tenant_clause(tenant), 0, false)
            .await?
            .map(|a| a.num_hits)
            .unwrap_or(0);
        let mut filter = tenant_clause(tenant);
        if let Some(exclusion) = tombstone_exclusion(&self.tombstones(tenant).await?) {
            filter.push_str(" AND ");
            filter.push_str(&exclusion);
        }
        let live = self
            .collect_live(tenant, &filter, None, None, STATS_EXACT_LIMIT + 1)
            .await?;
        stats.documents = if live.len() > STATS_EXACT_LIMIT {
            // Too many to count one by one: the number of live documents of any version.
            self.raw_search(&filter, 0, false)
                .await?
                .map(|a| a.num_hits)
                .unwrap_or(0)
        } else {
            live.len() as u64
        };
        stats.deleted_documents = all.saturating_sub(stats.documents);
        Ok(stats)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::search::blind::Indexer;
    use crate::search::conformance::{self, Msg, ids, key, tenant};
    use crate::search::quickwit_double::QuickwitDouble;
    use crate::search::tantivy_index::{TantivyConfig, TantivyIndex};
    use crate::store::SqliteStore;

    const INDEX: &str = "helpr-messages";

    struct Guard {
        double: QuickwitDouble,
        store: Arc<dyn Store>,
        _dir: tempfile::TempDir,
    }

    impl Drop for Guard {
        fn drop(&mut self) {
            if !std::thread::panicking() {
                assert_eq!(
                    self.double.violations(),
                    Vec::<String>::new(),
                    "requests that deviate from Quickwit's API or the client's policy"
                );
            }
        }
    }

    fn cfg(url: &str, commit: CommitMode) -> QuickwitConfig {
        QuickwitConfig {
            url: url.to_owned(),
            commit,
            commit_timeout_secs: 1,
            allow_insecure_http: true,
            timeout_secs: 10,
            tombstone_grace_secs: 0,
            ..QuickwitConfig::default()
        }
    }

    async fn sqlite_store(dir: &std::path::Path) -> Arc<dyn Store> {
        let url = format!("sqlite://{}", dir.join("helpr.sqlite").display());
        Arc::new(
            SqliteStore::connect(&url)
                .await
                .unwrap_or_else(|e| panic!("store: {e}")),
        )
    }

    async fn with_mode(commit: CommitMode) -> (QuickwitIndex, Guard) {
        let double = QuickwitDouble::default();
        let url = double.start().await;
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let store = sqlite_store(dir.path()).await;
        let index = QuickwitIndex::new(cfg(&url, commit), store.clone())
            .unwrap_or_else(|e| panic!("client: {e}"));
        (
            index,
            Guard {
                double,
                store,
                _dir: dir,
            },
        )
    }

    async fn fresh() -> (QuickwitIndex, Guard) {
        with_mode(CommitMode::Force).await
    }

    mod conformance_suite {
        crate::search::conformance::conformance_tests!(super::fresh());
    }

    /// The conformance suite against a real Quickwit at `HELPR_QUICKWIT_URL` (opt-in), each
    /// case in an index of its own. Optional: `HELPR_QUICKWIT_CA` (CA bundle),
    /// `HELPR_QUICKWIT_CLIENT_CERT` / `HELPR_QUICKWIT_CLIENT_KEY` (mTLS).
    mod real_quickwit {
        use super::*;

        async fn real() -> Option<(QuickwitIndex, tempfile::TempDir)> {
            let url = std::env::var("HELPR_QUICKWIT_URL").ok()?;
            let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
            let store = sqlite_store(dir.path()).await;
            let path = |name: &str| std::env::var(name).ok().map(PathBuf::from);
            let cfg = QuickwitConfig {
                url,
                index_id: format!("helpr-test-{}", uuid::Uuid::new_v4().simple()),
                commit: CommitMode::Force,
                commit_timeout_secs: 1,
                allow_insecure_http: true,
                ca_cert_file: path("HELPR_QUICKWIT_CA"),
                client_cert_file: path("HELPR_QUICKWIT_CLIENT_CERT"),
                client_key_file: path("HELPR_QUICKWIT_CLIENT_KEY"),
                timeout_secs: 120,
                tombstone_grace_secs: 0,
            };
            let index = QuickwitIndex::new(cfg, store).unwrap_or_else(|e| panic!("client: {e}"));
            Some((index, dir))
        }

        macro_rules! real_cases {
            ($($case:ident),* $(,)?) => {$(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let Some((index, _dir)) = real().await else {
                        eprintln!("HELPR_QUICKWIT_URL is not set: skipping the real Quickwit case");
                        return;
                    };
                    conformance::$case(&index).await;
                    // Best effort: remove the test index.
                    if let Ok(url) = index.url(&format!("indexes/{}", index.cfg.index_id)) {
                        let _ = index.http.delete(url).send().await;
                    }
                }
            )*};
        }

        real_cases!(
            query_language,
            access_filter,
            idempotent,
            deletes,
            pagination,
            bad_requests
        );
    }

    fn all() -> [&'static str; 2] {
        ["inbox-a", "inbox-b"]
    }

    fn msgs() -> Vec<Msg> {
        vec![
            Msg::new("m1", "inbox-a", 1, "quarterly report", "numbers inside"),
            Msg::new("m2", "inbox-a", 2, "quarterly plan", "more numbers"),
            Msg::new("m3", "inbox-b", 3, "quarterly review", "other numbers"),
        ]
    }

    async fn add(index: &QuickwitIndex, t: &TenantId, ix: &Indexer<'_>, msgs: &[Msg]) {
        index
            .index(t, msgs.iter().map(|m| m.doc(ix)).collect())
            .await
            .unwrap_or_else(|e| panic!("index: {e}"));
        index
            .flush(t)
            .await
            .unwrap_or_else(|e| panic!("flush: {e}"));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn tombstones_hide_deleted_scopes_while_the_delete_task_is_pending() {
        let (index, guard) = fresh().await;
        let k = key(21);
        let ix = Indexer::Blind(&k);
        let t = tenant("tomb");
        let mut m = msgs();
        m[1].conversation = m[0].conversation.clone();
        m.push(Msg::new("m4", "inbox-b", 4, "quarterly close", "x"));
        add(&index, &t, &ix, &m).await;
        let q = async || ids(&index, &t, &ix, "quarterly", &all()).await;
        assert_eq!(q().await, ["m4", "m3", "m2", "m1"]);

        index
            .delete(&t, &DeleteScope::Message("m4".into()))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(q().await, ["m3", "m2", "m1"]);
        index
            .delete(&t, &DeleteScope::Conversation("conv-m1".into()))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(q().await, ["m3"]);
        index
            .delete(&t, &DeleteScope::Inbox("inbox-b".into()))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(q().await, Vec::<String>::new());

        // Quickwit has not applied anything: every document is still stored.
        assert_eq!(guard.double.stored_docs(INDEX, "tomb"), 4);
        let tasks = guard.double.delete_tasks(INDEX);
        assert_eq!(tasks.len(), 3);
        let stones = guard
            .store
            .list_search_tombstones(&t)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(stones.len(), 3);
        let opstamps: Vec<u64> = stones.iter().filter_map(|s| s.delete_opstamp).collect();
        assert_eq!(
            opstamps,
            [1, 2, 3],
            "every tombstone records its delete task"
        );

        // A tenant drop hides everything of the tenant, also messages indexed before it.
        let other = tenant("tomb-other");
        add(&index, &other, &ix, &msgs()).await;
        index
            .drop_tenant(&other)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            ids(&index, &other, &ix, "quarterly", &all()).await,
            Vec::<String>::new()
        );
        assert_eq!(guard.double.stored_docs(INDEX, "tomb-other"), 3);
        // ... but not messages indexed after it.
        add(&index, &other, &ix, &msgs()[..1]).await;
        assert_eq!(ids(&index, &other, &ix, "quarterly", &all()).await, ["m1"]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reaping_drops_tombstones_only_after_the_delete_task_applied() {
        let (index, guard) = fresh().await;
        let k = key(22);
        let ix = Indexer::Blind(&k);
        let t = tenant("reap");
        add(&index, &t, &ix, &msgs()).await;
        index
            .delete(&t, &DeleteScope::Message("m2".into()))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            index.reap_tombstones(&t).await.ok(),
            Some(0),
            "task pending"
        );
        assert_eq!(
            ids(&index, &t, &ix, "quarterly", &all()).await,
            ["m3", "m1"]
        );
        guard.double.mature_splits();
        assert_eq!(guard.double.stored_docs(INDEX, "reap"), 2, "the task ran");
        assert_eq!(index.reap_all_tombstones().await.ok(), Some(1));
        let left = guard
            .store
            .list_search_tombstones(&t)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(left.is_empty());
        assert_eq!(
            ids(&index, &t, &ix, "quarterly", &all()).await,
            ["m3", "m1"]
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_tombstone_younger_than_the_grace_period_is_kept() {
        let double = QuickwitDouble::default();
        let url = double.start().await;
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let store = sqlite_store(dir.path()).await;
        let mut c = cfg(&url, CommitMode::Force);
        c.tombstone_grace_secs = 3600;
        let index = QuickwitIndex::new(c, store.clone()).unwrap_or_else(|e| panic!("{e}"));
        let k = key(23);
        let ix = Indexer::Blind(&k);
        let t = tenant("grace");
        add(&index, &t, &ix, &msgs()).await;
        index
            .delete(&t, &DeleteScope::Message("m1".into()))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        double.mature_splits();
        assert_eq!(index.reap_tombstones(&t).await.ok(), Some(0));
        assert_eq!(
            store.list_search_tombstones(&t).await.map(|v| v.len()).ok(),
            Some(1)
        );
        assert!(double.violations().is_empty());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_search_without_inboxes_is_never_sent() {
        let (index, guard) = fresh().await;
        let k = key(24);
        let ix = Indexer::Blind(&k);
        let t = tenant("noinbox");
        add(&index, &t, &ix, &msgs()).await;
        assert_eq!(
            ids(&index, &t, &ix, "quarterly", &all()).await,
            ["m3", "m2", "m1"]
        );
        let before = guard.double.queries().len();
        assert_eq!(
            ids(&index, &t, &ix, "quarterly", &[]).await,
            Vec::<String>::new()
        );
        assert_eq!(guard.double.queries().len(), before, "a query was sent");
        // Every search the client sent carried both filters.
        for q in guard.double.queries() {
            assert!(q.starts_with("tenant_id:\"noinbox\" AND "), "{q}");
        }
        let searches: Vec<String> = guard
            .double
            .queries()
            .into_iter()
            .filter(|q| q.contains("subject:"))
            .collect();
        assert!(!searches.is_empty());
        for q in searches {
            assert!(
                q.starts_with(
                    "tenant_id:\"noinbox\" AND inbox_id:IN [\"inbox-a\" \"inbox-b\"] AND "
                ),
                "{q}"
            );
        }
    }

    #[tokio::test]
    async fn plain_http_and_bad_settings_are_refused() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let store = sqlite_store(dir.path()).await;
        let mk = |url: &str, insecure: bool, id: &str| {
            let mut c = cfg(url, CommitMode::Force);
            c.allow_insecure_http = insecure;
            c.index_id = id.to_owned();
            QuickwitIndex::new(c, store.clone()).err()
        };
        assert!(matches!(
            mk("http://quickwit:7280", false, INDEX),
            Some(QuickwitConfigError::InsecureHttp)
        ));
        assert!(mk("http://quickwit:7280", true, INDEX).is_none());
        assert!(mk("https://quickwit:7280", false, INDEX).is_none());
        assert!(matches!(
            mk("ftp://quickwit", true, INDEX),
            Some(QuickwitConfigError::UnsupportedScheme)
        ));
        assert!(matches!(
            mk("not a url", true, INDEX),
            Some(QuickwitConfigError::InvalidUrl)
        ));
        for bad in ["ab", "1abc", "a b c", "a/bc", &"a".repeat(256)] {
            assert!(
                matches!(
                    mk("https://q", false, bad),
                    Some(QuickwitConfigError::InvalidIndexId)
                ),
                "{bad}"
            );
        }
        let mut c = cfg("https://q", CommitMode::Force);
        c.client_cert_file = Some(PathBuf::from("/nonexistent/cert.pem"));
        assert!(matches!(
            QuickwitIndex::new(c.clone(), store.clone()).err(),
            Some(QuickwitConfigError::IncompleteClientIdentity)
        ));
        c.client_key_file = Some(PathBuf::from("/nonexistent/key.pem"));
        let err = QuickwitIndex::new(c, store.clone()).err();
        assert!(
            matches!(err, Some(QuickwitConfigError::ReadFile { .. })),
            "{err:?}"
        );
        // An https-only client also refuses an http redirect target or URL at request time.
        let index = QuickwitIndex::new(cfg("https://127.0.0.1:9", CommitMode::Force), store)
            .unwrap_or_else(|e| panic!("{e}"));
        let err = index.flush(&tenant("x")).await;
        assert!(err.is_ok(), "flush needs no request in force mode");
    }

    #[test]
    fn query_strings_are_built_with_quoted_escaped_terms() {
        let plain = |s: &str| IndexTerm::Plain(s.to_owned());
        let q = IndexQuery::And(vec![
            IndexQuery::Term {
                field: Field::Subject,
                term: plain("a\"b\\c) OR tenant_id:*"),
            },
            IndexQuery::Not(Box::new(IndexQuery::Phrase {
                field: Field::Body,
                terms: vec![plain("x"), plain("y")],
            })),
            IndexQuery::Or(vec![IndexQuery::HasAttachment, IndexQuery::After(5)]),
        ]);
        // A term with whitespace can never match (the index splits on it): nothing.
        assert_eq!(compile(&q), Compiled::Nothing);
        let q = IndexQuery::And(vec![
            IndexQuery::Term {
                field: Field::Subject,
                term: plain("a\"b\\c)OR(tenant_id:*"),
            },
            IndexQuery::Not(Box::new(IndexQuery::Phrase {
                field: Field::Body,
                terms: vec![plain("x"), plain("y")],
            })),
            IndexQuery::Or(vec![IndexQuery::HasAttachment, IndexQuery::Before(5)]),
        ]);
        assert_eq!(
            compile(&q),
            Compiled::Query(
                r#"(subject:"a\"b\\c)OR(tenant_id:*" AND (has_attachment:true OR date_ms:<5) AND NOT body:"x y")"#
                    .to_owned()
            )
        );
        assert_eq!(
            compile(&IndexQuery::Not(Box::new(IndexQuery::HasAttachment))),
            Compiled::Query("(* AND NOT has_attachment:true)".to_owned())
        );
        assert_eq!(compile(&IndexQuery::Or(vec![])), Compiled::Nothing);
        assert_eq!(compile(&IndexQuery::And(vec![])), Compiled::All);
        assert_eq!(quote(r#"\""#), r#""\\\"""#);
        assert_eq!(
            id_set("inbox_id", ["a\"", "b"]),
            r#"inbox_id:IN ["a\"" "b"]"#
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn hostile_terms_match_only_themselves() {
        let (index, guard) = fresh().await;
        let t = tenant("hostile");
        let other = tenant("hostile-other");
        let evil = "a\"b\\c)OR(tenant_id:*";
        let doc = |id: &str, term: &str| IndexDoc {
            message_id: id.to_owned(),
            conversation_id: format!("c-{id}"),
            inbox_id: "inbox-a".to_owned(),
            date_ms: 1,
            has_attachment: false,
            key_version: None,
            fields: vec![crate::search::FieldTerms {
                field: Field::Subject,
                tokens: vec![(IndexTerm::Plain(term.to_owned()), 0)],
            }],
        };
        index
            .index(&t, vec![doc("evil", evil), doc("plain", "hello")])
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        index
            .index(&other, vec![doc("secret", "hello")])
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let search = async |tenant: &TenantId, term: &str| {
            let req = SearchRequest {
                query: IndexQuery::Term {
                    field: Field::Subject,
                    term: IndexTerm::Plain(term.to_owned()),
                },
                inboxes: conformance::inboxes(&["inbox-a"]),
                limit: 10,
                after: None,
            };
            index
                .search(tenant, &req)
                .await
                .unwrap_or_else(|e| panic!("{e}"))
                .hits
                .into_iter()
                .map(|h| h.message_id)
                .collect::<Vec<_>>()
        };
        assert_eq!(search(&t, evil).await, ["evil"]);
        assert_eq!(search(&t, "hello").await, ["plain"]);
        assert_eq!(search(&other, evil).await, Vec::<String>::new());
        for hostile in [
            "\") OR (tenant_id:\"hostile-other",
            "*",
            "\\",
            "\"",
            "x\\\"",
        ] {
            assert_eq!(search(&t, hostile).await, Vec::<String>::new(), "{hostile}");
        }
        assert!(guard.double.violations().is_empty());
    }

    /// Phrases over address parts match exactly where tantivy matches them.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn phrases_over_shared_positions_match_like_tantivy() {
        let (qw, _guard) = fresh().await;
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let mut tcfg = TantivyConfig::new(dir.path().join("index"));
        tcfg.commit_interval = Duration::ZERO;
        tcfg.writer_heap_bytes = TantivyConfig::MIN_WRITER_HEAP_BYTES;
        let tv = TantivyIndex::open(tcfg).unwrap_or_else(|e| panic!("{e}"));
        let k = key(25);
        let ix = Indexer::Blind(&k);
        let t = tenant("phrases");
        let mut a = Msg::new(
            "p1",
            "inbox-a",
            1,
            "s",
            "write to ann@mail.example.com today please",
        );
        a.to = "Support <support@helpr.example>, Bob <bob@partner.example>".into();
        let mut b = Msg::new("p2", "inbox-a", 2, "s", "today ann wrote to example.com");
        b.to = "Bob <bob@partner.example>".into();
        for index in [&qw as &dyn SearchIndex, &tv] {
            index
                .index(&t, vec![a.doc(&ix), b.doc(&ix)])
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            index.flush(&t).await.unwrap_or_else(|e| panic!("{e}"));
        }
        for q in [
            "\"to ann@mail.example.com today\"",
            "\"to example.com today\"",
            "\"to ann today\"",
            "\"to mail.example.com today please\"",
            "\"ann today\"",
            "\"to example.com\"",
            "\"ann wrote\"",
            "to:\"support helpr\"",
            "to:\"support bob\"",
            "to:\"helpr example\"",
            "to:\"helpr.example bob\"",
            "to:\"bob partner\"",
            "to:\"bob bob@partner.example\"",
            "\"write to\"",
        ] {
            let want = ids(&tv, &t, &ix, q, &["inbox-a"]).await;
            let got = ids(&qw, &t, &ix, q, &["inbox-a"]).await;
            assert_eq!(got, want, "{q}");
        }
    }

    #[test]
    fn field_values_keep_the_sequence_and_window_each_extra_token() {
        let t = |s: &str, p: u32| (IndexTerm::Plain(s.to_owned()), p);
        let values = field_values(&[
            t("to", 0),
            t("ann@x.com", 1),
            t("ann", 1),
            t("x.com", 1),
            t("today", 2),
            t("today", 4),
        ]);
        assert_eq!(
            values,
            [
                "to ann@x.com today ~ today",
                "to ann today ~ today",
                "to x.com today ~ today"
            ]
        );
        assert!(field_values(&[]).is_empty());
        assert!(field_values(&[t("has space", 0)]).is_empty());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn duplicate_versions_across_page_boundaries_are_shown_once() {
        let (index, guard) = fresh().await;
        let k = key(26);
        let ix = Indexer::Blind(&k);
        let t = tenant("dups");
        let all: Vec<Msg> = (0..30)
            .map(|i| {
                let id = format!("0190f3a2-0000-4000-8000-{i:012}");
                Msg::new(&id, "inbox-a", i / 10, "weekly digest", "digest body")
            })
            .collect();
        // Three versions of every message, committed separately (no delete task has run).
        for _ in 0..3 {
            add(&index, &t, &ix, &all).await;
        }
        assert_eq!(guard.double.stored_docs(INDEX, "dups"), 90);
        let got = ids(&index, &t, &ix, "digest", &["inbox-a"]).await;
        assert_eq!(got.len(), 30);
        let unique: BTreeSet<&String> = got.iter().collect();
        assert_eq!(unique.len(), 30);
        // Superseded versions were handed to Quickwit for deletion.
        assert!(guard.double.delete_tasks(INDEX).len() >= 2);
        let stats = index.stats(&t).await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(stats.documents, 30);
        assert_eq!(stats.deleted_documents, 60);
        assert_eq!(stats.segments, 3);
        guard.double.mature_splits();
        let stats = index.stats(&t).await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((stats.documents, stats.deleted_documents), (30, 0));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn auto_commit_becomes_searchable_at_flush() {
        let (index, _guard) = with_mode(CommitMode::Auto).await;
        let k = key(27);
        let ix = Indexer::Blind(&k);
        let t = tenant("auto");
        index
            .index(&t, msgs().iter().map(|m| m.doc(&ix)).collect())
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            ids(&index, &t, &ix, "quarterly", &all()).await,
            Vec::<String>::new(),
            "searchable before the commit timeout"
        );
        index.flush(&t).await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            ids(&index, &t, &ix, "quarterly", &all()).await,
            ["m3", "m2", "m1"]
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn large_batches_are_split_under_the_ingest_limit() {
        let (index, guard) = fresh().await;
        let t = tenant("big");
        let token = |i: usize| IndexTerm::Plain(format!("{i:0>60}"));
        let docs: Vec<IndexDoc> = (0..12)
            .map(|d| IndexDoc {
                message_id: format!("big-{d}"),
                conversation_id: format!("c-{d}"),
                inbox_id: "inbox-a".into(),
                date_ms: d,
                has_attachment: false,
                key_version: None,
                fields: vec![crate::search::FieldTerms {
                    field: Field::Body,
                    tokens: (0..15_000)
                        .map(|i| (token(i + d as usize), i as u32))
                        .collect(),
                }],
            })
            .collect();
        index
            .index(&t, docs)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let ingests = guard
            .double
            .requests()
            .iter()
            .filter(|r| r.contains("/ingest?commit=force"))
            .count();
        assert!(ingests >= 2, "{ingests} ingest request(s) for about 11 MB");
        let stats = index.stats(&t).await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(stats.documents, 12);
    }
}

/// mTLS against a real TLS server (rustls) that requires a client certificate, serving the
/// double; certificates in `tests/fixtures/quickwit-tls`.
#[cfg(test)]
mod tls_tests {
    use std::net::SocketAddr;

    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};

    use super::*;
    use crate::search::blind::Indexer;
    use crate::search::conformance::{Msg, ids, key, tenant};
    use crate::search::quickwit_double::QuickwitDouble;

    fn fixture(name: &str) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/quickwit-tls")
            .join(name)
    }

    struct TlsListener {
        tcp: tokio::net::TcpListener,
        acceptor: tokio_rustls::TlsAcceptor,
    }

    impl axum::serve::Listener for TlsListener {
        type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
        type Addr = SocketAddr;

        async fn accept(&mut self) -> (Self::Io, Self::Addr) {
            loop {
                let Ok((tcp, addr)) = self.tcp.accept().await else {
                    continue;
                };
                // A client without an acceptable certificate fails here.
                if let Ok(tls) = self.acceptor.accept(tcp).await {
                    return (tls, addr);
                }
            }
        }

        fn local_addr(&self) -> std::io::Result<Self::Addr> {
            self.tcp.local_addr()
        }
    }

    /// The double behind TLS that requires a client certificate signed by `ca.pem`.
    async fn serve_mtls(double: &QuickwitDouble) -> String {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(fixture("ca.pem")).unwrap() {
            roots.add(cert.unwrap()).unwrap();
        }
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            provider.clone(),
        )
        .build()
        .unwrap();
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_file_iter(fixture("server.pem"))
                .unwrap()
                .map(Result::unwrap)
                .collect();
        let key = PrivateKeyDer::from_pem_file(fixture("server.key")).unwrap();
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)
            .unwrap();
        let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = tcp.local_addr().unwrap().port();
        let listener = TlsListener {
            tcp,
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
        };
        let router = double.router();
        tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        format!("https://127.0.0.1:{port}")
    }

    async fn client(url: &str, ca: &str, identity: bool, dir: &std::path::Path) -> QuickwitIndex {
        let store: Arc<dyn Store> = Arc::new(
            crate::store::SqliteStore::connect(&format!(
                "sqlite://{}",
                dir.join(format!("{ca}-{identity}.sqlite")).display()
            ))
            .await
            .unwrap(),
        );
        let cfg = QuickwitConfig {
            url: url.to_owned(),
            commit: CommitMode::Force,
            ca_cert_file: Some(fixture(ca)),
            client_cert_file: identity.then(|| fixture("client.pem")),
            client_key_file: identity.then(|| fixture("client.key")),
            timeout_secs: 10,
            ..QuickwitConfig::default()
        };
        QuickwitIndex::new(cfg, store).unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn mtls_connects_with_the_right_ca_and_certificate_only() {
        let double = QuickwitDouble::default();
        let url = serve_mtls(&double).await;
        let dir = tempfile::tempdir().unwrap();
        let t = tenant("tls");
        let k = key(31);
        let ix = Indexer::Blind(&k);

        let good = client(&url, "ca.pem", true, dir.path()).await;
        good.index(
            &t,
            vec![Msg::new("m1", "inbox-a", 0, "hello", "world").doc(&ix)],
        )
        .await
        .unwrap();
        assert_eq!(ids(&good, &t, &ix, "hello", &["inbox-a"]).await, ["m1"]);

        for (ca, identity) in [("other-ca.pem", true), ("ca.pem", false)] {
            let bad = client(&url, ca, identity, dir.path()).await;
            let err = bad.stats(&t).await.err();
            assert!(
                matches!(err, Some(SearchError::Unavailable(_))),
                "{ca} with client certificate {identity}: {err:?}"
            );
        }
        assert!(double.violations().is_empty());
    }

    #[test]
    fn a_key_that_is_not_pem_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let bad = dir.path().join("bad.key");
        std::fs::write(&bad, "not a key").unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let store: Arc<dyn Store> = rt.block_on(async {
            Arc::new(
                crate::store::SqliteStore::connect(&format!(
                    "sqlite://{}",
                    dir.path().join("s.sqlite").display()
                ))
                .await
                .unwrap(),
            )
        });
        let cfg = QuickwitConfig {
            url: "https://quickwit:7280".into(),
            client_cert_file: Some(fixture("client.pem")),
            client_key_file: Some(bad),
            ..QuickwitConfig::default()
        };
        let err = QuickwitIndex::new(cfg, store).err();
        assert!(
            matches!(err, Some(QuickwitConfigError::InvalidPem { .. })),
            "{err:?}"
        );
        let msg = err.map(|e| e.to_string()).unwrap_or_default();
        assert!(!msg.contains("not a key"), "{msg}");
    }
}
