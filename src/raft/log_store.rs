//! Raft log and vote storage in the node's one sled database, with group commit.
//!
//! Every group's entries live in the `raft_log` tree under `group ‖ index` (big-endian).
//! An append is acknowledged to openraft only after a flush that covers it is durable, and
//! one flush serves every group that appended meanwhile: the [`Flusher`] drains all waiting
//! callbacks, runs `db.flush()` then `fdatasync` once ([`DurableFiles`]), and completes
//! them all. See `docs/durability.md`.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::fmt::Debug;
use std::fs::File;
use std::io;
use std::marker::PhantomData;
use std::ops::{Bound, RangeBounds};
use std::path::{Path, PathBuf};
use tokio::time::Instant;

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{LogState, RaftLogId, RaftLogReader, Vote};
use tokio::sync::{mpsc, oneshot};

use super::probe::{NodeEvent, Probe};
use super::{group_prefix, storage_io_error, Config, Entry, GroupId, GroupKind, LogId, StorageError};
use crate::codec;

/// Most flush requests waiting at once; appends beyond it wait for room.
pub const FLUSH_QUEUE_CAPACITY: usize = 65_536;

const META_VOTE: u8 = 1;
const META_COMMITTED: u8 = 2;
const META_PURGED: u8 = 3;

/// openraft's append callback, whatever the group's kind.
type LogCallback = Box<dyn FnOnce(io::Result<()>) + Send>;

enum FlushWaiter {
    Log(LogCallback),
    Notify(oneshot::Sender<io::Result<()>>),
}

impl FlushWaiter {
    fn complete(self, result: &io::Result<()>) {
        let copy = || match result {
            Ok(()) => Ok(()),
            Err(e) => Err(io::Error::new(e.kind(), e.to_string())),
        };
        match self {
            FlushWaiter::Log(callback) => callback(copy()),
            FlushWaiter::Notify(tx) => {
                let _ = tx.send(copy());
            }
        }
    }
}

/// Makes what sled wrote durable. sled 0.34's flush ends in `sync_file_range`, which
/// writes neither the file's metadata (the size of an appended log) nor the disk's write
/// cache: a power cut could lose acknowledged writes on every replica at once. So after
/// each `db.flush()`, `fdatasync` its log file, and `fsync` every blob file sled created
/// since (values too large for its log segments) and their directory.
pub struct DurableFiles {
    db_file: File,
    blobs_dir: PathBuf,
    synced_blobs: BTreeSet<OsString>,
    /// A failed fsync may have dropped dirty pages the kernel will never write again, so
    /// nothing after it can be trusted to be durable: every later flush fails too.
    failed: bool,
}

/// `fsync` of a directory: makes the names created in it durable.
pub fn sync_dir(path: &Path) -> io::Result<()> {
    File::open(path)?.sync_all()
}

impl DurableFiles {
    /// Opens sled's files in `db_dir` (after `sled::open`) and makes what exists durable:
    /// sled writes its `conf` at creation without an fsync, and a lost `conf` makes it
    /// open an empty database.
    pub fn open(db_dir: &Path) -> io::Result<Self> {
        let db_file = File::open(db_dir.join("db"))?;
        File::open(db_dir.join("conf"))?.sync_all()?;
        db_file.sync_all()?;
        let mut files = DurableFiles {
            db_file,
            blobs_dir: db_dir.join("blobs"),
            synced_blobs: BTreeSet::new(),
            failed: false,
        };
        files.sync_new_blobs(true)?;
        // The database directory, the data dir holding it, and the data dir's own entry
        // (sled creates both if missing).
        let mut dir = Some(db_dir);
        for _ in 0..3 {
            let Some(path) = dir.filter(|p| !p.as_os_str().is_empty()) else {
                break;
            };
            sync_dir(path)?;
            dir = path.parent();
        }
        Ok(files)
    }

    fn sync_new_blobs(&mut self, sync_dir_anyway: bool) -> io::Result<()> {
        let mut present = BTreeSet::new();
        let mut new = false;
        if self.blobs_dir.exists() {
            for entry in std::fs::read_dir(&self.blobs_dir)? {
                let name = entry?.file_name();
                if !self.synced_blobs.contains(&name) {
                    match File::open(self.blobs_dir.join(&name)) {
                        Ok(file) => file.sync_all()?,
                        // sled collected it meanwhile: nothing left to make durable.
                        Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                        Err(e) => return Err(e),
                    }
                    new = true;
                }
                present.insert(name);
            }
            if new || sync_dir_anyway {
                sync_dir(&self.blobs_dir)?;
            }
        }
        self.synced_blobs = present;
        Ok(())
    }

    /// After `db.flush()`: everything it wrote is durable when this returns `Ok`.
    pub fn sync(&mut self) -> io::Result<()> {
        if self.failed {
            return Err(io::Error::other(
                "an earlier fsync failed; nothing written since is known durable",
            ));
        }
        let result = self.db_file.sync_data().and_then(|()| self.sync_new_blobs(false));
        self.failed = result.is_err();
        result
    }
}

/// How the flusher runs: on its own OS thread in production, so a slow fsync never blocks
/// tokio's workers; inline on the runtime under simulation, where a blocking flush on the
/// single simulated thread keeps the run deterministic (docs/simulation.md, Determinism).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlushMode {
    Thread,
    Inline,
}

/// Group commit for the node's sled database.
#[derive(Clone)]
pub struct Flusher {
    tx: mpsc::Sender<FlushWaiter>,
}

impl Flusher {
    pub fn start(db: sled::Db, mut files: DurableFiles, mode: FlushMode, node_label: String) -> Self {
        let (tx, mut rx) = mpsc::channel::<FlushWaiter>(FLUSH_QUEUE_CAPACITY);
        let mut flush_batch = move |first: FlushWaiter, rx: &mut mpsc::Receiver<FlushWaiter>| {
            let mut batch = vec![first];
            while let Ok(next) = rx.try_recv() {
                batch.push(next);
            }
            let started = Instant::now();
            let result = db.flush().map(|_| ()).map_err(io::Error::other).and_then(|()| {
                let synced = Instant::now();
                let result = files.sync();
                metrics::histogram!("midasflow_log_fsync_duration_seconds", "node" => node_label.clone())
                    .record(synced.elapsed().as_secs_f64());
                result
            });
            // Only after the sync may anyone learn that the batch is durable.
            metrics::histogram!("midasflow_log_flush_duration_seconds", "node" => node_label.clone())
                .record(started.elapsed().as_secs_f64());
            metrics::histogram!("midasflow_log_flush_batch_size", "node" => node_label.clone())
                .record(batch.len() as f64);
            metrics::counter!("midasflow_log_flushes_total", "node" => node_label.clone()).increment(1);
            if let Err(e) = &result {
                tracing::error!(error = %e, "making the log durable failed; the replicas waiting on it stop");
            }
            for waiter in batch {
                waiter.complete(&result);
            }
        };
        match mode {
            FlushMode::Thread => {
                std::thread::Builder::new()
                    .name("midasflow-flusher".into())
                    .spawn(move || {
                        while let Some(first) = rx.blocking_recv() {
                            flush_batch(first, &mut rx);
                        }
                    })
                    .expect("spawn flusher thread");
            }
            FlushMode::Inline => {
                tokio::spawn(async move {
                    while let Some(first) = rx.recv().await {
                        flush_batch(first, &mut rx);
                    }
                });
            }
        }
        Flusher { tx }
    }

    /// Returns once everything written to the database before the call is durable.
    pub async fn flush(&self) -> io::Result<()> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(FlushWaiter::Notify(tx))
            .await
            .map_err(|_| io::Error::other("flusher stopped"))?;
        rx.await.map_err(|_| io::Error::other("flusher stopped"))?
    }

    async fn flush_then<K: GroupKind>(&self, callback: LogFlushed<Config<K>>) -> io::Result<()> {
        self.tx
            .send(FlushWaiter::Log(Box::new(move |result| {
                callback.log_io_completed(result)
            })))
            .await
            .map_err(|_| io::Error::other("flusher stopped"))
    }
}

/// Removes every log entry and piece of Raft metadata the group has (replica removal).
/// Deletes a removed replica's log. Its vote stays: if the shard moves back here,
/// the new replica must not vote again in a term this node already voted in.
pub fn destroy_log(db: &sled::Db, group: GroupId) -> sled::Result<()> {
    let log = db.open_tree("raft_log")?;
    for key in log.scan_prefix(group_prefix(group)).keys() {
        log.remove(key?)?;
    }
    let meta = db.open_tree("raft_meta")?;
    for tag in [META_COMMITTED, META_PURGED] {
        meta.remove(meta_key(group, tag))?;
    }
    Ok(())
}

/// One group's view of the log tree.
pub struct LogStore<K> {
    group: GroupId,
    log: sled::Tree,
    meta: sled::Tree,
    flusher: Flusher,
    probe: Probe,
    kind: PhantomData<fn() -> K>,
}

impl<K> Clone for LogStore<K> {
    fn clone(&self) -> Self {
        LogStore {
            group: self.group,
            log: self.log.clone(),
            meta: self.meta.clone(),
            flusher: self.flusher.clone(),
            probe: self.probe.clone(),
            kind: PhantomData,
        }
    }
}

fn entry_key(group: GroupId, index: u64) -> [u8; 16] {
    let mut key = [0u8; 16];
    key[..8].copy_from_slice(&group_prefix(group));
    key[8..].copy_from_slice(&index.to_be_bytes());
    key
}

fn meta_key(group: GroupId, tag: u8) -> [u8; 9] {
    let mut key = [0u8; 9];
    key[..8].copy_from_slice(&group_prefix(group));
    key[8] = tag;
    key
}

impl<K: GroupKind> LogStore<K> {
    pub fn open(db: &sled::Db, group: GroupId, flusher: Flusher, probe: Probe) -> sled::Result<Self> {
        Ok(LogStore {
            group,
            probe,
            log: db.open_tree("raft_log")?,
            meta: db.open_tree("raft_meta")?,
            flusher,
            kind: PhantomData,
        })
    }

    fn read_meta<T: serde::de::DeserializeOwned>(&self, tag: u8) -> Result<Option<T>, StorageError> {
        match self.meta.get(meta_key(self.group, tag)).map_err(storage_io_error)? {
            Some(bytes) => Ok(Some(codec::decode(&bytes).map_err(storage_io_error)?)),
            None => Ok(None),
        }
    }

    fn write_meta<T: serde::Serialize>(&self, tag: u8, value: &T) -> Result<(), StorageError> {
        let bytes = codec::encode(value).map_err(storage_io_error)?;
        self.meta
            .insert(meta_key(self.group, tag), bytes)
            .map_err(storage_io_error)?;
        Ok(())
    }

    /// Tells the observer what openraft now considers committed (saved, or reloaded).
    fn report_committed(&self, committed: Option<LogId>) {
        if let Some(committed) = committed {
            self.probe.emit(|| NodeEvent::Committed {
                group: self.group,
                index: committed.index,
            });
        }
    }

    fn remove_range(&self, from: u64, to_inclusive: u64) -> Result<(), StorageError> {
        let mut batch = sled::Batch::default();
        for key in self
            .log
            .range(entry_key(self.group, from)..=entry_key(self.group, to_inclusive))
            .keys()
        {
            batch.remove(key.map_err(storage_io_error)?);
        }
        self.log.apply_batch(batch).map_err(storage_io_error)
    }
}

impl<K: GroupKind> RaftLogReader<Config<K>> for LogStore<K> {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<K>>, StorageError> {
        let start = match range.start_bound() {
            Bound::Included(&i) => i,
            Bound::Excluded(&i) => i + 1,
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(&i) => Bound::Included(entry_key(self.group, i)),
            Bound::Excluded(&i) => Bound::Excluded(entry_key(self.group, i)),
            Bound::Unbounded => Bound::Included(entry_key(self.group, u64::MAX)),
        };
        let mut entries = Vec::new();
        for item in self.log.range((Bound::Included(entry_key(self.group, start)), end)) {
            let (_, bytes) = item.map_err(storage_io_error)?;
            entries.push(codec::decode::<Entry<K>>(&bytes).map_err(storage_io_error)?);
        }
        Ok(entries)
    }
}

impl<K: GroupKind> RaftLogStorage<Config<K>> for LogStore<K> {
    type LogReader = LogStore<K>;

    async fn get_log_state(&mut self) -> Result<LogState<Config<K>>, StorageError> {
        let last_purged_log_id: Option<LogId> = self.read_meta(META_PURGED)?;
        let last = self
            .log
            .scan_prefix(group_prefix(self.group))
            .next_back()
            .transpose()
            .map_err(storage_io_error)?;
        let last_log_id = match last {
            Some((_, bytes)) => Some(
                *codec::decode::<Entry<K>>(&bytes)
                    .map_err(storage_io_error)?
                    .get_log_id(),
            ),
            None => last_purged_log_id,
        };
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<u64>) -> Result<(), StorageError> {
        self.write_meta(META_VOTE, vote)?;
        // A vote must survive a crash before it is acted on, or a node could vote twice.
        self.flusher.flush().await.map_err(storage_io_error)
    }

    /// Read once, when the replica starts. The vote comes back uncommitted: openraft 0.9
    /// resumes as leader, in the same term and without a new blank entry, a replica whose
    /// saved vote is committed for itself. Its commit index (saved lazily) can then be
    /// behind what it acknowledged before the crash, and it served linearizable reads that
    /// missed acknowledged writes (found by the power-cut test). Uncommitted, the same vote
    /// still refuses any other candidate of that term, and the replica starts as a follower:
    /// whoever leads next commits an entry of a new term, and with it everything before.
    async fn read_vote(&mut self) -> Result<Option<Vote<u64>>, StorageError> {
        Ok(self.read_meta::<Vote<u64>>(META_VOTE)?.map(|vote| Vote {
            leader_id: vote.leader_id,
            committed: false,
        }))
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        // Durable with the next flush; only an optimisation for replay after restart.
        self.report_committed(committed);
        self.write_meta(META_COMMITTED, &committed)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        let committed = self.read_meta::<Option<LogId>>(META_COMMITTED)?.flatten();
        self.report_committed(committed);
        Ok(committed)
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<Config<K>>) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry<K>> + Send,
        I::IntoIter: Send,
    {
        let mut batch = sled::Batch::default();
        for entry in entries {
            let bytes = codec::encode(&entry).map_err(storage_io_error)?;
            batch.insert(&entry_key(self.group, entry.log_id.index), bytes);
        }
        // Readable as soon as applied; durable (and acknowledged) after the group flush.
        self.log.apply_batch(batch).map_err(storage_io_error)?;
        self.flusher.flush_then::<K>(callback).await.map_err(storage_io_error)
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.remove_range(log_id.index, u64::MAX)
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        // Record the purge point first, so a crash midway never leaves a hole unaccounted.
        self.write_meta(META_PURGED, &log_id)?;
        self.remove_range(0, log_id.index)
    }
}
