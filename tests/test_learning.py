"""Training learns: every pretraining objective lowers its own loss, and fine-tuning (ECAPA
and wav2vec2) fits a small labelled set, on the tiny synthetic corpus in seconds.

Pretraining runs go through `pretrain.run` (the real pipeline, optimiser and loop) with the loss
of every step logged. Each is compared, step for step, with the same run at learning rate 0:
the batches are a pure function of (seed, step, pair table), so both runs see identical
batches and the only difference is whether the weights move. The margins are ratios of the
mean loss over the last 10 of 40 steps, lr-2e-3 run over lr-0 run; each is set at about a
third of what the code achieves or looser (the measured ratio is next to each bound), and
batch noise cannot meet them: the batches are the same on both sides, and over the 40 steps
the lr-0 run's own 10-step means vary by under ±12 %.

Fine-tuning fits a labelled set of 16 utterances (2 speakers × 4 emotions × 2) that is also
its dev set (symbolic links to the same files), so the dev accuracy in the history is the
training accuracy on whole utterances. Chance is 0.25; reaching 0.75 (12 of 16) by guessing
has probability about 1e-5, and an encoder and head that never moved predict near-constant
classes.
"""
import pathlib

import numpy as np
import pytest
from helpers import DEMO, REPO, export_random_tiny_ecapa, load_config, use_tiny_corpus

from emosup import config_lib
from emosup.data import corpus as corpus_lib
from emosup.data import manifest as manifest_lib
from emosup.trainers import pretrain as pretrain_lib
from emosup.trainers import ser_ecapa, ser_w2v2


STEPS, LR = 40, 2e-3


@pytest.fixture(scope="module")
def pair_encoder(tmp_path_factory):
    return export_random_tiny_ecapa(tmp_path_factory.mktemp("enc") / "enc", 7)


@pytest.fixture(scope="module")
def pretrain(tmp_path_factory, synthetic_corpus_dir, pair_encoder):
    """pretrain(objective, lr) -> per-step metrics of that run (each run once per module)."""
    runs = {}

    def run(objective, lr):
        if (objective, lr) not in runs:
            c = load_config(REPO / "configs" / "pretrain.py",
                            f"objective={objective},pairs_encoder={pair_encoder},steps={STEPS},batch_size=8")
            c.unlock()
            use_tiny_corpus(c, synthetic_corpus_dir)
            c.data.crop_seconds, c.log_every, c.checkpoint_every = 1.0, 1, STEPS
            c.optim.lr, c.optim.warmup_steps = lr, 1
            c.pairs.k, c.pairs.num_negatives = 2, 2
            history = pretrain_lib.run(c, tmp_path_factory.mktemp(f"{objective}_{lr}"))["history"]
            assert [h["step"] for h in history] == list(range(1, STEPS + 1))
            runs[objective, lr] = {k: np.array([h[k] for h in history]) for k in history[0]}
        return runs[objective, lr]

    return run


def _ratio(run, control, key):
    return run[key][-10:].mean() / control[key][-10:].mean()


def _pair_control(pretrain):
    """The pair objectives' lr-0 control. multitask and adversarial at lr 0 are the same run
    (same batches, initial weights and forward), and their contrastive term is the
    contrastive objective's at lr 0: encoder and projection are initialised from the same
    keys for every objective."""
    return pretrain("multitask", 0.0)


def test_speaker_objective_learns_speakers(pretrain):
    run, control = pretrain("speaker", LR), pretrain("speaker", 0.0)
    assert run["loss"][0] == pytest.approx(control["loss"][0], rel=1e-5), "same start, same first batch"
    assert _ratio(run, control, "speaker_loss") < 0.5  # measured 0.19
    # 6 speakers: chance is 1/6; 80 guesses averaging >= 0.5 is 8 standard deviations away.
    assert run["speaker_accuracy"][-10:].mean() >= 0.5  # measured 0.89; lr 0: 0.14


def test_contrastive_objective_lowers_its_loss(pretrain):
    run, control = pretrain("contrastive", LR), _pair_control(pretrain)
    assert run["loss"][0] == pytest.approx(control["contrastive_loss"][0], rel=1e-5), "same start"
    assert _ratio(run, control, "contrastive_loss") < 0.5  # measured 0.15
    assert run["contrastive_top1"][-10:].mean() > control["contrastive_top1"][-10:].mean() + 0.2  # 0.93 vs 0.48


def test_multitask_objective_lowers_both_terms(pretrain):
    run, control = pretrain("multitask", LR), _pair_control(pretrain)
    assert run["loss"][0] == pytest.approx(control["loss"][0], rel=1e-5), "same start"
    assert _ratio(run, control, "loss") < 0.5               # measured 0.13
    assert _ratio(run, control, "contrastive_loss") < 0.75  # measured 0.38
    assert _ratio(run, control, "speaker_loss") < 0.5       # measured 0.09
    assert run["speaker_accuracy"][-10:].mean() >= 0.5      # measured 0.96; lr 0: 0.16


def test_adversarial_objective_lowers_contrastive_and_hides_speakers(pretrain):
    """The encoder minimises the contrastive term and, through the reversal, maximises the
    speaker term the classifier minimises: with the default grl_scale the encoder wins, so the
    classifier stays at or below chance (multitask's, without reversal, reaches 0.96)."""
    run, control = pretrain("adversarial", LR), _pair_control(pretrain)
    assert run["loss"][0] == pytest.approx(control["loss"][0], rel=1e-5), "same start"
    assert _ratio(run, control, "contrastive_loss") < 0.85  # measured 0.68
    assert run["speaker_accuracy"][-10:].mean() <= 0.3      # measured 0.0; chance 1/6
    assert _ratio(run, control, "speaker_loss") > 1.5       # measured 4.1: speakers are hidden


# ------------------------------------------------------------------------ fine-tuning fits
@pytest.fixture(scope="module")
def fit_manifest(tmp_path_factory, synthetic_corpus_dir):
    """16 labelled utterances as `train`, the same files again (links) as `dev`, and one
    unseen speaker as `test`."""
    out = tmp_path_factory.mktemp("fit")
    m = manifest_lib.read_manifest(synthetic_corpus_dir / "manifest.csv", allowed_splits=None)
    test_speaker = sorted(u.speaker for u in m if u.split == "test")[0]
    per_cell = {}
    lines = ["path,speaker,emotion,split"]
    for u in m:
        if u.split == "labelled" and per_cell.setdefault((u.speaker, u.emotion), []).__len__() < 2:
            per_cell[u.speaker, u.emotion].append(u)
            link = out / "dev" / pathlib.Path(u.path).name
            link.parent.mkdir(exist_ok=True)
            link.symlink_to(u.path)
            lines += [f"{u.path},{u.speaker},{u.emotion},train", f"{link},{u.speaker},{u.emotion},dev"]
        elif u.split == "test" and u.speaker == test_speaker:
            lines.append(f"{u.path},{u.speaker},{u.emotion},test")
    assert len(lines) == 1 + 2 * 16 + 16
    (out / "fit.csv").write_text("\n".join(lines) + "\n")
    return out / "fit.csv"


def _fit_accuracy(history):
    return [h["dev"]["accuracy"] for h in history]


def test_ecapa_finetuning_fits_a_small_labelled_set(tmp_path, fit_manifest):
    c = load_config(REPO / "configs" / "finetune.py",
                    f"manifest={fit_manifest},steps={STEPS},batch_size=8,labels_per_class=0")
    c.unlock()
    c.data.crop_seconds, c.eval_every, c.ser.freeze_steps = 2.0, STEPS // 2, 0  # whole utterances
    result = ser_ecapa.run(c, tmp_path)
    assert result["train_utterances"] == 16 and result["dev_utterances"] == 16
    acc = _fit_accuracy(result["history"])
    assert acc[-1] >= 0.75, acc
    assert result["history"][-1]["loss"] < 0.5 * result["history"][0]["loss"]


def _w2v2_fit(tmp_path, fit_manifest, arm, pair_encoder, lr_encoder=1e-3, lr_head=1e-2):
    config = load_config(DEMO, f"tiny=1,seeds=1,manifest={fit_manifest},labels_per_class=0")
    config.unlock()
    f = config.finetune
    f.total_steps, f.eval_every, f.ser.freeze_steps, f.data.crop_seconds = STEPS, STEPS // 2, 0, 2.0
    f.optim.lr_encoder, f.optim.lr_head = lr_encoder, lr_head
    config.w2v2.model.update(hidden_dropout=0.0, attention_dropout=0.0)
    config.lock()
    corpus = corpus_lib.open_corpus(config.data, tmp_path)
    return ser_w2v2.run(config_lib.w2v2_stage(config, 0, pair_encoder), tmp_path / arm, corpus, arm)


def test_w2v2_finetuning_fits_a_small_labelled_set(tmp_path, fit_manifest, pair_encoder):
    """A random tiny wav2vec2 (its conv feature encoder frozen) on whole utterances."""
    result = _w2v2_fit(tmp_path, fit_manifest, "w2v2", pair_encoder)
    acc = _fit_accuracy(result["history"])
    assert acc[-1] >= 0.75, acc  # measured 1.0 (0.94 at step 20)
    assert result["history"][-1]["ser_loss"] < 0.5 * result["history"][0]["ser_loss"]


def test_w2v2_pair_arm_lowers_its_pair_losses(tmp_path, fit_manifest, pair_encoder):
    """w2v2_multitask's contrastive and speaker terms, averaged over steps 21-40, against the
    same run at learning rate 0 (same batches, weights that never move)."""
    run = _w2v2_fit(tmp_path / "run", fit_manifest, "w2v2_multitask", pair_encoder)["history"][-1]
    control = _w2v2_fit(tmp_path / "lr0", fit_manifest, "w2v2_multitask", pair_encoder, 0.0, 0.0)["history"][-1]
    assert run["contrastive_loss"] < 0.5 * control["contrastive_loss"]  # measured 0.001 vs 1.18
    assert run["speaker_loss"] < 0.5 * control["speaker_loss"]          # measured 0.000 vs 5.1
    assert run["ser_loss"] < 0.9 * control["ser_loss"]                  # measured 1.08 vs 1.39
