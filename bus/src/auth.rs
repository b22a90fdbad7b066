//! NATS credentials that reach one host only, enforced by the NATS servers
//! themselves (decentralized JWT authentication: an operator key signs the
//! accounts, the platform's account key signs one user per host).
//!
//! Why JWTs and not auth callout: the servers check a JWT offline, so a
//! host reconnects while no coordinator runs; a user is revoked by a new
//! account JWT (its `revocations`) pushed to the servers' resolver, which
//! closes the user's connections; no server is edited or restarted.
//!
//! What a host's user may do ([`host_permissions`]), by subject:
//!
//! - publish its heartbeats and events, write its observed state, its
//!   heartbeat entries, its locks and its own secrets (`…<host>.>` keys
//!   only; the auth operator keeps Vault's unseal keys there);
//! - read its own desired state and its own secrets, and the views every
//!   host shares because none of them holds a secret: the directory (the
//!   public part of every desired service, for cross-host reach),
//!   observed state and heartbeats;
//! - the JetStream API calls a client makes to bind to a stream
//!   (`$JS.API.INFO`, `STREAM.INFO`), replies on its own inbox prefix
//!   (`_INBOX_<host>.`), so no other host can read its replies, and one
//!   answer to each request it receives (image checks);
//! - deleting consumers of the buckets it reads (an ordered consumer
//!   deletes its lost predecessor before it makes it again; names are
//!   random and a host cannot list them, so in practice its own);
//! - nothing else: no other host's desired state or secrets, no write to
//!   another host's keys, no stream creation, deletion, purge or update,
//!   no consumer on keys it may not read.
//!
//! Reading keys by a consumer needs care: the JetStream API's plain
//! `CONSUMER.CREATE.<stream>` carries its filter in the request body, out
//! of a permission's reach, so it is refused; the bus creates named
//! consumers with the filter in the subject
//! (`CONSUMER.CREATE.<stream>.<name>.<filter>`, which the server checks
//! against the body), and the permissions name the keys.

use std::time::{SystemTime, UNIX_EPOCH};

use data_encoding::{BASE32_NOPAD, BASE64URL_NOPAD};
use nkeys::KeyPair;
use serde_json::{Value, json};
use sha2::{Digest, Sha512_256};

use crate::subject::{self, Token};

/// Inbox prefix of a host's connections: replies to its requests come
/// there, and only its user may subscribe to it.
pub fn inbox_prefix(host: &Token) -> String {
    format!("_INBOX_{host}")
}

/// Subjects a user may publish and subscribe to.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Permissions {
    /// Subjects it may publish to.
    pub publish: Vec<String>,
    /// Subjects it may subscribe to.
    pub subscribe: Vec<String>,
    /// Whether it may answer the requests it receives (one reply each,
    /// within a minute), whatever their reply subject.
    pub respond: bool,
}

/// What the operators of `host` may do on the bus (see the module docs).
pub fn host_permissions(host: &Token) -> Permissions {
    use subject::{DESIRED_BUCKET, DIRECTORY_BUCKET, HOSTS_BUCKET, LOCKS_BUCKET, OBSERVED_BUCKET, SECRETS_BUCKET};
    let kv = |bucket: &str, keys: &str| format!("$KV.{bucket}.{keys}");
    let direct = |bucket: &str, keys: &str| format!("$JS.API.DIRECT.GET.KV_{bucket}.$KV.{bucket}.{keys}");
    let read = |bucket: &str, keys: &str| format!("$JS.API.CONSUMER.CREATE.KV_{bucket}.*.$KV.{bucket}.{keys}");
    let own = format!("{host}.>");
    let mut publish = vec![
        format!("{}.heartbeat.{host}.>", subject::ROOT),
        format!("{}.events.{host}.>", subject::ROOT),
        // Writes: its own keys.
        kv(OBSERVED_BUCKET, &own),
        kv(HOSTS_BUCKET, &own),
        kv(LOCKS_BUCKET, &own),
        kv(SECRETS_BUCKET, &own),
        // A cluster's formation lock, shared by the hosts of its members.
        kv(LOCKS_BUCKET, "cluster.>"),
        // Reads: its own desired state and secrets; the shared, secret-free
        // views (directory, observed state, heartbeats) whole.
        direct(DESIRED_BUCKET, &own),
        direct(SECRETS_BUCKET, &own),
        direct(OBSERVED_BUCKET, &own),
        direct(LOCKS_BUCKET, &own),
        direct(LOCKS_BUCKET, "cluster.>"),
        direct(HOSTS_BUCKET, ">"),
        read(DESIRED_BUCKET, &own),
        read(SECRETS_BUCKET, &own),
        read(OBSERVED_BUCKET, ">"),
        read(DIRECTORY_BUCKET, ">"),
        read(HOSTS_BUCKET, ">"),
        "$JS.API.INFO".to_owned(),
        "$JS.API.STREAM.INFO.*".to_owned(),
    ];
    // Flow control answers of the consumers above, and their deletion: an
    // ordered consumer whose server went away deletes it before it makes
    // it again, and waits out a refused request first. Names are random
    // and a host may not list consumers, so it deletes its own only.
    for b in [
        DESIRED_BUCKET,
        SECRETS_BUCKET,
        OBSERVED_BUCKET,
        DIRECTORY_BUCKET,
        HOSTS_BUCKET,
    ] {
        publish.push(format!("$JS.FC.KV_{b}.>"));
        publish.push(format!("$JS.API.CONSUMER.DELETE.KV_{b}.*"));
    }
    publish.sort();
    Permissions {
        publish,
        subscribe: vec![
            format!("{}.>", inbox_prefix(host)),
            format!("{}.rpc.{host}.>", subject::ROOT),
        ],
        respond: true,
    }
}

/// What a join credential may do: ask for `host`'s own credential on
/// `infra.join.<host>` and read the answer on its own inbox prefix;
/// nothing else. It expires with its token.
pub fn join_permissions(host: &Token) -> Permissions {
    Permissions {
        publish: vec![subject::join(host)],
        subscribe: vec![format!("{}.>", join_inbox_prefix(host))],
        respond: false,
    }
}

/// Whether `key` is a user's public nkey.
pub fn is_user_key(key: &str) -> bool {
    key.starts_with('U') && KeyPair::from_public_key(key).is_ok()
}

/// Inbox prefix of a joining host's connection.
pub fn join_inbox_prefix(host: &Token) -> String {
    format!("_INBOX_join_{host}")
}

/// The signing keys of one platform: the NATS operator (signs accounts),
/// the system account (the servers' own) and the platform's account (signs
/// one user per host and the coordinator's).
pub struct Authority {
    operator: KeyPair,
    system: KeyPair,
    account: KeyPair,
}

impl std::fmt::Debug for Authority {
    // Seeds are never printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authority")
            .field("operator", &self.operator.public_key())
            .field("system", &self.system.public_key())
            .field("account", &self.account.public_key())
            .finish()
    }
}

/// A user's credential: its JWT and its nkey seed, in the `.creds` form
/// every NATS client reads.
pub struct Creds {
    /// The user's public key (what a revocation names).
    pub user: String,
    /// The `.creds` text. A secret: never log it.
    pub text: String,
}

impl std::fmt::Debug for Creds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Creds")
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

impl Authority {
    /// New keys.
    pub fn generate() -> Self {
        Self {
            operator: KeyPair::new_operator(),
            system: KeyPair::new_account(),
            account: KeyPair::new_account(),
        }
    }

    /// The platform account's public key.
    pub fn account(&self) -> String {
        self.account.public_key()
    }

    /// The system account's public key.
    pub fn system_account(&self) -> String {
        self.system.public_key()
    }

    /// The operator JWT the servers trust.
    pub fn operator_jwt(&self) -> String {
        let nats = json!({"type": "operator", "version": 2, "system_account": self.system.public_key()});
        sign(&self.operator, &self.operator.public_key(), "infra", nats)
    }

    /// The system account's JWT.
    pub fn system_jwt(&self) -> String {
        let nats = json!({"type": "account", "version": 2, "limits": unlimited(false)});
        sign(&self.operator, &self.system.public_key(), "SYS", nats)
    }

    /// The platform account's JWT, JetStream enabled, revoking `revoked`
    /// (user public keys: their credentials issued before now stop
    /// working).
    pub fn account_jwt(&self, revoked: &[String]) -> String {
        let now = unix_now();
        let revocations: serde_json::Map<String, Value> = revoked.iter().map(|u| (u.clone(), json!(now))).collect();
        let mut nats = json!({"type": "account", "version": 2, "limits": unlimited(true)});
        if !revocations.is_empty() {
            nats["revocations"] = Value::Object(revocations);
        }
        sign(&self.operator, &self.account.public_key(), "infra", nats)
    }

    /// The servers' configuration for these keys (operator mode, the full
    /// resolver keeping account JWTs in `resolver_dir`, both accounts
    /// preloaded). Goes with the rest of a server's configuration.
    pub fn server_config(&self, resolver_dir: &str) -> String {
        format!(
            "operator: {op}\nsystem_account: {sys}\nresolver: {{ type: full, dir: {dir:?}, allow_delete: false }}\n\
             resolver_preload: {{\n  {sys}: {sysjwt}\n  {acc}: {accjwt}\n}}\n",
            op = self.operator_jwt(),
            sys = self.system.public_key(),
            dir = resolver_dir,
            sysjwt = self.system_jwt(),
            acc = self.account.public_key(),
            accjwt = self.account_jwt(&[]),
        )
    }

    /// A credential for `name` in the platform account with `perms`
    /// (`None`: everything, for the coordinator).
    pub fn user(&self, name: &str, perms: Option<&Permissions>) -> Creds {
        self.user_until(name, perms, None)
    }

    /// As [`Authority::user`], expiring at `expires` (Unix seconds): the
    /// servers refuse it afterwards.
    pub fn user_until(&self, name: &str, perms: Option<&Permissions>, expires: Option<u64>) -> Creds {
        let user = KeyPair::new_user();
        let jwt = self.user_jwt(name, &user.public_key(), perms, expires);
        let seed = user.seed().expect("a generated key has a seed");
        Creds {
            user: user.public_key(),
            text: creds_text(&jwt, &seed),
        }
    }

    /// A user JWT for the public key `user` (whose seed the caller never
    /// sees: a joining host keeps its own), named `name`, with `perms`
    /// (`None`: everything), expiring at `expires` (Unix seconds).
    pub fn user_jwt(&self, name: &str, user: &str, perms: Option<&Permissions>, expires: Option<u64>) -> String {
        let mut nats = json!({"type": "user", "version": 2, "subs": -1, "data": -1, "payload": -1});
        if let Some(p) = perms {
            nats["pub"] = json!({ "allow": p.publish });
            nats["sub"] = json!({ "allow": p.subscribe });
            if p.respond {
                nats["resp"] = json!({ "max": 1, "ttl": 60_000_000_000u64 });
            }
        }
        sign_until(&self.account, user, name, nats, expires)
    }

    /// The three seeds, one `name: seed` line each: what a coordinator
    /// keeps (a secret file) to make and revoke credentials.
    pub fn seeds(&self) -> String {
        let seed = |k: &KeyPair| k.seed().expect("an authority's keys have seeds");
        format!(
            "operator: {}\nsystem: {}\naccount: {}\n",
            seed(&self.operator),
            seed(&self.system),
            seed(&self.account)
        )
    }

    /// Reads what [`Authority::seeds`] wrote. The error names the line,
    /// never a seed.
    pub fn from_seeds(text: &str) -> Result<Self, String> {
        let mut keys: std::collections::BTreeMap<&str, KeyPair> = std::collections::BTreeMap::new();
        for (n, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
            let (name, seed) = line
                .split_once(':')
                .ok_or_else(|| format!("line {}: expected `name: seed`", n + 1))?;
            let name = name.trim();
            if !["operator", "system", "account"].contains(&name) {
                return Err(format!(
                    "line {}: {name:?} is not one of operator, system, account",
                    n + 1
                ));
            }
            let key =
                KeyPair::from_seed(seed.trim()).map_err(|_| format!("line {}: the {name} seed is not valid", n + 1))?;
            let want = match name {
                "operator" => "O",
                _ => "A",
            };
            if !key.public_key().starts_with(want) {
                return Err(format!("line {}: the {name} seed is not an {name} key", n + 1));
            }
            keys.insert(name, key);
        }
        let mut take = |name: &str| keys.remove(name).ok_or_else(|| format!("no {name} seed"));
        Ok(Self {
            operator: take("operator")?,
            system: take("system")?,
            account: take("account")?,
        })
    }

    /// A credential in the system account (pushes account JWTs to the
    /// servers' resolver).
    pub fn system_user(&self) -> Creds {
        let user = KeyPair::new_user();
        let nats = json!({"type": "user", "version": 2, "subs": -1, "data": -1, "payload": -1});
        let jwt = sign(&self.system, &user.public_key(), "sys", nats);
        let seed = user.seed().expect("a generated key has a seed");
        Creds {
            user: user.public_key(),
            text: creds_text(&jwt, &seed),
        }
    }
}

/// Account limits: no limit, JetStream on or off.
fn unlimited(jetstream: bool) -> Value {
    let js = if jetstream { -1 } else { 0 };
    json!({
        "subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1, "wildcards": true,
        "conn": -1, "leaf": -1, "mem_storage": js, "disk_storage": js, "streams": js, "consumer": js
    })
}

/// Seconds since the Unix epoch, now.
pub fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// A JWT of `nats` claims about `subject`, signed by `issuer`. The `jti`
/// is the SHA-512/256 of the claims without it, as NATS's own tools make
/// it.
fn sign(issuer: &KeyPair, subject: &str, name: &str, nats: Value) -> String {
    sign_until(issuer, subject, name, nats, None)
}

/// As [`sign`], expiring at `expires` (Unix seconds).
fn sign_until(issuer: &KeyPair, subject: &str, name: &str, nats: Value, expires: Option<u64>) -> String {
    let mut claims = json!({
        "iat": unix_now(),
        "iss": issuer.public_key(),
        "name": name,
        "sub": subject,
        "nats": nats,
    });
    if let Some(exp) = expires {
        claims["exp"] = json!(exp);
    }
    let jti = BASE32_NOPAD.encode(&Sha512_256::digest(claims.to_string().as_bytes()));
    claims["jti"] = json!(jti);
    let header = BASE64URL_NOPAD.encode(br#"{"typ":"JWT","alg":"ed25519-nkey"}"#);
    let body = BASE64URL_NOPAD.encode(claims.to_string().as_bytes());
    let signed = format!("{header}.{body}");
    let sig = issuer
        .sign(signed.as_bytes())
        .expect("a generated key has a seed to sign with");
    format!("{signed}.{}", BASE64URL_NOPAD.encode(&sig))
}

/// The `.creds` text of a user JWT and its seed, as NATS's tools write it.
pub fn creds_text(jwt: &str, seed: &str) -> String {
    format!(
        "-----BEGIN NATS USER JWT-----\n{jwt}\n------END NATS USER JWT------\n\n\
         ************************* IMPORTANT *************************\n\
         NKEY Seed printed below can be used to sign and prove identity.\n\
         NKEYs are sensitive and should be treated as secrets.\n\n\
         -----BEGIN USER NKEY SEED-----\n{seed}\n------END USER NKEY SEED------\n\n\
         *************************************************************\n"
    )
}

/// Pushes `account_jwt` to the NATS servers' resolver as the system
/// account's user `system` (`$SYS.REQ.CLAIMS.UPDATE`): the servers take
/// the account's new claims (its revocations close the revoked users'
/// connections) with no restart. `url` and `ca_file` as the platform's
/// clients use them.
pub async fn push_account_jwt(
    url: &str,
    ca_file: &std::path::Path,
    system: &Creds,
    account_jwt: &str,
) -> Result<(), String> {
    let servers: Vec<async_nats::ServerAddr> = url
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().map_err(|_| format!("NATS address {s:?} is not valid")))
        .collect::<Result<_, _>>()?;
    let client = async_nats::ConnectOptions::with_credentials(&system.text)
        .map_err(|e| format!("the system credential: {}", e.kind()))?
        .add_root_certificates(ca_file.to_owned())
        .require_tls(true)
        .connection_timeout(std::time::Duration::from_secs(10))
        .name("infra-account-update")
        .connect(servers)
        .await
        .map_err(|e| format!("connect as the system account: {e}"))?;
    let reply = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        client.request("$SYS.REQ.CLAIMS.UPDATE", account_jwt.to_owned().into()),
    )
    .await
    .map_err(|_| "the NATS resolver did not answer the account update within 10s".to_owned())?
    .map_err(|e| format!("the account update: {e}"))?;
    let text = String::from_utf8_lossy(&reply.payload).into_owned();
    let v: Value = serde_json::from_str(&text).unwrap_or_default();
    if v.get("error").is_some() || v["data"]["code"].as_u64().is_some_and(|c| c >= 300) {
        return Err(format!("the NATS resolver refused the account update: {text}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hosts_permissions_name_only_its_own_keys() {
        let p = host_permissions(&Token::new("host", "host2").unwrap());
        // Whatever does not name host2 is one of the shared, secret-free
        // views, a cluster lock or binding to a stream.
        let shared = ["infra_observed.>", "infra_directory.>", "infra_hosts.>", "cluster.>"];
        for s in p.publish.iter().chain(&p.subscribe) {
            assert!(
                s.contains("host2")
                    || s.starts_with("$JS.API.INFO")
                    || s.starts_with("$JS.API.STREAM.INFO")
                    || s.starts_with("$JS.FC.")
                    || s.starts_with("$JS.API.CONSUMER.DELETE.")
                    || shared.iter().any(|v| s.ends_with(v)),
                "{s}"
            );
            assert!(!s.contains("host1"), "{s}");
            // Writes outside its own keys: only the cluster locks.
            if s.starts_with("$KV.") {
                assert!(s.contains(".host2.") || s == "$KV.infra_locks.cluster.>", "{s}");
            }
            // Desired state and secrets: its own only.
            if (s.contains("infra_desired") || s.contains("infra_secrets"))
                && !s.starts_with("$JS.FC.")
                && !s.starts_with("$JS.API.CONSUMER.DELETE.")
            {
                assert!(s.contains(".host2."), "{s}");
            }
        }
        assert!(
            !p.publish
                .iter()
                .any(|s| (s.contains("STREAM.") && !s.contains("STREAM.INFO")) || s.contains("PURGE"))
        );
        assert!(p.subscribe.contains(&"_INBOX_host2.>".to_owned()));
    }

    #[test]
    fn a_jwt_is_three_base64url_parts_signed_by_its_issuer() {
        let a = Authority::generate();
        let jwt = a.account_jwt(&["UABC".into()]);
        let parts: Vec<&str> = jwt.split('.').collect();
        assert_eq!(parts.len(), 3);
        let claims: Value = serde_json::from_slice(&BASE64URL_NOPAD.decode(parts[1].as_bytes()).unwrap()).unwrap();
        assert_eq!(claims["sub"], a.account());
        assert_eq!(claims["nats"]["type"], "account");
        assert!(claims["nats"]["revocations"]["UABC"].is_u64());
        let sig = BASE64URL_NOPAD.decode(parts[2].as_bytes()).unwrap();
        let issuer = KeyPair::from_public_key(claims["iss"].as_str().unwrap()).unwrap();
        issuer
            .verify(format!("{}.{}", parts[0], parts[1]).as_bytes(), &sig)
            .unwrap();
        let creds = a.user("host1", None);
        assert!(creds.text.contains("BEGIN NATS USER JWT") && creds.text.contains("BEGIN USER NKEY SEED"));
        let seed = creds
            .text
            .lines()
            .skip_while(|l| !l.contains("BEGIN USER NKEY SEED"))
            .nth(1)
            .unwrap();
        assert!(seed.starts_with("SU"), "a user seed");
        assert!(!format!("{creds:?}").contains(seed), "no seed in Debug: {creds:?}");
    }
}
