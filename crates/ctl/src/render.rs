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
    let mut rows = vec![
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
            // Without --agent-check nobody asks; say what it would answer,
            // as the JSON does.
            if info.agent_check.is_some() {
                info.agent_reply.clone()
            } else {
                format!("- (no --agent-check; would say {})", info.agent_reply)
            },
        ),
    ];
    // Reuseport mode only: who picks a worker, and what the program did.
    if let Some(selection) = &info.reuseport_selection {
        rows.push(("reuseport selection", selection.clone()));
    }
    if let (Some(placed), Some(migrated), Some(hashed)) =
        (info.kernel_selected, info.kernel_migrated, info.kernel_fallbacks)
    {
        rows.push(("  placed by the program", placed.to_string()));
        rows.push(("  migrated at a close", migrated.to_string()));
        rows.push(("  left to the hash", hashed.to_string()));
    }
    rows
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

/// The `workers` columns that fit 100 columns; `--wide` shows them all.
const NARROW_COLUMNS: &[&str] = &[
    "id",
    "pid",
    "state",
    "dispatched",
    "accepted",
    "completed",
    "in_flight",
    "cpu_%",
    "rss",
    "kernel_load",
];

/// One row per worker: the columns that fit 100 columns, or every one.
pub fn workers_table_for(workers: &[WorkerRow], wide: bool) -> String {
    let full = workers_table(workers);
    if wide {
        return full;
    }
    // Re-cut the wide table's cells (none holds two words but `rss`,
    // which is "N MiB": rebuilt from the rows instead).
    let (headers, rows) = workers_cells(workers);
    let keep: Vec<usize> =
        (0..headers.len()).filter(|&i| NARROW_COLUMNS.contains(&headers[i])).collect();
    let headers: Vec<&str> = keep.iter().map(|&i| headers[i]).collect();
    let rows: Vec<Vec<String>> =
        rows.into_iter().map(|row| keep.iter().map(|&i| row[i].clone()).collect()).collect();
    table(&headers, &rows)
}

/// Every column of the `workers` table.
pub fn workers_table(workers: &[WorkerRow]) -> String {
    let (headers, rows) = workers_cells(workers);
    table(&headers, &rows)
}

fn workers_cells(workers: &[WorkerRow]) -> (Vec<&'static str>, Vec<Vec<String>>) {
    let opt = |v: Option<u64>| v.map_or("-".to_owned(), |v| v.to_string());
    // The kernel balancer's view, in reuseport mode with a program only.
    let kernel = workers.iter().any(|w| w.kernel_load.is_some());
    let rows: Vec<Vec<String>> = workers
        .iter()
        .map(|w| {
            let mut row = vec![
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
            ];
            if kernel {
                row.push(w.kernel_load.map_or("-".to_owned(), |l| l.to_string()));
            }
            row
        })
        .collect();
    let mut headers = vec![
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
    ];
    if kernel {
        headers.push("kernel_load");
    }
    (headers, rows)
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

    use crate::test_samples::{info_json, worker_json};

    fn info(edit: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>)) -> InfoReply {
        serde_json::from_value(info_json(edit)).expect("a valid info answer")
    }

    /// A line of `info_table`: labels padded to the longest one
    /// ("served by dead workers", 22 characters).
    fn line(label: &str, value: &str) -> String {
        format!("{label:<22}  {value}")
    }

    #[test]
    fn info_is_one_aligned_line_per_field() {
        let text = info_table(&info(|_| {}));
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 41, "{text}");
        assert_eq!(lines[0], line("version", "9.9.9"));
        assert_eq!(lines[1], line("pid", "42"));
        for expected in [
            line("upgrade", "none"),
            line("uptime", "12.3 s"),
            line("served by dead workers", "1016"),
            line("  worker died", "1013"),
            line("crash loop", "no"),
            line("cpu user", "1.500 s"),
            line("cpu per dispatched", "2.5 µs"),
            line("rss", "3.5 MiB"),
            line("balancer", "in rotation"),
            line("agent check", "-"),
            // No agent check: what it would say, marked as such.
            line("agent says", "- (no --agent-check; would say up 100%)"),
        ] {
            assert!(lines.contains(&expected.as_str()), "no `{expected}` in\n{text}");
        }
    }

    #[test]
    fn info_shows_why_an_upgrade_failed_and_the_optional_fields() {
        let text = info_table(&info(|i| {
            i.insert("upgrade".into(), "failed".into());
            i.insert("upgrade_error".into(), "no binary".into());
            i.insert("crash_loop".into(), true.into());
            i.insert("cpu_us_per_dispatched".into(), serde_json::Value::Null);
            i.insert("stopping_in_secs".into(), 2.5.into());
            i.insert("agent_check".into(), "127.0.0.1:9000".into());
        }));
        for expected in [
            line("upgrade", "failed: no binary"),
            line("crash loop", "YES"),
            line("cpu per dispatched", "-"),
            line("balancer", "in rotation (listener closes in 2.5 s)"),
            line("agent check", "127.0.0.1:9000"),
            line("agent says", "up 100%"),
        ] {
            assert!(text.lines().any(|l| l == expected), "no `{expected}` in\n{text}");
        }
        // An error is shown only with a failed upgrade.
        let text = info_table(&info(|i| {
            i.insert("upgrade".into(), "taking over".into());
            i.insert("upgrade_error".into(), "stale".into());
        }));
        assert!(text.lines().any(|l| l == line("upgrade", "taking over")), "{text}");
    }

    #[test]
    fn side_by_side_marks_a_master_that_did_not_answer() {
        let text = info_side_by_side(&[
            ("a".to_owned(), Ok(info(|_| {}))),
            ("b".to_owned(), Err("no master at b".to_owned())),
        ]);
        let words = |label: &str| -> Vec<String> {
            let line = text.lines().find(|l| l.starts_with(label)).expect(label);
            line.split_whitespace().map(str::to_owned).collect()
        };
        assert_eq!(
            text.lines().next().map(str::split_whitespace).map(Iterator::collect::<Vec<_>>),
            Some(vec!["a", "b"])
        );
        assert_eq!(words("state"), ["state", "running", "unreachable"]);
        assert_eq!(words("pid"), ["pid", "42", "-"]);
        assert_eq!(words("rss"), ["rss", "3.5", "MiB", "-"]);
        assert_eq!(text.lines().count(), 1 + 41 + 1, "{text}");
        assert_eq!(text.lines().last(), Some("b: no master at b"));

        let none = info_side_by_side(&[
            ("a".to_owned(), Err("x".to_owned())),
            ("b".to_owned(), Err("y".to_owned())),
        ]);
        assert_eq!(none, "a: unreachable\nb: unreachable\n");
    }

    #[test]
    fn a_worker_row_shows_every_column_and_dashes_for_what_is_unknown() {
        let workers: Vec<WorkerRow> = [
            worker_json(0, |_| {}),
            worker_json(1, |w| {
                for key in [
                    "accepted",
                    "cpu_user_secs",
                    "cpu_percent",
                    "rss_bytes",
                    "handling_p99_us",
                    "handoff_p50_us",
                    "last_report_age_secs",
                ] {
                    w.insert(key.into(), serde_json::Value::Null);
                }
            }),
        ]
        .into_iter()
        .map(|w| serde_json::from_value(w).expect("a valid row"))
        .collect();
        let text = workers_table(&workers);
        let rows: Vec<Vec<&str>> = text.lines().map(|l| l.split_whitespace().collect()).collect();
        assert_eq!(rows.len(), 3, "{text}");
        assert_eq!(rows[0][..4], ["id", "pid", "origin", "state"]);
        assert_eq!(rows[0].last(), Some(&"report_age"));
        assert_eq!(
            rows[1],
            [
                "0", "100", "spawned", "ready", "11", "19", "12", "3", "14", "15", "16", "17",
                "18", "1.750", "7.3", "2.0", "MiB", "20/99", "5/9", "0.5s"
            ]
        );
        assert_eq!(
            rows[2],
            [
                "1", "101", "spawned", "ready", "11", "-", "12", "3", "14", "15", "16", "17", "18",
                "-", "-", "-", "20/-", "-/9", "-"
            ]
        );
    }

    #[test]
    fn the_default_workers_table_fits_100_columns_and_wide_shows_every_column() {
        let workers: Vec<WorkerRow> = (0..4)
            .map(|i| {
                let row = worker_json(i, |w| {
                    w.insert("pid".into(), 4_194_000.into());
                    w.insert("dispatched".into(), 12_345_678.into());
                    w.insert("completed".into(), 12_345_000.into());
                    w.insert("accepted".into(), 98_765_432.into());
                    w.insert("kernel_load".into(), 12.into());
                    w.insert("kernel_slot".into(), 3.into());
                });
                serde_json::from_value(row).expect("a valid row")
            })
            .collect();
        let narrow = workers_table_for(&workers, false);
        let widest = narrow.lines().map(|l| l.chars().count()).max().unwrap_or(0);
        assert!(widest <= 100, "{widest} columns:\n{narrow}");
        assert!(narrow.lines().next().is_some_and(|h| h.ends_with("kernel_load")), "{narrow}");
        let wide = workers_table_for(&workers, true);
        assert!(wide.lines().next().is_some_and(|h| h.contains("handoff_p50/p99_us")), "{wide}");
        assert!(wide.lines().map(|l| l.chars().count()).max().unwrap_or(0) > 100);
    }

    #[test]
    fn sizes_are_mebibytes_with_one_decimal() {
        assert_eq!(mib(0), "0.0 MiB");
        assert_eq!(mib(3 * 1024 * 1024 + 512 * 1024), "3.5 MiB");
    }
}
