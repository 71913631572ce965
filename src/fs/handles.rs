//! Opens, reads and releases, for each read path. Under the page cache the
//! daemon answers opens only (reads come from the kernel's cache); under direct
//! I/O every read reaches it, and each open file reads the content pinned for it
//! here, so that one descriptor never mixes two tokens.
//!
//! The page-cache path never touches the handle table: its opens carry handle 0,
//! so an open, a read or a release there takes no lock and allocates nothing.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Mutex;
use std::time::SystemTime;

use super::{Answer, Content, Files, Node, View};
use crate::cell::Token;
use crate::sync::lock;

/// How reads are served, as asked for; the kernel may grant less.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadPath {
    /// Every open reaches the daemon (one round trip), reads come from the
    /// kernel's page cache.
    PageCache,
    /// Neither opens nor warm reads reach the daemon (`FUSE_NO_OPEN_SUPPORT`).
    KernelOpens,
    /// Every read reaches the daemon.
    DirectIo,
}

impl ReadPath {
    fn from_u8(v: u8) -> ReadPath {
        match v {
            1 => ReadPath::PageCache,
            2 => ReadPath::KernelOpens,
            _ => ReadPath::DirectIo,
        }
    }

    fn as_u8(self) -> u8 {
        match self {
            ReadPath::DirectIo => 0,
            ReadPath::PageCache => 1,
            ReadPath::KernelOpens => 2,
        }
    }
}

/// What an open gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opened {
    /// Served from the kernel's page cache, kept across opens (no handle);
    /// freshness comes from the attribute TTLs and invalidations.
    Cached,
    /// Direct I/O: every read of this handle reaches the daemon and returns the
    /// content pinned for it.
    Direct(u64),
    /// The name now resolves to another inode (a token arrived): `ESTALE`, so
    /// that the kernel repeats the lookup.
    Stale,
}

/// What a read returns: a range of content held by reference, so that
/// answering copies the bytes once, into the reply.
pub struct Slice {
    content: Content,
    offset: u64,
    size: u32,
}

impl Slice {
    pub fn bytes(&self) -> &[u8] {
        self.content.slice(self.offset, self.size)
    }
}

/// The granted read path and, under direct I/O, each open file's content.
#[derive(Default)]
pub(super) struct Handles {
    /// A [`ReadPath`]; until the kernel's `init` it is direct I/O, which assumes
    /// nothing of the kernel.
    path: AtomicU8,
    pinned: Mutex<HashMap<u64, Content>>,
    last: AtomicU64,
}

impl Files {
    /// Serve opens and reads as `path`: what the kernel granted at `init`.
    pub fn serve(&self, path: ReadPath) {
        self.handles.path.store(path.as_u8(), Ordering::Relaxed);
    }

    pub fn read_path(&self) -> ReadPath {
        ReadPath::from_u8(self.handles.path.load(Ordering::Relaxed))
    }

    /// How an open of `ino` is served. Opening the pending stand-in is the first
    /// step of a read, so it waits for a token (and its errors are the read's);
    /// under direct I/O an open pins the content its reads return, so it waits
    /// as a read would; nothing else waits at open.
    pub fn open(&self, ino: u64) -> Answer<Opened> {
        let path = self.read_path();
        if path == ReadPath::KernelOpens {
            // ENOSYS under FUSE_NO_OPEN_SUPPORT: the kernel stops sending opens
            // and keeps the page cache across them.
            return Answer::Err(libc::ENOSYS);
        }
        match self.node(ino) {
            None => Answer::Err(libc::ENOENT),
            Some(Node::Root) => Answer::Err(libc::EISDIR),
            Some(Node::Pending(file)) => match file.cell.peek() {
                Some(_) => Answer::Ready(Opened::Stale),
                None => Answer::MustWait,
            },
            Some(_) if path == ReadPath::PageCache => Answer::Ready(Opened::Cached),
            Some(_) => match self.read_now(ino) {
                Answer::Ready(view) => self.pin(view).into(),
                Answer::MustWait => Answer::MustWait,
                Answer::Err(errno) => Answer::Err(errno),
            },
        }
    }

    /// [`Files::open`] once `ino` has a token.
    pub async fn open_wait(&self, ino: u64) -> Result<Opened, i32> {
        let view = self.wait(ino).await?;
        match self.node(ino) {
            Some(Node::Pending(_)) => Ok(Opened::Stale),
            _ => self.pin(view),
        }
    }

    fn pin(&self, view: View) -> Result<Opened, i32> {
        let Some(content) = view.content else {
            return Err(libc::EISDIR);
        };
        let fh = self.handles.last.fetch_add(1, Ordering::Relaxed) + 1;
        lock(&self.handles.pinned).insert(fh, content);
        Ok(Opened::Direct(fh))
    }

    /// A read of `[offset, offset + size)` of `ino` through handle `fh` (0: none,
    /// as the page cache's reads). A pinned token past its deadline is not
    /// served: a read from offset 0 starts over with the current token, one
    /// further on fails with `EIO`, since its first part came from the old
    /// token and mixing the two would tear it.
    pub fn read(&self, ino: u64, fh: u64, offset: u64, size: u32) -> Answer<Slice> {
        if fh != 0 {
            let pinned = lock(&self.handles.pinned).get(&fh).cloned();
            let stale = |t: &Token| !t.servable(self.token_clock(ino));
            match pinned {
                Some(Content::Token(t)) if stale(&t) && offset > 0 => {
                    return Answer::Err(libc::EIO);
                }
                // Offset 0 of a stale pin: start over with the current view.
                Some(Content::Token(t)) if stale(&t) => {}
                Some(content) => {
                    self.note_read(ino);
                    return Answer::Ready(Slice {
                        content,
                        offset,
                        size,
                    });
                }
                None => {}
            }
        }
        match self.read_now(ino) {
            Answer::Ready(view) => self.read_from(ino, fh, view, offset, size).into(),
            Answer::MustWait => Answer::MustWait,
            Answer::Err(errno) => Answer::Err(errno),
        }
    }

    /// [`Files::read`] once `ino` has a token.
    pub async fn read_wait(&self, ino: u64, fh: u64, offset: u64, size: u32) -> Result<Slice, i32> {
        let view = self.wait(ino).await?;
        self.read_from(ino, fh, view, offset, size)
    }

    /// Answer a read from `view`, which `fh` reads from now on.
    fn read_from(
        &self,
        ino: u64,
        fh: u64,
        view: View,
        offset: u64,
        size: u32,
    ) -> Result<Slice, i32> {
        let Some(content) = view.content else {
            return Err(libc::EISDIR);
        };
        self.note_read(ino);
        if fh != 0 {
            if let Some(pin) = lock(&self.handles.pinned).get_mut(&fh) {
                *pin = content.clone();
            }
        }
        Ok(Slice {
            content,
            offset,
            size,
        })
    }

    /// The handle is closed: its pin goes.
    pub fn release(&self, fh: u64) {
        if fh != 0 {
            lock(&self.handles.pinned).remove(&fh);
        }
    }

    /// The clock the cell of `ino` judges its tokens by.
    fn token_clock(&self, ino: u64) -> SystemTime {
        match self.node(ino) {
            Some(Node::Token(file)) => file.cell.now(),
            _ => self.clock.now(),
        }
    }

    #[cfg(test)]
    pub(super) fn pinned_handles(&self) -> usize {
        lock(&self.handles.pinned).len()
    }
}

impl<T> From<Result<T, i32>> for Answer<T> {
    fn from(r: Result<T, i32>) -> Answer<T> {
        match r {
            Ok(v) => Answer::Ready(v),
            Err(errno) => Answer::Err(errno),
        }
    }
}
