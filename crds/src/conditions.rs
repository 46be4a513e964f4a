//! Status conditions: the standard Kubernetes shape, the condition types and reasons of this API,
//! and setters that follow the apiserver's rules.
//!
//! Every kind reports:
//! - [`types::READY`], the summary condition, always present once the operator has seen the object
//!   (Unknown with reason [`reasons::PENDING`] on the first reconcile);
//! - the kstatus conditions [`types::RECONCILING`] and [`types::STALLED`], present only while
//!   True (the setters remove them when set to anything else), which is what Flux, kpt and
//!   cli-utils read;
//! - domain conditions: [`types::KMS_PROVISIONED`] (Tenant), [`types::CONNECTED`] (Inbox),
//!   [`types::DATA_PLANE_SYNCED`] (every kind).
//!
//! Reasons are one CamelCase word; messages are a sentence naming the object, lowercase start
//! allowed, and never contain secret material.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Condition types.
pub mod types {
    /// Summary condition: the object is fully reconciled and in force.
    pub const READY: &str = "Ready";
    /// kstatus: the operator is working towards the spec (present only while True).
    pub const RECONCILING: &str = "Reconciling";
    /// kstatus: the operator cannot make progress without a change to the spec or to another
    /// object (present only while True).
    pub const STALLED: &str = "Stalled";
    /// Tenant: the tenant's transit key and policy exist in the KMS and the operator can use them.
    pub const KMS_PROVISIONED: &str = "KMSProvisioned";
    /// Every kind: the data plane holds the current desired state of this object.
    pub const DATA_PLANE_SYNCED: &str = "DataPlaneSynced";
    /// Inbox: the Gmail mailbox is connected; the reason is one of
    /// [`super::reasons::CONNECTED`], [`super::reasons::NEEDS_RECONNECT`] or
    /// [`super::reasons::DISCONNECTED`].
    pub const CONNECTED: &str = "Connected";
    /// RetentionPolicy: the purge CronJob exists and runs on the schedule (False with reason
    /// [`super::reasons::LEGAL_HOLD`] while the legal hold suspends it).
    pub const PURGE_SCHEDULED: &str = "PurgeScheduled";

    /// The conditions that are present only while True (kstatus).
    pub const ABNORMAL_TRUE_ONLY: [&str; 2] = [RECONCILING, STALLED];
}

/// Condition reasons: one CamelCase word each, part of the API.
pub mod reasons {
    /// The operator has not finished its first reconcile of the object (status Unknown).
    pub const PENDING: &str = "Pending";
    /// Ready: everything the spec asks for is in place.
    pub const RECONCILED: &str = "Reconciled";
    /// Reconciling: the operator is applying a new generation of the spec.
    pub const PROGRESSING: &str = "Progressing";
    /// Ready False / Stalled: the spec fails a validation the schema could not express.
    pub const INVALID_SPEC: &str = "InvalidSpec";
    /// Ready False / Reconciling: the object is being deleted and its cleanup is running.
    pub const DELETING: &str = "Deleting";
    /// Ready False: the referenced Tenant does not exist.
    pub const TENANT_NOT_FOUND: &str = "TenantNotFound";
    /// Ready False: the referenced Tenant exists but is not Ready.
    pub const TENANT_NOT_READY: &str = "TenantNotReady";
    /// Ready False: the referenced Inbox does not exist.
    pub const INBOX_NOT_FOUND: &str = "InboxNotFound";
    /// Ready False: the referenced Inbox exists but is not Ready.
    pub const INBOX_NOT_READY: &str = "InboxNotReady";
    /// Ready False / KMSProvisioned False: a Secret named in the spec is missing or lacks the key.
    pub const SECRET_NOT_FOUND: &str = "SecretNotFound";
    /// KMSProvisioned True: the transit key and policy exist.
    pub const KEY_PROVISIONED: &str = "KeyProvisioned";
    /// KMSProvisioned False: the KMS refused the operator's credentials.
    pub const KMS_AUTH_FAILED: &str = "KMSAuthFailed";
    /// KMSProvisioned False: the KMS could not be reached or answered with an error.
    pub const KMS_UNAVAILABLE: &str = "KMSUnavailable";
    /// Tenant deletion with `deletionPolicy: Shred` waits: a RetentionPolicy of the tenant has
    /// `legalHold: true`. RetentionPolicy Ready True: purge is paused by the legal hold.
    pub const LEGAL_HOLD: &str = "LegalHold";
    /// DataPlaneSynced True: the data plane acknowledged the current generation.
    pub const SYNCED: &str = "Synced";
    /// DataPlaneSynced False: the data plane's control API could not be reached or refused.
    pub const DATA_PLANE_UNAVAILABLE: &str = "DataPlaneUnavailable";
    /// Connected True: Gmail accepted the stored credentials and the watch is active.
    pub const CONNECTED: &str = "Connected";
    /// Connected False: Gmail revoked or rejected the credentials; a person must reconnect the
    /// mailbox.
    pub const NEEDS_RECONNECT: &str = "NeedsReconnect";
    /// Connected False: the mailbox was never connected or was disconnected on purpose.
    pub const DISCONNECTED: &str = "Disconnected";
    /// InboxGrant Ready False: `expirationTime` has passed; the grant no longer gives access.
    pub const EXPIRED: &str = "Expired";
    /// RetentionPolicy Ready False / Stalled: another RetentionPolicy already governs the tenant.
    pub const CONFLICT: &str = "Conflict";
    /// RetentionPolicy PurgeScheduled True: the purge CronJob is in place and not suspended.
    pub const SCHEDULED: &str = "Scheduled";
}

/// Regular expression of a condition type (the apiserver's `metav1.Condition` validation).
pub const CONDITION_TYPE_PATTERN: &str = r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])$";

/// Regular expression of a condition reason (the apiserver's `metav1.Condition` validation).
pub const CONDITION_REASON_PATTERN: &str = r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$";

/// Longest condition message the schema accepts.
pub const CONDITION_MESSAGE_MAX_LEN: usize = 32768;

/// Status of a condition.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum ConditionStatus {
    /// The condition holds.
    True,
    /// The condition does not hold.
    False,
    /// The operator cannot tell (yet).
    Unknown,
}

impl ConditionStatus {
    /// `True` for `true`, `False` for `false`.
    pub fn from_bool(value: bool) -> Self {
        if value { Self::True } else { Self::False }
    }
}

/// One aspect of the object's current state, in the standard Kubernetes shape
/// (`metav1.Condition`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// Type of the condition, in CamelCase: Ready, Reconciling, Stalled, KMSProvisioned,
    /// DataPlaneSynced, Connected or PurgeScheduled.
    #[serde(rename = "type")]
    #[schemars(length(min = 1, max = 316), pattern(CONDITION_TYPE_PATTERN))]
    pub type_: String,
    /// Status of the condition: True, False or Unknown.
    pub status: ConditionStatus,
    /// The `metadata.generation` the condition was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = i64::MAX))]
    pub observed_generation: Option<i64>,
    /// When the status last changed (not the reason or message).
    pub last_transition_time: Time,
    /// Why the condition has its status: one CamelCase word.
    #[schemars(length(min = 1, max = 1024), pattern(CONDITION_REASON_PATTERN))]
    pub reason: String,
    /// A human-readable sentence about the condition, naming the object.
    #[schemars(length(max = 32768))]
    pub message: String,
}

impl Condition {
    /// A condition computed at `now` (the time is kept only if the status changes, see
    /// [`set_condition`]).
    pub fn new(
        type_: &str,
        status: ConditionStatus,
        reason: &str,
        message: impl Into<String>,
        now: Time,
    ) -> Self {
        Self {
            type_: type_.to_owned(),
            status,
            observed_generation: None,
            last_transition_time: now,
            reason: reason.to_owned(),
            message: message.into(),
        }
    }

    /// The same condition, computed from `generation` (an object's `metadata.generation`).
    pub fn with_observed_generation(mut self, generation: Option<i64>) -> Self {
        self.observed_generation = generation;
        self
    }

    /// Whether the status is True.
    pub fn is_true(&self) -> bool {
        self.status == ConditionStatus::True
    }
}

/// Puts `condition` into `conditions` the way `meta.SetStatusCondition` does.
///
/// - A condition of the same type is replaced; when its status does not change, its
///   `lastTransitionTime` is kept.
/// - The kstatus conditions Reconciling and Stalled exist only while True: setting them to False
///   or Unknown removes them.
/// - A message longer than the schema allows is cut on a character boundary.
///
/// Returns whether `conditions` changed.
pub fn set_condition(conditions: &mut Vec<Condition>, mut condition: Condition) -> bool {
    if types::ABNORMAL_TRUE_ONLY.contains(&condition.type_.as_str()) && !condition.is_true() {
        return remove_condition(conditions, &condition.type_);
    }
    truncate_message(&mut condition.message);
    match conditions.iter_mut().find(|c| c.type_ == condition.type_) {
        Some(existing) => {
            if existing.status == condition.status {
                condition.last_transition_time = existing.last_transition_time.clone();
            }
            if *existing == condition {
                false
            } else {
                *existing = condition;
                true
            }
        }
        None => {
            conditions.push(condition);
            true
        }
    }
}

/// Removes the condition of type `type_`; returns whether there was one.
pub fn remove_condition(conditions: &mut Vec<Condition>, type_: &str) -> bool {
    let before = conditions.len();
    conditions.retain(|c| c.type_ != type_);
    conditions.len() != before
}

fn truncate_message(message: &mut String) {
    if message.len() > CONDITION_MESSAGE_MAX_LEN {
        let mut end = CONDITION_MESSAGE_MAX_LEN;
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        message.truncate(end);
    }
}

/// What every status of this API has: `observedGeneration` and a list of conditions.
///
/// Implemented by `TenantStatus`, `InboxStatus`, `InboxGrantStatus` and
/// `RetentionPolicyStatus`; the default methods are the setters controllers use.
pub trait StatusConditions {
    /// The conditions, in the order they were first set.
    fn conditions(&self) -> &[Condition];
    /// The conditions, for the setters.
    fn conditions_mut(&mut self) -> &mut Vec<Condition>;
    /// The `metadata.generation` the status as a whole was computed from.
    fn observed_generation(&self) -> Option<i64>;
    /// Records the generation the status was computed from.
    fn set_observed_generation(&mut self, generation: Option<i64>);

    /// The condition of type `type_`.
    fn condition(&self, type_: &str) -> Option<&Condition> {
        self.conditions().iter().find(|c| c.type_ == type_)
    }

    /// Whether the condition of type `type_` is present and True.
    fn is_condition_true(&self, type_: &str) -> bool {
        self.condition(type_).is_some_and(Condition::is_true)
    }

    /// Whether the summary condition Ready is True.
    fn is_ready(&self) -> bool {
        self.is_condition_true(types::READY)
    }

    /// See [`set_condition`]; returns whether the conditions changed.
    fn set_condition(&mut self, condition: Condition) -> bool {
        set_condition(self.conditions_mut(), condition)
    }

    /// Removes the condition of type `type_`; returns whether there was one.
    fn remove_condition(&mut self, type_: &str) -> bool {
        remove_condition(self.conditions_mut(), type_)
    }

    /// Adds each of `types` that is missing as Unknown with reason Pending (the first reconcile
    /// writes its conditions before it knows anything). Reconciling and Stalled are skipped.
    fn init_conditions(&mut self, types: &[&str], generation: Option<i64>, now: &Time) -> bool {
        let mut changed = false;
        for type_ in types {
            if types::ABNORMAL_TRUE_ONLY.contains(type_) || self.condition(type_).is_some() {
                continue;
            }
            changed |= self.set_condition(
                Condition::new(
                    type_,
                    ConditionStatus::Unknown,
                    reasons::PENDING,
                    "the operator has not finished its first reconcile",
                    now.clone(),
                )
                .with_observed_generation(generation),
            );
        }
        changed
    }

    /// Sets Reconciling True with `reason` and `message`.
    fn set_reconciling(
        &mut self,
        reason: &str,
        message: impl Into<String>,
        generation: Option<i64>,
        now: &Time,
    ) -> bool {
        self.set_condition(
            Condition::new(
                types::RECONCILING,
                ConditionStatus::True,
                reason,
                message,
                now.clone(),
            )
            .with_observed_generation(generation),
        )
    }

    /// Removes Reconciling (kstatus: it is present only while True).
    fn clear_reconciling(&mut self) -> bool {
        self.remove_condition(types::RECONCILING)
    }

    /// Sets Stalled True with `reason` and `message`.
    fn set_stalled(
        &mut self,
        reason: &str,
        message: impl Into<String>,
        generation: Option<i64>,
        now: &Time,
    ) -> bool {
        self.set_condition(
            Condition::new(
                types::STALLED,
                ConditionStatus::True,
                reason,
                message,
                now.clone(),
            )
            .with_observed_generation(generation),
        )
    }

    /// Removes Stalled (kstatus: it is present only while True).
    fn clear_stalled(&mut self) -> bool {
        self.remove_condition(types::STALLED)
    }
}

macro_rules! impl_status_conditions {
    ($($status:ty),+ $(,)?) => {$(
        impl $crate::conditions::StatusConditions for $status {
            fn conditions(&self) -> &[$crate::conditions::Condition] {
                &self.conditions
            }
            fn conditions_mut(&mut self) -> &mut Vec<$crate::conditions::Condition> {
                &mut self.conditions
            }
            fn observed_generation(&self) -> Option<i64> {
                self.observed_generation
            }
            fn set_observed_generation(&mut self, generation: Option<i64>) {
                self.observed_generation = generation;
            }
        }
    )+};
}
pub(crate) use impl_status_conditions;

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use k8s_openapi::jiff::Timestamp;

    fn at(seconds: i64) -> Time {
        Time(Timestamp::from_second(seconds).unwrap())
    }

    fn ready(status: ConditionStatus, reason: &str, message: &str, now: i64) -> Condition {
        Condition::new(types::READY, status, reason, message, at(now))
            .with_observed_generation(Some(1))
    }

    #[test]
    fn same_status_keeps_last_transition_time_but_takes_new_reason_and_message() {
        let mut conditions = Vec::new();
        assert!(set_condition(
            &mut conditions,
            ready(
                ConditionStatus::False,
                reasons::TENANT_NOT_FOUND,
                "tenant acme not found",
                100
            )
        ));
        assert!(set_condition(
            &mut conditions,
            ready(
                ConditionStatus::False,
                reasons::TENANT_NOT_READY,
                "tenant acme is not ready",
                200
            )
        ));
        assert_eq!(conditions.len(), 1);
        assert_eq!(conditions[0].last_transition_time, at(100));
        assert_eq!(conditions[0].reason, reasons::TENANT_NOT_READY);
        assert_eq!(conditions[0].message, "tenant acme is not ready");
    }

    #[test]
    fn status_change_moves_last_transition_time() {
        let mut conditions = Vec::new();
        set_condition(
            &mut conditions,
            ready(ConditionStatus::Unknown, reasons::PENDING, "pending", 100),
        );
        set_condition(
            &mut conditions,
            ready(ConditionStatus::True, reasons::RECONCILED, "ready", 200),
        );
        assert_eq!(conditions[0].last_transition_time, at(200));
        assert_eq!(conditions[0].status, ConditionStatus::True);
    }

    #[test]
    fn setting_an_identical_condition_reports_no_change() {
        let mut conditions = Vec::new();
        set_condition(
            &mut conditions,
            ready(ConditionStatus::True, reasons::RECONCILED, "ready", 100),
        );
        assert!(!set_condition(
            &mut conditions,
            ready(ConditionStatus::True, reasons::RECONCILED, "ready", 300)
        ));
        assert_eq!(conditions[0].last_transition_time, at(100));
    }

    #[test]
    fn kstatus_conditions_exist_only_while_true() {
        let mut conditions = Vec::new();
        let now = at(100);
        let reconciling = |status| {
            Condition::new(
                types::RECONCILING,
                status,
                reasons::PROGRESSING,
                "applying",
                now.clone(),
            )
        };
        assert!(!set_condition(
            &mut conditions,
            reconciling(ConditionStatus::False)
        ));
        assert!(
            conditions.is_empty(),
            "Reconciling False must not be written"
        );
        assert!(set_condition(
            &mut conditions,
            reconciling(ConditionStatus::True)
        ));
        assert_eq!(conditions.len(), 1);
        assert!(set_condition(
            &mut conditions,
            reconciling(ConditionStatus::Unknown)
        ));
        assert!(
            conditions.is_empty(),
            "Reconciling Unknown removes the condition"
        );
    }

    #[test]
    fn overlong_message_is_cut_on_a_character_boundary() {
        let mut conditions = Vec::new();
        let message = "é".repeat(CONDITION_MESSAGE_MAX_LEN);
        set_condition(
            &mut conditions,
            ready(ConditionStatus::False, reasons::INVALID_SPEC, &message, 1),
        );
        assert!(conditions[0].message.len() <= CONDITION_MESSAGE_MAX_LEN);
        assert!(conditions[0].message.chars().all(|c| c == 'é'));
    }

    #[test]
    fn condition_serializes_in_the_metav1_shape() {
        let c = ready(
            ConditionStatus::True,
            reasons::RECONCILED,
            "tenant acme is ready",
            0,
        );
        let json = serde_json::to_value(&c).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "type": "Ready",
                "status": "True",
                "observedGeneration": 1,
                "lastTransitionTime": "1970-01-01T00:00:00Z",
                "reason": "Reconciled",
                "message": "tenant acme is ready",
            })
        );
    }

    #[test]
    fn every_reason_constant_matches_the_reason_pattern_and_is_camel_case() {
        let all = [
            reasons::PENDING,
            reasons::RECONCILED,
            reasons::PROGRESSING,
            reasons::INVALID_SPEC,
            reasons::DELETING,
            reasons::TENANT_NOT_FOUND,
            reasons::TENANT_NOT_READY,
            reasons::INBOX_NOT_FOUND,
            reasons::INBOX_NOT_READY,
            reasons::SECRET_NOT_FOUND,
            reasons::KEY_PROVISIONED,
            reasons::KMS_AUTH_FAILED,
            reasons::KMS_UNAVAILABLE,
            reasons::LEGAL_HOLD,
            reasons::SYNCED,
            reasons::DATA_PLANE_UNAVAILABLE,
            reasons::CONNECTED,
            reasons::NEEDS_RECONNECT,
            reasons::DISCONNECTED,
            reasons::EXPIRED,
            reasons::CONFLICT,
            reasons::SCHEDULED,
        ];
        for reason in all {
            assert!(
                reason.chars().next().unwrap().is_ascii_uppercase(),
                "{reason}"
            );
            assert!(
                reason.chars().all(|c| c.is_ascii_alphanumeric()),
                "{reason}"
            );
        }
    }
}
