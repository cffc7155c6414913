//! # presence-engine
//!
//! The roles, tables and runtime of the presence gateway appliance, built on
//! the wire format of [`presence_codec`] (re-exported as [`codec`]).
//!
//! - [`table`]: the OGPS numbering table (longest-prefix match plus ported
//!   numbers, lock-free reads, atomic versioned updates);
//! - [`route`]: `presence-gw route`, the routing decision for a stream of MSISDNs;
//! - [`wire`]: the operator's wire-format tools.
//!
//! - [`roles`]: the roles of the flow (WA, OGPS, IGPS, HSS, PS) as sans-IO
//!   state machines;
//! - [`config`]: the appliance's configuration file and data files;
//! - [`runtime`]: the appliance: thread-per-core event loops around the roles.

pub use presence_codec as codec;

pub mod config;
pub mod demo;
pub mod journal;
pub mod roles;
pub mod route;
pub mod runtime;
pub mod sim;
pub mod table;
pub mod wire;
