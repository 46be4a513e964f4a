//! Apply and cleanup of an Inbox, behind kube-runtime's `finalizer()` (finalizer
//! `inbox.mail.helpr.dev/cleanup`).
//!
//! - **apply**: validate → the Tenant exists in the inbox's namespace and is Ready (else
//!   Ready=False TenantNotFound / TenantNotReady, retried with backoff; a Tenant's change
//!   also wakes its inboxes, see the binary) → `UpsertInbox` at the inbox's uid and generation
//!   → `GetInboxStatus` → status (Ready, DataPlaneSynced, Connected, lastSyncTime,
//!   watchExpirationTime; Connected is kept as it was when the status call fails), requeued
//!   at the resync interval.
//! - **cleanup**: `DeleteInbox` (the data plane disconnects the inbox and removes its grants;
//!   NOT_FOUND is done), then the finalizer goes. The inbox's mail stays: cascading soft
//!   delete and purge come with the lifecycle module.
//!
//! Shares the Tenant controller's [`Context`], status draft, status patch, Events, backoff
//! and [`DataPlane`](crate::tenant::DataPlane).

use std::sync::Arc;

use helpr_crds::conditions::{ConditionStatus, reasons, types};
use helpr_crds::{HelprResource, Inbox, StatusConditions};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::api::Api;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::runtime::finalizer::{Event as Finalizer, finalizer};

use super::{InboxError, validate};
use crate::confirmed::Basis;
use crate::control::{ControlError, proto};
use crate::tenant::reconcile::{
    Context, RESYNC_INTERVAL, StatusDraft, describe, fresher_copy, is_true_at_generation, meta_of,
    object_key, parent_of, patch_status_of, publish, report_failure, requeue_on_error,
};
use crate::tenant::{DATA_PLANE_STALE, control_reason};

/// Reconciles one Inbox: adds the finalizer, then [`apply`] or, once deleted, [`cleanup`].
pub async fn reconcile(inbox: Arc<Inbox>, ctx: Arc<Context>) -> Result<Action, InboxError> {
    ctx.metrics.reconcile();
    let key = object_key(inbox.as_ref());
    let namespace = inbox.namespace().unwrap_or_default();
    let api: Api<Inbox> = Api::namespaced(ctx.client.clone(), &namespace);
    let action = finalizer(&api, Inbox::FINALIZER, inbox, |event| async {
        match event {
            Finalizer::Apply(inbox) => apply(&inbox, &ctx).await,
            Finalizer::Cleanup(inbox) => cleanup(&inbox, &ctx).await,
        }
    })
    .await
    .map_err(|source| InboxError::Finalizer {
        inbox: key.clone(),
        source: Box::new(source),
    })?;
    ctx.note_success(&key);
    Ok(action)
}

/// Requeue with backoff; a permanent error (invalid spec) waits for a change.
pub fn error_policy(inbox: Arc<Inbox>, error: &InboxError, ctx: Arc<Context>) -> Action {
    requeue_on_error(inbox.as_ref(), error, &ctx)
}

async fn patch_status(
    ctx: &Context,
    inbox: &Inbox,
    draft: &StatusDraft<Inbox>,
) -> Result<(), InboxError> {
    patch_status_of(ctx, inbox, &draft.status)
        .await
        .map_err(|source| InboxError::PatchStatus {
            inbox: object_key(inbox),
            source,
        })
}

/// Ready=False with the error's reason, a Warning Event, the status patched.
async fn report(
    ctx: &Context,
    inbox: &Inbox,
    draft: &mut StatusDraft<Inbox>,
    error: &InboxError,
) -> Result<(), InboxError> {
    report_failure(ctx, inbox, draft, error)
        .await
        .map_err(|source| InboxError::PatchStatus {
            inbox: object_key(inbox),
            source,
        })
}

/// Converges the inbox on the data plane once its tenant is Ready; writes status.
pub async fn apply(inbox: &Inbox, ctx: &Context) -> Result<Action, InboxError> {
    let mut draft = StatusDraft::new(inbox);
    let name = inbox.name_any();

    let checked = validate(inbox).and_then(|valid| {
        let accepted = &ctx.settings.push_audiences;
        if accepted.is_empty() || accepted.contains(&valid.push_audience) {
            Ok(valid)
        } else {
            Err(InboxError::PushAudienceNotAccepted {
                inbox: object_key(inbox),
            })
        }
    });
    let valid = match checked {
        Ok(valid) => valid,
        Err(error) => {
            ctx.metrics.failure(error.category());
            report(ctx, inbox, &mut draft, &error).await?;
            return Ok(Action::await_change());
        }
    };
    draft.status.remove_condition(types::STALLED);

    // The Tenant must exist in the inbox's namespace and be Ready (the shared store's copy
    // when it is Ready there, else read).
    let parent = parent_of(
        &ctx.client,
        &ctx.parents.tenants,
        &valid.namespace,
        &valid.tenant,
        HelprResource::is_ready,
    )
    .await;
    let tenant = match parent {
        Ok(Some(tenant)) if HelprResource::is_ready(tenant.as_ref()) => tenant,
        Ok(found) => {
            let error = if found.is_some() {
                InboxError::TenantNotReady {
                    inbox: object_key(inbox),
                    tenant: valid.tenant.clone(),
                }
            } else {
                InboxError::TenantNotFound {
                    inbox: object_key(inbox),
                    tenant: valid.tenant.clone(),
                }
            };
            report(ctx, inbox, &mut draft, &error).await?;
            return Err(error);
        }
        Err(source) => {
            let error = InboxError::ReadTenant {
                inbox: object_key(inbox),
                tenant: valid.tenant.clone(),
                source,
            };
            report(ctx, inbox, &mut draft, &error).await?;
            return Err(error);
        }
    };

    // The data plane acknowledged this generation under this tenant a moment ago (this
    // reconcile was woken by the status write of that one, or by the tenant), and the
    // status says so: neither the upsert nor the sync status is asked again (see
    // `crate::confirmed`); the resync asks both.
    // When the store's copy predates the status write of that check, the current one is
    // read.
    let basis = Basis::with_parent(inbox, Some(tenant.as_ref()));
    let synced = |inbox: &Inbox| {
        HelprResource::is_ready(inbox) && is_true_at_generation(inbox, types::DATA_PLANE_SYNCED)
    };
    let fresh = fresher_copy(ctx, inbox, basis, synced).await;
    let inbox = match &fresh {
        Some(fresh) => {
            draft = StatusDraft::new(fresh);
            draft.status.remove_condition(types::STALLED);
            fresh
        }
        None => inbox,
    };
    if ctx.confirmed.is_recent(inbox, basis) && synced(inbox) {
        patch_status(ctx, inbox, &draft).await?;
        return Ok(Action::requeue(RESYNC_INTERVAL));
    }
    ctx.confirmed.forget(inbox);

    let action = match ctx.data_plane.upsert_inbox(valid.upsert_request()).await {
        Ok(result) if result.outcome == proto::Outcome::Stale => {
            // Nothing was written; reported, not retried: a newer view arrives by the watch.
            let message = format!(
                "the data plane has generation {} of inbox {name}, newer than {} (or has deleted it); nothing applied",
                result.applied_generation, valid.generation
            );
            draft.set(
                types::DATA_PLANE_SYNCED,
                ConditionStatus::False,
                DATA_PLANE_STALE,
                message.clone(),
            );
            draft.set(
                types::READY,
                ConditionStatus::False,
                DATA_PLANE_STALE,
                message.clone(),
            );
            draft.status.clear_reconciling();
            publish(ctx, inbox, EventType::Warning, DATA_PLANE_STALE, message).await;
            Action::await_change()
        }
        Ok(result) => {
            draft.set(
                types::DATA_PLANE_SYNCED,
                ConditionStatus::True,
                reasons::SYNCED,
                format!(
                    "the data plane applied generation {} of inbox {name}",
                    result.applied_generation
                ),
            );
            draft.set(
                types::READY,
                ConditionStatus::True,
                reasons::RECONCILED,
                format!(
                    "inbox {} of tenant {} is on the data plane (visibility {:?})",
                    object_key(inbox),
                    valid.tenant,
                    valid.visibility
                ),
            );
            draft.status.clear_reconciling();
            report_connection(ctx, inbox, &mut draft).await;
            ctx.confirmed.record(inbox, basis);
            Action::requeue(RESYNC_INTERVAL)
        }
        Err(source) => {
            let error = InboxError::SyncDataPlane {
                inbox: object_key(inbox),
                source,
            };
            draft.set(
                types::DATA_PLANE_SYNCED,
                ConditionStatus::False,
                error.category(),
                describe(&error),
            );
            report(ctx, inbox, &mut draft, &error).await?;
            return Err(error);
        }
    };
    patch_status(ctx, inbox, &draft).await?;
    Ok(action)
}

/// Asks the data plane how the inbox's sync is doing and sets the Connected condition,
/// `lastSyncTime` and `watchExpirationTime` from it. When the data plane cannot answer
/// (or answers for another incarnation of the inbox), the previous Connected condition and
/// times stay: an outage of the status call says nothing about Gmail.
async fn report_connection(ctx: &Context, inbox: &Inbox, draft: &mut StatusDraft<Inbox>) {
    let namespace = inbox.namespace().unwrap_or_default();
    let name = inbox.name_any();
    match ctx.data_plane.inbox_status(&namespace, &name).await {
        Ok(status) if Some(&status.uid) == inbox.metadata.uid.as_ref() => {
            if !apply_connection(draft, &status) {
                tracing::warn!(inbox = %object_key(inbox), state = status.connection_state, "the data plane answered an unknown connection state; Connected kept");
            }
        }
        Ok(_) => {
            tracing::warn!(inbox = %object_key(inbox), "the data plane's inbox status is of another incarnation; Connected kept");
        }
        Err(e) => {
            tracing::warn!(inbox = %object_key(inbox), reason = control_reason(&e), error = %e, "reading the inbox's sync status failed; Connected kept");
        }
    }
}

/// Sets Connected and the sync times from the data plane's answer; false (nothing changed)
/// for an unknown state.
pub(crate) fn apply_connection(
    draft: &mut StatusDraft<Inbox>,
    status: &proto::InboxStatus,
) -> bool {
    use proto::ConnectionState as C;
    let detail = |fallback: &str| {
        if status.connection_message.is_empty() {
            fallback.to_owned()
        } else {
            status.connection_message.clone()
        }
    };
    let (state, reason, message) = match C::try_from(status.connection_state) {
        Ok(C::Pending) => (
            ConditionStatus::Unknown,
            reasons::PENDING,
            detail("waiting for the first sync with Gmail"),
        ),
        Ok(C::Connected) => (
            ConditionStatus::True,
            reasons::CONNECTED,
            detail("synced with Gmail"),
        ),
        Ok(C::NeedsReconnect) => (
            ConditionStatus::False,
            reasons::NEEDS_RECONNECT,
            "Google refused the inbox's credentials: reconnect the inbox's Google account"
                .to_owned(),
        ),
        Ok(C::Disconnected) => (
            ConditionStatus::False,
            reasons::DISCONNECTED,
            "the data plane disconnected the inbox (its tenant was deleted with policy Retain); it does not sync"
                .to_owned(),
        ),
        Ok(C::Unspecified) | Err(_) => return false,
    };
    draft.set(types::CONNECTED, state, reason, message);
    draft.status.last_sync_time = status.last_sync_time.and_then(time_of);
    draft.status.watch_expiration_time = status.watch_expiration_time.and_then(time_of);
    true
}

/// Unix milliseconds as a Kubernetes time (`None` when out of range).
fn time_of(ms: i64) -> Option<Time> {
    Timestamp::from_millisecond(ms).ok().map(Time)
}

/// Deletes the inbox from the data plane (disconnects it, removes its grants); NOT_FOUND is
/// done.
pub async fn cleanup(inbox: &Inbox, ctx: &Context) -> Result<Action, InboxError> {
    ctx.confirmed.forget(inbox);
    let name = inbox.name_any();
    // Only the identity is needed: an invalid inbox can still be deleted.
    match ctx.data_plane.delete_inbox(meta_of(inbox)).await {
        Ok(_) | Err(ControlError::NotFound(_)) => {}
        Err(source) => {
            let error = InboxError::DeleteFromDataPlane {
                inbox: object_key(inbox),
                source,
            };
            publish(
                ctx,
                inbox,
                EventType::Warning,
                error.category(),
                format!("deletion waits: {}", describe(&error)),
            )
            .await;
            return Err(error);
        }
    }
    publish(
        ctx,
        inbox,
        EventType::Normal,
        reasons::DISCONNECTED,
        format!(
            "inbox {name} deleted: disconnected on the data plane and its grants removed; its mail stays until the lifecycle module's soft delete"
        ),
    )
    .await;
    Ok(Action::await_change())
}
