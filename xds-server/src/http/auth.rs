//! Bearer-token authentication of the HTTP surface, with two roles:
//!
//! | role | may |
//! |---|---|
//! | `operator` | everything: read and change services, shadows, capacities, events; read telemetry, forecasts, metrics |
//! | `telemetry` | only `POST /v1/telemetry` and `POST /v1/state/{publish,pull,lookup}` (the filters; their configuration carries the token) |
//!
//! Tokens come from a file (`--tokens-file`, or `tokens_file` in the configuration), one
//! `ROLE TOKEN` pair a line (`#` comments and blank lines allowed). Only their SHA-256 is
//! kept; a presented token is hashed and compared with every stored hash in constant time,
//! so neither a match's position nor how much of a token matched shows in the timing. A
//! token is never logged. Without tokens the API is open — which the command line refuses
//! on a non-loopback address unless told otherwise (`--allow-unauthenticated`).

use super::{Api, ApiError};
use axum::extract::{Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Read and write everything.
    Operator,
    /// Post telemetry reports only.
    Telemetry,
}

impl Role {
    fn parse(s: &str) -> Option<Role> {
        match s {
            "operator" => Some(Role::Operator),
            "telemetry" => Some(Role::Telemetry),
            _ => None,
        }
    }
}

/// Shortest token accepted: a guessable token is no authentication.
pub const MIN_TOKEN_LEN: usize = 16;

/// The configured tokens (hashed). Empty: authentication is off.
#[derive(Clone, Default)]
pub struct Tokens {
    hashes: Vec<(Role, [u8; 32])>,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the tokens, not even their hashes.
        f.debug_struct("Tokens")
            .field("count", &self.hashes.len())
            .finish()
    }
}

fn digest(token: &[u8]) -> [u8; 32] {
    Sha256::digest(token).into()
}

/// A tokens file line that could not be used: (1-based line, what is wrong). The line's
/// content is not repeated: it may hold a secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct TokensError {
    /// Line number, from 1.
    pub line: usize,
    /// What is wrong.
    pub message: String,
}

impl Tokens {
    /// Parses `ROLE TOKEN` lines.
    pub fn parse(text: &str) -> Result<Tokens, TokensError> {
        let mut hashes = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let err = |message: &str| TokensError {
                line: i + 1,
                message: message.to_string(),
            };
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut parts = line.split_whitespace();
            let (Some(role), Some(token), None) = (parts.next(), parts.next(), parts.next()) else {
                return Err(err("expected `ROLE TOKEN`"));
            };
            let role = Role::parse(role)
                .ok_or_else(|| err("the role must be `operator` or `telemetry`"))?;
            if token.len() < MIN_TOKEN_LEN {
                return Err(err(&format!(
                    "the token is shorter than {MIN_TOKEN_LEN} characters"
                )));
            }
            if !token.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(err("the token must be printable ASCII without spaces"));
            }
            hashes.push((role, digest(token.as_bytes())));
        }
        Ok(Tokens { hashes })
    }

    /// Whether authentication is on.
    pub fn enabled(&self) -> bool {
        !self.hashes.is_empty()
    }

    /// The role of `presented`, if it is a configured token. Every stored token is compared
    /// (no early exit), each in constant time.
    pub fn role_of(&self, presented: &[u8]) -> Option<Role> {
        let d = digest(presented);
        let mut found = None;
        for (role, h) in &self.hashes {
            if bool::from(h.ct_eq(&d)) {
                found = Some(*role);
            }
        }
        found
    }
}

/// The role a request needs: reports may come from a telemetry token; everything else is
/// the operator's.
fn required(method: &Method, path: &str) -> Role {
    if method == Method::POST
        && matches!(
            path,
            "/v1/telemetry" | "/v1/state/publish" | "/v1/state/pull" | "/v1/state/lookup"
        )
    {
        Role::Telemetry
    } else {
        Role::Operator
    }
}

/// Middleware: 401 without a valid token, 403 for a token of the wrong role.
pub(super) async fn authenticate(State(api): State<Api>, request: Request, next: Next) -> Response {
    let tokens = &api.tokens;
    if !tokens.enabled() {
        return next.run(request).await;
    }
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| {
            // The scheme is case-insensitive (RFC 9110 §11.1).
            let v = v.as_bytes();
            (v.len() > 7 && v[..7].eq_ignore_ascii_case(b"bearer ")).then(|| &v[7..])
        })
        .map(<[u8]>::trim_ascii);
    let Some(role) = presented.and_then(|t| tokens.role_of(t)) else {
        let mut r = ApiError::new(
            StatusCode::UNAUTHORIZED,
            "authorization",
            "a valid `Authorization: Bearer <token>` is required",
        )
        .into_response();
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer"),
        );
        return r;
    };
    let need = required(request.method(), request.uri().path());
    if need == Role::Operator && role == Role::Telemetry {
        return ApiError::new(
            StatusCode::FORBIDDEN,
            "authorization",
            "a telemetry token may only post reports",
        )
        .into_response();
    }
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_parse_with_roles_and_errors_never_repeat_the_secret() {
        let t = Tokens::parse(
            "# comment\n\noperator  op-0123456789abcdef\ntelemetry tm-0123456789abcdef\n",
        )
        .unwrap();
        assert_eq!(t.role_of(b"op-0123456789abcdef"), Some(Role::Operator));
        assert_eq!(t.role_of(b"tm-0123456789abcdef"), Some(Role::Telemetry));
        assert_eq!(t.role_of(b"op-0123456789abcdeX"), None);
        assert_eq!(t.role_of(b""), None);
        for (text, line) in [
            ("admin secret-0123456789abcdef", 1),
            ("operator", 1),
            ("\noperator short", 2),
            ("operator a b", 1),
        ] {
            let e = Tokens::parse(text).unwrap_err();
            assert_eq!(e.line, line, "{text:?}");
            assert!(!e.to_string().contains("secret"), "{e}");
        }
        assert!(!format!("{t:?}").contains("0123"));
    }

    #[test]
    fn only_reports_are_open_to_telemetry_tokens() {
        assert_eq!(required(&Method::POST, "/v1/telemetry"), Role::Telemetry);
        assert_eq!(required(&Method::GET, "/v1/telemetry"), Role::Operator);
        assert_eq!(required(&Method::PUT, "/v1/services/x"), Role::Operator);
        assert_eq!(required(&Method::GET, "/metrics"), Role::Operator);
    }
}
