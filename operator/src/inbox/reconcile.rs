//! Apply and cleanup of an Inbox, behind kube-runtime's `finalizer()` (finalizer
//! `inbox.mail.helpr.dev/cleanup`).
//!
//! - **apply**: validate → the Tenant exists in the inbox's namespace and is Ready (else
//!   Ready=False TenantNotFound / TenantNotReady, retried with backoff; a Tenant's change
//!   also wakes its inboxes, see the binary) → `UpsertInbox` at the inbox's uid and generation
//!   → status (Ready, DataPlaneSynced; Connected is left as it is: the data plane's sync
//!   reports it, Unknown/Pending until then).
//! - **cleanup**: `DeleteInbox` (the data plane disconnects the inbox and removes its grants;
//!   NOT_FOUND is done), then the finalizer goes. The inbox's mail stays: cascading soft
//!   delete and purge come with the lifecycle module.
//!
//! Shares the Tenant controller's [`Context`], status draft, status patch, Events, backoff
//! and [`DataPlane`](crate::tenant::DataPlane).

use std::sync::Arc;

use helpr_crds::conditions::{ConditionStatus, reasons, types};
use helpr_crds::{HelprResource, Inbox, StatusConditions, Tenant};
use kube::ResourceExt;
use kube::api::Api;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::runtime::finalizer::{Event as Finalizer, finalizer};

use super::{InboxError, validate};
use crate::control::{ControlError, proto};
use crate::tenant::DATA_PLANE_STALE;
use crate::tenant::reconcile::{
    Context, RESYNC_INTERVAL, StatusDraft, describe, meta_of, object_key, patch_status_of, publish,
    report_failure, requeue_on_error,
};

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

    let valid = match validate(inbox) {
        Ok(valid) => valid,
        Err(error) => {
            ctx.metrics.failure(error.category());
            report(ctx, inbox, &mut draft, &error).await?;
            return Ok(Action::await_change());
        }
    };
    draft.status.remove_condition(types::STALLED);

    // The Tenant must exist in the inbox's namespace and be Ready.
    let tenants: Api<Tenant> = Api::namespaced(ctx.client.clone(), &valid.namespace);
    let waiting = match tenants.get_opt(&valid.tenant).await {
        Ok(Some(tenant)) if HelprResource::is_ready(&tenant) => None,
        Ok(Some(_)) => Some(InboxError::TenantNotReady {
            inbox: object_key(inbox),
            tenant: valid.tenant.clone(),
        }),
        Ok(None) => Some(InboxError::TenantNotFound {
            inbox: object_key(inbox),
            tenant: valid.tenant.clone(),
        }),
        Err(source) => Some(InboxError::ReadTenant {
            inbox: object_key(inbox),
            tenant: valid.tenant.clone(),
            source,
        }),
    };
    if let Some(error) = waiting {
        report(ctx, inbox, &mut draft, &error).await?;
        return Err(error);
    }

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
                    valid.gmail_address, valid.tenant, valid.visibility
                ),
            );
            draft.status.clear_reconciling();
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

/// Deletes the inbox from the data plane (disconnects it, removes its grants); NOT_FOUND is
/// done.
pub async fn cleanup(inbox: &Inbox, ctx: &Context) -> Result<Action, InboxError> {
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
