#!/usr/bin/env bash
# The Promela model of the protocol (verification/spin/protocol.pml), checked with Spin.
#
#  - the seed variant must FAIL with an invalid end state (a process blocked forever on a
#    semaphore whose poster died), and pass when nobody dies;
#  - the project variant must pass the safety run (assertions, invalid end states, the
#    data-race monitor) and both LTL properties under weak fairness; also without deadlines,
#    with the pidfd watcher as the only death detection, and with the client_acquire of
#    3dd5191 (before the drain of stale response_written posts);
#  - the project has no cycle at all (a non-progress check without progress labels): every
#    run terminates, so no liveness result leans on fairness hiding a livelock;
#  - two mutants of the project must fail, so the checks are known to bite: a drain
#    without the alive() re-check (the watcher's wake-up is swallowed), and a worker that
#    does not watch the control socket (it outlives its client).
#
# The streamed answer (verification/spin/stream.pml: the response ring, the cancel word,
# deaths):
#  - the model must pass safety (every unit arrives whole, in order, never read before it was
#    written nor after it was overwritten; cursors never garbled; the drain exact; no wait
#    left hanging), three LTL properties under weak fairness, and have no cycle;
#  - without the stall limit it still passes safety (cancel and stop end a full-ring wait);
#  - mutants: a client that releases ring space before copying must fail (a unit is
#    overwritten before it is read); a full-ring wait that checks neither stop nor cancel
#    passes only thanks to the stall limit, and without it must fail (a worker whose client
#    died waits on the ring forever);
#  - the model's finding, kept as a mutant: a Canceller that reads `in_flight` and stores
#    cancel_seq in two steps (the code before the CancelSlot lock covered both) can store an
#    ended request's seq over a newer request's cancel (-DCANCEL_UNLOCKED must fail); the
#    shipped code keeps every cancel (asserted in every stream run).
#
# The multi-slot worker (verification/spin/slots.pml: serve_slots, two slots, a client on each,
# client 0's cancel, either client dying at any step):
#  - the model must pass safety (no cross-talk: every unit a client copies out is its own
#    slot's, request's and position's; the answer's length and finish agree; no deadlock), both
#    LTL properties under weak fairness (every request ends unless its client dies; a dead
#    client's slot is offered again), have no cycle, and without the stall limit answer every
#    live, non-cancelled request whole; with an engine that may read a prompt for ever
#    (-DPREFILL) a dead client's slot must still be freed;
#  - planted bugs and a mutant must fail: the engine handing a piece to the other slot's sink
#    (assertion); slots.rs before 5bae406 (a refused request stays in the batch until the
#    engine pushes again: harmless with an engine that pushes every step, an acceptance cycle
#    of slots_freed with -DPREFILL); a worker that never asks whether a requester is still
#    there (saved by the stall limit; without it a dead client's full ring holds the engine,
#    and the other slot's client with it: invalid end state, acceptance cycle).
#
# Installs nothing: needs `spin` and a C compiler. Runs in a temporary directory.
set -euo pipefail
cd "$(dirname "$0")/.."
model="$PWD/verification/spin/protocol.pml"
smodel="$PWD/verification/spin/stream.pml"
slmodel="$PWD/verification/spin/slots.pml"

if ! command -v spin >/dev/null 2>&1; then
  echo "ci/spin.sh: 'spin' not found (Debian/Ubuntu: apt-get install spin)" >&2
  exit 2
fi
CC=${CC:-cc}
if ! command -v "$CC" >/dev/null 2>&1; then
  echo "ci/spin.sh: C compiler '$CC' not found (needed to build pan)" >&2
  exit 2
fi
for f in "$model" "$smodel" "$slmodel"; do
  [ -f "$f" ] || { echo "ci/spin.sh: $f missing" >&2; exit 2; }
done

work=$(mktemp -d "${TMPDIR:-/tmp}/spin.XXXXXX")
trap 'rm -rf "$work"' EXIT
NICE=(nice -n 10)
HASH=-w20 # 2^20 slots (8 MB): the largest run stores ~230k states
SHASH=-w22 # stream.pml: 2^22 slots (32 MB): the largest run stores ~4.2M states
failed=0

# build NAME SPIN-DEFINES...: pan.c for this variant of protocol.pml (the verifiers are
# compiled on first use). sbuild: the same for stream.pml; with OPT=-O2 its verifiers are
# built optimised (worth it for runs of millions of states).
build() {
  local name=$1
  shift
  mkdir -p "$work/$name"
  cp "${MODEL:-$model}" "$work/$name/"
  (cd "$work/$name" && spin "$@" -a "$(basename "${MODEL:-$model}")" >spin.log 2>&1) ||
    { cat "$work/$name/spin.log" >&2; echo "ci/spin.sh: spin -a failed for '$name'" >&2; exit 1; }
}
sbuild() {
  MODEL=$smodel build "$@"
  echo "${OPT:-}" >"$work/$1/cflags"
}
# slbuild: the same for slots.pml, whose state vectors are compressed (-DCOLLAPSE, lossless).
slbuild() {
  MODEL=$slmodel build "$@"
  echo "${OPT:-} -DCOLLAPSE" >"$work/$1/cflags"
}

# pan NAME BINARY: compile pan.c of variant NAME as ./pan_safety (no never claim: assertions
# and invalid end states), ./pan_live (the LTL claims, weak fairness over 3 processes) or
# ./pan_np (non-progress cycles).
pan() {
  local dir="$work/$1" bin=$2 flags
  case $bin in
    ./pan_safety) flags=-DNOCLAIM ;;
    ./pan_live) flags=-DNFAIR=3 ;;
    ./pan_np) flags=-DNP ;;
  esac
  [ -f "$dir/cflags" ] && flags="$flags $(cat "$dir/cflags")"
  [ -x "$dir/$bin" ] || (cd "$dir" && "${NICE[@]}" "$CC" $flags -o "$bin.tmp" pan.c && mv "$bin.tmp" "$bin") ||
    { echo "ci/spin.sh: compiling $bin for '$1' failed" >&2; exit 1; }
}

# precompile NAME BINARY...: compile in the background (while other checks run); `wait`
# before using them. A failed background compile is retried, and reported, by pan().
precompile() {
  local name=$1 bin
  shift
  for bin in "$@"; do
    (pan "$name" "$bin" 2>/dev/null || true) &
  done
}

# check LABEL EXPECT NAME PAN-ARGS...: EXPECT is "pass" (errors: 0) or a string that pan's
# output must contain (the failure we require).
check() {
  local label=$1 expect=$2 name=$3
  shift 3
  local out="$work/$name/$(echo "$label" | tr -c 'A-Za-z0-9' _).out"
  pan "$name" "$1"
  (cd "$work/$name" && "${NICE[@]}" "$@" >"$out" 2>&1) || true
  local stats
  stats=$(awk '/states, stored/ {s=$1} /depth reached/ {d=$6; sub(",","",d)} /elapsed time/ {t=$4}
               END {printf "%s states, depth %s, %ss", s, d, t}' "$out")
  local ok=0 seen
  # pan reports an error as "pan:1: <what> (at depth N)" and sums up with "errors: N"; its
  # header ("invalid end states +") must not count as a finding.
  local finding
  finding=$(grep -m1 -E '^pan:[0-9]+: ' "$out" | sed -E 's/^pan:[0-9]+: //; s/ \(at depth [0-9]+\)$//' || true)
  if [ "$expect" = pass ]; then
    grep -q "errors: 0" "$out" && [ -z "$finding" ] && ok=1
  else
    case $finding in "$expect"*) grep -qE "errors: [1-9]" "$out" && ok=1 ;; esac
  fi
  seen=${finding:-$(grep -m1 -oE "errors: [0-9]+" "$out" || true)}
  if [ $ok = 1 ]; then
    printf 'ok    %-66s %-24s (%s)\n' "$label" "${seen:-?}" "$stats"
  else
    printf 'FAIL  %-66s expected %s, got: %s\n' "$label" "$expect" "${seen:-nothing}"
    sed 's/^/      | /' "$out" | head -25
    failed=1
  fi
}

build seed -DSEED
build seed_wdeath -DSEED -DNO_CLIENT_FAULT
build seed_cdeath -DSEED -DNO_WORKER_FAULT
build seed_nofault -DSEED -DNOFAULTS
build project
build nodeadline -DNODEADLINE
build nodrain -DNO_DRAIN
build watcher_only -DNODEADLINE -DMUTANT_NO_SLICE_ALIVE
build mut_recheck -DNODEADLINE -DMUTANT_NO_SLICE_ALIVE -DMUTANT_NO_RECHECK
build mut_hangup -DMUTANT_NO_HANGUP
OPT=-O2 sbuild stream
OPT=-O2 sbuild stream_nostall -DNOSTALL
sbuild stream_np -DNOCANCELLER
sbuild smut_early -DMUTANT_EARLY_RELEASE
sbuild smut_fullwait -DMUTANT_FULL_NO_CHECK -DNOCANCELLER
sbuild smut_fullwait_nostall -DMUTANT_FULL_NO_CHECK -DNOSTALL
sbuild sfinding_cancel -DCANCEL_UNLOCKED
sbuild smut_cancel_window -DMUTANT_CANCEL_WINDOW
OPT=-O2 slbuild slots
slbuild slots_nostall -DNOSTALL
OPT=-O2 slbuild slots_prefill -DPREFILL
slbuild slplant_wrong -DPLANT_WRONG_SLOT
slbuild slmut_abort_prefill -DMUTANT_REFUSAL_NOT_ABORTED -DPREFILL
slbuild slmut_abort -DMUTANT_REFUSAL_NOT_ABORTED
slbuild slplant_presence -DPLANT_NO_PRESENCE
slbuild slplant_presence_nostall -DPLANT_NO_PRESENCE -DNOSTALL
# The stream verifiers compile in the background while the protocol.pml checks run.
precompile stream ./pan_safety ./pan_live
precompile stream_nostall ./pan_safety
precompile stream_np ./pan_np
precompile smut_fullwait ./pan_safety
precompile slots ./pan_safety ./pan_live ./pan_np
precompile slots_prefill ./pan_live

check "seed: safety must fail (hang on a dead peer)" "invalid end state" seed ./pan_safety $HASH
check "seed, worker deaths only: must fail (client hangs)" "invalid end state" seed_wdeath ./pan_safety $HASH
check "seed, client deaths only: must fail (worker hangs)" "invalid end state" seed_cdeath ./pan_safety $HASH
check "seed, nobody dies: safety passes" pass seed_nofault ./pan_safety $HASH
check "project: safety (asserts, end states, race monitor)" pass project ./pan_safety $HASH
check "project: ltl every_request_ends, weak fairness" pass project ./pan_live $HASH -a -f -N every_request_ends
check "project: ltl worker_follows_client, weak fairness" pass project ./pan_live $HASH -a -f -N worker_follows_client
check "project: no cycle at all (-DNP, no progress labels)" pass project ./pan_np $HASH -l
check "project, no deadlines: safety" pass nodeadline ./pan_safety $HASH
check "project, no deadlines: ltl every_request_ends" pass nodeadline ./pan_live $HASH -a -f -N every_request_ends
check "project, no deadlines: ltl worker_follows_client" pass nodeadline ./pan_live $HASH -a -f -N worker_follows_client
check "project, client_acquire of 3dd5191 (no drain): safety" pass nodrain ./pan_safety $HASH
check "project, client_acquire of 3dd5191 (no drain): ltl requests" pass nodrain ./pan_live $HASH -a -f -N every_request_ends
check "project, pidfd watcher only (no slice, no deadline): safety" pass watcher_only ./pan_safety $HASH
check "project, pidfd watcher only: ltl every_request_ends" pass watcher_only ./pan_live $HASH -a -f -N every_request_ends
check "mutant drain w/o alive() re-check, watcher only: safety must fail" "invalid end state" mut_recheck ./pan_safety $HASH
check "mutant drain w/o alive() re-check, watcher only: ltl must fail" "acceptance cycle" mut_recheck ./pan_live $HASH -a -f -N every_request_ends
check "mutant no hang-up watch: safety must fail" "invalid end state" mut_hangup ./pan_safety $HASH
check "mutant no hang-up watch: ltl worker_follows_client must fail" "acceptance cycle" mut_hangup ./pan_live $HASH -a -f -N worker_follows_client

wait # the background compiles
check "stream: safety (units whole, in order; cursors; drain; end states)" pass stream ./pan_safety $SHASH
check "stream: ltl every_request_ends, weak fairness" pass stream ./pan_live $SHASH -a -f -N every_request_ends
check "stream: ltl worker_follows_client, weak fairness" pass stream ./pan_live $SHASH -a -f -N worker_follows_client
check "stream: ltl worker_ends_requests, weak fairness" pass stream ./pan_live $SHASH -a -f -N worker_ends_requests
check "stream, no Canceller thread: no cycle at all (-DNP)" pass stream_np ./pan_np $SHASH -l
check "stream, no stall limit: safety" pass stream_nostall ./pan_safety $SHASH
check "stream mutant stream_read stored before the copy: safety must fail" "assertion violated" smut_early ./pan_safety $SHASH
check "stream mutant full-ring wait w/o stop/cancel: passes (stall limit)" pass smut_fullwait ./pan_safety $SHASH
check "stream mutant full-ring wait w/o stop/cancel, no stall: must fail" "invalid end state" smut_fullwait_nostall ./pan_safety $SHASH
check "stream mutant ditto: ltl worker_follows_client must fail" "acceptance cycle" smut_fullwait_nostall ./pan_live $SHASH -a -f -N worker_follows_client
check "stream mutant: Canceller reads and stores in two steps, a stale store withdraws a cancel (fails)" "assertion violated" sfinding_cancel ./pan_safety $SHASH
check "stream mutant: in_flight recorded after the write, a cancel in between is lost (fails)" "assertion violated" smut_cancel_window ./pan_safety $SHASH
check "slots: safety (no cross-talk; lengths and finishes; no deadlock)" pass slots ./pan_safety $SHASH
check "slots: ltl every_request_ends, weak fairness" pass slots ./pan_live $SHASH -a -f -N every_request_ends
check "slots: ltl slots_freed (a dead client's slot is offered again)" pass slots ./pan_live $SHASH -a -f -N slots_freed
check "slots: no cycle at all (-DNP)" pass slots ./pan_np $SHASH -l
check "slots, no stall limit: safety (live requests answered whole unless cancelled)" pass slots_nostall ./pan_safety $SHASH
check "slots, engine may read a prompt for ever: ltl slots_freed" pass slots_prefill ./pan_live $SHASH -a -f -N slots_freed
check "slots plant: a piece handed to the other slot's sink (fails)" "assertion violated" slplant_wrong ./pan_safety $SHASH
check "slots mutant refusal-not-aborted, prompt read for ever: ltl slots_freed (fails)" "acceptance cycle" slmut_abort_prefill ./pan_live $SHASH -a -f -N slots_freed
check "slots mutant refusal-not-aborted, engine pushes every step: passes" pass slmut_abort ./pan_live $SHASH -a -f -N slots_freed
check "slots plant: requester presence never asked: passes (stall limit)" pass slplant_presence ./pan_safety $SHASH
check "slots plant: presence never asked, no stall limit: safety (fails)" "invalid end state" slplant_presence_nostall ./pan_safety $SHASH
check "slots plant: presence never asked, no stall limit: ltl requests (fails)" "acceptance cycle" slplant_presence_nostall ./pan_live $SHASH -a -f -N every_request_ends

if [ $failed != 0 ]; then
  echo "ci/spin.sh: FAILED" >&2
  exit 1
fi
echo "ci/spin.sh: all Spin checks behaved as required"
