#!/usr/bin/env bash
# Train emosup on several SLURM nodes: writes an sbatch script that starts one
# `python -m emosup.train` process per node (one task per node) and submits it. emosup.train
# (--distributed=auto) sees SLURM_NTASKS > 1 and calls jax.distributed.initialize(), which reads
# the coordinator, the number of processes and the rank from SLURM's environment
# (https://docs.jax.dev/en/latest/multi_process.html). Every process uses all GPUs of its node.
# `bash launch/slurm.sh --help` lists the options; --dry-run prints the script and the sbatch
# command and submits nothing (no sbatch needed).
set -euo pipefail

prog=launch/slurm.sh
# (read -d '' and printf are builtins: --dry-run runs no external command.)
read -r -d '' usage_text <<'EOF' || true
Usage: bash launch/slurm.sh --nodes=N [OPTIONS] -- TRAIN_ARGS...

Options:
  --nodes=N             hosts; SLURM starts one emosup.train process on each (required)
  --gpus-per-node=G     GPUs per host (each process drives all of its node's GPUs)
  --time=LIMIT          wall-clock limit, e.g. 24:00:00 (default: the partition's)
  --partition=NAME      (default: the cluster's)
  --account=NAME        (default: yours)
  --job-name=NAME       default emosup; the script is written to DIR/NAME.sbatch
  --sbatch-option=OPT   one more #SBATCH line, e.g. --sbatch-option=--mem=0 (repeatable)
  --script-dir=DIR      where the script and the job's log (NAME-JOBID.out) go
                        (default: runs/slurm in this checkout)
  --dry-run             print the script and the sbatch command, submit nothing
  -h, --help            this text

Everything after -- goes verbatim to `python -m emosup.train` on every node. The checkout,
its .venv (`bash launch/setup.sh` once, on a login node; GPU nodes need the CUDA build of jax,
e.g. `.venv/bin/pip install -U "jax[cuda12]"`) and the workdir must be on a filesystem that
every node sees. Example:

  bash launch/slurm.sh --nodes=4 --gpus-per-node=8 --time=24:00:00 --partition=gpu --dry-run -- \
      --config=configs/pretrain.py:objective=multitask --workdir=/shared/runs/pretrain
EOF
usage() { printf '%s\n' "$usage_text"; }

die() { printf '%s: %s\n' "$prog" "$*" >&2; exit 2; }

# Quote one word for a POSIX shell: bare when no shell treats any of its characters specially
# (configs like a=1,b=2 stay readable), else single-quoted (--flag='value' for options).
quote() {
  local s=$1 opt=""
  if [[ -n $s && $s =~ ^[A-Za-z0-9_./:=,@%+-]+$ ]]; then
    REPLY=$s
    return
  fi
  if [[ $s =~ ^--[A-Za-z0-9_.-]+= ]]; then
    opt=${BASH_REMATCH[0]}
    s=${s#"$opt"}
  fi
  REPLY="$opt'${s//\'/\'\\\'\'}'"
}

join_quoted() {
  local out="" w
  for w in "$@"; do quote "$w"; out+="${out:+ }$REPLY"; done
  REPLY=$out
}

# ---- arguments --------------------------------------------------------------------------
nodes="" gpus="" time_limit="" partition="" account="" job_name=emosup script_dir="" dry_run=0
extra_options=() train_args=()
set_option() {
  [[ -n $2 ]] || die "$1 needs a value"
  case $1 in
    --nodes) nodes=$2 ;;
    --gpus-per-node) gpus=$2 ;;
    --time) time_limit=$2 ;;
    --partition) partition=$2 ;;
    --account) account=$2 ;;
    --job-name) job_name=$2 ;;
    --sbatch-option) extra_options+=("$2") ;;
    --script-dir) script_dir=$2 ;;
  esac
}
valued='--nodes|--gpus-per-node|--time|--partition|--account|--job-name|--sbatch-option|--script-dir'
while (($#)); do
  arg=$1
  shift
  case $arg in
    --) train_args=("$@"); break ;;
    -h|--help) usage; exit 0 ;;
    --dry-run) dry_run=1 ;;
    --*=*)
      [[ ${arg%%=*} =~ ^($valued)$ ]] || die "unknown option '${arg%%=*}' (bash $prog --help lists them)"
      set_option "${arg%%=*}" "${arg#*=}" ;;
    -*)
      [[ $arg =~ ^($valued)$ ]] || die "unknown option '$arg' (bash $prog --help lists them)"
      (($#)) || die "$arg needs a value"
      set_option "$arg" "$1"
      shift ;;
    *) die "unexpected argument '$arg' (emosup.train arguments go after --)" ;;
  esac
done

[[ -n $nodes ]] || die "--nodes is required (the number of hosts, one emosup.train process on each)"
[[ $nodes =~ ^[1-9][0-9]*$ ]] || die "--nodes '$nodes': expected a positive integer"
[[ -z $gpus || $gpus =~ ^[1-9][0-9]*$ ]] || die "--gpus-per-node '$gpus': expected a positive integer"
[[ -z $time_limit || $time_limit =~ ^[0-9]+([:-][0-9]+)*$ ]] \
  || die "--time '$time_limit': expected a SLURM time such as 90, 24:00:00 or 2-00:00:00"
[[ $job_name =~ ^[A-Za-z0-9_.-]+$ ]] || die "--job-name '$job_name': use letters, digits, '_', '.', '-'"
# #SBATCH lines are read by sbatch, not by a shell: no quoting can protect spaces there.
for pair in "--partition:$partition" "--account:$account"; do
  [[ ! ${pair#*:} =~ [[:space:]] ]] || die "${pair%%:*} '${pair#*:}' must not contain spaces"
done
for opt in ${extra_options[@]+"${extra_options[@]}"}; do
  [[ $opt == -* && ! $opt =~ [[:cntrl:]] ]] || die "--sbatch-option '$opt': expected one sbatch option such as --mem=0"
done
((${#train_args[@]})) || die "no emosup.train arguments: put them after --, e.g. -- --config=configs/pretrain.py --workdir=/shared/runs/x"

# The checkout that holds this script (bash builtins only).
src=${BASH_SOURCE[0]}
[[ $src == */* ]] || src=./$src
repo=$(cd "${src%/*}/.." && pwd)
script_dir=${script_dir:-$repo/runs/slurm}
[[ $script_dir == /* ]] || script_dir=$PWD/$script_dir
[[ ! $script_dir =~ [[:space:]] ]] || die "--script-dir '$script_dir' must not contain spaces (it goes into #SBATCH --output)"
script=$script_dir/$job_name.sbatch

# ---- the script -------------------------------------------------------------------------
header=(--job-name="$job_name" --nodes="$nodes" --ntasks-per-node=1)
[[ -z $gpus ]] || header+=(--gpus-per-node="$gpus")
[[ -z $time_limit ]] || header+=(--time="$time_limit")
[[ -z $partition ]] || header+=(--partition="$partition")
[[ -z $account ]] || header+=(--account="$account")
header+=(--output="$script_dir/%x-%j.out")
header+=(${extra_options[@]+"${extra_options[@]}"})

body="#!/bin/bash"
for h in "${header[@]}"; do body+=$'\n'"#SBATCH $h"; done
quote "$repo"
cd_line="cd $REPLY"
join_quoted "${train_args[@]}"
body+="
# Written by $prog. One task per node: srun starts one emosup.train process on each
# node and jax.distributed.initialize() reads the coordinator, the process count and the rank
# from SLURM's environment. --kill-on-bad-exit: when one process dies the others stop too
# instead of waiting in a collective until the time limit.
set -euo pipefail
$cd_line
export PYTHONUNBUFFERED=1
srun --kill-on-bad-exit=1 .venv/bin/python -m emosup.train $REPLY"

quote "$script"
submit="+ sbatch $REPLY"
if ((dry_run)); then
  printf '%s\n' "$body"
  printf '%s\n' "$submit"
  exit 0
fi
mkdir -p "$script_dir"
printf '%s\n' "$body" >"$script"
printf '%s: wrote %s; the job log goes to %s/%s-JOBID.out\n' "$prog" "$script" "$script_dir" "$job_name"
printf '%s\n' "$submit"
sbatch "$script"
