//! helpr-dataplane: the data plane of helpr vault.
//!
//! | module | owns |
//! |---|---|
//! | [`crypto`] | AES-256-GCM seal/open, DEKs and their versions (no I/O) |
//! | [`kms`] | the `Kms` trait and its `vault` and `local` backends |
//! | [`keyring`] | per-tenant DEK versions: caching, rotation, seal accounting |
//! | [`store`] | the database of record (PostgreSQL and SQLite) |
//! | [`control`] | the control API (gRPC) the operator pushes desired state into |
//! | [`config`] | settings from a file and `HELPR_*` environment variables |
//! | [`ingest`] | push verification, Gmail sync, parse / sanitize / quote-strip pipeline |
//! | [`search`] | tokenizer, blind tokens (HMAC under a per-tenant index key), query language (no I/O) |
//! | [`lifecycle`] | soft delete, restore, grace period, purge and retention (pure planner + executor) |
//! | [`metrics`] | counters in the Prometheus text format |
//! | [`access`] | who may see what: per-inbox decisions over an index of inboxes and grants |
//! | [`api`] | the agent API (HTTP/JSON): authentication, access on every call, errors |
#![forbid(unsafe_code)]

pub mod access;
pub mod api;
pub mod config;
pub mod control;
pub mod crypto;
pub mod ids;
pub mod ingest;
pub mod keyring;
pub mod kms;
pub mod lifecycle;
pub mod metrics;
pub mod search;
pub mod store;
pub mod tools;
