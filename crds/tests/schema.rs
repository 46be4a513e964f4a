//! The generated CRDs: structural schemas with bounds on every value and a description on every
//! field, the intended names, printer columns, selectable fields and CEL rules.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use helpr_crds::{CATEGORY, HelprResource, Inbox, InboxGrant, RetentionPolicy, Tenant, all_crds};
use serde_json::Value;

/// Walks a schema node and records every rule it breaks.
fn walk(node: &Value, path: &str, problems: &mut Vec<String>) {
    let obj = node
        .as_object()
        .unwrap_or_else(|| panic!("{path}: schema is not an object"));
    for forbidden in ["$ref", "allOf", "anyOf", "not", "definitions", "$schema"] {
        if obj.contains_key(forbidden) {
            problems.push(format!("{path}: has {forbidden} (not structural)"));
        }
    }
    if let Some(one_of) = obj.get("oneOf") {
        for branch in one_of.as_array().unwrap() {
            let keys: Vec<_> = branch.as_object().unwrap().keys().collect();
            if keys != ["required"] {
                problems.push(format!(
                    "{path}: oneOf branch with {keys:?}; only `required` is structural"
                ));
            }
        }
    }
    let int_or_string = obj.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true));
    let ty = obj.get("type").and_then(Value::as_str);
    match (ty, int_or_string) {
        (None, true) => {
            if !obj.contains_key("maxLength") || !obj.contains_key("pattern") {
                problems.push(format!(
                    "{path}: int-or-string without maxLength and pattern"
                ));
            }
        }
        (Some(_), true) => problems.push(format!("{path}: int-or-string must not have a type")),
        (None, false) => problems.push(format!("{path}: no type")),
        (Some("string"), _) => {
            let bounded = obj.contains_key("maxLength")
                || obj.contains_key("enum")
                || obj.get("format").and_then(Value::as_str) == Some("date-time");
            if !bounded {
                problems.push(format!(
                    "{path}: string without maxLength, enum or date-time format"
                ));
            }
        }
        (Some("integer" | "number"), _) => {
            if !obj.contains_key("minimum") || !obj.contains_key("maximum") {
                problems.push(format!("{path}: number without minimum and maximum"));
            }
        }
        (Some("boolean"), _) => {}
        (Some("array"), _) => {
            if !obj.contains_key("maxItems") {
                problems.push(format!("{path}: list without maxItems"));
            }
            match obj.get("items") {
                Some(items) => walk(items, &format!("{path}[]"), problems),
                None => problems.push(format!("{path}: list without items")),
            }
        }
        (Some("object"), _) => {
            if obj.contains_key("additionalProperties") {
                problems.push(format!(
                    "{path}: map (additionalProperties) instead of a struct"
                ));
            }
            let required: Vec<&str> = obj
                .get("required")
                .and_then(Value::as_array)
                .map(|r| r.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            let properties = obj.get("properties").and_then(Value::as_object);
            for name in &required {
                if !properties.is_some_and(|p| p.contains_key(*name)) {
                    problems.push(format!("{path}: requires unknown property {name}"));
                }
            }
            for (name, property) in properties.into_iter().flatten() {
                let child = format!("{path}.{name}");
                let description = property
                    .get("description")
                    .and_then(Value::as_str)
                    .unwrap_or("");
                if description.trim().len() < 10 {
                    problems.push(format!(
                        "{child}: undocumented (kubectl explain shows nothing)"
                    ));
                }
                if property.get("default").is_some() && required.contains(&name.as_str()) {
                    problems.push(format!("{child}: default on a required field"));
                }
                walk(property, &child, problems);
            }
        }
        (Some(other), _) => problems.push(format!("{path}: unexpected type {other}")),
    }
}

#[test]
fn every_schema_is_structural_bounded_and_documented() {
    for kind in support::KINDS {
        let schema = support::schema_of(kind);
        let mut problems = Vec::new();
        walk(&schema, kind, &mut problems);
        assert!(problems.is_empty(), "{kind}:\n{}", problems.join("\n"));
        assert!(
            schema["description"]
                .as_str()
                .is_some_and(|d| !d.starts_with("Auto-generated")),
            "{kind} has no description of its own"
        );
    }
}

#[test]
fn the_walker_catches_unbounded_and_undocumented_fields() {
    // The test above is only as good as its walker: feed it a schema with each mistake.
    let bad = serde_json::json!({
        "type": "object",
        "properties": {
            "s": {"type": "string", "description": "a string without a bound"},
            "l": {"type": "array", "description": "a list without a bound", "items": {"type": "boolean"}},
            "n": {"type": "integer", "description": "a number without a bound"},
            "u": {"type": "boolean"},
            "a": {"anyOf": [{"type": "string"}], "description": "an anyOf without a type"},
        }
    });
    let mut problems = Vec::new();
    walk(&bad, "Bad", &mut problems);
    let joined = problems.join("\n");
    for expected in [
        "Bad.s: string without maxLength",
        "Bad.l: list without maxItems",
        "Bad.n: number without minimum",
        "Bad.u: undocumented",
        "Bad.a: has anyOf",
        "Bad.a: no type",
    ] {
        assert!(
            joined.contains(expected),
            "missing {expected:?} in\n{joined}"
        );
    }
}

#[test]
fn names_short_names_and_categories_are_product_prefixed() {
    let expected = [
        ("Tenant", "tenants", "tenant", "hvtenant"),
        ("Inbox", "inboxes", "inbox", "hvinbox"),
        ("InboxGrant", "inboxgrants", "inboxgrant", "hvgrant"),
        (
            "RetentionPolicy",
            "retentionpolicies",
            "retentionpolicy",
            "hvretention",
        ),
    ];
    let crds = all_crds();
    assert_eq!(crds.len(), expected.len());
    for (crd, (kind, plural, singular, short)) in crds.iter().zip(expected) {
        assert_eq!(
            crd.metadata.name.as_deref(),
            Some(format!("{plural}.mail.helpr.dev").as_str())
        );
        assert_eq!(crd.spec.group, helpr_crds::API_GROUP);
        assert_eq!(crd.spec.scope, "Namespaced");
        let names = &crd.spec.names;
        assert_eq!(names.kind, kind);
        assert_eq!(names.plural, plural);
        assert_eq!(names.singular.as_deref(), Some(singular));
        assert_eq!(
            names.short_names.as_deref(),
            Some([short.to_owned()].as_slice())
        );
        assert_eq!(
            names.categories.as_deref(),
            Some([CATEGORY.to_owned()].as_slice()),
            "{kind}: not in `all`"
        );
        assert_eq!(crd.spec.versions.len(), 1);
        let version = &crd.spec.versions[0];
        assert_eq!(version.name, helpr_crds::API_VERSION);
        assert!(version.served && version.storage);
        assert!(
            version
                .subresources
                .as_ref()
                .and_then(|s| s.status.as_ref())
                .is_some(),
            "{kind} has no status subresource"
        );
    }
}

/// (name, jsonPath, priority, type) of every printer column of `kind`.
fn columns(kind: &str) -> Vec<(String, String, i32, String)> {
    let crd = all_crds()
        .into_iter()
        .find(|c| c.spec.names.kind == kind)
        .unwrap();
    crd.spec.versions[0]
        .additional_printer_columns
        .clone()
        .unwrap_or_default()
        .into_iter()
        .map(|c| (c.name, c.json_path, c.priority.unwrap_or(0), c.type_))
        .collect()
}

const READY: &str = r#".status.conditions[?(@.type=="Ready")].status"#;
const READY_REASON: &str = r#".status.conditions[?(@.type=="Ready")].reason"#;
const AGE: &str = ".metadata.creationTimestamp";

fn assert_columns(kind: &str, expected: &[(&str, &str, i32, &str)]) {
    let actual = columns(kind);
    let expected: Vec<_> = expected
        .iter()
        .map(|(n, p, prio, t)| (n.to_string(), p.to_string(), *prio, t.to_string()))
        .collect();
    assert_eq!(actual, expected, "{kind} printer columns");
}

#[test]
fn inbox_grant_columns_show_inbox_subject_role_ready_age_with_details_wide() {
    assert_columns(
        "InboxGrant",
        &[
            ("Inbox", ".spec.inboxRef.name", 0, "string"),
            ("Kind", ".spec.subject.kind", 0, "string"),
            ("Subject", ".spec.subject.name", 0, "string"),
            ("Role", ".spec.role", 0, "string"),
            ("Ready", READY, 0, "string"),
            ("Status", READY_REASON, 1, "string"),
            ("Expires", ".spec.expirationTime", 1, "date"),
            ("Age", AGE, 0, "date"),
        ],
    );
}

#[test]
fn tenant_inbox_and_policy_columns_answer_the_first_question() {
    assert_columns(
        "Tenant",
        &[
            ("Display Name", ".spec.displayName", 0, "string"),
            ("Deletion", ".spec.deletionPolicy", 0, "string"),
            ("Ready", READY, 0, "string"),
            ("Status", READY_REASON, 1, "string"),
            ("KMS", ".spec.kms.server", 1, "string"),
            ("Search", ".spec.search.mode", 1, "string"),
            ("Replicas", ".spec.sync.replicas", 1, "integer"),
            ("Age", AGE, 0, "date"),
        ],
    );
    assert_columns(
        "Inbox",
        &[
            ("Address", ".spec.gmailAddress", 0, "string"),
            ("Tenant", ".spec.tenantRef.name", 0, "string"),
            ("Visibility", ".spec.visibility", 0, "string"),
            (
                "Connection",
                r#".status.conditions[?(@.type=="Connected")].reason"#,
                0,
                "string",
            ),
            ("Ready", READY, 0, "string"),
            ("Status", READY_REASON, 1, "string"),
            ("Team", ".spec.teamName", 1, "string"),
            ("Last Sync", ".status.lastSyncTime", 1, "date"),
            ("Watch Expires", ".status.watchExpirationTime", 1, "date"),
            ("Age", AGE, 0, "date"),
        ],
    );
    assert_columns(
        "RetentionPolicy",
        &[
            ("Tenant", ".spec.tenantRef.name", 0, "string"),
            ("Schedule", ".spec.purgeSchedule", 0, "string"),
            ("Legal Hold", ".spec.legalHold", 0, "boolean"),
            ("Ready", READY, 0, "string"),
            ("Status", READY_REASON, 1, "string"),
            ("Grace Days", ".spec.gracePeriodDays", 1, "integer"),
            ("Delete After", ".spec.deleteAfterDays", 1, "integer"),
            ("Last Purge", ".status.lastPurgeTime", 1, "date"),
            ("Next Purge", ".status.nextPurgeTime", 1, "date"),
            ("Age", AGE, 0, "date"),
        ],
    );
}

/// Resolves a printer column's or selectable field's JSON path (without filters) in `schema`.
fn resolve<'a>(schema: &'a Value, path: &str) -> Option<&'a Value> {
    let plain = path.split('[').next().unwrap_or(path);
    plain
        .trim_start_matches('.')
        .split('.')
        .try_fold(schema, |node, segment| {
            let node = if node["type"] == "array" {
                &node["items"]
            } else {
                node
            };
            node.get("properties")?.get(segment)
        })
}

#[test]
fn every_column_and_selectable_field_points_at_a_schema_field() {
    for crd in all_crds() {
        let kind = &crd.spec.names.kind;
        let schema = support::schema_of(kind);
        let version = &crd.spec.versions[0];
        for column in version.additional_printer_columns.iter().flatten() {
            if column.json_path.starts_with(".metadata.") {
                continue;
            }
            assert!(
                resolve(&schema, &column.json_path).is_some(),
                "{kind}: column {}",
                column.name
            );
        }
        for field in version.selectable_fields.iter().flatten() {
            let target = resolve(&schema, &field.json_path)
                .unwrap_or_else(|| panic!("{kind}: selectable {}", field.json_path));
            assert_eq!(
                target["type"], "string",
                "{kind}: selectable fields must be scalars"
            );
        }
    }
}

#[test]
fn selectable_fields_allow_listing_by_reference() {
    let selectable = |kind: &str| -> Vec<String> {
        let crd = all_crds()
            .into_iter()
            .find(|c| c.spec.names.kind == kind)
            .unwrap();
        crd.spec.versions[0]
            .selectable_fields
            .clone()
            .unwrap_or_default()
            .into_iter()
            .map(|f| f.json_path)
            .collect()
    };
    assert_eq!(
        selectable("Inbox"),
        [".spec.tenantRef.name", ".spec.gmailAddress"]
    );
    assert_eq!(
        selectable("InboxGrant"),
        [
            ".spec.inboxRef.name",
            ".spec.subject.kind",
            ".spec.subject.name"
        ]
    );
    assert_eq!(selectable("RetentionPolicy"), [".spec.tenantRef.name"]);
}

/// Every CEL rule of `schema` as (path, rule).
fn rules(node: &Value, path: &str, out: &mut Vec<(String, String)>) {
    for v in node
        .get("x-kubernetes-validations")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        out.push((path.to_owned(), v["rule"].as_str().unwrap().to_owned()));
        assert!(
            v["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{path}: rule without message"
        );
    }
    for (name, child) in node
        .get("properties")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
    {
        rules(child, &format!("{path}.{name}"), out);
    }
    if let Some(items) = node.get("items") {
        rules(items, &format!("{path}[]"), out);
    }
}

#[test]
fn cel_rules_guard_immutable_references_and_required_combinations() {
    let expected: [(&str, &str, &str); 10] = [
        ("Tenant", "", "self.metadata.name.size() <= 63"),
        (
            "Tenant",
            ".spec.kms",
            "(has(self.auth.kubernetes) ? 1 : 0) + (has(self.auth.tokenSecretRef) ? 1 : 0) == 1",
        ),
        (
            "Tenant",
            ".spec.kms",
            "!has(self.caBundleSecretRef) || self.server.startsWith('https://')",
        ),
        ("Inbox", ".spec.tenantRef", "self == oldSelf"),
        ("Inbox", ".spec.gmailAddress", "self == oldSelf"),
        (
            "Inbox",
            ".spec",
            "self.visibility != 'Team' || has(self.teamName)",
        ),
        (
            "Inbox",
            ".spec",
            "self.visibility == 'Team' || !has(self.teamName)",
        ),
        ("InboxGrant", ".spec.inboxRef", "self == oldSelf"),
        ("InboxGrant", ".spec.subject", "self == oldSelf"),
        ("RetentionPolicy", ".spec.tenantRef", "self == oldSelf"),
    ];
    for (kind, path, rule) in expected {
        let mut found = Vec::new();
        rules(&support::schema_of(kind), "", &mut found);
        assert!(
            found.iter().any(|(p, r)| p == path && r.starts_with(rule)),
            "{kind}: no rule {rule:?} at {path:?}; found {found:#?}"
        );
    }
}

#[test]
fn finalizers_are_domain_qualified_per_kind() {
    assert_eq!(Tenant::finalizer(), "tenant.mail.helpr.dev/cleanup");
    assert_eq!(Inbox::finalizer(), "inbox.mail.helpr.dev/cleanup");
    assert_eq!(InboxGrant::finalizer(), "inboxgrant.mail.helpr.dev/cleanup");
    assert_eq!(
        RetentionPolicy::finalizer(),
        "retentionpolicy.mail.helpr.dev/cleanup"
    );
}

#[test]
fn status_has_observed_generation_and_map_keyed_conditions_but_no_phase() {
    for kind in support::KINDS {
        let status = &support::schema_of(kind)["properties"]["status"]["properties"];
        assert!(status.get("phase").is_none(), "{kind} has a phase");
        assert_eq!(status["observedGeneration"]["type"], "integer", "{kind}");
        let conditions = &status["conditions"];
        assert_eq!(conditions["x-kubernetes-list-type"], "map", "{kind}");
        assert_eq!(
            conditions["x-kubernetes-list-map-keys"],
            serde_json::json!(["type"]),
            "{kind}"
        );
        let condition = &conditions["items"]["properties"];
        for field in [
            "type",
            "status",
            "observedGeneration",
            "lastTransitionTime",
            "reason",
            "message",
        ] {
            assert!(
                condition.get(field).is_some(),
                "{kind}: condition lacks {field}"
            );
        }
    }
}
