//! The HTTP surface's one error type and one JSON error shape:
//! `{"field": "shadows.endpoints[1].weight", "message": "0 is outside 1..=10000"}` —
//! for invalid input (400), unknown resources (404), wrong methods (405), bodies over the
//! limit (413) alike. `field` is `body` when the document as a whole is at fault and
//! empty when no field is (an unknown path).

use crate::registry::{RegistryError, RegistryErrorKind};
use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde::de::DeserializeOwned;
use shadowmesh_predictor::error::FieldError;

/// Largest request body accepted.
pub const MAX_BODY_BYTES: usize = 2 << 20;

/// A refused request: its status, the field at fault and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status of the answer.
    pub status: StatusCode,
    /// Path of the offending field (`body` for the whole document, empty for none).
    pub field: String,
    /// What is wrong.
    pub message: String,
}

#[derive(Serialize)]
struct Body<'a> {
    field: &'a str,
    message: &'a str,
}

impl ApiError {
    /// `status` about `field`.
    pub fn new(status: StatusCode, field: impl Into<String>, message: impl Into<String>) -> Self {
        ApiError {
            status,
            field: field.into(),
            message: message.into(),
        }
    }

    /// 400 about `field`.
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, field, message)
    }

    /// 404 about `field`.
    pub fn not_found(field: impl Into<String>, message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::NOT_FOUND, field, message)
    }

    /// The same error with its field nested under `parent` (empty fields become `parent`).
    pub fn within(self, parent: &str) -> Self {
        let field = match self.field.as_str() {
            "" | "body" => parent.to_string(),
            f => format!("{parent}.{f}"),
        };
        ApiError { field, ..self }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Body {
            field: &self.field,
            message: &self.message,
        };
        (self.status, Json(body)).into_response()
    }
}

impl From<RegistryError> for ApiError {
    fn from(e: RegistryError) -> Self {
        let status = match e.kind {
            RegistryErrorKind::Invalid => StatusCode::BAD_REQUEST,
            RegistryErrorKind::UnknownService => StatusCode::NOT_FOUND,
            RegistryErrorKind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        };
        ApiError::new(status, e.field, e.message)
    }
}

impl From<crate::forecaster::ForecastChangeError> for ApiError {
    fn from(e: crate::forecaster::ForecastChangeError) -> Self {
        match e {
            crate::forecaster::ForecastChangeError::Invalid(e) => e.into(),
            crate::forecaster::ForecastChangeError::Unavailable(e) => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "state_dir", e.to_string())
            }
        }
    }
}

impl From<FieldError> for ApiError {
    fn from(e: FieldError) -> Self {
        ApiError::invalid(e.field, e.message)
    }
}

/// Parses a JSON document, naming the offending field on error.
/// The whole body must be the one document: trailing bytes are refused.
pub fn parse_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let field = e.path().to_string();
        // `.` is the document itself, `?` a position serde could not name (a syntax error).
        let field = if field == "." || field == "?" {
            "body".into()
        } else {
            field
        };
        ApiError::invalid(field, e.into_inner().to_string())
    })?;
    de.end()
        .map_err(|e| ApiError::invalid("body", format!("after the document: {e}")))?;
    Ok(value)
}

/// A JSON request body, parsed strictly; a body over [`MAX_BODY_BYTES`], unreadable or
/// invalid is refused as an [`ApiError`].
pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(|e: BytesRejection| ApiError::new(e.status(), "body", e.body_text()))?;
        parse_json(&bytes).map(JsonBody)
    }
}

/// The one path parameter of a route (a service or series name).
pub struct Name(pub String);

impl<S: Send + Sync> FromRequestParts<S> for Name {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Path::<String>::from_request_parts(parts, state)
            .await
            .map(|p| Name(p.0))
            .map_err(|e: PathRejection| ApiError::new(e.status(), "path", e.body_text()))
    }
}
