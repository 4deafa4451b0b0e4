#!/usr/bin/env bash
# Builds every fuzz target in fuzz/ (cargo-fuzz, libFuzzer) and runs each
# for a bounded time; exits non-zero if any target finds a crash (a panic,
# a timeout of one input, or running out of memory).
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]    default: 20 s, every target
#
# Everything reusable lives outside the clone, so reruns are warm:
#   ~/.cache/tern/cargo-fuzz-<version>/  cargo-fuzz, installed once (pinned)
#   ~/.cache/tern/fuzz-target/           the instrumented builds
#   ~/.cache/tern/fuzz-corpus/<target>/  the corpus each run grows
# The checked-in seeds in fuzz/corpus/<target>/ are read, never written.
# A crash is saved in fuzz/artifacts/<target>/; replay it with
#   scripts/fuzz.sh replay <target> fuzz/artifacts/<target>/<file>
#
# FUZZ_SANITIZER (default none) picks libFuzzer's sanitizer: Tern's targets
# look for panics, which need none; `address` also checks unsafe code in
# dependencies, at about twice the build and run time.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo_fuzz_version=0.13.2
cache=${TERN_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/tern}
sanitizer=${FUZZ_SANITIZER:-none}

if ! command -v rustup >/dev/null || ! rustup toolchain list | grep -q '^nightly'; then
  echo "fuzz.sh: the nightly Rust toolchain is missing; libFuzzer's instrumentation needs it." >&2
  echo "fuzz.sh: install it with: rustup toolchain install nightly" >&2
  exit 1
fi
export RUSTUP_TOOLCHAIN=nightly

started=$SECONDS
fuzz_root=$cache/cargo-fuzz-$cargo_fuzz_version
cargo_fuzz=$fuzz_root/bin/cargo-fuzz
if [ ! -x "$cargo_fuzz" ]; then
  echo "fuzz.sh: installing cargo-fuzz $cargo_fuzz_version into $fuzz_root" >&2
  # cargo-fuzz itself builds on stable.
  RUSTUP_TOOLCHAIN=stable cargo install --locked --quiet --root "$fuzz_root" "cargo-fuzz@$cargo_fuzz_version"
fi
installed=$SECONDS

# Release with debug assertions and overflow checks: a silent overflow is a bug too.
flags=(--fuzz-dir fuzz --target-dir "$cache/fuzz-target" --release --debug-assertions --sanitizer "$sanitizer")

# The runs use the binaries built here, not `cargo fuzz run`, which would
# rebuild first: a build failure is then never mistaken for a crash.
bin_dir=$cache/fuzz-target/$(rustc -vV | sed -n 's/^host: //p')/release

if [ "${1:-}" = replay ]; then
  [ $# -eq 3 ] || { echo "usage: scripts/fuzz.sh replay <target> <input>" >&2; exit 2; }
  "$cargo_fuzz" fuzz build "${flags[@]}" "$2"
  exec "$bin_dir/$2" "$3"
fi

seconds=${1:-20}
if ! [[ $seconds =~ ^[1-9][0-9]*$ ]]; then
  echo "usage: scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]  (seconds: a positive whole number)" >&2
  exit 2
fi
shift $(($# > 0 ? 1 : 0))
if [ $# -gt 0 ]; then
  targets=("$@")
else
  mapfile -t targets < <("$cargo_fuzz" fuzz list --fuzz-dir fuzz)
fi
[ ${#targets[@]} -gt 0 ] || { echo "fuzz.sh: no fuzz targets found in fuzz/" >&2; exit 1; }

for target in "${targets[@]}"; do
  if ! "$cargo_fuzz" fuzz build "${flags[@]}" "$target"; then
    echo "fuzz.sh: $target does not build (see above); nothing was fuzzed" >&2
    exit 1
  fi
done
built=$SECONDS

failed=()
for target in "${targets[@]}"; do
  echo "fuzz.sh: $target for ${seconds}s" >&2
  corpus=$cache/fuzz-corpus/$target
  mkdir -p "$corpus" "fuzz/corpus/$target" "fuzz/artifacts/$target"
  # The first corpus directory receives new inputs; the seeds stay as checked in.
  if ! "$bin_dir/$target" -artifact_prefix="fuzz/artifacts/$target/" -max_total_time="$seconds" -timeout=10 \
    -rss_limit_mb=2048 -print_final_stats=1 "$corpus" "fuzz/corpus/$target"; then
    failed+=("$target")
  fi
done

echo "fuzz.sh: cargo-fuzz ready in $((installed - started))s, targets built in $((built - installed))s," \
  "fuzzed in $((SECONDS - built))s (${#targets[@]} targets, ${seconds}s each)" >&2
if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz.sh: crashes found by: ${failed[*]} (inputs in fuzz/artifacts/<target>/)" >&2
  exit 1
fi
echo "fuzz.sh: no crash in ${targets[*]}" >&2
