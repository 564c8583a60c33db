//! Plugin configuration: the JSON in the Wasm filter's `configuration` field.
//!
//! Parsing is strict (unknown fields are errors) and every error names the offending field
//! by its path, e.g. `services[0].thresholds.exit`, because the only feedback an operator
//! gets is one log line before Envoy rejects the configuration.
//!
//! Every field and its default is documented in `filter-wasm/README.md`.

use serde::Deserialize;
use std::fmt;

/// Header the filter sets to the chosen cluster; the route selects by `cluster_header`.
pub const DEFAULT_ROUTE_HEADER: &str = "x-shadowmesh-cluster";

/// A configuration problem, naming the field at fault.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigError {
    /// Path of the field, e.g. `services[0].primary.max_in_flight`; empty for the document.
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            write!(f, "invalid shadowmesh configuration: {}", self.message)
        } else {
            write!(
                f,
                "invalid shadowmesh configuration: field `{}`: {}",
                self.field, self.message
            )
        }
    }
}

impl std::error::Error for ConfigError {}

fn err(field: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError {
        field: field.into(),
        message: message.into(),
    }
}

/// Index buckets of state sync's session table per service (a floor for `max_sessions`).
pub const STATE_BUCKETS: u64 = 64;

/// The whole plugin configuration.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginConfig {
    /// Request header the filter sets to the chosen cluster (default `x-shadowmesh-cluster`).
    #[serde(default = "default_route_header")]
    pub route_header: String,
    /// Control tick: how often workers publish their counts and the plan is recomputed.
    #[serde(default = "default_tick_ms")]
    pub tick_ms: u64,
    /// Weight of the newest sample in the latency EWMA, in (0, 1].
    #[serde(default = "default_alpha")]
    pub latency_ewma_alpha: f64,
    /// An ORCA utilization older than this is not used in the load score.
    #[serde(default = "default_orca_stale_ms")]
    pub orca_stale_ms: u64,
    /// Proxy name in telemetry; default Envoy's `node.id`.
    #[serde(default)]
    pub proxy_id: Option<String>,
    /// The services this filter manages; at least one.
    pub services: Vec<ServiceConfig>,
    /// Where telemetry goes; `null`/absent disables reporting.
    #[serde(default)]
    pub telemetry: Option<TelemetryConfig>,
}

/// One managed service: a primary cluster and its shadow.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceConfig {
    /// Service name (metrics, telemetry and control-plane records use it).
    pub name: String,
    /// `:authority` values (port ignored, case-insensitive) this service answers; `"*"`
    /// matches any. Services are tried in order.
    #[serde(default = "default_hosts")]
    pub hosts: Vec<String>,
    /// The primary cluster.
    pub primary: ClusterConfig,
    /// The shadow cluster.
    pub shadow: ShadowConfig,
    /// When to start and stop redirecting.
    #[serde(default)]
    pub thresholds: Thresholds,
    /// Session affinity: where the session key comes from; absent = no affinity.
    #[serde(default)]
    pub session: Option<SessionKeySource>,
    /// Most of the traffic ever sent to the shadow, in (0, 1].
    #[serde(default = "default_max_share")]
    pub max_share: f64,
    /// How fast the redirect share moves towards its target per tick, in (0, 1].
    #[serde(default = "default_gain")]
    pub gain: f64,
    /// State synchronization of its sessions (needs `session`); absent = none.
    #[serde(default)]
    pub state_sync: Option<StateSyncConfig>,
}

/// Capacity of the primary cluster.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// Envoy cluster name.
    pub cluster: String,
    /// Concurrent requests the cluster serves at 100% load.
    pub max_in_flight: u32,
    /// Latency at which the cluster counts as fully loaded; absent = latency not used.
    #[serde(default)]
    pub latency_slo_ms: Option<f64>,
}

/// The shadow cluster and its static readiness (the control plane may override it).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShadowConfig {
    /// Envoy cluster name (may be an aggregate cluster that fails over to the primary).
    pub cluster: String,
    /// Concurrent requests the shadow serves at 100% load.
    pub max_in_flight: u32,
    /// Latency at which the shadow counts as fully loaded; absent = latency not used.
    #[serde(default)]
    pub latency_slo_ms: Option<f64>,
    /// Whether the shadow is warm until the control plane says otherwise (default false).
    #[serde(default)]
    pub ready: bool,
}

/// Redirect thresholds on the primary's load score (1.0 = at capacity).
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Thresholds {
    /// Start redirecting when the primary's load reaches this.
    pub enter: f64,
    /// While redirecting, keep the primary's load near this.
    pub target: f64,
    /// Stop redirecting when the demand (load the primary would have alone) stays below this…
    pub exit: f64,
    /// …for this many consecutive ticks.
    pub exit_hold_ticks: u32,
    /// Do not push the shadow beyond this load.
    pub shadow_max: f64,
}

impl Thresholds {
    /// Checks the thresholds and their order (`exit < target ≤ enter`).
    fn validate(&self, at: &str) -> Result<(), ConfigError> {
        for (name, v) in [
            ("enter", self.enter),
            ("target", self.target),
            ("exit", self.exit),
            ("shadow_max", self.shadow_max),
        ] {
            if !(v.is_finite() && v > 0.0 && v <= 10.0) {
                return Err(err(format!("{at}.{name}"), "must be a number in (0, 10]"));
            }
        }
        if self.exit >= self.target {
            return Err(err(
                format!("{at}.exit"),
                format!("must be below thresholds.target ({})", self.target),
            ));
        }
        if self.target > self.enter {
            return Err(err(
                format!("{at}.target"),
                format!("must not exceed thresholds.enter ({})", self.enter),
            ));
        }
        Ok(())
    }
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            enter: 0.9,
            target: 0.8,
            exit: 0.6,
            exit_hold_ticks: 10,
            shadow_max: 0.9,
        }
    }
}

/// Where the session key comes from.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub enum SessionKeySource {
    /// A request header, e.g. `{"header": "x-session-id"}`.
    Header(String),
    /// A cookie, e.g. `{"cookie": "sid"}`.
    Cookie(String),
}

impl SessionKeySource {
    fn validate(&self, at: &str) -> Result<(), ConfigError> {
        match self {
            SessionKeySource::Header(h) if !is_header_name(h) => Err(err(
                format!("{at}.header"),
                "must be a lower-case HTTP header name",
            )),
            SessionKeySource::Cookie(c) if c.is_empty() || c.contains([';', '=', ' ']) => {
                Err(err(format!("{at}.cookie"), "must be a cookie name"))
            }
            _ => Ok(()),
        }
    }
}

/// Telemetry destination.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetryConfig {
    /// Envoy cluster of the control plane.
    pub cluster: String,
    /// `:authority` of the report request (default `shadowmesh-control`).
    #[serde(default = "default_authority")]
    pub authority: String,
    /// Path the report is POSTed to (default `/v1/telemetry`).
    #[serde(default = "default_path")]
    pub path: String,
    /// Reporting interval (default 1000 ms); rounded to whole ticks.
    #[serde(default = "default_interval_ms")]
    pub interval_ms: u64,
    /// Timeout of the report request (default 500 ms).
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Bearer token of the control plane's `telemetry` role, sent with every report
    /// (absent: the control plane runs without authentication).
    #[serde(default)]
    pub token: Option<String>,
}

impl TelemetryConfig {
    /// Checks the destination; reports cannot come more often than ticks.
    fn validate(&self, tick_ms: u64) -> Result<(), ConfigError> {
        if self.cluster.is_empty() {
            return Err(err("telemetry.cluster", "must not be empty"));
        }
        if !self.path.starts_with('/') {
            return Err(err("telemetry.path", "must start with '/'"));
        }
        if self.interval_ms < tick_ms {
            return Err(err(
                "telemetry.interval_ms",
                format!("must be at least tick_ms ({tick_ms})"),
            ));
        }
        if self.timeout_ms == 0 {
            return Err(err("telemetry.timeout_ms", "must be positive"));
        }
        if let Some(t) = &self.token
            && (t.is_empty() || !t.bytes().all(|b| b.is_ascii_graphic()))
        {
            // The message never repeats the token.
            return Err(err(
                "telemetry.token",
                "must be printable ASCII without spaces",
            ));
        }
        Ok(())
    }
}

fn default_route_header() -> String {
    DEFAULT_ROUTE_HEADER.into()
}
/// The longest tick state synchronization works with: its queued changes must reach the
/// table well within the reorder window (`session_state::REORDER_WINDOW_NS`, 10 s; the
/// two bounds are checked against each other there).
pub const MAX_STATE_SYNC_TICK_MS: u64 = 2_000;

fn default_tick_ms() -> u64 {
    100
}
fn default_alpha() -> f64 {
    0.3
}
fn default_orca_stale_ms() -> u64 {
    2_000
}
fn default_hosts() -> Vec<String> {
    vec!["*".into()]
}
fn default_max_share() -> f64 {
    0.9
}
fn default_gain() -> f64 {
    0.5
}
fn default_authority() -> String {
    "shadowmesh-control".into()
}
fn default_path() -> String {
    "/v1/telemetry".into()
}
fn default_interval_ms() -> u64 {
    1_000
}
fn default_timeout_ms() -> u64 {
    500
}

impl PluginConfig {
    /// Parses and validates the plugin configuration.
    ///
    /// ```
    /// use shadowmesh_filter::config::PluginConfig;
    /// let bad = r#"{"services":[{"name":"a","primary":{"cluster":"p","max_in_flight":0},
    ///               "shadow":{"cluster":"s","max_in_flight":4}}]}"#;
    /// let e = PluginConfig::parse(bad.as_bytes()).unwrap_err();
    /// assert_eq!(e.field, "services[0].primary.max_in_flight");
    /// ```
    pub fn parse(bytes: &[u8]) -> Result<PluginConfig, ConfigError> {
        let de = &mut serde_json::Deserializer::from_slice(bytes);
        let config: PluginConfig = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            let field = if path == "." { String::new() } else { path };
            err(field, e.into_inner().to_string())
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Checks the document section by section; the error names the first bad field.
    fn validate(&self) -> Result<(), ConfigError> {
        if !is_header_name(&self.route_header) {
            return Err(err(
                "route_header",
                "must be a lower-case HTTP header name (not a pseudo-header)",
            ));
        }
        if !(10..=60_000).contains(&self.tick_ms) {
            return Err(err("tick_ms", "must be between 10 and 60000"));
        }
        unit_interval("latency_ewma_alpha", self.latency_ewma_alpha)?;
        if self.services.is_empty() {
            return Err(err("services", "at least one service is required"));
        }
        for (i, s) in self.services.iter().enumerate() {
            let at = format!("services[{i}]");
            if self.services[..i]
                .iter()
                .any(|earlier| earlier.name == s.name)
            {
                return Err(err(
                    format!("{at}.name"),
                    format!("duplicate service name `{}`", s.name),
                ));
            }
            s.validate(&at)?;
        }
        if let Some(t) = &self.telemetry {
            t.validate(self.tick_ms)?;
        }
        // Queued state changes reach the table at the next tick and are ordered by their
        // capture stamps within a window of 10 s: a tick must fit in it several times.
        if self.tick_ms > MAX_STATE_SYNC_TICK_MS
            && self.services.iter().any(|s| s.state_sync.is_some())
        {
            return Err(err(
                "tick_ms",
                format!("must be at most {MAX_STATE_SYNC_TICK_MS} with state_sync"),
            ));
        }
        Ok(())
    }

    /// Number of ticks between telemetry reports (at least 1).
    pub fn ticks_per_report(&self) -> u64 {
        self.telemetry
            .as_ref()
            .map_or(1, |t| (t.interval_ms / self.tick_ms).max(1))
    }
}

impl ServiceConfig {
    /// Checks one service; `at` is its path (`services[2]`).
    fn validate(&self, at: &str) -> Result<(), ConfigError> {
        let field = |f: &str| format!("{at}.{f}");
        if self.name.is_empty()
            || !self
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return Err(err(
                field("name"),
                "must be non-empty ASCII letters, digits, '-' or '_'",
            ));
        }
        if self.hosts.is_empty() {
            return Err(err(
                field("hosts"),
                "at least one host (or \"*\") is required",
            ));
        }
        cluster_fields(
            &field("primary"),
            &self.primary.cluster,
            self.primary.max_in_flight,
            self.primary.latency_slo_ms,
        )?;
        cluster_fields(
            &field("shadow"),
            &self.shadow.cluster,
            self.shadow.max_in_flight,
            self.shadow.latency_slo_ms,
        )?;
        if self.shadow.cluster == self.primary.cluster {
            return Err(err(
                field("shadow.cluster"),
                "must differ from primary.cluster",
            ));
        }
        self.thresholds.validate(&field("thresholds"))?;
        if let Some(session) = &self.session {
            session.validate(&field("session"))?;
        }
        unit_interval(&field("max_share"), self.max_share)?;
        unit_interval(&field("gain"), self.gain)?;
        if let Some(sync) = &self.state_sync {
            if self.session.is_none() {
                return Err(err(
                    field("state_sync"),
                    "needs `session`: state follows a session key",
                ));
            }
            sync.validate(&field("state_sync"))?;
        }
        Ok(())
    }

    /// Whether this service answers requests for `authority` (`host[:port]`).
    pub fn matches_authority(&self, authority: &str) -> bool {
        let host = strip_port(authority);
        self.hosts
            .iter()
            .any(|h| h == "*" || h.eq_ignore_ascii_case(host))
    }
}

fn strip_port(authority: &str) -> &str {
    if authority.starts_with('[') {
        // [v6]:port
        return authority
            .split_once(']')
            .map_or(authority, |(h, _)| &h[1..]);
    }
    match authority.rsplit_once(':') {
        Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => authority,
    }
}

fn is_header_name(h: &str) -> bool {
    !h.is_empty()
        && h.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

fn unit_interval(field: &str, v: f64) -> Result<(), ConfigError> {
    if v.is_finite() && v > 0.0 && v <= 1.0 {
        Ok(())
    } else {
        Err(err(field, "must be a number in (0, 1]"))
    }
}

fn cluster_fields(
    at: &str,
    cluster: &str,
    max_in_flight: u32,
    slo: Option<f64>,
) -> Result<(), ConfigError> {
    if cluster.is_empty() {
        return Err(err(format!("{at}.cluster"), "must not be empty"));
    }
    if max_in_flight == 0 {
        return Err(err(format!("{at}.max_in_flight"), "must be at least 1"));
    }
    if let Some(ms) = slo
        && !(ms.is_finite() && ms > 0.0)
    {
        return Err(err(
            format!("{at}.latency_slo_ms"),
            "must be a positive number of milliseconds",
        ));
    }
    Ok(())
}

/// Which end of the replication this filter is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StateRole {
    /// On the primary's path: captures changes, publishes them, redirects a session only
    /// once the shadows acknowledged its latest version.
    Publisher,
    /// In front of a shadow: pulls the changes, hands each request its session's state.
    Subscriber,
}

/// When a publisher sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SyncMode {
    /// Batched once per tick, off the request path.
    #[default]
    Async,
    /// On each write: the response waits until the relay has the change.
    Event,
}

/// The `state_sync` section of the plugin configuration.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateSyncConfig {
    /// This filter's end of the replication.
    pub role: StateRole,
    /// When changes are sent (publishers).
    #[serde(default)]
    pub mode: SyncMode,
    /// Envoy cluster of the relay (the control plane).
    pub cluster: String,
    /// `:authority` of relay requests.
    #[serde(default = "default_authority")]
    pub authority: String,
    /// Bearer token of the control plane's `telemetry` role.
    #[serde(default)]
    pub token: Option<String>,
    /// The critical keys: anything else is dropped.
    pub keys: Vec<String>,
    /// Largest value of one key (bytes).
    #[serde(default = "default_max_value_bytes")]
    pub max_value_bytes: usize,
    /// Largest state of one session (keys and values, bytes).
    #[serde(default = "default_max_session_bytes")]
    pub max_session_bytes: usize,
    /// Sessions tracked per service.
    #[serde(default = "default_max_sessions")]
    pub max_sessions: u64,
    /// Timeout of a publish (ms).
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// How long a pull may wait at the relay for changes (ms; subscribers).
    #[serde(default = "default_wait_ms")]
    pub wait_ms: u64,
}

fn default_max_value_bytes() -> usize {
    4_096
}
fn default_max_session_bytes() -> usize {
    16_384
}
fn default_max_sessions() -> u64 {
    10_000
}
fn default_wait_ms() -> u64 {
    1_000
}

impl StateSyncConfig {
    /// Checks the section; errors name the field under `at`.
    fn validate(&self, at: &str) -> Result<(), ConfigError> {
        let e = |f: &str, m: &str| err(format!("{at}.{f}"), m);
        if self.cluster.is_empty() {
            return Err(e("cluster", "must not be empty"));
        }
        if self.keys.is_empty() {
            return Err(e("keys", "name at least one critical key"));
        }
        for (i, k) in self.keys.iter().enumerate() {
            if !valid_state_key(k) {
                return Err(e(
                    &format!("keys[{i}]"),
                    "1 to 64 characters of letters, digits and `_.-`",
                ));
            }
        }
        if self.max_value_bytes == 0 || self.max_value_bytes > self.max_session_bytes {
            return Err(e("max_value_bytes", "must be 1 to max_session_bytes"));
        }
        if self.max_session_bytes > 1 << 20 {
            return Err(e("max_session_bytes", "must be at most 1 MiB"));
        }
        if !(STATE_BUCKETS..=1_000_000).contains(&self.max_sessions) {
            return Err(e("max_sessions", "must be 64 to 1,000,000"));
        }
        if self.timeout_ms == 0 || self.wait_ms > 30_000 {
            return Err(e(
                "timeout_ms",
                "timeout_ms must be at least 1 and wait_ms at most 30000",
            ));
        }
        Ok(())
    }
}

/// A critical key's form: 1 to 64 of `[A-Za-z0-9_.-]`.
pub(crate) fn valid_state_key(k: &str) -> bool {
    !k.is_empty()
        && k.len() <= 64
        && k.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"{"services":[{"name":"checkout",
        "primary":{"cluster":"p","max_in_flight":8},
        "shadow":{"cluster":"s","max_in_flight":8,"ready":true},
        "session":{"cookie":"sid"}}],
        "telemetry":{"cluster":"cp"}}"#;

    #[test]
    fn defaults_are_filled_in() {
        let c = PluginConfig::parse(GOOD.as_bytes()).unwrap();
        assert_eq!(c.route_header, "x-shadowmesh-cluster");
        assert_eq!(c.tick_ms, 100);
        assert_eq!(c.services[0].thresholds, Thresholds::default());
        assert_eq!(
            c.services[0].session,
            Some(SessionKeySource::Cookie("sid".into()))
        );
        assert_eq!(c.telemetry.as_ref().unwrap().path, "/v1/telemetry");
        assert_eq!(c.ticks_per_report(), 10);
    }

    fn field_of(json: &str) -> String {
        PluginConfig::parse(json.as_bytes()).unwrap_err().field
    }

    #[test]
    fn errors_name_the_field() {
        assert_eq!(
            field_of(&GOOD.replace(r#""name":"checkout","#, "")),
            "services[0]"
        );
        assert_eq!(
            field_of(&GOOD.replace("\"ready\":true", "\"ready\":\"yes\"")),
            "services[0].shadow.ready"
        );
        assert_eq!(
            field_of(&GOOD.replace("\"cluster\":\"cp\"", "\"cluster\":\"cp\",\"bogus\":1")),
            "telemetry.bogus"
        );
        assert_eq!(
            field_of(&GOOD.replace("\"session\"", "\"thresholds\":{\"exit\":0.85},\"session\"")),
            "services[0].thresholds.exit"
        );
        assert_eq!(
            field_of(&GOOD.replace("\"cluster\":\"s\"", "\"cluster\":\"p\"")),
            "services[0].shadow.cluster"
        );
        assert_eq!(
            field_of(&GOOD.replace("{\"services\"", "{\"tick_ms\":1,\"services\"")),
            "tick_ms"
        );
        assert_eq!(field_of("not json"), "");
        assert_eq!(field_of(r#"{"services":[]}"#), "services");
    }

    #[test]
    fn state_sync_bounds_the_tick() {
        // Reports at most once a minute, so only the tick's own bound applies.
        let good = GOOD.replace(
            "\"telemetry\":{\"cluster\":\"cp\"}",
            "\"telemetry\":{\"cluster\":\"cp\",\"interval_ms\":60000}",
        );
        let with_sync = good.replace(
            "\"session\":{\"cookie\":\"sid\"}",
            "\"session\":{\"cookie\":\"sid\"},\"state_sync\":{\"role\":\"publisher\",\"cluster\":\"cp\",\"keys\":[\"cart\"]}",
        );
        let tick = |ms: u64| {
            with_sync.replace("{\"services\"", &format!("{{\"tick_ms\":{ms},\"services\""))
        };
        assert!(PluginConfig::parse(tick(MAX_STATE_SYNC_TICK_MS).as_bytes()).is_ok());
        assert_eq!(field_of(&tick(MAX_STATE_SYNC_TICK_MS + 1)), "tick_ms");
        let without = good.replace("{\"services\"", "{\"tick_ms\":60000,\"services\"");
        assert!(
            PluginConfig::parse(without.as_bytes()).is_ok(),
            "only with state_sync"
        );
    }

    #[test]
    fn authority_matching_ignores_port_and_case() {
        let mut s = PluginConfig::parse(GOOD.as_bytes())
            .unwrap()
            .services
            .remove(0);
        s.hosts = vec!["Shop.example".into()];
        assert!(s.matches_authority("shop.example:8080"));
        assert!(s.matches_authority("SHOP.example"));
        assert!(!s.matches_authority("other.example"));
        s.hosts = vec!["::1".into()];
        assert!(s.matches_authority("[::1]:80"));
    }
}
