//! `InboxGrant`: access to one inbox for one agent or team.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::conditions::{Condition, impl_status_conditions};
use crate::refs::LocalObjectRef;
use crate::validation::{self, Collector, SpecError, SpecErrors};

/// Pattern of a subject's name: an agent's login (usually an e-mail address) or a team name.
pub const SUBJECT_NAME_PATTERN: &str = r"^[A-Za-z0-9]([-A-Za-z0-9._@+]*[A-Za-z0-9])?$";

/// Desired state of an InboxGrant: which inbox, for whom, which role, until when.
///
/// The generated [`InboxGrant`] gives one agent or team a role on one inbox, optionally until
/// a time.
// clippy's duplicated_attributes mistakes repeated `type_ = "string"` in separate
// printcolumn(...) entries for duplicates.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "mail.helpr.dev",
    version = "v1alpha1",
    kind = "InboxGrant",
    namespaced,
    status = "InboxGrantStatus",
    derive = "PartialEq",
    shortname = "hvgrant",
    category = "helpr",
    doc = "Gives one agent or team a role on one inbox, optionally until an expiration time. Grants add to the inbox's visibility; deleting a grant revokes it.",
    selectable = ".spec.inboxRef.name",
    selectable = ".spec.subject.kind",
    selectable = ".spec.subject.name",
    printcolumn(name = "Inbox", type_ = "string", json_path = ".spec.inboxRef.name"),
    printcolumn(
        name = "Kind",
        type_ = "string",
        json_path = ".spec.subject.kind",
        description = "Kind of the subject: Agent or Team"
    ),
    printcolumn(name = "Subject", type_ = "string", json_path = ".spec.subject.name"),
    printcolumn(name = "Role", type_ = "string", json_path = ".spec.role"),
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
        name = "Expires",
        type_ = "date",
        json_path = ".spec.expirationTime",
        priority = 1
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct InboxGrantSpec {
    /// The Inbox the grant is for, in the same namespace. Immutable.
    #[x_kube(validation = Rule::new("self == oldSelf").message("inboxRef is immutable"))]
    pub inbox_ref: LocalObjectRef,

    /// Who receives the role. Immutable: a grant for someone else is a new InboxGrant.
    #[x_kube(validation = Rule::new("self == oldSelf").message("subject is immutable"))]
    pub subject: GrantSubject,

    /// What the subject may do. Reply: read every conversation of the inbox and reply, assign
    /// and label. Configure: everything Reply allows, and change the inbox's settings in the
    /// agent UI.
    pub role: GrantRole,

    /// When the grant stops giving access (RFC 3339, e.g. 2026-12-31T23:59:59Z); absent means
    /// it never expires. An expired grant stays until deleted, with Ready False and reason
    /// Expired.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expiration_time: Option<Time>,
}

/// The agent or team a grant is for.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash)]
#[x_kube(validation = Rule::new("self.kind != 'Team' || (self.name.size() <= 63 && self.name.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$'))").message("a Team subject's name must be a team name (lowercase letters, digits and '-', at most 63 characters)").field_path(".name"))]
#[serde(rename_all = "camelCase")]
pub struct GrantSubject {
    /// Agent: one person, by login. Team: every member of a team of the tenant.
    pub kind: SubjectKind,

    /// The agent's login (usually an e-mail address) or the team's name.
    #[schemars(length(min = 1, max = 254), pattern(SUBJECT_NAME_PATTERN))]
    pub name: String,
}

/// Kinds of grant subject.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum SubjectKind {
    /// One person.
    Agent,
    /// Every member of a team.
    Team,
}

/// Roles a grant gives.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, JsonSchema,
)]
pub enum GrantRole {
    /// Read and reply.
    Reply,
    /// Read, reply and configure the inbox.
    Configure,
}

/// Observed state of an InboxGrant.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct InboxGrantStatus {
    /// The metadata.generation this status was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = i64::MAX))]
    pub observed_generation: Option<i64>,

    /// Ready (summary; False with reason Expired after expirationTime), Reconciling and Stalled
    /// (present only while True), DataPlaneSynced.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16), extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}

impl_status_conditions!(InboxGrantStatus);

impl InboxGrant {
    /// Name of the Inbox the grant is for (same namespace).
    pub fn inbox_name(&self) -> &str {
        &self.spec.inbox_ref.name
    }

    /// Whether the grant has expired at `now`.
    pub fn is_expired(&self, now: &Time) -> bool {
        self.spec.is_expired(now)
    }
}

impl InboxGrantSpec {
    /// Whether `expirationTime` is at or before `now`.
    pub fn is_expired(&self, now: &Time) -> bool {
        self.expiration_time.as_ref().is_some_and(|t| t.0 <= now.0)
    }

    /// Checks the spec; see [`crate::validation`]. An expiration time in the past is valid (the
    /// grant is reported as Expired, not as invalid).
    pub fn validate(&self) -> Result<(), SpecErrors> {
        let mut c = Collector::default();
        c.check(validation::object_name(
            "spec.inboxRef.name",
            &self.inbox_ref.name,
        ));
        let name = &self.subject.name;
        c.check(validation::length("spec.subject.name", name, 254));
        let name_ok = match self.subject.kind {
            SubjectKind::Team => validation::is_label(name),
            SubjectKind::Agent => {
                name.chars()
                    .all(|ch| ch.is_ascii_alphanumeric() || "-._@+".contains(ch))
                    && name.starts_with(|ch: char| ch.is_ascii_alphanumeric())
                    && name.ends_with(|ch: char| ch.is_ascii_alphanumeric())
            }
        };
        if !name.is_empty() && !name_ok {
            c.push(SpecError::MalformedPersonal {
                field: "spec.subject.name".into(),
                expected: match self.subject.kind {
                    SubjectKind::Team => "a team name (lowercase letters, digits and '-')",
                    SubjectKind::Agent => {
                        "an agent login (letters, digits and -._@+, starting and ending with a letter or digit)"
                    }
                },
            });
        }
        c.finish()
    }

    /// Checks an update from `old`: [`Self::validate`] plus the immutable fields.
    pub fn validate_update(&self, old: &InboxGrantSpec) -> Result<(), SpecErrors> {
        let mut c = Collector::default();
        if let Err(errors) = self.validate() {
            errors.into_vec().into_iter().for_each(|e| c.push(e));
        }
        if self.inbox_ref != old.inbox_ref {
            c.push(SpecError::Immutable {
                field: "spec.inboxRef.name".into(),
                old: old.inbox_ref.name.clone(),
                new: self.inbox_ref.name.clone(),
            });
        }
        if self.subject != old.subject {
            c.push(SpecError::ImmutablePersonal {
                field: "spec.subject".into(),
            });
        }
        c.finish()
    }
}
