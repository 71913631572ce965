//! `tokenfs completions` and `tokenfs man`, run as the real binary: the scripts are
//! what each shell loads (bash even completes with it), the pages are roff that
//! documents every command. `.ci/package` packs exactly this output into the .deb.

mod common;

use std::collections::BTreeSet;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use common::run;

/// The commands a user types; every script and page must know them.
const COMMANDS: [&str; 5] = ["mount", "status", "check", "wait", "unmount"];

/// `tokenfs <args>`, which must succeed with nothing on stderr; its stdout.
fn stdout_of(args: &[&str]) -> String {
    let out = run(args);
    assert!(
        out.status.success(),
        "tokenfs {args:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8")
}

fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Run `shell args…` with `input` on stdin; its output.
fn shell(shell: &str, args: &[&str], input: &str) -> Output {
    let mut child = Command::new(shell)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {shell}: {e}"));
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

/// What bash completes for `words` (the last one is being completed), with the
/// script loaded the way bash-completion loads it.
fn bash_complete(script: &str, words: &[&str]) -> Vec<String> {
    let quoted: Vec<String> = words.iter().map(|w| format!("'{w}'")).collect();
    let cword = words.len() - 1;
    let program = format!(
        "{script}\n\
         COMP_WORDS=({words}); COMP_CWORD={cword}\n\
         COMP_LINE=\"${{COMP_WORDS[*]}}\"; COMP_POINT=${{#COMP_LINE}}\n\
         _tokenfs tokenfs \"${{COMP_WORDS[COMP_CWORD]}}\" \"${{COMP_WORDS[COMP_CWORD-1]}}\"\n\
         printf '%s\\n' \"${{COMPREPLY[@]}}\"\n",
        words = quoted.join(" "),
    );
    let out = shell("bash", &["--norc", "--noprofile"], &program);
    assert!(
        out.status.success(),
        "bash: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
fn bash_completion_is_valid_bash_and_completes_commands_and_options() {
    let script = stdout_of(&["completions", "bash"]);
    let syntax = shell("bash", &["-n"], &script);
    assert!(
        syntax.status.success(),
        "bash -n rejects the script: {}",
        String::from_utf8_lossy(&syntax.stderr)
    );
    assert!(
        script.contains("complete -F _tokenfs"),
        "no `complete -F _tokenfs` registration:\n{script}"
    );

    let commands = bash_complete(&script, &["tokenfs", ""]);
    for command in COMMANDS {
        assert!(
            commands.iter().any(|c| c == command),
            "`tokenfs <TAB>` lacks {command}: {commands:?}"
        );
    }
    assert_eq!(
        bash_complete(&script, &["tokenfs", "mount", "--con"]),
        ["--config"]
    );
    let dev: BTreeSet<String> = bash_complete(&script, &["tokenfs", "mount", "--dev"])
        .into_iter()
        .collect();
    assert!(
        dev.contains("--dev") && dev.contains("--dev-lifetime"),
        "{dev:?}"
    );
    assert_eq!(
        bash_complete(&script, &["tokenfs", "check", "--t"]),
        ["--timeout"]
    );
    let shells: BTreeSet<String> = bash_complete(&script, &["tokenfs", "completions", ""])
        .into_iter()
        .collect();
    for s in ["bash", "zsh", "fish", "elvish", "powershell"] {
        assert!(
            shells.contains(s),
            "`completions <TAB>` lacks {s}: {shells:?}"
        );
    }
}

#[test]
fn zsh_completion_is_a_compdef_for_tokenfs_with_every_command() {
    let script = stdout_of(&["completions", "zsh"]);
    assert_eq!(script.lines().next(), Some("#compdef tokenfs"));
    for command in COMMANDS {
        assert!(
            script.contains(&format!("'{command}:")),
            "zsh script lacks the {command} command"
        );
    }
    for option in ["--config", "--dev", "--direct-io", "--timeout"] {
        assert!(script.contains(&format!("'{option}")), "zsh lacks {option}");
    }
    if have("zsh") {
        let out = shell("zsh", &["-n"], &script);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    } else {
        eprintln!("zsh not installed: syntax not checked by zsh -n");
    }
}

#[test]
fn fish_completion_completes_every_command_and_option() {
    let script = stdout_of(&["completions", "fish"]);
    for command in COMMANDS {
        assert!(
            script.lines().any(|l| l.starts_with("complete -c tokenfs")
                && l.contains("__fish_tokenfs_needs_command")
                && l.contains(&format!("-a \"{command}\""))),
            "fish script lacks the {command} command"
        );
    }
    for option in ["config", "dev", "direct-io", "timeout"] {
        assert!(
            script.lines().any(
                |l| l.starts_with("complete -c tokenfs") && l.contains(&format!("-l {option}"))
            ),
            "fish script lacks --{option}"
        );
    }
    if have("fish") {
        let out = shell("fish", &["--no-execute"], &script);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    } else {
        eprintln!("fish not installed: syntax not checked by fish --no-execute");
    }
}

#[test]
fn an_unknown_shell_is_a_usage_error_listing_the_shells() {
    let out = run(&["completions", "tcsh"]);
    assert_eq!(out.status.code(), Some(2), "a usage error");
    assert!(out.stdout.is_empty(), "no script on stdout");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("invalid value 'tcsh'")
            && stderr.contains("[possible values: bash, elvish, fish, powershell, zsh]"),
        "{stderr}"
    );
    let out = run(&["completions"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("<SHELL>"),
        "names the missing argument"
    );
}

/// The `.TH` line of a page: title, section, (empty) date, source, manual.
fn title_line(page: &str) -> &str {
    page.lines()
        .find(|l| l.starts_with(".TH "))
        .expect("a .TH line")
}

/// Sections (`.SH NAME`) of a page, in order.
fn sections(page: &str) -> Vec<&str> {
    page.lines()
        .filter_map(|l| l.strip_prefix(".SH "))
        .map(|s| s.trim_matches('"'))
        .collect()
}

/// groff parses the page without a warning (when groff is installed).
fn groff_accepts(name: &str, page: &str) {
    if !have("groff") {
        eprintln!("groff not installed: {name} not checked by groff");
        return;
    }
    let out = shell("groff", &["-man", "-Tutf8", "-ww", "-z"], page);
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "groff on {name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn man_prints_tokenfs_1_listing_every_command() {
    let page = stdout_of(&["man"]);
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(
        title_line(&page),
        format!(".TH tokenfs 1 \"\" \"tokenfs {version}\" \"tokenfs manual\"")
    );
    assert_eq!(
        sections(&page),
        [
            "NAME",
            "SYNOPSIS",
            "DESCRIPTION",
            "OPTIONS",
            "SUBCOMMANDS",
            "VERSION",
            "FILES",
            "ENVIRONMENT",
            "SEE ALSO"
        ]
    );
    for command in COMMANDS {
        assert!(
            page.contains(&format!("tokenfs\\-{command}(1)")),
            "tokenfs(1) does not list tokenfs-{command}(1)"
        );
    }
    assert!(page.contains("/etc/tokenfs/config.toml"));
    assert!(page.contains("\\-\\-log\\-format"));
    assert!(page.contains("TOKENFS_CONFIG") && page.contains("TOKENFS_MOUNTPOINT"));
    groff_accepts("tokenfs.1", &page);
}

#[test]
fn man_dir_writes_one_page_per_command_with_its_options() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("share/man/man1"); // created, parents too
    let listed = stdout_of(&["man", "--dir", dir.to_str().unwrap()]);

    let names: BTreeSet<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    let expected: BTreeSet<String> = [
        "tokenfs.1",
        "tokenfs-mount.1",
        "tokenfs-status.1",
        "tokenfs-check.1",
        "tokenfs-login.1",
        "tokenfs-consent.1",
        "tokenfs-exec.1",
        "tokenfs-unmount.1",
        "tokenfs-wait.1",
        "tokenfs-dev-issuer.1",
        "tokenfs-completions.1",
        "tokenfs-man.1",
    ]
    .map(String::from)
    .into();
    assert_eq!(names, expected);
    let listed: BTreeSet<String> = listed.lines().map(String::from).collect();
    let paths: BTreeSet<String> = expected
        .iter()
        .map(|n| dir.join(n).display().to_string())
        .collect();
    assert_eq!(listed, paths, "stdout lists each page written");

    let page = |name: &str| std::fs::read_to_string(dir.join(name)).unwrap();
    assert_eq!(
        page("tokenfs.1"),
        stdout_of(&["man"]),
        "the same tokenfs(1)"
    );
    for command in COMMANDS {
        let name = format!("tokenfs-{command}.1");
        let text = page(&name);
        assert!(
            title_line(&text).starts_with(&format!(".TH tokenfs-{command} 1 ")),
            "{name}: {}",
            title_line(&text)
        );
        assert!(sections(&text).contains(&"OPTIONS"), "{name}");
        assert!(
            text.contains("\\fBtokenfs\\fR(1)"),
            "{name} refers to tokenfs(1)"
        );
        groff_accepts(&name, &text);
    }
    let mount = page("tokenfs-mount.1");
    for option in [
        "\\-\\-config",
        "\\-\\-dev",
        "\\-\\-direct\\-io",
        "MOUNTPOINT",
    ] {
        assert!(mount.contains(option), "tokenfs-mount(1) lacks {option}");
    }
    assert!(
        mount.contains("/var/lib/domino/home/.api"),
        "the default mountpoint"
    );
    let check = page("tokenfs-check.1");
    for option in ["\\-\\-config", "\\-\\-timeout"] {
        assert!(check.contains(option), "tokenfs-check(1) lacks {option}");
    }
    for command in ["status", "unmount"] {
        assert!(page(&format!("tokenfs-{command}.1")).contains("MOUNTPOINT"));
    }
}

#[test]
fn man_dir_that_cannot_be_created_is_a_one_line_error() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("a-file");
    std::fs::write(&file, "").unwrap();
    let dir = file.join("man1");
    let out = run(&["man", "--dir", dir.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        stderr.trim_end(),
        format!(
            "tokenfs: error: cannot create the directory {}: Not a directory (os error 20)",
            dir.display()
        )
    );
    assert!(!Path::new(&dir).exists());
}
