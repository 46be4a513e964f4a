//! Helpers shared by the integration tests: the generated schemas as JSON, an OpenAPI value
//! validator for the subset of keywords the CRDs use, CEL evaluation, and the examples.
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use std::path::{Path, PathBuf};

use helpr_crds::all_crds;
use serde_json::Value;

/// The `openAPIV3Schema` of the CRD of `kind`, as JSON.
pub fn schema_of(kind: &str) -> Value {
    let crd = all_crds()
        .into_iter()
        .find(|crd| crd.spec.names.kind == kind)
        .unwrap_or_else(|| panic!("no crd of kind {kind}"));
    let schema = crd.spec.versions[0]
        .schema
        .as_ref()
        .and_then(|s| s.open_api_v3_schema.as_ref())
        .expect("crd has a schema");
    serde_json::to_value(schema).unwrap()
}

/// Every kind.
pub const KINDS: [&str; 4] = ["Tenant", "Inbox", "InboxGrant", "RetentionPolicy"];

/// Validates `value` against `schema` the way the apiserver's OpenAPI validation does, for the
/// keywords the helpr CRDs use (type, properties, required, enum, nullable, min/maxLength,
/// pattern, maxItems, minimum/maximum, oneOf of `required`, int-or-string). Returns every
/// violation as "path: problem".
pub fn openapi_errors(schema: &Value, value: &Value) -> Vec<String> {
    let mut errors = Vec::new();
    check(schema, value, "", &mut errors);
    errors
}

fn check(schema: &Value, value: &Value, path: &str, errors: &mut Vec<String>) {
    if value.is_null() {
        if schema.get("nullable") != Some(&Value::Bool(true)) {
            errors.push(format!("{path}: null is not allowed"));
        }
        return;
    }
    if let Some(values) = schema.get("enum").and_then(Value::as_array)
        && !values.contains(value)
    {
        errors.push(format!("{path}: {value} is not one of {values:?}"));
    }
    let int_or_string = schema.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true));
    let type_ok = match (schema.get("type").and_then(Value::as_str), value) {
        (None, _) if int_or_string => value.is_string() || value.is_i64() || value.is_u64(),
        (None, _) => true,
        (Some("object"), Value::Object(_)) | (Some("array"), Value::Array(_)) => true,
        (Some("string"), Value::String(_)) | (Some("boolean"), Value::Bool(_)) => true,
        (Some("integer"), v) => v.is_i64() || v.is_u64(),
        (Some("number"), v) => v.is_number(),
        _ => false,
    };
    if !type_ok {
        errors.push(format!("{path}: {value} has the wrong type"));
        return;
    }
    match value {
        Value::String(s) => {
            let len = s.chars().count() as u64;
            if let Some(max) = schema.get("maxLength").and_then(Value::as_u64)
                && len > max
            {
                errors.push(format!("{path}: longer than {max}"));
            }
            if let Some(min) = schema.get("minLength").and_then(Value::as_u64)
                && len < min
            {
                errors.push(format!("{path}: shorter than {min}"));
            }
            if let Some(pattern) = schema.get("pattern").and_then(Value::as_str)
                && !regex::Regex::new(pattern).unwrap().is_match(s)
            {
                errors.push(format!("{path}: {s:?} does not match {pattern}"));
            }
            if schema.get("format").and_then(Value::as_str) == Some("date-time")
                && s.parse::<k8s_openapi::jiff::Timestamp>().is_err()
            {
                errors.push(format!("{path}: {s:?} is not an RFC 3339 date-time"));
            }
        }
        Value::Number(n) => {
            let n = n.as_f64().unwrap();
            if let Some(max) = schema.get("maximum").and_then(Value::as_f64)
                && n > max
            {
                errors.push(format!("{path}: {n} is more than {max}"));
            }
            if let Some(min) = schema.get("minimum").and_then(Value::as_f64)
                && n < min
            {
                errors.push(format!("{path}: {n} is less than {min}"));
            }
        }
        Value::Array(items) => {
            if let Some(max) = schema.get("maxItems").and_then(Value::as_u64)
                && items.len() as u64 > max
            {
                errors.push(format!("{path}: more than {max} items"));
            }
            if let Some(item_schema) = schema.get("items") {
                for (i, item) in items.iter().enumerate() {
                    check(item_schema, item, &format!("{path}[{i}]"), errors);
                }
            }
        }
        Value::Object(map) => {
            let properties = schema.get("properties").and_then(Value::as_object);
            if let Some(required) = schema.get("required").and_then(Value::as_array) {
                for name in required.iter().filter_map(Value::as_str) {
                    if !map.contains_key(name) {
                        errors.push(format!("{path}.{name}: required"));
                    }
                }
            }
            if let Some(one_of) = schema.get("oneOf").and_then(Value::as_array) {
                let matching = one_of
                    .iter()
                    .filter(|branch| {
                        branch["required"].as_array().is_some_and(|r| {
                            r.iter().all(|n| map.contains_key(n.as_str().unwrap()))
                        })
                    })
                    .count();
                if matching != 1 {
                    errors.push(format!(
                        "{path}: matches {matching} of the oneOf branches, not 1"
                    ));
                }
            }
            let preserve =
                schema.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true));
            for (name, field) in map {
                let field_path = format!("{path}.{name}");
                match properties.and_then(|p| p.get(name)) {
                    Some(field_schema) => check(field_schema, field, &field_path, errors),
                    // metadata is validated by the apiserver itself.
                    None if path.is_empty()
                        && ["apiVersion", "kind", "metadata"].contains(&name.as_str()) => {}
                    None if preserve => {}
                    None => errors.push(format!("{field_path}: unknown field")),
                }
            }
        }
        _ => {}
    }
}

/// Evaluates the CEL rules of the CRD of `kind` against `object` (and `old` for an update).
/// Returns every failed rule's message.
pub fn cel_errors(kind: &str, object: &Value, old: Option<&Value>) -> Vec<String> {
    match kube_cel::validate(&schema_of(kind), object, old) {
        Ok(()) => Vec::new(),
        Err(errors) => errors
            .iter()
            .map(|e| format!("{}: {} ({:?})", e.field_path, e.message, e.kind))
            .collect(),
    }
}

/// The examples directory of the workspace.
pub fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples")
}

/// Every document of every `examples/*.yaml`, with its file name.
pub fn example_documents() -> Vec<(String, Value)> {
    let mut docs = Vec::new();
    for path in helpr_crds::manifests::yaml_files(&examples_dir()).unwrap() {
        let text = std::fs::read_to_string(&path).unwrap();
        let file = path.file_name().unwrap().to_string_lossy().into_owned();
        for de in serde_norway::Deserializer::from_str(&text) {
            let value: Value = serde::Deserialize::deserialize(de)
                .unwrap_or_else(|e| panic!("{file}: not yaml: {e}"));
            if !value.is_null() {
                docs.push((file.clone(), value));
            }
        }
    }
    docs
}
