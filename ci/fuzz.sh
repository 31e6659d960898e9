#!/usr/bin/env bash
# Bounded fuzzing of the wire with cargo-fuzz (fuzz/): every target runs for FUZZ_SECONDS on
# the stable toolchain without a sanitizer; any crash fails. Then the planted-bug checks: with
# `--features planted-bug`, text_write and request_area must each crash on their planted
# defect within FUZZ_PLANTED_SECONDS, from an empty corpus, or the fuzzing itself is not
# working.
#
#   FUZZ_SECONDS          seconds per target (default 60)
#   FUZZ_PLANTED_SECONDS  budget for finding each planted bug (default 60)
#   FUZZ_TARGETS          targets to run (default: text_write region_read worker_take
#                         request_area)
#
# New corpus entries and crash artifacts go to a temp dir; the committed seeds in
# fuzz/corpus/ are only read. A crash's input is copied to fuzz/artifacts/<target>/ (ignored
# by git) and printed in base64. Reproduce with
#   cd fuzz && cargo fuzz run --sanitizer none --debug-assertions <target> <file>
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}
# Stable only: nothing here may come to need nightly (ignored where rustup is absent).
export RUSTUP_TOOLCHAIN=${FUZZ_TOOLCHAIN:-stable}

seconds=${FUZZ_SECONDS:-60}
planted_seconds=${FUZZ_PLANTED_SECONDS:-60}
read -r -a targets <<<"${FUZZ_TARGETS:-text_write region_read worker_take request_area}"

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "ci/fuzz.sh: installing cargo-fuzz" >&2
  nice -n 10 cargo install cargo-fuzz --locked
fi
echo "ci/fuzz.sh: $(cargo fuzz --version), $(rustc --version)" >&2

# --debug-assertions: overflow checks and debug_assert! in the code under test count too.
flags=(--sanitizer none --debug-assertions)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# The region targets read a header and payload (fuzz/src/lib.rs): 8 KiB reaches every field;
# request_area's records (fuzz/src/area.rs) need no more.
max_len_for() {
  case "$1" in
    region_read | worker_take | request_area) echo 8192 ;;
    *) echo 4096 ;;
  esac
}

# libFuzzer's final statistic NAME from LOG (empty if it printed none).
stat_of() {
  sed -n "s/^stat::$1: *//p" "$2" | tail -n 1 || true
}

# The last "exec/s: N" of libFuzzer's progress lines, for when the final stats are missing.
last_rate() {
  { grep -o 'exec/s: [0-9]*' "$1" || true; } | tail -n 1 | sed 's/exec\/s: //'
}

keep_crash() { # keep_crash TARGET DIR
  local f
  for f in "$2"/*; do
    [ -f "$f" ] || continue
    mkdir -p "artifacts/$1"
    cp "$f" "artifacts/$1/"
    echo "ci/fuzz.sh: $1: input kept as fuzz/artifacts/$1/$(basename "$f"), base64:" >&2
    head -c 65536 "$f" | base64 -w 0 >&2
    echo >&2
  done
}

echo "ci/fuzz.sh: building ${targets[*]}" >&2
nice -n 10 cargo fuzz build "${flags[@]}"

summary=()
failed=()
for t in "${targets[@]}"; do
  mkdir -p "$work/corpus/$t" "$work/artifacts/$t"
  log="$work/$t.log"
  echo "ci/fuzz.sh: fuzzing $t for ${seconds}s" >&2
  rc=0
  nice -n 10 cargo fuzz run "${flags[@]}" "$t" "$work/corpus/$t" "corpus/$t" -- \
    -max_total_time="$seconds" -print_final_stats=1 -timeout=10 -max_len="$(max_len_for "$t")" \
    -artifact_prefix="$work/artifacts/$t/" >"$log" 2>&1 || rc=$?
  execs=$(stat_of number_of_executed_units "$log")
  rate=$(stat_of average_exec_per_sec "$log")
  [ -n "$rate" ] || rate=$(last_rate "$log")
  new=$(stat_of new_units_added "$log")
  line=$(printf '%-12s %10s executions %8s exec/s %6s new units' "$t" "${execs:-?}" "${rate:-?}" "${new:-?}")
  if [ "$rc" -ne 0 ] || [ -z "$execs" ]; then
    echo "ci/fuzz.sh: $t FAILED (exit $rc); the end of its log:" >&2
    tail -n 60 "$log" >&2
    keep_crash "$t" "$work/artifacts/$t"
    failed+=("$t")
    line="$line   FAILED (exit $rc)"
  fi
  echo "$line"
  summary+=("$line")
done

# The planted bugs, each in its own target, from an empty corpus (no seed may hand it the
# answer), each within the budget, each recognised by its own panic message:
#   text_write    a char-boundary cut that forgets to step back (slicing panics);
#   request_area  a request-area record decoder that forgets the NUL check (the target's
#                 check of what a decoder takes panics).
planted=(
  "text_write|is not a char boundary"
  "request_area|decoded area text holds a NUL"
)
planted_targets=()
for p in "${planted[@]}"; do planted_targets+=("${p%%|*}"); done
echo "ci/fuzz.sh: planted-bug checks (${planted_targets[*]}, at most ${planted_seconds}s each)" >&2
nice -n 10 cargo fuzz build "${flags[@]}" --features planted-bug
for p in "${planted[@]}"; do
  t=${p%%|*}
  expect=${p#*|}
  dir="$work/planted/$t"
  mkdir -p "$dir/corpus" "$dir/artifacts"
  log="$dir.log"
  start=$(date +%s%N)
  rc=0
  nice -n 10 cargo fuzz run "${flags[@]}" --features planted-bug "$t" "$dir/corpus" -- \
    -max_total_time="$planted_seconds" -print_final_stats=1 -timeout=10 \
    -artifact_prefix="$dir/artifacts/" >"$log" 2>&1 || rc=$?
  elapsed_ms=$((($(date +%s%N) - start) / 1000000))
  elapsed=$(printf '%d.%03d' $((elapsed_ms / 1000)) $((elapsed_ms % 1000)))
  execs=$(stat_of number_of_executed_units "$log")
  if [ "$rc" -ne 0 ] && compgen -G "$dir/artifacts/crash-*" >/dev/null && grep -q "$expect" "$log"; then
    line=$(printf '%-12s found in %ss after %s executions' "planted-bug ($t)" "$elapsed" "${execs:-?}")
  else
    echo "ci/fuzz.sh: the planted bug of $t was NOT found in ${planted_seconds}s (exit $rc); the end of its log:" >&2
    tail -n 40 "$log" >&2
    failed+=("planted-bug ($t)")
    line=$(printf '%-12s NOT found in %ss (exit %s)' "planted-bug ($t)" "$elapsed" "$rc")
  fi
  echo "$line"
  summary+=("$line")
  # Its crash is expected: drop it (the trap removes the temp dir anyway).
  rm -rf "$dir/artifacts"
done

echo "ci/fuzz.sh: summary (${seconds}s per target)"
printf '  %s\n' "${summary[@]}"
if [ "${#failed[@]}" -gt 0 ]; then
  echo "ci/fuzz.sh: failed: ${failed[*]}" >&2
  exit 1
fi
echo "ci/fuzz.sh: all fuzz targets passed"
