//! Every invalid configuration gives `LockError::Config` naming the field.

use std::time::Duration;

use lock_core::{LockConfig, LockError};

const MS: Duration = Duration::from_millis(1);

fn field_of(result: Result<LockConfig, LockError>) -> (&'static str, String) {
    match result {
        Err(LockError::Config { field, reason }) => (field, reason),
        other => panic!("expected a config error, got {other:?}"),
    }
}

#[test]
fn defaults_are_documented_values() {
    let c = LockConfig::default();
    assert_eq!(c.ttl(), Duration::from_secs(30));
    assert_eq!(c.renew_interval(), Duration::from_secs(10));
    assert_eq!(c.drift(), 302 * MS);
    assert_eq!(c.max_hold(), None);
    assert!(!c.fencing());
    assert!(c.watchdog());
    assert_eq!(LockConfig::builder().build().unwrap(), c);
}

#[test]
fn zero_ttl_is_rejected() {
    let (field, reason) = field_of(LockConfig::builder().ttl(Duration::ZERO).build());
    assert_eq!(field, "ttl");
    assert!(reason.contains("minimum"), "{reason}");
}

#[test]
fn huge_ttl_is_rejected_as_a_likely_unit_mistake() {
    let (field, _) = field_of(LockConfig::builder().ttl(Duration::from_secs(3600 * 1000)).build());
    assert_eq!(field, "ttl");
}

#[test]
fn renew_interval_must_be_below_validity() {
    let (field, reason) = field_of(
        LockConfig::builder().ttl(Duration::from_secs(3)).renew_interval(Duration::from_secs(3)).build(),
    );
    assert_eq!(field, "renew_interval");
    assert!(reason.contains("below ttl - drift"), "{reason}");
    let (field, _) = field_of(LockConfig::builder().renew_interval(Duration::ZERO).build());
    assert_eq!(field, "renew_interval");
}

#[test]
fn drift_must_leave_validity() {
    let (field, _) = field_of(LockConfig::builder().ttl(100 * MS).drift(100 * MS).build());
    assert_eq!(field, "drift");
}

#[test]
fn backoff_bounds_are_checked() {
    let (field, _) = field_of(LockConfig::builder().retry_backoff(Duration::ZERO, 10 * MS).build());
    assert_eq!(field, "retry_backoff");
    let (field, reason) = field_of(LockConfig::builder().retry_backoff(50 * MS, 10 * MS).build());
    assert_eq!(field, "retry_backoff");
    assert!(reason.contains("above maximum"), "{reason}");
}

#[test]
fn max_hold_must_cover_one_ttl() {
    let (field, _) = field_of(LockConfig::builder().max_hold(Duration::from_secs(1)).build());
    assert_eq!(field, "max_hold");
}

#[test]
fn oversized_prefix_is_rejected() {
    let (field, _) = field_of(LockConfig::builder().key_prefix("p".repeat(5000)).build());
    assert_eq!(field, "key_prefix");
}

#[test]
fn config_error_message_names_the_field() {
    let err = LockConfig::builder().ttl(Duration::ZERO).build().unwrap_err();
    assert_eq!(err.to_string(), "invalid lock configuration: `ttl` is 0ns; the minimum is 10ms");
}
