//! Aligned tables for people.

use handoff_proto::control::{InfoReply, WorkerRow};

/// Columns padded to their widest cell; the first left-aligned, the rest right.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let header: Vec<String> = header.iter().map(|h| (*h).to_owned()).collect();
    for row in std::iter::once(&header).chain(rows) {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .enumerate()
            .map(
                |(i, (cell, &width))| {
                    if i == 0 {
                        format!("{cell:<width$}")
                    } else {
                        format!("{cell:>width$}")
                    }
                },
            )
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// The rows of `info`: label, value.
fn info_rows(info: &InfoReply) -> Vec<(&'static str, String)> {
    let per_conn = info.cpu_us_per_dispatched.map_or("-".to_owned(), |us| format!("{us:.1} µs"));
    vec![
        ("version", info.version.clone()),
        ("pid", info.pid.to_string()),
        ("generation", info.generation.to_string()),
        (
            "upgrade",
            match &info.upgrade_error {
                Some(why) if info.upgrade == "failed" => format!("failed: {why}"),
                _ => info.upgrade.clone(),
            },
        ),
        ("listen", info.listen.clone()),
        ("run dir", info.run_dir.clone()),
        ("state", info.state.clone()),
        ("uptime", format!("{:.1} s", info.uptime_secs)),
        ("workers", info.workers.to_string()),
        ("mode", info.mode.clone()),
        ("salvage", info.salvage.clone()),
        ("accepted", info.accepted.to_string()),
        ("accepted by workers", info.worker_accepted.to_string()),
        ("dispatched", info.dispatched.to_string()),
        ("hand-off packets", info.handoff_packets.to_string()),
        ("queued", info.queued.to_string()),
        ("in flight", info.in_flight.to_string()),
        ("completed", info.completed.to_string()),
        ("  served", info.served.to_string()),
        ("  resets", info.resets.to_string()),
        ("  failed", info.failed.to_string()),
        ("  timeouts", info.timeouts.to_string()),
        ("lost", info.lost.to_string()),
        ("  worker died", info.lost_worker_died.to_string()),
        ("  at shutdown", info.lost_at_shutdown.to_string()),
        ("redispatched", info.redispatched.to_string()),
        ("served by dead workers", info.served_by_dead_workers.to_string()),
        ("accept errors", info.accept_errors.to_string()),
        ("accept pauses (fds)", info.accept_paused_for_resources.to_string()),
        ("target workers", info.target_workers.to_string()),
        ("worker deaths", info.worker_deaths.to_string()),
        ("respawns", info.respawns.to_string()),
        ("worker timeouts", info.worker_timeouts.to_string()),
        ("crash loop", if info.crash_loop { "YES" } else { "no" }.to_owned()),
        ("cpu user", format!("{:.3} s", info.cpu_user_secs)),
        ("cpu sys", format!("{:.3} s", info.cpu_sys_secs)),
        ("cpu per dispatched", per_conn),
        ("rss", mib(info.rss_bytes)),
        (
            "balancer",
            match info.stopping_in_secs {
                Some(secs) => format!("{} (listener closes in {secs:.1} s)", info.balancer),
                None => info.balancer.clone(),
            },
        ),
        ("agent check", info.agent_check.clone().unwrap_or_else(|| "-".to_owned())),
        (
            "agent says",
            if info.agent_check.is_some() { info.agent_reply.clone() } else { "-".to_owned() },
        ),
    ]
}

pub fn info_table(info: &InfoReply) -> String {
    let rows = info_rows(info);
    // Key/value pairs read better left-aligned.
    let width = rows.iter().map(|(label, _)| label.chars().count()).max().unwrap_or(0);
    rows.iter().map(|(label, value)| format!("{label:<width$}  {value}\n")).collect()
}

/// Several masters' `info`, one column each (`handoff-ctl --run-dir A
/// --run-dir B info`); a master that did not answer shows `unreachable`.
pub fn info_side_by_side(instances: &[(String, Result<InfoReply, String>)]) -> String {
    let answered: Vec<Option<Vec<(&'static str, String)>>> =
        instances.iter().map(|(_, info)| info.as_ref().ok().map(info_rows)).collect();
    let Some(labels) = answered
        .iter()
        .flatten()
        .next()
        .map(|rows| rows.iter().map(|(label, _)| *label).collect::<Vec<_>>())
    else {
        return instances.iter().map(|(name, _)| format!("{name}: unreachable\n")).collect();
    };
    let mut header = vec![""];
    header.extend(instances.iter().map(|(name, _)| name.as_str()));
    let rows: Vec<Vec<String>> = labels
        .iter()
        .enumerate()
        .map(|(i, label)| {
            let mut row = vec![(*label).to_owned()];
            row.extend(answered.iter().map(|rows| match rows {
                Some(rows) => rows[i].1.clone(),
                None if *label == "state" => "unreachable".to_owned(),
                None => "-".to_owned(),
            }));
            row
        })
        .collect();
    let mut out = table(&header, &rows);
    for (name, info) in instances {
        if let Err(err) = info {
            out.push_str(&format!("{name}: {err}\n"));
        }
    }
    out
}

pub fn workers_table(workers: &[WorkerRow]) -> String {
    let opt = |v: Option<u64>| v.map_or("-".to_owned(), |v| v.to_string());
    let rows: Vec<Vec<String>> = workers
        .iter()
        .map(|w| {
            vec![
                w.id.to_string(),
                w.pid.to_string(),
                w.origin.clone(),
                w.state.clone(),
                w.dispatched.to_string(),
                w.accepted.map_or("-".to_owned(), |a| a.to_string()),
                w.completed.to_string(),
                w.in_flight.to_string(),
                w.resets.to_string(),
                w.failed.to_string(),
                w.timeouts.to_string(),
                w.bytes_in.to_string(),
                w.bytes_out.to_string(),
                match (w.cpu_user_secs, w.cpu_sys_secs) {
                    (Some(u), Some(s)) => format!("{:.3}", u + s),
                    _ => "-".to_owned(),
                },
                w.cpu_percent.map_or("-".to_owned(), |p| format!("{p:.1}")),
                w.rss_bytes.map_or("-".to_owned(), mib),
                format!("{}/{}", opt(w.handling_p50_us), opt(w.handling_p99_us)),
                format!("{}/{}", opt(w.handoff_p50_us), opt(w.handoff_p99_us)),
                w.last_report_age_secs.map_or("-".to_owned(), |a| format!("{a:.1}s")),
            ]
        })
        .collect();
    table(
        &[
            "id",
            "pid",
            "origin",
            "state",
            "dispatched",
            "accepted",
            "completed",
            "in_flight",
            "resets",
            "failed",
            "timeouts",
            "bytes_in",
            "bytes_out",
            "cpu_s",
            "cpu_%",
            "rss",
            "handle_p50/p99_us",
            "handoff_p50/p99_us",
            "report_age",
        ],
        &rows,
    )
}

pub fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_line_up() {
        let text = table(
            &["name", "n"],
            &[vec!["a".into(), "1000".into()], vec!["bbbb".into(), "2".into()]],
        );
        assert_eq!(text, "name     n\na     1000\nbbbb     2\n");
    }

    #[test]
    fn sizes_are_mebibytes_with_one_decimal() {
        assert_eq!(mib(0), "0.0 MiB");
        assert_eq!(mib(3 * 1024 * 1024 + 512 * 1024), "3.5 MiB");
    }
}
