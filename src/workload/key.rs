//! Shared strings for the dual-engine store.
//!
//! A mesh of 500,000 workloads names each one in many places: the delta
//! client's version map, the store, the member index of its service, the
//! address index, the id table, the plan's backend record. Each held its own
//! `String` copy, which made uids alone cost hundreds of bytes per workload.
//! A [`Key`] is a reference-counted string: every holder shares one
//! allocation. The [`Interner`] also folds the values that repeat across
//! workloads (namespace, node, network, locality, service keys) into one
//! allocation each.

use std::collections::HashSet;
use std::sync::Arc;

pub type Key = Arc<str>;

/// One shared copy of each distinct string handed in.
#[derive(Debug, Default)]
pub struct Interner {
    strings: HashSet<Key, foldhash::fast::RandomState>,
    /// Size after the last sweep: the next sweep waits until it doubles.
    swept_at: usize,
}

/// Sweeps never run below this many strings (not worth the walk).
const SWEEP_FLOOR: usize = 4096;

impl Interner {
    /// The shared copy of `s` (kept from now on if it is new).
    pub fn intern(&mut self, s: &Key) -> Key {
        if s.is_empty() {
            return s.clone();
        }
        if let Some(shared) = self.strings.get(s) {
            return shared.clone();
        }
        self.sweep_if_grown();
        self.strings.insert(s.clone());
        s.clone()
    }

    /// Replaces `s` by its shared copy.
    pub fn share(&mut self, s: &mut Key) {
        *s = self.intern(s);
    }

    /// Drops strings nobody but the interner holds any more (their services
    /// and workloads are gone). Amortised: runs when the set has doubled.
    fn sweep_if_grown(&mut self) {
        if self.strings.len() < SWEEP_FLOOR.max(2 * self.swept_at) {
            return;
        }
        self.strings.retain(|s| Arc::strong_count(s) > 1);
        self.swept_at = self.strings.len();
    }

    pub fn len(&self) -> usize {
        self.strings.len()
    }

    pub fn is_empty(&self) -> bool {
        self.strings.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_strings_share_one_allocation() {
        let mut interner = Interner::default();
        let a: Key = Arc::from("default/web.default.svc.cluster.local");
        let b: Key = Arc::from("default/web.default.svc.cluster.local");
        let first = interner.intern(&a);
        let second = interner.intern(&b);
        assert!(Arc::ptr_eq(&first, &second));
        assert!(Arc::ptr_eq(&first, &a));
        assert_eq!(interner.len(), 1);
    }

    #[test]
    fn strings_no_one_holds_are_swept_once_the_set_doubles() {
        let mut interner = Interner::default();
        let kept: Key = Arc::from("kept");
        interner.intern(&kept);
        for i in 1..SWEEP_FLOOR {
            interner.intern(&Arc::from(format!("gone-{i}")));
        }
        assert_eq!(interner.len(), SWEEP_FLOOR);
        // The next new string finds the set at the floor: everything no one
        // else holds goes first.
        interner.intern(&Arc::from("trigger"));
        assert_eq!(interner.len(), 2);
        assert!(Arc::ptr_eq(&interner.intern(&Arc::from("kept")), &kept));
    }
}
