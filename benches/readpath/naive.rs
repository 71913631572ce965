//! The textbook dynamic-file FUSE design, for comparison: every `open` answers
//! `FOPEN_DIRECT_IO`, so every open, read and release reaches the daemon.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

use fuser::{
    BackgroundSession, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation,
    INodeNo, LockOwner, MountOption, OpenFlags, ReplyAttr, ReplyData, ReplyEntry, ReplyOpen,
    Request, Session, SessionACL,
};

/// Entry/attribute TTL, as in fuser's `hello` example: lookups are cached for a
/// second, so what is measured is open/read/release going to the daemon.
const TTL: Duration = Duration::from_secs(1);
const FILE_INO: u64 = 2;
pub const FILE_NAME: &str = "token";

struct NaiveFs {
    content: Vec<u8>,
}

fn attr(ino: u64, kind: FileType, size: u64, perm: u16) -> FileAttr {
    FileAttr {
        ino: INodeNo(ino),
        size,
        blocks: size.div_ceil(512),
        atime: UNIX_EPOCH,
        mtime: UNIX_EPOCH,
        ctime: UNIX_EPOCH,
        crtime: UNIX_EPOCH,
        kind,
        perm,
        nlink: if kind == FileType::Directory { 2 } else { 1 },
        uid: 0,
        gid: 0,
        rdev: 0,
        flags: 0,
        blksize: 512,
    }
}

impl NaiveFs {
    fn file_attr(&self) -> FileAttr {
        attr(
            FILE_INO,
            FileType::RegularFile,
            self.content.len() as u64,
            0o444,
        )
    }
}

impl Filesystem for NaiveFs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        if parent == INodeNo::ROOT && name == FILE_NAME {
            reply.entry(&TTL, &self.file_attr(), Generation(0));
        } else {
            reply.error(Errno::ENOENT);
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match u64::from(ino) {
            1 => reply.attr(&TTL, &attr(1, FileType::Directory, 0, 0o555)),
            FILE_INO => reply.attr(&TTL, &self.file_attr()),
            _ => reply.error(Errno::ENOENT),
        }
    }

    fn open(&self, _req: &Request, _ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        reply.opened(FileHandle(0), FopenFlags::FOPEN_DIRECT_IO);
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
        if u64::from(ino) != FILE_INO {
            return reply.error(Errno::ENOENT);
        }
        let len = self.content.len();
        let start = usize::try_from(offset).unwrap_or(len).min(len);
        let end = start.saturating_add(size as usize).min(len);
        reply.data(&self.content[start..end]);
    }
}

/// The naive filesystem mounted on a temp dir; unmounted (and its threads joined)
/// on drop.
pub struct NaiveMount {
    session: Option<BackgroundSession>,
    dir: tempfile::TempDir,
}

impl NaiveMount {
    pub fn start(content: &[u8]) -> NaiveMount {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut config = fuser::Config::default();
        config.mount_options = vec![MountOption::RO, MountOption::DefaultPermissions];
        config.acl = SessionACL::All;
        config.n_threads = Some(2);
        let fs = NaiveFs {
            content: content.to_vec(),
        };
        let session = Session::new(fs, dir.path(), &config)
            .and_then(Session::spawn)
            .unwrap_or_else(|e| panic!("naive FUSE mount failed: {e}"));
        NaiveMount {
            session: Some(session),
            dir,
        }
    }

    pub fn file(&self) -> PathBuf {
        self.dir.path().join(FILE_NAME)
    }

    fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for NaiveMount {
    fn drop(&mut self) {
        if let Some(session) = self.session.take() {
            if let Err(e) = session.umount_and_join() {
                eprintln!("naive FUSE: unmount failed ({e}); detaching");
            }
        }
        if crate::sys::is_mounted(self.dir()) {
            crate::sys::detach(self.dir());
        }
    }
}
