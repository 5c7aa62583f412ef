//! Durability and shutdown, shown on real processes: an event answered 2xx
//! survives `kill -9` right after the answer, and SIGTERM drains the queue
//! and exits 0.

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::ServiceProcess;

/// A service process on port 0 with its database in `database`.
fn start(database: &std::path::Path) -> ServiceProcess {
    ServiceProcess::start(&crate::helpers::store_env_for(database))
}

async fn post_events(
    client: &reqwest::Client,
    address: &str,
    count: usize,
    tag: &str,
) -> Vec<String> {
    let mut tasks = Vec::new();
    for index in 0..count {
        let client = client.clone();
        let url = format!("http://{address}/api/v1/events");
        let body =
            json!({"event_type": "order.placed", "properties": {"tag": tag, "index": index}});
        tasks.push(tokio::spawn(async move {
            let response = client.post(url).json(&body).send().await.ok()?;
            if response.status().is_success() {
                let body: Value = response.json().await.ok()?;
                body["event_id"].as_str().map(str::to_string)
            } else {
                None
            }
        }));
    }
    let mut acknowledged = Vec::new();
    for task in tasks {
        if let Ok(Some(id)) = task.await {
            acknowledged.push(id);
        }
    }
    acknowledged
}

async fn stored_ids(client: &reqwest::Client, address: &str) -> Vec<String> {
    let body: Value = client
        .get(format!("http://{address}/api/v1/events?limit=10000"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    body["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|event| event["id"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn acknowledged_events_survive_kill_9() {
    let directory = tempfile::tempdir().unwrap();
    let database = directory.path().join("analytics.db");
    let _schema = crate::helpers::SchemaGuard::for_path(&database);
    let mut service = start(&database);
    let client = reqwest::Client::new();
    let acknowledged = post_events(&client, &service.address, 300, "kill").await;
    assert_eq!(acknowledged.len(), 300);
    service.child.kill().expect("SIGKILL"); // std's kill is SIGKILL on Unix
    service.child.wait().unwrap();

    let mut restarted = start(&database);
    let stored = stored_ids(&client, &restarted.address).await;
    let missing: Vec<&String> = acknowledged
        .iter()
        .filter(|id| !stored.contains(id))
        .collect();
    assert!(
        missing.is_empty(),
        "{} acknowledged events lost: {missing:?}",
        missing.len()
    );
    assert_eq!(stored.len(), 300);
    let stats: Value = client
        .get(restarted.url("/api/v1/events/stats"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        stats["total_events"], 300,
        "rollups match the stored events after a crash"
    );
    restarted.child.kill().unwrap();
    restarted.child.wait().unwrap();
}

/// Posts events from `workers` concurrent clients until the service stops
/// answering; returns the ids it acknowledged.
async fn post_until_refused(
    client: reqwest::Client,
    address: String,
    workers: usize,
    acknowledged_count: Arc<AtomicUsize>,
) -> Vec<String> {
    let mut tasks = Vec::new();
    for worker in 0..workers {
        let client = client.clone();
        let url = format!("http://{address}/api/v1/events");
        let counter = Arc::clone(&acknowledged_count);
        tasks.push(tokio::spawn(async move {
            let mut acknowledged = Vec::new();
            for index in 0..100_000 {
                let body = json!({"event_type": "order.placed", "properties": {"worker": worker, "index": index}});
                let Ok(response) = client.post(&url).json(&body).send().await else { break };
                if !response.status().is_success() {
                    break;
                }
                let Ok(body) = response.json::<Value>().await else { break };
                if let Some(id) = body["event_id"].as_str() {
                    acknowledged.push(id.to_string());
                    counter.fetch_add(1, Ordering::SeqCst);
                }
            }
            acknowledged
        }));
    }
    let mut acknowledged = Vec::new();
    for task in tasks {
        acknowledged.extend(task.await.unwrap());
    }
    acknowledged
}

#[tokio::test]
async fn sigterm_drains_and_exits_zero() {
    let directory = tempfile::tempdir().unwrap();
    let database = directory.path().join("analytics.db");
    let _schema = crate::helpers::SchemaGuard::for_path(&database);
    let mut service = start(&database);
    let client = reqwest::Client::new();
    let counter = Arc::new(AtomicUsize::new(0));
    let sender = tokio::spawn(post_until_refused(
        client.clone(),
        service.address.clone(),
        8,
        Arc::clone(&counter),
    ));
    // Signal while requests are in flight.
    for _ in 0..1000 {
        if counter.load(Ordering::SeqCst) >= 100 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(
        counter.load(Ordering::SeqCst) >= 100,
        "the service never took load"
    );
    let pid = service.child.id().to_string();
    let status = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(status.success());
    let acknowledged = sender.await.unwrap();
    let exit = tokio::task::spawn_blocking(move || service.child.wait().unwrap())
        .await
        .unwrap();
    assert!(exit.success(), "exit status {exit:?}");

    let mut restarted = start(&database);
    let stored = stored_ids(&client, &restarted.address).await;
    let missing = acknowledged
        .iter()
        .filter(|id| !stored.contains(id))
        .count();
    assert_eq!(
        missing,
        0,
        "{missing} of {} events acknowledged around SIGTERM were lost",
        acknowledged.len()
    );
    restarted.child.kill().unwrap();
    restarted.child.wait().unwrap();
}
