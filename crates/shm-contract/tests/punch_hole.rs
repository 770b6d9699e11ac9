//! A peer that punches a hole in a hugetlb region while no hugepage is free: an
//! unguarded mapping dies of SIGBUS at the next access, a guarded one reads zeros
//! and counts the loss. Needs free hugepages (scripts/setup.sh reserves them).

use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};

use shm_contract::mem::{create_region_memfd, Mapping};

const REGION: u64 = 4 << 20;

fn free_hugepages() -> u64 {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap();
    let line = meminfo.lines().find(|l| l.starts_with("HugePages_Free:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

fn hugepage_size() -> u64 {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap();
    let line = meminfo.lines().find(|l| l.starts_with("Hugepagesize:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() * 1024
}

/// Takes every free hugepage for as long as the result lives.
fn take_all_free_hugepages() -> Vec<OwnedFd> {
    let page = hugepage_size();
    let mut held = Vec::new();
    for _ in 0..20 {
        let free = free_hugepages();
        if free == 0 {
            return held;
        }
        // SAFETY: plain syscalls; the fd is owned at once.
        let fd = unsafe {
            let raw = libc::memfd_create(c"hog".as_ptr(), libc::MFD_HUGETLB | libc::MFD_CLOEXEC);
            assert!(raw >= 0, "memfd_create(MFD_HUGETLB): {}", std::io::Error::last_os_error());
            OwnedFd::from_raw_fd(raw)
        };
        let len = (free * page) as libc::off_t;
        // SAFETY: as above.
        unsafe {
            if libc::ftruncate(fd.as_raw_fd(), len) == 0 {
                libc::fallocate(fd.as_raw_fd(), 0, 0, len);
            }
        }
        held.push(fd);
    }
    panic!("hugepages kept coming back: {} free", free_hugepages());
}

fn punch_whole(fd: &OwnedFd) {
    // SAFETY: plain syscall on a descriptor we own.
    let rc = unsafe {
        libc::fallocate(fd.as_raw_fd(), libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE, 0, REGION as libc::off_t)
    };
    assert_eq!(rc, 0, "punch hole: {}", std::io::Error::last_os_error());
}

#[test]
fn a_hole_punched_in_a_hugetlb_region_is_absorbed_by_a_guarded_mapping_only() {
    let (fd, backing) = create_region_memfd("punch-test", REGION, true).unwrap();
    assert!(
        backing.hugepages,
        "this test needs free hugepages ({} free; scripts/setup.sh reserves them)",
        free_hugepages()
    );
    let guarded = Mapping::map_guarded(fd.as_fd(), REGION as usize).unwrap();
    let plain = Mapping::map(fd.as_fd(), REGION as usize).unwrap();
    let mem = guarded.mem();
    mem.write_bytes(4096, &[0xab; 64]).unwrap();
    assert_eq!(guarded.lost_pages(), 0);

    // The peer's move: pages back to the kernel, and (in the worst case) none left.
    punch_whole(&fd);
    let hog = take_all_free_hugepages();
    assert_eq!(free_hugepages(), 0);

    // The unguarded mapping: a child process touching it dies of SIGBUS.
    // SAFETY: the child only reads memory and exits, no allocation, no locks.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0);
    if pid == 0 {
        // SAFETY: inside the mapping; the read faults.
        let byte = unsafe { std::ptr::read_volatile(plain.as_ptr().add(4096)) };
        // SAFETY: leaving the child without running the parent's destructors.
        unsafe { libc::_exit(i32::from(byte == 0) + 10) };
    }
    let mut status = 0;
    // SAFETY: waiting for our own child.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    assert!(
        libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGBUS,
        "the unguarded access should have died of SIGBUS, status {status:#x}"
    );

    // The guarded mapping: the same access reads zeros and is counted.
    let mut back = [0xffu8; 64];
    mem.read_bytes(4096, &mut back).unwrap();
    assert_eq!(back, [0u8; 64]);
    assert_eq!(guarded.lost_pages(), 1);
    // The replacement is ordinary memory: later accesses do not fault again.
    mem.write_bytes(8192, &[1; 64]).unwrap();
    mem.read_bytes(8192, &mut back).unwrap();
    assert_eq!(back, [1u8; 64]);
    assert_eq!(guarded.lost_pages(), 1);
    drop(hog);
    drop(plain);
    drop(guarded);
}
