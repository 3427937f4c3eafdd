//! A WAN link emulator: a UDP and TCP relay with one-way delay, jitter,
//! loss and a cut switch, set at run time. This kernel has no netem; tests
//! and benchmarks put this relay between zones instead.
//!
//! * UDP (QUIC between gateways): each datagram is dropped with probability
//!   `loss`, else delivered after `delay ± jitter` (so jitter may reorder,
//!   as on a real path). A cut drops everything.
//! * TCP: the relay terminates TCP, so it cannot drop segments. It models
//!   what loss costs TCP instead: a lost segment is recovered after about
//!   two round trips (tail-loss probe / fast retransmit), and everything
//!   behind it in that direction waits (head-of-line blocking). A cut holds
//!   all data until the link is restored.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Conditions {
    /// One-way delay (RTT is twice this).
    pub delay: Duration,
    /// Uniform jitter added to or taken from the delay.
    pub jitter: Duration,
    /// Probability in [0, 1] that a datagram (UDP) or segment (TCP) is lost.
    pub loss: f64,
    /// Nothing passes while set.
    pub cut: bool,
}

struct Rng(AtomicU64);

impl Rng {
    fn next(&self) -> f64 {
        let mut x = self.0.load(Ordering::Relaxed);
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0.store(x, Ordering::Relaxed);
        (x >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn one_way(c: &Conditions, rng: &Rng) -> Duration {
    if c.jitter.is_zero() {
        return c.delay;
    }
    let j = c.jitter.as_secs_f64() * (rng.next() * 2.0 - 1.0);
    Duration::from_secs_f64((c.delay.as_secs_f64() + j).max(0.0))
}

/// A running relay. Dropping it stops it.
pub struct Link {
    pub listen: SocketAddr,
    cond: watch::Sender<Conditions>,
    _rt: Option<tokio::runtime::Runtime>,
    tasks: Vec<tokio::task::AbortHandle>,
}

impl Drop for Link {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Link {
    pub fn set(&self, c: Conditions) {
        self.cond.send_replace(c);
    }
    pub fn conditions(&self) -> Conditions {
        *self.cond.borrow()
    }
    pub fn cut(&self, cut: bool) {
        self.cond.send_modify(|c| c.cut = cut);
    }

    /// Start a UDP relay on its own runtime (for synchronous tests).
    pub fn udp_blocking(
        listen: SocketAddr,
        target: SocketAddr,
        c: Conditions,
    ) -> std::io::Result<Link> {
        let rt = runtime()?;
        let mut l = rt.block_on(Self::udp(listen, target, c))?;
        l._rt = Some(rt);
        Ok(l)
    }

    /// Start a TCP relay on its own runtime (for synchronous tests).
    pub fn tcp_blocking(
        listen: SocketAddr,
        target: SocketAddr,
        c: Conditions,
    ) -> std::io::Result<Link> {
        let rt = runtime()?;
        let mut l = rt.block_on(Self::tcp(listen, target, c))?;
        l._rt = Some(rt);
        Ok(l)
    }

    pub async fn udp(
        listen: SocketAddr,
        target: SocketAddr,
        c: Conditions,
    ) -> std::io::Result<Link> {
        let front = Arc::new(UdpSocket::bind(listen).await?);
        let listen = front.local_addr()?;
        let (cond, rx) = watch::channel(c);
        let rng = Arc::new(Rng(AtomicU64::new(
            0x2545_f491_4f6c_dd1d ^ listen.port() as u64,
        )));
        let backs: Arc<Mutex<HashMap<SocketAddr, Arc<UdpSocket>>>> = Default::default();
        let task = tokio::spawn(async move {
            let mut buf = vec![0u8; 65536];
            loop {
                let Ok((n, client)) = front.recv_from(&mut buf).await else {
                    continue;
                };
                let back = {
                    let existing = backs.lock().unwrap().get(&client).cloned();
                    match existing {
                        Some(b) => b,
                        None => {
                            let Ok(b) = UdpSocket::bind(SocketAddr::new(listen.ip(), 0)).await
                            else {
                                continue;
                            };
                            let b = Arc::new(b);
                            backs.lock().unwrap().insert(client, b.clone());
                            // Replies from the target go back to this client.
                            let (b2, f2, rx2, rng2) =
                                (b.clone(), front.clone(), rx.clone(), rng.clone());
                            tokio::spawn(async move {
                                let mut buf = vec![0u8; 65536];
                                while let Ok((n, _)) = b2.recv_from(&mut buf).await {
                                    forward_datagram(
                                        &rx2,
                                        &rng2,
                                        buf[..n].to_vec(),
                                        f2.clone(),
                                        client,
                                    );
                                }
                            });
                            b
                        }
                    }
                };
                forward_datagram(&rx, &rng, buf[..n].to_vec(), back, target);
            }
        });
        Ok(Link {
            listen,
            cond,
            _rt: None,
            tasks: vec![task.abort_handle()],
        })
    }

    pub async fn tcp(
        listen: SocketAddr,
        target: SocketAddr,
        c: Conditions,
    ) -> std::io::Result<Link> {
        let l = TcpListener::bind(listen).await?;
        let listen = l.local_addr()?;
        let (cond, rx) = watch::channel(c);
        let rng = Arc::new(Rng(AtomicU64::new(
            0x9e37_79b9_7f4a_7c15 ^ listen.port() as u64,
        )));
        let task = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = l.accept().await else {
                    continue;
                };
                let (rx, rng) = (rx.clone(), rng.clone());
                tokio::spawn(async move {
                    let Ok(up) = TcpStream::connect(target).await else {
                        return;
                    };
                    let _ = client.set_nodelay(true);
                    let _ = up.set_nodelay(true);
                    let (cr, cw) = client.into_split();
                    let (ur, uw) = up.into_split();
                    tokio::join!(pump(cr, uw, rx.clone(), rng.clone()), pump(ur, cw, rx, rng));
                });
            }
        });
        Ok(Link {
            listen,
            cond,
            _rt: None,
            tasks: vec![task.abort_handle()],
        })
    }
}

fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
}

fn forward_datagram(
    rx: &watch::Receiver<Conditions>,
    rng: &Rng,
    data: Vec<u8>,
    sock: Arc<UdpSocket>,
    to: SocketAddr,
) {
    let c = *rx.borrow();
    if c.cut || (c.loss > 0.0 && rng.next() < c.loss) {
        return;
    }
    let d = one_way(&c, rng);
    if d.is_zero() {
        // Inline, without a task hop: a clean link adds as little as it can.
        if sock.try_send_to(&data, to).is_err() {
            tokio::spawn(async move {
                let _ = sock.send_to(&data, to).await;
            });
        }
    } else {
        tokio::spawn(async move {
            tokio::time::sleep(d).await;
            let _ = sock.send_to(&data, to).await;
        });
    }
}

/// One direction of a TCP relay: chunks are delivered in order, each no
/// earlier than read time + one-way delay (+ a loss penalty), so delays
/// accumulate the way head-of-line blocking does.
async fn pump(
    mut r: tokio::net::tcp::OwnedReadHalf,
    mut w: tokio::net::tcp::OwnedWriteHalf,
    mut cond: watch::Receiver<Conditions>,
    rng: Arc<Rng>,
) {
    let (tx, mut q) = mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let mut gate = cond.clone();
    let reader = async move {
        let mut buf = vec![0u8; 32 * 1024];
        let mut last = Instant::now();
        loop {
            let n = match r.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let c = *cond.borrow_and_update();
            let mut d = one_way(&c, &rng);
            if c.loss > 0.0 && rng.next() < c.loss {
                // Recovery of a lost segment: about two round trips.
                d += (c.delay * 4).max(Duration::from_millis(10));
            }
            let due = (Instant::now() + d).max(last);
            last = due;
            if tx.send((due, buf[..n].to_vec())).is_err() {
                break;
            }
        }
    };
    let writer = async move {
        while let Some((due, data)) = q.recv().await {
            // Only sleep when there is a delay: the timer's 1 ms granularity
            // would otherwise add latency to a "clean" link.
            if due > Instant::now() {
                tokio::time::sleep_until(due).await;
            }
            // A cut holds everything until the link is restored.
            while gate.borrow_and_update().cut {
                if gate.changed().await.is_err() {
                    return;
                }
            }
            if w.write_all(&data).await.is_err() {
                return;
            }
        }
        let _ = w.shutdown().await;
    };
    tokio::join!(reader, writer);
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn echo_udp() -> SocketAddr {
        let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let a = s.local_addr().unwrap();
        tokio::spawn(async move {
            let mut b = [0u8; 2048];
            while let Ok((n, from)) = s.recv_from(&mut b).await {
                let _ = s.send_to(&b[..n], from).await;
            }
        });
        a
    }

    async fn roundtrip(c: &UdpSocket, to: SocketAddr, wait: Duration) -> Option<Duration> {
        let t = Instant::now();
        c.send_to(b"ping", to).await.unwrap();
        let mut b = [0u8; 16];
        tokio::time::timeout(wait, c.recv_from(&mut b))
            .await
            .ok()
            .map(|_| t.elapsed())
    }

    #[tokio::test]
    async fn udp_delay_loss_and_cut() {
        let echo = echo_udp().await;
        let link = Link::udp(
            "127.0.0.1:0".parse().unwrap(),
            echo,
            Conditions {
                delay: Duration::from_millis(20),
                ..Default::default()
            },
        )
        .await
        .unwrap();
        let c = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let rtt = roundtrip(&c, link.listen, Duration::from_secs(5))
            .await
            .expect("delivered");
        assert!(
            rtt >= Duration::from_millis(40),
            "both directions are delayed: {rtt:?}"
        );
        link.cut(true);
        assert!(
            roundtrip(&c, link.listen, Duration::from_millis(300))
                .await
                .is_none(),
            "a cut drops"
        );
        link.set(Conditions {
            loss: 1.0,
            ..Default::default()
        });
        assert!(
            roundtrip(&c, link.listen, Duration::from_millis(300))
                .await
                .is_none(),
            "loss 1.0 drops"
        );
        link.set(Conditions::default());
        assert!(
            roundtrip(&c, link.listen, Duration::from_secs(5))
                .await
                .is_some(),
            "restored"
        );
    }

    #[tokio::test]
    async fn tcp_delay_and_cut_hold_data_in_order() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let target = l.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        let link = Link::tcp(
            "127.0.0.1:0".parse().unwrap(),
            target,
            Conditions {
                delay: Duration::from_millis(10),
                ..Default::default()
            },
        )
        .await
        .unwrap();
        let mut s = TcpStream::connect(link.listen).await.unwrap();
        let t = Instant::now();
        s.write_all(b"abc").await.unwrap();
        let mut b = [0u8; 3];
        s.read_exact(&mut b).await.unwrap();
        assert_eq!(&b, b"abc");
        assert!(t.elapsed() >= Duration::from_millis(20));
        link.cut(true);
        s.write_all(b"def").await.unwrap();
        assert!(
            tokio::time::timeout(Duration::from_millis(200), s.read_exact(&mut b))
                .await
                .is_err(),
            "held while cut"
        );
        link.cut(false);
        tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut b))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&b, b"def");
    }
}
