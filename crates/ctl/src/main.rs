//! `handoff-ctl`: reads a running master's stats over its control socket and
//! prints them as aligned tables for people or JSON for scripts; `top`
//! refreshes once a second to show which process is the bottleneck;
//! `serve-metrics` serves the Prometheus text over HTTP for a scraper.
#![forbid(unsafe_code)]

mod client;
mod render;
mod serve;
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
    #[arg(long, global = true)]
    run_dir: Option<PathBuf>,

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
    /// One row per worker.
    #[command(alias = "stats")]
    Workers,
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
    /// Ask the master for a graceful shutdown (like SIGTERM).
    Stop,
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
    let args = Args::parse();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("handoff-ctl: {err:#}");
            ExitCode::from(1)
        }
    }
}

fn run(args: Args) -> Result<()> {
    let run_dir = args.run_dir.unwrap_or_else(|| {
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
        CtlCommand::Workers => {
            let (raw, workers) = client.ask::<WorkersReply>("workers")?;
            print_or_json(args.json, &raw, || render::workers_table(&workers.workers));
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
        CtlCommand::Top { interval, iterations } => {
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

fn print_or_json(json: bool, raw: &str, table: impl FnOnce() -> String) {
    if json {
        println!("{raw}");
    } else {
        print!("{}", table());
    }
}
