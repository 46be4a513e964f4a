//! Search core: the tokenizer, blind tokens and the query language. Pure: no index, no I/O.
//!
//! - [`tokenize`]: text → normalized tokens with positions (segmentation, lowercase,
//!   diacritic folding, email addresses), shared by indexing and queries.
//! - [`blind`](mod@blind): per-tenant [`IndexKey`], [`BlindToken`] (truncated HMAC-SHA256 of field and
//!   token), and the plaintext-mode counterpart ([`Mode`], [`IndexTerm`], [`Indexer`]).
//! - [`query`]: the Gmail-like query language → [`Query`] → [`BlindQuery`] /
//!   [`PlaintextQuery`].
//!
//! The process that holds the plaintext (sync worker, API) calls these; the search tier only
//! ever receives their output.

pub mod blind;
mod blind_cache;
pub mod index;
pub mod index_auth;
pub mod query;
pub mod quickwit;
#[cfg(test)]
pub(crate) mod quickwit_double;
pub mod remote;
pub mod service;
pub mod tantivy_index;
pub mod tokenize;

#[cfg(test)]
mod conformance;

pub use blind::{
    BLIND_TOKEN_LEN, BLIND_TOKEN_STR_LEN, BlindToken, BlindedField, Field, FieldTerms,
    INDEX_KEY_LEN, IndexKey, IndexKeyVersion, IndexTerm, IndexedField, Indexer, Mode,
    PlaintextField, blind, blind_text, plaintext_text,
};
pub use index::{
    Cursor, DeleteScope, IndexDoc, IndexStats, SearchError, SearchHit, SearchIndex, SearchPage,
    SearchRequest,
};
pub use query::{
    BlindQuery, IndexQuery, MAX_QUERY_CHARS, PlaintextQuery, Query, QueryError, QueryErrorKind,
    ResolvedQuery, blind_query, index_query, plaintext_query,
};
pub use tantivy_index::{TantivyConfig, TantivyIndex};
pub use tokenize::{Normalization, Token, TokenKind, normalize_tokens, normalize_tokens_with};

#[cfg(test)]
pub(crate) mod tests_support {
    /// A deterministic xorshift64 generator for fuzz-style tests.
    pub struct XorShift(u64);

    impl XorShift {
        pub fn new(seed: u64) -> Self {
            Self(seed.max(1))
        }

        pub fn next(&mut self) -> u64 {
            let mut x = self.0;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            self.0 = x;
            x
        }

        /// A number in `0..n` (`n > 0`).
        pub fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }
}
