//! Ingest pipeline throughput: each stage alone and the whole pipeline with PostgreSQL, in
//! the same run, on a realistic 20 KiB multipart/alternative reply and on a message with a
//! 200 KiB attachment.
//!
//! `cargo bench -p helpr-dataplane --bench pipeline` (PostgreSQL at `HELPR_BENCH_PG_URL`,
//! default `postgres://postgres@127.0.0.1:5432/postgres`; a fresh database is created and
//! dropped). Every benchmark handles whole messages: messages/s = elements/s.
#![allow(clippy::expect_used, clippy::unwrap_used)] // a benchmark has nothing to recover from

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use base64::Engine;
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use helpr_dataplane::crypto::{self, Dek, DekVersion, SealContext, SealingKey};
use helpr_dataplane::ids::{TenantId, new_record_id};
use helpr_dataplane::ingest::pipeline::{
    self, GmailOrigin, PipelinedWriter, ProcessedMessage, RawInput,
};
use helpr_dataplane::ingest::{parse, quote, sanitize};
use helpr_dataplane::keyring::{Keyring, KeyringConfig};
use helpr_dataplane::kms::local::LocalKms;
use helpr_dataplane::store::{
    MessageFields, NewAttachment, NewInbox, NewMessage, PgStore, Store, now_ms,
};
use sqlx::Connection;

const BATCH: usize = 100;
const BATCHES: usize = 4;

/// A 20 KiB-ish customer reply as Gmail delivers it: text and HTML alternatives, a
/// newsletter-like HTML layout with tables and inline styles, a tracking pixel and a
/// quoted thread.
fn realistic_reply(attachment: Option<usize>) -> Vec<u8> {
    let mut text = String::from(
        "Hello support team,\n\nthe invoice for order 4711 lists the wrong VAT rate. ",
    );
    let mut html = String::from(
        "<div dir=\"ltr\"><table width=\"100%\" cellpadding=\"0\" cellspacing=\"0\" style=\"font-family:Arial,sans-serif;color:#333\"><tr><td>",
    );
    for i in 0..40 {
        let line = format!(
            "Line {i}: we ordered {i} units of the premium plan and expected the reduced rate that was agreed in our contract. "
        );
        text.push_str(&line);
        text.push('\n');
        html.push_str(&format!(
            "<p style=\"margin:0 0 8px 0;font-size:14px\">{line}<a href=\"https://example.com/orders/{i}\">order {i}</a></p>"
        ));
    }
    html.push_str("<img src=\"https://tracker.example.com/open.gif?u=42\" width=\"1\" height=\"1\"></td></tr></table>");
    text.push_str("\nOn Wed, Dec 2, 2026 at 9:00 AM Support <support@acme.example> wrote:\n");
    html.push_str("<div class=\"gmail_quote\"><div class=\"gmail_attr\">On Wed, Dec 2, 2026 at 9:00 AM Support wrote:</div><blockquote class=\"gmail_quote\" style=\"margin:0 0 0 .8ex;border-left:1px #ccc solid;padding-left:1ex\">");
    for i in 0..25 {
        text.push_str(&format!(
            "> earlier answer line {i} with some quoted explanation of the billing process\n"
        ));
        html.push_str(&format!(
            "<div>earlier answer line {i} with some quoted explanation of the billing process</div>"
        ));
    }
    html.push_str("</blockquote></div></div>");
    let mut raw = format!(
        "From: Ann Customer <ann@customer.example>\r\nTo: support@acme.example\r\nSubject: Re: Invoice 4711 has the wrong VAT rate\r\n\
Date: Thu, 03 Dec 2026 10:00:00 +0000\r\nMessage-ID: <bench-{}@customer.example>\r\nMIME-Version: 1.0\r\n\
Content-Type: multipart/mixed; boundary=\"outer\"\r\n\r\n--outer\r\nContent-Type: multipart/alternative; boundary=\"alt\"\r\n\r\n\
--alt\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n{text}\r\n--alt\r\nContent-Type: text/html; charset=utf-8\r\n\r\n{html}\r\n--alt--\r\n",
        new_record_id()
    );
    if let Some(size) = attachment {
        let data: Vec<u8> = (0..size).map(|i| (i * 31 % 251) as u8).collect();
        let b64 = base64::engine::general_purpose::STANDARD.encode(&data);
        raw.push_str("--outer\r\nContent-Type: application/pdf; name=\"invoice-4711.pdf\"\r\nContent-Disposition: attachment; filename=\"invoice-4711.pdf\"\r\nContent-Transfer-Encoding: base64\r\n\r\n");
        for chunk in b64.as_bytes().chunks(76) {
            raw.push_str(std::str::from_utf8(chunk).unwrap());
            raw.push_str("\r\n");
        }
    }
    raw.push_str("--outer--\r\n");
    raw.into_bytes()
}

/// Seals every field directly with a key (no keyring bookkeeping): the seal stage alone.
fn seal_fields(key: &SealingKey, p: &ProcessedMessage) -> usize {
    let id = new_record_id();
    let values = [
        &p.subject,
        &p.from,
        &p.to,
        &p.cc,
        &p.reply_to,
        &p.text,
        &p.html,
        &p.snippet,
    ];
    let mut n = 0;
    for (field, value) in MessageFields::FIELD_NAMES.iter().zip(values) {
        n += crypto::seal(
            key,
            &SealContext::new("bench", &id, field),
            value.as_bytes(),
        )
        .unwrap()
        .as_bytes()
        .len();
    }
    for a in &p.attachments {
        let aid = new_record_id();
        let parts: [&[u8]; 4] = [
            a.name.as_bytes(),
            a.content_type.as_bytes(),
            a.content_id.as_bytes(),
            &a.data,
        ];
        for (field, value) in NewAttachment::FIELD_NAMES.iter().zip(parts) {
            n += crypto::seal(key, &SealContext::new("bench", &aid, field), value)
                .unwrap()
                .as_bytes()
                .len();
        }
    }
    n
}

struct Db {
    rt: tokio::runtime::Runtime,
    store: Arc<dyn Store>,
    keyring: Arc<Keyring>,
    tenant: TenantId,
    inbox: String,
    admin: String,
    name: String,
    _dir: tempfile::TempDir,
}

impl Db {
    fn start() -> Db {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let admin = std::env::var("HELPR_BENCH_PG_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
        let name = format!("helpr_bench_{}", uuid::Uuid::new_v4().simple());
        let dir = tempfile::tempdir().unwrap();
        let (store, keyring, tenant, inbox) = rt.block_on(async {
            let mut conn = sqlx::PgConnection::connect(&admin)
                .await
                .expect("PostgreSQL for the bench");
            sqlx::raw_sql(&format!("CREATE DATABASE \"{name}\""))
                .execute(&mut conn)
                .await
                .unwrap();
            let url = format!("{}/{name}", admin.rsplit_once('/').unwrap().0);
            let store: Arc<dyn Store> = Arc::new(PgStore::connect(&url).await.unwrap());
            let kms = Arc::new(LocalKms::open(dir.path().join("kms")).unwrap());
            let keyring = Arc::new(Keyring::new(kms, store.clone(), KeyringConfig::default()));
            let tenant = TenantId::new("bench").unwrap();
            keyring.provision_tenant(&tenant, "Bench").await.unwrap();
            let inbox = new_record_id();
            store
                .create_inbox(&NewInbox {
                    id: inbox.clone(),
                    tenant_id: tenant.clone(),
                    address: "support@acme.example".into(),
                    connected_at_ms: now_ms(),
                })
                .await
                .unwrap();
            (store, keyring, tenant, inbox)
        });
        Db {
            rt,
            store,
            keyring,
            tenant,
            inbox,
            admin,
            name,
            _dir: dir,
        }
    }

    async fn sealed(&self, p: &ProcessedMessage, gmail_id: u64, size: u64) -> NewMessage {
        let gid = format!("{gmail_id:x}");
        let origin = GmailOrigin {
            tenant: &self.tenant,
            inbox_id: &self.inbox,
            gmail_message_id: &gid,
            gmail_thread_id: &gid,
            gmail_history_id: Some(gmail_id),
            internal_date_ms: now_ms(),
            raw_size: size,
        };
        pipeline::seal_message(&self.keyring, &origin, p)
            .await
            .unwrap()
    }
}

impl Drop for Db {
    fn drop(&mut self) {
        let admin = self.admin.clone();
        let name = self.name.clone();
        self.rt.block_on(async {
            if let Ok(mut conn) = sqlx::PgConnection::connect(&admin).await {
                let _ = sqlx::raw_sql(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                    .execute(&mut conn)
                    .await;
            }
        });
    }
}

fn bench(c: &mut Criterion) {
    let db = Db::start();
    let next_id = AtomicU64::new(1);
    let key = SealingKey::new(DekVersion::FIRST, &Dek::generate().unwrap());
    for (label, raw) in [
        ("20KiB", realistic_reply(None)),
        ("200KiB_attachment", realistic_reply(Some(200 * 1024))),
    ] {
        let parsed = parse::parse(&raw).unwrap();
        let text = parsed.text.clone().unwrap();
        let html = parsed.html.clone().unwrap();
        let stripped_html = quote::strip_html_quotes(&html).kept;
        let processed = pipeline::process(&raw).unwrap();
        eprintln!(
            "{label}: raw {} bytes, html {} bytes, text {} bytes, attachments {}",
            raw.len(),
            html.len(),
            text.len(),
            processed.attachments.len()
        );

        let mut g = c.benchmark_group(format!("pipeline/{label}"));
        g.throughput(Throughput::Elements(1));
        g.bench_function("1_parse", |b| b.iter(|| parse::parse(&raw).unwrap()));
        g.bench_function("2_strip_quotes", |b| {
            b.iter(|| {
                (
                    quote::strip_text_quotes(&text),
                    quote::strip_html_quotes(&html),
                )
            })
        });
        g.bench_function("3_sanitize", |b| {
            b.iter(|| sanitize::sanitize_html(&stripped_html))
        });
        g.bench_function("4_seal", |b| b.iter(|| seal_fields(&key, &processed)));
        g.throughput(Throughput::Elements(BATCH as u64));
        g.bench_function("5_store_pg_batch100", |b| {
            b.iter_batched(
                || {
                    db.rt.block_on(async {
                        let mut batch = Vec::with_capacity(BATCH);
                        for _ in 0..BATCH {
                            batch.push(
                                db.sealed(
                                    &processed,
                                    next_id.fetch_add(1, Ordering::Relaxed),
                                    raw.len() as u64,
                                )
                                .await,
                            );
                        }
                        batch
                    })
                },
                |batch| {
                    db.rt
                        .block_on(
                            db.store
                                .store_synced_messages(&db.tenant, &db.inbox, &batch, None),
                        )
                        .unwrap()
                },
                BatchSize::PerIteration,
            )
        });
        // The product's path: process and seal on the blocking pool (2 at a time), commit
        // each batch of 100 while the next one is prepared (PipelinedWriter).
        g.throughput(Throughput::Elements((BATCH * BATCHES) as u64));
        g.bench_function("6_whole_pipeline_pg_4x100_pipelined", |b| {
            b.iter(|| {
                db.rt.block_on(async {
                    let mut writer =
                        PipelinedWriter::new(db.store.clone(), db.tenant.clone(), db.inbox.clone());
                    let mut stored = 0;
                    for _ in 0..BATCHES {
                        let inputs = (0..BATCH)
                            .map(|_| {
                                let n = next_id.fetch_add(1, Ordering::Relaxed);
                                RawInput {
                                    gmail_message_id: format!("{n:x}"),
                                    gmail_thread_id: format!("{n:x}"),
                                    gmail_history_id: Some(n),
                                    internal_date_ms: now_ms(),
                                    raw: raw.clone(),
                                }
                            })
                            .collect();
                        let sealed = pipeline::process_and_seal_many(
                            &db.keyring,
                            &db.tenant,
                            &db.inbox,
                            inputs,
                            2,
                        )
                        .await
                        .unwrap();
                        let batch: Vec<NewMessage> =
                            sealed.into_iter().map(Result::unwrap).collect();
                        stored += writer.submit(batch, None).await.unwrap().len();
                    }
                    stored + writer.wait().await.unwrap().len()
                })
            })
        });
        g.finish();
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(std::time::Duration::from_secs(1))
        .measurement_time(std::time::Duration::from_secs(4));
    targets = bench
}
criterion_main!(benches);
