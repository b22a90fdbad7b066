//! The event history: reads of the event stream from a sequence number or
//! a time, filtered by host, tier, service and kind, each event carrying its
//! sequence number, so a client that reconnects with its last one misses
//! nothing (`WatchEvents`).
//!
//! A read is an ordered consumer of the stream: ephemeral, made again by the
//! client library from the last sequence it delivered when the server loses
//! it (a server restart, a missed heartbeat), so a read neither skips nor
//! repeats an event while it lasts.

use std::time::SystemTime;

use async_nats::jetstream::consumer::{DeliverPolicy, pull};
use futures::StreamExt;
use futures::stream::BoxStream;
use infra_proto::bus::v1::{Event, EventKind};
use prost::Message;

use crate::subject::{self, Token};
use crate::{Bus, BusError, BusErrorKind, Result, event_kind_token};

/// Where a read of the event history starts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum EventsFrom {
    /// With the next event published.
    #[default]
    Now,
    /// At this sequence number (the oldest kept when it is older).
    Sequence(u64),
    /// At the first event at or after this time.
    Time(SystemTime),
}

/// Which events a read delivers; empty fields match everything.
#[derive(Clone, Debug, Default)]
pub struct EventFilter {
    pub host: Option<String>,
    pub tier: Option<String>,
    pub service: Option<String>,
    pub kinds: Vec<EventKind>,
}

impl EventFilter {
    /// The stream subjects it reads: one per kind, or every kind.
    fn subjects(&self) -> Result<Vec<String>> {
        let tok = |what: &str, v: &Option<String>| {
            v.as_deref()
                .filter(|s| !s.is_empty())
                .map(|s| Token::new(what, s))
                .transpose()
        };
        let (h, t, s) = (
            tok("host", &self.host)?,
            tok("tier", &self.tier)?,
            tok("service", &self.service)?,
        );
        let all = subject::events_filter(h.as_ref(), t.as_ref(), s.as_ref());
        if self.kinds.is_empty() {
            return Ok(vec![all]);
        }
        let base = all.strip_suffix(".*").unwrap_or(&all).to_owned();
        let mut subjects: Vec<String> = self
            .kinds
            .iter()
            .map(|k| format!("{base}.{}", event_kind_token(*k)))
            .collect();
        subjects.sort();
        subjects.dedup();
        Ok(subjects)
    }
}

impl Bus {
    /// The events `filter` matches, from `from` on, each with its
    /// `sequence`; the stream ends only when the caller drops it.
    pub async fn watch_events(&self, filter: &EventFilter, from: EventsFrom) -> Result<BoxStream<'static, Event>> {
        let subjects = filter.subjects()?;
        let deliver_policy = match from {
            EventsFrom::Now => DeliverPolicy::New,
            EventsFrom::Sequence(n) => DeliverPolicy::ByStartSequence {
                start_sequence: n.max(1),
            },
            EventsFrom::Time(t) => DeliverPolicy::ByStartTime { start_time: t.into() },
        };
        let stream = self
            .js
            .get_stream(subject::EVENTS_STREAM)
            .await
            .map_err(|e| BusError::with(BusErrorKind::Io, format!("stream {}", subject::EVENTS_STREAM), e))?;
        let consumer = stream
            .create_consumer(pull::OrderedConfig {
                filter_subjects: subjects.clone(),
                deliver_policy,
                ..Default::default()
            })
            .await
            .map_err(|e| BusError::with(BusErrorKind::Io, format!("read {subjects:?}"), e))?;
        let messages = consumer
            .messages()
            .await
            .map_err(|e| BusError::with(BusErrorKind::Io, format!("read {subjects:?}"), e))?;
        Ok(messages
            .filter_map(|m| async move {
                let m = match m {
                    Ok(m) => m,
                    Err(e) => {
                        // The library makes the consumer again from the
                        // last sequence it delivered.
                        tracing::debug!(error = %e, "event history read interrupted");
                        return None;
                    }
                };
                let sequence = m.info().map(|i| i.stream_sequence).unwrap_or_default();
                match Event::decode(m.payload.clone()) {
                    Ok(mut ev) => {
                        ev.sequence = sequence;
                        Some(ev)
                    }
                    Err(e) => {
                        tracing::warn!(subject = %m.subject, sequence, error = %e, "dropping an event that does not decode");
                        None
                    }
                }
            })
            .boxed())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_filter_reads_one_subject_per_kind() {
        let f = EventFilter {
            service: Some("web".into()),
            kinds: vec![EventKind::Started, EventKind::Started],
            ..Default::default()
        };
        let subjects = f.subjects().unwrap();
        assert_eq!(subjects.len(), 1, "{subjects:?}");
        assert!(subjects[0].ends_with(".web.started"), "{subjects:?}");
        assert_eq!(EventFilter::default().subjects().unwrap().len(), 1);
    }

    #[test]
    fn a_bad_name_is_refused_with_what_it_is() {
        let f = EventFilter {
            host: Some("a b".into()),
            ..Default::default()
        };
        let e = f.subjects().unwrap_err().to_string();
        assert!(e.contains("host"), "{e}");
    }
}
