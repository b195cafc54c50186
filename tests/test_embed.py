"""`emosup.convert speechbrain` + `emosup.embed`: each embedding equals SpeechBrain's own
pipeline (Fbank(n_mels=80) → sentence InputNormalization → ECAPA_TDNN) on that utterance."""
import subprocess
import sys

import numpy as np
import soundfile as sf
import torch
from helpers import REPO
from speechbrain.lobes.features import Fbank
from speechbrain.processing.features import InputNormalization
from test_ecapa import TINY, make_speechbrain_dir

from emosup import checkpoint
from emosup.models.encoders import Encoder, embed_paths


def _sb_embed(sb, wav):
    """What EncoderClassifier.encode_batch computes for one unpadded utterance."""
    with torch.no_grad():
        x = torch.from_numpy(wav[None])
        feats = Fbank(n_mels=80)(x)
        feats = InputNormalization(norm_type="sentence", std_norm=False).eval()(feats, torch.ones(1))
        return sb(feats, torch.ones(1))[0, 0].numpy()


def _write_corpus(tmp_path, lengths, sr=16000):
    rng = np.random.default_rng(0)
    rows = ["path,speaker,emotion,split"]
    wavs = []
    for i, n in enumerate(lengths):
        t = np.arange(n) / sr
        w = (0.2 * np.sin(2 * np.pi * (120 + 20 * i) * t * (1 + 0.1 * np.sin(3 * t)))
             + 0.02 * rng.normal(size=n)).astype(np.float32)
        sf.write(tmp_path / f"u{i}.wav", w, sr, subtype="FLOAT")
        wavs.append(w)
        rows.append(f"u{i}.wav,s{i % 2},neutral,test")
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    return tmp_path / "m.csv", wavs


def test_convert_cli_and_embed_cli_equal_speechbrain(tmp_path):
    (tmp_path / "sb").mkdir()
    sb, src = make_speechbrain_dir(tmp_path / "sb", {**TINY, "input_size": 80}, seed=3)
    out = tmp_path / "converted"
    subprocess.run([sys.executable, "-m", "emosup.convert", "speechbrain", str(src), str(out)],
                   check=True, cwd=REPO, capture_output=True, timeout=300)
    assert (out / "model.json").is_file() and (out / "variables").is_dir()

    lengths = [16000, 23456, 9000, 16000 + 37, 41000, 12345, 7000, 30000, 15999, 20000]
    csv, wavs = _write_corpus(tmp_path, lengths)
    npz = tmp_path / "emb.npz"
    subprocess.run([sys.executable, "-m", "emosup.embed", f"--checkpoint={out}", f"--manifest={csv}",
                    f"--out={npz}", "--batch_per_device=1"], check=True, cwd=REPO, capture_output=True,
                   timeout=300)
    got = np.load(npz)
    assert list(got["ids"]) == [f"u{i}.wav" for i in range(len(lengths))]  # manifest order
    assert got["embeddings"].shape == (len(lengths), TINY["lin_neurons"])
    worst = 0.0
    for i, w in enumerate(wavs):
        ref = _sb_embed(sb, w)
        rel = np.linalg.norm(got["embeddings"][i] - ref) / np.linalg.norm(ref)
        worst = max(worst, rel)
    print(f"embed vs SpeechBrain per utterance: max relative error {worst:.2e}")
    assert worst <= 2e-5  # measured on CPU 1.1e-6 (Fbank, normalisation and ECAPA together)


def test_embeddings_do_not_depend_on_batching(tmp_path):
    sb, src = make_speechbrain_dir(tmp_path, {**TINY, "input_size": 80}, seed=4)
    from emosup.convert.speechbrain_ecapa import load_speechbrain_ecapa

    cfg, variables = load_speechbrain_ecapa(src)
    checkpoint.export_encoder(tmp_path / "enc", cfg, variables)
    csv, _ = _write_corpus(tmp_path, [16000, 8000, 24000, 11111, 5000, 30000, 19000, 7000])
    enc = Encoder(tmp_path / "enc")
    paths = [str(tmp_path / f"u{i}.wav") for i in range(8)]
    a, stats_a, va = embed_paths(enc, paths, batch_per_device=1, bucket_seconds=0.5)
    b, stats_b, vb = embed_paths(enc, paths, batch_per_device=2, bucket_seconds=2.0)
    assert va.all() and vb.all()
    np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6)
    np.testing.assert_allclose(stats_a, stats_b, rtol=1e-4, atol=1e-4)


def test_unreadable_file_is_skipped_and_counted(tmp_path):
    sb, src = make_speechbrain_dir(tmp_path, {**TINY, "input_size": 80}, seed=5)
    from emosup.convert.speechbrain_ecapa import load_speechbrain_ecapa

    cfg, variables = load_speechbrain_ecapa(src)
    checkpoint.export_encoder(tmp_path / "enc", cfg, variables)
    _write_corpus(tmp_path, [16000, 8000])
    (tmp_path / "bad.wav").write_bytes(b"garbage")
    sf.write(tmp_path / "silent.wav", np.zeros(8000, np.float32), 16000)
    from emosup.data.pipeline import SkipLog

    log = SkipLog()
    paths = [str(tmp_path / p) for p in ("u0.wav", "bad.wav", "silent.wav", "u1.wav")]
    emb, _, valid = embed_paths(Encoder(tmp_path / "enc"), paths, skip_log=log)
    assert valid.tolist() == [True, False, False, True]
    assert np.isnan(emb[1]).all() and np.isfinite(emb[0]).all()
    assert set(log.as_dict()) == {paths[1], paths[2]}
    assert "silent" in log.as_dict()[paths[2]]
