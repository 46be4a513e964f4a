//! The agent API end to end: `helpr_dataplane::api::serve` on a free port over a real
//! PostgreSQL database (and SQLite), a local KMS and a tantivy index; mail stored through the
//! real import pipeline (parse, strip, sanitize, seal, store, index); access configured
//! through the store's control-API path (`apply_inbox`, `apply_grant`, `delete_grant`, as
//! the control service calls them) from a second store handle, as the control process would;
//! agents' tokens are real RS256 JWTs signed by a test key whose JWKS a local HTTP server
//! serves.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::routing::get;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use reqwest::StatusCode;
use ring::rand::SystemRandom;
use ring::signature::{RSA_PKCS1_SHA256, RsaKeyPair, RsaPublicKeyComponents};
use serde_json::{Value, json};

use helpr_dataplane::api::events::EventPolling;
use helpr_dataplane::api::{AgentVerifier, ApiState, serve};
use helpr_dataplane::config::ApiSettings;
use helpr_dataplane::ids::TenantId;
use helpr_dataplane::keyring::{Keyring, KeyringConfig};
use helpr_dataplane::kms::Kms;
use helpr_dataplane::kms::local::LocalKms;
use helpr_dataplane::search::service::SearchService;
use helpr_dataplane::search::{Mode, SearchIndex, TantivyConfig, TantivyIndex};
use helpr_dataplane::store::{
    ApplyOutcome, ControlMeta, DeletionPolicy, GrantRole, GrantSpec, InboxRecord, InboxSpec,
    NewInbox, PgStore, SqliteStore, Store, SubjectKind, TenantSpec, Visibility, now_ms,
};
use helpr_dataplane::tools::{self, RawMessage};
use helpr_tests::postgres::{TestDatabase, sqlite_url};

const ISSUER: &str = "https://idp.helpr.test/realms/helpdesk";
const AUDIENCE: &str = "helpr-agent-api";
const KID: &str = "agent-key-1";
const SIGNING_KEY: &[u8] = include_bytes!("../../dataplane/tests/data/push_jwt_test_key_a.pk8.der");
const ATTACKER_KEY: &[u8] =
    include_bytes!("../../dataplane/tests/data/push_jwt_test_key_attacker.pk8.der");

// --- tokens -----------------------------------------------------------------------------

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn sign_with(key: &[u8], kid: &str, claims: &Value) -> String {
    let header = json!({"alg": "RS256", "kid": kid, "typ": "JWT"});
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let pair = RsaKeyPair::from_pkcs8(key).unwrap();
    let mut sig = vec![0u8; pair.public().modulus_len()];
    pair.sign(
        &RSA_PKCS1_SHA256,
        &SystemRandom::new(),
        input.as_bytes(),
        &mut sig,
    )
    .unwrap();
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig))
}

fn claims(tenant: &str, agent: &str, groups: &[&str]) -> Value {
    let now = now_secs();
    json!({
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": agent,
        "helpr_tenant": tenant,
        "groups": groups,
        "iat": now,
        "exp": now + 600,
    })
}

fn token(tenant: &str, agent: &str, groups: &[&str]) -> String {
    sign_with(SIGNING_KEY, KID, &claims(tenant, agent, groups))
}

fn jwks() -> Value {
    let pair = RsaKeyPair::from_pkcs8(SIGNING_KEY).unwrap();
    let c = RsaPublicKeyComponents::<Vec<u8>>::from(pair.public());
    json!({"keys": [{
        "kty": "RSA", "alg": "RS256", "use": "sig", "kid": KID,
        "n": URL_SAFE_NO_PAD.encode(&c.n), "e": URL_SAFE_NO_PAD.encode(&c.e),
    }]})
}

// --- mail -------------------------------------------------------------------------------

/// An RFC 822 message with a subject, a body word, a date and (optionally) attachments.
fn eml(subject: &str, body: &str, day: u32, attachments: &[(&str, &str, &[u8])]) -> Vec<u8> {
    let date = format!("Date: Tue, {day:02} Nov 2026 10:00:00 +0000");
    let head = format!(
        "From: Customer <customer@example.org>\r\nTo: support@acme.test\r\nCc: lead@example.org\r\n\
         Subject: {subject}\r\n{date}\r\nMessage-ID: <{}@example.org>\r\nMIME-Version: 1.0\r\n",
        uuid::Uuid::new_v4().simple()
    );
    if attachments.is_empty() {
        return format!(
            "{head}Content-Type: text/html; charset=utf-8\r\n\r\n<p>{body}</p><script>alert(1)</script>\r\n"
        )
        .into_bytes();
    }
    let mut out = format!(
        "{head}Content-Type: multipart/mixed; boundary=\"b0\"\r\n\r\n--b0\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\r\n{body}\r\n"
    );
    for (name, ctype, data) in attachments {
        out.push_str(&format!(
            "--b0\r\nContent-Type: {ctype}; name=\"{name}\"\r\n\
             Content-Disposition: attachment; filename=\"{name}\"\r\n\
             Content-Transfer-Encoding: base64\r\n\r\n{}\r\n",
            base64::engine::general_purpose::STANDARD.encode(data)
        ));
    }
    out.push_str("--b0--\r\n");
    out.into_bytes()
}

// --- harness ----------------------------------------------------------------------------

struct Harness {
    base: String,
    /// The data plane's own handles, to store more mail while the API runs.
    keyring: Arc<Keyring>,
    search: Arc<SearchService>,
    http: reqwest::Client,
    /// The control process's handle on the same database.
    control: Arc<dyn Store>,
    inboxes: std::collections::HashMap<&'static str, String>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<()>>,
    jwks: tokio::task::JoinHandle<()>,
    _db: Option<TestDatabase>,
    _dir: tempfile::TempDir,
}

/// How a harness differs from the default one.
#[derive(Default)]
struct Options {
    polling: EventPolling,
    /// The issuer's keys may be cached for 1 s only (else an hour).
    short_lived_keys: bool,
}

fn meta(name: &str, generation: i64) -> ControlMeta {
    ControlMeta {
        namespace: "helpdesk".into(),
        name: name.into(),
        uid: format!("uid-{name}"),
        generation,
    }
}

impl Harness {
    async fn postgres() -> Harness {
        Self::postgres_with(Options::default()).await
    }

    async fn postgres_with(options: Options) -> Harness {
        let db = TestDatabase::create().await.unwrap();
        let store: Arc<dyn Store> = Arc::new(PgStore::connect(&db.url).await.unwrap());
        let control: Arc<dyn Store> = Arc::new(PgStore::connect(&db.url).await.unwrap());
        Self::start(
            store,
            control,
            Some(db),
            tempfile::tempdir().unwrap(),
            options,
        )
        .await
    }

    async fn sqlite() -> Harness {
        Self::sqlite_with(Options::default()).await
    }

    async fn sqlite_with(options: Options) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let url = sqlite_url(dir.path());
        let store: Arc<dyn Store> = Arc::new(SqliteStore::connect(&url).await.unwrap());
        let control: Arc<dyn Store> = Arc::new(SqliteStore::connect(&url).await.unwrap());
        Self::start(store, control, None, dir, options).await
    }

    async fn start(
        store: Arc<dyn Store>,
        control: Arc<dyn Store>,
        db: Option<TestDatabase>,
        dir: tempfile::TempDir,
        options: Options,
    ) -> Harness {
        let kms: Arc<dyn Kms> = Arc::new(LocalKms::open(dir.path().join("kms")).unwrap());
        let keyring = Arc::new(Keyring::new(kms, store.clone(), KeyringConfig::default()));
        let index: Arc<dyn SearchIndex> =
            Arc::new(TantivyIndex::open(TantivyConfig::new(dir.path().join("index"))).unwrap());
        let search = Arc::new(SearchService::new(keyring.clone(), index, Mode::Blind));

        // Tenants, inboxes and their access settings, as the operator pushes them.
        let mut inboxes = std::collections::HashMap::new();
        for (tenant, display) in [("acme", "Acme"), ("globex", "Globex")] {
            let t = TenantId::new(tenant).unwrap();
            keyring.provision_tenant(&t, display).await.unwrap();
            let spec = TenantSpec {
                display_name: display.into(),
                deletion_policy: DeletionPolicy::Retain,
                search_mode: Mode::Blind,
            };
            assert_eq!(
                control.apply_tenant(&meta(tenant, 1), &spec).await.unwrap(),
                ApplyOutcome::Applied
            );
        }
        let managed = [
            ("org", "acme", Visibility::Org, None),
            ("team", "acme", Visibility::Team, Some("billing")),
            ("restricted", "acme", Visibility::Restricted, None),
            ("globex-org", "globex", Visibility::Org, None),
        ];
        for (name, tenant, visibility, team) in managed {
            let spec = InboxSpec {
                tenant: TenantId::new(tenant).unwrap(),
                address: format!("{name}@{tenant}.test"),
                visibility,
                team: team.map(str::to_owned),
                assignment_limits_visibility: false,
                pubsub_topic: None,
                push_audience: None,
            };
            assert_eq!(
                control.apply_inbox(&meta(name, 1), &spec).await.unwrap(),
                ApplyOutcome::Applied
            );
        }
        // An inbox of the CLI (no Inbox resource).
        store
            .create_inbox(&NewInbox {
                id: helpr_dataplane::ids::new_record_id(),
                tenant_id: TenantId::new("acme").unwrap(),
                address: "cli@acme.test".into(),
                connected_at_ms: now_ms(),
            })
            .await
            .unwrap();

        // Mail, through the real import pipeline.
        let mail: [(&'static str, &str, Vec<Vec<u8>>); 5] = [
            (
                "org",
                "acme",
                vec![
                    eml("Org one", "sharedword orgword", 1, &[]),
                    eml("Org two", "sharedword orgword", 2, &[]),
                    eml("Org three", "sharedword orgword", 3, &[]),
                    eml("Org four", "sharedword orgword", 4, &[]),
                    eml(
                        "Org five with files",
                        "sharedword orgword",
                        5,
                        &[
                            ("Q3 report.pdf", "application/pdf", b"%PDF-1.4 pdf bytes"),
                            ("page.html", "text/html", b"<script>alert(1)</script>"),
                        ],
                    ),
                ],
            ),
            (
                "team",
                "acme",
                vec![eml("Team one", "sharedword teamword", 6, &[])],
            ),
            (
                "restricted",
                "acme",
                vec![eml("Restricted one", "sharedword restrictedword", 7, &[])],
            ),
            (
                "cli",
                "acme",
                vec![eml("Cli one", "sharedword cliword", 8, &[])],
            ),
            (
                "globex-org",
                "globex",
                vec![eml("Globex one", "sharedword globexword", 9, &[])],
            ),
        ];
        for (name, tenant, messages) in mail {
            let t = TenantId::new(tenant).unwrap();
            let inbox: InboxRecord =
                tools::find_inbox(&keyring, &t, &format!("{name}@{tenant}.test"))
                    .await
                    .unwrap();
            let raw: Vec<RawMessage> = messages
                .into_iter()
                .enumerate()
                .map(|(i, bytes)| RawMessage {
                    origin: format!("{name}-{i}"),
                    bytes,
                })
                .collect();
            let report = tools::import(&search, &keyring, &inbox, &raw, |_, _| {})
                .await
                .unwrap();
            assert_eq!(report.stored, raw.len(), "{name}: {report:?}");
            inboxes.insert(name, inbox.id);
        }

        // The issuer's JWKS.
        let jwks_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let jwks_url = format!("http://{}/certs", jwks_listener.local_addr().unwrap());
        let cache_control = if options.short_lived_keys {
            "max-age=1"
        } else {
            "max-age=3600"
        };
        let jwks_app = axum::Router::new().route(
            "/certs",
            get(move || async move {
                (
                    [(axum::http::header::CACHE_CONTROL, cache_control)],
                    axum::Json(jwks()),
                )
            }),
        );
        let jwks_task = tokio::spawn(async move {
            axum::serve(jwks_listener, jwks_app).await.unwrap();
        });

        let verifier = Arc::new(
            AgentVerifier::new(&ApiSettings {
                issuer: ISSUER.into(),
                audience: AUDIENCE.into(),
                jwks_url,
                jwks_min_refetch_interval_secs: if options.short_lived_keys { 1 } else { 30 },
                ..ApiSettings::default()
            })
            .unwrap(),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let state = ApiState::new(keyring.clone(), search.clone(), verifier)
            .with_event_polling(options.polling);
        let server = tokio::spawn(async move {
            serve(state, listener, async move {
                let _ = stopped.await;
            })
            .await
            .unwrap();
        });
        Harness {
            base,
            keyring,
            search,
            http: reqwest::Client::new(),
            control,
            inboxes,
            stop: Some(stop),
            server: Some(server),
            jwks: jwks_task,
            _db: db,
            _dir: dir,
        }
    }

    fn inbox(&self, name: &str) -> &str {
        &self.inboxes[name]
    }

    async fn get_raw(&self, path: &str, token: Option<&str>) -> reqwest::Response {
        let mut req = self.http.get(format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        req.send().await.unwrap()
    }

    async fn get(&self, path: &str, token: &str) -> (StatusCode, Value) {
        let r = self.get_raw(path, Some(token)).await;
        let status = r.status();
        let body = r.json::<Value>().await.unwrap_or(Value::Null);
        (status, body)
    }

    async fn send(&self, method: reqwest::Method, path: &str, token: &str) -> (StatusCode, Value) {
        let r = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        let status = r.status();
        let body = r.json::<Value>().await.unwrap_or(Value::Null);
        (status, body)
    }

    /// The id of the newest conversation of an inbox, as `token` lists it.
    async fn first_conversation(&self, inbox: &str, token: &str) -> Option<String> {
        let (status, page) = self
            .get(
                &format!("/v1/inboxes/{}/conversations", self.inbox(inbox)),
                token,
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{page}");
        page["conversations"][0]["id"].as_str().map(str::to_owned)
    }

    /// Ids of the inboxes `token` lists.
    async fn listed(&self, token: &str) -> Vec<String> {
        let (status, body) = self.get("/v1/inboxes", token).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let mut ids: Vec<String> = body["inboxes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["id"].as_str().unwrap().to_owned())
            .collect();
        ids.sort();
        ids
    }

    fn ids(&self, names: &[&str]) -> Vec<String> {
        let mut ids: Vec<String> = names.iter().map(|n| self.inbox(n).to_owned()).collect();
        ids.sort();
        ids
    }

    async fn conversations_status(&self, inbox: &str, token: &str) -> StatusCode {
        self.get(&format!("/v1/inboxes/{inbox}/conversations"), token)
            .await
            .0
    }

    async fn grant(
        &self,
        name: &str,
        inbox: &str,
        kind: SubjectKind,
        subject: &str,
        role: GrantRole,
        expires_at_ms: Option<i64>,
    ) {
        let spec = GrantSpec {
            inbox_name: inbox.into(),
            subject_kind: kind,
            subject_name: subject.into(),
            role,
            expires_at_ms,
        };
        assert_eq!(
            self.control
                .apply_grant(&meta(name, 1), &spec)
                .await
                .unwrap(),
            ApplyOutcome::Applied
        );
    }

    async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(server) = self.server.take() {
            server.await.unwrap();
        }
    }
}

fn assert_not_found(status: StatusCode, body: &Value) {
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(body["error"]["code"], "not_found", "{body}");
}

// --- cases ------------------------------------------------------------------------------

async fn tokens_that_are_missing_garbage_expired_or_foreign_get_401(h: Harness) {
    let now = now_secs();
    let mut expired = claims("acme", "ann", &[]);
    expired["iat"] = json!(now - 7200);
    expired["exp"] = json!(now - 3600);
    let mut wrong_issuer = claims("acme", "ann", &[]);
    wrong_issuer["iss"] = json!("https://idp.evil.test/realms/helpdesk");
    let mut wrong_audience = claims("acme", "ann", &[]);
    wrong_audience["aud"] = json!("another-api");
    let mut no_tenant = claims("acme", "ann", &[]);
    no_tenant.as_object_mut().unwrap().remove("helpr_tenant");
    let unsigned = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(r#"{"alg":"none","kid":"agent-key-1"}"#),
        URL_SAFE_NO_PAD.encode(claims("acme", "ann", &[]).to_string())
    );
    let bad: Vec<(&str, Option<String>)> = vec![
        ("missing", None),
        ("garbage", Some("not-a-jwt".into())),
        ("expired", Some(sign_with(SIGNING_KEY, KID, &expired))),
        (
            "wrong issuer",
            Some(sign_with(SIGNING_KEY, KID, &wrong_issuer)),
        ),
        (
            "wrong audience",
            Some(sign_with(SIGNING_KEY, KID, &wrong_audience)),
        ),
        ("no tenant", Some(sign_with(SIGNING_KEY, KID, &no_tenant))),
        (
            "attacker key",
            Some(sign_with(ATTACKER_KEY, KID, &claims("acme", "ann", &[]))),
        ),
        (
            "unknown kid",
            Some(sign_with(
                ATTACKER_KEY,
                "attacker",
                &claims("acme", "ann", &[]),
            )),
        ),
        ("alg none", Some(unsigned)),
    ];
    let org = h.inbox("org").to_owned();
    for path in [
        "/v1/inboxes".to_owned(),
        format!("/v1/inboxes/{org}/conversations"),
        "/v1/search?q=sharedword".to_owned(),
    ] {
        for (what, t) in &bad {
            let r = h.get_raw(&path, t.as_deref()).await;
            assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{what} on {path}");
            let www = r.headers()["www-authenticate"].to_str().unwrap().to_owned();
            assert!(www.starts_with("Bearer"), "{what}: {www}");
            let body: Value = r.json().await.unwrap();
            assert_eq!(body["error"]["code"], "unauthenticated", "{what}");
            let text = body.to_string();
            assert!(!text.contains("ann") && !text.contains("acme"), "{text}");
        }
    }
    // Another scheme is no bearer token either.
    let r = h
        .http
        .get(format!("{}/v1/inboxes", h.base))
        .header(
            "authorization",
            format!("Basic {}", token("acme", "ann", &[])),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    // And the genuine token works.
    let (status, _) = h.get("/v1/inboxes", &token("acme", "ann", &[])).await;
    assert_eq!(status, StatusCode::OK);
    h.shutdown().await;
}

async fn org_team_and_restricted_visibility_decide_who_reads_what(h: Harness) {
    let ann = token("acme", "ann", &[]);
    let bob = token("acme", "bob", &["billing"]);
    assert_eq!(h.listed(&ann).await, h.ids(&["org"]));
    assert_eq!(h.listed(&bob).await, h.ids(&["org", "team"]));
    let (_, body) = h.get("/v1/inboxes", &bob).await;
    let team = body["inboxes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["id"] == h.inbox("team"))
        .unwrap()
        .clone();
    assert_eq!(team["visibility"], "team");
    assert_eq!(team["team"], "billing");
    assert_eq!(team["role"], "read");
    assert_eq!(team["address"], "team@acme.test");

    assert_eq!(
        h.conversations_status(h.inbox("org"), &ann).await,
        StatusCode::OK
    );
    assert_eq!(
        h.conversations_status(h.inbox("team"), &bob).await,
        StatusCode::OK
    );
    // Not readable answers exactly like not existing.
    let (s_team, b_team) = h
        .get(
            &format!("/v1/inboxes/{}/conversations", h.inbox("team")),
            &ann,
        )
        .await;
    let (s_none, b_none) = h
        .get(
            "/v1/inboxes/00000000-0000-4000-8000-000000000000/conversations",
            &ann,
        )
        .await;
    assert_not_found(s_team, &b_team);
    assert_eq!((s_team, &b_team), (s_none, &b_none));
    for name in ["restricted", "cli"] {
        for t in [&ann, &bob] {
            assert_eq!(
                h.conversations_status(h.inbox(name), t).await,
                StatusCode::NOT_FOUND,
                "{name}"
            );
        }
    }
    h.shutdown().await;
}

async fn grants_for_an_agent_or_its_team_open_a_restricted_inbox(h: Harness) {
    let ann = token("acme", "ann", &[]);
    let carol = token("acme", "carol", &["admins"]);
    let dave = token("acme", "dave", &["sales"]);
    h.grant(
        "ann-restricted",
        "restricted",
        SubjectKind::Agent,
        "ann",
        GrantRole::Reply,
        None,
    )
    .await;
    h.grant(
        "admins-restricted",
        "restricted",
        SubjectKind::Team,
        "admins",
        GrantRole::Configure,
        Some(now_ms() + 3_600_000),
    )
    .await;
    assert_eq!(h.listed(&ann).await, h.ids(&["org", "restricted"]));
    assert_eq!(h.listed(&carol).await, h.ids(&["org", "restricted"]));
    assert_eq!(h.listed(&dave).await, h.ids(&["org"]));
    let (_, body) = h.get("/v1/inboxes", &carol).await;
    let role = body["inboxes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["id"] == h.inbox("restricted"))
        .unwrap()["role"]
        .clone();
    assert_eq!(role, "configure");
    let (status, page) = h
        .get(
            &format!("/v1/inboxes/{}/conversations", h.inbox("restricted")),
            &ann,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert_eq!(
        page["conversations"][0]["latest"]["subject"],
        "Restricted one"
    );
    assert_eq!(
        h.conversations_status(h.inbox("restricted"), &dave).await,
        StatusCode::NOT_FOUND
    );
    h.shutdown().await;
}

async fn an_expired_grant_is_denied_by_the_clock_without_any_revocation(h: Harness) {
    let ann = token("acme", "ann", &[]);
    let expires = now_ms() + 1_500;
    h.grant(
        "ann-short",
        "restricted",
        SubjectKind::Agent,
        "ann",
        GrantRole::Reply,
        Some(expires),
    )
    .await;
    assert_eq!(
        h.conversations_status(h.inbox("restricted"), &ann).await,
        StatusCode::OK
    );
    let wait = u64::try_from(expires - now_ms()).unwrap_or(0) + 50;
    tokio::time::sleep(Duration::from_millis(wait)).await;
    assert_eq!(
        h.conversations_status(h.inbox("restricted"), &ann).await,
        StatusCode::NOT_FOUND
    );
    assert_eq!(h.listed(&ann).await, h.ids(&["org"]));
    let (_, hits) = h.get("/v1/search?q=restrictedword", &ann).await;
    assert_eq!(hits["hits"], json!([]), "{hits}");
    h.shutdown().await;
}

async fn a_revoked_grant_is_denied_on_the_very_next_call(h: Harness) {
    let ann = token("acme", "ann", &[]);
    h.grant(
        "ann-revoke",
        "restricted",
        SubjectKind::Agent,
        "ann",
        GrantRole::Reply,
        None,
    )
    .await;
    let (status, page) = h
        .get(
            &format!("/v1/inboxes/{}/conversations", h.inbox("restricted")),
            &ann,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let conversation = page["conversations"][0]["id"].as_str().unwrap().to_owned();
    let message = page["conversations"][0]["latest"]["message_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (_, hits) = h.get("/v1/search?q=restrictedword", &ann).await;
    assert_eq!(hits["hits"].as_array().unwrap().len(), 1, "{hits}");

    // Revoked by the control process; no wait of any kind before the next calls.
    assert_eq!(
        h.control
            .delete_grant(&meta("ann-revoke", 1))
            .await
            .unwrap(),
        ApplyOutcome::Applied
    );
    assert_eq!(
        h.conversations_status(h.inbox("restricted"), &ann).await,
        StatusCode::NOT_FOUND
    );
    let (s, b) = h
        .get(&format!("/v1/conversations/{conversation}/messages"), &ann)
        .await;
    assert_not_found(s, &b);
    let (s, b) = h
        .get(&format!("/v1/messages/{message}/attachments/0"), &ann)
        .await;
    assert_not_found(s, &b);
    let (_, hits) = h.get("/v1/search?q=restrictedword", &ann).await;
    assert_eq!(hits["hits"], json!([]), "{hits}");
    assert_eq!(h.listed(&ann).await, h.ids(&["org"]));
    h.shutdown().await;
}

async fn another_tenants_token_cannot_reach_an_inbox_by_id(h: Harness) {
    let acme = token("acme", "ann", &[]);
    let globex = token("globex", "ann", &[]);
    assert_eq!(h.listed(&globex).await, h.ids(&["globex-org"]));
    let (_, page) = h
        .get(
            &format!("/v1/inboxes/{}/conversations", h.inbox("org")),
            &acme,
        )
        .await;
    let conversation = page["conversations"][0]["id"].as_str().unwrap().to_owned();
    let message = page["conversations"][0]["latest"]["message_id"]
        .as_str()
        .unwrap()
        .to_owned();
    for path in [
        format!("/v1/inboxes/{}/conversations", h.inbox("org")),
        format!("/v1/conversations/{conversation}/messages"),
        format!("/v1/messages/{message}/attachments/0"),
        format!("/v1/search?q=orgword&inbox={}", h.inbox("org")),
    ] {
        let (s, b) = h.get(&path, &globex).await;
        assert_not_found(s, &b);
    }
    let (_, hits) = h.get("/v1/search?q=sharedword", &globex).await;
    let hits = hits["hits"].as_array().unwrap();
    assert_eq!(hits.len(), 1);
    assert_eq!(hits[0]["inbox_id"], h.inbox("globex-org"));
    h.shutdown().await;
}

async fn search_returns_only_hits_of_readable_inboxes(h: Harness) {
    let ann = token("acme", "ann", &[]);
    let bob = token("acme", "bob", &["billing"]);
    let inboxes_of = |v: &Value| -> Vec<String> {
        let mut ids: Vec<String> = v["hits"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| h["inbox_id"].as_str().unwrap().to_owned())
            .collect();
        ids.sort();
        ids.dedup();
        ids
    };
    let (status, hits) = h.get("/v1/search?q=sharedword&limit=100", &ann).await;
    assert_eq!(status, StatusCode::OK, "{hits}");
    assert_eq!(inboxes_of(&hits), h.ids(&["org"]));
    assert_eq!(hits["hits"].as_array().unwrap().len(), 5);
    assert_eq!(hits["hits"][0]["subject"], "Org five with files");
    let (_, hits) = h.get("/v1/search?q=sharedword&limit=100", &bob).await;
    assert_eq!(inboxes_of(&hits), h.ids(&["org", "team"]));
    for word in ["restrictedword", "cliword", "globexword"] {
        let (_, hits) = h.get(&format!("/v1/search?q={word}"), &bob).await;
        assert_eq!(hits["hits"], json!([]), "{word}");
    }
    let (status, hits) = h
        .get(
            &format!("/v1/search?q=sharedword&inbox={}", h.inbox("team")),
            &bob,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(inboxes_of(&hits), h.ids(&["team"]));
    let (s, b) = h
        .get(
            &format!("/v1/search?q=sharedword&inbox={}", h.inbox("restricted")),
            &bob,
        )
        .await;
    assert_not_found(s, &b);
    // Pages of search results.
    let (_, first) = h.get("/v1/search?q=orgword&limit=3", &ann).await;
    assert_eq!(first["hits"].as_array().unwrap().len(), 3);
    let next = first["next"].as_str().unwrap();
    let (_, second) = h
        .get(&format!("/v1/search?q=orgword&limit=3&cursor={next}"), &ann)
        .await;
    assert_eq!(second["hits"].as_array().unwrap().len(), 2);
    // Malformed input is a 400 that does not echo the query.
    let (s, b) = h.get("/v1/search?q=%22unterminated", &ann).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{b}");
    assert!(!b.to_string().contains("unterminated"), "{b}");
    let (s, _) = h.get("/v1/search", &ann).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s, _) = h.get("/v1/search?q=x&cursor=zzz", &ann).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    h.shutdown().await;
}

async fn conversations_page_newest_first_with_opaque_cursors(h: Harness) {
    let ann = token("acme", "ann", &[]);
    let org = h.inbox("org").to_owned();
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let path = match &cursor {
            None => format!("/v1/inboxes/{org}/conversations?limit=2"),
            Some(c) => format!("/v1/inboxes/{org}/conversations?limit=2&cursor={c}"),
        };
        let (status, page) = h.get(&path, &ann).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        pages += 1;
        for c in page["conversations"].as_array().unwrap() {
            seen.push((
                c["last_message_at_ms"].as_i64().unwrap(),
                c["latest"]["subject"].as_str().unwrap().to_owned(),
            ));
            assert_eq!(c["message_count"], 1);
            assert_eq!(c["inbox_id"], org);
            assert!(
                c["latest"]["from"]
                    .as_str()
                    .unwrap()
                    .contains("customer@example.org"),
                "{c}"
            );
        }
        match page["next"].as_str() {
            Some(n) => cursor = Some(n.to_owned()),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    let subjects: Vec<&str> = seen.iter().map(|(_, s)| s.as_str()).collect();
    assert_eq!(
        subjects,
        vec![
            "Org five with files",
            "Org four",
            "Org three",
            "Org two",
            "Org one"
        ]
    );
    assert!(seen.windows(2).all(|w| w[0].0 >= w[1].0));
    for bad in [
        "limit=0",
        "limit=101",
        "limit=x",
        "cursor=AAAA",
        "cursor=%%",
    ] {
        let (s, b) = h
            .get(&format!("/v1/inboxes/{org}/conversations?{bad}"), &ann)
            .await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{bad}: {b}");
        assert_eq!(b["error"]["code"], "invalid_argument");
    }
    h.shutdown().await;
}

async fn messages_are_decrypted_and_attachments_served_as_safe_downloads(h: Harness) {
    let ann = token("acme", "ann", &[]);
    let org = h.inbox("org").to_owned();
    let (_, page) = h
        .get(&format!("/v1/inboxes/{org}/conversations?limit=1"), &ann)
        .await;
    let conversation = page["conversations"][0]["id"].as_str().unwrap().to_owned();
    let r = h
        .get_raw(
            &format!("/v1/conversations/{conversation}/messages"),
            Some(&ann),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    for (name, value) in helpr_dataplane::api::SECURITY_HEADERS {
        assert_eq!(r.headers()[name], value, "{name}");
    }
    let body: Value = r.json().await.unwrap();
    let m = &body["messages"][0];
    assert_eq!(m["subject"], "Org five with files");
    assert!(
        m["from"].as_str().unwrap().contains("customer@example.org"),
        "{m}"
    );
    assert!(
        m["to"].as_str().unwrap().contains("support@acme.test"),
        "{m}"
    );
    assert!(
        m["cc"].as_str().unwrap().contains("lead@example.org"),
        "{m}"
    );
    assert!(m["text"].as_str().unwrap().contains("orgword"), "{m}");
    let atts = m["attachments"].as_array().unwrap();
    assert_eq!(atts.len(), 2, "{m}");
    assert_eq!(atts[0]["name"], "Q3 report.pdf");
    assert!(
        atts[0]["content_type"]
            .as_str()
            .unwrap()
            .starts_with("application/pdf"),
        "{m}"
    );
    assert_eq!(atts[0]["size_bytes"], 18);
    let message = m["id"].as_str().unwrap().to_owned();
    let ordinal = |i: usize| atts[i]["ordinal"].as_u64().unwrap();

    let r = h
        .get_raw(
            &format!("/v1/messages/{message}/attachments/{}", ordinal(0)),
            Some(&ann),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["content-type"], "application/pdf");
    let disposition = r.headers()["content-disposition"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        disposition.starts_with("attachment; filename=\""),
        "{disposition}"
    );
    assert!(
        disposition.contains("filename=\"Q3 report.pdf\""),
        "{disposition}"
    );
    assert_eq!(r.headers()["x-content-type-options"], "nosniff");
    assert_eq!(r.headers()["cache-control"], "no-store");
    assert_eq!(r.bytes().await.unwrap().as_ref(), b"%PDF-1.4 pdf bytes");

    // An HTML attachment is a download of opaque bytes, never a page.
    let r = h
        .get_raw(
            &format!("/v1/messages/{message}/attachments/{}", ordinal(1)),
            Some(&ann),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["content-type"], "application/octet-stream");
    assert!(
        r.headers()["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("sandbox")
    );

    for path in [
        format!("/v1/messages/{message}/attachments/9"),
        format!("/v1/messages/{message}/attachments/x"),
        "/v1/messages/nope/attachments/0".to_owned(),
        "/v1/conversations/nope/messages".to_owned(),
        "/v1/no-such-route".to_owned(),
    ] {
        let (s, b) = h.get(&path, &ann).await;
        assert_not_found(s, &b);
    }

    // An HTML-only message: the sanitized HTML, no script.
    let (_, page) = h
        .get(&format!("/v1/inboxes/{org}/conversations?limit=2"), &ann)
        .await;
    let second = page["conversations"][1]["id"].as_str().unwrap().to_owned();
    let (_, body) = h
        .get(&format!("/v1/conversations/{second}/messages"), &ann)
        .await;
    let html = body["messages"][0]["html"].as_str().unwrap();
    assert!(html.contains("orgword"), "{html}");
    assert!(!html.contains("<script"), "{html}");
    h.shutdown().await;
}

async fn health_readiness_and_metrics_need_no_token(h: Harness) {
    for (path, want) in [("/healthz", "ok"), ("/readyz", "ready")] {
        let r = h.get_raw(path, None).await;
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()["x-content-type-options"], "nosniff");
        assert_eq!(r.text().await.unwrap(), want);
    }
    let _ = h.get_raw("/v1/inboxes", None).await;
    let r = h.get_raw("/metrics", None).await;
    assert_eq!(r.status(), StatusCode::OK);
    let text = r.text().await.unwrap();
    assert!(
        text.contains("helpr_api_requests_total{outcome=\"unauthenticated\"}"),
        "{text}"
    );
    h.shutdown().await;
}

async fn a_conversation_deleted_by_a_replier_vanishes_at_once_and_can_be_restored(h: Harness) {
    let ann = token("acme", "ann", &[]);
    let carol = token("acme", "carol", &[]);
    h.grant(
        "carol-reply",
        "restricted",
        SubjectKind::Agent,
        "carol",
        GrantRole::Reply,
        None,
    )
    .await;
    let conversation = h.first_conversation("restricted", &carol).await.unwrap();
    let (_, hits) = h.get("/v1/search?q=restrictedword", &carol).await;
    assert_eq!(hits["hits"].as_array().unwrap().len(), 1, "{hits}");

    // Someone who cannot read the inbox gets 404; a reader without a grant gets 403.
    let path = format!("/v1/conversations/{conversation}");
    let (s, b) = h.send(reqwest::Method::DELETE, &path, &ann).await;
    assert_not_found(s, &b);
    let org = h.first_conversation("org", &ann).await.unwrap();
    let (s, b) = h
        .send(
            reqwest::Method::DELETE,
            &format!("/v1/conversations/{org}"),
            &ann,
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{b}");
    assert_eq!(
        h.first_conversation("org", &ann).await.as_deref(),
        Some(org.as_str())
    );

    // The replier deletes it: gone from the list, its messages and search before the answer.
    let (s, b) = h.send(reqwest::Method::DELETE, &path, &carol).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert!(b["messages"].as_u64().unwrap() >= 1, "{b}");
    assert_ne!(
        h.first_conversation("restricted", &carol).await.as_deref(),
        Some(conversation.as_str())
    );
    let (s, b) = h.get(&format!("{path}/messages"), &carol).await;
    assert_not_found(s, &b);
    let (_, hits) = h.get("/v1/search?q=restrictedword", &carol).await;
    assert_eq!(hits["hits"].as_array().unwrap().len(), 0, "{hits}");
    // Deleting again finds nothing to delete.
    let (s, b) = h.send(reqwest::Method::DELETE, &path, &carol).await;
    assert_not_found(s, &b);

    // Restored within the grace period: back in the list with its messages.
    let (s, b) = h
        .send(reqwest::Method::POST, &format!("{path}/restore"), &ann)
        .await;
    assert_not_found(s, &b);
    let (s, b) = h
        .send(reqwest::Method::POST, &format!("{path}/restore"), &carol)
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert!(b["messages"].as_u64().unwrap() >= 1, "{b}");
    assert_eq!(b["expired"], 0, "{b}");
    assert_eq!(
        h.first_conversation("restricted", &carol).await.as_deref(),
        Some(conversation.as_str())
    );
    let (s, b) = h.get(&format!("{path}/messages"), &carol).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    h.shutdown().await;
}

// --- live events ------------------------------------------------------------------------

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

impl Harness {
    /// Stores one message in the named inbox through the import pipeline.
    /// Whether the database wakes live-event readers (PostgreSQL) rather than their polling.
    fn wakes_feeds(&self) -> bool {
        self._db.is_some()
    }

    async fn deliver(&self, name: &str, tenant: &str, subject: &str, day: u32) {
        let t = TenantId::new(tenant).unwrap();
        let inbox = tools::find_inbox(&self.keyring, &t, &format!("{name}@{tenant}.test"))
            .await
            .unwrap();
        let raw = [RawMessage {
            origin: subject.to_owned(),
            bytes: eml(subject, "liveword", day, &[]),
        }];
        let report = tools::import(&self.search, &self.keyring, &inbox, &raw, |_, _| {})
            .await
            .unwrap();
        assert_eq!(report.stored, 1);
    }

    /// Opens `/v1/events` (with `query`) as the holder of `token`.
    async fn events(
        &self,
        token: Option<&str>,
        query: &str,
    ) -> Result<Socket, tokio_tungstenite::tungstenite::Error> {
        let headers: Vec<(&'static str, String)> = token
            .map(|t| vec![("authorization", format!("Bearer {t}"))])
            .unwrap_or_default();
        self.events_with(&headers, query)
            .await
            .map(|(socket, _)| socket)
    }

    /// Opens `/v1/events` with these request headers; also returns the subprotocol the
    /// server selected.
    async fn events_with(
        &self,
        headers: &[(&'static str, String)],
        query: &str,
    ) -> Result<(Socket, Option<String>), tokio_tungstenite::tungstenite::Error> {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
        let url = format!("{}/v1/events{query}", self.base.replacen("http", "ws", 1));
        let mut request = url.into_client_request().unwrap();
        for (name, value) in headers {
            request.headers_mut().append(*name, value.parse().unwrap());
        }
        tokio_tungstenite::connect_async(request)
            .await
            .map(|(socket, response)| {
                let protocol = response
                    .headers()
                    .get("sec-websocket-protocol")
                    .map(|v| v.to_str().unwrap().to_owned());
                (socket, protocol)
            })
    }
}

/// The next event frame (pings and pongs skipped), within 10 s.
/// The close frame the server ends the socket with (within 20 s), skipping other frames.
async fn next_close(socket: &mut Socket) -> tokio_tungstenite::tungstenite::protocol::CloseFrame {
    use futures::StreamExt as _;
    use tokio_tungstenite::tungstenite::Message;
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(20), socket.next())
            .await
            .expect("closed within 20 s");
        match frame {
            Some(Ok(Message::Close(c))) => return c.expect("a close frame with a code"),
            Some(Ok(_)) => continue,
            other => panic!("{other:?}"),
        }
    }
}

async fn next_event(socket: &mut Socket) -> Value {
    use futures::StreamExt as _;
    use tokio_tungstenite::tungstenite::Message;
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(10), socket.next())
            .await
            .expect("an event within 10 s")
            .expect("the socket is open")
            .unwrap();
        match frame {
            Message::Text(text) => return serde_json::from_str(&text).unwrap(),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("unexpected frame {other:?}"),
        }
    }
}

async fn live_events_reach_only_agents_who_may_read_their_inbox(h: Harness) {
    use helpr_dataplane::store::{DeleteReason, Deletion};
    let ann = token("acme", "ann", &[]);
    // Without a token there is no socket.
    match h.events(None, "").await {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => {
            assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        }
        other => panic!("{:?}", other.map(|_| ())),
    }
    match h.events(Some(&ann), "?after=-3").await {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => {
            assert_eq!(r.status(), StatusCode::BAD_REQUEST);
        }
        other => panic!("{:?}", other.map(|_| ())),
    }

    // A plain request (no upgrade) gets the API's error shape, after authentication.
    let plain = h.get_raw("/v1/events", Some(&ann)).await;
    assert_eq!(plain.status(), StatusCode::BAD_REQUEST);
    let body: Value = plain.json().await.unwrap();
    assert_eq!(body["error"]["code"], "invalid_argument", "{body}");
    assert_eq!(
        h.get_raw("/v1/events", None).await.status(),
        StatusCode::UNAUTHORIZED
    );

    h.grant(
        "ann-live",
        "restricted",
        SubjectKind::Agent,
        "ann",
        GrantRole::Reply,
        None,
    )
    .await;
    let mut socket = h.events(Some(&ann), "").await.unwrap();
    // Only what happens from now on: the harness's mail is not replayed.
    h.deliver("org", "acme", "Live org one", 20).await;
    let e = next_event(&mut socket).await;
    assert_eq!(e["type"], "message.stored", "{e}");
    assert_eq!(e["inbox_id"], h.inbox("org"));
    let first_seq = e["seq"].as_i64().unwrap();
    let org_conversation = e["conversation_id"].as_str().unwrap().to_owned();
    assert!(e["message_id"].is_string());
    // Ids only: nothing of the message is in the frame.
    assert!(!e.to_string().contains("Live org"), "{e}");

    // The team inbox (ann is not in billing) and another tenant's inbox stay silent; the
    // granted restricted inbox is heard.
    h.deliver("team", "acme", "Live team", 21).await;
    h.deliver("globex-org", "globex", "Live globex", 22).await;
    h.deliver("restricted", "acme", "Live restricted", 23).await;
    let e = next_event(&mut socket).await;
    assert_eq!(e["inbox_id"], h.inbox("restricted"), "{e}");

    // Revoked: from the next batch on, the restricted inbox is silent.
    assert_eq!(
        h.control.delete_grant(&meta("ann-live", 1)).await.unwrap(),
        ApplyOutcome::Applied
    );
    h.deliver("restricted", "acme", "Live restricted two", 24)
        .await;
    h.control
        .soft_delete_conversation(
            &TenantId::new("acme").unwrap(),
            &org_conversation,
            &Deletion {
                actor: "agent-7".into(),
                reason: DeleteReason::User,
                at_ms: now_ms(),
            },
        )
        .await
        .unwrap();
    let e = next_event(&mut socket).await;
    assert_eq!(e["type"], "conversation.deleted", "{e}");
    assert_eq!(e["conversation_id"], org_conversation.as_str());
    assert!(e.get("message_id").is_none(), "{e}");
    let last_seq = e["seq"].as_i64().unwrap();
    assert!(last_seq > first_seq + 3, "{first_seq} {last_seq}");
    drop(socket);

    // Resuming after an event replays what followed it, still access-checked: of the
    // events after the first, ann may read the restricted message's (as of now: no) and
    // the deletion.
    let mut again = h
        .events(Some(&ann), &format!("?after={first_seq}"))
        .await
        .unwrap();
    let e = next_event(&mut again).await;
    assert_eq!(e["type"], "conversation.deleted", "{e}");
    assert_eq!(e["seq"], last_seq);
    drop(again);

    // A token that expires while the socket is open closes it (within the recheck period).
    let now = now_secs();
    let mut short = claims("acme", "ann", &[]);
    short["iat"] = json!(now - 120);
    // Inside the 60 s leeway now, outside it in about 3 s.
    short["exp"] = json!(now - 57);
    let mut expiring = h
        .events(Some(&sign_with(SIGNING_KEY, KID, &short)), "")
        .await
        .unwrap();
    let close = next_close(&mut expiring).await;
    assert_eq!(u16::from(close.code), 1008);
    assert_eq!(close.reason.as_str(), "token expired");
    h.shutdown().await;
}

/// Browsers cannot set headers on a WebSocket: they name the `helpr.v1` subprotocol and
/// carry the token in a `bearer.<token>` entry, which is checked like the header.
async fn live_events_take_a_browser_token_from_the_subprotocols(h: Harness) {
    let ann = token("acme", "ann", &[]);
    let protocols = |value: String| vec![("sec-websocket-protocol", value)];
    let (mut socket, selected) = h
        .events_with(&protocols(format!("helpr.v1, bearer.{ann}")), "")
        .await
        .unwrap();
    assert_eq!(selected.as_deref(), Some("helpr.v1"));
    h.deliver("org", "acme", "Live browser", 25).await;
    let e = next_event(&mut socket).await;
    assert_eq!(e["inbox_id"], h.inbox("org"), "{e}");
    drop(socket);

    let unauthorized =
        |r: Result<(Socket, Option<String>), tokio_tungstenite::tungstenite::Error>| match r {
            Err(tokio_tungstenite::tungstenite::Error::Http(r)) => {
                assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
            }
            other => panic!("{:?}", other.map(|(_, p)| p)),
        };
    // Without the subprotocol, with two tokens, or a bad one: 401.
    unauthorized(h.events_with(&protocols(format!("bearer.{ann}")), "").await);
    unauthorized(
        h.events_with(
            &protocols(format!("helpr.v1, bearer.{ann}, bearer.{ann}")),
            "",
        )
        .await,
    );
    unauthorized(
        h.events_with(&protocols("helpr.v1, bearer.garbage".into()), "")
            .await,
    );
    // A bad Authorization header is not overridden by a good subprotocol token.
    let mut both = protocols(format!("helpr.v1, bearer.{ann}"));
    both.push(("authorization", "Basic Zm9vOmJhcg==".into()));
    unauthorized(h.events_with(&both, "").await);
    // A token in the URL is not a token.
    unauthorized(h.events_with(&[], &format!("?access_token={ann}")).await);
    h.shutdown().await;
}

/// The store is read once per tenant and poll, however many sockets are open: six sockets
/// of two tenants make two readers, and every socket hears each event.
async fn live_events_share_one_reader_per_tenant(h: Harness) {
    let feed_reads = || async {
        let text = h.get_raw("/metrics", None).await.text().await.unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix("helpr_api_event_feed_reads_total "))
            .map(|v| v.trim().parse::<u64>().unwrap())
            .unwrap_or(0)
    };
    let ann = token("acme", "ann", &[]);
    let mut sockets = Vec::new();
    for _ in 0..5 {
        sockets.push(h.events(Some(&ann), "").await.unwrap());
    }
    let _globex = h
        .events(Some(&token("globex", "gail", &[])), "")
        .await
        .unwrap();
    let before = feed_reads().await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let reads = feed_reads().await - before;
    if h.wakes_feeds() {
        // Woken by NOTIFY, polling every 5 s: at most the first reads and the listener's.
        assert!(reads <= 6, "{reads} reads in 2 s");
    } else {
        // Two readers at 4 reads a second: about 16 (one reader per socket would be about
        // 48).
        assert!((1..=24).contains(&reads), "{reads} reads in 2 s");
    }
    h.deliver("org", "acme", "Live shared", 26).await;
    let mut conversation = String::new();
    for socket in &mut sockets {
        let e = next_event(socket).await;
        assert_eq!(e["inbox_id"], h.inbox("org"), "{e}");
        conversation = e["conversation_id"].as_str().unwrap().to_owned();
    }

    // A burst of 600 events (more than one read of 500 when the writes outrun a poll)
    // arrives whole and in order.
    use helpr_dataplane::store::{DeleteReason, Deletion};
    let acme = TenantId::new("acme").unwrap();
    for _ in 0..300 {
        let deletion = Deletion {
            actor: "agent-7".into(),
            reason: DeleteReason::User,
            at_ms: now_ms(),
        };
        h.control
            .soft_delete_conversation(&acme, &conversation, &deletion)
            .await
            .unwrap();
        h.control
            .restore_conversation(&acme, &conversation, "agent-7", 0, now_ms())
            .await
            .unwrap();
    }
    let mut seqs = Vec::new();
    for _ in 0..600 {
        let e = next_event(&mut sockets[0]).await;
        assert_eq!(e["conversation_id"], conversation.as_str(), "{e}");
        seqs.push(e["seq"].as_i64().unwrap());
    }
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "{seqs:?}");
    h.shutdown().await;
}

/// On PostgreSQL every commit that records events wakes the readers (NOTIFY): with polling
/// of an hour, events of two tenants still arrive, each time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_live_events_arrive_by_notify_without_polling() {
    let hour = Duration::from_secs(3600);
    let h = Harness::postgres_with(Options {
        polling: EventPolling {
            poll: hour,
            safety_poll: hour,
        },
        ..Options::default()
    })
    .await;
    let mut acme = h
        .events(Some(&token("acme", "ann", &[])), "")
        .await
        .unwrap();
    let mut globex = h
        .events(Some(&token("globex", "gail", &[])), "")
        .await
        .unwrap();
    for (day, subject) in [(27, "Notified one"), (28, "Notified two")] {
        h.deliver("org", "acme", subject, day).await;
        let e = next_event(&mut acme).await;
        assert_eq!(e["type"], "message.stored", "{e}");
        assert_eq!(e["inbox_id"], h.inbox("org"), "{e}");
        h.deliver("globex-org", "globex", subject, day).await;
        let e = next_event(&mut globex).await;
        assert_eq!(e["inbox_id"], h.inbox("globex-org"), "{e}");
    }
    h.shutdown().await;
}

/// A socket whose token cannot be checked again because the issuer's keys cannot be
/// fetched (their cached copy expired, the issuer is down) closes with 1013, failing closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_events_close_with_1013_when_the_issuer_keys_are_unavailable() {
    let h = Harness::sqlite_with(Options {
        short_lived_keys: true,
        ..Options::default()
    })
    .await;
    let mut socket = h
        .events(Some(&token("acme", "ann", &[])), "")
        .await
        .unwrap();
    h.jwks.abort();
    let close = next_close(&mut socket).await;
    assert_eq!(u16::from(close.code), 1013);
    assert_eq!(close.reason.as_str(), "issuer keys unavailable");
    h.shutdown().await;
}

macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Harness::postgres().await).await;
                }
            )*
        }
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Harness::sqlite().await).await;
                }
            )*
        }
    };
}

both_backends!(
    tokens_that_are_missing_garbage_expired_or_foreign_get_401,
    org_team_and_restricted_visibility_decide_who_reads_what,
    grants_for_an_agent_or_its_team_open_a_restricted_inbox,
    an_expired_grant_is_denied_by_the_clock_without_any_revocation,
    a_revoked_grant_is_denied_on_the_very_next_call,
    another_tenants_token_cannot_reach_an_inbox_by_id,
    search_returns_only_hits_of_readable_inboxes,
    conversations_page_newest_first_with_opaque_cursors,
    messages_are_decrypted_and_attachments_served_as_safe_downloads,
    health_readiness_and_metrics_need_no_token,
    a_conversation_deleted_by_a_replier_vanishes_at_once_and_can_be_restored,
    live_events_reach_only_agents_who_may_read_their_inbox,
    live_events_take_a_browser_token_from_the_subprotocols,
    live_events_share_one_reader_per_tenant,
);
