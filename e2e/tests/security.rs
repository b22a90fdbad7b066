//! Secured transport with the real binaries, a real NATS server, the real
//! Docker engine and the real grpcurl: NATS with TLS and a password refuses
//! a client without credentials or without TLS, and the whole platform
//! runs over it with the CA and the credentials; the coordinator's gRPC
//! with TLS refuses plain text, refuses writes without the bearer token
//! (UNAUTHENTICATED) while reads work, and takes them with it; bad
//! security configuration exits 64. Secrets never reach a log or an
//! error message. Certificates are made here with rcgen, never committed.
//!
//! Images: `infra-local/nginx:1`. Binaries: `cargo build --workspace --bins`.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use infra_bus::testing::{NatsServer, free_port};
use infra_bus::{Bus, BusConfig, BusErrorKind, BusTls};
use infra_e2e::{Options, Platform, bin_dir, write};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};

const PASSWORD: &str = "nats-pass-7f3c1e9a2b";
const TOKEN: &str = "api-token-5d8e2f0c4a6b9d1e";

/// A CA and a server certificate for `localhost` and `127.0.0.1`, in a
/// temporary directory.
struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name.push(DnType::CommonName, "infra e2e CA");
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca, &ca_key);
        let key = KeyPair::generate().unwrap();
        let mut leaf = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
        leaf.distinguished_name.push(DnType::CommonName, "localhost");
        leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let cert = leaf.signed_by(&key, &issuer).unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca_cert.pem()).unwrap();
        std::fs::write(dir.path().join("server.pem"), cert.pem()).unwrap();
        std::fs::write(dir.path().join("server.key"), key.serialize_pem()).unwrap();
        std::fs::write(dir.path().join("password"), format!("{PASSWORD}\n")).unwrap();
        std::fs::write(dir.path().join("token"), format!("{TOKEN}\n")).unwrap();
        Self { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn arg(&self, name: &str) -> String {
        self.path(name).display().to_string()
    }
}

const WEB: &str = r#"services:
  web:
    image: infra-local/nginx:1
    healthcheck:
      test: ["CMD-SHELL", "wget -q -O /dev/null http://127.0.0.1/"]
      interval: 1s
      timeout: 2s
      retries: 2
"#;

fn connect(cfg: &BusConfig) -> (Result<Bus, infra_bus::BusError>, Duration) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let t = Instant::now();
    let r = rt.block_on(Bus::connect(cfg));
    (r, t.elapsed())
}

/// A plain-TCP client that speaks the NATS protocol without TLS: whether
/// the server answered its PING.
fn plain_tcp_ping(port: u16) -> (String, bool) {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let mut buf = [0u8; 4096];
    let n = s.read(&mut buf).unwrap_or(0);
    let info = String::from_utf8_lossy(&buf[..n]).into_owned();
    let connect = format!("CONNECT {{\"user\":\"infra\",\"pass\":\"{PASSWORD}\",\"verbose\":false}}\r\nPING\r\n");
    let _ = s.write_all(connect.as_bytes());
    let mut answer = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
        }
    }
    (info, String::from_utf8_lossy(&answer).contains("PONG"))
}

#[test]
fn nats_refuses_clients_without_credentials_or_tls_and_the_platform_runs_over_tls_with_them() {
    let started = Instant::now();
    let pki = Pki::new();
    let nats_args = vec![
        "--tls".to_string(),
        "--tlscert".into(),
        pki.arg("server.pem"),
        "--tlskey".into(),
        pki.arg("server.key"),
        "--user".into(),
        "infra".into(),
        "--pass".into(),
        PASSWORD.into(),
    ];
    let catalog = tempfile::tempdir().unwrap();
    write(catalog.path(), "01-gateway/web/docker-compose.yml", WEB);
    let mut o = Options::over("secnats", catalog.path(), &["gateway"]);
    o.nats_args = nats_args;
    o.proc_env = vec![
        ("INFRA_NATS__CA_FILE".into(), pki.arg("ca.pem")),
        ("INFRA_NATS__USER".into(), "infra".into()),
        ("INFRA_NATS__PASSWORD_FILE".into(), pki.arg("password")),
        ("INFRA_NATS__TLS_REQUIRED".into(), "true".into()),
    ];
    // The operators and the coordinator reach NATS over TLS with the
    // password: the platform comes up (start waits for every heartbeat).
    let p = Platform::start(o);
    let tls = BusTls {
        ca_file: Some(pki.path("ca.pem")),
        client: None,
        required: true,
    };

    // No credentials: refused at once, saying why.
    let (r, took) = connect(&BusConfig {
        url: p.nats.url(),
        name: "no-credentials".into(),
        tls: tls.clone(),
        ..Default::default()
    });
    let e = r.expect_err("a client without credentials is refused");
    assert_eq!(e.kind(), BusErrorKind::Connect);
    assert!(e.to_string().contains("refused the credentials"), "{e}");
    assert!(took < Duration::from_secs(10), "refusal took {took:?}");

    // A wrong password: refused, and the password is not in the error.
    let (r, _) = connect(&BusConfig {
        url: p.nats.url(),
        name: "wrong-password".into(),
        user: Some(("infra".into(), "not-the-password-1234".into())),
        tls: tls.clone(),
        ..Default::default()
    });
    let e = r.expect_err("a wrong password is refused").to_string();
    assert!(!e.contains("not-the-password-1234") && !e.contains(PASSWORD), "{e}");

    // The right password without our CA: the TLS handshake fails.
    let (r, _) = connect(&BusConfig {
        url: p.nats.url(),
        name: "no-ca".into(),
        user: Some(("infra".into(), PASSWORD.into())),
        ..Default::default()
    });
    let e = r
        .expect_err("a server certificate from an unknown CA is refused")
        .to_string();
    assert!(e.contains("TLS failed"), "{e}");
    assert!(!e.contains(PASSWORD), "{e}");

    // Plain TCP with the right password: the server wants TLS first and
    // never answers the PING.
    let (info, ponged) = plain_tcp_ping(p.nats.port());
    assert!(info.contains("\"tls_required\":true"), "{info}");
    assert!(!ponged, "the server answered a plain-text client");

    // With the CA and the password, a client works end to end: a deploy
    // through the coordinator reaches the operator over TLS and runs.
    let (r, _) = connect(&BusConfig {
        url: p.nats.url(),
        name: "right".into(),
        user: Some(("infra".into(), PASSWORD.into())),
        tls,
        ..Default::default()
    });
    r.expect("the CA and the password are enough");
    let progress = p.call("Deploy", r#"{"timeoutSeconds":60}"#);
    assert_eq!(progress.last().unwrap()["ready"], 1, "{progress:#?}");
    let status = p.call("GetStatus", r#"{"selection":{"services":["web"]}}"#);
    assert!(status[0].to_string().contains("HEALTH_HEALTHY"), "{status:?}");

    let logs = p.all_logs();
    assert!(logs.contains("connected to NATS"), "{logs}");
    assert!(!logs.contains(PASSWORD), "the NATS password is in a log");
    println!(
        "nats security: a client without credentials was refused in {:.2}s, a wrong password and an unknown CA \
         were refused, a plain-TCP client got no PONG; over TLS with the password the coordinator and the \
         gateway operator deployed web (healthy); the password is in no log; test took {:.0}s",
        took.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
}

fn grpcurl(args: &[&str]) -> Output {
    Command::new(std::env::var("GRPCURL").unwrap_or_else(|_| "grpcurl".into()))
        .args(args)
        .output()
        .expect("grpcurl on PATH")
}

fn code_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr)
        .lines()
        .find_map(|l| l.trim().strip_prefix("Code:").map(|c| c.trim().to_owned()))
        .unwrap_or_default()
}

fn coordinator(env: &[(&str, String)], args: &[&str], log: &Path) -> std::process::Child {
    Command::new(bin_dir("debug").join("coordinator"))
        .args(args)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .env("INFRA_LOG__FORMAT", "json")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .expect("coordinator binary (cargo build --workspace --bins)")
}

struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn over_tls_the_coordinator_refuses_plain_text_and_writes_without_the_token_and_takes_them_with_it() {
    let started = Instant::now();
    let pki = Pki::new();
    let nats = NatsServer::start();
    let catalog = tempfile::tempdir().unwrap();
    write(catalog.path(), "01-gateway/web/docker-compose.yml", WEB);
    let addr = format!("127.0.0.1:{}", free_port());
    let logs = tempfile::tempdir().unwrap();
    let log = logs.path().join("coordinator.log");
    let project = format!("e2esecgrpc{}", std::process::id());
    let args = [
        "--grpc-listen",
        &addr,
        "--compose-dir",
        catalog.path().to_str().unwrap(),
        "--project",
        &project,
    ];
    let env = [
        ("INFRA_NATS__URL", nats.url()),
        ("INFRA_GRPC_TLS__CERT_FILE", pki.arg("server.pem")),
        ("INFRA_GRPC_TLS__KEY_FILE", pki.arg("server.key")),
        ("INFRA_API_TOKEN_FILE", pki.arg("token")),
    ];
    let _c = Killed(coordinator(&env, &args, &log));
    let ca = pki.arg("ca.pem");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !grpcurl(&["-cacert", &ca, &addr, "grpc.health.v1.Health/Check"])
        .status
        .success()
    {
        assert!(
            Instant::now() < deadline,
            "the coordinator does not answer over TLS:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let svc = |m: &str| format!("infra.coordinator.v1.CoordinatorService/{m}");
    let remove = r#"{"selection":{"services":["web"]}}"#;

    // Plain text is not spoken.
    let out = grpcurl(&["-plaintext", &addr, &svc("ListServices")]);
    assert!(!out.status.success(), "a plain-text call succeeded");
    // TLS without the CA: the certificate is not trusted.
    let out = grpcurl(&[&addr, &svc("ListServices")]);
    assert!(!out.status.success(), "a call trusting no CA of ours succeeded");

    // With the CA: a read works, a write without the token is refused
    // with UNAUTHENTICATED, and so is a wrong token (not repeated back).
    let out = grpcurl(&["-cacert", &ca, &addr, &svc("ListServices")]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("web"));
    let out = grpcurl(&["-cacert", &ca, "-d", remove, &addr, &svc("Remove")]);
    assert_eq!(
        code_of(&out),
        "Unauthenticated",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let wrong = "Bearer wrong-token-0123456789abcdef";
    let out = grpcurl(&[
        "-cacert",
        &ca,
        "-H",
        &format!("authorization: {wrong}"),
        "-d",
        remove,
        &addr,
        &svc("Remove"),
    ]);
    assert_eq!(code_of(&out), "Unauthenticated");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("wrong-token") && !err.contains(TOKEN), "{err}");
    // Scale, Rollout, Rollback, Drain and Deploy are writes too.
    for (m, d) in [
        ("Deploy", "{}"),
        ("Scale", r#"{"service":"web","replicas":2}"#),
        ("Rollout", r#"{"service":"web"}"#),
        ("Rollback", r#"{"service":"web"}"#),
        ("Drain", r#"{"host":"h1"}"#),
    ] {
        let out = grpcurl(&["-cacert", &ca, "-d", d, &addr, &svc(m)]);
        assert_eq!(
            code_of(&out),
            "Unauthenticated",
            "{m}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // With the token the write is taken.
    let out = grpcurl(&[
        "-cacert",
        &ca,
        "-H",
        &format!("authorization: Bearer {TOKEN}"),
        "-d",
        remove,
        &addr,
        &svc("Remove"),
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    // infractl: the same with --ca and --token-file.
    let infractl = |extra: &[&str]| {
        Command::new(bin_dir("debug").join("infractl"))
            .args(["--addr", &format!("https://{addr}"), "--ca", &ca])
            .args(extra)
            .output()
            .expect("infractl")
    };
    let out = infractl(&["remove", "web"]);
    assert!(!out.status.success(), "infractl remove without a token succeeded");
    let out = infractl(&["--token-file", &pki.arg("token"), "remove", "web"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = infractl(&["hosts"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("writes need the bearer token"), "{text}");
    assert!(!text.contains(TOKEN), "the token is in the coordinator's log");
    println!(
        "grpc security: over TLS a plain-text call and a call without our CA failed; reads worked with -cacert; \
         Deploy, Remove, Scale, Rollout, Rollback and Drain without the token were UNAUTHENTICATED, a wrong \
         token too (not echoed); grpcurl -H 'authorization: Bearer ...' and infractl --token-file were taken; \
         the token is in no log; test took {:.1}s",
        started.elapsed().as_secs_f64()
    );
}

#[test]
fn a_coordinator_on_a_network_address_without_tls_or_with_tls_and_no_credential_exits_64() {
    let catalog = tempfile::tempdir().unwrap();
    write(catalog.path(), "01-gateway/web/docker-compose.yml", WEB);
    let pki = Pki::new();
    let run = |env: &[(&str, String)], listen: &str| {
        Command::new(bin_dir("debug").join("coordinator"))
            .args([
                "--grpc-listen",
                listen,
                "--compose-dir",
                catalog.path().to_str().unwrap(),
            ])
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .env("INFRA_NATS__URL", "nats://127.0.0.1:1")
            .output()
            .unwrap()
    };
    let out = run(&[], "0.0.0.0:50999");
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("not a loopback address") && err.contains("grpc_tls"),
        "{err}"
    );

    let tls = [
        ("INFRA_GRPC_TLS__CERT_FILE", pki.arg("server.pem")),
        ("INFRA_GRPC_TLS__KEY_FILE", pki.arg("server.key")),
    ];
    let out = run(&tls, "0.0.0.0:50999");
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no write could ever be authorised"), "{err}");

    // A token over plain text is refused too: it would travel in the clear.
    let out = run(&[("INFRA_API_TOKEN_FILE", pki.arg("token"))], "127.0.0.1:50999");
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("need TLS") && !err.contains(TOKEN), "{err}");
}
