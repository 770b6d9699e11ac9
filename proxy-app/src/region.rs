//! The shared region of one guest: a sealed memfd (hugepages when the system has them),
//! mapped here, laid out and initialised by the proxy before the guest sees it.

use std::os::fd::{AsFd, OwnedFd};

use dpdk::sys;
use shm_contract::layout::StatusBlock;
use shm_contract::mem::{create_region_memfd, inspect_region_fd, Mapping, RegionBacking};
use shm_contract::{DescRing, RegionFlags, RegionLayout, SharedMem};

/// What a guest asked for, already bounded by the proxy's limits.
pub struct RegionRequest {
    pub size: u64,
    pub rx_entries: u32,
    pub tx_entries: u32,
    pub try_hugepages: bool,
}

pub struct GuestRegion {
    pub memfd: OwnedFd,
    mapping: Mapping,
    pub layout: RegionLayout,
    pub hugepages: bool,
    iova_is_va: bool,
    /// The region is registered as external memory (and DMA-mapped for `dma_device`).
    extmem: bool,
    dma_device: Option<*mut sys::rte_device>,
}

// SAFETY: the device pointer is only used to unmap, on drop; the mapping is plain memory.
unsafe impl Send for GuestRegion {}
// SAFETY: as above.
unsafe impl Sync for GuestRegion {}

impl GuestRegion {
    /// Creates, maps and initialises a region: header, empty rings, status block.
    pub fn create(name: &str, req: &RegionRequest, iova_is_va: bool) -> Result<GuestRegion, String> {
        let (memfd, backing) =
            create_region_memfd(name, req.size, req.try_hugepages).map_err(|e| format!("cannot create the region memfd: {e}"))?;
        Self::lay_out(memfd, backing, req, iova_is_va)
    }

    /// Takes over the region memfd of a reattaching guest (made by an earlier proxy,
    /// still holding the guest's pools). The fd must be what `create` would have made:
    /// exactly `req.size` bytes, sealed against shrinking and growing (so the guest can
    /// never make an access of ours fault), with a page size that divides it. Nothing
    /// in it is trusted: the header is written again from `req` and both descriptor
    /// rings are zeroed, exactly as for a new region; pools come back through `PoolAdd`
    /// and its validation.
    pub fn adopt(memfd: OwnedFd, req: &RegionRequest, iova_is_va: bool) -> Result<GuestRegion, String> {
        let backing = inspect_region_fd(memfd.as_fd(), req.size).map_err(|e| e.to_string())?;
        Self::lay_out(memfd, backing, req, iova_is_va)
    }

    fn lay_out(memfd: OwnedFd, backing: RegionBacking, req: &RegionRequest, iova_is_va: bool) -> Result<GuestRegion, String> {
        let flags = if backing.hugepages { RegionFlags::HUGEPAGES } else { RegionFlags::empty() };
        let layout = RegionLayout::new(backing.size, backing.page_size, req.rx_entries, req.tx_entries, flags)
            .map_err(|e| format!("cannot lay out the region: {e}"))?;
        let len = usize::try_from(backing.size).map_err(|_| "region too large".to_string())?;
        // Guarded: a guest punching holes in its memfd must not end the proxy with a
        // SIGBUS (see shm_contract::fault); housekeeping drops it instead.
        let mapping = Mapping::map_guarded(memfd.as_fd(), len).map_err(|e| format!("cannot map the region: {e}"))?;
        let mem = mapping.mem();
        layout.write_header(&mem).map_err(|e| format!("cannot write the region header: {e}"))?;
        DescRing::init(&mem, layout.rx_ring()).map_err(|e| format!("rx ring: {e}"))?;
        DescRing::init(&mem, layout.tx_ring()).map_err(|e| format!("tx ring: {e}"))?;
        Ok(GuestRegion {
            memfd,
            mapping,
            layout,
            hugepages: backing.hugepages,
            iova_is_va,
            extmem: false,
            dma_device: None,
        })
    }

    /// Registers the region as external memory and DMA-maps it for `device`, so that a
    /// physical NIC (VFIO, IOVA as VA) can DMA into guest buffers. Virtual devices need
    /// neither; their "not supported" answers are fine.
    pub fn register_dma(&mut self, device: *mut sys::rte_device) -> Result<(), String> {
        let base = self.mapping.as_ptr() as *mut std::ffi::c_void;
        let len = self.mapping.len();
        // SAFETY: the mapping is valid for `len` bytes until self drops, where it is
        // unregistered first.
        unsafe {
            let rc = sys::rte_extmem_register(base, len, std::ptr::null_mut(), 0, self.layout.page_size() as usize);
            if rc != 0 {
                return Err(format!("rte_extmem_register: {}", dpdk::errno_text(sys::dpdk_sys_errno())));
            }
            self.extmem = true;
            if !device.is_null() && self.iova_is_va {
                let rc = sys::rte_dev_dma_map(device, base, base as u64, len);
                if rc == 0 {
                    self.dma_device = Some(device);
                } else {
                    let errno = sys::dpdk_sys_errno();
                    if errno != libc::ENOTSUP {
                        return Err(format!("rte_dev_dma_map: {}", dpdk::errno_text(errno)));
                    }
                }
            }
        }
        Ok(())
    }

    pub fn base(&self) -> *mut u8 {
        self.mapping.as_ptr()
    }

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

    /// The IOVA a device uses for `addr` inside the region.
    pub fn iova_of(&self, addr: *const u8) -> u64 {
        if self.iova_is_va {
            addr as u64
        } else {
            // SAFETY: addr lies in our mapping; the call reads /proc/self/pagemap.
            unsafe { sys::rte_mem_virt2phy(addr as *const std::ffi::c_void) }
        }
    }
}

impl Drop for GuestRegion {
    fn drop(&mut self) {
        let base = self.mapping.as_ptr() as *mut std::ffi::c_void;
        let len = self.mapping.len();
        // SAFETY: undoes exactly what register_dma did, before the mapping goes away.
        unsafe {
            if let Some(dev) = self.dma_device {
                sys::rte_dev_dma_unmap(dev, base, base as u64, len);
            }
            if self.extmem {
                sys::rte_extmem_unregister(base, len);
            }
        }
    }
}
