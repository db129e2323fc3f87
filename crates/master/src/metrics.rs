//! Prometheus text exposition (format 0.0.4) of the `info` and `workers`
//! answers. Pure: it renders what it is given, so it is unit-tested and the
//! end-to-end tests parse its output.

use std::fmt::Write;

use handoff_proto::control::{InfoReply, WorkerRow};

/// Renders every metric family with its HELP and TYPE lines.
pub fn render(info: &InfoReply, workers: &[WorkerRow]) -> String {
    let mut out = Metrics { text: String::with_capacity(4096) };
    let m = &mut out;

    m.family("handoff_uptime_seconds", "gauge", "Seconds since the master started.");
    m.sample("handoff_uptime_seconds", &[], info.uptime_secs);
    m.family(
        "handoff_master_generation",
        "gauge",
        "1 for a master started by hand, one more than its predecessor's after an upgrade.",
    );
    m.sample("handoff_master_generation", &[], info.generation as f64);
    let totals: [(&str, &str, u64); 10] = [
        (
            "handoff_handoff_packets_total",
            "Hand-off packets (sendmsg calls) the master sent; more than one connection each with --batch.",
            info.handoff_packets,
        ),
        ("handoff_connections_accepted_total", "Connections the master accepted.", info.accepted),
        (
            "handoff_connections_worker_accepted_total",
            "Connections workers accepted themselves and finished (shared, reuseport).",
            info.worker_accepted,
        ),
        (
            "handoff_connections_dispatched_total",
            "Connections the master handed to a worker.",
            info.dispatched,
        ),
        (
            "handoff_connections_redispatched_total",
            "Connections a dead worker had not touched, handed to another worker.",
            info.redispatched,
        ),
        ("handoff_accept_errors_total", "accept() calls that failed.", info.accept_errors),
        (
            "handoff_accept_pauses_total",
            "accept() failures for lack of fds or memory, after which the master paused accepting.",
            info.accept_paused_for_resources,
        ),
        ("handoff_worker_deaths_total", "Spawned workers that exited unasked.", info.worker_deaths),
        ("handoff_worker_respawns_total", "Workers spawned to replace dead ones.", info.respawns),
        (
            "handoff_worker_timeouts_total",
            "Workers killed for not reporting within --timeout.",
            info.worker_timeouts,
        ),
    ];
    for (name, help, value) in totals {
        m.family(name, "counter", help);
        m.sample(name, &[], value as f64);
    }
    m.family(
        "handoff_connections_completed_total",
        "counter",
        "Connections workers reported finished, by outcome.",
    );
    for (outcome, value) in [
        ("served", info.served),
        ("reset", info.resets),
        ("failed", info.failed),
        ("timeout", info.timeouts),
        ("health_check", info.health_checks),
    ] {
        m.sample("handoff_connections_completed_total", &[("outcome", outcome)], value as f64);
    }
    let lost = "handoff_connections_lost_total";
    m.family(lost, "counter", "Connections closed without an answer, by reason.");
    m.sample(lost, &[("reason", "worker_died")], info.lost_worker_died as f64);
    m.sample(lost, &[("reason", "shutdown")], info.lost_at_shutdown as f64);
    let gauges: [(&str, &str, f64); 7] = [
        (
            "handoff_connections_queued",
            "Accepted connections waiting in the master for a worker.",
            info.queued as f64,
        ),
        (
            "handoff_connections_in_flight",
            "Connections handed to workers and not yet finished.",
            info.in_flight as f64,
        ),
        ("handoff_workers", "Registered workers.", info.workers as f64),
        (
            "handoff_workers_target",
            "Spawned workers the master keeps running.",
            info.target_workers as f64,
        ),
        (
            "handoff_crash_loop",
            "1 while workers die so fast that respawns are backed off.",
            f64::from(u8::from(info.crash_loop)),
        ),
        (
            "handoff_balancer_draining",
            "1 while the load balancer is told to drain (`drain`, or a stop's --drain-secs).",
            f64::from(u8::from(info.balancer == "drain" || info.balancer == "stopping")),
        ),
        ("handoff_master_resident_memory_bytes", "Master resident memory.", info.rss_bytes as f64),
    ];
    for (name, help, value) in gauges {
        m.family(name, "gauge", help);
        m.sample(name, &[], value);
    }
    m.family("handoff_master_cpu_seconds_total", "counter", "Master CPU time, by mode.");
    m.sample("handoff_master_cpu_seconds_total", &[("mode", "user")], info.cpu_user_secs);
    m.sample("handoff_master_cpu_seconds_total", &[("mode", "system")], info.cpu_sys_secs);
    // Reuseport with the kernel balancer only.
    let kernel = "handoff_kernel_balancer_connections_total";
    if let (Some(selected), Some(migrated), Some(fallbacks)) =
        (info.kernel_selected, info.kernel_migrated, info.kernel_fallbacks)
    {
        m.family(
            kernel,
            "counter",
            "Connections the reuseport eBPF program handled: placed on a worker (migrated: \
             moved off a closing listener, counted in placed too) or left to the kernel's hash.",
        );
        m.sample(kernel, &[("what", "placed")], selected as f64);
        m.sample(kernel, &[("what", "migrated")], migrated as f64);
        m.sample(kernel, &[("what", "hashed")], fallbacks as f64);
    }

    render_workers(m, workers);
    out.text
}

/// A per-worker metric family: name, help, and how to read it off a row.
type Family<T> = (&'static str, &'static str, fn(&WorkerRow) -> T);

fn render_workers(m: &mut Metrics, workers: &[WorkerRow]) {
    let ids: Vec<String> = workers.iter().map(|w| w.id.to_string()).collect();
    let per_worker_counters: [Family<u64>; 3] = [
        (
            "handoff_worker_connections_dispatched_total",
            "Connections handed to this worker.",
            |w| w.dispatched,
        ),
        ("handoff_worker_received_bytes_total", "Request bytes this worker read.", |w| w.bytes_in),
        ("handoff_worker_sent_bytes_total", "Reply bytes this worker wrote.", |w| w.bytes_out),
    ];
    for (name, help, get) in per_worker_counters {
        m.family(name, "counter", help);
        for (worker, id) in workers.iter().zip(&ids) {
            m.sample(name, &[("worker", id)], get(worker) as f64);
        }
    }
    let completed = "handoff_worker_connections_completed_total";
    m.family(completed, "counter", "Connections this worker finished, by outcome.");
    for (worker, id) in workers.iter().zip(&ids) {
        for (outcome, value) in [
            ("served", worker.served),
            ("reset", worker.resets),
            ("failed", worker.failed),
            ("timeout", worker.timeouts),
        ] {
            m.sample(completed, &[("worker", id), ("outcome", outcome)], value as f64);
        }
    }
    let in_flight = "handoff_worker_connections_in_flight";
    m.family(in_flight, "gauge", "Connections handed to this worker and not yet finished.");
    for (worker, id) in workers.iter().zip(&ids) {
        m.sample(in_flight, &[("worker", id)], worker.in_flight as f64);
    }
    let kernel_load = "handoff_worker_kernel_load";
    if workers.iter().any(|w| w.kernel_load.is_some()) {
        m.family(
            kernel_load,
            "gauge",
            "The worker's load as the reuseport eBPF program sees it (given, queued included, \
             and not yet finished).",
        );
        for (worker, id) in workers.iter().zip(&ids) {
            if let Some(load) = worker.kernel_load {
                m.sample(kernel_load, &[("worker", id)], load as f64);
            }
        }
    }
    let info = "handoff_worker_info";
    m.family(info, "gauge", "Constant 1, labelled with the worker's pid, origin and state.");
    for (worker, id) in workers.iter().zip(&ids) {
        let pid = worker.pid.to_string();
        let labels = [
            ("worker", id.as_str()),
            ("pid", &pid),
            ("origin", &worker.origin),
            ("state", &worker.state),
        ];
        m.sample(info, &labels, 1.0);
    }

    // From the workers' own reports: absent until the first one arrives.
    let cpu = "handoff_worker_cpu_seconds_total";
    m.family(cpu, "counter", "Worker CPU time, by mode.");
    for (worker, id) in workers.iter().zip(&ids) {
        if let (Some(user), Some(sys)) = (worker.cpu_user_secs, worker.cpu_sys_secs) {
            m.sample(cpu, &[("worker", id), ("mode", "user")], user);
            m.sample(cpu, &[("worker", id), ("mode", "system")], sys);
        }
    }
    let optional_gauges: [Family<Option<f64>>; 2] = [
        ("handoff_worker_resident_memory_bytes", "Worker resident memory.", |w| {
            w.rss_bytes.map(|b| b as f64)
        }),
        (
            "handoff_worker_last_report_age_seconds",
            "Seconds since the worker's last stats report.",
            |w| w.last_report_age_secs,
        ),
    ];
    for (name, help, get) in optional_gauges {
        m.family(name, "gauge", help);
        for (worker, id) in workers.iter().zip(&ids) {
            if let Some(value) = get(worker) {
                m.sample(name, &[("worker", id)], value);
            }
        }
    }
    let quantiles: [Family<[Option<u64>; 2]>; 2] = [
        (
            "handoff_worker_handling_seconds",
            "Time from receiving a connection to closing it, by quantile, over the worker's life.",
            |w| [w.handling_p50_us, w.handling_p99_us],
        ),
        (
            "handoff_worker_handoff_latency_seconds",
            "Time from the master's accept to the worker receiving the connection, by quantile.",
            |w| [w.handoff_p50_us, w.handoff_p99_us],
        ),
    ];
    for (name, help, get) in quantiles {
        m.family(name, "gauge", help);
        for (worker, id) in workers.iter().zip(&ids) {
            for (quantile, micros) in ["0.5", "0.99"].into_iter().zip(get(worker)) {
                if let Some(micros) = micros {
                    m.sample(name, &[("worker", id), ("quantile", quantile)], micros as f64 / 1e6);
                }
            }
        }
    }
}

struct Metrics {
    text: String,
}

impl Metrics {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.text, "# HELP {name} {}", escape_help(help));
        let _ = writeln!(self.text, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.text.push_str(name);
        if !labels.is_empty() {
            self.text.push('{');
            for (i, (key, value)) in labels.iter().enumerate() {
                if i > 0 {
                    self.text.push(',');
                }
                let _ = write!(self.text, "{key}=\"{}\"", escape_label(value));
            }
            self.text.push('}');
        }
        let _ = writeln!(self.text, " {value}");
    }
}

fn escape_help(text: &str) -> String {
    text.replace('\\', "\\\\").replace('\n', "\\n")
}

fn escape_label(text: &str) -> String {
    text.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info() -> InfoReply {
        InfoReply {
            version: "0.1.0".into(),
            pid: 1,
            started_at_unix: 1.0,
            generation: 1,
            upgrade: "none".into(),
            upgrade_error: None,
            listen: "127.0.0.1:6001".into(),
            run_dir: "/tmp/x".into(),
            state: "running".into(),
            uptime_secs: 1.5,
            mode: "dispatch".into(),
            salvage: "queued".into(),
            accepted: 10,
            worker_accepted: 0,
            dispatched: 9,
            handoff_packets: 9,
            queued: 1,
            in_flight: 2,
            completed: 7,
            served: 6,
            resets: 1,
            failed: 0,
            timeouts: 0,
            health_checks: 0,
            lost: 0,
            lost_worker_died: 0,
            lost_at_shutdown: 0,
            redispatched: 0,
            served_by_dead_workers: 0,
            accept_errors: 0,
            accept_paused_for_resources: 0,
            workers: 1,
            target_workers: 1,
            worker_deaths: 0,
            respawns: 0,
            worker_timeouts: 0,
            crash_loop: false,
            cpu_user_secs: 0.25,
            cpu_sys_secs: 0.5,
            cpu_us_per_dispatched: Some(83.3),
            rss_bytes: 4096,
            agent_check: None,
            agent_reply: "ready up 100%".into(),
            balancer: "drain".into(),
            stopping_in_secs: None,
            reuseport_selection: None,
            kernel_selected: None,
            kernel_migrated: None,
            kernel_fallbacks: None,
        }
    }

    fn worker() -> WorkerRow {
        WorkerRow {
            id: 1,
            pid: 42,
            origin: "spawned".into(),
            state: "ready".into(),
            dispatched: 9,
            completed: 7,
            in_flight: 2,
            capacity: 0,
            served: 6,
            resets: 1,
            failed: 0,
            timeouts: 0,
            health_checks: 0,
            bytes_in: 30,
            bytes_out: 150,
            cpu_user_secs: Some(0.1),
            cpu_sys_secs: Some(0.2),
            cpu_percent: Some(3.0),
            rss_bytes: Some(8192),
            handling_p50_us: Some(20),
            handling_p99_us: Some(90),
            handoff_p50_us: Some(15),
            handoff_p99_us: None,
            last_report_age_secs: Some(0.3),
            accepted: None,
            kernel_load: None,
            kernel_slot: None,
        }
    }

    #[test]
    fn every_family_has_help_and_type_and_samples_carry_labels() {
        let text = render(&info(), &[worker()]);
        assert!(text.contains("# TYPE handoff_connections_accepted_total counter\n"));
        assert!(text.contains("handoff_connections_accepted_total 10\n"));
        assert!(text.contains("handoff_balancer_draining 1\n"), "the sample info drains");
        assert!(text.contains("handoff_connections_completed_total{outcome=\"reset\"} 1\n"));
        assert!(
            text.contains("handoff_worker_cpu_seconds_total{worker=\"1\",mode=\"system\"} 0.2\n")
        );
        assert!(text
            .contains("handoff_worker_handling_seconds{worker=\"1\",quantile=\"0.99\"} 0.00009\n"));
        assert!(!text
            .contains("handoff_worker_handoff_latency_seconds{worker=\"1\",quantile=\"0.99\"}"));
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let name = line.split(['{', ' ']).next().unwrap_or("");
            assert!(text.contains(&format!("# TYPE {name} ")), "no TYPE for {name}");
        }
    }

    #[test]
    fn the_balancer_drains_while_told_to_drain_or_stopping() {
        for (balancer, draining) in [("drain", 1), ("stopping", 1), ("ready", 0), ("down", 0)] {
            let mut info = info();
            info.balancer = balancer.into();
            let text = render(&info, &[]);
            assert!(
                text.contains(&format!("\nhandoff_balancer_draining {draining}\n")),
                "{balancer}"
            );
        }
    }

    #[test]
    fn label_values_are_escaped() {
        let mut odd = worker();
        odd.origin = "a\"b\\c\nd".into();
        let text = render(&info(), &[odd]);
        assert!(text.contains(r#"origin="a\"b\\c\nd""#), "{text}");
    }

    #[test]
    fn help_and_label_text_are_escaped_as_the_exposition_format_says() {
        assert_eq!(escape_help("a\\b\nc \"q\""), "a\\\\b\\nc \"q\"");
        assert_eq!(escape_label("a\\b\nc \"q\""), "a\\\\b\\nc \\\"q\\\"");
        assert_eq!(escape_help("plain"), "plain");
    }
}
