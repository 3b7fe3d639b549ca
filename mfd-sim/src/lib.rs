//! The device side.
