//! A minimal blocking RESP2 client for test set-up and inspection (no driver dependency).

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::Duration;

use crate::HarnessError;

/// A RESP2 reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resp {
    /// `+OK`
    Simple(String),
    /// `-ERR ...`
    Error(String),
    /// `:42`
    Int(i64),
    /// `$n` bulk string; `None` for the null bulk string.
    Bulk(Option<Vec<u8>>),
    /// `*n` array; `None` for the null array.
    Array(Option<Vec<Resp>>),
}

impl Resp {
    /// The reply as text: simple and bulk strings, integers; errors as `-message`.
    pub fn text(&self) -> String {
        match self {
            Resp::Simple(s) => s.clone(),
            Resp::Error(e) => format!("-{e}"),
            Resp::Int(i) => i.to_string(),
            Resp::Bulk(Some(b)) => String::from_utf8_lossy(b).into_owned(),
            Resp::Bulk(None) | Resp::Array(None) => String::new(),
            Resp::Array(Some(items)) => items.iter().map(Resp::text).collect::<Vec<_>>().join("\n"),
        }
    }

    /// The integer value, if this is an integer reply.
    pub fn int(&self) -> Option<i64> {
        match self {
            Resp::Int(i) => Some(*i),
            _ => None,
        }
    }
}

/// Sends one command to `addr` on a fresh connection and reads the reply.
///
/// # Errors
/// [`HarnessError::Io`] when the server cannot be reached or the reply is malformed.
pub fn command(addr: &str, args: &[&str]) -> Result<Resp, HarnessError> {
    commands(addr, &[args])
}

/// Sends several commands to `addr` on one fresh connection (e.g. `AUTH` first) and returns
/// the reply to the last one.
///
/// # Errors
/// [`HarnessError::Io`] when the server cannot be reached or a reply is malformed.
pub fn commands(addr: &str, cmds: &[&[&str]]) -> Result<Resp, HarnessError> {
    let io = |e: std::io::Error| HarnessError::Io(format!("{addr}: {e}"));
    let stream = TcpStream::connect(addr).map_err(io)?;
    stream.set_read_timeout(Some(Duration::from_secs(10))).map_err(io)?;
    let mut out = Vec::new();
    for args in cmds {
        out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
        for a in *args {
            out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            out.extend_from_slice(a.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
    }
    (&stream).write_all(&out).map_err(io)?;
    let mut reader = BufReader::new(&stream);
    let mut last = Resp::Bulk(None);
    for _ in 0..cmds.len() {
        last = read(&mut reader).map_err(io)?;
    }
    Ok(last)
}

fn read(r: &mut impl BufRead) -> std::io::Result<Resp> {
    let bad = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string());
    let mut line = String::new();
    r.read_line(&mut line)?;
    let line = line.trim_end_matches(['\r', '\n']);
    let (tag, rest) = line.split_at_checked(1).ok_or_else(|| bad("empty reply"))?;
    let num = || rest.parse::<i64>().map_err(|_| bad("bad length"));
    Ok(match tag {
        "+" => Resp::Simple(rest.to_string()),
        "-" => Resp::Error(rest.to_string()),
        ":" => Resp::Int(num()?),
        "$" => match usize::try_from(num()?) {
            Err(_) => Resp::Bulk(None),
            Ok(n) => {
                let mut buf = vec![0; n + 2];
                r.read_exact(&mut buf)?;
                buf.truncate(n);
                Resp::Bulk(Some(buf))
            }
        },
        "*" => match usize::try_from(num()?) {
            Err(_) => Resp::Array(None),
            Ok(n) => Resp::Array(Some((0..n).map(|_| read(r)).collect::<Result<_, _>>()?)),
        },
        _ => return Err(bad("unknown reply type")),
    })
}
