/// mimalloc instead of glibc's malloc: every request allocates and frees a
/// few buffers over 1 KiB (hyper's read buffer, TLS records), and glibc
/// consolidates its fast bins on each of those; closed-loop throughput of the
/// sidecar pair is 5–8% higher with mimalloc (docs/performance.md). Built
/// with `no_thp`: otherwise mimalloc advises huge pages for its arenas and a
/// sidecar's resident memory grows by about 7 MB.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    let cfg: dataplane::Config = common::telemetry::parse_config();
    let rt = common::telemetry::data_runtime("dataplane", cfg.workers)?;
    rt.block_on(async move {
        common::telemetry::init_tracing("info", cfg.json_logs);
        common::tls::install_provider();
        let drain = cfg.drain;
        let running = match dataplane::start(cfg).await {
            Ok(r) => r,
            Err(e) => {
                eprintln!("dataplane: {e:#}");
                std::process::exit(64);
            }
        };
        common::telemetry::shutdown_signal().await;
        tracing::info!(?drain, "shutting down: deregistering and draining");
        running.shutdown(drain).await;
        Ok(())
    })
}
