//! Apply and cleanup of an InboxGrant, behind kube-runtime's `finalizer()` (finalizer
//! `inboxgrant.mail.helpr.dev/cleanup`).
//!
//! - **apply**: validate → the Inbox exists in the grant's namespace (else Ready=False
//!   InboxNotFound, retried with backoff) → `UpsertGrant` at the grant's uid and generation,
//!   or `DeleteGrant` once `expirationTime` has passed (Ready=False Expired) → status →
//!   requeue just after the expiration time (at most an hour).
//! - **cleanup**: `DeleteGrant` (NOT_FOUND: already revoked), then the finalizer goes.
//!
//! Shares the Tenant controller's [`Context`], status draft, status patch, Events, backoff
//! and [`DataPlane`](crate::tenant::DataPlane).

use std::sync::Arc;

use helpr_crds::conditions::{ConditionStatus, reasons, types};
use helpr_crds::{HelprResource, Inbox, InboxGrant, StatusConditions};
use kube::ResourceExt;
use kube::api::Api;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::runtime::finalizer::{Event as Finalizer, finalizer};

use super::{GrantError, requeue_after, validate};
use crate::control::{ControlError, proto};
use crate::tenant::DATA_PLANE_STALE;
use crate::tenant::reconcile::{
    Context, StatusDraft, describe, meta_of, now, object_key, parent_of, patch_status_of, publish,
    report_failure, requeue_on_error,
};

/// Reconciles one InboxGrant: adds the finalizer, then [`apply`] or, once deleted,
/// [`cleanup`].
pub async fn reconcile(grant: Arc<InboxGrant>, ctx: Arc<Context>) -> Result<Action, GrantError> {
    ctx.metrics.reconcile();
    let key = object_key(grant.as_ref());
    let namespace = grant.namespace().unwrap_or_default();
    let api: Api<InboxGrant> = Api::namespaced(ctx.client.clone(), &namespace);
    let action = finalizer(&api, InboxGrant::FINALIZER, grant, |event| async {
        match event {
            Finalizer::Apply(grant) => apply(&grant, &ctx).await,
            Finalizer::Cleanup(grant) => cleanup(&grant, &ctx).await,
        }
    })
    .await
    .map_err(|source| GrantError::Finalizer {
        grant: key.clone(),
        source: Box::new(source),
    })?;
    ctx.note_success(&key);
    Ok(action)
}

/// Requeue with backoff; a permanent error (invalid spec) waits for a change.
pub fn error_policy(grant: Arc<InboxGrant>, error: &GrantError, ctx: Arc<Context>) -> Action {
    requeue_on_error(grant.as_ref(), error, &ctx)
}

async fn patch_status(
    ctx: &Context,
    grant: &InboxGrant,
    draft: &StatusDraft<InboxGrant>,
) -> Result<(), GrantError> {
    patch_status_of(ctx, grant, &draft.status)
        .await
        .map_err(|source| GrantError::PatchStatus {
            grant: object_key(grant),
            source,
        })
}

/// Ready=False with the error's reason, a Warning Event, the status patched.
async fn report(
    ctx: &Context,
    grant: &InboxGrant,
    draft: &mut StatusDraft<InboxGrant>,
    error: &GrantError,
) -> Result<(), GrantError> {
    report_failure(ctx, grant, draft, error)
        .await
        .map_err(|source| GrantError::PatchStatus {
            grant: object_key(grant),
            source,
        })
}

/// Converges the grant on the data plane (or revokes it once expired); writes status.
pub async fn apply(grant: &InboxGrant, ctx: &Context) -> Result<Action, GrantError> {
    let mut draft = StatusDraft::new(grant);
    let name = grant.name_any();

    let valid = match validate(grant) {
        Ok(valid) => valid,
        Err(error) => {
            ctx.metrics.failure(error.category());
            report(ctx, grant, &mut draft, &error).await?;
            return Ok(Action::await_change());
        }
    };
    draft.status.remove_condition(types::STALLED);

    // Expired: revoke (idempotent) and report; nothing to wait for but a change.
    let at = now();
    if valid.is_expired(at.0) {
        match ctx.data_plane.delete_grant(valid.meta()).await {
            Ok(_) | Err(ControlError::NotFound(_)) => {}
            Err(source) => {
                let error = GrantError::Revoke {
                    grant: object_key(grant),
                    source,
                };
                draft.set(
                    types::DATA_PLANE_SYNCED,
                    ConditionStatus::False,
                    error.category(),
                    describe(&error),
                );
                report(ctx, grant, &mut draft, &error).await?;
                return Err(error);
            }
        }
        let message = format!(
            "inbox grant {name} expired at {}: revoked on the data plane",
            valid.expiration.map(|t| t.to_string()).unwrap_or_default()
        );
        if !StatusDraft::had_ready_reason(grant, reasons::EXPIRED) {
            publish(
                ctx,
                grant,
                EventType::Normal,
                reasons::EXPIRED,
                message.clone(),
            )
            .await;
        }
        draft.set(
            types::DATA_PLANE_SYNCED,
            ConditionStatus::True,
            reasons::SYNCED,
            format!("the data plane has revoked inbox grant {name}"),
        );
        draft.set(
            types::READY,
            ConditionStatus::False,
            reasons::EXPIRED,
            message,
        );
        draft.status.clear_reconciling();
        patch_status(ctx, grant, &draft).await?;
        return Ok(Action::await_change());
    }

    // The referenced Inbox must exist in the grant's namespace (the shared store's copy
    // when it has one, else read).
    let parent = parent_of(
        &ctx.client,
        &ctx.parents.inboxes,
        &valid.namespace,
        &valid.inbox,
        |_: &Inbox| true,
    )
    .await;
    match parent {
        Ok(Some(_)) => {}
        Ok(None) => {
            let error = GrantError::InboxNotFound {
                grant: object_key(grant),
                inbox: valid.inbox.clone(),
            };
            report(ctx, grant, &mut draft, &error).await?;
            return Err(error);
        }
        Err(source) => {
            let error = GrantError::ReadInbox {
                grant: object_key(grant),
                inbox: valid.inbox.clone(),
                source,
            };
            report(ctx, grant, &mut draft, &error).await?;
            return Err(error);
        }
    }

    let action = match ctx.data_plane.upsert_grant(valid.upsert_request()).await {
        Ok(result) if result.outcome == proto::Outcome::Stale => {
            // The data plane has a newer generation (or deleted the grant): nothing was
            // written. Reported, not retried: a newer view of the grant arrives by the watch.
            let message = format!(
                "the data plane has generation {} of inbox grant {name}, newer than {} (or has deleted it); nothing applied",
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
            publish(ctx, grant, EventType::Warning, DATA_PLANE_STALE, message).await;
            Action::await_change()
        }
        Ok(result) => {
            draft.set(
                types::DATA_PLANE_SYNCED,
                ConditionStatus::True,
                reasons::SYNCED,
                format!(
                    "the data plane applied generation {} of inbox grant {name}",
                    result.applied_generation
                ),
            );
            draft.set(
                types::READY,
                ConditionStatus::True,
                reasons::RECONCILED,
                format!(
                    "{:?} {} has role {:?} on inbox {}",
                    valid.subject_kind, valid.subject_name, valid.role, valid.inbox
                ),
            );
            draft.status.clear_reconciling();
            Action::requeue(requeue_after(valid.expiration, at.0))
        }
        Err(source) => {
            let error = GrantError::SyncDataPlane {
                grant: object_key(grant),
                source,
            };
            draft.set(
                types::DATA_PLANE_SYNCED,
                ConditionStatus::False,
                error.category(),
                describe(&error),
            );
            report(ctx, grant, &mut draft, &error).await?;
            return Err(error);
        }
    };
    patch_status(ctx, grant, &draft).await?;
    Ok(action)
}

/// Revokes the grant on the data plane; NOT_FOUND is done.
pub async fn cleanup(grant: &InboxGrant, ctx: &Context) -> Result<Action, GrantError> {
    let name = grant.name_any();
    // Only the identity is needed: an invalid grant can still be deleted.
    match ctx.data_plane.delete_grant(meta_of(grant)).await {
        Ok(_) | Err(ControlError::NotFound(_)) => {}
        Err(source) => {
            let error = GrantError::Revoke {
                grant: object_key(grant),
                source,
            };
            publish(
                ctx,
                grant,
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
        grant,
        EventType::Normal,
        "Revoked",
        format!("inbox grant {name} deleted: revoked on the data plane"),
    )
    .await;
    Ok(Action::await_change())
}
