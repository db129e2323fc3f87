#!/usr/bin/env python3
"""Runs a command while stopping and continuing its processes, as a paused
machine does (a CI host's VM, a cgroup freezer, a debugger).

  scripts/stop_continue.py [--period SECONDS] -- COMMAND...

Every PERIOD seconds (default 0.5) every descendant of COMMAND gets SIGSTOP,
then SIGCONT 20 ms later. Processes a test stopped on purpose (already in
state T) are left as they are. Blocking calls come back early from such a
pause: epoll_wait(2) and reads with a timeout (SO_RCVTIMEO) fail with
EINTR even without a signal handler (signal(7)), which the tests must
survive. Exits with COMMAND's status; gives up after 20 minutes.
"""
import argparse
import os
import signal
import subprocess
import sys
import time

PAUSE = 0.02
LIMIT = 20 * 60


def stat_fields(pid):
    """(state, parent pid) of `pid`, or None once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return fields[0], int(fields[1])


def running_descendants(root):
    children = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = stat_fields(int(entry))
            if fields:
                children.setdefault(fields[1], []).append((int(entry), fields[0]))
    found, todo = [], [root]
    while todo:
        for pid, state in children.get(todo.pop(), []):
            todo.append(pid)
            if state not in ("T", "t"):
                found.append(pid)
    return found


def send(pids, sig):
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--period", type=float, default=0.5)
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command")
    child = subprocess.Popen(command)
    deadline, pauses = time.monotonic() + LIMIT, 0
    while child.poll() is None and time.monotonic() < deadline:
        time.sleep(args.period)
        pids = running_descendants(child.pid)
        send(pids, signal.SIGSTOP)
        time.sleep(PAUSE)
        send(pids, signal.SIGCONT)
        pauses += 1
    if child.poll() is None:
        child.kill()
        print(f"stop_continue: gave up after {LIMIT} s", file=sys.stderr)
    status = child.wait()
    print(f"stop_continue: {pauses} pauses; exit status {status}", file=sys.stderr)
    sys.exit(1 if status < 0 else status)


if __name__ == "__main__":
    main()
