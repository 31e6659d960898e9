#!/usr/bin/env bash
# loom models of the protocol (verification/), then the planted bugs and the seed's
# two-client race, each of which must be CAUGHT (its model must fail).
# Prints each model's explored-execution count and time. Usage: ci/loom.sh
#
# The multi-slot worker's models (tests/loom_slots.rs: the real serve_slots, four loom threads)
# run at preemption bound 1 (LOOM_SLOTS_PREEMPTIONS): bound 2 does not finish one of them in two
# minutes (see verification/README.md).
set -euo pipefail
cd "$(dirname "$0")/.."
export RUSTFLAGS="--cfg loom"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR_LOOM:-target/loom}
PREEMPTIONS=${LOOM_MAX_PREEMPTIONS:-3}
export LOOM_LOG=loom::model=info

cargo test --release --locked -p llama-shm-verification --features planted-bugs --no-run 2>&1 | tail -1
bin() { ls -t "$CARGO_TARGET_DIR"/release/deps/"$1"-* | grep -v '\.d$' | head -1; }
protocol=$(bin loom_protocol)
planted=$(bin loom_planted)
slots=$(bin loom_slots)
SLOTS_PREEMPTIONS=${LOOM_SLOTS_PREEMPTIONS:-1}

iterations() { grep -aoE 'Completed in [0-9]+ iterations' "$1" | grep -oE '[0-9]+' | paste -sd+ | bc 2>/dev/null || echo "?"; }

fail=0
# run_model BINARY MODEL BOUND: the model must pass.
run_model() {
  local binary=$1 t=$2 p=$3 log start
  log=$(mktemp)
  start=$(date +%s.%N)
  if LOOM_MAX_PREEMPTIONS=$p "$binary" --exact "$t" --nocapture --test-threads=1 >"$log" 2>&1; then
    printf 'loom: %-52s passed  %8s executions  %6.1f s  (preemption bound %s)\n' "$t" "$(iterations "$log")" "$(echo "$(date +%s.%N) - $start" | bc)" "$p"
  else
    printf 'loom: %-52s FAILED\n' "$t"; tail -30 "$log"; fail=1
  fi
  rm -f "$log"
}
for t in one_client_two_cycles_then_shutdown deadline_then_next_request_gets_its_own_answer \
         stop_signal_at_any_point_ends_every_wait two_clients_with_a_turn_lock_are_clean \
         streamed_answer_through_a_small_ring_arrives_whole \
         cancel_at_any_point_ends_the_request_and_the_next_one_is_whole \
         deadline_binds_against_a_hostile_poster \
         a_client_that_dies_holding_the_turn_does_not_wedge_the_worker; do
  # The stop model has four threads: one preemption less keeps it under a minute.
  p=$PREEMPTIONS
  [ "$t" = stop_signal_at_any_point_ends_every_wait ] && p=$((PREEMPTIONS - 1))
  run_model "$protocol" "$t" "$p"
done
for t in two_slots_cancel_in_one_while_the_other_streams \
         a_client_dying_in_either_slot_leaves_the_other_whole; do
  run_model "$slots" "$t" "$SLOTS_PREEMPTIONS"
done

# expect_caught BINARY MODEL [MUTANT [BOUND]]: the model must fail (with the mutant of the
# shipped code switched on, when one is named: LLAMA_SHM_MUTANT, see
# crates/llama-shm/src/sync.rs), at preemption bound BOUND (default $PREEMPTIONS).
expect_caught() {
  local binary=$1 t=$2 mutant=${3:-} p=${4:-$PREEMPTIONS} log label=$2
  [ -n "$mutant" ] && label="$t [mutant $mutant]"
  log=$(mktemp)
  start=$(date +%s.%N)
  if LLAMA_SHM_MUTANT=$mutant LOOM_MAX_PREEMPTIONS=$p "$binary" --exact "$t" --include-ignored --nocapture --test-threads=1 >"$log" 2>&1; then
    printf 'loom: %-52s NOT CAUGHT (the model passed)\n' "$label"; fail=1
  else
    why=$(grep -aoE 'deadlock|Causality violation|not idle at the end|got another client.s answer|a passed deadline gave|exceeded maximum number of branches|assertion[^:]*failed' "$log" | head -1)
    printf 'loom: %-52s caught  (%s)  %6.1f s\n' "$label" "${why:-model failed}" "$(echo "$(date +%s.%N) - $start" | bc)"
    if [ -z "$why" ]; then tail -20 "$log"; fi
  fi
  rm -f "$log"
}
expect_caught "$protocol" two_clients_without_a_turn_lock_race
expect_caught "$protocol" deadline_binds_against_a_hostile_poster deadline-unchecked
# The wedge: the worker goes round its wait for ever while client B waits for `ready`.
expect_caught "$protocol" a_client_that_dies_holding_the_turn_does_not_wedge_the_worker turn-not-recovered
# The multi-slot worker: a piece handed to the other slot's sink (cross-talk), and slots.rs
# before 5bae406 (a refused request stays in the batch: the dead client's slot is never free
# again, the engine goes round for ever).
expect_caught "$slots" planted_piece_to_the_wrong_slot_is_caught "" "$SLOTS_PREEMPTIONS"
expect_caught "$slots" a_client_dying_in_either_slot_leaves_the_other_whole refusal-not-aborted "$SLOTS_PREEMPTIONS"
for t in planted_read_response_before_waiting_is_caught planted_post_response_before_writing_is_caught \
         planted_forgotten_shutdown_post_is_caught planted_double_ready_post_is_caught \
         planted_ring_released_before_copy_is_caught; do
  expect_caught "$planted" "$t"
done
if LOOM_MAX_PREEMPTIONS=$PREEMPTIONS "$planted" --test-threads=1 >/dev/null 2>&1; then
  echo "loom: unplanted controls pass in both modes, and the extended mode absorbs an early response post"
else
  echo "loom: unplanted control FAILED"; fail=1
fi
exit $fail
