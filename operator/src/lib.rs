//! helpr-operator: reconciles Tenant, Inbox, InboxGrant and RetentionPolicy resources.
//!
//! - [`vault`]: per-tenant Vault/OpenBao provisioning (transit key, a policy limited to that
//!   key, a Kubernetes-auth role for the tenant's sync pods) and crypto-shredding.
//! - [`settings`]: the operator's own settings (sync image, Vault naming, egress targets).
//! - [`tenant`]: the Tenant controller (validate, build, reconcile).
//! - [`inbox`]: the Inbox controller (validate, tenant Ready, upsert, delete).
//! - [`grant`]: the InboxGrant controller (validate, upsert or revoke at expiry).
//! - [`retention`]: the RetentionPolicy controller (validate, tenant Ready, upsert, purge
//!   CronJob).
//! - [`leader`]: Lease-based leader election (one replica reconciles at a time).
//! - [`control`]: the client of the data plane's control API (typed errors, bearer token).
//! - [`confirmed`]: what Vault and the data plane last confirmed per object, so that a
//!   reconcile right after a successful one does not repeat the external calls.
#![forbid(unsafe_code)]

pub mod confirmed;
pub mod control;
pub mod grant;
pub mod inbox;
pub mod leader;
pub mod metrics;
pub mod retention;
pub mod settings;
pub mod tenant;
pub mod vault;
