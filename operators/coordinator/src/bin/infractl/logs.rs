//! `infractl logs`: every replica's lines on every host, prefixed with
//! `host/service.replica`, as `docker compose logs` prints them.

use std::time::{Duration, SystemTime};

use futures::StreamExt;
use infra_proto::bus::v1::LogLine;
use infra_proto::coordinator::v1 as api;

use super::Client;

#[derive(clap::Args)]
pub struct LogsArgs {
    /// The services.
    #[arg(required = true)]
    services: Vec<String>,
    /// Go on printing what comes, until interrupted.
    #[arg(short, long)]
    follow: bool,
    /// Only lines from this long ago on (`90s`, `10m`, `2h`, `1d`).
    #[arg(long)]
    since: Option<String>,
    /// The last N lines of each replica.
    #[arg(long, short = 'n')]
    tail: Option<u32>,
    /// Print the engine's time of each line.
    #[arg(short, long)]
    timestamps: bool,
}

fn line(l: &LogLine, timestamps: bool) -> String {
    let who = if l.stream == "infra" {
        format!("{}/{} (infra)", l.host, l.service)
    } else {
        format!("{}/{}.{}", l.host, l.service, l.replica)
    };
    let when = match (timestamps, l.time) {
        (true, Some(t)) => format!("{t} "),
        _ => String::new(),
    };
    format!("{who:<28} | {when}{}", l.text)
}

pub async fn run(a: LogsArgs, mut c: Client) -> Result<bool, Box<dyn std::error::Error>> {
    let since = a
        .since
        .as_deref()
        .map(super::events::duration)
        .transpose()?
        .map(|d: Duration| prost_types::Timestamp::from(SystemTime::now() - d));
    let req = api::LogsRequest {
        services: a.services,
        follow: a.follow,
        since,
        tail: a.tail.unwrap_or(0),
    };
    let mut stream = c.logs(req).await?.into_inner();
    while let Some(l) = stream.next().await {
        println!("{}", line(&l?, a.timestamps));
    }
    Ok(true)
}
