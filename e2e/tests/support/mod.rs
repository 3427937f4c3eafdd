//! End-to-end harness: real binaries, each test on its own loopback subnet
//! (127.0.N.x), processes killed when their guard drops (also on panic),
//! and waits on conditions, never on fixed sleeps. Every wait's limit is
//! multiplied by one patience setting, `TERN_E2E_PATIENCE` (default 1; raise
//! it on a slow machine).
#![allow(dead_code)]

pub mod mesh;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Directory holding the workspace binaries, built once per test process.
/// `TERN_E2E_BIN_DIR` points the tests at binaries built elsewhere (another
/// profile, or an earlier version) instead.
pub fn bin_dir() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        if let Some(d) = std::env::var_os("TERN_E2E_BIN_DIR") {
            return PathBuf::from(d);
        }
        let exe = std::env::current_exe().unwrap();
        // target/<profile>/deps/<test> -> target/<profile>
        let dir = exe.parent().unwrap().parent().unwrap().to_path_buf();
        let profile_release = dir.file_name().is_some_and(|n| n == "release");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "--quiet", "--bins", "--workspace"]);
        if profile_release {
            cmd.arg("--release");
        }
        let st = cmd
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .expect("run cargo build");
        assert!(st.success(), "cargo build --bins failed");
        dir
    })
    .clone()
}

/// The patience factor every wait limit is multiplied by.
pub fn patience() -> f64 {
    static P: OnceLock<f64> = OnceLock::new();
    *P.get_or_init(|| {
        std::env::var("TERN_E2E_PATIENCE")
            .ok()
            .and_then(|v| v.parse::<f64>().ok())
            .filter(|p| *p >= 1.0)
            .unwrap_or(1.0)
    })
}

/// A wait limit scaled by the patience setting.
pub fn patient(d: Duration) -> Duration {
    d.mul_f64(patience())
}

/// A workspace binary by name, or a program given by its path.
pub fn bin(name: &str) -> PathBuf {
    if name.contains('/') {
        PathBuf::from(name)
    } else {
        bin_dir().join(name)
    }
}

/// The pinned third-party Python packages the protocol tests run.
const PY_PACKAGES: &[&str] = &["grpcio==1.85.3", "websockets==17.4"];

/// A Python interpreter with the packages of `PY_PACKAGES`: a virtualenv
/// under the target folder, created (from PyPI) on first use.
/// `TERN_E2E_PYTHON` names an interpreter that already has them.
pub fn python() -> PathBuf {
    static PY: OnceLock<PathBuf> = OnceLock::new();
    PY.get_or_init(|| {
        if let Some(p) = std::env::var_os("TERN_E2E_PYTHON") {
            return PathBuf::from(p);
        }
        let venv = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
            "py-{}",
            PY_PACKAGES.join("-").replace(['=', '.'], "")
        ));
        let py = venv.join("bin/python");
        if py.exists() {
            return py;
        }
        // Built aside, then renamed: a run cut short leaves no half-made venv.
        let tmp = venv.with_extension(format!("tmp{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        let ok = |c: &mut Command, what: &str| {
            let o = c.output().unwrap_or_else(|e| {
                panic!("{what}: {e}; the protocol tests need python3 with venv and pip (Debian: apt-get install python3-venv)")
            });
            assert!(
                o.status.success(),
                "{what} failed; the protocol tests need python3 with venv and pip (Debian: apt-get install python3-venv) and access to PyPI:\n{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            );
        };
        ok(
            Command::new("python3").args(["-m", "venv"]).arg(&tmp),
            "python3 -m venv",
        );
        ok(
            Command::new(tmp.join("bin/python"))
                .args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check"])
                .args(PY_PACKAGES),
            "pip install",
        );
        if std::fs::rename(&tmp, &venv).is_err() {
            // Another test process made it first.
            let _ = std::fs::remove_dir_all(&tmp);
        }
        py
    })
    .clone()
}

/// The test scripts in `e2e/py`.
pub fn py_script(name: &str) -> String {
    format!("{}/py/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// A child process that is killed (SIGKILL) and reaped when dropped.
pub struct Proc {
    pub name: String,
    child: Option<Child>,
    pub log: PathBuf,
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }
    /// Crash it: SIGKILL, no cleanup.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
    /// Ask it to stop (SIGTERM) and wait for it to exit.
    pub fn terminate(&mut self, timeout: Duration) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(c.id().to_string())
                .status();
            let deadline = Instant::now() + patient(timeout);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
    /// Wait for it to exit on its own; returns its exit code.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let c = self.child.as_mut()?;
        let deadline = Instant::now() + patient(timeout);
        while Instant::now() < deadline {
            if let Ok(Some(st)) = c.try_wait() {
                self.child = None;
                return st.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!(
                "---- log of {} ({}) ----\n{}",
                self.name,
                self.log.display(),
                tail(&self.log_text(), 40)
            );
        }
    }
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// A scratch directory removed at the end (kept on failure for debugging).
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(test: &str) -> Self {
        let p = std::env::temp_dir().join(format!("tern-e2e-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Self(p)
    }
    pub fn path(&self, rel: &str) -> PathBuf {
        self.0.join(rel)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

pub fn spawn(dir: &Path, name: &str, program: &str, args: &[String]) -> Proc {
    spawn_with_umask(dir, name, program, args, None)
}

/// Start a program, optionally under a given umask (through `sh`, so the
/// test needs no unsafe code).
pub fn spawn_with_umask(
    dir: &Path,
    name: &str,
    program: &str,
    args: &[String],
    umask: Option<u32>,
) -> Proc {
    let log = dir.join(format!("{name}.log"));
    let f = std::fs::File::create(&log).unwrap();
    let mut cmd = match umask {
        None => Command::new(bin(program)),
        Some(m) => {
            let mut c = Command::new("sh");
            c.arg("-c")
                .arg(format!("umask {m:03o}; exec \"$0\" \"$@\""))
                .arg(bin(program));
            c
        }
    };
    let child = cmd
        .args(args)
        .env(
            "RUST_LOG",
            std::env::var("TERN_E2E_LOG").unwrap_or_else(|_| "info".into()),
        )
        .stdin(Stdio::null())
        .stdout(f.try_clone().unwrap())
        .stderr(f)
        .spawn()
        .unwrap_or_else(|e| panic!("start {program}: {e}"));
    Proc {
        name: name.into(),
        child: Some(child),
        log,
    }
}

/// Poll `f` until it returns Some, or panic naming `what` after `timeout`
/// (times the patience setting).
pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let timeout = patient(timeout);
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: String,
    pub body: String,
}

impl HttpResponse {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(self.body.trim()).unwrap_or(serde_json::Value::Null)
    }
}

/// One HTTP/1.1 request on a fresh connection.
pub fn http(
    addr: SocketAddr,
    method: &str,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> std::io::Result<HttpResponse> {
    http_body(addr, method, host, path, headers, "")
}

/// One HTTP/1.1 request with a body on a fresh connection.
pub fn http_body(
    addr: SocketAddr,
    method: &str,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> std::io::Result<HttpResponse> {
    let mut s = TcpStream::connect_timeout(&addr, patient(Duration::from_secs(3)))?;
    s.set_read_timeout(Some(patient(Duration::from_secs(10))))?;
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes())?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    let text = String::from_utf8_lossy(&buf).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("no HTTP response: {text:?}")))?;
    // The demo app answers with a small body; decode chunked if used.
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_string()
    };
    Ok(HttpResponse {
        status,
        headers: head.to_string(),
        body,
    })
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((len, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(len.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

pub fn get(addr: SocketAddr, host: &str, path: &str) -> std::io::Result<HttpResponse> {
    http(addr, "GET", host, path, &[])
}

/// Write a credential file with mode 0600.
pub fn write_secret(p: &Path, text: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(p, text).unwrap();
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// The layout of one test's mesh on 127.0.N.x.
#[derive(Clone, Copy)]
pub struct Net(pub u8);

impl Net {
    pub fn ip(&self, host: u8) -> String {
        format!("127.0.{}.{host}", self.0)
    }
    pub fn addr(&self, host: u8, port: u16) -> SocketAddr {
        format!("127.0.{}.{host}:{port}", self.0).parse().unwrap()
    }
}

/// A running global control plane plus ternctl access to it.
pub struct Global {
    pub proc: Proc,
    pub net: Net,
    pub data: PathBuf,
    pub dir: PathBuf,
}

impl Global {
    pub fn start(dir: &Path, net: Net) -> Global {
        Self::start_with(dir, net, &[])
    }
    pub fn start_with(dir: &Path, net: Net, extra: &[&str]) -> Global {
        Self::start_opts(dir, net, extra, None)
    }
    /// Start under a given umask.
    pub fn start_opts(dir: &Path, net: Net, extra: &[&str], umask: Option<u32>) -> Global {
        let data = dir.join("global");
        let mut args = Self::args(&data, net);
        args.extend(extra.iter().map(|s| s.to_string()));
        let proc = spawn_with_umask(dir, "global", "global-cp", &args, umask);
        let g = Global {
            proc,
            net,
            data,
            dir: dir.to_path_buf(),
        };
        g.wait_ready();
        g
    }
    pub fn args(data: &Path, net: Net) -> Vec<String> {
        vec![
            "--data-dir".into(),
            data.display().to_string(),
            "--sync-addr".into(),
            net.addr(1, 5685).to_string(),
            "--admin-addr".into(),
            net.addr(1, 5681).to_string(),
            "--ack-timeout".into(),
            "5s".into(),
        ]
    }
    pub fn restart(&mut self) {
        self.proc.kill();
        self.start_again();
    }
    /// Start it again on its data dir (after `proc.kill()`).
    pub fn start_again(&mut self) {
        self.proc = spawn(
            &self.dir,
            "global-restarted",
            "global-cp",
            &Self::args(&self.data, self.net),
        );
        self.wait_ready();
    }
    fn wait_ready(&self) {
        let admin = self.net.addr(1, 5681);
        wait_for("global admin /ready", Duration::from_secs(20), || {
            get(admin, "x", "/ready").ok().filter(|r| r.status == 200)
        });
    }
    /// `ternctl apply -f -` with these documents; panics with ternctl's
    /// error if it is refused.
    pub fn apply(&self, docs: &str) {
        let o = self.ternctl_stdin(&["apply", "-f", "-"], Some(docs));
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    /// Set the mesh's workload certificate lifetime (`workloadCertTtl`).
    pub fn set_cert_ttl(&self, ttl: &str) {
        self.apply(&format!(
            "apiVersion: tern.dev/v1alpha1\nkind: Mesh\nmetadata:\n  name: default\nspec:\n  mtls:\n    workloadCertTtl: {ttl}\n"
        ));
    }
    pub fn ternctl(&self, args: &[&str]) -> Output {
        self.ternctl_stdin(args, None)
    }
    pub fn ternctl_stdin(&self, args: &[&str], stdin: Option<&str>) -> Output {
        let mut c = Command::new(bin("ternctl"));
        c.args(args)
            .env("TERN_CONFIG", self.data.join("ternctl.json"))
            .env_remove("TERN_SERVER")
            .env_remove("TERN_ADMIN_TOKEN")
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = c.spawn().expect("run ternctl");
        if let Some(s) = stdin {
            child.stdin.take().unwrap().write_all(s.as_bytes()).unwrap();
        }
        child.wait_with_output().unwrap()
    }
    /// Run ternctl, require success, return stdout.
    pub fn ctl(&self, args: &[&str]) -> String {
        let o = self.ternctl(args);
        assert!(
            o.status.success(),
            "ternctl {args:?} failed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).to_string()
    }
    /// Run a `ternctl generate ...` and keep the token in a file of mode
    /// 0600 (components refuse credentials others can read).
    pub fn token_file(&self, name: &str, args: &[&str]) -> PathBuf {
        let t = self.ctl(args);
        let p = self.dir.join(name);
        write_secret(&p, t.trim());
        p
    }
    /// A zone token for `zone`, written to a file.
    pub fn zone_token(&self, zone: &str) -> PathBuf {
        self.token_file(
            &format!("{zone}.token"),
            &["generate", "zone-token", "--zone", zone],
        )
    }
    /// A dataplane token for `service` in `zone`, written to a file.
    pub fn dp_token(&self, zone: &str, service: &str) -> PathBuf {
        self.token_file(
            &format!("{service}-{zone}.token"),
            &[
                "generate",
                "dataplane-token",
                "--zone",
                zone,
                "--service",
                service,
            ],
        )
    }
    pub fn zones(&self) -> serde_json::Value {
        let out = self.ctl(&["inspect", "zones", "-o", "json"]);
        serde_json::from_str(&out).unwrap()
    }
    pub fn zone(&self, name: &str) -> Option<serde_json::Value> {
        self.zones()
            .as_array()?
            .iter()
            .find(|z| z["name"] == name)
            .cloned()
    }
    pub fn sync_addr(&self) -> SocketAddr {
        self.net.addr(1, 5685)
    }
}

/// A zone control plane on host `h` of the test subnet.
pub struct ZoneCp {
    pub proc: Proc,
    /// Extra `--flag value` pairs (replacing a default of the same flag).
    pub extra: Vec<String>,
    pub name: String,
    pub host: u8,
    pub net: Net,
    pub data: PathBuf,
    pub dir: PathBuf,
    pub region: String,
}

impl ZoneCp {
    pub fn args(&self, token: Option<&Path>) -> Vec<String> {
        let mut a = vec![
            "--zone".into(),
            self.name.clone(),
            "--data-dir".into(),
            self.data.display().to_string(),
            "--region".into(),
            self.region.clone(),
            "--proxy-addr".into(),
            self.net.addr(self.host, 5678).to_string(),
            "--admin-addr".into(),
            self.net.addr(self.host, 5680).to_string(),
            "--deregister-after".into(),
            "3s".into(),
            "--ack-timeout".into(),
            "5s".into(),
        ];
        if let Some(t) = token {
            a.push("--token-file".into());
            a.push(t.display().to_string());
        }
        // Extra `--flag value` pairs replace a default of the same flag.
        for pair in self.extra.chunks(2) {
            match a.iter().position(|x| *x == pair[0]) {
                Some(i) if pair.len() == 2 => a[i + 1] = pair[1].clone(),
                _ => a.extend(pair.iter().cloned()),
            }
        }
        a
    }
    pub fn start(
        dir: &Path,
        net: Net,
        host: u8,
        name: &str,
        region: &str,
        token: Option<&Path>,
    ) -> ZoneCp {
        Self::start_opts(dir, net, host, name, region, token, None)
    }
    /// Start with extra `--flag value` pairs.
    pub fn start_with(
        dir: &Path,
        net: Net,
        host: u8,
        name: &str,
        region: &str,
        token: Option<&Path>,
        extra: &[&str],
    ) -> ZoneCp {
        Self::start_full(dir, net, host, name, region, token, None, name, extra)
    }
    /// A zone-cp with its own data folder `zone-NAME-LABEL` (a second
    /// party for the same zone).
    pub fn start_in(
        dir: &Path,
        net: Net,
        host: u8,
        name: &str,
        region: &str,
        token: Option<&Path>,
        label: &str,
    ) -> ZoneCp {
        Self::start_full(
            dir,
            net,
            host,
            name,
            region,
            token,
            None,
            &format!("{name}-{label}"),
            &[],
        )
    }
    /// Start under a given umask.
    pub fn start_opts(
        dir: &Path,
        net: Net,
        host: u8,
        name: &str,
        region: &str,
        token: Option<&Path>,
        umask: Option<u32>,
    ) -> ZoneCp {
        Self::start_full(dir, net, host, name, region, token, umask, name, &[])
    }
    #[allow(clippy::too_many_arguments)]
    fn start_full(
        dir: &Path,
        net: Net,
        host: u8,
        name: &str,
        region: &str,
        token: Option<&Path>,
        umask: Option<u32>,
        data_name: &str,
        extra: &[&str],
    ) -> ZoneCp {
        let data = dir.join(format!("zone-{data_name}"));
        let mut z = ZoneCp {
            proc: Proc {
                name: String::new(),
                child: None,
                log: PathBuf::new(),
            },
            extra: extra.iter().map(|s| s.to_string()).collect(),
            name: name.into(),
            host,
            net,
            data,
            dir: dir.to_path_buf(),
            region: region.into(),
        };
        z.proc = spawn_with_umask(
            dir,
            &format!("zone-{data_name}"),
            "zone-cp",
            &z.args(token),
            umask,
        );
        z
    }
    pub fn restart(&mut self) {
        self.proc.kill();
        self.proc = spawn(
            &self.dir,
            &format!("zone-{}-restarted", self.name),
            "zone-cp",
            &self.args(None),
        );
    }
    /// Restart with extra flags (e.g. a longer `--deregister-after`).
    pub fn restart_with(&mut self, extra: &[&str]) {
        self.extra = extra.iter().map(|s| s.to_string()).collect();
        self.restart();
    }
    pub fn proxy_addr(&self) -> String {
        self.net.addr(self.host, 5678).to_string()
    }
    pub fn dump(&self) -> serde_json::Value {
        get(self.net.addr(self.host, 5680), "x", "/config_dump")
            .map(|r| r.json())
            .unwrap_or(serde_json::Value::Null)
    }
}

/// A demo app plus its sidecar, on host `h`: app on :8080, inbound :15006,
/// outbound :15001, admin :15000.
pub struct Workload {
    pub app: Proc,
    pub sidecar: Proc,
    pub host: u8,
    pub net: Net,
}

impl Workload {
    pub fn start(
        dir: &Path,
        net: Net,
        host: u8,
        service: &str,
        zone: &ZoneCp,
        token: &Path,
    ) -> Workload {
        Self::start_with(dir, net, host, service, zone, token, &[])
    }
    pub fn start_with(
        dir: &Path,
        net: Net,
        host: u8,
        service: &str,
        zone: &ZoneCp,
        token: &Path,
        extra: &[&str],
    ) -> Workload {
        Self::start_full(dir, net, host, service, zone, token, &[], extra)
    }
    #[allow(clippy::too_many_arguments)]
    pub fn start_full(
        dir: &Path,
        net: Net,
        host: u8,
        service: &str,
        zone: &ZoneCp,
        token: &Path,
        app_extra: &[&str],
        extra: &[&str],
    ) -> Workload {
        let ip = net.ip(host);
        let mut app_args: Vec<String> = vec![
            "--listen".into(),
            format!("{ip}:8080"),
            "--name".into(),
            service.into(),
            "--zone".into(),
            zone.name.clone(),
        ];
        app_args.extend(app_extra.iter().map(|s| s.to_string()));
        let app = spawn(dir, &format!("app-{service}-{host}"), "demo-app", &app_args);
        let sidecar = start_sidecar(dir, net, host, service, zone, token, extra);
        Workload {
            app,
            sidecar,
            host,
            net,
        }
    }
    pub fn admin(&self) -> SocketAddr {
        self.net.addr(self.host, 15000)
    }
    pub fn outbound(&self) -> SocketAddr {
        self.net.addr(self.host, 15001)
    }
    pub fn inbound(&self) -> SocketAddr {
        self.net.addr(self.host, 15006)
    }
    pub fn dump(&self) -> serde_json::Value {
        get(self.admin(), "x", "/config_dump")
            .map(|r| r.json())
            .unwrap_or_default()
    }
    /// Endpoints of `service` in this sidecar's config.
    pub fn endpoints(&self, service: &str) -> Vec<String> {
        self.endpoint_field(service, "address")
    }
    /// The zone of each endpoint of `service` in this sidecar's config.
    pub fn endpoint_zones(&self, service: &str) -> Vec<String> {
        self.endpoint_field(service, "zone")
    }
    fn endpoint_field(&self, service: &str, field: &str) -> Vec<String> {
        self.dump()["clusters"][service]["endpoints"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|e| e[field].as_str().unwrap_or("").to_string())
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// A sidecar alone on host `h` (its app, if any, started by the test on
/// :8080), once it is ready.
pub fn start_sidecar(
    dir: &Path,
    net: Net,
    host: u8,
    service: &str,
    zone: &ZoneCp,
    token: &Path,
    extra: &[&str],
) -> Proc {
    let mut args = sidecar_args(net, host, service, zone, token);
    args.extend(extra.iter().map(|s| s.to_string()));
    let sidecar = spawn(
        dir,
        &format!("sidecar-{service}-{host}"),
        "dataplane",
        &args,
    );
    wait_for(
        &format!("sidecar {service} on {} ready", net.ip(host)),
        Duration::from_secs(20),
        || {
            get(net.addr(host, 15000), "x", "/ready")
                .ok()
                .filter(|r| r.status == 200)
        },
    );
    sidecar
}

/// A sidecar's flags for host `h`: inbound :15006, app :8080, outbound
/// :15001, admin :15000.
pub fn sidecar_args(net: Net, host: u8, service: &str, zone: &ZoneCp, token: &Path) -> Vec<String> {
    let ip = net.ip(host);
    vec![
        "--cp-address".into(),
        zone.proxy_addr(),
        "--token-file".into(),
        token.display().to_string(),
        "--service".into(),
        service.into(),
        "--address".into(),
        ip.clone(),
        "--inbound".into(),
        format!("{ip}:15006"),
        "--app".into(),
        format!("{ip}:8080"),
        "--outbound".into(),
        format!("{ip}:15001"),
        "--admin".into(),
        format!("{ip}:15000"),
        "--drain".into(),
        "1s".into(),
    ]
}

/// Steady load through a sidecar in a background thread: counts successes
/// and failures and which instance answered.
pub struct Load {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    pub stats: std::sync::Arc<std::sync::Mutex<LoadStats>>,
    handle: Option<std::thread::JoinHandle<()>>,
}

#[derive(Default, Debug, Clone)]
pub struct LoadStats {
    pub ok: u64,
    pub failed: u64,
    pub failures: Vec<String>,
    /// Instance of each successful answer, in order.
    pub served_by: Vec<String>,
    /// Zone of each successful answer, in order.
    pub zones: Vec<String>,
}

impl LoadStats {
    /// True when the last `n` answers all came from `zone`.
    pub fn last_from(&self, n: usize, zone: &str) -> bool {
        self.zones.len() >= n && self.zones[self.zones.len() - n..].iter().all(|z| z == zone)
    }
}

impl Load {
    pub fn start(addr: SocketAddr, host: &str, method: &'static str) -> Load {
        Self::start_with(addr, host, method, vec![], String::new())
    }
    pub fn start_with(
        addr: SocketAddr,
        host: &str,
        method: &'static str,
        headers: Vec<(&'static str, &'static str)>,
        body: String,
    ) -> Load {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stats = std::sync::Arc::new(std::sync::Mutex::new(LoadStats::default()));
        let (st, sx, host) = (stop.clone(), stats.clone(), host.to_string());
        let handle = std::thread::spawn(move || {
            while !st.load(std::sync::atomic::Ordering::Relaxed) {
                let r = http_body(addr, method, &host, "/load", &headers, &body);
                let mut s = sx.lock().unwrap();
                match r {
                    Ok(r) if r.status == 200 => {
                        s.ok += 1;
                        let j = r.json();
                        s.served_by
                            .push(j["instance"].as_str().unwrap_or("").to_string());
                        s.zones.push(j["zone"].as_str().unwrap_or("").to_string());
                    }
                    Ok(r) => {
                        s.failed += 1;
                        s.failures.push(format!("{} {}", r.status, r.body.trim()));
                    }
                    Err(e) => {
                        s.failed += 1;
                        s.failures.push(e.to_string());
                    }
                }
                drop(s);
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        Load {
            stop,
            stats,
            handle: Some(handle),
        }
    }
    pub fn snapshot(&self) -> LoadStats {
        self.stats.lock().unwrap().clone()
    }
    /// Wait until `n` more requests succeeded than now.
    pub fn wait_more(&self, n: u64) {
        let base = self.snapshot().ok;
        wait_for(
            &format!("{n} more successful requests"),
            Duration::from_secs(30),
            || (self.snapshot().ok >= base + n).then_some(()),
        );
    }
    pub fn finish(mut self) -> LoadStats {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
        self.snapshot()
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// An east-west gateway on host `h`: local mTLS :15443, QUIC :15444
/// (UDP), admin :15090.
pub struct GatewayProc {
    pub proc: Proc,
    pub net: Net,
    pub host: u8,
}

impl GatewayProc {
    pub fn start(
        dir: &Path,
        net: Net,
        host: u8,
        zone: &ZoneCp,
        token: &Path,
        extra: &[&str],
    ) -> GatewayProc {
        let ip = net.ip(host);
        let mut args: Vec<String> = vec![
            "--cp-address".into(),
            zone.proxy_addr(),
            "--token-file".into(),
            token.display().to_string(),
            "--local".into(),
            format!("{ip}:15443"),
            "--quic-bind".into(),
            format!("{ip}:15444"),
            "--admin".into(),
            format!("{ip}:15090"),
            "--keep-alive".into(),
            "300ms".into(),
            "--idle-timeout".into(),
            "1500ms".into(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let proc = spawn(
            dir,
            &format!("gateway-{}-{host}", zone.name),
            "gateway",
            &args,
        );
        let g = GatewayProc { proc, net, host };
        wait_for(
            &format!("gateway {ip} ready"),
            Duration::from_secs(20),
            || {
                get(g.admin(), "x", "/ready")
                    .ok()
                    .filter(|r| r.status == 200)
            },
        );
        g
    }
    pub fn admin(&self) -> SocketAddr {
        self.net.addr(self.host, 15090)
    }
    pub fn quic(&self) -> SocketAddr {
        self.net.addr(self.host, 15444)
    }
    pub fn dump(&self) -> serde_json::Value {
        get(self.admin(), "x", "/config_dump")
            .map(|r| r.json())
            .unwrap_or_default()
    }
    /// Sum of a metric's samples whose line contains `filter`.
    pub fn metric(&self, name: &str, filter: &str) -> f64 {
        metric_sum(self.admin(), name, filter)
    }
}

/// One connection to a TCP echo through `at`: waits `hold` after
/// connecting (a caller that is slow to speak), sends `payload`, closes
/// its sending side, and returns everything echoed until the far end
/// closes.
pub fn tcp_echo_exchange(
    at: SocketAddr,
    payload: &[u8],
    hold: Duration,
) -> std::io::Result<Vec<u8>> {
    let mut s = TcpStream::connect(at)?;
    s.set_read_timeout(Some(patient(Duration::from_secs(10))))?;
    if !hold.is_zero() {
        std::thread::sleep(hold);
    }
    s.write_all(payload)?;
    s.shutdown(std::net::Shutdown::Write)?;
    let mut out = Vec::new();
    s.read_to_end(&mut out)?;
    Ok(out)
}

pub fn metric_sum(admin: SocketAddr, name: &str, filter: &str) -> f64 {
    let body = get(admin, "x", "/metrics")
        .map(|r| r.body)
        .unwrap_or_default();
    body.lines()
        .filter(|l| l.starts_with(name) && l.contains(filter))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A certificate for `id` signed by the zone CA stored in `zone_data` (what
/// a real member of that zone holds, or what an attacker holding that zone's
/// CA could mint), and the mesh roots as a trust policy.
pub fn zone_member(
    zone_data: &Path,
    id: &model::ident::SpiffeId,
) -> (
    common::tls::Identity,
    std::sync::Arc<common::trust::TrustPolicy>,
) {
    let ca = zone_ca(zone_data);
    let kc = common::pki::new_key_and_csr("test").unwrap();
    let leaf = ca
        .sign_leaf(&kc.csr_pem, id, &[], Duration::from_secs(600))
        .unwrap();
    let ident =
        common::tls::Identity::from_pem(&format!("{leaf}{}", ca.cert_pem()), &kc.key_pem).unwrap();
    (ident, std::sync::Arc::new(mesh_roots(zone_data)))
}

/// Speak TLS to `addr` as `ident` (or with no certificate), offering these
/// ALPN ids (none when empty), send `request` and return what came back
/// before the peer closed, or the error.
pub fn tls_request(
    addr: SocketAddr,
    ident: Option<&common::tls::Identity>,
    roots: std::sync::Arc<common::trust::TrustPolicy>,
    alpns: &[&[u8]],
    request: &[u8],
) -> Result<String, String> {
    use common::tls::{self, Expect, SpiffeServerVerifier};
    tls::install_provider();
    let verifier = SpiffeServerVerifier::new(roots, Expect::TrustDomain("tern".into()));
    let cfg = tls::client_config(ident, std::sync::Arc::new(verifier), alpns)
        .map_err(|e| e.to_string())?;
    let conn = common::rustls::ClientConnection::new(std::sync::Arc::new(cfg), tls::sni())
        .map_err(|e| e.to_string())?;
    let sock = TcpStream::connect(addr).map_err(|e| e.to_string())?;
    sock.set_read_timeout(Some(patient(Duration::from_secs(5))))
        .unwrap();
    let mut s = common::rustls::StreamOwned::new(conn, sock);
    s.write_all(request).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    match s.read_to_end(&mut out) {
        Ok(_) => Ok(String::from_utf8_lossy(&out).to_string()),
        Err(e) if !out.is_empty() => {
            Ok(String::from_utf8_lossy(&out).to_string() + &format!(" [{e}]"))
        }
        Err(e) => Err(e.to_string()),
    }
}

/// An HTTP/1.1 GET with extra header lines, closing the connection after.
pub fn raw_get(path: &str, extra_headers: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: api\r\nConnection: close\r\n{extra_headers}\r\n")
        .into_bytes()
}

/// The zone CA a zone-cp keeps in its data folder.
pub fn zone_ca(zone_data: &Path) -> common::pki::Ca {
    common::pki::Ca::from_pem(
        &std::fs::read_to_string(zone_data.join("zone-ca.pem")).unwrap(),
        &std::fs::read_to_string(zone_data.join("zone-ca.key")).unwrap(),
    )
    .unwrap()
}

/// The mesh roots a zone-cp keeps, as a policy that accepts any zone CA.
pub fn mesh_roots(zone_data: &Path) -> common::trust::TrustPolicy {
    common::trust::TrustPolicy::from_pem(
        "tern",
        &std::fs::read_to_string(zone_data.join("root.pem")).unwrap(),
        common::trust::ZoneCas::Any,
    )
    .unwrap()
}

/// The common start: a global and one zone `z1` (region r1) on host 2.
pub fn one_zone(test: &str, net: Net) -> (Scratch, Global, ZoneCp) {
    let s = Scratch::new(test);
    let g = Global::start(&s.0, net);
    let zt = g.zone_token("z1");
    let z = ZoneCp::start(&s.0, net, 2, "z1", "r1", Some(&zt));
    (s, g, z)
}
