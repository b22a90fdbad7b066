//! Joining a host: the token `infractl host add` prints, and the one
//! request a new host makes with it.
//!
//! The token carries everything the host needs to reach the bus and
//! nothing that outlives it: the NATS addresses, the CA that signed the
//! servers' certificates, a *join credential* (a user JWT of the
//! platform's account, expiring with the token, allowed only to ask on
//! `infra.join.<host>`) and a random secret. The host makes its own nkey,
//! asks with the secret and its public key, and a coordinator (one of a
//! queue group) checks the ticket it kept for that host (the secret's
//! hash, the expiry, not used yet), marks it used with a compare-and-set
//! and answers with a JWT for the host's key with the host's scoped
//! permissions ([`crate::auth::host_permissions`]). The host's seed never
//! leaves the host; the token is useless once used or expired:
//!
//! - expired: the host says so before it connects (the token names its
//!   expiry), and the servers refuse the join credential anyway;
//! - used: the coordinator refuses it, naming when the host joined;
//! - forged or altered: the servers refuse a credential the platform's
//!   account did not sign, or the coordinator refuses a wrong secret.

use std::path::Path;
use std::time::Duration;

use data_encoding::BASE64URL_NOPAD;
use nkeys::KeyPair;
use prost::Message;
use serde_json::{Value, json};

use crate::auth;
use crate::subject::{self, Token};
use infra_proto::bus::v1::{JoinReply, JoinRequest};

/// What every token starts with (and its version).
pub const PREFIX: &str = "INFRAJOIN1-";

/// A join token, decoded.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken {
    /// The host it admits.
    pub host: String,
    /// NATS server addresses, comma-separated.
    pub nats_url: String,
    /// PEM of the CA that signed the servers' certificates.
    pub ca_pem: String,
    /// The join credential's JWT.
    pub jwt: String,
    /// The join credential's seed.
    pub seed: String,
    /// The secret the coordinator keeps the hash of.
    pub secret: String,
    /// Expiry, Unix seconds.
    pub expires_at: u64,
}

impl std::fmt::Debug for JoinToken {
    // A token is a secret: only what identifies it is printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JoinToken")
            .field("host", &self.host)
            .field("nats_url", &self.nats_url)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

impl JoinToken {
    /// The text a user copies.
    pub fn encode(&self) -> String {
        let v = json!({
            "host": self.host, "nats": self.nats_url, "ca": self.ca_pem,
            "jwt": self.jwt, "seed": self.seed, "secret": self.secret, "exp": self.expires_at,
        });
        format!("{PREFIX}{}", BASE64URL_NOPAD.encode(v.to_string().as_bytes()))
    }

    /// Reads a token. The error says what is wrong with it, never its
    /// content.
    pub fn decode(text: &str) -> Result<Self, String> {
        let body = text.trim().strip_prefix(PREFIX).ok_or_else(|| {
            format!("this is not a join token: a token starts with {PREFIX} (make one with `infractl host add NAME`)")
        })?;
        let damaged = || "the join token is damaged (cut short or altered): copy it again, whole".to_owned();
        let bytes = BASE64URL_NOPAD.decode(body.as_bytes()).map_err(|_| damaged())?;
        let v: Value = serde_json::from_slice(&bytes).map_err(|_| damaged())?;
        let text = |k: &str| v[k].as_str().map(str::to_owned).ok_or_else(damaged);
        let t = Self {
            host: text("host")?,
            nats_url: text("nats")?,
            ca_pem: text("ca")?,
            jwt: text("jwt")?,
            seed: text("seed")?,
            secret: text("secret")?,
            expires_at: v["exp"].as_u64().ok_or_else(damaged)?,
        };
        Token::new("host", &t.host).map_err(|_| damaged())?;
        Ok(t)
    }
}

/// What a host holds once it joined.
#[derive(Clone)]
pub struct Joined {
    /// Its name.
    pub host: String,
    /// NATS server addresses.
    pub nats_url: String,
    /// The servers' CA (PEM).
    pub ca_pem: String,
    /// Its own credential (`.creds` text). A secret.
    pub creds: String,
    /// Its labels, as `host add` gave them.
    pub labels: std::collections::BTreeMap<String, String>,
    /// The tiers it carries, as `host add` gave them (empty: the host
    /// says).
    pub tiers: Vec<String>,
}

impl std::fmt::Debug for Joined {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Joined")
            .field("host", &self.host)
            .field("labels", &self.labels)
            .field("tiers", &self.tiers)
            .finish_non_exhaustive()
    }
}

/// Joins with `token`: asks a coordinator for this host's credential.
/// `scratch` is a directory where the CA is written while connecting
/// (removed again). Nothing is kept on failure; the error says why.
pub async fn join(token: &JoinToken, version: &str, scratch: &Path) -> Result<Joined, String> {
    let now = auth::unix_now();
    if token.expires_at <= now {
        return Err(format!(
            "the join token for {} expired {} ago; make a new one: infractl host add {}",
            token.host,
            human(now - token.expires_at),
            token.host
        ));
    }
    let host = Token::new("host", &token.host).map_err(|e| e.to_string())?;
    let ca = scratch.join(format!(".join-ca-{}.pem", nuid::next()));
    std::fs::write(&ca, &token.ca_pem).map_err(|e| format!("{}: {e}", ca.display()))?;
    let result = ask(token, &host, version, &ca).await;
    let _ = std::fs::remove_file(&ca);
    result
}

async fn ask(token: &JoinToken, host: &Token, version: &str, ca: &Path) -> Result<Joined, String> {
    let servers: Vec<async_nats::ServerAddr> = token
        .nats_url
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse()
                .map_err(|_| format!("the token's NATS address {s:?} is not valid"))
        })
        .collect::<Result<_, _>>()?;
    let creds = auth::creds_text(&token.jwt, &token.seed);
    let opts = async_nats::ConnectOptions::with_credentials(&creds)
        .map_err(|_| "the join token is damaged (its credential cannot be read): copy it again, whole".to_owned())?
        .add_root_certificates(ca.to_owned())
        .require_tls(true)
        .custom_inbox_prefix(auth::join_inbox_prefix(host))
        .connection_timeout(Duration::from_secs(10))
        .name(format!("join@{host}"));
    let client = match tokio::time::timeout(Duration::from_secs(30), opts.connect(servers)).await {
        Err(_) => return Err(format!("cannot reach NATS at {} within 30s", token.nats_url)),
        Ok(Err(e)) => {
            let why = match e.kind() {
                async_nats::ConnectErrorKind::AuthorizationViolation | async_nats::ConnectErrorKind::Authentication => {
                    "NATS refused the join token: it expired, was revoked, or was not made by this platform's \
                     coordinator"
                        .to_owned()
                }
                async_nats::ConnectErrorKind::Tls => {
                    "TLS with the NATS servers failed: their certificate is not signed by the CA in the token"
                        .to_owned()
                }
                _ => format!("cannot connect to NATS at {}: {e}", token.nats_url),
            };
            return Err(why);
        }
        Ok(Ok(c)) => c,
    };
    let key = KeyPair::new_user();
    let ask = JoinRequest {
        host: host.to_string(),
        secret: token.secret.clone(),
        public_key: key.public_key(),
        version: version.to_owned(),
    };
    let answer = tokio::time::timeout(
        Duration::from_secs(20),
        client.request(subject::join(host), ask.encode_to_vec().into()),
    )
    .await
    .map_err(|_| "no coordinator answered the join within 20s".to_owned())?
    .map_err(|e| match e.kind() {
        async_nats::RequestErrorKind::NoResponders => {
            "no coordinator is listening for joins: is one running, with `join.authority_file` set?".to_owned()
        }
        _ => format!("the join request failed: {e}"),
    })?;
    let reply = JoinReply::decode(answer.payload).map_err(|_| "the coordinator's answer does not decode".to_owned())?;
    if !reply.error.is_empty() {
        return Err(reply.error);
    }
    let seed = key.seed().map_err(|_| "a new key has no seed".to_owned())?;
    Ok(Joined {
        host: host.to_string(),
        nats_url: token.nats_url.clone(),
        ca_pem: token.ca_pem.clone(),
        creds: auth::creds_text(&reply.jwt, &seed),
        labels: reply.labels.into_iter().collect(),
        tiers: reply.tiers,
    })
}

/// `3m`, `2h`, `4d`: a duration for messages.
pub fn human(secs: u64) -> String {
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 2 * 3600 => format!("{}m", s / 60),
        s if s < 2 * 86400 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}

/// The SHA-256 of a token's secret, hex (what a ticket keeps).
pub fn secret_hash(secret: &str) -> String {
    use sha2::Digest;
    data_encoding::HEXLOWER.encode(&sha2::Sha256::digest(secret.as_bytes()))
}

/// A new random secret (32 bytes, hex).
pub fn new_secret() -> String {
    let a = nuid::next().to_string();
    let b = nuid::next().to_string();
    let k = KeyPair::new_user();
    secret_hash(&format!("{a}{b}{}", k.seed().unwrap_or_default()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token() -> JoinToken {
        JoinToken {
            host: "host4".into(),
            nats_url: "tls://10.0.0.1:4222".into(),
            ca_pem: "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n".into(),
            jwt: "eyJ0.eyJ1.c2ln".into(),
            seed: "SUAEXAMPLE".into(),
            secret: new_secret(),
            expires_at: 1_900_000_000,
        }
    }

    #[test]
    fn a_token_reads_back_and_a_damaged_or_foreign_one_is_named_so() {
        let t = token();
        let text = t.encode();
        assert!(text.starts_with(PREFIX));
        assert_eq!(JoinToken::decode(&format!("  {text}\n")).unwrap(), t);
        let cut = &text[..text.len() - 10];
        assert!(JoinToken::decode(cut).unwrap_err().contains("damaged"));
        assert!(
            JoinToken::decode("SWMTKN-1-abc")
                .unwrap_err()
                .contains("not a join token")
        );
        // Neither form prints the secret or the seed.
        assert!(!format!("{t:?}").contains(&t.secret) && !format!("{t:?}").contains(&t.seed));
    }

    #[tokio::test]
    async fn an_expired_token_is_refused_before_anything_is_asked() {
        let mut t = token();
        t.expires_at = auth::unix_now() - 300;
        let dir = std::env::temp_dir();
        let e = join(&t, "0", &dir).await.unwrap_err();
        assert!(
            e.contains("expired 5m ago") && e.contains("infractl host add host4"),
            "{e}"
        );
    }

    #[test]
    fn secrets_differ_and_hash_to_hex() {
        let (a, b) = (new_secret(), new_secret());
        assert_ne!(a, b);
        assert_eq!(a.len(), 64);
        assert_eq!(secret_hash(&a).len(), 64);
    }
}
