//! Harness for cross-component tests: starts real OpenBao dev servers and creates fresh
//! PostgreSQL databases, and cleans both up afterwards.
#![forbid(unsafe_code)]

pub mod chromium;
pub mod fixtures;
pub mod google;
pub mod kube_fake;
pub mod openbao;
pub mod operator_env;
pub mod postgres;
pub mod scan;
