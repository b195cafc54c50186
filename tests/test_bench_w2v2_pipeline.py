"""emosup.bench's wav2vec2 and tf.data pipeline groups build well-formed rows (tiny sizes;
no assertion is about speed: only the row structure and its internal consistency)."""
import time

import numpy as np
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


def _resident_pages(path):
    """Pages of `path` in the page cache now (Linux mincore on a private mapping that is
    never touched, so looking does not read the file in)."""
    import ctypes
    import mmap
    import os

    libc = ctypes.CDLL(None, use_errno=True)
    size = os.path.getsize(path)
    page = mmap.PAGESIZE
    with open(path, "rb") as f:
        m = mmap.mmap(f.fileno(), size, access=mmap.ACCESS_COPY)
        buf = ctypes.c_char.from_buffer(m)
        vec = (ctypes.c_ubyte * ((size + page - 1) // page))()
        rc = libc.mincore(ctypes.c_void_p(ctypes.addressof(buf)), ctypes.c_size_t(size), vec)
        del buf
        m.close()
    assert rc == 0, ctypes.get_errno()
    return sum(v & 1 for v in vec)


def test_cold_reads_drop_the_files_from_the_page_cache(tmp_path):
    from emosup.bench import common

    paths = common.write_wavs(str(tmp_path), 3, lo=2.0, hi=2.5)
    pipeline.sync_files(paths)
    for p in paths:
        with open(p, "rb") as f:
            f.read()
    assert all(_resident_pages(p) > 0 for p in paths)  # just read: cached
    cold = pipeline.ColdReads(paths, every=0.02)
    assert cold.mode == "cold"
    with cold:
        assert [_resident_pages(p) for p in paths] == [0, 0, 0]  # dropped on entry
        with open(paths[0], "rb") as f:
            f.read()
        deadline = time.monotonic() + 5.0  # the thread drops it again within a few periods
        while _resident_pages(paths[0]) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert _resident_pages(paths[0]) == 0
    for p in paths:
        with open(p, "rb") as f:
            f.read()
    time.sleep(0.1)
    assert all(_resident_pages(p) > 0 for p in paths)  # the thread stopped with the block


def test_bench_pipeline_rows(monkeypatch):
    # The train step is emosup.train's (tested with the trainer); compiling it here would take
    # most of a minute, so a stand-in records the batches it is given.
    seen, fed = [], []

    def fake_train_step(objective, preset, batch, n_spk):
        seen.append((objective, preset, {k: v.shape for k, v in batch.items()}, n_spk))

        def step(b):
            fed.append({k: v.shape for k, v in b.items()})
            time.sleep(0.002)
            return {"loss": np.float32(0.0)}

        return step, 1.0

    monkeypatch.setattr(pipeline, "_train_step", fake_train_step)
    # 40 files, 4 speakers: enough utterances per speaker for a k=2 pair table.
    rows = pipeline.bench_pipeline(["tiny", "c512"], quick=True, n_files=40, n_speakers=4,
                                   sizes={"speaker": (0.5, 16), "contrastive": (0.25, 8)})
    speaker = {"audio": (16, 8000), "lengths": (16,), "labels": (16,), "weights": (16,)}
    pairs = {"audio": (8, 4, 4000), "lengths": (8, 4), "labels": (8,), "weights": (8,)}
    assert seen == [("speaker", p, speaker, 4) for p in ("tiny", "c512")] + [
        ("contrastive", p, pairs, 4) for p in ("tiny", "c512")]
    # quick: 2 repeats of 4 steps in memory and 4 on the live pipeline, per preset
    assert fed == [speaker] * 32 + [pairs] * 32
    names = [r["name"] for r in rows]
    assert names == [
        "tf.data crop_batches [speaker step, tiny] B=16 0.5s",
        "training loop on tf.data [speaker step, tiny] B=16 0.5s",
        "tf.data crop_batches [speaker step, c512] B=16 0.5s",
        "training loop on tf.data [speaker step, c512] B=16 0.5s",
        "tf.data pair_batches K=2 [contrastive step, tiny] B=8 0.25s",
        "training loop on tf.data [contrastive step, tiny] B=8 0.25s",
        "tf.data pair_batches K=2 [contrastive step, c512] B=8 0.25s",
        "training loop on tf.data [contrastive step, c512] B=8 0.25s"]
    for r, loop_row, batch, crops in zip(rows[::2], rows[1::2], (16, 16, 8, 8), (1, 1, 4, 4)):
        assert r["crops_per_row"] == crops  # a pair row: anchor + positive + 2 negatives
        assert r["reads"] == loop_row["reads"] == "cold"
        assert r["internal"] and loop_row["internal"]  # emosup against itself: not in the count
        assert 0 < r["step_spread_s"][0] <= r["reference_s"] <= r["step_spread_s"][1]
        assert r["pipeline_rows_per_s"] == pytest.approx(batch / r["emosup_s"])
        assert r["step_rows_per_s"] == pytest.approx(batch / r["reference_s"])
        # ratio (printed as reference / emosup) is the pipeline's rate over the step's
        assert r["ratio"] == pytest.approx(r["pipeline_rows_per_s"] / r["step_rows_per_s"])
        assert r["meets_target"] == (r["ratio"] >= 3.0)
        assert 0 < r["pipeline_spread_s"][0] <= r["emosup_s"] <= r["pipeline_spread_s"][1]
        assert r["compile_s"] == 1.0
        # the loop row: the same in-memory step time, against the loop on the live pipeline
        assert loop_row["reference_s"] == r["reference_s"]
        assert 0 < loop_row["live_spread_s"][0] <= loop_row["emosup_s"] <= loop_row["live_spread_s"][1]
        assert loop_row["live_rows_per_s"] == pytest.approx(batch / loop_row["emosup_s"])
        assert 0 <= loop_row["idle_share"] <= 1 and 0 <= loop_row["blocked_share"] <= 1
        assert loop_row["ratio"] == pytest.approx(loop_row["reference_s"] / loop_row["emosup_s"])
        assert loop_row["meets_target"] == (loop_row["ratio"] >= 0.9)


def test_the_loop_counts_the_step_idle_only_while_data_is_late():
    # A stand-in step (a timer thread finishes it, as a device would) fed by batches that
    # arrive 80 ms apart after 30 ms steps (late: the step idles ~50 ms each time) or at once
    # to 200 ms steps (never idle: every step is dispatched before the first one ends).
    import threading

    class Result:
        def __init__(self, seconds):
            self.done = threading.Event()
            threading.Timer(seconds, self.done.set).start()

        def block_until_ready(self):
            self.done.wait()
            return self

    def late_batches():
        while True:
            time.sleep(0.08)
            yield {}

    def ready_batches():
        while True:
            yield {}

    wall, idle, blocked = pipeline._loop_time(lambda b: Result(0.03), late_batches(), 6)
    assert idle > 5 * 0.03 and blocked > 5 * 0.06  # 5 gaps of ~50 ms idle, ~80 ms blocked
    assert idle < blocked < wall
    wall, idle, blocked = pipeline._loop_time(lambda b: Result(0.2), ready_batches(), 6)
    assert idle == 0.0 and blocked < 0.1 and wall >= 0.2
