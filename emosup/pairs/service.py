"""The pair service of pretraining: ``PairService`` publishes pair tables to the trainer (a
fixed one, or one rebuilt every R steps in a background thread), and the functions that make
those tables from an encoder (embed the training utterances, cluster, map rows back to the
full utterance list), report their quality, and save/restore them in a checkpoint.

The version used at each step is a pure function of the step, so training never depends on
how long a build took.
"""
from __future__ import annotations

import dataclasses
import inspect
import json
import pathlib
import threading
import time
from typing import Callable

import jax
import numpy as np
from absl import logging

from emosup.pairs import build as build_lib
from emosup.pairs.table import PairTable, pair_quality

# --------------------------------------------------------------------------- service
class PairService:
    """Host-side publisher of pair tables to the trainer.

    refresh_every = R = 0: the ``initial`` table for every step (the default).
    R > 0: ``maybe_refresh(step, snapshot)`` at step v*R (v >= 1) starts building version v
    with ``build_fn(v, snapshot)`` in a background thread (snapshot: e.g. a host copy of the
    encoder params at that step) and returns at once. That table is used from step (v+1)*R:
    ``table_for_step(s)`` returns version max(0, s // R - 1), a pure function of s, waiting
    (with a warning saying for how long) if that build has not finished. So a build has R
    steps of training to hide behind, and results never depend on its timing.
    One build runs at a time. An exception in a build is re-raised (as RuntimeError, the
    original as its cause) by every later call. For exact resume, checkpoint
    ``tables_for_checkpoint(step)`` and give them back with ``initial=`` and ``publish``.
    """

    def __init__(self, build_fn: Callable, *, refresh_every: int = 0, initial: PairTable):
        if not isinstance(refresh_every, (int, np.integer)) or refresh_every < 0:
            raise ValueError(f"pairs/service.py: refresh_every must be an integer >= 0, "
                             f"got {refresh_every!r}")
        if not isinstance(initial, PairTable):
            raise TypeError(f"pairs/service.py: initial must be a PairTable, got {type(initial).__name__}")
        if refresh_every:
            try:
                inspect.signature(build_fn).bind(0, None)
            except (TypeError, ValueError) as e:
                raise TypeError(f"pairs/service.py: build_fn must accept (version, snapshot): {e}") from None
        self.refresh_every = int(refresh_every)
        self._build_fn = build_fn
        self._initial = initial
        self._tables = {initial.version: initial}
        self._lock = threading.Lock()
        self._thread = None
        self._pending = None  # version being built
        self._error = None  # (version, exception) from the build thread
        self._reported = False

    def version_for_step(self, step: int) -> int:
        if self.refresh_every == 0:
            return self._initial.version
        return max(0, int(step) // self.refresh_every - 1)

    @property
    def current(self) -> PairTable:
        """The newest finished table (does not wait)."""
        self._check()
        with self._lock:
            return self._tables[max(self._tables)]

    def maybe_refresh(self, step: int, snapshot) -> bool:
        """Start building version step // R when step is a positive multiple of R (and that
        version is neither built nor building). Returns whether a build was started."""
        self._check()
        step = int(step)
        if self.refresh_every == 0 or step <= 0 or step % self.refresh_every:
            return False
        v = step // self.refresh_every
        with self._lock:
            if v in self._tables or self._pending == v:
                return False
        self._join("starting version %d" % v)  # one build at a time
        self._check()
        with self._lock:
            self._pending = v
        self._thread = threading.Thread(target=self._run, args=(v, snapshot),
                                        name=f"pair-table-v{v}", daemon=True)
        self._thread.start()
        return True

    def table_for_step(self, step: int) -> PairTable:
        """The table step ``step`` must use (see class doc); waits for it if still building."""
        self._check()
        v = self.version_for_step(step)
        with self._lock:
            ready, pending = v in self._tables, self._pending == v
        if not ready and pending:
            self._join("step %d needs version %d" % (step, v))
        self._check()  # a build that failed meanwhile explains a missing version best
        with self._lock:
            if v not in self._tables:
                raise RuntimeError(
                    f"pairs/service.py: step {step} needs pair table version {v}, which was never built: "
                    f"maybe_refresh({v * self.refresh_every}, ...) was not called, or a resumed "
                    f"run's checkpoint lacks it (have versions {sorted(self._tables)})")
            for old in [u for u in self._tables if u < v]:
                del self._tables[old]  # steps only move forward; keep memory bounded
            return self._tables[v]

    def tables_for_checkpoint(self, step: int) -> list:
        """Every table that steps >= ``step`` may need (waits for a running build), oldest first."""
        self._join("checkpoint at step %d" % step)
        self._check()
        v = self.version_for_step(step)
        with self._lock:
            return [self._tables[u] for u in sorted(self._tables) if u >= v]

    def publish(self, table: PairTable) -> None:
        """Adds an already built table (e.g. restored from a checkpoint)."""
        if not isinstance(table, PairTable):
            raise TypeError(f"pairs/service.py: publish needs a PairTable, got {type(table).__name__}")
        with self._lock:
            self._tables[table.version] = table

    def close(self) -> None:
        """Waits for a running build; re-raises its error unless it was already reported."""
        self._join(None)
        if self._error is not None and not self._reported:
            self._check()

    # -- internals
    def _run(self, v, snapshot):
        try:
            table = self._build_fn(v, snapshot)
            if not isinstance(table, PairTable) or table.version != v:
                raise TypeError(f"build_fn({v}, snapshot) must return a PairTable with version {v}, "
                                f"got {type(table).__name__} version {getattr(table, 'version', None)}")
            with self._lock:
                self._tables[v] = table
        except BaseException as e:  # noqa: BLE001 -- handed to the training thread
            with self._lock:
                self._error = (v, e)
        finally:
            with self._lock:
                self._pending = None

    def _join(self, why):
        t = self._thread
        if t is None:
            return
        if t.is_alive() and why is not None:
            t0 = time.monotonic()
            t.join()
            logging.warning("pairs: training waited %.2f s for pair table build %s (%s); "
                            "raise refresh_every or speed up the build", time.monotonic() - t0,
                            t.name, why)
        t.join()
        self._thread = None

    def _check(self):
        if self._error is not None:
            self._reported = True
            v, e = self._error
            raise RuntimeError(f"pairs/service.py: building pair table version {v} failed: {e!r}") from e


# --------------------------------------------------------------------------- from an encoder
def table_from_embeddings(config, emb, valid, speaker_labels, lengths, version):
    """The pair table of one version from utterance embeddings (rows of unreadable or empty
    files take no part), with indices into the full utterance list. config: a pretraining
    config (its ``pairs`` fields and ``seed``)."""
    keep = np.flatnonzero(valid & (np.asarray(lengths) > 0))
    table = build_lib.build_pair_table(
        emb[keep], np.asarray(speaker_labels)[keep], k=config.pairs.k or None,
        k_range=tuple(range(2, config.pairs.max_k + 1)), k_rule=config.pairs.k_rule,
        cluster_size=config.pairs.cluster_size, num_negatives=config.pairs.num_negatives,
        cross_speaker_negatives=config.pairs.cross_speaker_negatives, seed=config.seed, version=version)
    clusters = np.full(len(lengths), -1, np.int32)
    clusters[keep] = table.clusters
    table = dataclasses.replace(
        table, anchors=keep[table.anchors].astype(np.int32), positives=keep[table.positives].astype(np.int32),
        negatives=keep[table.negatives].astype(np.int32), clusters=clusters,
        speakers=np.asarray(speaker_labels, np.int32))
    logging.info("pairs v%d: %s", version, json.dumps(table.stats, default=str)[:600])
    return table


def table_from_encoder(config, paths, speaker_labels, lengths, skip_log, embedding_cache=None):
    """The initial pair table (version 0) from the clusters of `config.pairs.encoder`'s embeddings.

    `embedding_cache` (a dict) lets several runs over the same utterances and pair encoder
    (the arms and seeds of an experiment) embed them once.
    """
    from emosup.models.encoders import Encoder, embed_paths

    if not config.pairs.encoder:
        raise ValueError(
            f"config.pairs.encoder is empty: {config.get('objective', 'this arm')!r} draws its pairs from the "
            "intra-speaker clusters of a speaker encoder; give an emosup checkpoint or a folder "
            "written by `python -m emosup.convert`")
    key = (str(pathlib.Path(config.pairs.encoder).absolute()), tuple(paths))
    if embedding_cache is not None and key in embedding_cache:
        emb, valid = embedding_cache[key]
    else:
        enc = Encoder(config.pairs.encoder)
        logging.info("pairs: embedding %d utterances with %s", len(paths), enc.name)
        emb, _, valid = embed_paths(enc, paths, skip_log=skip_log)
        if embedding_cache is not None:
            embedding_cache[key] = (emb, valid)
    return table_from_embeddings(config, emb, valid, speaker_labels, lengths, version=0)


def refresh_builder(config, model_config, paths, speaker_labels, lengths, skip_log, mesh):
    """`build_fn(version, snapshot)` for the PairService: embeds every training utterance with
    the encoder being trained (`snapshot` = its host-side variables at step version·R) and
    clusters them again. Runs in the service's thread; one jitted embedder serves every build."""
    from emosup.models.encoders import Encoder, embed_paths

    embedder = {}

    def build(version, snapshot):
        if "enc" not in embedder:
            embedder["enc"] = Encoder(model_config=model_config, variables=snapshot,
                                      name="the encoder being trained")
        enc = embedder["enc"]
        enc.variables = snapshot
        t0 = time.time()
        emb, _, valid = embed_paths(enc, paths, mesh=mesh, skip_log=skip_log, progress=False)
        table = table_from_embeddings(config, emb, valid, speaker_labels, lengths, version)
        logging.info("pairs: built table v%d from the step-%d encoder in %.1fs", version,
                     version * config.pairs.refresh_every, time.time() - t0)
        return table

    return build


def encoder_snapshot(state):
    """Host copy of the encoder's variables (taken before the next step donates the state)."""
    return jax.device_get({"params": state.params["encoder"],
                           "batch_stats": state.batch_stats.get("encoder", {})})


def report_quality(tables, rows, speakers, workdir):
    """Where the training rows carry emotion labels (they are never used for training): how often
    each table's positives share their anchor's emotion and its negatives do not, against
    chance (``table.pair_quality``); logged and written to DIR/pairs.json. Returns the first
    table's figures, or None without labels."""
    emotions = [u.emotion for u in rows]
    if not any(emotions):
        return None
    out = {}
    for t in tables:
        q = pair_quality(t, emotions, speaker_names=speakers)
        if q is None:
            continue
        q["k_rule"], q["k_counts"] = t.stats.get("k_rule"), t.stats.get("k_counts")
        out[str(t.version)] = q
        logging.info("pairs v%d quality (emotion labels, measured only): positive shares the anchor's "
                     "emotion %.3f (chance %.3f), negative has another emotion %s (chance %.3f); "
                     "%d anchors, k rule %s", t.version, q["positive_same_emotion"],
                     q["chance_positive_same_emotion"],
                     "n/a" if q["negative_other_emotion"] is None else f"{q['negative_other_emotion']:.3f}",
                     q["chance_negative_other_emotion"], q["anchors"], q["k_rule"])
    if not out:
        return None
    if jax.process_index() == 0:
        (pathlib.Path(workdir) / "pairs.json").write_text(json.dumps(out, indent=2))
    return next(iter(out.values()))


# --------------------------------------------------------------------------- checkpoint
def tables_to_arrays(tables):
    """{"v<version>": table arrays} of the tables a checkpoint holds."""
    return {f"v{t.version}": t.to_arrays() for t in tables}


def tables_from_arrays(saved):
    """Pair tables of a checkpoint, oldest first; also reads the single-table layout."""
    if "anchors" in saved:
        return [PairTable.from_arrays(saved)]
    tables = [PairTable.from_arrays(saved[k]) for k in saved]
    return sorted(tables, key=lambda t: t.version)
