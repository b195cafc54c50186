"""TensorFlow Datasets builders for the emosup corpora, built on the plain-Python readers.

Importing this module registers six manual-download builders: ``emosup_msp_podcast``,
``emosup_iemocap``, ``emosup_crema_d``, ``emosup_ravdess``, ``emosup_esd`` and
``emosup_voxceleb``. Each one calls its reader (`emosup.data.corpora.<name>.read`) on
``manual_dir`` — the corpus ROOT folder exactly as the reader expects it — and writes one
example per reader row (keyed by path; TFDS shuffles the order on disk): a split holds the
rows `read(ROOT, check_silence=True, **config.options)` gives that split. Nothing else in
emosup imports this module (TensorFlow stays optional).

Build from the shell (``--imports`` registers the builders; ``name/config`` picks a config)::

    tfds build emosup_iemocap/fold1 --imports=emosup.data.tfds \\
        --manual_dir=/data/IEMOCAP_full_release --data_dir=~/tensorflow_datasets

(the `tfds` command of TFDS 4.9.10 imports apache-beam and mlcroissant when it starts,
tensorflow/datasets#5463: `pip install apache-beam mlcroissant` first), or, with no extra
package, the same build through this module::

    python -m emosup.data.tfds emosup_iemocap/fold1 --manual_dir=/data/IEMOCAP_full_release

or from Python::

    import tensorflow_datasets as tfds
    import emosup.data.tfds  # registers the builders
    builder = tfds.builder("emosup_iemocap", config="fold1", data_dir="~/tensorflow_datasets")
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
        manual_dir="/data/IEMOCAP_full_release"))
    test = builder.as_dataset(split="test")   # or tfds.load("emosup_iemocap/fold1", ...)
    names = builder.info.metadata["label_names"]  # label index → emotion name

Prepared data reopen with `tfds.builder_from_directory(DIR)` (the audio feature's class is
`emosup.data.tfds.Int16Audio`, which TFDS imports by name, so emosup must be installed).

Features of every example:
  audio        int16 [N], 16 kHz mono: `emosup.audio.load_audio` (mix-down, soxr resampling)
               × 32768, rounded and clipped to int16. 32768 is libsndfile's float scale for
               16-bit PCM, so a 16 kHz 16-bit source file is stored bit-exactly.
  speaker      text, the reader's speaker id (e.g. IEMOCAP ``Ses01F``, VoxCeleb ``id10270``).
  emotion      text, a normalised name from `common.EMOTIONS`, '' when unlabelled.
  label        int32, index of `emotion` in the config's ``label_names`` (also stored in
               ``info.metadata``); -1 when unlabelled (MSP-Podcast Test3, VoxCeleb). A plain
               int, not `ClassLabel`, because ClassLabel cannot hold "no label".
  arousal, valence, dominance  float32 on the corpus's own scale, NaN when missing.
  corpus_label text, the corpus's own code (``exc``, ``ANG``, ``05``); fold int32 (IEMOCAP
               session), -1 when the corpus has none; path text, the source file.
Splits: the split names present in the rows (train/dev/test, MSP's test2/test3).

Files the reader leaves out (``Prepared.skipped``: missing, empty, git-lfs pointers, bad
names, silent) are logged with their count and never written. Builders run the readers with
``check_silence=True``: the build reads every sample anyway, and a file the reader has read in
full cannot fail later while the examples are written.
"""
from __future__ import annotations

if __name__ == "__main__":  # `python -m emosup.data.tfds`: run the importable module's main()
    import sys              # so the builders are registered once, under emosup.data.tfds.
    from emosup.data import tfds as _module
    sys.exit(_module.main())

import argparse
import dataclasses
import logging
import pathlib
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from emosup import audio as audio_lib
from emosup.data.corpora import common, crema_d, esd, iemocap, msp_podcast, ravdess, voxceleb
from emosup.data.manifest import Utterance

log = logging.getLogger(__name__)

SAMPLE_RATE = audio_lib.SAMPLE_RATE
# float → int16 scale: libsndfile reads 16-bit PCM as k / 0x8000, so × 32768 inverts it.
INT16_SCALE = 32768.0
DIMENSIONS = ("arousal", "valence", "dominance")
SKIPPED_SHOWN = 10  # skipped files named one by one in the log (the rest are counted)


def to_int16(wav: np.ndarray) -> np.ndarray:
    """float waveform (nominally in [-1, 1]) → int16, × 32768, rounded, clipped."""
    x = np.round(np.asarray(wav, dtype=np.float64) * INT16_SCALE)
    return np.clip(x, -32768, 32767).astype(np.int16)


@dataclasses.dataclass(eq=False)
class CorpusConfig(tfds.core.BuilderConfig):
    """A builder config: the reader's keyword `options` and the label index order."""

    options: Dict[str, object] = dataclasses.field(default_factory=dict)
    label_names: Tuple[str, ...] = ()


def _config(name: str, description: str, label_names: Sequence[str], **options) -> CorpusConfig:
    return CorpusConfig(name=name, description=description, options=dict(options),
                        label_names=tuple(label_names))


# Label orders follow common.EMOTIONS restricted to the corpus's classes.
FOUR = ("neutral", "happy", "sad", "angry")
MSP_CLASSES = FOUR + ("fear", "disgust", "surprise", "contempt")
CREMA_D_CLASSES = FOUR + ("fear", "disgust")
RAVDESS_CLASSES = FOUR + ("fear", "disgust", "surprise", "calm")
ESD_CLASSES = FOUR + ("surprise",)


def _float(x: Optional[float]) -> float:
    return float("nan") if x is None else float(x)


class Int16Audio(tfds.features.Audio):
    """`tfds.features.Audio` that stores an in-memory int16 waveform as raw bytes.

    TFDS 4.9's Audio passes numpy arrays through unencoded, which works only with the default
    int64 lists (a negative sample then costs 10 bytes as a varint); giving the array to the
    Tensor encoder applies `Encoding.BYTES`: 2 bytes a sample. Decoding is Audio's own.
    """

    def encode_example(self, audio):
        return tfds.features.Tensor.encode_example(self, np.asarray(audio, dtype=np.int16))


class _CorpusBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Shared builder: subclasses set READER, HOMEPAGE, BUILDER_CONFIGS and the instructions."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release: the rows of the emosup reader."}
    READER = None  # the emosup.data.corpora module whose read() lists the rows
    HOMEPAGE = ""
    DESCRIPTION = ""
    # TFDS 4.9.10 finds a builder's file through `importlib_resources`, a package it only
    # declares for Python < 3.9 (tensorflow/datasets#11212), so its `code_path` fails with
    # ModuleNotFoundError here; naming this file directly needs no extra package. There is no
    # checksums.tsv beside it: nothing is downloaded.
    code_path = epath.Path(__file__)

    def _info(self) -> tfds.core.DatasetInfo:
        cfg = self.builder_config
        text = tfds.features.Text
        return self.dataset_info_from_configs(
            description=self.DESCRIPTION,
            homepage=self.HOMEPAGE,
            features=tfds.features.FeaturesDict({
                "audio": Int16Audio(
                    shape=(None,), dtype=np.int16, sample_rate=SAMPLE_RATE,
                    encoding=tfds.features.Encoding.BYTES,  # 2 bytes a sample, not int64
                    doc="16 kHz mono int16 (load_audio × 32768)"),
                "speaker": text(doc="speaker id from the emosup reader"),
                "emotion": text(doc="normalised emotion name, '' when unlabelled"),
                "label": tfds.features.Scalar(
                    np.int32, doc=f"index in {list(cfg.label_names)}, -1 when unlabelled"),
                **{dim: tfds.features.Scalar(np.float32, doc="corpus scale, NaN = missing")
                   for dim in DIMENSIONS},
                "corpus_label": text(doc="the corpus's own emotion code"),
                "fold": tfds.features.Scalar(np.int32, doc="cross-validation fold, -1 = none"),
                "path": text(doc="the source audio file"),
            }),
            supervised_keys=("audio", "label") if cfg.label_names else ("audio", "speaker"),
            metadata=tfds.core.MetadataDict(label_names=list(cfg.label_names)),
        )

    def read_corpus(self, root) -> common.Prepared:
        """The reader's result for ROOT under this config (what the splits will hold)."""
        options = {"check_silence": True, **self.builder_config.options}
        return self.READER.read(pathlib.Path(root), **options)

    def _split_generators(self, dl_manager):
        root = pathlib.Path(str(dl_manager.manual_dir))
        prepared = self.read_corpus(root)
        if prepared.skipped:
            shown = "; ".join(f"{p}: {why}" for p, why in prepared.skipped[:SKIPPED_SHOWN])
            more = len(prepared.skipped) - SKIPPED_SHOWN
            log.warning("%s: skipped %d files under %s (not in the dataset): %s%s", self.name,
                        len(prepared.skipped), root, shown, f"; ... ({more} more)" if more > 0
                        else "")
        if not prepared.utterances:
            raise common.CorpusError(f"{root}: no usable utterances for {self.name} "
                                     f"({len(prepared.skipped)} files skipped)")
        by_split: Dict[str, List[Utterance]] = {}
        for u in prepared.utterances:
            by_split.setdefault(u.split, []).append(u)
        log.info("%s: %s", self.name, ", ".join(f"{s} {len(r)}" for s, r in by_split.items()))
        return {split: self._generate_examples(rows) for split, rows in by_split.items()}

    def _generate_examples(self, rows: Sequence[Utterance]) -> Iterator[Tuple[str, dict]]:
        index = {name: i for i, name in enumerate(self.builder_config.label_names)}
        for u in rows:
            if u.emotion is not None and u.emotion not in index:
                raise ValueError(f"{u.path}: emotion {u.emotion!r} is not one of the labels "
                                 f"{list(index)} of {self.name}/{self.builder_config.name}")
            # The reader has already read the whole file (check_silence), so this succeeds.
            wav = audio_lib.load_audio(u.path, SAMPLE_RATE, check_silence=False)
            fold = u.extra.get("fold", "")
            yield u.id, {
                "audio": to_int16(wav),
                "speaker": u.speaker,
                "emotion": u.emotion or "",
                "label": index[u.emotion] if u.emotion is not None else -1,
                **{dim: _float(getattr(u, dim)) for dim in DIMENSIONS},
                "corpus_label": u.extra.get("corpus_label", ""),
                "fold": int(fold) if fold else -1,
                "path": u.path,
            }


def _instructions(folder: str, source: str) -> str:
    return (f"Download {source} yourself (licence terms apply) and pass the unpacked corpus "
            f"root folder as manual_dir: {folder}.\n"
            "  python -m emosup.data.tfds <name>[/<config>] --manual_dir=ROOT\n"
            "  tfds build <name>[/<config>] --imports=emosup.data.tfds --manual_dir=ROOT\n"
            "or tfds.download.DownloadConfig(manual_dir=ROOT). ROOT is the folder "
            "`python -m emosup.prepare <corpus> ROOT` reads.")


class EmosupMspPodcast(_CorpusBuilder):
    READER = msp_podcast
    HOMEPAGE = "https://ecs.utdallas.edu/research/researchlabs/msp-lab/MSP-Podcast.html"
    DESCRIPTION = ("MSP-Podcast: podcast segments with consensus categorical labels and "
                   "arousal/valence/dominance (1-7). Splits train/dev/test/test2/test3.")
    MANUAL_DOWNLOAD_INSTRUCTIONS = _instructions(
        "the release folder holding Labels/labels_consensus.csv and Audios/ "
        "(e.g. MSP-PODCAST-Publish-1.12)", "MSP-Podcast from the UT Dallas MSP lab")
    BUILDER_CONFIGS = [
        _config("default", "8 classes; O/X rows dropped; Test3 unlabelled", MSP_CLASSES),
        _config("four_class", "neutral/happy/sad/angry labelled, the other classes kept "
                "unlabelled (A/V/D usable)", FOUR, four_class=True),
    ]


class EmosupIemocap(_CorpusBuilder):
    READER = iemocap
    HOMEPAGE = "https://sail.usc.edu/iemocap/"
    DESCRIPTION = ("IEMOCAP, the standard 4-class set (exc merged into happy), "
                   "leave-one-session-out: the test session is the test split.")
    MANUAL_DOWNLOAD_INSTRUCTIONS = _instructions(
        "IEMOCAP_full_release (the folder holding Session1..Session5)", "IEMOCAP from USC SAIL")
    BUILDER_CONFIGS = [_config("default", "4 classes, session 5 = test", FOUR, test_session=5)] + [
        _config(f"fold{k}", f"4 classes, session {k} = test", FOUR, test_session=k)
        for k in iemocap.SESSIONS]


class EmosupCremaD(_CorpusBuilder):
    READER = crema_d
    HOMEPAGE = "https://github.com/CheyneyComputerScience/CREMA-D"
    DESCRIPTION = ("CREMA-D acted emotions (6 classes), speaker-disjoint train/dev/test "
                   "(0.7/0.1/0.2 of the actors, seed 0).")
    MANUAL_DOWNLOAD_INSTRUCTIONS = _instructions(
        "the CREMA-D repository cloned with git-lfs (holding AudioWAV/), or AudioWAV/ itself",
        "CREMA-D from GitHub")
    BUILDER_CONFIGS = [_config("default", "6 classes, speaker-disjoint splits", CREMA_D_CLASSES)]


class EmosupRavdess(_CorpusBuilder):
    READER = ravdess
    HOMEPAGE = "https://zenodo.org/record/1188976"
    DESCRIPTION = ("RAVDESS audio-only (8 classes), speaker-disjoint train/dev/test "
                   "(0.7/0.1/0.2 of the actors, seed 0).")
    MANUAL_DOWNLOAD_INSTRUCTIONS = _instructions(
        "the folder holding Actor_01 ... Actor_24 (unzipped Audio_Speech_Actors_01-24.zip, "
        "and Audio_Song_Actors_01-24.zip for speech_and_song)", "RAVDESS from Zenodo")
    BUILDER_CONFIGS = [
        _config("speech", "speech files only (vocal channel 01)", RAVDESS_CLASSES, song=False),
        _config("speech_and_song", "speech and song files", RAVDESS_CLASSES, song=True),
    ]


class EmosupEsd(_CorpusBuilder):
    READER = esd
    HOMEPAGE = "https://github.com/HLTSingapore/Emotional-Speech-Data"
    DESCRIPTION = ("ESD (5 classes), whole speakers held out: train/dev/test over the "
                   "speakers (0.7/0.1/0.2, seed 0), not ESD's speaker-sharing official split.")
    MANUAL_DOWNLOAD_INSTRUCTIONS = _instructions(
        "'Emotion Speech Dataset' (the folder holding 0001 ... 0020)", "ESD from HLT Singapore")
    BUILDER_CONFIGS = [
        _config(name, f"{desc} speakers", ESD_CLASSES, languages=langs)
        for name, desc, langs in (("all", "all 20", "english,mandarin"),
                                  ("english", "the English (0011-0020)", "english"),
                                  ("mandarin", "the Mandarin (0001-0010)", "mandarin"))]


class EmosupVoxceleb(_CorpusBuilder):
    READER = voxceleb
    HOMEPAGE = "https://www.robots.ox.ac.uk/~vgg/data/voxceleb/"
    DESCRIPTION = ("VoxCeleb1/2 WAV files with speaker ids (no emotion: label -1). Splits from "
                   "iden_split.txt when found (train/dev/test), else all train.")
    MANUAL_DOWNLOAD_INSTRUCTIONS = _instructions(
        "a folder at or up to three levels above wav/idXXXXX/<video>/NNNNN.wav (VoxCeleb2 "
        ".m4a must first be converted to 16 kHz WAV with ffmpeg)", "VoxCeleb from VGG Oxford")
    BUILDER_CONFIGS = [_config("default", "every WAV file, iden_split.txt splits if present", ())]


BUILDERS = (EmosupMspPodcast, EmosupIemocap, EmosupCremaD, EmosupRavdess, EmosupEsd,
            EmosupVoxceleb)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """`python -m emosup.data.tfds NAME[/CONFIG] --manual_dir=ROOT [--data_dir=DIR]`."""
    parser = argparse.ArgumentParser(prog="python -m emosup.data.tfds",
                                     description="Build an emosup TFDS dataset from ROOT.")
    parser.add_argument("name", help="builder[/config], e.g. emosup_iemocap/fold1; one of "
                        + ", ".join(b.name for b in BUILDERS))
    parser.add_argument("--manual_dir", required=True, help="the corpus root folder")
    parser.add_argument("--data_dir", default=None, help="TFDS data dir (default: TFDS's)")
    args = parser.parse_args(argv)
    name, _, config = args.name.partition("/")
    known = {b.name: [c.name for c in b.BUILDER_CONFIGS] for b in BUILDERS}
    if name not in known:
        parser.error(f"unknown builder {name!r}; expected one of {', '.join(known)}")
    if config and config not in known[name]:
        parser.error(f"unknown config {config!r} of {name}; expected one of "
                     f"{', '.join(known[name])}")
    builder = tfds.builder(name, config=config or None, data_dir=args.data_dir)
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=args.manual_dir))
    splits = ", ".join(f"{k} {v.num_examples}" for k, v in sorted(builder.info.splits.items()))
    print(f"{builder.info.full_name} in {builder.data_dir}: {splits}")
    return 0
