//! Validation (pure) of an Inbox.

use helpr_crds::Inbox;
use helpr_crds::inbox::Visibility;
use kube::{Resource, ResourceExt};

use super::InboxError;
use crate::control::proto;

/// An Inbox the data plane can apply.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidInbox {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub generation: i64,
    /// Name of the Tenant (the tenant id), in the inbox's namespace.
    pub tenant: String,
    pub gmail_address: String,
    pub visibility: Visibility,
    /// The team of `Team` visibility.
    pub team: Option<String>,
    pub assignment_limits_visibility: bool,
    /// The Pub/Sub topic the data plane's push watch (users.watch) publishes to.
    pub pubsub_topic: String,
    /// The audience of the push subscription's tokens.
    pub push_audience: String,
}

impl ValidInbox {
    /// The control API's identity of the inbox.
    pub fn meta(&self) -> proto::ObjectMeta {
        proto::ObjectMeta {
            namespace: self.namespace.clone(),
            name: self.name.clone(),
            uid: self.uid.clone(),
            generation: self.generation,
        }
    }

    /// The `UpsertInbox` request.
    pub fn upsert_request(&self) -> proto::UpsertInboxRequest {
        proto::UpsertInboxRequest {
            meta: Some(self.meta()),
            spec: Some(proto::InboxSpec {
                tenant: self.tenant.clone(),
                gmail_address: self.gmail_address.clone(),
                visibility: match self.visibility {
                    Visibility::Org => proto::Visibility::Org,
                    Visibility::Team => proto::Visibility::Team,
                    Visibility::Restricted => proto::Visibility::Restricted,
                }
                .into(),
                team: self.team.clone().unwrap_or_default(),
                assignment_limits_visibility: self.assignment_limits_visibility,
                pubsub_topic: self.pubsub_topic.clone(),
                push_audience: self.push_audience.clone(),
            }),
        }
    }
}

/// Checks an Inbox (pure): metadata the control API needs (namespace, uid, generation),
/// tenantRef present, the spec validators of helpr-crds (address, visibility and team,
/// Pub/Sub topic and audience).
pub fn validate(inbox: &Inbox) -> Result<ValidInbox, InboxError> {
    let key = format!(
        "{}/{}",
        inbox.namespace().unwrap_or_default(),
        inbox.name_any()
    );
    let invalid = |reason: &str| InboxError::InvalidInbox {
        inbox: key.clone(),
        reason: reason.to_owned(),
    };
    let namespace = inbox
        .namespace()
        .filter(|ns| !ns.is_empty())
        .ok_or_else(|| invalid("has no namespace"))?;
    let uid = inbox
        .meta()
        .uid
        .clone()
        .filter(|uid| !uid.is_empty())
        .ok_or_else(|| invalid("has no metadata.uid"))?;
    let generation = inbox
        .meta()
        .generation
        .filter(|g| *g >= 1)
        .ok_or_else(|| invalid("has no metadata.generation"))?;
    if inbox.spec.tenant_ref.name.is_empty() {
        return Err(invalid("spec.tenantRef.name is required"));
    }
    inbox
        .spec
        .validate()
        .map_err(|errors| InboxError::InvalidSpec {
            inbox: key.clone(),
            errors,
        })?;
    Ok(ValidInbox {
        namespace,
        name: inbox.name_any(),
        uid,
        generation,
        tenant: inbox.spec.tenant_ref.name.clone(),
        gmail_address: inbox.spec.gmail_address.clone(),
        visibility: inbox.spec.visibility,
        team: inbox.spec.team_name.clone(),
        assignment_limits_visibility: inbox.spec.assignment_limits_visibility,
        pubsub_topic: inbox.spec.pub_sub.topic.clone(),
        push_audience: inbox.spec.pub_sub.push_audience.clone(),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use helpr_crds::testing::Fixture;

    #[test]
    fn a_valid_inbox_maps_to_the_upsert_request() {
        let inbox = Inbox::test("support", "acme")
            .with_team_visibility("tier-1")
            .with_assignment_limits_visibility(true)
            .with_generation(5);
        let request = validate(&inbox).unwrap().upsert_request();
        let meta = request.meta.unwrap();
        assert_eq!(meta.uid, inbox.metadata.uid.clone().unwrap());
        assert_eq!(meta.generation, 5);
        assert_eq!(meta.name, "support");
        let spec = request.spec.unwrap();
        assert_eq!(spec.tenant, "acme");
        assert_eq!(spec.gmail_address, "support@example.com");
        assert_eq!(spec.visibility, i32::from(proto::Visibility::Team));
        assert_eq!(spec.team, "tier-1");
        assert!(spec.assignment_limits_visibility);
        assert_eq!(spec.pubsub_topic, inbox.spec.pub_sub.topic);
        assert!(!spec.pubsub_topic.is_empty());
        assert_eq!(spec.push_audience, inbox.spec.pub_sub.push_audience);
    }

    #[test]
    fn org_and_restricted_inboxes_send_no_team() {
        let org = validate(&Inbox::test("support", "acme")).unwrap();
        let spec = org.upsert_request().spec.unwrap();
        assert_eq!(spec.visibility, i32::from(proto::Visibility::Org));
        assert_eq!(spec.team, "");
        let restricted =
            validate(&Inbox::test("support", "acme").with_restricted_visibility()).unwrap();
        assert_eq!(
            restricted.upsert_request().spec.unwrap().visibility,
            i32::from(proto::Visibility::Restricted)
        );
    }

    #[test]
    fn invalid_inboxes_are_refused_as_permanent() {
        let mut no_tenant = Inbox::test("support", "acme");
        no_tenant.spec.tenant_ref.name = String::new();
        assert!(matches!(
            validate(&no_tenant),
            Err(InboxError::InvalidInbox { ref reason, .. }) if reason.contains("tenantRef")
        ));
        let bad_address = Inbox::test("support", "acme").with_address("Not An Address");
        let error = validate(&bad_address).unwrap_err();
        assert!(matches!(error, InboxError::InvalidSpec { .. }));
        assert!(error.is_permanent());
        let mut team_without_name = Inbox::test("support", "acme");
        team_without_name.spec.visibility = Visibility::Team;
        assert!(matches!(
            validate(&team_without_name),
            Err(InboxError::InvalidSpec { .. })
        ));
    }
}
