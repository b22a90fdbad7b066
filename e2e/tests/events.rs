//! The event history through the real coordinator, grpcurl and infractl:
//! `WatchEvents` from a sequence number or a time, filtered by service and
//! kind; a client cut mid-stream that reconnects with its last sequence
//! number + 1 misses nothing and sees nothing twice, while events go on
//! being published.
//!
//! The events are published on the bus as the operators publish theirs
//! (JetStream, acknowledged), so the test knows every one of them.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use infra_e2e::{Options, Platform, parse_json_stream};
use infra_proto::bus::v1::{Event, EventKind};

/// Event `n`: service `a` or `b` by parity, `started` or `died` by n % 3.
fn event(n: u64) -> Event {
    Event {
        id: format!("ev-{n}"),
        time: Some(prost_types::Timestamp::from(SystemTime::now())),
        kind: if n.is_multiple_of(3) {
            EventKind::Died
        } else {
            EventKind::Started
        } as i32,
        host: "hist".into(),
        tier: "data".into(),
        service: if n.is_multiple_of(2) { "a" } else { "b" }.into(),
        reason: format!("event {n}"),
        source: "test".into(),
        ..Default::default()
    }
}

/// The (sequence, id) of each event a watch printed, in order.
type Seen = Arc<Mutex<Vec<(u64, String)>>>;

/// `WatchEvents` with `request` through grpcurl, read message by message:
/// each message's (sequence, id) goes to `seen` as it arrives; after
/// `stop_reading` messages nothing more is read (the client stalls, and
/// flow control holds the rest back) until it is killed.
fn watch_until(p: &Platform, request: &str, stop_reading: usize) -> (std::process::Child, Seen) {
    let mut child = Command::new(std::env::var("GRPCURL").unwrap_or_else(|_| "grpcurl".into()))
        .args(["-plaintext", "-max-time", "120", "-d", request, &p.grpc])
        .arg("infra.coordinator.v1.CoordinatorService/WatchEvents")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("grpcurl");
    let seen: Seen = Arc::default();
    let (sink, out) = (seen.clone(), child.stdout.take().unwrap());
    std::thread::spawn(move || {
        // One pretty-printed object per message, closed by a line "}".
        let mut text = String::new();
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            text.push_str(&line);
            text.push('\n');
            if line == "}" {
                for v in parse_json_stream(&text) {
                    let seq = v["sequence"].as_str().and_then(|s| s.parse().ok()).unwrap_or(0);
                    let id = v["id"].as_str().unwrap_or_default().to_owned();
                    sink.lock().unwrap().push((seq, id));
                }
                text.clear();
                if sink.lock().unwrap().len() >= stop_reading {
                    std::thread::sleep(Duration::from_secs(3600));
                }
            }
        }
    });
    (child, seen)
}

fn watch(p: &Platform, request: &str) -> (std::process::Child, Seen) {
    watch_until(p, request, usize::MAX)
}

fn wait_count(seen: &Mutex<Vec<(u64, String)>>, n: usize, what: &str) {
    let start = Instant::now();
    while seen.lock().unwrap().len() < n {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{what}: {} of {n} events within 60 s",
            seen.lock().unwrap().len()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn watch_events_replays_from_a_sequence_or_a_time_filters_and_a_cut_client_resumes_missing_nothing() {
    let dir = tempfile::tempdir().unwrap();
    infra_e2e::write(dir.path(), "01-gateway/empty/docker-compose.yml", "services: {}\n");
    let p = Platform::start(Options::over("events", dir.path(), &["data"]));
    let rt = tokio::runtime::Runtime::new().unwrap();
    let bus = rt.block_on(p.nats.bus());
    let publish = |from: u64, to: u64| {
        for n in from..to {
            rt.block_on(bus.publish_event(&event(n))).expect("publish");
        }
    };

    // 300 events, then a time, then 300 more.
    publish(0, 300);
    std::thread::sleep(Duration::from_millis(1100));
    let middle = SystemTime::now();
    std::thread::sleep(Duration::from_millis(1100));
    publish(300, 600);

    // From the first sequence: cut once 150 are in.
    let (mut first, seen) = watch_until(&p, r#"{"host":"hist","startSequence":"1"}"#, 150);
    wait_count(&seen, 150, "the first connection");
    first.kill().unwrap();
    first.wait().unwrap();
    // 300 more are published while it is away and after it is back.
    let publisher = {
        let nats = p.nats.url();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Runtime::new().unwrap();
            let bus = rt.block_on(async {
                let cfg = infra_bus::BusConfig {
                    url: nats,
                    name: "publisher".into(),
                    ..Default::default()
                };
                infra_bus::Bus::connect(&cfg).await.expect("connect")
            });
            for n in 600..900 {
                rt.block_on(bus.publish_event(&event(n))).expect("publish");
            }
        })
    };
    let before: Vec<(u64, String)> = seen.lock().unwrap().clone();
    let last = before.last().unwrap().0;
    assert!(last >= 150, "sequence numbers of the stream: {:?}", &before[..3]);
    // Reconnect with the last sequence seen + 1.
    let (mut second, again) = watch(&p, &format!(r#"{{"host":"hist","startSequence":"{}"}}"#, last + 1));
    publisher.join().unwrap();
    wait_count(&again, 900 - before.len(), "the second connection");
    std::thread::sleep(Duration::from_millis(500));
    second.kill().unwrap();
    second.wait().unwrap();
    let mut all = before.clone();
    all.extend(again.lock().unwrap().iter().cloned());
    let ids: Vec<&str> = all.iter().map(|(_, id)| id.as_str()).collect();
    let expected: Vec<String> = (0..900).map(|n| format!("ev-{n}")).collect();
    assert_eq!(
        ids,
        expected.iter().map(String::as_str).collect::<Vec<_>>(),
        "every event once, in order, across the cut at sequence {last}"
    );
    assert!(
        all.windows(2).all(|w| w[1].0 > w[0].0),
        "sequence numbers rise across the cut"
    );
    println!(
        "FAULT | WatchEvents cut after {} of 600 events, 300 more published meanwhile and after | reconnected from sequence {}: all 900 events once, in order",
        before.len(),
        last + 1
    );

    // From a time: the second batch exactly.
    let t = prost_types::Timestamp::from(middle);
    let rfc = format!("\"{t}\"");
    let (mut timed, from_time) = watch(&p, &format!(r#"{{"host":"hist","startTime":{rfc}}}"#));
    wait_count(&from_time, 600, "from a time");
    timed.kill().unwrap();
    timed.wait().unwrap();
    assert_eq!(
        from_time.lock().unwrap()[0].1,
        "ev-300",
        "starts at the first event after {rfc}"
    );

    // Filtered: service a, kind died, from the start.
    let (mut filtered, only) = watch(
        &p,
        r#"{"startSequence":"1","host":"hist","service":"a","kinds":["EVENT_KIND_DIED"]}"#,
    );
    let want: Vec<String> = (0..900)
        .filter(|n| n % 2 == 0 && n % 3 == 0)
        .map(|n| format!("ev-{n}"))
        .collect();
    wait_count(&only, want.len(), "filtered");
    std::thread::sleep(Duration::from_millis(500));
    filtered.kill().unwrap();
    filtered.wait().unwrap();
    let got: Vec<String> = only.lock().unwrap().iter().map(|(_, id)| id.clone()).collect();
    assert_eq!(got, want, "service a's died events only");

    // Both starts: refused, saying why.
    let out = p.grpcurl(
        &["infra.coordinator.v1.CoordinatorService/WatchEvents"],
        Some(&format!(r#"{{"startSequence":"5","startTime":{rfc}}}"#)),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("InvalidArgument") && err.contains("not both"),
        "{err}"
    );

    // infractl: the same history, one line per event with its sequence.
    let out = Command::new(infra_e2e::bin_dir("debug").join("infractl"))
        .args([
            "--addr",
            &format!("http://{}", p.grpc),
            "events",
            "--from-seq",
            "10",
            "--limit",
            "3",
        ])
        .args(["--host", "hist", "--service", "a"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}\n{}", String::from_utf8_lossy(&out.stderr));
    let seq: u64 = lines[0]
        .split_whitespace()
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    assert!(
        seq >= 10 && lines[0].contains("hist/data/a") && lines[0].contains(" event "),
        "{text}"
    );
}
