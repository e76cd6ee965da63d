#!/usr/bin/env bash
# One time-limited piece of a sweep on a machine whose files do not outlive the call (a lent
# GPU machine): `o2o sweep` for at most SECONDS, then what `o2o report` and the next piece need
# (each trial's config.yaml, metrics.jsonl, summary.json, trial.json, and sweep.yaml; not the
# checkpoints or resume state) packed into TARBALL, to unpack into STUDY_DIR where the next piece
# runs. A trial the limit cuts short starts again in the next piece.
#   scripts/sweep_piece.sh SWEEP_FILE STUDY_DIR SECONDS TARBALL [o2o sweep options...]
# O2O overrides the command (default: o2o).
set -uo pipefail
sweep=$1 study=$2 seconds=$3 tarball=$4
shift 4
O2O=${O2O:-o2o}
start=$(date +%s)
timeout --signal=INT --kill-after=30 "$seconds" $O2O sweep "$sweep" --out "$study" "$@"
echo "sweep piece: exit $?, $(( $(date +%s) - start )) s"
mkdir -p "$study"
(cd "$study" && find . -path '*/checkpoints' -prune -o -path '*/resume' -prune -o -type f \
    \( -name config.yaml -o -name metrics.jsonl -o -name summary.json -o -name trial.json -o -name sweep.yaml \) -print0 \
    | tar czf - --null -T -) >"$tarball"
