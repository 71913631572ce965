//! The filesystem logic without FUSE: what the kernel is told and what reads get.

use std::sync::atomic::{AtomicU64, Ordering};

use secrecy::SecretString;

use super::*;
use crate::cell::{Clock, Policy};
use crate::source::{Issued, LogClaims, Source, SourceError};

pub(super) struct ManualClock(AtomicU64);

impl Clock for ManualClock {
    fn now(&self) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(self.0.load(Ordering::SeqCst))
    }
}

/// Issues `token-N` with a growing length, so sizes differ between tokens.
struct Counting(Arc<ManualClock>, AtomicU64);

#[async_trait::async_trait]
impl Source for Counting {
    async fn issue(&self) -> Result<Issued, SourceError> {
        let n = self.1.fetch_add(1, Ordering::SeqCst) + 1;
        let now = self.0.now();
        Ok(Issued {
            token: SecretString::from(format!("token-{}", "x".repeat(n as usize))),
            expires_at: now + Duration::from_secs(300),
            issued_at: now,
            claims: LogClaims::default(),
        })
    }
    fn upstream(&self) -> String {
        "test".into()
    }
}

pub(super) fn files() -> (Arc<Files>, Arc<Cell>, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock(AtomicU64::new(1_000_000)));
    let source = Arc::new(Counting(clock.clone(), AtomicU64::new(0)));
    let cell = Cell::new(
        "token",
        source,
        Policy::default(),
        clock.clone(),
        Arc::new(|| 0.5),
    );
    let opts = Options {
        owner: Owner {
            uid: 1000,
            gid: 1001,
        },
        read_timeout: Duration::from_secs(10),
        ttl_cap: Duration::from_secs(600),
        login_socket: None,
    };
    let files = Files::with_clock(vec![cell.clone()], opts, clock.clone());
    (files, cell, clock)
}

fn ready(answer: Answer<View>) -> View {
    match answer {
        Answer::Ready(v) => v,
        Answer::MustWait => panic!("expected Ready, got MustWait"),
        Answer::Err(e) => panic!("expected Ready, got errno {e}"),
    }
}

#[test]
fn names_and_inodes() {
    let (files, _, _) = files();
    assert_eq!(
        files.lookup(ROOT_INO, OsStr::new("token")),
        Some(4 + PENDING_INO),
        "no token yet: the pending stand-in"
    );
    assert_eq!(
        files.lookup(ROOT_INO, OsStr::new(".status")),
        Some(STATUS_INO)
    );
    assert_eq!(files.lookup(ROOT_INO, OsStr::new("nope")), None);
    assert_eq!(
        files.lookup(4, OsStr::new("token")),
        None,
        "files are not directories"
    );
    let names: Vec<_> = files.entries().into_iter().map(|(_, n)| n).collect();
    assert_eq!(names, [".status", ".metrics", "token"]);
    let root = ready(files.attr_now(ROOT_INO)).attr;
    assert_eq!(
        (root.kind, root.perm, root.owner.uid),
        (Kind::Dir, 0o500, 1000)
    );
    assert!(matches!(files.attr_now(99), Answer::Err(libc::ENOENT)));
}

#[tokio::test]
async fn empty_cell_must_wait_then_attrs_match_content() {
    let (files, cell, clock) = files();
    assert!(
        matches!(files.attr_now(4), Answer::MustWait),
        "issue happens on first access"
    );
    assert_eq!(cell.status().fetches, 0);
    let view = files.wait(4).await.unwrap();
    let content = view.content.clone().unwrap();
    assert_eq!(content.bytes(), b"token-x");
    assert_eq!(view.attr.size, 7);
    assert_eq!(
        (view.attr.perm, view.attr.owner),
        (
            0o400,
            Owner {
                uid: 1000,
                gid: 1001
            }
        )
    );
    assert_eq!(
        view.attr.mtime,
        clock.now(),
        "mtime is when the content was obtained"
    );
    assert_eq!(
        view.ttl,
        Duration::from_secs(269),
        "TTL ends a margin before the token's deadline"
    );
    assert_eq!(content.slice(2, 3), b"ken");
    assert_eq!(content.slice(5, 100), b"-x");
    assert_eq!(content.slice(1 << 40, 10), b"");
}

#[tokio::test]
async fn ttl_is_capped_and_shrinks_towards_the_deadline() {
    let (files, _, clock) = files();
    files.wait(4).await.unwrap();
    clock.0.fetch_add(200, Ordering::SeqCst);
    assert_eq!(ready(files.attr_now(4)).ttl, Duration::from_secs(69));
    clock.0.fetch_add(70, Ordering::SeqCst);
    assert!(
        matches!(files.attr_now(4), Answer::MustWait),
        "past the deadline nothing is served"
    );
}

#[tokio::test]
async fn reads_serve_the_announced_token_until_attributes_are_asked_again() {
    let (files, cell, clock) = files();
    files.wait(4).await.unwrap();
    // A refresh lands: the cell has a longer token, but the kernel still holds the old size.
    refresh(&cell, &clock, 240).await;
    assert_eq!(cell.peek().unwrap().bytes(), b"token-xx");
    let read = ready(files.read_now(4));
    assert_eq!(
        read.content.unwrap().bytes(),
        b"token-x",
        "read matches the announced size"
    );
    // The next getattr (after the invalidation) announces the new one, and reads follow.
    let attr = ready(files.attr_now(4));
    assert_eq!(attr.attr.size, 8);
    assert_eq!(
        ready(files.read_now(4)).content.unwrap().bytes(),
        b"token-xx"
    );
}

#[tokio::test]
async fn status_is_stable_until_something_changes() {
    let (files, _, _) = files();
    let a = ready(files.attr_now(STATUS_INO));
    let b = ready(files.attr_now(STATUS_INO));
    assert_eq!(a.attr.mtime, b.attr.mtime);
    assert_eq!(a.ttl, Duration::ZERO);
    let text = String::from_utf8(a.content.unwrap().bytes().to_vec()).unwrap();
    assert!(text.contains("\"state\": \"empty\""), "{text}");
    files.wait(4).await.unwrap();
    let c = ready(files.attr_now(STATUS_INO));
    let text = String::from_utf8(c.content.clone().unwrap().bytes().to_vec()).unwrap();
    assert!(text.contains("\"state\": \"fresh\""), "{text}");
    assert!(!text.contains("token-x"), "no secret in .status: {text}");
    assert_eq!(c.attr.size, text.len() as u64);
    let read = ready(files.read_now(STATUS_INO));
    assert_eq!(read.content.unwrap().bytes(), text.as_bytes());
}

/// Needs consent until `granted` is set, then issues a token.
struct Consent(Arc<ManualClock>, std::sync::atomic::AtomicBool);

#[async_trait::async_trait]
impl Source for Consent {
    async fn issue(&self) -> Result<Issued, SourceError> {
        if !self.1.load(Ordering::SeqCst) {
            return Err(SourceError::ConsentRequired {
                url: "http://127.0.0.1:1/link?n=1".into(),
                expired: false,
                user_code: None,
            });
        }
        let now = self.0.now();
        Ok(Issued {
            token: SecretString::from("azure"),
            expires_at: now + Duration::from_secs(3600),
            issued_at: now,
            claims: LogClaims::default(),
        })
    }
    fn upstream(&self) -> String {
        "test".into()
    }
}

#[tokio::test]
async fn consent_url_file_exists_only_while_consent_is_needed() {
    let clock = Arc::new(ManualClock(AtomicU64::new(1_000_000)));
    let source = Arc::new(Consent(clock.clone(), false.into()));
    let cell = Cell::new(
        "azure-token",
        source.clone(),
        Policy::default(),
        clock.clone(),
        Arc::new(|| 0.5),
    );
    let opts = Options {
        owner: Owner { uid: 1, gid: 1 },
        read_timeout: Duration::from_secs(10),
        ttl_cap: Duration::from_secs(600),
        login_socket: None,
    };
    let files = Files::new(vec![cell], opts);
    let consent = OsStr::new("azure-token.consent-url");
    assert_eq!(
        files.lookup(ROOT_INO, consent),
        None,
        "not before the upstream said so"
    );
    assert_eq!(files.wait(4).await.err(), Some(libc::ENOKEY));

    assert_eq!(
        files.lookup(ROOT_INO, OsStr::new("azure-token.expires")),
        None,
        "no expiry without a token"
    );
    let ino = files
        .lookup(ROOT_INO, consent)
        .expect("present while consent is needed");
    assert_eq!(ino, 5);
    let names: Vec<_> = files.entries().into_iter().map(|(_, n)| n).collect();
    assert_eq!(
        names,
        [
            ".status",
            ".metrics",
            "azure-token",
            "azure-token.consent-url"
        ]
    );
    let view = ready(files.attr_now(ino));
    assert_eq!(
        view.content.unwrap().bytes(),
        b"http://127.0.0.1:1/link?n=1\n"
    );
    assert_eq!(
        view.ttl,
        Duration::ZERO,
        "never cached: it must vanish once consent is given"
    );
    assert_eq!(ready(files.read_now(ino)).attr.size, 28);

    // Consent given; after the short consent retry delay the next read succeeds.
    source.1.store(true, Ordering::SeqCst);
    clock.0.fetch_add(1, Ordering::SeqCst);
    assert_eq!(
        files.wait(4).await.unwrap().content.unwrap().bytes(),
        b"azure"
    );
    assert_eq!(files.lookup(ROOT_INO, consent), None);
    assert!(matches!(files.attr_now(ino), Answer::Err(libc::ENOENT)));
    let names: Vec<_> = files.entries().into_iter().map(|(_, n)| n).collect();
    assert_eq!(
        names,
        [".status", ".metrics", "azure-token", "azure-token.expires"]
    );
}

fn json(view: &View) -> serde_json::Value {
    let bytes = view.content.as_ref().unwrap().bytes();
    assert_eq!(bytes.last(), Some(&b'\n'), "one line");
    assert_eq!(bytes.iter().filter(|b| **b == b'\n').count(), 1, "one line");
    serde_json::from_slice(bytes).unwrap()
}

#[tokio::test]
async fn expires_file_follows_the_servable_token_and_never_asks_the_upstream() {
    let (files, cell, clock) = files();
    let name = OsStr::new("token.expires");
    // Before any read: no token, so no expiry, and looking asks for nothing.
    assert_eq!(files.lookup(ROOT_INO, name), None);
    for now in [files.attr_now(6), files.read_now(6)] {
        assert!(matches!(now, Answer::Err(libc::ENOENT)), "never waits");
    }
    let names: Vec<_> = files.entries().into_iter().map(|(_, n)| n).collect();
    assert_eq!(names, [".status", ".metrics", "token"]);
    assert_eq!(cell.status().fetches, 0);

    let token = files.wait(4).await.unwrap();
    assert_eq!(files.lookup(ROOT_INO, name), Some(6));
    let names: Vec<_> = files.entries().into_iter().map(|(_, n)| n).collect();
    assert_eq!(names, [".status", ".metrics", "token", "token.expires"]);
    let view = ready(files.attr_now(6));
    let served = cell.peek().unwrap();
    assert_eq!(
        json(&view),
        serde_json::json!({
            "expires_on": 1_000_300,
            "expires_at": "1970-01-12T13:51:40Z",
            "obtained_at": "1970-01-12T13:46:40Z",
            "refresh_at": crate::status::schema::rfc3339(served.refresh_at),
        })
    );
    let text = String::from_utf8(view.content.clone().unwrap().bytes().to_vec()).unwrap();
    assert!(!text.contains("token-x"), "no secret in it: {text}");
    assert_eq!(view.attr.size, text.len() as u64);
    assert_eq!(
        (view.attr.mtime, view.attr.perm, view.attr.owner, view.ttl),
        (token.attr.mtime, 0o400, token.attr.owner, Duration::ZERO),
        "dated and owned like the token; never cached, so a refresh shows at once"
    );
    assert_eq!(ready(files.attr_now(6)).attr, view.attr, "stable");
    assert_eq!(
        ready(files.read_now(6)).content.unwrap().bytes(),
        text.as_bytes()
    );

    // A refresh lands. Until the kernel dropped its cache of `token`, a read of
    // it still returns the old token: so `.expires` still describes that one.
    refresh(&cell, &clock, 240).await;
    let before = ready(files.attr_now(6));
    assert_eq!(before.content.unwrap().bytes(), text.as_bytes());
    assert_eq!(before.attr.mtime, token.attr.mtime);
    // The invalidation went through: the next read of `token` gets the new one.
    files.note_kernel_uncached(4);
    assert_eq!(
        ready(files.read_now(6)).content.unwrap().bytes(),
        text.as_bytes(),
        "reads keep the announced rendering until attributes are asked again"
    );
    let after = ready(files.attr_now(6));
    assert_eq!(json(&after)["expires_on"], 1_000_540);
    assert_eq!(json(&after)["obtained_at"], "1970-01-12T13:50:40Z");
    assert_eq!(after.attr.mtime, clock.now(), "the new token's mtime");
    assert_eq!(
        ready(files.read_now(6)).content.unwrap().bytes(),
        after.content.unwrap().bytes()
    );
    let fetches = cell.status().fetches;
    for _ in 0..3 {
        ready(files.attr_now(6));
        ready(files.read_now(6));
    }
    assert_eq!(
        cell.status().fetches,
        fetches,
        "reading it asks for nothing"
    );

    // Past the last token's deadline it is gone, and still nothing is asked.
    clock.0.fetch_add(300, Ordering::SeqCst);
    assert_eq!(files.lookup(ROOT_INO, name), None);
    for now in [files.attr_now(6), files.read_now(6)] {
        assert!(matches!(now, Answer::Err(libc::ENOENT)));
    }
    assert_eq!(files.entries().len(), 3);
    assert_eq!(cell.status().fetches, fetches);
}

#[tokio::test]
async fn each_file_has_four_inodes() {
    let (one, first, clock) = files();
    let second = Cell::new(
        "second",
        Arc::new(Counting(clock.clone(), AtomicU64::new(0))),
        Policy::default(),
        clock.clone(),
        Arc::new(|| 0.5),
    );
    let files = Files::new(vec![first, second], one.opts.clone());
    assert_eq!(files.lookup(ROOT_INO, OsStr::new("token")), Some(7));
    assert_eq!(files.wait(8).await.unwrap().attr.ino, 8);
    assert_eq!(files.lookup(ROOT_INO, OsStr::new("second")), Some(8));
    assert_eq!(
        files.lookup(ROOT_INO, OsStr::new("second.expires")),
        Some(10)
    );
    assert_eq!(files.lookup(ROOT_INO, OsStr::new("token.expires")), None);
    assert!(matches!(files.attr_now(10), Answer::Ready(_)));
    assert!(matches!(files.attr_now(6), Answer::Err(libc::ENOENT)));
    assert!(matches!(files.attr_now(13), Answer::Err(libc::ENOENT)));
    let inodes: Vec<_> = files.entries().into_iter().map(|(i, _)| i).collect();
    assert_eq!(inodes, [STATUS_INO, METRICS_INO, 7, 8, 10]);
}

#[tokio::test]
async fn without_a_token_the_name_is_an_empty_stand_in_that_asks_nothing() {
    let (files, cell, clock) = files();
    let pending = 4 + PENDING_INO;
    for _ in 0..3 {
        let view = ready(files.attr_now(pending));
        assert_eq!((view.attr.size, view.attr.perm), (0, 0o400));
        assert_eq!(view.attr.kind, Kind::File);
        assert_eq!(view.ttl, Duration::ZERO, "asked again at each access");
    }
    assert_eq!(cell.status().fetches, 0, "a walk asks no upstream");
    // Opening it is the first step of a read: it waits, then sends the reader on.
    assert!(matches!(files.open(pending), Answer::MustWait));
    let view = files.wait(pending).await.unwrap();
    assert_eq!(view.content.unwrap().bytes(), b"token-x");
    assert!(matches!(files.open(pending), Answer::Ready(Opened::Stale)));
    assert_eq!(files.lookup(ROOT_INO, OsStr::new("token")), Some(4));
    assert_eq!(ready(files.attr_now(4)).attr.size, 7);
    files.serve(ReadPath::PageCache);
    assert!(matches!(files.open(4), Answer::Ready(Opened::Cached)));
    assert_eq!(
        ready(files.attr_now(pending)).attr.size,
        0,
        "the stand-in never takes a size, whatever a reader holding it sees"
    );
    // Past the deadline the name is the stand-in again, without asking anything.
    clock.0.fetch_add(300, Ordering::SeqCst);
    assert_eq!(files.lookup(ROOT_INO, OsStr::new("token")), Some(pending));
    assert_eq!(cell.status().fetches, 1);
    assert!(matches!(files.open(ROOT_INO), Answer::Err(libc::EISDIR)));
}

#[tokio::test]
async fn the_kernel_may_cache_a_token_only_within_its_announced_ttl() {
    let (files, cell, clock) = files();
    assert!(!files.kernel_may_cache_older(4, 1), "nothing announced");
    let view = files.wait(4).await.unwrap();
    assert!(
        !files.kernel_may_cache_older(4, 1),
        "the reply that announced generation 1 told the kernel already"
    );
    assert!(files.kernel_may_cache_older(4, 2), "generation 1 is cached");
    clock.0.fetch_add(view.ttl.as_secs() + 1, Ordering::SeqCst);
    assert!(
        !files.kernel_may_cache_older(4, 2),
        "past its TTL the kernel asks again"
    );
    assert_eq!(cell.generation(), 1);
    assert!(
        !files.kernel_may_cache_older(STATUS_INO, 2),
        "documents are never cached"
    );
}
#[tokio::test]
async fn expires_file_moves_on_when_the_token_file_is_announced() {
    let (files, cell, clock) = files();
    files.wait(4).await.unwrap();
    refresh(&cell, &clock, 240).await;
    assert_eq!(json(&ready(files.attr_now(6)))["expires_on"], 1_000_300);
    // A stat of `token` (its cache gone) announces the new token, and reads follow.
    assert_eq!(ready(files.attr_now(4)).attr.size, 8);
    assert_eq!(json(&ready(files.attr_now(6)))["expires_on"], 1_000_540);
    // Once the described token is past its deadline, the newest one counts.
    let (files, cell, clock) = super::tests::files();
    files.wait(4).await.unwrap();
    clock.0.fetch_add(280, Ordering::SeqCst);
    assert!(files
        .lookup(ROOT_INO, OsStr::new("token.expires"))
        .is_none());
    refresh(&cell, &clock, 0).await;
    assert_eq!(json(&ready(files.attr_now(6)))["expires_on"], 1_000_580);
}

/// A refresh lands `after` seconds on: the cell gets the next, longer token.
async fn refresh(cell: &Cell, clock: &ManualClock, after: u64) {
    clock.0.fetch_add(after, Ordering::SeqCst);
    assert!(cell.lock().try_start_refresh(clock.now()));
    let issued = cell.source.issue().await;
    cell.lock()
        .finish(issued, clock.now(), &Policy::default(), 0.5)
        .unwrap();
}

fn read(answer: Answer<Slice>) -> Vec<u8> {
    match answer {
        Answer::Ready(slice) => slice.bytes().to_vec(),
        Answer::MustWait => panic!("expected Ready, got MustWait"),
        Answer::Err(e) => panic!("expected Ready, got errno {e}"),
    }
}

fn direct(opened: Opened) -> u64 {
    match opened {
        Opened::Direct(fh) => fh,
        other => panic!("expected a direct-I/O handle, got {other:?}"),
    }
}

#[tokio::test]
async fn under_direct_io_each_open_file_reads_its_pinned_token_until_its_deadline() {
    let (files, cell, clock) = files();
    files.serve(ReadPath::DirectIo);
    assert!(
        matches!(files.open(4), Answer::MustWait),
        "no token yet: the open waits, as a read would"
    );
    let first = direct(files.open_wait(4).await.unwrap());
    assert_eq!(read(files.read(4, first, 0, 100)), b"token-x");

    // A refresh lands and is announced; the open file keeps its token, a new
    // open gets the new one.
    refresh(&cell, &clock, 240).await;
    assert_eq!(ready(files.attr_now(4)).attr.size, 8);
    assert_eq!(read(files.read(4, first, 2, 100)), b"ken-x", "pinned");
    let Answer::Ready(second) = files.open(4) else {
        panic!("a token is servable: the open is answered at once")
    };
    let second = direct(second);
    assert_ne!(first, second);
    assert_eq!(read(files.read(4, second, 0, 100)), b"token-xx");
    assert_eq!(files.pinned_handles(), 2);

    // Past the first token's deadline (270 s after it was issued), by the
    // cell's clock: mid-file never mixes two tokens, offset 0 starts over.
    clock.0.fetch_add(31, Ordering::SeqCst);
    assert!(matches!(
        files.read(4, first, 3, 100),
        Answer::Err(libc::EIO)
    ));
    assert_eq!(read(files.read(4, first, 0, 100)), b"token-xx");
    assert_eq!(
        read(files.read(4, first, 3, 100)),
        b"en-xx",
        "and it goes on with the token it started over with"
    );

    files.release(first);
    assert_eq!(files.pinned_handles(), 1, "release drops the pin");
    files.release(second);
    files.release(0);
    assert_eq!(files.pinned_handles(), 0);
    assert_eq!(
        read(files.read(4, first, 0, 100)),
        b"token-xx",
        "a handle unknown to the table reads the current view and pins nothing"
    );
    assert_eq!(files.pinned_handles(), 0);
}

#[tokio::test]
async fn under_direct_io_a_read_of_a_pinned_token_past_its_deadline_waits_for_the_next() {
    let (files, cell, clock) = files();
    files.serve(ReadPath::DirectIo);
    let fh = direct(files.open_wait(4).await.unwrap());
    clock.0.fetch_add(271, Ordering::SeqCst);
    assert!(matches!(files.read(4, fh, 5, 10), Answer::Err(libc::EIO)));
    assert!(
        matches!(files.read(4, fh, 0, 10), Answer::MustWait),
        "nothing servable: offset 0 waits for a token"
    );
    assert_eq!(
        files.read_wait(4, fh, 0, 100).await.unwrap().bytes(),
        b"token-xx"
    );
    assert_eq!(cell.status().fetches, 2);
    assert_eq!(read(files.read(4, fh, 5, 100)), b"-xx", "re-pinned");
}

#[tokio::test]
async fn under_the_page_cache_opens_and_reads_use_no_handle() {
    let (files, _, _) = files();
    files.serve(ReadPath::PageCache);
    files.wait(4).await.unwrap();
    assert!(matches!(files.open(4), Answer::Ready(Opened::Cached)));
    assert!(matches!(
        files.open(STATUS_INO),
        Answer::Ready(Opened::Cached)
    ));
    assert_eq!(read(files.read(4, 0, 0, 100)), b"token-x");
    assert_eq!(files.pinned_handles(), 0);
    assert!(matches!(
        files.read(ROOT_INO, 0, 0, 1),
        Answer::Err(libc::EISDIR)
    ));
    assert!(matches!(files.open(99), Answer::Err(libc::ENOENT)));
}

#[tokio::test]
async fn the_stand_in_opens_wait_then_send_the_reader_on_whatever_the_read_path() {
    for path in [ReadPath::PageCache, ReadPath::DirectIo] {
        let (files, _, _) = files();
        files.serve(path);
        let pending = 4 + PENDING_INO;
        assert!(matches!(files.open(pending), Answer::MustWait), "{path:?}");
        assert_eq!(files.open_wait(pending).await, Ok(Opened::Stale));
        assert!(matches!(files.open(pending), Answer::Ready(Opened::Stale)));
        assert!(matches!(
            files.read(pending, 0, 0, 10),
            Answer::Err(libc::ESTALE)
        ));
        assert_eq!(files.pinned_handles(), 0, "the stand-in pins nothing");
    }
    let (files, _, _) = files();
    files.serve(ReadPath::KernelOpens);
    assert!(
        matches!(files.open(4), Answer::Err(libc::ENOSYS)),
        "the kernel opens files itself"
    );
    assert_eq!(
        files.lookup(ROOT_INO, OsStr::new("token")),
        Some(4),
        "no stand-in when no open reaches the daemon"
    );
}

#[tokio::test]
async fn documents_are_dated_by_the_files_clock() {
    let (files, _, clock) = files();
    let first = ready(files.attr_now(STATUS_INO)).attr.mtime;
    assert_eq!(first, clock.now());
    clock.0.fetch_add(5, Ordering::SeqCst);
    files.wait(4).await.unwrap();
    assert_eq!(ready(files.attr_now(STATUS_INO)).attr.mtime, clock.now());
    assert_eq!(ready(files.attr_now(ROOT_INO)).attr.mtime, first, "started");
}
