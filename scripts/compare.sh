#!/usr/bin/env bash
# Throughput comparison: handoff against the article's Python servers.
# Thin wrapper around compare.py (see `scripts/compare.sh --help`):
#   scripts/compare.sh              full run (≤ 5 min): results/<timestamp>/
#   scripts/compare.sh --quick      python-pool vs handoff-2 (≤ 60 s)
#   scripts/compare.sh --smoke --out DIR   a few seconds; exits non-zero unless
#                                   DIR/results.csv and summary.md parse
#   scripts/compare.sh --suite modes        every --mode/--policy/--batch
#                                   × workers × simulated work vs a plain baseline
#                                   server (about 11 min): results/<timestamp>-modes/
#   scripts/compare.sh --suite modes --quick   the same, short (≤ 60 s)
#   scripts/compare.sh --suite scale        idle connections held to 40,000 beside a
#                                   closed-loop run, and 2/16/64 workers (about 90 s):
#                                   results/<timestamp>-scale/
#   scripts/compare.sh --suite cluster      straight to one instance vs
#                                   through HAProxy (the shipped config) to 1 and 3
#                                   instances, interleaved (≤ 5 min):
#                                   results/<timestamp>-cluster/
#   scripts/compare.sh --suite cluster --smoke --out DIR   the same in seconds
# Whatever happens, every process group compare.py started is killed on exit.
set -uo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
pgids="$(mktemp "${TMPDIR:-/tmp}/handoff-compare-pgids.XXXXXX")"
child=""
cleanup() {
    local pgid
    while read -r pgid; do
        [[ -n "$pgid" ]] || continue
        kill -CONT -- "-$pgid" 2>/dev/null
        kill -KILL -- "-$pgid" 2>/dev/null
    done < "$pgids"
    rm -f "$pgids"
}
stop() {
    # Let compare.py stop its servers and write what it has, then exit.
    [[ -n "$child" ]] && kill -TERM "$child" 2>/dev/null && wait "$child"
    exit "$1"
}
trap cleanup EXIT
trap 'stop 130' INT
trap 'stop 143' TERM
# In the background so that a signal to this script is handled at once
# (bash runs traps only between commands, and `wait` is one).
HANDOFF_COMPARE_CMD="scripts/compare.sh" python3 "$here/compare.py" --pgid-file "$pgids" "$@" &
child=$!
wait "$child"
status=$?
# A trapped signal interrupts `wait`; the trap then exits. Otherwise:
exit "$status"
