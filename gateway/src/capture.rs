//! `--debug-capture`: a splice that also writes what it forwards (up to
//! 64 KiB per direction) to files, so an operator can confirm that a
//! gateway carries only the inner session's ciphertext.
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

static N: AtomicU64 = AtomicU64::new(0);
const LIMIT: usize = 64 * 1024;

async fn pump<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
    mut r: R,
    mut w: W,
    file: std::path::PathBuf,
) -> std::io::Result<u64> {
    let mut buf = vec![0u8; 16 * 1024];
    let mut seen = Vec::new();
    let mut total = 0u64;
    loop {
        let n = r.read(&mut buf).await?;
        if n == 0 {
            let _ = w.shutdown().await;
            break;
        }
        if seen.len() < LIMIT {
            let take = n.min(LIMIT - seen.len());
            seen.extend_from_slice(&buf[..take]);
            let _ = tokio::fs::write(&file, &seen).await;
        }
        w.write_all(&buf[..n]).await?;
        total += n as u64;
    }
    Ok(total)
}

pub async fn splice<Q, U>(quic: Q, upstream: U, dir: &Path) -> std::io::Result<(u64, u64)>
where
    Q: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let n = N.fetch_add(1, Ordering::Relaxed);
    let _ = std::fs::create_dir_all(dir);
    let (qr, qw) = tokio::io::split(quic);
    let (ur, uw) = tokio::io::split(upstream);
    let a = pump(qr, uw, dir.join(format!("flow-{n}-in.bin")));
    let b = pump(ur, qw, dir.join(format!("flow-{n}-out.bin")));
    let (x, y) = tokio::join!(a, b);
    Ok((x.unwrap_or(0), y.unwrap_or(0)))
}
