//! The chaos toolbox: the TCP fault proxy, the history format, the checker and the oracle node.

pub mod checker;
pub mod history;
pub(crate) mod oracle;
pub(crate) mod proxy;
