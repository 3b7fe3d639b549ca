//! The pair protocol without I/O: the rules two gateway servers follow to
//! agree on who is primary, taken as plain values. Nothing here opens a
//! socket, reads a clock, touches a database or spawns a task: callers pass
//! the time and the messages in and act on what comes out, so the real peer
//! link, the tests and the model checker all drive the same code.
//!
//! - [`epoch`]: server ids and the totally ordered epochs of primaries.
//! - [`role`]: activations, the durable protocol state, roles, the
//!   configuration write permit and its refusals.
//! - [`message`]: what the two servers say to each other.
//! - [`liveness`]: the peer's LIVE/DEAD/CLOSE state from message times.
//! - [`ownership`]: job ownership: leases, permits, takeovers.
//! - [`sync`]: sync admission, the time-zone and clock check.
//! - [`settings`]: validated identity and timing.
//! - [`node`]: one server's state machine, `step(now, input) -> outputs`.

pub mod epoch;
pub mod liveness;
pub mod message;
pub mod node;
pub mod ownership;
pub mod role;
pub mod settings;
pub mod sync;

pub use epoch::{Epoch, EpochError, ServerId};
pub use liveness::Liveness;
pub use message::{Body, ConfigChange, Hello, Message, Payload};
pub use node::{ApplyKind, Event, Input, Output, PairNode, PeerRefusal, PeerView, RoleView};
pub use ownership::{LeaseNews, Permit};
pub use role::{ActivationKind, ConfigStamp, Persisted, Role, WritePermit, WriteRefused};
pub use settings::{PairSettings, SettingsError, Timing};
pub use sync::{ClockReading, ClockSample, SyncBlock, admit_sync};
