//! Tracing one watcher's queries through the seed's thirteen steps (the
//! demo prints them). Observation only: a traced query is decided exactly
//! like any other.

use std::sync::Arc;

use presence_codec::Msisdn;

/// Called with each step number and its text.
pub type TraceSink = Arc<dyn Fn(u8, String) + Send + Sync>;

/// Whose queries to trace, and where the steps go.
#[derive(Clone)]
pub struct Tracer {
    /// The watcher (A) whose queries are traced.
    pub watcher: Msisdn,
    /// Where the steps go.
    pub sink: TraceSink,
}

impl std::fmt::Debug for Tracer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tracer")
            .field("watcher", &self.watcher)
            .finish_non_exhaustive()
    }
}

/// A node's tracer, if any: formats a step only when it is traced.
#[derive(Clone, Debug, Default)]
pub(crate) struct Trace(pub(crate) Option<Tracer>);

impl Trace {
    /// Whether queries of `watcher` are traced.
    #[inline]
    pub(crate) fn traces(&self, watcher: Msisdn) -> bool {
        self.0.as_ref().is_some_and(|t| t.watcher == watcher)
    }

    /// The traced watcher, if any.
    pub(crate) fn watcher(&self) -> Option<Msisdn> {
        self.0.as_ref().map(|t| t.watcher)
    }

    /// Reports `step` of a query of `watcher`, if traced.
    #[inline]
    pub(crate) fn step(&self, watcher: Msisdn, step: u8, text: impl FnOnce() -> String) {
        if let Some(tracer) = self.0.as_ref().filter(|t| t.watcher == watcher) {
            (tracer.sink)(step, text());
        }
    }
}
