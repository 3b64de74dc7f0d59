//! The placement driver's kind of Raft group: its log carries [`PdCommand`]s, and its
//! state is the [`ClusterMap`], stored under tag `0x02` of the group's prefix and published
//! to the node on every change (never going back to an older revision).

// sled and openraft errors pass through unchanged (see `crate::raft`).
#![allow(clippy::result_large_err)]

use std::io::Cursor;
use std::sync::Arc;

use tokio::sync::watch;

use super::{ClusterMap, PdCommand, PdResult};
use crate::codec;
use crate::raft::registry::Group;
use crate::raft::state_machine::{state_key, WriteBatch};
use crate::raft::validate::Limits;
use crate::raft::{storage_io_error, Command, GroupId, GroupKind, GroupState, StorageError};

const TAG_PD_MAP: u8 = 2;

/// The placement driver's group.
pub struct PdKind;

openraft::declare_raft_types!(
    pub PdConfig:
        D = PdCommand,
        // `None` for blank and membership entries.
        R = Option<PdResult>,
        AsyncRuntime = crate::raft::runtime::SeamRuntime,
);

impl GroupKind for PdKind {
    type Config = PdConfig;
    type State = PdState;
    type View = ();
    const NAME: &'static str = "pd";
}

pub type PdGroup = Group<PdKind>;

impl std::fmt::Display for PdCommand {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "pd({self:?})")
    }
}

impl Command for PdCommand {
    /// PD commands are bounded like the CLI bounds them.
    fn check(&self, _: &Limits) -> Result<(), String> {
        self.validate()
    }
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

pub struct PdState {
    group: GroupId,
    map: ClusterMap,
    changed: bool,
    map_tx: watch::Sender<Arc<ClusterMap>>,
}

/// Decodes a map from a snapshot or the disk; a bootstrapped map must tile the ring.
fn decode_map(bytes: &[u8]) -> Result<ClusterMap, String> {
    let map: ClusterMap = codec::decode(bytes).map_err(|e| e.to_string())?;
    if map.is_bootstrapped() {
        map.check_tiling()
            .map_err(|e| format!("the placement map does not tile the ring: {e}"))?;
    }
    Ok(map)
}

impl PdState {
    /// Opens the PD replica's map and publishes it to `map_tx`.
    pub fn open(db: &sled::Db, group: GroupId, map_tx: watch::Sender<Arc<ClusterMap>>) -> Result<Self, StorageError> {
        let sm = db.open_tree("sm").map_err(storage_io_error)?;
        let map = match sm.get(state_key(group, TAG_PD_MAP, &[])).map_err(storage_io_error)? {
            Some(bytes) => codec::decode(&bytes).map_err(storage_io_error)?,
            None => ClusterMap::default(),
        };
        publish_map(&map_tx, &map);
        Ok(PdState {
            group,
            map,
            changed: false,
            map_tx,
        })
    }
}

impl GroupState<PdKind> for PdState {
    fn view(&self) -> Arc<()> {
        Arc::new(())
    }

    fn apply(&mut self, command: PdCommand, _: &mut WriteBatch) -> Result<Option<PdResult>, StorageError> {
        self.changed = true;
        Ok(Some(self.map.apply(&command)))
    }

    fn stage(&mut self, batch: &mut WriteBatch) -> Result<(), StorageError> {
        if self.changed {
            batch.insert(
                state_key(self.group, TAG_PD_MAP, &[]),
                codec::encode(&self.map).map_err(storage_io_error)?,
            );
        }
        Ok(())
    }

    fn committed(&mut self) {
        if std::mem::take(&mut self.changed) {
            publish_map(&self.map_tx, &self.map);
        }
    }

    fn snapshot(&self) -> Result<Vec<u8>, StorageError> {
        codec::encode(&self.map).map_err(storage_io_error)
    }

    fn check_snapshot(data: &[u8]) -> Result<(), String> {
        decode_map(data).map(|_| ())
    }

    fn install(&mut self, data: &[u8], _: &mut WriteBatch) -> Result<(), StorageError> {
        self.map = decode_map(data).map_err(|e| storage_io_error(std::io::Error::other(e)))?;
        // Staged and published with the snapshot's commit.
        self.changed = true;
        Ok(())
    }
}
