//! The device side of the scan gateway pair.
//!
//! An MFD talks to a gateway through [`client::GatewayClient`], which speaks
//! the device API of `docs/API.md` over HTTPS (or plain HTTP on loopback test
//! listeners). Failed calls are sorted into the four failover causes of R1 by
//! [`classify`]. A device agent embeds [`failover::FailoverClient`], which
//! sends every request to the current server of an ordered list (R13), moves
//! down the list on a failover cause, records what it saw, and fails back to a
//! healthy server higher up only between user sessions (R3); scans wait in
//! the durable [`outbox::Outbox`] until a server acknowledged them (R10). On
//! top of that sit the device agent ([`agent`]: one MFD, serving the panel
//! web client) and two tools: the simulator of many devices ([`sim`]) and
//! the upload benchmark client ([`load`]), all driven by the `mfd-sim`
//! binary.
//!
//! The default feature `sim` adds the page renderer (image, fonts), the
//! device agent's web server (axum) and the binary's dependencies (clap); a
//! device that embeds only the client and the outbox builds with
//! `default-features = false`.
//!
//! Module map, one owner per concern:
//! - [`transport`]: URL, TCP, TLS and one HTTP exchange with timeouts
//!   (connect, answer, and the liveness check of a server gone silent);
//! - [`error`]: the client's error type and the API's error body;
//! - [`api`]: the JSON shapes the gateway answers with;
//! - [`multipart`]: the job upload body (manifest first, pages in order);
//! - [`client`]: one gateway's device API as typed methods;
//! - [`classify`]: the failover cause of a failed call or a health answer;
//! - [`servers`]: the ordered server list and its health walk;
//! - [`failover`]: the failover client (current server, causes, events,
//!   user sessions, failback probes);
//! - [`outbox`]: the device's durable queue of scanned jobs;
//! - [`synthetic`]: exact-size PNG pages for load tests;
//! - [`pages`]: rendered text pages with known content (feature `sim`);
//! - [`page_source`]: which of the two kinds of page a run sends (feature
//!   `sim`);
//! - [`agent`]: the device agent (feature `sim`): its configuration, the
//!   scanner, the panel's web server and page, the delivery of the outbox;
//! - [`stats`], [`progress`]: run summaries and the progress bars;
//! - [`sim`], [`load`]: the two load generators; [`sim::fleet`] runs
//!   devices through the failover client and outbox, watches their jobs
//!   until delivered and reconciles them against every server and the
//!   destination folders ([`sim::reconcile`]).

#[cfg(feature = "sim")]
pub mod agent;
pub mod api;
pub mod classify;
pub mod client;
pub mod error;
pub mod failover;
pub mod load;
pub mod multipart;
pub mod outbox;
#[cfg(feature = "sim")]
pub mod page_source;
#[cfg(feature = "sim")]
pub mod pages;
pub mod progress;
pub mod servers;
pub mod sim;
pub mod stats;
pub mod synthetic;
pub mod transport;
