//! Packets between two lcores of one process over a DPDK ring (`rte_ring`), single
//! producer and single consumer: [`mbuf_ring`] makes the ring and returns its two ends,
//! a [`RingProducer`] and a [`RingConsumer`]. Each end is one value that moves to its
//! thread, and its calls take `&mut self`: the ring's single-producer and
//! single-consumer mode (no atomic read-modify-write on its indices) is then sound by
//! construction. Packets still in the ring when both ends are gone are freed.

use std::ffi::CString;
use std::ptr::NonNull;
use std::sync::Arc;

use crate::{sys, Eal, Error, MbufBurst};

// INVARIANT: `r` is a ring made by `mbuf_ring` with RING_F_SP_ENQ | RING_F_SC_DEQ, whose
// entries are owned packets (each satisfies `Mbuf`'s invariant); at most one
// `RingProducer` and one `RingConsumer` use it.
struct RingInner {
    r: NonNull<sys::rte_ring>,
    _eal: Eal,
}

// SAFETY: the ring is shared memory made for two threads; the one-producer,
// one-consumer rule is kept by the two end types, which are not Clone.
unsafe impl Send for RingInner {}
// SAFETY: as above; `RingInner` itself offers no access to the ring.
unsafe impl Sync for RingInner {}

impl Drop for RingInner {
    fn drop(&mut self) {
        // Both ends are gone: this thread is the ring's only user.
        let mut left = MbufBurst::<64>::new();
        while RingConsumer::dequeue_into(self.r, &mut left, 64) > 0 {
            left.clear();
        }
        // SAFETY: made by rte_ring_create; nothing uses it any more; EAL lives (`_eal`).
        unsafe { sys::rte_ring_free(self.r.as_ptr()) };
    }
}

/// The end of a [`mbuf_ring`] that puts packets in.
pub struct RingProducer {
    inner: Arc<RingInner>,
}

/// The end of a [`mbuf_ring`] that takes packets out.
pub struct RingConsumer {
    inner: Arc<RingInner>,
}

/// Makes a ring named `name` (unique in the process) that holds exactly `count`
/// packets, single producer and single consumer, on NUMA `socket`. Fails with `ENODEV`
/// without EAL, `EINVAL` for a bad name or count, `EEXIST` for a name in use.
pub fn mbuf_ring(name: &str, count: u32, socket: i32) -> Result<(RingProducer, RingConsumer), Error> {
    const CALL: &str = "rte_ring_create";
    let eal = Eal::require(CALL)?;
    let cname = CString::new(name).map_err(|_| Error::new(CALL, libc::EINVAL))?;
    let flags = sys::RING_F_SP_ENQ | sys::RING_F_SC_DEQ | sys::RING_F_EXACT_SZ;
    // SAFETY: valid arguments; EAL is initialised (held by `eal`); the ring is owned by
    // the returned ends.
    let r = unsafe { sys::rte_ring_create(cname.as_ptr(), count, socket, flags) };
    let r = NonNull::new(r).ok_or_else(|| Error::from_rte_errno(CALL))?;
    let inner = Arc::new(RingInner { r, _eal: eal });
    Ok((RingProducer { inner: inner.clone() }, RingConsumer { inner }))
}

impl RingProducer {
    /// Moves packets from the front of `burst` into the ring, as many as fit; those
    /// that do not stay in the burst, moved to its front. Returns how many went in and
    /// the room left in the ring after them.
    #[inline]
    pub fn enqueue_burst<const N: usize>(&mut self, burst: &mut MbufBurst<N>) -> (usize, u32) {
        let mut free = 0u32;
        if burst.is_empty() {
            return (0, self.free_count());
        }
        // SAFETY: this end is the ring's only producer (`&mut self`, not Clone); the
        // burst's first `len` pointers are owned packets, and the ring owns the first
        // `n` of them afterwards.
        let n = unsafe {
            sys::rte_ring_sp_enqueue_burst(
                self.inner.r.as_ptr(),
                burst.head_ptr() as *const *mut std::ffi::c_void,
                burst.len() as u32,
                &mut free,
            )
        } as usize;
        burst.consumed(n);
        (n, free)
    }

    /// Room in the ring now (the consumer may make more at any time).
    #[inline]
    pub fn free_count(&self) -> u32 {
        // SAFETY: reads the ring's indices.
        unsafe { sys::rte_ring_free_count(self.inner.r.as_ptr()) }
    }
}

impl RingConsumer {
    /// Takes up to `max` packets out of the ring into the room left in `burst`;
    /// returns how many.
    #[inline]
    pub fn dequeue_burst<const N: usize>(&mut self, burst: &mut MbufBurst<N>, max: usize) -> usize {
        // `&mut self`: this end is the ring's only consumer.
        Self::dequeue_into(self.inner.r, burst, max)
    }

    /// The dequeue of the ring's only consumer (an end, or the drop of the ring).
    #[inline]
    fn dequeue_into<const N: usize>(r: NonNull<sys::rte_ring>, burst: &mut MbufBurst<N>, max: usize) -> usize {
        let room = burst.room().min(max);
        if room == 0 {
            return 0;
        }
        // SAFETY: the caller is the ring's only consumer; room for `room` pointers at the
        // burst's tail; the ring holds owned packets, which the burst owns afterwards.
        unsafe {
            let n = sys::rte_ring_sc_dequeue_burst(
                r.as_ptr(),
                burst.tail_ptr() as *mut *mut std::ffi::c_void,
                room as u32,
                std::ptr::null_mut(),
            ) as usize;
            burst.add_tail(n.min(room));
            n
        }
    }
}
