//! Service configuration: embedded defaults, then a YAML file, then the
//! environment, then validation.
//!
//! Layers, each overriding the one before:
//! 1. `config/defaults.yaml`, compiled in. It lists every accepted key once,
//!    with a comment, so it is both the documentation and the schema: a key
//!    that is not in it is unknown.
//! 2. The user's YAML file, deep-merged over the defaults (mappings key by
//!    key; scalars and lists replace). A section left empty (`redis:` with
//!    its keys commented out) keeps its defaults.
//! 3. Environment variables: the old service's names (`SERVER_PORT`,
//!    `DB_HOST`, ...) and then `ANALYTICS_<SECTION>__<KEY>[__<KEY>...]`.
//!
//! Invariants a caller can rely on:
//! - a misspelled key, in the file or in an `ANALYTICS_` variable, is an
//!   error naming its full path; nothing is silently ignored;
//! - a [`Config`] returned by [`load`] has passed [`Config::validate`], and
//!   every error names the key at fault;
//! - secrets ([`Secret`]) never print: not in `Debug`, `Display`, or the
//!   serialized form, which is why `Config` can be logged as YAML;
//! - keys that are accepted but not implemented yet and that the user set
//!   are reported in [`LoadedConfig::unhonoured_keys`] (see [`NOT_HONOURED`]).
//!
//! `load` never reads the process environment itself: the caller passes it,
//! so tests stay independent of each other and of the machine.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize, Serializer};
use serde_yaml::{Mapping, Value};

/// The embedded defaults; every accepted key appears here.
const DEFAULTS_YAML: &str = include_str!("../config/defaults.yaml");

/// Keys that are accepted but have no effect yet. An entry covers itself and
/// every key below it (`redis` covers `redis.host`).
///
/// This list shrinks as features land: when one does, delete its entries here
/// and the "not honoured yet" comments in `config/defaults.yaml` and
/// `config/example.yaml`.
pub const NOT_HONOURED: &[&str] = &[
    // The PostgreSQL pool keeps every connection it made until its
    // `connection_lifetime`; it has no separate idle limit.
    "database.max_idle_connections",
    // Connections to Redis are multiplexed (`pool_size` of them, each
    // carrying any number of concurrent commands): there are no idle ones.
    "redis.min_idle_conns",
    "realtime",
    "health",
    "analytics.aggregation.workers",
];

/// The old service's environment variables and the keys they set. They are
/// applied before the `ANALYTICS_` ones, so the new names win on conflict.
const LEGACY_ENV: &[(&str, &str)] = &[
    ("SERVER_PORT", "server.port"),
    ("DB_HOST", "database.host"),
    ("DB_PORT", "database.port"),
    ("DB_NAME", "database.database"),
    ("DB_USER", "database.user"),
    ("DB_PASSWORD", "database.password"),
    ("REDIS_HOST", "redis.host"),
    ("REDIS_PORT", "redis.port"),
    ("KAFKA_BROKERS", "kafka.brokers"),
    ("LOG_LEVEL", "logging.level"),
];

/// Prefix of the new environment scheme.
const ENV_PREFIX: &str = "ANALYTICS_";
/// `ANALYTICS_` variables that belong to the command line or the test
/// harness (`ANALYTICS_TEST_STORE` picks the store the black-box suite runs
/// on, and service processes the tests start inherit it), not to a key.
const RESERVED_ENV: &[&str] = &["ANALYTICS_CONFIG", "ANALYTICS_LOG", "ANALYTICS_TEST_STORE"];

/// The aggregation intervals the rollup supports.
pub const SUPPORTED_INTERVALS: &[&str] = &["1m", "5m", "15m", "30m", "1h", "4h", "1d"];

/// The whole service configuration; one field per section of the YAML file.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    pub database: DatabaseConfig,
    pub redis: RedisConfig,
    pub kafka: KafkaConfig,
    pub nats: NatsConfig,
    pub analytics: AnalyticsConfig,
    pub metrics: MetricsConfig,
    pub logging: LoggingConfig,
    pub health: HealthConfig,
    pub custom_events: CustomEventsConfig,
    pub realtime: RealtimeConfig,
    pub security: SecurityConfig,
}

/// `server`: the HTTP API listener.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    pub host: String,
    /// 0 means any free port (tests).
    pub port: u16,
    #[serde(with = "duration_serde")]
    pub read_timeout: Duration,
    #[serde(with = "duration_serde")]
    pub write_timeout: Duration,
    #[serde(with = "duration_serde")]
    pub shutdown_timeout: Duration,
    /// Requests served at once; more are answered 503 at once, not queued.
    pub max_concurrent_requests: usize,
}

/// Which store backs the service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreDriver {
    Sqlite,
    Postgres,
}

impl StoreDriver {
    /// Whether the store commits several transactions at once
    /// (`analytics.ingestion.workers` of them); the embedded store has one
    /// writer and commits one at a time.
    pub fn commits_in_parallel(self) -> bool {
        self == StoreDriver::Postgres
    }
}

/// SQLite `PRAGMA synchronous`: `Full` survives power loss, `Normal` only a
/// process crash (in WAL mode).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SqliteSynchronous {
    Normal,
    Full,
}

/// `database`: the event store.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConfig {
    pub driver: StoreDriver,
    /// The SQLite file (driver `sqlite`).
    pub path: PathBuf,
    /// A PostgreSQL URL; when set it overrides host, port, database, user,
    /// password and ssl_mode. After [`load`] it is `None` or non-empty.
    pub url: Option<Secret>,
    pub sqlite_synchronous: SqliteSynchronous,
    pub host: String,
    pub port: u16,
    pub database: String,
    pub user: String,
    pub password: Secret,
    pub ssl_mode: String,
    pub max_connections: usize,
    pub max_idle_connections: usize,
    #[serde(with = "duration_serde")]
    pub connection_lifetime: Duration,
    /// The PostgreSQL schema holding every table (`search_path` of each
    /// connection); created when missing.
    pub schema: String,
}

/// `redis`: shares the rate-limit budgets and the query cache between
/// instances when enabled; without it both live in process.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    /// Use Redis at all (also implied by a non-empty `url`).
    pub enabled: bool,
    /// `redis://[:password@]host:port/db`; overrides host..db when set.
    pub url: Option<Secret>,
    pub host: String,
    pub port: u16,
    pub password: Secret,
    pub db: u32,
    /// Multiplexed connections opened (each carries many commands at once).
    pub pool_size: usize,
    pub min_idle_conns: usize,
    /// Prepended to every key, so services (and tests) can share a server.
    pub key_prefix: String,
    /// On a Redis error, refuse requests (429) instead of letting them through.
    pub fail_closed: bool,
}

impl RedisConfig {
    /// Whether Redis is to be used.
    pub fn is_enabled(&self) -> bool {
        self.enabled || self.url.is_some()
    }
}

/// `kafka`: the Kafka source. No brokers, no Kafka.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    pub brokers: Vec<String>,
    pub consumer_group: String,
    pub topics: Vec<String>,
    /// `true`: stored offsets are committed in the background every
    /// `commit_interval`; `false`: after every batch. Either way an offset
    /// is stored only once its events are durably committed.
    pub enable_auto_commit: bool,
    #[serde(with = "duration_serde")]
    pub session_timeout: Duration,
    /// Where a group without a committed offset starts: `earliest` or `latest`.
    pub auto_offset_reset: String,
    #[serde(with = "duration_serde")]
    pub max_poll_interval: Duration,
    #[serde(with = "duration_serde")]
    pub commit_interval: Duration,
    pub client_id: String,
    /// Most messages in one pipeline submission.
    pub batch_size: usize,
    /// Submissions awaiting their commit at once.
    pub max_in_flight: usize,
    /// Passed to librdkafka as they are (`security.protocol`,
    /// `sasl.mechanism`, `sasl.username`, `sasl.password`, ...); values are
    /// treated as secrets.
    pub properties: BTreeMap<String, Secret>,
}

impl KafkaConfig {
    pub fn is_enabled(&self) -> bool {
        !self.brokers.is_empty()
    }
}

/// `nats`: the NATS JetStream source. No servers, no NATS.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NatsConfig {
    /// `nats://host:port` URLs.
    pub servers: Vec<String>,
    pub user: String,
    pub password: Secret,
    pub token: Secret,
    /// A `.creds` file (JWT and NKey seed).
    pub credentials_file: Option<PathBuf>,
    /// The JetStream stream to consume.
    pub stream: String,
    /// Subjects of the stream when the service creates it.
    pub subjects: Vec<String>,
    /// Create the stream when it does not exist.
    pub create_stream: bool,
    /// Name of the durable pull consumer the instances share.
    pub durable: String,
    /// Most messages fetched and submitted at once.
    pub batch_size: usize,
    #[serde(with = "duration_serde")]
    pub ack_wait: Duration,
    /// Delay before a message whose commit failed is redelivered.
    #[serde(with = "duration_serde")]
    pub nak_delay: Duration,
}

impl NatsConfig {
    pub fn is_enabled(&self) -> bool {
        !self.servers.is_empty()
    }
}

/// `analytics`: ingestion, aggregation, retention and queries.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AnalyticsConfig {
    pub ingestion: IngestionConfig,
    pub aggregation: AggregationConfig,
    pub retention: RetentionConfig,
    pub query: QueryConfig,
}

/// `analytics.ingestion`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct IngestionConfig {
    /// Events per storage write.
    pub batch_size: usize,
    /// A partial batch is flushed after this long.
    #[serde(with = "duration_serde")]
    pub batch_timeout: Duration,
    pub workers: usize,
    /// Capacity of the bounded ingest queue, at least `batch_size`.
    pub buffer_size: usize,
    /// Events accepted in one `POST /events/batch`.
    pub max_batch_events: usize,
    /// Request body limit in bytes.
    pub max_body_bytes: usize,
    /// Events timestamped further than this in the future are rejected.
    #[serde(with = "duration_serde")]
    pub max_future_skew: Duration,
    /// Bytes of a stream message's payload kept in a dead letter.
    pub dead_letter_payload_bytes: usize,
}

/// `analytics.aggregation`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AggregationConfig {
    /// Rollup intervals, each one of [`SUPPORTED_INTERVALS`], no duplicates.
    pub intervals: Vec<String>,
    pub workers: usize,
    /// Keep the trading tables (per-order state, fills, quotes, one-minute
    /// bars) behind `/api/v1/trading/orders`, `/execution` and `/bars`.
    pub trading: bool,
}

impl AggregationConfig {
    /// The intervals as durations, in configured order. Intervals that do not
    /// parse are skipped; after [`Config::validate`] there are none.
    pub fn interval_durations(&self) -> Vec<Duration> {
        self.intervals
            .iter()
            .filter_map(|interval| parse_duration(interval).ok())
            .collect()
    }
}

/// `analytics.retention`: how long each kind of data is kept.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionConfig {
    #[serde(with = "duration_serde")]
    pub raw_events: Duration,
    #[serde(with = "duration_serde")]
    pub minute_aggregates: Duration,
    #[serde(with = "duration_serde")]
    pub hour_aggregates: Duration,
    #[serde(with = "duration_serde")]
    pub daily_aggregates: Duration,
}

/// `analytics.query`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct QueryConfig {
    /// Hard cap on the rows one query returns.
    pub max_results: usize,
    /// Rows returned when the request names no limit.
    pub default_limit: usize,
    #[serde(with = "duration_serde")]
    pub timeout: Duration,
    #[serde(with = "duration_serde")]
    pub cache_ttl: Duration,
}

/// `metrics`: the Prometheus endpoint.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    pub enabled: bool,
    pub port: u16,
    pub path: String,
}

/// `logging`. After [`load`], `level` is lowercase.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LoggingConfig {
    /// trace, debug, info, warn or error.
    pub level: String,
    /// json or console.
    pub format: String,
    /// stdout, stderr or file.
    pub output: String,
    /// Required when `output` is `file`.
    pub file_path: PathBuf,
}

/// `health` (not honoured yet).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HealthConfig {
    pub port: u16,
    pub path: String,
}

/// `custom_events`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CustomEventsConfig {
    pub enabled: bool,
    pub max_properties: usize,
    /// Bytes per property value.
    pub max_property_size: usize,
}

/// `realtime` (not honoured yet).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RealtimeConfig {
    pub enabled: bool,
    pub websocket_port: u16,
    pub max_connections: usize,
    #[serde(with = "duration_serde")]
    pub update_interval: Duration,
}

/// `security`: API keys, rate limits, CORS.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SecurityConfig {
    /// Every API request needs a key of [`SecurityConfig::api_keys`] with
    /// the scope of its endpoint.
    pub api_key_enabled: bool,
    /// The accepted keys, by SHA-256 digest (the keys themselves are never
    /// stored). After [`load`]: digests are 64 lowercase hex characters,
    /// scopes are among [`API_KEY_SCOPES`], names are unique, and the list
    /// is not empty when `api_key_enabled` is true.
    pub api_keys: Vec<ApiKeyConfig>,
    pub rate_limit: RateLimitConfig,
    pub cors: CorsConfig,
    /// Proxies (addresses or CIDRs) whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<String>,
}

/// The scopes an API key can grant.
pub const API_KEY_SCOPES: &[&str] = &["ingest", "read", "admin"];

/// One entry of `security.api_keys`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyConfig {
    /// Who holds the key; appears in logs and rate-limit keys, never the key.
    pub name: String,
    /// Hex SHA-256 of the key (`analytics keys generate` prints it).
    pub sha256: String,
    /// Any of `ingest`, `read`, `admin`.
    pub scopes: Vec<String>,
}

/// `security.rate_limit`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    pub enabled: bool,
    pub requests_per_minute: usize,
    pub burst: usize,
    /// Client addresses or CIDRs that are never limited.
    pub exempt: Vec<String>,
}

/// `security.cors`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CorsConfig {
    pub enabled: bool,
    pub allowed_origins: Vec<String>,
    pub allowed_methods: Vec<String>,
    pub allowed_headers: Vec<String>,
}

/// A value that must never be printed. `Debug`, `Display` and `Serialize`
/// give `<redacted>` (an empty secret serializes as `""`, which says only
/// that none is set); [`Secret::expose`] is the one way to read it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself; call only where it is used (a connection string).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("<redacted>")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("<redacted>")
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(if self.0.is_empty() { "" } else { "<redacted>" })
    }
}

impl<'de> Deserialize<'de> for Secret {
    /// Accepts only a string. A wrong type is rejected without echoing the
    /// value, as serde's usual "invalid type: integer `12345`" would.
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct SecretVisitor;
        impl serde::de::Visitor<'_> for SecretVisitor {
            type Value = Secret;
            fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
                formatter.write_str("a string")
            }
            fn visit_str<E: serde::de::Error>(self, value: &str) -> Result<Secret, E> {
                Ok(Secret::new(value))
            }
            fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<Secret, E> {
                Err(E::custom(NOT_A_STRING))
            }
            fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<Secret, E> {
                Err(E::custom(NOT_A_STRING))
            }
            fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<Secret, E> {
                Err(E::custom(NOT_A_STRING))
            }
            fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<Secret, E> {
                Err(E::custom(NOT_A_STRING))
            }
        }
        const NOT_A_STRING: &str = "expected a string (value not shown; quote it in YAML)";
        // deserialize_any, so non-strings reach the visitor (whose errors do
        // not echo the value) instead of the deserializer's own message.
        deserializer.deserialize_any(SecretVisitor)
    }
}

/// What [`load`] returns.
#[derive(Debug, Clone)]
pub struct LoadedConfig {
    /// The merged, validated configuration.
    pub config: Config,
    /// The file that was read, if any.
    pub source: Option<PathBuf>,
    /// Keys the file or environment set that have no effect (sorted,
    /// deduplicated): not implemented yet, or `redis.*` while Redis is not
    /// enabled; the caller prints them in one startup warning.
    pub unhonoured_keys: Vec<String>,
}

/// Why a configuration could not be loaded. Every variant names the file,
/// variable or key path at fault.
#[derive(thiserror::Error, Debug)]
pub enum ConfigError {
    #[error("cannot read config file {}: {source}", .path.display())]
    ReadFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// `origin` is the file path (or "embedded defaults"); serde_yaml's
    /// message carries the line and column.
    #[error("invalid YAML in {origin}: {source}")]
    Syntax {
        origin: String,
        #[source]
        source: serde_yaml::Error,
    },
    #[error("{origin}: the top level must be a mapping of sections (server, database, ...)")]
    NotAMapping { origin: String },
    #[error("unknown key \"{key}\" in {origin}{}", did_you_mean(.suggestion))]
    UnknownKey {
        key: String,
        origin: String,
        suggestion: Option<String>,
    },
    #[error("environment variable {variable} names unknown key \"{key}\"")]
    UnknownEnvKey { variable: String, key: String },
    #[error("environment variable {variable} (key {key}): {message}")]
    EnvValue {
        variable: String,
        key: String,
        message: String,
    },
    /// The value does not have the type the key needs.
    #[error("{key}: {message}{}", set_in(.origin))]
    WrongType {
        key: String,
        message: String,
        origin: Option<String>,
    },
    /// The value has the right type but is out of range.
    #[error("{key} {message}")]
    Invalid { key: String, message: String },
    #[error("{} invalid configuration values: {}", .0.len(), join_errors(.0))]
    Several(Vec<ConfigError>),
}

fn did_you_mean(suggestion: &Option<String>) -> String {
    suggestion
        .as_ref()
        .map(|key| format!(" (did you mean \"{key}\"?)"))
        .unwrap_or_default()
}

fn set_in(origin: &Option<String>) -> String {
    origin
        .as_ref()
        .map(|origin| format!(" (set in {origin})"))
        .unwrap_or_default()
}

fn join_errors(errors: &[ConfigError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// Loads the configuration: embedded defaults, then the file at `path` (if
/// any), then the overrides in `env` (pass `std::env::vars().collect()`),
/// then [`Config::validate`].
pub fn load(path: Option<&Path>, env: &[(String, String)]) -> Result<LoadedConfig, ConfigError> {
    let schema = parse_mapping(DEFAULTS_YAML, "embedded defaults")?;
    let mut merged = schema.clone();
    // Leaf key path -> where it was set, for unhonoured_keys and errors.
    let mut set_by = BTreeMap::new();

    if let Some(path) = path {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::ReadFile {
            path: path.to_path_buf(),
            source,
        })?;
        let origin = path.display().to_string();
        let overlay = parse_mapping(&text, &origin)?;
        merge_mapping(&mut merged, overlay, &schema, "", &origin, &mut set_by)?;
    }

    for (variable, segments, raw) in env_overrides(env) {
        let key = segments.join(".");
        let Some(target) = lookup(&schema, &segments) else {
            return Err(ConfigError::UnknownEnvKey { variable, key });
        };
        let value = env_value(target, &raw).map_err(|message| ConfigError::EnvValue {
            variable: variable.clone(),
            key: key.clone(),
            message,
        })?;
        // Wrapped into nested mappings so it goes through the same merge and
        // bookkeeping as a file.
        let overlay = segments.iter().rev().fold(value, |inner, segment| {
            let mut outer = Mapping::new();
            outer.insert(Value::String(segment.clone()), inner);
            Value::Mapping(outer)
        });
        if let Value::Mapping(overlay) = overlay {
            let origin = format!("environment variable {variable}");
            merge_mapping(&mut merged, overlay, &schema, "", &origin, &mut set_by)?;
        }
    }

    let mut config: Config =
        serde_path_to_error::deserialize(Value::Mapping(merged)).map_err(|error| {
            let key = error.path().to_string();
            let key = if key == "." {
                "(top level)".to_string()
            } else {
                key
            };
            ConfigError::WrongType {
                origin: set_by
                    .iter()
                    .find(|(set_key, _)| covers(set_key, &key))
                    .map(|(_, origin)| origin.clone()),
                message: error.into_inner().to_string(),
                key,
            }
        })?;
    // The old service documented LOG_LEVEL=INFO style values.
    config.logging.level = config.logging.level.to_ascii_lowercase();
    // `url: ""` (or an empty ANALYTICS_DATABASE__URL) means "not set".
    if config
        .database
        .url
        .as_ref()
        .is_some_and(|url| url.expose().is_empty())
    {
        config.database.url = None;
    }
    if config
        .redis
        .url
        .as_ref()
        .is_some_and(|url| url.expose().is_empty())
    {
        config.redis.url = None;
    }
    config.validate()?;

    // With Redis off, the connection keys a file or `REDIS_HOST` set have
    // no effect either: say so rather than let an old deployment believe
    // its Redis is used.
    let redis_off = !config.redis.is_enabled();
    let single_writer = !config.database.driver.commits_in_parallel();
    let unhonoured_keys = set_by
        .into_keys()
        .filter(|key| {
            NOT_HONOURED.iter().any(|entry| covers(entry, key))
                || (redis_off && covers("redis", key) && key != "redis.enabled")
                || (single_writer && key == "analytics.ingestion.workers")
        })
        .collect();
    Ok(LoadedConfig {
        config,
        source: path.map(Path::to_path_buf),
        unhonoured_keys,
    })
}

/// Whether `entry` is `key` or one of its parents (`a` covers `a.b` and
/// `a[0]`, not `ab`).
fn covers(entry: &str, key: &str) -> bool {
    key.strip_prefix(entry)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('.') || rest.starts_with('['))
}

/// Parses a YAML document whose top level must be a mapping (an empty
/// document counts as an empty one).
fn parse_mapping(text: &str, origin: &str) -> Result<Mapping, ConfigError> {
    let syntax = |source| ConfigError::Syntax {
        origin: origin.to_string(),
        source,
    };
    let mut value: Value = serde_yaml::from_str(text).map_err(syntax)?;
    // Lets users share blocks with anchors and `<<: *base`.
    value.apply_merge().map_err(syntax)?;
    match value {
        Value::Mapping(mapping) => Ok(mapping),
        Value::Null => Ok(Mapping::new()),
        _ => Err(ConfigError::NotAMapping {
            origin: origin.to_string(),
        }),
    }
}

/// Deep-merges `overlay` into `base`, checking each key against `schema`
/// (the defaults) and recording each leaf it sets in `set_by`.
fn merge_mapping(
    base: &mut Mapping,
    overlay: Mapping,
    schema: &Mapping,
    prefix: &str,
    origin: &str,
    set_by: &mut BTreeMap<String, String>,
) -> Result<(), ConfigError> {
    for (key, value) in overlay {
        let name = match key {
            Value::String(name) => name,
            other => serde_yaml::to_string(&other)
                .unwrap_or_default()
                .trim()
                .to_string(),
        };
        let path = if prefix.is_empty() {
            name.clone()
        } else {
            format!("{prefix}.{name}")
        };
        let Some(schema_value) = schema.get(name.as_str()) else {
            return Err(ConfigError::UnknownKey {
                key: path,
                origin: origin.to_string(),
                suggestion: closest_key(&name, schema),
            });
        };
        match (schema_value, value) {
            // A free-form map (`kafka.properties`: empty by default) takes
            // any key: its entries are not checked against the defaults.
            (Value::Mapping(schema_child), Value::Mapping(child)) if schema_child.is_empty() => {
                base.insert(Value::String(name), Value::Mapping(child));
                set_by.insert(path, origin.to_string());
            }
            (Value::Mapping(schema_child), Value::Mapping(child)) => {
                let slot = base
                    .entry(Value::String(name))
                    .or_insert(Value::Mapping(Mapping::new()));
                if !slot.is_mapping() {
                    *slot = Value::Mapping(Mapping::new());
                }
                if let Value::Mapping(base_child) = slot {
                    merge_mapping(base_child, child, schema_child, &path, origin, set_by)?;
                }
            }
            // An empty section keeps its defaults.
            (Value::Mapping(_), Value::Null) => {}
            (_, value) => {
                base.insert(Value::String(name), value);
                set_by.insert(path, origin.to_string());
            }
        }
    }
    Ok(())
}

/// The known key nearest to a misspelled one (edit distance at most 2).
fn closest_key(name: &str, schema: &Mapping) -> Option<String> {
    schema
        .keys()
        .filter_map(Value::as_str)
        .map(|candidate| (edit_distance(name, candidate), candidate))
        .filter(|(distance, _)| *distance <= 2)
        .min()
        .map(|(_, candidate)| candidate.to_string())
}

fn edit_distance(left: &str, right: &str) -> usize {
    let right: Vec<char> = right.chars().collect();
    let mut previous: Vec<usize> = (0..=right.len()).collect();
    for (i, left_char) in left.chars().enumerate() {
        let mut current = vec![i + 1];
        for (j, right_char) in right.iter().enumerate() {
            let substitution = previous[j] + usize::from(left_char != *right_char);
            current.push(substitution.min(previous[j + 1] + 1).min(current[j] + 1));
        }
        previous = current;
    }
    previous[right.len()]
}

/// Walks `segments` down the defaults tree.
fn lookup<'a>(schema: &'a Mapping, segments: &[String]) -> Option<&'a Value> {
    let (first, rest) = segments.split_first()?;
    let value = schema.get(first.as_str())?;
    match (rest.is_empty(), value) {
        (true, value) => Some(value),
        (false, Value::Mapping(child)) => lookup(child, rest),
        (false, _) => None,
    }
}

/// The environment overrides in application order, as (variable, key path
/// segments, raw value): legacy names first, then `ANALYTICS_` ones sorted
/// by name so the result does not depend on the order of `env`.
fn env_overrides(env: &[(String, String)]) -> Vec<(String, Vec<String>, String)> {
    let mut overrides = Vec::new();
    for (legacy, key) in LEGACY_ENV {
        // The last occurrence wins, as in a shell.
        if let Some((_, raw)) = env.iter().rev().find(|(name, _)| name == legacy) {
            let segments = key.split('.').map(str::to_string).collect();
            overrides.push((legacy.to_string(), segments, raw.clone()));
        }
    }
    let mut scheme: Vec<&(String, String)> = env
        .iter()
        .filter(|(name, _)| name.starts_with(ENV_PREFIX) && !RESERVED_ENV.contains(&name.as_str()))
        .collect();
    scheme.sort_by(|left, right| left.0.cmp(&right.0));
    for (name, raw) in scheme {
        let rest = &name[ENV_PREFIX.len()..];
        let segments = rest.split("__").map(str::to_ascii_lowercase).collect();
        overrides.push((name.clone(), segments, raw.clone()));
    }
    overrides
}

/// Turns an environment value into YAML, guided by the default at the same
/// key: strings stay verbatim (so `DB_PASSWORD=123` is not a number), lists
/// take `[a, b]` or `a,b`, anything else is parsed as a YAML scalar.
fn env_value(target: &Value, raw: &str) -> Result<Value, String> {
    match target {
        Value::Mapping(_) => Err("names a section, not a key; name one of its keys".to_string()),
        Value::String(_) => Ok(Value::String(raw.to_string())),
        Value::Null if raw.is_empty() => Ok(Value::Null),
        Value::Null => Ok(Value::String(raw.to_string())),
        Value::Sequence(_) if raw.trim_start().starts_with('[') => {
            serde_yaml::from_str(raw).map_err(|error| error.to_string())
        }
        Value::Sequence(_) => Ok(Value::Sequence(
            raw.split(',')
                .map(str::trim)
                .filter(|item| !item.is_empty())
                .map(|item| Value::String(item.to_string()))
                .collect(),
        )),
        _ => serde_yaml::from_str(raw).map_err(|error| error.to_string()),
    }
}

impl Default for Config {
    /// The embedded defaults.
    fn default() -> Self {
        // Not outside input: a unit test loads the embedded defaults.
        load(None, &[]).expect("embedded defaults are valid").config
    }
}

impl Config {
    /// Checks every value's range; each error names its key and the allowed
    /// range. All problems are reported at once ([`ConfigError::Several`]
    /// when there is more than one).
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut check = Checker::default();
        let (server, database) = (&self.server, &self.database);
        let analytics = &self.analytics;
        let (ingestion, query) = (&analytics.ingestion, &analytics.query);
        let (retention, rate_limit) = (&analytics.retention, &self.security.rate_limit);

        // Durations where zero would mean "never" or "immediately", both
        // nonsense for these keys.
        #[rustfmt::skip] // a table reads better one row per line
        let positive = [
            ("server.read_timeout", server.read_timeout),
            ("server.write_timeout", server.write_timeout),
            ("server.shutdown_timeout", server.shutdown_timeout),
            ("database.connection_lifetime", database.connection_lifetime),
            ("kafka.session_timeout", self.kafka.session_timeout),
            ("kafka.max_poll_interval", self.kafka.max_poll_interval),
            ("kafka.commit_interval", self.kafka.commit_interval),
            ("nats.ack_wait", self.nats.ack_wait),
            ("analytics.ingestion.batch_timeout", ingestion.batch_timeout),
            ("analytics.retention.raw_events", retention.raw_events),
            ("analytics.retention.minute_aggregates", retention.minute_aggregates),
            ("analytics.retention.hour_aggregates", retention.hour_aggregates),
            ("analytics.retention.daily_aggregates", retention.daily_aggregates),
            ("analytics.query.timeout", query.timeout),
            ("analytics.query.cache_ttl", query.cache_ttl),
            ("realtime.update_interval", self.realtime.update_interval),
        ];
        for (key, value) in positive {
            if value.is_zero() {
                check.fail(key, "must be greater than 0s (got 0s)".into());
            }
        }

        // (key, value, min, max), both bounds inclusive.
        let (custom_events, batch_size) = (&self.custom_events, ingestion.batch_size);
        #[rustfmt::skip]
        let ranges = [
            ("database.max_connections", database.max_connections, 1, 1000),
            ("analytics.ingestion.batch_size", batch_size, 1, 100_000),
            ("analytics.ingestion.workers", ingestion.workers, 1, 64),
            ("analytics.ingestion.buffer_size", ingestion.buffer_size, batch_size.max(1), 10_000_000),
            ("analytics.ingestion.max_batch_events", ingestion.max_batch_events, 1, 1_000_000),
            ("analytics.ingestion.max_body_bytes", ingestion.max_body_bytes, 1 << 10, 1 << 30),
            ("analytics.aggregation.workers", analytics.aggregation.workers, 1, 64),
            ("analytics.query.max_results", query.max_results, 1, 1_000_000),
            ("analytics.query.default_limit", query.default_limit, 1, query.max_results.max(1)),
            ("custom_events.max_properties", custom_events.max_properties, 1, 10_000),
            ("custom_events.max_property_size", custom_events.max_property_size, 1, 16 << 20),
            ("security.rate_limit.requests_per_minute", rate_limit.requests_per_minute, 1, 1_000_000),
            ("security.rate_limit.burst", rate_limit.burst, 1, 1_000_000),
            ("server.max_concurrent_requests", server.max_concurrent_requests, 1, 1_000_000),
            ("redis.pool_size", self.redis.pool_size, 1, 64),
            ("kafka.batch_size", self.kafka.batch_size, 1, 100_000),
            ("kafka.max_in_flight", self.kafka.max_in_flight, 1, 64),
            ("nats.batch_size", self.nats.batch_size, 1, 100_000),
            ("analytics.ingestion.dead_letter_payload_bytes", ingestion.dead_letter_payload_bytes, 64, 16 << 20),
        ];
        for (key, value, min, max) in ranges {
            check.range(key, value, min, max);
        }

        let ssl_modes = [
            "disable",
            "allow",
            "prefer",
            "require",
            "verify-ca",
            "verify-full",
        ];
        let levels = ["trace", "debug", "info", "warn", "error"];
        let logging = &self.logging;
        check.one_of("database.ssl_mode", &database.ssl_mode, &ssl_modes);
        check.one_of("logging.level", &logging.level, &levels);
        check.one_of("logging.format", &logging.format, &["json", "console"]);
        check.one_of(
            "kafka.auto_offset_reset",
            &self.kafka.auto_offset_reset,
            &["earliest", "latest"],
        );
        if self.kafka.is_enabled() {
            if self.kafka.topics.is_empty() {
                check.fail(
                    "kafka.topics",
                    "must not be empty when kafka.brokers is set".into(),
                );
            }
            if self.kafka.consumer_group.trim().is_empty() {
                check.fail("kafka.consumer_group", "must not be empty".into());
            }
        }
        if self.nats.is_enabled() {
            for (key, value) in [
                ("nats.stream", &self.nats.stream),
                ("nats.durable", &self.nats.durable),
            ] {
                let valid = !value.is_empty()
                    && value
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
                if !valid {
                    check.fail(
                        key,
                        format!("must be letters, digits, '-' or '_' (got {value:?})"),
                    );
                }
            }
            if let Some(path) = &self.nats.credentials_file {
                // Checked here, so a wrong path stops the start with its
                // key named instead of leaving the source down.
                if path.as_os_str().is_empty() {
                    check.fail(
                        "nats.credentials_file",
                        "must be the path of a .creds file (got an empty path)".into(),
                    );
                } else if let Err(error) = std::fs::File::open(path) {
                    check.fail(
                        "nats.credentials_file",
                        format!("cannot read {}: {error}", path.display()),
                    );
                }
            }
            if self.nats.create_stream && self.nats.subjects.is_empty() {
                check.fail(
                    "nats.subjects",
                    "must not be empty when nats.create_stream is true".into(),
                );
            }
        }
        check.one_of(
            "logging.output",
            &logging.output,
            &["stdout", "stderr", "file"],
        );
        if logging.output == "file" && logging.file_path.as_os_str().is_empty() {
            check.fail(
                "logging.file_path",
                "must be set when logging.output is \"file\"".into(),
            );
        }

        if database.max_idle_connections > database.max_connections {
            let message = format!(
                "must be at most database.max_connections ({}) (got {})",
                database.max_connections, database.max_idle_connections
            );
            check.fail("database.max_idle_connections", message);
        }
        if server.host.is_empty() {
            check.fail("server.host", "must not be empty".into());
        }
        if database.driver == StoreDriver::Sqlite && database.path.as_os_str().is_empty() {
            check.fail(
                "database.path",
                "must not be empty when database.driver is sqlite".into(),
            );
        }
        if database.driver == StoreDriver::Postgres {
            if ["require", "verify-ca", "verify-full"].contains(&database.ssl_mode.as_str()) {
                check.fail(
                    "database.ssl_mode",
                    format!(
                        "{:?} needs TLS, which this build does not support; use \"disable\" or \"prefer\" (plain connections)",
                        database.ssl_mode
                    ),
                );
            }
            if let Err(message) = crate::store::postgres::validate_schema_name(&database.schema) {
                check.fail("database.schema", message);
            }
        }
        if let Some(url) = &database.url {
            let url = url.expose();
            let schemes = ["postgres://", "postgresql://"];
            if !url.is_empty() && !schemes.iter().any(|scheme| url.starts_with(scheme)) {
                // The value is a secret: say what is wrong, never what it is.
                check.fail(
                    "database.url",
                    "must start with postgres:// or postgresql://".into(),
                );
            }
        }

        let intervals = &analytics.aggregation.intervals;
        if intervals.is_empty() {
            check.fail(
                "analytics.aggregation.intervals",
                "must not be empty".into(),
            );
        }
        for (index, interval) in intervals.iter().enumerate() {
            // Same notation as serde_path_to_error uses for type errors.
            let key = format!("analytics.aggregation.intervals[{index}]");
            check.one_of(&key, interval, SUPPORTED_INTERVALS);
            if intervals[..index].contains(interval) {
                check.fail(&key, format!("repeats \"{interval}\""));
            }
        }

        self.security.validate(&mut check);

        let metrics = &self.metrics;
        if !metrics.path.starts_with('/') {
            check.fail(
                "metrics.path",
                format!("must start with \"/\" (got \"{}\")", metrics.path),
            );
        }
        // Port 0 is resolved by the OS to two different free ports.
        if metrics.enabled && metrics.port != 0 && metrics.port == server.port {
            let message = format!("must differ from server.port (both are {})", metrics.port);
            check.fail("metrics.port", message);
        }

        match check.problems.len() {
            0 => Ok(()),
            1 => Err(check.problems.remove(0)),
            _ => Err(ConfigError::Several(check.problems)),
        }
    }

    /// The configuration as YAML, secrets as `<redacted>` and durations in
    /// their shortest exact unit (`90d`, `5m`, `1500ms`); safe to log. Loading
    /// it back gives the same configuration except for the secrets.
    pub fn to_redacted_yaml(&self) -> String {
        // Secret's Serialize impl does the redaction, so no path can leak one.
        serde_yaml::to_string(self)
            .unwrap_or_else(|error| format!("# cannot render configuration: {error}\n"))
    }
}

impl SecurityConfig {
    fn validate(&self, check: &mut Checker) {
        if self.api_key_enabled && self.api_keys.is_empty() {
            check.fail(
                "security.api_key_enabled",
                "is true but security.api_keys is empty, so no request could be authorised; \
                 add keys (create them with `analytics keys generate --name NAME --scopes ingest,read`) \
                 or set security.api_key_enabled: false"
                    .into(),
            );
        }
        for (index, key) in self.api_keys.iter().enumerate() {
            let prefix = format!("security.api_keys[{index}]");
            if key.name.trim().is_empty() {
                check.fail(&format!("{prefix}.name"), "must not be empty".into());
            }
            if self.api_keys[..index]
                .iter()
                .any(|earlier| earlier.name == key.name)
            {
                check.fail(
                    &format!("{prefix}.name"),
                    format!("repeats \"{}\"; names must be unique", key.name),
                );
            }
            let digest_ok =
                key.sha256.len() == 64 && key.sha256.bytes().all(|byte| byte.is_ascii_hexdigit());
            if !digest_ok {
                check.fail(
                    &format!("{prefix}.sha256"),
                    format!(
                        "must be a SHA-256 digest: 64 hex characters (got {} characters)",
                        key.sha256.len()
                    ),
                );
            }
            if key.scopes.is_empty() {
                check.fail(
                    &format!("{prefix}.scopes"),
                    format!("must name at least one of {}", API_KEY_SCOPES.join(", ")),
                );
            }
            for (scope_index, scope) in key.scopes.iter().enumerate() {
                check.one_of(
                    &format!("{prefix}.scopes[{scope_index}]"),
                    scope,
                    API_KEY_SCOPES,
                );
            }
        }
        for (list, entries) in [
            ("security.trusted_proxies", &self.trusted_proxies),
            ("security.rate_limit.exempt", &self.rate_limit.exempt),
        ] {
            for (index, entry) in entries.iter().enumerate() {
                if parse_network(entry).is_none() {
                    check.fail(
                        &format!("{list}[{index}]"),
                        format!(
                            "must be an IP address or CIDR such as 10.0.0.0/8 (got \"{entry}\")"
                        ),
                    );
                }
            }
        }
        let cors = &self.cors;
        for (index, origin) in cors.allowed_origins.iter().enumerate() {
            let valid = origin == "*"
                || ((origin.starts_with("http://") || origin.starts_with("https://"))
                    && !origin.ends_with('/')
                    && axum::http::HeaderValue::from_str(origin).is_ok());
            if !valid {
                check.fail(
                    &format!("security.cors.allowed_origins[{index}]"),
                    format!(
                        "must be \"*\" or an origin such as https://app.example.com, without a path (got \"{origin}\")"
                    ),
                );
            }
        }
        for (index, method) in cors.allowed_methods.iter().enumerate() {
            if axum::http::Method::from_bytes(method.as_bytes()).is_err() {
                check.fail(
                    &format!("security.cors.allowed_methods[{index}]"),
                    format!("is not an HTTP method (got \"{method}\")"),
                );
            }
        }
        for (index, header) in cors.allowed_headers.iter().enumerate() {
            if header != "*" && axum::http::HeaderName::from_bytes(header.as_bytes()).is_err() {
                check.fail(
                    &format!("security.cors.allowed_headers[{index}]"),
                    format!("is not a header name (got \"{header}\")"),
                );
            }
        }
    }
}

/// Parses an address (`10.0.0.1`, `::1`) or a CIDR (`10.0.0.0/8`) into a
/// network; a bare address is a network of one.
pub fn parse_network(text: &str) -> Option<ipnet::IpNet> {
    let text = text.trim();
    text.parse::<ipnet::IpNet>().ok().or_else(|| {
        text.parse::<std::net::IpAddr>()
            .ok()
            .map(ipnet::IpNet::from)
    })
}

/// Collects validation problems so all of them are reported at once.
#[derive(Default)]
struct Checker {
    problems: Vec<ConfigError>,
}

impl Checker {
    fn fail(&mut self, key: &str, message: String) {
        self.problems.push(ConfigError::Invalid {
            key: key.to_string(),
            message,
        });
    }

    fn range(&mut self, key: &str, value: usize, min: usize, max: usize) {
        if value < min || value > max {
            let message = if max == usize::MAX {
                format!("must be at least {min} (got {value})")
            } else {
                format!("must be between {min} and {max} (got {value})")
            };
            self.fail(key, message);
        }
    }

    fn one_of(&mut self, key: &str, value: &str, allowed: &[&str]) {
        if !allowed.contains(&value) {
            self.fail(
                key,
                format!("must be one of {} (got \"{value}\")", allowed.join(", ")),
            );
        }
    }
}

/// Parses a duration: `1500ms`, `30s`, `5m`, `1h`, `90d` (anything
/// humantime accepts), or a bare integer meaning seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if !text.is_empty() && text.bytes().all(|byte| byte.is_ascii_digit()) {
        return text
            .parse()
            .map(Duration::from_secs)
            .map_err(|error| format!("{error}"));
    }
    humantime::parse_duration(text).map_err(|error| format!("invalid duration \"{text}\": {error}"))
}

/// Formats a duration in the largest unit that represents it exactly:
/// `90d`, `5m`, `30s`, `1500ms`, `0s`.
pub fn format_duration(duration: Duration) -> String {
    const UNITS: &[(&str, u128)] = &[
        ("d", 86_400_000_000_000),
        ("h", 3_600_000_000_000),
        ("m", 60_000_000_000),
        ("s", 1_000_000_000),
        ("ms", 1_000_000),
        ("us", 1_000),
    ];
    let nanos = duration.as_nanos();
    if nanos == 0 {
        return "0s".to_string();
    }
    UNITS
        .iter()
        .find(|(_, size)| nanos.is_multiple_of(*size))
        .map(|(unit, size)| format!("{}{unit}", nanos / size))
        .unwrap_or_else(|| format!("{nanos}ns"))
}

/// `#[serde(with)]` adapter: durations as `"30s"`-style strings (or integer
/// seconds) in, shortest exact strings out.
mod duration_serde {
    use std::fmt;
    use std::time::Duration;

    use serde::de::{self, Visitor};
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(duration: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&super::format_duration(*duration))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        deserializer.deserialize_any(DurationVisitor)
    }

    struct DurationVisitor;

    impl Visitor<'_> for DurationVisitor {
        type Value = Duration;

        fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
            formatter.write_str(
                "a duration such as \"1500ms\", \"30s\", \"5m\", \"90d\" or integer seconds",
            )
        }

        fn visit_u64<E: de::Error>(self, seconds: u64) -> Result<Duration, E> {
            Ok(Duration::from_secs(seconds))
        }

        fn visit_i64<E: de::Error>(self, seconds: i64) -> Result<Duration, E> {
            u64::try_from(seconds)
                .map(Duration::from_secs)
                .map_err(|_| E::invalid_value(de::Unexpected::Signed(seconds), &self))
        }

        fn visit_str<E: de::Error>(self, text: &str) -> Result<Duration, E> {
            super::parse_duration(text).map_err(E::custom)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OLD_CONFIG: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/config/old-config.yaml");
    const EXAMPLE_CONFIG: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/config/example.yaml");

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(name, value)| (name.to_string(), value.to_string()))
            .collect()
    }

    /// Writes `text` to a temporary file and loads it with `vars`.
    fn load_text(text: &str, vars: &[(&str, &str)]) -> Result<LoadedConfig, ConfigError> {
        let file = tempfile::NamedTempFile::new().expect("temp file");
        std::fs::write(file.path(), text).expect("write temp file");
        load(Some(file.path()), &env(vars))
    }

    fn error_text(result: Result<LoadedConfig, ConfigError>) -> String {
        match result {
            Ok(_) => panic!("expected an error"),
            Err(error) => error.to_string(),
        }
    }

    #[test]
    fn a_nats_credentials_file_must_be_readable() {
        let servers = ("ANALYTICS_NATS__SERVERS", "nats://127.0.0.1:4222");
        let text = error_text(load(
            None,
            &env(&[
                servers,
                (
                    "ANALYTICS_NATS__CREDENTIALS_FILE",
                    "/nonexistent/user.creds",
                ),
            ]),
        ));
        assert!(
            text.contains("nats.credentials_file") && text.contains("/nonexistent/user.creds"),
            "{text}"
        );
        let text = error_text(load_text("nats:\n  credentials_file: \"\"\n", &[servers]));
        assert!(
            text.contains("nats.credentials_file") && text.contains("empty path"),
            "{text}"
        );
        let creds = tempfile::NamedTempFile::new().expect("temp file");
        let path = creds.path().display().to_string();
        let loaded = load(
            None,
            &env(&[servers, ("ANALYTICS_NATS__CREDENTIALS_FILE", path.as_str())]),
        )
        .expect("a readable file is accepted");
        assert_eq!(
            loaded.config.nats.credentials_file.as_deref(),
            Some(creds.path())
        );
    }

    #[test]
    fn no_file_gives_the_embedded_defaults() {
        let loaded = load(None, &[]).expect("defaults load");
        let config = &loaded.config;
        assert_eq!(config.server.host, "127.0.0.1");
        assert_eq!(config.server.port, 9097);
        assert_eq!(config.analytics.aggregation.intervals, SUPPORTED_INTERVALS);
        assert!(!config.security.api_key_enabled);
        assert_eq!(config.database.driver, StoreDriver::Sqlite);
        assert_eq!(config.database.path, PathBuf::from("./data/analytics.db"));
        assert_eq!(config.database.url, None);
        assert_eq!(config.database.sqlite_synchronous, SqliteSynchronous::Full);
        assert_eq!(config.analytics.ingestion.max_batch_events, 10_000);
        assert_eq!(config.analytics.ingestion.max_body_bytes, 16_777_216);
        assert_eq!(
            config.analytics.ingestion.max_future_skew,
            Duration::from_secs(300)
        );
        assert_eq!(
            config.analytics.retention.raw_events,
            Duration::from_secs(90 * 86_400)
        );
        assert!(config.security.trusted_proxies.is_empty());
        assert_eq!(config.kafka.topics.len(), 4);
        assert!(loaded.unhonoured_keys.is_empty());
        assert_eq!(loaded.source, None);
        assert_eq!(Config::default(), loaded.config);
    }

    #[test]
    fn old_service_config_is_refused_for_keys_enabled_without_keys() {
        // The old file parses (every key is known) but sets
        // api_key_enabled: true with no key: the service now enforces keys,
        // so it refuses to start rather than reject every request.
        let message = error_text(load(Some(Path::new(OLD_CONFIG)), &[]));
        assert!(
            message.starts_with("security.api_key_enabled is true but security.api_keys is empty"),
            "{message}"
        );
        assert!(message.contains("analytics keys generate"), "{message}");
    }

    /// The old file with keys switched off by the environment, which is how
    /// an operator starts it before creating keys.
    const OLD_CONFIG_WITHOUT_KEYS: (&str, &str) = ("ANALYTICS_SECURITY__API_KEY_ENABLED", "false");

    #[test]
    fn old_service_config_loads_and_reports_unhonoured_keys() {
        let loaded = load(
            Some(Path::new(OLD_CONFIG)),
            &env(&[OLD_CONFIG_WITHOUT_KEYS]),
        )
        .expect("old config loads");
        assert_eq!(loaded.config.server.host, "0.0.0.0");
        assert!(!loaded.config.security.api_key_enabled);
        assert_eq!(
            loaded.config.analytics.aggregation.intervals,
            ["1m", "5m", "15m", "1h", "1d"]
        );
        assert_eq!(loaded.config.database.password.expose(), "change-me");
        let keys = &loaded.unhonoured_keys;
        for expected in [
            "database.max_idle_connections",
            "redis.min_idle_conns",
            // The old file names a Redis; this service uses it only when
            // `redis.enabled` is true.
            "redis.host",
        ] {
            assert!(
                keys.iter().any(|key| key == expected),
                "{expected} missing from {keys:?}"
            );
        }
        // Honoured keys are not reported.
        for honoured in [
            "server.port",
            "server.read_timeout",
            "analytics.ingestion.batch_size",
            "security.api_key_enabled",
            "security.rate_limit.burst",
            "security.cors.allowed_origins",
            "database.password",
            "database.ssl_mode",
        ] {
            assert!(
                !keys.iter().any(|key| key == honoured),
                "{honoured} in {keys:?}"
            );
        }
        let mut sorted = keys.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(&sorted, keys);
    }

    #[test]
    fn example_config_loads_and_lists_every_key() {
        fn leaves(mapping: &Mapping, prefix: &str, out: &mut Vec<String>) {
            for (key, value) in mapping {
                let path = format!("{prefix}{}", key.as_str().unwrap_or("?"));
                match value {
                    Value::Mapping(child) => leaves(child, &format!("{path}."), out),
                    _ => out.push(path),
                }
            }
        }
        load(Some(Path::new(EXAMPLE_CONFIG)), &[]).expect("example loads");
        let example_text = std::fs::read_to_string(EXAMPLE_CONFIG).expect("read example");
        let (mut defaults_keys, mut example_keys) = (Vec::new(), Vec::new());
        leaves(
            &parse_mapping(DEFAULTS_YAML, "defaults").expect("defaults"),
            "",
            &mut defaults_keys,
        );
        leaves(
            &parse_mapping(&example_text, "example").expect("example"),
            "",
            &mut example_keys,
        );
        defaults_keys.sort();
        example_keys.sort();
        assert_eq!(defaults_keys, example_keys);
    }

    #[test]
    fn misspelled_key_names_its_full_path() {
        let message = error_text(load_text(
            "analytics:\n  ingestion:\n    batch_sise: 10\n",
            &[],
        ));
        assert!(
            message.contains("unknown key \"analytics.ingestion.batch_sise\""),
            "{message}"
        );
        assert!(message.contains("did you mean \"batch_size\""), "{message}");
    }

    #[test]
    fn zero_batch_size_is_out_of_range() {
        let message = error_text(load_text(
            "analytics:\n  ingestion:\n    batch_size: 0\n",
            &[],
        ));
        assert!(
            message.contains("analytics.ingestion.batch_size must be between 1 and 100000 (got 0)"),
            "{message}"
        );
    }

    #[test]
    fn wrong_type_names_the_key() {
        let message = error_text(load_text("server:\n  port: \"abc\"\n", &[]));
        assert!(
            message.starts_with("server.port: invalid type"),
            "{message}"
        );
        let message = error_text(load_text("server:\n  port: 70000\n", &[]));
        assert!(message.starts_with("server.port:"), "{message}");
        let message = error_text(load_text("server:\n  read_timeout: soon\n", &[]));
        assert!(message.starts_with("server.read_timeout:"), "{message}");
    }

    #[test]
    fn several_problems_are_reported_together() {
        let text = "logging:\n  level: loud\nmetrics:\n  path: metrics\n";
        let message = error_text(load_text(text, &[]));
        assert!(
            message.contains("logging.level must be one of"),
            "{message}"
        );
        assert!(
            message.contains("metrics.path must start with"),
            "{message}"
        );
    }

    #[test]
    fn environment_overrides_both_schemes_and_beats_the_file() {
        let text = "server:\n  port: 1234\ndatabase:\n  path: /from/file.db\n";
        let vars = [
            ("SERVER_PORT", "2345"),
            ("DB_PASSWORD", "12345"),
            ("KAFKA_BROKERS", "a:9092, b:9092"),
            ("LOG_LEVEL", "DEBUG"),
            ("ANALYTICS_DATABASE__PATH", "/tmp/x.db"),
            ("ANALYTICS_ANALYTICS__INGESTION__BATCH_SIZE", "500"),
            ("ANALYTICS_ANALYTICS__AGGREGATION__INTERVALS", "[1m, 5m]"),
            ("ANALYTICS_SERVER__SHUTDOWN_TIMEOUT", "3"),
            ("ANALYTICS_METRICS__ENABLED", "false"),
            ("ANALYTICS_CONFIG", "/ignored.yaml"),
            ("ANALYTICS_LOG", "debug"),
            ("PATH", "/usr/bin"),
        ];
        let loaded = load_text(text, &vars).expect("loads");
        let config = &loaded.config;
        assert_eq!(config.server.port, 2345);
        assert_eq!(config.database.password.expose(), "12345");
        assert_eq!(config.kafka.brokers, ["a:9092", "b:9092"]);
        assert_eq!(config.logging.level, "debug");
        assert_eq!(config.database.path, PathBuf::from("/tmp/x.db"));
        assert_eq!(config.analytics.ingestion.batch_size, 500);
        assert_eq!(config.analytics.aggregation.intervals, ["1m", "5m"]);
        assert_eq!(config.server.shutdown_timeout, Duration::from_secs(3));
        assert!(!config.metrics.enabled);
        assert!(
            !loaded
                .unhonoured_keys
                .contains(&"kafka.brokers".to_string())
        );

        // The new scheme wins over the old one.
        let loaded = load(
            None,
            &env(&[("ANALYTICS_SERVER__PORT", "0"), ("SERVER_PORT", "80")]),
        )
        .expect("loads");
        assert_eq!(loaded.config.server.port, 0);
    }

    #[test]
    fn environment_errors_name_the_variable() {
        let message = error_text(load(None, &env(&[("ANALYTICS_FOO__BAR", "1")])));
        assert!(message.contains("ANALYTICS_FOO__BAR"), "{message}");
        assert!(message.contains("\"foo.bar\""), "{message}");
        let message = error_text(load(None, &env(&[("ANALYTICS_SERVER", "1")])));
        assert!(message.contains("ANALYTICS_SERVER"), "{message}");
        let message = error_text(load(None, &env(&[("SERVER_PORT", "abc")])));
        assert!(
            message.contains("server.port") && message.contains("SERVER_PORT"),
            "{message}"
        );
    }

    #[test]
    fn file_errors_name_the_file_and_position() {
        let message = error_text(load(Some(Path::new("/nonexistent/analytics.yaml")), &[]));
        assert!(message.contains("/nonexistent/analytics.yaml"), "{message}");
        let message = error_text(load_text("server:\n  port: [1\n", &[]));
        assert!(message.contains("line"), "{message}");
        let message = error_text(load_text("- just\n- a list\n", &[]));
        assert!(message.contains("top level"), "{message}");
    }

    #[test]
    fn empty_sections_and_files_keep_defaults() {
        let loaded = load_text("", &[]).expect("empty file loads");
        assert_eq!(loaded.config, Config::default());
        let loaded = load_text("redis:\nserver:\n", &[]).expect("empty sections load");
        assert_eq!(loaded.config, Config::default());
        assert!(loaded.unhonoured_keys.is_empty());
    }

    #[test]
    fn kafka_properties_take_librdkafka_keys_from_a_file() {
        let loaded = load_text(
            "kafka:\n  properties:\n    fetch.wait.max.ms: \"10\"\n    sasl.password: \"hunter2\"\n",
            &[],
        )
        .expect("free-form properties load");
        let properties = &loaded.config.kafka.properties;
        assert_eq!(properties["fetch.wait.max.ms"].expose(), "10");
        assert_eq!(properties["sasl.password"].expose(), "hunter2");
    }

    #[test]
    fn redis_is_off_by_default_and_enabled_by_flag_or_url() {
        let defaults = Config::default().redis;
        assert!(!defaults.is_enabled());
        assert_eq!(defaults.key_prefix, "analytics:");
        assert!(!defaults.fail_closed);
        let by_flag =
            load_text("redis:\n  enabled: true\n", &[("REDIS_PORT", "6380")]).expect("loads");
        assert!(by_flag.config.redis.is_enabled());
        assert_eq!(by_flag.config.redis.port, 6380);
        assert!(by_flag.unhonoured_keys.is_empty());
        let by_url =
            load_text("redis:\n  url: \"redis://127.0.0.1:6379/1\"\n", &[]).expect("loads");
        assert!(by_url.config.redis.is_enabled());
        let empty_url = load_text("redis:\n  url: \"\"\n", &[]).expect("loads");
        assert!(!empty_url.config.redis.is_enabled());
        let error = error_text(load_text("redis:\n  pool_size: 0\n", &[]));
        assert!(error.contains("redis.pool_size"), "{error}");
        let unhonoured =
            load_text("redis:\n  min_idle_conns: 3\n  enabled: true\n", &[]).expect("loads");
        assert_eq!(unhonoured.unhonoured_keys, ["redis.min_idle_conns"]);
        // Redis off: what was set for it is named, so nobody believes it used.
        let off = load_text("redis:\n  host: cache\n", &[("REDIS_PORT", "6380")]).expect("loads");
        assert_eq!(off.unhonoured_keys, ["redis.host", "redis.port"]);
    }

    #[test]
    fn redacted_yaml_hides_secrets_and_round_trips() {
        let vars = [
            (
                "ANALYTICS_DATABASE__URL",
                "postgres://u:hunter2@db/analytics",
            ),
            OLD_CONFIG_WITHOUT_KEYS,
        ];
        let loaded = load(Some(Path::new(OLD_CONFIG)), &env(&vars)).expect("loads");
        let yaml = loaded.config.to_redacted_yaml();
        assert!(!yaml.contains("change-me"), "{yaml}");
        assert!(!yaml.contains("hunter2"), "{yaml}");
        assert!(yaml.contains("<redacted>"), "{yaml}");
        assert!(yaml.contains("raw_events: 90d"), "{yaml}");
        assert!(yaml.contains("read_timeout: 30s"), "{yaml}");
        assert!(!format!("{:?}", loaded.config).contains("change-me"));

        let secrets = [
            ("DB_PASSWORD", "change-me"),
            (
                "ANALYTICS_DATABASE__URL",
                "postgres://u:hunter2@db/analytics",
            ),
        ];
        let reloaded = load_text(&yaml, &secrets).expect("redacted output loads");
        assert_eq!(reloaded.config, loaded.config);
    }

    #[test]
    fn durations_parse_and_print() {
        for (text, seconds, printed) in [
            ("90d", 7_776_000, "90d"),
            ("5m", 300, "5m"),
            ("300", 300, "5m"),
        ] {
            let duration = parse_duration(text).expect("parses");
            assert_eq!(duration, Duration::from_secs(seconds));
            assert_eq!(format_duration(duration), printed);
        }
        let duration = parse_duration("1500ms").expect("parses");
        assert_eq!(duration, Duration::from_millis(1500));
        assert_eq!(format_duration(duration), "1500ms");
        assert_eq!(format_duration(Duration::ZERO), "0s");
        assert!(parse_duration("soon").is_err());

        let loaded = load_text(
            "server:\n  read_timeout: 45\n  write_timeout: 1500ms\n",
            &[],
        )
        .expect("loads");
        assert_eq!(loaded.config.server.read_timeout, Duration::from_secs(45));
        assert_eq!(
            loaded.config.server.write_timeout,
            Duration::from_millis(1500)
        );
        let message = error_text(load_text("server:\n  shutdown_timeout: 0s\n", &[]));
        assert!(
            message.contains("server.shutdown_timeout must be greater than 0s"),
            "{message}"
        );
    }

    /// A well-formed SHA-256 digest (64 hex characters).
    const DIGEST: &str = "0a8b8ce0a07e9f8c3c4f0b2d1c1e7f6f9f4d6c1b2a3e4d5c6b7a8f9e0d1c2b3a";

    #[test]
    fn validation_rules_name_their_keys() {
        let unknown_scope =
            format!("security:\n  api_keys: [{{name: a, sha256: {DIGEST}, scopes: [write]}}]\n");
        let no_scopes =
            format!("security:\n  api_keys: [{{name: a, sha256: {DIGEST}, scopes: []}}]\n");
        let repeated_name = format!(
            "security:\n  api_keys: [{{name: a, sha256: {DIGEST}, scopes: [read]}}, {{name: a, sha256: {DIGEST}, scopes: [admin]}}]\n"
        );
        let cases: Vec<(&str, &str)> = vec![
            (
                "analytics:\n  ingestion:\n    buffer_size: 10\n",
                "analytics.ingestion.buffer_size",
            ),
            (
                "analytics:\n  aggregation:\n    intervals: []\n",
                "analytics.aggregation.intervals",
            ),
            (
                "analytics:\n  aggregation:\n    intervals: [1m, 1m]\n",
                "analytics.aggregation.intervals[1]",
            ),
            (
                "analytics:\n  aggregation:\n    intervals: [2m]\n",
                "analytics.aggregation.intervals[0]",
            ),
            (
                "analytics:\n  query:\n    default_limit: 20000\n",
                "analytics.query.default_limit",
            ),
            ("metrics:\n  port: 9097\n", "metrics.port"),
            ("logging:\n  output: file\n", "logging.file_path"),
            ("database:\n  ssl_mode: sometimes\n", "database.ssl_mode"),
            (
                "database:\n  max_idle_connections: 60\n",
                "database.max_idle_connections",
            ),
            ("database:\n  url: mysql://x\n", "database.url"),
            (
                "custom_events:\n  max_property_size: 0\n",
                "custom_events.max_property_size",
            ),
            (
                "security:\n  rate_limit:\n    burst: 0\n",
                "security.rate_limit.burst",
            ),
            (
                "security:\n  api_key_enabled: true\n",
                "security.api_key_enabled",
            ),
            (
                "security:\n  api_keys: [{name: a, sha256: abc, scopes: [read]}]\n",
                "security.api_keys[0].sha256",
            ),
            (&unknown_scope, "security.api_keys[0].scopes[0]"),
            (&no_scopes, "security.api_keys[0].scopes"),
            (&repeated_name, "security.api_keys[1].name"),
            (
                "security:\n  trusted_proxies: [10.0.0.0/33]\n",
                "security.trusted_proxies[0]",
            ),
            (
                "security:\n  rate_limit:\n    exempt: [localhost]\n",
                "security.rate_limit.exempt[0]",
            ),
            (
                "security:\n  cors:\n    allowed_origins: [\"example.com/\"]\n",
                "security.cors.allowed_origins[0]",
            ),
            (
                "server:\n  max_concurrent_requests: 0\n",
                "server.max_concurrent_requests",
            ),
        ];
        for (text, key) in cases {
            let message = error_text(load_text(text, &[]));
            assert!(message.starts_with(key), "{key}: {message}");
        }
        let keys = format!(
            "security:\n  api_key_enabled: true\n  api_keys: [{{name: a, sha256: {DIGEST}, scopes: [ingest, read]}}]\n  trusted_proxies: [10.0.0.1, \"10.1.0.0/16\"]\n"
        );
        let loaded = load_text(&keys, &[]).expect("a valid key list loads");
        assert_eq!(
            loaded.config.security.api_keys[0].scopes,
            ["ingest", "read"]
        );
        assert!(
            loaded.unhonoured_keys.is_empty(),
            "{:?}",
            loaded.unhonoured_keys
        );
        // Both ports 0 is what tests use.
        load_text("server:\n  port: 0\nmetrics:\n  port: 0\n", &[]).expect("both ports 0 allowed");
    }

    #[test]
    fn secret_of_wrong_type_is_not_echoed() {
        let message = error_text(load_text("database:\n  password: 987654\n", &[]));
        assert!(message.starts_with("database.password:"), "{message}");
        assert!(!message.contains("987654"), "{message}");
        let loaded = load(None, &env(&[("ANALYTICS_DATABASE__URL", "")])).expect("loads");
        assert_eq!(loaded.config.database.url, None);
    }

    /// The ingestion workers are commits in flight on PostgreSQL; the
    /// embedded store has one writer, so there they are reported unused.
    #[test]
    fn ingestion_workers_are_honoured_on_postgresql_only() {
        let text = "analytics:\n  ingestion:\n    workers: 8\n";
        let reported = |driver: &str| {
            load_text(text, &[("ANALYTICS_DATABASE__DRIVER", driver)])
                .expect("loads")
                .unhonoured_keys
                .contains(&"analytics.ingestion.workers".to_string())
        };
        assert!(reported("sqlite"));
        assert!(!reported("postgres"));
    }

    #[test]
    fn secret_never_prints() {
        let secret = Secret::new("hunter2");
        assert_eq!(format!("{secret} {secret:?}"), "<redacted> <redacted>");
        assert_eq!(secret.expose(), "hunter2");
    }
}
