//! A pool of fred clients keeps each key's commands on one connection.
//!
//! fred sends each command of a `Pool` to its next client in turn; two commands of one key on
//! two connections may reach the server in either order, so the cleanup release of a cancelled
//! acquire could run before the acquire's `SET` and leave the key held until its TTL. The
//! backend sends every command of a key over one client of the pool (its lane, by hash slot).
//! These tests watch the server's `MONITOR` stream to check it, that cancelled acquires on a
//! pool leave no key behind, and that a lone acquire's marker `GET` follows its `SET` on its
//! connection (the order the data-loss guard stands on), on a client and on a pool.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lock_core::{LockClient, LockConfig};
use lock_fred::FredBackend;
use lock_testkit::RedisServer;

const MS: Duration = Duration::from_millis(1);

/// A command as `MONITOR` shows it: the client's address and the command's words.
type Seen = (String, Vec<String>);

/// The commands the server ran from clients (not from scripts), as `(client address, words)`,
/// read from `MONITOR` on a connection of its own until [`Monitor::stop`].
struct Monitor {
    stream: TcpStream,
    lines: Arc<Mutex<Vec<Seen>>>,
    reader: std::thread::JoinHandle<()>,
}

impl Monitor {
    fn start(server: &RedisServer) -> Self {
        let mut stream = TcpStream::connect(server.addr()).unwrap();
        stream.write_all(b"MONITOR\r\n").unwrap();
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut ok = String::new();
        reader.read_line(&mut ok).unwrap();
        assert_eq!(ok.trim_end(), "+OK", "MONITOR started");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&lines);
        let reader = std::thread::spawn(move || {
            for line in reader.lines() {
                let Ok(line) = line else { break };
                if let Some(parsed) = parse(&line) {
                    seen.lock().unwrap().push(parsed);
                }
            }
        });
        Self { stream, lines, reader }
    }

    fn stop(self) -> Vec<Seen> {
        self.stream.shutdown(Shutdown::Both).unwrap();
        self.reader.join().unwrap();
        std::mem::take(&mut *self.lines.lock().unwrap())
    }
}

/// `+1733400000.123456 [0 127.0.0.1:5000] "SET" "lock:{a}" ...` into the address and the
/// words; `None` for a command a script ran (`[0 lua]`) or a line of another shape.
fn parse(line: &str) -> Option<Seen> {
    let (_, rest) = line.split_once('[')?;
    let (who, words) = rest.split_once(']')?;
    let addr = who.split_whitespace().nth(1)?.to_string();
    if addr == "lua" {
        return None;
    }
    // Quoted words; the lock keys and tokens need no unescaping.
    let words = words.split('"').skip(1).step_by(2).map(str::to_string).collect();
    Some((addr, words))
}

/// The locks (`lock:{name}`, from every key of a lock, which share its hash tag) a data
/// command names; none for the subscriber's commands, which have a connection of their own.
fn locks_named(words: &[String]) -> Vec<&str> {
    if !matches!(words.first().map(String::as_str), Some("SET" | "GET" | "EVALSHA" | "EVAL")) {
        return Vec::new();
    }
    words.iter().filter(|w| w.starts_with("lock:{")).filter_map(|w| w.get(..=w.find('}')?)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_command_of_a_key_goes_over_one_client_of_the_pool() {
    let server = RedisServer::start().unwrap();
    let backend = FredBackend::builder().connect_pool(&server.url(), 3).await.unwrap();
    let config = LockConfig::builder().watchdog(false).acquire_timeout(10_000 * MS).build().unwrap();
    let locks = LockClient::with_config(backend, config).unwrap();
    // Opens the node (creates its marker), so every acquire below is a plain SET.
    locks.mutex("first").unwrap().lock().await.unwrap().release().await.unwrap();

    let monitor = Monitor::start(&server);
    // 16 keys, 4 tasks each: lock/unlock cycles, contended (refusals, waits, scripts), with
    // acquires cancelled at every stage.
    let tasks = (0..64).map(|t| {
        let locks = locks.clone();
        tokio::spawn(async move {
            let mutex = locks.mutex(format!("pooled:{}", t % 16)).unwrap();
            for i in 0..20u64 {
                if (t + i) % 5 == 0 {
                    let cut = Duration::from_micros(50 * (i % 7));
                    let _ = tokio::time::timeout(cut, mutex.lock()).await;
                    continue;
                }
                mutex.lock().await.unwrap().release().await.unwrap();
            }
        })
    });
    for task in futures::future::join_all(tasks).await {
        task.unwrap();
    }
    // The cancelled acquires' cleanups run in the background.
    tokio::time::sleep(300 * MS).await;
    let commands = monitor.stop();

    let mut by_key: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for (addr, words) in &commands {
        for key in locks_named(words) {
            by_key.entry(key).or_default().insert(addr);
        }
    }
    assert_eq!(by_key.len(), 16, "every key was used: {:?}", by_key.keys());
    for (key, addrs) in &by_key {
        assert_eq!(addrs.len(), 1, "the commands of {key} went over {addrs:?}");
    }
    let used: BTreeSet<&str> = by_key.values().flatten().copied().collect();
    assert!(used.len() > 1, "the keys are spread over the pool's clients: {used:?}");
    for i in 0..16 {
        let left = server.cmd(&["EXISTS", &format!("lock:{{pooled:{i}}}")]).unwrap().text();
        assert_eq!(left, "0", "no key is left behind by a cancelled acquire: pooled:{i}");
    }
}

/// The data-loss guard of an unfenced acquire stands on command order: the marker `GET` must
/// run **after** the acquire's `SET`, on the same connection (a flush between the two would
/// otherwise go unseen). A lone acquire sends the two as separate fred commands, queued in the
/// order they are first polled, and awaits both replies with one wake-up; this checks on the
/// wire that every lone `SET`, on a client and on a pool, is followed by the marker `GET` on its
/// own connection before anything else runs there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_acquire_reads_the_marker_after_its_set_on_the_same_connection() {
    let server = RedisServer::start().unwrap();
    let client = FredBackend::connect(&server.url()).await.unwrap();
    let pool = FredBackend::builder().connect_pool(&server.url(), 2).await.unwrap();
    let config = || LockConfig::builder().watchdog(false).build().unwrap();
    let (on_client, on_pool) = (
        LockClient::with_config(client, config()).unwrap(),
        LockClient::with_config(pool, config()).unwrap(),
    );
    // Opens the node (creates its marker), so every acquire below is a plain SET.
    on_client.mutex("first").unwrap().lock().await.unwrap().release().await.unwrap();

    let monitor = Monitor::start(&server);
    // One at a time: every acquire is a lone one (a batch is one script call).
    for i in 0..20 {
        on_client.mutex(format!("order:{i}")).unwrap().lock().await.unwrap().release().await.unwrap();
        on_pool.mutex(format!("order:{i}")).unwrap().lock().await.unwrap().release().await.unwrap();
    }
    let commands = monitor.stop();

    let mut sets = 0;
    for (n, (addr, words)) in commands.iter().enumerate() {
        if words.first().map(String::as_str) != Some("SET") {
            continue;
        }
        sets += 1;
        let next = commands[n + 1..].iter().find(|(other, _)| other == addr).map(|(_, words)| words);
        assert_eq!(
            next.map(|w| w.iter().map(String::as_str).collect::<Vec<_>>()),
            Some(vec!["GET", "lock:node"]),
            "after {words:?} on {addr}, the next command there must be the marker read"
        );
        let before = commands[..n].iter().rev().find(|(other, _)| other == addr).map(|(_, words)| words);
        assert_ne!(
            before.map(|w| w.iter().map(String::as_str).collect::<Vec<_>>()),
            Some(vec!["GET", "lock:node"]),
            "a marker read just before {words:?} on {addr} would vouch for nothing"
        );
    }
    assert_eq!(sets, 40, "every acquire was a lone SET: {commands:?}");
}
