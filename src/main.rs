//! The `analytics` command line: parses arguments and calls the library.

use std::path::PathBuf;
use std::process::ExitCode;

use analytics::config::{self, LoadedConfig};
use analytics::{Listeners, run};
use clap::{Parser, Subcommand};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(name = "analytics", version, about = "B25 event analytics service")]
struct Cli {
    /// Configuration file (default: $ANALYTICS_CONFIG, else ./config.yaml when present).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the service.
    Serve,
    /// Apply pending store migrations and exit.
    Migrate,
    /// Configuration tools.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Validate the configuration and print the effective values, secrets redacted.
    Check,
}

fn config_path(flag: Option<PathBuf>) -> Option<PathBuf> {
    flag.or_else(|| std::env::var_os("ANALYTICS_CONFIG").map(PathBuf::from))
        .or_else(|| {
            let default = PathBuf::from("config.yaml");
            default.exists().then_some(default)
        })
}

fn load_config(flag: Option<PathBuf>) -> Result<LoadedConfig, ExitCode> {
    let path = config_path(flag);
    let env: Vec<(String, String)> = std::env::vars().collect();
    config::load(path.as_deref(), &env).map_err(|error| {
        eprintln!("error: invalid configuration: {error}");
        ExitCode::from(2)
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let loaded = match load_config(cli.config) {
        Ok(loaded) => loaded,
        Err(code) => return code,
    };
    match cli.command {
        Command::Config {
            command: ConfigCommand::Check,
        } => {
            print!("{}", loaded.config.to_redacted_yaml());
            match &loaded.source {
                Some(path) => eprintln!("configuration {} is valid", path.display()),
                None => eprintln!(
                    "no configuration file: embedded defaults (plus environment) are valid"
                ),
            }
            if !loaded.unhonoured_keys.is_empty() {
                eprintln!(
                    "warning: accepted but not honoured yet: {}",
                    loaded.unhonoured_keys.join(", ")
                );
            }
            ExitCode::SUCCESS
        }
        Command::Serve => with_runtime(&loaded, serve(loaded.clone())),
        Command::Migrate => with_runtime(&loaded, async {
            analytics::open_store(&loaded.config).await?;
            tracing::info!("migrations applied");
            Ok(())
        }),
    }
}

fn with_runtime(
    loaded: &LoadedConfig,
    work: impl std::future::Future<Output = anyhow::Result<()>>,
) -> ExitCode {
    if let Err(error) = analytics::telemetry::logging::init(&loaded.config.logging) {
        eprintln!("error: {error:#}");
        return ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(work) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(error = %format!("{error:#}"), "analytics failed");
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(loaded: LoadedConfig) -> anyhow::Result<()> {
    let server = &loaded.config.server;
    let api = TcpListener::bind((server.host.as_str(), server.port))
        .await
        .map_err(|error| {
            anyhow::anyhow!(
                "cannot listen on {}:{} (server.host/server.port): {error}",
                server.host,
                server.port
            )
        })?;
    let metrics = if loaded.config.metrics.enabled {
        let port = loaded.config.metrics.port;
        Some(
            TcpListener::bind((server.host.as_str(), port))
                .await
                .map_err(|error| {
                    anyhow::anyhow!(
                        "cannot listen on {}:{port} (metrics.port): {error}",
                        server.host
                    )
                })?,
        )
    } else {
        None
    };
    let shutdown = CancellationToken::new();
    tokio::spawn(stop_on_signal(shutdown.clone()));
    run(loaded, Listeners { api, metrics }, shutdown).await
}

async fn stop_on_signal(shutdown: CancellationToken) {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::error!(error = %error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        () = terminate => {},
    }
    shutdown.cancel();
}
