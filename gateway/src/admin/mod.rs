//! Administration: the operations (shared by the running instance and the
//! offline command line), the admin channel server on a Unix socket, and its
//! client.

pub mod client;
pub mod config;
pub mod ops;
pub mod pair;
pub mod server;
