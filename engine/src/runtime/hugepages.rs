//! Huge pages for every large arena, without touching each arena's code
//! (`[network] huge_pages`, off by default: on this project's VM they made
//! no difference end to end and cost the sans-IO node benchmark about 20%,
//! `BENCHMARKS.md`).
//!
//! With a million subscribers per side every table access misses the
//! cache, and with 4 KiB pages it misses the TLB too: a page walk of its
//! own, twice as long under a hypervisor's nested paging. The appliance's
//! large arenas (subscriber maps, the pending table, the device-request
//! ring, duplicate-window rings, the numbering table) are allocated once at
//! start-up or on first use, so the binaries install [`HugePageAlloc`] as
//! their global allocator: every allocation of at least
//! [`HUGE_PAGE_THRESHOLD`] bytes is advised `MADV_HUGEPAGE`, which makes the
//! kernel back it with 2 MiB pages where transparent huge pages are enabled
//! as `always` or `madvise` (Debian's default is `madvise`). Small
//! allocations are left alone; the hot path allocates nothing.
//!
//! Only the 2 MiB-aligned interior of an allocation is advised (the
//! allocator's own chunk header and the ends stay on small pages). Where the
//! kernel has no transparent huge pages the advice fails and is ignored: the
//! memory is the same, only slower to walk. `presence-gw run` with
//! `huge_pages = true` warns at start when the system's setting
//! (`/sys/kernel/mm/transparent_hugepage/enabled`) is `never` or missing.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, Ordering};

/// Allocations at least this large are advised onto huge pages.
pub const HUGE_PAGE_THRESHOLD: usize = 4 << 20;

const HUGE_PAGE: usize = 2 << 20;

/// Whether [`HugePageAlloc`] advises at all (set once at start-up).
static ADVISE: AtomicBool = AtomicBool::new(false);

/// Turns the advice on or off for allocations made from now on (the
/// appliance sets it from `[network] huge_pages` before loading its tables).
pub fn set_enabled(on: bool) {
    ADVISE.store(on, Ordering::Relaxed);
}

/// Whether large allocations are being advised onto huge pages.
pub fn enabled() -> bool {
    ADVISE.load(Ordering::Relaxed)
}

/// The system allocator, advising large allocations onto huge pages.
#[derive(Debug, Default, Clone, Copy)]
pub struct HugePageAlloc;

/// The 2 MiB-aligned interior of `[ptr, ptr + size)` to advise, if the
/// allocation is large enough to have one worth it.
fn interior(ptr: usize, size: usize) -> Option<(usize, usize)> {
    if ptr == 0 || size < HUGE_PAGE_THRESHOLD {
        return None;
    }
    let start = ptr.next_multiple_of(HUGE_PAGE);
    let end = ptr.saturating_add(size) & !(HUGE_PAGE - 1);
    (end > start).then_some((start, end))
}

/// Advises the 2 MiB-aligned interior of `[ptr, ptr + size)` onto huge
/// pages, when enabled; harmless where that is refused.
fn advise(ptr: *mut u8, size: usize) {
    if !enabled() {
        return;
    }
    if let Some((start, end)) = interior(ptr as usize, size) {
        // SAFETY: `[start, end)` lies inside an allocation the system
        // allocator just returned; MADV_HUGEPAGE only changes how the kernel
        // backs those pages, never their contents or their mapping. errno
        // is put back: an allocation between a failed call and its
        // `last_os_error` must not change the error reported.
        unsafe {
            let errno = *libc::__errno_location();
            libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE);
            *libc::__errno_location() = errno;
        }
    }
}

// SAFETY: every method forwards to `System` with the caller's arguments and
// returns its result unchanged; `advise` only adds a hint on the returned
// memory.
unsafe impl GlobalAlloc for HugePageAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded as given (GlobalAlloc::alloc's contract).
        let ptr = unsafe { System.alloc(layout) };
        advise(ptr, layout.size());
        ptr
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded as given.
        let ptr = unsafe { System.alloc_zeroed(layout) };
        advise(ptr, layout.size());
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded as given.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded as given.
        let new = unsafe { System.realloc(ptr, layout, new_size) };
        advise(new, new_size);
        new
    }
}

/// The system's transparent-huge-page setting (`always`, `madvise` or
/// `never`), if it can be read.
pub fn transparent_huge_pages() -> Option<String> {
    let text = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled").ok()?;
    // "always [madvise] never": the bracketed word is the setting.
    let start = text.find('[')?;
    let end = text[start..].find(']')?;
    Some(text[start + 1..start + end].to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The `VmFlags` of the mapping holding `addr`, from `/proc/self/smaps`.
    fn vm_flags(addr: usize) -> Option<String> {
        let smaps = std::fs::read_to_string("/proc/self/smaps").ok()?;
        let mut inside = false;
        for line in smaps.lines() {
            let range = line
                .split_whitespace()
                .next()
                .and_then(|r| r.split_once('-'))
                .and_then(|(a, b)| {
                    Some((
                        usize::from_str_radix(a, 16).ok()?,
                        usize::from_str_radix(b, 16).ok()?,
                    ))
                });
            if let Some((start, end)) = range {
                inside = (start..end).contains(&addr);
            } else if inside {
                if let Some(flags) = line.strip_prefix("VmFlags:") {
                    return Some(flags.trim().to_string());
                }
            }
        }
        None
    }

    #[test]
    fn a_large_allocation_is_marked_for_huge_pages_and_keeps_its_contents() {
        // Tests in this binary run in parallel: only this one turns it on,
        // and the other checks a small allocation, which is never advised.
        set_enabled(true);
        let alloc = HugePageAlloc;
        let layout = Layout::from_size_align(HUGE_PAGE_THRESHOLD * 2, 64).expect("layout");
        // SAFETY: a non-zero layout; the memory is written and read inside
        // it, then freed with the layout it has.
        unsafe {
            let p = alloc.alloc_zeroed(layout);
            assert!(!p.is_null());
            assert_eq!(*p.add(layout.size() - 1), 0);
            *p.add(12_345) = 7;
            let interior = (p as usize).next_multiple_of(HUGE_PAGE);
            // Where the kernel has transparent huge pages at all, the advice
            // sets the mapping's `hg` flag, whatever the current setting.
            if transparent_huge_pages().is_some() {
                let flags = vm_flags(interior).expect("the allocation is mapped");
                assert!(
                    flags.split_whitespace().any(|f| f == "hg"),
                    "MADV_HUGEPAGE on the interior: {flags}"
                );
            }
            let grown = Layout::from_size_align(layout.size() * 2, 64).expect("layout");
            let q = alloc.realloc(p, layout, grown.size());
            assert!(!q.is_null());
            assert_eq!(*q.add(12_345), 7, "realloc keeps the contents");
            alloc.dealloc(q, grown);
        }
    }

    #[test]
    fn only_the_aligned_interior_of_a_large_allocation_is_advised() {
        const MB: usize = 1 << 20;
        assert_eq!(interior(3 * MB, HUGE_PAGE_THRESHOLD - 1), None, "small");
        assert_eq!(interior(0, 64 * MB), None, "null");
        // 4 MiB from 3 MiB: only [4, 6) MiB is whole huge pages.
        assert_eq!(interior(3 * MB, 4 * MB), Some((4 * MB, 6 * MB)));
        assert_eq!(interior(2 * MB, 4 * MB), Some((2 * MB, 6 * MB)));
        assert_eq!(interior(3 * MB + 16, 4 * MB), Some((4 * MB, 6 * MB)));
    }

    #[test]
    fn the_setting_is_read_as_the_bracketed_word() {
        if let Some(setting) = transparent_huge_pages() {
            assert!(["always", "madvise", "never"].contains(&setting.as_str()));
        }
    }
}
