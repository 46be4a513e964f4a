//! Database of record.
//!
//! One trait, [`Store`], with two implementations sharing the same SQL: PostgreSQL
//! (production) and SQLite (the embedded default). Migrations are embedded in the binary.
//!
//! Only ids, Gmail ids, timestamps, sizes and flags are stored in the clear. Everything that
//! came from a message (subject, addresses, bodies, snippet, attachment names, types and
//! bytes) arrives here already sealed ([`SealedField`]) and is stored as such.

pub mod control;
mod sql;

pub use control::{
    ApplyOutcome, ChangeEvent, ChangeFeed, ControlChange, ControlKind, ControlMeta,
    ControlObjectRecord, DeletionPolicy, GrantRecord, GrantRole, GrantSpec, InboxSettings,
    InboxSpec, InboxSyncStatus, InboxWatch, Rejection, RetentionPolicyRecord, RetentionSpec,
    SubjectKind, TenantSettings, TenantSpec, TenantState, Visibility, WatchError,
};
pub use sql::{PgStore, SqliteStore};

use async_trait::async_trait;

use crate::crypto::{DekVersion, SealedField};
use crate::ids::TenantId;

/// A store failure. Messages never include sealed bytes, addresses or other content.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database could not be reached or the connection broke; try again later.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// A row the call refers to does not exist.
    #[error("{0} not found")]
    NotFound(&'static str),
    /// A uniqueness or compare-and-swap condition failed.
    #[error("conflict: {0}")]
    Conflict(&'static str),
    /// Stored data is not what this version of the code can read.
    #[error("corrupt row in {table}: {reason}")]
    Corrupt {
        table: &'static str,
        reason: &'static str,
    },
    /// Any other database error (the message is the driver's, which holds no row data).
    #[error("database error during {op}: {message}")]
    Database { op: &'static str, message: String },
    /// Applying embedded migrations failed.
    #[error("database migration failed: {0}")]
    Migration(String),
}

impl StoreError {
    /// Whether the same call may succeed later.
    pub fn is_retryable(&self) -> bool {
        matches!(self, StoreError::Unavailable(_))
    }
}

/// Milliseconds since the Unix epoch, UTC.
pub type UnixMillis = i64;

/// The current time in [`UnixMillis`].
pub fn now_ms() -> UnixMillis {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(since.as_millis()).unwrap_or(i64::MAX)
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewTenant {
    pub id: TenantId,
    /// Human-readable name from the Tenant resource (configuration, not mail content).
    pub display_name: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantRecord {
    pub id: TenantId,
    pub display_name: String,
    pub created_at_ms: UnixMillis,
}

/// One version of a tenant's DEK, as stored: wrapped by the KMS, never in plaintext.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyVersionRecord {
    pub tenant_id: TenantId,
    pub version: DekVersion,
    /// The KMS's wrapped form of the DEK (`vault:vN:...`).
    pub wrapped_dek: String,
    /// Name of the tenant's key-encryption key in the KMS.
    pub kms_key_ref: String,
    /// Seals counted against this version. Reserved in blocks, so it is an upper bound of
    /// the seals really made: never below the true count, even after a crash.
    pub seal_count: u64,
    /// Retired for writes (rotated away or seal bound reached); still opens old values.
    pub retired: bool,
    pub created_at_ms: UnixMillis,
}

/// One version of a tenant's search index key: the scheme its index terms are made with
/// (see [`crate::search::service`]). In blind mode it holds the key, wrapped by the KMS; in
/// plaintext mode there is no key and `wrapped_key` and `kms_key_ref` are empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexKeyRecord {
    pub tenant_id: TenantId,
    pub version: u32,
    /// The KMS's wrapped form (`vault:vN:...`); empty in plaintext mode.
    pub wrapped_key: String,
    pub kms_key_ref: String,
    pub created_at_ms: UnixMillis,
    pub state: IndexKeyState,
    /// The folding rules (`search::Normalization`) of the version's terms and queries.
    pub normalization: u32,
    /// Blind tokens under the key, or the folded words themselves.
    pub mode: crate::search::Mode,
}

/// Where an index key version is in its life (see migration `0003_index_key_rotation`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum IndexKeyState {
    /// Created by a rotation: terms are blinded under it as well as under the active key
    /// while the tenant is re-indexed. Never used for queries.
    Building,
    /// Queries are blinded under it. At most one per tenant.
    Active,
    /// Replaced by a newer version; used for nothing.
    Retired,
}

impl IndexKeyState {
    pub fn as_str(self) -> &'static str {
        match self {
            IndexKeyState::Building => "building",
            IndexKeyState::Active => "active",
            IndexKeyState::Retired => "retired",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "building" => Some(IndexKeyState::Building),
            "active" => Some(IndexKeyState::Active),
            "retired" => Some(IndexKeyState::Retired),
            _ => None,
        }
    }
}

/// The index key versions an indexer blinded a batch under: the active one and, during a
/// rotation, the building one. Markers are cleared only while the store still has exactly
/// these, so a batch prepared before a rotation started (or switched) is indexed again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct IndexKeySet {
    pub active: Option<u32>,
    pub building: Option<u32>,
}

/// Result of asking for a block of seals on one DEK version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SealReservation {
    /// This many seals (1..=requested) may be made under the version.
    Granted(u64),
    /// The version reached the bound (now marked retired) or was already retired.
    Exhausted,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewInbox {
    /// Record id (UUID).
    pub id: String,
    pub tenant_id: TenantId,
    /// The shared mailbox's address: configuration from the Inbox resource, used to route
    /// push notifications. Not message content.
    pub address: String,
    pub connected_at_ms: UnixMillis,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboxRecord {
    pub id: String,
    pub tenant_id: TenantId,
    pub address: String,
    /// Gmail history high-water mark: the highest history id fully processed.
    pub history_id: Option<u64>,
    /// `connected`, `needs_reconnect` or `disconnected`.
    pub status: String,
    /// The Google refresh token, sealed (field `inbox.refresh_token`, record = inbox id).
    pub refresh_token: Option<SealedField>,
    pub connected_at_ms: UnixMillis,
    pub created_at_ms: UnixMillis,
}

/// Sealed content of a message. Each field is sealed with record id = message id and the
/// field name given by [`MessageFields::FIELD_NAMES`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageFields {
    pub subject: SealedField,
    pub from_addr: SealedField,
    pub to_addrs: SealedField,
    pub cc_addrs: SealedField,
    pub reply_to: SealedField,
    pub text_body: SealedField,
    pub html_body: SealedField,
    pub snippet: SealedField,
}

impl MessageFields {
    /// Field names used as associated data, in struct order.
    pub const FIELD_NAMES: [&'static str; 8] = [
        "message.subject",
        "message.from",
        "message.to",
        "message.cc",
        "message.reply_to",
        "message.text_body",
        "message.html_body",
        "message.snippet",
    ];
}

/// A sealed attachment. Sealed with record id = attachment id and the field names in
/// [`NewAttachment::FIELD_NAMES`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewAttachment {
    pub id: String,
    /// Position in the message, from 0.
    pub ordinal: u32,
    pub name: SealedField,
    pub content_type: SealedField,
    pub content_id: SealedField,
    pub data: SealedField,
    /// Size of the plaintext bytes.
    pub size_bytes: u64,
    pub inline: bool,
}

impl NewAttachment {
    pub const FIELD_NAMES: [&'static str; 4] = [
        "attachment.name",
        "attachment.content_type",
        "attachment.content_id",
        "attachment.data",
    ];
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewMessage {
    /// Record id (UUID).
    pub id: String,
    pub tenant_id: TenantId,
    pub inbox_id: String,
    pub gmail_message_id: String,
    pub gmail_thread_id: String,
    pub gmail_history_id: Option<u64>,
    /// Gmail's `internalDate`.
    pub internal_date_ms: UnixMillis,
    /// Size of the raw RFC 822 message.
    pub size_bytes: u64,
    pub fields: MessageFields,
    pub attachments: Vec<NewAttachment>,
}

/// An attachment as a message carries it: its metadata, without its bytes (which can be
/// megabytes; [`Store::get_attachment_data`] reads them when they are asked for).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredAttachment {
    pub id: String,
    pub message_id: String,
    pub ordinal: u32,
    pub name: SealedField,
    pub content_type: SealedField,
    pub content_id: SealedField,
    pub size_bytes: u64,
    pub inline: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMessage {
    pub id: String,
    pub tenant_id: TenantId,
    pub inbox_id: String,
    pub conversation_id: String,
    pub gmail_message_id: String,
    pub gmail_thread_id: String,
    pub gmail_history_id: Option<u64>,
    pub internal_date_ms: UnixMillis,
    pub size_bytes: u64,
    pub has_attachments: bool,
    pub fields: MessageFields,
    pub attachments: Vec<StoredAttachment>,
    pub created_at_ms: UnixMillis,
}

/// Outcome of [`Store::insert_message`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InsertOutcome {
    /// Stored, in the conversation with this id.
    Inserted { conversation_id: String },
    /// A message with the same (inbox, Gmail message id) exists; nothing was written.
    AlreadyStored { message_id: String },
}

/// An entry of the audit trail. Holds ids and verbs, never content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEvent {
    pub tenant_id: TenantId,
    /// Who acted: `cli`, `operator`, `sync`, or an agent id.
    pub actor: String,
    /// What happened, e.g. `keys.rotate_dek`, `message.delete`.
    pub action: String,
    /// What it happened to: `message`, `tenant_key`, ...
    pub target_kind: String,
    pub target_id: String,
    pub at_ms: UnixMillis,
}

/// A sync job to record for an inbox (from a push notification).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewSyncJob {
    pub id: String,
    pub tenant_id: TenantId,
    pub inbox_id: String,
    /// The Pub/Sub `messageId`: a redelivery maps to the same job.
    pub pubsub_message_id: Option<String>,
    /// The notification's Gmail `historyId`.
    pub history_id: u64,
}

/// Outcome of [`Store::enqueue_sync_job`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnqueueOutcome {
    /// The job is durably recorded.
    Enqueued,
    /// The history id is not above the inbox's high-water mark: nothing to do.
    Replay,
    /// A job with the same Pub/Sub message id exists.
    Duplicate,
}

/// A claimed sync job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncJob {
    pub id: String,
    pub tenant_id: TenantId,
    pub inbox_id: String,
    pub history_id: u64,
    /// Claims so far, this one included.
    pub attempts: u32,
}

/// Connection state of an inbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InboxStatus {
    Connected,
    /// Google refused the refresh token (`invalid_grant`): a person must reconnect.
    NeedsReconnect,
    Disconnected,
}

impl InboxStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            InboxStatus::Connected => "connected",
            InboxStatus::NeedsReconnect => "needs_reconnect",
            InboxStatus::Disconnected => "disconnected",
        }
    }

    /// The status for a stored word.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "connected" => Some(InboxStatus::Connected),
            "needs_reconnect" => Some(InboxStatus::NeedsReconnect),
            "disconnected" => Some(InboxStatus::Disconnected),
            _ => None,
        }
    }
}

/// Why mail was soft-deleted: one word, stored in `messages.deleted_reason`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DeleteReason {
    /// A person (an agent, or an operator at the CLI) deleted it.
    User,
    /// The tenant's retention policy (`delete_after_days`) deleted it.
    Retention,
    /// Its inbox (the Inbox resource) was deleted.
    InboxDeleted,
}

impl DeleteReason {
    /// The stored word.
    pub fn as_str(self) -> &'static str {
        match self {
            DeleteReason::User => "user",
            DeleteReason::Retention => "retention",
            DeleteReason::InboxDeleted => "inbox_deleted",
        }
    }

    /// Reads a stored word.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "user" => Some(DeleteReason::User),
            "retention" => Some(DeleteReason::Retention),
            "inbox_deleted" => Some(DeleteReason::InboxDeleted),
            _ => None,
        }
    }
}

/// Who soft-deletes (or restores) mail, why, and when. Ids and words only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deletion {
    /// `cli`, `operator`, `retention` or an agent id (never an address).
    pub actor: String,
    pub reason: DeleteReason,
    /// The time of the deletion; the grace period counts from here.
    pub at_ms: UnixMillis,
}

/// Outcome of a restore.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct RestoreOutcome {
    /// Messages made live again (and marked for indexing).
    pub restored: u64,
    /// Soft-deleted messages left as they are: deleted at or before the grace cutoff, so
    /// they wait for the purge.
    pub expired: u64,
}

/// A soft-deleted message as the purge scan sees it (ids and times only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PurgeCandidate {
    pub message_id: String,
    pub conversation_id: String,
    pub inbox_id: String,
    pub deleted_at_ms: UnixMillis,
    /// The index marker: set when the message may still be in the search index (its
    /// removal from the index has not been confirmed).
    pub index_pending: bool,
}

/// A conversation with live mail, as the `delete_after_days` scan sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConversationAge {
    pub conversation_id: String,
    pub inbox_id: String,
    /// Date of its newest message (soft-deleted ones included).
    pub last_message_at_ms: UnixMillis,
}

/// Outcome of [`Store::purge_messages`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct PurgeOutcome {
    /// Messages removed for good (with their attachments).
    pub messages: u64,
    /// Conversations removed because their last message went.
    pub conversations: u64,
}

/// Sealed field name of an inbox's Google refresh token (record id = inbox id).
pub const REFRESH_TOKEN_FIELD: &str = "inbox.refresh_token";

/// Database of record.
///
/// Every method is atomic: it either applies all of its writes or none of them.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// `postgres` or `sqlite`.
    fn backend(&self) -> &'static str;

    // --- tenants ---------------------------------------------------------------------

    /// Creates a tenant; [`StoreError::Conflict`] if the id exists.
    async fn create_tenant(&self, tenant: &NewTenant) -> Result<TenantRecord, StoreError>;
    async fn get_tenant(&self, id: &TenantId) -> Result<Option<TenantRecord>, StoreError>;
    async fn list_tenants(&self) -> Result<Vec<TenantRecord>, StoreError>;

    // --- tenant key versions -----------------------------------------------------------

    /// Inserts a new DEK version and, in the same transaction, retires every older
    /// version for writes. [`StoreError::Conflict`] if the version exists (another process
    /// rotated first); nothing is written then.
    async fn insert_key_version(&self, key: &KeyVersionRecord) -> Result<(), StoreError>;
    async fn get_key_version(
        &self,
        tenant: &TenantId,
        version: DekVersion,
    ) -> Result<Option<KeyVersionRecord>, StoreError>;
    /// All versions of a tenant, oldest first.
    async fn list_key_versions(
        &self,
        tenant: &TenantId,
    ) -> Result<Vec<KeyVersionRecord>, StoreError>;
    /// The newest version not retired for writes.
    async fn current_key_version(
        &self,
        tenant: &TenantId,
    ) -> Result<Option<KeyVersionRecord>, StoreError>;
    /// Atomically adds up to `wanted` seals to the version's count without passing `bound`.
    /// When nothing is left (or the version is retired), marks it retired and answers
    /// [`SealReservation::Exhausted`].
    async fn reserve_seals(
        &self,
        tenant: &TenantId,
        version: DekVersion,
        wanted: u64,
        bound: u64,
    ) -> Result<SealReservation, StoreError>;
    /// Replaces a wrapped DEK if it still equals `old` (compare-and-swap); returns whether
    /// it was replaced.
    async fn replace_wrapped_dek(
        &self,
        tenant: &TenantId,
        version: DekVersion,
        old: &str,
        new: &str,
    ) -> Result<bool, StoreError>;

    // --- inboxes -----------------------------------------------------------------------

    /// Creates an inbox; [`StoreError::Conflict`] if the id or (tenant, address) exists,
    /// [`StoreError::NotFound`] if the tenant does not exist.
    async fn create_inbox(&self, inbox: &NewInbox) -> Result<InboxRecord, StoreError>;
    async fn get_inbox(&self, id: &str) -> Result<Option<InboxRecord>, StoreError>;
    async fn list_inboxes(&self, tenant: &TenantId) -> Result<Vec<InboxRecord>, StoreError>;

    // --- messages ----------------------------------------------------------------------

    /// Stores a message with its attachments in one transaction, creating or updating its
    /// conversation (by inbox and Gmail thread id). Idempotent by (inbox, Gmail message
    /// id). [`StoreError::NotFound`] if the inbox does not exist for the tenant.
    async fn insert_message(&self, message: &NewMessage) -> Result<InsertOutcome, StoreError>;
    /// A live message; `None` for an unknown or soft-deleted one.
    async fn get_message(
        &self,
        tenant: &TenantId,
        id: &str,
    ) -> Result<Option<StoredMessage>, StoreError>;
    /// The sealed bytes of attachment `ordinal` of a live message; `None` for an unknown
    /// ordinal or an unknown or soft-deleted message.
    async fn get_attachment_data(
        &self,
        tenant: &TenantId,
        message_id: &str,
        ordinal: u32,
    ) -> Result<Option<SealedField>, StoreError>;
    /// Ids of a tenant's live messages in an inbox, newest first (soft-deleted ones are
    /// not listed).
    async fn list_message_ids(
        &self,
        tenant: &TenantId,
        inbox_id: &str,
        limit: u32,
    ) -> Result<Vec<String>, StoreError>;
    /// Removes a message and its attachments for good (ciphertext, nonce and key version
    /// with them) and removes its conversation if it was the last message there.
    /// Returns whether a message was removed.
    async fn delete_message(&self, tenant: &TenantId, id: &str) -> Result<bool, StoreError>;

    // --- lifecycle (soft delete, restore, purge; see [`crate::lifecycle`]) ---------------
    //
    // Every method is one transaction, idempotent (a repeat changes nothing), and appends an
    // `audit_events` row (ids and verbs) for what it changed. A soft delete sets the index
    // marker of what it deleted: the indexer removes such messages from the index (the
    // repair path) until [`Store::mark_removed_from_index`] confirms it.

    /// Soft-deletes one live message. Returns whether it changed (false: already
    /// soft-deleted, and its deletion time stays); [`StoreError::NotFound`] if the tenant
    /// has no such message.
    async fn soft_delete_message(
        &self,
        tenant: &TenantId,
        id: &str,
        deletion: &Deletion,
    ) -> Result<bool, StoreError>;
    /// Soft-deletes every live message of a conversation; returns their ids (empty when all
    /// were soft-deleted already). [`StoreError::NotFound`] if the tenant has no such
    /// conversation.
    async fn soft_delete_conversation(
        &self,
        tenant: &TenantId,
        conversation_id: &str,
        deletion: &Deletion,
    ) -> Result<Vec<String>, StoreError>;
    /// Soft-deletes every live message of an inbox and marks the inbox deleted, so that
    /// mail stored into it later arrives soft-deleted; returns the ids soft-deleted now.
    /// [`StoreError::NotFound`] if the tenant has no such inbox.
    async fn soft_delete_inbox(
        &self,
        tenant: &TenantId,
        inbox_id: &str,
        deletion: &Deletion,
    ) -> Result<Vec<String>, StoreError>;
    /// Makes a soft-deleted message live again and marks it for indexing, if it was deleted
    /// after `not_before_ms` (the grace cutoff: `now - grace period`). `NotFound` if the
    /// tenant has no such message, `Conflict` if its inbox is deleted.
    async fn restore_message(
        &self,
        tenant: &TenantId,
        id: &str,
        actor: &str,
        not_before_ms: UnixMillis,
        now_ms: UnixMillis,
    ) -> Result<RestoreOutcome, StoreError>;
    /// Restores every message of a conversation soft-deleted after `not_before_ms` (see
    /// [`Store::restore_message`]).
    async fn restore_conversation(
        &self,
        tenant: &TenantId,
        conversation_id: &str,
        actor: &str,
        not_before_ms: UnixMillis,
        now_ms: UnixMillis,
    ) -> Result<RestoreOutcome, StoreError>;
    /// Up to `limit` soft-deleted messages of the tenant deleted at or before
    /// `deleted_before_ms`, in id order after `after_id` (for resumable batches).
    async fn list_purge_candidates(
        &self,
        tenant: &TenantId,
        deleted_before_ms: UnixMillis,
        after_id: Option<&str>,
        limit: u32,
    ) -> Result<Vec<PurgeCandidate>, StoreError>;
    /// Removes for good these messages (their attachments, and a conversation they empty),
    /// each only if it is still soft-deleted at or before `deleted_before_ms` (a message
    /// restored meanwhile stays). Appends a `message.purge` audit row per message.
    async fn purge_messages(
        &self,
        tenant: &TenantId,
        ids: &[String],
        deleted_before_ms: UnixMillis,
        actor: &str,
        now_ms: UnixMillis,
    ) -> Result<PurgeOutcome, StoreError>;
    /// Up to `limit` conversations of the tenant with live mail whose newest message is
    /// older than `before_ms`, in id order after `after_id`.
    async fn list_conversations_older_than(
        &self,
        tenant: &TenantId,
        before_ms: UnixMillis,
        after_id: Option<&str>,
        limit: u32,
    ) -> Result<Vec<ConversationAge>, StoreError>;
    /// Clears the index marker of these messages if they are soft-deleted (the caller
    /// removed them from the index); live or unknown ids are left alone.
    async fn mark_removed_from_index(
        &self,
        tenant: &TenantId,
        ids: &[String],
    ) -> Result<(), StoreError>;

    // --- push and sync ---------------------------------------------------------------

    /// Every inbox, of any tenant, with this Gmail address (push notifications name only
    /// the address).
    async fn find_inboxes_by_address(&self, address: &str) -> Result<Vec<InboxRecord>, StoreError>;
    /// Durably records a sync job unless it is a replay (history id not above the inbox's
    /// high-water mark) or a duplicate (same Pub/Sub message id). [`StoreError::NotFound`]
    /// if the inbox does not exist for the tenant.
    async fn enqueue_sync_job(&self, job: &NewSyncJob) -> Result<EnqueueOutcome, StoreError>;
    /// Claims up to `limit` jobs of the tenant that are due (pending and available, or
    /// running under an expired lease), marking them running at `now_ms`. Concurrent
    /// workers never claim the same job (PostgreSQL: `FOR UPDATE SKIP LOCKED`; SQLite:
    /// one writer at a time).
    async fn claim_sync_jobs(
        &self,
        tenant: &TenantId,
        limit: u32,
        now_ms: UnixMillis,
        lease_ms: i64,
    ) -> Result<Vec<SyncJob>, StoreError>;
    /// Marks jobs done.
    async fn complete_sync_jobs(&self, ids: &[String]) -> Result<(), StoreError>;
    /// Returns jobs to pending, due at `available_at_ms`, recording a short error kind
    /// (a fixed word such as `kms_unavailable`, never content).
    async fn retry_sync_jobs(
        &self,
        ids: &[String],
        available_at_ms: UnixMillis,
        error_kind: &str,
    ) -> Result<(), StoreError>;
    /// Marks jobs failed for good (e.g. the inbox needs reconnecting).
    async fn fail_sync_jobs(&self, ids: &[String], error_kind: &str) -> Result<(), StoreError>;
    /// Stores synced messages and advances the inbox's high-water mark to
    /// `max(stored, history_id)` in one transaction; with a mark it also records now as
    /// the inbox's last sync time. Messages already stored (same inbox
    /// and Gmail id) are skipped. [`StoreError::Conflict`] if a concurrent writer stored
    /// one of them meanwhile: nothing is written then, and a retry skips it.
    async fn store_synced_messages(
        &self,
        tenant: &TenantId,
        inbox_id: &str,
        messages: &[NewMessage],
        history_id: Option<u64>,
    ) -> Result<Vec<InsertOutcome>, StoreError>;
    /// Which of these Gmail message ids are already stored for the inbox.
    async fn stored_gmail_ids(
        &self,
        inbox_id: &str,
        gmail_ids: &[String],
    ) -> Result<Vec<String>, StoreError>;
    /// Newest `internal_date_ms` of the inbox's stored messages.
    async fn latest_message_date(&self, inbox_id: &str) -> Result<Option<UnixMillis>, StoreError>;
    async fn set_inbox_status(&self, inbox_id: &str, status: InboxStatus)
    -> Result<(), StoreError>;
    /// Stores a sealed refresh token (connecting or reconnecting the inbox).
    async fn set_refresh_token(
        &self,
        inbox_id: &str,
        token: &SealedField,
    ) -> Result<(), StoreError>;
    /// Replaces the sealed refresh token if it still equals `old` (compare-and-swap, so
    /// there is never a moment with none stored); returns whether it was replaced.
    async fn replace_refresh_token(
        &self,
        inbox_id: &str,
        old: &SealedField,
        new: &SealedField,
    ) -> Result<bool, StoreError>;

    // --- audit -----------------------------------------------------------------------

    // --- search --------------------------------------------------------------------------

    /// Stores the tenant's first index key version (state `active`); `Conflict` when the
    /// version exists or the tenant already has an active key.
    async fn insert_index_key(&self, key: &IndexKeyRecord) -> Result<(), StoreError>;
    /// The tenant's active index key version (the one queries use).
    async fn current_index_key(
        &self,
        tenant: &TenantId,
    ) -> Result<Option<IndexKeyRecord>, StoreError>;
    /// Every index key version of the tenant, oldest first.
    async fn list_index_keys(&self, tenant: &TenantId) -> Result<Vec<IndexKeyRecord>, StoreError>;
    /// Starts an index-key rotation: stores `key` (state `building`) and sets the index marker
    /// of every message of the tenant, in one transaction. `Conflict` when a rotation is
    /// already in progress or the version exists. Returns how many messages were marked.
    async fn start_index_key_rotation(&self, key: &IndexKeyRecord) -> Result<u64, StoreError>;
    /// Finishes a rotation when every message has been indexed under the building key:
    /// in one transaction, the active version becomes `retired`, `building` becomes
    /// `active`, and every message is marked again (so the retired key's terms leave the
    /// index). Returns false, changing nothing, when `building` is not the tenant's
    /// building version or some message is still pending.
    async fn finish_index_key_rotation(
        &self,
        tenant: &TenantId,
        building: u32,
    ) -> Result<bool, StoreError>;
    /// Replaces the wrapped form of a blind index-key version after a KEK rotation, if it is
    /// still `old` (compare-and-swap, as [`Store::replace_wrapped_dek`]).
    async fn replace_wrapped_index_key(
        &self,
        tenant: &TenantId,
        version: u32,
        old: &str,
        new: &str,
    ) -> Result<bool, StoreError>;
    /// Whether a version retired by [`Store::finish_index_key_rotation`] may still have terms
    /// in the index: the second pass has not been seen finished, or the index not compacted
    /// since. False while any message of the tenant is pending (the pass is not done).
    async fn retired_index_terms_left(&self, tenant: &TenantId) -> Result<bool, StoreError>;
    /// Records that the retired versions' terms are gone from the index (after the second
    /// pass and a compaction).
    async fn clear_retired_index_terms(&self, tenant: &TenantId) -> Result<(), StoreError>;
    /// Up to `limit` ids of the tenant's messages whose index marker is set, in id order.
    async fn pending_index(
        &self,
        tenant: &TenantId,
        limit: u32,
    ) -> Result<Vec<String>, StoreError> {
        self.pending_index_after(tenant, "", limit).await
    }
    /// [`Store::pending_index`] for ids greater than `after` (`""`: from the start).
    async fn pending_index_after(
        &self,
        tenant: &TenantId,
        after: &str,
        limit: u32,
    ) -> Result<Vec<String>, StoreError>;
    /// Clears the index marker of these live messages (ids of other tenants and soft-deleted
    /// messages are ignored: their marker stays for the indexer to remove them), if the
    /// tenant's active and building index key versions are still `keys` (`None`: no check). Returns false, clearing nothing, when they changed meanwhile.
    async fn mark_indexed(
        &self,
        tenant: &TenantId,
        ids: &[String],
        keys: Option<IndexKeySet>,
    ) -> Result<bool, StoreError>;
    /// Sets the index marker of every message of the tenant (reindex); returns how many.
    async fn mark_all_for_reindex(&self, tenant: &TenantId) -> Result<u64, StoreError>;
    /// (messages with the marker set, all messages) of the tenant.
    async fn index_progress(&self, tenant: &TenantId) -> Result<(u64, u64), StoreError>;

    async fn append_audit_event(&self, event: &AuditEvent) -> Result<(), StoreError>;
    /// A tenant's audit events, oldest first.
    async fn list_audit_events(
        &self,
        tenant: &TenantId,
        limit: u32,
    ) -> Result<Vec<AuditEvent>, StoreError>;

    // --- search tombstones -------------------------------------------------------------

    /// Records a search tombstone (see [`SearchTombstone`]); `Conflict` if the id exists.
    async fn add_search_tombstone(&self, tombstone: &SearchTombstone) -> Result<(), StoreError>;
    /// Records the opstamp of the backend's delete task for a tombstone; returns whether the
    /// tombstone (of this tenant) exists.
    async fn set_search_tombstone_opstamp(
        &self,
        tenant: &TenantId,
        id: &str,
        opstamp: u64,
    ) -> Result<bool, StoreError>;
    /// Every tombstone of the tenant still in force, oldest first.
    async fn list_search_tombstones(
        &self,
        tenant: &TenantId,
    ) -> Result<Vec<SearchTombstone>, StoreError>;
    /// Removes the tenant's tombstones whose delete task has an opstamp of at most
    /// `applied_through` (the backend applied every such task everywhere); returns how many.
    /// Tombstones without a delete task yet are kept.
    async fn remove_applied_search_tombstones(
        &self,
        tenant: &TenantId,
        applied_through: u64,
    ) -> Result<u64, StoreError>;
    /// The tenants that have tombstones, in id order (the reaper's work list).
    async fn search_tombstone_tenants(&self) -> Result<Vec<TenantId>, StoreError>;

    // --- control API (see [`control`]) ----------------------------------------------------
    //
    // Every apply/delete judges the object's generation and writes in ONE transaction:
    // `AlreadyCurrent`, `Stale` and `Rejected` write nothing; `Applied` also appends the
    // change to the change feed ([`Store::subscribe_changes`]).

    /// What the store recorded of a Kubernetes object.
    async fn control_object(
        &self,
        kind: ControlKind,
        namespace: &str,
        name: &str,
    ) -> Result<Option<ControlObjectRecord>, StoreError>;
    /// Applies a Tenant (id = `meta.name`): display name and settings; a stopped tenant
    /// becomes active again with its managed inboxes. The tenant must exist already
    /// (provisioned with its keys): `Rejected(UnknownTenant)` otherwise.
    async fn apply_tenant(
        &self,
        meta: &ControlMeta,
        spec: &TenantSpec,
    ) -> Result<ApplyOutcome, StoreError>;
    /// Deletes a Tenant. `Retain`: the tenant is stopped and its inboxes disconnected, data
    /// kept. `Shred`: every row of the tenant is deleted (the audit trail stays) and the
    /// records of its inboxes, grants and policy are forgotten; the caller destroys its KMS
    /// key and search index first.
    async fn delete_tenant(
        &self,
        meta: &ControlMeta,
        policy: DeletionPolicy,
    ) -> Result<ApplyOutcome, StoreError>;
    /// Applies an Inbox: maps the object to the tenant's inbox with this address (created
    /// if missing, reconnected if disconnected) and stores its access settings. Tenant and
    /// address may not change once applied.
    async fn apply_inbox(
        &self,
        meta: &ControlMeta,
        spec: &InboxSpec,
    ) -> Result<ApplyOutcome, StoreError>;
    /// Deletes an Inbox: removes its grants and mapping, marks the inbox disconnected and
    /// deleted, and soft-deletes its mail (reason `inbox_deleted`; the caller removes it
    /// from the search index, see [`Store::soft_delete_inbox`]). The purge job removes the
    /// mail for good after the grace period.
    async fn delete_inbox(&self, meta: &ControlMeta) -> Result<ApplyOutcome, StoreError>;
    /// Applies an InboxGrant; the Inbox object (same namespace) must be applied.
    async fn apply_grant(
        &self,
        meta: &ControlMeta,
        spec: &GrantSpec,
    ) -> Result<ApplyOutcome, StoreError>;
    async fn delete_grant(&self, meta: &ControlMeta) -> Result<ApplyOutcome, StoreError>;
    /// Applies a RetentionPolicy (one per tenant).
    async fn apply_retention_policy(
        &self,
        meta: &ControlMeta,
        spec: &RetentionSpec,
    ) -> Result<ApplyOutcome, StoreError>;
    async fn delete_retention_policy(&self, meta: &ControlMeta)
    -> Result<ApplyOutcome, StoreError>;
    async fn tenant_settings(
        &self,
        tenant: &TenantId,
    ) -> Result<Option<TenantSettings>, StoreError>;
    /// The inbox an Inbox object manages.
    async fn inbox_settings(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Option<InboxSettings>, StoreError>;
    /// Connection and sync state of the inbox a live Inbox object manages; `None` when the
    /// object was never applied or was deleted.
    async fn inbox_sync_status(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Option<InboxSyncStatus>, StoreError>;
    /// The push audience an Inbox object names for the inbox; `None` when it names none or
    /// no Inbox object manages the inbox.
    async fn inbox_push_audience(&self, inbox_id: &str) -> Result<Option<String>, StoreError>;
    /// The Gmail push watches a tenant's sync worker keeps, by inbox id: every connected
    /// inbox (with a refresh token) that wants a watch or still has one, and every
    /// disconnected one that still has one (with no desired topic, so it is stopped).
    async fn inbox_watches(&self, tenant: &TenantId) -> Result<Vec<InboxWatch>, StoreError>;
    /// Records the outcome of a watch registration: `Ok(Some((topic, expires)))` a watch
    /// Gmail took (clears any error), `Ok(None)` a watch stopped, `Err(e)` a failure (the
    /// previous watch, if any, stays recorded). `NotFound` when the inbox does not exist.
    async fn record_inbox_watch(
        &self,
        inbox_id: &str,
        watch: Result<Option<(&str, UnixMillis)>, WatchError>,
    ) -> Result<(), StoreError>;
    async fn list_grants_for_inbox(&self, inbox_id: &str) -> Result<Vec<GrantRecord>, StoreError>;
    /// Grants of one agent or team of the tenant.
    async fn list_grants_for_subject(
        &self,
        tenant: &TenantId,
        kind: SubjectKind,
        name: &str,
    ) -> Result<Vec<GrantRecord>, StoreError>;
    async fn list_grants_for_tenant(
        &self,
        tenant: &TenantId,
    ) -> Result<Vec<GrantRecord>, StoreError>;
    async fn retention_policy(
        &self,
        tenant: &TenantId,
    ) -> Result<Option<RetentionPolicyRecord>, StoreError>;
    /// Up to `limit` entries of the change log after `after_seq`, oldest first.
    async fn control_changes_since(
        &self,
        after_seq: i64,
        limit: u32,
    ) -> Result<Vec<ControlChange>, StoreError>;
    /// Sequence number of the newest change (0 when none).
    async fn latest_control_seq(&self) -> Result<i64, StoreError>;
    /// Follows control changes made from now on by any process on this database
    /// (PostgreSQL: LISTEN/NOTIFY, with a periodic read of the log as a fallback; SQLite:
    /// the change counter polled every 100 ms).
    async fn subscribe_changes(&self) -> Result<ChangeFeed, StoreError>;

    // --- agent API reads (read-only; see [`crate::api`]) -------------------------------
    //
    // Added for the agent API. None of them writes; they change no other method.

    /// The access settings of every inbox of the tenant managed by an Inbox object, by
    /// inbox id order.
    async fn list_inbox_settings(
        &self,
        tenant: &TenantId,
    ) -> Result<Vec<InboxSettings>, StoreError>;
    /// Up to `limit` conversations of an inbox of the tenant, newest (`last_message_at_ms`,
    /// then id) first, strictly after `before` (the last entry of the previous page).
    async fn list_conversations(
        &self,
        tenant: &TenantId,
        inbox_id: &str,
        before: Option<&ConversationCursor>,
        limit: u32,
    ) -> Result<Vec<ConversationRecord>, StoreError>;
    /// One conversation of the tenant, while one of its messages is live (not
    /// soft-deleted).
    async fn get_conversation(
        &self,
        tenant: &TenantId,
        id: &str,
    ) -> Result<Option<ConversationRecord>, StoreError>;
    /// The inbox of a conversation of the tenant, whether or not its messages are
    /// soft-deleted (an access check before a restore).
    async fn conversation_inbox(
        &self,
        tenant: &TenantId,
        id: &str,
    ) -> Result<Option<String>, StoreError>;
    /// Ids of up to `limit` messages of a conversation of the tenant, oldest
    /// (`internal_date_ms`, then id) first, strictly after `after`.
    async fn list_conversation_message_ids(
        &self,
        tenant: &TenantId,
        conversation_id: &str,
        after: Option<&ConversationCursor>,
        limit: u32,
    ) -> Result<Vec<String>, StoreError>;

    // --- live events (see migration 0010 and `crate::api::events`) ----------------------

    /// Up to `limit` live events of the tenant with a sequence number above `after`, lowest
    /// first. A tenant's sequence numbers are 1, 2, 3, ... in commit order, so a reader
    /// that has seen n never sees a smaller one appear later.
    async fn mail_events_after(
        &self,
        tenant: &TenantId,
        after: i64,
        limit: u32,
    ) -> Result<Vec<MailEvent>, StoreError>;
    /// The tenant's newest event sequence number (0 when there is none): where a listener
    /// that wants only what happens from now on starts.
    async fn latest_mail_event(&self, tenant: &TenantId) -> Result<i64, StoreError>;
    /// Deletes the events recorded before `before_ms`; returns how many.
    async fn prune_mail_events(&self, before_ms: UnixMillis) -> Result<u64, StoreError>;
    /// Wake-ups whenever any process records live events, where the database can send
    /// them (PostgreSQL: `LISTEN`/`NOTIFY`, migration 0012); `None` where it cannot, and
    /// readers poll. Each call opens its own listening connection.
    async fn listen_mail_events(&self) -> Result<Option<Box<dyn MailEventListener>>, StoreError> {
        Ok(None)
    }
}

/// See [`Store::listen_mail_events`].
#[async_trait]
pub trait MailEventListener: Send {
    /// Waits for the next wake-up: `Some(tenant)` once a transaction that recorded events of
    /// the tenant has committed; `None` when wake-ups may have been missed (the connection
    /// was lost and is back), so every reader should read again. An error means the
    /// listener is lost; the caller listens again later.
    async fn next(&mut self) -> Result<Option<TenantId>, StoreError>;
}

/// How long live events are kept (`/v1/events` resumes within it).
pub const MAIL_EVENT_RETENTION_MS: UnixMillis = 3_600_000;

/// Deletes live events older than [`MAIL_EVENT_RETENTION_MS`] (the indexer's housekeeping
/// and the agent API both call it); returns how many.
pub async fn prune_expired_mail_events(store: &dyn Store) -> Result<u64, StoreError> {
    store
        .prune_mail_events(now_ms() - MAIL_EVENT_RETENTION_MS)
        .await
}

/// What a live event says happened (ids only, never content).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum MailEventKind {
    #[serde(rename = "message.stored")]
    MessageStored,
    #[serde(rename = "message.deleted")]
    MessageDeleted,
    #[serde(rename = "message.restored")]
    MessageRestored,
    #[serde(rename = "conversation.deleted")]
    ConversationDeleted,
    #[serde(rename = "conversation.restored")]
    ConversationRestored,
}

impl MailEventKind {
    pub const fn as_str(self) -> &'static str {
        match self {
            MailEventKind::MessageStored => "message.stored",
            MailEventKind::MessageDeleted => "message.deleted",
            MailEventKind::MessageRestored => "message.restored",
            MailEventKind::ConversationDeleted => "conversation.deleted",
            MailEventKind::ConversationRestored => "conversation.restored",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [
            MailEventKind::MessageStored,
            MailEventKind::MessageDeleted,
            MailEventKind::MessageRestored,
            MailEventKind::ConversationDeleted,
            MailEventKind::ConversationRestored,
        ]
        .into_iter()
        .find(|k| k.as_str() == s)
    }
}

/// One live event as stored.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct MailEvent {
    pub seq: i64,
    #[serde(rename = "type")]
    pub kind: MailEventKind,
    pub inbox_id: String,
    pub conversation_id: String,
    /// The message, for message events.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message_id: Option<String>,
    pub at_ms: UnixMillis,
}

/// A position in a list ordered by (date, id): the entry a page ended with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConversationCursor {
    pub date_ms: UnixMillis,
    pub id: String,
}

/// A conversation (Gmail thread) of an inbox, as stored: ids, counts and dates only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConversationRecord {
    pub id: String,
    pub tenant_id: TenantId,
    pub inbox_id: String,
    pub gmail_thread_id: String,
    /// Date of its newest message (Gmail's `internalDate`).
    pub last_message_at_ms: UnixMillis,
    /// Date of its oldest message.
    pub first_message_at_ms: Option<UnixMillis>,
    pub message_count: u64,
    /// Its newest message (by date, then id).
    pub latest_message_id: Option<String>,
}

/// Opens the store named by a database URL (`postgres://...` or `sqlite://...`) and
/// applies the embedded migrations.
pub async fn connect(url: &str) -> Result<std::sync::Arc<dyn Store>, StoreError> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(std::sync::Arc::new(PgStore::connect(url).await?))
    } else if url.starts_with("sqlite:") {
        Ok(std::sync::Arc::new(SqliteStore::connect(url).await?))
    } else {
        Err(StoreError::Database {
            op: "connect",
            message: "database url must start with postgres://, postgresql:// or sqlite:".into(),
        })
    }
}

/// What a search tombstone hides.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TombstoneScope {
    Message,
    Conversation,
    Inbox,
    Tenant,
}

impl TombstoneScope {
    pub fn as_str(self) -> &'static str {
        match self {
            TombstoneScope::Message => "message",
            TombstoneScope::Conversation => "conversation",
            TombstoneScope::Inbox => "inbox",
            TombstoneScope::Tenant => "tenant",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "message" => Some(TombstoneScope::Message),
            "conversation" => Some(TombstoneScope::Conversation),
            "inbox" => Some(TombstoneScope::Inbox),
            "tenant" => Some(TombstoneScope::Tenant),
            _ => None,
        }
    }
}

/// A deletion the search backend has not applied everywhere yet: every query excludes the
/// documents of `scope` / `scope_id` whose document version is at most `cutoff_version`
/// until the backend's delete task (`delete_opstamp`) has run. Ids only, never content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SearchTombstone {
    pub id: String,
    pub tenant_id: TenantId,
    pub scope: TombstoneScope,
    /// The message, conversation or inbox id; the tenant id for [`TombstoneScope::Tenant`].
    pub scope_id: String,
    /// Documents with a version at most this are hidden (re-indexed ones are not).
    pub cutoff_version: u64,
    /// The backend's delete task, once created.
    pub delete_opstamp: Option<u64>,
    pub created_at_ms: UnixMillis,
}
