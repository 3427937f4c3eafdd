//! Live connections and the peers they were accepted for. When the trust
//! policy changes (a zone revoked or re-joined, a root retired), every
//! registered peer is checked again and the connections whose peer is no
//! longer accepted are cut. Registering costs one map insert per
//! connection; nothing is polled per request.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use common::rustls::pki_types::{CertificateDer, UnixTime};
use common::trust::TrustPolicy;
use futures_util::future::{AbortHandle, Abortable};

/// What to do to a connection whose peer is no longer trusted (given why).
pub type OnDistrust = Box<dyn Fn(&str) + Send + Sync>;

struct Entry {
    chain: Arc<[CertificateDer<'static>]>,
    /// When the peer was accepted: the chain is judged as of then, so a
    /// certificate that merely expired since does not count as distrust.
    at: UnixTime,
    on_distrust: OnDistrust,
}

#[derive(Default)]
struct Inner {
    next: AtomicU64,
    conns: Mutex<HashMap<u64, Entry>>,
}

#[derive(Clone, Default)]
pub struct LiveConns {
    inner: Arc<Inner>,
}

/// Keeps a connection registered; dropping it unregisters.
pub struct LiveGuard {
    inner: Arc<Inner>,
    id: u64,
}

impl Drop for LiveGuard {
    fn drop(&mut self) {
        self.inner
            .conns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.id);
    }
}

impl LiveConns {
    /// Register a connection whose peer presented `chain` (leaf first).
    pub fn watch(
        &self,
        chain: Arc<[CertificateDer<'static>]>,
        on_distrust: OnDistrust,
    ) -> LiveGuard {
        let id = self.inner.next.fetch_add(1, Ordering::Relaxed);
        self.inner
            .conns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(
                id,
                Entry {
                    chain,
                    at: UnixTime::now(),
                    on_distrust,
                },
            );
        LiveGuard {
            inner: self.inner.clone(),
            id,
        }
    }

    /// Check every registered peer against `policy`; cut those it refuses.
    /// Returns how many were cut.
    pub fn sweep(&self, policy: &TrustPolicy) -> usize {
        let conns = self.inner.conns.lock().unwrap_or_else(|e| e.into_inner());
        let mut cut = 0;
        for e in conns.values() {
            let refused = match e.chain.split_first() {
                Some((leaf, rest)) => policy.verify(leaf, rest, e.at).err(),
                None => None,
            };
            if let Some(why) = refused {
                (e.on_distrust)(&why.to_string());
                cut += 1;
            }
        }
        cut
    }

    pub fn len(&self) -> usize {
        self.inner
            .conns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Register a connection; the receiver gets the reason once its peer
    /// stops being trusted (for connections that close gracefully).
    pub fn signal(
        &self,
        chain: Arc<[CertificateDer<'static>]>,
    ) -> (LiveGuard, tokio::sync::oneshot::Receiver<String>) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let tx = Mutex::new(Some(tx));
        let guard = self.watch(
            chain,
            Box::new(move |why| {
                if let Some(tx) = tx.lock().unwrap_or_else(|e| e.into_inner()).take() {
                    let _ = tx.send(why.to_string());
                }
            }),
        );
        (guard, rx)
    }

    /// Run `fut` (a connection) to its end, or until its peer stops being
    /// trusted: then `Err` with the reason. `on_cut` runs as the peer stops
    /// being trusted, before the connection is cut, so what it counts is
    /// counted by the time the peer sees the cut.
    pub async fn while_trusted<F: Future>(
        &self,
        chain: Arc<[CertificateDer<'static>]>,
        fut: F,
        on_cut: impl FnOnce() + Send + 'static,
    ) -> Result<F::Output, String> {
        let (handle, reg) = AbortHandle::new_pair();
        let reason = Arc::new(OnceLock::new());
        let r = reason.clone();
        let on_cut = std::sync::Mutex::new(Some(on_cut));
        let _guard = self.watch(
            chain,
            Box::new(move |why| {
                let _ = r.set(why.to_string());
                let f = on_cut.lock().unwrap_or_else(|e| e.into_inner()).take();
                if let Some(f) = f {
                    f();
                }
                handle.abort();
            }),
        );
        Abortable::new(fut, reg)
            .await
            .map_err(|_| reason.get().cloned().unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use common::pki::{self, Ca};
    use common::trust::ZoneCas;
    use std::time::Duration;

    #[tokio::test]
    async fn a_sweep_cuts_only_connections_whose_peer_is_refused() {
        common::tls::install_provider();
        let root = Ca::new_root("tern", Duration::from_secs(600)).unwrap();
        let zone = |z: &str| {
            let kc = pki::new_key_and_csr("z").unwrap();
            let pem = root
                .sign_intermediate(
                    &kc.csr_pem,
                    &model::ident::SpiffeId::zone("tern", z),
                    Duration::from_secs(600),
                )
                .unwrap();
            Ca::from_pem(&pem, &kc.key_pem).unwrap()
        };
        let (a, b) = (zone("a"), zone("b"));
        let chain = |ca: &Ca, z: &str| -> Arc<[CertificateDer<'static>]> {
            let kc = pki::new_key_and_csr("w").unwrap();
            let leaf = ca
                .sign_leaf(
                    &kc.csr_pem,
                    &model::ident::SpiffeId::workload("tern", z, "web"),
                    &[],
                    Duration::from_secs(60),
                )
                .unwrap();
            vec![pki::first_cert(&leaf).unwrap(), ca.cert_der().unwrap()].into()
        };
        let live = LiveConns::default();
        let only = |cas: &[(&str, &Ca)]| {
            TrustPolicy::new(
                "tern",
                vec![root.cert_der().unwrap()],
                ZoneCas::Only(
                    cas.iter()
                        .map(|(z, c)| (z.to_string(), [c.fingerprint().unwrap()].into()))
                        .collect(),
                ),
            )
        };
        // Two live connections, one from each zone.
        let cut = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = || {
            let c = cut.clone();
            move || {
                c.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        };
        let conn_a = live.while_trusted(chain(&a, "a"), std::future::pending::<()>(), count());
        let conn_b = live.while_trusted(chain(&b, "b"), std::future::pending::<()>(), count());
        tokio::pin!(conn_a, conn_b);
        tokio::select! { biased; _ = &mut conn_a => {}, _ = &mut conn_b => {}, _ = async {} => {} }
        assert_eq!(live.len(), 2);
        // Both zones trusted: nothing is cut.
        assert_eq!(live.sweep(&only(&[("a", &a), ("b", &b)])), 0);
        // Zone b revoked: its connection ends with the reason, a's lives on;
        // the cut is counted as the sweep runs, before the connection ends.
        assert_eq!(live.sweep(&only(&[("a", &a)])), 1);
        assert_eq!(cut.load(std::sync::atomic::Ordering::SeqCst), 1);
        let why = (&mut conn_b).await.unwrap_err();
        assert!(why.contains("no longer trusts"), "{why}");
        assert_eq!(live.len(), 1, "an ended connection unregisters");
        tokio::select! { biased; _ = &mut conn_a => panic!("a was cut"), _ = async {} => {} }

        // A peer whose certificate merely expired since the handshake is not
        // cut by a trust change (TLS does not re-check expiry either).
        let kc = pki::new_key_and_csr("w").unwrap();
        let short = a
            .sign_leaf(
                &kc.csr_pem,
                &model::ident::SpiffeId::workload("tern", "a", "batch"),
                &[],
                Duration::from_secs(1),
            )
            .unwrap();
        let chain: Arc<[CertificateDer<'static>]> =
            vec![pki::first_cert(&short).unwrap(), a.cert_der().unwrap()].into();
        let _g = live.watch(chain, Box::new(|_| panic!("cut for expiry")));
        // Wait (on the condition) until it has expired.
        let not_after = common::tls::Identity::from_pem(&short, &kc.key_pem)
            .unwrap()
            .not_after;
        while std::time::SystemTime::now() <= not_after {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(live.sweep(&only(&[("a", &a)])), 0);
    }
}
