//! Memory the application maps itself, made usable by DPDK and devices: external memory
//! registration and DMA mappings ([`ExtMem`]), physical addresses ([`virt2phy`]).

use std::ffi::c_void;
use std::ptr::NonNull;

use crate::{sys, Eal, Error};

/// A generic DPDK device (the `rte_device` behind a port, see [`crate::Port::device`]):
/// what memory is DMA-mapped for.
///
/// A device stays valid until it is unplugged (`rte_dev_remove`), which this layer does
/// not offer: an application that unplugs one with raw calls must first drop the
/// [`ExtMem`] values mapped for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Device(NonNull<sys::rte_device>);

// SAFETY: a handle passed back to DPDK's thread-safe device calls only.
unsafe impl Send for Device {}
// SAFETY: as above.
unsafe impl Sync for Device {}

impl Device {
    /// A device from DPDK's pointer (null: None).
    pub(crate) fn from_ptr(dev: *mut sys::rte_device) -> Option<Device> {
        NonNull::new(dev).map(Device)
    }

    /// The raw device.
    pub fn as_ptr(self) -> *mut sys::rte_device {
        self.0.as_ptr()
    }
}

/// Memory mapped by the application, registered with DPDK as external memory
/// (`rte_extmem_register`) and optionally DMA-mapped for devices with IOVA = VA
/// ([`ExtMem::dma_map`]). Dropping it unmaps it from every device, then unregisters it.
/// It holds EAL alive.
pub struct ExtMem {
    base: NonNull<u8>,
    len: usize,
    dma: Vec<Device>,
    _eal: Eal,
}

// SAFETY: the address is only passed back to DPDK (thread-safe registration calls); the
// memory itself is the owner's.
unsafe impl Send for ExtMem {}
// SAFETY: as above; `&ExtMem` offers no call into DPDK.
unsafe impl Sync for ExtMem {}

impl ExtMem {
    /// Registers `len` bytes at `base`, made of pages of `page_size` bytes, as external
    /// memory (with unknown IOVAs, as `rte_extmem_register` with no IOVA table). Fails
    /// with `ENODEV` when EAL is not initialised.
    ///
    /// # Safety
    /// `base..base + len` is memory the caller mapped, that stays mapped
    /// until the returned value drops, and that the caller accesses as memory a device
    /// may read and write at any time (once [`ExtMem::dma_map`]ped).
    pub unsafe fn register(base: *mut u8, len: usize, page_size: usize) -> Result<ExtMem, Error> {
        const CALL: &str = "rte_extmem_register";
        let eal = Eal::require(CALL)?;
        let base = NonNull::new(base).ok_or(Error::new(CALL, libc::EINVAL))?;
        // SAFETY: the range is mapped per this function's contract; EAL is held.
        let rc = unsafe { sys::rte_extmem_register(base.as_ptr() as *mut c_void, len, std::ptr::null_mut(), 0, page_size) };
        if rc != 0 {
            return Err(Error::from_rte_errno(CALL));
        }
        Ok(ExtMem { base, len, dma: Vec::new(), _eal: eal })
    }

    /// DMA-maps the memory for `device` with IOVA = VA (`rte_dev_dma_map`); undone on
    /// drop. Devices that DMA to virtual addresses need nothing, and answer `ENOTSUP`.
    pub fn dma_map(&mut self, device: Device) -> Result<(), Error> {
        let base = self.base.as_ptr() as *mut c_void;
        // SAFETY: the memory is registered and mapped until self drops, which unmaps it
        // from the device first; the device is valid (see `Device`).
        let rc = unsafe { sys::rte_dev_dma_map(device.as_ptr(), base, base as u64, self.len) };
        if rc != 0 {
            return Err(Error::from_rte_errno("rte_dev_dma_map"));
        }
        self.dma.push(device);
        Ok(())
    }

    /// The start of the memory.
    pub fn base(&self) -> *mut u8 {
        self.base.as_ptr()
    }

    /// Its length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The devices it is DMA-mapped for.
    pub fn dma_devices(&self) -> &[Device] {
        &self.dma
    }
}

impl Drop for ExtMem {
    fn drop(&mut self) {
        let base = self.base.as_ptr() as *mut c_void;
        for dev in self.dma.drain(..).rev() {
            // SAFETY: undoes a successful `dma_map` of this memory for `dev`.
            unsafe { sys::rte_dev_dma_unmap(dev.as_ptr(), base, base as u64, self.len) };
        }
        // SAFETY: undoes `register`, while the memory is still mapped (the owner's
        // contract) and EAL alive (`_eal` drops after this).
        unsafe { sys::rte_extmem_unregister(base, self.len) };
    }
}

impl std::fmt::Debug for ExtMem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExtMem").field("base", &self.base).field("len", &self.len).field("dma", &self.dma).finish()
    }
}

/// The physical address of the byte at `addr` in this process (`rte_mem_virt2phy`, from
/// `/proc/self/pagemap`), or `RTE_BAD_IOVA` (`u64::MAX`) when it cannot be known (no
/// privilege, page not present). Nothing is read at `addr` itself.
pub fn virt2phy(addr: *const u8) -> u64 {
    // SAFETY: the call only looks `addr` up in /proc/self/pagemap; it never dereferences it.
    unsafe { sys::rte_mem_virt2phy(addr as *const c_void) }
}
