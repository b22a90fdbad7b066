//! Surplus replicas leave the gateway's routes before they stop: scaling a
//! routed service down (real coordinator, gateway and data operators, real
//! Nginx as the gateway, one host) takes each surplus container out of the
//! rendered Nginx configuration before Docker stops it, while a client
//! sends requests through the gateway the whole time.
//!
//! Images: `infra-local/nginx:1`.

use std::io::{Read, Write};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use infra_e2e::{Options, Platform, write};

fn catalog(port: u16) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let default_conf = "server { listen 80 default_server; server_name _; \
        location = /healthz { default_type text/plain; return 200 ok; } location / { return 404; } }";
    write(
        dir.path(),
        "01-gateway/nginx/docker-compose.yml",
        &format!(
            r#"services:
  nginx:
    image: infra-local/nginx:1
    ports: ["{port}:80"]
    environment:
      DEFAULT_CONF: "{default_conf}"
    command: ["sh", "-c", "printf '%s\n' \"$$DEFAULT_CONF\" > /etc/nginx/conf.d/default.conf && exec nginx -g 'daemon off;'"]
    healthcheck:
      test: ["CMD", "wget", "-q", "-O", "/dev/null", "http://127.0.0.1/healthz"]
      interval: 1s
      retries: 5
    networks: [infra_net]
  web:
    image: infra-local/nginx:1
    deploy:
      replicas: 3
    healthcheck:
      test: ["CMD", "wget", "-q", "-O", "/dev/null", "http://127.0.0.1/"]
      interval: 1s
      retries: 3
    labels:
      - traefik.enable=true
      - traefik.http.routers.web.rule=Host(`web.e2e.test`)
      - traefik.http.services.web.loadbalancer.server.port=80
    networks: [infra_net]
networks:
  infra_net: {{}}
"#
        ),
    );
    dir
}

fn get(addr: &str) -> Result<u16, String> {
    let mut s = std::net::TcpStream::connect(addr).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(3))).ok();
    write!(s, "GET / HTTP/1.1\r\nHost: web.e2e.test\r\nConnection: close\r\n\r\n").map_err(|e| e.to_string())?;
    let mut out = String::new();
    s.read_to_string(&mut out).map_err(|e| e.to_string())?;
    out.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| "no status".to_string())
}

fn now_s() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs_f64()
}

fn docker(args: &[&str]) -> String {
    let o = Command::new("docker").args(args).output().unwrap();
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn scaling_a_routed_service_down_takes_each_surplus_replica_out_of_the_gateway_before_it_stops() {
    let port = infra_bus::testing::free_port();
    let dir = catalog(port);
    let o = Options::over("drain", dir.path(), &["gateway"]);
    let p = Platform::start(o);
    let progress = p.call("Deploy", r#"{"timeoutSeconds":90}"#);
    assert_eq!(progress.last().unwrap()["ready"], 2, "{progress:#?}");
    let gw = format!("127.0.0.1:{port}");
    let t = Instant::now();
    while get(&gw) != Ok(200) {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "the route never came: {}",
            p.log("gateway-operator")
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let project = p.opts.project.clone();
    let nginx = format!("{project}-nginx-1");
    let surplus = [format!("{project}-web-2"), format!("{project}-web-3")];

    // Watch the rendered routes inside the gateway's Nginx, and the client.
    let stop = Arc::new(AtomicBool::new(false));
    let last_routed: Arc<Mutex<Vec<(String, f64)>>> = Arc::default();
    let watcher = {
        let (stop, last, nginx, surplus) = (stop.clone(), last_routed.clone(), nginx.clone(), surplus.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                let conf = docker(&["exec", &nginx, "cat", "/etc/nginx/conf.d/infra-routes.conf"]);
                let t = now_s();
                let mut l = last.lock().unwrap();
                for name in &surplus {
                    if conf.contains(name.as_str()) {
                        l.retain(|(n, _)| n != name);
                        l.push((name.clone(), t));
                    }
                }
                drop(l);
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };
    let failures: Arc<Mutex<Vec<String>>> = Arc::default();
    let client = {
        let (stop, failures, gw) = (stop.clone(), failures.clone(), gw.clone());
        std::thread::spawn(move || {
            let mut n = 0u32;
            while !stop.load(Ordering::SeqCst) {
                n += 1;
                match get(&gw) {
                    Ok(200) => {}
                    other => failures.lock().unwrap().push(format!("{other:?}")),
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            n
        })
    };
    std::thread::sleep(Duration::from_secs(1));
    let since = now_s();
    let scaled = p.call("Scale", r#"{"service":"web","replicas":1,"timeoutSeconds":60}"#);
    assert_eq!(scaled.last().unwrap()["phase"], "PHASE_DONE", "{scaled:#?}");
    let t = Instant::now();
    while surplus.iter().any(|s| {
        !docker(&["ps", "-aq", "--filter", &format!("name=^{s}$")])
            .trim()
            .is_empty()
    }) {
        assert!(t.elapsed() < Duration::from_secs(30), "surplus replicas still there");
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_secs(1));
    stop.store(true, Ordering::SeqCst);
    watcher.join().unwrap();
    let requests = client.join().unwrap();
    let failures = failures.lock().unwrap().clone();
    assert!(
        failures.is_empty(),
        "{} of {requests} requests failed: {failures:?}",
        failures.len()
    );

    // Docker's own record of when each surplus container was told to stop.
    let events = docker(&[
        "events",
        "--since",
        &format!("{since:.3}"),
        "--until",
        &format!("{:.3}", now_s()),
        "--filter",
        "event=kill",
        "--filter",
        "event=stop",
        "--format",
        "{{.TimeNano}} {{.Actor.Attributes.name}}",
    ]);
    let routed = last_routed.lock().unwrap().clone();
    for name in &surplus {
        let stopped = events
            .lines()
            .filter(|l| l.ends_with(&format!(" {name}")))
            .filter_map(|l| l.split_whitespace().next()?.parse::<f64>().ok())
            .map(|ns| ns / 1e9)
            .fold(f64::INFINITY, f64::min);
        assert!(stopped.is_finite(), "no stop event for {name}: {events}");
        let (_, last_seen) = routed
            .iter()
            .find(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("{name} was never routed: {routed:?}"));
        assert!(
            *last_seen < stopped,
            "{name} was still in the gateway's routes {:.2}s after Docker stopped it",
            last_seen - stopped
        );
        println!(
            "{name}: out of the gateway's routes {:.2}s before it stopped",
            stopped - last_seen
        );
    }
    println!("{requests} requests through the gateway while scaling 3 -> 1, 0 failed");
}
