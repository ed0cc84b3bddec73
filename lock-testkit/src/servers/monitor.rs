//! The commands a test server runs, in the order it runs them, from `MONITOR`.

use std::io::{BufRead, BufReader, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use crate::redis_server::{HarnessError, RedisServer};

/// One command a server ran for a client, as `MONITOR` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Monitored {
    /// The client's address (`127.0.0.1:<port>`): commands with the same address came over one
    /// connection, and the server ran them in this order.
    pub client: String,
    /// The command's words, unquoted (`["SET", "lock:{a}", ...]`).
    pub words: Vec<String>,
}

impl Monitored {
    /// The command's words as `&str`s, for comparing with a literal.
    ///
    /// ```
    /// let seen = lock_testkit::Monitored { client: "127.0.0.1:5000".into(), words: vec!["GET".into(), "k".into()] };
    /// assert_eq!(seen.words(), ["GET", "k"]);
    /// ```
    pub fn words(&self) -> Vec<&str> {
        self.words.iter().map(String::as_str).collect()
    }
}

/// Watches a [`RedisServer`]'s `MONITOR` stream on a connection of its own (a thread reads
/// it) until [`Monitor::stop`]: the commands clients sent, in the order the server ran them.
/// Commands scripts ran are left out (they show as run by `lua`). Started by
/// [`RedisServer::monitor`].
///
/// For tests that check what reaches the server and in which order, e.g. that a read comes
/// after a write on the same connection. Words are read between `MONITOR`'s quotes without
/// unescaping, which is exact for lock keys, tokens and numbers.
///
/// ```no_run
/// let server = lock_testkit::RedisServer::start()?;
/// let monitor = server.monitor()?;
/// server.cmd(&["SET", "k", "v"])?;
/// let seen = monitor.stop();
/// assert!(seen.iter().any(|c| c.words() == ["SET", "k", "v"]));
/// # Ok::<(), lock_testkit::HarnessError>(())
/// ```
#[derive(Debug)]
pub struct Monitor {
    addr: String,
    stream: TcpStream,
    seen: Arc<Mutex<Vec<Monitored>>>,
    reader: std::thread::JoinHandle<()>,
}

/// How long [`Monitor::stop`] waits for its own closing command to show in the stream.
const CATCH_UP: Duration = Duration::from_secs(5);

impl RedisServer {
    /// Starts a [`Monitor`] of this server (plain TCP, no password: not for a TLS or
    /// password-protected server, for which it returns an error).
    ///
    /// # Errors
    /// [`HarnessError::Io`] when the server cannot be reached or refuses `MONITOR`.
    pub fn monitor(&self) -> Result<Monitor, HarnessError> {
        let io = |e: std::io::Error| HarnessError::Io(format!("MONITOR on {}: {e}", self.addr()));
        let mut stream = TcpStream::connect(self.addr()).map_err(io)?;
        stream.set_read_timeout(Some(Duration::from_secs(5))).map_err(io)?;
        stream.write_all(b"MONITOR\r\n").map_err(io)?;
        let mut reader = BufReader::new(stream.try_clone().map_err(io)?);
        let mut ok = String::new();
        reader.read_line(&mut ok).map_err(io)?;
        if ok.trim_end() != "+OK" {
            return Err(HarnessError::Io(format!("MONITOR on {}: {}", self.addr(), ok.trim_end())));
        }
        // Reads until the connection is shut down by `stop` (no timeout while it waits).
        stream.set_read_timeout(None).map_err(io)?;
        let seen = Arc::new(Mutex::new(Vec::new()));
        let lines = Arc::clone(&seen);
        let reader = std::thread::spawn(move || {
            for line in reader.lines() {
                let Ok(line) = line else { break };
                if let Some(command) = parse(&line) {
                    lines.lock().unwrap_or_else(PoisonError::into_inner).push(command);
                }
            }
        });
        Ok(Monitor { addr: self.addr(), stream, seen, reader })
    }
}

impl Monitor {
    /// Stops watching and returns what the server ran for its clients from the start until
    /// this call, in its order: every command whose reply came before it is there. (It runs a
    /// command of its own, an `ECHO` of a random word, and reads the stream up to it, for at
    /// most 5 seconds; the `ECHO` is not returned.)
    pub fn stop(self) -> Vec<Monitored> {
        let word = format!("monitor-stop-{:016x}", rand::random::<u64>());
        let is_ours = |c: &Monitored| c.words.len() == 2 && c.words[0] == "ECHO" && c.words[1] == word;
        if crate::resp::command(&self.addr, &["ECHO", &word]).is_ok() {
            let until = std::time::Instant::now() + CATCH_UP;
            while !self.seen.lock().unwrap_or_else(PoisonError::into_inner).iter().rev().any(is_ours)
                && std::time::Instant::now() < until
            {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        let _ = self.stream.shutdown(Shutdown::Both);
        let _ = self.reader.join();
        let mut seen = std::mem::take(&mut *self.seen.lock().unwrap_or_else(PoisonError::into_inner));
        if let Some(at) = seen.iter().position(is_ours) {
            seen.truncate(at);
        }
        seen
    }
}

/// `+1733400000.123456 [0 127.0.0.1:5000] "SET" "lock:{a}" ...` into the client and the words;
/// `None` for a command a script ran (`[0 lua]`) or a line of another shape.
fn parse(line: &str) -> Option<Monitored> {
    let (_, rest) = line.split_once('[')?;
    let (who, words) = rest.split_once(']')?;
    let client = who.split_whitespace().nth(1)?.to_string();
    if client == "lua" {
        return None;
    }
    let words = words.split('"').skip(1).step_by(2).map(str::to_string).collect();
    Some(Monitored { client, words })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_gives_the_client_and_the_words_and_a_scripts_line_nothing() {
        let line = r#"+1733400000.123456 [0 127.0.0.1:5000] "SET" "lock:{a}" "v" "NX""#;
        assert_eq!(
            parse(line),
            Some(Monitored {
                client: "127.0.0.1:5000".into(),
                words: vec!["SET".into(), "lock:{a}".into(), "v".into(), "NX".into()]
            })
        );
        assert_eq!(parse(r#"+1733400000.123456 [0 lua] "GET" "lock:node""#), None);
        assert_eq!(parse("+OK"), None);
    }
}
