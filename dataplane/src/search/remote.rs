//! The index role over gRPC: [`IndexServer`] serves any [`SearchIndex`] (the tantivy backend
//! in `helpr-dataplane index`), and [`RemoteIndex`] is the [`SearchIndex`] the other roles
//! use to reach it, so sync workers and API replicas share one index per tenant.
//!
//! Only terms and ids cross the wire (see `dataplane/proto/helpr/index/v1/index.proto`).
//! Every request must carry an index token whose scope covers its tenant (see
//! [`super::index_auth`]) and is validated on the server (tenant id, field names, limits)
//! before it reaches the index. The transport is plain HTTP/2: in a cluster the chart's
//! NetworkPolicy admits only data-plane pods to the index role.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status};

use super::blind::{Field, FieldTerms, IndexTerm};
use super::index::{
    Cursor, DeleteScope, INVALID_REQUEST_REASONS, IndexDoc, IndexStats, SearchError, SearchHit,
    SearchIndex, SearchPage, SearchRequest,
};
use super::index_auth::{IndexSecret, IndexToken};
use super::query::IndexQuery;
use crate::ids::TenantId;

/// Generated from `dataplane/proto/helpr/index/v1/index.proto`.
#[allow(clippy::all, clippy::unwrap_used, clippy::expect_used, missing_docs)]
pub mod proto {
    tonic::include_proto!("helpr.index.v1");
}

use proto::search_index_client::SearchIndexClient;
use proto::search_index_server::{SearchIndex as SearchIndexRpc, SearchIndexServer};

/// Largest gRPC message either side accepts (a batch of documents with their terms).
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;
/// Documents per `Index` call the client sends (larger batches are split).
const CLIENT_BATCH_BYTES: usize = 16 * 1024 * 1024;
/// Deepest query the server accepts.
const MAX_QUERY_DEPTH: usize = 64;

const KIND_KEY: &str = "helpr-error-kind";
const HOLDER_KEY: &str = "helpr-lock-holder";

// --- conversions --------------------------------------------------------------------------

/// Which kind of term a remote index holds: blind tokens are sent as their base64url form
/// and read back as such; anything else is a plaintext term.
fn term_from_wire(s: String) -> IndexTerm {
    match super::blind::BlindToken::from_base64url(&s) {
        Some(t) => IndexTerm::Blind(t),
        None => IndexTerm::Plain(s),
    }
}

fn doc_to_wire(d: &IndexDoc) -> proto::Document {
    proto::Document {
        message_id: d.message_id.clone(),
        conversation_id: d.conversation_id.clone(),
        inbox_id: d.inbox_id.clone(),
        date_ms: d.date_ms,
        has_attachment: d.has_attachment,
        key_version: d.key_version.unwrap_or(0),
        fields: d
            .fields
            .iter()
            .map(|f| proto::FieldTerms {
                field: f.field.name().to_owned(),
                terms: f
                    .tokens
                    .iter()
                    .map(|(t, p)| proto::Term {
                        term: t.to_index_string(),
                        position: *p,
                    })
                    .collect(),
            })
            .collect(),
    }
}

fn invalid(msg: &str) -> Status {
    Status::invalid_argument(msg.to_owned())
}

fn field_from_wire(name: &str) -> Result<Field, Status> {
    Field::from_name(name).ok_or_else(|| invalid("unknown field"))
}

fn doc_from_wire(d: proto::Document) -> Result<IndexDoc, Status> {
    let bounded = |s: &str| !s.is_empty() && s.len() <= 256;
    if !bounded(&d.message_id) || !bounded(&d.conversation_id) || !bounded(&d.inbox_id) {
        return Err(invalid("document ids must be 1-256 bytes"));
    }
    let mut fields = Vec::with_capacity(d.fields.len());
    for f in d.fields {
        let field = field_from_wire(&f.field)?;
        if fields
            .iter()
            .any(|x: &FieldTerms<IndexTerm>| x.field == field)
        {
            return Err(invalid("a field appears twice in a document"));
        }
        fields.push(FieldTerms {
            field,
            tokens: f
                .terms
                .into_iter()
                .map(|t| (term_from_wire(t.term), t.position))
                .collect(),
        });
    }
    Ok(IndexDoc {
        message_id: d.message_id,
        conversation_id: d.conversation_id,
        inbox_id: d.inbox_id,
        date_ms: d.date_ms,
        has_attachment: d.has_attachment,
        key_version: (d.key_version != 0).then_some(d.key_version),
        fields,
    })
}

fn query_to_wire(q: &IndexQuery) -> proto::QueryNode {
    use proto::query_node::Node;
    let list = |c: &[IndexQuery]| proto::QueryList {
        nodes: c.iter().map(query_to_wire).collect(),
    };
    let node = match q {
        IndexQuery::And(c) => Node::And(list(c)),
        IndexQuery::Or(c) => Node::Or(list(c)),
        IndexQuery::Not(inner) => Node::Not(Box::new(query_to_wire(inner))),
        IndexQuery::Term { field, term } => Node::Term(proto::TermQuery {
            field: field.name().to_owned(),
            term: term.to_index_string(),
        }),
        IndexQuery::Phrase { field, terms } => Node::Phrase(proto::PhraseQuery {
            field: field.name().to_owned(),
            terms: terms.iter().map(IndexTerm::to_index_string).collect(),
        }),
        IndexQuery::Prefix { field, term } => Node::Prefix(proto::TermQuery {
            field: field.name().to_owned(),
            term: term.to_index_string(),
        }),
        IndexQuery::Fuzzy {
            field,
            term,
            distance,
        } => Node::Fuzzy(proto::FuzzyQuery {
            field: field.name().to_owned(),
            term: term.to_index_string(),
            distance: u32::from(*distance),
        }),
        IndexQuery::HasAttachment => Node::HasAttachment(true),
        IndexQuery::Before(ms) => Node::Before(*ms),
        IndexQuery::After(ms) => Node::After(*ms),
    };
    proto::QueryNode { node: Some(node) }
}

fn query_from_wire(q: proto::QueryNode, depth: usize) -> Result<IndexQuery, Status> {
    use proto::query_node::Node;
    if depth > MAX_QUERY_DEPTH {
        return Err(invalid("query nests too deeply"));
    }
    let list = |l: proto::QueryList| -> Result<Vec<IndexQuery>, Status> {
        l.nodes
            .into_iter()
            .map(|n| query_from_wire(n, depth + 1))
            .collect()
    };
    Ok(match q.node.ok_or_else(|| invalid("empty query node"))? {
        Node::And(l) => IndexQuery::And(list(l)?),
        Node::Or(l) => IndexQuery::Or(list(l)?),
        Node::Not(inner) => IndexQuery::Not(Box::new(query_from_wire(*inner, depth + 1)?)),
        Node::Term(t) => IndexQuery::Term {
            field: field_from_wire(&t.field)?,
            term: term_from_wire(t.term),
        },
        Node::Phrase(p) => IndexQuery::Phrase {
            field: field_from_wire(&p.field)?,
            terms: p.terms.into_iter().map(term_from_wire).collect(),
        },
        // Patterns only make sense over plaintext terms: never read as blind tokens.
        Node::Prefix(t) => IndexQuery::Prefix {
            field: field_from_wire(&t.field)?,
            term: IndexTerm::Plain(t.term),
        },
        Node::Fuzzy(f) => IndexQuery::Fuzzy {
            field: field_from_wire(&f.field)?,
            term: IndexTerm::Plain(f.term),
            distance: match f.distance {
                1 => 1,
                2 => 2,
                _ => return Err(invalid("fuzzy distance must be 1 or 2")),
            },
        },
        Node::HasAttachment(true) => IndexQuery::HasAttachment,
        Node::HasAttachment(false) => return Err(invalid("has_attachment must be true")),
        Node::Before(ms) => IndexQuery::Before(ms),
        Node::After(ms) => IndexQuery::After(ms),
    })
}

fn tenant_from_wire(s: &str) -> Result<TenantId, Status> {
    TenantId::new(s).map_err(|e| invalid(&e.to_string()))
}

fn status_of(e: SearchError) -> Status {
    let mut status = match &e {
        SearchError::InvalidRequest(_) | SearchError::InvalidCursor => {
            Status::invalid_argument(e.to_string())
        }
        SearchError::Locked { .. } => Status::failed_precondition(e.to_string()),
        SearchError::Unavailable(_) => Status::unavailable(e.to_string()),
        SearchError::Backend(_) => Status::internal(e.to_string()),
    };
    let kind = match &e {
        SearchError::InvalidRequest(_) => "invalid-request",
        SearchError::InvalidCursor => "invalid-cursor",
        SearchError::Locked { .. } => "locked",
        SearchError::Unavailable(_) => "unavailable",
        SearchError::Backend(_) => "backend",
    };
    status
        .metadata_mut()
        .insert(KIND_KEY, MetadataValue::from_static(kind));
    if let SearchError::Locked { holder, .. } = &e
        && let Ok(v) = MetadataValue::try_from(holder.as_str())
    {
        status.metadata_mut().insert(HOLDER_KEY, v);
    }
    status
}

fn error_of(s: Status, tenant: &TenantId) -> SearchError {
    let kind = s
        .metadata()
        .get(KIND_KEY)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    match (s.code(), kind.as_str()) {
        (_, "invalid-cursor") => SearchError::InvalidCursor,
        // The reason crosses as text; a known one is kept, any other gets a fixed one.
        (_, "invalid-request") => SearchError::InvalidRequest(
            INVALID_REQUEST_REASONS
                .iter()
                .find(|r| s.message().ends_with(**r))
                .copied()
                .unwrap_or("the index role refused the request"),
        ),
        (_, "locked") => SearchError::Locked {
            tenant: tenant.to_string(),
            holder: s
                .metadata()
                .get(HOLDER_KEY)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("the index role")
                .to_owned(),
        },
        (tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Cancelled, _) => {
            SearchError::Unavailable(format!("index role: {}", s.message()))
        }
        _ => SearchError::Backend(format!("index role: {}", s.message())),
    }
}

// --- server -------------------------------------------------------------------------------

/// Serves a [`SearchIndex`] over gRPC to callers with an index token of `secret`.
pub struct IndexServer {
    index: Arc<dyn SearchIndex>,
    secret: Arc<IndexSecret>,
}

impl IndexServer {
    pub fn new(index: Arc<dyn SearchIndex>, secret: Arc<IndexSecret>) -> Self {
        Self { index, secret }
    }

    /// The request's tenant, if its token covers it.
    #[allow(clippy::result_large_err)] // tonic's Status
    fn tenant<T>(&self, request: &Request<T>, tenant: &str) -> Result<TenantId, Status> {
        let tenant = tenant_from_wire(tenant)?;
        self.secret.authorize(request.metadata(), &tenant)?;
        Ok(tenant)
    }

    /// The tonic service, with the message size limits set.
    pub fn into_service(self) -> SearchIndexServer<IndexServer> {
        SearchIndexServer::new(self)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }
}

#[tonic::async_trait]
impl SearchIndexRpc for IndexServer {
    async fn index(
        &self,
        request: Request<proto::IndexRequest>,
    ) -> Result<Response<proto::IndexResponse>, Status> {
        let tenant = self.tenant(&request, &request.get_ref().tenant)?;
        let r = request.into_inner();
        let docs = r
            .documents
            .into_iter()
            .map(doc_from_wire)
            .collect::<Result<Vec<_>, _>>()?;
        self.index.index(&tenant, docs).await.map_err(status_of)?;
        Ok(Response::new(proto::IndexResponse {}))
    }

    async fn flush(
        &self,
        request: Request<proto::TenantRequest>,
    ) -> Result<Response<proto::FlushResponse>, Status> {
        let tenant = self.tenant(&request, &request.get_ref().tenant)?;
        self.index.flush(&tenant).await.map_err(status_of)?;
        Ok(Response::new(proto::FlushResponse {}))
    }

    async fn delete(
        &self,
        request: Request<proto::DeleteRequest>,
    ) -> Result<Response<proto::DeleteResponse>, Status> {
        use proto::delete_request::Scope;
        let tenant = self.tenant(&request, &request.get_ref().tenant)?;
        let r = request.into_inner();
        let scope = match r.scope.ok_or_else(|| invalid("delete scope missing"))? {
            Scope::MessageId(id) => DeleteScope::Message(id),
            Scope::ConversationId(id) => DeleteScope::Conversation(id),
            Scope::InboxId(id) => DeleteScope::Inbox(id),
        };
        self.index
            .delete(&tenant, &scope)
            .await
            .map_err(status_of)?;
        Ok(Response::new(proto::DeleteResponse {}))
    }

    async fn drop_tenant(
        &self,
        request: Request<proto::TenantRequest>,
    ) -> Result<Response<proto::DropTenantResponse>, Status> {
        let tenant = self.tenant(&request, &request.get_ref().tenant)?;
        self.index.drop_tenant(&tenant).await.map_err(status_of)?;
        Ok(Response::new(proto::DropTenantResponse {}))
    }

    async fn search(
        &self,
        request: Request<proto::SearchRequest>,
    ) -> Result<Response<proto::SearchResponse>, Status> {
        let tenant = self.tenant(&request, &request.get_ref().tenant)?;
        let r = request.into_inner();
        let query = query_from_wire(r.query.ok_or_else(|| invalid("query missing"))?, 0)?;
        let request = SearchRequest {
            query,
            inboxes: r.inboxes.into_iter().collect::<BTreeSet<String>>(),
            limit: r.limit as usize,
            after: r.after.map(|c| Cursor {
                date_ms: c.date_ms,
                seq: c.seq,
            }),
        };
        let page = self
            .index
            .search(&tenant, &request)
            .await
            .map_err(status_of)?;
        Ok(Response::new(proto::SearchResponse {
            hits: page
                .hits
                .into_iter()
                .map(|h| proto::Hit {
                    message_id: h.message_id,
                    conversation_id: h.conversation_id,
                    inbox_id: h.inbox_id,
                    date_ms: h.date_ms,
                    seq: h.seq,
                })
                .collect(),
            next: page.next.map(|c| proto::Cursor {
                date_ms: c.date_ms,
                seq: c.seq,
            }),
        }))
    }

    async fn compact(
        &self,
        request: Request<proto::TenantRequest>,
    ) -> Result<Response<proto::CompactResponse>, Status> {
        let tenant = self.tenant(&request, &request.get_ref().tenant)?;
        let removed_documents = self.index.compact(&tenant).await.map_err(status_of)?;
        Ok(Response::new(proto::CompactResponse { removed_documents }))
    }

    async fn stats(
        &self,
        request: Request<proto::TenantRequest>,
    ) -> Result<Response<proto::StatsResponse>, Status> {
        let tenant = self.tenant(&request, &request.get_ref().tenant)?;
        let s = self.index.stats(&tenant).await.map_err(status_of)?;
        Ok(Response::new(proto::StatsResponse {
            documents: s.documents,
            deleted_documents: s.deleted_documents,
            segments: s.segments,
            bytes: s.bytes,
        }))
    }
}

/// Serves `index` on `listener`, to callers with an index token of `secret`, until
/// `shutdown` completes.
pub async fn serve(
    index: Arc<dyn SearchIndex>,
    secret: Arc<IndexSecret>,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), SearchError> {
    let incoming = tonic::transport::server::TcpIncoming::from(listener);
    tonic::transport::Server::builder()
        .add_service(IndexServer::new(index, secret).into_service())
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
        .map_err(|e| SearchError::Unavailable(format!("index server: {e}")))
}

// --- client -------------------------------------------------------------------------------

/// Adds the index token to every call.
#[derive(Clone)]
pub struct WithToken(MetadataValue<Ascii>);

impl Interceptor for WithToken {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        request
            .metadata_mut()
            .insert("authorization", self.0.clone());
        Ok(request)
    }
}

/// The index role as a [`SearchIndex`].
#[derive(Clone)]
pub struct RemoteIndex {
    client: SearchIndexClient<InterceptedService<Channel, WithToken>>,
}

impl RemoteIndex {
    /// A client for `url` (`http://host:port`) presenting `token` on every call. Connects
    /// lazily: an unreachable index role shows as [`SearchError::Unavailable`] on the first
    /// call, not here.
    pub fn connect(url: &str, token: &IndexToken) -> Result<Self, SearchError> {
        let endpoint = Endpoint::from_shared(url.to_owned())
            .map_err(|_| SearchError::InvalidRequest("invalid index role url"))?
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(60))
            .tcp_nodelay(true);
        let client =
            SearchIndexClient::with_interceptor(endpoint.connect_lazy(), WithToken(token.header()))
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES);
        Ok(Self { client })
    }
}

fn wire_size(d: &proto::Document) -> usize {
    64 + d
        .fields
        .iter()
        .map(|f| 16 + f.terms.iter().map(|t| t.term.len() + 8).sum::<usize>())
        .sum::<usize>()
}

#[async_trait]
impl SearchIndex for RemoteIndex {
    fn backend(&self) -> &'static str {
        "remote"
    }

    async fn index(&self, tenant: &TenantId, docs: Vec<IndexDoc>) -> Result<(), SearchError> {
        let mut batch = Vec::new();
        let mut size = 0;
        let mut wire: Vec<proto::Document> = docs.iter().map(doc_to_wire).collect();
        wire.reverse();
        while let Some(d) = wire.pop() {
            size += wire_size(&d);
            batch.push(d);
            if size >= CLIENT_BATCH_BYTES || wire.is_empty() {
                self.client
                    .clone()
                    .index(proto::IndexRequest {
                        tenant: tenant.to_string(),
                        documents: std::mem::take(&mut batch),
                    })
                    .await
                    .map_err(|s| error_of(s, tenant))?;
                size = 0;
            }
        }
        Ok(())
    }

    async fn flush(&self, tenant: &TenantId) -> Result<(), SearchError> {
        self.client
            .clone()
            .flush(proto::TenantRequest {
                tenant: tenant.to_string(),
            })
            .await
            .map_err(|s| error_of(s, tenant))?;
        Ok(())
    }

    async fn delete(&self, tenant: &TenantId, scope: &DeleteScope) -> Result<(), SearchError> {
        use proto::delete_request::Scope;
        let scope = match scope {
            DeleteScope::Message(id) => Scope::MessageId(id.clone()),
            DeleteScope::Conversation(id) => Scope::ConversationId(id.clone()),
            DeleteScope::Inbox(id) => Scope::InboxId(id.clone()),
        };
        self.client
            .clone()
            .delete(proto::DeleteRequest {
                tenant: tenant.to_string(),
                scope: Some(scope),
            })
            .await
            .map_err(|s| error_of(s, tenant))?;
        Ok(())
    }

    async fn drop_tenant(&self, tenant: &TenantId) -> Result<(), SearchError> {
        self.client
            .clone()
            .drop_tenant(proto::TenantRequest {
                tenant: tenant.to_string(),
            })
            .await
            .map_err(|s| error_of(s, tenant))?;
        Ok(())
    }

    async fn search(
        &self,
        tenant: &TenantId,
        request: &SearchRequest,
    ) -> Result<SearchPage, SearchError> {
        super::index::validate_request(request)?;
        if request.inboxes.is_empty() {
            return Ok(SearchPage::default());
        }
        let r = self
            .client
            .clone()
            .search(proto::SearchRequest {
                tenant: tenant.to_string(),
                query: Some(query_to_wire(&request.query)),
                inboxes: request.inboxes.iter().cloned().collect(),
                limit: u32::try_from(request.limit).unwrap_or(u32::MAX),
                after: request.after.map(|c| proto::Cursor {
                    date_ms: c.date_ms,
                    seq: c.seq,
                }),
            })
            .await
            .map_err(|s| error_of(s, tenant))?
            .into_inner();
        Ok(SearchPage {
            hits: r
                .hits
                .into_iter()
                .map(|h| SearchHit {
                    message_id: h.message_id,
                    conversation_id: h.conversation_id,
                    inbox_id: h.inbox_id,
                    date_ms: h.date_ms,
                    seq: h.seq,
                })
                .collect(),
            next: r.next.map(|c| Cursor {
                date_ms: c.date_ms,
                seq: c.seq,
            }),
        })
    }

    async fn compact(&self, tenant: &TenantId) -> Result<u64, SearchError> {
        let r = self
            .client
            .clone()
            .compact(proto::TenantRequest {
                tenant: tenant.to_string(),
            })
            .await
            .map_err(|s| error_of(s, tenant))?;
        Ok(r.into_inner().removed_documents)
    }

    async fn stats(&self, tenant: &TenantId) -> Result<IndexStats, SearchError> {
        let s = self
            .client
            .clone()
            .stats(proto::TenantRequest {
                tenant: tenant.to_string(),
            })
            .await
            .map_err(|s| error_of(s, tenant))?
            .into_inner();
        Ok(IndexStats {
            documents: s.documents,
            deleted_documents: s.deleted_documents,
            segments: s.segments,
            bytes: s.bytes,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::search::index_auth::IndexScope;
    use crate::search::tantivy_index::{TantivyConfig, TantivyIndex};

    fn secret() -> Arc<IndexSecret> {
        Arc::new(IndexSecret::new(
            b"a test secret of the index role, 32+ bytes",
        ))
    }

    /// A tantivy index served on a free port, and a client to it with the all-tenants
    /// token.
    async fn served() -> (
        RemoteIndex,
        (tempfile::TempDir, tokio::sync::oneshot::Sender<()>),
    ) {
        let (client, addr, guard) = served_at().await;
        drop(addr);
        (client, guard)
    }

    async fn served_at() -> (
        RemoteIndex,
        String,
        (tempfile::TempDir, tokio::sync::oneshot::Sender<()>),
    ) {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let mut cfg = TantivyConfig::new(dir.path().join("index"));
        cfg.commit_interval = Duration::ZERO;
        cfg.writer_heap_bytes = TantivyConfig::MIN_WRITER_HEAP_BYTES;
        let index = Arc::new(TantivyIndex::open(cfg).unwrap_or_else(|e| panic!("open: {e}")));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("bind: {e}"));
        let addr = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("addr: {e}"));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(serve(index, secret(), listener, async {
            let _ = stopped.await;
        }));
        let url = format!("http://{addr}");
        let client = RemoteIndex::connect(&url, &secret().token(&IndexScope::All))
            .unwrap_or_else(|e| panic!("connect: {e}"));
        (client, url, (dir, stop))
    }

    /// Every call needs a token of the role's secret whose scope covers its tenant.
    #[tokio::test]
    async fn the_server_serves_only_tokens_that_cover_the_tenant() {
        use crate::search::blind::{Field, FieldTerms, IndexTerm};
        let (all, url, _guard) = served_at().await;
        let acme = TenantId::new("acme").unwrap_or_else(|e| panic!("{e}"));
        let globex = TenantId::new("globex").unwrap_or_else(|e| panic!("{e}"));
        let doc = IndexDoc {
            message_id: "m1".into(),
            conversation_id: "c1".into(),
            inbox_id: "i1".into(),
            date_ms: 1,
            has_attachment: false,
            key_version: None,
            fields: vec![FieldTerms {
                field: Field::Body,
                tokens: vec![(IndexTerm::Plain("hello".into()), 0)],
            }],
        };
        for t in [&acme, &globex] {
            all.index(t, vec![doc.clone()])
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            all.flush(t).await.unwrap_or_else(|e| panic!("{e}"));
        }
        let only_acme =
            RemoteIndex::connect(&url, &secret().token(&IndexScope::Tenant(acme.clone())))
                .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            only_acme
                .stats(&acme)
                .await
                .unwrap_or_else(|e| panic!("{e}"))
                .documents,
            1
        );
        let other_secret = IndexSecret::new(b"not the secret of this index role at all");
        let wrong = RemoteIndex::connect(&url, &other_secret.token(&IndexScope::All))
            .unwrap_or_else(|e| panic!("{e}"));
        for (client, tenant, code) in [
            (&only_acme, &globex, tonic::Code::PermissionDenied),
            (&wrong, &acme, tonic::Code::Unauthenticated),
        ] {
            let mut raw = client.client.clone();
            let tenant = tenant.to_string();
            let codes = [
                raw.stats(proto::TenantRequest {
                    tenant: tenant.clone(),
                })
                .await
                .err()
                .map(|s| s.code()),
                raw.drop_tenant(proto::TenantRequest {
                    tenant: tenant.clone(),
                })
                .await
                .err()
                .map(|s| s.code()),
                raw.delete(proto::DeleteRequest {
                    tenant: tenant.clone(),
                    scope: Some(proto::delete_request::Scope::InboxId("i1".into())),
                })
                .await
                .err()
                .map(|s| s.code()),
                raw.index(proto::IndexRequest {
                    tenant: tenant.clone(),
                    documents: vec![doc_to_wire(&doc)],
                })
                .await
                .err()
                .map(|s| s.code()),
            ];
            assert_eq!(codes, [Some(code); 4]);
            // The client reports it as a failure that retrying will not fix.
            let err = client
                .flush(&TenantId::new(&tenant).unwrap_or_else(|e| panic!("{e}")))
                .await
                .err();
            assert!(
                matches!(&err, Some(e @ SearchError::Backend(_)) if !e.is_retryable()),
                "{err:?}"
            );
        }
        // A call without any token.
        let mut bare = SearchIndexClient::new(
            Endpoint::from_shared(url.clone())
                .unwrap_or_else(|e| panic!("{e}"))
                .connect_lazy(),
        );
        let code = bare
            .stats(proto::TenantRequest {
                tenant: "acme".into(),
            })
            .await
            .err()
            .map(|s| s.code());
        assert_eq!(code, Some(tonic::Code::Unauthenticated));
        // Nothing was changed by the refused calls.
        for t in [&acme, &globex] {
            assert_eq!(
                all.stats(t)
                    .await
                    .unwrap_or_else(|e| panic!("{e}"))
                    .documents,
                1
            );
        }
    }

    mod conformance_suite {
        crate::search::conformance::conformance_tests!(super::served());
    }

    #[tokio::test]
    async fn an_unreachable_index_role_is_unavailable() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
        let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
        drop(listener);
        let client =
            RemoteIndex::connect(&format!("http://{addr}"), &secret().token(&IndexScope::All))
                .unwrap_or_else(|e| panic!("{e}"));
        let t = TenantId::new("acme").unwrap_or_else(|e| panic!("{e}"));
        let err = client.flush(&t).await.err();
        assert!(matches!(err, Some(SearchError::Unavailable(_))), "{err:?}");
        assert!(RemoteIndex::connect("not a url", &secret().token(&IndexScope::All)).is_err());
    }

    #[tokio::test]
    async fn the_server_refuses_malformed_requests() {
        let (client, _guard) = served().await;
        let mut raw = client.client.clone();
        let bad_tenant = raw
            .flush(proto::TenantRequest {
                tenant: "../etc".into(),
            })
            .await
            .err()
            .map(|s| s.code());
        assert_eq!(bad_tenant, Some(tonic::Code::InvalidArgument));
        let bad_field = raw
            .index(proto::IndexRequest {
                tenant: "acme".into(),
                documents: vec![proto::Document {
                    message_id: "m".into(),
                    conversation_id: "c".into(),
                    inbox_id: "i".into(),
                    fields: vec![proto::FieldTerms {
                        field: "password".into(),
                        terms: vec![],
                    }],
                    ..Default::default()
                }],
            })
            .await
            .err()
            .map(|s| s.code());
        assert_eq!(bad_field, Some(tonic::Code::InvalidArgument));
        // A query nested deeper than allowed.
        let mut q = proto::QueryNode {
            node: Some(proto::query_node::Node::HasAttachment(true)),
        };
        for _ in 0..(MAX_QUERY_DEPTH + 2) {
            q = proto::QueryNode {
                node: Some(proto::query_node::Node::Not(Box::new(q))),
            };
        }
        let deep = raw
            .search(proto::SearchRequest {
                tenant: "acme".into(),
                query: Some(q),
                inboxes: vec!["i".into()],
                limit: 10,
                after: None,
            })
            .await
            .err()
            .map(|s| s.code());
        assert_eq!(deep, Some(tonic::Code::InvalidArgument));
        let missing = raw
            .search(proto::SearchRequest {
                tenant: "acme".into(),
                query: None,
                inboxes: vec!["i".into()],
                limit: 10,
                after: None,
            })
            .await
            .err()
            .map(|s| s.code());
        assert_eq!(missing, Some(tonic::Code::InvalidArgument));
    }

    /// A refused request crosses the wire with its reason when it is one of the known fixed
    /// texts, and with a fixed one otherwise (the index role's text is never passed on).
    #[test]
    fn refusal_reasons_cross_the_wire() {
        let tenant = TenantId::new("acme").unwrap_or_else(|e| panic!("{e}"));
        for reason in INVALID_REQUEST_REASONS {
            let back = error_of(status_of(SearchError::InvalidRequest(reason)), &tenant);
            assert!(
                matches!(back, SearchError::InvalidRequest(r) if r == reason),
                "{reason}"
            );
        }
        let mut other = Status::invalid_argument("something the client does not know");
        other
            .metadata_mut()
            .insert(KIND_KEY, MetadataValue::from_static("invalid-request"));
        let back = error_of(other, &tenant);
        assert!(
            matches!(
                back,
                SearchError::InvalidRequest("the index role refused the request")
            ),
            "{back:?}"
        );
        let cursor = error_of(status_of(SearchError::InvalidCursor), &tenant);
        assert!(matches!(cursor, SearchError::InvalidCursor), "{cursor:?}");
    }
}
