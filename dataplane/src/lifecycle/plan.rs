//! The pure planner: what a retention run does, given the policy, the clock and candidates.

use crate::store::{ConversationAge, PurgeCandidate, RetentionPolicyRecord, UnixMillis};

/// Grace period when the tenant has no RetentionPolicy (days).
pub const DEFAULT_GRACE_PERIOD_DAYS: u32 = 60;
/// One day in milliseconds.
pub const DAY_MS: i64 = 86_400_000;

/// The retention rules of a tenant, from its RetentionPolicy (or the defaults).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Policy {
    /// Soft-deleted mail is purged this many days after its deletion; until then it can
    /// be restored.
    pub grace_period_days: u32,
    /// Conversations whose newest message is older than this many days are soft-deleted.
    pub delete_after_days: Option<u32>,
    /// Nothing is purged or deleted by retention while set.
    pub legal_hold: bool,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            grace_period_days: DEFAULT_GRACE_PERIOD_DAYS,
            delete_after_days: None,
            legal_hold: false,
        }
    }
}

fn days_ms(days: u32) -> i64 {
    i64::from(days).saturating_mul(DAY_MS)
}

impl Policy {
    /// The tenant's policy: its RetentionPolicy, or the defaults (60-day grace, no
    /// auto-delete, no hold) without one.
    pub fn from_record(record: Option<&RetentionPolicyRecord>) -> Self {
        match record {
            Some(r) => Policy {
                grace_period_days: r.grace_period_days,
                delete_after_days: r.delete_after_days,
                legal_hold: r.legal_hold,
            },
            None => Policy::default(),
        }
    }

    /// Mail soft-deleted at or before this instant has had its grace period: it is purged
    /// and can no longer be restored.
    pub fn grace_cutoff(&self, now: UnixMillis) -> UnixMillis {
        now.saturating_sub(days_ms(self.grace_period_days))
    }

    /// Conversations whose newest message is older than this instant are soft-deleted
    /// (`None`: no `delete_after_days`).
    pub fn delete_after_cutoff(&self, now: UnixMillis) -> Option<UnixMillis> {
        self.delete_after_days
            .map(|d| now.saturating_sub(days_ms(d)))
    }
}

/// What a retention run looks at: one batch of each kind of candidate.
#[derive(Debug, Clone, Copy, Default)]
pub struct Candidates<'a> {
    /// Soft-deleted messages.
    pub soft_deleted: &'a [PurgeCandidate],
    /// Conversations with live mail.
    pub conversations: &'a [ConversationAge],
}

/// What the legal hold kept from happening.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Held {
    Purge { message_id: String },
    SoftDelete { conversation_id: String },
}

/// One step of a retention run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// `delete_after_days` elapsed for the conversation: soft-delete its live mail.
    SoftDeleteConversation {
        conversation_id: String,
        inbox_id: String,
    },
    /// The grace period of a soft-deleted message elapsed: remove it for good. With
    /// `index_pending`, its removal from the search index is not confirmed yet and has to
    /// happen first.
    Purge {
        message_id: String,
        conversation_id: String,
        index_pending: bool,
    },
    /// Due, but the tenant is under legal hold.
    Hold(Held),
}

/// Decides what to do with the candidates at `now`. Pure: the same inputs give the same
/// actions, in candidate order (conversations first, then messages). Candidates not due
/// (still in their grace period, or recent enough) get no action.
pub fn plan(policy: &Policy, now: UnixMillis, candidates: &Candidates<'_>) -> Vec<Action> {
    let mut actions = Vec::new();
    if let Some(cutoff) = policy.delete_after_cutoff(now) {
        for c in candidates.conversations {
            if c.last_message_at_ms >= cutoff {
                continue;
            }
            actions.push(if policy.legal_hold {
                Action::Hold(Held::SoftDelete {
                    conversation_id: c.conversation_id.clone(),
                })
            } else {
                Action::SoftDeleteConversation {
                    conversation_id: c.conversation_id.clone(),
                    inbox_id: c.inbox_id.clone(),
                }
            });
        }
    }
    let cutoff = policy.grace_cutoff(now);
    for m in candidates.soft_deleted {
        if m.deleted_at_ms > cutoff {
            continue;
        }
        actions.push(if policy.legal_hold {
            Action::Hold(Held::Purge {
                message_id: m.message_id.clone(),
            })
        } else {
            Action::Purge {
                message_id: m.message_id.clone(),
                conversation_id: m.conversation_id.clone(),
                index_pending: m.index_pending,
            }
        });
    }
    actions
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::TenantId;

    /// 2026-12-01T00:00:00Z.
    const NOW: UnixMillis = 1_796_083_200_000;

    fn deleted(id: &str, days_ago: i64, index_pending: bool) -> PurgeCandidate {
        PurgeCandidate {
            message_id: id.into(),
            conversation_id: format!("c-{id}"),
            inbox_id: "inbox".into(),
            deleted_at_ms: NOW - days_ago * DAY_MS,
            index_pending,
        }
    }

    fn conversation(id: &str, age_ms: i64) -> ConversationAge {
        ConversationAge {
            conversation_id: id.into(),
            inbox_id: "inbox".into(),
            last_message_at_ms: NOW - age_ms,
        }
    }

    fn purge(id: &str, index_pending: bool) -> Action {
        Action::Purge {
            message_id: id.into(),
            conversation_id: format!("c-{id}"),
            index_pending,
        }
    }

    #[test]
    fn without_a_policy_the_grace_period_is_60_days_and_nothing_is_auto_deleted() {
        let policy = Policy::from_record(None);
        assert_eq!(policy, Policy::default());
        assert_eq!(policy.grace_period_days, 60);
        let soft = [
            deleted("a", 59, false),
            deleted("b", 60, true),
            deleted("c", 61, false),
        ];
        let old = [conversation("old", 10_000 * DAY_MS)];
        let actions = plan(
            &policy,
            NOW,
            &Candidates {
                soft_deleted: &soft,
                conversations: &old,
            },
        );
        assert_eq!(actions, vec![purge("b", true), purge("c", false)]);
    }

    #[test]
    fn the_grace_period_ends_exactly_at_deletion_plus_grace() {
        let policy = Policy {
            grace_period_days: 30,
            ..Policy::default()
        };
        assert_eq!(policy.grace_cutoff(NOW), NOW - 30 * DAY_MS);
        let mut just_inside = deleted("in", 30, false);
        just_inside.deleted_at_ms += 1;
        let on_the_line = deleted("line", 30, false);
        let soft = [just_inside, on_the_line];
        let actions = plan(
            &policy,
            NOW,
            &Candidates {
                soft_deleted: &soft,
                conversations: &[],
            },
        );
        assert_eq!(actions, vec![purge("line", false)]);
        // One millisecond later the other one is due too.
        let later = plan(
            &policy,
            NOW + 1,
            &Candidates {
                soft_deleted: &soft,
                conversations: &[],
            },
        );
        assert_eq!(later.len(), 2);
    }

    #[test]
    fn zero_grace_purges_everything_soft_deleted_up_to_now() {
        let policy = Policy {
            grace_period_days: 0,
            ..Policy::default()
        };
        let mut future = deleted("future", 0, false);
        future.deleted_at_ms = NOW + 1;
        let soft = [deleted("now", 0, false), future];
        let actions = plan(
            &policy,
            NOW,
            &Candidates {
                soft_deleted: &soft,
                conversations: &[],
            },
        );
        assert_eq!(actions, vec![purge("now", false)]);
    }

    #[test]
    fn delete_after_days_soft_deletes_conversations_older_than_the_cutoff() {
        let policy = Policy {
            grace_period_days: 60,
            delete_after_days: Some(365),
            legal_hold: false,
        };
        assert_eq!(policy.delete_after_cutoff(NOW), Some(NOW - 365 * DAY_MS));
        let conversations = [
            conversation("older", 365 * DAY_MS + 1),
            conversation("exactly", 365 * DAY_MS),
            conversation("recent", DAY_MS),
        ];
        let actions = plan(
            &policy,
            NOW,
            &Candidates {
                soft_deleted: &[],
                conversations: &conversations,
            },
        );
        assert_eq!(
            actions,
            vec![Action::SoftDeleteConversation {
                conversation_id: "older".into(),
                inbox_id: "inbox".into()
            }]
        );
    }

    #[test]
    fn legal_hold_purges_and_deletes_nothing_but_reports_what_it_held() {
        let policy = Policy {
            grace_period_days: 1,
            delete_after_days: Some(1),
            legal_hold: true,
        };
        let soft = [deleted("due", 5, false), deleted("fresh", 0, false)];
        let conversations = [conversation("old", 5 * DAY_MS), conversation("new", 0)];
        let actions = plan(
            &policy,
            NOW,
            &Candidates {
                soft_deleted: &soft,
                conversations: &conversations,
            },
        );
        assert_eq!(
            actions,
            vec![
                Action::Hold(Held::SoftDelete {
                    conversation_id: "old".into()
                }),
                Action::Hold(Held::Purge {
                    message_id: "due".into()
                }),
            ]
        );
        assert!(!actions.iter().any(|a| matches!(
            a,
            Action::Purge { .. } | Action::SoftDeleteConversation { .. }
        )));
    }

    #[test]
    fn the_policy_record_is_taken_as_is_and_huge_periods_do_not_overflow() {
        let record = RetentionPolicyRecord {
            namespace: "ns".into(),
            name: "keep".into(),
            tenant_id: TenantId::new("acme").unwrap_or_else(|_| unreachable!()),
            grace_period_days: 7,
            delete_after_days: Some(30),
            legal_hold: true,
            generation: 3,
        };
        let policy = Policy::from_record(Some(&record));
        assert_eq!(
            policy,
            Policy {
                grace_period_days: 7,
                delete_after_days: Some(30),
                legal_hold: true
            }
        );
        let huge = Policy {
            grace_period_days: u32::MAX,
            delete_after_days: Some(u32::MAX),
            legal_hold: false,
        };
        assert!(huge.grace_cutoff(NOW) < 0);
        assert!(huge.delete_after_cutoff(i64::MIN + 1).is_some());
        let soft = [deleted("a", 10_000, false)];
        assert!(
            plan(
                &huge,
                NOW,
                &Candidates {
                    soft_deleted: &soft,
                    conversations: &[]
                }
            )
            .is_empty()
        );
    }
}
