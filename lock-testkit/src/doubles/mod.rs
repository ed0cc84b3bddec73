//! Test doubles: backends that stand in for a real server in unit and policy tests.

pub(crate) mod faulty;
pub(crate) mod memory;
pub(crate) mod mock;
