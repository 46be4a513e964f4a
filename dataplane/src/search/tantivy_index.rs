//! The embedded search backend: one tantivy index per tenant under `root/<tenant id>/`.
//!
//! Schema: `message_id`, `conversation_id`, `inbox_id` (raw strings, indexed for filters and
//! deletes, stored so a hit can name its message), `date_ms` (i64, fast + indexed + stored),
//! `seq` (u64 tie-breaker, fast + stored), `has_attachment` (indexed), `key_version`
//! (indexed + stored: which index-key version blinded the terms) and one text field per
//! [`Field`], indexed with positions and never stored. The caller hands in terms (blind
//! tokens by default) with their positions; the original text is not given to tantivy at all,
//! so no file of the index can hold it.
//!
//! # How terms reach tantivy
//!
//! A field's terms are handed to tantivy as one string, the *term list*, that the
//! [`TERMS_TOKENIZER`] splits back into the same terms and positions without copying or
//! allocating per term: each term is preceded by one separator byte, `0x01` (the next position)
//! or `0x02` (the previous term's position: the parts of an address), and terms are sorted by
//! position. This replaces tantivy's `PreTokenizedString`, which tantivy serializes to JSON,
//! parses back and clones for every document (most of the indexing time for 20 KiB messages).
//! Terms that cannot be written that way (a term containing a separator byte or empty, a gap
//! in the positions) are handed in as a `PreTokenizedString`, which indexes the same terms at
//! the same positions. The terms in the index are the same either way: the base64url form
//! of each blind token, or the normalized token in plaintext mode.
//!
//! Indexes created before the term list (text fields with tantivy's `raw` tokenizer) are
//! opened as they are and written through the `PreTokenizedString` path; their terms are the
//! same, so nothing has to be rebuilt. Any other schema is refused with an error naming the
//! remedy (drop the tenant's index and reindex).
//!
//! # Queries
//!
//! The inbox restriction is a clause of the index query ([`InboxFilter`]: the documents
//! whose `inbox_id` term is one of the request's inboxes, read from the inverted index once
//! per segment and search). It is required at the top of every query, and also inside every
//! disjunction that is not negated (an unfielded term or phrase is a disjunction over the
//! text fields): tantivy
//! evaluates a disjunction window by window over all its documents, so without the filter
//! inside, a phrase over common words would check the positions of every document that has
//! both words instead of only those in the caller's inboxes.
//!
//! Visibility: additions become searchable at the next commit: at once when the commit
//! interval is zero, otherwise within the interval (a background task commits dirty
//! tenants) or at [`SearchIndex::flush`]. Deletes commit and reload before they return. The
//! reader reloads manually after each commit, so what a search sees is deterministic.
//!
//! Several processes may open one data directory: tantivy's writer lock lets one of them
//! write, and this backend records who (`writer.holder`: pid and program). A process that
//! cannot take the lock can still search (it reloads the reader before each search to see
//! the holder's commits); a write it attempts fails with [`SearchError::Locked`] naming the
//! holder.

use std::collections::HashMap;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use tantivy::collector::TopDocs;
use tantivy::directory::MmapDirectory;
use tantivy::directory::error::LockError;
use tantivy::index::SegmentId;
use tantivy::query::{
    AllQuery, AllScorer, BitSetDocSet, BooleanQuery, ConstScorer, DfaWrapper, EmptyQuery,
    EmptyScorer, EnableScoring, Explanation, FuzzyTermQuery, Occur, PhraseQuery, Query as TQuery,
    RangeQuery, Scorer, TermQuery, Weight,
};
use tantivy::schema::{
    FAST, Field as TField, INDEXED, IndexRecordOption, STORED, STRING, Schema, TextFieldIndexing,
    TextOptions, Value,
};
use tantivy::tokenizer::{
    PreTokenizedString, TextAnalyzer, Token as TToken, TokenStream, Tokenizer,
};
use tantivy::{
    BitSet, DocAddress, DocId, DocSet, Index, IndexReader, IndexWriter, ReloadPolicy, Score,
    SegmentReader, TERMINATED, TantivyDocument, TantivyError, Term,
};

use super::blind::{BLIND_TOKEN_STR_LEN, Field, IndexTerm};
use super::index::{
    DeleteScope, IndexDoc, IndexStats, PATTERN_TOO_BROAD, SearchError, SearchHit, SearchIndex,
    SearchPage, SearchRequest, validate_request,
};
use super::query::IndexQuery;
use crate::ids::TenantId;
use crate::metrics::Counter;

static DOCS_INDEXED: Counter = Counter::new(
    "helpr_search_documents_indexed_total",
    r#"backend="tantivy""#,
    "Documents added to (or replaced in) a search index.",
);
static DELETES: Counter = Counter::new(
    "helpr_search_deletes_total",
    r#"backend="tantivy""#,
    "Delete calls applied to a search index.",
);
static SEARCHES: Counter = Counter::new(
    "helpr_search_queries_total",
    r#"backend="tantivy""#,
    "Searches answered by a search index.",
);

/// Settings of the tantivy backend.
#[derive(Debug, Clone)]
pub struct TantivyConfig {
    /// The directory holding one index directory per tenant.
    pub root: PathBuf,
    /// Memory budget of each tenant's writer (tantivy needs at least 15 MB).
    pub writer_heap_bytes: usize,
    /// Longest time between indexing and searchable; zero commits on every call.
    pub commit_interval: Duration,
}

impl TantivyConfig {
    pub const DEFAULT_WRITER_HEAP_BYTES: usize = 64 * 1024 * 1024;
    pub const MIN_WRITER_HEAP_BYTES: usize = 15_000_000;
    pub const DEFAULT_COMMIT_INTERVAL: Duration = Duration::from_secs(1);

    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
            writer_heap_bytes: Self::DEFAULT_WRITER_HEAP_BYTES,
            commit_interval: Self::DEFAULT_COMMIT_INTERVAL,
        }
    }
}

const HOLDER_FILE: &str = "writer.holder";
/// Most terms of one segment a prefix or fuzzy word may match (see `Pattern`).
pub const MAX_PATTERN_TERMS: usize = 20_000;
/// Tries of a compaction whose segments a background merge holds.
const COMPACT_ATTEMPTS: u32 = 8;

#[derive(Clone, Copy)]
struct Fields {
    message_id: TField,
    conversation_id: TField,
    inbox_id: TField,
    date_ms: TField,
    seq: TField,
    has_attachment: TField,
    key_version: TField,
    text: [TField; Field::ALL.len()],
}

impl Fields {
    fn text(&self, field: Field) -> TField {
        let at = Field::ALL.iter().position(|f| *f == field).unwrap_or(0);
        self.text[at]
    }
}

/// The tokenizer of the text fields: splits a term list (see the module docs).
pub const TERMS_TOKENIZER: &str = "helpr_terms";
/// The text fields' tokenizer of indexes created before the term list.
const LEGACY_TOKENIZER: &str = "raw";
/// Term-list separator: the term is at the next position.
const NEXT_POSITION: u8 = 0x01;
/// Term-list separator: the term is at the previous term's position.
const SAME_POSITION: u8 = 0x02;

fn schema() -> (Schema, Fields) {
    schema_with_tokenizer(TERMS_TOKENIZER)
}

fn schema_with_tokenizer(tokenizer: &str) -> (Schema, Fields) {
    let mut b = Schema::builder();
    let message_id = b.add_text_field("message_id", STRING | STORED);
    let conversation_id = b.add_text_field("conversation_id", STRING | STORED);
    let inbox_id = b.add_text_field("inbox_id", STRING | STORED);
    let date_ms = b.add_i64_field("date_ms", FAST | INDEXED | STORED);
    let seq = b.add_u64_field("seq", FAST | STORED);
    let has_attachment = b.add_bool_field("has_attachment", INDEXED);
    let key_version = b.add_u64_field("key_version", INDEXED | STORED);
    let terms = TextOptions::default().set_indexing_options(
        TextFieldIndexing::default()
            .set_tokenizer(tokenizer)
            .set_index_option(IndexRecordOption::WithFreqsAndPositions),
    );
    let text = Field::ALL.map(|f| b.add_text_field(f.name(), terms.clone()));
    (
        b.build(),
        Fields {
            message_id,
            conversation_id,
            inbox_id,
            date_ms,
            seq,
            has_attachment,
            key_version,
            text,
        },
    )
}

fn backend_err(e: TantivyError) -> SearchError {
    match e {
        TantivyError::IoError(_) => SearchError::Unavailable(e.to_string()),
        other => SearchError::Backend(other.to_string()),
    }
}

/// One tenant's open index.
struct TenantIndex {
    tenant: TenantId,
    dir: PathBuf,
    index: Index,
    reader: IndexReader,
    fields: Fields,
    /// Created before the term list: text fields take `PreTokenizedString`s only.
    legacy: bool,
    writer_heap_bytes: usize,
    /// Taken on the first write; `None` until then (a reader-only process never takes it).
    writer: Mutex<Option<IndexWriter>>,
    /// Added documents not committed yet.
    dirty: AtomicBool,
}

impl TenantIndex {
    fn open(cfg: &TantivyConfig, tenant: &TenantId) -> Result<Self, SearchError> {
        let dir = cfg.root.join(tenant.as_str());
        std::fs::create_dir_all(&dir)
            .map_err(|e| SearchError::Unavailable(format!("index directory: {e}")))?;
        let mmap = MmapDirectory::open(&dir)
            .map_err(|e| SearchError::Unavailable(format!("index directory: {e}")))?;
        let (schema, fields) = schema();
        let (index, legacy) = if Index::exists(&mmap)
            .map_err(|e| SearchError::Unavailable(format!("index directory: {e}")))?
        {
            let index = Index::open(mmap).map_err(backend_err)?;
            if index.schema() == schema {
                (index, false)
            } else if index.schema() == schema_with_tokenizer(LEGACY_TOKENIZER).0 {
                (index, true)
            } else {
                return Err(SearchError::Backend(format!(
                    "the index of tenant {tenant} has a schema this version cannot use; \
                     drop the tenant's index and reindex it"
                )));
            }
        } else {
            (
                Index::create(mmap, schema, Default::default()).map_err(backend_err)?,
                false,
            )
        };
        index.tokenizers().register(
            TERMS_TOKENIZER,
            TextAnalyzer::from(TermListTokenizer::default()),
        );
        let reader = index
            .reader_builder()
            .reload_policy(ReloadPolicy::Manual)
            .try_into()
            .map_err(backend_err)?;
        Ok(Self {
            tenant: tenant.clone(),
            dir,
            index,
            reader,
            fields,
            legacy,
            writer_heap_bytes: cfg.writer_heap_bytes,
            writer: Mutex::new(None),
            dirty: AtomicBool::new(false),
        })
    }

    fn lock_writer(&self) -> MutexGuard<'_, Option<IndexWriter>> {
        self.writer.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The writer, taken now if this process does not hold it yet.
    fn writer(&self) -> Result<MutexGuard<'_, Option<IndexWriter>>, SearchError> {
        let mut guard = self.lock_writer();
        if guard.is_none() {
            match self
                .index
                .writer_with_num_threads::<TantivyDocument>(1, self.writer_heap_bytes)
            {
                Ok(w) => {
                    let holder = format!(
                        "pid {} ({})",
                        std::process::id(),
                        std::env::args()
                            .next()
                            .as_deref()
                            .map(Path::new)
                            .and_then(Path::file_name)
                            .and_then(|n| n.to_str())
                            .unwrap_or("unknown program")
                    );
                    // Best effort: only used to name the holder in another process's error.
                    let _ = std::fs::write(self.dir.join(HOLDER_FILE), holder);
                    *guard = Some(w);
                }
                Err(TantivyError::LockFailure(LockError::LockBusy, _)) => {
                    let holder = std::fs::read_to_string(self.dir.join(HOLDER_FILE))
                        .ok()
                        .map(|s| s.chars().take(200).collect::<String>())
                        .filter(|s| !s.trim().is_empty())
                        .unwrap_or_else(|| "another process".to_owned());
                    return Err(SearchError::Locked {
                        tenant: self.tenant.to_string(),
                        holder,
                    });
                }
                Err(e) => return Err(backend_err(e)),
            }
        }
        Ok(guard)
    }

    fn holds_writer(&self) -> bool {
        self.lock_writer().is_some()
    }

    fn to_document(&self, doc: &IndexDoc) -> TantivyDocument {
        let f = &self.fields;
        let mut d = TantivyDocument::default();
        d.add_text(f.message_id, &doc.message_id);
        d.add_text(f.conversation_id, &doc.conversation_id);
        d.add_text(f.inbox_id, &doc.inbox_id);
        d.add_i64(f.date_ms, doc.date_ms);
        d.add_u64(f.seq, doc.seq());
        d.add_bool(f.has_attachment, doc.has_attachment);
        d.add_u64(f.key_version, u64::from(doc.key_version.unwrap_or(0)));
        for field in &doc.fields {
            if field.tokens.is_empty() {
                continue;
            }
            let target = f.text(field.field);
            // No original text: the index never receives it, only the terms.
            if !self.legacy
                && let Some(list) = term_list(&field.tokens)
            {
                d.add_text(target, list);
                continue;
            }
            let tokens = field
                .tokens
                .iter()
                .map(|(term, position)| TToken {
                    offset_from: 0,
                    offset_to: 0,
                    position: *position as usize,
                    text: term.to_index_string(),
                    position_length: 1,
                })
                .collect();
            d.add_pre_tokenized_text(
                target,
                PreTokenizedString {
                    text: String::new(),
                    tokens,
                },
            );
        }
        d
    }

    fn add(&self, docs: &[IndexDoc]) -> Result<(), SearchError> {
        let guard = self.writer()?;
        let Some(w) = guard.as_ref() else {
            return Err(SearchError::Backend("index writer missing".into()));
        };
        for doc in docs {
            w.delete_term(Term::from_field_text(
                self.fields.message_id,
                &doc.message_id,
            ));
            w.add_document(self.to_document(doc)).map_err(backend_err)?;
        }
        DOCS_INDEXED.add(docs.len() as u64);
        self.dirty.store(true, Ordering::Release);
        Ok(())
    }

    fn commit(&self) -> Result<(), SearchError> {
        let mut guard = self.writer()?;
        let Some(w) = guard.as_mut() else {
            return Err(SearchError::Backend("index writer missing".into()));
        };
        self.commit_with(w)?;
        self.reader.reload().map_err(backend_err)
    }

    /// Commits through `w` (the held writer), keeping the dirty flag set if it fails.
    fn commit_with(&self, w: &mut IndexWriter) -> Result<(), SearchError> {
        self.dirty.store(false, Ordering::Release);
        if let Err(e) = w.commit() {
            self.dirty.store(true, Ordering::Release);
            return Err(backend_err(e));
        }
        Ok(())
    }

    fn delete(&self, scope: &DeleteScope) -> Result<(), SearchError> {
        let f = &self.fields;
        let term = match scope {
            DeleteScope::Message(id) => Term::from_field_text(f.message_id, id),
            DeleteScope::Conversation(id) => Term::from_field_text(f.conversation_id, id),
            DeleteScope::Inbox(id) => Term::from_field_text(f.inbox_id, id),
        };
        {
            let guard = self.writer()?;
            let Some(w) = guard.as_ref() else {
                return Err(SearchError::Backend("index writer missing".into()));
            };
            w.delete_term(term);
        }
        DELETES.inc();
        self.commit()
    }

    fn term_query(&self, field: Field, term: &IndexTerm) -> Box<dyn TQuery> {
        Box::new(TermQuery::new(
            Term::from_field_text(self.fields.text(field), &term.to_index_string()),
            IndexRecordOption::Basic,
        ))
    }

    /// `q` as the clause of an exclusion: without the inbox filter (see `build`), and behind
    /// [`Excluded`] unless it is a single term (a term scorer's `seek_danger` is a plain seek).
    fn excluded(&self, q: &IndexQuery) -> Box<dyn TQuery> {
        let query = self.build(q, None);
        match q {
            IndexQuery::Term { .. } | IndexQuery::HasAttachment => query,
            IndexQuery::Phrase { terms, .. } if terms.len() < 2 => query,
            _ => Box::new(Excluded(query)),
        }
    }

    /// `q` with `filter` (when given) required inside every disjunction that is not under a
    /// negation (see the module docs). The caller requires `filter` at the top as well; within
    /// it, each copy changes no result. Negated parts get no copy (tantivy checks exclusions
    /// document by document, so a copy would only cost) and are built by `excluded`.
    fn build(&self, q: &IndexQuery, filter: Option<&InboxFilter>) -> Box<dyn TQuery> {
        let f = &self.fields;
        match q {
            IndexQuery::Term { field, term } => self.term_query(*field, term),
            IndexQuery::Phrase { field, terms } => match terms.as_slice() {
                [] => Box::new(EmptyQuery),
                [one] => self.term_query(*field, one),
                many => Box::new(PhraseQuery::new(
                    many.iter()
                        .map(|t| Term::from_field_text(f.text(*field), &t.to_index_string()))
                        .collect(),
                )),
            },
            IndexQuery::And(children) => {
                let mut clauses: Vec<(Occur, Box<dyn TQuery>)> = Vec::new();
                for child in children {
                    match child {
                        IndexQuery::Not(inner) => {
                            clauses.push((Occur::MustNot, self.excluded(inner)));
                        }
                        other => clauses.push((Occur::Must, self.build(other, filter))),
                    }
                }
                if !clauses.iter().any(|(o, _)| *o == Occur::Must) {
                    clauses.push((Occur::Must, Box::new(AllQuery)));
                }
                Box::new(BooleanQuery::new(clauses))
            }
            IndexQuery::Or(children) => {
                if children.is_empty() {
                    return Box::new(EmptyQuery);
                }
                Box::new(BooleanQuery::new(
                    children
                        .iter()
                        .map(|c| {
                            let child = self.build(c, filter);
                            let Some(filter) = filter else {
                                return (Occur::Should, child);
                            };
                            let filtered = BooleanQuery::new(vec![
                                (Occur::Must, child),
                                (Occur::Must, Box::new(filter.clone()) as Box<dyn TQuery>),
                            ]);
                            (Occur::Should, Box::new(filtered) as Box<dyn TQuery>)
                        })
                        .collect(),
                ))
            }
            IndexQuery::Not(inner) => Box::new(BooleanQuery::new(vec![
                (Occur::Must, Box::new(AllQuery) as Box<dyn TQuery>),
                (Occur::MustNot, self.excluded(inner)),
            ])),
            // Validated to be plaintext terms (see `validate_request`).
            IndexQuery::Prefix { field, term } => Box::new(self.pattern_query(*field, term, None)),
            IndexQuery::Fuzzy {
                field,
                term,
                distance,
            } => Box::new(self.pattern_query(*field, term, Some(*distance))),
            IndexQuery::HasAttachment => Box::new(TermQuery::new(
                Term::from_field_bool(f.has_attachment, true),
                IndexRecordOption::Basic,
            )),
            IndexQuery::Before(ms) => Box::new(RangeQuery::new(
                Bound::Unbounded,
                Bound::Excluded(Term::from_field_i64(f.date_ms, *ms)),
            )),
            IndexQuery::After(ms) => Box::new(RangeQuery::new(
                Bound::Included(Term::from_field_i64(f.date_ms, *ms)),
                Bound::Unbounded,
            )),
        }
    }

    /// The tantivy query of a prefix word (`distance` `None`) or a fuzzy word.
    fn pattern_query(&self, field: Field, term: &IndexTerm, distance: Option<u8>) -> Pattern {
        let field = self.fields.text(field);
        let term = Term::from_field_text(field, &term.to_index_string());
        let query = match distance {
            None => FuzzyTermQuery::new_prefix(term, 0, true),
            Some(d) => FuzzyTermQuery::new(term, d, true),
        };
        Pattern { field, query }
    }

    fn search(&self, request: &SearchRequest) -> Result<SearchPage, SearchError> {
        validate_request(request)?;
        if request.inboxes.is_empty() {
            return Ok(SearchPage::default());
        }
        if !self.holds_writer() {
            // Another process may be writing: see its latest commit.
            self.reader.reload().map_err(backend_err)?;
        }
        SEARCHES.inc();
        let searcher = self.reader.searcher();
        let filter = InboxFilter::new(self.fields.inbox_id, request.inboxes.iter().cloned());
        let query = BooleanQuery::new(vec![
            (Occur::Must, self.build(&request.query, Some(&filter))),
            (Occur::Must, Box::new(filter) as Box<dyn TQuery>),
        ]);
        let after = request.after;
        let sort_key = move |segment: &SegmentReader| {
            let dates = segment.fast_fields().i64("date_ms").ok();
            let seqs = segment.fast_fields().u64("seq").ok();
            move |doc: tantivy::DocId| -> Option<(i64, u64)> {
                let key = (dates.as_ref()?.first(doc)?, seqs.as_ref()?.first(doc)?);
                match after {
                    Some(c) if key >= (c.date_ms, c.seq) => None,
                    _ => Some(key),
                }
            }
        };
        let top = searcher
            .search(
                &query,
                &TopDocs::with_limit(request.limit + 1).order_by(sort_key),
            )
            .map_err(|e| match e {
                TantivyError::InvalidArgument(why) if why == PATTERN_TOO_BROAD => {
                    SearchError::InvalidRequest(PATTERN_TOO_BROAD)
                }
                other => backend_err(other),
            })?;
        let mut hits = Vec::with_capacity(request.limit);
        let mut more = false;
        for (key, address) in top {
            let Some((date_ms, seq)) = key else { continue };
            if hits.len() == request.limit {
                more = true;
                break;
            }
            hits.push(self.hit(&searcher, address, date_ms, seq)?);
        }
        let next = if more {
            hits.last().map(SearchHit::cursor)
        } else {
            None
        };
        Ok(SearchPage { hits, next })
    }

    fn hit(
        &self,
        searcher: &tantivy::Searcher,
        address: DocAddress,
        date_ms: i64,
        seq: u64,
    ) -> Result<SearchHit, SearchError> {
        let doc: TantivyDocument = searcher.doc(address).map_err(backend_err)?;
        let text = |field: TField| -> String {
            doc.get_first(field)
                .and_then(|v| v.as_str())
                .unwrap_or_default()
                .to_owned()
        };
        Ok(SearchHit {
            message_id: text(self.fields.message_id),
            conversation_id: text(self.fields.conversation_id),
            inbox_id: text(self.fields.inbox_id),
            date_ms,
            seq,
        })
    }

    /// Rewrites every segment holding deleted documents without them, then deletes the
    /// files no longer used, so nothing of a deleted document stays on disk. Returns the
    /// deleted documents removed.
    fn compact(&self) -> Result<u64, SearchError> {
        let mut guard = self.writer()?;
        let Some(w) = guard.as_mut() else {
            return Err(SearchError::Backend("index writer missing".into()));
        };
        // Pending deletes become part of the segments first.
        self.commit_with(w)?;
        let mut removed = 0;
        // A background merge may hold some of the segments (it drops their deleted
        // documents too); wait for it and look again.
        for attempt in 0..COMPACT_ATTEMPTS {
            let metas = self.index.searchable_segment_metas().map_err(backend_err)?;
            let with_deletes: Vec<SegmentId> = metas
                .iter()
                .filter(|m| m.has_deletes())
                .map(|m| m.id())
                .collect();
            if with_deletes.is_empty() {
                break;
            }
            let deleted: u64 = metas.iter().map(|m| u64::from(m.num_deleted_docs())).sum();
            match w.merge(&with_deletes).wait() {
                Ok(_) => removed += deleted,
                Err(e) if attempt + 1 == COMPACT_ATTEMPTS => return Err(backend_err(e)),
                Err(_) => std::thread::sleep(Duration::from_millis(50 << attempt.min(4))),
            }
        }
        self.reader.reload().map_err(backend_err)?;
        w.garbage_collect_files().wait().map_err(backend_err)?;
        Ok(removed)
    }

    fn stats(&self) -> Result<IndexStats, SearchError> {
        if !self.holds_writer() {
            self.reader.reload().map_err(backend_err)?;
        }
        let searcher = self.reader.searcher();
        let mut stats = IndexStats::default();
        for segment in searcher.segment_readers() {
            stats.documents += u64::from(segment.num_docs());
            stats.deleted_documents += u64::from(segment.num_deleted_docs());
            stats.segments += 1;
        }
        stats.bytes = dir_size(&self.dir);
        Ok(stats)
    }
}

fn dir_size(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter_map(|e| e.metadata().ok())
                .filter(|m| m.is_file())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

/// The term list of one field (see the module docs), or `None` when a term or the positions
/// cannot be written as one (the caller then hands tantivy a `PreTokenizedString`).
fn term_list(tokens: &[(IndexTerm, u32)]) -> Option<String> {
    if tokens.is_sorted_by_key(|(_, p)| *p) {
        write_term_list(tokens.iter())
    } else {
        // Terms blinded under two keys (during a rotation) come as two runs; a stable sort
        // keeps each term's positions in order.
        let mut sorted: Vec<&(IndexTerm, u32)> = tokens.iter().collect();
        sorted.sort_by_key(|(_, p)| *p);
        write_term_list(sorted.into_iter())
    }
}

fn write_term_list<'a>(
    tokens: impl ExactSizeIterator<Item = &'a (IndexTerm, u32)>,
) -> Option<String> {
    // Bytes first, checked as UTF-8 once at the end (every piece is: separators and base64
    // are ASCII, plaintext terms are strings).
    let mut out = Vec::with_capacity(tokens.len() * (BLIND_TOKEN_STR_LEN + 1));
    let mut previous: Option<u32> = None;
    for (term, position) in tokens {
        let separator = match previous {
            None if *position == 0 => NEXT_POSITION,
            None => return None,
            Some(p) if p == *position => SAME_POSITION,
            Some(p) if p.checked_add(1) == Some(*position) => NEXT_POSITION,
            Some(_) => return None,
        };
        previous = Some(*position);
        out.push(separator);
        match term {
            IndexTerm::Blind(t) => {
                let mut buf = [0u8; BLIND_TOKEN_STR_LEN + 2];
                let len = URL_SAFE_NO_PAD.encode_slice(t.as_bytes(), &mut buf).ok()?;
                out.extend_from_slice(buf.get(..len)?);
            }
            IndexTerm::Plain(s) => {
                if s.is_empty() || s.bytes().any(is_separator) {
                    return None;
                }
                out.extend_from_slice(s.as_bytes());
            }
        }
    }
    String::from_utf8(out).ok()
}

fn is_separator(b: u8) -> bool {
    b == NEXT_POSITION || b == SAME_POSITION
}

/// Splits a term list back into its terms and positions (see the module docs).
#[derive(Clone, Default)]
pub struct TermListTokenizer {
    token: TToken,
}

impl Tokenizer for TermListTokenizer {
    type TokenStream<'a> = TermListStream<'a>;

    fn token_stream<'a>(&'a mut self, text: &'a str) -> TermListStream<'a> {
        // `reset` leaves the position at usize::MAX, so the first term's NEXT_POSITION is 0.
        self.token.reset();
        TermListStream {
            rest: text,
            offset: 0,
            token: &mut self.token,
        }
    }
}

/// The token stream of [`TermListTokenizer`].
pub struct TermListStream<'a> {
    rest: &'a str,
    offset: usize,
    token: &'a mut TToken,
}

impl TokenStream for TermListStream<'_> {
    fn advance(&mut self) -> bool {
        let bytes = self.rest.as_bytes();
        let Some((&separator, body)) = bytes.split_first() else {
            return false;
        };
        let len = body
            .iter()
            .position(|b| is_separator(*b))
            .unwrap_or(body.len());
        // Separators are ASCII, so both ends are character boundaries.
        let term = self.rest.get(1..1 + len).unwrap_or_default();
        self.token.text.clear();
        self.token.text.push_str(term);
        if separator == NEXT_POSITION || self.token.position == usize::MAX {
            self.token.position = self.token.position.wrapping_add(1);
        }
        self.token.offset_from = self.offset + 1;
        self.token.offset_to = self.offset + 1 + len;
        self.offset += 1 + len;
        self.rest = self.rest.get(1 + len..).unwrap_or_default();
        true
    }

    fn token(&self) -> &TToken {
        self.token
    }

    fn token_mut(&mut self) -> &mut TToken {
        self.token
    }
}

/// The inbox restriction as a query clause: the documents whose `inbox_id` is one of the
/// request's inboxes, i.e. the union of one term's postings per inbox, read once per segment
/// and search into a bit set that every copy of the clause in the query shares.
#[derive(Clone)]
struct InboxFilter {
    field: TField,
    inboxes: Arc<Vec<String>>,
    segments: Arc<Mutex<HashMap<SegmentId, BitSet>>>,
}

impl std::fmt::Debug for InboxFilter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Inbox ids are not secret, but the count is all a debug print needs.
        write!(f, "InboxFilter({} inboxes)", self.inboxes.len())
    }
}

impl InboxFilter {
    fn new(field: TField, inboxes: impl Iterator<Item = String>) -> Self {
        Self {
            field,
            inboxes: Arc::new(inboxes.collect()),
            segments: Arc::default(),
        }
    }

    /// The matching documents of one segment (deleted ones included: the collector skips
    /// those).
    fn docs(&self, segment: &SegmentReader) -> tantivy::Result<BitSet> {
        let id = segment.segment_id();
        let mut cache = self.segments.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(bits) = cache.get(&id) {
            return Ok(bits.clone());
        }
        let mut bits = BitSet::with_max_value(segment.max_doc());
        let inverted = segment.inverted_index(self.field)?;
        for inbox in self.inboxes.iter() {
            let term = Term::from_field_text(self.field, inbox);
            if let Some(mut postings) = inverted.read_postings(&term, IndexRecordOption::Basic)? {
                let mut doc = postings.doc();
                while doc != TERMINATED {
                    bits.insert(doc);
                    doc = postings.advance();
                }
            }
        }
        cache.insert(id, bits.clone());
        Ok(bits)
    }
}

impl TQuery for InboxFilter {
    fn weight(&self, _scoring: EnableScoring<'_>) -> tantivy::Result<Box<dyn Weight>> {
        Ok(Box::new(self.clone()))
    }
}

impl Weight for InboxFilter {
    fn scorer(&self, segment: &SegmentReader, _boost: Score) -> tantivy::Result<Box<dyn Scorer>> {
        Ok(Box::new(ConstScorer::new(
            BitSetDocSet::from(self.docs(segment)?),
            0.0,
        )))
    }

    fn explain(&self, segment: &SegmentReader, doc: DocId) -> tantivy::Result<Explanation> {
        if self.docs(segment)?.contains(doc) {
            Ok(Explanation::new("in one of the requested inboxes", 0.0))
        } else {
            Err(TantivyError::InvalidArgument(format!(
                "document {doc} is not in the requested inboxes"
            )))
        }
    }
}

/// A prefix or fuzzy word: the documents of every term of the field its automaton accepts,
/// as tantivy's own automaton weight finds them, but refused with [`PATTERN_TOO_BROAD`]
/// (as `TantivyError::InvalidArgument`, see `search`) once it matches more than
/// [`MAX_PATTERN_TERMS`] terms of one segment: tantivy unions the postings of every
/// matching term, so such a word (`th*` in a large tenant) would cost the whole index's
/// postings. Counting while the terms are read keeps it to one pass over the term
/// dictionary (a separate counting pass doubled the cost of fuzzy words).
#[derive(Clone, Debug)]
struct Pattern {
    field: TField,
    query: FuzzyTermQuery,
}

impl TQuery for Pattern {
    fn weight(&self, _scoring: EnableScoring<'_>) -> tantivy::Result<Box<dyn Weight>> {
        Ok(Box::new(PatternWeight {
            field: self.field,
            automaton: self.query.automaton()?,
        }))
    }
}

struct PatternWeight {
    field: TField,
    automaton: DfaWrapper,
}

impl Weight for PatternWeight {
    fn scorer(&self, segment: &SegmentReader, boost: Score) -> tantivy::Result<Box<dyn Scorer>> {
        let inverted = segment.inverted_index(self.field)?;
        let mut terms = inverted.terms().search(&self.automaton).into_stream()?;
        let mut docs = BitSet::with_max_value(segment.max_doc());
        let mut matched = 0;
        while terms.advance() {
            matched += 1;
            if matched > MAX_PATTERN_TERMS {
                return Err(TantivyError::InvalidArgument(PATTERN_TOO_BROAD.to_owned()));
            }
            let mut postings = inverted
                .read_block_postings_from_terminfo(terms.value(), IndexRecordOption::Basic)?;
            while !postings.docs().is_empty() {
                for &doc in postings.docs() {
                    docs.insert(doc);
                }
                postings.advance();
            }
        }
        Ok(Box::new(ConstScorer::new(BitSetDocSet::from(docs), boost)))
    }

    fn explain(&self, segment: &SegmentReader, doc: DocId) -> tantivy::Result<Explanation> {
        if self.scorer(segment, 1.0)?.seek(doc) == doc {
            Ok(Explanation::new("matches the word pattern", 1.0))
        } else {
            Err(TantivyError::InvalidArgument(format!(
                "document {doc} does not match the word pattern"
            )))
        }
    }
}

/// A negated clause, as tantivy's exclusion sees it: a scorer that is only ever moved with
/// `seek`, so it always sits on a real match.
///
/// tantivy (0.27) checks an exclusion by `seek_danger` on each excluded scorer. That call may
/// leave a scorer past the document asked about; a phrase scorer (or an intersection
/// holding one) then asked about an earlier document fails a debug assertion, and in a
/// release build goes on from a position its `seek` does not allow. Behind this wrapper the
/// excluded scorer gets `DocSet`'s default `seek_danger`, which seeks only forward from a
/// valid position. Single terms need no wrapper (see `excluded`).
#[derive(Debug)]
struct Excluded(Box<dyn TQuery>);

impl Clone for Excluded {
    fn clone(&self) -> Self {
        Self(self.0.box_clone())
    }
}

impl TQuery for Excluded {
    fn weight(&self, scoring: EnableScoring<'_>) -> tantivy::Result<Box<dyn Weight>> {
        Ok(Box::new(ExcludedWeight(self.0.weight(scoring)?)))
    }

    fn query_terms<'a>(&'a self, visitor: &mut dyn FnMut(&'a Term, bool)) {
        self.0.query_terms(visitor);
    }
}

struct ExcludedWeight(Box<dyn Weight>);

impl Weight for ExcludedWeight {
    fn scorer(&self, segment: &SegmentReader, boost: Score) -> tantivy::Result<Box<dyn Scorer>> {
        let inner = self.0.scorer(segment, boost)?;
        // tantivy drops empty and match-all exclusions by their type: keep them visible.
        if inner.is::<EmptyScorer>() || inner.is::<AllScorer>() {
            return Ok(inner);
        }
        Ok(Box::new(SeekOnly(inner)))
    }

    fn explain(&self, segment: &SegmentReader, doc: DocId) -> tantivy::Result<Explanation> {
        self.0.explain(segment, doc)
    }
}

/// See [`Excluded`]: every method but `seek_danger` (left to the default) is the inner one's.
struct SeekOnly(Box<dyn Scorer>);

impl DocSet for SeekOnly {
    fn advance(&mut self) -> DocId {
        self.0.advance()
    }

    fn seek(&mut self, target: DocId) -> DocId {
        self.0.seek(target)
    }

    fn doc(&self) -> DocId {
        self.0.doc()
    }

    fn size_hint(&self) -> u32 {
        self.0.size_hint()
    }

    fn cost(&self) -> u64 {
        self.0.cost()
    }
}

impl Scorer for SeekOnly {
    fn score(&mut self) -> Score {
        self.0.score()
    }
}

/// The tantivy backend (see the module docs).
pub struct TantivyIndex {
    inner: Arc<Inner>,
}

struct Inner {
    cfg: TantivyConfig,
    tenants: Mutex<HashMap<TenantId, Arc<TenantIndex>>>,
}

impl Inner {
    fn tenants(&self) -> MutexGuard<'_, HashMap<TenantId, Arc<TenantIndex>>> {
        self.tenants.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn tenant(&self, tenant: &TenantId) -> Result<Arc<TenantIndex>, SearchError> {
        if let Some(t) = self.tenants().get(tenant) {
            return Ok(t.clone());
        }
        // Opened outside the map's lock; if two calls race, the first insert wins.
        let opened = Arc::new(TenantIndex::open(&self.cfg, tenant)?);
        Ok(self
            .tenants()
            .entry(tenant.clone())
            .or_insert(opened)
            .clone())
    }

    fn commit_dirty(&self) {
        let open: Vec<Arc<TenantIndex>> = self.tenants().values().cloned().collect();
        for t in open {
            if t.dirty.load(Ordering::Acquire)
                && let Err(e) = t.commit()
            {
                tracing::warn!(tenant = %t.tenant, error = %e, "periodic index commit failed");
            }
        }
    }
}

impl TantivyIndex {
    /// Opens the backend. With a non-zero commit interval, a background task (on the current
    /// tokio runtime) commits dirty tenant indexes; it ends when the backend is dropped.
    pub fn open(cfg: TantivyConfig) -> Result<Self, SearchError> {
        if cfg.writer_heap_bytes < TantivyConfig::MIN_WRITER_HEAP_BYTES {
            return Err(SearchError::InvalidRequest(
                "tantivy writer heap must be at least 15000000 bytes",
            ));
        }
        std::fs::create_dir_all(&cfg.root)
            .map_err(|e| SearchError::Unavailable(format!("index root: {e}")))?;
        let interval = cfg.commit_interval;
        let inner = Arc::new(Inner {
            cfg,
            tenants: Mutex::new(HashMap::new()),
        });
        if !interval.is_zero() {
            let weak: Weak<Inner> = Arc::downgrade(&inner);
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(interval);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    let Some(inner) = weak.upgrade() else { break };
                    if tokio::task::spawn_blocking(move || inner.commit_dirty())
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
            });
        }
        Ok(Self { inner })
    }

    pub fn root(&self) -> &Path {
        &self.inner.cfg.root
    }

    async fn blocking<T: Send + 'static>(
        &self,
        tenant: &TenantId,
        f: impl FnOnce(&TenantIndex) -> Result<T, SearchError> + Send + 'static,
    ) -> Result<T, SearchError> {
        let inner = self.inner.clone();
        let tenant = tenant.clone();
        tokio::task::spawn_blocking(move || {
            let t = inner.tenant(&tenant)?;
            f(&t)
        })
        .await
        .map_err(|e| SearchError::Backend(format!("index task failed: {e}")))?
    }
}

#[async_trait]
impl SearchIndex for TantivyIndex {
    fn backend(&self) -> &'static str {
        "tantivy"
    }

    async fn index(&self, tenant: &TenantId, docs: Vec<IndexDoc>) -> Result<(), SearchError> {
        if docs.is_empty() {
            return Ok(());
        }
        let commit_now = self.inner.cfg.commit_interval.is_zero();
        self.blocking(tenant, move |t| {
            t.add(&docs)?;
            if commit_now { t.commit() } else { Ok(()) }
        })
        .await
    }

    async fn flush(&self, tenant: &TenantId) -> Result<(), SearchError> {
        self.blocking(tenant, |t| t.commit()).await
    }

    async fn delete(&self, tenant: &TenantId, scope: &DeleteScope) -> Result<(), SearchError> {
        let scope = scope.clone();
        self.blocking(tenant, move |t| t.delete(&scope)).await
    }

    async fn drop_tenant(&self, tenant: &TenantId) -> Result<(), SearchError> {
        let inner = self.inner.clone();
        let tenant = tenant.clone();
        tokio::task::spawn_blocking(move || {
            let dir = inner.cfg.root.join(tenant.as_str());
            if !dir.exists() {
                inner.tenants().remove(&tenant);
                return Ok(());
            }
            // Take the writer lock first: never delete files another process is writing.
            let t = inner.tenant(&tenant)?;
            let writer = t.writer()?.take();
            inner.tenants().remove(&tenant);
            if let Some(w) = writer {
                w.wait_merging_threads().map_err(backend_err)?;
            }
            drop(t);
            std::fs::remove_dir_all(&dir)
                .map_err(|e| SearchError::Unavailable(format!("removing index directory: {e}")))
        })
        .await
        .map_err(|e| SearchError::Backend(format!("index task failed: {e}")))?
    }

    async fn search(
        &self,
        tenant: &TenantId,
        request: &SearchRequest,
    ) -> Result<SearchPage, SearchError> {
        validate_request(request)?;
        if request.inboxes.is_empty() {
            return Ok(SearchPage::default());
        }
        if !self.inner.cfg.root.join(tenant.as_str()).exists() {
            // Nothing indexed for this tenant: do not create an empty index just to search.
            return Ok(SearchPage::default());
        }
        let request = request.clone();
        self.blocking(tenant, move |t| t.search(&request)).await
    }

    async fn stats(&self, tenant: &TenantId) -> Result<IndexStats, SearchError> {
        if !self.inner.cfg.root.join(tenant.as_str()).exists() {
            return Ok(IndexStats::default());
        }
        self.blocking(tenant, |t| t.stats()).await
    }

    async fn compact(&self, tenant: &TenantId) -> Result<u64, SearchError> {
        if !self.inner.cfg.root.join(tenant.as_str()).exists() {
            return Ok(0);
        }
        self.blocking(tenant, |t| t.compact()).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::search::blind::Indexer;
    use crate::search::conformance::{self, Msg, ids, key, tenant};

    async fn fresh(interval: Duration) -> (TantivyIndex, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let mut cfg = TantivyConfig::new(dir.path().join("index"));
        cfg.commit_interval = interval;
        cfg.writer_heap_bytes = TantivyConfig::MIN_WRITER_HEAP_BYTES;
        let index = TantivyIndex::open(cfg).unwrap_or_else(|e| panic!("open: {e}"));
        (index, dir)
    }

    mod conformance_suite {
        conformance::conformance_tests!(super::fresh(std::time::Duration::ZERO));
        use super::*;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn additions_become_visible_within_the_commit_interval() {
        let (index, _dir) = fresh(Duration::from_millis(200)).await;
        let k = key(9);
        let ix = Indexer::Blind(&k);
        let t = tenant("interval");
        let m = Msg::new("m1", "inbox-a", 0, "hello", "world");
        index
            .index(&t, vec![m.doc(&ix)])
            .await
            .unwrap_or_else(|e| panic!("index: {e}"));
        // Not committed yet: the background task commits within the interval.
        let mut seen = false;
        for _ in 0..50 {
            if ids(&index, &t, &ix, "hello", &["inbox-a"]).await == ["m1"] {
                seen = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(seen, "document never became searchable");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_second_writer_gets_an_error_naming_the_holder_and_can_still_search() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let open = || {
            let mut cfg = TantivyConfig::new(dir.path());
            cfg.commit_interval = Duration::ZERO;
            cfg.writer_heap_bytes = TantivyConfig::MIN_WRITER_HEAP_BYTES;
            TantivyIndex::open(cfg).unwrap_or_else(|e| panic!("open: {e}"))
        };
        let (first, second) = (open(), open());
        let k = key(9);
        let ix = Indexer::Blind(&k);
        let t = tenant("locked");
        let m = Msg::new("m1", "inbox-a", 0, "hello", "world");
        first
            .index(&t, vec![m.doc(&ix)])
            .await
            .unwrap_or_else(|e| panic!("index: {e}"));
        match second.index(&t, vec![m.doc(&ix)]).await {
            Err(SearchError::Locked { tenant, holder }) => {
                assert_eq!(tenant, "locked");
                assert!(
                    holder.contains(&format!("pid {}", std::process::id())),
                    "{holder}"
                );
            }
            other => panic!("expected Locked, got {other:?}"),
        }
        assert!(
            second.drop_tenant(&t).await.is_err(),
            "dropped a held index"
        );
        // The reader-only instance sees the writer's commits.
        assert_eq!(ids(&second, &t, &ix, "hello", &["inbox-a"]).await, ["m1"]);
        first
            .index(
                &t,
                vec![Msg::new("m2", "inbox-a", 1, "hello", "again").doc(&ix)],
            )
            .await
            .unwrap_or_else(|e| panic!("index: {e}"));
        assert_eq!(
            ids(&second, &t, &ix, "hello", &["inbox-a"]).await,
            ["m2", "m1"]
        );
    }

    fn split(list: &str) -> Vec<(String, u32)> {
        let mut tokenizer = TermListTokenizer::default();
        let mut stream = tokenizer.token_stream(list);
        let mut out = Vec::new();
        while stream.advance() {
            let t = stream.token();
            out.push((t.text.clone(), t.position as u32));
        }
        out
    }

    fn plain(terms: &[(&str, u32)]) -> Vec<(IndexTerm, u32)> {
        terms
            .iter()
            .map(|(t, p)| (IndexTerm::Plain((*t).to_owned()), *p))
            .collect()
    }

    #[test]
    fn term_lists_split_back_into_the_same_terms_and_positions() {
        let k = key(3);
        let ix = Indexer::Blind(&k);
        let text = "Ann Lee <ann.lee@example.com> wrote: Müller's café ½ 東京 done";
        for field in [
            ix.index_text(Field::From, text),
            Indexer::PLAINTEXT.index_text(Field::From, text),
            Indexer::PLAINTEXT.index_text(Field::Body, text),
        ] {
            let list = term_list(&field.tokens)
                .unwrap_or_else(|| panic!("not representable: {:?}", field.tokens));
            let expected: Vec<(String, u32)> = field
                .tokens
                .iter()
                .map(|(t, p)| (t.to_index_string(), *p))
                .collect();
            assert_eq!(split(&list), expected);
        }
        // Two runs (terms blinded under two keys during a rotation) come back ordered by
        // position, each run's terms in their order.
        let k2 = key(4);
        let a = ix.index_text(Field::Body, "one two three");
        let b = Indexer::Blind(&k2).index_text(Field::Body, "one two three");
        let mut both = a.tokens.clone();
        both.extend(b.tokens.iter().cloned());
        let list = term_list(&both).unwrap_or_else(|| panic!("not representable"));
        let expected: Vec<(String, u32)> = (0..3)
            .flat_map(|i| [&a.tokens[i], &b.tokens[i]])
            .map(|(t, p)| (t.to_index_string(), *p))
            .collect();
        assert_eq!(split(&list), expected);
        assert_eq!(split(""), Vec::new());
    }

    #[test]
    fn terms_a_term_list_cannot_hold_are_refused() {
        assert!(term_list(&plain(&[("a", 0), ("b", 2)])).is_none(), "gap");
        assert!(term_list(&plain(&[("a", 1)])).is_none(), "first not at 0");
        assert!(term_list(&plain(&[("a\u{1}b", 0)])).is_none(), "separator");
        assert!(term_list(&plain(&[("x", 0), ("a\u{2}", 1)])).is_none());
        assert!(term_list(&plain(&[("", 0)])).is_none(), "empty term");
        assert!(term_list(&plain(&[("a", 0), ("b", 0), ("c", 1)])).is_some());
    }

    fn plain_doc(id: &str, inbox: &str, body: Vec<(IndexTerm, u32)>) -> IndexDoc {
        IndexDoc {
            message_id: id.to_owned(),
            conversation_id: id.to_owned(),
            inbox_id: inbox.to_owned(),
            date_ms: 0,
            has_attachment: false,
            key_version: None,
            fields: vec![crate::search::FieldTerms {
                field: Field::Body,
                tokens: body,
            }],
        }
    }

    /// Terms that go the `PreTokenizedString` way are indexed at their positions too.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn terms_outside_a_term_list_are_indexed_at_their_positions() {
        let (index, _dir) = fresh(Duration::ZERO).await;
        let t = tenant("fallback");
        let ix = Indexer::PLAINTEXT;
        let docs = vec![
            plain_doc("gap", "inbox-a", plain(&[("alpha", 0), ("beta", 2)])),
            plain_doc("late", "inbox-a", plain(&[("alpha", 5), ("beta", 6)])),
            plain_doc("odd", "inbox-a", plain(&[("we\u{1}ird", 0), ("beta", 1)])),
        ];
        index
            .index(&t, docs)
            .await
            .unwrap_or_else(|e| panic!("index: {e}"));
        let mut got = ids(&index, &t, &ix, "body:alpha", &["inbox-a"]).await;
        got.sort();
        assert_eq!(got, ["gap", "late"]);
        assert_eq!(
            ids(&index, &t, &ix, "\"alpha beta\"", &["inbox-a"]).await,
            ["late"]
        );
        let mut got = ids(&index, &t, &ix, "beta", &["inbox-a"]).await;
        got.sort();
        assert_eq!(got, ["gap", "late", "odd"]);
    }

    /// An index created with the schema before the term list (text fields with the `raw`
    /// tokenizer) is used as it is; an index with any other schema is refused.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn indexes_of_the_previous_schema_stay_usable_and_others_are_refused() {
        let (index, dir) = fresh(Duration::ZERO).await;
        let root = dir.path().join("index");
        let legacy_dir = root.join("legacy");
        std::fs::create_dir_all(&legacy_dir).unwrap_or_else(|e| panic!("mkdir: {e}"));
        Index::create_in_dir(&legacy_dir, schema_with_tokenizer(LEGACY_TOKENIZER).0)
            .unwrap_or_else(|e| panic!("create: {e}"));
        let k = key(9);
        let ix = Indexer::Blind(&k);
        let t = tenant("legacy");
        let m = Msg::new("m1", "inbox-a", 0, "hello", "quarterly report here");
        index
            .index(&t, vec![m.doc(&ix)])
            .await
            .unwrap_or_else(|e| panic!("index: {e}"));
        assert_eq!(
            ids(&index, &t, &ix, "\"quarterly report\"", &["inbox-a"]).await,
            ["m1"]
        );
        let on_disk = Index::open_in_dir(&legacy_dir).unwrap_or_else(|e| panic!("open: {e}"));
        assert_eq!(on_disk.schema(), schema_with_tokenizer(LEGACY_TOKENIZER).0);

        let foreign_dir = root.join("foreign");
        std::fs::create_dir_all(&foreign_dir).unwrap_or_else(|e| panic!("mkdir: {e}"));
        let mut b = Schema::builder();
        b.add_text_field("something_else", STRING);
        Index::create_in_dir(&foreign_dir, b.build()).unwrap_or_else(|e| panic!("create: {e}"));
        match index.index(&tenant("foreign"), vec![m.doc(&ix)]).await {
            Err(SearchError::Backend(msg)) => assert!(msg.contains("reindex"), "{msg}"),
            other => panic!("expected a schema error, got {other:?}"),
        }
    }

    /// The inbox filter inside disjunctions changes no result: over several segments with
    /// deletes, every query restricted to some inboxes finds exactly the hits of the same
    /// query over all inboxes that lie in those inboxes.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn inbox_filter_inside_disjunctions_changes_no_result() {
        let (index, _dir) = fresh(Duration::ZERO).await;
        let k = key(12);
        let words = ["red", "green", "blue", "cyan", "gold", "gray"];
        let mut rng = crate::search::tests_support::XorShift::new(0xf11e);
        let mut inbox_of = HashMap::new();
        for ix in [Indexer::Blind(&k), Indexer::PLAINTEXT] {
            let t = tenant(&format!("pushdown-{}", ix.mode()));
            for batch in 0..3 {
                let mut docs = Vec::new();
                for i in 0..100 {
                    let id = format!("m{batch}-{i}");
                    let inbox = format!("inbox-{}", rng.below(6));
                    let text = |rng: &mut crate::search::tests_support::XorShift, n: usize| {
                        (0..n)
                            .map(|_| words[rng.below(words.len())])
                            .collect::<Vec<_>>()
                            .join(" ")
                    };
                    let subject = text(&mut rng, 3);
                    let body = text(&mut rng, 12);
                    let m = Msg::new(&id, &inbox, i64::from(i % 7), &subject, &body);
                    inbox_of.insert(id, inbox);
                    docs.push(m.doc(&ix));
                }
                // One call per batch: a commit, so a segment, each.
                index
                    .index(&t, docs)
                    .await
                    .unwrap_or_else(|e| panic!("index: {e}"));
            }
            index
                .delete(&t, &DeleteScope::Message("m1-7".into()))
                .await
                .unwrap_or_else(|e| panic!("delete: {e}"));
            let all: Vec<String> = (0..6).map(|i| format!("inbox-{i}")).collect();
            let all: Vec<&str> = all.iter().map(String::as_str).collect();
            let queries = [
                "red",
                "red blue",
                "\"red blue\"",
                "subject:\"gold gray\"",
                "red OR cyan",
                "\"red blue\" OR \"gold gold\"",
                "green -\"red blue\"",
                "-(red OR blue) gold",
                "(red OR blue) (cyan OR \"gray green\")",
            ];
            for q in queries {
                let everywhere = ids(&index, &t, &ix, q, &all).await;
                assert!(!everywhere.iter().any(|id| id == "m1-7"), "deleted hit");
                assert!(
                    q.contains('-') || !everywhere.is_empty(),
                    "{q:?} found nothing"
                );
                for allowed in [&all[..1], &all[1..3], &all[2..]] {
                    let expected: Vec<String> = everywhere
                        .iter()
                        .filter(|id| allowed.contains(&inbox_of[*id].as_str()))
                        .cloned()
                        .collect();
                    assert_eq!(
                        ids(&index, &t, &ix, q, allowed).await,
                        expected,
                        "{q:?} in {allowed:?}"
                    );
                }
            }
        }
    }

    /// 10,000 messages, every field carrying a unique canary: no file under the index
    /// directory holds any canary, as written or lowercased, in blind mode.
    ///
    /// Every canary is `<8 unique hex digits>Canary<Field>`, and the scan counts every
    /// occurrence of `canary` in any case. That covers each whole canary (original and
    /// lowercased) and also the fragments a term dictionary keeps when it prefix-compresses
    /// sorted terms. Because the term dictionary is an FST, which does not keep a term's bytes
    /// contiguous, the test also reads every term back through tantivy: in blind mode each is
    /// a blind token; in plaintext mode (opt-in) the canaries are there, so the check sees
    /// plaintext terms when they exist.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn blind_index_files_hold_no_canary() {
        for blind_mode in [true, false] {
            let (index, dir) = fresh(Duration::ZERO).await;
            let k = key(11);
            let ix = if blind_mode {
                Indexer::Blind(&k)
            } else {
                Indexer::PLAINTEXT
            };
            let t = tenant("canary");
            let n = if blind_mode { 10_000 } else { 200 };
            let mut batch = Vec::new();
            let mut probe = String::new();
            for i in 0..n {
                let c = |field: &str| {
                    let unique = crate::search::index::seq_of(&format!("{i}/{field}")) as u32;
                    format!("{unique:08x}Canary{field}")
                };
                if i == 42 {
                    probe = c("Subj");
                }
                let mut m = Msg::new(
                    &format!("msg-{i}"),
                    "inbox-a",
                    i64::from(i % 30),
                    &format!("Subject {} here", c("Subj")),
                    &format!("Body text {} and more", c("Body")),
                );
                m.from = format!("{} <{}@example.com>", c("Name"), c("From"));
                m.to = format!("{}@helpr.example", c("To"));
                m.attachments = vec![format!("{}.pdf", c("File"))];
                batch.push(m.doc(&ix));
                if batch.len() == 1000 {
                    index
                        .index(&t, std::mem::take(&mut batch))
                        .await
                        .unwrap_or_else(|e| panic!("index: {e}"));
                }
            }
            index
                .index(&t, batch)
                .await
                .unwrap_or_else(|e| panic!("index: {e}"));
            // Searchable, so the terms really are in the index.
            assert_eq!(
                ids(&index, &t, &ix, &format!("subject:{probe}"), &["inbox-a"]).await,
                ["msg-42"]
            );
            drop(index);
            let hits = count_marker(dir.path(), b"canary");
            // The term dictionary (an FST) does not keep a term's bytes in order, so a file
            // scan alone could miss plaintext terms: read every term of every text field back
            // through tantivy as well.
            let terms = text_terms(&dir.path().join("index").join("canary"));
            let plain_terms = terms
                .iter()
                .filter(|t| t.to_ascii_lowercase().windows(6).any(|w| w == b"canary"))
                .count();
            if blind_mode {
                assert_eq!(hits, 0, "canaries found in the files of a blind index");
                assert_eq!(plain_terms, 0, "canaries among the terms of a blind index");
                assert!(terms.len() > 60_000, "{} terms", terms.len());
                for t in &terms {
                    let s = std::str::from_utf8(t).unwrap_or_else(|e| panic!("term: {e}"));
                    assert!(
                        crate::search::BlindToken::from_base64url(s).is_some(),
                        "a term of a blind index is not a blind token: {s:?}"
                    );
                }
            } else {
                assert!(plain_terms >= 1200, "plaintext terms: {plain_terms}");
            }
        }
    }

    /// Every term of every text field of the index in `dir`.
    fn text_terms(dir: &Path) -> Vec<Vec<u8>> {
        let index = Index::open_in_dir(dir).unwrap_or_else(|e| panic!("open: {e}"));
        let reader = index.reader().unwrap_or_else(|e| panic!("reader: {e}"));
        let searcher = reader.searcher();
        let (_, fields) = schema();
        let mut out = Vec::new();
        for segment in searcher.segment_readers() {
            for field in fields.text {
                let inverted = segment
                    .inverted_index(field)
                    .unwrap_or_else(|e| panic!("inverted index: {e}"));
                let mut stream = inverted
                    .terms()
                    .stream()
                    .unwrap_or_else(|e| panic!("terms: {e}"));
                while stream.advance() {
                    out.push(stream.key().to_vec());
                }
            }
        }
        out
    }

    /// A deleted document's terms stay in its segment's files until the segment is rewritten:
    /// compaction rewrites every segment holding deleted documents and removes the old
    /// files, and live documents stay searchable.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn compaction_leaves_nothing_of_deleted_documents_on_disk() {
        let (index, dir) = fresh(Duration::ZERO).await;
        let t = tenant("compact");
        let ix = Indexer::PLAINTEXT;
        let tenant_dir = dir.path().join("index").join("compact");
        let run = |r: Result<(), SearchError>| r.unwrap_or_else(|e| panic!("{e}"));
        // Two commits, so two segments, each with a document to delete.
        run(index
            .index(
                &t,
                vec![plain_doc(
                    "gone-1",
                    "inbox-a",
                    plain(&[("canarygone", 0), ("shared", 1)]),
                )],
            )
            .await);
        run(index
            .index(
                &t,
                vec![
                    plain_doc("kept", "inbox-a", plain(&[("shared", 0), ("kept", 1)])),
                    plain_doc("gone-2", "inbox-b", plain(&[("canarygone", 0)])),
                ],
            )
            .await);
        run(index
            .delete(&t, &DeleteScope::Message("gone-1".into()))
            .await);
        run(index
            .delete(&t, &DeleteScope::Inbox("inbox-b".into()))
            .await);
        let has_canary = |dir: &Path| {
            text_terms(dir)
                .iter()
                .any(|term| term.windows(10).any(|w| w == b"canarygone"))
        };
        assert!(
            has_canary(&tenant_dir),
            "a delete alone leaves the terms in the segment files"
        );
        // tantivy drops a segment whose documents are all deleted at commit: at least the
        // segment holding "kept" and "gone-2" is rewritten.
        let removed = index.compact(&t).await.unwrap_or_else(|e| panic!("{e}"));
        assert!((1..=2).contains(&removed), "{removed}");
        assert!(!has_canary(&tenant_dir));
        assert_eq!(count_marker(&tenant_dir, b"canarygone"), 0);
        assert_eq!(ids(&index, &t, &ix, "shared", &["inbox-a"]).await, ["kept"]);
        assert_eq!(
            ids(&index, &t, &ix, "canarygone", &["inbox-a", "inbox-b"])
                .await
                .len(),
            0
        );
        let stats = index.stats(&t).await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((stats.documents, stats.deleted_documents), (1, 0));
        // Nothing left to do; a tenant without an index has nothing either.
        assert_eq!(index.compact(&t).await.unwrap_or_else(|e| panic!("{e}")), 0);
        let none = tenant("never-indexed");
        assert_eq!(
            index.compact(&none).await.unwrap_or_else(|e| panic!("{e}")),
            0
        );
        assert!(!dir.path().join("index").join("never-indexed").exists());
    }

    /// Occurrences of `marker` (ASCII, any case) in every file under `dir`.
    fn count_marker(dir: &Path, marker: &[u8]) -> usize {
        let mut hits = 0;
        let mut files = 0;
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            let entries = std::fs::read_dir(&d).unwrap_or_else(|e| panic!("read_dir: {e}"));
            for e in entries.filter_map(Result::ok) {
                let path = e.path();
                if path.is_dir() {
                    stack.push(path);
                    continue;
                }
                // A merge may remove a file between listing and reading: its content lives on
                // in the merged segment, which is scanned too.
                let bytes = match std::fs::read(&path) {
                    Ok(b) => b,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => panic!("read: {e}"),
                };
                files += 1;
                hits += bytes
                    .windows(marker.len())
                    .filter(|w| w.eq_ignore_ascii_case(marker))
                    .count();
            }
        }
        assert!(files > 3, "scanned only {files} files");
        hits
    }

    /// Negations of phrases and of several clauses at once, against a reference evaluation
    /// of the same queries over the messages' words. tantivy's exclusion may seek a clause
    /// past a document it was asked about; its phrase scorer then failed a debug assertion
    /// (found by the `search_query` fuzz target with the first query below).
    #[tokio::test]
    async fn negated_phrases_and_many_negations_match_a_reference() {
        const WORDS: [&str; 6] = ["la", "n", "o", "ot", "1", "lo"];
        let (index, _dir) = fresh(Duration::ZERO).await;
        let k = key(3);
        let mut rng = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move |n: usize| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            (rng % n as u64) as usize
        };
        let bodies: Vec<Vec<&str>> = (0..80)
            .map(|_| (0..1 + next(9)).map(|_| WORDS[next(WORDS.len())]).collect())
            .collect();
        let msgs: Vec<Msg> = bodies
            .iter()
            .enumerate()
            .map(|(i, words)| {
                let inbox = if i % 3 == 0 { "inbox-b" } else { "inbox-a" };
                Msg::new(&format!("m{i:02}"), inbox, i as i64, "", &words.join(" "))
            })
            .collect();
        let has =
            |words: &[&str], phrase: &[&str]| words.windows(phrase.len()).any(|w| w == phrase);
        let mut queries: Vec<(Vec<&str>, Vec<Vec<&str>>)> = vec![(
            vec!["la"],
            vec![vec!["n"], vec!["la", "la"], vec!["o"], vec!["ot", "1"]],
        )];
        for _ in 0..150 {
            let positive: Vec<&str> = (0..1 + next(2)).map(|_| WORDS[next(WORDS.len())]).collect();
            let negated = (0..1 + next(4))
                .map(|_| (0..1 + next(3)).map(|_| WORDS[next(WORDS.len())]).collect())
                .collect();
            queries.push((positive, negated));
        }
        let quote = |p: &[&str]| {
            if p.len() == 1 {
                p[0].to_owned()
            } else {
                format!("\"{}\"", p.join(" "))
            }
        };
        for (tenant_name, indexer) in [
            ("negblind", Indexer::Blind(&k)),
            ("negplain", Indexer::PLAINTEXT),
        ] {
            let t = tenant(tenant_name);
            // Two segments, so exclusions run over more than one.
            for half in msgs.chunks(45) {
                conformance::add(&index, &t, &indexer, half).await;
            }
            for (positive, negated) in &queries {
                let mut q = quote(positive);
                for n in negated {
                    q.push_str(" -");
                    q.push_str(&quote(n));
                }
                for allowed in [&["inbox-a", "inbox-b"][..], &["inbox-b"][..]] {
                    let mut expected: Vec<String> = msgs
                        .iter()
                        .zip(&bodies)
                        .filter(|(m, words)| {
                            allowed.contains(&m.inbox.as_str())
                                && has(words, positive)
                                && !negated.iter().any(|n| has(words, n))
                        })
                        .map(|(m, _)| m.id.clone())
                        .collect();
                    expected.sort();
                    let mut got = ids(&index, &t, &indexer, &q, allowed).await;
                    got.sort();
                    assert_eq!(got, expected, "{tenant_name}: {q} in {allowed:?}");
                }
            }
        }
    }

    /// A prefix or fuzzy word that matches more than `MAX_PATTERN_TERMS` terms of a segment
    /// is refused as an invalid request (not searched); narrower ones search.
    #[tokio::test]
    async fn patterns_matching_too_many_terms_are_refused() {
        let (index, _dir) = fresh(Duration::ZERO).await;
        let t = tenant("expansions");
        let words: Vec<String> = (0..=MAX_PATTERN_TERMS)
            .map(|i| format!("zq{i:06}"))
            .collect();
        let m = Msg::new("m1", "inbox-a", 0, "many words", &words.join(" "));
        let ix = Indexer::PLAINTEXT;
        conformance::add(&index, &t, &ix, &[m]).await;
        for q in ["zq*", "body:zq*", "many -zq*", "many OR zq0*", "zq0* many"] {
            let req = conformance::request(&ix, q, &["inbox-a"], 10);
            match index.search(&t, &req).await {
                Err(SearchError::InvalidRequest(why)) => assert_eq!(why, PATTERN_TOO_BROAD, "{q}"),
                other => panic!("{q}: {other:?}"),
            }
        }
        for q in ["zq00001*", "zq000012~", "zq01000~2", "many"] {
            assert_eq!(ids(&index, &t, &ix, q, &["inbox-a"]).await, ["m1"], "{q}");
        }
    }
}
