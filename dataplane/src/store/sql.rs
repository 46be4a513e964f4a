//! PostgreSQL and SQLite implementations of [`Store`].
//!
//! The logic is written once, in the `sql_store!` macro, and instantiated for both
//! drivers. The SQL text is shared too (the constants below): both sqlx drivers accept
//! `$1`-style placeholders, and every statement sticks to the common subset of the two
//! dialects (`INSERT ... ON CONFLICT ... DO UPDATE ... RETURNING`, `TRUE`/`FALSE`,
//! `CASE`, `COALESCE`). The only differences are passed to the macro: the statements that
//! open a transaction.
//!
//! Unsigned 64-bit values are stored as signed `BIGINT`: values above `i64::MAX` are
//! refused on write, and negative values read back are reported as [`StoreError::Corrupt`].

use std::collections::{BTreeMap, HashMap};
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::Row;
use sqlx::postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions, PgRow};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
};

use super::{
    AuditEvent, ConversationAge, Deletion, EnqueueOutcome, InboxRecord, InboxStatus,
    IndexKeyRecord, IndexKeySet, IndexKeyState, InsertOutcome, KeyVersionRecord, MessageFields,
    NewInbox, NewMessage, NewSyncJob, NewTenant, SealReservation, Store, StoreError,
    StoredAttachment, StoredMessage, SyncJob, TenantRecord, UnixMillis, now_ms,
};
use super::{ConversationCursor, ConversationRecord, SearchTombstone, TombstoneScope};
use super::{
    MailEvent, MailEventKind, MailEventListener, PurgeCandidate, PurgeOutcome, RestoreOutcome,
};
use crate::crypto::{DekVersion, SealedField};
use crate::ids::TenantId;

mod control;

use super::control::{
    ApplyOutcome, ChangeFeed, ControlChange, ControlKind, ControlMeta, ControlObjectRecord,
    DeletionPolicy, GrantRecord, GrantSpec, InboxSettings, InboxSpec, InboxSyncStatus, InboxWatch,
    RetentionPolicyRecord, RetentionSpec, SubjectKind, TenantSettings, TenantSpec, Visibility,
    WatchError,
};

// --- PostgreSQL -------------------------------------------------------------------------

/// The PostgreSQL store (production).
#[derive(Clone)]
pub struct PgStore {
    pool: PgPool,
}

impl PgStore {
    /// Connects a pool to `url` (`postgres://...`) and applies the embedded migrations.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let options = PgConnectOptions::from_str(url).map_err(|_| StoreError::Database {
            op: "connect",
            message: "invalid postgres url".into(),
        })?;
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options)
            .await
            .map_err(db_err("connect"))?;
        let store = Self::from_pool(pool);
        store.migrate().await?;
        Ok(store)
    }

    /// Wraps an existing pool. Call [`PgStore::migrate`] before use on a fresh database.
    pub fn from_pool(pool: PgPool) -> Self {
        Self { pool }
    }

    /// Applies the embedded PostgreSQL migrations (serialized by an advisory lock).
    pub async fn migrate(&self) -> Result<(), StoreError> {
        sqlx::migrate!("migrations/postgres")
            .run(&self.pool)
            .await
            .map_err(map_migrate_error)
    }

    /// The connection pool (for tests and maintenance).
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }
}

/// The channel of live-event wake-ups; the payload is the tenant id (migration 0012).
const MAIL_EVENT_CHANNEL: &str = "helpr_mail_events";

impl PgStore {
    async fn listen_events(&self) -> Result<Option<Box<dyn MailEventListener>>, StoreError> {
        const OP: &str = "listen_mail_events";
        let mut listener = PgListener::connect_with(&self.pool)
            .await
            .map_err(db_err(OP))?;
        listener
            .listen(MAIL_EVENT_CHANNEL)
            .await
            .map_err(db_err(OP))?;
        Ok(Some(Box::new(PgEventListener(listener))))
    }
}

struct PgEventListener(PgListener);

#[async_trait]
impl MailEventListener for PgEventListener {
    async fn next(&mut self) -> Result<Option<TenantId>, StoreError> {
        // `try_recv` answers `None` once after a lost connection, and reconnects (listening
        // again) on the next call.
        match self
            .0
            .try_recv()
            .await
            .map_err(db_err("listen_mail_events"))?
        {
            // A payload that is not a tenant id cannot come from the trigger: read all.
            Some(n) => Ok(TenantId::new(n.payload()).ok()),
            None => Ok(None),
        }
    }
}

// --- SQLite -----------------------------------------------------------------------------

/// The SQLite store (embedded default).
#[derive(Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
}

impl SqliteStore {
    /// Opens (creating if missing) the database at `url`, e.g. `sqlite:///var/lib/helpr/db`,
    /// and applies the embedded migrations.
    ///
    /// Connections use WAL journaling, enforce foreign keys, wait up to 5 s for a lock,
    /// and run with `secure_delete = ON`, so that deleted ciphertext is overwritten rather
    /// than left in free pages.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::from_str(url)
            .map_err(|_| StoreError::Database {
                op: "connect",
                message: "invalid sqlite url".into(),
            })?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(5))
            .pragma("secure_delete", "ON");
        let in_memory = url.contains(":memory:") || url.contains("mode=memory");
        let pool_options = if in_memory {
            // An in-memory database lives as long as its connections: keep exactly one.
            SqlitePoolOptions::new()
                .max_connections(1)
                .min_connections(1)
                .idle_timeout(None)
                .max_lifetime(None)
        } else {
            SqlitePoolOptions::new().max_connections(8)
        };
        let pool = pool_options
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options)
            .await
            .map_err(db_err("connect"))?;
        let store = Self { pool };
        store.migrate().await?;
        Ok(store)
    }

    /// SQLite cannot tell other processes of a commit: readers poll.
    async fn listen_events(&self) -> Result<Option<Box<dyn MailEventListener>>, StoreError> {
        Ok(None)
    }

    /// Applies the embedded SQLite migrations.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        sqlx::migrate!("migrations/sqlite")
            .run(&self.pool)
            .await
            .map_err(map_migrate_error)
    }

    /// The connection pool (for tests and maintenance).
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }
}

// --- errors -----------------------------------------------------------------------------

/// Maps a driver error. The result never carries row data or the database URL: only the
/// driver's message, which for constraint errors names the constraint, not the values.
fn map_sqlx_error(op: &'static str, error: sqlx::Error) -> StoreError {
    use sqlx::Error as E;
    match error {
        E::Io(e) => StoreError::Unavailable(format!("{op}: i/o error: {e}")),
        E::Tls(_) => StoreError::Unavailable(format!("{op}: tls error")),
        E::Protocol(_) => StoreError::Unavailable(format!("{op}: protocol error")),
        E::PoolTimedOut => {
            StoreError::Unavailable(format!("{op}: timed out waiting for a connection"))
        }
        E::PoolClosed => StoreError::Unavailable(format!("{op}: connection pool closed")),
        E::WorkerCrashed => StoreError::Unavailable(format!("{op}: database worker crashed")),
        E::Configuration(_) => StoreError::Database {
            op,
            message: "invalid database configuration".into(),
        },
        E::Database(db) => {
            if is_transient(db.as_ref()) {
                StoreError::Unavailable(format!("{op}: {}", db.message()))
            } else {
                StoreError::Database {
                    op,
                    message: db.message().to_owned(),
                }
            }
        }
        E::ColumnDecode { .. } | E::Decode(_) | E::ColumnNotFound(_) | E::TypeNotFound { .. } => {
            StoreError::Database {
                op,
                message: "unexpected column type or value".into(),
            }
        }
        E::Migrate(e) => map_migrate_error(*e),
        _ => StoreError::Database {
            op,
            message: "unexpected driver error".into(),
        },
    }
}

/// Database errors that say nothing about the request: the server is going away, the
/// database is locked, or a transaction lost a race. Retrying may succeed.
fn is_transient(db: &dyn sqlx::error::DatabaseError) -> bool {
    let Some(code) = db.code() else {
        return false;
    };
    if db
        .try_downcast_ref::<sqlx::postgres::PgDatabaseError>()
        .is_some()
    {
        // Class 08: connection exception; 57P01-03: shutdown / cannot connect now;
        // 53300: too many connections; 40001 / 40P01: serialization failure / deadlock.
        code.starts_with("08")
            || matches!(
                code.as_ref(),
                "57P01" | "57P02" | "57P03" | "53300" | "40001" | "40P01"
            )
    } else {
        // SQLite extended result code; the primary code is the low byte.
        // 5: BUSY, 6: LOCKED, 10: IOERR, 14: CANTOPEN.
        code.parse::<i32>()
            .map(|c| matches!(c & 0xff, 5 | 6 | 10 | 14))
            .unwrap_or(false)
    }
}

fn map_migrate_error(error: sqlx::migrate::MigrateError) -> StoreError {
    use sqlx::migrate::MigrateError as M;
    match error {
        M::Execute(e) | M::ExecuteMigration(e, _) => match map_sqlx_error("migrate", e) {
            unavailable @ StoreError::Unavailable(_) => unavailable,
            other => StoreError::Migration(other.to_string()),
        },
        other => StoreError::Migration(other.to_string()),
    }
}

fn db_err(op: &'static str) -> impl FnOnce(sqlx::Error) -> StoreError {
    move |e| map_sqlx_error(op, e)
}

/// Like [`db_err`], but a unique violation becomes `Conflict(conflict)` and a foreign key
/// violation `NotFound(missing)`.
fn constraint_err(
    op: &'static str,
    conflict: &'static str,
    missing: &'static str,
) -> impl FnOnce(sqlx::Error) -> StoreError {
    move |e| {
        if let sqlx::Error::Database(db) = &e {
            match db.kind() {
                sqlx::error::ErrorKind::UniqueViolation => return StoreError::Conflict(conflict),
                sqlx::error::ErrorKind::ForeignKeyViolation => {
                    return StoreError::NotFound(missing);
                }
                _ => {}
            }
        }
        map_sqlx_error(op, e)
    }
}

fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.kind() == sqlx::error::ErrorKind::UniqueViolation)
}

// --- conversions ------------------------------------------------------------------------

fn to_i64(op: &'static str, value: u64, what: &'static str) -> Result<i64, StoreError> {
    i64::try_from(value).map_err(|_| StoreError::Database {
        op,
        message: format!("{what} does not fit in a signed 64-bit integer"),
    })
}

fn to_u64(table: &'static str, value: i64, reason: &'static str) -> Result<u64, StoreError> {
    u64::try_from(value).map_err(|_| StoreError::Corrupt { table, reason })
}

fn to_opt_u64(
    table: &'static str,
    value: Option<i64>,
    reason: &'static str,
) -> Result<Option<u64>, StoreError> {
    value.map(|v| to_u64(table, v, reason)).transpose()
}

fn to_u32(table: &'static str, value: i64, reason: &'static str) -> Result<u32, StoreError> {
    u32::try_from(value).map_err(|_| StoreError::Corrupt { table, reason })
}

fn to_version(table: &'static str, value: i64) -> Result<DekVersion, StoreError> {
    u32::try_from(value)
        .ok()
        .and_then(DekVersion::new)
        .ok_or(StoreError::Corrupt {
            table,
            reason: "key version out of range",
        })
}

fn to_tenant(table: &'static str, value: String) -> Result<TenantId, StoreError> {
    TenantId::new(value).map_err(|_| StoreError::Corrupt {
        table,
        reason: "invalid tenant id",
    })
}

fn to_sealed(table: &'static str, bytes: Vec<u8>) -> Result<SealedField, StoreError> {
    SealedField::from_bytes(bytes).map_err(|_| StoreError::Corrupt {
        table,
        reason: "malformed sealed value",
    })
}

fn version_param(version: DekVersion) -> i64 {
    i64::from(version.get())
}

/// Result of inserting one message inside a caller's transaction.
enum TxInsert {
    Done(InsertOutcome),
    /// A unique violation: a concurrent writer stored the message (or took the id) first.
    Raced,
}

/// Upper bound on compare-and-swap retries in [`Store::reserve_seals`]. Every failed round
/// means another reservation succeeded, so this is only reached under absurd contention.
const MAX_CAS_ROUNDS: usize = 10_000;

// --- SQL, shared by both dialects -------------------------------------------------------

const INSERT_TENANT: &str =
    "INSERT INTO tenants (id, display_name, created_at_ms) VALUES ($1, $2, $3)";
const GET_TENANT: &str = "SELECT id, display_name, created_at_ms FROM tenants WHERE id = $1";
const LIST_TENANTS: &str = "SELECT id, display_name, created_at_ms FROM tenants ORDER BY id";

const INSERT_INDEX_KEY: &str = "INSERT INTO tenant_index_keys \
     (tenant_id, version, wrapped_key, kms_key_ref, created_at_ms, state, normalization, mode) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8)";
const CURRENT_INDEX_KEY: &str = "SELECT tenant_id, version, wrapped_key, kms_key_ref, \
     created_at_ms, state, normalization, mode FROM tenant_index_keys \
     WHERE tenant_id = $1 AND state = 'active'";
const LIST_INDEX_KEYS: &str = "SELECT tenant_id, version, wrapped_key, kms_key_ref, \
     created_at_ms, state, normalization, mode FROM tenant_index_keys \
     WHERE tenant_id = $1 ORDER BY version";
const CAS_WRAPPED_INDEX_KEY: &str = "UPDATE tenant_index_keys SET wrapped_key = $3 \
     WHERE tenant_id = $1 AND version = $2 AND wrapped_key = $4 AND mode = 'blind'";
const RETIRED_INDEX_TERMS_LEFT: &str = "SELECT COUNT(*) AS n FROM tenant_index_keys \
     WHERE tenant_id = $1 AND retired_terms_left \
     AND NOT EXISTS (SELECT 1 FROM messages WHERE tenant_id = $1 AND index_pending)";
const CLEAR_RETIRED_INDEX_TERMS: &str = "UPDATE tenant_index_keys SET retired_terms_left = FALSE \
     WHERE tenant_id = $1 AND retired_terms_left";
/// Reads the live versions; with `lock_keys` appended it also locks the tenant's active
/// row, which rotations update (or lock) too, so marker changes and rotations serialize.
macro_rules! live_index_keys {
    () => {
        "SELECT version, state FROM tenant_index_keys WHERE tenant_id = $1 \
         AND state IN ('active', 'building')"
    };
}
const RETIRE_ACTIVE_INDEX_KEY: &str = "UPDATE tenant_index_keys \
     SET state = 'retired', retired_terms_left = TRUE WHERE tenant_id = $1 AND state = 'active'";
const ACTIVATE_INDEX_KEY: &str = "UPDATE tenant_index_keys SET state = 'active' \
     WHERE tenant_id = $1 AND version = $2 AND state = 'building'";
const ANY_PENDING_INDEX: &str =
    "SELECT COUNT(*) AS n FROM messages WHERE tenant_id = $1 AND index_pending";
const PENDING_INDEX: &str = "SELECT id FROM messages WHERE tenant_id = $1 AND index_pending \
     AND id > $2 ORDER BY id LIMIT $3";
// A soft-deleted message keeps its marker: the indexer removes it from the index instead.
const MARK_INDEXED: &str = "UPDATE messages SET index_pending = FALSE \
     WHERE tenant_id = $1 AND id = $2 AND deleted_at_ms IS NULL";
const MARK_ALL_FOR_REINDEX: &str = "UPDATE messages SET index_pending = TRUE WHERE tenant_id = $1";
const INDEX_PROGRESS: &str = "SELECT \
     COALESCE(SUM(CASE WHEN index_pending THEN 1 ELSE 0 END), 0) AS pending, \
     COUNT(*) AS total FROM messages WHERE tenant_id = $1";

const INSERT_KEY: &str = "INSERT INTO tenant_keys \
     (tenant_id, version, wrapped_dek, kms_key_ref, seal_count, retired, created_at_ms) \
     VALUES ($1, $2, $3, $4, $5, $6, $7)";
const RETIRE_OLDER_KEYS: &str = "UPDATE tenant_keys SET retired = TRUE \
     WHERE tenant_id = $1 AND version < $2 AND retired = FALSE";
macro_rules! key_select {
    () => {
        "SELECT tenant_id, version, wrapped_dek, kms_key_ref, seal_count, retired, \
         created_at_ms FROM tenant_keys"
    };
}
const GET_KEY: &str = concat!(key_select!(), " WHERE tenant_id = $1 AND version = $2");
const LIST_KEYS: &str = concat!(key_select!(), " WHERE tenant_id = $1 ORDER BY version");
const CURRENT_KEY: &str = concat!(
    key_select!(),
    " WHERE tenant_id = $1 AND retired = FALSE ORDER BY version DESC LIMIT 1"
);
const SEAL_STATE: &str =
    "SELECT seal_count, retired FROM tenant_keys WHERE tenant_id = $1 AND version = $2";
const RETIRE_KEY: &str =
    "UPDATE tenant_keys SET retired = TRUE WHERE tenant_id = $1 AND version = $2";
const CAS_SEAL_COUNT: &str = "UPDATE tenant_keys SET seal_count = $3 \
     WHERE tenant_id = $1 AND version = $2 AND seal_count = $4 AND retired = FALSE";
const CAS_WRAPPED_DEK: &str = "UPDATE tenant_keys SET wrapped_dek = $3 \
     WHERE tenant_id = $1 AND version = $2 AND wrapped_dek = $4";

const INSERT_INBOX: &str = "INSERT INTO inboxes \
     (id, tenant_id, address, history_id, status, refresh_token, connected_at_ms, created_at_ms) \
     VALUES ($1, $2, $3, NULL, 'connected', NULL, $4, $5)";
macro_rules! inbox_select {
    () => {
        "SELECT id, tenant_id, address, history_id, status, refresh_token, connected_at_ms, \
         created_at_ms FROM inboxes"
    };
}
const GET_INBOX: &str = concat!(inbox_select!(), " WHERE id = $1");
const LIST_INBOXES: &str = concat!(
    inbox_select!(),
    " WHERE tenant_id = $1 ORDER BY created_at_ms, id"
);

const INBOX_TENANT: &str = "SELECT tenant_id FROM inboxes WHERE id = $1";
const FIND_MESSAGE_BY_GMAIL_ID: &str =
    "SELECT id FROM messages WHERE inbox_id = $1 AND gmail_message_id = $2";
const UPSERT_CONVERSATION: &str = "INSERT INTO conversations \
     (id, tenant_id, inbox_id, gmail_thread_id, last_message_at_ms, message_count) \
     VALUES ($1, $2, $3, $4, $5, 1) \
     ON CONFLICT (inbox_id, gmail_thread_id) DO UPDATE SET \
     message_count = conversations.message_count + 1, \
     last_message_at_ms = CASE \
       WHEN excluded.last_message_at_ms > conversations.last_message_at_ms \
       THEN excluded.last_message_at_ms ELSE conversations.last_message_at_ms END \
     RETURNING id";
const INSERT_MESSAGE: &str = "INSERT INTO messages \
     (id, tenant_id, inbox_id, conversation_id, gmail_message_id, gmail_thread_id, \
      gmail_history_id, internal_date_ms, size_bytes, has_attachments, \
      subject, from_addr, to_addrs, cc_addrs, reply_to, text_body, html_body, snippet, \
      created_at_ms) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, \
      $18, $19)";
const INSERT_ATTACHMENT: &str = "INSERT INTO attachments \
     (id, tenant_id, message_id, ordinal, name, content_type, content_id, data, size_bytes, \
      is_inline) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)";
const GET_MESSAGE: &str = "SELECT id, tenant_id, inbox_id, conversation_id, gmail_message_id, \
     gmail_thread_id, gmail_history_id, internal_date_ms, size_bytes, has_attachments, \
     subject, from_addr, to_addrs, cc_addrs, reply_to, text_body, html_body, snippet, \
     created_at_ms FROM messages WHERE tenant_id = $1 AND id = $2 AND deleted_at_ms IS NULL";
// Everything but the bytes, which only `GET_ATTACHMENT_DATA` reads.
const LIST_ATTACHMENTS: &str = "SELECT id, message_id, ordinal, name, content_type, \
     content_id, size_bytes, is_inline FROM attachments \
     WHERE message_id = $1 ORDER BY ordinal";
const GET_ATTACHMENT_DATA: &str = "SELECT a.data FROM attachments a \
     JOIN messages m ON m.id = a.message_id \
     WHERE m.tenant_id = $1 AND m.id = $2 AND m.deleted_at_ms IS NULL AND a.ordinal = $3";
const LIST_MESSAGE_IDS: &str = "SELECT id FROM messages WHERE tenant_id = $1 AND inbox_id = $2 \
     AND deleted_at_ms IS NULL ORDER BY internal_date_ms DESC, id DESC LIMIT $3";
// Deleting the row first locks it: of two concurrent deletes, one sees no row.
const DELETE_MESSAGE: &str =
    "DELETE FROM messages WHERE tenant_id = $1 AND id = $2 RETURNING conversation_id";
// The foreign key cascades already; this does not rely on it.
const DELETE_ATTACHMENTS: &str = "DELETE FROM attachments WHERE message_id = $1";
// Locks the conversation row (waiting for a concurrent insert into the thread to commit)
// and counts down from its latest version.
const COUNT_DOWN_CONVERSATION: &str =
    "UPDATE conversations SET message_count = message_count - 1 WHERE id = $1";
// Runs after the lock is held, so it sees every committed message of the thread.
const REFRESH_CONVERSATION_DATE: &str = "UPDATE conversations SET last_message_at_ms = \
     COALESCE((SELECT MAX(internal_date_ms) FROM messages WHERE conversation_id = $1), \
       last_message_at_ms) \
     WHERE id = $1";
const DELETE_EMPTY_CONVERSATION: &str =
    "DELETE FROM conversations WHERE id = $1 AND message_count = 0";

// --- lifecycle: soft delete, restore, purge ----------------------------------------------

/// Sets `$3` deleted_at_ms, `$4` deleted_by, `$5` deleted_reason and the index marker.
macro_rules! soft_delete_set {
    () => {
        "UPDATE messages SET deleted_at_ms = $3, deleted_by = $4, deleted_reason = $5, \
         index_pending = TRUE"
    };
}
const SOFT_DELETE_MESSAGE: &str = concat!(
    soft_delete_set!(),
    " WHERE tenant_id = $1 AND id = $2 AND deleted_at_ms IS NULL"
);
const SOFT_DELETE_CONVERSATION: &str = concat!(
    soft_delete_set!(),
    " WHERE tenant_id = $1 AND conversation_id = $2 AND deleted_at_ms IS NULL RETURNING id"
);
const SOFT_DELETE_INBOX_MESSAGES: &str = concat!(
    soft_delete_set!(),
    " WHERE tenant_id = $1 AND inbox_id = $2 AND deleted_at_ms IS NULL RETURNING id"
);
const MARK_INBOX_DELETED: &str = "UPDATE inboxes SET deleted_at_ms = $3, deleted_by = $4 \
     WHERE tenant_id = $1 AND id = $2 AND deleted_at_ms IS NULL";
const INBOX_OF_TENANT: &str = "SELECT deleted_at_ms FROM inboxes WHERE tenant_id = $1 AND id = $2";
/// Mail stored into a deleted inbox arrives soft-deleted (run after the inserts, and on
/// PostgreSQL after the inbox row is locked, so a concurrent inbox delete is seen).
const SOFT_DELETE_INTO_DELETED_INBOX: &str = "UPDATE messages SET \
     deleted_at_ms = (SELECT deleted_at_ms FROM inboxes WHERE id = $1), \
     deleted_by = (SELECT deleted_by FROM inboxes WHERE id = $1), \
     deleted_reason = 'inbox_deleted', index_pending = TRUE \
     WHERE inbox_id = $1 AND deleted_at_ms IS NULL \
     AND EXISTS (SELECT 1 FROM inboxes WHERE id = $1 AND deleted_at_ms IS NOT NULL)";
const MESSAGE_STATE: &str =
    "SELECT inbox_id, deleted_at_ms FROM messages WHERE tenant_id = $1 AND id = $2";
const CONVERSATION_INBOX: &str =
    "SELECT inbox_id FROM conversations WHERE tenant_id = $1 AND id = $2";
/// The next event sequence number of tenant $1; locks its counter row until commit (see
/// migration 0010: the last statement of a transaction that records events).
const NEXT_EVENT_SEQ: &str = "INSERT INTO mail_event_counters (tenant_id, seq) VALUES ($1, 1) \
     ON CONFLICT (tenant_id) DO UPDATE SET seq = mail_event_counters.seq + 1 RETURNING seq";
/// A live event about message $2 of tenant $1: kind $3, at $4, number $5.
const MESSAGE_EVENT: &str = "INSERT INTO mail_events \
     (tenant_id, seq, kind, inbox_id, conversation_id, message_id, at_ms) \
     SELECT tenant_id, $5, $3, inbox_id, conversation_id, id, $4 FROM messages \
     WHERE tenant_id = $1 AND id = $2";
/// A live event about conversation $2 of tenant $1: kind $3, at $4, number $5.
const CONVERSATION_EVENT: &str = "INSERT INTO mail_events \
     (tenant_id, seq, kind, inbox_id, conversation_id, message_id, at_ms) \
     SELECT tenant_id, $5, $3, inbox_id, id, NULL, $4 FROM conversations \
     WHERE tenant_id = $1 AND id = $2";
const MAIL_EVENTS_AFTER: &str = "SELECT seq, kind, inbox_id, conversation_id, message_id, at_ms \
     FROM mail_events WHERE tenant_id = $1 AND seq > $2 ORDER BY seq LIMIT $3";
const LATEST_MAIL_EVENT: &str = "SELECT seq FROM mail_event_counters WHERE tenant_id = $1";
const PRUNE_MAIL_EVENTS: &str = "DELETE FROM mail_events WHERE at_ms < $1";
const FORGET_MESSAGE_EVENTS: &str =
    "DELETE FROM mail_events WHERE tenant_id = $1 AND message_id = $2";
/// The events of conversation $2 of tenant $1, once the conversation itself is gone.
const FORGET_CONVERSATION_EVENTS: &str = "DELETE FROM mail_events \
     WHERE tenant_id = $1 AND conversation_id = $2 \
     AND NOT EXISTS (SELECT 1 FROM conversations WHERE id = $2)";
macro_rules! restore_set {
    () => {
        "UPDATE messages SET deleted_at_ms = NULL, deleted_by = NULL, deleted_reason = NULL, \
         index_pending = TRUE"
    };
}
const RESTORE_MESSAGE: &str = concat!(
    restore_set!(),
    " WHERE tenant_id = $1 AND id = $2 AND deleted_at_ms IS NOT NULL AND deleted_at_ms > $3"
);
const RESTORE_CONVERSATION: &str = concat!(
    restore_set!(),
    " WHERE tenant_id = $1 AND conversation_id = $2 AND deleted_at_ms IS NOT NULL \
     AND deleted_at_ms > $3"
);
const COUNT_EXPIRED_IN_CONVERSATION: &str = "SELECT COUNT(*) AS n FROM messages \
     WHERE tenant_id = $1 AND conversation_id = $2 AND deleted_at_ms IS NOT NULL \
     AND deleted_at_ms <= $3";
const PURGE_CANDIDATES: &str = "SELECT id, conversation_id, inbox_id, deleted_at_ms, \
     index_pending FROM messages WHERE tenant_id = $1 AND deleted_at_ms IS NOT NULL \
     AND deleted_at_ms <= $2 AND id > $3 ORDER BY id LIMIT $4";
// Deleting the row first locks it; a message restored meanwhile no longer matches.
const PURGE_MESSAGE: &str = "DELETE FROM messages WHERE tenant_id = $1 AND id = $2 \
     AND deleted_at_ms IS NOT NULL AND deleted_at_ms <= $3 RETURNING conversation_id";
const OLD_CONVERSATIONS: &str = "SELECT c.id, c.inbox_id, c.last_message_at_ms \
     FROM conversations c WHERE c.tenant_id = $1 AND c.last_message_at_ms < $2 AND c.id > $3 \
     AND EXISTS (SELECT 1 FROM messages m WHERE m.conversation_id = c.id \
       AND m.deleted_at_ms IS NULL) \
     ORDER BY c.id LIMIT $4";

const FIND_INBOXES_BY_ADDRESS: &str = concat!(
    inbox_select!(),
    " WHERE lower(address) = lower($1) ORDER BY created_at_ms, id"
);
const INBOX_MARK: &str = "SELECT tenant_id, history_id FROM inboxes WHERE id = $1";
const FIND_JOB_BY_PUBSUB_ID: &str =
    "SELECT id FROM sync_jobs WHERE inbox_id = $1 AND pubsub_message_id = $2";
const INSERT_JOB: &str = "INSERT INTO sync_jobs \
     (id, tenant_id, inbox_id, pubsub_message_id, history_id, state, attempts, \
      available_at_ms, claimed_at_ms, created_at_ms) \
     VALUES ($1, $2, $3, $4, $5, 'pending', 0, $6, NULL, $6)";
macro_rules! claim_select {
    () => {
        "SELECT id, tenant_id, inbox_id, history_id, attempts FROM sync_jobs \
         WHERE tenant_id = $1 \
         AND ((state = 'pending' AND available_at_ms <= $2) \
              OR (state = 'running' AND claimed_at_ms <= $3)) \
         ORDER BY available_at_ms, created_at_ms LIMIT $4"
    };
}
const MARK_JOB_RUNNING: &str = "UPDATE sync_jobs SET state = 'running', claimed_at_ms = $2, \
     attempts = attempts + 1 WHERE id = $1";
const MARK_JOB_DONE: &str =
    "UPDATE sync_jobs SET state = 'done', claimed_at_ms = NULL WHERE id = $1";
const MARK_JOB_PENDING: &str = "UPDATE sync_jobs SET state = 'pending', claimed_at_ms = NULL, \
     available_at_ms = $2, last_error_kind = $3 WHERE id = $1";
const MARK_JOB_FAILED: &str = "UPDATE sync_jobs SET state = 'failed', claimed_at_ms = NULL, \
     last_error_kind = $2 WHERE id = $1";
const ADVANCE_HISTORY: &str = "UPDATE inboxes SET history_id = CASE \
       WHEN history_id IS NULL OR history_id < $2 THEN $2 ELSE history_id END, \
       last_synced_at_ms = $4 \
     WHERE id = $1 AND tenant_id = $3";
const LATEST_MESSAGE_DATE: &str =
    "SELECT MAX(internal_date_ms) AS latest FROM messages WHERE inbox_id = $1";
const SET_INBOX_STATUS: &str = "UPDATE inboxes SET status = $2 WHERE id = $1";
const SET_REFRESH_TOKEN: &str = "UPDATE inboxes SET refresh_token = $2 WHERE id = $1";
const CAS_REFRESH_TOKEN: &str =
    "UPDATE inboxes SET refresh_token = $2 WHERE id = $1 AND refresh_token = $3";

const INSERT_AUDIT: &str = "INSERT INTO audit_events \
     (tenant_id, at_ms, actor, action, target_kind, target_id) \
     VALUES ($1, $2, $3, $4, $5, $6)";
const LIST_AUDIT: &str = "SELECT tenant_id, at_ms, actor, action, target_kind, target_id \
     FROM audit_events WHERE tenant_id = $1 ORDER BY id LIMIT $2";

const INSERT_TOMBSTONE: &str = "INSERT INTO search_tombstones \
     (id, tenant_id, scope_kind, scope_id, cutoff_version, delete_opstamp, created_at_ms) \
     VALUES ($1, $2, $3, $4, $5, $6, $7)";
const SET_TOMBSTONE_OPSTAMP: &str =
    "UPDATE search_tombstones SET delete_opstamp = $3 WHERE tenant_id = $1 AND id = $2";
const LIST_TOMBSTONES: &str = "SELECT id, tenant_id, scope_kind, scope_id, cutoff_version, \
     delete_opstamp, created_at_ms FROM search_tombstones WHERE tenant_id = $1 \
     ORDER BY created_at_ms, id";
const REMOVE_APPLIED_TOMBSTONES: &str = "DELETE FROM search_tombstones \
     WHERE tenant_id = $1 AND delete_opstamp IS NOT NULL AND delete_opstamp <= $2";
const TOMBSTONE_TENANTS: &str =
    "SELECT DISTINCT tenant_id FROM search_tombstones ORDER BY tenant_id";

// --- agent API reads (read-only) -----------------------------------------------------------

const LIST_INBOX_SETTINGS: &str = "SELECT inbox_id, tenant_id, namespace, name, visibility, \
     team, assignment_limits_visibility, generation FROM inbox_settings \
     WHERE tenant_id = $1 ORDER BY inbox_id";
macro_rules! conversation_select {
    () => {
        "SELECT c.id, c.tenant_id, c.inbox_id, c.gmail_thread_id, c.last_message_at_ms, \
         (SELECT COUNT(*) FROM messages n WHERE n.conversation_id = c.id \
           AND n.deleted_at_ms IS NULL) AS message_count, \
         (SELECT MIN(f.internal_date_ms) FROM messages f WHERE f.conversation_id = c.id \
           AND f.deleted_at_ms IS NULL) AS first_message_at_ms, \
         (SELECT m.id FROM messages m WHERE m.conversation_id = c.id AND m.deleted_at_ms IS NULL \
           ORDER BY m.internal_date_ms DESC, m.id DESC LIMIT 1) AS latest_message_id \
         FROM conversations c"
    };
}
/// A conversation is visible while one of its messages is not soft-deleted.
macro_rules! conversation_live {
    () => {
        " AND EXISTS (SELECT 1 FROM messages l WHERE l.conversation_id = c.id \
          AND l.deleted_at_ms IS NULL)"
    };
}
const LIST_CONVERSATIONS_FIRST: &str = concat!(
    conversation_select!(),
    " WHERE c.tenant_id = $1 AND c.inbox_id = $2",
    conversation_live!(),
    " ORDER BY c.last_message_at_ms DESC, c.id DESC LIMIT $3"
);
const LIST_CONVERSATIONS_AFTER: &str = concat!(
    conversation_select!(),
    " WHERE c.tenant_id = $1 AND c.inbox_id = $2 \
     AND (c.last_message_at_ms < $3 OR (c.last_message_at_ms = $3 AND c.id < $4))",
    conversation_live!(),
    " ORDER BY c.last_message_at_ms DESC, c.id DESC LIMIT $5"
);
const GET_CONVERSATION: &str = concat!(
    conversation_select!(),
    " WHERE c.tenant_id = $1 AND c.id = $2",
    conversation_live!()
);
const CONVERSATION_MESSAGES_FIRST: &str = "SELECT id FROM messages \
     WHERE tenant_id = $1 AND conversation_id = $2 AND deleted_at_ms IS NULL \
     ORDER BY internal_date_ms, id LIMIT $3";
const CONVERSATION_MESSAGES_AFTER: &str = "SELECT id FROM messages \
     WHERE tenant_id = $1 AND conversation_id = $2 AND deleted_at_ms IS NULL \
     AND (internal_date_ms > $3 OR (internal_date_ms = $3 AND id > $4)) \
     ORDER BY internal_date_ms, id LIMIT $5";

// --- the implementation, once -----------------------------------------------------------

/// Implements [`Store`] for `$store` (with a `pool` field of the driver's pool type).
///
/// * `write_begin`: statement opening a read-write transaction. SQLite takes the write
///   lock up front (`BEGIN IMMEDIATE`), so that a transaction that reads and then writes
///   waits for the lock (busy timeout) instead of failing to upgrade.
/// * `read_begin`: statement opening a transaction that reads a consistent snapshot.
/// * `lock_rows`: suffix that locks the selected rows and skips rows locked by others
///   (PostgreSQL `FOR UPDATE SKIP LOCKED`; empty for SQLite, whose `BEGIN IMMEDIATE`
///   already admits one writer at a time).
/// * `lock_keys`: suffix that locks selected rows, waiting for other holders (PostgreSQL
///   `FOR UPDATE`; empty for SQLite, see above).
macro_rules! sql_store {
    (
        store = $store:ident,
        db = $db:ty,
        row = $row:ty,
        backend = $backend:literal,
        write_begin = $write_begin:literal,
        read_begin = $read_begin:literal,
        lock_rows = $lock_rows:literal,
        lock_keys = $lock_keys:literal $(,)?
    ) => {
        impl $store {
            async fn begin_write(
                &self,
                op: &'static str,
            ) -> Result<sqlx::Transaction<'static, $db>, StoreError> {
                self.pool.begin_with($write_begin).await.map_err(db_err(op))
            }

            async fn begin_read(
                &self,
                op: &'static str,
            ) -> Result<sqlx::Transaction<'static, $db>, StoreError> {
                self.pool.begin_with($read_begin).await.map_err(db_err(op))
            }

            fn col<'r, T>(row: &'r $row, table: &'static str, column: &str) -> Result<T, StoreError>
            where
                T: sqlx::Decode<'r, $db> + sqlx::Type<$db>,
            {
                row.try_get(column).map_err(|_| StoreError::Corrupt {
                    table,
                    reason: "column has an unexpected type or value",
                })
            }

            fn conversation_from_row(row: &$row) -> Result<ConversationRecord, StoreError> {
                const T: &str = "conversations";
                Ok(ConversationRecord {
                    id: Self::col(row, T, "id")?,
                    tenant_id: to_tenant(T, Self::col(row, T, "tenant_id")?)?,
                    inbox_id: Self::col(row, T, "inbox_id")?,
                    gmail_thread_id: Self::col(row, T, "gmail_thread_id")?,
                    last_message_at_ms: Self::col(row, T, "last_message_at_ms")?,
                    first_message_at_ms: Self::col(row, T, "first_message_at_ms")?,
                    message_count: to_u64(
                        T,
                        Self::col(row, T, "message_count")?,
                        "negative message count",
                    )?,
                    latest_message_id: Self::col(row, T, "latest_message_id")?,
                })
            }

            fn api_inbox_settings_from_row(row: &$row) -> Result<InboxSettings, StoreError> {
                const T: &str = "inbox_settings";
                let visibility: String = Self::col(row, T, "visibility")?;
                Ok(InboxSettings {
                    inbox_id: Self::col(row, T, "inbox_id")?,
                    tenant_id: to_tenant(T, Self::col(row, T, "tenant_id")?)?,
                    namespace: Self::col(row, T, "namespace")?,
                    name: Self::col(row, T, "name")?,
                    visibility: Visibility::parse(&visibility).ok_or(StoreError::Corrupt {
                        table: T,
                        reason: "unknown visibility",
                    })?,
                    team: Self::col(row, T, "team")?,
                    assignment_limits_visibility: Self::col(
                        row,
                        T,
                        "assignment_limits_visibility",
                    )?,
                    generation: Self::col(row, T, "generation")?,
                })
            }

            fn tenant_from_row(row: &$row) -> Result<TenantRecord, StoreError> {
                const T: &str = "tenants";
                Ok(TenantRecord {
                    id: to_tenant(T, Self::col(row, T, "id")?)?,
                    display_name: Self::col(row, T, "display_name")?,
                    created_at_ms: Self::col(row, T, "created_at_ms")?,
                })
            }

            fn key_from_row(row: &$row) -> Result<KeyVersionRecord, StoreError> {
                const T: &str = "tenant_keys";
                Ok(KeyVersionRecord {
                    tenant_id: to_tenant(T, Self::col(row, T, "tenant_id")?)?,
                    version: to_version(T, Self::col(row, T, "version")?)?,
                    wrapped_dek: Self::col(row, T, "wrapped_dek")?,
                    kms_key_ref: Self::col(row, T, "kms_key_ref")?,
                    seal_count: to_u64(T, Self::col(row, T, "seal_count")?, "negative seal count")?,
                    retired: Self::col(row, T, "retired")?,
                    created_at_ms: Self::col(row, T, "created_at_ms")?,
                })
            }

            fn index_key_from_row(row: &$row) -> Result<IndexKeyRecord, StoreError> {
                const T: &str = "tenant_index_keys";
                let state: String = Self::col(row, T, "state")?;
                Ok(IndexKeyRecord {
                    tenant_id: to_tenant(T, Self::col(row, T, "tenant_id")?)?,
                    version: to_version(T, Self::col(row, T, "version")?)?.get(),
                    wrapped_key: Self::col(row, T, "wrapped_key")?,
                    kms_key_ref: Self::col(row, T, "kms_key_ref")?,
                    created_at_ms: Self::col(row, T, "created_at_ms")?,
                    state: IndexKeyState::parse(&state).ok_or(StoreError::Corrupt {
                        table: T,
                        reason: "unknown index key state",
                    })?,
                    normalization: u32::try_from(Self::col::<i64>(row, T, "normalization")?)
                        .map_err(|_| StoreError::Corrupt {
                            table: T,
                            reason: "normalization out of range",
                        })?,
                    mode: crate::search::Mode::parse(&Self::col::<String>(row, T, "mode")?)
                        .ok_or(StoreError::Corrupt {
                            table: T,
                            reason: "unknown search mode",
                        })?,
                })
            }

            /// The tenant's active and building index key versions, read after locking the
            /// active row (PostgreSQL), so that what follows in `tx` is ordered against
            /// rotations: under READ COMMITTED the second read sees a rotation that
            /// committed while this one waited for the lock.
            async fn live_index_keys(
                tx: &mut sqlx::Transaction<'static, $db>,
                tenant: &TenantId,
                op: &'static str,
            ) -> Result<IndexKeySet, StoreError> {
                const T: &str = "tenant_index_keys";
                sqlx::query(concat!(live_index_keys!(), " AND state = 'active'", $lock_keys))
                    .bind(tenant.as_str())
                    .fetch_all(&mut **tx)
                    .await
                    .map_err(db_err(op))?;
                let rows = sqlx::query(live_index_keys!())
                    .bind(tenant.as_str())
                    .fetch_all(&mut **tx)
                    .await
                    .map_err(db_err(op))?;
                let mut set = IndexKeySet::default();
                for row in &rows {
                    let version = to_version(T, Self::col(row, T, "version")?)?.get();
                    let state: String = Self::col(row, T, "state")?;
                    match IndexKeyState::parse(&state) {
                        Some(IndexKeyState::Active) => set.active = Some(version),
                        Some(IndexKeyState::Building) => set.building = Some(version),
                        _ => {}
                    }
                }
                Ok(set)
            }

            fn inbox_from_row(row: &$row) -> Result<InboxRecord, StoreError> {
                const T: &str = "inboxes";
                let refresh_token: Option<Vec<u8>> = Self::col(row, T, "refresh_token")?;
                Ok(InboxRecord {
                    id: Self::col(row, T, "id")?,
                    tenant_id: to_tenant(T, Self::col(row, T, "tenant_id")?)?,
                    address: Self::col(row, T, "address")?,
                    history_id: to_opt_u64(
                        T,
                        Self::col(row, T, "history_id")?,
                        "negative history id",
                    )?,
                    status: Self::col(row, T, "status")?,
                    refresh_token: refresh_token.map(|b| to_sealed(T, b)).transpose()?,
                    connected_at_ms: Self::col(row, T, "connected_at_ms")?,
                    created_at_ms: Self::col(row, T, "created_at_ms")?,
                })
            }

            fn attachment_from_row(row: &$row) -> Result<StoredAttachment, StoreError> {
                const T: &str = "attachments";
                Ok(StoredAttachment {
                    id: Self::col(row, T, "id")?,
                    message_id: Self::col(row, T, "message_id")?,
                    ordinal: to_u32(T, Self::col(row, T, "ordinal")?, "ordinal out of range")?,
                    name: to_sealed(T, Self::col(row, T, "name")?)?,
                    content_type: to_sealed(T, Self::col(row, T, "content_type")?)?,
                    content_id: to_sealed(T, Self::col(row, T, "content_id")?)?,
                    size_bytes: to_u64(T, Self::col(row, T, "size_bytes")?, "negative size")?,
                    inline: Self::col(row, T, "is_inline")?,
                })
            }

            fn message_from_row(
                row: &$row,
                attachments: Vec<StoredAttachment>,
            ) -> Result<StoredMessage, StoreError> {
                const T: &str = "messages";
                let sealed = |column: &str| -> Result<SealedField, StoreError> {
                    to_sealed(T, Self::col(row, T, column)?)
                };
                Ok(StoredMessage {
                    id: Self::col(row, T, "id")?,
                    tenant_id: to_tenant(T, Self::col(row, T, "tenant_id")?)?,
                    inbox_id: Self::col(row, T, "inbox_id")?,
                    conversation_id: Self::col(row, T, "conversation_id")?,
                    gmail_message_id: Self::col(row, T, "gmail_message_id")?,
                    gmail_thread_id: Self::col(row, T, "gmail_thread_id")?,
                    gmail_history_id: to_opt_u64(
                        T,
                        Self::col(row, T, "gmail_history_id")?,
                        "negative history id",
                    )?,
                    internal_date_ms: Self::col(row, T, "internal_date_ms")?,
                    size_bytes: to_u64(T, Self::col(row, T, "size_bytes")?, "negative size")?,
                    has_attachments: Self::col(row, T, "has_attachments")?,
                    fields: MessageFields {
                        subject: sealed("subject")?,
                        from_addr: sealed("from_addr")?,
                        to_addrs: sealed("to_addrs")?,
                        cc_addrs: sealed("cc_addrs")?,
                        reply_to: sealed("reply_to")?,
                        text_body: sealed("text_body")?,
                        html_body: sealed("html_body")?,
                        snippet: sealed("snippet")?,
                    },
                    attachments,
                    created_at_ms: Self::col(row, T, "created_at_ms")?,
                })
            }

            async fn find_message_by_gmail_id<'e, E>(
                executor: E,
                op: &'static str,
                inbox_id: &str,
                gmail_message_id: &str,
            ) -> Result<Option<String>, StoreError>
            where
                E: sqlx::Executor<'e, Database = $db>,
            {
                let row = sqlx::query(FIND_MESSAGE_BY_GMAIL_ID)
                    .bind(inbox_id)
                    .bind(gmail_message_id)
                    .fetch_optional(executor)
                    .await
                    .map_err(db_err(op))?;
                row.map(|r| Self::col::<String>(&r, "messages", "id"))
                    .transpose()
            }

            /// Inserts one message inside `tx`; see [`Store::insert_message`]. A unique
            /// violation (a concurrent writer won) is [`TxInsert::Raced`]: the transaction
            /// is then unusable on PostgreSQL and must be rolled back.
            async fn insert_in_tx(
                tx: &mut sqlx::Transaction<'static, $db>,
                message: &NewMessage,
                op: &'static str,
            ) -> Result<TxInsert, StoreError> {
                let gmail_history_id = message
                    .gmail_history_id
                    .map(|h| to_i64(op, h, "history id"))
                    .transpose()?;
                let size_bytes = to_i64(op, message.size_bytes, "message size")?;
                let attachment_sizes = message
                    .attachments
                    .iter()
                    .map(|a| to_i64(op, a.size_bytes, "attachment size"))
                    .collect::<Result<Vec<_>, _>>()?;
                let created_at_ms = now_ms();

                let owner = sqlx::query(INBOX_TENANT)
                    .bind(&message.inbox_id)
                    .fetch_optional(&mut **tx)
                    .await
                    .map_err(db_err(op))?;
                let owner: Option<String> = owner
                    .map(|r| Self::col(&r, "inboxes", "tenant_id"))
                    .transpose()?;
                if owner.as_deref() != Some(message.tenant_id.as_str()) {
                    return Err(StoreError::NotFound("inbox"));
                }

                if let Some(message_id) = Self::find_message_by_gmail_id(
                    &mut **tx,
                    op,
                    &message.inbox_id,
                    &message.gmail_message_id,
                )
                .await?
                {
                    return Ok(TxInsert::Done(InsertOutcome::AlreadyStored { message_id }));
                }

                let row = sqlx::query(UPSERT_CONVERSATION)
                    .bind(crate::ids::new_record_id())
                    .bind(message.tenant_id.as_str())
                    .bind(&message.inbox_id)
                    .bind(&message.gmail_thread_id)
                    .bind(message.internal_date_ms)
                    .fetch_one(&mut **tx)
                    .await
                    .map_err(constraint_err(op, "conversation", "inbox"))?;
                let conversation_id: String = Self::col(&row, "conversations", "id")?;

                let f = &message.fields;
                let inserted = sqlx::query(INSERT_MESSAGE)
                    .bind(&message.id)
                    .bind(message.tenant_id.as_str())
                    .bind(&message.inbox_id)
                    .bind(&conversation_id)
                    .bind(&message.gmail_message_id)
                    .bind(&message.gmail_thread_id)
                    .bind(gmail_history_id)
                    .bind(message.internal_date_ms)
                    .bind(size_bytes)
                    .bind(!message.attachments.is_empty())
                    .bind(f.subject.as_bytes())
                    .bind(f.from_addr.as_bytes())
                    .bind(f.to_addrs.as_bytes())
                    .bind(f.cc_addrs.as_bytes())
                    .bind(f.reply_to.as_bytes())
                    .bind(f.text_body.as_bytes())
                    .bind(f.html_body.as_bytes())
                    .bind(f.snippet.as_bytes())
                    .bind(created_at_ms)
                    .execute(&mut **tx)
                    .await;
                if let Err(e) = inserted {
                    if is_unique_violation(&e) {
                        return Ok(TxInsert::Raced);
                    }
                    return Err(constraint_err(op, "message", "inbox")(e));
                }

                for (attachment, size) in message.attachments.iter().zip(attachment_sizes) {
                    sqlx::query(INSERT_ATTACHMENT)
                        .bind(&attachment.id)
                        .bind(message.tenant_id.as_str())
                        .bind(&message.id)
                        .bind(i64::from(attachment.ordinal))
                        .bind(attachment.name.as_bytes())
                        .bind(attachment.content_type.as_bytes())
                        .bind(attachment.content_id.as_bytes())
                        .bind(attachment.data.as_bytes())
                        .bind(size)
                        .bind(attachment.inline)
                        .execute(&mut **tx)
                        .await
                        .map_err(constraint_err(op, "attachment", "message"))?;
                }
                Ok(TxInsert::Done(InsertOutcome::Inserted { conversation_id }))
            }


            /// Inserts a batch of messages of one inbox with a constant number of statements
            /// (whatever the batch size): existing Gmail ids in one query, conversations in
            /// one multi-row upsert, messages and attachments in one multi-row insert each.
            /// `None` when a concurrent writer won a unique key (roll back and retry).
            async fn insert_batch_in_tx(
                tx: &mut sqlx::Transaction<'static, $db>,
                tenant: &TenantId,
                inbox_id: &str,
                messages: &[NewMessage],
                op: &'static str,
            ) -> Result<Option<Vec<InsertOutcome>>, StoreError> {
                if messages.is_empty() {
                    return Ok(Some(Vec::new()));
                }
                let owner = sqlx::query(INBOX_TENANT)
                    .bind(inbox_id)
                    .fetch_optional(&mut **tx)
                    .await
                    .map_err(db_err(op))?;
                let owner: Option<String> = owner
                    .map(|r| Self::col(&r, "inboxes", "tenant_id"))
                    .transpose()?;
                if owner.as_deref() != Some(tenant.as_str()) {
                    return Err(StoreError::NotFound("inbox"));
                }

                // Already stored (by Gmail id), and duplicates inside the batch.
                let mut known: HashMap<String, String> = HashMap::new();
                {
                    let mut q = sqlx::QueryBuilder::<$db>::new(
                        "SELECT gmail_message_id, id FROM messages WHERE inbox_id = ",
                    );
                    q.push_bind(inbox_id);
                    q.push(" AND gmail_message_id IN (");
                    let mut list = q.separated(", ");
                    for m in messages {
                        list.push_bind(m.gmail_message_id.as_str());
                    }
                    q.push(")");
                    for row in q.build().fetch_all(&mut **tx).await.map_err(db_err(op))? {
                        known.insert(
                            Self::col(&row, "messages", "gmail_message_id")?,
                            Self::col(&row, "messages", "id")?,
                        );
                    }
                }
                let mut fresh: Vec<&NewMessage> = Vec::with_capacity(messages.len());
                let mut batch_ids: HashMap<&str, &str> = HashMap::new();
                for m in messages {
                    if !known.contains_key(&m.gmail_message_id)
                        && !batch_ids.contains_key(m.gmail_message_id.as_str())
                    {
                        batch_ids.insert(&m.gmail_message_id, &m.id);
                        fresh.push(m);
                    }
                }

                // One upsert row per thread: count and newest date aggregated here.
                let mut threads: BTreeMap<&str, (i64, i64)> = BTreeMap::new();
                for m in &fresh {
                    let entry = threads.entry(m.gmail_thread_id.as_str()).or_insert((0, i64::MIN));
                    entry.0 += 1;
                    entry.1 = entry.1.max(m.internal_date_ms);
                }
                let mut conversation_of: HashMap<String, String> = HashMap::new();
                if !threads.is_empty() {
                    let mut q = sqlx::QueryBuilder::<$db>::new(
                        "INSERT INTO conversations (id, tenant_id, inbox_id, gmail_thread_id, \
                         last_message_at_ms, message_count) ",
                    );
                    q.push_values(threads.iter(), |mut b, (thread, (count, date))| {
                        b.push_bind(crate::ids::new_record_id())
                            .push_bind(tenant.as_str())
                            .push_bind(inbox_id)
                            .push_bind(*thread)
                            .push_bind(*date)
                            .push_bind(*count);
                    });
                    q.push(
                        " ON CONFLICT (inbox_id, gmail_thread_id) DO UPDATE SET \
                         message_count = conversations.message_count + excluded.message_count, \
                         last_message_at_ms = CASE \
                           WHEN excluded.last_message_at_ms > conversations.last_message_at_ms \
                           THEN excluded.last_message_at_ms ELSE conversations.last_message_at_ms END \
                         RETURNING id, gmail_thread_id",
                    );
                    let rows = q
                        .build()
                        .fetch_all(&mut **tx)
                        .await
                        .map_err(constraint_err(op, "conversation", "inbox"))?;
                    for row in rows {
                        conversation_of.insert(
                            Self::col(&row, "conversations", "gmail_thread_id")?,
                            Self::col(&row, "conversations", "id")?,
                        );
                    }
                }

                let created_at_ms = now_ms();
                // Parameters per statement stay far below both drivers' limits.
                for chunk in fresh.chunks(500) {
                    let mut rows = Vec::with_capacity(chunk.len());
                    for m in chunk {
                        let conversation = conversation_of
                            .get(&m.gmail_thread_id)
                            .ok_or(StoreError::Corrupt { table: "conversations", reason: "upsert returned no row for a thread" })?;
                        rows.push((
                            *m,
                            conversation.as_str(),
                            m.gmail_history_id.map(|h| to_i64(op, h, "history id")).transpose()?,
                            to_i64(op, m.size_bytes, "message size")?,
                        ));
                    }
                    let mut q = sqlx::QueryBuilder::<$db>::new(
                        "INSERT INTO messages (id, tenant_id, inbox_id, conversation_id, \
                         gmail_message_id, gmail_thread_id, gmail_history_id, internal_date_ms, \
                         size_bytes, has_attachments, subject, from_addr, to_addrs, cc_addrs, \
                         reply_to, text_body, html_body, snippet, created_at_ms) ",
                    );
                    q.push_values(rows.iter(), |mut b, (m, conversation, history, size)| {
                        let f = &m.fields;
                        b.push_bind(m.id.as_str())
                            .push_bind(tenant.as_str())
                            .push_bind(inbox_id)
                            .push_bind(*conversation)
                            .push_bind(m.gmail_message_id.as_str())
                            .push_bind(m.gmail_thread_id.as_str())
                            .push_bind(*history)
                            .push_bind(m.internal_date_ms)
                            .push_bind(*size)
                            .push_bind(!m.attachments.is_empty())
                            .push_bind(f.subject.as_bytes())
                            .push_bind(f.from_addr.as_bytes())
                            .push_bind(f.to_addrs.as_bytes())
                            .push_bind(f.cc_addrs.as_bytes())
                            .push_bind(f.reply_to.as_bytes())
                            .push_bind(f.text_body.as_bytes())
                            .push_bind(f.html_body.as_bytes())
                            .push_bind(f.snippet.as_bytes())
                            .push_bind(created_at_ms);
                    });
                    match q.build().execute(&mut **tx).await {
                        Ok(_) => {}
                        Err(e) if is_unique_violation(&e) => return Ok(None),
                        Err(e) => return Err(constraint_err(op, "message", "inbox")(e)),
                    }
                }

                let mut attachments = Vec::new();
                for m in &fresh {
                    for a in &m.attachments {
                        attachments.push((m.id.as_str(), a, to_i64(op, a.size_bytes, "attachment size")?));
                    }
                }
                for chunk in attachments.chunks(500) {
                    let mut q = sqlx::QueryBuilder::<$db>::new(
                        "INSERT INTO attachments (id, tenant_id, message_id, ordinal, name, \
                         content_type, content_id, data, size_bytes, is_inline) ",
                    );
                    q.push_values(chunk.iter(), |mut b, (message_id, a, size)| {
                        b.push_bind(a.id.as_str())
                            .push_bind(tenant.as_str())
                            .push_bind(*message_id)
                            .push_bind(i64::from(a.ordinal))
                            .push_bind(a.name.as_bytes())
                            .push_bind(a.content_type.as_bytes())
                            .push_bind(a.content_id.as_bytes())
                            .push_bind(a.data.as_bytes())
                            .push_bind(*size)
                            .push_bind(a.inline);
                    });
                    match q.build().execute(&mut **tx).await {
                        Ok(_) => {}
                        Err(e) if is_unique_violation(&e) => return Ok(None),
                        Err(e) => return Err(constraint_err(op, "attachment", "message")(e)),
                    }
                }

                let outcomes = messages
                    .iter()
                    .map(|m| match known.get(&m.gmail_message_id) {
                        Some(id) => Ok(InsertOutcome::AlreadyStored { message_id: id.clone() }),
                        None => match batch_ids.get(m.gmail_message_id.as_str()) {
                            Some(first) if *first != m.id.as_str() => {
                                Ok(InsertOutcome::AlreadyStored { message_id: (*first).to_string() })
                            }
                            _ => conversation_of
                                .get(&m.gmail_thread_id)
                                .map(|c| InsertOutcome::Inserted { conversation_id: c.clone() })
                                .ok_or(StoreError::Corrupt { table: "conversations", reason: "no conversation for a thread" }),
                        },
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(Some(outcomes))
            }

            /// Appends an audit row inside `tx` (ids and verbs only).
            #[allow(clippy::too_many_arguments)]
            async fn audit_in_tx(
                tx: &mut sqlx::Transaction<'static, $db>,
                op: &'static str,
                tenant: &TenantId,
                actor: &str,
                action: &str,
                target_kind: &str,
                target_id: &str,
                at_ms: UnixMillis,
            ) -> Result<(), StoreError> {
                sqlx::query(INSERT_AUDIT)
                    .bind(tenant.as_str())
                    .bind(at_ms)
                    .bind(actor)
                    .bind(action)
                    .bind(target_kind)
                    .bind(target_id)
                    .execute(&mut **tx)
                    .await
                    .map_err(db_err(op))?;
                Ok(())
            }

            /// Fails with `Conflict` when the inbox is deleted (mail cannot come back into it).
            async fn refuse_deleted_inbox(
                tx: &mut sqlx::Transaction<'static, $db>,
                op: &'static str,
                tenant: &TenantId,
                inbox_id: &str,
            ) -> Result<(), StoreError> {
                let row = sqlx::query(INBOX_OF_TENANT)
                    .bind(tenant.as_str())
                    .bind(inbox_id)
                    .fetch_optional(&mut **tx)
                    .await
                    .map_err(db_err(op))?
                    .ok_or(StoreError::NotFound("inbox"))?;
                let deleted: Option<i64> = Self::col(&row, "inboxes", "deleted_at_ms")?;
                if deleted.is_some() {
                    return Err(StoreError::Conflict(
                        "the inbox is deleted: its mail cannot be restored",
                    ));
                }
                Ok(())
            }

            /// Runs a soft-delete statement that returns the ids it changed.
            async fn soft_delete_returning(
                tx: &mut sqlx::Transaction<'static, $db>,
                op: &'static str,
                sql: &'static str,
                tenant: &TenantId,
                scope_id: &str,
                deletion: &Deletion,
            ) -> Result<Vec<String>, StoreError> {
                let rows = sqlx::query(sql)
                    .bind(tenant.as_str())
                    .bind(scope_id)
                    .bind(deletion.at_ms)
                    .bind(&deletion.actor)
                    .bind(deletion.reason.as_str())
                    .fetch_all(&mut **tx)
                    .await
                    .map_err(db_err(op))?;
                let mut ids = rows
                    .iter()
                    .map(|r| Self::col::<String>(r, "messages", "id"))
                    .collect::<Result<Vec<_>, _>>()?;
                ids.sort();
                Ok(ids)
            }

            /// Appends a live event about a message ([`MESSAGE_EVENT`]) or a conversation
            /// ([`CONVERSATION_EVENT`]) of the tenant in `tx`. Must come after every other
            /// statement that takes row locks (it locks the tenant's event counter until
            /// commit; see migration 0010).
            async fn event_in_tx(
                tx: &mut sqlx::Transaction<'static, $db>,
                op: &'static str,
                sql: &'static str,
                tenant: &TenantId,
                id: &str,
                kind: MailEventKind,
                at_ms: UnixMillis,
            ) -> Result<(), StoreError> {
                let row = sqlx::query(NEXT_EVENT_SEQ)
                    .bind(tenant.as_str())
                    .fetch_one(&mut **tx)
                    .await
                    .map_err(db_err(op))?;
                let seq: i64 = Self::col(&row, "mail_event_counters", "seq")?;
                sqlx::query(sql)
                    .bind(tenant.as_str())
                    .bind(id)
                    .bind(kind.as_str())
                    .bind(at_ms)
                    .bind(seq)
                    .execute(&mut **tx)
                    .await
                    .map_err(db_err(op))?;
                Ok(())
            }

            /// Deletes the live events of a message deleted for good, and of its
            /// conversation if that is gone too.
            async fn forget_events_in_tx(
                tx: &mut sqlx::Transaction<'static, $db>,
                op: &'static str,
                tenant: &TenantId,
                message_id: &str,
                conversation_id: &str,
            ) -> Result<(), StoreError> {
                for (sql, id) in [
                    (FORGET_MESSAGE_EVENTS, message_id),
                    (FORGET_CONVERSATION_EVENTS, conversation_id),
                ] {
                    sqlx::query(sql)
                        .bind(tenant.as_str())
                        .bind(id)
                        .execute(&mut **tx)
                        .await
                        .map_err(db_err(op))?;
                }
                Ok(())
            }

            fn mail_event_from_row(row: &$row) -> Result<MailEvent, StoreError> {
                const T: &str = "mail_events";
                let kind: String = Self::col(row, T, "kind")?;
                Ok(MailEvent {
                    seq: Self::col(row, T, "seq")?,
                    kind: MailEventKind::parse(&kind).ok_or(StoreError::Corrupt {
                        table: T,
                        reason: "unknown event kind",
                    })?,
                    inbox_id: Self::col(row, T, "inbox_id")?,
                    conversation_id: Self::col(row, T, "conversation_id")?,
                    message_id: Self::col(row, T, "message_id")?,
                    at_ms: Self::col(row, T, "at_ms")?,
                })
            }

            /// Runs `sql` for each job id in one transaction, binding the id, then
            /// `available_at_ms` and `error_kind` when given (in that order).
            async fn update_jobs(
                &self,
                op: &'static str,
                ids: &[String],
                sql: &'static str,
                available_at_ms: Option<UnixMillis>,
                error_kind: Option<&str>,
            ) -> Result<(), StoreError> {
                let mut tx = self.begin_write(op).await?;
                for id in ids {
                    let mut query = sqlx::query(sql).bind(id);
                    if let Some(at) = available_at_ms {
                        query = query.bind(at);
                    }
                    if let Some(kind) = error_kind {
                        query = query.bind(kind);
                    }
                    query.execute(&mut *tx).await.map_err(db_err(op))?;
                }
                tx.commit().await.map_err(db_err(op))
            }
        }

        #[async_trait]
        impl Store for $store {
            fn backend(&self) -> &'static str {
                $backend
            }

            // --- tenants ---------------------------------------------------------------

            async fn create_tenant(&self, tenant: &NewTenant) -> Result<TenantRecord, StoreError> {
                let created_at_ms = now_ms();
                sqlx::query(INSERT_TENANT)
                    .bind(tenant.id.as_str())
                    .bind(&tenant.display_name)
                    .bind(created_at_ms)
                    .execute(&self.pool)
                    .await
                    .map_err(constraint_err("create_tenant", "tenant", "tenant"))?;
                Ok(TenantRecord {
                    id: tenant.id.clone(),
                    display_name: tenant.display_name.clone(),
                    created_at_ms,
                })
            }

            async fn get_tenant(&self, id: &TenantId) -> Result<Option<TenantRecord>, StoreError> {
                let row = sqlx::query(GET_TENANT)
                    .bind(id.as_str())
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(db_err("get_tenant"))?;
                row.as_ref().map(Self::tenant_from_row).transpose()
            }

            async fn list_tenants(&self) -> Result<Vec<TenantRecord>, StoreError> {
                let rows = sqlx::query(LIST_TENANTS)
                    .fetch_all(&self.pool)
                    .await
                    .map_err(db_err("list_tenants"))?;
                rows.iter().map(Self::tenant_from_row).collect()
            }

            // --- tenant key versions ---------------------------------------------------

            async fn insert_key_version(&self, key: &KeyVersionRecord) -> Result<(), StoreError> {
                const OP: &str = "insert_key_version";
                let seal_count = to_i64(OP, key.seal_count, "seal count")?;
                let mut tx = self.begin_write(OP).await?;
                sqlx::query(INSERT_KEY)
                    .bind(key.tenant_id.as_str())
                    .bind(version_param(key.version))
                    .bind(&key.wrapped_dek)
                    .bind(&key.kms_key_ref)
                    .bind(seal_count)
                    .bind(key.retired)
                    .bind(key.created_at_ms)
                    .execute(&mut *tx)
                    .await
                    .map_err(constraint_err(OP, "key version", "tenant"))?;
                sqlx::query(RETIRE_OLDER_KEYS)
                    .bind(key.tenant_id.as_str())
                    .bind(version_param(key.version))
                    .execute(&mut *tx)
                    .await
                    .map_err(db_err(OP))?;
                tx.commit().await.map_err(db_err(OP))
            }

            async fn get_key_version(
                &self,
                tenant: &TenantId,
                version: DekVersion,
            ) -> Result<Option<KeyVersionRecord>, StoreError> {
                let row = sqlx::query(GET_KEY)
                    .bind(tenant.as_str())
                    .bind(version_param(version))
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(db_err("get_key_version"))?;
                row.as_ref().map(Self::key_from_row).transpose()
            }

            async fn list_key_versions(
                &self,
                tenant: &TenantId,
            ) -> Result<Vec<KeyVersionRecord>, StoreError> {
                let rows = sqlx::query(LIST_KEYS)
                    .bind(tenant.as_str())
                    .fetch_all(&self.pool)
                    .await
                    .map_err(db_err("list_key_versions"))?;
                rows.iter().map(Self::key_from_row).collect()
            }

            async fn current_key_version(
                &self,
                tenant: &TenantId,
            ) -> Result<Option<KeyVersionRecord>, StoreError> {
                let row = sqlx::query(CURRENT_KEY)
                    .bind(tenant.as_str())
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(db_err("current_key_version"))?;
                row.as_ref().map(Self::key_from_row).transpose()
            }

            async fn reserve_seals(
                &self,
                tenant: &TenantId,
                version: DekVersion,
                wanted: u64,
                bound: u64,
            ) -> Result<SealReservation, StoreError> {
                const OP: &str = "reserve_seals";
                const T: &str = "tenant_keys";
                // The count is stored as BIGINT: a bound above i64::MAX is i64::MAX.
                let bound = bound.min(i64::MAX.unsigned_abs());
                for _ in 0..MAX_CAS_ROUNDS {
                    let row = sqlx::query(SEAL_STATE)
                        .bind(tenant.as_str())
                        .bind(version_param(version))
                        .fetch_optional(&self.pool)
                        .await
                        .map_err(db_err(OP))?
                        .ok_or(StoreError::NotFound("key version"))?;
                    let count =
                        to_u64(T, Self::col(&row, T, "seal_count")?, "negative seal count")?;
                    let retired: bool = Self::col(&row, T, "retired")?;
                    if retired {
                        return Ok(SealReservation::Exhausted);
                    }
                    if count >= bound {
                        sqlx::query(RETIRE_KEY)
                            .bind(tenant.as_str())
                            .bind(version_param(version))
                            .execute(&self.pool)
                            .await
                            .map_err(db_err(OP))?;
                        return Ok(SealReservation::Exhausted);
                    }
                    let granted = wanted.min(bound - count);
                    if granted == 0 {
                        return Ok(SealReservation::Granted(0));
                    }
                    let done = sqlx::query(CAS_SEAL_COUNT)
                        .bind(tenant.as_str())
                        .bind(version_param(version))
                        .bind(to_i64(OP, count + granted, "seal count")?)
                        .bind(to_i64(OP, count, "seal count")?)
                        .execute(&self.pool)
                        .await
                        .map_err(db_err(OP))?;
                    if done.rows_affected() == 1 {
                        return Ok(SealReservation::Granted(granted));
                    }
                    // Another reservation (or a retirement) won the race: read again.
                    tokio::task::yield_now().await;
                }
                Err(StoreError::Unavailable(format!(
                    "{OP}: gave up after {MAX_CAS_ROUNDS} contended rounds"
                )))
            }

            async fn replace_wrapped_dek(
                &self,
                tenant: &TenantId,
                version: DekVersion,
                old: &str,
                new: &str,
            ) -> Result<bool, StoreError> {
                let done = sqlx::query(CAS_WRAPPED_DEK)
                    .bind(tenant.as_str())
                    .bind(version_param(version))
                    .bind(new)
                    .bind(old)
                    .execute(&self.pool)
                    .await
                    .map_err(db_err("replace_wrapped_dek"))?;
                Ok(done.rows_affected() == 1)
            }

            // --- inboxes ---------------------------------------------------------------

            async fn create_inbox(&self, inbox: &NewInbox) -> Result<InboxRecord, StoreError> {
                let created_at_ms = now_ms();
                sqlx::query(INSERT_INBOX)
                    .bind(&inbox.id)
                    .bind(inbox.tenant_id.as_str())
                    .bind(&inbox.address)
                    .bind(inbox.connected_at_ms)
                    .bind(created_at_ms)
                    .execute(&self.pool)
                    .await
                    .map_err(constraint_err("create_inbox", "inbox", "tenant"))?;
                Ok(InboxRecord {
                    id: inbox.id.clone(),
                    tenant_id: inbox.tenant_id.clone(),
                    address: inbox.address.clone(),
                    history_id: None,
                    status: "connected".into(),
                    refresh_token: None,
                    connected_at_ms: inbox.connected_at_ms,
                    created_at_ms,
                })
            }

            async fn get_inbox(&self, id: &str) -> Result<Option<InboxRecord>, StoreError> {
                let row = sqlx::query(GET_INBOX)
                    .bind(id)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(db_err("get_inbox"))?;
                row.as_ref().map(Self::inbox_from_row).transpose()
            }

            async fn list_inboxes(
                &self,
                tenant: &TenantId,
            ) -> Result<Vec<InboxRecord>, StoreError> {
                let rows = sqlx::query(LIST_INBOXES)
                    .bind(tenant.as_str())
                    .fetch_all(&self.pool)
                    .await
                    .map_err(db_err("list_inboxes"))?;
                rows.iter().map(Self::inbox_from_row).collect()
            }

            // --- messages --------------------------------------------------------------

            async fn insert_message(
                &self,
                message: &NewMessage,
            ) -> Result<InsertOutcome, StoreError> {
                const OP: &str = "insert_message";
                let mut tx = self.begin_write(OP).await?;
                match Self::insert_in_tx(&mut tx, message, OP).await? {
                    TxInsert::Done(outcome @ InsertOutcome::Inserted { .. }) => {
                        sqlx::query(SOFT_DELETE_INTO_DELETED_INBOX)
                            .bind(&message.inbox_id)
                            .execute(&mut *tx)
                            .await
                            .map_err(db_err(OP))?;
                        Self::event_in_tx(
                            &mut tx, OP, MESSAGE_EVENT, &message.tenant_id, &message.id,
                            MailEventKind::MessageStored, now_ms(),
                        )
                        .await?;
                        tx.commit().await.map_err(db_err(OP))?;
                        Ok(outcome)
                    }
                    TxInsert::Done(outcome) => Ok(outcome),
                    TxInsert::Raced => {
                        // A concurrent insert of the same Gmail message committed first (or
                        // the record id is taken). Tell the two apart outside the transaction.
                        let _ = tx.rollback().await;
                        match Self::find_message_by_gmail_id(
                            &self.pool,
                            OP,
                            &message.inbox_id,
                            &message.gmail_message_id,
                        )
                        .await?
                        {
                            Some(message_id) => Ok(InsertOutcome::AlreadyStored { message_id }),
                            None => Err(StoreError::Conflict("message")),
                        }
                    }
                }
            }

            async fn get_message(
                &self,
                tenant: &TenantId,
                id: &str,
            ) -> Result<Option<StoredMessage>, StoreError> {
                const OP: &str = "get_message";
                let mut tx = self.begin_read(OP).await?;
                let Some(row) = sqlx::query(GET_MESSAGE)
                    .bind(tenant.as_str())
                    .bind(id)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(db_err(OP))?
                else {
                    return Ok(None);
                };
                let attachments = sqlx::query(LIST_ATTACHMENTS)
                    .bind(id)
                    .fetch_all(&mut *tx)
                    .await
                    .map_err(db_err(OP))?
                    .iter()
                    .map(Self::attachment_from_row)
                    .collect::<Result<Vec<_>, _>>()?;
                tx.commit().await.map_err(db_err(OP))?;
                Self::message_from_row(&row, attachments).map(Some)
            }

            async fn get_attachment_data(
                &self,
                tenant: &TenantId,
                message_id: &str,
                ordinal: u32,
            ) -> Result<Option<SealedField>, StoreError> {
                const OP: &str = "get_attachment_data";
                let row = sqlx::query(GET_ATTACHMENT_DATA)
                    .bind(tenant.as_str())
                    .bind(message_id)
                    .bind(i64::from(ordinal))
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(db_err(OP))?;
                row.map(|r| to_sealed("attachments", Self::col(&r, "attachments", "data")?))
                    .transpose()
            }

            async fn list_message_ids(
                &self,
                tenant: &TenantId,
                inbox_id: &str,
                limit: u32,
            ) -> Result<Vec<String>, StoreError> {
                let rows = sqlx::query(LIST_MESSAGE_IDS)
                    .bind(tenant.as_str())
                    .bind(inbox_id)
                    .bind(i64::from(limit))
                    .fetch_all(&self.pool)
                    .await
                    .map_err(db_err("list_message_ids"))?;
                rows.iter()
                    .map(|r| Self::col::<String>(r, "messages", "id"))
                    .collect()
            }

            async fn delete_message(
                &self,
                tenant: &TenantId,
                id: &str,
            ) -> Result<bool, StoreError> {
                const OP: &str = "delete_message";
                let mut tx = self.begin_write(OP).await?;
                let Some(row) = sqlx::query(DELETE_MESSAGE)
                    .bind(tenant.as_str())
                    .bind(id)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(db_err(OP))?
                else {
                    return Ok(false);
                };
                let conversation_id: String = Self::col(&row, "messages", "conversation_id")?;
                sqlx::query(DELETE_ATTACHMENTS)
                    .bind(id)
                    .execute(&mut *tx)
                    .await
                    .map_err(db_err(OP))?;
                for statement in [COUNT_DOWN_CONVERSATION, REFRESH_CONVERSATION_DATE] {
                    sqlx::query(statement)
                        .bind(&conversation_id)
                        .execute(&mut *tx)
                        .await
                        .map_err(db_err(OP))?;
                }
                sqlx::query(DELETE_EMPTY_CONVERSATION)
                    .bind(&conversation_id)
                    .execute(&mut *tx)
                    .await
                    .map_err(db_err(OP))?;
                Self::forget_events_in_tx(&mut tx, OP, tenant, id, &conversation_id).await?;
                tx.commit().await.map_err(db_err(OP))?;
                Ok(true)
            }

            // --- lifecycle -------------------------------------------------------------

            async fn soft_delete_message(
                &self,
                tenant: &TenantId,
                id: &str,
                deletion: &Deletion,
            ) -> Result<bool, StoreError> {
                const OP: &str = "soft_delete_message";
                let mut tx = self.begin_write(OP).await?;
                let done = sqlx::query(SOFT_DELETE_MESSAGE)
                    .bind(tenant.as_str())
                    .bind(id)
                    .bind(deletion.at_ms)
                    .bind(&deletion.actor)
                    .bind(deletion.reason.as_str())
                    .execute(&mut *tx)
                    .await
                    .map_err(db_err(OP))?;
                if done.rows_affected() == 0 {
                    sqlx::query(MESSAGE_STATE)
                        .bind(tenant.as_str())
                        .bind(id)
                        .fetch_optional(&mut *tx)
                        .await
                        .map_err(db_err(OP))?
                        .ok_or(StoreError::NotFound("message"))?;
                    return Ok(false);
                }
                Self::audit_in_tx(
                    &mut tx, OP, tenant, &deletion.actor, "message.soft_delete", "message", id,
                    deletion.at_ms,
                )
                .await?;
                Self::event_in_tx(
                    &mut tx, OP, MESSAGE_EVENT, tenant, id, MailEventKind::MessageDeleted,
                    deletion.at_ms,
                )
                .await?;
                tx.commit().await.map_err(db_err(OP))?;
                Ok(true)
            }

            async fn soft_delete_conversation(
                &self,
                tenant: &TenantId,
                conversation_id: &str,
                deletion: &Deletion,
            ) -> Result<Vec<String>, StoreError> {
                const OP: &str = "soft_delete_conversation";
                let mut tx = self.begin_write(OP).await?;
                sqlx::query(CONVERSATION_INBOX)
                    .bind(tenant.as_str())
                    .bind(conversation_id)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(db_err(OP))?
                    .ok_or(StoreError::NotFound("conversation"))?;
                let ids = Self::soft_delete_returning(
                    &mut tx, OP, SOFT_DELETE_CONVERSATION, tenant, conversation_id, deletion,
                )
                .await?;
                if ids.is_empty() {
                    return Ok(ids);
                }
                Self::audit_in_tx(
                    &mut tx, OP, tenant, &deletion.actor, "conversation.soft_delete",
                    "conversation", conversation_id, deletion.at_ms,
                )
                .await?;
                Self::event_in_tx(
                    &mut tx, OP, CONVERSATION_EVENT, tenant, conversation_id,
                    MailEventKind::ConversationDeleted, deletion.at_ms,
                )
                .await?;
                tx.commit().await.map_err(db_err(OP))?;
                Ok(ids)
            }

            async fn soft_delete_inbox(
                &self,
                tenant: &TenantId,
                inbox_id: &str,
                deletion: &Deletion,
            ) -> Result<Vec<String>, StoreError> {
                const OP: &str = "soft_delete_inbox";
                let mut tx = self.begin_write(OP).await?;
                let marked = sqlx::query(MARK_INBOX_DELETED)
                    .bind(tenant.as_str())
                    .bind(inbox_id)
                    .bind(deletion.at_ms)
                    .bind(&deletion.actor)
                    .execute(&mut *tx)
                    .await
                    .map_err(db_err(OP))?
                    .rows_affected();
                if marked == 0 {
                    // Already deleted, or not an inbox of this tenant.
                    sqlx::query(INBOX_OF_TENANT)
                        .bind(tenant.as_str())
                        .bind(inbox_id)
                        .fetch_optional(&mut *tx)
                        .await
                        .map_err(db_err(OP))?
                        .ok_or(StoreError::NotFound("inbox"))?;
                }
                let ids = Self::soft_delete_returning(
                    &mut tx, OP, SOFT_DELETE_INBOX_MESSAGES, tenant, inbox_id, deletion,
                )
                .await?;
                if marked == 0 && ids.is_empty() {
                    return Ok(ids);
                }
                Self::audit_in_tx(
                    &mut tx, OP, tenant, &deletion.actor, "inbox.soft_delete", "inbox", inbox_id,
                    deletion.at_ms,
                )
                .await?;
                tx.commit().await.map_err(db_err(OP))?;
                Ok(ids)
            }

            async fn restore_message(
                &self,
                tenant: &TenantId,
                id: &str,
                actor: &str,
                not_before_ms: UnixMillis,
                now_ms: UnixMillis,
            ) -> Result<RestoreOutcome, StoreError> {
                const OP: &str = "restore_message";
                const T: &str = "messages";
                let mut tx = self.begin_write(OP).await?;
                let row = sqlx::query(MESSAGE_STATE)
                    .bind(tenant.as_str())
                    .bind(id)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(db_err(OP))?
                    .ok_or(StoreError::NotFound("message"))?;
                let inbox_id: String = Self::col(&row, T, "inbox_id")?;
                let deleted_at: Option<i64> = Self::col(&row, T, "deleted_at_ms")?;
                let Some(deleted_at) = deleted_at else {
                    return Ok(RestoreOutcome::default());
                };
                Self::refuse_deleted_inbox(&mut tx, OP, tenant, &inbox_id).await?;
                if deleted_at <= not_before_ms {
                    return Ok(RestoreOutcome { restored: 0, expired: 1 });
                }
                let restored = sqlx::query(RESTORE_MESSAGE)
                    .bind(tenant.as_str())
                    .bind(id)
                    .bind(not_before_ms)
                    .execute(&mut *tx)
                    .await
                    .map_err(db_err(OP))?
                    .rows_affected();
                if restored > 0 {
                    Self::audit_in_tx(
                        &mut tx, OP, tenant, actor, "message.restore", "message", id, now_ms,
                    )
                    .await?;
                    Self::event_in_tx(
                        &mut tx, OP, MESSAGE_EVENT, tenant, id, MailEventKind::MessageRestored,
                        now_ms,
                    )
                    .await?;
                }
                tx.commit().await.map_err(db_err(OP))?;
                Ok(RestoreOutcome { restored, expired: 0 })
            }

            async fn restore_conversation(
                &self,
                tenant: &TenantId,
                conversation_id: &str,
                actor: &str,
                not_before_ms: UnixMillis,
                now_ms: UnixMillis,
            ) -> Result<RestoreOutcome, StoreError> {
                const OP: &str = "restore_conversation";
                let mut tx = self.begin_write(OP).await?;
                let row = sqlx::query(CONVERSATION_INBOX)
                    .bind(tenant.as_str())
                    .bind(conversation_id)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(db_err(OP))?
                    .ok_or(StoreError::NotFound("conversation"))?;
                let inbox_id: String = Self::col(&row, "conversations", "inbox_id")?;
                Self::refuse_deleted_inbox(&mut tx, OP, tenant, &inbox_id).await?;
                let restored = sqlx::query(RESTORE_CONVERSATION)
                    .bind(tenant.as_str())
                    .bind(conversation_id)
                    .bind(not_before_ms)
                    .execute(&mut *tx)
                    .await
                    .map_err(db_err(OP))?
                    .rows_affected();
                let expired: i64 = {
                    let row = sqlx::query(COUNT_EXPIRED_IN_CONVERSATION)
                        .bind(tenant.as_str())
                        .bind(conversation_id)
                        .bind(not_before_ms)
                        .fetch_one(&mut *tx)
                        .await
                        .map_err(db_err(OP))?;
                    Self::col(&row, "messages", "n")?
                };
                let expired = to_u64("messages", expired, "negative count")?;
                if restored > 0 {
                    Self::audit_in_tx(
                        &mut tx, OP, tenant, actor, "conversation.restore", "conversation",
                        conversation_id, now_ms,
                    )
                    .await?;
                    Self::event_in_tx(
                        &mut tx, OP, CONVERSATION_EVENT, tenant, conversation_id,
                        MailEventKind::ConversationRestored, now_ms,
                    )
                    .await?;
                    tx.commit().await.map_err(db_err(OP))?;
                }
                Ok(RestoreOutcome { restored, expired })
            }

            async fn list_purge_candidates(
                &self,
                tenant: &TenantId,
                deleted_before_ms: UnixMillis,
                after_id: Option<&str>,
                limit: u32,
            ) -> Result<Vec<PurgeCandidate>, StoreError> {
                const T: &str = "messages";
                let rows = sqlx::query(PURGE_CANDIDATES)
                    .bind(tenant.as_str())
                    .bind(deleted_before_ms)
                    .bind(after_id.unwrap_or(""))
                    .bind(i64::from(limit))
                    .fetch_all(&self.pool)
                    .await
                    .map_err(db_err("list_purge_candidates"))?;
                rows.iter()
                    .map(|row| {
                        Ok(PurgeCandidate {
                            message_id: Self::col(row, T, "id")?,
                            conversation_id: Self::col(row, T, "conversation_id")?,
                            inbox_id: Self::col(row, T, "inbox_id")?,
                            deleted_at_ms: Self::col(row, T, "deleted_at_ms")?,
                            index_pending: Self::col(row, T, "index_pending")?,
                        })
                    })
                    .collect()
            }

            async fn purge_messages(
                &self,
                tenant: &TenantId,
                ids: &[String],
                deleted_before_ms: UnixMillis,
                actor: &str,
                now_ms: UnixMillis,
            ) -> Result<PurgeOutcome, StoreError> {
                const OP: &str = "purge_messages";
                let mut outcome = PurgeOutcome::default();
                if ids.is_empty() {
                    return Ok(outcome);
                }
                let mut tx = self.begin_write(OP).await?;
                for id in ids {
                    let Some(row) = sqlx::query(PURGE_MESSAGE)
                        .bind(tenant.as_str())
                        .bind(id)
                        .bind(deleted_before_ms)
                        .fetch_optional(&mut *tx)
                        .await
                        .map_err(db_err(OP))?
                    else {
                        continue;
                    };
                    let conversation_id: String =
                        Self::col(&row, "messages", "conversation_id")?;
                    sqlx::query(DELETE_ATTACHMENTS)
                        .bind(id)
                        .execute(&mut *tx)
                        .await
                        .map_err(db_err(OP))?;
                    for statement in [COUNT_DOWN_CONVERSATION, REFRESH_CONVERSATION_DATE] {
                        sqlx::query(statement)
                            .bind(&conversation_id)
                            .execute(&mut *tx)
                            .await
                            .map_err(db_err(OP))?;
                    }
                    outcome.conversations += sqlx::query(DELETE_EMPTY_CONVERSATION)
                        .bind(&conversation_id)
                        .execute(&mut *tx)
                        .await
                        .map_err(db_err(OP))?
                        .rows_affected();
                    Self::forget_events_in_tx(&mut tx, OP, tenant, id, &conversation_id).await?;
                    outcome.messages += 1;
                    Self::audit_in_tx(
                        &mut tx, OP, tenant, actor, "message.purge", "message", id, now_ms,
                    )
                    .await?;
                }
                tx.commit().await.map_err(db_err(OP))?;
                Ok(outcome)
            }

            async fn list_conversations_older_than(
                &self,
                tenant: &TenantId,
                before_ms: UnixMillis,
                after_id: Option<&str>,
                limit: u32,
            ) -> Result<Vec<ConversationAge>, StoreError> {
                const T: &str = "conversations";
                let rows = sqlx::query(OLD_CONVERSATIONS)
                    .bind(tenant.as_str())
                    .bind(before_ms)
                    .bind(after_id.unwrap_or(""))
                    .bind(i64::from(limit))
                    .fetch_all(&self.pool)
                    .await
                    .map_err(db_err("list_conversations_older_than"))?;
                rows.iter()
                    .map(|row| {
                        Ok(ConversationAge {
                            conversation_id: Self::col(row, T, "id")?,
                            inbox_id: Self::col(row, T, "inbox_id")?,
                            last_message_at_ms: Self::col(row, T, "last_message_at_ms")?,
                        })
                    })
                    .collect()
            }

            async fn mark_removed_from_index(
                &self,
                tenant: &TenantId,
                ids: &[String],
            ) -> Result<(), StoreError> {
                const OP: &str = "mark_removed_from_index";
                if ids.is_empty() {
                    return Ok(());
                }
                let mut tx = self.begin_write(OP).await?;
                for chunk in ids.chunks(500) {
                    let mut q = sqlx::QueryBuilder::<$db>::new(
                        "UPDATE messages SET index_pending = FALSE WHERE deleted_at_ms IS NOT NULL \
                         AND tenant_id = ",
                    );
                    q.push_bind(tenant.as_str());
                    q.push(" AND id IN (");
                    let mut list = q.separated(", ");
                    for id in chunk {
                        list.push_bind(id.as_str());
                    }
                    q.push(")");
                    q.build().execute(&mut *tx).await.map_err(db_err(OP))?;
                }
                tx.commit().await.map_err(db_err(OP))
            }

            // --- push and sync ---------------------------------------------------------

            async fn find_inboxes_by_address(
                &self,
                address: &str,
            ) -> Result<Vec<InboxRecord>, StoreError> {
                let rows = sqlx::query(FIND_INBOXES_BY_ADDRESS)
                    .bind(address)
                    .fetch_all(&self.pool)
                    .await
                    .map_err(db_err("find_inboxes_by_address"))?;
                rows.iter().map(Self::inbox_from_row).collect()
            }

            async fn enqueue_sync_job(
                &self,
                job: &NewSyncJob,
            ) -> Result<EnqueueOutcome, StoreError> {
                const OP: &str = "enqueue_sync_job";
                const T: &str = "inboxes";
                let history_id = to_i64(OP, job.history_id, "history id")?;
                let mut tx = self.begin_write(OP).await?;
                let row = sqlx::query(INBOX_MARK)
                    .bind(&job.inbox_id)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(db_err(OP))?
                    .ok_or(StoreError::NotFound("inbox"))?;
                let owner: String = Self::col(&row, T, "tenant_id")?;
                if owner != job.tenant_id.as_str() {
                    return Err(StoreError::NotFound("inbox"));
                }
                let mark = to_opt_u64(T, Self::col(&row, T, "history_id")?, "negative history id")?;
                if mark.is_some_and(|m| job.history_id <= m) {
                    return Ok(EnqueueOutcome::Replay);
                }
                if let Some(pubsub_id) = &job.pubsub_message_id {
                    let seen = sqlx::query(FIND_JOB_BY_PUBSUB_ID)
                        .bind(&job.inbox_id)
                        .bind(pubsub_id)
                        .fetch_optional(&mut *tx)
                        .await
                        .map_err(db_err(OP))?;
                    if seen.is_some() {
                        return Ok(EnqueueOutcome::Duplicate);
                    }
                }
                let inserted = sqlx::query(INSERT_JOB)
                    .bind(&job.id)
                    .bind(job.tenant_id.as_str())
                    .bind(&job.inbox_id)
                    .bind(job.pubsub_message_id.as_deref())
                    .bind(history_id)
                    .bind(now_ms())
                    .execute(&mut *tx)
                    .await;
                match inserted {
                    Ok(_) => {
                        tx.commit().await.map_err(db_err(OP))?;
                        Ok(EnqueueOutcome::Enqueued)
                    }
                    // A concurrent delivery of the same Pub/Sub message won.
                    Err(e) if is_unique_violation(&e) => Ok(EnqueueOutcome::Duplicate),
                    Err(e) => Err(constraint_err(OP, "sync job", "inbox")(e)),
                }
            }

            async fn claim_sync_jobs(
                &self,
                tenant: &TenantId,
                limit: u32,
                now_ms: UnixMillis,
                lease_ms: i64,
            ) -> Result<Vec<SyncJob>, StoreError> {
                const OP: &str = "claim_sync_jobs";
                const T: &str = "sync_jobs";
                let mut tx = self.begin_write(OP).await?;
                let rows = sqlx::query(concat!(claim_select!(), $lock_rows))
                    .bind(tenant.as_str())
                    .bind(now_ms)
                    .bind(now_ms.saturating_sub(lease_ms))
                    .bind(i64::from(limit))
                    .fetch_all(&mut *tx)
                    .await
                    .map_err(db_err(OP))?;
                let mut jobs = Vec::with_capacity(rows.len());
                for row in &rows {
                    let id: String = Self::col(row, T, "id")?;
                    sqlx::query(MARK_JOB_RUNNING)
                        .bind(&id)
                        .bind(now_ms)
                        .execute(&mut *tx)
                        .await
                        .map_err(db_err(OP))?;
                    let attempts =
                        to_u32(T, Self::col(row, T, "attempts")?, "attempts out of range")?;
                    jobs.push(SyncJob {
                        id,
                        tenant_id: to_tenant(T, Self::col(row, T, "tenant_id")?)?,
                        inbox_id: Self::col(row, T, "inbox_id")?,
                        history_id: to_u64(
                            T,
                            Self::col(row, T, "history_id")?,
                            "negative history id",
                        )?,
                        attempts: attempts.saturating_add(1),
                    });
                }
                tx.commit().await.map_err(db_err(OP))?;
                Ok(jobs)
            }

            async fn complete_sync_jobs(&self, ids: &[String]) -> Result<(), StoreError> {
                self.update_jobs("complete_sync_jobs", ids, MARK_JOB_DONE, None, None)
                    .await
            }

            async fn retry_sync_jobs(
                &self,
                ids: &[String],
                available_at_ms: UnixMillis,
                error_kind: &str,
            ) -> Result<(), StoreError> {
                self.update_jobs(
                    "retry_sync_jobs",
                    ids,
                    MARK_JOB_PENDING,
                    Some(available_at_ms),
                    Some(error_kind),
                )
                .await
            }

            async fn fail_sync_jobs(
                &self,
                ids: &[String],
                error_kind: &str,
            ) -> Result<(), StoreError> {
                self.update_jobs(
                    "fail_sync_jobs",
                    ids,
                    MARK_JOB_FAILED,
                    None,
                    Some(error_kind),
                )
                .await
            }

            async fn store_synced_messages(
                &self,
                tenant: &TenantId,
                inbox_id: &str,
                messages: &[NewMessage],
                history_id: Option<u64>,
            ) -> Result<Vec<InsertOutcome>, StoreError> {
                const OP: &str = "store_synced_messages";
                let history_id = history_id
                    .map(|h| to_i64(OP, h, "history id"))
                    .transpose()?;
                if messages
                    .iter()
                    .any(|m| m.inbox_id != inbox_id || &m.tenant_id != tenant)
                {
                    return Err(StoreError::Database {
                        op: OP,
                        message: "every message of a batch must belong to the batch's inbox".into(),
                    });
                }
                let mut tx = self.begin_write(OP).await?;
                let outcomes = match Self::insert_batch_in_tx(&mut tx, tenant, inbox_id, messages, OP).await? {
                    Some(outcomes) => outcomes,
                    None => {
                        let _ = tx.rollback().await;
                        return Err(StoreError::Conflict("message"));
                    }
                };
                if let Some(history_id) = history_id {
                    let done = sqlx::query(ADVANCE_HISTORY)
                        .bind(inbox_id)
                        .bind(history_id)
                        .bind(tenant.as_str())
                        .bind(now_ms())
                        .execute(&mut *tx)
                        .await
                        .map_err(db_err(OP))?;
                    if done.rows_affected() == 0 {
                        return Err(StoreError::NotFound("inbox"));
                    }
                }
                // After the inbox row is locked (PostgreSQL): a concurrent inbox delete that
                // committed first is seen here, one that waits for us soft-deletes ours.
                sqlx::query(SOFT_DELETE_INTO_DELETED_INBOX)
                    .bind(inbox_id)
                    .execute(&mut *tx)
                    .await
                    .map_err(db_err(OP))?;
                let at_ms = now_ms();
                for (m, outcome) in messages.iter().zip(&outcomes) {
                    if matches!(outcome, InsertOutcome::Inserted { .. }) {
                        Self::event_in_tx(
                            &mut tx, OP, MESSAGE_EVENT, tenant, &m.id,
                            MailEventKind::MessageStored, at_ms,
                        )
                        .await?;
                    }
                }
                tx.commit().await.map_err(db_err(OP))?;
                Ok(outcomes)
            }

            async fn stored_gmail_ids(
                &self,
                inbox_id: &str,
                gmail_ids: &[String],
            ) -> Result<Vec<String>, StoreError> {
                let mut found = Vec::new();
                for chunk in gmail_ids.chunks(500) {
                    let mut query = sqlx::QueryBuilder::<$db>::new(
                        "SELECT gmail_message_id FROM messages WHERE inbox_id = ",
                    );
                    query.push_bind(inbox_id);
                    query.push(" AND gmail_message_id IN (");
                    let mut list = query.separated(", ");
                    for id in chunk {
                        list.push_bind(id);
                    }
                    query.push(")");
                    let rows = query
                        .build()
                        .fetch_all(&self.pool)
                        .await
                        .map_err(db_err("stored_gmail_ids"))?;
                    for row in &rows {
                        found.push(Self::col::<String>(row, "messages", "gmail_message_id")?);
                    }
                }
                Ok(found)
            }

            async fn latest_message_date(
                &self,
                inbox_id: &str,
            ) -> Result<Option<UnixMillis>, StoreError> {
                let row = sqlx::query(LATEST_MESSAGE_DATE)
                    .bind(inbox_id)
                    .fetch_one(&self.pool)
                    .await
                    .map_err(db_err("latest_message_date"))?;
                Self::col(&row, "messages", "latest")
            }

            async fn set_inbox_status(
                &self,
                inbox_id: &str,
                status: InboxStatus,
            ) -> Result<(), StoreError> {
                let done = sqlx::query(SET_INBOX_STATUS)
                    .bind(inbox_id)
                    .bind(status.as_str())
                    .execute(&self.pool)
                    .await
                    .map_err(db_err("set_inbox_status"))?;
                if done.rows_affected() == 0 {
                    return Err(StoreError::NotFound("inbox"));
                }
                Ok(())
            }

            async fn set_refresh_token(
                &self,
                inbox_id: &str,
                token: &SealedField,
            ) -> Result<(), StoreError> {
                let done = sqlx::query(SET_REFRESH_TOKEN)
                    .bind(inbox_id)
                    .bind(token.as_bytes())
                    .execute(&self.pool)
                    .await
                    .map_err(db_err("set_refresh_token"))?;
                if done.rows_affected() == 0 {
                    return Err(StoreError::NotFound("inbox"));
                }
                Ok(())
            }

            async fn replace_refresh_token(
                &self,
                inbox_id: &str,
                old: &SealedField,
                new: &SealedField,
            ) -> Result<bool, StoreError> {
                let done = sqlx::query(CAS_REFRESH_TOKEN)
                    .bind(inbox_id)
                    .bind(new.as_bytes())
                    .bind(old.as_bytes())
                    .execute(&self.pool)
                    .await
                    .map_err(db_err("replace_refresh_token"))?;
                Ok(done.rows_affected() == 1)
            }

            // --- audit -----------------------------------------------------------------

            // --- search ------------------------------------------------------------------

            async fn insert_index_key(&self, key: &IndexKeyRecord) -> Result<(), StoreError> {
                const OP: &str = "insert_index_key";
                sqlx::query(INSERT_INDEX_KEY)
                    .bind(key.tenant_id.as_str())
                    .bind(i64::from(key.version))
                    .bind(&key.wrapped_key)
                    .bind(&key.kms_key_ref)
                    .bind(key.created_at_ms)
                    .bind(IndexKeyState::Active.as_str())
                    .bind(i64::from(key.normalization))
                    .bind(key.mode.as_str())
                    .execute(&self.pool)
                    .await
                    .map_err(constraint_err(OP, "index key version", "tenant"))?;
                Ok(())
            }

            async fn current_index_key(
                &self,
                tenant: &TenantId,
            ) -> Result<Option<IndexKeyRecord>, StoreError> {
                let row = sqlx::query(CURRENT_INDEX_KEY)
                    .bind(tenant.as_str())
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(db_err("current_index_key"))?;
                row.as_ref().map(Self::index_key_from_row).transpose()
            }

            async fn list_index_keys(
                &self,
                tenant: &TenantId,
            ) -> Result<Vec<IndexKeyRecord>, StoreError> {
                let rows = sqlx::query(LIST_INDEX_KEYS)
                    .bind(tenant.as_str())
                    .fetch_all(&self.pool)
                    .await
                    .map_err(db_err("list_index_keys"))?;
                rows.iter().map(Self::index_key_from_row).collect()
            }

            async fn start_index_key_rotation(
                &self,
                key: &IndexKeyRecord,
            ) -> Result<u64, StoreError> {
                const OP: &str = "start_index_key_rotation";
                let mut tx = self.begin_write(OP).await?;
                let live = Self::live_index_keys(&mut tx, &key.tenant_id, OP).await?;
                if live.active.is_none() {
                    return Err(StoreError::Conflict(
                        "the tenant has no active index key to rotate from",
                    ));
                }
                if live.building.is_some() {
                    return Err(StoreError::Conflict(
                        "an index key rotation is already in progress",
                    ));
                }
                sqlx::query(INSERT_INDEX_KEY)
                    .bind(key.tenant_id.as_str())
                    .bind(i64::from(key.version))
                    .bind(&key.wrapped_key)
                    .bind(&key.kms_key_ref)
                    .bind(key.created_at_ms)
                    .bind(IndexKeyState::Building.as_str())
                    .bind(i64::from(key.normalization))
                    .bind(key.mode.as_str())
                    .execute(&mut *tx)
                    .await
                    .map_err(constraint_err(OP, "index key version", "tenant"))?;
                let marked = sqlx::query(MARK_ALL_FOR_REINDEX)
                    .bind(key.tenant_id.as_str())
                    .execute(&mut *tx)
                    .await
                    .map_err(db_err(OP))?
                    .rows_affected();
                tx.commit().await.map_err(db_err(OP))?;
                Ok(marked)
            }

            async fn finish_index_key_rotation(
                &self,
                tenant: &TenantId,
                building: u32,
            ) -> Result<bool, StoreError> {
                const OP: &str = "finish_index_key_rotation";
                let mut tx = self.begin_write(OP).await?;
                let live = Self::live_index_keys(&mut tx, tenant, OP).await?;
                if live.building != Some(building) {
                    return Ok(false);
                }
                let pending: i64 = {
                    let row = sqlx::query(ANY_PENDING_INDEX)
                        .bind(tenant.as_str())
                        .fetch_one(&mut *tx)
                        .await
                        .map_err(db_err(OP))?;
                    Self::col(&row, "messages", "n")?
                };
                if pending > 0 {
                    return Ok(false);
                }
                for (sql, bind_version) in [
                    (RETIRE_ACTIVE_INDEX_KEY, false),
                    (ACTIVATE_INDEX_KEY, true),
                    (MARK_ALL_FOR_REINDEX, false),
                ] {
                    let mut q = sqlx::query(sql).bind(tenant.as_str());
                    if bind_version {
                        q = q.bind(i64::from(building));
                    }
                    q.execute(&mut *tx).await.map_err(db_err(OP))?;
                }
                tx.commit().await.map_err(db_err(OP))?;
                Ok(true)
            }

            async fn replace_wrapped_index_key(
                &self,
                tenant: &TenantId,
                version: u32,
                old: &str,
                new: &str,
            ) -> Result<bool, StoreError> {
                let done = sqlx::query(CAS_WRAPPED_INDEX_KEY)
                    .bind(tenant.as_str())
                    .bind(i64::from(version))
                    .bind(new)
                    .bind(old)
                    .execute(&self.pool)
                    .await
                    .map_err(db_err("replace_wrapped_index_key"))?;
                Ok(done.rows_affected() == 1)
            }

            async fn retired_index_terms_left(
                &self,
                tenant: &TenantId,
            ) -> Result<bool, StoreError> {
                let row = sqlx::query(RETIRED_INDEX_TERMS_LEFT)
                    .bind(tenant.as_str())
                    .fetch_one(&self.pool)
                    .await
                    .map_err(db_err("retired_index_terms_left"))?;
                Ok(Self::col::<i64>(&row, "tenant_index_keys", "n")? > 0)
            }

            async fn clear_retired_index_terms(&self, tenant: &TenantId) -> Result<(), StoreError> {
                sqlx::query(CLEAR_RETIRED_INDEX_TERMS)
                    .bind(tenant.as_str())
                    .execute(&self.pool)
                    .await
                    .map_err(db_err("clear_retired_index_terms"))?;
                Ok(())
            }

            async fn pending_index_after(
                &self,
                tenant: &TenantId,
                after: &str,
                limit: u32,
            ) -> Result<Vec<String>, StoreError> {
                let rows = sqlx::query(PENDING_INDEX)
                    .bind(tenant.as_str())
                    .bind(after)
                    .bind(i64::from(limit))
                    .fetch_all(&self.pool)
                    .await
                    .map_err(db_err("pending_index"))?;
                rows.iter()
                    .map(|r| Self::col::<String>(r, "messages", "id"))
                    .collect()
            }

            async fn mark_indexed(
                &self,
                tenant: &TenantId,
                ids: &[String],
                keys: Option<IndexKeySet>,
            ) -> Result<bool, StoreError> {
                const OP: &str = "mark_indexed";
                if ids.is_empty() {
                    return Ok(true);
                }
                let mut tx = self.begin_write(OP).await?;
                if let Some(expected) = keys {
                    if Self::live_index_keys(&mut tx, tenant, OP).await? != expected {
                        return Ok(false);
                    }
                }
                for id in ids {
                    sqlx::query(MARK_INDEXED)
                        .bind(tenant.as_str())
                        .bind(id)
                        .execute(&mut *tx)
                        .await
                        .map_err(db_err(OP))?;
                }
                tx.commit().await.map_err(db_err(OP))?;
                Ok(true)
            }

            async fn mark_all_for_reindex(&self, tenant: &TenantId) -> Result<u64, StoreError> {
                let done = sqlx::query(MARK_ALL_FOR_REINDEX)
                    .bind(tenant.as_str())
                    .execute(&self.pool)
                    .await
                    .map_err(db_err("mark_all_for_reindex"))?;
                Ok(done.rows_affected())
            }

            async fn index_progress(&self, tenant: &TenantId) -> Result<(u64, u64), StoreError> {
                const T: &str = "messages";
                let row = sqlx::query(INDEX_PROGRESS)
                    .bind(tenant.as_str())
                    .fetch_one(&self.pool)
                    .await
                    .map_err(db_err("index_progress"))?;
                let pending: i64 = Self::col(&row, T, "pending")?;
                let total: i64 = Self::col(&row, T, "total")?;
                Ok((
                    to_u64(T, pending, "negative count")?,
                    to_u64(T, total, "negative count")?,
                ))
            }

            async fn append_audit_event(&self, event: &AuditEvent) -> Result<(), StoreError> {
                sqlx::query(INSERT_AUDIT)
                    .bind(event.tenant_id.as_str())
                    .bind(event.at_ms)
                    .bind(&event.actor)
                    .bind(&event.action)
                    .bind(&event.target_kind)
                    .bind(&event.target_id)
                    .execute(&self.pool)
                    .await
                    .map_err(db_err("append_audit_event"))?;
                Ok(())
            }

            async fn list_audit_events(
                &self,
                tenant: &TenantId,
                limit: u32,
            ) -> Result<Vec<AuditEvent>, StoreError> {
                const T: &str = "audit_events";
                let rows = sqlx::query(LIST_AUDIT)
                    .bind(tenant.as_str())
                    .bind(i64::from(limit))
                    .fetch_all(&self.pool)
                    .await
                    .map_err(db_err("list_audit_events"))?;
                rows.iter()
                    .map(|row| {
                        Ok(AuditEvent {
                            tenant_id: to_tenant(T, Self::col(row, T, "tenant_id")?)?,
                            at_ms: Self::col(row, T, "at_ms")?,
                            actor: Self::col(row, T, "actor")?,
                            action: Self::col(row, T, "action")?,
                            target_kind: Self::col(row, T, "target_kind")?,
                            target_id: Self::col(row, T, "target_id")?,
                        })
                    })
                    .collect()
            }

            async fn add_search_tombstone(
                &self,
                tombstone: &SearchTombstone,
            ) -> Result<(), StoreError> {
                const OP: &str = "add_search_tombstone";
                let opstamp = tombstone
                    .delete_opstamp
                    .map(|o| to_i64(OP, o, "delete opstamp"))
                    .transpose()?;
                sqlx::query(INSERT_TOMBSTONE)
                    .bind(&tombstone.id)
                    .bind(tombstone.tenant_id.as_str())
                    .bind(tombstone.scope.as_str())
                    .bind(&tombstone.scope_id)
                    .bind(to_i64(OP, tombstone.cutoff_version, "cutoff version")?)
                    .bind(opstamp)
                    .bind(tombstone.created_at_ms)
                    .execute(&self.pool)
                    .await
                    .map_err(constraint_err(OP, "search tombstone exists", "tenant"))?;
                Ok(())
            }

            async fn set_search_tombstone_opstamp(
                &self,
                tenant: &TenantId,
                id: &str,
                opstamp: u64,
            ) -> Result<bool, StoreError> {
                const OP: &str = "set_search_tombstone_opstamp";
                let done = sqlx::query(SET_TOMBSTONE_OPSTAMP)
                    .bind(tenant.as_str())
                    .bind(id)
                    .bind(to_i64(OP, opstamp, "delete opstamp")?)
                    .execute(&self.pool)
                    .await
                    .map_err(db_err(OP))?;
                Ok(done.rows_affected() > 0)
            }

            async fn list_search_tombstones(
                &self,
                tenant: &TenantId,
            ) -> Result<Vec<SearchTombstone>, StoreError> {
                const T: &str = "search_tombstones";
                let rows = sqlx::query(LIST_TOMBSTONES)
                    .bind(tenant.as_str())
                    .fetch_all(&self.pool)
                    .await
                    .map_err(db_err("list_search_tombstones"))?;
                rows.iter()
                    .map(|row| {
                        let kind: String = Self::col(row, T, "scope_kind")?;
                        Ok(SearchTombstone {
                            id: Self::col(row, T, "id")?,
                            tenant_id: to_tenant(T, Self::col(row, T, "tenant_id")?)?,
                            scope: TombstoneScope::parse(&kind).ok_or(StoreError::Corrupt {
                                table: T,
                                reason: "unknown tombstone scope",
                            })?,
                            scope_id: Self::col(row, T, "scope_id")?,
                            cutoff_version: to_u64(
                                T,
                                Self::col(row, T, "cutoff_version")?,
                                "negative cutoff version",
                            )?,
                            delete_opstamp: to_opt_u64(
                                T,
                                Self::col(row, T, "delete_opstamp")?,
                                "negative delete opstamp",
                            )?,
                            created_at_ms: Self::col(row, T, "created_at_ms")?,
                        })
                    })
                    .collect()
            }

            async fn remove_applied_search_tombstones(
                &self,
                tenant: &TenantId,
                applied_through: u64,
            ) -> Result<u64, StoreError> {
                const OP: &str = "remove_applied_search_tombstones";
                // Opstamps above i64::MAX are never stored, so clamping keeps the meaning.
                let through = i64::try_from(applied_through).unwrap_or(i64::MAX);
                let done = sqlx::query(REMOVE_APPLIED_TOMBSTONES)
                    .bind(tenant.as_str())
                    .bind(through)
                    .execute(&self.pool)
                    .await
                    .map_err(db_err(OP))?;
                Ok(done.rows_affected())
            }

            async fn search_tombstone_tenants(&self) -> Result<Vec<TenantId>, StoreError> {
                const T: &str = "search_tombstones";
                let rows = sqlx::query(TOMBSTONE_TENANTS)
                    .fetch_all(&self.pool)
                    .await
                    .map_err(db_err("search_tombstone_tenants"))?;
                rows.iter()
                    .map(|row| to_tenant(T, Self::col(row, T, "tenant_id")?))
                    .collect()
            }

            // --- control API (implemented in sql/control.rs) ------------------------------

            async fn control_object(
                &self,
                kind: ControlKind,
                namespace: &str,
                name: &str,
            ) -> Result<Option<ControlObjectRecord>, StoreError> {
                self.ctl_object(kind, namespace, name).await
            }

            async fn apply_tenant(
                &self,
                meta: &ControlMeta,
                spec: &TenantSpec,
            ) -> Result<ApplyOutcome, StoreError> {
                self.ctl_apply_tenant(meta, spec).await
            }

            async fn delete_tenant(
                &self,
                meta: &ControlMeta,
                policy: DeletionPolicy,
            ) -> Result<ApplyOutcome, StoreError> {
                self.ctl_delete_tenant(meta, policy).await
            }

            async fn apply_inbox(
                &self,
                meta: &ControlMeta,
                spec: &InboxSpec,
            ) -> Result<ApplyOutcome, StoreError> {
                self.ctl_apply_inbox(meta, spec).await
            }

            async fn delete_inbox(&self, meta: &ControlMeta) -> Result<ApplyOutcome, StoreError> {
                self.ctl_delete_inbox(meta).await
            }

            async fn apply_grant(
                &self,
                meta: &ControlMeta,
                spec: &GrantSpec,
            ) -> Result<ApplyOutcome, StoreError> {
                self.ctl_apply_grant(meta, spec).await
            }

            async fn delete_grant(&self, meta: &ControlMeta) -> Result<ApplyOutcome, StoreError> {
                self.ctl_delete_grant(meta).await
            }

            async fn apply_retention_policy(
                &self,
                meta: &ControlMeta,
                spec: &RetentionSpec,
            ) -> Result<ApplyOutcome, StoreError> {
                self.ctl_apply_retention(meta, spec).await
            }

            async fn delete_retention_policy(
                &self,
                meta: &ControlMeta,
            ) -> Result<ApplyOutcome, StoreError> {
                self.ctl_delete_retention(meta).await
            }

            async fn tenant_settings(
                &self,
                tenant: &TenantId,
            ) -> Result<Option<TenantSettings>, StoreError> {
                self.ctl_tenant_settings(tenant).await
            }

            async fn inbox_settings(
                &self,
                namespace: &str,
                name: &str,
            ) -> Result<Option<InboxSettings>, StoreError> {
                self.ctl_inbox_settings(namespace, name).await
            }

            async fn inbox_sync_status(
                &self,
                namespace: &str,
                name: &str,
            ) -> Result<Option<InboxSyncStatus>, StoreError> {
                self.ctl_inbox_sync_status(namespace, name).await
            }

            async fn inbox_push_audience(
                &self,
                inbox_id: &str,
            ) -> Result<Option<String>, StoreError> {
                self.ctl_inbox_push_audience(inbox_id).await
            }

            async fn inbox_watches(
                &self,
                tenant: &TenantId,
            ) -> Result<Vec<InboxWatch>, StoreError> {
                self.ctl_inbox_watches(tenant).await
            }

            async fn record_inbox_watch(
                &self,
                inbox_id: &str,
                watch: Result<Option<(&str, UnixMillis)>, WatchError>,
            ) -> Result<(), StoreError> {
                self.ctl_record_inbox_watch(inbox_id, watch).await
            }

            async fn list_grants_for_inbox(
                &self,
                inbox_id: &str,
            ) -> Result<Vec<GrantRecord>, StoreError> {
                self.ctl_grants_for_inbox(inbox_id).await
            }

            async fn list_grants_for_subject(
                &self,
                tenant: &TenantId,
                kind: SubjectKind,
                name: &str,
            ) -> Result<Vec<GrantRecord>, StoreError> {
                self.ctl_grants_for_subject(tenant, kind, name).await
            }

            async fn list_grants_for_tenant(
                &self,
                tenant: &TenantId,
            ) -> Result<Vec<GrantRecord>, StoreError> {
                self.ctl_grants_for_tenant(tenant).await
            }

            async fn retention_policy(
                &self,
                tenant: &TenantId,
            ) -> Result<Option<RetentionPolicyRecord>, StoreError> {
                self.ctl_retention_policy(tenant).await
            }

            async fn control_changes_since(
                &self,
                after_seq: i64,
                limit: u32,
            ) -> Result<Vec<ControlChange>, StoreError> {
                self.ctl_changes_since(after_seq, limit).await
            }

            async fn latest_control_seq(&self) -> Result<i64, StoreError> {
                self.ctl_latest_seq().await
            }

            async fn subscribe_changes(&self) -> Result<ChangeFeed, StoreError> {
                self.ctl_subscribe().await
            }

            // --- agent API reads (read-only) ---------------------------------------------

            async fn list_inbox_settings(
                &self,
                tenant: &TenantId,
            ) -> Result<Vec<InboxSettings>, StoreError> {
                let rows = sqlx::query(LIST_INBOX_SETTINGS)
                    .bind(tenant.as_str())
                    .fetch_all(&self.pool)
                    .await
                    .map_err(db_err("list_inbox_settings"))?;
                rows.iter().map(Self::api_inbox_settings_from_row).collect()
            }

            async fn list_conversations(
                &self,
                tenant: &TenantId,
                inbox_id: &str,
                before: Option<&ConversationCursor>,
                limit: u32,
            ) -> Result<Vec<ConversationRecord>, StoreError> {
                let query = match before {
                    None => sqlx::query(LIST_CONVERSATIONS_FIRST)
                        .bind(tenant.as_str())
                        .bind(inbox_id),
                    Some(c) => sqlx::query(LIST_CONVERSATIONS_AFTER)
                        .bind(tenant.as_str())
                        .bind(inbox_id)
                        .bind(c.date_ms)
                        .bind(c.id.as_str()),
                };
                let rows = query
                    .bind(i64::from(limit))
                    .fetch_all(&self.pool)
                    .await
                    .map_err(db_err("list_conversations"))?;
                rows.iter().map(Self::conversation_from_row).collect()
            }

            async fn get_conversation(
                &self,
                tenant: &TenantId,
                id: &str,
            ) -> Result<Option<ConversationRecord>, StoreError> {
                let row = sqlx::query(GET_CONVERSATION)
                    .bind(tenant.as_str())
                    .bind(id)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(db_err("get_conversation"))?;
                row.as_ref().map(Self::conversation_from_row).transpose()
            }

            async fn conversation_inbox(
                &self,
                tenant: &TenantId,
                id: &str,
            ) -> Result<Option<String>, StoreError> {
                let row = sqlx::query(
                    "SELECT inbox_id FROM conversations WHERE tenant_id = $1 AND id = $2",
                )
                .bind(tenant.as_str())
                .bind(id)
                .fetch_optional(&self.pool)
                .await
                .map_err(db_err("conversation_inbox"))?;
                row.as_ref()
                    .map(|r| Self::col::<String>(r, "conversations", "inbox_id"))
                    .transpose()
            }

            async fn list_conversation_message_ids(
                &self,
                tenant: &TenantId,
                conversation_id: &str,
                after: Option<&ConversationCursor>,
                limit: u32,
            ) -> Result<Vec<String>, StoreError> {
                let query = match after {
                    None => sqlx::query(CONVERSATION_MESSAGES_FIRST)
                        .bind(tenant.as_str())
                        .bind(conversation_id),
                    Some(c) => sqlx::query(CONVERSATION_MESSAGES_AFTER)
                        .bind(tenant.as_str())
                        .bind(conversation_id)
                        .bind(c.date_ms)
                        .bind(c.id.as_str()),
                };
                let rows = query
                    .bind(i64::from(limit))
                    .fetch_all(&self.pool)
                    .await
                    .map_err(db_err("list_conversation_message_ids"))?;
                rows.iter()
                    .map(|r| Self::col::<String>(r, "messages", "id"))
                    .collect()
            }

            // --- live events -------------------------------------------------------------

            async fn mail_events_after(
                &self,
                tenant: &TenantId,
                after: i64,
                limit: u32,
            ) -> Result<Vec<MailEvent>, StoreError> {
                let rows = sqlx::query(MAIL_EVENTS_AFTER)
                    .bind(tenant.as_str())
                    .bind(after)
                    .bind(i64::from(limit))
                    .fetch_all(&self.pool)
                    .await
                    .map_err(db_err("mail_events_after"))?;
                rows.iter().map(Self::mail_event_from_row).collect()
            }

            async fn latest_mail_event(&self, tenant: &TenantId) -> Result<i64, StoreError> {
                let row = sqlx::query(LATEST_MAIL_EVENT)
                    .bind(tenant.as_str())
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(db_err("latest_mail_event"))?;
                match row {
                    Some(row) => Self::col(&row, "mail_event_counters", "seq"),
                    None => Ok(0),
                }
            }

            async fn listen_mail_events(
                &self,
            ) -> Result<Option<Box<dyn MailEventListener>>, StoreError> {
                self.listen_events().await
            }

            async fn prune_mail_events(&self, before_ms: UnixMillis) -> Result<u64, StoreError> {
                const OP: &str = "prune_mail_events";
                let mut tx = self.begin_write(OP).await?;
                let n = sqlx::query(PRUNE_MAIL_EVENTS)
                    .bind(before_ms)
                    .execute(&mut *tx)
                    .await
                    .map_err(db_err(OP))?
                    .rows_affected();
                tx.commit().await.map_err(db_err(OP))?;
                Ok(n)
            }
        }
    };
}

sql_store! {
    store = PgStore,
    db = sqlx::Postgres,
    row = PgRow,
    backend = "postgres",
    write_begin = "BEGIN",
    read_begin = "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY",
    lock_rows = " FOR UPDATE SKIP LOCKED",
    lock_keys = " FOR UPDATE",
}

sql_store! {
    store = SqliteStore,
    db = sqlx::Sqlite,
    row = SqliteRow,
    backend = "sqlite",
    write_begin = "BEGIN IMMEDIATE",
    read_begin = "BEGIN",
    lock_rows = "",
    lock_keys = "",
}
