//! The shared Lua scripts straight on a real `redis-server`, with no driver in between: what
//! they do at an instant no driver call can aim at.

use lock_core::Token;
use lock_core::scripts::{ACQUIRE, FAIR, LuaScript};
use lock_testkit::RedisServer;
use lock_testkit::resp::Resp;

const LOCK: &str = "lock:{last-ms}";

/// Runs `script` by EVAL with `keys` and `args`; its reply's integers.
fn eval(server: &RedisServer, script: &LuaScript, keys: &[&str], args: &[&str]) -> Vec<i64> {
    let n = keys.len().to_string();
    let mut cmd = vec!["EVAL", script.source, n.as_str()];
    cmd.extend_from_slice(keys);
    cmd.extend_from_slice(args);
    match server.cmd(&cmd).unwrap() {
        Resp::Array(Some(items)) => items.iter().map(|i| i.int().unwrap()).collect(),
        other => panic!("{} answered {other:?}", script.name),
    }
}

/// A waiter whose refusal lands in the holder's last millisecond (the server answers PTTL 0
/// then: the key lives until its clock passes the expiry) marks the lock as waited for. The
/// rewrite keeps the expiry: before the fix it wrote the lock with no expiry at all, held by
/// its last holder for good. Each round sets a lock 3 ms from its end and asks for it without
/// pause until the asker gets it, taking the mark off after each refusal (only the first
/// refusal of a lock rewrites it); every refusal that read PTTL 0 is the case under test.
#[test]
fn a_refusal_in_the_holders_last_millisecond_never_makes_the_lock_permanent() {
    let server = RedisServer::start().unwrap();
    let fence = format!("{LOCK}:fence");
    let (queue, waiters) = (format!("{LOCK}:queue"), format!("{LOCK}:waiters"));
    let holder = Token::random().to_redis_value();
    // (script, keys, args for the asker, where its reply carries the PTTL it read)
    let asker = Token::random().to_redis_value();
    let plain = [asker.as_str(), "1000", "0", "0:000000000000"];
    let fair_wait = [asker.as_str(), "1000:0:1000:l:0:000000000000"];
    let fair_try = [asker.as_str(), "1000:0:0:l:0:000000000000"];
    let cases: [(&LuaScript, Vec<&str>, &[&str]); 3] = [
        (&ACQUIRE, vec![LOCK, fence.as_str()], &plain),
        (&FAIR, vec![LOCK, fence.as_str(), queue.as_str(), waiters.as_str()], &fair_wait),
        (&FAIR, vec![LOCK, fence.as_str(), queue.as_str(), waiters.as_str()], &fair_try),
    ];
    for (script, keys, args) in cases {
        let mut at_zero = 0;
        for _round in 0..50 {
            server.cmd(&["DEL", LOCK, &queue, &waiters]).unwrap();
            let held = format!("{holder}:0");
            server.cmd(&["SET", LOCK, &held, "PX", "3"]).unwrap();
            let mut taken = false;
            for _call in 0..20_000 {
                let reply = eval(&server, script, &keys, args);
                if reply[0] == 1 {
                    taken = true;
                    break;
                }
                assert_eq!(reply[0], 0, "{}: {reply:?}", script.name);
                if reply[1] == 0 {
                    at_zero += 1;
                }
                let pttl = server.cmd(&["PTTL", LOCK]).unwrap().int().unwrap();
                assert_ne!(pttl, -1, "{}: a refusal at PTTL 0 left the lock with no expiry", script.name);
                // Unmarked again (same expiry), so that the next refusal rewrites it too.
                server.cmd(&["SET", LOCK, &held, "KEEPTTL", "XX"]).unwrap();
            }
            assert!(taken, "{}: the lock was never free again", script.name);
            if at_zero >= 3 {
                break;
            }
        }
        assert!(
            at_zero > 0,
            "{}: no refusal met the holder's last millisecond: nothing was tested",
            script.name
        );
    }
}
