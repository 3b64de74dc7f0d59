//! openraft plumbing shared by every group, generic over what a group's log carries and
//! how it applies it ([`GroupKind`]): sled log storage with group commit, the generic
//! sled-backed state machine store, the group-tagged HTTP network, the group registry,
//! admin requests and the seeded runtime. Nothing here knows keys, shards or the
//! placement map: `crate::shard` and `crate::placement` each implement a kind.

// openraft's storage traits fix the error type at `StorageError`, which is large; our
// helpers return it unchanged rather than boxing and unboxing at every trait boundary.
#![allow(clippy::result_large_err)]

pub mod batch;
pub mod log_store;
pub mod membership;
pub mod network;
pub mod probe;
pub mod quiet;
pub mod read_batch;
pub mod registry;
pub mod runtime;
pub mod state_machine;
pub mod transport;
pub mod validate;
pub mod wal;

use std::io::Cursor;

use openraft::{AppData, AppDataResponse, BasicNode, RaftTypeConfig};

pub use state_machine::{AppliedView, GroupState};

/// A Raft group: 0 is the placement driver, every other id is the shard of that id.
pub type GroupId = u64;

/// What one kind of group is: its openraft type config (the command its log carries and
/// the reply applying it gives), its state machine and what the node reads of that state
/// without going through Raft.
pub trait GroupKind: Sized + Send + Sync + 'static {
    type Config: RaftTypeConfig<
        NodeId = u64,
        Node = BasicNode,
        Entry = openraft::Entry<Self::Config>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = runtime::SeamRuntime,
        Responder = openraft::impls::OneshotResponder<Self::Config>,
        D: Command,
        R: Default,
    >;
    type State: GroupState<Self>;
    /// Shared with the node: the applied state's figures and reads.
    type View: AppliedView;
    /// Names the kind in logs.
    const NAME: &'static str;
    /// Whether leaders let followers learn bare commit-point updates from the next message
    /// (`network::CommitHold`). Off for kinds whose followers' applied state others read
    /// soon after a write.
    const HOLDS_COMMIT_UPDATES: bool = false;

    /// The command that splits a group as planned (`None`: this kind's groups never split).
    fn split_command(_plan: membership::SplitPlan) -> Option<Cmd<Self>> {
        None
    }

    /// What a split command's reply says: done, or why it was refused.
    fn split_outcome(_reply: &Reply<Self>) -> Result<(), String> {
        Err(format!("{} groups do not split", Self::NAME))
    }
}

/// A command in a group's log, as received from a peer: checked before openraft sees it.
pub trait Command: AppData + std::fmt::Display {
    /// Why this command could never have come from an honest leader, if so.
    fn check(&self, limits: &validate::Limits) -> Result<(), String>;
}

pub type Config<K> = <K as GroupKind>::Config;
pub type Cmd<K> = <Config<K> as RaftTypeConfig>::D;
pub type Reply<K> = <Config<K> as RaftTypeConfig>::R;
pub type Raft<K> = openraft::Raft<Config<K>>;
pub type Entry<K> = openraft::Entry<Config<K>>;
pub type LogId = openraft::LogId<u64>;
pub type StorageError = openraft::StorageError<u64>;
pub type StoredMembership = openraft::StoredMembership<u64, openraft::BasicNode>;
pub type SnapshotMeta = openraft::SnapshotMeta<u64, openraft::BasicNode>;

/// Requirements openraft puts on replies, restated for kinds' reply types.
pub trait ReplyData: AppDataResponse + Default {}
impl<T: AppDataResponse + Default> ReplyData for T {}

/// Key prefix of everything a group stores in a shared tree: its id, big-endian, so one
/// group's keys are contiguous and ordered.
pub fn group_prefix(group: GroupId) -> [u8; 8] {
    group.to_be_bytes()
}

/// Wraps a storage failure the way openraft reports it.
pub fn storage_io_error(e: impl std::error::Error + 'static) -> StorageError {
    openraft::StorageIOError::write(&e).into()
}

/// How long a write may still take to resolve after the replica that proposed it left
/// the term it proposed in (a new leader usually commits or truncates it within a few
/// heartbeats).
pub const LOST_LEADERSHIP_GRACE_MS: u64 = 2_000;

/// A write whose replica lost its leadership and did not hear what became of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutcomeLost {
    /// The leader this replica knows of now.
    pub leader: Option<u64>,
}

/// What openraft publishes about a replica's role: its vote, state, leader and
/// membership. Unlike `Raft::metrics()`, which openraft sends after every pass of its
/// loop (several times per entry), this changes only when one of those does, so a task
/// waiting on it is not woken per entry.
pub type ServerMetrics = tokio::sync::watch::Receiver<openraft::metrics::RaftServerMetrics<u64, BasicNode>>;

/// Awaits `write`, a `client_write` proposed on the replica `metrics` describes, but not
/// forever. openraft 0.9 answers a write when its entry is applied on this replica or
/// truncated from its log, and never when a snapshot from a new leader covers an entry
/// it did not have: the follower purges its own entry without truncating it. (The
/// simulation found that: a shard's proposal queue waited on such an answer and the
/// shard took no write on that node again.) So once this replica is no longer leading in
/// the term it proposed in, the write has [`LOST_LEADERSHIP_GRACE_MS`] more to resolve;
/// after that its outcome is unknown to the caller, who must not propose it again.
pub async fn await_write<T>(
    mut metrics: ServerMetrics,
    write: impl std::future::Future<Output = T>,
) -> Result<T, OutcomeLost> {
    let term = metrics.borrow().vote.leader_id.term;
    let leading_in_term = |m: &openraft::metrics::RaftServerMetrics<u64, BasicNode>| {
        m.vote.leader_id.term == term && m.state == openraft::ServerState::Leader
    };
    tokio::pin!(write);
    while leading_in_term(&metrics.borrow_and_update()) {
        tokio::select! {
            biased;
            out = &mut write => return Ok(out),
            changed = metrics.changed() => {
                if changed.is_err() {
                    // Shut down: openraft answers the write with an error.
                    return Ok(write.await);
                }
            }
        }
    }
    let grace = tokio::time::sleep(std::time::Duration::from_millis(LOST_LEADERSHIP_GRACE_MS));
    tokio::select! {
        biased;
        out = &mut write => Ok(out),
        _ = grace => Err(OutcomeLost {
            leader: metrics.borrow().current_leader,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::metrics::RaftServerMetrics;
    use openraft::{ServerState, Vote};
    use std::time::Duration;
    use tokio::sync::{oneshot, watch};

    fn leader(term: u64) -> RaftServerMetrics<u64, BasicNode> {
        RaftServerMetrics {
            id: 1,
            vote: Vote::new_committed(term, 1),
            state: ServerState::Leader,
            current_leader: Some(1),
            ..Default::default()
        }
    }

    /// A leader waits on its write as long as it leads in that term; once it does not, the
    /// write still resolves within the grace, or its outcome is lost (never a result).
    #[tokio::test(start_paused = true)]
    async fn a_write_outlives_its_leadership_by_the_grace_only() {
        let (tx, rx) = watch::channel(leader(3));
        let (answer, answered) = oneshot::channel::<u8>();
        let waiting = tokio::spawn(await_write(rx.clone(), answered));
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert!(!waiting.is_finished(), "still leading: keep waiting");
        answer.send(7).unwrap();
        assert_eq!(waiting.await.unwrap().unwrap(), Ok(7));

        // Resolved within the grace after the leadership moved on: its answer stands.
        let (answer, answered) = oneshot::channel::<u8>();
        let waiting = tokio::spawn(await_write(rx.clone(), answered));
        tokio::task::yield_now().await;
        tx.send_modify(|m| {
            m.vote = Vote::new(4, 2);
            m.state = ServerState::Follower;
            m.current_leader = Some(2);
        });
        tokio::time::sleep(Duration::from_millis(LOST_LEADERSHIP_GRACE_MS / 2)).await;
        answer.send(8).unwrap();
        assert_eq!(waiting.await.unwrap().unwrap(), Ok(8));

        // Never answered (a snapshot covered it): lost, naming the leader known now.
        tx.send_replace(leader(5));
        let (_answer, answered) = oneshot::channel::<u8>();
        let waiting = tokio::spawn(await_write(rx.clone(), answered));
        tokio::task::yield_now().await;
        tx.send_modify(|m| m.vote = Vote::new(6, 3));
        tokio::time::sleep(Duration::from_millis(LOST_LEADERSHIP_GRACE_MS + 1)).await;
        assert!(waiting.is_finished(), "no answer past the grace: given up");
        let lost = waiting.await.unwrap().unwrap_err();
        assert_eq!(lost, OutcomeLost { leader: Some(1) });
    }
}
