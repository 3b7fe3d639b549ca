//! The pair adapter: the only code that talks to the other server. It runs
//! the pair protocol (`pair_core`) over a mutually authenticated TLS link of
//! its own (the pair port, not behind the load balancer), pairs the two
//! servers on an admin's request, keeps the peer's liveness (LIVE, DEAD,
//! CLOSE) and tells admins when it changes.
//!
//! - [`identity`]: this server's pair certificate;
//! - [`trust`]: the pinned-certificate TLS configurations;
//! - [`pairing`]: the one-time pairing code and the peer record;
//! - [`frame`]: length-prefixed JSON frames;
//! - [`link`]: the driver of the protocol node, listener and dialer;
//! - [`notify`]: notifications to admins.

pub mod frame;
pub mod identity;
pub mod link;
pub mod notify;
pub mod pairing;
pub mod trust;

pub use link::{PairLink, PairStatus};

#[cfg(test)]
mod tests;
