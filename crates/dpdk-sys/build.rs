//! Generates bindings for the DPDK that is installed (pkg-config `libdpdk`), the
//! driver-SDK headers of exactly that version included, and compiles the C glue:
//! wrappers for DPDK's static inline functions, the `rte_errno` shim and the layout
//! probe that the layout tests compare against.

use std::env;
use std::path::{Path, PathBuf};

/// The DPDK series this project is written and tested against. Internal structures
/// (`rte_eth_dev`, `rte_bus`, `rte_mempool_ops`) change between series.
const SUPPORTED_SERIES: &str = "22.11";

/// The libraries the plugins and the proxy call into. Linked as needed.
const DPDK_LIBS: &[&str] = &[
    "rte_eal",
    "rte_kvargs",
    "rte_telemetry",
    "rte_ring",
    "rte_mempool",
    "rte_mbuf",
    "rte_net",
    "rte_meter",
    "rte_ethdev",
    "rte_bus_vdev",
    "rte_pdump",
    "rte_pcapng",
    "rte_bpf",
];

const SDK_HEADERS: &[&str] = &["bus_driver.h", "dev_driver.h", "ethdev_driver.h", "bus_vdev_driver.h"];

fn fail(message: &str) -> ! {
    // cargo shows the panic message of a build script; make it the whole story.
    panic!("\n\ndpdk-sys: {message}\n\n");
}

fn main() {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let out_dir = PathBuf::from(env::var("OUT_DIR").unwrap());
    for var in ["DPDK_SDK_INCLUDE", "DPDK_SYS_ALLOW_ANY_VERSION", "PKG_CONFIG_PATH"] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    println!("cargo:rerun-if-changed=csrc");

    let dpdk = pkg_config::Config::new()
        .cargo_metadata(false)
        .probe("libdpdk")
        .unwrap_or_else(|e| {
            fail(&format!(
                "DPDK was not found by pkg-config ({e}).\n\
                 Install it with scripts/setup.sh (Debian: apt-get install dpdk-dev libdpdk-dev)."
            ))
        });
    if !dpdk.version.starts_with(SUPPORTED_SERIES) && env::var_os("DPDK_SYS_ALLOW_ANY_VERSION").is_none() {
        fail(&format!(
            "found DPDK {}, but this project supports DPDK {SUPPORTED_SERIES}.x only \
             (set DPDK_SYS_ALLOW_ANY_VERSION=1 to try anyway; the layout tests will tell)",
            dpdk.version
        ));
    }

    let sdk_include = find_sdk_headers(&manifest_dir, &dpdk.version);
    println!("cargo:rustc-env=DPDK_SYS_VERSION={}", dpdk.version);
    println!("cargo:version={}", dpdk.version);
    println!("cargo:sdk_include={}", sdk_include.display());

    let mut clang_args: Vec<String> = vec![
        // DPDK's headers need SSE4.2 at least; corei7 is the x86 baseline Debian builds DPDK for.
        "-march=corei7".into(),
        format!("-I{}", sdk_include.display()),
        format!("-I{}", manifest_dir.join("csrc").display()),
    ];
    for path in &dpdk.include_paths {
        clang_args.push(format!("-I{}", path.display()));
    }
    for (name, value) in &dpdk.defines {
        match value {
            Some(v) => clang_args.push(format!("-D{name}={v}")),
            None => clang_args.push(format!("-D{name}")),
        }
    }

    let static_wrappers = out_dir.join("static_wrappers");
    let mut builder = bindgen::Builder::default();
    // DPDK's headers: under .../dpdk/ when installed; in a DPDK source tree (its
    // uninstalled libdpdk.pc) wherever pkg-config's include paths say.
    for path in &dpdk.include_paths {
        if !["/usr/include", "/usr/local/include"].iter().any(|p| path == Path::new(p)) {
            builder = builder.allowlist_file(format!(r"{}/.*\.h", regex_escape(&path.display().to_string())));
        }
    }
    let bindings = builder
        .header(manifest_dir.join("csrc/wrapper.h").display().to_string())
        .clang_args(&clang_args)
        .allowlist_file(r".*/dpdk/.*\.h")
        .allowlist_file(format!(r"{}/.*\.h", regex_escape(&sdk_include.display().to_string())))
        .allowlist_file(r".*/csrc/wrapper\.h")
        // These carry packed/bitfield unions that bindgen cannot lay out; no code here
        // needs their insides.
        .opaque_type("rte_flow_item_gtp.*")
        .opaque_type("rte_gtp_.*")
        .opaque_type("rte_l2tpv2_.*")
        .opaque_type("rte_flow_item_l2tpv2.*")
        .opaque_type("rte_flow_item_ecpri.*")
        .opaque_type("rte_ecpri_.*")
        .opaque_type("rte_arp_ipv4")
        .opaque_type("rte_arp_hdr")
        .opaque_type("rte_flow_item_arp_eth_ipv4")
        .blocklist_item("IPPORT_RESERVED")
        .derive_default(true)
        .derive_debug(false)
        .layout_tests(true)
        .generate_comments(false)
        .prepend_enum_name(false)
        .default_enum_style(bindgen::EnumVariation::Consts)
        // Flag macros such as RTE_ETH_RX_OFFLOAD_SCATTER are RTE_BIT64(n): let clang evaluate them.
        .clang_macro_fallback()
        // Its temporary files (a .c file, a precompiled wrapper.h) go next to wrapper.h and
        // into the working directory by default, shared by every build of this crate that
        // runs at the same time (release, test, clippy, a DPDK tree's build): they race and
        // macros go missing. Per build, in OUT_DIR.
        .clang_macro_fallback_build_dir(&out_dir)
        .wrap_static_fns(true)
        .wrap_static_fns_path(&static_wrappers)
        .parse_callbacks(Box::new(bindgen::CargoCallbacks::new()))
        .generate()
        .unwrap_or_else(|e| fail(&format!("bindgen could not generate the DPDK bindings: {e}")));
    bindings
        .write_to_file(out_dir.join("bindings.rs"))
        .unwrap_or_else(|e| fail(&format!("cannot write bindings.rs: {e}")));

    let mut build = cc::Build::new();
    build
        .file(static_wrappers.with_extension("c"))
        .file(manifest_dir.join("csrc/shim.c"))
        .file(manifest_dir.join("csrc/layout_probe.c"))
        .include(manifest_dir.join("csrc"))
        .include(&sdk_include)
        .flag("-march=corei7")
        .flag("-include")
        .flag("rte_config.h")
        .flag("-Wno-unused-parameter")
        .flag("-Wno-deprecated-declarations")
        .flag("-Wno-duplicate-decl-specifier")
        // The static wrappers are hot-path glue (rx/tx bursts, mbuf and mempool ops).
        .opt_level(3);
    for path in &dpdk.include_paths {
        build.include(path);
    }
    for (name, value) in &dpdk.defines {
        build.define(name, value.as_deref());
    }
    build.compile("dpdk_sys_glue");

    // The -L paths of `pkg-config --libs` (none for a system DPDK; the build tree's for a
    // DPDK source tree's uninstalled libdpdk.pc, whose `libdir` names a directory that
    // exists only once installed), then `libdir` if it exists.
    let mut lib_dirs = dpdk.link_paths.clone();
    if let Ok(dir) = pkg_config::get_variable("libdpdk", "libdir").map(PathBuf::from) {
        if dir.is_dir() && !lib_dirs.contains(&dir) {
            lib_dirs.push(dir);
        }
    }
    for dir in &lib_dirs {
        println!("cargo:rustc-link-search=native={}", dir.display());
    }
    for lib in DPDK_LIBS {
        println!("cargo:rustc-link-lib=dylib={lib}");
    }
}

/// The driver-SDK headers of the installed version: `DPDK_SDK_INCLUDE`, or the copy that
/// scripts/setup.sh puts in `<workspace>/.sdk/dpdk-<version>/include`.
fn find_sdk_headers(manifest_dir: &Path, version: &str) -> PathBuf {
    let candidates: Vec<PathBuf> = match env::var_os("DPDK_SDK_INCLUDE") {
        Some(dir) => vec![PathBuf::from(dir)],
        None => {
            let workspace = manifest_dir.ancestors().nth(2).unwrap_or(manifest_dir);
            vec![
                workspace.join(".sdk").join(format!("dpdk-{version}")).join("include"),
                PathBuf::from("/usr/include/dpdk"),
            ]
        }
    };
    for dir in &candidates {
        if SDK_HEADERS.iter().all(|h| dir.join(h).is_file()) {
            for h in SDK_HEADERS {
                println!("cargo:rerun-if-changed={}", dir.join(h).display());
            }
            return dir.clone();
        }
    }
    let looked: Vec<String> = candidates.iter().map(|d| d.display().to_string()).collect();
    fail(&format!(
        "the DPDK {version} driver-SDK headers ({}) were not found (looked in: {}).\n\
         Debian does not install them; run scripts/setup.sh, which extracts them from the \
         matching Debian source package, or point DPDK_SDK_INCLUDE at a directory holding them.",
        SDK_HEADERS.join(", "),
        looked.join(", ")
    ))
}

fn regex_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if "\\.+*?()|[]{}^$".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}
