//! Shared by the examples: where Redis is.

/// `REDIS_URL` when set, else a `redis-server` spawned on a free loopback port (kept alive by
/// the returned value, killed when it is dropped).
pub(crate) fn redis_url() -> Result<(String, Option<lock_testkit::RedisServer>), lock_testkit::HarnessError> {
    match std::env::var("REDIS_URL") {
        Ok(url) if !url.is_empty() => Ok((url, None)),
        _ => {
            let server = lock_testkit::RedisServer::start()?;
            Ok((server.url(), Some(server)))
        }
    }
}
