//! Log reads on the bus: the coordinator pulls a service's lines from the
//! operator of each host it runs on (`LogsPull`, `LogsBatch`).

use std::time::Duration;

use infra_proto::bus::v1::{LogsBatch, LogsPull};

use crate::subject::{self, Token};
use crate::{Bus, Result};

impl Bus {
    /// The next lines of log read `pull.session` from the `tier` operator on
    /// `host` ([`LogsPull`]).
    pub async fn pull_logs(&self, host: &str, tier: &str, pull: &LogsPull, timeout: Duration) -> Result<LogsBatch> {
        let subject = subject::logs(&Token::new("host", host)?, &Token::new("tier", tier)?);
        self.ask_operator(host, tier, subject, pull, timeout).await
    }

    /// Log pulls asked of this operator.
    pub async fn log_pulls(&self, host: &str, tier: &str) -> Result<async_nats::Subscriber> {
        self.requests(subject::logs(&Token::new("host", host)?, &Token::new("tier", tier)?))
            .await
    }
}
