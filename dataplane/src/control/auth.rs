//! Bearer-token authentication of the control API.
//!
//! The expected token is read once from a file (a mounted Kubernetes Secret) that only the
//! data plane's user may read: a missing, empty, or group/world-accessible file is refused
//! at start. Every request must carry `authorization: Bearer <token>`; the interceptor
//! compares SHA-256 digests of the presented and expected tokens in constant time (so
//! neither content nor length leaks through timing) and answers UNAUTHENTICATED before any
//! method runs. The token never reaches `Debug`, logs or error text.

use std::path::{Path, PathBuf};

use subtle::ConstantTimeEq;
use tonic::{Request, Status};
use zeroize::Zeroizing;

/// Longest token accepted (bytes).
pub const MAX_TOKEN_BYTES: usize = 4096;

/// Why a secret file (a token, a key) was refused. Never carries its content.
#[derive(Debug, thiserror::Error)]
pub enum SecretFileError {
    #[error("{what} file {path} cannot be read: {kind}")]
    Unreadable {
        what: &'static str,
        path: PathBuf,
        kind: std::io::ErrorKind,
    },
    #[error(
        "{what} file {path} has mode {mode:o}: others may access it or its group may change it; run chmod 600 on it (in Kubernetes: defaultMode 0400, which an fsGroup turns into 0440)"
    )]
    Permissions {
        what: &'static str,
        path: PathBuf,
        mode: u32,
    },
    #[error("{what} file {path} is empty")]
    Empty { what: &'static str, path: PathBuf },
    #[error(
        "{what} file {path} holds more than {MAX_TOKEN_BYTES} bytes or non-printable characters"
    )]
    Malformed { what: &'static str, path: PathBuf },
}

/// Why the control token file was refused.
pub type TokenFileError = SecretFileError;

/// Reads a secret (`what`: what it is, for errors) from `path`: refuses a file that others
/// may access or its group may write or execute (group read is allowed: Kubernetes mounts a
/// Secret `0440` when the pod has an `fsGroup`), an empty one, and one with non-printable
/// bytes (surrounding whitespace and a trailing newline are ignored).
pub fn read_private_secret(
    path: &Path,
    what: &'static str,
) -> Result<Zeroizing<Vec<u8>>, SecretFileError> {
    let unreadable = |e: std::io::Error| SecretFileError::Unreadable {
        what,
        path: path.to_owned(),
        kind: e.kind(),
    };
    // metadata follows symbolic links: Kubernetes mounts Secret keys as links.
    let meta = std::fs::metadata(path).map_err(unreadable)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o037 != 0 {
            return Err(SecretFileError::Permissions {
                what,
                path: path.to_owned(),
                mode,
            });
        }
    }
    #[cfg(not(unix))]
    let _ = meta;
    let bytes = Zeroizing::new(std::fs::read(path).map_err(unreadable)?);
    let secret = bytes.trim_ascii();
    if secret.is_empty() {
        return Err(SecretFileError::Empty {
            what,
            path: path.to_owned(),
        });
    }
    if secret.len() > MAX_TOKEN_BYTES || !secret.iter().all(|b| b.is_ascii_graphic()) {
        return Err(SecretFileError::Malformed {
            what,
            path: path.to_owned(),
        });
    }
    Ok(Zeroizing::new(secret.to_vec()))
}

/// The expected bearer token: kept as its SHA-256 digest (the token bytes are wiped after
/// hashing). No `Debug`, no `Display`.
#[derive(Clone)]
pub struct ControlToken {
    digest: [u8; 32],
}

impl ControlToken {
    /// A token from its bytes (tests and callers that hold the token already).
    pub fn new(token: &[u8]) -> Self {
        Self {
            digest: sha256(token),
        }
    }

    /// Reads the token from `path` (see [`read_private_secret`]).
    pub fn from_file(path: &Path) -> Result<Self, TokenFileError> {
        Ok(Self::new(&read_private_secret(path, "control token")?))
    }

    /// Whether `presented` is the token, in constant time.
    pub fn matches(&self, presented: &[u8]) -> bool {
        bool::from(sha256(presented).ct_eq(&self.digest))
    }
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

/// The tonic interceptor: lets a request through only with the right bearer token.
#[derive(Clone)]
pub struct BearerAuth {
    token: ControlToken,
}

impl BearerAuth {
    pub fn new(token: ControlToken) -> Self {
        Self { token }
    }

    /// Checks a request's `authorization` metadata.
    #[allow(clippy::result_large_err)] // tonic's interceptor signature
    pub fn check(&self, request: Request<()>) -> Result<Request<()>, Status> {
        let Some(value) = request.metadata().get("authorization") else {
            tracing::warn!("control request without credentials refused");
            return Err(Status::unauthenticated(
                "missing bearer token (authorization: Bearer <token>)",
            ));
        };
        let presented = value
            .as_bytes()
            .strip_prefix(b"Bearer ")
            .or_else(|| value.as_bytes().strip_prefix(b"bearer "));
        match presented {
            Some(token) if self.token.matches(token) => Ok(request),
            _ => {
                tracing::warn!("control request with a wrong token refused");
                Err(Status::unauthenticated("invalid bearer token"))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn write(dir: &Path, content: &[u8], mode: u32) -> PathBuf {
        let path = dir.join("token");
        std::fs::write(&path, content).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    #[test]
    fn token_file_must_be_private_and_not_empty() {
        let dir = tempfile::tempdir().unwrap();
        for mode in [0o644, 0o604, 0o660, 0o620, 0o650] {
            let path = write(dir.path(), b"s3cret-token", mode);
            let err = ControlToken::from_file(&path).err().expect("must refuse");
            assert!(matches!(err, TokenFileError::Permissions { .. }), "{err}");
            assert!(err.to_string().contains("chmod 600"), "{err}");
            assert!(!err.to_string().contains("s3cret"), "{err}");
        }
        let path = write(dir.path(), b" \n", 0o600);
        assert!(matches!(
            ControlToken::from_file(&path),
            Err(TokenFileError::Empty { .. })
        ));
        let path = write(dir.path(), b"a b", 0o600);
        assert!(matches!(
            ControlToken::from_file(&path),
            Err(TokenFileError::Malformed { .. })
        ));
        assert!(matches!(
            ControlToken::from_file(&dir.path().join("missing")),
            Err(TokenFileError::Unreadable { .. })
        ));
        // Group read only, as a Secret volume with an fsGroup mounts it.
        for mode in [0o440, 0o640] {
            let path = write(dir.path(), b"s3cret-token", mode);
            assert!(ControlToken::from_file(&path).is_ok(), "{mode:o}");
        }
        let path = write(dir.path(), b"s3cret-token\n", 0o400);
        let token = ControlToken::from_file(&path).unwrap();
        assert!(token.matches(b"s3cret-token"));
        assert!(!token.matches(b"s3cret-token\n"));
        assert!(!token.matches(b"s3cret-toke"));
        assert!(!token.matches(b""));
    }

    #[test]
    fn interceptor_refuses_missing_and_wrong_tokens() {
        let auth = BearerAuth::new(ControlToken::new(b"right"));
        let with = |value: Option<&str>| {
            let mut r = Request::new(());
            if let Some(v) = value {
                r.metadata_mut().insert("authorization", v.parse().unwrap());
            }
            auth.check(r)
        };
        assert!(with(Some("Bearer right")).is_ok());
        for bad in [
            None,
            Some("Bearer wrong"),
            Some("right"),
            Some("Basic right"),
        ] {
            let status = with(bad).expect_err("must refuse");
            assert_eq!(status.code(), tonic::Code::Unauthenticated, "{bad:?}");
            assert!(!status.message().contains("right"), "{}", status.message());
        }
    }
}
