"""The real SpeechBrain VoxCeleb ECAPA-TDNN (speechbrain/spkrec-ecapa-voxceleb, fetched from a
PyPI wheel that redistributes it, digests checked; see helpers.voxceleb_ecapa_folder):
converted, it gives SpeechBrain's own embeddings on speech, and the main job runs from it
(`speaker_encoder=`, `arms_init=speaker_encoder`, the arm `pretrained`)."""
import json

import numpy as np
import pytest
import soundfile as sf
import torch
from helpers import DEMO, load_config, voxceleb_ecapa_folder

from emosup import checkpoint, experiment
from emosup.bench import reference
from emosup.convert import speechbrain_ecapa
from emosup.models.encoders import Encoder, embed_paths


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    src = voxceleb_ecapa_folder()
    out = tmp_path_factory.mktemp("vox") / "ecapa"
    model_config, variables = speechbrain_ecapa.load_speechbrain_ecapa(src)
    checkpoint.export_encoder(out, model_config, variables)
    return src, out


def _speechbrain_encoder_classifier(src):
    """SpeechBrain's EncoderClassifier around its own modules, with the checkpoint's weights
    (the modules the folder's hyperparams.yaml names, built here so no download is attempted)."""
    state = torch.load(src / "embedding_model.ckpt", map_location="cpu", weights_only=True)
    return reference.encoder_classifier(
        channels=[1024, 1024, 1024, 1024, 3072], kernel_sizes=[5, 3, 3, 3, 1], dilations=[1, 2, 3, 4, 1],
        attention_channels=128, lin_neurons=192, out_neurons=7205, state_dict=state)


def test_converted_voxceleb_ecapa_equals_speechbrain_on_speech(converted, synthetic_corpus_dir):
    src, out = converted
    wavs = sorted((synthetic_corpus_dir / "wav" / "test").rglob("*.wav"))[::8][:6]  # 1.5-2 s, 3 speakers
    clf = _speechbrain_encoder_classifier(src)
    ours, _, valid = embed_paths(Encoder(out), [str(w) for w in wavs], batch_per_device=1, progress=False)
    assert valid.all()
    worst = 0.0
    for w, e in zip(wavs, ours):
        x, sr = sf.read(w, dtype="float32")
        assert sr == 16000
        with torch.no_grad():
            ref = clf.encode_batch(torch.from_numpy(x)[None]).reshape(-1).numpy()
        worst = max(worst, float(np.abs(e - ref).max() / np.abs(ref).max()))
    # Measured 2.3e-6 to 4.7e-6 (relative to the largest component) on these files; bound 1e-5.
    assert worst <= 1e-5, worst


def test_experiment_from_the_voxceleb_encoder(converted, synthetic_corpus_dir, tmp_path):
    """speaker_encoder= that folder: no speaker training, the study and the pairs come from it,
    every pretraining arm starts from its weights (arms_init) and `pretrained` fine-tunes it."""
    _, out = converted
    cfg = load_config(DEMO, f"tiny=1,arms=scratch+contrastive+pretrained,seeds=1,speaker_encoder={out},"
                            f"arms_init=speaker_encoder,synthetic_dir={synthetic_corpus_dir}")
    experiment.run(cfg, tmp_path)
    assert not (tmp_path / "speaker").exists()
    study = json.loads((tmp_path / "study.json").read_text())
    assert study["encoder"] == "speechbrain:spkrec-ecapa-voxceleb"
    assert study["k_rule"] == "the speaker's number of emotions" and study["k"] == 4

    fingerprint = checkpoint.params_fingerprint(checkpoint.load_encoder_variables(out)[1]["params"])
    results = json.loads((tmp_path / "results.json").read_text())
    assert list(results["arms"]) == ["scratch", "contrastive", "pretrained"]
    starts = results["starts"]
    assert starts["contrastive"]["pretraining_from"]["params_fingerprint"] == fingerprint
    assert starts["contrastive"]["pretraining_from"]["channels"] == [1024, 1024, 1024, 1024, 3072]
    assert starts["pretrained"]["fine_tuning_from"]["params_fingerprint"] == fingerprint
    assert starts["scratch"]["fine_tuning_from"]["source"] == "scratch"
    # The contrastive arm fine-tuned what its pretraining made: other weights than the init's.
    assert starts["contrastive"]["fine_tuning_from"]["params_fingerprint"] != fingerprint
    pre = json.loads((tmp_path / "pretrain" / "contrastive" / "seed0" / "model.json").read_text())
    assert pre["ecapa"]["channels"] == [1024, 1024, 1024, 1024, 3072]
    # The unlabelled rows carry emotions in this corpus: the pair table's quality is reported.
    q = results["pair_quality"]["0"]
    for key in ("positive_same_emotion", "chance_positive_same_emotion", "negative_other_emotion"):
        assert 0.0 <= q[key] <= 1.0
    assert (tmp_path / "pretrain" / "contrastive" / "seed0" / "pairs.json").is_file()
