//! The AFL++ harness: `tern-fuzz TARGET`, built with `cargo afl build -p
//! fuzz --features afl`, run under `cargo afl fuzz` (see fuzz/README.md).

fn main() {
    let name = std::env::args().nth(1).unwrap_or_default();
    let Some(target) = fuzz::target(&name) else {
        let names: Vec<&str> = fuzz::TARGETS.iter().map(|(n, _)| *n).collect();
        eprintln!("usage: tern-fuzz TARGET, one of: {}", names.join(", "));
        std::process::exit(64);
    };
    // Load the material before the fork server starts, not per input.
    fuzz::material::get();
    afl::fuzz!(|data: &[u8]| target(data));
}
