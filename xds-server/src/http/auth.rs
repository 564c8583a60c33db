//! Bearer-token authentication of the HTTP surface: two roles, and for the filters' tokens
//! an identity — the proxies a token speaks for and the services it may touch.
//!
//! | role | may |
//! |---|---|
//! | `operator` | everything: read and change services, shadows, capacities, events; read telemetry, forecasts, metrics, the relay |
//! | `telemetry` | only the filters' routes, and only within its scope: `POST /v1/telemetry` as one of its `proxies=` about services it `fronts=` or `serves=`; `POST /v1/state/{publish,lookup}` for services it `fronts=`; `POST /v1/state/pull` as one of its `proxies=` for services it `serves=` |
//!
//! Tokens come from a file (`--tokens-file`, or `tokens_file` in the configuration), one
//! token a line (`#` comments and blank lines allowed):
//!
//! ```text
//! operator  op-4f1c9a7e2b6d8053
//! telemetry tm-edge-7-91d2e7c4a5 proxies=edge-7 fronts=cart,checkout
//! telemetry tm-shadows-3b8e0f1d2 proxies=cart-shadow-* serves=cart
//! ```
//!
//! A scope lists exact names or prefixes ending in `*` (`*` alone: any). A telemetry token
//! must say which proxies it speaks for — a mesh-wide one says `proxies=*` — so that no
//! token speaks for a proxy by omission; `fronts=` and `serves=` default to none.
//!
//! Only the tokens' SHA-256 is kept; a presented token is hashed and compared with every
//! stored hash in constant time, so neither a match's position nor how much of a token
//! matched shows in the timing. A token is never logged. Without tokens the API is open —
//! which the command line refuses on a non-loopback address unless told otherwise
//! (`--allow-unauthenticated`).

use super::{Api, ApiError};
use axum::extract::{Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use std::sync::Arc;
use subtle::ConstantTimeEq;

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Read and write everything.
    Operator,
    /// The filters' routes, within the token's [`Scope`].
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

/// Names a scope admits: exact names and prefixes (`edge-*`), or any (`*`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NameSet {
    any: bool,
    exact: Vec<String>,
    prefixes: Vec<String>,
}

impl NameSet {
    /// Every name.
    pub fn any() -> NameSet {
        NameSet {
            any: true,
            ..NameSet::default()
        }
    }

    /// Parses `a,b,c-*` (`*` alone: any). Names are printable ASCII without `,`.
    fn parse(list: &str) -> Result<NameSet, String> {
        let mut set = NameSet::default();
        for item in list.split(',') {
            match item {
                "" => return Err("an empty name in the list".into()),
                "*" => set.any = true,
                p if p.ends_with('*') => {
                    let prefix = &p[..p.len() - 1];
                    if prefix.contains('*') {
                        return Err(format!("{p:?}: `*` only ends a prefix"));
                    }
                    set.prefixes.push(prefix.to_string());
                }
                name if name.contains('*') => {
                    return Err(format!("{name:?}: `*` only ends a prefix"));
                }
                name => set.exact.push(name.to_string()),
            }
        }
        Ok(set)
    }

    /// Whether `name` is in the set.
    pub fn contains(&self, name: &str) -> bool {
        self.any
            || self.exact.iter().any(|n| n == name)
            || self.prefixes.iter().any(|p| name.starts_with(p.as_str()))
    }
}

/// What a telemetry token may do: speak for `proxies`, publish and look up sessions of the
/// services it `fronts`, pull the sessions of the services it `serves` (the shadow side),
/// and report about services it fronts or serves.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scope {
    /// Proxies (`proxy`, `publisher`, `subscriber` names) the token speaks for.
    pub proxies: NameSet,
    /// Services whose primaries the token's proxies front (publishers of their sessions).
    pub fronts: NameSet,
    /// Services whose shadows the token's proxies serve (subscribers of their sessions).
    pub serves: NameSet,
}

/// Who made a request, as the routes check it.
#[derive(Debug, Clone)]
pub enum Identity {
    /// Authentication is off: everyone may do everything.
    Open,
    /// An operator token.
    Operator,
    /// A telemetry token, with its scope.
    Proxy(Arc<Scope>),
}

impl Identity {
    fn scope(&self) -> Option<&Scope> {
        match self {
            Identity::Open | Identity::Operator => None,
            Identity::Proxy(s) => Some(s),
        }
    }

    /// Refused unless the identity may speak for proxy `name` (given in `field`).
    pub fn speaks_for(&self, field: &str, name: &str) -> Result<(), ApiError> {
        match self.scope() {
            Some(s) if !s.proxies.contains(name) => Err(forbidden(
                field,
                format!("this token does not speak for proxy {name:?} (its `proxies=`)"),
            )),
            _ => Ok(()),
        }
    }

    /// Refused unless the identity fronts `service`.
    pub fn fronts(&self, field: &str, service: &str) -> Result<(), ApiError> {
        match self.scope() {
            Some(s) if !s.fronts.contains(service) => Err(forbidden(
                field,
                format!("this token does not front service {service:?} (its `fronts=`)"),
            )),
            _ => Ok(()),
        }
    }

    /// Refused unless the identity serves `service`.
    pub fn serves(&self, field: &str, service: &str) -> Result<(), ApiError> {
        match self.scope() {
            Some(s) if !s.serves.contains(service) => Err(forbidden(
                field,
                format!("this token does not serve service {service:?} (its `serves=`)"),
            )),
            _ => Ok(()),
        }
    }

    /// Refused unless the identity fronts or serves `service` (what a report may name).
    pub fn fronts_or_serves(&self, field: &str, service: &str) -> Result<(), ApiError> {
        match self.scope() {
            Some(s) if !s.fronts.contains(service) && !s.serves.contains(service) => {
                Err(forbidden(
                    field,
                    format!(
                        "this token neither fronts nor serves service {service:?} (its `fronts=`, `serves=`)"
                    ),
                ))
            }
            _ => Ok(()),
        }
    }
}

fn forbidden(field: &str, message: String) -> ApiError {
    ApiError::new(StatusCode::FORBIDDEN, field, message)
}

struct Entry {
    role: Role,
    hash: [u8; 32],
    scope: Arc<Scope>,
}

/// The configured tokens (hashed). Empty: authentication is off.
#[derive(Clone, Default)]
pub struct Tokens {
    entries: Arc<Vec<Entry>>,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the tokens, not even their hashes.
        f.debug_struct("Tokens")
            .field("count", &self.entries.len())
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
    /// Parses `ROLE TOKEN [proxies=…] [fronts=…] [serves=…]` lines.
    pub fn parse(text: &str) -> Result<Tokens, TokensError> {
        let mut entries = Vec::new();
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
            let (Some(role), Some(token)) = (parts.next(), parts.next()) else {
                return Err(err("expected `ROLE TOKEN [SCOPE…]`"));
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
            let mut scope = Scope::default();
            let mut proxies_given = false;
            for (n, item) in parts.enumerate() {
                // Never echoed: a misplaced token would be printed.
                let expected = || {
                    err(&format!(
                        "field {}: expected `proxies=…`, `fronts=…` or `serves=…`",
                        n + 3
                    ))
                };
                let Some((key, list)) = item.split_once('=') else {
                    return Err(expected());
                };
                let slot = match key {
                    "proxies" => {
                        proxies_given = true;
                        &mut scope.proxies
                    }
                    "fronts" => &mut scope.fronts,
                    "serves" => &mut scope.serves,
                    _ => return Err(expected()),
                };
                *slot = NameSet::parse(list).map_err(|m| err(&format!("{key}=: {m}")))?;
            }
            match role {
                Role::Operator if scope != Scope::default() => {
                    return Err(err("an operator token has no scope: it may do everything"));
                }
                Role::Telemetry if !proxies_given => {
                    return Err(err(
                        "a telemetry token names the proxies it speaks for: add `proxies=NAME[,NAME…]` \
                         (`proxies=*` for a mesh-wide token), and `fronts=`/`serves=` for its services",
                    ));
                }
                _ => {}
            }
            entries.push(Entry {
                role,
                hash: digest(token.as_bytes()),
                scope: Arc::new(scope),
            });
        }
        Ok(Tokens {
            entries: Arc::new(entries),
        })
    }

    /// Whether authentication is on.
    pub fn enabled(&self) -> bool {
        !self.entries.is_empty()
    }

    /// The role of `presented`, if it is a configured token. Every stored token is compared
    /// (no early exit), each in constant time.
    pub fn role_of(&self, presented: &[u8]) -> Option<Role> {
        self.identify(presented).map(|(role, _)| role)
    }

    fn identify(&self, presented: &[u8]) -> Option<(Role, Identity)> {
        let d = digest(presented);
        let mut found = None;
        for e in self.entries.iter() {
            if bool::from(e.hash.ct_eq(&d)) {
                let identity = match e.role {
                    Role::Operator => Identity::Operator,
                    Role::Telemetry => Identity::Proxy(e.scope.clone()),
                };
                found = Some((e.role, identity));
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
        let mut request = request;
        request.extensions_mut().insert(Identity::Open);
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
    let Some((role, identity)) = presented.and_then(|t| tokens.identify(t)) else {
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
            "a telemetry token may only use the filters' routes",
        )
        .into_response();
    }
    let mut request = request;
    request.extensions_mut().insert(identity);
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_parse_with_roles_and_errors_never_repeat_the_secret() {
        let t = Tokens::parse(
            "# comment\n\noperator  op-0123456789abcdef\ntelemetry tm-0123456789abcdef proxies=edge-*,gw fronts=cart serves=*\n",
        )
        .unwrap();
        let Some((Role::Telemetry, Identity::Proxy(scope))) = t.identify(b"tm-0123456789abcdef")
        else {
            panic!("the telemetry token's identity");
        };
        assert!(scope.proxies.contains("edge-7") && scope.proxies.contains("gw"));
        assert!(!scope.proxies.contains("gw-2") && !scope.proxies.contains("edg"));
        assert!(scope.fronts.contains("cart") && !scope.fronts.contains("carts"));
        assert!(scope.serves.contains("anything"));
        assert_eq!(t.role_of(b"op-0123456789abcdef"), Some(Role::Operator));
        assert_eq!(t.role_of(b"tm-0123456789abcdef"), Some(Role::Telemetry));
        assert_eq!(t.role_of(b"op-0123456789abcdeX"), None);
        assert_eq!(t.role_of(b""), None);
        for (text, line) in [
            ("admin secret-0123456789abcdef", 1),
            ("operator", 1),
            ("\noperator short", 2),
            ("operator a b", 1),
            // A telemetry token must name its proxies; an operator token has no scope.
            ("telemetry tm-0123456789abcdef", 1),
            ("telemetry tm-0123456789abcdef fronts=cart", 1),
            ("telemetry tm-0123456789abcdef proxies=", 1),
            ("telemetry tm-0123456789abcdef proxies=a*b", 1),
            ("telemetry tm-0123456789abcdef proxies=a owns=b", 1),
            ("operator op-0123456789abcdef proxies=*", 1),
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
