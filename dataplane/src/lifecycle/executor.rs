//! The executor: applies [`plan`]'s actions through the store and the search index, in
//! bounded batches, and reports counts.

use std::sync::Arc;

use super::plan::{Action, Candidates, Policy, plan};
use crate::ids::TenantId;
use crate::search::{DeleteScope, SearchError, SearchIndex};
use crate::store::{
    DeleteReason, Deletion, PurgeOutcome, RestoreOutcome, Store, StoreError, UnixMillis,
};

/// Who the retention job acts as in `deleted_by` and the audit trail.
pub const RETENTION_ACTOR: &str = "retention";

/// Why a lifecycle call failed. Ids and reasons only, never content.
#[derive(Debug, thiserror::Error)]
pub enum LifecycleError {
    /// The tenant does not exist.
    #[error("tenant {0} does not exist")]
    UnknownTenant(TenantId),
    /// The tenant has no such message, conversation or inbox.
    #[error("tenant {0} has no such {1}")]
    NotFound(TenantId, &'static str),
    /// The store refused the change (e.g. a restore into a deleted inbox).
    #[error("{0}")]
    Refused(&'static str),
    /// [`PurgeOptions::batch`] out of range.
    #[error("batch size must be between 1 and {max}", max = PurgeOptions::MAX_BATCH)]
    InvalidBatch,
    /// The database failed.
    #[error(transparent)]
    Store(StoreError),
    /// The search tier failed; what the store recorded stays (hidden from reads).
    #[error("removing mail from the search index: {0}")]
    Search(#[source] SearchError),
}

impl LifecycleError {
    /// Whether the same call may succeed later (every call is safe to repeat).
    pub fn is_retryable(&self) -> bool {
        match self {
            LifecycleError::Store(e) => e.is_retryable(),
            LifecycleError::Search(e) => e.is_retryable(),
            _ => false,
        }
    }

    fn from_store(tenant: &TenantId, e: StoreError) -> Self {
        match e {
            StoreError::NotFound(what) => LifecycleError::NotFound(tenant.clone(), what),
            StoreError::Conflict(why) => LifecycleError::Refused(why),
            e => LifecycleError::Store(e),
        }
    }
}

/// Whether mail left the search index at once.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "snake_case", tag = "state")]
pub enum IndexRemoval {
    /// Removed (or there was nothing to remove).
    #[default]
    Done,
    /// Another process holds the tenant's index writer; its indexer removes the mail
    /// within its indexing interval. Searches hide it meanwhile (every hit is re-checked).
    Deferred { holder: String },
}

/// Outcome of a soft delete through [`Lifecycle`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DeleteOutcome {
    /// Messages soft-deleted by this call (0 when they already were).
    pub messages: u64,
    pub index: IndexRemoval,
}

/// How a retention run goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PurgeOptions {
    /// The clock: every cutoff is computed from it.
    pub now_ms: UnixMillis,
    /// Candidates fetched (and purged in one transaction) per batch.
    pub batch: u32,
    /// Count what would be done, change nothing.
    pub dry_run: bool,
}

impl PurgeOptions {
    /// Largest batch.
    pub const MAX_BATCH: u32 = 10_000;
    /// Default batch.
    pub const DEFAULT_BATCH: u32 = 500;

    /// A real run at `now_ms` with the default batch size.
    pub fn at(now_ms: UnixMillis) -> Self {
        PurgeOptions {
            now_ms,
            batch: Self::DEFAULT_BATCH,
            dry_run: false,
        }
    }
}

/// What a retention run did (or, in a dry run, would do). Counts only.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize)]
pub struct PurgeReport {
    pub tenant: String,
    pub dry_run: bool,
    pub grace_period_days: u32,
    pub delete_after_days: Option<u32>,
    pub legal_hold: bool,
    /// Conversations soft-deleted because of `delete_after_days`.
    pub soft_deleted_conversations: u64,
    /// Their messages (not known in a dry run: 0).
    pub soft_deleted_messages: u64,
    /// Messages removed for good (grace period elapsed).
    pub purged_messages: u64,
    /// Conversations removed because their last message was purged (0 in a dry run).
    pub purged_conversations: u64,
    /// Conversations and messages that were due but kept because of the legal hold.
    pub skipped_legal_hold: u64,
    /// Due messages kept for now because the search index is held by another process,
    /// which first removes them from the index (the next run purges them).
    pub awaiting_index: u64,
    /// Deleted documents removed from the search index files for good after the purge
    /// (their segments rewritten without them; 0 in a dry run).
    pub compacted_index_documents: u64,
    /// Whether that compaction ran (`deferred` while another process holds the index; the
    /// next run compacts).
    pub index_compaction: IndexRemoval,
}

/// Soft delete, restore and retention over a store and the search index.
#[derive(Clone)]
pub struct Lifecycle {
    store: Arc<dyn Store>,
    index: Arc<dyn SearchIndex>,
}

impl Lifecycle {
    /// Lifecycle over the database of record and the tenant search indexes.
    pub fn new(store: Arc<dyn Store>, index: Arc<dyn SearchIndex>) -> Self {
        Self { store, index }
    }

    async fn require_tenant(&self, tenant: &TenantId) -> Result<(), LifecycleError> {
        match self.store.get_tenant(tenant).await {
            Ok(Some(_)) => Ok(()),
            Ok(None) => Err(LifecycleError::UnknownTenant(tenant.clone())),
            Err(e) => Err(LifecycleError::Store(e)),
        }
    }

    /// The tenant's retention policy, or the defaults.
    pub async fn policy(&self, tenant: &TenantId) -> Result<Policy, LifecycleError> {
        let record = self
            .store
            .retention_policy(tenant)
            .await
            .map_err(LifecycleError::Store)?;
        Ok(Policy::from_record(record.as_ref()))
    }

    /// Removes `scopes` from the index, then confirms the removal of `ids` (what the store
    /// just soft-deleted) in the store. A held index defers the removal to its holder (the
    /// markers stay set).
    async fn remove_from_index(
        &self,
        tenant: &TenantId,
        scopes: &[DeleteScope],
        ids: &[String],
    ) -> Result<IndexRemoval, LifecycleError> {
        for scope in scopes {
            match self.index.delete(tenant, scope).await {
                Ok(()) => {}
                Err(SearchError::Locked { holder, .. }) => {
                    return Ok(IndexRemoval::Deferred { holder });
                }
                Err(e) => return Err(LifecycleError::Search(e)),
            }
        }
        self.store
            .mark_removed_from_index(tenant, ids)
            .await
            .map_err(LifecycleError::Store)?;
        Ok(IndexRemoval::Done)
    }

    /// Soft-deletes one message and removes it from search.
    pub async fn delete_message(
        &self,
        tenant: &TenantId,
        message_id: &str,
        actor: &str,
        now_ms: UnixMillis,
    ) -> Result<DeleteOutcome, LifecycleError> {
        let deletion = Deletion {
            actor: actor.to_owned(),
            reason: DeleteReason::User,
            at_ms: now_ms,
        };
        let changed = self
            .store
            .soft_delete_message(tenant, message_id, &deletion)
            .await
            .map_err(|e| LifecycleError::from_store(tenant, e))?;
        // A repeat removes it from the index again (a first attempt may have failed there).
        let ids = vec![message_id.to_owned()];
        let index = self
            .remove_from_index(tenant, &[DeleteScope::Message(message_id.to_owned())], &ids)
            .await?;
        Ok(DeleteOutcome {
            messages: u64::from(changed),
            index,
        })
    }

    /// Soft-deletes every live message of a conversation and removes them from search
    /// (message by message, so that a message arriving in the thread meanwhile stays
    /// searchable).
    pub async fn delete_conversation(
        &self,
        tenant: &TenantId,
        conversation_id: &str,
        actor: &str,
        now_ms: UnixMillis,
    ) -> Result<DeleteOutcome, LifecycleError> {
        let deletion = Deletion {
            actor: actor.to_owned(),
            reason: DeleteReason::User,
            at_ms: now_ms,
        };
        self.soft_delete_conversation(tenant, conversation_id, &deletion)
            .await
    }

    async fn soft_delete_conversation(
        &self,
        tenant: &TenantId,
        conversation_id: &str,
        deletion: &Deletion,
    ) -> Result<DeleteOutcome, LifecycleError> {
        let ids = self
            .store
            .soft_delete_conversation(tenant, conversation_id, deletion)
            .await
            .map_err(|e| LifecycleError::from_store(tenant, e))?;
        let scopes: Vec<DeleteScope> = ids.iter().cloned().map(DeleteScope::Message).collect();
        let index = self.remove_from_index(tenant, &scopes, &ids).await?;
        Ok(DeleteOutcome {
            messages: ids.len() as u64,
            index,
        })
    }

    /// Soft-deletes all of an inbox's mail (the cascade of an Inbox deletion), marks the
    /// inbox deleted and removes its mail from search.
    pub async fn delete_inbox(
        &self,
        tenant: &TenantId,
        inbox_id: &str,
        actor: &str,
        now_ms: UnixMillis,
    ) -> Result<DeleteOutcome, LifecycleError> {
        let deletion = Deletion {
            actor: actor.to_owned(),
            reason: DeleteReason::InboxDeleted,
            at_ms: now_ms,
        };
        let ids = self
            .store
            .soft_delete_inbox(tenant, inbox_id, &deletion)
            .await
            .map_err(|e| LifecycleError::from_store(tenant, e))?;
        // A deleted inbox holds no live mail (what arrives later is stored soft-deleted), so
        // the whole inbox can leave the index in one delete, repeated on every call (a first
        // attempt may have failed there; its markers stay for the indexer).
        let index = self
            .remove_from_index(tenant, &[DeleteScope::Inbox(inbox_id.to_owned())], &ids)
            .await?;
        Ok(DeleteOutcome {
            messages: ids.len() as u64,
            index,
        })
    }

    /// Restores a soft-deleted message within the tenant's grace period; the indexer
    /// indexes it again.
    pub async fn restore_message(
        &self,
        tenant: &TenantId,
        message_id: &str,
        actor: &str,
        now_ms: UnixMillis,
    ) -> Result<RestoreOutcome, LifecycleError> {
        let cutoff = self.policy(tenant).await?.grace_cutoff(now_ms);
        self.store
            .restore_message(tenant, message_id, actor, cutoff, now_ms)
            .await
            .map_err(|e| LifecycleError::from_store(tenant, e))
    }

    /// Restores the messages of a conversation soft-deleted within the tenant's grace
    /// period; the indexer indexes them again.
    pub async fn restore_conversation(
        &self,
        tenant: &TenantId,
        conversation_id: &str,
        actor: &str,
        now_ms: UnixMillis,
    ) -> Result<RestoreOutcome, LifecycleError> {
        let cutoff = self.policy(tenant).await?.grace_cutoff(now_ms);
        self.store
            .restore_conversation(tenant, conversation_id, actor, cutoff, now_ms)
            .await
            .map_err(|e| LifecycleError::from_store(tenant, e))
    }

    /// One retention run for the tenant (what `helpr-dataplane purge` does): soft-deletes
    /// conversations past `delete_after_days`, then purges mail past its grace period,
    /// batch by batch. Legal hold: nothing is deleted or purged, what was due is counted.
    pub async fn run_retention(
        &self,
        tenant: &TenantId,
        options: PurgeOptions,
    ) -> Result<PurgeReport, LifecycleError> {
        if options.batch == 0 || options.batch > PurgeOptions::MAX_BATCH {
            return Err(LifecycleError::InvalidBatch);
        }
        self.require_tenant(tenant).await?;
        let now = options.now_ms;
        let mut policy = self.policy(tenant).await?;
        let mut report = PurgeReport {
            tenant: tenant.to_string(),
            dry_run: options.dry_run,
            grace_period_days: policy.grace_period_days,
            delete_after_days: policy.delete_after_days,
            legal_hold: policy.legal_hold,
            ..PurgeReport::default()
        };
        let store = &self.store;
        let deletion = Deletion {
            actor: RETENTION_ACTOR.into(),
            reason: DeleteReason::Retention,
            at_ms: now,
        };

        // 1. delete_after_days: soft-delete old conversations.
        if let Some(cutoff) = policy.delete_after_cutoff(now) {
            let mut after: Option<String> = None;
            loop {
                let batch = store
                    .list_conversations_older_than(tenant, cutoff, after.as_deref(), options.batch)
                    .await
                    .map_err(LifecycleError::Store)?;
                let Some(last) = batch.last() else { break };
                after = Some(last.conversation_id.clone());
                let candidates = Candidates {
                    soft_deleted: &[],
                    conversations: &batch,
                };
                for action in plan(&policy, now, &candidates) {
                    match action {
                        Action::SoftDeleteConversation {
                            conversation_id, ..
                        } => {
                            report.soft_deleted_conversations += 1;
                            if options.dry_run {
                                continue;
                            }
                            let done = self
                                .soft_delete_conversation(tenant, &conversation_id, &deletion)
                                .await?;
                            report.soft_deleted_messages += done.messages;
                        }
                        Action::Hold(_) => report.skipped_legal_hold += 1,
                        Action::Purge { .. } => {}
                    }
                }
            }
        }

        // 2. Purge what has had its grace period.
        let cutoff = policy.grace_cutoff(now);
        let mut after: Option<String> = None;
        loop {
            let batch = store
                .list_purge_candidates(tenant, cutoff, after.as_deref(), options.batch)
                .await
                .map_err(LifecycleError::Store)?;
            let Some(last) = batch.last() else { break };
            after = Some(last.message_id.clone());
            if !options.dry_run {
                // A legal hold set during the run stops it from the next batch on.
                policy.legal_hold |= self.policy(tenant).await?.legal_hold;
                report.legal_hold = policy.legal_hold;
            }
            let candidates = Candidates {
                soft_deleted: &batch,
                conversations: &[],
            };
            let mut ready = Vec::with_capacity(batch.len());
            for action in plan(&policy, now, &candidates) {
                match action {
                    Action::Purge {
                        message_id,
                        index_pending,
                        ..
                    } => {
                        if !index_pending || options.dry_run {
                            ready.push(message_id);
                            continue;
                        }
                        // Its removal from the index is unconfirmed: remove it first, so
                        // the purge leaves nothing behind in search either.
                        let scope = DeleteScope::Message(message_id.clone());
                        match self.index.delete(tenant, &scope).await {
                            Ok(()) => ready.push(message_id),
                            Err(SearchError::Locked { .. }) => report.awaiting_index += 1,
                            Err(e) => return Err(LifecycleError::Search(e)),
                        }
                    }
                    Action::Hold(_) => report.skipped_legal_hold += 1,
                    Action::SoftDeleteConversation { .. } => {}
                }
            }
            if options.dry_run {
                report.purged_messages += ready.len() as u64;
                continue;
            }
            let PurgeOutcome {
                messages,
                conversations,
            } = store
                .purge_messages(tenant, &ready, cutoff, RETENTION_ACTOR, now)
                .await
                .map_err(LifecycleError::Store)?;
            report.purged_messages += messages;
            report.purged_conversations += conversations;
        }

        // 3. Nothing of deleted mail stays in the index files: rewrite the segments that
        // still hold deleted documents (soft-deleted mail left search when it was deleted;
        // a restore indexes it again from the sealed store).
        if !options.dry_run {
            match self.index.compact(tenant).await {
                Ok(n) => report.compacted_index_documents = n,
                Err(SearchError::Locked { holder, .. }) => {
                    report.index_compaction = IndexRemoval::Deferred { holder }
                }
                Err(e) => return Err(LifecycleError::Search(e)),
            }
        }
        if report.purged_messages > 0 || report.soft_deleted_conversations > 0 {
            tracing::info!(
                tenant = %tenant,
                dry_run = options.dry_run,
                soft_deleted_conversations = report.soft_deleted_conversations,
                purged_messages = report.purged_messages,
                compacted_index_documents = report.compacted_index_documents,
                skipped_legal_hold = report.skipped_legal_hold,
                "retention run"
            );
        }
        Ok(report)
    }
}
