//! The operator's per-tenant Vault provisioning against a real OpenBao dev server: the
//! transit key, a policy limited to that key, and a Kubernetes-auth role for the tenant's
//! sync pods are created idempotently; the pods (logging in with their service account)
//! can use their key and nothing else; Retain removes their access and keeps the key;
//! Shred destroys the key so a stored wrapped DEK no longer unwraps.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use helpr_dataplane::crypto::DekVersion;
use helpr_dataplane::ids::TenantId;
use helpr_dataplane::kms::vault::{VaultAuth, VaultConfig, VaultKms};
use helpr_dataplane::kms::{DekContext, KeyRef, Kms, KmsError};
use helpr_operator::vault::{TenantVaultPlan, VaultNaming, provision, retain, shred};
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

/// The operator's client: the credentials a Tenant's `tokenSecretRef` names.
fn admin(bao: &OpenBao) -> VaultKms {
    VaultKms::new(VaultConfig::new(
        bao.address.clone(),
        VaultAuth::token(bao.root_token.clone()),
    ))
    .unwrap()
}

/// A sync pod's client: Kubernetes login with the role the operator created.
fn pod(bao: &OpenBao, dir: &tempfile::TempDir, role: &str, jwt: &str) -> VaultKms {
    let token_file = dir
        .path()
        .join(format!("sa-token-{}", uuid::Uuid::new_v4()));
    std::fs::write(&token_file, jwt).unwrap();
    VaultKms::new(VaultConfig::new(
        bao.address.clone(),
        VaultAuth::Kubernetes {
            mount: "kubernetes".into(),
            role: role.into(),
            token_file,
        },
    ))
    .unwrap()
}

struct Setup {
    bao: OpenBao,
    _fake: FakeKubernetes,
    jwt: String,
    dir: tempfile::TempDir,
}

async fn setup() -> Setup {
    let bao = OpenBao::start().await.unwrap();
    let sa = ServiceAccountIdentity {
        namespace: "helpr".into(),
        name: "helpr-sync-acme".into(),
        uid: uuid::Uuid::new_v4().to_string(),
    };
    let jwt = sa.unsigned_jwt();
    let fake = FakeKubernetes::start(jwt.clone(), sa).await.unwrap();
    bao.enable_kubernetes_auth(&fake.url).await.unwrap();
    Setup {
        bao,
        _fake: fake,
        jwt,
        dir: tempfile::tempdir().unwrap(),
    }
}

fn plan(id: &str) -> TenantVaultPlan {
    TenantVaultPlan::new(
        &tenant(id),
        "helpr",
        &format!("helpr-sync-{id}"),
        &VaultNaming::default(),
    )
}

#[tokio::test]
async fn provisioning_is_idempotent_and_the_pods_can_use_their_key_and_nothing_else() {
    let s = setup().await;
    let admin = admin(&s.bao);
    let acme = plan("acme");
    let beta = plan("beta");
    provision(&admin, &acme).await.unwrap();
    provision(&admin, &acme).await.unwrap();
    provision(&admin, &beta).await.unwrap();

    // What is in Vault is exactly the plan.
    assert_eq!(
        admin.read_policy(&acme.access.policy).await.unwrap(),
        Some(admin.tenant_policy(&acme.key).unwrap())
    );
    let role = s
        .bao
        .api("GET", "auth/kubernetes/role/helpr-sync-acme", None)
        .await
        .unwrap();
    let data = &role["data"];
    assert_eq!(
        data["bound_service_account_names"],
        serde_json::json!(["helpr-sync-acme"])
    );
    assert_eq!(
        data["bound_service_account_namespaces"],
        serde_json::json!(["helpr"])
    );
    assert_eq!(
        data["token_policies"],
        serde_json::json!(["helpr-sync-acme"])
    );
    assert_eq!(data["token_no_default_policy"], true);
    assert_eq!(data["token_ttl"], 3600);
    let keys = s.bao.api("LIST", "transit/keys", None).await.unwrap();
    let names = keys["data"]["keys"].as_array().unwrap();
    assert!(
        names.contains(&serde_json::json!("helpr-tenant-acme")),
        "{keys}"
    );

    // The sync pod logs in with its service account and uses its own key.
    let acme_id = tenant("acme");
    let sync = pod(&s.bao, &s.dir, "helpr-sync-acme", &s.jwt);
    let (dek, wrapped) = sync.generate_dek(ctx(&acme_id, &acme.key)).await.unwrap();
    let unwrapped = sync
        .unwrap_dek(ctx(&acme_id, &acme.key), &wrapped)
        .await
        .unwrap();
    assert_eq!(dek.expose_bytes(), unwrapped.expose_bytes());
    sync.rewrap_dek(ctx(&acme_id, &acme.key), &wrapped)
        .await
        .unwrap();

    // Nothing else: not another tenant's key, not rotation, not destruction.
    let beta_id = tenant("beta");
    assert!(matches!(
        sync.generate_dek(ctx(&beta_id, &beta.key)).await,
        Err(KmsError::Denied { .. })
    ));
    assert!(matches!(
        sync.rotate_kek(&acme.key).await,
        Err(KmsError::Denied { .. })
    ));
    assert!(matches!(
        sync.destroy_tenant_key(&acme.key).await,
        Err(KmsError::Denied { .. })
    ));
    assert!(matches!(
        sync.read_policy(&acme.access.policy).await,
        Err(KmsError::Denied { .. })
    ));
    // The pod's service account cannot use beta's role either.
    let intruder = pod(&s.bao, &s.dir, "helpr-sync-beta", &s.jwt);
    assert!(
        intruder
            .generate_dek(ctx(&beta_id, &beta.key))
            .await
            .is_err()
    );
}

#[tokio::test]
async fn retain_removes_the_pods_access_and_keeps_the_key() {
    let s = setup().await;
    let admin = admin(&s.bao);
    let acme = plan("acme");
    provision(&admin, &acme).await.unwrap();
    let acme_id = tenant("acme");
    let (_, wrapped) = pod(&s.bao, &s.dir, "helpr-sync-acme", &s.jwt)
        .generate_dek(ctx(&acme_id, &acme.key))
        .await
        .unwrap();

    retain(&admin, &acme).await.unwrap();
    retain(&admin, &acme).await.unwrap();
    assert_eq!(admin.read_policy(&acme.access.policy).await.unwrap(), None);
    assert!(
        s.bao
            .api("GET", "auth/kubernetes/role/helpr-sync-acme", None)
            .await
            .is_err()
    );
    let sync = pod(&s.bao, &s.dir, "helpr-sync-acme", &s.jwt);
    let denied = sync.unwrap_dek(ctx(&acme_id, &acme.key), &wrapped).await;
    assert!(denied.is_err(), "a retained tenant's pods keep no access");
    // The key (and so the data) stays recoverable by an administrator.
    admin
        .unwrap_dek(ctx(&acme_id, &acme.key), &wrapped)
        .await
        .unwrap();
}

#[tokio::test]
async fn shred_destroys_the_key_so_stored_deks_never_unwrap_again() {
    let s = setup().await;
    let admin = admin(&s.bao);
    let acme = plan("acme");
    let beta = plan("beta");
    provision(&admin, &acme).await.unwrap();
    provision(&admin, &beta).await.unwrap();
    let acme_id = tenant("acme");
    let beta_id = tenant("beta");
    let (_, wrapped) = admin.generate_dek(ctx(&acme_id, &acme.key)).await.unwrap();
    let (_, beta_wrapped) = admin.generate_dek(ctx(&beta_id, &beta.key)).await.unwrap();

    shred(&admin, &acme).await.unwrap();
    // Idempotent: a retried cleanup finds nothing left and succeeds.
    shred(&admin, &acme).await.unwrap();
    assert!(matches!(
        admin.unwrap_dek(ctx(&acme_id, &acme.key), &wrapped).await,
        Err(KmsError::KeyNotFound { .. })
    ));
    assert_eq!(admin.read_policy(&acme.access.policy).await.unwrap(), None);
    // Another tenant is untouched.
    admin
        .unwrap_dek(ctx(&beta_id, &beta.key), &beta_wrapped)
        .await
        .unwrap();
    assert!(
        admin
            .read_policy(&beta.access.policy)
            .await
            .unwrap()
            .is_some()
    );
}

#[tokio::test]
async fn vault_outage_and_bad_credentials_are_typed_errors() {
    let mut s = setup().await;
    let acme = plan("acme");
    let wrong = VaultKms::new(VaultConfig::new(
        s.bao.address.clone(),
        VaultAuth::token("not-a-token"),
    ))
    .unwrap();
    let denied = provision(&wrong, &acme).await.unwrap_err();
    assert!(matches!(denied, KmsError::Denied { .. }), "{denied}");
    assert!(!denied.is_retryable());
    let admin = admin(&s.bao);
    s.bao.stop();
    let down = provision(&admin, &acme).await.unwrap_err();
    assert!(down.is_retryable(), "{down}");
}
