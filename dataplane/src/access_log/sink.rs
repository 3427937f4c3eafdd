//! Where access log lines wait for the disk: one buffer, written by a thread
//! of its own once a second or when 32 KiB are waiting (as Envoy's file
//! logger flushes, at 64 KiB), so a request costs an append under a short lock and
//! never a wake-up, a syscall or a hand-off to tokio's blocking pool.
//!
//! The buffer is bounded: while a slow disk or a blocked stdout holds the
//! writer, lines past `MAX_PENDING` bytes are dropped and counted. Closing
//! the sink (a new policy, no policy, or the proxy stopping) writes what is
//! waiting, then ends the thread.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;

/// Written at least this often while lines wait.
pub const FLUSH_EVERY: Duration = Duration::from_secs(1);
/// Written at once when this much waits. Small enough that the two buffers
/// (filling and being written) rarely grow past twice this.
const FLUSH_BYTES: usize = 32 * 1024;
/// Lines that find this many bytes waiting are dropped.
const MAX_PENDING: usize = 4 * 1024 * 1024;

#[derive(Default)]
struct Pending {
    text: String,
    lines: u64,
    /// The writer was woken for a full buffer and has not taken it yet.
    woken: bool,
    closed: bool,
}

struct Inner {
    pending: Mutex<Pending>,
    wake: Condvar,
}

/// The proxy's side of one writer thread.
pub struct Sink {
    inner: Arc<Inner>,
    done: Mutex<Option<std::sync::mpsc::Receiver<()>>>,
    dropped: Counter,
}

impl Sink {
    /// A writer thread appending to `file` (made 0640 inside its folder if
    /// missing), or writing to stdout.
    /// `every` is how long a line may wait (`FLUSH_EVERY` but in tests).
    pub fn start(
        file: Option<PathBuf>,
        every: Duration,
        written: Counter,
        dropped: Counter,
    ) -> Self {
        let inner = Arc::new(Inner {
            pending: Mutex::new(Pending {
                text: String::with_capacity(2 * FLUSH_BYTES),
                ..Default::default()
            }),
            wake: Condvar::new(),
        });
        let (done_tx, done) = std::sync::mpsc::channel();
        let thread_inner = inner.clone();
        let thread_dropped = dropped.clone();
        let spawned = std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || {
                write_loop(
                    &thread_inner,
                    file.as_deref(),
                    every,
                    &written,
                    &thread_dropped,
                );
                let _ = done_tx.send(());
            });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the access log writer; lines are dropped until the policy changes");
            inner
                .pending
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .closed = true;
        }
        Self {
            inner,
            done: Mutex::new(Some(done)),
            dropped,
        }
    }

    /// Queue one line (without its newline).
    #[cfg(test)]
    pub fn push(&self, line: &str) {
        self.push_with(|b| b.push_str(line));
    }

    /// Queue one line, written by `write` straight into the buffer (no
    /// string of its own); the newline is added here.
    pub fn push_with(&self, write: impl FnOnce(&mut String)) {
        let mut p = self.inner.pending.lock().unwrap_or_else(|p| p.into_inner());
        if p.closed || p.text.len() >= MAX_PENDING {
            drop(p);
            self.dropped.inc();
            return;
        }
        write(&mut p.text);
        p.text.push('\n');
        p.lines += 1;
        if p.text.len() >= FLUSH_BYTES && !p.woken {
            p.woken = true;
            drop(p);
            self.inner.wake.notify_one();
        }
    }

    /// Write what waits and end the thread, waiting for it up to `limit`.
    pub fn close(&self, limit: Duration) {
        self.end();
        let done = self.done.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(done) = done {
            let _ = done.recv_timeout(limit);
        }
    }
}

impl Sink {
    /// No more lines: the thread writes what waits and ends.
    fn end(&self) {
        self.inner
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .closed = true;
        self.inner.wake.notify_one();
    }
}

impl Drop for Sink {
    /// A replaced writer finishes in the background: nothing waits for it.
    fn drop(&mut self) {
        self.end();
    }
}

fn open(file: Option<&Path>) -> std::io::Result<Box<dyn Write>> {
    let Some(path) = file else {
        return Ok(Box::new(std::io::stdout()));
    };
    // The --access-log-dir folder, made if it is missing.
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let mut o = std::fs::OpenOptions::new();
    o.create(true).append(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut o, 0o640);
    Ok(Box::new(o.open(path)?))
}

fn write_loop(
    inner: &Inner,
    file: Option<&Path>,
    every: Duration,
    written: &Counter,
    dropped: &Counter,
) {
    let mut out = match open(file) {
        Ok(o) => o,
        Err(e) => {
            let path = file.map(|p| p.display().to_string()).unwrap_or_default();
            tracing::error!(path = %path, error = %e, "cannot open the access log file; lines are dropped (and counted) until the policy changes");
            // Closed: what waits and every later line count as dropped.
            let mut p = inner.pending.lock().unwrap_or_else(|p| p.into_inner());
            p.closed = true;
            dropped.inc_by(std::mem::take(&mut p.lines));
            p.text = String::new();
            return;
        }
    };
    let mut spare = String::with_capacity(2 * FLUSH_BYTES);
    loop {
        let (lines, closed) = {
            let mut p = inner.pending.lock().unwrap_or_else(|p| p.into_inner());
            if !p.closed && p.text.len() < FLUSH_BYTES {
                p = inner
                    .wake
                    .wait_timeout(p, every)
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
            }
            p.woken = false;
            std::mem::swap(&mut p.text, &mut spare);
            (std::mem::take(&mut p.lines), p.closed)
        };
        if !spare.is_empty() {
            match out.write_all(spare.as_bytes()).and_then(|()| out.flush()) {
                Ok(()) => {
                    written.inc_by(lines);
                }
                Err(e) => {
                    dropped.inc_by(lines);
                    tracing::warn!(error = %e, "could not write access log lines");
                }
            }
            spare.clear();
            // A burst must not keep its buffer for ever.
            if spare.capacity() > 4 * FLUSH_BYTES {
                spare = String::with_capacity(2 * FLUSH_BYTES);
            }
        }
        if closed {
            let p = inner.pending.lock().unwrap_or_else(|p| p.into_inner());
            if p.text.is_empty() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_reach_the_file_in_order_when_the_sink_closes() {
        let dir = std::env::temp_dir().join(format!("tern-sink-{}", std::process::id()));
        let file = dir.join("a.log");
        let (written, dropped) = (Counter::default(), Counter::default());
        let sink = Sink::start(
            Some(file.clone()),
            FLUSH_EVERY,
            written.clone(),
            dropped.clone(),
        );
        for i in 0..1000 {
            sink.push(&format!("line {i}"));
        }
        sink.close(Duration::from_secs(10));
        let text = std::fs::read_to_string(&file).unwrap();
        let lines: Vec<_> = text.lines().collect();
        assert_eq!(lines.len(), 1000);
        assert_eq!(lines[0], "line 0");
        assert_eq!(lines[999], "line 999");
        assert_eq!(written.get(), 1000);
        assert_eq!(dropped.get(), 0);
        // Closed: later lines are counted as dropped, not lost silently.
        sink.push("late");
        assert_eq!(dropped.get(), 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn lines_for_a_file_that_cannot_be_opened_are_counted_as_dropped() {
        // A file under a regular file cannot be made.
        let (written, dropped) = (Counter::default(), Counter::default());
        let sink = Sink::start(
            Some(PathBuf::from("/dev/null/a.log")),
            FLUSH_EVERY,
            written.clone(),
            dropped.clone(),
        );
        for i in 0..10 {
            sink.push(&format!("line {i}"));
        }
        sink.close(Duration::from_secs(10));
        assert_eq!(written.get(), 0);
        assert_eq!(dropped.get(), 10, "every line is counted, none vanishes");
    }

    #[test]
    fn a_full_buffer_is_written_before_the_interval_ends() {
        let dir = std::env::temp_dir().join(format!("tern-sink-full-{}", std::process::id()));
        let file = dir.join("a.log");
        // An interval no test outlives: only the size can start a write.
        let sink = Sink::start(
            Some(file.clone()),
            Duration::from_secs(3600),
            Counter::default(),
            Counter::default(),
        );
        let line = "x".repeat(1023);
        for _ in 0..(FLUSH_BYTES / 1024 + 1) {
            sink.push(&line);
        }
        let mut len = 0;
        for _ in 0..6000 {
            len = std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0);
            if len as usize >= FLUSH_BYTES {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(len as usize >= FLUSH_BYTES, "only {len} bytes written");
        sink.close(Duration::from_secs(10));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
