"""`emosup.embed` on a converted wav2vec2: each embedding equals HF's own pipeline on that
utterance alone (Wav2Vec2FeatureExtractor → Wav2Vec2Model → hidden_states[L] averaged over
frames), although emosup pads and batches the utterances.

Reference models are tiny random HF models (test_wav2vec2.py) with a saved feature extractor
(see FAMILIES).
"""
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
import torch
import transformers
from helpers import REPO
from test_wav2vec2 import LAYER, make_hf

from emosup import checkpoint
from emosup.convert.hf_wav2vec2 import load_hf_wav2vec2
from emosup.data.pipeline import SkipLog
from emosup.models.encoders import Encoder, embed_paths

# The layer family's front end is large-lv60's; the group family's skips the normalisation
# (wav2vec2-base normalises too) so that both settings are tested. The base family's conv-0
# GroupNorm removes the input's scale and offset up to its eps, so do_normalize matters
# little there (a wrong setting measured 2.7e-4 here), and much for the layer family.
FAMILIES = {"group/post-LN": ({}, dict(do_normalize=False, return_attention_mask=False)),
            "layer/stable-LN": (LAYER, dict(do_normalize=True, return_attention_mask=True))}
# Samples per file; 50 is below the tiny conv stack's 60-sample receptive field (no frame).
LENGTHS = (3000, 1234, 7999, 50, 2000, 4321, 777)
SHORT = LENGTHS.index(50)
# Bounds on the relative error against HF's own pipeline: 10x what was measured on CPU, rounded
# up (the worst layer and the worst single row).
TOL = {"group/post-LN": 2e-5,    # measured 1.9e-6 (last layer, worst row)
       "layer/stable-LN": 1e-5}  # measured 6.9e-7


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """(manifest path, wav paths, waveforms) of speech-like float WAVs at 16 kHz."""
    d = tmp_path_factory.mktemp("wavs")
    rng = np.random.default_rng(0)
    rows, paths, wavs = ["path,speaker,emotion,split"], [], []
    for i, n in enumerate(LENGTHS):
        t = np.arange(n) / 16000
        # an offset and a scale far from (0, 1), so a missing normalisation shows
        w = 0.3 + 0.2 * np.sin(2 * np.pi * (130 + 25 * i) * t) + 0.05 * rng.normal(size=n)
        w = w.astype(np.float32)
        sf.write(d / f"u{i}.wav", w, 16000, subtype="FLOAT")
        paths.append(str(d / f"u{i}.wav"))
        wavs.append(w)
        rows.append(f"u{i}.wav,s{i % 2},neutral,test")
    (d / "m.csv").write_text("\n".join(rows) + "\n")
    return d / "m.csv", paths, wavs


@pytest.fixture(scope="module")
def encoders(tmp_path_factory):
    """family -> (HF model, HF feature extractor, converted emosup folder)."""
    out = {}
    for i, (family, (overrides, features)) in enumerate(FAMILIES.items()):
        hf_dir, enc_dir = tmp_path_factory.mktemp("hf"), tmp_path_factory.mktemp("enc") / "out"
        hf = make_hf(seed=30 + i, **overrides)
        extractor = transformers.Wav2Vec2FeatureExtractor(**features)
        hf.save_pretrained(hf_dir)
        extractor.save_pretrained(hf_dir)
        model_config, variables = load_hf_wav2vec2(hf_dir)
        assert model_config["features"] == {**features, "sampling_rate": 16000}
        checkpoint.export_encoder(enc_dir, model_config, variables)
        out[family] = (hf, extractor, enc_dir)
    return out


def hf_embeddings(hf, extractor, wavs, layer):
    """HF on each utterance alone: feature extractor, model, mean of hidden_states[layer]."""
    rows = []
    for w in wavs:
        inputs = extractor(w, sampling_rate=16000, return_tensors="pt")
        with torch.no_grad():
            states = hf(**inputs, output_hidden_states=True).hidden_states
        rows.append(states[layer][0].mean(0).numpy())
    return np.stack(rows)


def rel_err(ours, ref):
    return float(np.max(np.abs(ours - ref)) / np.max(np.abs(ref)))


@pytest.mark.parametrize("family", list(FAMILIES))
def test_embeddings_equal_hf_per_utterance_for_every_layer(encoders, corpus, family):
    hf, extractor, enc_dir = encoders[family]
    _, paths, wavs = corpus
    keep = [i for i in range(len(LENGTHS)) if i != SHORT]
    errors = {}
    for layer in (0, 1, None):  # None: the default, -1
        enc = Encoder(enc_dir, layer=layer)
        assert enc.dim == 32 and enc.layer == (-1 if layer is None else layer)
        log = SkipLog()
        # 8 devices x 1 row: one batch, every utterance zero-padded to 0.5 s.
        emb, stats, valid = embed_paths(enc, paths, batch_per_device=1, bucket_seconds=0.5,
                                        skip_log=log, progress=False)
        assert valid.tolist() == [i != SHORT for i in range(len(LENGTHS))]
        assert np.isnan(emb[SHORT]).all() and stats.shape == (len(LENGTHS), 160)
        assert list(log.as_dict()) == [paths[SHORT]]
        assert ("50 samples: shorter than the encoder's receptive field of 60 samples"
                in log.as_dict()[paths[SHORT]])
        ref = hf_embeddings(hf, extractor, [wavs[i] for i in keep], -1 if layer is None else layer)
        errors[layer] = rel_err(emb[keep], ref)
        # Each row on its own scale too (a short utterance's error is not hidden by a long one).
        errors[f"{layer} worst row"] = max(rel_err(emb[i], r) for i, r in zip(keep, ref))
    print(f"{family}: {errors}")
    assert max(errors.values()) <= TOL[family], errors


def test_embed_cli_and_batching(encoders, corpus, tmp_path):
    hf, extractor, enc_dir = encoders["group/post-LN"]
    csv, paths, wavs = corpus
    npz = tmp_path / "emb.npz"
    subprocess.run([sys.executable, "-m", "emosup.embed", f"--checkpoint={enc_dir}", f"--manifest={csv}",
                    f"--out={npz}", "--layer=1", "--batch_per_device=1", "--bucket_seconds=0.1"],
                   check=True, cwd=REPO, capture_output=True, timeout=300)
    got = np.load(npz)
    assert list(got["ids"]) == [f"u{i}.wav" for i in range(len(LENGTHS))]  # manifest order
    assert got["valid"].tolist() == [i != SHORT for i in range(len(LENGTHS))]
    assert list(got["skipped"]) == [paths[SHORT]]
    keep = [i for i in range(len(LENGTHS)) if i != SHORT]
    ref = hf_embeddings(hf, extractor, [wavs[i] for i in keep], 1)
    err = rel_err(got["embeddings"][keep], ref)
    print(f"embed CLI --layer=1 vs HF per utterance: max relative error {err:.2e}")
    assert err <= 1e-5  # measured 9.1e-7


def test_layer_is_checked(encoders):
    with pytest.raises(ValueError, match=r"layer=3 is out of range: this wav2vec2 has 3 hidden states"):
        Encoder(encoders["group/post-LN"][2], layer=3)
    with pytest.raises(ValueError, match=r"layer=-4 is out of range"):
        Encoder(encoders["group/post-LN"][2], layer=-4)
    assert Encoder(encoders["group/post-LN"][2], layer=-3).layer == -3
    with pytest.raises(ValueError, match=r"layer=0 applies to wav2vec2 encoders only, not encoder='ecapa'"):
        Encoder(model_config={"encoder": "ecapa"}, variables={}, layer=0)
