fn main() -> anyhow::Result<()> {
    let cfg: gateway::Config = common::telemetry::parse_config();
    if !(cfg.duplicate_above_loss > 0.0 && cfg.duplicate_above_loss <= 1.0) {
        eprintln!(
            "gateway: invalid configuration: --duplicate-above-loss must be in (0, 1]; 1 disables"
        );
        std::process::exit(64);
    }
    let rt = common::telemetry::data_runtime("gateway", cfg.workers)?;
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
