//! Shell completions and man pages, generated from the clap definition in
//! [`crate::cli`] (the `completions` and `man` commands), so they can never
//! drift from what the binary accepts. `.ci/package` runs them with the release
//! binary to build the `.deb`'s assets.

use std::io::{self, Write};
use std::path::PathBuf;

use clap::CommandFactory;

use crate::cli::{Cli, CompletionsArgs, ManArgs};

/// The man section of every page (user commands).
const SECTION: &str = "1";

/// Why a page or script could not be written. The io error is part of the message
/// (not a `source`), so `{:#}` prints it once.
#[derive(Debug, thiserror::Error)]
pub enum DocsError {
    #[error("cannot write to stdout: {0}")]
    Stdout(io::Error),
    #[error("cannot create the directory {}: {error}", dir.display())]
    CreateDir { dir: PathBuf, error: io::Error },
    #[error("cannot write {}: {error}", path.display())]
    WriteFile { path: PathBuf, error: io::Error },
}

/// `tokenfs completions SHELL`: the completion script on stdout.
pub fn completions(args: CompletionsArgs) -> Result<(), DocsError> {
    let mut cmd = Cli::command();
    let name = cmd.get_name().to_owned();
    // clap_complete panics on a failed write: render to memory, then write.
    let mut script = Vec::new();
    clap_complete::generate(args.shell, &mut cmd, name, &mut script);
    to_stdout(&script)
}

/// `tokenfs man [--dir DIR]`: tokenfs(1) on stdout, or every page into DIR
/// (each path written is printed, one a line).
pub fn man(args: ManArgs) -> Result<(), DocsError> {
    let pages = man_pages();
    let Some(dir) = args.dir else {
        let (_, top) = &pages[0];
        return to_stdout(top);
    };
    std::fs::create_dir_all(&dir).map_err(|error| DocsError::CreateDir {
        dir: dir.clone(),
        error,
    })?;
    let mut written = String::new();
    for (file, roff) in &pages {
        let path = dir.join(file);
        std::fs::write(&path, roff).map_err(|error| DocsError::WriteFile {
            path: path.clone(),
            error,
        })?;
        written.push_str(&format!("{}\n", path.display()));
    }
    to_stdout(written.as_bytes())
}

/// Every man page as (file name, roff): `tokenfs.1` first, then one
/// `tokenfs-COMMAND.1` per command, in the order of `tokenfs --help`.
pub fn man_pages() -> Vec<(String, Vec<u8>)> {
    // No `help` command in the pages: `--help` is on every page already.
    let mut cmd = Cli::command().disable_help_subcommand(true);
    // Gives each command its display name (`tokenfs-mount`) and usage.
    cmd.build();
    let source = format!("tokenfs {}", cmd.get_version().unwrap_or_default());
    let mut pages = vec![render(&cmd, &source, top_page_extra())];
    pages.extend(
        cmd.get_subcommands()
            .filter(|sub| !sub.is_hide_set())
            .map(|sub| render(sub, &source, see_also(&["tokenfs"]))),
    );
    pages
}

/// One page: clap_mangen's sections, then `extra` (raw roff).
fn render(cmd: &clap::Command, source: &str, extra: String) -> (String, Vec<u8>) {
    let man = clap_mangen::Man::new(cmd.clone()).section(SECTION);
    let mut rendered = Vec::new();
    man.render(&mut rendered)
        .expect("rendering into a Vec<u8> cannot fail");
    let rendered = String::from_utf8(rendered).expect("clap_mangen writes UTF-8");
    // clap_mangen writes an empty date as nothing, which shifts the .TH arguments
    // after it: write the title line with every argument quoted instead. No date,
    // so the pages are the same on every build.
    let title = cmd.get_display_name().unwrap_or_else(|| cmd.get_name());
    let th = format!(".TH {title} {SECTION} \"\" \"{source}\" \"tokenfs manual\"");
    let mut roff = String::with_capacity(rendered.len() + extra.len());
    for line in rendered.lines() {
        roff.push_str(if line.starts_with(".TH ") { &th } else { line });
        roff.push('\n');
    }
    roff.push_str(&extra);
    (man.get_filename(), roff.into_bytes())
}

/// FILES, ENVIRONMENT and SEE ALSO of tokenfs(1). Hyphens are `\-` in roff.
fn top_page_extra() -> String {
    let mut roff = String::from(
        ".SH FILES\n\
         .TP\n\
         /etc/tokenfs/config.toml\n\
         The config of \\fBtokenfs mount\\fR and \\fBtokenfs check\\fR (0600, root\\-owned).\n\
         An example is in /usr/share/doc/tokenfs/examples/config.toml when installed from the .deb.\n\
         .TP\n\
         /usr/lib/systemd/system/tokenfs.service\n\
         The systemd unit (installed from the .deb; not enabled until \
         \\fBsystemctl enable \\-\\-now tokenfs\\fR).\n\
         .TP\n\
         /var/lib/domino/home/.api\n\
         The default mountpoint (env TOKENFS_MOUNTPOINT).\n\
         .SH ENVIRONMENT\n\
         .TP\n\
         RUST_LOG\n\
         Log filter, e.g. \\fBdebug\\fR or \\fBtokenfs=trace\\fR (default \\fBinfo\\fR). \
         Logs never contain tokens or secrets.\n\
         .TP\n\
         TOKENFS_LOG_FORMAT\n\
         \\fBtext\\fR, \\fBjson\\fR or \\fBjournald\\fR, as \\-\\-log\\-format.\n\
         .TP\n\
         TOKENFS_METRICS_LISTEN\n\
         Address of the metrics listener, as \\-\\-metrics\\-listen of \\fBmount\\fR.\n\
         .TP\n\
         TOKENFS_CONFIG\n\
         The config file, as \\-\\-config of \\fBmount\\fR and \\fBcheck\\fR.\n\
         .TP\n\
         TOKENFS_MOUNTPOINT\n\
         The mountpoint of \\fBmount\\fR, \\fBstatus\\fR, \\fBwait\\fR and \\fBunmount\\fR.\n",
    );
    roff.push_str(&see_also(&[
        "tokenfs-mount",
        "tokenfs-status",
        "tokenfs-check",
        "tokenfs-wait",
        "tokenfs-unmount",
        "systemctl",
    ]));
    roff
}

/// A SEE ALSO section listing these pages.
fn see_also(pages: &[&str]) -> String {
    let refs: Vec<String> = pages
        .iter()
        .map(|page| format!("\\fB{}\\fR(1)", page.replace('-', "\\-")))
        .collect();
    format!(".SH \"SEE ALSO\"\n{}\n", refs.join(", "))
}

/// Write everything to stdout; a closed pipe (`tokenfs man | head`) is not an error.
fn to_stdout(bytes: &[u8]) -> Result<(), DocsError> {
    let mut out = io::stdout().lock();
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Err(e) if e.kind() != io::ErrorKind::BrokenPipe => Err(DocsError::Stdout(e)),
        _ => Ok(()),
    }
}
