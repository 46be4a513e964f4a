//! helpr-operator: reconciles Tenant, Inbox, InboxGrant and RetentionPolicy resources.
//!
//! The controllers are built in step 4 of the roadmap (issue 5). Until then this binary
//! refuses to run rather than pretending to reconcile anything.
#![forbid(unsafe_code)]

use std::process::ExitCode;

fn main() -> ExitCode {
    eprintln!(
        "helpr-operator: the controllers for {} are not built yet (roadmap step 4); nothing was reconciled",
        helpr_crds::api_version()
    );
    ExitCode::from(2)
}
