//! The control socket's language: one command per line in, one JSON object
//! per line out (`<run-dir>/control.sock`, as HAProxy's runtime API works
//! with `socat`).
//!
//! [`parse_command`] turns a line into a [`Command`] and never panics; the
//! reply types are what the master serializes and `handoff-ctl` reads back.

use serde::{Deserialize, Serialize};

/// File name of the control socket inside the run directory.
pub const CONTROL_SOCKET_NAME: &str = "control.sock";

/// The longest command line the master reads; longer lines get an error.
pub const MAX_COMMAND_LEN: usize = 1024;

/// The most workers `scale` accepts.
pub const MAX_SCALE: u32 = 1024;

/// A control command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// List the commands.
    Help,
    /// Master-wide counters and resources.
    Info,
    /// One row per worker.
    Workers,
    /// Prometheus text exposition of everything above.
    Metrics,
    /// Liveness check.
    Ping,
    /// Graceful shutdown, as SIGTERM.
    Stop,
    /// Keep this many spawned workers (adds or retires workers).
    Scale(u32),
    /// Replace every spawned worker, one by one, as SIGHUP.
    Reload,
    /// Start a new master from the executable on disk and hand it the
    /// listening socket, as SIGUSR2.
    Upgrade,
    /// Tell the load balancer (the `--agent-check` answer) to send no new
    /// connections; the master keeps serving whatever comes.
    Drain,
    /// Undo `drain`: the agent answers `up` with a weight again.
    Ready,
    /// Close this control connection.
    Quit,
}

/// Name, aliases and one-line help of each command, in `help` order.
pub const COMMANDS: &[(Command, &str, &[&str], &str)] = &[
    (Command::Help, "help", &["?"], "list the commands"),
    (Command::Info, "info", &[], "master counters, CPU and memory"),
    (Command::Workers, "workers", &["stats"], "per-worker counters, CPU, memory, latencies"),
    (Command::Metrics, "metrics", &[], "Prometheus text exposition, in the \"metrics\" field"),
    (Command::Ping, "ping", &[], "liveness check"),
    (Command::Scale(0), "scale", &[], "scale N: keep N spawned workers (like SIGTTIN/SIGTTOU)"),
    (Command::Reload, "reload", &[], "replace every spawned worker one by one, like SIGHUP"),
    (
        Command::Upgrade,
        "upgrade",
        &[],
        "start a new master from the binary on disk and hand it the sockets, like SIGUSR2",
    ),
    (
        Command::Drain,
        "drain",
        &[],
        "tell the load balancer (--agent-check) to send no new connections; serving goes on",
    ),
    (Command::Ready, "ready", &[], "undo drain: the agent check answers up again"),
    (Command::Stop, "stop", &[], "graceful shutdown, like SIGTERM (after --drain-secs of drain)"),
    (Command::Quit, "quit", &["exit"], "close this connection"),
];

/// Why a line is not a command.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    /// Blank line.
    #[error("empty command; try `help`")]
    Empty,
    /// Longer than [`MAX_COMMAND_LEN`].
    #[error("command line of {len} bytes is longer than the limit of {MAX_COMMAND_LEN}")]
    TooLong {
        /// Its length (at least; the rest was discarded).
        len: usize,
    },
    /// Not UTF-8 text.
    #[error("command is not UTF-8 text")]
    NotText,
    /// No such command.
    #[error("unknown command `{name}`; try `help`")]
    Unknown {
        /// The first word, cut to 64 characters.
        name: String,
    },
    /// The command needs an argument it did not get, or got a bad one.
    #[error("`{command}` needs {expected}")]
    BadArgument {
        /// The command.
        command: &'static str,
        /// What it needs.
        expected: &'static str,
    },
    /// The command takes no arguments.
    #[error("`{command}` takes no arguments (got `{argument}`)")]
    UnexpectedArgument {
        /// The command.
        command: &'static str,
        /// The first argument, cut to 64 characters.
        argument: String,
    },
}

/// Parses one line (without or with its trailing `\n` / `\r\n`).
pub fn parse_command(line: &[u8]) -> Result<Command, CommandError> {
    if line.len() > MAX_COMMAND_LEN {
        return Err(CommandError::TooLong { len: line.len() });
    }
    let text = std::str::from_utf8(line).map_err(|_| CommandError::NotText)?;
    let mut words = text.split_whitespace();
    let Some(first) = words.next() else { return Err(CommandError::Empty) };
    let first_lower = first.to_ascii_lowercase();
    let Some(&(command, name, _, _)) = COMMANDS.iter().find(|(_, name, aliases, _)| {
        *name == first_lower || aliases.contains(&first_lower.as_str())
    }) else {
        return Err(CommandError::Unknown { name: cut(first) });
    };
    let command = match command {
        Command::Scale(_) => {
            let expected = "one number of workers, at most 1024 (e.g. `scale 4`)";
            // Exactly one number: `scale 2 3` is a bad argument, not a
            // command that "takes no arguments".
            let n = words
                .next()
                .and_then(|word| word.parse::<u32>().ok())
                .filter(|&n| n <= MAX_SCALE && words.next().is_none())
                .ok_or(CommandError::BadArgument { command: name, expected })?;
            Command::Scale(n)
        }
        other => other,
    };
    if let Some(argument) = words.next() {
        return Err(CommandError::UnexpectedArgument { command: name, argument: cut(argument) });
    }
    Ok(command)
}

fn cut(text: &str) -> String {
    text.chars().take(64).collect()
}

/// `{"error": "..."}`: the answer to a line that is not a valid command.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorReply {
    /// What was wrong, in words.
    pub error: String,
}

/// The answer to `help`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HelpReply {
    /// One entry per command.
    pub commands: Vec<HelpEntry>,
}

/// One command in [`HelpReply`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HelpEntry {
    /// Its name.
    pub command: String,
    /// Other names it answers to.
    pub aliases: Vec<String>,
    /// What it does.
    pub help: String,
}

impl HelpReply {
    /// The help for [`COMMANDS`].
    pub fn new() -> HelpReply {
        HelpReply {
            commands: COMMANDS
                .iter()
                .map(|(_, name, aliases, help)| HelpEntry {
                    command: (*name).to_owned(),
                    aliases: aliases.iter().map(|a| (*a).to_owned()).collect(),
                    help: (*help).to_owned(),
                })
                .collect(),
        }
    }
}

impl Default for HelpReply {
    fn default() -> Self {
        HelpReply::new()
    }
}

/// A short acknowledgement (`ping`, `stop`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OkReply {
    /// What happened.
    pub ok: String,
}

/// The answer to `info`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InfoReply {
    /// handoff version.
    pub version: String,
    /// The master's pid.
    pub pid: u32,
    /// When the master started, seconds since the Unix epoch.
    #[serde(default)]
    pub started_at_unix: f64,
    /// 1 for a master started by hand or by systemd, one more than its
    /// predecessor's for a master started by an upgrade.
    #[serde(default)]
    pub generation: u64,
    /// `none`, `in progress` (a new master is starting), `failed` (see
    /// `upgrade_error`) or `handed over` (this master is the old one,
    /// draining).
    #[serde(default)]
    pub upgrade: String,
    /// Why the last upgrade this master started failed, if it did.
    #[serde(default)]
    pub upgrade_error: Option<String>,
    /// The address it accepts on.
    pub listen: String,
    /// Its run directory.
    pub run_dir: String,
    /// `running` or `draining`.
    pub state: String,
    /// Seconds since the master started.
    pub uptime_secs: f64,
    /// `dispatch`, `shared` or `reuseport`.
    pub mode: String,
    /// `queued` (the master lets go of each fd at the hand-off) or `exact`
    /// (it keeps a copy until the worker reports the connection finished).
    #[serde(default)]
    pub salvage: String,
    /// Connections the master accepted.
    pub accepted: u64,
    /// Connections workers accepted themselves and finished (shared and
    /// reuseport modes; the master never sees those accepts).
    pub worker_accepted: u64,
    /// Connections handed to a worker.
    pub dispatched: u64,
    /// Hand-off packets sent (`dispatched / handoff_packets` = connections
    /// per `sendmsg`, above 1 with `--batch`).
    pub handoff_packets: u64,
    /// Connections waiting in the master for a worker.
    pub queued: u64,
    /// Connections handed over and not yet reported finished.
    pub in_flight: u64,
    /// Connections that ended (served + resets + failed + timeouts).
    pub completed: u64,
    /// Of those, answered in full.
    pub served: u64,
    /// Of those, reset by the client.
    pub resets: u64,
    /// Of those, closed for another error.
    pub failed: u64,
    /// Of those, closed by a worker's read timeout.
    pub timeouts: u64,
    /// Of the connections that ended, balancer health checks (PROXY v2
    /// `LOCAL` without a request; `--proxy-protocol`), not clients.
    #[serde(default)]
    pub health_checks: u64,
    /// Connections closed without an answer, by reason.
    pub lost: u64,
    /// Of `lost`: the worker holding them died (or was dropped) before
    /// finishing them: with `salvage` `queued`, every connection it had
    /// received; with `exact`, those it had read from and not answered.
    pub lost_worker_died: u64,
    /// Of `lost`: still queued in the master when it was forced to stop, or
    /// when no worker was left at shutdown.
    pub lost_at_shutdown: u64,
    /// Connections a dead worker had not received (`queued`) or not touched
    /// (`exact`), handed to another worker.
    pub redispatched: u64,
    /// Connections a worker had fully answered before it died but not
    /// reported (`exact` only; counted in `served`).
    pub served_by_dead_workers: u64,
    /// `accept` calls that failed.
    pub accept_errors: u64,
    /// Of those, out of file descriptors or memory (EMFILE, ENFILE, ENOBUFS,
    /// ENOMEM): the master paused accepting.
    pub accept_paused_for_resources: u64,
    /// Registered workers.
    pub workers: u64,
    /// Spawned workers the master keeps running (`--workers`, `scale`,
    /// SIGTTIN/SIGTTOU).
    pub target_workers: u64,
    /// Spawned workers that exited without being asked to.
    pub worker_deaths: u64,
    /// Workers spawned to replace dead ones.
    pub respawns: u64,
    /// Workers killed for not reporting within `--timeout`.
    pub worker_timeouts: u64,
    /// Workers are dying so fast that respawning is backed off.
    pub crash_loop: bool,
    /// Master CPU in user mode, seconds.
    pub cpu_user_secs: f64,
    /// Master CPU in kernel mode, seconds.
    pub cpu_sys_secs: f64,
    /// Master CPU (user + sys) per dispatched connection, microseconds;
    /// null before the first.
    pub cpu_us_per_dispatched: Option<f64>,
    /// Master resident memory, bytes.
    pub rss_bytes: u64,
    /// The address HAProxy's agent checks are answered on
    /// (`--agent-check`), if any.
    #[serde(default)]
    pub agent_check: Option<String>,
    /// The line an agent check gets now (without its newline), e.g.
    /// `ready up 75%` or `drain`.
    #[serde(default)]
    pub agent_reply: String,
    /// `ready`, or `drain` (asked on the control socket) or `stopping`
    /// (SIGTERM / `stop`: the listener closes after `--drain-secs`).
    #[serde(default)]
    pub balancer: String,
    /// Seconds until the listener closes, while `balancer` is `stopping`.
    #[serde(default)]
    pub stopping_in_secs: Option<f64>,
    /// Who picks a worker for each new connection in reuseport mode:
    /// `kernel hash` (no program) or `ebpf least` / `ebpf pull` (the
    /// master's SK_REUSEPORT program); null in the other modes.
    #[serde(default)]
    pub reuseport_selection: Option<String>,
    /// Connections the program placed on a worker's listener (new and
    /// migrated), since it was loaded.
    #[serde(default)]
    pub kernel_selected: Option<u64>,
    /// Of those, connections moved off a closing listener (a worker that
    /// died, reloaded or stopped accepting) instead of being reset.
    #[serde(default)]
    pub kernel_migrated: Option<u64>,
    /// Connections the program left to the kernel's hash (no worker
    /// qualified, or the chosen listener was gone twice).
    #[serde(default)]
    pub kernel_fallbacks: Option<u64>,
}

/// The answer to `workers`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkersReply {
    /// One row per registered worker, by id.
    pub workers: Vec<WorkerRow>,
}

/// One worker, as the master knows it. Fields from the worker's own
/// reports are null until its first report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerRow {
    /// Worker id.
    pub id: u32,
    /// Its pid.
    pub pid: i32,
    /// `spawned` or `external`.
    pub origin: String,
    /// `ready`, `retiring` (finishing, takes no more work).
    pub state: String,
    /// Connections handed to it.
    pub dispatched: u64,
    /// Connections it reported finished.
    pub completed: u64,
    /// Handed over and not yet reported finished.
    pub in_flight: u64,
    /// The most it takes at once (`--max-conns`; 0 = no limit).
    pub capacity: u32,
    /// Answered in full.
    pub served: u64,
    /// Reset by the client.
    pub resets: u64,
    /// Closed for another I/O error.
    pub failed: u64,
    /// Closed by the worker's `--read-timeout`.
    pub timeouts: u64,
    /// Balancer health checks it closed (PROXY v2 `LOCAL`, no request).
    #[serde(default)]
    pub health_checks: u64,
    /// Request bytes read.
    pub bytes_in: u64,
    /// Reply bytes written.
    pub bytes_out: u64,
    /// CPU in user mode, seconds.
    pub cpu_user_secs: Option<f64>,
    /// CPU in kernel mode, seconds.
    pub cpu_sys_secs: Option<f64>,
    /// CPU (user + sys) as a percentage of one core between its last two
    /// reports.
    pub cpu_percent: Option<f64>,
    /// Resident memory, bytes.
    pub rss_bytes: Option<u64>,
    /// Handling time (receipt to close), median, µs.
    pub handling_p50_us: Option<u64>,
    /// Handling time, 99th percentile, µs.
    pub handling_p99_us: Option<u64>,
    /// Hand-off latency (master accept to worker receipt), median, µs.
    pub handoff_p50_us: Option<u64>,
    /// Hand-off latency, 99th percentile, µs.
    pub handoff_p99_us: Option<u64>,
    /// Seconds since its last stats report.
    pub last_report_age_secs: Option<f64>,
    /// Connections it accepted itself (shared and reuseport modes).
    pub accepted: Option<u64>,
    /// Its load as the kernel balancer sees it (connections given to it
    /// and not yet finished, queued ones included); null without one.
    #[serde(default)]
    pub kernel_load: Option<i64>,
    /// Its listener's slot in the kernel balancer's sockarray.
    #[serde(default)]
    pub kernel_slot: Option<u32>,
}

/// The answer to `metrics`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricsReply {
    /// Prometheus text exposition format, version 0.0.4.
    pub metrics: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_commands_aliases_case_and_line_endings() {
        assert_eq!(parse_command(b"info"), Ok(Command::Info));
        assert_eq!(parse_command(b"  INFO \r\n"), Ok(Command::Info));
        assert_eq!(parse_command(b"stats\n"), Ok(Command::Workers));
        assert_eq!(parse_command(b"?"), Ok(Command::Help));
        assert_eq!(parse_command(b"exit"), Ok(Command::Quit));
        assert_eq!(parse_command(b"scale 4"), Ok(Command::Scale(4)));
        assert_eq!(parse_command(b"reload"), Ok(Command::Reload));
    }

    #[test]
    fn names_what_is_wrong() {
        assert_eq!(parse_command(b""), Err(CommandError::Empty));
        assert_eq!(parse_command(b" \r\n"), Err(CommandError::Empty));
        assert_eq!(parse_command(&[0xff, 0xfe]), Err(CommandError::NotText));
        assert_eq!(
            parse_command(b"frobnicate now"),
            Err(CommandError::Unknown { name: "frobnicate".into() })
        );
        assert!(matches!(
            parse_command(b"info please"),
            Err(CommandError::UnexpectedArgument { command: "info", .. })
        ));
        for bad in [&b"scale"[..], b"scale -1", b"scale many", b"scale 5000", b"scale 2 3"] {
            assert!(matches!(parse_command(bad), Err(CommandError::BadArgument { .. })), "{bad:?}");
        }
        let long = vec![b'a'; MAX_COMMAND_LEN + 1];
        assert_eq!(parse_command(&long), Err(CommandError::TooLong { len: MAX_COMMAND_LEN + 1 }));
    }

    proptest::proptest! {
        #[test]
        fn never_panics(line in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..2000)) {
            let _ = parse_command(&line);
        }
    }

    #[test]
    fn a_line_of_exactly_the_limit_is_parsed_and_one_byte_more_is_too_long() {
        let mut line = b"ping".to_vec();
        line.resize(MAX_COMMAND_LEN, b' ');
        assert!(matches!(parse_command(&line), Ok(Command::Ping)));
        line.push(b' ');
        assert!(matches!(
            parse_command(&line),
            Err(CommandError::TooLong { len }) if len == MAX_COMMAND_LEN + 1
        ));
    }
}
