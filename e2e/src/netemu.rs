//! A packet-level WAN emulator: two network namespaces joined by a pair of
//! TUN devices, with this process forwarding IP packets between them after
//! a one-way delay, dropping some on the way. Unlike the relay in
//! [`crate::linkemu`], nothing is terminated: the kernels' TCP and Tern's
//! QUIC on either side see the same lost packets and recover on their own.
//! (This machine's kernel has no netem; `/dev/net/tun` and `ip netns` work.)
//!
//! Loss models, chosen per run and applied to each direction separately:
//! * independent: every packet is lost with probability `loss`;
//! * bursty (Gilbert-Elliott): the link moves between a good state, where
//!   nothing is lost, and a bad one, where everything is; the chance of
//!   leaving the bad state is `1 / burst`, so bursts last `burst` packets
//!   on average and the long-run loss is still `loss`. Two copies of a
//!   datagram sent back to back are then usually lost together.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum LossModel {
    Independent,
    /// Mean burst length in packets (at least 1).
    Bursty(f64),
}

/// Decides the fate of each packet in one direction.
#[derive(Debug)]
pub struct Loss {
    loss: f64,
    model: LossModel,
    bad: bool,
    rng: u64,
}

impl Loss {
    pub fn new(loss: f64, model: LossModel, seed: u64) -> Self {
        Self {
            loss: loss.clamp(0.0, 1.0),
            model,
            bad: false,
            rng: seed | 1,
        }
    }

    fn next_f64(&mut self) -> f64 {
        let mut x = self.rng;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng = x;
        (x >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Whether the next packet is lost.
    pub fn lose(&mut self) -> bool {
        match self.model {
            LossModel::Independent => self.next_f64() < self.loss,
            LossModel::Bursty(burst) => {
                if self.loss >= 1.0 {
                    return true;
                }
                let leave_bad = 1.0 / burst.max(1.0);
                let enter_bad = self.loss * leave_bad / (1.0 - self.loss);
                let r = self.next_f64();
                self.bad = if self.bad {
                    r >= leave_bad
                } else {
                    r < enter_bad
                };
                self.bad
            }
        }
    }
}

#[derive(Default, Debug)]
pub struct Counters {
    pub passed: AtomicU64,
    pub lost: AtomicU64,
}

/// A packet queue that releases each packet once its delivery time has
/// come. The delay is the same for every packet, so arrival order is
/// delivery order.
struct DelayLine {
    q: Mutex<VecDeque<(Instant, Vec<u8>)>>,
    cv: Condvar,
}

impl DelayLine {
    fn push(&self, at: Instant, p: Vec<u8>) {
        self.q.lock().unwrap().push_back((at, p));
        self.cv.notify_one();
    }
    fn pop(&self) -> Vec<u8> {
        let mut q = self.q.lock().unwrap();
        loop {
            match q.front() {
                None => q = self.cv.wait(q).unwrap(),
                Some((at, _)) => {
                    let now = Instant::now();
                    if *at <= now {
                        return q.pop_front().expect("front exists").1;
                    }
                    let wait = *at - now;
                    q = self.cv.wait_timeout(q, wait).unwrap().0;
                }
            }
        }
    }
}

/// Run `f` on a thread that has entered the network namespace `netns` (as
/// `ip netns` names it). Sockets and devices it creates stay in that
/// namespace; the caller's threads are not moved.
pub fn in_netns<T: Send + 'static>(
    netns: &str,
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> std::io::Result<T> {
    let path = format!("/var/run/netns/{netns}");
    // setns affects only the calling thread: do it on a thread of its own.
    std::thread::spawn(move || {
        let ns = File::open(&path)?;
        // SAFETY: a plain syscall on a descriptor owned here.
        if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        f()
    })
    .join()
    .map_err(|_| std::io::Error::other("network namespace thread panicked"))?
}

/// Open a TUN device called `name` in the network namespace `netns`,
/// without packet-information headers.
pub fn open_tun(netns: &str, name: &str) -> std::io::Result<File> {
    let name = name.to_string();
    in_netns(netns, move || {
        // SAFETY: plain syscalls on descriptors owned here; `ifr` is a
        // zeroed C struct whose name is written within its bounds.
        unsafe {
            let fd = libc::open(c"/dev/net/tun".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC);
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let tun = File::from_raw_fd(fd);
            let mut ifr: libc::ifreq = std::mem::zeroed();
            if name.len() >= ifr.ifr_name.len() {
                return Err(std::io::Error::other("interface name too long"));
            }
            for (d, s) in ifr.ifr_name.iter_mut().zip(name.bytes()) {
                *d = s as libc::c_char;
            }
            ifr.ifr_ifru.ifru_flags = (libc::IFF_TUN | libc::IFF_NO_PI) as libc::c_short;
            const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
            if libc::ioctl(tun.as_raw_fd(), TUNSETIFF, &ifr) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(tun)
        }
    })
}

/// What the link does now; changed at run time through [`Control::set`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Conditions {
    /// One-way delay.
    pub delay: Duration,
    pub loss: f64,
    pub model: LossModel,
}

/// Conditions shared by both directions, with a generation number so the
/// forwarding threads notice a change without taking a lock per packet.
pub struct Control {
    now: Mutex<Conditions>,
    generation: AtomicU64,
}

impl Control {
    pub fn new(c: Conditions) -> Arc<Self> {
        Arc::new(Self {
            now: Mutex::new(c),
            generation: AtomicU64::new(0),
        })
    }
    pub fn set(&self, c: Conditions) {
        *self.now.lock().unwrap() = c;
        self.generation.fetch_add(1, Ordering::Release);
    }
    pub fn get(&self) -> Conditions {
        *self.now.lock().unwrap()
    }
}

/// Parse `delay=20ms loss=0.01 burst=3` (any order; `burst` absent or 0:
/// independent loss).
pub fn parse_conditions(s: &str) -> Result<Conditions, String> {
    let mut c = Conditions {
        delay: Duration::ZERO,
        loss: 0.0,
        model: LossModel::Independent,
    };
    for kv in s.split_whitespace() {
        let (k, v) = kv
            .split_once('=')
            .ok_or_else(|| format!("{kv:?} is not key=value"))?;
        match k {
            "delay" => c.delay = humantime::parse_duration(v).map_err(|e| format!("delay: {e}"))?,
            "loss" => {
                c.loss = v
                    .parse()
                    .map_err(|_| format!("loss: {v:?} is not a number"))?;
                if !(0.0..=1.0).contains(&c.loss) {
                    return Err("loss must be in 0..1".into());
                }
            }
            "burst" => {
                let b: f64 = v
                    .parse()
                    .map_err(|_| format!("burst: {v:?} is not a number"))?;
                c.model = if b == 0.0 {
                    LossModel::Independent
                } else if b >= 1.0 {
                    LossModel::Bursty(b)
                } else {
                    return Err("burst must be 0 (independent) or at least 1".into());
                };
            }
            _ => return Err(format!("unknown key {k:?}; use delay, loss, burst")),
        }
    }
    Ok(c)
}

/// Forward packets read from `from` to `to` under `ctl`'s conditions. Runs
/// on two threads of its own until the process exits.
pub fn forward(from: File, to: File, ctl: Arc<Control>, seed: u64, counters: Arc<Counters>) {
    let line = Arc::new(DelayLine {
        q: Mutex::new(VecDeque::new()),
        cv: Condvar::new(),
    });
    let l2 = line.clone();
    std::thread::spawn(move || {
        let mut to = to;
        loop {
            let p = l2.pop();
            // A full or downed device drops the packet, as a link would.
            let _ = to.write(&p);
        }
    });
    std::thread::spawn(move || {
        let mut from = from;
        let mut buf = vec![0u8; 65536];
        let mut seen = u64::MAX;
        let mut delay = Duration::ZERO;
        let mut loss = Loss::new(0.0, LossModel::Independent, seed);
        loop {
            let n = match from.read(&mut buf) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    eprintln!("tern-netemu: read: {e}");
                    return;
                }
            };
            let now = Instant::now();
            let g = ctl.generation.load(Ordering::Acquire);
            if g != seen {
                seen = g;
                let c = ctl.get();
                delay = c.delay;
                loss = Loss::new(c.loss, c.model, loss.rng);
            }
            if loss.lose() {
                counters.lost.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            counters.passed.fetch_add(1, Ordering::Relaxed);
            line.push(now + delay, buf[..n].to_vec());
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(mut l: Loss, n: usize) -> (f64, f64) {
        let mut lost = 0usize;
        let mut bursts = 0usize;
        let mut prev = false;
        for _ in 0..n {
            let x = l.lose();
            if x {
                lost += 1;
                if !prev {
                    bursts += 1;
                }
            }
            prev = x;
        }
        (lost as f64 / n as f64, lost as f64 / bursts.max(1) as f64)
    }

    #[test]
    fn independent_loss_has_the_asked_rate_and_no_bursts() {
        let (rate, burst) = run(Loss::new(0.03, LossModel::Independent, 7), 1_000_000);
        assert!((rate - 0.03).abs() < 0.002, "rate {rate}");
        assert!(burst < 1.1, "mean burst {burst}");
    }

    #[test]
    fn bursty_loss_keeps_the_rate_and_loses_runs_of_packets() {
        let (rate, burst) = run(Loss::new(0.01, LossModel::Bursty(3.0), 7), 2_000_000);
        assert!((rate - 0.01).abs() < 0.002, "rate {rate}");
        assert!((burst - 3.0).abs() < 0.3, "mean burst {burst}");
    }

    #[test]
    fn conditions_parse_and_bad_ones_are_named() {
        let c = parse_conditions("loss=0.03 delay=20ms burst=3").unwrap();
        assert_eq!(c.delay, Duration::from_millis(20));
        assert_eq!(c.loss, 0.03);
        assert_eq!(c.model, LossModel::Bursty(3.0));
        assert_eq!(
            parse_conditions("burst=0").unwrap().model,
            LossModel::Independent
        );
        assert!(parse_conditions("loss=2").unwrap_err().contains("0..1"));
        assert!(parse_conditions("burst=0.5")
            .unwrap_err()
            .contains("at least 1"));
        assert!(parse_conditions("jitter=1ms")
            .unwrap_err()
            .contains("unknown key"));
    }

    #[test]
    fn no_loss_and_total_loss_are_exact() {
        assert_eq!(
            run(Loss::new(0.0, LossModel::Bursty(3.0), 1), 10_000).0,
            0.0
        );
        assert_eq!(
            run(Loss::new(0.0, LossModel::Independent, 1), 10_000).0,
            0.0
        );
        assert_eq!(
            run(Loss::new(1.0, LossModel::Bursty(3.0), 1), 10_000).0,
            1.0
        );
        assert_eq!(
            run(Loss::new(1.0, LossModel::Independent, 1), 10_000).0,
            1.0
        );
    }
}
