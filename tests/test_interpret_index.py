"""CaseIndex: exact queries equal brute force, HNSW agrees, and the index round-trips through bundle files."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from interpret_fixtures import SmallCNN

from medsuite.interpret.index import (
    CASES_FILE,
    HNSW_FILE,
    CaseIndex,
    build_case_index,
    knn_agreement,
    thumbnail,
)
from medsuite.learn.predict import Predictor


def _index(n: int = 500, d: int = 16, seed: int = 0) -> CaseIndex:
    rng = np.random.default_rng(seed)
    thumbs = rng.integers(0, 255, (n, 8, 8), dtype=np.uint8)
    return CaseIndex(rng.standard_normal((n, d)), [f"case{i}" for i in range(n)], list(rng.integers(0, 2, n)), thumbs,
                     {"model": "test"})


def test_exact_query_equals_brute_force():
    index = _index()
    q = np.random.default_rng(1).standard_normal((7, 16))
    rows, sims = index.exact_query(q, k=10)
    qn = q / np.linalg.norm(q, axis=1, keepdims=True)
    brute = qn @ index.embeddings.T
    np.testing.assert_array_equal(rows, np.argsort(-brute, axis=1)[:, :10])
    np.testing.assert_allclose(sims, np.sort(brute, axis=1)[:, ::-1][:, :10], rtol=1e-5)
    ids, s1 = index.query(q[0], k=3)
    assert ids == [[index.case_ids[r] for r in rows[0, :3]]]
    assert np.all(np.diff(s1[0]) <= 0)
    assert index.exact_query(q[:1], k=10_000)[0].shape == (1, 500)  # k larger than the library


def test_embeddings_are_unit_float32_and_inputs_checked():
    index = _index()
    assert index.embeddings.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(index.embeddings, axis=1), 1.0, rtol=1e-5)
    with pytest.raises(ValueError, match="case ids"):
        CaseIndex(np.ones((3, 4)), ["a", "b"])
    with pytest.raises(ValueError, match="unique"):
        CaseIndex(np.ones((2, 4)), ["a", "a"])
    with pytest.raises(ValueError, match="uint8"):
        CaseIndex(np.ones((2, 4)), ["a", "b"], thumbnails=np.zeros((2, 4, 4), np.float32))
    with pytest.raises(ValueError, match=r"shape \(m, 16\)"):
        index.query(np.ones((1, 3)))


def test_hnsw_recall_and_round_trip_through_extra_files():
    index = _index(2000, 16).build_ann(m=16, ef_construction=100, ef=100)
    q = np.random.default_rng(2).standard_normal((50, 16))
    exact, _ = index.query_rows(q, 10, exact=True)
    approx, sims = index.query_rows(q, 10)
    recall = np.mean([len(set(a) & set(e)) / 10 for a, e in zip(approx, exact, strict=True)])
    assert recall >= 0.95
    files = index.to_extra_files()
    assert HNSW_FILE in files and all(isinstance(v, bytes) for v in files.values())
    back = CaseIndex.from_extra_files(files)
    assert back.has_ann and back.case_ids == index.case_ids and back.labels == [int(v) for v in index.labels]
    np.testing.assert_array_equal(back.thumbnails, index.thumbnails)
    np.testing.assert_array_equal(back.query_rows(q, 10)[0], approx)
    # without the graph file it is rebuilt from the recorded parameters
    rebuilt = CaseIndex.from_extra_files({k: v for k, v in files.items() if k != HNSW_FILE})
    assert rebuilt.has_ann


def test_from_bundle_and_corrupt_files():
    index = _index(50)
    files = index.to_extra_files()
    bundle = SimpleNamespace(name="b", read_extra=files.get)
    back = CaseIndex.from_bundle(bundle)
    np.testing.assert_array_equal(back.embeddings, index.embeddings)
    assert CaseIndex.from_bundle(SimpleNamespace(name="empty", read_extra=lambda n: None)) is None
    with pytest.raises(ValueError, match="not valid JSON"):
        CaseIndex.from_extra_files({**files, CASES_FILE: b"{"})
    with pytest.raises(ValueError, match="hnswlib"):
        CaseIndex.from_extra_files({**files, HNSW_FILE: b"garbage" * 10})


def test_build_case_index_embeds_in_batches_and_knn_agreement():
    model = SmallCNN(in_ch=1)
    rng = np.random.default_rng(0)
    x = rng.random((12, 1, 16, 16), dtype=np.float32)
    x[6:] += 2.0  # two well separated groups
    y = np.array([0] * 6 + [1] * 6)
    loader = [(torch.as_tensor(x[i:i + 5]), torch.as_tensor(y[i:i + 5])) for i in range(0, 12, 5)]
    index = build_case_index(Predictor.plain(model, ["a", "b"]), loader, [f"n{i}" for i in range(12)])
    assert len(index) == 12 and index.labels == y.tolist()
    assert index.thumbnails.shape == (12, 64, 64) and index.thumbnails.dtype == np.uint8
    with torch.no_grad():
        emb = model.embed(torch.as_tensor(x)).numpy()
    centred = emb - emb.mean(axis=0)  # the index compares centred features (raw post-ReLU cosines crowd near 1)
    np.testing.assert_allclose(index.embeddings[3], centred[3] / np.linalg.norm(centred[3]), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(index.centre, emb.mean(axis=0), rtol=1e-5, atol=1e-6)
    assert knn_agreement(index, emb, y.tolist(), k=3, exclude_ids=index.case_ids) == 1.0
    assert knn_agreement(index, emb, (1 - y).tolist(), k=3, exclude_ids=index.case_ids) == 0.0
    with pytest.raises(ValueError, match="case ids"):
        build_case_index(Predictor.plain(model, ["a", "b"]), loader, ["a"])
    with pytest.raises(TypeError, match="needs a medsuite.learn.predict.Predictor"):
        build_case_index(model, loader, [f"n{i}" for i in range(12)])


def test_thumbnail_is_the_central_plane():
    s = np.zeros((3, 2, 10, 10), np.float32)
    s[1, 1, 2:8, 2:8] = 5.0
    t = thumbnail(s, 20)
    assert t.shape == (20, 20) and t.dtype == np.uint8 and t.max() == 255 and t[0, 0] == 0


def test_centred_similarities_spread_and_travel_with_facts_and_stacks():
    """Post-ReLU features: raw cosines all near 1, centred ones spread; the closeness percentile is the rank of a
    similarity among the reference cases' own nearest-neighbour similarities; info, stacks and the centre
    survive the bundle round trip; thumbnails of windowed samples share one scale."""
    rng = np.random.default_rng(1)
    raw = np.abs(rng.normal(1.0, 0.15, (200, 32))).astype(np.float32)  # all positive, like pooled ReLU maps
    unit = raw / np.linalg.norm(raw, axis=1, keepdims=True)
    assert (unit @ unit.T).min() > 0.9  # the collapse the viewer used to show ("every case 0.99 similar")
    idx = CaseIndex(raw - raw.mean(0), [f"c{i}" for i in range(200)], ["m"] * 200, centre=raw.mean(0),
                    info=[{"diameter_mm": float(i)} for i in range(200)],
                    stacks=np.zeros((200, 3, 4, 4), np.uint8), meta={"stack_spacing_mm": [2.0, 0.8, 0.8]})
    rows, sims = idx.exact_query(raw[:20], k=10)
    assert np.all(rows[:, 0] == np.arange(20)) and np.allclose(sims[:, 0], 1.0, atol=1e-5)
    spread = sims[:, 1:]
    assert spread.max() < 0.9 and spread.min() < 0.5  # neighbours now differ in how similar they are
    q = idx.nn_similarity_quantiles()
    assert q.shape == (101,) and np.all(np.diff(q) >= 0)
    assert idx.closeness_percentile(float(q[50])) == pytest.approx(50.0, abs=1.0)
    assert idx.closeness_percentile(1.0) == 100.0 and idx.closeness_percentile(-1.0) == 0.0
    back = CaseIndex.from_extra_files(idx.to_extra_files())
    np.testing.assert_allclose(back.centre, idx.centre)
    assert back.info[7] == {"diameter_mm": 7.0} and back.stacks.shape == (200, 3, 4, 4)
    np.testing.assert_allclose(back.exact_query(raw[:3], 5)[1], idx.exact_query(raw[:3], 5)[1], atol=1e-6)
    assert back.meta["nn_similarity_quantiles"] == pytest.approx(list(q))
    # windowed samples: one fixed scale for every case (a faint case stays faint, a blank plane is not stretched)
    faint = np.full((2, 8, 8), 0.2, np.float32)
    faint[0, 2:6, 2:6] = 0.3
    t = thumbnail(faint, 8, preview=lambda s: s[0], value_range=(0.0, 1.0))
    assert t.max() == round(0.3 * 255) and t.min() == round(0.2 * 255)


@pytest.mark.parametrize(("field", "images"), [
    ("thumbnails", np.zeros((3, 8, 8), dtype=np.float32)),   # not uint8
    ("thumbnails", np.zeros((2, 8, 8), dtype=np.uint8)),     # one short
    ("stacks", np.zeros((3, 8, 8), dtype=np.uint8)),         # no depth axis
])
def test_case_index_refuses_images_of_the_wrong_kind(field, images):
    with pytest.raises(ValueError, match=f"CaseIndex: {field} must be uint8 \\(n=3"):
        CaseIndex(np.eye(3, 4, dtype=np.float32), ["a", "b", "c"], **{field: images})
