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

fn status(data_dir: &Path) -> Vec<serde_json::Value> {
    let json = ok(data_dir, &["keys", "status", "--tenant", "demo", "--json"]);
    serde_json::from_str::<Vec<serde_json::Value>>(&json).unwrap()
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
        rotated.contains("version 2, 2 wrapped dek(s) rewrapped"),
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
    ] {
        let out = ok(dir.path(), &args);
        assert!(out.contains("Usage:"), "{args:?}: {out}");
    }
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
