//! One leader among several coordinators, by a lease in JetStream
//! key-value (`infra_leader`, key `lease`).
//!
//! Every coordinator runs [`Election::start`]. The one holding the lease
//! renews it every third of the lease time; the others read it and take it
//! over only when it was released, or when its revision has not changed
//! for a whole lease time by their own clock. Every write is a
//! compare-and-set on the key's revision, so of two candidates that saw the
//! same revision exactly one wins, and each acquisition makes a new term
//! (the previous term plus one), also recorded once under `term.<n>`.
//!
//! # Guarantees
//!
//! - The holder considers itself leader only until `the start of its last
//!   successful write + lease time - margin`. A successor first sees that
//!   write after it was made and waits a whole lease time from then, so the
//!   holder has stopped leading (by `margin`) before anyone else can start.
//! - A clean shutdown first stops leading, then writes the lease back as
//!   released, so a successor takes over at its next poll instead of
//!   after a lease time.
//!
//! # Assumptions
//!
//! - Clocks on the coordinators' machines run at the same rate (they need
//!   not agree on the time: only durations measured locally are compared).
//! - `margin` covers the time between the holder's deadline passing and its
//!   loop noticing it (a scheduling delay, not a network round trip: every
//!   bus call is bounded by the deadline).

use std::time::Duration;

use infra_bus::{Bus, LeaseEntry};
use infra_proto::bus::v1::LeaderLease;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// What the election needs to know about this coordinator.
#[derive(Clone, Debug)]
pub struct LeaseSettings {
    /// This coordinator's id (`coordinator2`).
    pub id: String,
    /// The gRPC address others should send writes to.
    pub address: String,
    /// How long a lease lasts without renewal.
    pub lease: Duration,
}

impl LeaseSettings {
    /// How often the holder renews: a third of the lease, so two attempts
    /// can fail before it must step down.
    pub fn renew_every(&self) -> Duration {
        self.lease / 3
    }

    /// How long before its lease time is up the holder stops leading.
    pub fn margin(&self) -> Duration {
        self.lease / 5
    }

    /// How often a follower reads the lease: often enough that a released
    /// or expired lease is taken over soon after.
    pub fn poll_every(&self) -> Duration {
        (self.lease / 10).clamp(Duration::from_millis(50), Duration::from_millis(500))
    }
}

/// Who leads, as this coordinator sees it now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Leadership {
    /// The lease has not been read yet.
    Unknown,
    /// This coordinator leads, in this term.
    Me {
        /// The term.
        term: u64,
    },
    /// Another coordinator leads (its lease is live by this one's clock).
    Other {
        /// Its id.
        holder: String,
        /// Its advertised gRPC address.
        address: String,
        /// Its term.
        term: u64,
        /// When its lease runs out unless it is renewed, by this one's
        /// clock.
        expires_in: Duration,
        /// The lease is held under this coordinator's own id by an earlier
        /// run of it (one that stopped without releasing it, and has not
        /// renewed it since this run started watching): this coordinator
        /// takes over once it expires.
        earlier_self: bool,
    },
    /// Nobody leads: the lease is free, released or expired, and not yet
    /// taken over.
    Nobody,
}

/// The receiving end of an election: whether this coordinator leads, and
/// who does.
#[derive(Clone, Debug)]
pub struct Election {
    leading: watch::Receiver<bool>,
    seen: watch::Receiver<Leadership>,
}

impl Election {
    /// Makes the first attempt at the lease (so a lone coordinator leads
    /// before it serves its first request), then keeps at it in a task
    /// until `shutdown`; the task releases the lease on its way out.
    pub async fn start(
        bus: Bus,
        settings: LeaseSettings,
        shutdown: CancellationToken,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        let (leading_tx, leading) = watch::channel(false);
        let (seen_tx, seen) = watch::channel(Leadership::Unknown);
        let mut lease = LeaseLoop {
            bus,
            settings,
            instance: nuid::next().to_string(),
            leading: leading_tx,
            seen: seen_tx,
            state: State::Follower { observed: None },
            same_id_revision: None,
        };
        lease.step().await;
        let handle = tokio::spawn(async move { lease.run(shutdown).await });
        (Self { leading, seen }, handle)
    }

    /// Whether this coordinator leads, kept current by the lease task.
    pub fn leading(&self) -> watch::Receiver<bool> {
        self.leading.clone()
    }

    /// Who leads, as this coordinator saw it last.
    pub fn leadership(&self) -> Leadership {
        if *self.leading.borrow() {
            // The flag is the authority for this coordinator itself.
            match &*self.seen.borrow() {
                me @ Leadership::Me { .. } => me.clone(),
                _ => Leadership::Me { term: 0 },
            }
        } else {
            match &*self.seen.borrow() {
                Leadership::Me { .. } => Leadership::Nobody,
                other => other.clone(),
            }
        }
    }
}

/// The revision of the lease a follower last saw change, and when.
#[derive(Clone, Copy, Debug)]
struct Observed {
    revision: u64,
    since: Instant,
}

enum State {
    Follower {
        observed: Option<Observed>,
    },
    Leader {
        lease: LeaderLease,
        revision: u64,
        /// When the next renewal is due.
        next: Instant,
        /// Leads until then unless it renews.
        until: Instant,
    },
}

struct LeaseLoop {
    bus: Bus,
    settings: LeaseSettings,
    instance: String,
    leading: watch::Sender<bool>,
    seen: watch::Sender<Leadership>,
    state: State,
    /// The revision at which a lease under this coordinator's own id but
    /// another instance was first seen.
    same_id_revision: Option<u64>,
}

fn ts_after(d: Duration) -> prost_types::Timestamp {
    let now = std::time::SystemTime::now() + d;
    let since = now.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    prost_types::Timestamp {
        seconds: since.as_secs() as i64,
        nanos: since.subsec_nanos() as i32,
    }
}

impl LeaseLoop {
    async fn run(mut self, shutdown: CancellationToken) {
        loop {
            let wait = self.next_wait();
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep(wait) => {}
            }
            self.step().await;
        }
        self.release().await;
    }

    /// How long to sleep before the next step.
    fn next_wait(&self) -> Duration {
        match &self.state {
            State::Follower { .. } => self.settings.poll_every(),
            State::Leader { next, until, .. } => (*next).min(*until).saturating_duration_since(Instant::now()),
        }
    }

    async fn step(&mut self) {
        match &self.state {
            State::Follower { .. } => self.follow().await,
            State::Leader { .. } => self.renew().await,
        }
    }

    fn step_down(&mut self, why: &str) {
        if let State::Leader { lease, .. } = &self.state {
            tracing::warn!(term = lease.term, reason = why, "no longer the leader");
        }
        self.leading.send_replace(false);
        self.seen.send_replace(Leadership::Nobody);
        self.state = State::Follower { observed: None };
    }

    /// A bus call bounded by `limit`; a timeout is an error.
    async fn bounded<T>(limit: Duration, f: impl Future<Output = infra_bus::Result<T>>) -> Result<T, String> {
        match tokio::time::timeout(limit, f).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no answer within {}ms", limit.as_millis())),
        }
    }

    async fn follow(&mut self) {
        let limit = self.settings.renew_every().max(Duration::from_millis(200));
        let current = match Self::bounded(limit, self.bus.read_lease()).await {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(error = %e, "cannot read the leader lease");
                return;
            }
        };
        let now = Instant::now();
        let State::Follower { observed } = &mut self.state else {
            return;
        };
        let take = match &current {
            None => true,
            Some(LeaseEntry { lease, revision }) => {
                let seen_since = match observed {
                    Some(o) if o.revision == *revision => o.since,
                    _ => {
                        *observed = Some(Observed {
                            revision: *revision,
                            since: now,
                        });
                        now
                    }
                };
                let held = now.duration_since(seen_since);
                let expired = held >= self.settings.lease;
                let live = !lease.released && !expired;
                // A lease of our own from before a step-down can be
                // renewed by compare-and-set like any other write.
                let ours = lease.instance == self.instance;
                // Our id, another instance: an earlier run of us, unless it
                // renews (then two coordinators share one id).
                let same_id = lease.holder == self.settings.id && !ours;
                let first = *self.same_id_revision.get_or_insert(*revision);
                if !same_id {
                    self.same_id_revision = None;
                }
                if live && !ours {
                    self.seen.send_replace(Leadership::Other {
                        holder: lease.holder.clone(),
                        address: lease.grpc_address.clone(),
                        term: lease.term,
                        expires_in: self.settings.lease.saturating_sub(held),
                        earlier_self: same_id && first == *revision,
                    });
                } else {
                    self.seen.send_replace(Leadership::Nobody);
                }
                !live || ours
            }
        };
        if take {
            self.acquire(current).await;
        }
    }

    async fn acquire(&mut self, current: Option<LeaseEntry>) {
        let (term, acquired_at, expected) = match &current {
            Some(e) if e.lease.instance == self.instance && !e.lease.released => {
                (e.lease.term, e.lease.acquired_at, Some(e.revision))
            }
            Some(e) => (e.lease.term + 1, None, Some(e.revision)),
            None => {
                // The key is gone (or never was): go on from the last
                // recorded term, so terms still grow.
                let last = self.bus.list_terms().await.ok().and_then(|t| t.last().map(|l| l.term));
                (last.unwrap_or(0) + 1, None, None)
            }
        };
        let lease = LeaderLease {
            holder: self.settings.id.clone(),
            grpc_address: self.settings.address.clone(),
            term,
            acquired_at: acquired_at.or_else(|| Some(ts_after(Duration::ZERO))),
            renewed_at: Some(ts_after(Duration::ZERO)),
            expires_at: Some(ts_after(self.settings.lease)),
            lease_ms: self.settings.lease.as_millis() as u64,
            instance: self.instance.clone(),
            released: false,
        };
        let sent = Instant::now();
        let limit = self.settings.lease - self.settings.margin();
        match Self::bounded(limit, self.bus.write_lease(&lease, expected)).await {
            Ok(Some(revision)) => {
                let until = sent + self.settings.lease - self.settings.margin();
                if Instant::now() >= until {
                    // Too slow to be of use; the next round renews or
                    // loses it.
                    return;
                }
                let fresh = acquired_at.is_none();
                if fresh {
                    match self.bus.record_term(&lease).await {
                        Ok(true) => {}
                        Ok(false) => tracing::error!(term, "term already recorded: two acquisitions of one term"),
                        Err(e) => tracing::warn!(term, error = %e, "cannot record the term"),
                    }
                    tracing::info!(
                        term,
                        lease_ms = lease.lease_ms,
                        address = %lease.grpc_address,
                        "acquired the leader lease"
                    );
                }
                self.state = State::Leader {
                    lease,
                    revision,
                    next: sent + self.settings.renew_every(),
                    until,
                };
                self.seen.send_replace(Leadership::Me { term });
                self.leading.send_replace(true);
            }
            Ok(None) => tracing::debug!(term, "another coordinator took the lease first"),
            Err(e) => tracing::debug!(term, error = %e, "cannot write the leader lease"),
        }
    }

    async fn renew(&mut self) {
        let State::Leader {
            lease, revision, until, ..
        } = &self.state
        else {
            return;
        };
        let (mut lease, revision, until) = (lease.clone(), *revision, *until);
        let now = Instant::now();
        if now >= until {
            self.step_down("could not renew the lease in time");
            return;
        }
        lease.renewed_at = Some(ts_after(Duration::ZERO));
        lease.expires_at = Some(ts_after(self.settings.lease));
        let sent = now;
        match Self::bounded(until - now, self.bus.write_lease(&lease, Some(revision))).await {
            Ok(Some(new_revision)) => {
                self.state = State::Leader {
                    lease,
                    revision: new_revision,
                    next: sent + self.settings.renew_every(),
                    until: sent + self.settings.lease - self.settings.margin(),
                };
            }
            Ok(None) => self.step_down("another coordinator wrote the lease"),
            Err(e) => {
                tracing::warn!(error = %e, "cannot renew the leader lease; retrying");
                // Retry soon, still bounded by `until`.
                if let State::Leader { next, .. } = &mut self.state {
                    *next = Instant::now() + self.settings.poll_every();
                }
                if Instant::now() >= until {
                    self.step_down("could not renew the lease in time");
                }
            }
        }
    }

    /// Stops leading, then hands the lease back so a successor need not
    /// wait for it to expire.
    async fn release(&mut self) {
        let State::Leader {
            lease, revision, until, ..
        } = &self.state
        else {
            return;
        };
        let (mut lease, revision, until) = (lease.clone(), *revision, *until);
        self.leading.send_replace(false);
        self.seen.send_replace(Leadership::Nobody);
        self.state = State::Follower { observed: None };
        lease.released = true;
        lease.renewed_at = Some(ts_after(Duration::ZERO));
        lease.expires_at = lease.renewed_at;
        let limit = until
            .saturating_duration_since(Instant::now())
            .min(Duration::from_secs(2));
        match Self::bounded(limit, self.bus.write_lease(&lease, Some(revision))).await {
            Ok(Some(_)) => tracing::info!(term = lease.term, "released the leader lease"),
            Ok(None) => tracing::info!(term = lease.term, "the lease was taken over already"),
            Err(e) => tracing::warn!(term = lease.term, error = %e, "cannot release the lease; it expires by itself"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_holder_renews_twice_and_stops_leading_before_a_successor_may_start() {
        let s = LeaseSettings {
            id: "c".into(),
            address: "127.0.0.1:1".into(),
            lease: Duration::from_secs(10),
        };
        assert!(s.renew_every() * 2 < s.lease - s.margin());
        assert!(s.margin() > Duration::ZERO);
        assert!(s.poll_every() <= Duration::from_millis(500));
    }
}
