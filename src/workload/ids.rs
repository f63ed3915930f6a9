//! Small stable integer ids for services and backends: the kernel keys
//! records by id, so an id must stay the same while its object lives (an
//! unchanged service is never rewritten) and freed ids are reused (the id
//! space stays as small as the config).

use std::collections::HashMap;

use super::key::Key;

#[derive(Debug, Default, Clone)]
pub struct IdTable {
    by_key: HashMap<Key, u32, foldhash::fast::RandomState>,
    free: Vec<u32>,
    next: u32,
}

impl IdTable {
    pub fn get(&self, key: &str) -> Option<u32> {
        self.by_key.get(key).copied()
    }

    /// The key's id, allocated if it has none. The bool says "new".
    pub fn allocate(&mut self, key: &Key) -> (u32, bool) {
        if let Some(id) = self.by_key.get(key) {
            return (*id, false);
        }
        let id = self.free.pop().unwrap_or_else(|| {
            let id = self.next;
            self.next += 1;
            id
        });
        self.by_key.insert(key.clone(), id);
        (id, true)
    }

    /// Room for `more` keys, so a large update grows the table once.
    pub fn reserve(&mut self, more: usize) {
        self.by_key.reserve(more);
    }

    pub fn release(&mut self, key: &str) -> Option<u32> {
        let id = self.by_key.remove(key)?;
        self.free.push(id);
        Some(id)
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

    #[test]
    fn ids_are_stable_and_reused_after_release() {
        let mut ids = IdTable::default();
        let key = |s: &str| Key::from(s);
        assert_eq!(ids.allocate(&key("a")), (0, true));
        assert_eq!(ids.allocate(&key("b")), (1, true));
        assert_eq!(ids.allocate(&key("a")), (0, false));
        assert_eq!(ids.release("a"), Some(0));
        assert_eq!(ids.allocate(&key("c")), (0, true));
        assert_eq!(ids.get("b"), Some(1));
        assert_eq!(ids.len(), 2);
    }
}
