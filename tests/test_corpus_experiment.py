"""The main job on a downloaded-corpus folder: a fake IEMOCAP release (exact layout and label
lines, the built-in corpus's speech inside) through `configs/iemocap.py`, two
leave-one-session-out folds, averaged."""
import json
import shutil

import numpy as np
from helpers import REPO, load_config

from emosup import experiment
from emosup.data import manifest as manifest_lib

CODES = {"neutral": "neu", "happy": "exc", "sad": "sad", "angry": "ang"}


def make_iemocap_from(synthetic_dir, root):
    """10 synthetic speakers become Ses01F..Ses05M; 4 utterances per emotion each."""
    m = manifest_lib.read_manifest(synthetic_dir / "manifest.csv", allowed_splits=None)
    speakers = m.speakers()[:10]
    for i, spk in enumerate(speakers):
        session, gender = 1 + i // 2, "FM"[i % 2]
        dialog = f"Ses0{session}F_impro0{1 + i % 2}"
        lines = ["% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]", ""]
        rows = [u for u in m if u.speaker == spk and u.emotion in CODES]
        for j, u in enumerate(rows):
            utt = f"{dialog}_{gender}{j:03d}"
            wav = root / f"Session{session}" / "sentences" / "wav" / dialog / f"{utt}.wav"
            wav.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(u.path, wav)
            v, a, d = (3 + 2 * x for x in (u.valence, u.arousal, u.dominance))  # [-1, 1] → 1–5
            lines += [f"[{j:.4f} - {j + 1:.4f}]\t{utt}\t{CODES[u.emotion]}\t[{v:.4f}, {a:.4f}, {d:.4f}]",
                      "C-E1:\tNeutral;\t()", ""]
        ev = root / f"Session{session}" / "dialog" / "EmoEvaluation"
        ev.mkdir(parents=True, exist_ok=True)
        with open(ev / f"{dialog}.txt", "a") as f:
            f.write("\n".join(lines) + "\n")
    return root


def test_experiment_on_a_fake_iemocap_release_two_folds(tmp_path, synthetic_corpus_dir, capsys):
    root = make_iemocap_from(synthetic_corpus_dir, tmp_path / "IEMOCAP_full_release")
    cfg = load_config(REPO / "configs" / "iemocap.py",
                      f"root={root},tiny=1,folds=4+5,arms=scratch,seeds=1")
    experiment.run(cfg, tmp_path / "run")
    for fold in (4, 5):
        d = tmp_path / "run" / f"fold{fold}"
        rows = manifest_lib.read_manifest(d / "manifest.csv", allowed_splits=None)
        test_speakers = sorted({u.speaker for u in rows if u.split == "test"})
        assert test_speakers == [f"Ses0{fold}F", f"Ses0{fold}M"]
        study = json.loads((d / "study.json").read_text())
        assert study["speakers"] == 2 and study["utterances"] == 32 and study["k"] == 4
        speaker_model = json.loads((d / "speaker" / "model.json").read_text())
        assert not set(speaker_model["speakers"]) & set(test_speakers)  # trained on other sessions
        ft = json.loads((d / "finetune" / "scratch" / "seed0" / "results.json").read_text())
        assert ft["classes"] == ["neutral", "happy", "sad", "angry"]
        assert np.sum(ft["test"]["confusion"]) == 32
        # labels_per_class=0: every labelled row of the 6 fine-tuning speakers (2 of 8 are dev)
        assert ft["train_utterances"] == 6 * 16 and ft["dev_utterances"] == 2 * 16
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["folds"] == ["4", "5"] and list(results["arms"]) == ["scratch"]
    for arm in ("scratch",):
        for m in ("accuracy", "uar"):
            per_fold = [json.loads((tmp_path / "run" / f"fold{f}" / "results.json").read_text())
                        ["arms"][arm][m]["mean"] for f in (4, 5)]
            assert results["arms"][arm][m]["mean"] == np.mean(per_fold)
    assert "averaged over folds ['4', '5']" in capsys.readouterr().out


def make_voxceleb_from(synthetic_dir, root, trial_speakers=3):
    """Synthetic speakers as VoxCeleb ids (two 'videos' each); a trial list over the last
    `trial_speakers` of them: every same-speaker pair and as many different-speaker pairs."""
    m = manifest_lib.read_manifest(synthetic_dir / "manifest.csv", allowed_splits=None)
    files = {}
    for i, spk in enumerate(m.speakers()):
        for j, u in enumerate(u for u in m if u.speaker == spk):
            rel = f"id{10001 + i}/vid{j % 2}/{j:05d}.wav"
            (root / "wav" / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(u.path, root / "wav" / rel)
            files.setdefault(f"id{10001 + i}", []).append(rel)
    held = sorted(files)[-trial_speakers:]
    same = [(1, a, b) for s in held for a, b in zip(files[s][:6], files[s][1:7])]
    diff = [(0, files[s][k], files[t][k]) for k in range(3) for s in held for t in held if s < t]
    lines = [f"{label} {a} {b}" for label, a, b in same + diff]
    (root / "veri_test2.txt").write_text("\n".join(lines) + "\n")
    return root, held, len(lines)


def test_voxceleb_speaker_training_and_eer(tmp_path, synthetic_corpus_dir, capsys):
    from emosup import metrics
    from emosup.data.corpora import voxceleb
    from emosup.models import encoders

    root, held, n_trials = make_voxceleb_from(synthetic_corpus_dir, tmp_path / "vox1")
    trials = root / "veri_test2.txt"
    cfg = load_config(REPO / "configs" / "voxceleb.py", f"root={root},trials={trials},tiny=1")
    experiment.run(cfg, tmp_path / "run")
    speakers = json.loads((tmp_path / "run" / "speaker" / "model.json").read_text())["speakers"]
    assert len(speakers) == 11 - 3 and not set(speakers) & set(held)  # trial speakers held out
    v = json.loads((tmp_path / "run" / "verification.json").read_text())
    assert v["trials"] == n_trials and v["left_out"] == 0
    # The same EER from the encoder's embeddings scored here by hand (cosine, metrics.eer).
    parsed = voxceleb.read_trials(trials, root)
    paths = sorted({p for _, a, b in parsed for p in (a, b)})
    emb, _, _ = encoders.embed_paths(encoders.Encoder(tmp_path / "run" / "speaker"), paths, progress=False)
    e = {p: x / np.linalg.norm(x) for p, x in zip(paths, emb)}
    scores = np.array([e[a] @ e[b] for _, a, b in parsed])
    eer, _ = metrics.eer(scores, np.array([t[0] for t in parsed]))
    assert abs(v["eer"] - eer) < 1e-6
    assert "Speaker verification" in capsys.readouterr().out
    assert not (tmp_path / "run" / "study.json").exists()  # no emotion labels: no study


def test_msp_unknown_speakers_stay_out_of_speaker_training(tmp_path, synthetic_corpus_dir):
    from emosup.trainers import pretrain

    m = manifest_lib.read_manifest(synthetic_corpus_dir / "manifest.csv", allowed_splits=None)
    root = tmp_path / "MSP-PODCAST-Publish-1.12"
    (root / "Audios").mkdir(parents=True)
    lines = ["FileName,EmoClass,EmoAct,EmoVal,EmoDom,SpkrID,Gender,Split_Set"]
    for i, spk in enumerate(m.speakers()[:6]):
        known, split = i < 3 or i == 5, "Test1" if i == 5 else "Train"
        for j, u in enumerate(u for u in m if u.speaker == spk):
            name = f"MSP-PODCAST_{100 + i:04d}_{j:04d}.wav"
            shutil.copyfile(u.path, root / "Audios" / name)
            lines.append(f"{name},{'NHSA'[j % 4]},4.0,4.0,4.0,{i + 1 if known else 'Unknown'},Male,{split}")
    (root / "Labels").mkdir()
    (root / "Labels" / "labels_consensus.csv").write_text("\n".join(lines) + "\n")
    cfg = load_config(REPO / "configs" / "msp_podcast.py", f"root={root},tiny=1,stage=speaker,steps=2")
    pretrain.run(cfg, tmp_path / "spk")
    speakers = json.loads((tmp_path / "spk" / "model.json").read_text())["speakers"]
    assert speakers == ["1", "2", "3"]  # unknown_0103 and unknown_0104 are not speakers
    rows = manifest_lib.read_manifest(tmp_path / "spk" / "manifest.csv", allowed_splits=None)
    assert {u.speaker for u in rows if u.split == "train"} == {"1", "2", "3", "unknown_0103", "unknown_0104"}
