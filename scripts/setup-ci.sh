#!/usr/bin/env bash
# System packages the tests need beyond the Rust toolchain, installed from
# Debian's archive. Idempotent: installs only what is missing, and runs
# `apt-get update` once, only if something is. CI runs it as root from
# .ci/run; run it once by hand before `make test` (it uses sudo when not
# root).
#
#   ab (apache2-utils)  tests/http.rs drives the HTTP mode with `ab -k`, and
#                       fails without it
#   curl                tests/modes.rs checks the HTTP mode with curl
#   python3-venv        the benchmarks' virtualenv for the article's servers
#   systemd-socket-activate, systemd-analyze (systemd)
#                       tests/systemd.rs: socket activation, and
#                       `systemd-analyze verify` of dist/systemd/
#   haproxy             tests/cluster.rs: three hosts behind the real HAProxy
#                       with deploy/haproxy/haproxy.cfg; make cluster
#   socat               make cluster's server table; HAProxy's admin socket
#   wrk                 tests/http.rs: keep-alive clients at a graceful stop
set -euo pipefail

missing=()
command -v ab >/dev/null 2>&1 || missing+=(apache2-utils)
command -v curl >/dev/null 2>&1 || missing+=(curl)
# The benchmarks (`make bench`; `make test` runs their smoke) run the
# article's Python servers in a virtualenv: Debian splits venv/ensurepip out.
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || missing+=(python3-venv)
{ [ -x /usr/bin/systemd-socket-activate ] && command -v systemd-analyze >/dev/null 2>&1; } ||
    missing+=(systemd)
command -v haproxy >/dev/null 2>&1 || [ -x /usr/sbin/haproxy ] || missing+=(haproxy)
# make cluster shows HAProxy's server table and the README talks to its
# admin socket with socat.
command -v socat >/dev/null 2>&1 || missing+=(socat)
# A graceful stop under wrk's keep-alive load (tests/http.rs).
command -v wrk >/dev/null 2>&1 || missing+=(wrk)

if [ ${#missing[@]} -eq 0 ]; then
    echo "setup-ci: nothing to install (ab: $(command -v ab))"
    exit 0
fi

sudo=()
if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null 2>&1 || {
        echo "setup-ci: need root (or sudo) to install: ${missing[*]}" >&2
        exit 1
    }
    sudo=(sudo)
fi
echo "setup-ci: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -qq
"${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
command -v ab >/dev/null 2>&1 || { echo "setup-ci: ab still missing after the install" >&2; exit 1; }
echo "setup-ci: ab is $(command -v ab)"
