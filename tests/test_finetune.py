"""Fine-tuning's row roles and bad labelled sets (no audio needed)."""
import pytest

from emosup import config_lib, finetune
from emosup.data.corpus import Corpus
from emosup.data.manifest import Manifest, Utterance


def _corpus(rows):
    utts = [Utterance(id=f"{s}_{e}_{i}.wav", path=f"/x/{s}_{e}_{i}.wav", speaker=s, emotion=e, split=sp)
            for s, e, i, sp in rows]
    return Corpus(name="fake", manifest=Manifest(utts, "/x/m.csv"), manifest_path="/x/m.csv",
                  train_split="train", study_split="test", splits=("train", "dev", "test"))


def _cfg(**ser):
    c = config_lib.finetune_config(labels_per_class=2)
    c.ser.update(ser)
    return c


def _rows(speakers, emotions, n, split):
    return [(s, e, i, split) for s in speakers for e in emotions for i in range(n)]


def test_roles_dev_speakers_are_held_out_and_labels_per_class():
    c = _corpus(_rows(["a", "b", "c", "d"], ["happy", "sad"], 3, "train") + _rows(["t"], ["happy", "sad"], 2, "test"))
    train_rows, dev, test, classes = finetune._split_rows(_cfg(), c)
    assert classes == ["happy", "sad"]
    assert [u.emotion for u in train_rows].count("happy") == 2 and len(train_rows) == 4
    dev_spk = {u.speaker for u in dev}
    assert len(dev_spk) == 1 and not dev_spk & {u.speaker for u in train_rows}
    assert {u.speaker for u in test} == {"t"}
    again = finetune._split_rows(_cfg(), c)[0]
    assert [u.id for u in again] == [u.id for u in train_rows]  # seeded


def test_dev_split_is_used_when_present():
    c = _corpus(_rows(["a", "b"], ["happy", "sad"], 3, "train") + _rows(["d"], ["happy", "sad"], 1, "dev")
                + _rows(["t"], ["happy", "sad"], 1, "test"))
    train_rows, dev, _, _ = finetune._split_rows(_cfg(), c)
    assert {u.speaker for u in dev} == {"d"} and {u.speaker for u in train_rows} == {"a", "b"}


def test_labelled_set_missing_a_class():
    rows = _rows(["a", "b", "c", "e"], ["happy"], 3, "train") + _rows(["t"], ["happy", "sad"], 1, "test")
    with pytest.raises(ValueError, match=r"no utterance of class 'sad'"):
        finetune._split_rows(_cfg(classes=("happy", "sad")), _corpus(rows))


def test_emotions_the_config_does_not_know():
    c = _corpus(_rows(["a", "b"], ["happy", "sad"], 2, "train") + _rows(["t"], ["happy", "bored"], 1, "test"))
    with pytest.raises(ValueError, match=r"test rows have emotions \['bored'\]"):
        finetune._split_rows(_cfg(), c)
    with pytest.raises(ValueError, match=r"fine-tuning rows have emotions \['sad'\]"):
        finetune._split_rows(_cfg(classes=("happy",)), c)
