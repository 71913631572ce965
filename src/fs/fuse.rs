//! The thin `fuser::Filesystem` adapter over [`Files`]: translate requests,
//! answer at once when [`Files`] can, else answer from a tokio task once the
//! cell has a token (replies are `Send`).

use std::ffi::OsStr;
use std::future::Future;
use std::sync::Arc;
use std::time::SystemTime;

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, InitFlags,
    KernelConfig, LockOwner, Notifier, OpenFlags, ReplyAttr, ReplyData, ReplyDirectory, ReplyEmpty,
    ReplyEntry, ReplyOpen, Request,
};

pub use super::ReadPath;
use super::{Answer, Attr, Files, Kind, Opened, ROOT_INO};

/// The mounted filesystem.
pub struct TokenFs {
    files: Arc<Files>,
    rt: tokio::runtime::Handle,
    asked: ReadPath,
}

impl TokenFs {
    pub fn new(files: Arc<Files>, rt: tokio::runtime::Handle, asked: ReadPath) -> TokenFs {
        TokenFs { files, rt, asked }
    }

    /// Answer `reply` with what `now` gives, on this thread when it is ready,
    /// else with what `wait` gives, from a tokio task: only a wait for the
    /// upstream leaves the FUSE thread. A panic in `now` (a bug) answers `EIO`
    /// and is logged: it must not take the FUSE thread, and with it the whole
    /// mount, down.
    fn answer<T, W, Fut>(
        &self,
        ino: u64,
        now: impl FnOnce(&Files) -> Answer<T>,
        wait: W,
        reply: impl FnOnce(Result<T, i32>) + Send + 'static,
    ) where
        W: FnOnce(Arc<Files>) -> Fut,
        Fut: Future<Output = Result<T, i32>> + Send + 'static,
    {
        let answer = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| now(&self.files)))
            .unwrap_or_else(|panic| {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                tracing::error!(ino, panic = %what, "a bug: answering EIO");
                Answer::Err(libc::EIO)
            });
        match answer {
            Answer::Ready(v) => reply(Ok(v)),
            Answer::Err(errno) => reply(Err(errno)),
            Answer::MustWait => {
                let waiting = wait(self.files.clone());
                self.rt.spawn(async move { reply(waiting.await) });
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
        // Without auto-inval-data a cached page could outlive its token, so the
        // page cache needs it. By default opens reach the daemon: a file without
        // a token is shown as an empty stand-in, and only an open can move a
        // reader from it to the token file.
        let auto_inval = InitFlags::FUSE_AUTO_INVAL_DATA;
        let granted = match self.asked {
            ReadPath::PageCache if config.add_capabilities(auto_inval).is_ok() => {
                ReadPath::PageCache
            }
            ReadPath::KernelOpens
                if config
                    .add_capabilities(InitFlags::FUSE_NO_OPEN_SUPPORT | auto_inval)
                    .is_ok() =>
            {
                ReadPath::KernelOpens
            }
            _ => ReadPath::DirectIo,
        };
        self.files.serve(granted);
        match (granted, self.asked) {
            (ReadPath::KernelOpens, _) => tracing::info!("read path: kernel page cache, opens in the kernel (--kernel-opens; TTL bounded by token deadlines)"),
            (ReadPath::PageCache, _) => tracing::info!("read path: kernel page cache (auto-inval-data, TTL bounded by token deadlines), opens answered by the daemon"),
            (ReadPath::DirectIo, ReadPath::DirectIo) => tracing::info!("read path: direct I/O (--direct-io); every read reaches the daemon"),
            (ReadPath::DirectIo, _) => tracing::warn!("read path: direct I/O (kernel lacks FUSE_AUTO_INVAL_DATA or FUSE_NO_OPEN_SUPPORT); every read reaches the daemon"),
        }
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let Some(ino) = self.files.lookup(parent.0, name) else {
            return reply.error(Errno::ENOENT);
        };
        self.answer(
            ino,
            |f| f.attr_now(ino),
            move |f| async move { f.wait(ino).await },
            move |view| match view {
                Ok(v) => reply.entry_with_ttls(&v.ttl, &v.ttl, &file_attr(&v.attr), Generation(0)),
                Err(errno) => reply.error(Errno::from_i32(errno)),
            },
        );
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let ino = ino.0;
        self.answer(
            ino,
            |f| f.attr_now(ino),
            move |f| async move { f.wait(ino).await },
            move |view| match view {
                Ok(v) => reply.attr(&v.ttl, &file_attr(&v.attr)),
                Err(errno) => reply.error(Errno::from_i32(errno)),
            },
        );
    }

    fn open(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let ino = ino.0;
        self.answer(
            ino,
            |f| f.open(ino),
            move |f| async move { f.open_wait(ino).await },
            move |opened| match opened {
                Ok(Opened::Cached) => reply.opened(FileHandle(0), FopenFlags::FOPEN_KEEP_CACHE),
                Ok(Opened::Direct(fh)) => reply.opened(FileHandle(fh), FopenFlags::FOPEN_DIRECT_IO),
                Ok(Opened::Stale) => reply.error(Errno::ESTALE),
                Err(errno) => reply.error(Errno::from_i32(errno)),
            },
        );
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.files.release(fh.0);
        reply.ok();
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let (ino, fh) = (ino.0, fh.0);
        self.answer(
            ino,
            |f| f.read(ino, fh, offset, size),
            move |f| async move { f.read_wait(ino, fh, offset, size).await },
            move |read| match read {
                Ok(slice) => reply.data(slice.bytes()),
                Err(errno) => reply.error(Errno::from_i32(errno)),
            },
        );
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
        let files = files.clone();
        tasks.spawn(async move {
            let mut seen = cell.generation();
            while finished.changed().await.is_ok() {
                let generation = cell.generation();
                if generation == seen {
                    continue;
                }
                seen = generation;
                if !files.kernel_may_cache_older(ino, generation) {
                    files.note_kernel_uncached(ino);
                    continue;
                }
                // inval_inode writes to /dev/fuse and may block on the kernel; keep it
                // off the async workers.
                let notifier = notifier.clone();
                let result =
                    tokio::task::spawn_blocking(move || notifier.inval_inode(INodeNo(ino), 0, 0))
                        .await;
                match result {
                    Ok(Ok(())) => files.note_kernel_uncached(ino),
                    // ENOENT: the kernel holds no cache for the inode, nothing to drop.
                    Ok(Err(e)) if e.raw_os_error() == Some(libc::ENOENT) => {
                        files.note_kernel_uncached(ino)
                    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_while_looking_answers_eio_and_the_next_request_is_served() {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let (files, _, _) = crate::fs::tests::files();
        let fs = TokenFs::new(files, rt.handle().clone(), ReadPath::PageCache);
        let (tx, rx) = std::sync::mpsc::channel();
        let answer = {
            let tx = tx.clone();
            move |view: Result<super::super::View, i32>| tx.send(view.err()).unwrap()
        };
        let wait = |f: Arc<Files>| async move { f.wait(ROOT_INO).await };
        fs.answer(ROOT_INO, |_| panic!("a bug"), wait, answer);
        assert_eq!(rx.recv().unwrap(), Some(libc::EIO));
        fs.answer(
            ROOT_INO,
            |f| f.attr_now(ROOT_INO),
            wait,
            move |v| tx.send(v.err()).unwrap(),
        );
        assert_eq!(rx.recv().unwrap(), None);
    }
}
