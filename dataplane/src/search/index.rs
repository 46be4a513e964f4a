//! The search tier's interface: [`SearchIndex`], implemented by the embedded tantivy backend
//! and by Quickwit.
//!
//! Everything that crosses this interface is what the search tier may hold: ids, dates,
//! flags and index terms ([`IndexTerm`]: blind tokens by default). Plaintext never crosses it
//! in blind mode, and no key ever does; the caller (sync worker, API) turns text into terms
//! before it calls in.
//!
//! Order of results: newest first by message date, ties broken by [`IndexDoc::seq`], a
//! 64-bit value derived from the message id, so the order is total and stable across pages.
//! Pagination is by an opaque [`Cursor`] holding the sort key of the last hit returned.

use std::collections::BTreeSet;

use async_trait::async_trait;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use super::blind::{Field, IndexedField};
use super::query::IndexQuery;
use crate::ids::TenantId;

/// Most hits one search call returns.
pub const MAX_LIMIT: usize = 1000;
/// Most inboxes one search may be restricted to.
pub const MAX_INBOX_FILTER: usize = 10_000;

/// One message as the search tier sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexDoc {
    pub message_id: String,
    pub conversation_id: String,
    pub inbox_id: String,
    /// The message date (epoch ms).
    pub date_ms: i64,
    pub has_attachment: bool,
    /// The index-key version the terms were blinded under (`None` in plaintext mode).
    pub key_version: Option<u32>,
    /// Terms per field, with positions. A field may appear at most once.
    pub fields: Vec<IndexedField>,
}

impl IndexDoc {
    /// The tie-breaker of the result order (see the module docs).
    pub fn seq(&self) -> u64 {
        seq_of(&self.message_id)
    }

    /// The terms of one field, if the document has it.
    pub fn field(&self, field: Field) -> Option<&IndexedField> {
        self.fields.iter().find(|f| f.field == field)
    }
}

/// What to remove from the index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeleteScope {
    Message(String),
    Conversation(String),
    Inbox(String),
}

/// The position after which the next page starts: the sort key of the last hit returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Cursor {
    pub date_ms: i64,
    pub seq: u64,
}

impl Cursor {
    const LEN: usize = 17;
    const FORMAT: u8 = 1;

    /// The opaque string form handed to clients.
    pub fn encode(&self) -> String {
        let mut bytes = Vec::with_capacity(Self::LEN);
        bytes.push(Self::FORMAT);
        bytes.extend_from_slice(&self.date_ms.to_be_bytes());
        bytes.extend_from_slice(&self.seq.to_be_bytes());
        URL_SAFE_NO_PAD.encode(bytes)
    }

    /// Parses [`Cursor::encode`]'s output.
    pub fn decode(s: &str) -> Result<Cursor, SearchError> {
        let bytes = URL_SAFE_NO_PAD
            .decode(s)
            .map_err(|_| SearchError::InvalidCursor)?;
        if bytes.len() != Self::LEN || bytes[0] != Self::FORMAT {
            return Err(SearchError::InvalidCursor);
        }
        let mut date = [0u8; 8];
        let mut seq = [0u8; 8];
        date.copy_from_slice(&bytes[1..9]);
        seq.copy_from_slice(&bytes[9..17]);
        Ok(Cursor {
            date_ms: i64::from_be_bytes(date),
            seq: u64::from_be_bytes(seq),
        })
    }
}

/// One search call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SearchRequest {
    pub query: IndexQuery,
    /// The inboxes the caller may see. Part of the index query itself; empty means no hit.
    pub inboxes: BTreeSet<String>,
    /// At most [`MAX_LIMIT`].
    pub limit: usize,
    /// Continue after this position (from the previous page's `next`).
    pub after: Option<Cursor>,
}

/// One hit: ids and the sort key only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SearchHit {
    pub message_id: String,
    pub conversation_id: String,
    pub inbox_id: String,
    pub date_ms: i64,
    pub seq: u64,
}

impl SearchHit {
    pub fn cursor(&self) -> Cursor {
        Cursor {
            date_ms: self.date_ms,
            seq: self.seq,
        }
    }
}

/// A page of hits, newest first.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SearchPage {
    pub hits: Vec<SearchHit>,
    /// Where the next page starts; `None` when this page is the last.
    pub next: Option<Cursor>,
}

/// Size of a tenant's index.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize)]
pub struct IndexStats {
    /// Live (searchable, not deleted) documents.
    pub documents: u64,
    /// Deleted documents still present in segment files (until a merge).
    pub deleted_documents: u64,
    pub segments: u64,
    /// Bytes on disk (0 when the backend cannot tell).
    pub bytes: u64,
}

/// Why a search-tier call failed. Carries ids and reasons, never terms or content.
#[derive(Debug, thiserror::Error)]
pub enum SearchError {
    #[error("search request is invalid: {0}")]
    InvalidRequest(&'static str),
    #[error("invalid search cursor")]
    InvalidCursor,
    #[error("the index of tenant {tenant} is held by another process ({holder})")]
    Locked { tenant: String, holder: String },
    #[error("the search backend is unavailable: {0}")]
    Unavailable(String),
    #[error("the search backend failed: {0}")]
    Backend(String),
}

impl SearchError {
    /// Whether retrying the same call later may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            SearchError::Unavailable(_) | SearchError::Locked { .. }
        )
    }
}

/// The search tier.
#[async_trait]
pub trait SearchIndex: Send + Sync + 'static {
    /// `tantivy` or `quickwit`.
    fn backend(&self) -> &'static str;

    /// Adds or replaces documents (idempotent by message id). Visible to searches within the
    /// backend's commit interval, or at once after [`SearchIndex::flush`].
    async fn index(&self, tenant: &TenantId, docs: Vec<IndexDoc>) -> Result<(), SearchError>;

    /// Makes everything indexed so far searchable.
    async fn flush(&self, tenant: &TenantId) -> Result<(), SearchError>;

    /// Removes documents; they are absent from every search that starts after this returns.
    async fn delete(&self, tenant: &TenantId, scope: &DeleteScope) -> Result<(), SearchError>;

    /// Removes the tenant's whole index.
    async fn drop_tenant(&self, tenant: &TenantId) -> Result<(), SearchError>;

    /// Searches the tenant's index, restricted to `request.inboxes` inside the index query.
    async fn search(
        &self,
        tenant: &TenantId,
        request: &SearchRequest,
    ) -> Result<SearchPage, SearchError>;

    async fn stats(&self, tenant: &TenantId) -> Result<IndexStats, SearchError>;

    /// Removes deleted documents from the tenant's index files for good, so nothing of a
    /// deleted message (not even its blind tokens or, in plaintext mode, its terms) stays on
    /// disk: tantivy rewrites the segments holding deleted documents and deletes the old
    /// files; Quickwit's delete tasks rewrite its splits themselves. Returns how many deleted
    /// documents were removed. Searches keep working throughout.
    async fn compact(&self, tenant: &TenantId) -> Result<u64, SearchError>;

    /// Periodic housekeeping the indexing processes run (Quickwit: dropping delete
    /// tombstones whose delete task has been applied). Returns how many items it cleared.
    async fn maintain(&self) -> Result<u64, SearchError> {
        Ok(0)
    }
}

/// Checks what every backend refuses before it touches an index.
/// Why a search request is refused ([`SearchError::InvalidRequest`]): fixed texts that name
/// no content, so they may reach the caller, also from the index role over gRPC.
pub const BAD_LIMIT: &str = "limit must be between 1 and 1000";
pub const TOO_MANY_INBOXES: &str = "too many inboxes in the filter (at most 10000)";
pub const PATTERN_NEEDS_PLAINTEXT: &str = "prefix and fuzzy searches need plaintext terms";
pub const EMPTY_PATTERN: &str = "a prefix or fuzzy term is empty";
pub const BAD_FUZZY_DISTANCE: &str = "fuzzy distance must be 1 or 2";
pub const PATTERN_TOO_BROAD: &str =
    "a prefix or fuzzy word matches too many words of the index; type more of it";
/// Every reason above.
pub const INVALID_REQUEST_REASONS: [&str; 6] = [
    BAD_LIMIT,
    TOO_MANY_INBOXES,
    PATTERN_NEEDS_PLAINTEXT,
    EMPTY_PATTERN,
    BAD_FUZZY_DISTANCE,
    PATTERN_TOO_BROAD,
];

pub fn validate_request(request: &SearchRequest) -> Result<(), SearchError> {
    if request.limit == 0 || request.limit > MAX_LIMIT {
        return Err(SearchError::InvalidRequest(BAD_LIMIT));
    }
    if request.inboxes.len() > MAX_INBOX_FILTER {
        return Err(SearchError::InvalidRequest(TOO_MANY_INBOXES));
    }
    check_patterns(&request.query)
}

/// Prefix and fuzzy nodes need plaintext terms (a blind token is a hash of a whole word),
/// a non-empty term, and 1 or 2 edits.
fn check_patterns(q: &IndexQuery) -> Result<(), SearchError> {
    use super::blind::IndexTerm;
    match q {
        IndexQuery::And(c) | IndexQuery::Or(c) => c.iter().try_for_each(check_patterns),
        IndexQuery::Not(inner) => check_patterns(inner),
        IndexQuery::Prefix { term, .. } | IndexQuery::Fuzzy { term, .. } => match term {
            IndexTerm::Blind(_) => Err(SearchError::InvalidRequest(PATTERN_NEEDS_PLAINTEXT)),
            IndexTerm::Plain(t) if t.is_empty() => Err(SearchError::InvalidRequest(EMPTY_PATTERN)),
            IndexTerm::Plain(_) => match q {
                IndexQuery::Fuzzy { distance, .. } if !(1..=2).contains(distance) => {
                    Err(SearchError::InvalidRequest(BAD_FUZZY_DISTANCE))
                }
                _ => Ok(()),
            },
        },
        _ => Ok(()),
    }
}

/// 64 bits of the message id: the UUID's last 8 bytes when it is one, else FNV-1a of the
/// id (stable across processes and versions, unlike `DefaultHasher`).
pub fn seq_of(message_id: &str) -> u64 {
    if let Ok(uuid) = uuid::Uuid::parse_str(message_id) {
        let bytes = uuid.as_bytes();
        let mut low = [0u8; 8];
        low.copy_from_slice(&bytes[8..]);
        return u64::from_be_bytes(low);
    }
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in message_id.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_round_trips_and_rejects_garbage() {
        let c = Cursor {
            date_ms: -5,
            seq: u64::MAX,
        };
        assert_eq!(Cursor::decode(&c.encode()).ok(), Some(c));
        for bad in ["", "AAAA", "!!!", &"A".repeat(40)] {
            assert!(matches!(
                Cursor::decode(bad),
                Err(SearchError::InvalidCursor)
            ));
        }
        let mut other_format = URL_SAFE_NO_PAD.decode(c.encode()).unwrap_or_default();
        other_format[0] = 2;
        assert!(Cursor::decode(&URL_SAFE_NO_PAD.encode(other_format)).is_err());
    }

    #[test]
    fn seq_uses_uuid_low_bits_and_is_stable_otherwise() {
        let id = "0190f3a2-1111-4222-8333-444455556666";
        assert_eq!(seq_of(id), 0x8333_4444_5555_6666);
        assert_eq!(seq_of("abc"), seq_of("abc"));
        assert_ne!(seq_of("abc"), seq_of("abd"));
    }

    #[test]
    fn requests_out_of_bounds_are_refused() {
        let mut r = SearchRequest {
            query: IndexQuery::HasAttachment,
            inboxes: BTreeSet::new(),
            limit: 0,
            after: None,
        };
        assert!(validate_request(&r).is_err());
        r.limit = MAX_LIMIT + 1;
        assert!(validate_request(&r).is_err());
        r.limit = 10;
        assert!(validate_request(&r).is_ok());
        r.inboxes = (0..=MAX_INBOX_FILTER).map(|i| i.to_string()).collect();
        assert!(validate_request(&r).is_err());
    }
}
