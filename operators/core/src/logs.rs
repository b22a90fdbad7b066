//! Answers log pulls (`LogsPull`, see the message's documentation): the
//! lines of a service's containers on this host, read from the engine as
//! the coordinator pulls them.
//!
//! # Guarantees
//! - Memory is bounded per session: each container's engine stream feeds a
//!   channel of [`BUFFER_LINES`] lines; when nobody pulls, the channel
//!   fills and the engine stream is no longer read (the engine holds the
//!   rest), so a service logging a burst grows nothing here.
//! - One answer carries at most [`BATCH_LINES`] lines and about
//!   [`BATCH_BYTES`] of text, and comes within about a second when
//!   following (empty when nothing came), so the coordinator's pulls are
//!   never stuck and it sees a client that went away at once.
//! - A session nobody pulled for [`IDLE`] is closed, and its engine
//!   streams with it: a client that goes away stops the reads on every
//!   host.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use infra_proto::bus::v1::{LogLine, LogsBatch, LogsPull};
use prost::Message;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::reconcile::Ctx;

/// Lines buffered per container between two pulls.
pub const BUFFER_LINES: usize = 1024;
/// Lines in one answer, at most.
pub const BATCH_LINES: usize = 2000;
/// Text in one answer, about (a NATS message is at most 1 MiB).
pub const BATCH_BYTES: usize = 256 * 1024;
/// How long a following pull waits for a first line.
pub const WAIT: Duration = Duration::from_millis(800);
/// A session nobody pulled for this long is closed.
pub const IDLE: Duration = Duration::from_secs(10);
/// Longest line kept (the rest is cut, marked with `…`).
const MAX_LINE: usize = 16 * 1024;

struct Session {
    rx: tokio::sync::Mutex<mpsc::Receiver<LogLine>>,
    last_pull: Mutex<Instant>,
    stop: CancellationToken,
}

/// The open sessions of this operator.
#[derive(Clone, Default)]
pub struct Sessions(Arc<Mutex<HashMap<String, Arc<Session>>>>);

impl Sessions {
    /// How many are open (for tests and metrics).
    pub fn open(&self) -> usize {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner).len()
    }

    fn get(&self, id: &str) -> Option<Arc<Session>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(id)
            .cloned()
    }

    fn close(&self, id: &str) {
        if let Some(s) = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(id)
        {
            s.stop.cancel();
        }
    }

    /// Closes the sessions nobody pulled for [`IDLE`]; their ids.
    fn reap(&self) -> Vec<String> {
        let mut map = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let idle: Vec<String> = map
            .iter()
            .filter(|(_, s)| {
                s.last_pull
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .elapsed()
                    > IDLE
            })
            .map(|(k, _)| k.clone())
            .collect();
        for k in &idle {
            if let Some(s) = map.remove(k) {
                s.stop.cancel();
            }
        }
        idle
    }
}

/// Opens session `pull.session` on the service's containers here: one task
/// per container copies its engine stream into the session's channel.
async fn open(ctx: &Ctx, sessions: &Sessions, pull: &LogsPull) -> Result<Arc<Session>, String> {
    let containers = ctx
        .docker
        .list_owned(&ctx.host, &ctx.tier, Some(&pull.service))
        .await
        .map_err(|e| e.to_string())?;
    let (tx, rx) = mpsc::channel(BUFFER_LINES);
    let stop = CancellationToken::new();
    let since = pull.since.map_or(0, |t| t.seconds.max(0));
    for c in containers {
        let mut stream = Box::pin(ctx.docker.logs(&c.id, pull.follow, since, pull.tail));
        let (tx, stop) = (tx.clone(), stop.clone());
        let (host, service, short) = (
            ctx.host.clone(),
            pull.service.clone(),
            c.id.chars().take(12).collect::<String>(),
        );
        tokio::spawn(async move {
            loop {
                let next = tokio::select! {
                    () = stop.cancelled() => return,
                    n = stream.next() => n,
                };
                let line = match next {
                    None => return,
                    Some(Ok(l)) => l,
                    Some(Err(e)) => {
                        tracing::debug!(container = %short, error = %e, "log stream ended");
                        return;
                    }
                };
                let mut text = line.text;
                if text.len() > MAX_LINE {
                    let mut cut = MAX_LINE;
                    while !text.is_char_boundary(cut) {
                        cut -= 1;
                    }
                    text.truncate(cut);
                    text.push('…');
                }
                let out = LogLine {
                    host: host.clone(),
                    service: service.clone(),
                    replica: c.replica,
                    container: short.clone(),
                    stream: line.stream.into(),
                    time: line.time,
                    text,
                };
                // Waits while the buffer is full: the engine stream is not
                // read until the next pull makes room.
                tokio::select! {
                    () = stop.cancelled() => return,
                    r = tx.send(out) => if r.is_err() { return },
                }
            }
        });
    }
    let s = Arc::new(Session {
        rx: tokio::sync::Mutex::new(rx),
        last_pull: Mutex::new(Instant::now()),
        stop,
    });
    sessions
        .0
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .insert(pull.session.clone(), s.clone());
    tracing::info!(session = %pull.session, service = %pull.service, follow = pull.follow, "log read opened");
    Ok(s)
}

/// The answer to one pull.
async fn answer(ctx: Arc<Ctx>, sessions: Sessions, pull: LogsPull) -> LogsBatch {
    let s = match sessions.get(&pull.session) {
        Some(s) => s,
        None if pull.pull > 0 => {
            return LogsBatch {
                done: true,
                error: format!(
                    "the log read of {} on {} was closed (nobody pulled for {}s, or the operator restarted)",
                    pull.service,
                    ctx.host,
                    IDLE.as_secs()
                ),
                ..Default::default()
            };
        }
        None => match open(&ctx, &sessions, &pull).await {
            Ok(s) => s,
            Err(e) => {
                return LogsBatch {
                    done: true,
                    error: format!("read the log of {} on {}: {e}", pull.service, ctx.host),
                    ..Default::default()
                };
            }
        },
    };
    *s.last_pull.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Instant::now();
    let mut rx = s.rx.lock().await;
    let mut batch = LogsBatch::default();
    let mut bytes = 0;
    // The first line: waited for up to WAIT when following (an empty
    // answer keeps the pull loop alive); not following, the streams end.
    let first = if pull.follow {
        tokio::time::timeout(WAIT, rx.recv()).await.ok()
    } else {
        Some(rx.recv().await)
    };
    match first {
        Some(Some(l)) => {
            bytes += l.text.len();
            batch.lines.push(l);
        }
        Some(None) => batch.done = true,
        None => {}
    }
    while !batch.done && batch.lines.len() < BATCH_LINES && bytes < BATCH_BYTES {
        match rx.try_recv() {
            Ok(l) => {
                bytes += l.text.len();
                batch.lines.push(l);
            }
            Err(mpsc::error::TryRecvError::Empty) => break,
            Err(mpsc::error::TryRecvError::Disconnected) => batch.done = true,
        }
    }
    drop(rx);
    if batch.done {
        sessions.close(&pull.session);
        tracing::info!(session = %pull.session, "log read ended");
    }
    batch
}

/// Serves log pulls for this operator's host and tier until `shutdown`,
/// closing idle sessions.
pub async fn answer_pulls(ctx: Arc<Ctx>, sessions: Sessions, shutdown: CancellationToken) {
    let reaper = {
        let (sessions, shutdown) = (sessions.clone(), shutdown.clone());
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
                for id in sessions.reap() {
                    tracing::info!(session = %id, "log read closed: nobody pulled for {}s", IDLE.as_secs());
                }
            }
        })
    };
    crate::images::serve(
        ctx,
        shutdown,
        "log pulls",
        |ctx| async move { ctx.bus.log_pulls(&ctx.host, &ctx.tier).await },
        move |ctx, payload| {
            let sessions = sessions.clone();
            async move {
                let pull = LogsPull::decode(payload).ok()?;
                Some(answer(ctx, sessions, pull).await)
            }
        },
    )
    .await;
    reaper.abort();
}
