//! The `ops:` section of the agent's YAML config: the HTTP endpoint for metrics and probes.
//!
//! ```yaml
//! ops:
//!   enabled: true
//!   listen: 0.0.0.0:9464
//! ```

use std::net::{Ipv4Addr, SocketAddr};

use serde::Deserialize;

/// Where `/metrics`, `/healthz` and `/readyz` are served.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OpsConfig {
    /// Whether to serve the endpoint at all.
    pub enabled: bool,
    /// Address and port to listen on.
    pub listen: SocketAddr,
}

/// On: the kubelet's probes and Prometheus both need the endpoint.
const fn default_enabled() -> bool {
    true
}

/// All interfaces, because Prometheus scrapes and the kubelet probes the pod IP, not loopback.
/// Port 9464 rather than 9090 (Prometheus itself) or 9100 (node-exporter, another DaemonSet that
/// often shares the node's network), and outside Istio's 15000-15090 range.
fn default_listen() -> SocketAddr {
    SocketAddr::from((Ipv4Addr::UNSPECIFIED, 9464))
}

impl Default for OpsConfig {
    fn default() -> Self {
        OpsConfig {
            enabled: default_enabled(),
            listen: default_listen(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> Result<OpsConfig, String> {
        serde_saphyr::from_str(yaml).map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_and_overrides() {
        let sample: String = include_str!("config.rs")
            .lines()
            .skip_while(|l| !l.starts_with("//! ```yaml"))
            .skip(2)
            .take_while(|l| !l.starts_with("//! ```"))
            .map(|l| l.trim_start_matches("//!   ").to_owned() + "\n")
            .collect();
        assert_eq!(parse(&sample).unwrap(), OpsConfig::default());
        assert_eq!(parse("{}").unwrap(), OpsConfig::default());
        let c = parse("listen: 127.0.0.1:9000\n").unwrap();
        assert_eq!(c.listen, "127.0.0.1:9000".parse().unwrap());
        assert!(c.enabled);
        assert!(!parse("enabled: false\n").unwrap().enabled);
    }

    #[test]
    fn mistakes_are_clear_errors() {
        let e = parse("listen: localhost\n").unwrap_err();
        assert!(e.contains("localhost"), "{e}");
        let e = parse("port: 9464\n").unwrap_err();
        assert!(e.contains("port"), "{e}");
    }
}
