//! Carves the region's heap into pools. Control path only (mempool creation), so a
//! sorted list of allocations with first-fit is plenty.

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeapAllocator {
    start: u64,
    end: u64,
    /// Allocated ranges `(offset, len)`, sorted by offset, non-overlapping.
    used: Vec<(u64, u64)>,
}

impl HeapAllocator {
    /// Manages `[start, start + size)`.
    pub fn new(start: u64, size: u64) -> Self {
        HeapAllocator { start, end: start + size, used: Vec::new() }
    }

    /// First free range of `len` bytes aligned to `align` (a power of two).
    pub fn alloc(&mut self, len: u64, align: u64) -> Option<u64> {
        if len == 0 || !align.is_power_of_two() {
            return None;
        }
        let mut cursor = self.start;
        let mut insert_at = self.used.len();
        for (i, &(off, used_len)) in self.used.iter().enumerate() {
            let candidate = align_up(cursor, align)?;
            if candidate.checked_add(len)? <= off {
                insert_at = i;
                cursor = candidate;
                self.used.insert(insert_at, (cursor, len));
                return Some(cursor);
            }
            cursor = off + used_len;
        }
        let candidate = align_up(cursor, align)?;
        if candidate.checked_add(len)? <= self.end {
            self.used.insert(insert_at, (candidate, len));
            Some(candidate)
        } else {
            None
        }
    }

    /// Releases the range that `alloc` returned at `offset`. Unknown offsets are ignored.
    pub fn free(&mut self, offset: u64) {
        self.used.retain(|&(off, _)| off != offset);
    }

    /// The largest allocation of alignment `align` that would still succeed.
    pub fn largest_free(&self, align: u64) -> u64 {
        let mut best = 0;
        let mut cursor = self.start;
        for &(off, len) in self.used.iter().chain(std::iter::once(&(self.end, 0))) {
            if let Some(aligned) = align_up(cursor, align) {
                if aligned < off {
                    best = best.max(off - aligned);
                }
            }
            cursor = off + len;
        }
        best
    }

    #[cfg(test)]
    pub fn capacity(&self) -> u64 {
        self.end - self.start
    }
}

fn align_up(value: u64, align: u64) -> Option<u64> {
    value.checked_add(align - 1).map(|v| v & !(align - 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_fit_with_alignment_and_reuse() {
        let mut heap = HeapAllocator::new(4096, 1 << 20);
        let a = heap.alloc(100, 64).unwrap();
        assert_eq!(a, 4096);
        let b = heap.alloc(100, 4096).unwrap();
        assert_eq!(b, 8192);
        let c = heap.alloc(10, 64).unwrap();
        assert_eq!(c, 4096 + 128, "fills the gap between a and b");
        heap.free(a);
        assert_eq!(heap.alloc(64, 64), Some(4096), "freed space is reused");
        assert!(heap.alloc(2 << 20, 64).is_none());
    }

    #[test]
    fn largest_free_matches_what_alloc_accepts() {
        let mut heap = HeapAllocator::new(0, 10_000);
        heap.alloc(1000, 64).unwrap();
        let largest = heap.largest_free(64);
        assert!(heap.clone().alloc(largest, 64).is_some());
        assert!(heap.alloc(largest + 1, 64).is_none());
        assert_eq!(heap.capacity(), 10_000);
    }

    #[test]
    fn refuses_nonsense() {
        let mut heap = HeapAllocator::new(0, 100);
        assert!(heap.alloc(0, 64).is_none());
        assert!(heap.alloc(10, 3).is_none());
        assert!(heap.alloc(u64::MAX, 64).is_none());
    }
}
