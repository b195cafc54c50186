"""What a batch holds, checked against the files and the pair table, not against the samplers.

Every test file here is a ramp whose samples spell out (file, sample index): sample j of file
f is (f·2^15 + j + 1) / 2^24, exact in float32, never 0. So the first sample of any crop row
names the file and the offset it was cut at, and the rest of the row can be compared with the
file sample by sample. A crop row must be that file's samples from that offset (zeros past
its end) with that file's label; a pair row must be [anchor, positive, negatives] with the
positive from the anchor's speaker and intra-speaker cluster, the negatives from the same
speaker's other clusters. The clusters are built into the embeddings the table is made from,
so they are known here independently of the table.
"""
import numpy as np
import pytest
from helpers import write_wav

from emosup import config_lib
from emosup.data import pipeline
from emosup.pairs import service as pair_service

CROP = 4000
# Some files shorter than the crop (padded rows), one exactly the crop, the rest longer.
LENGTHS = [6000, 3000, 9000, 4000, 12000, 5000, 7000, 2500, 8000, 10000]
SPEAKERS = [0, 0, 0, 0, 0, 1, 1, 1, 1, 1]
CLUSTERS = [0, 0, 0, 1, 1, 2, 2, 3, 3, 3]  # two per speaker, as the embeddings below make them
SCALE = 2.0 ** 24


def _ramp(f, n):
    return ((f << 15) + np.arange(n) + 1) / SCALE


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("ramps")
    return [str(write_wav(d / f"f{f}.wav", _ramp(f, n), subtype="FLOAT")) for f, n in enumerate(LENGTHS)]


def _decode(row, n_valid):
    """(file, offset) that a crop row was cut from, after checking the row sample by sample."""
    code = int(round(float(row[0]) * SCALE)) - 1
    f, offset = code >> 15, code & 0x7FFF
    n = min(LENGTHS[f] - offset, CROP)
    assert n_valid == n, "lengths = the file's samples left after the offset, at most the crop"
    np.testing.assert_array_equal(row[:n], _ramp(f, LENGTHS[f])[offset:offset + n].astype(np.float32))
    assert not row[n:].any(), "zeros past the end of the file"
    assert 0 <= offset <= max(LENGTHS[f] - CROP, 0)
    return f, offset


def _crop_batches(files, labels, *, local_batch, process_index, steps=5, global_batch=4):
    return list(pipeline.crop_batches(
        files, labels, np.array(LENGTHS), crop_samples=CROP, global_batch=global_batch, local_batch=local_batch,
        process_index=process_index, seed=3, start_step=0, num_steps=steps, skip_log=pipeline.SkipLog()))


def test_a_crop_row_is_its_file_at_its_offset_with_its_label(files):
    labels = np.arange(100, 100 + len(files))  # one label per file: a row's label names its file
    batches = _crop_batches(files, labels, local_batch=4, process_index=0)
    seen = []
    for b in batches:
        assert b["audio"].shape == (4, CROP) and b["audio"].dtype == np.float32
        for row, n, label, w in zip(b["audio"], b["lengths"], b["labels"], b["weights"]):
            f, offset = _decode(row, n)
            assert label == labels[f] and w == 1.0
            seen.append((f, offset))
    files_seen = [f for f, _ in seen]
    # 20 rows = two epochs of 10 files: each epoch visits every file exactly once.
    assert sorted(files_seen[:10]) == sorted(files_seen[10:]) == list(range(10))
    assert len({o for _, o in seen if LENGTHS[_] > CROP}) > 3, "offsets are drawn, not always 0"


def test_each_host_reads_its_own_rows_of_the_global_batch(files):
    labels = np.arange(len(files))
    whole = _crop_batches(files, labels, local_batch=4, process_index=0)
    hosts = [_crop_batches(files, labels, local_batch=2, process_index=p) for p in (0, 1)]
    for step, b in enumerate(whole):
        for p in (0, 1):
            for key in b:
                np.testing.assert_array_equal(hosts[p][step][key], b[key][2 * p:2 * p + 2])


@pytest.fixture(scope="module")
def table():
    """The pair table built the way training builds it, from embeddings that put each
    speaker's files into the two CLUSTERS (one file unreadable: it must take no part)."""
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((4, 16))
    emb = centres[CLUSTERS] + 0.01 * rng.standard_normal((len(CLUSTERS), 16))
    valid = np.ones(len(CLUSTERS), bool)
    cfg = config_lib.pretrain_config(objective="contrastive")
    cfg.pairs.k, cfg.pairs.num_negatives = 2, 2
    return emb, valid, cfg


def test_a_pair_row_is_anchor_positive_then_negatives_of_the_anchors_speaker(files, table):
    emb, valid, cfg = table
    t = pair_service.table_from_embeddings(cfg, emb, valid, np.array(SPEAKERS), np.array(LENGTHS), version=0)
    rows = {(int(a), int(p), tuple(int(x) for x in n)) for a, p, n in zip(t.anchors, t.positives, t.negatives)}
    labels = np.array(SPEAKERS) + 7
    batches = list(pipeline.pair_batches(
        files, labels, np.array(LENGTHS), t, crop_samples=CROP, global_batch=4, local_batch=4, process_index=0,
        seed=5, start_step=0, num_steps=5, skip_log=pipeline.SkipLog()))
    anchors = []
    for b in batches:
        assert b["audio"].shape == (4, 2 + 2, CROP) and b["lengths"].shape == (4, 4)
        for group, n, label, w in zip(b["audio"], b["lengths"], b["labels"], b["weights"]):
            a, p, *negs = [_decode(row, k)[0] for row, k in zip(group, n)]
            assert (a, p, tuple(negs)) in rows, "the group is a row of the table, in its order"
            assert p != a and SPEAKERS[p] == SPEAKERS[a] and CLUSTERS[p] == CLUSTERS[a]
            for x in negs:
                assert SPEAKERS[x] == SPEAKERS[a] and CLUSTERS[x] != CLUSTERS[a]
            assert label == labels[a] and w == 1.0
            anchors.append(a)
    # Every file is an anchor (each cluster has >= 2 members); an epoch visits each once.
    assert len(t) == 10 and sorted(anchors[:10]) == list(range(10))


def test_the_pair_table_indexes_the_full_utterance_list(files, table):
    """Rows without an embedding (unreadable, empty) are left out of the clustering, and the
    table's indices still point into the full list the pipeline reads from."""
    emb, valid, cfg = table
    emb, valid, lengths = emb.copy(), valid.copy(), np.array(LENGTHS)
    emb[2], valid[2] = np.nan, False   # unreadable
    lengths[6] = 0                     # empty
    t = pair_service.table_from_embeddings(cfg, emb, valid, np.array(SPEAKERS), lengths, version=0)
    assert t.clusters[2] == -1 and t.clusters[6] == -1
    used = np.concatenate([t.anchors, t.positives, t.negatives.ravel()])
    assert 2 not in used and 6 not in used
    for a, p, negs in zip(t.anchors, t.positives, t.negatives):
        assert SPEAKERS[p] == SPEAKERS[a] and CLUSTERS[p] == CLUSTERS[a] and p != a
        assert all(SPEAKERS[x] == SPEAKERS[a] and CLUSTERS[x] != CLUSTERS[a] for x in negs)
    # without file 6, file 5 is alone in its cluster: no positive, so not an anchor
    assert sorted(t.anchors) == [0, 1, 3, 4, 7, 8, 9]


def test_a_pair_group_with_an_unreadable_file_leaves_the_loss(files, table, tmp_path):
    emb, valid, cfg = table
    t = pair_service.table_from_embeddings(cfg, emb, valid, np.array(SPEAKERS), np.array(LENGTHS), version=0)
    broken = list(files)
    broken[3] = str(tmp_path / "gone.wav")  # deleted after its length was scanned
    skip_log = pipeline.SkipLog()
    batches = list(pipeline.pair_batches(
        broken, np.array(SPEAKERS), np.array(LENGTHS), t, crop_samples=CROP, global_batch=4, local_batch=4,
        process_index=0, seed=5, start_step=0, num_steps=3, skip_log=skip_log))
    sampler = pipeline.PairSampler(t, np.array(LENGTHS), CROP, 4, 5)
    hit = 0
    for step, b in enumerate(batches):
        for r in range(4):
            utts, _ = sampler(step, r)
            if 3 in utts:
                hit += 1
                assert b["weights"][r] == 0.0 and not b["audio"][r].any()
            else:
                assert b["weights"][r] == 1.0
    assert hit > 0 and broken[3] in skip_log.as_dict()
