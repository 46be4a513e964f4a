//! Builders for test data: tenants, inboxes and sealed messages, through the real keyring.
//!
//! Test setup that fails has nothing to recover: these builders panic with a message.
#![allow(clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use helpr_dataplane::crypto::{Dek, SealContext};
use helpr_dataplane::ids::{TenantId, new_record_id};
use helpr_dataplane::keyring::{Keyring, KeyringConfig};
use helpr_dataplane::kms::{DekContext, KeyRef, Kms, KmsError, WrappedDek};
use helpr_dataplane::store::{MessageFields, NewAttachment, NewInbox, NewMessage, Store, now_ms};

/// Plaintext of one message: the eight sealed message fields, in [`MessageFields`] order,
/// and attachments as (name, content type, content id, bytes).
#[derive(Debug, Clone)]
pub struct PlainMessage {
    pub fields: [String; 8],
    pub attachments: Vec<[Vec<u8>; 4]>,
}

impl PlainMessage {
    /// A message whose every field and attachment part contains `marker`.
    pub fn marked(marker: &str) -> Self {
        let f = |name: &str| format!("{name} {marker} {name}");
        Self {
            fields: [
                f("Subject"),
                format!("Ann <ann.{marker}@example.com>"),
                format!("support.{marker}@acme.example"),
                format!("cc.{marker}@example.org"),
                format!("reply.{marker}@example.com"),
                f("Hello, the text body says"),
                format!("<p>HTML body {marker}</p>"),
                f("snippet"),
            ],
            attachments: vec![[
                format!("report-{marker}.pdf").into_bytes(),
                format!("application/x-{marker}").into_bytes(),
                format!("<{marker}@cid>").into_bytes(),
                format!("%PDF-1.7 attachment bytes {marker}").into_bytes(),
            ]],
        }
    }
}

/// Creates an inbox for `tenant` with a random address.
pub async fn create_inbox(store: &dyn Store, tenant: &TenantId, address: &str) -> String {
    let id = new_record_id();
    store
        .create_inbox(&NewInbox {
            id: id.clone(),
            tenant_id: tenant.clone(),
            address: address.to_string(),
            connected_at_ms: now_ms(),
        })
        .await
        .expect("create inbox");
    id
}

/// Seals `plain` through the keyring into a message ready for [`Store::insert_message`].
pub async fn seal_message(
    keyring: &Keyring,
    tenant: &TenantId,
    inbox_id: &str,
    gmail_id: &str,
    thread_id: &str,
    plain: &PlainMessage,
) -> NewMessage {
    let id = new_record_id();
    let t = tenant.as_str();
    let mut items: Vec<(SealContext<'_>, &[u8])> = MessageFields::FIELD_NAMES
        .iter()
        .zip(plain.fields.iter())
        .map(|(name, value)| (SealContext::new(t, &id, name), value.as_bytes()))
        .collect();
    let attachment_ids: Vec<String> = plain.attachments.iter().map(|_| new_record_id()).collect();
    for (aid, parts) in attachment_ids.iter().zip(&plain.attachments) {
        for (name, value) in NewAttachment::FIELD_NAMES.iter().zip(parts.iter()) {
            items.push((SealContext::new(t, aid, name), value.as_slice()));
        }
    }
    let mut sealed = keyring
        .seal_many(tenant, &items)
        .await
        .expect("seal")
        .into_iter();
    let mut next = || sealed.next().expect("one sealed value per item");
    let fields = MessageFields {
        subject: next(),
        from_addr: next(),
        to_addrs: next(),
        cc_addrs: next(),
        reply_to: next(),
        text_body: next(),
        html_body: next(),
        snippet: next(),
    };
    let attachments = attachment_ids
        .iter()
        .zip(&plain.attachments)
        .enumerate()
        .map(|(i, (aid, parts))| NewAttachment {
            id: aid.clone(),
            ordinal: i as u32,
            name: next(),
            content_type: next(),
            content_id: next(),
            data: next(),
            size_bytes: parts[3].len() as u64,
            inline: false,
        })
        .collect();
    NewMessage {
        id,
        tenant_id: tenant.clone(),
        inbox_id: inbox_id.to_string(),
        gmail_message_id: gmail_id.to_string(),
        gmail_thread_id: thread_id.to_string(),
        gmail_history_id: Some(1000),
        internal_date_ms: now_ms(),
        size_bytes: 4096,
        fields,
        attachments,
    }
}

/// Opens every sealed field of a stored message (and its attachments' bytes, read from
/// `store`) back to its plaintext.
pub async fn open_message(
    keyring: &Keyring,
    store: &dyn helpr_dataplane::store::Store,
    msg: &helpr_dataplane::store::StoredMessage,
) -> PlainMessage {
    let t = msg.tenant_id.as_str();
    let f = &msg.fields;
    let sealed = [
        &f.subject,
        &f.from_addr,
        &f.to_addrs,
        &f.cc_addrs,
        &f.reply_to,
        &f.text_body,
        &f.html_body,
        &f.snippet,
    ];
    let mut fields: [String; 8] = Default::default();
    for (i, (name, value)) in MessageFields::FIELD_NAMES.iter().zip(sealed).enumerate() {
        let bytes = keyring
            .open(&SealContext::new(t, &msg.id, name), value)
            .await
            .expect("open field");
        fields[i] = String::from_utf8(bytes).expect("utf-8");
    }
    let mut attachments = Vec::new();
    for a in &msg.attachments {
        let data = store
            .get_attachment_data(&msg.tenant_id, &msg.id, a.ordinal)
            .await
            .expect("read attachment data")
            .expect("attachment data");
        let mut parts: [Vec<u8>; 4] = Default::default();
        for (i, (name, value)) in NewAttachment::FIELD_NAMES
            .iter()
            .zip([&a.name, &a.content_type, &a.content_id, &data])
            .enumerate()
        {
            parts[i] = keyring
                .open(&SealContext::new(t, &a.id, name), value)
                .await
                .expect("open attachment");
        }
        attachments.push(parts);
    }
    PlainMessage {
        fields,
        attachments,
    }
}

/// A keyring over `kms` and `store` with test-friendly settings.
pub fn keyring(kms: Arc<dyn Kms>, store: Arc<dyn Store>, cfg: KeyringConfig) -> Keyring {
    Keyring::new(kms, store, cfg)
}

/// Wraps a real KMS and counts the calls that reach it.
pub struct CountingKms<K> {
    pub inner: K,
    pub unwraps: AtomicUsize,
    pub generates: AtomicUsize,
}

impl<K> CountingKms<K> {
    pub fn new(inner: K) -> Self {
        Self {
            inner,
            unwraps: AtomicUsize::new(0),
            generates: AtomicUsize::new(0),
        }
    }
    pub fn unwraps(&self) -> usize {
        self.unwraps.load(Ordering::SeqCst)
    }
}

#[async_trait::async_trait]
impl<K: Kms> Kms for CountingKms<K> {
    fn backend(&self) -> &'static str {
        self.inner.backend()
    }
    async fn create_tenant_key(&self, tenant: &TenantId) -> Result<KeyRef, KmsError> {
        self.inner.create_tenant_key(tenant).await
    }
    async fn generate_dek(&self, ctx: DekContext<'_>) -> Result<(Dek, WrappedDek), KmsError> {
        self.generates.fetch_add(1, Ordering::SeqCst);
        self.inner.generate_dek(ctx).await
    }
    async fn unwrap_dek(&self, ctx: DekContext<'_>, wrapped: &WrappedDek) -> Result<Dek, KmsError> {
        self.unwraps.fetch_add(1, Ordering::SeqCst);
        // Widen the window in which concurrent callers could race past the cache.
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        self.inner.unwrap_dek(ctx, wrapped).await
    }
    async fn rewrap_dek(
        &self,
        ctx: DekContext<'_>,
        wrapped: &WrappedDek,
    ) -> Result<WrappedDek, KmsError> {
        self.inner.rewrap_dek(ctx, wrapped).await
    }
    async fn rotate_kek(&self, key: &KeyRef) -> Result<u32, KmsError> {
        self.inner.rotate_kek(key).await
    }
    async fn destroy_tenant_key(&self, key: &KeyRef) -> Result<(), KmsError> {
        self.inner.destroy_tenant_key(key).await
    }
}
