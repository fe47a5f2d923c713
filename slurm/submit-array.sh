#!/usr/bin/env bash
# Run a scenario as a SLURM job array, without Dask on the cluster:
#
#   source .venv/bin/activate        # or: export CARTCOHORT_PYTHON=/path/to/python
#   slurm/submit-array.sh CONFIG OUT [SHARDS_PER_TASK] [-- extra sbatch flags]
#
# Submits slurm/array.sbatch as an array of ceil(n_shards / SHARDS_PER_TASK) tasks
# (default 1 shard per task), each `cartcohort run-shards CONFIG --out OUT
# --shards a:b`, then a finalize job (`cartcohort finalize CONFIG --out OUT`: checks
# every shard, writes the manifest and the report) that starts only when every
# task succeeded (--dependency=afterok). Extra flags after `--` go to both sbatch
# calls (e.g. --partition=P --account=A). Prints "array <id>" and "finalize <id>"
# on stdout. The dataset is identical to a `cartcohort run` of the same scenario.
# Logs: cartcohort-<array id>_<task>.log and cartcohort-finalize-<id>.log in the
# current directory. If a task fails, SLURM cancels the finalize job
# (--kill-on-invalid-dep); rerun this script: shards already written are kept.
set -euo pipefail

usage() { echo "usage: $0 CONFIG OUT [SHARDS_PER_TASK] [-- sbatch flags]" >&2; exit 2; }
[[ $# -ge 2 ]] || usage
CONFIG=$1 OUT=${2%/}
shift 2
PER_TASK=1
if [[ $# -gt 0 && $1 != -- ]]; then PER_TASK=$1; shift; fi
[[ $PER_TASK =~ ^[1-9][0-9]*$ ]] || { echo "$0: SHARDS_PER_TASK must be a positive integer, got '$PER_TASK'" >&2; exit 2; }
[[ $# -eq 0 || $1 == -- ]] || usage
[[ $# -gt 0 ]] && shift
EXTRA=("$@")

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
if [[ -n ${CARTCOHORT_PYTHON:-} ]]; then PYTHON=$CARTCOHORT_PYTHON
elif command -v cartcohort >/dev/null; then
    PYTHON=$(dirname "$(command -v cartcohort)")/python
    [[ -x $PYTHON ]] || PYTHON=python
else
    echo "$0: no cartcohort command: activate the environment, or set CARTCOHORT_PYTHON" >&2; exit 2
fi

# The number of shards, from the validated scenario (a bad one: one line, exit 2).
N_SHARDS=$("$PYTHON" -c '
import sys
from pipeline.config import load_scenario
try:
    print(load_scenario(sys.argv[1]).n_shards)
except (ValueError, KeyError) as exc:
    sys.exit(f"cartcohort: error: {exc}")
' "$CONFIG") || exit 2
TASKS=$(( (N_SHARDS + PER_TASK - 1) / PER_TASK ))
mkdir -p "$(dirname "$OUT")"

ARRAY=$(sbatch --parsable --export=ALL "${EXTRA[@]}" --array="0-$((TASKS - 1))" \
        "$HERE/array.sbatch" "$CONFIG" "$OUT" "$PER_TASK")
ARRAY=${ARRAY%%;*}
if [[ -n ${CARTCOHORT_PYTHON:-} ]]; then FINALIZE=("$CARTCOHORT_PYTHON" -m pipeline.cli)
else FINALIZE=(cartcohort); fi
FINALIZE+=(finalize "$CONFIG" --out "$OUT")
FINAL=$(sbatch --parsable --export=ALL "${EXTRA[@]}" --dependency="afterok:$ARRAY" \
        --kill-on-invalid-dep=yes --job-name=cartcohort-finalize --ntasks=1 \
        --mem-per-cpu=2G --output=cartcohort-finalize-%j.log \
        --wrap="$(printf '%q ' "${FINALIZE[@]}")")
FINAL=${FINAL%%;*}
echo "$N_SHARDS shard(s) in $TASKS array task(s) of up to $PER_TASK" >&2
echo "array $ARRAY"
echo "finalize $FINAL"
