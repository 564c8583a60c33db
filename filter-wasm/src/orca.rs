//! ORCA (Open Request Cost Aggregation) load reports carried in the `endpoint-load-metrics`
//! response header, as Envoy's own ORCA support reads them.
//!
//! Two of the three wire forms are supported (the binary protobuf form is not):
//!
//! * `TEXT cpu_utilization=0.3, mem_utilization=0.8, rps_fractional=10, named_metrics.q=2`
//! * `JSON {"cpu_utilization":0.3,"application_utilization":0.5}`
//!
//! Anything else is an [`OrcaError`]; the caller counts it and ignores the header, it never
//! affects the request.

use serde::Deserialize;

/// Name of the ORCA response header.
pub const ORCA_HEADER: &str = "endpoint-load-metrics";

/// The fields of an ORCA report the load score uses.
#[derive(Debug, Clone, Copy, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct OrcaReport {
    /// CPU utilization of the endpoint, 0..=1 per core-normalised capacity.
    pub cpu_utilization: f64,
    /// Memory utilization, 0..=1.
    pub mem_utilization: f64,
    /// Application-defined utilization, 0..=1; preferred over CPU when reported.
    pub application_utilization: f64,
    /// Requests per second the endpoint serves.
    pub rps_fractional: f64,
}

/// Why an ORCA header was rejected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OrcaError {
    /// Neither `TEXT ` nor `JSON ` prefix (BIN is not supported).
    UnknownFormat,
    /// The body did not parse.
    Syntax,
    /// A utilization was negative, not finite or implausibly large.
    OutOfRange,
}

impl OrcaReport {
    /// Parses one `endpoint-load-metrics` header value.
    ///
    /// ```
    /// use shadowmesh_filter::orca::OrcaReport;
    /// let r = OrcaReport::parse("TEXT cpu_utilization=0.25, named_metrics.queue=3").unwrap();
    /// assert_eq!(r.utilization(), 0.25);
    /// assert!(OrcaReport::parse("TEXT cpu_utilization=lots").is_err());
    /// ```
    pub fn parse(value: &str) -> Result<OrcaReport, OrcaError> {
        let value = value.trim();
        let report = if let Some(body) = value.strip_prefix("TEXT ") {
            parse_text(body)?
        } else if let Some(body) = value.strip_prefix("JSON ") {
            // Unknown keys (named_metrics, eps, ...) are allowed and skipped.
            serde_json::from_str::<OrcaReport>(body).map_err(|_| OrcaError::Syntax)?
        } else {
            return Err(OrcaError::UnknownFormat);
        };
        for v in [
            report.cpu_utilization,
            report.mem_utilization,
            report.application_utilization,
            report.rps_fractional,
        ] {
            if !v.is_finite() || v < 0.0 {
                return Err(OrcaError::OutOfRange);
            }
        }
        if report.cpu_utilization > 100.0 || report.application_utilization > 100.0 {
            return Err(OrcaError::OutOfRange);
        }
        Ok(report)
    }

    /// The utilization that feeds the load score: application utilization when the
    /// endpoint reports one, else CPU utilization (the same preference as Envoy's
    /// client-side weighted round robin).
    pub fn utilization(&self) -> f64 {
        if self.application_utilization > 0.0 {
            self.application_utilization
        } else {
            self.cpu_utilization
        }
    }
}

fn parse_text(body: &str) -> Result<OrcaReport, OrcaError> {
    let mut r = OrcaReport::default();
    let mut any = false;
    for pair in body.split(',') {
        let pair = pair.trim();
        if pair.is_empty() {
            continue;
        }
        let (k, v) = pair.split_once('=').ok_or(OrcaError::Syntax)?;
        let v: f64 = v.trim().parse().map_err(|_| OrcaError::Syntax)?;
        any = true;
        match k.trim() {
            "cpu_utilization" => r.cpu_utilization = v,
            "mem_utilization" => r.mem_utilization = v,
            "application_utilization" => r.application_utilization = v,
            "rps_fractional" => r.rps_fractional = v,
            // named_metrics.*, request_cost.*, utilization.*, eps, qps: valid, unused here.
            _ => {}
        }
    }
    if any { Ok(r) } else { Err(OrcaError::Syntax) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_and_json_forms() {
        let t =
            OrcaReport::parse("TEXT cpu_utilization=0.3, mem_utilization=0.8, rps_fractional=10")
                .unwrap();
        assert_eq!(
            (t.cpu_utilization, t.mem_utilization, t.rps_fractional),
            (0.3, 0.8, 10.0)
        );
        let j = OrcaReport::parse(
            r#"JSON {"cpu_utilization":0.2,"application_utilization":0.7,"named_metrics":{"x":1}}"#,
        )
        .unwrap();
        assert_eq!(j.utilization(), 0.7);
        assert_eq!(j.cpu_utilization, 0.2);
    }

    #[test]
    fn malformed_values_are_rejected() {
        assert_eq!(
            OrcaReport::parse("cpu_utilization=0.3"),
            Err(OrcaError::UnknownFormat)
        );
        assert_eq!(OrcaReport::parse("BIN AAAA"), Err(OrcaError::UnknownFormat));
        assert_eq!(
            OrcaReport::parse("TEXT cpu_utilization"),
            Err(OrcaError::Syntax)
        );
        assert_eq!(OrcaReport::parse("TEXT ,"), Err(OrcaError::Syntax));
        assert_eq!(
            OrcaReport::parse("TEXT cpu_utilization=-1"),
            Err(OrcaError::OutOfRange)
        );
        assert_eq!(
            OrcaReport::parse("TEXT cpu_utilization=NaN"),
            Err(OrcaError::OutOfRange)
        );
        assert_eq!(OrcaReport::parse("JSON {oops"), Err(OrcaError::Syntax));
        assert_eq!(
            OrcaReport::parse(r#"JSON {"cpu_utilization":"high"}"#),
            Err(OrcaError::Syntax)
        );
    }
}
