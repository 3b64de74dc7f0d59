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
