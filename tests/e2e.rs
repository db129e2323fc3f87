//! End-to-end tests: real master and worker processes, real sockets, real
//! signals. Each test has its own ephemeral port and run directory, so they
//! run in parallel. `make test` builds the binaries first.

mod support;

/// The article's protocol, byte for byte, through the master.
mod protocol;

/// Many clients at once, spread over several workers.
mod load;

/// Workers joining late, shutdown, the run directory.
mod lifecycle;

/// Bad input on the workers' socket; what the fds look like in a worker.
mod robustness;

/// Full worker channels and a full master queue: nothing is lost.
mod backpressure;

/// The control socket, its counters, `metrics`, `handoff-ctl`.
mod control;

/// Worker crashes and hangs, reloads, scaling, fd exhaustion, idle clients.
mod reliability;

/// `--mode`, `--policy`, `--batch`, simulated work, HTTP.
mod modes;

/// The run directory: refused when not ours, watched while running.
mod run_dir;

/// Control-socket floods, idle clients, a full house, accepts at EMFILE.
mod control_limits;

/// `handoff-ctl serve-metrics`: metrics over HTTP, bounded.
mod serve_metrics;

/// Out of fds (master and workers), closed stderr, stray signals, exit
/// statuses, queue-full logging, HTTP salvage (issue #10).
mod hardening;

/// Master upgrade (SIGUSR2, `upgrade`): no client refused or reset (issue #11).
mod upgrade;

/// `--protocol http`: HTTP/1.0 keep-alive with `ab -k`, keep-alive ended
/// by a draining worker (SIGTERM, the master killed) (issue #10).
mod http;

/// systemd: socket activation, readiness notifications, the shipped units
/// (issue #11).
mod systemd;

/// Listen forms, `--pid-file`, `--log-format json`, `--user` (issue #11).
mod operations;

/// `--proxy-protocol`: PROXY v1/v2 headers read and stripped (issue #12).
mod proxy_protocol;

/// `--agent-check`, `drain`/`ready`, `--drain-secs` (issue #12).
mod agent;

/// Three hosts behind a real HAProxy: load, drain, kill -9 (issue #12).
mod cluster;

/// Man pages and completions generated from the flags (issue #11).
mod docs;

/// `--mode reuseport --policy least|pull`: the kernel balancer (eBPF):
/// load-aware picks, queues moved off closing listeners.
mod kernel_balancer;

/// The README and docs/ against the code: links, commands, `info` and
/// `workers` fields.
mod readme;
