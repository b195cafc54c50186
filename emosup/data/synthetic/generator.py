"""Writes the synthetic corpus: `SyntheticConfig` (what to generate) and `generate`.

Determinism: speaker parameters come from `default_rng([seed, 0, split, speaker])`, an
utterance's from `default_rng([seed, 1, split, speaker, emotion, k])` (emotion = its index in
`KNOWN_EMOTIONS`): the bytes do not depend on worker count, order or the other emotions listed.
Output: `out_dir/wav/<split>/<speaker>/<speaker>_<emotion>_<k>.wav` (16 kHz 16-bit PCM by
default), `out_dir/manifest.csv` (relative path, speaker, emotion, split, a/v/d, duration) and
`out_dir/corpus.json`, written last: when it matches the request the corpus is complete (cache).
Speed: ~3.5 ms of CPU per 2 s utterance; 276-302 utt/s with 2 workers on a 2-core VM that
other jobs shared (load ~2.2).
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import multiprocessing
import os
import pathlib
import shutil
import sys
import threading
import time
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import soundfile as sf
from absl import logging

from emosup.data import manifest as manifest_lib
from emosup.data.synthetic.speech import synthesize
from emosup.data.synthetic.voices import (EMOTION_PROFILES, KNOWN_EMOTIONS, SYNTHETIC_SPLITS, make_speaker,
                                          speaker_name)

# Bump when the signal model changes, so cached corpora are regenerated.
GENERATOR_VERSION = "emosup-synthetic-1"


@dataclasses.dataclass
class SyntheticConfig:
    """What to generate. Fields by keyword; `from_dict` takes a dict or ml_collections dict."""

    seed: int = 0
    speakers_unlabelled: int = 24
    speakers_labelled: int = 8
    speakers_test: int = 8
    utterances_per_speaker_emotion: int = 10
    emotions: Sequence[str] = ("neutral", "happy", "sad", "angry")
    min_duration: float = 1.5
    max_duration: float = 3.0
    sample_rate: int = 16000

    def __post_init__(self):
        self.emotions = tuple(self.emotions)
        self.validate()

    def validate(self) -> None:
        """Raises ValueError naming the bad field."""
        def bad(field, why):
            raise ValueError(f"SyntheticConfig.{field}: {why}")
        for f, low in (("speakers_unlabelled", 0), ("speakers_labelled", 0),
                       ("speakers_test", 0), ("utterances_per_speaker_emotion", 1)):
            v = getattr(self, f)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < low:
                bad(f, f"must be an integer >= {low}, got {v!r}")
        if self.speakers_unlabelled + self.speakers_labelled + self.speakers_test == 0:
            bad("speakers_unlabelled", "all three speaker counts are 0")
        if not self.emotions:
            bad("emotions", "is empty")
        for e in self.emotions:
            if e not in EMOTION_PROFILES:
                bad("emotions", f"unknown emotion {e!r}; known: {', '.join(KNOWN_EMOTIONS)}")
        if len(set(self.emotions)) != len(self.emotions):
            bad("emotions", f"repeats a name: {self.emotions}")
        if not 0.3 <= self.min_duration <= self.max_duration:
            bad("min_duration", f"need 0.3 <= min_duration <= max_duration, got "
                f"{self.min_duration} and {self.max_duration}")
        if not isinstance(self.sample_rate, (int, np.integer)) or self.sample_rate < 8000:
            bad("sample_rate", f"must be an integer >= 8000, got {self.sample_rate!r}")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "SyntheticConfig":
        d = dict(d.to_dict() if hasattr(d, "to_dict") else d)
        unknown = sorted(set(d) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(f"SyntheticConfig: unknown field(s) {', '.join(unknown)}")
        return cls(**d)

    def to_dict(self) -> Dict[str, Any]:
        d = dataclasses.asdict(self)
        d["emotions"] = list(self.emotions)
        return d

    def num_speakers(self, split: str) -> int:
        return int(getattr(self, f"speakers_{split}"))

    def speaker_names(self, split: str) -> List[str]:
        return [speaker_name(split, i) for i in range(self.num_speakers(split))]


def _work(out_dir: str, cfg: Dict[str, Any], split: str, index: int,
          jobs: Sequence[Tuple[str, int]]) -> List[Tuple[str, float, Tuple[float, ...]]]:
    """Writes one speaker's utterances `jobs` = [(emotion, k)]; returns (relpath, seconds, avd)."""
    sr = cfg["sample_rate"]
    spk = make_speaker(cfg["seed"], split, index, sr)
    split_id = SYNTHETIC_SPLITS.index(split)
    (pathlib.Path(out_dir) / "wav" / split / spk.name).mkdir(parents=True, exist_ok=True)
    rows = []
    for emotion, k in jobs:
        rng = np.random.default_rng(
            [cfg["seed"], 1, split_id, index, KNOWN_EMOTIONS.index(emotion), k])
        wav, avd = synthesize(spk, emotion, rng, sr, cfg["min_duration"], cfg["max_duration"])
        rel = f"wav/{split}/{spk.name}/{spk.name}_{emotion}_{k:03d}.wav"
        sf.write(os.path.join(out_dir, rel), wav, sr, subtype="PCM_16", format="WAV")
        rows.append((rel, len(wav) / sr, tuple(float(v) for v in avd)))
    return rows


def _tasks(cfg: SyntheticConfig, chunk: int = 48):
    """(split, speaker index, [(emotion, k)]) pieces in manifest order."""
    tasks = []
    for split in SYNTHETIC_SPLITS:
        for i in range(cfg.num_speakers(split)):
            jobs = [(e, k) for e in cfg.emotions
                    for k in range(cfg.utterances_per_speaker_emotion)]
            tasks += [(split, i, jobs[j:j + chunk]) for j in range(0, len(jobs), chunk)]
    return tasks


def _default_workers() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _pool_context():
    """fork where safe (cheap, needs no importable __main__); spawn once JAX/TF/torch or other
    threads run in this process, because forking running thread pools can deadlock."""
    threaded = threading.active_count() > 1 or any(
        m in sys.modules for m in ("jax", "tensorflow", "torch"))
    if threaded or sys.platform != "linux":
        return multiprocessing.get_context("spawn")
    return multiprocessing.get_context("fork")


def _write_json_atomic(path: pathlib.Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def generate(out_dir, config: Optional[SyntheticConfig] = None, workers: Optional[int] = None,
             progress: bool = True) -> pathlib.Path:
    """Generates the corpus in `out_dir` (or finds it cached) and returns its manifest path.

    A complete corpus has `corpus.json` (written last) equal to this generator version and
    config; then nothing is written. Otherwise `wav/`, `manifest.csv` and `corpus.json` are
    removed and everything is generated again. `workers` processes (default: the usable CPUs;
    1 = this process) write the files; see `_pool_context` for fork vs spawn.
    """
    cfg = config if config is not None else SyntheticConfig()
    cfg.validate()
    out = pathlib.Path(out_dir).expanduser().absolute()
    manifest_path, meta_path = out / "manifest.csv", out / "corpus.json"
    cfg_json = json.loads(json.dumps(cfg.to_dict()))
    if meta_path.is_file() and manifest_path.is_file():
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            meta = {}
        if meta.get("version") == GENERATOR_VERSION and meta.get("config") == cfg_json:
            logging.info("synthetic corpus: cached in %s (%s files)", out, meta.get("num_files"))
            return manifest_path
        logging.info("synthetic corpus: %s holds another config or version; regenerating", out)
    # Clean a previous (partial or different) corpus; only the names this module writes.
    meta_path.unlink(missing_ok=True)
    manifest_path.unlink(missing_ok=True)
    shutil.rmtree(out / "wav", ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)

    tasks = _tasks(cfg)
    total = sum(len(t[2]) for t in tasks)
    workers = max(1, min(workers or _default_workers(), len(tasks)))
    results: List[Any] = [None] * len(tasks)
    t0 = last = time.monotonic()
    done = 0

    def report():
        nonlocal last
        now = time.monotonic()
        if progress and now - last >= 5.0:
            last = now
            logging.info("synthetic corpus: %d/%d utterances, %.0f utt/s", done, total,
                         done / max(now - t0, 1e-9))

    args = (str(out), cfg.to_dict())
    if workers > 1:
        try:
            ctx = _pool_context()
            with concurrent.futures.ProcessPoolExecutor(workers, mp_context=ctx) as pool:
                futs = {pool.submit(_work, *args, split, idx, jobs): i
                        for i, (split, idx, jobs) in enumerate(tasks)}
                for fut in concurrent.futures.as_completed(futs):
                    i = futs[fut]
                    results[i] = fut.result()
                    done += len(tasks[i][2])
                    report()
        except concurrent.futures.process.BrokenProcessPool as e:
            # e.g. a spawned worker could not import the caller's __main__ (`python -`).
            logging.warning("synthetic corpus: worker processes failed (%s); continuing in "
                            "this process", e)
    for i, (split, idx, jobs) in enumerate(tasks):  # everything (workers=1) or what is left
        if results[i] is None:
            results[i] = _work(*args, split, idx, jobs)
            done += len(jobs)
            report()
    elapsed = time.monotonic() - t0

    utts = []
    for (split, idx, jobs), rows in zip(tasks, results):
        speaker = speaker_name(split, idx)
        for (emotion, _), (rel, seconds, avd) in zip(jobs, rows):
            utts.append(manifest_lib.Utterance(
                id=rel, path=str(out / rel), speaker=speaker, emotion=emotion, split=split,
                arousal=round(avd[0], 4), valence=round(avd[1], 4), dominance=round(avd[2], 4),
                extra={"duration": f"{seconds:.4f}"}))
    manifest_lib.write_manifest(utts, manifest_path, relative_to=out)
    _write_json_atomic(meta_path, {
        "version": GENERATOR_VERSION, "config": cfg_json, "num_files": len(utts),
        "speakers": {s: cfg.speaker_names(s) for s in SYNTHETIC_SPLITS},
        "hours": round(sum(float(u.extra["duration"]) for u in utts) / 3600, 4)})
    logging.info("synthetic corpus: wrote %d utterances to %s in %.1f s (%.0f utt/s, %d workers)",
                 total, out, elapsed, total / max(elapsed, 1e-9), workers)
    return manifest_path
