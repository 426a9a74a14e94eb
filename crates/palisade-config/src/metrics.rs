//! `[metrics]`: where Prometheus scrapes Palisade. Off by default: nothing is exposed until an
//! operator names a listener or a token.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::{resolve_secret, ConfigError};

/// `[metrics]`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// A listener of its own for `GET /metrics` (plain HTTP), `HOST:PORT`; port 0 picks a free
    /// one. On a loopback address it is open to local scrapers; on any other address it needs
    /// `token` too.
    pub listen: Option<String>,
    /// `env::NAME` or `file::PATH`: a bearer token. When set, `GET /metrics` also answers on the
    /// main port (and on `listen`) to `Authorization: Bearer <token>`; without it the main
    /// port's `/metrics` is 404.
    pub token: Option<String>,
}

impl MetricsConfig {
    /// The separate listener's address, parsed.
    pub fn listen_addr(&self) -> Result<Option<SocketAddr>, ConfigError> {
        self.listen
            .as_deref()
            .map(|l| {
                l.parse().map_err(|_| ConfigError::Invalid {
                    key: "metrics.listen",
                    message: format!("{l:?} is not HOST:PORT with an IP address"),
                })
            })
            .transpose()
    }

    /// The bearer token, with its reference resolved.
    pub fn resolved_token(&self) -> Result<Option<String>, ConfigError> {
        let Some(r) = self.token.as_deref() else {
            return Ok(None);
        };
        let t = resolve_secret("metrics.token", r)?;
        if t.len() < 16 {
            return Err(ConfigError::Invalid {
                key: "metrics.token",
                message: "the token must be at least 16 characters".into(),
            });
        }
        Ok(Some(t))
    }

    /// Refuses a listener on a public address without a token (metrics name models, routes
    /// and tenants' activity).
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Some(addr) = self.listen_addr()? {
            if !addr.ip().is_loopback() && self.token.is_none() {
                return Err(ConfigError::Invalid {
                    key: "metrics.listen",
                    message: "a metrics listener on a non-loopback address needs `metrics.token`"
                        .into(),
                });
            }
        }
        if let Some(r) = self.token.as_deref() {
            if !(r.starts_with("env::") || r.starts_with("file::")) {
                return Err(ConfigError::Invalid {
                    key: "metrics.token",
                    message:
                        "give a reference (`env::NAME` or `file::PATH`), not the secret itself"
                            .into(),
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn off_by_default_and_never_public_without_a_token() {
        let c = MetricsConfig::default();
        assert_eq!(c.listen_addr().ok(), Some(None));
        assert!(c.validate().is_ok());
        let public = MetricsConfig {
            listen: Some("0.0.0.0:9464".into()),
            token: None,
        };
        assert!(public.validate().is_err());
        let local = MetricsConfig {
            listen: Some("127.0.0.1:0".into()),
            token: None,
        };
        assert!(local.validate().is_ok());
        let literal = MetricsConfig {
            listen: None,
            token: Some("a-token-in-the-file".into()),
        };
        assert!(literal.validate().is_err());
        let bad = MetricsConfig {
            listen: Some("localhost:9464".into()),
            token: None,
        };
        assert!(bad.validate().is_err());
    }
}
