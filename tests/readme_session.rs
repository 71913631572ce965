//! The README's "A session" and its `azure-token` subsection, run: every `$ `
//! command of their console blocks runs in one shell against a real
//! `tokenfs mount --dev` (the consent really given to its issuer), and what each
//! prints must have the shape the README shows. Values that differ from run to run
//! (ports, ids, times, sizes other than 0) are normalised on both sides; an elided
//! line (`…`) must still carry every literal part around its elisions.

mod common;

use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

/// The sections whose console blocks are the session, in the order they run.
const SECTIONS: [&str; 2] = [
    "## A session",
    "### `azure-token`: consent once, then tokens on every read",
];

/// Where the README's session mounts.
const DEMO: &str = "/tmp/tokenfs-demo";

/// A command of the README and what the README shows it printing.
#[derive(Debug)]
struct Step {
    command: String,
    expected: Vec<String>,
}

/// Every ```console block of each of [`SECTIONS`], in order, as steps; each
/// section must have at least one, so a renamed heading cannot empty the test.
fn readme_steps() -> Vec<Step> {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let mut steps: Vec<Step> = Vec::new();
    let mut found = [0usize; SECTIONS.len()];
    let mut section: Option<usize> = None;
    let mut in_block = false;
    for line in readme.lines() {
        if in_block {
            if line.starts_with("```") {
                in_block = false;
            } else if let Some(command) = line.strip_prefix("$ ") {
                steps.push(Step {
                    command: command.to_owned(),
                    expected: Vec::new(),
                });
            } else {
                steps
                    .last_mut()
                    .expect("a console block starts with a `$ ` command")
                    .expected
                    .push(line.to_owned());
            }
            continue;
        }
        if line.starts_with('#') {
            section = SECTIONS.iter().position(|s| *s == line);
        } else if line == "```console" {
            if let Some(i) = section {
                found[i] += 1;
                in_block = true;
            }
        }
    }
    for (name, n) in SECTIONS.iter().zip(found) {
        assert!(n > 0, "README section {name:?} has no ```console block");
    }
    steps
}

fn is_month(w: &str) -> bool {
    [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ]
    .contains(&w)
}

/// `HH:MM` (a date of this year in `ls -l`) or `YYYY` (an older one).
fn is_ls_time(w: &str) -> bool {
    let b = w.as_bytes();
    (b.len() == 5 && b[2] == b':' && w.chars().filter(char::is_ascii_digit).count() == 4)
        || (b.len() == 4 && b.iter().all(u8::is_ascii_digit))
}

/// RFC 3339 UTC times (`2026-12-01T18:07:27Z`, fractions allowed) become `<time>`.
fn replace_times(s: &str) -> String {
    let c: Vec<char> = s.chars().collect();
    let digits = |from: usize, n: usize| {
        (from..from + n).all(|i| c.get(i).is_some_and(|c| c.is_ascii_digit()))
    };
    let at = |i: usize, ch: char| c.get(i) == Some(&ch);
    let mut out = String::new();
    let mut i = 0;
    while i < c.len() {
        let shape = digits(i, 4)
            && at(i + 4, '-')
            && digits(i + 5, 2)
            && at(i + 7, '-')
            && digits(i + 8, 2)
            && at(i + 10, 'T')
            && digits(i + 11, 2)
            && at(i + 13, ':')
            && digits(i + 14, 2)
            && at(i + 16, ':')
            && digits(i + 17, 2);
        if shape {
            let mut j = i + 19;
            if at(j, '.') {
                j += 1;
                while c.get(j).is_some_and(|c| c.is_ascii_digit()) {
                    j += 1;
                }
            }
            if at(j, 'Z') {
                out += "<time>";
                i = j + 1;
                continue;
            }
        }
        out.push(c[i]);
        i += 1;
    }
    out
}

/// Runs of 8 or more lowercase hex digits (ids, epoch seconds) become `<hex>`.
fn replace_hex(s: &str) -> String {
    let mut out = String::new();
    let mut run = String::new();
    let flush = |run: &mut String, out: &mut String| {
        if run.len() >= 8 {
            *out += "<hex>";
        } else {
            *out += run;
        }
        run.clear();
    };
    for ch in s.chars() {
        if ch.is_ascii_digit() || ('a'..='f').contains(&ch) {
            run.push(ch);
        } else {
            flush(&mut run, &mut out);
            out.push(ch);
        }
    }
    flush(&mut run, &mut out);
    out
}

/// What of a line must agree between the README and a run. Whitespace runs are
/// one space (column widths follow the values); `ls -l` dates, RFC 3339 times,
/// long hex runs and durations (`4m 56s`) are placeholders; every other number is
/// `N`, except a lone `0`: a size or total of 0 is the point of the first `ls -l`
/// (an empty stand-in), so it must not match a real size.
fn normalise(line: &str) -> String {
    let words: Vec<&str> = line.split_whitespace().collect();
    let mut kept: Vec<String> = Vec::new();
    let mut i = 0;
    while i < words.len() {
        if i + 2 < words.len()
            && is_month(words[i])
            && words[i + 1].chars().all(|c| c.is_ascii_digit())
            && is_ls_time(words[i + 2])
        {
            kept.push("<date>".into());
            i += 3;
            continue;
        }
        kept.push(words[i].to_owned());
        i += 1;
    }
    let mut out: Vec<String> = Vec::new();
    for word in kept {
        let word = replace_hex(&replace_times(&word));
        let word = if word == "0" {
            word
        } else {
            let mut w = String::new();
            let mut in_number = false;
            for ch in word.chars() {
                if !ch.is_ascii_digit() {
                    w.push(ch);
                } else if !in_number {
                    w.push('N');
                }
                in_number = ch.is_ascii_digit();
            }
            w
        };
        let is_duration = |w: &str| ["Nh", "Nm", "Ns"].contains(&w);
        if is_duration(&word) {
            if out.last().map(String::as_str) != Some("<duration>") {
                out.push("<duration>".into());
            }
            continue;
        }
        out.push(word);
    }
    out.join(" ")
}

/// [`normalise`] for the literal part of an elided line, which keeps a space at
/// its edges: there it separates it from the elided words.
fn normalise_piece(piece: &str) -> String {
    let mut s = normalise(piece);
    if piece.starts_with(char::is_whitespace) {
        s.insert(0, ' ');
    }
    if piece.ends_with(char::is_whitespace) && !piece.trim().is_empty() {
        s.push(' ');
    }
    s
}

/// Whether `actual` has the shape of the README's `expected` line: equal once
/// normalised, or, where the README elides with `…`, starting with the literal
/// part before the first elision, ending with the one after the last, and holding
/// the ones between in order.
fn line_matches(expected: &str, actual: &str) -> bool {
    let actual = normalise(actual);
    if !expected.contains('…') {
        return normalise(expected) == actual;
    }
    let pieces: Vec<String> = expected.split('…').map(normalise_piece).collect();
    let (first, rest) = pieces.split_first().unwrap();
    let (last, middle) = rest.split_last().unwrap();
    let Some(mut tail) = actual.strip_prefix(first.as_str()) else {
        return false;
    };
    for piece in middle {
        match tail.find(piece.as_str()) {
            Some(at) => tail = &tail[at + piece.len()..],
            None => return false,
        }
    }
    tail.len() >= last.len() && tail.ends_with(last.as_str())
}

/// `ls` without options prints columns on a terminal and one name a line into a
/// pipe: only the names and their order count.
fn is_plain_ls(command: &str) -> bool {
    let mut words = command.split_whitespace();
    words.next() == Some("ls") && words.all(|w| !w.starts_with('-'))
}

/// Why `actual` (a command's output) does not have the shape of `step`'s, if not.
fn mismatch(step: &Step, actual: &str) -> Option<String> {
    let got: Vec<&str> = actual.lines().collect();
    if is_plain_ls(&step.command) {
        let want: Vec<&str> = step
            .expected
            .iter()
            .flat_map(|l| l.split_whitespace())
            .collect();
        let got: Vec<&str> = got.iter().flat_map(|l| l.split_whitespace()).collect();
        return (want != got).then(|| format!("names {got:?}, the README shows {want:?}"));
    }
    if got.len() != step.expected.len() {
        return Some(format!(
            "{} lines, the README shows {}",
            got.len(),
            step.expected.len()
        ));
    }
    for (want, got) in step.expected.iter().zip(&got) {
        if !line_matches(want, got) {
            return Some(format!(
                "line\n  {got}\nnormalised\n  {}\ndoes not have the shape of the README's\n  {want}\nnormalised\n  {}",
                normalise(got),
                want.split('…').map(normalise_piece).collect::<Vec<_>>().join("…")
            ));
        }
    }
    None
}

#[test]
fn the_readme_session_prints_what_the_readme_shows() {
    if !fuse_available("the_readme_session_prints_what_the_readme_shows") {
        return;
    }
    let steps = readme_steps();
    let tmp = tempdir();
    let demo = tmp.path().join("tokenfs-demo");
    let demo_str = demo.to_str().unwrap();
    let _mount = Mount::start_at(&demo, &["--dev"]);

    // One shell, so `export` and plain variables carry from command to command as
    // at a prompt. A separator before each command splits the output; the pause is
    // the person reading the last output, and the README's promise that consent
    // takes effect within a second relies on it.
    let mut script = String::from("exec 2>&1\n");
    for step in &steps {
        script += "printf '\\036\\n'\nsleep 1.1\n";
        script += &step.command.replace(DEMO, demo_str);
        script.push('\n');
    }
    let bin_dir = std::path::Path::new(BIN).parent().unwrap();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out_file = tmp.path().join("session.out");
    let sh = Command::new("sh")
        .args(["-c", &script])
        .current_dir(tmp.path())
        .env("PATH", path)
        .env("STATE_DIRECTORY", state_dir())
        .env("RUNTIME_DIRECTORY", runtime_dir())
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_file).unwrap())
        .stderr(Stdio::null())
        // Its own group, so that a hung command goes with the shell.
        .process_group(0)
        .spawn()
        .unwrap();
    /// Ends the shell's group if it still runs (checked first: once reaped, its
    /// PID may be another process's).
    struct Session(std::process::Child);
    impl Drop for Session {
        fn drop(&mut self) {
            if self.0.try_wait().ok().flatten().is_none() {
                unsafe { libc::kill(-(self.0.id() as i32), libc::SIGKILL) };
                let _ = self.0.wait();
            }
        }
    }
    let mut sh = Session(sh);
    let limit = Duration::from_secs(30 + 3 * steps.len() as u64);
    eventually(limit, "the session's commands", || sh.0.try_wait().unwrap());

    let output = std::fs::read_to_string(&out_file)
        .unwrap()
        .replace(demo_str, DEMO);
    let mut outputs = output.split("\u{1e}\n");
    assert_eq!(outputs.next(), Some(""), "output before the first command");
    let outputs: Vec<&str> = outputs.collect();
    assert_eq!(outputs.len(), steps.len(), "{output}");
    let mut failures = Vec::new();
    for (step, actual) in steps.iter().zip(&outputs) {
        if let Some(why) = mismatch(step, actual) {
            failures.push(format!("$ {}\n{actual}-> {why}", step.command));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} README commands print something else:\n\n{}",
        failures.len(),
        steps.len(),
        failures.join("\n\n")
    );
}

/// The README's own outputs have their shape, and a wrong line does not: the
/// comparison cannot pass whatever a command prints.
#[test]
fn the_comparison_rejects_a_wrong_line() {
    let steps = readme_steps();
    let step = |prefix: &str| {
        steps
            .iter()
            .find(|s| s.command.starts_with(prefix))
            .unwrap_or_else(|| panic!("no README command starts with {prefix:?}"))
    };
    let as_printed = |s: &Step| {
        s.expected
            .iter()
            .map(|l| format!("{l}\n"))
            .collect::<String>()
    };
    for s in &steps {
        // An elided line still holds its literal parts; `…` fills in nothing.
        let printed = as_printed(s).replace('…', "");
        assert_eq!(mismatch(s, &printed), None, "$ {}", s.command);
    }

    let first_ls = step("ls -l");
    let good = as_printed(first_ls);
    for wrong in [
        // A size where the README shows the empty stand-in.
        good.replace("root 0 ", "root 982 "),
        // The stat failure the stand-in replaced.
        good.replacen(
            "-r-------- 1 root root 0 Dec  1 18:02 azure-token",
            "-????????? ? ?    ?      ?            ? azure-token",
            1,
        ),
        // One file more.
        format!("{good}-r-------- 1 root root 249 Dec  1 18:02 azure-token.consent-url\n"),
        // The files in another order.
        good.replace("azure-token", "x")
            .replace(" token", " azure-token")
            .replace(" x", " token"),
    ] {
        assert_ne!(wrong, good);
        assert!(mismatch(first_ls, &wrong).is_some(), "accepted:\n{wrong}");
    }

    let claims = step("cat $DOMINO_TOKEN_FILE");
    let good = as_printed(claims).replace('…', "");
    for wrong in [
        good.replace(
            "\"preferred_username\":\"dev-user\"",
            "\"preferred_username\":\"alice\"",
        ),
        good.replace("\"azp\":", "\"client\":"),
        good.replace(
            "\"iss\":\"http://127.0.0.1:",
            "\"iss\":\"https://127.0.0.1:",
        ),
        String::new(),
    ] {
        assert!(mismatch(claims, &wrong).is_some(), "accepted:\n{wrong}");
    }

    let failed_read = steps
        .iter()
        .find(|s| s.command == "cat /tmp/tokenfs-demo/azure-token")
        .unwrap();
    let wrong = as_printed(failed_read).replace("Required key not available", "Key has expired");
    assert!(mismatch(failed_read, &wrong).is_some());

    let names = step("ls /tmp/tokenfs-demo");
    let wrong = as_printed(names).replace("  token.expires", "");
    assert!(mismatch(names, &wrong).is_some());

    let status = step("tokenfs status");
    let good = as_printed(status);
    assert!(mismatch(status, &good.replace("fresh ", "expired ")).is_some());
    assert!(mismatch(status, &good.replace("4m 56s", "-")).is_some());
    // A duration is a duration, whole minutes too.
    assert_eq!(mismatch(status, &good.replace("4m 56s", "5m")), None);
}
