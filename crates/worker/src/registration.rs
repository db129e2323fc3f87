//! Joining a master: connect to `<run-dir>/workers.sock`, say `Hello` with
//! two fds attached — our own end of the channel (so the master can take
//! back what it queued to us if we die) and the memfd of our shared
//! counters — and wait (bounded) for `Welcome` or `Refused`. The worker's
//! signal handlers are installed before this, so a signal interrupts the
//! blocking calls here (`EINTR`: a socket with a receive timeout is not
//! restarted) and they are simply resumed, within the same deadline.

use std::io;
use std::os::fd::AsFd;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use handoff_fdpass::{Channel, Received, RecvError, SharedCounters};
use handoff_proto::{
    codec, ClientProtocol, Hello, MasterToWorker, Reporting, WorkerToMaster, PROTOCOL_VERSION,
};

/// How long the master has to answer `Hello`.
const WELCOME_TIMEOUT: Duration = Duration::from_secs(5);

/// A registered worker's channel (non-blocking) and what the master said.
#[derive(Debug)]
pub struct Registration {
    pub chan: Channel,
    /// Our running totals, which the master reads.
    pub counters: SharedCounters,
    pub worker_id: u32,
    pub reporting: Reporting,
    /// The most fds one of the master's packets carries.
    pub max_fds_per_packet: u32,
}

/// Registers with the master listening at `socket_path`.
pub fn register(
    socket_path: &Path,
    capacity: u32,
    protocol: ClientProtocol,
) -> Result<Registration> {
    let chan = Channel::connect(socket_path).map_err(|err| match err.kind() {
        io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => anyhow!(
            "no handoff-master is listening at {} ({err}); start one (`make master`) \
             or pass the master's --run-dir",
            socket_path.display()
        ),
        _ => anyhow!(err).context(format!("connecting to {}", socket_path.display())),
    })?;
    let hello = WorkerToMaster::Hello(Hello {
        protocol_version: PROTOCOL_VERSION,
        pid: std::process::id(),
        capacity,
        protocol,
    });
    let frame = codec::encode_to_vec(&hello).context("encoding Hello")?;
    let counters = SharedCounters::create().context("creating the shared counters")?;
    let deadline = Instant::now() + WELCOME_TIMEOUT;
    let sent = loop {
        match chan.send(&frame, &[chan.as_fd(), counters.fd()]) {
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            sent => break sent,
        }
    };
    let mut buf = vec![0u8; handoff_proto::MAX_FRAME_LEN];
    let mut fds = Vec::new();
    if let Err(err) = sent {
        // The master may have refused us before we spoke; its reason waits.
        if let Ok(Received::Packet(len)) = recv_until(&chan, &mut buf, &mut fds, deadline) {
            if let Ok(MasterToWorker::Refused { reason }) = codec::decode(&buf[..len]) {
                bail!("the master refused this worker: {reason}");
            }
        }
        return Err(err).context("sending Hello");
    }

    let len = match recv_until(&chan, &mut buf, &mut fds, deadline) {
        Ok(Received::Packet(len)) => len,
        Ok(Received::Closed) => bail!("the master closed the channel before answering Hello"),
        Err(err) if err.is_would_block() => {
            bail!("the master did not answer Hello within {WELCOME_TIMEOUT:?}")
        }
        Err(err) => return Err(err).context("waiting for Welcome"),
    };
    match codec::decode::<MasterToWorker>(&buf[..len]).context("decoding the master's answer")? {
        MasterToWorker::Welcome { worker_id, reporting, max_fds_per_packet } => {
            chan.set_nonblocking(true).context("making the channel non-blocking")?;
            Ok(Registration { chan, counters, worker_id, reporting, max_fds_per_packet })
        }
        MasterToWorker::Refused { reason } => bail!("the master refused this worker: {reason}"),
        other => bail!("expected Welcome, the master sent {other:?}"),
    }
}

/// Receives one packet, blocking until `deadline` at most (then a
/// `WouldBlock` error); a signal's `EINTR` resumes the wait.
fn recv_until(
    chan: &Channel,
    buf: &mut [u8],
    fds: &mut Vec<std::os::fd::OwnedFd>,
    deadline: Instant,
) -> Result<Received, RecvError> {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        // A zero timeout would mean "wait for ever".
        if left < Duration::from_millis(1) {
            return Err(RecvError::Io(io::ErrorKind::WouldBlock.into()));
        }
        chan.set_read_timeout(left)?;
        match chan.recv(buf, fds) {
            Err(RecvError::Io(err)) if err.kind() == io::ErrorKind::Interrupted => {}
            received => return received,
        }
    }
}
