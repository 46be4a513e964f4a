//! The search query language: parser, AST and its translation to index terms.
//!
//! # Syntax (Gmail-like)
//!
//! ```text
//! invoice march            both terms (AND is implicit; an explicit AND is also accepted)
//! "quarterly report"       a phrase: consecutive words
//! from:ann  to:example.com  subject:invoice  body:refund  filename:pdf
//! from:"ann lee"           a field with a phrase
//! has:attachment
//! before:2026-03-01        date < 2026-03-01T00:00:00Z (exclusive)
//! after:2026/02/01         date >= 2026-02-01T00:00:00Z (inclusive)
//! -spam  -from:bob  -(a OR b)   negation of any atom
//! a OR b                   either (OR is uppercase; lowercase "or" is a word)
//! (a b) OR c               parentheses group
//! invoi*  from:ann*        words starting with a prefix (plaintext mode only)
//! recieve~  recieve~2      words within 1 (or 2) edits (plaintext mode, tantivy only)
//! ```
//!
//! **Prefix and fuzzy** words (a bare word, or an operator's unquoted value, ending in `*`,
//! `~`, `~1` or `~2`) need terms in the clear: in blind mode (the default) an index term is
//! a keyed hash of a whole word, so they are refused with an error naming the position
//! ([`Query::parse_for`]). The part before the marker must normalize to one word, of at least
//! 2 characters for a prefix and 3 for a fuzzy word. An edit is an insertion, a deletion, a
//! substitution or a swap of two neighbouring characters.
//!
//! **Precedence** follows Gmail: `OR` binds tighter than the implicit AND, so `a b OR c` is
//! `a AND (b OR c)`. Negation binds tightest: `-a OR b` is `(NOT a) OR b`.
//!
//! **Operators** are letters followed by a colon (`from:`, case-insensitive); an unknown one
//! (`is:unread`, `re:x`) is an error rather than silently searched as text — quote it
//! (`"re:x"`) to search the words. Dates are `YYYY-MM-DD` or `YYYY/MM/DD` (month and day may
//! have one digit), as the start of that day in UTC, in epoch milliseconds.
//!
//! **Normalization**: every term and phrase goes through
//! [`normalize_tokens_with`](super::tokenize::normalize_tokens_with), the tokenizer of
//! indexing, under the folding rules of the index being searched ([`Query::parse_with`]), so
//! the AST holds normalized words. A term that becomes several words ("e-mail",
//! "3/4") becomes a phrase of them; a term that is an email address becomes one term, the
//! whole address; a one-word phrase becomes a term; a term or phrase that becomes nothing
//! (emoji, punctuation) is dropped, and a query where everything is dropped is an error.
//!
//! **Positive terms**: a query must match something by itself, not only exclude: `-a -b` is an
//! error. `And` is positive when any child is, `Or` when every child is, `Not` never.
//!
//! Positions in errors are offsets in characters (not bytes) from the start of the query.

use std::fmt;

use super::blind::{BlindToken, Field, IndexKey, IndexTerm, Indexer, Mode};
use super::tokenize::{Normalization, TokenKind, normalize_tokens_with};

/// Longest accepted query, in characters.
pub const MAX_QUERY_CHARS: usize = 4096;
/// Deepest nesting of parentheses and negations.
pub const MAX_QUERY_DEPTH: usize = 32;

const DAY_MS: i64 = 86_400_000;

/// A parsed, normalized query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Query {
    /// Every child matches (never nested directly in another `And`).
    And(Vec<Query>),
    /// Some child matches (never nested directly in another `Or`).
    Or(Vec<Query>),
    Not(Box<Query>),
    /// One normalized token; `field: None` searches every text field.
    Term {
        field: Option<Field>,
        text: String,
    },
    /// Tokens starting with this normalized prefix (plaintext mode).
    Prefix {
        field: Option<Field>,
        text: String,
    },
    /// Tokens within `distance` (1 or 2) edits of this normalized token (plaintext mode).
    Fuzzy {
        field: Option<Field>,
        text: String,
        distance: u8,
    },
    /// Two or more normalized tokens at consecutive positions.
    Phrase {
        field: Option<Field>,
        words: Vec<String>,
    },
    HasAttachment,
    /// Date strictly before this instant (epoch ms, start of a UTC day).
    Before(i64),
    /// Date at or after this instant (epoch ms, start of a UTC day).
    After(i64),
}

impl Query {
    /// Parses and normalizes a query (see the module docs) by the current folding rules.
    pub fn parse(input: &str) -> Result<Query, QueryError> {
        parse(input)
    }

    /// Parses a query, normalizing its words by `normalization`: the rules the terms of
    /// the index it is for were made with.
    pub fn parse_with(input: &str, normalization: Normalization) -> Result<Query, QueryError> {
        parse_normalized(input, normalization, true)
    }

    /// [`Query::parse_with`] for an index in `mode`: in blind mode, prefix and fuzzy words are
    /// refused ([`QueryErrorKind::PatternNeedsPlaintext`]).
    pub fn parse_for(
        input: &str,
        normalization: Normalization,
        mode: Mode,
    ) -> Result<Query, QueryError> {
        parse_normalized(input, normalization, mode == Mode::Plaintext)
    }

    /// Whether the query has a prefix or fuzzy word.
    pub fn has_patterns(&self) -> bool {
        match self {
            Query::And(c) | Query::Or(c) => c.iter().any(Query::has_patterns),
            Query::Not(q) => q.has_patterns(),
            Query::Prefix { .. } | Query::Fuzzy { .. } => true,
            _ => false,
        }
    }

    /// Whether the query matches something by itself (it is not only an exclusion).
    pub fn is_positive(&self) -> bool {
        match self {
            Query::Not(_) => false,
            Query::And(children) => children.iter().any(Query::is_positive),
            Query::Or(children) => children.iter().all(Query::is_positive),
            _ => true,
        }
    }
}

/// A query failed to parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", render(&self.kind, self.position))]
pub struct QueryError {
    /// Offset in characters from the start of the query.
    pub position: usize,
    pub kind: QueryErrorKind,
}

/// Why a query failed to parse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueryErrorKind {
    /// Nothing but whitespace.
    Empty,
    /// Longer than [`MAX_QUERY_CHARS`].
    TooLong,
    /// Parentheses or negations nested deeper than [`MAX_QUERY_DEPTH`].
    TooDeep,
    /// A `"` without its closing `"`; the position is the opening quote.
    UnterminatedPhrase,
    /// `name:` where `name` is not an operator.
    UnknownField(String),
    /// `has:` with something other than `attachment`.
    UnknownHasValue(String),
    /// An operator with nothing after its colon.
    MissingValue(String),
    /// A `before:`/`after:` value that is not a valid date.
    InvalidDate(String),
    /// A `-` with nothing after it.
    NothingToNegate,
    /// A `(` without `)` (position of the `(`) or a `)` without `(`.
    UnbalancedParenthesis,
    /// `()`.
    EmptyGroup,
    /// `OR` or `AND` without a term on one side.
    DanglingOperator(&'static str),
    /// Every term normalized to nothing (only punctuation, symbols or emoji).
    NoSearchableTerms,
    /// Only negations: nothing to match.
    OnlyNegations,
    /// A prefix or fuzzy word against an index of blind tokens.
    PatternNeedsPlaintext,
    /// A prefix or fuzzy word that does not normalize to exactly one word.
    PatternNeedsOneWord,
    /// A prefix shorter than 2 characters or a fuzzy word shorter than 3.
    PatternTooShort,
    /// `~` with a distance other than 1 or 2.
    InvalidFuzzyDistance,
}

fn render(kind: &QueryErrorKind, position: usize) -> String {
    match kind {
        QueryErrorKind::Empty => "empty query".to_owned(),
        QueryErrorKind::TooLong => {
            format!("query is too long (at most {MAX_QUERY_CHARS} characters)")
        }
        QueryErrorKind::TooDeep => format!(
            "query nests too deeply at position {position} (at most {MAX_QUERY_DEPTH} levels of parentheses and negations)"
        ),
        QueryErrorKind::UnterminatedPhrase => {
            format!("unterminated phrase starting at position {position}")
        }
        QueryErrorKind::UnknownField(name) => {
            format!(
                "unknown field '{name}' at position {position} (known: from, to, subject, body, filename, has, before, after; quote the text to search for it)"
            )
        }
        QueryErrorKind::UnknownHasValue(value) => format!(
            "unknown value '{value}' for has: at position {position} (only has:attachment is supported)"
        ),
        QueryErrorKind::MissingValue(op) => {
            format!("missing value after '{op}:' at position {position}")
        }
        QueryErrorKind::InvalidDate(value) => format!(
            "invalid date '{value}' at position {position} (expected YYYY-MM-DD or YYYY/MM/DD)"
        ),
        QueryErrorKind::NothingToNegate => format!("nothing to negate at position {position}"),
        QueryErrorKind::UnbalancedParenthesis => {
            format!("unbalanced parenthesis at position {position}")
        }
        QueryErrorKind::EmptyGroup => format!("empty parentheses at position {position}"),
        QueryErrorKind::DanglingOperator(op) => {
            format!("'{op}' needs a term on each side at position {position}")
        }
        QueryErrorKind::NoSearchableTerms => {
            "the query has no searchable words (only punctuation, symbols or emoji)".to_owned()
        }
        QueryErrorKind::OnlyNegations => "a query needs at least one positive term".to_owned(),
        QueryErrorKind::PatternNeedsPlaintext => format!(
            "prefix and fuzzy searches need plaintext mode at position {position}: this index holds blind tokens of whole words"
        ),
        QueryErrorKind::PatternNeedsOneWord => {
            format!("a prefix or fuzzy search takes one word at position {position}")
        }
        QueryErrorKind::PatternTooShort => format!(
            "too short for a prefix (at least 2 characters) or fuzzy search (at least 3) at position {position}"
        ),
        QueryErrorKind::InvalidFuzzyDistance => {
            format!("a fuzzy search allows 1 or 2 edits (word~1, word~2) at position {position}")
        }
    }
}

fn err<T>(position: usize, kind: QueryErrorKind) -> Result<T, QueryError> {
    Err(QueryError { position, kind })
}

/// Parses and normalizes a query (see the module docs) by the current folding rules.
pub fn parse(input: &str) -> Result<Query, QueryError> {
    parse_normalized(input, Normalization::CURRENT, true)
}

/// [`parse`], normalizing words by `normalization`; prefix and fuzzy words only if `patterns`.
fn parse_normalized(
    input: &str,
    normalization: Normalization,
    patterns: bool,
) -> Result<Query, QueryError> {
    let chars: Vec<char> = input.chars().collect();
    if chars.len() > MAX_QUERY_CHARS {
        return err(MAX_QUERY_CHARS, QueryErrorKind::TooLong);
    }
    let mut p = Parser {
        chars,
        pos: 0,
        normalization,
        patterns,
    };
    p.skip_ws();
    if p.at_end() {
        return err(0, QueryErrorKind::Empty);
    }
    let (query, _) = p.parse_and(0)?;
    p.skip_ws();
    if !p.at_end() {
        // parse_and only stops early at a ')' without its '('.
        return err(p.pos, QueryErrorKind::UnbalancedParenthesis);
    }
    let Some(query) = query else {
        return err(0, QueryErrorKind::NoSearchableTerms);
    };
    if !query.is_positive() {
        return err(0, QueryErrorKind::OnlyNegations);
    }
    Ok(query)
}

struct Parser {
    chars: Vec<char>,
    pos: usize,
    normalization: Normalization,
    /// Whether prefix and fuzzy words are allowed (plaintext mode).
    patterns: bool,
}

/// Characters that end a bare word.
fn ends_word(c: char) -> bool {
    c.is_whitespace() || matches!(c, '(' | ')' | '"')
}

impl Parser {
    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    fn at_end(&self) -> bool {
        self.pos >= self.chars.len()
    }

    fn skip_ws(&mut self) {
        while self.peek().is_some_and(char::is_whitespace) {
            self.pos += 1;
        }
    }

    /// Whether the upcoming word is exactly `kw` (an operator keyword).
    fn at_keyword(&self, kw: &str) -> bool {
        let n = kw.chars().count();
        let Some(slice) = self.chars.get(self.pos..self.pos + n) else {
            return false;
        };
        slice.iter().copied().eq(kw.chars())
            && self.chars.get(self.pos + n).is_none_or(|&c| ends_word(c))
    }

    /// Whether a term can start here (not the end, not `)` and not a keyword).
    fn at_operand(&self) -> bool {
        !(self.at_end()
            || self.peek() == Some(')')
            || self.at_keyword("OR")
            || self.at_keyword("AND"))
    }

    /// `and := or ( [AND] or )*`, up to the end or a `)`. Also says whether any operand was
    /// seen (even one that normalized to nothing), to tell `()` from `(🎉)`.
    fn parse_and(&mut self, depth: usize) -> Result<(Option<Query>, bool), QueryError> {
        let mut parts = Vec::new();
        let mut seen = false;
        loop {
            self.skip_ws();
            if self.at_end() || self.peek() == Some(')') {
                break;
            }
            if self.at_keyword("AND") {
                let at = self.pos;
                self.pos += 3;
                self.skip_ws();
                if !seen || !self.at_operand() {
                    return err(at, QueryErrorKind::DanglingOperator("AND"));
                }
                continue;
            }
            if self.at_keyword("OR") {
                return err(self.pos, QueryErrorKind::DanglingOperator("OR"));
            }
            seen = true;
            if let Some(q) = self.parse_or(depth)? {
                parts.push(q);
            }
        }
        Ok((combine(parts, true), seen))
    }

    /// `or := unary ( OR unary )*`
    fn parse_or(&mut self, depth: usize) -> Result<Option<Query>, QueryError> {
        let mut alternatives = vec![self.parse_unary(depth)?];
        loop {
            let save = self.pos;
            self.skip_ws();
            if !self.at_keyword("OR") {
                self.pos = save;
                break;
            }
            let at = self.pos;
            self.pos += 2;
            self.skip_ws();
            if !self.at_operand() {
                return err(at, QueryErrorKind::DanglingOperator("OR"));
            }
            alternatives.push(self.parse_unary(depth)?);
        }
        Ok(combine(alternatives.into_iter().flatten().collect(), false))
    }

    /// `unary := '-' unary | atom`
    fn parse_unary(&mut self, depth: usize) -> Result<Option<Query>, QueryError> {
        if depth > MAX_QUERY_DEPTH {
            return err(self.pos, QueryErrorKind::TooDeep);
        }
        if self.peek() != Some('-') {
            return self.parse_atom(depth);
        }
        let at = self.pos;
        self.pos += 1;
        match self.peek() {
            None | Some(')') => return err(at, QueryErrorKind::NothingToNegate),
            Some(c) if c.is_whitespace() => return err(at, QueryErrorKind::NothingToNegate),
            _ => {}
        }
        let inner = self.parse_unary(depth + 1)?;
        Ok(inner.map(|q| match q {
            Query::Not(double) => *double,
            q => Query::Not(Box::new(q)),
        }))
    }

    /// `atom := '(' and ')' | phrase | operator ':' value | word`
    fn parse_atom(&mut self, depth: usize) -> Result<Option<Query>, QueryError> {
        match self.peek() {
            Some('(') => {
                let open = self.pos;
                if depth + 1 > MAX_QUERY_DEPTH {
                    return err(open, QueryErrorKind::TooDeep);
                }
                self.pos += 1;
                let (inner, seen) = self.parse_and(depth + 1)?;
                self.skip_ws();
                if self.peek() != Some(')') {
                    return err(open, QueryErrorKind::UnbalancedParenthesis);
                }
                self.pos += 1;
                if !seen {
                    return err(open, QueryErrorKind::EmptyGroup);
                }
                Ok(inner)
            }
            Some(')') => err(self.pos, QueryErrorKind::UnbalancedParenthesis),
            Some('"') => {
                let (text, _) = self.read_phrase()?;
                Ok(text_query(None, &text, self.normalization))
            }
            _ => self.parse_word(),
        }
    }

    /// Reads `"..."` starting at the opening quote; returns the content and its position.
    fn read_phrase(&mut self) -> Result<(String, usize), QueryError> {
        let open = self.pos;
        let content_start = open + 1;
        let Some(len) = self.chars[content_start..].iter().position(|&c| c == '"') else {
            return err(open, QueryErrorKind::UnterminatedPhrase);
        };
        let text: String = self.chars[content_start..content_start + len]
            .iter()
            .collect();
        self.pos = content_start + len + 1;
        Ok((text, content_start))
    }

    fn parse_word(&mut self) -> Result<Option<Query>, QueryError> {
        let start = self.pos;
        while self.peek().is_some_and(|c| !ends_word(c)) {
            self.pos += 1;
        }
        let word: String = self.chars[start..self.pos].iter().collect();
        if word == "OR" || word == "AND" {
            return err(start, QueryErrorKind::DanglingOperator(keyword(&word)));
        }
        let Some((name, value)) = word
            .split_once(':')
            .filter(|(name, _)| !name.is_empty() && name.chars().all(|c| c.is_ascii_alphabetic()))
        else {
            return self.word_query(None, &word, start);
        };
        let name_len = name.chars().count();
        let mut value_pos = start + name_len + 1;
        let mut value = value.to_owned();
        let mut quoted = false;
        if value.is_empty() && self.peek() == Some('"') {
            (value, value_pos) = self.read_phrase()?;
            quoted = true;
        }
        let lower = name.to_ascii_lowercase();
        let operator = match lower.as_str() {
            "has" | "before" | "after" => lower.as_str(),
            _ => match Field::from_operator(name) {
                Some(field) => field.operator(),
                None => return err(start, QueryErrorKind::UnknownField(name.to_owned())),
            },
        };
        if value.is_empty() && !quoted {
            return err(value_pos, QueryErrorKind::MissingValue(operator.to_owned()));
        }
        match operator {
            "has" => {
                if value.eq_ignore_ascii_case("attachment") {
                    Ok(Some(Query::HasAttachment))
                } else {
                    err(value_pos, QueryErrorKind::UnknownHasValue(value))
                }
            }
            "before" | "after" => {
                let Some(ms) = parse_date(&value) else {
                    return err(value_pos, QueryErrorKind::InvalidDate(value));
                };
                Ok(Some(if operator == "before" {
                    Query::Before(ms)
                } else {
                    Query::After(ms)
                }))
            }
            _ if quoted => Ok(text_query(
                Field::from_operator(operator),
                &value,
                self.normalization,
            )),
            _ => self.word_query(Field::from_operator(operator), &value, value_pos),
        }
    }

    /// A bare word at `position`: a prefix (`word*`) or fuzzy word (`word~`, `word~1`,
    /// `word~2`), else a term or phrase of its normalized words.
    fn word_query(
        &self,
        field: Option<Field>,
        word: &str,
        position: usize,
    ) -> Result<Option<Query>, QueryError> {
        let (stem, pattern) = if let Some(stem) = word.strip_suffix('*') {
            (stem, Some(None))
        } else if let Some((stem, distance)) = word.rsplit_once('~') {
            let distance = match distance {
                "" | "1" => 1,
                "2" => 2,
                _ if distance.len() == 1 && distance.chars().all(|c| c.is_ascii_digit()) => {
                    return err(position, QueryErrorKind::InvalidFuzzyDistance);
                }
                // A `~` inside the word (`a~b`, `50~60`) is only punctuation.
                _ => return Ok(text_query(field, word, self.normalization)),
            };
            (stem, Some(Some(distance)))
        } else {
            (word, None)
        };
        let Some(fuzzy) = pattern.filter(|_| !stem.is_empty()) else {
            return Ok(text_query(field, word, self.normalization));
        };
        if !self.patterns {
            return err(position, QueryErrorKind::PatternNeedsPlaintext);
        }
        let mut words = query_words_with(stem, self.normalization);
        // One word that can be written back bare: a word holding `:` (`re:meet*`) would be
        // read back as an operator.
        let (Some(text), true) = (words.pop(), words.is_empty()) else {
            return err(position, QueryErrorKind::PatternNeedsOneWord);
        };
        if !is_bare(&text) {
            return err(position, QueryErrorKind::PatternNeedsOneWord);
        }
        let min = if fuzzy.is_some() { 3 } else { 2 };
        if text.chars().count() < min {
            return err(position, QueryErrorKind::PatternTooShort);
        }
        Ok(Some(match fuzzy {
            None => Query::Prefix { field, text },
            Some(distance) => Query::Fuzzy {
                field,
                text,
                distance,
            },
        }))
    }
}

fn keyword(word: &str) -> &'static str {
    if word == "AND" { "AND" } else { "OR" }
}

/// Folds a list of operands into one: none → `None`, one → itself, more → an `And` (or an
/// `Or`), with children of the same kind flattened into it.
fn combine(parts: Vec<Query>, and: bool) -> Option<Query> {
    let mut flat = Vec::with_capacity(parts.len());
    for part in parts {
        match part {
            Query::And(children) if and => flat.extend(children),
            Query::Or(children) if !and => flat.extend(children),
            part => flat.push(part),
        }
    }
    match flat.len() {
        0 => None,
        1 => flat.pop(),
        _ if and => Some(Query::And(flat)),
        _ => Some(Query::Or(flat)),
    }
}

/// The term or phrase for a piece of query text, normalized like indexed text.
fn text_query(field: Option<Field>, text: &str, normalization: Normalization) -> Option<Query> {
    let mut words = query_words_with(text, normalization);
    match words.len() {
        0 => None,
        1 => words.pop().map(|text| Query::Term { field, text }),
        _ => Some(Query::Phrase { field, words }),
    }
}

/// Normalized words of query text, one per position: for an address, the whole address.
pub fn query_words(text: &str) -> Vec<String> {
    query_words_with(text, Normalization::CURRENT)
}

/// [`query_words`] under the folding rules `normalization`.
fn query_words_with(text: &str, normalization: Normalization) -> Vec<String> {
    let mut words: Vec<String> = Vec::new();
    let mut last_position = None;
    for token in normalize_tokens_with(text, normalization) {
        if last_position == Some(token.position) {
            continue;
        }
        if token.kind == TokenKind::AddressPart {
            // Cannot happen (the whole address comes first), but never search a part alone.
            continue;
        }
        last_position = Some(token.position);
        words.push(token.text);
    }
    words
}

/// `YYYY-MM-DD` or `YYYY/MM/DD` (one separator throughout; month and day with 1 or 2 digits)
/// as the start of that UTC day in epoch milliseconds.
fn parse_date(s: &str) -> Option<i64> {
    let sep = if s.contains('-') { '-' } else { '/' };
    let mut parts = s.split(sep);
    let (y, m, d) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some()
        || y.len() != 4
        || !(1..=2).contains(&m.len())
        || !(1..=2).contains(&d.len())
        || ![y, m, d]
            .iter()
            .all(|p| p.bytes().all(|b| b.is_ascii_digit()))
    {
        return None;
    }
    let (y, m, d): (i64, i64, i64) = (y.parse().ok()?, m.parse().ok()?, d.parse().ok()?);
    if y == 0 || !(1..=12).contains(&m) || d < 1 || d > days_in_month(y, m) {
        return None;
    }
    Some(days_from_civil(y, m, d) * DAY_MS)
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        2 if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date of a day count since 1970-01-01 (inverse of [`days_from_civil`]).
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

fn write_date(f: &mut fmt::Formatter<'_>, ms: i64) -> fmt::Result {
    let (y, m, d) = civil_from_days(ms.div_euclid(DAY_MS));
    write!(f, "{y:04}-{m:02}-{d:02}")
}

/// Whether a normalized word can be written bare (otherwise it is quoted).
fn is_bare(word: &str) -> bool {
    !word.is_empty()
        && !word.starts_with('-')
        && !word
            .chars()
            .any(|c| c == ':' || c == '"' || c == '(' || c == ')' || c.is_whitespace())
        && word != "OR"
        && word != "AND"
}

/// Writes the query back in the query language; parsing the output gives the same query,
/// unless folding made the output longer than [`MAX_QUERY_CHARS`] (`¼` is written `1⁄4`):
/// then it is refused as [`QueryErrorKind::TooLong`], as any input of that length is.
impl fmt::Display for Query {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fn child(f: &mut fmt::Formatter<'_>, q: &Query) -> fmt::Result {
            match q {
                Query::And(_) | Query::Or(_) => write!(f, "({q})"),
                q => write!(f, "{q}"),
            }
        }
        fn prefix(f: &mut fmt::Formatter<'_>, field: &Option<Field>) -> fmt::Result {
            match field {
                Some(field) => write!(f, "{}:", field.operator()),
                None => Ok(()),
            }
        }
        match self {
            Query::And(children) | Query::Or(children) => {
                let sep = if matches!(self, Query::And(_)) {
                    " "
                } else {
                    " OR "
                };
                for (i, c) in children.iter().enumerate() {
                    if i > 0 {
                        f.write_str(sep)?;
                    }
                    child(f, c)?;
                }
                Ok(())
            }
            Query::Not(inner) => {
                f.write_str("-")?;
                child(f, inner)
            }
            Query::Term { field, text } => {
                prefix(f, field)?;
                if is_bare(text) {
                    f.write_str(text)
                } else {
                    write!(f, "\"{text}\"")
                }
            }
            Query::Phrase { field, words } => {
                prefix(f, field)?;
                write!(f, "\"{}\"", words.join(" "))
            }
            Query::Prefix { field, text } => {
                prefix(f, field)?;
                write!(f, "{text}*")
            }
            Query::Fuzzy {
                field,
                text,
                distance,
            } => {
                prefix(f, field)?;
                write!(f, "{text}~{distance}")
            }
            Query::HasAttachment => f.write_str("has:attachment"),
            Query::Before(ms) => {
                f.write_str("before:")?;
                write_date(f, *ms)
            }
            Query::After(ms) => {
                f.write_str("after:")?;
                write_date(f, *ms)
            }
        }
    }
}

/// A query with its words turned into index terms: the shape of [`Query`], with every text
/// node bound to one field (an unfielded term or phrase becomes an `Or` over [`Field::ALL`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResolvedQuery<T> {
    And(Vec<ResolvedQuery<T>>),
    Or(Vec<ResolvedQuery<T>>),
    Not(Box<ResolvedQuery<T>>),
    Term {
        field: Field,
        term: T,
    },
    Phrase {
        field: Field,
        terms: Vec<T>,
    },
    /// Terms starting with `term` (plaintext terms only).
    Prefix {
        field: Field,
        term: T,
    },
    /// Terms within `distance` edits of `term` (plaintext terms only).
    Fuzzy {
        field: Field,
        term: T,
        distance: u8,
    },
    HasAttachment,
    /// Date strictly before this instant (epoch ms).
    Before(i64),
    /// Date at or after this instant (epoch ms).
    After(i64),
}

/// A query over blind tokens.
pub type BlindQuery = ResolvedQuery<BlindToken>;
/// A query over normalized plaintext tokens.
pub type PlaintextQuery = ResolvedQuery<String>;
/// A query over index terms of either mode.
pub type IndexQuery = ResolvedQuery<IndexTerm>;

impl<T> ResolvedQuery<T> {
    /// Resolves every word of `q` with `term(field, normalized word)`.
    pub fn resolve(q: &Query, term: &mut impl FnMut(Field, &str) -> T) -> Self {
        // One node for a field, or a disjunction over every field.
        fn over_fields<T>(
            field: &Option<Field>,
            mut node: impl FnMut(Field) -> ResolvedQuery<T>,
        ) -> ResolvedQuery<T> {
            match field {
                Some(f) => node(*f),
                None => ResolvedQuery::Or(Field::ALL.iter().map(|&f| node(f)).collect()),
            }
        }
        match q {
            Query::And(c) => ResolvedQuery::And(c.iter().map(|q| Self::resolve(q, term)).collect()),
            Query::Or(c) => ResolvedQuery::Or(c.iter().map(|q| Self::resolve(q, term)).collect()),
            Query::Not(q) => ResolvedQuery::Not(Box::new(Self::resolve(q, term))),
            Query::Term { field, text } => over_fields(field, |f| ResolvedQuery::Term {
                field: f,
                term: term(f, text),
            }),
            Query::Phrase { field, words } => over_fields(field, |f| ResolvedQuery::Phrase {
                field: f,
                terms: words.iter().map(|w| term(f, w)).collect(),
            }),
            Query::Prefix { field, text } => over_fields(field, |f| ResolvedQuery::Prefix {
                field: f,
                term: term(f, text),
            }),
            Query::Fuzzy {
                field,
                text,
                distance,
            } => over_fields(field, |f| ResolvedQuery::Fuzzy {
                field: f,
                term: term(f, text),
                distance: *distance,
            }),
            Query::HasAttachment => ResolvedQuery::HasAttachment,
            Query::Before(ms) => ResolvedQuery::Before(*ms),
            Query::After(ms) => ResolvedQuery::After(*ms),
        }
    }
}

/// The query with every word blinded under `key` for its field.
pub fn blind_query(q: &Query, key: &IndexKey) -> BlindQuery {
    let mac = key.mac();
    ResolvedQuery::resolve(q, &mut |field, word| mac.blind(field, word))
}

/// The plaintext-mode counterpart of [`blind_query`]: words stay as normalized.
pub fn plaintext_query(q: &Query) -> PlaintextQuery {
    ResolvedQuery::resolve(q, &mut |_, word| word.to_owned())
}

/// The query in the indexer's mode.
pub fn index_query(q: &Query, indexer: &Indexer<'_>) -> IndexQuery {
    match indexer {
        Indexer::Blind(key) => {
            let mac = key.mac();
            ResolvedQuery::resolve(q, &mut |field, word| {
                IndexTerm::Blind(mac.blind(field, word))
            })
        }
        Indexer::Plaintext(_) => {
            ResolvedQuery::resolve(q, &mut |_, word| IndexTerm::Plain(word.to_owned()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::search::blind::{IndexKeyVersion, blind};

    fn q(input: &str) -> Query {
        match parse(input) {
            Ok(q) => q,
            Err(e) => panic!("{input:?}: {e}"),
        }
    }

    fn e(input: &str) -> QueryError {
        match parse(input) {
            Ok(q) => panic!("{input:?} parsed as {q:?}"),
            Err(e) => e,
        }
    }

    fn t(text: &str) -> Query {
        Query::Term {
            field: None,
            text: text.to_owned(),
        }
    }

    fn ft(field: Field, text: &str) -> Query {
        Query::Term {
            field: Some(field),
            text: text.to_owned(),
        }
    }

    fn ph(field: Option<Field>, words: &[&str]) -> Query {
        Query::Phrase {
            field,
            words: words.iter().map(|w| (*w).to_owned()).collect(),
        }
    }

    fn not(q: Query) -> Query {
        Query::Not(Box::new(q))
    }

    fn key() -> IndexKey {
        IndexKey::from_slice(IndexKeyVersion::FIRST, &[42u8; 32]).unwrap()
    }

    // ---- constructs ----

    #[test]
    fn single_term_is_normalized() {
        assert_eq!(q("Müller"), t("muller"));
    }

    #[test]
    fn terms_are_anded_by_default() {
        assert_eq!(
            q("invoice  march"),
            Query::And(vec![t("invoice"), t("march")])
        );
    }

    #[test]
    fn explicit_and_is_the_same_as_implicit_and() {
        assert_eq!(q("invoice AND march"), q("invoice march"));
    }

    #[test]
    fn lowercase_or_and_and_are_words() {
        assert_eq!(
            q("this or that"),
            Query::And(vec![t("this"), t("or"), t("that")])
        );
        assert_eq!(q("and"), t("and"));
    }

    #[test]
    fn quoted_phrase_becomes_phrase_of_normalized_words() {
        assert_eq!(
            q("\"Quarterly  REPORT\""),
            ph(None, &["quarterly", "report"])
        );
    }

    #[test]
    fn one_word_phrase_becomes_term() {
        assert_eq!(q("\"Report\""), t("report"));
    }

    #[test]
    fn hyphenated_term_becomes_phrase() {
        assert_eq!(q("e-mail"), ph(None, &["e", "mail"]));
    }

    #[test]
    fn address_term_becomes_whole_address_term() {
        assert_eq!(
            q("from:Ann@Example.com"),
            ft(Field::From, "ann@example.com")
        );
        assert_eq!(q("from:example.com"), ft(Field::From, "example.com"));
        assert_eq!(q("from:ann"), ft(Field::From, "ann"));
    }

    #[test]
    fn address_inside_phrase_takes_one_word() {
        assert_eq!(
            q("\"write to ann@example.com today\""),
            ph(None, &["write", "to", "ann@example.com", "today"])
        );
    }

    #[test]
    fn field_operators_map_to_fields() {
        assert_eq!(q("from:ann"), ft(Field::From, "ann"));
        assert_eq!(q("to:bob"), ft(Field::To, "bob"));
        assert_eq!(q("subject:Invoice"), ft(Field::Subject, "invoice"));
        assert_eq!(q("body:refund"), ft(Field::Body, "refund"));
        assert_eq!(
            q("filename:report.pdf"),
            ft(Field::AttachmentName, "report.pdf")
        );
    }

    #[test]
    fn field_operators_are_case_insensitive() {
        assert_eq!(q("From:ann"), ft(Field::From, "ann"));
        assert_eq!(q("SUBJECT:x"), ft(Field::Subject, "x"));
        assert_eq!(q("HAS:Attachment"), Query::HasAttachment);
    }

    #[test]
    fn field_with_quoted_phrase() {
        assert_eq!(
            q("from:\"Ann Lee\""),
            ph(Some(Field::From), &["ann", "lee"])
        );
        assert_eq!(q("subject:\"hello\""), ft(Field::Subject, "hello"));
    }

    #[test]
    fn has_attachment() {
        assert_eq!(q("has:attachment"), Query::HasAttachment);
    }

    #[test]
    fn dates_are_utc_day_starts_in_epoch_ms() {
        assert_eq!(q("after:1970-01-01"), Query::After(0));
        assert_eq!(q("before:1970-01-02"), Query::Before(86_400_000));
        assert_eq!(q("after:2026-03-01"), Query::After(1_772_323_200_000));
        assert_eq!(q("after:2026/03/01"), q("after:2026-03-01"));
        assert_eq!(q("after:2026/3/1"), q("after:2026-03-01"));
        assert_eq!(q("before:2024-02-29"), Query::Before(1_709_164_800_000));
        assert_eq!(q("before:1969-12-31"), Query::Before(-86_400_000));
    }

    #[test]
    fn date_range() {
        assert_eq!(
            q("after:2026-01-01 before:2026-02-01"),
            Query::And(vec![
                Query::After(1_767_225_600_000),
                Query::Before(1_769_904_000_000)
            ])
        );
    }

    #[test]
    fn negation_of_term_field_phrase_and_group() {
        assert_eq!(q("a -b"), Query::And(vec![t("a"), not(t("b"))]));
        assert_eq!(
            q("a -from:bob"),
            Query::And(vec![t("a"), not(ft(Field::From, "bob"))])
        );
        assert_eq!(
            q("a -\"b c\""),
            Query::And(vec![t("a"), not(ph(None, &["b", "c"]))])
        );
        assert_eq!(
            q("a -(b OR c)"),
            Query::And(vec![t("a"), not(Query::Or(vec![t("b"), t("c")]))])
        );
        assert_eq!(
            q("a -has:attachment"),
            Query::And(vec![t("a"), not(Query::HasAttachment)])
        );
    }

    #[test]
    fn double_negation_cancels() {
        assert_eq!(q("--a"), t("a"));
    }

    #[test]
    fn dash_inside_word_is_not_negation() {
        assert_eq!(q("foo-bar"), ph(None, &["foo", "bar"]));
    }

    #[test]
    fn or_of_terms() {
        assert_eq!(q("a OR b OR c"), Query::Or(vec![t("a"), t("b"), t("c")]));
    }

    #[test]
    fn or_binds_tighter_than_implicit_and() {
        assert_eq!(
            q("a b OR c"),
            Query::And(vec![t("a"), Query::Or(vec![t("b"), t("c")])])
        );
        assert_eq!(
            q("a OR b c"),
            Query::And(vec![Query::Or(vec![t("a"), t("b")]), t("c")])
        );
    }

    #[test]
    fn negation_binds_tighter_than_or() {
        assert_eq!(
            q("x (-a OR b)"),
            Query::And(vec![t("x"), Query::Or(vec![not(t("a")), t("b")])])
        );
    }

    #[test]
    fn parentheses_override_precedence() {
        assert_eq!(
            q("(a b) OR c"),
            Query::Or(vec![Query::And(vec![t("a"), t("b")]), t("c")])
        );
    }

    #[test]
    fn nested_groups_of_same_kind_are_flattened() {
        assert_eq!(
            q("a (b (c d))"),
            Query::And(vec![t("a"), t("b"), t("c"), t("d")])
        );
        assert_eq!(q("a OR (b OR c)"), Query::Or(vec![t("a"), t("b"), t("c")]));
        assert_eq!(q("((a))"), t("a"));
    }

    #[test]
    fn or_attaches_to_parenthesized_groups() {
        assert_eq!(q("(a)OR(b)"), Query::Or(vec![t("a"), t("b")]));
    }

    #[test]
    fn terms_that_normalize_to_nothing_are_dropped() {
        assert_eq!(q("invoice 🎉"), t("invoice"));
        assert_eq!(q("invoice OR 🎉"), t("invoice"));
        assert_eq!(q("invoice -🎉"), t("invoice"));
        assert_eq!(q("invoice from:🎉"), t("invoice"));
        assert_eq!(q("invoice (🎉 !!)"), t("invoice"));
    }

    #[test]
    fn complex_query_parses() {
        assert_eq!(
            q("from:ann subject:\"q1 report\" has:attachment -spam after:2026-01-01 (pdf OR xlsx)"),
            Query::And(vec![
                ft(Field::From, "ann"),
                ph(Some(Field::Subject), &["q1", "report"]),
                Query::HasAttachment,
                not(t("spam")),
                Query::After(1_767_225_600_000),
                Query::Or(vec![t("pdf"), t("xlsx")]),
            ])
        );
    }

    #[test]
    fn field_value_may_contain_colons() {
        assert_eq!(q("subject:re:hello"), ft(Field::Subject, "re:hello"));
    }

    #[test]
    fn quoted_text_with_colon_is_searched_as_text() {
        assert_eq!(q("\"is:unread\""), t("is:unread"));
    }

    #[test]
    fn word_starting_with_digits_and_colon_is_text() {
        assert_eq!(q("10:30"), ph(None, &["10", "30"]));
    }

    // ---- errors ----

    #[test]
    fn empty_query_is_an_error() {
        assert_eq!(e("").kind, QueryErrorKind::Empty);
        assert_eq!(e("   \t").kind, QueryErrorKind::Empty);
        assert_eq!(e("").to_string(), "empty query");
    }

    #[test]
    fn unterminated_phrase_names_the_opening_quote() {
        let err = e("subject \"hello world");
        assert_eq!(err.position, 8);
        assert_eq!(err.kind, QueryErrorKind::UnterminatedPhrase);
        assert_eq!(
            err.to_string(),
            "unterminated phrase starting at position 8"
        );
        assert_eq!(e("from:\"ann").position, 5);
    }

    #[test]
    fn unknown_field_names_the_field_and_position() {
        let err = e("foo:bar");
        assert_eq!(err.position, 0);
        assert_eq!(err.kind, QueryErrorKind::UnknownField("foo".into()));
        assert!(
            err.to_string()
                .starts_with("unknown field 'foo' at position 0")
        );
        assert_eq!(e("a is:unread").position, 2);
    }

    #[test]
    fn invalid_dates_name_the_value_position() {
        let err = e("after:2026-13-01");
        assert_eq!(err.position, 6);
        assert_eq!(err.kind, QueryErrorKind::InvalidDate("2026-13-01".into()));
        assert!(
            err.to_string()
                .starts_with("invalid date '2026-13-01' at position 6")
        );
        for bad in [
            "before:2026-02-30",
            "before:2025-02-29",
            "before:2026-00-10",
            "before:2026-01-00",
            "before:26-01-01",
            "before:2026-01",
            "before:2026-01-01-01",
            "before:2026-01/01",
            "before:yesterday",
            "before:0000-01-01",
            "before:2026-001-01",
            "before:+026-01-01",
        ] {
            assert!(
                matches!(e(bad).kind, QueryErrorKind::InvalidDate(_)),
                "{bad}"
            );
        }
        assert_eq!(q("before:2000-02-29"), Query::Before(951_782_400_000));
    }

    #[test]
    fn nothing_to_negate() {
        let err = e("abc - def");
        assert_eq!(err.position, 4);
        assert_eq!(err.kind, QueryErrorKind::NothingToNegate);
        assert_eq!(err.to_string(), "nothing to negate at position 4");
        assert_eq!(e("abc -").position, 4);
        assert_eq!(e("(a -)").position, 3);
    }

    #[test]
    fn unbalanced_parentheses() {
        let err = e("(a OR b");
        assert_eq!(err.position, 0);
        assert_eq!(err.kind, QueryErrorKind::UnbalancedParenthesis);
        assert_eq!(err.to_string(), "unbalanced parenthesis at position 0");
        let err = e("a OR b) c");
        assert_eq!(err.position, 6);
        assert_eq!(err.kind, QueryErrorKind::UnbalancedParenthesis);
        assert_eq!(e("a (b (c)").position, 2);
        assert_eq!(e(")").position, 0);
    }

    #[test]
    fn empty_parentheses() {
        let err = e("a ( )");
        assert_eq!((err.position, err.kind), (2, QueryErrorKind::EmptyGroup));
    }

    #[test]
    fn dangling_or_and_and() {
        assert_eq!(e("OR a").kind, QueryErrorKind::DanglingOperator("OR"));
        assert_eq!(e("OR a").position, 0);
        let err = e("a OR");
        assert_eq!(
            (err.position, err.kind.clone()),
            (2, QueryErrorKind::DanglingOperator("OR"))
        );
        assert_eq!(
            err.to_string(),
            "'OR' needs a term on each side at position 2"
        );
        assert_eq!(e("a OR OR b").position, 2);
        assert_eq!(e("a OR )").position, 2);
        assert_eq!(e("(OR a)").position, 1);
        assert_eq!(e("AND a").kind, QueryErrorKind::DanglingOperator("AND"));
        assert_eq!(e("a AND").position, 2);
        assert_eq!(e("a -OR b").position, 3);
    }

    #[test]
    fn missing_operator_value() {
        let err = e("from: ann");
        assert_eq!(
            (err.position, err.kind.clone()),
            (5, QueryErrorKind::MissingValue("from".into()))
        );
        assert_eq!(err.to_string(), "missing value after 'from:' at position 5");
        assert_eq!(
            e("before:").kind,
            QueryErrorKind::MissingValue("before".into())
        );
        assert_eq!(
            e("filename:").kind,
            QueryErrorKind::MissingValue("filename".into())
        );
    }

    #[test]
    fn unknown_has_value() {
        let err = e("has:drive");
        assert_eq!(
            (err.position, err.kind),
            (4, QueryErrorKind::UnknownHasValue("drive".into()))
        );
    }

    #[test]
    fn only_negations_is_an_error() {
        let err = e("-spam -from:bob");
        assert_eq!(err.kind, QueryErrorKind::OnlyNegations);
        assert_eq!(err.to_string(), "a query needs at least one positive term");
        assert_eq!(e("-a OR b").kind, QueryErrorKind::OnlyNegations);
        assert_eq!(e("-(a b)").kind, QueryErrorKind::OnlyNegations);
        assert!(parse("-a b").is_ok());
    }

    #[test]
    fn query_of_only_symbols_is_an_error() {
        assert_eq!(e("🎉 !!! ---x").kind, QueryErrorKind::OnlyNegations);
        let err = e("🎉 !!!");
        assert_eq!(err.kind, QueryErrorKind::NoSearchableTerms);
        assert_eq!(e("\"...\"").kind, QueryErrorKind::NoSearchableTerms);
        assert_eq!(e("from:🎉").kind, QueryErrorKind::NoSearchableTerms);
    }

    #[test]
    fn error_positions_count_characters_not_bytes() {
        // "ü" and "東" are 2 and 3 bytes but one character each.
        assert_eq!(e("über 東 \"x").position, 7);
        assert_eq!(e("ü foo:x").position, 2);
    }

    #[test]
    fn too_long_and_too_deep_queries_are_errors_not_crashes() {
        let long = "a ".repeat(MAX_QUERY_CHARS);
        assert_eq!(e(&long).kind, QueryErrorKind::TooLong);
        // Folding may lengthen a query: written back, this one is too long to parse again
        // (the limit is on what the user typed; fuzz finding).
        let input = "¼ ".repeat(MAX_QUERY_CHARS / 2);
        let query = parse(&input).unwrap();
        let written = query.to_string();
        assert!(written.starts_with("1⁄4 1⁄4"), "{written}");
        assert!(written.chars().count() > MAX_QUERY_CHARS);
        assert_eq!(e(&written).kind, QueryErrorKind::TooLong);
        let shorter = parse(&"¼ ".repeat(MAX_QUERY_CHARS / 8)).unwrap();
        assert_eq!(parse(&shorter.to_string()).unwrap(), shorter);
        let deep = format!("{}a{}", "(".repeat(100), ")".repeat(100));
        assert_eq!(e(&deep).kind, QueryErrorKind::TooDeep);
        let negations = format!("b {}a", "-".repeat(100));
        assert_eq!(e(&negations).kind, QueryErrorKind::TooDeep);
        let ok = format!("{}a{}", "(".repeat(10), ")".repeat(10));
        assert_eq!(q(&ok), t("a"));
    }

    #[test]
    fn errors_never_panic_on_random_input_and_valid_queries_round_trip() {
        let atoms = [
            "a",
            "Bé",
            "OR",
            "AND",
            "-",
            "(",
            ")",
            "\"",
            " ",
            " ",
            "from:",
            "to:",
            "subject:",
            "has:attachment",
            "has:x",
            "before:2026-01-02",
            "after:2026/2/3",
            "before:2026-2-30",
            "x:y",
            "ann@example.com",
            "🎉",
            "e-mail",
            "東京",
            "don't",
            ":",
            "--",
            "10:30",
            "or",
            "*",
            "~",
            "~2",
            "~7",
            "inv*",
            "wrod~",
            "é~2",
        ];
        let mut rng = crate::search::tests_support::XorShift::new(0xdead_beef);
        let mut parsed = 0;
        for _ in 0..5000 {
            let n = 1 + rng.below(8);
            let input: String = (0..n).map(|_| atoms[rng.below(atoms.len())]).collect();
            match parse(&input) {
                Ok(query) => {
                    parsed += 1;
                    assert!(query.is_positive(), "{input:?}");
                    let written = query.to_string();
                    assert_eq!(
                        parse(&written).as_ref(),
                        Ok(&query),
                        "{input:?} -> {written:?}"
                    );
                    let _ = blind_query(&query, &key());
                    // Blind mode parses the same unless the query has a prefix or fuzzy
                    // word, which it refuses.
                    match Query::parse_for(&input, Normalization::CURRENT, Mode::Blind) {
                        Ok(blind) => {
                            assert!(!query.has_patterns(), "{input:?}");
                            assert_eq!(blind, query, "{input:?}");
                        }
                        Err(err) => {
                            assert!(query.has_patterns(), "{input:?}: {err}");
                            assert_eq!(err.kind, QueryErrorKind::PatternNeedsPlaintext);
                        }
                    }
                }
                Err(err) => {
                    assert!(err.position <= input.chars().count(), "{input:?}: {err}");
                    assert!(!err.to_string().is_empty());
                }
            }
        }
        assert!(parsed > 500, "only {parsed} random queries parsed");
        // Arbitrary characters too.
        let alphabet: Vec<char> = "a-(\")OR: éü@.東🎉\t*~2".chars().collect();
        for _ in 0..3000 {
            let n = rng.below(30);
            let input: String = (0..n)
                .map(|_| alphabet[rng.below(alphabet.len())])
                .collect();
            if let Err(err) = parse(&input) {
                assert!(err.position <= input.chars().count(), "{input:?}: {err}");
            }
        }
    }

    #[test]
    fn display_round_trips_every_construct() {
        for input in [
            "a",
            "a b",
            "a OR b",
            "a b OR c",
            "(a b) OR c",
            "-a b",
            "a -(b OR c)",
            "from:ann to:example.com subject:\"q1 report\" body:x filename:report.pdf",
            "has:attachment a",
            "before:2026-03-01 after:1999-12-31 a",
            "\"re:meeting\"",
            "subject:\"re:x\"",
            "from:ann@example.com",
            "\"write to ann@example.com\"",
            "e-mail",
        ] {
            let query = q(input);
            let written = query.to_string();
            assert_eq!(q(&written), query, "{input:?} -> {written:?}");
        }
        assert_eq!(q("a b OR c").to_string(), "a (b OR c)");
        assert_eq!(q("after:2026/3/1 x").to_string(), "after:2026-03-01 x");
    }

    // ---- resolution to index terms ----

    #[test]
    fn unfielded_term_searches_every_text_field() {
        let k = key();
        let bq = blind_query(&q("invoice"), &k);
        let expected = ResolvedQuery::Or(
            Field::ALL
                .into_iter()
                .map(|f| ResolvedQuery::Term {
                    field: f,
                    term: blind(&k, f, "invoice"),
                })
                .collect(),
        );
        assert_eq!(bq, expected);
    }

    #[test]
    fn fielded_term_is_blinded_for_its_field_only() {
        let k = key();
        assert_eq!(
            blind_query(&q("from:Ann"), &k),
            ResolvedQuery::Term {
                field: Field::From,
                term: blind(&k, Field::From, "ann")
            }
        );
    }

    #[test]
    fn query_tokens_match_indexed_tokens() {
        let k = key();
        let indexed = crate::search::blind_text(&k, Field::From, "Ann Lee <ann.lee@example.com>");
        let has = |t: BlindToken| indexed.tokens.iter().any(|(x, _)| *x == t);
        for query in [
            "from:ANN",
            "from:Lee",
            "from:ann.lee@EXAMPLE.com",
            "from:example.com",
            "from:ann.lee",
        ] {
            match blind_query(&q(query), &k) {
                ResolvedQuery::Term { field, term } => {
                    assert_eq!(field, Field::From);
                    assert!(has(term), "{query}");
                }
                other => panic!("{query}: {other:?}"),
            }
        }
        // A phrase's tokens sit at consecutive indexed positions.
        let ResolvedQuery::Phrase { terms, .. } = blind_query(&q("from:\"ann lee\""), &k) else {
            panic!("not a phrase");
        };
        let positions: Vec<u32> = terms
            .iter()
            .filter_map(|t| indexed.tokens.iter().find(|(x, _)| x == t).map(|(_, p)| *p))
            .collect();
        assert_eq!(positions, [0, 1]);
    }

    #[test]
    fn blind_query_keeps_shape_and_non_text_nodes() {
        let k = key();
        let bq = blind_query(&q("subject:\"a b\" -has:attachment before:2026-01-01"), &k);
        assert_eq!(
            bq,
            ResolvedQuery::And(vec![
                ResolvedQuery::Phrase {
                    field: Field::Subject,
                    terms: vec![
                        blind(&k, Field::Subject, "a"),
                        blind(&k, Field::Subject, "b")
                    ],
                },
                ResolvedQuery::Not(Box::new(ResolvedQuery::HasAttachment)),
                ResolvedQuery::Before(1_767_225_600_000),
            ])
        );
    }

    #[test]
    fn blind_query_contains_no_plaintext() {
        let k = key();
        let bq = blind_query(&q("canary from:zebra \"secret hidden\""), &k);
        let printed = format!("{bq:?}").to_lowercase();
        for word in ["canary", "zebra", "secret", "hidden"] {
            assert!(!printed.contains(word), "{printed}");
        }
    }

    #[test]
    fn plaintext_query_keeps_normalized_words() {
        assert_eq!(
            plaintext_query(&q("subject:Müller -x")),
            ResolvedQuery::And(vec![
                ResolvedQuery::Term {
                    field: Field::Subject,
                    term: "muller".to_owned()
                },
                ResolvedQuery::Not(Box::new(ResolvedQuery::Or(
                    Field::ALL
                        .into_iter()
                        .map(|f| ResolvedQuery::Term {
                            field: f,
                            term: "x".to_owned()
                        })
                        .collect()
                ))),
            ])
        );
    }

    #[test]
    fn prefix_and_fuzzy_words_parse_with_fields_and_normalization() {
        assert_eq!(
            q("Invoi*"),
            Query::Prefix {
                field: None,
                text: "invoi".into()
            }
        );
        assert_eq!(
            q("from:Mül*"),
            Query::Prefix {
                field: Some(Field::From),
                text: "mul".into()
            }
        );
        assert_eq!(
            q("recieve~"),
            Query::Fuzzy {
                field: None,
                text: "recieve".into(),
                distance: 1
            }
        );
        assert_eq!(
            q("subject:recieve~2 -spam"),
            Query::And(vec![
                Query::Fuzzy {
                    field: Some(Field::Subject),
                    text: "recieve".into(),
                    distance: 2
                },
                not(t("spam")),
            ])
        );
        // Inside quotes, in the middle of a word, or alone, the markers are punctuation.
        assert_eq!(q("\"invoi*\""), t("invoi"));
        assert_eq!(q("subject:\"invoi*\""), ft(Field::Subject, "invoi"));
        assert_eq!(q("50~60"), q("\"50 60\""));
        assert_eq!(q("report * ~"), t("report"));
        // Written back, they parse the same.
        for input in [
            "invoi*",
            "from:mul*",
            "recieve~1",
            "to:recieve~2",
            "ab* OR bbb~2",
        ] {
            let parsed = q(input);
            assert_eq!(q(&parsed.to_string()), parsed, "{input}");
        }
        assert!(q("invoi* recieve~").has_patterns());
        assert!(!q("invoice").has_patterns());
    }

    #[test]
    fn prefix_and_fuzzy_words_are_checked_and_refused_in_blind_mode() {
        let at = |input: &str| {
            let e = e(input);
            (e.position, e.kind)
        };
        assert_eq!(at("ok i*"), (3, QueryErrorKind::PatternTooShort));
        assert_eq!(at("ab~"), (0, QueryErrorKind::PatternTooShort));
        assert_eq!(at("from:e-mai*"), (5, QueryErrorKind::PatternNeedsOneWord));
        // A word that could not be written back bare (it would read as an operator).
        assert_eq!(at("a :re:meet~"), (2, QueryErrorKind::PatternNeedsOneWord));
        assert_eq!(
            at("subject:re:meet*"),
            (8, QueryErrorKind::PatternNeedsOneWord)
        );
        assert_eq!(at("word~3"), (0, QueryErrorKind::InvalidFuzzyDistance));
        let blind = |input: &str| {
            Query::parse_for(input, Normalization::CURRENT, Mode::Blind)
                .map_err(|e| (e.position, e.kind))
        };
        assert_eq!(
            blind("report subject:invoi*"),
            Err((15, QueryErrorKind::PatternNeedsPlaintext))
        );
        assert_eq!(
            blind("recieve~"),
            Err((0, QueryErrorKind::PatternNeedsPlaintext))
        );
        let message = Query::parse_for("a invoi*", Normalization::CURRENT, Mode::Blind)
            .unwrap_err()
            .to_string();
        assert!(
            message.contains("plaintext mode at position 2"),
            "{message}"
        );
        // Whole words are fine in either mode.
        assert_eq!(blind("invoice"), Ok(t("invoice")));
        assert_eq!(
            Query::parse_for("invoi*", Normalization::CURRENT, Mode::Plaintext),
            Ok(q("invoi*"))
        );
    }

    #[test]
    fn index_query_follows_the_indexer_mode() {
        let k = key();
        let query = q("to:bob");
        assert_eq!(
            index_query(&query, &Indexer::Blind(&k)),
            ResolvedQuery::Term {
                field: Field::To,
                term: IndexTerm::Blind(blind(&k, Field::To, "bob"))
            }
        );
        assert_eq!(
            index_query(&query, &Indexer::PLAINTEXT),
            ResolvedQuery::Term {
                field: Field::To,
                term: IndexTerm::Plain("bob".to_owned())
            }
        );
    }
}
