//! The shard kind of Raft group: its log's commands, and its state in sled around the
//! pure [`apply_op`].
//!
//! Layout in the `sm` tree under the group's prefix (tag 0 is the Raft store's applied
//! meta): `0x01 ‖ key` one [`KeyRecord`] per key, `0x03` the [`ShardMeta`] (live counts and
//! range). A write outside the applied range is refused with [`KvResult::WrongShard`] and
//! changes nothing. A split moves the upper records to the child's prefix, then writes the
//! child's meta (last: a child's records without it are no state, see
//! `holds_whole_state`) and shrinks this range, all in the apply call of the split's own
//! log entry.

// sled and openraft errors pass through unchanged (see `crate::raft`).
#![allow(clippy::result_large_err)]

use std::collections::BTreeMap;
use std::io::Cursor;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::propose::{self, ProposalQueue, Proposer, Unknown};
use super::{apply_op, key_hash, KeyRecord, KvOp, KvResult};
use crate::codec;
use crate::raft::membership::SplitPlan;
use crate::raft::registry::Group;
use crate::raft::state_machine::{state_key, WriteBatch};
use crate::raft::validate::Limits;
use crate::raft::{storage_io_error, AppliedView, Command, GroupId, GroupKind, GroupState, StorageError};

const TAG_RECORD: u8 = 1;
const TAG_SHARD_META: u8 = 3;

/// Shard groups.
pub struct ShardKind;

openraft::declare_raft_types!(
    pub ShardConfig:
        D = ShardCommand,
        R = ShardReply,
        AsyncRuntime = crate::raft::runtime::SeamRuntime,
);

impl GroupKind for ShardKind {
    type Config = ShardConfig;
    type State = ShardState;
    type View = ShardView;
    const NAME: &'static str = "shard";
    const HOLDS_COMMIT_UPDATES: bool = true;

    fn split_command(plan: SplitPlan) -> Option<ShardCommand> {
        Some(ShardCommand::Split(plan))
    }

    fn split_outcome(reply: &ShardReply) -> Result<(), String> {
        match reply {
            ShardReply::Split(SplitResult::Done { .. }) => Ok(()),
            ShardReply::Split(SplitResult::Rejected { reason }) => Err(reason.clone()),
            other => Err(format!("unexpected answer {other:?}")),
        }
    }
}

pub type ShardGroup = Group<ShardKind>;

/// What a shard's log carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ShardCommand {
    Kv(KvOp),
    /// Split this shard as planned.
    Split(SplitPlan),
    /// Several writes, applied in order in one apply call (see `propose.rs`).
    Batch(Vec<KvOp>),
}

/// Proposes a batch through this replica (its leader): one entry, one result per write.
pub struct ShardProposer {
    pub raft: crate::raft::Raft<ShardKind>,
    pub writes_per_proposal: metrics::Histogram,
    /// Planted bug (simulation only): see `crate::node::PlantedBug::UnboundedWriteWait`.
    pub planted_unbounded_wait: bool,
}

impl Proposer for ShardProposer {
    fn propose(&self, ops: Vec<KvOp>) -> impl std::future::Future<Output = Result<Vec<KvResult>, Unknown>> + Send {
        let raft = self.raft.clone();
        let planted_unbounded_wait = self.planted_unbounded_wait;
        self.writes_per_proposal.record(ops.len() as f64);
        async move {
            let count = ops.len();
            let command = match <[KvOp; 1]>::try_from(ops) {
                Ok([op]) => ShardCommand::Kv(op),
                Err(ops) => ShardCommand::Batch(ops),
            };
            if planted_unbounded_wait {
                return write_outcome(raft.client_write(command).await, count);
            }
            match crate::raft::await_write(raft.server_metrics(), raft.client_write(command)).await {
                Ok(written) => write_outcome(written, count),
                Err(lost) => Err(Unknown::LeaderChanged(lost.leader)),
            }
        }
    }
}

/// What a proposal of `count` writes came to: one result per write, or why its outcome is
/// unknown.
pub fn write_outcome(
    written: Result<openraft::raft::ClientWriteResponse<ShardConfig>, ClientWriteFailure>,
    count: usize,
) -> Result<Vec<KvResult>, Unknown> {
    match written {
        Ok(written) => match written.data {
            ShardReply::Kv(result) if count == 1 => Ok(vec![result]),
            ShardReply::Batch(results) => Ok(results),
            other => Err(Unknown::Error(format!("unexpected apply result {other:?}"))),
        },
        Err(openraft::error::RaftError::APIError(openraft::error::ClientWriteError::ForwardToLeader(f))) => {
            Err(Unknown::LeaderChanged(f.leader_id))
        }
        Err(e) => Err(Unknown::Error(e.to_string())),
    }
}

/// How `client_write` on a shard fails.
pub type ClientWriteFailure =
    openraft::error::RaftError<u64, openraft::error::ClientWriteError<u64, openraft::BasicNode>>;

impl std::fmt::Display for ShardCommand {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ShardCommand::Kv(KvOp::Put { key, value, .. }) => {
                write!(f, "put({}B key, {}B value)", key.len(), value.len())
            }
            ShardCommand::Kv(KvOp::Delete { key, .. }) => write!(f, "delete({}B key)", key.len()),
            ShardCommand::Split(plan) => write!(f, "split(at {:#x}, child {})", plan.at, plan.child),
            ShardCommand::Batch(ops) => write!(
                f,
                "batch({} writes, {}B)",
                ops.len(),
                ops.iter().map(propose::op_bytes).sum::<usize>()
            ),
        }
    }
}

impl Command for ShardCommand {
    fn check(&self, limits: &Limits) -> Result<(), String> {
        match self {
            ShardCommand::Kv(op) => op
                .validate(limits.max_key_bytes, limits.max_value_bytes)
                .map_err(|e| e.to_string()),
            ShardCommand::Split(plan) => {
                let inside = plan.at > plan.start && plan.end.is_none_or(|end| plan.at < end);
                inside
                    .then_some(())
                    .ok_or_else(|| "a split point outside its range".into())
            }
            ShardCommand::Batch(ops) => {
                if ops.is_empty() || !propose::batch_fits(ops, limits) {
                    return Err(format!(
                        "a batch of {} writes ({}B) past the limits of {} writes and {}B",
                        ops.len(),
                        ops.iter().map(propose::op_bytes).sum::<usize>(),
                        propose::OPS_PER_PROPOSAL_MAX,
                        propose::batch_bytes_max(limits)
                    ));
                }
                ops.iter()
                    .try_for_each(|op| op.validate(limits.max_key_bytes, limits.max_value_bytes))
                    .map_err(|e| e.to_string())
            }
        }
    }
}

/// The outcome of a [`ShardCommand::Split`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SplitResult {
    Done { child: GroupId },
    Rejected { reason: String },
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum ShardReply {
    /// Blank and membership entries.
    #[default]
    Empty,
    Kv(KvResult),
    Split(SplitResult),
    /// One result per write of a [`ShardCommand::Batch`], in order.
    Batch(Vec<KvResult>),
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct ShardMeta {
    live_keys: u64,
    live_bytes: u64,
    /// The shard's hash range `[start, end)` once it took part in a split (as the parent
    /// or the child); `None` for a shard as bootstrap cut it, which has never changed.
    range: Option<(u64, Option<u64>)>,
}

/// Whether `range` (`None`: unchanged since bootstrap) covers `hash`.
fn range_covers(range: Option<(u64, Option<u64>)>, hash: u64) -> bool {
    range.is_none_or(|(start, end)| hash >= start && end.is_none_or(|end| hash < end))
}

/// The hashes both ranges cover (`None`: the whole ring); an empty overlap covers nothing.
fn range_overlap(a: Option<(u64, Option<u64>)>, b: Option<(u64, Option<u64>)>) -> Option<(u64, Option<u64>)> {
    let (Some((a_start, a_end)), Some((b_start, b_end))) = (a, b) else {
        return a.or(b);
    };
    let start = a_start.max(b_start);
    let end = match (a_end, b_end) {
        (Some(a), Some(b)) => Some(a.min(b).max(start)),
        (end, None) | (None, end) => end.map(|e| e.max(start)),
    };
    Some((start, end))
}

/// Decodes a stored or received record, refusing any shape apply never writes.
fn decode_record(bytes: &[u8]) -> Result<KeyRecord, StorageError> {
    let record: KeyRecord = codec::decode(bytes).map_err(storage_io_error)?;
    record.validate().map_err(storage_io_error)?;
    Ok(record)
}

/// What the rest of the node reads of a shard replica without going through Raft, and
/// the load it counts for the scheduler.
pub struct ShardView {
    group: GroupId,
    sm: sled::Tree,
    /// The applied range, published once the state holding it is written.
    range: RwLock<Option<(u64, Option<u64>)>>,
    /// The range requests are served for: the applied one, narrowed before a write that
    /// takes records away (see [`Self::narrow_to`]).
    served: RwLock<Option<(u64, Option<u64>)>>,
    live_keys: AtomicU64,
    live_bytes: AtomicU64,
    ops_served: AtomicU64,
    /// The last split point computed and when; the last (time, ops, rate) sample.
    split_point: Mutex<Option<(tokio::time::Instant, Option<u64>)>>,
    ops_sample: Mutex<Option<(tokio::time::Instant, u64, u64)>>,
    /// Writes waiting to be proposed while this replica leads.
    pub proposals: ProposalQueue,
}

impl ShardView {
    /// The key's record as of this replica's applied state.
    pub fn get(&self, key: &[u8]) -> Result<Option<KeyRecord>, StorageError> {
        match self
            .sm
            .get(state_key(self.group, TAG_RECORD, key))
            .map_err(storage_io_error)?
        {
            Some(bytes) => Ok(Some(decode_record(&bytes)?)),
            None => Ok(None),
        }
    }

    /// Whether this replica serves requests for keys hashing to `hash`.
    pub fn covers(&self, hash: u64) -> bool {
        range_covers(*self.served.read().unwrap(), hash)
    }

    /// Whether this replica's written (applied and published) state holds the keys
    /// hashing to `hash`: a split's child may start once its parent's no longer does.
    pub fn applied_covers(&self, hash: u64) -> bool {
        range_covers(self.range(), hash)
    }

    /// The median hash of up to `samples` keys spread over the shard (every n-th key in
    /// key order, which is random in hash order). `None` if the shard has fewer than two
    /// keys in its range.
    pub fn median_key_hash(&self, samples: usize) -> Option<u64> {
        let prefix = state_key(self.group, TAG_RECORD, &[]);
        let total = (self.live_keys() as usize).max(1);
        let step = (total / samples.max(1)).max(1);
        let range = self.range();
        let mut hashes: Vec<u64> = self
            .sm
            .scan_prefix(&prefix)
            .keys()
            .step_by(step)
            .filter_map(Result::ok)
            .map(|k| key_hash(&k[prefix.len()..]))
            .filter(|h| range_covers(range, *h))
            .take(samples.max(2))
            .collect();
        if hashes.len() < 2 {
            return None;
        }
        hashes.sort_unstable();
        // The upper median: the split leaves at least one sampled key on each side.
        Some(hashes[hashes.len() / 2])
    }

    pub fn live_keys(&self) -> u64 {
        self.live_keys.load(Ordering::Relaxed)
    }

    pub fn live_bytes(&self) -> u64 {
        self.live_bytes.load(Ordering::Relaxed)
    }

    /// Counts a client operation served by this replica (the scheduler's load figure).
    pub fn count_op(&self) {
        self.ops_served.fetch_add(1, Ordering::Relaxed);
    }

    pub fn ops_served(&self) -> u64 {
        self.ops_served.load(Ordering::Relaxed)
    }

    /// Operations served per second, measured between calls at least a second apart.
    pub fn ops_rate(&self) -> u64 {
        let now = tokio::time::Instant::now();
        let ops = self.ops_served();
        let mut sample = self.ops_sample.lock().unwrap();
        match *sample {
            Some((at, _, rate)) if now.duration_since(at) < Duration::from_secs(1) => rate,
            Some((at, before, _)) => {
                let rate = (ops.saturating_sub(before) as f64 / now.duration_since(at).as_secs_f64()) as u64;
                *sample = Some((now, ops, rate));
                rate
            }
            None => {
                *sample = Some((now, ops, 0));
                0
            }
        }
    }

    /// `compute`'s answer, reused for `refresh` while the replica still covers it (a split
    /// of this shard makes the old point its end).
    pub fn cached_split_point(&self, refresh: Duration, compute: impl FnOnce() -> Option<u64>) -> Option<u64> {
        let mut cached = self.split_point.lock().unwrap();
        let still_inside = |point: Option<u64>| point.is_none_or(|p| self.covers(p));
        match *cached {
            Some((at, point)) if at.elapsed() < refresh && still_inside(point) => point,
            _ => {
                let point = compute();
                *cached = Some((tokio::time::Instant::now(), point));
                point
            }
        }
    }

    /// Shrinks the served range to its overlap with `next` (the range a write about to be
    /// made will give the replica), so that no read is answered for a key whose record that
    /// write takes away; [`Self::publish`] sets `next` whole once the write is made.
    fn narrow_to(&self, next: Option<(u64, Option<u64>)>) {
        let current = *self.served.read().unwrap();
        let narrowed = range_overlap(current, next);
        if narrowed != current {
            *self.served.write().unwrap() = narrowed;
        }
    }

    fn publish(&self, meta: &ShardMeta) {
        *self.range.write().unwrap() = meta.range;
        *self.served.write().unwrap() = meta.range;
        self.live_keys.store(meta.live_keys, Ordering::Relaxed);
        self.live_bytes.store(meta.live_bytes, Ordering::Relaxed);
    }
}

impl AppliedView for ShardView {
    fn range(&self) -> Option<(u64, Option<u64>)> {
        *self.range.read().unwrap()
    }

    fn split_point(&self, samples: usize) -> Option<u64> {
        self.median_key_hash(samples)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct ShardSnapshot {
    live_keys: u64,
    live_bytes: u64,
    range: Option<(u64, Option<u64>)>,
    /// (user key, encoded [`KeyRecord`]) in key order.
    records: Vec<(Vec<u8>, Vec<u8>)>,
}

/// Why a received shard snapshot was refused.
#[derive(Debug, thiserror::Error)]
enum BadRecords {
    #[error("undecodable: {0}")]
    Decode(#[from] codec::CodecError),
    #[error("record {index}: {why}")]
    Record { index: usize, why: String },
    #[error("record {0}: keys are not strictly increasing")]
    KeyOrder(usize),
}

/// Checks every record of a peer's snapshot; returns the live key and byte counts
/// recomputed from the records, never taken from the sender.
fn validate_records(records: &[(Vec<u8>, Vec<u8>)]) -> Result<(u64, u64), BadRecords> {
    let (mut keys, mut bytes) = (0u64, 0u64);
    for (index, (key, encoded)) in records.iter().enumerate() {
        if key.is_empty() {
            return Err(BadRecords::Record {
                index,
                why: "empty key".into(),
            });
        }
        if index > 0 && records[index - 1].0 >= *key {
            return Err(BadRecords::KeyOrder(index));
        }
        let record = decode_record(encoded).map_err(|e| BadRecords::Record {
            index,
            why: e.to_string(),
        })?;
        keys += u64::from(record.is_live());
        bytes += record.live_value_bytes();
    }
    Ok((keys, bytes))
}

fn decode_snapshot(data: &[u8]) -> Result<(ShardSnapshot, (u64, u64)), BadRecords> {
    let snapshot: ShardSnapshot = codec::decode(data)?;
    let counts = validate_records(&snapshot.records)?;
    Ok((snapshot, counts))
}

pub struct ShardState {
    group: GroupId,
    sm: sled::Tree,
    meta: ShardMeta,
    /// Records written by this apply call and not yet committed.
    overlay: BTreeMap<Vec<u8>, KeyRecord>,
    view: Arc<ShardView>,
    /// Planted bug (simulation only): apply writes whatever the key's hash.
    skip_range_check: bool,
}

impl ShardState {
    /// Opens a shard replica's state. `skip_range_check` plants the "no range check after
    /// a split" bug (simulation only).
    pub fn open(db: &sled::Db, group: GroupId, skip_range_check: bool) -> Result<Self, StorageError> {
        let sm = db.open_tree("sm").map_err(storage_io_error)?;
        let meta: ShardMeta = match sm
            .get(state_key(group, TAG_SHARD_META, &[]))
            .map_err(storage_io_error)?
        {
            Some(bytes) => codec::decode(&bytes).map_err(storage_io_error)?,
            None => ShardMeta::default(),
        };
        let view = Arc::new(ShardView {
            group,
            sm: sm.clone(),
            range: RwLock::new(None),
            served: RwLock::new(None),
            live_keys: AtomicU64::new(0),
            live_bytes: AtomicU64::new(0),
            ops_served: AtomicU64::new(0),
            split_point: Mutex::new(None),
            ops_sample: Mutex::new(None),
            proposals: ProposalQueue::default(),
        });
        view.publish(&meta);
        Ok(ShardState {
            group,
            sm,
            meta,
            overlay: BTreeMap::new(),
            view,
            skip_range_check,
        })
    }

    fn apply_kv(&mut self, op: KvOp) -> Result<KvResult, StorageError> {
        // A shard never split has no range to check: no hash on that path.
        if !self.skip_range_check && self.meta.range.is_some() && !range_covers(self.meta.range, key_hash(op.key())) {
            return Ok(KvResult::WrongShard);
        }
        let current = match self.overlay.get(op.key()) {
            Some(record) => Some(record.clone()),
            None => self.view.get(op.key())?,
        };
        let (next, result) = apply_op(current.as_ref(), &op);
        if let Some(next) = next {
            let was_live = current.as_ref().is_some_and(KeyRecord::is_live);
            let old_bytes = current.as_ref().map_or(0, KeyRecord::live_value_bytes);
            self.meta.live_keys = self.meta.live_keys + u64::from(next.is_live()) - u64::from(was_live);
            self.meta.live_bytes = self.meta.live_bytes + next.live_value_bytes() - old_bytes;
            self.overlay.insert(op.key().to_vec(), next);
        }
        Ok(result)
    }

    /// Applies a split (a barrier: everything before it is committed). The records hashing
    /// to `[at, end)` move under the child's prefix, the child's meta is written (its
    /// range; no log yet: its replicas start it from this state), and this shard's range
    /// ends at `at`. A replica whose range is not the planned one refuses, except a repeat
    /// of the split it already applied.
    fn split(&mut self, plan: SplitPlan, batch: &mut WriteBatch) -> Result<SplitResult, StorageError> {
        let SplitPlan { child, at, .. } = plan;
        let planned = (plan.start, plan.end);
        let (start, end) = self.meta.range.unwrap_or(planned);
        let rejected = |reason: String| {
            tracing::warn!(group = self.group, child, at, %reason, "split refused");
            Ok(SplitResult::Rejected { reason })
        };
        if (start, end) != planned {
            if start == planned.0 && end == Some(at) {
                return Ok(SplitResult::Done { child });
            }
            return rejected(format!(
                "this shard's range is {start:#x}..{end:?}, not the planned {planned:?}"
            ));
        }
        if at <= start || end.is_some_and(|end| at >= end) {
            return rejected(format!("{at:#x} is not inside {start:#x}..{end:?}"));
        }
        // A replica of the parent made again (moved away and back) may replay the split
        // from its log while the child's own replica here already moved on from the
        // split's state: the child keeps its state. The parent's outcome must not depend
        // on it (every replica of the parent has to end in the same state), so the split
        // is done either way.
        let scan_started = std::time::Instant::now();
        // A child whose replica here applied anything of its own keeps it, even without its
        // meta under its key; only a split's leftover prefix is written again.
        let child_has_state = holds_whole_state(&self.sm, child).map_err(storage_io_error)?
            || crate::raft::state_machine::has_applied_here(&self.sm, child).map_err(storage_io_error)?;
        let prefix = state_key(self.group, TAG_RECORD, &[]);
        let (mut keys, mut bytes) = (0u64, 0u64);
        for item in self.sm.scan_prefix(&prefix) {
            let (key, value) = item.map_err(storage_io_error)?;
            let user_key = &key[prefix.len()..];
            if key_hash(user_key) < at {
                continue;
            }
            let record = decode_record(&value)?;
            keys += u64::from(record.is_live());
            bytes += record.live_value_bytes();
            if !child_has_state {
                batch.insert(state_key(child, TAG_RECORD, user_key), value);
            }
            batch.remove(key);
        }
        if child_has_state {
            tracing::info!(
                group = self.group,
                child,
                "split replayed; the child's replica here keeps its own state"
            );
        } else {
            let child_meta = ShardMeta {
                live_keys: keys,
                live_bytes: bytes,
                range: Some((at, end)),
            };
            batch.insert(
                state_key(child, TAG_SHARD_META, &[]),
                codec::encode(&child_meta).map_err(storage_io_error)?,
            );
        }
        self.meta.range = Some((start, Some(at)));
        self.meta.live_keys = self.meta.live_keys.saturating_sub(keys);
        self.meta.live_bytes = self.meta.live_bytes.saturating_sub(bytes);
        tracing::info!(
            group = self.group,
            child,
            at = %format!("{at:#x}"),
            keys,
            scan_ms = scan_started.elapsed().as_millis() as u64,
            "split applied"
        );
        Ok(SplitResult::Done { child })
    }
}

/// Whether `sm` holds a whole state of shard `group`: its meta is there. A split writes
/// the child's meta after the child's records, not in one sled batch, so a crash (or the
/// parent's removal) during the split can leave records without it; such a prefix is no
/// state.
/// The ways to a child's state write its meta under its key: the split that made it and
/// a snapshot install (a child replica without the split's state waits for a snapshot).
/// A split's replay also spares a child that applied anything here itself
/// (`has_applied_here`), so it never writes over a state with its meta elsewhere.
fn holds_whole_state(sm: &sled::Tree, group: GroupId) -> sled::Result<bool> {
    sm.contains_key(state_key(group, TAG_SHARD_META, &[]))
}

impl GroupState<ShardKind> for ShardState {
    fn view(&self) -> Arc<ShardView> {
        self.view.clone()
    }

    fn apply(&mut self, command: ShardCommand, batch: &mut WriteBatch) -> Result<ShardReply, StorageError> {
        match command {
            ShardCommand::Kv(op) => self.apply_kv(op).map(ShardReply::Kv),
            ShardCommand::Split(plan) => self.split(plan, batch).map(ShardReply::Split),
            // In order, through the overlay: each write sees the ones before it.
            ShardCommand::Batch(ops) => ops
                .into_iter()
                .map(|op| self.apply_kv(op))
                .collect::<Result<_, _>>()
                .map(ShardReply::Batch),
        }
    }

    fn is_barrier(command: &ShardCommand) -> bool {
        // The split scans the committed records.
        matches!(command, ShardCommand::Split(_))
    }

    fn stage(&mut self, batch: &mut WriteBatch) -> Result<(), StorageError> {
        // A split (or a snapshot install) may take records away: reads stop covering them
        // before they go.
        self.view.narrow_to(self.meta.range);
        for (key, record) in std::mem::take(&mut self.overlay) {
            let bytes = codec::encode(&record).map_err(storage_io_error)?;
            batch.insert(state_key(self.group, TAG_RECORD, &key), bytes);
        }
        batch.insert_summary(
            state_key(self.group, TAG_SHARD_META, &[]),
            codec::encode(&self.meta).map_err(storage_io_error)?,
        );
        Ok(())
    }

    fn committed(&mut self) {
        self.view.publish(&self.meta);
    }

    fn snapshot(&self) -> Result<Vec<u8>, StorageError> {
        let prefix = state_key(self.group, TAG_RECORD, &[]);
        let mut records = Vec::new();
        for item in self.sm.scan_prefix(&prefix) {
            let (key, value) = item.map_err(storage_io_error)?;
            // A record this node cannot read must fail the build, not travel to followers.
            decode_record(&value)?;
            records.push((key[prefix.len()..].to_vec(), value.to_vec()));
        }
        codec::encode(&ShardSnapshot {
            live_keys: self.meta.live_keys,
            live_bytes: self.meta.live_bytes,
            range: self.meta.range,
            records,
        })
        .map_err(storage_io_error)
    }

    fn check_snapshot(data: &[u8]) -> Result<(), String> {
        decode_snapshot(data).map(|_| ()).map_err(|e| e.to_string())
    }

    fn holds_state(sm: &sled::Tree, group: GroupId) -> bool {
        holds_whole_state(sm, group).unwrap_or(false)
    }

    fn install(&mut self, data: &[u8], batch: &mut WriteBatch) -> Result<(), StorageError> {
        let (snapshot, (live_keys, live_bytes)) = decode_snapshot(data).map_err(storage_io_error)?;
        for (key, record) in snapshot.records {
            batch.insert(state_key(self.group, TAG_RECORD, &key), record);
        }
        self.overlay.clear();
        self.meta = ShardMeta {
            live_keys,
            live_bytes,
            range: snapshot.range,
        };
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::log_store::{DurableFiles, FlushMode, Flusher};
    use crate::raft::probe::Probe;
    use crate::raft::state_machine::{check_snapshot_data, finish_interrupted_apply, redo_key, StateMachineStore};
    use crate::raft::wal::{Wal, SEGMENT_BYTES_DEFAULT};
    use crate::raft::{Entry, LogId};
    use crate::shard::{Precondition, VersionEntry};
    use openraft::storage::RaftStateMachine;
    use openraft::{CommittedLeaderId, EntryPayload, RaftSnapshotBuilder};

    fn store(db: &sled::Db, dir: &std::path::Path) -> StateMachineStore<ShardKind> {
        let files = DurableFiles::open(dir).unwrap();
        let (wal, _) = Wal::open(&dir.join("raft-log"), SEGMENT_BYTES_DEFAULT).unwrap();
        let flusher = Flusher::start(db.clone(), files, Arc::new(wal), FlushMode::Inline, "t".into());
        // As the registry opens a replica.
        finish_interrupted_apply(db, 7).unwrap();
        let state = ShardState::open(db, 7, false).unwrap();
        StateMachineStore::open(db, 7, state, flusher, "t".into(), Probe::new(1, None)).unwrap()
    }

    fn entry(index: u64, command: ShardCommand) -> Entry<ShardKind> {
        openraft::Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 0), index),
            payload: EntryPayload::Normal(command),
        }
    }

    fn put(index: u64, key: &[u8]) -> Entry<ShardKind> {
        entry(
            index,
            ShardCommand::Kv(KvOp::Put {
                key: key.to_vec(),
                value: b"v".to_vec(),
                precondition: Precondition::None,
                history_versions: 4,
            }),
        )
    }

    /// Forty keys put by entries 1 to 40 of shard 7, then split at their median hash into
    /// child 9 by entry 41: the keys, their puts and the split's plan.
    async fn forty_keys_split(
        db: &sled::Db,
        dir: &std::path::Path,
    ) -> (Vec<Vec<u8>>, Vec<Entry<ShardKind>>, SplitPlan) {
        let keys: Vec<Vec<u8>> = (0..40u32).map(|i| format!("key-{i}").into_bytes()).collect();
        let log: Vec<_> = keys.iter().enumerate().map(|(i, k)| put(i as u64 + 1, k)).collect();
        let mut sm = store(db, dir);
        sm.apply(log.clone()).await.unwrap();
        let at = sm.view().median_key_hash(1024).expect("a split point");
        let plan = SplitPlan {
            child: 9,
            at,
            start: 0,
            end: None,
        };
        sm.apply(vec![entry(41, ShardCommand::Split(plan))]).await.unwrap();
        (keys, log, plan)
    }

    /// The child moves on: a newer version of the first of `keys` it holds, written into
    /// its state. Returns the key and its record.
    fn child_writes_newer(db: &sled::Db, keys: &[Vec<u8>], at: u64) -> (Vec<u8>, KeyRecord) {
        let upper = keys.iter().find(|k| key_hash(k) >= at).unwrap().clone();
        let newer = KeyRecord {
            versions: vec![VersionEntry {
                version: 99,
                deleted: false,
                value: b"newer".to_vec(),
            }],
        };
        let tree = db.open_tree("sm").unwrap();
        tree.insert(state_key(9, TAG_RECORD, &upper), codec::encode(&newer).unwrap())
            .unwrap();
        (upper, newer)
    }

    /// A batched proposal is one entry: its writes apply in order (each sees the ones
    /// before it), each gets its own result, and they are written with the entry's applied
    /// index after the apply call's redo record. A crash right after the redo record (here:
    /// every later write undone) is finished at the next start: the reopened replica has
    /// all of the entry's writes and its applied index.
    #[tokio::test]
    async fn a_batch_applies_in_order_and_commits_whole() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path()).unwrap();
        let mut sm = store(&db, dir.path());
        let op = |key: &[u8], precondition| KvOp::Put {
            key: key.to_vec(),
            value: b"v".to_vec(),
            precondition,
            history_versions: 4,
        };
        let batch = ShardCommand::Batch(vec![
            op(b"a", Precondition::None),
            op(b"b", Precondition::IfAbsent),
            op(b"a", Precondition::IfMatch(1)),
            op(b"b", Precondition::IfAbsent),
        ]);
        let replies = sm.apply(vec![entry(1, batch)]).await.unwrap();
        assert_eq!(
            replies,
            vec![ShardReply::Batch(vec![
                KvResult::Written { version: 1 },
                KvResult::Written { version: 1 },
                KvResult::Written { version: 2 },
                KvResult::PreconditionFailed { current: 1 },
            ])]
        );
        drop(sm);
        let tree = db.open_tree("sm").unwrap();
        let mut undone = 0;
        for key in tree.scan_prefix(crate::raft::group_prefix(7)).keys() {
            let key = key.unwrap();
            if key != redo_key(7) {
                tree.remove(key).unwrap();
                undone += 1;
            }
        }
        assert_eq!(undone, 2, "two records (the metas are in the redo record only)");
        finish_interrupted_apply(&db, 7).unwrap();
        let reopened = ShardState::open(&db, 7, false).unwrap();
        let versions: Vec<u64> = [&b"a"[..], b"b"]
            .iter()
            .map(|key| {
                reopened
                    .view
                    .get(key)
                    .unwrap()
                    .unwrap()
                    .versions
                    .iter()
                    .map(|v| v.version)
                    .max()
                    .unwrap()
            })
            .collect();
        assert_eq!(versions, vec![2, 1]);
        let (applied, _) = store(&db, dir.path()).applied_state().await.unwrap();
        assert_eq!(
            applied.map(|l| l.index),
            Some(1),
            "the applied index is committed with the batch"
        );
    }

    /// The shard's meta and the applied log id are kept in each apply call's redo record,
    /// not under their own keys, until the next start makes the last redo record again:
    /// the reopened replica has the last call's totals and applied index.
    #[tokio::test]
    async fn the_metas_of_the_last_apply_call_come_back_from_its_redo_record() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path()).unwrap();
        let mut sm = store(&db, dir.path());
        sm.apply(vec![put(1, b"a")]).await.unwrap();
        sm.apply(vec![put(2, b"b"), put(3, b"c")]).await.unwrap();
        drop(sm);
        let tree = db.open_tree("sm").unwrap();
        assert_eq!(
            tree.get(state_key(7, TAG_SHARD_META, &[])).unwrap(),
            None,
            "an ordinary apply call does not write the meta under its key"
        );
        finish_interrupted_apply(&db, 7).unwrap();
        let reopened = ShardState::open(&db, 7, false).unwrap();
        assert_eq!(reopened.meta.live_keys, 3);
        let (applied, _) = store(&db, dir.path()).applied_state().await.unwrap();
        assert_eq!(applied.map(|l| l.index), Some(3));
    }

    #[test]
    fn a_peers_batch_entry_is_checked_against_the_batch_limits() {
        let limits = Limits {
            max_key_bytes: 1024,
            max_value_bytes: 1 << 20,
        };
        let put = |bytes: usize| KvOp::Put {
            key: b"k".to_vec(),
            value: vec![0; bytes],
            precondition: Precondition::None,
            history_versions: 4,
        };
        assert!(ShardCommand::Batch(vec![put(1); 3]).check(&limits).is_ok());
        assert!(ShardCommand::Batch(vec![]).check(&limits).is_err(), "an empty batch");
        let too_many = vec![put(1); propose::OPS_PER_PROPOSAL_MAX + 1];
        assert!(ShardCommand::Batch(too_many).check(&limits).is_err());
        let too_big = vec![put(limits.max_value_bytes), put(limits.max_key_bytes)];
        assert!(ShardCommand::Batch(too_big).check(&limits).is_err());
        let oversized_key = KvOp::Put {
            key: vec![0; limits.max_key_bytes + 1],
            value: vec![],
            precondition: Precondition::None,
            history_versions: 4,
        };
        assert!(ShardCommand::Batch(vec![put(1), oversized_key]).check(&limits).is_err());
    }

    /// The silent-data-loss finding: a state read that failed used to produce a snapshot
    /// with no records and the real applied index, which openraft then shipped and purged
    /// the log behind. Now the build fails and nothing is stored.
    #[tokio::test]
    async fn a_snapshot_of_unreadable_state_fails_instead_of_shipping_a_hole() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path()).unwrap();
        let mut sm = store(&db, dir.path());
        sm.apply(vec![put(1, b"a"), put(2, b"b")]).await.unwrap();
        let mut builder = sm.get_snapshot_builder().await;
        let good = builder.build_snapshot().await.unwrap();
        check_snapshot_data::<ShardKind>(good.snapshot.get_ref()).unwrap();

        db.open_tree("sm")
            .unwrap()
            .insert(state_key(7, TAG_RECORD, b"c"), b"\x01garbage".to_vec())
            .unwrap();
        db.open_tree("snapshots")
            .unwrap()
            .remove(crate::raft::group_prefix(7))
            .unwrap();
        let mut builder = sm.get_snapshot_builder().await;
        assert!(builder.build_snapshot().await.is_err(), "a partial snapshot was built");
        assert!(sm.get_current_snapshot().await.unwrap().is_none(), "nothing stored");
    }

    /// A split stops the parent's view serving the keys it moves before the write that
    /// removes their records is made (reads check the range after loading the record), and
    /// widens nothing until the write is published.
    #[tokio::test]
    async fn a_split_narrows_the_served_range_before_its_records_leave() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path()).unwrap();
        let keys: Vec<Vec<u8>> = (0..20u32).map(|i| format!("key-{i}").into_bytes()).collect();
        let sm = {
            let mut sm = store(&db, dir.path());
            let puts: Vec<_> = keys.iter().enumerate().map(|(i, k)| put(i as u64 + 1, k)).collect();
            sm.apply(puts).await.unwrap();
            sm
        };
        drop(sm);
        finish_interrupted_apply(&db, 7).unwrap();
        let mut state = ShardState::open(&db, 7, false).unwrap();
        assert_eq!(state.meta.live_keys, 20, "reopened as a replica is");
        let view = state.view();
        let at = view.median_key_hash(1024).expect("a split point");
        let upper = keys.iter().find(|k| key_hash(k) >= at).unwrap();
        let lower = keys.iter().find(|k| key_hash(k) < at).unwrap();
        let plan = SplitPlan {
            child: 9,
            at,
            start: 0,
            end: None,
        };
        let mut batch = WriteBatch::default();
        state.apply(ShardCommand::Split(plan), &mut batch).unwrap();
        assert!(view.covers(key_hash(upper)), "nothing is staged yet");
        state.stage(&mut batch).unwrap();
        assert!(view.get(upper).unwrap().is_some(), "the record is still in place");
        assert!(!view.covers(key_hash(upper)), "but no longer served");
        assert!(view.covers(key_hash(lower)));
        assert!(view.applied_covers(key_hash(upper)), "the child may not start yet");
        state.committed();
        assert!(!view.applied_covers(key_hash(upper)));
        assert_eq!(view.range(), Some((0, Some(at))));
    }

    #[test]
    fn range_overlaps() {
        assert_eq!(range_overlap(None, None), None);
        assert_eq!(range_overlap(None, Some((5, Some(9)))), Some((5, Some(9))));
        assert_eq!(range_overlap(Some((5, None)), None), Some((5, None)));
        assert_eq!(range_overlap(Some((0, None)), Some((0, Some(7)))), Some((0, Some(7))));
        assert_eq!(
            range_overlap(Some((3, Some(9))), Some((5, Some(20)))),
            Some((5, Some(9)))
        );
        let empty = range_overlap(Some((0, Some(4))), Some((6, None)));
        assert!(!(0..10).any(|h| range_covers(empty, h)), "{empty:?} covers nothing");
    }

    /// Writes applied in one call see each other, a split moves exactly the upper keys to
    /// the child in the split entry's own batch, and a write outside the shrunk range is
    /// refused with nothing changed.
    #[tokio::test]
    async fn a_split_moves_the_upper_keys_and_later_writes_outside_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path()).unwrap();
        let mut sm = store(&db, dir.path());
        let keys: Vec<Vec<u8>> = (0..40u32).map(|i| format!("key-{i}").into_bytes()).collect();
        let puts: Vec<_> = keys.iter().enumerate().map(|(i, k)| put(i as u64 + 1, k)).collect();
        sm.apply(puts).await.unwrap();
        let view = sm.view();
        let at = view.median_key_hash(1024).expect("a split point");
        let plan = SplitPlan {
            child: 9,
            at,
            start: 0,
            end: None,
        };
        let replies = sm.apply(vec![entry(41, ShardCommand::Split(plan))]).await.unwrap();
        assert_eq!(replies, vec![ShardReply::Split(SplitResult::Done { child: 9 })]);
        // The split's redo record replaced the puts' one, so a restart does not write the
        // moved records back into the parent.
        finish_interrupted_apply(&db, 7).unwrap();
        let child = ShardState::open(&db, 9, false).unwrap();
        for key in &keys {
            let upper = key_hash(key) >= at;
            assert_eq!(view.get(key).unwrap().is_some(), !upper, "parent holds the lower half");
            assert_eq!(
                child.view.get(key).unwrap().is_some(),
                upper,
                "child holds the upper half"
            );
        }
        assert_eq!(view.live_keys() + child.view.live_keys(), keys.len() as u64);
        assert_eq!(child.view.range(), Some((at, None)));
        let upper = keys.iter().find(|k| key_hash(k) >= at).unwrap();
        let replies = sm.apply(vec![put(42, upper)]).await.unwrap();
        assert_eq!(replies, vec![ShardReply::Kv(KvResult::WrongShard)]);
        assert!(view.get(upper).unwrap().is_none(), "nothing written");
        // A repeat of the same split is done already; another plan is refused.
        let again = sm.apply(vec![entry(43, ShardCommand::Split(plan))]).await.unwrap();
        assert_eq!(again, vec![ShardReply::Split(SplitResult::Done { child: 9 })]);
    }

    /// A split's writes go behind a redo record (one sled batch would hold sled's
    /// process-wide lock for the whole move), and that record is then cut back to the
    /// parent's summaries: a later start must not write the moved records again over
    /// what the child has written since, and still finds the parent's applied index and
    /// range.
    #[tokio::test]
    async fn a_restart_after_a_split_leaves_the_childs_later_writes_alone() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path()).unwrap();
        let (keys, _, SplitPlan { at, .. }) = forty_keys_split(&db, dir.path()).await;
        let (upper, newer) = child_writes_newer(&db, &keys, at);
        // The node restarts: `store` finishes the parent's last apply call first.
        let mut sm = store(&db, dir.path());
        let child = ShardState::open(&db, 9, false).unwrap();
        assert_eq!(child.view.get(&upper).unwrap(), Some(newer), "the child's write stays");
        let (applied, _) = sm.applied_state().await.unwrap();
        assert_eq!(applied.map(|l| l.index), Some(41), "the split's applied index");
        assert_eq!(sm.view().range(), Some((0, Some(at))), "the parent's range");
        for key in &keys {
            assert_eq!(
                sm.view().get(key).unwrap().is_some(),
                key_hash(key) < at,
                "parent holds the lower half"
            );
        }
    }

    /// A split's writes are made in order, the child's meta last, so a crash or the
    /// parent's removal can leave part of the child's records: that is no state (the
    /// child's replica must not start on it), and a replay of the split writes it whole.
    #[tokio::test]
    async fn part_of_a_splits_writes_is_no_state_and_a_replay_makes_it_whole() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path()).unwrap();
        let (keys, log, plan) = forty_keys_split(&db, dir.path()).await;
        let at = plan.at;
        let tree = db.open_tree("sm").unwrap();
        assert!(ShardState::holds_state(&tree, 9));
        // Keep only the first of the child's records, as a cut-short split would.
        let moved: Vec<_> = keys.iter().filter(|k| key_hash(k) >= at).collect();
        for key in &moved[1..] {
            tree.remove(state_key(9, TAG_RECORD, key)).unwrap();
        }
        tree.remove(state_key(9, TAG_SHARD_META, &[])).unwrap();
        assert!(
            !ShardState::holds_state(&tree, 9),
            "records without the meta are no state"
        );
        // The parent's replica is made again here and replays its log, split included.
        crate::raft::state_machine::destroy_state(&db, 7).unwrap();
        let mut sm = store(&db, dir.path());
        sm.apply(log).await.unwrap();
        sm.apply(vec![entry(41, ShardCommand::Split(plan))]).await.unwrap();
        assert!(ShardState::holds_state(&tree, 9));
        let child = ShardState::open(&db, 9, false).unwrap();
        for key in &moved {
            assert!(
                child.view.get(key).unwrap().is_some(),
                "the child holds every moved key"
            );
        }
        assert_eq!(child.view.live_keys(), moved.len() as u64);
    }

    /// A parent replica made again replays its log, split included, while the child's
    /// replica on the same node has moved on: the parent ends split like every other
    /// replica of it (its outcome may not depend on the node), and the child keeps its own
    /// state (placement seed 62 of a redo-record build: a refused replay left one parent
    /// replica covering the child's range, so the child could never start on a new node).
    #[tokio::test]
    async fn a_replayed_split_is_done_and_leaves_the_childs_state_alone() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path()).unwrap();
        let (keys, log, plan) = forty_keys_split(&db, dir.path()).await;
        let at = plan.at;
        let (upper, newer) = child_writes_newer(&db, &keys, at);
        // Its meta lives in its apply calls' redo records, not under its key: an empty
        // redo record (the format byte alone) stands for them.
        let tree = db.open_tree("sm").unwrap();
        tree.remove(state_key(9, TAG_SHARD_META, &[])).unwrap();
        tree.insert(crate::raft::state_machine::redo_key(9), &[1u8][..])
            .unwrap();
        // The parent's replica leaves this node and comes back empty, then replays.
        crate::raft::state_machine::destroy_state(&db, 7).unwrap();
        let mut sm = store(&db, dir.path());
        sm.apply(log).await.unwrap();
        let replies = sm.apply(vec![entry(41, ShardCommand::Split(plan))]).await.unwrap();
        assert_eq!(replies, vec![ShardReply::Split(SplitResult::Done { child: 9 })]);
        let view = sm.view();
        assert_eq!(view.range(), Some((0, Some(at))));
        for key in &keys {
            assert_eq!(
                view.get(key).unwrap().is_some(),
                key_hash(key) < at,
                "parent holds the lower half"
            );
        }
        let child = ShardState::open(&db, 9, false).unwrap();
        assert_eq!(
            child.view.get(&upper).unwrap(),
            Some(newer),
            "the child's state is its own"
        );
    }

    #[test]
    fn received_snapshots_are_checked_record_by_record() {
        let record = |versions: Vec<VersionEntry>| codec::encode(&KeyRecord { versions }).unwrap();
        let live = VersionEntry {
            version: 1,
            deleted: false,
            value: b"v".to_vec(),
        };
        let payload = |records: Vec<(Vec<u8>, Vec<u8>)>| {
            codec::encode(&ShardSnapshot {
                live_keys: 0,
                live_bytes: 0,
                range: None,
                records,
            })
            .unwrap()
        };
        let check = |data: &[u8]| ShardState::check_snapshot(data);
        assert!(check(&payload(vec![(b"a".to_vec(), record(vec![live.clone()]))])).is_ok());
        assert!(check(&payload(vec![(b"a".to_vec(), record(vec![]))])).is_err());
        let unordered = payload(vec![
            (b"b".to_vec(), record(vec![live.clone()])),
            (b"a".to_vec(), record(vec![live.clone()])),
        ]);
        assert!(check(&unordered).is_err());
        assert!(check(&payload(vec![(Vec::new(), record(vec![live]))])).is_err());
        assert!(check(b"\x01\xff\xff").is_err());
    }
}
