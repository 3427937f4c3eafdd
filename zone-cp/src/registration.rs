//! What a proxy registers with, checked before anything is recorded:
//! names, addresses and the size of what it asks to publish or receive.

pub use model::text::clip;
use proto::v1 as pb;

/// Labels a proxy may register.
pub const MAX_LABELS: usize = 32;
/// The longest version or address a proxy may register (its `version`, a
/// sidecar's unused `publicAddress`), in bytes.
pub const MAX_FIELD_BYTES: usize = 256;
/// A proxy's NACK reason is kept and logged cut to this many bytes.
pub const MAX_REASON_BYTES: usize = 1024;
/// How much of a refused value an error repeats.
const ECHO_BYTES: usize = 64;

/// Check a registration before anything is recorded: names, addresses and
/// the size of what it asks to publish.
pub fn validate(r: &pb::Registration) -> Result<(), String> {
    model::resource::check_name("registration.service", &r.service).map_err(|e| e.to_string())?;
    r.address.parse::<std::net::IpAddr>().map_err(|_| {
        format!(
            "registration.address: {:?} is not an IP address",
            clip(&r.address, ECHO_BYTES)
        )
    })?;
    if r.inbound_port == 0 || r.inbound_port > 65535 {
        return Err(format!(
            "registration.inboundPort: {} is not a port",
            r.inbound_port
        ));
    }
    if !["http", "http2", "grpc", "tcp"].contains(&r.protocol.as_str()) {
        return Err(format!(
            "registration.protocol: {:?} is not one of http, http2, grpc, tcp",
            clip(&r.protocol, ECHO_BYTES)
        ));
    }
    match r.kind.as_str() {
        // Not used for a sidecar, but kept with its registration.
        "" | "sidecar" if r.public_address.len() > MAX_FIELD_BYTES => {
            return Err(format!(
                "registration.publicAddress: {} bytes; at most {MAX_FIELD_BYTES} (a sidecar \
                 needs none)",
                r.public_address.len()
            ))
        }
        "" | "sidecar" => {}
        "gateway" => {
            r.public_address
                .parse::<std::net::SocketAddr>()
                .map_err(|_| {
                    format!(
                        "registration.publicAddress: {:?} is not IP:port",
                        clip(&r.public_address, ECHO_BYTES)
                    )
                })?;
        }
        other => {
            return Err(format!(
                "registration.kind: {:?} is not sidecar or gateway",
                clip(other, ECHO_BYTES)
            ))
        }
    }
    if r.version.len() > MAX_FIELD_BYTES {
        return Err(format!(
            "registration.version: {} bytes; at most {MAX_FIELD_BYTES}",
            r.version.len()
        ));
    }
    let word = |s: &str, extra: &str| {
        s.chars()
            .all(|c| c.is_ascii_alphanumeric() || extra.contains(c))
    };
    let i = &r.instance;
    if i.is_empty()
        || i.len() > 253
        || !word(i, "-._")
        || !i.starts_with(|c: char| c.is_ascii_alphanumeric())
        || !i.ends_with(|c: char| c.is_ascii_alphanumeric())
    {
        return Err(format!(
            "registration.instance: {:?} must be 1-253 letters, digits, '-', '.' or '_', \
             starting and ending with a letter or digit",
            i.chars().take(64).collect::<String>()
        ));
    }
    if r.instance_uid.len() > 64 || !word(&r.instance_uid, "") {
        return Err("registration.instanceUid: at most 64 letters and digits".into());
    }
    if r.labels.len() > MAX_LABELS {
        return Err(format!(
            "registration.labels: {} labels; at most {MAX_LABELS}",
            r.labels.len()
        ));
    }
    for (k, v) in &r.labels {
        if k.is_empty() || k.len() > 128 || !word(k, "-._/") || v.len() > 63 || !word(v, "-._") {
            return Err(format!(
                "registration.labels: {:?}={:?}: keys are 1-128 characters (letters, digits, \
                 '-', '.', '_', '/'), values at most 63 (letters, digits, '-', '.', '_')",
                k.chars().take(64).collect::<String>(),
                v.chars().take(64).collect::<String>()
            ));
        }
    }
    if !r.region.is_empty() {
        model::resource::check_name("registration.region", &r.region).map_err(|e| e.to_string())?;
    }
    if r.reachable_services.len() > MAX_REACHABLE {
        return Err(format!(
            "registration.reachableServices: {} services; at most {MAX_REACHABLE} (leave it \
             empty to reach every service)",
            r.reachable_services.len()
        ));
    }
    for s in &r.reachable_services {
        model::resource::check_name("registration.reachableServices", s)
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Most services a proxy may declare it calls.
pub const MAX_REACHABLE: usize = 1000;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registrations_are_bounded_and_well_formed() {
        let good = pb::Registration {
            service: "api".into(),
            address: "10.0.0.1".into(),
            inbound_port: 15006,
            protocol: "http".into(),
            instance: "api-10.0.0.1-15006".into(),
            instance_uid: "0123abcd".into(),
            ..Default::default()
        };
        assert!(validate(&good).is_ok());
        let bad = |f: &dyn Fn(&mut pb::Registration)| {
            let mut r = good.clone();
            f(&mut r);
            validate(&r).unwrap_err()
        };
        assert!(bad(&|r| r.instance = "x y".into()).contains("registration.instance"));
        assert!(bad(&|r| r.instance = "-x".into()).contains("registration.instance"));
        assert!(bad(&|r| r.instance = "a".repeat(254)).contains("registration.instance"));
        assert!(bad(&|r| r.instance_uid = "x".repeat(65)).contains("instanceUid"));
        assert!(
            bad(&|r| { r.labels = (0..33).map(|i| (format!("k{i}"), "v".into())).collect() })
                .contains("at most 32")
        );
        assert!(
            bad(&|r| { r.labels = [("k".to_string(), "v".repeat(64))].into_iter().collect() })
                .contains("registration.labels")
        );
        assert!(
            bad(&|r| { r.labels = [("k\n".to_string(), "v".into())].into_iter().collect() })
                .contains("registration.labels")
        );
        assert!(bad(&|r| r.service = "Api".into()).contains("registration.service"));
        assert!(bad(&|r| r.address = "example.com".into()).contains("registration.address"));
        let mut declared = good.clone();
        declared.reachable_services = vec!["db".into(), "billing".into()];
        assert!(validate(&declared).is_ok());
        assert!(
            bad(&|r| r.reachable_services = vec!["db".into(), "Bad Name".into()])
                .contains("registration.reachableServices")
        );
        assert!(bad(&|r| {
            r.reachable_services = (0..=MAX_REACHABLE).map(|i| format!("s{i}")).collect()
        })
        .contains("leave it empty"));
    }

    /// A proxy's version and a sidecar's public address are kept with its
    /// registration (on disk, and in `inspect dataplanes`): 1 MiB of either
    /// is refused, naming the field and the limit, and the error does not
    /// repeat it. At the limit both are accepted.
    #[test]
    fn a_huge_version_or_sidecar_public_address_is_refused() {
        let good = pb::Registration {
            service: "api".into(),
            address: "10.0.0.1".into(),
            inbound_port: 15006,
            protocol: "http".into(),
            instance: "api-1".into(),
            version: "v".repeat(MAX_FIELD_BYTES),
            public_address: "a".repeat(MAX_FIELD_BYTES),
            ..Default::default()
        };
        assert!(validate(&good).is_ok());
        let mib = "x".repeat(1 << 20);
        let e = validate(&pb::Registration {
            version: mib.clone(),
            ..good.clone()
        })
        .unwrap_err();
        assert!(
            e.contains("registration.version") && e.contains("at most 256"),
            "{e}"
        );
        let e = validate(&pb::Registration {
            public_address: mib.clone(),
            ..good.clone()
        })
        .unwrap_err();
        assert!(
            e.contains("registration.publicAddress") && e.len() < 200,
            "{e}"
        );
        // Refused values are repeated in part only.
        for r in [
            pb::Registration {
                kind: mib.clone(),
                ..good.clone()
            },
            pb::Registration {
                protocol: mib.clone(),
                ..good.clone()
            },
            pb::Registration {
                address: mib.clone(),
                ..good.clone()
            },
            pb::Registration {
                service: mib.clone(),
                ..good.clone()
            },
        ] {
            let e = validate(&r).unwrap_err();
            assert!(e.len() < 300, "{} bytes: {}", e.len(), clip(&e, 300));
        }
    }
}
