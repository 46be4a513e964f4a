//! Field encryption: AES-256-GCM under a per-tenant data encryption key (DEK).
//!
//! No I/O happens here. Keys live in `zeroize::Zeroizing` buffers and are wiped when dropped;
//! no key type implements `Debug` or `Display`, and no error carries key or plaintext bytes.
//!
//! # Sealed field format (format byte `0x01`)
//!
//! Every sealed value is one self-describing byte string, stored in one column:
//!
//! ```text
//! offset  size  content
//! 0       1     format: 0x01 = AES-256-GCM, 96-bit random nonce, 128-bit tag
//! 1       4     DEK version, unsigned big-endian
//! 5       12    nonce (fresh from the OS CSPRNG for every seal)
//! 17      n+16  ciphertext of the n plaintext bytes, followed by the GCM tag
//! ```
//!
//! The associated data binds the ciphertext to where it belongs, so a value copied to
//! another record, field, tenant or key version fails to open:
//!
//! ```text
//! "helpr/seal" 0x00 format
//! u32be(len(tenant id)) tenant id
//! u32be(len(record id)) record id
//! u32be(len(field name)) field name
//! u32be(DEK version)
//! ```
//!
//! Lengths are prefixed so that no two (tenant, record, field) triples share an encoding.

mod dek;

pub use dek::{DEK_LEN, Dek, DekVersion, SealingKey};

use aes_gcm::aead::AeadInPlace;
use aes_gcm::{Aes256Gcm, Nonce, Tag};

/// Length of an AES-GCM nonce.
pub const NONCE_LEN: usize = 12;
/// Length of an AES-GCM tag.
pub const TAG_LEN: usize = 16;
/// Format byte of the only sealed format so far.
pub const FORMAT_V1: u8 = 0x01;
/// Bytes before the ciphertext: format, version, nonce.
pub const HEADER_LEN: usize = 1 + 4 + NONCE_LEN;

const AAD_DOMAIN: &[u8] = b"helpr/seal\0";

/// Why a seal or open failed. Never carries key, nonce or plaintext bytes.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum CryptoError {
    #[error("sealed value is malformed: {0}")]
    Malformed(&'static str),
    #[error("sealed value uses unknown format {0:#04x}")]
    UnknownFormat(u8),
    #[error(
        "sealed value failed authentication (wrong key, record, field, tenant or version, or tampered bytes)"
    )]
    Authentication,
    #[error("key material has the wrong length (expected 32 bytes)")]
    KeyLength,
    #[error("the operating system's random number generator failed")]
    Rng,
    #[error("plaintext too large to seal")]
    TooLarge,
}

/// Where a sealed value belongs: the associated data of its AEAD.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SealContext<'a> {
    /// Tenant that owns the value.
    pub tenant: &'a str,
    /// Id of the row (message, attachment, inbox, ...) the value is stored in.
    pub record: &'a str,
    /// Name of the field, e.g. `message.subject`.
    pub field: &'a str,
}

impl<'a> SealContext<'a> {
    pub fn new(tenant: &'a str, record: &'a str, field: &'a str) -> Self {
        Self {
            tenant,
            record,
            field,
        }
    }

    /// The associated data for this context under `version` and `format`.
    pub fn associated_data(&self, version: DekVersion, format: u8) -> Vec<u8> {
        let mut aad = Vec::with_capacity(
            AAD_DOMAIN.len() + 1 + 16 + self.tenant.len() + self.record.len() + self.field.len(),
        );
        aad.extend_from_slice(AAD_DOMAIN);
        aad.push(format);
        for part in [self.tenant, self.record, self.field] {
            // Ids and field names are short; a part of 4 GiB cannot occur, saturate anyway.
            let len = u32::try_from(part.len()).unwrap_or(u32::MAX);
            aad.extend_from_slice(&len.to_be_bytes());
            aad.extend_from_slice(part.as_bytes());
        }
        aad.extend_from_slice(&version.get().to_be_bytes());
        aad
    }
}

/// A sealed value in the stored format described in the module documentation.
#[derive(Clone, PartialEq, Eq)]
pub struct SealedField(Vec<u8>);

impl std::fmt::Debug for SealedField {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Ciphertext is not secret, but it is noise in logs; show only its shape.
        f.debug_struct("SealedField")
            .field("version", &self.key_version().ok().map(DekVersion::get))
            .field("len", &self.0.len())
            .finish()
    }
}

impl SealedField {
    /// Wraps stored bytes, checking the header so that later calls cannot fail on shape.
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Self, CryptoError> {
        if bytes.len() < HEADER_LEN + TAG_LEN {
            return Err(CryptoError::Malformed("shorter than header and tag"));
        }
        if bytes[0] != FORMAT_V1 {
            return Err(CryptoError::UnknownFormat(bytes[0]));
        }
        DekVersion::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]])
            .ok_or(CryptoError::Malformed("key version 0"))?;
        Ok(Self(bytes))
    }

    /// The stored bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The stored bytes, by value.
    pub fn into_bytes(self) -> Vec<u8> {
        self.0
    }

    /// The DEK version this value was sealed under (read from the header).
    pub fn key_version(&self) -> Result<DekVersion, CryptoError> {
        let b = &self.0;
        if b.len() < HEADER_LEN {
            return Err(CryptoError::Malformed("shorter than header"));
        }
        DekVersion::from_be_bytes([b[1], b[2], b[3], b[4]])
            .ok_or(CryptoError::Malformed("key version 0"))
    }

    /// The nonce (read from the header).
    pub fn nonce(&self) -> &[u8] {
        &self.0[5..HEADER_LEN]
    }
}

/// Seals `plaintext` for `ctx` under `key` with a fresh random nonce.
pub fn seal(
    key: &SealingKey,
    ctx: &SealContext<'_>,
    plaintext: &[u8],
) -> Result<SealedField, CryptoError> {
    seal_with_nonce(key, ctx, plaintext, random_nonce()?)
}

/// Seals with a caller-chosen nonce. Private: every production seal draws a random nonce.
fn seal_with_nonce(
    key: &SealingKey,
    ctx: &SealContext<'_>,
    plaintext: &[u8],
    nonce: [u8; NONCE_LEN],
) -> Result<SealedField, CryptoError> {
    // GCM limits one message to 2^36 - 32 bytes; we never get near, but refuse cleanly.
    if plaintext.len() as u64 > (1u64 << 36) - 32 {
        return Err(CryptoError::TooLarge);
    }
    let version = key.version();
    let aad = ctx.associated_data(version, FORMAT_V1);
    let mut out = Vec::with_capacity(HEADER_LEN + plaintext.len() + TAG_LEN);
    out.push(FORMAT_V1);
    out.extend_from_slice(&version.get().to_be_bytes());
    out.extend_from_slice(&nonce);
    out.extend_from_slice(plaintext);
    let tag = key
        .cipher()
        .encrypt_in_place_detached(Nonce::from_slice(&nonce), &aad, &mut out[HEADER_LEN..])
        .map_err(|_| CryptoError::TooLarge)?;
    out.extend_from_slice(&tag);
    Ok(SealedField(out))
}

/// Opens a sealed value for `ctx` with `key`, whose version must match the value's header.
pub fn open(
    key: &SealingKey,
    ctx: &SealContext<'_>,
    sealed: &SealedField,
) -> Result<Vec<u8>, CryptoError> {
    let version = sealed.key_version()?;
    if version != key.version() {
        // The version is also bound by the associated data; this is only an early exit.
        return Err(CryptoError::Authentication);
    }
    let bytes = sealed.as_bytes();
    let aad = ctx.associated_data(version, bytes[0]);
    open_detached(
        key.cipher(),
        &bytes[5..HEADER_LEN],
        &aad,
        &bytes[HEADER_LEN..],
    )
}

/// AES-256-GCM decryption of `ciphertext || tag` with a 12-byte nonce: the primitive
/// under [`open`], exposed so that it can be checked against published test vectors.
pub fn open_detached(
    cipher: &Aes256Gcm,
    nonce: &[u8],
    aad: &[u8],
    ciphertext_and_tag: &[u8],
) -> Result<Vec<u8>, CryptoError> {
    if nonce.len() != NONCE_LEN {
        return Err(CryptoError::Malformed("nonce is not 12 bytes"));
    }
    if ciphertext_and_tag.len() < TAG_LEN {
        return Err(CryptoError::Malformed("shorter than a tag"));
    }
    let (ct, tag) = ciphertext_and_tag.split_at(ciphertext_and_tag.len() - TAG_LEN);
    let mut buf = ct.to_vec();
    cipher
        .decrypt_in_place_detached(
            Nonce::from_slice(nonce),
            aad,
            &mut buf,
            Tag::from_slice(tag),
        )
        .map_err(|_| CryptoError::Authentication)?;
    Ok(buf)
}

/// AES-256-GCM encryption returning `ciphertext || tag`: the primitive under [`seal`].
pub fn seal_detached(
    cipher: &Aes256Gcm,
    nonce: &[u8],
    aad: &[u8],
    plaintext: &[u8],
) -> Result<Vec<u8>, CryptoError> {
    if nonce.len() != NONCE_LEN {
        return Err(CryptoError::Malformed("nonce is not 12 bytes"));
    }
    let mut buf = Vec::with_capacity(plaintext.len() + TAG_LEN);
    buf.extend_from_slice(plaintext);
    let tag = cipher
        .encrypt_in_place_detached(Nonce::from_slice(nonce), aad, &mut buf)
        .map_err(|_| CryptoError::TooLarge)?;
    buf.extend_from_slice(&tag);
    Ok(buf)
}

/// A fresh random nonce from the OS CSPRNG.
pub fn random_nonce() -> Result<[u8; NONCE_LEN], CryptoError> {
    let mut nonce = [0u8; NONCE_LEN];
    getrandom::getrandom(&mut nonce).map_err(|_| CryptoError::Rng)?;
    Ok(nonce)
}

#[cfg(test)]
mod tests;
