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
    /// Remove what `analytics.retention` has expired, now, and print what went.
    Retention {
        #[command(subcommand)]
        command: RetentionCommand,
    },
    /// Trading analytics tools.
    Trading {
        #[command(subcommand)]
        command: TradingCommand,
    },
    /// Configuration tools.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Generate a realistic B25 event stream: HTTP load, Kafka produces, NATS
    /// publishes, or an NDJSON file.
    Loadgen(Box<analytics::loadgen::LoadgenArgs>),
    /// API key tools.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Stream messages that could not become events.
    DeadLetters {
        #[command(subcommand)]
        command: DeadLettersCommand,
    },
    /// Import an NDJSON or CSV file through the ingest pipeline.
    Import(analytics::import::ImportArgs),
    /// Same-run baseline for the benchmarks: raw SQLite insert vs batch commit.
    #[command(hide = true)]
    BenchBaseline(analytics::loadgen::baseline::BaselineArgs),
    /// Waits until a running service has committed COUNT events of a source;
    /// prints the rate from the first commit seen to the last, as JSON.
    #[command(hide = true)]
    BenchCommitted(analytics::loadgen::committed::CommittedArgs),
    /// Drains a JetStream stream as the NATS source does, storing nothing;
    /// prints the rate as JSON.
    #[command(hide = true)]
    BenchNatsDrain(analytics::loadgen::nats_drain::DrainArgs),
    /// A mock Kafka cluster for benchmarks: prints its bootstrap servers,
    /// runs until SIGTERM or Ctrl-C.
    #[command(hide = true)]
    KafkaMock(analytics::loadgen::kafka::KafkaMockArgs),
}

#[derive(Subcommand)]
enum RetentionCommand {
    /// Run retention once.
    Run,
}

#[derive(Subcommand)]
enum TradingCommand {
    /// Rebuild the trading tables (orders, fills, quotes, bars) from the
    /// stored raw events, e.g. after an upgrade from a version without them
    /// or after running with analytics.aggregation.trading off. Run it with
    /// the service stopped. Prints a JSON report.
    Rebuild,
}

#[derive(Subcommand)]
enum DeadLettersCommand {
    /// Print stored dead letters as JSON lines, oldest first.
    List {
        /// Only this source: kafka or nats.
        #[arg(long)]
        source: Option<String>,
        /// Print at most this many.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Decode every dead letter again with the current custom schemas and
    /// store the ones that now pass (under the id they got on arrival, so a
    /// repeated replay stores nothing twice); the rest stay, with the new
    /// error. Prints a JSON report.
    Replay {
        /// Only this source: kafka or nats.
        #[arg(long)]
        source: Option<String>,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Validate the configuration and print the effective values, secrets redacted.
    Check,
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Print a new random API key (once) and the security.api_keys entry
    /// holding its SHA-256; the key itself is stored nowhere.
    Generate {
        /// Who will hold the key (unique among the configured keys).
        #[arg(long)]
        name: String,
        /// Comma-separated scopes: ingest, read, admin.
        #[arg(long, value_delimiter = ',', required = true)]
        scopes: Vec<String>,
    },
}

/// `keys generate`: needs no configuration, so it works while the current
/// one is refused (e.g. `api_key_enabled: true` and no keys yet).
fn generate_key(name: &str, scopes: &[String]) -> ExitCode {
    let name = name.trim();
    if name.is_empty() {
        eprintln!("error: --name must not be empty");
        return ExitCode::from(2);
    }
    let mut scopes: Vec<&str> = scopes.iter().map(|scope| scope.trim()).collect();
    scopes.sort_unstable();
    scopes.dedup();
    if let Some(bad) = scopes
        .iter()
        .find(|scope| !config::API_KEY_SCOPES.contains(scope))
    {
        eprintln!(
            "error: unknown scope {bad:?}; scopes are {}",
            config::API_KEY_SCOPES.join(", ")
        );
        return ExitCode::from(2);
    }
    let mut secret = [0u8; 32];
    if let Err(error) = getrandom::fill(&mut secret) {
        eprintln!("error: the operating system's random source failed: {error}");
        return ExitCode::FAILURE;
    }
    let key = format!(
        "b25_{}",
        secret
            .iter()
            .map(|byte| format!("{byte:02x}"))
            .collect::<String>()
    );
    let digest = analytics::api::security::key_digest_hex(&key);
    // JSON strings are valid YAML double-quoted scalars.
    let quote = |text: &str| serde_json::to_string(text).unwrap_or_else(|_| format!("{text:?}"));
    let scopes_yaml = scopes.iter().map(|scope| quote(scope)).collect::<Vec<_>>();
    println!("API key (shown once; store it now, the service keeps only its hash):");
    println!("{key}");
    println!();
    println!("Add this entry under security.api_keys (and set security.api_key_enabled: true):");
    println!("  - name: {}", quote(name));
    println!("    sha256: \"{digest}\"");
    println!("    scopes: [{}]", scopes_yaml.join(", "));
    ExitCode::SUCCESS
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
    if let Command::Keys {
        command: KeysCommand::Generate { name, scopes },
    } = &cli.command
    {
        return generate_key(name, scopes);
    }
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
                    "warning: accepted but without effect (not implemented yet, or redis.enabled is false): {}",
                    loaded.unhonoured_keys.join(", ")
                );
            }
            ExitCode::SUCCESS
        }
        // Handled above, before the configuration; kept so the match is total.
        Command::Keys {
            command: KeysCommand::Generate { name, scopes },
        } => generate_key(&name, &scopes),
        Command::Serve => {
            // A long-running process: freed heap memory is reused, and goes
            // back to the system every few seconds instead of staying
            // resident (see `allocator`).
            if cfg!(all(target_os = "linux", target_env = "gnu"))
                && !analytics::allocator::keep_freed_memory()
            {
                eprintln!(
                    "warning: glibc refused the malloc thresholds; freed memory is handed back at once"
                );
            }
            if let Err(error) =
                analytics::allocator::start_trimming(analytics::allocator::TRIM_INTERVAL)
            {
                eprintln!("warning: cannot start the memory trimming thread: {error}");
            }
            with_runtime(&loaded, serve(loaded.clone()))
        }
        Command::Retention {
            command: RetentionCommand::Run,
        } => with_runtime(&loaded, async {
            let store = analytics::open_store(&loaded.config).await?;
            let intervals = analytics::configured_intervals(&loaded.config)?;
            let report = analytics::retention::run_once(
                &*store,
                &loaded.config.analytics.retention,
                &intervals,
                analytics::model::event::now_ms(),
            )
            .await?;
            println!("{}", serde_json::to_string(&report)?);
            Ok(())
        }),
        Command::Trading {
            command: TradingCommand::Rebuild,
        } => with_runtime(&loaded, async {
            let store = analytics::open_store(&loaded.config).await?;
            let now = analytics::model::event::now_ms();
            // Events older than the raw-event retention are gone; those
            // ahead of now by the accepted skew may exist.
            let start = now.saturating_sub(analytics::duration_ms(
                loaded.config.analytics.retention.raw_events,
            ));
            let end = now.saturating_add(analytics::duration_ms(
                loaded.config.analytics.ingestion.max_future_skew,
            )) + 1;
            let report = analytics::trading::rebuild(&*store, start, end).await?;
            println!("{}", serde_json::to_string(&report)?);
            Ok(())
        }),
        Command::Migrate => with_runtime(&loaded, async {
            analytics::open_store(&loaded.config).await?;
            tracing::info!("migrations applied");
            Ok(())
        }),
        Command::Loadgen(args) => with_tool_runtime(&loaded, async move {
            analytics::loadgen::run(*args).await.map(drop)
        }),
        Command::DeadLetters { command } => with_tool_runtime(&loaded, async {
            match command {
                DeadLettersCommand::List { source, limit } => {
                    let store = analytics::open_store(&loaded.config).await?;
                    let letters = store
                        .list_dead_letters(&analytics::store::DeadLetterQuery {
                            source,
                            after_id: 0,
                            limit,
                        })
                        .await?;
                    for letter in letters {
                        println!("{}", serde_json::to_string(&letter)?);
                    }
                }
                DeadLettersCommand::Replay { source } => {
                    let report = analytics::sources::dead_letters::replay_with_config(
                        &loaded.config,
                        source.as_deref(),
                    )
                    .await?;
                    println!("{}", serde_json::to_string(&report)?);
                }
            }
            Ok(())
        }),
        Command::Import(args) => with_tool_runtime(&loaded, async {
            let report = analytics::import::run(&loaded.config, &args).await?;
            // Rejected records are reported, not fatal; a script still
            // learns of them from the exit code.
            if report.rejected > 0 {
                anyhow::bail!("{} records were rejected", report.rejected);
            }
            Ok(())
        }),
        Command::KafkaMock(args) => with_tool_runtime(&loaded, async move {
            let (cluster, bootstrap) = analytics::loadgen::kafka::start_mock_cluster(&args)?;
            println!("{bootstrap}");
            let shutdown = CancellationToken::new();
            tokio::spawn(stop_on_signal(shutdown.clone()));
            shutdown.cancelled().await;
            drop(cluster);
            Ok(())
        }),
        Command::BenchCommitted(args) => with_tool_runtime(&loaded, async move {
            let report = analytics::loadgen::committed::wait_committed(&args).await?;
            println!("{}", serde_json::to_string(&report)?);
            if !report.complete {
                anyhow::bail!(
                    "{} of {} {} events committed before the timeout",
                    report.committed,
                    args.count,
                    args.source
                );
            }
            Ok(())
        }),
        Command::BenchNatsDrain(args) => with_tool_runtime(&loaded, async move {
            let report = analytics::loadgen::nats_drain::drain(&args).await?;
            println!("{}", serde_json::to_string(&report)?);
            Ok(())
        }),
        Command::BenchBaseline(args) => with_tool_runtime(&loaded, async move {
            let report = tokio::task::spawn_blocking(move || {
                analytics::loadgen::baseline::run_baseline(&args).map(|report| (report, args.json))
            })
            .await??;
            let (report, json) = report;
            eprintln!(
                "raw insert {:.0} events/s, store commit {:.0} events/s, ratio {:.3} ({} events, batches of {}, synchronous {}, {} ids)",
                report.raw_insert_events_per_second,
                report.store_commit_events_per_second,
                report.ratio,
                report.events,
                report.batch_size,
                report.synchronous,
                report.ids
            );
            if json {
                println!("{}", serde_json::to_string(&report)?);
            }
            Ok(())
        }),
    }
}

/// Like [`with_runtime`] for the command-line tools (loadgen, import):
/// logs go to stderr, so stdout carries only their `--json` report.
fn with_tool_runtime(
    loaded: &LoadedConfig,
    work: impl std::future::Future<Output = anyhow::Result<()>>,
) -> ExitCode {
    let mut tool = loaded.clone();
    tool.config.logging.output = "stderr".into();
    tool.config.logging.format = "console".into();
    if tool.config.logging.level == "info" {
        tool.config.logging.level = "warn".into();
    }
    with_runtime(&tool, work)
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
