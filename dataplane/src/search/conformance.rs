//! The conformance suite every [`SearchIndex`] backend passes. Each case takes a fresh,
//! empty backend; [`conformance_tests!`] turns the cases into tests for one backend.

use std::collections::BTreeSet;

use super::blind::{Field, INDEX_KEY_LEN, IndexKey, IndexKeyVersion, Indexer};
use super::index::{Cursor, DeleteScope, IndexDoc, SearchIndex, SearchRequest};
use super::query::{Query, index_query};
use crate::ids::TenantId;

pub(crate) const DAY_MS: i64 = 86_400_000;
/// 2026-01-01T00:00:00Z.
pub(crate) const BASE_MS: i64 = 1_767_225_600_000;

pub(crate) fn tenant(name: &str) -> TenantId {
    TenantId::new(name).unwrap_or_else(|e| panic!("tenant id {name}: {e}"))
}

pub(crate) fn key(byte: u8) -> IndexKey {
    IndexKey::from_slice(IndexKeyVersion::FIRST, &[byte; INDEX_KEY_LEN])
        .unwrap_or_else(|e| panic!("index key: {e}"))
}

/// A message to index, as plaintext (turned into terms by [`Msg::doc`]).
#[derive(Clone)]
pub(crate) struct Msg {
    pub id: String,
    pub conversation: String,
    pub inbox: String,
    pub date_ms: i64,
    pub subject: String,
    pub from: String,
    pub to: String,
    pub body: String,
    pub attachments: Vec<String>,
}

impl Msg {
    pub fn new(id: &str, inbox: &str, day: i64, subject: &str, body: &str) -> Self {
        Self {
            id: id.to_owned(),
            conversation: format!("conv-{id}"),
            inbox: inbox.to_owned(),
            date_ms: BASE_MS + day * DAY_MS,
            subject: subject.to_owned(),
            from: "Alice Example <alice@customer.example>".to_owned(),
            to: "Support <support@helpr.example>".to_owned(),
            body: body.to_owned(),
            attachments: Vec::new(),
        }
    }

    pub fn doc(&self, indexer: &Indexer<'_>) -> IndexDoc {
        let names = self.attachments.join(" ");
        IndexDoc {
            message_id: self.id.clone(),
            conversation_id: self.conversation.clone(),
            inbox_id: self.inbox.clone(),
            date_ms: self.date_ms,
            has_attachment: !self.attachments.is_empty(),
            key_version: indexer.key_version().map(|v| v.get()),
            fields: vec![
                indexer.index_text(Field::Subject, &self.subject),
                indexer.index_text(Field::From, &self.from),
                indexer.index_text(Field::To, &self.to),
                indexer.index_text(Field::Body, &self.body),
                indexer.index_text(Field::AttachmentName, &names),
            ],
        }
    }
}

pub(crate) fn inboxes(ids: &[&str]) -> BTreeSet<String> {
    ids.iter().map(|s| (*s).to_owned()).collect()
}

pub(crate) fn request(
    indexer: &Indexer<'_>,
    q: &str,
    allowed: &[&str],
    limit: usize,
) -> SearchRequest {
    let parsed = Query::parse(q).unwrap_or_else(|e| panic!("query {q:?}: {e}"));
    SearchRequest {
        query: index_query(&parsed, indexer),
        inboxes: inboxes(allowed),
        limit,
        after: None,
    }
}

/// The ids of every hit, following cursors to the end.
pub(crate) async fn ids(
    index: &dyn SearchIndex,
    tenant: &TenantId,
    indexer: &Indexer<'_>,
    q: &str,
    allowed: &[&str],
) -> Vec<String> {
    let mut req = request(indexer, q, allowed, 7);
    let mut out = Vec::new();
    for _ in 0..1000 {
        let page = index
            .search(tenant, &req)
            .await
            .unwrap_or_else(|e| panic!("search {q:?}: {e}"));
        out.extend(page.hits.iter().map(|h| h.message_id.clone()));
        match page.next {
            Some(c) => req.after = Some(c),
            None => return out,
        }
    }
    panic!("pagination did not end");
}

/// Indexes `msgs` and makes them searchable.
pub(crate) async fn add(
    index: &dyn SearchIndex,
    tenant: &TenantId,
    indexer: &Indexer<'_>,
    msgs: &[Msg],
) {
    index
        .index(tenant, msgs.iter().map(|m| m.doc(indexer)).collect())
        .await
        .unwrap_or_else(|e| panic!("index: {e}"));
    index
        .flush(tenant)
        .await
        .unwrap_or_else(|e| panic!("flush: {e}"));
}

fn sample() -> Vec<Msg> {
    let mut with_pdf = Msg::new(
        "m3",
        "inbox-a",
        3,
        "Invoice for March",
        "Please find the invoice attached.",
    );
    with_pdf.attachments = vec!["invoice-2026-03.pdf".to_owned()];
    let mut from_bob = Msg::new(
        "m4",
        "inbox-b",
        4,
        "Password reset",
        "I cannot log in since Monday, the quarterly report is blocked.",
    );
    from_bob.from = "Bob Müller <bob@partner.example>".to_owned();
    vec![
        Msg::new(
            "m1",
            "inbox-a",
            1,
            "Quarterly report",
            "The quarterly report is ready for review.",
        ),
        Msg::new(
            "m2",
            "inbox-a",
            2,
            "Re: report",
            "Report quarterly numbers differ from last year.",
        ),
        with_pdf,
        from_bob,
    ]
}

/// Terms, phrases, fields, operators and dates, in both modes.
pub(crate) async fn query_language(index: &dyn SearchIndex) {
    let k = key(7);
    for indexer in [Indexer::Blind(&k), Indexer::PLAINTEXT] {
        let t = tenant(&format!("lang-{}", indexer.mode()));
        add(index, &t, &indexer, &sample()).await;
        let all = ["inbox-a", "inbox-b"];
        let q = async |q: &str| ids(index, &t, &indexer, q, &all).await;
        assert_eq!(q("quarterly").await, ["m4", "m2", "m1"], "newest first");
        assert_eq!(q("quarterly report").await, ["m4", "m2", "m1"]);
        assert_eq!(
            q("\"quarterly report\"").await,
            ["m4", "m1"],
            "phrase order"
        );
        assert_eq!(q("subject:report").await, ["m2", "m1"]);
        assert_eq!(q("from:bob").await, ["m4"]);
        assert_eq!(q("from:mueller").await, Vec::<String>::new());
        assert_eq!(q("from:muller").await, ["m4"], "diacritics folded");
        assert_eq!(q("from:bob@partner.example").await, ["m4"]);
        assert_eq!(q("to:support").await, ["m4", "m3", "m2", "m1"]);
        assert_eq!(q("has:attachment").await, ["m3"]);
        assert_eq!(q("filename:invoice").await, ["m3"]);
        assert_eq!(q("invoice -has:attachment").await, Vec::<String>::new());
        assert_eq!(q("report -quarterly").await, Vec::<String>::new());
        assert_eq!(q("report -subject:quarterly").await, ["m4", "m2"]);
        assert_eq!(q("password OR invoice").await, ["m4", "m3"]);
        assert_eq!(
            q("QUARTERLY Report").await,
            ["m4", "m2", "m1"],
            "case folded"
        );
        let day = |d: i64| {
            let days = (BASE_MS + d * DAY_MS) / DAY_MS;
            civil(days)
        };
        assert_eq!(
            q(&format!("quarterly after:{}", day(2))).await,
            ["m4", "m2"]
        );
        assert_eq!(q(&format!("quarterly before:{}", day(2))).await, ["m1"]);
        assert_eq!(
            q(&format!("after:{} before:{}", day(2), day(4))).await,
            ["m3", "m2"]
        );
        assert_eq!(q("nothinglikethis").await, Vec::<String>::new());
    }
}

/// Prefix and fuzzy words over plaintext terms: within the inbox filter, by field, with
/// negation; refused over blind tokens. Fuzzy words are refused by a backend without them
/// (Quickwit).
pub(crate) async fn prefix_and_fuzzy(index: &dyn SearchIndex) {
    use super::blind::{BlindToken, IndexTerm};
    use super::index::SearchError;
    use super::query::ResolvedQuery;
    let ix = Indexer::PLAINTEXT;
    let t = tenant("patterns");
    add(index, &t, &ix, &sample()).await;
    let all = ["inbox-a", "inbox-b"];
    let q = async |q: &str, allowed: &[&str]| ids(index, &t, &ix, q, allowed).await;
    assert_eq!(q("quart*", &all).await, ["m4", "m2", "m1"]);
    assert_eq!(
        q("quart*", &["inbox-a"]).await,
        ["m2", "m1"],
        "inbox filter"
    );
    assert_eq!(q("subject:quart*", &all).await, ["m1"]);
    assert_eq!(q("from:bo*", &all).await, ["m4"]);
    assert_eq!(q("repo* -subject:quart*", &all).await, ["m4", "m2"]);
    assert_eq!(q("filename:invo*", &all).await, ["m3"]);
    assert_eq!(q("zzq*", &all).await, Vec::<String>::new());
    // Over blind tokens, a prefix means nothing: refused, never answered.
    let blind = SearchRequest {
        query: ResolvedQuery::Prefix {
            field: Field::Body,
            term: IndexTerm::Blind(BlindToken::from_bytes([7; 16])),
        },
        inboxes: inboxes(&all),
        limit: 10,
        after: None,
    };
    assert!(matches!(
        index.search(&t, &blind).await,
        Err(SearchError::InvalidRequest(_))
    ));
    let fuzzy = request(&ix, "quartelry~", &all, 10);
    if index.backend() == "quickwit" {
        let err = index.search(&t, &fuzzy).await.err();
        assert!(
            matches!(&err, Some(SearchError::InvalidRequest(m)) if m.contains("fuzzy")),
            "{err:?}"
        );
        return;
    }
    assert_eq!(
        q("quartelry~", &all).await,
        ["m4", "m2", "m1"],
        "a swap is one edit"
    );
    assert_eq!(q("subject:pasword~", &all).await, ["m4"]);
    assert_eq!(q("invoyse~", &all).await, Vec::<String>::new(), "two edits");
    assert_eq!(q("invoyse~2", &all).await, ["m3"]);
    assert_eq!(q("invoyse~2", &["inbox-b"]).await, Vec::<String>::new());
}

/// `YYYY-MM-DD` of a day number since the epoch (Howard Hinnant's civil_from_days).
fn civil(days: i64) -> String {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

/// The inbox filter is part of the query: no hit outside the allowed inboxes, none at all
/// with an empty set, and tenants never see each other.
pub(crate) async fn access_filter(index: &dyn SearchIndex) {
    let k = key(1);
    let ix = Indexer::Blind(&k);
    let t = tenant("filter");
    add(index, &t, &ix, &sample()).await;
    assert_eq!(
        ids(index, &t, &ix, "quarterly", &["inbox-a"]).await,
        ["m2", "m1"]
    );
    assert_eq!(ids(index, &t, &ix, "quarterly", &["inbox-b"]).await, ["m4"]);
    assert_eq!(
        ids(index, &t, &ix, "quarterly", &["inbox-c"]).await,
        Vec::<String>::new()
    );
    assert_eq!(
        ids(index, &t, &ix, "quarterly", &[]).await,
        Vec::<String>::new()
    );
    assert_eq!(
        ids(index, &t, &ix, "-password quarterly", &["inbox-b"]).await,
        Vec::<String>::new()
    );
    let other = tenant("filter-other");
    assert_eq!(
        ids(index, &other, &ix, "quarterly", &["inbox-a", "inbox-b"]).await,
        Vec::<String>::new()
    );
    // Another tenant's key does not find this tenant's terms even in its own index.
    let k2 = key(2);
    let ix2 = Indexer::Blind(&k2);
    assert_eq!(
        ids(index, &t, &ix2, "quarterly", &["inbox-a", "inbox-b"]).await,
        Vec::<String>::new()
    );
}

/// Indexing is idempotent by message id; a re-indexed message replaces the old terms.
pub(crate) async fn idempotent(index: &dyn SearchIndex) {
    let k = key(3);
    let ix = Indexer::Blind(&k);
    let t = tenant("idempotent");
    let msgs = sample();
    add(index, &t, &ix, &msgs).await;
    add(index, &t, &ix, &msgs).await;
    assert_eq!(
        ids(index, &t, &ix, "quarterly", &["inbox-a", "inbox-b"]).await,
        ["m4", "m2", "m1"]
    );
    let mut changed = msgs[0].clone();
    changed.body = "completely different words".to_owned();
    changed.subject = "changed".to_owned();
    add(index, &t, &ix, &[changed]).await;
    assert_eq!(
        ids(index, &t, &ix, "quarterly", &["inbox-a", "inbox-b"]).await,
        ["m4", "m2"]
    );
    assert_eq!(ids(index, &t, &ix, "different", &["inbox-a"]).await, ["m1"]);
    let stats = index
        .stats(&t)
        .await
        .unwrap_or_else(|e| panic!("stats: {e}"));
    assert_eq!(stats.documents, 4);
}

/// Deletes by message, conversation and inbox are invisible as soon as the call returns;
/// dropping a tenant leaves others untouched.
pub(crate) async fn deletes(index: &dyn SearchIndex) {
    let k = key(4);
    let ix = Indexer::Blind(&k);
    let t = tenant("deletes");
    let other = tenant("deletes-other");
    let mut msgs = sample();
    msgs[1].conversation = msgs[0].conversation.clone();
    add(index, &t, &ix, &msgs).await;
    add(index, &other, &ix, &msgs).await;
    let all = ["inbox-a", "inbox-b"];
    index
        .delete(&t, &DeleteScope::Message("m4".into()))
        .await
        .unwrap_or_else(|e| panic!("delete: {e}"));
    assert_eq!(ids(index, &t, &ix, "quarterly", &all).await, ["m2", "m1"]);
    index
        .delete(&t, &DeleteScope::Conversation("conv-m1".into()))
        .await
        .unwrap_or_else(|e| panic!("delete: {e}"));
    assert_eq!(
        ids(index, &t, &ix, "quarterly", &all).await,
        Vec::<String>::new()
    );
    assert_eq!(ids(index, &t, &ix, "invoice", &all).await, ["m3"]);
    index
        .delete(&t, &DeleteScope::Inbox("inbox-a".into()))
        .await
        .unwrap_or_else(|e| panic!("delete: {e}"));
    assert_eq!(
        ids(index, &t, &ix, "invoice", &all).await,
        Vec::<String>::new()
    );
    // Deleting what is not there is not an error.
    index
        .delete(&t, &DeleteScope::Message("nope".into()))
        .await
        .unwrap_or_else(|e| panic!("delete: {e}"));
    assert_eq!(
        ids(index, &other, &ix, "quarterly", &all).await,
        ["m4", "m2", "m1"]
    );
    index
        .drop_tenant(&other)
        .await
        .unwrap_or_else(|e| panic!("drop: {e}"));
    assert_eq!(
        ids(index, &other, &ix, "quarterly", &all).await,
        Vec::<String>::new()
    );
    let stats = index
        .stats(&other)
        .await
        .unwrap_or_else(|e| panic!("stats: {e}"));
    assert_eq!(stats.documents, 0);
    // The tenant can be used again after being dropped.
    add(index, &other, &ix, &msgs[..1]).await;
    assert_eq!(ids(index, &other, &ix, "quarterly", &all).await, ["m1"]);
}

/// Pages are disjoint, complete and newest first, also when many messages share a date.
pub(crate) async fn pagination(index: &dyn SearchIndex) {
    let k = key(5);
    let ix = Indexer::Blind(&k);
    let t = tenant("pages");
    let msgs: Vec<Msg> = (0..40)
        .map(|i| {
            let id = format!("0190f3a2-0000-4000-8000-{i:012}");
            // Ten messages share each date.
            Msg::new(&id, "inbox-a", i / 10, "weekly digest", "digest body")
        })
        .collect();
    add(index, &t, &ix, &msgs).await;
    let got = ids(index, &t, &ix, "digest", &["inbox-a"]).await;
    assert_eq!(got.len(), 40);
    let unique: BTreeSet<&String> = got.iter().collect();
    assert_eq!(unique.len(), 40, "a message appeared on two pages");
    let mut expected: Vec<&Msg> = msgs.iter().collect();
    expected.sort_by_key(|m| std::cmp::Reverse((m.date_ms, super::index::seq_of(&m.id))));
    let expected: Vec<String> = expected.iter().map(|m| m.id.clone()).collect();
    assert_eq!(got, expected);

    // A full page with nothing after it has no cursor; a limit above the count returns all.
    let mut req = request(&ix, "digest", &["inbox-a"], 40);
    let page = index
        .search(&t, &req)
        .await
        .unwrap_or_else(|e| panic!("search: {e}"));
    assert_eq!(page.hits.len(), 40);
    assert_eq!(page.next, None);
    req.limit = 39;
    let page = index
        .search(&t, &req)
        .await
        .unwrap_or_else(|e| panic!("search: {e}"));
    assert_eq!(page.hits.len(), 39);
    assert!(page.next.is_some());
    // A cursor past the oldest message yields nothing.
    req.after = Some(Cursor {
        date_ms: i64::MIN,
        seq: 0,
    });
    let page = index
        .search(&t, &req)
        .await
        .unwrap_or_else(|e| panic!("search: {e}"));
    assert!(page.hits.is_empty() && page.next.is_none());
}

/// Bad requests are refused with an error, not answered.
pub(crate) async fn bad_requests(index: &dyn SearchIndex) {
    let k = key(6);
    let ix = Indexer::Blind(&k);
    let t = tenant("bad");
    add(index, &t, &ix, &sample()).await;
    let mut req = request(&ix, "report", &["inbox-a"], 0);
    assert!(index.search(&t, &req).await.is_err());
    req.limit = super::index::MAX_LIMIT + 1;
    assert!(index.search(&t, &req).await.is_err());
}

/// Compaction removes nothing live: deleted mail stays absent, the rest is found as before,
/// and a second compaction (or one of a tenant never indexed) has nothing to do.
pub(crate) async fn compaction(index: &dyn SearchIndex) {
    let k = key(8);
    let ix = Indexer::Blind(&k);
    let t = tenant("compaction");
    add(index, &t, &ix, &sample()).await;
    let all = ["inbox-a", "inbox-b"];
    index
        .delete(&t, &DeleteScope::Message("m2".into()))
        .await
        .unwrap_or_else(|e| panic!("delete: {e}"));
    index
        .compact(&t)
        .await
        .unwrap_or_else(|e| panic!("compact: {e}"));
    assert_eq!(ids(index, &t, &ix, "quarterly", &all).await, ["m4", "m1"]);
    assert_eq!(ids(index, &t, &ix, "invoice", &all).await, ["m3"]);
    assert_eq!(
        index
            .compact(&t)
            .await
            .unwrap_or_else(|e| panic!("compact: {e}")),
        0
    );
    assert_eq!(
        index
            .compact(&tenant("compaction-none"))
            .await
            .unwrap_or_else(|e| panic!("compact: {e}")),
        0
    );
}

/// Generates one `#[tokio::test]` per conformance case; `$make` is an async block that
/// yields a fresh backend (and whatever must live as long as it).
macro_rules! conformance_tests {
    ($make:expr) => {
        $crate::search::conformance::conformance_tests!(@case $make, query_language);
        $crate::search::conformance::conformance_tests!(@case $make, access_filter);
        $crate::search::conformance::conformance_tests!(@case $make, idempotent);
        $crate::search::conformance::conformance_tests!(@case $make, deletes);
        $crate::search::conformance::conformance_tests!(@case $make, pagination);
        $crate::search::conformance::conformance_tests!(@case $make, bad_requests);
        $crate::search::conformance::conformance_tests!(@case $make, compaction);
        $crate::search::conformance::conformance_tests!(@case $make, prefix_and_fuzzy);
    };
    (@case $make:expr, $case:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $case() {
            let (index, _guard) = $make.await;
            $crate::search::conformance::$case(&index).await;
        }
    };
}
pub(crate) use conformance_tests;
