//! The open+read+close latency runs: one `Case` per design, each read the way a
//! user's program reads its token (open, read to the end, close), timed per read.

use std::io::Read as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Barrier;
use std::time::{Duration, Instant};

use crate::http;

/// Where a case's token comes from.
pub enum Source {
    /// A file: `File::open` + `read_to_end` + close per read.
    File(PathBuf),
    /// The API proxy: one `GET /access-token` per read on a kept-alive connection.
    Http(SocketAddr),
}

/// One design under test.
pub struct Case {
    pub name: &'static str,
    pub source: Source,
}

/// Per-thread reading state: the HTTP connection is opened once per reader thread,
/// as a long-running client would keep it.
enum Reader<'a> {
    File(&'a PathBuf),
    Http(http::Conn, Vec<u8>),
}

impl Case {
    fn reader(&self) -> Reader<'_> {
        match &self.source {
            Source::File(path) => Reader::File(path),
            Source::Http(addr) => Reader::Http(
                http::Conn::connect(*addr).expect("connect to the loopback server"),
                http::access_token_request(),
            ),
        }
    }
}

impl Reader<'_> {
    /// One read of the whole token into `buf` (cleared first); returns its length.
    fn read_once(&mut self, buf: &mut Vec<u8>) -> std::io::Result<usize> {
        buf.clear();
        match self {
            Reader::File(path) => std::fs::File::open(path)?.read_to_end(buf),
            Reader::Http(conn, request) => {
                let status = conn.round_trip(request, buf)?;
                if status != 200 {
                    return Err(std::io::Error::other(format!("HTTP {status}")));
                }
                Ok(buf.len())
            }
        }
    }
}

/// How many reads, per thread.
#[derive(Clone, Copy)]
pub struct Plan {
    pub threads: usize,
    pub warmup: usize,
    pub ops: usize,
}

/// The result of one case at one concurrency.
pub struct Measured {
    pub name: &'static str,
    pub threads: usize,
    pub p50: Duration,
    pub p99: Duration,
    pub reads_per_s: f64,
    /// The daemon's CPU time during the timed and warm-up reads (tokenfs only).
    pub daemon_cpu: Option<Duration>,
    /// Reads per run, warm-up included, over all threads.
    pub reads: Option<usize>,
}

/// Run `plan.threads` readers of `case`, released together after their warm-up;
/// every read's latency is recorded, and the wall time of the timed part gives reads/s.
/// Panics (broken setup) on a failed read or a wrong length; the full content is
/// compared on each thread's first read.
pub fn measure(case: &Case, expected: &[u8], plan: Plan) -> Measured {
    let start_line = Barrier::new(plan.threads + 1);
    let (samples, wall) = std::thread::scope(|s| {
        let workers: Vec<_> = (0..plan.threads)
            .map(|_| s.spawn(|| reader_thread(case, expected, plan, &start_line)))
            .collect();
        start_line.wait();
        let started = Instant::now();
        let mut all: Vec<u64> = Vec::with_capacity(plan.threads * plan.ops);
        for w in workers {
            all.extend(w.join().expect("reader thread panicked"));
        }
        (all, started.elapsed())
    });
    let mut m = summarize(case.name, plan.threads, samples, wall);
    m.reads = Some(plan.threads * (plan.ops + plan.warmup));
    m
}

fn reader_thread(case: &Case, expected: &[u8], plan: Plan, start_line: &Barrier) -> Vec<u64> {
    let mut reader = case.reader();
    let mut buf = Vec::with_capacity(4096);
    let read = |reader: &mut Reader, buf: &mut Vec<u8>| {
        let n = reader
            .read_once(buf)
            .unwrap_or_else(|e| panic!("{}: read failed: {e}", case.name));
        assert_eq!(n, expected.len(), "{}: read {n} bytes", case.name);
    };
    read(&mut reader, &mut buf);
    assert!(buf == expected, "{}: wrong bytes", case.name);
    for _ in 1..plan.warmup {
        read(&mut reader, &mut buf);
    }
    let mut samples = Vec::with_capacity(plan.ops);
    start_line.wait();
    for _ in 0..plan.ops {
        let t = Instant::now();
        read(&mut reader, &mut buf);
        samples.push(t.elapsed().as_nanos() as u64);
    }
    samples
}

fn summarize(name: &'static str, threads: usize, mut ns: Vec<u64>, wall: Duration) -> Measured {
    ns.sort_unstable();
    let pick = |q: f64| Duration::from_nanos(ns[((ns.len() - 1) as f64 * q).round() as usize]);
    Measured {
        name,
        threads,
        p50: pick(0.50),
        p99: pick(0.99),
        reads_per_s: ns.len() as f64 / wall.as_secs_f64(),
        daemon_cpu: None,
        reads: None,
    }
}
