//! The pair protocol without I/O: the rules two gateway servers follow to
//! agree on who is primary, taken as plain values. Nothing here opens a
//! socket, reads a clock, touches a database or spawns a task: callers pass
//! the time and the messages in and act on what comes out, so the real peer
//! link, the tests and the model checker all drive the same code.
//!
//! - [`epoch`]: server ids and the totally ordered epochs of primaries.

pub mod epoch;

pub use epoch::{Epoch, EpochError, ServerId};
