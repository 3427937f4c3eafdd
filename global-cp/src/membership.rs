//! Zone membership: joining (a zone token joins once), re-joining (an admin
//! action the global records), CA renewal over the zone's authenticated
//! stream, and revocation; and the `ZoneCa` resources that tell every mesh
//! member which zone intermediates to accept.
//!
//! A zone is *joined* while it has a live intermediate (issued, not retired,
//! not expired). Its sync stream is authorized only while its membership
//! token is unrevoked, its `Zone` is enabled, and the intermediate that
//! issued its identity is live; the session re-checks this on every change.

use std::time::Duration;

use common::pki;
use model::ident::SpiffeId;
use model::resource::{self, Key, Resource, ZoneCaEntry, ZoneCaSpec, ZoneSpec};
use model::token::{self, TokenError, TokenKind};

use crate::store::{StoreError, Tx, ZoneCaRecord, ZoneRecord};
use crate::State;

/// Why a request was refused.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    #[error("{0}")]
    Denied(String),
    #[error("{0}")]
    Invalid(String),
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("{0}")]
    Internal(String),
}

impl From<Refused> for tonic::Status {
    fn from(r: Refused) -> Self {
        match r {
            Refused::Denied(m) => tonic::Status::permission_denied(m),
            Refused::Invalid(m) => tonic::Status::invalid_argument(m),
            other => tonic::Status::internal(other.to_string()),
        }
    }
}

fn denied(m: impl Into<String>) -> Refused {
    Refused::Denied(m.into())
}

pub fn is_revoked(st: &State, jti: &str) -> bool {
    matches!(st.store.get("Revocation", jti), Ok(Some(_)))
}

fn live(cas: Vec<ZoneCaRecord>, now: u64) -> Vec<ZoneCaRecord> {
    cas.into_iter()
        .filter(|c| c.retired_at.is_none() && c.not_after > now)
        .collect()
}

/// Whether `zone` has joined (holds a live intermediate): a plain zone
/// token could not join it again, only a re-join token.
pub fn has_joined(st: &State, zone: &str) -> Result<bool, StoreError> {
    Ok(!live(st.store.zone_cas(zone)?, token::now_unix()).is_empty())
}

/// What a zone receives when it joins.
pub struct Admitted {
    pub intermediate_pem: String,
    pub token_id: String,
}

/// Admit a zone: check its token, use it (once), sign its CA.
pub fn join(st: &State, zone: &str, token_text: &str, csr_pem: &str) -> Result<Admitted, Refused> {
    resource::check_name("zone", zone).map_err(|e| denied(e.message))?;
    let now = token::now_unix();
    let claims = token::verify(
        token_text,
        &st.authority.signer.public_key(),
        TokenKind::Zone,
        now,
    )
    .and_then(|c| c.check_scope(zone, None).map(|_| c))
    .map_err(|e| denied(e.to_string()))?;
    let jti = claims.jti;
    // Checked before the CSR is, and again in the transaction (`join_in`).
    st.store.transact(|tx| may_join_in(tx, zone, &jti))?;
    let key_fp = pki::csr_key_fingerprint(csr_pem)
        .map_err(|e| Refused::Invalid(format!("bad CA CSR: {e}")))?;
    st.store
        .transact(|tx| join_in(tx, st, zone, &jti, csr_pem, &key_fp, now))
}

/// May `zone` join with token `jti`, read in `tx`: the token is unrevoked
/// and the zone is not disabled.
fn may_join_in(tx: &Tx<'_>, zone: &str, jti: &str) -> Result<(), Refused> {
    if tx.get("Revocation", jti)?.is_some() {
        return Err(denied(
            TokenError::Revoked {
                jti: jti.to_string(),
            }
            .to_string(),
        ));
    }
    let enabled = tx
        .get("Zone", zone)?
        .is_none_or(|s| ZoneSpec::from_resource(&s.resource).is_none_or(|z| z.enabled));
    if !enabled {
        return Err(denied(format!(
            "zone {zone} is disabled (Zone/{zone} spec.enabled: false)"
        )));
    }
    Ok(())
}

/// [`join`]'s writes, in `tx`. The token's revocation and the zone's
/// `enabled` are read again here, in the transaction that writes: a revoke
/// (or a disable) that committed after `join`'s first check would otherwise
/// be followed by the join, and the zone's new CA published in `ZoneCa`.
fn join_in(
    tx: &mut Tx<'_>,
    st: &State,
    zone: &str,
    jti: &str,
    csr_pem: &str,
    key_fp: &str,
    now: u64,
) -> Result<Admitted, Refused> {
    may_join_in(tx, zone, jti)?;
    let rec = tx.token(jti)?.ok_or_else(|| {
        denied(format!(
            "token {jti} is not in this global's records; generate a new one with \
             `ternctl generate zone-token --zone {zone}`"
        ))
    })?;
    if let Some(used_at) = rec.used_at {
        // The same zone-cp retrying a join whose answer it never got
        // (same token, same zone, same key): answer the same again.
        let retry = tx.zone_cas(zone)?.into_iter().find(|c| {
            rec.used_by.as_deref() == Some(zone)
                && c.token_id.as_deref() == Some(jti)
                && c.key_fingerprint == key_fp
                && c.retired_at.is_none()
        });
        if let Some(pem) = retry.and_then(|c| c.pem) {
            return Ok(Admitted {
                intermediate_pem: pem,
                token_id: jti.to_string(),
            });
        }
        return Err(denied(format!(
            "token {jti} was already used to join zone {} at {}; a zone token joins \
             once. If that zone control plane lost its data, authorize a re-join with \
             `ternctl generate zone-token --zone {zone} --rejoin`",
            rec.used_by.as_deref().unwrap_or("?"),
            token::fmt_unix(used_at)
        )));
    }
    let current = live(tx.zone_cas(zone)?, now);
    let rejoin = !current.is_empty();
    if rejoin && rec.purpose != "rejoin" {
        let since = tx
            .zone(zone)?
            .map(|z| {
                format!(
                    " at {} with token {}",
                    token::fmt_unix(z.joined_at),
                    z.token_id
                )
            })
            .unwrap_or_default();
        return Err(denied(format!(
            "zone {zone} has already joined{since}; a zone joins once. If its zone \
             control plane lost its data, authorize a re-join with `ternctl generate \
             zone-token --zone {zone} --rejoin` (this replaces the zone's CA and cuts \
             off whoever holds the current one)"
        )));
    }
    if !tx.use_token(jti, zone, now)? {
        return Err(denied(format!(
            "token {jti} was already used to join; a zone token joins once"
        )));
    }
    let (inter, fp) = sign_zone_ca(st, zone, csr_pem)?;
    if rejoin {
        tx.retire_zone_cas(
            zone,
            None,
            &format!("replaced by a re-join with token {jti}"),
            now,
        )?;
        tx.audit(
            "zone.rejoined",
            zone,
            &format!(
                "token {jti}; retired CA(s) {}",
                current
                    .iter()
                    .map(|c| &c.fingerprint[..16])
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            now,
        )?;
    }
    tx.add_zone_ca(&ca_record(st, zone, &inter, &fp, key_fp, Some(jti), now)?)?;
    tx.zone_joined(&ZoneRecord {
        name: zone.to_string(),
        token_id: jti.to_string(),
        intermediate_fingerprint: fp.clone(),
        joined_at: now,
        ..Default::default()
    })?;
    tx.audit(
        "zone.joined",
        zone,
        &format!("token {jti}; CA {}", &fp[..16]),
        now,
    )?;
    publish(tx, zone, now)?;
    if tx.get("Zone", zone)?.is_none() {
        tx.put(
            system_resource("Zone", zone, serde_json::json!({ "enabled": true })),
            &token::fmt_unix(now),
        )?;
    }
    Ok(Admitted {
        intermediate_pem: inter,
        token_id: jti.to_string(),
    })
}

/// Sign a zone's CA CSR with the active root; the PEM and its fingerprint.
fn sign_zone_ca(st: &State, zone: &str, csr_pem: &str) -> Result<(String, String), Refused> {
    let id = SpiffeId::zone(&st.authority.trust_domain, zone);
    let pem = st
        .authority
        .roots()
        .active
        .sign_intermediate(csr_pem, &id, st.authority.zone_ca_validity)
        .map_err(|e| Refused::Invalid(format!("bad CA CSR: {e}")))?;
    let fp = pki::pem_fingerprint(&pem).map_err(|e| Refused::Internal(e.to_string()))?;
    Ok((pem, fp))
}

fn ca_record(
    st: &State,
    zone: &str,
    pem: &str,
    fp: &str,
    key_fp: &str,
    token_id: Option<&str>,
    now: u64,
) -> Result<ZoneCaRecord, Refused> {
    let der = pki::first_cert(pem).map_err(|e| Refused::Internal(e.to_string()))?;
    let not_after = pki::not_after(&der)
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_secs())
        .unwrap_or(now);
    Ok(ZoneCaRecord {
        fingerprint: fp.to_string(),
        zone: zone.to_string(),
        pem: Some(pem.to_string()),
        issued_at: now,
        not_after,
        root_fingerprint: st.authority.root_fingerprint(),
        key_fingerprint: key_fp.to_string(),
        token_id: token_id.map(str::to_string),
        retired_at: None,
        retired_why: None,
    })
}

fn system_resource(kind: &str, name: &str, spec: serde_json::Value) -> Resource {
    Resource {
        api_version: resource::API_VERSION.into(),
        kind: kind.into(),
        metadata: resource::Metadata {
            name: name.to_string(),
            ..Default::default()
        },
        spec,
    }
}

/// Write `ZoneCa/<zone>` from the zone's live intermediates, or delete it
/// when there are none (the zone is then trusted by no one).
pub fn publish(tx: &mut Tx<'_>, zone: &str, now: u64) -> Result<(), StoreError> {
    let cas = live(tx.zone_cas(zone)?, now);
    if cas.is_empty() {
        tx.delete(
            &Key {
                kind: "ZoneCa".into(),
                name: zone.into(),
            },
            None,
        )?;
        return Ok(());
    }
    let spec = ZoneCaSpec {
        certificates: cas
            .iter()
            .map(|c| ZoneCaEntry {
                fingerprint: c.fingerprint.clone(),
                issued_at: token::fmt_unix(c.issued_at),
                not_after: Some(token::fmt_unix(c.not_after)),
            })
            .collect(),
    };
    tx.put(
        system_resource(
            "ZoneCa",
            zone,
            serde_json::to_value(spec).unwrap_or_default(),
        ),
        &token::fmt_unix(now),
    )?;
    Ok(())
}

/// May this zone, presenting an identity issued by the intermediate with
/// `issuer_fp`, sync now? Checked when its stream opens and on every change.
pub fn authorized(st: &State, zone: &str, issuer_fp: &str) -> Result<(), String> {
    st.store
        .transact(|tx| authorized_in(tx, zone, issuer_fp, token::now_unix()))
        .map_err(|e| e.to_string())?
}

/// [`authorized`], read in `tx`: a write on the zone's behalf made in the
/// same transaction cannot follow a revocation (or a disable) that
/// committed before it.
pub fn authorized_in(
    tx: &Tx<'_>,
    zone: &str,
    issuer_fp: &str,
    now: u64,
) -> Result<Result<(), String>, StoreError> {
    let Some(rec) = tx.zone(zone)? else {
        return Ok(Err(format!("zone {zone} has not joined")));
    };
    if tx.get("Revocation", &rec.token_id)?.is_some() {
        return Ok(Err(format!(
            "the token zone {zone} joined with ({}) has been revoked; generate a new one with \
             `ternctl generate zone-token --zone {zone}` and restart the zone-cp with it",
            rec.token_id
        )));
    }
    let enabled = tx
        .get("Zone", zone)?
        .is_none_or(|s| ZoneSpec::from_resource(&s.resource).is_none_or(|z| z.enabled));
    if !enabled {
        return Ok(Err(format!(
            "zone {zone} is disabled (Zone/{zone} spec.enabled: false)"
        )));
    }
    let cas = live(tx.zone_cas(zone)?, now);
    if !cas.iter().any(|c| c.fingerprint == issuer_fp) {
        return Ok(Err(format!(
            "zone {zone} presented an identity from a zone CA that is no longer trusted (the \
             zone re-joined elsewhere, or the CA expired); restart this zone-cp with a new \
             zone token"
        )));
    }
    Ok(Ok(()))
}

/// Issue a new intermediate to a zone for a new key (renewal, or a new
/// active root). The one the zone signs with now (`current_fp`) stays
/// trusted until it expires, so certificates it issued keep working; the
/// zone's other intermediates are retired.
pub fn renew(
    st: &State,
    zone: &str,
    issuer_fp: &str,
    csr_pem: &str,
    current_fp: &str,
) -> Result<String, Refused> {
    authorized(st, zone, issuer_fp).map_err(Refused::Denied)?;
    let now = token::now_unix();
    let live_now = live(st.store.zone_cas(zone)?, now);
    if !live_now.iter().any(|c| c.fingerprint == current_fp) {
        return Err(denied(format!(
            "zone {zone} asked to renew from CA {}, which is not one of its live CAs",
            &current_fp[..16.min(current_fp.len())]
        )));
    }
    let key_fp = pki::csr_key_fingerprint(csr_pem)
        .map_err(|e| Refused::Invalid(format!("bad CA CSR: {e}")))?;
    let (inter, fp) = sign_zone_ca(st, zone, csr_pem)?;
    let rec = ca_record(st, zone, &inter, &fp, &key_fp, None, now)?;
    st.store.transact(|tx| {
        // Again inside the write: a revocation committed since the check
        // above must not be followed by a new, published CA.
        authorized_in(tx, zone, issuer_fp, now)?.map_err(Refused::Denied)?;
        tx.add_zone_ca(&rec)?;
        tx.zone_renewed(zone, &fp)?;
        for old in live(tx.zone_cas(zone)?, now) {
            if old.fingerprint != fp && old.fingerprint != current_fp {
                tx.retire_zone_ca(&old.fingerprint, "superseded by a renewal", now)?;
            }
        }
        tx.audit(
            "zone.ca-renewed",
            zone,
            &format!("CA {} (from {})", &fp[..16], &current_fp[..16]),
            now,
        )?;
        publish(tx, zone, now)?;
        Ok::<_, Refused>(())
    })?;
    tracing::info!(zone, ca = %&fp[..16], "issued a renewed zone CA");
    Ok(inter)
}

/// After a token is revoked in `tx`: if it is a zone's membership token,
/// that zone is out. Its CAs are retired (so nobody in the mesh accepts its
/// certificates), its `ZoneCa` and `ZoneIngress` are withdrawn, in the same
/// transaction as the revocation. Idempotent: revoking the token again
/// runs it again, which withdraws whatever was left (a repair) and changes
/// nothing, not even the audit, when nothing was.
pub fn on_revoked(tx: &mut Tx<'_>, jti: &str, now: u64) -> Result<Option<String>, StoreError> {
    let zone = tx
        .sql()
        .query_row("SELECT name FROM zones WHERE token_id = ?1", [jti], |r| {
            r.get::<_, String>(0)
        });
    let zone = match zone {
        Ok(z) => z,
        Err(rusqlite::Error::QueryReturnedNoRows) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let retired = tx.retire_zone_cas(&zone, None, &format!("zone token {jti} revoked"), now)?;
    let listed = tx.get("ZoneCa", &zone)?.is_some();
    publish(tx, &zone, now)?;
    let ingress = tx.delete(
        &Key {
            kind: "ZoneIngress".into(),
            name: zone.clone(),
        },
        None,
    )?;
    if retired > 0 || listed || ingress {
        tx.audit("zone.revoked", &zone, &format!("token {jti}"), now)?;
    }
    Ok(Some(zone))
}

/// Bring records written by earlier versions up to date: tokens that zones
/// joined with are marked used, zones get their CA on record, and every
/// zone's `ZoneCa` is published. Also prunes expired CAs from `ZoneCa`.
pub fn reconcile(st: &State, zone_ca_validity: Duration) -> Result<(), StoreError> {
    let now = token::now_unix();
    let zones = st.store.zones()?;
    let revoked: Vec<bool> = zones.iter().map(|z| is_revoked(st, &z.token_id)).collect();
    let root_fp = st.authority.root_fingerprint();
    st.store.transact(|tx| {
        tx.sql().execute(
            "UPDATE tokens SET used_at = (SELECT joined_at FROM zones WHERE zones.token_id = tokens.id),
               used_by = (SELECT name FROM zones WHERE zones.token_id = tokens.id)
             WHERE used_at IS NULL AND id IN (SELECT token_id FROM zones)",
            [],
        )?;
        for (z, revoked) in zones.iter().zip(revoked) {
            if tx.zone_cas(&z.name)?.is_empty() {
                tx.add_zone_ca(&ZoneCaRecord {
                    fingerprint: z.intermediate_fingerprint.clone(),
                    zone: z.name.clone(),
                    pem: None,
                    issued_at: z.joined_at,
                    not_after: z.joined_at + zone_ca_validity.as_secs(),
                    root_fingerprint: root_fp.clone(),
                    key_fingerprint: String::new(),
                    token_id: Some(z.token_id.clone()),
                    retired_at: revoked.then_some(now),
                    retired_why: revoked.then(|| "zone token revoked".to_string()),
                })?;
            }
            publish(tx, &z.name, now)?;
        }
        Ok(())
    })
}

/// Every minute: drop expired CAs from `ZoneCa`, publish CA expiry metrics,
/// and warn about zones whose CA nears expiry without a renewal.
pub fn spawn_maintenance(st: std::sync::Arc<State>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(60));
        loop {
            tick.tick().await;
            if let Err(e) = reconcile(&st, st.authority.zone_ca_validity) {
                tracing::error!(error = %e, "zone CA maintenance failed");
            }
            let root_end = st
                .authority
                .roots()
                .active
                .cert_der()
                .ok()
                .and_then(|d| pki::not_after(&d).ok());
            if let Some(t) = root_end {
                st.metrics.root_ca_expiry.set(unix(t) as i64);
                if t < std::time::SystemTime::now() + Duration::from_secs(365 * 24 * 3600) {
                    tracing::warn!(not_after = %humantime::format_rfc3339_seconds(t),
                        "the mesh root CA expires within a year; rotate it with `ternctl ca rotate start`");
                }
            }
            let now = token::now_unix();
            for z in st.store.zones().unwrap_or_default() {
                let newest = live(st.store.zone_cas(&z.name).unwrap_or_default(), now)
                    .into_iter()
                    .map(|c| (c.not_after, c.issued_at))
                    .max();
                let Some((end, issued)) = newest else {
                    continue;
                };
                st.metrics
                    .zone_ca_expiry
                    .get_or_create(&vec![("zone".into(), z.name.clone())])
                    .set(end as i64);
                if now + (end - issued.min(end)) / 6 >= end {
                    tracing::warn!(zone = %z.name, not_after = %token::fmt_unix(end),
                        "the zone's CA expires soon and it has not renewed it; is its zone-cp connected?");
                }
            }
        }
    });
}

fn unix(t: std::time::SystemTime) -> u64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
pub(crate) mod tests;
