//! The NATS JetStream source.
//!
//! One durable pull consumer (`nats.durable`, explicit acks, deliver all)
//! on the stream `nats.stream`, created when `nats.create_stream` and
//! missing, else bound. Every instance binds the same durable, so the
//! server splits the messages between them.
//!
//! The loop: gather messages (at most `nats.batch_size`) while the previous
//! batches are being stored, decode them, [`SourceContext::store`] them,
//! and only then acknowledge: `Ack` for stored events and for order updates
//! that count for nothing, `Term` for dead-lettered messages (stored, never
//! redelivered); the batch's last ack awaits the server's confirmation,
//! which covers the acks before it (see [`acknowledge`]). Two batches are
//! stored at once (sharing the pipeline's group commit), each acknowledged
//! after its own store; batches grow with the load, and while one is being
//! stored the next goes only once full (a commit's fixed cost is paid by
//! fewer, fuller commits). A failed commit naks
//! the batch with `nats.nak_delay` (and the source pauses that long); a
//! full ingest queue is waited out (the batch is retried; no more than three
//! batches are ever held, so memory stays bounded) for at most half of
//! `ack_wait`, then naked too. A message acknowledged late or twice is
//! deduplicated by its id:
//!
//! - the event's own `id`;
//! - else the `Nats-Msg-Id` header: that UUID when it is one, else the
//!   UUIDv5 of `nats-msg-id/<value>`;
//! - else the position id of `<stream>/<stream sequence>` and the time the
//!   stream stored the message ([`super::position_id`]).
//!
//! On shutdown it stops taking messages, finishes and acknowledges the
//! batches in hand and returns; what the client had prefetched but not handed over
//! is redelivered (to another instance, or after a restart) after
//! `ack_wait`. The client reconnects by itself; the source
//! reports the connection state and, every second, the consumer's
//! `num_pending` as the lag of `(stream, -1)`.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, PullConsumer, pull};
use async_nats::jetstream::message::AckKind;
use async_nats::jetstream::{self, stream};
use async_nats::{ConnectOptions, Event as ClientEvent, header};
use futures_util::{FutureExt, StreamExt};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::{
    Decoded, DefaultId, Message, NotStored, PayloadKind, SourceContext, derived_id,
    off_the_workers, position_id_of,
};
use crate::config::NatsConfig;
use crate::pipeline::SubmitError;
use crate::telemetry::sources::SourceStats;

/// Longest wait for the server to confirm a batch's acknowledgements.
const ACK_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the lag and the connection state are refreshed.
const LAG_INTERVAL: Duration = Duration::from_secs(1);
/// Batches being stored (and acknowledged) at once.
const BATCHES_IN_FLIGHT: usize = 2;
/// Longest pause before binding the stream and consumer again.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(5);
/// The pull requests' idle heartbeat and expiry.
pub const PULL_HEARTBEAT: Duration = Duration::from_secs(5);
pub const PULL_EXPIRES: Duration = Duration::from_secs(30);

/// The durable's `max_ack_pending` for batches of `batch_size`: an
/// instance holds up to `BATCHES_IN_FLIGHT` batches being stored plus
/// about 1.5 prefetched; room for a second one.
pub fn max_ack_pending(batch_size: usize) -> i64 {
    i64::try_from(batch_size.saturating_mul(2 * BATCHES_IN_FLIGHT + 3))
        .unwrap_or(i64::MAX)
        .max(1000)
}

/// Consumes the JetStream stream `config.stream` through the durable pull consumer `config.durable` until
/// `shutdown`, then acknowledges what it stored and returns.
pub async fn run(
    config: NatsConfig,
    context: SourceContext,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    context.stats.set_connected(false);
    let client = match connect(&config, Arc::clone(&context.stats)).await {
        Ok(client) => client,
        Err(error) => {
            tracing::error!(error = %format!("{error:#}"), "NATS source cannot start");
            return Err(error);
        }
    };
    let jetstream = jetstream::new(client.clone());
    let mut delay = Duration::from_millis(200);
    while !shutdown.is_cancelled() {
        let consumer = match bind(&jetstream, &config).await {
            Ok(consumer) => consumer,
            Err(error) => {
                tracing::warn!(
                    stream = %config.stream,
                    durable = %config.durable,
                    error = %format!("{error:#}"),
                    "cannot bind the NATS stream and consumer; retrying"
                );
                pause(&shutdown, delay).await;
                delay = (delay * 2).min(MAX_RETRY_DELAY);
                continue;
            }
        };
        delay = Duration::from_millis(200);
        let lag = tokio::spawn(report_lag(
            consumer.clone(),
            client.clone(),
            Arc::clone(&context.stats),
            config.stream.clone(),
        ));
        let consumed = consume(&consumer, &config, &context, &shutdown).await;
        lag.abort();
        if let Err(error) = consumed {
            tracing::warn!(
                stream = %config.stream,
                durable = %config.durable,
                error = %format!("{error:#}"),
                "NATS consumer stopped; binding it again"
            );
            pause(&shutdown, Duration::from_secs(1)).await;
        }
    }
    context.stats.clear_lag(&config.stream, -1);
    // Naks are sent without waiting for their confirmation: flush them.
    if let Err(error) = client.flush().await {
        tracing::debug!(error = %error, "NATS flush on shutdown failed");
    }
    context.stats.set_connected(false);
    Ok(())
}

/// A client that connects (and reconnects) in the background and reports
/// its state in `stats`.
async fn connect(
    config: &NatsConfig,
    stats: Arc<SourceStats>,
) -> anyhow::Result<async_nats::Client> {
    let mut options = match &config.credentials_file {
        Some(path) => ConnectOptions::with_credentials_file(path.clone())
            .await
            .with_context(|| format!("cannot read NATS credentials {}", path.display()))?,
        None => ConnectOptions::new(),
    };
    if !config.user.is_empty() {
        options =
            options.user_and_password(config.user.clone(), config.password.expose().to_string());
    }
    if !config.token.expose().is_empty() {
        options = options.token(config.token.expose().to_string());
    }
    let options = options
        .name("analytics")
        .retry_on_initial_connect()
        .max_reconnects(None)
        .connection_timeout(Duration::from_secs(5))
        .event_callback(move |event| {
            let stats = Arc::clone(&stats);
            async move {
                match event {
                    ClientEvent::Connected => {
                        tracing::info!("NATS connected");
                        stats.set_connected(true);
                    }
                    ClientEvent::Disconnected | ClientEvent::Closed => {
                        tracing::warn!("NATS disconnected");
                        stats.set_connected(false);
                    }
                    other => tracing::warn!(event = %other, "NATS client event"),
                }
            }
        });
    options
        .connect(config.servers.as_slice())
        .await
        .context("cannot connect to NATS")
}

/// The durable pull consumer, creating the stream (when allowed) and the
/// consumer when missing.
async fn bind(jetstream: &jetstream::Context, config: &NatsConfig) -> anyhow::Result<PullConsumer> {
    let stream = if config.create_stream {
        jetstream
            .get_or_create_stream(stream::Config {
                name: config.stream.clone(),
                subjects: config.subjects.clone(),
                ..Default::default()
            })
            .await
            .with_context(|| format!("cannot create or get stream {}", config.stream))?
    } else {
        jetstream
            .get_stream(&config.stream)
            .await
            .with_context(|| format!("cannot get stream {}", config.stream))?
    };
    let wanted = pull::Config {
        durable_name: Some(config.durable.clone()),
        ack_policy: AckPolicy::Explicit,
        ack_wait: config.ack_wait,
        deliver_policy: DeliverPolicy::All,
        max_ack_pending: max_ack_pending(config.batch_size),
        ..Default::default()
    };
    let mut consumer = stream
        .get_or_create_consumer(&config.durable, wanted.clone())
        .await
        .with_context(|| format!("cannot create or get consumer {}", config.durable))?;
    // A durable made earlier keeps the settings it was made with: bring the
    // ones this configuration owns up to date. The server refuses to change
    // some fields (e.g. the deliver or ack policy of a durable made by
    // someone else); the source then runs with the durable as it is.
    let current = &consumer.cached_info().config;
    if current.ack_wait != wanted.ack_wait || current.max_ack_pending != wanted.max_ack_pending {
        let (old_wait, old_pending) = (current.ack_wait, current.max_ack_pending);
        match stream.update_consumer(wanted).await {
            Ok(updated) => {
                tracing::info!(
                    durable = %config.durable,
                    ack_wait = ?config.ack_wait,
                    was_ack_wait = ?old_wait,
                    max_ack_pending = updated.cached_info().config.max_ack_pending,
                    was_max_ack_pending = old_pending,
                    "NATS: updated the durable consumer's settings"
                );
                consumer = updated;
            }
            Err(error) => tracing::warn!(
                durable = %config.durable,
                error = %error,
                "NATS: cannot update the durable consumer's settings; running with its own"
            ),
        }
    }
    Ok(consumer)
}

/// Takes, stores and acknowledges batches until `shutdown` (`Ok`) or until
/// the message stream ends (`Err`: bind again). Up to
/// [`BATCHES_IN_FLIGHT`] batches are stored at once (they share the
/// pipeline's group commit); each is acknowledged when its own store
/// returned. Before returning, every batch taken is finished.
async fn consume(
    consumer: &PullConsumer,
    config: &NatsConfig,
    context: &SourceContext,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let batch_size = config.batch_size.max(1);
    let mut messages = consumer
        .stream()
        .max_messages_per_batch(batch_size)
        .heartbeat(PULL_HEARTBEAT)
        .expires(PULL_EXPIRES)
        .messages()
        .await
        .context("cannot start pulling messages")?;
    let settings = Arc::new(config.clone());
    let mut in_flight = tokio::task::JoinSet::new();
    let mut batch = Vec::with_capacity(batch_size);
    let outcome = loop {
        // A free slot takes what has gathered (topped up with what the
        // client already holds); while every slot is busy, messages gather
        // into the next batch, so batches grow with the load. While a batch
        // is being stored, a partial one waits to fill: the pipeline commits
        // one transaction at a time, so sending it early would only queue
        // it, and a fuller commit costs less per event. With nothing in
        // flight it goes at once, so a light load waits for nothing.
        if !batch.is_empty() && in_flight.len() < BATCHES_IN_FLIGHT {
            while batch.len() < batch_size {
                match messages.next().now_or_never() {
                    Some(Some(Ok(message))) => batch.push(message),
                    Some(Some(Err(error))) => {
                        tracing::warn!(error = %error, "NATS pull error");
                        break;
                    }
                    Some(None) | None => break,
                }
            }
        }
        if !batch.is_empty()
            && in_flight.len() < BATCHES_IN_FLIGHT
            && (batch.len() >= batch_size || in_flight.is_empty())
        {
            in_flight.spawn(process(
                std::mem::replace(&mut batch, Vec::with_capacity(batch_size)),
                Arc::clone(&settings),
                context.clone(),
                shutdown.clone(),
            ));
            continue;
        }
        tokio::select! {
            biased;
            () = shutdown.cancelled() => break Ok(()),
            Some(finished) = in_flight.join_next(), if !in_flight.is_empty() => {
                if let Ok(false) = finished {
                    // The store failed: do not run through the stream naking it.
                    pause(shutdown, config.nak_delay).await;
                }
            }
            next = messages.next(), if batch.len() < batch_size => match next {
                Some(Ok(message)) => batch.push(message),
                Some(Err(error)) => tracing::warn!(error = %error, "NATS pull error"),
                None => break Err(anyhow::anyhow!("the message stream ended")),
            },
        }
    };
    // Messages taken are finished too; what the client prefetched but the
    // source did not take is redelivered after ack_wait (naking it here
    // would only have the still-open pull bring it straight back).
    if !batch.is_empty() {
        in_flight.spawn(process(batch, settings, context.clone(), shutdown.clone()));
    }
    // The batches taken are stored and acknowledged before returning.
    while let Some(finished) = in_flight.join_next().await {
        if let Err(error) = finished {
            tracing::error!(error = %error, "NATS batch task failed");
        }
    }
    outcome
}

/// What a message is acknowledged with once its batch is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// Stored (or counts for nothing): `Ack`.
    Done,
    /// Dead-lettered: `Term`.
    Dead,
}

/// Decodes, stores and acknowledges one batch; `false` when it could not
/// be stored (and was naked).
async fn process(
    batch: Vec<jetstream::Message>,
    config: Arc<NatsConfig>,
    context: SourceContext,
    shutdown: CancellationToken,
) -> bool {
    context.stats.record_received(batch.len());
    let decoding = {
        let (config, context) = (Arc::clone(&config), context.clone());
        off_the_workers(move || {
            let decoded = decode_batch(&batch, &config, &context);
            (batch, decoded)
        })
    };
    // None: the runtime is shutting down; the batch is redelivered.
    let Some((
        batch,
        DecodedBatch {
            events,
            dead,
            outcomes,
            skipped,
        },
    )) = decoding.await
    else {
        return false;
    };

    match store_waiting(events, dead, &config, &context, &shutdown).await {
        Ok(()) => {
            context.stats.record_skipped(skipped);
            acknowledge(&batch, &outcomes).await;
            true
        }
        Err(SubmitError::ShuttingDown) => {
            nak(&batch, None).await;
            false
        }
        Err(error) => {
            tracing::warn!(
                error = %error,
                messages = batch.len(),
                delay = ?config.nak_delay,
                "NATS batch not stored; naked for redelivery"
            );
            nak(&batch, Some(config.nak_delay)).await;
            false
        }
    }
}

/// A batch's events and dead letters, what each message is acknowledged
/// with, and how many messages carried nothing to store.
struct DecodedBatch {
    events: Vec<crate::model::Event>,
    dead: Vec<crate::store::DeadLetter>,
    outcomes: Vec<Outcome>,
    skipped: usize,
}

fn decode_batch(
    batch: &[jetstream::Message],
    config: &NatsConfig,
    context: &SourceContext,
) -> DecodedBatch {
    let mut decoded_batch = DecodedBatch {
        events: Vec::with_capacity(batch.len()),
        dead: Vec::new(),
        outcomes: Vec::with_capacity(batch.len()),
        skipped: 0,
    };
    for message in batch {
        let (stream, sequence, stored_ms) = match message.info() {
            Ok(info) => (
                info.stream,
                info.stream_sequence,
                i64::try_from(info.published.unix_timestamp_nanos() / 1_000_000).ok(),
            ),
            Err(_) => (config.stream.as_str(), 0, None),
        };
        let message_id = message
            .headers
            .as_ref()
            .and_then(|headers| headers.get(header::NATS_MESSAGE_ID))
            .map(|value| value.as_str())
            .filter(|value| !value.is_empty());
        let default_id = || message_default_id(stream, sequence, stored_ms, message_id);
        let decoded = context.decode(&Message {
            topic: message.subject.as_str(),
            partition: -1,
            offset: i64::try_from(sequence).unwrap_or(i64::MAX),
            key: message_id,
            payload: &message.payload,
            default_id: DefaultId::new(&default_id),
            kind: PayloadKind::of_subject(message.subject.as_str()),
        });
        match decoded {
            Decoded::Events(decoded) => {
                if decoded.is_empty() {
                    decoded_batch.skipped += 1;
                }
                decoded_batch.events.extend(decoded);
                decoded_batch.outcomes.push(Outcome::Done);
            }
            Decoded::Dead(letter) => {
                decoded_batch.dead.push(letter);
                decoded_batch.outcomes.push(Outcome::Dead);
            }
        }
    }
    decoded_batch
}

/// The id of an event of a message that carries none: its `Nats-Msg-Id`
/// (publishers repeat it when they publish again, at another sequence and
/// time), else its place and time in the stream.
fn message_default_id(
    stream: &str,
    sequence: u64,
    stored_ms: Option<i64>,
    message_id: Option<&str>,
) -> Uuid {
    match message_id {
        Some(value) => {
            Uuid::parse_str(value).unwrap_or_else(|_| derived_id(&format!("nats-msg-id/{value}")))
        }
        None => position_id_of(stream, &[&sequence], stored_ms),
    }
}

/// Stores a batch, waiting out a full ingest queue for at most half of
/// `ack_wait` (nothing more is taken meanwhile, so memory stays bounded).
async fn store_waiting(
    events: Vec<crate::model::Event>,
    dead: Vec<crate::store::DeadLetter>,
    config: &NatsConfig,
    context: &SourceContext,
    shutdown: &CancellationToken,
) -> Result<(), SubmitError> {
    let deadline = tokio::time::Instant::now() + config.ack_wait / 2;
    let mut delay = Duration::from_millis(20);
    let (mut events, mut dead) = (events, dead);
    loop {
        match context.try_store(events, dead).await {
            Ok(_) => return Ok(()),
            Err(NotStored::Failed(error)) => return Err(error),
            Err(NotStored::Full { .. })
                if shutdown.is_cancelled() || tokio::time::Instant::now() >= deadline =>
            {
                return Err(SubmitError::Overloaded);
            }
            // The queue is full: the batch comes back untouched.
            Err(NotStored::Full {
                events: returned,
                dead: letters,
            }) => {
                (events, dead) = (returned, letters);
                pause(shutdown, delay).await;
                delay = (delay * 2).min(Duration::from_millis(500));
            }
        }
    }
}

/// Acknowledges a stored batch and awaits the server's confirmation (a
/// "double ack", batched): every ack but the last is sent without a reply
/// subject, the last asks the server to confirm it. The server takes the
/// acks of one connection in order, so the last one's confirmation says it
/// has processed the batch's acks; a confirmation per ack would double the
/// server's and the client's work per message and tell nothing more (the
/// server confirms an ack whether or not it still had the message pending).
/// An ack lost anyway (a reconnect in the middle of the batch) only brings
/// its message back after `ack_wait`, and that redelivery is deduplicated.
async fn acknowledge(batch: &[jetstream::Message], outcomes: &[Outcome]) {
    let last = batch.len().saturating_sub(1);
    let mut failures = 0usize;
    let mut confirmed = Ok(());
    for (index, (message, outcome)) in batch.iter().zip(outcomes).enumerate() {
        let kind = match outcome {
            Outcome::Done => AckKind::Ack,
            Outcome::Dead => AckKind::Term,
        };
        if index < last {
            if let Err(error) = message.ack_with(kind).await {
                tracing::debug!(error = %error, "NATS ack not sent");
                failures += 1;
            }
        } else {
            confirmed = match tokio::time::timeout(ACK_TIMEOUT, message.double_ack_with(kind)).await
            {
                Ok(Ok(())) => Ok(()),
                Ok(Err(error)) => Err(error.to_string()),
                Err(_) => Err("no confirmation in time".to_string()),
            };
        }
    }
    if let Err(error) = confirmed {
        // Stored already: the redelivery is deduplicated.
        tracing::warn!(
            error = %error,
            messages = batch.len(),
            "NATS acknowledgements of a batch unconfirmed; the unacknowledged will be redelivered"
        );
    } else if failures > 0 {
        tracing::warn!(
            failures,
            "NATS acknowledgements not sent; those messages will be redelivered"
        );
    }
}

/// Naks a batch (redelivered after `delay`).
async fn nak(batch: &[jetstream::Message], delay: Option<Duration>) {
    for message in batch {
        if let Err(error) = message.ack_with(AckKind::Nak(delay)).await {
            tracing::debug!(error = %error, "NATS nak failed; redelivered after ack_wait");
        }
    }
}

/// Reports the consumer's pending count as the lag, and the connection
/// state, every [`LAG_INTERVAL`].
async fn report_lag(
    consumer: PullConsumer,
    client: async_nats::Client,
    stats: Arc<SourceStats>,
    stream: String,
) {
    let mut interval = tokio::time::interval(LAG_INTERVAL);
    loop {
        interval.tick().await;
        stats.set_connected(client.connection_state() == async_nats::connection::State::Connected);
        match consumer.get_info().await {
            Ok(info) => stats.set_lag(
                &stream,
                -1,
                i64::try_from(info.num_pending).unwrap_or(i64::MAX),
            ),
            Err(error) => tracing::debug!(error = %error, "NATS consumer info failed"),
        }
    }
}

/// Sleeps `delay` or until `shutdown`.
async fn pause(shutdown: &CancellationToken, delay: Duration) {
    tokio::select! {
        () = shutdown.cancelled() => {}
        () = tokio::time::sleep(delay) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sources::position_id;

    #[test]
    fn message_ids_prefer_the_header() {
        let uuid = "0190b4a1-0000-7000-8000-000000000001";
        let at = Some(1_764_500_000_000);
        assert_eq!(message_default_id("S", 7, at, Some(uuid)).to_string(), uuid);
        // a publisher's id holds across publications: no sequence, no time
        assert_eq!(
            message_default_id("S", 7, at, Some("order-42")),
            derived_id("nats-msg-id/order-42")
        );
        assert_eq!(
            message_default_id("S", 9, Some(1_764_500_999_000), Some("order-42")),
            derived_id("nats-msg-id/order-42")
        );
        assert_eq!(message_default_id("S", 7, at, None), position_id("S/7", at));
        assert_ne!(
            message_default_id("S", 7, at, None),
            message_default_id("S", 8, at, None)
        );
    }
}
