//! Capacity, checked before anything is written: a plan that would not fit
//! (counting the spare-slot copy an update holds for a moment) is refused
//! whole, and the maps keep the previous configuration.

use std::ops::Range;

use super::WriteError;

/// Entries of each map.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct MapCounts {
    pub frontends: usize,
    pub services: usize,
    pub endpoints: usize,
    pub backends: usize,
}

/// What one service's update does to de_endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EndpointDelta {
    /// New entries (the new slot's keys that are not in the map already).
    pub added: usize,
    /// Entries deleted once the record points at the new slot.
    pub freed: usize,
}

/// How the service updates are grouped: each group's new endpoints are
/// written, then its records flipped, then its old endpoints deleted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointSchedule {
    /// Ranges of indices into the service updates, in order.
    pub groups: Vec<Range<usize>>,
    /// Most entries de_endpoints holds at any moment.
    pub peak: usize,
    /// Entries once every group is done (before deleted services go).
    pub after: usize,
}

/// Entries a map peaks at (every insert comes before any delete).
pub fn check_map(
    map: &'static str,
    current: usize,
    added: usize,
    capacity: u32,
) -> Result<(), WriteError> {
    let needed = current + added;
    if needed > capacity as usize {
        return Err(WriteError::Capacity {
            map,
            needed,
            capacity,
        });
    }
    Ok(())
}

/// Group the service updates so de_endpoints never overflows: a group grows
/// while its new entries fit next to everything already in the map and stay
/// under `group_limit` (the size of the transient copy). One service whose
/// new slot does not fit even alone makes the whole update fail.
pub fn schedule_endpoints(
    current: usize,
    deltas: &[EndpointDelta],
    capacity: u32,
    group_limit: usize,
) -> Result<EndpointSchedule, WriteError> {
    let capacity_n = capacity as usize;
    let mut groups = Vec::new();
    let mut entries = current;
    let mut peak = current;
    let (mut start, mut added, mut freed) = (0usize, 0usize, 0usize);
    for (i, delta) in deltas.iter().enumerate() {
        let fits = entries + added + delta.added <= capacity_n;
        let small = added + delta.added <= group_limit;
        if i > start && !(fits && small) {
            // Close the group: its old entries go before the next one starts.
            groups.push(start..i);
            entries = entries + added - freed;
            (start, added, freed) = (i, 0, 0);
        }
        if entries + added + delta.added > capacity_n {
            return Err(WriteError::Capacity {
                map: "de_endpoints",
                needed: entries + added + delta.added,
                capacity,
            });
        }
        added += delta.added;
        freed += delta.freed;
        peak = peak.max(entries + added);
    }
    if start < deltas.len() {
        groups.push(start..deltas.len());
        entries = entries + added - freed;
    }
    Ok(EndpointSchedule {
        groups,
        peak,
        after: entries,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn d(added: usize, freed: usize) -> EndpointDelta {
        EndpointDelta { added, freed }
    }

    #[test]
    fn one_group_when_everything_fits() {
        let s = schedule_endpoints(10, &[d(5, 5), d(3, 0)], 100, 1000).unwrap();
        assert_eq!(s.groups, vec![0..2]);
        assert_eq!(s.peak, 18);
        assert_eq!(s.after, 13);
    }

    #[test]
    fn groups_split_so_the_spare_copy_fits_a_nearly_full_map() {
        // 90 of 100 used; each update rewrites 8 entries of 8: written
        // together they would need 90 + 24, one by one 98 at most.
        let s = schedule_endpoints(90, &[d(8, 8), d(8, 8), d(8, 8)], 100, 1000).unwrap();
        assert_eq!(s.groups, vec![0..1, 1..2, 2..3]);
        assert_eq!(s.peak, 98);
        assert_eq!(s.after, 90);
    }

    #[test]
    fn groups_stay_under_the_limit() {
        let s = schedule_endpoints(0, &[d(4, 0), d(4, 0), d(4, 0)], 100, 8).unwrap();
        assert_eq!(s.groups, vec![0..2, 2..3]);
        assert_eq!(s.after, 12);
    }

    #[test]
    fn a_service_that_cannot_fit_fails_the_whole_update() {
        let err = schedule_endpoints(95, &[d(2, 2), d(10, 10)], 100, 1000).unwrap_err();
        assert!(
            matches!(
                err,
                WriteError::Capacity {
                    map: "de_endpoints",
                    needed: 105,
                    capacity: 100
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn other_maps_count_inserts_before_deletes() {
        assert!(check_map("de_frontends", 9, 1, 10).is_ok());
        assert!(check_map("de_frontends", 9, 2, 10).is_err());
    }
}
