//! The handles this plugin hands to the others through the bus interface: numbers that
//! stand for one reference each to a device, a weak reference to a device, or a region.
//!
//! A handle is looked up here before anything is done with it, so a null, released,
//! made-up or other-kind handle is refused instead of followed. The numbers come from
//! one counter for all kinds (a device handle is never a region handle) and are never
//! reused.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use shm_driver_common::bus::{lock, Handle};

use crate::device::ShmDevice;
use crate::session::Region;

/// The next handle's number (0 is no object).
static NEXT: AtomicU64 = AtomicU64::new(1);

/// The references held by handles of one kind.
pub struct Table<T> {
    entries: Mutex<BTreeMap<u64, T>>,
}

impl<T: Clone> Table<T> {
    const fn new() -> Self {
        Table { entries: Mutex::new(BTreeMap::new()) }
    }

    /// A new handle holding `value`.
    pub fn insert(&self, value: T) -> Handle {
        let id = NEXT.fetch_add(1, Ordering::Relaxed);
        lock(&self.entries).insert(id, value);
        Handle(id)
    }

    /// What `handle` holds, if it is a live handle of this table.
    pub fn get(&self, handle: Handle) -> Option<T> {
        lock(&self.entries).get(&handle.0).cloned()
    }

    /// Ends `handle`, returning what it held (dropped by the caller, outside the lock).
    pub fn remove(&self, handle: Handle) -> Option<T> {
        lock(&self.entries).remove(&handle.0)
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        lock(&self.entries).len()
    }
}

pub struct Handles {
    pub devices: Table<Arc<ShmDevice>>,
    pub weak_devices: Table<Weak<ShmDevice>>,
    pub regions: Table<Arc<Region>>,
}

pub static HANDLES: Handles = Handles { devices: Table::new(), weak_devices: Table::new(), regions: Table::new() };
