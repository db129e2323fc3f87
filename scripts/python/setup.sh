#!/usr/bin/env bash
# Creates target/py-venv with the pinned loguru the article's servers need.
# Idempotent and fast once done; prints the venv's python path on stdout.
set -euo pipefail
LOGURU_VERSION=0.7.3
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
venv="$root/target/py-venv"
stamp="$venv/.handoff-loguru-$LOGURU_VERSION"
if [[ -f "$stamp" && -x "$venv/bin/python" ]]; then
    echo "$venv/bin/python"
    exit 0
fi
python=""
for candidate in python3.11 python3; do
    if command -v "$candidate" >/dev/null 2>&1; then python="$candidate"; break; fi
done
[[ -n "$python" ]] || { echo "setup.sh: no python3 found" >&2; exit 1; }
echo "setup.sh: creating $venv with $($python --version 2>&1) and loguru==$LOGURU_VERSION" >&2
rm -rf "$venv"
"$python" -m venv "$venv" >&2
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check "loguru==$LOGURU_VERSION" >&2
"$venv/bin/python" -c 'import loguru' >&2
touch "$stamp"
echo "$venv/bin/python"
