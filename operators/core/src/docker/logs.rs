//! Reading a container's log from the engine.

use futures::{Stream, StreamExt};

use super::{DockerClient, DockerError, api};

/// One line as the engine gave it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawLine {
    /// "stdout" or "stderr".
    pub stream: &'static str,
    /// When the engine received it.
    pub time: Option<prost_types::Timestamp>,
    pub text: String,
}

/// A frame of `docker logs --timestamps`: `<RFC 3339 time> <text>\n`.
fn parse(stream: &'static str, frame: &[u8]) -> RawLine {
    let text = String::from_utf8_lossy(frame);
    let text = text.strip_suffix('\n').unwrap_or(&text);
    let (time, rest) = match text.split_once(' ') {
        Some((t, rest)) => match t.parse::<prost_types::Timestamp>() {
            Ok(ts) => (Some(ts), rest),
            Err(_) => (None, text),
        },
        None => (None, text),
    };
    RawLine {
        stream,
        time,
        text: rest.to_owned(),
    }
}

impl DockerClient {
    /// The log of container `id`: from `since` (unix seconds; 0: the
    /// start), its last `tail` lines (0: all), then, when `follow`, what it
    /// writes until it stops or the stream is dropped. Read as it is
    /// polled: a caller that stops polling stops the engine's stream.
    pub fn logs(
        &self,
        id: &str,
        follow: bool,
        since: i64,
        tail: u32,
    ) -> impl Stream<Item = Result<RawLine, DockerError>> + Send + 'static {
        let opts = bollard::query_parameters::LogsOptions {
            follow,
            stdout: true,
            stderr: true,
            since: i32::try_from(since).unwrap_or(i32::MAX),
            timestamps: true,
            tail: if tail == 0 { "all".into() } else { tail.to_string() },
            ..Default::default()
        };
        let what = id.to_owned();
        self.inner.logs(id, Some(opts)).map(move |r| {
            r.map(|out| match out {
                bollard::container::LogOutput::StdErr { message } => parse("stderr", &message),
                bollard::container::LogOutput::StdOut { message }
                | bollard::container::LogOutput::Console { message }
                | bollard::container::LogOutput::StdIn { message } => parse("stdout", &message),
            })
            .map_err(|e| api("read the log of", what.clone())(e))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_splits_into_its_time_and_text() {
        let l = parse("stdout", b"2026-12-03T16:40:00.123456789Z hello world\n");
        assert_eq!(l.text, "hello world");
        let t = l.time.unwrap();
        assert_eq!(t.nanos, 123_456_789);
        let l = parse("stderr", b"no time here");
        assert_eq!((l.stream, l.time, l.text.as_str()), ("stderr", None, "no time here"));
    }
}
