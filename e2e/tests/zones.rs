//! Zones join with a good token; expired, revoked, tampered and wrong-zone
//! tokens are refused, with the reason logged on both sides.
mod support;

use std::time::Duration;

use base64::Engine;
use support::*;

const T: Duration = Duration::from_secs(30);

fn refused(g: &Global, z: &mut ZoneCp, reason: &str) {
    let code = z.proc.wait_exit(T);
    assert_eq!(
        code,
        Some(1),
        "zone-cp {} should exit with an error",
        z.name
    );
    let zlog = z.proc.log_text();
    assert!(
        zlog.contains(reason),
        "zone-cp log lacks {reason:?}:\n{zlog}"
    );
    let glog = g.proc.log_text();
    assert!(
        glog.lines()
            .any(|l| l.contains("zone join refused") && l.contains(&z.name) && l.contains(reason)),
        "global log lacks the refusal of {} ({reason:?}):\n{glog}",
        z.name
    );
    assert!(
        g.zone(&z.name).is_none(),
        "a refused zone must not be recorded"
    );
}

#[test]
fn good_token_joins_and_bad_tokens_are_refused() {
    let s = Scratch::new("zones");
    let net = Net(21);
    let g = Global::start(&s.0, net);

    // A good token: the zone joins, syncs and shows online.
    let good = g.token_file("good.token", &["generate", "zone-token", "--zone", "eu-1"]);
    let mut z1 = ZoneCp::start(&s.0, net, 2, "eu-1", "eu", Some(&good));
    let z = wait_for("eu-1 online and synced", T, || {
        g.zone("eu-1")
            .filter(|z| z["online"] == true && z["ackedVersion"] == z["globalVersion"])
    });
    assert!(z["lastSeen"].is_string());
    assert!(
        g.ctl(&["get", "zones"]).contains("eu-1"),
        "a joined zone gets a Zone resource"
    );

    // Wrong zone: a token for eu-2 used by zone eu-3.
    let t = g.token_file("eu2.token", &["generate", "zone-token", "--zone", "eu-2"]);
    let mut z = ZoneCp::start(&s.0, net, 3, "eu-3", "eu", Some(&t));
    refused(&g, &mut z, "was issued for zone \"eu-2\", not \"eu-3\"");

    // Expired: valid for one second; wait until its expiry has passed.
    let t = g.token_file(
        "exp.token",
        &[
            "generate",
            "zone-token",
            "--zone",
            "eu-4",
            "--valid-for",
            "1s",
        ],
    );
    let claims = model::token::decode_unverified(&std::fs::read_to_string(&t).unwrap()).unwrap();
    wait_for("the token to expire", T, || {
        (model::token::now_unix() > claims.exp).then_some(())
    });
    let mut z = ZoneCp::start(&s.0, net, 4, "eu-4", "eu", Some(&t));
    refused(&g, &mut z, "expired at");

    // Revoked before use.
    let t = g.token_file("rev.token", &["generate", "zone-token", "--zone", "eu-5"]);
    let tok = std::fs::read_to_string(&t).unwrap();
    let out = g.ctl(&["revoke", tok.trim(), "--reason", "test"]);
    assert!(out.contains("revoked"), "{out}");
    let mut z = ZoneCp::start(&s.0, net, 5, "eu-5", "eu", Some(&t));
    refused(&g, &mut z, "has been revoked");

    // Tampered: extend the expiry in the payload, keep the signature.
    let t = g.token_file(
        "tamper.token",
        &["generate", "zone-token", "--zone", "eu-6"],
    );
    let tok = std::fs::read_to_string(&t).unwrap();
    let parts: Vec<&str> = tok.trim().split('.').collect();
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let mut c: serde_json::Value = serde_json::from_slice(&b64.decode(parts[1]).unwrap()).unwrap();
    c["exp"] = serde_json::json!(c["exp"].as_u64().unwrap() + 1_000_000);
    let forged = format!(
        "{}.{}.{}",
        parts[0],
        b64.encode(serde_json::to_vec(&c).unwrap()),
        parts[2]
    );
    std::fs::write(&t, forged).unwrap();
    let mut z = ZoneCp::start(&s.0, net, 6, "eu-6", "eu", Some(&t));
    refused(&g, &mut z, "signature is invalid");

    // A zone whose join token is revoked later loses its sync stream and
    // cannot come back with its stored identity.
    let id = model::token::decode_unverified(&std::fs::read_to_string(&good).unwrap())
        .unwrap()
        .jti;
    g.ctl(&["revoke", &id]);
    // The running zone-cp's live stream is cut (no restart yet): it goes
    // offline and its own log says why.
    wait_for("eu-1's live stream cut", T, || {
        g.zone("eu-1").filter(|z| z["online"] == false)
    });
    wait_for("the running eu-1 told why", T, || {
        z1.proc
            .log_text()
            .contains("has been revoked")
            .then_some(())
    });
    // Restarted with its stored identity, it is refused again.
    z1.restart();
    wait_for("eu-1 refused after a restart", T, || {
        z1.proc
            .log_text()
            .contains("has been revoked")
            .then_some(())
    });
    assert_eq!(g.zone("eu-1").unwrap()["online"], false);
    let tokens = g.ctl(&["get", "tokens"]);
    assert!(
        tokens
            .lines()
            .any(|l| l.starts_with(&id) && l.contains("revoked")),
        "{tokens}"
    );
}
