//! A tiny RESP2 client: the commands the hook and the member status send
//! (`AUTH`, `INFO`, `CLUSTER ...`, `FAILOVER`, `REPLICAOF`, `CONFIG
//! REWRITE`), each bounded by [`CALL`].

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::{HookError, Secret};

/// How long one command may take.
pub const CALL: Duration = Duration::from_secs(3);

/// One RESP2 reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// `+OK`
    Simple(String),
    /// `-ERR ...`
    Error(String),
    /// `:1`
    Int(i64),
    /// `$n` and its bytes; `None` for `$-1`.
    Bulk(Option<Vec<u8>>),
    /// `*n` and its elements; `None` for `*-1`.
    Array(Option<Vec<Reply>>),
}

impl Reply {
    /// The reply as text (a simple or bulk string), or why it is not.
    pub fn text(self) -> Result<String, String> {
        match self {
            Reply::Simple(s) => Ok(s),
            Reply::Bulk(Some(b)) => Ok(String::from_utf8_lossy(&b).into_owned()),
            Reply::Error(e) => Err(e),
            other => Err(format!("unexpected reply {other:?}")),
        }
    }
}

/// A command as a RESP array of bulk strings.
pub fn encode(args: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// Parses one reply from the front of `buf`: `Ok(None)` when more bytes are
/// needed, else the reply and how many bytes it took.
pub fn parse(buf: &[u8]) -> Result<Option<(Reply, usize)>, String> {
    let Some(end) = buf.windows(2).position(|w| w == b"\r\n") else {
        return Ok(None);
    };
    let Some(&kind) = buf.first() else { return Ok(None) };
    let line = String::from_utf8_lossy(&buf[1..end]).into_owned();
    let after = end + 2;
    let number = |l: &str| l.parse::<i64>().map_err(|_| format!("bad RESP length {l:?}"));
    match kind {
        b'+' => Ok(Some((Reply::Simple(line), after))),
        b'-' => Ok(Some((Reply::Error(line), after))),
        b':' => Ok(Some((Reply::Int(number(&line)?), after))),
        b'$' => {
            let n = number(&line)?;
            if n < 0 {
                return Ok(Some((Reply::Bulk(None), after)));
            }
            let n = n as usize;
            if buf.len() < after + n + 2 {
                return Ok(None);
            }
            Ok(Some((Reply::Bulk(Some(buf[after..after + n].to_vec())), after + n + 2)))
        }
        b'*' => {
            let n = number(&line)?;
            if n < 0 {
                return Ok(Some((Reply::Array(None), after)));
            }
            let mut items = Vec::new();
            let mut at = after;
            for _ in 0..n {
                match parse(&buf[at..])? {
                    Some((r, used)) => {
                        items.push(r);
                        at += used;
                    }
                    None => return Ok(None),
                }
            }
            Ok(Some((Reply::Array(Some(items)), at)))
        }
        other => Err(format!("not a RESP reply (starts with {:?})", other as char)),
    }
}

/// A connection to one member, authenticated when there is a password.
pub struct Conn {
    stream: tokio::net::TcpStream,
    buf: Vec<u8>,
    target: String,
}

impl Conn {
    /// Connects to `addr:port` (and sends `AUTH`), bounded by [`CALL`].
    pub async fn open(addr: &str, port: u16, password: Option<&Secret>) -> Result<Self, HookError> {
        let target = format!("{addr}:{port}");
        let stream = match tokio::time::timeout(CALL, tokio::net::TcpStream::connect(&target)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err(HookError(format!("valkey {target}: connect: {e}"))),
            Err(_) => return Err(HookError(format!("valkey {target}: connect: no answer within 3s"))),
        };
        let mut c = Self {
            stream,
            buf: Vec::new(),
            target,
        };
        if let Some(p) = password {
            match c.call(&["AUTH", &p.0]).await? {
                Reply::Simple(_) => {}
                Reply::Error(e) => {
                    // The server's words only (WRONGPASS ...): never what was sent.
                    let word = e.split_whitespace().next().unwrap_or("error").to_owned();
                    return Err(HookError(format!("valkey {}: AUTH refused ({word})", c.target)));
                }
                other => return Err(HookError(format!("valkey {}: AUTH answered {other:?}", c.target))),
            }
        }
        Ok(c)
    }

    /// Sends one command and reads its reply, bounded by [`CALL`]. Errors
    /// name the command (its first two words, never its arguments).
    pub async fn call(&mut self, args: &[&str]) -> Result<Reply, HookError> {
        let what = args.iter().take(2).copied().collect::<Vec<_>>().join(" ");
        let what = if args.first().is_some_and(|a| a.eq_ignore_ascii_case("auth")) {
            "AUTH".to_owned()
        } else {
            what
        };
        let fut = async {
            self.stream
                .write_all(&encode(args))
                .await
                .map_err(|e| format!("write: {e}"))?;
            loop {
                if let Some((reply, used)) = parse(&self.buf)? {
                    self.buf.drain(..used);
                    return Ok::<_, String>(reply);
                }
                let mut chunk = [0u8; 8192];
                let n = self.stream.read(&mut chunk).await.map_err(|e| format!("read: {e}"))?;
                if n == 0 {
                    return Err("connection closed".into());
                }
                self.buf.extend_from_slice(&chunk[..n]);
            }
        };
        match tokio::time::timeout(CALL, fut).await {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(e)) => Err(HookError(format!("valkey {} {what}: {e}", self.target))),
            Err(_) => Err(HookError(format!(
                "valkey {} {what}: no answer within {}s",
                self.target,
                CALL.as_secs()
            ))),
        }
    }

    /// A command whose reply is text (`INFO`, `CLUSTER NODES`); an error
    /// reply is an error naming the command.
    pub async fn text(&mut self, args: &[&str]) -> Result<String, HookError> {
        let r = self.call(args).await?;
        r.text().map_err(|e| {
            HookError(format!(
                "valkey {} {}: {e}",
                self.target,
                args.iter().take(2).copied().collect::<Vec<_>>().join(" ")
            ))
        })
    }
}
