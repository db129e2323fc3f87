//! One event-loop thread: a fixed set of connection slots on a mio `Poll`.
//!
//! Each slot runs one request at a time and starts the next as soon as the
//! previous ends: non-blocking connect, write the request at once (on
//! loopback the handshake is done by the time `connect` returns; if not, wait
//! for writable), register for readable only, read and check to EOF, close.
//! That is `socket, connect, write, epoll_ctl, read(s), close` per request,
//! plus a share of `epoll_wait`. Nothing is allocated per request: slots,
//! the read buffer and the histogram are sized up front.

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::SyncSender;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};

use crate::check::{Checker, Expect, Verdict};
use crate::stats::{ErrorKind, Stats};

/// What every thread shares.
#[derive(Debug)]
pub struct Plan {
    pub addr: SocketAddr,
    pub request: Box<[u8]>,
    pub expect: Expect,
    pub timeout: Duration,
    /// How long to wait for in-flight connections after the window.
    pub drain: Duration,
    /// Completions before this are warm-up.
    pub warmup_end: Instant,
    /// No completion at or after this is counted, and no connection starts.
    pub window_end: Instant,
    /// With `--requests`: completions left to count.
    pub budget: Option<AtomicU64>,
    /// With `--requests`: connections left to start after the warm-up, so a
    /// run with `-c N -n N` makes exactly N connections (the burst test).
    pub to_start: Option<AtomicU64>,
    /// Set by the main thread when the window has ended early.
    pub stop: AtomicBool,
}

/// What one thread reports.
#[derive(Debug)]
pub struct ThreadResult {
    pub stats: Stats,
    pub warmup_done: u64,
    pub abandoned: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Idle,
    /// Request not fully written yet (waiting for writable).
    Sending,
    /// Request written; reading the reply.
    Reading,
}

struct Slot {
    stream: Option<TcpStream>,
    state: State,
    started: Instant,
    sent: usize,
    /// The stream is registered with the poll.
    registered: bool,
    checker: Checker,
}

/// How often slots are scanned for timeouts, at most.
const SCAN_INTERVAL: Duration = Duration::from_millis(50);
/// Poll wake-up when some slot failed to connect and waits to retry.
const RETRY_DELAY: Duration = Duration::from_millis(1);

/// Runs `n_slots` connections until the window ends, then drains.
/// `done` gets the instant the request budget ran out, if it does.
pub fn run(plan: &Plan, n_slots: usize, done: SyncSender<Instant>) -> Result<ThreadResult> {
    let mut looper = Looper::new(plan, n_slots, done)?;
    looper.run()?;
    Ok(ThreadResult {
        stats: looper.stats,
        warmup_done: looper.warmup_done,
        abandoned: looper.abandoned,
    })
}

struct Looper<'a> {
    plan: &'a Plan,
    poll: Poll,
    slots: Vec<Slot>,
    /// Slots to (re)start once the loop turn is over.
    idle: Vec<usize>,
    /// The slots [`Looper::start_idle`] is starting (kept to reuse its buffer).
    batch: Vec<usize>,
    active: usize,
    buf: Box<[u8]>,
    stats: Stats,
    warmup_done: u64,
    abandoned: u64,
    done: SyncSender<Instant>,
}

impl<'a> Looper<'a> {
    fn new(plan: &'a Plan, n_slots: usize, done: SyncSender<Instant>) -> Result<Looper<'a>> {
        let now = Instant::now();
        let slots = (0..n_slots)
            .map(|_| Slot {
                stream: None,
                state: State::Idle,
                started: now,
                sent: 0,
                registered: false,
                checker: Checker::new(&plan.expect),
            })
            .collect();
        Ok(Looper {
            plan,
            poll: Poll::new().context("creating the poll instance")?,
            slots,
            idle: (0..n_slots).collect(),
            batch: Vec::with_capacity(n_slots),
            active: 0,
            buf: vec![0u8; 16 * 1024].into_boxed_slice(),
            stats: Stats::new()?,
            warmup_done: 0,
            abandoned: 0,
            done,
        })
    }

    fn running(&self, now: Instant) -> bool {
        now < self.plan.window_end
            && !self.plan.stop.load(Ordering::Relaxed)
            && self.plan.budget.as_ref().is_none_or(|b| b.load(Ordering::Relaxed) > 0)
    }

    fn run(&mut self) -> Result<()> {
        let mut events = Events::with_capacity(self.slots.len().max(64));
        let mut next_scan = Instant::now() + SCAN_INTERVAL;
        let mut drain_deadline: Option<Instant> = None;
        let mut retry_pending;
        loop {
            let now = Instant::now();
            let wake = if self.running(now) {
                retry_pending = self.start_idle();
                next_scan.min(self.plan.window_end)
            } else {
                let deadline = *drain_deadline.get_or_insert(now + self.plan.drain);
                if self.active == 0 {
                    return Ok(());
                }
                if now >= deadline {
                    self.abandon_all();
                    return Ok(());
                }
                retry_pending = false;
                next_scan.min(deadline)
            };
            let now = Instant::now();
            let mut timeout = wake.saturating_duration_since(now);
            if retry_pending {
                timeout = timeout.min(RETRY_DELAY);
            }
            if let Err(err) = self.poll.poll(&mut events, Some(timeout)) {
                if err.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(err).context("polling");
            }
            for event in events.iter() {
                let i = event.token().0;
                let Some(slot) = self.slots.get(i) else { continue };
                match slot.state {
                    State::Idle => {}
                    State::Sending => self.send(i),
                    State::Reading => self.receive(i, event.is_read_closed()),
                }
            }
            let now = Instant::now();
            if now >= next_scan {
                next_scan = now + SCAN_INTERVAL;
                self.expire(now, drain_deadline.is_some());
            }
        }
    }

    /// Starts the slots that are idle now, once each; true if some ended at
    /// once (refused, ...) and should be retried after a short wait rather
    /// than in a tight loop.
    fn start_idle(&mut self) -> bool {
        std::mem::swap(&mut self.idle, &mut self.batch);
        for k in 0..self.batch.len() {
            let i = self.batch[k];
            self.start(i);
        }
        self.batch.clear();
        !self.idle.is_empty()
    }

    /// Connects slot `i` and sends its request; with `--requests`, only while
    /// some are left to start (else the slot stays dormant).
    fn start(&mut self, i: usize) {
        let now = Instant::now();
        if let Some(to_start) = &self.plan.to_start {
            if now >= self.plan.warmup_end
                && to_start
                    .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
                    .is_err()
            {
                return;
            }
        }
        let slot = &mut self.slots[i];
        slot.started = now;
        slot.sent = 0;
        slot.registered = false;
        slot.checker.reset();
        match TcpStream::connect(self.plan.addr) {
            Ok(stream) => {
                slot.stream = Some(stream);
                slot.state = State::Sending;
                self.active += 1;
                self.send(i);
            }
            Err(err) => {
                let kind = classify(&err);
                self.count(i, Err(kind));
                self.idle.push(i);
            }
        }
    }

    /// Writes what is left of the request; then waits for the reply.
    fn send(&mut self, i: usize) {
        let plan = self.plan;
        let slot = &mut self.slots[i];
        let Some(stream) = slot.stream.as_mut() else { return };
        let request = &plan.request[..];
        loop {
            if slot.sent == request.len() {
                break;
            }
            match stream.write(&request[slot.sent..]) {
                Ok(0) => return self.end(i, Err(ErrorKind::Other)),
                Ok(n) => slot.sent += n,
                Err(err) if is_not_yet(&err) => {
                    return self.watch(i, Interest::READABLE | Interest::WRITABLE);
                }
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => {
                    let kind = classify_stream_error(stream, &err);
                    return self.end(i, Err(kind));
                }
            }
        }
        slot.state = State::Reading;
        self.watch(i, Interest::READABLE);
    }

    /// Registers slot `i`'s stream (first time) or changes its interest.
    fn watch(&mut self, i: usize, interest: Interest) {
        let slot = &mut self.slots[i];
        let Some(stream) = slot.stream.as_mut() else { return };
        let registry = self.poll.registry();
        let result = if slot.registered {
            registry.reregister(stream, Token(i), interest)
        } else {
            slot.registered = true;
            registry.register(stream, Token(i), interest)
        };
        if result.is_err() {
            self.end(i, Err(ErrorKind::Other));
        }
    }

    /// Reads and checks what arrived; ends the request at EOF or on error.
    fn receive(&mut self, i: usize, read_closed: bool) {
        let slot = &mut self.slots[i];
        let Some(stream) = slot.stream.as_mut() else { return };
        loop {
            match stream.read(&mut self.buf) {
                Ok(0) => {
                    let verdict = slot.checker.finish(&self.plan.expect);
                    return self.end(i, verdict_result(verdict));
                }
                Ok(n) => {
                    if !slot.checker.feed(&self.plan.expect, &self.buf[..n]) {
                        return self.end(i, Err(ErrorKind::WrongReply));
                    }
                    // The peer's FIN was already in when epoll reported this
                    // event, and a short read means the queue is now empty:
                    // this is EOF without another read.
                    if read_closed && n < self.buf.len() {
                        let verdict = slot.checker.finish(&self.plan.expect);
                        return self.end(i, verdict_result(verdict));
                    }
                }
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => return,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => {
                    let kind = classify_stream_error(stream, &err);
                    return self.end(i, Err(kind));
                }
            }
        }
    }

    /// Closes slot `i`, counts the outcome and queues the slot to restart.
    fn end(&mut self, i: usize, outcome: Result<(), ErrorKind>) {
        let slot = &mut self.slots[i];
        // Closing the fd also removes it from epoll.
        if slot.stream.take().is_some() {
            self.active -= 1;
        }
        slot.state = State::Idle;
        self.count(i, outcome);
        self.idle.push(i);
    }

    /// Counts one completed request of slot `i`, by when it completed.
    fn count(&mut self, i: usize, outcome: Result<(), ErrorKind>) {
        let now = Instant::now();
        if now < self.plan.warmup_end {
            self.warmup_done += 1;
            return;
        }
        if now >= self.plan.window_end || self.plan.stop.load(Ordering::Relaxed) {
            return;
        }
        if let Some(budget) = &self.plan.budget {
            match budget.fetch_update(Ordering::AcqRel, Ordering::Acquire, |b| b.checked_sub(1)) {
                Ok(1) => {
                    let _ = self.done.try_send(now);
                }
                Ok(_) => {}
                Err(_) => return,
            }
        }
        match outcome {
            Ok(()) => {
                let latency = now.saturating_duration_since(self.slots[i].started);
                self.stats.record_ok(u64::try_from(latency.as_micros()).unwrap_or(u64::MAX));
            }
            Err(kind) => self.stats.record_error(kind),
        }
    }

    /// Ends requests that have run past the timeout; while draining they
    /// count as abandoned, not as timeouts in the (closed) window.
    fn expire(&mut self, now: Instant, draining: bool) {
        for i in 0..self.slots.len() {
            let slot = &mut self.slots[i];
            if slot.state == State::Idle
                || now.saturating_duration_since(slot.started) < self.plan.timeout
            {
                continue;
            }
            if draining {
                if slot.stream.take().is_some() {
                    self.active -= 1;
                    self.abandoned += 1;
                }
                slot.state = State::Idle;
            } else {
                self.end(i, Err(ErrorKind::Timeout));
            }
        }
    }

    /// Closes whatever is still open at the end of the drain.
    fn abandon_all(&mut self) {
        for slot in &mut self.slots {
            if slot.stream.take().is_some() {
                self.abandoned += 1;
                self.active -= 1;
            }
            slot.state = State::Idle;
        }
    }
}

fn verdict_result(verdict: Verdict) -> Result<(), ErrorKind> {
    match verdict {
        Verdict::Ok => Ok(()),
        Verdict::Short => Err(ErrorKind::ShortReply),
        Verdict::Wrong => Err(ErrorKind::WrongReply),
    }
}

/// The connection is not established yet: wait for writable.
fn is_not_yet(err: &io::Error) -> bool {
    matches!(err.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::NotConnected)
}

/// Maps a socket error to the kind it is counted as.
pub fn classify(err: &io::Error) -> ErrorKind {
    match err.kind() {
        io::ErrorKind::ConnectionRefused => ErrorKind::Refused,
        io::ErrorKind::ConnectionReset
        | io::ErrorKind::ConnectionAborted
        | io::ErrorKind::BrokenPipe => ErrorKind::Reset,
        io::ErrorKind::TimedOut => ErrorKind::Timeout,
        _ => ErrorKind::Other,
    }
}

/// A write or read error; `SO_ERROR` says why a connect failed (EPIPE after
/// a refused connect is a refusal, not a reset).
fn classify_stream_error(stream: &TcpStream, err: &io::Error) -> ErrorKind {
    match stream.take_error() {
        Ok(Some(pending)) => classify(&pending),
        _ => classify(err),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_classified_by_kind() {
        let e = |kind| io::Error::from(kind);
        assert_eq!(classify(&e(io::ErrorKind::ConnectionRefused)), ErrorKind::Refused);
        assert_eq!(classify(&e(io::ErrorKind::ConnectionReset)), ErrorKind::Reset);
        assert_eq!(classify(&e(io::ErrorKind::BrokenPipe)), ErrorKind::Reset);
        assert_eq!(classify(&e(io::ErrorKind::TimedOut)), ErrorKind::Timeout);
        assert_eq!(classify(&io::Error::from_raw_os_error(99)), ErrorKind::Other);
    }
}
