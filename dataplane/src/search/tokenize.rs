//! Text → normalized tokens with positions: the one tokenizer that indexing and queries share.
//!
//! # Pipeline
//!
//! 1. **Addresses** are found first (see below); the text between them is split into words by
//!    Unicode word segmentation (UAX #29, `unicode_words`: segments without a letter or digit,
//!    such as punctuation, spaces and emoji, are not tokens). A combining mark right after a
//!    space, which UAX #29 puts into the space's segment, is a token without the space (before
//!    2026-12-04 the space was kept in the token; such tokens are only a lone mark, so an
//!    index made then misses only searches that hold such a lone mark as a word).
//! 2. Every word is **folded** ([`fold`]): NFKD (compatibility decomposition, so "ﬁ" → "fi" and
//!    full-width "Ａ" → "a"), full Unicode lowercase, NFKD again, diacritics dropped (see
//!    [`Normalization`]: which nonspacing marks count as diacritics), a few letters
//!    that carry no decomposable diacritic folded by hand ("ß" → "ss", "ς" → "σ", "ł" → "l",
//!    "ø" → "o", "đ" → "d", "æ" → "ae", "œ" → "oe", "ı" → "i"), apostrophes (U+0027, U+2019)
//!    and double quotes removed ("don't" → "dont", "O’Brien" → "obrien"), and finally NFC
//!    (so Hangul and kana come back composed). Folding can create separators ("½" → "1⁄2"), so
//!    the folded word is segmented once more; each piece is a token.
//! 3. A token longer than [`MAX_TOKEN_BYTES`] is **truncated** at a character boundary (then
//!    trailing punctuation is trimmed, and if what is left is more than one word, its first
//!    word is kept): two long tokens with the same prefix collide, which can only add a hit,
//!    never lose one. A truncated word left without a letter or digit gives no token. At most [`MAX_TOKENS_PER_FIELD`] tokens are produced for one text; the rest of
//!    a huge body is not indexed.
//!
//! These rules changed on 2026-12-04 without a new normalization version (a version would
//! re-index every tenant, and each rule touches only malformed or rare text; an index made
//! before can miss only searches for that text): the lone mark above; a truncated word of
//! only `_` (it was a token of underscores) or of more than one word (it was kept whole);
//! addresses holding combining marks (a decomposed
//! "josé@example.com" was split at its mark), longer than [`MAX_ADDRESS_BYTES`] (a
//! truncated address token), or that folding turns into something other than one address
//! (`¼` folds to `1⁄4`; such an address is now indexed as words).
//!
//! # Normalization versions
//!
//! The terms of an index must be folded the way its queries are, so the folding rules are
//! versioned ([`Normalization`]) and each index key records the version its terms were made
//! with (see `SearchService`: a tenant whose key predates [`Normalization::CURRENT`] is
//! re-indexed under a new key in the background, its queries using the old rules until the
//! switch).
//!
//! - [`Normalization::V1`] dropped every nonspacing mark (General_Category Mn) except the
//!   kana voicing marks. In Latin, Greek and Cyrillic text those are diacritics, but in the
//!   Brahmic scripts they are letters of the word: Devanagari vowel signs and virama ("कुल"
//!   and "कल" became one token), Thai, Lao and Khmer vowels and tone marks, and so on.
//! - [`Normalization::V2`] (current) drops only diacritics: the combining diacritical marks
//!   (U+0300–U+036F and their extended and supplement blocks, combining marks for symbols,
//!   half marks), Cyrillic titlo and other combining marks of that block, Hebrew points and
//!   cantillation, Arabic and Syriac vowel points and Quranic marks, and variation
//!   selectors. Every other nonspacing mark is part of the token.
//!
//! # Positions
//!
//! Each word takes the next position (0, 1, 2, ...), so a phrase is a run of consecutive
//! positions. All tokens of one email address share **one** position, like synonyms: in
//! "write to ann@example.com today", a phrase query may use the whole address or any one of its
//! parts in the address's slot ("to ann@example.com today", "to example.com today").
//!
//! # Email addresses
//!
//! An address is `local@domain`: the local part is letters, digits and `. _ % + - '` (leading
//! punctuation trimmed), the domain two or more labels of letters, digits and `-` separated by
//! dots (a trailing dot is not part of it). For `Ann.Lee+support@Mail.Example.com` the tokens,
//! all folded like words and all at the same position, are:
//!
//! - the whole address `ann.lee+support@mail.example.com` ([`TokenKind::Address`], up to
//!   [`MAX_ADDRESS_BYTES`], the RFC 5321 limit, instead of [`MAX_TOKEN_BYTES`]);
//! - the local part `ann.lee+support`, the domain `mail.example.com`, each parent domain of two
//!   or more labels (`example.com`), and every run of letters and digits (`ann`, `lee`,
//!   `support`, `mail`, `example`, `com`), each once ([`TokenKind::AddressPart`]).
//!
//! So `from:ann@example.com`, `from:example.com`, `from:ann.lee` and `from:ann` all match.
//! A query term that is an address searches for the whole-address token only.
//! An address needs a dot in its domain: `root@localhost` is two words. An address longer
//! than [`MAX_ADDRESS_BYTES`] after folding is not one (RFC 5321) and is indexed as words: a
//! truncated address token could lose its domain's dot and, written in a query, not be an
//! address. So is an address that folding turns into something that is not exactly one
//! address (`¼x@example.com` folds to `1⁄4x@example.com`, and `⁄` ends a local part).

use unicode_normalization::UnicodeNormalization;
use unicode_properties::{GeneralCategory, UnicodeGeneralCategory};
use unicode_segmentation::UnicodeSegmentation;

/// Longest word token, in bytes of UTF-8 after folding; longer words are truncated (and
/// give no token if what is left holds no letter or digit).
pub const MAX_TOKEN_BYTES: usize = 64;
/// Longest address, in bytes after folding (RFC 5321's path limit); longer ones are words.
pub const MAX_ADDRESS_BYTES: usize = 254;
/// Most tokens produced for one text (one field of one message).
pub const MAX_TOKENS_PER_FIELD: usize = 100_000;

/// What a token stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TokenKind {
    /// A word of running text.
    Word,
    /// A whole email address.
    Address,
    /// A part of an email address (local part, domain, parent domain or a word in them),
    /// at the same position as its [`TokenKind::Address`].
    AddressPart,
}

/// One normalized token and its position in the text.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Token {
    /// The folded text: lowercase, no diacritics, NFC.
    pub text: String,
    /// Word position: +1 per word or address; all tokens of one address share a position.
    pub position: u32,
    pub kind: TokenKind,
}

/// The folding rules of one index (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Normalization {
    /// Every nonspacing mark dropped (too loose for Brahmic scripts); kept for indexes made
    /// with it until they are rebuilt.
    V1,
    /// Only diacritics dropped.
    V2,
}

impl Normalization {
    /// What new indexes and keys are made with.
    pub const CURRENT: Normalization = Normalization::V2;

    /// The number stored with an index key.
    pub const fn get(self) -> u32 {
        match self {
            Normalization::V1 => 1,
            Normalization::V2 => 2,
        }
    }

    /// The version stored as `n`, if this build knows it.
    pub const fn from_u32(n: u32) -> Option<Self> {
        match n {
            1 => Some(Normalization::V1),
            2 => Some(Normalization::V2),
            _ => None,
        }
    }

    /// Whether folding drops the nonspacing mark `c` (General_Category Mn).
    fn drops_mark(self, c: char) -> bool {
        match self {
            Normalization::V1 => true,
            Normalization::V2 => is_diacritic(c),
        }
    }
}

/// The nonspacing marks [`Normalization::V2`] drops (see the module docs). Only asked about
/// characters of General_Category Mn.
fn is_diacritic(c: char) -> bool {
    matches!(c,
        // Combining Diacritical Marks (Latin, Greek, Cyrillic and Vietnamese accents).
        '\u{0300}'..='\u{036F}'
        // Cyrillic combining marks (titlo, palatalization, ...).
        | '\u{0483}'..='\u{0489}'
        // Hebrew cantillation marks and points.
        | '\u{0591}'..='\u{05C7}'
        // Arabic honorifics, harakat, superscript alef and Quranic marks.
        | '\u{0610}'..='\u{061A}'
        | '\u{064B}'..='\u{065F}'
        | '\u{0670}'
        | '\u{06D6}'..='\u{06ED}'
        // Syriac vowel points.
        | '\u{0730}'..='\u{074A}'
        // Arabic Extended-B and -A marks.
        | '\u{0898}'..='\u{089F}'
        | '\u{08CA}'..='\u{08FF}'
        // Mongolian free variation selectors.
        | '\u{180B}'..='\u{180D}'
        | '\u{180F}'
        // Combining Diacritical Marks Extended and Supplement.
        | '\u{1AB0}'..='\u{1AFF}'
        | '\u{1DC0}'..='\u{1DFF}'
        // Combining marks for symbols.
        | '\u{20D0}'..='\u{20FF}'
        // Variation selectors and combining half marks.
        | '\u{FE00}'..='\u{FE0F}'
        | '\u{FE20}'..='\u{FE2F}'
        | '\u{E0100}'..='\u{E01EF}'
    )
}

/// Splits `text` into normalized tokens with positions (see the module docs), folded by the
/// current rules.
pub fn normalize_tokens(text: &str) -> Vec<Token> {
    normalize_tokens_with(text, Normalization::CURRENT)
}

/// [`normalize_tokens`] under the folding rules `normalization`.
pub fn normalize_tokens_with(text: &str, normalization: Normalization) -> Vec<Token> {
    let mut tokens = Vec::with_capacity(expected_tokens(text));
    for_each_token(text, normalization, |text, position, kind| {
        tokens.push(Token {
            text: text.to_owned(),
            position,
            kind,
        });
    });
    tokens
}

/// A guess of how many tokens `text` has (about one per 6 bytes of mail text), for
/// preallocation; never more than the cap.
pub(crate) fn expected_tokens(text: &str) -> usize {
    (text.len() / 6 + 1).min(MAX_TOKENS_PER_FIELD)
}

/// [`normalize_tokens`] without a `String` per token: calls `emit(text, position, kind)` for
/// each token, in order.
pub(crate) fn for_each_token(
    text: &str,
    normalization: Normalization,
    mut emit: impl FnMut(&str, u32, TokenKind),
) {
    let mut out = TokenSink {
        normalization,
        emit: &mut emit,
        count: 0,
        next_position: 0,
        word: String::new(),
    };
    let mut rest_start = 0;
    for (start, end) in find_addresses(text) {
        if out.full() {
            break;
        }
        out.words(&text[rest_start..start]);
        out.address(&text[start..end]);
        rest_start = end;
    }
    out.words(&text[rest_start..]);
}

/// Folds one word: compatibility decomposition, lowercase, diacritics dropped, NFC.
///
/// This is the per-word step of [`normalize_tokens_with`]; it does not segment or truncate.
pub fn fold(word: &str, normalization: Normalization) -> String {
    // ASCII (most mail): decomposition, mark removal and composition change nothing, so
    // folding is lowercasing and dropping quotes. Same result as the general path below.
    if word.is_ascii() {
        return word
            .bytes()
            .filter(|b| !matches!(b, b'\'' | b'"'))
            .map(|b| char::from(b.to_ascii_lowercase()))
            .collect();
    }
    fold_unicode(word, normalization)
}

/// [`fold`] for any text.
fn fold_unicode(word: &str, normalization: Normalization) -> String {
    let mut folded = String::with_capacity(word.len());
    for c in word.nfkd().flat_map(char::to_lowercase).nfkd() {
        match c {
            '\u{3099}' | '\u{309A}' => folded.push(c),
            c if c.general_category() == GeneralCategory::NonspacingMark => {
                if !normalization.drops_mark(c) {
                    folded.push(c);
                }
            }
            'ß' => folded.push_str("ss"),
            'ς' => folded.push('σ'),
            'ł' => folded.push('l'),
            'ø' => folded.push('o'),
            'đ' => folded.push('d'),
            'ı' => folded.push('i'),
            'æ' => folded.push_str("ae"),
            'œ' => folded.push_str("oe"),
            '\'' | '\u{2019}' | '"' => {}
            c => folded.push(c),
        }
    }
    folded.nfc().collect()
}

/// Hands tokens on, numbering positions and enforcing the caps.
struct TokenSink<'e> {
    normalization: Normalization,
    emit: &'e mut dyn FnMut(&str, u32, TokenKind),
    /// Tokens emitted so far.
    count: usize,
    next_position: u32,
    /// Reused buffer of the ASCII shortcut.
    word: String,
}

impl TokenSink<'_> {
    fn full(&self) -> bool {
        self.count >= MAX_TOKENS_PER_FIELD
    }

    fn push(&mut self, text: &str, position: u32, kind: TokenKind) {
        (self.emit)(text, position, kind);
        self.count += 1;
    }

    fn words(&mut self, text: &str) {
        for word in text.unicode_words() {
            // ASCII letters, digits and `_` only (most words of most mail): folding is
            // lowercasing and the folded word is one segment, so the general path below
            // would produce exactly this token.
            if word.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                if self.full() {
                    return;
                }
                let text = word_token(word);
                if text.is_empty() {
                    continue;
                }
                let mut buf = std::mem::take(&mut self.word);
                buf.clear();
                buf.push_str(text);
                buf.make_ascii_lowercase();
                self.push(&buf, self.next_position, TokenKind::Word);
                self.word = buf;
                self.next_position = self.next_position.saturating_add(1);
                continue;
            }
            let folded = fold(word, self.normalization);
            for piece in folded.unicode_words() {
                if self.full() {
                    return;
                }
                // A combining mark after a space joins the space's segment (UAX #29 WB4):
                // the token is the mark alone, never the space.
                let text = word_token(piece.trim_start());
                if text.is_empty() {
                    continue;
                }
                self.push(text, self.next_position, TokenKind::Word);
                self.next_position = self.next_position.saturating_add(1);
            }
        }
    }

    fn address(&mut self, address: &str) {
        let folded = fold(address, self.normalization);
        // Folding can make it no address, or not one address ("¼" folds to "1⁄4", and the
        // fraction slash cannot be in an address): then its words are indexed. So the token,
        // written in a query, is found again as this one address.
        if folded.len() > MAX_ADDRESS_BYTES || find_addresses(&folded) != [(0, folded.len())] {
            self.words(address);
            return;
        }
        let Some((local, domain)) = folded.rsplit_once('@') else {
            // Folding cannot remove the '@'; if it ever did, index the text as words.
            self.words(address);
            return;
        };
        let position = self.next_position;
        let mut parts: Vec<(&str, TokenKind)> = vec![
            (folded.as_str(), TokenKind::Address),
            (local, TokenKind::AddressPart),
            (domain, TokenKind::AddressPart),
        ];
        let mut parent = domain;
        while let Some((_, rest)) = parent.split_once('.') {
            if !rest.contains('.') {
                break;
            }
            parts.push((rest, TokenKind::AddressPart));
            parent = rest;
        }
        for run in folded.split(|c: char| !is_address_word_char(c)) {
            parts.push((run, TokenKind::AddressPart));
        }
        let mut emitted: Vec<&str> = Vec::with_capacity(parts.len());
        for (part, kind) in parts {
            if self.full() {
                break;
            }
            let part = match kind {
                TokenKind::Address => part,
                _ => truncate(part, MAX_TOKEN_BYTES),
            };
            if part.is_empty() || emitted.contains(&part) {
                continue;
            }
            emitted.push(part);
            self.push(part, position, kind);
        }
        self.next_position = self.next_position.saturating_add(1);
    }
}

/// The token of a word: the word truncated at [`MAX_TOKEN_BYTES`], or nothing (no token, no
/// position) when the truncated word holds no letter or digit (`_` x 64 of a longer word):
/// written in a query, such a token would not be a word, so the query would not parse back
/// to itself.
fn word_token(word: &str) -> &str {
    let mut text = truncate(word, MAX_TOKEN_BYTES);
    if text.len() < word.len() {
        // A cut word can be more than one word: a `:` or `.` joins its neighbours only when a
        // letter follows it (UAX #29 WB6/WB7), and the cut can take that letter away. The
        // token is then the first of those words, which is one word wherever it is written.
        if let Some(first) = text.split_word_bounds().next() {
            text = first;
        }
    }
    if text.chars().any(char::is_alphanumeric) {
        text
    } else {
        ""
    }
}

/// The longest prefix of `s` of at most `max` bytes ending on a character boundary, without
/// trailing characters that are neither letters, digits nor `_` (so the prefix is a word).
fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].trim_end_matches(|c: char| !(c.is_alphanumeric() || c == '_'))
}

/// A letter, a digit, or a combining mark (General_Category M), which belongs to the letter
/// before it: `क़` (U+0958) and `क` + nukta, its decomposed form, must both stay inside an
/// address.
fn is_address_word_char(c: char) -> bool {
    c.is_alphanumeric() || is_mark(c)
}

fn is_mark(c: char) -> bool {
    matches!(
        c.general_category(),
        GeneralCategory::NonspacingMark
            | GeneralCategory::SpacingMark
            | GeneralCategory::EnclosingMark
    )
}

fn is_local_char(c: char) -> bool {
    is_address_word_char(c) || matches!(c, '.' | '_' | '%' | '+' | '-' | '\'')
}

/// Byte ranges of the email addresses in `text`, in order, not overlapping.
fn find_addresses(text: &str) -> Vec<(usize, usize)> {
    let mut found = Vec::new();
    let mut last_end = 0;
    for (at, _) in text.match_indices('@') {
        if at < last_end {
            continue;
        }
        let mut start = at;
        for (i, c) in text[last_end..at].char_indices().rev() {
            if !is_local_char(c) {
                break;
            }
            start = last_end + i;
        }
        // The local part starts at its first letter or digit.
        let local = &text[start..at];
        let Some(offset) = local.find(char::is_alphanumeric) else {
            continue;
        };
        start += offset;
        let domain_len = domain_length(&text[at + 1..]);
        if domain_len == 0 {
            continue;
        }
        let end = at + 1 + domain_len;
        found.push((start, end));
        last_end = end;
    }
    found
}

/// Length in bytes of the domain at the start of `s` (two or more dot-separated labels of
/// letters, digits and `-`, each starting with a letter or digit), or 0 if there is none.
fn domain_length(s: &str) -> usize {
    let mut labels = 0;
    let mut in_label = false;
    let mut end = 0;
    for (i, c) in s.char_indices() {
        if c.is_alphanumeric() || (in_label && is_mark(c)) {
            in_label = true;
            end = i + c.len_utf8();
        } else if c == '-' && in_label {
            // Inside a label; the label still has to end in a letter or digit to count.
        } else if c == '.' && in_label {
            labels += 1;
            in_label = false;
        } else {
            break;
        }
    }
    if in_label {
        labels += 1;
    }
    if labels >= 2 { end } else { 0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(input: &str) -> Vec<String> {
        normalize_tokens(input)
            .into_iter()
            .map(|t| t.text)
            .collect()
    }

    fn words(input: &str) -> Vec<(String, u32)> {
        normalize_tokens(input)
            .into_iter()
            .map(|t| (t.text, t.position))
            .collect()
    }

    #[test]
    fn lowercases_full_unicode() {
        assert_eq!(
            texts("Hello WORLD ΣΟΦΙΑ Привет"),
            ["hello", "world", "σοφια", "привет"]
        );
    }

    #[test]
    fn ascii_fast_path_folds_exactly_like_the_unicode_path() {
        // Every ASCII character alone, in pairs, and in random words.
        let all: Vec<char> = (0u8..=127).map(char::from).collect();
        for a in &all {
            let one = a.to_string();
            for n in [Normalization::V1, Normalization::V2] {
                assert_eq!(fold(&one, n), fold_unicode(&one, n), "{one:?}");
            }
            for b in &all {
                let two: String = [*a, *b].iter().collect();
                assert_eq!(
                    fold(&two, Normalization::CURRENT),
                    fold_unicode(&two, Normalization::CURRENT),
                    "{two:?}"
                );
            }
        }
        let mut rng = crate::search::tests_support::XorShift::new(7);
        for _ in 0..2_000 {
            let len = rng.below(24);
            let word: String = (0..len).map(|_| all[rng.below(128)]).collect();
            assert_eq!(
                fold(&word, Normalization::V1),
                fold_unicode(&word, Normalization::V1),
                "{word:?}"
            );
            assert_eq!(
                fold(&word, Normalization::V2),
                fold_unicode(&word, Normalization::V2),
                "{word:?}"
            );
        }
    }

    #[test]
    fn folds_diacritics_and_compatibility_forms() {
        assert_eq!(
            texts("Müller Ångström ﬁle café naïve"),
            ["muller", "angstrom", "file", "cafe", "naive"]
        );
    }

    #[test]
    fn folds_decomposed_input_like_precomposed_input() {
        assert_eq!(texts("Mu\u{308}ller"), texts("Müller"));
    }

    #[test]
    fn folds_sharp_s_final_sigma_and_stroked_letters() {
        assert_eq!(
            texts("Straße STRASSE ὁδός Łódź Søren Æsir"),
            ["strasse", "strasse", "οδοσ", "lodz", "soren", "aesir"]
        );
    }

    #[test]
    fn folds_full_width_forms() {
        assert_eq!(texts("ＨＥＬＬＯ １２３"), ["hello", "123"]);
    }

    #[test]
    fn keeps_numbers_and_decimal_numbers() {
        assert_eq!(
            texts("invoice 4711 costs 3.14 on 2026"),
            ["invoice", "4711", "costs", "3.14", "on", "2026"]
        );
    }

    #[test]
    fn removes_apostrophes_inside_words() {
        assert_eq!(texts("don't DON’T O'Brien"), ["dont", "dont", "obrien"]);
    }

    #[test]
    fn ignores_emoji_and_punctuation() {
        assert_eq!(texts("🎉 hello, world! 👍🏽 -- ... ???"), ["hello", "world"]);
        assert!(normalize_tokens("🎉👍🏽 !!! ---").is_empty());
    }

    #[test]
    fn segments_cjk_ideographs_one_per_token() {
        assert_eq!(texts("東京都"), ["東", "京", "都"]);
    }

    #[test]
    fn keeps_katakana_runs_and_kana_voicing() {
        assert_eq!(texts("メール"), ["メール"]);
        // Voiced kana survive folding (the voicing mark is not treated as a diacritic).
        assert_eq!(texts("ガ"), ["ガ"]);
        assert_ne!(texts("ガ"), texts("カ"));
    }

    #[test]
    fn keeps_the_vowel_signs_and_viramas_of_brahmic_scripts() {
        // Devanagari: the u-sign and the virama are letters of the word.
        assert_eq!(texts("कुल कल क्या कया"), ["कुल", "कल", "क्या", "कया"]);
        // Bengali vowel signs and the Tamil virama (pulli).
        assert_ne!(texts("কুকুর"), texts("ককর"));
        assert_ne!(texts("பக்கம்"), texts("பககம"));
        // Thai and Khmer: a consonant with its vowel and tone marks is one token.
        assert_eq!(texts("ที่"), ["ที่"]);
        assert_ne!(texts("ที่"), texts("ท"));
        assert_ne!(texts("ក៏"), texts("ក"));
        // Decomposed and precomposed input still fold alike (nukta forms).
        assert_eq!(texts("\u{0928}\u{093C}"), texts("\u{0929}"));
    }

    #[test]
    fn drops_hebrew_points_arabic_harakat_and_vietnamese_tones() {
        assert_eq!(texts("שָׁלוֹם"), texts("שלום"));
        assert_eq!(texts("مُحَمَّد"), texts("محمد"));
        assert_eq!(texts("Tiếng Việt"), ["tieng", "viet"]);
        // A variation selector is not part of the token.
        assert_eq!(texts("\u{845B}\u{E0100}"), texts("\u{845B}"));
    }

    #[test]
    fn the_first_normalization_drops_every_nonspacing_mark() {
        let v1 = |s: &str| -> Vec<String> {
            normalize_tokens_with(s, Normalization::V1)
                .into_iter()
                .map(|t| t.text)
                .collect()
        };
        assert_eq!(v1("कुल"), ["कल"]);
        assert_eq!(v1("பக்கம்"), texts("பககம"));
        assert_eq!(v1("কুকুর"), texts("ককর"));
        assert_eq!(v1("ที่"), ["ท"]);
        assert_eq!(v1("Müller ガ"), texts("Müller ガ"));
        for n in [Normalization::V1, Normalization::V2] {
            assert_eq!(Normalization::from_u32(n.get()), Some(n));
        }
        assert_eq!(Normalization::from_u32(0), None);
        assert_eq!(Normalization::from_u32(3), None);
    }

    #[test]
    fn keeps_hangul_composed() {
        assert_eq!(texts("안녕하세요 세계"), ["안녕하세요", "세계"]);
    }

    #[test]
    fn splits_hyphenated_words() {
        assert_eq!(words("e-mail"), [("e".into(), 0), ("mail".into(), 1)]);
    }

    #[test]
    fn numbers_positions_consecutively() {
        assert_eq!(
            words("the quick, brown fox"),
            [
                ("the".into(), 0),
                ("quick".into(), 1),
                ("brown".into(), 2),
                ("fox".into(), 3)
            ]
        );
    }

    #[test]
    fn empty_text_has_no_tokens() {
        assert!(normalize_tokens("").is_empty());
        assert!(normalize_tokens("   \n\t ").is_empty());
    }

    #[test]
    fn indexes_address_whole_and_parts_at_one_position() {
        let tokens = normalize_tokens("Ann Lee <Ann.Lee+support@Mail.Example.COM> wrote");
        let at_2: Vec<(&str, TokenKind)> = tokens
            .iter()
            .filter(|t| t.position == 2)
            .map(|t| (t.text.as_str(), t.kind))
            .collect();
        assert_eq!(
            at_2,
            [
                ("ann.lee+support@mail.example.com", TokenKind::Address),
                ("ann.lee+support", TokenKind::AddressPart),
                ("mail.example.com", TokenKind::AddressPart),
                ("example.com", TokenKind::AddressPart),
                ("ann", TokenKind::AddressPart),
                ("lee", TokenKind::AddressPart),
                ("support", TokenKind::AddressPart),
                ("mail", TokenKind::AddressPart),
                ("example", TokenKind::AddressPart),
                ("com", TokenKind::AddressPart),
            ]
        );
        assert_eq!(tokens[0].text, "ann");
        assert_eq!(tokens[1].text, "lee");
        let wrote = tokens.iter().find(|t| t.text == "wrote");
        assert_eq!(wrote.map(|t| t.position), Some(3));
    }

    #[test]
    fn address_parts_are_not_repeated() {
        let t = texts("ann@ann.com");
        assert_eq!(t, ["ann@ann.com", "ann", "ann.com", "com"]);
    }

    /// Combining marks stay inside an address, so a decomposed address (or one whose
    /// folding decomposes it) splits like the composed one (a fuzz finding: `क़`, U+0958,
    /// folds to `क` + nukta).
    #[test]
    fn addresses_with_combining_marks_split_like_their_composed_form() {
        for (composed, decomposed) in [
            (
                "f\u{958}p2usport@hedr.exapple",
                "f\u{915}\u{93c}p2usport@hedr.exapple",
            ),
            ("jos\u{e9}@example.com", "jose\u{301}@example.com"),
            ("ann@caf\u{e9}.example", "ann@cafe\u{301}.example"),
        ] {
            let tokens = normalize_tokens(composed);
            assert_eq!(tokens[0].kind, TokenKind::Address, "{composed:?}");
            assert!(tokens.iter().all(|t| t.position == 0), "{composed:?}");
            assert_eq!(texts(decomposed), texts(composed), "{decomposed:?}");
            // The whole address, written back, is the same one address.
            assert_eq!(texts(&tokens[0].text), texts(composed), "{composed:?}");
        }
    }

    /// A long word cut where a `:` joined two parts only because of the letter after it
    /// gives the first part (a fuzz finding: the cut token was two words in a query).
    #[test]
    fn a_word_cut_after_a_joining_colon_gives_its_first_part() {
        // 60 + 1 + 3 bytes: the cut falls right after the mark.
        let word = format!("{}:\u{902}x{}", "a".repeat(60), "b".repeat(20));
        assert_eq!(texts(&word).len(), 1, "one word");
        let token = texts(&word).remove(0);
        assert_eq!(token, "a".repeat(60));
        assert_eq!(texts(&token), std::slice::from_ref(&token));
    }

    /// A long word whose first 64 bytes hold no letter or digit gives no token (a fuzz
    /// finding: its truncated token, written in a query, was not a word).
    #[test]
    fn a_truncated_word_without_letters_or_digits_gives_no_token() {
        let long = format!("{}gf", "_".repeat(72));
        assert_eq!(
            words(&format!("a {long} b")),
            [("a".into(), 0), ("b".into(), 1)]
        );
        let short = format!("{}gf", "_".repeat(20));
        assert_eq!(texts(&short), [short]);
        // Non-ASCII words take the general path, with the same rule.
        let accented = format!("{}\u{e9}", "_".repeat(72));
        assert!(texts(&accented).is_empty());
    }

    /// An address longer than the RFC 5321 limit is words, with their positions (a fuzz
    /// finding: its truncated token lost the domain's dot).
    #[test]
    fn an_overlong_address_is_words() {
        let at_limit = format!("{}@example.com", "a".repeat(MAX_ADDRESS_BYTES - 12));
        assert_eq!(normalize_tokens(&at_limit)[0].kind, TokenKind::Address);
        assert_eq!(normalize_tokens(&at_limit)[0].text, at_limit);
        let long = format!("ann@{}.example.com", "d".repeat(MAX_ADDRESS_BYTES));
        let tokens = normalize_tokens(&format!("to {long} now"));
        assert!(
            tokens.iter().all(|t| t.kind == TokenKind::Word),
            "{tokens:?}"
        );
        let positions: Vec<u32> = tokens.iter().map(|t| t.position).collect();
        assert_eq!(positions, (0..tokens.len() as u32).collect::<Vec<_>>());
        assert_eq!(tokens[1].text, "ann");
    }

    /// An address that folding turns into something that is not exactly one address is
    /// words (a fuzz finding: "¼" folds to "1⁄4").
    #[test]
    fn an_address_that_folding_breaks_is_words() {
        let tokens = normalize_tokens("\u{bc}Df.@example.org");
        assert!(
            tokens.iter().all(|t| t.kind == TokenKind::Word),
            "{tokens:?}"
        );
        for token in &tokens {
            assert_eq!(
                texts(&token.text),
                std::slice::from_ref(&token.text),
                "{tokens:?}"
            );
        }
        // Folding that keeps one address keeps it one token.
        assert_eq!(
            normalize_tokens("\u{c9}mile@Example.org")[0].text,
            "emile@example.org"
        );
    }

    #[test]
    fn address_excludes_surrounding_punctuation() {
        assert_eq!(
            texts("(mailto:bob@example.org.)")[..2],
            ["mailto".to_owned(), "bob@example.org".to_owned()]
        );
        assert_eq!(texts("'bob@example.org'")[0], "bob@example.org");
    }

    #[test]
    fn address_without_dot_in_domain_is_words() {
        assert_eq!(texts("root@localhost"), ["root", "localhost"]);
    }

    #[test]
    fn at_sign_without_address_is_ignored() {
        assert_eq!(
            texts("meet @ 5 or @@ a@ @b.com"),
            ["meet", "5", "or", "a", "b.com"]
        );
    }

    #[test]
    fn two_adjacent_addresses_are_found_separately() {
        let tokens = normalize_tokens("a@b.com,c@d.org");
        let whole: Vec<(&str, u32)> = tokens
            .iter()
            .filter(|t| t.kind == TokenKind::Address)
            .map(|t| (t.text.as_str(), t.position))
            .collect();
        assert_eq!(whole, [("a@b.com", 0), ("c@d.org", 1)]);
    }

    #[test]
    fn address_is_folded_like_words() {
        assert_eq!(texts("JÜRGEN@Bücher.DE")[0], "jurgen@bucher.de");
    }

    #[test]
    fn truncates_long_tokens_at_64_bytes() {
        let long = "a".repeat(200);
        assert_eq!(texts(&long), ["a".repeat(MAX_TOKEN_BYTES)]);
        // Multi-byte characters are cut at a character boundary.
        let long = "é".repeat(100);
        let t = texts(&long);
        assert_eq!(t[0], "e".repeat(64));
        let long = "ж".repeat(100);
        let t = texts(&long);
        assert_eq!(t[0].len(), 64);
        assert!(t[0].chars().all(|c| c == 'ж'));
    }

    #[test]
    fn truncated_token_does_not_end_in_punctuation() {
        let word = format!("{}.{}", "a".repeat(63), "b".repeat(10));
        assert_eq!(texts(&word), ["a".repeat(63)]);
    }

    #[test]
    fn caps_tokens_per_field() {
        let body = "word ".repeat(MAX_TOKENS_PER_FIELD + 10);
        let tokens = normalize_tokens(&body);
        assert_eq!(tokens.len(), MAX_TOKENS_PER_FIELD);
        assert_eq!(
            tokens.last().map(|t| t.position),
            Some(MAX_TOKENS_PER_FIELD as u32 - 1)
        );
    }

    #[test]
    fn normalized_tokens_normalize_to_themselves() {
        let input = "Müller's ÉCOLE ﬁne 3.14 東京 don’t ann@Example.com e-mail ½ ㎒";
        for token in normalize_tokens(input) {
            if token.kind != TokenKind::Word {
                continue;
            }
            assert_eq!(
                texts(&token.text),
                std::slice::from_ref(&token.text),
                "{token:?}"
            );
        }
    }

    #[test]
    fn a_mark_after_a_space_is_a_token_without_the_space() {
        // UAX #29 (WB4) puts a combining mark that follows a space into the space's segment.
        assert_eq!(texts("क \u{940} ख"), ["क", "\u{940}", "ख"]);
        assert_eq!(texts("a\u{a0}\u{940}b"), ["a", "\u{940}", "b"]);
        let q = texts("\"ft \u{940} etd\"");
        assert_eq!(q, ["ft", "\u{940}", "etd"]);
    }

    #[test]
    fn random_text_never_panics_and_tokens_are_stable() {
        let alphabet: Vec<char> =
            "aZé@.-_'\" ()ß東ガ🎉1 \u{308}\u{301}:+ﬁ½ı\u{3099}\n\u{940}\u{94d}\u{a0}"
                .chars()
                .collect();
        let mut rng = crate::search::tests_support::XorShift::new(0x5eed);
        for _ in 0..3000 {
            let len = rng.below(40);
            let s: String = (0..len)
                .map(|_| alphabet[rng.below(alphabet.len())])
                .collect();
            let tokens = normalize_tokens(&s);
            let mut last = 0;
            for t in &tokens {
                assert!(!t.text.is_empty(), "{s:?}");
                assert!(!t.text.contains(char::is_whitespace), "{s:?}: {t:?}");
                assert!(t.position >= last, "{s:?}");
                last = t.position;
                assert!(t.text.len() <= MAX_ADDRESS_BYTES);
                if t.kind == TokenKind::Word {
                    assert_eq!(texts(&t.text), std::slice::from_ref(&t.text), "input {s:?}");
                }
            }
        }
    }

    /// The word path of [`normalize_tokens`] without its ASCII shortcut: fold, segment
    /// again, truncate.
    fn general_word_path(text: &str) -> Vec<String> {
        let mut out = Vec::new();
        for word in text.unicode_words() {
            for piece in fold(word, Normalization::CURRENT).unicode_words() {
                let t = truncate(piece.trim_start(), MAX_TOKEN_BYTES);
                if !t.is_empty() {
                    out.push(t.to_owned());
                }
            }
        }
        out
    }

    #[test]
    fn ascii_word_shortcut_gives_the_tokens_of_the_general_path() {
        let alphabet: Vec<char> = "aZq09_ .,:'\"-\n".chars().collect();
        let mut rng = crate::search::tests_support::XorShift::new(0xa5c11);
        let long = format!("{}_X9", "Ab".repeat(40));
        let mut inputs = vec![
            "Hello WORLD foo_bar 42 3.14 don't a:b _x_ x__ Z9z".to_owned(),
            long.clone(),
            format!("{long} {long}b"),
        ];
        for _ in 0..3000 {
            let len = rng.below(60);
            inputs.push(
                (0..len)
                    .map(|_| alphabet[rng.below(alphabet.len())])
                    .collect(),
            );
        }
        for s in &inputs {
            let tokens = normalize_tokens(s);
            let got: Vec<String> = tokens.iter().map(|t| t.text.clone()).collect();
            assert_eq!(got, general_word_path(s), "input {s:?}");
            let positions: Vec<u32> = tokens.iter().map(|t| t.position).collect();
            let expected: Vec<u32> = (0..positions.len() as u32).collect();
            assert_eq!(positions, expected, "input {s:?}");
        }
    }
}
