//! Raft log and vote storage for every group, in the node's [`Wal`], with group commit.
//!
//! An append is written to the log at once (readable), and acknowledged to openraft only
//! after a sync that covers it: the [`Flusher`] drains every waiting callback, syncs once
//! and completes them all, so one `fdatasync` serves every group that appended meanwhile.
//! The state machines' sled database is flushed (and fsynced, [`DurableFiles`]) only when
//! something needs it durable: a snapshot, a split, a replica created or removed. Until
//! then the log is the source of truth, and a restart re-applies what sled lost. See
//! `docs/durability.md`.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::fmt::Debug;
use std::fs::File;
use std::io;
use std::marker::PhantomData;
use std::ops::{Bound, RangeBounds};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio::time::Instant;

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{LogState, RaftLogId, RaftLogReader, Vote};
use tokio::sync::{mpsc, oneshot};

use super::probe::{NodeEvent, Probe};
use super::wal::Wal;
use super::{storage_io_error, Config, Entry, GroupId, GroupKind, LogId, StorageError};
use crate::codec;

/// Encoded bytes of entries one group's append RPC carries at most, or its first entry
/// alone when that is larger: small enough that the follower can take, write and sync
/// them within openraft's append timeout (one heartbeat interval).
pub const APPEND_PAYLOAD_BYTES_MAX: usize = 4 << 20;

/// Most flush requests waiting at once; appends beyond it wait for room.
pub const FLUSH_QUEUE_CAPACITY: usize = 65_536;

/// openraft's append callback, whatever the group's kind.
type LogCallback = Box<dyn FnOnce(io::Result<()>) + Send>;

enum FlushWaiter {
    /// The log only (an append).
    Log(LogCallback),
    /// The log, and the state machines' database too when `db`.
    Notify {
        db: bool,
        tx: oneshot::Sender<io::Result<()>>,
    },
}

impl FlushWaiter {
    fn needs_db(&self) -> bool {
        matches!(self, FlushWaiter::Notify { db: true, .. })
    }

    fn complete(self, result: &io::Result<()>) {
        let copy = || match result {
            Ok(()) => Ok(()),
            Err(e) => Err(io::Error::new(e.kind(), e.to_string())),
        };
        match self {
            FlushWaiter::Log(callback) => callback(copy()),
            FlushWaiter::Notify { tx, .. } => {
                let _ = tx.send(copy());
            }
        }
    }
}

/// sled's directory for page updates over a quarter of its log segment (128 KiB with the
/// default 512 KiB segments): large values, large redo records, and any leaf page whose
/// keys and values add up to that when sled rewrites it whole.
const BLOBS_DIR: &str = "blobs";

/// `FS_SYNC_FL` of `linux/fs.h`: writes to the file return once they are on disk, and so
/// do entries made in the directory. ext4 and xfs give it to every file made in a
/// directory that has it.
const FS_SYNC_FL: libc::c_int = 0x0000_0008;

/// Makes every blob file sled will write durable before its write returns, by setting
/// `FS_SYNC_FL` on sled's blobs directory in `db_dir` (before `sled::open`).
///
/// sled writes a blob file at once and the log record naming it later, in an IO buffer it
/// only `sync_file_range`s; its recovery skips a record whose blob is missing and keeps
/// the records after it. Without this, a power cut could keep later records and lose a
/// blob, and a replica would reopen with state that does not match its applied index
/// (`docs/durability.md`). Errors when the filesystem cannot do it (tmpfs, btrfs, which
/// keeps the flag to the directory): the caller warns, and the hazard stays.
pub fn make_blob_writes_synchronous(db_dir: &Path) -> io::Result<()> {
    let dir = db_dir.join(BLOBS_DIR);
    std::fs::create_dir_all(&dir)?;
    let dir_file = File::open(&dir)?;
    let flags = file_flags(&dir_file)?;
    if flags & FS_SYNC_FL == 0 {
        set_file_flags(&dir_file, flags | FS_SYNC_FL)?;
    }
    // What matters is the files: check that one made here inherits the flag. sled skips
    // (with a warning) a name that is not a number, should a crash leave this behind.
    let probe_path = dir.join(".sync-probe");
    let probe_flags = File::create(&probe_path).and_then(|probe| file_flags(&probe));
    let removed = std::fs::remove_file(&probe_path);
    let probe_flags = probe_flags?;
    removed?;
    if probe_flags & FS_SYNC_FL != 0 {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "files made in the directory do not inherit its synchronous-writes flag",
        ))
    }
}

fn file_flags(file: &File) -> io::Result<libc::c_int> {
    use std::os::fd::AsRawFd;
    let mut flags: libc::c_int = 0;
    // SAFETY: an open descriptor, and a pointer to an int, which this ioctl fills.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), libc::FS_IOC_GETFLAGS, &mut flags) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(flags)
}

fn set_file_flags(file: &File, flags: libc::c_int) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: an open descriptor, and a pointer to an int, which this ioctl reads.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), libc::FS_IOC_SETFLAGS, &flags) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Makes what sled wrote durable. sled 0.34's flush ends in `sync_file_range`, which
/// writes neither the file's metadata (the size of an appended log) nor the disk's write
/// cache. So after each `db.flush()`, `fdatasync` its log file, and `fsync` every blob
/// file sled created since (values too large for its log segments) and their directory.
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
            blobs_dir: db_dir.join(BLOBS_DIR),
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

/// Runs `round` for each request that arrives (it may take the others waiting from `rx`)
/// until every sender is gone: on a thread named `name`, or as a task ([`FlushMode`]).
pub fn run_rounds<T: Send + 'static>(
    mode: FlushMode,
    name: &str,
    mut rx: mpsc::Receiver<T>,
    mut round: impl FnMut(T, &mut mpsc::Receiver<T>) + Send + 'static,
) {
    match mode {
        FlushMode::Thread => {
            std::thread::Builder::new()
                .name(name.into())
                .spawn(move || {
                    while let Some(first) = rx.blocking_recv() {
                        round(first, &mut rx);
                    }
                })
                .unwrap_or_else(|e| panic!("spawning the {name} thread: {e}"));
        }
        FlushMode::Inline => {
            tokio::spawn(async move {
                while let Some(first) = rx.recv().await {
                    round(first, &mut rx);
                }
            });
        }
    }
}

/// Group commit for the node's log, and the sled flushes that must precede it.
#[derive(Clone)]
pub struct Flusher {
    tx: mpsc::Sender<FlushWaiter>,
    /// Set when sled holds writes outside the state machines (a hosted-group record) that
    /// must be durable before the log entries that follow them: the next round flushes sled
    /// first.
    db_dirty: Arc<AtomicBool>,
    wal: Arc<Wal>,
}

impl Flusher {
    pub fn start(db: sled::Db, mut files: DurableFiles, wal: Arc<Wal>, mode: FlushMode, node_label: String) -> Self {
        let (tx, rx) = mpsc::channel::<FlushWaiter>(FLUSH_QUEUE_CAPACITY);
        let db_dirty = Arc::new(AtomicBool::new(false));
        let dirty = db_dirty.clone();
        let log = wal.clone();
        let fsync_duration = metrics::histogram!("midasflow_log_fsync_duration_seconds", "node" => node_label.clone());
        let flush_duration = metrics::histogram!("midasflow_log_flush_duration_seconds", "node" => node_label.clone());
        let flush_batch_size = metrics::histogram!("midasflow_log_flush_batch_size", "node" => node_label.clone());
        let flushes = metrics::counter!("midasflow_log_flushes_total", "node" => node_label);
        let flush_batch = move |first: FlushWaiter, rx: &mut mpsc::Receiver<FlushWaiter>| {
            let mut batch = vec![first];
            while let Ok(next) = rx.try_recv() {
                batch.push(next);
            }
            let started = Instant::now();
            // sled before the log: a log entry may depend on what sled was given before it.
            let needs_db = dirty.swap(false, Ordering::AcqRel) || batch.iter().any(FlushWaiter::needs_db);
            let db_result = if needs_db {
                db.flush()
                    .map(|_| ())
                    .map_err(io::Error::other)
                    .and_then(|()| files.sync())
            } else {
                Ok(())
            };
            let result = db_result.and_then(|()| {
                let syncing = Instant::now();
                let result = log.sync();
                fsync_duration.record(syncing.elapsed().as_secs_f64());
                result
            });
            // Only after the sync may anyone learn that the batch is durable.
            flush_duration.record(started.elapsed().as_secs_f64());
            flush_batch_size.record(batch.len() as f64);
            flushes.increment(1);
            if let Err(e) = &result {
                tracing::error!(error = %e, "making the log durable failed; the replicas waiting on it stop");
            }
            for waiter in batch {
                waiter.complete(&result);
            }
        };
        run_rounds(mode, "midasflow-flusher", rx, flush_batch);
        Flusher { tx, db_dirty, wal }
    }

    async fn notify(&self, db: bool) -> io::Result<()> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(FlushWaiter::Notify { db, tx })
            .await
            .map_err(|_| io::Error::other("flusher stopped"))?;
        rx.await.map_err(|_| io::Error::other("flusher stopped"))?
    }

    /// Returns once everything written before the call, to the log and to sled, is durable.
    pub async fn flush(&self) -> io::Result<()> {
        self.notify(true).await
    }

    /// Returns once everything written to the log before the call is durable.
    pub async fn sync_log(&self) -> io::Result<()> {
        self.notify(false).await
    }

    /// The log this flusher syncs.
    pub fn wal(&self) -> &Arc<Wal> {
        &self.wal
    }

    /// sled was given something the next log entries depend on: the next round flushes it.
    pub fn mark_db_dirty(&self) {
        self.db_dirty.store(true, Ordering::Release);
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

/// Moves a data dir's log from sled (where midasflow kept it before it had its own) into
/// the [`Wal`]: entries, votes, commit and purge points, byte for byte, then empties the
/// old trees. A crash midway repeats the copy at the next start, which changes nothing.
/// Returns the number of entries moved.
pub fn migrate_from_sled(db: &sled::Db, wal: &Wal) -> io::Result<u64> {
    const META_VOTE: u8 = 1;
    const META_COMMITTED: u8 = 2;
    const META_PURGED: u8 = 3;
    let sled_error = io::Error::other;
    let log = db.open_tree("raft_log").map_err(sled_error)?;
    let meta = db.open_tree("raft_meta").map_err(sled_error)?;
    if log.is_empty() && meta.is_empty() {
        return Ok(0);
    }
    let split = |key: &[u8], len: usize| -> io::Result<(GroupId, u64)> {
        if key.len() != len {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "an old log key of the wrong length",
            ));
        }
        let group = u64::from_be_bytes(key[..8].try_into().expect("8 bytes"));
        let rest = if len == 16 {
            u64::from_be_bytes(key[8..].try_into().expect("8 bytes"))
        } else {
            u64::from(key[8])
        };
        Ok((group, rest))
    };
    let mut moved = 0;
    for item in log.iter() {
        let (key, value) = item.map_err(sled_error)?;
        let (group, index) = split(&key, 16)?;
        wal.append(group, &[(index, value.to_vec())])?;
        moved += 1;
    }
    for item in meta.iter() {
        let (key, value) = item.map_err(sled_error)?;
        let (group, tag) = split(&key, 9)?;
        match tag as u8 {
            META_VOTE => wal.set_vote(group, &value)?,
            META_COMMITTED => wal.set_committed(group, &value)?,
            META_PURGED => {
                let purged: LogId = codec::decode(&value).map_err(io::Error::other)?;
                wal.purge(group, purged.index, &value)?;
            }
            other => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("an old log metadata record with tag {other}"),
                ))
            }
        }
    }
    wal.write_commits()?;
    wal.sync()?;
    log.clear().map_err(sled_error)?;
    meta.clear().map_err(sled_error)?;
    db.flush().map_err(sled_error)?;
    Ok(moved)
}

/// One group's view of the node's log.
pub struct LogStore<K> {
    group: GroupId,
    wal: Arc<Wal>,
    flusher: Flusher,
    probe: Probe,
    append_payload_bytes_max: usize,
    kind: PhantomData<fn() -> K>,
}

impl<K> Clone for LogStore<K> {
    fn clone(&self) -> Self {
        LogStore {
            group: self.group,
            wal: self.wal.clone(),
            flusher: self.flusher.clone(),
            probe: self.probe.clone(),
            append_payload_bytes_max: self.append_payload_bytes_max,
            kind: PhantomData,
        }
    }
}

fn decode_meta<T: serde::de::DeserializeOwned>(bytes: Option<Vec<u8>>) -> Result<Option<T>, StorageError> {
    bytes
        .map(|bytes| codec::decode(&bytes).map_err(storage_io_error))
        .transpose()
}

impl<K: GroupKind> LogStore<K> {
    pub fn open(
        wal: Arc<Wal>,
        group: GroupId,
        flusher: Flusher,
        probe: Probe,
        append_payload_bytes_max: usize,
    ) -> Self {
        LogStore {
            group,
            probe,
            wal,
            flusher,
            append_payload_bytes_max,
            kind: PhantomData,
        }
    }

    fn decode(&self, read: io::Result<Vec<Vec<u8>>>) -> Result<Vec<Entry<K>>, StorageError> {
        read.map_err(storage_io_error)?
            .iter()
            .map(|bytes| codec::decode::<Entry<K>>(bytes).map_err(storage_io_error))
            .collect()
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
}

impl<K: GroupKind> RaftLogReader<Config<K>> for LogStore<K> {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<K>>, StorageError> {
        let start = match range.start_bound() {
            Bound::Included(&i) => i,
            Bound::Excluded(&i) => i.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(&i) => i.saturating_add(1),
            Bound::Excluded(&i) => i,
            Bound::Unbounded => u64::MAX,
        };
        self.decode(self.wal.entries(self.group, start, end))
    }

    /// What replication sends in one append: entries up to `append_payload_bytes_max` in
    /// all ([`APPEND_PAYLOAD_BYTES_MAX`] by default), or the first alone if larger.
    /// openraft 0.9 gives an append RPC one heartbeat interval (100 ms by default) and
    /// sends the same range again after a timeout, so an append of many large entries (up
    /// to 64 of the value limit: 64 MiB) could time out on every try and never reach a
    /// follower that fell behind.
    async fn limited_get_log_entries(&mut self, start: u64, end: u64) -> Result<Vec<Entry<K>>, StorageError> {
        self.decode(
            self.wal
                .entries_within(self.group, start, end, self.append_payload_bytes_max),
        )
    }
}

impl<K: GroupKind> RaftLogStorage<Config<K>> for LogStore<K> {
    type LogReader = LogStore<K>;

    async fn get_log_state(&mut self) -> Result<LogState<Config<K>>, StorageError> {
        let last_purged_log_id: Option<LogId> = decode_meta(self.wal.purged(self.group))?;
        let last_log_id = match self.wal.last(self.group).map_err(storage_io_error)? {
            Some(bytes) => Some(
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
        if !vote.is_committed() && vote.leader_id.voted_for() == Some(self.probe.node()) {
            // A vote for itself in a new term: this replica starts a campaign.
            metrics::counter!("midasflow_raft_campaigns_total", "node" => self.probe.node().to_string(), "kind" => K::NAME)
                .increment(1);
            self.probe.emit(|| NodeEvent::CampaignStarted {
                group: self.group,
                term: vote.leader_id.term,
            });
        }
        let bytes = codec::encode(vote).map_err(storage_io_error)?;
        self.wal.set_vote(self.group, &bytes).map_err(storage_io_error)?;
        // A vote must survive a crash before it is acted on, or a node could vote twice.
        self.flusher.sync_log().await.map_err(storage_io_error)
    }

    /// Read once, when the replica starts. The vote comes back uncommitted: openraft 0.9
    /// resumes as leader, in the same term and without a new blank entry, a replica whose
    /// saved vote is committed for itself. Its commit index (saved lazily) can then be
    /// behind what it acknowledged before the crash, and it served linearizable reads that
    /// missed acknowledged writes (found by the power-cut test). Uncommitted, the same vote
    /// still refuses any other candidate of that term, and the replica starts as a follower:
    /// whoever leads next commits an entry of a new term, and with it everything before.
    async fn read_vote(&mut self) -> Result<Option<Vote<u64>>, StorageError> {
        Ok(decode_meta::<Vote<u64>>(self.wal.vote(self.group))?.map(|vote| Vote {
            leader_id: vote.leader_id,
            committed: false,
        }))
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        // Written with the next record (or `Wal::write_commits`), durable with the sync
        // after it; only an optimisation for replay after a restart.
        self.report_committed(committed);
        let bytes = codec::encode(&committed).map_err(storage_io_error)?;
        self.wal.set_committed(self.group, &bytes).map_err(storage_io_error)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        let committed = decode_meta::<Option<LogId>>(self.wal.committed(self.group))?.flatten();
        self.report_committed(committed);
        Ok(committed)
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<Config<K>>) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry<K>> + Send,
        I::IntoIter: Send,
    {
        let encoded = entries
            .into_iter()
            .map(|entry| Ok((entry.log_id.index, codec::encode(&entry).map_err(storage_io_error)?)))
            .collect::<Result<Vec<_>, StorageError>>()?;
        // Readable at once; durable (and acknowledged) after the group commit's sync.
        self.wal.append(self.group, &encoded).map_err(storage_io_error)?;
        self.flusher.flush_then::<K>(callback).await.map_err(storage_io_error)
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.wal.truncate(self.group, log_id.index).map_err(storage_io_error)
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let bytes = codec::encode(&log_id).map_err(storage_io_error)?;
        self.wal
            .purge(self.group, log_id.index, &bytes)
            .map_err(storage_io_error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::wal::SEGMENT_BYTES_DEFAULT;
    use openraft::CommittedLeaderId;

    #[test]
    fn a_log_kept_in_sled_moves_to_the_wal_byte_for_byte() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new().path(dir.path().join("db")).open().unwrap();
        let log = db.open_tree("raft_log").unwrap();
        let meta = db.open_tree("raft_meta").unwrap();
        let key = |group: u64, index: u64| [group.to_be_bytes(), index.to_be_bytes()].concat();
        let meta_key = |group: u64, tag: u8| [&group.to_be_bytes()[..], &[tag]].concat();
        for index in 3..=5 {
            log.insert(key(9, index), format!("entry {index}").as_bytes()).unwrap();
        }
        let purged = codec::encode(&LogId::new(CommittedLeaderId::new(1, 0), 2)).unwrap();
        meta.insert(meta_key(9, 1), &b"vote"[..]).unwrap();
        meta.insert(meta_key(9, 2), &b"committed"[..]).unwrap();
        meta.insert(meta_key(9, 3), purged.clone()).unwrap();
        meta.insert(meta_key(4, 1), &b"vote of a removed replica"[..]).unwrap();

        let wal_dir = dir.path().join("raft-log");
        let (wal, _) = Wal::open(&wal_dir, SEGMENT_BYTES_DEFAULT).unwrap();
        assert_eq!(migrate_from_sled(&db, &wal).unwrap(), 3);
        assert!(log.is_empty() && meta.is_empty());
        assert_eq!(
            migrate_from_sled(&db, &wal).unwrap(),
            0,
            "a second start has nothing to move"
        );
        drop(wal);

        let (wal, _) = Wal::open(&wal_dir, SEGMENT_BYTES_DEFAULT).unwrap();
        let entries: Vec<Vec<u8>> = (3..=5).map(|i| format!("entry {i}").into_bytes()).collect();
        assert_eq!(wal.entries(9, 0, u64::MAX).unwrap(), entries);
        assert_eq!(wal.vote(9).as_deref(), Some(&b"vote"[..]));
        assert_eq!(wal.committed(9).as_deref(), Some(&b"committed"[..]));
        assert_eq!(wal.purged(9), Some(purged));
        assert_eq!(wal.vote(4).as_deref(), Some(&b"vote of a removed replica"[..]));
    }
}
