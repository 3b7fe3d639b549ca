//! The scan job pipeline.
