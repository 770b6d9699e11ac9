//! BUILD_ID identifies this compilation of the shared plugin code. The three plugins
//! reach each other through the bus's versioned `#[repr(C)]` interface, but the device
//! records it hands out are Rust types; a plugin from another build must be refused
//! before it touches them, so the id covers the sources, the compiler and the profile.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::Path;
use std::{env, fs};

fn hash_dir(dir: &Path, hasher: &mut DefaultHasher) {
    let mut entries: Vec<_> = fs::read_dir(dir).map(|r| r.flatten().map(|e| e.path()).collect()).unwrap_or_default();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            hash_dir(&path, hasher);
        } else if path.extension().is_some_and(|e| e == "rs" || e == "toml") {
            path.file_name().hash(hasher);
            fs::read(&path).unwrap_or_default().hash(hasher);
        }
    }
}

fn main() {
    let manifest = env::var("CARGO_MANIFEST_DIR").unwrap();
    let mut hasher = DefaultHasher::new();
    hash_dir(&Path::new(&manifest).join("src"), &mut hasher);
    hash_dir(&Path::new(&manifest).join("../../crates/shm-contract/src"), &mut hasher);
    env::var("CARGO_PKG_VERSION").unwrap().hash(&mut hasher);
    env::var("PROFILE").unwrap_or_default().hash(&mut hasher);
    env::var("RUSTC").unwrap_or_default().hash(&mut hasher);
    if let Ok(out) = std::process::Command::new(env::var("RUSTC").unwrap_or("rustc".into())).arg("-V").output() {
        out.stdout.hash(&mut hasher);
    }
    println!("cargo:rustc-env=SHM_DRIVER_BUILD_ID={:016x}", hasher.finish());
    println!("cargo:rerun-if-changed=src");
    println!("cargo:rerun-if-changed=../../crates/shm-contract/src");
}
