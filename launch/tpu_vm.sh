#!/usr/bin/env bash
# Train emosup on a Cloud TPU VM slice (several hosts): create the slice, copy this checkout to
# every worker, install, run ONE `python -m emosup.train` on every worker, delete the slice.
# Every worker runs the same command; jax.distributed.initialize() finds the other workers by
# itself on a TPU VM (emosup.train --distributed=auto), and the workdir must be a gs:// bucket
# that every worker writes to. `bash launch/tpu_vm.sh --help` lists the commands and options;
# try a run with --dry-run first: it prints every command and runs none (no gcloud needed).
#
# gcloud commands as documented by Google (checked for this script):
#   slice workflow (create; ssh --worker=all --command for install and run):
#     https://cloud.google.com/tpu/docs/jax-pods
#     (that page now warns that the Cloud TPU API is maintenance-only and does not support TPU7x
#     and later; for those, Google points to Compute Engine / GKE: this script does not cover them)
#   https://cloud.google.com/sdk/gcloud/reference/compute/tpus/tpu-vm/create  (--accelerator-type, --version, --spot)
#   https://cloud.google.com/sdk/gcloud/reference/compute/tpus/tpu-vm/scp     (--worker=all)
#   https://cloud.google.com/sdk/gcloud/reference/compute/tpus/tpu-vm/ssh     (--worker=all --command)
#   https://cloud.google.com/sdk/gcloud/reference/compute/tpus/tpu-vm/delete
# JAX on a TPU VM: `pip install -U "jax[tpu]"` (https://docs.jax.dev/en/latest/installation.html).
# Runtime (--version) per TPU generation: https://cloud.google.com/tpu/docs/runtimes
# Install on each worker = `bash launch/setup.sh && .venv/bin/pip install -U "jax[tpu]"`: setup.sh
# knows nothing of TPUs and installs the CPU jax; the jax[tpu] extra adds the TPU runtime (libtpu).
# shellcheck disable=SC2329  # the step_* functions are called as "step_$step"
set -euo pipefail

prog=launch/tpu_vm.sh
# (read -d '' and printf are builtins: the script needs no external command until it runs one.)
read -r -d '' usage_text <<'EOF' || true
Usage: bash launch/tpu_vm.sh [COMMAND[,COMMAND...]] --name=NAME --zone=ZONE [OPTIONS] [-- TRAIN_ARGS...]

Commands (default: all; several may be joined with commas, e.g. copy,train):
  all      create, copy, install, train (then delete with --delete)
  create   create the TPU VM slice (needs --accelerator-type and --version)
  copy     tar this checkout (without .git, .venv, runs, caches), copy it to every worker and
           unpack it in ~/emosup there
  install  on every worker: bash launch/setup.sh, then pip install -U "jax[tpu]" into .venv
  train    on every worker: python -m emosup.train TRAIN_ARGS, the output streamed here
  delete   delete the slice

Options:
  --name=NAME               the slice's name (lowercase letters, digits, hyphens)
  --zone=ZONE               e.g. us-central2-b
  --accelerator-type=TYPE   e.g. v4-32 (4 hosts), v5litepod-32, v5p-32   (create)
  --version=RUNTIME         TPU software version: tpu-ubuntu2204-base (v4 and older),
                            v2-alpha-tpuv5-lite (v5e), v2-alpha-tpuv5 (v5p),
                            v2-alpha-tpuv6e (v6e)   (create)
  --project=PROJECT         Google Cloud project (default: gcloud's configured one)
  --spot                    create a Spot slice (cheaper; may be preempted)
  --delete                  after the other commands, delete the slice, also when copy,
                            install or train failed (not when create failed)
  --yes                     delete without gcloud's confirmation prompt
  --dry-run                 print the commands, run nothing
  -h, --help                this text

Everything after -- goes verbatim to `python -m emosup.train` on every worker; the workdir
must be a gs:// bucket (every worker writes checkpoints there), e.g.

  bash launch/tpu_vm.sh --name=ser --zone=us-central2-b --accelerator-type=v4-32 \
      --version=tpu-ubuntu2204-base --delete --dry-run -- \
      --config=configs/pretrain.py:objective=multitask --workdir=gs://BUCKET/ser/pretrain

Ctrl-C stops the local gcloud only; `bash launch/tpu_vm.sh delete --name=... --zone=...`
removes the slice.
EOF
usage() { printf '%s\n' "$usage_text"; }

die() { printf '%s: %s\n' "$prog" "$*" >&2; exit 2; }

# Quote one word for a POSIX shell: left bare when it holds only characters no shell treats
# specially (so configs like a=1,b=2 stay readable), else single-quoted. Unlike printf %q, the
# result is valid in any POSIX shell (the remote login shell may not be bash) and keeps commas.
quote() {
  local s=$1 opt=""
  if [[ -n $s && $s =~ ^[A-Za-z0-9_./:=,@%+-]+$ ]]; then
    REPLY=$s
    return
  fi
  if [[ $s =~ ^--[A-Za-z0-9_.-]+= ]]; then # --flag='value': the flag stays readable
    opt=${BASH_REMATCH[0]}
    s=${s#"$opt"}
  fi
  REPLY="$opt'${s//\'/\'\\\'\'}'"
}

# Words → one shell command line (in REPLY).
join_quoted() {
  local out="" w
  for w in "$@"; do quote "$w"; out+="${out:+ }$REPLY"; done
  REPLY=$out
}

dry_run=0
# Print a command (prefix "+ ", quoted so that it can be pasted into a shell), then run it
# unless --dry-run. Returns the command's status (callers chain with `|| return`).
run() {
  join_quoted "$@"
  printf '+ %s\n' "$REPLY"
  if [[ $dry_run == 1 ]]; then return 0; fi
  "$@"
}

# ---- arguments --------------------------------------------------------------------------
commands="" name="" zone="" accel="" version="" project="" spot=0 delete_after=0 yes=0
train_args=()
set_option() {
  [[ -n $2 ]] || die "$1 needs a value"
  case $1 in
    --name) name=$2 ;;
    --zone) zone=$2 ;;
    --accelerator-type) accel=$2 ;;
    --version) version=$2 ;;
    --project) project=$2 ;;
  esac
}
while (($#)); do
  arg=$1
  shift
  case $arg in
    --) train_args=("$@"); break ;;
    -h|--help) usage; exit 0 ;;
    --dry-run) dry_run=1 ;;
    --spot) spot=1 ;;
    --delete) delete_after=1 ;;
    --yes) yes=1 ;;
    --name|--zone|--accelerator-type|--version|--project)
      (($#)) || die "$arg needs a value"
      set_option "$arg" "$1"
      shift ;;
    --name=*|--zone=*|--accelerator-type=*|--version=*|--project=*)
      set_option "${arg%%=*}" "${arg#*=}" ;;
    -*) die "unknown option '$arg' (bash $prog --help lists them)" ;;
    *)
      [[ -z $commands ]] || die "one command list only, got '$commands' and '$arg' (join commands with commas)"
      commands=$arg ;;
  esac
done

commands=${commands:-all}
IFS=, read -r -a words <<<"$commands,"
steps=()
for step in "${words[@]}"; do
  case $step in
    all) steps+=(create copy install train) ;;
    create|copy|install|train|delete) steps+=("$step") ;;
    *) die "unknown command '$step' (commands: all, create, copy, install, train, delete)" ;;
  esac
done
has_step() { [[ " ${steps[*]} " == *" $1 "* ]]; }

[[ -n $name ]] || die "--name is required (the TPU VM slice's name)"
[[ -n $zone ]] || die "--zone is required (e.g. --zone=us-central2-b)"
[[ $name =~ ^[a-z]([-a-z0-9]*[a-z0-9])?$ ]] \
  || die "--name '$name': use lowercase letters, digits and hyphens, starting with a letter"
if has_step create; then
  [[ -n $accel ]] || die "create needs --accelerator-type (e.g. v4-32)"
  [[ -n $version ]] || die "create needs --version, the TPU runtime (e.g. tpu-ubuntu2204-base for v4)"
fi
if has_step train; then
  ((${#train_args[@]})) || die "train needs the emosup.train arguments after --, e.g. -- --config=configs/pretrain.py --workdir=gs://BUCKET/run"
  shared=0
  for ((i = 0; i < ${#train_args[@]}; i++)); do
    a=${train_args[i]}
    if [[ $a == --workdir=gs://* ]] || [[ $a == --workdir && ${train_args[i + 1]:-} == gs://* ]]; then shared=1; fi
  done
  ((shared)) || printf '%s: warning: no --workdir=gs://... among the train arguments; every worker must write to the same workdir\n' "$prog" >&2
elif ((${#train_args[@]})); then
  die "arguments after -- are for train, which is not among the commands ($commands)"
fi
if ((delete_after)) && has_step delete; then die "--delete and the delete command: give one of them"; fi

# ---- the steps --------------------------------------------------------------------------
# The checkout that holds this script (bash builtins only: --dry-run must run nothing).
src=${BASH_SOURCE[0]}
[[ $src == */* ]] || src=./$src
repo=$(cd "${src%/*}/.." && pwd)

where=(--zone="$zone")
[[ -z $project ]] || where+=(--project="$project")
tarball=${TMPDIR:-/tmp}/emosup-$name.tar.gz
remote_tar=emosup-src.tar.gz # in the workers' home directories
# shellcheck disable=SC2088  # the ~ is for the worker's shell
remote_dir='~/emosup'        # left unquoted inside the remote commands: the worker's shell expands ~

# One command on every worker of the slice.
on_all_workers() {
  run gcloud compute tpus tpu-vm ssh "$name" "${where[@]}" --worker=all --command="$1"
}

step_create() {
  local extra=()
  ((spot == 0)) || extra+=(--spot)
  run gcloud compute tpus tpu-vm create "$name" "${where[@]}" \
    --accelerator-type="$accel" --version="$version" ${extra[@]+"${extra[@]}"}
}

step_copy() {
  # The working tree as it is (uncommitted edits included), without what setup.sh and runs
  # regenerate; one tarball instead of scp --recurse over the tree (thousands of small files).
  run tar -czf "$tarball" --exclude=./.git --exclude=./.venv --exclude=./runs \
    --exclude=__pycache__ --exclude='*.egg-info' --exclude=.pytest_cache -C "$repo" . || return
  run gcloud compute tpus tpu-vm scp "$tarball" "$name:$remote_tar" "${where[@]}" --worker=all || return
  on_all_workers "mkdir -p $remote_dir && tar -xzf $remote_tar -C $remote_dir && rm $remote_tar"
}

step_install() {
  # jax needs Python >= 3.11 (its wheels' Requires-Python) and the TPU VM images are Ubuntu
  # 22.04, whose python3 is 3.10 and makes no venv without the python3-venv package: there the
  # worker gets python3.11 from apt. setup.sh installs jax for the CPU; the TPU build comes from
  # the jax[tpu] extra (JAX installation docs).
  on_all_workers "cd $remote_dir && { python3 -c 'import sys, ensurepip; sys.exit(sys.version_info < (3, 11))' 2>/dev/null && py=python3 || { py=python3.11; python3.11 -c 'import ensurepip' 2>/dev/null || { sudo apt-get -qq update && sudo apt-get -qq install -y python3.11 python3.11-venv; }; }; } && PYTHON=\$py bash launch/setup.sh && .venv/bin/pip install -U 'jax[tpu]'"
}

step_train() {
  # Unbuffered, so that the output reaches this terminal as it is written, not in 8 KiB blocks.
  join_quoted ${train_args[@]+"${train_args[@]}"}
  on_all_workers "cd $remote_dir && PYTHONUNBUFFERED=1 .venv/bin/python -m emosup.train $REPLY"
}

step_delete() {
  local extra=()
  ((yes == 0)) || extra+=(--quiet)
  run gcloud compute tpus tpu-vm delete "$name" "${where[@]}" ${extra[@]+"${extra[@]}"}
}

status=0 failed=""
for step in "${steps[@]}"; do
  printf '# %s\n' "$step"
  "step_$step" || { status=$? failed=$step; printf '%s: %s failed (exit %d)\n' "$prog" "$step" "$status" >&2; break; }
done
# --delete: the slice goes also when copy, install or train failed (it bills by the hour), but
# not when create failed: a slice of that name may then be someone else's.
if ((delete_after)) && [[ $failed != create ]]; then
  printf '# delete (--delete)\n'
  step_delete || { rc=$?; ((status)) || status=$rc; }
fi
exit "$status"
