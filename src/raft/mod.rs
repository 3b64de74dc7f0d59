//! openraft plumbing shared by every group: the type config, sled log storage with group
//! commit, the sled-backed state machine, the group-tagged HTTP network, the group
//! registry and the seeded runtime.

// openraft's storage traits fix the error type at `StorageError`, which is large; our
// helpers return it unchanged rather than boxing and unboxing at every trait boundary.
#![allow(clippy::result_large_err)]

pub mod log_store;
pub mod membership;
pub mod network;
pub mod probe;
pub mod registry;
pub mod runtime;
pub mod state_machine;
pub mod transport;
pub mod validate;

use std::io::Cursor;

use serde::{Deserialize, Serialize};

use crate::placement::{PdCommand, PdResult};
use crate::shard::{KvOp, KvResult};

/// A Raft group: 0 is the placement driver, every other id is the shard of that id.
pub type GroupId = u64;

/// The application command carried by every group's log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    Kv(KvOp),
    Pd(PdCommand),
    /// Split this shard at hash `at`: keys hashing to `[at, end)` go to shard `child`.
    /// `start`/`end` are the range the placement driver planned against; a replica whose
    /// range differs refuses (a stale or repeated split).
    Split {
        child: GroupId,
        at: u64,
        start: u64,
        end: Option<u64>,
    },
}

/// The outcome of a [`Request::Split`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SplitResult {
    Done { child: GroupId },
    Rejected { reason: String },
}

impl std::fmt::Display for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Request::Kv(KvOp::Put { key, value, .. }) => write!(f, "put({}B key, {}B value)", key.len(), value.len()),
            Request::Kv(KvOp::Delete { key, .. }) => write!(f, "delete({}B key)", key.len()),
            Request::Pd(cmd) => write!(f, "pd({cmd:?})"),
            Request::Split { child, at, .. } => write!(f, "split(at {at:#x}, child {child})"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    Kv(KvResult),
    Pd(PdResult),
    Split(SplitResult),
    /// Blank and membership entries, and commands sent to the wrong kind of group.
    Empty,
}

openraft::declare_raft_types!(
    pub TypeConfig:
        D = Request,
        R = Response,
        AsyncRuntime = runtime::SeamRuntime,
);

pub type Raft = openraft::Raft<TypeConfig>;
pub type LogId = openraft::LogId<u64>;
pub type Entry = openraft::Entry<TypeConfig>;
pub type StorageError = openraft::StorageError<u64>;
pub type StoredMembership = openraft::StoredMembership<u64, openraft::BasicNode>;
pub type SnapshotMeta = openraft::SnapshotMeta<u64, openraft::BasicNode>;

/// Key prefix of everything a group stores in a shared tree: its id, big-endian, so one
/// group's keys are contiguous and ordered.
pub fn group_prefix(group: GroupId) -> [u8; 8] {
    group.to_be_bytes()
}

/// Wraps a storage failure the way openraft reports it.
pub fn storage_io_error(e: impl std::error::Error + 'static) -> StorageError {
    openraft::StorageIOError::write(&e).into()
}
