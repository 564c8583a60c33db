//! The contract's two headers: an application's `x-shadowmesh-state` changes, parsed and
//! checked against the configuration, and the `x-shadowmesh-session-state` a request is
//! handed.

use crate::config::{StateSyncConfig, valid_state_key as valid_key};
use shadowmesh_wire::StateOp;
use std::collections::BTreeMap;

/// Response header the application marks state changes with.
pub const STATE_CHANGE_HEADER: &str = "x-shadowmesh-state";
/// Request header carrying a session's state to the application.
pub const SESSION_STATE_HEADER: &str = "x-shadowmesh-session-state";

/// Why a state-change header was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// Not `set k=v` / `del k` operations, or bad percent-encoding.
    Malformed,
    /// A key outside the allowlist.
    NotAllowed,
    /// A value, or the session's whole state, over its cap.
    Oversize,
    /// No room left for the session.
    Full,
}

impl DropReason {
    /// The reason as a metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::Malformed => "malformed",
            DropReason::NotAllowed => "not_allowed",
            DropReason::Oversize => "oversize",
            DropReason::Full => "full",
        }
    }
}

/// Parses an `x-shadowmesh-state` value against the allowlist and the value cap.
pub fn parse_changes(value: &str, cfg: &StateSyncConfig) -> Result<Vec<StateOp>, DropReason> {
    let mut ops = Vec::new();
    for part in value.split(';').map(str::trim).filter(|p| !p.is_empty()) {
        let (verb, rest) = part.split_once(' ').ok_or(DropReason::Malformed)?;
        let op = match verb {
            "set" => {
                let (k, v) = rest.trim().split_once('=').ok_or(DropReason::Malformed)?;
                StateOp {
                    key: k.trim().to_string(),
                    value: Some(percent_decode(v.trim()).ok_or(DropReason::Malformed)?),
                }
            }
            "del" => StateOp {
                key: rest.trim().to_string(),
                value: None,
            },
            _ => return Err(DropReason::Malformed),
        };
        if !valid_key(&op.key) {
            return Err(DropReason::Malformed);
        }
        if !cfg.keys.contains(&op.key) {
            return Err(DropReason::NotAllowed);
        }
        if op
            .value
            .as_ref()
            .is_some_and(|v| v.len() > cfg.max_value_bytes)
        {
            return Err(DropReason::Oversize);
        }
        ops.push(op);
    }
    if ops.is_empty() {
        return Err(DropReason::Malformed);
    }
    // One change larger than a whole session's state cannot fit it (and would only cost).
    if ops_bytes(&ops) > cfg.max_session_bytes {
        return Err(DropReason::Oversize);
    }
    Ok(ops)
}

/// The `x-shadowmesh-session-state` value: `v=VERSION` then `key=value` pairs.
pub fn encode_state(version: u64, state: &BTreeMap<String, String>) -> String {
    let mut out = format!("v={version}");
    for (k, v) in state {
        out.push_str("; ");
        out.push_str(k);
        out.push('=');
        percent_encode_into(v, &mut out);
    }
    out
}

/// Parses an `x-shadowmesh-session-state` value (for applications written in Rust, and
/// tests): the version and the state.
pub fn decode_state(value: &str) -> Option<(u64, BTreeMap<String, String>)> {
    let mut parts = value.split(';').map(str::trim);
    let version = parts.next()?.strip_prefix("v=")?.parse().ok()?;
    let mut state = BTreeMap::new();
    for p in parts.filter(|p| !p.is_empty()) {
        let (k, v) = p.split_once('=')?;
        state.insert(k.to_string(), percent_decode(v)?);
    }
    Some((version, state))
}

/// Percent-encodes everything but unreserved characters (RFC 3986).
pub fn percent_encode_into(s: &str, out: &mut String) {
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
}

/// Decodes `%XX` escapes; `None` for a broken escape or invalid UTF-8.
pub fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            // Two hex digits exactly (`from_str_radix` alone would take `+A`).
            if !hex.iter().all(u8::is_ascii_hexdigit) {
                return None;
            }
            out.push(u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

fn ops_bytes(ops: &[StateOp]) -> usize {
    ops.iter()
        .map(|op| op.key.len() + op.value.as_ref().map_or(0, String::len))
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session_state::test_support::*;

    #[test]
    fn the_header_contract_parses_and_refuses_what_it_must() {
        let c = cfg();
        assert_eq!(
            parse_changes("set cart=a%3B1; del writes", &c).unwrap(),
            vec![
                StateOp {
                    key: "cart".into(),
                    value: Some("a;1".into())
                },
                StateOp {
                    key: "writes".into(),
                    value: None
                },
            ]
        );
        assert_eq!(
            parse_changes("set coupon=1", &c),
            Err(DropReason::NotAllowed)
        );
        assert_eq!(
            parse_changes(&format!("set cart={}", "x".repeat(65)), &c),
            Err(DropReason::Oversize)
        );
        for bad in [
            "",
            "cart=1",
            "put cart=1",
            "set cart",
            "set cart=%zz",
            "set c art=1",
        ] {
            assert!(parse_changes(bad, &c).is_err(), "{bad:?}");
        }
        let state: BTreeMap<String, String> =
            [("cart".to_string(), "sku 1;2=%".to_string())].into();
        assert_eq!(decode_state(&encode_state(7, &state)), Some((7, state)));
    }
}
