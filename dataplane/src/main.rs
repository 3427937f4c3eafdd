use clap::Parser;

fn main() -> anyhow::Result<()> {
    let cfg = dataplane::Config::parse();
    if cfg.workers == 0 {
        eprintln!("dataplane: invalid configuration: --workers must be at least 1");
        std::process::exit(64);
    }
    // One worker: a current-thread runtime, no work-stealing overhead.
    let rt = if cfg.workers == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(cfg.workers)
            .enable_all()
            .build()?
    };
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
