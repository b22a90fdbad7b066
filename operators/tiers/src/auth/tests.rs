//! Keycloak and Vault bootstrap against fakes of their admin APIs (no
//! Keycloak or Vault image can be had here), built from their documented
//! requests and responses. Secrets are checked never to show in errors or
//! logs.

use std::sync::{Arc, Mutex};

use serde_json::{Value, json};

use super::*;
use infra_test_support::fake_http as fake;

const ADMIN_PASSWORD: &str = "adm1n-pa55word-XYZ";
const GRAFANA_SECRET: &str = "grafana-client-s3cret-QQQ";

fn vars() -> BTreeMap<String, String> {
    BTreeMap::from([
        ("KEYCLOAK_REALM".to_string(), "infra".to_string()),
        ("DEFAULT_URL".to_string(), "example.org".to_string()),
    ])
}

fn decl() -> RealmDecl {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../compose/02-auth/keycloak/realm.yml"
    ))
    .unwrap();
    RealmDecl::parse(&text, &vars()).unwrap()
}

fn store() -> MemorySecrets {
    let s = MemorySecrets::default();
    s.0.lock().unwrap().insert(
        "keycloak_admin_password".into(),
        format!("{ADMIN_PASSWORD}\n").into_bytes(),
    );
    s.0.lock()
        .unwrap()
        .insert("grafana_oauth_client_secret".into(), GRAFANA_SECRET.as_bytes().to_vec());
    s
}

#[derive(Default)]
struct Kc {
    realms: BTreeMap<String, Value>,
    /// realm -> clients (with `secret`).
    clients: BTreeMap<String, Vec<Value>>,
    next_id: u32,
}

/// A fake Keycloak: the token endpoint checks the admin password, every
/// admin call the bearer token.
async fn fake_keycloak() -> (fake::Server, Arc<Mutex<Kc>>) {
    let state: Arc<Mutex<Kc>> = Arc::default();
    let st = state.clone();
    let server = fake::start(move |r| {
        let mut kc = st.lock().unwrap();
        let path = r.path.split('?').next().unwrap_or_default().to_owned();
        let query = r.path.split_once('?').map(|(_, q)| q.to_owned()).unwrap_or_default();
        if path == "/realms/master/protocol/openid-connect/token" {
            let ok = r.body.contains("grant_type=password")
                && r.body.contains("client_id=admin-cli")
                && r.body.contains("username=admin")
                && r.body
                    .contains(&format!("password={}", infra_products::http::encode(ADMIN_PASSWORD)));
            return if ok {
                (200, json!({"access_token": "tok-123", "expires_in": 60}).to_string())
            } else {
                (
                    401,
                    json!({"error": "invalid_grant", "error_description": "Invalid user credentials"}).to_string(),
                )
            };
        }
        if r.header("authorization") != Some("Bearer tok-123") {
            return (401, json!({"error": "HTTP 401 Unauthorized"}).to_string());
        }
        let parts: Vec<&str> = path
            .trim_start_matches("/admin/realms")
            .split('/')
            .filter(|s| !s.is_empty())
            .collect();
        match (r.method.as_str(), parts.as_slice()) {
            ("POST", []) => {
                let v = r.json();
                let name = v["realm"].as_str().unwrap().to_owned();
                if kc.realms.contains_key(&name) {
                    return (409, json!({"errorMessage": "Conflict detected."}).to_string());
                }
                kc.realms.insert(name, v);
                (201, String::new())
            }
            ("GET", [realm]) => match kc.realms.get(*realm) {
                Some(v) => (200, v.to_string()),
                None => (404, json!({"error": "Realm not found."}).to_string()),
            },
            ("PUT", [realm]) => {
                kc.realms.insert((*realm).to_owned(), r.json());
                (204, String::new())
            }
            ("GET", [realm, "clients"]) => {
                let want = query.strip_prefix("clientId=").unwrap_or_default().to_owned();
                let list: Vec<Value> = kc
                    .clients
                    .get(*realm)
                    .into_iter()
                    .flatten()
                    .filter(|c| want.is_empty() || c["clientId"] == want.as_str())
                    .map(|c| {
                        let mut c = c.clone();
                        c.as_object_mut().unwrap().remove("secret");
                        c
                    })
                    .collect();
                (200, Value::Array(list).to_string())
            }
            ("POST", [realm, "clients"]) => {
                kc.next_id += 1;
                let mut v = r.json();
                v["id"] = json!(format!("uuid-{}", kc.next_id));
                kc.clients.entry((*realm).to_owned()).or_default().push(v);
                (201, String::new())
            }
            ("GET", [realm, "clients", id, "client-secret"]) => {
                let c = kc.clients.get(*realm).and_then(|l| l.iter().find(|c| c["id"] == *id));
                match c {
                    Some(c) => (200, json!({"type": "secret", "value": c["secret"]}).to_string()),
                    None => (404, json!({"error": "Could not find client"}).to_string()),
                }
            }
            ("PUT", [realm, "clients", id]) => {
                let v = r.json();
                let list = kc.clients.entry((*realm).to_owned()).or_default();
                match list.iter_mut().find(|c| c["id"] == *id) {
                    Some(c) => {
                        let secret = c["secret"].clone();
                        *c = v;
                        if c.get("secret").is_none() {
                            c["secret"] = secret;
                        }
                        (204, String::new())
                    }
                    None => (404, json!({"error": "Could not find client"}).to_string()),
                }
            }
            _ => (404, json!({"error": "not found"}).to_string()),
        }
    })
    .await;
    (server, state)
}

fn http() -> Http {
    Http::new(Duration::from_secs(5))
}

#[test]
fn the_catalogs_realm_yml_declares_the_sso_clients_with_redirects_under_default_url() {
    let d = decl();
    assert_eq!(d.realm, "infra");
    let ids: Vec<&str> = d.clients.iter().map(|c| c.client_id.as_str()).collect();
    assert_eq!(ids, ["grafana", "oauth2-proxy", "n8n"]);
    for c in &d.clients {
        assert!(
            c.redirect_uris
                .iter()
                .all(|u| u.starts_with("https://") && u.contains(".example.org/")),
            "{c:?}"
        );
    }
    assert_eq!(d.clients[0].secret, "grafana_oauth_client_secret");
    let e = RealmDecl::parse("realm: ${NOPE}\nadmin: {username: a, password_secret: b}\n", &vars()).unwrap_err();
    assert!(e.to_string().contains("${NOPE}"), "{e}");
}

#[tokio::test]
async fn keycloak_is_brought_to_the_declared_realm_and_clients_and_a_second_run_writes_nothing() {
    let (kc, state) = fake_keycloak().await;
    let secrets = store();
    let d = decl();

    let r = ensure_keycloak(&http(), &kc.url, &d, &secrets).await.unwrap();
    assert!(r.realm_created);
    assert_eq!(r.created, ["grafana", "oauth2-proxy", "n8n"]);
    // Secrets the bucket lacked were generated and put there.
    assert_eq!(r.generated, ["oauth2_proxy_client_secret", "n8n_oauth_client_secret"]);
    {
        let st = state.lock().unwrap();
        assert_eq!(st.realms["infra"]["enabled"], true);
        let g = st.clients["infra"].iter().find(|c| c["clientId"] == "grafana").unwrap();
        assert_eq!(g["secret"], GRAFANA_SECRET, "Keycloak follows the bucket");
        assert_eq!(g["publicClient"], false);
        assert_eq!(
            g["redirectUris"],
            json!(["https://grafana.example.org/login/generic_oauth"])
        );
        let o = st.clients["infra"]
            .iter()
            .find(|c| c["clientId"] == "oauth2-proxy")
            .unwrap();
        let kept = secrets.0.lock().unwrap()["oauth2_proxy_client_secret"].clone();
        assert_eq!(o["secret"].as_str().unwrap().as_bytes(), kept.as_slice());
        assert_eq!(kept.len(), 64);
    }
    assert_eq!(kc.writes().len(), 1 + 1 + 3, "token, realm, three clients");

    kc.clear();
    let r = ensure_keycloak(&http(), &kc.url, &d, &secrets).await.unwrap();
    assert!(!r.changed(), "{r:?}");
    let writes: Vec<String> = kc.writes().iter().map(|w| format!("{} {}", w.method, w.path)).collect();
    assert_eq!(
        writes,
        ["POST /realms/master/protocol/openid-connect/token"],
        "only the login"
    );
}

#[tokio::test]
async fn a_client_whose_redirects_or_secret_drifted_is_put_back_and_nothing_else_is_touched() {
    let (kc, state) = fake_keycloak().await;
    let secrets = store();
    let d = decl();
    ensure_keycloak(&http(), &kc.url, &d, &secrets).await.unwrap();
    {
        let mut st = state.lock().unwrap();
        let g = st
            .clients
            .get_mut("infra")
            .unwrap()
            .iter_mut()
            .find(|c| c["clientId"] == "grafana")
            .unwrap();
        g["redirectUris"] = json!(["https://evil.example.com/*"]);
    }
    // The tool's secret was rotated in the bucket.
    secrets
        .0
        .lock()
        .unwrap()
        .insert("oauth2_proxy_client_secret".into(), b"rotated-XYZ".to_vec());
    kc.clear();
    let r = ensure_keycloak(&http(), &kc.url, &d, &secrets).await.unwrap();
    assert_eq!(r.updated, ["grafana", "oauth2-proxy"]);
    assert!(r.created.is_empty() && !r.realm_created && !r.realm_updated);
    let st = state.lock().unwrap();
    let g = st.clients["infra"].iter().find(|c| c["clientId"] == "grafana").unwrap();
    assert_eq!(
        g["redirectUris"],
        json!(["https://grafana.example.org/login/generic_oauth"])
    );
    let o = st.clients["infra"]
        .iter()
        .find(|c| c["clientId"] == "oauth2-proxy")
        .unwrap();
    assert_eq!(o["secret"], "rotated-XYZ");
}

/// Captures this thread's log lines.
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Logs {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Logs {
    type Writer = Logs;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

#[test]
fn a_wrong_admin_password_fails_with_keycloaks_reason_and_no_secret_in_the_error_or_the_logs() {
    let logs = Logs::default();
    let sub = tracing_subscriber::fmt()
        .with_writer(logs.clone())
        .with_max_level(tracing::Level::TRACE)
        .finish();
    let _guard = tracing::subscriber::set_default(sub);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (kc, _) = fake_keycloak().await;
        let secrets = store();
        secrets
            .0
            .lock()
            .unwrap()
            .insert("keycloak_admin_password".into(), b"wrong-pa55-ABC".to_vec());
        let e = ensure_keycloak(&http(), &kc.url, &decl(), &secrets).await.unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("HTTP 401") && msg.contains("invalid_grant") && msg.contains("/token"),
            "{msg}"
        );
        let mut last = BTreeMap::new();
        note(&mut last, "keycloak", Err(msg.clone()));
        note(&mut last, "keycloak", Ok("keycloak realm infra as declared".into()));
        let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
        assert!(text.contains("bootstrap failed"), "{text}");
        for s in ["wrong-pa55-ABC", ADMIN_PASSWORD, GRAFANA_SECRET, "tok-123"] {
            assert!(!msg.contains(s) && !text.contains(s), "{s} leaked: {msg}\n{text}");
        }
        let missing = MemorySecrets::default();
        let e = ensure_keycloak(&http(), &kc.url, &decl(), &missing).await.unwrap_err();
        assert_eq!(
            e.to_string(),
            "secret \"keycloak_admin_password\" is not in the secrets bucket"
        );
    });
}

#[derive(Default)]
struct V {
    initialized: bool,
    sealed: bool,
    keys: Vec<String>,
    progress: usize,
    inits: usize,
}

/// A fake Vault: `/v1/sys/init` (GET, PUT), `/v1/sys/seal-status`,
/// `/v1/sys/unseal` with a threshold of 3 keys.
async fn fake_vault() -> (fake::Server, Arc<Mutex<V>>) {
    let state: Arc<Mutex<V>> = Arc::default();
    let st = state.clone();
    let server = fake::start(move |r| {
        let mut v = st.lock().unwrap();
        match (r.method.as_str(), r.path.as_str()) {
            ("GET", "/v1/sys/init") => (200, json!({"initialized": v.initialized}).to_string()),
            ("PUT", "/v1/sys/init") => {
                if v.initialized {
                    return (400, json!({"errors": ["Vault is already initialized"]}).to_string());
                }
                let b = r.json();
                assert_eq!((b["secret_shares"].as_u64(), b["secret_threshold"].as_u64()), (Some(5), Some(3)));
                v.initialized = true;
                v.sealed = true;
                v.inits += 1;
                v.keys = (0..5).map(|i| format!("unseal-key-{i}-SECRET")).collect();
                let body = json!({"keys": v.keys, "keys_base64": v.keys, "root_token": "hvs.ROOT-SECRET"});
                (200, body.to_string())
            }
            ("GET", "/v1/sys/seal-status") => (
                200,
                json!({"type": "shamir", "initialized": v.initialized, "sealed": v.sealed, "t": 3, "n": 5, "progress": v.progress})
                    .to_string(),
            ),
            ("PUT", "/v1/sys/unseal") => {
                let k = r.json()["key"].as_str().unwrap_or_default().to_owned();
                if !v.keys.contains(&k) {
                    return (400, json!({"errors": ["invalid key"]}).to_string());
                }
                v.progress += 1;
                if v.progress >= 3 {
                    v.sealed = false;
                    v.progress = 0;
                }
                (200, json!({"sealed": v.sealed, "t": 3, "n": 5, "progress": v.progress}).to_string())
            }
            _ => (404, json!({"errors": []}).to_string()),
        }
    })
    .await;
    (server, state)
}

#[tokio::test]
async fn vault_is_initialised_once_its_keys_kept_in_the_bucket_and_unsealed_again_after_a_restart() {
    let (vault, state) = fake_vault().await;
    let secrets = MemorySecrets::default();

    let r = ensure_vault(&http(), &vault.url, &secrets).await.unwrap();
    assert_eq!(
        r,
        VaultReport {
            initialised: true,
            unsealed: true
        }
    );
    let kept: VaultKeys = serde_json::from_slice(&secrets.0.lock().unwrap()[VAULT_INIT_SECRET]).unwrap();
    assert_eq!(kept.keys.len(), 5);
    assert_eq!(kept.root_token, "hvs.ROOT-SECRET");
    assert!(!format!("{kept:?}").contains("SECRET"), "Debug redacts");
    assert!(!state.lock().unwrap().sealed);

    // Nothing to do: no write.
    vault.clear();
    let r = ensure_vault(&http(), &vault.url, &secrets).await.unwrap();
    assert_eq!(r, VaultReport::default());
    assert!(vault.writes().is_empty());

    // Vault restarted: sealed again. Unsealed with the kept keys, never
    // initialised a second time.
    state.lock().unwrap().sealed = true;
    vault.clear();
    let r = ensure_vault(&http(), &vault.url, &secrets).await.unwrap();
    assert_eq!(
        r,
        VaultReport {
            initialised: false,
            unsealed: true
        }
    );
    assert_eq!(vault.writes().len(), 3, "three unseal keys, the threshold");
    assert_eq!(state.lock().unwrap().inits, 1);
}

#[tokio::test]
async fn an_initialised_vault_without_kept_keys_is_reported_and_not_initialised_again() {
    let (vault, state) = fake_vault().await;
    {
        let mut v = state.lock().unwrap();
        v.initialized = true;
        v.sealed = true;
    }
    let e = ensure_vault(&http(), &vault.url, &MemorySecrets::default())
        .await
        .unwrap_err();
    assert!(e.to_string().contains("unseal it by hand"), "{e}");
    assert!(vault.writes().is_empty());
}

#[tokio::test]
async fn a_vault_error_names_the_call_and_no_key() {
    let (vault, state) = fake_vault().await;
    let secrets = MemorySecrets::default();
    ensure_vault(&http(), &vault.url, &secrets).await.unwrap();
    // Keys in the bucket that Vault does not know (a restored bucket).
    state.lock().unwrap().sealed = true;
    state.lock().unwrap().keys = vec!["other".into()];
    let e = ensure_vault(&http(), &vault.url, &secrets).await.unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("PUT") && msg.contains("/v1/sys/unseal") && msg.contains("invalid key"),
        "{msg}"
    );
    assert!(!msg.contains("SECRET"), "{msg}");
}
