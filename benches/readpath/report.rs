//! The one table, the other figures, and each target with PASS/MISS. A MISS is
//! reported, never a failure: the numbers are the product.

use std::time::Duration;

use crate::latency::Measured;
use crate::python::{PyResults, READERS};

pub const TMPFS: &str = "tmpfs";
pub const NAIVE: &str = "naive FUSE (open→daemon)";
pub const TOKENFS: &str = "tokenfs warm";
pub const TOKENFS_KERNEL_OPENS: &str = "tokenfs --kernel-opens";
pub const HTTP: &str = "loopback HTTP";
/// Table order: the floor, the textbook design, ours, the API proxy.
const ORDER: [&str; 5] = [TMPFS, NAIVE, TOKENFS, TOKENFS_KERNEL_OPENS, HTTP];

pub struct Cold {
    pub read: Duration,
    pub upstream: Duration,
    pub runs: usize,
}

pub struct Coalescing {
    pub readers: usize,
    pub upstream_requests: u64,
    pub failed_reads: usize,
    pub identical: bool,
}

/// RSS figures (KiB) of the 101-file daemon (`token` + 100 churning files), and of
/// the one-file daemon of the latency runs for scale.
pub struct Memory {
    pub one_file_kib: u64,
    pub at_mount_kib: u64,
    pub after_reads_kib: u64,
    pub after_issue_kib: u64,
    pub after_refreshes_kib: u64,
    pub after_more_refreshes_kib: u64,
    pub warm_reads: usize,
    pub refreshes: u64,
    pub more_refreshes: u64,
    pub refresh_wait: Duration,
}

pub struct Results {
    pub latency: Vec<Measured>,
    /// None without a `python3`.
    pub python: Option<PyResults>,
    pub cold: Cold,
    pub coalescing: Coalescing,
    pub memory: Memory,
    pub mount_to_read: Duration,
    pub mount_runs: usize,
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "PASS"
    } else {
        "MISS"
    }
}

impl Results {
    fn find(&self, name: &str, threads: usize) -> &Measured {
        self.latency
            .iter()
            .find(|m| m.name == name && m.threads == threads)
            .unwrap_or_else(|| panic!("no result for {name} × {threads}"))
    }

    /// `tokenfs` p50 / `other` p50 at the same concurrency.
    fn ratio(&self, tokenfs: &str, other: &str, threads: usize) -> f64 {
        us(self.find(tokenfs, threads).p50) / us(self.find(other, threads).p50)
    }

    fn thread_counts(&self) -> Vec<usize> {
        let mut t: Vec<usize> = self.latency.iter().map(|m| m.threads).collect();
        t.dedup();
        t
    }

    pub fn print(&self) {
        println!();
        println!("tokenfs read-path benchmark (1 KB token, same machine, one run)");
        self.print_table();
        self.print_daemon_cpu();
        if let Some(py) = &self.python {
            print_python(py);
        }
        self.print_figures();
        println!();
        println!("targets");
        self.print_targets();
    }

    fn print_table(&self) {
        println!(
            "{:<26}{:>7}{:>10}{:>10}{:>12}{:>10}{:>10}{:>10}",
            "case", "threads", "p50 µs", "p99 µs", "reads/s", "vs tmpfs", "vs naive", "vs http"
        );
        for threads in self.thread_counts() {
            for name in ORDER {
                let m = self.find(name, threads);
                let ratios = if name == TOKENFS || name == TOKENFS_KERNEL_OPENS {
                    [TMPFS, NAIVE, HTTP].map(|o| format!("{:.2}x", self.ratio(name, o, threads)))
                } else {
                    ["-", "-", "-"].map(String::from)
                };
                println!(
                    "{:<26}{:>7}{:>10.1}{:>10.1}{:>12.0}{:>10}{:>10}{:>10}",
                    name,
                    threads,
                    us(m.p50),
                    us(m.p99),
                    m.reads_per_s,
                    ratios[0],
                    ratios[1],
                    ratios[2]
                );
            }
        }
        println!("(ratios = tokenfs p50 / that case's p50; < 1 means tokenfs is faster)");
    }

    /// The daemon's CPU per read, next to the read's p50: the rest is the kernel's.
    fn print_daemon_cpu(&self) {
        let mut parts = Vec::new();
        for threads in self.thread_counts() {
            for name in [TOKENFS, TOKENFS_KERNEL_OPENS] {
                let m = self.find(name, threads);
                if let (Some(cpu), Some(reads)) = (m.daemon_cpu, m.reads) {
                    parts.push(format!(
                        "{name} × {threads}: {:.2} µs",
                        us(cpu) / reads.max(1) as f64
                    ));
                }
            }
        }
        if !parts.is_empty() {
            println!(
                "daemon CPU per read (warm-up included): {}",
                parts.join(", ")
            );
        }
    }

    fn cold_overhead_us(&self) -> f64 {
        us(self.cold.read) - us(self.cold.upstream)
    }

    fn growth_kib(&self) -> i64 {
        self.memory.after_refreshes_kib as i64 - self.memory.after_reads_kib as i64
    }

    fn print_figures(&self) {
        let (c, k, m) = (&self.cold, &self.coalescing, &self.memory);
        println!(
            "cold read: median {:.2} ms, upstream alone {:.2} ms, overhead {:.0} µs ({} runs each)",
            ms(c.read),
            ms(c.upstream),
            self.cold_overhead_us(),
            c.runs
        );
        println!(
            "coalescing: {} concurrent readers → {} upstream request(s); {} failed reads; bytes {}",
            k.readers,
            k.upstream_requests,
            k.failed_reads,
            if k.identical { "identical" } else { "DIFFER" }
        );
        println!(
            "daemon RSS: {:.1} MiB after {} reads, {:.1} MiB after {} refreshes (growth {} KiB)",
            mib(m.after_reads_kib),
            thousands(m.warm_reads as u64),
            mib(m.after_refreshes_kib),
            thousands(m.refreshes),
            self.growth_kib(),
        );
        println!(
            "  101-file daemon: {:.1} MiB at mount, {:.1} MiB once the 100 files were issued, \
             {:.1} MiB after {} more refreshes ({:+} KiB); {} refreshes took {:.1} s",
            mib(m.at_mount_kib),
            mib(m.after_issue_kib),
            mib(m.after_more_refreshes_kib),
            thousands(m.more_refreshes),
            m.after_more_refreshes_kib as i64 - m.after_refreshes_kib as i64,
            thousands(m.refreshes),
            m.refresh_wait.as_secs_f64()
        );
        println!(
            "  one-file daemon of the latency runs, after all their reads: {:.1} MiB",
            mib(m.one_file_kib)
        );
        println!(
            "mount → first read: median {:.1} ms ({} runs)",
            ms(self.mount_to_read),
            self.mount_runs
        );
    }

    fn print_targets(&self) {
        let line = |what: String, got: String, ok: bool| {
            println!("  {what:<52}{got:<22}{}", verdict(ok));
        };
        for t in self.thread_counts() {
            // The default answers each open (one round trip, so that files
            // without a token can be walked); --kernel-opens does not.
            let r = self.ratio(TOKENFS, NAIVE, t);
            line(
                format!("default faster than naive FUSE ({t} thr)"),
                format!("{:.1}x faster", 1.0 / r),
                r < 1.0,
            );
            let r = self.ratio(TOKENFS_KERNEL_OPENS, TMPFS, t);
            line(
                format!("--kernel-opens p50 ≤ 1.5x tmpfs ({t} thr)"),
                format!("{r:.2}x"),
                r <= 1.5,
            );
            let r = self.ratio(TOKENFS_KERNEL_OPENS, NAIVE, t);
            line(
                format!("--kernel-opens ≥ 10x faster than naive ({t} thr)"),
                format!("{:.1}x faster", 1.0 / r),
                r <= 0.1,
            );
            let r = self.ratio(TOKENFS_KERNEL_OPENS, HTTP, t);
            line(
                format!("--kernel-opens faster than loopback HTTP ({t} thr)"),
                format!("{:.1}x faster", 1.0 / r),
                r < 1.0,
            );
        }
        let o = self.cold_overhead_us();
        line(
            "cold-read overhead ≤ 1 ms".into(),
            format!("{o:.0} µs"),
            o <= 1000.0,
        );
        let k = &self.coalescing;
        line(
            format!("{} readers → exactly 1 upstream request", k.readers),
            format!("{} (identical: {})", k.upstream_requests, k.identical),
            k.upstream_requests == 1 && k.identical && k.failed_reads == 0,
        );
        let peak = self
            .memory
            .after_reads_kib
            .max(self.memory.after_refreshes_kib);
        line(
            "daemon RSS ≤ 16 MiB".into(),
            format!("{:.1} MiB", mib(peak)),
            peak <= 16 * 1024,
        );
        let g = self.growth_kib();
        line(
            format!(
                "RSS growth over {} refreshes < 1 MiB",
                thousands(self.memory.refreshes)
            ),
            format!("{g} KiB"),
            g < 1024 && self.memory.refreshes >= 1000,
        );
        let m = ms(self.mount_to_read);
        line(
            "mount → first read ≤ 200 ms".into(),
            format!("{m:.1} ms"),
            m <= 200.0,
        );
    }
}

fn print_python(py: &PyResults) {
    println!();
    println!(
        "{}: one process per cell, {} timed calls each; p50 µs (mean)",
        py.version,
        thousands(py.iterations as u64)
    );
    print!("{:<36}", "reader");
    for t in &py.targets {
        print!("{t:>24}");
    }
    println!();
    for (i, (label, timings)) in py.rows.iter().enumerate() {
        if i == READERS.len() {
            println!("requests the daemon answers itself (tmpfs: the kernel alone)");
        }
        print!("{label:<36}");
        for t in timings {
            print!("{:>24}", format!("{:.1} ({:.1})", us(t.p50), us(t.mean)));
        }
        println!();
    }
    // The floor of a round trip: the ioctl the daemon answers at once, less
    // what the same call costs on tmpfs.
    if let Some((_, ioctl)) = py.rows.last() {
        let floor: Vec<String> = ioctl
            .iter()
            .zip(&py.targets)
            .skip(1)
            .map(|(t, name)| format!("{name} {:.1} µs", us(t.p50) - us(ioctl[0].p50)))
            .collect();
        println!(
            "round-trip floor (ioctl p50 minus tmpfs): {}",
            floor.join(", ")
        );
    }
}

/// 1000000 → "1,000,000".
pub fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}
