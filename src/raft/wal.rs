//! The node's Raft log: one append-only, checksummed record stream shared by every group,
//! cut into segment files.
//!
//! Why not sled: a sled flush is a `sync_file_range` plus thread hand-offs, it writes
//! whatever pages the groups dirtied (more groups, more pages), and its process-wide lock
//! makes applies wait on flushes. Here one group commit is one `write` per append and one
//! `fdatasync` per round, whatever the number of groups (see `docs/durability.md`).
//!
//! Records are opaque to this module: a group's entries and metadata arrive encoded.
//! Layout of a segment `NNNNNNNNNNNNNNNNNNNN.log`: an 8-byte magic, then records
//! `[body length u32 LE][xxh3-64 of body u64 LE][body]`, the body being a tag, the group
//! (u64 LE) and the tag's fields. Invariants:
//! - A group's entries are in index order, and its live entries sit in segments of
//!   non-decreasing number, so the segment of its first entry is the oldest it pins.
//! - A segment starts with a checkpoint of every group's vote, commit point and purge
//!   point, so metadata never pins an older segment.
//! - A segment is deleted only when no live entry is in it, after the next segment (with
//!   its checkpoint) is durable; the deletion is made durable before anything else.
//! - Only the last segment can have a torn tail (a segment is synced before the next is
//!   created); recovery cuts it at the last whole record. A bad record anywhere else is
//!   corruption, and the node refuses to start rather than lose acknowledged entries.
//! - The current segment's file runs ahead of its records with zeros, written a chunk at
//!   a time ([`PREALLOCATE_BYTES`]): an `fdatasync` of an append that stays inside the
//!   file's size writes no inode (and on a journaled filesystem commits no journal
//!   transaction); syncs took about a quarter less time here (ext4). Past the last record
//!   there are only zeros (a cut torn tail is truncated away, so no stale record can
//!   follow a new one), and a segment is cut to its last record before the next starts.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use xxhash_rust::xxh3::xxh3_64;

use super::GroupId;

/// The log's directory in a node's data dir.
pub const WAL_DIR: &str = "raft-log";
/// Where a new segment is started once the current one is this large (a record is never
/// split, so a segment can end a little past it).
pub const SEGMENT_BYTES_DEFAULT: u64 = 64 << 20;
/// Old segments that may still hold live entries before the oldest one's live entries are
/// copied forward so it can be deleted (an idle group's few entries must not pin
/// gigabytes of log).
pub const PINNED_SEGMENTS_MAX: usize = 2;
/// How far ahead of its records the current segment's file is extended with zeros (at
/// most the segment size). One inode write per this many bytes of log instead of one
/// per sync.
pub const PREALLOCATE_BYTES: u64 = 1 << 20;
static ZEROS: [u8; PREALLOCATE_BYTES as usize] = [0; PREALLOCATE_BYTES as usize];

const MAGIC: &[u8; 8] = b"MFLOG\x00\x00\x01";
const RECORD_HEADER_BYTES: usize = 12;
/// Tag, group.
const BODY_HEADER_BYTES: usize = 9;

const TAG_ENTRY: u8 = 1;
const TAG_TRUNCATE: u8 = 2;
const TAG_PURGE: u8 = 3;
const TAG_VOTE: u8 = 4;
const TAG_COMMITTED: u8 = 5;
const TAG_DROP: u8 = 6;

/// Where one entry's payload is.
#[derive(Debug, Clone, Copy)]
struct Loc {
    segment: u64,
    offset: u64,
    len: u32,
}

#[derive(Debug, Default)]
struct GroupLog {
    /// Index of `entries[0]`.
    first: u64,
    entries: VecDeque<Loc>,
    vote: Option<Vec<u8>>,
    committed: Option<Vec<u8>>,
    /// `committed` changed since it was last written (the group is in
    /// `Inner::unwritten_commits`).
    commit_unwritten: bool,
    /// The purge point's index and its encoded log id.
    purged: Option<(u64, Vec<u8>)>,
}

impl GroupLog {
    fn last_index(&self) -> Option<u64> {
        (!self.entries.is_empty()).then(|| self.first + self.entries.len() as u64 - 1)
    }
}

struct Segment {
    file: Arc<File>,
    /// Where its records end (the next write's offset).
    len: u64,
    /// The file's size: `len` plus the zeros written ahead of it.
    allocated: u64,
    /// Live entries whose payload is in this segment.
    live: u64,
}

impl Segment {
    fn new(file: File, len: u64) -> Segment {
        Segment {
            file: Arc::new(file),
            len,
            allocated: len,
            live: 0,
        }
    }
}

struct Inner {
    dir: PathBuf,
    segment_bytes: u64,
    segments: BTreeMap<u64, Segment>,
    groups: HashMap<GroupId, GroupLog>,
    /// Groups whose commit point changed since it was last written: it goes out with
    /// the next record anyone writes, or at the latest with [`Wal::write_commits`] (commit
    /// points only let a restarted replica re-apply what it had applied, so one a little
    /// behind is harmless, and a write of its own per commit was one more `pwrite` per
    /// entry on every replica).
    unwritten_commits: Vec<GroupId>,
    /// A failed write or sync may have lost data the kernel will never write again:
    /// nothing after it can be trusted, so every later call fails.
    failed: bool,
}

/// What recovery found, for the start-up log.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Recovered {
    pub segments: usize,
    pub records: u64,
    /// Bytes cut from the last segment's torn tail, up to its last non-zero byte (the zeros
    /// written ahead of the records are not told apart from a torn record's own).
    pub torn_bytes: u64,
}

/// The node's Raft log. Cheap to share: every group of every kind writes to the same one.
pub struct Wal {
    inner: Mutex<Inner>,
}

fn corrupt(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

fn segment_name(seq: u64) -> String {
    format!("{seq:020}.log")
}

fn record(buf: &mut Vec<u8>, tag: u8, group: GroupId, fields: &[&[u8]]) -> usize {
    let body_len = BODY_HEADER_BYTES + fields.iter().map(|f| f.len()).sum::<usize>();
    let start = buf.len();
    buf.extend_from_slice(&(body_len as u32).to_le_bytes());
    buf.extend_from_slice(&[0; 8]);
    buf.push(tag);
    buf.extend_from_slice(&group.to_le_bytes());
    for field in fields {
        buf.extend_from_slice(field);
    }
    let sum = xxh3_64(&buf[start + RECORD_HEADER_BYTES..]);
    buf[start + 4..start + 12].copy_from_slice(&sum.to_le_bytes());
    start
}

fn read_u64(bytes: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(bytes.get(at..at + 8)?.try_into().ok()?))
}

impl Inner {
    fn group(&mut self, group: GroupId) -> &mut GroupLog {
        self.groups.entry(group).or_default()
    }

    fn release(segments: &mut BTreeMap<u64, Segment>, locs: impl Iterator<Item = Loc>) {
        for loc in locs {
            if let Some(segment) = segments.get_mut(&loc.segment) {
                segment.live = segment.live.saturating_sub(1);
            }
        }
    }

    /// Entry `index` now lives at `loc`: whatever the group had from `index` on is gone
    /// (a conflicting suffix, or the same entries copied forward).
    fn put_entry(&mut self, group: GroupId, index: u64, loc: Loc) {
        let log = self.groups.entry(group).or_default();
        let keep = match log.last_index() {
            Some(last) if index >= log.first && index <= last + 1 => (index - log.first) as usize,
            // Nothing to keep: an empty log, or a log that restarts elsewhere (after a
            // purge of everything, or a snapshot that skipped past it).
            _ => 0,
        };
        let dropped: Vec<Loc> = log.entries.drain(keep..).collect();
        if log.entries.is_empty() {
            log.first = index;
        }
        log.entries.push_back(loc);
        Self::release(&mut self.segments, dropped.into_iter());
        if let Some(segment) = self.segments.get_mut(&loc.segment) {
            segment.live += 1;
        }
    }

    fn truncate(&mut self, group: GroupId, since: u64) {
        let Some(log) = self.groups.get_mut(&group) else { return };
        let keep = since.saturating_sub(log.first).min(log.entries.len() as u64) as usize;
        let dropped: Vec<Loc> = log.entries.drain(keep..).collect();
        Self::release(&mut self.segments, dropped.into_iter());
    }

    fn purge(&mut self, group: GroupId, upto: u64, purged: Vec<u8>) {
        let log = self.groups.entry(group).or_default();
        let count = (upto + 1).saturating_sub(log.first).min(log.entries.len() as u64) as usize;
        let dropped: Vec<Loc> = log.entries.drain(..count).collect();
        log.first = log.first.max(upto + 1);
        log.purged = Some((upto, purged));
        Self::release(&mut self.segments, dropped.into_iter());
    }

    /// A removed replica: its entries and markers go; its vote stays, so a replica created
    /// here again never votes twice in a term.
    fn drop_group(&mut self, group: GroupId) {
        let Some(log) = self.groups.get_mut(&group) else { return };
        let dropped: Vec<Loc> = log.entries.drain(..).collect();
        log.committed = None;
        log.purged = None;
        log.first = 0;
        if log.vote.is_none() {
            self.groups.remove(&group);
        }
        Self::release(&mut self.segments, dropped.into_iter());
    }

    /// Applies one record's body, read back at recovery (`at`: where the body starts).
    fn replay(&mut self, segment: u64, at: u64, body: &[u8]) -> Result<(), String> {
        let tag = body[0];
        let group = read_u64(body, 1).ok_or("short record")?;
        let fields = &body[BODY_HEADER_BYTES..];
        match tag {
            TAG_ENTRY => {
                let index = read_u64(fields, 0).ok_or("short entry record")?;
                let payload = BODY_HEADER_BYTES as u64 + 8;
                let loc = Loc {
                    segment,
                    offset: at + payload,
                    len: (body.len() as u64 - payload) as u32,
                };
                self.put_entry(group, index, loc);
            }
            TAG_TRUNCATE => self.truncate(group, read_u64(fields, 0).ok_or("short truncate record")?),
            TAG_PURGE => {
                let upto = read_u64(fields, 0).ok_or("short purge record")?;
                self.purge(group, upto, fields[8..].to_vec());
            }
            TAG_VOTE => self.group(group).vote = Some(fields.to_vec()),
            TAG_COMMITTED => self.group(group).committed = Some(fields.to_vec()),
            TAG_DROP => self.drop_group(group),
            other => return Err(format!("unknown record tag {other}")),
        }
        Ok(())
    }

    fn check(&self) -> io::Result<()> {
        if self.failed {
            return Err(io::Error::other(
                "an earlier log write or sync failed; nothing written since is known durable",
            ));
        }
        Ok(())
    }

    fn current(&self) -> (u64, &Segment) {
        let (seq, segment) = self.segments.last_key_value().expect("a log always has a segment");
        (*seq, segment)
    }

    /// Writes `buf` at the end of the current segment, followed by the commit points not
    /// yet written; returns the segment and the offset `buf` starts at. Starts a new
    /// segment first if the current one is full.
    fn write(&mut self, buf: &mut Vec<u8>) -> io::Result<(u64, u64)> {
        self.check()?;
        if self.current().1.len >= self.segment_bytes {
            self.roll().inspect_err(|_| self.failed = true)?;
        }
        for group in self.take_unwritten_commits() {
            if let Some(committed) = self.groups.get(&group).and_then(|log| log.committed.as_ref()) {
                record(buf, TAG_COMMITTED, group, &[committed]);
            }
        }
        self.write_here(buf)
    }

    /// Empties [`Inner::unwritten_commits`]: the caller writes them, or has.
    fn take_unwritten_commits(&mut self) -> Vec<GroupId> {
        let groups = std::mem::take(&mut self.unwritten_commits);
        for group in &groups {
            if let Some(log) = self.groups.get_mut(group) {
                log.commit_unwritten = false;
            }
        }
        groups
    }

    /// [`Inner::write`] without starting a new segment (compaction writes while rolling).
    fn write_here(&mut self, buf: &[u8]) -> io::Result<(u64, u64)> {
        let seq = *self.segments.last_key_value().expect("a segment").0;
        let segment = self.segments.get_mut(&seq).expect("the current segment");
        let offset = segment.len;
        let end = offset + buf.len() as u64;
        if let Err(e) = segment.file.write_all_at(buf, offset) {
            self.failed = true;
            return Err(e);
        }
        segment.len = end;
        if end > segment.allocated {
            let chunk = PREALLOCATE_BYTES.min(self.segment_bytes).max(1);
            let ahead = end.div_ceil(chunk) * chunk;
            // Only an optimisation: if the disk is too full for the zeros, the records
            // still go in, the file growing with them as it did without.
            segment.allocated = match segment.file.write_all_at(&ZEROS[..(ahead - end) as usize], end) {
                Ok(()) => ahead,
                Err(_) => end,
            };
        }
        Ok((seq, offset))
    }

    /// Starts the next segment: the current one is synced first (so only the last segment
    /// can be torn), the new one opens with a checkpoint of every group's metadata and is
    /// made durable, and only then are old segments deleted or compacted.
    fn roll(&mut self) -> io::Result<()> {
        let seq = self.current().0;
        let current = self.segments.get_mut(&seq).expect("the current segment");
        if current.allocated > current.len {
            // Only the last segment may end in zeros (recovery reads a zero tail anywhere
            // else as damage).
            current.file.set_len(current.len)?;
            current.allocated = current.len;
            current.file.sync_all()?;
        } else {
            current.file.sync_data()?;
        }
        let next = seq + 1;
        let mut buf = MAGIC.to_vec();
        let mut groups: Vec<_> = self.groups.iter().collect();
        groups.sort_by_key(|(group, _)| **group);
        for (group, log) in groups {
            if let Some(vote) = &log.vote {
                record(&mut buf, TAG_VOTE, *group, &[vote]);
            }
            if let Some(committed) = &log.committed {
                record(&mut buf, TAG_COMMITTED, *group, &[committed]);
            }
            if let Some((upto, purged)) = &log.purged {
                record(&mut buf, TAG_PURGE, *group, &[&upto.to_le_bytes(), purged]);
            }
        }
        let file = create_segment(&self.dir, next, &buf)?;
        self.segments.insert(next, Segment::new(file, buf.len() as u64));
        // The checkpoint holds every commit point.
        self.take_unwritten_commits();
        self.collect()
    }

    /// Deletes every old segment without live entries; when too many old segments are
    /// still pinned, copies the oldest one's live entries forward first.
    fn collect(&mut self) -> io::Result<()> {
        loop {
            let current = self.current().0;
            let old: Vec<u64> = self.segments.keys().copied().filter(|s| *s != current).collect();
            let free: Vec<u64> = old.iter().copied().filter(|s| self.segments[s].live == 0).collect();
            if !free.is_empty() {
                for seq in &free {
                    self.segments.remove(seq);
                    std::fs::remove_file(self.dir.join(segment_name(*seq)))?;
                }
                super::log_store::sync_dir(&self.dir)?;
                continue;
            }
            if old.len() <= PINNED_SEGMENTS_MAX {
                return Ok(());
            }
            self.relocate(old[0])?;
        }
    }

    /// Copies, to the current segment, the whole log of every group whose first entry is
    /// in `oldest`; afterwards nothing live is left in it.
    fn relocate(&mut self, oldest: u64) -> io::Result<()> {
        let mut pinning: Vec<GroupId> = self
            .groups
            .iter()
            .filter(|(_, log)| log.entries.front().is_some_and(|loc| loc.segment == oldest))
            .map(|(group, _)| *group)
            .collect();
        pinning.sort_unstable();
        for group in pinning {
            let (first, payloads) = {
                let log = &self.groups[&group];
                let payloads = log
                    .entries
                    .iter()
                    .map(|loc| self.read(*loc))
                    .collect::<io::Result<Vec<_>>>()?;
                (log.first, payloads)
            };
            let mut buf = Vec::new();
            let starts: Vec<usize> = payloads
                .iter()
                .enumerate()
                .map(|(i, payload)| {
                    record(
                        &mut buf,
                        TAG_ENTRY,
                        group,
                        &[&(first + i as u64).to_le_bytes(), payload],
                    )
                })
                .collect();
            let (seq, base) = self.write_here(&buf)?;
            for (i, (start, payload)) in starts.into_iter().zip(&payloads).enumerate() {
                let loc = entry_loc(seq, base, start, payload.len());
                self.put_entry(group, first + i as u64, loc);
            }
        }
        // The copies must be durable before the originals can go.
        self.current().1.file.sync_data()?;
        if self.segments.get(&oldest).is_some_and(|s| s.live != 0) {
            return Err(io::Error::other(format!(
                "log segment {oldest} still holds live entries after compaction"
            )));
        }
        Ok(())
    }

    fn read(&self, loc: Loc) -> io::Result<Vec<u8>> {
        let segment = self
            .segments
            .get(&loc.segment)
            .ok_or_else(|| io::Error::other(format!("log segment {} is gone", loc.segment)))?;
        let mut payload = vec![0; loc.len as usize];
        segment.file.read_exact_at(&mut payload, loc.offset)?;
        Ok(payload)
    }
}

fn entry_loc(segment: u64, base: u64, record_start: usize, payload_len: usize) -> Loc {
    Loc {
        segment,
        offset: base + (record_start + RECORD_HEADER_BYTES + BODY_HEADER_BYTES + 8) as u64,
        len: payload_len as u32,
    }
}

/// Creates segment `seq` holding `contents` and makes it and its name durable.
fn create_segment(dir: &Path, seq: u64, contents: &[u8]) -> io::Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(dir.join(segment_name(seq)))?;
    file.write_all_at(contents, 0)?;
    file.sync_data()?;
    super::log_store::sync_dir(dir)?;
    Ok(file)
}

/// Reads one segment's records into `inner`. Returns the length of its whole records, and
/// whether something after them was cut short or failed its checksum.
fn replay_segment(inner: &mut Inner, seq: u64, bytes: &[u8], stats: &mut Recovered) -> io::Result<(u64, bool)> {
    if bytes.len() < MAGIC.len() {
        return Ok((0, true));
    }
    if &bytes[..MAGIC.len()] != MAGIC {
        return Err(corrupt(format!(
            "log segment {seq} does not start with the log's magic"
        )));
    }
    let mut pos = MAGIC.len();
    while pos < bytes.len() {
        let Some(header) = bytes.get(pos..pos + RECORD_HEADER_BYTES) else {
            return Ok((pos as u64, true));
        };
        let body_len = u32::from_le_bytes(header[..4].try_into().unwrap()) as usize;
        let sum = u64::from_le_bytes(header[4..].try_into().unwrap());
        let body_at = pos + RECORD_HEADER_BYTES;
        let Some(body) = bytes.get(body_at..body_at + body_len) else {
            return Ok((pos as u64, true));
        };
        if body_len < BODY_HEADER_BYTES || xxh3_64(body) != sum {
            return Ok((pos as u64, true));
        }
        inner
            .replay(seq, body_at as u64, body)
            .map_err(|e| corrupt(format!("log segment {seq} at offset {pos}: {e}")))?;
        stats.records += 1;
        pos = body_at + body_len;
    }
    Ok((pos as u64, false))
}

impl Wal {
    /// Opens (or creates) the log in `dir` and replays it.
    pub fn open(dir: &Path, segment_bytes: u64) -> io::Result<(Wal, Recovered)> {
        let created = !dir.exists();
        std::fs::create_dir_all(dir)?;
        if created {
            if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                super::log_store::sync_dir(parent)?;
            }
        }
        let mut seqs = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            let name = entry?.file_name();
            let name = name.to_string_lossy();
            if let Some(seq) = name.strip_suffix(".log").and_then(|s| s.parse::<u64>().ok()) {
                seqs.push(seq);
            }
        }
        seqs.sort_unstable();
        let mut inner = Inner {
            dir: dir.to_path_buf(),
            segment_bytes: segment_bytes.max(MAGIC.len() as u64 + 1),
            segments: BTreeMap::new(),
            groups: HashMap::new(),
            unwritten_commits: Vec::new(),
            failed: false,
        };
        let mut stats = Recovered::default();
        for (i, seq) in seqs.iter().copied().enumerate() {
            let last = i + 1 == seqs.len();
            let path = dir.join(segment_name(seq));
            let bytes = std::fs::read(&path)?;
            let file = OpenOptions::new().read(true).write(true).open(&path)?;
            inner.segments.insert(seq, Segment::new(file, bytes.len() as u64));
            let (whole, cut) = replay_segment(&mut inner, seq, &bytes, &mut stats)?;
            let tail = &bytes[whole as usize..];
            if cut && last && whole >= MAGIC.len() as u64 && tail.iter().all(|b| *b == 0) {
                // Preallocated space, not damage: the records end where the zeros start.
                inner.segments.get_mut(&seq).expect("just inserted").len = whole;
            } else if cut {
                if !last {
                    return Err(corrupt(format!(
                        "log segment {seq} is damaged at offset {whole} but is not the last one: refusing to \
                         start rather than lose acknowledged entries"
                    )));
                }
                // A torn tail: what was never synced (and so never acknowledged).
                // Truncated, not just overwritten later: a whole record left after the
                // torn one could otherwise be read back after the next append.
                let segment = inner.segments.get_mut(&seq).expect("just inserted");
                stats.torn_bytes = tail.iter().rposition(|b| *b != 0).map_or(0, |last| last as u64 + 1);
                if whole < MAGIC.len() as u64 {
                    segment.file.write_all_at(MAGIC, 0)?;
                    segment.len = MAGIC.len() as u64;
                } else {
                    segment.len = whole;
                }
                segment.allocated = segment.len;
                segment.file.set_len(segment.len)?;
                segment.file.sync_all()?;
            }
        }
        stats.segments = inner.segments.len();
        if inner.segments.is_empty() {
            let file = create_segment(dir, 1, MAGIC)?;
            inner.segments.insert(1, Segment::new(file, MAGIC.len() as u64));
        }
        inner.collect()?;
        Ok((
            Wal {
                inner: Mutex::new(inner),
            },
            stats,
        ))
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Appends `entries` (index, encoded entry) of `group`. Readable at once; durable
    /// after the next [`Wal::sync`].
    pub fn append(&self, group: GroupId, entries: &[(u64, Vec<u8>)]) -> io::Result<()> {
        let mut buf = Vec::with_capacity(entries.iter().map(|(_, e)| e.len() + 29).sum());
        let starts: Vec<usize> = entries
            .iter()
            .map(|(index, payload)| record(&mut buf, TAG_ENTRY, group, &[&index.to_le_bytes(), payload]))
            .collect();
        let mut inner = self.lock();
        let (seq, base) = inner.write(&mut buf)?;
        for ((index, payload), start) in entries.iter().zip(starts) {
            inner.put_entry(group, *index, entry_loc(seq, base, start, payload.len()));
        }
        Ok(())
    }

    /// Removes `group`'s entries from `since` on.
    pub fn truncate(&self, group: GroupId, since: u64) -> io::Result<()> {
        let mut buf = Vec::new();
        record(&mut buf, TAG_TRUNCATE, group, &[&since.to_le_bytes()]);
        let mut inner = self.lock();
        inner.write(&mut buf)?;
        inner.truncate(group, since);
        Ok(())
    }

    /// Removes `group`'s entries up to `upto` and records the purge point (`purged`, its
    /// encoded log id). Old segments left without live entries are deleted.
    pub fn purge(&self, group: GroupId, upto: u64, purged: &[u8]) -> io::Result<()> {
        let mut buf = Vec::new();
        record(&mut buf, TAG_PURGE, group, &[&upto.to_le_bytes(), purged]);
        let mut inner = self.lock();
        inner.write(&mut buf)?;
        inner.purge(group, upto, purged.to_vec());
        let current = inner.current().0;
        if inner.segments.iter().any(|(seq, s)| *seq != current && s.live == 0) {
            // Deleting needs everything before it durable: the purge record says why the
            // entries may go.
            inner
                .current()
                .1
                .file
                .sync_data()
                .inspect_err(|_| inner.failed = true)?;
            inner.collect().inspect_err(|_| inner.failed = true)?;
        }
        Ok(())
    }

    pub fn set_vote(&self, group: GroupId, vote: &[u8]) -> io::Result<()> {
        let mut buf = Vec::with_capacity(vote.len() + 21);
        record(&mut buf, TAG_VOTE, group, &[vote]);
        let mut inner = self.lock();
        inner.write(&mut buf)?;
        inner.group(group).vote = Some(vote.to_vec());
        Ok(())
    }

    /// Records `group`'s commit point; it is written with the next record (see
    /// `Inner::unwritten_commits`), and durable with the sync after that.
    pub fn set_committed(&self, group: GroupId, committed: &[u8]) -> io::Result<()> {
        let mut inner = self.lock();
        inner.check()?;
        let log = inner.group(group);
        log.committed = Some(committed.to_vec());
        if !std::mem::replace(&mut log.commit_unwritten, true) {
            inner.unwritten_commits.push(group);
        }
        Ok(())
    }

    /// Writes the commit points not written yet (not synced): the registry calls it every
    /// pass of its upkeep, so an idle node's last commit points reach the file too (and a
    /// `kill -9` keeps them), and before a clean stop.
    pub fn write_commits(&self) -> io::Result<()> {
        let mut inner = self.lock();
        if inner.unwritten_commits.is_empty() {
            return Ok(());
        }
        inner.write(&mut Vec::new()).map(|_| ())
    }

    /// Removes a removed replica's entries, commit and purge points; its vote stays.
    pub fn drop_group(&self, group: GroupId) -> io::Result<()> {
        let mut buf = Vec::new();
        record(&mut buf, TAG_DROP, group, &[]);
        let mut inner = self.lock();
        // Written after the drop record, it would give the dropped group its commit point
        // back at replay.
        inner.unwritten_commits.retain(|g| *g != group);
        if let Some(log) = inner.groups.get_mut(&group) {
            log.commit_unwritten = false;
        }
        inner.write(&mut buf)?;
        inner.drop_group(group);
        Ok(())
    }

    /// Makes everything written before the call durable.
    pub fn sync(&self) -> io::Result<()> {
        let file = {
            let inner = self.lock();
            inner.check()?;
            inner.current().1.file.clone()
        };
        // Outside the lock: appends go on while the disk works. A roll in between syncs
        // the segment it leaves, so whatever came before the call is covered either way.
        file.sync_data().inspect_err(|_| self.lock().failed = true)
    }

    pub fn vote(&self, group: GroupId) -> Option<Vec<u8>> {
        self.lock().groups.get(&group).and_then(|log| log.vote.clone())
    }

    pub fn committed(&self, group: GroupId) -> Option<Vec<u8>> {
        self.lock().groups.get(&group).and_then(|log| log.committed.clone())
    }

    pub fn purged(&self, group: GroupId) -> Option<Vec<u8>> {
        self.lock()
            .groups
            .get(&group)
            .and_then(|log| log.purged.as_ref().map(|(_, bytes)| bytes.clone()))
    }

    /// The group's last entry, encoded.
    pub fn last(&self, group: GroupId) -> io::Result<Option<Vec<u8>>> {
        let inner = self.lock();
        match inner.groups.get(&group).and_then(|log| log.entries.back()) {
            Some(loc) => inner.read(*loc).map(Some),
            None => Ok(None),
        }
    }

    /// The group's entries with indexes in `[from, to)`, encoded, as far as it has them.
    pub fn entries(&self, group: GroupId, from: u64, to: u64) -> io::Result<Vec<Vec<u8>>> {
        self.entries_within(group, from, to, usize::MAX)
    }

    /// As [`Wal::entries`], but only as many as fit in `budget_bytes` (encoded), and always
    /// the first one there is, whatever its size.
    pub fn entries_within(&self, group: GroupId, from: u64, to: u64, budget_bytes: usize) -> io::Result<Vec<Vec<u8>>> {
        let located: Vec<(Arc<File>, Loc)> = {
            let inner = self.lock();
            let Some(log) = inner.groups.get(&group) else {
                return Ok(Vec::new());
            };
            let start = from.max(log.first);
            let end = to.min(log.first + log.entries.len() as u64);
            let mut total_bytes = 0usize;
            (start..end)
                .map(|index| log.entries[(index - log.first) as usize])
                .take_while(|loc| {
                    let first = total_bytes == 0;
                    total_bytes = total_bytes.saturating_add(loc.len as usize).max(1);
                    first || total_bytes <= budget_bytes
                })
                .map(|loc| (inner.segments[&loc.segment].file.clone(), loc))
                .collect()
        };
        // Read outside the lock; a segment deleted meanwhile stays readable through its
        // open file, and entries are never rewritten in place.
        located
            .into_iter()
            .map(|(file, loc)| {
                let mut payload = vec![0; loc.len as usize];
                file.read_exact_at(&mut payload, loc.offset)?;
                Ok(payload)
            })
            .collect()
    }

    /// Segment files on disk now.
    #[cfg(test)]
    pub fn segment_count(&self) -> usize {
        self.lock().segments.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segment_files(dir: &Path) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
        files.sort();
        files
    }

    fn payload(group: GroupId, index: u64) -> Vec<u8> {
        format!("g{group}-i{index}").into_bytes()
    }

    fn append(wal: &Wal, group: GroupId, range: std::ops::RangeInclusive<u64>) {
        let entries: Vec<_> = range.map(|i| (i, payload(group, i))).collect();
        wal.append(group, &entries).unwrap();
    }

    fn indexes(wal: &Wal, group: GroupId) -> Vec<String> {
        wal.entries(group, 0, u64::MAX)
            .unwrap()
            .into_iter()
            .map(|p| String::from_utf8(p).unwrap())
            .collect()
    }

    fn expect(group: GroupId, range: std::ops::RangeInclusive<u64>) -> Vec<String> {
        range.map(|i| String::from_utf8(payload(group, i)).unwrap()).collect()
    }

    #[test]
    fn appends_truncates_and_purges_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (wal, _) = Wal::open(dir.path(), SEGMENT_BYTES_DEFAULT).unwrap();
            append(&wal, 1, 1..=10);
            append(&wal, 2, 1..=3);
            wal.truncate(1, 8).unwrap();
            wal.append(1, &[(8, b"new8".to_vec())]).unwrap();
            wal.purge(1, 3, b"p3").unwrap();
            wal.set_committed(1, b"c7").unwrap();
            wal.set_vote(2, b"v2").unwrap();
            wal.sync().unwrap();
        }
        let (wal, recovered) = Wal::open(dir.path(), SEGMENT_BYTES_DEFAULT).unwrap();
        assert_eq!(recovered.torn_bytes, 0);
        let mut want = expect(1, 4..=7);
        want.push("new8".into());
        assert_eq!(indexes(&wal, 1), want);
        assert_eq!(indexes(&wal, 2), expect(2, 1..=3));
        assert_eq!(wal.purged(1).as_deref(), Some(&b"p3"[..]));
        assert_eq!(wal.vote(2).as_deref(), Some(&b"v2"[..]));
        assert_eq!(wal.committed(1).as_deref(), Some(&b"c7"[..]));
        assert_eq!(wal.last(1).unwrap().as_deref(), Some(&b"new8"[..]));
        assert_eq!(wal.entries(1, 5, 7).unwrap().len(), 2);
    }

    #[test]
    fn a_budgeted_read_stops_before_the_entry_that_would_pass_it_but_never_before_the_first() {
        let dir = tempfile::tempdir().unwrap();
        let (wal, _) = Wal::open(dir.path(), SEGMENT_BYTES_DEFAULT).unwrap();
        let sizes = [300, 100, 100, 50, 400];
        let entries: Vec<(u64, Vec<u8>)> = (1..).zip(sizes.iter().map(|&n| vec![7u8; n])).collect();
        wal.append(1, &entries).unwrap();
        let lens = |from, budget| -> Vec<usize> {
            let read = wal.entries_within(1, from, u64::MAX, budget).unwrap();
            read.iter().map(Vec::len).collect()
        };
        assert_eq!(lens(1, 500), [300, 100, 100], "exactly at the budget");
        assert_eq!(lens(1, 499), [300, 100]);
        assert_eq!(lens(1, 10), [300], "the first goes whatever its size");
        assert_eq!(lens(5, 0), [400]);
        assert_eq!(lens(2, 250), [100, 100, 50]);
        assert_eq!(lens(2, usize::MAX), [100, 100, 50, 400]);
        assert_eq!(wal.entries(1, 1, 6).unwrap().len(), 5, "unbudgeted reads are whole");
        assert!(lens(6, 1_000).is_empty(), "past the end");
    }

    /// The segment's bytes up to the end of its whole records.
    fn records_of(path: &Path) -> Vec<u8> {
        let mut bytes = std::fs::read(path).unwrap();
        let mut inner = Inner {
            dir: PathBuf::new(),
            segment_bytes: SEGMENT_BYTES_DEFAULT,
            segments: BTreeMap::new(),
            groups: HashMap::new(),
            unwritten_commits: Vec::new(),
            failed: false,
        };
        let (end, _) = replay_segment(&mut inner, 0, &bytes, &mut Recovered::default()).unwrap();
        bytes.truncate(end as usize);
        bytes
    }

    /// A log of group 1's entries 1..=5, synced: its segment and where its records end.
    fn five_synced_entries(dir: &Path) -> (PathBuf, u64) {
        let (wal, _) = Wal::open(dir, SEGMENT_BYTES_DEFAULT).unwrap();
        append(&wal, 1, 1..=5);
        wal.sync().unwrap();
        let path = dir.join(segment_name(1));
        let whole = records_of(&path).len() as u64;
        (path, whole)
    }

    #[test]
    fn a_torn_tail_is_cut_at_the_last_whole_record() {
        let dir = tempfile::tempdir().unwrap();
        let (path, whole) = five_synced_entries(dir.path());
        // Half of a sixth record, written over the zeros ahead of the records.
        let mut extra = Vec::new();
        record(&mut extra, TAG_ENTRY, 1, &[&6u64.to_le_bytes(), b"six"]);
        let file = OpenOptions::new().write(true).open(&path).unwrap();
        file.write_all_at(&extra[..extra.len() / 2], whole).unwrap();
        let (wal, recovered) = Wal::open(dir.path(), SEGMENT_BYTES_DEFAULT).unwrap();
        // Counted up to its last non-zero byte: the zeros after it are not told apart.
        assert!(recovered.torn_bytes > 0 && recovered.torn_bytes <= (extra.len() / 2) as u64);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), whole);
        assert_eq!(indexes(&wal, 1), expect(1, 1..=5));
        // Appending after the cut continues a readable log.
        append(&wal, 1, 6..=6);
        drop(wal);
        let (wal, _) = Wal::open(dir.path(), SEGMENT_BYTES_DEFAULT).unwrap();
        assert_eq!(indexes(&wal, 1), expect(1, 1..=6));
    }

    /// A crash can leave a whole record behind a torn one (pages reach the disk in any
    /// order). The cut must drop it too: were it left in place, a shorter append after the
    /// cut could end right where it starts and bring it back at the next start.
    #[test]
    fn a_whole_record_behind_a_torn_one_never_comes_back() {
        let dir = tempfile::tempdir().unwrap();
        let (path, whole) = five_synced_entries(dir.path());
        let mut torn = Vec::new();
        record(&mut torn, TAG_ENTRY, 1, &[&6u64.to_le_bytes(), b"long sixth entry"]);
        let mut stale = Vec::new();
        record(&mut stale, TAG_ENTRY, 1, &[&7u64.to_le_bytes(), b"stale seventh"]);
        let mut replacement = Vec::new();
        record(&mut replacement, TAG_ENTRY, 1, &[&6u64.to_le_bytes(), b"6"]);
        // The sixth is torn (its last bytes never reached the disk), the seventh whole.
        let torn_at = whole + replacement.len() as u64;
        let file = OpenOptions::new().write(true).open(&path).unwrap();
        file.write_all_at(&torn[..torn.len() - 3], whole).unwrap();
        file.write_all_at(&stale, torn_at).unwrap();
        {
            let (wal, recovered) = Wal::open(dir.path(), SEGMENT_BYTES_DEFAULT).unwrap();
            assert!(recovered.torn_bytes > 0);
            assert_eq!(indexes(&wal, 1), expect(1, 1..=5));
            // Cut, not just left to be overwritten: the append below zero-fills after
            // itself, but a crash before its sync, or an append ending on a chunk
            // boundary, would not.
            assert_eq!(std::fs::metadata(&path).unwrap().len(), whole);
            wal.append(1, &[(6, b"6".to_vec())]).unwrap();
            wal.sync().unwrap();
        }
        let (wal, recovered) = Wal::open(dir.path(), SEGMENT_BYTES_DEFAULT).unwrap();
        assert_eq!(recovered.torn_bytes, 0);
        let mut want = expect(1, 1..=5);
        want.push("6".into());
        assert_eq!(indexes(&wal, 1), want, "the stale seventh must not come back");
    }

    #[test]
    fn the_current_segment_runs_ahead_in_zeros_that_a_restart_does_not_call_torn() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(segment_name(1));
        {
            let (wal, _) = Wal::open(dir.path(), SEGMENT_BYTES_DEFAULT).unwrap();
            append(&wal, 1, 1..=5);
            wal.sync().unwrap();
        }
        assert_eq!(std::fs::metadata(&path).unwrap().len(), PREALLOCATE_BYTES);
        {
            let (wal, recovered) = Wal::open(dir.path(), SEGMENT_BYTES_DEFAULT).unwrap();
            assert_eq!(recovered.torn_bytes, 0);
            assert_eq!(indexes(&wal, 1), expect(1, 1..=5));
            assert_eq!(
                std::fs::metadata(&path).unwrap().len(),
                PREALLOCATE_BYTES,
                "the zeros are kept, not cut as a torn tail"
            );
            // Appends go on where the records end, not after the zeros.
            append(&wal, 1, 6..=6);
            // One entry larger than the chunk extends the file past it.
            wal.append(2, &[(1, vec![b'x'; PREALLOCATE_BYTES as usize])]).unwrap();
            wal.sync().unwrap();
        }
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 2 * PREALLOCATE_BYTES);
        let (wal, recovered) = Wal::open(dir.path(), SEGMENT_BYTES_DEFAULT).unwrap();
        assert_eq!(recovered.torn_bytes, 0);
        assert_eq!(indexes(&wal, 1), expect(1, 1..=6));
        assert_eq!(wal.entries(2, 1, 2).unwrap()[0].len(), PREALLOCATE_BYTES as usize);
    }

    #[test]
    fn a_checksum_mismatch_in_the_last_segment_ends_the_log_there() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (wal, _) = Wal::open(dir.path(), SEGMENT_BYTES_DEFAULT).unwrap();
            append(&wal, 1, 1..=3);
        }
        let path = dir.path().join(segment_name(1));
        let last = records_of(&path).len() as u64 - 1;
        let file = OpenOptions::new().read(true).write(true).open(&path).unwrap();
        let mut byte = [0];
        file.read_exact_at(&mut byte, last).unwrap();
        file.write_all_at(&[byte[0] ^ 0xff], last).unwrap();
        let (wal, recovered) = Wal::open(dir.path(), SEGMENT_BYTES_DEFAULT).unwrap();
        assert!(recovered.torn_bytes > 0);
        assert_eq!(indexes(&wal, 1), expect(1, 1..=2));
    }

    #[test]
    fn damage_in_an_older_segment_refuses_to_open() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (wal, _) = Wal::open(dir.path(), 200).unwrap();
            for i in 1..=20 {
                append(&wal, 1, i..=i);
            }
            assert!(wal.segment_count() > 1);
        }
        let files = segment_files(dir.path());
        for older in &files[..files.len() - 1] {
            assert_eq!(
                std::fs::read(older).unwrap().len(),
                records_of(older).len(),
                "a segment left behind ends at its last record, not in zeros"
            );
        }
        let path = files[0].clone();
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[20] ^= 0xff;
        std::fs::write(&path, &bytes).unwrap();
        let error = Wal::open(dir.path(), 200)
            .err()
            .expect("a damaged old segment must not open");
        assert_eq!(error.kind(), io::ErrorKind::InvalidData);
        assert!(error.to_string().contains("not the last one"), "{error}");
    }

    #[test]
    fn purged_segments_are_deleted_and_metadata_outlives_them() {
        let dir = tempfile::tempdir().unwrap();
        let (wal, _) = Wal::open(dir.path(), 300).unwrap();
        wal.set_vote(1, b"vote").unwrap();
        for i in 1..=40 {
            append(&wal, 1, i..=i);
        }
        let before = segment_files(dir.path());
        assert!(before.len() > 2, "{before:?}");
        wal.purge(1, 38, b"p38").unwrap();
        let after = segment_files(dir.path());
        assert!(after.len() < before.len(), "{after:?}");
        assert_eq!(after.len(), wal.segment_count());
        wal.sync().unwrap();
        drop(wal);
        let (wal, _) = Wal::open(dir.path(), 300).unwrap();
        assert_eq!(indexes(&wal, 1), expect(1, 39..=40));
        assert_eq!(
            wal.vote(1).as_deref(),
            Some(&b"vote"[..]),
            "the vote's record was in a deleted segment"
        );
        assert_eq!(wal.purged(1).as_deref(), Some(&b"p38"[..]));
    }

    #[test]
    fn an_idle_groups_entries_are_copied_forward_instead_of_pinning_old_segments() {
        let dir = tempfile::tempdir().unwrap();
        let (wal, _) = Wal::open(dir.path(), 400).unwrap();
        append(&wal, 7, 1..=3);
        for i in 1..=200 {
            append(&wal, 1, i..=i);
            if i % 10 == 0 {
                wal.purge(1, i - 1, b"p").unwrap();
            }
        }
        assert!(
            wal.segment_count() <= PINNED_SEGMENTS_MAX + 2,
            "{} segments kept for 3 idle entries",
            wal.segment_count()
        );
        assert_eq!(indexes(&wal, 7), expect(7, 1..=3));
        drop(wal);
        let (wal, _) = Wal::open(dir.path(), 400).unwrap();
        assert_eq!(indexes(&wal, 7), expect(7, 1..=3));
        assert_eq!(indexes(&wal, 1), expect(1, 200..=200));
    }

    #[test]
    fn a_commit_point_goes_out_with_the_next_record_or_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (wal, _) = Wal::open(dir.path(), SEGMENT_BYTES_DEFAULT).unwrap();
            append(&wal, 1, 1..=3);
            wal.set_committed(1, b"c2").unwrap();
            append(&wal, 2, 1..=1);
            wal.set_committed(1, b"c3").unwrap();
            wal.set_committed(2, b"c1").unwrap();
            assert_eq!(wal.committed(1).as_deref(), Some(&b"c3"[..]), "read back at once");
            wal.sync().unwrap();
        }
        // Nothing was written after the last two: replay stops at the one before.
        let (wal, _) = Wal::open(dir.path(), SEGMENT_BYTES_DEFAULT).unwrap();
        assert_eq!(wal.committed(1).as_deref(), Some(&b"c2"[..]));
        assert_eq!(wal.committed(2), None);
        // Until they are written on their own (the registry does every pass).
        wal.set_committed(1, b"c3").unwrap();
        wal.write_commits().unwrap();
        wal.write_commits().unwrap();
        drop(wal);
        let (wal, _) = Wal::open(dir.path(), SEGMENT_BYTES_DEFAULT).unwrap();
        assert_eq!(wal.committed(1).as_deref(), Some(&b"c3"[..]));
        drop(wal);
        // A new segment's checkpoint carries commit points not written yet.
        let small = 64;
        {
            let (wal, _) = Wal::open(dir.path(), small).unwrap();
            wal.set_committed(2, b"c1").unwrap();
            append(&wal, 2, 2..=2);
            wal.set_committed(1, b"c3").unwrap();
            append(&wal, 2, 3..=3);
            assert!(wal.segment_count() > 1);
        }
        let (wal, _) = Wal::open(dir.path(), small).unwrap();
        assert_eq!(wal.committed(1).as_deref(), Some(&b"c3"[..]));
        assert_eq!(wal.committed(2).as_deref(), Some(&b"c1"[..]));
        assert_eq!(indexes(&wal, 2), expect(2, 1..=3));
    }

    #[test]
    fn a_dropped_group_keeps_its_vote_only() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (wal, _) = Wal::open(dir.path(), SEGMENT_BYTES_DEFAULT).unwrap();
            append(&wal, 3, 1..=4);
            wal.set_vote(3, b"v").unwrap();
            wal.set_committed(3, b"c").unwrap();
            wal.drop_group(3).unwrap();
        }
        let (wal, _) = Wal::open(dir.path(), SEGMENT_BYTES_DEFAULT).unwrap();
        assert!(indexes(&wal, 3).is_empty());
        assert_eq!(wal.committed(3), None);
        assert_eq!(wal.vote(3).as_deref(), Some(&b"v"[..]));
        // A replica created here again starts a fresh log.
        append(&wal, 3, 1..=2);
        assert_eq!(indexes(&wal, 3), expect(3, 1..=2));
    }
}
