//! `spawn_app()`: the real service in process, on port 0, with its own
//! SQLite file in a temporary directory, so tests run in parallel.

use std::net::SocketAddr;
use std::time::Duration;

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
}

/// Starts the service with the default configuration plus `overrides`
/// (`ANALYTICS_*` environment pairs).
pub async fn spawn_app_with(overrides: &[(&str, &str)]) -> TestApp {
    let directory = tempfile::tempdir().expect("temp dir");
    let database = directory.path().join("analytics.db");
    let mut env = vec![(
        "ANALYTICS_DATABASE__PATH".to_string(),
        database.display().to_string(),
    )];
    env.extend(
        overrides
            .iter()
            .map(|(key, value)| (key.to_string(), value.to_string())),
    );
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
    };
    app.wait_ready().await;
    app
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(&[]).await
}

impl TestApp {
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
