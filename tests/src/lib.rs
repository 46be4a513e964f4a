//! Harness for cross-component tests: starts real OpenBao dev servers and creates fresh
//! PostgreSQL databases, and cleans both up afterwards.
#![forbid(unsafe_code)]

pub mod chromium;
pub mod fixtures;
pub mod google;
pub mod openbao;
pub mod postgres;
pub mod scan;
