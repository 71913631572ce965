//! What operators look at: `.metrics` and the opt-in HTTP listener (Prometheus
//! text that moves with reads and refreshes, `/healthz`), and logs (JSON lines and
//! the systemd journal) carrying one `refresh` span per upstream request, never a
//! token. All against real mounts and processes.

mod common;

use std::collections::BTreeMap;
use std::os::unix::net::UnixDatagram;
use std::process::Command;
use std::time::Duration;

use common::*;

/// Samples of a Prometheus text document, checked line by line: every sample's
/// family has `# TYPE` (a histogram's `_bucket`, `_sum` and `_count` belong to
/// it), names and labels are well-formed, values are numbers.
fn parse_prometheus(text: &str) -> BTreeMap<String, f64> {
    let mut typed = BTreeMap::new();
    let mut samples = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split(' ');
            let name = parts.next().unwrap();
            let kind = parts.next().unwrap();
            assert!(["counter", "gauge", "histogram"].contains(&kind), "{line}");
            typed.insert(name.to_owned(), kind.to_owned());
            continue;
        }
        if line.starts_with("# HELP ") {
            continue;
        }
        assert!(
            !line.is_empty() && !line.starts_with('#'),
            "stray line {line:?}"
        );
        let (series, value) = line.rsplit_once(' ').expect("name and value");
        let name = series.split('{').next().unwrap();
        assert!(
            name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "{line}"
        );
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .filter_map(|suffix| name.strip_suffix(suffix))
            .find(|f| typed.get(*f).is_some_and(|k| k == "histogram"))
            .unwrap_or(name);
        assert!(typed.contains_key(family), "no # TYPE before {line}");
        if name.ends_with("_bucket") && family != name {
            assert!(series.contains(",le=\""), "a bucket without le: {line}");
        }
        if let Some(labels) = series.strip_prefix(name) {
            if !labels.is_empty() {
                let inner = labels.strip_prefix('{').and_then(|l| l.strip_suffix('}'));
                for pair in inner.expect("{labels}").split(',') {
                    let (k, v) = pair.split_once('=').expect("label=value");
                    assert!(k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'));
                    assert!(v.starts_with('"') && v.ends_with('"'), "{line}");
                }
            }
        }
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("value in {line}"));
        samples.insert(series.to_owned(), value);
    }
    samples
}

#[test]
fn metrics_parse_as_prometheus_text_and_move_with_reads_and_refreshes() {
    if !fuse_available("metrics_parse_as_prometheus_text_and_move_with_reads_and_refreshes") {
        return;
    }
    let m = Mount::start(&["--dev", "--dev-lifetime", "40s"]);
    let metrics = || parse_prometheus(&m.read_string(".metrics"));
    let ok = r#"tokenfs_refreshes_total{file="token",outcome="ok"}"#;
    let before = metrics();
    assert_eq!(before[ok], 0.0);
    assert!(!before.contains_key(r#"tokenfs_token_expiry_seconds{file="token"}"#));
    assert_eq!(
        before[r#"tokenfs_consent_required{file="azure-token"}"#],
        0.0
    );

    assert_eq!(before[r#"tokenfs_reads_total{file="token"}"#], 0.0);
    assert_eq!(
        before[r#"tokenfs_upstream_request_duration_seconds_count{file="token"}"#],
        0.0
    );

    m.read("token").unwrap();
    assert_eq!(errno(m.read("azure-token")), libc::ENOKEY);
    let after = metrics();
    assert_eq!(after[ok], 1.0);
    // The first read of a file reaches the daemon (the page cache was empty).
    assert!(after[r#"tokenfs_reads_total{file="token"}"#] >= 1.0);
    assert_histogram(
        &after,
        "tokenfs_upstream_request_duration_seconds",
        "token",
        1.0,
    );
    let left = after[r#"tokenfs_token_expiry_seconds{file="token"}"#];
    assert!(left > 30.0 && left <= 40.0, "{left}");
    assert_eq!(
        after[r#"tokenfs_consent_required{file="azure-token"}"#],
        1.0
    );
    assert_eq!(
        after[r#"tokenfs_file_healthy{file="azure-token"}"#], 1.0,
        "waiting on consent is not a failing upstream"
    );
    assert_eq!(after[r#"tokenfs_file_healthy{file="token"}"#], 1.0);
    assert!(after[r#"tokenfs_refreshes_total{file="azure-token",outcome="error"}"#] >= 1.0);

    // Refresh-ahead at ~80 % of 40 s replaces the token: the counter moves.
    eventually(Duration::from_secs(45), "a refresh", || {
        (metrics()[ok] >= 2.0).then_some(())
    });
    let text = m.read_string(".metrics");
    assert!(!text.contains("eyJ"), "no token in .metrics");
}

#[test]
fn json_logs_are_one_object_per_line_without_tokens() {
    if !fuse_available("json_logs_are_one_object_per_line_without_tokens") {
        return;
    }
    let mut m = Mount::start(&["--dev", "--log-format", "json"]);
    let token = m.read_string("token");
    assert!(m.stop().success());
    let log = m.proc.stderr();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert!(lines
        .iter()
        .all(|l| l["level"].is_string() && l["message"].is_string()));
    // The refresh span carries the file, its source, outcome, latency, exp and jti.
    let obtained = lines
        .iter()
        .find(|l| l["message"] == "token obtained" && l["span"]["file"] == "token")
        .unwrap_or_else(|| panic!("no 'token obtained' line in a refresh span:\n{log}"));
    let span = &obtained["span"];
    assert_eq!(span["name"], "refresh", "{obtained}");
    assert_eq!(span["outcome"], "ok", "{obtained}");
    assert_eq!(span["trigger"], "read", "{obtained}");
    assert!(span["source"]
        .as_str()
        .unwrap()
        .starts_with("http://127.0.0.1:"));
    assert!(span["latency_ms"].is_u64(), "{obtained}");
    assert!(
        span["jti"].is_string() && span["exp"].is_string(),
        "{obtained}"
    );
    assert!(obtained["sub"].is_string(), "{obtained}");
    assert!(!log.contains(&token), "the token is in the log");
}

/// A histogram family for one file: cumulative buckets ending at `+Inf`, which
/// equals `_count`.
fn assert_histogram(samples: &BTreeMap<String, f64>, name: &str, file: &str, count: f64) {
    let prefix = format!("{name}_bucket{{file=\"{file}\",le=\"");
    let buckets: Vec<f64> = samples
        .iter()
        .filter(|(k, _)| k.starts_with(&prefix))
        .map(|(_, v)| *v)
        .collect();
    assert!(buckets.len() > 5, "buckets of {name}: {samples:?}");
    let inf = samples[&format!("{prefix}+Inf\"}}")];
    assert_eq!(inf, count, "+Inf bucket");
    assert_eq!(samples[&format!("{name}_count{{file=\"{file}\"}}")], count);
    assert!(buckets.iter().all(|b| *b <= inf), "cumulative: {buckets:?}");
    assert!(samples[&format!("{name}_sum{{file=\"{file}\"}}")] >= 0.0);
}

/// The address the daemon logged for its metrics listener.
fn listener_address(m: &Mount) -> String {
    eventually(
        Duration::from_secs(10),
        "the metrics listener's address",
        || {
            let log = m.proc.stderr();
            let line = log.lines().find(|l| l.contains("serving /metrics"))?;
            let addr = line.split("addr=").nth(1)?.split_whitespace().next()?;
            Some(addr.to_owned())
        },
    )
}

#[test]
fn the_metrics_listener_serves_metrics_and_health_over_http() {
    if !fuse_available("the_metrics_listener_serves_metrics_and_health_over_http") {
        return;
    }
    let m = Mount::start(&["--dev", "--metrics-listen", "127.0.0.1:0"]);
    let base = format!("http://{}", listener_address(&m));
    let http = reqwest::blocking::Client::new();
    let get = |path: &str| {
        let r = http.get(format!("{base}{path}")).send().expect("GET");
        let status = r.status().as_u16();
        let kind = r
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_owned());
        (status, kind, r.text().unwrap())
    };

    let (status, kind, body) = get("/metrics");
    assert_eq!(status, 200);
    assert_eq!(
        kind.as_deref(),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    let ok = r#"tokenfs_refreshes_total{file="token",outcome="ok"}"#;
    assert_eq!(parse_prometheus(&body)[ok], 0.0);
    assert_eq!(get("/healthz").0, 200, "alive before any read");

    let token = m.read_string("token");
    let (_, _, body) = get("/metrics");
    let samples = parse_prometheus(&body);
    assert_eq!(samples[ok], 1.0);
    assert_histogram(
        &samples,
        "tokenfs_upstream_request_duration_seconds",
        "token",
        1.0,
    );
    assert!(!body.contains(&token));

    // azure-token needs consent: still alive, and ready (it waits on its user).
    assert_eq!(errno(m.read("azure-token")), libc::ENOKEY);
    let (status, _, body) = get("/healthz");
    assert_eq!((status, body.as_str()), (200, "ok\n"));
    let ready = eventually(Duration::from_secs(10), "ready", || {
        let (status, _, body) = get("/readyz");
        (status == 200).then_some(body)
    });
    assert_eq!(ready, "ready\n");
    assert_eq!(get("/nothing").0, 404);
}

#[test]
fn metrics_listen_takes_a_port_an_address_or_a_socket_and_says_so_otherwise() {
    // A taken port does not stop the mount: tests/hostile.rs.
    for bad in ["localhost:x", "unix:relative.sock"] {
        let out = run(&["mount", "--dev", "--metrics-listen", bad]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(err.contains("--metrics-listen"), "{err}");
        assert!(
            err.contains("neither a port") || err.contains("absolute path"),
            "{err}"
        );
    }
}

/// One journal entry in the native protocol: `KEY=value\n`, or `KEY\n`, a
/// little-endian u64 length, the value and `\n`.
fn journal_entry(mut datagram: &[u8]) -> BTreeMap<String, String> {
    let mut fields = BTreeMap::new();
    while let Some(nl) = datagram.iter().position(|&b| b == b'\n') {
        let line = &datagram[..nl];
        if let Some(eq) = line.iter().position(|&b| b == b'=') {
            let key = String::from_utf8_lossy(&line[..eq]).into_owned();
            fields.insert(key, String::from_utf8_lossy(&line[eq + 1..]).into_owned());
            datagram = &datagram[nl + 1..];
        } else {
            let key = String::from_utf8_lossy(line).into_owned();
            let rest = &datagram[nl + 1..];
            let len = u64::from_le_bytes(rest[..8].try_into().unwrap()) as usize;
            let value = &rest[8..8 + len];
            assert_eq!(rest[8 + len], b'\n', "value of {key} ends with a newline");
            fields.insert(key, String::from_utf8_lossy(value).into_owned());
            datagram = &rest[8 + len + 1..];
        }
    }
    assert!(datagram.is_empty(), "trailing bytes in a journal entry");
    fields
}

/// `--log-format journald` writes to the journal socket, with the refresh span's
/// fields as journal fields. The daemon runs in its own mount namespace whose
/// `/run/systemd/journal` is this test's directory, so the test is the journal.
#[test]
fn journald_entries_carry_the_refresh_span_and_no_token() {
    if !fuse_available("journald_entries_carry_the_refresh_span_and_no_token") {
        return;
    }
    let dir = tempdir();
    let journal_dir = dir.path().join("journal");
    std::fs::create_dir(&journal_dir).unwrap();
    let journal = UnixDatagram::bind(journal_dir.join("socket")).unwrap();
    journal
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mountpoint = dir.path().join("api");
    let copy = dir.path().join("token.read");
    // Bounded: the read loop gives up after ~10 s, `timeout` ends it all at 60 s.
    let script = r#"
        set -e
        mount -t tmpfs tmpfs /run
        mkdir -p /run/systemd/journal
        mount --bind "$1" /run/systemd/journal
        "$2" --log-format journald mount --dev "$3" &
        pid=$!
        i=0
        until cat "$3/token" > "$4" 2>/dev/null; do
            i=$((i + 1))
            if [ "$i" -ge 200 ]; then kill "$pid"; exit 1; fi
            sleep 0.05
        done
        kill -TERM "$pid"
        wait "$pid"
    "#;
    let status = Command::new("timeout")
        .args(["60", "unshare", "--mount", "--propagation", "private"])
        .args(["sh", "-c", script, "sh"])
        .arg(&journal_dir)
        .arg(BIN)
        .arg(&mountpoint)
        .arg(&copy)
        .env("RUST_LOG", "info")
        .status()
        .expect("run unshare");
    assert!(status.success(), "the daemon in its namespace: {status}");
    let token = std::fs::read_to_string(&copy).unwrap();
    assert!(token.len() > 100, "read a token: {token:?}");

    let mut entries = Vec::new();
    let mut buf = vec![0u8; 1 << 16];
    while let Ok(n) = journal.recv(&mut buf) {
        assert!(
            !String::from_utf8_lossy(&buf[..n]).contains(token.trim()),
            "a token reached the journal"
        );
        if n > 0 {
            entries.push(journal_entry(&buf[..n]));
        }
    }
    assert!(
        entries.iter().all(|e| e["SYSLOG_IDENTIFIER"] == "tokenfs"),
        "{entries:?}"
    );
    let obtained = entries
        .iter()
        .find(|e| e.get("MESSAGE").is_some_and(|m| m == "token obtained"))
        .unwrap_or_else(|| panic!("no 'token obtained' entry in {entries:?}"));
    assert_eq!(obtained["SPAN_NAME"], "refresh");
    assert_eq!(obtained["FILE"], "token");
    assert_eq!(obtained["OUTCOME"], "ok");
    assert_eq!(obtained["PRIORITY"], "5", "info is notice");
    assert!(obtained["LATENCY_MS"].parse::<u64>().is_ok());
    assert!(!obtained["JTI"].is_empty() && !obtained["EXP"].is_empty());
    assert!(entries.iter().any(|e| e["MESSAGE"] == "mounted"));
}

/// A rotated refresh token that cannot be saved (its directory vanished) keeps the
/// file serving, but `.status`, `.metrics` and `tokenfs status` say so until a
/// later rotation is saved again.
#[test]
fn an_unsaved_rotated_refresh_token_shows_until_one_is_saved() {
    if !fuse_available("an_unsaved_rotated_refresh_token_shows_until_one_is_saved") {
        return;
    }
    let tmp = tempdir();
    let issuer = DevIssuer::start(&["--rotate-refresh-tokens", "--lifetime", "40s"]);
    let state = tmp.path().join("state");
    let rotated = state.join("offline-token");
    // 10 s of each 40 s token are servable: a refresh (and rotation) every ~8 s.
    let extra = format!(
        "min_valid = \"30s\"\nrotated_refresh_token_file = \"{}\"",
        rotated.display()
    );
    let config = issuer.config(tmp.path(), "", &extra);
    let m = Mount::start_at(
        &tmp.path().join("api"),
        &["--config", config.to_str().unwrap()],
    );
    let gauge = || parse_prometheus(&m.read_string(".metrics"))[r#"tokenfs_refresh_token_unsaved{file="token"}"#];

    m.read("token").unwrap();
    assert!(
        rotated.exists(),
        "the first rotation is saved (its directory made at start)"
    );
    assert_eq!(gauge(), 0.0);

    // A directory others may write is refused (also by the daemon's held
    // descriptor): nothing is saved until it is root's alone again.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o777)).unwrap();
    let why = eventually(
        Duration::from_secs(30),
        "a rotation that cannot be saved",
        || {
            m.file_status("token")["unsaved_refresh_token"]
                .as_str()
                .map(str::to_owned)
        },
    );
    assert!(
        why.contains("writable by users other than root")
            && why.contains(&rotated.display().to_string()),
        "{why}"
    );
    assert_eq!(gauge(), 1.0);
    assert_eq!(m.file_status("token")["state"], "fresh", "still serving");
    let out = run(&["status", m.dir.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0));
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains("WARNING token: the rotated refresh token is not saved"),
        "{table}"
    );

    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o700)).unwrap();
    eventually(Duration::from_secs(30), "a rotation saved again", || {
        m.file_status("token")["unsaved_refresh_token"]
            .is_null()
            .then_some(())
    });
    assert!(rotated.exists());
    assert_eq!(gauge(), 0.0);
}

/// Readiness and liveness for an upstream that is down and for consent
/// pending: `tokenfs wait` fails naming the file and why, `/readyz` is 503
/// with the reason, `tokenfs status` exits 1; `/healthz` and `wait --live` say
/// the daemon works. Waiting on consent is ready.
#[test]
fn readiness_follows_the_upstreams_and_liveness_only_the_daemon() {
    if !fuse_available("readiness_follows_the_upstreams_and_liveness_only_the_daemon") {
        return;
    }
    // Nothing listens on this port: the token endpoint is down.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = dead.local_addr().unwrap().port();
    drop(dead);
    let tmp = tempdir();
    let secret = tmp.path().join("secret");
    write_file(&secret, "s3cret", 0o600);
    let config = tmp.path().join("config.toml");
    write_file(
        &config,
        &format!(
            "[files.token]\nsource = \"oauth2\"\ngrant = \"client_credentials\"\n\
             token_url = \"http://127.0.0.1:{port}/token\"\nclient_id = \"c\"\n\
             client_secret_file = \"{}\"\n",
            secret.display()
        ),
        0o600,
    );
    let m = Mount::start(&[
        "--config",
        config.to_str().unwrap(),
        "--metrics-listen",
        "127.0.0.1:0",
    ]);
    let dir = m.dir.to_str().unwrap();
    let out = run(&["wait", dir, "--timeout", "3s"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("is not ready after 3s: token: upstream unavailable"),
        "{err}"
    );
    assert!(run(&["wait", dir, "--live", "--timeout", "3s"])
        .status
        .success());
    assert_eq!(run(&["status", dir]).status.code(), Some(1));
    let base = format!("http://{}", listener_address(&m));
    let get = |path: &str| {
        let r = reqwest::blocking::get(format!("{base}{path}")).unwrap();
        (r.status().as_u16(), r.text().unwrap())
    };
    let (status, body) = get("/readyz");
    assert_eq!(status, 503);
    assert!(
        body.starts_with("not ready: token: upstream unavailable"),
        "{body}"
    );
    assert_eq!(get("/healthz"), (200, "ok\n".to_owned()));

    // --dev: token served, azure-token waits on consent: ready.
    let dev = Mount::start(&["--dev"]);
    let out = run(&["wait", dev.dir.to_str().unwrap(), "--timeout", "20s"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(dev.file_status("azure-token")["state"], "consent_required");
    assert_eq!(dev.file_status("token")["state"], "fresh");
    assert_eq!(
        run(&["status", dev.dir.to_str().unwrap()]).status.code(),
        Some(0)
    );
}
