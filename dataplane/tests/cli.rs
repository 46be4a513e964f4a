//! The `helpr-dataplane` binary on the embedded default (SQLite + local KMS).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step panics

use std::path::Path;
use std::process::{Command, Output};

fn cli(data_dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_helpr-dataplane"))
        .arg("--data-dir")
        .arg(data_dir)
        .args(args)
        .env_remove("HELPR_CONFIG")
        .env("HELPR_LOG", "warn")
        .output()
        .expect("run helpr-dataplane")
}

fn ok(data_dir: &Path, args: &[&str]) -> String {
    let out = cli(data_dir, args);
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn status_json(data_dir: &Path) -> serde_json::Value {
    let json = ok(data_dir, &["keys", "status", "--tenant", "demo", "--json"]);
    serde_json::from_str::<serde_json::Value>(&json).unwrap()
}

fn status(data_dir: &Path) -> Vec<serde_json::Value> {
    status_json(data_dir)["deks"].as_array().unwrap().clone()
}

#[test]
fn tenant_creation_and_key_rotations_show_in_keys_status() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let created = ok(d, &["tenants", "create", "--id", "demo", "--name", "Demo"]);
    assert!(created.contains("tenant demo is ready"), "{created}");
    // Idempotent.
    ok(d, &["tenants", "create", "--id", "demo"]);
    assert!(ok(d, &["tenants", "list"]).contains("demo\tDemo"));

    let v = status(d);
    assert_eq!(v.len(), 1);
    assert_eq!(v[0]["version"], 1);
    assert_eq!(v[0]["current"], true);
    assert_eq!(v[0]["retired"], false);
    assert_eq!(v[0]["kek_version"], 1);
    assert_eq!(v[0]["seal_bound"], 2147483648u64);

    let rotated = ok(d, &["keys", "rotate-dek", "--tenant", "demo"]);
    assert!(rotated.contains("dek v2"), "{rotated}");
    let rotated = ok(d, &["keys", "rotate-kek", "--tenant", "demo"]);
    assert!(
        rotated.contains("version 2, 2 wrapped dek(s) and 0 index key(s) rewrapped"),
        "{rotated}"
    );

    let v = status(d);
    assert_eq!(v.len(), 2);
    assert_eq!(
        (v[0]["retired"].clone(), v[0]["current"].clone()),
        (true.into(), false.into())
    );
    assert_eq!(
        (v[1]["retired"].clone(), v[1]["current"].clone()),
        (false.into(), true.into())
    );
    assert!(v.iter().all(|x| x["kek_version"] == 2));

    let table = ok(d, &["keys", "status", "--tenant", "demo"]);
    assert!(table.starts_with("VERSION"), "{table}");

    // Status never shows key material: no wrapped key, no base64 blob.
    let all = format!(
        "{}{}",
        table,
        ok(d, &["keys", "status", "--tenant", "demo", "--json"])
    );
    assert!(!all.contains("local:v"), "{all}");
    assert!(!all.contains("wrapped"), "{all}");

    // The database and key files live under the data dir, keys private.
    assert!(d.join("helpr.db").exists());
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(d.join("kms/demo/kek-v1"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
}

#[test]
fn unknown_tenant_and_bad_input_fail_with_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let out = cli(d, &["keys", "status", "--tenant", "ghost"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("tenant ghost does not exist"), "{err}");

    let out = cli(d, &["keys", "rotate-dek", "--tenant", "ghost"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no data encryption key"));

    let out = cli(d, &["keys", "status", "--tenant", "Bad_Id"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("tenant id must be"));

    let config = d.join("bad.toml");
    std::fs::write(&config, "[keyring]\nseal_bund = 1\n").unwrap();
    let out = cli(
        d,
        &["--config", config.to_str().unwrap(), "tenants", "list"],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("seal_bund"));

    let out = cli(d, &["--database-url", "mysql://x", "tenants", "list"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("database url must start with"));
}

#[test]
fn refuses_a_world_readable_local_key() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    ok(d, &["tenants", "create", "--id", "demo"]);
    let key = d.join("kms/demo/kek-v1");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = cli(d, &["keys", "status", "--tenant", "demo"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("group or others may access it"), "{err}");
}

#[test]
fn every_command_has_help() {
    let dir = tempfile::tempdir().unwrap();
    for args in [
        vec!["--help"],
        vec!["tenants", "--help"],
        vec!["tenants", "create", "--help"],
        vec!["tenants", "list", "--help"],
        vec!["keys", "--help"],
        vec!["keys", "status", "--help"],
        vec!["keys", "rotate-dek", "--help"],
        vec!["keys", "rotate-kek", "--help"],
        vec!["keys", "rotate-index-key", "--help"],
        vec!["inboxes", "--help"],
        vec!["inboxes", "add", "--help"],
        vec!["inboxes", "list", "--help"],
        vec!["ingest", "--help"],
        vec!["sync", "--help"],
        vec!["inspect", "--help"],
        vec!["dev", "--help"],
        vec!["import", "--help"],
        vec!["search", "--help"],
        vec!["reindex", "--help"],
        vec!["index", "--help"],
        vec!["control", "--help"],
    ] {
        let out = ok(dir.path(), &args);
        assert!(out.contains("Usage:"), "{args:?}: {out}");
    }
}

#[test]
fn control_refuses_to_start_without_a_private_token_file() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let run = |token_file: Option<&Path>| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_helpr-dataplane"));
        cmd.arg("--data-dir")
            .arg(dir.path())
            .args(["control", "--listen", "127.0.0.1:0"])
            .env_remove("HELPR_CONFIG")
            .env_remove("HELPR_CONTROL__TOKEN_FILE")
            .env("HELPR_LOG", "warn");
        if let Some(f) = token_file {
            cmd.env("HELPR_CONTROL__TOKEN_FILE", f);
        }
        let out = cmd.output().unwrap();
        assert!(!out.status.success(), "control started");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let err = run(None);
    assert!(err.contains("control.token_file"), "{err}");

    let token = dir.path().join("token");
    std::fs::write(&token, "s3cret-control-token\n").unwrap();
    for mode in [0o644, 0o660, 0o604] {
        std::fs::set_permissions(&token, std::fs::Permissions::from_mode(mode)).unwrap();
        let err = run(Some(&token));
        assert!(err.contains("chmod 600"), "{mode:o}: {err}");
        assert!(!err.contains("s3cret"), "{err}");
    }
    std::fs::write(&token, "").unwrap();
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
    let err = run(Some(&token));
    assert!(err.contains("is empty"), "{err}");
    // Nothing was opened before the credentials were checked.
    assert!(!dir.path().join("helpr.db").exists());
}

#[test]
fn settings_come_from_environment_variables() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let out = Command::new(env!("CARGO_BIN_EXE_helpr-dataplane"))
        .args(["tenants", "create", "--id", "demo"])
        .env("HELPR_DATA_DIR", d)
        .env("HELPR_KEYRING__SEAL_BOUND", "77")
        .env("HELPR_LOG", "warn")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains(" 77 "));
    assert!(d.join("helpr.db").exists());
}

#[test]
fn inspect_prints_exactly_what_would_be_stored_and_stores_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("data");
    let eml = dir.path().join("reply.eml");
    std::fs::write(
        &eml,
        "From: Ann <ann@example.org>\r\nTo: support@acme.example\r\nCc: Bob <bob@example.org>\r\n\
Subject: Re: order\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=m\r\n\r\n\
--m\r\nContent-Type: multipart/alternative; boundary=a\r\n\r\n--a\r\nContent-Type: text/plain\r\n\r\n\
Thanks!\r\n\r\nOn Mon, Nov 30, 2026 at 9:00 AM Support <support@acme.example> wrote:\r\n> old text\r\n\
--a\r\nContent-Type: text/html\r\n\r\n<p onclick=\"x()\">Thanks!</p><img src=\"http://t.example/p.gif\">\
<script>alert(1)</script><div class=\"gmail_quote\"><blockquote class=\"gmail_quote\">old text</blockquote></div>\r\n\
--a--\r\n--m\r\nContent-Type: application/pdf; name=\"a.pdf\"\r\nContent-Disposition: attachment; filename=\"a.pdf\"\r\n\r\n%PDF-1.4\r\n--m--\r\n",
    )
    .unwrap();
    let out = ok(&d, &["inspect", eml.to_str().unwrap()]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["subject"], "Re: order");
    assert_eq!(v["from"], "Ann <ann@example.org>");
    assert_eq!(v["to"], "support@acme.example");
    assert_eq!(v["cc"], "Bob <bob@example.org>");
    assert!(v["text"].as_str().unwrap().contains("Thanks!"));
    assert!(!v["text"].as_str().unwrap().contains("old text"));
    let html = v["html"].as_str().unwrap();
    assert!(
        html.contains("Thanks!") && !html.contains("old text"),
        "{html}"
    );
    assert!(
        !html.contains("<script") && !html.contains("onclick"),
        "{html}"
    );
    assert_eq!(v["blocked_remote_images"], 1);
    assert!(v["quote_stripped"]["text_bytes"].as_u64().unwrap() > 0);
    assert!(v["quote_stripped"]["html_bytes"].as_u64().unwrap() > 0);
    assert_eq!(v["attachments"][0]["name"], "a.pdf");
    assert_eq!(v["attachments"][0]["content_type"], "application/pdf");
    assert!(v["attachments"][0]["size"].as_u64().unwrap() >= 8);
    assert!(!d.exists(), "inspect stores nothing");

    let empty = dir.path().join("empty.eml");
    std::fs::write(&empty, "").unwrap();
    let out = cli(&d, &["inspect", empty.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not a message"));
}

#[test]
fn inboxes_are_added_with_a_sealed_refresh_token() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("data");
    ok(&d, &["tenants", "create", "--id", "demo"]);
    let token = dir.path().join("token");
    std::fs::write(&token, "1//refresh-token-canary-77\n").unwrap();
    let added = ok(
        &d,
        &[
            "inboxes",
            "add",
            "--tenant",
            "demo",
            "--address",
            "support@demo.example",
            "--refresh-token-file",
            token.to_str().unwrap(),
        ],
    );
    assert!(added.contains("added to tenant demo"), "{added}");
    let list = ok(&d, &["inboxes", "list", "--tenant", "demo"]);
    assert!(list.contains("support@demo.example\tconnected"), "{list}");
    for name in ["helpr.db", "helpr.db-wal"] {
        if let Ok(bytes) = std::fs::read(d.join(name)) {
            assert!(
                !bytes.windows(12).any(|w| w == b"refresh-toke"),
                "token in {name}"
            );
        }
    }

    let out = cli(
        &d,
        &[
            "inboxes",
            "add",
            "--tenant",
            "ghost",
            "--address",
            "a@b.example",
        ],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("tenant ghost does not exist"));
    let out = cli(
        &d,
        &[
            "inboxes",
            "add",
            "--tenant",
            "demo",
            "--address",
            "not-an-address",
        ],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("must be an email address"));
}

#[test]
fn ingest_refuses_to_start_without_push_settings() {
    let dir = tempfile::tempdir().unwrap();
    let out = cli(dir.path(), &["ingest", "--listen", "127.0.0.1:0"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("push.audience and push.service_account")
    );
}

fn write_eml(dir: &Path, name: &str, subject: &str, body: &str) {
    std::fs::write(
        dir.join(name),
        format!(
            "From: Ana <ana@client.example>\r\nTo: support@demo.example\r\nSubject: {subject}\r\n\
             Date: Mon, 05 Oct 2026 10:00:00 +0000\r\nMessage-ID: <{name}@client.example>\r\n\r\n{body}\r\n"
        ),
    )
    .unwrap();
}

/// `dev` in one process, `import`, `search` and `reindex` in others on the same data
/// directory: the second process defers indexing to `dev`, nothing is corrupted, and
/// SIGTERM stops `dev` cleanly.
#[test]
fn dev_import_search_and_reindex_share_one_data_directory() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mail = tempfile::tempdir().unwrap();
    write_eml(
        mail.path(),
        "a.eml",
        "Invoice missing",
        "Where is the October invoice?",
    );
    write_eml(
        mail.path(),
        "b.eml",
        "Password reset",
        "The password reset link expired.",
    );
    std::fs::write(mail.path().join("broken.eml"), b"\x00\x01 not a message").unwrap();

    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let mut dev = Command::new(env!("CARGO_BIN_EXE_helpr-dataplane"))
        .arg("--data-dir")
        .arg(d)
        .args(["dev", "--listen", &format!("127.0.0.1:{port}")])
        .args(["--import"])
        .arg(mail.path().join("a.eml"))
        .env_remove("HELPR_CONFIG")
        .env("HELPR_LOG", "warn")
        .env("HELPR_SEARCH__COMMIT_INTERVAL_MS", "100")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait for dev to answer /healthz.
    let mut up = false;
    for _ in 0..300 {
        if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            use std::io::{Read, Write};
            let _ = s.write_all(b"GET /healthz HTTP/1.0\r\n\r\n");
            let mut r = String::new();
            let _ = s.read_to_string(&mut r);
            if r.contains("ok") {
                up = true;
                break;
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(up, "dev did not come up");

    let search = |q: &str| ok(d, &["search", "--tenant", "demo", q]);
    assert!(search("invoice").contains("Invoice missing"));

    let out = cli(
        d,
        &[
            "import",
            "--tenant",
            "demo",
            "--inbox",
            "support@demo.example",
        ],
    );
    assert!(!out.status.success(), "import without a path must fail");
    let out = cli(
        d,
        &[
            "import",
            "--tenant",
            "demo",
            "--inbox",
            "support@demo.example",
            mail.path().to_str().unwrap(),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("1 stored, 1 already stored, 1 rejected"),
        "{stdout}"
    );
    assert!(stdout.contains("held by pid"), "{stdout}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("skipped") && stderr.contains("broken.eml"),
        "{stderr}"
    );

    // dev indexes what import stored.
    let mut found = false;
    for _ in 0..100 {
        if search("\"password reset\"").contains("Password reset") {
            found = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(found, "dev did not index the imported message");
    let json: serde_json::Value = serde_json::from_str(&ok(
        d,
        &[
            "search",
            "--tenant",
            "demo",
            "--json",
            "invoice OR password",
        ],
    ))
    .unwrap();
    assert_eq!(json["hits"].as_array().unwrap().len(), 2);

    // Reindex needs the writer: while dev holds it, a clear error naming the holder.
    let out = cli(d, &["reindex", "--tenant", "demo"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("held by another process (pid"), "{stderr}");

    // Index-key rotation while dev holds the index: dev re-indexes in the background,
    // and search keeps answering throughout.
    let rotated = ok(d, &["keys", "rotate-index-key", "--tenant", "demo"]);
    assert!(
        rotated.contains("rotating the index key to version 2"),
        "{rotated}"
    );
    assert!(
        rotated.contains("re-indexes in the background"),
        "{rotated}"
    );
    let mut switched = false;
    for _ in 0..100 {
        assert!(search("invoice").contains("Invoice missing"));
        let v = status_json(d);
        let states: Vec<_> = v["index_keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| {
                (
                    k["version"].as_u64().unwrap(),
                    k["state"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        if states == [(1, "retired".to_owned()), (2, "active".to_owned())]
            && v["index_pending"] == 0
        {
            switched = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(switched, "dev did not finish the index-key rotation");
    assert!(search("\"password reset\"").contains("Password reset"));
    let text = ok(d, &["keys", "status", "--tenant", "demo"]);
    assert!(text.contains("v2       active"), "{text}");
    assert!(
        !text.contains("local:v"),
        "no wrapped key material in status: {text}"
    );

    // Bad queries and unknown inboxes fail clearly.
    let out = cli(d, &["search", "--tenant", "demo", "from:"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("position 5"));
    let out = cli(
        d,
        &["search", "--tenant", "demo", "--inbox", "x@y.example", "a"],
    );
    assert!(!out.status.success());

    // SIGTERM: dev stops cleanly; afterwards reindex works and search still answers.
    let pid = dev.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let status = dev.wait().unwrap();
    assert!(status.success(), "dev exited with {status}");
    let reindexed = ok(d, &["reindex", "--tenant", "demo"]);
    assert!(reindexed.contains("2 message(s) indexed"), "{reindexed}");
    assert!(search("invoice").contains("Invoice missing"));
    assert!(search("password").contains("1 hit(s)"));
    // Without dev, the rotation runs to the end in this process.
    let rotated = ok(d, &["keys", "rotate-index-key", "--tenant", "demo"]);
    assert!(
        rotated.contains("queries use index key version 3; 0 message(s) pending"),
        "{rotated}"
    );
    assert!(search("password").contains("1 hit(s)"));
}

/// The index role in its own process; `import` and `search` reach it over gRPC
/// (search.backend = remote) and hold no index themselves. The role serves only callers with
/// a token of its secret: the secret's holders for every tenant, a tenant's token for that
/// tenant alone.
#[test]
fn import_and_search_through_the_index_role() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let index_dir = tempfile::tempdir().unwrap();
    let mail = tempfile::tempdir().unwrap();
    write_eml(
        mail.path(),
        "a.eml",
        "Invoice missing",
        "Where is the October invoice?",
    );
    ok(d, &["tenants", "create", "--id", "demo"]);
    ok(
        d,
        &[
            "inboxes",
            "add",
            "--tenant",
            "demo",
            "--address",
            "support@demo.example",
        ],
    );
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let role_command = || {
        let mut c = Command::new(env!("CARGO_BIN_EXE_helpr-dataplane"));
        c.args(["index", "--listen", &format!("127.0.0.1:{port}")])
            .env_remove("HELPR_CONFIG")
            .env("HELPR_LOG", "warn")
            .env("HELPR_SEARCH__INDEX_DIR", index_dir.path())
            .stdout(std::process::Stdio::null());
        c
    };
    // No unauthenticated index role.
    let out = role_command().output().unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("search.index_secret_file is required"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let secret = d.join("index-secret");
    std::fs::write(&secret, "a-secret-of-the-index-role-of-at-least-32-bytes\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    let mut role = role_command()
        .env("HELPR_SEARCH__INDEX_SECRET_FILE", &secret)
        .spawn()
        .unwrap();
    for _ in 0..300 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let remote_with = |credential: (&str, &Path), args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_helpr-dataplane"))
            .arg("--data-dir")
            .arg(d)
            .args(args)
            .env_remove("HELPR_CONFIG")
            .env("HELPR_LOG", "warn")
            .env("HELPR_SEARCH__BACKEND", "remote")
            .env(
                "HELPR_SEARCH__REMOTE_URL",
                format!("http://127.0.0.1:{port}"),
            )
            .env(credential.0, credential.1)
            .output()
            .unwrap()
    };
    let remote =
        |args: &[&str]| remote_with(("HELPR_SEARCH__INDEX_SECRET_FILE", secret.as_path()), args);
    // Tokens for one tenant, as the operator gives each tenant's sync workers.
    let token_file = |tenant: &str| {
        let out = Command::new(env!("CARGO_BIN_EXE_helpr-dataplane"))
            .args(["keys", "index-token", "--tenant", tenant])
            .env_remove("HELPR_CONFIG")
            .env("HELPR_SEARCH__INDEX_SECRET_FILE", &secret)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let path = d.join(format!("token-{tenant}"));
        std::fs::write(&path, &out.stdout).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o400)).unwrap();
        path
    };
    let demo_token = token_file("demo");
    let other_token = token_file("other");
    let out = remote(&[
        "import",
        "--tenant",
        "demo",
        "--inbox",
        "support@demo.example",
        mail.path().to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("1 indexed"));
    let out = remote(&["search", "--tenant", "demo", "invoice"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("Invoice missing"));
    let out = remote_with(
        ("HELPR_SEARCH__REMOTE_TOKEN_FILE", demo_token.as_path()),
        &["search", "--tenant", "demo", "invoice"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("Invoice missing"));
    // Another tenant's token is refused, and says why.
    let out = remote_with(
        ("HELPR_SEARCH__REMOTE_TOKEN_FILE", other_token.as_path()),
        &["search", "--tenant", "demo", "invoice"],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("does not cover this tenant"), "{err}");
    assert!(!err.contains("helpr-index.v1."), "{err}");
    // The index lives with the role, not in the data directory.
    assert!(!d.join("index").exists());
    assert!(index_dir.path().join("demo").is_dir());
    let pid = role.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    assert!(role.wait().unwrap().success());
    // With the role gone, search fails with a clear, retryable error.
    let out = remote(&["search", "--tenant", "demo", "invoice"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("unavailable"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `conversations delete` / `restore` and `purge` on the embedded default: the deleted
/// conversation leaves search at once, comes back when restored, and `purge` removes it for
/// good once the grace period (here 0 days, from a RetentionPolicy) has passed.
#[test]
fn conversations_delete_restore_and_purge_on_the_embedded_default() {
    use helpr_dataplane::store::{ControlMeta, RetentionSpec, SqliteStore, Store};
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mail = tempfile::tempdir().unwrap();
    write_eml(
        mail.path(),
        "a.eml",
        "Invoice missing",
        "Where is the invoice?",
    );
    write_eml(
        mail.path(),
        "b.eml",
        "Password reset",
        "The reset link expired.",
    );
    ok(d, &["tenants", "create", "--id", "demo"]);
    ok(
        d,
        &[
            "inboxes",
            "add",
            "--tenant",
            "demo",
            "--address",
            "support@demo.example",
        ],
    );
    let import = ok(
        d,
        &[
            "import",
            "--tenant",
            "demo",
            "--inbox",
            "support@demo.example",
            mail.path().to_str().unwrap(),
        ],
    );
    assert!(import.contains("2 stored"), "{import}");
    let hits = |q: &str| -> Vec<serde_json::Value> {
        let out = ok(d, &["search", "--tenant", "demo", "--json", q]);
        serde_json::from_str::<serde_json::Value>(&out).unwrap()["hits"]
            .as_array()
            .unwrap()
            .clone()
    };
    let found = hits("invoice");
    assert_eq!(found.len(), 1);
    let conversation = found[0]["conversation_id"].as_str().unwrap().to_owned();

    let deleted = ok(
        d,
        &[
            "conversations",
            "delete",
            "--tenant",
            "demo",
            "--id",
            &conversation,
        ],
    );
    assert!(deleted.contains("1 message(s) soft-deleted"), "{deleted}");
    assert!(hits("invoice").is_empty());
    assert_eq!(hits("password").len(), 1);

    // Default policy: 60 days of grace, nothing to purge yet.
    let report = ok(d, &["purge", "--tenant", "demo"]);
    assert!(report.contains("grace period 60 day(s)"), "{report}");
    assert!(report.contains("purged: 0 message(s)"), "{report}");

    let restored = ok(
        d,
        &[
            "conversations",
            "restore",
            "--tenant",
            "demo",
            "--id",
            &conversation,
        ],
    );
    assert!(restored.contains("1 message(s) restored"), "{restored}");
    ok(d, &["reindex", "--tenant", "demo"]);
    assert_eq!(hits("invoice").len(), 1);
    ok(
        d,
        &[
            "conversations",
            "delete",
            "--tenant",
            "demo",
            "--id",
            &conversation,
        ],
    );

    // A RetentionPolicy with no grace period (as the control API stores it).
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let url = format!("sqlite://{}", d.join("helpr.db").display());
        let store = SqliteStore::connect(&url).await.unwrap();
        let meta = ControlMeta {
            namespace: "demo".into(),
            name: "keep".into(),
            uid: "u1".into(),
            generation: 1,
        };
        let spec = RetentionSpec {
            tenant: "demo".parse().unwrap(),
            grace_period_days: 0,
            delete_after_days: None,
            legal_hold: false,
        };
        store.apply_retention_policy(&meta, &spec).await.unwrap();
        store.pool().close().await;
    });

    let dry = ok(d, &["purge", "--tenant", "demo", "--dry-run"]);
    assert!(dry.contains("dry run"), "{dry}");
    assert!(dry.contains("purged: 1 message(s)"), "{dry}");
    let json = ok(d, &["purge", "--tenant", "demo", "--json"]);
    let report: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(report["purged_messages"], 1);
    assert_eq!(report["purged_conversations"], 1);
    assert_eq!(report["dry_run"], false);
    let again = ok(d, &["purge", "--tenant", "demo"]);
    assert!(again.contains("purged: 0 message(s)"), "{again}");
    assert_eq!(hits("password").len(), 1);

    // Restoring what was purged, or purging an unknown tenant: clear errors, non-zero exit.
    let out = cli(
        d,
        &[
            "conversations",
            "restore",
            "--tenant",
            "demo",
            "--id",
            &conversation,
        ],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no such conversation"), "{err}");
    let out = cli(d, &["purge", "--tenant", "nobody"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("tenant nobody does not exist"), "{err}");
}
