//! `infractl events`: the event history and what happens from now on, one
//! line per event with its sequence number (`--from-seq` of the last one
//! seen + 1 goes on where a cut connection stopped).

use std::time::{Duration, SystemTime};

use futures::StreamExt;
use infra_proto::bus::v1::{Event, EventKind};
use infra_proto::coordinator::v1 as api;

use super::Client;

#[derive(clap::Args)]
pub struct EventsArgs {
    /// Only this service's events.
    #[arg(long)]
    service: Option<String>,
    /// Only this tier's.
    #[arg(long)]
    tier: Option<String>,
    /// Only this host's.
    #[arg(long)]
    host: Option<String>,
    /// Only these kinds (repeatable): `started`, `rollout_done`, ... or
    /// `EVENT_KIND_STARTED`.
    #[arg(long = "kind")]
    kinds: Vec<String>,
    /// Start this long ago (`90s`, `10m`, `2h`, `1d`).
    #[arg(long, conflicts_with = "from_seq")]
    since: Option<String>,
    /// Start at this sequence number.
    #[arg(long)]
    from_seq: Option<u64>,
    /// Stop after this many events (default: follow until interrupted).
    #[arg(long)]
    limit: Option<usize>,
}

/// `90s`, `10m`, `2h`, `1d` (a bare number is seconds).
pub(crate) fn duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let (n, unit) = t.split_at(t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len()));
    let n: u64 = n
        .parse()
        .map_err(|_| format!("--since {text:?}: a number and a unit (90s, 10m, 2h, 1d)"))?;
    let secs = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("--since {text:?}: unit {unit:?} is not one of s, m, h, d")),
    };
    Ok(Duration::from_secs(n * secs))
}

/// `started` or `EVENT_KIND_STARTED`.
fn kind(text: &str) -> Result<EventKind, String> {
    let upper = text.to_ascii_uppercase();
    let name = if upper.starts_with("EVENT_KIND_") {
        upper
    } else {
        format!("EVENT_KIND_{upper}")
    };
    EventKind::from_str_name(&name)
        .filter(|k| *k != EventKind::Unspecified)
        .ok_or_else(|| format!("--kind {text:?}: no such event kind"))
}

fn line(e: &Event) -> String {
    let when = e.time.map_or_else(String::new, |t| {
        let d = SystemTime::UNIX_EPOCH + Duration::new(t.seconds.max(0) as u64, t.nanos.max(0) as u32);
        humanish(d)
    });
    let kind = e
        .kind()
        .as_str_name()
        .trim_start_matches("EVENT_KIND_")
        .to_ascii_lowercase();
    let place = [e.host.as_str(), e.tier.as_str(), e.service.as_str()]
        .iter()
        .filter(|s| !s.is_empty())
        .copied()
        .collect::<Vec<_>>()
        .join("/");
    format!("{:>8}  {when}  {kind:<22} {place:<32} {}", e.sequence, e.reason)
}

/// Seconds since the epoch with milliseconds, UTC (`1796312575.427`): exact
/// and sortable, with no date library.
fn humanish(t: SystemTime) -> String {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    format!("{}.{:03}", d.as_secs(), d.subsec_millis())
}

pub async fn run(a: EventsArgs, mut c: Client) -> Result<bool, Box<dyn std::error::Error>> {
    let kinds = a
        .kinds
        .iter()
        .map(|k| kind(k).map(|k| k as i32))
        .collect::<Result<Vec<_>, _>>()?;
    let start_time = a
        .since
        .as_deref()
        .map(duration)
        .transpose()?
        .map(|d| prost_types::Timestamp::from(SystemTime::now() - d));
    let req = api::WatchEventsRequest {
        service: a.service.unwrap_or_default(),
        tier: a.tier.unwrap_or_default(),
        host: a.host.unwrap_or_default(),
        start_sequence: a.from_seq.unwrap_or_default(),
        start_time,
        kinds,
    };
    let mut stream = c.watch_events(req).await?.into_inner();
    let mut n = 0;
    while let Some(e) = stream.next().await {
        println!("{}", line(&e?));
        n += 1;
        if a.limit.is_some_and(|l| n >= l) {
            break;
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_kinds_parse_or_say_what_is_wrong() {
        assert_eq!(duration("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(duration("10m").unwrap(), Duration::from_secs(600));
        assert_eq!(duration("2").unwrap(), Duration::from_secs(2));
        assert!(duration("3w").unwrap_err().contains("unit"));
        assert!(duration("m").unwrap_err().contains("a number"));
        assert_eq!(kind("started").unwrap(), EventKind::Started);
        assert_eq!(kind("EVENT_KIND_STARTED").unwrap(), EventKind::Started);
        assert!(kind("nope").unwrap_err().contains("no such event kind"));
    }
}
