//! The sled-backed state machine store every group uses, around the kind's own state
//! ([`GroupState`]).
//!
//! Layout in the `sm` tree, all under the group's 8-byte prefix: `0x00` the applied log id
//! and membership, owned here; `0xff` the redo record of the last apply call, owned here;
//! every other tag belongs to the kind's state. An apply call writes its redo record, then
//! the state's changes one by one; a crash in between is finished from the redo record at
//! the next start, so the state and its applied index always agree (a split then cuts
//! its redo record back; a snapshot install uses one atomic sled batch instead). Values
//! each call rewrites in full (the
//! applied log id, a kind's totals) live only in the redo record until the next start or
//! atomic commit writes them under their keys ([`WriteBatch::insert_summary`]). sled is
//! not flushed per apply: the log is the source of truth, and after a crash openraft re-applies from the applied
//! index sled kept. Snapshots live in the `snapshots` tree and are flushed (with the state
//! they were taken from) before openraft may purge the log they cover.

use std::io::Cursor;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::time::Instant;

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{EntryPayload, RaftSnapshotBuilder};
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use super::log_store::Flusher;
use super::probe::{NodeEvent, Probe};
use super::runtime::run_blocking;
use super::{
    group_prefix, storage_io_error, Cmd, Config, Entry, GroupId, GroupKind, LogId, Reply, SnapshotMeta, StorageError,
    StoredMembership,
};
use crate::codec;

/// The tag under which this store keeps a group's applied log id and membership; a
/// kind's state uses any other tag.
const TAG_APPLIED: u8 = 0;

/// A key of `group`'s state in the `sm` tree: prefix, tag, then `rest`.
pub fn state_key(group: GroupId, tag: u8, rest: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(9 + rest.len());
    key.extend_from_slice(&group_prefix(group));
    key.push(tag);
    key.extend_from_slice(rest);
    key
}

/// The tag of a group's redo record: the sled writes of its last apply call, stored as
/// one value just before they are made one by one (see [`StateMachineStore::write`]).
const TAG_REDO: u8 = 0xff;

/// Format byte of a redo record.
const REDO_FORMAT: u8 = 1;

/// An apply call whose redo record is at least this large is written off the tokio
/// worker. sled stores a page update over a quarter of its 512 KiB segment as a blob
/// file, and any write larger than that is also in the redo record; half of it leaves
/// room for sled's own framing.
const BLOCKING_WRITE_BYTES: usize = 64 * 1024;

/// A split's writes go to sled this many at a time (see [`WriteBatch::write_in_batches`]):
/// each batch holds sled's process-wide lock for about 7 ms here.
const BARRIER_WRITES_PER_BATCH: usize = 1024;

/// How [`StateMachineStore::write`] commits a batch.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Commit {
    /// The redo record, then each write: an apply call's own writes.
    Ordinary,
    /// The redo record, then the writes in sled batches of
    /// [`BARRIER_WRITES_PER_BATCH`], then the redo record cut back to the summaries: a
    /// split, whose writes (the child's records) must never be made again once the child
    /// may have moved on. Not one sled batch: `apply_batch` holds sled's process-wide
    /// lock, so a split of thousands of records stopped every read and write of the node
    /// meanwhile. Not one by one either: under load that took several times as long, and
    /// the parent's reads wait for it.
    Barrier,
    /// One sled batch, which also drops the redo record: a snapshot install.
    Atomic,
}

/// The sled writes of one apply call (or snapshot install).
#[derive(Default)]
pub struct WriteBatch {
    ops: Vec<(sled::IVec, Option<sled::IVec>)>,
    /// Values every apply call writes again in full: see [`Self::insert_summary`].
    summaries: Vec<(sled::IVec, sled::IVec)>,
}

impl WriteBatch {
    pub fn insert(&mut self, key: impl Into<sled::IVec>, value: impl Into<sled::IVec>) {
        self.ops.push((key.into(), Some(value.into())));
    }

    /// Writes a value that every apply call of the group writes again in full (the
    /// applied log id, a kind's running totals). An ordinary apply call keeps it in its
    /// redo record only, not under its own key: the next start makes the last redo record
    /// again before anything reads the key, and the redo record of each call holds the
    /// value as of that call. That saves two sled inserts per apply call, which at one
    /// write per entry were half of the state machine's sled writes. An atomic commit
    /// (a snapshot install) writes it under its key and drops the redo record, and so does
    /// the next start after making the redo record again.
    pub fn insert_summary(&mut self, key: impl Into<sled::IVec>, value: impl Into<sled::IVec>) {
        self.summaries.push((key.into(), value.into()));
    }

    pub fn remove(&mut self, key: impl Into<sled::IVec>) {
        self.ops.push((key.into(), None));
    }

    /// The summaries alone, as a redo record.
    fn encode_summaries_redo(&self) -> Vec<u8> {
        WriteBatch {
            ops: Vec::new(),
            summaries: self.summaries.clone(),
        }
        .encode_redo()
    }

    /// The writes as a redo record: format byte, then per write a `u32` LE key length,
    /// the key, and either `0` (a removal) or `1`, a `u32` LE value length and the value.
    /// Summaries are encoded as ordinary writes after the others.
    fn encode_redo(&self) -> Vec<u8> {
        let writes = || {
            let summaries = self.summaries.iter().map(|(k, v)| (k, Some(v)));
            self.ops.iter().map(|(k, v)| (k, v.as_ref())).chain(summaries)
        };
        let len: usize = writes().map(|(k, v)| 9 + k.len() + v.map_or(0, |v| v.len())).sum();
        let mut out = Vec::with_capacity(1 + len);
        out.push(REDO_FORMAT);
        for (key, value) in writes() {
            out.extend_from_slice(&(key.len() as u32).to_le_bytes());
            out.extend_from_slice(key);
            match value {
                None => out.push(0),
                Some(value) => {
                    out.push(1);
                    out.extend_from_slice(&(value.len() as u32).to_le_bytes());
                    out.extend_from_slice(value);
                }
            }
        }
        out
    }

    fn decode_redo(bytes: &[u8]) -> Result<WriteBatch, String> {
        fn take<'a>(bytes: &mut &'a [u8], n: usize) -> Result<&'a [u8], String> {
            if bytes.len() < n {
                return Err(format!("redo record cut short: {n} bytes wanted, {} left", bytes.len()));
            }
            let (head, rest) = bytes.split_at(n);
            *bytes = rest;
            Ok(head)
        }
        fn take_len(bytes: &mut &[u8]) -> Result<usize, String> {
            let raw = take(bytes, 4)?;
            Ok(u32::from_le_bytes([raw[0], raw[1], raw[2], raw[3]]) as usize)
        }
        let mut rest = bytes;
        match take(&mut rest, 1)?[0] {
            REDO_FORMAT => {}
            other => return Err(format!("unknown redo record format {other}")),
        }
        let mut batch = WriteBatch::default();
        while !rest.is_empty() {
            let key_len = take_len(&mut rest)?;
            let key = take(&mut rest, key_len)?;
            match take(&mut rest, 1)?[0] {
                0 => batch.remove(key),
                1 => {
                    let value_len = take_len(&mut rest)?;
                    batch.insert(key, take(&mut rest, value_len)?);
                }
                other => return Err(format!("unknown redo write kind {other}")),
            }
        }
        Ok(batch)
    }

    /// Makes the writes in order, `ops_per_batch` at a time in sled batches, but not the
    /// summaries (kept in the redo record). A batch holds sled's process-wide lock while
    /// it is made, so every other read and write of the node waits (about 7 µs per write
    /// here), but a busy node makes the same writes one by one several times slower.
    fn write_in_batches(self, sm: &sled::Tree, ops_per_batch: usize) -> sled::Result<()> {
        let mut ops = self.ops.into_iter().peekable();
        while ops.peek().is_some() {
            let mut batch = sled::Batch::default();
            for (key, value) in ops.by_ref().take(ops_per_batch) {
                match value {
                    Some(value) => batch.insert(key, value),
                    None => batch.remove(key),
                }
            }
            sm.apply_batch(batch)?;
        }
        Ok(())
    }

    /// Makes the writes one by one, in order, but not the summaries (kept in the redo
    /// record).
    fn write_each(self, sm: &sled::Tree) -> sled::Result<()> {
        for (key, value) in self.ops {
            match value {
                Some(value) => sm.insert(key, value)?,
                None => sm.remove(key)?,
            };
        }
        Ok(())
    }

    /// Makes the writes in one atomic sled batch.
    fn write_atomically(self, sm: &sled::Tree) -> sled::Result<()> {
        let mut batch = sled::Batch::default();
        for (key, value) in self.ops {
            match value {
                Some(value) => batch.insert(key, value),
                None => batch.remove(key),
            }
        }
        for (key, value) in self.summaries {
            batch.insert(key, value);
        }
        sm.apply_batch(batch)
    }
}

/// Where `group`'s redo record is kept.
#[cfg(test)]
pub fn redo_key(group: GroupId) -> Vec<u8> {
    state_key(group, TAG_REDO, &[])
}

/// Finishes the last apply call of `group` that a crash may have cut short: makes its
/// writes again from the group's redo record. Call before the kind opens its state.
///
/// An ordinary apply call writes its redo record, then its writes one by one (see
/// [`StateMachineStore::write`]). sled recovers a prefix of its log, and one group's
/// writes are made in order by one task, so after a crash either the redo record of the
/// last apply call is there and a prefix of its writes, or none of them and every earlier
/// call's writes. The writes are whole values (never increments), so making them again is
/// harmless now. The record then goes: its summaries are under their keys after this, and
/// a split's record holds its child's records, which no later start may write again once
/// the child has moved on.
pub fn finish_interrupted_apply(db: &sled::Db, group: GroupId) -> Result<(), StorageError> {
    let sm = db.open_tree("sm").map_err(storage_io_error)?;
    let redo_key = state_key(group, TAG_REDO, &[]);
    let Some(redo) = sm.get(&redo_key).map_err(storage_io_error)? else {
        return Ok(());
    };
    WriteBatch::decode_redo(&redo)
        .map_err(|e| storage_io_error(std::io::Error::other(format!("group {group}: {e}"))))?
        .write_each(&sm)
        .map_err(storage_io_error)?;
    // After the writes: sled keeps a prefix of its log, so the removal never outlives them.
    sm.remove(redo_key).map(drop).map_err(storage_io_error)
}

/// A kind's application state. The store around it owns the applied log id, the
/// membership, the atomic commit of each apply call and the snapshot files; the state
/// owns everything else under its group's prefix (tags other than 0).
pub trait GroupState<K: GroupKind<State = Self>>: Sized + Send + Sync + 'static {
    /// What the node may read of this state without going through Raft.
    fn view(&self) -> Arc<K::View>;
    /// Applies one command. Changes go into `batch` or are held until [`Self::stage`];
    /// reads of earlier commands' changes must see them (the batch is not yet committed).
    fn apply(&mut self, command: Cmd<K>, batch: &mut WriteBatch) -> Result<Reply<K>, StorageError>;
    /// Whether `command` reads the committed tree wholesale: the store then commits
    /// everything applied before it first.
    fn is_barrier(_command: &Cmd<K>) -> bool {
        false
    }
    /// Adds the changes held since the last commit to `batch`: a value rewritten in full
    /// by every call (a running total) as a summary ([`WriteBatch::insert_summary`]).
    fn stage(&mut self, batch: &mut WriteBatch) -> Result<(), StorageError>;
    /// Called once the batch is committed: publish the new state to the view.
    fn committed(&mut self);
    /// The whole state, encoded; called between applies, so it is one applied state. A
    /// part that cannot be read fails the build: never a partial snapshot.
    fn snapshot(&self) -> Result<Vec<u8>, StorageError>;
    /// Checks a peer's snapshot data whole, before anything local changes.
    fn check_snapshot(data: &[u8]) -> Result<(), String>;
    /// Whether `sm` holds a whole state of `group`, not part of one (a split's writes are
    /// not one sled batch, so a crash or a removal can leave a prefix of them).
    fn holds_state(sm: &sled::Tree, group: GroupId) -> bool {
        has_state_in(sm, group)
    }
    /// Replaces the state with checked snapshot data: writes go into `batch`, which
    /// already removes every key the group had.
    fn install(&mut self, data: &[u8], batch: &mut WriteBatch) -> Result<(), StorageError>;
}

/// Figures any group's replica publishes, whatever its kind.
#[derive(Debug, Default)]
pub struct Applied {
    index: AtomicU64,
    snapshot_installs: AtomicU64,
}

impl Applied {
    pub fn index(&self) -> u64 {
        self.index.load(Ordering::Acquire)
    }

    pub fn snapshot_installs(&self) -> u64 {
        self.snapshot_installs.load(Ordering::Relaxed)
    }
}

/// What the plumbing reads of a kind's view.
pub trait AppliedView: Send + Sync + 'static {
    /// The hash range this replica's applied state serves, once it took part in a split
    /// (`None`: as bootstrap cut it, or a kind without ranges). A group with a range has
    /// its first leader snapshot it, so replicas added later start from that snapshot.
    fn range(&self) -> Option<(u64, Option<u64>)> {
        None
    }

    /// A split point from the data, from up to `samples` keys (`None`: too few keys, or a
    /// kind that does not split).
    fn split_point(&self, _samples: usize) -> Option<u64> {
        None
    }
}

impl AppliedView for () {}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct AppliedMeta {
    last_applied: Option<LogId>,
    membership: StoredMembership,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct SnapshotPayload {
    applied: AppliedMeta,
    /// The kind's state, as [`GroupState::snapshot`] encoded it.
    state: Vec<u8>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta,
    data: Vec<u8>,
}

/// Why a received snapshot was refused.
#[derive(Debug, thiserror::Error)]
pub enum BadSnapshot {
    #[error("undecodable: {0}")]
    Decode(#[from] codec::CodecError),
    #[error("{0}")]
    State(String),
}

/// Checks a whole snapshot a peer sent for a group of kind `K`, before anything is
/// installed.
pub fn check_snapshot_data<K: GroupKind>(data: &[u8]) -> Result<(), BadSnapshot> {
    let payload: SnapshotPayload = codec::decode(data)?;
    K::State::check_snapshot(&payload.state).map_err(BadSnapshot::State)
}

/// Whether this node holds a whole state of kind `K` for `group` (a split child's is
/// written by its parent's split before the child's replica exists).
pub fn has_state<K: GroupKind>(db: &sled::Db, group: GroupId) -> bool {
    db.open_tree("sm").is_ok_and(|sm| K::State::holds_state(&sm, group))
}

/// Whether `group`'s replica here has committed anything of its own: an apply call's redo
/// record, or its applied meta under its key (a snapshot install, a start). A parent's
/// split writes neither for its child.
pub fn has_applied_here(sm: &sled::Tree, group: GroupId) -> sled::Result<bool> {
    Ok(sm.contains_key(state_key(group, TAG_REDO, &[]))? || sm.contains_key(state_key(group, TAG_APPLIED, &[]))?)
}

/// Whether the `sm` tree holds any key of `group`.
fn has_state_in(sm: &sled::Tree, group: GroupId) -> bool {
    sm.scan_prefix(group_prefix(group)).next().is_some()
}

/// Removes a group's state (in one batch: a crash never leaves part of it) and its
/// snapshot (replica removal).
pub fn destroy_state(db: &sled::Db, group: GroupId) -> sled::Result<()> {
    let sm = db.open_tree("sm")?;
    let mut batch = sled::Batch::default();
    for key in sm.scan_prefix(group_prefix(group)).keys() {
        batch.remove(key?);
    }
    sm.apply_batch(batch)?;
    db.open_tree("snapshots")?.remove(group_prefix(group))?;
    Ok(())
}

pub struct StateMachineStore<K: GroupKind> {
    group: GroupId,
    sm: sled::Tree,
    snapshots: sled::Tree,
    flusher: Flusher,
    meta: AppliedMeta,
    state: K::State,
    applied: Arc<Applied>,
    node_label: String,
    apply_duration: metrics::Histogram,
    probe: Probe,
    /// Dropped with the store: see [`Self::stopped`].
    stopped_tx: Option<oneshot::Sender<()>>,
}

impl<K: GroupKind> StateMachineStore<K> {
    /// Opens (or creates) a group's store around `state`, which the kind opened from the
    /// same `sm` tree.
    pub fn open(
        db: &sled::Db,
        group: GroupId,
        state: K::State,
        flusher: Flusher,
        node_label: String,
        probe: Probe,
    ) -> Result<Self, StorageError> {
        let sm = db.open_tree("sm").map_err(storage_io_error)?;
        let snapshots = db.open_tree("snapshots").map_err(storage_io_error)?;
        let meta: AppliedMeta = match sm.get(state_key(group, TAG_APPLIED, &[])).map_err(storage_io_error)? {
            Some(bytes) => codec::decode(&bytes).map_err(storage_io_error)?,
            None => AppliedMeta::default(),
        };
        let applied = Arc::new(Applied::default());
        applied
            .index
            .store(meta.last_applied.map_or(0, |l| l.index), Ordering::Release);
        Ok(StateMachineStore {
            group,
            sm,
            snapshots,
            flusher,
            meta,
            state,
            applied,
            apply_duration: metrics::histogram!("midasflow_raft_apply_duration_seconds", "node" => node_label.clone()),
            node_label,
            probe,
            stopped_tx: None,
        })
    }

    /// Resolves once the store is dropped. openraft 0.9's `Raft::shutdown` waits for its
    /// core only: the state machine worker goes on with the applies queued to it, so a
    /// replica's data may be deleted only once this resolves, or a late apply would leave
    /// part of its state (and its applied index) behind for the next replica of the group.
    pub fn stopped(&mut self) -> oneshot::Receiver<()> {
        let (tx, rx) = oneshot::channel();
        self.stopped_tx = Some(tx);
        rx
    }

    pub fn applied(&self) -> Arc<Applied> {
        self.applied.clone()
    }

    pub fn view(&self) -> Arc<K::View> {
        self.state.view()
    }

    /// Writes `batch`, the state's held changes and the applied meta to sled, not yet
    /// durable: the log is, and a restart re-applies what sled lost.
    ///
    /// The redo record first, then each write on its own: a sled 0.34 `apply_batch` seals
    /// and writes sled's IO buffer twice (a `pwrite` and a waited `sync_file_range` each,
    /// on sled's threads) and takes a process-wide exclusive lock, which made it the
    /// largest cost of a write. [`finish_interrupted_apply`] completes a call a crash cut
    /// short. [`Commit::Barrier`] then cuts the redo record back to the summaries, and
    /// [`Commit::Atomic`] writes one sled batch instead.
    fn write(&mut self, mut batch: WriteBatch, commit: Commit) -> Result<(), StorageError> {
        self.state.stage(&mut batch)?;
        batch.insert_summary(
            state_key(self.group, TAG_APPLIED, &[]),
            codec::encode(&self.meta).map_err(storage_io_error)?,
        );
        let redo_key = state_key(self.group, TAG_REDO, &[]);
        if commit == Commit::Atomic {
            // An older redo record must not be made again over this batch.
            batch.remove(redo_key);
            return batch.write_atomically(&self.sm).map_err(storage_io_error);
        }
        let redo = batch.encode_redo();
        let trimmed = (commit == Commit::Barrier).then(|| batch.encode_summaries_redo());
        let large = redo.len() >= BLOCKING_WRITE_BYTES;
        let sm = &self.sm;
        let write = move || -> sled::Result<()> {
            sm.insert(&redo_key, redo)?;
            match trimmed {
                Some(trimmed) => {
                    batch.write_in_batches(sm, BARRIER_WRITES_PER_BATCH)?;
                    sm.insert(redo_key, trimmed)?;
                }
                None => batch.write_each(sm)?,
            }
            Ok(())
        };
        // A write this large makes sled blob files, each written synchronously (see
        // `make_blob_writes_synchronous`), and a split's batches wait for sled's
        // process-wide lock: neither may hold a tokio worker meanwhile.
        if large || commit == Commit::Barrier {
            run_blocking(write)
        } else {
            write()
        }
        .map_err(storage_io_error)
    }

    /// Commits an apply call's writes (or those before its next barrier) and publishes
    /// them. A barrier (a split) writes state other groups build on (a split child's
    /// records): they are durable, and its redo record no longer holds them, before anyone
    /// sees them, or a crash could let the child apply its own log over records a restart
    /// then writes again.
    async fn commit_call(&mut self, batch: WriteBatch, holds_barrier: bool) -> Result<(), StorageError> {
        if holds_barrier {
            let started = Instant::now();
            let writes = batch.ops.len();
            self.write(batch, Commit::Barrier)?;
            let written = Instant::now();
            self.flusher.flush().await.map_err(storage_io_error)?;
            tracing::info!(
                group = self.group,
                writes,
                write_ms = written.duration_since(started).as_millis() as u64,
                flush_ms = written.elapsed().as_millis() as u64,
                "barrier committed"
            );
        } else {
            self.write(batch, Commit::Ordinary)?;
        }
        self.publish();
        Ok(())
    }

    /// Shows what [`Self::write`] committed to the node.
    fn publish(&mut self) {
        self.state.committed();
        let index = self.meta.last_applied.map_or(0, |l| l.index);
        self.applied.index.store(index, Ordering::Release);
    }
}

/// Builds a snapshot of one group of kind `K` (openraft ties the builder to the type
/// config, hence the marker).
pub struct SnapshotBuilder<K> {
    group: GroupId,
    snapshots: sled::Tree,
    flusher: Flusher,
    /// The state copied between applies, or why it could not be read. A snapshot built
    /// from part of the state would let openraft purge the log and ship the hole to
    /// followers, so a failed read fails the build.
    payload: Result<SnapshotPayload, StorageError>,
    kind: std::marker::PhantomData<fn() -> K>,
}

impl<K: GroupKind> RaftSnapshotBuilder<Config<K>> for SnapshotBuilder<K> {
    async fn build_snapshot(&mut self) -> Result<Snapshot<Config<K>>, StorageError> {
        let payload = self.payload.as_ref().map_err(Clone::clone)?;
        let data = run_blocking(|| codec::encode(payload)).map_err(storage_io_error)?;
        let last = payload.applied.last_applied;
        let meta = SnapshotMeta {
            last_log_id: last,
            last_membership: payload.applied.membership.clone(),
            snapshot_id: match last {
                Some(l) => format!("{}-{}-{}", self.group, l.leader_id.term, l.index),
                None => format!("{}-empty", self.group),
            },
        };
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data: data.clone(),
        };
        // openraft purges the log this snapshot covers once we return: it must be durable.
        store_snapshot(&self.snapshots, &self.flusher, self.group, &stored).await?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

/// Writes a group's snapshot record and makes it durable.
async fn store_snapshot(
    snapshots: &sled::Tree,
    flusher: &Flusher,
    group: GroupId,
    stored: &StoredSnapshot,
) -> Result<(), StorageError> {
    run_blocking(|| {
        let bytes = codec::encode(stored).map_err(storage_io_error)?;
        snapshots.insert(group_prefix(group), bytes).map_err(storage_io_error)
    })?;
    flusher.flush().await.map_err(storage_io_error)
}

impl<K: GroupKind> RaftStateMachine<Config<K>> for StateMachineStore<K> {
    type SnapshotBuilder = SnapshotBuilder<K>;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        Ok((self.meta.last_applied, self.meta.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Reply<K>>, StorageError>
    where
        I: IntoIterator<Item = Entry<K>> + Send,
        I::IntoIter: Send,
    {
        let started = Instant::now();
        let mut batch = WriteBatch::default();
        let mut results = Vec::new();
        let mut barrier_applied = false;
        for entry in entries {
            let barrier = matches!(&entry.payload, EntryPayload::Normal(command) if K::State::is_barrier(command));
            if barrier {
                // What came before, which may be an earlier barrier of this call.
                self.commit_call(std::mem::take(&mut batch), barrier_applied).await?;
                barrier_applied = true;
            }
            self.meta.last_applied = Some(entry.log_id);
            let reply = match entry.payload {
                EntryPayload::Blank => Reply::<K>::default(),
                EntryPayload::Membership(membership) => {
                    self.meta.membership = StoredMembership::new(Some(entry.log_id), membership);
                    Reply::<K>::default()
                }
                // A barrier (a split) scans and moves a share of the shard's records.
                EntryPayload::Normal(command) if barrier => run_blocking(|| self.state.apply(command, &mut batch))?,
                EntryPayload::Normal(command) => self.state.apply(command, &mut batch)?,
            };
            results.push(reply);
        }
        self.commit_call(batch, barrier_applied).await?;
        if let Some(applied) = self.meta.last_applied {
            self.probe.emit(|| NodeEvent::Applied {
                group: self.group,
                index: applied.index,
            });
        }
        self.apply_duration.record(started.elapsed().as_secs_f64());
        Ok(results)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        // Copied here, between applies, so the snapshot is one consistent applied state.
        let payload = run_blocking(|| self.state.snapshot()).map(|state| SnapshotPayload {
            applied: self.meta.clone(),
            state,
        });
        if let Err(e) = &payload {
            tracing::error!(group = self.group, error = %e, "reading state for a snapshot failed; the build fails");
        }
        SnapshotBuilder {
            group: self.group,
            snapshots: self.snapshots.clone(),
            flusher: self.flusher.clone(),
            payload,
            kind: std::marker::PhantomData,
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let data = snapshot.into_inner();
        run_blocking(|| {
            // A peer's snapshot is checked whole before anything local changes.
            let payload: SnapshotPayload = codec::decode(&data).map_err(storage_io_error)?;
            K::State::check_snapshot(&payload.state).map_err(|e| storage_io_error(BadSnapshot::State(e)))?;
            let mut batch = WriteBatch::default();
            for key in self.sm.scan_prefix(group_prefix(self.group)).keys() {
                batch.remove(key.map_err(storage_io_error)?);
            }
            self.state.install(&payload.state, &mut batch)?;
            // The state and its applied meta first, in one batch; then the snapshot record.
            let before = std::mem::replace(
                &mut self.meta,
                AppliedMeta {
                    last_applied: meta.last_log_id,
                    membership: meta.last_membership.clone(),
                },
            );
            if let Err(e) = self.write(batch, Commit::Atomic) {
                self.meta = before;
                return Err(e);
            }
            Ok(())
        })?;
        self.publish();
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data,
        };
        store_snapshot(&self.snapshots, &self.flusher, self.group, &stored).await?;
        self.applied.snapshot_installs.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("midasflow_raft_snapshot_installs_total", "node" => self.node_label.clone()).increment(1);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<Config<K>>>, StorageError> {
        match self.snapshots.get(group_prefix(self.group)).map_err(storage_io_error)? {
            Some(bytes) => {
                let stored: StoredSnapshot = codec::decode(&bytes).map_err(storage_io_error)?;
                Ok(Some(Snapshot {
                    meta: stored.meta,
                    snapshot: Box::new(Cursor::new(stored.data)),
                }))
            }
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> WriteBatch {
        let mut batch = WriteBatch::default();
        batch.insert(&b"a"[..], &b"one"[..]);
        batch.remove(&b"b"[..]);
        batch.insert(&b""[..], &b""[..]);
        batch.insert(vec![7u8; 300], vec![9u8; 70_000]);
        batch.insert_summary(&b"s"[..], &b"total"[..]);
        batch
    }

    /// The summaries come back as ordinary writes after the others, so the start's replay
    /// makes them under their keys.
    #[test]
    fn a_redo_record_gives_back_the_writes_in_order() {
        let batch = sample();
        let decoded = WriteBatch::decode_redo(&batch.encode_redo()).unwrap();
        let mut expected = batch.ops.clone();
        expected.extend(batch.summaries.iter().map(|(k, v)| (k.clone(), Some(v.clone()))));
        assert_eq!(decoded.ops, expected);
        assert!(decoded.summaries.is_empty());
    }

    /// A damaged redo record fails the replica's start with an error, never a panic or a
    /// partial replay of garbage.
    #[test]
    fn a_damaged_redo_record_is_refused() {
        let bytes = sample().encode_redo();
        for cut in 1..bytes.len() {
            if WriteBatch::decode_redo(&bytes[..cut]).is_ok() {
                // A cut exactly between two writes is a shorter valid record.
                let decoded = WriteBatch::decode_redo(&bytes[..cut]).unwrap();
                assert!(decoded.ops.len() < 5, "cut at {cut}");
            }
        }
        assert!(WriteBatch::decode_redo(&[]).is_err());
        assert!(WriteBatch::decode_redo(&[REDO_FORMAT + 1]).is_err());
        let mut bad_kind = sample().encode_redo();
        bad_kind[1 + 4 + 1] = 7;
        assert!(WriteBatch::decode_redo(&bad_kind).is_err());
        let mut huge = vec![REDO_FORMAT];
        huge.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(WriteBatch::decode_redo(&huge).is_err());
    }

    /// `stopped` resolves when the store goes, not before: replica removal waits on it
    /// before deleting the group's data.
    #[tokio::test]
    async fn a_store_tells_when_it_is_gone() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path()).unwrap();
        let files = crate::raft::log_store::DurableFiles::open(dir.path()).unwrap();
        let (wal, _) =
            crate::raft::wal::Wal::open(&dir.path().join("raft-log"), crate::raft::wal::SEGMENT_BYTES_DEFAULT).unwrap();
        let flusher = Flusher::start(
            db.clone(),
            files,
            Arc::new(wal),
            crate::raft::log_store::FlushMode::Inline,
            "t".into(),
        );
        let state = crate::shard::store::ShardState::open(&db, 7, false).unwrap();
        let mut store = StateMachineStore::<crate::shard::store::ShardKind>::open(
            &db,
            7,
            state,
            flusher,
            "t".into(),
            Probe::new(1, None),
        )
        .unwrap();
        let mut stopped = store.stopped();
        assert!(stopped
            .try_recv()
            .is_err_and(|e| e == oneshot::error::TryRecvError::Empty));
        drop(store);
        assert!(tokio::time::timeout(std::time::Duration::from_secs(5), stopped)
            .await
            .is_ok());
    }

    /// Only the last apply call can be cut short: its redo record is made again over
    /// whatever prefix of its writes reached sled; a group without one is left alone.
    #[test]
    fn an_interrupted_apply_is_finished_from_its_redo_record() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path()).unwrap();
        let sm = db.open_tree("sm").unwrap();
        let mut batch = WriteBatch::default();
        batch.insert(state_key(3, 1, b"x"), &b"new"[..]);
        batch.remove(state_key(3, 1, b"gone"));
        batch.insert(state_key(3, TAG_APPLIED, &[]), &b"meta"[..]);
        sm.insert(state_key(3, 1, b"x"), &b"old"[..]).unwrap();
        sm.insert(state_key(3, 1, b"gone"), &b"old"[..]).unwrap();
        sm.insert(redo_key(3), batch.encode_redo()).unwrap();
        // The crash came after the first write.
        sm.insert(state_key(3, 1, b"x"), &b"new"[..]).unwrap();
        finish_interrupted_apply(&db, 4).unwrap();
        assert_eq!(sm.get(state_key(3, 1, b"gone")).unwrap().as_deref(), Some(&b"old"[..]));
        finish_interrupted_apply(&db, 3).unwrap();
        assert_eq!(sm.get(state_key(3, 1, b"x")).unwrap().as_deref(), Some(&b"new"[..]));
        assert_eq!(sm.get(state_key(3, 1, b"gone")).unwrap(), None);
        assert_eq!(
            sm.get(state_key(3, TAG_APPLIED, &[])).unwrap().as_deref(),
            Some(&b"meta"[..])
        );
    }

    /// Writes made in several sled batches keep their order across batch boundaries.
    #[test]
    fn writes_in_batches_keep_their_order() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path()).unwrap();
        let sm = db.open_tree("sm").unwrap();
        let mut batch = WriteBatch::default();
        for i in 0..7u8 {
            batch.insert(state_key(3, 1, &[i]), &[i][..]);
        }
        batch.remove(state_key(3, 1, &[2]));
        batch.insert(state_key(3, 1, &[5]), &b"again"[..]);
        batch.insert_summary(state_key(3, TAG_APPLIED, &[]), &b"meta"[..]);
        batch.write_in_batches(&sm, 3).unwrap();
        let written: Vec<(Vec<u8>, Vec<u8>)> = sm
            .iter()
            .map(|kv| kv.map(|(k, v)| (k.to_vec(), v.to_vec())).unwrap())
            .collect();
        let expected: Vec<(Vec<u8>, Vec<u8>)> = [0u8, 1, 3, 4, 5, 6]
            .iter()
            .map(|&i| (state_key(3, 1, &[i]), if i == 5 { b"again".to_vec() } else { vec![i] }))
            .collect();
        assert_eq!(written, expected, "in order, and not the summaries");
    }

    /// A split cut short by a crash is finished from its redo record, which holds the
    /// child's records. Once made again, the record goes: the child may then move on,
    /// and the start after must not write its records back.
    #[test]
    fn a_finished_redo_record_is_not_made_again_at_the_next_start() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path()).unwrap();
        let sm = db.open_tree("sm").unwrap();
        let mut split = WriteBatch::default();
        split.insert(state_key(9, 1, b"moved"), &b"from the split"[..]);
        split.remove(state_key(3, 1, b"moved"));
        split.insert_summary(state_key(3, TAG_APPLIED, &[]), &b"meta"[..]);
        sm.insert(redo_key(3), split.encode_redo()).unwrap();
        finish_interrupted_apply(&db, 3).unwrap();
        assert_eq!(sm.get(redo_key(3)).unwrap(), None, "the record went");
        assert_eq!(
            sm.get(state_key(3, TAG_APPLIED, &[])).unwrap().as_deref(),
            Some(&b"meta"[..]),
            "its summaries are under their keys"
        );
        // The child, started on the split's state, writes its key again.
        sm.insert(state_key(9, 1, b"moved"), &b"the child's"[..]).unwrap();
        finish_interrupted_apply(&db, 3).unwrap();
        assert_eq!(
            sm.get(state_key(9, 1, b"moved")).unwrap().as_deref(),
            Some(&b"the child's"[..])
        );
    }
}
