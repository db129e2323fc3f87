//! Sample control-socket answers for tests: the unit tests of `render` and
//! `top`, and (through `#[path]`) the fake master of `tests/`.

use serde_json::Value;

/// An `info` answer with every field set to something distinct; `edit`
/// changes what a test needs.
pub fn info_json(edit: impl FnOnce(&mut serde_json::Map<String, Value>)) -> Value {
    let mut info: Value = serde_json::from_str(
        r#"{
        "version": "9.9.9",
        "pid": 42,
        "started_at_unix": 1000.0,
        "generation": 1,
        "upgrade": "none",
        "upgrade_error": null,
        "listen": "127.0.0.1:8080",
        "run_dir": "/run/handoff",
        "state": "running",
        "uptime_secs": 12.34,
        "mode": "handoff",
        "salvage": "queued",
        "accepted": 1001,
        "worker_accepted": 1002,
        "dispatched": 1003,
        "handoff_packets": 1004,
        "queued": 1005,
        "in_flight": 1006,
        "completed": 1007,
        "served": 1008,
        "resets": 1009,
        "failed": 1010,
        "timeouts": 1011,
        "lost": 1012,
        "lost_worker_died": 1013,
        "lost_at_shutdown": 1014,
        "redispatched": 1015,
        "served_by_dead_workers": 1016,
        "accept_errors": 1017,
        "accept_paused_for_resources": 1018,
        "workers": 4,
        "target_workers": 5,
        "worker_deaths": 1019,
        "respawns": 1020,
        "worker_timeouts": 1021,
        "crash_loop": false,
        "cpu_user_secs": 1.5,
        "cpu_sys_secs": 0.25,
        "cpu_us_per_dispatched": 2.5,
        "rss_bytes": 3670016,
        "agent_check": null,
        "agent_reply": "up 100%",
        "balancer": "in rotation",
        "stopping_in_secs": null
    }"#,
    )
    .expect("valid JSON"); // ok: a constant sample, test-only
    edit(info.as_object_mut().expect("an object")); // ok: test-only
    info
}

/// A `workers` row with every field set; `edit` changes what a test needs.
pub fn worker_json(id: u32, edit: impl FnOnce(&mut serde_json::Map<String, Value>)) -> Value {
    let mut row: Value = serde_json::from_str(
        r#"{
        "id": 0,
        "pid": 100,
        "origin": "spawned",
        "state": "ready",
        "dispatched": 11,
        "completed": 12,
        "in_flight": 3,
        "capacity": 64,
        "served": 13,
        "resets": 14,
        "failed": 15,
        "timeouts": 16,
        "bytes_in": 17,
        "bytes_out": 18,
        "cpu_user_secs": 1.25,
        "cpu_sys_secs": 0.5,
        "cpu_percent": 7.3,
        "rss_bytes": 2097152,
        "handling_p50_us": 20,
        "handling_p99_us": 99,
        "handoff_p50_us": 5,
        "handoff_p99_us": 9,
        "last_report_age_secs": 0.5,
        "accepted": 19
    }"#,
    )
    .expect("valid JSON"); // ok: a constant sample, test-only
    let fields = row.as_object_mut().expect("an object"); // ok: test-only
    fields.insert("id".into(), id.into());
    fields.insert("pid".into(), (100 + id).into());
    edit(fields);
    row
}
