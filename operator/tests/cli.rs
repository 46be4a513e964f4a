//! The binary's subcommands, as the chart's hook and Deployment call them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

fn operator() -> Command {
    Command::new(env!("CARGO_BIN_EXE_helpr-operator"))
}

#[test]
fn crds_prints_the_four_custom_resource_definitions_as_yaml() {
    let out = operator().arg("crds").output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let yaml = String::from_utf8(out.stdout).unwrap();
    assert_eq!(yaml.matches("kind: CustomResourceDefinition").count(), 4);
    for name in [
        "tenants.mail.helpr.dev",
        "inboxes.mail.helpr.dev",
        "inboxgrants.mail.helpr.dev",
        "retentionpolicies.mail.helpr.dev",
    ] {
        assert!(yaml.contains(&format!("name: {name}")), "{name} missing");
    }
    assert_eq!(yaml, helpr_crds::manifests::multi_document().unwrap());
}

#[test]
fn run_refuses_unreadable_settings_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "t0ken").unwrap();
    let out = operator()
        .args(["run", "--settings"])
        .arg(dir.path().join("missing.yaml"))
        .args([
            "--control-url",
            "http://127.0.0.1:1",
            "--control-token-file",
        ])
        .arg(&token)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("read operator settings"), "{stderr}");
    assert!(!stderr.contains("t0ken"));
}

#[test]
fn run_refuses_an_empty_control_token_file() {
    let dir = tempfile::tempdir().unwrap();
    let settings = dir.path().join("settings.yaml");
    std::fs::write(
        &settings,
        "syncImage: helpr:dev\nnetwork:\n  database: { cidrs: [\"10.0.0.0/8\"], ports: [5432] }\n  kms: { cidrs: [\"10.1.0.0/16\"], ports: [8200] }\n",
    )
    .unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "\n").unwrap();
    let out = operator()
        .args(["run", "--settings"])
        .arg(&settings)
        .args([
            "--control-url",
            "http://127.0.0.1:1",
            "--control-token-file",
        ])
        .arg(&token)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("is empty"));
}

#[test]
fn crds_apply_from_an_empty_directory_fails_before_touching_a_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let out = operator()
        .args(["crds", "--apply", "--from-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no .yaml files"));
}

#[test]
fn from_dir_requires_apply() {
    let out = operator()
        .args(["crds", "--from-dir", "/etc/helpr/crds"])
        .output()
        .unwrap();
    assert!(!out.status.success());
}

#[test]
fn run_accepts_the_charts_listen_flag() {
    let dir = tempfile::tempdir().unwrap();
    let out = operator()
        .args(["run", "--listen", "127.0.0.1:0", "--settings"])
        .arg(dir.path().join("missing.yaml"))
        .args([
            "--control-url",
            "http://127.0.0.1:1",
            "--control-token-file",
        ])
        .arg(dir.path().join("token"))
        .output()
        .unwrap();
    // Parsed (the failure is the missing settings file, not an unknown flag).
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("read operator settings"));
}
