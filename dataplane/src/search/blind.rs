//! Blind tokens: truncated HMAC-SHA256 of normalized tokens under a per-tenant index key.
//!
//! # MAC input
//!
//! ```text
//! "helpr/blind/v1"
//! u32be(len(field name)) field name        (Field::name: "subject", "from", ...)
//! u32be(len(token)) token                  (UTF-8 bytes of the normalized token)
//! ```
//!
//! The domain string keeps these MACs apart from any other use of the key; the length prefixes
//! make the (field, token) encoding unambiguous; the field name makes "ann" in `from` and "ann"
//! in `body` different tokens, so the index cannot tell that the same word occurs in both.
//!
//! # Truncation to 128 bits
//!
//! A [`BlindToken`] is the first 16 bytes of the 32-byte tag. Tokens only need to be unique
//! within one tenant's vocabulary: with 128 bits, a collision between any two of 2^40 distinct
//! (field, token) pairs has probability below 2^-48, and a collision only adds a false hit that
//! the decrypting re-check would show. Forging or inverting a token needs the key either way.
//! Half the length halves the index's term dictionary; the string form is 22 base64url chars.
//!
//! # Leakage
//!
//! Blind tokens are deterministic: the search tier learns which messages share a token, how
//! often each token occurs and where, but not the token (without the key). That is the price of
//! searching without plaintext.
//!
//! # Keys
//!
//! [`IndexKey`] is 32 bytes in a [`Zeroizing`] buffer, per tenant and [versioned](IndexKeyVersion),
//! wrapped by the KMS like a DEK. It implements neither `Debug`, `Display` nor `Clone`. The HMAC
//! state derived from it (the SHA-256 states after the inner and outer key blocks, from which
//! each token's MAC takes two compressions) lives only for the duration of one call, in
//! [`Zeroizing`] buffers; the copies made per token live on the stack and are not wiped.
//!
//! Each key also remembers the blind tokens it computed for indexing, in a bounded cache in
//! memory (see [`super::blind_cache`]): the tokens of a text come from there when they
//! occurred before. The cache lives and dies with its key and zeroes its tokens.

use std::collections::HashMap;
use std::fmt;
use std::num::NonZeroU32;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use zeroize::Zeroizing;

use super::blind_cache::BlindCache;
use super::tokenize::{Normalization, expected_tokens, for_each_token, normalize_tokens};
use crate::crypto::CryptoError;

/// Length of an index key in bytes.
pub const INDEX_KEY_LEN: usize = 32;
/// Length of a blind token in bytes (HMAC-SHA256 truncated to 128 bits).
pub const BLIND_TOKEN_LEN: usize = 16;
/// Length of a blind token's base64url string form.
pub const BLIND_TOKEN_STR_LEN: usize = 22;
/// Domain separation prefix of every blind-token MAC input.
pub const BLIND_DOMAIN: &[u8] = b"helpr/blind/v1";

/// A searchable text field of a message. [`Field::name`] is stable: it is part of every blind
/// token, so renaming one changes every token of that field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Field {
    Subject,
    /// Sender addresses and display names.
    From,
    /// Recipient addresses and display names (To and Cc).
    To,
    /// Body text.
    Body,
    /// Names of attachments.
    AttachmentName,
}

impl Field {
    /// Every text field, in a fixed order (the fields an unfielded query term searches).
    pub const ALL: [Field; 5] = [
        Field::Subject,
        Field::From,
        Field::To,
        Field::Body,
        Field::AttachmentName,
    ];

    /// The field's place in [`Field::ALL`].
    pub const fn ordinal(self) -> usize {
        match self {
            Field::Subject => 0,
            Field::From => 1,
            Field::To => 2,
            Field::Body => 3,
            Field::AttachmentName => 4,
        }
    }

    /// The stable name, used in the MAC input and as the index field name.
    pub const fn name(self) -> &'static str {
        match self {
            Field::Subject => "subject",
            Field::From => "from",
            Field::To => "to",
            Field::Body => "body",
            Field::AttachmentName => "attachment_name",
        }
    }

    /// The field for a stable name.
    pub fn from_name(name: &str) -> Option<Field> {
        Field::ALL.into_iter().find(|f| f.name() == name)
    }

    /// The query-language operator for this field (`from:`, ..., `filename:` as in Gmail).
    pub const fn operator(self) -> &'static str {
        match self {
            Field::AttachmentName => "filename",
            other => other.name(),
        }
    }

    /// The field for a query operator (ASCII case-insensitive), e.g. `From` or `filename`.
    pub fn from_operator(op: &str) -> Option<Field> {
        Field::ALL
            .into_iter()
            .find(|f| f.operator().eq_ignore_ascii_case(op))
    }
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Version of a tenant's index key: 1, 2, 3, ... (never 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IndexKeyVersion(NonZeroU32);

impl IndexKeyVersion {
    /// The first version of every tenant.
    pub const FIRST: IndexKeyVersion = IndexKeyVersion(NonZeroU32::MIN);

    /// `None` for 0.
    pub fn new(v: u32) -> Option<Self> {
        NonZeroU32::new(v).map(Self)
    }

    pub fn get(self) -> u32 {
        self.0.get()
    }

    /// The version after this one, `None` on overflow.
    pub fn next(self) -> Option<Self> {
        self.0.checked_add(1).map(Self)
    }
}

impl fmt::Display for IndexKeyVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "v{}", self.0)
    }
}

/// A tenant's 256-bit blind-index key and its version.
///
/// Like [`crate::crypto::Dek`], it cannot be printed or copied by accident:
///
/// ```compile_fail,E0277
/// use helpr_dataplane::search::{IndexKey, IndexKeyVersion};
/// let key = IndexKey::generate(IndexKeyVersion::FIRST).unwrap();
/// println!("{:?}", key);
/// ```
///
/// ```compile_fail,E0599
/// use helpr_dataplane::search::{IndexKey, IndexKeyVersion};
/// let key = IndexKey::generate(IndexKeyVersion::FIRST).unwrap();
/// let copy = key.clone();
/// ```
pub struct IndexKey {
    version: IndexKeyVersion,
    /// The folding rules of the terms blinded under this key (and of its queries).
    normalization: Normalization,
    bytes: Zeroizing<[u8; INDEX_KEY_LEN]>,
    /// Tokens already blinded under this key (bounded, memory only, zeroed when dropped).
    cache: BlindCache,
}

impl IndexKey {
    /// 32 fresh bytes from the operating system's CSPRNG.
    pub fn generate(version: IndexKeyVersion) -> Result<Self, CryptoError> {
        let mut bytes = Zeroizing::new([0u8; INDEX_KEY_LEN]);
        getrandom::getrandom(bytes.as_mut()).map_err(|_| CryptoError::Rng)?;
        Ok(Self {
            version,
            normalization: Normalization::CURRENT,
            bytes,
            cache: BlindCache::new(),
        })
    }

    /// Takes key bytes handed back by a KMS. Fails unless there are exactly 32.
    pub fn from_slice(version: IndexKeyVersion, bytes: &[u8]) -> Result<Self, CryptoError> {
        let array: [u8; INDEX_KEY_LEN] = bytes.try_into().map_err(|_| CryptoError::KeyLength)?;
        Ok(Self {
            version,
            normalization: Normalization::CURRENT,
            bytes: Zeroizing::new(array),
            cache: BlindCache::new(),
        })
    }

    /// The same key for terms folded by `normalization` (a key is made with the current
    /// rules; a stored key says which rules its terms were made with).
    pub fn with_normalization(mut self, normalization: Normalization) -> Self {
        self.normalization = normalization;
        self
    }

    pub fn version(&self) -> IndexKeyVersion {
        self.version
    }

    /// The folding rules of the terms blinded under this key.
    pub fn normalization(&self) -> Normalization {
        self.normalization
    }

    /// The raw key bytes, for a KMS to wrap. Keep the borrow short.
    pub fn expose_bytes(&self) -> &[u8; INDEX_KEY_LEN] {
        &self.bytes
    }

    pub(crate) fn mac(&self) -> TokenMac {
        TokenMac::new(&self.bytes)
    }

    /// The blind tokens this key has already computed for indexing.
    pub(crate) fn cache(&self) -> &BlindCache {
        &self.cache
    }

    /// Forgets every remembered blind token of this key (they are computed again as needed).
    pub fn clear_cache(&self) {
        self.cache.clear();
    }
}

/// The HMAC-SHA256 state of one index key (the compressed inner and outer key blocks), built
/// once per text or query, not per token.
pub(crate) struct TokenMac {
    inner: Zeroizing<[u32; 8]>,
    outer: Zeroizing<[u32; 8]>,
}

/// SHA-256's initial state.
const SHA256_IV: [u32; 8] = [
    0x6a09_e667,
    0xbb67_ae85,
    0x3c6e_f372,
    0xa54f_f53a,
    0x510e_527f,
    0x9b05_688c,
    0x1f83_d9ab,
    0x5be0_cd19,
];
const SHA256_BLOCK: usize = 64;

fn compress(state: &mut [u32; 8], block: &[u8]) {
    let block = sha2::digest::generic_array::GenericArray::from_slice(block);
    sha2::compress256(state, std::slice::from_ref(block));
}

impl TokenMac {
    fn new(key: &[u8; INDEX_KEY_LEN]) -> Self {
        let mut block = Zeroizing::new([0u8; SHA256_BLOCK]);
        let state = |pad: u8, block: &mut [u8; SHA256_BLOCK]| {
            block.fill(pad);
            for (b, k) in block.iter_mut().zip(key) {
                *b ^= k;
            }
            let mut state = Zeroizing::new(SHA256_IV);
            compress(&mut state, block.as_ref());
            state
        };
        let inner = state(0x36, &mut block);
        let outer = state(0x5c, &mut block);
        Self { inner, outer }
    }

    pub(crate) fn blind(&self, field: Field, token: &str) -> BlindToken {
        self.field(field).blind(token)
    }

    /// The MAC input up to the token for `field`, to blind many tokens of one field.
    pub(crate) fn field(&self, field: Field) -> FieldMac<'_> {
        let name = field.name().as_bytes();
        let mut prefix = Vec::with_capacity(BLIND_DOMAIN.len() + 4 + name.len());
        prefix.extend_from_slice(BLIND_DOMAIN);
        prefix.extend_from_slice(&len_prefix(name.len()));
        prefix.extend_from_slice(name);
        FieldMac { mac: self, prefix }
    }
}

/// One key's HMAC state and one field's MAC input prefix (domain and field name).
pub(crate) struct FieldMac<'m> {
    mac: &'m TokenMac,
    prefix: Vec<u8>,
}

impl FieldMac<'_> {
    /// HMAC-SHA256(key, prefix || u32be(len(token)) || token), truncated to 128 bits.
    pub(crate) fn blind(&self, token: &str) -> BlindToken {
        // Inner hash: the message after the (already compressed) key block, padded.
        let mut state = *self.mac.inner;
        let mut block = [0u8; SHA256_BLOCK];
        let mut filled = 0;
        let mut absorb = |bytes: &[u8], state: &mut [u32; 8], block: &mut [u8; SHA256_BLOCK]| {
            for chunk in bytes.chunks(SHA256_BLOCK) {
                let mut rest = chunk;
                while !rest.is_empty() {
                    let take = rest.len().min(SHA256_BLOCK - filled);
                    block[filled..filled + take].copy_from_slice(&rest[..take]);
                    filled += take;
                    rest = &rest[take..];
                    if filled == SHA256_BLOCK {
                        compress(state, block);
                        filled = 0;
                    }
                }
            }
        };
        absorb(&self.prefix, &mut state, &mut block);
        absorb(&len_prefix(token.len()), &mut state, &mut block);
        absorb(token.as_bytes(), &mut state, &mut block);
        let message_len = self.prefix.len() + 4 + token.len();
        let bits = ((SHA256_BLOCK + message_len) as u64).wrapping_mul(8);
        absorb(&[0x80], &mut state, &mut block);
        let zeros = (SHA256_BLOCK + 56 - (message_len + 1) % SHA256_BLOCK) % SHA256_BLOCK;
        absorb(&[0u8; SHA256_BLOCK][..zeros], &mut state, &mut block);
        absorb(&bits.to_be_bytes(), &mut state, &mut block);
        debug_assert_eq!(filled, 0);
        // Outer hash: the inner digest after the compressed outer key block, in one block.
        let mut outer = *self.mac.outer;
        let mut block = [0u8; SHA256_BLOCK];
        for (i, word) in state.iter().enumerate() {
            block[4 * i..4 * i + 4].copy_from_slice(&word.to_be_bytes());
        }
        block[32] = 0x80;
        block[56..].copy_from_slice(&(((SHA256_BLOCK + 32) as u64) * 8).to_be_bytes());
        compress(&mut outer, &block);
        let mut out = [0u8; BLIND_TOKEN_LEN];
        for (i, word) in outer.iter().take(BLIND_TOKEN_LEN / 4).enumerate() {
            out[4 * i..4 * i + 4].copy_from_slice(&word.to_be_bytes());
        }
        BlindToken(out)
    }
}

/// u32 big-endian length. Normalized tokens are at most a few hundred bytes; a string of 4 GiB
/// or more (never produced by the tokenizer) saturates.
fn len_prefix(len: usize) -> [u8; 4] {
    u32::try_from(len).unwrap_or(u32::MAX).to_be_bytes()
}

/// The blind token of one normalized token in one field.
///
/// `token` must already be normalized (an output of [`normalize_tokens`]); this function hashes
/// exactly the bytes it is given.
pub fn blind(key: &IndexKey, field: Field, token: &str) -> BlindToken {
    key.mac().blind(field, token)
}

/// A truncated HMAC-SHA256 (128 bits) of a field name and a normalized token.
///
/// Not secret (the search tier stores it), so it prints, as its 22-character base64url form.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlindToken([u8; BLIND_TOKEN_LEN]);

impl BlindToken {
    pub fn from_bytes(bytes: [u8; BLIND_TOKEN_LEN]) -> Self {
        Self(bytes)
    }

    pub fn as_bytes(&self) -> &[u8; BLIND_TOKEN_LEN] {
        &self.0
    }

    /// The index form: 22 characters of unpadded base64url (`A-Z a-z 0-9 - _`).
    pub fn to_base64url(&self) -> String {
        URL_SAFE_NO_PAD.encode(self.0)
    }

    /// 32 lowercase hex digits.
    pub fn to_hex(&self) -> String {
        use fmt::Write as _;
        let mut out = String::with_capacity(2 * BLIND_TOKEN_LEN);
        for b in self.0 {
            let _ = write!(out, "{b:02x}");
        }
        out
    }

    /// Parses the base64url form; `None` unless it is exactly 16 bytes of unpadded base64url.
    pub fn from_base64url(s: &str) -> Option<Self> {
        let bytes = URL_SAFE_NO_PAD.decode(s).ok()?;
        let array: [u8; BLIND_TOKEN_LEN] = bytes.try_into().ok()?;
        Some(Self(array))
    }
}

impl fmt::Display for BlindToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_base64url())
    }
}

impl fmt::Debug for BlindToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BlindToken({})", self.to_base64url())
    }
}

/// How a tenant's index stores terms.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Terms are [`BlindToken`]s: the index holds no plaintext (the default).
    #[default]
    Blind,
    /// Terms are the normalized tokens themselves (opt-in, allows prefix and fuzzy search).
    Plaintext,
}

impl Mode {
    pub const fn as_str(self) -> &'static str {
        match self {
            Mode::Blind => "blind",
            Mode::Plaintext => "plaintext",
        }
    }

    /// The mode [`Mode::as_str`] names.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "blind" => Some(Mode::Blind),
            "plaintext" => Some(Mode::Plaintext),
            _ => None,
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One index term in either mode.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum IndexTerm {
    Blind(BlindToken),
    Plain(String),
}

impl IndexTerm {
    /// The string a backend stores: base64url for blind tokens, the token in plaintext mode.
    pub fn to_index_string(&self) -> String {
        match self {
            IndexTerm::Blind(t) => t.to_base64url(),
            IndexTerm::Plain(s) => s.clone(),
        }
    }
}

impl fmt::Display for IndexTerm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IndexTerm::Blind(t) => fmt::Display::fmt(t, f),
            IndexTerm::Plain(s) => f.write_str(s),
        }
    }
}

/// The terms of one field of one message, each with its position (see
/// [`super::tokenize`] for positions: address parts share one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldTerms<T> {
    pub field: Field,
    pub tokens: Vec<(T, u32)>,
}

/// A field's blind tokens.
pub type BlindedField = FieldTerms<BlindToken>;
/// A field's normalized plaintext tokens.
pub type PlaintextField = FieldTerms<String>;
/// A field's terms in the tenant's mode.
pub type IndexedField = FieldTerms<IndexTerm>;

/// Normalizes `text` and blinds every token for `field`. A token that occurs many times is
/// hashed once.
pub fn blind_text(key: &IndexKey, field: Field, text: &str) -> BlindedField {
    FieldTerms {
        field,
        tokens: blind_tokens(key, field, text, |t| t),
    }
}

/// The blind tokens of `text` for `field` with their positions, each mapped by `wrap`.
///
/// Tokens come from the key's cache when it has them (see [`BlindCache`]); if another thread
/// is using the cache, each distinct token of the text is hashed once instead.
fn blind_tokens<T>(
    key: &IndexKey,
    field: Field,
    text: &str,
    wrap: impl Fn(BlindToken) -> T,
) -> Vec<(T, u32)> {
    let key_mac = key.mac();
    let mac = key_mac.field(field);
    let mut out = Vec::with_capacity(expected_tokens(text));
    match key.cache().try_lock() {
        Some(mut cache) => for_each_token(text, key.normalization, |token, position, _| {
            let b = cache.get_or_blind(field, token, || mac.blind(token));
            out.push((wrap(b), position));
        }),
        None => {
            let mut seen: HashMap<String, BlindToken> = HashMap::new();
            for_each_token(text, key.normalization, |token, position, _| {
                let b = match seen.get(token) {
                    Some(b) => *b,
                    None => {
                        let b = mac.blind(token);
                        seen.insert(token.to_owned(), b);
                        b
                    }
                };
                out.push((wrap(b), position));
            });
        }
    }
    out
}

/// Normalizes `text`: the plaintext-mode counterpart of [`blind_text`].
pub fn plaintext_text(field: Field, text: &str) -> PlaintextField {
    FieldTerms {
        field,
        tokens: normalize_tokens(text)
            .into_iter()
            .map(|t| (t.text, t.position))
            .collect(),
    }
}

/// Turns text into index terms in one mode: blind (with the tenant's key, and the key's
/// folding rules) or plaintext (with the given folding rules).
#[derive(Clone, Copy)]
pub enum Indexer<'k> {
    Blind(&'k IndexKey),
    Plaintext(Normalization),
}

impl Indexer<'_> {
    /// Plaintext terms made with this build's folding rules.
    pub const PLAINTEXT: Indexer<'static> = Indexer::Plaintext(Normalization::CURRENT);

    pub fn mode(&self) -> Mode {
        match self {
            Indexer::Blind(_) => Mode::Blind,
            Indexer::Plaintext(_) => Mode::Plaintext,
        }
    }

    /// The version of the key terms are blinded under; `None` in plaintext mode.
    pub fn key_version(&self) -> Option<IndexKeyVersion> {
        match self {
            Indexer::Blind(key) => Some(key.version()),
            Indexer::Plaintext(_) => None,
        }
    }

    /// The folding rules of the terms this indexer makes.
    pub fn normalization(&self) -> Normalization {
        match self {
            Indexer::Blind(key) => key.normalization(),
            Indexer::Plaintext(n) => *n,
        }
    }

    /// Normalizes `text` into index terms for `field`.
    pub fn index_text(&self, field: Field, text: &str) -> IndexedField {
        match self {
            Indexer::Blind(key) => FieldTerms {
                field,
                tokens: blind_tokens(key, field, text, IndexTerm::Blind),
            },
            Indexer::Plaintext(n) => {
                let mut tokens = Vec::with_capacity(expected_tokens(text));
                for_each_token(text, *n, |token, position, _| {
                    tokens.push((IndexTerm::Plain(token.to_owned()), position));
                });
                FieldTerms { field, tokens }
            }
        }
    }

    /// The index term of one already normalized token.
    pub fn term(&self, field: Field, token: &str) -> IndexTerm {
        match self {
            Indexer::Blind(key) => IndexTerm::Blind(blind(key, field, token)),
            Indexer::Plaintext(_) => IndexTerm::Plain(token.to_owned()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(byte: u8) -> IndexKey {
        match IndexKey::from_slice(IndexKeyVersion::FIRST, &[byte; INDEX_KEY_LEN]) {
            Ok(k) => k,
            Err(e) => panic!("{e}"),
        }
    }

    fn counting_key() -> IndexKey {
        let bytes: Vec<u8> = (0..32).collect();
        IndexKey::from_slice(IndexKeyVersion::FIRST, &bytes).unwrap()
    }

    #[test]
    fn blind_token_matches_known_answer_for_the_documented_mac_input() {
        // Computed independently: HMAC-SHA256(key = 00..1f, "helpr/blind/v1" || u32be(7) ||
        // "subject" || u32be(5) || "hello"), first 16 bytes.
        let k = counting_key();
        let t = blind(&k, Field::Subject, "hello");
        assert_eq!(t.to_hex(), "dd068afb5717282356e2b4a56350cf94");
        assert_eq!(t.to_base64url(), "3QaK-1cXKCNW4rSlY1DPlA");
        let t = blind(&k, Field::Body, "müller");
        assert_eq!(t.to_hex(), "67dfee2534ab686a2f49e875490050fa");
    }

    /// The MAC over precomputed key states equals a plain HMAC-SHA256 (ring's) of the
    /// documented input, for tokens of every length around the block boundaries.
    #[test]
    fn blind_token_equals_ring_hmac_for_all_lengths() {
        let mut rng = crate::search::tests_support::XorShift::new(0x4a4c);
        for _ in 0..20 {
            let mut key_bytes = [0u8; INDEX_KEY_LEN];
            for b in &mut key_bytes {
                *b = rng.next() as u8;
            }
            let k = IndexKey::from_slice(IndexKeyVersion::FIRST, &key_bytes).unwrap();
            let ring_key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &key_bytes);
            for len in 0..300 {
                let token: String = (0..len)
                    .map(|_| char::from(b'a' + rng.below(26) as u8))
                    .collect();
                for field in Field::ALL {
                    let name = field.name().as_bytes();
                    let mut input = BLIND_DOMAIN.to_vec();
                    input.extend_from_slice(&(name.len() as u32).to_be_bytes());
                    input.extend_from_slice(name);
                    input.extend_from_slice(&(token.len() as u32).to_be_bytes());
                    input.extend_from_slice(token.as_bytes());
                    let tag = ring::hmac::sign(&ring_key, &input);
                    assert_eq!(
                        blind(&k, field, &token).as_bytes()[..],
                        tag.as_ref()[..BLIND_TOKEN_LEN],
                        "{field} token of {len} bytes"
                    );
                }
            }
        }
    }

    #[test]
    fn blind_is_deterministic() {
        let k = key(7);
        assert_eq!(
            blind(&k, Field::Body, "invoice"),
            blind(&k, Field::Body, "invoice")
        );
        assert_eq!(
            blind_text(&k, Field::Body, "Invoice 42"),
            blind_text(&k, Field::Body, "invoice 42")
        );
    }

    #[test]
    fn different_field_gives_different_token() {
        let k = key(7);
        let mut all: Vec<BlindToken> = Field::ALL
            .into_iter()
            .map(|f| blind(&k, f, "ann"))
            .collect();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), Field::ALL.len());
    }

    #[test]
    fn different_key_gives_different_token() {
        assert_ne!(
            blind(&key(1), Field::Body, "invoice"),
            blind(&key(2), Field::Body, "invoice")
        );
    }

    #[test]
    fn different_token_gives_different_blind_token() {
        let k = key(1);
        assert_ne!(blind(&k, Field::Body, "a"), blind(&k, Field::Body, "b"));
        assert_ne!(blind(&k, Field::Body, ""), blind(&k, Field::Body, "a"));
    }

    #[test]
    fn blind_token_is_truncated_to_128_bits() {
        let t = blind(&key(3), Field::Subject, "x");
        assert_eq!(t.as_bytes().len(), 16);
        assert_eq!(t.to_base64url().len(), BLIND_TOKEN_STR_LEN);
        assert_eq!(t.to_hex().len(), 32);
    }

    #[test]
    fn blind_token_string_is_base64url_and_round_trips() {
        let t = blind(&key(3), Field::Subject, "round trip");
        let s = t.to_base64url();
        assert!(
            s.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        );
        assert_eq!(BlindToken::from_base64url(&s), Some(t));
        assert_eq!(t.to_string(), s);
        assert_eq!(format!("{t:?}"), format!("BlindToken({s})"));
        assert_eq!(BlindToken::from_base64url("short"), None);
        assert_eq!(BlindToken::from_base64url(&format!("{s}AA")), None);
        assert_eq!(BlindToken::from_base64url("!!!!!!!!!!!!!!!!!!!!!!"), None);
    }

    #[test]
    fn blind_form_never_contains_the_plaintext() {
        let k = key(9);
        let secret_words = ["canary", "zebra", "ann", "invoice", "müller", "a", "1"];
        for field in Field::ALL {
            let blinded = blind_text(&k, field, &secret_words.join(" "));
            for (token, _) in &blinded.tokens {
                // Single characters are too short to say anything; check the longer ones.
                for word in secret_words.iter().filter(|w| w.len() >= 3) {
                    let folded = crate::search::tokenize::fold(word, Normalization::CURRENT);
                    assert!(!token.to_base64url().to_lowercase().contains(&folded));
                    assert!(!token.to_hex().contains(&folded));
                }
            }
        }
    }

    #[test]
    fn blind_text_keeps_positions_of_the_tokenizer() {
        let k = key(4);
        let b = blind_text(&k, Field::From, "Ann Lee <ann@example.com>");
        let positions: Vec<u32> = b.tokens.iter().map(|(_, p)| *p).collect();
        let expected: Vec<u32> = normalize_tokens("Ann Lee <ann@example.com>")
            .iter()
            .map(|t| t.position)
            .collect();
        assert_eq!(positions, expected);
        assert_eq!(b.tokens[0].0, blind(&k, Field::From, "ann"));
        assert_eq!(b.tokens[2].0, blind(&k, Field::From, "ann@example.com"));
        assert_eq!(b.field, Field::From);
    }

    #[test]
    fn repeated_tokens_get_the_same_blind_token() {
        let b = blind_text(&key(4), Field::Body, "spam eggs spam");
        assert_eq!(b.tokens[0].0, b.tokens[2].0);
        assert_ne!(b.tokens[0].0, b.tokens[1].0);
        assert_eq!(b.tokens[2].1, 2);
    }

    #[test]
    fn plaintext_mode_emits_the_normalized_tokens() {
        let p = plaintext_text(Field::Subject, "Re: Müller's Invoice");
        assert_eq!(
            p.tokens,
            [
                ("re".to_owned(), 0),
                ("mullers".to_owned(), 1),
                ("invoice".to_owned(), 2)
            ]
        );
        let terms = Indexer::PLAINTEXT.index_text(Field::Subject, "Re: Invoice");
        assert_eq!(
            terms
                .tokens
                .iter()
                .map(|(t, p)| (t.to_index_string(), *p))
                .collect::<Vec<_>>(),
            [("re".to_owned(), 0), ("invoice".to_owned(), 1)]
        );
    }

    #[test]
    fn indexer_blind_mode_matches_blind_text() {
        let k = key(5);
        let indexer = Indexer::Blind(&k);
        assert_eq!(indexer.mode(), Mode::Blind);
        assert_eq!(indexer.key_version(), Some(IndexKeyVersion::FIRST));
        let terms = indexer.index_text(Field::Body, "hello world");
        let b = blind_text(&k, Field::Body, "hello world");
        assert_eq!(terms.tokens.len(), 2);
        for ((term, p), (token, q)) in terms.tokens.iter().zip(&b.tokens) {
            assert_eq!(term, &IndexTerm::Blind(*token));
            assert_eq!(p, q);
            assert_eq!(term.to_index_string().len(), BLIND_TOKEN_STR_LEN);
        }
        assert_eq!(
            indexer.term(Field::Body, "hello"),
            IndexTerm::Blind(blind(&k, Field::Body, "hello"))
        );
        assert_eq!(Indexer::PLAINTEXT.key_version(), None);
    }

    #[test]
    fn index_key_rejects_wrong_length() {
        assert!(matches!(
            IndexKey::from_slice(IndexKeyVersion::FIRST, &[0u8; 31]),
            Err(CryptoError::KeyLength)
        ));
        assert!(matches!(
            IndexKey::from_slice(IndexKeyVersion::FIRST, &[0u8; 33]),
            Err(CryptoError::KeyLength)
        ));
    }

    #[test]
    fn generated_keys_differ_and_keep_their_version() {
        let v2 = IndexKeyVersion::FIRST.next().unwrap();
        let a = IndexKey::generate(v2).unwrap();
        let b = IndexKey::generate(v2).unwrap();
        assert_ne!(a.expose_bytes(), b.expose_bytes());
        assert_eq!(a.version(), v2);
        assert_eq!(v2.get(), 2);
        assert_eq!(v2.to_string(), "v2");
        assert_eq!(IndexKeyVersion::new(0), None);
    }

    /// The blind tokens of `text` computed without any cache: one MAC per token.
    fn uncached(k: &IndexKey, field: Field, text: &str) -> Vec<(BlindToken, u32)> {
        normalize_tokens(text)
            .iter()
            .map(|t| (k.mac().blind(field, &t.text), t.position))
            .collect()
    }

    /// Random mail-like text: frequent words, one-off words, accents, addresses.
    fn random_text(rng: &mut crate::search::tests_support::XorShift, words: usize) -> String {
        let common = [
            "the",
            "invoice",
            "Müller",
            "don't",
            "RE:",
            "ÅNGSTRÖM",
            "ﬁle",
            "2026",
        ];
        (0..words)
            .map(|_| match rng.below(10) {
                0 => format!("w{}x{}", rng.next() % 100_000, rng.below(9)),
                1 => format!("user{}@mail{}.example.com", rng.below(50), rng.below(3)),
                _ => common[rng.below(common.len())].to_owned(),
            })
            .collect::<Vec<_>>()
            .join(" ")
    }

    #[test]
    fn cached_blinding_gives_exactly_the_uncached_tokens() {
        let k = key(21);
        let mut rng = crate::search::tests_support::XorShift::new(0xcac4e);
        for round in 0..40 {
            for field in Field::ALL {
                let text = random_text(&mut rng, 200);
                let got = blind_text(&k, field, &text).tokens;
                assert_eq!(got, uncached(&k, field, &text), "round {round}, {field}");
            }
        }
        let (entries, _) = k.cache().usage();
        assert!(entries > 100, "the cache was not used: {entries} entries");
    }

    #[test]
    fn cached_blinding_stays_exact_when_generations_age_out() {
        let k = key(22);
        // Far more distinct tokens than one generation holds, twice over.
        let text: String = (0..120_000).map(|i| format!("tok{i} common ")).collect();
        for _ in 0..2 {
            assert_eq!(
                blind_text(&k, Field::Body, &text).tokens,
                uncached(&k, Field::Body, &text)
            );
        }
        let (entries, _) = k.cache().usage();
        assert!(
            entries <= 2 * BlindCache::DEFAULT_CAPACITY,
            "{entries} entries"
        );
    }

    #[test]
    fn a_busy_cache_falls_back_to_hashing_with_the_same_tokens() {
        let k = key(23);
        let text = "hello world hello ann@example.com";
        let _held = k.cache().try_lock().unwrap_or_else(|| panic!("busy"));
        assert_eq!(
            blind_text(&k, Field::From, text).tokens,
            uncached(&k, Field::From, text)
        );
    }

    #[test]
    fn each_key_has_its_own_cache_and_clearing_forgets_it() {
        let (a, b) = (key(24), key(25));
        let text = "quarterly report for ann@example.com";
        let under_a = blind_text(&a, Field::Body, text).tokens;
        // Another key, as after a rotation: its own tokens, never the first key's.
        let under_b = blind_text(&b, Field::Body, text).tokens;
        assert_eq!(under_b, uncached(&b, Field::Body, text));
        assert_ne!(under_a, under_b);
        assert!(a.cache().usage().0 > 0);
        a.clear_cache();
        assert_eq!(a.cache().usage(), (0, 0));
        assert_eq!(blind_text(&a, Field::Body, text).tokens, under_a);
    }

    #[test]
    fn plaintext_indexer_gives_exactly_the_normalized_tokens() {
        let mut rng = crate::search::tests_support::XorShift::new(0x91a1);
        for _ in 0..50 {
            let text = random_text(&mut rng, 100);
            let got: Vec<(IndexTerm, u32)> =
                Indexer::PLAINTEXT.index_text(Field::Body, &text).tokens;
            let expected: Vec<(IndexTerm, u32)> = normalize_tokens(&text)
                .into_iter()
                .map(|t| (IndexTerm::Plain(t.text), t.position))
                .collect();
            assert_eq!(got, expected);
        }
    }

    #[test]
    fn ordinals_are_places_in_all() {
        for (i, f) in Field::ALL.into_iter().enumerate() {
            assert_eq!(f.ordinal(), i);
        }
    }

    #[test]
    fn field_names_are_stable_and_round_trip() {
        let names: Vec<&str> = Field::ALL.iter().map(|f| f.name()).collect();
        assert_eq!(names, ["subject", "from", "to", "body", "attachment_name"]);
        for f in Field::ALL {
            assert_eq!(Field::from_name(f.name()), Some(f));
            assert_eq!(Field::from_operator(f.operator()), Some(f));
        }
        assert_eq!(
            Field::from_operator("FILENAME"),
            Some(Field::AttachmentName)
        );
        assert_eq!(Field::from_name("nope"), None);
    }

    #[test]
    fn mode_has_lowercase_names() {
        assert_eq!(Mode::default(), Mode::Blind);
        assert_eq!(Mode::Plaintext.to_string(), "plaintext");
        assert_eq!(
            serde_json::to_string(&Mode::Blind).unwrap(),
            "\"blind\"".to_owned()
        );
        assert_eq!(
            serde_json::from_str::<Mode>("\"plaintext\"").unwrap(),
            Mode::Plaintext
        );
    }
}
