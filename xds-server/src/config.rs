//! The server's configuration file (TOML). Every field is optional; command-line flags
//! override the file.
//!
//! ```toml
//! # Where the ATRE filters report telemetry, operators call the admin API, and
//! # Prometheus scrapes /metrics.
//! http_listen = "127.0.0.1:18080"
//! # Where Envoys open their ADS stream (gRPC, HTTP/2).
//! ads_listen = "127.0.0.1:18000"
//! # How a proxy's snapshot group is chosen: "cluster" (node.cluster), "id" (node.id) or
//! # { metadata = "KEY" } (a string in node.metadata).
//! grouping = "cluster"
//!
//! # The Predictive Traffic Analyzer: demand per `step_secs`, `horizon` steps ahead,
//! # provisioning for the `quantile`; capacities in requests per second.
//! [predictor]
//! step_secs = 60
//! horizon = 60
//! quantile = 0.9
//! capacities = { checkout = 300.0 }
//!
//! # The shadow registry: how long a readiness record stays valid in a filter after the
//! # telemetry answer that carried it (each answer renews it).
//! [registry]
//! readiness_ttl_secs = 30
//!
//! # Services published at start-up (the HTTP API and the SNP change them later).
//! [[services]]
//! name = "checkout"
//! primary = [{ address = "10.0.0.1:8080" }, { address = "10.0.0.2:8080", weight = 2 }]
//! # Shadows active from the start (usually none): endpoints and readiness.
//! shadows = { endpoints = [{ address = "10.0.0.9:8080" }], warm = true, max_in_flight = 32 }
//! ```

use crate::ingest::MAX_DEDUP_WINDOW;
use crate::registry::{
    RegistryError, RegistrySettings, ServiceChange, ServiceSpec, ShadowSet, validate_endpoints,
    validate_service,
};
use crate::xds::NodeGrouping;
use crate::xds::builders::EndpointSpec;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::Path;

/// Default address of the HTTP API.
pub const DEFAULT_HTTP_LISTEN: &str = "127.0.0.1:18080";
/// Default address of the ADS server.
pub const DEFAULT_ADS_LISTEN: &str = "127.0.0.1:18000";

/// The whole configuration file.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Address of the HTTP API (telemetry, admin, `/metrics`).
    pub http_listen: Option<SocketAddr>,
    /// Address of the ADS gRPC server.
    pub ads_listen: Option<SocketAddr>,
    /// How proxies are grouped.
    #[serde(default)]
    pub grouping: NodeGrouping,
    /// The Predictive Traffic Analyzer.
    #[serde(default)]
    pub predictor: PredictorConfig,
    /// The shadow registry.
    #[serde(default)]
    pub registry: RegistryConfig,
    /// Services to publish at start-up (when the state directory holds none yet).
    #[serde(default)]
    pub services: Vec<ServiceConfig>,
    /// Directory of the durable state store; absent = memory only.
    #[serde(default)]
    pub state_dir: Option<std::path::PathBuf>,
    /// The Shadow Node Provisioner; absent = shadows are set by operators only.
    #[serde(default)]
    pub provisioner: Option<ProvisionerConfig>,
    /// The warm-spare pool the provisioner draws from.
    #[serde(default)]
    pub pool: PoolConfig,
    /// File of `ROLE TOKEN` lines for the HTTP API (see `--tokens-file`).
    #[serde(default)]
    pub tokens_file: Option<std::path::PathBuf>,
    /// Serve the HTTP API without tokens on a non-loopback address anyway.
    #[serde(default)]
    pub allow_unauthenticated: bool,
    /// Limits of the HTTP listener.
    #[serde(default)]
    pub http: crate::http::ServeLimits,
    /// Limits of telemetry reports.
    #[serde(default)]
    pub telemetry: crate::ingest::ReportLimits,
    /// TLS (and mutual TLS) of the ADS listener.
    #[serde(default)]
    pub ads_tls: Option<AdsTlsConfig>,
    /// Limits of the ADS listener.
    #[serde(default)]
    pub ads: crate::xds::AdsLimits,
    /// Limits of State Synchronization's relay.
    #[serde(default)]
    pub relay: crate::relay::RelayLimits,
}

/// The `[ads_tls]` section: PEM files.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdsTlsConfig {
    /// The server's certificate chain.
    pub cert_file: std::path::PathBuf,
    /// Its private key.
    pub key_file: std::path::PathBuf,
    /// CA that client (Envoy) certificates must chain to: mutual TLS. Absent: TLS only.
    #[serde(default)]
    pub client_ca_file: Option<std::path::PathBuf>,
}

impl AdsTlsConfig {
    /// Reads the files; an error names the field whose file could not be read.
    pub fn load(&self) -> Result<crate::AdsTls, (String, String)> {
        let read = |field: &str, p: &std::path::Path| {
            std::fs::read(p).map_err(|e| {
                (
                    format!("ads_tls.{field}"),
                    format!("cannot read {}: {e}", p.display()),
                )
            })
        };
        let tls = crate::AdsTls {
            cert_pem: read("cert_file", &self.cert_file)?,
            key_pem: read("key_file", &self.key_file)?,
            client_ca_pem: self
                .client_ca_file
                .as_ref()
                .map(|p| read("client_ca_file", p))
                .transpose()?,
        };
        self.parse(&tls)?;
        Ok(tls)
    }

    /// Parses the PEM files as the listener will, so a broken file fails `--check` (and
    /// start-up) naming its field, not the first handshake as "transport error".
    fn parse(&self, tls: &crate::AdsTls) -> Result<(), (String, String)> {
        use rustls_pki_types::pem::PemObject;
        use rustls_pki_types::{CertificateDer, PrivateKeyDer};
        let bad = |field: &str, path: &std::path::Path, what: String| {
            (
                format!("ads_tls.{field}"),
                format!("{}: {what}", path.display()),
            )
        };
        let certs = |field: &str, path: &std::path::Path, pem: &[u8]| {
            let certs = CertificateDer::pem_slice_iter(pem)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| bad(field, path, format!("not PEM certificates: {e}")))?;
            if certs.is_empty() {
                return Err(bad(field, path, "holds no PEM certificate".into()));
            }
            Ok(certs)
        };
        let chain = certs("cert_file", &self.cert_file, &tls.cert_pem)?;
        let key = PrivateKeyDer::from_pem_slice(&tls.key_pem).map_err(|e| {
            bad(
                "key_file",
                &self.key_file,
                format!("no PEM private key: {e}"),
            )
        })?;
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| bad("cert_file", &self.cert_file, e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .map_err(|e| match e {
                rustls::Error::InvalidCertificate(_) => {
                    bad("cert_file", &self.cert_file, e.to_string())
                }
                e => bad(
                    "key_file",
                    &self.key_file,
                    format!("does not fit the certificate in cert_file: {e}"),
                ),
            })?;
        if let (Some(pem), Some(path)) = (&tls.client_ca_pem, &self.client_ca_file) {
            let mut roots = rustls::RootCertStore::empty();
            for cert in certs("client_ca_file", path, pem)? {
                roots.add(cert).map_err(|e| {
                    bad("client_ca_file", path, format!("not a CA certificate: {e}"))
                })?;
            }
        }
        Ok(())
    }
}

/// The `[provisioner]` section.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProvisionerConfig {
    /// Seconds between policy steps.
    #[serde(default = "default_step_secs")]
    pub step_secs: f64,
    /// The policy (`[provisioner.policy]`): mode, lead margin, hold, hysteresis, costs.
    #[serde(default)]
    pub policy: shadowmesh_provisioner::Settings,
    /// The warm-up probe (`[provisioner.probe]`).
    #[serde(default)]
    pub probe: crate::provisioning::ProbeConfig,
}

fn default_step_secs() -> f64 {
    1.0
}

/// How the pool's spares are brought up.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProviderName {
    /// They already run.
    Static,
    /// The control plane starts them from `command`.
    #[default]
    Process,
}

/// The `[pool]` section.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolConfig {
    /// `static` or `process`.
    #[serde(default)]
    pub provider: ProviderName,
    /// Process provider: program and arguments; `{id}`, `{address}`, `{host}`, `{port}`,
    /// `{warmup_ms}`, `{capacity}`, `{max_in_flight}`, `{class}` are filled in per spare.
    #[serde(default)]
    pub command: Vec<String>,
    /// The spares.
    #[serde(default)]
    pub spares: Vec<SpareConfig>,
}

/// One spare in `[[pool.spares]]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpareConfig {
    /// Unique id.
    pub id: String,
    /// `ip:port` it serves on.
    pub address: SocketAddr,
    /// Requests per second it serves when warm.
    pub capacity: f64,
    /// Concurrent requests at capacity.
    pub max_in_flight: u32,
    /// Expected seconds from start to warm (the probe measures the real one).
    pub warmup_secs: f64,
    /// Cost per hour while it runs.
    pub cost_per_hour: f64,
    /// Class or size (informational).
    #[serde(default)]
    pub class: String,
}

impl SpareConfig {
    /// The provisioner's spec of it.
    pub fn spec(&self) -> shadowmesh_provisioner::SpareSpec {
        shadowmesh_provisioner::SpareSpec {
            id: self.id.clone(),
            address: self.address.to_string(),
            capacity: self.capacity,
            max_in_flight: self.max_in_flight,
            warmup_secs: self.warmup_secs,
            cost_per_sec: self.cost_per_hour / 3_600.0,
            class: self.class.clone(),
        }
    }
}

impl ServerConfig {
    /// The provisioner options it describes, if the provisioner is configured.
    pub fn provisioning(&self) -> Option<crate::ProvisioningOptions> {
        let p = self.provisioner.as_ref()?;
        Some(crate::ProvisioningOptions {
            settings: crate::provisioning::LoopSettings {
                policy: p.policy.clone(),
                step: std::time::Duration::from_secs_f64(p.step_secs),
                probe: p.probe.clone(),
            },
            spares: self.pool.spares.iter().map(SpareConfig::spec).collect(),
            provider: match self.pool.provider {
                ProviderName::Static => crate::ProviderKind::Static,
                ProviderName::Process => crate::ProviderKind::Process(self.pool.command.clone()),
            },
            source: None,
        })
    }
}

/// The `[predictor]` section.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PredictorConfig {
    /// Seconds per demand sample.
    pub step_secs: i64,
    /// Steps forecast ahead.
    pub horizon: usize,
    /// Quantile provisioned for.
    pub quantile: f64,
    /// Seasonal cycles (default: a day and a week, hourly buckets at most).
    pub seasons: Option<Vec<shadowmesh_predictor::model::SeasonSpec>>,
    /// Capacity (req/s) per series (service, or `proxy->service` link).
    pub capacities: std::collections::BTreeMap<String, f64>,
    /// Series tracked at most (services and links; idle ones without a capacity are
    /// evicted first). Also bounds the series one forecast step collects.
    pub max_series: usize,
}

impl Default for PredictorConfig {
    fn default() -> Self {
        PredictorConfig {
            step_secs: 60,
            horizon: 60,
            quantile: 0.9,
            seasons: None,
            capacities: Default::default(),
            max_series: 100_000,
        }
    }
}

impl PredictorConfig {
    /// The analyzer configuration it describes.
    pub fn analyzer(&self) -> shadowmesh_predictor::analyzer::AnalyzerConfig {
        let mut c =
            shadowmesh_predictor::analyzer::AnalyzerConfig::for_step(self.step_secs, self.horizon);
        c.quantile = self.quantile;
        c.max_series = self.max_series;
        if let Some(seasons) = &self.seasons {
            c.model.seasons = seasons.clone();
        }
        c
    }
}

/// The `[registry]` section.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RegistryConfig {
    /// Seconds a readiness record stays valid in a filter after the answer carrying it.
    pub readiness_ttl_secs: u64,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        RegistryConfig {
            readiness_ttl_secs: crate::registry::DEFAULT_READINESS_TTL.as_secs(),
        }
    }
}

impl RegistryConfig {
    /// The registry settings it describes.
    pub fn settings(&self) -> RegistrySettings {
        RegistrySettings {
            readiness_ttl: std::time::Duration::from_secs(self.readiness_ttl_secs),
            ..RegistrySettings::default()
        }
    }
}

/// One service in the configuration file.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceConfig {
    /// Service name (clusters `{name}_primary`, `{name}_shadow_pool`, `{name}_shadow`).
    pub name: String,
    /// Primary endpoints.
    pub primary: Vec<EndpointSpec>,
    /// Shadows active from the start (usually none).
    #[serde(default)]
    pub shadows: ShadowSet,
}

impl ServiceConfig {
    /// The registry change that creates this service.
    pub fn change(&self) -> ServiceChange {
        ServiceChange::Set(ServiceSpec {
            name: self.name.clone(),
            primary: self.primary.clone(),
            shadows: Some(self.shadows.clone()),
        })
    }
}

/// A configuration file that could not be used, with the field at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Not readable.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// Not valid TOML for this schema, or a field with an invalid value.
    #[error("{path}: field `{field}`: {message}")]
    Field {
        /// The file.
        path: String,
        /// Path of the offending field, e.g. `services[0].primary[1].weight`.
        field: String,
        /// What is wrong.
        message: String,
    },
}

impl ServerConfig {
    /// Parses and validates a configuration; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<ServerConfig, ConfigError> {
        let at = |field: String, message: String| ConfigError::Field {
            path: origin.to_string(),
            field,
            message,
        };
        let de = toml::Deserializer::parse(text).map_err(|e| at(".".into(), e.to_string()))?;
        let config: ServerConfig = serde_path_to_error::deserialize(de)
            .map_err(|e| at(e.path().to_string(), e.into_inner().message().to_string()))?;
        config.validate().map_err(|e| at(e.field, e.message))?;
        Ok(config)
    }

    /// Reads, parses and validates a configuration file.
    pub fn load(path: &Path) -> Result<ServerConfig, ConfigError> {
        let origin = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: origin.clone(),
            source,
        })?;
        ServerConfig::parse(&text, &origin)
    }

    fn validate(&self) -> Result<(), RegistryError> {
        self.predictor.analyzer().validate().map_err(|e| {
            let field = match e.field.as_str() {
                "model.step_secs" => "step_secs".to_string(),
                "model.horizon" => "horizon".to_string(),
                other => other.to_string(),
            };
            RegistryError::invalid(format!("predictor.{field}"), e.message)
        })?;
        for (series, c) in &self.predictor.capacities {
            if !(c.is_finite() && *c > 0.0) {
                return Err(RegistryError::invalid(
                    format!("predictor.capacities.{series}"),
                    format!("{c} is not a positive number"),
                ));
            }
        }
        bounded(
            "registry.readiness_ttl_secs",
            self.registry.readiness_ttl_secs,
            1,
            86_400,
        )?;
        if let Some(p) = &self.provisioner {
            self.validate_provisioner(p)?;
        }
        self.http
            .validate()
            .map_err(|(f, m)| RegistryError::invalid(format!("http.{f}"), m))?;
        // Every number is bounded here, at `--check`: past these a semaphore, a timer or an
        // allocation would fail at run time instead (`max_connections = 2^63` panicked
        // after "listening").
        let a = &self.ads;
        for (field, v, min, max) in [
            ("max_connections", a.max_connections as u64, 1, 1 << 20),
            (
                "max_streams_per_connection",
                u64::from(a.max_streams_per_connection),
                1,
                1_024,
            ),
            (
                "max_connection_idle_secs",
                a.max_connection_idle_secs,
                1,
                3_600,
            ),
            ("write_timeout_secs", a.write_timeout_secs, 1, 3_600),
            ("shutdown_grace_secs", a.shutdown_grace_secs, 0, 3_600),
        ] {
            bounded(&format!("ads.{field}"), v, min, max)?;
        }
        let t = &self.telemetry;
        for (field, v, max) in [
            ("max_skew_ms", t.max_skew_ms, 86_400_000),
            ("max_window_ms", t.max_window_ms, 86_400_000),
            ("max_services", t.max_services as u64, 100_000),
            ("max_requests", t.max_requests, 1 << 40),
            ("dedup_window", t.dedup_window, MAX_DEDUP_WINDOW),
            ("max_proxies", t.max_proxies as u64, 10_000_000),
        ] {
            bounded(&format!("telemetry.{field}"), v, 1, max)?;
        }
        let r = &self.relay;
        for (field, v, min, max) in [
            ("max_services", r.max_services as u64, 1, 100_000),
            ("max_sessions", r.max_sessions as u64, 1, 10_000_000),
            (
                "max_session_bytes",
                r.max_session_bytes as u64,
                1,
                crate::http::MAX_BODY_BYTES as u64,
            ),
            ("max_service_bytes", r.max_service_bytes as u64, 1, 1 << 40),
            ("max_bytes", r.max_bytes as u64, 1, 1 << 40),
            (
                "max_answer_bytes",
                r.max_answer_bytes as u64,
                1_024,
                64 << 20,
            ),
            ("backlog", r.backlog as u64, 1, 10_000_000),
            ("max_subscribers", r.max_subscribers as u64, 1, 100_000),
            ("subscriber_ttl_ms", r.subscriber_ttl_ms, 1, 3_600_000),
            ("max_wait_ms", r.max_wait_ms, 0, 60_000),
        ] {
            bounded(&format!("relay.{field}"), v, min, max)?;
        }
        if r.max_wait_ms >= self.http.request_timeout_secs.saturating_mul(1_000) {
            return Err(RegistryError::invalid(
                "relay.max_wait_ms",
                format!(
                    "{} ms would outlast http.request_timeout_secs ({} s): a long poll would time out",
                    r.max_wait_ms, self.http.request_timeout_secs
                ),
            ));
        }
        let mut names = std::collections::HashSet::new();
        for (i, s) in self.services.iter().enumerate() {
            let at = format!("services[{i}]");
            validate_service(&s.name).map_err(|e| RegistryError {
                field: format!("{at}.name"),
                ..e
            })?;
            if !names.insert(&s.name) {
                return Err(RegistryError::invalid(
                    format!("{at}.name"),
                    format!("{:?} is defined twice", s.name),
                ));
            }
            validate_endpoints("primary", &s.primary).map_err(|e| e.within(&at))?;
            s.shadows
                .validate()
                .map_err(|e| e.within(&format!("{at}.shadows")))?;
        }
        Ok(())
    }
}

/// `value` of `field` within `min..=max`, or an error naming the field.
fn bounded(field: &str, value: u64, min: u64, max: u64) -> Result<(), RegistryError> {
    if (min..=max).contains(&value) {
        Ok(())
    } else {
        Err(RegistryError::invalid(
            field,
            format!("{value} is outside {min}..={max}"),
        ))
    }
}

impl ServerConfig {
    fn validate_provisioner(&self, p: &ProvisionerConfig) -> Result<(), RegistryError> {
        if !(p.step_secs.is_finite() && (0.05..=3_600.0).contains(&p.step_secs)) {
            return Err(RegistryError::invalid(
                "provisioner.step_secs",
                "must be between 0.05 and 3600",
            ));
        }
        p.policy.validate().map_err(|e| {
            RegistryError::invalid(format!("provisioner.policy.{}", e.field), e.message)
        })?;
        if p.policy.mode == shadowmesh_provisioner::Mode::Oracle {
            return Err(RegistryError::invalid(
                "provisioner.policy.mode",
                "oracle needs the true future, which only a benchmark has; use predictive or reactive",
            ));
        }
        p.probe
            .validate()
            .map_err(|(f, m)| RegistryError::invalid(format!("provisioner.probe.{f}"), m))?;
        if self.pool.provider == ProviderName::Process && self.pool.command.is_empty() {
            return Err(RegistryError::invalid(
                "pool.command",
                "the process provider needs a command template",
            ));
        }
        shadowmesh_provisioner::ShadowPool::new(
            self.pool.spares.iter().map(SpareConfig::spec).collect(),
        )
        .map_err(|e| RegistryError::invalid(format!("pool.{}", e.field), e.message))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_example_parses() {
        let doc = include_str!("config.rs")
            .lines()
            .filter_map(|l| l.strip_prefix("//! "))
            .skip_while(|l| !l.starts_with("```toml"))
            .skip(1)
            .take_while(|l| !l.starts_with("```"))
            .collect::<Vec<_>>()
            .join("\n");
        let c = ServerConfig::parse(&doc, "doc").unwrap();
        assert_eq!(c.services[0].primary[1].weight, 2);
        assert!(c.services[0].shadows.warm);
        assert_eq!(c.registry.readiness_ttl_secs, 30);
        assert_eq!(c.grouping, NodeGrouping::Cluster);
    }

    #[test]
    fn errors_name_the_field() {
        let e = ServerConfig::parse("ads_listen = \"nowhere\"", "f.toml").unwrap_err();
        assert!(e.to_string().contains("field `ads_listen`"), "{e}");
        let e = ServerConfig::parse(
            "[[services]]\nname = \"a\"\nprimary = [{ address = \"10.0.0.1:80\", wieght = 2 }]",
            "f.toml",
        )
        .unwrap_err();
        assert!(e.to_string().contains("services[0].primary[0]"), "{e}");
        assert!(e.to_string().contains("wieght"), "{e}");
        let e = ServerConfig::parse(
            "[[services]]\nname = \"a\"\nprimary = [{ address = \"10.0.0.1:80\", weight = 0 }]",
            "f.toml",
        )
        .unwrap_err();
        assert!(
            e.to_string()
                .contains("field `services[0].primary[0].weight`"),
            "{e}"
        );
        let e = ServerConfig::parse("[predictor]\nstep_secs = 0", "f.toml").unwrap_err();
        assert!(e.to_string().contains("field `predictor.step_secs`"), "{e}");
        let e =
            ServerConfig::parse("[predictor]\ncapacities = { a = -1.0 }", "f.toml").unwrap_err();
        assert!(e.to_string().contains("predictor.capacities.a"), "{e}");
        let e = ServerConfig::parse(
            "[[services]]\nname = \"a\"\nprimary = []\nshadows = { endpoints = [], warm = true, max_in_flight = 3 }",
            "f.toml",
        )
        .unwrap_err();
        assert!(
            e.to_string().contains("field `services[0].shadows.warm`"),
            "{e}"
        );
        let e = ServerConfig::parse("grouping = { metadata = 3 }", "f.toml").unwrap_err();
        assert!(e.to_string().contains("grouping"), "{e}");
    }

    #[test]
    fn every_number_is_bounded_at_check_naming_its_field() {
        for (text, field) in [
            (
                "[http]\nmax_connections = 9223372036854775807",
                "http.max_connections",
            ),
            ("[http]\nwrite_timeout_secs = 0", "http.write_timeout_secs"),
            (
                "[http]\nshutdown_grace_secs = 18446744073709551615",
                "http.shutdown_grace_secs",
            ),
            (
                "[ads]\nmax_connections = 9223372036854775807",
                "ads.max_connections",
            ),
            (
                "[ads]\nmax_streams_per_connection = 0",
                "ads.max_streams_per_connection",
            ),
            (
                "[ads]\nmax_connection_idle_secs = 0",
                "ads.max_connection_idle_secs",
            ),
            (
                "[ads]\nmax_connection_idle_secs = 18446744073709551615",
                "ads.max_connection_idle_secs",
            ),
            (
                "[ads]\nmax_streams_per_connection = 1025",
                "ads.max_streams_per_connection",
            ),
            ("[ads]\nwrite_timeout_secs = 0", "ads.write_timeout_secs"),
            (
                "[ads]\nwrite_timeout_secs = 18446744073709551615",
                "ads.write_timeout_secs",
            ),
            (
                "[ads]\nshutdown_grace_secs = 86400",
                "ads.shutdown_grace_secs",
            ),
            (
                "[telemetry]\nmax_skew_ms = 18446744073709551615",
                "telemetry.max_skew_ms",
            ),
            ("[relay]\nmax_bytes = 0", "relay.max_bytes"),
            ("[relay]\nmax_answer_bytes = 10", "relay.max_answer_bytes"),
            (
                "[relay]\nmax_session_bytes = 9223372036854775807",
                "relay.max_session_bytes",
            ),
            ("[relay]\nmax_wait_ms = 40000", "relay.max_wait_ms"),
            (
                "[registry]\nreadiness_ttl_secs = 18446744073709551615",
                "registry.readiness_ttl_secs",
            ),
            (
                "[predictor]\nstep_secs = 9223372036854775807",
                "predictor.step_secs",
            ),
            (
                "[predictor]\nmax_series = 18446744073709551615",
                "predictor.max_series",
            ),
            (
                "[provisioner]\n[provisioner.probe]\ngive_up_extra_secs = 1e300\n[pool]\nprovider = \"static\"",
                "provisioner.probe.give_up_extra_secs",
            ),
        ] {
            let e = ServerConfig::parse(text, "f.toml").unwrap_err();
            assert!(
                e.to_string().contains(&format!("field `{field}`")),
                "{text}: {e}"
            );
        }
    }
}
