#!/usr/bin/env bash
# A handoff cluster on one machine: HOSTS handoff-masters (WORKERS workers
# each) behind HAProxy (deploy/haproxy/haproxy.cfg), all on loopback.
#
#   clients -> HAProxy 127.0.0.1:PORT -> host I: handoff-master on
#   127.0.0.(I+1):PORT (--proxy-protocol), agent check on 127.0.0.(I+1):PORT+1
#
# Runs in the foreground; Ctrl-C (or SIGTERM, or HAProxy exiting) stops it
# all: HAProxy first (soft stop: lets what it carries finish), then every
# master (SIGINT: finish what is in flight, stop the workers), each wait
# bounded (HAProxy 5 s then SIGTERM; masters 15 s then SIGQUIT, then SIGKILL
# of what is left of each host's session). Masters log to DIR/hostI.log,
# HAProxy to this terminal.
#
# Usage: scripts/cluster.sh [options] [-- extra handoff-master flags]
#   --hosts N        handoff hosts, 1..253 [3]
#   --workers W      workers per host [number of CPUs]
#   --port P         HAProxy's and every host's port; agents on P+1 [6001]
#   --dir DIR        state: run dirs, logs, haproxy.sock [a fresh
#                    ${XDG_RUNTIME_DIR:-/tmp}/handoff-cluster.XXXXXX, removed
#                    on exit unless --keep]
#   --keep           keep the fresh DIR (logs) on exit
#   --bin-dir DIR    where handoff-master and handoff-ctl are [target/release]
#   --drain-secs N   each master's --drain-secs [3]
# Environment: HAPROXY, the haproxy executable [haproxy on PATH, else
# /usr/sbin/haproxy].
# `make cluster` builds and runs it (HOSTS=, WORKERS=, PORT=, ARGS=).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
hosts=3
workers=$(nproc 2>/dev/null || echo 2)
port=6001
dir=
keep=0
bin_dir=$root/target/release
drain_secs=3
extra=()

die() { echo "cluster.sh: $*" >&2; exit 1; }
usage() { sed -n '/^# Usage:/,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }
is_uint() { [[ $1 =~ ^[0-9]+$ ]]; }

while (($#)); do
  case $1 in
    --hosts) hosts=${2:?--hosts N}; shift 2 ;;
    --workers) workers=${2:?--workers W}; shift 2 ;;
    --port) port=${2:?--port P}; shift 2 ;;
    --dir) dir=${2:?--dir DIR}; shift 2 ;;
    --keep) keep=1; shift ;;
    --bin-dir) bin_dir=${2:?--bin-dir DIR}; shift 2 ;;
    --drain-secs) drain_secs=${2:?--drain-secs N}; shift 2 ;;
    -h | --help) usage; exit 0 ;;
    --) shift; extra=("$@"); break ;;
    *) usage >&2; die "unknown argument: $1" ;;
  esac
done
is_uint "$hosts" && ((hosts >= 1 && hosts <= 253)) || die "--hosts: 1..253, not '$hosts'"
is_uint "$workers" || die "--workers: a number, not '$workers'"
is_uint "$port" && ((port >= 1 && port <= 65534)) || die "--port: 1..65534, not '$port'"
is_uint "$drain_secs" || die "--drain-secs: a number, not '$drain_secs'"
agent_port=$((port + 1))

master=$bin_dir/handoff-master
ctl=$bin_dir/handoff-ctl
[[ -x $master ]] || die "no $master: build first (make build), or --bin-dir"
haproxy=${HAPROXY:-$(command -v haproxy || echo /usr/sbin/haproxy)}
[[ -x $haproxy ]] || die "no haproxy: install it (apt-get install haproxy), or HAPROXY=/path/to/haproxy"
"$master" --help 2>/dev/null | grep -q -- '--agent-check' ||
  die "$master has no --agent-check: rebuild it (make build)"
shown_ctl=${ctl#"$root"/}

# --- state, and stopping everything whatever happens next -------------------

made_dir=0
if [[ -z $dir ]]; then
  dir=$(mktemp -d "${XDG_RUNTIME_DIR:-/tmp}/handoff-cluster.XXXXXX")
  made_dir=1
else
  mkdir -p -- "$dir"
  dir=$(cd "$dir" && pwd)
fi
declare -a started=()   # started[i]: host i's master, a session leader (setsid)
hap_pid=

# Alive and not a zombie (a child of ours that exited stays a zombie until
# bash reaps it).
alive() {
  local stat
  read -r stat 2>/dev/null <"/proc/$1/stat" || return 1
  stat=${stat##*) }
  [[ ${stat%% *} != Z ]]
}
# Waits until none of the pids is alive, at most $1 seconds.
wait_gone() {
  local secs=$1 p left any
  shift
  for ((left = secs * 10; ; left--)); do
    any=0
    for p in "$@"; do alive "$p" && any=1 && break; done
    ((any)) || return 0
    ((left > 0)) || return 1
    sleep 0.1
  done
}
# Every live process of host i: its master's session (setsid), which its
# workers and a master started by an upgrade share (each worker has a
# process group of its own).
host_pids() {
  local sid=${started[$1]:-} p
  [[ -n $sid ]] || return 0
  for p in $(pgrep -s "$sid" 2>/dev/null); do alive "$p" && echo "$p"; done
}

cleanup() {
  local status=$? i p masters=() all=()
  set +e
  # Ignore further signals first (make forwards a second SIGTERM; between
  # the two lines below it would otherwise exit with no cleanup left).
  trap '' INT TERM HUP
  trap - EXIT
  if [[ -n $hap_pid ]] && alive "$hap_pid"; then
    echo "cluster.sh: stopping HAProxy (pid $hap_pid)" >&2
    kill -USR1 "$hap_pid" 2>/dev/null # soft stop: close the listener, finish what it carries
    wait_gone 5 "$hap_pid" || { kill -TERM "$hap_pid" 2>/dev/null; wait_gone 2 "$hap_pid"; } ||
      kill -KILL "$hap_pid" 2>/dev/null
  fi
  for i in "${!started[@]}"; do
    # The master we started, and the one in charge if an upgrade replaced it
    # (the pid file is rewritten by the new master).
    alive "${started[$i]}" && masters+=("${started[$i]}")
    p=$(cat "$dir/host$i.pid" 2>/dev/null) || p=
    if [[ $p =~ ^[0-9]+$ && $p != "${started[$i]}" ]] && alive "$p" &&
      [[ $(cat "/proc/$p/comm" 2>/dev/null) == handoff-maste* ]]; then
      masters+=("$p")
    fi
  done
  if ((${#masters[@]})); then
    echo "cluster.sh: stopping ${#masters[@]} master(s): ${masters[*]}" >&2
    # SIGINT, not SIGTERM: no --drain-secs pause, HAProxy is already gone.
    kill -INT "${masters[@]}" 2>/dev/null
    if ! wait_gone 15 "${masters[@]}"; then
      echo "cluster.sh: masters still running after 15 s: SIGQUIT (they kill their workers)" >&2
      kill -QUIT "${masters[@]}" 2>/dev/null
      wait_gone 5 "${masters[@]}"
    fi
  fi
  for i in "${!started[@]}"; do
    mapfile -t all < <(host_pids "$i")
    if ((${#all[@]})); then
      echo "cluster.sh: host$i: killing what is left of it: ${all[*]}" >&2
      kill -KILL "${all[@]}" 2>/dev/null
    fi
  done
  if ((made_dir && !keep)); then
    rm -rf -- "$dir"
  else
    echo "cluster.sh: logs kept in $dir" >&2
  fi
  exit "$status"
}
trap cleanup EXIT
# A stop asked for (Ctrl-C, SIGTERM, SIGHUP) is a clean end: exit 0 once
# everything is stopped. Further signals are ignored from the first on.
trap 'trap "" INT TERM HUP; exit 0' INT TERM HUP
# A shell that started this in the background may have it ignore SIGINT,
# and a script cannot trap a signal ignored on entry: say so.
if (( 0x$(awk '/^SigIgn:/ {print $2}' /proc/$$/status 2>/dev/null || echo 0) & 2 )); then
  echo "cluster.sh: SIGINT is ignored here (started in the background?): Ctrl-C will not stop it; send SIGTERM" >&2
fi

# --- the masters -------------------------------------------------------------

root_arg=()
[[ $(id -u) == 0 ]] && root_arg=(--allow-root) # as the Makefile's ROOT_ARG
for ((i = 1; i <= hosts; i++)); do
  ip=127.0.0.$((i + 1))
  mkdir -p -m 700 "$dir/host$i"
  : >"$dir/host$i.out" # now, not in the child: no stale `listening on` from a reused --dir
  args=(--listen "$ip:$port" --run-dir "$dir/host$i" --workers "$workers" --proxy-protocol
    --pid-file "$dir/host$i.pid")
  args+=(--agent-check "$ip:$agent_port" --drain-secs "$drain_secs")
  # setsid (no fork: a background child of a script leads no group): its own
  # session, so a terminal's Ctrl-C reaches this script only, which then
  # stops things in order (a master sent two stop signals stops at once).
  setsid "$master" "${args[@]}" ${root_arg[@]+"${root_arg[@]}"} ${extra[@]+"${extra[@]}"} \
    >"$dir/host$i.out" 2>"$dir/host$i.log" </dev/null &
  started[i]=$!
done

for ((i = 1; i <= hosts; i++)); do
  for ((left = 150; ; left--)); do # 15 s
    line=$(grep -m1 '^listening on ' "$dir/host$i.out" 2>/dev/null) && break
    if ! alive "${started[$i]}" || ((left == 0)); then
      echo "cluster.sh: host$i did not start listening; the end of $dir/host$i.log:" >&2
      tail -n 15 "$dir/host$i.log" >&2
      exit 1
    fi
    sleep 0.1
  done
  echo "host$i: ${line} (pid ${started[$i]}, run dir $dir/host$i)"
done

# --- HAProxy -----------------------------------------------------------------

cfg=$root/deploy/haproxy/haproxy.cfg
if ((hosts != 3)); then
  # The shipped file with its server lines (between the BEGIN/END servers
  # markers) replaced by one line per host, in the same form.
  [[ $(grep -c '^ *# \(BEGIN\|END\) servers' "$cfg") == 2 ]] || die "$cfg: no BEGIN/END servers markers"
  servers=$(for ((i = 1; i <= hosts; i++)); do
    printf '    server host%d "${HANDOFF_HOST%d-127.0.0.%d:6001}" agent-port "${HANDOFF_AGENT%d-6002}" port "${HANDOFF_AGENT%d-6002}"\n' \
      "$i" "$i" $((i + 1)) "$i" "$i"
  done)
  awk -v servers="$servers" '
    /^ *# BEGIN servers/ { print; print servers; skip = 1; next }
    /^ *# END servers/ { skip = 0 }
    !skip' "$cfg" >"$dir/haproxy.cfg"
  cfg=$dir/haproxy.cfg
fi
export HANDOFF_CLUSTER_DIR=$dir HANDOFF_FRONTEND=127.0.0.1:$port
for ((i = 1; i <= hosts; i++)); do
  export "HANDOFF_HOST$i=127.0.0.$((i + 1)):$port" "HANDOFF_AGENT$i=$agent_port"
done
"$haproxy" -c -f "$cfg" >/dev/null || die "$cfg: haproxy -c found errors (above)"
rm -f -- "$dir/haproxy.sock"
setsid "$haproxy" -f "$cfg" </dev/null &
hap_pid=$!
# Up once its admin socket answers: HAProxy only serves it after every
# listener is bound (the socket file alone appears before a failed bind).
hap_answers() {
  if command -v socat >/dev/null; then
    echo "show info" | socat -t2 - "UNIX-CONNECT:$dir/haproxy.sock" 2>/dev/null | grep -q '^Pid: '
  else
    [[ -S $dir/haproxy.sock ]] && sleep 1 && alive "$hap_pid"
  fi
}
for ((left = 100; ; left--)); do # 10 s
  hap_answers && break
  alive "$hap_pid" && ((left > 0)) || die "HAProxy did not start (its errors are above)"
  sleep 0.1
done

# The backend's servers as HAProxy sees them (needs socat); with `ready`,
# only how many are UP with every check passed.
server_table() {
  local stat
  stat=$(echo "show stat" | socat -t2 - "UNIX-CONNECT:$dir/haproxy.sock" 2>/dev/null) || stat=
  awk -F, -v ready="${1:-}" '
    NR == 1 { sub(/^# /, ""); for (i = 1; i <= NF; i++) col[$i] = i; next }
    $1 != "handoff" || $2 == "BACKEND" { next }
    ready { n += $col["status"] == "UP" && $col["check_status"] == "L4OK" && $col["agent_status"] == "L7OK"; next }
    {
      printf "  %-6s %-14s weight %-4s check %-6s agent %s%s\n", $2, $col["status"], $col["weight"],
        $col["check_status"], $col["agent_status"], $col["last_agt"] == "" ? "" : " (" $col["last_agt"] ")"
    }
    END { if (ready) print n + 0 }' <<<"$stat"
}
if command -v socat >/dev/null; then
  for ((left = 100; left > 0; left--)); do # 10 s
    (($(server_table ready) == hosts)) && break
    sleep 0.1
  done
  echo "HAProxy (pid $hap_pid) sees:"
  server_table
fi

cat <<EOF

handoff cluster: $hosts host(s) × $workers worker(s) behind HAProxy on 127.0.0.1:$port (dir $dir)
  DIR:       export DIR=$dir
  try it:    printf hello | socat - TCP:127.0.0.1:$port
             exec 3<>/dev/tcp/127.0.0.1/$port; printf hello >&3; cat <&3; exec 3<&-
  load:      ${shown_ctl%handoff-ctl}handoff-bench --target 127.0.0.1:$port -c 32 -d 5   (then 'all hosts' shows the spread)
  all hosts: $shown_ctl$(for ((i = 1; i <= hosts; i++)); do printf ' --run-dir %s' "$dir/host$i"; done) info
  drain:     $shown_ctl --run-dir $dir/host1 drain     (HAProxy sends it nothing new within ~1 s; 'ready' undoes it)
  stop one:  $shown_ctl --run-dir $dir/host1 stop      (says drain for ${drain_secs} s, then stops; HAProxy marks it DOWN)
  HAProxy:   echo "show stat" | socat - UNIX-CONNECT:$dir/haproxy.sock | cut -d, -f1,2,18,19
  logs:      $dir/host1.log ... (masters); HAProxy logs here
Ctrl-C stops everything.

EOF

status=0
wait "$hap_pid" || status=$?
echo "cluster.sh: HAProxy exited (status $status)" >&2
exit "$status"
