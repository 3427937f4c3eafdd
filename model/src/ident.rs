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

/// SPIFFE IDs longer than this are refused (the SPIFFE spec's limit).
pub const MAX_SPIFFE_ID_LEN: usize = 2048;

impl SpiffeId {
    /// Parse strictly, as the SPIFFE spec defines an ID: a lowercase trust
    /// domain, then path segments of letters, digits, `-`, `.` and `_`
    /// that are neither empty, `.` nor `..`; no query, fragment, port or
    /// user info. A loose parse would let `/zone/a/../b` look like zone `a`.
    pub fn parse(s: &str) -> Result<Self, BadSpiffeId> {
        let bad = || BadSpiffeId(s.chars().take(128).collect());
        if s.len() > MAX_SPIFFE_ID_LEN {
            return Err(bad());
        }
        let rest = s.strip_prefix("spiffe://").ok_or_else(bad)?;
        let (td, path) = match rest.split_once('/') {
            Some((td, path)) => (td, Some(path)),
            None => (rest, None),
        };
        if td.is_empty()
            || !td
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-._".contains(c))
        {
            return Err(bad());
        }
        if let Some(path) = path {
            for seg in path.split('/') {
                if seg.is_empty()
                    || seg == "."
                    || seg == ".."
                    || !seg
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "-._".contains(c))
                {
                    return Err(bad());
                }
            }
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
    /// For a zone CA's own ID (`spiffe://TD/zone/ZONE`, nothing after), the zone.
    pub fn zone_ca_of(&self) -> Option<&str> {
        match self.segments().as_slice() {
            ["zone", z] => Some(z),
            _ => None,
        }
    }
    /// True for identities strictly below `spiffe://TD/zone/ZONE/`: what
    /// zone ZONE's CA may issue.
    pub fn is_inside_zone(&self, zone: &str) -> bool {
        matches!(self.segments().as_slice(), ["zone", z, _, ..] if *z == zone)
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

    #[test]
    fn parsing_is_strict() {
        for bad in [
            "spiffe://",
            "spiffe:///zone/a",
            "spiffe://tern/",
            "spiffe://tern//global",
            "spiffe://tern/zone/a/../b/svc/x",
            "spiffe://tern/zone/./svc/x",
            "spiffe://tern/zone/a/svc/x?y=1",
            "spiffe://tern/zone/a/svc/x#f",
            "spiffe://tern:443/global",
            "spiffe://user@tern/global",
            "spiffe://tern/zone/a/svc/x y",
            "spiffe://tern/zone/a/svc/%2e%2e",
            "SPIFFE://tern/global",
        ] {
            assert!(SpiffeId::parse(bad).is_err(), "{bad} must be refused");
        }
        let long = format!("spiffe://tern/{}", "a".repeat(MAX_SPIFFE_ID_LEN));
        assert!(SpiffeId::parse(&long).is_err());
        assert!(SpiffeId::parse("spiffe://tern").is_ok());
        assert!(SpiffeId::parse("spiffe://tern/zone/eu-1/svc/Web_v2.x").is_ok());
    }

    #[test]
    fn kinds_of_identity() {
        let td = "tern";
        assert!(SpiffeId::gateway(td, "z").is_gateway());
        assert!(!SpiffeId::workload(td, "z", "gateway").is_gateway());
        assert_eq!(SpiffeId::zone(td, "z").zone_ca_of(), Some("z"));
        assert_eq!(SpiffeId::zone_cp(td, "z").zone_ca_of(), None);
        assert_eq!(SpiffeId::global(td).zone_name(), None);
        assert!(SpiffeId::workload(td, "z", "a").is_inside_zone("z"));
        assert!(!SpiffeId::workload(td, "z", "a").is_inside_zone("y"));
        assert!(
            !SpiffeId::zone(td, "z").is_inside_zone("z"),
            "the CA's own ID is not inside"
        );
    }
}
