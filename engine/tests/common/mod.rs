//! Helpers shared by the appliance-level tests.

use std::path::{Path, PathBuf};

/// The shipped numbering table.
pub(crate) fn table() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/msisdn-prefixes.csv")
}

/// A number from the environment, or `default`.
#[allow(dead_code)] // not every test binary reads the environment
pub(crate) fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}
