//! # presence-engine
//!
//! The roles, tables and runtime of the presence gateway appliance, built on
//! the wire format of [`presence_codec`] (re-exported as [`codec`]).
//!
//! - [`wire`]: the operator's wire-format tools.
//!
//! The routing table, the sans-IO roles and the runtime follow the open issues.

pub use presence_codec as codec;

pub mod wire;
