#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config: zone_cp::Config = common::telemetry::parse_config();
    if let Err(e) = config.validate() {
        eprintln!("zone-cp: invalid configuration: {e}");
        std::process::exit(64);
    }
    common::telemetry::init_tracing("info", config.json_logs);
    common::tls::install_provider();
    let _zone = match zone_cp::start(config).await {
        Ok(z) => z,
        Err(e) => {
            eprintln!("zone-cp: {e:#}");
            std::process::exit(1);
        }
    };
    common::telemetry::shutdown_signal().await;
    tracing::info!("shutting down");
    Ok(())
}
