//! The control API's tables (migration `0005_control`) for both stores, written once like
//! the rest of `sql.rs`: the `control_sql!` macro defines the inherent `ctl_*` methods the
//! [`Store`](super::Store) implementations delegate to.
//!
//! Every change runs in one write transaction: read (and on PostgreSQL lock) the object's
//! control record, judge the generation ([`decide`]), write the change, update the record,
//! bump the change counter, append to the change log and (PostgreSQL) `NOTIFY`. A skipped
//! or rejected change rolls back having written nothing.

use std::time::Duration;

use sqlx::postgres::{PgListener, PgRow};
use sqlx::sqlite::SqliteRow;

use super::super::control::{
    ApplyOutcome, CHANGE_LOG_RETAINED, ChangeEvent, ChangeFeed, ControlChange, ControlKind,
    ControlMeta, ControlObjectRecord, Decision, DeletionPolicy, GrantRecord, GrantRole, GrantSpec,
    InboxSettings, InboxSpec, InboxSyncStatus, InboxWatch, NOTIFY_CHANNEL, Rejection,
    RetentionPolicyRecord, RetentionSpec, SubjectKind, TenantSettings, TenantSpec, TenantState,
    Visibility, WatchError, decide,
};
use super::super::{DeleteReason, Deletion, InboxStatus, UnixMillis};
use super::{
    MARK_INBOX_DELETED, PgStore, SOFT_DELETE_INBOX_MESSAGES, SqliteStore, Store, StoreError,
    db_err, now_ms, to_tenant,
};
use crate::ids::{TenantId, new_record_id};
use crate::search::Mode;

const GET_OBJECT: &str = "SELECT kind, namespace, name, uid, generation, deleted, applied_at_ms \
     FROM control_objects WHERE kind = $1 AND namespace = $2 AND name = $3";
const UPSERT_OBJECT: &str = "INSERT INTO control_objects \
     (kind, namespace, name, uid, generation, deleted, deleted_at_ms, applied_at_ms) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
     ON CONFLICT (kind, namespace, name) DO UPDATE SET uid = excluded.uid, \
     generation = excluded.generation, deleted = excluded.deleted, \
     deleted_at_ms = excluded.deleted_at_ms, applied_at_ms = excluded.applied_at_ms";
const BUMP_COUNTER: &str =
    "UPDATE control_change_counter SET seq = seq + 1 WHERE id = 1 RETURNING seq";
const INSERT_CHANGE: &str = "INSERT INTO control_changes \
     (seq, kind, namespace, name, tenant_id, deleted, at_ms) VALUES ($1, $2, $3, $4, $5, $6, $7)";
const PRUNE_CHANGES: &str = "DELETE FROM control_changes WHERE seq <= $1";
const CHANGES_SINCE: &str = "SELECT seq, kind, namespace, name, tenant_id, deleted, at_ms \
     FROM control_changes WHERE seq > $1 ORDER BY seq LIMIT $2";
const LATEST_SEQ: &str = "SELECT seq FROM control_change_counter WHERE id = 1";

const TENANT_EXISTS: &str = "SELECT id FROM tenants WHERE id = $1";
const GET_TENANT_SETTINGS: &str = "SELECT tenant_id, deletion_policy, search_mode, state, \
     generation FROM tenant_settings WHERE tenant_id = $1";
const UPSERT_TENANT_SETTINGS: &str = "INSERT INTO tenant_settings \
     (tenant_id, deletion_policy, search_mode, state, generation, updated_at_ms) \
     VALUES ($1, $2, $3, 'active', $4, $5) \
     ON CONFLICT (tenant_id) DO UPDATE SET deletion_policy = excluded.deletion_policy, \
     search_mode = excluded.search_mode, state = 'active', generation = excluded.generation, \
     updated_at_ms = excluded.updated_at_ms";
const SET_DISPLAY_NAME: &str = "UPDATE tenants SET display_name = $2 WHERE id = $1";
const STOP_TENANT: &str = "INSERT INTO tenant_settings \
     (tenant_id, deletion_policy, search_mode, state, generation, updated_at_ms) \
     VALUES ($1, 'retain', 'blind', 'stopped', $2, $3) \
     ON CONFLICT (tenant_id) DO UPDATE SET state = 'stopped', \
     generation = excluded.generation, updated_at_ms = excluded.updated_at_ms";
const DISCONNECT_TENANT_INBOXES: &str =
    "UPDATE inboxes SET status = 'disconnected' WHERE tenant_id = $1";
const RECONNECT_MANAGED_INBOXES: &str = "UPDATE inboxes SET status = 'connected' \
     WHERE tenant_id = $1 AND status = 'disconnected' \
     AND id IN (SELECT inbox_id FROM inbox_settings WHERE tenant_id = $1)";
/// Control records of a tenant's child objects, forgotten when the tenant is shredded (so
/// that objects applied again later are applied, not judged against the old generation).
const FORGET_TENANT_CHILDREN: [&str; 3] = [
    "DELETE FROM control_objects WHERE kind = 'inbox' AND (namespace, name) IN \
     (SELECT namespace, name FROM inbox_settings WHERE tenant_id = $1)",
    "DELETE FROM control_objects WHERE kind = 'grant' AND (namespace, name) IN \
     (SELECT namespace, name FROM inbox_grants WHERE tenant_id = $1)",
    "DELETE FROM control_objects WHERE kind = 'retention_policy' AND (namespace, name) IN \
     (SELECT namespace, name FROM retention_policies WHERE tenant_id = $1)",
];
/// Every row of a tenant, children first. The audit trail is kept (it outlives what it
/// refers to).
const SHRED_TENANT: [&str; 15] = [
    "DELETE FROM mail_events WHERE tenant_id = $1",
    "DELETE FROM mail_event_counters WHERE tenant_id = $1",
    "DELETE FROM attachments WHERE tenant_id = $1",
    "DELETE FROM messages WHERE tenant_id = $1",
    "DELETE FROM conversations WHERE tenant_id = $1",
    "DELETE FROM sync_jobs WHERE tenant_id = $1",
    "DELETE FROM search_tombstones WHERE tenant_id = $1",
    "DELETE FROM inbox_grants WHERE tenant_id = $1",
    "DELETE FROM inbox_settings WHERE tenant_id = $1",
    "DELETE FROM retention_policies WHERE tenant_id = $1",
    "DELETE FROM inboxes WHERE tenant_id = $1",
    "DELETE FROM tenant_keys WHERE tenant_id = $1",
    "DELETE FROM tenant_index_keys WHERE tenant_id = $1",
    "DELETE FROM tenant_settings WHERE tenant_id = $1",
    "DELETE FROM tenants WHERE id = $1",
];

macro_rules! inbox_settings_select {
    () => {
        "SELECT s.inbox_id, s.tenant_id, s.namespace, s.name, s.visibility, s.team, \
         s.assignment_limits_visibility, s.generation, i.address FROM inbox_settings s \
         JOIN inboxes i ON i.id = s.inbox_id"
    };
}
const INBOX_SETTINGS_BY_NAME: &str = concat!(
    inbox_settings_select!(),
    " WHERE s.namespace = $1 AND s.name = $2"
);
const INBOX_SETTINGS_BY_ID: &str = concat!(inbox_settings_select!(), " WHERE s.inbox_id = $1");
const INBOX_SYNC_STATUS: &str = "SELECT s.inbox_id, o.uid, o.generation, i.status, \
     CAST(CASE WHEN i.refresh_token IS NULL THEN 0 ELSE 1 END AS BIGINT) AS has_refresh_token, \
     i.last_synced_at_ms, \
     CASE WHEN i.watch_topic = s.pubsub_topic THEN i.watch_expires_at_ms END AS watch_expires_at_ms, \
     s.pubsub_topic, i.watch_error \
     FROM inbox_settings s \
     JOIN control_objects o ON o.kind = 'inbox' AND o.namespace = s.namespace \
     AND o.name = s.name JOIN inboxes i ON i.id = s.inbox_id \
     WHERE s.namespace = $1 AND s.name = $2 AND NOT o.deleted";
const FIND_TENANT_INBOX: &str =
    "SELECT id FROM inboxes WHERE tenant_id = $1 AND lower(address) = lower($2)";
const INSERT_MANAGED_INBOX: &str = "INSERT INTO inboxes \
     (id, tenant_id, address, history_id, status, refresh_token, connected_at_ms, created_at_ms) \
     VALUES ($1, $2, $3, NULL, 'connected', NULL, $4, $4)";
const UPSERT_INBOX_SETTINGS: &str = "INSERT INTO inbox_settings \
     (inbox_id, tenant_id, namespace, name, visibility, team, assignment_limits_visibility, \
      generation, updated_at_ms, pubsub_topic, push_audience) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) \
     ON CONFLICT (inbox_id) DO UPDATE SET visibility = excluded.visibility, \
     team = excluded.team, assignment_limits_visibility = excluded.assignment_limits_visibility, \
     generation = excluded.generation, updated_at_ms = excluded.updated_at_ms, \
     pubsub_topic = excluded.pubsub_topic, push_audience = excluded.push_audience";
pub(super) const INBOX_PUSH_AUDIENCE: &str =
    "SELECT push_audience FROM inbox_settings WHERE inbox_id = $1";
/// Push watches of a tenant's inboxes (with a refresh token): connected ones that want one
/// or still have one, and disconnected ones that still have one (wanting none: a
/// disconnected inbox's watch is stopped).
pub(super) const INBOX_WATCHES: &str = "SELECT i.id, \
     CASE WHEN i.status = 'connected' THEN s.pubsub_topic END AS pubsub_topic, \
     i.watch_topic, i.watch_expires_at_ms \
     FROM inboxes i LEFT JOIN inbox_settings s ON s.inbox_id = i.id \
     WHERE i.tenant_id = $1 AND i.refresh_token IS NOT NULL \
     AND ((i.status = 'connected' AND (s.pubsub_topic IS NOT NULL OR i.watch_topic IS NOT NULL)) \
     OR (i.status = 'disconnected' AND i.watch_topic IS NOT NULL)) ORDER BY i.id";
pub(super) const RECORD_INBOX_WATCH: &str = "UPDATE inboxes SET watch_topic = $2, \
     watch_expires_at_ms = $3, watch_error = NULL WHERE id = $1";
pub(super) const RECORD_INBOX_WATCH_ERROR: &str =
    "UPDATE inboxes SET watch_error = $2 WHERE id = $1";
const RECONNECT_INBOX: &str =
    "UPDATE inboxes SET status = 'connected' WHERE id = $1 AND status = 'disconnected'";
const FORGET_INBOX_GRANTS: &str = "DELETE FROM control_objects WHERE kind = 'grant' AND \
     (namespace, name) IN (SELECT namespace, name FROM inbox_grants WHERE inbox_id = $1)";
const DELETE_INBOX_GRANTS: &str = "DELETE FROM inbox_grants WHERE inbox_id = $1";
const DELETE_INBOX_SETTINGS: &str = "DELETE FROM inbox_settings WHERE inbox_id = $1";
const DISCONNECT_INBOX: &str = "UPDATE inboxes SET status = 'disconnected' WHERE id = $1";
/// An Inbox applied again: mail stored from now on is live (old mail stays soft-deleted).
const UNDELETE_INBOX: &str =
    "UPDATE inboxes SET deleted_at_ms = NULL, deleted_by = NULL WHERE id = $1";

macro_rules! grant_select {
    () => {
        "SELECT namespace, name, tenant_id, inbox_id, subject_kind, subject_name, role, \
         expires_at_ms, generation FROM inbox_grants"
    };
}
const UPSERT_GRANT: &str = "INSERT INTO inbox_grants \
     (namespace, name, tenant_id, inbox_id, subject_kind, subject_name, role, expires_at_ms, \
      generation, updated_at_ms) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
     ON CONFLICT (namespace, name) DO UPDATE SET tenant_id = excluded.tenant_id, \
     inbox_id = excluded.inbox_id, subject_kind = excluded.subject_kind, \
     subject_name = excluded.subject_name, role = excluded.role, \
     expires_at_ms = excluded.expires_at_ms, generation = excluded.generation, \
     updated_at_ms = excluded.updated_at_ms";
const DELETE_GRANT: &str =
    "DELETE FROM inbox_grants WHERE namespace = $1 AND name = $2 RETURNING tenant_id";
const GRANTS_FOR_INBOX: &str = concat!(
    grant_select!(),
    " WHERE inbox_id = $1 ORDER BY namespace, name"
);
const GRANTS_FOR_SUBJECT: &str = concat!(
    grant_select!(),
    " WHERE tenant_id = $1 AND subject_kind = $2 AND subject_name = $3 ORDER BY namespace, name"
);
const GRANTS_FOR_TENANT: &str = concat!(
    grant_select!(),
    " WHERE tenant_id = $1 ORDER BY namespace, name"
);

macro_rules! retention_select {
    () => {
        "SELECT namespace, name, tenant_id, grace_period_days, delete_after_days, legal_hold, \
         generation FROM retention_policies"
    };
}
const RETENTION_FOR_TENANT: &str = concat!(retention_select!(), " WHERE tenant_id = $1");
const UPSERT_RETENTION: &str = "INSERT INTO retention_policies \
     (namespace, name, tenant_id, grace_period_days, delete_after_days, legal_hold, generation, \
      updated_at_ms) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
     ON CONFLICT (namespace, name) DO UPDATE SET tenant_id = excluded.tenant_id, \
     grace_period_days = excluded.grace_period_days, \
     delete_after_days = excluded.delete_after_days, legal_hold = excluded.legal_hold, \
     generation = excluded.generation, updated_at_ms = excluded.updated_at_ms";
const DELETE_RETENTION: &str =
    "DELETE FROM retention_policies WHERE namespace = $1 AND name = $2 RETURNING tenant_id";

fn corrupt(table: &'static str, reason: &'static str) -> StoreError {
    StoreError::Corrupt { table, reason }
}

fn to_days(table: &'static str, v: i64) -> Result<u32, StoreError> {
    u32::try_from(v).map_err(|_| corrupt(table, "day count out of range"))
}

/// A control change that was skipped or refused: the transaction is dropped (rolled back).
fn skipped(decision: Decision) -> Option<ApplyOutcome> {
    match decision {
        Decision::Apply { .. } => None,
        Decision::Skip(outcome) => Some(outcome),
    }
}

macro_rules! control_sql {
    (
        store = $store:ident,
        db = $db:ty,
        row = $row:ty,
        notify = $notify:expr,
        lock_keys = $lock_keys:literal $(,)?
    ) => {
        impl $store {
            fn ctl_object_from_row(row: &$row) -> Result<ControlObjectRecord, StoreError> {
                const T: &str = "control_objects";
                let kind: String = Self::col(row, T, "kind")?;
                Ok(ControlObjectRecord {
                    kind: ControlKind::parse(&kind).ok_or(corrupt(T, "unknown kind"))?,
                    namespace: Self::col(row, T, "namespace")?,
                    name: Self::col(row, T, "name")?,
                    uid: Self::col(row, T, "uid")?,
                    generation: Self::col(row, T, "generation")?,
                    deleted: Self::col(row, T, "deleted")?,
                    applied_at_ms: Self::col(row, T, "applied_at_ms")?,
                })
            }

            fn ctl_inbox_settings_from_row(
                row: &$row,
            ) -> Result<(InboxSettings, String), StoreError> {
                const T: &str = "inbox_settings";
                let visibility: String = Self::col(row, T, "visibility")?;
                Ok((
                    InboxSettings {
                        inbox_id: Self::col(row, T, "inbox_id")?,
                        tenant_id: to_tenant(T, Self::col(row, T, "tenant_id")?)?,
                        namespace: Self::col(row, T, "namespace")?,
                        name: Self::col(row, T, "name")?,
                        visibility: Visibility::parse(&visibility)
                            .ok_or(corrupt(T, "unknown visibility"))?,
                        team: Self::col(row, T, "team")?,
                        assignment_limits_visibility: Self::col(
                            row,
                            T,
                            "assignment_limits_visibility",
                        )?,
                        generation: Self::col(row, T, "generation")?,
                    },
                    Self::col(row, T, "address")?,
                ))
            }

            fn ctl_grant_from_row(row: &$row) -> Result<GrantRecord, StoreError> {
                const T: &str = "inbox_grants";
                let kind: String = Self::col(row, T, "subject_kind")?;
                let role: String = Self::col(row, T, "role")?;
                Ok(GrantRecord {
                    namespace: Self::col(row, T, "namespace")?,
                    name: Self::col(row, T, "name")?,
                    tenant_id: to_tenant(T, Self::col(row, T, "tenant_id")?)?,
                    inbox_id: Self::col(row, T, "inbox_id")?,
                    subject_kind: SubjectKind::parse(&kind)
                        .ok_or(corrupt(T, "unknown subject kind"))?,
                    subject_name: Self::col(row, T, "subject_name")?,
                    role: GrantRole::parse(&role).ok_or(corrupt(T, "unknown role"))?,
                    expires_at_ms: Self::col(row, T, "expires_at_ms")?,
                    generation: Self::col(row, T, "generation")?,
                })
            }

            fn ctl_retention_from_row(row: &$row) -> Result<RetentionPolicyRecord, StoreError> {
                const T: &str = "retention_policies";
                let after: Option<i64> = Self::col(row, T, "delete_after_days")?;
                Ok(RetentionPolicyRecord {
                    namespace: Self::col(row, T, "namespace")?,
                    name: Self::col(row, T, "name")?,
                    tenant_id: to_tenant(T, Self::col(row, T, "tenant_id")?)?,
                    grace_period_days: to_days(T, Self::col(row, T, "grace_period_days")?)?,
                    delete_after_days: after.map(|d| to_days(T, d)).transpose()?,
                    legal_hold: Self::col(row, T, "legal_hold")?,
                    generation: Self::col(row, T, "generation")?,
                })
            }

            fn ctl_settings_from_row(row: &$row) -> Result<TenantSettings, StoreError> {
                const T: &str = "tenant_settings";
                let policy: String = Self::col(row, T, "deletion_policy")?;
                let mode: String = Self::col(row, T, "search_mode")?;
                let state: String = Self::col(row, T, "state")?;
                Ok(TenantSettings {
                    tenant_id: to_tenant(T, Self::col(row, T, "tenant_id")?)?,
                    deletion_policy: DeletionPolicy::parse(&policy)
                        .ok_or(corrupt(T, "unknown deletion policy"))?,
                    search_mode: Mode::parse(&mode).ok_or(corrupt(T, "unknown search mode"))?,
                    state: TenantState::parse(&state).ok_or(corrupt(T, "unknown state"))?,
                    generation: Self::col(row, T, "generation")?,
                })
            }

            /// Reads (and on PostgreSQL locks) the object's record and judges the change.
            async fn ctl_decide(
                tx: &mut sqlx::Transaction<'static, $db>,
                op: &'static str,
                kind: ControlKind,
                meta: &ControlMeta,
                delete: bool,
            ) -> Result<Decision, StoreError> {
                let row = sqlx::query(concat!(
                    "SELECT kind, namespace, name, uid, generation, deleted, applied_at_ms \
                     FROM control_objects WHERE kind = $1 AND namespace = $2 AND name = $3",
                    $lock_keys
                ))
                .bind(kind.as_str())
                .bind(&meta.namespace)
                .bind(&meta.name)
                .fetch_optional(&mut **tx)
                .await
                .map_err(db_err(op))?;
                let recorded = row.as_ref().map(Self::ctl_object_from_row).transpose()?;
                Ok(decide(recorded.as_ref(), meta, delete))
            }

            /// Whether the tenant exists and takes configuration.
            async fn ctl_tenant_check(
                tx: &mut sqlx::Transaction<'static, $db>,
                op: &'static str,
                tenant: &TenantId,
            ) -> Result<Option<Rejection>, StoreError> {
                let exists = sqlx::query(TENANT_EXISTS)
                    .bind(tenant.as_str())
                    .fetch_optional(&mut **tx)
                    .await
                    .map_err(db_err(op))?;
                if exists.is_none() {
                    return Ok(Some(Rejection::UnknownTenant));
                }
                let settings = sqlx::query(GET_TENANT_SETTINGS)
                    .bind(tenant.as_str())
                    .fetch_optional(&mut **tx)
                    .await
                    .map_err(db_err(op))?;
                let stopped = match settings.as_ref().map(Self::ctl_settings_from_row) {
                    Some(s) => s?.state == TenantState::Stopped,
                    None => false,
                };
                Ok(stopped.then_some(Rejection::TenantDeleted))
            }

            async fn ctl_inbox_by_name(
                executor: impl sqlx::Executor<'_, Database = $db>,
                op: &'static str,
                namespace: &str,
                name: &str,
            ) -> Result<Option<(InboxSettings, String)>, StoreError> {
                let row = sqlx::query(INBOX_SETTINGS_BY_NAME)
                    .bind(namespace)
                    .bind(name)
                    .fetch_optional(executor)
                    .await
                    .map_err(db_err(op))?;
                row.as_ref()
                    .map(Self::ctl_inbox_settings_from_row)
                    .transpose()
            }

            /// Records the object's new state and, when `tenant` is given, appends the
            /// change to the feed (counter, log, prune, notify), then commits.
            async fn ctl_commit(
                mut tx: sqlx::Transaction<'static, $db>,
                op: &'static str,
                kind: ControlKind,
                meta: &ControlMeta,
                deleted: bool,
                tenant: Option<&TenantId>,
            ) -> Result<ApplyOutcome, StoreError> {
                let now = now_ms();
                sqlx::query(UPSERT_OBJECT)
                    .bind(kind.as_str())
                    .bind(&meta.namespace)
                    .bind(&meta.name)
                    .bind(&meta.uid)
                    .bind(meta.generation)
                    .bind(deleted)
                    .bind(deleted.then_some(now))
                    .bind(now)
                    .execute(&mut *tx)
                    .await
                    .map_err(db_err(op))?;
                if let Some(tenant) = tenant {
                    let row = sqlx::query(BUMP_COUNTER)
                        .fetch_one(&mut *tx)
                        .await
                        .map_err(db_err(op))?;
                    let seq: i64 = Self::col(&row, "control_change_counter", "seq")?;
                    sqlx::query(INSERT_CHANGE)
                        .bind(seq)
                        .bind(kind.as_str())
                        .bind(&meta.namespace)
                        .bind(&meta.name)
                        .bind(tenant.as_str())
                        .bind(deleted)
                        .bind(now)
                        .execute(&mut *tx)
                        .await
                        .map_err(db_err(op))?;
                    sqlx::query(PRUNE_CHANGES)
                        .bind(seq - CHANGE_LOG_RETAINED)
                        .execute(&mut *tx)
                        .await
                        .map_err(db_err(op))?;
                    let notify: Option<&str> = $notify;
                    if let Some(sql) = notify {
                        sqlx::query(sql)
                            .bind(NOTIFY_CHANNEL)
                            .bind(seq.to_string())
                            .execute(&mut *tx)
                            .await
                            .map_err(db_err(op))?;
                    }
                }
                tx.commit().await.map_err(db_err(op))?;
                Ok(ApplyOutcome::Applied)
            }

            async fn ctl_exec(
                tx: &mut sqlx::Transaction<'static, $db>,
                op: &'static str,
                sql: &'static str,
                id: &str,
            ) -> Result<u64, StoreError> {
                let done = sqlx::query(sql)
                    .bind(id)
                    .execute(&mut **tx)
                    .await
                    .map_err(db_err(op))?;
                Ok(done.rows_affected())
            }

            pub(super) async fn ctl_object(
                &self,
                kind: ControlKind,
                namespace: &str,
                name: &str,
            ) -> Result<Option<ControlObjectRecord>, StoreError> {
                let row = sqlx::query(GET_OBJECT)
                    .bind(kind.as_str())
                    .bind(namespace)
                    .bind(name)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(db_err("control_object"))?;
                row.as_ref().map(Self::ctl_object_from_row).transpose()
            }

            pub(super) async fn ctl_apply_tenant(
                &self,
                meta: &ControlMeta,
                spec: &TenantSpec,
            ) -> Result<ApplyOutcome, StoreError> {
                const OP: &str = "apply_tenant";
                let tenant = to_tenant_name(&meta.name)?;
                let mut tx = self.begin_write(OP).await?;
                if let Some(o) =
                    skipped(Self::ctl_decide(&mut tx, OP, ControlKind::Tenant, meta, false).await?)
                {
                    return Ok(o);
                }
                let exists = sqlx::query(TENANT_EXISTS)
                    .bind(tenant.as_str())
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(db_err(OP))?;
                if exists.is_none() {
                    return Ok(ApplyOutcome::Rejected(Rejection::UnknownTenant));
                }
                let now = now_ms();
                sqlx::query(SET_DISPLAY_NAME)
                    .bind(tenant.as_str())
                    .bind(&spec.display_name)
                    .execute(&mut *tx)
                    .await
                    .map_err(db_err(OP))?;
                sqlx::query(UPSERT_TENANT_SETTINGS)
                    .bind(tenant.as_str())
                    .bind(spec.deletion_policy.as_str())
                    .bind(spec.search_mode.as_str())
                    .bind(meta.generation)
                    .bind(now)
                    .execute(&mut *tx)
                    .await
                    .map_err(db_err(OP))?;
                // A tenant created again after a retain delete: its managed inboxes return.
                Self::ctl_exec(&mut tx, OP, RECONNECT_MANAGED_INBOXES, tenant.as_str()).await?;
                Self::ctl_commit(tx, OP, ControlKind::Tenant, meta, false, Some(&tenant)).await
            }

            pub(super) async fn ctl_delete_tenant(
                &self,
                meta: &ControlMeta,
                policy: DeletionPolicy,
            ) -> Result<ApplyOutcome, StoreError> {
                const OP: &str = "delete_tenant";
                let tenant = to_tenant_name(&meta.name)?;
                let mut tx = self.begin_write(OP).await?;
                if let Some(o) =
                    skipped(Self::ctl_decide(&mut tx, OP, ControlKind::Tenant, meta, true).await?)
                {
                    return Ok(o);
                }
                let exists = sqlx::query(TENANT_EXISTS)
                    .bind(tenant.as_str())
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(db_err(OP))?
                    .is_some();
                if exists {
                    match policy {
                        DeletionPolicy::Retain => {
                            sqlx::query(STOP_TENANT)
                                .bind(tenant.as_str())
                                .bind(meta.generation)
                                .bind(now_ms())
                                .execute(&mut *tx)
                                .await
                                .map_err(db_err(OP))?;
                            Self::ctl_exec(&mut tx, OP, DISCONNECT_TENANT_INBOXES, tenant.as_str())
                                .await?;
                        }
                        DeletionPolicy::Shred => {
                            for sql in FORGET_TENANT_CHILDREN.into_iter().chain(SHRED_TENANT) {
                                Self::ctl_exec(&mut tx, OP, sql, tenant.as_str()).await?;
                            }
                        }
                    }
                }
                Self::ctl_commit(tx, OP, ControlKind::Tenant, meta, true, Some(&tenant)).await
            }

            pub(super) async fn ctl_apply_inbox(
                &self,
                meta: &ControlMeta,
                spec: &InboxSpec,
            ) -> Result<ApplyOutcome, StoreError> {
                const OP: &str = "apply_inbox";
                let mut tx = self.begin_write(OP).await?;
                if let Some(o) =
                    skipped(Self::ctl_decide(&mut tx, OP, ControlKind::Inbox, meta, false).await?)
                {
                    return Ok(o);
                }
                if let Some(r) = Self::ctl_tenant_check(&mut tx, OP, &spec.tenant).await? {
                    return Ok(ApplyOutcome::Rejected(r));
                }
                let mapped =
                    Self::ctl_inbox_by_name(&mut *tx, OP, &meta.namespace, &meta.name).await?;
                let inbox_id = match mapped {
                    Some((settings, address)) => {
                        if settings.tenant_id != spec.tenant {
                            return Ok(ApplyOutcome::Rejected(Rejection::Immutable("tenant")));
                        }
                        if !address.eq_ignore_ascii_case(&spec.address) {
                            return Ok(ApplyOutcome::Rejected(Rejection::Immutable(
                                "gmail_address",
                            )));
                        }
                        settings.inbox_id
                    }
                    None => {
                        let existing = sqlx::query(FIND_TENANT_INBOX)
                            .bind(spec.tenant.as_str())
                            .bind(&spec.address)
                            .fetch_optional(&mut *tx)
                            .await
                            .map_err(db_err(OP))?;
                        match existing {
                            Some(row) => {
                                let id: String = Self::col(&row, "inboxes", "id")?;
                                let owned = sqlx::query(INBOX_SETTINGS_BY_ID)
                                    .bind(&id)
                                    .fetch_optional(&mut *tx)
                                    .await
                                    .map_err(db_err(OP))?;
                                if owned.is_some() {
                                    return Ok(ApplyOutcome::Rejected(Rejection::AddressTaken));
                                }
                                id
                            }
                            None => {
                                let id = new_record_id();
                                sqlx::query(INSERT_MANAGED_INBOX)
                                    .bind(&id)
                                    .bind(spec.tenant.as_str())
                                    .bind(&spec.address)
                                    .bind(now_ms())
                                    .execute(&mut *tx)
                                    .await
                                    .map_err(db_err(OP))?;
                                id
                            }
                        }
                    }
                };
                sqlx::query(UPSERT_INBOX_SETTINGS)
                    .bind(&inbox_id)
                    .bind(spec.tenant.as_str())
                    .bind(&meta.namespace)
                    .bind(&meta.name)
                    .bind(spec.visibility.as_str())
                    .bind(spec.team.as_deref())
                    .bind(spec.assignment_limits_visibility)
                    .bind(meta.generation)
                    .bind(now_ms())
                    .bind(spec.pubsub_topic.as_deref())
                    .bind(spec.push_audience.as_deref())
                    .execute(&mut *tx)
                    .await
                    .map_err(db_err(OP))?;
                Self::ctl_exec(&mut tx, OP, RECONNECT_INBOX, &inbox_id).await?;
                Self::ctl_exec(&mut tx, OP, UNDELETE_INBOX, &inbox_id).await?;
                Self::ctl_commit(tx, OP, ControlKind::Inbox, meta, false, Some(&spec.tenant)).await
            }

            pub(super) async fn ctl_delete_inbox(
                &self,
                meta: &ControlMeta,
            ) -> Result<ApplyOutcome, StoreError> {
                const OP: &str = "delete_inbox";
                let mut tx = self.begin_write(OP).await?;
                if let Some(o) =
                    skipped(Self::ctl_decide(&mut tx, OP, ControlKind::Inbox, meta, true).await?)
                {
                    return Ok(o);
                }
                let mapped =
                    Self::ctl_inbox_by_name(&mut *tx, OP, &meta.namespace, &meta.name).await?;
                let tenant = match mapped {
                    Some((settings, _)) => {
                        let id = settings.inbox_id.as_str();
                        // Grants of the inbox go with it; their records are forgotten, so an
                        // InboxGrant applied again is judged afresh (and refused: no inbox).
                        for sql in [
                            FORGET_INBOX_GRANTS,
                            DELETE_INBOX_GRANTS,
                            DELETE_INBOX_SETTINGS,
                            DISCONNECT_INBOX,
                        ] {
                            Self::ctl_exec(&mut tx, OP, sql, id).await?;
                        }
                        // The cascade: its mail is soft-deleted (the control service has
                        // already done so and removed it from search; this catches mail
                        // stored since) and the inbox marked deleted.
                        let deletion = Deletion {
                            actor: "operator".into(),
                            reason: DeleteReason::InboxDeleted,
                            at_ms: now_ms(),
                        };
                        let marked = sqlx::query(MARK_INBOX_DELETED)
                            .bind(settings.tenant_id.as_str())
                            .bind(id)
                            .bind(deletion.at_ms)
                            .bind(&deletion.actor)
                            .execute(&mut *tx)
                            .await
                            .map_err(db_err(OP))?
                            .rows_affected();
                        let late = Self::soft_delete_returning(
                            &mut tx,
                            OP,
                            SOFT_DELETE_INBOX_MESSAGES,
                            &settings.tenant_id,
                            id,
                            &deletion,
                        )
                        .await?;
                        if marked > 0 || !late.is_empty() {
                            Self::audit_in_tx(
                                &mut tx,
                                OP,
                                &settings.tenant_id,
                                &deletion.actor,
                                "inbox.soft_delete",
                                "inbox",
                                id,
                                deletion.at_ms,
                            )
                            .await?;
                        }
                        Some(settings.tenant_id)
                    }
                    None => None,
                };
                Self::ctl_commit(tx, OP, ControlKind::Inbox, meta, true, tenant.as_ref()).await
            }

            pub(super) async fn ctl_apply_grant(
                &self,
                meta: &ControlMeta,
                spec: &GrantSpec,
            ) -> Result<ApplyOutcome, StoreError> {
                const OP: &str = "apply_grant";
                let mut tx = self.begin_write(OP).await?;
                if let Some(o) =
                    skipped(Self::ctl_decide(&mut tx, OP, ControlKind::Grant, meta, false).await?)
                {
                    return Ok(o);
                }
                let Some((inbox, _)) =
                    Self::ctl_inbox_by_name(&mut *tx, OP, &meta.namespace, &spec.inbox_name)
                        .await?
                else {
                    return Ok(ApplyOutcome::Rejected(Rejection::UnknownInbox));
                };
                if let Some(r) = Self::ctl_tenant_check(&mut tx, OP, &inbox.tenant_id).await? {
                    return Ok(ApplyOutcome::Rejected(r));
                }
                sqlx::query(UPSERT_GRANT)
                    .bind(&meta.namespace)
                    .bind(&meta.name)
                    .bind(inbox.tenant_id.as_str())
                    .bind(&inbox.inbox_id)
                    .bind(spec.subject_kind.as_str())
                    .bind(&spec.subject_name)
                    .bind(spec.role.as_str())
                    .bind(spec.expires_at_ms)
                    .bind(meta.generation)
                    .bind(now_ms())
                    .execute(&mut *tx)
                    .await
                    .map_err(db_err(OP))?;
                Self::ctl_commit(
                    tx,
                    OP,
                    ControlKind::Grant,
                    meta,
                    false,
                    Some(&inbox.tenant_id),
                )
                .await
            }

            pub(super) async fn ctl_delete_grant(
                &self,
                meta: &ControlMeta,
            ) -> Result<ApplyOutcome, StoreError> {
                const OP: &str = "delete_grant";
                let mut tx = self.begin_write(OP).await?;
                if let Some(o) =
                    skipped(Self::ctl_decide(&mut tx, OP, ControlKind::Grant, meta, true).await?)
                {
                    return Ok(o);
                }
                let row = sqlx::query(DELETE_GRANT)
                    .bind(&meta.namespace)
                    .bind(&meta.name)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(db_err(OP))?;
                let tenant = row
                    .as_ref()
                    .map(|r| to_tenant("inbox_grants", Self::col(r, "inbox_grants", "tenant_id")?))
                    .transpose()?;
                Self::ctl_commit(tx, OP, ControlKind::Grant, meta, true, tenant.as_ref()).await
            }

            pub(super) async fn ctl_apply_retention(
                &self,
                meta: &ControlMeta,
                spec: &RetentionSpec,
            ) -> Result<ApplyOutcome, StoreError> {
                const OP: &str = "apply_retention_policy";
                const T: &str = "retention_policies";
                let mut tx = self.begin_write(OP).await?;
                let kind = ControlKind::RetentionPolicy;
                if let Some(o) = skipped(Self::ctl_decide(&mut tx, OP, kind, meta, false).await?) {
                    return Ok(o);
                }
                if let Some(r) = Self::ctl_tenant_check(&mut tx, OP, &spec.tenant).await? {
                    return Ok(ApplyOutcome::Rejected(r));
                }
                let current = sqlx::query(RETENTION_FOR_TENANT)
                    .bind(spec.tenant.as_str())
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(db_err(OP))?;
                if let Some(row) = current {
                    let ns: String = Self::col(&row, T, "namespace")?;
                    let name: String = Self::col(&row, T, "name")?;
                    if ns != meta.namespace || name != meta.name {
                        return Ok(ApplyOutcome::Rejected(Rejection::PolicyExists));
                    }
                }
                sqlx::query(UPSERT_RETENTION)
                    .bind(&meta.namespace)
                    .bind(&meta.name)
                    .bind(spec.tenant.as_str())
                    .bind(i64::from(spec.grace_period_days))
                    .bind(spec.delete_after_days.map(i64::from))
                    .bind(spec.legal_hold)
                    .bind(meta.generation)
                    .bind(now_ms())
                    .execute(&mut *tx)
                    .await
                    .map_err(db_err(OP))?;
                Self::ctl_commit(tx, OP, kind, meta, false, Some(&spec.tenant)).await
            }

            pub(super) async fn ctl_delete_retention(
                &self,
                meta: &ControlMeta,
            ) -> Result<ApplyOutcome, StoreError> {
                const OP: &str = "delete_retention_policy";
                let mut tx = self.begin_write(OP).await?;
                let kind = ControlKind::RetentionPolicy;
                if let Some(o) = skipped(Self::ctl_decide(&mut tx, OP, kind, meta, true).await?) {
                    return Ok(o);
                }
                let row = sqlx::query(DELETE_RETENTION)
                    .bind(&meta.namespace)
                    .bind(&meta.name)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(db_err(OP))?;
                let tenant = row
                    .as_ref()
                    .map(|r| {
                        to_tenant(
                            "retention_policies",
                            Self::col(r, "retention_policies", "tenant_id")?,
                        )
                    })
                    .transpose()?;
                Self::ctl_commit(tx, OP, kind, meta, true, tenant.as_ref()).await
            }

            pub(super) async fn ctl_tenant_settings(
                &self,
                tenant: &TenantId,
            ) -> Result<Option<TenantSettings>, StoreError> {
                let row = sqlx::query(GET_TENANT_SETTINGS)
                    .bind(tenant.as_str())
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(db_err("tenant_settings"))?;
                row.as_ref().map(Self::ctl_settings_from_row).transpose()
            }

            pub(super) async fn ctl_inbox_settings(
                &self,
                namespace: &str,
                name: &str,
            ) -> Result<Option<InboxSettings>, StoreError> {
                Ok(
                    Self::ctl_inbox_by_name(&self.pool, "inbox_settings", namespace, name)
                        .await?
                        .map(|(s, _)| s),
                )
            }

            pub(super) async fn ctl_inbox_sync_status(
                &self,
                namespace: &str,
                name: &str,
            ) -> Result<Option<InboxSyncStatus>, StoreError> {
                const T: &str = "inboxes";
                let Some(row) = sqlx::query(INBOX_SYNC_STATUS)
                    .bind(namespace)
                    .bind(name)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(db_err("inbox_sync_status"))?
                else {
                    return Ok(None);
                };
                let status: String = Self::col(&row, T, "status")?;
                let has_refresh_token: i64 = Self::col(&row, T, "has_refresh_token")?;
                Ok(Some(InboxSyncStatus {
                    inbox_id: Self::col(&row, T, "inbox_id")?,
                    uid: Self::col(&row, T, "uid")?,
                    generation: Self::col(&row, T, "generation")?,
                    status: InboxStatus::parse(&status).ok_or(corrupt(T, "unknown status"))?,
                    has_refresh_token: has_refresh_token != 0,
                    last_synced_at_ms: Self::col(&row, T, "last_synced_at_ms")?,
                    watch_expires_at_ms: Self::col(&row, T, "watch_expires_at_ms")?,
                    pubsub_topic: Self::col(&row, T, "pubsub_topic")?,
                    watch_error: Self::col::<Option<String>>(&row, T, "watch_error")?
                        .map(|w| WatchError::parse(&w).ok_or(corrupt(T, "unknown watch error")))
                        .transpose()?,
                }))
            }

            pub(super) async fn ctl_inbox_watches(
                &self,
                tenant: &TenantId,
            ) -> Result<Vec<InboxWatch>, StoreError> {
                const T: &str = "inboxes";
                let rows = sqlx::query(INBOX_WATCHES)
                    .bind(tenant.as_str())
                    .fetch_all(&self.pool)
                    .await
                    .map_err(db_err("inbox_watches"))?;
                rows.iter()
                    .map(|row| {
                        Ok(InboxWatch {
                            inbox_id: Self::col(row, T, "id")?,
                            desired_topic: Self::col(row, T, "pubsub_topic")?,
                            topic: Self::col(row, T, "watch_topic")?,
                            expires_at_ms: Self::col(row, T, "watch_expires_at_ms")?,
                        })
                    })
                    .collect()
            }

            pub(super) async fn ctl_inbox_push_audience(
                &self,
                inbox_id: &str,
            ) -> Result<Option<String>, StoreError> {
                let row = sqlx::query(INBOX_PUSH_AUDIENCE)
                    .bind(inbox_id)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(db_err("inbox_push_audience"))?;
                match row {
                    Some(row) => Self::col(&row, "inbox_settings", "push_audience"),
                    None => Ok(None),
                }
            }

            pub(super) async fn ctl_record_inbox_watch(
                &self,
                inbox_id: &str,
                watch: Result<Option<(&str, UnixMillis)>, WatchError>,
            ) -> Result<(), StoreError> {
                const OP: &str = "record_inbox_watch";
                let query = match watch {
                    Ok(registered) => sqlx::query(RECORD_INBOX_WATCH)
                        .bind(inbox_id)
                        .bind(registered.map(|(topic, _)| topic))
                        .bind(registered.map(|(_, expires)| expires)),
                    Err(e) => sqlx::query(RECORD_INBOX_WATCH_ERROR)
                        .bind(inbox_id)
                        .bind(e.as_str()),
                };
                let done = query.execute(&self.pool).await.map_err(db_err(OP))?;
                if done.rows_affected() == 0 {
                    return Err(StoreError::NotFound("inbox"));
                }
                Ok(())
            }

            async fn ctl_grants(
                &self,
                sql: &'static str,
                binds: &[&str],
            ) -> Result<Vec<GrantRecord>, StoreError> {
                let mut query = sqlx::query(sql);
                for b in binds {
                    query = query.bind(*b);
                }
                let rows = query
                    .fetch_all(&self.pool)
                    .await
                    .map_err(db_err("list_grants"))?;
                rows.iter().map(Self::ctl_grant_from_row).collect()
            }

            pub(super) async fn ctl_grants_for_inbox(
                &self,
                inbox_id: &str,
            ) -> Result<Vec<GrantRecord>, StoreError> {
                self.ctl_grants(GRANTS_FOR_INBOX, &[inbox_id]).await
            }

            pub(super) async fn ctl_grants_for_subject(
                &self,
                tenant: &TenantId,
                kind: SubjectKind,
                name: &str,
            ) -> Result<Vec<GrantRecord>, StoreError> {
                self.ctl_grants(GRANTS_FOR_SUBJECT, &[tenant.as_str(), kind.as_str(), name])
                    .await
            }

            pub(super) async fn ctl_grants_for_tenant(
                &self,
                tenant: &TenantId,
            ) -> Result<Vec<GrantRecord>, StoreError> {
                self.ctl_grants(GRANTS_FOR_TENANT, &[tenant.as_str()]).await
            }

            pub(super) async fn ctl_retention_policy(
                &self,
                tenant: &TenantId,
            ) -> Result<Option<RetentionPolicyRecord>, StoreError> {
                let row = sqlx::query(RETENTION_FOR_TENANT)
                    .bind(tenant.as_str())
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(db_err("retention_policy"))?;
                row.as_ref().map(Self::ctl_retention_from_row).transpose()
            }

            pub(super) async fn ctl_changes_since(
                &self,
                after_seq: i64,
                limit: u32,
            ) -> Result<Vec<ControlChange>, StoreError> {
                const T: &str = "control_changes";
                let rows = sqlx::query(CHANGES_SINCE)
                    .bind(after_seq)
                    .bind(i64::from(limit))
                    .fetch_all(&self.pool)
                    .await
                    .map_err(db_err("control_changes_since"))?;
                rows.iter()
                    .map(|row| {
                        let kind: String = Self::col(row, T, "kind")?;
                        Ok(ControlChange {
                            seq: Self::col(row, T, "seq")?,
                            kind: ControlKind::parse(&kind).ok_or(corrupt(T, "unknown kind"))?,
                            namespace: Self::col(row, T, "namespace")?,
                            name: Self::col(row, T, "name")?,
                            tenant_id: to_tenant(T, Self::col(row, T, "tenant_id")?)?,
                            deleted: Self::col(row, T, "deleted")?,
                            at_ms: Self::col(row, T, "at_ms")?,
                        })
                    })
                    .collect()
            }

            pub(super) async fn ctl_latest_seq(&self) -> Result<i64, StoreError> {
                let row = sqlx::query(LATEST_SEQ)
                    .fetch_one(&self.pool)
                    .await
                    .map_err(db_err("latest_control_seq"))?;
                Self::col(&row, "control_change_counter", "seq")
            }
        }
    };
}

/// The tenant id of a Tenant object (its name).
fn to_tenant_name(name: &str) -> Result<TenantId, StoreError> {
    TenantId::new(name).map_err(|_| StoreError::Database {
        op: "control",
        message: "tenant object name is not a valid tenant id".into(),
    })
}

control_sql! {
    store = PgStore,
    db = sqlx::Postgres,
    row = PgRow,
    notify = Some("SELECT pg_notify($1, $2)"),
    lock_keys = " FOR UPDATE",
}

control_sql! {
    store = SqliteStore,
    db = sqlx::Sqlite,
    row = SqliteRow,
    notify = None,
    lock_keys = "",
}

// --- change feed --------------------------------------------------------------------------

/// How often a SQLite feed polls the change counter.
const SQLITE_POLL: Duration = Duration::from_millis(100);
/// How long a PostgreSQL feed waits for a notification before it reads the log anyway
/// (covers notifications lost while the listener reconnected).
const PG_FALLBACK_POLL: Duration = Duration::from_secs(5);
/// Pause after a failed read of the log.
const RETRY_PAUSE: Duration = Duration::from_secs(1);
const FEED_BATCH: u32 = 500;

/// What wakes a feed: a PostgreSQL listener or a timer.
enum Wake {
    Listen(PgListener),
    Poll(Duration),
}

impl Wake {
    async fn wait(&mut self) {
        match self {
            Wake::Poll(interval) => tokio::time::sleep(*interval).await,
            Wake::Listen(listener) => {
                match tokio::time::timeout(PG_FALLBACK_POLL, listener.try_recv()).await {
                    // A notification, or the fallback interval passed: read the log.
                    Ok(Ok(_)) | Err(_) => {}
                    Ok(Err(e)) => {
                        tracing::warn!(error = %e, "control change listener failed; reconnecting");
                        tokio::time::sleep(RETRY_PAUSE).await;
                    }
                }
            }
        }
    }
}

/// Follows the change log from `last`, forwarding every change (and a resync when entries
/// were pruned before this feed read them) until the receiver goes away.
async fn follow<S: Store>(
    store: S,
    mut last: i64,
    mut wake: Wake,
    tx: tokio::sync::mpsc::Sender<ChangeEvent>,
) {
    loop {
        match store.control_changes_since(last, FEED_BATCH).await {
            Ok(changes) => {
                let full = changes.len() == FEED_BATCH as usize;
                for change in changes {
                    if change.seq != last + 1 && tx.send(ChangeEvent::Resync).await.is_err() {
                        return;
                    }
                    last = change.seq;
                    if tx.send(ChangeEvent::Change(change)).await.is_err() {
                        return;
                    }
                }
                if full {
                    continue;
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot read control changes; retrying");
                tokio::time::sleep(RETRY_PAUSE).await;
            }
        }
        tokio::select! {
            () = wake.wait() => {}
            () = tx.closed() => return,
        }
    }
}

impl PgStore {
    pub(super) async fn ctl_subscribe(&self) -> Result<ChangeFeed, StoreError> {
        const OP: &str = "subscribe_changes";
        let mut listener = PgListener::connect_with(&self.pool)
            .await
            .map_err(db_err(OP))?;
        listener.listen(NOTIFY_CHANNEL).await.map_err(db_err(OP))?;
        // LISTEN first, then read where the feed starts: nothing committed in between is lost.
        let start = self.ctl_latest_seq().await?;
        let (tx, rx) = tokio::sync::mpsc::channel(256);
        let task = tokio::spawn(follow(self.clone(), start, Wake::Listen(listener), tx));
        Ok(ChangeFeed::new(rx, task))
    }
}

impl SqliteStore {
    pub(super) async fn ctl_subscribe(&self) -> Result<ChangeFeed, StoreError> {
        let start = self.ctl_latest_seq().await?;
        let (tx, rx) = tokio::sync::mpsc::channel(256);
        let task = tokio::spawn(follow(self.clone(), start, Wake::Poll(SQLITE_POLL), tx));
        Ok(ChangeFeed::new(rx, task))
    }
}
