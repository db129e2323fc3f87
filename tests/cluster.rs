//! Past one host: three masters, each on its own loopback address standing
//! for a host (127.0.0.2-4), behind a real HAProxy (Debian's package,
//! installed by `make deps`) run with the shipped config,
//! deploy/haproxy/haproxy.cfg: PROXY v2 to the masters, their agent checks,
//! health checks, `option redispatch`. Load through it, a drain, a
//! `kill -9`.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::support::*;

/// HAProxy's `agent-inter` and `inter` in the shipped config.
const CHECK_INTERVAL: Duration = Duration::from_secs(1);
/// Client threads of each load.
const CLIENTS: usize = 6;

fn haproxy_bin() -> PathBuf {
    ["/usr/sbin/haproxy", "/usr/local/sbin/haproxy"]
        .iter()
        .map(PathBuf::from)
        .find(|path| path.is_file())
        .or_else(|| {
            let path = std::env::var_os("PATH")?;
            std::env::split_paths(&path).map(|dir| dir.join("haproxy")).find(|p| p.is_file())
        })
        .expect("haproxy is not installed: `make deps` (scripts/setup-ci.sh) installs it")
}

fn shipped_config() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/haproxy/haproxy.cfg")
}

/// One "host": a master with its workers, agent and PROXY protocol.
struct Host {
    master: Master,
    agent: SocketAddr,
    _scratch: Scratch,
}

impl Host {
    fn start(n: u8, extra: &[&str]) -> Host {
        let scratch = Scratch::new();
        let ip = format!("127.0.0.{}", n + 1);
        let agent = format!("{ip}:0");
        let mut args = vec!["--workers", "1", "--proxy-protocol", "--agent-check", &agent];
        args.extend_from_slice(extra);
        let master = Master::start_on(&scratch, &format!("{ip}:0"), &args);
        master.wait_for_log("worker registered", 1);
        let info = Control::connect(&master.run_dir).ask("info");
        let agent = info["agent_check"].as_str().and_then(|a| a.parse().ok()).expect("agent");
        Host { master, agent, _scratch: scratch }
    }

    fn accepted(&self) -> u64 {
        Control::connect(&self.master.run_dir).ask("info")["accepted"].as_u64().expect("accepted")
    }
}

/// A real HAProxy in the foreground, killed on drop.
struct Haproxy {
    child: Child,
    frontend: SocketAddr,
    admin: PathBuf,
    log: PathBuf,
}

impl Haproxy {
    /// HAProxy with the shipped config in front of `hosts`, once it says
    /// every host is UP.
    fn start(dir: &Path, hosts: &[&Host]) -> Haproxy {
        assert_eq!(hosts.len(), 3, "the shipped config has three servers");
        // HAProxy cannot bind port 0: take a free port and hand it over
        // (retried should another process take it in between).
        for _attempt in 0..3 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("a free port")
                .port();
            let frontend: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
            let log = dir.join("haproxy.log");
            let mut command = Command::new(haproxy_bin());
            command
                .arg("-f")
                .arg(shipped_config())
                .arg("-db")
                .env("HANDOFF_FRONTEND", frontend.to_string())
                .env("HANDOFF_CLUSTER_DIR", dir)
                .stdin(Stdio::null())
                .stdout(Stdio::from(std::fs::File::create(&log).expect("log")))
                .stderr(Stdio::from(std::fs::File::create(dir.join("haproxy.err")).expect("log")));
            for (i, host) in hosts.iter().enumerate() {
                command
                    .env(format!("HANDOFF_HOST{}", i + 1), host.master.addr.to_string())
                    .env(format!("HANDOFF_AGENT{}", i + 1), host.agent.port().to_string());
            }
            let child = command.spawn().expect("spawn haproxy");
            let mut haproxy = Haproxy { child, frontend, admin: dir.join("haproxy.sock"), log };
            let deadline = Instant::now() + WAIT;
            loop {
                if let Some(status) = haproxy.child.try_wait().expect("try_wait") {
                    let err = read_to_string(&dir.join("haproxy.err"));
                    assert!(err.contains("cannot bind"), "haproxy exited ({status}):\n{err}");
                    break; // the port was taken: another one
                }
                let states = haproxy.server_states();
                if states.len() == 3 && states.iter().all(|(_, status, _)| status == "UP") {
                    return haproxy;
                }
                assert!(
                    Instant::now() < deadline,
                    "hosts not UP in HAProxy: {states:?}\n{}",
                    read_to_string(&dir.join("haproxy.err"))
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        panic!("no free port for HAProxy's frontend in three attempts");
    }

    /// A command on HAProxy's runtime API; the answer, or "" while it is
    /// not up.
    fn admin(&self, command: &str) -> String {
        let Ok(mut stream) = UnixStream::connect(&self.admin) else { return String::new() };
        let _ = stream.set_read_timeout(Some(WAIT));
        let _ = stream.write_all(format!("{command}\n").as_bytes());
        let mut answer = String::new();
        let _ = stream.read_to_string(&mut answer);
        answer
    }

    /// (server, status, weight) of each server of the `handoff` backend,
    /// from `show stat`.
    fn server_states(&self) -> Vec<(String, String, u64)> {
        let csv = self.admin("show stat");
        let mut lines = csv.lines();
        let Some(header) = lines.next().and_then(|h| h.strip_prefix("# ")) else {
            return Vec::new();
        };
        let columns: Vec<&str> = header.split(',').collect();
        let at = |name: &str| columns.iter().position(|c| *c == name).expect("column");
        let (px, sv, status, weight) = (at("pxname"), at("svname"), at("status"), at("weight"));
        lines
            .map(|line| line.split(',').collect::<Vec<_>>())
            .filter(|f| f.len() > weight && f[px] == "handoff" && f[sv].starts_with("host"))
            .map(|f| (f[sv].to_owned(), f[status].to_owned(), f[weight].parse().unwrap_or(0)))
            .collect()
    }

    fn status_of(&self, server: &str) -> String {
        self.server_states()
            .into_iter()
            .find(|(name, _, _)| name == server)
            .map(|(_, status, _)| status)
            .unwrap_or_default()
    }

    fn wait_for_status(&self, server: &str, prefix: &str, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let status = self.status_of(server);
            if status.starts_with(prefix) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{server} is {status:?} in HAProxy, not {prefix} after {within:?}; log:\n{}",
                read_to_string(&self.log)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn three_hosts(extra: &[&str]) -> [Host; 3] {
    [Host::start(1, extra), Host::start(2, extra), Host::start(3, extra)]
}

#[test]
fn load_through_haproxy_is_answered_exactly_by_every_host() {
    let hosts = three_hosts(&[]);
    let dir = Scratch::new();
    let haproxy = Haproxy::start(dir.path(), &hosts.iter().collect::<Vec<_>>());
    // The agents said `ready up 100%`: full weight each.
    assert!(haproxy.server_states().iter().all(|(_, _, weight)| *weight == 100));

    let load = Load::start(haproxy.frontend, CLIENTS);
    wait_until(WAIT, "600 requests through HAProxy", || load.served() >= 600);
    let (served, failures) = load.finish();
    assert!(
        failures.is_empty(),
        "{} of {served} failed: {:?}",
        failures.len(),
        &failures[..3.min(failures.len())]
    );
    let shares: Vec<u64> = hosts.iter().map(Host::accepted).collect();
    let total: u64 = shares.iter().sum();
    assert!(total >= served, "the hosts accepted {total}, clients were answered {served} times");
    for (i, share) in shares.iter().enumerate() {
        assert!(*share * 10 >= total, "host{} took {share} of {total}: {shares:?}", i + 1);
    }
}

#[test]
fn a_drained_host_gets_nothing_new_within_two_agent_intervals_and_stops_with_no_failure() {
    let hosts = three_hosts(&["--drain-secs", "1"]);
    let dir = Scratch::new();
    let haproxy = Haproxy::start(dir.path(), &hosts.iter().collect::<Vec<_>>());
    let load = Load::start(haproxy.frontend, CLIENTS);
    wait_until(WAIT, "load running", || load.served() >= 100);

    let answer = Control::connect(&hosts[0].master.run_dir).ask("drain");
    assert!(answer["ok"].is_string(), "{answer}");
    let drained_at = Instant::now();
    haproxy.wait_for_status("host1", "DRAIN", 2 * CHECK_INTERVAL + Duration::from_millis(500));
    // Two agent intervals after the drain: nothing new for host1, the
    // others go on.
    std::thread::sleep((2 * CHECK_INTERVAL).saturating_sub(drained_at.elapsed()));
    let before: Vec<u64> = hosts.iter().map(Host::accepted).collect();
    let served_before = load.served();
    wait_until(WAIT, "200 more requests", || load.served() >= served_before + 200);
    let after: Vec<u64> = hosts.iter().map(Host::accepted).collect();
    assert_eq!(
        after[0], before[0],
        "the drained host still got connections: {before:?} -> {after:?}"
    );
    assert!(after[1] + after[2] >= before[1] + before[2] + 200, "{before:?} -> {after:?}");

    // Then stop it: SIGTERM, the drain grace, the listener closes.
    let mut drained = hosts.into_iter();
    let mut first = drained.next().expect("host1");
    first.master.signal(Signal::SIGTERM);
    let status = first.master.wait_exit(WAIT);
    assert!(status.success(), "host1 stopped cleanly: {status:?}");
    haproxy.wait_for_status("host1", "DOWN", 5 * CHECK_INTERVAL);
    let served_then = load.served();
    wait_until(WAIT, "100 more requests", || load.served() >= served_then + 100);
    let (served, failures) = load.finish();
    assert!(failures.is_empty(), "{} of {served} failed: {failures:?}", failures.len());
}

#[test]
fn a_host_killed_with_sigkill_costs_at_most_what_it_held_and_the_rest_serve_on() {
    let hosts = three_hosts(&[]);
    let dir = Scratch::new();
    let haproxy = Haproxy::start(dir.path(), &hosts.iter().collect::<Vec<_>>());
    let load = Load::start(haproxy.frontend, CLIENTS);
    wait_until(WAIT, "load running", || load.served() >= 100);

    // host2's master and workers, all at once.
    let victim = &hosts[1].master;
    let mut pids = victim.worker_pids();
    pids.push(victim.pid);
    for pid in pids {
        let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
    }
    let killed_at = Instant::now();
    // HAProxy takes it out: the health check fails `fall` (3) times.
    haproxy.wait_for_status("host2", "DOWN", 5 * CHECK_INTERVAL);
    let took_out = killed_at.elapsed();
    let served_then = load.served();
    wait_until(WAIT, "200 more requests after the kill", || load.served() >= served_then + 200);
    let (served, failures) = load.finish();
    // Each client has one connection open at a time: at most CLIENTS were
    // held by host2 when it died (refused connects are redispatched).
    assert!(
        failures.len() <= CLIENTS,
        "{} failed (more than the {CLIENTS} that could be in flight): {failures:?}",
        failures.len()
    );
    println!(
        "kill -9 of one host: {} of {served} requests failed; HAProxy marked it DOWN after {took_out:?}",
        failures.len()
    );
}
