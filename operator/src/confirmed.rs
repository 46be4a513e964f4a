//! What this process last confirmed outside Kubernetes, per object: the generation (and the
//! inputs it depended on, such as its Tenant) at which Vault and the data plane were
//! checked, and when.
//!
//! A reconcile of an object that is Ready at its generation and was confirmed less than
//! [`RECHECK_AFTER`] ago skips the external calls (Vault provisioning, control API upserts,
//! the inbox's sync status): those are what its own status write, a child's change or a
//! parent's wake-up would otherwise repeat for nothing. Nothing else is skipped: children
//! are still applied, status is still computed. Because [`RECHECK_AFTER`] is shorter than
//! the resync interval and a confirmation is only ever recorded by a real check (never by
//! a skip), the periodic resync always checks for real, so drift outside Kubernetes (a
//! deleted Vault role, a data plane restored from an older backup) is still found there.
//! The memory is the process's own: after a restart every object is checked again.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Mutex;
use std::time::Duration;

use kube::Resource;
use tokio::time::Instant;

/// How long a confirmation stands in for a new check (shorter than
/// [`RESYNC_INTERVAL`](crate::tenant::reconcile::RESYNC_INTERVAL), see the module).
pub const RECHECK_AFTER: Duration = Duration::from_secs(120);

/// What an object's confirmation depended on: its generation and, for an object that
/// refers to a parent, the parent's identity and generation. A change of any of them makes
/// the confirmation void.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Basis(u64);

impl Basis {
    /// The basis of `object` at its current generation.
    pub fn of<K: Resource>(object: &K) -> Self {
        Self::with_parent::<K, K>(object, None)
    }

    /// The basis of `object` at its current generation under `parent` (its uid and
    /// generation).
    pub fn with_parent<K: Resource, P: Resource>(object: &K, parent: Option<&P>) -> Self {
        let mut hasher = DefaultHasher::new();
        object.meta().generation.hash(&mut hasher);
        if let Some(parent) = parent {
            parent.meta().uid.hash(&mut hasher);
            parent.meta().generation.hash(&mut hasher);
        }
        Self(hasher.finish())
    }
}

/// Confirmations per object uid (a new incarnation of a name starts without one).
#[derive(Debug, Default)]
pub struct Confirmations {
    by_uid: Mutex<HashMap<String, (Basis, Instant)>>,
}

impl Confirmations {
    /// Whether `object` was confirmed at `basis` less than [`RECHECK_AFTER`] ago.
    pub fn is_recent<K: Resource>(&self, object: &K, basis: Basis) -> bool {
        let Some(uid) = object.meta().uid.as_deref() else {
            return false;
        };
        self.by_uid.lock().is_ok_and(|by_uid| {
            by_uid
                .get(uid)
                .is_some_and(|(seen, at)| *seen == basis && at.elapsed() < RECHECK_AFTER)
        })
    }

    /// Records that `object`'s external state was checked now, at `basis`.
    pub fn record<K: Resource>(&self, object: &K, basis: Basis) {
        if let (Some(uid), Ok(mut by_uid)) = (object.meta().uid.as_deref(), self.by_uid.lock()) {
            by_uid.insert(uid.to_owned(), (basis, Instant::now()));
        }
    }

    /// Forgets `object`'s confirmation (a check failed, or the object is going away).
    pub fn forget<K: Resource>(&self, object: &K) {
        if let (Some(uid), Ok(mut by_uid)) = (object.meta().uid.as_deref(), self.by_uid.lock()) {
            by_uid.remove(uid);
        }
    }

    /// How many objects have a confirmation.
    pub fn len(&self) -> usize {
        self.by_uid.lock().map_or(0, |by_uid| by_uid.len())
    }

    /// Whether no object has a confirmation.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use helpr_crds::testing::Fixture;
    use helpr_crds::{Inbox, Tenant};

    #[tokio::test(start_paused = true)]
    async fn a_confirmation_stands_for_its_basis_until_the_recheck_time() {
        let confirmations = Confirmations::default();
        let tenant = Tenant::test("acme");
        assert!(!confirmations.is_recent(&tenant, Basis::of(&tenant)));
        confirmations.record(&tenant, Basis::of(&tenant));
        assert!(confirmations.is_recent(&tenant, Basis::of(&tenant)));
        tokio::time::advance(RECHECK_AFTER - Duration::from_secs(1)).await;
        assert!(confirmations.is_recent(&tenant, Basis::of(&tenant)));
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(
            !confirmations.is_recent(&tenant, Basis::of(&tenant)),
            "checked for real again after RECHECK_AFTER"
        );
    }

    #[test]
    fn a_new_generation_a_new_parent_or_a_new_incarnation_voids_it() {
        let confirmations = Confirmations::default();
        let tenant = Tenant::test("acme");
        let inbox = Inbox::test("support", "acme");
        confirmations.record(&inbox, Basis::with_parent(&inbox, Some(&tenant)));
        assert!(confirmations.is_recent(&inbox, Basis::with_parent(&inbox, Some(&tenant))));
        let changed = inbox.clone().with_generation(2);
        assert!(!confirmations.is_recent(&changed, Basis::with_parent(&changed, Some(&tenant))));
        let tenant_changed = tenant.clone().with_generation(2);
        assert!(
            !confirmations.is_recent(&inbox, Basis::with_parent(&inbox, Some(&tenant_changed)))
        );
        let mut recreated_tenant = tenant.clone();
        recreated_tenant.metadata.uid = Some("another-uid".to_owned());
        assert!(
            !confirmations.is_recent(&inbox, Basis::with_parent(&inbox, Some(&recreated_tenant)))
        );
        let mut recreated = inbox.clone();
        recreated.metadata.uid = Some("another-inbox-uid".to_owned());
        assert!(
            !confirmations.is_recent(&recreated, Basis::with_parent(&recreated, Some(&tenant)))
        );
        confirmations.forget(&inbox);
        assert!(!confirmations.is_recent(&inbox, Basis::with_parent(&inbox, Some(&tenant))));
        assert!(confirmations.is_empty());
    }
}
