//! The `helpr-dataplane` binary configured by environment variables for production
//! backends: OpenBao transit and PostgreSQL.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step panics

use std::path::PathBuf;
use std::process::Command;

use helpr_tests::openbao::OpenBao;
use helpr_tests::postgres::TestDatabase;

/// The workspace's `helpr-dataplane` binary, built next to this test binary.
fn binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(|deps| deps.parent()).unwrap();
    let bin = dir.join("helpr-dataplane");
    assert!(
        bin.is_file(),
        "{} is missing: build it with cargo build -p helpr-dataplane",
        bin.display()
    );
    bin
}

fn run(bao: &OpenBao, db: &TestDatabase, args: &[&str]) -> std::process::Output {
    let data_dir = tempfile::tempdir().unwrap();
    Command::new(binary())
        .args(args)
        .env("HELPR_DATA_DIR", data_dir.path())
        .env("HELPR_DATABASE__URL", &db.url)
        .env("HELPR_KMS__BACKEND", "vault")
        .env("HELPR_KMS__VAULT__ADDRESS", &bao.address)
        .env("HELPR_KMS__VAULT__AUTH__METHOD", "token")
        .env("HELPR_KMS__VAULT__AUTH__TOKEN", &bao.root_token)
        .env("HELPR_LOG", "warn")
        .output()
        .unwrap()
}

#[tokio::test]
async fn keys_commands_work_against_openbao_and_postgres_from_environment_settings() {
    let bao = OpenBao::start().await.unwrap();
    let db = TestDatabase::create().await.unwrap();
    let out = run(&bao, &db, &["tenants", "create", "--id", "acme"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run(&bao, &db, &["keys", "rotate-kek", "--tenant", "acme"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run(&bao, &db, &["keys", "status", "--tenant", "acme", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let status = report["deks"].as_array().unwrap();
    assert_eq!(status.len(), 1);
    assert_eq!(status[0]["kek_version"], 2);
    assert_eq!(status[0]["kms_key_ref"], "helpr-tenant-acme");

    // The transit key really exists in OpenBao and was rotated.
    let key = bao
        .api("GET", "transit/keys/helpr-tenant-acme", None)
        .await
        .unwrap();
    assert_eq!(key["data"]["latest_version"], 2);

    // The root token never shows up in any output.
    let all = [out.stdout, out.stderr].concat();
    assert!(!String::from_utf8_lossy(&all).contains(&bao.root_token));
}

#[tokio::test]
async fn kms_outage_is_a_clear_error_from_the_cli() {
    let mut bao = OpenBao::start().await.unwrap();
    let db = TestDatabase::create().await.unwrap();
    bao.stop();
    let out = run(&bao, &db, &["tenants", "create", "--id", "acme"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("kms vault unavailable"), "{err}");
    assert!(!err.contains(&bao.root_token));
}
