//! How large a guest's region is and what backs it.
//!
//! Size: what the guest asked (`region_size`); else its pool plan (`heap_bytes` in the
//! `Hello`: header, rings and that heap on the pages picked, nothing more); else the
//! proxy's default (`--region-size`), for a DPDK application, which makes its pools
//! only after the handshake.
//!
//! Backing: hugepages are shared fairly. A region goes on hugepages only if it is at
//! most a guest's share (`--hugepages-per-guest`, by default an eighth of the system's
//! hugepages), if, once taken, at least one share stays free (for the next guests and
//! the proxy's own DPDK memory), and if rounding to hugepages does not more than double
//! it (a small pool's header, rings and heap take a hugepage each: an idle guest with a
//! 1 MiB pool would hold 8 MiB of them); else it goes on 4 KiB pages, and the attach
//! log says why.
//! A region on 4 KiB pages is refused (`NoMemory`) if it would leave the machine less
//! than a sixteenth of its memory available.

use shm_contract::{RefuseCode, RegionLayout};

const MIB: u64 = 1 << 20;
/// Of the system's hugepages, the default share of one guest is 1/this.
const DEFAULT_SHARES: u64 = 8;
/// A region on normal pages must leave at least 1/this of the machine's memory available.
const MEMORY_KEPT: u64 = 16;

/// The parts of `/proc/meminfo` sizing needs, in bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemInfo {
    pub total: u64,
    pub available: u64,
    pub hugepage_size: u64,
    pub hugepages_total: u64,
    /// Free hugepages not promised to a mapping already (`HugePages_Free - Rsvd`).
    pub hugepages_free: u64,
}

impl MemInfo {
    /// Now; all zero (no hugepages, no memory check) if it cannot be read.
    #[cfg(not(feature = "fuzzing"))]
    pub fn read() -> MemInfo {
        Self::read_now()
    }

    /// The fuzz target's proxy reads it once: a region's plan then depends on the
    /// guest's input alone, the same in every run of it (and reading /proc/meminfo
    /// cost more than the rest of a Hello).
    #[cfg(feature = "fuzzing")]
    pub fn read() -> MemInfo {
        static FIRST: std::sync::OnceLock<MemInfo> = std::sync::OnceLock::new();
        *FIRST.get_or_init(Self::read_now)
    }

    fn read_now() -> MemInfo {
        std::fs::read_to_string("/proc/meminfo").map(|s| MemInfo::parse(&s)).unwrap_or_default()
    }

    pub fn parse(text: &str) -> MemInfo {
        let field = |name: &str| -> u64 {
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
                .and_then(|v| {
                    let mut w = v.split_whitespace();
                    let n: u64 = w.next()?.parse().ok()?;
                    Some(if w.next() == Some("kB") { n.saturating_mul(1024) } else { n })
                })
                .unwrap_or(0)
        };
        let page = field("Hugepagesize");
        let pages = |name: &str| field(name).saturating_mul(page);
        MemInfo {
            total: field("MemTotal"),
            available: field("MemAvailable"),
            hugepage_size: page,
            hugepages_total: pages("HugePages_Total"),
            hugepages_free: pages("HugePages_Free").saturating_sub(pages("HugePages_Rsvd")),
        }
    }

    /// A guest's default share of the hugepages.
    pub fn default_hugepage_share(&self) -> u64 {
        self.hugepages_total / DEFAULT_SHARES
    }
}

/// The region to make for a guest.
#[derive(Debug, PartialEq, Eq)]
pub struct Plan {
    pub size: u64,
    pub hugepages: bool,
    /// Why a region that could have been on hugepages is not (for the log).
    pub fallback: Option<String>,
}

/// The proxy's settings that sizing follows.
pub struct Limits {
    pub default_size: u64,
    pub max_size: u64,
    pub try_hugepages: bool,
    pub hugepage_share: u64,
}

/// The descriptor rings a region holds: `queue_pairs` rx/tx pairs of these entries.
pub struct Rings {
    pub rx_entries: u32,
    pub tx_entries: u32,
    pub queue_pairs: u32,
}

/// Sizes and backs a region for a guest that asked `asked` bytes (0: none) and plans
/// `heap_bytes` of pools (0: no plan), with these rings.
pub fn plan(
    asked: u64,
    heap_bytes: u64,
    rings: &Rings,
    limits: &Limits,
    mem: &MemInfo,
) -> Result<Plan, (RefuseCode, String)> {
    let size_on = |page: u64| -> Option<u64> {
        if asked != 0 {
            Some(asked)
        } else if heap_bytes != 0 {
            RegionLayout::size_for_heap_with_pairs(page, rings.rx_entries, rings.tx_entries, rings.queue_pairs, heap_bytes)
        } else {
            Some(limits.default_size)
        }
    };
    let too_large = |size: u64| {
        (
            RefuseCode::TooLarge,
            format!(
                "region of {} MiB asked; this proxy allows at most {} MiB (--max-region-size)",
                size.div_ceil(MIB),
                limits.max_size >> 20
            ),
        )
    };
    // Rounded with a check: a guest may ask for up to 2^64 - 1 bytes (which rounded
    // up without one wraps to 0 in release builds and panics in debug ones).
    let small = size_on(NORMAL_PAGE)
        .and_then(|s| s.checked_next_multiple_of(NORMAL_PAGE))
        .ok_or_else(|| too_large(if asked != 0 { asked } else { heap_bytes }))?;
    if small > limits.max_size {
        return Err(too_large(small));
    }
    let mut fallback = None;
    if limits.try_hugepages && mem.hugepage_size != 0 {
        let page = mem.hugepage_size;
        match size_on(page).and_then(|s| s.checked_next_multiple_of(page)).filter(|&s| s <= limits.max_size) {
            Some(huge) if huge > 2 * small => {
                fallback = Some(format!(
                    "hugepages would take {} MiB for {} KiB",
                    huge >> 20,
                    small.div_ceil(1024)
                ))
            }
            Some(huge) if huge > limits.hugepage_share => {
                fallback = Some(format!(
                    "{} MiB on hugepages would be more than a guest's share of them ({} MiB, --hugepages-per-guest)",
                    huge >> 20,
                    limits.hugepage_share >> 20
                ))
            }
            Some(huge) if mem.hugepages_free < huge + limits.hugepage_share => {
                fallback = Some(format!(
                    "{} MiB of hugepages are free and one guest's share ({} MiB) stays free",
                    mem.hugepages_free >> 20,
                    limits.hugepage_share >> 20
                ))
            }
            Some(huge) => return Ok(Plan { size: huge, hugepages: true, fallback: None }),
            None => {}
        }
    }
    if mem.total != 0 && mem.available < small + mem.total / MEMORY_KEPT {
        return Err((
            RefuseCode::NoMemory,
            format!(
                "a region of {} MiB would leave less than {} MiB of the machine's memory available ({} MiB now)",
                small.div_ceil(MIB),
                (mem.total / MEMORY_KEPT) >> 20,
                mem.available >> 20
            ),
        ));
    }
    Ok(Plan { size: small, hugepages: false, fallback })
}

/// The page size of regions without hugepages (what `memfd_create` gives on x86-64).
const NORMAL_PAGE: u64 = 4096;

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;
    const ONE_PAIR: Rings = Rings { rx_entries: 1024, tx_entries: 1024, queue_pairs: 1 };

    fn mem(free_hugepages: u64) -> MemInfo {
        MemInfo {
            total: 24 * GIB,
            available: 20 * GIB,
            hugepage_size: 2 * MIB,
            hugepages_total: GIB,
            hugepages_free: free_hugepages,
        }
    }

    fn limits() -> Limits {
        Limits { default_size: 512 * MIB, max_size: 2 * GIB, try_hugepages: true, hugepage_share: GIB / 8 }
    }

    #[test]
    fn meminfo_is_parsed_in_bytes() {
        let text = "MemTotal:       24684000 kB\nMemAvailable:   22000000 kB\nHugePages_Total:     512\n\
                    HugePages_Free:      476\nHugePages_Rsvd:       10\nHugePages_Surp:        0\n\
                    Hugepagesize:       2048 kB\n";
        let m = MemInfo::parse(text);
        assert_eq!(m.total, 24684000 * 1024);
        assert_eq!(m.available, 22000000 * 1024);
        assert_eq!(m.hugepage_size, 2 * MIB);
        assert_eq!(m.hugepages_total, GIB);
        assert_eq!(m.hugepages_free, 466 * 2 * MIB);
        assert_eq!(m.default_hugepage_share(), 128 * MIB);
        assert_eq!(MemInfo::parse(""), MemInfo::default());
    }

    #[test]
    fn a_pool_plan_gets_a_region_that_just_fits_it() {
        // 4096 buffers of 2176 bytes and their free ring: about 9.3 MiB.
        let heap = 9_750_000;
        let p = plan(0, heap, &ONE_PAIR, &limits(), &mem(GIB)).unwrap();
        // On hugepages: a 2 MiB page each for the header and the two rings, then the heap.
        assert_eq!(p, Plan { size: 16 * MIB, hugepages: true, fallback: None });
        // On 4 KiB pages: 11 pages of header and rings, then the heap.
        let p = plan(0, heap, &ONE_PAIR, &Limits { try_hugepages: false, ..limits() }, &mem(GIB)).unwrap();
        assert_eq!(p.size, 11 * 4096 + heap.next_multiple_of(4096));
        assert!(!p.hugepages);
        assert_eq!(p.fallback, None, "--no-hugepages is no fallback to report");
        // 512 buffers, about 1.1 MiB: 8 MiB of hugepages would be waste; 4 KiB pages.
        let p = plan(0, 1_150_000, &ONE_PAIR, &limits(), &mem(GIB)).unwrap();
        assert_eq!(p.size, 11 * 4096 + 1_150_000u64.next_multiple_of(4096));
        assert!(!p.hugepages);
        assert!(p.fallback.unwrap().contains("hugepages would take 8 MiB for 1168 KiB"));
        // Two queue pairs: their rings come on top (5 + 5 more pages on 4 KiB pages).
        let two = Rings { queue_pairs: 2, ..ONE_PAIR };
        let p = plan(0, heap, &two, &Limits { try_hugepages: false, ..limits() }, &mem(GIB)).unwrap();
        assert_eq!(p.size, 21 * 4096 + heap.next_multiple_of(4096));
        // No plan: the default; a size asked: that size.
        assert_eq!(plan(0, 0, &ONE_PAIR, &limits(), &mem(0)).unwrap().size, 512 * MIB);
        assert_eq!(plan(64 * MIB, heap, &ONE_PAIR, &limits(), &mem(GIB)).unwrap().size, 64 * MIB);
    }

    #[test]
    fn hugepages_are_shared_fairly() {
        // More than a guest's share: 4 KiB pages, and why.
        let p = plan(0, 0, &ONE_PAIR, &limits(), &mem(GIB)).unwrap();
        assert!(!p.hugepages);
        assert!(p.fallback.unwrap().contains("more than a guest's share of them (128 MiB"));
        // Within the share, but it would leave less than a share free.
        let p = plan(64 * MIB, 0, &ONE_PAIR, &limits(), &mem(180 * MIB)).unwrap();
        assert!(!p.hugepages);
        assert!(p.fallback.unwrap().contains("180 MiB of hugepages are free"));
        assert!(plan(64 * MIB, 0, &ONE_PAIR, &limits(), &mem(192 * MIB)).unwrap().hugepages);
        // 64 guests of 16 MiB one after the other never take the last share.
        let mut free = GIB;
        let mut on_hugepages = 0;
        for _ in 0..64 {
            let p = plan(0, 9_750_000, &ONE_PAIR, &limits(), &mem(free)).unwrap();
            if p.hugepages {
                free -= p.size;
                on_hugepages += 1;
            }
        }
        assert_eq!(on_hugepages, 56);
        assert!(free >= limits().hugepage_share, "{free}");
        // A share of 0: never hugepages.
        let none = Limits { hugepage_share: 0, ..limits() };
        assert!(!plan(0, 9_750_000, &ONE_PAIR, &none, &mem(GIB)).unwrap().hugepages);
    }

    #[test]
    fn limits_refuse_with_a_reason() {
        let (code, why) = plan(4 * GIB - 4096, 0, &ONE_PAIR, &limits(), &mem(GIB)).unwrap_err();
        assert_eq!(code, RefuseCode::TooLarge);
        assert!(why.contains("at most 2048 MiB"), "{why}");
        let (code, _) = plan(0, 3 * GIB, &ONE_PAIR, &limits(), &mem(GIB)).unwrap_err();
        assert_eq!(code, RefuseCode::TooLarge);
        let (code, _) = plan(0, u64::MAX, &ONE_PAIR, &limits(), &mem(GIB)).unwrap_err();
        assert_eq!(code, RefuseCode::TooLarge);
        // Sizes whose rounding to a page would overflow (the hostile harness asks).
        for asked in [u64::MAX, u64::MAX - 4095, u64::MAX - 2 * MIB + 2] {
            let (code, why) = plan(asked, 0, &ONE_PAIR, &limits(), &mem(GIB)).unwrap_err();
            assert_eq!(code, RefuseCode::TooLarge, "{asked}: {why}");
            assert!(why.contains("--max-region-size"), "{why}");
        }
        // Normal pages the machine cannot spare.
        let tight = MemInfo { available: 2 * GIB, ..mem(0) };
        let (code, why) = plan(1536 * MIB, 0, &ONE_PAIR, &limits(), &tight).unwrap_err();
        assert_eq!(code, RefuseCode::NoMemory);
        assert!(why.contains("less than 1536 MiB"), "{why}");
        assert!(plan(256 * MIB, 0, &ONE_PAIR, &limits(), &tight).is_ok());
        // Unknown memory (no /proc/meminfo): no check, no hugepages.
        assert_eq!(
            plan(256 * MIB, 0, &ONE_PAIR, &limits(), &MemInfo::default()).unwrap(),
            Plan { size: 256 * MIB, hugepages: false, fallback: None }
        );
    }
}
