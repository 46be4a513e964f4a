//! Lifecycle of stored mail: soft delete, restore, the grace period, purge and retention.
//!
//! - **Soft delete** (an agent, the CLI, retention's `delete_after_days`, or the cascade of an
//!   Inbox deletion): the store records who, why and when in the message rows, sets their
//!   index marker, and appends an audit row, in one transaction; then the messages are
//!   removed from the search index. The order matters: the store first, so a crash before
//!   the index delete leaves a soft-deleted message that every read already hides (get,
//!   list, the search re-check) and whose marker makes the indexer remove it from the index
//!   (the repair path, [`crate::search::service::SearchService::index_pending`]).
//! - **Restore** within the grace period makes the mail live again and marks it for
//!   indexing, so the indexer indexes it again from the sealed store.
//! - **Purge** removes for good (rows, attachments, emptied conversations) what was
//!   soft-deleted longer than the grace period ago, unless the tenant is under legal hold.
//!
//! The decisions are a pure function, [`plan`] (policy + clock + candidates -> actions);
//! [`Lifecycle`] fetches candidates in bounded batches, applies the plan through the store
//! and the search index and reports counts. Every step is idempotent and committed per
//! batch, so an interrupted run is resumed by running it again.

mod executor;
mod plan;

pub use executor::{
    DeleteOutcome, IndexRemoval, Lifecycle, LifecycleError, PurgeOptions, PurgeReport,
};
pub use plan::{Action, Candidates, DAY_MS, DEFAULT_GRACE_PERIOD_DAYS, Held, Policy, plan};
