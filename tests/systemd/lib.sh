# Sourced by tests/systemd/run-under-systemd and tests/systemd/install-deb (not run by
# itself): boots a real systemd as PID 1 of new pid, mount, uts, ipc, net and cgroup
# namespaces (a "container" made with unshare), with private /run, /tmp and /dev and
# copy-on-write overlays on /etc and /var (and /usr, with `sd_boot deb`), in a child
# cgroup of the caller's cgroup: nothing on the host changes, and killing that PID 1
# removes everything (the EXIT trap does so on any exit; KEEP=1 leaves it running).
#
# The caller sets `set -euo pipefail`, sources this file, then calls in order:
#   sd_init                  prerequisites (skip() if missing), cgroup, work dir, traps
#   sd_units BIN             the private unit directory: base targets, journald, the test
#                            target, tokenfs-dev-issuer.service running BIN
#   sd_boot [deb]            PID 1; `deb` adds the /usr overlay and unit search path (below)
#   sd_config                writes /etc/tokenfs/config.toml (0600) for the dev issuer,
#                            creates the mountpoint, starts tokenfs-dev-issuer.service
#   check_visible WHAT BIN   the mount seen from outside the service; BIN runs `status`
# and uses ns/sctl/prop to act in the namespace, step/fail/skip to report.
# TOKENFS_REQUIRE_SYSTEMD=1 turns every skip into a failure.

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
systemd_bin=/lib/systemd/systemd
mnt=/var/lib/domino/home/.api
user_uid=12574
t0=$(date +%s)
pid1=
unshare_pid=
work=
cg=

skip() {
  if [ "${TOKENFS_REQUIRE_SYSTEMD:-0}" = 1 ]; then echo "FAILED (TOKENFS_REQUIRE_SYSTEMD=1): $*" >&2; exit 1; fi
  echo "SKIPPED systemd test: $*"
  exit 0
}
fail() { echo "FAILED: $*" >&2; dump_logs; exit 1; }
step() { echo "== $* ($(($(date +%s) - t0)) s)"; }

sd_init() {
  [ "$(id -u)" = 0 ] || skip "needs root"
  [ -x "$systemd_bin" ] || skip "no $systemd_bin (package systemd)"
  command -v unshare >/dev/null && command -v nsenter >/dev/null || skip "needs unshare and nsenter"
  [ -c /dev/fuse ] || skip "no /dev/fuse"
  local cg2 own_cg old pid
  cg2=$(findmnt -rn -t cgroup2 -o TARGET | head -n1)
  [ -n "$cg2" ] || skip "no cgroup2 mounted"
  own_cg=$(sed -n 's/^0:://p' /proc/self/cgroup)
  cg="$cg2${own_cg%/}/tokenfs-systemd-test.$$"
  # Leftovers of a run that was SIGKILLed (no trap ran): empty cgroups of dead scripts.
  for old in "$cg2${own_cg%/}"/tokenfs-systemd-test.*; do
    [ -d "$old" ] && ! kill -0 "${old##*.}" 2>/dev/null && find "$old" -depth -type d -exec rmdir {} + 2>/dev/null || true
  done
  mkdir "$cg" 2>/dev/null || { cg=; skip "cannot create a cgroup under $cg2${own_cg%/}"; }

  # target/ is ignored by git.
  mkdir -p "$repo/target"
  for old in "$repo"/target/systemd-test.*.*; do
    pid=${old#"$repo"/target/systemd-test.}; pid=${pid%%.*}
    [ -d "$old" ] && ! kill -0 "$pid" 2>/dev/null && rm -rf "$old"
  done
  work=$(mktemp -d "$repo/target/systemd-test.$$.XXXXXX")
  trap teardown EXIT
  trap 'exit 1' INT TERM
}

teardown() {
  local rc=$?
  if [ "${KEEP:-0}" = 1 ] && [ -n "$pid1" ] && [ "$rc" = 0 ]; then
    echo "KEEP=1: systemd is PID $pid1; enter with: nsenter -t $pid1 -m -u -n -p -C bash"
    echo "tear down with: kill -9 $pid1; then rmdir the cgroups under $cg; rm -rf $work"
    return
  fi
  # SIGKILL to the namespace's PID 1 kills every process in it; its mounts (the FUSE mount
  # and the overlays included) go away with the last process.
  [ -n "$pid1" ] && kill -9 "$pid1" 2>/dev/null || true
  [ -n "$unshare_pid" ] && kill -9 "$unshare_pid" 2>/dev/null || true
  [ -n "$unshare_pid" ] && wait "$unshare_pid" 2>/dev/null || true
  if [ -n "$cg" ]; then
    for _ in $(seq 50); do
      find "$cg" -depth -type d -exec rmdir {} + 2>/dev/null || true
      [ -d "$cg" ] || break
      sleep 0.1
    done
    [ -d "$cg" ] && echo "warning: could not remove cgroup $cg" >&2
  fi
  [ -n "$work" ] && rm -rf "$work"
  exit "$rc"
}

# In the namespace: run a command in systemd's mount/pid namespaces, i.e. as a login shell
# of that "host" would (outside the service's own namespaces, if any). NS_TIMEOUT: seconds.
ns() { timeout "${NS_TIMEOUT:-30}" nsenter -t "$pid1" -m -u -n -p -C -- "$@"; }
sctl() { ns systemctl --no-pager "$@"; }
prop() { sctl show -p "$2" --value "$1"; }
dump_logs() {
  [ -n "$pid1" ] || return 0
  echo "--- systemctl status tokenfs; journal" >&2
  sctl status tokenfs.service >&2 2>&1 || true
  ns journalctl --no-pager -o short-monotonic -n 80 >&2 2>&1 || true
}

# --- units -------------------------------------------------------------------------------
# The private unit directory, $work/units: the targets and journald copied from the host's
# systemd package, tokenfs-test.target (what PID 1 starts) and the dev issuer running $1.
sd_units() {
  local issuer_bin=$1 u
  mkdir -p "$work/ns" "$work/units/sockets.target.wants" "$work/units/sysinit.target.wants"
  for u in sysinit.target basic.target sockets.target timers.target paths.target slices.target \
    local-fs.target network.target network-online.target multi-user.target shutdown.target \
    systemd-journald.service systemd-journald.socket systemd-journald-dev-log.socket; do
    [ -e "/lib/systemd/system/$u" ] || skip "no /lib/systemd/system/$u"
    cp "/lib/systemd/system/$u" "$work/units/"
  done
  ln -s ../systemd-journald.socket ../systemd-journald-dev-log.socket "$work/units/sockets.target.wants/"
  ln -s ../systemd-journald.service "$work/units/sysinit.target.wants/"
  printf '[Unit]\nDescription=tokenfs test boot\nWants=sysinit.target\n' > "$work/units/tokenfs-test.target"
  # The issuer writes the client secret and offline token, then listens; ready once it answers.
  cat > "$work/units/tokenfs-dev-issuer.service" <<EOF
[Unit]
Description=tokenfs development issuer (test)
[Service]
ExecStart=$issuer_bin dev-issuer --listen 127.0.0.1:8180 --user alice --rotate-refresh-tokens --offline-token-file /etc/tokenfs/offline-token --client-secret-file /etc/tokenfs/client-secret
ExecStartPost=/bin/bash -c 'exec 2>/dev/null; for i in \$(seq 100); { </dev/tcp/127.0.0.1/8180 && [ -s /etc/tokenfs/offline-token ] && exit 0; sleep 0.1; }; exit 1'
EOF
}

# --- PID 1 of the container: build its view, then exec systemd ------------------------------
# `sd_boot deb`: also a copy-on-write overlay on /usr (dpkg's writes stay private; its
# database is under the /var overlay), and units found in $work/units, /etc/systemd/system
# and /usr/lib/systemd/system as on a host, where empty tmpfs hide the host's units and
# enablement links: a host with nothing installed but the targets above, so only what
# tokenfs-test.target wants starts and `systemctl enable` acts on what the package
# installed. Without policy-rc.d (a container image's "never start services" hook, which
# a host does not have): the maintainer scripts' deb-systemd-invoke would do nothing.
sd_boot() {
  local mode=${1:-}
  cat > "$work/init.sh" <<'EOF'
#!/bin/bash
set -eu
w=$1
mount -t tmpfs -o mode=700 tmpfs "$w/ns"
mkdir -p "$w/ns/etc.u" "$w/ns/etc.w" "$w/ns/var.u" "$w/ns/var.w" "$w/ns/dev/pts" "$w/ns/dev/shm"
mount -t overlay overlay -o "lowerdir=/etc,upperdir=$w/ns/etc.u,workdir=$w/ns/etc.w" /etc
mount -t overlay overlay -o "lowerdir=/var,upperdir=$w/ns/var.u,workdir=$w/ns/var.w" /var
unit_path=$w/units
if [ "$3" = deb ]; then
  mkdir -p "$w/ns/usr.u" "$w/ns/usr.w"
  mount -t overlay overlay -o "lowerdir=/usr,upperdir=$w/ns/usr.u,workdir=$w/ns/usr.w" /usr
  mount -t tmpfs -o mode=755,nosuid,nodev tmpfs /usr/lib/systemd/system
  mount -t tmpfs -o mode=755,nosuid,nodev tmpfs /etc/systemd/system
  rm -f /usr/sbin/policy-rc.d
  unit_path=$w/units:/etc/systemd/system:/usr/lib/systemd/system
fi
mount -t tmpfs -o mode=755,nosuid tmpfs "$w/ns/dev"
mkdir -p "$w/ns/dev/pts" "$w/ns/dev/shm"
for n in null zero full random urandom tty fuse; do
  touch "$w/ns/dev/$n"; mount --bind "/dev/$n" "$w/ns/dev/$n"
done
mount -t devpts -o newinstance,ptmxmode=0666,mode=620 devpts "$w/ns/dev/pts"
ln -s pts/ptmx "$w/ns/dev/ptmx"
ln -s /proc/self/fd "$w/ns/dev/fd"
mount --move "$w/ns/dev" /dev
# Private /run and /tmp; a checkout under either (the binary, this work dir) stays in
# view at its path, parked on the new /dev meanwhile.
repo=$2
case "$repo/" in /run/*|/tmp/*) mkdir /dev/.repo && mount --rbind "$repo" /dev/.repo ;; esac
mount -t tmpfs -o mode=755,nosuid,nodev tmpfs /run
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs /tmp
if [ -d /dev/.repo ]; then
  mkdir -p "$repo" && mount --move /dev/.repo "$repo" && rmdir /dev/.repo
fi
# As in a container: /sys and /proc/sys read-only, a writable cgroup2 (this cgroup
# namespace's root, a child of the caller's cgroup) at /sys/fs/cgroup.
mount -o remount,bind,ro /sys
mount -t cgroup2 -o nsdelegate cgroup2 /sys/fs/cgroup 2>/dev/null || mount -t cgroup2 cgroup2 /sys/fs/cgroup
mount --bind /proc/sys /proc/sys
mount -o remount,bind,ro /proc/sys
# As on a host booted by systemd: every mount shared (new peer groups, all inside this
# namespace: nothing propagates to the caller's).
mount --make-rshared /
hostname tokenfs-systemd-test
exec env -i container=docker PATH=/usr/sbin:/usr/bin:/sbin:/bin SYSTEMD_UNIT_PATH="$unit_path" \
  /lib/systemd/systemd --system --unit=tokenfs-test.target --show-status=no
EOF
  chmod +x "$work/init.sh"

  step "boot systemd in new namespaces${mode:+ ($mode: /usr overlay, units also from /etc/systemd/system and /usr/lib/systemd/system)}"
  # --pdeathsig/--kill-child: even if this script is SIGKILLed, unshare and then the
  # namespace's PID 1 get SIGKILL.
  ( echo "$BASHPID" > "$cg/cgroup.procs" &&
    exec setpriv --pdeathsig KILL unshare --pid --fork --kill-child --mount --uts --ipc --net --cgroup --propagation private \
      --mount-proc "$work/init.sh" "$work" "$repo" "$mode" ) </dev/null >"$work/boot.log" 2>&1 &
  unshare_pid=$!
  for _ in $(seq 100); do
    pid1=$(pgrep -P "$unshare_pid" || true)
    [ -n "$pid1" ] && [ "$(readlink "/proc/$pid1/exe" 2>/dev/null)" = "$(readlink -f $systemd_bin)" ] && break
    pid1=
    kill -0 "$unshare_pid" 2>/dev/null || break
    sleep 0.1
  done
  [ -n "$pid1" ] || { cat "$work/boot.log" >&2; skip "systemd did not start in namespaces"; }
  local booted= state=
  for _ in $(seq 150); do
    if ns test -S /run/systemd/private 2>/dev/null; then
      state=$(sctl is-system-running 2>/dev/null || true)
      case "$state" in running|degraded) booted=1; break ;; esac
    fi
    kill -0 "$pid1" 2>/dev/null || break
    sleep 0.2
  done
  [ -n "$booted" ] || { cat "$work/boot.log" >&2; skip "systemd did not come up (state: ${state:-none})"; }
  echo "systemd is PID $pid1 (host), state $state"
}

sd_config() {
  step "dev issuer, config, mountpoint"
  ns bash -euc "
    install -d -m 0700 /etc/tokenfs
    install -d -o $user_uid -g $user_uid -m 0755 /var/lib/domino/home
    install -d -o $user_uid -g $user_uid -m 0755 $mnt
    cat > /etc/tokenfs/config.toml <<'TOML'
[files.token]
source = \"oauth2\"
token_url = \"http://127.0.0.1:8180/realms/DominoRealm/protocol/openid-connect/token\"
client_id = \"tokenfs\"
client_secret_file = \"/etc/tokenfs/client-secret\"
refresh_token_file = \"/etc/tokenfs/offline-token\"
rotated_refresh_token_file = \"/var/lib/tokenfs/offline-token\"
TOML
    chmod 0600 /etc/tokenfs/config.toml"
  sctl start tokenfs-dev-issuer.service || fail "dev issuer did not start"
}

# The mount as seen from systemd's namespace (a login shell), not the service's; $2 is the
# tokenfs that runs `status`.
check_visible() {
  local what=$1 status_bin=$2
  if ! ns findmnt -n -o TARGET,FSTYPE,PROPAGATION "$mnt"; then
    local main; main=$(prop tokenfs.service MainPID)
    echo "$what: inside the service's mount namespace (pid $main):" >&2
    ns nsenter -t "$main" -m findmnt -n -o TARGET,FSTYPE,PROPAGATION -M / >&2 || true
    ns nsenter -t "$main" -m findmnt -n -o TARGET,FSTYPE,PROPAGATION -M "$mnt" >&2 || true
    fail "$what: no mount at $mnt outside the service"
  fi
  local tok=
  for _ in $(seq 50); do
    tok=$(ns cat "$mnt/token" 2>/dev/null) && [ -n "$tok" ] && break
    sleep 0.2
  done
  [[ "$tok" =~ ^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$ ]] || fail "$what: $mnt/token unreadable outside the service"
  echo "$what: $mnt/token readable outside the service (a ${#tok}-byte JWT)"
  ns setpriv --reuid=$user_uid --regid=$user_uid --clear-groups cat "$mnt/token" >/dev/null \
    || fail "$what: the user (uid $user_uid) cannot read the token"
  echo "$what: the user (uid $user_uid) reads it too"
  ns "$status_bin" status "$mnt" >/dev/null || fail "$what: $status_bin status did not exit 0"
  echo "$what: tokenfs status ($status_bin): exit 0"
}
