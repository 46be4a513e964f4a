//! Custom resource types of helpr vault.
//!
//! This crate is the only home of the CRD Rust types (Tenant, Inbox, InboxGrant,
//! RetentionPolicy). The types, their schemas and the `crdgen` binary are built in
//! step 4 of the roadmap (issue 5); until then the crate holds only the API group
//! and version every other crate refers to.
#![forbid(unsafe_code)]

/// The API group of every helpr custom resource.
pub const API_GROUP: &str = "mail.helpr.dev";

/// The served and stored version of every helpr custom resource.
pub const API_VERSION: &str = "v1alpha1";

/// `group/version`, as it appears in a manifest's `apiVersion`.
pub fn api_version() -> String {
    format!("{API_GROUP}/{API_VERSION}")
}

#[cfg(test)]
mod tests {
    #[test]
    fn api_version_joins_group_and_version() {
        assert_eq!(super::api_version(), "mail.helpr.dev/v1alpha1");
    }
}
