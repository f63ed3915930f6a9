//! Small stable integer ids for services and backends: the kernel keys
//! records by id, so an id must stay the same while its object lives (an
//! unchanged service is never rewritten) and freed ids are reused (the id
//! space stays as small as the config).
//!
//! One rule keeps a connect from ever reaching another object's records: an
//! id goes to a new key only once the kernel holds no record of its old one.
//! So a released id waits until the next successful write has deleted its
//! records ([`IdTable::kernel_caught_up`]), and a restarted daemon starts
//! from the ids the pinned maps use ([`IdTable::adopt`]): each key gets the
//! id its records already have, no key gets an id whose records belong to
//! another one. Without that, the first write after a restart rewrote
//! workloads and services under fresh ids while the adopted frontends still
//! pointed at the old ones: for that moment a VIP led to another service's
//! pods.

use std::collections::{HashMap, HashSet};

use super::key::Key;
use super::records::{owner_tag, OwnerTag};

type Fast = foldhash::fast::RandomState;

/// The ids an earlier daemon's records use: with the owner tag each record
/// carries, or `None` where no record tells (endpoint entries left without
/// their service record by an interrupted write).
pub type AdoptedIds = Vec<(u32, Option<OwnerTag>)>;

#[derive(Debug, Default, Clone)]
pub struct IdTable {
    by_key: HashMap<Key, u32, Fast>,
    free: Vec<u32>,
    next: u32,
    /// Adopted ids not yet claimed, by the owner tag of their key.
    claims: HashMap<OwnerTag, u32, Fast>,
    /// Ids the kernel may still hold records under for a key that no longer
    /// has them (released, or adopted and not claimed): reused only after
    /// the next successful write.
    retiring: HashSet<u32, Fast>,
}

impl IdTable {
    pub fn get(&self, key: &str) -> Option<u32> {
        self.by_key.get(key).copied()
    }

    /// Start from the ids the kernel's maps use (call before any
    /// allocation). Ids no record uses below the highest are free at once.
    pub fn adopt(&mut self, adopted: &AdoptedIds) {
        let in_use: HashSet<u32> = adopted.iter().map(|(id, _)| *id).collect();
        self.next = in_use.iter().max().map_or(0, |max| max.saturating_add(1));
        // Highest first: `pop` hands out the lowest free id.
        self.free = (0..self.next)
            .rev()
            .filter(|id| !in_use.contains(id))
            .collect();
        self.retiring.extend(in_use);
        for (id, owner) in adopted {
            if let Some(owner) = owner {
                self.claims.insert(*owner, *id);
            }
        }
    }

    /// The key's id, allocated if it has none. The bool says "new".
    pub fn allocate(&mut self, key: &Key) -> (u32, bool) {
        if let Some(id) = self.by_key.get(key) {
            return (*id, false);
        }
        let claimed = if self.claims.is_empty() {
            None
        } else {
            self.claims.remove(&owner_tag(key))
        };
        let id = match claimed {
            // Its own records: no longer retiring.
            Some(id) if self.retiring.remove(&id) => id,
            _ => self.free.pop().unwrap_or_else(|| {
                let id = self.next;
                self.next += 1;
                id
            }),
        };
        self.by_key.insert(key.clone(), id);
        (id, true)
    }

    /// Room for `more` keys, so a large update grows the table once.
    pub fn reserve(&mut self, more: usize) {
        self.by_key.reserve(more);
    }

    /// The key's object is gone; its id retires until the kernel has
    /// dropped its records.
    pub fn release(&mut self, key: &str) -> Option<u32> {
        let id = self.by_key.remove(key)?;
        self.retiring.insert(id);
        Some(id)
    }

    /// The kernel now holds exactly the plan (a write succeeded): retired
    /// ids, and adopted ones no key claimed, have no records left.
    pub fn kernel_caught_up(&mut self) {
        if self.retiring.is_empty() && self.claims.is_empty() {
            return;
        }
        self.claims.clear();
        // The newly freed go on top, lowest last so `pop` takes it first;
        // the free list itself is not re-sorted on every write.
        let mut freed: Vec<u32> = self.retiring.drain().collect();
        freed.sort_unstable_by(|a, b| b.cmp(a));
        self.free.extend(freed);
    }

    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(s: &str) -> Key {
        Key::from(s)
    }

    #[test]
    fn ids_are_stable_and_reused_once_the_kernel_caught_up() {
        let mut ids = IdTable::default();
        assert_eq!(ids.allocate(&key("a")), (0, true));
        assert_eq!(ids.allocate(&key("b")), (1, true));
        assert_eq!(ids.allocate(&key("a")), (0, false));
        assert_eq!(ids.release("a"), Some(0));
        // The kernel may still hold a's records under 0.
        assert_eq!(ids.allocate(&key("c")), (2, true));
        ids.kernel_caught_up();
        assert_eq!(ids.allocate(&key("d")), (0, true));
        assert_eq!(ids.get("b"), Some(1));
        assert_eq!(ids.len(), 3);
    }

    #[test]
    fn adopted_ids_go_back_to_their_own_keys_and_to_no_other() {
        let mut ids = IdTable::default();
        ids.adopt(&vec![
            (3, Some(owner_tag("svc-a"))),
            (5, Some(owner_tag("svc-b"))),
            (6, None), // endpoint entries without their record
        ]);
        // New keys get ids no adopted record uses.
        assert_eq!(ids.allocate(&key("new-1")), (0, true));
        assert_eq!(ids.allocate(&key("svc-b")), (5, true));
        assert_eq!(ids.allocate(&key("new-2")), (1, true));
        assert_eq!(ids.allocate(&key("new-3")), (2, true));
        assert_eq!(ids.allocate(&key("new-4")), (4, true));
        // 3 (svc-a, absent from the new config) and 6 are not handed out.
        assert_eq!(ids.allocate(&key("new-5")), (7, true));
        // The first write deleted their records: now they are free.
        ids.kernel_caught_up();
        assert_eq!(ids.allocate(&key("new-6")), (3, true));
        assert_eq!(ids.allocate(&key("new-7")), (6, true));
        // svc-a comes back later: its claim is gone with its records.
        assert_eq!(ids.allocate(&key("svc-a")), (8, true));
    }

    #[test]
    fn a_claim_is_not_taken_back_after_its_id_was_reused() {
        let mut ids = IdTable::default();
        ids.adopt(&vec![(0, Some(owner_tag("svc-a")))]);
        assert_eq!(ids.allocate(&key("svc-a")), (0, true));
        ids.release("svc-a");
        ids.kernel_caught_up();
        assert_eq!(ids.allocate(&key("other")), (0, true));
        // svc-a's tag no longer names an id.
        assert_eq!(ids.allocate(&key("svc-a")), (1, true));
    }
}
