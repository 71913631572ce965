//! The filesystem's logic, without FUSE: inode table, attributes, what an open
//! and a read return (`handles`: per read path, with direct I/O's pinned
//! content) and how long the kernel may cache it. [`fuse`] is the thin adapter.
//!
//! The kernel caches each file's pages and attributes (page cache, TTLs bounded
//! by the token's deadline: that is what keeps warm reads fast), so the daemon
//! only sees a file when its TTL ran out or it was invalidated. To keep every
//! read consistent with the size the kernel last saw, each file remembers the
//! content it last *announced* in an attribute reply, and reads serve exactly
//! that content while it is still servable. A file without a servable token is
//! a separate, always empty inode (see [`Node::Pending`]), so walks never ask
//! the upstream and never see a size a read would not return.

pub mod fuse;
mod handles;

pub use handles::{Opened, ReadPath, Slice};

use std::ffi::OsStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use crate::cell::{Cell, CellError, Clock, SystemClock, Token};
use crate::status::schema::Timestamp;
use crate::sync::lock;

pub const ROOT_INO: u64 = 1;
pub const STATUS_INO: u64 = 2;
pub const METRICS_INO: u64 = 3;
const FIRST_TOKEN_INO: u64 = 4;
pub const STATUS_NAME: &str = ".status";
/// Prometheus text metrics (see [`crate::metrics`]).
pub const METRICS_NAME: &str = ".metrics";
/// Kept between a token's deadline and the end of the TTL the kernel gets for it.
const TTL_MARGIN: Duration = Duration::from_secs(1);
/// `<file>.consent-url` exists while `<file>` needs the user's consent.
pub const CONSENT_SUFFIX: &str = ".consent-url";
/// `<file>.expires` exists while `<file>` has a token to serve: when it expires,
/// as JSON, so that clients need not decode the token (an opaque one cannot be).
pub const EXPIRES_SUFFIX: &str = ".expires";
/// Inodes per token file: the token, then these after it.
const INODES_PER_FILE: u64 = 4;
const CONSENT_INO: u64 = 1;
const EXPIRES_INO: u64 = 2;
/// The token file's stand-in while it has no token (see [`Node::Pending`]).
const PENDING_INO: u64 = 3;

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
    /// Where `tokenfs consent` completes a code login, shown in `.status`.
    pub login_socket: Option<std::path::PathBuf>,
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
    /// A rendered document: `.status`, `.metrics`, a consent URL or an expiry.
    Doc(Arc<Doc>),
}

pub struct Doc {
    bytes: Vec<u8>,
    rendered_at: SystemTime,
}

impl Content {
    pub fn bytes(&self) -> &[u8] {
        match self {
            Content::Token(t) => t.bytes(),
            Content::Doc(d) => &d.bytes,
        }
    }

    fn mtime(&self) -> SystemTime {
        match self {
            Content::Token(t) => t.obtained_at,
            Content::Doc(d) => d.rendered_at,
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

/// What a request gets without waiting: the FUSE thread answers `Ready` and
/// `Err` at once, and only `MustWait` goes to the async runtime.
pub enum Answer<T> {
    Ready(T),
    /// The cell has no servable token: the matching `*_wait` method (e.g.
    /// [`Files::wait`]) answers once it has one.
    MustWait,
    Err(i32),
}

/// The last rendering of a document, kept while its bytes do not change so
/// that its mtime (and the kernel's cached pages) stay put.
struct DocSlot(Mutex<Option<Arc<Doc>>>);

impl DocSlot {
    fn new() -> DocSlot {
        DocSlot(Mutex::new(None))
    }

    /// The rendering to announce: the last one if its bytes are these, else a
    /// new one dated `mtime`.
    fn announce(&self, bytes: Vec<u8>, mtime: SystemTime) -> Arc<Doc> {
        let mut slot = lock(&self.0);
        match &*slot {
            Some(doc) if doc.bytes == bytes => doc.clone(),
            _ => {
                let doc = Arc::new(Doc {
                    bytes,
                    rendered_at: mtime,
                });
                *slot = Some(doc.clone());
                doc
            }
        }
    }

    fn last(&self) -> Option<Arc<Doc>> {
        lock(&self.0).clone()
    }
}

struct TokenFile {
    cell: Arc<Cell>,
    /// One lock for the three, taken once per attribute reply: an announcement
    /// sets them together.
    told: Mutex<Told>,
    consent: DocSlot,
    expires: DocSlot,
}

/// What the kernel was told of a token file.
struct Told {
    announced: Option<Arc<Token>>,
    /// Until when the kernel may go on using the attributes announced last
    /// (their TTL) without asking again.
    cached_until: SystemTime,
    /// The token a read of the file returns now, as far as the daemon knows:
    /// the announced one, until the kernel dropped its cache of the file after a
    /// refresh (then the next read gets the cell's newest). `.expires` describes
    /// it, so that a client reading both never pairs a token with a later
    /// token's expiry.
    described: Option<Arc<Token>>,
}

/// Which file an inode is: token file `i` is `FIRST_TOKEN_INO + 4i`, its
/// companions the `*_INO` offsets after it.
enum Node<'a> {
    Root,
    Status,
    Metrics,
    Token(&'a TokenFile),
    Consent(&'a TokenFile),
    Expires(&'a TokenFile),
    /// What the token file's name resolves to while it has no servable token: an
    /// empty file that `stat`, `ls -l`, `find` and `du` see without any upstream
    /// request. It never serves content: its open waits for a token and then
    /// answers `ESTALE`, on which the kernel looks the name up once more and
    /// opens the token file itself. Its size is always 0 and the token file's is
    /// always its token's, so no attribute reply of one can ever give the other
    /// a length its reads do not have.
    Pending(&'a TokenFile),
}

/// The content of `<file>.expires`: nothing of the token itself.
#[derive(serde::Serialize)]
struct Expiry {
    /// Seconds since the epoch, as azure-identity's `AccessToken.expires_on`.
    expires_on: u64,
    expires_at: Timestamp,
    obtained_at: Timestamp,
    refresh_at: Timestamp,
}

/// The mount's files.
pub struct Files {
    tokens: Vec<TokenFile>,
    /// The same cells, as `.status` and `.metrics` render them: kept so that a
    /// `getattr` of either (TTL 0, so one per access) collects nothing.
    cells: Vec<Arc<Cell>>,
    status: DocSlot,
    metrics: DocSlot,
    opts: Options,
    /// Dates what belongs to no token: `.status`, `.metrics`, the root and the
    /// stand-in. Anything about a token (servable, TTL, what the kernel may
    /// cache) is judged by its cell's clock, the one the cell decided with. The
    /// daemon gives both the system clock; tests give both one manual clock.
    clock: Arc<dyn Clock>,
    started: SystemTime,
    handles: handles::Handles,
}

impl Files {
    pub fn new(cells: Vec<Arc<Cell>>, opts: Options) -> Arc<Files> {
        Files::with_clock(cells, opts, Arc::new(SystemClock))
    }

    pub fn with_clock(cells: Vec<Arc<Cell>>, opts: Options, clock: Arc<dyn Clock>) -> Arc<Files> {
        Arc::new(Files {
            tokens: cells
                .iter()
                .cloned()
                .map(|cell| TokenFile {
                    cell,
                    told: Mutex::new(Told {
                        announced: None,
                        cached_until: SystemTime::UNIX_EPOCH,
                        described: None,
                    }),
                    consent: DocSlot::new(),
                    expires: DocSlot::new(),
                })
                .collect(),
            cells,
            status: DocSlot::new(),
            metrics: DocSlot::new(),
            opts,
            started: clock.now(),
            clock,
            handles: handles::Handles::default(),
        })
    }

    fn token_ino(index: usize) -> u64 {
        FIRST_TOKEN_INO + INODES_PER_FILE * index as u64
    }

    fn node(&self, ino: u64) -> Option<Node<'_>> {
        match ino {
            ROOT_INO => Some(Node::Root),
            STATUS_INO => Some(Node::Status),
            METRICS_INO => Some(Node::Metrics),
            _ => {
                let offset = ino.checked_sub(FIRST_TOKEN_INO)?;
                let index = usize::try_from(offset / INODES_PER_FILE).ok()?;
                let file = self.tokens.get(index)?;
                Some(match offset % INODES_PER_FILE {
                    CONSENT_INO => Node::Consent(file),
                    EXPIRES_INO => Node::Expires(file),
                    PENDING_INO => Node::Pending(file),
                    _ => Node::Token(file),
                })
            }
        }
    }

    /// The inode of a name in the root directory.
    pub fn lookup(&self, parent: u64, name: &OsStr) -> Option<u64> {
        if parent != ROOT_INO {
            return None;
        }
        if name == STATUS_NAME {
            return Some(STATUS_INO);
        }
        if name == METRICS_NAME {
            return Some(METRICS_INO);
        }
        let name = name.to_str()?;
        // Config names never end in either suffix, so a name has one reading.
        let (base, companion) = if let Some(base) = name.strip_suffix(CONSENT_SUFFIX) {
            (base, CONSENT_INO)
        } else if let Some(base) = name.strip_suffix(EXPIRES_SUFFIX) {
            (base, EXPIRES_INO)
        } else {
            (name, 0)
        };
        let index = self.tokens.iter().position(|t| t.cell.name() == base)?;
        let file = &self.tokens[index];
        let (exists, companion) = match companion {
            CONSENT_INO => (file.cell.consent_url().is_some(), companion),
            EXPIRES_INO => (self.described(file).is_some(), companion),
            // Without a servable token the name is the pending stand-in, so that
            // a walk of the directory neither fails nor asks the upstream.
            _ => (true, self.token_or_pending(file)),
        };
        exists.then(|| Self::token_ino(index) + companion)
    }

    /// Directory entries of the root, without `.` and `..`: consent-url files
    /// only while consent is needed, expires files only while a token is servable.
    pub fn entries(&self) -> Vec<(u64, String)> {
        let mut out = vec![
            (STATUS_INO, STATUS_NAME.to_owned()),
            (METRICS_INO, METRICS_NAME.to_owned()),
        ];
        for (i, t) in self.tokens.iter().enumerate() {
            out.push((
                Self::token_ino(i) + self.token_or_pending(t),
                t.cell.name().to_owned(),
            ));
            if t.cell.consent_url().is_some() {
                out.push((
                    Self::token_ino(i) + CONSENT_INO,
                    format!("{}{CONSENT_SUFFIX}", t.cell.name()),
                ));
            }
            if self.described(t).is_some() {
                out.push((
                    Self::token_ino(i) + EXPIRES_INO,
                    format!("{}{EXPIRES_SUFFIX}", t.cell.name()),
                ));
            }
        }
        out
    }

    /// The offset of the inode a token file's name resolves to now: the
    /// pending stand-in while it has no servable token, unless the kernel opens
    /// files itself (then nothing would move a reader off the stand-in).
    fn token_or_pending(&self, file: &TokenFile) -> u64 {
        if self.read_path() != ReadPath::KernelOpens && file.cell.peek().is_none() {
            PENDING_INO
        } else {
            0
        }
    }

    /// Count a read the daemon answered (for `.metrics`); only token files count.
    pub fn note_read(&self, ino: u64) {
        if let Some(Node::Token(file)) = self.node(ino) {
            file.cell.note_read();
        }
    }

    /// The kernel holds no attributes of token file `ino` older than the cell's
    /// newest token (an invalidation dropped them, or their TTL ran out): its
    /// next read asks first and gets the newest, so `.expires` describes that one.
    pub fn note_kernel_uncached(&self, ino: u64) {
        if let Some(Node::Token(file)) = self.node(ino) {
            let newest = file.cell.peek();
            lock(&file.told).described = newest;
        }
    }

    /// Cells with their inodes, for invalidation.
    pub fn cells(&self) -> impl Iterator<Item = (u64, &Arc<Cell>)> {
        self.tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (Self::token_ino(i), &t.cell))
    }

    /// Whether the kernel may still be using attributes (and so pages) of a
    /// token older than `generation`, within their TTL: only then does the
    /// token of `generation` need an invalidation to be seen. Otherwise the
    /// kernel asks before its next read (or has been told already), and the
    /// reply's new size and mtime drop stale pages; an invalidation then would
    /// only race that reply (the kernel drops an attribute reply older than an
    /// invalidation, keeping the old size: an empty file's 0 would make the
    /// read end at once).
    pub fn kernel_may_cache_older(&self, ino: u64, generation: u64) -> bool {
        match self.node(ino) {
            Some(Node::Token(file)) => {
                let now = file.cell.now();
                let told = lock(&file.told);
                let announced = told.announced.as_ref().map_or(0, |t| t.generation);
                announced < generation && now < told.cached_until
            }
            _ => false,
        }
    }

    /// The view an attribute request (`lookup`, `getattr`) gets: for a token, the
    /// newest servable one, which becomes the announced content; with none, a
    /// wait for it. (An empty file's attributes instead would race a concurrent
    /// reader's attribute request: the kernel keeps the newest-applied ones and
    /// would drop the real size, and that read would end at once, empty.)
    pub fn attr_now(&self, ino: u64) -> Answer<View> {
        match self.node(ino) {
            None => Answer::Err(libc::ENOENT),
            Some(Node::Root) => Answer::Ready(self.root_view()),
            Some(Node::Status) => Answer::Ready(self.status_view()),
            Some(Node::Metrics) => Answer::Ready(self.metrics_view()),
            Some(Node::Consent(file)) => self.consent_view(ino, file),
            Some(Node::Expires(file)) => self.expires_view(ino, file),
            Some(Node::Pending(_)) => Answer::Ready(self.pending_view(ino)),
            Some(Node::Token(file)) => match file.cell.peek() {
                Some(token) => Answer::Ready(self.announce(ino, file, token)),
                None => Answer::MustWait,
            },
        }
    }

    /// The view a read gets: the announced content while it is servable, so that
    /// the bytes match the size the kernel holds; else the newest servable one.
    pub fn read_now(&self, ino: u64) -> Answer<View> {
        let doc = |slot: &DocSlot| {
            slot.last()
                .map(|d| self.content_view(ino, Content::Doc(d), Duration::ZERO))
        };
        match self.node(ino) {
            None => Answer::Err(libc::ENOENT),
            Some(Node::Root) => Answer::Err(libc::EISDIR),
            Some(Node::Status) => {
                doc(&self.status).map_or_else(|| self.attr_now(ino), Answer::Ready)
            }
            Some(Node::Metrics) => {
                doc(&self.metrics).map_or_else(|| self.attr_now(ino), Answer::Ready)
            }
            Some(Node::Consent(file)) => {
                doc(&file.consent).map_or_else(|| self.attr_now(ino), Answer::Ready)
            }
            // The announced rendering while the token file has something to serve
            // (it may describe a token a refresh just replaced: the next attribute
            // request announces the new one); gone with the last servable token.
            Some(Node::Expires(file)) => match self.described(file) {
                Some(_) => doc(&file.expires).map_or_else(|| self.attr_now(ino), Answer::Ready),
                None => Answer::Err(libc::ENOENT),
            },
            // No descriptor of the stand-in exists (its opens never succeed), so
            // a read of it is a kernel's retry at most: send it to the name again.
            Some(Node::Pending(_)) => Answer::Err(libc::ESTALE),
            Some(Node::Token(file)) => {
                let now = file.cell.now();
                let announced = lock(&file.told).announced.clone();
                match announced.filter(|t| t.servable(now)) {
                    Some(token) => Answer::Ready(self.token_view(ino, token, now)),
                    None => self.attr_now(ino),
                }
            }
        }
    }

    /// Wait (up to the read timeout) for the cell of `ino` to have a servable
    /// token. For the pending stand-in, the view is the token's, not announced:
    /// the kernel learns of it by looking the name up again.
    pub async fn wait(&self, ino: u64) -> Result<View, i32> {
        let (file, pending) = match self.node(ino) {
            Some(Node::Token(file)) => (file, false),
            Some(Node::Pending(file)) => (file, true),
            _ => return Err(libc::ENOENT),
        };
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
        if pending {
            return Ok(self.token_view(ino, token, file.cell.now()));
        }
        Ok(self.announce(ino, file, token))
    }

    fn announce(&self, ino: u64, file: &TokenFile, token: Arc<Token>) -> View {
        let now = file.cell.now();
        let view = self.token_view(ino, token.clone(), now);
        let mut told = lock(&file.told);
        told.announced = Some(token.clone());
        told.described = Some(token);
        told.cached_until = now + view.ttl;
        drop(told);
        view
    }

    fn token_view(&self, ino: u64, token: Arc<Token>, now: SystemTime) -> View {
        // The kernel may serve cached pages and attributes until the TTL ends, even
        // if this daemon dies: never let that reach past the token's deadline. The
        // kernel starts the TTL when the reply arrives, not when it was computed, and
        // rounds it up to a clock tick: keep a margin for both.
        let ttl = token
            .time_left(now)
            .saturating_sub(TTL_MARGIN)
            .min(self.opts.ttl_cap);
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

    /// Size 0 and TTL 0: the kernel asks again at each access, so the name moves
    /// to the token file as soon as there is a token.
    fn pending_view(&self, ino: u64) -> View {
        View {
            attr: Attr {
                ino,
                kind: Kind::File,
                size: 0,
                mtime: self.started,
                perm: 0o400,
                owner: self.opts.owner,
            },
            ttl: Duration::ZERO,
            content: None,
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

    // Documents get TTL zero: the kernel asks again on every access, and only sees
    // a new mtime (which drops its cached pages) when the bytes changed.

    fn status_view(&self) -> View {
        let doc = self.status.announce(
            crate::status::render(&self.cells, self.opts.login_socket.as_deref()),
            self.clock.now(),
        );
        self.content_view(STATUS_INO, Content::Doc(doc), Duration::ZERO)
    }

    fn metrics_view(&self) -> View {
        let doc = self
            .metrics
            .announce(crate::metrics::render_now(&self.cells), self.clock.now());
        self.content_view(METRICS_INO, Content::Doc(doc), Duration::ZERO)
    }

    /// `<file>.consent-url`: the URL and a newline, while consent is needed.
    fn consent_view(&self, ino: u64, file: &TokenFile) -> Answer<View> {
        match file.cell.consent_url() {
            Some(url) => {
                let doc = file
                    .consent
                    .announce(format!("{url}\n").into_bytes(), file.cell.now());
                Answer::Ready(self.content_view(ino, Content::Doc(doc), Duration::ZERO))
            }
            None => Answer::Err(libc::ENOENT),
        }
    }

    /// The token `.expires` describes: the one a read returns now, while it is
    /// servable; else the newest servable one (what the next read gets). Only
    /// cached tokens: this never asks the upstream, nor starts a refresh.
    fn described(&self, file: &TokenFile) -> Option<Arc<Token>> {
        let now = file.cell.now();
        let described = lock(&file.told).described.clone();
        described
            .filter(|t| t.servable(now))
            .or_else(|| file.cell.peek())
    }

    /// `<file>.expires`: the expiry of the token `<file>` serves, as one line of
    /// JSON, while it has one. Its mtime is the token's, and changes with it.
    fn expires_view(&self, ino: u64, file: &TokenFile) -> Answer<View> {
        let Some(token) = self.described(file) else {
            return Answer::Err(libc::ENOENT);
        };
        let expiry = Expiry {
            expires_on: token
                .expires_at
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            expires_at: token.expires_at.into(),
            obtained_at: token.obtained_at.into(),
            refresh_at: token.refresh_at.into(),
        };
        let mut bytes = serde_json::to_vec(&expiry).unwrap_or_default();
        bytes.push(b'\n');
        let doc = file.expires.announce(bytes, token.obtained_at);
        Answer::Ready(self.content_view(ino, Content::Doc(doc), Duration::ZERO))
    }
}

#[cfg(test)]
mod tests;
