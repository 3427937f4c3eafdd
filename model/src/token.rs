//! Signed, expiring, revocable tokens.
//!
//! Format: `tern1.<base64url(JSON claims)>.<base64url(Ed25519 signature)>`.
//! The global control plane signs. It verifies zone tokens itself; zone
//! control planes verify dataplane tokens with the public key they receive
//! when they join. Revocation is by the token's `jti`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use ring::signature::{Ed25519KeyPair, KeyPair, UnparsedPublicKey, ED25519};
use serde::{Deserialize, Serialize};

const PREFIX: &str = "tern1";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenKind {
    Zone,
    Dataplane,
    /// An east-west gateway of one zone.
    Gateway,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// Unique id; revocation names it.
    pub jti: String,
    pub kind: TokenKind,
    pub zone: String,
    /// Dataplane tokens: the service the proxy may register as.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// Issued at, unix seconds.
    pub iat: u64,
    /// Expires at, unix seconds.
    pub exp: u64,
    /// Zone tokens: the global's sync endpoint, `host:port`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub global: Option<String>,
    /// SHA-256 fingerprint (hex) of the mesh root CA, pinned on first contact.
    pub ca: String,
    /// Trust domain of the mesh.
    pub td: String,
    /// Dataplane and gateway tokens: how many instances may be registered
    /// with this token at once (absent: the zone-cp's default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_instances: Option<u32>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("token is malformed ({0}); copy the whole token as printed by ternctl")]
    Malformed(&'static str),
    #[error("token signature is invalid: the token was altered or was not issued by this mesh")]
    BadSignature,
    #[error(
        "token {jti} expired at {at}; generate a new one with `ternctl generate {kind}-token`"
    )]
    Expired {
        jti: String,
        at: String,
        kind: &'static str,
    },
    #[error("token {jti} has been revoked")]
    Revoked { jti: String },
    #[error("token {jti} is a {got} token, but a {want} token is required")]
    WrongKind {
        jti: String,
        got: &'static str,
        want: &'static str,
    },
    #[error("token {jti} was issued for zone {token_zone:?}, not {zone:?}")]
    WrongZone {
        jti: String,
        token_zone: String,
        zone: String,
    },
    #[error("token {jti} was issued for service {token_service:?}, not {service:?}")]
    WrongService {
        jti: String,
        token_service: String,
        service: String,
    },
}

impl TokenKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TokenKind::Zone => "zone",
            TokenKind::Dataplane => "dataplane",
            TokenKind::Gateway => "gateway",
        }
    }
}

pub fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

pub fn fmt_unix(t: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(t)).to_string()
}

/// Random id, 128 bits, hex.
pub fn random_id() -> String {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 16];
    ring::rand::SystemRandom::new()
        .fill(&mut b)
        .expect("system RNG");
    b.iter().map(|x| format!("{x:02x}")).collect()
}

pub struct Signer {
    pair: Ed25519KeyPair,
}

impl Signer {
    /// Generate a new signing key; returns it with its PKCS#8 bytes to store.
    pub fn generate() -> (Self, Vec<u8>) {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).expect("ed25519 keygen");
        let bytes = pkcs8.as_ref().to_vec();
        (Self::from_pkcs8(&bytes).expect("fresh key parses"), bytes)
    }
    pub fn from_pkcs8(pkcs8: &[u8]) -> Result<Self, TokenError> {
        Ed25519KeyPair::from_pkcs8(pkcs8)
            .map(|pair| Self { pair })
            .map_err(|_| TokenError::Malformed("signing key"))
    }
    pub fn public_key(&self) -> Vec<u8> {
        self.pair.public_key().as_ref().to_vec()
    }
    pub fn sign(&self, claims: &Claims) -> String {
        let payload = B64.encode(serde_json::to_vec(claims).expect("claims serialize"));
        let signed = format!("{PREFIX}.{payload}");
        let sig = B64.encode(self.pair.sign(signed.as_bytes()).as_ref());
        format!("{signed}.{sig}")
    }
}

/// Read the claims without checking the signature. Zones use this to learn
/// where the global is and which CA to pin; the global checks the signature.
pub fn decode_unverified(token: &str) -> Result<Claims, TokenError> {
    let token = token.trim();
    let mut parts = token.split('.');
    let (Some(p), Some(payload), Some(_sig), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(TokenError::Malformed("expected three dot-separated parts"));
    };
    if p != PREFIX {
        return Err(TokenError::Malformed("unknown token format"));
    }
    let json = B64
        .decode(payload)
        .map_err(|_| TokenError::Malformed("payload is not base64url"))?;
    serde_json::from_slice(&json).map_err(|_| TokenError::Malformed("payload is not valid claims"))
}

/// Verify signature, expiry and kind. Revocation and zone/service scope are
/// checked by [`Claims::check_scope`] and the caller's revocation list.
pub fn verify(
    token: &str,
    public_key: &[u8],
    kind: TokenKind,
    now: u64,
) -> Result<Claims, TokenError> {
    let token = token.trim();
    let claims = decode_unverified(token)?;
    let (signed, sig) = token.rsplit_once('.').expect("checked by decode");
    let sig = B64
        .decode(sig)
        .map_err(|_| TokenError::Malformed("signature is not base64url"))?;
    UnparsedPublicKey::new(&ED25519, public_key)
        .verify(signed.as_bytes(), &sig)
        .map_err(|_| TokenError::BadSignature)?;
    if claims.kind != kind {
        return Err(TokenError::WrongKind {
            jti: claims.jti,
            got: claims.kind.as_str(),
            want: kind.as_str(),
        });
    }
    if now >= claims.exp {
        return Err(TokenError::Expired {
            jti: claims.jti.clone(),
            at: fmt_unix(claims.exp),
            kind: kind.as_str(),
        });
    }
    Ok(claims)
}

impl Claims {
    pub fn check_scope(&self, zone: &str, service: Option<&str>) -> Result<(), TokenError> {
        if self.zone != zone {
            return Err(TokenError::WrongZone {
                jti: self.jti.clone(),
                token_zone: self.zone.clone(),
                zone: zone.into(),
            });
        }
        if let (Some(want), Some(got)) = (service, self.service.as_deref()) {
            if want != got {
                return Err(TokenError::WrongService {
                    jti: self.jti.clone(),
                    token_service: got.into(),
                    service: want.into(),
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(exp: u64) -> Claims {
        Claims {
            jti: "abc".into(),
            kind: TokenKind::Zone,
            zone: "eu-1".into(),
            service: None,
            iat: 100,
            exp,
            global: Some("127.0.0.1:5685".into()),
            ca: "ff".into(),
            td: "tern".into(),
            max_instances: None,
        }
    }

    #[test]
    fn sign_verify_and_refusals() {
        let (s, _) = Signer::generate();
        let t = s.sign(&claims(200));
        let c = verify(&t, &s.public_key(), TokenKind::Zone, 150).unwrap();
        assert_eq!(c.zone, "eu-1");
        assert!(c.check_scope("eu-1", None).is_ok());
        assert!(matches!(
            c.check_scope("us-1", None),
            Err(TokenError::WrongZone { .. })
        ));
        assert!(matches!(
            verify(&t, &s.public_key(), TokenKind::Zone, 200),
            Err(TokenError::Expired { .. })
        ));
        assert!(matches!(
            verify(&t, &s.public_key(), TokenKind::Dataplane, 150),
            Err(TokenError::WrongKind { .. })
        ));
        // Tamper with the payload: claim another zone.
        let mut c2 = claims(200);
        c2.zone = "us-1".into();
        let forged_payload = B64.encode(serde_json::to_vec(&c2).unwrap());
        let parts: Vec<&str> = t.split('.').collect();
        let forged = format!("{}.{}.{}", parts[0], forged_payload, parts[2]);
        assert_eq!(
            verify(&forged, &s.public_key(), TokenKind::Zone, 150),
            Err(TokenError::BadSignature)
        );
        // Another mesh's key.
        let (other, _) = Signer::generate();
        assert_eq!(
            verify(&t, &other.public_key(), TokenKind::Zone, 150),
            Err(TokenError::BadSignature)
        );
        assert!(matches!(
            verify("garbage", &s.public_key(), TokenKind::Zone, 150),
            Err(TokenError::Malformed(_))
        ));
    }

    /// Over many seeded random cases: changing any one character of a valid
    /// token makes it fail verification (never a panic, never a different
    /// accepted token), and arbitrary strings are refused without a panic.
    #[test]
    fn any_change_to_a_token_is_refused() {
        use crate::testrand::Rng;
        let (s, _) = Signer::generate();
        let t = s.sign(&claims(200));
        const CHARS: &[u8] =
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.=+/ ";
        for seed in 0..3000u64 {
            let mut r = Rng::new(seed);
            let mut b = t.clone().into_bytes();
            let i = r.below(b.len());
            let c = CHARS[r.below(CHARS.len())];
            if b[i] == c {
                continue;
            }
            b[i] = c;
            let m = String::from_utf8(b).unwrap();
            // Whitespace at either end is trimmed, so it changes nothing.
            if m.trim() == t {
                continue;
            }
            assert!(
                verify(&m, &s.public_key(), TokenKind::Zone, 150).is_err(),
                "seed {seed}: {m}"
            );
            let len = r.below(400);
            let junk = r.string(CHARS, len);
            assert!(verify(&junk, &s.public_key(), TokenKind::Zone, 150).is_err());
            let _ = decode_unverified(&junk);
        }
    }
}
