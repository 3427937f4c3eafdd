#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config: global_cp::Config = common::telemetry::parse_config();
    if let Err(e) = config.validate() {
        eprintln!("global-cp: invalid configuration: {e}");
        std::process::exit(64);
    }
    common::telemetry::init_tracing("info", config.json_logs);
    common::tls::install_provider();
    let _state = match global_cp::start(config).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("global-cp: {e:#}");
            std::process::exit(1);
        }
    };
    common::telemetry::shutdown_signal().await;
    tracing::info!("shutting down");
    Ok(())
}
