//! In-process tests of the device side against small servers on 127.0.0.1
//! that speak the documented device API, or fail in the ways the failover
//! rules distinguish. One test binary keeps link time down.

mod cli;
mod client;
mod docs;
mod failover;
mod failures;
mod gateway;
mod load;
mod servers;
mod sim;
mod support;
