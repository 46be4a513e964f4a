use std::collections::HashSet;

use aes_gcm::{Aes256Gcm, KeyInit};

use super::*;

fn key(version: u32) -> SealingKey {
    let dek = Dek::generate().unwrap();
    SealingKey::new(DekVersion::new(version).unwrap(), &dek)
}

fn ctx() -> SealContext<'static> {
    SealContext::new(
        "acme",
        "0b6f2a6e-6c39-4c4e-9d0e-9a1c1d7b2f10",
        "message.subject",
    )
}

#[derive(serde::Deserialize)]
struct WycheproofFile {
    #[serde(rename = "testGroups")]
    test_groups: Vec<WycheproofGroup>,
}

#[derive(serde::Deserialize)]
struct WycheproofGroup {
    #[serde(rename = "ivSize")]
    iv_size: u32,
    #[serde(rename = "tagSize")]
    tag_size: u32,
    tests: Vec<WycheproofCase>,
}

#[derive(serde::Deserialize)]
struct WycheproofCase {
    #[serde(rename = "tcId")]
    tc_id: u32,
    key: String,
    iv: String,
    aad: String,
    msg: String,
    ct: String,
    tag: String,
    result: String,
}

#[test]
fn wycheproof_valid_vectors_open_and_invalid_ones_fail() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../shared/testdata/wycheproof/aes256gcm_96.json"
    );
    let file: WycheproofFile =
        serde_json::from_slice(&std::fs::read(path).expect("wycheproof vectors present")).unwrap();
    let (mut valid, mut invalid) = (0, 0);
    for group in &file.test_groups {
        assert_eq!((group.iv_size, group.tag_size), (96, 128));
        for case in &group.tests {
            let key = hex::decode(&case.key).unwrap();
            let cipher = Aes256Gcm::new_from_slice(&key).unwrap();
            let iv = hex::decode(&case.iv).unwrap();
            let aad = hex::decode(&case.aad).unwrap();
            let msg = hex::decode(&case.msg).unwrap();
            let mut ct = hex::decode(&case.ct).unwrap();
            ct.extend(hex::decode(&case.tag).unwrap());
            let opened = open_detached(&cipher, &iv, &aad, &ct);
            match case.result.as_str() {
                "valid" => {
                    valid += 1;
                    assert_eq!(opened.as_deref(), Ok(&msg[..]), "tcId {}", case.tc_id);
                    let sealed = seal_detached(&cipher, &iv, &aad, &msg).unwrap();
                    assert_eq!(sealed, ct, "tcId {} seals to the vector", case.tc_id);
                }
                "invalid" => {
                    invalid += 1;
                    assert!(opened.is_err(), "tcId {} must not open", case.tc_id);
                }
                other => panic!("unexpected result {other}"),
            }
        }
    }
    assert_eq!((valid, invalid), (39, 27));
}

#[test]
fn sealed_value_opens_to_its_plaintext() {
    let k = key(3);
    let sealed = seal(&k, &ctx(), b"hello world").unwrap();
    assert_eq!(sealed.key_version().unwrap().get(), 3);
    assert_eq!(sealed.as_bytes()[0], FORMAT_V1);
    assert_eq!(sealed.as_bytes().len(), HEADER_LEN + 11 + TAG_LEN);
    assert!(!sealed.as_bytes().windows(5).any(|w| w == b"hello"));
    assert_eq!(open(&k, &ctx(), &sealed).unwrap(), b"hello world");
}

#[test]
fn empty_plaintext_seals_and_opens() {
    let k = key(1);
    let sealed = seal(&k, &ctx(), b"").unwrap();
    assert_eq!(open(&k, &ctx(), &sealed).unwrap(), b"");
}

#[test]
fn flipping_any_byte_of_nonce_ciphertext_or_tag_fails_with_an_error() {
    let k = key(1);
    let sealed = seal(&k, &ctx(), b"a short but not empty plaintext").unwrap();
    let bytes = sealed.as_bytes().to_vec();
    for i in 0..bytes.len() {
        for bit in [0x01u8, 0x80, 0xff] {
            let mut tampered = bytes.clone();
            tampered[i] ^= bit;
            let result = SealedField::from_bytes(tampered).and_then(|s| open(&k, &ctx(), &s));
            assert!(
                result.is_err(),
                "byte {i} flipped with {bit:#x} still opened"
            );
        }
    }
    // Truncations fail too, never panic.
    for len in 0..bytes.len() {
        let result =
            SealedField::from_bytes(bytes[..len].to_vec()).and_then(|s| open(&k, &ctx(), &s));
        assert!(result.is_err(), "truncated to {len} still opened");
    }
}

#[test]
fn value_copied_to_another_record_field_tenant_or_version_fails_to_open() {
    let dek = Dek::generate().unwrap();
    let v1 = SealingKey::new(DekVersion::new(1).unwrap(), &dek);
    let sealed = seal(&v1, &ctx(), b"secret subject").unwrap();
    let c = ctx();
    let others = [
        SealContext::new(c.tenant, "another-record", c.field),
        SealContext::new(c.tenant, c.record, "message.text_body"),
        SealContext::new("globex", c.record, c.field),
        // Length prefixes: moving bytes between parts must not produce the same AAD.
        SealContext::new("acme0", "b6f2a6e-6c39-4c4e-9d0e-9a1c1d7b2f10", c.field),
    ];
    for other in others {
        assert_eq!(
            open(&v1, &other, &sealed),
            Err(CryptoError::Authentication),
            "{other:?}"
        );
    }
    // Same key bytes registered as another version: header and AAD disagree.
    let v2 = SealingKey::new(DekVersion::new(2).unwrap(), &dek);
    assert_eq!(open(&v2, &c, &sealed), Err(CryptoError::Authentication));
    let mut relabelled = sealed.as_bytes().to_vec();
    relabelled[1..5].copy_from_slice(&2u32.to_be_bytes());
    let relabelled = SealedField::from_bytes(relabelled).unwrap();
    assert_eq!(open(&v2, &c, &relabelled), Err(CryptoError::Authentication));
    // Another key entirely.
    assert_eq!(open(&key(1), &c, &sealed), Err(CryptoError::Authentication));
}

#[test]
fn unknown_format_and_version_zero_are_rejected() {
    let k = key(1);
    let mut bytes = seal(&k, &ctx(), b"x").unwrap().into_bytes();
    bytes[0] = 0x02;
    assert_eq!(
        SealedField::from_bytes(bytes.clone()),
        Err(CryptoError::UnknownFormat(0x02))
    );
    bytes[0] = FORMAT_V1;
    bytes[1..5].copy_from_slice(&0u32.to_be_bytes());
    assert!(matches!(
        SealedField::from_bytes(bytes),
        Err(CryptoError::Malformed(_))
    ));
}

#[test]
fn one_million_seals_never_repeat_a_nonce() {
    let k = key(1);
    let c = ctx();
    let mut seen = HashSet::with_capacity(1_000_000);
    for _ in 0..1_000_000 {
        let sealed = seal(&k, &c, b"m").unwrap();
        let nonce: [u8; NONCE_LEN] = sealed.nonce().try_into().unwrap();
        assert!(seen.insert(nonce), "nonce repeated");
    }
    assert_eq!(seen.len(), 1_000_000);
}

#[test]
fn dek_rejects_wrong_lengths() {
    assert!(Dek::from_slice(&[0u8; 31]).is_err());
    assert!(Dek::from_slice(&[0u8; 33]).is_err());
    assert!(Dek::from_slice(&[0u8; 32]).is_ok());
}

#[test]
fn generated_deks_differ() {
    let a = Dek::generate().unwrap();
    let b = Dek::generate().unwrap();
    assert_ne!(a.expose_bytes(), b.expose_bytes());
}

#[test]
fn errors_never_render_key_or_plaintext_bytes() {
    let k = key(1);
    let sealed = seal(&k, &ctx(), b"PLAINTEXT-CANARY").unwrap();
    let err = open(&key(1), &ctx(), &sealed).unwrap_err();
    let text = format!("{err} {err:?} {sealed:?}");
    assert!(!text.contains("PLAINTEXT-CANARY"));
    assert!(!text.contains(&hex::encode(sealed.nonce())));
}
