"""emosup.bench's wav2vec2 and tf.data pipeline groups build well-formed rows (tiny sizes;
no assertion is about speed: only the row structure and its internal consistency)."""
import pytest

from emosup.bench import pipeline, w2v2


def test_bench_wav2vec2_rows(monkeypatch):
    monkeypatch.setattr(w2v2, "W2V2_ROWS", (("tiny", w2v2.W2V2_TINY, 1, 0.5, 2),))
    rows = w2v2.bench_wav2vec2()
    assert [r["name"] for r in rows] == ["wav2vec2 forward [tiny] B=1 0.5s",
                                         "wav2vec2 forward+backward [tiny] B=1 0.5s"]  # no bf16 on CPU
    for r in rows:
        assert r["reference"].startswith("HF Wav2Vec2Model ") and r["reference"].endswith("(PyTorch, cpu)")
        assert r["repeats"] == 2 and r["compile_s"] > 0
        assert 0 < r["emosup_spread_s"][0] <= r["emosup_s"] <= r["emosup_spread_s"][1]
        assert 0 < r["reference_spread_s"][0] <= r["reference_s"] <= r["reference_spread_s"][1]
        assert r["ratio"] == pytest.approx(r["reference_s"] / r["emosup_s"])
        assert r["ratio_best"] == pytest.approx(r["reference_spread_s"][0] / r["emosup_spread_s"][0])
        assert r["ratio_quartiles"][0] <= r["ratio_quartiles"][1]
        assert "mfu" not in r
    assert "target" not in rows[0]
    assert rows[1]["target"].startswith(">= 1.2x HF Wav2Vec2Model")
    assert rows[1]["meets_target"] == (rows[1]["ratio"] >= 1.2)


def test_bench_pipeline_rows(monkeypatch):
    # The train step is emosup.train's (tested with the trainer); compiling it here would take
    # most of a minute, so a stand-in checks what it is given and reports fixed times.
    seen = []

    def fake_step_times(objective, preset, batch, n_spk, repeats):
        seen.append((objective, preset, {k: v.shape for k, v in batch.items()}, n_spk))
        return [0.5, 0.7, 0.6][:repeats], 1.0

    monkeypatch.setattr(pipeline, "_train_step_times", fake_step_times)
    # 40 files, 4 speakers: enough utterances per speaker for a k=2 pair table.
    rows = pipeline.bench_pipeline(["tiny", "c512"], quick=True, n_files=40, n_speakers=4,
                                sizes={"speaker": (0.5, 16), "contrastive": (0.25, 8)})
    assert seen == [
        ("speaker", p, {"audio": (16, 8000), "lengths": (16,), "labels": (16,), "weights": (16,)}, 4)
        for p in ("tiny", "c512")] + [
        ("contrastive", p, {"audio": (8, 4, 4000), "lengths": (8, 4), "labels": (8,), "weights": (8,)}, 4)
        for p in ("tiny", "c512")]
    assert [r["name"] for r in rows] == [
        "tf.data crop_batches [speaker step, tiny] B=16 0.5s",
        "tf.data crop_batches [speaker step, c512] B=16 0.5s",
        "tf.data pair_batches K=2 [contrastive step, tiny] B=8 0.25s",
        "tf.data pair_batches K=2 [contrastive step, c512] B=8 0.25s"]
    for r, batch, crops in zip(rows, (16, 16, 8, 8), (1, 1, 4, 4)):
        assert r["crops_per_row"] == crops  # a pair row: anchor + positive + 2 negatives
        assert r["reference_s"] == 0.6 and r["step_spread_s"] == [0.5, 0.7]  # median, min-max
        assert r["pipeline_rows_per_s"] == pytest.approx(batch / r["emosup_s"])
        assert r["step_rows_per_s"] == pytest.approx(batch / 0.6)
        # ratio (printed as reference / emosup) is the pipeline's rate over the step's
        assert r["ratio"] == pytest.approx(r["pipeline_rows_per_s"] / r["step_rows_per_s"])
        assert r["meets_target"] == (r["ratio"] >= 3.0)
        assert 0 < r["pipeline_spread_s"][0] <= r["emosup_s"] <= r["pipeline_spread_s"][1]
        assert r["compile_s"] == 1.0
