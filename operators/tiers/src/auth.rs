//! The auth tier: Keycloak and Vault brought to their declared state.
//!
//! # Keycloak
//!
//! Once a Keycloak container of this operator is healthy (it carries the
//! label [`KEYCLOAK_REALM_LABEL`]), [`ensure_keycloak`] makes its realm and
//! OIDC clients match `compose/02-auth/keycloak/realm.yml` (see that file
//! for its format), through the admin REST API with a token of the master
//! realm's admin. The file reaches the operator as the Docker secret
//! `keycloak_realm`, i.e. through the bus secrets bucket, so it works on any
//! host.
//!
//! Client secrets live where the tools read them: the bus secrets bucket,
//! under the name of the Docker secret each tool mounts. The bucket is the
//! source of truth and Keycloak follows it (a client's secret is set to the
//! bucket's value); a secret the bucket lacks is generated and put there.
//! So the coordinator (which puts declared secret files in the bucket on
//! each deploy) and this extension never fight, and no secret is written
//! to disk by this extension.
//!
//! # Vault
//!
//! Once a Vault container (label [`VAULT_LABEL`]) is healthy (its health
//! check counts a sealed or uninitialised Vault as up), [`ensure_vault`]
//! initialises it once (`PUT /v1/sys/init`), keeps the unseal keys and root
//! token in the bus secrets bucket under [`VAULT_INIT_SECRET`], and unseals
//! it whenever it is sealed (after every restart).
//!
//! # Guarantees
//!
//! Idempotent: a pass with nothing to change sends no write. Secrets
//! (passwords, client secrets, tokens, unseal keys) never appear in logs,
//! events or error messages: errors name the call and Keycloak's or Vault's
//! short error field only.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::FutureExt;
use futures::future::BoxFuture;
use hyper::Method;
use operator_core::{Extension, TierContext};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use infra_products::http::{Body, Http, HttpError, encode};

/// This tier's extensions.
pub const EXTENSIONS: &[Extension] = &[bootstrap_extension];

/// Label on the Keycloak service: the realm to manage (also `${KEYCLOAK_REALM}`
/// in realm.yml).
pub const KEYCLOAK_REALM_LABEL: &str = "io.infra.keycloak.realm";
/// Label on the Keycloak service: `${DEFAULT_URL}` in realm.yml.
pub const KEYCLOAK_URL_LABEL: &str = "io.infra.keycloak.default-url";
/// The Docker secret (bus key) holding realm.yml.
pub const KEYCLOAK_REALM_SECRET: &str = "keycloak_realm";
/// Keycloak's HTTP port in its container.
pub const KEYCLOAK_PORT: u16 = 8080;
/// Label on the Vault service.
pub const VAULT_LABEL: &str = "io.infra.vault";
/// Vault's port in its container.
pub const VAULT_PORT: u16 = 8200;
/// Bus secrets key of Vault's unseal keys and root token (JSON of
/// [`VaultKeys`]). Not a Docker secret of any service: only this operator
/// reads it.
pub const VAULT_INIT_SECRET: &str = "vault_init";
/// How often the declared state is checked again.
pub const RESYNC: Duration = Duration::from_secs(30);

/// The secrets bucket, behind a seam so that tests need no NATS.
pub trait SecretStore: Send + Sync {
    /// A secret, `None` when absent. The error names the key, not a value.
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Vec<u8>>, String>>;
    /// Puts a secret.
    fn put<'a>(&'a self, key: &'a str, value: Vec<u8>) -> BoxFuture<'a, Result<(), String>>;
}

/// One host's secrets on the bus: what its auth operator may read and
/// write (`<host>.<name>` keys; see `infra_bus::auth`).
pub struct HostSecrets<'a> {
    /// The bus.
    pub bus: &'a infra_bus::Bus,
    /// This host.
    pub host: &'a str,
}

impl SecretStore for HostSecrets<'_> {
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Vec<u8>>, String>> {
        async move {
            self.bus
                .get_secret(self.host, key)
                .await
                .map(|o| o.map(|b| b.to_vec()))
                .map_err(|e| e.to_string())
        }
        .boxed()
    }

    fn put<'a>(&'a self, key: &'a str, value: Vec<u8>) -> BoxFuture<'a, Result<(), String>> {
        async move {
            self.bus
                .put_host_secret(self.host, key, value.into())
                .await
                .map_err(|e| e.to_string())
        }
        .boxed()
    }
}

/// An in-memory store (tests).
#[derive(Default)]
pub struct MemorySecrets(pub std::sync::Mutex<BTreeMap<String, Vec<u8>>>);

impl SecretStore for MemorySecrets {
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Vec<u8>>, String>> {
        let v = self.0.lock().map(|m| m.get(key).cloned()).unwrap_or_default();
        async move { Ok(v) }.boxed()
    }

    fn put<'a>(&'a self, key: &'a str, value: Vec<u8>) -> BoxFuture<'a, Result<(), String>> {
        if let Ok(mut m) = self.0.lock() {
            m.insert(key.to_owned(), value);
        }
        async move { Ok(()) }.boxed()
    }
}

/// What bringing Keycloak or Vault to its declared state failed with.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// realm.yml does not parse.
    #[error("realm.yml: {0}")]
    Declaration(String),
    /// A secret the declaration names is not in the bucket.
    #[error("secret {0:?} is not in the secrets bucket")]
    MissingSecret(String),
    /// The secrets bucket could not be read or written.
    #[error("secrets bucket: {0}")]
    Secrets(String),
    /// Keycloak or Vault refused a call or did not answer.
    #[error(transparent)]
    Http(#[from] HttpError),
    /// Vault was initialised but its keys could not be kept: they are
    /// lost unless the bucket comes back (this is logged as an error).
    #[error("Vault was initialised but its unseal keys could not be stored: {0}")]
    KeysNotStored(String),
    /// Vault is initialised, but the bucket has no keys for it.
    #[error("Vault is initialised but the secrets bucket has no {VAULT_INIT_SECRET:?}: unseal it by hand")]
    NoKeys,
}

/// realm.yml.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RealmDecl {
    /// Realm name.
    pub realm: String,
    /// Shown on Keycloak's login page.
    #[serde(default)]
    pub display_name: String,
    /// Who the operator logs in as.
    pub admin: AdminDecl,
    /// OIDC clients.
    #[serde(default)]
    pub clients: Vec<ClientDecl>,
}

/// The master realm admin.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AdminDecl {
    /// User name.
    pub username: String,
    /// Bus key of the password.
    pub password_secret: String,
}

/// One confidential OIDC client.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ClientDecl {
    /// `clientId`.
    pub client_id: String,
    /// Display name.
    #[serde(default)]
    pub name: String,
    /// Bus key of the client secret (the tool's Docker secret).
    pub secret: String,
    /// Allowed redirect URIs.
    #[serde(default)]
    pub redirect_uris: Vec<String>,
    /// Allowed CORS origins.
    #[serde(default)]
    pub web_origins: Vec<String>,
}

impl RealmDecl {
    /// Parses realm.yml with `${NAME}` filled in from `vars`; an unknown
    /// name is an error (as the coordinator treats unset variables).
    pub fn parse(text: &str, vars: &BTreeMap<String, String>) -> Result<Self, AuthError> {
        let mut out = String::with_capacity(text.len());
        let mut rest = text;
        while let Some(i) = rest.find("${") {
            out.push_str(&rest[..i]);
            let after = &rest[i + 2..];
            let end = after
                .find('}')
                .ok_or_else(|| AuthError::Declaration("unclosed ${".into()))?;
            let name = &after[..end];
            let v = vars
                .get(name)
                .ok_or_else(|| AuthError::Declaration(format!("unknown variable ${{{name}}}")))?;
            out.push_str(v);
            rest = &after[end + 1..];
        }
        out.push_str(rest);
        let d: Self = serde_norway::from_str(&out).map_err(|e| AuthError::Declaration(e.to_string()))?;
        if d.realm.is_empty() {
            return Err(AuthError::Declaration("realm is empty".into()));
        }
        Ok(d)
    }
}

/// What a Keycloak pass did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeycloakReport {
    /// The realm was created.
    pub realm_created: bool,
    /// The realm was updated.
    pub realm_updated: bool,
    /// Clients created.
    pub created: Vec<String>,
    /// Clients updated (redirects, name, or secret).
    pub updated: Vec<String>,
    /// Client secrets generated and put in the bucket.
    pub generated: Vec<String>,
}

impl KeycloakReport {
    /// Whether anything was written.
    pub fn changed(&self) -> bool {
        self.realm_created
            || self.realm_updated
            || !self.created.is_empty()
            || !self.updated.is_empty()
            || !self.generated.is_empty()
    }
}

async fn secret_text(store: &dyn SecretStore, key: &str) -> Result<Option<String>, AuthError> {
    let v = store.get(key).await.map_err(AuthError::Secrets)?;
    Ok(v.map(|b| String::from_utf8_lossy(&b).trim_end_matches(['\r', '\n']).to_owned()))
}

/// 32 random bytes as hex, from the kernel.
fn random_secret() -> Result<String, AuthError> {
    use std::io::Read;
    let mut b = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .map_err(|e| AuthError::Secrets(format!("cannot generate a secret: {e}")))?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

#[derive(Deserialize)]
struct Token {
    access_token: String,
}

#[derive(Deserialize)]
struct SecretValue {
    #[serde(default)]
    value: String,
}

fn same_set(a: &Value, b: &[String]) -> bool {
    let mut x: Vec<String> = a
        .as_array()
        .map(|v| v.iter().filter_map(|s| s.as_str().map(str::to_owned)).collect())
        .unwrap_or_default();
    let mut y = b.to_vec();
    x.sort();
    y.sort();
    x == y
}

/// Brings the Keycloak at `base` (`http://ip:8080`) to `decl`, reading and
/// writing secrets in `store`. See the module docs for what is guaranteed.
pub async fn ensure_keycloak(
    http: &Http,
    base: &str,
    decl: &RealmDecl,
    store: &dyn SecretStore,
) -> Result<KeycloakReport, AuthError> {
    let mut report = KeycloakReport::default();
    let password = secret_text(store, &decl.admin.password_secret)
        .await?
        .ok_or_else(|| AuthError::MissingSecret(decl.admin.password_secret.clone()))?;
    let token: Token = http
        .json(
            Method::POST,
            &format!("{base}/realms/master/protocol/openid-connect/token"),
            &[],
            Some(Body::Form(vec![
                ("grant_type".into(), "password".into()),
                ("client_id".into(), "admin-cli".into()),
                ("username".into(), decl.admin.username.clone()),
                ("password".into(), password),
            ])),
        )
        .await?;
    let bearer = format!("Bearer {}", token.access_token);
    let auth = [("authorization", bearer.as_str())];
    let realm = encode(&decl.realm);

    // The realm.
    let url = format!("{base}/admin/realms/{realm}");
    match http.json::<Value>(Method::GET, &url, &auth, None).await {
        Ok(mut have) => {
            let want_name = Value::String(decl.display_name.clone());
            if have["enabled"] != Value::Bool(true)
                || (!decl.display_name.is_empty() && have["displayName"] != want_name)
            {
                have["enabled"] = Value::Bool(true);
                if !decl.display_name.is_empty() {
                    have["displayName"] = want_name;
                }
                http.call(Method::PUT, &url, &auth, Some(Body::Json(have))).await?;
                report.realm_updated = true;
            }
        }
        Err(e) if e.status() == Some(404) => {
            let body = json!({"realm": decl.realm, "enabled": true, "displayName": decl.display_name});
            http.call(
                Method::POST,
                &format!("{base}/admin/realms"),
                &auth,
                Some(Body::Json(body)),
            )
            .await?;
            report.realm_created = true;
        }
        Err(e) => return Err(e.into()),
    }

    // The clients.
    let clients_url = format!("{base}/admin/realms/{realm}/clients");
    for c in &decl.clients {
        let secret = match secret_text(store, &c.secret).await? {
            Some(s) if !s.is_empty() => s,
            _ => {
                let s = random_secret()?;
                store
                    .put(&c.secret, s.clone().into_bytes())
                    .await
                    .map_err(AuthError::Secrets)?;
                report.generated.push(c.secret.clone());
                s
            }
        };
        let found: Vec<Value> = http
            .json(
                Method::GET,
                &format!("{clients_url}?clientId={}", encode(&c.client_id)),
                &auth,
                None,
            )
            .await?;
        let Some(mut have) = found.into_iter().find(|x| x["clientId"] == c.client_id.as_str()) else {
            let body = json!({
                "clientId": c.client_id,
                "name": c.name,
                "enabled": true,
                "protocol": "openid-connect",
                "publicClient": false,
                "clientAuthenticatorType": "client-secret",
                "secret": secret,
                "standardFlowEnabled": true,
                "redirectUris": c.redirect_uris,
                "webOrigins": c.web_origins,
            });
            http.call(Method::POST, &clients_url, &auth, Some(Body::Json(body)))
                .await?;
            report.created.push(c.client_id.clone());
            continue;
        };
        let id = have["id"].as_str().unwrap_or_default().to_owned();
        let client_url = format!("{clients_url}/{}", encode(&id));
        let current: SecretValue = http
            .json(Method::GET, &format!("{client_url}/client-secret"), &auth, None)
            .await?;
        let drifted = have["enabled"] != Value::Bool(true)
            || have["publicClient"] == Value::Bool(true)
            || (!c.name.is_empty() && have["name"] != c.name.as_str())
            || !same_set(&have["redirectUris"], &c.redirect_uris)
            || !same_set(&have["webOrigins"], &c.web_origins)
            || current.value != secret;
        if drifted {
            have["enabled"] = Value::Bool(true);
            have["publicClient"] = Value::Bool(false);
            if !c.name.is_empty() {
                have["name"] = Value::String(c.name.clone());
            }
            have["redirectUris"] = json!(c.redirect_uris);
            have["webOrigins"] = json!(c.web_origins);
            have["secret"] = Value::String(secret);
            http.call(Method::PUT, &client_url, &auth, Some(Body::Json(have)))
                .await?;
            report.updated.push(c.client_id.clone());
        }
    }
    Ok(report)
}

/// Vault's unseal keys and root token, as kept in the bucket.
#[derive(Clone, Deserialize, Serialize)]
pub struct VaultKeys {
    /// Unseal keys (hex).
    pub keys: Vec<String>,
    /// The same, base64.
    #[serde(default)]
    pub keys_base64: Vec<String>,
    /// The initial root token.
    pub root_token: String,
}

impl std::fmt::Debug for VaultKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VaultKeys")
            .field("keys", &self.keys.len())
            .field("root_token", &"<redacted>")
            .finish()
    }
}

/// What a Vault pass found and did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VaultReport {
    /// Initialised now.
    pub initialised: bool,
    /// Unsealed now.
    pub unsealed: bool,
}

/// Unseal key shares and threshold of a new Vault.
pub const VAULT_SHARES: u32 = 5;
/// See [`VAULT_SHARES`].
pub const VAULT_THRESHOLD: u32 = 3;

#[derive(Deserialize)]
struct InitStatus {
    initialized: bool,
}

#[derive(Deserialize)]
struct SealStatus {
    sealed: bool,
}

/// Initialises the Vault at `base` (`http://ip:8200`) if it is not, keeping
/// its keys in `store` under [`VAULT_INIT_SECRET`], and unseals it if it is
/// sealed. The keys are stored before anything else is done with them.
pub async fn ensure_vault(http: &Http, base: &str, store: &dyn SecretStore) -> Result<VaultReport, AuthError> {
    let mut report = VaultReport::default();
    let init: InitStatus = http
        .json(Method::GET, &format!("{base}/v1/sys/init"), &[], None)
        .await?;
    let keys: VaultKeys = if init.initialized {
        let raw = store
            .get(VAULT_INIT_SECRET)
            .await
            .map_err(AuthError::Secrets)?
            .ok_or(AuthError::NoKeys)?;
        serde_json::from_slice(&raw)
            .map_err(|_| AuthError::Secrets(format!("{VAULT_INIT_SECRET:?} is not JSON of unseal keys")))?
    } else {
        let body = json!({"secret_shares": VAULT_SHARES, "secret_threshold": VAULT_THRESHOLD});
        let keys: VaultKeys = http
            .json(Method::PUT, &format!("{base}/v1/sys/init"), &[], Some(Body::Json(body)))
            .await?;
        let bytes = serde_json::to_vec(&keys).unwrap_or_default();
        // Three tries: losing these keys loses the Vault's data.
        let mut last = String::new();
        let mut stored = false;
        for attempt in 0..3u64 {
            match store.put(VAULT_INIT_SECRET, bytes.clone()).await {
                Ok(()) => {
                    stored = true;
                    break;
                }
                Err(e) => last = e,
            }
            tokio::time::sleep(Duration::from_millis(500 * (attempt + 1))).await;
        }
        if !stored {
            return Err(AuthError::KeysNotStored(last));
        }
        report.initialised = true;
        keys
    };
    let seal: SealStatus = http
        .json(Method::GET, &format!("{base}/v1/sys/seal-status"), &[], None)
        .await?;
    if seal.sealed {
        for key in &keys.keys {
            let s: SealStatus = http
                .json(
                    Method::PUT,
                    &format!("{base}/v1/sys/unseal"),
                    &[],
                    Some(Body::Json(json!({ "key": key }))),
                )
                .await?;
            if !s.sealed {
                report.unsealed = true;
                break;
            }
        }
    }
    Ok(report)
}

/// The healthy containers of this operator that carry `label`; an engine
/// error is an empty answer (the next pass tries again).
async fn endpoints(ctx: &TierContext, label: &str) -> Vec<operator_core::docker::Endpoint> {
    match ctx.docker.healthy_endpoints(&ctx.host, ctx.tier, label).await {
        Ok(e) => e,
        Err(e) => {
            tracing::debug!(error = %e, label, "cannot list the containers to bootstrap");
            Vec::new()
        }
    }
}

fn bootstrap_extension(ctx: TierContext) -> BoxFuture<'static, ()> {
    async move {
        let http = Http::new(Duration::from_secs(15));
        let mut tick = tokio::time::interval(RESYNC);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Last outcome per service, so a steady state is logged once.
        let mut last: BTreeMap<String, String> = BTreeMap::new();
        loop {
            tokio::select! {
                _ = ctx.shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let store = HostSecrets {
                bus: &ctx.bus,
                host: &ctx.host,
            };
            let pass = async {
                for ep in endpoints(&ctx, KEYCLOAK_REALM_LABEL).await {
                    let outcome = keycloak_pass(&http, &store, &ep).await;
                    note(&mut last, &ep.service, outcome);
                }
                for ep in endpoints(&ctx, VAULT_LABEL).await {
                    let base = format!("http://{}:{VAULT_PORT}", ep.ip);
                    let outcome = match ensure_vault(&http, &base, &store).await {
                        Ok(r) if r.initialised => Ok(format!(
                            "vault initialised (keys in the secrets bucket under {VAULT_INIT_SECRET})"
                        )),
                        Ok(r) if r.unsealed => Ok("vault unsealed".into()),
                        Ok(_) => Ok("vault unsealed, nothing to do".into()),
                        Err(e) => Err(e.to_string()),
                    };
                    note(&mut last, &ep.service, outcome);
                }
            };
            tokio::select! {
                _ = ctx.shutdown.cancelled() => return,
                () = pass => {}
            }
        }
    }
    .boxed()
}

async fn keycloak_pass(
    http: &Http,
    store: &HostSecrets<'_>,
    ep: &operator_core::docker::Endpoint,
) -> Result<String, String> {
    let text = secret_text(store, KEYCLOAK_REALM_SECRET)
        .await
        .map_err(|e| e.to_string())?
        .ok_or_else(|| AuthError::MissingSecret(KEYCLOAK_REALM_SECRET.into()).to_string())?;
    let vars = BTreeMap::from([
        (
            "KEYCLOAK_REALM".to_string(),
            ep.labels
                .get(KEYCLOAK_REALM_LABEL)
                .cloned()
                .unwrap_or_else(|| "infra".into()),
        ),
        (
            "DEFAULT_URL".to_string(),
            ep.labels
                .get(KEYCLOAK_URL_LABEL)
                .cloned()
                .unwrap_or_else(|| "localhost".into()),
        ),
    ]);
    let decl = RealmDecl::parse(&text, &vars).map_err(|e| e.to_string())?;
    let base = format!("http://{}:{KEYCLOAK_PORT}", ep.ip);
    let r = ensure_keycloak(http, &base, &decl, store)
        .await
        .map_err(|e| e.to_string())?;
    Ok(if r.changed() {
        format!(
            "keycloak realm {}: realm {}, clients created {:?}, updated {:?}, secrets generated {:?}",
            decl.realm,
            if r.realm_created {
                "created"
            } else if r.realm_updated {
                "updated"
            } else {
                "unchanged"
            },
            r.created,
            r.updated,
            r.generated
        )
    } else {
        format!("keycloak realm {} as declared", decl.realm)
    })
}

/// Logs an outcome when it differs from the last one for `service`.
fn note(last: &mut BTreeMap<String, String>, service: &str, outcome: Result<String, String>) {
    let text = match &outcome {
        Ok(s) | Err(s) => s.clone(),
    };
    if last.get(service) == Some(&text) {
        return;
    }
    match outcome {
        Ok(s) => tracing::info!(service, "{s}"),
        Err(e) => tracing::warn!(service, error = %e, "bootstrap failed; retrying"),
    }
    last.insert(service.to_owned(), text);
}

#[cfg(test)]
mod tests;
