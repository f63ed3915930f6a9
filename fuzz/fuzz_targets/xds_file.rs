//! The xDS file is untrusted input: parsing it, then staging and compiling
//! what it holds, must never panic, whatever the bytes.
#![no_main]

use kmesh::kernel_native::compiler::{Limits, NoDns};
use kmesh::kernel_native::input::Snapshot;
use kmesh::kernel_native::snapshot::ConfigState;
use kmesh::xds::file::parse_resources;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(resources) = parse_resources(text) {
        // The daemon's file path: a flat list becomes one snapshot.
        let snapshot = Snapshot::from_anys(resources);
        let state = ConfigState::default();
        let _ = state.stage(&snapshot, &Limits::default(), &NoDns);
    }
});
