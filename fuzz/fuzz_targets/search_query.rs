//! The search query language, end to end on a real tantivy index.
//!
//! Input: arbitrary bytes; inputs that are not UTF-8 are skipped (the API and CLI only take
//! strings). Every input is run through:
//!
//! 1. `Query::parse_for` in plaintext mode (prefix and fuzzy words allowed): never panics; an
//!    error names a position within the input (in characters) and has a message.
//! 2. For a query that parses: it matches something by itself (`is_positive`); written back
//!    with `Display` it parses to the same query (or, where folding made it longer than
//!    `MAX_QUERY_CHARS`, is refused as too long); in blind mode it parses the same unless it
//!    has a prefix or fuzzy word, which blind mode refuses with `PatternNeedsPlaintext`; the
//!    first folding rules (`Normalization::V1`) parse it without panicking.
//! 3. The query searched, through `SearchIndex::search`, in a small blind index and a small
//!    plaintext index (a few messages in three inboxes, built once per process): the
//!    plaintext search always answers; the blind search answers unless the query has a
//!    prefix or fuzzy word, which is refused as an invalid request (never searched); every
//!    hit is in the request's inbox filter, only once, newest first.
#![no_main]

use std::collections::BTreeSet;
use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;

use helpr_dataplane::ids::TenantId;
use helpr_dataplane::search::{
    Field, INDEX_KEY_LEN, IndexDoc, IndexKey, IndexKeyVersion, Indexer, MAX_QUERY_CHARS, Mode,
    Normalization, Query, QueryErrorKind, SearchError, SearchIndex, SearchRequest, TantivyConfig,
    TantivyIndex, index_query,
};

const MAIL: [(&str, &str, &str, &str, &str); 6] = [
    (
        "inbox-a",
        "Quarterly report",
        "Ann Lee <ann@acme.example>",
        "Please find the quarterly report attached; revenue grew.",
        "report.pdf",
    ),
    (
        "inbox-a",
        "Password reset does not arrive",
        "Bob <bob@kunde.example>",
        "I clicked \"forgot password\" twice, nothing arrived. Über-wichtig!",
        "",
    ),
    (
        "inbox-b",
        "Facture en double",
        "Émile <emile@client.example>",
        "Nous avons reçu la facture deux fois. 請求書 東京",
        "facture-2026.pdf",
    ),
    (
        "inbox-b",
        "Re: meeting at 10:30",
        "Dana <dana@client.example>",
        "The e-mail about the outage in region eu-west; don't reply.",
        "",
    ),
    (
        "inbox-c",
        "कुल बिक्री",
        "Asha <asha@kunde.example>",
        "इस महीने की कुल राशि संलग्न है। 🎉 invoice INV-2026-0815",
        "",
    ),
    (
        "inbox-c",
        "Newsletter",
        "News <news@letters.example>",
        "Invoices, invoicing and invoiced: a recieve receive recipe.",
        "",
    ),
];

struct Fixture {
    rt: tokio::runtime::Runtime,
    index: TantivyIndex,
    key: IndexKey,
    blind: TenantId,
    plain: TenantId,
}

static FIXTURE: LazyLock<Fixture> = LazyLock::new(|| {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let dir = std::env::temp_dir().join(format!("helpr-fuzz-search-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut cfg = TantivyConfig::new(&dir);
    cfg.writer_heap_bytes = TantivyConfig::MIN_WRITER_HEAP_BYTES;
    let index = rt.block_on(async { TantivyIndex::open(cfg) }).expect("index");
    let key = IndexKey::from_slice(IndexKeyVersion::FIRST, &[7; INDEX_KEY_LEN]).expect("key");
    let blind = TenantId::new("fuzzblind").expect("tenant");
    let plain = TenantId::new("fuzzplain").expect("tenant");
    for (tenant, indexer) in [
        (&blind, Indexer::Blind(&key)),
        (&plain, Indexer::PLAINTEXT),
    ] {
        let docs = MAIL
            .iter()
            .enumerate()
            .map(|(i, (inbox, subject, from, body, file))| {
                let mut fields = vec![
                    indexer.index_text(Field::Subject, subject),
                    indexer.index_text(Field::From, from),
                    indexer.index_text(Field::To, "Support <support@helpr.example>"),
                    indexer.index_text(Field::Body, body),
                ];
                if !file.is_empty() {
                    fields.push(indexer.index_text(Field::AttachmentName, file));
                }
                IndexDoc {
                    message_id: format!("00000000-0000-4000-8000-{i:012}"),
                    conversation_id: format!("c{}", i / 2),
                    inbox_id: (*inbox).to_owned(),
                    date_ms: 1_790_000_000_000 + i as i64 * 86_400_000,
                    has_attachment: !file.is_empty(),
                    key_version: indexer.key_version().map(IndexKeyVersion::get),
                    fields,
                }
            })
            .collect();
        rt.block_on(async {
            index.index(tenant, docs).await?;
            index.flush(tenant).await
        })
        .expect("fixture indexed");
    }
    Fixture {
        rt,
        index,
        key,
        blind,
        plain,
    }
});

fn filter(data: &[u8]) -> BTreeSet<String> {
    // The input's length picks one of the filters, so every filter is exercised.
    match data.len() % 3 {
        0 => ["inbox-a", "inbox-b", "inbox-c"].as_slice(),
        1 => ["inbox-a"].as_slice(),
        _ => ["inbox-b", "inbox-c", "inbox-z"].as_slice(),
    }
    .iter()
    .map(|s| (*s).to_owned())
    .collect()
}

fn search(
    fx: &Fixture,
    tenant: &TenantId,
    indexer: &Indexer<'_>,
    query: &Query,
    inboxes: &BTreeSet<String>,
) -> Result<(), SearchError> {
    let request = SearchRequest {
        query: index_query(query, indexer),
        inboxes: inboxes.clone(),
        limit: 4,
        after: None,
    };
    let page = fx.rt.block_on(fx.index.search(tenant, &request))?;
    let mut seen = BTreeSet::new();
    let mut last = None;
    for hit in &page.hits {
        assert!(inboxes.contains(&hit.inbox_id), "hit outside the filter");
        assert!(seen.insert(hit.message_id.clone()), "hit twice");
        let key = (hit.date_ms, hit.seq);
        assert!(last.is_none_or(|l| l >= key), "not newest first");
        last = Some(key);
    }
    assert!(page.hits.len() <= 4);
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let Ok(input) = std::str::from_utf8(data) else {
        return;
    };
    let _ = Query::parse_with(input, Normalization::V1);
    let query = match Query::parse_for(input, Normalization::CURRENT, Mode::Plaintext) {
        Ok(q) => q,
        Err(err) => {
            assert!(err.position <= input.chars().count(), "position past the end");
            assert!(!err.to_string().is_empty());
            return;
        }
    };
    assert!(query.is_positive());
    let written = query.to_string();
    let reparsed = Query::parse_for(&written, Normalization::CURRENT, Mode::Plaintext);
    if written.chars().count() > MAX_QUERY_CHARS {
        // Folding lengthened it (`¼` is written `1⁄4`); the limit is on what was typed.
        assert_eq!(reparsed.map_err(|e| e.kind), Err(QueryErrorKind::TooLong));
    } else {
        assert_eq!(reparsed.as_ref(), Ok(&query), "{written:?}");
    }
    match Query::parse_for(input, Normalization::CURRENT, Mode::Blind) {
        Ok(blind) => {
            assert!(!query.has_patterns());
            assert_eq!(blind, query);
        }
        Err(err) => {
            assert!(query.has_patterns());
            assert_eq!(err.kind, QueryErrorKind::PatternNeedsPlaintext);
        }
    }

    let fx = &*FIXTURE;
    let inboxes = filter(data);
    search(fx, &fx.plain, &Indexer::PLAINTEXT, &query, &inboxes).expect("plaintext search");
    match search(fx, &fx.blind, &Indexer::Blind(&fx.key), &query, &inboxes) {
        Ok(()) => assert!(!query.has_patterns(), "a blind index answered a pattern"),
        Err(SearchError::InvalidRequest(_)) => assert!(query.has_patterns()),
        Err(other) => panic!("blind search failed: {other}"),
    }
});
