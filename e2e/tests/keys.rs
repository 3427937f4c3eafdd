//! Keys and credentials at rest: every file that holds one is mode 0600 in a
//! 0700 folder even when the components run under umask 000, and each
//! component refuses to start on a key or credential file that other users
//! can read, saying which file and what to run.
mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use support::*;

const T: Duration = Duration::from_secs(30);

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o777
}

fn chmod(p: &Path, m: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap();
}

/// Every file directly in `dir` is 0600, and `dir` is 0700.
fn all_private(dir: &Path) -> Vec<String> {
    assert_eq!(mode(dir), 0o700, "{} must be 0700", dir.display());
    let mut names = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_file() {
            assert_eq!(mode(&p), 0o600, "{} must be 0600", p.display());
            names.push(p.file_name().unwrap().to_string_lossy().to_string());
        }
    }
    names
}

/// ternctl under umask 000 with its own HOME.
fn ternctl_home(home: &Path, args: &[&str], config: Option<&Path>) -> std::process::Output {
    let mut c = Command::new("sh");
    c.arg("-c")
        .arg("umask 000; exec \"$0\" \"$@\"")
        .arg(bin("ternctl"))
        .args(args)
        .env("HOME", home)
        .env_remove("TERN_SERVER")
        .env_remove("TERN_ADMIN_TOKEN")
        .stdin(Stdio::null());
    match config {
        Some(p) => c.env("TERN_CONFIG", p),
        None => c.env_remove("TERN_CONFIG"),
    };
    c.output().unwrap()
}

fn refused_with(p: &mut Proc, file: &Path, fix: &str) {
    let code = p.wait_exit(T);
    assert!(
        matches!(code, Some(c) if c != 0),
        "{} must refuse to start",
        p.name
    );
    let log = p.log_text();
    assert!(
        log.contains(&file.display().to_string()) && log.contains(fix),
        "{}'s refusal must name {} and `{fix}`:\n{log}",
        p.name,
        file.display()
    );
}

#[test]
fn key_files_are_private_whatever_the_umask_and_exposed_ones_are_refused() {
    let s = Scratch::new("keys");
    let net = Net(41);
    let mut g = Global::start_opts(&s.0, net, &[], Some(0o000));
    let zt = g.zone_token("z1");
    assert_eq!(mode(&zt), 0o600);
    let mut z = ZoneCp::start_opts(&s.0, net, 2, "z1", "r1", Some(&zt), Some(0o000));
    wait_for("z1 online", T, || {
        g.zone("z1").filter(|v| v["online"] == true)
    });

    // The global's store (with its WAL and SHM), admin token and ternctl
    // config; the zone's CA key and everything else it keeps.
    let files = all_private(&g.data);
    for f in [
        "global.db",
        "global.db-wal",
        "global.db-shm",
        "admin-token",
        "ternctl.json",
    ] {
        assert!(files.contains(&f.to_string()), "{f} missing from {files:?}");
    }
    let files = all_private(&z.data);
    assert!(files.contains(&"zone-ca.key".to_string()), "{files:?}");

    // ternctl: use-config and generated token files are private too.
    let home = s.path("home");
    std::fs::create_dir_all(&home).unwrap();
    let cfg = g.data.join("ternctl.json");
    let o = ternctl_home(&home, &["use-config", cfg.to_str().unwrap()], None);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(all_private(&home.join(".tern")), vec!["config.json"]);
    let tok = s.path("dp.token");
    let o = ternctl_home(
        &home,
        &[
            "generate",
            "dataplane-token",
            "--zone",
            "z1",
            "--service",
            "api",
            "--file",
            tok.to_str().unwrap(),
        ],
        None,
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(mode(&tok), 0o600);

    // A ternctl config others can read is refused.
    chmod(&home.join(".tern/config.json"), 0o644);
    let o = ternctl_home(&home, &["get", "zones"], None);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("chmod 600"),
        "ternctl must refuse an exposed config: {err}"
    );

    // A dataplane token others can read: the sidecar refuses to start.
    chmod(&tok, 0o644);
    let mut dp = spawn(
        &s.0,
        "sidecar-exposed",
        "dataplane",
        &sidecar_args(net, 11, "api", &z, &tok),
    );
    refused_with(&mut dp, &tok, "chmod 600");

    // A zone token others can read: a new zone-cp refuses to start.
    let zt2 = g.zone_token("z2");
    chmod(&zt2, 0o640);
    let mut z2 = ZoneCp::start(&s.0, net, 3, "z2", "r1", Some(&zt2));
    refused_with(&mut z2.proc, &zt2, "chmod 600");
    assert!(g.zone("z2").is_none(), "the exposed token was not used");

    // The zone's CA key exposed: the zone-cp refuses to start.
    z.proc.kill();
    let key = z.data.join("zone-ca.key");
    chmod(&key, 0o644);
    z.restart();
    refused_with(&mut z.proc, &key, "chmod 600");
    chmod(&key, 0o600);

    // The global's store exposed, then its folder: refused each time, and
    // once fixed it starts with its data intact.
    g.proc.kill();
    let db = g.data.join("global.db");
    chmod(&db, 0o644);
    let mut p = spawn(
        &s.0,
        "global-exposed-db",
        "global-cp",
        &Global::args(&g.data, net),
    );
    refused_with(&mut p, &db, "chmod 600");
    chmod(&db, 0o600);
    chmod(&g.data, 0o755);
    let mut p = spawn(
        &s.0,
        "global-exposed-dir",
        "global-cp",
        &Global::args(&g.data, net),
    );
    refused_with(&mut p, &g.data, "chmod 700");
    chmod(&g.data, 0o700);
    g.restart();
    assert!(g.zone("z1").is_some(), "the store survived the refusals");
}
