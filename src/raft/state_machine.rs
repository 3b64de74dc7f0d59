//! The sled-backed state machine shared by shard groups and the PD group.
//!
//! Layout in the `sm` tree, all under the group's 8-byte prefix: `0x00` the applied
//! meta, `0x01 ‖ key` one [`KeyRecord`] per key, `0x02` the PD's cluster map. One apply call
//! writes its records and the new applied index in one atomic sled batch, so after a crash
//! the state and its applied index always agree. Snapshots live in the `snapshots` tree.

use std::collections::BTreeMap;
use std::io::Cursor;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::time::Instant;

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{EntryPayload, RaftSnapshotBuilder};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::log_store::Flusher;
use super::probe::{NodeEvent, Probe};
use super::SplitResult;
use super::{
    group_prefix, storage_io_error, Entry, GroupId, LogId, Request, Response, SnapshotMeta, StorageError,
    StoredMembership, TypeConfig,
};
use crate::codec;
use crate::placement::{key_hash, ClusterMap};
use crate::shard::{apply_op, KeyRecord, KvResult};

const TAG_META: u8 = 0;
const TAG_RECORD: u8 = 1;
const TAG_PD_MAP: u8 = 2;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SmMeta {
    pub last_applied: Option<LogId>,
    pub membership: StoredMembership,
    pub live_keys: u64,
    pub live_bytes: u64,
    /// The shard's hash range `[start, end)` once it took part in a split (as the parent
    /// or the child); `None` for a shard as bootstrap cut it, which has never changed.
    pub range: Option<(u64, Option<u64>)>,
}

/// Whether `range` (`None`: unchanged since bootstrap) covers `hash`.
fn range_covers(range: Option<(u64, Option<u64>)>, hash: u64) -> bool {
    range.is_none_or(|(start, end)| hash >= start && end.is_none_or(|end| hash < end))
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct SnapshotPayload {
    meta: SmMeta,
    pd_map: Option<ClusterMap>,
    /// (user key, encoded [`KeyRecord`]) in key order.
    records: Vec<(Vec<u8>, Vec<u8>)>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta,
    data: Vec<u8>,
}

fn tagged(group: GroupId, tag: u8, rest: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(9 + rest.len());
    key.extend_from_slice(&group_prefix(group));
    key.push(tag);
    key.extend_from_slice(rest);
    key
}

/// Publishes a cluster map to the node, never going back to an older revision.
pub fn publish_map(tx: &watch::Sender<Arc<ClusterMap>>, map: &ClusterMap) {
    tx.send_if_modified(|current| {
        if map.revision > current.revision {
            *current = Arc::new(map.clone());
            true
        } else {
            false
        }
    });
}

/// Decodes a stored or received record, refusing any shape apply never writes.
fn decode_record(bytes: &[u8]) -> Result<KeyRecord, StorageError> {
    let record: KeyRecord = codec::decode(bytes).map_err(storage_io_error)?;
    record.validate().map_err(storage_io_error)?;
    Ok(record)
}

/// What the rest of the node may read of a group's state without going through Raft.
pub struct GroupView {
    pub group: GroupId,
    sm: sled::Tree,
    range: std::sync::RwLock<Option<(u64, Option<u64>)>>,
    applied_index: AtomicU64,
    live_keys: AtomicU64,
    live_bytes: AtomicU64,
    snapshot_installs: AtomicU64,
}

impl GroupView {
    /// The key's record as of this replica's applied state.
    pub fn get(&self, key: &[u8]) -> Result<Option<KeyRecord>, StorageError> {
        match self
            .sm
            .get(tagged(self.group, TAG_RECORD, key))
            .map_err(storage_io_error)?
        {
            Some(bytes) => Ok(Some(decode_record(&bytes)?)),
            None => Ok(None),
        }
    }

    pub fn applied_index(&self) -> u64 {
        self.applied_index.load(Ordering::Acquire)
    }

    /// The applied range (`None`: the bootstrap range, never split).
    pub fn range(&self) -> Option<(u64, Option<u64>)> {
        *self.range.read().unwrap()
    }

    /// Whether this replica's applied state serves keys hashing to `hash`.
    pub fn covers(&self, hash: u64) -> bool {
        range_covers(self.range(), hash)
    }

    /// A split point from the data: the median hash of up to `samples` keys spread over
    /// the shard (every n-th key in key order, which is random in hash order). `None` if
    /// the shard has fewer than two keys in its range.
    pub fn median_key_hash(&self, samples: usize) -> Option<u64> {
        let prefix = tagged(self.group, TAG_RECORD, &[]);
        let total = (self.live_keys() as usize).max(1);
        let step = (total / samples.max(1)).max(1);
        let range = self.range();
        let mut hashes: Vec<u64> = self
            .sm
            .scan_prefix(&prefix)
            .keys()
            .step_by(step)
            .filter_map(Result::ok)
            .map(|k| crate::placement::key_hash(&k[prefix.len()..]))
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

    pub fn snapshot_installs(&self) -> u64 {
        self.snapshot_installs.load(Ordering::Relaxed)
    }

    fn publish(&self, meta: &SmMeta) {
        *self.range.write().unwrap() = meta.range;
        self.live_keys.store(meta.live_keys, Ordering::Relaxed);
        self.live_bytes.store(meta.live_bytes, Ordering::Relaxed);
        let applied = meta.last_applied.map_or(0, |l| l.index);
        self.applied_index.store(applied, Ordering::Release);
    }
}

pub struct StateMachineStore {
    group: GroupId,
    sm: sled::Tree,
    snapshots: sled::Tree,
    flusher: Flusher,
    meta: SmMeta,
    /// Present only on the PD group.
    pd_map: Option<ClusterMap>,
    map_tx: Option<watch::Sender<Arc<ClusterMap>>>,
    view: Arc<GroupView>,
    node_label: String,
    probe: Probe,
    /// Planted bug (simulation only): apply writes whatever the key's hash.
    skip_range_check: bool,
}

impl StateMachineStore {
    /// Plants the "no range check after a split" bug (see `node::PlantedBug`).
    pub fn plant_no_range_check(&mut self) {
        self.skip_range_check = true;
    }

    /// Opens (or creates) a group's state machine. `map_tx` is given for the PD group only.
    pub fn open(
        db: &sled::Db,
        group: GroupId,
        flusher: Flusher,
        map_tx: Option<watch::Sender<Arc<ClusterMap>>>,
        node_label: String,
        probe: Probe,
    ) -> Result<Self, StorageError> {
        let sm = db.open_tree("sm").map_err(storage_io_error)?;
        let snapshots = db.open_tree("snapshots").map_err(storage_io_error)?;
        let meta = match sm.get(tagged(group, TAG_META, &[])).map_err(storage_io_error)? {
            Some(bytes) => codec::decode(&bytes).map_err(storage_io_error)?,
            None => SmMeta::default(),
        };
        let pd_map = match &map_tx {
            None => None,
            Some(_) => Some(
                match sm.get(tagged(group, TAG_PD_MAP, &[])).map_err(storage_io_error)? {
                    Some(bytes) => codec::decode(&bytes).map_err(storage_io_error)?,
                    None => ClusterMap::default(),
                },
            ),
        };
        let view = Arc::new(GroupView {
            group,
            sm: sm.clone(),
            range: std::sync::RwLock::new(None),
            applied_index: AtomicU64::new(0),
            live_keys: AtomicU64::new(0),
            live_bytes: AtomicU64::new(0),
            snapshot_installs: AtomicU64::new(0),
        });
        view.publish(&meta);
        if let (Some(tx), Some(map)) = (&map_tx, &pd_map) {
            publish_map(tx, map);
        }
        Ok(StateMachineStore {
            group,
            sm,
            snapshots,
            flusher,
            meta,
            pd_map,
            map_tx,
            view,
            node_label,
            probe,
            skip_range_check: false,
        })
    }

    pub fn view(&self) -> Arc<GroupView> {
        self.view.clone()
    }

    /// Whether this node holds state for `group` (a split child's state is written by its
    /// parent's split before the child's replica exists).
    pub fn has_state(db: &sled::Db, group: GroupId) -> bool {
        db.open_tree("sm")
            .and_then(|sm| sm.contains_key(tagged(group, TAG_META, &[])))
            .unwrap_or(false)
    }

    /// Removes the group's state and snapshot (replica removal).
    pub fn destroy(db: &sled::Db, group: GroupId) -> sled::Result<()> {
        let sm = db.open_tree("sm")?;
        for key in sm.scan_prefix(group_prefix(group)).keys() {
            sm.remove(key?)?;
        }
        db.open_tree("snapshots")?.remove(group_prefix(group))?;
        Ok(())
    }

    fn load_record(&self, key: &[u8]) -> Result<Option<KeyRecord>, StorageError> {
        self.view.get(key)
    }

    /// Writes the records changed so far, the PD map if it changed, and the applied meta,
    /// in one atomic batch; then publishes them.
    fn write_applied(
        &mut self,
        overlay: &mut BTreeMap<Vec<u8>, KeyRecord>,
        map_changed: &mut bool,
    ) -> Result<(), StorageError> {
        let mut batch = sled::Batch::default();
        for (key, record) in std::mem::take(overlay) {
            let bytes = codec::encode(&record).map_err(storage_io_error)?;
            batch.insert(tagged(self.group, TAG_RECORD, &key), bytes);
        }
        let publish = std::mem::take(map_changed);
        if let (true, Some(map)) = (publish, &self.pd_map) {
            batch.insert(
                tagged(self.group, TAG_PD_MAP, &[]),
                codec::encode(map).map_err(storage_io_error)?,
            );
        }
        batch.insert(
            tagged(self.group, TAG_META, &[]),
            codec::encode(&self.meta).map_err(storage_io_error)?,
        );
        self.sm.apply_batch(batch).map_err(storage_io_error)?;
        self.view.publish(&self.meta);
        if let (true, Some(map), Some(tx)) = (publish, &self.pd_map, &self.map_tx) {
            publish_map(tx, map);
        }
        Ok(())
    }

    /// Applies a split: in one batch, the records hashing to `[at, end)` move under the
    /// child's prefix, the child's meta is written (its range; no log yet: its replicas
    /// start it from this state), and this shard's range ends at `at`. A replica whose range
    /// is not `planned` refuses, except a repeat of the split it already applied.
    fn split(&mut self, child: GroupId, at: u64, planned: (u64, Option<u64>)) -> Result<Response, StorageError> {
        let (start, end) = self.meta.range.unwrap_or(planned);
        let rejected = |reason: String| {
            tracing::warn!(group = self.group, child, at, %reason, "split refused");
            Ok(Response::Split(SplitResult::Rejected { reason }))
        };
        if (start, end) != planned {
            if start == planned.0 && end == Some(at) {
                return Ok(Response::Split(SplitResult::Done { child }));
            }
            return rejected(format!(
                "this shard's range is {start:#x}..{end:?}, not the planned {planned:?}"
            ));
        }
        if at <= start || end.is_some_and(|end| at >= end) {
            return rejected(format!("{at:#x} is not inside {start:#x}..{end:?}"));
        }
        if self
            .sm
            .contains_key(tagged(child, TAG_META, &[]))
            .map_err(storage_io_error)?
        {
            return rejected(format!("shard {child} already has state on this node"));
        }
        let prefix = tagged(self.group, TAG_RECORD, &[]);
        let mut batch = sled::Batch::default();
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
            batch.insert(tagged(child, TAG_RECORD, user_key), value);
            batch.remove(key);
        }
        let child_meta = SmMeta {
            live_keys: keys,
            live_bytes: bytes,
            range: Some((at, end)),
            ..SmMeta::default()
        };
        batch.insert(
            tagged(child, TAG_META, &[]),
            codec::encode(&child_meta).map_err(storage_io_error)?,
        );
        self.meta.range = Some((start, Some(at)));
        self.meta.live_keys = self.meta.live_keys.saturating_sub(keys);
        self.meta.live_bytes = self.meta.live_bytes.saturating_sub(bytes);
        batch.insert(
            tagged(self.group, TAG_META, &[]),
            codec::encode(&self.meta).map_err(storage_io_error)?,
        );
        self.sm.apply_batch(batch).map_err(storage_io_error)?;
        self.view.publish(&self.meta);
        tracing::info!(group = self.group, child, at = %format!("{at:#x}"), keys, "split applied");
        Ok(Response::Split(SplitResult::Done { child }))
    }

    fn snapshot_payload(&self) -> Result<SnapshotPayload, StorageError> {
        let prefix = tagged(self.group, TAG_RECORD, &[]);
        let mut records = Vec::new();
        for item in self.sm.scan_prefix(&prefix) {
            let (key, value) = item.map_err(storage_io_error)?;
            // A record this node cannot read must fail the build, not travel to followers.
            decode_record(&value)?;
            records.push((key[prefix.len()..].to_vec(), value.to_vec()));
        }
        Ok(SnapshotPayload {
            meta: self.meta.clone(),
            pd_map: self.pd_map.clone(),
            records,
        })
    }
}

/// Why a received snapshot was refused.
#[derive(Debug, thiserror::Error)]
pub enum BadSnapshot {
    #[error("undecodable: {0}")]
    Decode(#[from] codec::CodecError),
    #[error("record {index}: {why}")]
    Record { index: usize, why: String },
    #[error("record {0}: keys are not strictly increasing")]
    KeyOrder(usize),
    #[error("the placement map does not tile the ring: {0}")]
    Map(String),
}

/// Checks every record of a peer's snapshot (and the PD map, on the PD group); returns the
/// live key and byte counts recomputed from the records, never taken from the sender.
fn validate_snapshot(payload: &SnapshotPayload, is_pd: bool) -> Result<(u64, u64), BadSnapshot> {
    let (mut keys, mut bytes) = (0u64, 0u64);
    for (index, (key, encoded)) in payload.records.iter().enumerate() {
        if key.is_empty() {
            return Err(BadSnapshot::Record {
                index,
                why: "empty key".into(),
            });
        }
        if index > 0 && payload.records[index - 1].0 >= *key {
            return Err(BadSnapshot::KeyOrder(index));
        }
        let record = decode_record(encoded).map_err(|e| BadSnapshot::Record {
            index,
            why: e.to_string(),
        })?;
        keys += u64::from(record.is_live());
        bytes += record.live_value_bytes();
    }
    if let (true, Some(map)) = (is_pd, &payload.pd_map) {
        if map.is_bootstrapped() {
            map.check_tiling().map_err(BadSnapshot::Map)?;
        }
    }
    Ok((keys, bytes))
}

/// Checks a whole snapshot a peer sent, before anything is installed.
pub fn check_snapshot_data(data: &[u8], is_pd: bool) -> Result<(), BadSnapshot> {
    let payload: SnapshotPayload = codec::decode(data)?;
    validate_snapshot(&payload, is_pd).map(|_| ())
}

pub struct SnapshotBuilder {
    group: GroupId,
    snapshots: sled::Tree,
    flusher: Flusher,
    /// The state copied between applies, or why it could not be read. A snapshot built
    /// from part of the state would let openraft purge the log and ship the hole to
    /// followers, so a failed read fails the build.
    payload: Result<SnapshotPayload, StorageError>,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let payload = self.payload.as_ref().map_err(Clone::clone)?;
        let data = codec::encode(payload).map_err(storage_io_error)?;
        let last = payload.meta.last_applied;
        let meta = SnapshotMeta {
            last_log_id: last,
            last_membership: payload.meta.membership.clone(),
            snapshot_id: match last {
                Some(l) => format!("{}-{}-{}", self.group, l.leader_id.term, l.index),
                None => format!("{}-empty", self.group),
            },
        };
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data: data.clone(),
        };
        let bytes = codec::encode(&stored).map_err(storage_io_error)?;
        self.snapshots
            .insert(group_prefix(self.group), bytes)
            .map_err(storage_io_error)?;
        // openraft purges the log this snapshot covers once we return: it must be durable.
        self.flusher.flush().await.map_err(storage_io_error)?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        Ok((self.meta.last_applied, self.meta.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Response>, StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let started = Instant::now();
        let mut overlay: BTreeMap<Vec<u8>, KeyRecord> = BTreeMap::new();
        let mut results = Vec::new();
        let mut map_changed = false;
        for entry in entries {
            if let EntryPayload::Normal(Request::Split { child, at, start, end }) = entry.payload {
                // The split reads the tree: everything before it is written first.
                self.write_applied(&mut overlay, &mut map_changed)?;
                self.meta.last_applied = Some(entry.log_id);
                results.push(self.split(child, at, (start, end))?);
                continue;
            }
            self.meta.last_applied = Some(entry.log_id);
            let response = match entry.payload {
                EntryPayload::Blank => Response::Empty,
                EntryPayload::Membership(membership) => {
                    self.meta.membership = StoredMembership::new(Some(entry.log_id), membership);
                    Response::Empty
                }
                // A shard never split has no range to check: no hash on that path.
                EntryPayload::Normal(Request::Kv(op))
                    if !self.skip_range_check
                        && self.meta.range.is_some()
                        && !range_covers(self.meta.range, key_hash(op.key())) =>
                {
                    Response::Kv(KvResult::WrongShard)
                }
                EntryPayload::Normal(Request::Kv(op)) => {
                    let current = match overlay.get(op.key()) {
                        Some(record) => Some(record.clone()),
                        None => self.load_record(op.key())?,
                    };
                    let (next, result) = apply_op(current.as_ref(), &op);
                    if let Some(next) = next {
                        let was_live = current.as_ref().is_some_and(KeyRecord::is_live);
                        let old_bytes = current.as_ref().map_or(0, KeyRecord::live_value_bytes);
                        self.meta.live_keys = self.meta.live_keys + u64::from(next.is_live()) - u64::from(was_live);
                        self.meta.live_bytes = self.meta.live_bytes + next.live_value_bytes() - old_bytes;
                        overlay.insert(op.key().to_vec(), next);
                    }
                    Response::Kv(result)
                }
                EntryPayload::Normal(Request::Pd(command)) => match &mut self.pd_map {
                    Some(map) => {
                        map_changed = true;
                        Response::Pd(map.apply(&command))
                    }
                    None => Response::Empty,
                },
                EntryPayload::Normal(Request::Split { .. }) => unreachable!("handled above"),
            };
            results.push(response);
        }
        self.write_applied(&mut overlay, &mut map_changed)?;
        if let Some(applied) = self.meta.last_applied {
            self.probe.emit(|| NodeEvent::Applied {
                group: self.group,
                index: applied.index,
            });
        }
        metrics::histogram!("midasflow_raft_apply_duration_seconds", "node" => self.node_label.clone())
            .record(started.elapsed().as_secs_f64());
        Ok(results)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        // Copied here, between applies, so the snapshot is one consistent applied state.
        let payload = self.snapshot_payload();
        if let Err(e) = &payload {
            tracing::error!(group = self.group, error = %e, "reading state for a snapshot failed; the build fails");
        }
        SnapshotBuilder {
            group: self.group,
            snapshots: self.snapshots.clone(),
            flusher: self.flusher.clone(),
            payload,
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
        // A peer's snapshot is checked whole before anything local changes.
        let payload: SnapshotPayload = codec::decode(&data).map_err(storage_io_error)?;
        let counts = validate_snapshot(&payload, self.pd_map.is_some()).map_err(storage_io_error)?;
        let mut batch = sled::Batch::default();
        for key in self.sm.scan_prefix(tagged(self.group, TAG_RECORD, &[])).keys() {
            batch.remove(key.map_err(storage_io_error)?);
        }
        for (key, record) in &payload.records {
            batch.insert(tagged(self.group, TAG_RECORD, key), record.clone());
        }
        let mut new_meta = payload.meta.clone();
        new_meta.last_applied = meta.last_log_id;
        new_meta.membership = meta.last_membership.clone();
        (new_meta.live_keys, new_meta.live_bytes) = counts;
        batch.insert(
            tagged(self.group, TAG_META, &[]),
            codec::encode(&new_meta).map_err(storage_io_error)?,
        );
        if let (Some(_), Some(map)) = (&self.pd_map, &payload.pd_map) {
            batch.insert(
                tagged(self.group, TAG_PD_MAP, &[]),
                codec::encode(map).map_err(storage_io_error)?,
            );
        }
        self.sm.apply_batch(batch).map_err(storage_io_error)?;
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data,
        };
        self.snapshots
            .insert(
                group_prefix(self.group),
                codec::encode(&stored).map_err(storage_io_error)?,
            )
            .map_err(storage_io_error)?;
        self.flusher.flush().await.map_err(storage_io_error)?;
        self.meta = new_meta;
        if self.pd_map.is_some() {
            self.pd_map = payload.pd_map;
        }
        self.view.publish(&self.meta);
        if let (Some(map), Some(tx)) = (&self.pd_map, &self.map_tx) {
            publish_map(tx, map);
        }
        self.view.snapshot_installs.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("midasflow_raft_snapshot_installs_total", "node" => self.node_label.clone()).increment(1);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
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
    use crate::raft::log_store::FlushMode;
    use crate::shard::{KvOp, Precondition};
    use openraft::{CommittedLeaderId, Entry, EntryPayload};

    fn store(db: &sled::Db, dir: &std::path::Path) -> StateMachineStore {
        let files = crate::raft::log_store::DurableFiles::open(dir).unwrap();
        let flusher = Flusher::start(db.clone(), files, FlushMode::Inline, "t".into());
        StateMachineStore::open(db, 7, flusher, None, "t".into(), Probe::new(1, None)).unwrap()
    }

    fn put(index: u64, key: &[u8]) -> super::Entry {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 0), index),
            payload: EntryPayload::Normal(Request::Kv(KvOp::Put {
                key: key.to_vec(),
                value: b"v".to_vec(),
                precondition: Precondition::None,
                history_versions: 4,
            })),
        }
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
        check_snapshot_data(good.snapshot.get_ref(), false).unwrap();

        db.open_tree("sm")
            .unwrap()
            .insert(tagged(7, TAG_RECORD, b"c"), b"\x01garbage".to_vec())
            .unwrap();
        db.open_tree("snapshots").unwrap().remove(group_prefix(7)).unwrap();
        let mut builder = sm.get_snapshot_builder().await;
        assert!(builder.build_snapshot().await.is_err(), "a partial snapshot was built");
        assert!(sm.get_current_snapshot().await.unwrap().is_none(), "nothing stored");
    }

    #[test]
    fn received_snapshots_are_checked_record_by_record() {
        let record = |versions: Vec<crate::shard::VersionEntry>| codec::encode(&KeyRecord { versions }).unwrap();
        let live = crate::shard::VersionEntry {
            version: 1,
            deleted: false,
            value: b"v".to_vec(),
        };
        let payload = |records: Vec<(Vec<u8>, Vec<u8>)>| {
            codec::encode(&SnapshotPayload {
                meta: SmMeta::default(),
                pd_map: None,
                records,
            })
            .unwrap()
        };
        assert!(check_snapshot_data(&payload(vec![(b"a".to_vec(), record(vec![live.clone()]))]), false).is_ok());
        let empty_record = payload(vec![(b"a".to_vec(), record(vec![]))]);
        assert!(check_snapshot_data(&empty_record, false).is_err());
        let unordered = payload(vec![
            (b"b".to_vec(), record(vec![live.clone()])),
            (b"a".to_vec(), record(vec![live.clone()])),
        ]);
        assert!(check_snapshot_data(&unordered, false).is_err());
        let empty_key = payload(vec![(Vec::new(), record(vec![live]))]);
        assert!(check_snapshot_data(&empty_key, false).is_err());
        assert!(check_snapshot_data(b"\x01\xff\xff", false).is_err());
    }
}
