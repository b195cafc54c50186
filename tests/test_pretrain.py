"""Pair objectives end to end on the tiny synthetic corpus: a crashed run resumes to the
unbroken run's exact parameters with the pair table restored from the checkpoint."""
import json

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from helpers import REPO, export_random_tiny_ecapa, load_config, use_tiny_corpus

from emosup.trainers import pretrain
from emosup.pairs import service as pair_service

PRETRAIN = REPO / "configs" / "pretrain.py"


@pytest.fixture(scope="module")
def pair_encoder(tmp_path_factory):
    """A random tiny encoder exported as a converted one would be (its clusters give pairs)."""
    return export_random_tiny_ecapa(tmp_path_factory.mktemp("enc") / "enc", 7)


def _config(objective, corpus_dir, encoder, steps):
    c = load_config(PRETRAIN, f"objective={objective},pairs_encoder={encoder},synthetic_dir={corpus_dir},"
                              f"steps={steps},batch_size=8")
    c.unlock()
    use_tiny_corpus(c, corpus_dir)
    c.data.crop_seconds, c.log_every, c.checkpoint_every = 1.0, 2, 3
    c.optim.warmup_steps = 1
    c.pairs.k = 2
    c.pairs.num_negatives = 2
    return c


def _state(workdir):
    mngr = ocp.CheckpointManager(workdir / "checkpoints")
    step = mngr.latest_step()
    state = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore())).state
    mngr.close()
    return step, [np.asarray(x) for x in jax.tree.leaves(state)]


@pytest.mark.parametrize("objective", ["contrastive", "multitask", "adversarial"])
def test_objective_trains(objective, tmp_path, synthetic_corpus_dir, pair_encoder):
    result = pretrain.run(_config(objective, synthetic_corpus_dir, pair_encoder, 4), tmp_path)
    assert np.isfinite(result["final"]["loss"])
    assert "contrastive_loss" in result["final"]
    assert ("speaker_loss" in result["final"]) == (objective != "contrastive")


def test_crash_and_resume_is_exact_with_the_pair_table(tmp_path, synthetic_corpus_dir, pair_encoder,
                                                        monkeypatch):
    cfg = _config("multitask", synthetic_corpus_dir, pair_encoder, 8)
    pretrain.run(cfg, tmp_path / "unbroken")

    real = pretrain.pipeline.pair_batches

    def crash_after_4_batches(*args, **kwargs):
        it = real(*args, **kwargs)
        for _ in range(4):  # steps 1..4 run (step 3 checkpointed), step 5 never comes
            yield next(it)
        raise KeyboardInterrupt("simulated crash")

    monkeypatch.setattr(pretrain.pipeline, "pair_batches", crash_after_4_batches)
    with pytest.raises(KeyboardInterrupt):
        pretrain.run(cfg, tmp_path / "crashed")
    monkeypatch.setattr(pretrain.pipeline, "pair_batches", real)
    assert (tmp_path / "crashed" / "checkpoints" / "3").is_dir()
    built = {"n": 0}
    real_build = pair_service.table_from_encoder

    def counting_build(*a, **k):
        built["n"] += 1
        return real_build(*a, **k)

    monkeypatch.setattr(pair_service, "table_from_encoder", counting_build)
    pretrain.run(cfg, tmp_path / "crashed")
    assert built["n"] == 0, "a resumed run takes its pair table from the checkpoint"
    step_a, a = _state(tmp_path / "unbroken")
    step_b, b = _state(tmp_path / "crashed")
    assert step_a == step_b == 8
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)


def test_pair_objective_needs_an_encoder(tmp_path, synthetic_corpus_dir):
    cfg = _config("contrastive", synthetic_corpus_dir, "", 2)
    with pytest.raises(ValueError, match=r"config.pairs.encoder is empty"):
        pretrain.run(cfg, tmp_path)


def test_refreshed_pair_tables_resume_exactly(tmp_path, synthetic_corpus_dir, pair_encoder, monkeypatch):
    """refresh_every=2: tables v1, v2, v3 are built from the encoder being trained at steps 2,
    4, 6 and used from steps 4, 6, 8; a crash after step 5 resumes (checkpoint 3 holds v0 and
    the v1 it needs) to the unbroken run's exact parameters."""
    cfg = _config("contrastive", synthetic_corpus_dir, pair_encoder, 9)
    cfg.unlock()
    cfg.pairs.refresh_every = 2

    used = []
    real = pretrain.pipeline.pair_batches

    def recording(paths, labels, lengths, table, **kw):
        used.append((kw["start_step"], kw["num_steps"], table.version, table.fingerprint()))
        return real(paths, labels, lengths, table, **kw)

    monkeypatch.setattr(pretrain.pipeline, "pair_batches", recording)
    pretrain.run(cfg, tmp_path / "unbroken")
    assert [(a, b, v) for a, b, v, _ in used] == [(0, 2, 0), (2, 4, 0), (4, 6, 1), (6, 8, 2), (8, 9, 3)]
    fingerprints = {v: f for _, _, v, f in used}
    assert len(set(fingerprints.values())) == 4, "each refresh re-clusters: a new table"

    crashed_used, count = [], {"n": 0}

    def crash_after_5_batches(paths, labels, lengths, table, **kw):
        crashed_used.append((kw["start_step"], table.version, table.fingerprint()))
        for b in real(paths, labels, lengths, table, **kw):
            if count["n"] == 5:
                raise KeyboardInterrupt("simulated crash")
            count["n"] += 1
            yield b

    monkeypatch.setattr(pretrain.pipeline, "pair_batches", crash_after_5_batches)
    with pytest.raises(KeyboardInterrupt):
        pretrain.run(cfg, tmp_path / "crashed")
    assert (tmp_path / "crashed" / "checkpoints" / "3").is_dir()
    mngr = ocp.CheckpointManager(tmp_path / "crashed" / "checkpoints")
    saved = mngr.restore(3, args=ocp.args.Composite(pairs=ocp.args.StandardRestore())).pairs
    mngr.close()
    assert sorted(saved) == ["v0", "v1"], "checkpoint 3 keeps the table in use and the one built at step 2"

    monkeypatch.setattr(pretrain.pipeline, "pair_batches", recording)
    used.clear()
    pretrain.run(cfg, tmp_path / "crashed")
    # resumed at step 3 (checkpoint): v0 for step 3, then v1 (restored), v2 and v3 rebuilt
    assert [(a, b, v) for a, b, v, _ in used] == [(3, 4, 0), (4, 6, 1), (6, 8, 2), (8, 9, 3)]
    assert all(fingerprints[v] == f for _, _, v, f in used), "the same tables as the unbroken run"
    step_a, a = _state(tmp_path / "unbroken")
    step_b, b = _state(tmp_path / "crashed")
    assert step_a == step_b == 9
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)


def test_init_starts_pretraining_from_the_given_encoder(tmp_path, synthetic_corpus_dir, pair_encoder):
    """config.init: the trained state's encoder starts as the init's weights (kept bit for bit at
    lr 0, while a run without init holds other weights), its architecture is the init's, and the
    result names what was loaded; the table's pair quality is reported (the tiny corpus's
    unlabelled rows carry emotions)."""
    from emosup import checkpoint

    init = export_random_tiny_ecapa(tmp_path / "init", 11)
    _, init_vars = checkpoint.load_encoder_variables(init)
    runs = {}
    for name, path in (("with", str(init)), ("without", "")):
        cfg = _config("contrastive", synthetic_corpus_dir, pair_encoder, 2)
        cfg.init, cfg.optim.lr = path, 0.0
        result = pretrain.run(cfg, tmp_path / name)
        runs[name] = checkpoint.load_encoder_variables(tmp_path / name)[1]["params"], result
    params, result = runs["with"]
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(init_vars["params"]), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert result["init"]["params_fingerprint"] == checkpoint.params_fingerprint(init_vars["params"])
    assert result["init"]["path"] == str(init.absolute())
    other, plain = runs["without"]
    assert "init" not in plain
    assert any(not np.array_equal(np.asarray(a), np.asarray(b))
               for a, b in zip(jax.tree.leaves(other), jax.tree.leaves(init_vars["params"])))
    q = result["pair_quality"]
    assert q["k_rule"] == "fixed" and q["anchors"] > 0
    assert 0.0 <= q["chance_positive_same_emotion"] <= 1.0 and set(q["per_speaker"]) <= set(
        json.loads((tmp_path / "with" / "model.json").read_text())["speakers"])
    assert json.loads((tmp_path / "with" / "pairs.json").read_text())["0"]["anchors"] == q["anchors"]


def test_init_of_another_family_is_refused(tmp_path, synthetic_corpus_dir, pair_encoder):
    bad = tmp_path / "w2v2"
    bad.mkdir()
    (bad / "model.json").write_text(json.dumps({"encoder": "wav2vec2", "wav2vec2": {}}))
    cfg = _config("contrastive", synthetic_corpus_dir, pair_encoder, 2)
    cfg.init = str(bad)
    with pytest.raises(ValueError, match="holds a 'wav2vec2' encoder; pretraining starts from an ECAPA"):
        pretrain.validate(cfg)
