//! Logs: `logging.format`, `logging.output`/`file_path` and `logging.level`
//! honoured by the real binary, and one structured line per request that
//! names method, route, status, latency, request id and client.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

fn spawn(database: &std::path::Path, settings: &[(&str, &str)]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_analytics"))
        .arg("serve")
        .env("ANALYTICS_SERVER__PORT", "0")
        .env("ANALYTICS_METRICS__ENABLED", "false")
        .envs(crate::helpers::store_env_for(database))
        .envs(
            settings
                .iter()
                .map(|(key, value)| (key.to_string(), value.to_string())),
        )
        .env_remove("ANALYTICS_CONFIG")
        .env_remove("ANALYTICS_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the analytics binary")
}

/// Polls `path` until a line satisfies `wanted`.
async fn wait_for_line(path: &std::path::Path, wanted: impl Fn(&str) -> bool) -> String {
    for _ in 0..300 {
        if let Ok(text) = std::fs::read_to_string(path)
            && let Some(line) = text.lines().find(|line| wanted(line))
        {
            return line.to_string();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("no matching line in {}", path.display());
}

#[tokio::test]
async fn json_lines_to_a_file_name_each_request() {
    let directory = tempfile::tempdir().unwrap();
    let _schema = crate::helpers::SchemaGuard::for_path(&directory.path().join("analytics.db"));
    let log = directory.path().join("service.log");
    let log_text = log.display().to_string();
    let mut child = spawn(
        &directory.path().join("analytics.db"),
        &[
            ("ANALYTICS_LOGGING__FORMAT", "json"),
            ("ANALYTICS_LOGGING__OUTPUT", "file"),
            ("ANALYTICS_LOGGING__FILE_PATH", log_text.as_str()),
            ("ANALYTICS_LOGGING__LEVEL", "info"),
        ],
    );
    let listening = wait_for_line(&log, |line| line.contains("analytics listening")).await;
    let listening: Value = serde_json::from_str(&listening).expect("a JSON line");
    let address = listening["fields"]["api_addr"]
        .as_str()
        .expect("api_addr")
        .to_string();
    let response = reqwest::Client::new()
        .get(format!("http://{address}/api/v1/events/stats"))
        .header("x-request-id", "log-test-7f3a")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let served = wait_for_line(&log, |line| {
        line.contains("request served") && line.contains("log-test-7f3a")
    })
    .await;
    let served: Value = serde_json::from_str(&served).expect("a JSON line");
    let span = &served["span"];
    assert_eq!(span["request_id"], "log-test-7f3a", "{served}");
    assert_eq!(span["method"], "GET");
    assert_eq!(span["route"], "/api/v1/events/stats");
    assert_eq!(span["client"], "127.0.0.1");
    assert_eq!(served["fields"]["status"], 200);
    assert!(
        served["fields"]["latency_ms"].as_f64().is_some(),
        "{served}"
    );
    child.kill().unwrap();
    child.wait().unwrap();
}

#[tokio::test]
async fn console_format_and_level_are_honoured() {
    let directory = tempfile::tempdir().unwrap();
    let _schema = crate::helpers::SchemaGuard::for_path(&directory.path().join("analytics.db"));
    let log = directory.path().join("console.log");
    let log_text = log.display().to_string();
    let mut child = spawn(
        &directory.path().join("analytics.db"),
        &[
            ("ANALYTICS_LOGGING__FORMAT", "console"),
            ("ANALYTICS_LOGGING__OUTPUT", "file"),
            ("ANALYTICS_LOGGING__FILE_PATH", log_text.as_str()),
            ("ANALYTICS_LOGGING__LEVEL", "info"),
        ],
    );
    let listening = wait_for_line(&log, |line| line.contains("analytics listening")).await;
    assert!(
        serde_json::from_str::<Value>(&listening).is_err(),
        "console lines are not JSON: {listening}"
    );
    assert!(listening.contains("INFO"), "{listening}");
    child.kill().unwrap();
    child.wait().unwrap();

    // At warn, the info lines are not written: wait until the service
    // answers (on a port picked here, since its log stays silent).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
        .to_string();
    let quiet_log = directory.path().join("quiet.log");
    let quiet_text = quiet_log.display().to_string();
    let _quiet_schema = crate::helpers::SchemaGuard::for_path(&directory.path().join("quiet.db"));
    let mut child = spawn(
        &directory.path().join("quiet.db"),
        &[
            ("ANALYTICS_LOGGING__FORMAT", "console"),
            ("ANALYTICS_LOGGING__OUTPUT", "file"),
            ("ANALYTICS_LOGGING__FILE_PATH", quiet_text.as_str()),
            ("ANALYTICS_LOGGING__LEVEL", "warn"),
            ("ANALYTICS_SERVER__PORT", port.as_str()),
        ],
    );
    let client = reqwest::Client::new();
    let mut ready = false;
    for _ in 0..300 {
        if let Ok(response) = client
            .get(format!("http://127.0.0.1:{port}/ready"))
            .send()
            .await
            && response.status() == 200
        {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(ready, "the quiet service never became ready");
    child.kill().unwrap();
    child.wait().unwrap();
    let text = std::fs::read_to_string(&quiet_log).unwrap_or_default();
    assert!(
        !text.contains("analytics listening"),
        "info line at level warn: {text}"
    );
}
