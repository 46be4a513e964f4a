//! Apply and cleanup of a RetentionPolicy, behind kube-runtime's `finalizer()` (finalizer
//! `retentionpolicy.mail.helpr.dev/cleanup`).
//!
//! - **apply**: validate → the Tenant exists in the policy's namespace and is Ready (else
//!   Ready=False TenantNotFound / TenantDeleting / TenantNotReady, retried with backoff; a
//!   Tenant's change also wakes its policies, see the binary; a Tenant that is gone or being
//!   deleted also gets its purge CronJob suspended, PurgeScheduled=False, so no purge runs
//!   against a tenant that does not exist) → `UpsertRetentionPolicy` at the policy's uid
//!   and generation (ALREADY_EXISTS: Stalled with reason Conflict; STALE: DataPlaneStale,
//!   not retried) → server-side apply of the purge pods' NetworkPolicy and the purge CronJob
//!   (only once the data plane holds the policy, so a conflicting policy never schedules a
//!   second purge) → status: DataPlaneSynced, PurgeScheduled (False with reason LegalHold
//!   while the CronJob is suspended), Ready (True with reason LegalHold while purges are
//!   paused), lastPurgeTime (the CronJob's last successful run), nextPurgeTime.
//! - **cleanup**: `DeleteRetentionPolicy` (NOT_FOUND is done), then the finalizer goes; the
//!   CronJob and the NetworkPolicy are garbage-collected through their owner reference.
//!
//! Shares the Tenant controller's [`Context`], status draft, status patch, Events, backoff
//! and [`DataPlane`](crate::tenant::DataPlane).

use std::sync::Arc;

use helpr_crds::conditions::{ConditionStatus, reasons, types};
use helpr_crds::{HelprResource, RetentionPolicy, StatusConditions};
use k8s_openapi::api::batch::v1::CronJob;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;
use kube::api::Api;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::runtime::finalizer::{Event as Finalizer, finalizer};

use super::model::system_time_zones;
use super::{RetentionError, ValidRetentionPolicy, build, purge_name, validate};
use crate::control::{ControlError, proto};
use crate::tenant::DATA_PLANE_STALE;
use crate::tenant::children::FIELD_MANAGER;
use crate::tenant::reconcile::{
    Context, RESYNC_INTERVAL, StatusDraft, apply_child, describe, meta_of, object_key, parent_of,
    patch_status_of, publish, report_failure, requeue_on_error,
};

/// Event reason of a removed policy.
pub const POLICY_REMOVED: &str = "PolicyRemoved";

/// Reconciles one RetentionPolicy: adds the finalizer, then [`apply`] or, once deleted,
/// [`cleanup`].
pub async fn reconcile(
    policy: Arc<RetentionPolicy>,
    ctx: Arc<Context>,
) -> Result<Action, RetentionError> {
    ctx.metrics.reconcile();
    let key = object_key(policy.as_ref());
    let namespace = policy.namespace().unwrap_or_default();
    let api: Api<RetentionPolicy> = Api::namespaced(ctx.client.clone(), &namespace);
    let action = finalizer(&api, RetentionPolicy::FINALIZER, policy, |event| async {
        match event {
            Finalizer::Apply(policy) => apply(&policy, &ctx).await,
            Finalizer::Cleanup(policy) => cleanup(&policy, &ctx).await,
        }
    })
    .await
    .map_err(|source| RetentionError::Finalizer {
        policy: key.clone(),
        source: Box::new(source),
    })?;
    ctx.note_success(&key);
    Ok(action)
}

/// Requeue with backoff; a permanent error (invalid spec, conflict) waits for a change or
/// the longest backoff.
pub fn error_policy(
    policy: Arc<RetentionPolicy>,
    error: &RetentionError,
    ctx: Arc<Context>,
) -> Action {
    requeue_on_error(policy.as_ref(), error, &ctx)
}

async fn patch_status(
    ctx: &Context,
    policy: &RetentionPolicy,
    draft: &StatusDraft<RetentionPolicy>,
) -> Result<(), RetentionError> {
    patch_status_of(ctx, policy, &draft.status)
        .await
        .map_err(|source| RetentionError::PatchStatus {
            policy: object_key(policy),
            source,
        })
}

/// Ready=False with the error's reason (Stalled when permanent), a Warning Event, the status
/// patched.
async fn report(
    ctx: &Context,
    policy: &RetentionPolicy,
    draft: &mut StatusDraft<RetentionPolicy>,
    error: &RetentionError,
) -> Result<(), RetentionError> {
    report_failure(ctx, policy, draft, error)
        .await
        .map_err(|source| RetentionError::PatchStatus {
            policy: object_key(policy),
            source,
        })
}

/// The Tenant of `valid`, Ready, as the validated model its pods are built from.
async fn ready_tenant(
    ctx: &Context,
    policy: &RetentionPolicy,
    valid: &ValidRetentionPolicy,
) -> Result<crate::tenant::ValidTenant, RetentionError> {
    let key = object_key(policy);
    // The shared store's copy when it is Ready there, else read.
    let parent = parent_of(
        &ctx.client,
        &ctx.parents.tenants,
        &valid.namespace,
        &valid.tenant,
        HelprResource::is_ready,
    )
    .await;
    let tenant = match parent {
        Ok(Some(tenant)) if tenant.metadata.deletion_timestamp.is_some() => {
            return Err(RetentionError::TenantDeleting {
                policy: key,
                tenant: valid.tenant.clone(),
            });
        }
        Ok(Some(tenant)) if HelprResource::is_ready(tenant.as_ref()) => tenant,
        Ok(Some(_)) => {
            return Err(RetentionError::TenantNotReady {
                policy: key,
                tenant: valid.tenant.clone(),
            });
        }
        Ok(None) => {
            return Err(RetentionError::TenantNotFound {
                policy: key,
                tenant: valid.tenant.clone(),
            });
        }
        Err(source) => {
            return Err(RetentionError::ReadTenant {
                policy: key,
                tenant: valid.tenant.clone(),
                source,
            });
        }
    };
    crate::tenant::validate(&tenant, &ctx.settings).map_err(|source| {
        RetentionError::InvalidTenant {
            policy: key,
            tenant: valid.tenant.clone(),
            source: Box::new(source),
        }
    })
}

/// Suspends the purge CronJob `name` (a merge patch of `spec.suspend`; the next apply
/// of the policy takes the field back). Returns whether there was a CronJob to suspend.
async fn suspend_purges(ctx: &Context, namespace: &str, name: &str) -> Result<bool, kube::Error> {
    let api: Api<CronJob> = Api::namespaced(ctx.client.clone(), namespace);
    let patch = serde_json::json!({"spec": {"suspend": true}});
    let params = kube::api::PatchParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        ..kube::api::PatchParams::default()
    };
    match api
        .patch(name, &params, &kube::api::Patch::Merge(&patch))
        .await
    {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(false),
        Err(e) => Err(e),
    }
}

/// Pushes the policy to the data plane, then schedules its purges; writes status.
pub async fn apply(policy: &RetentionPolicy, ctx: &Context) -> Result<Action, RetentionError> {
    let mut draft = StatusDraft::new(policy);
    let name = policy.name_any();

    let valid = match validate(policy, system_time_zones()) {
        Ok(valid) => valid,
        Err(error) => {
            ctx.metrics.failure(error.category());
            report(ctx, policy, &mut draft, &error).await?;
            return Ok(Action::await_change());
        }
    };
    draft.status.remove_condition(types::STALLED);

    let tenant = match ready_tenant(ctx, policy, &valid).await {
        Ok(tenant) => tenant,
        Err(error) => {
            if matches!(
                error,
                RetentionError::TenantNotFound { .. } | RetentionError::TenantDeleting { .. }
            ) {
                // No purge runs against a tenant that is gone or going.
                let name = purge_name(&valid.tenant);
                match suspend_purges(ctx, &valid.namespace, &name).await {
                    Ok(suspended) => draft.set(
                        types::PURGE_SCHEDULED,
                        ConditionStatus::False,
                        error.category(),
                        if suspended {
                            format!(
                                "purges are suspended (CronJob {name}): {}",
                                describe(&error)
                            )
                        } else {
                            format!("no purges are scheduled: {}", describe(&error))
                        },
                    ),
                    Err(source) => {
                        let failed = RetentionError::SuspendCronJob {
                            policy: object_key(policy),
                            name,
                            source,
                        };
                        report(ctx, policy, &mut draft, &failed).await?;
                        return Err(failed);
                    }
                }
            }
            report(ctx, policy, &mut draft, &error).await?;
            return Err(error);
        }
    };

    // The data plane first: it decides which object owns the tenant's policy.
    match ctx
        .data_plane
        .upsert_retention_policy(valid.upsert_request())
        .await
    {
        Ok(result) if result.outcome == proto::Outcome::Stale => {
            // Nothing was written; reported, not retried: a newer view arrives by the watch.
            let message = format!(
                "the data plane has generation {} of retention policy {name}, newer than {} (or has deleted it); nothing applied",
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
            publish(ctx, policy, EventType::Warning, DATA_PLANE_STALE, message).await;
            patch_status(ctx, policy, &draft).await?;
            return Ok(Action::await_change());
        }
        Ok(result) => {
            draft.set(
                types::DATA_PLANE_SYNCED,
                ConditionStatus::True,
                reasons::SYNCED,
                format!(
                    "the data plane applied generation {} of retention policy {name}",
                    result.applied_generation
                ),
            );
        }
        Err(source) => {
            let error = RetentionError::from_upsert(object_key(policy), &valid.tenant, source);
            draft.set(
                types::DATA_PLANE_SYNCED,
                ConditionStatus::False,
                error.category(),
                describe(&error),
            );
            report(ctx, policy, &mut draft, &error).await?;
            return Err(error);
        }
    }

    // Children (pure build, then server-side apply).
    let children = build(&valid, &tenant, &ctx.settings);
    let child_name = children.cron_job.metadata.name.clone().unwrap_or_default();
    let ns = valid.namespace.as_str();
    let applied = async {
        apply_child::<NetworkPolicy>(&ctx.client, ns, &children.network_policy)
            .await
            .map_err(|source| RetentionError::ApplyNetworkPolicy {
                policy: object_key(policy),
                name: child_name.clone(),
                source,
            })?;
        apply_child::<CronJob>(&ctx.client, ns, &children.cron_job)
            .await
            .map_err(|source| RetentionError::ApplyCronJob {
                policy: object_key(policy),
                name: child_name.clone(),
                source,
            })
    }
    .await;
    let cron_job = match applied {
        Ok(cron_job) => cron_job,
        Err(error) => {
            draft.set(
                types::PURGE_SCHEDULED,
                ConditionStatus::False,
                error.category(),
                describe(&error),
            );
            report(ctx, policy, &mut draft, &error).await?;
            return Err(error);
        }
    };

    let cron_status = cron_job.status.unwrap_or_default();
    draft.status.last_purge_time = cron_status.last_successful_time;
    draft.status.next_purge_time = valid.next_purge_after(draft.now.0).map(Time);
    let running = cron_status.active.map_or(0, |jobs| jobs.len());
    if valid.legal_hold {
        let message = format!(
            "legal hold: cron job {child_name} is suspended and the data plane purges and deletes nothing of tenant {}",
            valid.tenant
        );
        draft.set(
            types::PURGE_SCHEDULED,
            ConditionStatus::False,
            reasons::LEGAL_HOLD,
            message.clone(),
        );
        if !StatusDraft::had_ready_reason(policy, reasons::LEGAL_HOLD) {
            publish(
                ctx,
                policy,
                EventType::Normal,
                reasons::LEGAL_HOLD,
                message.clone(),
            )
            .await;
        }
        draft.set(
            types::READY,
            ConditionStatus::True,
            reasons::LEGAL_HOLD,
            format!(
                "retention policy {name} of tenant {} is in force; purges are paused by the legal hold",
                valid.tenant
            ),
        );
    } else {
        let next = draft
            .status
            .next_purge_time
            .as_ref()
            .map_or_else(|| "not computed".to_owned(), |t| t.0.to_string());
        draft.set(
            types::PURGE_SCHEDULED,
            ConditionStatus::True,
            reasons::SCHEDULED,
            format!(
                "cron job {child_name} runs purge for tenant {} on {:?} ({}); next run {next}, {running} running",
                valid.tenant, valid.schedule, valid.time_zone
            ),
        );
        draft.set(
            types::READY,
            ConditionStatus::True,
            reasons::RECONCILED,
            format!(
                "retention policy {name} of tenant {} is in force: {} days' grace, {}",
                valid.tenant,
                valid.grace_period_days,
                match valid.delete_after_days {
                    Some(days) => format!("conversations deleted after {days} days"),
                    None => "no automatic deletion".to_owned(),
                }
            ),
        );
    }
    draft.status.clear_reconciling();
    patch_status(ctx, policy, &draft).await?;
    // The CronJob's status changes wake the controller (owned watch).
    Ok(Action::requeue(RESYNC_INTERVAL))
}

/// Removes the policy from the data plane (NOT_FOUND is done); the CronJob goes with its
/// owner reference.
pub async fn cleanup(policy: &RetentionPolicy, ctx: &Context) -> Result<Action, RetentionError> {
    let name = policy.name_any();
    // Only the identity is needed: an invalid policy can still be deleted.
    match ctx
        .data_plane
        .delete_retention_policy(meta_of(policy))
        .await
    {
        Ok(_) | Err(ControlError::NotFound(_)) => {}
        Err(source) => {
            let error = RetentionError::DeleteFromDataPlane {
                policy: object_key(policy),
                source,
            };
            publish(
                ctx,
                policy,
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
        policy,
        EventType::Normal,
        POLICY_REMOVED,
        format!(
            "retention policy {name} deleted: the data plane purges nothing of tenant {} until a new policy exists; the purge cron job goes with the policy",
            policy.tenant_name()
        ),
    )
    .await;
    Ok(Action::await_change())
}
