#!/bin/bash
# usage: wsys.sh N [ref]  -> syscalls per conn of all workers
ROOT=$(cd "$(dirname "$0")/../.." && pwd)  # the repository
N=$1; KIND=${2:-handoff}; BIN=$ROOT/target/release; RD=$(mktemp -d)
if [ $KIND = ref ]; then $BIN/handoff-bench refmaster --listen 127.0.0.1:0 --workers $N --backlog 4096 > $RD/out 2>/dev/null &
else RUST_LOG=warn $BIN/handoff-master --listen 127.0.0.1:0 --workers $N --run-dir $RD --backlog 4096 > $RD/out 2>/dev/null & fi
MP=$!
for i in $(seq 100); do grep -q "listening on" $RD/out && break; sleep 0.1; done
ADDR=$(grep -o "listening on [^ ]*" $RD/out | awk '{print $3}')
sleep 2
WS=$(cat /proc/$MP/task/$MP/children | tr ' ' ,); WS=${WS%,}
EV=$(for s in accept4 sendmsg recvmsg close epoll_wait epoll_ctl recvfrom sendto shutdown poll fcntl ioctl getsockopt setsockopt clock_gettime futex read write; do printf "syscalls:sys_enter_$s,"; done)raw_syscalls:sys_enter
perf stat -x, -e $EV -p $WS -o $RD/stat 2>/dev/null &
PP=$!; sleep 0.5
$BIN/handoff-bench --target $ADDR -c 64 -d 3 --warmup 0 --json 2>/dev/null | tail -1 > $RD/bench.json
kill -INT $PP; wait $PP
python3 - $RD <<'PY'
import json,sys
d=sys.argv[1]; n=json.load(open(d+"/bench.json"))["connections"]
for l in open(d+"/stat"):
    p=l.strip().split(",")
    if len(p)>2 and p[0].replace(".","").isdigit() and float(p[0])>0:
        print(f"  {p[2].replace('syscalls:sys_enter_',''):28s} {float(p[0])/n:.2f}")
PY
kill $MP; wait $MP 2>/dev/null
