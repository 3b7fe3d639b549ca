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
//! - [`link`]: the handle: starts the link's thread, passes admin requests;
//! - [`driver`]: the driver of the protocol node, and pairing;
//! - [`connection`]: the listener, the dialer and connection tasks;
//! - [`status`]: what status shows of the link;
//! - [`notify`]: notifications to admins.

pub mod connection;
pub mod driver;
pub mod frame;
pub mod identity;
pub mod link;
pub mod notify;
pub mod pairing;
pub mod status;
pub mod trust;

pub use link::PairLink;
pub use status::PairStatus;

#[cfg(test)]
mod tests;
