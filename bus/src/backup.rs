//! Backup calls on the bus: the coordinator asks the operator of a host
//! that runs a service to take, list or restore its backups
//! (`BackupCall`, `BackupReply`).

use std::time::Duration;

use infra_proto::bus::v1::{BackupCall, BackupReply};

use crate::subject::{self, Token};
use crate::{Bus, Result};

impl Bus {
    /// A backup call to the `tier` operator on `host` (see
    /// [`BackupCall`]); `Err` when no answer came within `timeout`.
    pub async fn backup_call(
        &self,
        host: &str,
        tier: &str,
        ask: &BackupCall,
        timeout: Duration,
    ) -> Result<BackupReply> {
        let subject = subject::backup(&Token::new("host", host)?, &Token::new("tier", tier)?);
        self.ask_operator(host, tier, subject, ask, timeout).await
    }

    /// The backup calls asked of the `tier` operator on `host`.
    pub async fn backup_calls(&self, host: &str, tier: &str) -> Result<async_nats::Subscriber> {
        self.requests(subject::backup(&Token::new("host", host)?, &Token::new("tier", tier)?))
            .await
    }
}
