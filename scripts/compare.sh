#!/usr/bin/env bash
# Throughput comparison: handoff against the article's Python servers.
# Thin wrapper around compare.py (see `scripts/compare.sh --help`):
#   scripts/compare.sh              full run (≤ 5 min): results/<timestamp>/
#   scripts/compare.sh --quick      python-pool vs handoff-2 (≤ 60 s)
#   scripts/compare.sh --smoke --out DIR   a few seconds; exits non-zero unless
#                                   DIR/results.csv and summary.md parse
# Whatever happens, every process group compare.py started is killed on exit.
set -uo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
pgids="$(mktemp "${TMPDIR:-/tmp}/handoff-compare-pgids.XXXXXX")"
cleanup() {
    local pgid
    while read -r pgid; do
        [[ -n "$pgid" ]] || continue
        kill -CONT -- "-$pgid" 2>/dev/null
        kill -KILL -- "-$pgid" 2>/dev/null
    done < "$pgids"
    rm -f "$pgids"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
HANDOFF_COMPARE_CMD="scripts/compare.sh" python3 "$here/compare.py" --pgid-file "$pgids" "$@"
