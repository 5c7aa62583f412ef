//! The edge of the service: rate limits, API keys, CORS, the in-flight cap,
//! connection timeouts and the live connection gauge, each against the real
//! server on port 0.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use analytics::api::security::key_digest_hex;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::{TestApp, read, spawn_app_with};

/// rpm 60 = one request per second, so a refill takes one second.
const LIMITED: &[(&str, &str)] = &[
    ("ANALYTICS_SECURITY__RATE_LIMIT__REQUESTS_PER_MINUTE", "60"),
    ("ANALYTICS_SECURITY__RATE_LIMIT__BURST", "3"),
    // Tests run from 127.0.0.1, which is exempt by default.
    ("ANALYTICS_SECURITY__RATE_LIMIT__EXEMPT", "[]"),
];

const INGEST_KEY: &str = "b25_test_ingest_and_read_key_0001";
const ADMIN_KEY: &str = "b25_test_admin_key_0002";

/// `security.api_keys` with an ingest+read key and an admin-only key.
fn api_keys_yaml() -> String {
    format!(
        "[{{name: collector, sha256: {}, scopes: [ingest, read]}}, {{name: operator, sha256: {}, scopes: [admin]}}]",
        key_digest_hex(INGEST_KEY),
        key_digest_hex(ADMIN_KEY)
    )
}

fn header<'a>(response: &'a reqwest::Response, name: &str) -> Option<&'a str> {
    response
        .headers()
        .get(name)
        .and_then(|value| value.to_str().ok())
}

async fn get_with(app: &TestApp, path: &str, headers: &[(&str, &str)]) -> reqwest::Response {
    let mut request = app.client.get(app.url(path));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.send().await.expect("request")
}

#[tokio::test]
async fn burst_passes_then_429_with_headers_then_one_more_after_the_interval() {
    let app = spawn_app_with(LIMITED).await;
    for expected_remaining in ["2", "1", "0"] {
        let response = get_with(&app, "/api/v1/events", &[]).await;
        assert_eq!(response.status(), 200);
        assert_eq!(header(&response, "x-ratelimit-limit"), Some("3"));
        assert_eq!(
            header(&response, "x-ratelimit-remaining"),
            Some(expected_remaining)
        );
    }
    let refused = get_with(&app, "/api/v1/events", &[]).await;
    assert_eq!(refused.status(), 429);
    assert_eq!(header(&refused, "retry-after"), Some("1"));
    assert_eq!(header(&refused, "x-ratelimit-limit"), Some("3"));
    assert_eq!(header(&refused, "x-ratelimit-remaining"), Some("0"));
    let request_id = header(&refused, "x-request-id").map(str::to_string);
    let (_, body) = read(refused).await;
    assert_eq!(body["error"], "rate limit exceeded");
    assert_eq!(body["retry_after"], 1);
    assert_eq!(body["request_id"].as_str(), request_id.as_deref());

    // Probes are never limited, even for a client over its budget.
    for path in ["/health", "/healthz", "/ready"] {
        let response = get_with(&app, path, &[]).await;
        assert_ne!(response.status(), 429, "{path}");
        assert!(header(&response, "x-ratelimit-limit").is_none(), "{path}");
    }

    tokio::time::sleep(Duration::from_millis(1050)).await;
    let again = get_with(&app, "/api/v1/events", &[]).await;
    assert_eq!(again.status(), 200);
    assert_eq!(header(&again, "x-ratelimit-remaining"), Some("0"));
    let refused_again = get_with(&app, "/api/v1/events", &[]).await;
    assert_eq!(refused_again.status(), 429);

    let metrics = app.metrics_text().await;
    assert!(
        metrics.contains("analytics_rate_limited_requests_total 2"),
        "{metrics}"
    );
}

#[tokio::test]
async fn client_at_the_allowed_rate_is_never_limited() {
    // 600 per minute = one every 100 ms; the client sends one every 120 ms,
    // and burst 2 absorbs scheduling jitter.
    let app = spawn_app_with(&[
        ("ANALYTICS_SECURITY__RATE_LIMIT__REQUESTS_PER_MINUTE", "600"),
        ("ANALYTICS_SECURITY__RATE_LIMIT__BURST", "2"),
        ("ANALYTICS_SECURITY__RATE_LIMIT__EXEMPT", "[]"),
    ])
    .await;
    let mut ticker = tokio::time::interval(Duration::from_millis(120));
    for index in 0..12 {
        ticker.tick().await;
        let response = get_with(&app, "/api/v1/events/stats", &[]).await;
        assert_eq!(response.status(), 200, "request {index} was limited");
    }
}

#[tokio::test]
async fn forwarded_clients_behind_a_trusted_proxy_have_separate_budgets() {
    let mut overrides = LIMITED.to_vec();
    overrides.push(("ANALYTICS_SECURITY__TRUSTED_PROXIES", "127.0.0.1"));
    let app = spawn_app_with(&overrides).await;
    let first = [("x-forwarded-for", "203.0.113.7")];
    for _ in 0..3 {
        assert_eq!(get_with(&app, "/api/v1/events", &first).await.status(), 200);
    }
    assert_eq!(get_with(&app, "/api/v1/events", &first).await.status(), 429);
    // A spoofed left-most entry does not help: the proxy appended the real one.
    let spoofed = [("x-forwarded-for", "198.51.100.1, 203.0.113.7")];
    assert_eq!(
        get_with(&app, "/api/v1/events", &spoofed).await.status(),
        429
    );
    let second = [("x-forwarded-for", "203.0.113.8")];
    let response = get_with(&app, "/api/v1/events", &second).await;
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "x-ratelimit-remaining"), Some("2"));
}

#[tokio::test]
async fn forwarded_for_from_an_untrusted_peer_is_ignored() {
    let app = spawn_app_with(LIMITED).await;
    for client in ["203.0.113.1", "203.0.113.2", "203.0.113.3"] {
        let headers = [("x-forwarded-for", client)];
        assert_eq!(
            get_with(&app, "/api/v1/events", &headers).await.status(),
            200
        );
    }
    let headers = [("x-forwarded-for", "203.0.113.4")];
    assert_eq!(
        get_with(&app, "/api/v1/events", &headers).await.status(),
        429
    );
}

#[tokio::test]
async fn each_api_key_has_its_own_budget() {
    let keys = api_keys_yaml();
    let mut overrides = LIMITED.to_vec();
    overrides.push(("ANALYTICS_SECURITY__API_KEY_ENABLED", "true"));
    overrides.push(("ANALYTICS_SECURITY__API_KEYS", keys.as_str()));
    let app = spawn_app_with(&overrides).await;
    let collector = format!("Bearer {INGEST_KEY}");
    let collector = [("authorization", collector.as_str())];
    for _ in 0..3 {
        assert_eq!(
            get_with(&app, "/api/v1/events", &collector).await.status(),
            200
        );
    }
    assert_eq!(
        get_with(&app, "/api/v1/events", &collector).await.status(),
        429
    );
    let operator = [("x-api-key", ADMIN_KEY)];
    let response = get_with(&app, "/api/v1/internal/ingestion-metrics", &operator).await;
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "x-ratelimit-remaining"), Some("2"));
}

#[tokio::test]
async fn api_keys_are_required_and_scoped() {
    let keys = api_keys_yaml();
    let app = spawn_app_with(&[
        ("ANALYTICS_SECURITY__API_KEY_ENABLED", "true"),
        ("ANALYTICS_SECURITY__API_KEYS", keys.as_str()),
    ])
    .await;
    let event = json!({"event_type": "order.placed"});

    // No key, a wrong key: 401 with the error shape and the request id.
    let (status, body) = app.post_json("/api/v1/events", &event).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["error"], "API key required");
    assert!(body["request_id"].is_string(), "{body}");
    let response = get_with(&app, "/api/v1/events", &[("x-api-key", "b25_wrong")]).await;
    assert_eq!(response.status(), 401);
    assert_eq!(header(&response, "www-authenticate"), Some("Bearer"));
    let (_, body) = read(response).await;
    assert_eq!(body["error"], "invalid API key");

    // The right key in either header, for its scopes.
    let bearer = format!("Bearer {INGEST_KEY}");
    let response = app
        .client
        .post(app.url("/api/v1/events"))
        .header("authorization", bearer.as_str())
        .json(&event)
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 201);
    for path in [
        "/api/v1/events",
        "/api/v1/events/stats",
        "/api/v1/dashboard/metrics",
        "/api/v1/metrics?metric_name=events.count.order.placed",
    ] {
        let response = get_with(&app, path, &[("x-api-key", INGEST_KEY)]).await;
        assert_eq!(response.status(), 200, "{path}");
    }

    // Wrong scope: 403 naming the scope.
    let response = get_with(
        &app,
        "/api/v1/internal/ingestion-metrics",
        &[("x-api-key", INGEST_KEY)],
    )
    .await;
    assert_eq!(response.status(), 403);
    let (_, body) = read(response).await;
    assert_eq!(body["details"]["required_scope"], "admin", "{body}");
    let definition =
        json!({"name": "fill.audit", "display_name": "Fill audit", "schema": {"type": "object"}});
    let response = app
        .client
        .post(app.url("/api/v1/custom-events"))
        .header("x-api-key", INGEST_KEY)
        .json(&definition)
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 403);
    let response = app
        .client
        .post(app.url("/api/v1/custom-events"))
        .header("x-api-key", ADMIN_KEY)
        .json(&definition)
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 201);
    let response = get_with(&app, "/api/v1/events", &[("x-api-key", ADMIN_KEY)]).await;
    assert_eq!(response.status(), 403, "admin does not imply read");

    // Probes need no key.
    for path in ["/health", "/healthz", "/ready"] {
        assert_eq!(get_with(&app, path, &[]).await.status(), 200, "{path}");
    }
    let metrics = app.metrics_text().await;
    assert!(
        metrics.contains("analytics_auth_refused_total{reason=\"scope\"} 3"),
        "{metrics}"
    );
}

#[tokio::test]
async fn api_keys_never_appear_in_the_log() {
    let directory = tempfile::tempdir().expect("temp dir");
    let keys = api_keys_yaml();
    let mut child = Command::new(env!("CARGO_BIN_EXE_analytics"))
        .arg("serve")
        .env("ANALYTICS_SERVER__PORT", "0")
        .env("ANALYTICS_METRICS__PORT", "0")
        .env("ANALYTICS_DATABASE__PATH", directory.path().join("a.db"))
        .env("ANALYTICS_LOGGING__FORMAT", "json")
        .env("ANALYTICS_LOGGING__LEVEL", "debug")
        .env("ANALYTICS_SECURITY__API_KEY_ENABLED", "true")
        .env("ANALYTICS_SECURITY__API_KEYS", &keys)
        .env_remove("ANALYTICS_CONFIG")
        .env_remove("ANALYTICS_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the analytics binary");
    let log = Arc::new(Mutex::new(String::new()));
    let (sender, receiver) = std::sync::mpsc::channel();
    let mut readers = Vec::new();
    for (stream, is_stdout) in [
        (
            Box::new(child.stdout.take().expect("stdout")) as Box<dyn std::io::Read + Send>,
            true,
        ),
        (Box::new(child.stderr.take().expect("stderr")), false),
    ] {
        let log = Arc::clone(&log);
        let sender = sender.clone();
        readers.push(std::thread::spawn(move || {
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                if is_stdout
                    && let Ok(value) = serde_json::from_str::<Value>(&line)
                    && let Some(address) = value["fields"]["api_addr"].as_str()
                {
                    let _ = sender.send(address.to_string());
                }
                if let Ok(mut log) = log.lock() {
                    log.push_str(&line);
                    log.push('\n');
                }
            }
        }));
    }
    let address = receiver
        .recv_timeout(Duration::from_secs(30))
        .expect("service reported its address");
    let client = reqwest::Client::new();
    let url = format!("http://{address}/api/v1/events");
    let attempts = [
        ("authorization", format!("Bearer {INGEST_KEY}")),
        ("x-api-key", INGEST_KEY.to_string()),
        ("x-api-key", ADMIN_KEY.to_string()),
        (
            "authorization",
            "Bearer b25_not_a_configured_key".to_string(),
        ),
    ];
    for (name, value) in &attempts {
        let response = client
            .post(&url)
            .header(*name, value)
            .json(&json!({"event_type": "user.login"}))
            .send()
            .await
            .expect("request");
        assert!(response.status().as_u16() < 500);
    }
    // SIGKILL after the last answer: every line about those requests has
    // been written (the request log line precedes the response).
    child.kill().expect("kill");
    child.wait().expect("wait");
    for reader in readers {
        reader.join().expect("reader thread");
    }
    let log = log.lock().expect("log").clone();
    assert!(
        log.matches("request served").count() >= attempts.len(),
        "the log was not captured: {log}"
    );
    for secret in [INGEST_KEY, ADMIN_KEY, "b25_not_a_configured_key"] {
        assert!(!log.contains(secret), "a key appears in the log:\n{log}");
    }
}

async fn preflight(app: &TestApp, origin: &str) -> reqwest::Response {
    app.client
        .request(reqwest::Method::OPTIONS, app.url("/api/v1/events"))
        .header("origin", origin)
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "content-type, authorization",
        )
        .send()
        .await
        .expect("preflight")
}

#[tokio::test]
async fn cors_answers_allowed_origins_and_refuses_others() {
    let keys = api_keys_yaml();
    // Keys on: a preflight must still be answered without one.
    let app = spawn_app_with(&[
        ("ANALYTICS_SECURITY__API_KEY_ENABLED", "true"),
        ("ANALYTICS_SECURITY__API_KEYS", keys.as_str()),
        (
            "ANALYTICS_SECURITY__CORS__ALLOWED_ORIGINS",
            "https://desk.b25.example",
        ),
        ("ANALYTICS_SECURITY__CORS__ALLOWED_METHODS", "GET,POST"),
        (
            "ANALYTICS_SECURITY__CORS__ALLOWED_HEADERS",
            "Content-Type,Authorization",
        ),
    ])
    .await;
    let allowed = preflight(&app, "https://desk.b25.example").await;
    assert_eq!(allowed.status(), 204);
    assert_eq!(
        header(&allowed, "access-control-allow-origin"),
        Some("https://desk.b25.example")
    );
    let methods = header(&allowed, "access-control-allow-methods").unwrap_or("");
    assert!(
        methods.contains("POST") && !methods.contains("DELETE"),
        "{methods}"
    );
    let headers = header(&allowed, "access-control-allow-headers")
        .unwrap_or("")
        .to_ascii_lowercase();
    assert!(headers.contains("authorization"), "{headers}");

    let refused = preflight(&app, "https://evil.example").await;
    assert!(header(&refused, "access-control-allow-origin").is_none());

    let simple = get_with(
        &app,
        "/api/v1/events",
        &[
            ("origin", "https://desk.b25.example"),
            ("x-api-key", INGEST_KEY),
        ],
    )
    .await;
    assert_eq!(simple.status(), 200);
    assert_eq!(
        header(&simple, "access-control-allow-origin"),
        Some("https://desk.b25.example")
    );
    let exposed = header(&simple, "access-control-expose-headers")
        .unwrap_or("")
        .to_ascii_lowercase();
    assert!(exposed.contains("x-request-id"), "{exposed}");
    let simple = get_with(
        &app,
        "/api/v1/events",
        &[
            ("origin", "https://evil.example"),
            ("x-api-key", INGEST_KEY),
        ],
    )
    .await;
    assert!(header(&simple, "access-control-allow-origin").is_none());
}

#[tokio::test]
async fn cors_disabled_adds_no_headers() {
    let app = spawn_app_with(&[("ANALYTICS_SECURITY__CORS__ENABLED", "false")]).await;
    let response = get_with(
        &app,
        "/api/v1/events",
        &[("origin", "http://localhost:3000")],
    )
    .await;
    assert_eq!(response.status(), 200);
    assert!(header(&response, "access-control-allow-origin").is_none());
}

/// Sends a request whose body never finishes, so it stays in flight.
async fn stalled_upload(app: &TestApp) -> TcpStream {
    let mut stream = TcpStream::connect(app.address).await.expect("connect");
    let head = format!(
        "POST /api/v1/events HTTP/1.1\r\nhost: {}\r\ncontent-type: application/json\r\ncontent-length: 1000\r\n\r\n{{\"event_type\"",
        app.address
    );
    stream.write_all(head.as_bytes()).await.expect("write");
    stream
}

#[tokio::test]
async fn requests_over_the_in_flight_cap_get_503_at_once() {
    let app = spawn_app_with(&[("ANALYTICS_SERVER__MAX_CONCURRENT_REQUESTS", "1")]).await;
    let held = stalled_upload(&app).await;
    let started = Instant::now();
    let mut refused = None;
    // The held request reaches the cap within a moment of its headers.
    while started.elapsed() < Duration::from_secs(2) {
        let response = get_with(&app, "/api/v1/events/stats", &[]).await;
        if response.status() == 503 {
            refused = Some(response);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let refused = refused.expect("a second request was refused while one was in flight");
    assert_eq!(header(&refused, "retry-after"), Some("1"));
    let (_, body) = read(refused).await;
    assert_eq!(body["error"], "too many requests in flight, retry later");
    assert!(body["request_id"].is_string());
    // Probes are not capped.
    assert_eq!(get_with(&app, "/ready", &[]).await.status(), 200);
    drop(held);
    let started = Instant::now();
    loop {
        let status = get_with(&app, "/api/v1/events/stats", &[]).await.status();
        if status == 200 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "the slot was not released"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn gauge(app: &TestApp, name: &str) -> i64 {
    let text = app.metrics_text().await;
    text.lines()
        .find_map(|line| line.strip_prefix(&format!("{name} ")))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or_else(|| panic!("{name} missing:\n{text}"))
}

/// Polls the connection gauge until it equals `expected` (accept and close
/// are asynchronous); panics after 2 s.
async fn wait_for_connections(app: &TestApp, expected: i64) {
    let started = Instant::now();
    loop {
        let value = gauge(app, "analytics_active_connections").await;
        if value == expected {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "analytics_active_connections is {value}, expected {expected}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn active_connections_counts_open_client_connections() {
    let app = spawn_app_with(&[]).await;
    // The test client's keep-alive connection from the readiness wait.
    let baseline = gauge(&app, "analytics_active_connections").await;
    let mut idle = Vec::new();
    for _ in 0..3 {
        idle.push(TcpStream::connect(app.address).await.expect("connect"));
    }
    // Idle connections with no request in flight still count.
    wait_for_connections(&app, baseline + 3).await;
    drop(idle);
    wait_for_connections(&app, baseline).await;
}

#[tokio::test]
async fn read_timeout_closes_a_connection_that_never_finishes_its_headers() {
    let app = spawn_app_with(&[("ANALYTICS_SERVER__READ_TIMEOUT", "1s")]).await;
    let mut stream = TcpStream::connect(app.address).await.expect("connect");
    stream
        .write_all(b"GET /api/v1/events HTTP/1.1\r\nhost: x\r\n")
        .await
        .expect("write");
    let started = Instant::now();
    let mut buffer = Vec::new();
    let closed =
        tokio::time::timeout(Duration::from_secs(3), stream.read_to_end(&mut buffer)).await;
    assert!(closed.is_ok(), "the connection was still open after 3 s");
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(900),
        "closed too early: {elapsed:?}"
    );
}

#[tokio::test]
async fn read_timeout_bounds_a_stalled_request_body() {
    let app = spawn_app_with(&[("ANALYTICS_SERVER__READ_TIMEOUT", "1s")]).await;
    let mut stream = stalled_upload(&app).await;
    let started = Instant::now();
    let mut buffer = Vec::new();
    let answered =
        tokio::time::timeout(Duration::from_secs(3), stream.read_to_end(&mut buffer)).await;
    assert!(answered.is_ok(), "no answer 3 s into a stalled body");
    let text = String::from_utf8_lossy(&buffer);
    assert!(text.starts_with("HTTP/1.1 4"), "{text}");
    assert!(started.elapsed() >= Duration::from_millis(900));
}
