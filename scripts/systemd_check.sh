#!/usr/bin/env bash
# Run the shipped unit under a real systemd: boot a Debian bookworm container (systemd 252 as PID 1),
# install streamclf and systemd/streamclf.service the way docs/service.md says, and take it through
# start (READY, Status line), status, reload, a forced stall (watchdog kill and restart), the MQTT
# password drop-in, stop and `systemd-analyze security`. One PASS:/FAIL: line per check; exit 1 on any FAIL.
#
# On demand, not in scripts/test.sh or CI: it needs root, debootstrap, systemd-nspawn (package
# systemd-container), about 2 GB under $CACHE (twice that with SYSTEMD_BACKPORTS=1 as well) and a few
# minutes; the first run takes longer: it debootstraps the rootfs and installs torch into it, and
# later runs reuse both. Webcam and GPU device rules cannot be exercised in the container.
#
#   sudo scripts/systemd_check.sh
#
# Environment:
#   CACHE          where the rootfs, the tiny model and the logs live (default /var/tmp/streamclf-systemd-check)
#   PYTHON         a host Python with torch and transformers, to build the tiny random-weight CLIP
#                  (default .venv/bin/python); the container gets the same torch version
#   DEBIAN_MIRROR  for debootstrap (default http://deb.debian.org/debian)
#   TORCH_INDEX    where pip finds torch when the host's pip config names no local wheels
#                  (default https://download.pytorch.org/whl/cpu, as docs/service.md says)
#   SYSTEMD_BACKPORTS=1  systemd from bookworm-backports (>= 253) instead of 252, in a rootfs of its own:
#                  exercises systemd/notify-reload.conf as well
#   KEEP_RUNNING=1 leave the container booted at the end (its leader PID is printed) to look around
set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
CACHE=${CACHE:-/var/tmp/streamclf-systemd-check}
SUITE=bookworm
BASE=$CACHE/rootfs-$SUITE
ROOTFS=$BASE
[ "${SYSTEMD_BACKPORTS:-0}" = 1 ] && ROOTFS=$CACHE/rootfs-$SUITE-backports
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
TORCH_INDEX=${TORCH_INDEX:-https://download.pytorch.org/whl/cpu}
if [ -n "${PYTHON:-}" ]; then HOST_PY=$PYTHON; elif [ -x .venv/bin/python ]; then HOST_PY=.venv/bin/python; else HOST_PY=python3; fi
VENV=/opt/streamclf/.venv
MODEL=/opt/streamclf/model
UNIT_DIR=/etc/systemd/system/streamclf.service.d

FAILS=0
pass() { echo "PASS: $*"; }
fail() { echo "FAIL: $*"; FAILS=$((FAILS + 1)); }
note() { echo "NOTE: $*"; }
step() { echo ".. $*" >&2; }
die() { echo "FAIL: $*"; exit 1; }

[ "$(id -u)" -eq 0 ] || die "run as root (it debootstraps and boots a container)"
for tool in debootstrap systemd-nspawn nsenter; do
  command -v "$tool" >/dev/null || die "$tool is missing (apt-get install debootstrap systemd-container util-linux)"
done
mkdir -p "$CACHE"

# ---------------------------------------------------------------- the rootfs (cached)
if [ ! -f "$BASE/.streamclf-base" ]; then
  step "debootstrap $SUITE into $BASE (log: $CACHE/debootstrap.log)"
  rm -rf "$BASE.partial"
  debootstrap --variant=minbase \
    --include=systemd,systemd-sysv,dbus,procps,python3,python3-venv,mosquitto,mosquitto-clients,ca-certificates \
    "$SUITE" "$BASE.partial" "$MIRROR" >"$CACHE/debootstrap.log" 2>&1 \
    || die "debootstrap failed; see $CACHE/debootstrap.log"
  echo streamclf-check >"$BASE.partial/etc/hostname"
  mv "$BASE.partial" "$BASE"
  touch "$BASE/.streamclf-base"
fi
if [ ! -f "$ROOTFS/.streamclf-base" ]; then
  step "a copy of $BASE with systemd from $SUITE-backports (log: $CACHE/backports.log)"
  rm -rf "$ROOTFS.partial"
  cp -a "$BASE" "$ROOTFS.partial"
  echo "deb $MIRROR $SUITE-backports main" >"$ROOTFS.partial/etc/apt/sources.list.d/backports.list"
  systemd-nspawn -q --register=no --keep-unit -D "$ROOTFS.partial" /bin/sh -c \
    "apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q -t $SUITE-backports systemd systemd-sysv" \
    >"$CACHE/backports.log" 2>&1 || die "installing systemd from $SUITE-backports failed; see $CACHE/backports.log"
  mv "$ROOTFS.partial" "$ROOTFS"
fi

# pip inside the container sees what the host's pip config names: local wheel directories and file://
# indexes are bound read-only at the same paths (an index with the directory above its simple/, where
# such indexes keep their files), a CA bundle (a proxy's) likewise; URLs are passed on as they are.
PIP_ARGS=() BIND_ARGS=() local_sources=0
while read -r key value; do
  for source in $value; do
    path=${source#file://}
    if [ "$key" = cert ] && [ -f "$path" ]; then
      BIND_ARGS+=("--bind-ro=$path") PIP_ARGS+=(--cert "$path")
    elif [ -d "$path" ]; then
      local_sources=1
      if [ "$key" = find-links ]; then
        BIND_ARGS+=("--bind-ro=$path") PIP_ARGS+=(--find-links "$path")
      else
        BIND_ARGS+=("--bind-ro=$(dirname "$path")") PIP_ARGS+=(--extra-index-url "file://$path")
      fi
    elif [[ $source == http* ]]; then
      PIP_ARGS+=("--$key" "$source")
    fi
  done
done < <("$HOST_PY" -m pip config list 2>/dev/null | sed -nE "s/^[^.]*\.(find-links|extra-index-url|index-url|cert)='(.*)'$/\1 \2/p" | sort -u)
[ "$local_sources" -eq 1 ] || PIP_ARGS+=(--extra-index-url "$TORCH_INDEX")

# A command in the (not booted) rootfs, for installing Python packages: the host's network, no boot.
in_rootfs() { systemd-nspawn -q --register=no --keep-unit --machine=streamclf-check -D "$ROOTFS" "${BIND_ARGS[@]}" --bind-ro="$REPO:/mnt/streamclf-src" "$@"; }

TORCH=$("$HOST_PY" -c 'import torch; print(torch.__version__)' 2>/dev/null) || die "$HOST_PY cannot import torch (set PYTHON)"
if [ "$(cat "$ROOTFS/.streamclf-torch" 2>/dev/null)" != "$TORCH" ]; then
  step "python3 -m venv $VENV; pip install torch==$TORCH (log: $CACHE/pip-torch.log)"
  in_rootfs /bin/sh -c "python3 -m venv $VENV && $VENV/bin/pip install -q --disable-pip-version-check $(printf '%q ' "${PIP_ARGS[@]}") torch==$TORCH" \
    >"$CACHE/pip-torch.log" 2>&1 || die "installing torch in the rootfs failed; see $CACHE/pip-torch.log"
  echo "$TORCH" >"$ROOTFS/.streamclf-torch"
fi

# streamclf itself on every run, from this work tree (committed or not), as `pip install /path/to/streamclf`.
step "pip install streamclf from $REPO (log: $CACHE/pip-streamclf.log)"
rm -rf "$ROOTFS/root/streamclf-src"
mkdir -p "$ROOTFS/root/streamclf-src"
git ls-files -z -co --exclude-standard | tar --null --ignore-failed-read -T - -cf - 2>/dev/null | tar -xf - -C "$ROOTFS/root/streamclf-src"
in_rootfs /bin/sh -c "$VENV/bin/pip uninstall -q -y streamclf >/dev/null 2>&1; $VENV/bin/pip install -q --disable-pip-version-check $(printf '%q ' "${PIP_ARGS[@]}") /root/streamclf-src" \
  >"$CACHE/pip-streamclf.log" 2>&1 || die "pip install streamclf in the rootfs failed; see $CACHE/pip-streamclf.log"

# No model hub here: a tiny random-weight CLIP, built on the host once, loads through the same code path.
if [ ! -f "$CACHE/tiny-clip/config.json" ]; then
  step "building the tiny random-weight CLIP in $CACHE/tiny-clip"
  rm -rf "$CACHE/tiny-clip"
  PYTHONPATH=$REPO "$HOST_PY" -c "import sys; from tests.tiny_clip import build_tiny_clip; build_tiny_clip(sys.argv[1])" \
    "$CACHE/tiny-clip" >"$CACHE/tiny-clip.log" 2>&1 || die "building the tiny CLIP failed; see $CACHE/tiny-clip.log"
fi
rm -rf "${ROOTFS:?}$MODEL"
cp -r "$CACHE/tiny-clip" "$ROOTFS$MODEL"
# Config, unit and drop-ins from the previous run go: every run installs them afresh.
rm -rf "$ROOTFS/etc/streamclf" "$ROOTFS/etc/systemd/system/streamclf.service" "$ROOTFS$UNIT_DIR" \
  "$ROOTFS/etc/systemd/system/multi-user.target.wants/streamclf.service" "$ROOTFS/etc/mosquitto/conf.d/streamclf-check.conf"

# ---------------------------------------------------------------- boot it
# Pure cgroup v2 hosts need the unified layout and a BPF-capable seccomp filter in the container;
# hybrid (v1+v2) hosts work with nspawn's defaults.
NSPAWN_ARGS=()
if [ "$(stat -fc %T /sys/fs/cgroup)" = cgroup2fs ] || [ "${SYSTEMD_NSPAWN_UNIFIED_HIERARCHY:-0}" = 1 ]; then
  export SYSTEMD_NSPAWN_UNIFIED_HIERARCHY=1
  NSPAWN_ARGS+=(--system-call-filter=bpf)
fi
# --keep-unit: nspawn runs in the caller's cgroup instead of asking the host's systemd for a scope,
# so this also works where PID 1 of the host is not systemd (a CI runner, a container).
# --private-network: the container's broker and streamclf talk over its own loopback, never to a
# broker that happens to listen on the host's port 1883.
step "booting the container (console: $CACHE/boot.log)"
systemd-nspawn -q -b --register=no --keep-unit --private-network --machine=streamclf-check --console=read-only -D "$ROOTFS" "${NSPAWN_ARGS[@]}" \
  --bind-ro="$REPO:/mnt/streamclf-src" >"$CACHE/boot.log" 2>&1 &
NSPAWN=$!
LEADER=""
cleanup() {
  if [ -n "$LEADER" ] && [ "${KEEP_RUNNING:-0}" = 1 ] && kill -0 "$NSPAWN" 2>/dev/null; then
    echo ".. left running: nsenter -a -r -w -t $LEADER bash   (stop: kill $NSPAWN)" >&2
    return
  fi
  if kill -0 "$NSPAWN" 2>/dev/null; then
    kill -TERM "$NSPAWN" 2>/dev/null  # nspawn asks the container's systemd to shut down
    for _ in $(seq 60); do kill -0 "$NSPAWN" 2>/dev/null || break; sleep 0.5; done
    kill -KILL "$NSPAWN" 2>/dev/null
  fi
}
trap cleanup EXIT
for _ in $(seq 100); do
  for child in $(pgrep -P "$NSPAWN"); do
    [ "$(cat "/proc/$child/comm" 2>/dev/null)" = systemd ] && LEADER=$child
  done
  [ -n "$LEADER" ] && break
  kill -0 "$NSPAWN" 2>/dev/null || break
  sleep 0.2
done
[ -n "$LEADER" ] || die "the container did not boot; see $CACHE/boot.log"

# A command inside the booted container, in a clean environment.
ct() {
  nsenter -a -r -w -t "$LEADER" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 \
    SYSTEMD_PAGER= SYSTEMD_COLORS=0 "$@"
}
prop() { ct systemctl show -p "$1" --value streamclf; }
# wait_for SECONDS COMMAND...: true once COMMAND succeeds within SECONDS.
wait_for() {
  local deadline=$((SECONDS + $1)); shift
  until "$@"; do [ $SECONDS -lt "$deadline" ] || return 1; sleep 0.5; done
}
system_up() { case $(ct systemctl is-system-running 2>/dev/null) in running | degraded) true ;; *) false ;; esac; }
wait_for 120 system_up || die "the container's systemd did not finish booting; see $CACHE/boot.log"
SYSTEMD_VERSION=$(ct systemctl --version | sed -nE '1s/^systemd ([0-9]+).*/\1/p')
note "container: Debian $SUITE, systemd $SYSTEMD_VERSION as PID 1 ($(stat -fc %T /sys/fs/cgroup) cgroup root on the host)"
wait_for 30 ct systemctl is-active -q mosquitto || fail "mosquitto is not running in the container"

# ---------------------------------------------------------------- install as docs/service.md says
step "installing config and unit (anonymous broker: no password file, no drop-in)"
write_config() {  # $1: extra camera YAML lines (indented), $2: extra mqtt YAML lines
  ct /bin/sh -c "cat > /etc/streamclf/config.yaml" <<EOF
mqtt:
  host: 127.0.0.1
  port: 1883
  topic_prefix: streamclf-check
$2
model:
  name: $MODEL
  device: cpu
  precision: fp32
  batch_size: 4
  threads: 1
homeassistant:
  enabled: false
service:
  stall_timeout_s: 30
labels:
  vehicle:
    prompts: ["a photo of a car in a driveway"]
    threshold: 0.6
  empty:
    prompts: ["a photo of an empty driveway"]
    background: true
cameras:
  driveway:
    source: driveway.mp4
    fps: 2
    realtime: true
    loop: true
$1
EOF
}
ct install -d -m 0755 /etc/streamclf
ct install -m 0644 /mnt/streamclf-src/samples/driveway.mp4 /etc/streamclf/driveway.mp4
write_config "" ""
ct chmod 0644 /etc/streamclf/config.yaml
ct chmod -R a+rX "$MODEL"
if out=$(ct "$VENV/bin/streamclf" check-config -c /etc/streamclf/config.yaml 2>&1); then
  pass "install: check-config accepts /etc/streamclf/config.yaml"
else
  fail "install: check-config: $out"
fi
ct install -D -m 0644 /mnt/streamclf-src/docs/service.md /opt/streamclf/docs/service.md
ct install -m 0644 /mnt/streamclf-src/systemd/streamclf.service /etc/systemd/system/
ct systemctl daemon-reload

# ---------------------------------------------------------------- start, READY, Status line, status
t0=$SECONDS
if out=$(ct systemctl enable --now streamclf 2>&1) && [ "$(prop ActiveState)/$(prop SubState)" = active/running ]; then
  pass "start: READY after $((SECONDS - t0)) s with an anonymous broker and no password file"
else
  fail "start: $out; $(ct systemctl status --no-pager -n 20 streamclf 2>&1 | tail -n 20)"
fi
status_has() { local text; text=$(prop StatusText); grep -q -- "$1" <<<"$text"; }
journal() { ct journalctl -b -u streamclf --no-pager "$@"; }  # -b: the rootfs keeps earlier runs' journals
if wait_for 30 status_has "1/1 camera(s) online.*MQTT connected"; then
  pass "Status line: \"$(prop StatusText)\""
else
  fail "Status line: \"$(prop StatusText)\" (expected 1/1 camera(s) online ... MQTT connected)"
fi
out=$(ct systemctl status --no-pager streamclf 2>&1); rc=$?
if [ $rc -eq 0 ] && grep -q 'Status: "' <<<"$out"; then
  pass "status: exit 0, $(grep -o 'Status: ".*"' <<<"$out")"
else
  fail "status: exit $rc: $out"
fi
tasks=$(prop TasksCurrent) memory=$(prop MemoryCurrent)
note "running: TasksCurrent=$tasks (TasksMax=$(prop TasksMax)), MemoryCurrent=$memory (MemoryMax=$(prop MemoryMax)); [not set] means this container's cgroup setup does not account it"

# ---------------------------------------------------------------- reload: a second camera
reloaded() { journal -o cat | grep -c 'config reloaded from'; }
# When the last "config reloaded" line reached the journal, in seconds since the epoch.
reloaded_at() { journal -o short-unix | grep 'config reloaded from' | tail -n 1 | cut -d' ' -f1; }
write_config "  driveway2:
    source: driveway.mp4
    fps: 1
    realtime: true
    loop: true" ""
# The time systemctl reload returns, taken inside the container, against the journal's time of the
# "config reloaded" line: which came first is what docs/service.md says about reload on systemd 252.
out=$(ct /bin/sh -c 'systemctl reload streamclf && date +%s.%N' 2>&1); rc=$?
returned_at=${out##*$'\n'}
if [ $rc -eq 0 ] && wait_for 30 status_has "2/2 camera(s) online"; then
  pass "reload: second camera applied, \"$(prop StatusText)\""
  applied_at=$(reloaded_at)
  if awk -v r="$returned_at" -v a="$applied_at" 'BEGIN { exit !(r < a) }'; then
    note "reload: systemctl reload returned $(awk -v r="$returned_at" -v a="$applied_at" 'BEGIN { printf "%.2f", a - r }') s before the new config was applied (systemd $SYSTEMD_VERSION, Type=notify: docs/service.md, Reloading)"
  else
    note "reload: systemctl reload returned after the new config was applied"
  fi
else
  fail "reload: exit $rc $out; Status \"$(prop StatusText)\"; $(journal -o cat | tail -n 5)"
fi

# ---------------------------------------------------------------- a stall: SIGSTOP stops the pings as a hung model call does
ct install -d -m 0755 "$UNIT_DIR"
ct /bin/sh -c "printf '[Service]\nWatchdogSec=6\n' > $UNIT_DIR/zz-systemd-check-stall.conf"
ct systemctl daemon-reload
ct systemctl restart streamclf
restarts=$(prop NRestarts) pid=$(prop MainPID)
ct kill -STOP "$pid"
t0=$SECONDS
restarted() { [ "$(prop MainPID)" != "$pid" ] && [ "$(prop MainPID)" != 0 ] && [ "$(prop ActiveState)" = active ] && [ "$(prop NRestarts)" -gt "$restarts" ]; }
if wait_for 90 restarted && journal | grep -c 'Watchdog timeout' >/dev/null; then
  pass "stall: watchdog (WatchdogSec=6) killed the stopped process $pid; systemd restarted it (pid $(prop MainPID), READY again) $((SECONDS - t0)) s after the stall"
else
  fail "stall: pid $pid -> $(prop MainPID), NRestarts $restarts -> $(prop NRestarts), $(prop ActiveState); $(journal -o cat | tail -n 5)"
fi
ct rm -f "$UNIT_DIR/zz-systemd-check-stall.conf"
ct systemctl daemon-reload

# ---------------------------------------------------------------- the password drop-in
ct install -m 0644 /mnt/streamclf-src/systemd/mqtt-password.conf "$UNIT_DIR/"
ct systemctl daemon-reload
ct systemctl restart streamclf >/dev/null 2>&1
# Not `-u streamclf`: systemd 254 does not file the half-started process's lines under the unit.
log=$(ct journalctl -b --no-pager -n 300 | grep 'streamclf.service')
if grep -q 'Failed to set up credentials: Protocol error' <<<"$log" && grep -q 'status=243/CREDENTIALS' <<<"$log"; then
  pass "password drop-in without /etc/streamclf/mqtt_password: fails with 'Failed to set up credentials: Protocol error', status=243/CREDENTIALS"
else
  fail "password drop-in without its file: expected the CREDENTIALS failure; $(tail -n 5 <<<"$log")"
fi
ct systemctl stop streamclf
ct systemctl reset-failed streamclf
ct /bin/sh -c "mosquitto_passwd -b -c /etc/mosquitto/streamclf-check.passwd streamclf 'check pass: 7' && chown mosquitto: /etc/mosquitto/streamclf-check.passwd && chmod 0600 /etc/mosquitto/streamclf-check.passwd"
ct /bin/sh -c "printf 'listener 1883 127.0.0.1\nallow_anonymous false\npassword_file /etc/mosquitto/streamclf-check.passwd\n' > /etc/mosquitto/conf.d/streamclf-check.conf"
ct systemctl restart mosquitto || fail "mosquitto with a password file did not start: $(ct tail -n 3 /var/log/mosquitto/mosquitto.log)"
write_config "" "  username: streamclf
  password_credential: mqtt_password"
ct /bin/bash -c "install -m 0600 /dev/stdin /etc/streamclf/mqtt_password <<< 'check pass: 7'"
if ! out=$(ct /bin/sh -c "CREDENTIALS_DIRECTORY=/etc/streamclf $VENV/bin/streamclf check-config -c /etc/streamclf/config.yaml" 2>&1); then
  fail "password: check-config with CREDENTIALS_DIRECTORY=/etc/streamclf: $out"
fi
if ct systemctl start streamclf && wait_for 30 status_has "MQTT connected"; then
  pass "password drop-in with the file: READY, \"$(prop StatusText)\" (broker with allow_anonymous false)"
else
  fail "password drop-in with the file: $(prop ActiveState), \"$(prop StatusText)\"; $(journal -o cat | tail -n 5)"
fi

# ---------------------------------------------------------------- stop
t0=$EPOCHREALTIME
ct systemctl stop streamclf
took=$(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }')
if [ "$(prop ActiveState)" = inactive ] && [ "$(prop ExecMainStatus)" = 0 ] && [ "$(prop Result)" = success ]; then
  pass "stop: exit 0, Result=success, systemctl stop took ${took} s"
else
  fail "stop: $(prop ActiveState), ExecMainStatus=$(prop ExecMainStatus), Result=$(prop Result)"
fi

# ---------------------------------------------------------------- systemd-analyze security (live, as installed)
out=$(ct systemd-analyze security --no-pager streamclf 2>&1)
exposure=$(sed -nE 's/.*Overall exposure level for streamclf.service: ([0-9.]+) .*/\1/p' <<<"$out")
if [ -n "$exposure" ] && awk -v e="$exposure" 'BEGIN { exit !(e <= 2.0) }'; then
  pass "systemd-analyze security: $(grep -o 'Overall exposure level.*' <<<"$out")"
else
  fail "systemd-analyze security: exposure '${exposure:-?}' (want <= 2.0): $(tail -n 3 <<<"$out")"
fi

# ---------------------------------------------------------------- Type=notify-reload (systemd >= 253 only)
if [ "${SYSTEMD_VERSION:-0}" -ge 253 ]; then
  ct install -m 0644 /mnt/streamclf-src/systemd/notify-reload.conf "$UNIT_DIR/"
  ct systemctl daemon-reload
  ct systemctl start streamclf
  before=$(reloaded)
  write_config "  driveway2:
    source: driveway.mp4
    fps: 1
    loop: true" "  username: streamclf
  password_credential: mqtt_password"
  ct systemctl reload streamclf
  if [ "$(reloaded)" -gt "$before" ]; then  # counted right after reload returns: no waiting
    pass "notify-reload drop-in: the config was applied when systemctl reload returned"
  else
    fail "notify-reload drop-in: systemctl reload returned before 'config reloaded' was logged"
  fi
  ct systemctl stop streamclf
else
  note "notify-reload drop-in: not exercised (needs systemd >= 253; this container has $SYSTEMD_VERSION)"
fi
note "webcam (/dev/video*) and GPU (DeviceAllow=char-drm/nvidia*) device rules cannot be exercised in this container: not checked"

ct journalctl -b --no-pager -u streamclf -u mosquitto >"$CACHE/journal.txt" 2>&1
echo ".. the container's journal for streamclf and mosquitto: $CACHE/journal.txt" >&2
if [ "$FAILS" -eq 0 ]; then echo "systemd_check: all checks passed"; else echo "systemd_check: $FAILS check(s) failed"; fi
[ "$FAILS" -eq 0 ]
