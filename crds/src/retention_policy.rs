//! `RetentionPolicy`: how long a tenant's deleted and old mail is kept.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use crate::conditions::{Condition, impl_status_conditions};
use crate::cron::{CRON_MAX_LEN, CRON_PATTERN, CronSchedule};
use crate::refs::LocalObjectRef;
use crate::validation::{self, Collector, SpecError, SpecErrors};

/// Default `gracePeriodDays`.
pub const DEFAULT_GRACE_PERIOD_DAYS: i32 = 60;

/// Largest `gracePeriodDays` (ten years).
pub const MAX_GRACE_PERIOD_DAYS: i32 = 3650;

/// Largest `deleteAfterDays` (a hundred years).
pub const MAX_DELETE_AFTER_DAYS: i32 = 36500;

/// Default `purgeSchedule`: daily at 03:00.
pub const DEFAULT_PURGE_SCHEDULE: &str = "0 3 * * *";

/// The time zone of `purgeSchedule` when `timeZone` is absent.
pub const DEFAULT_TIME_ZONE: &str = "UTC";

/// Pattern of an IANA time zone name (`UTC`, `Europe/Berlin`, `America/Argentina/Buenos_Aires`,
/// `Etc/GMT+5`).
pub const TIME_ZONE_PATTERN: &str = r"^[A-Za-z][-A-Za-z0-9_+]*(/[-A-Za-z0-9_+]+)*$";

/// Longest time zone name accepted.
pub const TIME_ZONE_MAX_LEN: usize = 64;

fn default_grace_period_days() -> i32 {
    DEFAULT_GRACE_PERIOD_DAYS
}

fn default_purge_schedule() -> String {
    DEFAULT_PURGE_SCHEDULE.to_owned()
}

/// Desired state of a RetentionPolicy: grace period, purge schedule, automatic deletion and
/// legal hold of one tenant.
///
/// The generated [`RetentionPolicy`] says how long a tenant's deleted and old mail is kept,
/// and when it is purged.
// clippy's duplicated_attributes mistakes repeated `type_ = "string"` in separate
// printcolumn(...) entries for duplicates.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "mail.helpr.dev",
    version = "v1alpha1",
    kind = "RetentionPolicy",
    plural = "retentionpolicies",
    namespaced,
    status = "RetentionPolicyStatus",
    derive = "PartialEq",
    shortname = "hvretention",
    category = "helpr",
    doc = "How long a tenant's deleted and old mail is kept and when it is purged for good. At most one RetentionPolicy per tenant; without one, nothing is ever purged.",
    selectable = ".spec.tenantRef.name",
    printcolumn(name = "Tenant", type_ = "string", json_path = ".spec.tenantRef.name"),
    printcolumn(name = "Schedule", type_ = "string", json_path = ".spec.purgeSchedule"),
    printcolumn(name = "Legal Hold", type_ = "boolean", json_path = ".spec.legalHold"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = r#".status.conditions[?(@.type=="Ready")].status"#
    ),
    printcolumn(
        name = "Status",
        type_ = "string",
        json_path = r#".status.conditions[?(@.type=="Ready")].reason"#,
        priority = 1,
        description = "Reason of the Ready condition"
    ),
    printcolumn(
        name = "Grace Days",
        type_ = "integer",
        json_path = ".spec.gracePeriodDays",
        priority = 1
    ),
    printcolumn(
        name = "Delete After",
        type_ = "integer",
        json_path = ".spec.deleteAfterDays",
        priority = 1,
        description = "Days after which conversations are deleted automatically"
    ),
    printcolumn(
        name = "Last Purge",
        type_ = "date",
        json_path = ".status.lastPurgeTime",
        priority = 1
    ),
    printcolumn(
        name = "Next Purge",
        type_ = "date",
        json_path = ".status.nextPurgeTime",
        priority = 1
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct RetentionPolicySpec {
    /// The Tenant the policy governs, in the same namespace. Immutable.
    #[x_kube(validation = Rule::new("self == oldSelf").message("tenantRef is immutable"))]
    pub tenant_ref: LocalObjectRef,

    /// Days a deleted conversation stays recoverable before a purge removes it for good.
    /// Default 60; 0 purges deleted conversations at the next purge.
    #[serde(default = "default_grace_period_days")]
    #[schemars(range(min = 0, max = 3650))]
    pub grace_period_days: i32,

    /// When purges run: a 5-field cron expression (minute hour day-of-month month
    /// day-of-week) in timeZone. Default "0 3 * * *" (daily at 03:00).
    #[serde(default = "default_purge_schedule")]
    #[schemars(length(min = 9, max = 128), pattern(CRON_PATTERN))]
    pub purge_schedule: String,

    /// IANA time zone of purgeSchedule, e.g. Europe/Berlin; absent means UTC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64), pattern(TIME_ZONE_PATTERN))]
    pub time_zone: Option<String>,

    /// When set, conversations whose last message is older than this many days are deleted
    /// automatically (they then stay recoverable for gracePeriodDays). Absent: never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 36500))]
    pub delete_after_days: Option<i32>,

    /// Legal hold: while true, nothing of the tenant is purged or deleted automatically, and a
    /// Tenant with deletionPolicy Shred is not shredded. Default false.
    #[serde(default)]
    pub legal_hold: bool,
}

/// Observed state of a RetentionPolicy.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RetentionPolicyStatus {
    /// The metadata.generation this status was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = i64::MAX))]
    pub observed_generation: Option<i64>,

    /// Ready (summary; True with reason LegalHold while purges are paused), Reconciling and
    /// Stalled (present only while True), DataPlaneSynced, PurgeScheduled (the purge CronJob).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16), extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,

    /// When the last purge finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_purge_time: Option<Time>,

    /// When the next purge is due (absent while legal hold is on).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_purge_time: Option<Time>,
}

impl_status_conditions!(RetentionPolicyStatus);

impl RetentionPolicy {
    /// Name of the Tenant the policy governs (same namespace).
    pub fn tenant_name(&self) -> &str {
        &self.spec.tenant_ref.name
    }
}

impl RetentionPolicySpec {
    /// The parsed purge schedule.
    pub fn schedule(&self) -> Result<CronSchedule, SpecError> {
        CronSchedule::parse(&self.purge_schedule).map_err(|source| SpecError::Cron {
            field: "spec.purgeSchedule".into(),
            value: self.purge_schedule.clone(),
            source,
        })
    }

    /// The time zone of the schedule: `timeZone`, or UTC.
    pub fn time_zone_or_default(&self) -> &str {
        self.time_zone.as_deref().unwrap_or(DEFAULT_TIME_ZONE)
    }

    /// Checks the spec; see [`crate::validation`]. Whether the time zone exists in the tz
    /// database is left to the operator, which has one.
    pub fn validate(&self) -> Result<(), SpecErrors> {
        let mut c = Collector::default();
        c.check(validation::object_name(
            "spec.tenantRef.name",
            &self.tenant_ref.name,
        ));
        c.check(validation::range(
            "spec.gracePeriodDays",
            i64::from(self.grace_period_days),
            0,
            i64::from(MAX_GRACE_PERIOD_DAYS),
        ));
        match validation::length("spec.purgeSchedule", &self.purge_schedule, CRON_MAX_LEN) {
            Ok(()) => c.check(self.schedule().map(|_| ())),
            Err(e) => c.push(e),
        }
        if let Some(tz) = &self.time_zone {
            c.check(validation::length("spec.timeZone", tz, TIME_ZONE_MAX_LEN));
            if !tz.is_empty() && !is_time_zone_name(tz) {
                c.push(validation::malformed(
                    "spec.timeZone",
                    tz,
                    "an IANA time zone name such as UTC or Europe/Berlin",
                ));
            }
        }
        if let Some(days) = self.delete_after_days {
            c.check(validation::range(
                "spec.deleteAfterDays",
                i64::from(days),
                1,
                i64::from(MAX_DELETE_AFTER_DAYS),
            ));
        }
        c.finish()
    }

    /// Checks an update from `old`: [`Self::validate`] plus the immutable tenant reference.
    pub fn validate_update(&self, old: &RetentionPolicySpec) -> Result<(), SpecErrors> {
        let mut c = Collector::default();
        if let Err(errors) = self.validate() {
            errors.into_vec().into_iter().for_each(|e| c.push(e));
        }
        if self.tenant_ref != old.tenant_ref {
            c.push(SpecError::Immutable {
                field: "spec.tenantRef.name".into(),
                old: old.tenant_ref.name.clone(),
                new: self.tenant_ref.name.clone(),
            });
        }
        c.finish()
    }
}

/// Whether `value` has the form of an IANA time zone name (matches [`TIME_ZONE_PATTERN`]).
pub fn is_time_zone_name(value: &str) -> bool {
    let segment_ok = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_+".contains(c))
    };
    value.len() <= TIME_ZONE_MAX_LEN
        && value.starts_with(|c: char| c.is_ascii_alphabetic())
        && value.split('/').all(segment_ok)
}
