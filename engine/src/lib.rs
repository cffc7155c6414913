//! # presence-engine
//!
//! The presence gateway appliance, built on the wire format of
//! [`presence_codec`] (re-exported as [`codec`]). Layers, lowest first; each
//! imports only those below it:
//!
//! - [`table`]: prefix tables (the OGPS numbering table, the HSS's ranges):
//!   longest-prefix match plus single-number overrides, lock-free reads,
//!   atomic versioned updates;
//! - [`roles`]: the roles of the flow (WA, OGPS, IGPS, HSS, PS) as sans-IO
//!   state machines;
//! - [`journal`]: the charge-record journal (segments, group commit,
//!   recovery, dump);
//! - [`node`]: one network's gateway on one worker, sans-IO: the roles
//!   composed, every presence decision made;
//! - [`config`]: the appliance's configuration file and data files;
//! - [`runtime`]: the appliance: a node per core, sockets, TLS links,
//!   journal files, metrics, signals; it moves bytes and decides nothing;
//! - [`lab`]: two networks' folders generated, their appliances started, a
//!   device client (the demo, the load harness and the tests use it; no
//!   layer above imports it);
//! - `sim` (feature `sim`): many networks of several nodes each on a seeded
//!   simulated network, and the role pipeline the benchmarks run.

pub use presence_codec as codec;

pub mod config;
pub mod journal;
pub mod lab;
pub mod node;
pub mod rng;
pub mod roles;
pub mod runtime;
#[cfg(feature = "sim")]
pub mod sim;
pub mod table;
