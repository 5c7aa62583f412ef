//! Redis shares the rate-limit budgets and the query cache: against the
//! real Redis (127.0.0.1:6379, or `TEST_REDIS_HOST` / `TEST_REDIS_PORT`),
//! each test under a random key prefix; the outage test starts a private
//! `redis-server` on a free port and kills and restarts it.
//!
//! Without a Redis these tests say `SKIPPED: Redis unreachable` and pass,
//! except under `CI=true`, where that is a failure.

use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::cache::{placed_per_hour, series_value, total};
use crate::helpers::{TestApp, now_ms, spawn_app_with};

const DAY: i64 = 86_400_000;

fn redis_address() -> (String, u16) {
    let host = std::env::var("TEST_REDIS_HOST").unwrap_or_else(|_| "127.0.0.1".into());
    let port = std::env::var("TEST_REDIS_PORT")
        .ok()
        .and_then(|port| port.parse().ok())
        .unwrap_or(6379);
    (host, port)
}

fn reachable(host: &str, port: u16) -> bool {
    std::net::ToSocketAddrs::to_socket_addrs(&(host, port))
        .ok()
        .and_then(|mut addresses| addresses.next())
        .is_some_and(|address| {
            TcpStream::connect_timeout(&address, Duration::from_millis(500)).is_ok()
        })
}

/// Whether the shared Redis answers; says SKIPPED when not (fails under CI).
pub(crate) fn shared_redis() -> Option<(String, u16)> {
    let (host, port) = redis_address();
    if reachable(&host, port) {
        return Some((host, port));
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "Redis at {host}:{port} is unreachable under CI"
    );
    eprintln!("SKIPPED: Redis unreachable at {host}:{port}");
    None
}

pub(crate) fn random_prefix() -> String {
    format!("test:{}:", uuid::Uuid::new_v4().simple())
}

/// The environment of an app using Redis at `host:port` under `prefix`.
pub(crate) fn redis_env(host: &str, port: u16, prefix: &str) -> Vec<(String, String)> {
    vec![
        ("ANALYTICS_REDIS__ENABLED".into(), "true".into()),
        ("ANALYTICS_REDIS__HOST".into(), host.into()),
        ("ANALYTICS_REDIS__PORT".into(), port.to_string()),
        ("ANALYTICS_REDIS__KEY_PREFIX".into(), prefix.into()),
        ("ANALYTICS_REDIS__POOL_SIZE".into(), "2".into()),
    ]
}

async fn spawn_with(env: &[(String, String)], more: &[(&str, &str)]) -> TestApp {
    let mut overrides: Vec<(&str, &str)> = env
        .iter()
        .map(|(key, value)| (key.as_str(), value.as_str()))
        .collect();
    overrides.extend_from_slice(more);
    spawn_app_with(&overrides).await
}

#[tokio::test]
async fn two_instances_share_one_rate_limit_budget() {
    let Some((host, port)) = shared_redis() else {
        return;
    };
    let env = redis_env(&host, port, &random_prefix());
    // One request a minute: nothing refills during the test.
    let limited = [
        ("ANALYTICS_SECURITY__RATE_LIMIT__REQUESTS_PER_MINUTE", "1"),
        ("ANALYTICS_SECURITY__RATE_LIMIT__BURST", "4"),
        ("ANALYTICS_SECURITY__RATE_LIMIT__EXEMPT", "[]"),
    ];
    let first = spawn_with(&env, &limited).await;
    let second = spawn_with(&env, &limited).await;
    let mut statuses = Vec::new();
    let mut remaining = Vec::new();
    for round in 0..10 {
        let app = if round % 2 == 0 { &first } else { &second };
        let response = app
            .client
            .get(app.url("/api/v1/events"))
            .send()
            .await
            .expect("request");
        statuses.push(response.status().as_u16());
        remaining.push(
            response
                .headers()
                .get("x-ratelimit-remaining")
                .and_then(|value| value.to_str().ok())
                .unwrap_or("-")
                .to_string(),
        );
    }
    assert_eq!(
        statuses,
        [200, 200, 200, 200, 429, 429, 429, 429, 429, 429],
        "one budget of 4 across both instances (remaining: {remaining:?})"
    );
    assert_eq!(&remaining[..4], ["3", "2", "1", "0"]);
    let errors = series_value(
        &first.metrics_text().await,
        "analytics_redis_errors_total{use=\"limiter\"}",
    );
    assert_eq!(errors, 0.0);
}

#[tokio::test]
async fn committed_event_invalidates_the_shared_cache_within_a_second() {
    let Some((host, port)) = shared_redis() else {
        return;
    };
    let env = redis_env(&host, port, &random_prefix());
    let app = spawn_with(&env, &[]).await;
    let day_start = (now_ms() - 4 * DAY).div_euclid(DAY) * DAY;
    let (start, end) = (day_start, day_start + DAY - 1);
    let event =
        |offset: i64| json!({"event_type": "order.placed", "timestamp": day_start + offset});
    assert_eq!(app.post_json("/api/v1/events", &event(60_000)).await.0, 201);
    assert_eq!(placed_per_hour(&app, start, end).await["cached"], false);
    let cached = placed_per_hour(&app, start, end).await;
    assert_eq!(cached["cached"], true, "{cached}");
    assert_eq!(total(&cached), 1.0);
    let (_, health) = app.get("/health").await;
    assert_eq!(health["cache"], "connected", "{health}");

    assert_eq!(
        app.post_json("/api/v1/events", &event(120_000)).await.0,
        201
    );
    // The generation bump runs beside the committer: allow it the second
    // the contract allows.
    let deadline = Instant::now() + Duration::from_secs(1);
    loop {
        let body = placed_per_hour(&app, start, end).await;
        if total(&body) == 2.0 {
            break;
        }
        assert!(Instant::now() < deadline, "still stale after 1 s: {body}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A private `redis-server`, killed when dropped.
struct PrivateRedis {
    child: Option<Child>,
}

impl PrivateRedis {
    /// Starts one on `port` and waits (at most 5 s) until it accepts.
    fn start(port: u16) -> Option<PrivateRedis> {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .args(["--bind", "127.0.0.1"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        let mut redis = PrivateRedis { child: Some(child) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while !reachable("127.0.0.1", port) {
            if Instant::now() > deadline {
                redis.stop();
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(redis)
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.stop();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .expect("free port")
}

async fn health(app: &TestApp) -> (u16, serde_json::Value) {
    app.get("/health").await
}

#[tokio::test]
async fn redis_down_degrades_and_redis_back_reconnects_by_itself() {
    let port = free_port();
    let Some(mut redis) = PrivateRedis::start(port) else {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "cannot start redis-server under CI"
        );
        eprintln!("SKIPPED: Redis unreachable (redis-server did not start on port {port})");
        return;
    };
    let env = redis_env("127.0.0.1", port, &random_prefix());
    let limited = [
        (
            "ANALYTICS_SECURITY__RATE_LIMIT__REQUESTS_PER_MINUTE",
            "6000",
        ),
        ("ANALYTICS_SECURITY__RATE_LIMIT__BURST", "1000"),
        ("ANALYTICS_SECURITY__RATE_LIMIT__EXEMPT", "[]"),
    ];
    let app = spawn_with(&env, &limited).await;
    let day_start = (now_ms() - 2 * DAY).div_euclid(DAY) * DAY;
    let (start, end) = (day_start, day_start + DAY - 1);
    let event =
        |offset: i64| json!({"event_type": "order.placed", "timestamp": day_start + offset});
    assert_eq!(app.post_json("/api/v1/events", &event(1)).await.0, 201);
    placed_per_hour(&app, start, end).await;
    assert_eq!(placed_per_hour(&app, start, end).await["cached"], true);
    assert_eq!(health(&app).await.1["status"], "healthy");

    redis.stop();
    // Requests keep succeeding from the store, limiter failing open.
    assert_eq!(app.post_json("/api/v1/events", &event(2)).await.0, 201);
    for _ in 0..3 {
        let body = placed_per_hour(&app, start, end).await;
        assert_eq!(body["cached"], false, "{body}");
        assert_eq!(total(&body), 2.0, "{body}");
    }
    let (status, body) = health(&app).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "degraded", "{body}");
    assert_eq!(body["cache"], "disconnected", "{body}");
    let metrics = app.metrics_text().await;
    assert!(
        series_value(&metrics, "analytics_redis_errors_total{use=\"limiter\"}") > 0.0,
        "{metrics}"
    );

    let _redis = PrivateRedis::start(port).expect("redis-server restarts");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = health(&app).await;
        if status == 200 && body["status"] == "healthy" {
            assert_eq!(body["cache"], "connected");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no reconnection within 10 s: {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Caching again.
    placed_per_hour(&app, start, end).await;
    let body = placed_per_hour(&app, start, end).await;
    assert_eq!(body["cached"], true, "{body}");
    assert_eq!(total(&body), 2.0);
}

#[tokio::test]
async fn redis_limiter_keeps_the_in_process_gcra_semantics() {
    use analytics::cache::redis::RedisLink;
    use analytics::config::Config;
    use analytics::limits::{RateLimiter, RedisGcraLimiter};

    let Some((host, port)) = shared_redis() else {
        return;
    };
    let mut config = Config::default().redis;
    config.enabled = true;
    config.host = host;
    config.port = port;
    config.key_prefix = random_prefix();
    let errors = prometheus::IntCounterVec::new(
        prometheus::Opts::new("redis_errors_total", "test"),
        &["use"],
    )
    .expect("counter");
    let link = RedisLink::open(&config, errors.clone()).expect("link");
    // 600 a minute: one request every 100 ms, burst 3.
    let limiter = RedisGcraLimiter::new(link, 600, 3, false);
    let mut remaining = Vec::new();
    for _ in 0..3 {
        let decision = limiter.check("client").await;
        assert!(decision.allowed);
        remaining.push(decision.remaining);
    }
    assert_eq!(remaining, [2, 1, 0]);
    let refused = limiter.check("client").await;
    assert!(!refused.allowed);
    assert!(
        refused.retry_after > Duration::ZERO && refused.retry_after <= Duration::from_millis(100),
        "{refused:?}"
    );
    // Another client has its own budget.
    assert!(limiter.check("other").await.allowed);
    tokio::time::sleep(refused.retry_after + Duration::from_millis(20)).await;
    let refilled = limiter.check("client").await;
    assert!(refilled.allowed, "{refilled:?}");
    assert_eq!(refilled.remaining, 0);
    assert_eq!(errors.with_label_values(&["limiter"]).get(), 0);
}

#[tokio::test]
async fn commit_on_one_instance_invalidates_the_cache_of_another() {
    let Some((host, port)) = shared_redis() else {
        return;
    };
    // Two instances need one store: PostgreSQL (SQLite is one process's).
    if !crate::helpers::postgres_selected() {
        eprintln!("SKIPPED: two instances on one store need ANALYTICS_TEST_STORE=postgres");
        return;
    }
    let env = redis_env(&host, port, &random_prefix());
    let first = spawn_with(&env, &[]).await;
    let database = first.directory.path().join("analytics.db");
    let database = database.display().to_string();
    let second = spawn_with(&env, &[("ANALYTICS_DATABASE__PATH", database.as_str())]).await;
    let day_start = (now_ms() - 6 * DAY).div_euclid(DAY) * DAY;
    let (start, end) = (day_start, day_start + DAY - 1);
    let event =
        |offset: i64| json!({"event_type": "order.placed", "timestamp": day_start + offset});
    assert_eq!(first.post_json("/api/v1/events", &event(1)).await.0, 201);
    assert_eq!(placed_per_hour(&first, start, end).await["cached"], false);
    // The answer the first instance computed serves the second one.
    let shared = placed_per_hour(&second, start, end).await;
    assert_eq!(shared["cached"], true, "{shared}");
    assert_eq!(total(&shared), 1.0);

    // A late event through the second instance reaches the first's readers.
    assert_eq!(second.post_json("/api/v1/events", &event(2)).await.0, 201);
    let deadline = Instant::now() + Duration::from_secs(1);
    loop {
        let body = placed_per_hour(&first, start, end).await;
        if total(&body) == 2.0 {
            break;
        }
        assert!(Instant::now() < deadline, "still stale after 1 s: {body}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn service_starts_without_redis_and_fails_open_or_closed_as_configured() {
    // Nothing listens on this port: Redis is down from the start.
    let port = free_port();
    let env = redis_env("127.0.0.1", port, &random_prefix());
    let limited = [
        ("ANALYTICS_SECURITY__RATE_LIMIT__REQUESTS_PER_MINUTE", "60"),
        ("ANALYTICS_SECURITY__RATE_LIMIT__BURST", "5"),
        ("ANALYTICS_SECURITY__RATE_LIMIT__EXEMPT", "[]"),
    ];
    let open = spawn_with(&env, &limited).await;
    for _ in 0..3 {
        assert_eq!(open.get("/api/v1/events").await.0, 200);
    }
    let (status, body) = health(&open).await;
    assert_eq!(
        (status, &body["status"]),
        (200, &json!("degraded")),
        "{body}"
    );

    let closed = spawn_with(
        &env,
        &[
            limited[0],
            limited[1],
            limited[2],
            ("ANALYTICS_REDIS__FAIL_CLOSED", "true"),
        ],
    )
    .await;
    let response = closed
        .client
        .get(closed.url("/api/v1/events"))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 429);
    assert_eq!(
        response
            .headers()
            .get("retry-after")
            .and_then(|value| value.to_str().ok()),
        Some("1")
    );
    // Probes are never limited, so the state stays visible.
    assert_eq!(health(&closed).await.1["cache"], "disconnected");
}
