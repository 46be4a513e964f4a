//! Validation (pure) of an InboxGrant and the requeue computation of its expiry.

use std::time::Duration;

use helpr_crds::InboxGrant;
use helpr_crds::inbox_grant::{GrantRole, SubjectKind};
use k8s_openapi::jiff::Timestamp;
use kube::{Resource, ResourceExt};

use super::GrantError;
use crate::control::proto;

/// Longest wait before a grant is looked at again (also without an expiration time).
pub const MAX_REQUEUE: Duration = Duration::from_secs(3600);
/// Added to the wait until expiry, so that the grant has expired when it is looked at again.
pub const EXPIRY_SLACK: Duration = Duration::from_secs(1);

/// An InboxGrant the data plane can apply.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidGrant {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub generation: i64,
    /// Name of the Inbox object, in the grant's namespace.
    pub inbox: String,
    pub subject_kind: SubjectKind,
    pub subject_name: String,
    pub role: GrantRole,
    /// `expirationTime`; `None`: the grant never expires.
    pub expiration: Option<Timestamp>,
}

impl ValidGrant {
    /// The control API's identity of the grant.
    pub fn meta(&self) -> proto::ObjectMeta {
        proto::ObjectMeta {
            namespace: self.namespace.clone(),
            name: self.name.clone(),
            uid: self.uid.clone(),
            generation: self.generation,
        }
    }

    /// The `UpsertGrant` request (expiration in Unix milliseconds).
    pub fn upsert_request(&self) -> proto::UpsertGrantRequest {
        proto::UpsertGrantRequest {
            meta: Some(self.meta()),
            spec: Some(proto::GrantSpec {
                inbox: self.inbox.clone(),
                subject_kind: match self.subject_kind {
                    SubjectKind::Agent => proto::SubjectKind::Agent,
                    SubjectKind::Team => proto::SubjectKind::Team,
                }
                .into(),
                subject_name: self.subject_name.clone(),
                role: match self.role {
                    GrantRole::Reply => proto::Role::Reply,
                    GrantRole::Configure => proto::Role::Configure,
                }
                .into(),
                expiration_time: self.expiration.map(|t| t.as_millisecond()),
            }),
        }
    }

    /// Whether the grant has expired at `now` (at or after `expirationTime`).
    pub fn is_expired(&self, now: Timestamp) -> bool {
        self.expiration.is_some_and(|t| t <= now)
    }
}

/// Checks an InboxGrant (pure): metadata the control API needs (namespace, uid, generation),
/// inboxRef and subject present, the spec validators of helpr-crds.
pub fn validate(grant: &InboxGrant) -> Result<ValidGrant, GrantError> {
    let key = format!(
        "{}/{}",
        grant.namespace().unwrap_or_default(),
        grant.name_any()
    );
    let invalid = |reason: &str| GrantError::InvalidGrant {
        grant: key.clone(),
        reason: reason.to_owned(),
    };
    let namespace = grant
        .namespace()
        .filter(|ns| !ns.is_empty())
        .ok_or_else(|| invalid("has no namespace"))?;
    let uid = grant
        .meta()
        .uid
        .clone()
        .filter(|uid| !uid.is_empty())
        .ok_or_else(|| invalid("has no metadata.uid"))?;
    let generation = grant
        .meta()
        .generation
        .filter(|g| *g >= 1)
        .ok_or_else(|| invalid("has no metadata.generation"))?;
    if grant.spec.inbox_ref.name.is_empty() {
        return Err(invalid("spec.inboxRef.name is required"));
    }
    if grant.spec.subject.name.is_empty() {
        return Err(invalid("spec.subject.name is required"));
    }
    grant
        .spec
        .validate()
        .map_err(|errors| GrantError::InvalidSpec {
            grant: key.clone(),
            errors,
        })?;
    Ok(ValidGrant {
        namespace,
        name: grant.name_any(),
        uid,
        generation,
        inbox: grant.spec.inbox_ref.name.clone(),
        subject_kind: grant.spec.subject.kind,
        subject_name: grant.spec.subject.name.clone(),
        role: grant.spec.role,
        expiration: grant.spec.expiration_time.as_ref().map(|t| t.0),
    })
}

/// When to look at an applied grant again: just after `expiration` (so the revoke happens
/// on time), at most [`MAX_REQUEUE`] from `now`.
pub fn requeue_after(expiration: Option<Timestamp>, now: Timestamp) -> Duration {
    let Some(expiration) = expiration else {
        return MAX_REQUEUE;
    };
    let until = expiration
        .as_millisecond()
        .saturating_sub(now.as_millisecond());
    let until = Duration::from_millis(u64::try_from(until).unwrap_or(0));
    until.saturating_add(EXPIRY_SLACK).min(MAX_REQUEUE)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use helpr_crds::testing::{Fixture, time};

    #[test]
    fn a_valid_grant_keeps_its_identity_and_expiry() {
        let grant = InboxGrant::test("alice-support", "support", "alice@example.com")
            .with_role(GrantRole::Configure)
            .with_generation(3)
            .with_expiration(time(1_800_000_000));
        let valid = validate(&grant).unwrap();
        assert_eq!(valid.namespace, "helpr-test");
        assert_eq!(valid.uid, grant.meta().uid.clone().unwrap());
        assert_eq!(valid.generation, 3);
        assert_eq!(valid.inbox, "support");
        let request = valid.upsert_request();
        let spec = request.spec.unwrap();
        assert_eq!(spec.role, i32::from(proto::Role::Configure));
        assert_eq!(spec.subject_kind, i32::from(proto::SubjectKind::Agent));
        assert_eq!(spec.subject_name, "alice@example.com");
        assert_eq!(spec.expiration_time, Some(1_800_000_000_000));
        assert_eq!(request.meta.unwrap().generation, 3);
    }

    #[test]
    fn missing_references_and_bad_subjects_are_refused() {
        let mut no_inbox = InboxGrant::test("g", "support", "alice@example.com");
        no_inbox.spec.inbox_ref.name = String::new();
        assert!(matches!(
            validate(&no_inbox),
            Err(GrantError::InvalidGrant { ref reason, .. }) if reason.contains("inboxRef")
        ));
        let mut no_subject = InboxGrant::test("g", "support", "alice@example.com");
        no_subject.spec.subject.name = String::new();
        assert!(matches!(
            validate(&no_subject),
            Err(GrantError::InvalidGrant { ref reason, .. }) if reason.contains("subject")
        ));
        let bad_team = InboxGrant::test("g", "support", "x").with_team("Not_A_Team");
        let error = validate(&bad_team).unwrap_err();
        assert!(matches!(error, GrantError::InvalidSpec { .. }));
        assert!(error.is_permanent());
        let mut no_uid = InboxGrant::test("g", "support", "alice@example.com");
        no_uid.metadata.uid = None;
        assert!(matches!(
            validate(&no_uid),
            Err(GrantError::InvalidGrant { .. })
        ));
    }

    #[test]
    fn a_past_expiration_is_valid_and_expired() {
        let grant = InboxGrant::test("g", "support", "alice@example.com").with_expiration(time(10));
        let valid = validate(&grant).unwrap();
        assert!(valid.is_expired(time(10).0));
        assert!(valid.is_expired(time(11).0));
        assert!(!valid.is_expired(time(9).0));
    }

    #[test]
    fn the_requeue_waits_until_just_after_expiry_capped_at_an_hour() {
        let now = time(1_000).0;
        assert_eq!(requeue_after(None, now), MAX_REQUEUE);
        assert_eq!(
            requeue_after(Some(time(1_090).0), now),
            Duration::from_secs(91)
        );
        assert_eq!(
            requeue_after(Some(time(1_000 + 7 * 86_400).0), now),
            MAX_REQUEUE
        );
        // Already past: look again right away (plus the slack).
        assert_eq!(requeue_after(Some(time(900).0), now), EXPIRY_SLACK);
    }
}
