//! The way in for mail: Pub/Sub push verification, Gmail history sync, and the pipeline
//! that turns a raw message into sealed fields (parse → sanitize → strip quotes → seal).
//!
//! Every stage is a function with its own counters ([`crate::metrics`]).

pub mod gmail;
pub mod jwt;
pub mod oauth;
pub mod parse;
pub mod pipeline;
pub mod push;
pub mod quote;
pub mod sanitize;
pub mod sink;
pub mod sync;
