//! The process's allocator: the system's (musl's, in the static build), with a small cache
//! of large freed blocks. musl returns every block of more than about 128 KiB to the kernel
//! the moment it is freed, so a request that moves megabytes (a resource's body, its base64
//! decoded, an output's buffers) faults in every page of every buffer afresh, which cost more
//! than the copies themselves. Blocks of [`MIN`] bytes and up are rounded up to a power of
//! two and, once freed, kept for the next allocation of their size class: at most [`SLOTS`]
//! of them and [`CACHE_BYTES`] in all, handed back to the system by [`trim_if_idle`] once
//! nothing large was allocated for a while, so an idle Lessl holds none. Only the daemon
//! turns it on ([`keep_large_blocks`]): the agent and the client run on the system's alone
//! (the agent's memory is the task's).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

/// Smallest block kept: below it musl keeps freed memory itself.
const MIN: usize = 256 << 10;
/// Most blocks kept at once.
const SLOTS: usize = 16;
/// Most bytes kept at once.
const CACHE_BYTES: usize = 96 << 20;
/// Alignment of every cached block (what musl gives any large block); larger ones bypass.
const ALIGN: usize = 16;
/// Largest block handled here: past it (an absurd size) the system is asked as it is.
const MAX: usize = 1 << 40;

/// The allocator of the `lessl` binary (see `main.rs`).
pub struct Retaining;

struct Cache {
    /// Kept blocks: address and size class; the first `len` are used.
    blocks: [(usize, usize); SLOTS],
    len: usize,
    bytes: usize,
}

static CACHE: Mutex<Cache> = Mutex::new(Cache {
    blocks: [(0, 0); SLOTS],
    len: 0,
    bytes: 0,
});

/// How often the daemon calls [`trim_if_idle`]: a cache is let go within twice this of
/// the last large allocation.
pub const TRIM_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

/// Whether freed large blocks are kept (the daemon), or go back at once (everything else).
static KEEP: AtomicBool = AtomicBool::new(false);

/// Turns the cache on, for the daemon.
pub fn keep_large_blocks() {
    KEEP.store(true, Ordering::Relaxed);
}

/// Large allocations so far: [`trim_if_idle`] tells a busy stretch from an idle one by it.
static LARGE: AtomicU64 = AtomicU64::new(0);

/// The size class of a large block: `size` rounded up to a power of two. Pages a block never
/// touches cost nothing, so the rounding costs address space, not memory.
fn class(size: usize) -> usize {
    // At most MAX (a power of two) for the sizes `cached` lets through.
    size.next_power_of_two()
}

/// Whether a block of `layout` is one of ours: large, plainly aligned, of a sane size.
/// Decided by the layout alone, so `alloc` and `dealloc` always agree.
fn cached(layout: &Layout) -> bool {
    (MIN..=MAX).contains(&layout.size()) && layout.align() <= ALIGN
}

/// Whether a freed large block may be kept (the cache is on, and has room).
fn keeps(c: &Cache, class: usize) -> bool {
    KEEP.load(Ordering::Relaxed) && c.len < SLOTS && c.bytes + class <= CACHE_BYTES
}

fn block_layout(class: usize) -> Layout {
    // A power of two at least MIN with a 16-byte alignment is always a valid layout.
    Layout::from_size_align(class, ALIGN).expect("valid block layout")
}

// SAFETY: every block handed out is either the system's own answer for the same layout
// (small or over-aligned ones) or a block the system allocated with `block_layout(class)`,
// which is at least as large and as aligned as asked; such blocks go back to the system
// with that same layout, whether at once or from the cache.
unsafe impl GlobalAlloc for Retaining {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if !cached(&layout) {
            // SAFETY: forwarded as given.
            return unsafe { System.alloc(layout) };
        }
        LARGE.fetch_add(1, Ordering::Relaxed);
        let class = class(layout.size());
        if let Ok(mut c) = CACHE.lock() {
            let len = c.len;
            if let Some(i) = c.blocks[..len].iter().position(|b| b.1 == class) {
                let (ptr, _) = c.blocks[i];
                c.blocks[i] = c.blocks[len - 1];
                c.len -= 1;
                c.bytes -= class;
                return ptr as *mut u8;
            }
        }
        // SAFETY: a valid, non-zero layout.
        unsafe { System.alloc(block_layout(class)) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if !cached(&layout) {
            // SAFETY: allocated by the system with this layout.
            return unsafe { System.dealloc(ptr, layout) };
        }
        let class = class(layout.size());
        if let Ok(mut c) = CACHE.lock() {
            if keeps(&c, class) {
                let len = c.len;
                c.blocks[len] = (ptr as usize, class);
                c.len += 1;
                c.bytes += class;
                return;
            }
        }
        // SAFETY: allocated by the system with this block layout.
        unsafe { System.dealloc(ptr, block_layout(class)) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let grown = Layout::from_size_align(new_size, layout.align());
        let Ok(new) = grown else {
            return std::ptr::null_mut();
        };
        match (cached(&layout), cached(&new)) {
            // SAFETY: forwarded as given.
            (false, false) => unsafe { System.realloc(ptr, layout, new_size) },
            // The block already holds the new size: a Vec doubling within its class is free.
            (true, true) if class(layout.size()) == class(new_size) => ptr,
            _ => {
                // SAFETY: `new` is valid; the old block is live, holds `layout.size()` bytes
                // and is freed once, after the copy.
                unsafe {
                    let fresh = self.alloc(new);
                    if !fresh.is_null() {
                        let n = layout.size().min(new_size);
                        std::ptr::copy_nonoverlapping(ptr, fresh, n);
                        self.dealloc(ptr, layout);
                    }
                    fresh
                }
            }
        }
    }
}

/// Hands the cached blocks back to the system when nothing large was allocated since the last
/// call (`seen` holds the count it saw). Called every few seconds by the daemon.
pub fn trim_if_idle(seen: &mut u64) {
    let now = LARGE.load(Ordering::Relaxed);
    if now != *seen {
        *seen = now;
        return;
    }
    let taken: Vec<(usize, usize)> = match CACHE.lock() {
        Ok(mut c) => {
            let len = c.len;
            let kept = c.blocks[..len].to_vec();
            c.len = 0;
            c.bytes = 0;
            kept
        }
        Err(_) => return,
    };
    for (ptr, class) in taken {
        // SAFETY: cached blocks were allocated by the system with this block layout and
        // are no longer anyone's.
        unsafe { System.dealloc(ptr as *mut u8, block_layout(class)) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_blocks_are_reused_by_class_and_grow_in_place_within_it() {
        keep_large_blocks();
        let a = Retaining;
        let layout = Layout::from_size_align(300 << 10, 8).unwrap();
        // SAFETY: valid layouts; every block is written within its size and freed once.
        unsafe {
            let p = a.alloc(layout);
            assert!(!p.is_null());
            p.write_bytes(7, layout.size());
            let q = a.realloc(p, layout, 500 << 10);
            assert_eq!(q, p, "300 KiB and 500 KiB share the 512 KiB class");
            assert_eq!(*q.add((300 << 10) - 1), 7);
            let bigger = Layout::from_size_align(500 << 10, 8).unwrap();
            let r = a.realloc(q, bigger, 700 << 10);
            assert_eq!(*r.add((300 << 10) - 1), 7, "moved with its bytes");
            let last = Layout::from_size_align(700 << 10, 8).unwrap();
            a.dealloc(r, last);
            // The freed 1 MiB block serves the next allocation of its class.
            let s = a.alloc(Layout::from_size_align(900 << 10, 16).unwrap());
            assert_eq!(s, r);
            a.dealloc(s, Layout::from_size_align(900 << 10, 16).unwrap());
            let small = Layout::from_size_align(64, 8).unwrap();
            let t = a.alloc(small);
            t.write_bytes(1, 64);
            a.dealloc(t, small);
        }
        let mut seen = 0;
        trim_if_idle(&mut seen);
        trim_if_idle(&mut seen);
        assert_eq!(
            CACHE.lock().unwrap().len,
            0,
            "an idle stretch empties the cache"
        );
    }
}
