//! `handoff-ctl top`: one line per process (the master, then each worker)
//! with connections/s, in flight and CPU %, computed from the difference
//! between two consecutive answers.

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Result;
use handoff_proto::control::{InfoReply, WorkersReply};

use crate::client::ControlClient;
use crate::render::{mib, table};

struct Sample {
    at: Instant,
    info: InfoReply,
    workers: WorkersReply,
}

pub fn run(
    run_dir: &Path,
    mut client: ControlClient,
    interval: Duration,
    iterations: Option<u64>,
) -> Result<()> {
    let clear = std::io::stdout().is_terminal();
    let mut previous = sample(&mut client)?;
    let mut done = 0;
    while iterations.is_none_or(|n| done < n) {
        std::thread::sleep(interval);
        let current = match sample(&mut client) {
            Ok(current) => current,
            // The master closes control clients idle for longer than its
            // --control-idle-timeout: a long --interval reconnects.
            Err(_) => {
                client = ControlClient::connect(run_dir)?;
                sample(&mut client)?
            }
        };
        let frame = render_frame(&previous, &current);
        let mut stdout = std::io::stdout().lock();
        if clear {
            write!(stdout, "\x1b[H\x1b[2J")?;
        }
        write!(stdout, "{frame}")?;
        if !clear {
            writeln!(stdout)?;
        }
        stdout.flush()?;
        previous = current;
        done += 1;
    }
    Ok(())
}

fn sample(client: &mut ControlClient) -> Result<Sample> {
    let (_, info) = client.ask::<InfoReply>("info")?;
    let (_, workers) = client.ask::<WorkersReply>("workers")?;
    Ok(Sample { at: Instant::now(), info, workers })
}

fn render_frame(previous: &Sample, current: &Sample) -> String {
    let elapsed = current.at.duration_since(previous.at).as_secs_f64().max(1e-3);
    let rate =
        |now: u64, before: u64| format!("{:.0}", now.saturating_sub(before) as f64 / elapsed);
    let percent =
        |now: f64, before: f64| format!("{:.1}", (now - before).max(0.0) / elapsed * 100.0);
    let info = &current.info;
    let mut rows = vec![vec![
        "master".to_owned(),
        info.pid.to_string(),
        rate(info.dispatched, previous.info.dispatched),
        info.queued.to_string(),
        percent(
            info.cpu_user_secs + info.cpu_sys_secs,
            previous.info.cpu_user_secs + previous.info.cpu_sys_secs,
        ),
        mib(info.rss_bytes),
    ]];
    let before: HashMap<u32, _> = previous.workers.workers.iter().map(|w| (w.id, w)).collect();
    for worker in &current.workers.workers {
        let old = before.get(&worker.id);
        let cpu = |w: &handoff_proto::control::WorkerRow| {
            w.cpu_user_secs.unwrap_or(0.0) + w.cpu_sys_secs.unwrap_or(0.0)
        };
        rows.push(vec![
            format!("worker {}", worker.id),
            worker.pid.to_string(),
            rate(worker.completed, old.map_or(worker.completed, |o| o.completed)),
            worker.in_flight.to_string(),
            match old {
                Some(o) if worker.cpu_user_secs.is_some() => percent(cpu(worker), cpu(o)),
                _ => "-".to_owned(),
            },
            worker.rss_bytes.map_or("-".to_owned(), mib),
        ]);
    }
    let title = format!(
        "handoff on {}  up {:.0}s  accepted {}  completed {}  lost {}\n\n",
        info.listen, info.uptime_secs, info.accepted, info.completed, info.lost
    );
    // For the master, "conn/s" counts hand-offs and "in flight" its queue.
    title + &table(&["process", "pid", "conn/s", "in_flight", "cpu_%", "rss"], &rows)
}
