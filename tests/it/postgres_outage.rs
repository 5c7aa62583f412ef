//! PostgreSQL lost and back (issue 4 item 6, issue 3 health): a private
//! server started with `pg_ctl` in a temporary directory is stopped under
//! the running service and started again. While it is down, ingest answers
//! 503 (nothing acknowledged), `/ready` and `/health` say so; when it is
//! back the service recovers by itself and nothing acknowledged is lost.
//!
//! Runs in the PostgreSQL pass of the suite (`ANALYTICS_TEST_STORE=postgres`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::json;

use crate::helpers::{postgres_selected, spawn_app_with};

pub(crate) const BIN: &str = "/usr/lib/postgresql/15/bin";

/// A throwaway PostgreSQL cluster, run as the `postgres` user (the server
/// refuses to run as root).
pub(crate) struct PrivateServer {
    data: PathBuf,
    pub(crate) port: u16,
    _directory: tempfile::TempDir,
}

fn as_postgres(program: &str, args: &[&str]) -> std::process::Output {
    Command::new("runuser")
        .args(["-u", "postgres", "--", &format!("{BIN}/{program}")])
        .args(args)
        .output()
        .unwrap_or_else(|error| panic!("run {program}: {error}"))
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl PrivateServer {
    pub(crate) fn create() -> Option<PrivateServer> {
        if !Path::new(BIN).join("pg_ctl").exists() {
            return None;
        }
        let directory = tempfile::tempdir().unwrap();
        let data = directory.path().join("data");
        // The server runs as postgres: it must own its directory.
        Command::new("chown")
            .args(["-R", "postgres", &directory.path().display().to_string()])
            .status()
            .unwrap();
        let init = as_postgres(
            "initdb",
            &[
                "-D",
                &data.display().to_string(),
                "-A",
                "trust",
                "-U",
                "postgres",
            ],
        );
        assert!(
            init.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&init.stderr)
        );
        let server = PrivateServer {
            data,
            port: free_port(),
            _directory: directory,
        };
        server.start();
        Some(server)
    }

    pub(crate) fn start(&self) {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1",
            self.port,
            self.data.display()
        );
        let started = as_postgres(
            "pg_ctl",
            &[
                "-D",
                &self.data.display().to_string(),
                "-o",
                &options,
                "-w",
                "-l",
                &self.data.join("log").display().to_string(),
                "start",
            ],
        );
        assert!(
            started.status.success(),
            "pg_ctl start: {}",
            String::from_utf8_lossy(&started.stderr)
        );
    }

    pub(crate) fn stop(&self) {
        let stopped = as_postgres(
            "pg_ctl",
            &[
                "-D",
                &self.data.display().to_string(),
                "-m",
                "fast",
                "-w",
                "stop",
            ],
        );
        assert!(
            stopped.status.success(),
            "pg_ctl stop: {}",
            String::from_utf8_lossy(&stopped.stderr)
        );
    }
}

impl Drop for PrivateServer {
    fn drop(&mut self) {
        let _ = as_postgres(
            "pg_ctl",
            &[
                "-D",
                &self.data.display().to_string(),
                "-m",
                "immediate",
                "stop",
            ],
        );
    }
}

#[tokio::test]
async fn service_rides_out_a_postgresql_outage() {
    if !postgres_selected() {
        eprintln!("SKIPPED (SQLite pass): the PostgreSQL outage test runs in the PostgreSQL pass");
        return;
    }
    let Some(server) = PrivateServer::create() else {
        panic!("PostgreSQL server binaries not found under {BIN}");
    };
    let port = server.port.to_string();
    let app = spawn_app_with(&[
        ("ANALYTICS_DATABASE__HOST", "127.0.0.1"),
        ("ANALYTICS_DATABASE__PORT", port.as_str()),
        ("ANALYTICS_DATABASE__DATABASE", "postgres"),
        ("ANALYTICS_DATABASE__SCHEMA", "outage"),
        ("ANALYTICS_ANALYTICS__QUERY__TIMEOUT", "2s"),
    ])
    .await;
    let mut acknowledged = 0;
    for _ in 0..20 {
        let (status, _) = app
            .post_json("/api/v1/events", &json!({"event_type": "order.placed"}))
            .await;
        assert_eq!(status, 201);
        acknowledged += 1;
    }

    server.stop();
    let (status, body) = app
        .post_json("/api/v1/events", &json!({"event_type": "order.placed"}))
        .await;
    assert_eq!(
        status, 503,
        "nothing is acknowledged while the database is down: {body}"
    );
    let (status, health) = app.get("/health").await;
    assert_eq!(
        (status, health["database"].as_str()),
        (503, Some("disconnected")),
        "{health}"
    );
    assert_eq!(health["status"], "unhealthy");
    let (status, _) = app.get("/ready").await;
    assert_eq!(status, 503);

    server.start();
    let mut recovered = false;
    for _ in 0..100 {
        let (status, _) = app
            .post_json("/api/v1/events", &json!({"event_type": "order.placed"}))
            .await;
        if status == 201 {
            acknowledged += 1;
            recovered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        recovered,
        "the service did not recover within 10 s of the database coming back"
    );
    let (status, _) = app.get("/ready").await;
    assert_eq!(status, 200);
    let (_, stats) = app.get("/api/v1/events/stats").await;
    assert_eq!(
        stats["total_events"], acknowledged,
        "every acknowledged event, once: {stats}"
    );
}
