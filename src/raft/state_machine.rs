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
use super::{
    group_prefix, storage_io_error, Entry, GroupId, LogId, Request, Response, SnapshotMeta, StorageError,
    StoredMembership, TypeConfig,
};
use crate::codec;
use crate::placement::ClusterMap;
use crate::shard::{apply_op, KeyRecord};

const TAG_META: u8 = 0;
const TAG_RECORD: u8 = 1;
const TAG_PD_MAP: u8 = 2;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SmMeta {
    pub last_applied: Option<LogId>,
    pub membership: StoredMembership,
    pub live_keys: u64,
    pub live_bytes: u64,
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

/// Publishes a cluster map to the node, never going back to an older routing version.
pub fn publish_map(tx: &watch::Sender<Arc<ClusterMap>>, map: &ClusterMap) {
    tx.send_if_modified(|current| {
        if map.routing_version > current.routing_version {
            *current = Arc::new(map.clone());
            true
        } else {
            false
        }
    });
}

/// What the rest of the node may read of a group's state without going through Raft.
pub struct GroupView {
    pub group: GroupId,
    sm: sled::Tree,
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
            Some(bytes) => Ok(Some(codec::decode(&bytes).map_err(storage_io_error)?)),
            None => Ok(None),
        }
    }

    pub fn applied_index(&self) -> u64 {
        self.applied_index.load(Ordering::Acquire)
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
}

impl StateMachineStore {
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
        })
    }

    pub fn view(&self) -> Arc<GroupView> {
        self.view.clone()
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

    fn snapshot_payload(&self) -> Result<SnapshotPayload, StorageError> {
        let prefix = tagged(self.group, TAG_RECORD, &[]);
        let mut records = Vec::new();
        for item in self.sm.scan_prefix(&prefix) {
            let (key, value) = item.map_err(storage_io_error)?;
            records.push((key[prefix.len()..].to_vec(), value.to_vec()));
        }
        Ok(SnapshotPayload {
            meta: self.meta.clone(),
            pd_map: self.pd_map.clone(),
            records,
        })
    }
}

pub struct SnapshotBuilder {
    group: GroupId,
    snapshots: sled::Tree,
    flusher: Flusher,
    payload: SnapshotPayload,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let data = codec::encode(&self.payload).map_err(storage_io_error)?;
        let last = self.payload.meta.last_applied;
        let meta = SnapshotMeta {
            last_log_id: last,
            last_membership: self.payload.meta.membership.clone(),
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
            self.meta.last_applied = Some(entry.log_id);
            let response = match entry.payload {
                EntryPayload::Blank => Response::Empty,
                EntryPayload::Membership(membership) => {
                    self.meta.membership = StoredMembership::new(Some(entry.log_id), membership);
                    Response::Empty
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
            };
            results.push(response);
        }
        let mut batch = sled::Batch::default();
        for (key, record) in &overlay {
            let bytes = codec::encode(record).map_err(storage_io_error)?;
            batch.insert(tagged(self.group, TAG_RECORD, key), bytes);
        }
        if let (true, Some(map)) = (map_changed, &self.pd_map) {
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
        if let Some(applied) = self.meta.last_applied {
            self.probe.emit(|| NodeEvent::Applied {
                group: self.group,
                index: applied.index,
            });
        }
        if let (true, Some(map), Some(tx)) = (map_changed, &self.pd_map, &self.map_tx) {
            publish_map(tx, map);
        }
        metrics::histogram!("midasflow_raft_apply_duration_seconds", "node" => self.node_label.clone())
            .record(started.elapsed().as_secs_f64());
        Ok(results)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        // Copied here, between applies, so the snapshot is one consistent applied state.
        let payload = self.snapshot_payload().unwrap_or_else(|e| {
            tracing::error!(group = self.group, error = %e, "reading state for snapshot failed");
            SnapshotPayload {
                meta: self.meta.clone(),
                pd_map: self.pd_map.clone(),
                records: Vec::new(),
            }
        });
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
        let payload: SnapshotPayload = codec::decode(&data).map_err(storage_io_error)?;
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
