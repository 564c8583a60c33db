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

    #[test]
    fn a_value_may_be_exactly_its_cap() {
        let c = cfg(); // max_value_bytes 64
        let at = format!("set cart={}", "x".repeat(64));
        assert_eq!(
            parse_changes(&at, &c).unwrap()[0]
                .value
                .as_ref()
                .unwrap()
                .len(),
            64
        );
        // The cap is on the decoded value: 64 escapes of 3 characters are 64 bytes.
        let escaped = format!("set cart={}", "%3B".repeat(64));
        assert!(parse_changes(&escaped, &c).is_ok());
        let over = format!("set cart={}", "%3B".repeat(65));
        assert_eq!(parse_changes(&over, &c), Err(DropReason::Oversize));
    }

    #[test]
    fn a_change_is_refused_when_its_keys_and_values_exceed_a_whole_session() {
        // max_session_bytes 100: every op counts its key and its value.
        let c = cfg();
        let change = |cart: usize, writes: usize| {
            format!(
                "set cart={}; set writes={}",
                "c".repeat(cart),
                "w".repeat(writes)
            )
        };
        // 4 + 60 + 6 + 30 = 100: fits exactly.
        assert!(parse_changes(&change(60, 30), &c).is_ok());
        assert_eq!(
            parse_changes(&change(60, 31), &c),
            Err(DropReason::Oversize)
        );
        // A delete counts its key: 100 + 4.
        let with_del = format!("{}; del cart", change(60, 30));
        assert_eq!(parse_changes(&with_del, &c), Err(DropReason::Oversize));
    }

    #[test]
    fn the_session_state_header_has_one_wire_form() {
        // Applications in any language parse it: `v=N`, then `; key=value` in key order,
        // values percent-encoded except RFC 3986's unreserved characters, upper-case hex.
        let state: BTreeMap<String, String> = [
            ("writes".to_string(), "3".to_string()),
            ("cart".to_string(), "a b;c=d/é~-_.Z9".to_string()),
        ]
        .into();
        assert_eq!(
            encode_state(12, &state),
            "v=12; cart=a%20b%3Bc%3Dd%2F%C3%A9~-_.Z9; writes=3"
        );
        assert_eq!(encode_state(0, &BTreeMap::new()), "v=0");
        assert_eq!(
            decode_state("v=3; cart=%c3%a9"),
            Some((3, [("cart".to_string(), "é".to_string())].into()))
        );
        for bad in [
            "3; cart=1",
            "v=x",
            "v=1; cart",
            "v=1; cart=%4",
            "v=1; cart=%FF",
        ] {
            assert_eq!(decode_state(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn drop_reasons_are_metric_labels() {
        let labels = [
            DropReason::Malformed,
            DropReason::NotAllowed,
            DropReason::Oversize,
            DropReason::Full,
        ]
        .map(DropReason::as_str);
        assert_eq!(labels, ["malformed", "not_allowed", "oversize", "full"]);
    }
}
