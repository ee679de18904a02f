"""`CaseIndex`: reference-case embeddings for "similar past cases", exact or approximate (HNSW) cosine top-k.

The index travels inside a model bundle as extra files (`INDEX_FILES`): embeddings and labels in
safetensors, uint8 thumbnails in safetensors (so the viewer needs no original scans), ids, per-case facts
(e.g. the diameter) and meta in JSON, optionally each case's input patch (first window, uint8) so that a viewer
can open it, and optionally the hnswlib graph in hnswlib's own binary format (no pickle anywhere).

Similarities are cosines of **centred** features: penultimate features after a ReLU and global pooling are all
non-negative, so their raw cosines crowd near 1 (every case looks "0.99 similar"); subtracting the reference
cases' mean feature (kept as ``centre`` and subtracted from queries too) spreads them over [-1, 1].
``meta["nn_similarity_quantiles"]`` holds the distribution of each reference case's similarity to its own
nearest neighbour, so a viewer can say how close a match is in terms of the index itself.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from medsuite.learn.predict import Predictor

EMBEDDINGS_FILE = "index/embeddings.safetensors"
THUMBNAILS_FILE = "index/thumbnails.safetensors"
STACKS_FILE = "index/stacks.safetensors"
CASES_FILE = "index/cases.json"
HNSW_FILE = "index/hnsw.bin"
INDEX_FILES = (EMBEDDINGS_FILE, THUMBNAILS_FILE, STACKS_FILE, CASES_FILE, HNSW_FILE)
FORMAT_VERSION = 1


def l2_normalise(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (float32); zero rows stay zero."""
    v = np.asarray(vectors, dtype=np.float32)
    if v.ndim != 2:
        raise ValueError(f"embeddings must be 2D (n, dim), got shape {v.shape}")
    norms = np.linalg.norm(v, axis=1, keepdims=True)
    unit = (norms == 0) | (np.abs(norms - 1.0) < 1e-6)  # already unit: kept bit-exact (round trips)
    return v / np.where(unit, 1.0, norms)


def _images(images: np.ndarray | None, name: str, n: int, axes: str) -> np.ndarray | None:
    """``images`` as a uint8 array of shape ``(n, *axes)``, or a ValueError naming what is wrong (None stays None)."""
    if images is None:
        return None
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 1 + len(axes.split(",")) or len(images) != n:
        raise ValueError(f"CaseIndex: {name} must be uint8 (n={n}, {axes}), got {images.dtype} {images.shape}")
    return images


class CaseIndex:
    """Reference cases: L2-normalised float32 embeddings ``(n, D)``, ids, labels, uint8 thumbnails ``(n, h, w)``.

    ``centre`` (D,), when given, is subtracted from every query's raw features before normalising (the stored
    ``embeddings`` are already centred: `build_case_index` does both). ``info`` holds per-case facts (a dict per
    case, e.g. ``{"diameter_mm": 6.2}``); ``stacks`` uint8 ``(n, d, h, w)`` each case's input patch (first
    window), spaced ``meta["stack_spacing_mm"]`` (z, y, x).

    ``query`` is exact cosine (one matrix product and ``argpartition``) unless `build_ann` was called and
    ``exact=False`` is asked; `exact_query` always is.
    """

    def __init__(
        self,
        embeddings: np.ndarray,
        case_ids: Sequence[str],
        labels: Sequence[Any] | None = None,
        thumbnails: np.ndarray | None = None,
        meta: dict[str, Any] | None = None,
        *,
        centre: np.ndarray | None = None,
        info: Sequence[dict[str, Any]] | None = None,
        stacks: np.ndarray | None = None,
    ) -> None:
        self.embeddings = l2_normalise(embeddings)
        n = len(self.embeddings)
        self.case_ids = [str(c) for c in case_ids]
        if len(self.case_ids) != n:
            raise ValueError(f"CaseIndex: {len(self.case_ids)} case ids for {n} embeddings")
        if len(set(self.case_ids)) != n:
            raise ValueError("CaseIndex: case ids must be unique")
        self.labels = list(labels) if labels is not None else [None] * n
        if len(self.labels) != n:
            raise ValueError(f"CaseIndex: {len(self.labels)} labels for {n} embeddings")
        self.thumbnails = _images(thumbnails, "thumbnails", n, "h, w")
        self.centre = None if centre is None else np.asarray(centre, dtype=np.float32).reshape(-1)
        if self.centre is not None and self.centre.shape[0] != self.embeddings.shape[1]:
            raise ValueError(f"CaseIndex: centre has {self.centre.shape[0]} values for {self.embeddings.shape[1]}-d embeddings")
        self.info = [dict(v or {}) for v in info] if info is not None else [{} for _ in range(n)]
        if len(self.info) != n:
            raise ValueError(f"CaseIndex: {len(self.info)} info entries for {n} embeddings")
        self.stacks = _images(stacks, "stacks", n, "d, h, w")
        self.meta = dict(meta or {})
        self._ann: Any = None
        self._ef: int = 64

    def __len__(self) -> int:
        return len(self.case_ids)

    @property
    def dim(self) -> int:
        return int(self.embeddings.shape[1])

    # ------------------------------------------------------------------ queries
    def _prep(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, int]:
        q = np.asarray(vectors, dtype=np.float32)
        q = q[None] if q.ndim == 1 else q
        if q.ndim != 2 or q.shape[1] != self.dim:
            raise ValueError(f"query vectors must have shape (m, {self.dim}), got {np.asarray(vectors).shape}")
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        if self.centre is not None:
            q = q - self.centre
        return l2_normalise(q), min(int(k), len(self))

    def exact_query(self, vectors: np.ndarray, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-``k`` by cosine: ``(row indices (m, k), similarities (m, k))``, best first."""
        q, k = self._prep(vectors, k)
        sims = np.ascontiguousarray((self.embeddings @ q.T).T)  # (m, n); a matrix-vector product when m == 1
        n = sims.shape[1]
        if k < n:
            part = np.argpartition(sims, n - k, axis=1)[:, n - k:]
        else:
            part = np.tile(np.arange(sims.shape[1]), (len(q), 1))
        top = np.take_along_axis(sims, part, axis=1)
        order = np.argsort(-top, axis=1, kind="stable")
        return np.take_along_axis(part, order, axis=1), np.take_along_axis(top, order, axis=1)

    def nn_similarity_quantiles(self, max_rows: int = 2000, seed: int = 0) -> np.ndarray:
        """Quantiles 0, 1, ..., 100 % of the reference cases' similarity to their own nearest other case (on
        up to ``max_rows`` sampled rows, exact); stored in ``meta["nn_similarity_quantiles"]`` once computed."""
        stored = self.meta.get("nn_similarity_quantiles")
        if stored is not None and len(stored) == 101:
            return np.asarray(stored, dtype=np.float64)
        n = len(self)
        if n < 2:
            return np.full(101, np.nan)
        rows = np.arange(n) if n <= max_rows else np.sort(np.random.default_rng(seed).choice(n, max_rows, replace=False))
        sims = self.embeddings[rows] @ self.embeddings.T
        sims[np.arange(len(rows)), rows] = -np.inf  # not itself
        q = np.quantile(sims.max(axis=1), np.linspace(0, 1, 101))
        self.meta["nn_similarity_quantiles"] = [float(v) for v in q]
        return q

    def closeness_percentile(self, similarity: float) -> float:
        """How close a match is, in the index's own terms: the percentage of reference cases whose nearest
        neighbour is *less* similar to them than ``similarity`` (50 = a typical nearest-neighbour pair)."""
        q = self.nn_similarity_quantiles()
        if not np.isfinite(q).all():
            return float("nan")
        return float(np.interp(similarity, q, np.linspace(0, 100, 101), left=0.0, right=100.0))

    def query(self, vectors: np.ndarray, k: int = 10, *, exact: bool | None = None) -> tuple[list[list[str]], np.ndarray]:
        """Top-``k`` neighbours of each vector: ``(case ids per query, cosine similarities (m, k))``.

        Uses the approximate graph when one was built (or loaded) unless ``exact=True``.
        """
        rows, sims = self.query_rows(vectors, k, exact=exact)
        return [[self.case_ids[i] for i in r] for r in rows], sims

    def query_rows(self, vectors: np.ndarray, k: int = 10, *, exact: bool | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Like `query` but returns row indices (into ``case_ids``/``labels``/``thumbnails``)."""
        use_ann = self._ann is not None if exact is None else not exact
        if not use_ann:
            return self.exact_query(vectors, k)
        if self._ann is None:
            raise ValueError("no approximate index: call build_ann() first")
        q, k = self._prep(vectors, k)
        self._ann.set_ef(max(self._ef, k))
        labels, dists = self._ann.knn_query(q, k=k)
        return labels.astype(np.int64), (1.0 - dists).astype(np.float32)

    # -------------------------------------------------------------- approximate
    def build_ann(self, *, m: int = 16, ef_construction: int = 100, ef: int = 64, threads: int = -1, seed: int = 0) -> CaseIndex:
        """Build an HNSW graph (hnswlib, cosine space) for large libraries; ``ef`` trades recall for speed."""
        import hnswlib

        graph = hnswlib.Index(space="cosine", dim=self.dim)
        graph.init_index(max_elements=len(self), ef_construction=ef_construction, M=m, random_seed=seed)
        graph.add_items(self.embeddings, np.arange(len(self)), num_threads=threads)
        self._ann, self._ef = graph, int(ef)
        self.meta["ann"] = {"M": m, "ef_construction": ef_construction, "ef": int(ef)}
        return self

    def set_ef(self, ef: int) -> None:
        """Search breadth of the HNSW graph (higher: better recall, slower)."""
        self._ef = int(ef)
        if "ann" in self.meta:
            self.meta["ann"]["ef"] = int(ef)

    @property
    def has_ann(self) -> bool:
        return self._ann is not None

    # ------------------------------------------------------------ serialisation
    def to_extra_files(self, *, include_ann: bool = True) -> dict[str, bytes]:
        """Bundle extra files (see `INDEX_FILES`); the HNSW graph is included when built and asked for."""
        from safetensors.numpy import save

        tensors = {"embeddings": np.ascontiguousarray(self.embeddings)}
        if self.centre is not None:
            tensors["centre"] = np.ascontiguousarray(self.centre)
        files = {EMBEDDINGS_FILE: save(tensors)}
        if self.thumbnails is not None:
            files[THUMBNAILS_FILE] = save({"thumbnails": np.ascontiguousarray(self.thumbnails)})
        if self.stacks is not None:
            files[STACKS_FILE] = save({"stacks": np.ascontiguousarray(self.stacks)})
        self.nn_similarity_quantiles()
        cases = {"format_version": FORMAT_VERSION, "case_ids": self.case_ids,
                 "labels": [_jsonable(v) for v in self.labels], "meta": self.meta, "dim": self.dim,
                 "info": [{k: _jsonable(v) for k, v in d.items()} for d in self.info]}
        files[CASES_FILE] = json.dumps(cases, indent=1).encode()
        if include_ann and self._ann is not None:
            with tempfile.TemporaryDirectory() as tmp:
                path = os.path.join(tmp, "hnsw.bin")
                self._ann.save_index(path)
                with open(path, "rb") as fh:
                    files[HNSW_FILE] = fh.read()
        return files

    @classmethod
    def from_extra_files(cls, files: dict[str, bytes | None], *, source: str = "bundle") -> CaseIndex | None:
        """Rebuild from `to_extra_files` output; None when the files hold no index."""
        from safetensors.numpy import load

        raw_cases = files.get(CASES_FILE)
        if raw_cases is None:
            return None
        try:
            cases = json.loads(raw_cases)
        except ValueError as exc:
            raise ValueError(f"{source}: {CASES_FILE} is not valid JSON ({exc})") from exc
        if cases.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{source}: {CASES_FILE} has format_version {cases.get('format_version')!r}, expected {FORMAT_VERSION}")
        raw_emb = files.get(EMBEDDINGS_FILE)
        if raw_emb is None:
            raise ValueError(f"{source}: {CASES_FILE} present but {EMBEDDINGS_FILE} missing")
        try:
            tensors = load(raw_emb)
            emb = tensors["embeddings"]
            thumbs = load(files[THUMBNAILS_FILE])["thumbnails"] if files.get(THUMBNAILS_FILE) else None
            stacks = load(files[STACKS_FILE])["stacks"] if files.get(STACKS_FILE) else None
        except Exception as exc:  # safetensors raises its own error types for a corrupt header
            raise ValueError(f"{source}: cannot read the case index tensors ({exc})") from exc
        try:
            index = cls(emb, cases["case_ids"], cases.get("labels"), thumbs, cases.get("meta"),
                        centre=tensors.get("centre"), info=cases.get("info"), stacks=stacks)
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{source}: the case index is inconsistent ({exc})") from None
        raw_graph = files.get(HNSW_FILE)
        if raw_graph is not None:
            index._load_ann(raw_graph, source)
        elif "ann" in index.meta:
            ann = index.meta["ann"]
            index.build_ann(m=ann["M"], ef_construction=ann["ef_construction"], ef=ann["ef"])
        return index

    def _load_ann(self, raw: bytes, source: str) -> None:
        import hnswlib

        graph = hnswlib.Index(space="cosine", dim=self.dim)
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "hnsw.bin")
            with open(path, "wb") as fh:
                fh.write(raw)
            try:
                graph.load_index(path, max_elements=len(self))
            except RuntimeError as exc:
                raise ValueError(f"{source}: {HNSW_FILE} is not a valid hnswlib index ({exc})") from exc
        if graph.get_current_count() != len(self):
            raise ValueError(f"{source}: {HNSW_FILE} holds {graph.get_current_count()} items, the index {len(self)}")
        self._ann = graph
        self._ef = int(self.meta.get("ann", {}).get("ef", 64))

    @classmethod
    def from_bundle(cls, bundle: Any) -> CaseIndex | None:
        """The index stored in a loaded bundle (``bundle.read_extra``), or None when it has none."""
        files = {name: bundle.read_extra(name) for name in INDEX_FILES}
        return cls.from_extra_files(files, source=str(getattr(bundle, "path", None) or getattr(bundle, "name", "bundle")))


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    return value


def thumbnail(sample: np.ndarray, size: int = 64, *, preview: Any = None,
              value_range: tuple[float, float] | None = None) -> np.ndarray:
    """A uint8 ``(size, size)`` picture of a sample: ``preview(sample)`` (the block's own display plane, e.g. the
    centre slice in the first window), else its central 2D plane. With ``value_range`` every case is scaled
    alike (a CT window's [0, 1]: the same contrast for all, comparable side by side); without, min-max."""
    import torch

    arr = np.asarray(preview(sample) if preview is not None else sample, dtype=np.float32)
    while arr.ndim > 2:
        arr = arr[arr.shape[0] // 2]
    lo, hi = value_range if value_range is not None else (float(arr.min()), float(arr.max()))
    arr = np.clip((arr - lo) / (hi - lo), 0.0, 1.0) if hi > lo else np.zeros_like(arr)
    t = torch.as_tensor(arr)[None, None]
    t = torch.nn.functional.interpolate(t, size=(size, size), mode="bilinear", align_corners=False)
    return np.clip(np.rint(t[0, 0].numpy() * 255), 0, 255).astype(np.uint8)


def input_stack(sample: np.ndarray, block_spec: dict[str, Any] | None) -> tuple[np.ndarray, tuple[float, float, float]] | None:
    """The first-window planes of a sample as a 3D stack ``(d, h, w)`` and its spacing (z, y, x) mm, for the
    blocks that have one (`SliceStack`: k axial planes; `Patch3D`: the box); None for the others."""
    spec = block_spec or {}
    x = np.asarray(sample)
    if spec.get("type") == "SliceStack":
        k, px = int(spec["k"]), float(spec["pixel_mm"])
        return x[:k], (float(spec["spacing_mm"]), px, px)
    if spec.get("type") == "Patch3D":
        sp = spec["spacing_mm"]
        sp = tuple(float(v) for v in (sp if isinstance(sp, (list, tuple)) else (sp, sp, sp)))
        return x[0], sp  # type: ignore[return-value]
    return None


def build_case_index(
    predictor: Predictor,
    batches: Iterable[Any],
    case_ids: Sequence[str],
    *,
    labels: Sequence[Any] | None = None,
    thumbnail_size: int = 64,
    meta: dict[str, Any] | None = None,
    preview: Any = None,
    value_range: tuple[float, float] | None = None,
    info: Sequence[dict[str, Any]] | None = None,
    block_spec: dict[str, Any] | None = None,
    centre: bool = True,
) -> CaseIndex:
    """Embed every item with the bundle's predictor (`Predictor.embed`, the model's penultimate features of
    the un-augmented sample) in batches and index them; the viewer queries with the same `embed`.

    ``batches`` yields input arrays/tensors or ``(x, y)`` pairs (a DataLoader without shuffling), in the
    order of ``case_ids``; labels default to the ``y`` of each batch. Kept: the centred embeddings (``centre``),
    thumbnails (``preview``/``value_range``, see `thumbnail`), ``info`` per case and, with ``block_spec``, each
    case's input stack in the first window (`input_stack`, uint8 over ``value_range``).
    """
    from medsuite.learn.predict import Predictor

    if not isinstance(predictor, Predictor):
        raise TypeError(f"build_case_index needs a medsuite.learn.predict.Predictor, got {type(predictor).__name__} "
                        "(wrap a bare model with Predictor.plain(model, labels))")
    embs, thumbs, ys, stacks = [], [], [], []
    spacing = None
    for batch in batches:
        x, y = (batch[0], batch[1]) if isinstance(batch, (tuple, list)) else (batch, None)
        x = np.asarray(x.cpu() if hasattr(x, "cpu") else x, dtype=np.float32)
        embs.append(predictor.embed(x))
        thumbs.extend(thumbnail(s, thumbnail_size, preview=preview, value_range=value_range) for s in x)
        if block_spec is not None and value_range is not None:
            for s in x:
                st = input_stack(s, block_spec)
                if st is None:
                    break
                lo, hi = value_range
                stacks.append(np.clip(np.rint((st[0] - lo) / (hi - lo) * 255), 0, 255).astype(np.uint8))
                spacing = st[1]
        if y is not None:
            ys.extend(np.asarray(y.cpu() if hasattr(y, "cpu") else y).tolist())
    if not embs:
        raise ValueError("build_case_index: no batches to embed")
    emb = np.concatenate(embs)
    if len(emb) != len(case_ids):
        raise ValueError(f"build_case_index: {len(emb)} items embedded but {len(case_ids)} case ids given")
    if labels is None and ys:
        labels = ys
    meta = dict(meta or {})
    mean = emb.mean(axis=0) if centre else None
    if mean is not None:
        meta["centred"] = True
    meta["thumbnail_scale"] = "fixed" if value_range is not None else "per-case min-max"
    has_stacks = len(stacks) == len(emb) and spacing is not None
    if has_stacks:
        meta["stack_spacing_mm"] = list(spacing)
    index = CaseIndex(emb if mean is None else emb - mean, case_ids, labels, np.stack(thumbs), meta, centre=mean,
                      info=info, stacks=np.stack(stacks) if has_stacks else None)
    index.nn_similarity_quantiles()
    return index


def knn_agreement(index: CaseIndex, embeddings: np.ndarray, labels: Sequence[Any], k: int = 5,
                  *, exclude_ids: Sequence[str] | None = None) -> float:
    """Share of items whose ``k`` nearest reference cases' majority label equals their own label.

    With ``exclude_ids`` (the items' own ids, when they are in the index) each item's own entry is skipped.
    Ties go to the label of the nearest neighbour among the tied ones.
    """
    labels = list(labels)
    if len(labels) != len(embeddings):
        raise ValueError(f"knn_agreement: {len(labels)} labels for {len(embeddings)} embeddings")
    extra = 1 if exclude_ids is not None else 0
    rows, _ = index.exact_query(embeddings, k + extra)
    hits = 0
    for i, row in enumerate(rows):
        neigh = [r for r in row if exclude_ids is None or index.case_ids[r] != str(exclude_ids[i])][:k]
        votes: dict[Any, int] = {}
        for r in neigh:
            votes[index.labels[r]] = votes.get(index.labels[r], 0) + 1
        best = max(votes.values())
        winner = next(index.labels[r] for r in neigh if votes[index.labels[r]] == best)
        hits += int(winner == labels[i])
    return hits / max(len(labels), 1)
