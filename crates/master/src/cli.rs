//! Command-line options of `handoff-master`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

/// Accepts TCP connections and hands each connected fd to a worker process.
#[derive(Debug, Parser)]
#[command(name = "handoff-master", version)]
pub struct Args {
    /// Address to accept client connections on: `HOST:PORT` (`0.0.0.0:6001`,
    /// `127.0.0.1:6001`, `[::]:6001`, `localhost:6001`), `:PORT` (every
    /// IPv4 interface) or `unix:PATH` (a Unix stream socket, mode 0666;
    /// dispatch mode) [default: 0.0.0.0:6001, every interface]. Under
    /// systemd socket activation the inherited socket is used; `--listen`
    /// may then only name it.
    #[arg(long, value_parser = parse_listen, value_name = "ADDR")]
    pub listen: Option<ListenAddr>,

    /// Shorthand for `--listen 0.0.0.0:PORT` (every IPv4 interface).
    #[arg(long, value_name = "PORT", conflicts_with = "listen")]
    pub port: Option<u16>,

    /// listen(2) backlog: connections the kernel holds before accept
    /// (capped by net.core.somaxconn).
    #[arg(long, default_value_t = 2048)]
    pub backlog: i32,

    /// Directory for the master's Unix sockets and lock file
    /// [default: $XDG_RUNTIME_DIR/handoff, else /tmp/handoff-<uid>].
    #[arg(long)]
    pub run_dir: Option<PathBuf>,

    /// Worker processes to spawn [default: number of CPUs]; 0 spawns none
    /// (start them with `handoff-worker --run-dir DIR`).
    #[arg(long)]
    pub workers: Option<usize>,

    /// The worker executable [default: handoff-worker beside this binary,
    /// else on PATH].
    #[arg(long)]
    pub worker_bin: Option<PathBuf>,

    /// Accepted connections the master holds while no worker can take them;
    /// when full it stops accepting and the kernel backlog holds the rest.
    #[arg(long, default_value_t = 4096)]
    pub queue_limit: usize,

    /// Seconds a SIGINT/SIGTERM shutdown may take before the master kills
    /// its workers and exits 1.
    #[arg(long, default_value = "30", value_parser = parse_seconds)]
    pub graceful_timeout: Duration,

    /// Seconds a worker may go without reporting before it is killed and
    /// replaced (gunicorn's worker timeout); 0 disables. Workers report once
    /// a second.
    #[arg(long, default_value = "30", value_parser = parse_seconds)]
    pub timeout: Duration,

    /// Passed to spawned workers: seconds a client has, from the hand-off, to
    /// send its request and take the reply.
    #[arg(long, default_value = "5", value_parser = parse_positive_seconds)]
    pub read_timeout: Duration,

    /// Passed to spawned workers: the most connections each holds at once;
    /// the master sends no more to a worker at its cap (0 = no cap; with
    /// `--policy pull`, 0 means 1).
    #[arg(long, alias = "capacity", default_value_t = 0)]
    pub max_conns: u32,

    /// Who accepts: `dispatch` the master, handing each fd to a worker (the
    /// article's design); `shared` every worker on the master's listening
    /// socket, passed to it once (gunicorn, nginx); `reuseport` every worker
    /// on its own SO_REUSEPORT listener (nginx `reuseport`).
    #[arg(long, value_enum, default_value = "dispatch")]
    pub mode: Mode,

    /// Which worker gets the next connection: `rr` round-robin (Node's
    /// cluster module), `least` fewest in flight, `pull` only workers with
    /// free capacity, the rest waits in the master (Pool.apply_async).
    #[arg(long, value_enum, default_value = "rr")]
    pub policy: crate::dispatch::Policy,

    /// Send up to this many connections to one worker in a single sendmsg
    /// (1..=252).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=252))]
    pub batch: u16,

    /// What the master keeps of a connection it handed off: `queued` lets
    /// go of its copy at once (the worker ends the connection) and,
    /// if a worker dies, takes back only the connections still queued to it,
    /// unread; `exact` keeps its copy until the worker reports that
    /// connection finished, so after a death it can tell untouched, answered
    /// and cut-off connections apart (TCP_INFO) — at a measured cost per
    /// connection (docs/performance.md).
    #[arg(long, value_enum, default_value = "queued")]
    pub salvage: Salvage,

    /// Passed to spawned workers: `article` (the default) or `http`.
    #[arg(long, default_value = "article", value_parser = ["article", "http"])]
    pub protocol: String,

    /// Passed to spawned workers: simulated CPU work per request, µs.
    #[arg(long, default_value_t = 0)]
    pub work_us: u64,

    /// Passed to spawned workers: simulated delay per request, ms.
    #[arg(long, default_value_t = 0)]
    pub delay_ms: u64,

    /// Passed to spawned workers (their `--scheduling`): `normal` (the
    /// default) leaves them as started; `batch` puts them in SCHED_BATCH,
    /// so a worker woken by a hand-off does not preempt the master. With
    /// 64 workers that cuts the master's cost 10–31 % and, for rr, raises
    /// p99 34–44 % (docs/scaling.md); with 2, neither moves beyond noise.
    #[arg(long, default_value = "normal", value_parser = ["batch", "normal"])]
    pub worker_scheduling: String,

    /// Passed to spawned workers: expect a PROXY protocol header (v1 or v2)
    /// before each client's bytes; connections without one are closed.
    #[arg(long)]
    pub proxy_protocol: bool,

    /// Answer HAProxy agent checks on this TCP address (`HOST:PORT`; port 0
    /// picks one, shown in `info` as `agent_check`): one line per
    /// connection, `ready up N%` with a weight that falls as the workers'
    /// free capacity falls, `drain` after the control command `drain` or
    /// during `--drain-secs`, `down` while no worker can take work.
    #[arg(long, value_parser = parse_tcp, value_name = "ADDR")]
    pub agent_check: Option<SocketAddr>,

    /// Seconds SIGTERM (and the control command `stop`) first tell the load
    /// balancer to drain, still serving, before the listener closes, so
    /// the balancer stops sending before anything is refused. SIGINT stops
    /// at once. [default: 5 with --agent-check, else 0]
    #[arg(long, value_parser = parse_seconds, value_name = "SECS")]
    pub drain_secs: Option<Duration>,

    /// Seconds a control-socket client may stay idle (no command sent, no
    /// answer taken) before the master closes it.
    #[arg(long, default_value = "60", value_parser = parse_positive_seconds)]
    pub control_idle_timeout: Duration,

    /// Seconds a new master started by an upgrade (SIGUSR2, `upgrade`) has
    /// to get its workers registered and take over; past that it is killed
    /// and this master keeps serving.
    #[arg(long, default_value = "30", value_parser = parse_positive_seconds)]
    pub upgrade_timeout: Duration,

    /// Write the master's pid to this file once it listens (a master
    /// started by an upgrade rewrites it when it takes over); removed on
    /// exit. Its directory must not be writable by group or others.
    #[arg(long, value_name = "PATH")]
    pub pid_file: Option<PathBuf>,

    /// Run as this user (name or uid) once the listener is bound and the
    /// run dir made (needs root); workers run as it too. Supplementary
    /// groups are cleared.
    #[arg(long, value_name = "NAME")]
    pub user: Option<String>,

    /// With --user: run as this group [default: the user's primary group].
    #[arg(long, value_name = "NAME")]
    pub group: Option<String>,

    /// As root without --user, serve a non-loopback address anyway (refused
    /// otherwise).
    #[arg(long)]
    pub allow_root: bool,

    /// Log lines as `text` or `json` (one object per line, same fields);
    /// spawned workers log alike (through HANDOFF_LOG_FORMAT).
    #[arg(long, default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,

    /// Internal (a master upgrade): take the sockets and run dir over from
    /// the master listening on this upgrade socket instead of binding.
    #[arg(long, hide = true, value_name = "PATH")]
    pub upgrade_from: Option<PathBuf>,
}

/// Where the master listens without `--listen`: every IPv4 interface.
pub const DEFAULT_LISTEN: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), 6001);

/// What `--listen` names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddr {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

/// `--listen`: `unix:PATH`, or a TCP address in the forms [`parse_tcp`]
/// takes.
pub fn parse_listen(text: &str) -> Result<ListenAddr, String> {
    match text.strip_prefix("unix:") {
        Some("") => Err("`unix:` needs a path (e.g. unix:/run/handoff/clients.sock)".into()),
        Some(path) => Ok(ListenAddr::Unix(PathBuf::from(path))),
        None => parse_tcp(text).map(ListenAddr::Tcp),
    }
}

/// The forms people type: `HOST:PORT` with an IP (`[::]:6001`) or a name
/// (`localhost:6001`, resolved once, IPv4 first), `:PORT` and `*:PORT`
/// (every IPv4 interface).
pub fn parse_tcp(text: &str) -> Result<SocketAddr, String> {
    use std::net::ToSocketAddrs;
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(addr);
    }
    let Some((host, port)) = text.rsplit_once(':') else {
        return Err(format!("`{text}` is not HOST:PORT or :PORT (e.g. 127.0.0.1:6001, :6001)"));
    };
    let port: u16 = port.parse().map_err(|_| format!("`{port}` in `{text}` is not a port"))?;
    if host.is_empty() || host == "*" {
        return Ok(SocketAddr::new(DEFAULT_LISTEN.ip(), port));
    }
    if host.starts_with('[') || host.contains(':') {
        return Err(format!("`{text}` is not an address (IPv6 goes in brackets: [::1]:6001)"));
    }
    let addrs: Vec<SocketAddr> = (host, port)
        .to_socket_addrs()
        .map_err(|err| format!("cannot resolve `{host}`: {err}"))?
        .collect();
    addrs
        .iter()
        .find(|addr| addr.is_ipv4())
        .or(addrs.first())
        .copied()
        .ok_or_else(|| format!("`{host}` resolves to no address"))
}

impl Args {
    /// `--port PORT` is `--listen 0.0.0.0:PORT`.
    pub fn resolve_port_shorthand(&mut self) {
        if let Some(port) = self.port.take() {
            self.listen = Some(ListenAddr::Tcp(SocketAddr::from(([0, 0, 0, 0], port))));
        }
    }

    /// Flags that parse one by one but make no sense together (exit 64).
    pub fn check_combinations(&self) -> Result<(), String> {
        use crate::dispatch::Policy;
        if self.mode == Mode::Shared && self.policy != Policy::Rr {
            return Err(format!(
                "--policy {} has no effect with --mode shared (every worker accepts on one \
                 socket, and the kernel wakes whichever waits); use --mode dispatch or \
                 --mode reuseport for a policy",
                self.policy.as_str()
            ));
        }
        Ok(())
    }

    /// The options every spawned worker gets.
    pub fn worker_args(&self) -> Vec<std::ffi::OsString> {
        let max_conns = match (self.policy, self.max_conns) {
            (crate::dispatch::Policy::Pull, 0) => 1,
            (_, n) => n,
        };
        // Workers report often enough that a healthy one never looks
        // silent for `--timeout`, however short.
        let report_interval = if self.timeout.is_zero() {
            Duration::from_secs(1)
        } else {
            (self.timeout / 4).clamp(Duration::from_millis(50), Duration::from_secs(1))
        };
        let mut args: Vec<std::ffi::OsString> = vec![
            "--report-interval".into(),
            report_interval.as_secs_f64().to_string().into(),
            "--read-timeout".into(),
            self.read_timeout.as_secs_f64().to_string().into(),
            "--max-conns".into(),
            max_conns.to_string().into(),
            "--protocol".into(),
            self.protocol.clone().into(),
            "--work-us".into(),
            self.work_us.to_string().into(),
            "--delay-ms".into(),
            self.delay_ms.to_string().into(),
            "--scheduling".into(),
            self.worker_scheduling.clone().into(),
        ];
        if self.proxy_protocol {
            args.push("--proxy-protocol".into());
        }
        args
    }

    /// `--drain-secs`, or its default: a balancer that asks an agent needs
    /// a few of its intervals (HAProxy's `agent-inter` is 2 s by default)
    /// to notice a drain; without an agent nobody would notice.
    pub fn drain_grace(&self) -> Duration {
        self.drain_secs.unwrap_or(if self.agent_check.is_some() {
            DEFAULT_DRAIN_WITH_AGENT
        } else {
            Duration::ZERO
        })
    }
}

/// `--drain-secs` with `--agent-check` and no value given.
pub const DEFAULT_DRAIN_WITH_AGENT: Duration = Duration::from_secs(5);

fn parse_seconds(text: &str) -> Result<Duration, String> {
    text.parse::<f64>()
        .ok()
        .filter(|secs| secs.is_finite() && *secs >= 0.0)
        .map(Duration::from_secs_f64)
        .ok_or_else(|| format!("`{text}` is not a number of seconds"))
}

fn parse_positive_seconds(text: &str) -> Result<Duration, String> {
    parse_seconds(text)
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or_else(|| format!("`{text}` is not a positive number of seconds"))
}

/// Who accepts connections (`--mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// The master accepts and hands each connection's fd to a worker.
    Dispatch,
    /// Workers accept on the master's listening socket, shared with them.
    Shared,
    /// Workers accept on listeners of their own, bound with SO_REUSEPORT.
    Reuseport,
}

/// What the master keeps of a handed-off connection (`--salvage`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Salvage {
    /// Close the master's copy right after the hand-off; take back from a
    /// dead worker's channel what it never received.
    Queued,
    /// Keep the master's copy until the worker reports the connection
    /// finished (per-connection reports, TCP_INFO accounting).
    Exact,
}

impl Salvage {
    /// The name `info` shows.
    pub fn as_str(self) -> &'static str {
        match self {
            Salvage::Queued => "queued",
            Salvage::Exact => "exact",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_forms_people_type() {
        let parse = |text| parse_tcp(text).map(|a| a.to_string());
        assert_eq!(parse("127.0.0.1:6001"), Ok("127.0.0.1:6001".into()));
        assert_eq!(parse(":6001"), Ok("0.0.0.0:6001".into()));
        assert_eq!(parse("*:7000"), Ok("0.0.0.0:7000".into()));
        assert_eq!(parse("[::]:6001"), Ok("[::]:6001".into()));
        assert_eq!(parse("[::1]:0"), Ok("[::1]:0".into()));
        assert_eq!(parse("localhost:6001"), Ok("127.0.0.1:6001".into()));
        for bad in ["6001", "localhost", ":http", "::1:6001", "", "host:99999", "unix:"] {
            assert!(parse_listen(bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(parse_listen("unix:/x/y.sock"), Ok(ListenAddr::Unix("/x/y.sock".into())));
    }
    #[test]
    fn proxy_protocol_is_passed_to_spawned_workers_only_when_set() {
        use clap::Parser;
        let has = |argv: &[&str]| {
            let args = Args::try_parse_from(argv).map_err(|e| e.to_string());
            args.map(|a| a.worker_args().iter().any(|arg| arg == "--proxy-protocol"))
        };
        assert_eq!(has(&["handoff-master", "--proxy-protocol"]), Ok(true));
        assert_eq!(has(&["handoff-master"]), Ok(false));
    }

    #[test]
    fn the_drain_grace_defaults_to_five_seconds_with_an_agent_and_none_without() {
        use clap::Parser;
        let grace = |argv: &[&str]| Args::try_parse_from(argv).map(|a| a.drain_grace()).ok();
        assert_eq!(grace(&["m"]), Some(Duration::ZERO));
        assert_eq!(grace(&["m", "--agent-check", "127.0.0.1:0"]), Some(Duration::from_secs(5)));
        assert_eq!(
            grace(&["m", "--agent-check", "127.0.0.1:0", "--drain-secs", "0.5"]),
            Some(Duration::from_millis(500))
        );
        assert_eq!(grace(&["m", "--drain-secs", "2"]), Some(Duration::from_secs(2)));
        assert_eq!(grace(&["m", "--drain-secs", "-1"]), None);
    }

    /// The value that follows `flag` in a worker's arguments.
    fn worker_arg(args: &Args, flag: &str) -> Option<String> {
        let list = args.worker_args();
        let at = list.iter().position(|arg| arg == flag)?;
        list.get(at + 1).map(|value| value.to_string_lossy().into_owned())
    }

    #[test]
    fn spawned_workers_get_every_option_and_report_four_times_per_timeout() {
        use clap::Parser;
        let parse = |argv: &[&str]| Args::try_parse_from(argv).expect("parses");
        let defaults = parse(&["m"]);
        let expected: Vec<std::ffi::OsString> = [
            "--report-interval",
            "1",
            "--read-timeout",
            "5",
            "--max-conns",
            "0",
            "--protocol",
            "article",
            "--work-us",
            "0",
            "--delay-ms",
            "0",
            "--scheduling",
            "normal",
        ]
        .into_iter()
        .map(Into::into)
        .collect();
        assert_eq!(defaults.worker_args(), expected);
        let args = parse(&[
            "m",
            "--timeout",
            "0.4",
            "--read-timeout",
            "2.5",
            "--max-conns",
            "3",
            "--protocol",
            "http",
            "--work-us",
            "7",
            "--delay-ms",
            "9",
            "--worker-scheduling",
            "batch",
        ]);
        let values: Vec<_> = [
            "--report-interval",
            "--read-timeout",
            "--max-conns",
            "--protocol",
            "--work-us",
            "--delay-ms",
            "--scheduling",
        ]
        .iter()
        .map(|flag| worker_arg(&args, flag).expect(flag))
        .collect();
        assert_eq!(values, ["0.1", "2.5", "3", "http", "7", "9", "batch"]);
        let interval =
            |timeout: &str| worker_arg(&parse(&["m", "--timeout", timeout]), "--report-interval");
        assert_eq!(interval("0").as_deref(), Some("1"), "no timeout: once a second");
        assert_eq!(interval("0.1").as_deref(), Some("0.05"), "never more often than 20 a second");
        assert_eq!(interval("30").as_deref(), Some("1"), "never less often than once a second");
        assert_eq!(interval("2").as_deref(), Some("0.5"));
        // `pull` needs a cap: 0 means 1 there, and a cap given is kept.
        let max_conns = |argv: &[&str]| worker_arg(&parse(argv), "--max-conns");
        assert_eq!(max_conns(&["m", "--policy", "pull"]).as_deref(), Some("1"));
        assert_eq!(max_conns(&["m", "--policy", "pull", "--max-conns", "4"]).as_deref(), Some("4"));
        assert_eq!(max_conns(&["m", "--policy", "rr"]).as_deref(), Some("0"));
    }

    #[test]
    fn seconds_are_finite_and_not_negative_and_some_must_be_positive() {
        assert_eq!(parse_seconds("0"), Ok(Duration::ZERO));
        assert_eq!(parse_seconds("1.5"), Ok(Duration::from_millis(1500)));
        for bad in ["-1", "-0.5", "inf", "NaN", "x", ""] {
            assert!(parse_seconds(bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(parse_positive_seconds("0.25"), Ok(Duration::from_millis(250)));
        assert!(parse_positive_seconds("0").is_err());
        assert!(parse_positive_seconds("-3").is_err());
    }

    #[test]
    fn listen_names_a_unix_path_or_a_tcp_address_and_salvage_its_mode() {
        assert_eq!(
            parse_listen("127.0.0.1:7"),
            Ok(ListenAddr::Tcp("127.0.0.1:7".parse().expect("address")))
        );
        assert_eq!(parse_listen(":8"), Ok(ListenAddr::Tcp("0.0.0.0:8".parse().expect("address"))));
        assert!(parse_tcp("::1:6001").is_err(), "an unbracketed IPv6 address");
        assert!(parse_tcp("[::1:6001").is_err(), "an unclosed bracket");
        assert_eq!((Salvage::Queued.as_str(), Salvage::Exact.as_str()), ("queued", "exact"));
    }
}
