"""The main job end to end, in its tiny variant: on the synthetic corpus and on a CSV corpus
of WAV/FLAC files the project did not generate (other rates, stereo)."""
import json
import subprocess
import sys

import numpy as np
import soundfile as sf
from helpers import DEMO, REPO, load_config

from emosup import experiment

SCHEMA_METHODS = {"speaker_kmeans", "chance", "global_kmeans", "logmel_kmeans"}
SCHEMA_METRICS = {"cluster_accuracy", "purity", "nmi", "ari"}


def _check_study(path, speakers, utterances):
    study = json.loads(path.read_text())
    assert {"encoder", "corpus", "k", "speakers", "utterances", "methods", "per_speaker"} <= set(study)
    assert study["speakers"] == speakers and study["utterances"] == utterances
    assert set(study["methods"]) >= SCHEMA_METHODS
    for m in SCHEMA_METHODS:
        assert set(study["methods"][m]) >= SCHEMA_METRICS
        assert all(0.0 <= study["methods"][m][x] <= 1.0 for x in ("cluster_accuracy", "purity", "nmi"))
    assert len(study["per_speaker"]) == speakers
    return study


def test_demo_runs_the_ecapa_and_the_wav2vec2_arms_by_default():
    from emosup import config_lib

    names = load_config(DEMO, "tiny=1").arms.names
    assert names == config_lib.ALL_ARMS + config_lib.W2V2_ARMS
    assert load_config(DEMO, "arms=w2v2s").arms.names == config_lib.W2V2_ARMS


def test_demo_tiny_on_synthetic_corpus(tmp_path, synthetic_corpus_dir, capsys):
    # The ECAPA arms here; the wav2vec2 arms run through the same comparison in test_finetune_w2v2.
    cfg = load_config(DEMO, f"tiny=1,arms=all,seeds=1,synthetic_dir={synthetic_corpus_dir}")
    experiment.run(cfg, tmp_path)
    # tiny corpus: 3 test speakers × 4 emotions × 4 utterances
    study = _check_study(tmp_path / "study.json", speakers=3, utterances=48)
    assert study["k"] == 4 and study["split"] == "test"
    assert set(study["other_splits"]) == {"unlabelled", "labelled"}
    for name in ("study.md", "study_tsne.png", "study_agreement.png"):
        assert (tmp_path / name).stat().st_size > 0
    out = capsys.readouterr().out
    assert "speaker k-means" in out

    # The comparison: every arm, one seed, results.json schema, confusion matrices, the table.
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["corpus"] == "synthetic" and results["seeds"] == [0]
    assert results["labels_per_class"] == 8
    assert list(results["arms"]) == ["scratch", "speaker", "contrastive", "multitask", "adversarial"]
    for arm, r in results["arms"].items():
        for m in ("macro_f1", "uar", "accuracy"):
            assert set(r[m]) == {"mean", "std", "runs"} and len(r[m]["runs"]) == 1
            assert 0.0 <= r[m]["mean"] <= 1.0
        assert (tmp_path / f"confusion_{arm}.png").stat().st_size > 0
        ft = json.loads((tmp_path / "finetune" / arm / "seed0" / "results.json").read_text())
        assert ft["test"]["macro_f1"] == r["macro_f1"]["runs"][0]
        assert np.sum(ft["test"]["confusion"]) == 48  # every test utterance scored once
    assert "| multitask |" in out and "results.json" in out

    # predict on the fine-tuned speaker arm: a class per file, probabilities summing to 1.
    from emosup import predict

    wavs = sorted((synthetic_corpus_dir / "wav" / "test").rglob("*.wav"))[:3]
    rows = predict.predict(tmp_path / "finetune" / "speaker" / "seed0", [str(w) for w in wavs] + ["/no/such.wav"])
    assert [r["path"] for r in rows] == [str(w) for w in wavs] + ["/no/such.wav"]
    for r in rows[:3]:
        assert r["emotion"] in results["classes"]
        assert abs(sum(r["probabilities"].values()) - 1.0) < 1e-5
    assert "not found" in rows[3]["error"]


def test_demo_tiny_on_a_csv_corpus_of_foreign_wavs(tmp_path):
    """Tones-and-noise 'speech' at 8/22.05/44.1 kHz, some stereo, some FLAC, relative paths."""
    rng = np.random.default_rng(0)
    rows = ["path,speaker,emotion,split"]
    rates = [8000, 22050, 44100]
    for s in range(6):
        split = "test" if s >= 4 else "train"
        f0 = 100 + 25 * s
        for e, emo in enumerate(["calm", "excited"]):
            for j in range(4):
                sr = rates[(s + j) % 3]
                n = int(sr * rng.uniform(0.8, 1.6))
                t = np.arange(n) / sr
                pitch = f0 * (1.0 + 0.4 * e) * (1 + 0.05 * np.sin(2 * np.pi * (2 + 3 * e) * t))
                x = np.sin(2 * np.pi * np.cumsum(pitch) / sr) * (0.2 + 0.3 * e) + 0.01 * rng.normal(size=n)
                if (s + j) % 2:
                    x = np.stack([x, 0.5 * x], axis=1)  # stereo
                ext = "flac" if j == 3 else "wav"
                rel = f"spk{s}/{emo}_{j}.{ext}"
                (tmp_path / f"spk{s}").mkdir(exist_ok=True)
                sf.write(tmp_path / rel, x.astype(np.float32), sr)
                rows.append(f"{rel},spk{s},{emo},{split}")
    (tmp_path / "mine.csv").write_text("\n".join(rows) + "\n")
    cfg = load_config(DEMO, f"tiny=1,arms=multitask,seeds=2,manifest={tmp_path / 'mine.csv'}")
    experiment.run(cfg, tmp_path / "run")
    study = _check_study(tmp_path / "run" / "study.json", speakers=2, utterances=16)
    assert study["k"] == 2 and study["corpus"] == "mine"
    assert set(study["other_splits"]) == {"train"}

    # The comparison on the CSV: pretraining on `train` rows, fine-tuning on a labelled subset
    # of them (dev = held-out train speakers), scored on the unseen `test` speakers.
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["corpus"] == "mine" and results["seeds"] == [0, 1]
    assert list(results["arms"]) == ["multitask"] and results["classes"] == ["calm", "excited"]
    for arm in ("multitask",):
        assert len(results["arms"][arm]["macro_f1"]["runs"]) == 2
        for seed in (0, 1):
            ft = json.loads((tmp_path / "run" / "finetune" / arm / f"seed{seed}" / "results.json").read_text())
            # 4 train speakers: 1 held out for dev (dev_fraction 0.25), 3 × 4 per class → 8 taken
            assert ft["train_utterances"] == 16 and ft["dev_utterances"] == 8
            assert np.sum(ft["test"]["confusion"]) == 16  # the two test speakers' utterances
    pretrained = json.loads((tmp_path / "run" / "pretrain" / "multitask" / "seed0" / "model.json").read_text())
    assert pretrained["speakers"] == ["spk0", "spk1", "spk2", "spk3"]  # train rows only

    # The study CLI with the trained encoder, on the training speakers this time, k=3.
    out = tmp_path / "cli"
    proc = subprocess.run([sys.executable, "-m", "emosup.study", f"--checkpoint={tmp_path / 'run' / 'speaker'}",
                           f"--manifest={tmp_path / 'mine.csv'}", f"--workdir={out}", "--split=train", "--k=3"],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    cli = _check_study(out / "study.json", speakers=4, utterances=32)
    assert cli["k"] == 3 and "speaker k-means" in proc.stdout
