#!/usr/bin/env bash
# Mutation testing with cargo-mutants (issue 13). Two modes:
#
#   scripts/mutants.sh [proto|master|worker ...]
#       Unit mode (`make mutants`): the modules whose behaviour unit tests
#       can pin down, each crate's mutants against that crate's own tests.
#       Minutes.
#
#   scripts/mutants.sh --workspace [--sample N [--shard K]] [--resume]
#       Workspace mode (`make mutants-workspace`): every crate's mutants
#       (one in N, chosen round-robin, with --sample N: those whose index
#       in `cargo mutants --list` is K modulo N, K = 0 unless --shard K
#       draws another sample), first against the
#       mutated crate's own tests, then each one that survived again against
#       the whole workspace's tests: unit and end-to-end (`cargo test
#       --workspace` rebuilds the binaries the e2e suite runs, through each
#       binary crate's tests/command_line.rs). About a minute per survivor
#       on 2 cores: hours for every mutant, hence the sample.
#
# Equivalent mutants are listed, each with its reason, in
# .cargo/mutants.toml. Prints the score per file (unit mode) or per crate
# (workspace mode); the full output stays in target/mutants/ (missed.txt,
# diff/). Not part of `make test`.
set -uo pipefail
cd "$(dirname "$0")/.."
CARGO="${CARGO:-cargo}"
if ! "$CARGO" mutants --version >/dev/null 2>&1; then
    echo "installing cargo-mutants (cargo install cargo-mutants --locked)" >&2
    "$CARGO" install cargo-mutants --locked || exit 1
fi
mkdir -p target/mutants

# cargo-mutants exits 2 when some mutants were missed and 3 on timeouts:
# reported in the tables, not errors.
mutants() {
    "$CARGO" mutants "$@" >&2
    local status=$?
    if [[ $status -ne 0 && $status -ne 2 && $status -ne 3 ]]; then
        echo "cargo mutants failed (status $status): $*" >&2
        return 1
    fi
}

# A timed-out mutant's test binary is killed, but the masters and workers
# its tests started live on (workers in their own process group, a stopped
# one for good), and they poison the mutants after it: a master left
# running as nobody with fds in flight makes every later as-nobody test
# fail with ETOOMANYREFS (the limit is per user), so those mutants count
# as caught for the wrong reason. Reaps whatever runs from a cargo-mutants
# scratch tree for longer than any test may (the timeout is 150 s).
reap_leftovers() {
    local exe pid target age
    while sleep 10; do
        for exe in /proc/[0-9]*/exe; do
            pid=${exe#/proc/} && pid=${pid%/exe}
            target=$(readlink "$exe" 2>/dev/null) || continue
            [[ $target == "${TMPDIR:-/tmp}"/cargo-mutants-* ]] || continue
            age=$(ps -o etimes= -p "$pid" 2>/dev/null) || continue
            age=${age// /}
            if ((age > ${LEFTOVER_SECS:-170})) && kill -9 "$pid" 2>/dev/null; then
                echo "reaped a leftover: pid $pid, ${age} s, $target" >&2
            fi
        done
    done
}

if [[ ${1:-} == --workspace ]]; then
    shift
    reap_leftovers &
    reaper=$!
    trap 'kill "$reaper" 2>/dev/null' EXIT
    sample=1 shard_k=0 resume=0
    while (($#)); do
        case $1 in
            --sample) sample=${2:?--sample N}; shift 2 ;;
            --shard) shard_k=${2:?--shard K}; shift 2 ;;
            # Keep the first pass's results and run only the second.
            --resume) resume=1; shift ;;
            *) echo "unknown option $1" >&2; exit 64 ;;
        esac
    done
    [[ $sample =~ ^[1-9][0-9]*$ ]] || { echo "--sample takes a positive number" >&2; exit 64; }
    [[ $shard_k =~ ^[0-9]+$ ]] && ((shard_k < sample)) ||
        { echo "--shard takes a number below --sample's" >&2; exit 64; }
    out=target/mutants/workspace
    if ! ((resume)) || [[ ! -f $out/own-crate-outcomes.json ]]; then
        rm -rf "$out"
        shard=()
        ((sample > 1)) && shard=(--shard "$shard_k/$sample" --sharding round-robin)
        echo "== every crate, 1 mutant in $sample (shard $shard_k): against its own crate's tests" >&2
        mutants --workspace "${shard[@]}" --jobserver=false --timeout 120 -o "$out" || exit 1
        cp "$out/mutants.out/outcomes.json" "$out/own-crate-outcomes.json"
    fi
    echo "== the survivors again, against the whole workspace's tests (unit + e2e)" >&2
    # Exactly those: one anchored --re per survivor (not --iterate, whose
    # sharding would pick another sample from what is left).
    mapfile -t survivors < <(python3 - "$out/own-crate-outcomes.json" <<'PY'
import json, sys
meta = set("\\.+*?()|[]{}^$#&-~")
for o in json.load(open(sys.argv[1]))["outcomes"]:
    if isinstance(o["scenario"], dict) and o["summary"] in ("MissedMutant", "Timeout"):
        name = o["scenario"]["Mutant"]["name"]
        print("--re=^" + "".join("\\" + c if c in meta else c for c in name) + "$")
PY
)
    if ((${#survivors[@]})); then
        # Every package's tests, named one by one: --test-workspace leaves out
        # the root package, which holds the end-to-end suite.
        mapfile -t packages < <("$CARGO" metadata --no-deps --format-version 1 |
            python3 -c 'import json,sys; [print("--test-package=" + p["name"]) for p in json.load(sys.stdin)["packages"]]')
        # --jobserver=false: cargo-mutants' jobserver fds would be inherited
        # by the masters the e2e tests start, and the tests that count fds
        # (a master at a low fd limit, serve-metrics' fd leak check) would
        # fail for every mutant: caught for the wrong reason.
        # --no-fail-fast: one failing test binary must not keep the others
        # (the end-to-end suite) from running and saying what they see.
        mutants --workspace "${survivors[@]}" "${packages[@]}" --jobserver=false \
            --timeout 150 -o "$out" -- --no-fail-fast || exit 1
    else
        mkdir -p "$out/mutants.out" && echo '{"outcomes": []}' >"$out/mutants.out/outcomes.json"
    fi
    python3 - "$out" "$sample" "$shard_k" <<'PY'
import collections, json, sys
out, sample, shard_k = sys.argv[1], sys.argv[2], sys.argv[3]
def outcomes(path):
    data = json.load(open(path))
    for o in data["outcomes"]:
        if isinstance(o["scenario"], dict):
            m = o["scenario"]["Mutant"]
            yield m["package"], m["name"], o["summary"]
first = {(p, name): s for p, name, s in outcomes(f"{out}/own-crate-outcomes.json")}
again = {(p, name): s for p, name, s in outcomes(f"{out}/mutants.out/outcomes.json")}
per_crate = collections.defaultdict(collections.Counter)
for key, summary in first.items():
    final = again.get(key, summary) if summary in ("MissedMutant", "Timeout") else summary
    crate = key[0]
    if summary == "Unviable":
        per_crate[crate]["unviable"] += 1
    elif summary == "CaughtMutant":
        per_crate[crate]["own"] += 1
    elif final in ("CaughtMutant", "Timeout"):
        per_crate[crate]["workspace"] += 1
    else:
        per_crate[crate]["missed"] += 1
# A test failing for nearly every mutant fails for the environment, not the
# mutant (cargo-mutants' baseline does not run the root package's tests).
import glob, re
failed = collections.Counter()
logs = glob.glob(f"{out}/mutants.out/log/crates__*.log")
for log in logs:
    failed.update(set(re.findall(r"^test (\S+) \.\.\. FAILED", open(log, errors="replace").read(), re.M)))
for test, n in failed.items():
    if len(logs) >= 5 and n > 0.8 * len(logs):
        print(f"WARNING: {test} failed for {n} of {len(logs)} mutants: an environment problem? "
              "The scores below are not to be trusted.")
print(f"1 mutant in {sample} (shard {shard_k}); score = caught ÷ viable, timeouts counted as caught")
print("| crate | viable | caught by its own tests | caught by the workspace's tests | missed | score |")
print("|---|---:|---:|---:|---:|---:|")
for crate, c in sorted(per_crate.items()):
    viable = c["own"] + c["workspace"] + c["missed"]
    score = f"{100 * (c['own'] + c['workspace']) / viable:.0f} %" if viable else "–"
    print(f"| {crate} | {viable} | {c['own']} | {c['workspace']} | {c['missed']} | {score} |")
PY
    echo "still missed: $out/mutants.out/missed.txt" >&2
    exit 0
fi

run() {  # crate package files...
    local name=$1 package=$2
    shift 2
    local files=()
    for f in "$@"; do files+=(-f "$f"); done
    echo "== $package: ${*:-all files}" >&2
    mutants -p "$package" --test-package "$package" "${files[@]}" \
        --jobserver=false --timeout 60 -o "target/mutants/$name" || return 1
}

if [[ $# -eq 0 ]]; then crates=(proto master worker); else crates=("$@"); fi
for crate in "${crates[@]}"; do
    case $crate in
        proto) run proto handoff-proto ;;
        master) run master handoff-master crates/master/src/dispatch.rs \
            crates/master/src/supervisor.rs crates/master/src/metrics.rs \
            crates/master/src/workers.rs crates/master/src/control.rs \
            crates/master/src/agent.rs ;;
        worker) run worker handoff-worker crates/worker/src/article.rs \
            crates/worker/src/conn.rs crates/worker/src/http.rs \
            crates/worker/src/socket.rs crates/worker/src/fd_room.rs ;;
        *) echo "unknown crate $crate (proto, master, worker)" >&2; exit 64 ;;
    esac || exit 1
done

python3 - "${crates[@]}" <<'PY'
import collections, json, sys
print("| crate | file | caught | missed | timeout | unviable | score |")
print("|---|---|---:|---:|---:|---:|---:|")
for crate in sys.argv[1:]:
    data = json.load(open(f"target/mutants/{crate}/mutants.out/outcomes.json"))
    per_file = collections.defaultdict(collections.Counter)
    for outcome in data["outcomes"]:
        mutant = outcome["scenario"]
        if not isinstance(mutant, dict):
            continue  # the baseline
        per_file[mutant["Mutant"]["file"]][outcome["summary"]] += 1
    total = collections.Counter()
    for file, c in sorted(per_file.items()):
        total.update(c)
        caught, missed, timeout = c["CaughtMutant"], c["MissedMutant"], c["Timeout"]
        viable = caught + missed + timeout
        score = f"{100 * (caught + timeout) / viable:.0f} %" if viable else "–"
        print(f"| {crate} | {file} | {caught} | {missed} | {timeout} | {c['Unviable']} | {score} |")
    viable = total["CaughtMutant"] + total["MissedMutant"] + total["Timeout"]
    score = f"{100 * (total['CaughtMutant'] + total['Timeout']) / viable:.0f} %" if viable else "–"
    print(f"| **{crate}** | all | {total['CaughtMutant']} | {total['MissedMutant']} | "
          f"{total['Timeout']} | {total['Unviable']} | **{score}** |")
PY
