#!/usr/bin/env bash
# Mutation testing of the modules whose behaviour unit tests can pin down
# (issue 13), with cargo-mutants: each crate's mutants against that crate's
# own tests (fast; the end-to-end suite is too slow to run per mutant on 2
# cores). Equivalent mutants are listed, each with its reason, in
# .cargo/mutants.toml. Prints the score per file and per crate; the full
# output stays in target/mutants/<crate>/mutants.out/ (missed.txt, diff/).
# Not part of `make test`: it takes several minutes.
#   scripts/mutants.sh [proto|master|worker ...]   (default: all three)
set -uo pipefail
cd "$(dirname "$0")/.."
CARGO="${CARGO:-cargo}"
if ! "$CARGO" mutants --version >/dev/null 2>&1; then
    echo "installing cargo-mutants (cargo install cargo-mutants --locked)" >&2
    "$CARGO" install cargo-mutants --locked || exit 1
fi

run() {  # crate package files...
    local name=$1 package=$2
    shift 2
    local files=()
    for f in "$@"; do files+=(-f "$f"); done
    echo "== $package: ${*:-all files}" >&2
    # Exit status 2 means some mutants were missed: reported below, not an error.
    mkdir -p "target/mutants"
    "$CARGO" mutants -p "$package" --test-package "$package" "${files[@]}" \
        --timeout 60 -o "target/mutants/$name" >&2
    local status=$?
    if [[ $status -ne 0 && $status -ne 2 && $status -ne 3 ]]; then
        echo "cargo mutants failed for $package (status $status)" >&2
        return 1
    fi
}

if [[ $# -eq 0 ]]; then crates=(proto master worker); else crates=("$@"); fi
for crate in "${crates[@]}"; do
    case $crate in
        proto) run proto handoff-proto ;;
        master) run master handoff-master crates/master/src/dispatch.rs \
            crates/master/src/supervisor.rs crates/master/src/metrics.rs \
            crates/master/src/workers.rs crates/master/src/control.rs ;;
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
