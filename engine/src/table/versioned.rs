//! Versions published atomically: the machinery the numbering table and the
//! HSS share.
//!
//! Contract:
//! - A version is immutable once published; readers never lock, wait or
//!   allocate. [`Versioned::publish`] swaps the current version atomically
//!   (`arc-swap`, a well-kept crate doing exactly this): a reader sees the
//!   old version or the new one, never a mix.
//! - Writers serialise on a mutex readers never take. Every published
//!   version has a number, strictly increasing from 1.
//! - A replaced version is freed on a writer's thread: the writer keeps it
//!   until no reader holds it ([`Versioned::reclaim`]), so a reader letting
//!   go of one only decrements a count.
//! - [`Reader`] caches the current version per thread: one atomic load per
//!   access when nothing changed.

use std::sync::{Arc, Mutex};

use arc_swap::{ArcSwap, Cache};

/// A version that carries its number.
pub trait Numbered {
    /// The version number (1 for the first).
    fn number(&self) -> u64;
    /// Sets the number when the version is published.
    fn set_number(&mut self, number: u64);
}

/// The current version of something, replaced atomically.
#[derive(Debug)]
pub struct Versioned<V> {
    current: Arc<ArcSwap<V>>,
    /// Serialises writers, and holds replaced versions until no reader does.
    retired: Mutex<Vec<Arc<V>>>,
}

impl<V: Numbered> Versioned<V> {
    /// Publishes `first` as version 1.
    pub fn new(mut first: V) -> Versioned<V> {
        first.set_number(1);
        Versioned {
            current: Arc::new(ArcSwap::from_pointee(first)),
            retired: Mutex::new(Vec::new()),
        }
    }

    /// The current version, to hold as long as needed.
    pub fn snapshot(&self) -> Arc<V> {
        self.current.load_full()
    }

    /// A per-thread reader caching the current version. It shares the
    /// publication point, so it may outlive this handle.
    pub fn reader(&self) -> Reader<V> {
        Reader {
            cache: Cache::new(self.current.clone()),
        }
    }

    /// Builds the next version from the current one and publishes it, all
    /// under the writers' lock; returns its number. On error nothing
    /// changes.
    pub fn publish<E>(&self, build: impl FnOnce(&V) -> Result<V, E>) -> Result<u64, E> {
        // A poisoned lock only means another writer panicked; the current
        // version is always whole, so carry on.
        let mut retired = self.retired.lock().unwrap_or_else(|p| p.into_inner());
        let old = self.current.load_full();
        let mut next = build(&old)?;
        let number = old.number() + 1;
        next.set_number(number);
        self.current.store(Arc::new(next));
        // arc-swap has turned every reader's borrow of `old` into a count
        // before `store` returned: a count of one means only we hold it.
        retired.push(old);
        retired.retain(|v| Arc::strong_count(v) > 1);
        Ok(number)
    }

    /// Frees replaced versions no reader holds any more. Publishing does
    /// this too; call it now and then when updates are rare.
    pub fn reclaim(&self) {
        let mut retired = self.retired.lock().unwrap_or_else(|p| p.into_inner());
        retired.retain(|v| Arc::strong_count(v) > 1);
    }
}

/// A reader for one thread: caches the current version and refreshes it
/// only when a new one was published.
pub struct Reader<V> {
    cache: Cache<Arc<ArcSwap<V>>, Arc<V>>,
}

impl<V> std::fmt::Debug for Reader<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reader").finish_non_exhaustive()
    }
}

impl<V> Reader<V> {
    /// The current version (one atomic load when nothing changed).
    #[inline]
    pub fn current(&mut self) -> &V {
        self.cache.load()
    }
}
