//! A bounded memory of blind tokens already computed under one index key.
//!
//! Mail text is Zipfian: most tokens of a message occurred in earlier messages. Blinding one
//! token costs two SHA-256 compressions; looking it up here costs one hash of the token. The
//! cache maps (field, normalized token) to the blind token, per [`super::IndexKey`]: it lives
//! inside the key, so it exists only in the process that holds the key (and the plaintext the
//! tokens come from), answers for that key and version only, and goes away with it (an
//! index-key rotation blinds under a new key, which starts empty; the service drops a retired
//! key, and with it its cache).
//!
//! # What it holds, and for how long
//!
//! - Memory only, never written anywhere; nothing of it is printed (no `Debug`).
//! - Bounded: tokens are kept in two generations of at most [`BlindCache::DEFAULT_CAPACITY`]
//!   tokens each, in tables allocated at that size up front. When the current generation is
//!   full it becomes the previous one and the old previous one is dropped; a token found only
//!   in the previous generation moves to the current one. So frequent tokens stay and one-off
//!   tokens (ids, numbers, base64 runs) age out. Tokens longer than
//!   [`MAX_CACHED_TOKEN_BYTES`] are not kept.
//! - Tokens are stored inline in the tables (no allocation, no pointer to follow per lookup),
//!   and the tables never grow, so no copy is left behind in freed memory: every token's bytes
//!   are overwritten with zeros when its entry is dropped (aging out, [`BlindCache::clear`],
//!   or the key's drop).
//!
//! Hash flooding: the tables use std's randomly keyed SipHash, so mail text chosen by an
//! attacker cannot make lookups degrade; the budget bounds memory whatever the text.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::{Mutex, MutexGuard, TryLockError};

use zeroize::Zeroize;

use super::blind::{BlindToken, Field};

/// Longest token the cache holds, in bytes (longer tokens, rare in mail text, are blinded
/// every time).
pub(crate) const MAX_CACHED_TOKEN_BYTES: usize = KEY_BYTES - 2;
/// Size of a cache key: field, token length, token bytes, zero padding.
const KEY_BYTES: usize = 32;

/// Bounded (field, normalized token) → blind token memory of one index key (see the module
/// docs).
pub(crate) struct BlindCache {
    capacity: usize,
    generations: Mutex<Generations>,
}

impl BlindCache {
    /// Tokens per generation (so at most twice this per key, about 3 MiB of tables): about
    /// a mailbox's whole everyday vocabulary.
    pub(crate) const DEFAULT_CAPACITY: usize = 28_000;

    pub(crate) fn new() -> Self {
        Self::with_capacity(Self::DEFAULT_CAPACITY)
    }

    /// A cache of `capacity` tokens per generation.
    pub(crate) fn with_capacity(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            generations: Mutex::new(Generations::default()),
        }
    }

    /// The cache, if no other thread is using it right now (callers then blind without it
    /// rather than wait).
    pub(crate) fn try_lock(&self) -> Option<CacheGuard<'_>> {
        let guard = match self.generations.try_lock() {
            Ok(g) => g,
            Err(TryLockError::WouldBlock) => return None,
            // A panic while it was held may have left a generation half updated: start over.
            Err(TryLockError::Poisoned(p)) => {
                let mut g = p.into_inner();
                *g = Generations::default();
                self.generations.clear_poison();
                g
            }
        };
        Some(CacheGuard {
            capacity: self.capacity,
            generations: guard,
        })
    }

    /// Forgets (and zeroes) every token.
    pub(crate) fn clear(&self) {
        let mut g = self.generations.lock().unwrap_or_else(|p| p.into_inner());
        *g = Generations::default();
    }

    /// Tokens held, and the entries the tables have room for (their allocated memory).
    #[cfg(test)]
    pub(crate) fn usage(&self) -> (usize, usize) {
        let g = self.generations.lock().unwrap_or_else(|p| p.into_inner());
        (
            g.current.len() + g.previous.len(),
            g.current.capacity() + g.previous.capacity(),
        )
    }
}

/// Exclusive use of a [`BlindCache`] for a while (one text).
pub(crate) struct CacheGuard<'c> {
    capacity: usize,
    generations: MutexGuard<'c, Generations>,
}

impl CacheGuard<'_> {
    /// The blind token of `token` in `field`: from the cache, or computed by `blind` (and
    /// remembered).
    pub(crate) fn get_or_blind(
        &mut self,
        field: Field,
        token: &str,
        blind: impl FnOnce() -> BlindToken,
    ) -> BlindToken {
        let Some(key) = CacheKey::new(field, token) else {
            return blind();
        };
        let g = &mut *self.generations;
        if let Some(b) = g.current.get(&key) {
            return *b;
        }
        let b = match g.previous.get(&key) {
            Some(b) => *b,
            None => blind(),
        };
        if g.current.len() >= self.capacity || g.current.capacity() == 0 {
            // Allocated once at full size, so inserting never moves (and leaves behind) the
            // tokens of a table.
            let next = HashMap::with_capacity(self.capacity);
            let full = std::mem::replace(&mut g.current, next);
            if !full.is_empty() {
                g.previous = full;
            }
        }
        g.current.insert(key, b);
        b
    }
}

#[derive(Default)]
struct Generations {
    current: HashMap<CacheKey, BlindToken>,
    previous: HashMap<CacheKey, BlindToken>,
}

/// A (field, token) pair held inline: `[field, len, token bytes.., zeros..]`, zeroed when
/// dropped (the tables never reallocate, so this is every copy they hold). Hashes the used
/// bytes only.
#[derive(PartialEq, Eq)]
struct CacheKey([u8; KEY_BYTES]);

impl CacheKey {
    fn new(field: Field, token: &str) -> Option<Self> {
        let bytes = token.as_bytes();
        if bytes.len() > MAX_CACHED_TOKEN_BYTES {
            return None;
        }
        let mut key = [0u8; KEY_BYTES];
        key[0] = field.ordinal() as u8;
        key[1] = bytes.len() as u8;
        key[2..2 + bytes.len()].copy_from_slice(bytes);
        Some(Self(key))
    }
}

impl Hash for CacheKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write(&self.0[..2 + usize::from(self.0[1])]);
    }
}

impl Drop for CacheKey {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(n: u8) -> BlindToken {
        BlindToken::from_bytes([n; 16])
    }

    #[test]
    fn a_remembered_token_is_answered_without_blinding() {
        let cache = BlindCache::new();
        let mut g = cache.try_lock().unwrap_or_else(|| panic!("busy"));
        assert_eq!(g.get_or_blind(Field::Body, "hello", || token(1)), token(1));
        let again = g.get_or_blind(Field::Body, "hello", || panic!("blinded twice"));
        assert_eq!(again, token(1));
    }

    #[test]
    fn fields_and_lengths_are_kept_apart() {
        let cache = BlindCache::new();
        let mut g = cache.try_lock().unwrap_or_else(|| panic!("busy"));
        g.get_or_blind(Field::Body, "ann", || token(1));
        assert_eq!(g.get_or_blind(Field::From, "ann", || token(2)), token(2));
        assert_eq!(g.get_or_blind(Field::Body, "ann", || token(3)), token(1));
        // Zero padding cannot make a token equal to a shorter one.
        assert_eq!(g.get_or_blind(Field::Body, "ann\0", || token(4)), token(4));
        assert_eq!(g.get_or_blind(Field::Body, "", || token(5)), token(5));
        assert_eq!(g.get_or_blind(Field::Body, "an", || token(6)), token(6));
    }

    #[test]
    fn long_tokens_are_blinded_every_time() {
        let cache = BlindCache::new();
        let mut g = cache.try_lock().unwrap_or_else(|| panic!("busy"));
        let long = "x".repeat(MAX_CACHED_TOKEN_BYTES + 1);
        let mut calls = 0;
        for _ in 0..3 {
            g.get_or_blind(Field::Body, &long, || {
                calls += 1;
                token(1)
            });
        }
        assert_eq!(calls, 3);
        let longest = "y".repeat(MAX_CACHED_TOKEN_BYTES);
        g.get_or_blind(Field::Body, &longest, || token(2));
        assert_eq!(
            g.get_or_blind(Field::Body, &longest, || panic!("not kept")),
            token(2)
        );
    }

    #[test]
    fn a_busy_cache_is_not_waited_for() {
        let cache = BlindCache::new();
        let _held = cache.try_lock().unwrap_or_else(|| panic!("busy"));
        assert!(cache.try_lock().is_none());
    }

    #[test]
    fn memory_stays_within_two_generations_and_frequent_tokens_survive() {
        let capacity = 100;
        let cache = BlindCache::with_capacity(capacity);
        let mut blinded = 0;
        let mut room = Vec::new();
        {
            let mut g = cache.try_lock().unwrap_or_else(|| panic!("busy"));
            for i in 0..10_000u32 {
                // A frequent token between every two one-off tokens.
                g.get_or_blind(Field::Body, "frequent", || token(7));
                g.get_or_blind(Field::Body, &format!("once{i:04}"), || {
                    blinded += 1;
                    token(9)
                });
                if i % 97 == 0 {
                    drop(g);
                    room.push(cache.usage());
                    g = cache.try_lock().unwrap_or_else(|| panic!("busy"));
                }
            }
            assert_eq!(
                g.get_or_blind(Field::Body, "frequent", || panic!("aged out")),
                token(7)
            );
        }
        assert_eq!(blinded, 10_000);
        // The tables never grow past their first allocation.
        let most = room.iter().map(|(_, r)| *r).max().unwrap_or(0);
        assert!(room.iter().all(|(n, _)| *n <= 2 * capacity), "{room:?}");
        assert_eq!(most, cache.usage().1);
        assert!(most <= 2 * 2 * capacity, "room for {most} entries");
        cache.clear();
        assert_eq!(cache.usage(), (0, 0));
    }
}
