//! Rotating the mesh root, with an overlap during which both roots are
//! trusted. `ternctl ca rotate start` makes a new root active and certifies
//! it with the old one (the cross-signed root travels in chains, so members
//! that trust only the old root still build paths); zones then renew their
//! CAs under the new root on their own. `ternctl ca rotate finish` drops
//! the old root once nothing issued under it can still be in use. The
//! `MeshTrust` resource carries the roots to every zone and proxy.

use std::time::Duration;

use common::pki::{self, Ca};
use model::resource::{self, MeshRoot, MeshSpec, MeshTrustSpec, Resource};
use model::token;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::authority::{Roots, META_CROSS, META_PREVIOUS_ROOT, META_ROTATION, ROOT_VALIDITY};
use crate::membership::{self, Refused};
use crate::store::{StoreError, Tx};
use crate::State;

#[derive(Serialize, Deserialize, Clone, Debug)]
#[serde(rename_all = "camelCase")]
struct Rotation {
    started_at: u64,
    previous: String,
    generation: u64,
}

fn rotation(st: &State) -> Result<Option<Rotation>, StoreError> {
    Ok(st
        .store
        .meta_get(META_ROTATION)?
        .and_then(|b| serde_json::from_slice(&b).ok()))
}

/// Write `MeshTrust/default` from the roots (a no-op when unchanged).
pub fn publish(tx: &mut Tx<'_>, roots: &Roots, now: u64) -> Result<(), StoreError> {
    let spec = MeshTrustSpec {
        active: roots.active_fingerprint.clone(),
        roots: roots
            .trusted_pem
            .iter()
            .filter_map(|pem| {
                let der = pki::first_cert(pem).ok()?;
                Some(MeshRoot {
                    fingerprint: pki::fingerprint(&der),
                    not_after: pki::not_after(&der)
                        .map(|t| humantime::format_rfc3339_seconds(t).to_string())
                        .unwrap_or_default(),
                    certificate: pem.clone(),
                })
            })
            .collect(),
        // One cross-signed root at most (one rotation at a time).
        cross_signed: if roots.chain_extra_pem.is_empty() {
            vec![]
        } else {
            vec![roots.chain_extra_pem.clone()]
        },
    };
    tx.put(
        Resource {
            api_version: resource::API_VERSION.into(),
            kind: "MeshTrust".into(),
            metadata: resource::Metadata {
                name: "default".into(),
                ..Default::default()
            },
            spec: serde_json::to_value(spec).unwrap_or_default(),
        },
        &token::fmt_unix(now),
    )?;
    Ok(())
}

/// Make sure `MeshTrust/default` matches the roots (first start, upgrades).
pub fn ensure_published(st: &State) -> Result<(), StoreError> {
    let roots = st.authority.roots();
    st.store
        .transact(|tx| publish(tx, &roots, token::now_unix()))
}

/// Start a rotation: a new active root, both trusted.
pub fn start(st: &State) -> Result<Value, Refused> {
    if let Some(r) = rotation(st)? {
        return Err(Refused::Denied(format!(
            "a root rotation is in progress (started {}); finish it first with \
             `ternctl ca rotate finish`",
            token::fmt_unix(r.started_at)
        )));
    }
    let old = st.authority.roots();
    let generation = st
        .store
        .meta_get("root_generation")?
        .and_then(|b| String::from_utf8(b).ok()?.parse::<u64>().ok())
        .unwrap_or(1)
        + 1;
    let td = &st.authority.trust_domain;
    let new = Ca::new_root_named(
        &format!("Tern mesh root CA ({td}) generation {generation}"),
        ROOT_VALIDITY,
    )
    .map_err(|e| Refused::Internal(e.to_string()))?;
    let cross = old
        .active
        .cross_sign(&new)
        .map_err(|e| Refused::Internal(e.to_string()))?;
    let now = token::now_unix();
    let rot = Rotation {
        started_at: now,
        previous: old.active_fingerprint.clone(),
        generation,
    };
    let roots = Roots {
        active_fingerprint: new
            .fingerprint()
            .map_err(|e| Refused::Internal(e.to_string()))?,
        trusted_pem: vec![
            new.cert_pem().to_string(),
            old.active.cert_pem().to_string(),
        ],
        chain_extra_pem: cross.clone(),
        active: Ca::from_pem(new.cert_pem(), &new.key_pem())
            .map_err(|e| Refused::Internal(e.to_string()))?,
    };
    st.store.transact(|tx| {
        // The previous root's key is not kept: nothing is signed with it
        // again. Its certificate stays trusted until the rotation finishes.
        tx.meta_set("root_cert", new.cert_pem().as_bytes())?;
        tx.meta_set("root_key", new.key_pem().as_bytes())?;
        tx.meta_set(META_PREVIOUS_ROOT, old.active.cert_pem().as_bytes())?;
        tx.meta_set(META_CROSS, cross.as_bytes())?;
        tx.meta_set("root_generation", generation.to_string().as_bytes())?;
        tx.meta_set(META_ROTATION, &serde_json::to_vec(&rot).unwrap_or_default())?;
        publish(tx, &roots, now)?;
        tx.audit(
            "root.rotation-started",
            &roots.active_fingerprint[..16],
            &format!("previous root {}", &rot.previous[..16]),
            now,
        )
    })?;
    let active = roots.active_fingerprint.clone();
    st.authority
        .install_roots(roots)
        .map_err(|e| Refused::Internal(e.to_string()))?;
    tracing::warn!(active = %&active[..16], previous = %&rot.previous[..16], "root rotation started");
    status(st)
}

/// Finish a rotation: drop the previous root. Refused (unless `force`)
/// while a zone has not renewed under the new root, while certificates
/// from the old chain may still be valid, or while unexpired tokens pin
/// the old root.
pub fn finish(st: &State, force: bool) -> Result<Value, Refused> {
    let Some(rot) = rotation(st)? else {
        return Err(Refused::Denied(
            "no root rotation is in progress; start one with `ternctl ca rotate start`".into(),
        ));
    };
    let roots = st.authority.roots();
    let now = token::now_unix();
    let zones = zone_roots(st, &roots.active_fingerprint)?;
    let pending: Vec<&str> = zones
        .iter()
        .filter(|z| z.renewed_at.is_none())
        .map(|z| z.zone.as_str())
        .collect();
    let ttl = workload_cert_ttl(st);
    let safe_at = zones
        .iter()
        .filter_map(|z| z.renewed_at)
        .max()
        .map(|t| t + ttl.as_secs())
        .unwrap_or(rot.started_at);
    let pinned = pinned_tokens(st, &rot, now)?;
    let mut reasons = Vec::new();
    if !pending.is_empty() {
        reasons.push(format!(
            "zone(s) {} have not renewed their CA under the new root (they do so on their \
             own while connected; is their zone-cp online?)",
            pending.join(", ")
        ));
    }
    if now < safe_at {
        reasons.push(format!(
            "workload certificates from CAs under the old root may be in use until {} (the \
             workload certificate lifetime after the last zone renewed)",
            token::fmt_unix(safe_at)
        ));
    }
    if !pinned.is_empty() {
        reasons.push(format!(
            "{} unexpired token(s) pin the old root ({}{}); a proxy or zone started with one \
             after the rotation finishes cannot make first contact. Issue new ones and revoke \
             these",
            pinned.len(),
            pinned
                .iter()
                .take(5)
                .cloned()
                .collect::<Vec<_>>()
                .join(", "),
            if pinned.len() > 5 { ", ..." } else { "" }
        ));
    }
    if !reasons.is_empty() && !force {
        return Err(Refused::Denied(format!(
            "not finishing the root rotation: {}. Pass --force to finish anyway",
            reasons.join("; ")
        )));
    }
    let new_roots = Roots {
        active_fingerprint: roots.active_fingerprint.clone(),
        trusted_pem: vec![roots.active.cert_pem().to_string()],
        chain_extra_pem: String::new(),
        active: Ca::from_pem(roots.active.cert_pem(), &roots.active.key_pem())
            .map_err(|e| Refused::Internal(e.to_string()))?,
    };
    st.store.transact(|tx| {
        tx.meta_delete(META_PREVIOUS_ROOT)?;
        tx.meta_delete(META_CROSS)?;
        tx.meta_delete(META_ROTATION)?;
        // Zone CAs under the old root are no longer trusted by anyone.
        for z in tx.zones()? {
            for c in tx.zone_cas(&z.name)? {
                if c.retired_at.is_none() && c.root_fingerprint == rot.previous {
                    tx.retire_zone_ca(&c.fingerprint, "its root was retired", now)?;
                }
            }
            membership::publish(tx, &z.name, now)?;
        }
        publish(tx, &new_roots, now)?;
        tx.audit(
            "root.rotation-finished",
            &new_roots.active_fingerprint[..16],
            &format!(
                "retired root {}{}",
                &rot.previous[..16],
                if reasons.is_empty() {
                    String::new()
                } else {
                    format!(" (forced: {})", reasons.join("; "))
                }
            ),
            now,
        )
    })?;
    st.authority
        .install_roots(new_roots)
        .map_err(|e| Refused::Internal(e.to_string()))?;
    tracing::warn!(retired = %&rot.previous[..16], forced = !reasons.is_empty(), "root rotation finished");
    status(st)
}

struct ZoneRoot {
    zone: String,
    /// When the zone's newest live CA under the active root was issued.
    renewed_at: Option<u64>,
}

fn zone_roots(st: &State, active: &str) -> Result<Vec<ZoneRoot>, StoreError> {
    let now = token::now_unix();
    let mut out = Vec::new();
    for z in st.store.zones()? {
        let live: Vec<_> = st
            .store
            .zone_cas(&z.name)?
            .into_iter()
            .filter(|c| c.retired_at.is_none() && c.not_after > now)
            .collect();
        if live.is_empty() {
            continue; // revoked, or gone: nothing to wait for
        }
        out.push(ZoneRoot {
            zone: z.name,
            renewed_at: live
                .iter()
                .filter(|c| c.root_fingerprint == active)
                .map(|c| c.issued_at)
                .max(),
        });
    }
    Ok(out)
}

fn workload_cert_ttl(st: &State) -> Duration {
    st.store
        .get("Mesh", "default")
        .ok()
        .flatten()
        .map(|s| MeshSpec::from_resource(&s.resource))
        .unwrap_or_default()
        .mtls
        .workload_cert_ttl
        .0
}

/// Unexpired, unrevoked tokens that pin the previous root and can still be
/// used (zone tokens that have joined are used up).
fn pinned_tokens(st: &State, rot: &Rotation, now: u64) -> Result<Vec<String>, StoreError> {
    Ok(st
        .store
        .tokens()?
        .into_iter()
        .filter(|t| {
            let pins_old =
                t.pin == rot.previous || (t.pin.is_empty() && t.issued_at <= rot.started_at);
            pins_old
                && t.expires_at > now
                && !(t.kind == "zone" && t.used_at.is_some())
                && !membership::is_revoked(st, &t.id)
        })
        .map(|t| t.id)
        .collect())
}

/// The roots, the rotation in progress, and where each zone's CA stands.
pub fn status(st: &State) -> Result<Value, Refused> {
    let roots = st.authority.roots();
    let rot = rotation(st)?;
    let now = token::now_unix();
    let zones = zone_roots(st, &roots.active_fingerprint)?;
    let trusted: Vec<Value> = roots
        .trusted_pem
        .iter()
        .filter_map(|pem| {
            let der = pki::first_cert(pem).ok()?;
            let fp = pki::fingerprint(&der);
            Some(json!({
                "fingerprint": fp,
                "active": fp == roots.active_fingerprint,
                "notAfter": pki::not_after(&der).ok().map(|t| humantime::format_rfc3339_seconds(t).to_string()),
            }))
        })
        .collect();
    Ok(json!({
        "trustDomain": st.authority.trust_domain,
        "active": roots.active_fingerprint,
        "roots": trusted,
        "rotation": rot.as_ref().map(|r| json!({
            "startedAt": token::fmt_unix(r.started_at),
            "previous": r.previous,
            "pinnedTokens": pinned_tokens(st, r, now).map(|v| v.len()).unwrap_or(0),
        })),
        "zones": zones.iter().map(|z| json!({
            "zone": z.zone,
            "onActiveRoot": z.renewed_at.is_some(),
            "caIssuedAt": z.renewed_at.map(token::fmt_unix),
        })).collect::<Vec<_>>(),
    }))
}
