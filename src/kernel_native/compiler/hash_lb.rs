//! Consistent-hash lookup tables for MAGLEV and RING_HASH, built by the
//! compiler (pure) so that the kernel only indexes a table:
//! `endpoint = table[mix(key) % table.len()]`.
//!
//! Endpoints are identified by `address:port` (not by their position), so a
//! table rebuilt after an endpoint set change keeps every key that the change
//! does not have to move.
//!
//! The kernel reads slot `mix64(netns cookie) % len` (bpf stages.h, kn_hash_pick).

/// FNV-1a 64 of `bytes`, then a splitmix64 finaliser for good bit mixing.
pub(crate) fn hash64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    mix64(h)
}

/// splitmix64's finaliser: the kernel applies the same function to its key
/// (the client's netns cookie).
pub(crate) fn mix64(mut x: u64) -> u64 {
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^= x >> 33;
    x
}

pub(crate) fn is_prime(n: u64) -> bool {
    if n < 2 {
        return false;
    }
    let mut d = 2;
    while d * d <= n {
        if n.is_multiple_of(d) {
            return false;
        }
        d += 1;
    }
    true
}

/// Maglev lookup table (Eisenbud et al., NSDI 2016) of prime size `m` over
/// `(identity, weight)` endpoints; entries are endpoint positions. Weights:
/// each round an endpoint earns `weight / max_weight` of a turn and claims
/// its next preferred free slot per whole turn earned.
pub(crate) fn maglev_table(endpoints: &[(String, u32)], m: u32) -> Vec<u32> {
    assert!(is_prime(u64::from(m)), "maglev table size must be prime");
    let n = endpoints.len();
    if n == 0 {
        return Vec::new();
    }
    let m64 = u64::from(m);
    let prefs: Vec<(u64, u64)> = endpoints
        .iter()
        .map(|(id, _)| {
            let offset = hash64(id.as_bytes()) % m64;
            let skip = hash64(format!("{id}#skip").as_bytes()) % (m64 - 1) + 1;
            (offset, skip)
        })
        .collect();
    let max_w = endpoints.iter().map(|e| e.1).max().unwrap_or(1).max(1);
    let mut next = vec![0u64; n];
    let mut credit = vec![0f64; n];
    let mut table = vec![u32::MAX; m as usize];
    let mut filled = 0u32;
    while filled < m {
        for i in 0..n {
            credit[i] += f64::from(endpoints[i].1) / f64::from(max_w);
            while credit[i] >= 1.0 && filled < m {
                credit[i] -= 1.0;
                let (offset, skip) = prefs[i];
                loop {
                    let slot = ((offset + next[i] * skip) % m64) as usize;
                    next[i] += 1;
                    if table[slot] == u32::MAX {
                        table[slot] = i as u32;
                        filled += 1;
                        break;
                    }
                }
            }
        }
    }
    table
}

/// Points each endpoint of a RING_HASH level puts on the ring, the whole
/// ring between `min` and `max` points (Envoy's rule for
/// `minimum_ring_size` / `maximum_ring_size`).
///
/// An endpoint gets `weight × 2^s` points (`weight >> -s` for negative `s`),
/// `s` the smallest that gives the lightest endpoint a point and the ring at
/// least `min` points (so under `2 × min`, or one point per lightest
/// endpoint). One scale per level, not a share of the total as in Envoy:
/// removing or reweighting an endpoint leaves every other endpoint's points
/// in place unless the total crosses a power of two, so keys move only off
/// the endpoint that changed. A ring that would be over `max` gets exactly
/// `max` points shared by weight as Envoy shares them (running sums, so the
/// lightest endpoints may get none).
pub(crate) fn ring_points(weights: &[u32], min: u64, max: u64) -> Vec<u64> {
    let Some(lightest) = weights.iter().copied().min() else {
        return Vec::new();
    };
    let at_scale = |shift: i32| -> Vec<u64> {
        weights
            .iter()
            .map(|&w| match u32::try_from(shift) {
                Ok(up) => u64::from(w).saturating_mul(1 << up.min(63)),
                Err(_) => u64::from(w) >> shift.unsigned_abs(),
            })
            .collect()
    };
    let total = |points: &[u64]| points.iter().fold(0u64, |t, p| t.saturating_add(*p));
    // The lightest endpoint has a point once `s >= -log2(lightest)`.
    let mut shift = -(lightest.max(1).ilog2() as i32);
    let mut points = at_scale(shift);
    while total(&points) < min && shift < 63 {
        shift += 1;
        points = at_scale(shift);
    }
    if total(&points) <= max {
        return points;
    }
    let sum: u128 = weights.iter().map(|&w| u128::from(w)).sum();
    let (mut cumulative, mut given) = (0u128, 0u64);
    weights
        .iter()
        .map(|&w| {
            cumulative += u128::from(w);
            let upto =
                u64::try_from((u128::from(max) * cumulative).div_ceil(sum.max(1))).unwrap_or(max);
            let p = upto - given;
            given = upto;
            p
        })
        .collect()
}

/// RING_HASH sampled into a table of `size` slots: endpoint `i` puts its
/// [`ring_points`] on a 64-bit ring (its `j`-th at the hash of `"{id}_{j}"`);
/// slot `k` belongs to the owner of the first point at or after
/// `k * 2^64 / size`. Returns the table and the ring's points.
pub(crate) fn ring_table(
    endpoints: &[(String, u32)],
    min: u64,
    max: u64,
    size: u32,
) -> (Vec<u32>, u64) {
    let weights: Vec<u32> = endpoints.iter().map(|e| e.1).collect();
    let counts = ring_points(&weights, min, max);
    let points: u64 = counts.iter().sum();
    if points == 0 || size == 0 {
        return (Vec::new(), points);
    }
    let mut ring: Vec<(u64, u32)> = Vec::with_capacity(usize::try_from(points).unwrap_or(0));
    for (i, ((id, _), count)) in endpoints.iter().zip(&counts).enumerate() {
        for j in 0..*count {
            ring.push((hash64(format!("{id}_{j}").as_bytes()), i as u32));
        }
    }
    ring.sort_unstable();
    let step = u64::MAX / u64::from(size);
    let table = (0..u64::from(size))
        .map(|i| {
            let pos = i * step;
            let at = ring.partition_point(|(h, _)| *h < pos);
            ring[at % ring.len()].1
        })
        .collect();
    (table, points)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eps(n: usize) -> Vec<(String, u32)> {
        (0..n).map(|i| (format!("10.0.0.{i}:80"), 1)).collect()
    }

    /// Share of `keys` whose endpoint (by identity) differs between tables.
    fn moved(
        a: &[u32],
        a_eps: &[(String, u32)],
        b: &[u32],
        b_eps: &[(String, u32)],
        keys: u64,
    ) -> (f64, bool) {
        let mut moved = 0;
        let mut only_removed_moved = true;
        for k in 0..keys {
            let h = mix64(k);
            let ea = &a_eps[a[(h % a.len() as u64) as usize] as usize].0;
            let eb = &b_eps[b[(h % b.len() as u64) as usize] as usize].0;
            if ea != eb {
                moved += 1;
                if b_eps.iter().any(|e| &e.0 == ea) {
                    only_removed_moved = false;
                }
            }
        }
        (f64::from(moved) / keys as f64, only_removed_moved)
    }

    #[test]
    fn maglev_spreads_evenly_and_honours_weights() {
        let t = maglev_table(&eps(5), 65537);
        let mut counts = [0u32; 5];
        for e in &t {
            counts[*e as usize] += 1;
        }
        for c in counts {
            assert!((c as f64 / 65537.0 - 0.2).abs() < 0.01, "{counts:?}");
        }
        let weighted = vec![("a:1".to_string(), 1), ("b:1".to_string(), 3)];
        let t = maglev_table(&weighted, 1021);
        let b = t.iter().filter(|&&e| e == 1).count() as f64 / 1021.0;
        assert!((b - 0.75).abs() < 0.02, "{b}");
    }

    #[test]
    fn removing_one_of_n_endpoints_moves_about_one_nth_of_keys() {
        for n in [3usize, 5, 10] {
            let all = eps(n);
            let mut fewer = all.clone();
            fewer.remove(1);
            let (share, _) = moved(
                &maglev_table(&all, 65537),
                &all,
                &maglev_table(&fewer, 65537),
                &fewer,
                20_000,
            );
            let ideal = 1.0 / n as f64;
            assert!(share < ideal * 1.6, "maglev n={n}: moved {share}");

            let ring = |eps: &[(String, u32)]| ring_table(eps, 1024, 1 << 20, 4099).0;
            let (share, only_removed) = moved(&ring(&all), &all, &ring(&fewer), &fewer, 20_000);
            assert!(only_removed, "ring: only the removed endpoint's keys move");
            assert!(share < ideal * 1.6, "ring n={n}: moved {share}");
        }
    }

    /// The whole ring is between minimum and maximum_ring_size points (issue
    /// 14: it used to get `minimum_ring_size` points per endpoint).
    #[test]
    fn ring_points_are_clamped_between_minimum_and_maximum_ring_size() {
        let big = 1 << 20;
        assert_eq!(ring_points(&[1, 1, 1], 1024, big), [512, 512, 512]);
        assert_eq!(ring_points(&[1, 1000], 64, big), [1, 1000]);
        // Over the maximum: shared by weight as Envoy does, the light one first.
        assert_eq!(ring_points(&[1, 1000], 64, 128), [1, 127]);
        assert_eq!(
            ring_points(&[1, 1, 1], 1024, 1024).iter().sum::<u64>(),
            1024
        );
        // Heavy weights are scaled down, the lightest still gets a point.
        assert_eq!(ring_points(&[3, 6, 3], 1, big), [1, 3, 1]);
        // The case: 65,536 endpoints with minimum_ring_size 65537
        // asked for 65,536 x 65,537 points.
        let many = vec![1; 65_536];
        assert_eq!(ring_points(&many, 65_537, big).iter().sum::<u64>(), 131_072);
        assert!(ring_points(&[], 1024, big).is_empty());
        let (table, points) = ring_table(&eps(3), 1024, big, 1024);
        assert_eq!((table.len(), points), (1024, 1536));
    }

    #[test]
    fn tables_are_deterministic() {
        assert_eq!(maglev_table(&eps(4), 251), maglev_table(&eps(4), 251));
        assert_eq!(
            ring_table(&eps(4), 64, 128, 128),
            ring_table(&eps(4), 64, 128, 128)
        );
    }
}
