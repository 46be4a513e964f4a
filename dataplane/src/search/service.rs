//! Search as the rest of the data plane uses it: index keys, store-driven indexing, and
//! access-checked search.
//!
//! - **Index keys**: per tenant, versioned, wrapped by the KMS under the tenant's key (like a
//!   DEK). The key that blinds terms is `HMAC-SHA256(unwrapped, "helpr/index-key/v1")`, so it
//!   is never equal to any DEK even if a wrapped value were swapped between tables.
//! - **Index-key rotation** ([`SearchService::rotate_index_key`]) creates version n+1 in
//!   state `building` and marks every message, in one transaction. Indexers then blind each
//!   message under the active *and* the building key (both term sets at the same positions),
//!   while queries keep using the active key. Once no message is pending, the indexer
//!   switches: in one transaction the building key becomes active, the old one retired, and
//!   every message is marked again, so a second pass leaves only the new key's terms; once
//!   it is done, the index is compacted so no file keeps the retired terms.
//!   Markers are cleared only if the key versions are still those the batch was blinded
//!   under, so a batch racing a rotation is indexed again. All state is in the store: an
//!   interrupted rotation continues with the next indexer run, in any process.
//! - **Index schemes**: an index-key version is the scheme of the tenant's terms: its mode
//!   (blind, or plaintext, which has no key) and its folding rules ([`Normalization`]).
//!   Queries use the active version's. The mode a tenant wants is its Tenant resource's
//!   (`spec.search.mode`, synced into the store) or, for a tenant the control plane does not
//!   manage, the configured `search.mode`. When the active version's mode or rules differ
//!   from what this build and the tenant want, the indexer starts a rotation to a new
//!   version by itself, so changing the mode or upgrading the rules rebuilds the index
//!   the same way, with search working throughout.
//! - **Indexing** is driven by the store: every message is stored with its index marker set
//!   (same row, same transaction); [`SearchService::index_pending`] reads marked messages,
//!   opens their searchable fields, turns them into terms in this process and hands only
//!   terms and ids to the search tier, then clears the markers. A crash anywhere in between
//!   leaves markers set, and the next run indexes those messages again (idempotent by id).
//! - **Search** parses the query, restricts it to the caller's inboxes inside the index query,
//!   then re-checks every hit against the store (message still there and not soft-deleted,
//!   inbox still allowed) before opening its subject and snippet.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ring::hmac;
use zeroize::Zeroizing;

use super::blind::{Field, INDEX_KEY_LEN, IndexKey, IndexKeyVersion, Indexer, Mode};
use super::index::{Cursor, DeleteScope, IndexDoc, SearchError, SearchIndex, SearchRequest};
use super::query::{Query, QueryError, index_query};
use super::tokenize::Normalization;
use crate::crypto::{CryptoError, DekVersion, SealContext, SealedField};
use crate::ids::TenantId;
use crate::keyring::{Keyring, KeyringError};
use crate::kms::{DekContext, KeyRef, KmsError, WrappedDek};
use crate::store::{
    IndexKeyRecord, IndexKeySet, IndexKeyState, MessageFields, NewAttachment, StoreError,
    StoredMessage, now_ms,
};

const INDEX_KEY_DERIVATION: &[u8] = b"helpr/index-key/v1";
/// How long [`SearchService::index_all_pending`] relies on its last check that a tenant's
/// index has the wanted mode and folding rules ([`SearchService::upgrade_scheme`]): a
/// changed mode is acted on within this long.
pub const SCHEME_CHECK_INTERVAL: Duration = Duration::from_secs(30);
/// Most batches [`SearchService::index_all_pending`] commits together.
pub const GROUP_BATCHES: u32 = 25;
/// Work after which [`SearchService::index_all_pending`] commits what it has indexed, so
/// indexed mail is searchable within about this long (the embedded default's commit
/// interval).
pub const GROUP_WORK: Duration = Duration::from_secs(1);

/// Why a search-service call failed. Never carries content, terms or keys.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error(transparent)]
    Query(#[from] QueryError),
    #[error(transparent)]
    Search(#[from] SearchError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Keyring(#[from] KeyringError),
    #[error(transparent)]
    Kms(#[from] KmsError),
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    #[error("tenant {0} does not exist or has no keys; create it first")]
    UnknownTenant(TenantId),
    #[error("tenant {0} has no inbox with that address")]
    UnknownInbox(TenantId),
    #[error(
        "an index key rotation of tenant {0} (to version {1}) is in progress; indexing finishes it"
    )]
    RotationInProgress(TenantId, u32),
    #[error("the tenant's search index is in plaintext mode: there is no index key to rotate")]
    PlaintextMode,
    #[error(
        "index key version {1} of tenant {0} was made with folding rules version {2}, which this build does not know: run a newer build"
    )]
    UnknownNormalization(TenantId, u32, u32),
}

impl ServiceError {
    /// Whether the same call may succeed later.
    pub fn is_retryable(&self) -> bool {
        match self {
            ServiceError::Search(e) => e.is_retryable(),
            ServiceError::Store(e) => e.is_retryable(),
            ServiceError::Keyring(e) => e.is_retryable(),
            ServiceError::Kms(e) => e.is_retryable(),
            _ => false,
        }
    }
}

/// One hit as a caller sees it: re-checked and opened.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ResultHit {
    pub message_id: String,
    pub conversation_id: String,
    pub inbox_id: String,
    pub date_ms: i64,
    pub subject: String,
    pub snippet: String,
}

/// A page of results; `next` is the opaque cursor of the following page.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize)]
pub struct ResultPage {
    pub hits: Vec<ResultHit>,
    pub next: Option<String>,
}

/// Index keys, store-driven indexing and checked search (see the module docs).
pub struct SearchService {
    keyring: Arc<Keyring>,
    index: Arc<dyn SearchIndex>,
    mode: Mode,
    /// Unwrapped (derived) index keys by tenant and version. Which version is active is
    /// read from the store on every call, so a rotation by another process is seen at once.
    keys: Mutex<HashMap<(TenantId, u32), Arc<IndexKey>>>,
    /// When each tenant's active version was last seen to have the wanted mode and the
    /// current folding rules (see [`Self::upgrade_scheme`]).
    scheme_checked: Mutex<HashMap<TenantId, Instant>>,
    /// Tenants whose retired index terms were seen gone (see [`Self::remove_retired_terms`]).
    retired_checked: Mutex<HashSet<TenantId>>,
}

/// How one index-key version makes terms.
enum Scheme {
    Blind(Arc<IndexKey>),
    Plaintext(Normalization),
}

impl Scheme {
    fn indexer(&self) -> Indexer<'_> {
        match self {
            Scheme::Blind(key) => Indexer::Blind(key),
            Scheme::Plaintext(n) => Indexer::Plaintext(*n),
        }
    }
}

/// The schemes one indexing batch makes terms with.
struct LiveKeys {
    active: Scheme,
    /// During a rotation: the building version, whose terms go into the index beside the
    /// active version's.
    building: Option<Scheme>,
    set: IndexKeySet,
}

/// One index key version as `keys status` shows it (never key bytes).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct IndexKeyStatus {
    pub version: u32,
    pub state: IndexKeyState,
    pub created_at_ms: i64,
    /// The folding rules its terms were made with (see `search::tokenize`).
    pub normalization: u32,
    /// Blind tokens under the key, or plaintext terms (no key).
    pub mode: Mode,
}

/// A tenant's index keys and the progress of its indexing.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct IndexKeysReport {
    pub versions: Vec<IndexKeyStatus>,
    /// Messages still to be (re-)indexed.
    pub pending: u64,
    pub total: u64,
}

impl SearchService {
    pub fn new(keyring: Arc<Keyring>, index: Arc<dyn SearchIndex>, mode: Mode) -> Self {
        Self {
            keyring,
            index,
            mode,
            keys: Mutex::new(HashMap::new()),
            scheme_checked: Mutex::new(HashMap::new()),
            retired_checked: Mutex::new(HashSet::new()),
        }
    }

    /// The configured mode: that of tenants the control plane does not manage (see
    /// [`Self::wanted_mode`]).
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// The mode the tenant's index should have: its Tenant resource's when the control
    /// plane manages it, else the configured one.
    pub async fn wanted_mode(&self, tenant: &TenantId) -> Result<Mode, ServiceError> {
        Ok(self
            .keyring
            .store()
            .tenant_settings(tenant)
            .await?
            .map_or(self.mode, |s| s.search_mode))
    }

    /// The scheme of `record`: its folding rules, and in blind mode its key (unwrapped once
    /// per process, then from memory).
    async fn scheme(&self, record: &IndexKeyRecord) -> Result<Scheme, ServiceError> {
        let normalization = Self::normalization_of(record)?;
        Ok(match record.mode {
            Mode::Blind => Scheme::Blind(self.unwrap_index_key(record).await?),
            Mode::Plaintext => Scheme::Plaintext(normalization),
        })
    }

    fn normalization_of(record: &IndexKeyRecord) -> Result<Normalization, ServiceError> {
        Normalization::from_u32(record.normalization).ok_or_else(|| {
            ServiceError::UnknownNormalization(
                record.tenant_id.clone(),
                record.version,
                record.normalization,
            )
        })
    }

    pub fn index(&self) -> &Arc<dyn SearchIndex> {
        &self.index
    }

    /// Unwraps (once per process, then from memory) the index key of `record`.
    async fn unwrap_index_key(
        &self,
        record: &IndexKeyRecord,
    ) -> Result<Arc<IndexKey>, ServiceError> {
        let slot = (record.tenant_id.clone(), record.version);
        if let Some(k) = self
            .keys
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&slot)
            .cloned()
        {
            return Ok(k);
        }
        // Before the KMS call: a key this build cannot use is refused without one.
        let normalization = Self::normalization_of(record)?;
        let version = DekVersion::new(record.version).ok_or(CryptoError::Malformed("version"))?;
        let root = self
            .keyring
            .kms()
            .unwrap_dek(
                DekContext {
                    tenant: &record.tenant_id,
                    key: &KeyRef::new(record.kms_key_ref.clone()),
                    version,
                },
                &WrappedDek::new(record.wrapped_key.clone()),
            )
            .await?;
        let derived = Zeroizing::new(
            hmac::sign(
                &hmac::Key::new(hmac::HMAC_SHA256, root.expose_bytes()),
                INDEX_KEY_DERIVATION,
            )
            .as_ref()
            .to_vec(),
        );
        let key_version =
            IndexKeyVersion::new(record.version).ok_or(CryptoError::Malformed("version"))?;
        let key = Arc::new(
            IndexKey::from_slice(key_version, &derived[..INDEX_KEY_LEN])?
                .with_normalization(normalization),
        );
        self.keys
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(slot, key.clone());
        Ok(key)
    }

    /// A new index-key version with this build's folding rules: in blind mode a new key,
    /// generated and wrapped by the KMS under the tenant's KMS key; in plaintext mode none.
    async fn new_index_key_record(
        &self,
        tenant: &TenantId,
        version: u32,
        state: IndexKeyState,
        mode: Mode,
    ) -> Result<IndexKeyRecord, ServiceError> {
        if mode == Mode::Plaintext {
            return Ok(IndexKeyRecord {
                tenant_id: tenant.clone(),
                version,
                wrapped_key: String::new(),
                kms_key_ref: String::new(),
                created_at_ms: now_ms(),
                state,
                normalization: Normalization::CURRENT.get(),
                mode,
            });
        }
        let dek = self
            .keyring
            .store()
            .current_key_version(tenant)
            .await?
            .ok_or_else(|| ServiceError::UnknownTenant(tenant.clone()))?;
        let key_ref = KeyRef::new(dek.kms_key_ref.clone());
        let dek_version = DekVersion::new(version).ok_or(CryptoError::Malformed("version"))?;
        let (_, wrapped) = self
            .keyring
            .kms()
            .generate_dek(DekContext {
                tenant,
                key: &key_ref,
                version: dek_version,
            })
            .await?;
        Ok(IndexKeyRecord {
            tenant_id: tenant.clone(),
            version,
            wrapped_key: wrapped.as_str().to_owned(),
            kms_key_ref: dek.kms_key_ref,
            created_at_ms: now_ms(),
            state,
            normalization: Normalization::CURRENT.get(),
            mode,
        })
    }

    /// The tenant's active index-key version (the scheme queries use), created on first use
    /// in the tenant's wanted mode (see [`Self::wanted_mode`]).
    ///
    /// A tenant without versions whose mail was indexed already was indexed by a build
    /// that made no versions in plaintext mode (blind mode always made a key first), with
    /// the first folding rules or later ones: its first version records plaintext with the
    /// first rules, so that the next indexer run rebuilds it with the current ones (and in
    /// the wanted mode).
    async fn active_record(&self, tenant: &TenantId) -> Result<IndexKeyRecord, ServiceError> {
        let store = self.keyring.store();
        if let Some(record) = store.current_index_key(tenant).await? {
            return Ok(record);
        }
        let (pending, total) = store.index_progress(tenant).await?;
        let record = if total > pending {
            IndexKeyRecord {
                normalization: Normalization::V1.get(),
                ..self
                    .new_index_key_record(tenant, 1, IndexKeyState::Active, Mode::Plaintext)
                    .await?
            }
        } else {
            let mode = self.wanted_mode(tenant).await?;
            self.new_index_key_record(tenant, 1, IndexKeyState::Active, mode)
                .await?
        };
        match store.insert_index_key(&record).await {
            // Another process created it first: use theirs.
            Ok(()) | Err(StoreError::Conflict(_)) => {}
            Err(e) => return Err(e.into()),
        }
        store
            .current_index_key(tenant)
            .await?
            .ok_or_else(|| ServiceError::UnknownTenant(tenant.clone()))
    }

    /// The scheme queries of the tenant use (see [`Self::active_record`]).
    async fn active_scheme(&self, tenant: &TenantId) -> Result<Scheme, ServiceError> {
        let record = self.active_record(tenant).await?;
        self.scheme(&record).await
    }

    /// The tenant's active index key (the one queries are blinded under), created and
    /// wrapped by the KMS on first use; [`ServiceError::PlaintextMode`] when the tenant's
    /// index is in plaintext mode.
    pub async fn index_key(&self, tenant: &TenantId) -> Result<Arc<IndexKey>, ServiceError> {
        match self.active_scheme(tenant).await? {
            Scheme::Blind(key) => Ok(key),
            Scheme::Plaintext(_) => Err(ServiceError::PlaintextMode),
        }
    }

    /// The folding rules of the tenant's queries (its active version's).
    pub async fn query_normalization(
        &self,
        tenant: &TenantId,
    ) -> Result<Normalization, ServiceError> {
        Ok(self.active_scheme(tenant).await?.indexer().normalization())
    }

    /// The active scheme and, during a rotation, the building one.
    async fn live_keys(&self, tenant: &TenantId) -> Result<LiveKeys, ServiceError> {
        let mut records = self.keyring.store().list_index_keys(tenant).await?;
        if !records.iter().any(|r| r.state == IndexKeyState::Active) {
            self.active_record(tenant).await?;
            records = self.keyring.store().list_index_keys(tenant).await?;
        }
        let mut active = None;
        let mut building = None;
        let mut set = IndexKeySet::default();
        for r in &records {
            match r.state {
                IndexKeyState::Active => {
                    set.active = Some(r.version);
                    active = Some(self.scheme(r).await?);
                }
                IndexKeyState::Building => {
                    set.building = Some(r.version);
                    building = Some(self.scheme(r).await?);
                }
                IndexKeyState::Retired => {
                    // Nothing is blinded under a retired key again: forget it, and with it
                    // the blind tokens it remembered.
                    self.keys
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .remove(&(tenant.clone(), r.version));
                }
            }
        }
        let active = active.ok_or_else(|| ServiceError::UnknownTenant(tenant.clone()))?;
        Ok(LiveKeys {
            active,
            building,
            set,
        })
    }

    /// Starts an index-key rotation: a new key version is created (wrapped by the KMS) and
    /// every message is marked for indexing. Indexers (the `dev` loop, `import`, `reindex`)
    /// then blind each message under both keys; queries keep using the active key until
    /// every message carries the new key's terms, when the new key becomes active and a
    /// second pass removes the old key's terms. Resumable: the state lives in the store.
    /// Returns the new version. [`ServiceError::PlaintextMode`] when the tenant wants
    /// plaintext mode, which has no key.
    pub async fn rotate_index_key(&self, tenant: &TenantId) -> Result<u32, ServiceError> {
        if self.wanted_mode(tenant).await? == Mode::Plaintext {
            return Err(ServiceError::PlaintextMode);
        }
        self.start_rotation(tenant, Mode::Blind).await
    }

    /// Starts a rotation to a new version in `mode` with this build's folding rules.
    async fn start_rotation(&self, tenant: &TenantId, mode: Mode) -> Result<u32, ServiceError> {
        let live = self.live_keys(tenant).await?;
        if let Some(v) = live.set.building {
            return Err(ServiceError::RotationInProgress(tenant.clone(), v));
        }
        let last = self
            .keyring
            .store()
            .list_index_keys(tenant)
            .await?
            .iter()
            .map(|r| r.version)
            .max()
            .unwrap_or(0);
        let version = last
            .checked_add(1)
            .ok_or(CryptoError::Malformed("version"))?;
        let record = self
            .new_index_key_record(tenant, version, IndexKeyState::Building, mode)
            .await?;
        match self.keyring.store().start_index_key_rotation(&record).await {
            Ok(_) => Ok(version),
            Err(StoreError::Conflict(_)) => {
                Err(ServiceError::RotationInProgress(tenant.clone(), version))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Starts a rotation when the active version's mode is not the one the tenant wants
    /// ([`Self::wanted_mode`]) or its terms were made with older folding rules than this
    /// build's ([`Normalization::CURRENT`]), and no rotation is in progress; returns whether
    /// it started one. The rotation re-indexes the tenant in a new version of the wanted
    /// mode with the current rules, queries using the old version (its mode and rules)
    /// until the switch. [`Self::index_all_pending`] calls this at most every
    /// [`SCHEME_CHECK_INTERVAL`] per tenant once the check has passed.
    pub async fn upgrade_scheme(&self, tenant: &TenantId) -> Result<bool, ServiceError> {
        let wanted = self.wanted_mode(tenant).await?;
        let active = self.active_record(tenant).await?;
        if active.mode == wanted && active.normalization >= Normalization::CURRENT.get() {
            self.scheme_checked
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(tenant.clone(), Instant::now());
            return Ok(false);
        }
        self.scheme_checked
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(tenant);
        match self.start_rotation(tenant, wanted).await {
            Ok(version) => {
                tracing::info!(
                    tenant = %tenant,
                    version,
                    from_mode = %active.mode,
                    mode = %wanted,
                    from_normalization = active.normalization,
                    normalization = Normalization::CURRENT.get(),
                    "index made in another mode or with older folding rules: re-indexing"
                );
                Ok(true)
            }
            // Started meanwhile (by another process, or by hand); once it is done, the next
            // run checks again.
            Err(ServiceError::RotationInProgress(..)) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Switches to the building key once every message has been indexed under it; returns
    /// whether it switched.
    async fn advance_rotation(&self, tenant: &TenantId) -> Result<bool, ServiceError> {
        let store = self.keyring.store();
        let building = store
            .list_index_keys(tenant)
            .await?
            .into_iter()
            .find(|r| r.state == IndexKeyState::Building);
        let Some(building) = building else {
            return Ok(false);
        };
        let switched = store
            .finish_index_key_rotation(tenant, building.version)
            .await?;
        if switched {
            self.retired_checked
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(tenant);
            tracing::info!(tenant = %tenant, version = building.version, "index key rotated: queries now use the new key");
        }
        Ok(switched)
    }

    /// Once the second pass of a rotation is done, compacts the index so that no file keeps
    /// the retired version's terms (in particular the plaintext terms of a tenant that moved
    /// to blind mode), then records that. Checked after indexing work, and once per process
    /// and tenant.
    async fn remove_retired_terms(
        &self,
        tenant: &TenantId,
        worked: bool,
    ) -> Result<(), ServiceError> {
        if !worked
            && self
                .retired_checked
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .contains(tenant)
        {
            return Ok(());
        }
        let store = self.keyring.store();
        if store.retired_index_terms_left(tenant).await? {
            let removed = self.index.compact(tenant).await?;
            store.clear_retired_index_terms(tenant).await?;
            tracing::info!(tenant = %tenant, removed, "retired index terms removed: index compacted");
        }
        self.retired_checked
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(tenant.clone());
        Ok(())
    }

    /// The tenant's index key versions and indexing progress.
    pub async fn index_keys_report(
        &self,
        tenant: &TenantId,
    ) -> Result<IndexKeysReport, ServiceError> {
        let store = self.keyring.store();
        let versions = store
            .list_index_keys(tenant)
            .await?
            .into_iter()
            .map(|r| IndexKeyStatus {
                version: r.version,
                state: r.state,
                created_at_ms: r.created_at_ms,
                normalization: r.normalization,
                mode: r.mode,
            })
            .collect();
        let (pending, total) = store.index_progress(tenant).await?;
        Ok(IndexKeysReport {
            versions,
            pending,
            total,
        })
    }

    async fn open_text(
        &self,
        tenant: &TenantId,
        record: &str,
        field: &str,
        sealed: &SealedField,
    ) -> Result<String, ServiceError> {
        let bytes = self
            .keyring
            .open(&SealContext::new(tenant.as_str(), record, field), sealed)
            .await?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    /// Opens the searchable fields of a stored message and turns them into index terms.
    ///
    /// `also` (during an index-key rotation: the building version) adds its terms to every
    /// field at the same positions, so phrases match under either version.
    pub async fn document(
        &self,
        message: &StoredMessage,
        indexer: &Indexer<'_>,
        also: Option<&Indexer<'_>>,
    ) -> Result<IndexDoc, ServiceError> {
        let t = &message.tenant_id;
        let f = &message.fields;
        let names = MessageFields::FIELD_NAMES;
        let subject = self.open_text(t, &message.id, names[0], &f.subject).await?;
        let from = self
            .open_text(t, &message.id, names[1], &f.from_addr)
            .await?;
        let to = self
            .open_text(t, &message.id, names[2], &f.to_addrs)
            .await?;
        let cc = self
            .open_text(t, &message.id, names[3], &f.cc_addrs)
            .await?;
        let body = self
            .open_text(t, &message.id, names[5], &f.text_body)
            .await?;
        let mut attachment_names = Vec::with_capacity(message.attachments.len());
        for a in &message.attachments {
            attachment_names.push(
                self.open_text(t, &a.id, NewAttachment::FIELD_NAMES[0], &a.name)
                    .await?,
            );
        }
        let recipients = if cc.is_empty() {
            to
        } else {
            format!("{to}, {cc}")
        };
        Ok(IndexDoc {
            message_id: message.id.clone(),
            conversation_id: message.conversation_id.clone(),
            inbox_id: message.inbox_id.clone(),
            date_ms: message.internal_date_ms,
            has_attachment: message.attachments.iter().any(|a| !a.inline),
            key_version: indexer.key_version().map(IndexKeyVersion::get),
            fields: [
                (Field::Subject, subject.as_str()),
                (Field::From, from.as_str()),
                (Field::To, recipients.as_str()),
                (Field::Body, body.as_str()),
                (Field::AttachmentName, attachment_names.join("\n").as_str()),
            ]
            .into_iter()
            .map(|(field, text)| {
                let mut terms = indexer.index_text(field, text);
                if let Some(other) = also {
                    terms.tokens.extend(other.index_text(field, text).tokens);
                    // By position (the order terms go to the index); a term both versions
                    // make alike (plaintext under two folding rules) is kept once.
                    terms
                        .tokens
                        .sort_unstable_by(|a, b| (a.1, &a.0).cmp(&(b.1, &b.0)));
                    terms.tokens.dedup();
                }
                terms
            })
            .collect(),
        })
    }

    /// Indexes up to `batch` messages whose marker is set and clears their markers; returns
    /// how many were handled (0 when nothing is pending). A marked message that is gone or
    /// soft-deleted is removed from the index instead (the repair path of a soft delete whose
    /// own index delete did not happen), then its marker is cleared.
    pub async fn index_pending(
        &self,
        tenant: &TenantId,
        batch: u32,
    ) -> Result<usize, ServiceError> {
        self.index_pending_group(tenant, batch, 1, Duration::ZERO)
            .await
    }

    /// Like [`SearchService::index_pending`] for up to `max_batches` batches of `batch`
    /// (fewer once `max_work` has passed): the batches go to the index one after the other
    /// and share one commit, after which all their markers are cleared. A commit per batch
    /// would cost more than the indexing itself; a crash before the commit leaves the
    /// markers set, and indexing is idempotent by message id.
    async fn index_pending_group(
        &self,
        tenant: &TenantId,
        batch: u32,
        max_batches: u32,
        max_work: Duration,
    ) -> Result<usize, ServiceError> {
        let store = self.keyring.store().clone();
        let mut ids = store.pending_index(tenant, batch).await?;
        if ids.is_empty() {
            return Ok(0);
        }
        // Read after the first ids: a rotation that marked them is visible here.
        let live = self.live_keys(tenant).await?;
        let indexer = live.active.indexer();
        let also = live.building.as_ref().map(Scheme::indexer);
        let started = Instant::now();
        let mut group: Vec<String> = Vec::new();
        let mut gone = Vec::new();
        for round in 1..=max_batches.max(1) {
            let mut docs = Vec::with_capacity(ids.len());
            for id in &ids {
                match store.get_message(tenant, id).await? {
                    Some(message) => {
                        docs.push(self.document(&message, &indexer, also.as_ref()).await?)
                    }
                    None => gone.push(id.clone()),
                }
            }
            self.index.index(tenant, docs).await?;
            let last = ids.last().cloned();
            group.append(&mut ids);
            if round == max_batches || started.elapsed() >= max_work {
                break;
            }
            let Some(last) = last else { break };
            ids = store.pending_index_after(tenant, &last, batch).await?;
            if ids.is_empty() {
                break;
            }
        }
        self.index.flush(tenant).await?;
        // If a rotation started or switched meanwhile, the markers stay and the next batch
        // indexes these messages again under the new keys. Soft-deleted ones keep theirs.
        store.mark_indexed(tenant, &group, Some(live.set)).await?;
        for id in &gone {
            self.index
                .delete(tenant, &DeleteScope::Message(id.clone()))
                .await?;
        }
        // Clears only markers of messages still soft-deleted (a restore meanwhile keeps its).
        store.mark_removed_from_index(tenant, &gone).await?;
        Ok(group.len())
    }

    /// Indexes everything pending, calling `progress(pending, total)` after each commit. Up
    /// to [`GROUP_BATCHES`] batches (or [`GROUP_WORK`] of work) share a commit, so what is
    /// indexed is searchable within about a second. When an index-key rotation is in
    /// progress and nothing is left, it switches to the new key and carries on with the
    /// pass that removes the old key's terms, and compacts the index once that pass is
    /// done. A tenant whose active version is not in the mode it wants or predates this
    /// build's folding rules gets such a rotation first (see [`Self::upgrade_scheme`]).
    pub async fn index_all_pending(
        &self,
        tenant: &TenantId,
        batch: u32,
        mut progress: impl FnMut(u64, u64),
    ) -> Result<u64, ServiceError> {
        let due = self
            .scheme_checked
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(tenant)
            .is_none_or(|at| at.elapsed() >= SCHEME_CHECK_INTERVAL);
        if due && let Err(e) = self.upgrade_scheme(tenant).await {
            // Mail keeps being indexed as before; the next run tries again.
            tracing::warn!(tenant = %tenant, error = %e, "could not start the re-index for the wanted mode or the current folding rules");
        }
        let mut done = 0u64;
        loop {
            let n = self
                .index_pending_group(tenant, batch, GROUP_BATCHES, GROUP_WORK)
                .await?;
            if n == 0 {
                if self.advance_rotation(tenant).await? {
                    continue;
                }
                self.remove_retired_terms(tenant, done > 0).await?;
                return Ok(done);
            }
            done += n as u64;
            let (pending, total) = self.keyring.store().index_progress(tenant).await?;
            progress(pending, total);
        }
    }

    /// Marks every message of the tenant for indexing and indexes them again. Resumable: an
    /// interrupted run leaves the remaining markers set, and the next run continues there.
    pub async fn reindex(
        &self,
        tenant: &TenantId,
        batch: u32,
        progress: impl FnMut(u64, u64),
    ) -> Result<u64, ServiceError> {
        self.keyring.store().mark_all_for_reindex(tenant).await?;
        self.index_all_pending(tenant, batch, progress).await
    }

    /// Searches the tenant's mail in `inboxes` (what the caller may see).
    pub async fn search(
        &self,
        tenant: &TenantId,
        inboxes: &BTreeSet<String>,
        query: &str,
        limit: usize,
        cursor: Option<&str>,
    ) -> Result<ResultPage, ServiceError> {
        let parsed = Query::parse(query)?;
        let after = cursor.map(Cursor::decode).transpose()?;
        if self.keyring.store().get_tenant(tenant).await?.is_none() {
            return Err(ServiceError::UnknownTenant(tenant.clone()));
        }
        let scheme = self.active_scheme(tenant).await?;
        let indexer = scheme.indexer();
        // The index's terms were made with the version's folding rules and in its mode: so
        // is the query (prefix and fuzzy words need plaintext terms; blind mode parses a
        // query without them the same, and refuses them naming the position).
        let parsed = match (indexer.normalization(), indexer.mode()) {
            (Normalization::CURRENT, Mode::Plaintext) => parsed,
            (Normalization::CURRENT, Mode::Blind) if !parsed.has_patterns() => parsed,
            (normalization, mode) => Query::parse_for(query, normalization, mode)?,
        };
        let request = SearchRequest {
            query: index_query(&parsed, &indexer),
            inboxes: inboxes.clone(),
            limit,
            after,
        };
        let page = self.index.search(tenant, &request).await?;
        let store = self.keyring.store();
        let mut hits = Vec::with_capacity(page.hits.len());
        for hit in page.hits {
            // Re-check against the store: deleted or soft-deleted meanwhile (get_message
            // answers only live mail, so a soft delete whose index delete has not happened
            // yet is hidden here), or moved out of reach.
            let Some(message) = store.get_message(tenant, &hit.message_id).await? else {
                continue;
            };
            if !inboxes.contains(&message.inbox_id) {
                continue;
            }
            let names = MessageFields::FIELD_NAMES;
            let subject = self
                .open_text(tenant, &message.id, names[0], &message.fields.subject)
                .await?;
            let snippet = self
                .open_text(tenant, &message.id, names[7], &message.fields.snippet)
                .await?;
            hits.push(ResultHit {
                message_id: message.id,
                conversation_id: message.conversation_id,
                inbox_id: message.inbox_id,
                date_ms: message.internal_date_ms,
                subject,
                snippet,
            });
        }
        Ok(ResultPage {
            hits,
            next: page.next.map(|c| c.encode()),
        })
    }

    /// Deletes a message from the store and from search; it is absent from every search
    /// that starts after this returns.
    pub async fn delete_message(&self, tenant: &TenantId, id: &str) -> Result<bool, ServiceError> {
        let existed = self.keyring.store().delete_message(tenant, id).await?;
        self.index
            .delete(tenant, &DeleteScope::Message(id.to_owned()))
            .await?;
        Ok(existed)
    }
}
