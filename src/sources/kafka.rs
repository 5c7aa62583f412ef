//! The Kafka source (scaffold: being written).

use tokio_util::sync::CancellationToken;

use super::SourceContext;
use crate::config::KafkaConfig;

/// Consumes `config.topics` as one member of `config.consumer_group` until
/// `shutdown`, then commits the offsets of what it stored and returns.
pub async fn run(
    config: KafkaConfig,
    context: SourceContext,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let _ = (config, context, shutdown);
    anyhow::bail!("the Kafka source is not written yet")
}
