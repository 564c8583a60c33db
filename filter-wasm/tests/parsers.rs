//! Property tests of the parsers that see outside input in the filter: the plugin
//! configuration (from the operator) and ORCA headers (from upstreams). Neither may panic —
//! a panic in the filter is a VM fault — and what they accept must be what they promise.

use proptest::prelude::*;
use shadowmesh_filter::config::PluginConfig;
use shadowmesh_filter::orca::OrcaReport;

const SHIPPED: &str = include_str!("../../envoy-configs/atre-plugin.json");

/// Every scalar position in a JSON document, as a path of keys and indices.
fn leaves(v: &serde_json::Value, at: Vec<String>, out: &mut Vec<Vec<String>>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, x) in m {
                let mut p = at.clone();
                p.push(k.clone());
                leaves(x, p, out);
            }
        }
        serde_json::Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                let mut p = at.clone();
                p.push(i.to_string());
                leaves(x, p, out);
            }
        }
        _ => out.push(at),
    }
}

fn replace(v: &mut serde_json::Value, path: &[String], with: serde_json::Value) {
    let mut cur = v;
    for p in path {
        cur = match cur {
            serde_json::Value::Object(m) => m.get_mut(p).unwrap(),
            serde_json::Value::Array(a) => &mut a[p.parse::<usize>().unwrap()],
            _ => unreachable!(),
        };
    }
    *cur = with;
}

fn any_json_scalar() -> impl Strategy<Value = serde_json::Value> {
    prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<u64>().prop_map(serde_json::Value::from),
        any::<f64>()
            .prop_filter("JSON has no NaN or infinity", |f| f.is_finite())
            .prop_map(serde_json::Value::from),
        ".{0,40}".prop_map(serde_json::Value::from),
        Just(serde_json::json!([])),
        Just(serde_json::json!({})),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    #[test]
    fn arbitrary_bytes_never_panic_the_config_parser(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = PluginConfig::parse(&bytes);
    }

    /// The shipped configuration with one value replaced by anything: either still a valid
    /// configuration, or an error naming a field of the document (never a panic).
    #[test]
    fn one_changed_value_is_accepted_or_named(pick in any::<prop::sample::Index>(), with in any_json_scalar()) {
        let mut doc: serde_json::Value = serde_json::from_str(SHIPPED).unwrap();
        let mut paths = Vec::new();
        leaves(&doc, Vec::new(), &mut paths);
        let path = pick.get(&paths).clone();
        replace(&mut doc, &path, with);
        let bytes = serde_json::to_vec(&doc).unwrap();
        if let Err(e) = PluginConfig::parse(&bytes) {
            prop_assert!(!e.message.is_empty());
            // The field named is the one changed, or an enclosing section that the change
            // made inconsistent (e.g. thresholds out of order).
            let first = path.first().cloned().unwrap_or_default();
            prop_assert!(
                e.field.is_empty() || e.field.starts_with(&first),
                "changed {path:?}, error names {:?}: {}", e.field, e.message
            );
        }
    }

    #[test]
    fn arbitrary_orca_headers_never_panic(value in ".{0,200}") {
        let _ = OrcaReport::parse(&value);
        let _ = OrcaReport::parse(&format!("TEXT {value}"));
        let _ = OrcaReport::parse(&format!("JSON {value}"));
    }

    /// What the parser accepts is within range, whatever the header said.
    #[test]
    fn accepted_utilization_is_finite_and_non_negative(
        cpu in any::<f64>(), app in any::<f64>(), json in any::<bool>()
    ) {
        let value = if json {
            format!(r#"JSON {{"cpu_utilization": {cpu:e}, "application_utilization": {app:e}}}"#)
        } else {
            format!("TEXT cpu_utilization={cpu}, application_utilization={app}")
        };
        if let Ok(r) = OrcaReport::parse(&value) {
            let u = r.utilization();
            prop_assert!(u.is_finite() && u >= 0.0, "{value} -> {u}");
        }
    }

    /// A well-formed report of plausible values is read back exactly.
    #[test]
    fn plausible_reports_are_read_exactly(cpu in 0.0f64..=1.0, app in 0.0f64..=1.0) {
        let r = OrcaReport::parse(&format!("TEXT cpu_utilization={cpu}, application_utilization={app}")).unwrap();
        prop_assert_eq!(r.utilization(), if app > 0.0 { app } else { cpu });
    }
}
