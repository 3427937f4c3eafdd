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
