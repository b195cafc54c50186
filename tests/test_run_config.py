"""config.json in every workdir, resumes that refuse to mix runs, and one-line errors from the
command-line entry points."""
import json
import os
import subprocess
import sys

import pytest
from helpers import REPO, tiny_finetune_config, write_wav

from emosup import config_lib, run_config
from emosup.errors import ConfigError
from emosup.trainers import ser, ser_ecapa

def _tiny(corpus_dir, labels_per_class=2):
    return tiny_finetune_config(corpus_dir, steps=4, labels_per_class=labels_per_class)


def test_finetuning_writes_config_json_and_refuses_a_resume_with_other_settings(tmp_path, synthetic_corpus_dir):
    cfg = _tiny(synthetic_corpus_dir)
    result = ser_ecapa.run(cfg, tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["config"]["ser"]["labels_per_class"] == 2 and saved["config"]["total_steps"] == 4
    assert saved["config"]["data"]["synthetic_dir"] == str(synthetic_corpus_dir)
    assert {"jax", "flax", "optax", "orbax-checkpoint"} <= set(saved["versions"])
    assert saved["devices"]["count"] >= 1 and saved["devices"]["platform"] == "cpu"
    assert saved["emosup"]["version"]
    assert result["config"] == "config.json"
    assert json.loads((tmp_path / "results.json").read_text())["config"] == "config.json"
    before = (tmp_path / "results.json").read_text()
    # What the command prints at the end, and TensorBoard summaries as pretraining writes them.
    table = ser.format_test(result, tmp_path).splitlines()
    assert table[1].startswith("| macro-F1 | UAR | accuracy | ECE")
    assert table[3] == "| " + " | ".join(f"{result['test'][k]:.3f}" for k in ("macro_f1", "uar", "accuracy", "ece")) + " |"
    events = list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    assert events and sum(e.stat().st_size for e in events) > 200

    # Another number of labels per class: the old model must not be reported under it.
    other = _tiny(synthetic_corpus_dir, labels_per_class=4)
    with pytest.raises(run_config.ConfigMismatchError) as e:
        ser_ecapa.run(other, tmp_path)
    message = str(e.value)
    assert "ser.labels_per_class: saved 2, now 4" in message and "\n" not in message
    assert "--config.allow_config_change=ser.labels_per_class" in message
    assert (tmp_path / "results.json").read_text() == before
    assert json.loads((tmp_path / "config.json").read_text())["config"]["ser"]["labels_per_class"] == 2

    # What only changes logging may differ; the resume reports the finished run again.
    same = _tiny(synthetic_corpus_dir)
    same.log_every, same.checkpoint_every = 7, 9
    again = ser_ecapa.run(same, tmp_path)
    assert again["test"] == result["test"]
    assert json.loads((tmp_path / "config.json").read_text())["config_changes"] == []

    # An accepted change is recorded.
    other.allow_config_change = "ser.labels_per_class"
    ser_ecapa.run(other, tmp_path)
    changes = json.loads((tmp_path / "config.json").read_text())["config_changes"]
    assert [(c["field"], c["saved"], c["new"]) for c in changes] == [("ser.labels_per_class", 2, 4)]


def _fake_state(workdir):
    (workdir / "checkpoints" / "100").mkdir(parents=True)


def test_prepare_compares_only_with_a_run_to_resume(tmp_path):
    c = config_lib.pretrain_config()
    run_config.prepare(tmp_path, c, resuming=False)
    d = c.copy_and_resolve_references()
    d.optim.lr = 1e-3
    run_config.prepare(tmp_path, d, resuming=False)  # nothing to mix: rewritten
    assert json.loads((tmp_path / "config.json").read_text())["config"]["optim"]["lr"] == 1e-3
    _fake_state(tmp_path)
    assert run_config.holds_state(tmp_path)
    with pytest.raises(run_config.ConfigMismatchError, match=r"optim\.lr: saved 0\.001, now 0\.002"):
        run_config.prepare(tmp_path, c, resuming=run_config.holds_state(tmp_path))
    assert isinstance(run_config.ConfigMismatchError("x"), ConfigError)


def test_the_experiment_may_add_arms_and_seeds_but_not_change_what_they_share(tmp_path):
    c = config_lib.experiment_config(arms="0")
    run_config.prepare(tmp_path, c, resuming=False, ignore=run_config.EXPERIMENT_MAY_DIFFER)
    more = config_lib.experiment_config(arms="all", seeds=5)
    run_config.prepare(tmp_path, more, resuming=True, ignore=run_config.EXPERIMENT_MAY_DIFFER)
    changed = config_lib.experiment_config(arms="all", seeds=5, labels_per_class=4)
    with pytest.raises(run_config.ConfigMismatchError, match=r"finetune\.ser\.labels_per_class: saved 8, now 4"):
        run_config.prepare(tmp_path, changed, resuming=True, ignore=run_config.EXPERIMENT_MAY_DIFFER)
    # Speaker training and the arms' pretraining read no experiment-only section.
    assert not run_config.differences(config_lib.speaker_stage(c), config_lib.speaker_stage(changed))
    assert run_config.differences(c, changed)


# ------------------------------------------------------------------------ the command line
def _cli(module, *args, cwd):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    return subprocess.run([sys.executable, "-m", f"emosup.{module}", *args], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=300)


def _error_lines(stderr, module):
    return [ln for ln in stderr.splitlines() if ln.startswith(f"emosup.{module}: error: ")]


def test_user_errors_are_one_line_without_traceback(tmp_path):
    missing = tmp_path / "gone.wav"
    manifest = tmp_path / "m.csv"
    write_wav(tmp_path / "a.wav", seconds=1.0)
    manifest.write_text(f"path,speaker,emotion\n{tmp_path / 'a.wav'},s1,happy\n{missing},s2,sad\n")
    readable = tmp_path / "ok.csv"
    readable.write_text(f"path,speaker,emotion\n{tmp_path / 'a.wav'},s1,happy\n")
    cases = [
        ("train", [f"--config={REPO / 'configs' / 'pretrain.py'}:manifest={manifest}",
                   f"--workdir={tmp_path / 'w'}"], "audio file not found"),
        ("train", [f"--config={REPO / 'configs' / 'pretrain.py'}", "--config.optim.lrr=1",
                   f"--workdir={tmp_path / 'w'}"], "unknown config field 'lrr' (Did you mean \"lr\" instead of \"lrr\"?)"),
        ("train", [f"--config={REPO / 'configs' / 'pretrain.py'}:foo=1", f"--workdir={tmp_path / 'w'}"],
         "config argument 'foo' is not known"),
        ("embed", [f"--checkpoint={tmp_path / 'nowhere'}", f"--manifest={readable}", f"--out={tmp_path / 'e.npz'}"],
         "nowhere"),
        ("study", [f"--checkpoint={tmp_path / 'nowhere'}", f"--manifest={tmp_path / 'none.csv'}",
                   f"--workdir={tmp_path / 's'}"], "manifest file not found"),
    ]
    for module, args, expected in cases:
        r = _cli(module, *args, cwd=tmp_path)
        lines = _error_lines(r.stderr, module)
        assert r.returncode == 2, (module, args, r.stderr[-2000:])
        assert "Traceback" not in r.stderr, (module, args, r.stderr[-2000:])
        assert len(lines) == 1 and expected in lines[0], (module, args, r.stderr[-2000:])
        assert "libtpu" not in r.stderr
    # --verbose shows where it came from.
    r = _cli("study", f"--checkpoint={tmp_path / 'nowhere'}", f"--manifest={tmp_path / 'none.csv'}",
             f"--workdir={tmp_path / 's'}", "--verbose", cwd=tmp_path)
    assert r.returncode != 0 and "Traceback" in r.stderr and "ManifestError" in r.stderr


def test_help_lists_the_config_files_arguments(tmp_path):
    r = _cli("experiment", f"--config={REPO / 'configs' / 'demo.py'}", "--helpshort", cwd=tmp_path)
    assert "labels_per_class" in r.stdout and "speaker_encoder" in r.stdout


def test_progress_reports_done_total_and_eta_off_a_terminal(caplog):
    from emosup import progress

    caplog.set_level("INFO")
    assert list(progress.track(range(4), "phase", unit="utt", every=0.0)) == [0, 1, 2, 3]
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("phase: ")]
    assert len(lines) == 4 and all(" utt/s, ETA " in line for line in lines[:3])
    assert [line.split()[1] for line in lines[:3]] == ["1/4", "2/4", "3/4"]
    assert lines[-1].startswith("phase: 4 utt in ")


def test_predict_on_an_experiment_workdir_names_the_models_inside(tmp_path):
    from emosup import checkpoint, predict

    for arm in ("scratch", "contrastive"):
        for seed in (0, 1):
            d = tmp_path / "finetune" / arm / f"seed{seed}"
            d.mkdir(parents=True)
            (d / "model.json").write_text(json.dumps({"encoder": "ecapa", "ser": {"classes": ["a", "b"]}}))
    (tmp_path / "pretrain" / "contrastive" / "seed0").mkdir(parents=True)
    (tmp_path / "pretrain" / "contrastive" / "seed0" / "model.json").write_text(json.dumps({"encoder": "ecapa"}))
    with pytest.raises(checkpoint.CheckpointError) as e:
        predict.load_model(str(tmp_path))
    assert ("holds 4: finetune/contrastive/seed0, finetune/contrastive/seed1, finetune/scratch/seed0, "
            "finetune/scratch/seed1;") in str(e.value)
    assert f"--checkpoint={tmp_path / 'finetune' / 'contrastive' / 'seed0'}" in str(e.value)


def test_every_stage_reuses_the_cached_synthetic_corpus(tmp_path, monkeypatch, synthetic_corpus_dir):
    """Fine-tuning and pretraining configs without a corpus folder use the same cache as the
    experiment, instead of generating the corpus into each workdir."""
    from emosup.data import corpus as corpus_lib
    from emosup.data.synthetic import generator

    monkeypatch.setenv("EMOSUP_CACHE", str(tmp_path / "cache"))
    asked = []
    monkeypatch.setattr(generator, "generate",
                        lambda out, cfg: asked.append(out) or synthetic_corpus_dir / "manifest.csv")
    expected = config_lib.experiment_config().data.synthetic_dir
    assert expected.startswith(str(tmp_path / "cache" / "synthetic-"))
    for c in (config_lib.finetune_config(), config_lib.pretrain_config()):
        assert not c.data.synthetic_dir
        corpus_lib.open_corpus(c.data, tmp_path / "workdir")
    assert [str(p) for p in asked] == [expected, expected]
