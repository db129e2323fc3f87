//! `handoff-ctl`: reads a running master's stats over its control socket and
//! prints them as aligned tables for people or JSON for scripts; `top`
//! refreshes once a second to show which process is the bottleneck;
//! `serve-metrics` serves the Prometheus text over HTTP for a scraper.
#![forbid(unsafe_code)]

mod client;
mod render;
mod serve;
#[cfg(test)]
mod test_samples;
mod top;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Result;
use clap::{Parser, Subcommand};
use handoff_proto::control::{InfoReply, MetricsReply, OkReply, WorkersReply};

use crate::client::ControlClient;

/// Reads a running handoff-master's stats over its control socket.
#[derive(Debug, Parser)]
#[command(name = "handoff-ctl", version)]
struct Args {
    /// The master's run directory
    /// [default: $XDG_RUNTIME_DIR/handoff, else /tmp/handoff-<uid>].
    /// `info` takes it several times and shows the masters side by side
    /// (the instances of `make cluster`).
    #[arg(long, global = true, value_name = "DIR")]
    run_dir: Vec<PathBuf>,

    /// Print the master's JSON answer instead of a table.
    #[arg(long, global = true)]
    json: bool,

    #[command(subcommand)]
    command: CtlCommand,
}

#[derive(Debug, Subcommand)]
enum CtlCommand {
    /// Master counters, CPU and memory.
    Info,
    /// One row per worker (the columns that fit 100 columns; --wide for all).
    #[command(alias = "stats")]
    Workers {
        /// Every column: bytes, resets, timeouts, CPU seconds, latencies.
        #[arg(long)]
        wide: bool,
    },
    /// Prometheus text exposition.
    Metrics,
    /// Refresh once a second: connections/s, in flight and CPU % per process.
    Top {
        /// Seconds between refreshes.
        #[arg(long, default_value_t = 1.0)]
        interval: f64,
        /// Stop after this many refreshes [default: until Ctrl-C].
        #[arg(long)]
        iterations: Option<u64>,
    },
    /// Check that the master answers.
    Ping,
    /// Ask the master for a graceful shutdown (like SIGTERM: with
    /// --drain-secs, the agent check says drain that long first).
    Stop,
    /// Tell the load balancer to send no new connections: the agent check
    /// (`--agent-check`) says `drain`; the master keeps serving.
    Drain,
    /// Undo `drain`: the agent check says `up` again.
    Ready,
    /// Replace every spawned worker one by one (like SIGHUP).
    Reload,
    /// Keep N spawned workers (like SIGTTIN/SIGTTOU).
    Scale {
        /// Number of spawned workers.
        n: u32,
    },
    /// Upgrade the master (like SIGUSR2): start a new one from the binary
    /// on disk, hand it the sockets, and wait until it is in charge (exit
    /// 0) or the upgrade failed (exit 1, with the master's reason).
    Upgrade {
        /// Seconds to wait for the outcome.
        #[arg(long, default_value = "60", value_parser = parse_seconds)]
        timeout: Duration,
    },
    /// Serve the Prometheus metrics over HTTP (GET /metrics) for a scraper,
    /// asking the master once per scrape. One process and thread, bounded
    /// clients, each with a deadline.
    ServeMetrics {
        /// `unix:PATH` (a socket only this uid can use, mode 0600) or
        /// `HOST:PORT` (readable by every local user: the control socket's
        /// data is then public) [default: unix:<run-dir>/metrics.sock].
        #[arg(long)]
        listen: Option<serve::Listen>,
        /// Most HTTP clients at once; when full, the oldest one still
        /// sending its request is closed to make room.
        #[arg(long, default_value_t = 64)]
        max_clients: usize,
        /// Seconds a client has to send its request and take the answer.
        #[arg(long, default_value = "5", value_parser = parse_seconds)]
        request_timeout: Duration,
    },
}

fn parse_seconds(text: &str) -> Result<Duration, String> {
    text.parse::<f64>()
        .ok()
        .filter(|secs| secs.is_finite() && *secs > 0.0)
        .and_then(|secs| Duration::try_from_secs_f64(secs).ok())
        .ok_or_else(|| format!("`{text}` is not a positive number of seconds"))
}

fn main() -> ExitCode {
    let args = match handoff_docgen::parse_or_exit_with::<Args>(&[(
        "EXIT STATUS",
        &[
            ("0", "The master answered, and said yes."),
            ("1", "No master answered, or it refused (the reason is printed)."),
            ("64", "A bad command line."),
        ],
    )]) {
        Ok(args) => args,
        Err(code) => return code,
    };
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("handoff-ctl: {err:#}");
            ExitCode::from(1)
        }
    }
}

fn run(args: Args) -> Result<()> {
    if args.run_dir.len() > 1 {
        return match args.command {
            CtlCommand::Info => info_of_several(&args.run_dir, args.json),
            _ => anyhow::bail!("only `info` takes --run-dir more than once"),
        };
    }
    let run_dir = args.run_dir.into_iter().next().unwrap_or_else(|| {
        handoff_proto::default_run_dir(
            std::env::var_os("XDG_RUNTIME_DIR").as_deref(),
            nix::unistd::geteuid().as_raw(),
        )
    });
    if let CtlCommand::ServeMetrics { listen, max_clients, request_timeout } = args.command {
        let listen =
            listen.unwrap_or_else(|| serve::Listen::Unix(run_dir.join(serve::DEFAULT_SOCKET_NAME)));
        let options = serve::Options { listen, max_clients, request_timeout };
        return serve::run(&run_dir, &options);
    }
    let mut client = ControlClient::connect(&run_dir)?;
    match args.command {
        CtlCommand::Info => {
            let (raw, info) = client.ask::<InfoReply>("info")?;
            print_or_json(args.json, &raw, || render::info_table(&info));
        }
        CtlCommand::Workers { wide } => {
            let (raw, workers) = client.ask::<WorkersReply>("workers")?;
            print_or_json(args.json, &raw, || render::workers_table_for(&workers.workers, wide));
        }
        CtlCommand::Metrics => {
            let (raw, metrics) = client.ask::<MetricsReply>("metrics")?;
            print_or_json(args.json, &raw, || metrics.metrics.clone());
        }
        CtlCommand::Ping | CtlCommand::Stop => {
            let command = if matches!(args.command, CtlCommand::Ping) { "ping" } else { "stop" };
            let (raw, ok) = client.ask::<OkReply>(command)?;
            print_or_json(args.json, &raw, || format!("{}\n", ok.ok));
        }
        CtlCommand::Reload | CtlCommand::Drain | CtlCommand::Ready => {
            let command = match args.command {
                CtlCommand::Drain => "drain",
                CtlCommand::Ready => "ready",
                _ => "reload",
            };
            let (raw, ok) = client.ask::<OkReply>(command)?;
            print_or_json(args.json, &raw, || format!("{}\n", ok.ok));
        }
        CtlCommand::Scale { n } => {
            let (raw, ok) = client.ask::<OkReply>(&format!("scale {n}"))?;
            print_or_json(args.json, &raw, || format!("{}\n", ok.ok));
        }
        CtlCommand::Upgrade { timeout } => {
            let (_, before) = client.ask::<InfoReply>("info")?;
            let (_, ok) = client.ask::<OkReply>("upgrade")?;
            drop(client);
            eprintln!("{}", ok.ok);
            let after = wait_for_upgrade(&run_dir, &before, timeout)?;
            println!(
                "upgraded: master pid {} -> {} (generation {})",
                before.pid, after.pid, after.generation
            );
        }
        CtlCommand::Top { interval, iterations } => {
            if args.json {
                anyhow::bail!(
                    "top draws a live table and has no JSON form; for JSON ask `handoff-ctl \
                     --json info` or `--json workers` (once a second, if you like)"
                );
            }
            let interval =
                Duration::try_from_secs_f64(interval).ok().filter(|d| !d.is_zero()).ok_or_else(
                    || anyhow::anyhow!("--interval must be a positive number of seconds"),
                )?;
            top::run(&run_dir, client, interval, iterations)?;
        }
        CtlCommand::ServeMetrics { .. } => {}
    }
    Ok(())
}

/// `info` of several masters, one column each (JSON: one object per
/// master, with its run dir and its `info` or the error). Fails if one did
/// not answer, after printing what the others said.
fn info_of_several(run_dirs: &[PathBuf], json: bool) -> Result<()> {
    /// The raw JSON line and what it says, or why there is none.
    type Answer = Result<(String, InfoReply), String>;
    let answers: Vec<(String, Answer)> = run_dirs
        .iter()
        .map(|dir| {
            let answer = ControlClient::connect(dir)
                .and_then(|mut client| client.ask::<InfoReply>("info"))
                .map_err(|err| format!("{err:#}"));
            (dir.display().to_string(), answer)
        })
        .collect();
    let unreachable = answers.iter().filter(|(_, answer)| answer.is_err()).count();
    if json {
        let objects: Vec<serde_json::Value> = answers
            .iter()
            .map(|(dir, answer)| match answer {
                Ok((raw, _)) => serde_json::json!({
                    "run_dir": dir,
                    "info": serde_json::from_str::<serde_json::Value>(raw).unwrap_or_default(),
                }),
                Err(err) => serde_json::json!({ "run_dir": dir, "error": err }),
            })
            .collect();
        println!("{}", serde_json::Value::Array(objects));
    } else {
        let instances: Vec<(String, Result<InfoReply, String>)> =
            answers.into_iter().map(|(dir, answer)| (dir, answer.map(|(_, info)| info))).collect();
        print!("{}", render::info_side_by_side(&instances));
    }
    if unreachable > 0 {
        anyhow::bail!("{unreachable} of {} masters did not answer", run_dirs.len());
    }
    Ok(())
}

/// Polls `info` (a new connection each time: the new master answers on
/// the same socket once in charge) until another master is in charge, or
/// the old one says the upgrade failed.
fn wait_for_upgrade(
    run_dir: &std::path::Path,
    before: &InfoReply,
    timeout: Duration,
) -> Result<InfoReply> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let info = ControlClient::connect(run_dir).and_then(|mut c| c.ask::<InfoReply>("info"));
        if let Ok((_, info)) = info {
            if info.pid != before.pid && info.upgrade != "taking over" {
                return Ok(info);
            }
            if info.pid == before.pid && info.upgrade == "failed" {
                anyhow::bail!(
                    "upgrade failed: {}; the master (pid {}) keeps serving",
                    info.upgrade_error.as_deref().unwrap_or("no reason given"),
                    info.pid
                );
            }
        }
        if std::time::Instant::now() >= deadline {
            anyhow::bail!("no outcome within {timeout:?}: check the master's log");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn print_or_json(json: bool, raw: &str, table: impl FnOnce() -> String) {
    if json {
        println!("{raw}");
    } else {
        print!("{}", table());
    }
}
