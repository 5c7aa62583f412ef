//! The NATS source (scaffold: being written).

use tokio_util::sync::CancellationToken;

use super::SourceContext;
use crate::config::NatsConfig;

/// Consumes the JetStream stream `config.stream` through the durable pull consumer `config.durable` until
/// `shutdown`, then acknowledges what it stored and returns.
pub async fn run(
    config: NatsConfig,
    context: SourceContext,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let _ = (config, context, shutdown);
    anyhow::bail!("the NATS source is not written yet")
}
