//! The sidecar's admin surface: its metrics registry, when it is ready
//! (a certificate, and config unless standalone), and `/config_dump`.

use std::sync::Arc;

use common::telemetry::Admin;
use prometheus_client::registry::Registry;
use tokio::sync::watch;

use crate::cp_client::CpStatus;
use crate::state::Shared;
use crate::traffic;

pub(crate) fn admin(
    mut reg: Registry,
    shared: &Arc<Shared>,
    status: watch::Receiver<CpStatus>,
    standalone: bool,
) -> Admin {
    let sh_ready = shared.clone();
    reg.register_collector(Box::new(traffic::Collector(shared.traffic.clone())));
    reg.register(
        "access_log_lines",
        "Access log lines written",
        shared.access_logs.written.clone(),
    );
    reg.register(
        "spans_exported",
        "Spans sent to the OTLP collector",
        shared.tracer.exported.clone(),
    );
    reg.register(
        "spans_dropped",
        "Spans dropped: the exporter fell behind or the collector did not take them",
        shared.tracer.dropped.clone(),
    );
    reg.register(
        "access_log_dropped",
        "Access log lines dropped because the writer fell behind",
        shared.access_logs.dropped.clone(),
    );
    let sh_dump = shared.clone();
    let st_ready = status.clone();
    let st_dump = status;
    Admin::new(
        reg,
        move || {
            if sh_ready.tls.load().is_none() {
                return Err("no workload certificate yet".into());
            }
            if !standalone && !st_ready.borrow().has_config {
                return Err("no config from the control plane yet".into());
            }
            Ok(())
        },
        move || {
            let tls = sh_dump.tls.load();
            serde_json::json!({
                "identity": tls.as_ref().map(|t| t.ident.id.to_string()),
                "certificateNotBefore": tls.as_ref().map(|t| humantime::format_rfc3339_seconds(t.ident.not_before).to_string()),
                "certificateNotAfter": tls.as_ref().map(|t| humantime::format_rfc3339_seconds(t.ident.not_after).to_string()),
                "certificateIssuer": tls.as_ref().and_then(|t| t.ident.chain.get(1)).map(|c| common::pki::fingerprint(c)),
                "trust": tls.as_ref().map(|t| serde_json::json!({
                    "roots": t.policy.root_fingerprints(),
                    "zoneCas": match t.policy.zones() {
                        common::trust::ZoneCas::Any => serde_json::json!("any"),
                        common::trust::ZoneCas::Only(m) => serde_json::to_value(m).unwrap_or_default(),
                    },
                })),
                "configVersion": sh_dump.clusters.load().version,
                "clusters": sh_dump.clusters.load().dump(),
                "inbound": sh_dump.access.load().dump(),
                "faults": sh_dump.faults.load().dump(),
                "rateLimits": sh_dump.limits.load().dump(),
                "accessLog": sh_dump.access_logs.dump(),
                "trace": sh_dump.tracer.dump(),
                "routes": sh_dump.routes.load().iter().map(|(k, r)| (k.clone(), r.dump())).collect::<serde_json::Map<_, _>>(),
                "controlPlane": if standalone { serde_json::Value::Null } else { serde_json::to_value(&*st_dump.borrow()).unwrap_or_default() },
            })
        },
    )
}
