//! Surviving a peer that takes pages away from a shared mapping.
//!
//! Seals stop a peer from shrinking a region memfd, but not from punching a hole
//! in it (`fallocate(FALLOC_FL_PUNCH_HOLE)`, `madvise(MADV_REMOVE)`): the pages go
//! back to the kernel and the next access faults them in again. For normal shared
//! memory that yields zero pages; for hugetlb memory with no free hugepage left it
//! raises `SIGBUS` in whichever thread touched the page, which would end the
//! proxy. (`F_SEAL_FUTURE_WRITE` would forbid the hole, but also the writable
//! mapping a reattaching guest's next proxy needs.)
//!
//! A guarded range ([`FaultGuard`]) turns that `SIGBUS` into a counted event: the
//! process-wide handler installed here replaces the whole range with private
//! anonymous memory (`MAP_FIXED`, zero-filled), counts the fault and returns, so
//! the faulting access runs again and reads zeros. To the code using the range
//! this looks like a peer that wrote zeros everywhere, which it must survive
//! anyway; the owner sees [`FaultGuard::faults`] and drops the peer. This is how
//! Wayland compositors survive clients that truncate their shared buffers.
//!
//! A `SIGBUS` outside every guarded range goes to the handler that was there
//! before (Rust's stack-overflow handler, or the default action).

use std::cell::UnsafeCell;
use std::io;
use std::mem::MaybeUninit;
use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::Once;

/// Ranges guarded at the same time in one process (a proxy maps one region per
/// guest).
pub const MAX_GUARDED: usize = 1024;

const FREE: u8 = 0;
const LIVE: u8 = 1;
/// Being set up, torn down or repaired; the handler skips it.
const BUSY: u8 = 2;

struct Slot {
    state: AtomicU8,
    base: AtomicUsize,
    len: AtomicUsize,
    faults: AtomicU64,
}

impl Slot {
    const fn new() -> Slot {
        Slot {
            state: AtomicU8::new(FREE),
            base: AtomicUsize::new(0),
            len: AtomicUsize::new(0),
            faults: AtomicU64::new(0),
        }
    }
}

static SLOTS: [Slot; MAX_GUARDED] = [const { Slot::new() }; MAX_GUARDED];

/// The `SIGBUS` disposition found when the handler was installed.
struct Previous(UnsafeCell<MaybeUninit<libc::sigaction>>);
// SAFETY: written once inside `INSTALL` before the handler that reads it exists;
// read-only afterwards.
unsafe impl Sync for Previous {}
static PREVIOUS: Previous = Previous(UnsafeCell::new(MaybeUninit::uninit()));
static INSTALL: Once = Once::new();
static INSTALL_ERROR: AtomicU64 = AtomicU64::new(0);

/// A range of this process's address space whose `SIGBUS` faults (pages a peer
/// removed from a shared file) are absorbed and counted instead of killing the
/// process. Dropping it ends the guard; drop it before unmapping the range.
#[derive(Debug)]
pub struct FaultGuard {
    // INVARIANT: SLOTS[slot] is LIVE (or BUSY in the handler) and ours until drop.
    slot: usize,
}

impl FaultGuard {
    /// Guards `base..base + len`, installing the process-wide handler on first use.
    ///
    /// # Safety
    /// `base..base + len` is a mapping owned by the caller, not unmapped or
    /// remapped before the guard drops, whose contents may be replaced by zeros at
    /// any moment (nothing holds Rust references into it).
    pub unsafe fn new(base: *mut u8, len: usize) -> io::Result<FaultGuard> {
        install()?;
        for (index, slot) in SLOTS.iter().enumerate() {
            if slot.state.compare_exchange(FREE, BUSY, Ordering::Acquire, Ordering::Relaxed).is_ok() {
                slot.base.store(base as usize, Ordering::Relaxed);
                slot.len.store(len, Ordering::Relaxed);
                slot.faults.store(0, Ordering::Relaxed);
                slot.state.store(LIVE, Ordering::Release);
                return Ok(FaultGuard { slot: index });
            }
        }
        Err(io::Error::other(format!("more than {MAX_GUARDED} guarded mappings")))
    }

    /// How many times the range lost pages under us (0 while the peer behaves).
    pub fn faults(&self) -> u64 {
        SLOTS[self.slot].faults.load(Ordering::Acquire)
    }
}

impl Drop for FaultGuard {
    fn drop(&mut self) {
        let slot = &SLOTS[self.slot];
        // A handler repairing the range right now holds it BUSY for one mmap call.
        while slot.state.compare_exchange(LIVE, FREE, Ordering::AcqRel, Ordering::Relaxed).is_err() {
            std::hint::spin_loop();
        }
    }
}

fn install() -> io::Result<()> {
    INSTALL.call_once(|| {
        // SAFETY: sigaction with valid in/out pointers; PREVIOUS is written here,
        // once, before our handler (its only reader) is installed by this very call.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_sigbus as *const () as usize;
            action.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
            libc::sigemptyset(&mut action.sa_mask);
            let previous = (*PREVIOUS.0.get()).as_mut_ptr();
            if libc::sigaction(libc::SIGBUS, &action, previous) != 0 {
                let errno = io::Error::last_os_error().raw_os_error().unwrap_or(libc::EINVAL);
                INSTALL_ERROR.store(errno as u64 | 1 << 32, Ordering::Release);
            }
        }
    });
    match INSTALL_ERROR.load(Ordering::Acquire) {
        0 => Ok(()),
        e => Err(io::Error::from_raw_os_error((e & 0xffff_ffff) as i32)),
    }
}

/// The `SIGBUS` handler. Only async-signal-safe work: atomics, one `mmap`, and
/// the previous handler.
extern "C" fn on_sigbus(signal: libc::c_int, info: *mut libc::siginfo_t, context: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo for SA_SIGINFO handlers.
    let addr = unsafe { (*info).si_addr() } as usize;
    for slot in &SLOTS {
        if slot.state.load(Ordering::Acquire) != LIVE {
            continue;
        }
        let (base, len) = (slot.base.load(Ordering::Relaxed), slot.len.load(Ordering::Relaxed));
        if addr < base || addr - base >= len {
            continue;
        }
        if slot.state.compare_exchange(LIVE, BUSY, Ordering::Acquire, Ordering::Relaxed).is_err() {
            // Another thread is repairing this range: return and fault again, by
            // then onto the new memory.
            return;
        }
        // SAFETY: base..base + len is the guarded mapping (FaultGuard::new's
        // contract: nothing unmaps it while the guard, and so this LIVE slot,
        // exists). Replacing it in place with anonymous memory keeps every address
        // valid; its users only ever see bytes change, as a peer could make them.
        // mmap is a plain system call, safe to make from a signal handler.
        let replaced = unsafe {
            libc::mmap(
                base as *mut libc::c_void,
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
                -1,
                0,
            )
        };
        let repaired = replaced != libc::MAP_FAILED;
        if repaired {
            slot.faults.fetch_add(1, Ordering::AcqRel);
        }
        slot.state.store(LIVE, Ordering::Release);
        if repaired {
            return;
        }
        break;
    }
    // SAFETY: PREVIOUS was filled before this handler was installed.
    unsafe { chain(signal, info, context) }
}

/// Passes a `SIGBUS` that is not ours to the disposition found at install time.
///
/// # Safety
/// Called from the `SIGBUS` handler with its arguments, after `install`.
unsafe fn chain(signal: libc::c_int, info: *mut libc::siginfo_t, context: *mut libc::c_void) {
    // SAFETY: written once before the handler existed (caller's contract).
    let previous = unsafe { (*PREVIOUS.0.get()).assume_init_ref() };
    let handler = previous.sa_sigaction;
    if handler == libc::SIG_DFL || handler == libc::SIG_IGN {
        // Back to the default action; returning runs the access again, which
        // faults again and ends the process as if we had never been here.
        // SAFETY: signal(2) is async-signal-safe.
        unsafe { libc::signal(libc::SIGBUS, libc::SIG_DFL) };
    } else if previous.sa_flags & libc::SA_SIGINFO != 0 {
        // SAFETY: a handler installed with SA_SIGINFO has this signature.
        let f: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) = unsafe { std::mem::transmute(handler) };
        f(signal, info, context);
    } else {
        // SAFETY: a handler installed without SA_SIGINFO has this signature.
        let f: extern "C" fn(libc::c_int) = unsafe { std::mem::transmute(handler) };
        f(signal);
    }
}
