#!/bin/sh
# The container command of examples/k8s/indexed-job.yaml: one shard of an Orchard data job per completion index.
# Kubernetes sets JOB_COMPLETION_INDEX (0 … completions-1) in each pod of an Indexed Job; the manifest sets the
# rest. Shard i of n writes RUNS/shard-i, a resumable run directory: a pod that is preempted or evicted and
# restarted with the same index continues where it stopped (each task id exactly once). Merge when all succeeded:
#   orchard merge --out RUNS/merged RUNS/shard-*
# Environment: JOB_COMPLETION_INDEX, ORCHARD_SHARDS (n), ORCHARD_JOB (a job TOML), ORCHARD_RUNS (directory),
# ORCHARD_KIND (sample | search, default sample), ORCHARD (the binary, default `orchard` on PATH). Extra arguments
# are passed to the command.
set -eu
i=${JOB_COMPLETION_INDEX:?JOB_COMPLETION_INDEX is unset: run as a Kubernetes Indexed Job (or set it by hand)}
n=${ORCHARD_SHARDS:?ORCHARD_SHARDS (the number of completions) is unset}
job=${ORCHARD_JOB:?ORCHARD_JOB (the job TOML) is unset}
runs=${ORCHARD_RUNS:?ORCHARD_RUNS (the output directory) is unset}
mkdir -p "$runs"
exec "${ORCHARD:-orchard}" "${ORCHARD_KIND:-sample}" --config "$job" --shard "$i/$n" --out "$runs/shard-$i" "$@"
