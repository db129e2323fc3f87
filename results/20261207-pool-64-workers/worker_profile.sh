#!/bin/bash
# usage: N=64 worker_profile.sh handoff|ref -> /tmp/w-KIND.data (perf record of all N workers), worker CPU per conn
ROOT=$(cd "$(dirname "$0")/../.." && pwd)  # the repository
KIND=$1; BIN=$ROOT/target/release; RD=$(mktemp -d)
if [ $KIND = ref ]; then $BIN/handoff-bench refmaster --listen 127.0.0.1:0 --workers ${N:-2} --backlog 4096 > $RD/out 2>/dev/null &
else RUST_LOG=warn $BIN/handoff-master --listen 127.0.0.1:0 --workers ${N:-2} --run-dir $RD --backlog 4096 > $RD/out 2>/dev/null & fi
MP=$!
for i in $(seq 100); do grep -q "listening on" $RD/out && break; sleep 0.1; done
ADDR=$(grep -o "listening on [^ ]*" $RD/out | awk '{print $3}')
sleep 1.5
WS=$(cat /proc/$MP/task/$MP/children | tr ' ' ,); WS=${WS%,}
$BIN/handoff-bench --target $ADDR -c 64 -d 1 --warmup 0 >/dev/null 2>&1
perf record -g -e cpu-clock -F 2000 -o /tmp/w-$KIND.data -p $WS 2>/dev/null >/dev/null &
PP=$!
sleep 0.5
c() { s=0; for p in ${WS//,/ }; do s=$((s+$(awk '{print $1}' /proc/$p/schedstat))); done; echo $s; }
C0=$(c)
$BIN/handoff-bench --target $ADDR -c 64 -d 4 --warmup 0 --json 2>/dev/null | tail -1 > $RD/bench.json
C1=$(c)
kill -INT $PP; wait $PP
python3 -c "import json;r=json.load(open('$RD/bench.json'));print('$KIND', r['connections'], 'conns', ($C1-$C0)/1e3/r['connections'], 'worker us/conn (sampled)')"
kill $MP; wait $MP 2>/dev/null
