//! Replaying dead letters after a fix (a custom schema corrected, a
//! producer's bug understood): each stored message is decoded again with
//! today's validator; the ones that now pass are stored through the
//! pipeline under the id they were given on arrival (so a replay repeated
//! or interrupted counts nothing twice) and their dead letters deleted;
//! the others stay, with the new error and one more attempt.

use std::time::Duration;

use serde::Serialize;

use super::{DefaultId, Message, PayloadKind, decode_events};
use crate::pipeline::validate::EventValidator;
use crate::pipeline::{Pipeline, Refused, SubmitError};
use crate::store::{DeadLetterQuery, Store, StoreError};

/// Dead letters read and replayed per round.
const PAGE: usize = 500;

/// What a replay did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ReplayReport {
    /// Dead letters looked at.
    pub examined: u64,
    /// Messages whose events are now stored (their dead letters deleted).
    pub replayed: u64,
    /// Events newly stored.
    pub events_stored: u64,
    /// Events that were stored already.
    pub duplicates: u64,
    /// Dead letters that still fail (kept).
    pub still_failing: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("storing replayed events failed: {0}")]
    Submit(#[from] SubmitError),
}

/// Replays the dead letters of `source` (every source when `None`).
pub async fn replay(
    store: &dyn Store,
    pipeline: &Pipeline,
    validator: &EventValidator,
    source: Option<&str>,
) -> Result<ReplayReport, ReplayError> {
    let mut report = ReplayReport::default();
    let mut after_id = 0;
    loop {
        let page = store
            .list_dead_letters(&DeadLetterQuery {
                source: source.map(str::to_string),
                after_id,
                limit: PAGE,
            })
            .await?;
        let Some(last) = page.last() else {
            return Ok(report);
        };
        after_id = last.id;
        let mut events = Vec::new();
        let mut replayed_ids = Vec::new();
        for stored in &page {
            report.examined += 1;
            let letter = &stored.letter;
            let outcome = if letter.payload_truncated {
                Err("payload was truncated when dead-lettered; it cannot be replayed".to_string())
            } else {
                let kind = if letter.source == "nats" {
                    PayloadKind::of_subject(&letter.topic)
                } else {
                    PayloadKind::Event
                };
                decode_events(
                    validator,
                    &Message {
                        topic: &letter.topic,
                        partition: letter.partition,
                        offset: letter.offset,
                        key: letter.key.as_deref(),
                        payload: &letter.payload,
                        default_id: DefaultId::new(&|| letter.event_id),
                        kind,
                    },
                )
            };
            match outcome {
                Ok(decoded) => {
                    events.extend(decoded);
                    replayed_ids.push(stored.id);
                }
                Err(error) => {
                    store.record_dead_letter_failure(stored.id, &error).await?;
                    report.still_failing += 1;
                }
            }
        }
        let inserted = submit_patiently(pipeline, events).await?;
        let stored = inserted.iter().filter(|new| **new).count() as u64;
        report.events_stored += stored;
        report.duplicates += inserted.len() as u64 - stored;
        // Deleted only after the events are durable: a crash in between
        // replays them again, and the store drops the duplicates.
        report.replayed += store.delete_dead_letters(&replayed_ids).await?;
    }
}

/// `analytics dead-letters replay`: replays through a pipeline of its own
/// on the configured store, then waits for the last commit.
pub async fn replay_with_config(
    config: &crate::config::Config,
    source: Option<&str>,
) -> anyhow::Result<ReplayReport> {
    let store = crate::open_store(config).await?;
    let validator = crate::event_validator(config, &*store).await?;
    let (pipeline, committer) = Pipeline::start(
        std::sync::Arc::clone(&store),
        crate::pipeline_settings(config, None)?,
        std::sync::Arc::new(crate::telemetry::Telemetry::new()),
    );
    let report = replay(&*store, &pipeline, &validator, source).await?;
    drop(pipeline);
    committer.await?;
    Ok(report)
}

/// Submits, waiting while the queue is full (a refused submission comes
/// back untouched, so nothing is copied for the retry).
async fn submit_patiently(
    pipeline: &Pipeline,
    mut events: Vec<crate::model::Event>,
) -> Result<Vec<bool>, SubmitError> {
    let mut wait = Duration::from_millis(10);
    loop {
        match pipeline.try_submit(events).await {
            Ok(inserted) => return Ok(inserted),
            Err(Refused::Failed(error)) => return Err(error),
            Err(Refused::Full(returned)) => {
                events = returned;
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(1));
            }
        }
    }
}
