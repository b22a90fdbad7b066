//! Joining hosts by token (`AddHost`, `infractl host add`): the ticket the
//! coordinator keeps, the token it hands out, and the answer to a host
//! that asks with it. The protocol and its guarantees are in
//! `infra_bus::join`; the credential a host gets is scoped to it
//! (`infra_bus::auth::host_permissions`).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use infra_bus::Token;
use infra_bus::auth::{self, Authority};
use infra_bus::join::{self as protocol, JoinToken};
use infra_proto::bus::v1::{EventKind, JoinReply, JoinRequest, JoinTicket};
use infra_proto::coordinator::v1 as api;
use prost::Message;
use tokio_util::sync::CancellationToken;

use crate::Coordinator;
use crate::error::Error;

/// Default life of a join token.
pub const DEFAULT_TTL: Duration = Duration::from_secs(3600);
/// Longest life of a join token.
pub const MAX_TTL: Duration = Duration::from_secs(7 * 86400);

/// What making tokens and answering joins needs.
pub struct JoinSettings {
    /// The platform's signing keys.
    pub authority: Authority,
    /// NATS addresses the hosts use.
    pub nats_url: String,
    /// The CA the hosts trust (PEM), and its file.
    pub ca_pem: String,
    /// The CA's file (the system account's connection uses it).
    pub ca_file: PathBuf,
    /// The install image the command names.
    pub operator_image: String,
}

impl std::fmt::Debug for JoinSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JoinSettings")
            .field("authority", &self.authority)
            .field("nats_url", &self.nats_url)
            .field("operator_image", &self.operator_image)
            .finish_non_exhaustive()
    }
}

/// The coordinator's `[join]` configuration.
#[derive(Clone, Debug, Default, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct JoinConfig {
    /// The platform's NATS signing keys (`coordinator init-auth` writes
    /// them). Set: hosts join by token. A secret file.
    pub authority_file: Option<PathBuf>,
    /// NATS addresses the joining hosts use (empty: `nats.url`).
    pub nats_url: String,
    /// The CA the hosts trust (unset: `nats.ca_file`).
    pub ca_file: Option<PathBuf>,
    /// The install image the printed command runs.
    pub operator_image: String,
}

impl JoinConfig {
    /// The settings, reading the files; `None` without an authority file.
    pub fn settings(&self, nats: &infra_runtime::config::NatsConfig) -> Result<Option<JoinSettings>, String> {
        let Some(file) = &self.authority_file else {
            return Ok(None);
        };
        let seeds =
            std::fs::read_to_string(file).map_err(|e| format!("join.authority_file: {}: {e}", file.display()))?;
        let authority =
            Authority::from_seeds(&seeds).map_err(|e| format!("join.authority_file: {}: {e}", file.display()))?;
        let ca = self.ca_file.as_ref().or(nats.ca_file.as_ref()).ok_or_else(|| {
            "join.authority_file is set but neither join.ca_file nor nats.ca_file names the CA the hosts trust \
             (hosts reach NATS over TLS only)"
                .to_owned()
        })?;
        let ca_pem = std::fs::read_to_string(ca).map_err(|e| format!("join.ca_file: {}: {e}", ca.display()))?;
        Ok(Some(JoinSettings {
            authority,
            nats_url: if self.nats_url.trim().is_empty() {
                nats.url.clone()
            } else {
                self.nats_url.clone()
            },
            ca_pem,
            ca_file: ca.clone(),
            operator_image: if self.operator_image.is_empty() {
                "infra-local/operators:dev".into()
            } else {
                self.operator_image.clone()
            },
        }))
    }
}

fn timestamp(unix: u64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: i64::try_from(unix).unwrap_or(i64::MAX),
        nanos: 0,
    }
}

fn unix(t: Option<&prost_types::Timestamp>) -> u64 {
    t.map_or(0, |t| u64::try_from(t.seconds).unwrap_or(0))
}

/// Checks an `AddHost` request: the name, labels and tiers.
pub fn check_add(req: &api::AddHostRequest) -> Result<Duration, Error> {
    Token::new("host", &req.host).map_err(|e| Error::invalid(format!("host: {e}")))?;
    for (k, v) in &req.labels {
        let ok = !k.is_empty()
            && k.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if !ok {
            return Err(Error::invalid(format!(
                "labels: key {k:?} must be lower case letters, digits and '_' (it becomes an INFRA_LABELS__ variable)"
            )));
        }
        if v.contains(['\n', '\r', '\0']) {
            return Err(Error::invalid(format!("labels: the value of {k:?} holds a line break")));
        }
    }
    for t in &req.tiers {
        if !infra_proto::tiers::NAMES.contains(&t.as_str()) {
            return Err(Error::invalid(format!(
                "tiers: {t:?} is not a tier (known: {})",
                infra_proto::tiers::NAMES.join(", ")
            )));
        }
    }
    let ttl = if req.ttl_seconds == 0 {
        DEFAULT_TTL
    } else {
        Duration::from_secs(u64::from(req.ttl_seconds))
    };
    if ttl > MAX_TTL {
        return Err(Error::invalid(format!(
            "ttl_seconds: {} is more than a week; a join token should be used soon after it is made",
            req.ttl_seconds
        )));
    }
    Ok(ttl)
}

impl Coordinator {
    fn join_settings(&self) -> Result<&Arc<JoinSettings>, Error> {
        self.settings.join.as_ref().ok_or_else(|| {
            Error::precondition(
                "joining by token needs join.authority_file in the coordinator's configuration \
                 (`coordinator init-auth` makes the keys)",
            )
        })
    }

    /// Makes a one-time join token for a new host (see `infra_bus::join`).
    pub async fn add_host(&self, req: api::AddHostRequest) -> Result<api::AddHostResponse, Error> {
        let ttl = check_add(&req)?;
        let js = self.join_settings()?.clone();
        let beats = self
            .bus
            .list_heartbeats()
            .await
            .map_err(crate::coordinator::unavailable)?;
        if beats.iter().any(|b| b.host == req.host) {
            return Err(Error::precondition(format!(
                "host {} is already part of the platform (its operators heartbeat); remove it first",
                req.host
            )));
        }
        let host = Token::new("host", &req.host).map_err(|e| Error::invalid(e.to_string()))?;
        let now = auth::unix_now();
        let expires = now + ttl.as_secs();
        let join_user = js.authority.user_until(
            &format!("join-{host}"),
            Some(&auth::join_permissions(&host)),
            Some(expires),
        );
        let (jwt, seed) = split_creds(&join_user.text);
        let secret = protocol::new_secret();
        let ticket = JoinTicket {
            host: req.host.clone(),
            labels: req.labels.clone().into_iter().collect(),
            tiers: req.tiers.clone(),
            secret_sha256: protocol::secret_hash(&secret),
            issued_at: Some(timestamp(now)),
            expires_at: Some(timestamp(expires)),
            used_at: None,
            host_user: String::new(),
            join_user: join_user.user.clone(),
        };
        self.bus
            .put_join_ticket(&ticket)
            .await
            .map_err(crate::coordinator::unavailable)?;
        let token = JoinToken {
            host: req.host.clone(),
            nats_url: js.nats_url.clone(),
            ca_pem: js.ca_pem.clone(),
            jwt,
            seed,
            secret,
            expires_at: expires,
        }
        .encode();
        self.event(
            EventKind::HostJoinToken,
            "",
            "",
            "",
            format!(
                "join token for host {} (labels {:?}, tiers {:?}), valid {}",
                req.host,
                req.labels.iter().collect::<BTreeMap<_, _>>(),
                req.tiers,
                protocol::human(ttl.as_secs())
            ),
        )
        .await;
        let command = format!(
            "docker run -d --name infra-operators --restart unless-stopped --stop-timeout 30 --network host \
             -v /var/run/docker.sock:/var/run/docker.sock -v /var/lib/infra:/var/lib/infra {} join --token {token}",
            js.operator_image
        );
        Ok(api::AddHostResponse {
            token,
            expires_at: Some(timestamp(expires)),
            command,
        })
    }

    /// The answer to one join request on `subject` (`infra.join.<host>`):
    /// the host's credential, or why not.
    pub async fn answer_join(&self, subject: &str, req: &JoinRequest) -> JoinReply {
        match self.admit(subject, req).await {
            Ok(reply) => {
                self.event(
                    EventKind::HostJoined,
                    "",
                    "",
                    "",
                    format!("host {} joined (operators {})", req.host, req.version),
                )
                .await;
                reply
            }
            Err(e) => {
                tracing::warn!(host = %req.host, reason = %e, "join refused");
                self.event(
                    EventKind::HostJoinRefused,
                    "",
                    "",
                    "",
                    format!("join of host {:?} refused: {e}", req.host),
                )
                .await;
                JoinReply {
                    error: e,
                    ..Default::default()
                }
            }
        }
    }

    async fn admit(&self, subject: &str, req: &JoinRequest) -> Result<JoinReply, String> {
        let js = self.join_settings().map_err(|e| e.message().to_owned())?;
        // The join credential may publish on its own host's subject only:
        // the subject, not the body, says which host asks.
        let host = subject.rsplit('.').next().unwrap_or_default();
        if host != req.host {
            return Err(format!("a join for {:?} asked on the subject of {host:?}", req.host));
        }
        let redo = format!("make a new token: infractl host add {host}");
        let Some((mut ticket, revision)) = self.bus.get_join_ticket(host).await.map_err(|e| e.to_string())? else {
            return Err(format!("no join is pending for host {host}; {redo}"));
        };
        if let Some(used) = &ticket.used_at {
            return Err(format!(
                "this join token was used already: host {host} joined {} ago; {redo} to join it again",
                protocol::human(auth::unix_now().saturating_sub(unix(Some(used))))
            ));
        }
        let now = auth::unix_now();
        let expires = unix(ticket.expires_at.as_ref());
        if expires <= now {
            return Err(format!(
                "the join token for {host} expired {} ago; {redo}",
                protocol::human(now - expires)
            ));
        }
        if protocol::secret_hash(&req.secret) != ticket.secret_sha256 {
            return Err(format!(
                "the join token does not match the one made for {host} (a newer token replaced it, or it was \
                 altered); {redo}"
            ));
        }
        if !auth::is_user_key(&req.public_key) {
            return Err("the join request does not carry a user public key".into());
        }
        ticket.used_at = Some(infra_proto::now());
        ticket.host_user.clone_from(&req.public_key);
        if !self
            .bus
            .update_join_ticket(&ticket, revision)
            .await
            .map_err(|e| e.to_string())?
        {
            return Err(format!(
                "this join token was used already (by a join at the same moment); {redo}"
            ));
        }
        let token = Token::new("host", host).map_err(|e| e.to_string())?;
        let jwt = js
            .authority
            .user_jwt(host, &req.public_key, Some(&auth::host_permissions(&token)), None);
        Ok(JoinReply {
            error: String::new(),
            jwt,
            labels: ticket.labels,
            tiers: ticket.tiers,
        })
    }
}

/// The JWT and seed of a `.creds` text.
fn split_creds(text: &str) -> (String, String) {
    let after = |marker: &str| {
        text.lines()
            .skip_while(|l| !l.contains(marker))
            .nth(1)
            .unwrap_or_default()
            .trim()
            .to_owned()
    };
    (after("BEGIN NATS USER JWT"), after("BEGIN USER NKEY SEED"))
}

/// Answers join requests until `shutdown` (every coordinator with join
/// settings; a queue group gives each request to one of them).
pub async fn serve(c: Coordinator, shutdown: CancellationToken) {
    if c.settings.join.is_none() {
        return;
    }
    loop {
        let mut sub = match c.bus.join_requests().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for joins; retrying");
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(Duration::from_secs(2)) => continue,
                }
            }
        };
        tracing::info!("answering host joins");
        loop {
            let msg = tokio::select! {
                () = shutdown.cancelled() => return,
                m = sub.next() => m,
            };
            let Some(msg) = msg else { break };
            let Some(reply_to) = msg.reply.clone() else { continue };
            let answer = match JoinRequest::decode(msg.payload.clone()) {
                Ok(req) => c.answer_join(msg.subject.as_str(), &req).await,
                Err(_) => JoinReply {
                    error: "the join request does not decode".into(),
                    ..Default::default()
                },
            };
            if let Err(e) = c.bus.reply(reply_to, &answer).await {
                tracing::warn!(error = %e, "cannot answer a join");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(host: &str) -> api::AddHostRequest {
        api::AddHostRequest {
            host: host.into(),
            ..Default::default()
        }
    }

    #[test]
    fn an_add_names_what_is_wrong() {
        assert_eq!(check_add(&req("host4")).unwrap(), DEFAULT_TTL);
        assert!(check_add(&req("host 4")).unwrap_err().message().contains("host"));
        let mut r = req("host4");
        r.labels.insert("Zone".into(), "a".into());
        assert!(check_add(&r).unwrap_err().message().contains("\"Zone\""));
        let mut r = req("host4");
        r.tiers.push("databases".into());
        assert!(
            check_add(&r)
                .unwrap_err()
                .message()
                .contains("\"databases\" is not a tier")
        );
        let mut r = req("host4");
        r.ttl_seconds = 8 * 86400;
        assert!(check_add(&r).unwrap_err().message().contains("more than a week"));
    }

    #[test]
    fn creds_split_into_jwt_and_seed() {
        let a = Authority::generate();
        let c = a.user("x", None);
        let (jwt, seed) = split_creds(&c.text);
        assert_eq!(jwt.split('.').count(), 3);
        assert!(seed.starts_with("SU"));
        assert_eq!(auth::creds_text(&jwt, &seed), c.text);
    }
}
