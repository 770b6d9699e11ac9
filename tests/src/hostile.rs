//! A hostile guest for the end-to-end tests: it speaks the proxy's socket protocol with
//! `shm-contract`'s own encoder and transport, maps the region the proxy hands it, and
//! then writes whatever it likes into shared memory (descriptors, ring indices, free-ring
//! cells, the region header) and onto the socket (raw bytes, floods), the way a buggy or
//! malicious application could. Nothing here goes through the guest plugins.

use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::sync::atomic::Ordering::{Acquire, Relaxed, Release};
use std::time::{Duration, Instant};

use shm_contract::layout::RegionLayout;
use shm_contract::mem::Mapping;
use shm_contract::mpmc::FreeRing;
use shm_contract::proto::transport::{recv_message, send_message, TransportError};
use shm_contract::proto::{Hello, Welcome, PROTOCOL_VERSION, PROTOCOL_VERSION_MIN};
use shm_contract::spsc::{CONS_INDEX_OFFSET, PROD_INDEX_OFFSET, SLOTS_OFFSET};
use shm_contract::{Desc, Message, PoolAdd, PoolLayout, SharedMem};

/// A small deterministic generator (xorshift64).
#[derive(Clone)]
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next_u64() as u8).collect()
    }
}

/// A `SOCK_SEQPACKET` connection to `path`.
pub fn connect(path: &Path) -> io::Result<OwnedFd> {
    // SAFETY: plain socket/connect; the fd is owned at once; addr is a valid sockaddr_un.
    unsafe {
        let fd = libc::socket(libc::AF_UNIX, libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let fd = OwnedFd::from_raw_fd(fd);
        let mut addr: libc::sockaddr_un = std::mem::zeroed();
        addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
        let bytes = path.as_os_str().as_encoded_bytes();
        if bytes.len() >= addr.sun_path.len() {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "socket path too long"));
        }
        for (d, s) in addr.sun_path.iter_mut().zip(bytes) {
            *d = *s as libc::c_char;
        }
        let len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
        if libc::connect(fd.as_raw_fd(), &addr as *const _ as *const libc::sockaddr, len) != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(fd)
    }
}

/// Sends one raw datagram without waiting; `Ok(false)` when the socket is full.
pub fn send_raw(fd: &OwnedFd, bytes: &[u8]) -> io::Result<bool> {
    // SAFETY: send(2) of a live buffer on our own socket.
    let rc = unsafe {
        libc::send(fd.as_raw_fd(), bytes.as_ptr().cast(), bytes.len(), libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL)
    };
    if rc >= 0 {
        return Ok(true);
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EAGAIN) {
        Ok(false)
    } else {
        Err(e)
    }
}

/// Where a connection stands, seen from the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Peer {
    /// Open; `refusals` requests were refused meanwhile.
    Open { refusals: u32 },
    /// The proxy closed the connection (after a `Refuse` with this reason, if any).
    Closed { refused: Option<String> },
}

impl Peer {
    pub fn is_closed(&self) -> bool {
        matches!(self, Peer::Closed { .. })
    }
}

/// Reads what the proxy sent for `timeout` (link news skipped) and says whether the
/// connection is still open.
pub fn peer_state(fd: &OwnedFd, timeout: Duration) -> Peer {
    let deadline = Instant::now() + timeout;
    let mut refused = None;
    let mut refusals = 0;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match recv_message(fd.as_fd(), Some(left)) {
            Ok((Message::Refuse { code, reason }, _, _)) => {
                refusals += 1;
                refused = Some(format!("{code}: {reason}"));
            }
            Ok((Message::Goodbye, _, _)) => return Peer::Closed { refused },
            Ok(_) => {}
            Err(TransportError::Timeout) => return Peer::Open { refusals },
            Err(TransportError::Decode(_)) => {}
            Err(_) => return Peer::Closed { refused },
        }
    }
}

/// Waits up to `timeout` for the proxy to close the connection.
pub fn wait_closed(fd: &OwnedFd, timeout: Duration) -> Peer {
    let deadline = Instant::now() + timeout;
    let mut refusals = 0;
    let mut last = None;
    loop {
        match recv_message(fd.as_fd(), Some(Duration::from_millis(100))) {
            Ok((Message::Refuse { code, reason }, _, _)) => {
                refusals += 1;
                last = Some(format!("{code}: {reason}"));
            }
            Ok((Message::Goodbye, _, _)) => return Peer::Closed { refused: last },
            Ok(_) | Err(TransportError::Timeout) | Err(TransportError::Decode(_)) => {}
            Err(_) => return Peer::Closed { refused: last },
        }
        if Instant::now() > deadline {
            return Peer::Open { refusals };
        }
    }
}

/// A valid pool of 512 buffers of 2304 bytes at the start of the heap `heap_offset`
/// (its free ring first, its buffers 8 KiB in): what a guest of an 8 MiB region would
/// announce.
pub fn small_pool(pool_id: u32, heap_offset: u32) -> shm_contract::PoolAdd {
    shm_contract::PoolAdd {
        pool_id,
        ring_offset: heap_offset,
        ring_entries: 512,
        first_mbuf_offset: heap_offset + 8192,
        stride: 2304,
        count: 512,
        mbuf_size: 128,
        data_room: 2176,
    }
}

/// The `Hello` an honest guest would send.
pub fn hello(region_size: u64, ring_entries: u32) -> Hello {
    Hello {
        version_min: PROTOCOL_VERSION_MIN,
        version_max: PROTOCOL_VERSION,
        flags: 0,
        region_size,
        rx_ring_entries: ring_entries,
        tx_ring_entries: ring_entries,
        app_name: "hostile".into(),
        heap_bytes: 0,
    }
}

/// Sends `hello` and returns the proxy's answer: its welcome and the region fd, or the
/// reason of its refusal.
pub fn handshake(fd: &OwnedFd, hello: &Hello) -> Result<(Welcome, OwnedFd), String> {
    send_message(fd.as_fd(), &Message::Hello(hello.clone()), 1, &[]).map_err(|e| format!("send Hello: {e}"))?;
    match recv_message(fd.as_fd(), Some(Duration::from_secs(10))) {
        Ok((Message::Welcome(w), _, mut fds)) if fds.len() == 1 => Ok((w, fds.remove(0))),
        Ok((Message::Refuse { code, reason }, _, _)) => Err(format!("refused ({code}): {reason}")),
        Ok((other, _, fds)) => Err(format!("unexpected answer {:?} with {} fds", other.kind(), fds.len())),
        Err(e) => Err(format!("no answer: {e}")),
    }
}

/// A hostile guest attached to a proxy socket, its region mapped.
pub struct Attached {
    pub sock: OwnedFd,
    pub welcome: Welcome,
    pub layout: RegionLayout,
    /// The guest's pool, once announced.
    pub pool: Option<PoolLayout>,
    /// Buffers the guest holds (not in its free ring, not given to the proxy).
    pub owned: Vec<u32>,
    /// Our tx producer index and rx consumer index (we keep them, like a real guest).
    pub tx_prod: u32,
    pub rx_cons: u32,
    next_request: u32,
    // Last: unmapped after everything above is gone.
    map: Mapping,
    _memfd: OwnedFd,
}

impl Attached {
    /// Connects, handshakes, maps the region and allocates it (as every guest does: the
    /// proxy refuses pools in a region that is not allocated).
    pub fn attach(path: &Path, hello: &Hello) -> Result<Attached, String> {
        let g = Attached::attach_unallocated(path, hello)?;
        shm_contract::mem::allocate_region(g.memfd(), g.welcome.region_size).map_err(|e| format!("allocate: {e}"))?;
        Ok(g)
    }

    /// As [`attach`](Self::attach), without allocating the region.
    pub fn attach_unallocated(path: &Path, hello: &Hello) -> Result<Attached, String> {
        let sock = connect(path).map_err(|e| format!("connect: {e}"))?;
        let (welcome, memfd) = handshake(&sock, hello)?;
        let map = Mapping::map(memfd.as_fd(), welcome.region_size as usize).map_err(|e| format!("mmap: {e}"))?;
        let layout = RegionLayout::read_header(&map.mem()).map_err(|e| format!("header: {e}"))?;
        Ok(Attached {
            sock,
            welcome,
            layout,
            pool: None,
            owned: Vec::new(),
            tx_prod: 0,
            rx_cons: 0,
            next_request: 2,
            map,
            _memfd: memfd,
        })
    }

    pub fn mem(&self) -> SharedMem<'_> {
        self.map.mem()
    }

    /// The region's memfd.
    pub fn memfd(&self) -> std::os::fd::BorrowedFd<'_> {
        self._memfd.as_fd()
    }

    /// Sends a request and waits for its answer (link news skipped).
    pub fn request(&mut self, msg: &Message) -> Result<Message, String> {
        self.request_with_fds(msg, &[])
    }

    /// As [`request`](Self::request), with descriptors passed along.
    pub fn request_with_fds(&mut self, msg: &Message, fds: &[std::os::fd::BorrowedFd<'_>]) -> Result<Message, String> {
        self.exchange(msg, fds).map(|(answer, _)| answer)
    }

    /// Sends a request with descriptors and returns its answer with the descriptors
    /// that came with it.
    pub fn exchange(&mut self, msg: &Message, fds: &[std::os::fd::BorrowedFd<'_>]) -> Result<(Message, Vec<OwnedFd>), String> {
        let id = self.next_request;
        self.next_request += 1;
        send_message(self.sock.as_fd(), msg, id, fds).map_err(|e| format!("send: {e}"))?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match recv_message(self.sock.as_fd(), Some(left)) {
                Ok((Message::LinkStatus { .. }, _, _)) => continue,
                Ok((answer, rid, fds)) if rid == id || matches!(answer, Message::Refuse { .. }) => return Ok((answer, fds)),
                Ok(_) => continue,
                Err(e) => return Err(format!("no answer: {e}")),
            }
        }
    }

    /// Lays out a pool of `count` buffers at the start of the heap (ring, then
    /// buffers), puts all but `keep` of them in the free ring, announces it.
    pub fn add_pool(&mut self, count: u32, keep: u32) -> Result<PoolLayout, String> {
        let heap = self.layout.heap();
        let ring_entries = count.next_power_of_two();
        let ring_bytes = FreeRing::bytes_for(ring_entries) as u32;
        let add = PoolAdd {
            pool_id: 0,
            ring_offset: heap.offset,
            ring_entries,
            first_mbuf_offset: heap.offset + ring_bytes.next_multiple_of(4096),
            stride: 2304,
            count,
            mbuf_size: 128,
            data_room: 2176,
        };
        let layout = add.validate(&self.layout, &[]).map_err(|e| e.to_string())?;
        let offsets: Vec<u32> = (0..count).map(|i| layout.buffer_offset(i)).collect();
        {
            let mem = self.map.mem();
            let ring = FreeRing::init(&mem, add.ring_offset, ring_entries).map_err(|e| e.to_string())?;
            let give = (count - keep.min(count)) as usize;
            ring.enqueue_bulk(&offsets[..give], 16).map_err(|e| format!("free ring: {e:?}"))?;
            self.owned = offsets[give..].to_vec();
        }
        match self.request(&Message::PoolAdd(add))? {
            Message::PoolAck { .. } => {
                self.pool = Some(layout);
                Ok(layout)
            }
            other => Err(format!("PoolAdd answered {other:?}")),
        }
    }

    /// Starts the queue with pool 0 feeding NIC rx.
    pub fn start(&mut self) -> Result<(), String> {
        match self.request(&Message::QueueStart { rx_pool_id: 0, flags: 0, rx_depth: 0, queue: 0 })? {
            Message::QueueStarted => {
                self.tx_prod = 0;
                self.rx_cons = 0;
                Ok(())
            }
            other => Err(format!("QueueStart answered {other:?}")),
        }
    }

    /// Attach, one pool, queue started: a guest ready to misbehave.
    pub fn ready(path: &Path, buffers: u32, keep: u32) -> Result<Attached, String> {
        Attached::ready_with(path, 256, buffers, keep)
    }

    /// As [`ready`](Self::ready), with rings of `ring_entries` descriptors.
    pub fn ready_with(path: &Path, ring_entries: u32, buffers: u32, keep: u32) -> Result<Attached, String> {
        let mut g = Attached::attach(path, &hello(8 << 20, ring_entries))?;
        g.add_pool(buffers, keep)?;
        g.start()?;
        Ok(g)
    }

    fn ring_u32(&self, ring_offset: u32, field: u32) -> &std::sync::atomic::AtomicU32 {
        // The layout was validated by `read_header`: the index lies in the region.
        self.map.mem().atomic_u32((ring_offset + field) as usize).expect("ring index inside the region")
    }

    /// Gives every page of the region back to the kernel (`FALLOC_FL_PUNCH_HOLE` on
    /// the memfd, which its seals allow). The region must not be touched afterwards:
    /// with hugepages and none free, any access of ours would die of SIGBUS too.
    pub fn punch_whole_region(&self) -> io::Result<()> {
        // SAFETY: plain syscall on the memfd we hold.
        let rc = unsafe {
            libc::fallocate(
                self._memfd.as_raw_fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                0,
                self.welcome.region_size as libc::off_t,
            )
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    /// Stores `v` as the status block's rx wake-up request.
    pub fn set_rx_wakeup_request(&self, v: u32) {
        if let Ok(status) = shm_contract::StatusBlock::from_layout(&self.map.mem(), &self.layout) {
            status.rx_wakeup_requested().store(v, Release);
        }
    }

    /// The proxy's tx consumer index, as it stored it.
    pub fn tx_cons(&self) -> u32 {
        self.ring_u32(self.layout.tx_ring().offset, CONS_INDEX_OFFSET).load(Acquire)
    }

    /// Stores any value as our tx producer index (and remembers it).
    pub fn set_tx_prod(&mut self, v: u32) {
        self.tx_prod = v;
        self.ring_u32(self.layout.tx_ring().offset, PROD_INDEX_OFFSET).store(v, Release);
    }

    /// Stores any value as our rx consumer index.
    pub fn set_rx_cons(&mut self, v: u32) {
        self.rx_cons = v;
        self.ring_u32(self.layout.rx_ring().offset, CONS_INDEX_OFFSET).store(v, Release);
    }

    /// Writes `d` into tx slot `index` (masked), whatever the indices say.
    pub fn write_tx_slot(&self, index: u32, d: &Desc) {
        let ring = self.layout.tx_ring();
        let slot = (index & (ring.entries - 1)) as usize;
        let at = ring.offset as usize + SLOTS_OFFSET as usize + slot * Desc::SIZE;
        let [w0, w1] = d.to_words();
        let mem = self.map.mem();
        mem.atomic_u64(at).expect("slot").store(w0, Relaxed);
        mem.atomic_u64(at + 8).expect("slot").store(w1, Relaxed);
    }

    /// Publishes `descs` on the tx ring as an honest producer would (waiting at most
    /// `timeout` for room). Returns how many went in.
    pub fn push_tx(&mut self, descs: &[Desc], timeout: Duration) -> usize {
        let entries = self.layout.tx_ring().entries;
        let deadline = Instant::now() + timeout;
        let mut done = 0;
        while done < descs.len() {
            let free = entries.wrapping_sub(self.tx_prod.wrapping_sub(self.tx_cons()));
            if free == 0 || free > entries {
                if Instant::now() > deadline {
                    break;
                }
                std::thread::sleep(Duration::from_micros(200));
                continue;
            }
            let n = (free as usize).min(descs.len() - done);
            for (i, d) in descs[done..done + n].iter().enumerate() {
                self.write_tx_slot(self.tx_prod.wrapping_add(i as u32), d);
            }
            let prod = self.tx_prod.wrapping_add(n as u32);
            self.set_tx_prod(prod);
            done += n;
        }
        done
    }

    /// Takes everything the proxy published on the rx ring; those buffers are ours now.
    pub fn drain_rx(&mut self) -> usize {
        let ring = self.layout.rx_ring();
        let prod = self.ring_u32(ring.offset, PROD_INDEX_OFFSET).load(Acquire);
        let n = prod.wrapping_sub(self.rx_cons);
        if n > ring.entries {
            return 0;
        }
        let mem = self.map.mem();
        for i in 0..n {
            let slot = (self.rx_cons.wrapping_add(i) & (ring.entries - 1)) as usize;
            let at = ring.offset as usize + SLOTS_OFFSET as usize + slot * Desc::SIZE;
            let w0 = mem.atomic_u64(at).expect("slot").load(Relaxed);
            let w1 = mem.atomic_u64(at + 8).expect("slot").load(Relaxed);
            self.owned.push(Desc::from_words(w0, w1).offset);
        }
        let cons = self.rx_cons.wrapping_add(n);
        self.set_rx_cons(cons);
        n as usize
    }

    /// The pool's free ring.
    pub fn free_ring(&self) -> FreeRing<'_> {
        let p = self.pool.expect("a pool");
        let mem = self.map.mem();
        FreeRing::new(&mem, p.ring_offset(), p.ring_entries()).expect("free ring inside the region")
    }

    /// Takes buffers back from the free ring (those the proxy returned after tx).
    pub fn reclaim(&mut self, max: usize) -> usize {
        let p = self.pool.expect("a pool");
        let mem = self.map.mem();
        let ring = FreeRing::new(&mem, p.ring_offset(), p.ring_entries()).expect("free ring");
        let mut got = 0;
        let mut one = [0u32; 1];
        while got < max && ring.dequeue_bulk(&mut one, 8).is_ok() {
            self.owned.push(one[0]);
            got += 1;
        }
        got
    }

    /// A valid one-segment descriptor for an owned buffer (taken from `owned`).
    pub fn valid_desc(&mut self, len: u16) -> Option<Desc> {
        let offset = self.owned.pop()?;
        Some(Desc { offset, data_off: 128, data_len: len, ..Desc::default() })
    }

    /// Where the connection stands.
    pub fn peer(&self, timeout: Duration) -> Peer {
        peer_state(&self.sock, timeout)
    }
}

/// Runs the calling thread at the lowest priority (nice 19): a hostile writer that only
/// gets the CPU time the machine's pinned pollers leave over measures the proxy's
/// fairness, not a competition for one of two cores that no proxy could win.
pub fn lowest_priority_for_this_thread() -> io::Result<()> {
    // SAFETY: plain syscalls on the calling thread's own id.
    let rc = unsafe { libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, 19) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Holds every free hugepage of the system while it lives, so that a page given back
/// to the kernel cannot be faulted in again.
pub struct HugepageHog {
    files: Vec<OwnedFd>,
}

impl HugepageHog {
    /// Takes whatever is free, again while more shows up (at most 20 rounds).
    pub fn take_all() -> io::Result<HugepageHog> {
        let meminfo = |key: &str| -> io::Result<u64> {
            let text = std::fs::read_to_string("/proc/meminfo")?;
            let line = text.lines().find(|l| l.starts_with(key)).ok_or_else(|| io::Error::other(format!("no {key}")))?;
            line.split_whitespace().nth(1).and_then(|v| v.parse().ok()).ok_or_else(|| io::Error::other(format!("bad {key}")))
        };
        let page = meminfo("Hugepagesize:")? * 1024;
        let mut files = Vec::new();
        for _ in 0..20 {
            let free = meminfo("HugePages_Free:")?;
            if free == 0 {
                return Ok(HugepageHog { files });
            }
            // SAFETY: plain syscalls; the descriptor is owned at once.
            let fd = unsafe {
                let raw = libc::memfd_create(c"hugepage-hog".as_ptr(), libc::MFD_HUGETLB | libc::MFD_CLOEXEC);
                if raw < 0 {
                    return Err(io::Error::last_os_error());
                }
                OwnedFd::from_raw_fd(raw)
            };
            let len = (free * page) as libc::off_t;
            // SAFETY: as above. A failure (a page taken meanwhile) is retried.
            unsafe {
                if libc::ftruncate(fd.as_raw_fd(), len) == 0 {
                    libc::fallocate(fd.as_raw_fd(), 0, 0, len);
                }
            }
            files.push(fd);
        }
        Err(io::Error::other("free hugepages kept coming back"))
    }

    /// Files it holds.
    pub fn files(&self) -> usize {
        self.files.len()
    }
}

/// A TCP connection on the loopback whose last close blocks for `linger_secs`: the
/// client has `SO_LINGER` on and unsent data the server never reads (small buffers, so
/// that many of them cost little memory). Returns the client, to pass to the proxy and
/// close here, and the server end, to keep open (and unread) while the attack lasts.
pub fn lingering_tcp(linger_secs: i32) -> io::Result<(OwnedFd, std::net::TcpStream)> {
    use std::io::Write;
    let small = |fd: i32, opt: libc::c_int| {
        let v: libc::c_int = 4096;
        // SAFETY: setsockopt with an int of the stated length on a socket we own.
        unsafe {
            libc::setsockopt(fd, libc::SOL_SOCKET, opt, (&v as *const libc::c_int).cast(), std::mem::size_of::<libc::c_int>() as libc::socklen_t)
        };
    };
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    small(listener.as_raw_fd(), libc::SO_RCVBUF);
    let mut client = std::net::TcpStream::connect(listener.local_addr()?)?;
    let (server, _) = listener.accept()?;
    small(server.as_raw_fd(), libc::SO_RCVBUF);
    small(client.as_raw_fd(), libc::SO_SNDBUF);
    let linger = libc::linger { l_onoff: 1, l_linger: linger_secs };
    // SAFETY: setsockopt with a valid linger struct on our own socket.
    let rc = unsafe {
        libc::setsockopt(
            client.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    client.set_nonblocking(true)?;
    let chunk = [0x5au8; 4096];
    let mut sent = 0;
    loop {
        match client.write(&chunk) {
            Ok(n) => sent += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) => return Err(e),
        }
        if sent > (64 << 20) {
            return Err(io::Error::other("the peer kept reading"));
        }
    }
    Ok((client.into(), server))
}

/// Sends one datagram with up to `SCM_MAX_FD` descriptors (more than the transport's
/// honest limit), without waiting.
pub fn send_with_fds(sock: &OwnedFd, bytes: &[u8], fds: &[std::os::fd::BorrowedFd<'_>]) -> io::Result<()> {
    #[repr(C, align(8))]
    struct Cmsg([u8; 1088]);
    let mut cmsg = Cmsg([0; 1088]);
    let data_len = std::mem::size_of_val(fds) as libc::c_uint;
    // SAFETY: CMSG_SPACE is arithmetic.
    let space = unsafe { libc::CMSG_SPACE(data_len) } as usize;
    if space > cmsg.0.len() {
        return Err(io::Error::other("too many descriptors"));
    }
    let mut iov = libc::iovec { iov_base: bytes.as_ptr() as *mut libc::c_void, iov_len: bytes.len() };
    // SAFETY: msghdr is plain data; all-zero is valid.
    let mut hdr: libc::msghdr = unsafe { std::mem::zeroed() };
    hdr.msg_iov = &mut iov;
    hdr.msg_iovlen = 1;
    if !fds.is_empty() {
        hdr.msg_control = cmsg.0.as_mut_ptr().cast();
        hdr.msg_controllen = space as _;
        // SAFETY: the control buffer has `space` bytes, room for one header and the fds.
        unsafe {
            let c = libc::CMSG_FIRSTHDR(&hdr);
            (*c).cmsg_level = libc::SOL_SOCKET;
            (*c).cmsg_type = libc::SCM_RIGHTS;
            (*c).cmsg_len = libc::CMSG_LEN(data_len) as _;
            let data = libc::CMSG_DATA(c).cast::<i32>();
            for (i, f) in fds.iter().enumerate() {
                data.add(i).write_unaligned(f.as_raw_fd());
            }
        }
    }
    // SAFETY: hdr points at live buffers; the kernel only reads them.
    let rc = unsafe { libc::sendmsg(sock.as_raw_fd(), &hdr, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// As [`send_with_fds`]; when the send fails (the proxy already closed the
/// connection), the descriptors are made to abort on close: our copies are then the last
/// ones, and a lingering socket would hold up this test instead of the proxy.
pub fn send_or_disarm(sock: &OwnedFd, bytes: &[u8], fds: &[std::os::fd::BorrowedFd<'_>]) -> io::Result<()> {
    let sent = send_with_fds(sock, bytes, fds);
    if sent.is_err() {
        let off = libc::linger { l_onoff: 1, l_linger: 0 };
        for f in fds {
            // SAFETY: setsockopt with a valid struct on a descriptor we borrow (ENOTSOCK
            // for non-sockets, ignored).
            unsafe {
                libc::setsockopt(
                    f.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_LINGER,
                    (&off as *const libc::linger).cast(),
                    std::mem::size_of::<libc::linger>() as libc::socklen_t,
                )
            };
        }
    }
    sent
}

/// The encoded datagram of `msg`.
pub fn datagram(msg: &Message, id: u32) -> Vec<u8> {
    shm_contract::proto::encode_to_vec(msg, id).expect("encodable")
}

/// A pipe: (read end, write end).
pub fn pipe() -> (OwnedFd, OwnedFd) {
    let mut p = [0; 2];
    // SAFETY: pipe2 fills two fresh descriptors, owned at once.
    unsafe {
        assert_eq!(libc::pipe2(p.as_mut_ptr(), libc::O_CLOEXEC), 0);
        (OwnedFd::from_raw_fd(p[0]), OwnedFd::from_raw_fd(p[1]))
    }
}

/// An unsealed memfd of `len` bytes (not a region the proxy may keep).
pub fn plain_memfd(len: i64) -> OwnedFd {
    // SAFETY: plain syscalls; the descriptor is owned at once.
    unsafe {
        let fd = libc::memfd_create(c"hostile-memfd".as_ptr(), libc::MFD_CLOEXEC);
        assert!(fd >= 0);
        let fd = OwnedFd::from_raw_fd(fd);
        assert_eq!(libc::ftruncate(fd.as_raw_fd(), len), 0);
        fd
    }
}
