//! Linearizable reads of one group share leadership confirmations, and a leader whose
//! followers all acknowledged it lately answers reads under a lease.
//!
//! openraft's `ensure_linearizable` is a round of heartbeats to a quorum per call. Here a
//! read queues, and one confirmation serves every read that queued before it started:
//! the read index it takes (the leader's commit index once its leadership is confirmed)
//! is at least what any of those reads could have seen acknowledged, so each of them,
//! answered after the state machine applied up to it, is linearizable. A read arriving
//! while a confirmation is in flight waits for the next one: the running one may have
//! taken its read index before a write that completed before that read began.
//!
//! **The lease.** A follower that accepted an append from its leader refuses votes for
//! `election_timeout_max` after (openraft 0.9 `Engine::handle_vote_req`). The network
//! records, per follower, when the latest append it accepted in this term was *sent*
//! ([`FollowerAcks`]); the lease runs `lease_ms` from the oldest of those over **every**
//! voter of the group's configuration, not a quorum. While it runs, every voter but this
//! leader refuses votes for others, so a campaign's first try wins only this leader's
//! vote (the other candidates of that new term voted for themselves), and such a
//! candidate tries again only when its election timer fires, at least
//! `election_timeout_min` later, or its nudge (`Registry::spawn_monitor`), at least
//! `election_timeout_max` after it last knew a leader.
//! `lease_ms` is at most three quarters of that (`NodeConfig::validate`): no other replica
//! is elected inside the lease unless this leader votes for it, however many followers
//! campaign. A read under the lease asks this replica's Raft core (no network) whether it
//! still leads in that term, has committed an entry of it, and which voters its
//! configuration has; it takes the core's commit index; the core check is ordered after
//! any vote this leader granted. Heartbeats keep an active group's lease fresh; a quiet
//! group, or one with a voter out of reach, confirms by a round.
//!
//! What it assumes (docs/API.md): clocks that run at rates within the last quarter; a
//! replica that forgot whom it heard from (a restarted node, a re-created replica)
//! neither votes nor campaigns for `election_timeout_max` (`api::internal`,
//! `Group::holds_votes`); and followers whose election timeouts are at least the
//! leader's, which their batch answers say (`network::ELECTION_TIMEOUTS_HEADER`).
//! Elections this code starts (a transfer's `Elect`, the nudge) are first tries, covered
//! by the spacing above; their own checks only keep them rare.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use openraft::error::{CheckIsLeaderError, RaftError};
use tokio::sync::oneshot;
use tokio::time::{Duration, Instant};

use super::probe::{NodeEvent, Probe};
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

/// How a group's leader may answer linearizable reads besides a quorum round.
#[derive(Debug, Clone, Copy, Default)]
pub struct ReadPolicy {
    /// How long after the oldest of its followers' latest acceptances a leader answers
    /// reads under the lease; 0: every read waits for a confirmation round.
    pub lease_ms: u64,
    /// Planted bug: the lease ignores the followers' acceptances, so it runs for as long
    /// as the Raft core says this replica leads (simulation only; needs `lease_ms`).
    pub planted_ignore_acks: bool,
}

/// When each follower last accepted an append from this replica as its leader, by when
/// the append was sent: a follower starts refusing votes when it accepts, which is later.
/// A follower that voted for anyone in a later term rejects this leader's appends from
/// then on, so an acceptance of this term's append also says it had not voted past it.
#[derive(Debug, Default)]
pub struct FollowerAcks {
    acks: Mutex<HashMap<u64, Ack>>,
    /// Every follower's latest acceptance, whether or not it counts for the lease.
    accepted: Mutex<HashMap<u64, Ack>>,
}

#[derive(Debug, Clone, Copy)]
struct Ack {
    term: u64,
    sent: Instant,
}

impl FollowerAcks {
    /// `follower` accepted an append this replica sent at `sent` as the leader of `term`;
    /// `for_lease`: its election timeouts let the lease count on it.
    pub fn record(&self, follower: u64, term: u64, sent: Instant, for_lease: bool) {
        let newest = |acks: &Mutex<HashMap<u64, Ack>>| {
            let mut acks = acks.lock().unwrap_or_else(|e| e.into_inner());
            let ack = acks.entry(follower).or_insert(Ack { term, sent });
            if (term, sent) > (ack.term, ack.sent) {
                *ack = Ack { term, sent };
            }
        };
        newest(&self.accepted);
        if for_lease {
            newest(&self.acks);
        }
    }

    /// Whether `follower` accepted an append of `term` sent at `since` or later: it
    /// follows this leader now.
    pub fn accepted_since(&self, follower: u64, term: u64, since: Instant) -> bool {
        let accepted = self.accepted.lock().unwrap_or_else(|e| e.into_inner());
        accepted
            .get(&follower)
            .is_some_and(|a| a.term == term && a.sent >= since)
    }

    /// Drops what `follower` accepted: it no longer counts for the lease.
    pub fn forget(&self, follower: u64) {
        self.acks.lock().unwrap_or_else(|e| e.into_inner()).remove(&follower);
    }

    /// The oldest of the followers' latest acceptances in `term`: None if one of them
    /// accepted nothing of that term. No followers (a group of one voter): now.
    fn oldest(&self, term: u64, followers: &[u64]) -> Option<Instant> {
        let acks = self.acks.lock().unwrap_or_else(|e| e.into_inner());
        followers.iter().try_fold(Instant::now(), |oldest, follower| {
            let ack = acks.get(follower).filter(|a| a.term == term)?;
            Some(oldest.min(ack.sent))
        })
    }
}

#[derive(Default)]
struct Queue {
    waiting: Vec<Waiter>,
    /// A confirmation is running (a task drives the queue).
    running: bool,
}

/// One group's queue of linearizable reads.
pub struct ReadBatcher<K> {
    queue: Arc<Mutex<Queue>>,
    /// This replica's node.
    node_id: u64,
    acks: Arc<FollowerAcks>,
    /// Set while this replica hands its leadership over (`membership::transfer_leader`).
    lease_suspended: AtomicBool,
    probe: Probe,
    kind: std::marker::PhantomData<fn() -> K>,
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
    /// Under the lease.
    Lease,
    /// By a quorum round (shared with the reads queued with it).
    Round,
}

impl<K: GroupKind> ReadBatcher<K> {
    /// Whether `follower` accepted an append of `term` sent at `since` or later.
    pub fn follower_accepted_since(&self, follower: u64, term: u64, since: Instant) -> bool {
        self.acks.accepted_since(follower, term, since)
    }

    /// `acks` is what the group's network records (`FollowerAcks::record`).
    pub fn new(node_id: u64, acks: Arc<FollowerAcks>, probe: Probe) -> Self {
        ReadBatcher {
            queue: Arc::default(),
            node_id,
            acks,
            lease_suspended: AtomicBool::new(false),
            probe,
            kind: std::marker::PhantomData,
        }
    }

    /// Returns once this replica has confirmed, after the call began, that it leads, and
    /// has applied everything committed before; the read index is that commit point (a
    /// follower that applied up to it may answer the read too).
    pub async fn confirm(&self, raft: &Raft<K>, policy: ReadPolicy) -> Result<(u64, Confirmed), ReadRefused> {
        if policy.lease_ms > 0 {
            if let Some(index) = self.under_lease(raft, policy).await {
                self.probe.emit(|| NodeEvent::ReadConfirmed { lease: true });
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
            // Its own task: a reader that gives up must not strand the others.
            let (queue, raft) = (self.queue.clone(), raft.clone());
            tokio::spawn(async move { drive::<K>(queue, raft).await });
        }
        let index = rx
            .await
            .unwrap_or_else(|_| Err(ReadRefused::Failed("the read queue stopped".into())))?;
        self.probe.emit(|| NodeEvent::ReadConfirmed { lease: false });
        Ok((index, Confirmed::Round))
    }

    /// Stops (or resumes) answering reads under the lease: a leadership transfer's target
    /// campaigns inside it.
    pub fn suspend_lease(&self, suspended: bool) {
        self.lease_suspended.store(suspended, Ordering::SeqCst);
    }

    /// The read index under the lease, once applied here; None: confirm by a round.
    async fn under_lease(&self, raft: &Raft<K>, policy: ReadPolicy) -> Option<u64> {
        let check = leader_check::<K>(raft, self.node_id).await?;
        // After the core check: a read whose check came before a transfer suspended the
        // lease was answered before the target could campaign.
        if self.lease_suspended.load(Ordering::SeqCst) {
            return None;
        }
        let oldest = match policy.planted_ignore_acks {
            true => Some(Instant::now()),
            false => self.acks.oldest(check.term, &check.followers),
        };
        let until = oldest? + Duration::from_millis(policy.lease_ms);
        // The core answered before now: the lease must still run now.
        if Instant::now() >= until {
            return None;
        }
        if applied_index::<K>(raft) < check.committed {
            let wait = until.saturating_duration_since(Instant::now());
            raft.wait(Some(wait))
                .applied_index_at_least(Some(check.committed), "lease read")
                .await
                .ok()?;
        }
        Some(check.committed)
    }
}

fn applied_index<K: GroupKind>(raft: &Raft<K>) -> u64 {
    raft.metrics().borrow().last_applied.map_or(0, |id| id.index)
}

/// What this replica's Raft core says when it leads and has committed an entry of its
/// term (so nothing committed earlier is above its commit index).
struct LeaderCheck {
    term: u64,
    committed: u64,
    /// Every other voter of its configuration (both halves of a joint one).
    followers: Vec<u64>,
}

async fn leader_check<K: GroupKind>(raft: &Raft<K>, node_id: u64) -> Option<LeaderCheck> {
    let (tx, rx) = oneshot::channel();
    raft.external_request(move |state| {
        let vote = state.vote_ref();
        let term = vote.leader_id().get_term();
        let leading = vote.is_committed() && vote.leader_id().voted_for() == Some(node_id);
        let check = state
            .committed
            .filter(|c| leading && c.leader_id.term == term)
            .map(|c| {
                let mut followers: Vec<u64> = (state.membership_state.effective().membership().get_joint_config())
                    .iter()
                    .flatten()
                    .copied()
                    .filter(|v| *v != node_id)
                    .collect();
                followers.sort_unstable();
                followers.dedup();
                LeaderCheck {
                    term,
                    committed: c.index,
                    followers,
                }
            });
        let _ = tx.send(check);
    });
    rx.await.ok().flatten()
}

/// How long a confirmation waits for this replica to apply up to its read index; past
/// it, the reads queued on it are refused and the queue moves on (openraft's
/// `ensure_linearizable` waits for good, which would park every later read of the group
/// behind a stalled apply).
pub const READ_APPLY_WAIT_MS: u64 = 5_000;

/// One leadership confirmation by a quorum round, then the wait for apply.
async fn confirm_and_apply<K: GroupKind>(raft: &Raft<K>) -> Result<u64, ReadRefused> {
    let (read_log_id, applied) = raft.get_read_log_id().await.map_err(refused)?;
    let index = read_log_id.map_or(0, |id| id.index);
    if applied.map_or(0, |id| id.index) < index {
        raft.wait(Some(Duration::from_millis(READ_APPLY_WAIT_MS)))
            .applied_index_at_least(Some(index), "linearizable read")
            .await
            .map_err(|e| ReadRefused::Failed(format!("applying up to the read index {index}: {e}")))?;
    }
    Ok(index)
}

async fn drive<K: GroupKind>(queue: Arc<Mutex<Queue>>, raft: Raft<K>) {
    loop {
        // Everyone taken here queued before the confirmation below starts.
        let waiters = {
            let mut queue = queue.lock().unwrap_or_else(|e| e.into_inner());
            if queue.waiting.is_empty() {
                queue.running = false;
                return;
            }
            std::mem::take(&mut queue.waiting)
        };
        let result = confirm_and_apply::<K>(&raft).await;
        for waiter in waiters {
            let _ = waiter.send(result.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lease_counts_from_the_oldest_latest_acceptance_of_every_follower() {
        let acks = FollowerAcks::default();
        // In the past: an acceptance is never of an append sent later than now.
        let t0 = Instant::now() - Duration::from_secs(1);
        let at = |ms| t0 + Duration::from_millis(ms);
        assert_eq!(acks.oldest(3, &[2, 3]), None, "nothing accepted yet");
        acks.record(2, 3, at(10), true);
        assert_eq!(acks.oldest(3, &[2, 3]), None, "one follower has accepted nothing");
        acks.record(3, 3, at(20), true);
        assert_eq!(acks.oldest(3, &[2, 3]), Some(at(10)));
        acks.record(2, 3, at(30), true);
        assert_eq!(acks.oldest(3, &[2, 3]), Some(at(20)), "the latest acceptance counts");
        acks.record(2, 3, at(5), true);
        assert_eq!(
            acks.oldest(3, &[2, 3]),
            Some(at(20)),
            "a late answer to an older append"
        );
        assert_eq!(acks.oldest(4, &[2, 3]), None, "acceptances of another term");
        acks.record(2, 4, at(40), true);
        assert_eq!(acks.oldest(4, &[2]), Some(at(40)));
        assert!(acks.oldest(4, &[]).is_some(), "a group of one voter");
    }

    #[test]
    fn acceptances_outside_the_lease_still_show_who_follows() {
        let acks = FollowerAcks::default();
        let t0 = Instant::now() - Duration::from_secs(1);
        let at = |ms| t0 + Duration::from_millis(ms);
        acks.record(2, 3, at(10), false);
        assert_eq!(acks.oldest(3, &[2]), None, "not counted for the lease");
        assert!(acks.accepted_since(2, 3, at(10)));
        assert!(!acks.accepted_since(2, 3, at(11)), "sent before the point asked about");
        assert!(!acks.accepted_since(2, 4, at(0)), "another term");
        assert!(!acks.accepted_since(3, 3, at(0)), "another follower");
    }
}
