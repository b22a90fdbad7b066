//! Every event on the bus, seen by a raw NATS subscriber (not the
//! platform's own code path), with the instant it arrived.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use infra_proto::bus::v1::Event;
use prost::Message;

/// Events seen so far, each with when it arrived.
pub type Recorded = Arc<Mutex<Vec<(Instant, Event)>>>;

/// Every event on the bus (any of the NATS servers `urls`; over TLS with
/// `ca` when the servers take TLS only; with the NATS credential `creds`,
/// the text of a `.creds` file, when they authenticate) from now on.
/// Returns once the subscription is live.
pub fn record_events(urls: &[String], ca: Option<&std::path::Path>, creds: Option<&str>) -> Recorded {
    let seen: Recorded = Arc::default();
    let sink = seen.clone();
    let urls = urls.to_vec();
    let ca = ca.map(std::path::Path::to_owned);
    let creds = creds.map(str::to_owned);
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime for the recorder");
        rt.block_on(async move {
            let servers: Vec<async_nats::ServerAddr> = urls.iter().filter_map(|u| u.parse().ok()).collect();
            let mut opts = match creds {
                Some(c) => async_nats::ConnectOptions::with_credentials(&c).expect("a valid credential"),
                None => async_nats::ConnectOptions::new(),
            };
            if let Some(ca) = ca {
                opts = opts.add_root_certificates(ca);
            }
            let nats = opts.connect(servers).await.expect("connect to NATS");
            let mut sub = nats.subscribe("infra.events.>").await.expect("subscribe");
            nats.flush().await.ok();
            ready_tx.send(()).ok();
            while let Some(m) = sub.next().await {
                if let Ok(ev) = Event::decode(m.payload) {
                    sink.lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .push((Instant::now(), ev));
                }
            }
        });
    });
    ready_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("event subscriber ready");
    seen
}

/// Events seen so far, in arrival order.
pub type Collected = Arc<Mutex<Vec<Event>>>;

/// Every event published on `subject` (e.g. `infra.events.HOST.>`) from now
/// on, decoded by a raw subscriber on the caller's runtime. Returns once the
/// subscription is live on the server.
pub async fn collect(nats: &async_nats::Client, subject: String) -> Collected {
    let mut sub = nats.subscribe(subject).await.expect("subscribe to events");
    nats.flush().await.ok();
    let seen: Collected = Arc::default();
    let sink = seen.clone();
    tokio::spawn(async move {
        while let Some(m) = sub.next().await {
            if let Ok(ev) = Event::decode(m.payload) {
                sink.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(ev);
            }
        }
    });
    seen
}
