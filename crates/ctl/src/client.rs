//! The control-socket client: one command line out, one JSON line back.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use handoff_proto::control::{ErrorReply, CONTROL_SOCKET_NAME};
use serde::de::DeserializeOwned;

/// How long the master has to answer one command.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

pub struct ControlClient {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl ControlClient {
    pub fn connect(run_dir: &Path) -> Result<ControlClient> {
        ControlClient::connect_with_timeout(run_dir, ANSWER_TIMEOUT)
    }

    /// Connects, giving the master `timeout` to take and answer each command.
    pub fn connect_with_timeout(run_dir: &Path, timeout: Duration) -> Result<ControlClient> {
        let path = run_dir.join(CONTROL_SOCKET_NAME);
        let stream = UnixStream::connect(&path).map_err(|err| {
            anyhow!(
                "no handoff-master answers at {} ({err}); is it running? \
                 pass its --run-dir if it uses another",
                path.display()
            )
        })?;
        stream.set_read_timeout(Some(timeout)).context("setting a read timeout")?;
        stream.set_write_timeout(Some(timeout)).context("setting a write timeout")?;
        let writer = stream.try_clone().context("cloning the control stream")?;
        Ok(ControlClient { reader: BufReader::new(stream), writer })
    }

    /// Sends `command` and returns the raw JSON line and its parsed form.
    pub fn ask<T: DeserializeOwned>(&mut self, command: &str) -> Result<(String, T)> {
        let sent = writeln!(self.writer, "{command}");
        let mut line = String::new();
        if let Err(err) = sent {
            // The master may have refused us (and closed) before we spoke:
            // its reason is still waiting to be read.
            if self.reader.read_line(&mut line).is_ok() {
                if let Ok(ErrorReply { error }) =
                    serde_json::from_str::<ErrorReply>(line.trim_end())
                {
                    bail!("the master says: {error}");
                }
            }
            return Err(err).context("sending the command");
        }
        let n = self.reader.read_line(&mut line).context("reading the answer")?;
        if n == 0 {
            bail!("the master closed the control connection");
        }
        let line = line.trim_end().to_owned();
        if let Ok(ErrorReply { error }) = serde_json::from_str::<ErrorReply>(&line) {
            bail!("the master says: {error}");
        }
        let parsed = serde_json::from_str(&line)
            .with_context(|| format!("unexpected answer to `{command}`: {line}"))?;
        Ok((line, parsed))
    }
}
