//! The device side of the scan gateway pair.
//!
//! An MFD talks to a gateway through [`client::GatewayClient`], which speaks
//! the device API of `docs/API.md` over HTTPS (or plain HTTP on loopback test
//! listeners). Failed calls are sorted into the four failover causes of R1 by
//! [`classify`], and [`servers::ServerList`] walks an ordered list of gateway
//! addresses until one accepts jobs (R13). On top of that sit two tools: the
//! simulator of many devices ([`sim`]) and the upload benchmark client
//! ([`load`]), both driven by the `mfd-sim` binary.
//!
//! Module map, one owner per concern:
//! - [`transport`]: URL, TCP, TLS and one HTTP exchange with timeouts;
//! - [`error`]: the client's error type and the API's error body;
//! - [`api`]: the JSON shapes the gateway answers with;
//! - [`multipart`]: the job upload body (manifest first, pages in order);
//! - [`client`]: one gateway's device API as typed methods;
//! - [`classify`]: the failover cause of a failed call or a health answer;
//! - [`servers`]: the ordered server list;
//! - [`synthetic`]: exact-size PNG pages for load tests;
//! - [`pages`]: rendered text pages with known content;
//! - [`page_source`]: which of the two kinds of page a run sends;
//! - [`stats`], [`progress`]: run summaries and the progress line;
//! - [`sim`], [`load`]: the two load generators.

pub mod api;
pub mod classify;
pub mod client;
pub mod error;
pub mod load;
pub mod multipart;
pub mod page_source;
pub mod pages;
pub mod progress;
pub mod servers;
pub mod sim;
pub mod stats;
pub mod synthetic;
pub mod transport;
