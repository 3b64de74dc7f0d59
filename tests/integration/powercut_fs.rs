//! An in-memory FUSE filesystem for power-cut tests: it remembers only what was synced.
//!
//! Every file keeps its `current` bytes and the `durable` bytes of its last fsync/fdatasync;
//! every directory keeps its `current` entries and the `durable` entries of its last fsyncdir.
//! `cut_power` reverts everything to the durable state, the way a power loss does on a
//! filesystem that promises nothing more than POSIX: a file never synced comes back empty, an
//! entry whose directory was never synced after it was made (the root included) disappears.
//!
//! The kernel must not remember what the cut removed: files open with DIRECT_IO (no page
//! cache) and every entry and attribute has a zero TTL, so each access asks this filesystem.
//!
//! `FS_SYNC_FL` (`chattr +S`) works as on ext4: a write to such a file, and an entry made or
//! removed in such a directory, is durable when it returns, and a file or directory made
//! in such a directory has the flag too.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use fuser::{
    AccessFlags, BackgroundSession, Config, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation,
    INodeNo, IoctlFlags, LockOwner, MountOption, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyIoctl, ReplyOpen, ReplyStatfs, ReplyWrite, Request, SessionACL,
    TimeOrNow, WriteFlags,
};

/// Zero: the kernel re-asks on every access, so nothing it cached can outlive a cut.
const TTL: Duration = Duration::ZERO;
const ROOT: u64 = INodeNo::ROOT.0;
const S_IFMT: u32 = 0o170000;
const S_IFREG: u32 = 0o100000;
const FALLOC_FL_KEEP_SIZE: i32 = 0x01;
const FALLOC_FL_PUNCH_HOLE: i32 = 0x02;
const FALLOC_FL_ZERO_RANGE: i32 = 0x10;
/// `linux/fs.h`: the ioctls the kernel sends for `FS_IOC_GETFLAGS`/`SETFLAGS` (the first
/// get comes as `FS_IOC_FSGETXATTR`), and the one flag this filesystem knows.
const FS_IOC_GETFLAGS: u32 = 0x8008_6601;
const FS_IOC_SETFLAGS: u32 = 0x4008_6602;
const FS_IOC_FSGETXATTR: u32 = 0x801c_581f;
const FS_SYNC_FL: u32 = 0x8;
const FS_XFLAG_SYNC: u32 = 0x20;
/// `struct fsxattr`: five u32 and 8 bytes of padding.
const FSXATTR_BYTES: usize = 28;

/// What a power cut keeps beyond what was synced.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Cut {
    /// Nothing.
    Synced,
    /// Half the unsynced bytes of each file appended to since its last sync (past its end,
    /// or over zeros written ahead).
    Torn,
    /// Everything the OS could have written back, except in directories with this name:
    /// there, only what was synced.
    WritebackExcept(&'static str),
}

/// Where a file was appended to since its last sync, if that is all that changed: bytes
/// written past its durable end, or over zeros it already had there (a log that writes
/// zeros ahead of its records). `[from, to)` spans every byte that differs.
fn appended_since_sync(cur: &[u8], dur: &[u8]) -> Option<(usize, usize)> {
    let from = cur.iter().zip(dur).take_while(|(a, b)| a == b).count();
    if cur.len() <= from || dur.get(from..).is_some_and(|rest| rest.iter().any(|b| *b != 0)) {
        return None;
    }
    let to = (from..cur.len())
        .rev()
        .find(|&i| cur[i] != dur.get(i).copied().unwrap_or(0))?
        + 1;
    Some((from, to))
}

enum Body {
    File {
        cur: Vec<u8>,
        dur: Vec<u8>,
    },
    Dir {
        cur: BTreeMap<OsString, u64>,
        dur: BTreeMap<OsString, u64>,
        parent: u64,
    },
}

struct Inode {
    body: Body,
    perm: u16,
    mtime: SystemTime,
    /// `FS_SYNC_FL`: every change is durable at once.
    sync: bool,
    /// Open handles: an unlinked file stays readable while open.
    open: u32,
}

struct State {
    inodes: HashMap<u64, Inode>,
    /// Never reused: the kernel may still hold a dropped inode number.
    next_ino: u64,
    fsyncs: u64,
    fsyncdirs: u64,
    written: u64,
}

type Res<T> = Result<T, Errno>;

impl State {
    fn new() -> State {
        let root = Body::Dir {
            cur: BTreeMap::new(),
            dur: BTreeMap::new(),
            parent: ROOT,
        };
        let mut inodes = HashMap::new();
        inodes.insert(
            ROOT,
            Inode {
                body: root,
                perm: 0o755,
                mtime: SystemTime::now(),
                sync: false,
                open: 0,
            },
        );
        State {
            inodes,
            next_ino: ROOT + 1,
            fsyncs: 0,
            fsyncdirs: 0,
            written: 0,
        }
    }

    fn node(&mut self, ino: u64) -> Res<&mut Inode> {
        self.inodes.get_mut(&ino).ok_or(Errno::ENOENT)
    }

    fn file(&mut self, ino: u64) -> Res<&mut Vec<u8>> {
        match &mut self.node(ino)?.body {
            Body::File { cur, .. } => Ok(cur),
            Body::Dir { .. } => Err(Errno::EISDIR),
        }
    }

    fn entries(&mut self, ino: u64) -> Res<&mut BTreeMap<OsString, u64>> {
        match &mut self.node(ino)?.body {
            Body::Dir { cur, .. } => Ok(cur),
            Body::File { .. } => Err(Errno::ENOTDIR),
        }
    }

    fn child(&mut self, parent: u64, name: &OsStr) -> Res<u64> {
        self.entries(parent)?.get(name).copied().ok_or(Errno::ENOENT)
    }

    fn is_dir(&self, ino: u64) -> bool {
        matches!(
            self.inodes.get(&ino),
            Some(Inode {
                body: Body::Dir { .. },
                ..
            })
        )
    }

    fn attr(&self, ino: u64) -> Res<FileAttr> {
        let node = self.inodes.get(&ino).ok_or(Errno::ENOENT)?;
        let (kind, size, nlink) = match &node.body {
            Body::File { cur, .. } => (FileType::RegularFile, cur.len() as u64, 1),
            Body::Dir { .. } => (FileType::Directory, 4096, 2),
        };
        let t = node.mtime;
        Ok(FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: size.div_ceil(512),
            atime: t,
            mtime: t,
            ctime: t,
            crtime: t,
            kind,
            perm: node.perm,
            nlink,
            uid: 0,
            gid: 0,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        })
    }

    fn make(&mut self, parent: u64, name: &OsStr, dir: bool, mode: u32) -> Res<FileAttr> {
        let ino = self.next_ino;
        let sync = self.node(parent)?.sync;
        let entries = self.entries(parent)?;
        if entries.contains_key(name) {
            return Err(Errno::EEXIST);
        }
        entries.insert(name.to_owned(), ino);
        self.next_ino += 1;
        let body = if dir {
            Body::Dir {
                cur: BTreeMap::new(),
                dur: BTreeMap::new(),
                parent,
            }
        } else {
            Body::File {
                cur: Vec::new(),
                dur: Vec::new(),
            }
        };
        let perm = (mode & 0o7777) as u16;
        self.inodes.insert(
            ino,
            Inode {
                body,
                perm,
                mtime: SystemTime::now(),
                sync,
                open: 0,
            },
        );
        self.sync_if_flagged(parent)?;
        self.attr(ino)
    }

    /// fsync and fsyncdir: what is current becomes what survives a cut.
    fn sync(&mut self, ino: u64) -> Res<()> {
        match &mut self.node(ino)?.body {
            Body::File { cur, dur } => *dur = cur.clone(),
            Body::Dir { cur, dur, .. } => *dur = cur.clone(),
        }
        Ok(())
    }

    /// A change to `ino` is durable at once if it has `FS_SYNC_FL`.
    fn sync_if_flagged(&mut self, ino: u64) -> Res<()> {
        if self.node(ino)?.sync {
            self.sync(ino)?;
        }
        Ok(())
    }

    /// Frees an inode no handle holds and no entry, current or durable, names: it can never
    /// be seen again, cut or not. Children only its durable entries named go with it.
    fn maybe_drop(&mut self, ino: u64) {
        let named = |n: &Inode| match &n.body {
            Body::Dir { cur, dur, .. } => cur.values().chain(dur.values()).any(|&c| c == ino),
            Body::File { .. } => false,
        };
        match self.inodes.get(&ino) {
            Some(n) if ino != ROOT && n.open == 0 && !self.inodes.values().any(named) => {}
            _ => return,
        }
        if let Some(Inode {
            body: Body::Dir { cur, dur, .. },
            ..
        }) = self.inodes.remove(&ino)
        {
            for child in cur.into_values().chain(dur.into_values()) {
                self.maybe_drop(child);
            }
        }
    }

    fn remove(&mut self, parent: u64, name: &OsStr, dir: bool) -> Res<()> {
        let ino = self.child(parent, name)?;
        match (dir, self.is_dir(ino)) {
            (true, false) => return Err(Errno::ENOTDIR),
            (false, true) => return Err(Errno::EISDIR),
            (true, true) if !self.entries(ino)?.is_empty() => return Err(Errno::ENOTEMPTY),
            _ => {}
        }
        self.entries(parent)?.remove(name);
        self.sync_if_flagged(parent)?;
        self.maybe_drop(ino);
        Ok(())
    }

    fn rename(&mut self, p: u64, name: &OsStr, np: u64, nname: &OsStr, flags: RenameFlags) -> Res<()> {
        if !(flags - RenameFlags::RENAME_NOREPLACE).is_empty() {
            return Err(Errno::EINVAL); // RENAME_EXCHANGE / WHITEOUT: nobody here needs them
        }
        let ino = self.child(p, name)?;
        if let Some(&old) = self.entries(np)?.get(nname) {
            if flags.contains(RenameFlags::RENAME_NOREPLACE) {
                return Err(Errno::EEXIST);
            }
            if old == ino {
                return Ok(());
            }
            match (self.is_dir(ino), self.is_dir(old)) {
                (true, false) => return Err(Errno::ENOTDIR),
                (false, true) => return Err(Errno::EISDIR),
                (true, true) if !self.entries(old)?.is_empty() => return Err(Errno::ENOTEMPTY),
                _ => {}
            }
        }
        self.entries(p)?.remove(name);
        let replaced = self.entries(np)?.insert(nname.to_owned(), ino);
        if let Body::Dir { parent, .. } = &mut self.node(ino)?.body {
            *parent = np;
        }
        self.sync_if_flagged(p)?;
        self.sync_if_flagged(np)?;
        if let Some(old) = replaced {
            self.maybe_drop(old);
        }
        Ok(())
    }

    /// Every inode that `Cut::WritebackExcept(name)` reverts: directories entered as
    /// `name`, and whatever they name, now or durably.
    fn inside_dirs_named(&self, name: &OsStr) -> HashSet<u64> {
        let mut inside = HashSet::new();
        for node in self.inodes.values() {
            if let Body::Dir { cur, dur, .. } = &node.body {
                for (entry, &ino) in cur.iter().chain(dur.iter()) {
                    if entry == name {
                        inside.insert(ino);
                    }
                }
            }
        }
        for dir in inside.clone() {
            if let Some(Inode {
                body: Body::Dir { cur, dur, .. },
                ..
            }) = self.inodes.get(&dir)
            {
                inside.extend(cur.values().chain(dur.values()));
            }
        }
        inside
    }

    /// Returns how many files it tore.
    fn cut(&mut self, how: Cut) -> usize {
        let mut torn_files = 0;
        let reverted = match how {
            Cut::WritebackExcept(name) => Some(self.inside_dirs_named(OsStr::new(name))),
            Cut::Synced | Cut::Torn => None,
        };
        for (ino, node) in self.inodes.iter_mut() {
            node.open = 0; // every process is gone
            if reverted.as_ref().is_some_and(|r| !r.contains(ino)) {
                match &mut node.body {
                    Body::File { cur, dur } => *dur = cur.clone(),
                    Body::Dir { cur, dur, .. } => *dur = cur.clone(),
                }
                continue;
            }
            match &mut node.body {
                Body::File { cur, dur } => match appended_since_sync(cur, dur) {
                    Some((from, to)) if how == Cut::Torn => {
                        let keep = from + (to - from).div_ceil(2);
                        let mut torn = cur[..keep].to_vec();
                        if dur.len() > keep {
                            torn.extend_from_slice(&dur[keep..]);
                        }
                        *cur = torn;
                        *dur = cur.clone();
                        torn_files += 1;
                    }
                    _ => *cur = dur.clone(),
                },
                Body::Dir { cur, dur, .. } => *cur = dur.clone(),
            }
        }
        // Keep what durable entries reach from the root; parents are as those entries say.
        let (mut keep, mut stack) = (HashSet::from([ROOT]), vec![ROOT]);
        while let Some(dir) = stack.pop() {
            let children: Vec<u64> = match self.inodes.get(&dir).map(|n| &n.body) {
                Some(Body::Dir { cur, .. }) => cur.values().copied().collect(),
                _ => continue,
            };
            for child in children {
                if keep.insert(child) {
                    if let Some(Inode {
                        body: Body::Dir { parent, .. },
                        ..
                    }) = self.inodes.get_mut(&child)
                    {
                        *parent = dir;
                    }
                    stack.push(child);
                }
            }
        }
        self.inodes.retain(|ino, _| keep.contains(ino));
        torn_files
    }
}

struct Fs(Arc<Mutex<State>>);

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    // A panicking assertion elsewhere must not wedge the mount.
    state.lock().unwrap_or_else(|e| e.into_inner())
}

fn empty(reply: ReplyEmpty, r: Res<()>) {
    match r {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(e),
    }
}

fn entry(reply: ReplyEntry, r: Res<FileAttr>) {
    match r {
        Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
        Err(e) => reply.error(e),
    }
}

impl Filesystem for Fs {
    fn lookup(&self, _: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let mut st = lock(&self.0);
        entry(reply, st.child(parent.0, name).and_then(|ino| st.attr(ino)));
    }

    fn getattr(&self, _: &Request, ino: INodeNo, _: Option<FileHandle>, reply: ReplyAttr) {
        match lock(&self.0).attr(ino.0) {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        _: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let mut st = lock(&self.0);
        let r = (|| {
            if let Some(size) = size {
                st.file(ino.0)?.resize(size as usize, 0); // truncate, or extend with zeros
                st.node(ino.0)?.mtime = SystemTime::now();
                st.sync_if_flagged(ino.0)?;
            }
            let node = st.node(ino.0)?;
            if let Some(mode) = mode {
                node.perm = (mode & 0o7777) as u16;
            }
            match mtime {
                Some(TimeOrNow::SpecificTime(t)) => node.mtime = t,
                Some(TimeOrNow::Now) => node.mtime = SystemTime::now(),
                None => {}
            }
            st.attr(ino.0)
        })();
        match r {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn mknod(&self, _: &Request, parent: INodeNo, name: &OsStr, mode: u32, _: u32, _: u32, reply: ReplyEntry) {
        if mode & S_IFMT != S_IFREG {
            return reply.error(Errno::EPERM); // regular files only
        }
        entry(reply, lock(&self.0).make(parent.0, name, false, mode));
    }

    fn mkdir(&self, _: &Request, parent: INodeNo, name: &OsStr, mode: u32, _: u32, reply: ReplyEntry) {
        entry(reply, lock(&self.0).make(parent.0, name, true, mode));
    }

    fn create(&self, _: &Request, parent: INodeNo, name: &OsStr, mode: u32, _: u32, _: i32, reply: ReplyCreate) {
        let mut st = lock(&self.0);
        match st.make(parent.0, name, false, mode) {
            Ok(attr) => {
                st.inodes.get_mut(&attr.ino.0).unwrap().open += 1;
                reply.created(&TTL, &attr, Generation(0), FileHandle(0), FopenFlags::FOPEN_DIRECT_IO);
            }
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, _: &Request, ino: INodeNo, _: OpenFlags, reply: ReplyOpen) {
        match lock(&self.0).node(ino.0) {
            Ok(node) => {
                node.open += 1;
                // No page cache: a read must never return data the cut took away.
                reply.opened(FileHandle(0), FopenFlags::FOPEN_DIRECT_IO);
            }
            Err(e) => reply.error(e),
        }
    }

    fn opendir(&self, _: &Request, ino: INodeNo, _: OpenFlags, reply: ReplyOpen) {
        match lock(&self.0).node(ino.0) {
            Ok(node) => {
                node.open += 1;
                reply.opened(FileHandle(0), FopenFlags::empty());
            }
            Err(e) => reply.error(e),
        }
    }

    fn release(
        &self,
        _: &Request,
        ino: INodeNo,
        _: FileHandle,
        _: OpenFlags,
        _: Option<LockOwner>,
        _: bool,
        reply: ReplyEmpty,
    ) {
        let mut st = lock(&self.0);
        if let Ok(node) = st.node(ino.0) {
            node.open = node.open.saturating_sub(1); // a cut already zeroed it
            st.maybe_drop(ino.0);
        }
        reply.ok();
    }

    fn releasedir(&self, req: &Request, ino: INodeNo, fh: FileHandle, flags: OpenFlags, reply: ReplyEmpty) {
        self.release(req, ino, fh, flags, None, false, reply);
    }

    fn read(
        &self,
        _: &Request,
        ino: INodeNo,
        _: FileHandle,
        offset: u64,
        size: u32,
        _: OpenFlags,
        _: Option<LockOwner>,
        reply: ReplyData,
    ) {
        match lock(&self.0).file(ino.0) {
            Ok(data) => {
                let start = (offset as usize).min(data.len());
                let end = start.saturating_add(size as usize).min(data.len());
                reply.data(&data[start..end]);
            }
            Err(e) => reply.error(e),
        }
    }

    fn write(
        &self,
        _: &Request,
        ino: INodeNo,
        _: FileHandle,
        offset: u64,
        data: &[u8],
        _: WriteFlags,
        _: OpenFlags,
        _: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let mut st = lock(&self.0);
        let r = (|| {
            let cur = st.file(ino.0)?;
            let (start, end) = (offset as usize, offset as usize + data.len());
            if cur.len() < end {
                cur.resize(end, 0); // a gap before `offset` reads as zeros
            }
            cur[start..end].copy_from_slice(data);
            st.node(ino.0)?.mtime = SystemTime::now();
            st.written += data.len() as u64;
            st.sync_if_flagged(ino.0)
        })();
        match r {
            Ok(()) => reply.written(data.len() as u32),
            Err(e) => reply.error(e),
        }
    }

    fn flush(&self, _: &Request, _: INodeNo, _: FileHandle, _: LockOwner, reply: ReplyEmpty) {
        reply.ok(); // close() promises nothing durable
    }

    fn fsync(&self, _: &Request, ino: INodeNo, _: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        let mut st = lock(&self.0);
        st.fsyncs += 1;
        let r = st.sync(ino.0);
        empty(reply, r);
    }

    fn fsyncdir(&self, _: &Request, ino: INodeNo, _: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        let mut st = lock(&self.0);
        st.fsyncdirs += 1;
        let r = st.sync(ino.0);
        empty(reply, r);
    }

    fn unlink(&self, _: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        empty(reply, lock(&self.0).remove(parent.0, name, false));
    }

    fn rmdir(&self, _: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        empty(reply, lock(&self.0).remove(parent.0, name, true));
    }

    fn rename(
        &self,
        _: &Request,
        p: INodeNo,
        name: &OsStr,
        np: INodeNo,
        nname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        empty(reply, lock(&self.0).rename(p.0, name, np.0, nname, flags));
    }

    fn readdir(&self, _: &Request, ino: INodeNo, _: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        let st = lock(&self.0);
        let Some(Inode {
            body: Body::Dir { cur, parent, .. },
            ..
        }) = st.inodes.get(&ino.0)
        else {
            return reply.error(Errno::ENOTDIR);
        };
        let dots = [(ino.0, OsStr::new(".")), (*parent, OsStr::new(".."))];
        let all = dots.into_iter().chain(cur.iter().map(|(n, &i)| (i, n.as_os_str())));
        // An entry's offset is the index of the one after it: where the next call resumes.
        for (i, (child, name)) in all.enumerate().skip(offset as usize) {
            let kind = if st.is_dir(child) {
                FileType::Directory
            } else {
                FileType::RegularFile
            };
            if reply.add(INodeNo(child), i as u64 + 1, kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn statfs(&self, _: &Request, _: INodeNo, reply: ReplyStatfs) {
        // 1 TiB free in 4 KiB blocks: space is never what a power-cut test is about.
        reply.statfs(1 << 28, 1 << 28, 1 << 28, 1 << 24, 1 << 24, 4096, 255, 4096);
    }

    fn access(&self, _: &Request, _: INodeNo, _: AccessFlags, reply: ReplyEmpty) {
        reply.ok();
    }

    fn fallocate(&self, _: &Request, ino: INodeNo, _: FileHandle, offset: u64, len: u64, mode: i32, reply: ReplyEmpty) {
        let mut st = lock(&self.0);
        let r = st.file(ino.0).and_then(|cur| {
            let (start, end) = (offset as usize, (offset + len) as usize);
            if mode & !(FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE | FALLOC_FL_ZERO_RANGE) != 0 {
                return Err(Errno::EOPNOTSUPP);
            }
            if mode & (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_ZERO_RANGE) != 0 {
                let stop = end.min(cur.len());
                if let Some(range) = cur.get_mut(start..stop) {
                    range.fill(0);
                }
            }
            if mode & FALLOC_FL_KEEP_SIZE == 0 && cur.len() < end {
                cur.resize(end, 0);
            }
            Ok(())
        });
        let r = r.and_then(|()| st.sync_if_flagged(ino.0));
        empty(reply, r);
    }

    /// `FS_IOC_GETFLAGS`/`SETFLAGS` (and the `FSGETXATTR` the kernel asks first), for
    /// `FS_SYNC_FL` only.
    #[allow(clippy::too_many_arguments)]
    fn ioctl(
        &self,
        _: &Request,
        ino: INodeNo,
        _: FileHandle,
        _: IoctlFlags,
        cmd: u32,
        in_data: &[u8],
        _: u32,
        reply: ReplyIoctl,
    ) {
        let mut st = lock(&self.0);
        let node = match st.node(ino.0) {
            Ok(node) => node,
            Err(e) => return reply.error(e),
        };
        match cmd {
            FS_IOC_GETFLAGS => {
                let flags = if node.sync { FS_SYNC_FL } else { 0 };
                reply.ioctl(0, &flags.to_ne_bytes());
            }
            FS_IOC_FSGETXATTR => {
                let mut attr = [0u8; FSXATTR_BYTES];
                let xflags = if node.sync { FS_XFLAG_SYNC } else { 0 };
                attr[..4].copy_from_slice(&xflags.to_ne_bytes());
                reply.ioctl(0, &attr);
            }
            FS_IOC_SETFLAGS => {
                let Some(flags) = in_data.get(..4).map(|b| u32::from_ne_bytes(b.try_into().unwrap())) else {
                    return reply.error(Errno::EINVAL);
                };
                if flags & !FS_SYNC_FL != 0 {
                    return reply.error(Errno::EOPNOTSUPP);
                }
                node.sync = flags & FS_SYNC_FL != 0;
                reply.ioctl(0, &[]);
            }
            _ => reply.error(Errno::ENOTTY),
        }
    }
}

/// A mounted power-cut filesystem; dropping it unmounts.
pub struct PowerCutFs {
    state: Arc<Mutex<State>>,
    session: Option<BackgroundSession>,
    mountpoint: PathBuf,
}

impl PowerCutFs {
    /// Mounts a new empty filesystem at `mountpoint` (an existing empty dir) in a background session.
    pub fn mount(mountpoint: &Path) -> io::Result<PowerCutFs> {
        let mountpoint = mountpoint.canonicalize()?; // as /proc/self/mountinfo will name it
        let state = Arc::new(Mutex::new(State::new()));
        let mut config = Config::default();
        config.mount_options = vec![
            MountOption::FSName("powercut".into()),
            MountOption::Subtype("powercut".into()),
        ];
        // allow_other: child processes of any user may use it.
        config.acl = SessionACL::All;
        // Returns once the kernel's INIT is answered: the mount is usable.
        let session = fuser::spawn_mount(Fs(state.clone()), &mountpoint, &config)?;
        Ok(PowerCutFs {
            state,
            session: Some(session),
            mountpoint,
        })
    }

    /// Power cut: every file's data reverts to what it held at its last fsync/fdatasync (a
    /// file never synced is empty), every directory's entries revert to those at its last
    /// fsyncdir (an entry never made durable disappears, with its subtree); inodes no longer
    /// reachable are dropped. Call only after every process using the mount is dead.
    pub fn cut_power(&self) {
        lock(&self.state).cut(Cut::Synced);
    }

    /// A power cut in the middle of writes: as [`PowerCutFs::cut_power`], except that a
    /// file appended to since its last sync (past its end, or over zeros written ahead)
    /// keeps the first half of the unsynced bytes. Returns how many files it tore.
    pub fn cut_power_tearing(&self) -> usize {
        lock(&self.state).cut(Cut::Torn)
    }

    /// A power cut after the OS wrote back every file and directory, except those in
    /// directories named `dir` (and those directories): they keep only what was synced.
    /// The worst order for a store that writes such files at once and a record naming them
    /// later, relying on the record never outliving the file.
    pub fn cut_power_after_writeback_except(&self, dir: &'static str) {
        lock(&self.state).cut(Cut::WritebackExcept(dir));
    }

    /// Counters: (fsync calls on files, fsyncdir calls, bytes written).
    pub fn stats(&self) -> (u64, u64, u64) {
        let st = lock(&self.state);
        (st.fsyncs, st.fsyncdirs, st.written)
    }
}

impl Drop for PowerCutFs {
    fn drop(&mut self) {
        drop(self.session.take()); // umount(2); fails if the mount is still busy
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let target = self.mountpoint.to_string_lossy();
        if mountinfo.lines().any(|l| l.split(' ').nth(4) == Some(&*target)) {
            // Busy: detach it lazily rather than leave a dead mount behind.
            let _ = Command::new("fusermount3").arg("-uz").arg(&self.mountpoint).status();
        }
    }
}

#[test]
fn power_cut_keeps_only_synced_data() {
    use std::fs::{self, File, OpenOptions};
    use std::io::Write;

    let dir = tempfile::tempdir().unwrap();
    let fs = PowerCutFs::mount(dir.path()).unwrap();
    let root = dir.path();
    let sync_dir = |p: &Path| File::open(p).unwrap().sync_all().unwrap();

    fs::create_dir(root.join("d")).unwrap();
    sync_dir(root);
    let mut a = File::create(root.join("d/a")).unwrap();
    a.write_all(b"synced").unwrap();
    a.sync_all().unwrap();
    sync_dir(&root.join("d"));
    a.write_all(b" lost").unwrap(); // never synced
    drop(a);
    OpenOptions::new()
        .append(true)
        .open(root.join("d/a"))
        .unwrap()
        .write_all(b" too")
        .unwrap();
    fs::write(root.join("d/b"), b"never durable").unwrap();
    File::open(root.join("d/b")).unwrap().sync_all().unwrap(); // data synced, entry not
    fs::create_dir_all(root.join("e/sub")).unwrap(); // e itself never fsynced in root
    File::open(root.join("e")).unwrap().sync_all().unwrap(); // e knows sub, root not e
    fs::create_dir(root.join("d/sub")).unwrap(); // d not fsynced after
    assert_eq!(fs::read(root.join("d/a")).unwrap(), b"synced lost too");

    let (fsyncs, fsyncdirs, written) = fs.stats();
    assert!(fsyncs >= 2 && fsyncdirs >= 3 && written >= 23, "{:?}", fs.stats());

    fs.cut_power();
    assert_eq!(fs::read(root.join("d/a")).unwrap(), b"synced");
    assert_eq!(fs::metadata(root.join("d/a")).unwrap().len(), 6);
    assert!(!root.join("d/b").exists());
    assert!(!root.join("d/sub").exists());
    assert!(!root.join("e").exists());
    let mut names: Vec<_> = fs::read_dir(root.join("d"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    names.sort();
    assert_eq!(names, ["a"]);

    // The survivors still work: write past the end, truncate, rename over, sync again.
    let a = OpenOptions::new().write(true).open(root.join("d/a")).unwrap();
    a.set_len(3).unwrap();
    std::os::unix::fs::FileExt::write_at(&a, b"!", 5).unwrap();
    a.sync_data().unwrap();
    drop(a);
    fs::write(root.join("d/c"), b"new").unwrap();
    fs::rename(root.join("d/c"), root.join("d/a")).unwrap(); // not durable: d not synced
    fs.cut_power();
    assert_eq!(fs::read(root.join("d/a")).unwrap(), b"syn\0\0!");
    assert!(!root.join("d/c").exists());
    drop(fs);
}

#[test]
fn synchronous_blob_dirs_survive_a_cut_that_spares_only_synced_blobs() {
    use midasflow::raft::log_store::make_blob_writes_synchronous;
    use std::fs::{self, File};
    use std::io::Write;

    let dir = tempfile::tempdir().unwrap();
    let fs = PowerCutFs::mount(dir.path()).unwrap();
    let root = dir.path();
    make_blob_writes_synchronous(&root.join("db")).expect("the flag is set and inherited");
    fs::create_dir_all(root.join("old/blobs")).unwrap(); // no flag: as before the change
    assert!(
        !root.join("db/blobs/.sync-probe").exists(),
        "the inheritance probe is removed"
    );
    for blobs in ["db/blobs", "old/blobs"] {
        let mut blob = File::create(root.join(blobs).join("17")).unwrap();
        blob.write_all(b"crc").unwrap();
        blob.write_all(b"large page").unwrap();
    }
    fs::write(root.join("db/db"), b"a record naming blob 17").unwrap(); // never synced

    fs.cut_power_after_writeback_except("blobs");
    assert_eq!(fs::read(root.join("db/db")).unwrap(), b"a record naming blob 17");
    assert_eq!(fs::read(root.join("db/blobs/17")).unwrap(), b"crclarge page");
    assert!(!root.join("old/blobs/17").exists(), "an unsynced blob is lost");
    let (fsyncs, _, _) = fs.stats();
    assert_eq!(fsyncs, 0, "durable by the flag alone");

    // A blob removed from a flagged directory stays removed; one in the other does not.
    fs::remove_file(root.join("db/blobs/17")).unwrap();
    File::create(root.join("old/blobs/18")).unwrap().sync_all().unwrap();
    File::open(root.join("old/blobs")).unwrap().sync_all().unwrap();
    fs::remove_file(root.join("old/blobs/18")).unwrap();
    fs.cut_power_after_writeback_except("blobs");
    assert!(!root.join("db/blobs/17").exists());
    assert!(root.join("old/blobs/18").exists(), "its removal was never synced");
    drop(fs);
}
