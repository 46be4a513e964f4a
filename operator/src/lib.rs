//! helpr-operator: reconciles Tenant, Inbox, InboxGrant and RetentionPolicy resources.
//!
//! - [`vault`]: per-tenant Vault/OpenBao provisioning (transit key, a policy limited to that
//!   key, a Kubernetes-auth role for the tenant's sync pods) and crypto-shredding.
#![forbid(unsafe_code)]

pub mod vault;
