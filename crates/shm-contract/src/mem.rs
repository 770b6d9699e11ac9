//! Shared memory: a checked view of a mapping, owned mappings, and the sealed
//! memfd that backs a region.
//!
//! Memory that another process writes is never reached through a Rust reference
//! to a non-atomic type: [`SharedMem`] hands out `&AtomicU32`/`&AtomicU64`
//! (which may legitimately change under us) and copies bytes in and out with
//! volatile accesses, after which the copy is validated.

use std::ffi::CString;
use std::fmt;
use std::io;
use std::marker::PhantomData;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, AtomicU64};

use crate::fault::FaultGuard;
use crate::layout::MAX_REGION_SIZE;

/// A bounds or alignment violation when reaching into a [`SharedMem`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemError {
    /// `[offset, offset + size)` does not fit in the `len` bytes of the mapping.
    OutOfBounds {
        /// Requested start.
        offset: usize,
        /// Requested size in bytes.
        size: usize,
        /// Size of the mapping.
        len: usize,
    },
    /// The address `base + offset` is not aligned to `align` bytes.
    Misaligned {
        /// Requested start.
        offset: usize,
        /// Required alignment.
        align: usize,
    },
}

impl fmt::Display for MemError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            MemError::OutOfBounds { offset, size, len } => write!(
                f,
                "shared memory: {size} bytes at offset {offset} exceed the {len}-byte mapping"
            ),
            MemError::Misaligned { offset, align } => write!(
                f,
                "shared memory: offset {offset} is not {align}-byte aligned"
            ),
        }
    }
}

impl std::error::Error for MemError {}

/// A non-owning view of `len` bytes of shared memory starting at `base`.
///
/// It is `Copy`: copies are views of the same memory. Every accessor checks
/// bounds and alignment and returns a [`MemError`] instead of panicking; the
/// lifetime `'a` is the lifetime of the mapping it views.
#[derive(Clone, Copy)]
pub struct SharedMem<'a> {
    // INVARIANT: `base..base + len` is readable and writable memory for `'a`,
    // accessed in this process only through atomics and volatile copies
    // (promised by the caller of `from_raw`).
    base: *mut u8,
    len: usize,
    _mapping: PhantomData<&'a [AtomicU64]>,
}

// SAFETY: a `SharedMem` is a pointer and a length; everything it gives access to
// is atomics or volatile copies, which any thread may perform concurrently.
unsafe impl Send for SharedMem<'_> {}
// SAFETY: as above: shared access from several threads goes through atomics or
// volatile copies only.
unsafe impl Sync for SharedMem<'_> {}

impl fmt::Debug for SharedMem<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedMem")
            .field("base", &self.base)
            .field("len", &self.len)
            .finish()
    }
}

impl<'a> SharedMem<'a> {
    /// Makes a view of `len` bytes at `base`.
    ///
    /// # Safety
    ///
    /// * `base..base + len` must be valid for reads and writes for the whole of
    ///   `'a` (a live mapping, an allocation that outlives the view), and must not
    ///   be unmapped or freed while this view, a copy of it, or anything obtained
    ///   from it (atomics, ring views, status block) is still in use.
    /// * Within this process, that memory must be accessed only through atomics
    ///   or volatile accesses (never through `&`/`&mut` to plain data) while the
    ///   view is in use. Other processes may write it arbitrarily: that is what
    ///   the checked accessors are for.
    /// * If `len > 0`, `base` must not be null.
    #[inline]
    pub unsafe fn from_raw(base: *mut u8, len: usize) -> SharedMem<'a> {
        SharedMem {
            base,
            len,
            _mapping: PhantomData,
        }
    }

    /// The first byte of the view.
    #[inline]
    pub fn base(&self) -> *mut u8 {
        self.base
    }

    /// The size of the view in bytes.
    #[inline]
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the view is empty.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The view of `len` bytes at `offset` of this one (a part of the same memory,
    /// with bounds of its own), e.g. one region-sized window of a larger allocation.
    pub fn sub(&self, offset: usize, len: usize) -> Result<SharedMem<'a>, MemError> {
        let ptr = self.checked_ptr(offset, len, 1)?;
        // SAFETY: `ptr..ptr + len` lies inside this view (checked above), so it is
        // valid for `'a` and accessed under the same rules as the whole.
        Ok(unsafe { SharedMem::from_raw(ptr, len) })
    }

    /// Checks that `[offset, offset + size)` is inside the view and that
    /// `base + offset` is `align`-aligned; returns that address.
    #[inline]
    fn checked_ptr(&self, offset: usize, size: usize, align: usize) -> Result<*mut u8, MemError> {
        let fits = offset
            .checked_add(size)
            .is_some_and(|end| end <= self.len);
        if !fits {
            return Err(MemError::OutOfBounds {
                offset,
                size,
                len: self.len,
            });
        }
        // `wrapping_add` keeps this free of pointer-arithmetic preconditions; the
        // bounds check above makes it an in-bounds address anyway.
        let ptr = self.base.wrapping_add(offset);
        if !(ptr as usize).is_multiple_of(align) {
            return Err(MemError::Misaligned { offset, align });
        }
        Ok(ptr)
    }

    /// The `AtomicU32` at `offset` (must be in bounds and 4-byte aligned).
    #[inline]
    pub fn atomic_u32(&self, offset: usize) -> Result<&'a AtomicU32, MemError> {
        let ptr = self.checked_ptr(offset, 4, std::mem::align_of::<AtomicU32>())?;
        // SAFETY: the pointer is in bounds and aligned (checked above), the memory
        // is valid for `'a` and only ever accessed atomically or volatilely in this
        // process (contract of `from_raw`); `AtomicU32` has the layout of `u32` and
        // every bit pattern is valid.
        Ok(unsafe { &*ptr.cast::<AtomicU32>() })
    }

    /// The `AtomicU64` at `offset` (must be in bounds and 8-byte aligned).
    #[inline]
    pub fn atomic_u64(&self, offset: usize) -> Result<&'a AtomicU64, MemError> {
        let ptr = self.checked_ptr(offset, 8, std::mem::align_of::<AtomicU64>())?;
        // SAFETY: as in `atomic_u32`: in bounds, aligned, valid for `'a`, accessed
        // only atomically; every bit pattern is a valid `AtomicU64`.
        Ok(unsafe { &*ptr.cast::<AtomicU64>() })
    }

    /// `count` consecutive `AtomicU64`s starting at `offset`.
    #[inline]
    pub fn atomic_u64_slice(&self, offset: usize, count: usize) -> Result<&'a [AtomicU64], MemError> {
        let size = count.checked_mul(8).ok_or(MemError::OutOfBounds {
            offset,
            size: usize::MAX,
            len: self.len,
        })?;
        let ptr = self.checked_ptr(offset, size, std::mem::align_of::<AtomicU64>())?;
        if count == 0 {
            return Ok(&[]);
        }
        // SAFETY: `count * 8` bytes from the aligned, non-null (len > 0 because
        // size > 0 fits) pointer are in bounds and valid for `'a`; they are only
        // accessed atomically; `count * 8 <= len <= isize::MAX` for any real
        // allocation or mapping.
        Ok(unsafe { std::slice::from_raw_parts(ptr.cast::<AtomicU64>(), count) })
    }

    /// Copies `dst.len()` bytes from `offset` into `dst` with volatile loads (whole
    /// aligned 8-byte words where it can, single bytes at the ends), so every byte
    /// is read exactly once and the copy can be validated without the memory
    /// changing behind the check.
    pub fn read_bytes(&self, offset: usize, dst: &mut [u8]) -> Result<(), MemError> {
        let ptr = self.checked_ptr(offset, dst.len(), 1)?;
        let (head, words, tail) = split_words(ptr, dst.len());
        for i in (0..head).chain(dst.len() - tail..dst.len()) {
            // SAFETY: `ptr + i` is inside the checked range, valid for reads;
            // volatile because another process may write this memory.
            dst[i] = unsafe { ptr.add(i).read_volatile() };
        }
        for (w, chunk) in dst[head..head + words * 8].chunks_exact_mut(8).enumerate() {
            // SAFETY: `ptr + head` is 8-aligned and `words` whole words from it lie
            // inside the checked range (`split_words`); volatile as above.
            let word = unsafe { ptr.add(head).cast::<u64>().add(w).read_volatile() };
            chunk.copy_from_slice(&word.to_ne_bytes());
        }
        Ok(())
    }

    /// Copies `src` to `offset` with volatile stores (aligned words where it can,
    /// bytes at the ends).
    pub fn write_bytes(&self, offset: usize, src: &[u8]) -> Result<(), MemError> {
        let ptr = self.checked_ptr(offset, src.len(), 1)?;
        let (head, words, tail) = split_words(ptr, src.len());
        for i in (0..head).chain(src.len() - tail..src.len()) {
            // SAFETY: `ptr + i` is inside the checked range, valid for writes;
            // volatile because another process may read this memory.
            unsafe { ptr.add(i).write_volatile(src[i]) };
        }
        for (w, chunk) in src[head..head + words * 8].chunks_exact(8).enumerate() {
            let word = u64::from_ne_bytes([chunk[0], chunk[1], chunk[2], chunk[3], chunk[4], chunk[5], chunk[6], chunk[7]]);
            // SAFETY: as in `read_bytes`: aligned words inside the checked range.
            unsafe { ptr.add(head).cast::<u64>().add(w).write_volatile(word) };
        }
        Ok(())
    }
}

/// Splits `len` bytes at `ptr` into a head of single bytes up to the first 8-byte
/// boundary, whole aligned words, and a tail of single bytes. (Word copies: byte
/// copies of a 4 KiB header page were most of a fuzz input's time under the
/// sanitizer, which checks every access.)
fn split_words(ptr: *mut u8, len: usize) -> (usize, usize, usize) {
    let head = ptr.align_offset(8).min(len);
    let words = (len - head) / 8;
    (head, words, len - head - words * 8)
}

/// A zeroed, 4096-byte aligned heap allocation viewed as shared memory.
///
/// For tests, fuzzing and tools that need a [`SharedMem`] without a memfd.
pub struct HeapMem {
    // INVARIANT: `ptr` was returned by `alloc_zeroed(layout)` and is freed only
    // in `Drop`; `layout.size() >= 1`; `len <= layout.size()`.
    ptr: NonNull<u8>,
    len: usize,
    layout: std::alloc::Layout,
}

// SAFETY: the allocation is owned and only reached through `SharedMem` views
// (atomics and volatile copies), which are thread-safe.
unsafe impl Send for HeapMem {}
// SAFETY: as above.
unsafe impl Sync for HeapMem {}

impl HeapMem {
    /// Alignment of the allocation (one normal page).
    pub const ALIGN: usize = 4096;

    /// Allocates `len` zeroed bytes (aborts on allocation failure, like `Vec`).
    pub fn new(len: usize) -> HeapMem {
        let layout = match std::alloc::Layout::from_size_align(len.max(1), Self::ALIGN) {
            Ok(layout) => layout,
            Err(_) => std::alloc::handle_alloc_error(std::alloc::Layout::new::<u8>()),
        };
        // SAFETY: `layout` has a non-zero size.
        let raw = unsafe { std::alloc::alloc_zeroed(layout) };
        let Some(ptr) = NonNull::new(raw) else {
            std::alloc::handle_alloc_error(layout)
        };
        HeapMem { ptr, len, layout }
    }

    /// A view of the allocation.
    pub fn mem(&self) -> SharedMem<'_> {
        // SAFETY: the allocation is valid for `len` bytes for as long as `self`
        // is borrowed, and this type never hands out non-atomic references to it.
        unsafe { SharedMem::from_raw(self.ptr.as_ptr(), self.len) }
    }

    /// Size in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the allocation is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Drop for HeapMem {
    fn drop(&mut self) {
        // SAFETY: `ptr` came from `alloc_zeroed(self.layout)` and is freed once.
        unsafe { std::alloc::dealloc(self.ptr.as_ptr(), self.layout) };
    }
}

/// An owned `MAP_SHARED`, read/write mapping of a file descriptor, unmapped on drop.
pub struct Mapping {
    // INVARIANT: `base..base + len` is a live mapping created by `mmap` in `map`,
    // unmapped only in `Drop`; `len > 0`.
    base: NonNull<u8>,
    len: usize,
    /// Absorbs `SIGBUS` from pages a peer removed ([`Mapping::map_guarded`]).
    guard: Option<FaultGuard>,
}

// SAFETY: the mapping is process-wide; it is only reached through `SharedMem`
// views (atomics, volatile copies).
unsafe impl Send for Mapping {}
// SAFETY: as above.
unsafe impl Sync for Mapping {}

impl fmt::Debug for Mapping {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Mapping")
            .field("base", &self.base)
            .field("len", &self.len)
            .finish()
    }
}

impl Mapping {
    /// Maps the first `len` bytes of `fd` shared and read/write.
    ///
    /// `len` must be non-zero (and, for hugetlb memory, a hugepage multiple).
    pub fn map(fd: BorrowedFd<'_>, len: usize) -> io::Result<Mapping> {
        if len == 0 {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "cannot map 0 bytes"));
        }
        // SAFETY: plain mmap syscall with a null hint; the result is checked.
        let raw = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if raw == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let base = NonNull::new(raw.cast::<u8>())
            .ok_or_else(|| io::Error::other("mmap returned a null mapping"))?;
        Ok(Mapping { base, len, guard: None })
    }

    /// As [`map`](Self::map), for memory a peer that is not trusted can also reach:
    /// if the peer punches a hole in the file and the pages cannot come back
    /// (hugetlb memory with no free hugepage), the `SIGBUS` this would raise is
    /// absorbed instead (the mapping's contents become zeros) and counted in
    /// [`lost_pages`](Self::lost_pages). See [`crate::fault`].
    pub fn map_guarded(fd: BorrowedFd<'_>, len: usize) -> io::Result<Mapping> {
        let mut mapping = Mapping::map(fd, len)?;
        // SAFETY: the mapping is ours until drop, which ends the guard before it
        // unmaps; it is only reached through `SharedMem` views and raw pointers,
        // never Rust references, so its bytes may change at any time.
        mapping.guard = Some(unsafe { FaultGuard::new(mapping.base.as_ptr(), len)? });
        Ok(mapping)
    }

    /// How many times pages of a guarded mapping vanished (the peer punched a
    /// hole in the file): after the first, the contents are gone and the peer
    /// should be dropped. Always 0 for an unguarded mapping.
    pub fn lost_pages(&self) -> u64 {
        self.guard.as_ref().map_or(0, FaultGuard::faults)
    }

    /// A view of the whole mapping, borrowed from it.
    pub fn mem(&self) -> SharedMem<'_> {
        // SAFETY: the mapping lives as long as `self` is borrowed, and this type
        // hands out nothing but `SharedMem` views.
        unsafe { SharedMem::from_raw(self.base.as_ptr(), self.len) }
    }

    /// First byte of the mapping.
    pub fn as_ptr(&self) -> *mut u8 {
        self.base.as_ptr()
    }

    /// Size of the mapping in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always false: a mapping is never empty.
    pub fn is_empty(&self) -> bool {
        false
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // The guard first: nobody may replace the range once it is unmapped.
        drop(self.guard.take());
        // SAFETY: `base..base + len` is the mapping created in `map`, unmapped once.
        // A failure can only mean a bad argument, which the invariant excludes.
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.len) };
    }
}

/// What backs a region memfd created by [`create_region_memfd`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RegionBacking {
    /// True for hugetlb memory.
    pub hugepages: bool,
    /// The page size of the backing (the hugepage size for hugetlb).
    pub page_size: u64,
    /// The size of the memfd: the requested size rounded up to `page_size`.
    pub size: u64,
}

/// The seals every region memfd carries: it can never shrink (a peer's access
/// beyond the end would fault) nor grow, and no seal can be added or removed.
pub const REGION_SEALS: libc::c_int = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL;

/// Creates the memfd that backs a region: hugetlb if `try_hugepages` and the
/// system can reserve them, normal shared memory otherwise; sized to a page
/// multiple and sealed with [`REGION_SEALS`]. Seals do not stop a peer from
/// punching holes: map it with [`Mapping::map_guarded`] where that peer is not
/// trusted.
///
/// Who allocates the pages: a hugetlb file is allocated here, whole (a hugepage is
/// reserved when it is allocated, from the pool the operator sized for the guests:
/// allocated now, no access can fail for lack of one later, and reserving them is
/// cheap, no zeroing of 4 KiB pages). A file of normal pages is not: the guest
/// allocates it ([`allocate_region`], in `client::map_region`) on its own CPU and in
/// its own memory cgroup; the creator touches only the pages it writes (header and
/// rings), and checks that the guest allocated it ([`is_fully_allocated`]) before it
/// relies on more.
pub fn create_region_memfd(
    name: &str,
    size: u64,
    try_hugepages: bool,
) -> io::Result<(OwnedFd, RegionBacking)> {
    let cname = CString::new(name)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "memfd name contains a NUL byte"))?;
    if size == 0 || size > MAX_REGION_SIZE {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("region size {size} not in 1..={MAX_REGION_SIZE}"),
        ));
    }
    if try_hugepages {
        if let Some(hugepage) = default_hugepage_size() {
            if let Some(rounded) = round_up(size, hugepage).filter(|&s| s <= MAX_REGION_SIZE) {
                // Any failure (no hugepages reserved, no sealing support on this
                // kernel, a different hugepage size than meminfo said) falls back
                // to normal pages: the fd is dropped, i.e. closed.
                if let Ok(fd) = create_sealed_memfd(&cname, rounded, libc::MFD_HUGETLB) {
                    if fd_block_size(fd.as_fd()).ok() == Some(hugepage) {
                        return Ok((
                            fd,
                            RegionBacking {
                                hugepages: true,
                                page_size: hugepage,
                                size: rounded,
                            },
                        ));
                    }
                }
            }
        }
    }
    let page = normal_page_size();
    let rounded = round_up(size, page)
        .filter(|&s| s <= MAX_REGION_SIZE)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "region size too large"))?;
    let fd = create_sealed_memfd(&cname, rounded, 0)?;
    Ok((
        fd,
        RegionBacking {
            hugepages: false,
            page_size: page,
            size: rounded,
        },
    ))
}

fn round_up(value: u64, align: u64) -> Option<u64> {
    value.checked_add(align - 1).map(|v| v / align * align)
}

fn normal_page_size() -> u64 {
    // SAFETY: sysconf has no memory-safety preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if page > 0 {
        page as u64
    } else {
        4096
    }
}

/// The default hugepage size from `/proc/meminfo` (what `MFD_HUGETLB` without
/// a size flag uses), or `None` if the system has none.
fn default_hugepage_size() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    parse_hugepage_size(&meminfo)
}

fn parse_hugepage_size(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("Hugepagesize:"))?;
    let mut words = line.split_whitespace().skip(1);
    let value: u64 = words.next()?.parse().ok()?;
    let unit = match words.next() {
        Some("kB") => 1024,
        Some("MB") => 1024 * 1024,
        Some("GB") => 1024 * 1024 * 1024,
        _ => return None,
    };
    value.checked_mul(unit).filter(|s| s.is_power_of_two())
}

fn fd_block_size(fd: BorrowedFd<'_>) -> io::Result<u64> {
    let st = fstat(fd)?;
    Ok(st.st_blksize as u64)
}

fn fstat(fd: BorrowedFd<'_>) -> io::Result<libc::stat> {
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: `st` is a valid out-pointer for one `struct stat`.
    let rc = unsafe { libc::fstat(fd.as_raw_fd(), st.as_mut_ptr()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fstat succeeded, so it filled the whole struct.
    Ok(unsafe { st.assume_init() })
}

/// A memfd of `size` bytes, sealed; a hugetlb one (`MFD_HUGETLB` in `extra_flags`) is
/// allocated whole here, one of normal pages is left to its guest
/// ([`create_region_memfd`]).
fn create_sealed_memfd(name: &CString, size: u64, extra_flags: libc::c_uint) -> io::Result<OwnedFd> {
    let flags = extra_flags | libc::MFD_ALLOW_SEALING | libc::MFD_CLOEXEC;
    // SAFETY: `name` is a valid NUL-terminated string.
    let raw = unsafe { libc::memfd_create(name.as_ptr(), flags) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: memfd_create returned a fresh descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let len = libc::off_t::try_from(size)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "region size too large"))?;
    // SAFETY: plain syscall on a descriptor we own.
    if unsafe { libc::ftruncate(fd.as_raw_fd(), len) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if extra_flags & libc::MFD_HUGETLB != 0 {
        fallocate(fd.as_fd(), 0, 0, size)?;
    }
    // SAFETY: plain fcntl on a descriptor we own.
    if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_ADD_SEALS, REGION_SEALS) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

/// `fallocate(2)` of `len` bytes at `offset` with `mode`, retried when interrupted.
fn fallocate(fd: BorrowedFd<'_>, mode: libc::c_int, offset: u64, len: u64) -> io::Result<()> {
    let too_large = || io::Error::new(io::ErrorKind::InvalidInput, "range too large");
    let offset = libc::off_t::try_from(offset).map_err(|_| too_large())?;
    let len = libc::off_t::try_from(len).map_err(|_| too_large())?;
    loop {
        // SAFETY: plain syscall on a borrowed descriptor; no memory is passed.
        if unsafe { libc::fallocate(fd.as_raw_fd(), mode, offset, len) } == 0 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// Allocates every page of a region memfd of `len` bytes (a guest does this right
/// after it mapped the region it was sent: see [`create_region_memfd`]), so that no
/// access to it can fault for lack of memory later, and so that the proxy accepts
/// pools in it ([`is_fully_allocated`]). The pages are zeroed on the caller's CPU and
/// charged to the caller's memory cgroup. Already allocated pages (a hugetlb region,
/// a region handed back on reattach) cost nothing again.
///
/// Fails with the kernel's error when the memory is not there: `ENOMEM` (the
/// caller's memory limit, or the machine's memory), `ENOSPC` (shared memory or
/// hugepages exhausted).
pub fn allocate_region(fd: BorrowedFd<'_>, len: u64) -> io::Result<()> {
    fallocate(fd, 0, 0, len)
}

/// Whether every page of the `size`-byte file `fd` is allocated memory (the file's
/// blocks, `st_blocks`, cover its size): reading or writing any of it cannot allocate a
/// page, neither on the caller's account nor for lack of memory.
///
/// Why the whole file and not a range with `lseek(SEEK_HOLE)`: shmem reports a page
/// that `fallocate` allocated but nobody wrote yet as a hole (it is not "uptodate"),
/// so a guest's freshly allocated region would read as all holes. `st_blocks` counts
/// every allocated page, written or not, swapped out or not; it is one `fstat`.
/// hugetlbfs does not count blocks the same way: a hugetlb region is allocated whole
/// when it is created, and is not asked.
pub fn is_fully_allocated(fd: BorrowedFd<'_>, size: u64) -> io::Result<bool> {
    Ok(allocated_bytes(fd)? >= size)
}

/// Frees the pages of `[offset, offset + len)` of `fd` (`fallocate` with
/// `FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE`): the file keeps its size and its
/// seals, the range reads as zeros afterwards (a mapping of it gets fresh pages when
/// touched). What freeing a region's memory in steps takes, rather than all of it at
/// the last close.
pub fn punch_hole(fd: BorrowedFd<'_>, offset: u64, len: u64) -> io::Result<()> {
    fallocate(fd, libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE, offset, len)
}

/// Bytes of memory a file holds (`st_blocks` in 512-byte units): what its allocated
/// pages take.
pub fn allocated_bytes(fd: BorrowedFd<'_>) -> io::Result<u64> {
    Ok(u64::try_from(fstat(fd)?.st_blocks).unwrap_or(0) * 512)
}

/// Why a received region fd is not acceptable.
#[derive(Debug)]
pub enum RegionFdError {
    /// `fstat` failed.
    Stat(io::Error),
    /// The descriptor is not a regular file (memfd).
    NotRegularFile,
    /// The file size is not the announced region size.
    SizeMismatch {
        /// Size announced by the peer.
        expected: u64,
        /// Size of the file.
        actual: u64,
    },
    /// `F_GET_SEALS` failed (the file does not support sealing: not a memfd).
    Seals(io::Error),
    /// The file can still shrink or grow.
    MissingSeals {
        /// The seals the file carries.
        seals: u32,
    },
    /// The file's page size is not a power of two at least the normal page size
    /// that divides its size.
    BadPageSize {
        /// The file's block size.
        page: u64,
    },
}

impl fmt::Display for RegionFdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RegionFdError::Stat(e) => write!(f, "region fd: fstat failed: {e}"),
            RegionFdError::NotRegularFile => write!(f, "region fd: not a regular file"),
            RegionFdError::SizeMismatch { expected, actual } => write!(
                f,
                "region fd: size is {actual} bytes, the peer announced {expected}"
            ),
            RegionFdError::Seals(e) => write!(f, "region fd: cannot read seals (not a memfd?): {e}"),
            RegionFdError::MissingSeals { seals } => write!(
                f,
                "region fd: seals {seals:#x} lack F_SEAL_SHRINK|F_SEAL_GROW, the file could be truncated under us"
            ),
            RegionFdError::BadPageSize { page } => {
                write!(f, "region fd: page size {page} does not fit the region (not a memfd region?)")
            }
        }
    }
}

impl std::error::Error for RegionFdError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            RegionFdError::Stat(e) | RegionFdError::Seals(e) => Some(e),
            _ => None,
        }
    }
}

/// Checks a received region fd before mapping it: a regular file of exactly
/// `expected_len` bytes that can neither shrink nor grow (so the mapping can
/// never fault because the peer truncated the file).
///
/// The seals are read first: `F_GET_SEALS` answers from the inode of a memfd (or a
/// hugetlbfs file) and fails at once for any other kind of file, so a descriptor of a
/// file on a network or FUSE file system, whose `fstat` could wait for a server the
/// peer controls, is refused before anything else is asked of it.
pub fn check_region_fd(fd: BorrowedFd<'_>, expected_len: u64) -> Result<(), RegionFdError> {
    // SAFETY: plain fcntl on a borrowed descriptor.
    let seals = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GET_SEALS) };
    if seals < 0 {
        return Err(RegionFdError::Seals(io::Error::last_os_error()));
    }
    let st = fstat(fd).map_err(RegionFdError::Stat)?;
    if st.st_mode & libc::S_IFMT != libc::S_IFREG {
        return Err(RegionFdError::NotRegularFile);
    }
    let actual = u64::try_from(st.st_size).unwrap_or(0);
    if actual != expected_len {
        return Err(RegionFdError::SizeMismatch {
            expected: expected_len,
            actual,
        });
    }
    let required = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW;
    if seals & required != required {
        return Err(RegionFdError::MissingSeals { seals: seals as u32 });
    }
    Ok(())
}

/// Checks a region fd that a guest hands back on reattach (see
/// [`HELLO_FLAG_REATTACH`](crate::proto::HELLO_FLAG_REATTACH)) and says what backs
/// it: everything [`check_region_fd`] requires, plus a page size (the file's block
/// size: the hugepage size for hugetlb, the normal page size otherwise) that divides
/// the size. The contents are not trusted: the caller lays the region out again.
pub fn inspect_region_fd(fd: BorrowedFd<'_>, expected_len: u64) -> Result<RegionBacking, RegionFdError> {
    check_region_fd(fd, expected_len)?;
    let page = fd_block_size(fd).map_err(RegionFdError::Stat)?;
    let normal = normal_page_size();
    if !page.is_power_of_two() || page < normal || !expected_len.is_multiple_of(page) || expected_len == 0 {
        return Err(RegionFdError::BadPageSize { page });
    }
    Ok(RegionBacking { hugepages: page > normal, page_size: page, size: expected_len })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering;

    #[test]
    fn byte_copies_are_exact_at_any_alignment_and_length() {
        let heap = HeapMem::new(256);
        let mem = heap.mem();
        let pattern: Vec<u8> = (0..64u8).map(|b| b.wrapping_mul(37).wrapping_add(1)).collect();
        for offset in 0..17 {
            for len in 0..40 {
                mem.write_bytes(0, &[0; 128]).unwrap();
                mem.write_bytes(offset, &pattern[..len]).unwrap();
                let mut all = [0u8; 128];
                mem.read_bytes(0, &mut all).unwrap();
                assert!(all[..offset].iter().all(|&b| b == 0), "before, {offset}+{len}");
                assert_eq!(&all[offset..offset + len], &pattern[..len], "{offset}+{len}");
                assert!(all[offset + len..].iter().all(|&b| b == 0), "after, {offset}+{len}");
                let mut back = vec![0xffu8; len];
                mem.read_bytes(offset, &mut back).unwrap();
                assert_eq!(back, &pattern[..len]);
            }
        }
        assert!(mem.read_bytes(250, &mut [0; 7]).is_err());
        assert!(mem.write_bytes(250, &[0; 7]).is_err());
    }

    #[test]
    fn a_sub_view_is_bounded_by_itself_and_by_its_parent() {
        let heap = HeapMem::new(3 * 4096);
        let whole = heap.mem();
        let part = whole.sub(4096, 4096).unwrap();
        assert_eq!(part.len(), 4096);
        part.atomic_u32(4092).unwrap().store(7, Ordering::Relaxed);
        assert_eq!(whole.atomic_u32(2 * 4096 - 4).unwrap().load(Ordering::Relaxed), 7);
        assert!(matches!(part.atomic_u32(4096), Err(MemError::OutOfBounds { .. })));
        assert!(matches!(part.read_bytes(4095, &mut [0; 2]), Err(MemError::OutOfBounds { .. })));
        assert!(whole.sub(2 * 4096, 4097).is_err());
        assert!(whole.sub(usize::MAX, 2).is_err());
        assert_eq!(whole.sub(3 * 4096, 0).unwrap().len(), 0);
    }

    #[test]
    fn a_region_fd_is_inspected_before_it_is_adopted() {
        let (fd, backing) = create_region_memfd("inspect", 1 << 20, false).unwrap();
        assert_eq!(inspect_region_fd(fd.as_fd(), backing.size).unwrap(), backing);
        assert!(matches!(inspect_region_fd(fd.as_fd(), backing.size * 2), Err(RegionFdError::SizeMismatch { .. })));
        // An unsealed memfd could be truncated under the proxy: refused.
        // SAFETY: plain syscalls on a fresh descriptor we own.
        let raw = unsafe { libc::memfd_create(c"unsealed".as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING) };
        assert!(raw >= 0);
        // SAFETY: fresh descriptor.
        let unsealed = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: as above.
        assert_eq!(unsafe { libc::ftruncate(unsealed.as_raw_fd(), 1 << 20) }, 0);
        assert!(matches!(inspect_region_fd(unsealed.as_fd(), 1 << 20), Err(RegionFdError::MissingSeals { .. })));
    }

    #[test]
    fn accessors_check_bounds_and_alignment() {
        let heap = HeapMem::new(64);
        let mem = heap.mem();
        assert_eq!(mem.len(), 64);
        assert!(!mem.is_empty());
        assert!(mem.atomic_u32(60).is_ok());
        assert_eq!(
            mem.atomic_u32(61).unwrap_err(),
            MemError::OutOfBounds { offset: 61, size: 4, len: 64 }
        );
        assert_eq!(mem.atomic_u32(2).unwrap_err(), MemError::Misaligned { offset: 2, align: 4 });
        assert!(mem.atomic_u64(56).is_ok());
        assert_eq!(mem.atomic_u64(4).unwrap_err(), MemError::Misaligned { offset: 4, align: 8 });
        assert!(matches!(mem.atomic_u64(usize::MAX), Err(MemError::OutOfBounds { .. })));
        assert_eq!(mem.atomic_u64_slice(0, 8).unwrap().len(), 8);
        assert!(matches!(mem.atomic_u64_slice(8, 8), Err(MemError::OutOfBounds { .. })));
        assert!(matches!(mem.atomic_u64_slice(0, usize::MAX), Err(MemError::OutOfBounds { .. })));
        assert_eq!(mem.atomic_u64_slice(64, 0).unwrap().len(), 0);
        let mut buf = [0u8; 8];
        assert!(mem.read_bytes(57, &mut buf).is_err());
        assert!(mem.write_bytes(57, &buf).is_err());
        assert!(MemError::Misaligned { offset: 1, align: 8 }.to_string().contains("aligned"));
    }

    #[test]
    fn bytes_and_atomics_see_the_same_memory() {
        let heap = HeapMem::new(4096);
        let mem = heap.mem();
        mem.write_bytes(8, &0x1122_3344_5566_7788u64.to_le_bytes()).unwrap();
        assert_eq!(mem.atomic_u64(8).unwrap().load(Ordering::Relaxed), 0x1122_3344_5566_7788);
        mem.atomic_u32(16).unwrap().store(0xdead_beef, Ordering::Relaxed);
        let mut buf = [0u8; 4];
        mem.read_bytes(16, &mut buf).unwrap();
        assert_eq!(u32::from_le_bytes(buf), 0xdead_beef);
    }

    #[test]
    fn empty_view_is_harmless() {
        let heap = HeapMem::new(0);
        let mem = heap.mem();
        assert!(mem.is_empty());
        assert!(mem.atomic_u32(0).is_err());
        assert_eq!(mem.atomic_u64_slice(0, 0).unwrap().len(), 0);
        mem.read_bytes(0, &mut []).unwrap();
    }

    #[test]
    fn parses_meminfo_hugepage_size() {
        assert_eq!(parse_hugepage_size("MemTotal: 1 kB\nHugepagesize:    2048 kB\n"), Some(2 << 20));
        assert_eq!(parse_hugepage_size("Hugepagesize: 1 GB\n"), Some(1 << 30));
        assert_eq!(parse_hugepage_size("Hugepagesize: 3 kB\n"), None);
        assert_eq!(parse_hugepage_size("Hugepagesize: x kB\n"), None);
        assert_eq!(parse_hugepage_size("MemTotal: 1 kB\n"), None);
    }

    #[test]
    fn region_memfd_is_sealed_and_mappable() {
        let (fd, backing) = create_region_memfd("shm-contract-test", 100_000, false).unwrap();
        assert!(!backing.hugepages);
        assert_eq!(backing.size % backing.page_size, 0);
        assert!(backing.size >= 100_000);
        check_region_fd(fd.as_fd(), backing.size).unwrap();
        assert!(matches!(
            check_region_fd(fd.as_fd(), backing.size + 1),
            Err(RegionFdError::SizeMismatch { .. })
        ));
        // Sealed: cannot shrink, cannot grow.
        // SAFETY: plain syscall on a descriptor we own.
        assert_ne!(unsafe { libc::ftruncate(fd.as_raw_fd(), 4096) }, 0);
        // SAFETY: as above.
        assert_ne!(unsafe { libc::ftruncate(fd.as_raw_fd(), 1 << 30) }, 0);
        let map = Mapping::map(fd.as_fd(), backing.size as usize).unwrap();
        assert_eq!(map.len(), backing.size as usize);
        assert!(!map.is_empty());
        let mem = map.mem();
        mem.atomic_u64(backing.size as usize - 8).unwrap().store(7, Ordering::Relaxed);
        let map2 = Mapping::map(fd.as_fd(), backing.size as usize).unwrap();
        assert_eq!(map2.mem().atomic_u64(backing.size as usize - 8).unwrap().load(Ordering::Relaxed), 7);
        assert!(format!("{map:?}").contains("Mapping"));
    }

    #[test]
    fn a_region_of_normal_pages_is_allocated_by_its_user_and_freed_in_steps() {
        let (fd, backing) = create_region_memfd("alloc-test", 4 << 20, false).unwrap();
        assert!(!backing.hugepages);
        // Created with no page allocated: the proxy does not allocate a guest's memory.
        assert_eq!(allocated_bytes(fd.as_fd()).unwrap(), 0);
        assert!(!is_fully_allocated(fd.as_fd(), backing.size).unwrap());
        // Touching a page allocates that page alone.
        let map = Mapping::map(fd.as_fd(), backing.size as usize).unwrap();
        map.mem().atomic_u64(8192).unwrap().store(1, Ordering::Relaxed);
        assert_eq!(allocated_bytes(fd.as_fd()).unwrap(), 4096);
        assert!(!is_fully_allocated(fd.as_fd(), backing.size).unwrap());
        // The guest allocates all of it: allocated, though never written (a range
        // query with SEEK_HOLE would call the unwritten pages holes).
        allocate_region(fd.as_fd(), backing.size).unwrap();
        assert_eq!(allocated_bytes(fd.as_fd()).unwrap(), backing.size);
        assert!(is_fully_allocated(fd.as_fd(), backing.size).unwrap());
        // SAFETY: plain syscall on a descriptor we own.
        let hole = unsafe { libc::lseek(fd.as_raw_fd(), 0, libc::SEEK_HOLE) };
        assert!(hole < backing.size as i64, "shmem calls fallocated, unwritten pages holes: {hole}");
        assert_eq!(map.mem().atomic_u64(8192).unwrap().load(Ordering::Relaxed), 1, "allocating keeps the contents");
        // Freed a MiB at a time: each step frees its range, the size and seals stay.
        punch_hole(fd.as_fd(), 0, 1 << 20).unwrap();
        assert_eq!(allocated_bytes(fd.as_fd()).unwrap(), backing.size - (1 << 20));
        assert!(!is_fully_allocated(fd.as_fd(), backing.size).unwrap());
        assert_eq!(map.mem().atomic_u64(8192).unwrap().load(Ordering::Relaxed), 0, "a punched range reads as zeros");
        check_region_fd(fd.as_fd(), backing.size).unwrap();
        assert!(allocate_region(fd.as_fd(), backing.size + 4096).is_err(), "sealed against growing");
    }

    #[test]
    fn hugepage_request_always_yields_a_usable_region() {
        // Whether or not this machine has hugepages reserved, the call succeeds
        // and says what it got.
        let (fd, backing) = create_region_memfd("shm-contract-huge", 1 << 20, true).unwrap();
        assert_eq!(backing.size % backing.page_size, 0);
        // Allocated whole when it is hugetlb; allocating it again costs nothing.
        if backing.hugepages {
            assert!(is_fully_allocated(fd.as_fd(), backing.size).unwrap_or(true));
        }
        allocate_region(fd.as_fd(), backing.size).unwrap();
        check_region_fd(fd.as_fd(), backing.size).unwrap();
    }

    #[test]
    fn bad_memfd_arguments_are_rejected() {
        assert!(create_region_memfd("a\0b", 4096, false).is_err());
        assert!(create_region_memfd("a", 0, false).is_err());
        assert!(create_region_memfd("a", MAX_REGION_SIZE + 1, false).is_err());
        let heap_fd = std::fs::File::open("/proc/self/exe").unwrap();
        let len = heap_fd.metadata().unwrap().len();
        assert!(matches!(check_region_fd(heap_fd.as_fd(), len), Err(RegionFdError::Seals(_))));
        let dir = std::fs::File::open("/").unwrap();
        assert!(matches!(check_region_fd(dir.as_fd(), 0), Err(RegionFdError::Seals(_))));
        assert!(Mapping::map(heap_fd.as_fd(), 0).is_err());
    }

    #[test]
    fn unsealed_memfd_is_rejected() {
        let name = CString::new("unsealed").unwrap();
        // SAFETY: valid NUL-terminated name.
        let raw = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
        assert!(raw >= 0);
        // SAFETY: fresh descriptor owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: plain syscall on a descriptor we own.
        assert_eq!(unsafe { libc::ftruncate(fd.as_raw_fd(), 8192) }, 0);
        let err = check_region_fd(fd.as_fd(), 8192).unwrap_err();
        assert!(matches!(err, RegionFdError::MissingSeals { .. }), "{err}");
        assert!(err.to_string().contains("F_SEAL_SHRINK"));
    }
}
