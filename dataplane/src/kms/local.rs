//! Local KMS for development only: key-encryption keys in files on disk.
//!
//! Layout under the configured directory (mode 0700):
//!
//! ```text
//! <dir>/<tenant id>/kek-v1     32 random bytes, mode 0600
//! <dir>/<tenant id>/kek-v2     created by rotate_kek
//! ```
//!
//! A DEK is wrapped with AES-256-GCM under the newest KEK of its tenant, with associated
//! data binding the tenant id, the DEK version and the KEK version. The wrapped form is
//! `local:v<kek version>:<base64 of nonce || ciphertext || tag>`.
//!
//! The KMS refuses to start when the directory or any key file is readable or writable by
//! group or others. Destroying a tenant key overwrites and removes its files.
//! Anyone who can read these files can read every tenant's mail: use the `vault` backend
//! in production.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use aes_gcm::{Aes256Gcm, KeyInit};
use async_trait::async_trait;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use zeroize::Zeroizing;

use super::{DekContext, KeyRef, Kms, KmsError, WrappedDek};
use crate::crypto::{self, Dek, DekVersion, NONCE_LEN};
use crate::ids::TenantId;

const BACKEND: &str = "local";
const KEY_LEN: usize = 32;
const KEY_PREFIX: &str = "local/";
const WRAP_DOMAIN: &[u8] = b"helpr/local-kms-wrap\0";

/// The development KMS. See the module documentation.
pub struct LocalKms {
    dir: PathBuf,
}

impl LocalKms {
    /// Opens (creating if needed) the key directory and checks every permission in it.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self, KmsError> {
        let dir = dir.into();
        if !dir.exists() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&dir)
                .map_err(|e| config_err(format!("cannot create key directory: {}", e.kind())))?;
        }
        check_private(&dir, true)?;
        for tenant_dir in read_dir(&dir)? {
            check_private(&tenant_dir, true)?;
            for file in read_dir(&tenant_dir)? {
                check_private(&file, false)?;
            }
        }
        tracing::warn!(
            kms = BACKEND,
            "the local kms keeps key-encryption keys in files on this machine: for development only, never for production"
        );
        Ok(Self { dir })
    }

    fn tenant_dir(&self, key: &KeyRef) -> Result<PathBuf, KmsError> {
        let tenant = key
            .as_str()
            .strip_prefix(KEY_PREFIX)
            .and_then(|t| TenantId::new(t).ok())
            .ok_or_else(|| KmsError::KeyNotFound {
                backend: BACKEND,
                key: "(not a local key reference)".into(),
            })?;
        Ok(self.dir.join(tenant.as_str()))
    }

    fn kek_versions(&self, key: &KeyRef) -> Result<Vec<u32>, KmsError> {
        let dir = self.tenant_dir(key)?;
        if !dir.exists() {
            return Err(not_found(key));
        }
        let mut versions: Vec<u32> = read_dir(&dir)?
            .iter()
            .filter_map(|p| p.file_name()?.to_str()?.strip_prefix("kek-v")?.parse().ok())
            .collect();
        versions.sort_unstable();
        if versions.is_empty() {
            return Err(not_found(key));
        }
        Ok(versions)
    }

    fn read_kek(&self, key: &KeyRef, version: u32) -> Result<Aes256Gcm, KmsError> {
        let path = self.tenant_dir(key)?.join(format!("kek-v{version}"));
        if !path.exists() {
            return Err(KmsError::UnwrapFailed { backend: BACKEND });
        }
        check_private(&path, false)?;
        let bytes = Zeroizing::new(
            fs::read(&path)
                .map_err(|e| config_err(format!("cannot read key file: {}", e.kind())))?,
        );
        Aes256Gcm::new_from_slice(&bytes)
            .map_err(|_| config_err("key file does not hold 32 bytes".into()))
    }

    fn write_kek(&self, key: &KeyRef, version: u32) -> Result<(), KmsError> {
        let dir = self.tenant_dir(key)?;
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|e| config_err(format!("cannot create tenant key directory: {}", e.kind())))?;
        let mut bytes = Zeroizing::new([0u8; KEY_LEN]);
        getrandom::getrandom(bytes.as_mut()).map_err(|_| config_err("rng failed".into()))?;
        let path = dir.join(format!("kek-v{version}"));
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| config_err(format!("cannot create key file: {}", e.kind())))?;
        file.write_all(bytes.as_ref())
            .and_then(|()| file.sync_all())
            .map_err(|e| config_err(format!("cannot write key file: {}", e.kind())))?;
        Ok(())
    }

    fn wrap(&self, ctx: DekContext<'_>, dek: &Dek) -> Result<WrappedDek, KmsError> {
        let kek_version = *self
            .kek_versions(ctx.key)?
            .last()
            .ok_or_else(|| not_found(ctx.key))?;
        let kek = self.read_kek(ctx.key, kek_version)?;
        let nonce = crypto::random_nonce().map_err(|_| config_err("rng failed".into()))?;
        let aad = wrap_aad(ctx.tenant, ctx.version, kek_version);
        let sealed = crypto::seal_detached(&kek, &nonce, &aad, dek.expose_bytes())
            .map_err(|_| config_err("wrapping failed".into()))?;
        let mut blob = Vec::with_capacity(NONCE_LEN + sealed.len());
        blob.extend_from_slice(&nonce);
        blob.extend_from_slice(&sealed);
        Ok(WrappedDek::new(format!(
            "local:v{kek_version}:{}",
            STANDARD.encode(blob)
        )))
    }

    fn unwrap(&self, ctx: DekContext<'_>, wrapped: &WrappedDek) -> Result<Dek, KmsError> {
        let failed = || KmsError::UnwrapFailed { backend: BACKEND };
        let rest = wrapped.as_str().strip_prefix("local:").ok_or_else(failed)?;
        let kek_version = wrapped.kek_version().ok_or_else(failed)?;
        let b64 = rest.split_once(':').map(|(_, b)| b).ok_or_else(failed)?;
        let blob = STANDARD.decode(b64).map_err(|_| failed())?;
        if blob.len() < NONCE_LEN {
            return Err(failed());
        }
        // A missing tenant directory means the key was destroyed or never existed.
        self.kek_versions(ctx.key)?;
        let kek = self.read_kek(ctx.key, kek_version)?;
        let aad = wrap_aad(ctx.tenant, ctx.version, kek_version);
        let (nonce, sealed) = blob.split_at(NONCE_LEN);
        let plain =
            Zeroizing::new(crypto::open_detached(&kek, nonce, &aad, sealed).map_err(|_| failed())?);
        Dek::from_slice(&plain).map_err(|_| failed())
    }
}

#[async_trait]
impl Kms for LocalKms {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    async fn create_tenant_key(&self, tenant: &TenantId) -> Result<KeyRef, KmsError> {
        let key = KeyRef::new(format!("{KEY_PREFIX}{tenant}"));
        match self.kek_versions(&key) {
            Ok(_) => Ok(key),
            Err(KmsError::KeyNotFound { .. }) => {
                self.write_kek(&key, 1)?;
                Ok(key)
            }
            Err(e) => Err(e),
        }
    }

    async fn generate_dek(&self, ctx: DekContext<'_>) -> Result<(Dek, WrappedDek), KmsError> {
        let dek = Dek::generate().map_err(|_| config_err("rng failed".into()))?;
        let wrapped = self.wrap(ctx, &dek)?;
        Ok((dek, wrapped))
    }

    async fn unwrap_dek(&self, ctx: DekContext<'_>, wrapped: &WrappedDek) -> Result<Dek, KmsError> {
        self.unwrap(ctx, wrapped)
    }

    async fn rewrap_dek(
        &self,
        ctx: DekContext<'_>,
        wrapped: &WrappedDek,
    ) -> Result<WrappedDek, KmsError> {
        let dek = self.unwrap(ctx, wrapped)?;
        self.wrap(ctx, &dek)
    }

    async fn rotate_kek(&self, key: &KeyRef) -> Result<u32, KmsError> {
        let latest = *self
            .kek_versions(key)?
            .last()
            .ok_or_else(|| not_found(key))?;
        let next = latest + 1;
        self.write_kek(key, next)?;
        Ok(next)
    }

    async fn destroy_tenant_key(&self, key: &KeyRef) -> Result<(), KmsError> {
        let dir = self.tenant_dir(key)?;
        if !dir.exists() {
            return Ok(());
        }
        for file in read_dir(&dir)? {
            // Overwrite before unlinking, so the key bytes do not linger in the file's blocks
            // (best effort: journaling and copy-on-write filesystems may keep old blocks).
            if let Ok(mut f) = fs::OpenOptions::new().write(true).open(&file) {
                let _ = f.write_all(&[0u8; KEY_LEN]).and_then(|()| f.sync_all());
            }
            fs::remove_file(&file)
                .map_err(|e| config_err(format!("cannot remove key file: {}", e.kind())))?;
        }
        fs::remove_dir(&dir)
            .map_err(|e| config_err(format!("cannot remove tenant key directory: {}", e.kind())))
    }
}

fn wrap_aad(tenant: &TenantId, dek_version: DekVersion, kek_version: u32) -> Vec<u8> {
    let mut aad = Vec::with_capacity(WRAP_DOMAIN.len() + 12 + tenant.as_str().len());
    aad.extend_from_slice(WRAP_DOMAIN);
    let len = u32::try_from(tenant.as_str().len()).unwrap_or(u32::MAX);
    aad.extend_from_slice(&len.to_be_bytes());
    aad.extend_from_slice(tenant.as_str().as_bytes());
    aad.extend_from_slice(&dek_version.get().to_be_bytes());
    aad.extend_from_slice(&kek_version.to_be_bytes());
    aad
}

fn config_err(reason: String) -> KmsError {
    KmsError::Config {
        backend: BACKEND,
        reason,
    }
}

fn not_found(key: &KeyRef) -> KmsError {
    KmsError::KeyNotFound {
        backend: BACKEND,
        key: key.to_string(),
    }
}

fn read_dir(dir: &Path) -> Result<Vec<PathBuf>, KmsError> {
    let entries = fs::read_dir(dir)
        .map_err(|e| config_err(format!("cannot list key directory: {}", e.kind())))?;
    entries
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()
        .map_err(|e| config_err(format!("cannot list key directory: {}", e.kind())))
}

/// Refuses a key file or directory that group or others may access.
fn check_private(path: &Path, is_dir: bool) -> Result<(), KmsError> {
    let meta = fs::symlink_metadata(path)
        .map_err(|e| config_err(format!("cannot stat key path: {}", e.kind())))?;
    if meta.file_type().is_symlink() {
        return Err(config_err(format!(
            "{} is a symlink; refusing to use it",
            path.display()
        )));
    }
    if is_dir != meta.is_dir() {
        return Err(config_err(format!(
            "{} is not a {}",
            path.display(),
            if is_dir { "directory" } else { "file" }
        )));
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(config_err(format!(
            "{} has mode {mode:o}: group or others may access it; run chmod {} on it",
            path.display(),
            if is_dir { "700" } else { "600" }
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant(s: &str) -> TenantId {
        TenantId::new(s).unwrap()
    }

    #[tokio::test]
    async fn generated_dek_unwraps_to_the_same_bytes_and_binds_tenant_and_version() {
        let dir = tempfile::tempdir().unwrap();
        let kms = LocalKms::open(dir.path().join("kms")).unwrap();
        let acme = tenant("acme");
        let key = kms.create_tenant_key(&acme).await.unwrap();
        let v1 = DekVersion::FIRST;
        let ctx = DekContext {
            tenant: &acme,
            key: &key,
            version: v1,
        };
        let (dek, wrapped) = kms.generate_dek(ctx).await.unwrap();
        assert!(wrapped.as_str().starts_with("local:v1:"));
        let back = kms.unwrap_dek(ctx, &wrapped).await.unwrap();
        assert_eq!(back.expose_bytes(), dek.expose_bytes());

        let v2 = DekContext {
            version: v1.next().unwrap(),
            ..ctx
        };
        assert!(matches!(
            kms.unwrap_dek(v2, &wrapped).await,
            Err(KmsError::UnwrapFailed { .. })
        ));
        // Same key files, other tenant id in the associated data.
        let other = tenant("acme2");
        let spoofed = DekContext {
            tenant: &other,
            ..ctx
        };
        assert!(matches!(
            kms.unwrap_dek(spoofed, &wrapped).await,
            Err(KmsError::UnwrapFailed { .. })
        ));
        // Change one character in the middle of the encoding (the last one may carry padding
        // bits only, and may already be the replacement): the bytes always change.
        let mut tampered = wrapped.as_str().as_bytes().to_vec();
        let middle = tampered.len() / 2;
        tampered[middle] = if tampered[middle] == b'A' { b'B' } else { b'A' };
        let tampered = String::from_utf8(tampered).unwrap();
        assert!(
            kms.unwrap_dek(ctx, &WrappedDek::new(tampered))
                .await
                .is_err()
        );
        assert!(
            kms.unwrap_dek(ctx, &WrappedDek::new("local:v1:%%%"))
                .await
                .is_err()
        );
    }

    #[tokio::test]
    async fn key_files_are_created_private() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("kms");
        let kms = LocalKms::open(&root).unwrap();
        kms.create_tenant_key(&tenant("acme")).await.unwrap();
        let file = root.join("acme").join("kek-v1");
        assert_eq!(
            fs::metadata(&file).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(
            fs::metadata(&root).unwrap().permissions().mode() & 0o777,
            0o700
        );
        assert_eq!(fs::read(&file).unwrap().len(), 32);
    }

    #[tokio::test]
    async fn refuses_to_start_when_a_key_file_is_group_or_world_readable() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("kms");
        let kms = LocalKms::open(&root).unwrap();
        kms.create_tenant_key(&tenant("acme")).await.unwrap();
        let file = root.join("acme").join("kek-v1");
        for mode in [0o640, 0o604, 0o644] {
            fs::set_permissions(&file, fs::Permissions::from_mode(mode)).unwrap();
            let err = LocalKms::open(&root).err().expect("must refuse");
            assert!(matches!(err, KmsError::Config { .. }), "{err}");
            assert!(err.to_string().contains("chmod 600"), "{err}");
        }
        fs::set_permissions(&file, fs::Permissions::from_mode(0o600)).unwrap();
        fs::set_permissions(&root, fs::Permissions::from_mode(0o755)).unwrap();
        assert!(LocalKms::open(&root).is_err());
    }

    #[tokio::test]
    async fn rotation_rewraps_and_destroy_shreds() {
        let dir = tempfile::tempdir().unwrap();
        let kms = LocalKms::open(dir.path().join("kms")).unwrap();
        let acme = tenant("acme");
        let key = kms.create_tenant_key(&acme).await.unwrap();
        assert_eq!(
            kms.create_tenant_key(&acme).await.unwrap(),
            key,
            "idempotent"
        );
        let ctx = DekContext {
            tenant: &acme,
            key: &key,
            version: DekVersion::FIRST,
        };
        let (dek, wrapped) = kms.generate_dek(ctx).await.unwrap();
        assert_eq!(kms.rotate_kek(&key).await.unwrap(), 2);
        let rewrapped = kms.rewrap_dek(ctx, &wrapped).await.unwrap();
        assert_eq!(rewrapped.kek_version(), Some(2));
        assert_eq!(
            kms.unwrap_dek(ctx, &rewrapped)
                .await
                .unwrap()
                .expose_bytes(),
            dek.expose_bytes()
        );
        kms.destroy_tenant_key(&key).await.unwrap();
        assert!(matches!(
            kms.unwrap_dek(ctx, &rewrapped).await,
            Err(KmsError::KeyNotFound { .. })
        ));
        kms.destroy_tenant_key(&key).await.unwrap();
    }
}
