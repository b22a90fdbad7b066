//! The Kafka hook against a fake Confluent REST Proxy v3 (one listener,
//! answering with the response shapes of the REST Proxy's API reference,
//! chunked as Jetty sends them), whose brokers, controller and ISRs the
//! test sets.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::*;

const C: &str = "cluster-1";

/// (topic, min.insync.replicas, its source, partitions: (id, replicas:
/// (broker, in sync)))
type Topic = (String, String, String, Vec<(i32, Vec<(i32, bool)>)>);

#[derive(Default)]
struct Fake {
    /// (broker id, advertised host)
    brokers: Vec<(i32, String)>,
    controller: Option<i32>,
    topics: Vec<Topic>,
    /// Request lines seen.
    seen: Vec<String>,
}

impl Fake {
    fn set_in_sync(&mut self, topic: &str, partition: i32, broker: i32, in_sync: bool) {
        for t in self.topics.iter_mut().filter(|t| t.0 == topic) {
            for p in t.3.iter_mut().filter(|p| p.0 == partition) {
                for r in p.1.iter_mut().filter(|r| r.0 == broker) {
                    r.1 = in_sync;
                }
            }
        }
    }
}

async fn serve(fake: Arc<Mutex<Fake>>) -> u16 {
    // Jetty answers HTTP/1.1 requests chunked.
    let server = infra_test_support::fake_http::start_with(move |r| {
        let (code, out) = answer(&fake, &format!("{} {} HTTP/1.1", r.method, r.path));
        infra_test_support::fake_http::Reply::new(code, out).chunked()
    })
    .await;
    let port = server.port;
    // The fake lives as long as the test's runtime.
    std::mem::forget(server);
    port
}

fn base() -> String {
    format!("http://rest-proxy:8082/v3/clusters/{C}")
}

fn replica(topic: &str, p: i32, b: i32, leader: bool, in_sync: bool) -> serde_json::Value {
    serde_json::json!({
        "kind": "KafkaReplica",
        "metadata": {
            "self": format!("{}/topics/{topic}/partitions/{p}/replicas/{b}", base()),
            "resource_name": format!("crn:///kafka={C}/topic={topic}/partition={p}/replica={b}"),
        },
        "cluster_id": C,
        "topic_name": topic,
        "partition_id": p,
        "broker_id": b,
        "is_leader": leader,
        "is_in_sync": in_sync,
        "broker": { "related": format!("{}/brokers/{b}", base()) },
    })
}

fn list(kind: &str, path: &str, data: Vec<serde_json::Value>) -> String {
    serde_json::json!({
        "kind": kind,
        "metadata": { "self": format!("{}{path}", base()), "next": null },
        "data": data,
    })
    .to_string()
}

fn answer(fake: &Mutex<Fake>, first: &str) -> (u16, String) {
    let mut f = fake.lock().unwrap();
    f.seen.push(first.to_owned());
    let path = first.split_whitespace().nth(1).unwrap_or("");
    if !first.starts_with("GET ") {
        return (405, String::new());
    }
    if path == "/v3/clusters" {
        let mut c = serde_json::json!({
            "kind": "KafkaCluster",
            "metadata": { "self": base(), "resource_name": format!("crn:///kafka={C}") },
            "cluster_id": C,
            "acls": { "related": format!("{}/acls", base()) },
            "brokers": { "related": format!("{}/brokers", base()) },
            "broker_configs": { "related": format!("{}/broker-configs", base()) },
            "consumer_groups": { "related": format!("{}/consumer-groups", base()) },
            "topics": { "related": format!("{}/topics", base()) },
            "partition_reassignments": { "related": format!("{}/topics/-/partitions/-/reassignment", base()) },
        });
        if let Some(ctl) = f.controller {
            c["controller"] = serde_json::json!({ "related": format!("{}/brokers/{ctl}", base()) });
        }
        return (
            200,
            serde_json::json!({
                "kind": "KafkaClusterList",
                "metadata": { "self": "http://rest-proxy:8082/v3/clusters", "next": null },
                "data": [c],
            })
            .to_string(),
        );
    }
    let Some(rest) = path.strip_prefix(&format!("/v3/clusters/{C}")) else {
        return (404, r#"{"error_code":404,"message":"Cluster not found."}"#.into());
    };
    let parts: Vec<&str> = rest.trim_start_matches('/').split('/').collect();
    match parts.as_slice() {
        ["brokers"] => {
            let data = f
                .brokers
                .iter()
                .map(|(id, host)| {
                    serde_json::json!({
                        "kind": "KafkaBroker",
                        "metadata": {
                            "self": format!("{}/brokers/{id}", base()),
                            "resource_name": format!("crn:///kafka={C}/broker={id}"),
                        },
                        "cluster_id": C,
                        "broker_id": id,
                        "host": host,
                        "port": 9092,
                        "rack": null,
                        "configs": { "related": format!("{}/brokers/{id}/configs", base()) },
                        "partition_replicas": { "related": format!("{}/brokers/{id}/partition-replicas", base()) },
                    })
                })
                .collect();
            (200, list("KafkaBrokerList", "/brokers", data))
        }
        ["brokers", b, "partition-replicas"] => {
            let b: i32 = b.parse().unwrap_or(-1);
            let mut data = Vec::new();
            for (t, _, _, ps) in &f.topics {
                for (p, rs) in ps {
                    for (i, (rb, ins)) in rs.iter().enumerate() {
                        if *rb == b {
                            data.push(replica(t, *p, b, i == 0 && *ins, *ins));
                        }
                    }
                }
            }
            (
                200,
                list("KafkaReplicaList", &format!("/brokers/{b}/partition-replicas"), data),
            )
        }
        ["topics", t, "partitions", p, "replicas"] => {
            let p: i32 = p.parse().unwrap_or(-1);
            let Some((_, _, _, ps)) = f.topics.iter().find(|x| x.0 == *t) else {
                return (
                    404,
                    r#"{"error_code":40403,"message":"This server does not host this topic-partition."}"#.into(),
                );
            };
            let Some((_, rs)) = ps.iter().find(|x| x.0 == p) else {
                return (404, r#"{"error_code":40403,"message":"no such partition"}"#.into());
            };
            let data = rs
                .iter()
                .enumerate()
                .map(|(i, (b, ins))| replica(t, p, *b, i == 0 && *ins, *ins))
                .collect();
            (
                200,
                list(
                    "KafkaReplicaList",
                    &format!("/topics/{t}/partitions/{p}/replicas"),
                    data,
                ),
            )
        }
        ["topics", t, "configs", "min.insync.replicas"] => {
            let Some((_, v, source, _)) = f.topics.iter().find(|x| x.0 == *t) else {
                return (404, r#"{"error_code":40403,"message":"unknown topic"}"#.into());
            };
            (
                200,
                serde_json::json!({
                    "kind": "KafkaTopicConfig",
                    "metadata": {
                        "self": format!("{}/topics/{t}/configs/min.insync.replicas", base()),
                        "resource_name": format!("crn:///kafka={C}/topic={t}/config=min.insync.replicas"),
                    },
                    "cluster_id": C,
                    "topic_name": t,
                    "name": "min.insync.replicas",
                    "value": v,
                    "is_default": source == "DEFAULT_CONFIG",
                    "is_read_only": false,
                    "is_sensitive": false,
                    "source": source,
                    "synonyms": [
                        { "name": "min.insync.replicas", "value": v, "source": source },
                        { "name": "min.insync.replicas", "value": "1", "source": "DEFAULT_CONFIG" },
                    ],
                })
                .to_string(),
            )
        }
        _ => (404, r#"{"error_code":404,"message":"HTTP 404 Not Found"}"#.into()),
    }
}

/// Three brokers kafka-1..3 (ids 1..3), controller `ctl`, topic `orders`
/// (min.insync.replicas 2, set on the topic) with partitions 0 and 1 on all
/// three, everyone in sync, and `__consumer_offsets` partition 0 whose
/// min.insync.replicas (2) is the broker's (STATIC_BROKER_CONFIG).
fn fake(ctl: i32) -> Arc<Mutex<Fake>> {
    Arc::new(Mutex::new(Fake {
        brokers: (1..=3).map(|i| (i, format!("kafka-{i}"))).collect(),
        controller: Some(ctl),
        topics: vec![
            (
                "orders".into(),
                "2".into(),
                "DYNAMIC_TOPIC_CONFIG".into(),
                vec![
                    (0, vec![(1, true), (2, true), (3, true)]),
                    (1, vec![(2, true), (3, true), (1, true)]),
                ],
            ),
            (
                "__consumer_offsets".into(),
                "2".into(),
                "STATIC_BROKER_CONFIG".into(),
                vec![(0, vec![(3, true), (1, true), (2, true)])],
            ),
        ],
        seen: Vec::new(),
    }))
}

fn members(port: u16) -> Vec<Member> {
    (1..=3)
        .map(|i| Member {
            name: format!("kafka-{i}"),
            host: format!("host{i}"),
            replica: 1,
            addr: "127.0.0.1".into(),
            port,
        })
        .collect()
}

fn hook() -> Kafka {
    Kafka::default()
}

#[tokio::test]
async fn the_active_controller_restarts_last_and_the_others_keep_their_order() {
    let f = fake(1);
    let ms = members(serve(f.clone()).await);
    assert_eq!(hook().order(&ms).await, vec![1, 2, 0]);
    f.lock().unwrap().controller = Some(2);
    assert_eq!(hook().order(&ms).await, vec![0, 2, 1]);
}

#[tokio::test]
async fn without_an_answer_the_order_stays_as_it_was() {
    let ms = members(1);
    assert_eq!(hook().order(&ms).await, vec![0, 1, 2]);
}

#[tokio::test]
async fn a_broker_may_restart_when_every_partition_keeps_min_insync_replicas() {
    let f = fake(1);
    let ms = members(serve(f).await);
    hook().before_restart(&ms[1], &ms).await.unwrap();
}

#[tokio::test]
async fn a_broker_whose_restart_would_drop_a_partition_below_min_insync_replicas_is_refused_naming_it() {
    let f = fake(1);
    f.lock().unwrap().set_in_sync("orders", 1, 3, false);
    let ms = members(serve(f.clone()).await);
    // Partition 1 of orders is in sync on 2 and 1 only: broker 2 (and 1)
    // must not go, broker 3 is not in that ISR and may.
    let e = hook().before_restart(&ms[1], &ms).await.unwrap_err().0;
    assert!(e.contains("broker 2 (kafka-2) must not restart"), "{e}");
    assert!(e.contains("topic orders partition 1"), "{e}");
    assert!(e.contains("min.insync.replicas 2"), "{e}");
    assert!(!e.contains("partition 0"), "{e}");
    hook().before_restart(&ms[2], &ms).await.unwrap();
}

#[tokio::test]
async fn min_insync_replicas_from_the_broker_default_counts_too() {
    let f = fake(1);
    f.lock().unwrap().set_in_sync("__consumer_offsets", 0, 2, false);
    let ms = members(serve(f).await);
    let e = hook().before_restart(&ms[0], &ms).await.unwrap_err().0;
    assert!(e.contains("topic __consumer_offsets partition 0"), "{e}");
}

#[tokio::test]
async fn the_next_broker_waits_until_the_restarted_one_is_back_in_every_isr() {
    let f = fake(1);
    {
        let mut g = f.lock().unwrap();
        g.set_in_sync("orders", 0, 2, false);
        g.set_in_sync("__consumer_offsets", 0, 2, false);
    }
    let ms = members(serve(f.clone()).await);
    let f2 = f.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(700)).await;
        f2.lock().unwrap().set_in_sync("orders", 0, 2, true);
        tokio::time::sleep(Duration::from_millis(700)).await;
        f2.lock().unwrap().set_in_sync("__consumer_offsets", 0, 2, true);
    });
    let t = Instant::now();
    hook()
        .ready_for_next(&ms[1], &ms, Duration::from_secs(20))
        .await
        .unwrap();
    assert!(t.elapsed() >= Duration::from_millis(1400), "{:?}", t.elapsed());
}

#[tokio::test]
async fn a_broker_that_does_not_rejoin_its_isrs_stops_the_roll_naming_the_partitions() {
    let f = fake(1);
    f.lock().unwrap().set_in_sync("orders", 1, 3, false);
    let ms = members(serve(f).await);
    let e = hook()
        .ready_for_next(&ms[2], &ms, Duration::from_secs(1))
        .await
        .unwrap_err()
        .0;
    assert!(e.contains("kafka-3 was not back in every ISR within 1s"), "{e}");
    assert!(
        e.contains("broker 3 is not in the ISR of topic orders partition 1"),
        "{e}"
    );
}

#[tokio::test]
async fn a_broker_that_is_not_registered_is_not_ready() {
    let f = fake(1);
    f.lock().unwrap().brokers.retain(|b| b.0 != 3);
    let ms = members(serve(f).await);
    let hook = Kafka {
        broker_ids: [("kafka-3".to_owned(), 3)].into_iter().collect(),
        ..Kafka::default()
    };
    let e = hook
        .ready_for_next(&ms[2], &ms, Duration::from_secs(1))
        .await
        .unwrap_err()
        .0;
    assert!(e.contains("broker 3 is not registered"), "{e}");
}

#[tokio::test]
async fn brokers_advertising_other_hosts_map_through_the_label_or_fail_naming_it() {
    let f = fake(3);
    for (i, b) in f.lock().unwrap().brokers.iter_mut().enumerate() {
        b.1 = format!("10.0.0.{}", i + 1);
    }
    let ms = members(serve(f).await);
    let e = hook().before_restart(&ms[0], &ms).await.unwrap_err().0;
    assert!(e.contains("no registered Kafka broker advertises host kafka-1"), "{e}");
    assert!(e.contains(BROKERS_LABEL), "{e}");
    let labels: BTreeMap<String, String> = [(BROKERS_LABEL.to_owned(), "kafka-1=1, kafka-2=2,kafka-3=3".to_owned())]
        .into_iter()
        .collect();
    let hook = Kafka::from_labels(&labels).unwrap();
    assert_eq!(hook.order(&ms).await, vec![0, 1, 2]);
    hook.before_restart(&ms[0], &ms).await.unwrap();
}

#[tokio::test]
async fn the_rest_proxy_label_is_asked_instead_of_the_members() {
    let f = fake(1);
    let port = serve(f.clone()).await;
    let labels: BTreeMap<String, String> = [(REST_PROXY_LABEL.to_owned(), format!("http://127.0.0.1:{port}"))]
        .into_iter()
        .collect();
    let hook = Kafka::from_labels(&labels).unwrap();
    // The members' own ports answer nothing.
    let ms = members(1);
    assert_eq!(hook.order(&ms).await, vec![1, 2, 0]);
    assert!(!f.lock().unwrap().seen.is_empty());
}

#[test]
fn bad_labels_are_errors_naming_the_label_and_entry() {
    let bad = |k: &str, v: &str| {
        let labels: BTreeMap<String, String> = [(k.to_owned(), v.to_owned())].into_iter().collect();
        Kafka::from_labels(&labels).unwrap_err().0
    };
    let e = bad(BROKERS_LABEL, "kafka-1=one");
    assert!(e.contains(BROKERS_LABEL) && e.contains("kafka-1=one"), "{e}");
    let e = bad(REST_PROXY_LABEL, "rest-proxy");
    assert!(e.contains(REST_PROXY_LABEL) && e.contains("rest-proxy"), "{e}");
}
