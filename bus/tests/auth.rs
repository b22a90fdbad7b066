//! Per-host credentials against a real nats-server in operator mode
//! (`infra_bus::auth`): the coordinator's user sets up the buckets and
//! writes two hosts' desired state; host2's user does what its operators
//! need and NATS itself refuses every step outside host2's keys; revoking
//! host2's user (a new account JWT pushed to the servers' resolver) closes
//! its connection and refuses it from then on.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use infra_bus::auth::{Authority, Creds, host_permissions, inbox_prefix};
use infra_bus::subject::Token;
use infra_bus::testing::NatsServer;
use infra_bus::{Bus, BusConfig};
use infra_proto::bus::v1::{DesiredService, ServiceSpec};

/// A server trusting `a`'s operator, with JetStream, on a free port.
fn server(a: &Authority) -> (NatsServer, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let resolver = dir.path().join("resolver");
    std::fs::create_dir_all(&resolver).unwrap();
    let conf = dir.path().join("nats.conf");
    std::fs::write(&conf, a.server_config(resolver.to_str().unwrap())).unwrap();
    (NatsServer::start_with_args(&["-c", conf.to_str().unwrap()]), dir)
}

fn desired(host: &str, service: &str) -> DesiredService {
    DesiredService {
        host: host.into(),
        spec: Some(ServiceSpec {
            name: service.into(),
            tier: "data".into(),
            image: "infra-local/debian:bookworm".into(),
            ..Default::default()
        }),
        generation: 1,
        ..Default::default()
    }
}

/// A raw client with `creds` and `inbox`, recording the permission errors
/// the server sends it.
async fn client(url: &str, creds: &Creds, inbox: Option<String>) -> (async_nats::Client, Arc<Mutex<Vec<String>>>) {
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let sink = seen.clone();
    let mut opts = async_nats::ConnectOptions::with_credentials(&creds.text)
        .unwrap()
        .request_timeout(Some(Duration::from_secs(2)))
        .event_callback(move |ev| {
            let sink = sink.clone();
            async move {
                sink.lock().unwrap().push(ev.to_string());
            }
        });
    if let Some(p) = inbox {
        opts = opts.custom_inbox_prefix(p);
    }
    (opts.connect(url).await.expect("connect with the credential"), seen)
}

/// Waits (bounded) until the server has said `what` was refused.
async fn refused(seen: &Mutex<Vec<String>>, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if seen
            .lock()
            .unwrap()
            .iter()
            .any(|e| e.contains("Permissions Violation") && e.contains(what))
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "NATS did not refuse {what}: {:?}",
            seen.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_hosts_credential_reaches_its_own_keys_only_and_a_revoked_one_is_cut_off() {
    let a = Authority::generate();
    let (nats, _dir) = server(&a);
    let admin = a.user("coordinator", None);
    let bus = Bus::connect(&BusConfig {
        url: nats.url(),
        creds: Some(admin.text.clone()),
        ..Default::default()
    })
    .await
    .expect("the coordinator's credential sets up the buckets");
    bus.put_desired(&desired("host1", "db")).await.unwrap();
    bus.put_desired(&desired("host2", "web")).await.unwrap();

    let host2 = Token::new("host", "host2").unwrap();
    let creds = a.user("host2", Some(&host_permissions(&host2)));
    let (c, seen) = client(&nats.url(), &creds, Some(inbox_prefix(&host2))).await;

    // What host2's operators do: allowed.
    let own = c
        .request(
            "$JS.API.DIRECT.GET.KV_infra_desired.$KV.infra_desired.host2.data.web",
            Bytes::new(),
        )
        .await
        .expect("host2 reads its own desired state");
    assert!(!own.payload.is_empty(), "its desired state came back");
    c.publish("infra.heartbeat.host2.data", Bytes::from_static(b"hb"))
        .await
        .unwrap();
    c.publish("infra.events.host2.data.web.started", Bytes::from_static(b"ev"))
        .await
        .unwrap();
    c.flush().await.unwrap();

    // Everything else: refused by NATS.
    let other = c
        .request(
            "$JS.API.DIRECT.GET.KV_infra_desired.$KV.infra_desired.host1.data.db",
            Bytes::new(),
        )
        .await;
    assert!(other.is_err(), "host1's desired state must not come back");
    refused(&seen, "$KV.infra_desired.host1").await;
    for subject in [
        "$KV.infra_desired.host1.data.db",
        "$KV.infra_desired.host2.data.web",
        "infra.heartbeat.host1.data",
        "infra.events.host1.data.db.started",
        "$KV.infra_observed.host1.data.db",
        "$JS.API.STREAM.PURGE.KV_infra_desired",
        "$JS.API.STREAM.DELETE.KV_infra_secrets",
        "$JS.API.CONSUMER.CREATE.KV_infra_desired",
        "$JS.API.CONSUMER.CREATE.KV_infra_desired.x.$KV.infra_desired.host1.>",
        "$JS.API.DIRECT.GET.KV_infra_secrets.$KV.infra_secrets.dbpw",
    ] {
        c.publish(subject, Bytes::from_static(b"{}")).await.unwrap();
        c.flush().await.unwrap();
        refused(&seen, subject).await;
    }
    let _sub = c.subscribe("_INBOX.>").await.unwrap();
    c.flush().await.unwrap();
    refused(&seen, "_INBOX.>").await;
    // A watch of its own keys, by a named consumer with its filter in the
    // subject: allowed.
    let created = c
        .request(
            "$JS.API.CONSUMER.CREATE.KV_infra_desired.h2w.$KV.infra_desired.host2.>",
            Bytes::from(
                serde_json::json!({"stream_name": "KV_infra_desired", "config": {
                    "name": "h2w", "filter_subject": "$KV.infra_desired.host2.>",
                    "deliver_policy": "last_per_subject", "ack_policy": "none",
                    "inactive_threshold": 5_000_000_000u64
                }})
                .to_string(),
            ),
        )
        .await
        .expect("host2 may watch its own keys");
    let answer = String::from_utf8_lossy(&created.payload).into_owned();
    assert!(!answer.contains("\"error\""), "{answer}");

    // Revoked: a new account JWT naming host2's user, pushed by the
    // system account; its connection is closed and it cannot come back.
    let sys = a.system_user();
    let (s, _) = client(&nats.url(), &sys, None).await;
    let t0 = Instant::now();
    let reply = s
        .request(
            "$SYS.REQ.CLAIMS.UPDATE",
            Bytes::from(a.account_jwt(std::slice::from_ref(&creds.user))),
        )
        .await
        .expect("the resolver takes the update");
    let reply = String::from_utf8_lossy(&reply.payload).into_owned();
    assert!(reply.contains("\"code\":200") || reply.contains("updated"), "{reply}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !seen.lock().unwrap().iter().any(|e| e.contains("disconnected")) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let cut = t0.elapsed();
    let events = seen.lock().unwrap().join(" | ");
    assert!(
        events.contains("disconnected") || events.to_lowercase().contains("revoked"),
        "host2's connection was closed: {events}"
    );
    let again = async_nats::ConnectOptions::with_credentials(&creds.text)
        .unwrap()
        .connect(nats.url())
        .await;
    assert!(again.is_err(), "a revoked credential is refused");
    println!(
        "BENCH | revoke host2 -> its connection closed {:.2}s",
        cut.as_secs_f64()
    );
}

/// `what` did not succeed within 3 s: an error, or no answer (a refused
/// publish gets none).
async fn not_allowed<T: std::fmt::Debug, E>(what: &str, f: impl std::future::Future<Output = Result<T, E>>) {
    if let Ok(Ok(v)) = tokio::time::timeout(Duration::from_secs(3), f).await {
        panic!("{what} must be refused, got {v:?}");
    }
}

#[tokio::test]
async fn a_hosts_operators_work_through_the_bus_on_its_own_credential_and_nothing_else_is_allowed() {
    use futures::StreamExt;
    use infra_proto::bus::v1::{Event, EventKind, Heartbeat, ObservedService, SecretMount};
    let a = Authority::generate();
    let (nats, _dir) = server(&a);
    let admin = Bus::connect(&BusConfig {
        url: nats.url(),
        creds: Some(a.user("coordinator", None).text),
        ..Default::default()
    })
    .await
    .expect("the coordinator's credential sets up the buckets");
    // A deploy: the secrets as the catalog gives them, then desired state.
    admin
        .put_secret("db_password", Bytes::from_static(b"s3cret-db"))
        .await
        .unwrap();
    admin
        .put_secret("web_password", Bytes::from_static(b"s3cret-web"))
        .await
        .unwrap();
    let with_secret = |host: &str, service: &str, secret: &str| {
        let mut d = desired(host, service);
        let spec = d.spec.as_mut().unwrap();
        spec.environment.insert("PASSWORD".into(), format!("inline-{secret}"));
        spec.secrets.push(SecretMount {
            name: secret.into(),
            key: secret.into(),
            ..Default::default()
        });
        d
    };
    admin
        .put_desired(&with_secret("host1", "db", "db_password"))
        .await
        .unwrap();
    admin
        .put_desired(&with_secret("host2", "web", "web_password"))
        .await
        .unwrap();

    let host2 = Token::new("host", "host2").unwrap();
    let bus = Bus::connect(&BusConfig {
        url: nats.url(),
        name: "data-operator@host2".into(),
        creds: Some(a.user("host2", Some(&host_permissions(&host2))).text),
        inbox_prefix: Some(inbox_prefix(&host2)),
        ..Default::default()
    })
    .await
    .expect("host2's credential binds to the buckets the coordinator made");

    // What its operators do, through the bus's own calls.
    let mine = bus
        .list_desired(Some(("host2", "data")))
        .await
        .expect("its desired state");
    assert_eq!(mine.len(), 1);
    assert_eq!(mine[0].spec.as_ref().unwrap().name, "web");
    let mut watch = bus
        .watch_desired("host2", "data")
        .await
        .expect("a watch of its desired state");
    let mut next = with_secret("host2", "web", "web_password");
    next.generation = 2;
    admin.put_desired(&next).await.unwrap();
    let change = tokio::time::timeout(Duration::from_secs(5), watch.next())
        .await
        .expect("the watch sees the write")
        .unwrap()
        .unwrap();
    assert!(
        matches!(change, infra_bus::Change::Put { ref value, .. } if value.generation == 2),
        "{change:?}"
    );
    assert_eq!(
        bus.get_secret("host2", "web_password").await.unwrap().as_deref(),
        Some(&b"s3cret-web"[..]),
        "the secret of the service it runs reached it"
    );
    let directory = bus.list_directory().await.expect("the directory");
    let db = directory
        .iter()
        .find(|d| d.host == "host1")
        .and_then(|d| d.spec.as_ref())
        .expect("host1's service is in the directory");
    assert_eq!(db.name, "db");
    assert!(
        db.environment.is_empty() && db.secrets.is_empty(),
        "only the public part: {db:?}"
    );
    bus.put_observed(&ObservedService {
        host: "host2".into(),
        tier: "data".into(),
        service: "web".into(),
        ..Default::default()
    })
    .await
    .expect("it writes its observed state");
    assert_eq!(bus.list_observed(None).await.expect("observed state").len(), 1);
    bus.heartbeat(&Heartbeat {
        host: "host2".into(),
        tier: "data".into(),
        ..Default::default()
    })
    .await
    .expect("it heartbeats");
    assert_eq!(bus.list_heartbeats().await.expect("heartbeats").len(), 1);
    let event = |host: &str| Event {
        host: host.into(),
        tier: "data".into(),
        service: "web".into(),
        kind: EventKind::Started as i32,
        ..Default::default()
    };
    bus.publish_event(&event("host2"))
        .await
        .expect("it publishes its events");
    bus.put_host_secret("host2", "vault_init", Bytes::from_static(b"keys"))
        .await
        .expect("it keeps its own secret");
    assert!(bus.try_lock("host2", "net", "me").await.expect("its own lock"));

    // Everything else is refused (all asked at once: a refused request
    // gets no answer, so each waits out its bound).
    let js = bus.jetstream();
    let (evil1, evil2) = (desired("host1", "evil"), desired("host2", "evil"));
    let obs1 = ObservedService {
        host: "host1".into(),
        tier: "data".into(),
        service: "db".into(),
        ..Default::default()
    };
    let beat1 = Heartbeat {
        host: "host1".into(),
        tier: "data".into(),
        ..Default::default()
    };
    let event1 = event("host1");
    tokio::join!(
        not_allowed("host1's desired state", bus.get_desired("host1", "data", "db")),
        not_allowed("every host's desired state", bus.list_desired(None)),
        not_allowed("a watch of host1's desired state", async {
            bus.watch_desired("host1", "data").await.map(|_| "a watch")
        }),
        not_allowed("host1's secret", bus.get_secret("host1", "db_password")),
        not_allowed("the catalog's secrets", bus.get_secret_source("db_password")),
        not_allowed("writing host1's desired state", bus.put_desired(&evil1)),
        not_allowed("writing host2's own desired state", bus.put_desired(&evil2)),
        not_allowed(
            "writing the catalog's secrets",
            bus.put_secret("db_password", Bytes::from_static(b"x"))
        ),
        not_allowed("host1's observed state", bus.put_observed(&obs1)),
        not_allowed("a heartbeat as host1", bus.heartbeat(&beat1)),
        not_allowed("an event as host1", bus.publish_event(&event1)),
        not_allowed("the service records", bus.list_records()),
        not_allowed("purging a bucket", async {
            let s = js.get_stream("KV_infra_desired").await.map_err(|e| e.to_string())?;
            s.purge().await.map(|p| p.purged).map_err(|e| e.to_string())
        }),
        not_allowed("deleting a bucket", async {
            js.delete_key_value("infra_secrets").await.map(|d| d.success)
        }),
    );
    // Nothing of that reached the store.
    assert!(admin.get_desired("host1", "data", "evil").await.unwrap().is_none());
    assert_eq!(
        admin.get_secret_source("db_password").await.unwrap().as_deref(),
        Some(&b"s3cret-db"[..])
    );
    assert!(!admin.list_heartbeats().await.unwrap().iter().any(|h| h.host == "host1"));
    assert!(admin.list_desired(None).await.unwrap().len() == 2);
    // The secret of the service host2 does not run never went to it.
    assert!(admin.get_secret("host2", "db_password").await.unwrap().is_none());
    // A service leaving host2 takes its secret's copy with it; what host2
    // wrote for itself stays.
    admin.delete_desired("host2", "data", "web").await.unwrap();
    assert!(admin.get_secret("host2", "web_password").await.unwrap().is_none());
    assert!(admin.get_secret("host2", "vault_init").await.unwrap().is_some());
}
