#!/usr/bin/env bash
# Fuzz one target with AFL++ on the stable toolchain, then fold what it found
# into the checked-in corpus.
#   fuzz/run.sh TARGET [SECONDS]     (default 660: over 10 CPU-minutes)
# Needs `cargo install cargo-afl` once (it builds AFL++ on first use).
# Findings: fuzz/out/TARGET/default/crashes/ (and hangs/). Reproduce one with
#   cargo test -p fuzz after copying it into fuzz/corpus/TARGET/.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
target=${1:?usage: fuzz/run.sh TARGET [SECONDS]}
secs=${2:-660}
export CARGO_TARGET_DIR=${AFL_TARGET_DIR:-$here/../target/afl}
(cd "$here/.." && cargo afl build --release -q -p fuzz --features afl --bin tern-fuzz)
bin=$CARGO_TARGET_DIR/release/tern-fuzz
out=$here/out/$target
rm -rf "$out"
mkdir -p "$out"
export AFL_SKIP_CPUFREQ=1 AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1 AFL_NO_UI=1
# -V: stop after SECONDS; -t: a hang is an input that runs over 1 s.
# CPU time of the whole process tree (AFL's forked, persistent target is a
# grandchild that `time` does not see), from a cpuacct cgroup when there is one.
cg=/sys/fs/cgroup/cpuacct/tern-fuzz-$target-$$
mkdir "$cg" 2>/dev/null || cg=
(
  [ -n "$cg" ] && echo $BASHPID > "$cg/tasks"
  exec cargo afl fuzz -V "$secs" -t 1000 -i "$here/corpus/$target" -o "$out" "$bin" "$target"
) > "$out/log" 2>&1 || { tail -30 "$out/log"; exit 1; }
cpu=unknown
if [ -n "$cg" ]; then
  cpu=$(( $(cat "$cg/cpuacct.usage") / 1000000000 ))
  rmdir "$cg" 2>/dev/null || true
fi
echo "$cpu" > "$out/cpu_seconds"
# Keep the smallest set of inputs that covers what the whole queue covers.
rm -rf "$out/min"
cargo afl cmin -i "$out/default/queue" -o "$out/min" -- "$bin" "$target" > "$out/cmin.log" 2>&1
rm -f "$here/corpus/$target"/id*
for f in "$out/min"/*; do
  cp "$f" "$here/corpus/$target/$(basename "$f" | cut -c1-9 | tr ':' '-')"
done
s=$out/default/fuzzer_stats
echo "$target: $(grep -E '^(execs_done|corpus_count|saved_crashes|saved_hangs|bitmap_cvg|run_time) ' "$s" | awk '{printf "%s=%s ", $1, $3}')cpu_seconds=$cpu corpus_kept=$(ls "$out/min" | wc -l)"
