//! Delta ADS payloads are untrusted input: decoding and validating an
//! `istio.workload.Address` or `istio.security.Authorization`, then
//! compiling what was accepted, must never panic, whatever the bytes.
#![no_main]

use kmesh::dns::NoDns;
use kmesh::workload::authorization::decode_authorization;
use kmesh::workload::compiler::{CompilerSettings, Limits, Update, WorkloadCompiler};
use kmesh::workload::proto::{ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL};
use kmesh::workload::resource::decode_address;
use libfuzzer_sys::fuzz_target;

const LIMITS: Limits = Limits {
    max_frontends: 1024,
    max_services: 256,
    max_endpoints: 4096,
    max_backends: 1024,
};

fuzz_target!(|data: &[u8]| {
    // Each chunk (split at 0xff 0xfe) is one resource of one response.
    let mut compiler = WorkloadCompiler::new(CompilerSettings {
        node_name: "node-a".into(),
        ..CompilerSettings::default()
    });
    let mut update = Update::default();
    for (i, chunk) in data.split(|b| *b == 0xfe).enumerate() {
        let any = prost_types::Any {
            type_url: ADDRESS_TYPE_URL.into(),
            value: chunk.to_vec(),
        };
        if let Ok(resource) = decode_address(&any, Some("fuzz")) {
            update.upserts.push((Some(format!("r{i}").into()), resource));
        }
        let policy = prost_types::Any {
            type_url: AUTHORIZATION_TYPE_URL.into(),
            value: chunk.to_vec(),
        };
        let _ = decode_authorization(&policy, None);
    }
    let removals: Vec<String> = update
        .upserts
        .iter()
        .step_by(2)
        .filter_map(|(n, _)| n.as_deref().map(str::to_owned))
        .collect();
    let _ = compiler.apply(update, &LIMITS, &NoDns);
    let _ = compiler.apply(
        Update {
            upserts: Vec::new(),
            removals,
        },
        &LIMITS,
        &NoDns,
    );
});
