//! Linearizable reads of one group share leadership confirmations.
//!
//! openraft's `ensure_linearizable` is a round of heartbeats to a quorum per call. Here a
//! read queues, and one confirmation serves every read that queued before it started:
//! the read index it takes (the leader's commit index once its leadership is confirmed)
//! is at least what any of those reads could have seen acknowledged, so each of them,
//! answered after the state machine applied up to it, is linearizable. A read arriving
//! while a confirmation is in flight waits for the next one: the running one may have
//! taken its read index before a write that completed before that read began.

use std::sync::{Arc, Mutex};

use openraft::error::{CheckIsLeaderError, RaftError};
use tokio::sync::oneshot;

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

/// How long the planted bug trusts a confirmation (simulation only).
pub const PLANTED_REUSE_CONFIRMATION_MS: u64 = 60_000;

#[derive(Default)]
struct Queue {
    waiting: Vec<Waiter>,
    /// A confirmation is running (a task drives the queue).
    running: bool,
    /// When the last confirmation succeeded, and its read index (for the planted bug only).
    confirmed: Option<(tokio::time::Instant, u64)>,
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

impl<K: GroupKind> ReadBatcher<K> {
    /// Returns once this replica has confirmed, after the call began, that it leads, and
    /// has applied everything committed before; the read index is that commit point (a
    /// follower that applied up to it may answer the read too). `planted_reuse` plants the bug of trusting
    /// a confirmation for a while after it succeeded, as a lease would without the clock
    /// bound that makes one safe (simulation only).
    pub async fn confirm(&self, raft: &Raft<K>, planted_reuse: bool) -> Result<u64, ReadRefused> {
        let (tx, rx) = oneshot::channel();
        let start = {
            let mut queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
            let reuse = std::time::Duration::from_millis(PLANTED_REUSE_CONFIRMATION_MS);
            if let Some((at, index)) = queue.confirmed.filter(|_| planted_reuse) {
                if at.elapsed() < reuse {
                    return Ok(index);
                }
            }
            queue.waiting.push(tx);
            !std::mem::replace(&mut queue.running, true)
        };
        if start {
            // Its own task: a reader that gives up must not strand the others.
            let (queue, raft) = (self.queue.clone(), raft.clone());
            tokio::spawn(async move { drive::<K>(queue, raft).await });
        }
        rx.await
            .unwrap_or_else(|_| Err(ReadRefused::Failed("the read queue stopped".into())))
    }
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
        let result = raft
            .ensure_linearizable()
            .await
            .map(|read_log_id| read_log_id.map_or(0, |id| id.index))
            .map_err(refused);
        if let Ok(index) = result {
            queue.lock().unwrap_or_else(|e| e.into_inner()).confirmed = Some((tokio::time::Instant::now(), index));
        }
        for waiter in waiters {
            let _ = waiter.send(result.clone());
        }
    }
}
