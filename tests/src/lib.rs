//! Harness for cross-component tests: starts real OpenBao dev servers and creates fresh
//! PostgreSQL databases, and cleans both up afterwards.
#![forbid(unsafe_code)]

pub mod fixtures;
pub mod openbao;
pub mod postgres;
pub mod scan;
pub mod google;
