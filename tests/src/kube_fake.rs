//! A fake Kubernetes apiserver over HTTP, for running the real `helpr-operator` binary
//! where no cluster can run (tests and the operator scale benchmark).
//!
//! It keeps objects in memory and serves the REST paths the operator uses, for any resource
//! (`/api/v1/...`, `/apis/<group>/<version>/...`, namespaced or not, with `status` as a
//! subresource): list (label and field selectors), watch (a streamed event log from a
//! resourceVersion, `410 Gone` once that version has been compacted), get, create,
//! patch (server-side apply, JSON merge patch, strategic merge approximated as a merge
//! patch, JSON patch), delete with finalizers (`deletionTimestamp`, removal once the last
//! finalizer goes) and garbage collection of dependents through ownerReferences.
//!
//! What it simplifies, so that tests do not rely on it: server-side apply merges the applied
//! object into the stored one (objects merge, lists are replaced) instead of tracking field
//! ownership; there is no admission, no schema validation and no authentication.
//!
//! It also plays the one controller the operator waits for: a Deployment's status reports
//! all its replicas available at once (`observedGeneration` = `generation`), unless
//! [`FakeApiServer::hold_deployments`] says otherwise. The CRDs of helpr are present and
//! Established from the start when created with [`FakeApiServer::start_with_crds`].

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

/// Events kept for watchers; a watch from an older resourceVersion gets `410 Gone` (the
/// client lists again).
const EVENT_LOG_LIMIT: usize = 50_000;

/// Where an object lives: its collection (`<group>/<version>/<plural>`, the core group
/// empty), namespace (empty when cluster-scoped) and name.
type Key = (String, String, String);

struct Event {
    rv: u64,
    collection: String,
    namespace: String,
    /// What selectors look at: the object's name, namespace and labels.
    meta: Value,
    /// The watch event, serialized once (`{"type":..,"object":..}` and a newline) and
    /// shared by every watcher that gets it.
    line: Bytes,
}

#[derive(Default)]
struct Inner {
    objects: BTreeMap<Key, Value>,
    rv: u64,
    events: std::collections::VecDeque<Event>,
    /// Requests served, per `METHOD collection[/subresource]`.
    requests: BTreeMap<String, u64>,
}

struct Shared {
    inner: Mutex<Inner>,
    changed: tokio::sync::watch::Sender<u64>,
    hold_deployments: AtomicBool,
    uid_counter: AtomicU64,
}

/// A running fake apiserver.
pub struct FakeApiServer {
    /// `http://127.0.0.1:<port>`.
    pub url: String,
    shared: Arc<Shared>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

/// What a query string may carry.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct Params {
    watch: Option<String>,
    resource_version: Option<String>,
    label_selector: Option<String>,
    field_selector: Option<String>,
    timeout_seconds: Option<u64>,
    #[serde(default)]
    dry_run: Option<String>,
}

/// The parts of a request path.
#[derive(Debug)]
struct Target {
    collection: String,
    namespace: String,
    name: Option<String>,
    subresource: Option<String>,
}

fn parse_path(path: &str) -> Option<Target> {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group_version, rest) = match parts.as_slice() {
        ["api", version, rest @ ..] => (format!("/{version}"), rest),
        ["apis", group, version, rest @ ..] => (format!("{group}/{version}"), rest),
        _ => return None,
    };
    let (namespace, rest) = match rest {
        ["namespaces", ns, rest @ ..] if !rest.is_empty() => ((*ns).to_owned(), rest),
        _ => (String::new(), rest),
    };
    let (plural, name, subresource) = match rest {
        [plural] => (*plural, None, None),
        [plural, name] => (*plural, Some((*name).to_owned()), None),
        [plural, name, sub] => (*plural, Some((*name).to_owned()), Some((*sub).to_owned())),
        _ => return None,
    };
    Some(Target {
        collection: format!("{group_version}/{plural}"),
        namespace,
        name,
        subresource,
    })
}

fn status_error(code: StatusCode, reason: &str, message: String) -> Response {
    let body = json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code.as_u16(),
    });
    (code, axum::Json(body)).into_response()
}

fn not_found(target: &Target) -> Response {
    status_error(
        StatusCode::NOT_FOUND,
        "NotFound",
        format!(
            "{} \"{}\" not found",
            target.collection,
            target.name.clone().unwrap_or_default()
        ),
    )
}

/// The current time as RFC 3339 UTC with seconds (`2026-12-04T01:02:03Z`).
pub fn now_rfc3339() -> String {
    let now = jiff::Timestamp::now();
    jiff::Timestamp::from_second(now.as_second())
        .map_or_else(|_| now.to_string(), |t| t.to_string())
}

/// RFC 7386 JSON merge patch.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(patch) => {
            if !target.is_object() {
                *target = Value::Object(Map::new());
            }
            if let Value::Object(map) = target {
                for (key, value) in patch {
                    if value.is_null() {
                        map.remove(key);
                    } else {
                        merge_patch(map.entry(key.clone()).or_insert(Value::Null), value);
                    }
                }
            }
        }
        other => *target = other.clone(),
    }
}

fn selector_matches(selector: &str, object: &Value, labels: bool) -> bool {
    selector
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .all(|term| {
            let (key, want, negate) = if let Some((k, v)) = term.split_once("!=") {
                (k, Some(v), true)
            } else if let Some((k, v)) = term.split_once("==") {
                (k, Some(v), false)
            } else if let Some((k, v)) = term.split_once('=') {
                (k, Some(v), false)
            } else {
                (term, None, false)
            };
            let have = if labels {
                object
                    .get("metadata")
                    .and_then(|m| m.get("labels"))
                    .and_then(|l| l.get(key))
                    .and_then(Value::as_str)
            } else {
                // `metadata.name` is the path metadata/name, walked without building a
                // JSON pointer per object (a list scans every object of the collection).
                key.split('.')
                    .try_fold(object, |value, field| value.get(field))
                    .and_then(Value::as_str)
            };
            match (want, negate) {
                (None, _) => have.is_some(),
                (Some(v), false) => have == Some(v),
                (Some(v), true) => have != Some(v),
            }
        })
}

fn matches(params: &Params, object: &Value) -> bool {
    params
        .label_selector
        .as_deref()
        .is_none_or(|s| selector_matches(s, object, true))
        && params
            .field_selector
            .as_deref()
            .is_none_or(|s| selector_matches(s, object, false))
}

fn spec_part(object: &Value) -> Value {
    let mut copy = object.clone();
    if let Some(map) = copy.as_object_mut() {
        map.remove("metadata");
        map.remove("status");
        map.remove("apiVersion");
        map.remove("kind");
    }
    copy
}

impl Inner {
    /// The objects of one collection, in (namespace, name) order.
    fn collection<'a>(&'a self, collection: &'a str) -> impl Iterator<Item = (&'a Key, &'a Value)> {
        self.objects
            .range((collection.to_owned(), String::new(), String::new())..)
            .take_while(move |((c, _, _), _)| c == collection)
    }

    fn next_rv(&mut self) -> u64 {
        self.rv += 1;
        self.rv
    }

    fn record(&mut self, key: &Key, kind: &'static str, object: &Value) {
        let rv = self.rv;
        let meta = json!({"metadata": {
            "name": object.pointer("/metadata/name"),
            "namespace": object.pointer("/metadata/namespace"),
            "labels": object.pointer("/metadata/labels"),
        }});
        self.events.push_back(Event {
            rv,
            collection: key.0.clone(),
            namespace: key.1.clone(),
            meta,
            line: Bytes::from(format!("{}\n", json!({"type": kind, "object": object}))),
        });
        while self.events.len() > EVENT_LOG_LIMIT {
            self.events.pop_front();
        }
    }

    /// Stores `object` under `key` with a new resourceVersion (and the Deployment
    /// controller's status), records the event; removes it instead when it is being
    /// deleted and has no finalizer left.
    fn write(&mut self, shared: &Shared, key: &Key, mut object: Value, created: bool) -> Value {
        if key.0 == "apps/v1/deployments" && !shared.hold_deployments.load(Ordering::SeqCst) {
            let generation = object.pointer("/metadata/generation").cloned();
            let replicas = object
                .pointer("/spec/replicas")
                .and_then(Value::as_i64)
                .unwrap_or(1);
            object["status"] = json!({
                "observedGeneration": generation,
                "replicas": replicas,
                "updatedReplicas": replicas,
                "readyReplicas": replicas,
                "availableReplicas": replicas,
            });
        }
        // Like the apiserver, a write that changes nothing is a no-op: no new
        // resourceVersion, no watch event.
        if let Some(existing) = self.objects.get(key) {
            let mut same = object.clone();
            same["metadata"]["resourceVersion"] = existing["metadata"]["resourceVersion"].clone();
            let deleting = same.pointer("/metadata/deletionTimestamp").is_some();
            let finalizers = same
                .pointer("/metadata/finalizers")
                .and_then(Value::as_array)
                .is_some_and(|f| !f.is_empty());
            if (finalizers || !deleting) && &same == existing {
                return existing.clone();
            }
        }
        let rv = self.next_rv();
        if let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.insert("resourceVersion".into(), rv.to_string().into());
        }
        let deleting = object.pointer("/metadata/deletionTimestamp").is_some();
        let finalizers = object
            .pointer("/metadata/finalizers")
            .and_then(Value::as_array)
            .is_some_and(|f| !f.is_empty());
        if deleting && !finalizers {
            self.remove(key);
            return object;
        }
        self.record(key, if created { "ADDED" } else { "MODIFIED" }, &object);
        self.objects.insert(key.clone(), object.clone());
        object
    }

    /// Removes the object and, transitively, the objects it owns.
    fn remove(&mut self, key: &Key) {
        let Some(object) = self.objects.remove(key) else {
            return;
        };
        self.next_rv();
        let mut gone = object.clone();
        if let Some(meta) = gone.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.insert("resourceVersion".into(), self.rv.to_string().into());
        }
        self.record(key, "DELETED", &gone);
        let uid = object
            .pointer("/metadata/uid")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let dependents: Vec<Key> = self
            .objects
            .iter()
            .filter(|(_, o)| {
                o.pointer("/metadata/ownerReferences")
                    .and_then(Value::as_array)
                    .is_some_and(|refs| {
                        refs.iter()
                            .any(|r| r.get("uid").and_then(Value::as_str) == Some(&uid))
                    })
            })
            .map(|(k, _)| k.clone())
            .collect();
        for dependent in dependents {
            self.remove(&dependent);
        }
    }
}

impl FakeApiServer {
    /// An empty apiserver on a free port of 127.0.0.1.
    pub async fn start() -> anyhow::Result<FakeApiServer> {
        let (changed, _) = tokio::sync::watch::channel(0);
        let shared = Arc::new(Shared {
            inner: Mutex::new(Inner::default()),
            changed,
            hold_deployments: AtomicBool::new(false),
            uid_counter: AtomicU64::new(1),
        });
        let app = Router::new().fallback(handle).with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stopped.await;
                })
                .await;
        });
        Ok(FakeApiServer {
            url,
            shared,
            stop: Some(stop),
            task: Some(task),
        })
    }

    /// An apiserver that already has `crds` (CustomResourceDefinition objects), each
    /// Established.
    pub async fn start_with_crds(crds: &[Value]) -> anyhow::Result<FakeApiServer> {
        let server = Self::start().await?;
        for crd in crds {
            let mut crd = crd.clone();
            crd["apiVersion"] = "apiextensions.k8s.io/v1".into();
            crd["kind"] = "CustomResourceDefinition".into();
            crd["status"] = json!({"conditions": [
                {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts", "message": "no conflicts found"},
                {"type": "Established", "status": "True", "reason": "InitialNamesAccepted", "message": "the initial names have been accepted"},
            ]});
            server.put("apiextensions.k8s.io/v1/customresourcedefinitions", "", crd);
        }
        Ok(server)
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        lock(&self.shared)
    }

    /// Creates or replaces an object directly (as `kubectl apply` would), bumping its
    /// generation when its spec changes. `collection` is `<group>/<version>/<plural>`
    /// (`/v1/secrets` for the core group).
    pub fn put(&self, collection: &str, namespace: &str, object: Value) -> Value {
        let name = object
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let key = (collection.to_owned(), namespace.to_owned(), name);
        let out = {
            let mut inner = self.lock();
            let existing = inner.objects.get(&key).cloned();
            let object = prepare(&self.shared, existing.as_ref(), object, namespace);
            inner.write(&self.shared, &key, object, existing.is_none())
        };
        self.notify();
        out
    }

    /// Deletes an object as a client would (finalizers respected).
    pub fn delete(&self, collection: &str, namespace: &str, name: &str) -> bool {
        let key = (collection.to_owned(), namespace.to_owned(), name.to_owned());
        let found = {
            let mut inner = self.lock();
            delete_object(&self.shared, &mut inner, &key)
        };
        self.notify();
        found
    }

    /// The stored object, if any.
    pub fn get(&self, collection: &str, namespace: &str, name: &str) -> Option<Value> {
        self.lock()
            .objects
            .get(&(collection.to_owned(), namespace.to_owned(), name.to_owned()))
            .cloned()
    }

    /// Every stored object of a collection (all namespaces).
    pub fn list(&self, collection: &str) -> Vec<Value> {
        self.lock()
            .collection(collection)
            .map(|(_, o)| o.clone())
            .collect()
    }

    /// How many objects of a collection satisfy `predicate` (without cloning them).
    pub fn count(&self, collection: &str, predicate: impl Fn(&Value) -> bool) -> usize {
        self.lock()
            .collection(collection)
            .filter(|(_, o)| predicate(o))
            .count()
    }

    /// Requests served so far, per `METHOD collection[/subresource]`.
    pub fn requests(&self) -> BTreeMap<String, u64> {
        self.lock().requests.clone()
    }

    /// While set, Deployments get no status (their pods never become available).
    pub fn hold_deployments(&self, hold: bool) {
        self.shared.hold_deployments.store(hold, Ordering::SeqCst);
    }

    /// A kubeconfig (YAML) that points a client at this server.
    pub fn kubeconfig(&self, namespace: &str) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {}\n\
             contexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\n    namespace: {namespace}\n\
             current-context: fake\nusers:\n- name: fake\n  user: {{}}\n",
            self.url
        )
    }

    fn notify(&self) {
        let rv = self.lock().rv;
        self.shared.changed.send_replace(rv);
    }

    /// Stops serving (open watches end).
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

fn lock(shared: &Shared) -> MutexGuard<'_, Inner> {
    shared.inner.lock().unwrap_or_else(|p| p.into_inner())
}

/// Fills in the metadata a server owns (uid, creation time, generation, namespace) for a
/// create, or carries it over from `existing` for an update, bumping the generation when
/// the spec changed. The status of an update is the existing one.
fn prepare(shared: &Shared, existing: Option<&Value>, mut object: Value, namespace: &str) -> Value {
    if !object.is_object() {
        object = json!({});
    }
    if object.get("metadata").is_none_or(|m| !m.is_object()) {
        object["metadata"] = json!({});
    }
    match existing {
        None => {
            let n = shared.uid_counter.fetch_add(1, Ordering::SeqCst);
            let meta = &mut object["metadata"];
            meta["uid"] = format!("00000000-0000-4000-8000-{n:012x}").into();
            meta["creationTimestamp"] = now_rfc3339().into();
            meta["generation"] = 1.into();
            if !namespace.is_empty() {
                meta["namespace"] = namespace.into();
            }
        }
        Some(old) => {
            let generation = old
                .pointer("/metadata/generation")
                .and_then(Value::as_i64)
                .unwrap_or(1);
            let bumped = if spec_part(old) == spec_part(&object) {
                generation
            } else {
                generation + 1
            };
            for field in ["uid", "creationTimestamp", "namespace", "deletionTimestamp"] {
                if let Some(v) = old.pointer(&format!("/metadata/{field}")) {
                    object["metadata"][field] = v.clone();
                }
            }
            object["metadata"]["generation"] = bumped.into();
            match old.get("status") {
                Some(status) => object["status"] = status.clone(),
                None => {
                    if let Some(map) = object.as_object_mut() {
                        map.remove("status");
                    }
                }
            }
        }
    }
    object
}

fn delete_object(shared: &Shared, inner: &mut Inner, key: &Key) -> bool {
    let Some(object) = inner.objects.get(key).cloned() else {
        return false;
    };
    let has_finalizers = object
        .pointer("/metadata/finalizers")
        .and_then(Value::as_array)
        .is_some_and(|f| !f.is_empty());
    if has_finalizers {
        if object.pointer("/metadata/deletionTimestamp").is_none() {
            let mut object = object;
            object["metadata"]["deletionTimestamp"] = now_rfc3339().into();
            inner.write(shared, key, object, false);
        }
    } else {
        inner.remove(key);
    }
    true
}

async fn handle(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    Query(params): Query<Params>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(target) = parse_path(uri.path()) else {
        return status_error(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("no route for {}", uri.path()),
        );
    };
    {
        let mut inner = lock(&shared);
        let label = match &target.subresource {
            Some(sub) => format!("{method} {}/{sub}", target.collection),
            None => format!("{method} {}", target.collection),
        };
        *inner.requests.entry(label).or_default() += 1;
    }
    let response = match (&method, &target.name) {
        (&Method::GET, None)
            if params
                .watch
                .as_deref()
                .is_some_and(|w| w == "true" || w == "1") =>
        {
            return watch(shared, target, params);
        }
        (&Method::GET, None) => list(&shared, &target, &params),
        (&Method::GET, Some(_)) => get(&shared, &target),
        (&Method::POST, None) => create(&shared, &target, &body),
        (&Method::POST, Some(_)) => subresource_create(&shared, &target, &body),
        (&Method::PATCH, Some(_)) => patch(&shared, &target, &headers, &body, &params),
        (&Method::PUT, Some(_)) => replace(&shared, &target, &body),
        (&Method::DELETE, Some(_)) => {
            let key = key_of(&target);
            let found = {
                let mut inner = lock(&shared);
                delete_object(&shared, &mut inner, &key)
            };
            if found {
                (
                    StatusCode::OK,
                    axum::Json(json!({"kind": "Status", "apiVersion": "v1", "status": "Success"})),
                )
                    .into_response()
            } else {
                not_found(&target)
            }
        }
        _ => status_error(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            format!("{method} is not supported here"),
        ),
    };
    let rv = lock(&shared).rv;
    shared.changed.send_replace(rv);
    response
}

fn key_of(target: &Target) -> Key {
    (
        target.collection.clone(),
        target.namespace.clone(),
        target.name.clone().unwrap_or_default(),
    )
}

fn list(shared: &Shared, target: &Target, params: &Params) -> Response {
    let body = {
        let inner = lock(shared);
        let items: Vec<Value> = inner
            .collection(&target.collection)
            .filter(|((_, ns, _), o)| {
                (target.namespace.is_empty() || ns == &target.namespace) && matches(params, o)
            })
            .map(|(_, o)| o.clone())
            .collect();
        json!({
            "kind": "List",
            "apiVersion": "v1",
            "metadata": {"resourceVersion": inner.rv.to_string()},
            "items": items,
        })
    };
    axum::Json(body).into_response()
}

fn get(shared: &Shared, target: &Target) -> Response {
    let object = lock(shared).objects.get(&key_of(target)).cloned();
    match object {
        Some(object) => axum::Json(object).into_response(),
        None => not_found(target),
    }
}

/// The JSON body; a 400 answer when it is not JSON.
fn parse_body(body: &Bytes) -> Result<Value, Box<Response>> {
    serde_json::from_slice(body).map_err(|e| {
        Box::new(status_error(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            format!("the body is not JSON: {e}"),
        ))
    })
}

fn create(shared: &Shared, target: &Target, body: &Bytes) -> Response {
    let mut object = match parse_body(body) {
        Ok(o) => o,
        Err(r) => return *r,
    };
    let mut inner = lock(shared);
    let name = match object.pointer("/metadata/name").and_then(Value::as_str) {
        Some(name) => name.to_owned(),
        None => {
            let prefix = object
                .pointer("/metadata/generateName")
                .and_then(Value::as_str)
                .unwrap_or("object-")
                .to_owned();
            let name = format!("{prefix}{:x}", inner.rv + 1);
            object["metadata"]["name"] = name.clone().into();
            name
        }
    };
    let key = (
        target.collection.clone(),
        target.namespace.clone(),
        name.clone(),
    );
    if inner.objects.contains_key(&key) {
        return status_error(
            StatusCode::CONFLICT,
            "AlreadyExists",
            format!("{} \"{name}\" already exists", target.collection),
        );
    }
    let object = prepare(shared, None, object, &target.namespace);
    let stored = inner.write(shared, &key, object, true);
    (StatusCode::CREATED, axum::Json(stored)).into_response()
}

fn subresource_create(shared: &Shared, target: &Target, body: &Bytes) -> Response {
    match (target.collection.as_str(), target.subresource.as_deref()) {
        ("/v1/serviceaccounts", Some("token")) => {
            if !lock(shared).objects.contains_key(&key_of(target)) {
                return not_found(target);
            }
            let mut request = match parse_body(body) {
                Ok(o) => o,
                Err(r) => return *r,
            };
            let n = shared.uid_counter.fetch_add(1, Ordering::SeqCst);
            request["status"] = json!({
                "token": format!("fake-service-account-token-{n}"),
                "expirationTimestamp": "2099-01-01T00:00:00Z",
            });
            (StatusCode::CREATED, axum::Json(request)).into_response()
        }
        _ => create(shared, target, body),
    }
}

fn replace(shared: &Shared, target: &Target, body: &Bytes) -> Response {
    let object = match parse_body(body) {
        Ok(o) => o,
        Err(r) => return *r,
    };
    let key = key_of(target);
    let mut inner = lock(shared);
    let Some(existing) = inner.objects.get(&key).cloned() else {
        return not_found(target);
    };
    if let Some(conflict) = stale(&existing, &object, target) {
        return conflict;
    }
    let updated = if target.subresource.as_deref() == Some("status") {
        let mut updated = existing.clone();
        updated["status"] = object.get("status").cloned().unwrap_or(Value::Null);
        updated
    } else {
        prepare(shared, Some(&existing), object, &target.namespace)
    };
    let stored = inner.write(shared, &key, updated, false);
    axum::Json(stored).into_response()
}

/// `409 Conflict` when the body names a resourceVersion that is not the stored one.
fn stale(existing: &Value, body: &Value, target: &Target) -> Option<Response> {
    let want = body
        .pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)?;
    let have = existing
        .pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .unwrap_or_default();
    (want != have).then(|| {
        status_error(
            StatusCode::CONFLICT,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} \"{}\": the object has been modified",
                target.collection,
                target.name.clone().unwrap_or_default()
            ),
        )
    })
}

fn patch(
    shared: &Shared,
    target: &Target,
    headers: &HeaderMap,
    body: &Bytes,
    params: &Params,
) -> Response {
    let content_type = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let patch = match parse_body(body) {
        Ok(p) => p,
        Err(r) => return *r,
    };
    let key = key_of(target);
    let mut inner = lock(shared);
    let existing = inner.objects.get(&key).cloned();
    let status_only = target.subresource.as_deref() == Some("status");
    let apply = content_type.starts_with("application/apply-patch");
    let Some(existing) = existing.or_else(|| (apply && !status_only).then(|| json!({}))) else {
        return not_found(target);
    };
    let creating = existing.pointer("/metadata/uid").is_none();
    if let Some(conflict) = (!creating)
        .then(|| stale(&existing, &patch, target))
        .flatten()
    {
        return conflict;
    }
    let mut updated = existing.clone();
    if content_type.starts_with("application/json-patch") {
        // Like the apiserver, a `test` for null passes on a missing path (kube's finalizer
        // helper tests `/metadata/finalizers` for null before adding the first one).
        let patch = match patch {
            Value::Array(ops) => Value::Array(
                ops.into_iter()
                    .filter(|op| {
                        !(op["op"] == "test"
                            && op["value"].is_null()
                            && op["path"]
                                .as_str()
                                .is_some_and(|p| updated.pointer(p).is_none()))
                    })
                    .collect(),
            ),
            other => other,
        };
        let operations: json_patch::Patch = match serde_json::from_value(patch) {
            Ok(ops) => ops,
            Err(e) => {
                return status_error(
                    StatusCode::BAD_REQUEST,
                    "BadRequest",
                    format!("not a JSON patch: {e}"),
                );
            }
        };
        if let Err(e) = json_patch::patch(&mut updated, &operations) {
            return status_error(
                StatusCode::UNPROCESSABLE_ENTITY,
                "Invalid",
                format!("the JSON patch does not apply: {e}"),
            );
        }
    } else if status_only {
        if let Some(status) = patch.get("status") {
            let mut merged = updated.get("status").cloned().unwrap_or(json!({}));
            if apply {
                // One field manager owns the status: the applied status replaces it.
                merged = status.clone();
            } else {
                merge_patch(&mut merged, status);
            }
            updated["status"] = merged;
        }
    } else {
        let mut patch = patch;
        if let Some(map) = patch.as_object_mut() {
            map.remove("status");
        }
        merge_patch(&mut updated, &patch);
    }
    if params.dry_run.is_some() {
        return axum::Json(updated).into_response();
    }
    let prepared = if status_only {
        updated
    } else {
        let mut prepared = prepare(
            shared,
            (!creating).then_some(&existing),
            updated,
            &target.namespace,
        );
        if let Some(name) = &target.name {
            prepared["metadata"]["name"] = name.clone().into();
        }
        prepared
    };
    let stored = inner.write(shared, &key, prepared, creating);
    axum::Json(stored).into_response()
}

fn watch(shared: Arc<Shared>, target: Target, params: Params) -> Response {
    let from: u64 = params
        .resource_version
        .as_deref()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    {
        let inner = lock(&shared);
        let oldest = inner
            .events
            .front()
            .map_or(inner.rv, |e| e.rv.saturating_sub(1));
        if from < oldest && from != 0 {
            let body = json!({"type": "ERROR", "object": {
                "kind": "Status", "apiVersion": "v1", "status": "Failure",
                "message": format!("too old resource version: {from} ({oldest})"),
                "reason": "Expired", "code": 410,
            }});
            let line = format!("{body}\n");
            return Response::builder()
                .status(StatusCode::OK)
                .header("content-type", "application/json")
                .body(Body::from(line))
                .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response());
        }
    }
    let timeout = Duration::from_secs(params.timeout_seconds.unwrap_or(290).clamp(1, 600));
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, Infallible>>(64);
    let mut changed = shared.changed.subscribe();
    tokio::spawn(async move {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut last = if from == 0 { lock(&shared).rv } else { from };
        loop {
            let lines: Vec<Bytes> = {
                let inner = lock(&shared);
                let start = inner.events.partition_point(|e| e.rv <= last);
                let mut lines = Vec::new();
                for event in inner.events.range(start..) {
                    last = event.rv;
                    if event.collection == target.collection
                        && (target.namespace.is_empty() || event.namespace == target.namespace)
                        && matches(&params, &event.meta)
                    {
                        lines.push(event.line.clone());
                    }
                }
                lines
            };
            for line in lines {
                if tx.send(Ok(line)).await.is_err() {
                    return;
                }
            }
            tokio::select! {
                result = changed.changed() => if result.is_err() { return },
                () = tokio::time::sleep_until(deadline) => return,
                () = tx.closed() => return,
            }
        }
    });
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/json")
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn paths_of_core_group_and_named_groups_parse() {
        let t = parse_path("/api/v1/namespaces/ns/secrets/s").unwrap();
        assert_eq!(
            (
                t.collection.as_str(),
                t.namespace.as_str(),
                t.name.as_deref()
            ),
            ("/v1/secrets", "ns", Some("s"))
        );
        let t = parse_path("/apis/mail.helpr.dev/v1alpha1/tenants").unwrap();
        assert_eq!(t.collection, "mail.helpr.dev/v1alpha1/tenants");
        assert!(t.namespace.is_empty() && t.name.is_none());
        let t = parse_path("/apis/mail.helpr.dev/v1alpha1/namespaces/a/inboxes/b/status").unwrap();
        assert_eq!(t.subresource.as_deref(), Some("status"));
        let t = parse_path("/api/v1/namespaces/helpr").unwrap();
        assert_eq!(
            (t.collection.as_str(), t.name.as_deref()),
            ("/v1/namespaces", Some("helpr"))
        );
        assert!(parse_path("/healthz").is_none());
    }

    #[test]
    fn selectors_match_labels_and_fields() {
        let o =
            json!({"metadata": {"name": "x", "namespace": "n", "labels": {"a": "1", "b": "2"}}});
        assert!(selector_matches("a=1,b", &o, true));
        assert!(!selector_matches("a=2", &o, true));
        assert!(selector_matches("a!=2", &o, true));
        assert!(selector_matches(
            "metadata.name=x,metadata.namespace=n",
            &o,
            false
        ));
        assert!(!selector_matches("metadata.name=y", &o, false));
    }

    #[test]
    fn merge_patch_follows_rfc_7386() {
        let mut t = json!({"a": {"b": 1, "c": 2}, "l": [1, 2]});
        merge_patch(&mut t, &json!({"a": {"b": null, "d": 3}, "l": [3]}));
        assert_eq!(t, json!({"a": {"c": 2, "d": 3}, "l": [3]}));
    }

    #[tokio::test]
    async fn finalizers_hold_a_delete_until_removed_and_owners_take_dependents_along() {
        let server = FakeApiServer::start().await.unwrap();
        let owner = server.put(
            "g/v1/things",
            "ns",
            json!({"metadata": {"name": "o", "finalizers": ["x.dev/f"]}, "spec": {"n": 1}}),
        );
        let uid = owner["metadata"]["uid"].as_str().unwrap().to_owned();
        server.put(
            "/v1/configmaps",
            "ns",
            json!({"metadata": {"name": "c", "ownerReferences": [{"uid": uid}]}}),
        );
        assert!(server.delete("g/v1/things", "ns", "o"));
        let held = server.get("g/v1/things", "ns", "o").unwrap();
        assert!(held["metadata"]["deletionTimestamp"].is_string());
        let mut released = held.clone();
        released["metadata"]["finalizers"] = json!([]);
        server.put("g/v1/things", "ns", released);
        assert!(server.get("g/v1/things", "ns", "o").is_none());
        assert!(server.get("/v1/configmaps", "ns", "c").is_none());
        // A spec change bumps the generation, a metadata change does not.
        let a = server.put(
            "g/v1/things",
            "ns",
            json!({"metadata": {"name": "a"}, "spec": {"n": 1}}),
        );
        assert_eq!(a["metadata"]["generation"], 1);
        let a = server.put(
            "g/v1/things",
            "ns",
            json!({"metadata": {"name": "a", "labels": {"x": "y"}}, "spec": {"n": 1}}),
        );
        assert_eq!(a["metadata"]["generation"], 1);
        let a = server.put(
            "g/v1/things",
            "ns",
            json!({"metadata": {"name": "a"}, "spec": {"n": 2}}),
        );
        assert_eq!(a["metadata"]["generation"], 2);
    }
}
