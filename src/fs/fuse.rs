//! The thin `fuser::Filesystem` adapter over [`Files`]: translate requests,
//! answer from the fast path when a token is ready, else answer from a tokio
//! task once the cell has one (replies are `Send`).

use std::ffi::OsStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, InitFlags,
    KernelConfig, LockOwner, Notifier, OpenFlags, ReplyAttr, ReplyData, ReplyDirectory, ReplyEmpty,
    ReplyEntry, ReplyOpen, Request,
};

use super::{Attr, Files, Kind, Now, View, ROOT_INO};

/// The mounted filesystem.
pub struct TokenFs {
    files: Arc<Files>,
    rt: tokio::runtime::Handle,
    /// Whether the kernel serves opens and warm reads itself (design.md §4).
    fast_path: AtomicBool,
}

impl TokenFs {
    pub fn new(files: Arc<Files>, rt: tokio::runtime::Handle) -> TokenFs {
        TokenFs {
            files,
            rt,
            fast_path: AtomicBool::new(false),
        }
    }

    /// Answer `reply` with a view of `ino`: now if ready, else once the cell has a token.
    fn with_view<F>(&self, now: Now, ino: u64, answer: F)
    where
        F: FnOnce(Result<View, i32>) + Send + 'static,
    {
        match now {
            Now::Ready(view) => answer(Ok(view)),
            Now::Err(errno) => answer(Err(errno)),
            Now::MustWait => {
                let files = self.files.clone();
                self.rt.spawn(async move { answer(files.wait(ino).await) });
            }
        }
    }
}

fn file_attr(a: &Attr) -> FileAttr {
    FileAttr {
        ino: INodeNo(a.ino),
        size: a.size,
        blocks: a.size.div_ceil(512),
        atime: a.mtime,
        mtime: a.mtime,
        ctime: a.mtime,
        crtime: a.mtime,
        kind: match a.kind {
            Kind::Dir => FileType::Directory,
            Kind::File => FileType::RegularFile,
        },
        perm: a.perm,
        nlink: if a.kind == Kind::Dir { 2 } else { 1 },
        uid: a.owner.uid,
        gid: a.owner.gid,
        rdev: 0,
        blksize: 4096,
        flags: 0,
    }
}

impl Filesystem for TokenFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // Both or neither: without auto-inval-data a cached page could outlive its token.
        let wanted = InitFlags::FUSE_NO_OPEN_SUPPORT | InitFlags::FUSE_AUTO_INVAL_DATA;
        let fast = config.add_capabilities(wanted).is_ok();
        self.fast_path.store(fast, Ordering::SeqCst);
        if fast {
            tracing::info!("read path: kernel page cache (no-open, auto-inval-data, TTL bounded by token deadlines)");
        } else {
            tracing::warn!("read path: direct I/O (kernel lacks FUSE_NO_OPEN_SUPPORT or FUSE_AUTO_INVAL_DATA); every read reaches the daemon");
        }
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let Some(ino) = self.files.lookup(parent.0, name) else {
            return reply.error(Errno::ENOENT);
        };
        self.with_view(self.files.attr_now(ino), ino, move |view| match view {
            Ok(v) => reply.entry_with_ttls(&v.ttl, &v.ttl, &file_attr(&v.attr), Generation(0)),
            Err(errno) => reply.error(Errno::from_i32(errno)),
        });
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        self.with_view(self.files.attr_now(ino.0), ino.0, move |view| match view {
            Ok(v) => reply.attr(&v.ttl, &file_attr(&v.attr)),
            Err(errno) => reply.error(Errno::from_i32(errno)),
        });
    }

    fn open(&self, _req: &Request, _ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        if self.fast_path.load(Ordering::Relaxed) {
            // ENOSYS under FUSE_NO_OPEN_SUPPORT: the kernel stops sending opens and
            // keeps the page cache across them.
            reply.error(Errno::ENOSYS);
        } else {
            reply.opened(FileHandle(0), FopenFlags::FOPEN_DIRECT_IO);
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        self.with_view(self.files.read_now(ino.0), ino.0, move |view| match view {
            Ok(View {
                content: Some(content),
                ..
            }) => reply.data(content.slice(offset, size)),
            Ok(_) => reply.error(Errno::EISDIR),
            Err(errno) => reply.error(Errno::from_i32(errno)),
        });
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        if ino.0 != ROOT_INO {
            return reply.error(Errno::ENOTDIR);
        }
        let entries = [
            (ROOT_INO, FileType::Directory, ".".to_owned()),
            (ROOT_INO, FileType::Directory, "..".to_owned()),
        ]
        .into_iter()
        .chain(
            self.files
                .entries()
                .into_iter()
                .map(|(i, n)| (i, FileType::RegularFile, n)),
        );
        for (index, (ino, kind, name)) in entries.enumerate().skip(offset as usize) {
            if reply.add(INodeNo(ino), index as u64 + 1, kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn setattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        _size: Option<u64>,
        _atime: Option<fuser::TimeOrNow>,
        _mtime: Option<fuser::TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        // The mount is read-only, so the kernel refuses first; this is the backstop.
        reply.error(Errno::EROFS);
    }

    fn unlink(&self, _req: &Request, _parent: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::EROFS);
    }

    // ENOSYS tells the kernel to stop sending these (nothing to flush, no xattrs),
    // without the default implementation's warning on every close.
    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lo: LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::ENOSYS);
    }

    fn getxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _size: u32,
        reply: fuser::ReplyXattr,
    ) {
        reply.error(Errno::ENOSYS);
    }

    fn listxattr(&self, _req: &Request, _ino: INodeNo, _size: u32, reply: fuser::ReplyXattr) {
        reply.error(Errno::ENOSYS);
    }

    // Python's open() asks isatty (TCGETS) on every file, and the kernel forwards
    // every ioctl to the daemon (it does not remember ENOSYS for ioctls): answer
    // "not a tty" at once and without the default implementation's warning.
    #[allow(clippy::too_many_arguments)]
    fn ioctl(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: fuser::IoctlFlags,
        _cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: fuser::ReplyIoctl,
    ) {
        reply.error(Errno::ENOTTY);
    }
}

/// Tell the kernel to drop a file's cached pages and attributes whenever its cell
/// obtains a new token, so the next access sees it. Runs until the runtime stops.
pub async fn invalidate_on_change(files: Arc<Files>, notifier: Notifier) {
    let mut tasks = tokio::task::JoinSet::new();
    for (ino, cell) in files.cells() {
        let mut finished = cell.subscribe();
        let cell = cell.clone();
        let notifier = notifier.clone();
        tasks.spawn(async move {
            let mut seen = cell.generation();
            while finished.changed().await.is_ok() {
                let generation = cell.generation();
                if generation == seen {
                    continue;
                }
                seen = generation;
                // inval_inode writes to /dev/fuse and may block on the kernel; keep it
                // off the async workers.
                let notifier = notifier.clone();
                let result =
                    tokio::task::spawn_blocking(move || notifier.inval_inode(INodeNo(ino), 0, 0))
                        .await;
                match result {
                    Ok(Ok(())) => {}
                    // ENOENT: the kernel holds no cache for the inode, nothing to drop.
                    Ok(Err(e)) if e.raw_os_error() == Some(libc::ENOENT) => {}
                    Ok(Err(e)) => {
                        tracing::warn!(file = cell.name(), "cache invalidation failed: {e}")
                    }
                    Err(e) => {
                        tracing::warn!(file = cell.name(), "cache invalidation task failed: {e}")
                    }
                }
            }
        });
    }
    while tasks.join_next().await.is_some() {}
}
