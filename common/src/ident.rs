//! SPIFFE identities used in the mesh.
//!
//! | who | SPIFFE ID |
//! |---|---|
//! | global control plane | `spiffe://TD/global` |
//! | zone intermediate CA | `spiffe://TD/zone/ZONE` |
//! | zone control plane | `spiffe://TD/zone/ZONE/cp` |
//! | east-west gateway | `spiffe://TD/zone/ZONE/gateway` |
//! | workload (sidecar) | `spiffe://TD/zone/ZONE/svc/SERVICE` |

use std::fmt;

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId(String);

#[derive(Debug, thiserror::Error)]
#[error("invalid SPIFFE ID {0:?}: expected spiffe://TRUST-DOMAIN/PATH")]
pub struct BadSpiffeId(pub String);

impl SpiffeId {
    pub fn parse(s: &str) -> Result<Self, BadSpiffeId> {
        let rest = s
            .strip_prefix("spiffe://")
            .ok_or_else(|| BadSpiffeId(s.into()))?;
        let (td, _path) = rest.split_once('/').unwrap_or((rest, ""));
        if td.is_empty()
            || !td
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-._".contains(c))
        {
            return Err(BadSpiffeId(s.into()));
        }
        Ok(Self(s.to_string()))
    }
    pub fn global(td: &str) -> Self {
        Self(format!("spiffe://{td}/global"))
    }
    pub fn zone(td: &str, zone: &str) -> Self {
        Self(format!("spiffe://{td}/zone/{zone}"))
    }
    pub fn zone_cp(td: &str, zone: &str) -> Self {
        Self(format!("spiffe://{td}/zone/{zone}/cp"))
    }
    pub fn gateway(td: &str, zone: &str) -> Self {
        Self(format!("spiffe://{td}/zone/{zone}/gateway"))
    }
    pub fn is_gateway(&self) -> bool {
        matches!(self.segments().as_slice(), ["zone", _, "gateway"])
    }
    pub fn workload(td: &str, zone: &str, service: &str) -> Self {
        Self(format!("spiffe://{td}/zone/{zone}/svc/{service}"))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
    pub fn trust_domain(&self) -> &str {
        let rest = &self.0["spiffe://".len()..];
        rest.split('/').next().unwrap_or("")
    }
    fn segments(&self) -> Vec<&str> {
        let rest = &self.0["spiffe://".len()..];
        rest.split('/').skip(1).collect()
    }
    /// The zone named by `/zone/ZONE/...`, if any.
    pub fn zone_name(&self) -> Option<&str> {
        match self.segments().as_slice() {
            ["zone", z, ..] => Some(z),
            _ => None,
        }
    }
    /// The service named by `/zone/ZONE/svc/SERVICE`, if any.
    pub fn service(&self) -> Option<&str> {
        match self.segments().as_slice() {
            ["zone", _, "svc", s] => Some(s),
            _ => None,
        }
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn parts() {
        let id = SpiffeId::workload("tern", "eu-1", "web");
        assert_eq!(id.as_str(), "spiffe://tern/zone/eu-1/svc/web");
        assert_eq!(id.trust_domain(), "tern");
        assert_eq!(id.zone_name(), Some("eu-1"));
        assert_eq!(id.service(), Some("web"));
        assert_eq!(SpiffeId::zone_cp("tern", "z").service(), None);
        assert!(SpiffeId::parse("https://x/y").is_err());
        assert!(SpiffeId::parse("spiffe://UPPER/x").is_err());
        assert!(SpiffeId::parse("spiffe://bench/ns/default/sa/client").is_ok());
    }
}
