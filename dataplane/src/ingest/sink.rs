//! The push endpoint's [`PushSink`] over the store: one durable sync job per notification.

use std::sync::Arc;

use async_trait::async_trait;

use super::push::{GmailNotification, PushSink, RecordOutcome, SinkError};
use crate::ids::new_record_id;
use crate::store::{EnqueueOutcome, InboxStatus, NewSyncJob, Store, StoreError};

/// Records push notifications as sync jobs in the store.
pub struct StorePushSink {
    store: Arc<dyn Store>,
}

impl StorePushSink {
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self { store }
    }
}

fn unavailable(e: StoreError) -> SinkError {
    // Any database failure is answered 503: Pub/Sub redelivers, nothing is half-written
    // (each enqueue is one transaction).
    tracing::warn!(error = %e, retryable = e.is_retryable(), "push notification not recorded");
    SinkError::Unavailable
}

#[async_trait]
impl PushSink for StorePushSink {
    async fn record(&self, n: &GmailNotification) -> Result<RecordOutcome, SinkError> {
        let inboxes = self
            .store
            .find_inboxes_by_address(&n.email_address)
            .await
            .map_err(unavailable)?;
        if inboxes.is_empty() {
            return Ok(RecordOutcome::UnknownInbox);
        }
        let connected: Vec<_> = inboxes
            .into_iter()
            .filter(|i| i.status == InboxStatus::Connected.as_str())
            .collect();
        if connected.is_empty() {
            return Ok(RecordOutcome::Disconnected);
        }
        // The same mailbox may be connected by several tenants, each through its own push
        // subscription: a push reaches the inboxes that name its audience (or name none).
        let mut reached = Vec::with_capacity(connected.len());
        for inbox in connected {
            match self
                .store
                .inbox_push_audience(&inbox.id)
                .await
                .map_err(unavailable)?
            {
                Some(expected) if expected != n.audience => {}
                _ => reached.push(inbox),
            }
        }
        if reached.is_empty() {
            return Ok(RecordOutcome::OtherAudience);
        }
        // Each reached inbox gets its job. The answer is the "most recorded" outcome across
        // them.
        let mut best = RecordOutcome::Replay;
        for inbox in reached {
            let outcome = self
                .store
                .enqueue_sync_job(&NewSyncJob {
                    id: new_record_id(),
                    tenant_id: inbox.tenant_id.clone(),
                    inbox_id: inbox.id.clone(),
                    pubsub_message_id: Some(n.pubsub_message_id.clone()),
                    history_id: n.history_id,
                })
                .await;
            match outcome {
                Ok(EnqueueOutcome::Enqueued) => best = RecordOutcome::Recorded,
                Ok(EnqueueOutcome::Duplicate) if best != RecordOutcome::Recorded => {
                    best = RecordOutcome::Duplicate
                }
                Ok(_) => {}
                // Deleted between lookup and enqueue.
                Err(StoreError::NotFound(_)) => {}
                Err(e) => return Err(unavailable(e)),
            }
        }
        Ok(best)
    }
}
