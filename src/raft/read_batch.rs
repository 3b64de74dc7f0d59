//! Linearizable reads of one group share leadership confirmations, and a confirmed
//! leader answers reads under a lease until it runs out.
//!
//! openraft's `ensure_linearizable` is a round of heartbeats to a quorum per call. Here a
//! read queues, and one confirmation serves every read that queued before it started:
//! the read index it takes (the leader's commit index once its leadership is confirmed)
//! is at least what any of those reads could have seen acknowledged, so each of them,
//! answered after the state machine applied up to it, is linearizable. A read arriving
//! while a confirmation is in flight waits for the next one: the running one may have
//! taken its read index before a write that completed before that read began.
//!
//! **The lease.** A follower that heard from its leader refuses votes for
//! `election_timeout_max` after (openraft 0.9 `Engine::handle_vote_req`), and each
//! follower that acknowledged a confirmation heard from the leader after the
//! confirmation started. So for `lease_ms` (less than `election_timeout_max`) after a
//! confirmation *started*, no other leader can be elected without the vote of this
//! replica itself. A read under the lease therefore asks this replica's Raft core (no
//! network) whether it still leads in the confirmed term and takes its commit index,
//! provided the leader committed an entry of that term; the core check is ordered after
//! any vote this replica granted. The lease assumes that no node's monotonic clock runs
//! faster than another's by more than the margin `election_timeout_max - lease_ms`
//! leaves, and that a restarted node refuses votes for `election_timeout_max` (it forgot
//! whom it heard from; `api::internal` enforces that).
//!
//! Not yet enough, hence off by default (`--read-lease-ms 0`): a follower that
//! acknowledged the confirmation may still campaign *itself* inside the lease (its own
//! vote is not refused), after a quick restart, a leadership transfer's `Elect`, or an
//! election nudge, and win with a stale follower's vote. `docs/API.md` lists the gaps.

use std::sync::{Arc, Mutex};

use openraft::error::{CheckIsLeaderError, RaftError};
use tokio::sync::oneshot;
use tokio::time::{Duration, Instant};

use super::{GroupKind, Raft};

/// Why this replica cannot serve a linearizable read now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadRefused {
    /// Not the leader (the leader it knows, if any).
    ForwardToLeader(Option<u64>),
    /// A leader that could not hear from a quorum.
    QuorumNotEnough,
    /// The replica is shutting down, or something else failed.
    Failed(String),
}

/// A read index: the log index a replica must have applied to answer a read that queued
/// before the confirmation.
type Waiter = oneshot::Sender<Result<u64, ReadRefused>>;

/// How long the planted bug trusts a confirmation, with no leadership check (simulation
/// only).
pub const PLANTED_REUSE_CONFIRMATION_MS: u64 = 60_000;

/// How a group's leader may answer linearizable reads besides a quorum round.
#[derive(Debug, Clone, Copy, Default)]
pub struct ReadPolicy {
    /// How long after a confirmation started its leader answers reads under a lease; 0:
    /// every read waits for a confirmation.
    pub lease_ms: u64,
    /// Planted bug: a lease of `PLANTED_REUSE_CONFIRMATION_MS` with no leadership check,
    /// as a lease without the clock bound that makes one safe (simulation only).
    pub planted_reuse: bool,
}

impl ReadPolicy {
    fn effective_lease_ms(&self) -> u64 {
        if self.planted_reuse {
            PLANTED_REUSE_CONFIRMATION_MS
        } else {
            self.lease_ms
        }
    }
}

/// A confirmed leadership: no other leader of the group until `until`, unless this
/// replica itself voted for one.
#[derive(Debug, Clone, Copy)]
struct Lease {
    until: Instant,
    term: u64,
    leader: u64,
    /// The confirmation's read index (the planted bug answers with it).
    index: u64,
}

#[derive(Default)]
struct Queue {
    waiting: Vec<Waiter>,
    /// A confirmation is running (a task drives the queue).
    running: bool,
    /// A confirmation is wanted though no read waits: reads under a lease renew it
    /// before it runs out, so steady reads never wait for a round.
    renew: bool,
    lease: Option<Lease>,
}

/// One group's queue of linearizable reads.
pub struct ReadBatcher<K> {
    queue: Arc<Mutex<Queue>>,
    kind: std::marker::PhantomData<fn() -> K>,
}

impl<K> Default for ReadBatcher<K> {
    fn default() -> Self {
        ReadBatcher {
            queue: Arc::default(),
            kind: std::marker::PhantomData,
        }
    }
}

fn refused(error: RaftError<u64, CheckIsLeaderError<u64, openraft::BasicNode>>) -> ReadRefused {
    match error {
        RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f)) => ReadRefused::ForwardToLeader(f.leader_id),
        RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(_)) => ReadRefused::QuorumNotEnough,
        other => ReadRefused::Failed(other.to_string()),
    }
}

/// How a confirmation was had, for the caller's metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Confirmed {
    /// Under the lease of an earlier confirmation.
    Lease,
    /// By a quorum round (shared with the reads queued with it).
    Round,
}

impl<K: GroupKind> ReadBatcher<K> {
    /// Returns once this replica has confirmed, after the call began, that it leads, and
    /// has applied everything committed before; the read index is that commit point (a
    /// follower that applied up to it may answer the read too).
    pub async fn confirm(&self, raft: &Raft<K>, policy: ReadPolicy) -> Result<(u64, Confirmed), ReadRefused> {
        if policy.effective_lease_ms() > 0 {
            if let Some(index) = self.under_lease(raft, policy).await {
                return Ok((index, Confirmed::Lease));
            }
        }
        let (tx, rx) = oneshot::channel();
        let start = {
            let mut queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
            queue.waiting.push(tx);
            !std::mem::replace(&mut queue.running, true)
        };
        if start {
            self.spawn_driver(raft, policy);
        }
        let index = rx
            .await
            .unwrap_or_else(|_| Err(ReadRefused::Failed("the read queue stopped".into())))?;
        Ok((index, Confirmed::Round))
    }

    fn spawn_driver(&self, raft: &Raft<K>, policy: ReadPolicy) {
        // Its own task: a reader that gives up must not strand the others.
        let (queue, raft) = (self.queue.clone(), raft.clone());
        tokio::spawn(async move { drive::<K>(queue, raft, policy).await });
    }

    /// The read index under a running lease, once applied here; None: confirm by a round.
    async fn under_lease(&self, raft: &Raft<K>, policy: ReadPolicy) -> Option<u64> {
        let lease_ms = policy.effective_lease_ms();
        let (lease, start) = {
            let mut queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
            let now = Instant::now();
            let lease = queue.lease.filter(|l| now < l.until)?;
            let half_gone = lease.until.saturating_duration_since(now) < Duration::from_millis(lease_ms / 2);
            queue.renew |= half_gone;
            (lease, half_gone && !std::mem::replace(&mut queue.running, true))
        };
        if start {
            self.spawn_driver(raft, policy);
        }
        if policy.planted_reuse {
            return Some(lease.index);
        }
        let index = leader_commit::<K>(raft, lease).await?;
        // The core answered after the check; the lease must still run then.
        if Instant::now() >= lease.until {
            return None;
        }
        if applied_index::<K>(raft) < index {
            let wait = lease.until.saturating_duration_since(Instant::now());
            raft.wait(Some(wait))
                .applied_index_at_least(Some(index), "lease read")
                .await
                .ok()?;
        }
        Some(index)
    }
}

fn applied_index<K: GroupKind>(raft: &Raft<K>) -> u64 {
    raft.metrics().borrow().last_applied.map_or(0, |id| id.index)
}

/// This replica's commit index, if its Raft core still leads in the lease's term and has
/// committed an entry of that term (so nothing committed earlier is above it).
async fn leader_commit<K: GroupKind>(raft: &Raft<K>, lease: Lease) -> Option<u64> {
    let (tx, rx) = oneshot::channel();
    raft.external_request(move |state| {
        let vote = state.vote_ref();
        let leading = vote.is_committed()
            && vote.leader_id().voted_for() == Some(lease.leader)
            && vote.leader_id().get_term() == lease.term;
        let committed = state
            .committed
            .filter(|c| leading && c.leader_id.term == lease.term)
            .map(|c| c.index);
        let _ = tx.send(committed);
    });
    rx.await.ok().flatten()
}

async fn drive<K: GroupKind>(queue: Arc<Mutex<Queue>>, raft: Raft<K>, policy: ReadPolicy) {
    loop {
        // Everyone taken here queued before the confirmation below starts.
        let waiters = {
            let mut queue = queue.lock().unwrap_or_else(|e| e.into_inner());
            if queue.waiting.is_empty() && !queue.renew {
                queue.running = false;
                return;
            }
            queue.renew = false;
            std::mem::take(&mut queue.waiting)
        };
        let started = Instant::now();
        let result = raft.ensure_linearizable().await.map_err(refused);
        let lease_ms = policy.effective_lease_ms();
        {
            let mut queue = queue.lock().unwrap_or_else(|e| e.into_inner());
            queue.lease = match &result {
                Ok(Some(read_log_id)) if lease_ms > 0 => Some(Lease {
                    until: started + Duration::from_millis(lease_ms),
                    term: read_log_id.leader_id.term,
                    leader: raft.metrics().borrow().id,
                    index: read_log_id.index,
                }),
                _ => None,
            };
        }
        let result = result.map(|read_log_id| read_log_id.map_or(0, |id| id.index));
        for waiter in waiters {
            let _ = waiter.send(result.clone());
        }
    }
}
