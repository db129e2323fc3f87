use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;

use crate::support::*;

/// How one hammering client's request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Answered,
    /// Connected, then got no full reply (EOF, reset, timeout).
    Failed,
    /// The connection was refused or reset before a single byte: never
    /// accepted by the master (it was shutting down).
    NotAccepted,
}

fn one_request(addr: SocketAddr, payload: &[u8]) -> Outcome {
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, WAIT) else {
        return Outcome::NotAccepted;
    };
    let _ = stream.set_read_timeout(Some(WAIT));
    let _ = stream.set_write_timeout(Some(WAIT));
    let _ = stream.write_all(payload);
    let mut reply = Vec::new();
    match stream.read_to_end(&mut reply) {
        Ok(_) if reply == expected_reply(payload) => Outcome::Answered,
        Err(err) if reply.is_empty() && err.kind() == std::io::ErrorKind::ConnectionReset => {
            Outcome::NotAccepted
        }
        _ => Outcome::Failed,
    }
}

/// Clients that send requests back to back until told to stop.
struct Hammer {
    stop: Arc<AtomicBool>,
    outcomes: Arc<Mutex<Vec<Outcome>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Hammer {
    fn start(addr: SocketAddr, clients: usize) -> Hammer {
        let stop = Arc::new(AtomicBool::new(false));
        let outcomes = Arc::new(Mutex::new(Vec::new()));
        let threads = (0..clients)
            .map(|client| {
                let (stop, outcomes) = (Arc::clone(&stop), Arc::clone(&outcomes));
                std::thread::spawn(move || {
                    let started = Instant::now();
                    let mut i = 0;
                    // Bounded in count and time whatever happens.
                    while !stop.load(Ordering::Relaxed)
                        && i < 100_000
                        && started.elapsed() < WAIT * 3
                    {
                        let outcome = one_request(addr, format!("client {client} #{i}").as_bytes());
                        outcomes.lock().expect("lock").push(outcome);
                        i += 1;
                    }
                })
            })
            .collect();
        Hammer { stop, outcomes, threads }
    }

    fn total(&self) -> usize {
        self.outcomes.lock().expect("lock").len()
    }

    /// Waits until `n` more requests have finished (bounded).
    fn wait_for_more(&self, n: usize) {
        let target = self.total() + n;
        wait_until(WAIT, "clients to make progress", || self.total() >= target);
    }

    fn stop(self) -> Vec<Outcome> {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads {
            thread.join().expect("client thread");
        }
        Arc::try_unwrap(self.outcomes).expect("threads done").into_inner().expect("lock")
    }
}

fn tally(outcomes: &[Outcome], which: Outcome) -> u64 {
    outcomes.iter().filter(|&&o| o == which).count() as u64
}

#[test]
fn kill_9_of_a_worker_under_load_loses_only_what_it_had_received_and_it_is_replaced_within_a_second(
) {
    kill_9_under_load(&[], false);
}

#[test]
fn kill_9_with_salvage_exact_loses_exactly_the_clients_left_without_a_reply() {
    kill_9_under_load(&["--salvage", "exact"], true);
}

/// kill -9 of one of two workers while 50 clients hammer the master. With
/// `exact`, `lost` is exactly the clients left without a reply; otherwise
/// it also counts replies written in the instant before the kill (the
/// master can only know what the worker had counted), so it is at least
/// that and at most what the worker could hold.
fn kill_9_under_load(extra: &[&str], exact: bool) {
    const CLIENTS: usize = 50;
    let scratch = Scratch::new();
    let mut args = vec!["--workers", "2"];
    args.extend_from_slice(extra);
    let master = Master::start(&scratch, &args);
    master.wait_for_log("worker registered", 2);
    let mut control = Control::connect(&master.run_dir);
    let victim = master.worker_pids()[0];

    let hammer = Hammer::start(master.addr, CLIENTS);
    hammer.wait_for_more(300);
    kill(Pid::from_raw(victim as i32), Signal::SIGKILL).expect("kill -9");
    let killed_at = Instant::now();
    let mut replacement = None;
    wait_until(Duration::from_secs(5), "a replacement worker", || {
        let rows = control.ask("workers")["workers"].as_array().cloned().unwrap_or_default();
        replacement = rows.iter().filter_map(|row| row["pid"].as_u64()).find(|&pid| {
            pid != u64::from(victim) && !master.worker_pids()[1..2].contains(&(pid as u32))
        });
        rows.len() == 2 && replacement.is_some()
    });
    let replaced_after = killed_at.elapsed();
    hammer.wait_for_more(300);
    let outcomes = hammer.stop();

    wait_until(WAIT, "every connection to be accounted for", || {
        let info = control.ask("info");
        count(&info, "in_flight") == 0 && count(&info, "queued") == 0
    });
    let info = control.ask("info");
    let failed = tally(&outcomes, Outcome::Failed) + tally(&outcomes, Outcome::NotAccepted);
    let lost = count(&info, "lost");
    if exact {
        assert_eq!(
            lost,
            failed,
            "lost must equal the clients that got no reply ({} requests): {info}",
            outcomes.len()
        );
    } else {
        assert!(
            (failed..=failed + CLIENTS as u64).contains(&lost),
            "lost must count every client without a reply, and at most what the worker held \
             ({} requests, {failed} failed): {info}",
            outcomes.len()
        );
    }
    assert_eq!(lost, count(&info, "lost_worker_died"));
    assert_eq!(
        count(&info, "completed") + count(&info, "lost"),
        count(&info, "accepted"),
        "{info}"
    );
    // `dispatched` and `redispatched` count connections, each once.
    assert_eq!(
        count(&info, "dispatched"),
        count(&info, "completed") + count(&info, "lost"),
        "{info}"
    );
    assert_eq!(count(&info, "worker_deaths"), 1);
    assert_eq!(count(&info, "respawns"), 1);
    assert!(replaced_after < Duration::from_secs(1), "replaced after {replaced_after:?}");
    let rows = control.ask("workers")["workers"].as_array().cloned().unwrap_or_default();
    let new = rows.iter().find(|row| row["pid"].as_u64() == replacement).expect("new worker row");
    assert!(count(new, "served") > 0, "the replacement serves: {new}");
    eprintln!(
        "kill -9 under load ({extra:?}): {} requests, {} failed, lost={}, redispatched={}, served_by_dead={}, replaced in {:?}",
        outcomes.len(),
        failed,
        count(&info, "lost"),
        count(&info, "redispatched"),
        count(&info, "served_by_dead_workers"),
        replaced_after
    );
}

#[test]
fn a_stopped_spawned_worker_killed_gives_back_its_queue_and_loses_only_what_it_received() {
    let scratch = Scratch::new();
    let master = Master::start(&scratch, &["--workers", "2"]);
    master.wait_for_log("worker registered", 2);
    let victim = master.worker_pids()[0];
    stopped_worker_killed(&master, victim, 2);
}

#[test]
fn a_stopped_external_worker_killed_gives_back_its_queue_and_loses_only_what_it_received() {
    let scratch = Scratch::new();
    let master = Master::start(&scratch, &["--workers", "0"]);
    let mut workers: Vec<Worker> = (0..2)
        .map(|i| Worker::start(&master.run_dir, scratch.path().join(format!("w{i}.log")), "info"))
        .collect();
    master.wait_for_log("worker registered", 2);
    let victim = workers[0].child.as_ref().expect("child").id();
    stopped_worker_killed(&master, victim, 2);
    let _ = workers[0].wait_exit(WAIT);
    workers.truncate(1);
}

/// Worker `victim` (of `n_workers`) holds two silent clients, is stopped
/// (SIGSTOP) while more clients come, then killed (SIGKILL): the clients
/// queued to it, never received, are answered by another worker; the two it
/// had received are lost, and counted so; nothing else is.
fn stopped_worker_killed(master: &Master, victim: u32, n_workers: usize) {
    let mut control = Control::connect(&master.run_dir);
    let row_of = |control: &mut Control, pid: u32| -> Value {
        let rows = control.ask("workers")["workers"].as_array().cloned().unwrap_or_default();
        rows.into_iter().find(|row| row["pid"].as_u64() == Some(u64::from(pid))).expect("row")
    };
    // Round-robin gives each worker two silent clients, which it receives
    // and holds while waiting for their requests.
    let mut silent: Vec<_> = (0..2 * n_workers).map(|_| connect(master.addr)).collect();
    wait_until(WAIT, "each worker to hold two silent clients", || {
        count(&row_of(&mut control, victim), "in_flight") == 2
            && count(&control.ask("info"), "in_flight") == silent.len() as u64
    });
    // Give its loop time to have received them (in_flight counts sends).
    std::thread::sleep(Duration::from_millis(200));
    stop_process(Pid::from_raw(victim as i32));

    let clients: Vec<_> = (0..12)
        .map(|i| {
            let addr = master.addr;
            std::thread::spawn(move || one_request(addr, format!("queued {i}").as_bytes()))
        })
        .collect();
    let mut queued_to_victim = 0;
    wait_until(WAIT, "the clients the live workers got to be answered", || {
        let info = control.ask("info");
        queued_to_victim = count(&row_of(&mut control, victim), "in_flight") - 2;
        count(&info, "completed") == 12 - queued_to_victim
            && count(&info, "in_flight") == silent.len() as u64 + queued_to_victim
    });
    assert!(queued_to_victim > 0, "round-robin sent the stopped worker nothing");

    kill(Pid::from_raw(victim as i32), Signal::SIGKILL).expect("SIGKILL");
    let outcomes: Vec<Outcome> =
        clients.into_iter().map(|client| client.join().expect("client")).collect();
    assert_eq!(tally(&outcomes, Outcome::Answered), 12, "{outcomes:?}\n{}", master.log());
    // The victim's silent clients are closed with it; the others still
    // wait for a request.
    let closed = silent
        .iter_mut()
        .map(|client| {
            client.set_read_timeout(Some(Duration::from_millis(300))).expect("timeout");
            let mut rest = Vec::new();
            match client.read_to_end(&mut rest) {
                Ok(_) => true,
                Err(err) => err.kind() == std::io::ErrorKind::ConnectionReset,
            }
        })
        .filter(|&closed| closed)
        .count();
    assert_eq!(closed, 2, "the two the victim had received are cut off");
    let info = control.ask("info");
    assert_eq!(count(&info, "redispatched"), queued_to_victim, "{info}");
    assert_eq!(count(&info, "lost"), 2, "{info}");
    assert_eq!(count(&info, "lost_worker_died"), 2, "{info}");
    assert_eq!(count(&info, "completed"), 12, "{info}");
    assert_eq!(count(&info, "in_flight"), 2 * n_workers as u64 - 2, "{info}");
    assert!(master.log().contains("connections it never received go to other workers"));
}

#[test]
fn connections_a_stuck_worker_never_took_go_to_its_replacement() {
    let scratch = Scratch::new();
    let master = Master::start(&scratch, &["--workers", "1", "--timeout", "1"]);
    master.wait_for_log("worker registered", 1);
    let stuck = master.worker_pids()[0];
    stop_process(Pid::from_raw(stuck as i32));
    // These are handed to the stopped worker but never read by it.
    let mut clients: Vec<_> = (0..5).map(|_| connect(master.addr)).collect();
    for (i, client) in clients.iter_mut().enumerate() {
        client.write_all(format!("stuck {i}").as_bytes()).expect("send");
    }
    master.wait_for_log("worker stopped reporting", 1);
    for (i, client) in clients.iter_mut().enumerate() {
        let mut reply = Vec::new();
        client.read_to_end(&mut reply).unwrap_or_else(|err| panic!("{err}: {}", master.log()));
        assert_eq!(reply, expected_reply(format!("stuck {i}").as_bytes()));
    }
    let info = Control::connect(&master.run_dir).ask("info");
    assert_eq!(count(&info, "worker_timeouts"), 1, "{info}");
    assert_eq!(count(&info, "redispatched"), 5, "{info}");
    assert_eq!(count(&info, "lost"), 0, "{info}");
    assert!(!process_alive(stuck));
}

#[test]
fn sighup_under_load_replaces_every_worker_without_a_failed_client() {
    let scratch = Scratch::new();
    let master = Master::start(&scratch, &["--workers", "2"]);
    master.wait_for_log("worker registered", 2);
    let old: Vec<u32> = master.worker_pids();
    let hammer = Hammer::start(master.addr, 20);
    hammer.wait_for_more(200);
    master.signal(Signal::SIGHUP);
    master.wait_for_log("every worker replaced", 1);
    for pid in &old {
        wait_until(WAIT, "old workers to exit", || !process_alive(*pid));
    }
    hammer.wait_for_more(200);
    let outcomes = hammer.stop();
    assert_eq!(tally(&outcomes, Outcome::Answered), outcomes.len() as u64, "all answered");
    let mut control = Control::connect(&master.run_dir);
    let rows = control.ask("workers")["workers"].as_array().cloned().unwrap_or_default();
    assert_eq!(rows.len(), 2);
    for row in &rows {
        let pid = row["pid"].as_u64().expect("pid") as u32;
        assert!(!old.contains(&pid), "worker {pid} was not replaced");
    }
    let info = control.ask("info");
    assert_eq!(count(&info, "lost"), 0);
    assert_eq!(count(&info, "worker_deaths"), 0, "retired workers are not deaths: {info}");
    assert_no_warnings(&master.log());
    eprintln!("SIGHUP under load: {} requests, all answered; old {old:?}", outcomes.len());
}

#[test]
fn sigterm_under_load_answers_every_accepted_client_and_everything_exits_0() {
    let scratch = Scratch::new();
    let mut master = Master::start(&scratch, &["--workers", "2"]);
    master.wait_for_log("worker registered", 2);
    let hammer = Hammer::start(master.addr, 20);
    hammer.wait_for_more(200);
    master.signal(Signal::SIGTERM);
    let status = master.wait_exit(WAIT);
    let outcomes = hammer.stop();
    assert!(status.success(), "master exited {status}:\n{}", master.log());
    let log = master.log();
    assert_eq!(log.matches("status=exit status: 0").count(), 2, "workers exit 0:\n{log}");
    let summary = log.lines().find(|l| l.contains("shutdown complete")).expect("summary line");
    let accepted: u64 = field(summary, "accepted").and_then(|v| v.parse().ok()).expect("accepted");
    assert_eq!(field(summary, "lost"), Some("0"));
    let answered = tally(&outcomes, Outcome::Answered);
    assert_eq!(tally(&outcomes, Outcome::Failed), 0, "a client was cut off after being accepted");
    assert_eq!(answered, accepted, "every accepted client was answered");
    eprintln!(
        "SIGTERM under load: {} answered, {} refused after the listener closed",
        answered,
        tally(&outcomes, Outcome::NotAccepted)
    );
}

#[test]
fn out_of_fds_the_master_pauses_accepting_without_spinning_and_recovers() {
    let scratch = Scratch::new();
    let run_dir = scratch.run_dir();
    let log_path = scratch.path().join("master.log");
    // A master limited to 40 fds: it runs out while queueing idle clients.
    let mut child = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "ulimit -n 40 && exec '{}' --listen 127.0.0.1:0 --workers 0 --run-dir '{}'",
            bin("handoff-master").display(),
            run_dir.display()
        ))
        .stdout(std::process::Stdio::piped())
        .stderr(std::fs::File::create(&log_path).expect("log"))
        .spawn()
        .expect("spawn limited master");
    let mut stdout = std::io::BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    std::io::BufRead::read_line(&mut stdout, &mut line).expect("ready line");
    let addr: SocketAddr = line.trim().trim_start_matches("listening on ").parse().expect("addr");
    let pid = child.id();
    // A worker that takes one at a time: the master lets go of each fd it
    // hands off, so only connections queued in the master use its fds.
    let _worker = Worker::start_with_args(
        &run_dir,
        scratch.path().join("w.log"),
        "info",
        &["--max-conns", "1"],
    );
    wait_for_log(&log_path, "worker registered", 1);

    // 60 idle clients: more than the master has fds to queue them in.
    let mut clients: Vec<_> = (0..60).map(|_| connect(addr)).collect();
    wait_for_log(&log_path, "out of resources: pausing accept", 1);
    let before = cpu_ticks(pid);
    std::thread::sleep(Duration::from_secs(1));
    let used = cpu_ticks(pid) - before;
    assert!(used < 30, "the master spun while out of fds: {used} ticks in 1 s");

    // Load drops: every client sends, is answered, and the master resumes.
    for (i, client) in clients.iter_mut().enumerate() {
        client.write_all(format!("fd {i}").as_bytes()).expect("send");
    }
    for (i, client) in clients.iter_mut().enumerate() {
        let mut reply = Vec::new();
        client.read_to_end(&mut reply).expect("reply");
        assert_eq!(reply, expected_reply(format!("fd {i}").as_bytes()), "client {i}");
    }
    assert_eq!(request(addr, b"after").expect("served again"), expected_reply(b"after"));
    let info = Control::connect(&run_dir).ask("info");
    assert!(count(&info, "accept_paused_for_resources") > 0, "{info}");
    // Every pause was an accept that failed (EMFILE), counted as such.
    assert!(count(&info, "accept_errors") >= count(&info, "accept_paused_for_resources"), "{info}");
    assert_eq!(count(&info, "lost"), 0);
    let _ = child.kill();
    let _ = child.wait();
}

fn p99(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[(samples.len() * 99 / 100).min(samples.len() - 1)]
}

fn timed_requests(addr: SocketAddr, n: usize) -> Vec<Duration> {
    (0..n)
        .map(|i| {
            let started = Instant::now();
            let payload = format!("prompt {i}");
            assert_eq!(
                request(addr, payload.as_bytes()).expect("request"),
                expected_reply(payload.as_bytes())
            );
            started.elapsed()
        })
        .collect()
}

#[test]
fn two_thousand_idle_clients_do_not_slow_prompt_ones_with_the_master_at_1024_fds() {
    const IDLE: usize = 2000;
    let scratch = Scratch::new();
    // The master keeps no fd per connection it handed off, so the common
    // soft limit of 1024 does not make it stop accepting while workers
    // hold idle clients (workers raise their own limit). With
    // `--salvage exact` it would run out of fds and pause accepting.
    let master =
        Master::start_with_fd_limit(&scratch, &["--workers", "2", "--read-timeout", "1.5"], 1024);
    master.wait_for_log("worker registered", 2);
    let baseline = p99(timed_requests(master.addr, 200));
    let opened = Instant::now();
    let mut idle: Vec<_> = (0..IDLE).map(|_| connect(master.addr)).collect();
    let loaded = p99(timed_requests(master.addr, 200));
    assert!(
        loaded < baseline * 10 + Duration::from_millis(20),
        "p99 went from {baseline:?} to {loaded:?} with {IDLE} idle clients"
    );
    for client in &mut idle {
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).expect("closed by the server");
        assert!(rest.is_empty(), "an idle client gets no reply");
    }
    let closed_after = opened.elapsed();
    assert!(closed_after < Duration::from_secs(6), "idle clients closed after {closed_after:?}");
    let mut control = Control::connect(&master.run_dir);
    wait_until(WAIT, "timeouts to be reported", || {
        count(&control.ask("info"), "timeouts") == IDLE as u64
    });
    let info = control.ask("info");
    assert_eq!(count(&info, "accept_paused_for_resources"), 0, "{info}");
    eprintln!(
        "{IDLE} idle clients, master at 1024 fds: prompt p99 {baseline:?} -> {loaded:?}; \
         idle closed after {closed_after:?}"
    );
}

#[test]
fn a_worker_at_its_cap_gets_no_more_and_the_master_queues_the_rest() {
    let scratch = Scratch::new();
    let master = Master::start(&scratch, &["--workers", "1", "--max-conns", "3"]);
    master.wait_for_log("worker registered", 1);
    let mut clients: Vec<_> = (0..10).map(|_| connect(master.addr)).collect();
    let mut control = Control::connect(&master.run_dir);
    wait_until(WAIT, "seven queued in the master", || count(&control.ask("info"), "queued") == 7);
    let row = control.ask("workers")["workers"][0].clone();
    assert_eq!((count(&row, "in_flight"), count(&row, "capacity")), (3, 3), "{row}");
    // Queued because the worker is full, not for want of one.
    assert!(!master.log().contains("no worker yet"), "{}", master.log());
    for (i, client) in clients.iter_mut().enumerate() {
        let payload = format!("capped {i}");
        assert_eq!(
            send_and_read(client, payload.as_bytes()).expect("reply"),
            expected_reply(payload.as_bytes())
        );
    }
}

#[test]
fn a_capped_worker_tells_the_master_at_once_when_it_has_room() {
    const CLIENTS: usize = 12;
    let scratch = Scratch::new();
    let master = Master::start(&scratch, &["--workers", "1", "--max-conns", "1"]);
    master.wait_for_log("worker registered", 1);
    let mut clients: Vec<_> = (0..CLIENTS).map(|_| connect(master.addr)).collect();
    let mut control = Control::connect(&master.run_dir);
    wait_until(WAIT, "all but one queued in the master", || {
        count(&control.ask("info"), "queued") == CLIENTS as u64 - 1
    });
    // One at a time: each queued client waits for the previous one's end.
    // The worker says `Freed` in the turn a connection ends, so the queue
    // moves as fast as the clients send; if the master only heard at its
    // next timer or stats report (each 1 s), 11 waits would take seconds.
    let started = Instant::now();
    for (i, client) in clients.iter_mut().enumerate() {
        let payload = format!("one at a time {i}");
        assert_eq!(
            send_and_read(client, payload.as_bytes()).expect("reply"),
            expected_reply(payload.as_bytes())
        );
    }
    let took = started.elapsed();
    assert!(
        took < Duration::from_millis(600),
        "{CLIENTS} clients through a cap of 1 took {took:?}"
    );
}

#[test]
fn scale_sigttin_and_sigttou_change_the_number_of_workers() {
    let scratch = Scratch::new();
    let master = Master::start(&scratch, &["--workers", "1"]);
    master.wait_for_log("worker registered", 1);
    let mut control = Control::connect(&master.run_dir);
    let workers = |control: &mut Control| count(&control.ask("info"), "workers");
    assert_eq!(control.ask("scale 3")["ok"], "scaling to 3 spawned workers");
    // (id, pid) of each ready worker, oldest first.
    let ready = |control: &mut Control| {
        let rows = control.ask("workers")["workers"].as_array().cloned().unwrap_or_default();
        let mut ready: Vec<(u64, u64)> = rows
            .iter()
            .filter(|row| row["state"] == "ready")
            .filter_map(|row| Some((row["id"].as_u64()?, row["pid"].as_u64()?)))
            .collect();
        ready.sort_unstable();
        ready
    };
    let mut three = Vec::new();
    wait_until(WAIT, "three ready workers", || {
        three = ready(&mut control);
        three.len() == 3
    });
    master.signal(Signal::SIGTTOU);
    // Only the newest retires: the two oldest go on, nobody is replaced.
    wait_until(WAIT, "the newest worker retired, the others kept", || {
        workers(&mut control) == 2 && ready(&mut control) == three[..2]
    });
    master.signal(Signal::SIGTTIN);
    wait_until(WAIT, "three workers again", || workers(&mut control) == 3);
    assert!(control.ask("scale lots")["error"].is_string());
    let info = control.ask("info");
    assert_eq!((count(&info, "target_workers"), count(&info, "worker_deaths")), (3, 0), "{info}");
    for i in 0..30 {
        let payload = format!("scaled {i}");
        assert_eq!(
            request(master.addr, payload.as_bytes()).expect("request"),
            expected_reply(payload.as_bytes())
        );
    }
}

/// Scaling down retires the newest spawned worker, never one that joined
/// on its own (the master did not start it and would not replace it).
#[test]
fn scaling_down_retires_spawned_workers_not_ones_that_joined() {
    let scratch = Scratch::new();
    let master = Master::start(&scratch, &["--workers", "2"]);
    master.wait_for_log("worker registered", 2);
    let _joined = Worker::start(&master.run_dir, scratch.path().join("joined.log"), "info");
    master.wait_for_log("worker registered", 3);
    master.signal(Signal::SIGTTOU);
    let mut control = Control::connect(&master.run_dir);
    let mut origins = Vec::new();
    wait_until(WAIT, "one spawned worker retired", || {
        let rows = control.ask("workers")["workers"].as_array().cloned().unwrap_or_default();
        origins = rows.iter().filter_map(|row| row["origin"].as_str().map(str::to_owned)).collect();
        origins.len() == 2
    });
    origins.sort();
    assert_eq!(origins, ["external", "spawned"]);
}

#[test]
fn workers_that_die_at_once_are_a_crash_loop_with_backed_off_respawns() {
    let scratch = Scratch::new();
    let master = Master::start(&scratch, &["--workers", "2", "--worker-bin", "/bin/false"]);
    let mut control = Control::connect(&master.run_dir);
    wait_until(WAIT, "the crash loop to be reported", || control.ask("info")["crash_loop"] == true);
    let before = cpu_ticks(master.pid);
    let deaths_before = count(&control.ask("info"), "worker_deaths");
    std::thread::sleep(Duration::from_secs(1));
    let deaths_after = count(&control.ask("info"), "worker_deaths");
    assert!(cpu_ticks(master.pid) - before < 30, "the master spins in a crash loop");
    // Backoff doubles from 100 ms at the third death in the window: from
    // the fifth (the crash loop) the next respawns wait 400 ms, 800 ms,
    // 1.6 s…, so a second sees a handful of deaths (both workers die at
    // each respawn). Without backoff it would be hundreds; a fixed 100 ms
    // delay would give about twenty.
    assert!(
        deaths_after - deaths_before <= 6,
        "respawns are not backed off as they should: {deaths_before} -> {deaths_after} in 1 s"
    );
    eprintln!(
        "crash loop: {} deaths in the second after it was reported",
        deaths_after - deaths_before
    );
    assert!(master.log().contains("crash loop"));
}

/// A full channel is not a dead master: a worker whose reports fill its
/// channel while the master is stopped (SIGSTOP; stats every millisecond
/// here) holds them until the master reads again, and goes on serving.
#[test]
fn a_worker_whose_reports_fill_the_channel_of_a_stopped_master_waits_and_goes_on() {
    let scratch = Scratch::new();
    let master = Master::start(&scratch, &["--workers", "0"]);
    let worker_log = scratch.path().join("w.log");
    let args = ["--report-interval", "0.001"];
    let mut worker = Worker::start_with_args(&master.run_dir, worker_log.clone(), "info", &args);
    master.wait_for_log("worker registered", 1);
    master.signal(Signal::SIGSTOP);
    wait_for_log(&worker_log, "the master's channel is full", 1);
    master.signal(Signal::SIGCONT);
    wait_for_log(&worker_log, "reports resume", 1);
    assert_eq!(request(master.addr, b"after").expect("request"), expected_reply(b"after"));
    let child = worker.child.as_mut().expect("started");
    assert!(child.try_wait().expect("try_wait").is_none(), "the worker left: {}", worker.log());
    let log = worker.log();
    assert!(!log.contains("cannot report"), "{log}");
    // Said once for the stall, not at each retry (every 10 ms).
    assert_eq!(log.matches("the master's channel is full").count(), 1, "{log}");
}

#[test]
fn when_the_master_dies_workers_finish_what_they_hold_and_exit() {
    let scratch = Scratch::new();
    let mut master = Master::start(&scratch, &["--workers", "2"]);
    master.wait_for_log("worker registered", 2);
    let workers = master.worker_pids();
    // Connected and handed over, but the request is not sent yet.
    let mut held: Vec<_> = (0..4).map(|_| connect(master.addr)).collect();
    let mut control = Control::connect(&master.run_dir);
    wait_until(WAIT, "the workers to hold the clients", || {
        count(&control.ask("info"), "in_flight") == 4
    });
    master.signal(Signal::SIGKILL);
    master.wait_exit(WAIT);
    for (i, client) in held.iter_mut().enumerate() {
        let payload = format!("orphan {i}");
        let reply =
            send_and_read(client, payload.as_bytes()).expect("served after the master died");
        assert_eq!(reply, expected_reply(payload.as_bytes()));
    }
    for pid in workers {
        wait_until(WAIT, "workers to exit after their master", || !process_alive(pid));
    }
}

#[test]
fn sigquit_stops_at_once_and_graceful_timeout_bounds_a_stuck_drain() {
    // SIGQUIT: no drain.
    let scratch = Scratch::new();
    let mut master = Master::start(&scratch, &["--workers", "1"]);
    master.wait_for_log("worker registered", 1);
    let worker = master.worker_pids()[0];
    let _silent = connect(master.addr);
    let mut control = Control::connect(&master.run_dir);
    wait_until(WAIT, "the worker to hold the client", || {
        count(&control.ask("info"), "in_flight") == 1
    });
    master.signal(Signal::SIGQUIT);
    let status = master.wait_exit(Duration::from_secs(2));
    assert_eq!(status.code(), Some(1), "a forced stop exits 1");
    wait_until(WAIT, "the worker to be killed", || !process_alive(worker));
    let log = master.log();
    let after_stop = &log[log.find("SIGQUIT").expect("SIGQUIT logged")..];
    // The one client the worker held is counted lost, and said so.
    let forced =
        after_stop.lines().find(|l| l.contains("forced stop")).expect("forced stop logged");
    assert_eq!(field(forced, "held_by_workers"), Some("1"), "{forced}");
    assert_eq!(field(forced, "lost"), Some("1"), "{forced}");
    assert!(!after_stop.contains("spawned worker"), "respawned while stopping:\n{after_stop}");

    // SIGTERM with a client that never sends: the drain waits for it until
    // --graceful-timeout, then the master forces the stop.
    let scratch = Scratch::new();
    let mut master = Master::start(
        &scratch,
        &["--workers", "1", "--graceful-timeout", "1", "--read-timeout", "30"],
    );
    master.wait_for_log("worker registered", 1);
    let mut control = Control::connect(&master.run_dir);
    let _silent = connect(master.addr);
    wait_until(WAIT, "the worker to hold the client", || {
        count(&control.ask("info"), "in_flight") == 1
    });
    let started = Instant::now();
    master.signal(Signal::SIGTERM);
    let status = master.wait_exit(WAIT);
    let took = started.elapsed();
    assert_eq!(status.code(), Some(1), "forced after the graceful timeout");
    assert!(took >= Duration::from_millis(900) && took < Duration::from_secs(5), "took {took:?}");
    assert!(master.log().contains("graceful timeout passed"));
}

#[test]
fn a_short_timeout_does_not_kill_idle_healthy_workers() {
    let scratch = Scratch::new();
    let master = Master::start(&scratch, &["--workers", "2", "--timeout", "1"]);
    master.wait_for_log("worker registered", 2);
    let pids = master.worker_pids();
    // Idle for well over the timeout: the workers report often enough.
    std::thread::sleep(Duration::from_millis(2500));
    let mut control = Control::connect(&master.run_dir);
    let info = control.ask("info");
    assert_eq!(count(&info, "worker_timeouts"), 0, "{info}");
    assert_eq!(count(&info, "workers"), 2);
    assert_eq!(request(master.addr, b"alive").expect("request"), expected_reply(b"alive"));
    // And the timeout is real: a worker that stops reporting is killed
    // within about a second, the healthy one is left alone.
    stop_process(Pid::from_raw(pids[0] as i32));
    let stopped_at = Instant::now();
    wait_until(WAIT, "the silent worker to be killed", || !process_alive(pids[0]));
    let killed_after = stopped_at.elapsed();
    assert!(killed_after < Duration::from_secs(4), "killed after {killed_after:?}");
    assert_eq!(count(&control.ask("info"), "worker_timeouts"), 1);
    assert!(process_alive(pids[1]), "the healthy worker was killed too");
}

/// The master watches a worker's pidfd where only that tells it of a death
/// (`--salvage queued`: it holds the worker's end of the channel to read
/// the queue back, so the channel never closes): one per worker there,
/// none with `--salvage exact`, whose channel closes when the worker dies.
#[test]
fn the_master_holds_a_pidfd_per_worker_only_where_it_needs_one() {
    let pidfds = |pid: u32| {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .expect("fd dir")
            .flatten()
            .filter(|entry| {
                std::fs::read_link(entry.path())
                    .is_ok_and(|link| link.to_string_lossy().contains("pidfd"))
            })
            .count()
    };
    for (salvage, expected) in [("queued", 2), ("exact", 0)] {
        let scratch = Scratch::new();
        let master = Master::start(&scratch, &["--workers", "2", "--salvage", salvage]);
        master.wait_for_log("worker registered", 2);
        assert_eq!(pidfds(master.pid), expected, "--salvage {salvage}");
    }
}

/// A rolling restart (SIGHUP) whose replacement worker dies before it
/// registers spawns another and goes on: the dead one is no longer the
/// replacement it waits for. The worker binary here is a script that fails
/// once, when a marker file exists.
#[test]
fn a_rolling_restart_whose_replacement_dies_before_registering_goes_on() {
    use std::os::unix::fs::PermissionsExt;
    let scratch = Scratch::new();
    let marker = scratch.path().join("fail-once");
    let script = scratch.path().join("worker.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nif [ -e '{marker}' ]; then rm -f '{marker}'; exit 3; fi\nexec '{worker}' \"$@\"\n",
            marker = marker.display(),
            worker = bin("handoff-worker").display()
        ),
    )
    .expect("script");
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let worker_bin = script.to_str().expect("utf-8 path");
    let master = Master::start(&scratch, &["--workers", "1", "--worker-bin", worker_bin]);
    master.wait_for_log("worker registered", 1);
    let old = master.worker_pids();
    std::fs::write(&marker, b"").expect("marker");
    master.signal(Signal::SIGHUP);
    master.wait_for_log("worker died: replacing it", 1);
    master.wait_for_log("every worker replaced", 1);
    wait_until(WAIT, "the old worker to exit", || !process_alive(old[0]));
    assert!(!marker.exists(), "the first replacement ran the script");
    assert_eq!(request(master.addr, b"after").expect("reply"), expected_reply(b"after"));
    let rows = Control::connect(&master.run_dir).ask("workers")["workers"].clone();
    let pids: Vec<u64> =
        rows.as_array().into_iter().flatten().filter_map(|r| r["pid"].as_u64()).collect();
    assert_eq!(pids.len(), 1, "{rows}");
    assert_ne!(pids[0] as u32, old[0], "replaced");
}

/// Of the master's two workers, the first is stopped (SIGSTOP) while 20
/// clients arrive; returns once all are handed out and the live worker
/// answered some: (the stopped worker's pid, the clients, a control
/// connection).
fn twenty_clients_one_worker_stopped(
    master: &Master,
) -> (u32, Vec<std::thread::JoinHandle<Outcome>>, Control) {
    master.wait_for_log("worker registered", 2);
    let victim = master.worker_pids()[0];
    stop_process(Pid::from_raw(victim as i32));
    let clients: Vec<_> = (0..20)
        .map(|i| {
            let addr = master.addr;
            std::thread::spawn(move || one_request(addr, format!("stopped {i}").as_bytes()))
        })
        .collect();
    let mut control = Control::connect(&master.run_dir);
    wait_until(WAIT, "every client handed out, the live worker's answered", || {
        let info = control.ask("info");
        count(&info, "dispatched") == 20 && count(&info, "completed") >= 5
    });
    (victim, clients, control)
}

/// A worker that dies during a stop: 2 workers, one stopped (SIGSTOP)
/// while 20 clients arrive (round-robin queues about half to it), then
/// SIGTERM, and the stopped worker killed 1 s later. Its queue is taken
/// back, but every other worker had been told to finish: the master used
/// to close those connections (10 of 20 reset) and exit 0. Now one healthy
/// worker keeps taking work while another still holds connections (and a
/// worker is started if none is left), and all 20 are answered.
#[test]
fn a_worker_killed_during_a_stop_loses_none_of_what_was_queued_to_it() {
    let scratch = Scratch::new();
    let mut master = Master::start(&scratch, &["--workers", "2", "--timeout", "0"]);
    let (victim, clients, _control) = twenty_clients_one_worker_stopped(&master);
    master.signal(Signal::SIGTERM);
    std::thread::sleep(Duration::from_secs(1));
    kill(Pid::from_raw(victim as i32), Signal::SIGKILL).expect("SIGKILL");
    let outcomes: Vec<Outcome> =
        clients.into_iter().map(|client| client.join().expect("client")).collect();
    let status = master.wait_exit(WAIT);
    let log = master.log();
    assert_eq!(tally(&outcomes, Outcome::Answered), 20, "{outcomes:?}\n{log}");
    assert_eq!(status.code(), Some(0), "every client answered: a clean stop\n{log}");
}

/// The same with workers started by hand only (`--workers 0`): there is
/// nothing to start, the connections are lost, and the exit status says
/// so (it used to be 0).
#[test]
fn a_stop_that_loses_clients_does_not_exit_0() {
    let scratch = Scratch::new();
    let mut master = Master::start(&scratch, &["--workers", "0"]);
    let _client = connect(master.addr);
    let mut control = Control::connect(&master.run_dir);
    wait_until(WAIT, "one client queued", || count(&control.ask("info"), "queued") == 1);
    master.signal(Signal::SIGTERM);
    let status = master.wait_exit(WAIT);
    assert_eq!(status.code(), Some(1), "{}", master.log());
    assert!(master.log().contains("clients were lost during the stop"));
}

/// The same during an upgrade's drain: the old master hands over, a
/// stopped worker of its own is killed by `--timeout` while it drains, and
/// what was queued to it is taken back. Its other worker, kept taking
/// work meanwhile, answers them (before: reset, since the old master
/// cannot start a worker once the workers' socket is the new master's).
#[test]
fn a_worker_killed_by_timeout_during_an_upgrades_drain_loses_nothing() {
    let scratch = Scratch::new();
    let mut master = Master::start(&scratch, &["--workers", "2", "--timeout", "2"]);
    let (_victim, clients, mut control) = twenty_clients_one_worker_stopped(&master);
    assert!(control.ask("upgrade")["ok"].is_string());
    let outcomes: Vec<Outcome> =
        clients.into_iter().map(|client| client.join().expect("client")).collect();
    let status = master.wait_exit(Duration::from_secs(20));
    let log = master.log();
    assert_eq!(tally(&outcomes, Outcome::Answered), 20, "{outcomes:?}\n{log}");
    assert!(log.contains("worker stopped reporting: killing it"), "{log}");
    assert_eq!(status.code(), Some(0), "the old master's stop lost nobody\n{log}");
    // The new master serves on; stop it.
    let info = Control::connect(&master.run_dir).ask("info");
    let new_pid = info["pid"].as_u64().expect("new master") as i32;
    kill(Pid::from_raw(new_pid), Signal::SIGTERM).expect("SIGTERM the new master");
    wait_until(WAIT, "the new master exits", || !process_alive(new_pid as u32));
}
