//! The shared region of one guest: a sealed memfd (hugepages when the system has them),
//! mapped here, laid out and initialised by the proxy before the guest sees it. The
//! proxy writes only the header and rings; the rest of a region of normal pages is
//! the guest's to allocate (`shm_contract::mem::create_region_memfd`), checked before
//! a pool is accepted in it ([`GuestRegion::check_allocated`]).

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use dpdk::{Device, ExtMem};
use shm_contract::layout::StatusBlock;
use shm_contract::mem::{allocated_bytes, create_region_memfd, inspect_region_fd, is_fully_allocated, punch_hole, Mapping, RegionBacking};
use shm_contract::{DescRing, RegionFlags, RegionLayout, SharedMem};

/// What a guest asked for, already bounded by the proxy's limits.
pub struct RegionRequest {
    pub size: u64,
    pub rx_entries: u32,
    pub tx_entries: u32,
    /// Rx/tx ring pairs: the queue pairs the socket offers.
    pub queue_pairs: u32,
    pub try_hugepages: bool,
}

pub struct GuestRegion {
    pub memfd: OwnedFd,
    /// The region registered as external memory (and DMA-mapped for the NIC); declared
    /// before `mapping`, so that it is unregistered before the mapping goes away.
    extmem: Option<ExtMem>,
    mapping: Mapping,
    pub layout: RegionLayout,
    pub hugepages: bool,
}

impl GuestRegion {
    /// Creates, maps and initialises a region: header, empty rings, status block.
    pub fn create(name: &str, req: &RegionRequest) -> Result<GuestRegion, String> {
        let (memfd, backing) =
            create_region_memfd(name, req.size, req.try_hugepages).map_err(|e| format!("cannot create the region memfd: {e}"))?;
        Self::lay_out(memfd, backing, req)
    }

    /// Takes over the region memfd of a reattaching guest (made by an earlier proxy,
    /// still holding the guest's pools). The fd must be what `create` would have made:
    /// exactly `req.size` bytes, sealed against shrinking and growing (so the guest can
    /// never make an access of ours fault), with a page size that divides it. Nothing
    /// in it is trusted: the header is written again from `req` and both descriptor
    /// rings are zeroed, exactly as for a new region; pools come back through `PoolAdd`
    /// and its validation.
    pub fn adopt(memfd: OwnedFd, backing: RegionBacking, req: &RegionRequest) -> Result<GuestRegion, String> {
        Self::lay_out(memfd, backing, req)
    }

    /// What [`adopt`](Self::adopt) requires of a reattaching guest's fd, checked while
    /// the fd is still the guest's (a refused one is closed by the reaper): its seals
    /// first, which only a memfd has, so nothing else is asked of another kind of file.
    pub fn inspect(memfd: BorrowedFd<'_>, req: &RegionRequest) -> Result<RegionBacking, String> {
        inspect_region_fd(memfd, req.size).map_err(|e| e.to_string())
    }

    fn lay_out(memfd: OwnedFd, backing: RegionBacking, req: &RegionRequest) -> Result<GuestRegion, String> {
        let flags = if backing.hugepages { RegionFlags::HUGEPAGES } else { RegionFlags::empty() };
        let layout = RegionLayout::with_queue_pairs(
            backing.size,
            backing.page_size,
            req.rx_entries,
            req.tx_entries,
            req.queue_pairs,
            flags,
        )
        .map_err(|e| format!("cannot lay out the region: {e}"))?;
        let len = usize::try_from(backing.size).map_err(|_| "region too large".to_string())?;
        // Guarded: a guest punching holes in its memfd must not end the proxy with a
        // SIGBUS (see shm_contract::fault); housekeeping drops it instead.
        let mapping = Mapping::map_guarded(memfd.as_fd(), len).map_err(|e| format!("cannot map the region: {e}"))?;
        let mem = mapping.mem();
        layout.write_header(&mem).map_err(|e| format!("cannot write the region header: {e}"))?;
        for (rx, tx) in (0..layout.queue_pairs()).filter_map(|pair| layout.rings_of(pair)) {
            DescRing::init(&mem, rx).map_err(|e| format!("rx ring: {e}"))?;
            DescRing::init(&mem, tx).map_err(|e| format!("tx ring: {e}"))?;
        }
        Ok(GuestRegion { memfd, extmem: None, mapping, layout, hugepages: backing.hugepages })
    }

    /// Whether the guest allocated its region (see `shm_contract::client::map_region`),
    /// so that the proxy's accesses to a pool in it (its free ring, its buffers'
    /// headers) can never allocate a page: never on the proxy's CPU nor in its memory,
    /// and never fail for lack of memory. Otherwise the reason of the refusal, which
    /// says what to do. A hugetlb region was allocated whole by the proxy
    /// (`create_region_memfd`; an adopted one by the proxy before it).
    pub fn check_allocated(&self) -> Result<(), String> {
        if self.hugepages {
            return Ok(());
        }
        let size = self.mapping.len() as u64;
        match is_fully_allocated(self.memfd.as_fd(), size) {
            Ok(true) => Ok(()),
            Ok(false) => Err(format!(
                "the region is not allocated ({} of its {} bytes are): a guest allocates its whole region after \
                 mapping it (fallocate of the region memfd, as shm_contract::client::map_region does) before it \
                 announces a pool",
                allocated_bytes(self.memfd.as_fd()).unwrap_or(0),
                size
            )),
            Err(e) => Err(format!("cannot tell whether the region is allocated: {e}")),
        }
    }

    /// Frees the pages of `[offset, offset + len)` (a hole punched in the memfd): for a
    /// region whose guest is gone, its memory freed a step at a time (control/release.rs).
    pub fn punch(&self, offset: u64, len: u64) -> std::io::Result<()> {
        punch_hole(self.memfd.as_fd(), offset, len)
    }

    /// Unregisters the region as external memory (and its DMA mapping) before its
    /// pages are freed: nothing may DMA into pages that are gone.
    pub fn unregister_dma(&mut self) {
        drop(self.extmem.take());
    }

    /// Registers the region as external memory and DMA-maps it for `device`, so that a
    /// physical NIC (VFIO; IOVA is always VA, see main.rs) can DMA into guest buffers.
    /// Virtual devices need neither; their "not supported" answers are fine.
    pub fn register_dma(&mut self, device: Option<Device>) -> Result<(), String> {
        // SAFETY: the mapping stays valid until self drops, and `extmem` (declared
        // before it) drops first; the region is shared memory that the proxy only
        // reads and writes through `SharedMem` (atomics, volatile copies), so a device
        // writing into it is no different from the guest doing so.
        let extmem = unsafe { ExtMem::register(self.mapping.as_ptr(), self.mapping.len(), self.layout.page_size() as usize) }
            .map_err(|e| e.to_string())?;
        let extmem = self.extmem.insert(extmem);
        if let Some(device) = device {
            match extmem.dma_map(device) {
                Err(e) if e.errno != libc::ENOTSUP => return Err(e.to_string()),
                _ => {}
            }
        }
        Ok(())
    }

    pub fn base(&self) -> *mut u8 {
        self.mapping.as_ptr()
    }

    /// The region's size in bytes.
    // Not a collection: a region is never empty (its layout is at least a page), so an
    // `is_empty` would always say false.
    #[allow(clippy::len_without_is_empty)]
    pub fn len(&self) -> usize {
        self.mapping.len()
    }

    /// Non-zero once the guest made pages of its region vanish (a hole punched in
    /// the memfd that could not be filled again): the region reads as zeros from
    /// then on, and the guest must go.
    pub fn lost_pages(&self) -> u64 {
        self.mapping.lost_pages()
    }

    pub fn mem(&self) -> SharedMem<'_> {
        self.mapping.mem()
    }

    /// A `'static` view, for objects that also hold an `Arc<GuestRegion>`.
    ///
    /// # Safety
    /// The caller keeps the region alive for as long as it uses the view.
    pub unsafe fn mem_static(&self) -> SharedMem<'static> {
        // SAFETY: valid for the mapping's length until self drops (caller's contract).
        unsafe { SharedMem::from_raw(self.mapping.as_ptr(), self.mapping.len()) }
    }

    pub fn status(&self) -> Option<StatusBlock<'_>> {
        StatusBlock::from_layout(&self.mapping.mem(), &self.layout).ok()
    }

    /// The IOVA a device uses for `addr` inside the region: its virtual address (the
    /// proxy refuses IOVA as physical addresses: docs/threat-model.md, "Least privilege").
    pub fn iova_of(&self, addr: *const u8) -> u64 {
        addr as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shm_contract::mem::allocate_region;

    #[test]
    fn a_pool_is_refused_until_the_guest_allocated_its_region() {
        let req = RegionRequest { size: 4 << 20, rx_entries: 256, tx_entries: 256, queue_pairs: 1, try_hugepages: false };
        let region = GuestRegion::create("check-allocated", &req).unwrap();
        // The proxy wrote the header and rings: those pages alone are allocated.
        let written = allocated_bytes(region.memfd.as_fd()).unwrap();
        assert!(written > 0 && written < req.size, "{written}");
        let reason = region.check_allocated().unwrap_err();
        assert!(reason.contains("the region is not allocated") && reason.contains("fallocate"), "{reason}");
        allocate_region(region.memfd.as_fd(), req.size).unwrap();
        region.check_allocated().unwrap();
        // A page given back: refused again.
        punch_hole(region.memfd.as_fd(), req.size - 4096, 4096).unwrap();
        assert!(region.check_allocated().is_err());
    }
}
