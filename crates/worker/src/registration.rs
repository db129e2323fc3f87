//! Joining a master: connect to `<run-dir>/workers.sock`, say `Hello` with
//! two fds attached — our own end of the channel (so the master can take
//! back what it queued to us if we die) and the memfd of our shared
//! counters — and wait (bounded) for `Welcome` or `Refused`.

use std::io;
use std::os::fd::AsFd;
use std::path::Path;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use handoff_fdpass::{Channel, Received, SharedCounters};
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
    let sent = chan.send(&frame, &[chan.as_fd(), counters.fd()]);
    chan.set_read_timeout(WELCOME_TIMEOUT).context("setting the Welcome timeout")?;
    let mut buf = vec![0u8; handoff_proto::MAX_FRAME_LEN];
    let mut fds = Vec::new();
    if let Err(err) = sent {
        // The master may have refused us before we spoke; its reason waits.
        if let Ok(Received::Packet(len)) = chan.recv(&mut buf, &mut fds) {
            if let Ok(MasterToWorker::Refused { reason }) = codec::decode(&buf[..len]) {
                bail!("the master refused this worker: {reason}");
            }
        }
        return Err(err).context("sending Hello");
    }

    let len = match chan.recv(&mut buf, &mut fds) {
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
