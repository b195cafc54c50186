"""emosup.bench pieces that do not need timing: XLA FLOP counting, MFU and the row structure
of the ECAPA and Fbank groups (tiny sizes; no assertion is about speed)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from emosup.bench import common, ecapa, embed, fbank, reference


def _compiled_matmul(m, k, n, dtype=jnp.float32):
    a = jnp.ones((m, k), dtype)
    b = jnp.ones((k, n), dtype)
    return jax.jit(lambda a, b: a @ b).lower(a, b).compile()


@pytest.mark.parametrize("m,k,n", [(64, 32, 16), (7, 300, 5)])
def test_compiled_flops_of_a_matmul_is_2mnk(m, k, n):
    assert common.compiled_flops(_compiled_matmul(m, k, n)) == 2 * m * n * k


def test_mfu_uses_the_device_peak_table():
    compiled = _compiled_matmul(128, 64, 32)
    flops = 2 * 128 * 64 * 32
    assert common.mfu(compiled, 1e-3, device_kind="NVIDIA H100 80GB HBM3") == pytest.approx(
        flops / 1e-3 / 989e12)
    assert common.mfu(compiled, 1e-3, device_kind="NVIDIA H100 PCIe") == pytest.approx(
        flops / 1e-3 / 756e12)
    assert common.mfu(compiled, 2e-3, device_kind="NVIDIA H200") == pytest.approx(
        flops / 2e-3 / 989e12)
    assert common.mfu(compiled, 1e-3, device_kind="NVIDIA A100-SXM4-80GB") == pytest.approx(
        flops / 1e-3 / 312e12)
    # Unknown devices (this CPU included) and unusable timings give no MFU.
    assert common.mfu(compiled, 1e-3, device_kind="NVIDIA GeForce GTX 1080") is None
    assert common.mfu(compiled, 1e-3) is None  # jax.devices()[0] is a CPU here
    assert common.mfu(compiled, 0.0, device_kind="NVIDIA H100 80GB HBM3") is None


def test_compiled_flops_without_a_cost_analysis_is_none():
    class NoCost:
        def cost_analysis(self):
            raise NotImplementedError

    class Empty:
        def cost_analysis(self):
            return [{}]

    class Listed:  # older jax returned one dict per executable
        def cost_analysis(self):
            return [{"flops": 12.0}]

    assert common.compiled_flops(NoCost()) is None
    assert common.compiled_flops(Empty()) is None
    assert common.compiled_flops(Listed()) == 12.0
    assert common.mfu(NoCost(), 1.0, device_kind="NVIDIA H100 80GB HBM3") is None


def _check_paired(row, reference):
    """The shape of a row timed for real (its numbers are the machine's: the arithmetic on
    them is checked on hand-made times in test_ratio_and_target_from_hand_computed_times)."""
    assert row["reference"].startswith(reference)
    assert row["repeats"] == 2
    assert 0 < row["emosup_spread_s"][0] <= row["emosup_s"] <= row["emosup_spread_s"][1]
    assert 0 < row["reference_spread_s"][0] <= row["reference_s"] <= row["reference_spread_s"][1]
    assert row["ratio"] > 0 and row["ratio_quartiles"][0] <= row["ratio_quartiles"][1]


def test_ratio_and_target_from_hand_computed_times(capsys):
    # Three rounds: emosup 10, 12, 8 ms; reference 25, 24, 30 ms.
    row = common.paired_row("r", [0.010, 0.012, 0.008], [0.025, 0.024, 0.030], reference="ref")
    assert row["emosup_s"] == 0.010 and row["reference_s"] == 0.025  # medians
    assert row["emosup_spread_s"] == [0.008, 0.012] and row["reference_spread_s"] == [0.024, 0.030]
    # Per-round ratios 25/10 = 2.5, 24/12 = 2.0, 30/8 = 3.75; the quartiles of three values
    # (statistics.quantiles, exclusive) are the lowest and the highest.
    assert row["ratio_quartiles"] == pytest.approx([2.0, 3.75])
    assert row["ratio_best"] == pytest.approx(3.0)  # fastest reference 24 / fastest emosup 8
    common.set_target(row, 3.0, "ref")
    assert row["target"] == ">= 3x ref" and row["meets_target"] is False  # 2.5x < 3x
    common.print_row(row)
    common.print_spread(row)
    assert row["ratio"] == pytest.approx(2.5)  # 25 ms / 10 ms: > 1 means emosup is faster
    out = capsys.readouterr().out
    assert " 2.50x" in out and "per-round ratio quartiles 2.00-3.75x, best-of ratio 3.00x" in out
    assert "target >= 3x ref: NOT MET" in out
    common.set_target(row, 2.0, "ref")
    assert row["target"] == ">= 2x ref" and row["meets_target"] is True
    common.set_target(row, 2.5, "ref")  # exactly at the target: met
    assert row["meets_target"] is True
    slower = common.paired_row("r", [0.025], [0.010], reference="ref")  # emosup slower
    common.set_target(slower, 1.5, "ref")
    common.print_row(slower)
    assert slower["ratio"] == pytest.approx(0.4) and slower["meets_target"] is False
    assert slower["ratio_quartiles"] == pytest.approx([0.4, 0.4])  # one round


def test_fbank_and_ecapa_rows_take_their_targets_from_the_times(monkeypatch):
    """The groups' rows on hand-made times (no timing is run): Fbank's target is 3x
    SpeechBrain's Fbank, librosa's row has none; ECAPA's is 1.5x for c512 and c1024 only."""
    planned = iter([
        {"jax": [0.010, 0.010], "sb": [0.025, 0.025], "librosa": [0.050, 0.050]},  # fbank 2.5x
        {"jax": [0.010, 0.010], "sb": [0.040, 0.040], "librosa": [0.005, 0.005]},  # fbank 4x
        {"jax": [0.010, 0.010], "torch": [0.030, 0.030]},  # ECAPA tiny 3x, no target
        {"jax": [0.010, 0.010], "torch": [0.014, 0.014]},  # c512 1.4x < 1.5x
        {"jax": [0.010, 0.010], "torch": [0.016, 0.016]},  # c1024 1.6x >= 1.5x
    ])

    def times(fns, repeats):
        t = next(planned)
        assert set(t) == set(fns)  # every function the group times gets its planned times
        return t

    monkeypatch.setattr(common, "interleaved_times", times)
    sb_fbank, librosa = fbank.bench_fbank(batch=1, seconds=0.1, repeats=2)
    assert sb_fbank["ratio"] == pytest.approx(2.5) and sb_fbank["meets_target"] is False
    assert sb_fbank["target"].startswith(">= 3x SpeechBrain Fbank")
    assert librosa["ratio"] == pytest.approx(5.0) and "target" not in librosa
    sb_fbank, _ = fbank.bench_fbank(batch=1, seconds=0.1, repeats=2)
    assert sb_fbank["ratio"] == pytest.approx(4.0) and sb_fbank["meets_target"] is True

    # The train steps themselves are not built: only the rows' arithmetic is under test.
    monkeypatch.setattr(ecapa, "_jax_ecapa_step", lambda *a, **k: (lambda: None, 1.0, None))
    monkeypatch.setattr(ecapa, "_torch_ecapa_step", lambda *a, **k: (lambda: None))
    tiny, c512, c1024 = ecapa.bench_ecapa(["tiny", "c512", "c1024"], batch=8, seconds=0.1, repeats=2)
    assert tiny["ratio"] == pytest.approx(3.0) and "target" not in tiny
    assert c512["ratio"] == pytest.approx(1.4) and c512["meets_target"] is False
    assert c1024["ratio"] == pytest.approx(1.6) and c1024["meets_target"] is True
    assert c512["target"] == c1024["target"]
    assert c512["target"].startswith(">= 1.5x SpeechBrain ECAPA_TDNN")
    assert next(planned, None) is None  # each row asked for its times once


def test_a_pair_names_the_devices_of_each_side(monkeypatch):
    monkeypatch.setattr(common.os, "cpu_count", lambda: 2)
    assert common.devices_of_pair("cpu") == "each side: all 2 CPU cores"
    monkeypatch.setattr(common.jax, "default_backend", lambda: "gpu")
    assert common.devices_of_pair("cuda") == "each side: one gpu device"
    assert common.devices_of_pair("cpu") == ("emosup: one gpu device; the reference: all 2 CPU cores "
                                             "(it has no gpu path here)")


def test_bench_fbank_rows(one_torch_thread):
    rows = fbank.bench_fbank(batch=2, seconds=0.5, repeats=2)
    assert [r["reference"].split(" ")[0] for r in rows] == ["SpeechBrain", "librosa"]
    assert all(r["name"] == "Fbank 80 mels B=2 0.5s" for r in rows)
    for r, ref in zip(rows, ("SpeechBrain Fbank", "librosa")):
        _check_paired(r, ref)
    assert rows[0]["target"].startswith(">= 3x SpeechBrain Fbank")
    assert isinstance(rows[0]["meets_target"], bool)
    assert "target" not in rows[1]


@pytest.fixture
def one_torch_thread(monkeypatch):
    """PyTorch on one thread (bench uses os.cpu_count()): on a loaded test machine its
    multi-threaded CPU kernels can take seconds per call; restored afterwards."""
    import torch

    before = torch.get_num_threads()
    monkeypatch.setattr(common.os, "cpu_count", lambda: 1)
    yield
    torch.set_num_threads(before)


def test_bench_ecapa_row_has_target_for_c512_and_c1024_only(one_torch_thread, monkeypatch):
    real, built = ecapa._jax_ecapa_step, []
    monkeypatch.setattr(ecapa, "_jax_ecapa_step", lambda *a, **kw: built.append(real(*a, **kw)) or built[-1])
    rows = ecapa.bench_ecapa(["tiny"], batch=8, seconds=0.25, repeats=2)
    (row,) = rows
    # conftest gives 8 CPU devices; the emosup step of the pair runs on one, as PyTorch's does
    compiled = built[0][2]
    used = {d for s in jax.tree.leaves(compiled.input_shardings) for d in s.device_set}
    assert jax.device_count() == 8 and len(used) == 1
    assert row["devices"] == "each side: all 1 CPU cores"  # one_torch_thread: cpu_count() = 1
    assert row["name"] == "ECAPA train step [tiny] B=8 0.25s"
    _check_paired(row, "SpeechBrain ECAPA_TDNN (PyTorch, cpu)")
    assert row["compile_s"] > 0
    assert "target" not in row and "mfu" not in row  # tiny has no target; no GPU here
    assert set(ecapa.ECAPA_TARGETS) == {"c512", "c1024"}


def test_bfloat16_ecapa_step_runs_and_counts_flops():
    """The GPU-only bf16 row's pieces, on CPU: the step compiles with EcapaTdnn
    dtype=bfloat16, its loss is finite and XLA counts its FLOPs, so the row's MFU is defined
    wherever the device's peak is known."""
    b, n = 8, 4000
    wavs = common.speechlike(b, n)
    labels = np.arange(b, dtype=np.int32) % 4
    run, compile_s, compiled = ecapa._jax_ecapa_step("tiny", wavs, labels, 4, jnp.bfloat16)
    assert compile_s > 0
    metrics = run()
    assert np.isfinite(float(metrics["loss"])) and float(metrics["loss"]) > 0
    flops = common.compiled_flops(compiled)
    assert flops is not None and flops > 1e7  # per device: the batch is sharded over 8
    assert common.mfu(compiled, 1.0, device_kind="NVIDIA H100 80GB HBM3") == pytest.approx(
        flops / 989e12)
    text = compiled.as_text()
    assert "bf16" in text  # the convolutions really run in bfloat16


def test_the_command_writes_its_rows_and_a_profile_per_group(tmp_path):
    import json
    import subprocess
    import sys

    from helpers import REPO

    out, prof = tmp_path / "bench.json", tmp_path / "prof"
    p = subprocess.run([sys.executable, "-m", "emosup.bench", "--only=fbank", "--quick", f"--out={out}",
                        f"--profile_dir={prof}"], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    assert [r["reference"].split(" ")[0] for r in rows] == ["SpeechBrain", "librosa"]
    assert "rows meet their target" in p.stdout and f"profile of fbank: {prof / 'fbank'}" in p.stdout
    assert list((prof / "fbank").glob("plugins/profile/*/*.xplane.pb"))  # a jax.profiler trace
    with pytest.raises(subprocess.CalledProcessError):
        subprocess.run([sys.executable, "-m", "emosup.bench", "--only=nope"], cwd=REPO, capture_output=True,
                       check=True, timeout=120)


def test_bench_embed_row(one_torch_thread, tmp_path):
    """The embedding row on the tiny preset: both sides embed the files (the reference puts each
    embedding back in file order), the row is paired and has the 2x target."""
    import torch

    paths = common.write_wavs(str(tmp_path), 3, lo=0.5, hi=1.5)
    torch.manual_seed(0)
    clf = reference.encoder_classifier(channels=[32, 32, 32, 32, 96], lin_neurons=16)
    batched = embed._speechbrain_embed(paths, clf, batch=1)
    import soundfile as sf

    for p, e in zip(paths, batched):
        with torch.no_grad():
            one = clf.encode_batch(torch.from_numpy(sf.read(p, dtype="float32")[0])[None]).reshape(-1).numpy()
        np.testing.assert_array_equal(e, one)
    (row,) = embed.bench_embed("tiny", n_files=3, batch=1, repeats=2)
    assert row["name"] == "embed tiny, 3 files of 1-8 s" and row["files"] == 3
    _check_paired(row, "SpeechBrain encode_batch (torch")
    assert row["target"] == ">= 2x SpeechBrain" and isinstance(row["meets_target"], bool)
