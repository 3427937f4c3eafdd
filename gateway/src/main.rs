use clap::Parser;

fn main() -> anyhow::Result<()> {
    let cfg = gateway::Config::parse();
    if !(cfg.duplicate_above_loss > 0.0 && cfg.duplicate_above_loss <= 1.0) {
        eprintln!(
            "gateway: invalid configuration: --duplicate-above-loss must be in (0, 1]; 1 disables"
        );
        std::process::exit(64);
    }
    if cfg.workers == 0 {
        eprintln!("gateway: invalid configuration: --workers must be at least 1");
        std::process::exit(64);
    }
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
        let running = match gateway::start(cfg).await {
            Ok(r) => r,
            Err(e) => {
                eprintln!("gateway: {e:#}");
                std::process::exit(64);
            }
        };
        common::telemetry::shutdown_signal().await;
        tracing::info!("shutting down");
        running.shutdown().await;
        Ok(())
    })
}
