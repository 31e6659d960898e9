#!/usr/bin/env bash
# The long fault campaigns (not part of ci/test): 2000 worker kills, 200 client kills,
# 1,000,000 soak requests, 1000 spawn/shutdown cycles, 10 × 10,000 scribbled requests.
# Prints each campaign's figures. Assumes the release build of ci/test exists.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked --workspace --bins
run() { cargo nextest run --release --locked -p llama-shm-tests --profile ci --no-capture "$@" 2>&1 | grep -E 'campaign|soak:|spawn/shutdown:|LST_SEED|FAIL|panicked' || true; }
LST_TRIALS=2000 run --test fault_campaign worker_killed_at_random_points
LST_TRIALS=800 run --test fault_campaign client_killed_at_random_points
LST_SOAK_REQUESTS=1000000 run --test soak soak_requests_keep_fds_rss_and_names_flat
LST_SOAK_CYCLES=1000 run --test soak spawn_and_shutdown_cycles_leak_nothing
LST_TRIALS=100000 run --test hostile_memory scribbled
