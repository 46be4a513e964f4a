//! `VaultKms` against a real OpenBao dev server (one server per test).
//!
//! Kubernetes auth is exercised with a fake Kubernetes API ([`FakeKubernetes`]) that
//! answers OpenBao's TokenReview call. OpenBao first parses the service-account JWT
//! without checking its signature (no `pem_keys` configured), so the JWT only has to be
//! well-formed with an RS256 header and the service-account claims; TokenReview decides
//! whether it is valid, and its user uid must match the JWT's
//! `kubernetes.io/serviceaccount/service-account.uid` claim.
#![forbid(unsafe_code)]
// Helpers outside `#[tokio::test]` functions are test code too.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use base64::Engine as _;
use helpr_dataplane::crypto::DekVersion;
use helpr_dataplane::ids::TenantId;
use helpr_dataplane::kms::vault::{VaultAuth, VaultConfig, VaultKms};
use helpr_dataplane::kms::{DekContext, KeyRef, Kms, KmsError, WrappedDek};
use helpr_tests::openbao::{FakeKubernetes, OpenBao, ServiceAccountIdentity};

fn tenant(id: &str) -> TenantId {
    TenantId::new(id).unwrap()
}

fn ctx<'a>(tenant: &'a TenantId, key: &'a KeyRef) -> DekContext<'a> {
    DekContext {
        tenant,
        key,
        version: DekVersion::FIRST,
    }
}

fn root_kms(bao: &OpenBao) -> VaultKms {
    VaultKms::new(VaultConfig::new(
        bao.address.clone(),
        VaultAuth::token(bao.root_token.clone()),
    ))
    .unwrap()
}

fn vault_version(w: &WrappedDek) -> u32 {
    assert!(
        w.as_str().starts_with("vault:v"),
        "not a transit ciphertext"
    );
    w.kek_version().unwrap()
}

#[tokio::test]
async fn create_tenant_key_is_idempotent() {
    let bao = OpenBao::start().await.unwrap();
    let kms = root_kms(&bao);
    let acme = tenant("acme");

    let first = kms.create_tenant_key(&acme).await.unwrap();
    assert_eq!(first.as_str(), "helpr-tenant-acme");
    let (dek, wrapped) = kms.generate_dek(ctx(&acme, &first)).await.unwrap();

    let second = kms.create_tenant_key(&acme).await.unwrap();
    assert_eq!(first, second);
    // The existing key was kept, not replaced: old DEKs still unwrap.
    let again = kms.unwrap_dek(ctx(&acme, &second), &wrapped).await.unwrap();
    assert_eq!(dek.expose_bytes(), again.expose_bytes());

    let info = kms.key_info(&first).await.unwrap();
    assert_eq!(info.latest_version, 1);
    assert_eq!(info.min_decryption_version, 1);
    let key = bao
        .api("GET", "transit/keys/helpr-tenant-acme", None)
        .await
        .unwrap();
    assert_eq!(key["data"]["type"], "aes256-gcm96");
}

#[tokio::test]
async fn generated_dek_unwraps_to_the_same_32_bytes() {
    let bao = OpenBao::start().await.unwrap();
    let kms = root_kms(&bao);
    let acme = tenant("acme");
    let key = kms.create_tenant_key(&acme).await.unwrap();

    let (dek, wrapped) = kms.generate_dek(ctx(&acme, &key)).await.unwrap();
    assert_eq!(vault_version(&wrapped), 1);
    assert_eq!(dek.expose_bytes().len(), 32);
    assert_ne!(dek.expose_bytes(), &[0u8; 32]);

    let unwrapped = kms.unwrap_dek(ctx(&acme, &key), &wrapped).await.unwrap();
    assert_eq!(dek.expose_bytes(), unwrapped.expose_bytes());

    // Two DEKs are different keys.
    let (other, other_wrapped) = kms.generate_dek(ctx(&acme, &key)).await.unwrap();
    assert_ne!(dek.expose_bytes(), other.expose_bytes());
    assert_ne!(wrapped, other_wrapped);
}

#[tokio::test]
async fn rewrap_after_rotation_uses_the_new_kek_and_min_decryption_version_retires_the_old_wrapping()
 {
    let bao = OpenBao::start().await.unwrap();
    let kms = root_kms(&bao);
    let acme = tenant("acme");
    let key = kms.create_tenant_key(&acme).await.unwrap();
    let (dek, old) = kms.generate_dek(ctx(&acme, &key)).await.unwrap();
    assert_eq!(vault_version(&old), 1);

    assert_eq!(kms.rotate_kek(&key).await.unwrap(), 2);
    assert_eq!(kms.rotate_kek(&key).await.unwrap(), 3);

    let rewrapped = kms.rewrap_dek(ctx(&acme, &key), &old).await.unwrap();
    assert_eq!(vault_version(&rewrapped), 3);
    let unwrapped = kms.unwrap_dek(ctx(&acme, &key), &rewrapped).await.unwrap();
    assert_eq!(dek.expose_bytes(), unwrapped.expose_bytes());
    // Before the cut-off the old wrapping still works.
    let unwrapped = kms.unwrap_dek(ctx(&acme, &key), &old).await.unwrap();
    assert_eq!(dek.expose_bytes(), unwrapped.expose_bytes());

    let info = kms.key_info(&key).await.unwrap();
    assert_eq!(info.latest_version, 3);
    kms.set_min_decryption_version(&key, info.latest_version)
        .await
        .unwrap();
    assert_eq!(kms.key_info(&key).await.unwrap().min_decryption_version, 3);

    let err = kms.unwrap_dek(ctx(&acme, &key), &old).await.err().unwrap();
    assert!(matches!(err, KmsError::UnwrapFailed { .. }), "{err}");
    let err = kms.rewrap_dek(ctx(&acme, &key), &old).await.err().unwrap();
    assert!(matches!(err, KmsError::UnwrapFailed { .. }), "{err}");

    let unwrapped = kms.unwrap_dek(ctx(&acme, &key), &rewrapped).await.unwrap();
    assert_eq!(dek.expose_bytes(), unwrapped.expose_bytes());
    // New DEKs are wrapped with the newest version.
    let (_, fresh) = kms.generate_dek(ctx(&acme, &key)).await.unwrap();
    assert_eq!(vault_version(&fresh), 3);
}

#[tokio::test]
async fn destroyed_tenant_key_makes_its_deks_unusable_and_destroying_twice_is_ok() {
    let bao = OpenBao::start().await.unwrap();
    let kms = root_kms(&bao);
    let acme = tenant("acme");
    let key = kms.create_tenant_key(&acme).await.unwrap();
    let (_, wrapped) = kms.generate_dek(ctx(&acme, &key)).await.unwrap();

    kms.destroy_tenant_key(&key).await.unwrap();

    let err = kms
        .unwrap_dek(ctx(&acme, &key), &wrapped)
        .await
        .err()
        .unwrap();
    assert!(
        matches!(
            err,
            KmsError::KeyNotFound { .. } | KmsError::UnwrapFailed { .. }
        ),
        "{err}"
    );
    let err = kms.generate_dek(ctx(&acme, &key)).await.err().unwrap();
    assert!(matches!(err, KmsError::KeyNotFound { .. }), "{err}");
    let err = kms.key_info(&key).await.err().unwrap();
    assert!(matches!(err, KmsError::KeyNotFound { .. }), "{err}");

    kms.destroy_tenant_key(&key).await.unwrap();
    // A key that never existed is "already destroyed" too.
    kms.destroy_tenant_key(&KeyRef::new("helpr-tenant-never"))
        .await
        .unwrap();
}

#[tokio::test]
async fn tampered_wrapped_dek_is_rejected_without_panicking() {
    let bao = OpenBao::start().await.unwrap();
    let kms = root_kms(&bao);
    let acme = tenant("acme");
    let key = kms.create_tenant_key(&acme).await.unwrap();
    let (_, wrapped) = kms.generate_dek(ctx(&acme, &key)).await.unwrap();
    let text = wrapped.as_str();

    // Flip one base64 character in the middle of the ciphertext.
    let mut flipped = text.as_bytes().to_vec();
    let mid = "vault:v1:".len() + (text.len() - "vault:v1:".len()) / 2;
    flipped[mid] = if flipped[mid] == b'A' { b'B' } else { b'A' };
    let flipped = String::from_utf8(flipped).unwrap();
    let truncated = &text[..text.len() - 8];
    let garbage_b64 = format!(
        "vault:v1:{}",
        base64::engine::general_purpose::STANDARD.encode([7u8; 60])
    );

    for bad in [
        flipped.as_str(),
        truncated,
        garbage_b64.as_str(),
        "vault:v1:not base64!",
        "vault:v1:",
        "local:v1:abc",
        "",
    ] {
        let err = kms
            .unwrap_dek(ctx(&acme, &key), &WrappedDek::new(bad))
            .await
            .err()
            .unwrap_or_else(|| panic!("tampered DEK {bad:?} unwrapped"));
        assert!(
            matches!(err, KmsError::UnwrapFailed { .. }),
            "{bad:?}: {err}"
        );
        let err = kms
            .rewrap_dek(ctx(&acme, &key), &WrappedDek::new(bad))
            .await
            .err()
            .unwrap_or_else(|| panic!("tampered DEK {bad:?} rewrapped"));
        assert!(
            matches!(err, KmsError::UnwrapFailed { .. }),
            "{bad:?}: {err}"
        );
    }
}

#[tokio::test]
async fn dek_wrapped_under_one_tenants_key_does_not_unwrap_with_another_tenants_key() {
    let bao = OpenBao::start().await.unwrap();
    let kms = root_kms(&bao);
    let (acme, globex) = (tenant("acme"), tenant("globex"));
    let acme_key = kms.create_tenant_key(&acme).await.unwrap();
    let globex_key = kms.create_tenant_key(&globex).await.unwrap();
    assert_ne!(acme_key, globex_key);

    let (_, wrapped) = kms.generate_dek(ctx(&acme, &acme_key)).await.unwrap();
    let err = kms
        .unwrap_dek(ctx(&globex, &globex_key), &wrapped)
        .await
        .err()
        .unwrap();
    assert!(matches!(err, KmsError::UnwrapFailed { .. }), "{err}");
    let err = kms
        .rewrap_dek(ctx(&globex, &globex_key), &wrapped)
        .await
        .err()
        .unwrap();
    assert!(matches!(err, KmsError::UnwrapFailed { .. }), "{err}");
}

#[tokio::test]
async fn stopped_server_makes_every_call_fail_quickly_with_retryable_unavailable() {
    let mut bao = OpenBao::start().await.unwrap();
    let mut cfg = VaultConfig::new(
        bao.address.clone(),
        VaultAuth::token(bao.root_token.clone()),
    );
    cfg.request_timeout = Duration::from_secs(2);
    let kms = VaultKms::new(cfg).unwrap();
    let acme = tenant("acme");
    let key = kms.create_tenant_key(&acme).await.unwrap();
    let (_, wrapped) = kms.generate_dek(ctx(&acme, &key)).await.unwrap();

    bao.stop();

    let started = Instant::now();
    let errors = vec![
        kms.create_tenant_key(&acme).await.err().unwrap(),
        kms.generate_dek(ctx(&acme, &key)).await.err().unwrap(),
        kms.unwrap_dek(ctx(&acme, &key), &wrapped)
            .await
            .err()
            .unwrap(),
        kms.rewrap_dek(ctx(&acme, &key), &wrapped)
            .await
            .err()
            .unwrap(),
        kms.rotate_kek(&key).await.err().unwrap(),
        kms.destroy_tenant_key(&key).await.err().unwrap(),
        kms.key_info(&key).await.err().unwrap(),
        kms.set_min_decryption_version(&key, 1).await.err().unwrap(),
    ];
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
    for err in errors {
        assert!(
            matches!(err, KmsError::Unavailable { .. }) && err.is_retryable(),
            "{err}"
        );
        let shown = format!("{err} {err:?}");
        assert!(!shown.contains(&bao.root_token), "{shown}");
        assert!(!shown.contains(wrapped.as_str()), "{shown}");
    }
}

#[tokio::test]
async fn bad_token_is_denied() {
    let bao = OpenBao::start().await.unwrap();
    let kms = VaultKms::new(VaultConfig::new(
        bao.address.clone(),
        VaultAuth::token("not-a-valid-token"),
    ))
    .unwrap();
    let err = kms.create_tenant_key(&tenant("acme")).await.err().unwrap();
    assert!(matches!(err, KmsError::Denied { .. }), "{err}");
    assert!(!err.is_retryable());
    assert!(!format!("{err} {err:?}").contains("not-a-valid-token"));
}

#[tokio::test]
async fn token_limited_to_one_tenants_key_is_denied_on_other_keys() {
    let bao = OpenBao::start().await.unwrap();
    let root = root_kms(&bao);
    let (acme, globex) = (tenant("acme"), tenant("globex"));
    let acme_key = root.create_tenant_key(&acme).await.unwrap();
    let globex_key = root.create_tenant_key(&globex).await.unwrap();
    let (_, globex_wrapped) = root.generate_dek(ctx(&globex, &globex_key)).await.unwrap();

    let token = bao
        .token_with_policy("acme-dek", &dek_policy("helpr-tenant-acme"))
        .await
        .unwrap();
    let kms = VaultKms::new(VaultConfig::new(
        bao.address.clone(),
        VaultAuth::token(token),
    ))
    .unwrap();

    let (dek, wrapped) = kms.generate_dek(ctx(&acme, &acme_key)).await.unwrap();
    let unwrapped = kms
        .unwrap_dek(ctx(&acme, &acme_key), &wrapped)
        .await
        .unwrap();
    assert_eq!(dek.expose_bytes(), unwrapped.expose_bytes());

    let denied = [
        kms.generate_dek(ctx(&globex, &globex_key))
            .await
            .err()
            .unwrap(),
        kms.unwrap_dek(ctx(&globex, &globex_key), &globex_wrapped)
            .await
            .err()
            .unwrap(),
        kms.rotate_kek(&acme_key).await.err().unwrap(),
        kms.destroy_tenant_key(&acme_key).await.err().unwrap(),
        kms.create_tenant_key(&tenant("initech"))
            .await
            .err()
            .unwrap(),
    ];
    for err in denied {
        assert!(matches!(err, KmsError::Denied { .. }), "{err}");
    }
}

/// Transit permissions for using (not managing) one key.
fn dek_policy(key: &str) -> String {
    format!(
        r#"
path "transit/datakey/plaintext/{key}" {{ capabilities = ["update"] }}
path "transit/decrypt/{key}" {{ capabilities = ["update"] }}
path "transit/rewrap/{key}" {{ capabilities = ["update"] }}
"#
    )
}

struct KubernetesSetup {
    bao: OpenBao,
    fake: FakeKubernetes,
    jwt: String,
    sa: ServiceAccountIdentity,
    key: KeyRef,
    dir: tempfile::TempDir,
}

/// OpenBao with Kubernetes auth pointing at a fake API server that accepts one JWT for
/// `helpr/sync-acme`, and a role `sync-acme` allowed to use tenant acme's key.
async fn kubernetes_setup(token_ttl: &str) -> KubernetesSetup {
    let bao = OpenBao::start().await.unwrap();
    let sa = ServiceAccountIdentity {
        namespace: "helpr".into(),
        name: "sync-acme".into(),
        uid: uuid::Uuid::new_v4().to_string(),
    };
    let jwt = sa.unsigned_jwt();
    let fake = FakeKubernetes::start(jwt.clone(), sa.clone())
        .await
        .unwrap();
    bao.enable_kubernetes_auth(&fake.url).await.unwrap();
    bao.create_policy("acme-dek", &dek_policy("helpr-tenant-acme"))
        .await
        .unwrap();
    bao.create_kubernetes_role("sync-acme", "sync-acme", "helpr", &["acme-dek"], token_ttl)
        .await
        .unwrap();
    let key = root_kms(&bao)
        .create_tenant_key(&tenant("acme"))
        .await
        .unwrap();
    KubernetesSetup {
        bao,
        fake,
        jwt,
        sa,
        key,
        dir: tempfile::tempdir().unwrap(),
    }
}

fn kubernetes_kms(setup: &KubernetesSetup, jwt: &str) -> VaultKms {
    let token_file = setup
        .dir
        .path()
        .join(format!("token-{}", uuid::Uuid::new_v4()));
    std::fs::write(&token_file, jwt).unwrap();
    VaultKms::new(VaultConfig::new(
        setup.bao.address.clone(),
        VaultAuth::Kubernetes {
            mount: "kubernetes".into(),
            role: "sync-acme".into(),
            token_file,
        },
    ))
    .unwrap()
}

#[tokio::test]
async fn kubernetes_auth_logs_in_and_generates_and_unwraps_deks() {
    let setup = kubernetes_setup("1h").await;
    let acme = tenant("acme");
    let kms = kubernetes_kms(&setup, &setup.jwt);

    let (dek, wrapped) = kms.generate_dek(ctx(&acme, &setup.key)).await.unwrap();
    let unwrapped = kms
        .unwrap_dek(ctx(&acme, &setup.key), &wrapped)
        .await
        .unwrap();
    assert_eq!(dek.expose_bytes(), unwrapped.expose_bytes());
    let rewrapped = kms
        .rewrap_dek(ctx(&acme, &setup.key), &wrapped)
        .await
        .unwrap();
    assert_eq!(vault_version(&rewrapped), 1);
    // One login served all three calls.
    assert_eq!(setup.fake.reviews(), 1);

    // The role's policy covers only DEK use, not key management.
    let err = kms.rotate_kek(&setup.key).await.err().unwrap();
    assert!(matches!(err, KmsError::Denied { .. }), "{err}");
    assert_eq!(setup.sa.username(), "system:serviceaccount:helpr:sync-acme");
}

#[tokio::test]
async fn kubernetes_auth_logs_in_again_when_the_vault_token_expires() {
    let setup = kubernetes_setup("2s").await;
    let acme = tenant("acme");
    let kms = kubernetes_kms(&setup, &setup.jwt);

    let (dek, wrapped) = kms.generate_dek(ctx(&acme, &setup.key)).await.unwrap();
    assert_eq!(setup.fake.reviews(), 1);
    tokio::time::sleep(Duration::from_secs(4)).await;

    let unwrapped = kms
        .unwrap_dek(ctx(&acme, &setup.key), &wrapped)
        .await
        .unwrap();
    assert_eq!(dek.expose_bytes(), unwrapped.expose_bytes());
    assert_eq!(setup.fake.reviews(), 2, "expected exactly one re-login");
}

#[tokio::test]
async fn kubernetes_auth_with_a_wrong_jwt_is_denied() {
    let setup = kubernetes_setup("1h").await;
    let acme = tenant("acme");
    // Same claims, other signature: the fake API server does not recognise it.
    let wrong = setup.sa.unsigned_jwt();
    assert_ne!(wrong, setup.jwt);
    let kms = kubernetes_kms(&setup, &wrong);

    let err = kms
        .generate_dek(ctx(&acme, &setup.key))
        .await
        .err()
        .unwrap();
    assert!(matches!(err, KmsError::Denied { .. }), "{err}");
    assert!(setup.fake.reviews() >= 1, "TokenReview was never called");

    // A JWT for a service account the role is not bound to is refused before review.
    let other = ServiceAccountIdentity {
        name: "sync-globex".into(),
        ..setup.sa.clone()
    };
    let kms = kubernetes_kms(&setup, &other.unsigned_jwt());
    let err = kms
        .generate_dek(ctx(&acme, &setup.key))
        .await
        .err()
        .unwrap();
    assert!(matches!(err, KmsError::Denied { .. }), "{err}");

    // A missing token file is a configuration error, not a denial.
    let kms = VaultKms::new(VaultConfig::new(
        setup.bao.address.clone(),
        VaultAuth::Kubernetes {
            mount: "kubernetes".into(),
            role: "sync-acme".into(),
            token_file: setup.dir.path().join("missing"),
        },
    ))
    .unwrap();
    let err = kms
        .generate_dek(ctx(&acme, &setup.key))
        .await
        .err()
        .unwrap();
    assert!(matches!(err, KmsError::Config { .. }), "{err}");
}
