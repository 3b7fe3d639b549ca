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
//! - [`wire`]: what one frame carries (protocol messages, the clock
//!   probe, conflict reports);
//! - [`sync`]: the replication side of the driver: snapshots, applying,
//!   conflicts, the clock check and what status shows of them;
//! - [`jobs`]: the job replication stream (sender and receiver tasks);
//! - [`duplicates`]: one job id accepted by both servers;
//! - [`ocr`]: the peer as an OCR engine, and OCR for the peer;
//! - [`notify`]: notifications to admins.

pub mod connection;
pub mod driver;
pub mod duplicates;
pub mod frame;
pub mod identity;
pub mod jobs;
pub mod link;
pub mod notify;
pub mod ocr;
pub mod pairing;
pub mod status;
pub mod sync;
pub mod trust;
pub mod wire;

pub use link::PairLink;
pub use status::PairStatus;

#[cfg(test)]
mod tests;
