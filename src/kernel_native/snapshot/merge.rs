//! Ordered walks over the name-keyed maps of the state: what changed between
//! the slots and a snapshot, the slots seen through staged updates, and the
//! entries that differ between two plans. Each is one pass in key order (no
//! lookups), so even a walk over 50k names costs little.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::iter::Peekable;

use super::slot::Slot;
use crate::kernel_native::input::{same, KindMap};

/// Names whose offered bytes changed: `(name, true)` for a new or changed
/// resource, `(name, false)` for one that left. `held` names are neither
/// (their version in force stays); `excluded` names count as absent.
pub(super) fn diff_names<T>(
    slots: &BTreeMap<String, Slot<T>>,
    map: &KindMap,
    held: &dyn Fn(&str) -> bool,
    excluded: &dyn Fn(&str) -> bool,
) -> Vec<(String, bool)> {
    let mut out = Vec::new();
    let mut old = slots.iter().peekable();
    let mut new = map.items().iter().peekable();
    loop {
        let order = match (old.peek(), new.peek()) {
            (None, None) => break,
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (Some((a, _)), Some((b, _))) => a.as_str().cmp(b.as_str()),
        };
        match order {
            Ordering::Less => {
                let Some((name, _)) = old.next() else { break };
                if !held(name) {
                    out.push((name.clone(), false));
                }
            }
            Ordering::Greater => {
                let Some((name, _)) = new.next() else { break };
                if !held(name) && !excluded(name) {
                    out.push((name.clone(), true));
                }
            }
            Ordering::Equal => {
                let (Some((name, slot)), Some((_, any))) = (old.next(), new.next()) else {
                    break;
                };
                if held(name) {
                    continue;
                }
                if excluded(name) {
                    out.push((name.clone(), false));
                } else if !same(&slot.offered, any) {
                    out.push((name.clone(), true));
                }
            }
        }
    }
    out
}

/// The slot of `name` as staged: the staged update if any, else the slot in force.
pub(super) fn overlay_get<'a, T>(
    base: &'a BTreeMap<String, T>,
    over: &'a BTreeMap<String, Option<T>>,
    name: &str,
) -> Option<&'a T> {
    match over.get(name) {
        Some(update) => update.as_ref(),
        None => base.get(name),
    }
}

/// Every slot as staged, in name order.
pub(super) fn overlay<'a, T>(
    base: &'a BTreeMap<String, T>,
    over: &'a BTreeMap<String, Option<T>>,
) -> impl Iterator<Item = (&'a String, &'a T)> + 'a {
    Overlay {
        base: base.iter().peekable(),
        over: over.iter().peekable(),
    }
}

struct Overlay<'a, T, B, O>
where
    B: Iterator<Item = (&'a String, &'a T)>,
    O: Iterator<Item = (&'a String, &'a Option<T>)>,
    T: 'a,
{
    base: Peekable<B>,
    over: Peekable<O>,
}

impl<'a, T, B, O> Iterator for Overlay<'a, T, B, O>
where
    B: Iterator<Item = (&'a String, &'a T)>,
    O: Iterator<Item = (&'a String, &'a Option<T>)>,
{
    type Item = (&'a String, &'a T);

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let order = match (self.base.peek(), self.over.peek()) {
                (None, None) => return None,
                (Some(_), None) => Ordering::Less,
                (None, Some(_)) => Ordering::Greater,
                (Some((a, _)), Some((b, _))) => a.cmp(b),
            };
            let (name, item) = match order {
                Ordering::Less => {
                    let (name, item) = self.base.next()?;
                    (name, Some(item))
                }
                Ordering::Greater => {
                    let (name, item) = self.over.next()?;
                    (name, item.as_ref())
                }
                Ordering::Equal => {
                    self.base.next();
                    let (name, item) = self.over.next()?;
                    (name, item.as_ref())
                }
            };
            if let Some(item) = item {
                return Some((name, item));
            }
        }
    }
}

/// The entries of `new` that differ from `old` (`None`: gone from `new`).
pub(super) fn delta<K: Ord + Clone, V: PartialEq>(
    old: &BTreeMap<K, V>,
    new: BTreeMap<K, V>,
) -> BTreeMap<K, Option<V>> {
    let mut out = BTreeMap::new();
    let mut old_it = old.iter().peekable();
    for (key, value) in new {
        while let Some((k, _)) = old_it.peek() {
            if *k < &key {
                out.insert((*k).clone(), None);
                old_it.next();
            } else {
                break;
            }
        }
        match old_it.peek() {
            Some((k, v)) if *k == &key => {
                if *v != &value {
                    out.insert(key, Some(value));
                }
                old_it.next();
            }
            _ => {
                out.insert(key, Some(value));
            }
        }
    }
    for (k, _) in old_it {
        out.insert(k.clone(), None);
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn delta_lists_added_changed_and_removed_entries() {
        let old: BTreeMap<u8, &str> = [(1, "a"), (2, "b"), (4, "d")].into();
        let new: BTreeMap<u8, &str> = [(2, "B"), (3, "c"), (4, "d")].into();
        let d = delta(&old, new);
        assert_eq!(
            d,
            [(1, None), (2, Some("B")), (3, Some("c"))]
                .into_iter()
                .collect()
        );
    }

    #[test]
    fn overlay_applies_updates_and_removals_in_order() {
        let base: BTreeMap<String, u8> = [("a".into(), 1), ("b".into(), 2), ("d".into(), 4)].into();
        let over: BTreeMap<String, Option<u8>> = [
            ("b".into(), None),
            ("c".into(), Some(3)),
            ("d".into(), Some(5)),
        ]
        .into();
        let seen: Vec<(&str, u8)> = overlay(&base, &over)
            .map(|(k, v)| (k.as_str(), *v))
            .collect();
        assert_eq!(seen, [("a", 1), ("c", 3), ("d", 5)]);
        assert_eq!(overlay_get(&base, &over, "b"), None);
        assert_eq!(overlay_get(&base, &over, "a"), Some(&1));
    }
}
