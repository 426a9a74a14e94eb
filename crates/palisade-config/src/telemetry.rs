//! `[telemetry]`: OpenTelemetry trace export. Off until `otlp_endpoint` names a collector;
//! the binary exports only when built with its `otlp` cargo feature (the default).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{resolve_secret, ConfigError};

/// `[telemetry]`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// Where spans go: an OTLP/HTTP (protobuf) traces URL, e.g.
    /// `http://otel-collector:4318/v1/traces`; a URL without a path gets `/v1/traces`.
    pub otlp_endpoint: Option<String>,
    /// Extra request headers for the collector (an API key, a tenant header). Values are
    /// `env::NAME` or `file::PATH` references, or plain text for what is no secret.
    pub otlp_headers: BTreeMap<String, String>,
    /// The share of new traces kept, 0.0..=1.0; a request that arrives with a sampled
    /// `traceparent` follows its caller's decision.
    pub sample_ratio: f64,
    /// `service.name` of the exported spans.
    pub service_name: String,
    /// Milliseconds between two exports of the batch.
    pub export_interval_ms: u64,
    /// Seconds an export may take.
    pub timeout_secs: u64,
    /// Spans waiting for export at most; more are dropped (counted, never blocking a request).
    pub queue_size: usize,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            otlp_endpoint: None,
            otlp_headers: BTreeMap::new(),
            sample_ratio: 1.0,
            service_name: "palisade".into(),
            export_interval_ms: 5000,
            timeout_secs: 10,
            queue_size: 2048,
        }
    }
}

fn invalid(key: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        message: message.into(),
    }
}

impl TelemetryConfig {
    /// The traces URL: the endpoint as given when it has a path, else with `/v1/traces`.
    pub fn traces_url(&self) -> Option<String> {
        let e = self.otlp_endpoint.as_deref()?.trim_end_matches('/');
        let after_scheme = e.split_once("://").map_or(e, |(_, rest)| rest);
        Some(if after_scheme.contains('/') {
            e.to_string()
        } else {
            format!("{e}/v1/traces")
        })
    }

    /// The collector's headers with their references resolved.
    pub fn resolved_headers(&self) -> Result<Vec<(String, String)>, ConfigError> {
        self.otlp_headers
            .iter()
            .map(|(k, v)| {
                let value = if v.starts_with("env::") || v.starts_with("file::") {
                    resolve_secret("telemetry.otlp_headers", v)?
                } else {
                    v.clone()
                };
                Ok((k.to_ascii_lowercase(), value))
            })
            .collect()
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Some(e) = self.otlp_endpoint.as_deref() {
            let ok_scheme = e.starts_with("https://") || e.starts_with("http://");
            let host = e
                .split_once("://")
                .map(|(_, rest)| rest.split(['/', '?', '#']).next().unwrap_or(""))
                .unwrap_or("");
            if !ok_scheme || host.is_empty() || e.contains(['?', '#', ' ']) {
                return Err(invalid(
                    "telemetry.otlp_endpoint",
                    "write an http:// or https:// URL, e.g. http://otel-collector:4318/v1/traces",
                ));
            }
            if host.contains('@') {
                return Err(invalid(
                    "telemetry.otlp_endpoint",
                    "put credentials in `telemetry.otlp_headers` (by reference), not in the URL",
                ));
            }
        } else if !self.otlp_headers.is_empty() {
            return Err(invalid(
                "telemetry.otlp_headers",
                "headers need `telemetry.otlp_endpoint`",
            ));
        }
        for name in self.otlp_headers.keys() {
            let token = !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
            if !token {
                return Err(invalid(
                    "telemetry.otlp_headers",
                    format!(
                        "{:?} is not a header name",
                        name.chars().take(40).collect::<String>()
                    ),
                ));
            }
            let lower = name.to_ascii_lowercase();
            let looks_secret = ["authorization", "api-key", "x-api-key", "token"]
                .iter()
                .any(|s| lower.contains(s));
            let value = &self.otlp_headers[name];
            if looks_secret && !(value.starts_with("env::") || value.starts_with("file::")) {
                return Err(invalid(
                    "telemetry.otlp_headers",
                    format!(
                        "{lower}: give a reference (`env::NAME` or `file::PATH`), not the secret itself"
                    ),
                ));
            }
        }
        if !(0.0..=1.0).contains(&self.sample_ratio) {
            return Err(invalid("telemetry.sample_ratio", "must be in 0.0..=1.0"));
        }
        if self.service_name.trim().is_empty() || self.service_name.len() > 100 {
            return Err(invalid("telemetry.service_name", "1 to 100 characters"));
        }
        if !(50..=60_000).contains(&self.export_interval_ms) {
            return Err(invalid(
                "telemetry.export_interval_ms",
                "must be in 50..=60000",
            ));
        }
        if !(1..=120).contains(&self.timeout_secs) {
            return Err(invalid("telemetry.timeout_secs", "must be in 1..=120"));
        }
        if !(64..=1_000_000).contains(&self.queue_size) {
            return Err(invalid("telemetry.queue_size", "must be in 64..=1000000"));
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use super::*;

    fn with(endpoint: &str) -> TelemetryConfig {
        TelemetryConfig {
            otlp_endpoint: Some(endpoint.into()),
            ..TelemetryConfig::default()
        }
    }

    #[test]
    fn the_traces_url_gets_its_path_when_it_has_none() {
        assert_eq!(
            with("http://collector:4318").traces_url().as_deref(),
            Some("http://collector:4318/v1/traces")
        );
        assert_eq!(
            with("https://otel.example/").traces_url().as_deref(),
            Some("https://otel.example/v1/traces")
        );
        assert_eq!(
            with("https://otel.example/tenant-a/v1/traces")
                .traces_url()
                .as_deref(),
            Some("https://otel.example/tenant-a/v1/traces")
        );
        assert_eq!(TelemetryConfig::default().traces_url(), None);
    }

    #[test]
    fn bad_settings_are_refused_by_name() {
        let key = |c: &TelemetryConfig| match c.validate() {
            Err(ConfigError::Invalid { key, .. }) => key,
            other => panic!("{other:?}"),
        };
        assert!(TelemetryConfig::default().validate().is_ok());
        assert!(with("http://127.0.0.1:4318").validate().is_ok());
        for bad in [
            "collector:4318",
            "ftp://x",
            "http://",
            "http://u:p@h/v1/traces",
        ] {
            assert_eq!(key(&with(bad)), "telemetry.otlp_endpoint", "{bad}");
        }
        let mut c = with("http://h");
        c.otlp_headers
            .insert("Authorization".into(), "Bearer abc123".into());
        assert_eq!(key(&c), "telemetry.otlp_headers");
        c.otlp_headers
            .insert("Authorization".into(), "env::OTLP_AUTH".into());
        assert!(c.validate().is_ok());
        c.otlp_headers.insert("bad header".into(), "x".into());
        assert_eq!(key(&c), "telemetry.otlp_headers");
        let mut c = with("http://h");
        c.sample_ratio = 1.5;
        assert_eq!(key(&c), "telemetry.sample_ratio");
        let mut c = TelemetryConfig::default();
        c.otlp_headers.insert("x-scope".into(), "a".into());
        assert_eq!(key(&c), "telemetry.otlp_headers");
    }
}
