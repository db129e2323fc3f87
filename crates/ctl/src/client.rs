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

#[cfg(test)]
mod tests {
    use std::os::unix::net::UnixListener;
    use std::path::PathBuf;

    use handoff_proto::control::OkReply;

    use super::*;

    /// A fresh directory for one test's control socket.
    struct Dir(PathBuf);

    impl Dir {
        fn new(name: &str) -> Dir {
            let dir = std::env::temp_dir()
                .join(format!("handoff-ctl-client-{}-{name}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).expect("temp dir");
            Dir(dir)
        }

        fn listen(&self) -> UnixListener {
            UnixListener::bind(self.0.join(CONTROL_SOCKET_NAME)).expect("bind control.sock")
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// Connects a client, then gives the master's end of it to `master`
    /// before the client says anything.
    fn ask_after(
        name: &str,
        master: impl FnOnce(UnixStream) + Send + 'static,
        command: &str,
    ) -> Result<(String, OkReply)> {
        let dir = Dir::new(name);
        let listener = dir.listen();
        let mut client =
            ControlClient::connect_with_timeout(&dir.0, Duration::from_secs(5)).expect("connect");
        let (stream, _) = listener.accept().expect("accept");
        let serving = std::thread::spawn(move || master(stream));
        let answer = client.ask::<OkReply>(command);
        serving.join().expect("the fake master");
        answer
    }

    fn answer_with(line: &'static str) -> impl FnOnce(UnixStream) + Send + 'static {
        move |stream| {
            let mut reader = BufReader::new(stream.try_clone().expect("clone"));
            let mut command = String::new();
            reader.read_line(&mut command).expect("read the command");
            assert_eq!(command, "ping\n");
            (&stream).write_all(line.as_bytes()).expect("answer");
        }
    }

    #[test]
    fn an_answer_comes_back_raw_and_parsed() {
        let (raw, ok) =
            ask_after("answer", answer_with("{\"ok\":\"pong\"}\n"), "ping").expect("answer");
        assert_eq!(raw, "{\"ok\":\"pong\"}");
        assert_eq!(ok.ok, "pong");
    }

    #[test]
    fn an_error_answer_or_a_close_or_junk_is_an_error() {
        let err = ask_after("error", answer_with("{\"error\":\"no such command\"}\n"), "ping")
            .expect_err("an error answer");
        assert_eq!(format!("{err:#}"), "the master says: no such command");
        let err = ask_after("closed", answer_with(""), "ping").expect_err("closed");
        assert_eq!(format!("{err:#}"), "the master closed the control connection");
        let err = ask_after("junk", answer_with("{\"nope\":1}\n"), "ping").expect_err("junk");
        assert!(
            format!("{err:#}").starts_with("unexpected answer to `ping`: {\"nope\":1}"),
            "{err:#}"
        );
    }

    #[test]
    fn a_refusal_sent_before_the_command_is_reported() {
        // The master refuses (too many clients, say) and closes before the
        // client writes: the write fails, the reason is still readable.
        let refused = |name: &str, line: &str| {
            let dir = Dir::new(name);
            let listener = dir.listen();
            let mut client = ControlClient::connect(&dir.0).expect("connect");
            let (mut stream, _) = listener.accept().expect("accept");
            stream.write_all(line.as_bytes()).expect("refuse");
            drop(stream);
            client.ask::<OkReply>("ping").expect_err("refused")
        };
        let err = refused("refused", "{\"error\":\"too many clients\"}\n");
        assert_eq!(format!("{err:#}"), "the master says: too many clients");
        let err = refused("gone", "");
        assert!(format!("{err:#}").starts_with("sending the command: "), "{err:#}");
    }

    #[test]
    fn no_master_is_named_with_the_path() {
        let dir = Dir::new("none");
        let err = ControlClient::connect(&dir.0).err().expect("nothing listens");
        let path = dir.0.join(CONTROL_SOCKET_NAME);
        assert!(
            format!("{err:#}")
                .starts_with(&format!("no handoff-master answers at {}", path.display())),
            "{err:#}"
        );
    }

    #[test]
    fn a_silent_master_times_out() {
        let dir = Dir::new("silent");
        let listener = dir.listen();
        let mut client = ControlClient::connect_with_timeout(&dir.0, Duration::from_millis(100))
            .expect("connect");
        let _held = listener.accept().expect("accept");
        let started = std::time::Instant::now();
        let err = client.ask::<OkReply>("ping").expect_err("no answer");
        assert!(format!("{err:#}").starts_with("reading the answer"), "{err:#}");
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}
