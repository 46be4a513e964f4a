//! What the control API writes: the desired state of Tenant, Inbox, InboxGrant and
//! RetentionPolicy resources, each change checked against the resource's generation in the
//! transaction that writes it, and the change feed that tells the other processes.
//!
//! Generation rules (one place: [`decide`]): per (kind, namespace, name) the store records
//! the uid and the last generation applied. A newer generation applies, the same one is
//! [`ApplyOutcome::AlreadyCurrent`], an older one (or an upsert of a deleted object) is
//! [`ApplyOutcome::Stale`]; both write nothing. Another uid under the same name is a new
//! incarnation when the recorded object was deleted, and [`Rejection::UidMismatch`] while it
//! is live.

use crate::ids::TenantId;

use super::UnixMillis;

/// The kinds of resources the control API carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ControlKind {
    Tenant,
    Inbox,
    Grant,
    RetentionPolicy,
}

impl ControlKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ControlKind::Tenant => "tenant",
            ControlKind::Inbox => "inbox",
            ControlKind::Grant => "grant",
            ControlKind::RetentionPolicy => "retention_policy",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "tenant" => Some(ControlKind::Tenant),
            "inbox" => Some(ControlKind::Inbox),
            "grant" => Some(ControlKind::Grant),
            "retention_policy" => Some(ControlKind::RetentionPolicy),
            _ => None,
        }
    }
}

/// Identity and version of the Kubernetes object a change comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlMeta {
    /// Empty for cluster-scoped objects.
    pub namespace: String,
    pub name: String,
    pub uid: String,
    /// `metadata.generation`, at least 1.
    pub generation: i64,
}

/// What the store recorded of one object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlObjectRecord {
    pub kind: ControlKind,
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub generation: i64,
    pub deleted: bool,
    pub applied_at_ms: UnixMillis,
}

/// Result of a control change that the store could judge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApplyOutcome {
    /// Written, with the change recorded in the feed.
    Applied,
    /// The recorded generation is the same: nothing written.
    AlreadyCurrent,
    /// The recorded generation is newer, or the object was deleted: nothing written.
    Stale { applied_generation: i64 },
    /// The change is refused: nothing written.
    Rejected(Rejection),
}

/// Why a control change was refused. Carries names and uids only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejection {
    /// The referenced tenant does not exist.
    UnknownTenant,
    /// The referenced Inbox object is not applied (or was deleted).
    UnknownInbox,
    /// The tenant was deleted (policy retain): it takes no new configuration.
    TenantDeleted,
    /// The recorded object has another uid and was not deleted.
    UidMismatch { recorded_uid: String },
    /// An applied field that may not change did (`tenant`, `gmail_address`).
    Immutable(&'static str),
    /// Another Inbox object manages the inbox with this address.
    AddressTaken,
    /// The tenant already has a retention policy from another object.
    PolicyExists,
}

/// What deleting a tenant does with its data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeletionPolicy {
    /// Keep everything; stop the tenant and disconnect its inboxes.
    Retain,
    /// Crypto-shred: the caller destroys the KMS key and search index, the store deletes
    /// every row of the tenant.
    Shred,
}

impl DeletionPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            DeletionPolicy::Retain => "retain",
            DeletionPolicy::Shred => "shred",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "retain" => Some(DeletionPolicy::Retain),
            "shred" => Some(DeletionPolicy::Shred),
            _ => None,
        }
    }
}

/// Desired state of a Tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantSpec {
    pub display_name: String,
    pub deletion_policy: DeletionPolicy,
    pub search_mode: crate::search::Mode,
}

/// Whether a tenant takes configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TenantState {
    Active,
    /// Deleted with policy retain.
    Stopped,
}

impl TenantState {
    pub fn as_str(self) -> &'static str {
        match self {
            TenantState::Active => "active",
            TenantState::Stopped => "stopped",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "active" => Some(TenantState::Active),
            "stopped" => Some(TenantState::Stopped),
            _ => None,
        }
    }
}

/// A tenant's applied settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantSettings {
    pub tenant_id: TenantId,
    pub deletion_policy: DeletionPolicy,
    pub search_mode: crate::search::Mode,
    pub state: TenantState,
    pub generation: i64,
}

/// Who may see an inbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Visibility {
    Org,
    Team,
    Restricted,
}

impl Visibility {
    pub fn as_str(self) -> &'static str {
        match self {
            Visibility::Org => "org",
            Visibility::Team => "team",
            Visibility::Restricted => "restricted",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "org" => Some(Visibility::Org),
            "team" => Some(Visibility::Team),
            "restricted" => Some(Visibility::Restricted),
            _ => None,
        }
    }
}

/// Desired state of an Inbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboxSpec {
    pub tenant: TenantId,
    /// The shared mailbox's address (configuration, immutable once applied).
    pub address: String,
    pub visibility: Visibility,
    pub team: Option<String>,
    pub assignment_limits_visibility: bool,
    /// The Pub/Sub topic of the inbox's Gmail push watch; `None`: polling only.
    pub pubsub_topic: Option<String>,
    /// The audience the inbox's pushes carry; `None`: any the ingest endpoint accepts.
    pub push_audience: Option<String>,
}

/// An inbox managed by an Inbox object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboxSettings {
    pub inbox_id: String,
    pub tenant_id: TenantId,
    pub namespace: String,
    pub name: String,
    pub visibility: Visibility,
    pub team: Option<String>,
    pub assignment_limits_visibility: bool,
    pub generation: i64,
}

/// Connection and sync state of an inbox an Inbox object manages, for the control API's
/// `GetInboxStatus`. Ids, times and state words only: never the address or a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboxSyncStatus {
    pub inbox_id: String,
    /// uid of the Inbox object last applied.
    pub uid: String,
    /// Generation of the Inbox object last applied.
    pub generation: i64,
    /// `inboxes.status`, set by the control API and the sync worker.
    pub status: super::InboxStatus,
    /// Whether a (sealed) Google refresh token is stored.
    pub has_refresh_token: bool,
    /// When a sync worker last committed progress (advanced the history mark).
    pub last_synced_at_ms: Option<UnixMillis>,
    /// When the inbox's Gmail push watch on its current topic expires; `None`: none registered.
    pub watch_expires_at_ms: Option<UnixMillis>,
    /// The Pub/Sub topic the Inbox object names; `None`: polling only.
    pub pubsub_topic: Option<String>,
    /// Why the last watch registration failed (a [`WatchError`] word); `None`: it did not.
    pub watch_error: Option<WatchError>,
}

/// Why Gmail refused or could not take a push watch (`inboxes.watch_error`). Fixed words:
/// Gmail's own text never reaches the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatchError {
    /// 403: Gmail may not publish to the topic (grant `roles/pubsub.publisher` on it to
    /// gmail-api-push@system.gserviceaccount.com) or the account may not watch.
    Forbidden,
    /// 404: the topic does not exist.
    NotFound,
    /// Any other refusal (e.g. 400: a topic in another project than the OAuth client's).
    Rejected,
    /// Gmail was unreachable or kept answering 429/5xx.
    Unavailable,
}

impl WatchError {
    pub fn as_str(self) -> &'static str {
        match self {
            WatchError::Forbidden => "forbidden",
            WatchError::NotFound => "not_found",
            WatchError::Rejected => "rejected",
            WatchError::Unavailable => "unavailable",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "forbidden" => Some(WatchError::Forbidden),
            "not_found" => Some(WatchError::NotFound),
            "rejected" => Some(WatchError::Rejected),
            "unavailable" => Some(WatchError::Unavailable),
            _ => None,
        }
    }
}

/// The Gmail push watch of a connected inbox: what is wanted and what Gmail last took.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboxWatch {
    pub inbox_id: String,
    /// The topic the Inbox object names; `None`: no watch wanted.
    pub desired_topic: Option<String>,
    /// The topic of the watch last registered; `None`: none.
    pub topic: Option<String>,
    /// When that watch expires.
    pub expires_at_ms: Option<UnixMillis>,
}

/// Whom a grant is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubjectKind {
    Agent,
    Team,
}

impl SubjectKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SubjectKind::Agent => "agent",
            SubjectKind::Team => "team",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "agent" => Some(SubjectKind::Agent),
            "team" => Some(SubjectKind::Team),
            _ => None,
        }
    }
}

/// What a grant allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrantRole {
    Reply,
    Configure,
}

impl GrantRole {
    pub fn as_str(self) -> &'static str {
        match self {
            GrantRole::Reply => "reply",
            GrantRole::Configure => "configure",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "reply" => Some(GrantRole::Reply),
            "configure" => Some(GrantRole::Configure),
            _ => None,
        }
    }
}

/// Desired state of an InboxGrant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrantSpec {
    /// Name of the Inbox object, in the grant's namespace.
    pub inbox_name: String,
    pub subject_kind: SubjectKind,
    pub subject_name: String,
    pub role: GrantRole,
    pub expires_at_ms: Option<UnixMillis>,
}

/// An applied grant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrantRecord {
    pub namespace: String,
    pub name: String,
    pub tenant_id: TenantId,
    pub inbox_id: String,
    pub subject_kind: SubjectKind,
    pub subject_name: String,
    pub role: GrantRole,
    pub expires_at_ms: Option<UnixMillis>,
    pub generation: i64,
}

/// Desired state of a RetentionPolicy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetentionSpec {
    pub tenant: TenantId,
    pub grace_period_days: u32,
    pub delete_after_days: Option<u32>,
    pub legal_hold: bool,
}

/// An applied retention policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetentionPolicyRecord {
    pub namespace: String,
    pub name: String,
    pub tenant_id: TenantId,
    pub grace_period_days: u32,
    pub delete_after_days: Option<u32>,
    pub legal_hold: bool,
    pub generation: i64,
}

/// One entry of the change feed: which object changed. Names only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlChange {
    /// Position in the feed (increasing, no gaps).
    pub seq: i64,
    pub kind: ControlKind,
    pub namespace: String,
    pub name: String,
    pub tenant_id: TenantId,
    pub deleted: bool,
    pub at_ms: UnixMillis,
}

/// What a [`ChangeFeed`] delivers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChangeEvent {
    Change(ControlChange),
    /// Changes were missed (the feed fell behind the retained log): reload everything.
    Resync,
}

/// How many feed entries the store keeps (older ones are pruned as new ones arrive).
pub const CHANGE_LOG_RETAINED: i64 = 10_000;

/// NOTIFY channel of the PostgreSQL store; the payload is the change's sequence number.
pub const NOTIFY_CHANNEL: &str = "helpr_control";

/// A subscription to control changes made by any process on the same database, from the
/// moment it was created. Dropping it stops its background task.
pub struct ChangeFeed {
    rx: tokio::sync::mpsc::Receiver<ChangeEvent>,
    task: tokio::task::JoinHandle<()>,
}

impl ChangeFeed {
    pub(crate) fn new(
        rx: tokio::sync::mpsc::Receiver<ChangeEvent>,
        task: tokio::task::JoinHandle<()>,
    ) -> Self {
        Self { rx, task }
    }

    /// The next event; `None` once the feed has stopped.
    pub async fn next(&mut self) -> Option<ChangeEvent> {
        self.rx.recv().await
    }
}

impl Drop for ChangeFeed {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Decision for a change, from the recorded object (if any).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Decision {
    /// Write the change (`fresh`: first sight or a new incarnation after a delete).
    Apply { fresh: bool },
    /// Answer this without writing.
    Skip(ApplyOutcome),
}

/// The generation rules, for an upsert (`delete = false`) or a delete.
pub(crate) fn decide(
    recorded: Option<&ControlObjectRecord>,
    meta: &ControlMeta,
    delete: bool,
) -> Decision {
    let Some(r) = recorded else {
        return Decision::Apply { fresh: true };
    };
    if r.uid != meta.uid {
        return match (r.deleted, delete) {
            // A new incarnation of a deleted object.
            (true, false) => Decision::Apply { fresh: true },
            // Deleting an object that was never applied: nothing of it exists.
            (_, true) => Decision::Skip(ApplyOutcome::AlreadyCurrent),
            (false, false) => Decision::Skip(ApplyOutcome::Rejected(Rejection::UidMismatch {
                recorded_uid: r.uid.clone(),
            })),
        };
    }
    if r.deleted {
        return if delete {
            Decision::Skip(ApplyOutcome::AlreadyCurrent)
        } else {
            Decision::Skip(ApplyOutcome::Stale {
                applied_generation: r.generation,
            })
        };
    }
    if meta.generation < r.generation {
        return Decision::Skip(ApplyOutcome::Stale {
            applied_generation: r.generation,
        });
    }
    // A delete at the applied generation is still a change (the object went away).
    if meta.generation == r.generation && !delete {
        return Decision::Skip(ApplyOutcome::AlreadyCurrent);
    }
    Decision::Apply { fresh: false }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(uid: &str, generation: i64, deleted: bool) -> ControlObjectRecord {
        ControlObjectRecord {
            kind: ControlKind::Grant,
            namespace: "ns".into(),
            name: "g".into(),
            uid: uid.into(),
            generation,
            deleted,
            applied_at_ms: 0,
        }
    }

    fn meta(uid: &str, generation: i64) -> ControlMeta {
        ControlMeta {
            namespace: "ns".into(),
            name: "g".into(),
            uid: uid.into(),
            generation,
        }
    }

    #[test]
    fn generations_order_upserts() {
        let live = rec("u1", 3, false);
        assert_eq!(
            decide(None, &meta("u1", 1), false),
            Decision::Apply { fresh: true }
        );
        assert_eq!(
            decide(Some(&live), &meta("u1", 4), false),
            Decision::Apply { fresh: false }
        );
        assert_eq!(
            decide(Some(&live), &meta("u1", 3), false),
            Decision::Skip(ApplyOutcome::AlreadyCurrent)
        );
        assert_eq!(
            decide(Some(&live), &meta("u1", 2), false),
            Decision::Skip(ApplyOutcome::Stale {
                applied_generation: 3
            })
        );
    }

    #[test]
    fn deletes_are_final_for_their_uid() {
        let live = rec("u1", 3, false);
        let gone = rec("u1", 4, true);
        assert_eq!(
            decide(Some(&live), &meta("u1", 3), true),
            Decision::Apply { fresh: false }
        );
        assert_eq!(
            decide(Some(&live), &meta("u1", 2), true),
            Decision::Skip(ApplyOutcome::Stale {
                applied_generation: 3
            })
        );
        assert_eq!(
            decide(Some(&gone), &meta("u1", 9), false),
            Decision::Skip(ApplyOutcome::Stale {
                applied_generation: 4
            })
        );
        assert_eq!(
            decide(Some(&gone), &meta("u1", 4), true),
            Decision::Skip(ApplyOutcome::AlreadyCurrent)
        );
    }

    #[test]
    fn another_uid_is_a_new_incarnation_only_after_a_delete() {
        assert_eq!(
            decide(Some(&rec("u1", 7, true)), &meta("u2", 1), false),
            Decision::Apply { fresh: true }
        );
        assert_eq!(
            decide(Some(&rec("u1", 7, false)), &meta("u2", 1), false),
            Decision::Skip(ApplyOutcome::Rejected(Rejection::UidMismatch {
                recorded_uid: "u1".into()
            }))
        );
        assert_eq!(
            decide(Some(&rec("u1", 7, false)), &meta("u2", 1), true),
            Decision::Skip(ApplyOutcome::AlreadyCurrent)
        );
    }
}
