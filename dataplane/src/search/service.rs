//! Search as the rest of the data plane uses it: index keys, store-driven indexing, and
//! access-checked search.
//!
//! - **Index keys**: per tenant, versioned, wrapped by the KMS under the tenant's key (like a
//!   DEK). The key that blinds terms is `HMAC-SHA256(unwrapped, "helpr/index-key/v1")`, so it
//!   is never equal to any DEK even if a wrapped value were swapped between tables.
//! - **Indexing** is driven by the store: every message is stored with its index marker set
//!   (same row, same transaction); [`SearchService::index_pending`] reads marked messages,
//!   opens their searchable fields, turns them into terms in this process and hands only
//!   terms and ids to the search tier, then clears the markers. A crash anywhere in between
//!   leaves markers set, and the next run indexes those messages again (idempotent by id).
//! - **Search** parses the query, restricts it to the caller's inboxes inside the index query,
//!   then re-checks every hit against the store (message still there, inbox still allowed)
//!   before opening its subject and snippet.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use ring::hmac;
use zeroize::Zeroizing;

use super::blind::{Field, INDEX_KEY_LEN, IndexKey, IndexKeyVersion, Indexer, Mode};
use super::index::{Cursor, DeleteScope, IndexDoc, SearchError, SearchIndex, SearchRequest};
use super::query::{Query, QueryError, index_query};
use crate::crypto::{CryptoError, DekVersion, SealContext, SealedField};
use crate::ids::TenantId;
use crate::keyring::{Keyring, KeyringError};
use crate::kms::{DekContext, KeyRef, KmsError, WrappedDek};
use crate::store::{
    IndexKeyRecord, MessageFields, NewAttachment, StoreError, StoredMessage, now_ms,
};

const INDEX_KEY_DERIVATION: &[u8] = b"helpr/index-key/v1";

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
    keys: Mutex<HashMap<TenantId, Arc<IndexKey>>>,
}

impl SearchService {
    pub fn new(keyring: Arc<Keyring>, index: Arc<dyn SearchIndex>, mode: Mode) -> Self {
        Self {
            keyring,
            index,
            mode,
            keys: Mutex::new(HashMap::new()),
        }
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    pub fn index(&self) -> &Arc<dyn SearchIndex> {
        &self.index
    }

    fn cached_key(&self, tenant: &TenantId) -> Option<Arc<IndexKey>> {
        self.keys
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(tenant)
            .cloned()
    }

    /// The tenant's current index key, created (and wrapped by the KMS) on first use.
    pub async fn index_key(&self, tenant: &TenantId) -> Result<Arc<IndexKey>, ServiceError> {
        if let Some(k) = self.cached_key(tenant) {
            return Ok(k);
        }
        let store = self.keyring.store();
        let kms = self.keyring.kms();
        let record = match store.current_index_key(tenant).await? {
            Some(r) => r,
            None => {
                let dek = store
                    .current_key_version(tenant)
                    .await?
                    .ok_or_else(|| ServiceError::UnknownTenant(tenant.clone()))?;
                let key_ref = KeyRef::new(dek.kms_key_ref.clone());
                let version = DekVersion::new(1).ok_or(CryptoError::Malformed("version"))?;
                let (_, wrapped) = kms
                    .generate_dek(DekContext {
                        tenant,
                        key: &key_ref,
                        version,
                    })
                    .await?;
                let record = IndexKeyRecord {
                    tenant_id: tenant.clone(),
                    version: 1,
                    wrapped_key: wrapped.as_str().to_owned(),
                    kms_key_ref: dek.kms_key_ref,
                    created_at_ms: now_ms(),
                };
                match store.insert_index_key(&record).await {
                    // Another process created it first: use theirs.
                    Ok(()) | Err(StoreError::Conflict(_)) => {}
                    Err(e) => return Err(e.into()),
                }
                store
                    .current_index_key(tenant)
                    .await?
                    .ok_or_else(|| ServiceError::UnknownTenant(tenant.clone()))?
            }
        };
        let version = DekVersion::new(record.version).ok_or(CryptoError::Malformed("version"))?;
        let root = kms
            .unwrap_dek(
                DekContext {
                    tenant,
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
        let key = Arc::new(IndexKey::from_slice(
            key_version,
            &derived[..INDEX_KEY_LEN],
        )?);
        self.keys
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(tenant.clone(), key.clone());
        Ok(key)
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
    pub async fn document(
        &self,
        message: &StoredMessage,
        indexer: &Indexer<'_>,
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
            fields: vec![
                indexer.index_text(Field::Subject, &subject),
                indexer.index_text(Field::From, &from),
                indexer.index_text(Field::To, &recipients),
                indexer.index_text(Field::Body, &body),
                indexer.index_text(Field::AttachmentName, &attachment_names.join("\n")),
            ],
        })
    }

    /// Indexes up to `batch` messages whose marker is set and clears their markers; returns
    /// how many were handled (0 when nothing is pending). Messages deleted meanwhile are
    /// skipped.
    pub async fn index_pending(
        &self,
        tenant: &TenantId,
        batch: u32,
    ) -> Result<usize, ServiceError> {
        let store = self.keyring.store().clone();
        let ids = store.pending_index(tenant, batch).await?;
        if ids.is_empty() {
            return Ok(0);
        }
        let key = match self.mode {
            Mode::Blind => Some(self.index_key(tenant).await?),
            Mode::Plaintext => None,
        };
        let indexer = match &key {
            Some(k) => Indexer::Blind(k),
            None => Indexer::Plaintext,
        };
        let mut docs = Vec::with_capacity(ids.len());
        for id in &ids {
            if let Some(message) = store.get_message(tenant, id).await? {
                docs.push(self.document(&message, &indexer).await?);
            }
        }
        self.index.index(tenant, docs).await?;
        self.index.flush(tenant).await?;
        store.mark_indexed(tenant, &ids).await?;
        Ok(ids.len())
    }

    /// Indexes everything pending, calling `progress(pending, total)` after each batch.
    pub async fn index_all_pending(
        &self,
        tenant: &TenantId,
        batch: u32,
        mut progress: impl FnMut(u64, u64),
    ) -> Result<u64, ServiceError> {
        let mut done = 0u64;
        loop {
            let n = self.index_pending(tenant, batch).await?;
            if n == 0 {
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
        let key = match self.mode {
            Mode::Blind => Some(self.index_key(tenant).await?),
            Mode::Plaintext => None,
        };
        let indexer = match &key {
            Some(k) => Indexer::Blind(k),
            None => Indexer::Plaintext,
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
            // Re-check against the store: deleted meanwhile, or moved out of reach.
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
