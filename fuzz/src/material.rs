//! Fixed keys and certificates the targets verify against, kept in
//! `fuzz/material/` so that the checked-in seeds (signed tokens, certificate
//! chains, CSRs) stay valid across runs. They protect nothing: a fuzz mesh
//! with trust domain [`TD`] and zone [`ZONE`].

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use common::pki::{self, Ca};
use model::ident::SpiffeId;
use model::token::Signer;

pub const TD: &str = "fuzz.test";
pub const ZONE: &str = "z1";
pub const SERVICE: &str = "web";
const TEN_YEARS: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

pub struct Material {
    pub token_pkcs8: Vec<u8>,
    pub token_public_key: Vec<u8>,
    pub root_pem: String,
    /// The zone CA's certificate and its SHA-256 fingerprint.
    pub zone_ca_pem: String,
    pub zone_ca_fingerprint: String,
    /// A workload of [`ZONE`]: leaf then zone CA, and the leaf's key.
    pub chain_pem: String,
    pub key_pem: String,
    /// A proxy's certificate request.
    pub csr_pem: String,
}

pub fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("material")
}

/// The material in [`dir`]; panics when it is missing (`cargo run -p fuzz
/// --bin seeds` writes it).
pub fn get() -> &'static Material {
    static M: OnceLock<Material> = OnceLock::new();
    M.get_or_init(|| {
        load(&dir()).expect("fuzz/material is missing; run `cargo run -p fuzz --bin seeds`")
    })
}

pub fn signer() -> Signer {
    Signer::from_pkcs8(&get().token_pkcs8).expect("fuzz/material/token.pk8 is a PKCS#8 Ed25519 key")
}

fn load(d: &Path) -> std::io::Result<Material> {
    let s = |f: &str| std::fs::read_to_string(d.join(f));
    let token_pkcs8 = std::fs::read(d.join("token.pk8"))?;
    let token_public_key = Signer::from_pkcs8(&token_pkcs8)
        .map_err(|e| std::io::Error::other(e.to_string()))?
        .public_key();
    let zone_ca_pem = s("zone-ca.pem")?;
    let der = pki::first_cert(&zone_ca_pem).map_err(|e| std::io::Error::other(e.to_string()))?;
    Ok(Material {
        token_pkcs8,
        token_public_key,
        root_pem: s("root.pem")?,
        zone_ca_fingerprint: pki::fingerprint(&der),
        zone_ca_pem,
        chain_pem: s("chain.pem")?,
        key_pem: s("key.pem")?,
        csr_pem: s("csr.pem")?,
    })
}

/// Write a new set of material into `d` (only when it has none: replacing
/// it would invalidate the corpus).
pub fn generate(d: &Path) -> anyhow::Result<()> {
    if d.join("token.pk8").exists() {
        return Ok(());
    }
    std::fs::create_dir_all(d)?;
    let (_, pkcs8) = Signer::generate();
    std::fs::write(d.join("token.pk8"), pkcs8)?;
    let root = Ca::new_root(TD, TEN_YEARS)?;
    std::fs::write(d.join("root.pem"), root.cert_pem())?;
    let zk = pki::new_key_and_csr("zone")?;
    let zone_pem = root.sign_intermediate(&zk.csr_pem, &SpiffeId::zone(TD, ZONE), TEN_YEARS)?;
    std::fs::write(d.join("zone-ca.pem"), &zone_pem)?;
    let zone = Ca::from_pem(&zone_pem, &zk.key_pem)?;
    let leaf = pki::new_key_and_csr("leaf")?;
    let id = SpiffeId::workload(TD, ZONE, SERVICE);
    let leaf_pem = zone.sign_leaf(&leaf.csr_pem, &id, &[], TEN_YEARS)?;
    std::fs::write(d.join("chain.pem"), format!("{leaf_pem}{zone_pem}"))?;
    std::fs::write(d.join("key.pem"), &leaf.key_pem)?;
    std::fs::write(d.join("csr.pem"), pki::new_key_and_csr("proxy")?.csr_pem)?;
    Ok(())
}
