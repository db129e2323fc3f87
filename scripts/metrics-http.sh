#!/usr/bin/env bash
# Serves the master's Prometheus metrics over HTTP for a scraper:
#   scripts/metrics-http.sh [PORT] [RUN_DIR]      (default 9101, the default run dir)
# Listens on 127.0.0.1 only; every request runs `handoff-ctl metrics` once.
# Needs socat. Ctrl-C stops it.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
if [[ "${1:-}" == "--respond" ]]; then
    # One HTTP exchange on stdin/stdout (socat runs this per connection).
    export LC_ALL=C  # ${#body} counts bytes
    run_dir_args=()
    [[ -n "${2:-}" ]] && run_dir_args=(--run-dir "$2")
    while IFS= read -r line && [[ "${line%$'\r'}" != "" ]]; do :; done
    if body="$("${HANDOFF_CTL:-handoff-ctl}" "${run_dir_args[@]}" metrics 2>&1)"; then
        status="200 OK"
    else
        status="503 Service Unavailable"
    fi
    printf 'HTTP/1.0 %s\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: %d\r\n\r\n%s' \
        "$status" "$(( ${#body} + 1 ))" "$body"$'\n'
    exit 0
fi
port="${1:-9101}"
run_dir="${2:-}"
if ! command -v "${HANDOFF_CTL:-handoff-ctl}" >/dev/null; then
    ctl="$here/../target/release/handoff-ctl"
    [[ -x "$ctl" ]] || { echo "handoff-ctl not found: run 'make install' or 'make build'" >&2; exit 1; }
    export HANDOFF_CTL="$(cd "$(dirname "$ctl")" && pwd)/handoff-ctl"
fi
echo "serving metrics on http://127.0.0.1:$port/metrics" >&2
exec socat "TCP-LISTEN:$port,bind=127.0.0.1,reuseaddr,fork" "EXEC:$here/metrics-http.sh --respond ${run_dir}"
