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
    trim_heap_periodically();
    common::telemetry::shutdown_signal().await;
    tracing::info!("shutting down");
    Ok(())
}

/// Every 10 s, hand freed heap back to the kernel. glibc keeps what a burst
/// freed in its arenas: after a thousand proxies connect at once (each
/// stream encoding its first config), RSS would go on showing the burst's
/// peak, not what the zone-cp holds (bench/propagation.sh measured about
/// 40 KB per proxy of such free memory). Envoy shrinks its heap the same way
/// (the overload manager's shrink_heap action).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim_heap_periodically() {
    extern "C" {
        fn malloc_trim(pad: usize) -> std::ffi::c_int;
    }
    let spawned = std::thread::Builder::new()
        .name("heap-trim".into())
        .spawn(|| loop {
            std::thread::sleep(std::time::Duration::from_secs(10));
            // SAFETY: malloc_trim takes no pointer and locks each arena
            // itself; it is safe to call from any thread at any time.
            unsafe {
                malloc_trim(0);
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "heap trimming not started");
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim_heap_periodically() {}
