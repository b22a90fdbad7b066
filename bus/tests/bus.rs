//! The bus against a real nats-server.

use std::time::Duration;

use futures::StreamExt;
use infra_bus::testing::NatsServer;
use infra_bus::{Bus, BusConfig, Change};
use infra_proto::bus::v1::{DesiredService, Event, EventKind, Heartbeat, ServiceSpec};

async fn bus(server: &NatsServer) -> Bus {
    server.bus().await
}

fn desired(host: &str, tier: &str, name: &str) -> DesiredService {
    DesiredService {
        spec: Some(ServiceSpec {
            name: name.into(),
            tier: tier.into(),
            image: "x:1".into(),
            ..Default::default()
        }),
        host: host.into(),
        generation: 1,
        ..Default::default()
    }
}

#[tokio::test]
async fn connect_is_idempotent_and_state_survives_a_second_client() {
    let server = NatsServer::start();
    let a = bus(&server).await;
    a.put_desired(&desired("h1", "data", "mng-pg")).await.unwrap();
    let b = bus(&server).await;
    let got = b.get_desired("h1", "data", "mng-pg").await.unwrap().unwrap();
    assert_eq!(got.spec.unwrap().image, "x:1");
}

#[tokio::test]
async fn desired_state_is_listed_and_watched_per_host_and_tier() {
    let server = NatsServer::start();
    let bus = bus(&server).await;
    let mut watch = bus.watch_desired("h1", "data").await.unwrap();
    bus.put_desired(&desired("h1", "data", "mng-pg")).await.unwrap();
    bus.put_desired(&desired("h1", "messaging", "rabbitmq")).await.unwrap();
    bus.put_desired(&desired("h2", "data", "mng-valkey")).await.unwrap();
    bus.delete_desired("h1", "data", "mng-pg").await.unwrap();

    let first = tokio::time::timeout(Duration::from_secs(5), watch.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(
        matches!(&first, Change::Put { key, .. } if key == "h1.data.mng-pg"),
        "{first:?}"
    );
    let second = tokio::time::timeout(Duration::from_secs(5), watch.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(
        matches!(&second, Change::Delete { key } if key == "h1.data.mng-pg"),
        "{second:?}"
    );

    bus.put_desired(&desired("h1", "data", "a")).await.unwrap();
    let scoped = bus.list_desired(Some(("h1", "data"))).await.unwrap();
    assert_eq!(scoped.len(), 1);
    assert_eq!(bus.list_desired(None).await.unwrap().len(), 3);
}

#[tokio::test]
async fn events_reach_live_subscribers_and_are_kept_in_the_stream() {
    let server = NatsServer::start();
    let bus = bus(&server).await;
    let mut sub = bus.subscribe_events(None, Some("data"), None).await.unwrap();
    let ev = Event {
        kind: EventKind::Started as i32,
        host: "h1".into(),
        tier: "data".into(),
        service: "mng-pg".into(),
        ..Default::default()
    };
    bus.publish_event(&ev).await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(5), sub.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.kind(), EventKind::Started);
    assert!(!got.id.is_empty() && got.time.is_some());
    let mut stream = bus
        .jetstream()
        .get_stream(infra_bus::subject::EVENTS_STREAM)
        .await
        .unwrap();
    assert_eq!(stream.info().await.unwrap().state.messages, 1);
}

async fn next_event(s: &mut futures::stream::BoxStream<'static, Event>) -> Event {
    tokio::time::timeout(Duration::from_secs(5), s.next())
        .await
        .expect("an event within 5 s")
        .expect("open")
}

#[tokio::test]
async fn the_event_history_resumes_after_the_last_sequence_and_filters_by_service_kind_and_time() {
    use infra_bus::history::{EventFilter, EventsFrom};
    let server = NatsServer::start();
    let bus = bus(&server).await;
    let ev = |n: u32| Event {
        id: format!("ev-{n}"),
        kind: if n.is_multiple_of(2) {
            EventKind::Started
        } else {
            EventKind::Died
        } as i32,
        host: "h1".into(),
        tier: "data".into(),
        service: format!("s{}", n % 3),
        ..Default::default()
    };
    for n in 0..40 {
        bus.publish_event(&ev(n)).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let middle = std::time::SystemTime::now();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    for n in 40..60 {
        bus.publish_event(&ev(n)).await.unwrap();
    }
    let all = EventFilter::default();
    // Cut after 25, resume at the last sequence + 1.
    let mut first = bus.watch_events(&all, EventsFrom::Sequence(1)).await.unwrap();
    let mut seen = Vec::new();
    for _ in 0..25 {
        seen.push(next_event(&mut first).await);
    }
    drop(first);
    let last = seen.last().unwrap().sequence;
    assert_eq!(last, 25, "sequence numbers of the stream, from 1");
    let mut second = bus.watch_events(&all, EventsFrom::Sequence(last + 1)).await.unwrap();
    for _ in 25..60 {
        seen.push(next_event(&mut second).await);
    }
    let ids: Vec<String> = seen.iter().map(|e| e.id.clone()).collect();
    assert_eq!(ids, (0..60).map(|n| format!("ev-{n}")).collect::<Vec<_>>());
    // A time: the events after it.
    let mut timed = bus.watch_events(&all, EventsFrom::Time(middle)).await.unwrap();
    assert_eq!(next_event(&mut timed).await.id, "ev-40");
    // Service s1, kind died only.
    let f = EventFilter {
        service: Some("s1".into()),
        kinds: vec![EventKind::Died],
        ..Default::default()
    };
    let mut only = bus.watch_events(&f, EventsFrom::Sequence(1)).await.unwrap();
    let want: Vec<String> = (0..60)
        .filter(|n| n % 3 == 1 && n % 2 == 1)
        .map(|n| format!("ev-{n}"))
        .collect();
    for w in &want {
        assert_eq!(&next_event(&mut only).await.id, w);
    }
    // From now: only what comes next.
    let mut live = bus.watch_events(&all, EventsFrom::Now).await.unwrap();
    bus.publish_event(&ev(60)).await.unwrap();
    let e = next_event(&mut live).await;
    assert_eq!((e.id.as_str(), e.sequence), ("ev-60", 61));
}

#[tokio::test]
async fn heartbeats_expire_after_their_ttl() {
    let server = NatsServer::start();
    let cfg = BusConfig {
        url: server.url(),
        name: "t".into(),
        heartbeat_ttl: Duration::from_secs(1),
        ..Default::default()
    };
    let bus = Bus::connect(&cfg).await.unwrap();
    bus.heartbeat(&Heartbeat {
        host: "h1".into(),
        tier: "data".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    assert_eq!(bus.list_heartbeats().await.unwrap().len(), 1);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(bus.list_heartbeats().await.unwrap().is_empty());
}

#[tokio::test]
async fn invalid_names_are_refused_with_the_field_named() {
    let server = NatsServer::start();
    let bus = bus(&server).await;
    let err = bus.put_desired(&desired("h1", "data", "bad.name")).await.unwrap_err();
    assert_eq!(err.kind(), infra_bus::BusErrorKind::InvalidName);
    assert!(err.to_string().contains("service \"bad.name\""), "{err}");
}

#[tokio::test]
async fn a_lock_has_one_holder_until_it_is_released() {
    let server = NatsServer::start();
    let a = bus(&server).await;
    let b = bus(&server).await;
    assert!(a.try_lock("h1", "net-x", "a").await.unwrap());
    assert!(!b.try_lock("h1", "net-x", "b").await.unwrap());
    assert!(b.try_lock("h2", "net-x", "b").await.unwrap(), "locks are per host");
    a.unlock("h1", "net-x").await.unwrap();
    assert!(b.try_lock("h1", "net-x", "b").await.unwrap());
}

/// The desired state of one tier, followed the way an operator follows
/// it: watch, then list (so nothing written in between is missed), and on
/// an error or the end of the stream, again.
fn follow(bus: Bus) -> tokio::sync::mpsc::UnboundedReceiver<(std::time::Instant, String)> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            if let (Ok(mut w), Ok(listed)) = (
                bus.watch_desired("h1", "data").await,
                bus.list_desired(Some(("h1", "data"))).await,
            ) {
                for d in listed {
                    let key = format!("h1.data.{}", d.spec.map(|s| s.name).unwrap_or_default());
                    let _ = tx.send((std::time::Instant::now(), key));
                }
                while let Some(Ok(c)) = w.next().await {
                    let _ = tx.send((std::time::Instant::now(), c.key().to_owned()));
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    rx
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_restart_whose_jetstream_comes_back_late_a_watch_sees_writes_within_seconds() {
    let mut server = NatsServer::start();
    let writer = bus(&server).await;
    let watcher = bus(&server).await;
    let mut seen = follow(watcher);
    // The watch gives changes from when it starts.
    tokio::time::sleep(Duration::from_millis(500)).await;
    writer.put_desired(&desired("h1", "data", "before")).await.unwrap();
    let (_, k) = tokio::time::timeout(Duration::from_secs(5), seen.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(k, "h1.data.before");
    // JetStream answers nothing for 8 s after the restart: the client's own
    // consumer recovery backs off to 10 s between attempts by then.
    tokio::task::block_in_place(|| server.restart_with_slow_jetstream(Duration::from_secs(8)));
    let mut delays = Vec::new();
    for (i, after) in [1u64, 6].into_iter().enumerate() {
        tokio::time::sleep(Duration::from_secs(after)).await;
        let name = format!("after{i}");
        // The writer may itself still be reconnecting: time from its write.
        while writer.put_desired(&desired("h1", "data", &name)).await.is_err() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let t = std::time::Instant::now();
        let key = format!("h1.data.{name}");
        let at = loop {
            let (at, k) = tokio::time::timeout(Duration::from_secs(30), seen.recv())
                .await
                .unwrap_or_else(|_| panic!("{key} not seen within 30 s"))
                .unwrap();
            if k == key {
                break at;
            }
        };
        delays.push(at.saturating_duration_since(t));
    }
    println!("BUS | write -> watch after a restart with JetStream back late, at +1 s and +6 s: {delays:?}");
    for d in &delays {
        assert!(*d < Duration::from_secs(3), "seen after {d:?}: {delays:?}");
    }
}

#[tokio::test]
async fn the_directory_follows_desired_state_and_a_missing_entry_is_written_again() {
    let server = NatsServer::start();
    let bus = bus(&server).await;
    let mut d = desired("h1", "data", "db");
    let spec = d.spec.as_mut().unwrap();
    spec.environment.insert("PASSWORD".into(), "inline".into());
    spec.labels.insert("io.infra.cluster".into(), "c1".into());
    bus.put_desired(&d).await.unwrap();
    bus.put_desired(&desired("h2", "data", "web")).await.unwrap();
    let dir = bus.list_directory().await.unwrap();
    assert_eq!(dir.len(), 2);
    let db = dir
        .iter()
        .find(|e| e.host == "h1")
        .and_then(|e| e.spec.clone())
        .unwrap();
    assert!(db.environment.is_empty(), "no environment in the directory: {db:?}");
    assert_eq!(db.labels["io.infra.cluster"], "c1");
    // Desired state written before the directory existed: the entry is
    // missing, and sync writes it again (once).
    let kv = bus.jetstream().get_key_value("infra_directory").await.unwrap();
    kv.purge("h2.data.web").await.unwrap();
    assert_eq!(bus.list_directory().await.unwrap().len(), 1);
    assert_eq!(bus.sync_directory().await.unwrap(), 1);
    assert_eq!(bus.sync_directory().await.unwrap(), 0);
    assert_eq!(bus.list_directory().await.unwrap().len(), 2);
    // Deleting desired state deletes its entry.
    bus.delete_desired("h1", "data", "db").await.unwrap();
    let left: Vec<String> = bus
        .list_directory()
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.host)
        .collect();
    assert_eq!(left, ["h2"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_while_jetstream_has_no_leader_lands_once_it_is_back() {
    use infra_proto::bus::v1::ServiceRecord;
    let mut server = NatsServer::start();
    let b = bus(&server).await;
    // The server comes back at once but its JetStream only after 3 s: a
    // write meanwhile finds no stream to answer it, as one does while a
    // clustered stream elects a new leader.
    let restart = std::thread::spawn(move || {
        server.restart_with_slow_jetstream(Duration::from_secs(3));
        server
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    let record = ServiceRecord {
        service: "web".into(),
        tier: "gateway".into(),
        ..Default::default()
    };
    let put = tokio::time::timeout(Duration::from_secs(20), b.put_record(&record)).await;
    let _server = restart.join().unwrap();
    put.expect("the write ended")
        .expect("the write landed after JetStream came back");
    let back = b
        .get_record("gateway", "web")
        .await
        .unwrap()
        .expect("the record is there");
    assert_eq!(back.service, "web");
}

#[tokio::test]
async fn catalog_file_contents_nothing_uses_are_pruned_once_old_enough_and_secrets_never() {
    let server = NatsServer::start();
    let b = bus(&server).await;
    for key in ["config_used", "config_stale", "pg_password"] {
        b.put_secret(key, bytes::Bytes::from_static(b"content")).await.unwrap();
    }
    let keep: std::collections::HashSet<String> = ["config_used".to_owned()].into();
    // Written just now: a deploy may be about to name it.
    let gone = b.prune_config_sources(&keep, Duration::from_secs(3600)).await.unwrap();
    assert!(gone.is_empty(), "{gone:?}");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let gone = b.prune_config_sources(&keep, Duration::from_secs(1)).await.unwrap();
    assert_eq!(gone, vec!["config_stale".to_owned()]);
    assert!(b.get_secret_source("config_stale").await.unwrap().is_none());
    assert!(b.get_secret_source("config_used").await.unwrap().is_some());
    assert!(
        b.get_secret_source("pg_password").await.unwrap().is_some(),
        "a catalog secret is not a catalog file's content"
    );
}
