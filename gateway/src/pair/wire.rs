//! What travels in one frame of the pair link: the protocol's messages
//! (`pair_core::Message`, decided on by the node) and the driver's own
//! exchanges, which the protocol does not decide on: the clock and time-zone
//! probe that admits configuration sync (seed 002), and the conflict report
//! a fenced server hands to the new primary.

use pair_core::Message;
use serde::{Deserialize, Serialize};

use crate::store::snapshot::Conflict;

/// One frame's content.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Wire {
    /// A protocol message for the node.
    Protocol(Message),
    /// "What is your clock and zone?": `sent_ms` is the sender's wall clock
    /// (milliseconds since the Unix epoch), echoed in the reply.
    ClockProbe { sent_ms: u64 },
    /// The answer, sent at once: the replier's wall clock when it answered,
    /// its instance name and its IANA zone (`None`: it could not determine
    /// its system zone).
    ClockReply {
        sent_ms: u64,
        wall_ms: u64,
        instance: String,
        time_zone: Option<String>,
    },
    /// Configuration changes the sender made as a primary that was since
    /// replaced, for the receiver's conflict report.
    Conflicts(Vec<Conflict>),
}
