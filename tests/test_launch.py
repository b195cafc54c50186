"""Multi-host launchers (launch/tpu_vm.sh, launch/slurm.sh): the exact commands they print, the
train arguments passed through verbatim, nothing run in --dry-run, what runs otherwise (stub
gcloud / sbatch that record their arguments), and the error messages for bad input."""
import json
import os
import shlex
import shutil
import subprocess
import sys
import tarfile

import pytest

from helpers import REPO

BASH = shutil.which("bash")
TPU = REPO / "launch" / "tpu_vm.sh"
SLURM = REPO / "launch" / "slurm.sh"
GCLOUD_TPU = ["gcloud", "compute", "tpus", "tpu-vm"]
# The arguments a user passes after --: commas (config args), spaces, a quote, an empty string.
TRAIN_ARGS = ["--config=configs/pretrain.py:objective=multitask,steps=10", "--workdir=gs://bucket/run 1",
              "--config.optim.lr=1e-3", "--config.name=it's a test", ""]
CREATE = ["--name=ser", "--zone=us-central2-b", "--accelerator-type=v4-32", "--version=tpu-ubuntu2204-base"]
STUB = """#!{python}
import json, os, sys
rec = {{"name": os.path.basename(sys.argv[0]), "argv": sys.argv[1:]}}
if rec["name"] == "sbatch":
    rec["script"] = open(sys.argv[1]).read()
with open(os.environ["STUB_LOG"], "a") as f:
    f.write(json.dumps(rec) + "\\n")
fail = os.environ.get("STUB_FAIL")
sys.exit(3 if fail and fail in " ".join(sys.argv[1:]) else 0)
"""


def _stubs(tmp_path, names):
    """A folder of executables that record their argv in tmp_path/stub.log (and exit 0, or 3
    when STUB_FAIL occurs in their arguments)."""
    folder = tmp_path / ("stubs-" + "-".join(names))
    folder.mkdir(exist_ok=True)
    for name in names:
        exe = folder / name
        exe.write_text(STUB.format(python=sys.executable))
        exe.chmod(0o755)
    return folder


def _calls(tmp_path):
    log = tmp_path / "stub.log"
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def _run(tmp_path, script, *args, path=None, fail=""):
    """Runs `bash script args` with PATH=path (default: only stubs of every external command the
    scripts could call, so that anything run is recorded)."""
    if path is None:
        path = str(_stubs(tmp_path, ["gcloud", "sbatch", "srun", "tar", "git", "mkdir", "python3", "cat"]))
    env = {"PATH": path, "STUB_LOG": str(tmp_path / "stub.log"), "TMPDIR": str(tmp_path), "STUB_FAIL": fail}
    return subprocess.run([BASH, str(script), *args], capture_output=True, text=True, env=env, cwd=tmp_path,
                          timeout=60)


def _printed(stdout):
    """The `+ ` lines, each parsed back into argv as a POSIX shell would."""
    return [shlex.split(line[2:]) for line in stdout.splitlines() if line.startswith("+ ")]


def _remote(argv):
    """The --command of a `gcloud ... ssh` argv, parsed as the worker's shell would."""
    (command,) = [a[len("--command="):] for a in argv if a.startswith("--command=")]
    return command


def test_scripts_parse():
    for script in (TPU, SLURM):
        r = subprocess.run([BASH, "-n", str(script)], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr


def test_tpu_dry_run_prints_each_command_and_runs_nothing(tmp_path):
    r = _run(tmp_path, TPU, *CREATE, "--project=my-proj", "--spot", "--dry-run", "--", *TRAIN_ARGS)
    assert r.returncode == 0, r.stderr
    assert _calls(tmp_path) == []  # no gcloud, no tar: PATH held only recording stubs
    where = ["--zone=us-central2-b", "--project=my-proj"]
    on_all = [*GCLOUD_TPU, "ssh", "ser", *where, "--worker=all"]
    tarball = str(tmp_path / "emosup-ser.tar.gz")
    cmds = _printed(r.stdout)
    assert len(cmds) == 6
    assert cmds[0] == [*GCLOUD_TPU, "create", "ser", *where, "--accelerator-type=v4-32",
                       "--version=tpu-ubuntu2204-base", "--spot"]
    assert cmds[1] == ["tar", "-czf", tarball, "--exclude=./.git", "--exclude=./.venv", "--exclude=./runs",
                       "--exclude=__pycache__", "--exclude=*.egg-info", "--exclude=.pytest_cache",
                       "-C", str(REPO), "."]
    assert cmds[2] == [*GCLOUD_TPU, "scp", tarball, "ser:emosup-src.tar.gz", *where, "--worker=all"]
    for cmd in cmds[3:]:
        assert cmd[:-1] == on_all
    assert _remote(cmds[3]) == "mkdir -p ~/emosup && tar -xzf emosup-src.tar.gz -C ~/emosup && rm emosup-src.tar.gz"
    install = _remote(cmds[4])
    assert install.startswith("cd ~/emosup && ")
    assert install.endswith(" && PYTHON=$py bash launch/setup.sh && .venv/bin/pip install -U 'jax[tpu]'")
    # Train: the arguments reach the worker's shell verbatim, and the config stays readable.
    train = _remote(cmds[5])
    assert shlex.split(train) == ["cd", "~/emosup", "&&", "PYTHONUNBUFFERED=1", ".venv/bin/python", "-m",
                                  "emosup.train", *TRAIN_ARGS]
    assert " --config=configs/pretrain.py:objective=multitask,steps=10 --workdir='gs://bucket/run 1' " in train
    assert "delete" not in r.stdout
    assert [line for line in r.stdout.splitlines() if line.startswith("# ")] == [
        "# create", "# copy", "# install", "# train"]


@pytest.mark.parametrize("yes", [False, True])
def test_tpu_delete_only_when_asked(tmp_path, yes):
    args = ["train", "--name=ser", "--zone=z1", "--dry-run", "--delete", *(["--yes"] if yes else []),
            "--", "--config=configs/speaker.py", "--workdir=gs://b/w"]
    cmds = _printed(_run(tmp_path, TPU, *args).stdout)
    assert [c[4] for c in cmds] == ["ssh", "delete"]
    assert cmds[1] == [*GCLOUD_TPU, "delete", "ser", "--zone=z1", *(["--quiet"] if yes else [])]
    alone = _printed(_run(tmp_path, TPU, "delete", "--name=ser", "--zone=z1", "--dry-run").stdout)
    assert alone == [[*GCLOUD_TPU, "delete", "ser", "--zone=z1"]]
    assert _calls(tmp_path) == []


def test_tpu_commands_select_steps(tmp_path):
    r = _run(tmp_path, TPU, "copy,train", "--name=ser", "--zone=z1", "--dry-run", "--",
             "--config=configs/speaker.py", "--workdir=gs://b/w")
    assert r.returncode == 0, r.stderr
    assert [c[0] if c[0] == "tar" else c[4] for c in _printed(r.stdout)] == ["tar", "scp", "ssh", "ssh"]
    assert r.stderr == ""
    # A workdir that is not a bucket is allowed (a shared mount) but warned about.
    r = _run(tmp_path, TPU, "train", "--name=ser", "--zone=z1", "--dry-run", "--", "--workdir=runs/x")
    assert r.returncode == 0
    assert r.stderr == ("launch/tpu_vm.sh: warning: no --workdir=gs://... among the train arguments; "
                        "every worker must write to the same workdir\n")


def test_tpu_runs_what_it_prints(tmp_path):
    """With a stub gcloud (and the real tar), each printed command is run as printed; a failed
    train still deletes the slice with --delete and the exit status is train's."""
    path = f"{_stubs(tmp_path, ['gcloud'])}{os.pathsep}{os.environ['PATH']}"
    r = _run(tmp_path, TPU, *CREATE, "--delete", "--", *TRAIN_ARGS, path=path, fail="emosup.train")
    assert r.returncode == 3
    assert "launch/tpu_vm.sh: train failed (exit 3)" in r.stderr
    printed = [c for c in _printed(r.stdout) if c[0] == "gcloud"]
    assert [["gcloud", *c["argv"]] for c in _calls(tmp_path)] == printed
    assert [c[4] for c in printed] == ["create", "scp", "ssh", "ssh", "ssh", "delete"]
    with tarfile.open(tmp_path / "emosup-ser.tar.gz") as tar:
        names = tar.getnames()
    assert {"./emosup/train.py", "./launch/tpu_vm.sh", "./setup.py"} <= set(names)
    top = {n.split("/")[1] for n in names if n.count("/") >= 1}
    assert not top & {".git", ".venv", "runs", ".pytest_cache"}
    assert not [n for n in names if "__pycache__" in n or ".egg-info" in n]


def test_tpu_no_delete_when_create_failed(tmp_path):
    path = f"{_stubs(tmp_path, ['gcloud'])}{os.pathsep}{os.environ['PATH']}"
    r = _run(tmp_path, TPU, "create", *CREATE, "--delete", path=path, fail="tpu-vm create")
    assert r.returncode == 3
    assert [c["argv"][3] for c in _calls(tmp_path)] == ["create"]


@pytest.mark.parametrize("args, message", [
    (["--zone=z1", "--dry-run", "--", "--workdir=gs://b"], "--name is required (the TPU VM slice's name)"),
    (["--name=ser", "--dry-run", "--", "--workdir=gs://b"], "--zone is required (e.g. --zone=us-central2-b)"),
    ([*CREATE, "--zonez=x", "--dry-run"], "unknown option '--zonez=x' (bash launch/tpu_vm.sh --help lists them)"),
    ([*CREATE, "--dry-run"], "train needs the emosup.train arguments after --, e.g. -- "
                             "--config=configs/pretrain.py --workdir=gs://BUCKET/run"),
    (["create", "--name=ser", "--zone=z1", "--version=v", "--dry-run"],
     "create needs --accelerator-type (e.g. v4-32)"),
    (["create", "--name=ser", "--zone=z1", "--accelerator-type=v4-8", "--dry-run"],
     "create needs --version, the TPU runtime (e.g. tpu-ubuntu2204-base for v4)"),
    (["launch", "--name=ser", "--zone=z1"], "unknown command 'launch' (commands: all, create, copy, install, "
                                            "train, delete)"),
    (["delete", "--name=My_TPU", "--zone=z1"], "--name 'My_TPU': use lowercase letters, digits and hyphens, "
                                               "starting with a letter"),
    (["delete", "--name=ser", "--zone=z1", "--", "x"], "arguments after -- are for train, which is not among the "
                                                       "commands (delete)"),
    (["delete", "--name=ser", "--zone"], "--zone needs a value"),
])
def test_tpu_bad_input(tmp_path, args, message):
    r = _run(tmp_path, TPU, *args)
    assert (r.returncode, r.stdout, r.stderr) == (2, "", f"launch/tpu_vm.sh: {message}\n")
    assert _calls(tmp_path) == []


def test_help(tmp_path):
    for script, first in ((TPU, "Usage: bash launch/tpu_vm.sh [COMMAND"), (SLURM, "Usage: bash launch/slurm.sh")):
        r = _run(tmp_path, script, "--help")
        assert r.returncode == 0 and r.stdout.startswith(first), r
    assert _calls(tmp_path) == []


def _sbatch_script(stdout, script_path):
    body, submit = stdout.rstrip("\n").rsplit("\n", 1)
    assert submit == f"+ sbatch {script_path}"
    return body + "\n"


def test_slurm_dry_run_prints_script_and_submits_nothing(tmp_path):
    r = _run(tmp_path, SLURM, "--nodes=4", "--gpus-per-node=8", "--time=24:00:00", "--partition=gpu",
             "--account=ab12", "--job-name=ser-pt", "--sbatch-option=--mem=0", "--dry-run", "--", *TRAIN_ARGS)
    assert r.returncode == 0, r.stderr
    assert _calls(tmp_path) == []
    out_dir = REPO / "runs" / "slurm"
    lines = _sbatch_script(r.stdout, out_dir / "ser-pt.sbatch").splitlines()
    assert not (out_dir / "ser-pt.sbatch").exists()
    assert lines[0] == "#!/bin/bash"
    assert [line for line in lines if line.startswith("#SBATCH")] == [
        "#SBATCH --job-name=ser-pt", "#SBATCH --nodes=4", "#SBATCH --ntasks-per-node=1",
        "#SBATCH --gpus-per-node=8", "#SBATCH --time=24:00:00", "#SBATCH --partition=gpu",
        "#SBATCH --account=ab12", f"#SBATCH --output={out_dir}/%x-%j.out", "#SBATCH --mem=0"]
    assert f"cd {REPO}" in lines and "set -euo pipefail" in lines
    srun = lines[-1]
    assert srun == ("srun --kill-on-bad-exit=1 .venv/bin/python -m emosup.train "
                    "--config=configs/pretrain.py:objective=multitask,steps=10 --workdir='gs://bucket/run 1' "
                    "--config.optim.lr=1e-3 --config.name='it'\\''s a test' ''")
    assert shlex.split(srun)[5:] == TRAIN_ARGS


def test_slurm_defaults(tmp_path):
    r = _run(tmp_path, SLURM, "--nodes", "2", "--dry-run", "--", "--config=configs/speaker.py")
    lines = _sbatch_script(r.stdout, REPO / "runs" / "slurm" / "emosup.sbatch").splitlines()
    assert [line for line in lines if line.startswith("#SBATCH")] == [
        "#SBATCH --job-name=emosup", "#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=1",
        f"#SBATCH --output={REPO}/runs/slurm/%x-%j.out"]


def test_slurm_writes_and_submits(tmp_path):
    args = ["--nodes=3", "--job-name=j1", "--script-dir=sub/dir", "--", *TRAIN_ARGS]
    script = tmp_path / "sub" / "dir" / "j1.sbatch"  # relative --script-dir: from the caller's cwd
    dry = _run(tmp_path, SLURM, "--dry-run", *args)
    assert not script.parent.exists()
    expected = _sbatch_script(dry.stdout, script)
    path = f"{_stubs(tmp_path, ['sbatch'])}{os.pathsep}{os.environ['PATH']}"
    r = _run(tmp_path, SLURM, *args, path=path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[-1] == f"+ sbatch {script}"
    assert script.read_text() == expected
    assert _calls(tmp_path) == [{"name": "sbatch", "argv": [str(script)], "script": expected}]
    assert f"#SBATCH --output={tmp_path}/sub/dir/%x-%j.out" in expected.splitlines()


@pytest.mark.parametrize("args, message", [
    (["--", "x"], "--nodes is required (the number of hosts, one emosup.train process on each)"),
    (["--nodes=0", "--", "x"], "--nodes '0': expected a positive integer"),
    (["--nodes=2", "--gpus-per-node=a", "--", "x"], "--gpus-per-node 'a': expected a positive integer"),
    (["--nodes=2", "--gpu=8", "--", "x"], "unknown option '--gpu' (bash launch/slurm.sh --help lists them)"),
    (["--nodes=2", "--dry-run"], "no emosup.train arguments: put them after --, e.g. -- "
                                 "--config=configs/pretrain.py --workdir=/shared/runs/x"),
    (["--nodes=2", "--job-name=a b", "--", "x"], "--job-name 'a b': use letters, digits, '_', '.', '-'"),
    (["--nodes=2", "--partition=a b", "--", "x"], "--partition 'a b' must not contain spaces"),
    (["--nodes=2", "--time=1 day", "--", "x"],
     "--time '1 day': expected a SLURM time such as 90, 24:00:00 or 2-00:00:00"),
    (["--nodes=2", "configs/x.py"], "unexpected argument 'configs/x.py' (emosup.train arguments go after --)"),
])
def test_slurm_bad_input(tmp_path, args, message):
    r = _run(tmp_path, SLURM, *args)
    assert (r.returncode, r.stdout, r.stderr) == (2, "", f"launch/slurm.sh: {message}\n")
    assert _calls(tmp_path) == []
