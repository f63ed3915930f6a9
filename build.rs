//! Build steps that need no network:
#![allow(clippy::expect_used, clippy::unwrap_used)] // a build script reports failure by panicking
//! 1. compile every `bpf/**/*.bpf.c` into a libbpf skeleton (`$OUT_DIR/<name>.skel.rs`);
//! 2. copy the Envoy FileDescriptorSet shipped by the envoy-types crate into
//!    `$OUT_DIR/envoy_types.bin`, so the xDS file reader can map proto3 JSON
//!    (with `"@type"`) onto Envoy messages;
//! 3. compile `proto/*.proto` (the Istio workload API) with protox (pure Rust,
//!    no protoc needed) into prost types and `$OUT_DIR/istio_types.bin`.

use std::env;
use std::ffi::OsStr;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use libbpf_cargo::SkeletonBuilder;

fn main() {
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    build_bpf_skeletons(&out_dir);
    copy_envoy_descriptors(&out_dir);
    compile_istio_protos(&out_dir);
}

fn compile_istio_protos(out_dir: &Path) {
    let sources = ["proto/workload.proto", "proto/authorization.proto"];
    println!("cargo:rerun-if-changed=proto");
    let descriptors =
        protox::compile(sources, ["proto"]).unwrap_or_else(|e| panic!("compiling proto/: {e:?}"));
    fs::write(
        out_dir.join("istio_types.bin"),
        prost::Message::encode_to_vec(&descriptors),
    )
    .expect("writing istio_types.bin");
    prost_build::Config::new()
        .out_dir(out_dir)
        .compile_fds(descriptors)
        .unwrap_or_else(|e| panic!("generating Rust for proto/: {e}"));
}

/// A fingerprint of a shared C layout: a restarted daemon reuses pinned
/// maps only if they were written with the same layout (FNV-1a of the header).
fn layout_version(header: &str) -> String {
    let header = fs::read(header).unwrap_or_else(|e| panic!("reading {header}: {e}"));
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in header {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{hash:016x}")
}

fn build_bpf_skeletons(out_dir: &Path) {
    println!(
        "cargo:rustc-env=KMESH_KN_LAYOUT={}",
        layout_version("include/kernel_native.h")
    );
    println!(
        "cargo:rustc-env=KMESH_DE_LAYOUT={}",
        layout_version("include/dual_engine.h")
    );
    println!("cargo:rerun-if-changed=include");
    println!("cargo:rerun-if-changed=bpf");
    let include = Path::new("include")
        .canonicalize()
        .expect("include/ exists");
    for source in bpf_sources(Path::new("bpf")) {
        println!("cargo:rerun-if-changed={}", source.display());
        let stem = source
            .file_name()
            .and_then(OsStr::to_str)
            .and_then(|n| n.strip_suffix(".bpf.c"))
            .expect("bpf sources are named *.bpf.c")
            .to_string();
        let skel = out_dir.join(format!("{stem}.skel.rs"));
        SkeletonBuilder::new()
            .source(&source)
            .clang_args([
                OsStr::new("-I"),
                include.as_os_str(),
                OsStr::new("-Wall"),
                OsStr::new("-Werror"),
                OsStr::new("-O2"),
                // atomics that return a value (fetch-and-add for round robin)
                OsStr::new("-mcpu=v3"),
            ])
            .build_and_generate(&skel)
            .unwrap_or_else(|e| panic!("building {}: {e:#}", source.display()));
    }
}

fn bpf_sources(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut entries: Vec<_> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .filter_map(Result::ok)
        .map(|e| e.path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            found.extend(bpf_sources(&path));
        } else if path.to_string_lossy().ends_with(".bpf.c") {
            found.push(path);
        }
    }
    found
}

fn copy_envoy_descriptors(out_dir: &Path) {
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let output = Command::new(cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--offline",
            "--filter-platform",
        ])
        .arg(env::var("TARGET").expect("cargo sets TARGET"))
        .output()
        .expect("running cargo metadata");
    assert!(
        output.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let meta: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("cargo metadata prints JSON");
    let manifest = meta["packages"]
        .as_array()
        .and_then(|pkgs| {
            pkgs.iter()
                .find(|p| p["name"] == "envoy-types")
                .and_then(|p| p["manifest_path"].as_str())
        })
        .expect("envoy-types is a dependency");
    let descriptors = Path::new(manifest)
        .parent()
        .expect("manifest has a parent")
        .join("src/generated/types.bin");
    println!("cargo:rerun-if-changed={}", descriptors.display());
    fs::copy(&descriptors, out_dir.join("envoy_types.bin"))
        .unwrap_or_else(|e| panic!("copying {}: {e}", descriptors.display()));
}
