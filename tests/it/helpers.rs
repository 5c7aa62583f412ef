//! `spawn_app()`: the real service in process, on port 0, with its own
//! store, so tests run in parallel: a SQLite file in a temporary directory,
//! or with `ANALYTICS_TEST_STORE=postgres` a fresh PostgreSQL schema
//! (`t_<hash of that file's path>`, dropped when the test app drops).
//!
//! Tests name their store by the SQLite path (`ANALYTICS_DATABASE__PATH`);
//! under PostgreSQL the same path maps to the same schema, so a test that
//! restarts the service on "the same database" works on both stores.
//! PostgreSQL is found through `PGHOST`, `PGPORT`, `PGUSER` and
//! `PGDATABASE` (defaults `127.0.0.1`, `5432`, `postgres`, `test`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use analytics::config;
use analytics::{Listeners, run};
use serde_json::Value;
use tempfile::TempDir;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub struct TestApp {
    pub address: SocketAddr,
    pub metrics_address: SocketAddr,
    pub client: reqwest::Client,
    pub shutdown: CancellationToken,
    pub server: Option<JoinHandle<anyhow::Result<()>>>,
    pub directory: TempDir,
    /// Drops the PostgreSQL schema (declared after `server`: dropped last).
    _schema: Option<SchemaGuard>,
}

fn env_or(key: &str, default: &str) -> String {
    std::env::var(key).unwrap_or_else(|_| default.to_string())
}

/// Whether this run tests the PostgreSQL store: `ANALYTICS_TEST_STORE=postgres`
/// and a server answers. Without one it says SKIPPED loudly and the tests
/// run on SQLite, except under `CI=true`, where that is a failure.
pub fn postgres_selected() -> bool {
    static SELECTED: OnceLock<bool> = OnceLock::new();
    *SELECTED.get_or_init(|| {
        if std::env::var("ANALYTICS_TEST_STORE").as_deref() != Ok("postgres") {
            return false;
        }
        let address = format!(
            "{}:{}",
            env_or("PGHOST", "127.0.0.1"),
            env_or("PGPORT", "5432")
        );
        let reachable = std::net::ToSocketAddrs::to_socket_addrs(&address)
            .ok()
            .and_then(|mut addresses| addresses.next())
            .is_some_and(|socket| {
                std::net::TcpStream::connect_timeout(&socket, Duration::from_secs(3)).is_ok()
            });
        if !reachable {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "ANALYTICS_TEST_STORE=postgres under CI, but PostgreSQL at {address} is unreachable"
            );
            eprintln!("SKIPPED: PostgreSQL unreachable at {address}; running on SQLite instead");
        }
        reachable
    })
}

/// The PostgreSQL schema that stands for the SQLite file `database`.
pub fn schema_for(database: &Path) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(database.as_os_str().as_encoded_bytes());
    let hex: String = digest[..16]
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect();
    format!("t_{hex}")
}

/// The environment that points a service (in process or a child) at the
/// store of the SQLite file `database`: that file, or under PostgreSQL its
/// schema.
pub fn store_env_for(database: &Path) -> Vec<(String, String)> {
    let mut env = vec![(
        "ANALYTICS_DATABASE__PATH".to_string(),
        database.display().to_string(),
    )];
    if postgres_selected() {
        env.extend(
            [
                ("ANALYTICS_DATABASE__DRIVER", "postgres".to_string()),
                ("ANALYTICS_DATABASE__SCHEMA", schema_for(database)),
                ("ANALYTICS_DATABASE__HOST", env_or("PGHOST", "127.0.0.1")),
                ("ANALYTICS_DATABASE__PORT", env_or("PGPORT", "5432")),
                ("ANALYTICS_DATABASE__USER", env_or("PGUSER", "postgres")),
                ("ANALYTICS_DATABASE__DATABASE", env_or("PGDATABASE", "test")),
                // Tests run in parallel; the server allows 100 connections.
                ("ANALYTICS_DATABASE__MAX_CONNECTIONS", "8".to_string()),
                ("ANALYTICS_DATABASE__MAX_IDLE_CONNECTIONS", "8".to_string()),
            ]
            .map(|(key, value)| (key.to_string(), value)),
        );
    }
    env
}

/// Drops the PostgreSQL schema of a SQLite path when dropped (nothing
/// under SQLite, whose file goes with its temporary directory).
pub struct SchemaGuard {
    schema: String,
}

impl SchemaGuard {
    pub fn for_path(database: &Path) -> Option<SchemaGuard> {
        postgres_selected().then(|| SchemaGuard {
            schema: schema_for(database),
        })
    }
}

impl Drop for SchemaGuard {
    fn drop(&mut self) {
        // Bounded: a failed test may leave a transaction of its own open,
        // whose connection cannot roll back while this blocks its runtime;
        // then the schema stays (with a warning) rather than the test hang.
        // The service under test may still hold a lock in an open
        // transaction that cannot finish while this blocks its runtime:
        // its backends are ended first.
        let statement = format!(
            "SET lock_timeout = '10s';
             SELECT pg_terminate_backend(l.pid) FROM pg_locks l
                 JOIN pg_class c ON c.oid = l.relation
                 JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE n.nspname = '{schema}' AND l.pid <> pg_backend_pid();
             DROP SCHEMA IF EXISTS {schema} CASCADE",
            schema = self.schema
        );
        // Drop may run inside a runtime, which must not block: a thread
        // with its own small runtime does the work.
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            runtime.block_on(async move {
                let mut config = tokio_postgres::Config::new();
                config
                    .host(env_or("PGHOST", "127.0.0.1"))
                    .port(env_or("PGPORT", "5432").parse().ok()?)
                    .user(env_or("PGUSER", "postgres"))
                    .dbname(env_or("PGDATABASE", "test"));
                let (client, driver) = config.connect(tokio_postgres::NoTls).await.ok()?;
                tokio::spawn(driver);
                client.batch_execute(&statement).await.ok()
            })
        })
        .join();
        if !matches!(dropped, Ok(Some(()))) {
            eprintln!("warning: could not drop test schema {}", self.schema);
        }
    }
}

/// Starts the service with the default configuration plus `overrides`
/// (`ANALYTICS_*` environment pairs).
pub async fn spawn_app_with(overrides: &[(&str, &str)]) -> TestApp {
    let directory = tempfile::tempdir().expect("temp dir");
    // A test that names its database (a restart on the same one) gets the
    // store of that path; the schema guard stays with the app that made it.
    let named = overrides
        .iter()
        .find(|(key, _)| *key == "ANALYTICS_DATABASE__PATH")
        .map(|(_, path)| Path::new(path).to_path_buf());
    let database = named
        .clone()
        .unwrap_or_else(|| directory.path().join("analytics.db"));
    let mut env = store_env_for(&database);
    env.extend(
        overrides
            .iter()
            .map(|(key, value)| (key.to_string(), value.to_string())),
    );
    let schema = match named {
        Some(_) => None,
        None => SchemaGuard::for_path(&database),
    };
    let loaded = config::load(None, &env).expect("valid test config");
    let api = TcpListener::bind("127.0.0.1:0").await.expect("bind api");
    let metrics = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind metrics");
    let address = api.local_addr().unwrap();
    let metrics_address = metrics.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(run(
        loaded,
        Listeners {
            api,
            metrics: Some(metrics),
        },
        shutdown.clone(),
    ));
    let app = TestApp {
        address,
        metrics_address,
        client: reqwest::Client::new(),
        shutdown,
        server: Some(server),
        directory,
        _schema: schema,
    };
    app.wait_ready().await;
    app
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(&[]).await
}

impl TestApp {
    /// The environment pointing another service (a restart, a child
    /// process) at this app's store.
    #[allow(dead_code)] // for tests that run a child on this app's store
    pub fn store_env(&self) -> Vec<(String, String)> {
        store_env_for(&self.directory.path().join("analytics.db"))
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.address, path)
    }

    async fn wait_ready(&self) {
        for _ in 0..200 {
            if let Ok(response) = self.client.get(self.url("/ready")).send().await
                && response.status() == 200
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("service did not become ready");
    }

    pub async fn post_json(&self, path: &str, body: &Value) -> (u16, Value) {
        let response = self
            .client
            .post(self.url(path))
            .json(body)
            .send()
            .await
            .expect("request");
        read(response).await
    }

    pub async fn post_raw(
        &self,
        path: &str,
        content_type: Option<&str>,
        body: impl Into<reqwest::Body>,
    ) -> (u16, Value) {
        let mut request = self.client.post(self.url(path)).body(body);
        if let Some(content_type) = content_type {
            request = request.header("content-type", content_type);
        }
        read(request.send().await.expect("request")).await
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        read(
            self.client
                .get(self.url(path))
                .send()
                .await
                .expect("request"),
        )
        .await
    }

    pub async fn get_query(&self, path: &str, query: &[(&str, String)]) -> (u16, Value) {
        read(
            self.client
                .get(self.url(path))
                .query(query)
                .send()
                .await
                .expect("request"),
        )
        .await
    }

    pub async fn metrics_text(&self) -> String {
        self.client
            .get(format!("http://{}/metrics", self.metrics_address))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("metrics body")
    }

    /// Stops the service and waits for its drain.
    pub async fn stop(&mut self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        self.server
            .take()
            .expect("running")
            .await
            .expect("server task")
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

pub async fn read(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    let text = response.text().await.expect("body");
    let value = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text)
            .unwrap_or_else(|_| panic!("body is not JSON (status {status}): {text}"))
    };
    (status, value)
}

/// RFC 3339 of epoch milliseconds.
pub fn rfc3339(millis: i64) -> String {
    analytics::model::event::format_timestamp(millis)
}

pub fn now_ms() -> i64 {
    analytics::model::event::now_ms()
}

/// A service process of the real binary, on port 0, with the environment
/// `env`; `address` is the API address it logged at startup.
pub struct ServiceProcess {
    pub child: std::process::Child,
    pub address: String,
    /// The Prometheus listener's address.
    pub metrics_address: String,
}

impl ServiceProcess {
    pub fn start(env: &[(String, String)]) -> ServiceProcess {
        use std::io::{BufRead, BufReader};
        use std::process::{Command, Stdio};
        let mut child = Command::new(env!("CARGO_BIN_EXE_analytics"))
            .arg("serve")
            .env("ANALYTICS_SERVER__PORT", "0")
            .env("ANALYTICS_METRICS__PORT", "0")
            .envs(env.iter().cloned())
            .env("ANALYTICS_LOGGING__FORMAT", "json")
            .env("ANALYTICS_LOGGING__LEVEL", "info")
            .env_remove("ANALYTICS_CONFIG")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the analytics binary");
        let stdout = child.stdout.take().expect("stdout");
        let (sender, receiver) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut sent = false;
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if !sent
                    && let Ok(value) = serde_json::from_str::<Value>(&line)
                    && let Some(address) = value["fields"]["api_addr"].as_str()
                {
                    let metrics = value["fields"]["metrics_addr"].as_str().unwrap_or("");
                    let _ = sender.send((address.to_string(), metrics.to_string()));
                    sent = true;
                }
            }
        });
        let (address, metrics_address) = receiver
            .recv_timeout(Duration::from_secs(60))
            .expect("service reported its address");
        ServiceProcess {
            child,
            address,
            metrics_address,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.address, path)
    }

    /// `http://<api address>`.
    #[allow(dead_code)] // for the stream tests
    pub fn base_url(&self) -> String {
        format!("http://{}", self.address)
    }

    /// The Prometheus exposition URL (default `metrics.path`).
    #[allow(dead_code)] // for the stream tests
    pub fn metrics_url(&self) -> String {
        format!("http://{}/metrics", self.metrics_address)
    }
}

/// The range the multi-process and stream tests read: the last two days
/// and the next hour.
pub fn stats_range() -> Vec<(&'static str, String)> {
    let now = now_ms();
    vec![
        ("start_time", rfc3339(now - 2 * 86_400_000)),
        ("end_time", rfc3339(now + 3_600_000)),
    ]
}

/// `GET url?query` as JSON, waiting out 429 answers as a well-behaved
/// client does (the tests that turn rate limiting on share one budget
/// between their load and their checks).
pub async fn get_admitted(client: &reqwest::Client, url: &str, query: &[(&str, String)]) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let response = client.get(url).query(query).send().await.expect("GET");
        if response.status() != reqwest::StatusCode::TOO_MANY_REQUESTS || Instant::now() > deadline
        {
            return response.json().await.expect("JSON body");
        }
        let wait = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|value| value.to_str().ok()?.parse::<u64>().ok())
            .unwrap_or(1);
        tokio::time::sleep(Duration::from_secs(wait.clamp(1, 5))).await;
    }
}

/// Polls `/api/v1/events/stats` at `address` until it counts `expected`
/// events (or the deadline), and returns the last answer.
pub async fn wait_for_total(client: &reqwest::Client, address: &str, expected: u64) -> Value {
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let stats = get_admitted(
            client,
            &format!("http://{address}/api/v1/events/stats"),
            &stats_range(),
        )
        .await;
        let total = stats["total_events"].as_u64().unwrap_or(0);
        if total >= expected || Instant::now() > deadline {
            return stats;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Stats and metric rollups equal the raw counts `by_type`.
pub async fn assert_counts(
    client: &reqwest::Client,
    address: &str,
    by_type: &BTreeMap<String, u64>,
) {
    let expected_total: u64 = by_type.values().sum();
    let stats = wait_for_total(client, address, expected_total).await;
    assert_eq!(stats["total_events"], expected_total, "{stats}");
    let counted: BTreeMap<String, u64> =
        serde_json::from_value(stats["by_type"].clone()).expect("by_type");
    assert_eq!(&counted, by_type);
    for (event_type, count) in by_type {
        let mut query = stats_range();
        query.push(("metric_name", format!("events.count.{event_type}")));
        query.push(("interval", "1h".to_string()));
        let metrics =
            get_admitted(client, &format!("http://{address}/api/v1/metrics"), &query).await;
        let rolled_up: f64 = metrics["result"]["data_points"]
            .as_array()
            .unwrap_or_else(|| panic!("data points: {metrics}"))
            .iter()
            .map(|point| point["value"].as_f64().unwrap())
            .sum();
        assert_eq!(rolled_up as u64, *count, "rollup of {event_type}");
    }
}
