#!/usr/bin/env bash
# The fuzz smoke run CI does (.ci/run): build every fuzz target and run each for a short time
# over its committed corpus (fuzz/corpus/<target>), failing on any crash, panic or hang.
# docs/security.md ("Fuzzing") says what each target asserts and how to fuzz for longer.
#
#   fuzz/smoke.sh                      # every target, 20 s each
#   FUZZ_SECONDS=600 fuzz/smoke.sh path_normalization
#
# Stable Rust is enough: the build passes the flags `cargo fuzz build -s none` passes
# (cargo-fuzz 0.13), none of which is unstable, so `cargo fuzz` (nightly or RUSTC_BOOTSTRAP=1)
# and this script share fuzz/target. No sanitizer: every crate fuzzed forbids unsafe code.
# The build never touches the workspace's target dir.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cd "$here"

seconds="${FUZZ_SECONDS:-20}"
all=(yaml_documents path_normalization pushed_snapshot outbound_http1)
if [ "$#" -gt 0 ]; then targets=("$@"); else targets=("${all[@]}"); fi

if ! command -v c++ >/dev/null; then
  echo "fuzz/smoke.sh: no C++ compiler (libfuzzer-sys builds libFuzzer): apt-get install -y g++" >&2
  exit 1
fi

triple="$(rustc -vV | sed -n 's/^host: //p')"
# Exactly cargo-fuzz's flags, so that both build into the same artifacts.
export RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing \
-Cllvm-args=-simplifycfg-branch-fold-threshold=0 -Cllvm-args=-sanitizer-coverage-stack-depth \
-Cdebug-assertions -Ccodegen-units=1"
unset CARGO_BUILD_RUSTFLAGS CARGO_ENCODED_RUSTFLAGS
echo "==> building the fuzz targets (fuzz/target, $triple)"
cargo build --manifest-path "$here/Cargo.toml" --locked --release --target "$triple" \
  --target-dir "$here/target" --config 'profile.release.debug="line-tables-only"' --bins

scratch="$here/target/smoke"
for t in "${targets[@]}"; do
  bin="$here/target/$triple/release/$t"
  [ -x "$bin" ] || { echo "fuzz/smoke.sh: unknown target $t (one of: ${all[*]})" >&2; exit 1; }
  rm -rf "${scratch:?}/$t"
  mkdir -p "$scratch/$t/corpus" "$scratch/$t/artifacts"
  echo "==> $t: ${seconds}s over fuzz/corpus/$t"
  # New inputs go to the scratch corpus (the first directory), never into the committed one.
  if ! "$bin" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
      -artifact_prefix="$scratch/$t/artifacts/" "$scratch/$t/corpus" "corpus/$t" \
      >"$scratch/$t/log" 2>&1; then
    tail -n 60 "$scratch/$t/log" >&2
    echo "fuzz/smoke.sh: $t FAILED; the input is in $scratch/$t/artifacts/ (reproduce: $bin <file>)" >&2
    exit 1
  fi
  grep -E '^stat::number_of_executed_units|^Done' "$scratch/$t/log" | tail -n 1
done
echo "==> fuzz smoke run: ${#targets[@]} target(s) passed"
