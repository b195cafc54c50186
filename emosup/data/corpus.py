"""Which corpus a config points at: the built-in synthetic one, the user's CSV manifest, or a
downloaded corpus folder read by its reader (`config.data.corpus` + `root` + `options`, the
same readers as `python -m emosup.prepare`; the rows are also written to `workdir/manifest.csv`).

`config.data.manifest` empty → the synthetic corpus is generated (cached) in
`config.data.synthetic_dir` (empty: the shared cache, `config_lib.synthetic_cache_dir`) with
`config.data.synthetic`; its splits are `unlabelled`,
`labelled`, `test`. Otherwise the CSV manifest is read; its splits are `train`, `dev`, `test`.
`train_split`/`study_split`/`finetune_split` name the roles: pretraining learns on
`train_split` rows with emotions unused; the study and the SER test use `study_split`
speakers; SER fine-tuning draws its few labels from `finetune_split` (for a CSV the same
`train` rows, with labels).
"""
import collections
import dataclasses
import pathlib

import jax
from absl import logging

from emosup.data import manifest as manifest_lib


def speaker_known(u):
    """False for rows whose speaker is a stand-in (MSP-Podcast's `Unknown` speakers, grouped by
    recording): they take no part in speaker classification, pair clustering or the study."""
    return u.extra.get("speaker_known", "1") != "0"


@dataclasses.dataclass(frozen=True)
class Corpus:
    name: str
    manifest: manifest_lib.Manifest
    manifest_path: str
    train_split: str
    study_split: str
    splits: tuple
    finetune_split: str = "train"


def _read_corpus(data_cfg, workdir):
    from emosup.data.corpora import common, registry

    read = registry.reader_for(data_cfg.corpus)
    options = dict(data_cfg.get("options", {}))
    known = registry.options_of(read)
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ValueError(f"config.data.options {unknown} are not options of the {data_cfg.corpus} reader; "
                         f"it takes {sorted(known)}")
    if not data_cfg.root:
        raise ValueError(f"config.data.root is empty: give the folder of the downloaded {data_cfg.corpus} corpus")
    prepared = read(data_cfg.root, **options)
    logging.info("corpus %s (%s, options %s):\n%s", data_cfg.corpus, data_cfg.root, options,
                 common.summary(prepared))
    if not prepared.utterances:
        raise common.CorpusError(f"{data_cfg.root}: the {data_cfg.corpus} reader found no usable utterance")
    path = pathlib.Path(workdir or ".").absolute() / "manifest.csv"
    if jax.process_index() == 0:
        manifest_lib.write_manifest(prepared.utterances, path)
    return manifest_lib.Manifest(list(prepared.utterances), str(path))


def open_corpus(data_cfg, workdir=None):
    if data_cfg.get("corpus"):
        if data_cfg.manifest:
            raise ValueError("config.data: give either manifest or corpus (+ root), not both")
        m = _read_corpus(data_cfg, workdir)
        counts = collections.Counter(u.split for u in m)
        if "train" not in counts or "test" not in counts:
            raise manifest_lib.ManifestError(
                f"{data_cfg.root}: the {data_cfg.corpus} rows need `train` and `test` splits, found "
                f"{dict(sorted(counts.items()))} (reader options {dict(data_cfg.get('options', {}))})")
        return Corpus(name=data_cfg.get("name") or data_cfg.corpus, manifest=m, manifest_path=m.source,
                      train_split="train", study_split="test", splits=tuple(sorted(counts)))
    if data_cfg.manifest:
        path = pathlib.Path(data_cfg.manifest).expanduser().absolute()
        # Any split name is accepted (MSP-Podcast manifests also carry test2/test3, which no
        # stage reads); the counts are logged so that a misspelt split is visible.
        m = manifest_lib.read_manifest(path, allowed_splits=None)
        counts = collections.Counter(u.split for u in m)
        logging.info("manifest %s: %s", path, ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
        if "train" not in counts:
            raise manifest_lib.ManifestError(
                f"{path}: no `train` rows (splits found: {sorted(counts)}); pretraining and "
                "fine-tuning read the `train` split")
        return Corpus(name=data_cfg.get("name") or path.stem, manifest=m, manifest_path=str(path),
                      train_split="train", study_split="test", splits=("train", "dev", "test"))
    from emosup import config_lib
    from emosup.data.synthetic import generator, voices

    # No folder given: the shared cache of corpora with these settings (generated once).
    out = data_cfg.synthetic_dir or config_lib.synthetic_cache_dir(data_cfg.synthetic.to_dict())
    syn_cfg = generator.SyntheticConfig(**data_cfg.synthetic.to_dict())
    out = pathlib.Path(out).expanduser().absolute()
    if jax.process_count() > 1:
        # Process 0 writes the corpus first; the others then find it cached (shared file
        # system) or write their own copy (host-local disks): never two writers in one folder.
        from emosup import distributed

        if jax.process_index() == 0:
            generator.generate(out, syn_cfg)
        distributed.barrier("emosup-synthetic-corpus")
    path = generator.generate(out, syn_cfg)
    m = manifest_lib.read_manifest(path, allowed_splits=voices.SYNTHETIC_SPLITS)
    return Corpus(name="synthetic", manifest=m, manifest_path=str(path), train_split="unlabelled",
                  study_split="test", splits=tuple(voices.SYNTHETIC_SPLITS), finetune_split="labelled")
