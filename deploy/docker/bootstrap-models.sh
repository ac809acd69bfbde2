#!/bin/sh
# The first model of each machine type. Until a type has one, the scoring workers dead-letter its
# windows, and retraining (which fine-tunes the current model) has nothing to start from.
# Installed in the image as `soundwatch-bootstrap-models`.
#
#   soundwatch-bootstrap-models train DATA [soundwatch train options...]
#       For every machine type under DATA (recorded normal audio, DCASE layout:
#       DATA/<type>/train/normal_*.wav) that has no model in the registry (SOUNDWATCH_REGISTRY_ROOT),
#       run `soundwatch train --data DATA --machine-type TYPE [options]`. Types that have a model are
#       left alone: running it again trains nothing (idempotent), so it can run on every start.
#       Exits non-zero, naming them, when a type failed to train (the others are still trained).
#   soundwatch-bootstrap-models wait DATA [TIMEOUT_S]
#       Block until every such type has a model (a scoring worker's init step, so no window is
#       dead-lettered while the first models train; the audio waits in Kafka). After TIMEOUT_S
#       (default 21600 = 6 h) it gives up waiting, names the types still without a model and exits 0
#       so the worker starts anyway: one type that cannot be trained must not stop all scoring.
#
# Environment: BOOTSTRAP_POLL_S (wait: seconds between checks, default 15); the soundwatch settings.
# Exit codes: 0 done; 2 usage; 3 DATA missing or holds no machine type; 4 the registry could not be
# read; 6 a type failed to train.
set -eu

log() { printf 'bootstrap-models: %s\n' "$*" >&2; }
die() { code=$1; shift; log "error: $*"; exit "$code"; }

usage() {
    die 2 "usage: soundwatch-bootstrap-models train DATA [soundwatch train options...] | wait DATA [TIMEOUT_S]"
}

# Machine types with at least one DATA/<type>/train/normal_* clip, one per line.
machine_types() {
    for train_dir in "$1"/*/train; do
        for clip in "$train_dir"/normal_*; do
            if [ -f "$clip" ]; then basename "$(dirname "$train_dir")"; fi
            break
        done
    done
}

# 0 when the registry holds a version of type $1, 1 when it holds none; exits when it cannot be read.
has_model() {
    versions=$(soundwatch models list --machine-type "$1" --json) \
        || die 4 "cannot read the model registry for '$1' (soundwatch models list failed; see above)"
    [ "$versions" != "[]" ]
}

train_missing() {
    data=$1
    shift
    [ -d "$data" ] || die 3 "no training data at $data: mount recorded normal audio there (<type>/train/normal_*.wav)"
    types=$(machine_types "$data")
    [ -n "$types" ] || die 3 "no <type>/train/normal_* clips under $data: record normal audio of each machine type first"
    failed=""
    for machine_type in $types; do
        if has_model "$machine_type"; then
            log "$machine_type: has a model, nothing to do"
            continue
        fi
        log "$machine_type: no model yet, training the first one"
        soundwatch train --data "$data" --machine-type "$machine_type" "$@" || failed="$failed $machine_type"
    done
    [ -z "$failed" ] || die 6 "training failed for:$failed (fix the data or options and run again; trained types are kept)"
    log "every machine type under $data has a model"
}

wait_for_models() {
    data=$1
    timeout=${2:-21600}
    poll=${BOOTSTRAP_POLL_S:-15}
    case "$timeout$poll" in *[!0-9]*) usage ;; esac
    waited=0
    while :; do
        missing=""
        for machine_type in $(machine_types "$data"); do
            has_model "$machine_type" || missing="$missing $machine_type"
        done
        if [ -z "$missing" ]; then
            log "every machine type under $data has a model"
            return 0
        fi
        if [ "$waited" -ge "$timeout" ]; then
            log "warning: still no model for:$missing after ${timeout} s; starting anyway" \
                "(their windows go to the dead-letter topic until a model is trained)"
            return 0
        fi
        log "waiting for the first model of:$missing (trained by the bootstrap job)"
        sleep "$poll"
        waited=$((waited + poll))
    done
}

[ $# -ge 2 ] || usage
mode=$1
shift
case "$mode" in
    train) train_missing "$@" ;;
    wait)
        [ $# -le 2 ] || usage
        wait_for_models "$@"
        ;;
    *) usage ;;
esac
