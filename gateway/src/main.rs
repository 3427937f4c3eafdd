use clap::Parser;

fn main() -> anyhow::Result<()> {
    let cfg = gateway::Config::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
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
