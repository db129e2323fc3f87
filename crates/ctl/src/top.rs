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
    // Reuseport with the kernel balancer: each worker's load as the
    // program sees it, one more column.
    let kernel = current.workers.workers.iter().any(|w| w.kernel_load.is_some());
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
    if kernel {
        rows[0].push("-".to_owned());
    }
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
        if kernel {
            let load = worker.kernel_load.map_or("-".to_owned(), |load| load.to_string());
            if let Some(row) = rows.last_mut() {
                row.push(load);
            }
        }
    }
    let selection = match (&info.reuseport_selection, info.kernel_migrated) {
        (Some(selection), Some(migrated)) => format!("  {selection}, migrated {migrated}"),
        (Some(selection), None) => format!("  {selection}"),
        _ => String::new(),
    };
    let title = format!(
        "handoff on {}  up {:.0}s  accepted {}  completed {}  lost {}{selection}\n\n",
        info.listen, info.uptime_secs, info.accepted, info.completed, info.lost
    );
    // For the master, "conn/s" counts hand-offs and "in flight" its queue.
    let mut headers = vec!["process", "pid", "conn/s", "in_flight", "cpu_%", "rss"];
    if kernel {
        headers.push("kernel_load");
    }
    title + &table(&headers, &rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_samples::{info_json, worker_json};

    type Map = serde_json::Map<String, serde_json::Value>;

    fn sample(at: Instant, info: impl FnOnce(&mut Map), workers: Vec<serde_json::Value>) -> Sample {
        Sample {
            at,
            info: serde_json::from_value(info_json(info)).expect("info"),
            workers: serde_json::from_value(serde_json::json!({ "workers": workers }))
                .expect("workers"),
        }
    }

    fn words(frame: &str, first: &str) -> Vec<String> {
        let line =
            frame.lines().find(|l| l.starts_with(first)).unwrap_or_else(|| panic!("{frame}"));
        line.split_whitespace().map(str::to_owned).collect()
    }

    #[test]
    fn a_frame_shows_rates_and_cpu_per_process_over_the_interval() {
        let start = Instant::now();
        let cpu = |user: f64, sys: f64| {
            move |m: &mut Map| {
                m.insert("cpu_user_secs".into(), user.into());
                m.insert("cpu_sys_secs".into(), sys.into());
            }
        };
        let before = sample(
            start,
            |m| {
                m.insert("dispatched".into(), 100.into());
                cpu(1.0, 0.5)(m);
            },
            vec![worker_json(0, cpu(1.0, 0.5)), worker_json(1, |_| {})],
        );
        let after = sample(
            start + Duration::from_secs(2),
            |m| {
                m.insert("dispatched".into(), 300.into());
                cpu(1.5, 1.5)(m);
            },
            vec![
                worker_json(0, |m| {
                    m.insert("completed".into(), 52.into());
                    cpu(1.5, 1.5)(m);
                }),
                worker_json(1, |m| {
                    m.insert("cpu_user_secs".into(), serde_json::Value::Null);
                }),
                // Not in the previous sample: no rate, no CPU % yet.
                worker_json(2, |_| {}),
            ],
        );
        let frame = render_frame(&before, &after);
        assert!(
            frame.starts_with(
                "handoff on 127.0.0.1:8080  up 12s  accepted 1001  completed 1007  lost 1012\n\n"
            ),
            "{frame}"
        );
        assert_eq!(
            words(&frame, "process"),
            ["process", "pid", "conn/s", "in_flight", "cpu_%", "rss"]
        );
        // (300 - 100) / 2 s; CPU (1.5 + 1.5) - (1.0 + 0.5) over 2 s.
        assert_eq!(words(&frame, "master"), ["master", "42", "100", "1005", "75.0", "3.5", "MiB"]);
        // (52 - 12) / 2 s.
        assert_eq!(
            words(&frame, "worker 0"),
            ["worker", "0", "100", "20", "3", "75.0", "2.0", "MiB"]
        );
        assert_eq!(words(&frame, "worker 1"), ["worker", "1", "101", "0", "3", "-", "2.0", "MiB"]);
        assert_eq!(words(&frame, "worker 2"), ["worker", "2", "102", "0", "3", "-", "2.0", "MiB"]);
    }

    #[test]
    fn with_the_kernel_balancer_the_frame_says_so_and_shows_each_load() {
        let start = Instant::now();
        let info = |m: &mut Map| {
            m.insert("reuseport_selection".into(), "ebpf least".into());
            m.insert("kernel_migrated".into(), 7.into());
        };
        let load = |m: &mut Map| {
            m.insert("kernel_load".into(), 3.into());
        };
        let before = sample(start, info, vec![worker_json(0, load)]);
        let after = sample(start + Duration::from_secs(1), info, vec![worker_json(0, load)]);
        let frame = render_frame(&before, &after);
        assert!(
            frame.lines().next().is_some_and(|l| l.ends_with("ebpf least, migrated 7")),
            "{frame}"
        );
        assert_eq!(words(&frame, "process").last().map(String::as_str), Some("kernel_load"));
        assert_eq!(words(&frame, "worker").last().map(String::as_str), Some("3"), "{frame}");
    }
}
