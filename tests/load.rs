use std::collections::HashMap;
use std::sync::Arc;

use crate::support::*;

#[test]
fn two_thousand_connections_from_fifty_clients_are_all_answered_by_several_workers() {
    const CLIENTS: usize = 50;
    const PER_CLIENT: usize = 40;
    let scratch = Scratch::new();
    // Workers log each served connection at debug, with their pid in the
    // span: that is how this test knows who served what.
    let master = Master::start_with_env(&scratch, &["--workers", "2"], "info,handoff_worker=debug");
    master.wait_for_log("worker registered", 2);
    let addr = master.addr;
    let failures = Arc::new(std::sync::Mutex::new(Vec::new()));
    let threads: Vec<_> = (0..CLIENTS)
        .map(|client| {
            let failures = Arc::clone(&failures);
            std::thread::spawn(move || {
                for i in 0..PER_CLIENT {
                    let payload = format!("client {client} request {i}");
                    match request(addr, payload.as_bytes()) {
                        Ok(reply) if reply == expected_reply(payload.as_bytes()) => {}
                        other => {
                            failures.lock().expect("lock").push(format!("{payload}: {other:?}"))
                        }
                    }
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().expect("client thread");
    }
    let failures = failures.lock().expect("lock");
    assert!(failures.is_empty(), "{} failures, first: {:?}", failures.len(), failures.first());

    let total = CLIENTS * PER_CLIENT;
    let served_line = "handoff_worker::server: served";
    master.wait_for_log(served_line, total);
    let mut per_pid: HashMap<String, usize> = HashMap::new();
    for line in master.log().lines().filter(|line| line.contains(served_line)) {
        let pid = field(line, "pid").expect("served line names the worker pid");
        *per_pid.entry(pid.to_owned()).or_default() += 1;
    }
    assert_eq!(per_pid.values().sum::<usize>(), total, "{per_pid:?}");
    assert!(per_pid.len() >= 2, "only one worker served: {per_pid:?}");
    let registered: Vec<String> = master.worker_pids().iter().map(u32::to_string).collect();
    for pid in per_pid.keys() {
        assert!(registered.contains(pid), "pid {pid} served but never registered");
    }
    assert_no_warnings(&master.log());
}
