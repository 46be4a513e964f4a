//! An HTTP double of the Quickwit REST API (`api/v1`) for tests: the endpoints
//! [`super::quickwit::QuickwitIndex`] uses, with the request shapes Quickwit documents.
//!
//! - `POST /api/v1/indexes` validates the index config (version, index id rules, doc mapping
//!   field types and options, tag fields, partition key, settings; unknown keys refused) and
//!   answers 400 for an existing index; `GET`/`DELETE /api/v1/indexes/<id>`.
//! - `POST /api/v1/<id>/ingest?commit=auto|wait_for|force` takes NDJSON (strict doc mapping:
//!   a document with an unknown or mistyped field is rejected and counted), answers
//!   `num_docs_for_processing`, `num_ingested_docs`, `num_rejected_docs`. Each request makes
//!   one split per tenant (the partition key); with `auto` it becomes searchable after the
//!   index's `commit_timeout_secs`.
//! - `POST /api/v1/<id>/search` (JSON body, unknown keys refused) parses and evaluates the
//!   query-language subset the client emits: `field:"text"` (tokenized by the field's
//!   tokenizer: one token is a term, several a phrase over positions, refused on a field
//!   without `record: position`), `field:IN [...]`, `field:<n` / `<=` / `>` / `>=`,
//!   `field:n`, `field:true`, `*`, `AND`, `OR`, `NOT` and parentheses (mixing `AND` and `OR`
//!   at one level without parentheses is refused), `sort_by`, `max_hits` (at most 10,000),
//!   `start_offset`. Hits hold the stored fields only.
//! - `POST /api/v1/<id>/delete-tasks` records a task with the next opstamp; it is applied only
//!   to mature splits, when the test calls [`QuickwitDouble::mature_splits`].
//! - `GET /api/v1/indexes/<id>/splits?split_states=...` lists splits with `delete_opstamp`,
//!   `tags`, `num_docs`, `footer_offsets`.
//!
//! Policy checks (recorded in [`QuickwitDouble::violations`] and answered with 400): every
//! query must start with the tenant filter `tenant_id:"..."`, and a query with a text-field
//! clause must continue with the inbox filter `inbox_id:IN [...]`.
//!
//! Known differences from Quickwit: the query subset above only; no scoring, snippets or
//! aggregations; `start_timestamp`/`end_timestamp` refused (the client does not use them);
//! splits never merge; the YAML form of the index config is not accepted.

// Handlers answer early with a full `Response` as their error value.
#![allow(clippy::result_large_err)]

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Query as QueryParams, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

const MAX_INGEST_BYTES: usize = 10 * 1024 * 1024;
const MAX_SEARCH_BODY_BYTES: usize = 1024 * 1024;
const MAX_HITS: u64 = 10_000;
const TOKENIZERS: [&str; 6] = [
    "raw",
    "default",
    "whitespace",
    "lowercase",
    "en_stem",
    "chinese_compatibility",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Text,
    I64,
    U64,
    Bool,
}

#[derive(Debug, Clone)]
struct FieldSpec {
    kind: Kind,
    array: bool,
    indexed: bool,
    stored: bool,
    fast: bool,
    tokenizer: String,
    positions: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SplitState {
    Staged,
    Published,
}

struct Split {
    id: String,
    state: SplitState,
    visible_at: Instant,
    tenant: String,
    docs: Vec<Value>,
    delete_opstamp: u64,
    mature: bool,
    create_timestamp: i64,
}

struct DeleteTask {
    opstamp: u64,
    query: Query,
    text: String,
    create_timestamp: i64,
}

struct IndexState {
    uid: String,
    config: Value,
    fields: HashMap<String, FieldSpec>,
    commit_timeout: Duration,
    splits: Vec<Split>,
    tasks: Vec<DeleteTask>,
    next_split: u64,
}

impl IndexState {
    fn last_opstamp(&self) -> u64 {
        self.tasks.last().map(|t| t.opstamp).unwrap_or(0)
    }

    fn promote(&mut self) {
        let now = Instant::now();
        for s in &mut self.splits {
            if s.state == SplitState::Staged && s.visible_at <= now {
                s.state = SplitState::Published;
            }
        }
    }
}

#[derive(Default)]
struct DoubleState {
    indexes: HashMap<String, IndexState>,
    violations: Vec<String>,
    requests: Vec<String>,
    queries: Vec<String>,
}

/// The double's state, shared with the test.
#[derive(Clone, Default)]
pub(crate) struct QuickwitDouble {
    state: Arc<Mutex<DoubleState>>,
}

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, axum::Json(json!({ "message": message.into() }))).into_response()
}

fn bad(message: impl Into<String>) -> Response {
    error(StatusCode::BAD_REQUEST, message)
}

fn ok(v: Value) -> Response {
    (StatusCode::OK, axum::Json(v)).into_response()
}

fn content_type_is(headers: &HeaderMap, wanted: &str) -> bool {
    headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or("").trim() == wanted)
        .unwrap_or(false)
}

fn only_keys(
    obj: &serde_json::Map<String, Value>,
    allowed: &[&str],
    what: &str,
) -> Result<(), String> {
    match obj.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(k) => Err(format!("unknown field `{k}` in {what}")),
        None => Ok(()),
    }
}

fn valid_index_id(id: &str) -> bool {
    super::quickwit::valid_index_id(id)
}

fn parse_field_mapping(v: &Value) -> Result<(String, FieldSpec), String> {
    let obj = v.as_object().ok_or("field mapping must be an object")?;
    let name = obj
        .get("name")
        .and_then(Value::as_str)
        .ok_or("field mapping without name")?
        .to_owned();
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        || !name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
    {
        return Err(format!("invalid field name `{name}`"));
    }
    let ty = obj
        .get("type")
        .and_then(Value::as_str)
        .ok_or("field mapping without type")?;
    let (array, base) = match ty.strip_prefix("array<").and_then(|t| t.strip_suffix('>')) {
        Some(inner) => (true, inner),
        None => (false, ty),
    };
    let kind = match base {
        "text" => Kind::Text,
        "i64" => Kind::I64,
        "u64" => Kind::U64,
        "bool" => Kind::Bool,
        other => return Err(format!("unsupported field type `{other}`")),
    };
    let flag = |k: &str, default: bool| -> Result<bool, String> {
        match obj.get(k) {
            None => Ok(default),
            Some(Value::Bool(b)) => Ok(*b),
            Some(_) => Err(format!("`{k}` of `{name}` must be a boolean")),
        }
    };
    let mut spec = FieldSpec {
        kind,
        array,
        indexed: flag("indexed", true)?,
        stored: flag("stored", true)?,
        fast: false,
        tokenizer: "default".to_owned(),
        positions: false,
    };
    match kind {
        Kind::Text => {
            only_keys(
                obj,
                &[
                    "name",
                    "type",
                    "description",
                    "stored",
                    "indexed",
                    "tokenizer",
                    "record",
                    "fieldnorms",
                    "fast",
                ],
                "a text field mapping",
            )?;
            flag("fieldnorms", false)?;
            spec.fast = matches!(obj.get("fast"), Some(Value::Bool(true)));
            if let Some(t) = obj.get("tokenizer") {
                let t = t.as_str().ok_or("tokenizer must be a string")?;
                if !TOKENIZERS.contains(&t) {
                    return Err(format!("unknown tokenizer `{t}`"));
                }
                spec.tokenizer = t.to_owned();
            }
            if let Some(r) = obj.get("record") {
                match r.as_str() {
                    Some("basic") | Some("freq") => {}
                    Some("position") => spec.positions = true,
                    _ => return Err("record must be basic, freq or position".into()),
                }
            }
        }
        _ => {
            only_keys(
                obj,
                &[
                    "name",
                    "type",
                    "description",
                    "stored",
                    "indexed",
                    "fast",
                    "coerce",
                    "output_format",
                ],
                "a numeric or bool field mapping",
            )?;
            spec.fast = flag("fast", false)?;
        }
    }
    Ok((name, spec))
}

fn parse_index_config(v: &Value) -> Result<(String, HashMap<String, FieldSpec>, Duration), String> {
    let obj = v.as_object().ok_or("index config must be an object")?;
    only_keys(
        obj,
        &[
            "version",
            "index_id",
            "index_uri",
            "doc_mapping",
            "indexing_settings",
            "search_settings",
            "retention",
        ],
        "the index config",
    )?;
    match obj.get("version").and_then(Value::as_str) {
        Some("0.7") | Some("0.8") | Some("0.9") => {}
        _ => return Err("missing or unsupported config version".into()),
    }
    let id = obj
        .get("index_id")
        .and_then(Value::as_str)
        .ok_or("missing index_id")?;
    if !valid_index_id(id) {
        return Err(format!("invalid index id `{id}`"));
    }
    let mapping = obj
        .get("doc_mapping")
        .and_then(Value::as_object)
        .ok_or("missing doc_mapping")?;
    only_keys(
        mapping,
        &[
            "field_mappings",
            "tag_fields",
            "partition_key",
            "max_num_partitions",
            "mode",
            "store_source",
            "timestamp_field",
            "index_field_presence",
            "store_document_size",
        ],
        "doc_mapping",
    )?;
    let mut fields = HashMap::new();
    for f in mapping
        .get("field_mappings")
        .and_then(Value::as_array)
        .ok_or("field_mappings must be an array")?
    {
        let (name, spec) = parse_field_mapping(f)?;
        if fields.insert(name.clone(), spec).is_some() {
            return Err(format!("duplicate field `{name}`"));
        }
    }
    if let Some(mode) = mapping.get("mode") {
        match mode.as_str() {
            Some("strict") | Some("lenient") | Some("dynamic") => {}
            _ => return Err("mode must be strict, lenient or dynamic".into()),
        }
    }
    for tag in mapping
        .get("tag_fields")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
    {
        let tag = tag.as_str().ok_or("tag field must be a string")?;
        match fields.get(tag) {
            Some(spec) if spec.indexed && !spec.array => {}
            _ => return Err(format!("tag field `{tag}` must be an indexed single field")),
        }
    }
    if let Some(key) = mapping.get("partition_key") {
        let key = key.as_str().ok_or("partition_key must be a string")?;
        if !fields.contains_key(key) {
            return Err(format!("partition key `{key}` is not a field"));
        }
    }
    let mut commit_timeout = Duration::from_secs(60);
    if let Some(settings) = obj.get("indexing_settings") {
        let settings = settings
            .as_object()
            .ok_or("indexing_settings must be an object")?;
        only_keys(
            settings,
            &["commit_timeout_secs", "split_num_docs_target"],
            "indexing_settings",
        )?;
        if let Some(t) = settings.get("commit_timeout_secs") {
            commit_timeout = Duration::from_secs(t.as_u64().ok_or("commit_timeout_secs")?);
        }
    }
    if let Some(settings) = obj.get("search_settings") {
        let settings = settings
            .as_object()
            .ok_or("search_settings must be an object")?;
        only_keys(settings, &["default_search_fields"], "search_settings")?;
        for f in settings
            .get("default_search_fields")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
        {
            if !f.as_str().is_some_and(|f| fields.contains_key(f)) {
                return Err("unknown default search field".into());
            }
        }
    }
    Ok((id.to_owned(), fields, commit_timeout))
}

/// A document as strict mode accepts it.
fn check_doc(doc: &Value, fields: &HashMap<String, FieldSpec>) -> Result<(), String> {
    let obj = doc.as_object().ok_or("document is not an object")?;
    for (k, v) in obj {
        let spec = fields
            .get(k)
            .ok_or_else(|| format!("unknown field `{k}`"))?;
        let values: Vec<&Value> = match (spec.array, v) {
            (true, Value::Array(items)) => items.iter().collect(),
            (_, v) => vec![v],
        };
        for v in values {
            let fits = match spec.kind {
                Kind::Text => v.is_string(),
                Kind::I64 => v.is_i64(),
                Kind::U64 => v.is_u64(),
                Kind::Bool => v.is_boolean(),
            };
            if !fits {
                return Err(format!("field `{k}` has the wrong type"));
            }
        }
    }
    Ok(())
}

// --- the query language subset ------------------------------------------------------------

#[derive(Debug, Clone, PartialEq)]
enum Query {
    All,
    Term {
        field: String,
        text: String,
    },
    /// `field:prefix*`: a token of the field starts with `prefix`.
    Prefix {
        field: String,
        prefix: String,
    },
    Set {
        field: String,
        values: Vec<String>,
    },
    Range {
        field: String,
        op: &'static str,
        value: i128,
    },
    And(Vec<Query>),
    Or(Vec<Query>),
    Not(Box<Query>),
}

#[derive(Debug, Clone, PartialEq)]
enum Lex {
    Open,
    Close,
    And,
    Or,
    Not,
    Star,
    Clause(Query),
}

fn lex(input: &str) -> Result<Vec<Lex>, String> {
    let chars: Vec<char> = input.chars().collect();
    let mut i = 0;
    let mut out = Vec::new();
    let quoted = |i: &mut usize| -> Result<String, String> {
        // chars[*i] is the opening quote.
        *i += 1;
        let mut s = String::new();
        while *i < chars.len() {
            match chars[*i] {
                '\\' => {
                    *i += 1;
                    let c = *chars.get(*i).ok_or("dangling escape")?;
                    s.push(c);
                }
                '"' => {
                    *i += 1;
                    return Ok(s);
                }
                c => s.push(c),
            }
            *i += 1;
        }
        Err("unterminated quote".into())
    };
    let bare = |i: &mut usize| -> String {
        let mut s = String::new();
        while *i < chars.len() && !chars[*i].is_whitespace() && !"()[]\"".contains(chars[*i]) {
            s.push(chars[*i]);
            // A backslash escapes the next character, whatever it is.
            if chars[*i] == '\\' && *i + 1 < chars.len() {
                *i += 1;
                s.push(chars[*i]);
            }
            *i += 1;
        }
        s
    };
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
            continue;
        }
        match c {
            '(' => {
                out.push(Lex::Open);
                i += 1;
            }
            ')' => {
                out.push(Lex::Close);
                i += 1;
            }
            '*' => {
                out.push(Lex::Star);
                i += 1;
            }
            _ => {
                let word = bare(&mut i);
                match word.as_str() {
                    "AND" => out.push(Lex::And),
                    "OR" => out.push(Lex::Or),
                    "NOT" => out.push(Lex::Not),
                    _ => {
                        let (field, rest) = word
                            .split_once(':')
                            .ok_or_else(|| format!("a clause without a field: `{word}`"))?;
                        let field = field.to_owned();
                        if rest.is_empty() {
                            if chars.get(i) != Some(&'"') {
                                return Err(format!("unsupported clause on `{field}`"));
                            }
                            let text = quoted(&mut i)?;
                            out.push(Lex::Clause(Query::Term { field, text }));
                        } else if rest == "IN" {
                            while i < chars.len() && chars[i] == ' ' {
                                i += 1;
                            }
                            if chars.get(i) != Some(&'[') {
                                return Err("IN without [".into());
                            }
                            i += 1;
                            let mut values = Vec::new();
                            loop {
                                while i < chars.len() && chars[i] == ' ' {
                                    i += 1;
                                }
                                match chars.get(i) {
                                    Some(']') => {
                                        i += 1;
                                        break;
                                    }
                                    Some('"') => values.push(quoted(&mut i)?),
                                    Some(_) => {
                                        let v = bare(&mut i);
                                        if v.is_empty() {
                                            return Err("bad term set".into());
                                        }
                                        values.push(v);
                                    }
                                    None => return Err("unterminated term set".into()),
                                }
                            }
                            out.push(Lex::Clause(Query::Set { field, values }));
                        } else {
                            out.push(Lex::Clause(bare_clause(&field, rest)?));
                        }
                    }
                }
            }
        }
    }
    Ok(out)
}

fn bare_clause(field: &str, value: &str) -> Result<Query, String> {
    let field = field.to_owned();
    if let Some(escaped) = value.strip_suffix('*') {
        // A term prefix: specials must be escaped with a backslash.
        let mut prefix = String::new();
        let mut chars = escaped.chars();
        while let Some(c) = chars.next() {
            match c {
                '\\' => prefix.push(chars.next().ok_or("dangling escape in a prefix")?),
                c if c.is_alphanumeric() => prefix.push(c),
                c => return Err(format!("unescaped `{c}` in a prefix on `{field}`")),
            }
        }
        if prefix.is_empty() {
            return Err(format!("empty prefix on `{field}`"));
        }
        return Ok(Query::Prefix { field, prefix });
    }
    for op in ["<=", ">=", "<", ">"] {
        if let Some(n) = value.strip_prefix(op) {
            let value: i128 = n
                .parse()
                .map_err(|_| format!("bad number in range on `{field}`"))?;
            return Ok(Query::Range { field, op, value });
        }
    }
    if value.is_empty() || value.contains([':', '\\', '{', '}', '^', '~', '!', '+']) {
        return Err(format!(
            "unescaped special character in a term on `{field}`"
        ));
    }
    Ok(Query::Term {
        field,
        text: value.to_owned(),
    })
}

struct Parser {
    lex: Vec<Lex>,
    at: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Lex> {
        self.lex.get(self.at)
    }

    fn sequence(&mut self) -> Result<Query, String> {
        let mut items = vec![self.unary()?];
        let mut saw_and = false;
        let mut saw_or = false;
        loop {
            match self.peek() {
                None | Some(Lex::Close) => break,
                Some(Lex::And) => {
                    self.at += 1;
                    saw_and = true;
                }
                Some(Lex::Or) => {
                    self.at += 1;
                    saw_or = true;
                }
                // Implicit AND.
                Some(_) => saw_and = true,
            }
            items.push(self.unary()?);
        }
        if saw_and && saw_or {
            return Err("AND and OR mixed without parentheses".into());
        }
        Ok(match (items.len(), saw_or) {
            (1, _) => items.pop().unwrap_or(Query::All),
            (_, true) => Query::Or(items),
            (_, false) => Query::And(items),
        })
    }

    fn unary(&mut self) -> Result<Query, String> {
        let next = self.peek().cloned();
        self.at += 1;
        match next {
            Some(Lex::Not) => Ok(Query::Not(Box::new(self.unary()?))),
            Some(Lex::Open) => {
                let q = self.sequence()?;
                if self.peek() != Some(&Lex::Close) {
                    return Err("missing )".into());
                }
                self.at += 1;
                Ok(q)
            }
            Some(Lex::Star) => Ok(Query::All),
            Some(Lex::Clause(q)) => Ok(q),
            _ => Err("unexpected token".into()),
        }
    }
}

fn parse_query(input: &str) -> Result<Query, String> {
    let mut p = Parser {
        lex: lex(input)?,
        at: 0,
    };
    if p.lex.is_empty() {
        return Err("empty query".into());
    }
    let q = p.sequence()?;
    if p.at != p.lex.len() {
        return Err("trailing tokens".into());
    }
    Ok(q)
}

fn check_fields(
    q: &Query,
    fields: &HashMap<String, FieldSpec>,
    text_used: &mut bool,
) -> Result<(), String> {
    match q {
        Query::All => Ok(()),
        Query::Term { field, text } => {
            let spec = fields
                .get(field)
                .ok_or_else(|| format!("unknown field `{field}`"))?;
            if !spec.indexed {
                return Err(format!("field `{field}` is not indexed"));
            }
            if spec.kind == Kind::Text {
                if spec.tokenizer != "raw" {
                    *text_used = true;
                }
                if tokenize(&spec.tokenizer, text).len() > 1 && !spec.positions {
                    return Err(format!("field `{field}` has no positions for a phrase"));
                }
            }
            Ok(())
        }
        Query::Prefix { field, .. } => match fields.get(field) {
            Some(spec) if spec.indexed && spec.kind == Kind::Text => {
                if spec.tokenizer != "raw" {
                    *text_used = true;
                }
                Ok(())
            }
            _ => Err(format!(
                "prefix on unknown, unindexed or non-text field `{field}`"
            )),
        },
        Query::Set { field, .. } => match fields.get(field) {
            Some(spec) if spec.indexed => Ok(()),
            _ => Err(format!("term set on unknown or unindexed field `{field}`")),
        },
        Query::Range { field, .. } => match fields.get(field) {
            Some(spec) if spec.kind == Kind::I64 || spec.kind == Kind::U64 => Ok(()),
            _ => Err(format!("range on a non-numeric field `{field}`")),
        },
        Query::And(c) | Query::Or(c) => c
            .iter()
            .try_for_each(|c| check_fields(c, fields, text_used)),
        Query::Not(q) => check_fields(q, fields, text_used),
    }
}

fn tokenize(tokenizer: &str, text: &str) -> Vec<String> {
    match tokenizer {
        "raw" => vec![text.to_owned()],
        "lowercase" => vec![text.to_lowercase()],
        "whitespace" => text
            .split(|c: char| c.is_ascii_whitespace())
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect(),
        _ => text
            .split(|c: char| !c.is_alphanumeric())
            .filter(|s| !s.is_empty())
            .map(str::to_lowercase)
            .collect(),
    }
    .into_iter()
    .filter(|t| t.len() < 255)
    .collect()
}

fn values_of<'a>(doc: &'a Value, field: &str) -> Vec<&'a Value> {
    match doc.get(field) {
        None => Vec::new(),
        Some(Value::Array(items)) => items.iter().collect(),
        Some(v) => vec![v],
    }
}

fn eval(q: &Query, doc: &Value, fields: &HashMap<String, FieldSpec>) -> bool {
    match q {
        Query::All => true,
        Query::And(c) => c.iter().all(|c| eval(c, doc, fields)),
        Query::Or(c) => c.iter().any(|c| eval(c, doc, fields)),
        Query::Not(q) => !eval(q, doc, fields),
        Query::Term { field, text } => {
            let Some(spec) = fields.get(field) else {
                return false;
            };
            let values = values_of(doc, field);
            match spec.kind {
                Kind::Text => {
                    let wanted = tokenize(&spec.tokenizer, text);
                    if wanted.is_empty() {
                        return false;
                    }
                    values.iter().filter_map(|v| v.as_str()).any(|v| {
                        let tokens = tokenize(&spec.tokenizer, v);
                        tokens.windows(wanted.len()).any(|w| w == wanted.as_slice())
                    })
                }
                Kind::Bool => values
                    .iter()
                    .any(|v| v.as_bool().map(|b| b.to_string()).as_deref() == Some(text)),
                Kind::I64 | Kind::U64 => {
                    let Ok(n) = text.parse::<i128>() else {
                        return false;
                    };
                    values.iter().any(|v| number(v) == Some(n))
                }
            }
        }
        Query::Prefix { field, prefix } => {
            let Some(spec) = fields.get(field) else {
                return false;
            };
            values_of(doc, field)
                .iter()
                .filter_map(|v| v.as_str())
                .any(|v| {
                    tokenize(&spec.tokenizer, v)
                        .iter()
                        .any(|t| t.starts_with(prefix.as_str()))
                })
        }
        Query::Set { field, values } => {
            let Some(spec) = fields.get(field) else {
                return false;
            };
            values_of(doc, field).iter().any(|v| match spec.kind {
                Kind::Text => v.as_str().is_some_and(|s| {
                    let tokens = tokenize(&spec.tokenizer, s);
                    values.iter().any(|want| tokens.contains(want))
                }),
                _ => number(v).is_some_and(|n| values.iter().any(|w| w.parse::<i128>() == Ok(n))),
            })
        }
        Query::Range { field, op, value } => values_of(doc, field).iter().any(|v| {
            number(v).is_some_and(|n| match *op {
                "<" => n < *value,
                "<=" => n <= *value,
                ">" => n > *value,
                _ => n >= *value,
            })
        }),
    }
}

fn number(v: &Value) -> Option<i128> {
    v.as_i64()
        .map(i128::from)
        .or_else(|| v.as_u64().map(i128::from))
}

/// The client's policy: the tenant filter first; the inbox filter second in a query with a
/// text-field clause.
fn check_policy(q: &Query, text_used: bool) -> Result<(), String> {
    if let Query::Term { field, .. } = q
        && field == "tenant_id"
        && !text_used
    {
        return Ok(());
    }
    let Query::And(items) = q else {
        return Err("a query that is not a conjunction starting with the tenant filter".into());
    };
    match items.first() {
        Some(Query::Term { field, .. }) if field == "tenant_id" => {}
        _ => return Err("a query without the tenant filter first".into()),
    }
    if text_used {
        match items.get(1) {
            Some(Query::Set { field, values }) if field == "inbox_id" && !values.is_empty() => {}
            _ => return Err("a text search without the inbox filter second".into()),
        }
    }
    Ok(())
}

impl QuickwitDouble {
    fn lock(&self) -> MutexGuard<'_, DoubleState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Policy violations seen so far (each also answered with 400).
    pub(crate) fn violations(&self) -> Vec<String> {
        self.lock().violations.clone()
    }

    /// Every request as `METHOD /path?query`.
    pub(crate) fn requests(&self) -> Vec<String> {
        self.lock().requests.clone()
    }

    /// The query strings of every search and delete task received.
    pub(crate) fn queries(&self) -> Vec<String> {
        self.lock().queries.clone()
    }

    /// Delete tasks recorded for an index: (opstamp, query).
    pub(crate) fn delete_tasks(&self, index: &str) -> Vec<(u64, String)> {
        self.task_list(index)
            .into_iter()
            .map(|(o, q, _)| (o, q))
            .collect()
    }

    fn task_list(&self, index: &str) -> Vec<(u64, String, i64)> {
        self.lock()
            .indexes
            .get(index)
            .map(|i| {
                i.tasks
                    .iter()
                    .map(|t| (t.opstamp, t.text.clone(), t.create_timestamp))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Documents stored (of any visibility) for a tenant.
    pub(crate) fn stored_docs(&self, index: &str, tenant: &str) -> usize {
        self.lock()
            .indexes
            .get(index)
            .map(|i| {
                i.splits
                    .iter()
                    .filter(|s| s.tenant == tenant)
                    .map(|s| s.docs.len())
                    .sum()
            })
            .unwrap_or(0)
    }

    /// Marks every published split mature and lets the janitor apply the pending delete
    /// tasks to them, as Quickwit does hours after the tasks were created.
    pub(crate) fn mature_splits(&self) {
        let mut state = self.lock();
        for index in state.indexes.values_mut() {
            index.promote();
            let last = index.last_opstamp();
            let fields = index.fields.clone();
            let tasks: Vec<(u64, Query)> = index
                .tasks
                .iter()
                .map(|t| (t.opstamp, t.query.clone()))
                .collect();
            for split in &mut index.splits {
                if split.state != SplitState::Published {
                    continue;
                }
                split.mature = true;
                for (opstamp, q) in &tasks {
                    if *opstamp > split.delete_opstamp {
                        split.docs.retain(|d| !eval(q, d, &fields));
                    }
                }
                split.delete_opstamp = last;
            }
            index.splits.retain(|s| !(s.mature && s.docs.is_empty()));
        }
    }

    /// The REST API as an axum router.
    pub(crate) fn router(&self) -> Router {
        Router::new()
            .fallback(handle)
            .layer(axum::extract::DefaultBodyLimit::max(2 * MAX_INGEST_BYTES))
            .with_state(self.clone())
    }

    /// Serves the router on a free local port; answers the base URL (`http://...`).
    pub(crate) async fn start(&self) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("bind: {e}"));
        let addr = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("addr: {e}"));
        let router = self.router();
        tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        format!("http://{addr}")
    }

    fn violation(&self, what: String) -> Response {
        self.lock().violations.push(what.clone());
        bad(what)
    }
}

async fn handle(
    State(double): State<QuickwitDouble>,
    method: Method,
    uri: Uri,
    QueryParams(params): QueryParams<Vec<(String, String)>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    double.lock().requests.push(format!(
        "{method} {}",
        uri.path_and_query().map(|p| p.as_str()).unwrap_or("")
    ));
    let path: Vec<&str> = uri.path().trim_start_matches('/').split('/').collect();
    match (method.clone(), path.as_slice()) {
        (Method::POST, ["api", "v1", "indexes"]) => create_index(&double, &headers, &params, &body),
        (Method::GET, ["api", "v1", "indexes", id]) => describe_index(&double, id),
        (Method::DELETE, ["api", "v1", "indexes", id]) => delete_index(&double, id),
        (Method::GET, ["api", "v1", "indexes", id, "splits"]) => list_splits(&double, id, &params),
        (Method::POST, ["api", "v1", id, "ingest"]) => {
            ingest(&double, id, &headers, &params, &body)
        }
        (Method::POST, ["api", "v1", id, "search"]) => {
            search(&double, id, &headers, &params, &body)
        }
        (Method::POST, ["api", "v1", id, "delete-tasks"]) => {
            create_delete_task(&double, id, &headers, &params, &body)
        }
        (Method::GET, ["api", "v1", id, "delete-tasks"]) => {
            let tasks = double.task_list(id);
            ok(json!(
                tasks
                    .iter()
                    .map(|(o, q, at)| json!({"create_timestamp": at, "opstamp": o,
                                         "delete_query": {"query_ast": q}}))
                    .collect::<Vec<_>>()
            ))
        }
        _ => {
            let what = format!("undocumented endpoint {method} {}", uri.path());
            double.violation(what)
        }
    }
}

fn no_params(
    double: &QuickwitDouble,
    params: &[(String, String)],
    allowed: &[&str],
) -> Result<(), Response> {
    match params.iter().find(|(k, _)| !allowed.contains(&k.as_str())) {
        Some((k, _)) => Err(double.violation(format!("unknown query parameter `{k}`"))),
        None => Ok(()),
    }
}

fn json_body(
    double: &QuickwitDouble,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<Value, Response> {
    if !content_type_is(headers, "application/json") {
        return Err(double.violation("a JSON body without content-type application/json".into()));
    }
    serde_json::from_slice(body).map_err(|_| bad("invalid JSON"))
}

fn create_index(
    double: &QuickwitDouble,
    headers: &HeaderMap,
    params: &[(String, String)],
    body: &Bytes,
) -> Response {
    if let Err(r) = no_params(double, params, &[]) {
        return r;
    }
    let config = match json_body(double, headers, body) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let (id, fields, commit_timeout) = match parse_index_config(&config) {
        Ok(parsed) => parsed,
        Err(e) => return double.violation(format!("invalid index config: {e}")),
    };
    let mut state = double.lock();
    if state.indexes.contains_key(&id) {
        return bad(format!("index `{id}` already exists"));
    }
    let uid = format!("{id}:01{:024}", state.indexes.len());
    state.indexes.insert(
        id,
        IndexState {
            uid: uid.clone(),
            config: config.clone(),
            fields,
            commit_timeout,
            splits: Vec::new(),
            tasks: Vec::new(),
            next_split: 0,
        },
    );
    ok(
        json!({"version": "0.8", "index_uid": uid, "index_config": config,
              "checkpoint": {}, "create_timestamp": now_secs(), "sources": []}),
    )
}

fn describe_index(double: &QuickwitDouble, id: &str) -> Response {
    let state = double.lock();
    match state.indexes.get(id) {
        Some(index) => ok(json!({"version": "0.8", "index_uid": index.uid,
                                 "index_config": index.config, "checkpoint": {},
                                 "create_timestamp": 0, "sources": []})),
        None => error(StatusCode::NOT_FOUND, format!("index `{id}` not found")),
    }
}

fn delete_index(double: &QuickwitDouble, id: &str) -> Response {
    match double.lock().indexes.remove(id) {
        Some(_) => ok(json!([])),
        None => error(StatusCode::NOT_FOUND, format!("index `{id}` not found")),
    }
}

fn ingest(
    double: &QuickwitDouble,
    id: &str,
    headers: &HeaderMap,
    params: &[(String, String)],
    body: &Bytes,
) -> Response {
    if let Err(r) = no_params(double, params, &["commit", "detailed_response"]) {
        return r;
    }
    let commit = params
        .iter()
        .find(|(k, _)| k == "commit")
        .map(|(_, v)| v.as_str())
        .unwrap_or("auto");
    if !["auto", "wait_for", "force"].contains(&commit) {
        return double.violation(format!(
            "commit must be auto, wait_for or force, not `{commit}`"
        ));
    }
    if !content_type_is(headers, "application/x-ndjson") {
        return double.violation("ingest without content-type application/x-ndjson".into());
    }
    if body.len() > MAX_INGEST_BYTES {
        return error(StatusCode::PAYLOAD_TOO_LARGE, "payload too large");
    }
    let Ok(text) = std::str::from_utf8(body) else {
        return bad("body is not UTF-8");
    };
    let mut state = double.lock();
    let Some(index) = state.indexes.get_mut(id) else {
        return error(StatusCode::NOT_FOUND, format!("index `{id}` not found"));
    };
    let mut by_tenant: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    let mut lines = 0u64;
    let mut rejected = 0u64;
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        lines += 1;
        let doc: Value = match serde_json::from_str(line) {
            Ok(d) => d,
            Err(_) => {
                rejected += 1;
                continue;
            }
        };
        if check_doc(&doc, &index.fields).is_err() {
            rejected += 1;
            continue;
        }
        let tenant = doc
            .get("tenant_id")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned();
        by_tenant.entry(tenant).or_default().push(doc);
    }
    let now = Instant::now();
    let visible_at = if commit == "auto" {
        now + index.commit_timeout
    } else {
        now
    };
    let ingested: u64 = by_tenant.values().map(|d| d.len() as u64).sum();
    let last = index.last_opstamp();
    for (tenant, docs) in by_tenant {
        index.next_split += 1;
        let split = Split {
            id: format!("split-{:08}", index.next_split),
            state: if commit == "auto" {
                SplitState::Staged
            } else {
                SplitState::Published
            },
            visible_at,
            tenant,
            docs,
            delete_opstamp: last,
            mature: false,
            create_timestamp: now_secs(),
        };
        index.splits.push(split);
    }
    ok(
        json!({"num_docs_for_processing": lines, "num_ingested_docs": ingested,
              "num_rejected_docs": rejected}),
    )
}

fn search(
    double: &QuickwitDouble,
    id: &str,
    headers: &HeaderMap,
    params: &[(String, String)],
    body: &Bytes,
) -> Response {
    if let Err(r) = no_params(double, params, &[]) {
        return r;
    }
    if body.len() > MAX_SEARCH_BODY_BYTES {
        return error(StatusCode::PAYLOAD_TOO_LARGE, "payload too large");
    }
    let request = match json_body(double, headers, body) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let Some(obj) = request.as_object() else {
        return bad("search body must be an object");
    };
    if let Err(e) = only_keys(
        obj,
        &[
            "query",
            "max_hits",
            "start_offset",
            "sort_by",
            "search_field",
            "snippet_fields",
            "format",
            "count_all",
        ],
        "the search request",
    ) {
        return double.violation(e);
    }
    let Some(text) = obj.get("query").and_then(Value::as_str) else {
        return double.violation("search without query".into());
    };
    double.lock().queries.push(text.to_owned());
    let max_hits = obj.get("max_hits").and_then(Value::as_u64).unwrap_or(20);
    let start_offset = obj.get("start_offset").and_then(Value::as_u64).unwrap_or(0);
    if max_hits > MAX_HITS {
        return bad("max_hits must be at most 10000");
    }
    let mut state = double.lock();
    let Some(index) = state.indexes.get_mut(id) else {
        return error(StatusCode::NOT_FOUND, format!("index `{id}` not found"));
    };
    index.promote();
    let query = match parse_query(text) {
        Ok(q) => q,
        Err(e) => {
            drop(state);
            return double.violation(format!("query does not parse: {e}"));
        }
    };
    let mut text_used = false;
    if let Err(e) = check_fields(&query, &index.fields, &mut text_used) {
        drop(state);
        return double.violation(format!("invalid query: {e}"));
    }
    if let Err(e) = check_policy(&query, text_used) {
        drop(state);
        return double.violation(e);
    }
    let mut sort: Vec<(String, bool)> = Vec::new();
    if let Some(by) = obj.get("sort_by") {
        let Some(by) = by.as_str() else {
            drop(state);
            return double.violation("sort_by must be a string".into());
        };
        for f in by.split(',').filter(|f| !f.is_empty()) {
            let (name, desc) = match (f.strip_prefix('-'), f.strip_prefix('+')) {
                (Some(n), _) => (n, true),
                (_, Some(n)) => (n, false),
                _ => (f, false),
            };
            if !index.fields.get(name).is_some_and(|s| s.fast) {
                drop(state);
                return double.violation(format!("sort on `{name}`, not a fast field"));
            }
            sort.push((name.to_owned(), desc));
        }
        if sort.len() > 2 {
            drop(state);
            return double.violation("sort on more than two fields".into());
        }
    }
    let mut matched: Vec<&Value> = index
        .splits
        .iter()
        .filter(|s| s.state == SplitState::Published)
        .flat_map(|s| s.docs.iter())
        .filter(|d| eval(&query, d, &index.fields))
        .collect();
    matched.sort_by(|a, b| {
        for (field, desc) in &sort {
            let x = a.get(field).and_then(number);
            let y = b.get(field).and_then(number);
            let o = if *desc { y.cmp(&x) } else { x.cmp(&y) };
            if o != std::cmp::Ordering::Equal {
                return o;
            }
        }
        std::cmp::Ordering::Equal
    });
    let num_hits = matched.len();
    let hits: Vec<Value> = matched
        .into_iter()
        .skip(start_offset as usize)
        .take(max_hits as usize)
        .map(|d| {
            let mut hit = serde_json::Map::new();
            if let Some(obj) = d.as_object() {
                for (k, v) in obj {
                    if index.fields.get(k).is_some_and(|s| s.stored) {
                        hit.insert(k.clone(), v.clone());
                    }
                }
            }
            Value::Object(hit)
        })
        .collect();
    ok(json!({"hits": hits, "num_hits": num_hits, "elapsed_time_micros": 1, "errors": []}))
}

fn create_delete_task(
    double: &QuickwitDouble,
    id: &str,
    headers: &HeaderMap,
    params: &[(String, String)],
    body: &Bytes,
) -> Response {
    if let Err(r) = no_params(double, params, &[]) {
        return r;
    }
    let request = match json_body(double, headers, body) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let Some(obj) = request.as_object() else {
        return bad("delete query must be an object");
    };
    if let Err(e) = only_keys(
        obj,
        &["query", "search_field", "start_timestamp", "end_timestamp"],
        "the delete query",
    ) {
        return double.violation(e);
    }
    let Some(text) = obj.get("query").and_then(Value::as_str) else {
        return double.violation("delete task without query".into());
    };
    double.lock().queries.push(text.to_owned());
    let query = match parse_query(text) {
        Ok(q) => q,
        Err(e) => return double.violation(format!("delete query does not parse: {e}")),
    };
    let mut state = double.lock();
    let Some(index) = state.indexes.get_mut(id) else {
        return error(StatusCode::NOT_FOUND, format!("index `{id}` not found"));
    };
    let mut text_used = false;
    let checked = check_fields(&query, &index.fields, &mut text_used)
        .and_then(|_| check_policy(&query, text_used));
    if let Err(e) = checked {
        drop(state);
        return double.violation(format!("invalid delete query: {e}"));
    }
    let opstamp = index.last_opstamp() + 1;
    let uid = index.uid.clone();
    let create_timestamp = now_secs();
    index.tasks.push(DeleteTask {
        opstamp,
        query,
        text: text.to_owned(),
        create_timestamp,
    });
    ok(
        json!({"create_timestamp": create_timestamp, "opstamp": opstamp,
              "delete_query": {"index_uid": uid, "query_ast": text,
                               "start_timestamp": null, "end_timestamp": null}}),
    )
}

fn list_splits(double: &QuickwitDouble, id: &str, params: &[(String, String)]) -> Response {
    if let Err(r) = no_params(
        double,
        params,
        &[
            "offset",
            "limit",
            "split_states",
            "start_timestamp",
            "end_timestamp",
            "end_create_timestamp",
        ],
    ) {
        return r;
    }
    let mut states: Vec<SplitState> = Vec::new();
    if let Some((_, v)) = params.iter().find(|(k, _)| k == "split_states") {
        for s in v.split(',') {
            match s {
                "Staged" => states.push(SplitState::Staged),
                "Published" => states.push(SplitState::Published),
                "MarkedForDeletion" => {}
                other => return double.violation(format!("unknown split state `{other}`")),
            }
        }
    }
    let mut state = double.lock();
    let Some(index) = state.indexes.get_mut(id) else {
        return error(StatusCode::NOT_FOUND, format!("index `{id}` not found"));
    };
    index.promote();
    let splits: Vec<Value> = index
        .splits
        .iter()
        .filter(|s| states.is_empty() || states.contains(&s.state))
        .map(|s| {
            let size: u64 = s.docs.iter().map(|d| d.to_string().len() as u64).sum();
            json!({
                "version": "0.8",
                "split_state": match s.state { SplitState::Staged => "Staged", SplitState::Published => "Published" },
                "update_timestamp": s.create_timestamp,
                "publish_timestamp": s.create_timestamp,
                "split_id": s.id,
                "index_uid": index.uid,
                "partition_id": 0,
                "source_id": "_ingest-api-source",
                "node_id": "double",
                "num_docs": s.docs.len(),
                "uncompressed_docs_size_in_bytes": size,
                "time_range": null,
                "create_timestamp": s.create_timestamp,
                "maturity": if s.mature { json!({"type": "mature"}) }
                            else { json!({"type": "immature", "maturation_period_millis": 172_800_000u64}) },
                "tags": [format!("tenant_id:{}", s.tenant)],
                "footer_offsets": {"start": size, "end": size + 1024},
                "delete_opstamp": s.delete_opstamp,
                "num_merge_ops": 0
            })
        })
        .collect();
    ok(json!({"offset": 0, "size": splits.len(), "splits": splits}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_query_subset_parses_and_refuses_ambiguity() {
        let q =
            parse_query(r#"tenant_id:"a" AND inbox_id:IN ["x" "y\"z"] AND (b:"t" OR NOT c:<=5)"#)
                .unwrap();
        let Query::And(items) = q else {
            panic!("not an and")
        };
        assert_eq!(items.len(), 3);
        assert_eq!(
            items[1],
            Query::Set {
                field: "inbox_id".into(),
                values: vec!["x".into(), "y\"z".into()]
            }
        );
        assert!(parse_query(r#"a:"x" AND b:"y" OR c:"z""#).is_err());
        assert!(parse_query(r#"a:"x"#).is_err());
        assert!(parse_query("a:x:y").is_err());
        assert!(parse_query("(a:1").is_err());
    }
}
