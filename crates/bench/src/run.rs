//! One bench run: spawns the event-loop threads, times the window, merges
//! what they measured, and measures the bench's own CPU over the window.

use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::Instant;

use anyhow::{anyhow, Context, Result};

use crate::check::{article_reply, Expect};
use crate::cli::Args;
use crate::cpu::CpuTimes;
use crate::engine::{self, Plan};
use crate::stats::{Stats, Summary};

/// Runs the load described by `args` and summarizes it.
pub fn run(args: &Args) -> Result<Summary> {
    let payload = args.payload();
    let (request, expect) = if args.http {
        (http_request(args), Expect::Http)
    } else {
        (payload.clone().into_boxed_slice(), Expect::Exact(article_reply(&payload)))
    };
    let start = Instant::now();
    let warmup_end = start + args.warmup;
    let plan = Plan {
        addr: args.target,
        request,
        expect,
        timeout: args.timeout,
        drain: args.drain,
        warmup_end,
        window_end: warmup_end + args.duration,
        budget: args.requests.map(AtomicU64::new),
        to_start: args.requests.map(AtomicU64::new),
        stop: AtomicBool::new(false),
    };
    let (done_tx, done_rx) = mpsc::sync_channel::<Instant>(1);

    let (results, window, cpu) = std::thread::scope(|scope| {
        let handles: Vec<_> = split(args.concurrency, args.threads)
            .into_iter()
            .enumerate()
            .map(|(n, slots)| {
                let plan = &plan;
                let done = done_tx.clone();
                std::thread::Builder::new()
                    .name(format!("bench-{n}"))
                    .spawn_scoped(scope, move || engine::run(plan, slots, done))
            })
            .collect();

        sleep_until(warmup_end);
        let cpu_start = CpuTimes::now();
        mark(args, "window-start");
        let end = if plan.budget.is_some() {
            let left = plan.window_end.saturating_duration_since(Instant::now());
            done_rx.recv_timeout(left).unwrap_or(plan.window_end)
        } else {
            sleep_until(plan.window_end);
            plan.window_end
        };
        plan.stop.store(true, Ordering::Relaxed);
        let cpu_end = CpuTimes::now();
        mark(args, "window-end");

        let mut results = Vec::new();
        for handle in handles {
            let handle = handle.context("spawning a bench thread")?;
            let result = handle.join().map_err(|_| anyhow!("a bench thread panicked"))??;
            results.push(result);
        }
        let window = end.saturating_duration_since(warmup_end);
        anyhow::Ok((results, window, cpu_end?.since(cpu_start?)))
    })?;

    let mut stats = Stats::new()?;
    let mut warmup_connections = 0;
    let mut abandoned = 0;
    for result in &results {
        stats.merge(&result.stats)?;
        warmup_connections += result.warmup_done;
        abandoned += result.abandoned;
    }
    let window_s = window.as_secs_f64();
    let (conns_per_s, latency_us, cpu) = Summary::compute(&stats, window_s, cpu.user_s, cpu.sys_s);
    Ok(Summary {
        target: args.target.to_string(),
        mode: if args.http { "http" } else { "article" },
        concurrency: args.concurrency,
        threads: args.threads,
        payload_bytes: if args.http { 0 } else { payload.len() },
        warmup_s: args.warmup.as_secs_f64(),
        window_s,
        connections: stats.ok,
        conns_per_s,
        errors: stats.errors,
        errors_total: stats.errors.total(),
        latency_us,
        cpu,
        warmup_connections,
        abandoned,
    })
}

/// `concurrency` slots spread over `threads` as evenly as possible.
fn split(concurrency: usize, threads: usize) -> Vec<usize> {
    (0..threads).map(|t| concurrency / threads + usize::from(t < concurrency % threads)).collect()
}

fn http_request(args: &Args) -> Box<[u8]> {
    format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: handoff-bench\r\nConnection: close\r\n\r\n",
        args.path, args.target
    )
    .into_bytes()
    .into_boxed_slice()
}

fn sleep_until(at: Instant) {
    let now = Instant::now();
    if at > now {
        std::thread::sleep(at - now);
    }
}

fn mark(args: &Args, what: &str) {
    if args.marks {
        let mut stderr = std::io::stderr().lock();
        let _ = writeln!(stderr, "handoff-bench: {what}");
        let _ = stderr.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_split_evenly() {
        assert_eq!(split(64, 1), vec![64]);
        assert_eq!(split(64, 3), vec![22, 21, 21]);
        assert_eq!(split(2, 2), vec![1, 1]);
    }
}
