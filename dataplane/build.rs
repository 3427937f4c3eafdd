//! Release builds of the sidecar place the functions it runs next to each
//! other (`link-order.txt`, made by `bench/link-order.sh`). The kernel maps
//! a program's text in 64 KiB runs around each page it touches, so with the
//! running code spread over the whole binary nearly all of it stays
//! resident; packed together, a sidecar keeps about 2.5 MB less resident
//! (docs/performance.md, "Memory"). Only the layout changes: a function
//! missing from the list (new or renamed) is placed after the listed ones.
//! Set `TERN_NO_LINK_ORDER=1` to link without it (for a linker other than
//! LLD, which Rust uses by default on x86_64 Linux).

fn main() {
    println!("cargo:rerun-if-changed=link-order.txt");
    println!("cargo:rerun-if-env-changed=TERN_NO_LINK_ORDER");
    let release = std::env::var("PROFILE").as_deref() == Ok("release");
    let target = std::env::var("TARGET").unwrap_or_default();
    let off = std::env::var_os("TERN_NO_LINK_ORDER").is_some_and(|v| v != "0");
    if release && target == "x86_64-unknown-linux-gnu" && !off {
        let order = concat!(env!("CARGO_MANIFEST_DIR"), "/link-order.txt");
        println!("cargo:rustc-link-arg-bin=dataplane=-Wl,--symbol-ordering-file={order}");
        println!("cargo:rustc-link-arg-bin=dataplane=-Wl,--no-warn-symbol-ordering");
    }
}
