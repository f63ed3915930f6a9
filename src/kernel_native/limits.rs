//! The kernel's fixed limits, mirrored from `include/kernel_native.h` (the one
//! definition; a test below checks that these values still match it). The
//! compiler rejects what would not fit, so the writer never truncates.

/// Size of a `struct kn_name`, NUL padding included.
pub const KMESH_NAME_LEN: usize = 128;
/// Longest name that fits a `struct kn_name` with its terminating NUL.
pub const MAX_NAME_BYTES: usize = KMESH_NAME_LEN - 1;
/// Filter-chain match entries per listener.
pub const KN_MAX_CHAIN_MATCHES: usize = 64;
/// Clusters in one tcp_proxy `weighted_clusters`.
pub const KN_MAX_WEIGHTED_CLUSTERS: usize = 32;
/// Priority levels with endpoints, per address family, per cluster.
pub const KN_MAX_PRIORITIES: usize = 8;
/// Endpoints in one priority level (bounded by the kernel's binary search).
pub const KN_MAX_ENDPOINTS_PER_LEVEL: usize = 1 << 17;
/// LEAST_REQUEST picks compared per connect (`choice_count`).
pub const KN_MAX_CHOICES: u32 = 8;
/// Endpoints of one cluster ejected at once (outlier detection).
pub const KN_MAX_EJECTED: u32 = 16;
/// Slots of one MAGLEV / RING_HASH lookup table.
pub const KN_MAX_HASH_TABLE_SIZE: u32 = 65537;
/// Table slots packed in one cluster record.
pub const KN_HASH_SLOTS_PER_RECORD: u32 = 4;
/// `max_connections` at or above this is no limit (no counter is kept).
pub const KN_MAX_CONNECTIONS_LIMIT: u64 = 1 << 31;

/// Points of one RING_HASH ring. The daemon's own cap (the kernel never sees
/// the ring, only the table sampled from it): 16 points per slot of the
/// largest table, 16 MiB while the ring is built. Envoy allows 8M.
pub const KN_MAX_RING_SIZE: u32 = 1 << 20;

#[cfg(test)]
mod tests {
    use super::*;

    const HEADER: &str = include_str!("../../include/kernel_native.h");

    /// The value of `#define NAME <value>` in the header, evaluated for the
    /// two shapes it uses: a number and `(1u << KN_...)`.
    fn define(name: &str) -> usize {
        let line = HEADER
            .lines()
            .find_map(|l| l.strip_prefix(&format!("#define {name} ")))
            .unwrap_or_else(|| panic!("{name} is not defined in kernel_native.h"));
        let value = line.trim();
        if let Some(shift) = value
            .strip_prefix("(1u << ")
            .and_then(|v| v.strip_suffix(')'))
        {
            return 1 << define(shift.trim());
        }
        value
            .parse()
            .unwrap_or_else(|e| panic!("{name} = {value:?}: {e}"))
    }

    #[test]
    fn limits_match_the_header() {
        assert_eq!(define("KMESH_NAME_LEN"), KMESH_NAME_LEN);
        assert_eq!(define("KN_MAX_CHAIN_MATCHES"), KN_MAX_CHAIN_MATCHES);
        assert_eq!(define("KN_MAX_WEIGHTED_CLUSTERS"), KN_MAX_WEIGHTED_CLUSTERS);
        assert_eq!(define("KN_MAX_PRIORITIES"), KN_MAX_PRIORITIES);
        assert_eq!(define("KN_MAX_CHOICES"), KN_MAX_CHOICES as usize);
        assert_eq!(define("KN_MAX_EJECTED"), KN_MAX_EJECTED as usize);
        assert_eq!(
            define("KN_MAX_HASH_TABLE_SIZE"),
            KN_MAX_HASH_TABLE_SIZE as usize
        );
        assert_eq!(
            define("KN_HASH_SLOTS_PER_RECORD"),
            KN_HASH_SLOTS_PER_RECORD as usize
        );
        assert_eq!(
            define("KN_MAX_ENDPOINTS_PER_LEVEL"),
            KN_MAX_ENDPOINTS_PER_LEVEL
        );
        assert_eq!(
            define("KN_MAX_CONNECTIONS_LIMIT"),
            KN_MAX_CONNECTIONS_LIMIT as usize
        );
    }
}
