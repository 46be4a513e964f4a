//! What the `import`, `search`, `reindex` and `dev` commands do, as library functions (so
//! tests run them without a subprocess).
//!
//! `import` sends local messages through the same pipeline as Gmail ingest: parse, strip
//! quotes, sanitize, seal, store (with the index marker set, in the same transaction), then
//! index. When another process (`dev`) holds the tenant's index writer, the messages stay
//! marked and that process indexes them within its indexing interval.

use std::path::{Path, PathBuf};

use crate::ids::TenantId;
use crate::ingest::pipeline::{self, GmailOrigin};
use crate::keyring::Keyring;
use crate::search::SearchError;
use crate::search::service::{SearchService, ServiceError};
use crate::store::{InboxRecord, InsertOutcome, StoreError, now_ms};

/// Largest message `import` reads (Gmail's own limit is 25 MB of attachments; raw MIME of
/// such a message is about a third larger).
pub const MAX_IMPORT_MESSAGE_BYTES: usize = 48 * 1024 * 1024;

/// Why an import failed as a whole. Per-message problems are reported in [`ImportReport`].
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("cannot read {path}: {kind}")]
    Read {
        path: PathBuf,
        kind: std::io::ErrorKind,
    },
    #[error("{0} holds no message (.eml files or an mbox)")]
    Empty(PathBuf),
    #[error("tenant {0} does not exist; create it with `tenants create --id {0}`")]
    UnknownTenant(TenantId),
    #[error("tenant {0} has no inbox with that address; add it with `inboxes add`")]
    UnknownInbox(TenantId),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Service(#[from] ServiceError),
}

/// One message read from disk: where it came from (file, or mbox and ordinal) and its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawMessage {
    pub origin: String,
    pub bytes: Vec<u8>,
}

/// Reads a `.eml` file, a directory of them (recursively, in name order), or an mbox file
/// (a file whose first line starts with `From `).
pub fn read_messages(path: &Path) -> Result<Vec<RawMessage>, ImportError> {
    let read_err = |p: &Path| {
        let p = p.to_path_buf();
        move |e: std::io::Error| ImportError::Read {
            path: p,
            kind: e.kind(),
        }
    };
    let meta = std::fs::metadata(path).map_err(read_err(path))?;
    let mut out = Vec::new();
    if meta.is_dir() {
        let mut stack = vec![path.to_path_buf()];
        let mut files = Vec::new();
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).map_err(read_err(&dir))? {
                let entry = entry.map_err(read_err(&dir))?;
                let p = entry.path();
                if p.is_dir() {
                    stack.push(p);
                } else if p.extension().and_then(|e| e.to_str()).is_some_and(|e| {
                    e.eq_ignore_ascii_case("eml") || e.eq_ignore_ascii_case("mbox")
                }) {
                    files.push(p);
                }
            }
        }
        files.sort();
        for f in files {
            out.extend(read_file(&f)?);
        }
    } else {
        out.extend(read_file(path)?);
    }
    if out.is_empty() {
        return Err(ImportError::Empty(path.to_path_buf()));
    }
    Ok(out)
}

fn read_file(path: &Path) -> Result<Vec<RawMessage>, ImportError> {
    let bytes = std::fs::read(path).map_err(|e| ImportError::Read {
        path: path.to_path_buf(),
        kind: e.kind(),
    })?;
    let name = path.display().to_string();
    if bytes.starts_with(b"From ") {
        return Ok(split_mbox(&bytes)
            .into_iter()
            .enumerate()
            .map(|(i, m)| RawMessage {
                origin: format!("{name}#{}", i + 1),
                bytes: m,
            })
            .collect());
    }
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(Vec::new());
    }
    Ok(vec![RawMessage {
        origin: name,
        bytes,
    }])
}

/// Splits an mbox (mboxrd/mboxo): messages start at lines beginning with `From `; in a
/// body, `>From ` (any number of `>`) loses one `>`.
pub fn split_mbox(bytes: &[u8]) -> Vec<Vec<u8>> {
    let mut messages = Vec::new();
    let mut current: Option<Vec<u8>> = None;
    for line in bytes.split_inclusive(|&b| b == b'\n') {
        if line.starts_with(b"From ") {
            if let Some(m) = current.take() {
                messages.push(m);
            }
            current = Some(Vec::new());
            continue;
        }
        let Some(m) = current.as_mut() else { continue };
        let quoted = line.iter().take_while(|&&b| b == b'>').count();
        if quoted > 0 && line[quoted..].starts_with(b"From ") {
            m.extend_from_slice(&line[1..]);
        } else {
            m.extend_from_slice(line);
        }
    }
    if let Some(m) = current {
        messages.push(m);
    }
    // The separator's preceding blank line belongs to the format, not the message.
    for m in &mut messages {
        if m.ends_with(b"\n\n") {
            m.pop();
        } else if m.ends_with(b"\r\n\r\n") {
            m.truncate(m.len() - 2);
        }
    }
    messages.retain(|m| !m.iter().all(u8::is_ascii_whitespace));
    messages
}

/// What happened to the messages of one import.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ImportReport {
    pub stored: usize,
    /// Already stored by an earlier import (idempotent by content).
    pub already_stored: usize,
    /// (origin, reason) of messages that could not be parsed; nothing stored for them.
    pub rejected: Vec<(String, String)>,
    /// Messages indexed by this process.
    pub indexed: u64,
    /// Set when another process holds the index: it indexes the stored messages.
    pub index_holder: Option<String>,
}

/// The tenant's inbox with this address.
pub async fn find_inbox(
    keyring: &Keyring,
    tenant: &TenantId,
    address: &str,
) -> Result<InboxRecord, ImportError> {
    let store = keyring.store();
    if store.get_tenant(tenant).await?.is_none() {
        return Err(ImportError::UnknownTenant(tenant.clone()));
    }
    store
        .find_inboxes_by_address(address.trim())
        .await?
        .into_iter()
        .find(|i| &i.tenant_id == tenant)
        .ok_or_else(|| ImportError::UnknownInbox(tenant.clone()))
}

/// A stable id for imported content: `import-` and the first 16 bytes of its SHA-256, hex.
/// Importing the same file twice stores it once.
pub fn import_message_id(raw: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, raw);
    format!("import-{}", hex_lower(&digest.as_ref()[..16]))
}

fn hex_lower(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Imports messages into the inbox: pipeline, seal, store, then index. `progress(done,
/// total)` is called after each message.
pub async fn import(
    service: &SearchService,
    keyring: &Keyring,
    inbox: &InboxRecord,
    messages: &[RawMessage],
    mut progress: impl FnMut(usize, usize),
) -> Result<ImportReport, ImportError> {
    let mut report = ImportReport::default();
    let store = keyring.store();
    for (i, raw) in messages.iter().enumerate() {
        if raw.bytes.len() > MAX_IMPORT_MESSAGE_BYTES {
            report
                .rejected
                .push((raw.origin.clone(), "message is too large".into()));
            progress(i + 1, messages.len());
            continue;
        }
        let processed = match pipeline::process(&raw.bytes) {
            Ok(p) => p,
            Err(e) => {
                report.rejected.push((raw.origin.clone(), e.to_string()));
                progress(i + 1, messages.len());
                continue;
            }
        };
        let id = import_message_id(&raw.bytes);
        let origin = GmailOrigin {
            tenant: &inbox.tenant_id,
            inbox_id: &inbox.id,
            gmail_message_id: &id,
            gmail_thread_id: &id,
            gmail_history_id: None,
            internal_date_ms: processed.date_ms.unwrap_or_else(now_ms),
            raw_size: raw.bytes.len() as u64,
        };
        let sealed = pipeline::seal_message(keyring, &origin, &processed)
            .await
            .map_err(ServiceError::from)?;
        match store.insert_message(&sealed).await? {
            InsertOutcome::Inserted { .. } => report.stored += 1,
            InsertOutcome::AlreadyStored { .. } => report.already_stored += 1,
        }
        progress(i + 1, messages.len());
    }
    match service
        .index_all_pending(&inbox.tenant_id, 200, |_, _| {})
        .await
    {
        Ok(n) => report.indexed = n,
        Err(ServiceError::Search(SearchError::Locked { holder, .. })) => {
            report.index_holder = Some(holder);
        }
        Err(e) => return Err(e.into()),
    }
    Ok(report)
}

/// Compacts the tenant's index when it holds deleted documents; a failure is logged and
/// tried again after [`COMPACTION_INTERVAL`] (or after the next purge).
async fn compact_if_needed(service: &SearchService, tenant: &TenantId) {
    let index = service.index();
    match index.stats(tenant).await {
        Ok(stats) if stats.deleted_documents > 0 => match index.compact(tenant).await {
            Ok(n) => tracing::info!(tenant = %tenant, removed = n, "search index compacted"),
            Err(e) => {
                tracing::warn!(tenant = %tenant, error = %e, "search index compaction failed")
            }
        },
        Ok(_) => {}
        Err(e) => tracing::warn!(tenant = %tenant, error = %e, "search index stats failed"),
    }
}

/// How often [`run_indexer`] runs the search backend's housekeeping
/// ([`crate::search::SearchIndex::maintain`]).
pub const MAINTENANCE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(60);

/// How often [`run_indexer`] compacts a tenant index that holds deleted documents
/// ([`crate::search::SearchIndex::compact`]), besides the compaction after each purge: a
/// purge run by a process that does not hold the index leaves it to the holder.
pub const COMPACTION_INTERVAL: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// Indexes whatever is pending for every tenant (or only `only`), every `interval`, until
/// `shutdown` turns true, and runs the backend's housekeeping every
/// [`MAINTENANCE_INTERVAL`] (which also prunes live events past their retention). Tenant
/// indexes holding deleted documents are compacted on the first round and then at most every
/// [`COMPACTION_INTERVAL`]. A tenant whose index another process holds is skipped (and
/// logged once) until the holder lets go; other failures are logged and retried on the
/// next round.
pub async fn run_indexer(
    service: std::sync::Arc<SearchService>,
    store: std::sync::Arc<dyn crate::store::Store>,
    interval: std::time::Duration,
    only: Option<TenantId>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let mut held_elsewhere: std::collections::HashSet<TenantId> = Default::default();
    let mut last_maintenance: Option<std::time::Instant> = None;
    let mut compacted: std::collections::HashMap<TenantId, std::time::Instant> = Default::default();
    while !*shutdown.borrow() {
        let tenants = match &only {
            Some(t) => Ok(vec![t.clone()]),
            None => store
                .list_tenants()
                .await
                .map(|ts| ts.into_iter().map(|t| t.id).collect()),
        };
        match tenants {
            Ok(tenants) => {
                for t in tenants {
                    match service.index_all_pending(&t, 200, |_, _| {}).await {
                        Ok(n) => {
                            if n > 0 {
                                tracing::info!(tenant = %t, indexed = n, "indexed new messages");
                            }
                            held_elsewhere.remove(&t);
                            let due = compacted
                                .get(&t)
                                .is_none_or(|at| at.elapsed() >= COMPACTION_INTERVAL);
                            if due {
                                compact_if_needed(&service, &t).await;
                                compacted.insert(t.clone(), std::time::Instant::now());
                            }
                        }
                        Err(ServiceError::Search(SearchError::Locked { holder, .. })) => {
                            if held_elsewhere.insert(t.clone()) {
                                tracing::warn!(tenant = %t, %holder, "search index held by another process; it indexes this tenant");
                            }
                        }
                        Err(e) => {
                            tracing::warn!(tenant = %t, error = %e, "indexing failed; retrying");
                        }
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "listing tenants failed; retrying"),
        }
        if last_maintenance.is_none_or(|at| at.elapsed() >= MAINTENANCE_INTERVAL) {
            last_maintenance = Some(std::time::Instant::now());
            match service.index().maintain().await {
                Ok(0) => {}
                Ok(n) => tracing::info!(cleared = n, "search backend housekeeping"),
                Err(e) => {
                    tracing::warn!(error = %e, "search backend housekeeping failed; retrying")
                }
            }
            if let Err(e) = crate::store::prune_expired_mail_events(store.as_ref()).await {
                tracing::warn!(error = %e, "pruning old live events failed; retrying");
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = shutdown.changed() => {}
        }
    }
}
