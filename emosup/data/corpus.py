"""Which corpus a config points at: the built-in synthetic one, or the user's CSV manifest.

`config.data.manifest` empty → the synthetic corpus is generated (cached) in
`config.data.synthetic_dir` with `config.data.synthetic`; its splits are `unlabelled`,
`labelled`, `test`. Otherwise the CSV manifest is read; its splits are `train`, `dev`, `test`.
`train_split`/`study_split`/`finetune_split` name the roles: pretraining learns on
`train_split` rows with emotions unused; the study and the SER test use `study_split`
speakers; SER fine-tuning draws its few labels from `finetune_split` (for a CSV the same
`train` rows, with labels).
"""
import collections
import dataclasses
import pathlib

from absl import logging

from emosup.data import manifest as manifest_lib


@dataclasses.dataclass(frozen=True)
class Corpus:
    name: str
    manifest: manifest_lib.Manifest
    manifest_path: str
    train_split: str
    study_split: str
    splits: tuple
    finetune_split: str = "train"


def open_corpus(data_cfg, workdir=None):
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
    from emosup.data.corpora import synthetic

    out = data_cfg.synthetic_dir or (pathlib.Path(workdir) / "corpus" if workdir else None)
    if not out:
        raise ValueError("config.data.synthetic_dir is empty and no workdir was given")
    syn_cfg = synthetic.SyntheticConfig(**data_cfg.synthetic.to_dict())
    path = synthetic.generate(pathlib.Path(out).expanduser().absolute(), syn_cfg)
    m = manifest_lib.read_manifest(path, allowed_splits=synthetic.SYNTHETIC_SPLITS)
    return Corpus(name="synthetic", manifest=m, manifest_path=str(path), train_split="unlabelled",
                  study_split="test", splits=tuple(synthetic.SYNTHETIC_SPLITS), finetune_split="labelled")
