//! Many client writes of one shard in one Raft entry.
//!
//! openraft 0.9 turns every `client_write` into its own entry: its own append, flush,
//! replication, commit and apply, on every replica. Here a write queues on its shard's
//! leader, and one proposal at a time per shard carries every write queued meanwhile as a
//! [`super::store::ShardCommand::Batch`]: under load, one entry serves many clients.
//! - The batch is applied in one apply call, in queue order, so in one atomic sled batch:
//!   all of it or none of it survives a crash.
//! - Each write gets its own result, in the order it queued, or, if the proposal's outcome
//!   is unknown (a leader change, an error), "unknown": never another write's result, and a
//!   batch is never proposed again (a write applied twice is worse than an unknown one).
//! - A client that stops waiting (its deadline) loses only its answer: the write stays in
//!   the batch, and its outcome is unknown to it.

use std::future::Future;
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

use super::{KvOp, KvResult};
use crate::raft::validate::Limits;

/// Most writes one proposal carries.
pub const OPS_PER_PROPOSAL_MAX: usize = 256;
/// What a write adds to an entry beyond its key and value (tags, lengths, precondition;
/// its encoding takes less).
pub const OP_OVERHEAD_BYTES: usize = 64;

/// Why a proposal's outcome is unknown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unknown {
    /// Leadership moved while it was proposed (to this node, if known).
    LeaderChanged(Option<u64>),
    Error(String),
}

/// Proposes a batch of writes and returns each one's result, in order.
pub trait Proposer: Send + Sync + 'static {
    fn propose(&self, ops: Vec<KvOp>) -> impl Future<Output = Result<Vec<KvResult>, Unknown>> + Send;
}

type Waiter = oneshot::Sender<Result<KvResult, Unknown>>;

#[derive(Default)]
struct Queue {
    waiting: std::collections::VecDeque<(KvOp, Waiter)>,
    /// A proposal is in flight (a task drives the queue).
    running: bool,
}

/// The bytes a write adds to a proposal.
pub fn op_bytes(op: &KvOp) -> usize {
    OP_OVERHEAD_BYTES
        + match op {
            KvOp::Put { key, value, .. } => key.len() + value.len(),
            KvOp::Delete { key, .. } => key.len(),
        }
}

/// The most bytes a batch may hold: what one write of the largest key and value may,
/// so a batch entry is never larger than the entries Raft's append limits are sized for.
pub fn batch_bytes_max(limits: &Limits) -> usize {
    limits.max_key_bytes + limits.max_value_bytes
}

/// Whether `ops` fit in one proposal (what a peer's batch entry is checked against too).
/// One write always does: it is checked against its own limits.
pub fn batch_fits(ops: &[KvOp], limits: &Limits) -> bool {
    ops.len() <= OPS_PER_PROPOSAL_MAX
        && (ops.len() <= 1 || ops.iter().map(op_bytes).sum::<usize>() <= batch_bytes_max(limits))
}

/// One shard's queue of writes waiting to be proposed.
#[derive(Default)]
pub struct ProposalQueue {
    queue: Arc<Mutex<Queue>>,
}

impl ProposalQueue {
    fn lock(queue: &Mutex<Queue>) -> std::sync::MutexGuard<'_, Queue> {
        queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues `op` and returns its result once the proposal carrying it is applied.
    /// `planted_misroute` plants the bug of handing each write its neighbour's result
    /// (simulation only).
    pub async fn submit<P: Proposer>(
        &self,
        op: KvOp,
        proposer: P,
        limits: Limits,
        planted_misroute: bool,
    ) -> Result<KvResult, Unknown> {
        let (tx, rx) = oneshot::channel();
        let start = {
            let mut queue = Self::lock(&self.queue);
            queue.waiting.push_back((op, tx));
            !std::mem::replace(&mut queue.running, true)
        };
        if start {
            // Its own task: a client that gives up must not strand the writes queued behind it.
            let queue = self.queue.clone();
            tokio::spawn(async move { drive(queue, proposer, batch_bytes_max(&limits), planted_misroute).await });
        }
        rx.await
            .unwrap_or_else(|_| Err(Unknown::Error("the proposal queue stopped".into())))
    }

    /// Writes waiting, not yet proposed.
    #[cfg(test)]
    pub fn waiting(&self) -> usize {
        Self::lock(&self.queue).waiting.len()
    }
}

/// Takes the next batch: in queue order, up to the limits, at least one write.
fn next_batch(queue: &mut Queue, bytes_max: usize) -> (Vec<KvOp>, Vec<Waiter>) {
    let (mut ops, mut waiters, mut bytes) = (Vec::new(), Vec::new(), 0);
    while let Some((op, _)) = queue.waiting.front() {
        let size = op_bytes(op);
        if !ops.is_empty() && (ops.len() == OPS_PER_PROPOSAL_MAX || bytes + size > bytes_max) {
            break;
        }
        let (op, waiter) = queue.waiting.pop_front().expect("a front");
        bytes += size;
        ops.push(op);
        waiters.push(waiter);
    }
    (ops, waiters)
}

async fn drive<P: Proposer>(queue: Arc<Mutex<Queue>>, proposer: P, bytes_max: usize, planted_misroute: bool) {
    loop {
        let (ops, waiters) = {
            let mut queue = ProposalQueue::lock(&queue);
            if queue.waiting.is_empty() {
                queue.running = false;
                return;
            }
            next_batch(&mut queue, bytes_max)
        };
        let count = ops.len();
        match proposer.propose(ops).await {
            Ok(mut results) if results.len() == count => {
                if planted_misroute {
                    results.rotate_left(1);
                }
                for (waiter, result) in waiters.into_iter().zip(results) {
                    let _ = waiter.send(Ok(result));
                }
            }
            Ok(results) => {
                let why = Unknown::Error(format!("{} results for a batch of {count} writes", results.len()));
                for waiter in waiters {
                    let _ = waiter.send(Err(why.clone()));
                }
            }
            Err(why) => {
                for waiter in waiters {
                    let _ = waiter.send(Err(why.clone()));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shard::Precondition;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;
    use tokio::sync::Notify;

    const LIMITS: Limits = Limits {
        max_key_bytes: 1024,
        max_value_bytes: 1 << 20,
    };

    fn put(key: &str) -> KvOp {
        KvOp::Put {
            key: key.as_bytes().to_vec(),
            value: vec![0; 10],
            precondition: Precondition::None,
            history_versions: 8,
        }
    }

    /// Answers each write with a version naming its place in everything proposed, and
    /// holds the first proposal until released.
    #[derive(Clone, Default)]
    struct Fake {
        proposed: Arc<Mutex<Vec<Vec<KvOp>>>>,
        seen: Arc<AtomicUsize>,
        release: Arc<Notify>,
        fail: Option<Unknown>,
    }

    impl Proposer for Fake {
        fn propose(&self, ops: Vec<KvOp>) -> impl Future<Output = Result<Vec<KvResult>, Unknown>> + Send {
            let me = self.clone();
            async move {
                let first = me.proposed.lock().unwrap().is_empty();
                me.proposed.lock().unwrap().push(ops.clone());
                if first {
                    me.release.notified().await;
                }
                if let Some(why) = me.fail {
                    return Err(why);
                }
                Ok(ops
                    .iter()
                    .map(|_| KvResult::Written {
                        version: me.seen.fetch_add(1, Ordering::SeqCst) as u64 + 1,
                    })
                    .collect())
            }
        }
    }

    fn spawn_submit(
        queue: &Arc<ProposalQueue>,
        fake: &Fake,
        key: &'static str,
    ) -> tokio::task::JoinHandle<Result<KvResult, Unknown>> {
        let (queue, fake) = (queue.clone(), fake.clone());
        tokio::spawn(async move { queue.submit(put(key), fake, LIMITS, false).await })
    }

    async fn settle() {
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test]
    async fn writes_queued_behind_a_proposal_share_the_next_and_each_gets_its_own_result() {
        let queue = Arc::new(ProposalQueue::default());
        let fake = Fake::default();
        let first = spawn_submit(&queue, &fake, "a");
        settle().await;
        let rest: Vec<_> = ["b", "c", "d"]
            .into_iter()
            .map(|key| spawn_submit(&queue, &fake, key))
            .collect();
        settle().await;
        assert_eq!(queue.waiting(), 3, "one proposal in flight per shard: the rest wait");
        fake.release.notify_one();
        assert_eq!(first.await.unwrap(), Ok(KvResult::Written { version: 1 }));
        let mut versions = Vec::new();
        for handle in rest {
            match handle.await.unwrap() {
                Ok(KvResult::Written { version }) => versions.push(version),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(versions, vec![2, 3, 4], "each write its own result, in queue order");
        let proposed = fake.proposed.lock().unwrap().clone();
        assert_eq!(proposed, vec![vec![put("a")], vec![put("b"), put("c"), put("d")]]);
    }

    #[tokio::test]
    async fn an_unknown_outcome_reaches_every_write_of_the_batch_and_nothing_is_proposed_again() {
        let queue = Arc::new(ProposalQueue::default());
        let fake = Fake {
            fail: Some(Unknown::LeaderChanged(Some(2))),
            ..Fake::default()
        };
        let handles: Vec<_> = ["a", "b"]
            .into_iter()
            .map(|key| spawn_submit(&queue, &fake, key))
            .collect();
        settle().await;
        fake.release.notify_one();
        for handle in handles {
            assert_eq!(handle.await.unwrap(), Err(Unknown::LeaderChanged(Some(2))));
        }
        let proposals: usize = fake.proposed.lock().unwrap().iter().map(Vec::len).sum();
        assert_eq!(proposals, 2, "each write proposed once, never again");
    }

    #[tokio::test(start_paused = true)]
    async fn a_write_whose_client_gave_up_takes_no_other_writes_result() {
        let queue = Arc::new(ProposalQueue::default());
        let fake = Fake::default();
        let first = spawn_submit(&queue, &fake, "a");
        settle().await;
        // "b" gives up while queued; "c" waits.
        let gave_up = {
            let (queue, fake) = (queue.clone(), fake.clone());
            tokio::time::timeout(Duration::from_millis(10), async move {
                queue.submit(put("b"), fake, LIMITS, false).await
            })
        };
        let waits = spawn_submit(&queue, &fake, "c");
        assert!(gave_up.await.is_err(), "the client's deadline passed");
        fake.release.notify_one();
        assert_eq!(first.await.unwrap(), Ok(KvResult::Written { version: 1 }));
        // "b" stayed in the batch (it was handed over before its client left): "c" still
        // gets its own result, the batch's second.
        assert_eq!(waits.await.unwrap(), Ok(KvResult::Written { version: 3 }));
        assert_eq!(fake.proposed.lock().unwrap()[1], vec![put("b"), put("c")]);
    }

    #[test]
    fn batches_respect_the_count_and_byte_limits() {
        let bytes_max = batch_bytes_max(&LIMITS);
        let mut queue = Queue::default();
        for _ in 0..OPS_PER_PROPOSAL_MAX + 5 {
            let (tx, _) = oneshot::channel();
            queue.waiting.push_back((put("k"), tx));
        }
        let (ops, _) = next_batch(&mut queue, bytes_max);
        assert_eq!(ops.len(), OPS_PER_PROPOSAL_MAX);
        assert!(batch_fits(&ops, &LIMITS));

        let big = KvOp::Put {
            key: b"big".to_vec(),
            value: vec![0; LIMITS.max_value_bytes],
            precondition: Precondition::None,
            history_versions: 8,
        };
        let mut queue = Queue::default();
        for op in [big.clone(), put("a"), big.clone()] {
            let (tx, _) = oneshot::channel();
            queue.waiting.push_back((op, tx));
        }
        let sizes: Vec<usize> =
            std::iter::from_fn(|| (!queue.waiting.is_empty()).then(|| next_batch(&mut queue, bytes_max).0.len()))
                .collect();
        assert_eq!(
            sizes,
            vec![2, 1],
            "a small write fits beside a full-size one, a second full-size one does not"
        );
        assert!(batch_fits(std::slice::from_ref(&big), &LIMITS));
        assert!(!batch_fits(&[big.clone(), big.clone()], &LIMITS));
    }
}
