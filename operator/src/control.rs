//! The operator's client of the data plane's control API
//! (`dataplane/proto/helpr/control/v1/control.proto`, served by `helpr-dataplane control`).
//!
//! ```no_run
//! # async fn example() -> Result<(), helpr_operator::control::ControlError> {
//! use helpr_operator::control::{ControlClient, proto};
//! let mut client = ControlClient::connect("http://helpr-control:7443", "token-from-secret")?;
//! let applied = client
//!     .upsert_tenant(proto::UpsertTenantRequest {
//!         meta: Some(proto::ObjectMeta {
//!             namespace: "acme".into(),
//!             name: "acme".into(),
//!             uid: "3f6c...".into(),
//!             generation: 2,
//!         }),
//!         spec: Some(proto::TenantSpec {
//!             display_name: "Acme".into(),
//!             deletion_policy: proto::DeletionPolicy::Retain.into(),
//!             search_mode: proto::SearchMode::Blind.into(),
//!         }),
//!     })
//!     .await?;
//! assert_ne!(applied.outcome, proto::Outcome::Stale);
//! # Ok(()) }
//! ```
//!
//! Every call attaches `authorization: Bearer <token>` (marked sensitive, never logged).
//! Failures map to [`ControlError`]; [`ControlError::is_retryable`] tells a reconciler
//! whether to requeue with backoff (the data plane or its KMS/search tier is unavailable)
//! or to report the error on the resource's status (bad spec, unknown reference, refused).
//! Every call is idempotent by the object's generation, so retrying is always safe.

use std::time::Duration;

use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Status};
use zeroize::Zeroizing;

/// The generated request and response types (shared with the data plane's server).
pub use helpr_dataplane::control::proto;

use proto::control_client::ControlClient as RpcClient;

/// How a change ended on the data plane.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApplyResult {
    /// `Applied`, `AlreadyCurrent` or `Stale` (never `Unspecified`: that is an error).
    pub outcome: proto::Outcome,
    /// The generation the data plane has applied after the call.
    pub applied_generation: i64,
}

/// A failed control call. Messages come from the data plane and name objects, never the
/// token.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("control api url is invalid")]
    InvalidUrl,
    #[error("control api refused the credentials: {0}")]
    Unauthenticated(String),
    #[error("control api rejected the request: {0}")]
    InvalidArgument(String),
    #[error("control api: {0}")]
    NotFound(String),
    /// The data plane refused the change (FAILED_PRECONDITION or ALREADY_EXISTS).
    #[error("control api refused the change: {message}")]
    Refused { code: Code, message: String },
    #[error("control api unavailable: {0}")]
    Unavailable(String),
    #[error("control api answered {code:?}: {message}")]
    Other { code: Code, message: String },
    #[error("control api answered an unknown outcome")]
    UnknownOutcome,
}

impl ControlError {
    /// Whether the same call may succeed later without a change to the resource.
    pub fn is_retryable(&self) -> bool {
        match self {
            ControlError::Unavailable(_) => true,
            ControlError::Other { code, .. } => matches!(
                code,
                Code::DeadlineExceeded | Code::Aborted | Code::ResourceExhausted | Code::Internal
            ),
            _ => false,
        }
    }

    /// The gRPC status code behind the error, where there is one.
    pub fn code(&self) -> Option<Code> {
        Some(match self {
            ControlError::Unauthenticated(_) => Code::Unauthenticated,
            ControlError::InvalidArgument(_) => Code::InvalidArgument,
            ControlError::NotFound(_) => Code::NotFound,
            ControlError::Refused { code, .. } | ControlError::Other { code, .. } => *code,
            ControlError::Unavailable(_) => Code::Unavailable,
            ControlError::InvalidUrl | ControlError::UnknownOutcome => return None,
        })
    }
}

impl From<Status> for ControlError {
    fn from(s: Status) -> Self {
        let message = s.message().to_owned();
        match s.code() {
            Code::Unauthenticated | Code::PermissionDenied => {
                ControlError::Unauthenticated(message)
            }
            Code::InvalidArgument => ControlError::InvalidArgument(message),
            Code::NotFound => ControlError::NotFound(message),
            code @ (Code::FailedPrecondition | Code::AlreadyExists) => {
                ControlError::Refused { code, message }
            }
            Code::Unavailable => ControlError::Unavailable(message),
            code => ControlError::Other { code, message },
        }
    }
}

/// The `authorization` header value. No `Debug`: it holds the token.
#[derive(Clone)]
struct Authorization(MetadataValue<Ascii>);

/// A client of the control API. Cheap to clone (one HTTP/2 connection underneath).
#[derive(Clone)]
pub struct ControlClient {
    client: RpcClient<Channel>,
    authorization: Authorization,
}

impl ControlClient {
    /// A client for `url` (`http://host:port`) presenting `token`. Connects lazily: an
    /// unreachable data plane shows as [`ControlError::Unavailable`] on the first call.
    pub fn connect(url: &str, token: &str) -> Result<Self, ControlError> {
        let endpoint = Endpoint::from_shared(url.to_owned())
            .map_err(|_| ControlError::InvalidUrl)?
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(60));
        Self::with_channel(endpoint.connect_lazy(), token)
    }

    /// A client over an existing channel (e.g. one configured for TLS).
    pub fn with_channel(channel: Channel, token: &str) -> Result<Self, ControlError> {
        let header = Zeroizing::new(format!("Bearer {}", token.trim()));
        let mut value = MetadataValue::try_from(header.as_str())
            .map_err(|_| ControlError::InvalidArgument("token is not printable ascii".into()))?;
        value.set_sensitive(true);
        Ok(Self {
            client: RpcClient::new(channel),
            authorization: Authorization(value),
        })
    }

    fn request<T>(&self, message: T) -> Request<T> {
        let mut request = Request::new(message);
        request
            .metadata_mut()
            .insert("authorization", self.authorization.0.clone());
        request
    }

    pub async fn upsert_tenant(
        &mut self,
        r: proto::UpsertTenantRequest,
    ) -> Result<ApplyResult, ControlError> {
        let req = self.request(r);
        applied(self.client.upsert_tenant(req).await?.into_inner())
    }

    pub async fn delete_tenant(
        &mut self,
        meta: proto::ObjectMeta,
    ) -> Result<ApplyResult, ControlError> {
        let req = self.request(proto::DeleteRequest { meta: Some(meta) });
        applied(self.client.delete_tenant(req).await?.into_inner())
    }

    pub async fn upsert_inbox(
        &mut self,
        r: proto::UpsertInboxRequest,
    ) -> Result<ApplyResult, ControlError> {
        let req = self.request(r);
        applied(self.client.upsert_inbox(req).await?.into_inner())
    }

    pub async fn delete_inbox(
        &mut self,
        meta: proto::ObjectMeta,
    ) -> Result<ApplyResult, ControlError> {
        let req = self.request(proto::DeleteRequest { meta: Some(meta) });
        applied(self.client.delete_inbox(req).await?.into_inner())
    }

    pub async fn upsert_grant(
        &mut self,
        r: proto::UpsertGrantRequest,
    ) -> Result<ApplyResult, ControlError> {
        let req = self.request(r);
        applied(self.client.upsert_grant(req).await?.into_inner())
    }

    pub async fn delete_grant(
        &mut self,
        meta: proto::ObjectMeta,
    ) -> Result<ApplyResult, ControlError> {
        let req = self.request(proto::DeleteRequest { meta: Some(meta) });
        applied(self.client.delete_grant(req).await?.into_inner())
    }

    pub async fn upsert_retention_policy(
        &mut self,
        r: proto::UpsertRetentionPolicyRequest,
    ) -> Result<ApplyResult, ControlError> {
        let req = self.request(r);
        applied(self.client.upsert_retention_policy(req).await?.into_inner())
    }

    pub async fn delete_retention_policy(
        &mut self,
        meta: proto::ObjectMeta,
    ) -> Result<ApplyResult, ControlError> {
        let req = self.request(proto::DeleteRequest { meta: Some(meta) });
        applied(self.client.delete_retention_policy(req).await?.into_inner())
    }

    /// What the data plane has of a tenant (state, applied generation, counts, keys).
    pub async fn tenant_status(
        &mut self,
        tenant: &str,
    ) -> Result<proto::TenantStatus, ControlError> {
        let req = self.request(proto::GetTenantStatusRequest {
            tenant: tenant.to_owned(),
        });
        Ok(self.client.get_tenant_status(req).await?.into_inner())
    }

    /// The connection and sync state of the inbox an Inbox object manages;
    /// [`ControlError::NotFound`] when the data plane has no live Inbox of that name.
    pub async fn inbox_status(
        &mut self,
        namespace: &str,
        name: &str,
    ) -> Result<proto::InboxStatus, ControlError> {
        let req = self.request(proto::GetInboxStatusRequest {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        });
        Ok(self.client.get_inbox_status(req).await?.into_inner())
    }
}

fn applied(r: proto::ApplyResponse) -> Result<ApplyResult, ControlError> {
    match proto::Outcome::try_from(r.outcome) {
        Ok(
            outcome @ (proto::Outcome::Applied
            | proto::Outcome::AlreadyCurrent
            | proto::Outcome::Stale),
        ) => Ok(ApplyResult {
            outcome,
            applied_generation: r.applied_generation,
        }),
        _ => Err(ControlError::UnknownOutcome),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_unavailability_and_transient_codes_are_retryable() {
        let e = |code| ControlError::from(Status::new(code, "m"));
        assert!(e(Code::Unavailable).is_retryable());
        assert!(e(Code::DeadlineExceeded).is_retryable());
        for code in [
            Code::Unauthenticated,
            Code::InvalidArgument,
            Code::NotFound,
            Code::FailedPrecondition,
            Code::AlreadyExists,
        ] {
            assert!(!e(code).is_retryable(), "{code:?}");
            assert_eq!(e(code).code(), Some(code));
        }
        assert!(matches!(
            e(Code::AlreadyExists),
            ControlError::Refused { .. }
        ));
    }

    #[test]
    fn urls_and_tokens_are_checked() {
        assert!(matches!(
            ControlClient::connect("not a url", "t"),
            Err(ControlError::InvalidUrl)
        ));
    }
}
