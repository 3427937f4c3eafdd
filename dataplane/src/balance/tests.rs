use super::*;
use std::collections::HashMap;

fn ep(ip: &str, zone: &str, prio: u32, weight: u32, via: bool) -> pb::Endpoint {
    pb::Endpoint {
        address: ip.into(),
        port: 15006,
        healthy: true,
        zone: zone.into(),
        identity: format!("spiffe://tern/zone/{zone}/svc/api"),
        weight,
        via_gateway: via,
        priority: prio,
        ..Default::default()
    }
}

fn cluster() -> Arc<Cluster> {
    let cfg = vec![pb::Cluster {
        service: "api".into(),
        protocol: "http".into(),
        endpoints: vec![
            ep("127.0.0.1", "z1", 0, 1, false),
            ep("127.0.0.2", "z1", 0, 1, false),
            ep("127.0.0.5", "z2", 1, 4, true),
            ep("127.0.0.5", "z3", 2, 1, true),
        ],
        ..Default::default()
    }];
    Clusters::build(&cfg, &Clusters::default(), 1, &Defaults::default())
        .unwrap()
        .by_service["api"]
        .clone()
}

fn zone_shares(c: &Cluster, n: usize) -> HashMap<String, usize> {
    let mut m = HashMap::new();
    for _ in 0..n {
        let (e, _) = c.pick(&[], 0).unwrap();
        *m.entry(e.zone.clone()).or_default() += 1;
    }
    m
}

/// Two sidecars given the same config at the same version must not
/// pick in lockstep (they did when the seed came from the version).
#[test]
fn sidecars_with_the_same_config_pick_independently() {
    fn picks(c: &Cluster) -> Vec<String> {
        (0..64)
            .map(|_| c.pick(&[], 0).unwrap().0.authority.to_string())
            .collect()
    }
    // Built on two threads, as two sidecar processes would: each draws
    // its own OS randomness.
    let a = std::thread::spawn(|| picks(&cluster())).join().unwrap();
    let b = std::thread::spawn(|| picks(&cluster())).join().unwrap();
    assert_ne!(a, b);
}

#[test]
fn local_zone_keeps_all_traffic_while_healthy() {
    let c = cluster();
    assert_eq!(c.tiers.len(), 3);
    // One gateway address carries two zones: distinct authorities.
    assert_ne!(c.tiers[1][0].authority, c.tiers[2][0].authority);
    let s = zone_shares(&c, 2000);
    assert_eq!(s.get("z1"), Some(&2000), "{s:?}");
}

#[test]
fn spills_over_in_proportion_then_fails_over_whole() {
    let c = cluster();
    c.tiers[0][0].eject(Duration::from_secs(60));
    // 50% healthy * 1.4 = 70% stays local, 30% spills to the region.
    let s = zone_shares(&c, 4000);
    let local = *s.get("z1").unwrap() as f64 / 4000.0;
    assert!((0.64..0.76).contains(&local), "local share {local}: {s:?}");
    assert!(
        !s.contains_key("z3"),
        "the next region is not needed: {s:?}"
    );
    c.tiers[0][1].set_probe(false);
    let s = zone_shares(&c, 1000);
    assert_eq!(s.get("z2"), Some(&1000), "{s:?}");
    c.tiers[1][0].eject(Duration::from_secs(60));
    let s = zone_shares(&c, 1000);
    assert_eq!(s.get("z3"), Some(&1000), "{s:?}");
    // A recovered probe clears the ejection.
    c.tiers[0][0].set_probe(false);
    c.tiers[0][0].set_probe(true);
    assert!(c.tiers[0][0].available());
}

#[test]
fn a_dead_gateway_path_does_not_halve_a_remote_zone() {
    let cfg = vec![pb::Cluster {
        service: "api".into(),
        protocol: "http".into(),
        endpoints: vec![
            ep("127.0.0.5", "z2", 1, 3, true),
            ep("127.0.0.6", "z2", 1, 3, true),
            ep("127.0.0.5", "z3", 2, 1, true),
        ],
        ..Default::default()
    }];
    let c = Clusters::build(&cfg, &Clusters::default(), 1, &Defaults::default())
        .unwrap()
        .by_service["api"]
        .clone();
    c.tiers[0][0].set_probe(false);
    for _ in 0..500 {
        let (e, tier) = c.pick(&[], 0).unwrap();
        assert_eq!(
            tier, 0,
            "z2 is still fully healthy through its other gateway"
        );
        assert_eq!(e.target.addr.to_string(), "127.0.0.6:15006");
    }
}

#[test]
fn retries_move_to_the_next_locality_and_panic_mode_still_answers() {
    let c = cluster();
    let (first, tier) = c.pick(&[], 0).unwrap();
    assert_eq!(tier, 0);
    let (second, tier) = c.pick(std::slice::from_ref(&first), 1).unwrap();
    assert_eq!((second.zone.as_str(), tier), ("z2", 1));
    let (third, tier) = c.pick(&[first.clone(), second.clone()], 2).unwrap();
    assert_eq!((third.zone.as_str(), tier), ("z3", 2));
    // Nothing left past tier 2: fall back to an untried local endpoint.
    let (fourth, tier) = c.pick(&[first.clone(), second, third], 3).unwrap();
    assert_eq!(tier, 0);
    assert!(!Arc::ptr_eq(&fourth, &first));
    // A failed path to a remote zone: the next attempt takes another
    // available path to that zone, not a dead endpoint of a closer tier.
    let cfg = vec![pb::Cluster {
        service: "api".into(),
        protocol: "http".into(),
        endpoints: vec![
            ep("127.0.0.1", "z1", 0, 1, false),
            ep("127.0.0.5", "z3", 2, 1, true),
            ep("127.0.0.6", "z3", 2, 1, true),
        ],
        ..Default::default()
    }];
    let c2 = Clusters::build(&cfg, &Clusters::default(), 1, &Defaults::default())
        .unwrap()
        .by_service["api"]
        .clone();
    c2.tiers[0][0].set_probe(false);
    let via5 = c2.tiers[1][0].clone();
    let (next, tier) = c2.pick(std::slice::from_ref(&via5), 2).unwrap();
    assert_eq!(tier, 1);
    assert_eq!(next.target.addr.to_string(), "127.0.0.6:15006");
    // Everything ejected: still pick something rather than fail.
    for e in &c.endpoints {
        e.eject(Duration::from_secs(60));
    }
    assert!(c.pick(&[], 0).is_some());
}
