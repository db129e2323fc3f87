//! What closing a hand-off batch's fds costs: one `close` each (dropping
//! the `OwnedFd`s) against `close_all` (one `close_range` per run of
//! consecutive numbers). Each fd is a duplicate of a connected socket that
//! stays open elsewhere, as the master's copy is once the worker has its
//! own. `cargo run --release -p handoff-fdpass --example close_cost [N]`
//! (N fds per batch, default 16).

use std::net::{TcpListener, TcpStream};
use std::os::fd::OwnedFd;
use std::time::Instant;

fn main() -> std::io::Result<()> {
    let n: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(16);
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let _client = TcpStream::connect(listener.local_addr()?)?;
    let (server, _) = listener.accept()?;
    let batches = 50_000;
    for round in 1..=3 {
        for close_all in [false, true] {
            let mut spent = std::time::Duration::ZERO;
            for _ in 0..batches {
                let fds = (0..n)
                    .map(|_| server.try_clone().map(OwnedFd::from))
                    .collect::<std::io::Result<Vec<_>>>()?;
                let started = Instant::now();
                if close_all {
                    handoff_fdpass::close_all(fds);
                } else {
                    drop(fds);
                }
                spent += started.elapsed();
            }
            let per_fd = spent.as_nanos() as f64 / (batches * n) as f64;
            let how = if close_all { "close_all (close_range)" } else { "one close each" };
            println!("round {round}, {n} fds per batch, {how}: {per_fd:.0} ns per fd");
        }
    }
    Ok(())
}
