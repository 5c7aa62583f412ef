//! Log setup from the `logging` section: level, json or console format, and
//! stdout, stderr or a file as output.

use std::sync::Mutex;

use tracing_subscriber::EnvFilter;

use crate::config::LoggingConfig;

/// Installs the global subscriber. `ANALYTICS_LOG` (an `EnvFilter`
/// directive) overrides `logging.level` when set.
pub fn init(config: &LoggingConfig) -> anyhow::Result<()> {
    let filter = match std::env::var("ANALYTICS_LOG") {
        Ok(directive) => EnvFilter::try_new(directive)?,
        Err(_) => EnvFilter::try_new(format!("{},tower_http=warn", config.level))?,
    };
    let json = config.format == "json";
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false);
    let result = match config.output.as_str() {
        "file" => {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&config.file_path)?;
            let writer = Mutex::new(file);
            if json {
                builder
                    .json()
                    .with_writer(writer)
                    .with_ansi(false)
                    .try_init()
            } else {
                builder.with_writer(writer).with_ansi(false).try_init()
            }
        }
        "stderr" => {
            if json {
                builder.json().with_writer(std::io::stderr).try_init()
            } else {
                builder.with_writer(std::io::stderr).try_init()
            }
        }
        _ => {
            if json {
                builder.json().with_writer(std::io::stdout).try_init()
            } else {
                builder.with_writer(std::io::stdout).try_init()
            }
        }
    };
    result.map_err(|error| anyhow::anyhow!("cannot install the log subscriber: {error}"))
}
