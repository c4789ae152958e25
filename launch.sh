#!/usr/bin/env bash
# Launches a grid of `python -m experiments.mnist` runs; see `./launch.sh --help`.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PYTHON="${PYTHON:-python}"

usage() {
  cat <<'EOF'
Usage: ./launch.sh --name=SWEEP --grid=FLAG=V1,V2,... [--grid=...] [options] [-- FIXED_FLAGS...]

Runs `python -m experiments.mnist` once per point of the grid (the cartesian product of
every --grid), each in runs/SWEEP/<flag=value,...>/ with its log in runs/SWEEP/logs/.
A run that finished with the same command is skipped; a failed or interrupted one is
run again and resumes from its newest checkpoint. Summarize with
`python -m experiments.summarize runs/SWEEP`. The sweep's directory is marked as
jaxvae's (jaxvae.json, kind "sweep"); a non-empty directory without that marker is
refused, and nothing in it is changed.

Options:
  --name=SWEEP        sweep name: runs go to RUNS_DIR/SWEEP (required)
  --grid=FLAG=VALUES  one axis: an experiments.mnist flag and comma-separated values (repeatable)
  --jobs=N            runs at once (default: CPU cores / 2, at least 1)
  --ensemble          run all seeds of a configuration as one vmapped program
                      (--num_replicas); needs a --grid=seed=... of consecutive integers
  --dry-run           print what would run (and what is skipped), run nothing
  --slurm             write RUNS_DIR/SWEEP/slurm.sh, a SLURM job array with one task per
                      run (the same skip logic); submit it with sbatch
  --runs-dir=DIR      parent of the sweep directories (default: runs)
  -h, --help          this text
  --                  every later argument goes to every run unchanged

Environment: PYTHON (default: python) runs the experiments.

Example, latent size x 3 seeds, 2 runs at a time:
  ./launch.sh --name=latent --grid=latent_dim=2,5,10,20,50 --grid=seed=0,1,2 --jobs=2 \
      -- --num_epochs=10 --eval_iwae_samples=200
EOF
}

die() {
  echo "launch.sh: error: $*" >&2
  exit 2
}

# --- the sweep's directory: jaxvae's only if it holds jaxvae's marker of kind "sweep" ---------
# marker_kind DIR...: for each DIR, the kind its jaxvae.json names (a regular file of at most 1 MB);
# fails, printing the first DIR without a readable marker, when there is one.
marker_kind() {
  "$PYTHON" -c '
import json, os, stat, sys
for directory in sys.argv[1:]:
  path = os.path.join(directory, "jaxvae.json")
  try:
    info = os.stat(path)
    if not stat.S_ISREG(info.st_mode) or info.st_size > 1 << 20:
      raise ValueError
    with open(path, "rb") as f:
      kind = json.loads(f.read().decode("utf-8")).get("kind")
    if not isinstance(kind, str):
      raise ValueError
  except Exception:
    print(directory)
    sys.exit(1)
  print(kind)' "$@" 2>/dev/null
}

is_empty() {  # is_empty DIR: nothing in DIR but a lock file
  local entry
  for entry in "$1"/* "$1"/.*; do
    case "${entry##*/}" in
      . | .. | .lock) ;;
      *) if [[ -e "$entry" || -L "$entry" ]]; then return 1; fi ;;
    esac
  done
  return 0
}

check_sweep_dir() {  # check_sweep_dir DIR: refuses a path jaxvae may not write a sweep into
  local dir="$1" kind
  if [[ -e "$dir" || -L "$dir" ]] && [[ ! -d "$dir" ]]; then
    die "$dir exists and is not a directory"
  fi
  if [[ ! -d "$dir" ]] || is_empty "$dir"; then
    return 0
  fi
  if [[ ! -e "$dir/jaxvae.json" && ! -L "$dir/jaxvae.json" ]]; then
    die "$dir is not empty and has no jaxvae.json: not a sweep directory launch.sh made; use another --name or" \
      "--runs-dir (nothing in it was changed)"
  fi
  kind="$(marker_kind "$dir")" || die "$dir/jaxvae.json is not a readable jaxvae marker; nothing was changed"
  [[ "$kind" == sweep ]] || die "$dir holds a jaxvae $kind, not a sweep; use another --name or --runs-dir" \
    "(nothing in it was changed)"
}

check_runs_dir() {  # check_runs_dir DIR: a parent of sweeps holds nothing but jaxvae's marked directories
  local dir="$1" entries=() entry bad
  [[ -d "$dir" ]] || return 0
  for entry in "$dir"/* "$dir"/.*; do
    case "${entry##*/}" in
      . | .. | .lock) ;;
      *) if [[ -L "$entry" || ! -d "$entry" ]] || ! is_empty "$entry"; then
        [[ ! -e "$entry" && ! -L "$entry" ]] || entries+=("$entry")
      fi ;;
    esac
  done
  ((${#entries[@]})) || return 0
  if ! bad="$(marker_kind "${entries[@]}")"; then
    die "--runs-dir=$dir holds ${bad##*$'\n'}, which is not a jaxvae run or sweep: not a runs directory of" \
      "jaxvae's; use another --runs-dir (nothing in it was changed)"
  fi
}

mark_sweep_dir() {  # mark_sweep_dir DIR: creates DIR and its marker (atomically) unless it has one
  mkdir -p "$1"
  if [[ ! -e "$1/jaxvae.json" ]]; then
    printf '{\n  "format": 2,\n  "kind": "sweep"\n}\n' >"$1/jaxvae.json.tmp"
    mv -f "$1/jaxvae.json.tmp" "$1/jaxvae.json"
  fi
}

# --- worker mode: one run; used by the pool below and by the SLURM script --------------------
# launch.sh --run-one LOG DONE -- ARGS...   runs experiments.mnist ARGS, logging to LOG, and
# records the command in DONE when it succeeds. SIGTERM/SIGINT are passed on to the run, which
# checkpoints and stops.
finished() {  # finished DONE ARGS...: the run succeeded before with exactly these arguments
  [[ -f "$1" && "$(cat "$1")" == "${*:2}" ]]
}

run_one() {
  local log="$1" done_file="$2"
  shift 3
  if finished "$done_file" "$@"; then
    echo "finished before: $*"
    return 0
  fi
  if [[ -n "${LAUNCH_DRY_RUN:-}" ]]; then
    echo "$PYTHON -m experiments.mnist $*"
    return 0
  fi
  mkdir -p "$(dirname "$log")"
  rm -f "$done_file"
  local child=""
  trap '[[ -z "$child" ]] || kill -TERM "$child" 2>/dev/null || true' TERM INT
  PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" "$PYTHON" -m experiments.mnist "$@" >>"$log" 2>&1 &
  child=$!
  local rc=0
  wait "$child" || rc=$?
  while kill -0 "$child" 2>/dev/null; do  # wait was cut short by a signal: wait for the run to stop
    rc=0
    wait "$child" || rc=$?
  done
  if ((rc == 0)); then
    printf '%s\n' "$*" >"$done_file"
  fi
  return "$rc"
}

if [[ "${1:-}" == "--run-one" ]]; then
  shift
  run_one "$@"
  exit $?
fi

# --- arguments ------------------------------------------------------------------------------
name=""
grid=()
jobs=""
ensemble=0
dry_run=0
slurm=0
runs_dir="runs"
fixed=()
while (($#)); do
  case "$1" in
    -h | --help) usage; exit 0 ;;
    --name=*) name="${1#*=}" ;;
    --grid=*) grid+=("${1#*=}") ;;
    --jobs=*) jobs="${1#*=}" ;;
    --ensemble) ensemble=1 ;;
    --dry-run) dry_run=1 ;;
    --slurm) slurm=1 ;;
    --runs-dir=*) runs_dir="${1#*=}" ;;
    --) shift; fixed=("$@"); break ;;
    *) die "unknown argument '$1' (flags for the runs go after --; see --help)" ;;
  esac
  shift
done

[[ -n "$name" ]] || die "--name is required (see --help)"
[[ "$name" =~ ^[A-Za-z0-9._-]+$ ]] || die "--name '$name': use letters, digits, '.', '_' and '-'"
((${#grid[@]})) || die "give at least one --grid=FLAG=V1,V2,..."
if [[ -z "$jobs" ]]; then
  cores="$(nproc 2>/dev/null || getconf _NPROCESSORS_ONLN)"
  jobs=$((cores / 2 > 0 ? cores / 2 : 1))
fi
[[ "$jobs" =~ ^[1-9][0-9]*$ ]] || die "--jobs '$jobs' is not a positive integer"
for arg in "${fixed[@]+"${fixed[@]}"}"; do
  case "$arg" in
    --workdir=* | --workdir) die "the sweep sets --workdir itself; do not pass it after --" ;;
    --num_replicas=*) ((ensemble == 0)) || die "--ensemble sets --num_replicas itself" ;;
  esac
done

# --- the grid -------------------------------------------------------------------------------
keys=()
points=("")  # each point: "flag=value,flag=value,..."
seeds=""
for axis in "${grid[@]}"; do
  key="${axis%%=*}"
  values="${axis#*=}"
  [[ "$axis" == *=* && "$key" =~ ^[a-z][a-z0-9_]*$ ]] || die "--grid=$axis: expected FLAG=V1,V2,..."
  [[ "$values" =~ ^[A-Za-z0-9._+-]+(,[A-Za-z0-9._+-]+)*$ ]] ||
    die "--grid=$axis: values must be non-empty, separated by commas, made of letters, digits and . _ + -"
  [[ "$key" != workdir ]] || die "--grid=$axis: the sweep sets --workdir itself"
  for k in "${keys[@]+"${keys[@]}"}"; do
    [[ "$k" != "$key" ]] || die "--grid=$axis: $key has two axes"
  done
  keys+=("$key")
  IFS=, read -ra vals <<<"$values"
  declare -A seen=()
  for v in "${vals[@]}"; do
    [[ -z "${seen[$v]+x}" ]] || die "--grid=$axis: $v is given twice (two runs would share one directory)"
    seen[$v]=1
  done
  unset seen
  if ((ensemble)) && [[ "$key" == seed ]]; then
    seeds="$values"  # the seeds become one program per configuration
    continue
  fi
  next=()
  for point in "${points[@]}"; do
    for v in "${vals[@]}"; do
      next+=("${point:+$point,}$key=$v")
    done
  done
  points=("${next[@]}")
done

replica_flags=()
if ((ensemble)); then
  [[ -n "$seeds" ]] || die "--ensemble needs a --grid=seed=... axis"
  IFS=, read -ra seed_list <<<"$seeds"
  for i in "${!seed_list[@]}"; do
    [[ "${seed_list[$i]}" =~ ^[0-9]+$ && "${seed_list[$i]}" -eq $((seed_list[0] + i)) ]] ||
      die "--ensemble needs consecutive integer seeds (e.g. --grid=seed=0,1,2), got $seeds"
  done
  replica_flags=("--seed=${seed_list[0]}" "--num_replicas=${#seed_list[@]}")
fi

sweep="$runs_dir/$name"
if [[ -e "$runs_dir" || -L "$runs_dir" ]] && [[ ! -d "$runs_dir" ]]; then
  die "--runs-dir=$runs_dir exists and is not a directory"
fi
check_runs_dir "$runs_dir"
check_sweep_dir "$sweep"
dirs=()     # per run: its directory name under the sweep
workers=()  # per run: the worker command line, shell-quoted
todo=()
skipped=0
for point in "${points[@]}"; do
  dir="${point:-seed=${seeds//,/_}}"
  args=()
  if [[ -n "$point" ]]; then
    IFS=, read -ra pairs <<<"$point"
    for pair in "${pairs[@]}"; do
      args+=("--$pair")
    done
  fi
  args+=("${replica_flags[@]+"${replica_flags[@]}"}" "${fixed[@]+"${fixed[@]}"}" "--workdir=$sweep/$dir")
  dirs+=("$dir")
  worker="$(printf '%q ' "$ROOT/launch.sh" --run-one "$sweep/logs/$dir.log" "$sweep/logs/$dir.done" -- "${args[@]}")"
  workers+=("$worker")
  if finished "$sweep/logs/$dir.done" "${args[@]}"; then
    ((dry_run)) && echo "skip (finished): $dir"
    skipped=$((skipped + 1))
  else
    todo+=("$worker")
  fi
done

if ((slurm)); then
  script="$sweep/slurm.sh"
  body="$(
    cat <<EOF
#!/usr/bin/env bash
# SLURM job array for the sweep '$name': one task per run, written by launch.sh.
#SBATCH --job-name=$name
#SBATCH --array=0-$((${#points[@]} - 1))%$jobs
#SBATCH --output=$sweep/logs/slurm_%a.out
# Add the #SBATCH lines your cluster needs (partition, time, --gres=gpu:1, ...) above.
set -euo pipefail
cd $(printf '%q' "$PWD")
case "\${SLURM_ARRAY_TASK_ID:?run this script with sbatch}" in
EOF
    for i in "${!workers[@]}"; do
      printf '  %d) exec %s;;\n' "$i" "${workers[$i]}"
    done
    echo "  *) echo \"no run for task \$SLURM_ARRAY_TASK_ID\" >&2; exit 2 ;;"
    echo 'esac'
  )"
  if ((dry_run)); then
    echo "$body"
  else
    mark_sweep_dir "$sweep"
    mkdir -p "$sweep/logs"
    echo "$body" >"$script"
    chmod +x "$script"
    echo "wrote $script (${#points[@]} tasks, at most $jobs at once); submit with: sbatch $script"
  fi
  exit 0
fi

if ((dry_run)); then
  for command in "${todo[@]+"${todo[@]}"}"; do
    LAUNCH_DRY_RUN=1 eval "$command"
  done
  echo "${#todo[@]} to run, $skipped finished, $jobs at once"
  exit 0
fi

# --- the pool -------------------------------------------------------------------------------
echo "sweep $sweep: ${#todo[@]} to run, $skipped finished, $jobs at once"
mark_sweep_dir "$sweep"
mkdir -p "$sweep/logs"
pids=()
stop() {  # stop EXIT_CODE: on SIGTERM/SIGINT every run checkpoints and stops
  trap - TERM INT
  echo "launch.sh: stopping; every run checkpoints and stops (launch again to resume)" >&2
  kill -TERM "${pids[@]}" 2>/dev/null || true
  wait || true
  exit "$1"
}
trap 'stop 143' TERM
trap 'stop 130' INT
for command in "${todo[@]+"${todo[@]}"}"; do
  while (($(jobs -pr | wc -l) >= jobs)); do
    wait -n || true
  done
  eval "exec $command" &  # exec: the background job is the worker itself, so signals reach it
  pids+=($!)
done
wait || true
failed=()
for dir in "${dirs[@]}"; do
  [[ -f "$sweep/logs/$dir.done" ]] || failed+=("$dir")
done
if ((${#failed[@]})); then
  echo "sweep $sweep: ${#failed[@]} run(s) failed: ${failed[*]}; see $sweep/logs/<run>.log, then launch again" \
    "to retry them" >&2
  exit 1
fi
echo "sweep $sweep: all ${#points[@]} runs finished; summarize with: $PYTHON -m experiments.summarize $sweep"
