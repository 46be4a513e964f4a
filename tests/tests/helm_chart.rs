//! The Helm chart (charts/helpr) rendered and linted by Helm's own engine (helm-python-sdk,
//! Helm's Go SDK in a wheel, through tests/helm/render.py) for the default values and for
//! charts/helpr/ci/production-values.yaml. Every rendered document is parsed, and the
//! invariants a platform team relies on are checked: restricted Pod Security, resources and
//! probes, labels and selectors, exact operator RBAC without wildcards, the NetworkPolicy
//! model, the CRD upgrade hook, PDBs, the ServiceMonitor and the closed values schema.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

const RELEASE: &str = "helpr";
const NAMESPACE: &str = "helpr";
const PRODUCTION: &str = "ci/production-values.yaml";

/// Every permission the operator needs, and nothing more: (API group, resources, verbs).
/// The chart's RBAC must grant exactly this set; drift either way fails
/// `operator_rbac_grants_exactly_what_it_does`.
const OPERATOR_RBAC: &[(&str, &[&str], &[&str])] = &[
    (
        "mail.helpr.dev",
        &["tenants", "inboxes", "inboxgrants", "retentionpolicies"],
        &["get", "list", "watch", "patch", "update"],
    ),
    (
        "mail.helpr.dev",
        &[
            "tenants/status",
            "inboxes/status",
            "inboxgrants/status",
            "retentionpolicies/status",
        ],
        &["get", "patch", "update"],
    ),
    (
        "mail.helpr.dev",
        &[
            "tenants/finalizers",
            "inboxes/finalizers",
            "inboxgrants/finalizers",
            "retentionpolicies/finalizers",
        ],
        &["update"],
    ),
    ("events.k8s.io", &["events"], &["create", "patch"]),
    ("", &["events"], &["create", "patch"]),
    (
        "coordination.k8s.io",
        &["leases"],
        &["get", "create", "update", "patch"],
    ),
    // Per-tenant children: server-side apply (patch; create on the first apply) and the owned
    // watches; only a Retain tenant's sync Deployment is deleted by the operator.
    (
        "",
        &["serviceaccounts"],
        &["list", "watch", "create", "patch"],
    ),
    ("", &["serviceaccounts/token"], &["create"]),
    (
        "apps",
        &["deployments"],
        &["list", "watch", "create", "patch", "delete"],
    ),
    (
        "networking.k8s.io",
        &["networkpolicies"],
        &["list", "watch", "create", "patch"],
    ),
    // RetentionPolicy purge CronJobs: server-side apply (patch; create on the first apply)
    // and the owned watch; deleted with their policy by owner reference, never by the operator.
    (
        "batch",
        &["cronjobs"],
        &["list", "watch", "create", "patch"],
    ),
    ("", &["secrets"], &["get", "create", "patch"]),
    (
        "apiextensions.k8s.io",
        &["customresourcedefinitions"],
        &["get", "list", "watch"],
    ),
];

/// The namespaced part of the table that must be bound in the release namespace only.
const LEADER_ELECTION: (&str, &str) = ("coordination.k8s.io", "leases");

const CRD_NAMES: &[&str] = &[
    "tenants.mail.helpr.dev",
    "inboxes.mail.helpr.dev",
    "inboxgrants.mail.helpr.dev",
    "retentionpolicies.mail.helpr.dev",
];

// ---------------------------------------------------------------------------------------------
// Rendering through Helm

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn chart_dir() -> PathBuf {
    repo_root().join("charts/helpr")
}

/// Runs tests/helm/render.py; Ok(json) on success, Err(message) when Helm refused.
fn helper(command: &str, values: &[&str], set_json: &[&str]) -> Result<Value, String> {
    let mut cmd = Command::new("python3");
    cmd.arg(repo_root().join("tests/helm/render.py"))
        .arg(command)
        .arg(chart_dir())
        .args(["--name", RELEASE, "--namespace", NAMESPACE]);
    for file in values {
        cmd.arg("--values").arg(chart_dir().join(file));
    }
    for expr in set_json {
        cmd.arg("--set-json").arg(expr);
    }
    let out = cmd
        .output()
        .expect("python3 must be installed to render the Helm chart");
    let stderr = String::from_utf8_lossy(&out.stderr);
    match out.status.code() {
        Some(0) => Ok(serde_json::from_slice(&out.stdout).expect("render.py prints JSON")),
        Some(2) => {
            let v: Value = serde_json::from_slice(&out.stdout).expect("render.py prints JSON");
            Err(v["error"]["message"]
                .as_str()
                .unwrap_or_default()
                .to_owned())
        }
        Some(3) => panic!(
            "helm-python-sdk is missing, so the chart cannot be rendered: {stderr}\
             install it with: python3 -m pip install 'helm-python-sdk==0.2.2'"
        ),
        code => panic!("render.py failed ({code:?}): {stderr}"),
    }
}

struct Rendered {
    objects: Vec<Value>,
    templates: Vec<String>,
    crds: Vec<Value>,
    notes: String,
}

impl Rendered {
    fn of_kind(&self, kind: &str) -> Vec<&Value> {
        self.objects.iter().filter(|o| o["kind"] == kind).collect()
    }

    fn get(&self, kind: &str, name: &str) -> &Value {
        self.objects
            .iter()
            .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("no {kind} {name} rendered"))
    }

    fn find(&self, kind: &str, name: &str) -> Option<&Value> {
        self.objects
            .iter()
            .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
    }

    /// (object, pod template spec) of every workload.
    fn pods(&self) -> Vec<(&Value, &Value)> {
        self.objects
            .iter()
            .filter_map(|o| match o["kind"].as_str()? {
                "Deployment" | "StatefulSet" | "DaemonSet" | "Job" => {
                    Some((o, &o["spec"]["template"]))
                }
                "CronJob" => Some((o, &o["spec"]["jobTemplate"]["spec"]["template"])),
                _ => None,
            })
            .collect()
    }

    fn helpr_toml(&self) -> String {
        self.get("ConfigMap", "helpr-config")["data"]["helpr.toml"]
            .as_str()
            .unwrap()
            .to_owned()
    }
}

fn render_with(values: &[&str], set_json: &[&str]) -> Result<Rendered, String> {
    let v = helper("template", values, set_json)?;
    let manifests = v["manifests"].as_array().unwrap();
    assert!(!manifests.is_empty(), "the chart rendered nothing");
    Ok(Rendered {
        objects: manifests.iter().map(|m| m["object"].clone()).collect(),
        templates: manifests
            .iter()
            .map(|m| m["template"].as_str().unwrap().to_owned())
            .collect(),
        crds: v["crds"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["object"].clone())
            .collect(),
        notes: v["notes"].as_str().unwrap_or_default().to_owned(),
    })
}

fn render_default() -> Rendered {
    render_with(&[], &[]).expect("the default values render")
}

fn render_production() -> Rendered {
    render_with(&[PRODUCTION], &[]).expect("the production values render")
}

fn both() -> [(&'static str, Rendered); 2] {
    [
        ("default", render_default()),
        ("production", render_production()),
    ]
}

fn name(o: &Value) -> String {
    format!(
        "{} {}",
        o["kind"].as_str().unwrap_or("?"),
        o["metadata"]["name"].as_str().unwrap_or("?")
    )
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .map(|s| s.as_str().unwrap_or_default().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

fn labels(v: &Value) -> BTreeMap<String, String> {
    v.as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                .collect()
        })
        .unwrap_or_default()
}

fn selects(selector: &BTreeMap<String, String>, pod_labels: &BTreeMap<String, String>) -> bool {
    selector.iter().all(|(k, v)| pod_labels.get(k) == Some(v))
}

fn container_env<'a>(container: &'a Value, var: &str) -> Option<&'a Value> {
    container["env"]
        .as_array()?
        .iter()
        .find(|e| e["name"] == var)
}

fn containers(pod: &Value) -> Vec<&Value> {
    let spec = &pod["spec"];
    ["initContainers", "containers"]
        .iter()
        .filter_map(|k| spec[*k].as_array())
        .flatten()
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Lint and schema

#[test]
fn chart_lints_clean_with_default_and_production_values() {
    for values in [&[][..], &[PRODUCTION][..]] {
        let report = helper("lint", values, &[]).expect("lint runs");
        assert_eq!(report["total_charts_linted"], 1, "{report}");
        assert_eq!(
            report["errors"].as_array().unwrap().len(),
            0,
            "lint errors with {values:?}: {report}"
        );
        let serious: Vec<_> = report["messages"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| m["severity"].as_i64().unwrap_or(3) >= 2)
            .collect();
        assert!(serious.is_empty(), "lint warnings/errors: {serious:?}");
    }
}

#[test]
fn a_values_typo_fails_rendering_and_lint() {
    let err = render_with(&[], &[r#"ingest={"replcas":3}"#])
        .err()
        .expect("a typo in a top-level section must fail rendering");
    assert!(err.contains("replcas"), "{err}");

    let err = render_with(
        &[],
        &[r#"networkPolicy={"api":{"allowedNamespace":["x"]}}"#],
    )
    .err()
    .expect("a typo deep inside networkPolicy must fail rendering");
    assert!(err.contains("allowedNamespace"), "{err}");

    let err = render_with(&[], &[r#"operatr={"replicas":2}"#])
        .err()
        .expect("an unknown top-level key must fail rendering");
    assert!(err.contains("operatr"), "{err}");

    let report = helper("lint", &[], &[r#"search={"bakend":"tantivy"}"#]).unwrap();
    let errors = report["errors"].as_array().unwrap();
    assert!(
        errors
            .iter()
            .any(|e| e.as_str().unwrap().contains("bakend")),
        "lint must report the typo: {report}"
    );
}

#[test]
fn a_bad_enum_value_fails_rendering() {
    let err = render_with(&[], &[r#"search={"backend":"elasticsearch"}"#])
        .err()
        .expect("an unknown search backend must fail rendering");
    assert!(err.contains("backend"), "{err}");

    let err = render_with(&[], &[r#"kms={"vault":{"auth":{"method":"approle"}}}"#])
        .err()
        .expect("an unknown KMS auth method must fail rendering");
    assert!(err.contains("method"), "{err}");

    let err = render_with(&[], &[r#"image={"pullPolicy":"Sometimes"}"#])
        .err()
        .expect("an unknown pull policy must fail rendering");
    assert!(err.contains("pullPolicy"), "{err}");
}

/// Every object level of values.schema.json is closed: `additionalProperties: false` where
/// properties are listed, a value schema for maps (labels, annotations, nodeSelector); the
/// only open objects are the three affinity kinds, which are Kubernetes types passed through.
#[test]
fn values_schema_closes_every_object_level() {
    let text = std::fs::read_to_string(chart_dir().join("values.schema.json")).unwrap();
    let schema: Value = serde_json::from_str(&text).unwrap();
    let passthrough: BTreeSet<&str> = [
        "/definitions/affinity/properties/nodeAffinity",
        "/definitions/affinity/properties/podAffinity",
        "/definitions/affinity/properties/podAntiAffinity",
    ]
    .into();
    let mut open = Vec::new();
    let mut closed = 0;
    walk_schema(&schema, String::new(), &mut |ptr, node| {
        let is_object = node["type"] == "object" || node.get("properties").is_some();
        if !is_object {
            return;
        }
        if node.get("properties").is_some() {
            if node["additionalProperties"] == Value::Bool(false) {
                closed += 1;
            } else {
                open.push(ptr.to_owned());
            }
        } else if node["additionalProperties"].is_object() {
            // a map: every value checked by its schema
        } else if !passthrough.contains(ptr) {
            open.push(ptr.to_owned());
        }
    });
    assert!(
        open.is_empty(),
        "open object levels in the schema: {open:?}"
    );
    assert!(closed > 40, "only {closed} closed objects found");

    // And every key of values.yaml is described by the schema (the defaults validate too, as
    // the default render proves, but a key the schema lacks would be rejected, not ignored).
    assert!(render_with(&[], &[]).is_ok());
}

fn walk_schema(node: &Value, ptr: String, f: &mut dyn FnMut(&str, &Value)) {
    f(&ptr, node);
    if let Some(map) = node.as_object() {
        for (k, v) in map {
            if v.is_object() || v.is_array() {
                walk_schema(v, format!("{ptr}/{k}"), f);
            }
        }
    } else if let Some(items) = node.as_array() {
        for (i, v) in items.iter().enumerate() {
            walk_schema(v, format!("{ptr}/{i}"), f);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Pods

#[test]
fn every_container_runs_restricted_with_resources_and_probes() {
    for (which, r) in both() {
        let pods = r.pods();
        assert!(pods.len() >= 5, "{which}: only {} workloads", pods.len());
        for (owner, pod) in pods {
            let owner_name = name(owner);
            let spec = &pod["spec"];
            let psc = &spec["securityContext"];
            assert_eq!(psc["runAsNonRoot"], true, "{which} {owner_name}");
            assert_eq!(psc["runAsUser"], 65532, "{which} {owner_name}");
            assert_eq!(
                psc["seccompProfile"]["type"], "RuntimeDefault",
                "{which} {owner_name}"
            );
            for host in ["hostNetwork", "hostPID", "hostIPC"] {
                assert_ne!(spec[host], true, "{which} {owner_name} {host}");
            }
            let volumes: BTreeMap<String, &Value> = spec["volumes"]
                .as_array()
                .map(|vs| {
                    vs.iter()
                        .map(|v| (v["name"].as_str().unwrap().to_owned(), v))
                        .collect()
                })
                .unwrap_or_default();
            for v in volumes.values() {
                assert!(
                    v.get("hostPath").is_none(),
                    "{which} {owner_name}: hostPath"
                );
            }
            let long_running = owner["kind"] != "Job" && owner["kind"] != "CronJob";
            for c in containers(pod) {
                let what = format!("{which} {owner_name} container {}", c["name"]);
                let sc = &c["securityContext"];
                assert_eq!(sc["runAsNonRoot"], true, "{what}");
                assert_eq!(sc["runAsUser"], 65532, "{what}");
                assert_eq!(sc["allowPrivilegeEscalation"], false, "{what}");
                assert_eq!(sc["readOnlyRootFilesystem"], true, "{what}");
                assert_ne!(sc["privileged"], true, "{what}");
                assert_eq!(strings(&sc["capabilities"]["drop"]), ["ALL"], "{what}");
                assert!(sc["capabilities"].get("add").is_none(), "{what}");
                assert_eq!(sc["seccompProfile"]["type"], "RuntimeDefault", "{what}");
                for kind in ["requests", "limits"] {
                    for res in ["cpu", "memory"] {
                        assert!(
                            !c["resources"][kind][res].is_null(),
                            "{what}: resources.{kind}.{res}"
                        );
                    }
                }
                if long_running {
                    for probe in ["readinessProbe", "livenessProbe"] {
                        let p = &c[probe];
                        assert!(
                            p.get("httpGet").is_some()
                                || p.get("tcpSocket").is_some()
                                || p.get("grpc").is_some(),
                            "{what}: {probe}"
                        );
                    }
                }
                // A read-only root needs a writable /tmp, from an emptyDir.
                let tmp = c["volumeMounts"]
                    .as_array()
                    .and_then(|ms| ms.iter().find(|m| m["mountPath"] == "/tmp"))
                    .unwrap_or_else(|| panic!("{what}: no /tmp mount"));
                let vol = volumes[tmp["name"].as_str().unwrap()];
                assert!(
                    vol.get("emptyDir").is_some(),
                    "{what}: /tmp is not an emptyDir"
                );
                // Every other mount refers to a declared volume or claim template.
                for m in c["volumeMounts"].as_array().unwrap() {
                    let vname = m["name"].as_str().unwrap();
                    let claimed = owner["spec"]["volumeClaimTemplates"]
                        .as_array()
                        .is_some_and(|t| t.iter().any(|t| t["metadata"]["name"] == vname));
                    assert!(
                        volumes.contains_key(vname) || claimed,
                        "{what}: mount {vname} has no volume"
                    );
                }
            }
        }
    }
}

#[test]
fn secrets_reach_pods_only_by_reference() {
    for (which, r) in both() {
        for (owner, pod) in r.pods() {
            for c in containers(pod) {
                for e in c["env"].as_array().into_iter().flatten() {
                    let var = e["name"].as_str().unwrap();
                    // `*_FILE` variables name a mounted file, not a secret value.
                    if var.ends_with("_FILE") {
                        continue;
                    }
                    if var.contains("URL") && var.contains("DATABASE")
                        || var.contains("TOKEN")
                        || var.contains("SECRET")
                    {
                        assert!(
                            e.get("value").is_none()
                                && e["valueFrom"].get("secretKeyRef").is_some(),
                            "{which} {}: {var} must come from a Secret",
                            name(owner)
                        );
                    }
                }
            }
        }
        let toml = r.helpr_toml();
        for secretish in ["postgres://", "token =", "client_secret", "password"] {
            assert!(
                !toml.contains(secretish),
                "{which}: helpr.toml holds {secretish}"
            );
        }
    }
    let values = std::fs::read_to_string(chart_dir().join("values.yaml")).unwrap();
    assert!(
        !values.contains("postgres://"),
        "values.yaml defaults hold a database URL"
    );

    // The database URL of every data-plane role comes from database.existingSecret.
    let r = render_production();
    for deployment in ["helpr-ingest", "helpr-api", "helpr-control"] {
        let d = r.get("Deployment", deployment);
        let c = &d["spec"]["template"]["spec"]["containers"][0];
        let url = container_env(c, "HELPR_DATABASE__URL").unwrap();
        assert_eq!(
            url["valueFrom"]["secretKeyRef"]["name"],
            "helpr-postgres-app"
        );
        assert_eq!(url["valueFrom"]["secretKeyRef"]["key"], "uri");
        let google = container_env(c, "HELPR_GOOGLE__CLIENT_SECRET").unwrap();
        assert_eq!(
            google["valueFrom"]["secretKeyRef"]["name"],
            "helpr-google-oauth"
        );
    }
}

#[test]
fn data_plane_roles_run_their_subcommands_on_their_ports() {
    let r = render_default();
    for (deployment, role, port) in [
        ("helpr-ingest", "ingest", 8080),
        ("helpr-api", "api", 8080),
        ("helpr-control", "control", 9090),
    ] {
        let d = r.get("Deployment", deployment);
        let c = &d["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(strings(&c["command"]), ["helpr-dataplane"]);
        let args = strings(&c["args"]);
        assert_eq!(args[0], role);
        assert_eq!(
            args[1..3],
            ["--listen".to_owned(), format!("0.0.0.0:{port}")]
        );
        assert_eq!(c["ports"][0]["containerPort"], port);
        assert_eq!(
            container_env(c, "HELPR_CONFIG").unwrap()["value"],
            "/etc/helpr/helpr.toml"
        );
        // Its Service targets that port.
        let svc = r.get("Service", deployment);
        assert_eq!(svc["spec"]["ports"][0]["targetPort"], c["ports"][0]["name"]);
        // The data plane never talks to the Kubernetes API.
        assert_eq!(
            d["spec"]["template"]["spec"]["automountServiceAccountToken"],
            false
        );
    }
    // control reads its bearer token from the mounted Secret (control.token_file).
    let control = r.get("Deployment", "helpr-control");
    let c = &control["spec"]["template"]["spec"]["containers"][0];
    let file = container_env(c, "HELPR_CONTROL__TOKEN_FILE").unwrap()["value"]
        .as_str()
        .unwrap();
    let dir = Path::new(file).parent().unwrap().to_str().unwrap();
    assert!(
        c["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["mountPath"] == dir && m["name"] == "control-token")
    );

    let ingest = r.get("Deployment", "helpr-ingest");
    let probe = &ingest["spec"]["template"]["spec"]["containers"][0]["readinessProbe"];
    assert_eq!(probe["httpGet"]["path"], "/healthz");

    let op = r.get("Deployment", "helpr-operator");
    let c = &op["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(strings(&c["command"]), ["helpr-operator"]);
    assert_eq!(strings(&c["args"])[0], "run");
    assert_eq!(
        container_env(c, "HELPR_OPERATOR_CONTROL_URL").unwrap()["value"],
        "http://helpr-control.helpr.svc:9090"
    );
}

// ---------------------------------------------------------------------------------------------
// Labels

#[test]
fn every_object_carries_the_recommended_labels_and_selectors_use_three() {
    let chart = std::fs::read_to_string(chart_dir().join("Chart.yaml")).unwrap();
    let app_version = chart
        .lines()
        .find_map(|l| l.strip_prefix("appVersion:"))
        .unwrap()
        .trim()
        .trim_matches('"')
        .to_owned();
    let selector_keys: BTreeSet<String> = [
        "app.kubernetes.io/name",
        "app.kubernetes.io/instance",
        "app.kubernetes.io/component",
    ]
    .map(str::to_owned)
    .into();
    for (which, r) in both() {
        for o in &r.objects {
            let l = labels(&o["metadata"]["labels"]);
            let what = format!("{which} {}", name(o));
            assert_eq!(l["app.kubernetes.io/name"], "helpr", "{what}");
            assert_eq!(l["app.kubernetes.io/instance"], RELEASE, "{what}");
            assert_eq!(l["app.kubernetes.io/managed-by"], "Helm", "{what}");
            assert_eq!(l["app.kubernetes.io/part-of"], "helpr", "{what}");
            assert_eq!(l["app.kubernetes.io/version"], app_version, "{what}");
            assert!(!l["app.kubernetes.io/component"].is_empty(), "{what}");
            assert_eq!(l["helm.sh/chart"], "helpr-0.1.0", "{what}");
            if which == "production" {
                assert_eq!(l["team"], "platform", "{what}: commonLabels");
            }
        }
        let pod_labels: Vec<BTreeMap<String, String>> = r
            .pods()
            .iter()
            .map(|(_, t)| labels(&t["metadata"]["labels"]))
            .collect();
        for o in &r.objects {
            let what = format!("{which} {}", name(o));
            let selector = match o["kind"].as_str().unwrap() {
                "Deployment" | "StatefulSet" | "PodDisruptionBudget" => {
                    labels(&o["spec"]["selector"]["matchLabels"])
                }
                "Service" => labels(&o["spec"]["selector"]),
                _ => continue,
            };
            let keys: BTreeSet<String> = selector.keys().cloned().collect();
            assert_eq!(keys, selector_keys, "{what}: selector keys");
            assert!(
                pod_labels.iter().any(|p| selects(&selector, p)),
                "{what}: selects no pod of the chart"
            );
            if o["kind"] == "Deployment" || o["kind"] == "StatefulSet" {
                let own = labels(&o["spec"]["template"]["metadata"]["labels"]);
                assert!(selects(&selector, &own), "{what}: selector misses its pods");
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// RBAC

/// (group, resource, verb) triples of a list of rules.
fn triples(rules: &Value) -> BTreeSet<(String, String, String)> {
    let mut out = BTreeSet::new();
    for rule in rules.as_array().into_iter().flatten() {
        for g in strings(&rule["apiGroups"]) {
            for res in strings(&rule["resources"]) {
                for v in strings(&rule["verbs"]) {
                    out.insert((g.clone(), res.clone(), v));
                }
            }
        }
    }
    out
}

#[test]
fn no_rbac_rule_grants_a_wildcard() {
    for (which, r) in both() {
        let roles: Vec<&Value> = r
            .objects
            .iter()
            .filter(|o| o["kind"] == "Role" || o["kind"] == "ClusterRole")
            .collect();
        assert!(roles.len() >= 5, "{which}");
        for role in roles {
            for rule in role["rules"].as_array().unwrap() {
                for field in ["apiGroups", "resources", "verbs", "resourceNames"] {
                    for s in strings(&rule[field]) {
                        assert!(!s.contains('*'), "{which} {}: {field} {s}", name(role));
                    }
                }
                assert!(
                    rule.get("nonResourceURLs").is_none(),
                    "{which} {}",
                    name(role)
                );
                assert!(
                    !strings(&rule["verbs"]).is_empty(),
                    "{which} {}",
                    name(role)
                );
            }
            assert!(
                role.get("aggregationRule").is_none(),
                "{which} {}: aggregates others",
                name(role)
            );
        }
    }
}

#[test]
fn operator_rbac_grants_exactly_what_it_does() {
    let mut expected = BTreeSet::new();
    for (group, resources, verbs) in OPERATOR_RBAC {
        for res in *resources {
            for v in *verbs {
                expected.insert((group.to_string(), res.to_string(), v.to_string()));
            }
        }
    }
    for (which, r) in both() {
        let sa = "helpr-operator";
        // Every binding whose subject is the operator's ServiceAccount.
        let mut granted = BTreeSet::new();
        let mut leases_bound_in = BTreeSet::new();
        let mut bound_namespaces = BTreeSet::new();
        for b in r
            .objects
            .iter()
            .filter(|o| o["kind"] == "RoleBinding" || o["kind"] == "ClusterRoleBinding")
        {
            let subjects = b["subjects"].as_array().unwrap();
            if !subjects.iter().any(|s| {
                s["kind"] == "ServiceAccount" && s["name"] == sa && s["namespace"] == NAMESPACE
            }) {
                continue;
            }
            let role = r.get(
                b["roleRef"]["kind"].as_str().unwrap(),
                b["roleRef"]["name"].as_str().unwrap(),
            );
            let t = triples(&role["rules"]);
            let scope = b["metadata"]["namespace"].as_str().unwrap_or("<cluster>");
            for (g, res, _) in &t {
                if (g.as_str(), res.as_str()) == LEADER_ELECTION {
                    leases_bound_in.insert(scope.to_owned());
                }
            }
            if t.iter().any(|(_, res, _)| res == "tenants") {
                bound_namespaces.insert(scope.to_owned());
            }
            // resourceNames would narrow a grant; the operator's rules name no objects.
            for rule in role["rules"].as_array().unwrap() {
                assert!(
                    rule.get("resourceNames").is_none(),
                    "{which} {}",
                    name(role)
                );
            }
            granted.extend(t);
        }
        let missing: Vec<_> = expected.difference(&granted).collect();
        let extra: Vec<_> = granted.difference(&expected).collect();
        assert!(
            missing.is_empty(),
            "{which}: the operator lacks {missing:?}"
        );
        assert!(extra.is_empty(), "{which}: the operator may also {extra:?}");
        assert_eq!(
            leases_bound_in,
            BTreeSet::from([NAMESPACE.to_owned()]),
            "{which}: leases only in the release namespace"
        );
        let want: BTreeSet<String> = if which == "production" {
            ["mail-acme", "mail-globex"].map(str::to_owned).into()
        } else {
            ["<cluster>".to_owned()].into()
        };
        assert_eq!(
            bound_namespaces, want,
            "{which}: where the operator manages tenants"
        );
    }
}

#[test]
fn aggregated_cluster_roles_let_namespace_users_view_and_edit_the_crds() {
    let r = render_default();
    let view = r.get("ClusterRole", "helpr-view");
    assert_eq!(
        view["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-view"],
        "true"
    );
    let t = triples(&view["rules"]);
    for kind in ["tenants", "inboxes", "inboxgrants", "retentionpolicies"] {
        for verb in ["get", "list", "watch"] {
            assert!(t.contains(&("mail.helpr.dev".into(), kind.into(), verb.into())));
        }
    }
    assert!(
        t.iter()
            .all(|(_, _, v)| ["get", "list", "watch"].contains(&v.as_str()))
    );

    let edit = r.get("ClusterRole", "helpr-edit");
    let l = labels(&edit["metadata"]["labels"]);
    assert_eq!(l["rbac.authorization.k8s.io/aggregate-to-edit"], "true");
    assert_eq!(l["rbac.authorization.k8s.io/aggregate-to-admin"], "true");
    let t = triples(&edit["rules"]);
    for kind in ["tenants", "inboxes", "inboxgrants", "retentionpolicies"] {
        for verb in ["create", "update", "patch", "delete"] {
            assert!(t.contains(&("mail.helpr.dev".into(), kind.into(), verb.into())));
        }
    }
    // Status belongs to the operator: users cannot write it.
    assert!(t.iter().all(|(_, res, _)| !res.contains('/')));
}

// ---------------------------------------------------------------------------------------------
// CRDs and the upgrade hook

#[test]
fn crd_hook_applies_the_chart_crds_with_its_own_minimal_rights() {
    let r = render_default();
    let hook = "helpr-crd-upgrade";
    for kind in [
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "ConfigMap",
        "Job",
    ] {
        let o = r.get(kind, hook);
        let a = &o["metadata"]["annotations"];
        assert_eq!(a["helm.sh/hook"], "pre-install,pre-upgrade", "{kind}");
        assert_eq!(
            a["helm.sh/hook-delete-policy"], "hook-succeeded,before-hook-creation",
            "{kind}"
        );
    }
    // Everything the Job needs exists before it (lower weights).
    let weight = |kind: &str| -> i64 {
        r.get(kind, hook)["metadata"]["annotations"]["helm.sh/hook-weight"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap()
    };
    for kind in [
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "ConfigMap",
    ] {
        assert!(weight(kind) < weight("Job"), "{kind} after the Job");
    }

    let job = r.get("Job", hook);
    let pod = &job["spec"]["template"]["spec"];
    assert_eq!(pod["serviceAccountName"], hook);
    assert_eq!(pod["restartPolicy"], "Never");
    let c = &pod["containers"][0];
    assert_eq!(strings(&c["command"]), ["helpr-operator"]);
    let args = strings(&c["args"]);
    assert_eq!(args[..2], ["crds".to_owned(), "--apply".to_owned()]);
    let dir = args
        .iter()
        .position(|a| a == "--from-dir")
        .map(|i| args[i + 1].clone())
        .unwrap();
    let mount = c["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["mountPath"] == dir.as_str())
        .unwrap();
    let volume = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == mount["name"])
        .unwrap();
    assert_eq!(volume["configMap"]["name"], hook);

    // The ConfigMap carries exactly the files of crds/, byte for byte.
    let cm = r.get("ConfigMap", hook);
    let shipped: BTreeMap<String, String> = cm["data"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
                .collect()
        })
        .unwrap_or_default();
    let mut on_disk = BTreeMap::new();
    if let Ok(entries) = std::fs::read_dir(chart_dir().join("crds")) {
        for e in entries {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "yaml") {
                on_disk.insert(
                    p.file_name().unwrap().to_string_lossy().into_owned(),
                    std::fs::read_to_string(&p).unwrap(),
                );
            }
        }
    }
    assert_eq!(
        shipped.keys().collect::<Vec<_>>(),
        on_disk.keys().collect::<Vec<_>>()
    );
    for (file, text) in &on_disk {
        assert_eq!(
            shipped[file].trim_end(),
            text.trim_end(),
            "{file} differs in the hook ConfigMap"
        );
    }

    // Rights: create CRDs, and get/patch only helpr's.
    let role = r.get("ClusterRole", hook);
    let mut named = BTreeSet::new();
    for rule in role["rules"].as_array().unwrap() {
        assert_eq!(strings(&rule["apiGroups"]), ["apiextensions.k8s.io"]);
        assert_eq!(strings(&rule["resources"]), ["customresourcedefinitions"]);
        let verbs = strings(&rule["verbs"]);
        if rule.get("resourceNames").is_some() {
            assert_eq!(
                strings(&rule["resourceNames"])
                    .iter()
                    .collect::<BTreeSet<_>>(),
                CRD_NAMES
                    .iter()
                    .map(|s| s.to_string())
                    .collect::<BTreeSet<_>>()
                    .iter()
                    .collect()
            );
            named.extend(verbs);
        } else {
            assert_eq!(verbs, ["create"], "only create may be unnamed");
        }
    }
    assert_eq!(named, BTreeSet::from(["get".into(), "patch".into()]));

    // Every CRD the chart ships is one the RBAC tables know.
    for crd in &r.crds {
        assert_eq!(crd["kind"], "CustomResourceDefinition");
        let crd_name = crd["metadata"]["name"].as_str().unwrap();
        assert!(
            CRD_NAMES.contains(&crd_name),
            "crds/ holds {crd_name}, which the hook and the operator RBAC do not cover"
        );
        assert_eq!(crd["spec"]["group"], "mail.helpr.dev");
    }

    // Off means no hook at all.
    let off = render_with(&[], &[r#"crdUpgrade={"enabled":false}"#]).unwrap();
    assert!(off.find("Job", hook).is_none());
    assert!(off.find("ClusterRole", hook).is_none());
}

// ---------------------------------------------------------------------------------------------
// Search backends and settings

#[test]
fn tantivy_backend_runs_the_index_role_as_a_statefulset_with_a_volume() {
    let r = render_default();
    let sts = r.get("StatefulSet", "helpr-index");
    assert_eq!(sts["spec"]["replicas"], 1, "one tantivy writer");
    let claim = &sts["spec"]["volumeClaimTemplates"][0];
    assert_eq!(claim["spec"]["resources"]["requests"]["storage"], "10Gi");
    let c = &sts["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(strings(&c["args"]), ["index", "--listen", "0.0.0.0:7070"]);
    let mount = c["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == claim["metadata"]["name"])
        .unwrap();
    assert_eq!(mount["mountPath"], "/var/lib/helpr/index");
    assert!(
        r.helpr_toml()
            .contains("index_dir = \"/var/lib/helpr/index\"")
    );
    assert!(
        r.templates
            .iter()
            .any(|t| t.ends_with("index-statefulset.yaml"))
    );

    // The rest of the data plane reaches it through its Service.
    let svc = r.get("Service", "helpr-index");
    assert_eq!(svc["spec"]["ports"][0]["port"], 7070);
    assert!(
        r.helpr_toml()
            .contains("remote_url = \"http://helpr-index.helpr.svc:7070\"")
    );

    // Every caller needs a token of the index role's secret: the role and the shared roles
    // mount it (read-only, 0400), the operator too, to give each tenant its own token.
    let secret = r.get("Secret", "helpr-index-secret");
    assert_eq!(
        secret["metadata"]["annotations"]["helm.sh/resource-policy"],
        "keep"
    );
    assert!(secret["data"]["secret"].as_str().unwrap().len() >= 64);
    let index_secret_mounted = |pod: &Value, env: &str| {
        let spec = &pod["spec"]["template"]["spec"];
        let volume = spec["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == "index-secret")
            .unwrap_or_else(|| panic!("no index-secret volume in {}", pod["metadata"]["name"]));
        assert_eq!(volume["secret"]["secretName"], "helpr-index-secret");
        assert_eq!(volume["secret"]["defaultMode"], 0o400);
        let c = &spec["containers"][0];
        assert!(c["volumeMounts"].as_array().unwrap().iter().any(|m| {
            m["name"] == "index-secret"
                && m["mountPath"] == "/var/run/secrets/helpr/index"
                && m["readOnly"] == true
        }));
        assert!(
            c["env"].as_array().unwrap().iter().any(|e| {
                e["name"] == env && e["value"] == "/var/run/secrets/helpr/index/secret"
            }),
            "{}",
            pod["metadata"]["name"]
        );
    };
    index_secret_mounted(sts, "HELPR_SEARCH__INDEX_SECRET_FILE");
    for role in ["helpr-api", "helpr-ingest", "helpr-control"] {
        index_secret_mounted(r.get("Deployment", role), "HELPR_SEARCH__INDEX_SECRET_FILE");
    }
    index_secret_mounted(
        r.get("Deployment", "helpr-operator"),
        "HELPR_OPERATOR_INDEX_SECRET_FILE",
    );
    // Not in the settings the tenants' own pods mount: they get a token for themselves.
    assert!(!r.helpr_toml().contains("index_secret_file"));
    // A platform team's own Secret instead.
    let own = render_with(
        &[],
        &[r#"search={"index":{"existingSecret":"my-index-secret"}}"#],
    )
    .unwrap();
    assert!(own.find("Secret", "helpr-index-secret").is_none());
    assert_eq!(
        own.get("StatefulSet", "helpr-index")["spec"]["template"]["spec"]["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == "index-secret")
            .unwrap()["secret"]["secretName"],
        "my-index-secret"
    );

    // Quickwit: no StatefulSet, no volume, the cluster's URL and TLS files instead.
    let p = render_production();
    assert!(p.find("Secret", "helpr-index-secret").is_none());
    assert!(p.of_kind("StatefulSet").is_empty());
    assert!(p.of_kind("PersistentVolumeClaim").is_empty());
    let toml = p.helpr_toml();
    assert!(toml.contains("backend = \"quickwit\""), "{toml}");
    assert!(toml.contains("url = \"https://quickwit-searcher.search.svc:7280\""));
    let api = p.get("Deployment", "helpr-api");
    let mounts = &api["spec"]["template"]["spec"]["containers"][0]["volumeMounts"];
    for (setting, file) in [
        ("ca_cert_file", "/etc/helpr-tls/search-ca/ca.crt"),
        ("client_cert_file", "/etc/helpr-tls/search-client/tls.crt"),
        ("client_key_file", "/etc/helpr-tls/search-client/tls.key"),
    ] {
        assert!(
            toml.contains(&format!("{setting} = \"{file}\"")),
            "{setting}"
        );
        let dir = Path::new(file).parent().unwrap().to_str().unwrap();
        assert!(
            mounts
                .as_array()
                .unwrap()
                .iter()
                .any(|m| m["mountPath"] == dir),
            "{file} is not mounted"
        );
    }

    // Quickwit without a URL is refused at render time.
    let err = render_with(&[], &[r#"search={"backend":"quickwit"}"#])
        .err()
        .expect("quickwit needs a url");
    assert!(err.contains("search.quickwit.url"), "{err}");
}

/// The agent API's OIDC settings reach helpr.toml (and load); left empty, the chart says so.
#[test]
fn api_auth_values_reach_the_data_plane_settings() {
    let r = render_production();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("helpr.toml");
    std::fs::write(&path, r.helpr_toml()).unwrap();
    let settings = helpr_dataplane::config::Settings::load(Some(&path))
        .unwrap_or_else(|e| panic!("the chart's helpr.toml does not load: {e}"));
    assert_eq!(
        settings.api.issuer,
        "https://login.example.com/realms/helpdesk"
    );
    assert_eq!(settings.api.audience, "helpr-api");
    assert_eq!(
        settings.api.jwks_url,
        "https://login.example.com/realms/helpdesk/protocol/openid-connect/certs"
    );
    assert_eq!(settings.api.tenant_claim, "helpr_tenant");
    assert_eq!(settings.api.groups_claim, "groups");
    // The push audiences too, the extra ones in order.
    assert_eq!(
        settings.push.audience,
        "https://mail.example.com/v1/push/gmail"
    );
    assert_eq!(
        settings.push.additional_audiences,
        [
            "https://mail.example.com/v1/push/gmail?tenant=acme",
            "https://mail.example.com/v1/push/gmail?tenant=globex"
        ]
    );
    assert!(
        render_with(&[], &["config.push.additionalAudiences={a b}"]).is_err(),
        "an audience with whitespace accepted"
    );
    // Defaults: no issuer, so the api pods would refuse to start; the notes warn.
    let d = render_default();
    assert!(!d.helpr_toml().contains("issuer ="), "{}", d.helpr_toml());
    // A JWKS URL over plain HTTP to a remote host is refused by the schema.
    assert!(
        render_with(&[], &["api.auth.jwksUrl=http://idp.example.com/jwks"]).is_err(),
        "plain-http JWKS accepted"
    );
}

/// The settings file the chart renders is accepted by the data plane's own settings loader
/// (unknown keys are errors there).
#[test]
fn rendered_settings_load_in_the_data_plane() {
    let r = render_default();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("helpr.toml");
    std::fs::write(&path, r.helpr_toml()).unwrap();
    let settings = helpr_dataplane::config::Settings::load(Some(&path))
        .unwrap_or_else(|e| panic!("the chart's helpr.toml does not load: {e}"));
    assert_eq!(
        settings.search.backend,
        helpr_dataplane::config::SearchBackend::Remote
    );
    assert_eq!(
        settings.search.remote_url.as_deref(),
        Some("http://helpr-index.helpr.svc:7070")
    );
    assert_eq!(
        settings.kms.backend,
        helpr_dataplane::config::KmsBackend::Vault
    );
    let vault = settings.kms.vault.unwrap();
    assert_eq!(vault.address, "https://openbao.openbao.svc:8200");
    assert!(matches!(
        vault.auth,
        helpr_dataplane::kms::vault::VaultAuth::Kubernetes { ref token_file, .. }
            if token_file == Path::new("/var/run/secrets/helpr/kms/token")
    ));
    // The projected token that file names is mounted in every pod that uses the KMS.
    let api = r.get("Deployment", "helpr-api");
    let spec = &api["spec"]["template"]["spec"];
    assert!(
        spec["containers"][0]["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["mountPath"] == "/var/run/secrets/helpr/kms")
    );
    let projected = spec["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "kms-token")
        .unwrap();
    assert_eq!(
        projected["projected"]["sources"][0]["serviceAccountToken"]["audience"],
        "vault"
    );
}

/// Where the operator's settings ConfigMap is mounted and the file the operator reads.
const OPERATOR_SETTINGS_DIR: &str = "/etc/helpr/operator";
const OPERATOR_SETTINGS_FILE: &str = "/etc/helpr/operator/settings.yaml";

/// The chart's operator settings, loaded (parsed and checked) by the operator's own code.
fn operator_settings(r: &Rendered) -> helpr_operator::settings::OperatorSettings {
    let text = r.get("ConfigMap", "helpr-operator-settings")["data"]["settings.yaml"]
        .as_str()
        .expect("the operator settings ConfigMap has settings.yaml")
        .to_owned();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("settings.yaml");
    std::fs::write(&path, &text).unwrap();
    helpr_operator::settings::OperatorSettings::load(&path)
        .unwrap_or_else(|e| panic!("the chart's operator settings do not load: {e:?}\n{text}"))
}

/// The operator knows which push audiences the ingest endpoint accepts (to report an Inbox
/// naming another); without a push audience nothing is checked.
#[test]
fn the_operator_checks_inboxes_against_the_accepted_push_audiences() {
    let settings = operator_settings(&render_production());
    assert_eq!(
        settings.push_audiences,
        [
            "https://mail.example.com/v1/push/gmail",
            "https://mail.example.com/v1/push/gmail?tenant=acme",
            "https://mail.example.com/v1/push/gmail?tenant=globex"
        ]
    );
    assert!(
        operator_settings(&render_default())
            .push_audiences
            .is_empty()
    );
}

#[test]
fn rendered_operator_settings_load_in_the_operator_and_are_mounted() {
    for (which, r) in both() {
        let settings = operator_settings(&r);
        let operator = r.get("Deployment", "helpr-operator");
        let pod = &operator["spec"]["template"];
        let container = &pod["spec"]["containers"][0];
        // The sync workers run the operator's own image, pulled the same way.
        assert_eq!(container["image"], settings.sync_image.as_str(), "{which}");
        assert_eq!(
            Some(container["imagePullPolicy"].as_str().unwrap()),
            settings.image_pull_policy.as_deref(),
            "{which}"
        );
        // The operator reads the file the ConfigMap is mounted as, read-only.
        assert_eq!(
            container_env(container, "HELPR_OPERATOR_SETTINGS").unwrap()["value"],
            OPERATOR_SETTINGS_FILE,
            "{which}"
        );
        let mount = container["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["mountPath"] == OPERATOR_SETTINGS_DIR)
            .unwrap_or_else(|| panic!("{which}: settings not mounted"));
        assert_eq!(mount["readOnly"], true, "{which}");
        let volume = pod["spec"]["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == mount["name"])
            .unwrap();
        assert_eq!(
            volume["configMap"]["name"], "helpr-operator-settings",
            "{which}"
        );
        // A change of the settings rolls the operator.
        assert!(
            pod["metadata"]["annotations"]["checksum/operator-settings"]
                .as_str()
                .is_some_and(|s| s.len() == 64),
            "{which}"
        );
        // The transit key prefix is the data plane's.
        let toml = r.helpr_toml();
        assert!(
            toml.contains(&format!("key_prefix = \"{}\"", settings.vault.key_prefix)),
            "{which}: key prefix {} not in helpr.toml",
            settings.vault.key_prefix
        );
        let dns = &settings.network.dns;
        assert_eq!(dns.ports, [53], "{which}");
        assert!(dns.udp, "{which}");
        assert_eq!(dns.pod_labels["k8s-app"], "kube-dns", "{which}");
        let search = settings.network.search.as_ref().unwrap();
        if which == "default" {
            // The release's index pods, in the release namespace.
            assert_eq!(search.ports, [7070]);
            assert_eq!(
                search.namespace_labels["kubernetes.io/metadata.name"],
                NAMESPACE
            );
            let index = r.get("StatefulSet", "helpr-index");
            assert!(selects(
                &search.pod_labels,
                &labels(&index["spec"]["template"]["metadata"]["labels"])
            ));
            // No peers given: the same "any address on the ports" the chart's pods get.
            for target in [&settings.network.database, &settings.network.kms] {
                assert_eq!(target.cidrs, ["0.0.0.0/0", "::/0"]);
            }
            assert_eq!(settings.network.database.ports, [5432]);
            assert_eq!(settings.network.kms.ports, [8200]);
        } else {
            // Derived from the narrowed networkPolicy peers.
            let db = &settings.network.database;
            assert!(db.cidrs.is_empty());
            assert_eq!(
                db.namespace_labels["kubernetes.io/metadata.name"],
                "databases"
            );
            assert_eq!(db.pod_labels["cnpg.io/cluster"], "helpr-postgres");
            assert_eq!(db.ports, [5432]);
            let kms = &settings.network.kms;
            assert_eq!(kms.namespace_labels["kubernetes.io/metadata.name"], "vault");
            assert!(kms.pod_labels.is_empty() && kms.cidrs.is_empty());
            assert_eq!(search.pod_labels["app.kubernetes.io/name"], "quickwit");
            assert_eq!(search.ports, [7280]);
            assert_eq!(settings.vault.key_prefix, "helpr-");
        }
    }
}

#[test]
fn operator_settings_take_explicit_targets_and_refuse_what_they_cannot_express() {
    let r = render_with(
        &[],
        &[
            r#"operator={"tenantDefaults":{"dataPlaneEnvSecret":"helpr-dataplane-env","network":{"kms":{"cidrs":["10.5.0.0/16"]},"googleApiCidrs":["142.250.0.0/15"]}}}"#,
        ],
    )
    .unwrap();
    let settings = operator_settings(&r);
    assert_eq!(settings.network.kms.cidrs, ["10.5.0.0/16"]);
    assert_eq!(settings.network.kms.ports, [8200]);
    assert_eq!(settings.network.google_api_cidrs, ["142.250.0.0/15"]);
    assert_eq!(
        settings.data_plane_env_secret.as_deref(),
        Some("helpr-dataplane-env")
    );
    assert_eq!(settings.data_plane_config_map, None);
    // An ipBlock with exceptions cannot become an operator target: fail, naming the value.
    let err = render_with(
        &[],
        &[r#"networkPolicy={"kms":{"to":[{"ipBlock":{"cidr":"10.0.0.0/8","except":["10.1.0.0/16"]}}]}}"#],
    )
    .err()
    .expect("an inexpressible kms peer fails");
    assert!(err.contains("operator.tenantDefaults.network.kms"), "{err}");
    // With the operator disabled nothing is derived.
    assert!(
        render_with(
            &[],
            &[
                r#"operator={"enabled":false}"#,
                r#"networkPolicy={"kms":{"to":[{"ipBlock":{"cidr":"10.0.0.0/8","except":["10.1.0.0/16"]}}]}}"#,
            ],
        )
        .is_ok()
    );
}

/// The chart admits data-plane pods to the index and the database by one label; the operator
/// puts that exact label on its sync pods.
#[test]
fn sync_pods_carry_the_label_the_chart_admits() {
    let (key, value) = helpr_operator::tenant::children::DATA_PLANE_LABEL;
    let r = render_with(&[], &[r#"networkPolicy={"database":{"isolate":{"enabled":true,"namespace":"db","podSelector":{"matchLabels":{"app":"pg"}}}}}"#]).unwrap();
    for component in ["index", "database-isolation"] {
        let np = policy(&r, component);
        let peers = peers_of(&np["spec"]["ingress"]);
        assert!(
            peers
                .iter()
                .any(|p| p["podSelector"]["matchLabels"][key] == value),
            "{component}: no peer selects {key}={value}"
        );
    }
}

/// The purge pods of a RetentionPolicy, built from the chart's rendered operator settings,
/// carry the label the chart admits to the index and the database, and their NetworkPolicy
/// opens exactly the sync pods' DNS, database, KMS and search rules (not the Google APIs).
#[test]
fn purge_pods_carry_the_label_the_chart_admits_and_the_sync_pods_egress() {
    use helpr_crds::{RetentionPolicy, Tenant};
    let (key, value) = helpr_operator::tenant::children::DATA_PLANE_LABEL;
    let r = render_with(
        &[],
        &[
            r#"networkPolicy={"database":{"isolate":{"enabled":true,"namespace":"db","podSelector":{"matchLabels":{"app":"pg"}}}}}"#,
            r#"operator.tenantDefaults.network.googleApiCidrs=["142.250.0.0/15"]"#,
        ],
    )
    .unwrap();
    let settings = operator_settings(&r);
    assert!(!settings.network.google_api_cidrs.is_empty());
    let tenant = helpr_operator::tenant::validate(&Tenant::test("acme"), &settings).unwrap();
    let retention = helpr_operator::retention::validate(
        &RetentionPolicy::test("acme", "acme"),
        helpr_operator::retention::model::system_time_zones(),
    )
    .unwrap();
    let purge = helpr_operator::retention::build(&retention, &tenant, &settings);
    let pod_labels = purge
        .cron_job
        .spec
        .job_template
        .spec
        .as_ref()
        .unwrap()
        .template
        .metadata
        .as_ref()
        .unwrap()
        .labels
        .clone()
        .unwrap();
    assert_eq!(pod_labels.get(key).map(String::as_str), Some(value));
    for component in ["index", "database-isolation"] {
        let np = policy(&r, component);
        let peers = peers_of(&np["spec"]["ingress"]);
        assert!(
            peers.iter().any(|p| {
                p["podSelector"]["matchLabels"]
                    .as_object()
                    .unwrap()
                    .iter()
                    .all(|(k, v)| pod_labels.get(k).map(String::as_str) == v.as_str())
            }),
            "{component}: no peer admits the purge pods"
        );
    }
    let sync = helpr_operator::tenant::children::network_policy(&tenant, &settings)
        .spec
        .unwrap()
        .egress
        .unwrap();
    let purge_egress = purge.network_policy.spec.unwrap().egress.unwrap();
    let google: Vec<_> = sync
        .iter()
        .filter(|rule| !purge_egress.contains(rule))
        .collect();
    assert_eq!(
        google.len(),
        1,
        "only the Google rule is the sync pods' own"
    );
    assert_eq!(
        serde_json::to_value(&google[0].ports).unwrap(),
        serde_json::json!([{"port": 443, "protocol": "TCP"}])
    );
    assert!(purge_egress.iter().all(|rule| sync.contains(rule)));
}

/// The rule the RetentionPolicy controller needs: apply (create, patch) and watch purge
/// CronJobs; never delete or update them (they go with their policy's owner reference).
#[test]
fn operator_may_apply_and_watch_purge_cron_jobs_and_nothing_more() {
    for (which, r) in both() {
        let role = r.get("ClusterRole", "helpr-operator");
        let cron: BTreeSet<String> = triples(&role["rules"])
            .into_iter()
            .filter(|(g, res, _)| g == "batch" && res == "cronjobs")
            .map(|(_, _, verb)| verb)
            .collect();
        assert_eq!(
            cron,
            ["create", "list", "patch", "watch"]
                .map(str::to_owned)
                .into(),
            "{which}"
        );
        // And no other batch resource (Jobs are the CronJob controller's).
        assert!(
            triples(&role["rules"])
                .iter()
                .all(|(g, res, _)| g != "batch" || res == "cronjobs"),
            "{which}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// NetworkPolicies

fn policy<'a>(r: &'a Rendered, component: &str) -> &'a Value {
    r.get("NetworkPolicy", &format!("helpr-{component}"))
}

fn peers_of(rules: &Value) -> Vec<Value> {
    rules
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|rule| {
            rule["from"]
                .as_array()
                .or(rule["to"].as_array())
                .cloned()
                .unwrap_or_default()
        })
        .collect()
}

fn rule_ports(rule: &Value) -> Vec<i64> {
    rule["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["port"].as_i64())
        .collect()
}

fn is_data_plane_peer(peer: &Value) -> bool {
    peer["podSelector"]["matchLabels"]["mail.helpr.dev/plane"] == "data"
}

#[test]
fn network_policies_deny_by_default_and_allow_each_component_its_traffic() {
    for (which, r) in both() {
        let deny = policy(&r, "default-deny");
        assert_eq!(
            strings(&deny["spec"]["policyTypes"]),
            ["Ingress", "Egress"],
            "{which}"
        );
        assert!(deny["spec"].get("ingress").is_none() && deny["spec"].get("egress").is_none());
        let deny_sel = labels(&deny["spec"]["podSelector"]["matchLabels"]);
        for (owner, pod) in r.pods() {
            assert!(
                selects(&deny_sel, &labels(&pod["metadata"]["labels"])),
                "{which} {} escapes the default deny",
                name(owner)
            );
            // And some allow policy of its own component exists for every workload.
            let component =
                labels(&pod["metadata"]["labels"])["app.kubernetes.io/component"].clone();
            assert!(
                r.find("NetworkPolicy", &format!("helpr-{component}"))
                    .is_some(),
                "{which}: no policy for {component}"
            );
        }

        // Every pod may resolve names.
        let dns = policy(&r, "allow-dns");
        assert_eq!(labels(&dns["spec"]["podSelector"]["matchLabels"]), deny_sel);
        assert_eq!(rule_ports(&dns["spec"]["egress"][0]), [53, 53]);

        // ingest: from anywhere, on the push port only.
        let ingest = policy(&r, "ingest");
        let rules = ingest["spec"]["ingress"].as_array().unwrap();
        assert_eq!(rules.len(), 1);
        assert!(
            rules[0].get("from").is_none(),
            "{which}: Pub/Sub comes from anywhere"
        );
        assert_eq!(rule_ports(&rules[0]), [8080]);
        // ... and out to Google's public addresses on 443, never to private ranges.
        let google = ingest["spec"]["egress"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| rule_ports(e) == [443])
            .unwrap();
        let block = &google["to"][0]["ipBlock"];
        assert_eq!(block["cidr"], "0.0.0.0/0");
        for private in ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"] {
            assert!(
                strings(&block["except"]).contains(&private.to_owned()),
                "{private}"
            );
        }

        // control: from the operator's pods only.
        let control = policy(&r, "control");
        let from = peers_of(&control["spec"]["ingress"]);
        assert_eq!(from.len(), 1, "{which}");
        assert_eq!(
            from[0]["podSelector"]["matchLabels"]["app.kubernetes.io/component"],
            "operator"
        );
        assert!(
            from[0].get("namespaceSelector").is_none(),
            "same namespace only"
        );
        let op_egress = &policy(&r, "operator")["spec"]["egress"];
        assert!(
            op_egress
                .as_array()
                .unwrap()
                .iter()
                .any(|e| rule_ports(e) == [9090]
                    && e["to"][0]["podSelector"]["matchLabels"]["app.kubernetes.io/component"]
                        == "control"),
            "{which}: the operator may call control"
        );

        // Only data-plane pods carry the data-plane label.
        for (owner, pod) in r.pods() {
            let component =
                labels(&pod["metadata"]["labels"])["app.kubernetes.io/component"].clone();
            let data = pod["metadata"]["labels"]["mail.helpr.dev/plane"] == "data";
            let expect = ["ingest", "api", "control", "index"].contains(&component.as_str());
            assert_eq!(data, expect, "{which} {}", name(owner));
        }
    }

    // The index (tantivy) only from data-plane pods, and it connects nowhere.
    let r = render_default();
    let index = policy(&r, "index");
    let from = peers_of(&index["spec"]["ingress"]);
    assert!(!from.is_empty());
    assert!(from.iter().all(is_data_plane_peer), "{from:?}");
    assert_eq!(index["spec"]["egress"], Value::Array(vec![]));
    // The api admits nobody until told.
    assert_eq!(policy(&r, "api")["spec"]["ingress"], Value::Array(vec![]));
    assert!(r.notes.contains("nobody can reach the"));

    // Production: the api from the listed namespace and CIDR; metrics from monitoring.
    let p = render_production();
    let api_from = peers_of(&policy(&p, "api")["spec"]["ingress"]);
    assert!(api_from.iter().any(|peer| {
        peer["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"] == "ingress-nginx"
    }));
    assert!(
        api_from
            .iter()
            .any(|peer| peer["ipBlock"]["cidr"] == "10.20.0.0/16")
    );
    assert!(api_from.iter().any(|peer| {
        peer["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"] == "monitoring"
    }));
    // Egress of the data plane to the configured database, KMS and Quickwit peers only.
    let api_to = peers_of(&policy(&p, "api")["spec"]["egress"]);
    let namespaces: BTreeSet<String> = api_to
        .iter()
        .filter_map(|peer| {
            peer["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
                .as_str()
                .map(str::to_owned)
        })
        .collect();
    assert_eq!(
        namespaces,
        ["databases", "search", "vault"].map(str::to_owned).into()
    );
}

#[test]
fn the_database_and_search_cluster_admit_only_data_plane_pods() {
    let p = render_production();
    for (policy_name, namespace, own_label, port) in [
        (
            "helpr-database-isolation",
            "databases",
            ("cnpg.io/cluster", "helpr-postgres"),
            5432,
        ),
        (
            "helpr-search-isolation",
            "search",
            ("app.kubernetes.io/name", "quickwit"),
            7280,
        ),
    ] {
        let np = p.get("NetworkPolicy", policy_name);
        assert_eq!(np["metadata"]["namespace"], namespace);
        assert_eq!(
            np["spec"]["podSelector"]["matchLabels"][own_label.0],
            own_label.1
        );
        assert_eq!(strings(&np["spec"]["policyTypes"]), ["Ingress"]);
        let rules = np["spec"]["ingress"].as_array().unwrap();
        for rule in rules {
            for peer in rule["from"].as_array().unwrap() {
                let own = peer["podSelector"]["matchLabels"][own_label.0] == own_label.1
                    && peer.get("namespaceSelector").is_none();
                assert!(
                    own || is_data_plane_peer(peer),
                    "{policy_name} admits {peer}"
                );
                if is_data_plane_peer(peer) {
                    assert_eq!(rule_ports(rule), [port]);
                    // Only the release namespace and the operator's namespaces.
                    let ns =
                        peer["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
                            .as_str()
                            .unwrap();
                    assert!(["helpr", "mail-acme", "mail-globex"].contains(&ns), "{ns}");
                }
            }
        }
        assert!(
            peers_of(&np["spec"]["ingress"])
                .iter()
                .any(is_data_plane_peer),
            "{policy_name}"
        );
    }
    let d = render_default();
    assert!(
        d.find("NetworkPolicy", "helpr-database-isolation")
            .is_none()
    );
    assert!(d.find("NetworkPolicy", "helpr-search-isolation").is_none());

    let off = render_with(&[], &[r#"networkPolicy={"enabled":false}"#]).unwrap();
    assert!(off.of_kind("NetworkPolicy").is_empty());
}

// ---------------------------------------------------------------------------------------------
// PDBs, ServiceMonitor, control token, Dockerfile

#[test]
fn every_multi_replica_deployment_has_a_pod_disruption_budget() {
    for (which, r) in both() {
        let pdbs = r.of_kind("PodDisruptionBudget");
        for d in r.of_kind("Deployment") {
            let replicas = d["spec"]["replicas"].as_i64().unwrap();
            let sel = labels(&d["spec"]["selector"]["matchLabels"]);
            let covering: Vec<_> = pdbs
                .iter()
                .filter(|p| labels(&p["spec"]["selector"]["matchLabels"]) == sel)
                .collect();
            if replicas > 1 {
                assert_eq!(covering.len(), 1, "{which} {}", name(d));
                let pdb = covering[0];
                assert!(
                    pdb["spec"]["maxUnavailable"]
                        .as_i64()
                        .is_some_and(|m| m < replicas)
                        || pdb["spec"]["minAvailable"].is_i64(),
                    "{which} {}",
                    name(pdb)
                );
            } else {
                assert!(
                    covering.is_empty(),
                    "{which}: PDB on single-replica {}",
                    name(d)
                );
            }
        }
    }
    let p = render_production();
    assert_eq!(
        p.of_kind("PodDisruptionBudget").len(),
        4,
        "operator, ingest, api, control"
    );
}

#[test]
fn service_monitor_scrapes_the_metrics_services_only_when_enabled() {
    let d = render_default();
    assert!(d.of_kind("ServiceMonitor").is_empty());
    let p = render_production();
    let sms = p.of_kind("ServiceMonitor");
    assert_eq!(sms.len(), 1);
    let sm = sms[0];
    assert_eq!(sm["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(sm["metadata"]["labels"]["release"], "kube-prometheus-stack");
    let endpoint = &sm["spec"]["endpoints"][0];
    assert_eq!(endpoint["path"], "/metrics");
    assert_eq!(endpoint["interval"], "15s");
    let components: Vec<String> = strings(&sm["spec"]["selector"]["matchExpressions"][0]["values"]);
    for component in &components {
        let svc = p
            .of_kind("Service")
            .into_iter()
            .find(|s| s["metadata"]["labels"]["app.kubernetes.io/component"] == component.as_str())
            .unwrap_or_else(|| panic!("no Service for {component}"));
        assert!(
            svc["spec"]["ports"]
                .as_array()
                .unwrap()
                .iter()
                .any(|port| port["name"] == endpoint["port"]),
            "{component} has no {} port",
            endpoint["port"]
        );
    }
    assert_eq!(components, ["ingest", "api", "operator"]);
}

#[test]
fn control_api_token_is_generated_or_taken_from_an_existing_secret() {
    let d = render_default();
    let secret = d.get("Secret", "helpr-control-token");
    assert_eq!(
        secret["metadata"]["annotations"]["helm.sh/resource-policy"],
        "keep"
    );
    let token = secret["data"]["token"].as_str().unwrap();
    assert!(
        token.len() >= 48,
        "a generated token of 48 characters, base64"
    );
    // Both ends mount the same Secret.
    for deployment in ["helpr-control", "helpr-operator"] {
        let spec = &d.get("Deployment", deployment)["spec"]["template"]["spec"];
        assert!(
            spec["volumes"]
                .as_array()
                .unwrap()
                .iter()
                .any(|v| v["secret"]["secretName"] == "helpr-control-token"),
            "{deployment}"
        );
    }
    let p = render_production();
    assert!(
        p.of_kind("Secret").is_empty(),
        "no Secret when existingSecret is set"
    );
    for deployment in ["helpr-control", "helpr-operator"] {
        let spec = &p.get("Deployment", deployment)["spec"]["template"]["spec"];
        assert!(
            spec["volumes"]
                .as_array()
                .unwrap()
                .iter()
                .any(|v| v["secret"]["secretName"] == "helpr-control-token"),
            "{deployment}"
        );
    }
}

#[test]
fn dockerfile_builds_both_binaries_and_runs_as_65532() {
    let text = std::fs::read_to_string(repo_root().join("Dockerfile")).unwrap();
    assert!(text.contains("cargo build --release --locked"));
    for bin in ["helpr-dataplane", "helpr-operator"] {
        assert!(
            text.lines()
                .any(|l| l.starts_with("COPY --from=build") && l.contains(bin)),
            "the final stage lacks {bin}"
        );
    }
    let stages = text.lines().filter(|l| l.starts_with("FROM ")).count();
    assert!(stages >= 2, "multi-stage");
    let last_user = text
        .lines()
        .filter_map(|l| l.strip_prefix("USER "))
        .next_back()
        .unwrap();
    assert!(last_user.starts_with("65532"), "{last_user}");
    assert!(repo_root().join(".dockerignore").exists());
}
