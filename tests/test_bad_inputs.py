"""Bad inputs stop with a clear error that names the input and the fix.

Each bad input goes through the entry point a user hits (audio loading and the training
pipeline's scan, the converter CLI, `encoders.Encoder`, `predict`, the wav2vec2 arms' init,
`pretrain.run` / `ser.run` / `experiment.run` and the configs' `get_config`), and each
test asserts the error type and a message naming the input (file, folder or config field
with its value) and what is expected instead. Grouped by input:

* audio files: a truncated WAV;
* HuggingFace wav2vec2 folders: a `sampling_rate` other than 16 kHz;
* emosup encoder folders: missing, without model.json, without or with broken variables;
* `predict` on a folder that was never fine-tuned;
* `config.w2v2.init`: an ECAPA folder, an unconverted HF folder, variables of another shape;
* utterances of 1-2 frames (10 ms hop): embedding and training skip them, naming the file;
* config fields: objective, refresh_every, crop_seconds, arms, folds, stage, root, ser.target
  and the typed `key=value` arguments.

None of these trains for more than two steps; most run no model at all (validation comes
before any work).
"""
import json
import re
import shutil
import struct
import subprocess
import sys

import numpy as np
import pytest
from helpers import DEMO, REPO, export_random_tiny_ecapa, load_config, write_wav

from emosup import audio, checkpoint, config_lib, experiment, predict
from emosup.data import pipeline
from emosup.models import encoders
from emosup.trainers import pretrain, ser_ecapa, ser_w2v2

CONFIGS = REPO / "configs"


def _e(path):
    return re.escape(str(path))


@pytest.fixture(scope="module")
def ecapa_dir(tmp_path_factory):
    """A random tiny ECAPA exported as `python -m emosup.convert` writes one."""
    return export_random_tiny_ecapa(tmp_path_factory.mktemp("ecapa") / "enc", 0)


@pytest.fixture(scope="module")
def w2v2_dirs(tmp_path_factory):
    """Two tiny random HF wav2vec2 models saved with `save_pretrained` and converted:
    hidden size 32 and 48 (config.w2v2.model of the tiny demo has 32)."""
    from test_wav2vec2 import make_hf

    from emosup.convert.__main__ import main as convert_main

    root = tmp_path_factory.mktemp("w2v2")
    out = {}
    for hidden in (32, 48):
        make_hf(seed=hidden, hidden_size=hidden).save_pretrained(root / f"hf{hidden}")
        assert convert_main(["wav2vec2", str(root / f"hf{hidden}"), str(root / f"w2v2_{hidden}")]) == 0
        out[hidden] = root / f"w2v2_{hidden}"
        out[f"hf{hidden}"] = root / f"hf{hidden}"
    return out


# --------------------------------------------------------------------------------------------
# Audio files: a truncated WAV
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("keep", [44, 1001, 8022])  # header only, a few samples, half of them
def test_truncated_wav_is_named_with_the_fix(tmp_path, keep):
    """libsndfile reads what is left of a WAV cut short (an interrupted copy or download) and
    would silently give a shorter clip; every loader refuses it, and the training pipeline's
    scan skips it with that reason."""
    full = write_wav(tmp_path / "full.wav", seconds=0.5)  # 8000 samples = 16000 bytes
    path = tmp_path / "cut.wav"
    path.write_bytes(full.read_bytes()[:keep])
    msg = (rf"^audio file '{_e(path)}': truncated \(its header declares 16000 bytes of samples, "
           rf"the file holds {keep - 44}\): copy or download it again, or leave it out")
    for load in (audio.load_audio, audio.audio_info, lambda p: audio.load_segment(p, 400, 0)):
        with pytest.raises(audio.AudioError, match=msg):
            load(path)
    lengths, log = pipeline.scan_utterances([str(full), str(path)])
    assert lengths.tolist() == [8000, 0]
    assert list(log.as_dict()) == [str(path)] and "truncated" in log.as_dict()[str(path)]


def test_streamed_wav_of_unknown_length_is_not_called_truncated(tmp_path):
    """A WAV written to a pipe declares 0xFFFFFFFF bytes: that is not a truncation."""
    x = 0.1 * np.random.default_rng(0).standard_normal(8000)
    full = write_wav(tmp_path / "full.wav", x)
    data = bytearray(full.read_bytes())
    data[4:8] = data[40:44] = struct.pack("<I", 0xFFFFFFFF)  # RIFF and data chunk sizes
    (tmp_path / "streamed.wav").write_bytes(bytes(data))
    np.testing.assert_array_equal(audio.load_audio(tmp_path / "streamed.wav"), audio.load_audio(full))


# --------------------------------------------------------------------------------------------
# HuggingFace wav2vec2 folders: sampling_rate other than 16 kHz
# --------------------------------------------------------------------------------------------


def test_hf_folder_at_another_sampling_rate_is_refused_by_the_converter(tmp_path, w2v2_dirs, capsys):
    """emosup resamples every file to 16 kHz: a model whose feature extractor says 8 kHz would
    be fed audio at twice its rate. Before, it converted without a word."""
    import transformers

    from emosup.convert.__main__ import main as convert_main
    from emosup.convert.hf_wav2vec2 import load_hf_wav2vec2
    from emosup.errors import ConversionError

    src = tmp_path / "hf8k"
    shutil.copytree(w2v2_dirs["hf32"], src)
    transformers.Wav2Vec2FeatureExtractor(sampling_rate=8000).save_pretrained(src)
    msg = (rf"{_e(src / 'preprocessor_config.json')}: sampling_rate=8000, but emosup feeds wav2vec2 "
           r"16000 Hz audio: convert a checkpoint trained on 16 kHz speech \(or, if this one was, set "
           r"sampling_rate to 16000 in that file\)")
    with pytest.raises(ConversionError, match=msg):
        load_hf_wav2vec2(src)
    assert convert_main(["wav2vec2", str(src), str(tmp_path / "out")]) == 2
    assert re.search(msg, capsys.readouterr().err)
    assert not (tmp_path / "out").exists()


def test_converted_folder_at_another_sampling_rate_is_refused_where_it_is_used(tmp_path, w2v2_dirs):
    """A folder converted before that check (model.json says 8000 Hz): embedding refused it
    already; the wav2vec2 arms used it silently at 16 kHz."""
    folder = tmp_path / "w2v2_8k"
    shutil.copytree(w2v2_dirs[32], folder)
    model_json = json.loads((folder / "model.json").read_text())
    model_json["features"]["sampling_rate"] = 8000
    (folder / "model.json").write_text(json.dumps(model_json))
    with pytest.raises(ValueError, match=rf"^{_e(folder / 'model.json')}: features.sampling_rate=8000, "
                                         r"but audio is read at 16000 Hz"):
        encoders.Encoder(folder)
    cfg = _w2v2_arm_config(init=str(folder))
    with pytest.raises(ValueError, match=rf"^config.w2v2.init={_e(folder)}: model.json says "
                                         r"features.sampling_rate=8000, but audio is read at 16000 Hz: "
                                         r"give a wav2vec2 converted from a checkpoint trained on 16 kHz "
                                         r"speech$"):
        ser_w2v2.validate(cfg)


# --------------------------------------------------------------------------------------------
# emosup encoder folders: missing, no model.json, no or broken variables
# --------------------------------------------------------------------------------------------


def _no_folder(d):
    return d / "nope"


def _no_model_json(d):
    (d / "model.json").unlink()
    return d


def _bad_json(d):
    (d / "model.json").write_text('{"encoder": "ecapa",\n  oops}')
    return d


def _json_list(d):
    (d / "model.json").write_text("[1, 2]")
    return d


def _no_variables(d):
    shutil.rmtree(d / "variables")
    return d


def _empty_variables(d):
    shutil.rmtree(d / "variables")
    (d / "variables").mkdir()
    return d


def _damaged_variables(d):  # a partial copy: Orbax's tree metadata missing
    (d / "variables" / "_METADATA").unlink()
    return d


def _empty_checkpoints(d):  # a training run killed before its first checkpoint
    shutil.rmtree(d / "variables")
    (d / "checkpoints").mkdir()
    return d


def _unknown_encoder(d):
    cfg = json.loads((d / "model.json").read_text())
    (d / "model.json").write_text(json.dumps({**cfg, "encoder": "hubert"}))
    return d


ENCODER_FOLDERS = {  # how the folder is broken -> (error type, message; {d} is the folder)
    _no_folder: (checkpoint.CheckpointError, r"^{d}/nope: no such folder \(expected an emosup training "
                                             r"workdir or a folder written by `python -m emosup.convert`\)"),
    _no_model_json: (checkpoint.CheckpointError, r"^{d} is not an emosup checkpoint: model.json is missing "
                                                 r"\(expected a training workdir or a folder written by "
                                                 r"`python -m emosup.convert`\)"),
    _bad_json: (checkpoint.CheckpointError, r"^{d}/model.json:2: invalid JSON \(.*\); export or convert "
                                            r"the encoder again into an empty folder"),
    _json_list: (checkpoint.CheckpointError, r"^{d}/model.json: expected a JSON object, got list; export "
                                             r"or convert the encoder again"),
    _no_variables: (checkpoint.CheckpointError, r"^{d} has model.json but neither variables/ nor "
                                                r"checkpoints/: a training run stopped before its first "
                                                r"checkpoint \(rerun its command\), or a copy that left them "
                                                r"out \(copy the whole folder\)"),
    _empty_variables: (checkpoint.CheckpointError, r"^{d}/variables: not a readable variables folder "
                                                   r"\(.*\); it is incomplete or damaged: write it again"),
    _damaged_variables: (checkpoint.CheckpointError, r"^{d}/variables: not a readable variables folder "
                                                     r"\(.*\); it is incomplete or damaged: write it again"),
    _empty_checkpoints: (checkpoint.CheckpointError, r"^{d}/checkpoints holds no finished checkpoint: the "
                                                     r"run stopped before its first one; rerun its command"),
    _unknown_encoder: (ValueError, r"^{d}/model.json: encoder='hubert' is not supported \(expected "
                                   r"'ecapa' or 'wav2vec2'"),
}


@pytest.mark.parametrize("breakage", list(ENCODER_FOLDERS), ids=lambda f: f.__name__[1:])
def test_broken_encoder_folder_is_named_with_the_fix(tmp_path, ecapa_dir, breakage):
    """`encoders.Encoder` (embed, study, verify, pair tables) and `checkpoint.load_encoder_variables`
    (fine-tuning's init=) on a folder that cannot hold an encoder. Before: a JSONDecodeError
    or Orbax's `TypeError: 'NoneType' object is not iterable` without the folder, or a
    message without the fix."""
    d = tmp_path / "enc"
    shutil.copytree(ecapa_dir, d)
    folder = breakage(d)
    error, msg = ENCODER_FOLDERS[breakage]
    with pytest.raises(error, match=msg.format(d=_e(d))):
        encoders.Encoder(folder)
    if breakage is not _unknown_encoder:  # the folder is fine as a checkpoint
        with pytest.raises(error, match=msg.format(d=_e(d))):
            checkpoint.load_encoder_variables(folder)


# --------------------------------------------------------------------------------------------
# predict on a folder that was never fine-tuned
# --------------------------------------------------------------------------------------------


def test_predict_on_an_encoder_that_was_never_fine_tuned(tmp_path, ecapa_dir):
    wav = write_wav(tmp_path / "a.wav")
    with pytest.raises(checkpoint.CheckpointError,
                       match=rf"^{_e(ecapa_dir)} holds no emotion head \(model.json has no 'ser'\): give a "
                             r"folder written by fine-tuning \(configs/finetune.py\), not a pretrained encoder"):
        predict.predict(ecapa_dir, [str(wav)])


def test_predict_on_an_unfinished_fine_tuning_workdir(tmp_path):
    """Fine-tuning writes model.json and variables/ when it ends; a workdir with checkpoints/
    only was said to be "not an emosup checkpoint ... expected a training workdir"."""
    workdir = tmp_path / "ft"
    (workdir / "checkpoints" / "3").mkdir(parents=True)
    with pytest.raises(checkpoint.CheckpointError,
                       match=rf"^{_e(workdir)} holds no finished fine-tuned model: it has checkpoints/ "
                             r"but no model.json, .*: rerun an unfinished fine-tuning command to finish "
                             r"it, then give its workdir"):
        predict.predict(workdir, [str(write_wav(tmp_path / "a.wav"))])


def test_predict_cli_prints_the_error_without_a_traceback(tmp_path, ecapa_dir):
    wav = write_wav(tmp_path / "a.wav")
    proc = subprocess.run([sys.executable, "-m", "emosup.predict", f"--checkpoint={ecapa_dir}", str(wav)],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert f"emosup.predict: error: {ecapa_dir} holds no emotion head" in proc.stderr
    assert "Traceback" not in proc.stderr


# --------------------------------------------------------------------------------------------
# config.w2v2.init: the wrong family, not converted, variables of another shape
# --------------------------------------------------------------------------------------------


def _w2v2_arm_config(**w2v2):
    """The fine-tuning config of a wav2vec2 arm, as the comparison builds it (tiny demo)."""
    c = load_config(DEMO, "tiny=1,seeds=1,arms=w2v2")
    c.unlock()
    c.w2v2.update(w2v2)
    c.lock()
    return config_lib.w2v2_stage(c, 0, "unused")


def _demo(arg="tiny=1,seeds=1", **fields):
    """The tiny demo config with `fields` ("a.b": value) set, as --config.a.b=value would."""
    c = load_config(DEMO, arg)
    c.unlock()
    for name, value in fields.items():
        *parents, leaf = name.split(".")
        node = c
        for p in parents:
            node = node[p]
        node[leaf] = value
    c.lock()
    return c


def test_w2v2_init_of_an_ecapa_folder(tmp_path, ecapa_dir):
    """Through the experiment (`--config.w2v2.init=DIR`): refused before any work, where it
    was refused only when the first wav2vec2 arm started (after every ECAPA arm)."""
    cfg = _demo("tiny=1,seeds=1,arms=all+w2v2s", **{"w2v2.init": str(ecapa_dir)})
    with pytest.raises(ValueError, match=rf"^config.w2v2.init={_e(ecapa_dir)}: model.json says "
                                         r"encoder='ecapa', expected a wav2vec2 folder: convert an HF "
                                         r"checkpoint with `python -m emosup.convert wav2vec2 SRC_DIR "
                                         r"OUT_DIR` and give OUT_DIR"):
        experiment.run(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_w2v2_init_of_an_unconverted_hf_folder(tmp_path, w2v2_dirs):
    hf = w2v2_dirs["hf32"]
    with pytest.raises(ValueError, match=rf"^config.w2v2.init={_e(hf)}: a HuggingFace folder, not yet "
                                         r"converted: convert an HF checkpoint with `python -m "
                                         r"emosup.convert wav2vec2"):
        ser_w2v2.run(_w2v2_arm_config(init=str(hf)), tmp_path / "ft", None, "w2v2")


def test_w2v2_init_whose_variables_have_another_shape(tmp_path, w2v2_dirs):
    """model.json of a hidden-32 model over the variables of a hidden-48 one. Before: a shape
    message only after the pair table was built (a KeyError when the layers differ)."""
    mixed = tmp_path / "mixed"
    shutil.copytree(w2v2_dirs[32], mixed)
    shutil.rmtree(mixed / "variables")
    shutil.copytree(w2v2_dirs[48] / "variables", mixed / "variables")
    with pytest.raises(ValueError, match=rf"^config.w2v2.init={_e(mixed)}: its variables do not fit the "
                                         r"wav2vec2 its model.json describes \(2 layers x hidden_size 32\); "
                                         r"\d+ problem\(s\), first: encoder/\S+: saved \(48,\), model "
                                         r"\(32,\);.* The folder mixes two models: convert the HF "
                                         r"checkpoint again into an empty OUT_DIR \(`python -m "
                                         r"emosup.convert wav2vec2 SRC_DIR OUT_DIR`\)$"):
        ser_w2v2.run(_w2v2_arm_config(init=str(mixed)), tmp_path / "ft", None, "w2v2_contrastive")
    assert not (tmp_path / "ft").exists()  # stopped before the pair table and the workdir


def test_w2v2_init_of_another_hidden_size_than_w2v2_model_is_its_own(w2v2_dirs):
    """A consistent converted folder of another size is not an error: the init folder's
    model.json gives the architecture (config.w2v2.model only shapes a random start)."""
    cfg = _w2v2_arm_config(init=str(w2v2_dirs[48]))
    assert cfg.w2v2.model.hidden_size == 32
    ser_w2v2.validate(cfg)
    w2v2_cfg, _, source, params = ser_w2v2._w2v2_init(cfg.w2v2)
    assert w2v2_cfg.hidden_size == 48 and source == "huggingface:hf48"
    assert params["encoder"]["layers"]["0"]["attention"]["q_proj"]["kernel"].shape == (48, 48)


# --------------------------------------------------------------------------------------------
# Utterances of 1-2 frames (hop 10 ms, window 25 ms)
# --------------------------------------------------------------------------------------------

# samples -> frames (1 + n // 160): 1, 1, 2, 2, 4, 5, 100
SHORT = (1, 100, 160, 300, 639, 640, 16000)


def test_embedding_skips_utterances_too_short_for_ecapa_naming_them(tmp_path, ecapa_dir):
    """SpeechBrain's ECAPA-TDNN cannot embed fewer than 5 frames (its reflect padding needs
    more frames than it pads, 4 for the dilation-4 layer), so there is no reference to match;
    and with 1 frame the mean-normalised features are all zero: every 1-frame file got the same
    embedding (norm ~1e-5), whatever its audio. They are skipped as unreadable files are,
    with the file and the minimum in the log; 640 samples (5 frames) and up are embedded."""
    paths = [str(write_wav(tmp_path / f"n{n}.wav", 0.1 * np.random.default_rng(n).standard_normal(n)))
             for n in SHORT]
    log = pipeline.SkipLog()
    emb, stats, valid = encoders.embed_paths(encoders.Encoder(ecapa_dir), paths, skip_log=log, progress=False)
    assert valid.tolist() == [n >= 640 for n in SHORT]
    assert np.isfinite(emb[valid]).all() and np.isfinite(stats[valid]).all()
    assert np.isnan(emb[~valid]).all()
    assert sorted(log.as_dict()) == sorted(p for p, n in zip(paths, SHORT) if n < 640)
    for p, n in zip(paths, SHORT):
        if n < 640:
            assert re.fullmatch(rf"{n} samples: shorter than the 640 samples \(40 ms, 5 frames\) "
                                r"ECAPA-TDNN needs: its widest convolution reflect-pads 4 frames on "
                                r"each side; use longer recordings or leave it out of the manifest",
                                log.as_dict()[p])


@pytest.mark.parametrize("stage", ["pretrain", "finetune"])
def test_training_skips_utterances_of_one_or_two_frames_naming_them(tmp_path, stage, monkeypatch):
    """Training leaves out what embedding leaves out (a 1-frame crop's normalised features
    are all zero and teach nothing): each is skipped with the same reason, never drawn, and
    the run goes on with the rest."""
    rows = ["path,speaker,emotion,split"]
    short = []
    for s in range(3):
        for j, n in enumerate((100, 200, 8000, 8000)):  # 1 frame, 2 frames, 0.5 s, 0.5 s
            path = write_wav(tmp_path / f"s{s}_{j}.wav", 0.1 * np.random.default_rng(10 * s + j).standard_normal(n))
            rows.append(f"s{s}_{j}.wav,spk{s},{('neutral', 'sad')[j % 2]},{'test' if s == 2 else 'train'}")
            if n < 640 and s < 2:
                short.append(str(path))
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    drawn = []
    real = pipeline.CropSampler.__call__

    def spy(self, step, row):
        utt, offset = real(self, step, row)
        drawn.append(self.lengths[utt])
        return utt, offset

    monkeypatch.setattr(pipeline.CropSampler, "__call__", spy)
    if stage == "pretrain":  # every train row is a training utterance
        cfg = load_config(CONFIGS / "speaker.py", f"manifest={tmp_path / 'm.csv'},steps=2,batch_size=8")
        cfg.unlock()
        cfg.data.crop_seconds, cfg.log_every = 0.5, 1
        result = pretrain.run(cfg, tmp_path / "run")
        assert all(np.isfinite(h["loss"]) for h in result["history"])
    else:  # one of the two train speakers is held out for dev: the other's rows are trained on
        cfg = load_config(CONFIGS / "finetune.py", f"manifest={tmp_path / 'm.csv'},steps=2,batch_size=8,"
                                                   "labels_per_class=0")
        cfg.unlock()
        cfg.data.crop_seconds, cfg.eval_every, cfg.ser.dev_fraction = 0.5, 2, 0.5
        result = ser_ecapa.run(cfg, tmp_path / "run")
    assert drawn and min(drawn) >= 640, "a too-short utterance was drawn for training"
    skipped = {p: r for p, r in result["skipped"].items() if p in short}
    assert len(skipped) == (4 if stage == "pretrain" else 2), skipped
    for p, reason in skipped.items():
        assert re.fullmatch(r"\d+ samples: shorter than the 640 samples \(40 ms, 5 frames\) ECAPA-TDNN "
                            r"needs: .*; use longer recordings or leave it out of the manifest", reason), reason


# --------------------------------------------------------------------------------------------
# Config fields a user sets
# --------------------------------------------------------------------------------------------


def test_objective(tmp_path):
    with pytest.raises(ValueError, match=r"^config.objective='contrastiv': expected one of \('speaker', "
                                         r"'contrastive', 'multitask', 'adversarial'\)"):
        pretrain.run(load_config(CONFIGS / "pretrain.py", "objective=contrastiv"), tmp_path)
    cfg = load_config(CONFIGS / "iemocap.py", "root=/data/iemocap,stage=pretrain,objective=mt")
    with pytest.raises(ValueError, match=r"^config.objective='mt': expected one of"):
        pretrain.run(cfg, tmp_path)
    # Given to another stage, it was silently ignored.
    with pytest.raises(ValueError, match=r"^config argument objective='multitask' applies to "
                                         r"stage=pretrain only, but this is stage=experiment: add "
                                         r"stage=pretrain or drop objective="):
        load_config(CONFIGS / "iemocap.py", "root=/data/iemocap,objective=multitask")
    with pytest.raises(ValueError, match=r"^config argument init='runs/mt' applies to stage=finetune "
                                         r"only, but this is stage=pretrain"):
        load_config(CONFIGS / "iemocap.py", "root=/data/iemocap,stage=pretrain,init=runs/mt")
    with pytest.raises(ValueError, match=r"^config argument speaker_encoder='runs/vox' applies to "
                                         r"stage=experiment only, but this is stage=finetune"):
        load_config(CONFIGS / "iemocap.py", "root=/data/iemocap,stage=finetune,speaker_encoder=runs/vox")


def test_speaker_encoder_arguments(tmp_path):
    """The arm `pretrained` and arms_init need a speaker encoder; a missing folder, an unknown
    arms_init and a k rule that does not exist stop before any work."""
    from emosup import experiment

    enc = export_random_tiny_ecapa(tmp_path / "enc", 0)
    with pytest.raises(ValueError, match=r"^arm 'pretrained' fine-tunes the given speaker encoder, but none "
                                         r"is given: add speaker_encoder=DIR"):
        experiment.validate(load_config(DEMO, "arms=scratch+pretrained"))
    with pytest.raises(ValueError, match=r"^arms_init=speaker_encoder starts the arms from the given speaker "
                                         r"encoder, but none is given"):
        experiment.validate(load_config(DEMO, "arms=contrastive,arms_init=speaker_encoder"))
    with pytest.raises(ValueError, match=r"^config.arms.init='speaker': expected '' \(random encoders\) "
                                         r"or 'speaker_encoder'"):
        experiment.validate(load_config(DEMO, f"arms=contrastive,arms_init=speaker,speaker_encoder={enc}"))
    with pytest.raises(ValueError, match=r"^config.speaker_encoder: .*/nowhere: no such folder"):
        experiment.validate(load_config(DEMO, f"speaker_encoder={tmp_path / 'nowhere'}"))
    cfg = load_config(DEMO, "arms=contrastive")
    cfg.unlock()
    cfg.pairs.k_rule = "elbow"
    with pytest.raises(ValueError, match=r"^config.pairs.k_rule='elbow': expected one of \('silhouette', "
                                         r"'size'\)"):
        experiment.validate(cfg)
    # With a speaker encoder, `all` includes `pretrained`; without, it does not.
    assert load_config(DEMO, f"arms=all,speaker_encoder={enc}").arms.names[-1] == "pretrained"
    assert "pretrained" not in load_config(DEMO, "arms=all").arms.names


def test_refresh_every(tmp_path):
    cfg = load_config(CONFIGS / "pretrain.py", "objective=contrastive,pairs_encoder=spk")
    cfg.unlock()
    cfg.pairs.refresh_every = -1
    with pytest.raises(ValueError, match=r"^config.pairs.refresh_every=-1: must be an integer >= 0 "
                                         r"\(0 = pairs fixed from config.pairs.encoder\)"):
        pretrain.run(cfg, tmp_path)
    with pytest.raises(ValueError, match=r"^config.pairs.refresh_every=-2: must be an integer >= 0"):
        experiment.run(_demo(**{"pairs.refresh_every": -2}), tmp_path / "run")
    assert not (tmp_path / "run").exists()  # refused before the corpus and the speaker encoder


@pytest.mark.parametrize("crop", [0.0, 0.03, -1.0])
def test_crop_seconds(tmp_path, crop):
    """Crops under 40 ms have fewer than the 5 frames ECAPA-TDNN needs. Fine-tuning had no
    check: crop_seconds=0 fine-tuned on empty crops (a constant loss) and reported results."""
    msg = (r"={crop!r}: crops must be at least 0.04 s \(5 frames of 10 ms, the fewest ECAPA-TDNN "
           r"accepts\); give a length in seconds such as 1.0 or 2.0").format(crop=crop)
    cfg = load_config(CONFIGS / "speaker.py")
    cfg.unlock()
    cfg.data.crop_seconds = crop
    with pytest.raises(ValueError, match=r"^config\.data\.crop_seconds" + msg):
        pretrain.run(cfg, tmp_path / "spk")
    cfg = load_config(CONFIGS / "finetune.py")
    cfg.unlock()
    cfg.data.crop_seconds = crop
    with pytest.raises(ValueError, match=r"^config\.data\.crop_seconds" + msg):
        ser_ecapa.run(cfg, tmp_path / "ft")
    for field in ("data.crop_seconds", "arms.pretrain_crop_seconds", "finetune.data.crop_seconds"):
        with pytest.raises(ValueError, match=rf"^config\.{re.escape(field)}" + msg):
            experiment.run(_demo("tiny=1,seeds=1,arms=all+w2v2s", **{field: crop}), tmp_path / "run")
    assert not any((tmp_path / d).exists() for d in ("spk", "ft", "run"))


def test_arms_and_seeds(tmp_path):
    with pytest.raises(ValueError, match=r"^config argument arms='scratch\+contrastve': unknown arms "
                                         r"\['contrastve'\]; known: \['scratch', .*\], `all`, `w2v2s`"):
        load_config(DEMO, "arms=scratch+contrastve")
    with pytest.raises(ValueError, match=r"^config argument arms='mt': unknown arms \['mt'\]"):
        load_config(CONFIGS / "iemocap.py", "root=/data/iemocap,arms=mt")
    # --config.arms.names=... was checked only when the comparison began, after the study.
    with pytest.raises(ValueError, match=r"^config.arms.names=\('scratch', 'mt'\): unknown arms \['mt'\]; "
                                         r"known: \['scratch', 'speaker'"):
        experiment.run(_demo(**{"arms.names": ("scratch", "mt")}), tmp_path / "run")
    # seeds=0 with arms: an IndexError after every stage had run.
    with pytest.raises(ValueError, match=r"^config.arms.seeds=\(\): the arms \['scratch'\] need at least "
                                         r"one seed, e.g. seeds=3"):
        experiment.run(load_config(DEMO, "tiny=1,arms=scratch,seeds=0"), tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_folds():
    iemocap = CONFIGS / "iemocap.py"
    for folds in ("x", "1+", ""):  # a ValueError of int() that named nothing
        with pytest.raises(ValueError, match=rf"^config argument folds='{re.escape(folds)}': expected `all` "
                                             r"or folds joined by `\+` from \[1, 2, 3, 4, 5\], e.g. folds=1\+2"):
            load_config(iemocap, f"root=/data/iemocap,folds={folds}")
    with pytest.raises(ValueError, match=r"^config argument folds='2\+6': unknown folds \[6\]; known "
                                         r"\[1, 2, 3, 4, 5\], e.g. folds=1\+2"):
        load_config(iemocap, "root=/data/iemocap,folds=2+6")
    assert load_config(iemocap, "root=/data/iemocap,folds=2+4").protocol.folds == (2, 4)
    # A corpus without folds ignored them silently.
    with pytest.raises(ValueError, match=r"^config argument folds='2': configs/crema_d.py has no folds "
                                         r"\(its protocol is one train/dev/test split\); drop folds="):
        load_config(CONFIGS / "crema_d.py", "root=/data/crema_d,folds=2")


def test_stage(tmp_path):
    with pytest.raises(ValueError, match=r"^config argument stage='train': expected one of experiment, "
                                         r"speaker, pretrain, finetune"):
        load_config(CONFIGS / "iemocap.py", "root=/data/iemocap,stage=train")
    # A stage config given to emosup.experiment: an AttributeError 'protocol' (finetune), or the
    # whole experiment run instead of the stage asked for (speaker, pretrain).
    for stage in ("finetune", "speaker", "pretrain"):
        cfg = load_config(CONFIGS / "iemocap.py", f"root=/data/iemocap,stage={stage}")
        with pytest.raises(ValueError, match=rf"^config.stage='{stage}': `python -m emosup.experiment` "
                                             rf"runs stage=experiment \(the default\); run stage={stage} "
                                             r"with `python -m emosup.train`"):
            experiment.run(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_root(tmp_path):
    with pytest.raises(ValueError, match=r"^configs/iemocap.py needs root=<the downloaded iemocap folder>, "
                                         r"e.g. --config=configs/iemocap.py:root=/data/iemocap"):
        load_config(CONFIGS / "iemocap.py", "arms=scratch")
    from emosup.data.corpora.common import CorpusError

    root = tmp_path / "IEMOCAP_full_release"
    with pytest.raises(CorpusError, match=rf"^{_e(root)}: not a folder \(expected IEMOCAP_full_release "
                                          r"with Session1..Session5\)"):
        experiment.run(load_config(CONFIGS / "iemocap.py", f"root={root},tiny=1,seeds=1"), tmp_path / "run")


def test_ser_target(tmp_path):
    msg = r"ser.target='categorial': expected one of \('categorical', 'dimensional', 'both'\)"
    with pytest.raises(ValueError, match=r"^config\." + msg):
        ser_ecapa.run(load_config(CONFIGS / "finetune.py", "target=categorial"), tmp_path / "ft")
    # The wav2vec2 arms had no check: no class and no dimension head, trained anyway.
    cfg = _w2v2_arm_config()
    cfg.unlock()
    cfg.ser.target = "categorial"
    with pytest.raises(ValueError, match=r"^config\." + msg):
        ser_w2v2.run(cfg, tmp_path / "w2v2", None, "w2v2")
    # In the experiment it was found after the speaker encoder and the study.
    with pytest.raises(ValueError, match=r"^config\.finetune\." + msg):
        experiment.run(_demo(**{"finetune.ser.target": "categorial"}), tmp_path / "run")
    assert not any((tmp_path / d).exists() for d in ("ft", "w2v2", "run"))


@pytest.mark.parametrize("arg,msg", [
    ("steps=2k", r"config argument steps='2k': expected an integer"),
    ("seeds=three", r"config argument seeds='three': expected an integer"),
    ("tiny=maybe", r"config argument tiny='maybe': expected 1/0, true/false or yes/no"),
])
def test_typed_config_arguments(arg, msg):
    """int('2k') raised "invalid literal for int() with base 10: '2k'", naming no argument; a
    bool took any other word as false."""
    with pytest.raises(ValueError, match="^" + msg + "$"):
        load_config(DEMO, arg)
    with pytest.raises(ValueError, match="^" + msg + "$"):
        load_config(CONFIGS / "iemocap.py", "root=/data/iemocap," + arg)
