//! `Inbox`: one shared Gmail mailbox of a tenant and who may see it.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::conditions::{
    Condition, ConditionStatus, StatusConditions, impl_status_conditions, reasons, types,
};
use crate::refs::LocalObjectRef;
use crate::validation::{self, Collector, SpecError, SpecErrors};

/// Pattern of a Gmail or Google Workspace address: lowercase, dot-atom local part, a domain of
/// at least two labels.
pub const GMAIL_ADDRESS_PATTERN: &str = r"^[a-z0-9!#$%&'*+/=?^_`{|}~-]+(\.[a-z0-9!#$%&'*+/=?^_`{|}~-]+)*@[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)+$";

/// Pattern of a team name: a lowercase RFC 1123 label.
pub const TEAM_NAME_PATTERN: &str = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$";

/// Pattern of a full Pub/Sub topic name.
pub const PUBSUB_TOPIC_PATTERN: &str =
    r"^projects/[a-z][-a-z0-9]{4,28}[a-z0-9]/topics/[A-Za-z][-A-Za-z0-9_.~+%]{2,254}$";

/// Pattern of a push audience: no whitespace.
pub const PUSH_AUDIENCE_PATTERN: &str = r"^\S+$";

/// Desired state of an Inbox: its tenant and address, who may see it, and its Pub/Sub push
/// settings.
///
/// The generated [`Inbox`] is a shared Gmail (or Google Workspace) mailbox of a tenant: the
/// operator connects it to the data plane, keeps its Gmail watch alive, and enforces who may see
/// its mail.
// clippy's duplicated_attributes mistakes repeated `type_ = "string"` in separate
// printcolumn(...) entries for duplicates.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "mail.helpr.dev",
    version = "v1alpha1",
    kind = "Inbox",
    plural = "inboxes",
    namespaced,
    status = "InboxStatus",
    derive = "PartialEq",
    shortname = "hvinbox",
    category = "helpr",
    doc = "A shared Gmail or Google Workspace mailbox of a tenant. The operator connects it to the data plane, keeps its Gmail watch alive and enforces who may see its mail.",
    selectable = ".spec.tenantRef.name",
    selectable = ".spec.gmailAddress",
    printcolumn(name = "Address", type_ = "string", json_path = ".spec.gmailAddress"),
    printcolumn(name = "Tenant", type_ = "string", json_path = ".spec.tenantRef.name"),
    printcolumn(name = "Visibility", type_ = "string", json_path = ".spec.visibility"),
    printcolumn(
        name = "Connection",
        type_ = "string",
        json_path = r#".status.conditions[?(@.type=="Connected")].reason"#,
        description = "Connected, NeedsReconnect or Disconnected"
    ),
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
        name = "Team",
        type_ = "string",
        json_path = ".spec.teamName",
        priority = 1
    ),
    printcolumn(
        name = "Last Sync",
        type_ = "date",
        json_path = ".status.lastSyncTime",
        priority = 1
    ),
    printcolumn(
        name = "Watch Expires",
        type_ = "date",
        json_path = ".status.watchExpirationTime",
        priority = 1
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[x_kube(validation = Rule::new("self.visibility != 'Team' || has(self.teamName)").message("teamName is required when visibility is Team").field_path(".teamName"))]
#[x_kube(validation = Rule::new("self.visibility == 'Team' || !has(self.teamName)").message("teamName may be set only when visibility is Team").field_path(".teamName"))]
#[serde(rename_all = "camelCase")]
pub struct InboxSpec {
    /// The Tenant the inbox belongs to, in the same namespace. Immutable.
    #[x_kube(validation = Rule::new("self == oldSelf").message("tenantRef is immutable"))]
    pub tenant_ref: LocalObjectRef,

    /// The mailbox's address, in lowercase (e.g. support@example.com). Immutable: a different
    /// mailbox is a different Inbox.
    #[x_kube(validation = Rule::new("self == oldSelf").message("gmailAddress is immutable"))]
    #[schemars(length(min = 3, max = 254), pattern(GMAIL_ADDRESS_PATTERN))]
    pub gmail_address: String,

    /// Who may read and reply besides the subjects of InboxGrants. Org: every agent of the
    /// tenant. Team: the members of teamName. Restricted: no one but the grants' subjects.
    pub visibility: Visibility,

    /// The team whose members may see the inbox; required when visibility is Team, not
    /// allowed otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63), pattern(TEAM_NAME_PATTERN))]
    pub team_name: Option<String>,

    /// When true, agents see only the conversations that are unassigned or assigned to them;
    /// subjects of a Configure grant still see every conversation. Default false.
    #[serde(default)]
    pub assignment_limits_visibility: bool,

    /// Where Gmail publishes the mailbox's changes and how pushes are authenticated.
    pub pub_sub: InboxPubSub,
}

/// Who may see an inbox besides the subjects of its grants.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum Visibility {
    /// Every agent of the tenant.
    Org,
    /// The members of `teamName`.
    Team,
    /// Only the subjects of InboxGrants.
    Restricted,
}

/// Gmail push notifications through Cloud Pub/Sub.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct InboxPubSub {
    /// Full name of the topic Gmail publishes the mailbox's changes to (users.watch), as
    /// projects/PROJECT/topics/TOPIC. Gmail's service account must be allowed to publish to it.
    #[schemars(length(min = 1, max = 512), pattern(PUBSUB_TOPIC_PATTERN))]
    pub topic: String,

    /// Audience of the OIDC token Pub/Sub attaches to each push request. A push whose token
    /// names another audience never reaches this inbox, and the ingest endpoint must accept
    /// this one (chart values config.push.audience or config.push.additionalAudiences;
    /// otherwise the Inbox stalls with reason PushAudienceNotAccepted).
    #[schemars(length(min = 1, max = 512), pattern(PUSH_AUDIENCE_PATTERN))]
    pub push_audience: String,
}

/// State of the mailbox's connection to Gmail: the reason of the Connected condition.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ConnectionState {
    /// Gmail accepts the stored credentials and the watch is active (Connected True).
    Connected,
    /// Gmail revoked or rejected the credentials; a person must reconnect (Connected False).
    NeedsReconnect,
    /// Never connected, or disconnected on purpose (Connected False).
    Disconnected,
}

impl ConnectionState {
    /// The Connected condition's reason for this state.
    pub fn reason(self) -> &'static str {
        match self {
            Self::Connected => reasons::CONNECTED,
            Self::NeedsReconnect => reasons::NEEDS_RECONNECT,
            Self::Disconnected => reasons::DISCONNECTED,
        }
    }

    /// The Connected condition's status for this state.
    pub fn status(self) -> ConditionStatus {
        ConditionStatus::from_bool(self == Self::Connected)
    }

    /// The state a Connected condition reports, if its reason is one of the three.
    pub fn from_reason(reason: &str) -> Option<Self> {
        [Self::Connected, Self::NeedsReconnect, Self::Disconnected]
            .into_iter()
            .find(|state| state.reason() == reason)
    }
}

/// Observed state of an Inbox.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct InboxStatus {
    /// The metadata.generation this status was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = i64::MAX))]
    pub observed_generation: Option<i64>,

    /// Ready (summary), Reconciling and Stalled (present only while True), Connected (reason
    /// Connected, NeedsReconnect or Disconnected), DataPlaneSynced.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16), extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,

    /// When the Gmail watch expires unless renewed (Gmail watches last at most seven days; the
    /// operator renews them before this time).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub watch_expiration_time: Option<Time>,

    /// When the data plane last finished fetching the mailbox's changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_sync_time: Option<Time>,
}

impl_status_conditions!(InboxStatus);

impl InboxStatus {
    /// Sets the Connected condition to `state` (its reason is the state's name).
    pub fn set_connection(
        &mut self,
        state: ConnectionState,
        message: impl Into<String>,
        generation: Option<i64>,
        now: &Time,
    ) -> bool {
        self.set_condition(
            Condition::new(
                types::CONNECTED,
                state.status(),
                state.reason(),
                message,
                now.clone(),
            )
            .with_observed_generation(generation),
        )
    }

    /// The connection state the Connected condition reports, if any.
    pub fn connection(&self) -> Option<ConnectionState> {
        self.condition(types::CONNECTED)
            .and_then(|c| ConnectionState::from_reason(&c.reason))
    }
}

impl Inbox {
    /// Name of the Tenant the inbox belongs to (same namespace).
    pub fn tenant_name(&self) -> &str {
        &self.spec.tenant_ref.name
    }
}

impl InboxSpec {
    /// Checks the spec; see [`crate::validation`].
    pub fn validate(&self) -> Result<(), SpecErrors> {
        let mut c = Collector::default();
        c.check(validation::object_name(
            "spec.tenantRef.name",
            &self.tenant_ref.name,
        ));
        c.check(validation::length(
            "spec.gmailAddress",
            &self.gmail_address,
            254,
        ));
        if !self.gmail_address.is_empty() && !validation::is_email_address(&self.gmail_address) {
            c.push(SpecError::MalformedPersonal {
                field: "spec.gmailAddress".into(),
                expected: "a lowercase e-mail address such as support@example.com",
            });
        }
        match (&self.visibility, &self.team_name) {
            (Visibility::Team, None) => c.push(SpecError::Required {
                field: "spec.teamName".into(),
                when: "visibility is Team",
            }),
            (Visibility::Team, Some(team)) => {
                c.check(validation::length("spec.teamName", team, 63));
                if !team.is_empty() && !validation::is_label(team) {
                    c.push(validation::malformed(
                        "spec.teamName",
                        team,
                        "a team name (lowercase letters, digits and '-')",
                    ));
                }
            }
            (_, Some(_)) => c.push(SpecError::NotAllowed {
                field: "spec.teamName".into(),
                when: "visibility is not Team",
            }),
            (_, None) => {}
        }
        c.check(pubsub_topic("spec.pubSub.topic", &self.pub_sub.topic));
        c.check(validation::length(
            "spec.pubSub.pushAudience",
            &self.pub_sub.push_audience,
            512,
        ));
        if self.pub_sub.push_audience.chars().any(char::is_whitespace) {
            c.push(validation::malformed(
                "spec.pubSub.pushAudience",
                &self.pub_sub.push_audience,
                "an audience without whitespace",
            ));
        }
        c.finish()
    }

    /// Checks an update from `old`: [`Self::validate`] plus the immutable fields.
    pub fn validate_update(&self, old: &InboxSpec) -> Result<(), SpecErrors> {
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
        if self.gmail_address != old.gmail_address {
            c.push(SpecError::ImmutablePersonal {
                field: "spec.gmailAddress".into(),
            });
        }
        c.finish()
    }
}

/// Whether `value` is a full topic name (matches [`PUBSUB_TOPIC_PATTERN`]) whose topic id does
/// not start with the reserved `goog`.
fn pubsub_topic(field: &str, value: &str) -> Result<(), SpecError> {
    validation::length(field, value, 512)?;
    let expected = "a Pub/Sub topic name projects/PROJECT/topics/TOPIC (project id of 6-30 lowercase letters, digits and '-'; topic of 3-255 letters, digits and -_.~+%, not starting with goog)";
    let bad = || validation::malformed(field, value, expected);
    let rest = value.strip_prefix("projects/").ok_or_else(bad)?;
    let (project, topic) = rest.split_once("/topics/").ok_or_else(bad)?;
    let project_ok = (6..=30).contains(&project.len())
        && project.starts_with(|c: char| c.is_ascii_lowercase())
        && !project.ends_with('-')
        && project
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    let topic_ok = (3..=255).contains(&topic.len())
        && topic.starts_with(|c: char| c.is_ascii_alphabetic())
        && topic
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.~+%".contains(c))
        && !topic.to_ascii_lowercase().starts_with("goog");
    if project_ok && topic_ok {
        Ok(())
    } else {
        Err(bad())
    }
}
