//! The keyring: every tenant's DEK versions, for sealing and opening fields.
//!
//! - The newest version that is not retired seals; every stored version opens.
//! - Unwrapped keys are cached in memory for a TTL, with a bound on the number of entries.
//!   An evicted key is dropped and its bytes (and AES key schedule) are wiped. Concurrent
//!   misses for one tenant and version make one KMS call, not one each.
//! - Seals are counted per version in the store, reserved in blocks (so the stored count is
//!   never below the true count, even after a crash). When a version reaches the bound
//!   (default 2^31, the safety margin for random 96-bit nonces) it is retired and the next
//!   version is created automatically.
//! - DEK rotation creates version n+1 and retires the older ones for writes; nothing is
//!   re-encrypted. KEK rotation rotates the KMS key and rewraps every stored wrapped DEK.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::crypto::{self, CryptoError, DekVersion, SealContext, SealedField, SealingKey};
use crate::ids::{IdError, TenantId};
use crate::kms::{DekContext, KeyRef, Kms, KmsError, WrappedDek};
use crate::store::{
    AuditEvent, KeyVersionRecord, NewTenant, SealReservation, Store, StoreError, now_ms,
};

/// Settings of the keyring.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KeyringConfig {
    /// How long an unwrapped DEK stays in memory, in seconds.
    pub cache_ttl_secs: u64,
    /// How many unwrapped DEKs stay in memory at most.
    pub cache_max_entries: usize,
    /// Seals allowed under one DEK version before it is retired and replaced.
    pub seal_bound: u64,
    /// Seals reserved from the store at a time (a crash loses at most this many from the
    /// budget; the count stays an upper bound).
    pub seal_reservation: u64,
    /// How often, in seconds, a writer re-reads which version is current, so that a
    /// rotation made by another process is picked up.
    pub writer_refresh_secs: u64,
}

impl Default for KeyringConfig {
    fn default() -> Self {
        Self {
            cache_ttl_secs: 900,
            cache_max_entries: 4096,
            seal_bound: 1 << 31,
            seal_reservation: 1024,
            writer_refresh_secs: 30,
        }
    }
}

/// A keyring failure. Never carries key bytes, wrapped keys or plaintext.
#[derive(Debug, thiserror::Error)]
pub enum KeyringError {
    #[error(transparent)]
    Kms(#[from] KmsError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    #[error(transparent)]
    InvalidId(#[from] IdError),
    #[error("tenant {0} does not exist")]
    UnknownTenant(TenantId),
    #[error("tenant {0} has no data encryption key; provision it first")]
    NoKey(TenantId),
    #[error("tenant {tenant} has no data encryption key {version}")]
    UnknownVersion {
        tenant: TenantId,
        version: DekVersion,
    },
    #[error("tenant {0} ran out of key versions")]
    VersionOverflow(TenantId),
    #[error(
        "stored wrapped key of tenant {tenant} {version} changed during kek rotation; run it again"
    )]
    RewrapRace {
        tenant: TenantId,
        version: DekVersion,
    },
    #[error(
        "stored wrapped index key of tenant {tenant} version {version} changed during kek rotation; run it again"
    )]
    IndexKeyRewrapRace { tenant: TenantId, version: u32 },
}

impl KeyringError {
    /// Whether the same call may succeed later (KMS or database unavailable).
    pub fn is_retryable(&self) -> bool {
        match self {
            KeyringError::Kms(e) => e.is_retryable(),
            KeyringError::Store(e) => e.is_retryable(),
            KeyringError::RewrapRace { .. } | KeyringError::IndexKeyRewrapRace { .. } => true,
            _ => false,
        }
    }
}

/// What `keys status` shows of one version. No key bytes, no wrapped key.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct KeyVersionStatus {
    pub version: u32,
    pub current: bool,
    pub retired: bool,
    pub seal_count: u64,
    pub seal_bound: u64,
    pub kms_key_ref: String,
    /// The KEK version that wrapped this DEK, when the KMS shows it.
    pub kek_version: Option<u32>,
    pub created_at_ms: i64,
}

/// Outcome of a KEK rotation.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct KekRotation {
    pub kek_version: u32,
    /// DEK versions rewrapped.
    pub rewrapped: usize,
    /// Search index-key versions rewrapped (they are wrapped like DEKs).
    pub index_keys_rewrapped: usize,
}

type CacheKey = (TenantId, DekVersion);

struct CacheEntry {
    key: Arc<SealingKey>,
    loaded: Instant,
}

struct Writer {
    key: Arc<SealingKey>,
    remaining: u64,
    checked: Instant,
}

/// Per-tenant DEK versions over a [`Kms`] and a [`Store`]. Cheap to share behind an `Arc`.
pub struct Keyring {
    kms: Arc<dyn Kms>,
    store: Arc<dyn Store>,
    cfg: KeyringConfig,
    cache: Mutex<HashMap<CacheKey, CacheEntry>>,
    /// One async lock per (tenant, version) being loaded: the single-flight gate.
    loading: Mutex<HashMap<CacheKey, Arc<tokio::sync::Mutex<()>>>>,
    writers: Mutex<HashMap<TenantId, Writer>>,
    /// One async lock per tenant for refilling its writer (reservation or rotation).
    refilling: Mutex<HashMap<TenantId, Arc<tokio::sync::Mutex<()>>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these locks cannot leave the maps inconsistent (each
    // critical section is a single insert/remove), so a poisoned lock is still usable.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn gate<K: std::hash::Hash + Eq + Clone>(
    m: &Mutex<HashMap<K, Arc<tokio::sync::Mutex<()>>>>,
    k: &K,
) -> Arc<tokio::sync::Mutex<()>> {
    lock(m).entry(k.clone()).or_default().clone()
}

impl Keyring {
    pub fn new(kms: Arc<dyn Kms>, store: Arc<dyn Store>, cfg: KeyringConfig) -> Self {
        Self {
            kms,
            store,
            cfg,
            cache: Mutex::new(HashMap::new()),
            loading: Mutex::new(HashMap::new()),
            writers: Mutex::new(HashMap::new()),
            refilling: Mutex::new(HashMap::new()),
        }
    }

    pub fn config(&self) -> &KeyringConfig {
        &self.cfg
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    pub fn kms(&self) -> &Arc<dyn Kms> {
        &self.kms
    }

    /// Creates the tenant (if missing), its KMS key and its first DEK version. Idempotent:
    /// a tenant that already has a key is left as it is. KMS calls come first, so a KMS
    /// outage writes nothing.
    pub async fn provision_tenant(
        &self,
        tenant: &TenantId,
        display_name: &str,
    ) -> Result<(), KeyringError> {
        let key = self.kms.create_tenant_key(tenant).await?;
        if self.store.get_tenant(tenant).await?.is_none() {
            let created = self
                .store
                .create_tenant(&NewTenant {
                    id: tenant.clone(),
                    display_name: display_name.to_string(),
                })
                .await;
            match created {
                Ok(_) | Err(StoreError::Conflict(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }
        if self.store.current_key_version(tenant).await?.is_none() {
            self.create_version(tenant, &key, "tenant.provision")
                .await?;
        }
        Ok(())
    }

    /// Seals one field with the tenant's current DEK.
    pub async fn seal(
        &self,
        ctx: &SealContext<'_>,
        plaintext: &[u8],
    ) -> Result<SealedField, KeyringError> {
        let tenant = TenantId::new(ctx.tenant)?;
        let mut keys = self.take_seals(&tenant, 1).await?;
        let key = keys.pop().ok_or(KeyringError::NoKey(tenant))?;
        Ok(crypto::seal(&key, ctx, plaintext)?)
    }

    /// Seals many fields of one tenant, reserving the seals at once. Large fields are
    /// sealed off the async executor.
    pub async fn seal_many(
        &self,
        tenant: &TenantId,
        items: &[(SealContext<'_>, &[u8])],
    ) -> Result<Vec<SealedField>, KeyringError> {
        let count = u64::try_from(items.len()).unwrap_or(u64::MAX);
        let keys = self.take_seals(tenant, count).await?;
        let total: usize = items.iter().map(|(_, p)| p.len()).sum();
        let seal_all = || -> Result<Vec<SealedField>, CryptoError> {
            items
                .iter()
                .zip(keys.iter())
                .map(|((ctx, pt), key)| crypto::seal(key, ctx, pt))
                .collect()
        };
        // Below ~256 KiB sealing takes well under 100 µs: not worth leaving the executor.
        let multi_thread = tokio::runtime::Handle::try_current()
            .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
        if total >= 256 * 1024 && multi_thread {
            Ok(tokio::task::block_in_place(seal_all)?)
        } else {
            Ok(seal_all()?)
        }
    }

    /// Opens a field sealed under any stored version of the tenant's DEK.
    pub async fn open(
        &self,
        ctx: &SealContext<'_>,
        sealed: &SealedField,
    ) -> Result<Vec<u8>, KeyringError> {
        let tenant = TenantId::new(ctx.tenant)?;
        let key = self.sealing_key(&tenant, sealed.key_version()?).await?;
        Ok(crypto::open(&key, ctx, sealed)?)
    }

    /// Creates the next DEK version; new seals use it, older versions are retired for
    /// writes but keep opening what they sealed. Nothing is re-encrypted.
    pub async fn rotate_dek(&self, tenant: &TenantId) -> Result<DekVersion, KeyringError> {
        let gate = gate(&self.refilling, tenant);
        let _guard = gate.lock().await;
        let current = self
            .store
            .current_key_version(tenant)
            .await?
            .ok_or_else(|| KeyringError::NoKey(tenant.clone()))?;
        let key = KeyRef::new(current.kms_key_ref.clone());
        let version = self.create_version(tenant, &key, "keys.rotate_dek").await?;
        lock(&self.writers).remove(tenant);
        Ok(version)
    }

    /// Rotates the tenant's KEK in the KMS and rewraps every stored DEK version under it,
    /// and every search index-key version (blind mode; they are wrapped like DEKs), so that
    /// `min_decryption_version` can then be raised. DEKs and index keys do not change, so
    /// cached keys, sealed data and the search index are unaffected.
    pub async fn rotate_kek(&self, tenant: &TenantId) -> Result<KekRotation, KeyringError> {
        let versions = self.store.list_key_versions(tenant).await?;
        let first = versions
            .last()
            .ok_or_else(|| KeyringError::NoKey(tenant.clone()))?;
        let key = KeyRef::new(first.kms_key_ref.clone());
        let kek_version = self.kms.rotate_kek(&key).await?;
        let mut rewrapped = 0;
        for record in &versions {
            let key = KeyRef::new(record.kms_key_ref.clone());
            let ctx = DekContext {
                tenant,
                key: &key,
                version: record.version,
            };
            let old = WrappedDek::new(record.wrapped_dek.clone());
            let new = self.kms.rewrap_dek(ctx, &old).await?;
            if new == old {
                continue;
            }
            let replaced = self
                .store
                .replace_wrapped_dek(tenant, record.version, old.as_str(), new.as_str())
                .await?;
            if !replaced {
                return Err(KeyringError::RewrapRace {
                    tenant: tenant.clone(),
                    version: record.version,
                });
            }
            rewrapped += 1;
        }
        let mut index_keys_rewrapped = 0;
        for record in self.store.list_index_keys(tenant).await? {
            // Plaintext-mode versions have no key.
            if record.wrapped_key.is_empty() {
                continue;
            }
            let key = KeyRef::new(record.kms_key_ref.clone());
            let version = DekVersion::new(record.version)
                .ok_or(CryptoError::Malformed("index key version"))?;
            let ctx = DekContext {
                tenant,
                key: &key,
                version,
            };
            let old = WrappedDek::new(record.wrapped_key.clone());
            let new = self.kms.rewrap_dek(ctx, &old).await?;
            if new == old {
                continue;
            }
            let replaced = self
                .store
                .replace_wrapped_index_key(tenant, record.version, old.as_str(), new.as_str())
                .await?;
            if !replaced {
                return Err(KeyringError::IndexKeyRewrapRace {
                    tenant: tenant.clone(),
                    version: record.version,
                });
            }
            index_keys_rewrapped += 1;
        }
        self.audit(tenant, "keys.rotate_kek", "tenant_key", &key.to_string())
            .await?;
        tracing::info!(tenant = %tenant, kek_version, rewrapped, index_keys_rewrapped, "kek rotated and deks and index keys rewrapped");
        Ok(KekRotation {
            kek_version,
            rewrapped,
            index_keys_rewrapped,
        })
    }

    /// Every DEK version of the tenant with its counters. Never key bytes.
    pub async fn status(&self, tenant: &TenantId) -> Result<Vec<KeyVersionStatus>, KeyringError> {
        if self.store.get_tenant(tenant).await?.is_none() {
            return Err(KeyringError::UnknownTenant(tenant.clone()));
        }
        let versions = self.store.list_key_versions(tenant).await?;
        let current = versions
            .iter()
            .filter(|v| !v.retired)
            .map(|v| v.version)
            .max();
        Ok(versions
            .into_iter()
            .map(|v| KeyVersionStatus {
                version: v.version.get(),
                current: Some(v.version) == current,
                retired: v.retired,
                seal_count: v.seal_count,
                seal_bound: self.cfg.seal_bound,
                kek_version: WrappedDek::new(v.wrapped_dek).kek_version(),
                kms_key_ref: v.kms_key_ref,
                created_at_ms: v.created_at_ms,
            })
            .collect())
    }

    /// Drops every cached key whose TTL has passed; their bytes are wiped as they drop.
    /// Returns how many were evicted.
    pub fn evict_expired(&self) -> usize {
        let ttl = Duration::from_secs(self.cfg.cache_ttl_secs);
        let mut cache = lock(&self.cache);
        let before = cache.len();
        cache.retain(|_, e| e.loaded.elapsed() < ttl);
        before - cache.len()
    }

    /// Number of unwrapped keys held in memory.
    pub fn cached_keys(&self) -> usize {
        lock(&self.cache).len()
    }

    // --- internals -------------------------------------------------------------------

    async fn create_version(
        &self,
        tenant: &TenantId,
        key: &KeyRef,
        action: &str,
    ) -> Result<DekVersion, KeyringError> {
        let latest = self
            .store
            .list_key_versions(tenant)
            .await?
            .last()
            .map(|v| v.version);
        let version = match latest {
            None => DekVersion::FIRST,
            Some(v) => v
                .next()
                .ok_or_else(|| KeyringError::VersionOverflow(tenant.clone()))?,
        };
        let (dek, wrapped) = self
            .kms
            .generate_dek(DekContext {
                tenant,
                key,
                version,
            })
            .await?;
        let record = KeyVersionRecord {
            tenant_id: tenant.clone(),
            version,
            wrapped_dek: wrapped.as_str().to_string(),
            kms_key_ref: key.as_str().to_string(),
            seal_count: 0,
            retired: false,
            created_at_ms: now_ms(),
        };
        match self.store.insert_key_version(&record).await {
            Ok(()) => {}
            // Another process created this version first: use theirs.
            Err(StoreError::Conflict(_)) => {
                tracing::info!(tenant = %tenant, version = %version, "dek version created concurrently elsewhere");
                return Ok(version);
            }
            Err(e) => return Err(e.into()),
        }
        self.cache_insert(
            (tenant.clone(), version),
            Arc::new(SealingKey::new(version, &dek)),
        );
        self.audit(tenant, action, "tenant_key", &version.to_string())
            .await?;
        tracing::info!(tenant = %tenant, version = %version, action, "dek version created");
        Ok(version)
    }

    async fn audit(
        &self,
        tenant: &TenantId,
        action: &str,
        target_kind: &str,
        target_id: &str,
    ) -> Result<(), StoreError> {
        self.store
            .append_audit_event(&AuditEvent {
                tenant_id: tenant.clone(),
                actor: "keyring".into(),
                action: action.into(),
                target_kind: target_kind.into(),
                target_id: target_id.into(),
                at_ms: now_ms(),
            })
            .await
    }

    /// `n` sealing keys (one per seal), taken from the tenant's writer reservation.
    async fn take_seals(
        &self,
        tenant: &TenantId,
        n: u64,
    ) -> Result<Vec<Arc<SealingKey>>, KeyringError> {
        let mut out = Vec::with_capacity(usize::try_from(n).unwrap_or(0));
        let mut needed = n;
        while needed > 0 {
            if let Some((key, took)) = self.take_reserved(tenant, needed) {
                out.extend(std::iter::repeat_n(key, usize::try_from(took).unwrap_or(0)));
                needed -= took;
                continue;
            }
            self.refill(tenant, needed).await?;
        }
        Ok(out)
    }

    fn take_reserved(&self, tenant: &TenantId, needed: u64) -> Option<(Arc<SealingKey>, u64)> {
        let refresh = Duration::from_secs(self.cfg.writer_refresh_secs);
        let mut writers = lock(&self.writers);
        let w = writers.get_mut(tenant)?;
        if w.remaining == 0 || w.checked.elapsed() >= refresh {
            return None;
        }
        let took = w.remaining.min(needed);
        w.remaining -= took;
        Some((w.key.clone(), took))
    }

    async fn refill(&self, tenant: &TenantId, needed: u64) -> Result<(), KeyringError> {
        let gate = gate(&self.refilling, tenant);
        let _guard = gate.lock().await;
        {
            // Someone else may have refilled while we waited.
            let refresh = Duration::from_secs(self.cfg.writer_refresh_secs);
            let writers = lock(&self.writers);
            if let Some(w) = writers.get(tenant)
                && w.remaining > 0
                && w.checked.elapsed() < refresh
            {
                return Ok(());
            }
        }
        loop {
            let current = self
                .store
                .current_key_version(tenant)
                .await?
                .ok_or_else(|| KeyringError::NoKey(tenant.clone()))?;
            // Keep an unexpired reservation on the same version (only the check was stale).
            {
                let mut writers = lock(&self.writers);
                if let Some(w) = writers.get_mut(tenant) {
                    if w.key.version() == current.version && w.remaining > 0 {
                        w.checked = Instant::now();
                        return Ok(());
                    }
                    writers.remove(tenant);
                }
            }
            let wanted = needed.max(self.cfg.seal_reservation).max(1);
            match self
                .store
                .reserve_seals(tenant, current.version, wanted, self.cfg.seal_bound)
                .await?
            {
                SealReservation::Granted(granted) => {
                    let key = self.sealing_key(tenant, current.version).await?;
                    lock(&self.writers).insert(
                        tenant.clone(),
                        Writer {
                            key,
                            remaining: granted,
                            checked: Instant::now(),
                        },
                    );
                    return Ok(());
                }
                SealReservation::Exhausted => {
                    tracing::info!(tenant = %tenant, version = %current.version, "dek reached its seal bound; creating the next version");
                    let key = KeyRef::new(current.kms_key_ref.clone());
                    self.create_version(tenant, &key, "keys.rotate_dek.seal_bound")
                        .await?;
                }
            }
        }
    }

    fn cache_get(&self, k: &CacheKey) -> Option<Arc<SealingKey>> {
        let ttl = Duration::from_secs(self.cfg.cache_ttl_secs);
        let mut cache = lock(&self.cache);
        match cache.get(k) {
            Some(e) if e.loaded.elapsed() < ttl => Some(e.key.clone()),
            Some(_) => {
                cache.remove(k);
                None
            }
            None => None,
        }
    }

    fn cache_insert(&self, k: CacheKey, key: Arc<SealingKey>) {
        let ttl = Duration::from_secs(self.cfg.cache_ttl_secs);
        let mut cache = lock(&self.cache);
        cache.retain(|_, e| e.loaded.elapsed() < ttl);
        while cache.len() >= self.cfg.cache_max_entries.max(1) {
            let oldest = cache
                .iter()
                .min_by_key(|(_, e)| e.loaded)
                .map(|(k, _)| k.clone());
            match oldest {
                Some(o) => {
                    cache.remove(&o);
                }
                None => break,
            }
        }
        cache.insert(
            k,
            CacheEntry {
                key,
                loaded: Instant::now(),
            },
        );
    }

    /// The unwrapped key of one version: from the cache, or one KMS call shared by every
    /// concurrent caller.
    async fn sealing_key(
        &self,
        tenant: &TenantId,
        version: DekVersion,
    ) -> Result<Arc<SealingKey>, KeyringError> {
        let k = (tenant.clone(), version);
        if let Some(key) = self.cache_get(&k) {
            return Ok(key);
        }
        let gate = gate(&self.loading, &k);
        let _guard = gate.lock().await;
        if let Some(key) = self.cache_get(&k) {
            return Ok(key);
        }
        let result = self.load(tenant, version).await;
        lock(&self.loading).remove(&k);
        let key = result?;
        self.cache_insert(k, key.clone());
        Ok(key)
    }

    async fn load(
        &self,
        tenant: &TenantId,
        version: DekVersion,
    ) -> Result<Arc<SealingKey>, KeyringError> {
        let record = self
            .store
            .get_key_version(tenant, version)
            .await?
            .ok_or_else(|| KeyringError::UnknownVersion {
                tenant: tenant.clone(),
                version,
            })?;
        let key = KeyRef::new(record.kms_key_ref);
        let dek = self
            .kms
            .unwrap_dek(
                DekContext {
                    tenant,
                    key: &key,
                    version,
                },
                &WrappedDek::new(record.wrapped_dek),
            )
            .await?;
        Ok(Arc::new(SealingKey::new(version, &dek)))
    }
}
