//! Data encryption keys and the ciphers built from them.

use aes_gcm::{Aes256Gcm, KeyInit};
use zeroize::Zeroizing;

use super::CryptoError;

/// Length of a DEK in bytes.
pub const DEK_LEN: usize = 32;

/// A 256-bit data encryption key.
///
/// The bytes live in a [`Zeroizing`] buffer and are wiped on drop. `Dek` deliberately
/// implements neither `Debug`, `Display`, `Clone` nor `Serialize`: it cannot be printed or
/// copied by accident. Both of these fail to compile:
///
/// ```compile_fail,E0277
/// let dek = helpr_dataplane::crypto::Dek::generate().unwrap();
/// println!("{:?}", dek);
/// ```
///
/// ```compile_fail,E0277
/// let dek = helpr_dataplane::crypto::Dek::generate().unwrap();
/// println!("{}", dek);
/// ```
pub struct Dek(Zeroizing<[u8; DEK_LEN]>);

impl Dek {
    /// 32 fresh bytes from the operating system's CSPRNG.
    pub fn generate() -> Result<Self, CryptoError> {
        let mut bytes = Zeroizing::new([0u8; DEK_LEN]);
        getrandom::getrandom(bytes.as_mut()).map_err(|_| CryptoError::Rng)?;
        Ok(Self(bytes))
    }

    /// Takes key bytes handed back by a KMS. Fails unless there are exactly 32.
    pub fn from_slice(bytes: &[u8]) -> Result<Self, CryptoError> {
        let array: [u8; DEK_LEN] = bytes.try_into().map_err(|_| CryptoError::KeyLength)?;
        Ok(Self(Zeroizing::new(array)))
    }

    /// The raw key bytes, for a KMS to wrap. Keep the borrow short.
    pub fn expose_bytes(&self) -> &[u8; DEK_LEN] {
        &self.0
    }

    /// The AES-256-GCM cipher for this key (expanded key schedule, wiped on drop).
    pub fn cipher(&self) -> Aes256Gcm {
        Aes256Gcm::new(self.0.as_ref().into())
    }
}

/// Version of a tenant's DEK: 1, 2, 3, ... (never 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DekVersion(std::num::NonZeroU32);

impl DekVersion {
    /// The first version of every tenant.
    pub const FIRST: DekVersion = DekVersion(std::num::NonZeroU32::MIN);

    /// `None` for 0.
    pub fn new(v: u32) -> Option<Self> {
        std::num::NonZeroU32::new(v).map(Self)
    }

    pub(crate) fn from_be_bytes(b: [u8; 4]) -> Option<Self> {
        Self::new(u32::from_be_bytes(b))
    }

    pub fn get(self) -> u32 {
        self.0.get()
    }

    /// The version after this one, `None` on overflow.
    pub fn next(self) -> Option<Self> {
        self.0.checked_add(1).map(Self)
    }
}

impl std::fmt::Display for DekVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "v{}", self.0)
    }
}

/// A DEK ready to seal and open: its version and its expanded AES-256-GCM cipher.
///
/// Built once per unwrap and cached; the cipher's key schedule is wiped on drop. Like
/// [`Dek`], it cannot be printed:
///
/// ```compile_fail,E0277
/// use helpr_dataplane::crypto::{Dek, DekVersion, SealingKey};
/// let key = SealingKey::new(DekVersion::FIRST, &Dek::generate().unwrap());
/// println!("{:?}", key);
/// ```
pub struct SealingKey {
    version: DekVersion,
    cipher: Aes256Gcm,
}

impl SealingKey {
    pub fn new(version: DekVersion, dek: &Dek) -> Self {
        Self {
            version,
            cipher: dek.cipher(),
        }
    }

    pub fn version(&self) -> DekVersion {
        self.version
    }

    pub(crate) fn cipher(&self) -> &Aes256Gcm {
        &self.cipher
    }
}
