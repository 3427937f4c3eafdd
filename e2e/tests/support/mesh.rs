//! A two-zone mesh for policy tests: a global, zones z1 (region eu, zone-cp
//! on .2, gateways .21 and .22) and z2 (region us, zone-cp .3, gateways .31
//! and .32), each process stopped when the mesh drops.

use std::time::Duration;

use super::*;

pub const T: Duration = Duration::from_secs(30);

pub struct Mesh {
    pub s: Scratch,
    pub net: Net,
    pub g: Global,
    pub zones: Vec<ZoneCp>,
    pub gateways: Vec<GatewayProc>,
}

impl Mesh {
    /// `policy_dir_z1`: zone-local policies for z1.
    pub fn start(test: &str, net: Net, policy_dir_z1: Option<&std::path::Path>) -> Mesh {
        let s = Scratch::new(test);
        let g = Global::start(&s.0, net);
        let mut zones = Vec::new();
        for (i, (z, region)) in [("z1", "eu"), ("z2", "us")].iter().enumerate() {
            let t = g.zone_token(z);
            let dir = policy_dir_z1
                .filter(|_| i == 0)
                .map(|d| d.display().to_string());
            let extra: Vec<&str> = match &dir {
                Some(d) => vec!["--policy-dir", d],
                None => vec![],
            };
            zones.push(ZoneCp::start_with(
                &s.0,
                net,
                2 + i as u8,
                z,
                region,
                Some(&t),
                &extra,
            ));
        }
        let mut gateways = Vec::new();
        for (i, hosts) in [[21u8, 22], [31, 32]].iter().enumerate() {
            let z = ["z1", "z2"][i];
            let t = g.token_file(
                &format!("{z}-gw.token"),
                &["generate", "gateway-token", "--zone", z],
            );
            for h in hosts {
                gateways.push(GatewayProc::start(&s.0, net, *h, &zones[i], &t, &[]));
            }
        }
        Mesh {
            s,
            net,
            g,
            zones,
            gateways,
        }
    }

    /// `db`, an opaque-TCP echo service, on `host` in z1: its app and
    /// sidecar.
    pub fn tcp_echo_db(&self, host: u8) -> (Proc, Proc) {
        let t = self.g.dp_token("z1", "db");
        let app = spawn(
            &self.s.0,
            &format!("app-db-{host}"),
            "demo-app",
            &[
                "--listen".into(),
                format!("{}:8080", self.net.ip(host)),
                "--tcp-echo".into(),
            ],
        );
        let instance = format!("db-{host}");
        let sc = start_sidecar(
            &self.s.0,
            self.net,
            host,
            "db",
            self.zone("z1"),
            &t,
            &["--protocol", "tcp", "--instance", &instance],
        );
        (app, sc)
    }

    /// `api` (.12) and `db` (.13, TCP echo) in z1; `web` (.40) and `batch`
    /// (.41) in z2, each with an outbound port for db on :16000, once both
    /// see api and db through z2's two gateways.
    pub fn api_db_and_callers(&self) -> (Workload, (Proc, Proc), Workload, Workload) {
        let net = self.net;
        let api = self.workload("z1", 12, "api", &[]);
        let db = self.tcp_echo_db(13);
        let tcp_port = |host: u8| format!("tcp:db={}:16000", net.ip(host));
        let web = self.workload("z2", 40, "web", &["--outbound-port", &tcp_port(40)]);
        let batch = self.workload("z2", 41, "batch", &["--outbound-port", &tcp_port(41)]);
        for w in [&web, &batch] {
            wait_for("api and db reachable from z2", T, || {
                let ok = w.endpoints("api").len() == 2 && w.endpoints("db").len() == 2;
                ok.then_some(())
            });
        }
        (api, db, web, batch)
    }

    pub fn zone(&self, z: &str) -> &ZoneCp {
        &self.zones[if z == "z1" { 0 } else { 1 }]
    }

    /// A demo app and its sidecar for `service` in `zone` on `host`.
    pub fn workload(&self, zone: &str, host: u8, service: &str, flags: &[&str]) -> Workload {
        self.workload_full(zone, host, service, &[], flags)
    }

    pub fn workload_full(
        &self,
        zone: &str,
        host: u8,
        service: &str,
        app: &[&str],
        flags: &[&str],
    ) -> Workload {
        let t = self.g.dp_token(zone, service);
        let instance = format!("{service}-{host}");
        let mut f = vec!["--instance", instance.as_str()];
        f.extend_from_slice(flags);
        Workload::start_full(
            &self.s.0,
            self.net,
            host,
            service,
            self.zone(zone),
            &t,
            app,
            &f,
        )
    }
}

/// Wait until a sidecar's config shows `what` (a JSON pointer into its
/// /config_dump) satisfying `ok`: the policy reached it.
pub fn wait_dump(w: &Workload, what: &str, ok: impl Fn(&serde_json::Value) -> bool) {
    wait_for(&format!("{what} in the sidecar's config"), T, || {
        let d = w.dump();
        d.pointer(what).filter(|v| ok(v)).map(|_| ())
    });
}

/// Traffic until dropped: `web` calls each of `services` every 20 ms, and
/// opens an opaque TCP connection to `tcp` (an echo) every 50 ms.
pub struct Traffic {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Traffic {
    pub fn start(
        web: &Workload,
        services: &[&'static str],
        tcp: Option<std::net::SocketAddr>,
    ) -> Traffic {
        use std::io::{Read, Write};
        use std::sync::atomic::Ordering;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut threads = Vec::new();
        for service in services.iter().copied() {
            let (stop, at) = (stop.clone(), web.outbound());
            threads.push(std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let _ = http(at, "GET", service, "/r", &[]);
                    std::thread::sleep(Duration::from_millis(20));
                }
            }));
        }
        if let Some(tcp) = tcp {
            let s = stop.clone();
            threads.push(std::thread::spawn(move || {
                while !s.load(Ordering::Relaxed) {
                    if let Ok(mut c) = std::net::TcpStream::connect(tcp) {
                        let _ = c.set_read_timeout(Some(Duration::from_secs(5)));
                        let _ = c.write_all(b"ping!");
                        let mut b = [0u8; 5];
                        let _ = c.read_exact(&mut b);
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
            }));
        }
        Traffic { stop, threads }
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}
