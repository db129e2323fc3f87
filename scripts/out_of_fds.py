#!/usr/bin/env python3
"""Measures handoff at its open-file limits (issue #10, items 5 and 6).

  scripts/out_of_fds.py accept  [--bin-dir DIR] [-- MASTER ARGS...]
      A master (+2 workers) under `ulimit -n 64`, and the same without the
      limit, each loaded by `handoff-bench -c 100 -d 5`: connections/s, p99,
      errors, and how often the master paused accepting for lack of fds.
  scripts/out_of_fds.py workers [--bin-dir DIR] [-- MASTER ARGS...]
      Two workers started by hand under `ulimit -n 300`, 800 idle clients
      (more than they can hold): the master's CPU while they wait, how many
      connections were handed back and forth, then every client sends and
      each reply is checked, then 200 prompt clients are timed.

Everything runs on 127.0.0.1, bounded in time; build first
(`cargo build --release --workspace --bins`). DIR defaults to target/release.
"""
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time


def start_master(bins, run_dir, limit, args):
    prefix = f"ulimit -n {limit} && " if limit else ""
    master = subprocess.Popen(
        ["sh", "-c", prefix + 'exec "$0" "$@"', f"{bins}/handoff-master",
         "--listen", "127.0.0.1:0", "--run-dir", run_dir, *args],
        stdout=subprocess.PIPE, stderr=open(f"{run_dir}.log", "w"), text=True)
    line = master.stdout.readline()
    host, port = line.split()[-1].rsplit(":", 1)
    return master, (host, int(port))


def info(bins, run_dir):
    out = subprocess.run([f"{bins}/handoff-ctl", "--run-dir", run_dir, "info", "--json"],
                         capture_output=True, text=True, timeout=10).stdout
    return json.loads(out)


def cpu_ticks(pid):
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def request(addr, payload, timeout=10):
    with socket.create_connection(addr, timeout=timeout) as s:
        s.settimeout(timeout)
        s.sendall(payload)
        reply = b""
        while chunk := s.recv(4096):
            reply += chunk
        return reply


def accept(bins, args, scratch):
    for limit in (None, 64):
        run_dir = f"{scratch}/run-{limit}"
        master, addr = start_master(bins, run_dir, limit, ["--workers", "2", *args])
        try:
            time.sleep(0.3)
            out = subprocess.run([f"{bins}/handoff-bench", "-t", f"{addr[0]}:{addr[1]}",
                                  "-c", "100", "-d", "5", "--json"],
                                 capture_output=True, text=True, timeout=60).stdout
            bench = json.loads(out)
            stats = info(bins, run_dir)
            print(f"ulimit -n {limit or 'unlimited'}: {bench['conns_per_s']:.0f} conn/s, "
                  f"p99 {bench['latency_us']['p99'] / 1000:.1f} ms, {bench['errors_total']} errors, "
                  f"accept paused {stats['accept_paused_for_resources']} times, lost {stats['lost']}")
        finally:
            master.kill()
            master.wait()


def workers(bins, args, scratch):
    run_dir = f"{scratch}/run"
    master, addr = start_master(bins, run_dir, None, ["--workers", "0", *args])
    procs = [subprocess.Popen(
        ["sh", "-c", 'ulimit -n 300 && exec "$0" "$@"', f"{bins}/handoff-worker",
         "--run-dir", run_dir, "--read-timeout", "30"],
        stderr=open(f"{scratch}/worker{i}.log", "w")) for i in range(2)]
    try:
        time.sleep(0.5)
        idle = [socket.create_connection(addr, timeout=10) for _ in range(800)]
        time.sleep(1.0)
        before, ticks = info(bins, run_dir), cpu_ticks(master.pid)
        time.sleep(2.0)
        after, used = info(bins, run_dir), cpu_ticks(master.pid) - ticks
        print(f"800 idle clients: master CPU {used / 2:.0f}% of a core; redispatched "
              f"{before['redispatched']} -> {after['redispatched']} in 2 s; failed {after['failed']}; "
              f"queued in the master {after['queued']}")
        for i, s in enumerate(idle):
            s.sendall(b"idle %d" % i)
        answered = 0
        for i, s in enumerate(idle):
            s.settimeout(15)
            reply = b""
            try:
                while chunk := s.recv(4096):
                    reply += chunk
            except OSError:
                pass
            answered += reply == b"server get message: idle %d" % i
            s.close()
        time.sleep(0.5)
        final = info(bins, run_dir)
        print(f"then each sends: {answered} of 800 answered; failed {final['failed']}, lost "
              f"{final['lost']}, redispatched {final['redispatched']}, dispatched {final['dispatched']}")
        times, missed = [], 0
        for _ in range(200):
            started = time.time()
            try:
                missed += request(addr, b"prompt", timeout=5) != b"server get message: prompt"
            except OSError:
                missed += 1
            times.append(time.time() - started)
        times.sort()
        print(f"then 200 prompt clients: p50 {times[100] * 1000:.2f} ms, "
              f"p99 {times[198] * 1000:.2f} ms, {missed} without a reply")
        logs = os.path.getsize(f"{run_dir}.log") + sum(
            os.path.getsize(f"{scratch}/worker{i}.log") for i in range(2))
        print(f"log written: {logs} bytes")
    finally:
        for proc in procs:
            proc.kill()
        master.kill()
        master.wait()


def main():
    argv = sys.argv[1:]
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    bins = "target/release"
    if "--bin-dir" in argv:
        bins = argv[argv.index("--bin-dir") + 1]
    if not argv or argv[0] not in ("accept", "workers"):
        sys.exit(__doc__)
    scratch = tempfile.mkdtemp(prefix="handoff-fds-")
    try:
        {"accept": accept, "workers": workers}[argv[0]](os.path.abspath(bins), extra, scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
