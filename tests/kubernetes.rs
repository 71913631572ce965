//! The README's Kubernetes pod, reproduced without a kubelet: the secret volume
//! and the emptyDir home laid out as the kubelet lays them out, a root of the
//! image's directories in a private mount namespace with its own pid namespace,
//! the container's capability set and groups, and the manifest's `command` run
//! verbatim with its `env`, `args` replaced by a probe. The workload must run as
//! the bare uid with no capability, read a valid token and not the secrets, and
//! its exit status be the pod's; an fsGroup equal to the workload's gid is
//! refused, saying so.

mod common;

use std::os::unix::fs::{chown, symlink, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::*;

/// What the test needs from the README's manifest.
struct Manifest {
    command: Vec<String>,
    env: Vec<(String, String)>,
    fs_group: Option<u32>,
    default_mode: u32,
    add_caps: Vec<String>,
}

/// The ```yaml block after "Kubernetes (the same container" in README.md.
fn readme_manifest() -> Manifest {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let at = readme
        .find("Kubernetes (the same container runs tokenfs and the workload)")
        .expect("the README's Kubernetes manifest");
    let rest = &readme[at..];
    let start = rest.find("```yaml\n").expect("a yaml block") + "```yaml\n".len();
    let block = &rest[start..start + rest[start..].find("```").unwrap()];
    for path in ["mountPath: /etc/tokenfs", "mountPath: /var/lib/domino/home"] {
        assert!(block.contains(path), "the manifest mounts {path}");
    }
    let value = |key: &str| {
        block.lines().find_map(|l| {
            let l = l.split(" #").next().unwrap().trim();
            l.strip_prefix(key).map(|v| v.trim().to_owned())
        })
    };
    let json_list = |key: &str| -> Vec<String> {
        serde_json::from_str(&value(key).unwrap_or_else(|| panic!("{key} in the manifest")))
            .unwrap()
    };
    let mut env = Vec::new();
    let lines: Vec<&str> = block
        .lines()
        .map(|l| l.split(" #").next().unwrap())
        .collect();
    for pair in lines.windows(2) {
        if let (Some(name), Some(v)) = (
            pair[0].trim().strip_prefix("- name: "),
            pair[1].trim().strip_prefix("value: "),
        ) {
            env.push((name.to_owned(), serde_json::from_str(v.trim()).unwrap()));
        }
    }
    Manifest {
        command: json_list("command:"),
        env,
        fs_group: value("fsGroup:").map(|g| g.parse().unwrap()),
        default_mode: u32::from_str_radix(&value("defaultMode:").unwrap(), 8).unwrap(),
        add_caps: json_list("add:"),
    }
}

/// The capabilities containerd, CRI-O and Docker give a container by default;
/// no CAP_DAC_READ_SEARCH among them.
const RUNTIME_DEFAULT_CAPS: [&str; 14] = [
    "chown",
    "dac_override",
    "fsetid",
    "fowner",
    "mknod",
    "net_raw",
    "setgid",
    "setuid",
    "setfcap",
    "setpcap",
    "net_bind_service",
    "sys_chroot",
    "kill",
    "audit_write",
];

/// The kubelet's secret volume and emptyDir, on disk as it leaves them (the
/// same modes, owners and links; a directory in place of its tmpfs):
///
/// - The secret volume wraps an emptyDir of medium Memory: a tmpfs mounted with
///   no `mode=`, so its root is the kernel's default 1777 root:root.
/// - The atomic writer makes a `..<timestamp>.<random>` directory (chmod 0755),
///   writes each key into it with the key's mode (chmod, past the umask:
///   `defaultMode`, 0644 unless set), links `..data` to it, and links each key
///   to `..data/<key>`; all of it root's, the kubelet being root.
/// - With a pod `fsGroup` the ownership pass walks the volume, skipping links:
///   each file and directory gets group fsGroup (its uid kept) and mode
///   `mode | 0440`, directories also setgid and 0110. The emptyDir under the
///   secret first gets the read-write form of that pass (0660) on its root. So
///   keys are `defaultMode | 0440` root:fsGroup, the timestamped directory 2755,
///   the root 3777. Without fsGroup nothing changes: keys `defaultMode`
///   root:root.
/// - The secret volume is mounted read-only into the container.
/// - An emptyDir is a directory made 0777 (sticky only if asked), root's; with
///   fsGroup the read-write pass makes it 2777 root:fsGroup.
/// - The kubelet also gives the container's processes the fsGroup as a
///   supplementary group; `tokenfs exec` drops it for the workload.
struct PodVolumes {
    secret: PathBuf,
    home: PathBuf,
}

impl PodVolumes {
    fn new(dir: &Path, keys: &[(&str, &[u8])], default_mode: u32, fs_group: Option<u32>) -> Self {
        let secret = dir.join("volumes/kubernetes.io~secret/tokenfs-config");
        let home = dir.join("volumes/kubernetes.io~empty-dir/home");
        std::fs::create_dir_all(&secret).unwrap();
        std::fs::create_dir_all(&home).unwrap();
        chmod(&secret, 0o1777);
        if let Some(group) = fs_group {
            // The emptyDir's own setup, before anything is written into it.
            ownership_pass(&secret, group, 0o660);
        }
        let ts = "..2025_06_01_12_00_00.1234567890";
        std::fs::create_dir(secret.join(ts)).unwrap();
        chmod(&secret.join(ts), 0o755);
        for (key, data) in keys {
            std::fs::write(secret.join(ts).join(key), data).unwrap();
            chmod(&secret.join(ts).join(key), default_mode);
        }
        symlink(ts, secret.join("..data")).unwrap();
        for (key, _) in keys {
            symlink(format!("..data/{key}"), secret.join(key)).unwrap();
        }
        chmod(&home, 0o777);
        if let Some(group) = fs_group {
            ownership_pass(&secret, group, 0o440);
            ownership_pass(&home, group, 0o660);
        }
        PodVolumes { secret, home }
    }
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// The kubelet's fsGroup pass over `path` with `mask` (0660 read-write, 0440
/// read-only).
fn ownership_pass(path: &Path, group: u32, mask: u32) {
    let meta = std::fs::symlink_metadata(path).unwrap();
    if meta.file_type().is_symlink() {
        return;
    }
    if meta.is_dir() {
        for entry in std::fs::read_dir(path).unwrap() {
            ownership_pass(&entry.unwrap().path(), group, mask);
        }
    }
    chown(path, Some(meta.uid()), Some(group)).unwrap();
    let extra = if meta.is_dir() { 0o2110 } else { 0 };
    chmod(path, (meta.mode() & 0o7777) | mask | extra);
}

/// Runs as `args`: who it is, what it may do, the token, and whether the secrets
/// are out of its reach.
const PROBE: &str = "echo uid=$(id -u) gid=$(id -g) groups=$(id -G); \
    grep -E '^(Cap(Inh|Prm|Eff|Bnd|Amb)|NoNewPrivs)' /proc/self/status; \
    echo token=$(cat \"$DOMINO_TOKEN_FILE\"); \
    if cat /etc/tokenfs/client-secret >/dev/null 2>&1; then echo secret=readable; \
    else echo secret=unreadable; fi; exit 7";

/// In a private mount namespace: the pod's root (the host's /usr and libraries
/// read-only, /dev, an /etc overlay, tmpfs elsewhere), the volumes mounted where
/// the manifest puts them, then in a new pid namespace (its first process
/// becomes tini, pid 1 as in a container) chroot, the container's environment,
/// groups and capabilities, and the command. After it, any FUSE mount left in
/// the namespace is reported.
const POD: &str = r#"set -euo pipefail
n=$1; shift
envs=("${@:1:$n}"); shift "$n"
R=$POD_ROOT
mount -t tmpfs -o mode=0755 pod-root "$R"
for d in usr bin sbin lib lib32 lib64 libx32; do
  if [ -L "/$d" ]; then ln -s "$(readlink "/$d")" "$R/$d"
  elif [ -d "/$d" ]; then
    mkdir "$R/$d"; mount --rbind "/$d" "$R/$d"; mount -o remount,bind,ro "$R/$d"
  fi
done
mount -t tmpfs -o mode=0755 image-bin "$R/usr/local/bin"
touch "$R/usr/local/bin/tokenfs"; mount --bind "$TOKENFS_BIN" "$R/usr/local/bin/tokenfs"
mkdir -p "$R/dev" "$R/proc" "$R/etc" "$R/tmp" "$R/root" "$R/var/lib/domino/home" "$SCRATCH"
chmod 1777 "$R/tmp"
mount --rbind /dev "$R/dev"
mount -t tmpfs scratch "$SCRATCH"
mkdir "$SCRATCH/upper" "$SCRATCH/work"
mount -t overlay image-etc -o "lowerdir=/etc,upperdir=$SCRATCH/upper,workdir=$SCRATCH/work" "$R/etc"
mkdir -p "$R/etc/tokenfs"
mount --bind "$SECRET_VOLUME" "$R/etc/tokenfs"; mount -o remount,bind,ro "$R/etc/tokenfs"
mount --bind "$HOME_VOLUME" "$R/var/lib/domino/home"
rc=0
unshare --pid --fork bash -c 'mount -t proc proc "$0/proc" && exec chroot "$0" /usr/bin/env -i "$@"' \
  "$R" "${envs[@]}" /usr/bin/setpriv --groups "$POD_GROUPS" --bounding-set "$POD_CAPS" \
  --inh-caps -all -- "$@" || rc=$?
awk -v r="$R/" 'index($5, r) == 1 && / - fuse/ { print "LEFT MOUNTED: " $5 }' /proc/self/mountinfo >&2
exit $rc
"#;

struct Outcome {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// The README's pod with its secret laid out for `fs_group` and `default_mode`.
fn run_pod(issuer: &DevIssuer, fs_group: Option<u32>, default_mode: u32) -> Outcome {
    let manifest = readme_manifest();
    let tmp = tempdir();
    let config = format!(
        "[files.token]\nsource = \"oauth2\"\ntoken_url = \"{}\"\nclient_id = \"tokenfs\"\n\
         client_secret_file = \"/etc/tokenfs/client-secret\"\n\
         refresh_token_file = \"/etc/tokenfs/offline-token\"\n",
        issuer.token_url
    );
    let client_secret = std::fs::read(&issuer.client_secret_file).unwrap();
    let offline = std::fs::read(&issuer.offline_token_file).unwrap();
    let keys: [(&str, &[u8]); 3] = [
        ("config.toml", config.as_bytes()),
        ("client-secret", &client_secret),
        ("offline-token", &offline),
    ];
    let volumes = PodVolumes::new(&tmp.path().join("kubelet"), &keys, default_mode, fs_group);
    let (key, group) = (volumes.secret.join("client-secret"), fs_group.unwrap_or(0));
    let meta = std::fs::metadata(&key).unwrap();
    let want = if fs_group.is_some() {
        default_mode | 0o440
    } else {
        default_mode
    };
    assert_eq!(
        (meta.mode() & 0o7777, meta.uid(), meta.gid()),
        (want, 0, group)
    );
    let root = tmp.path().join("root");
    std::fs::create_dir(&root).unwrap();

    let mut env = vec![
        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_owned(),
        "HOSTNAME=workspace-alice".to_owned(),
        "HOME=/root".to_owned(),
    ];
    env.extend(manifest.env.iter().map(|(k, v)| format!("{k}={v}")));
    let mut caps = String::from("-all");
    for cap in RUNTIME_DEFAULT_CAPS
        .iter()
        .map(|c| c.to_string())
        .chain(manifest.add_caps.iter().map(|c| c.to_lowercase()))
    {
        caps += &format!(",+{cap}");
    }
    let groups = match fs_group {
        Some(g) => format!("0,{g}"),
        None => "0".to_owned(),
    };
    let mut argv = manifest.command.clone();
    argv.extend(["sh".to_owned(), "-c".to_owned(), PROBE.to_owned()]);

    let out = Command::new("unshare")
        .args([
            "--mount",
            "--propagation",
            "private",
            "bash",
            "-c",
            POD,
            "bash",
        ])
        .arg(env.len().to_string())
        .args(&env)
        .args(&argv)
        .env("POD_ROOT", &root)
        .env("SCRATCH", tmp.path().join("scratch"))
        .env("TOKENFS_BIN", BIN)
        .env("SECRET_VOLUME", &volumes.secret)
        .env("HOME_VOLUME", &volumes.home)
        .env("POD_GROUPS", groups)
        .env("POD_CAPS", caps)
        .stdin(Stdio::null())
        .output()
        .expect("run unshare");
    assert!(!is_mounted(&root), "the pod's root stayed in its namespace");
    Outcome {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The README's workload user, which must have no passwd entry here.
fn workload() -> (u32, u32) {
    let user = readme_manifest()
        .env
        .into_iter()
        .find(|(k, _)| k == "TOKENFS_USER")
        .expect("TOKENFS_USER in the manifest's env")
        .1;
    let (uid, gid) = user.split_once(':').unwrap();
    let ids = (uid.parse().unwrap(), gid.parse().unwrap());
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap();
    assert!(
        !passwd.lines().any(|l| l.split(':').nth(2) == Some(uid)),
        "the workload uid {uid} must have no passwd entry"
    );
    ids
}

fn require_tools(test: &str) -> bool {
    if !fuse_available(test) {
        return false;
    }
    for tool in ["unshare", "setpriv", "chroot", "tini"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .is_ok_and(|o| o.status.success());
        assert!(
            found,
            "{test}: {tool} is missing (bash .ci/run installs tini)"
        );
    }
    true
}

/// The probe's output says it ran as `uid:gid` alone, with nothing privileged,
/// read a token the issuer signed, and could not read the secret.
fn assert_unprivileged_with_a_token(out: &Outcome, issuer: &DevIssuer, (uid, gid): (u32, u32)) {
    let all = format!("stdout:\n{}\nstderr:\n{}", out.stdout, out.stderr);
    assert_eq!(
        out.code,
        Some(7),
        "the workload's status is the pod's: {all}"
    );
    assert!(
        out.stdout
            .contains(&format!("uid={uid} gid={gid} groups={gid}\n")),
        "{all}"
    );
    for cap in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        assert!(
            out.stdout.contains(&format!("{cap}:\t0000000000000000")),
            "{cap}: {all}"
        );
    }
    assert!(out.stdout.contains("NoNewPrivs:\t1"), "{all}");
    assert!(out.stdout.contains("secret=unreadable"), "{all}");
    let token = out
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("token="))
        .unwrap_or_else(|| panic!("no token line: {all}"));
    assert_eq!(token.split('.').count(), 3, "a JWT: {all}");
    let claims = verify_jwt(
        token,
        &format!("{}/protocol/openid-connect/certs", issuer.realm_url),
    );
    assert_eq!(claims["preferred_username"], "alice", "{claims}");
    assert!(!out.stderr.contains("LEFT MOUNTED"), "{all}");
    let secret = std::fs::read_to_string(&issuer.client_secret_file).unwrap();
    assert!(!all.contains(secret.trim()), "the client secret was shown");
}

#[test]
fn the_readme_pod_runs_its_workload_with_fs_group_secrets() {
    if !require_tools("the_readme_pod_runs_its_workload_with_fs_group_secrets") {
        return;
    }
    let user = workload();
    let manifest = readme_manifest();
    let fs_group = manifest.fs_group.expect("the manifest sets fsGroup");
    assert_ne!(
        fs_group, user.1,
        "the manifest's fsGroup is not the workload's gid"
    );
    let issuer = DevIssuer::start(&[]);
    let out = run_pod(&issuer, Some(fs_group), manifest.default_mode);
    assert_unprivileged_with_a_token(&out, &issuer, user);
}

#[test]
fn the_readme_pod_works_without_fs_group_with_root_owned_secrets() {
    if !require_tools("the_readme_pod_works_without_fs_group_with_root_owned_secrets") {
        return;
    }
    let user = workload();
    let issuer = DevIssuer::start(&[]);
    let out = run_pod(&issuer, None, readme_manifest().default_mode);
    assert_unprivileged_with_a_token(&out, &issuer, user);
}

#[test]
fn a_pod_whose_fs_group_is_the_workloads_gid_is_refused_saying_so() {
    if !require_tools("a_pod_whose_fs_group_is_the_workloads_gid_is_refused_saying_so") {
        return;
    }
    let (uid, gid) = workload();
    let issuer = DevIssuer::start(&[]);
    let out = run_pod(&issuer, Some(gid), readme_manifest().default_mode);
    let all = format!("stdout:\n{}\nstderr:\n{}", out.stdout, out.stderr);
    assert_eq!(out.code, Some(1), "{all}");
    assert!(
        !out.stdout.contains("uid="),
        "the workload did not start: {all}"
    );
    let says = format!(
        "/etc/tokenfs/client-secret is readable by its group {gid} (mode 0440), which the \
         files' owner {uid}:{gid} holds"
    );
    assert_eq!(out.stderr.matches(&says).count(), 1, "said once: {all}");
    assert!(out.stderr.contains("securityContext.fsGroup"), "{all}");
    assert!(!out.stderr.contains("LEFT MOUNTED"), "{all}");
}
