#!/bin/bash
# usage: absorb.sh SPIN_NS -> master us/conn, accept4/conn, switches/conn
ROOT=$(cd "$(dirname "$0")/../.." && pwd)  # the repository
SPIN=$1; BIN=${SPIN_BIN:-/tmp/spin/target/release}; BENCH=$ROOT/target/release/handoff-bench; RD=$(mktemp -d)
HANDOFF_SPIN_NS=$SPIN RUST_LOG=warn $BIN/handoff-master --listen 127.0.0.1:0 --workers 2 --run-dir $RD --backlog 4096 > $RD/out 2>/dev/null &
MP=$!
for i in $(seq 100); do grep -q "listening on" $RD/out && break; sleep 0.1; done
ADDR=$(grep -o "listening on [^ ]*" $RD/out | awk '{print $3}')
sleep 1.5
$BENCH --target $ADDR -c 64 -d 1 --warmup 0 >/dev/null 2>&1
perf stat -x, -e syscalls:sys_enter_accept4,syscalls:sys_enter_epoll_wait -p $MP -o $RD/stat 2>/dev/null &
PP=$!; sleep 0.3
C0=$(awk '{print $1}' /proc/$MP/schedstat); V0=$(grep -E "^voluntary" /proc/$MP/status | awk '{print $2}'); N0=$(grep -E "^nonvoluntary" /proc/$MP/status | awk '{print $2}')
$BENCH --target $ADDR -c 64 -d 4 --warmup 0 --json 2>/dev/null | tail -1 > $RD/bench.json
C1=$(awk '{print $1}' /proc/$MP/schedstat); V1=$(grep -E "^voluntary" /proc/$MP/status | awk '{print $2}'); N1=$(grep -E "^nonvoluntary" /proc/$MP/status | awk '{print $2}')
kill -INT $PP; wait $PP
python3 - $RD $SPIN $C0 $C1 $V0 $V1 $N0 $N1 <<'PY'
import json,sys
d,spin,c0,c1,v0,v1,n0,n1=sys.argv[1],int(sys.argv[2]),*map(int,sys.argv[3:])
r=json.load(open(d+"/bench.json")); n=r["connections"]
cnt={}
for l in open(d+"/stat"):
    p=l.strip().split(",")
    if len(p)>2 and p[0].replace(".","").isdigit(): cnt[p[2].split("_")[-1]]=float(p[0])
acc=cnt.get("accept4",0)/n; ep=cnt.get("wait",0)/n
print(f"spin {spin:5d} ns: master {(c1-c0)/1e3/n:5.2f} us/conn, {r['conns_per_s']:7.0f} c/s, accept4 {acc:.3f}/conn (failing ~{acc-1:.3f}), epoll_wait {ep:.3f}, added work ~{(acc-1)*spin/1e3:.2f} us/conn, vol {(v1-v0)/n:.3f} invol {(n1-n0)/n:.3f}")
PY
kill $MP; wait $MP 2>/dev/null
