#!/usr/bin/env bash
# Runs the reliability scenarios (tests/reliability.rs: real master and worker
# processes, bounded load on 127.0.0.1) one at a time and prints what each
# measured: requests, failed clients, lost connections, timings.
# Usage: scripts/reliability.sh   (from the repository root)
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build -q --workspace --bins
echo "# $(date -u +%Y-%m-%dT%H:%MZ) on $(nproc) cores, $(uname -sr)"
cargo test -q --test e2e reliability -- --nocapture --test-threads=1 2>&1 |
  grep -oE '(kill -9 under load|SIGHUP under load|SIGTERM under load|1000 idle clients|test result).*'
