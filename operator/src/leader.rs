//! Leader election on a `coordination.k8s.io/v1` Lease, so that only one operator replica
//! reconciles at a time.
//!
//! The holder renews the Lease every [`LeaderElection::renew_every`]; a candidate takes it
//! over once `renewTime + leaseDurationSeconds` has passed. Every write carries the
//! Lease's `resourceVersion`, so two candidates cannot both win (the loser gets a 409).
//! A leader that fails to renew before its lease expires must stop reconciling:
//! [`LeaderElection::hold`] returns, and the binary exits.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, PostParams};

/// What a candidate should do with the Lease as it found it.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// No Lease yet: create it, held by us.
    Create(Lease),
    /// Ours, or expired: write it back held by us (with the read `resourceVersion`).
    Take(Lease),
    /// Someone else holds a live lease.
    Wait { holder: String },
}

/// The decision for `identity` at `now`, given the Lease as read (`None`: absent). Pure.
pub fn decide(
    current: Option<&Lease>,
    name: &str,
    identity: &str,
    duration: Duration,
    now: Timestamp,
) -> Decision {
    let seconds = i32::try_from(duration.as_secs()).unwrap_or(i32::MAX);
    let Some(current) = current else {
        return Decision::Create(Lease {
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(identity.to_owned()),
                lease_duration_seconds: Some(seconds),
                acquire_time: Some(MicroTime(now)),
                renew_time: Some(MicroTime(now)),
                lease_transitions: Some(0),
                ..LeaseSpec::default()
            }),
        });
    };
    let spec = current.spec.clone().unwrap_or_default();
    let holder = spec.holder_identity.clone().unwrap_or_default();
    let expires = spec.renew_time.as_ref().map(|t| {
        t.0.saturating_add(SignedDuration::from_secs(i64::from(
            spec.lease_duration_seconds.unwrap_or(0),
        )))
        .unwrap_or(t.0)
    });
    let ours = holder == identity;
    let free = holder.is_empty() || expires.is_none_or(|e| e < now);
    if !ours && !free {
        return Decision::Wait { holder };
    }
    let mut lease = current.clone();
    let transitions = spec.lease_transitions.unwrap_or(0);
    lease.spec = Some(LeaseSpec {
        holder_identity: Some(identity.to_owned()),
        lease_duration_seconds: Some(seconds),
        acquire_time: if ours {
            spec.acquire_time.clone()
        } else {
            Some(MicroTime(now))
        },
        renew_time: Some(MicroTime(now)),
        lease_transitions: Some(if ours {
            transitions
        } else {
            transitions.saturating_add(1)
        }),
        ..spec
    });
    Decision::Take(lease)
}

/// One candidate for the Lease `name` in a namespace.
pub struct LeaderElection {
    api: Api<Lease>,
    name: String,
    identity: String,
    duration: Duration,
    pub renew_every: Duration,
}

impl LeaderElection {
    pub fn new(client: kube::Client, namespace: &str, name: &str, identity: &str) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            name: name.to_owned(),
            identity: identity.to_owned(),
            duration: Duration::from_secs(15),
            renew_every: Duration::from_secs(5),
        }
    }

    /// One attempt to acquire or renew; `Ok(true)` when we hold the Lease afterwards.
    pub async fn try_acquire(&self) -> Result<bool, kube::Error> {
        let current = match self.api.get(&self.name).await {
            Ok(lease) => Some(lease),
            Err(kube::Error::Api(s)) if s.code == 404 => None,
            Err(e) => return Err(e),
        };
        let decision = decide(
            current.as_ref(),
            &self.name,
            &self.identity,
            self.duration,
            Timestamp::now(),
        );
        let written = match decision {
            Decision::Wait { holder } => {
                tracing::debug!(%holder, "lease held by another replica");
                return Ok(false);
            }
            Decision::Create(lease) => self.api.create(&PostParams::default(), &lease).await,
            Decision::Take(lease) => {
                self.api
                    .replace(&self.name, &PostParams::default(), &lease)
                    .await
            }
        };
        match written {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Waits until this replica holds the Lease.
    pub async fn acquire(&self) {
        loop {
            match self.try_acquire().await {
                Ok(true) => {
                    tracing::info!(lease = %self.name, identity = %self.identity, "became leader");
                    return;
                }
                Ok(false) => {}
                Err(error) => tracing::warn!(%error, "leader election attempt failed"),
            }
            tokio::time::sleep(self.renew_every).await;
        }
    }

    /// Renews the Lease until a renewal fails for longer than the lease lasts; then
    /// returns (leadership lost: stop reconciling).
    pub async fn hold(&self) {
        let mut last_renewed = tokio::time::Instant::now();
        loop {
            tokio::time::sleep(self.renew_every).await;
            match self.try_acquire().await {
                Ok(true) => last_renewed = tokio::time::Instant::now(),
                Ok(false) => {
                    tracing::error!(lease = %self.name, "leadership lost to another replica");
                    return;
                }
                Err(error) => {
                    tracing::warn!(%error, "lease renewal failed");
                    // Give up before the lease can expire and another replica takes over.
                    if last_renewed.elapsed() + self.renew_every >= self.duration {
                        tracing::error!(lease = %self.name, "lease could not be renewed in time");
                        return;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const D: Duration = Duration::from_secs(15);

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_second(seconds).unwrap()
    }

    fn held_by(holder: &str, renewed: i64) -> Lease {
        match decide(None, "helpr-operator", holder, D, at(renewed)) {
            Decision::Create(mut lease) => {
                lease.metadata.resource_version = Some("41".to_owned());
                lease
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn an_absent_lease_is_created_held_by_the_candidate() {
        let Decision::Create(lease) = decide(None, "helpr-operator", "pod-a", D, at(100)) else {
            panic!()
        };
        let spec = lease.spec.unwrap();
        assert_eq!(spec.holder_identity.as_deref(), Some("pod-a"));
        assert_eq!(spec.lease_duration_seconds, Some(15));
        assert_eq!(lease.metadata.name.as_deref(), Some("helpr-operator"));
    }

    #[test]
    fn a_live_lease_of_another_holder_makes_the_candidate_wait() {
        let lease = held_by("pod-a", 100);
        assert_eq!(
            decide(Some(&lease), "helpr-operator", "pod-b", D, at(110)),
            Decision::Wait {
                holder: "pod-a".to_owned()
            }
        );
    }

    #[test]
    fn an_expired_lease_is_taken_over_with_a_transition_and_the_read_version() {
        let lease = held_by("pod-a", 100);
        let Decision::Take(taken) = decide(Some(&lease), "helpr-operator", "pod-b", D, at(116))
        else {
            panic!()
        };
        assert_eq!(taken.metadata.resource_version.as_deref(), Some("41"));
        let spec = taken.spec.unwrap();
        assert_eq!(spec.holder_identity.as_deref(), Some("pod-b"));
        assert_eq!(spec.lease_transitions, Some(1));
        assert_eq!(spec.acquire_time, Some(MicroTime(at(116))));
    }

    #[test]
    fn the_holder_renews_without_a_transition() {
        let lease = held_by("pod-a", 100);
        let Decision::Take(renewed) = decide(Some(&lease), "helpr-operator", "pod-a", D, at(105))
        else {
            panic!()
        };
        let spec = renewed.spec.unwrap();
        assert_eq!(spec.lease_transitions, Some(0));
        assert_eq!(spec.acquire_time, Some(MicroTime(at(100))));
        assert_eq!(spec.renew_time, Some(MicroTime(at(105))));
    }
}
