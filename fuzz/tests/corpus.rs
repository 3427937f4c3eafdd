//! Replays the checked-in corpus (`fuzz/corpus/<target>/`: the seeds, the
//! inputs AFL++ found that reach new code, and any crash once fixed)
//! through every target: no input panics or breaks a target's property.
//! Run on every `cargo test`, so a decoder change that brings back a
//! finding fails here, without AFL.

use std::path::Path;

#[test]
fn every_target_has_a_corpus_and_no_input_in_it_fails() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    for (name, target) in fuzz::TARGETS {
        let dir = root.join(name);
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| {
                panic!(
                    "{}: {e}; run `cargo run -p fuzz --bin seeds`",
                    dir.display()
                )
            })
            .map(|e| e.expect("read corpus entry").path())
            .filter(|p| p.is_file())
            .collect();
        files.sort();
        assert!(!files.is_empty(), "{}: empty corpus", dir.display());
        for f in &files {
            let data = std::fs::read(f).expect("read corpus file");
            if std::panic::catch_unwind(|| target(&data)).is_err() {
                panic!("{name}: {} fails", f.display());
            }
        }
        println!("{name}: {} inputs", files.len());
    }
}
