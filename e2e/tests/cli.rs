//! ternctl: apply from files, folders and stdin; clear errors that name the
//! file, line, document and field; nothing applied when any document is bad
//! or would be refused by the global; optimistic concurrency; names checked
//! before they go into a URL; an unreachable global explained.
mod support;

use support::*;

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

#[test]
fn apply_get_delete_and_clear_errors() {
    let s = Scratch::new("cli");
    let net = Net(27);
    let g = Global::start(&s.0, net);
    let dir = s.path("manifests");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("a.yaml"),
        "apiVersion: tern.dev/v1alpha1\nkind: Zone\nmetadata:\n  name: eu-1\nspec:\n  description: Frankfurt\n---\napiVersion: tern.dev/v1alpha1\nkind: Zone\nmetadata:\n  name: us-1\n",
    )
    .unwrap();
    std::fs::write(dir.join("b.json"), r#"{"apiVersion":"tern.dev/v1alpha1","kind":"Mesh","metadata":{"name":"default"},"spec":{}}"#).unwrap();
    let out = g.ctl(&["apply", "-f", dir.to_str().unwrap()]);
    assert!(
        out.contains("zone/eu-1 created")
            && out.contains("zone/us-1 created")
            && out.contains("mesh/default created"),
        "{out}"
    );
    let table = g.ctl(&["get", "zones"]);
    assert!(
        table.starts_with("NAME") && table.contains("eu-1") && table.contains("us-1"),
        "{table}"
    );
    let y = g.ctl(&["get", "zone", "eu-1", "-o", "yaml"]);
    assert!(
        y.contains("description: Frankfurt") && y.contains("resourceVersion: 1"),
        "{y}"
    );

    // Errors name file:line, document, resource and field; nothing applies.
    let bad = s.path("bad.yaml");
    std::fs::write(
        &bad,
        "apiVersion: tern.dev/v1alpha1\nkind: Zone\nmetadata:\n  name: ok-zone\n---\napiVersion: tern.dev/v1alpha1\nkind: Zone\nmetadata:\n  name: Bad_Name\n---\napiVersion: tern.dev/v1alpha1\nkind: Gateway\nmetadata:\n  name: x\n---\napiVersion: tern.dev/v1alpha1\nkind: Mesh\nmetadata:\n  name: m\nspec:\n  mtls:\n    workloadCertTTL: 1h\n",
    )
    .unwrap();
    let o = g.ternctl(&["apply", "-f", bad.to_str().unwrap()]);
    assert!(!o.status.success());
    let e = stderr(&o);
    let f = bad.display().to_string();
    assert!(
        e.contains(&format!(
            "{f}:9: document 2 (Zone/Bad_Name): metadata.name: invalid name \"Bad_Name\""
        )),
        "{e}"
    );
    assert!(e.contains(&format!("{f}:12: document 3 (Gateway/x): kind: unknown kind \"Gateway\"; known kinds: Mesh, Zone, AccessPolicy, MtlsPolicy, HttpRoute, TcpRoute, FaultInjection, RateLimit, Retry, Timeout, CircuitBreaker, LoadBalancer, HealthCheck, AccessLog, Trace, Drill, ZoneIngress, DrillRun, Revocation, ZoneCa, MeshTrust")), "{e}");
    assert!(e.contains(&format!("{f}:22: document 4 (Mesh/m): spec.mtls.workloadCertTTL: unknown field `workloadCertTTL`, expected `workloadCertTtl`")), "{e}");
    assert!(e.contains("nothing was applied"), "{e}");
    assert!(
        !g.ctl(&["get", "zones"]).contains("ok-zone"),
        "a bad batch applies nothing"
    );

    // Malformed YAML from stdin.
    let o = g.ternctl_stdin(&["apply", "-f", "-"], Some("kind: [Zone\n"));
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("<stdin>") && stderr(&o).contains("invalid YAML"),
        "{}",
        stderr(&o)
    );

    // Optimistic concurrency: a stale resourceVersion conflicts.
    let upd = "apiVersion: tern.dev/v1alpha1\nkind: Zone\nmetadata:\n  name: eu-1\n  resourceVersion: 1\nspec:\n  description: Paris\n";
    let o = g.ternctl_stdin(&["apply", "-f", "-"], Some(upd));
    assert!(o.status.success(), "{}", stderr(&o));
    let o = g.ternctl_stdin(&["apply", "-f", "-"], Some(&upd.replace("Paris", "Rome")));
    assert!(!o.status.success());
    assert!(
        stderr(&o)
            .contains("changed concurrently: you sent resourceVersion 1, the stored one is 2"),
        "{}",
        stderr(&o)
    );
    assert!(g
        .ctl(&["get", "zone", "eu-1", "-o", "json"])
        .contains("Paris"));

    // Delete, and a clear error for what is not there.
    assert!(g.ctl(&["delete", "zone", "us-1"]).contains("deleted"));
    let o = g.ternctl(&["delete", "zone", "us-1"]);
    assert!(
        !o.status.success() && stderr(&o).contains("Zone/us-1 not found"),
        "{}",
        stderr(&o)
    );
    // System kinds are not writable by apply; refusals only the global can
    // make (that, or a stale version) stop the whole batch, a valid first
    // document included.
    let o = g.ternctl_stdin(&["apply", "-f", "-"], Some("apiVersion: tern.dev/v1alpha1\nkind: Zone\nmetadata: {name: first-ok}\n---\napiVersion: tern.dev/v1alpha1\nkind: Revocation\nmetadata: {name: abc}\nspec: {revokedAt: now}\n"));
    assert!(
        !o.status.success()
            && stderr(&o).contains("written by the control plane")
            && stderr(&o).contains("nothing was applied"),
        "{}",
        stderr(&o)
    );
    assert!(
        !g.ctl(&["get", "zones"]).contains("first-ok"),
        "a batch the global refuses in part applies nothing"
    );
    // The same resource twice in one batch: refused, not the last one winning.
    let o = g.ternctl_stdin(&["apply", "-f", "-"], Some("apiVersion: tern.dev/v1alpha1\nkind: Zone\nmetadata: {name: twice}\nspec: {description: one}\n---\napiVersion: tern.dev/v1alpha1\nkind: Zone\nmetadata: {name: twice}\nspec: {description: two}\n"));
    assert!(
        !o.status.success()
            && stderr(&o).contains("document 2 (Zone/twice) repeats document 1")
            && stderr(&o).contains("nothing was applied"),
        "{}",
        stderr(&o)
    );
    assert!(!g.ctl(&["get", "zones"]).contains("twice"));
    // Applied again as it is: unchanged.
    let same = "apiVersion: tern.dev/v1alpha1\nkind: Zone\nmetadata:\n  name: eu-1\nspec:\n  description: Paris\n";
    let out = String::from_utf8_lossy(&g.ternctl_stdin(&["apply", "-f", "-"], Some(same)).stdout)
        .to_string();
    assert!(out.contains("zone/eu-1 unchanged (version 2)"), "{out}");
    // A name that is not a resource name never reaches a URL: `eu-1?x`
    // would otherwise delete eu-1.
    let o = g.ternctl(&["delete", "zone", "eu-1?x"]);
    assert!(
        !o.status.success() && stderr(&o).contains("is not a resource name"),
        "{}",
        stderr(&o)
    );
    assert!(g.ctl(&["get", "zones"]).contains("eu-1"));
    let o = g.ternctl(&["delete", "tokens", "abc"]);
    assert!(
        !o.status.success() && stderr(&o).contains("ternctl revoke"),
        "{}",
        stderr(&o)
    );
    // A global that is not there: the cause in words, no debug dump.
    let o = g.ternctl(&["get", "zones", "--server", "http://127.0.0.1:9"]);
    let e = stderr(&o);
    assert!(
        !o.status.success()
            && e.contains("cannot reach the global control plane at http://127.0.0.1:9")
            && e.contains("Connection refused")
            && !e.contains("Os {"),
        "{e}"
    );

    // The admin API refuses a missing or wrong credential.
    let r = get(net.addr(1, 5681), "x", "/api/v1/zones").unwrap();
    assert_eq!(r.status, 401);
    let r = http(
        net.addr(1, 5681),
        "GET",
        "x",
        "/api/v1/zones",
        &[("authorization", "Bearer nope")],
    )
    .unwrap();
    assert_eq!(r.status, 401);
    let r = get(net.addr(1, 5681), "x", "/config_dump").unwrap();
    assert_eq!(r.status, 401);
    // A bad token request is explained.
    let o = g.ternctl(&[
        "generate",
        "zone-token",
        "--zone",
        "eu-1",
        "--valid-for",
        "90d",
    ]);
    assert!(
        !o.status.success()
            && stderr(&o).contains("validFor (ternctl: --valid-for) must be between 1s and 30d"),
        "{}",
        stderr(&o)
    );
}

/// `ternctl completion SHELL` needs no server or config. The bash script,
/// sourced by a real bash, registers a completion that completes
/// `ternctl ap` to `apply` and `ternctl inspect <TAB>` to its subcommands;
/// the zsh and fish scripts name every top-level subcommand; an unknown
/// shell is a usage error (exit 2) that lists the shells.
#[test]
fn shell_completion_scripts_complete_subcommands() {
    let s = Scratch::new("cli-completion");
    let ctl = |args: &[&str]| {
        std::process::Command::new(bin("ternctl"))
            .args(args)
            .env_remove("TERN_SERVER")
            .env("TERN_CONFIG", s.path("none.json"))
            .output()
            .unwrap()
    };
    let bash = ctl(&["completion", "bash"]);
    assert!(bash.status.success(), "{bash:?}");
    let script = s.path("ternctl.bash");
    std::fs::write(&script, &bash.stdout).unwrap();
    let out = std::process::Command::new("bash")
        .arg("-c")
        .arg(format!(
            "source {}; complete -p ternctl; \
             COMP_WORDS=(ternctl ap); COMP_CWORD=1; _ternctl ternctl ap ternctl; echo \"A:${{COMPREPLY[*]}}\"; \
             COMP_WORDS=(ternctl inspect ''); COMP_CWORD=2; _ternctl ternctl '' inspect; echo \"B:${{COMPREPLY[*]}}\"",
            script.display()
        ))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(text.contains("-F _ternctl ternctl"), "{text}");
    assert!(text.lines().any(|l| l == "A:apply"), "{text}");
    let b = text
        .lines()
        .find(|l| l.starts_with("B:"))
        .unwrap_or_default();
    for sub in ["zones", "dataplane"] {
        assert!(b.split_whitespace().any(|w| w == sub), "{sub} in {b}");
    }
    for shell in ["zsh", "fish"] {
        let o = ctl(&["completion", shell]);
        assert!(o.status.success(), "{o:?}");
        let t = String::from_utf8_lossy(&o.stdout);
        for sub in ["apply", "get", "inspect", "revoke", "completion"] {
            assert!(t.contains(sub), "{shell} script names {sub}");
        }
    }
    let bad = ctl(&["completion", "tcsh"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("possible values"));
}
