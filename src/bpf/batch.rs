//! Whole-map reads and chunked batch writes of hash maps: one syscall per
//! few thousand entries instead of one per entry.

use std::os::fd::{AsFd, AsRawFd};

use libbpf_rs::{MapCore, MapFlags, MapHandle};

/// Entries per batch syscall: large enough that syscall cost vanishes, small
/// enough that the copy buffers stay a few hundred KiB.
pub const BATCH: usize = 8192;

/// Write `keys[i] -> values[i]` (flat, fixed-size records) in batches.
pub fn update_all(
    map: &MapHandle,
    keys: &[u8],
    values: &[u8],
    key_size: usize,
    value_size: usize,
) -> Result<(), libbpf_rs::Error> {
    let count = keys.len() / key_size.max(1);
    for (k, v) in keys
        .chunks(BATCH * key_size)
        .zip(values.chunks(BATCH * value_size))
    {
        let n = (k.len() / key_size) as u32;
        map.update_batch(k, v, n, MapFlags::ANY, MapFlags::ANY)?;
    }
    debug_assert_eq!(values.len(), count * value_size);
    Ok(())
}

/// Delete every key (flat, fixed-size) in batches. A key already gone stops
/// the kernel's batch, so a failed batch is finished one key at a time,
/// ignoring keys that are not there.
pub fn delete_all(map: &MapHandle, keys: &[u8], key_size: usize) -> Result<(), libbpf_rs::Error> {
    for chunk in keys.chunks(BATCH * key_size) {
        let n = (chunk.len() / key_size) as u32;
        if map
            .delete_batch(chunk, n, MapFlags::ANY, MapFlags::ANY)
            .is_ok()
        {
            continue;
        }
        for key in chunk.chunks(key_size) {
            match map.delete(key) {
                Ok(()) => {}
                Err(e) if e.kind() == libbpf_rs::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(())
}

/// A map's contents as raw `(key, value)` byte pairs.
pub type Entries = Vec<(Vec<u8>, Vec<u8>)>;

/// Every (key, value) of a hash map, read with `BPF_MAP_LOOKUP_BATCH`.
///
/// Written here rather than with libbpf-rs's batch iterator, which ends at
/// the first batch that comes back short (the kernel returns whole hash
/// buckets, so a short batch is not the last) and hides errors.
pub fn read_all(map: &MapHandle) -> Result<Entries, libbpf_rs::Error> {
    let key_size = map.key_size() as usize;
    let value_size = map.value_size() as usize;
    let fd = map.as_fd().as_raw_fd();
    let mut batch = BATCH;
    let mut out = Vec::new();
    // The kernel's position token (a bucket index for hash maps); 8 bytes
    // covers every map type's token.
    let mut token_in = [0u8; 8];
    let mut token_out = [0u8; 8];
    let mut first = true;
    loop {
        let mut keys = vec![0u8; key_size * batch];
        let mut values = vec![0u8; value_size * batch];
        let mut count = batch as u32;
        let opts = libbpf_rs::libbpf_sys::bpf_map_batch_opts {
            sz: std::mem::size_of::<libbpf_rs::libbpf_sys::bpf_map_batch_opts>() as _,
            ..Default::default()
        };
        let in_ptr = if first {
            std::ptr::null_mut()
        } else {
            token_in.as_mut_ptr().cast()
        };
        // SAFETY: `keys` and `values` hold `count` records of the map's key
        // and value sizes, the tokens are 8 writable bytes (the kernel writes
        // at most 4 for hash maps), `count` and `opts` are valid for the call.
        let ret = unsafe {
            libbpf_rs::libbpf_sys::bpf_map_lookup_batch(
                fd,
                in_ptr,
                token_out.as_mut_ptr().cast(),
                keys.as_mut_ptr().cast(),
                values.as_mut_ptr().cast(),
                &mut count,
                &opts,
            )
        };
        let errno = if ret < 0 { -ret } else { 0 };
        if errno == libc::EINTR {
            continue;
        }
        if errno == libc::ENOSPC && count == 0 {
            // One hash bucket holds more entries than a batch: grow.
            batch *= 2;
            continue;
        }
        if errno != 0 && errno != libc::ENOENT {
            return Err(libbpf_rs::Error::from(std::io::Error::from_raw_os_error(
                errno,
            )));
        }
        let n = count as usize;
        out.extend(
            keys.chunks_exact(key_size)
                .zip(values.chunks_exact(value_size))
                .take(n)
                .map(|(k, v)| (k.to_vec(), v.to_vec())),
        );
        if errno == libc::ENOENT {
            return Ok(out);
        }
        token_in = token_out;
        first = false;
    }
}

/// Sum of a per-CPU `__u64` array entry over all CPUs.
pub fn percpu_sum(map: &MapHandle, index: u32) -> Result<u64, libbpf_rs::Error> {
    let per_cpu = map.lookup_percpu(&index.to_ne_bytes(), MapFlags::ANY)?;
    Ok(per_cpu
        .unwrap_or_default()
        .iter()
        .filter_map(|v| v.get(..8).and_then(|b| b.try_into().ok()))
        .map(u64::from_ne_bytes)
        .sum())
}
