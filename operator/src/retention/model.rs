//! Validation (pure) of a RetentionPolicy.
//!
//! After [`validate`] the controller reads only [`ValidRetentionPolicy`], never the raw
//! resource.

use helpr_crds::RetentionPolicy;
use helpr_crds::cron::CronSchedule;
use jiff::Timestamp;
use jiff::civil::DateTime;
use jiff::tz::{TimeZone, TimeZoneDatabase};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::{Resource, ResourceExt};

use super::RetentionError;
use crate::control::proto;

/// A RetentionPolicy the data plane can apply and the operator can schedule.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidRetentionPolicy {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub generation: i64,
    /// Name of the Tenant (the tenant id), in the policy's namespace.
    pub tenant: String,
    pub grace_period_days: u32,
    pub delete_after_days: Option<u32>,
    pub legal_hold: bool,
    /// The 5-field cron expression, as written (the CronJob's `schedule`).
    pub schedule: String,
    /// The parsed schedule.
    pub cron: CronSchedule,
    /// The IANA time zone of the schedule (`UTC` when the spec names none); always written
    /// to the CronJob, whose default would be the controller manager's local zone.
    pub time_zone: String,
    /// The zone resolved in the tz database; `None` when the operator has no tz database
    /// (the name then only passed the schema's pattern and the next purge is not computed).
    pub zone: Option<TimeZone>,
    /// The reference every child carries (controller: true).
    pub owner: OwnerReference,
}

impl ValidRetentionPolicy {
    /// The control API's identity of the policy.
    pub fn meta(&self) -> proto::ObjectMeta {
        proto::ObjectMeta {
            namespace: self.namespace.clone(),
            name: self.name.clone(),
            uid: self.uid.clone(),
            generation: self.generation,
        }
    }

    /// The `UpsertRetentionPolicy` request.
    pub fn upsert_request(&self) -> proto::UpsertRetentionPolicyRequest {
        proto::UpsertRetentionPolicyRequest {
            meta: Some(self.meta()),
            spec: Some(proto::RetentionPolicySpec {
                tenant: self.tenant.clone(),
                grace_period_days: self.grace_period_days,
                delete_after_days: self.delete_after_days,
                legal_hold: self.legal_hold,
            }),
        }
    }

    /// When the purge after `now` is due: the schedule's next wall-clock minute in the
    /// policy's time zone (a time skipped by a DST change moves forward by the gap).
    /// `None` while the legal hold suspends purges, or without a tz database.
    pub fn next_purge_after(&self, now: Timestamp) -> Option<Timestamp> {
        if self.legal_hold {
            return None;
        }
        let zone = self.zone.as_ref()?;
        let local = now.to_zoned(zone.clone()).datetime();
        let next = self.cron.next_after(local)?;
        zone.to_ambiguous_zoned(next)
            .compatible()
            .ok()
            .map(|z| z.timestamp())
    }
}

/// The operator's tz database: the system's (`/usr/share/zoneinfo`, or `TZDIR`); empty
/// when the image has none.
pub fn system_time_zones() -> &'static TimeZoneDatabase {
    jiff::tz::db()
}

/// The zone named `name`: UTC without a lookup, else from `db`. `Ok(None)` when `db` is
/// empty (the operator's image has no tz database), `Err` when `db` does not know the name.
fn resolve_zone(name: &str, db: &TimeZoneDatabase) -> Result<Option<TimeZone>, ()> {
    if matches!(name, "UTC" | "Etc/UTC") {
        return Ok(Some(TimeZone::UTC));
    }
    if db.is_definitively_empty() {
        return Ok(None);
    }
    db.get(name).map(Some).map_err(|_| ())
}

/// A fixed start for the "does the schedule ever fire" check (pure: not the clock).
fn reference_start() -> DateTime {
    jiff::civil::date(2026, 1, 1).at(0, 0, 0, 0)
}

/// Checks a RetentionPolicy (pure): metadata the control API needs (namespace, uid,
/// generation), tenantRef, the spec validators of helpr-crds (bounds, 5-field cron
/// expression, time zone syntax), a schedule that fires at all (`0 0 31 2 *` never does),
/// and a time zone the tz database `db` knows.
pub fn validate(
    policy: &RetentionPolicy,
    db: &TimeZoneDatabase,
) -> Result<ValidRetentionPolicy, RetentionError> {
    let key = format!(
        "{}/{}",
        policy.namespace().unwrap_or_default(),
        policy.name_any()
    );
    let invalid = |reason: &str| RetentionError::InvalidPolicy {
        policy: key.clone(),
        reason: reason.to_owned(),
    };
    let namespace = policy
        .namespace()
        .filter(|ns| !ns.is_empty())
        .ok_or_else(|| invalid("has no namespace"))?;
    let uid = policy
        .meta()
        .uid
        .clone()
        .filter(|uid| !uid.is_empty())
        .ok_or_else(|| invalid("has no metadata.uid"))?;
    let generation = policy
        .meta()
        .generation
        .filter(|g| *g >= 1)
        .ok_or_else(|| invalid("has no metadata.generation"))?;
    let owner = policy
        .controller_owner_ref(&())
        .ok_or_else(|| invalid("has no metadata.uid"))?;
    if policy.spec.tenant_ref.name.is_empty() {
        return Err(invalid("spec.tenantRef.name is required"));
    }
    policy
        .spec
        .validate()
        .map_err(|errors| RetentionError::InvalidSpec {
            policy: key.clone(),
            errors,
        })?;
    let cron = policy
        .spec
        .schedule()
        .map_err(|source| RetentionError::InvalidSchedule {
            policy: key.clone(),
            source,
        })?;
    if cron.next_after(reference_start()).is_none() {
        return Err(RetentionError::ScheduleNeverFires {
            policy: key.clone(),
            schedule: policy.spec.purge_schedule.clone(),
        });
    }
    let time_zone = policy.spec.time_zone_or_default().to_owned();
    let zone = resolve_zone(&time_zone, db).map_err(|()| RetentionError::UnknownTimeZone {
        policy: key.clone(),
        time_zone: time_zone.clone(),
    })?;
    let days = |value: i32| u32::try_from(value).ok();
    let grace_period_days = days(policy.spec.grace_period_days)
        .ok_or_else(|| invalid("spec.gracePeriodDays must not be negative"))?;
    let delete_after_days = match policy.spec.delete_after_days {
        Some(value) => {
            Some(days(value).ok_or_else(|| invalid("spec.deleteAfterDays must not be negative"))?)
        }
        None => None,
    };
    Ok(ValidRetentionPolicy {
        namespace,
        name: policy.name_any(),
        uid,
        generation,
        tenant: policy.spec.tenant_ref.name.clone(),
        grace_period_days,
        delete_after_days,
        legal_hold: policy.spec.legal_hold,
        schedule: policy.spec.purge_schedule.clone(),
        cron,
        time_zone,
        zone,
        owner,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use helpr_crds::testing::Fixture;

    fn db() -> &'static TimeZoneDatabase {
        jiff::tz::db()
    }

    fn ts(text: &str) -> Timestamp {
        text.parse().unwrap()
    }

    #[test]
    fn a_valid_policy_maps_to_the_upsert_request() {
        let mut policy = RetentionPolicy::test("acme", "acme")
            .with_grace_period_days(90)
            .with_legal_hold(true)
            .with_generation(4);
        policy.spec.delete_after_days = Some(730);
        let valid = validate(&policy, db()).unwrap();
        let request = valid.upsert_request();
        let meta = request.meta.unwrap();
        assert_eq!(meta.uid, policy.metadata.uid.clone().unwrap());
        assert_eq!(meta.generation, 4);
        assert_eq!(meta.name, "acme");
        assert_eq!(meta.namespace, "helpr-test");
        let spec = request.spec.unwrap();
        assert_eq!(spec.tenant, "acme");
        assert_eq!(spec.grace_period_days, 90);
        assert_eq!(spec.delete_after_days, Some(730));
        assert!(spec.legal_hold);
        assert_eq!(valid.owner.kind, "RetentionPolicy");
        assert_eq!(valid.owner.controller, Some(true));
    }

    #[test]
    fn without_a_time_zone_the_schedule_runs_in_utc() {
        let valid = validate(&RetentionPolicy::test("acme", "acme"), db()).unwrap();
        assert_eq!(valid.time_zone, "UTC");
        assert_eq!(valid.schedule, "0 3 * * *");
        assert_eq!(
            valid.next_purge_after(ts("2026-03-01T02:59:00Z")),
            Some(ts("2026-03-01T03:00:00Z"))
        );
        assert_eq!(
            valid.next_purge_after(ts("2026-03-01T03:00:00Z")),
            Some(ts("2026-03-02T03:00:00Z"))
        );
    }

    #[test]
    fn the_next_purge_is_computed_in_the_policys_time_zone_across_dst() {
        let policy = RetentionPolicy::test("acme", "acme")
            .with_schedule("30 2 * * *", Some("Europe/Berlin"));
        let valid = validate(&policy, db()).unwrap();
        assert!(valid.zone.is_some());
        // Winter: 02:30 CET is 01:30 UTC.
        assert_eq!(
            valid.next_purge_after(ts("2026-01-10T12:00:00Z")),
            Some(ts("2026-01-11T01:30:00Z"))
        );
        // Summer: 02:30 CEST is 00:30 UTC.
        assert_eq!(
            valid.next_purge_after(ts("2026-07-10T12:00:00Z")),
            Some(ts("2026-07-11T00:30:00Z"))
        );
        // 2026-03-29 02:30 does not exist in Berlin (clocks jump 02:00 -> 03:00): it moves
        // forward by the gap, to 03:30 CEST, 01:30 UTC (as Go's time.Date normalizes it).
        assert_eq!(
            valid.next_purge_after(ts("2026-03-28T12:00:00Z")),
            Some(ts("2026-03-29T01:30:00Z"))
        );
    }

    #[test]
    fn legal_hold_has_no_next_purge() {
        let valid = validate(
            &RetentionPolicy::test("acme", "acme").with_legal_hold(true),
            db(),
        )
        .unwrap();
        assert_eq!(valid.next_purge_after(ts("2026-03-01T00:00:00Z")), None);
    }

    #[test]
    fn garbage_schedules_are_invalid_with_the_field_and_the_cause() {
        for (schedule, cause) in [
            ("every day", "expected 5 fields"),
            ("61 3 * * *", "minute has 61, outside 0-59"),
            ("0 3 * * FUNDAY", "day of week"),
            ("@daily", "expected 5 fields"),
        ] {
            let policy = RetentionPolicy::test("acme", "acme").with_schedule(schedule, None);
            let error = validate(&policy, db()).unwrap_err();
            assert!(
                matches!(error, RetentionError::InvalidSpec { .. }),
                "{schedule}"
            );
            assert!(error.is_permanent());
            assert_eq!(error.category(), "InvalidSpec");
            let text = crate::tenant::reconcile::describe(&error);
            assert!(text.contains("spec.purgeSchedule"), "{text}");
            assert!(text.contains(cause), "{schedule}: {text}");
        }
    }

    #[test]
    fn a_schedule_that_never_fires_is_invalid() {
        let policy = RetentionPolicy::test("acme", "acme").with_schedule("0 0 31 2 *", None);
        let error = validate(&policy, db()).unwrap_err();
        assert!(matches!(error, RetentionError::ScheduleNeverFires { .. }));
        assert_eq!(error.category(), "InvalidSpec");
        assert!(error.is_permanent());
        assert!(error.to_string().contains("0 0 31 2 *"));
    }

    #[test]
    fn an_unknown_time_zone_is_invalid_and_a_malformed_one_names_the_field() {
        let unknown =
            RetentionPolicy::test("acme", "acme").with_schedule("0 3 * * *", Some("Mars/Olympus"));
        let error = validate(&unknown, db()).unwrap_err();
        assert!(matches!(error, RetentionError::UnknownTimeZone { .. }));
        assert_eq!(error.category(), "InvalidSpec");
        assert!(error.to_string().contains("Mars/Olympus"));
        let malformed =
            RetentionPolicy::test("acme", "acme").with_schedule("0 3 * * *", Some("not a zone"));
        let error = validate(&malformed, db()).unwrap_err();
        assert!(error.to_string().contains("spec.timeZone"), "{error}");
    }

    #[test]
    fn without_a_tz_database_a_well_formed_zone_is_accepted_but_not_computed() {
        let empty = TimeZoneDatabase::none();
        let policy =
            RetentionPolicy::test("acme", "acme").with_schedule("0 3 * * *", Some("Europe/Berlin"));
        let valid = validate(&policy, &empty).unwrap();
        assert_eq!(valid.zone, None);
        assert_eq!(valid.next_purge_after(ts("2026-03-01T00:00:00Z")), None);
        // UTC needs no database.
        let utc = validate(&RetentionPolicy::test("acme", "acme"), &empty).unwrap();
        assert_eq!(utc.zone, Some(TimeZone::UTC));
    }

    #[test]
    fn a_policy_without_tenant_ref_is_refused() {
        let mut policy = RetentionPolicy::test("acme", "acme");
        policy.spec.tenant_ref.name = String::new();
        assert!(matches!(
            validate(&policy, db()),
            Err(RetentionError::InvalidPolicy { ref reason, .. }) if reason.contains("tenantRef")
        ));
    }
}
