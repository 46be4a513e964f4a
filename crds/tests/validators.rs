//! The pure spec validators: they reject what the schema rejects (same verdict as the schema's
//! patterns on a table of values), say precisely why, and add the checks the schema cannot do.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use helpr_crds::inbox_grant::SubjectKind;
use helpr_crds::tenant::{self, VaultAuth};
use helpr_crds::testing::time;
use helpr_crds::{
    Inbox, InboxGrant, RetentionPolicy, SpecError, Tenant, inbox, retention_policy, validation,
};
use regex::Regex;

/// Asserts that `validator` and the schema `pattern` (with `max_len`) agree on every case.
fn agree(
    pattern: &str,
    max_len: usize,
    validator: impl Fn(&str) -> bool,
    good: &[&str],
    bad: &[&str],
) {
    let re = Regex::new(pattern).unwrap();
    let schema = |v: &str| re.is_match(v) && v.chars().count() <= max_len && !v.is_empty();
    for v in good {
        assert!(schema(v), "schema rejects good value {v:?}");
        assert!(validator(v), "validator rejects good value {v:?}");
    }
    for v in bad {
        assert!(!schema(v), "schema accepts bad value {v:?}");
        assert!(!validator(v), "validator accepts bad value {v:?}");
    }
}

#[test]
fn gmail_address_validator_agrees_with_the_schema_pattern() {
    agree(
        inbox::GMAIL_ADDRESS_PATTERN,
        254,
        validation::is_email_address,
        &[
            "support@acme.example",
            "first.last+tag@mail.acme.co.uk",
            "o'brien@x.io",
            "a@b.cd",
        ],
        &[
            "Support@acme.example",
            "support@ACME.example",
            "support@localhost",
            "support@acme..example",
            "support@-acme.example",
            ".support@acme.example",
            "sup..port@acme.example",
            "support.@acme.example",
            "support acme@acme.example",
            "@acme.example",
            "support@",
            "supportacme.example",
            "a@b@acme.example",
        ],
    );
    // Only the validator counts the local part (at most 64 characters).
    let long_local = format!("{}@acme.example", "a".repeat(65));
    assert!(!validation::is_email_address(&long_local));
}

#[test]
fn object_and_label_validators_agree_with_the_schema_patterns() {
    agree(
        helpr_crds::refs::OBJECT_NAME_PATTERN,
        253,
        validation::is_object_name,
        &["acme", "vault-ca", "a.b.c", "0x"],
        &["Acme", "-a", "a-", "a..b", "a_b", "a/b", ""],
    );
    agree(
        inbox::TEAM_NAME_PATTERN,
        63,
        validation::is_label,
        &["billing", "tier-2", "x"],
        &["Billing", "tier_2", "a.b", "-x", &"a".repeat(64)],
    );
}

#[test]
fn quantity_and_time_zone_validators_agree_with_the_schema_patterns() {
    agree(
        tenant::QUANTITY_PATTERN,
        64,
        tenant::is_quantity,
        &[
            "1", "250m", "1.5", ".5", "256Mi", "1Gi", "2e3", "1E-2", "100k",
        ],
        &["-1", "1.2.3", "1Gb", "m", "", "1 Gi", "e3", "1e"],
    );
    agree(
        retention_policy::TIME_ZONE_PATTERN,
        64,
        retention_policy::is_time_zone_name,
        &[
            "UTC",
            "Europe/Berlin",
            "America/Argentina/Buenos_Aires",
            "Etc/GMT+5",
            "America/Port-au-Prince",
        ],
        &[
            "/UTC",
            "Europe//Berlin",
            "Europe/Berlin/",
            "1UTC",
            "Europe/Berlin Time",
            &"A".repeat(65),
        ],
    );
}

#[test]
fn vault_server_validator_agrees_with_the_schema_pattern() {
    let re = Regex::new(tenant::VAULT_SERVER_PATTERN).unwrap();
    let valid = |server: &str| {
        Tenant::test("acme")
            .with_kms_server(server)
            .spec
            .validate()
            .is_ok()
    };
    for good in [
        "https://vault.vault.svc:8200",
        "http://127.0.0.1:8200",
        "https://vault.example.com",
        "https://vault.example.com/",
        "https://[::1]:8200",
        "https://vault.example.com/proxy/vault",
    ] {
        assert!(re.is_match(good), "schema rejects {good}");
        assert!(valid(good), "validator rejects {good}");
    }
    for bad in [
        "vault:8200",
        "ftp://vault",
        "https://user:pass@vault:8200",
        "https://vault:8200?x=1",
        "https://vault:8200#frag",
        "https://-vault",
        "https://vault..svc",
        "https://",
        "https://vault:port",
        "https://[::1",
    ] {
        assert!(!re.is_match(bad), "schema accepts {bad}");
        assert!(!valid(bad), "validator accepts {bad}");
    }
    // Beyond the pattern: the port must fit in 16 bits.
    assert!(re.is_match("https://vault:99999"));
    assert!(!valid("https://vault:99999"));
}

#[test]
fn tenant_validator_reports_every_problem_with_its_field() {
    let mut t = Tenant::test("acme")
        .with_kms_server("http://vault:8200")
        .with_ca_bundle("Vault_CA");
    t.spec.display_name = " ACME".into();
    t.spec.kms.transit_mount = "/v1/transit".into();
    t.spec.sync.replicas = 33;
    let errors = t.spec.validate().unwrap_err();
    let fields: Vec<String> = errors
        .errors()
        .iter()
        .map(|e| match e {
            SpecError::Malformed { field, .. }
            | SpecError::OutOfRange { field, .. }
            | SpecError::NotAllowed { field, .. } => field.clone(),
            other => panic!("unexpected {other}"),
        })
        .collect();
    assert_eq!(
        fields,
        [
            "spec.displayName",
            "spec.kms.transitMount",
            "spec.kms.caBundleSecretRef.name",
            "spec.kms.caBundleSecretRef",
            "spec.sync.replicas",
        ]
    );
    let message = errors.to_string();
    assert!(
        message.contains("spec.sync.replicas is 33, outside 0..=32"),
        "{message}"
    );
    assert!(
        message.contains(
            "spec.kms.caBundleSecretRef must not be set when spec.kms.server is not an https:// URL"
        ),
        "{message}"
    );
}

#[test]
fn tenant_validator_checks_both_auth_methods() {
    let mut t = Tenant::test("acme").with_kubernetes_auth("helpr acme", "Helpr");
    if let VaultAuth::Kubernetes(k) = &mut t.spec.kms.auth {
        k.service_account_ref.audiences = vec![String::new(); 9];
    }
    let message = t.spec.validate().unwrap_err().to_string();
    for expected in [
        "spec.kms.auth.kubernetes.role \"helpr acme\" is not a Vault role name",
        "spec.kms.auth.kubernetes.serviceAccountRef.name \"Helpr\" is not a Kubernetes object name",
        "spec.kms.auth.kubernetes.serviceAccountRef.audiences is 9 long, more than the 8 allowed",
        "spec.kms.auth.kubernetes.serviceAccountRef.audiences[0] must not be empty",
    ] {
        assert!(
            message.contains(expected),
            "missing {expected:?} in {message}"
        );
    }
    let mut t = Tenant::test("acme").with_token_auth("vault-token");
    if let VaultAuth::TokenSecretRef(s) = &mut t.spec.kms.auth {
        s.key = "a key".into();
    }
    let message = t.spec.validate().unwrap_err().to_string();
    assert!(
        message.contains("spec.kms.auth.tokenSecretRef.key \"a key\" is not a Secret key"),
        "{message}"
    );
}

#[test]
fn tenant_quantities_are_checked() {
    let mut t = Tenant::test("acme");
    t.spec.sync.resources = Some(tenant::SyncResources {
        requests: Some(tenant::ResourceAmounts {
            cpu: Some(k8s_openapi::apimachinery::pkg::api::resource::Quantity(
                "-1".into(),
            )),
            memory: None,
        }),
        limits: None,
    });
    let message = t.spec.validate().unwrap_err().to_string();
    assert!(
        message
            .starts_with("spec.sync.resources.requests.cpu \"-1\" is not a non-negative quantity"),
        "{message}"
    );
}

#[test]
fn tenant_helpers_default_the_token_audience_and_convert_resources() {
    let t = Tenant::test("acme");
    assert_eq!(t.tenant_id(), "acme");
    assert_eq!(
        t.vault_token_audiences(),
        Some(vec!["vault://helpr-test/acme".to_owned()])
    );
    assert_eq!(
        Tenant::test("acme")
            .with_token_auth("s")
            .vault_token_audiences(),
        None
    );

    let resources = tenant::SyncResources {
        requests: Some(tenant::ResourceAmounts {
            cpu: Some(k8s_openapi::apimachinery::pkg::api::resource::Quantity(
                "250m".into(),
            )),
            memory: None,
        }),
        limits: Some(tenant::ResourceAmounts::default()),
    };
    let requirements = resources.to_resource_requirements();
    assert_eq!(requirements.requests.unwrap()["cpu"].0, "250m");
    assert_eq!(
        requirements.limits, None,
        "empty amounts mean no limits, not an empty map"
    );
}

#[test]
fn inbox_validator_enforces_team_name_and_pubsub_rules() {
    let mut i = Inbox::test("support", "acme").with_team_visibility("billing");
    i.spec.team_name = None;
    assert_eq!(
        i.spec.validate().unwrap_err().into_vec(),
        [SpecError::Required {
            field: "spec.teamName".into(),
            when: "visibility is Team"
        }]
    );
    let mut i = Inbox::test("support", "acme");
    i.spec.team_name = Some("billing".into());
    assert_eq!(
        i.spec.validate().unwrap_err().into_vec(),
        [SpecError::NotAllowed {
            field: "spec.teamName".into(),
            when: "visibility is not Team"
        }]
    );
    for topic in [
        "projects/acme/topics/gmail",          // project id too short
        "projects/acme-mail/topics/goog-mail", // reserved prefix
        "projects/acme-mail/subscriptions/x1", // not a topic
        "projects/Acme-mail/topics/gmail",
    ] {
        let mut i = Inbox::test("support", "acme");
        i.spec.pub_sub.topic = topic.into();
        assert!(i.spec.validate().is_err(), "{topic}");
    }
    let mut i = Inbox::test("support", "acme").with_address("Support@Acme.example");
    i.spec.pub_sub.push_audience = "a b".into();
    let message = i.spec.validate().unwrap_err().to_string();
    assert!(
        message.contains("spec.gmailAddress is not a lowercase e-mail address"),
        "{message}"
    );
    assert!(!message.contains("Support@Acme.example"), "{message}");
    assert!(
        message.contains("spec.pubSub.pushAudience \"a b\" is not an audience without whitespace"),
        "{message}"
    );
}

#[test]
fn inbox_update_validator_rejects_changed_immutable_fields() {
    let old = Inbox::test("support", "acme");
    let mut new = old
        .clone()
        .with_address("help@acme.example")
        .with_restricted_visibility();
    new.spec.tenant_ref.name = "globex".into();
    let errors = new.spec.validate_update(&old.spec).unwrap_err();
    // The addresses are not repeated: errors reach Events, conditions and logs.
    let message = errors.to_string();
    assert!(
        !message.contains("support@example.com") && !message.contains("help@acme.example"),
        "{message}"
    );
    let errors = errors.into_vec();
    assert_eq!(
        errors,
        [
            SpecError::Immutable {
                field: "spec.tenantRef.name".into(),
                old: "acme".into(),
                new: "globex".into()
            },
            SpecError::ImmutablePersonal {
                field: "spec.gmailAddress".into(),
            },
        ]
    );
    let visibility_only = old.clone().with_restricted_visibility();
    assert!(visibility_only.spec.validate_update(&old.spec).is_ok());
}

#[test]
fn grant_validator_checks_subject_names_per_kind_and_expiry() {
    assert!(
        InboxGrant::test("g", "support", "alice@acme.example")
            .spec
            .validate()
            .is_ok()
    );
    let team = InboxGrant::test("g", "support", "x").with_team("Tier2");
    assert_eq!(team.spec.subject.kind, SubjectKind::Team);
    assert!(
        team.spec
            .validate()
            .unwrap_err()
            .to_string()
            .contains("is not a team name")
    );
    let agent = InboxGrant::test("g", "support", "alice smith");
    let message = agent.spec.validate().unwrap_err().to_string();
    assert!(message.contains("is not an agent login"), "{message}");
    assert!(!message.contains("alice smith"), "{message}");

    let expiring = InboxGrant::test("g", "support", "alice").with_expiration(time(1_000));
    assert!(!expiring.is_expired(&time(999)));
    assert!(expiring.is_expired(&time(1_000)));
    assert!(
        expiring.spec.validate().is_ok(),
        "an expired grant is valid, just Expired"
    );
    assert!(!InboxGrant::test("g", "support", "alice").is_expired(&time(i64::from(i32::MAX))));

    let old = InboxGrant::test("g", "support", "alice");
    let other = InboxGrant::test("g", "support", "bob");
    assert!(matches!(
        other.spec.validate_update(&old.spec).unwrap_err().into_vec().as_slice(),
        [SpecError::ImmutablePersonal { field }] if field == "spec.subject"
    ));
}

#[test]
fn retention_validator_checks_cron_time_zone_and_ranges() {
    let p = RetentionPolicy::test("p", "acme").with_schedule("0 25 * * *", Some("Europe/Berlin"));
    let message = p.spec.validate().unwrap_err().to_string();
    assert_eq!(
        message,
        "spec.purgeSchedule \"0 25 * * *\" is not a valid 5-field cron expression: hour has 25, outside 0-23"
    );

    let p = RetentionPolicy::test("p", "acme")
        .with_schedule("0 3 * * *", Some("Europe Berlin"))
        .with_grace_period_days(-1)
        .with_delete_after_days(Some(0));
    let message = p.spec.validate().unwrap_err().to_string();
    for expected in [
        "spec.gracePeriodDays is -1, outside 0..=3650",
        "spec.timeZone \"Europe Berlin\" is not an IANA time zone name",
        "spec.deleteAfterDays is 0, outside 1..=36500",
    ] {
        assert!(
            message.contains(expected),
            "missing {expected:?} in {message}"
        );
    }
    let ok = RetentionPolicy::test("p", "acme")
        .with_schedule("30 2 * * MON-FRI", Some("America/New_York"));
    assert!(ok.spec.validate().is_ok());
    assert_eq!(ok.spec.time_zone_or_default(), "America/New_York");
    assert!(ok.spec.schedule().unwrap().matches(
        k8s_openapi::jiff::civil::date(2026, 3, 2).at(2, 30, 0, 0) // a Monday
    ));
}

#[test]
fn cron_pattern_agrees_with_the_parser_on_shape() {
    let re = Regex::new(helpr_crds::cron::CRON_PATTERN).unwrap();
    for good in ["0 3 * * *", "*/5 0-6 1,15 JAN-MAR mon-fri"] {
        assert!(
            re.is_match(good) && helpr_crds::cron::CronSchedule::parse(good).is_ok(),
            "{good}"
        );
    }
    for bad in [
        "0 3 * *",
        "0  3 * * *",
        "@daily",
        "0 3 * * * *",
        " 0 3 * * *",
    ] {
        assert!(
            !re.is_match(bad) && helpr_crds::cron::CronSchedule::parse(bad).is_err(),
            "{bad}"
        );
    }
}

#[test]
fn schema_rejects_what_the_validators_reject_in_whole_objects() {
    // The OpenAPI layer (patterns, enums, bounds) on full objects, as the apiserver applies it.
    let mut inbox = serde_json::to_value(Inbox::test("support", "acme")).unwrap();
    inbox["spec"]["gmailAddress"] = "Support@acme.example".into();
    inbox["spec"]["visibility"] = "Everyone".into();
    let errors = support::openapi_errors(&support::schema_of("Inbox"), &inbox);
    assert!(
        errors.iter().any(|e| e.starts_with(".spec.gmailAddress: ")),
        "{errors:?}"
    );
    assert!(
        errors.iter().any(|e| e.starts_with(".spec.visibility: ")),
        "{errors:?}"
    );

    let mut policy = serde_json::to_value(RetentionPolicy::test("p", "acme")).unwrap();
    policy["spec"]["gracePeriodDays"] = 4000.into();
    policy["spec"]["purgeSchedule"] = "@daily".into();
    let errors = support::openapi_errors(&support::schema_of("RetentionPolicy"), &policy);
    assert!(
        errors
            .iter()
            .any(|e| e.starts_with(".spec.gracePeriodDays: 4000 is more than 3650")),
        "{errors:?}"
    );
    assert!(
        errors
            .iter()
            .any(|e| e.starts_with(".spec.purgeSchedule: \"@daily\" does not match")),
        "{errors:?}"
    );

    let mut tenant = serde_json::to_value(Tenant::test("acme")).unwrap();
    tenant["spec"]["kms"]["auth"]["tokenSecretRef"] = serde_json::json!({"name": "t"});
    let errors = support::openapi_errors(&support::schema_of("Tenant"), &tenant);
    assert!(errors.iter().any(|e| e.contains("oneOf")), "{errors:?}");

    let mut grant = serde_json::to_value(InboxGrant::test("g", "support", "alice")).unwrap();
    grant["spec"]["expirationTime"] = "next tuesday".into();
    let errors = support::openapi_errors(&support::schema_of("InboxGrant"), &grant);
    assert!(errors.iter().any(|e| e.contains("RFC 3339")), "{errors:?}");
}
