//! Errors of the agent API: one [`ErrorKind`] per kind of failure, mapped to an HTTP status
//! in one place ([`ErrorKind::status`]), answered as `{"error": {"code", "message"}}`.
//!
//! Messages are fixed texts chosen in code: never a token, claim, address, subject, query
//! term or any other content.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::keyring::KeyringError;
use crate::search::SearchError;
use crate::search::service::ServiceError;
use crate::store::StoreError;

/// What went wrong, as far as the caller needs to know.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// No usable bearer token (missing, malformed, bad signature, expired, wrong issuer or
    /// audience, claims missing).
    Unauthenticated,
    /// The caller may read the resource but not do this to it (e.g. delete with role
    /// `read`). Unreadable resources are [`ErrorKind::NotFound`] instead.
    PermissionDenied,
    /// No such resource, or one the caller may not read (existence is not revealed).
    NotFound,
    /// A malformed parameter, cursor or query.
    InvalidArgument,
    /// The database, KMS, search tier or the issuer's keys are unreachable: try again.
    Unavailable,
    /// Anything else (a bug or corrupt data); logged by kind.
    Internal,
}

impl ErrorKind {
    /// The HTTP status of each kind: the only place this mapping is made.
    pub const fn status(self) -> StatusCode {
        match self {
            ErrorKind::Unauthenticated => StatusCode::UNAUTHORIZED,
            ErrorKind::PermissionDenied => StatusCode::FORBIDDEN,
            ErrorKind::NotFound => StatusCode::NOT_FOUND,
            ErrorKind::InvalidArgument => StatusCode::BAD_REQUEST,
            ErrorKind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The `code` of the JSON error body (also a metric label).
    pub const fn code(self) -> &'static str {
        match self {
            ErrorKind::Unauthenticated => "unauthenticated",
            ErrorKind::PermissionDenied => "permission_denied",
            ErrorKind::NotFound => "not_found",
            ErrorKind::InvalidArgument => "invalid_argument",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::Internal => "internal",
        }
    }
}

/// A failed API call: a kind and a fixed message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {message}", kind.code())]
pub struct ApiError {
    pub kind: ErrorKind,
    pub message: String,
}

impl ApiError {
    /// An error of `kind` with a fixed message.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }

    /// 401: the token is missing or not acceptable.
    pub fn unauthenticated() -> Self {
        Self::new(
            ErrorKind::Unauthenticated,
            "a valid bearer token is required",
        )
    }

    /// 404, the same for "does not exist" and "may not read".
    pub fn not_found(what: &'static str) -> Self {
        Self::new(ErrorKind::NotFound, format!("{what} not found"))
    }

    /// 400 with a fixed explanation.
    pub fn invalid(message: &'static str) -> Self {
        Self::new(ErrorKind::InvalidArgument, message)
    }

    fn unavailable() -> Self {
        Self::new(
            ErrorKind::Unavailable,
            "a backing service is unavailable; try again",
        )
    }

    fn internal() -> Self {
        Self::new(ErrorKind::Internal, "internal error")
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        // Store errors hold no row data (see StoreError); the kind is enough for the caller.
        tracing::warn!(error = %e, "agent api: store call failed");
        if e.is_retryable() {
            Self::unavailable()
        } else {
            Self::internal()
        }
    }
}

impl From<crate::lifecycle::LifecycleError> for ApiError {
    fn from(e: crate::lifecycle::LifecycleError) -> Self {
        use crate::lifecycle::LifecycleError as L;
        match e {
            L::NotFound(_, what) => Self::not_found(what),
            L::UnknownTenant(_) => Self::not_found("conversation"),
            L::Refused(why) => Self::new(ErrorKind::PermissionDenied, why),
            e => {
                tracing::warn!(error = %e, "agent api: lifecycle call failed");
                if e.is_retryable() {
                    Self::unavailable()
                } else {
                    Self::internal()
                }
            }
        }
    }
}

impl From<KeyringError> for ApiError {
    fn from(e: KeyringError) -> Self {
        tracing::warn!(error = %e, "agent api: opening sealed data failed");
        if e.is_retryable() {
            Self::unavailable()
        } else {
            Self::internal()
        }
    }
}

impl From<ServiceError> for ApiError {
    fn from(e: ServiceError) -> Self {
        match e {
            // The position is not content; the rendered message may quote the query.
            ServiceError::Query(q) => Self::new(
                ErrorKind::InvalidArgument,
                format!("malformed query at position {}", q.position),
            ),
            ServiceError::Search(SearchError::InvalidCursor) => Self::invalid("invalid cursor"),
            // Reasons are fixed texts that name no content.
            ServiceError::Search(SearchError::InvalidRequest(reason)) => Self::invalid(reason),
            ServiceError::UnknownTenant(_) | ServiceError::UnknownInbox(_) => {
                Self::not_found("inbox")
            }
            e => {
                tracing::warn!(error = %e, "agent api: search failed");
                if e.is_retryable() {
                    Self::unavailable()
                } else {
                    Self::internal()
                }
            }
        }
    }
}

#[derive(serde::Serialize)]
struct Body<'a> {
    error: Detail<'a>,
}

#[derive(serde::Serialize)]
struct Detail<'a> {
    code: &'static str,
    message: &'a str,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Body {
            error: Detail {
                code: self.kind.code(),
                message: &self.message,
            },
        };
        let mut response = (self.kind.status(), Json(body)).into_response();
        if self.kind == ErrorKind::Unauthenticated {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"helpr\", error=\"invalid_token\""),
            );
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_has_its_status_and_a_distinct_code() {
        let all = [
            (ErrorKind::Unauthenticated, 401),
            (ErrorKind::PermissionDenied, 403),
            (ErrorKind::NotFound, 404),
            (ErrorKind::InvalidArgument, 400),
            (ErrorKind::Unavailable, 503),
            (ErrorKind::Internal, 500),
        ];
        let mut codes: Vec<_> = all.iter().map(|(k, _)| k.code()).collect();
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), all.len());
        for (kind, status) in all {
            assert_eq!(kind.status().as_u16(), status, "{kind:?}");
        }
    }

    #[test]
    fn unauthenticated_answers_carry_www_authenticate_bearer() {
        let r = ApiError::unauthenticated().into_response();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        let v = r.headers()[header::WWW_AUTHENTICATE].to_str().unwrap();
        assert!(v.starts_with("Bearer "), "{v}");
        let r = ApiError::not_found("inbox").into_response();
        assert!(r.headers().get(header::WWW_AUTHENTICATE).is_none());
    }

    #[test]
    fn retryable_store_errors_are_unavailable_others_internal() {
        let e: ApiError = StoreError::Unavailable("down".into()).into();
        assert_eq!(e.kind, ErrorKind::Unavailable);
        let e: ApiError = StoreError::NotFound("inbox").into();
        assert_eq!(e.kind, ErrorKind::Internal);
        assert!(!e.message.contains("inbox"));
    }
}
