#!/bin/bash
# A real single-node Slurm test of Orchard's sharding (examples/slurm/): starts munge, slurmctld and slurmd on this
# machine (no systemd; everything under a temporary directory, stopped on exit), submits a 4-task array of
# `orchard sample --shard i/4` and a dependent merge job, and checks that the merged run equals an unsharded run
# (same task ids, same rows as a multiset). Then submits the array again into fresh directories, scancels task 1
# while it runs, resubmits that index, merges, and checks the same equality (each task id exactly once).
#
# Needs: root, Debian's slurmctld + slurmd + slurm-client + munge, the default model cached (`orchard fetch-model`),
# and a Python with pyarrow for the row comparison. Fails (never skips) when something is missing.
#   tests/slurm/run.sh [ORCHARD_BINARY] [PYTHON]
set -euo pipefail
ORCHARD=$(realpath "${1:-target/release/orchard}")
PYTHON=${2:-python3}
HERE=$(cd "$(dirname "$0")/../.." && pwd)
for tool in slurmctld slurmd sbatch squeue scancel munged mungekey; do
    command -v "$tool" >/dev/null || { echo "FAIL: $tool not found (apt-get install slurmctld slurmd slurm-client munge)"; exit 1; }
done
[ "$(id -u)" = 0 ] || { echo "FAIL: run as root (the test starts its own slurmd)"; exit 1; }
"$PYTHON" -c "import pyarrow" || { echo "FAIL: $PYTHON lacks pyarrow"; exit 1; }
START=$(date +%s)
T=$(mktemp -d /tmp/orchard-slurm.XXXXXX)
NODE=$(hostname -s)
cleanup() {
    [ -f "$T/slurmd.pid" ] && kill "$(cat "$T/slurmd.pid")" 2>/dev/null || true
    [ -f "$T/slurmctld.pid" ] && kill "$(cat "$T/slurmctld.pid")" 2>/dev/null || true
    [ -f "$T/munged.pid" ] && kill "$(cat "$T/munged.pid")" 2>/dev/null || true
    sleep 1
}
trap cleanup EXIT

# 1. munge with its own key and socket.
mkdir -p "$T/munge" "$T/state" "$T/spool" "$T/runs"
mungekey --create --keyfile="$T/munge/munge.key" --force
chmod 600 "$T/munge/munge.key"
munged --force --key-file="$T/munge/munge.key" --socket="$T/munge/socket" --pid-file="$T/munged.pid" \
    --log-file="$T/munge/munged.log" --seed-file="$T/munge/seed"

# 2. slurm.conf for one node with every core.
CPUS=$(nproc)
MEM=$(($(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 1024))
cat > "$T/slurm.conf" <<CONF
ClusterName=orchard-test
SlurmctldHost=$NODE
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$T/munge/socket
CredType=cred/munge
StateSaveLocation=$T/state
SlurmdSpoolDir=$T/spool
SlurmctldPidFile=$T/slurmctld.pid
SlurmdPidFile=$T/slurmd.pid
SlurmctldLogFile=$T/slurmctld.log
SlurmdLogFile=$T/slurmd.log
SlurmctldPort=16817
SlurmdPort=16818
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
ReturnToService=2
SchedulerType=sched/backfill
NodeName=$NODE CPUs=$CPUS RealMemory=$MEM State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF
export SLURM_CONF=$T/slurm.conf
slurmctld -f "$SLURM_CONF"
slurmd -f "$SLURM_CONF"
for _ in $(seq 60); do sinfo -h -o %T 2>/dev/null | grep -qE '^idle' && break; sleep 1; done
sinfo -h -o "%N %T %c" | grep -q idle || { echo "FAIL: the node never became idle"; cat "$T/slurmd.log" "$T/slurmctld.log" | tail -30; exit 1; }
echo "slurm up: $(sinfo -h -o '%N %T cpus=%c')"

# 3. The job: best-of-2 on 16 GSM8K train questions with the default model.
cat > "$T/job.toml" <<JOB
model = "default"
n = 2
seed = 7
reward = "gsm8k"
[source]
task = "gsm8k"
split = "train"
limit = 16
[sampling]
temperature = 0.7
max_new_tokens = 128
JOB
"$ORCHARD" sample --config "$T/job.toml" --out "$T/whole" 2>"$T/whole.log"

wait_job() { # job id → waits until it left the queue, returns its exit state from sacct-less squeue polling
    for _ in $(seq 600); do squeue -h -j "$1" 2>/dev/null | grep -q . || return 0; sleep 1; done
    echo "FAIL: job $1 did not finish"; exit 1
}
compare() { # merged run → compares with the unsharded one
    "$PYTHON" - "$T/whole" "$1" <<'PY'
import collections, glob, json, sys
import pyarrow.parquet as pq
def rows(run):
    out = collections.Counter()
    for f in glob.glob(f"{run}/trajectories/*.parquet"):
        t = pq.read_table(f, columns=["task_id", "sample_index", "completion"]).to_pylist()
        out.update((r["task_id"], r["sample_index"], r["completion"]) for r in t)
    return out
a, b = rows(sys.argv[1]), rows(sys.argv[2])
tasks_a = {k[0] for k in a}; tasks_b = {k[0] for k in b}
assert tasks_a == tasks_b, f"task ids differ: {sorted(tasks_a ^ tasks_b)}"
assert all(v == 1 for v in b.values()), "a row appears twice in the merged run"
assert a == b, f"rows differ: {len(a)} vs {len(b)}"
print(f"merged == unsharded: {len(tasks_b)} task ids, {sum(b.values())} rows")
PY
}
submit_array() { # runs dir, array spec → job id (4 shards in all)
    (cd "$T" && ORCHARD=$ORCHARD sbatch --parsable --array="$2" --export=ALL "$HERE/examples/slurm/sample_array.sbatch" "$T/job.toml" "$1" 4 --group 1 --commit-every 1ms)
}

# 4. The array and the dependent merge.
A=$(submit_array "$T/runs/a" 0-3)
M=$(cd "$T" && ORCHARD=$ORCHARD sbatch --parsable --dependency=afterok:$A --export=ALL \
    "$HERE/examples/slurm/merge.sbatch" "$T/runs/a" 4 "$T/runs/a-merged")
echo "array $A submitted (4 tasks), merge $M after it"
wait_job "$A"; wait_job "$M"
[ -d "$T/runs/a-merged" ] || { echo "FAIL: the merge job did not run"; tail -n 5 "$T"/orchard-*.out; exit 1; }
echo "4 shards complete, merged by job $M"
compare "$T/runs/a-merged"

# 5. scancel a running task, resubmit it, merge: exactly once.
B=$(submit_array "$T/runs/b" 0-3)
for _ in $(seq 300); do
    [ -s "$T/runs/b/shard-1/journal.jsonl" ] && break # the first task of shard 1 is committed
    sleep 0.2
done
scancel "${B}_1"
echo "scancelled task ${B}_1 while it ran ($(wc -l < "$T/runs/b/shard-1/journal.jsonl" 2>/dev/null || echo 0) journal lines)"
wait_job "$B"
# The cancel must have left shard 1 incomplete, or this case tests nothing.
if "$ORCHARD" merge --out "$T/runs/b-early" "$T"/runs/b/shard-{0,1,2,3} 2>"$T/early.err"; then
    echo "FAIL: shard 1 finished before the cancel; nothing was interrupted"; exit 1
fi
echo "before the resubmission the merge refuses: $(tail -n 1 "$T/early.err")"
R=$(submit_array "$T/runs/b" 1)
echo "resubmitted index 1 as $R"
wait_job "$R"
"$ORCHARD" merge --out "$T/runs/b-merged" "$T"/runs/b/shard-{0,1,2,3}
compare "$T/runs/b-merged"
echo "PASS in $(( $(date +%s) - START )) s"
