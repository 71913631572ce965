//! The filesystem's logic, without FUSE: inode table, attributes, what a read
//! returns and how long the kernel may cache it. [`fuse`] is the thin adapter.
//!
//! The kernel caches each file's pages and attributes (design.md §4), so the
//! daemon only sees a file when its TTL ran out or it was invalidated. To keep
//! every read consistent with the size the kernel last saw, each file remembers
//! the content it last *announced* in an attribute reply, and reads serve exactly
//! that content while it is still servable.

pub mod fuse;

use std::ffi::OsStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use crate::cell::{Cell, CellError, Token};

pub const ROOT_INO: u64 = 1;
pub const STATUS_INO: u64 = 2;
const FIRST_TOKEN_INO: u64 = 3;
pub const STATUS_NAME: &str = ".status";

/// Who owns the mount's files; only they (and root) may read them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner {
    pub uid: u32,
    pub gid: u32,
}

#[derive(Debug, Clone)]
pub struct Options {
    pub owner: Owner,
    /// How long a read waits for the upstream before failing with `ETIMEDOUT`.
    pub read_timeout: Duration,
    /// Longest attribute/entry TTL handed to the kernel, whatever the token's lifetime.
    pub ttl_cap: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Dir,
    File,
}

/// A file's attributes, as `stat` shows them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attr {
    pub ino: u64,
    pub kind: Kind,
    pub size: u64,
    pub mtime: SystemTime,
    pub perm: u16,
    pub owner: Owner,
}

/// Content the kernel was told about, shared by reference.
#[derive(Clone)]
pub enum Content {
    Token(Arc<Token>),
    Status(Arc<StatusDoc>),
}

pub struct StatusDoc {
    bytes: Vec<u8>,
    rendered_at: SystemTime,
}

impl Content {
    pub fn bytes(&self) -> &[u8] {
        match self {
            Content::Token(t) => t.bytes(),
            Content::Status(s) => &s.bytes,
        }
    }

    fn mtime(&self) -> SystemTime {
        match self {
            Content::Token(t) => t.obtained_at,
            Content::Status(s) => s.rendered_at,
        }
    }

    /// The bytes of `[offset, offset + size)`, clipped to the content.
    pub fn slice(&self, offset: u64, size: u32) -> &[u8] {
        let bytes = self.bytes();
        let start = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .min(bytes.len());
        let end = start.saturating_add(size as usize).min(bytes.len());
        &bytes[start..end]
    }
}

/// A file's current view: its content (if a file) and how long the kernel may cache it.
#[derive(Clone)]
pub struct View {
    pub attr: Attr,
    pub ttl: Duration,
    pub content: Option<Content>,
}

/// Outcome of asking for a view without waiting.
pub enum Now {
    Ready(View),
    /// The cell has no servable token: wait for it with [`Files::wait`].
    MustWait,
    Err(i32),
}

struct TokenFile {
    cell: Arc<Cell>,
    announced: Mutex<Option<Arc<Token>>>,
}

/// The mount's files.
pub struct Files {
    tokens: Vec<TokenFile>,
    status: Mutex<Arc<StatusDoc>>,
    opts: Options,
    started: SystemTime,
}

impl Files {
    pub fn new(cells: Vec<Arc<Cell>>, opts: Options) -> Arc<Files> {
        let started = SystemTime::now();
        Arc::new(Files {
            tokens: cells
                .into_iter()
                .map(|cell| TokenFile {
                    cell,
                    announced: Mutex::new(None),
                })
                .collect(),
            status: Mutex::new(Arc::new(StatusDoc {
                bytes: Vec::new(),
                rendered_at: started,
            })),
            opts,
            started,
        })
    }

    /// The inode of a name in the root directory.
    pub fn lookup(&self, parent: u64, name: &OsStr) -> Option<u64> {
        if parent != ROOT_INO {
            return None;
        }
        if name == STATUS_NAME {
            return Some(STATUS_INO);
        }
        self.tokens
            .iter()
            .position(|t| name == t.cell.name())
            .map(|i| FIRST_TOKEN_INO + i as u64)
    }

    /// Directory entries of the root, without `.` and `..`.
    pub fn entries(&self) -> impl Iterator<Item = (u64, &str)> {
        std::iter::once((STATUS_INO, STATUS_NAME)).chain(
            self.tokens
                .iter()
                .enumerate()
                .map(|(i, t)| (FIRST_TOKEN_INO + i as u64, t.cell.name())),
        )
    }

    /// Cells with their inodes, for invalidation.
    pub fn cells(&self) -> impl Iterator<Item = (u64, &Arc<Cell>)> {
        self.tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (FIRST_TOKEN_INO + i as u64, &t.cell))
    }

    fn token_file(&self, ino: u64) -> Option<&TokenFile> {
        let index = ino.checked_sub(FIRST_TOKEN_INO)?;
        self.tokens.get(usize::try_from(index).ok()?)
    }

    /// The view an attribute request (`lookup`, `getattr`) gets: for a token, the
    /// newest servable one, which becomes the announced content.
    pub fn attr_now(&self, ino: u64) -> Now {
        match ino {
            ROOT_INO => Now::Ready(self.root_view()),
            STATUS_INO => Now::Ready(self.status_view()),
            _ => match self.token_file(ino) {
                None => Now::Err(libc::ENOENT),
                Some(file) => match file.cell.peek() {
                    Some(token) => Now::Ready(self.announce(ino, file, token)),
                    None => Now::MustWait,
                },
            },
        }
    }

    /// The view a read gets: the announced content while it is servable, so that
    /// the bytes match the size the kernel holds; else the newest servable one.
    pub fn read_now(&self, ino: u64) -> Now {
        match ino {
            ROOT_INO => Now::Err(libc::EISDIR),
            STATUS_INO => {
                let doc = lock(&self.status).clone();
                if doc.bytes.is_empty() {
                    return Now::Ready(self.status_view());
                }
                Now::Ready(self.content_view(STATUS_INO, Content::Status(doc), Duration::ZERO))
            }
            _ => match self.token_file(ino) {
                None => Now::Err(libc::ENOENT),
                Some(file) => {
                    let now = file.cell.now();
                    let announced = lock(&file.announced).clone();
                    match announced.filter(|t| t.servable(now)) {
                        Some(token) => Now::Ready(self.token_view(ino, token, now)),
                        None => self.attr_now(ino),
                    }
                }
            },
        }
    }

    /// Wait (up to the read timeout) for the cell of `ino` to have a servable token.
    pub async fn wait(&self, ino: u64) -> Result<View, i32> {
        let file = self.token_file(ino).ok_or(libc::ENOENT)?;
        let timeout = self.opts.read_timeout;
        let token = match tokio::time::timeout(timeout, file.cell.get()).await {
            Ok(Ok(token)) => token,
            Ok(Err(error)) => return Err(error.errno()),
            Err(_) => {
                tracing::warn!(
                    file = file.cell.name(),
                    "read failed: {}",
                    CellError::ReadTimeout(timeout)
                );
                return Err(CellError::ReadTimeout(timeout).errno());
            }
        };
        Ok(self.announce(ino, file, token))
    }

    fn announce(&self, ino: u64, file: &TokenFile, token: Arc<Token>) -> View {
        *lock(&file.announced) = Some(token.clone());
        self.token_view(ino, token, file.cell.now())
    }

    fn token_view(&self, ino: u64, token: Arc<Token>, now: SystemTime) -> View {
        // The kernel may serve cached pages and attributes until the TTL ends, even
        // if this daemon dies: never let that reach past the token's deadline.
        let ttl = token.time_left(now).min(self.opts.ttl_cap);
        self.content_view(ino, Content::Token(token), ttl)
    }

    fn content_view(&self, ino: u64, content: Content, ttl: Duration) -> View {
        View {
            attr: Attr {
                ino,
                kind: Kind::File,
                size: content.bytes().len() as u64,
                mtime: content.mtime(),
                perm: 0o400,
                owner: self.opts.owner,
            },
            ttl,
            content: Some(content),
        }
    }

    fn root_view(&self) -> View {
        View {
            attr: Attr {
                ino: ROOT_INO,
                kind: Kind::Dir,
                size: 0,
                mtime: self.started,
                perm: 0o500,
                owner: self.opts.owner,
            },
            ttl: Duration::from_secs(1),
            content: None,
        }
    }

    /// Re-render `.status`; keep the previous document (and mtime) when nothing
    /// changed, so the kernel keeps its cached pages and two reads never mix two renders.
    fn status_view(&self) -> View {
        let cells: Vec<_> = self.tokens.iter().map(|t| t.cell.clone()).collect();
        let bytes = crate::status::render(&cells);
        let mut doc = lock(&self.status);
        if doc.bytes != bytes {
            *doc = Arc::new(StatusDoc {
                bytes,
                rendered_at: SystemTime::now(),
            });
        }
        // TTL zero: the kernel asks again on every access, and only sees a new
        // mtime (which drops its cached pages) when the document changed.
        self.content_view(STATUS_INO, Content::Status(doc.clone()), Duration::ZERO)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests;
