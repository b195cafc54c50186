"""emosup.study on synthetic embeddings whose within-speaker clusters follow emotion."""
import json
import os

import numpy as np
import pytest

from emosup.study import report, run

EMOTIONS = ("angry", "happy", "neutral", "sad")


def _synthetic(seed=0, n_speakers=6, d=16):
    """Gaussian blob per (speaker, emotion): speaker offsets (scale 10) >> emotion offsets
    (scale 2) >> noise (0.3); plus one speaker with a single utterance."""
    rng = np.random.default_rng(seed)
    x, spk, emo = [], [], []
    for s in range(n_speakers):
        offset = rng.normal(size=d) * 10
        for e in EMOTIONS:
            n = int(rng.integers(6, 12))
            x.append(offset + rng.normal(size=d) * 2 + rng.normal(size=(n, d)) * 0.3)
            spk += [f"spk{s}"] * n
            emo += [e] * n
    x.append(rng.normal(size=(1, d)))
    spk.append("lonely")
    emo.append("sad")
    x = np.concatenate(x).astype(np.float32)
    logmel = rng.normal(size=(len(x), 20)).astype(np.float32)  # carries no emotion
    return x, np.array(spk), np.array(emo), logmel


@pytest.fixture(scope="module")
def study():
    x, spk, emo, logmel = _synthetic()
    res = run.run_study(x, spk, emo, logmel, seed=0, encoder="synthetic", corpus="blobs",
                      split_name="test", k_sweep_max=5)
    return res, (x, spk, emo, logmel)


def test_schema_and_counts(study):
    res, (x, spk, emo, _) = study
    for key in ("encoder", "corpus", "k", "speakers", "utterances", "methods", "per_speaker"):
        assert key in res
    assert (res["encoder"], res["corpus"], res["split"]) == ("synthetic", "blobs", "test")
    assert res["k"] == 4 and res["speakers"] == 6 and res["utterances"] == len(x) - 1
    assert set(res["methods"]) == {"speaker_kmeans", "chance", "global_kmeans",
                                   "logmel_kmeans"}
    for meth in res["methods"].values():
        assert set(meth) == {"cluster_accuracy", "purity", "nmi", "ari"}
    assert res["skipped_speakers"] == [{"speaker": "lonely", "utterances": 1,
                                        "reason": "fewer than 2 utterances"}]
    assert [r["speaker"] for r in res["per_speaker"]] == [f"spk{s}" for s in range(6)]
    assert sum(r["utterances"] for r in res["per_speaker"]) == res["utterances"]
    assert json.loads(json.dumps(res)) == res  # plain JSON types only


def test_agreement_values(study):
    res, _ = study
    m = res["methods"]
    assert m["speaker_kmeans"]["cluster_accuracy"] > 0.97
    assert m["speaker_kmeans"]["nmi"] > 0.95
    assert 0.25 <= m["chance"]["cluster_accuracy"] < 0.55
    assert abs(m["chance"]["ari"]) < 0.1
    # One global clustering splits speakers, so inside a speaker it is ~one cluster.
    assert m["global_kmeans"]["cluster_accuracy"] < 0.45 and m["global_kmeans"]["nmi"] < 0.2
    assert m["logmel_kmeans"]["cluster_accuracy"] < 0.6
    # The reported mean is the utterance-weighted mean of the per-speaker rows.
    rows = res["per_speaker"]
    w = np.array([r["utterances"] for r in rows])
    acc = np.array([r["cluster_accuracy"] for r in rows])
    assert m["speaker_kmeans"]["cluster_accuracy"] == pytest.approx(np.average(acc, weights=w))
    g = np.array([r["methods"]["global_kmeans"]["nmi"] for r in rows])
    assert m["global_kmeans"]["nmi"] == pytest.approx(np.average(g, weights=w))
    std = res["methods_std"]["chance"]["cluster_accuracy"]
    assert 0 < std < 0.2
    assert set(res["k_sweep"]) == {"2", "3", "4", "5"}
    assert res["k_sweep"]["4"]["cluster_accuracy"] == m["speaker_kmeans"]["cluster_accuracy"]
    assert res["k_sweep"]["2"]["cluster_accuracy"] < 0.75
    assert res["silhouette_k"]["k"] == 4


def test_write_study_files(study, tmp_path):
    res, (x, spk, emo, _) = study
    paths = report.write_study(res, str(tmp_path), x, spk, emo, max_tsne_speakers=4)
    assert set(paths) == {"json", "md", "tsne", "agreement"}
    for p in paths.values():
        assert os.path.getsize(p) > 0
    for key in ("tsne", "agreement"):
        with open(paths[key], "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    with open(paths["json"], encoding="utf-8") as f:
        assert json.load(f) == res
    md = open(paths["md"], encoding="utf-8").read()
    table = report.format_table(res)
    assert table in md
    lines = table.splitlines()
    assert lines[0] == "| Method | Cluster acc. | Purity | NMI | ARI |" and len(lines) == 6
    assert lines[2].startswith("| speaker k-means (embeddings) | 1.000 ± 0.000")
    assert "lonely (fewer than 2 utterances)" in md


def test_bad_input_is_named():
    x, spk, emo, logmel = _synthetic(n_speakers=2)
    with pytest.raises(ValueError, match=r"study/run.py: emotions must have 1 dim\(s\) "
                                         r"and N=\d+ rows"):
        run.run_study(x, spk, emo[:-1], logmel, encoder="e", corpus="c", split_name="s")


def test_k_is_each_speakers_number_of_emotions():
    """Speakers with 4 emotions and speakers with 2 (two corpora mixed): each is clustered into
    its own number of emotions, not the union's 4 for all, and recovers its emotions exactly."""
    x, spk, emo, logmel = _synthetic(seed=3)
    keep = (spk != "lonely") & ~(np.isin(spk, ["spk0", "spk1"]) & np.isin(emo, ["happy", "sad"]))
    x, spk, emo, logmel = x[keep], spk[keep], emo[keep], logmel[keep]
    res = run.run_study(x, spk, emo, logmel, seed=0, encoder="synthetic", corpus="mixed",
                      split_name="test", k_sweep_max=5)
    assert res["k"] is None and res["k_rule"] == "the speaker's number of emotions"
    assert res["k_counts"] == {"2": 2, "4": 4}
    by_name = {r["speaker"]: r for r in res["per_speaker"]}
    assert [by_name[f"spk{s}"]["k"] for s in range(6)] == [2, 2, 4, 4, 4, 4]
    # Well-separated blobs: with the right k every speaker's clusters are its emotions. With the
    # union's k = 4, the 2-emotion speakers would split an emotion and score below 1.
    assert all(r["cluster_accuracy"] == 1.0 for r in res["per_speaker"])
    assert "per speaker: 2 (2 speakers), 4 (4 speakers)" in report._markdown(res).replace(
        "the speaker's number of emotions", "per speaker")
    given = run.run_study(x, spk, emo, logmel, k=3, seed=0, encoder="synthetic", corpus="mixed",
                        split_name="test", k_sweep_max=5)
    assert given["k"] == 3 and given["k_rule"] == "given" and given["k_counts"] == {"3": 6}
    assert {r["k"] for r in given["per_speaker"]} == {3}


def test_pair_quality_by_k_rule(study):
    """Each k rule's pair table scored against emotion: at the true k (4 blobs = 4 emotions) every
    positive shares its anchor's emotion and every negative has another; k = 2 must merge
    emotions, so some positives do not; over-clustering (size 4) keeps positives pure but puts
    same-emotion utterances among the negatives."""
    res, _ = study
    q = res["pair_quality"]
    assert set(q) == {"silhouette", "size 4", "size 8", "k 2", "k 4", "k 8"}
    assert q["k 4"]["positive_same_emotion"] == 1.0 and q["k 4"]["negative_other_emotion"] == 1.0
    assert q["k 2"]["positive_same_emotion"] < 0.9
    assert q["size 4"]["positive_same_emotion"] == 1.0 and q["size 4"]["negative_other_emotion"] < 1.0
    for v in q.values():
        assert 0.2 < v["chance_positive_same_emotion"] < 0.3  # 4 emotions of ~equal size
    assert "## Pair tables by k rule" in report._markdown(res)
