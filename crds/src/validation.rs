//! Spec validation as pure functions.
//!
//! The OpenAPI schema and its CEL rules reject most bad input at the apiserver. The validators
//! here repeat those checks with precise messages and add what CEL cannot say well (a cron
//! expression's field ranges, a URL without credentials, an e-mail address's parts). The
//! operator runs them after dereferencing an object and reports failures as
//! `Ready=False`/`Stalled=True` with reason [`crate::conditions::reasons::INVALID_SPEC`] and
//! [`SpecErrors`]' display as the message.
//!
//! Every entry point is `XxxSpec::validate(&self) -> Result<(), SpecErrors>` (and
//! `validate_update(&self, old)` for kinds with immutable fields).

use std::fmt;

/// One reason a spec is not acceptable; `field` is the JSON path below `spec`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    /// A required string is empty.
    #[error("{field} must not be empty")]
    Empty {
        /// Path of the field.
        field: String,
    },
    /// A string or list is longer than its bound.
    #[error("{field} is {len} long, more than the {max} allowed")]
    TooLong {
        /// Path of the field.
        field: String,
        /// Length found (characters, bytes or items, as the field counts them).
        len: usize,
        /// Largest length allowed.
        max: usize,
    },
    /// A value does not have the required form.
    #[error("{field} {value:?} is not {expected}")]
    Malformed {
        /// Path of the field.
        field: String,
        /// The offending value (never a secret: specs hold only references to secrets).
        value: String,
        /// What the field must be, as a noun phrase.
        expected: &'static str,
    },
    /// A value that identifies a person or mailbox (an e-mail address, an agent login)
    /// does not have the required form. The value is not repeated: errors reach Events,
    /// conditions and the operator's log.
    #[error("{field} is not {expected} (the value is not repeated here)")]
    MalformedPersonal {
        /// Path of the field.
        field: String,
        /// What the field must be, as a noun phrase.
        expected: &'static str,
    },
    /// A number is outside its range.
    #[error("{field} is {value}, outside {min}..={max}")]
    OutOfRange {
        /// Path of the field.
        field: String,
        /// The value found.
        value: i64,
        /// Smallest value allowed.
        min: i64,
        /// Largest value allowed.
        max: i64,
    },
    /// Not exactly one of a set of alternatives is set.
    #[error("exactly one of {options} must be set in {field}, found {found}")]
    ExactlyOne {
        /// Path of the object holding the alternatives.
        field: String,
        /// The alternatives, joined for display.
        options: &'static str,
        /// How many were set.
        found: usize,
    },
    /// A field is missing that another field's value requires.
    #[error("{field} is required when {when}")]
    Required {
        /// Path of the field.
        field: String,
        /// The condition that requires it.
        when: &'static str,
    },
    /// A field is set that another field's value forbids.
    #[error("{field} must not be set when {when}")]
    NotAllowed {
        /// Path of the field.
        field: String,
        /// The condition that forbids it.
        when: &'static str,
    },
    /// An immutable field changed on update.
    #[error("{field} is immutable: it was {old:?}, the update sets {new:?}")]
    Immutable {
        /// Path of the field.
        field: String,
        /// Value before the update.
        old: String,
        /// Value the update asks for.
        new: String,
    },
    /// An immutable field that identifies a person or mailbox changed on update (the values
    /// are not repeated, see [`SpecError::MalformedPersonal`]).
    #[error("{field} is immutable: the update changes it (the values are not repeated here)")]
    ImmutablePersonal {
        /// Path of the field.
        field: String,
    },
    /// A cron expression is invalid.
    #[error("{field} {value:?} is not a valid 5-field cron expression: {source}")]
    Cron {
        /// Path of the field.
        field: String,
        /// The expression.
        value: String,
        /// What is wrong with it.
        #[source]
        source: crate::cron::CronError,
    },
}

/// Every reason a spec is not acceptable (never empty).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpecErrors(Vec<SpecError>);

impl SpecErrors {
    /// The individual errors, in the order of the fields.
    pub fn errors(&self) -> &[SpecError] {
        &self.0
    }

    /// Consumes the list.
    pub fn into_vec(self) -> Vec<SpecError> {
        self.0
    }
}

impl fmt::Display for SpecErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

impl std::error::Error for SpecErrors {}

/// Collects errors while a validator walks a spec.
#[derive(Debug, Default)]
pub(crate) struct Collector(Vec<SpecError>);

impl Collector {
    pub(crate) fn push(&mut self, error: SpecError) {
        self.0.push(error);
    }

    pub(crate) fn check(&mut self, result: Result<(), SpecError>) {
        if let Err(error) = result {
            self.0.push(error);
        }
    }

    pub(crate) fn finish(self) -> Result<(), SpecErrors> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(SpecErrors(self.0))
        }
    }
}

/// Checks the length bounds of a required string (counted in characters, as OpenAPI does).
pub(crate) fn length(field: &str, value: &str, max: usize) -> Result<(), SpecError> {
    let len = value.chars().count();
    if len == 0 {
        Err(SpecError::Empty {
            field: field.to_owned(),
        })
    } else if len > max {
        Err(SpecError::TooLong {
            field: field.to_owned(),
            len,
            max,
        })
    } else {
        Ok(())
    }
}

pub(crate) fn malformed(field: &str, value: &str, expected: &'static str) -> SpecError {
    SpecError::Malformed {
        field: field.to_owned(),
        value: value.to_owned(),
        expected,
    }
}

pub(crate) fn range(field: &str, value: i64, min: i64, max: i64) -> Result<(), SpecError> {
    if (min..=max).contains(&value) {
        Ok(())
    } else {
        Err(SpecError::OutOfRange {
            field: field.to_owned(),
            value,
            min,
            max,
        })
    }
}

fn is_dns_label(label: &str) -> bool {
    let bytes = label.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 63
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes.first() != Some(&b'-')
        && bytes.last() != Some(&b'-')
}

/// A Kubernetes object name: a lowercase RFC 1123 subdomain of at most 253 characters
/// (matches [`crate::refs::OBJECT_NAME_PATTERN`]).
pub fn is_object_name(value: &str) -> bool {
    value.len() <= crate::refs::OBJECT_NAME_MAX_LEN
        && !value.is_empty()
        && value.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

/// A lowercase RFC 1123 label of at most 63 characters (tenant and team names).
pub fn is_label(value: &str) -> bool {
    is_dns_label(value)
}

pub(crate) fn object_name(field: &str, value: &str) -> Result<(), SpecError> {
    length(field, value, crate::refs::OBJECT_NAME_MAX_LEN)?;
    if is_object_name(value) {
        Ok(())
    } else {
        Err(malformed(
            field,
            value,
            "a Kubernetes object name (lowercase letters, digits, '-' and '.')",
        ))
    }
}

pub(crate) fn secret_key(field: &str, value: &str) -> Result<(), SpecError> {
    length(field, value, 253)?;
    if value
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
    {
        Ok(())
    } else {
        Err(malformed(
            field,
            value,
            "a Secret key (letters, digits, '-', '.' and '_')",
        ))
    }
}

/// Characters allowed in an e-mail address's local part (RFC 5322 atext, lowercase) besides
/// letters and digits.
const LOCAL_PART_SPECIALS: &str = "!#$%&'*+/=?^_`{|}~-";

/// A lowercase e-mail address as the schema accepts it (matches
/// [`crate::inbox::GMAIL_ADDRESS_PATTERN`]): dot-atom local part of at most 64 characters,
/// a domain of at least two RFC 1123 labels, at most 254 characters in all.
pub fn is_email_address(value: &str) -> bool {
    let Some((local, domain)) = value.rsplit_once('@') else {
        return false;
    };
    value.len() <= 254
        && !local.is_empty()
        && local.len() <= 64
        && local.split('.').all(|atom| {
            !atom.is_empty()
                && atom.chars().all(|c| {
                    c.is_ascii_lowercase() || c.is_ascii_digit() || LOCAL_PART_SPECIALS.contains(c)
                })
        })
        && domain.split('.').count() >= 2
        && domain.split('.').all(is_dns_label)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn errors_display_joined_by_semicolons() {
        let mut c = Collector::default();
        c.check(length("spec.displayName", "", 10));
        c.check(range("spec.sync.replicas", 99, 0, 32));
        let errors = c.finish().unwrap_err();
        assert_eq!(
            errors.to_string(),
            "spec.displayName must not be empty; spec.sync.replicas is 99, outside 0..=32"
        );
    }

    #[test]
    fn length_counts_characters_not_bytes() {
        assert!(length("f", "ééé", 3).is_ok());
        assert_eq!(
            length("f", "éééé", 3),
            Err(SpecError::TooLong {
                field: "f".into(),
                len: 4,
                max: 3
            })
        );
    }

    #[test]
    fn object_names_follow_rfc_1123_subdomains() {
        for good in ["acme", "acme-corp", "a.b-c.d", "0"] {
            assert!(is_object_name(good), "{good}");
        }
        for bad in [
            "",
            "Acme",
            "-acme",
            "acme-",
            "a..b",
            "a_b",
            &"a".repeat(254),
        ] {
            assert!(!is_object_name(bad), "{bad}");
        }
    }
}
