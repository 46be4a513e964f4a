//! Who may see what: pure decisions over an in-memory index of one tenant's inboxes, inbox
//! settings and grants.
//!
//! # The rule
//!
//! An agent (identity: the verified token's agent claim; teams: its groups claim) of tenant
//! T may read inbox I of T when any of these holds **at the moment of the decision**:
//!
//! 1. a *live* grant of I names the agent (subject kind `agent`, exact name) or one of its
//!    teams (subject kind `team`, exact name). A grant is live while it has no
//!    `expires_at_ms` or the clock is still before it; expiry is checked against the clock
//!    on every decision, not only when the operator revokes the grant;
//! 2. I's visibility is `org`: every agent of T;
//! 3. I's visibility is `team` and the agent is in I's team.
//!
//! `restricted` means grants only. Nothing else opens an inbox:
//!
//! - **Unmanaged inboxes** (created by the `tenants`/`inboxes` CLI, not by an Inbox resource
//!   through the control API) have no settings and cannot have grants: they are treated as
//!   `restricted`, so no agent sees them. Applying an Inbox resource with the same address
//!   adopts the inbox and its mail.
//! - **A stopped tenant** (its Tenant resource deleted with policy `Retain`) opens nothing.
//! - **Another tenant's** inboxes, settings and grants never count (every record is checked
//!   against the agent's tenant as well as loaded by it).
//! - A deleted Inbox resource takes its settings and grants with it: the inbox becomes
//!   unmanaged and therefore invisible.
//!
//! # Roles
//!
//! What a caller may do with a readable inbox is its [`Role`]: `read` (through visibility
//! only), or the highest role of its live grants (`reply` < `configure`). Reading needs
//! [`Role::Read`]; endpoints that change mail (delete, restore, reply) should require
//! [`Role::Reply`] through [`AccessIndex::role`].
//!
//! # `assignment_limits_visibility`
//!
//! There is no assignment model yet (no conversation is assigned to anyone), so the flag
//! cannot narrow anything: it is stored, reported to clients by the agent API, and does
//! not change decisions. Denying everything when it is set would hide whole inboxes from
//! the agents they were configured for; once assignments exist, agents who see the inbox
//! through its visibility only (not through a grant) are to be limited to their assigned
//! conversations.
//!
//! # Freshness
//!
//! The index is built per request from the store ([`AccessIndex::load`]): a grant revoked
//! (or an inbox made restricted) through the control API is denied on the very next call,
//! in every process, with no cache to invalidate.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::ids::TenantId;
use crate::store::{
    GrantRecord, GrantRole, InboxRecord, InboxSettings, Store, StoreError, SubjectKind,
    TenantState, UnixMillis, Visibility,
};

/// An authenticated agent: who the caller is, as its verified token says.
#[derive(Clone, PartialEq, Eq)]
pub struct Agent {
    /// The tenant the agent belongs to; it never sees another tenant's mail.
    pub tenant: TenantId,
    /// Matched exactly against grants of subject kind `agent`.
    pub name: String,
    /// Matched exactly against grants of subject kind `team` and inboxes' `team`.
    pub teams: BTreeSet<String>,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Names and teams are personal data: not for logs.
        f.debug_struct("Agent")
            .field("tenant", &self.tenant)
            .field("teams", &self.teams.len())
            .finish_non_exhaustive()
    }
}

/// What a caller may do with an inbox it can read. Ordered: `Read < Reply < Configure`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// Read only (the inbox is visible to the agent through its visibility).
    Read,
    /// A grant with role `reply`.
    Reply,
    /// A grant with role `configure`.
    Configure,
}

impl Role {
    /// `read`, `reply` or `configure`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::Reply => "reply",
            Role::Configure => "configure",
        }
    }

    fn of_grant(role: GrantRole) -> Self {
        match role {
            GrantRole::Reply => Role::Reply,
            GrantRole::Configure => Role::Configure,
        }
    }
}

/// The access policy of one inbox: its settings, or the unmanaged default.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboxPolicy {
    pub visibility: Visibility,
    pub team: Option<String>,
    pub assignment_limits_visibility: bool,
    /// Whether an Inbox resource manages the inbox (false: the `restricted` default).
    pub managed: bool,
}

impl InboxPolicy {
    /// The policy of an inbox no Inbox resource manages: grants only (and it has none).
    pub const UNMANAGED: InboxPolicy = InboxPolicy {
        visibility: Visibility::Restricted,
        team: None,
        assignment_limits_visibility: false,
        managed: false,
    };

    fn from_settings(s: &InboxSettings) -> Self {
        Self {
            visibility: s.visibility,
            team: s.team.clone(),
            assignment_limits_visibility: s.assignment_limits_visibility,
            managed: true,
        }
    }
}

/// Whether a grant still counts at `now_ms`.
pub fn grant_is_live(grant: &GrantRecord, now_ms: UnixMillis) -> bool {
    grant.expires_at_ms.is_none_or(|t| now_ms < t)
}

/// Whether a grant names the agent or one of its teams.
pub fn grant_names(grant: &GrantRecord, agent: &Agent) -> bool {
    match grant.subject_kind {
        SubjectKind::Agent => grant.subject_name == agent.name,
        SubjectKind::Team => agent.teams.contains(&grant.subject_name),
    }
}

/// The decision for one inbox (see the module docs): the caller's role, or `None` when it
/// may not read the inbox. `grants` are the inbox's grants; any of another tenant or inbox
/// is ignored.
pub fn decide(
    agent: &Agent,
    inbox: &InboxRecord,
    policy: &InboxPolicy,
    grants: &[GrantRecord],
    now_ms: UnixMillis,
) -> Option<Role> {
    if inbox.tenant_id != agent.tenant {
        return None;
    }
    let granted = grants
        .iter()
        .filter(|g| g.tenant_id == agent.tenant && g.inbox_id == inbox.id)
        .filter(|g| grant_is_live(g, now_ms) && grant_names(g, agent))
        .map(|g| Role::of_grant(g.role))
        .max();
    let visible = match policy.visibility {
        Visibility::Org => true,
        Visibility::Team => policy
            .team
            .as_ref()
            .is_some_and(|team| agent.teams.contains(team)),
        Visibility::Restricted => false,
    };
    match (granted, visible) {
        (Some(role), _) => Some(role),
        (None, true) => Some(Role::Read),
        (None, false) => None,
    }
}

/// One inbox of the index.
#[derive(Debug, Clone)]
pub struct IndexedInbox {
    pub inbox: InboxRecord,
    pub policy: InboxPolicy,
    grants: Vec<GrantRecord>,
}

/// A readable inbox and the caller's role in it.
#[derive(Debug, Clone)]
pub struct Readable<'a> {
    pub inbox: &'a InboxRecord,
    pub policy: &'a InboxPolicy,
    pub role: Role,
}

/// One tenant's inboxes, their policies and grants, as of when it was built.
#[derive(Debug, Clone)]
pub struct AccessIndex {
    tenant: TenantId,
    stopped: bool,
    inboxes: BTreeMap<String, IndexedInbox>,
}

impl AccessIndex {
    /// Builds the index from what the store holds (pure). Records of another tenant are
    /// dropped; grants of an inbox not in `inboxes` are dropped.
    pub fn build(
        tenant: TenantId,
        state: Option<TenantState>,
        inboxes: Vec<InboxRecord>,
        settings: Vec<InboxSettings>,
        grants: Vec<GrantRecord>,
    ) -> Self {
        let settings: HashMap<String, InboxSettings> = settings
            .into_iter()
            .filter(|s| s.tenant_id == tenant)
            .map(|s| (s.inbox_id.clone(), s))
            .collect();
        let mut by_inbox: HashMap<String, Vec<GrantRecord>> = HashMap::new();
        for g in grants.into_iter().filter(|g| g.tenant_id == tenant) {
            by_inbox.entry(g.inbox_id.clone()).or_default().push(g);
        }
        let inboxes = inboxes
            .into_iter()
            .filter(|i| i.tenant_id == tenant)
            .map(|inbox| {
                let policy = settings
                    .get(&inbox.id)
                    .map_or(InboxPolicy::UNMANAGED, InboxPolicy::from_settings);
                let grants = by_inbox.remove(&inbox.id).unwrap_or_default();
                (
                    inbox.id.clone(),
                    IndexedInbox {
                        inbox,
                        policy,
                        grants,
                    },
                )
            })
            .collect();
        Self {
            tenant,
            stopped: state == Some(TenantState::Stopped),
            inboxes,
        }
    }

    /// Reads the tenant's current inboxes, settings, grants and state from the store.
    pub async fn load(store: &dyn Store, tenant: &TenantId) -> Result<Self, StoreError> {
        let state = store.tenant_settings(tenant).await?.map(|s| s.state);
        let inboxes = store.list_inboxes(tenant).await?;
        let settings = store.list_inbox_settings(tenant).await?;
        let grants = store.list_grants_for_tenant(tenant).await?;
        Ok(Self::build(
            tenant.clone(),
            state,
            inboxes,
            settings,
            grants,
        ))
    }

    /// The tenant the index is of.
    pub fn tenant(&self) -> &TenantId {
        &self.tenant
    }

    /// The agent's role in the inbox, or `None` when it may not read it (or the inbox does
    /// not exist, is of another tenant, or the tenant is stopped).
    pub fn role(&self, agent: &Agent, inbox_id: &str, now_ms: UnixMillis) -> Option<Role> {
        if self.stopped || agent.tenant != self.tenant {
            return None;
        }
        let entry = self.inboxes.get(inbox_id)?;
        decide(agent, &entry.inbox, &entry.policy, &entry.grants, now_ms)
    }

    /// The inbox, when the agent may read it.
    pub fn readable_inbox(
        &self,
        agent: &Agent,
        inbox_id: &str,
        now_ms: UnixMillis,
    ) -> Option<Readable<'_>> {
        let role = self.role(agent, inbox_id, now_ms)?;
        let entry = self.inboxes.get(inbox_id)?;
        Some(Readable {
            inbox: &entry.inbox,
            policy: &entry.policy,
            role,
        })
    }

    /// Every inbox the agent may read, in inbox id order.
    pub fn readable(&self, agent: &Agent, now_ms: UnixMillis) -> Vec<Readable<'_>> {
        self.inboxes
            .keys()
            .filter_map(|id| self.readable_inbox(agent, id, now_ms))
            .collect()
    }

    /// The ids of every inbox the agent may read (the search restriction).
    pub fn readable_ids(&self, agent: &Agent, now_ms: UnixMillis) -> BTreeSet<String> {
        self.readable(agent, now_ms)
            .into_iter()
            .map(|r| r.inbox.id.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tid(s: &str) -> TenantId {
        TenantId::new(s).unwrap()
    }

    fn agent(name: &str, teams: &[&str]) -> Agent {
        Agent {
            tenant: tid("acme"),
            name: name.into(),
            teams: teams.iter().map(|t| t.to_string()).collect(),
        }
    }

    fn inbox(id: &str, tenant: &str) -> InboxRecord {
        InboxRecord {
            id: id.into(),
            tenant_id: tid(tenant),
            address: format!("{id}@acme.test"),
            history_id: None,
            status: "connected".into(),
            refresh_token: None,
            connected_at_ms: 0,
            created_at_ms: 0,
        }
    }

    fn settings(id: &str, visibility: Visibility, team: Option<&str>) -> InboxSettings {
        InboxSettings {
            inbox_id: id.into(),
            tenant_id: tid("acme"),
            namespace: "ns".into(),
            name: id.into(),
            visibility,
            team: team.map(str::to_owned),
            assignment_limits_visibility: false,
            generation: 1,
        }
    }

    fn grant(
        inbox: &str,
        kind: SubjectKind,
        name: &str,
        role: GrantRole,
        expires: Option<i64>,
    ) -> GrantRecord {
        GrantRecord {
            namespace: "ns".into(),
            name: format!("{inbox}-{name}"),
            tenant_id: tid("acme"),
            inbox_id: inbox.into(),
            subject_kind: kind,
            subject_name: name.into(),
            role,
            expires_at_ms: expires,
            generation: 1,
        }
    }

    fn index(settings: Vec<InboxSettings>, grants: Vec<GrantRecord>) -> AccessIndex {
        AccessIndex::build(
            tid("acme"),
            Some(TenantState::Active),
            vec![
                inbox("org", "acme"),
                inbox("team", "acme"),
                inbox("restricted", "acme"),
                inbox("cli", "acme"),
            ],
            settings,
            grants,
        )
    }

    fn standard() -> AccessIndex {
        index(
            vec![
                settings("org", Visibility::Org, None),
                settings("team", Visibility::Team, Some("billing")),
                settings("restricted", Visibility::Restricted, None),
            ],
            vec![],
        )
    }

    #[test]
    fn org_inboxes_are_open_to_every_agent_of_the_tenant() {
        let idx = standard();
        assert_eq!(idx.role(&agent("ann", &[]), "org", 0), Some(Role::Read));
        let mut other = agent("ann", &[]);
        other.tenant = tid("globex");
        assert_eq!(idx.role(&other, "org", 0), None);
    }

    #[test]
    fn team_inboxes_need_membership_of_that_team() {
        let idx = standard();
        assert_eq!(
            idx.role(&agent("ann", &["billing"]), "team", 0),
            Some(Role::Read)
        );
        assert_eq!(idx.role(&agent("bob", &["sales"]), "team", 0), None);
        // A team inbox without a team opens to nobody by visibility.
        let idx = index(vec![settings("team", Visibility::Team, None)], vec![]);
        assert_eq!(idx.role(&agent("ann", &["billing"]), "team", 0), None);
    }

    #[test]
    fn restricted_and_unmanaged_inboxes_open_only_through_grants() {
        let idx = standard();
        let ann = agent("ann", &["billing"]);
        assert_eq!(idx.role(&ann, "restricted", 0), None);
        assert_eq!(idx.role(&ann, "cli", 0), None);
        assert_eq!(idx.role(&ann, "missing", 0), None);
        let ids: Vec<_> = idx.readable_ids(&ann, 0).into_iter().collect();
        assert_eq!(ids, vec!["org".to_string(), "team".to_string()]);
    }

    #[test]
    fn grants_for_the_agent_or_its_team_open_a_restricted_inbox_with_their_role() {
        let idx = index(
            vec![settings("restricted", Visibility::Restricted, None)],
            vec![
                grant(
                    "restricted",
                    SubjectKind::Agent,
                    "ann",
                    GrantRole::Reply,
                    None,
                ),
                grant(
                    "restricted",
                    SubjectKind::Team,
                    "admins",
                    GrantRole::Configure,
                    None,
                ),
            ],
        );
        assert_eq!(
            idx.role(&agent("ann", &[]), "restricted", 0),
            Some(Role::Reply)
        );
        assert_eq!(
            idx.role(&agent("bob", &["admins"]), "restricted", 0),
            Some(Role::Configure)
        );
        assert_eq!(
            idx.role(&agent("ann", &["admins"]), "restricted", 0),
            Some(Role::Configure)
        );
        // Names are exact: no case folding, no team/agent confusion.
        assert_eq!(idx.role(&agent("Ann", &[]), "restricted", 0), None);
        assert_eq!(idx.role(&agent("admins", &[]), "restricted", 0), None);
        assert_eq!(idx.role(&agent("carol", &["ann"]), "restricted", 0), None);
    }

    #[test]
    fn a_grant_counts_until_its_expiry_on_the_clock_of_each_decision() {
        let idx = index(
            vec![],
            vec![grant(
                "cli",
                SubjectKind::Agent,
                "ann",
                GrantRole::Reply,
                Some(1_000),
            )],
        );
        let ann = agent("ann", &[]);
        assert_eq!(idx.role(&ann, "cli", 999), Some(Role::Reply));
        assert_eq!(idx.role(&ann, "cli", 1_000), None);
        assert_eq!(idx.role(&ann, "cli", 5_000), None);
    }

    #[test]
    fn an_expired_grant_falls_back_to_visibility() {
        let idx = index(
            vec![settings("org", Visibility::Org, None)],
            vec![grant(
                "org",
                SubjectKind::Agent,
                "ann",
                GrantRole::Configure,
                Some(10),
            )],
        );
        let ann = agent("ann", &[]);
        assert_eq!(idx.role(&ann, "org", 5), Some(Role::Configure));
        assert_eq!(idx.role(&ann, "org", 10), Some(Role::Read));
    }

    #[test]
    fn records_of_another_tenant_never_count() {
        let mut foreign = grant("cli", SubjectKind::Agent, "ann", GrantRole::Reply, None);
        foreign.tenant_id = tid("globex");
        let mut foreign_settings = settings("cli", Visibility::Org, None);
        foreign_settings.tenant_id = tid("globex");
        let idx = AccessIndex::build(
            tid("acme"),
            None,
            vec![inbox("cli", "acme"), inbox("theirs", "globex")],
            vec![foreign_settings],
            vec![foreign],
        );
        let ann = agent("ann", &[]);
        assert_eq!(idx.role(&ann, "cli", 0), None);
        assert_eq!(idx.role(&ann, "theirs", 0), None);
        // And a direct decision on another tenant's inbox is a denial whatever its policy.
        let org = InboxPolicy {
            visibility: Visibility::Org,
            ..InboxPolicy::UNMANAGED
        };
        assert_eq!(decide(&ann, &inbox("theirs", "globex"), &org, &[], 0), None);
    }

    #[test]
    fn a_stopped_tenant_opens_nothing() {
        let idx = AccessIndex::build(
            tid("acme"),
            Some(TenantState::Stopped),
            vec![inbox("org", "acme")],
            vec![settings("org", Visibility::Org, None)],
            vec![grant(
                "org",
                SubjectKind::Agent,
                "ann",
                GrantRole::Reply,
                None,
            )],
        );
        assert_eq!(idx.role(&agent("ann", &[]), "org", 0), None);
        assert!(idx.readable(&agent("ann", &[]), 0).is_empty());
    }

    #[test]
    fn assignment_limits_visibility_does_not_change_decisions_yet() {
        let mut s = settings("org", Visibility::Org, None);
        s.assignment_limits_visibility = true;
        let idx = index(vec![s], vec![]);
        let r = idx.readable_inbox(&agent("ann", &[]), "org", 0).unwrap();
        assert_eq!(r.role, Role::Read);
        assert!(r.policy.assignment_limits_visibility);
    }

    #[test]
    fn roles_are_ordered() {
        assert!(Role::Read < Role::Reply && Role::Reply < Role::Configure);
        assert_eq!(Role::Configure.as_str(), "configure");
    }
}
