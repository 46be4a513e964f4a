//! Identifiers of domain objects.

use std::fmt;

/// Why an identifier was refused. Carries no part of the refused value.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum IdError {
    #[error(
        "tenant id must be 1-63 characters of a-z, 0-9 and '-', starting and ending with a letter or digit"
    )]
    InvalidTenantId,
}

/// A tenant: a lowercase DNS label (the name of the Tenant resource), 1-63 characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TenantId(String);

impl TenantId {
    pub fn new(id: impl Into<String>) -> Result<Self, IdError> {
        let id = id.into();
        let bytes = id.as_bytes();
        let valid_char = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-';
        let ok = !bytes.is_empty()
            && bytes.len() <= 63
            && bytes.iter().all(valid_char)
            && bytes.first() != Some(&b'-')
            && bytes.last() != Some(&b'-');
        if ok {
            Ok(Self(id))
        } else {
            Err(IdError::InvalidTenantId)
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for TenantId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

/// A fresh random record id (UUID v4, hyphenated).
pub fn new_record_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_ids_are_dns_labels() {
        for ok in ["a", "acme", "acme-corp-2", &"a".repeat(63)] {
            assert!(TenantId::new(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "-a",
            "a-",
            "Acme",
            "a_b",
            "a/b",
            "../x",
            "a b",
            &"a".repeat(64),
        ] {
            assert_eq!(TenantId::new(bad), Err(IdError::InvalidTenantId), "{bad}");
        }
    }
}
