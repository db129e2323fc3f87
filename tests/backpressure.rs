use std::io::Write;
use std::net::TcpStream;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::support::*;

fn send_all(clients: &mut [TcpStream], tag: &str) {
    for (i, client) in clients.iter_mut().enumerate() {
        client.write_all(format!("{tag} {i}").as_bytes()).expect("send");
    }
}

fn expect_all_answered(clients: &mut [TcpStream], tag: &str) {
    for (i, client) in clients.iter_mut().enumerate() {
        let payload = format!("{tag} {i}");
        let mut reply = Vec::new();
        std::io::Read::read_to_end(client, &mut reply).expect("reply");
        assert_eq!(reply, expected_reply(payload.as_bytes()), "client {i}");
    }
}

#[test]
fn a_stalled_workers_full_channel_keeps_connections_in_the_master_until_it_drains() {
    let scratch = Scratch::new();
    let master = Master::start(&scratch, &["--workers", "1"]);
    master.wait_for_log("worker registered", 1);
    let worker = Pid::from_raw(master.worker_pids()[0] as i32);
    let baseline = socket_fds(master.pid);
    kill(worker, Signal::SIGSTOP).expect("SIGSTOP worker");
    // More connections than the channel holds (a few hundred small packets).
    let mut clients: Vec<_> = (0..800).map(|_| connect(master.addr)).collect();
    send_all(&mut clients, "stalled");
    // Evidence the channel filled: the master itself holds the overflow.
    wait_until(WAIT, "the master to hold the overflow", || {
        socket_fds(master.pid) >= baseline + 100
    });
    kill(worker, Signal::SIGCONT).expect("SIGCONT worker");
    expect_all_answered(&mut clients, "stalled");
    wait_until(WAIT, "the master to let go of every fd", || socket_fds(master.pid) == baseline);
}

#[test]
fn a_full_queue_stops_accepting_and_the_kernel_backlog_holds_the_rest() {
    let scratch = Scratch::new();
    let master = Master::start(&scratch, &["--workers", "0", "--queue-limit", "5"]);
    let baseline = socket_fds(master.pid);
    let mut clients: Vec<_> = (0..30).map(|_| connect(master.addr)).collect();
    send_all(&mut clients, "queued");
    master.wait_for_log("queue full", 1);
    // Five held by the master, the rest still in the kernel's accept queue.
    // The master logs "queue full" right after its fifth accept and then
    // stops, so the count is final here.
    assert_eq!(socket_fds(master.pid), baseline + 5, "the master holds exactly the queue");
    let _worker = Worker::start(&master.run_dir, scratch.path().join("w.log"), "info");
    expect_all_answered(&mut clients, "queued");
    // (Queue state changes are logged at most once a second.)
    master.wait_for_log("accepting again", 1);
}
