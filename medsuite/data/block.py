"""`DataBlock` -> `DataLoaders`: from a nodule (or series-label) table and a `VolumeSource` to batches.

The steps an item goes through, in order (``summary`` prints each and names the step and item that fail):
``get_items`` (table -> rows) -> ``splitter`` (rows -> train/valid/test) -> ``get_x`` (row -> series UID and
world centre) -> ``source.get`` (UID -> Volume) -> ``block.sample`` (+ training `Augment`) -> ``item_tfms``
callables -> ``get_y`` + `Category` (label -> class id) -> collate -> ``batch_tfms`` (training, on device).

Workers hold only the table's UIDs, centres and labels plus the source's paths; volumes are opened in each
worker, memory-mapped when a cache is used. Random augmentation is seeded per item: from the loader's
generator when the loader is iterated directly (``seed=`` makes that repeatable whatever the number of
workers), and by the Learner from (its seed, epoch, item) when it trains, so a resumed run replays it.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from medsuite.data.augment import Augment
from medsuite.data.blocks import Category, InputBlock, SeriesSlices, SliceStack
from medsuite.data.cache_dir import default_cache_dir
from medsuite.data.source import VolumeSource
from medsuite.data.splitters import SPLITS, default_splitter
from medsuite.data.tables import validate_nodule_table, validate_series_table
from medsuite.io.atomic import atomic_path

_DEFAULT = object()


class DataBlockError(ValueError):
    """A step of the data pipeline failed; the message names the step, the item and the reason."""


def _describe(row: pd.Series | dict, position: int) -> str:
    """A PHI-free name for an item: its row, nodule id and series UID (never the patient id)."""
    parts = [f"row {position}"]
    for key in ("nodule_id", "series_uid"):
        if key in row and not pd.isna(row[key]):
            parts.append(f"{key}={row[key]}")
    return ", ".join(parts)


class _SeededSampler:
    """Yields ``(index, seed)``: the order (shuffled or not) and one augmentation seed per item, both drawn
    from ``generator`` so that a seeded run is repeatable with any number of workers."""

    def __init__(self, n: int, shuffle: bool, generator: torch.Generator) -> None:
        self.n, self.shuffle, self.generator = n, shuffle, generator

    def __iter__(self) -> Iterator[tuple[int, int]]:
        order = torch.randperm(self.n, generator=self.generator) if self.shuffle else torch.arange(self.n)
        seeds = torch.randint(0, 2**62, (self.n,), generator=self.generator)
        return iter(zip(order.tolist(), seeds.tolist(), strict=True))

    def __len__(self) -> int:
        return self.n


class BlockDataset:
    """Map-style dataset of one split: ``ds[i]`` or ``ds[(i, seed)]`` -> ``(x float32, y int64)`` tensors.

    ``item_seeds`` tells the Learner that keys may carry the augmentation seed: it then derives each
    item's seed from (run seed, epoch, index, position), so resumes replay augmentation exactly even when
    it runs in DataLoader worker processes (`medsuite.learn.loaders.EpochSampler`).
    """

    item_seeds = True

    def __init__(
        self,
        series_uids: Sequence[str],
        centers: np.ndarray | None,
        targets: np.ndarray,
        descriptions: Sequence[str],
        block: InputBlock,
        source: VolumeSource,
        augment: Augment | None = None,
        tfms: Sequence[Callable[[np.ndarray], np.ndarray]] = (),
        soft_targets: np.ndarray | None = None,
    ) -> None:
        self.series_uids = list(series_uids)
        self.centers = centers
        self.targets = np.asarray(targets, dtype=np.int64)
        self.soft_targets = None if soft_targets is None else np.asarray(soft_targets, dtype=np.float32)
        if self.soft_targets is not None and (self.soft_targets.ndim != 2 or len(self.soft_targets) != len(self.targets)):
            raise ValueError(f"soft_targets must be (items, classes) = ({len(self.targets)}, C), got {self.soft_targets.shape}")
        self.descriptions = list(descriptions)
        self.block, self.source, self.augment, self.tfms = block, source, augment, tuple(tfms)

    def __len__(self) -> int:
        return len(self.series_uids)

    def sample(self, i: int, seed: int | None = None, *,
               trace: Callable[[str, Any], None] | None = None) -> np.ndarray:
        """The input array of item ``i`` (augmented with ``seed`` when this split augments).

        ``trace(step, value)`` is called after each step (`DataBlock.summary` prints them), so the summary
        runs exactly the code that loading runs.
        """
        center = None if self.centers is None else self.centers[i]
        step = "source.get"
        try:
            volume = self.source.get(self.series_uids[i])
            if trace is not None:
                trace(step, volume)
            step = "block.sample"
            rng = None
            if self.augment is not None:
                rng = np.random.default_rng(seed if seed is not None else int(torch.randint(0, 2**62, ())))
            x = self.block.sample(volume, center, aug=self.augment, rng=rng)
            if trace is not None:
                trace(step, x)
            for t in self.tfms:
                step = f"item_tfms {getattr(t, '__name__', type(t).__name__)}"
                x = np.asarray(t(x), dtype=np.float32)
                if trace is not None:
                    trace(step, x)
        except Exception as exc:
            raise DataBlockError(f"step {step!r} failed for item {self.descriptions[i]}: {type(exc).__name__}: {exc}") from exc
        return x

    def item(self, i: int, seed: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x, y)`` tensors of item ``i``, as a DataLoader gets them (``y``: the class id, or the class
        probabilities when the split has soft targets)."""
        x = self.sample(i, seed)
        y = torch.from_numpy(self.soft_targets[i].copy()) if self.soft_targets is not None else torch.tensor(self.targets[i], dtype=torch.int64)
        return torch.from_numpy(np.ascontiguousarray(x)), y

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        i, seed = (int(key[0]), int(key[1])) if isinstance(key, tuple) else (int(key), None)
        return self.item(i, seed)


class BlockLoader(torch.utils.data.DataLoader):
    """A torch DataLoader that moves each batch to ``device`` (if given) and then applies ``batch_tfms``
    there (training batches on the GPU when there is one)."""

    def __init__(self, dataset: BlockDataset, *, device: str | torch.device | None = None,
                 batch_tfms: Sequence[Callable] = (), **kwargs: Any) -> None:
        self.device = torch.device(device) if device is not None else None
        self.batch_tfms = tuple(batch_tfms)
        self._arities = tuple(batch_tfm_arity(t) for t in self.batch_tfms)
        super().__init__(dataset, **kwargs)

    def with_sampler(self, sampler: Any) -> BlockLoader:
        """A copy drawing from ``sampler`` (same dataset, device, batch transforms and settings); the
        Learner uses it for distributed shards, class-balanced sampling and exact resume."""
        return BlockLoader(
            self.dataset, device=self.device, batch_tfms=self.batch_tfms, batch_size=self.batch_size,
            sampler=sampler, num_workers=self.num_workers, drop_last=self.drop_last, pin_memory=self.pin_memory,
            persistent_workers=self.persistent_workers, generator=self.generator,
        )

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for x, y in super().__iter__():
            if self.device is not None:
                x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            for t, arity in zip(self.batch_tfms, self._arities, strict=True):
                x, y = _apply_batch_tfm(t, x, y, arity)
            yield x, y


def batch_tfm_arity(t: Callable) -> int:
    """How a batch transform is called: 2 for ``t(x, y) -> (x, y)``, 1 for ``t(x) -> x``, from its signature.

    Decided once, when the `DataBlock` is made, so a transform's own ``TypeError`` is never mistaken for
    "takes one argument" (which would hide the bug and run a random transform twice).
    """
    import inspect

    if not callable(t):
        raise TypeError(f"batch_tfms: {t!r} is not callable")
    try:
        sig = inspect.signature(t)
    except (TypeError, ValueError):
        raise TypeError(f"batch_tfms: cannot read the signature of {t!r}; wrap it in a function "
                        "f(x, y) -> (x, y) or f(x) -> x") from None
    for arity in (2, 1):
        try:
            sig.bind(*range(arity))
        except TypeError:
            continue
        return arity
    raise TypeError(f"batch_tfms: {t!r} must take (x, y) or x; its signature is {sig}")


def _apply_batch_tfm(t: Callable, x: torch.Tensor, y: torch.Tensor, arity: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Batch transforms take ``(x, y)`` and return ``(x, y)``, or take ``x`` and return ``x``."""
    if (arity or batch_tfm_arity(t)) == 1:
        return t(x), y
    out = t(x, y)
    if isinstance(out, tuple) and len(out) == 2:
        return out
    raise DataBlockError(f"batch_tfms {t!r}: must return (x, y); got {type(out).__name__}")


class DataLoaders:
    """Train / valid / optional test loaders of one `DataBlock`, with the label vocabulary and the items."""

    def __init__(self, loaders: dict[str, BlockLoader], items: dict[str, pd.DataFrame], category: Category,
                 block: InputBlock, datablock: DataBlock) -> None:
        self._loaders, self._items = loaders, items
        self.category, self.block, self.datablock = category, block, datablock

    @property
    def train(self) -> BlockLoader:
        return self._loaders["train"]

    @property
    def valid(self) -> BlockLoader:
        return self._loaders["valid"]

    @property
    def test(self) -> BlockLoader | None:
        return self._loaders.get("test")

    @property
    def vocab(self) -> list[Any]:
        """Label names; the index is the class id."""
        return list(self.category.vocab or ())

    @property
    def positive(self) -> str | None:
        """The positive class's label (given once, to the `DataBlock`), or None."""
        return self.datablock.positive

    @property
    def positive_index(self) -> int | None:
        """The positive class's id in `vocab`, or None."""
        pos = self.positive
        return None if pos is None else [str(v) for v in self.vocab].index(pos)

    def items(self, split: str) -> pd.DataFrame:
        """The rows of ``split`` in loader order (valid/test are not shuffled)."""
        if split not in self._items:
            raise KeyError(f"no {split!r} split; have {sorted(self._items)}")
        return self._items[split]

    def __getitem__(self, i: int) -> BlockLoader:
        return [self.train, self.valid, self.test][i]

    def fingerprint(self) -> str:
        """sha256 of what was trained on: items per split (series, centre, label) and the block spec."""
        h = hashlib.sha256(json.dumps(self.block.spec(), sort_keys=True).encode())
        for split, df in sorted(self._items.items()):
            cols = [c for c in ("series_uid", "x_mm", "y_mm", "z_mm", "label") if c in df.columns]
            h.update(split.encode())
            h.update(pd.util.hash_pandas_object(df[cols], index=False).to_numpy().tobytes())
        return h.hexdigest()

    def one_batch(self, split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
        loader = self._loaders.get(split)
        if loader is None or len(loader.dataset) == 0:
            raise ValueError(f"the {split!r} split is empty")
        return next(iter(loader))

    def show_batch(self, split: str = "train", max_n: int = 16, ncols: int = 4,
                   path: str | os.PathLike[str] | None = None) -> Any:
        """A grid of one batch's samples (centre plane / views / slices) titled with their labels.

        Returns a matplotlib Figure; with ``path`` also writes it (PNG by the file's suffix), atomically.
        """
        x, y = self.one_batch(split)
        return show_samples(self.block, x.detach().cpu().numpy()[:max_n], [self.category.decode(int(v)) for v in y[:max_n]],
                            ncols=ncols, path=path, title=f"{split}: {type(self.block).__name__}")

    def __repr__(self) -> str:
        sizes = ", ".join(f"{k}={len(v.dataset)}" for k, v in self._loaders.items())
        return f"DataLoaders({sizes}, vocab={self.vocab}, block={self.block!r})"


def show_samples(block: InputBlock, samples: np.ndarray, labels: Sequence[Any], *, ncols: int = 4,
                 path: str | os.PathLike[str] | None = None, title: str = "") -> Any:
    """Draw ``samples`` (block outputs) in a grid titled by ``labels``; returns a matplotlib Figure."""
    from matplotlib.figure import Figure

    n = len(samples)
    if n == 0:
        raise ValueError("show_samples: no samples to draw")
    ncols = max(1, min(ncols, n))
    nrows = int(np.ceil(n / ncols))
    fig = Figure(figsize=(2.6 * ncols, 2.8 * nrows), dpi=100)
    windowed = all(w.name not in ("raw", "zscore") for w in block.windows)
    for i in range(nrows * ncols):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        ax.axis("off")
        if i >= n:
            continue
        img = block.preview(samples[i])
        kw = {"vmin": 0.0, "vmax": 1.0} if windowed else {}
        ax.imshow(img, cmap="gray", interpolation="nearest", **kw)
        ax.set_title(str(labels[i]), fontsize=10)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    if path is not None:
        _save_figure(fig, Path(path))
    return fig


def _save_figure(fig: Any, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=path.suffix.lstrip(".") or "png")


class DataBlock:
    """How to build batches from a table: input block + target, how to read, split and transform items.

    blocks: ``(input block, Category())``; default ``(SliceStack(), Category())``.
    get_items: ``table -> DataFrame`` of items (default: the validated nodule table, or series-label table
        for `SeriesSlices`).
    get_x: ``row -> (series_uid, center_xyz or None)`` (default: ``series_uid`` and ``x_mm, y_mm, z_mm``).
    get_y: ``row -> label`` (default: the ``label`` column).
    splitter: ``table -> {"train", "valid", "test"} row positions`` (default: the ``split`` column if
        present, else `PatientSplitter(valid_pct=0.2, seed=0)`).
    item_tfms: `Augment` (random, training only; default ``Augment()``; None for none) and/or callables
        ``np.ndarray -> np.ndarray`` applied to every split after sampling.
    batch_tfms: callables ``(x, y) -> (x, y)`` or ``x -> x`` (told apart by their signature) on training
        batches, on the loaders' device.
    source: the default `VolumeSource`, or a DICOM folder (its volumes cached in `default_cache_dir`, never
        inside the folder); or pass one to `dataloaders` / `summary`.
    positive: the positive class's label of a binary problem, given once here; `DataLoaders.positive`
        carries it to the learner and the predictor (an unknown label is an error).
    soft_targets: ``(train items, class ids) -> (n, n_classes)`` class probabilities the training split
        yields instead of class ids (e.g. from readers' ratings), or None; valid and test keep the labels.
    """

    def __init__(
        self,
        blocks: tuple[InputBlock, Category] | None = None,
        get_items: Callable[[pd.DataFrame], pd.DataFrame] | None = None,
        get_x: Callable[[Any], tuple[str, Any]] | None = None,
        get_y: Callable[[Any], Any] | None = None,
        splitter: Callable[[pd.DataFrame], dict[str, np.ndarray]] | None = None,
        item_tfms: Any = _DEFAULT,
        batch_tfms: Sequence[Callable] | Callable | None = None,
        source: VolumeSource | str | os.PathLike[str] | None = None,
        positive: str | None = None,
        soft_targets: Callable[[pd.DataFrame, np.ndarray], np.ndarray | None] | None = None,
    ) -> None:
        blocks = blocks if blocks is not None else (SliceStack(), Category())
        if len(blocks) != 2 or not isinstance(blocks[0], InputBlock) or not isinstance(blocks[1], Category):
            raise TypeError(f"DataBlock blocks must be (input block, Category()), got {blocks!r}")
        self.block, self.category = blocks
        self.get_items, self.get_x, self.get_y, self.splitter = get_items, get_x, get_y, splitter
        tfms = [Augment()] if item_tfms is _DEFAULT else _as_list(item_tfms)
        augments = [t for t in tfms if isinstance(t, Augment)]
        if len(augments) > 1:
            raise ValueError("item_tfms: give at most one Augment")
        self.augment: Augment | None = augments[0] if augments else None
        self.item_tfms = tuple(t for t in tfms if not isinstance(t, Augment))
        for t in self.item_tfms:
            if not callable(t):
                raise TypeError(f"item_tfms: {t!r} is neither an Augment nor callable")
        self.batch_tfms = tuple(_as_list(batch_tfms))
        for t in self.batch_tfms:
            batch_tfm_arity(t)  # refuse a transform that takes neither (x, y) nor x, now
        self.source = source
        self.positive = None if positive is None else str(positive)
        self.soft_targets = soft_targets

    def __repr__(self) -> str:
        return f"DataBlock(block={self.block!r}, augment={self.augment!r}, item_tfms={len(self.item_tfms)}, batch_tfms={len(self.batch_tfms)})"

    # ------------------------------------------------------------------ steps
    def _items(self, table: pd.DataFrame) -> pd.DataFrame:
        if self.get_items is not None:
            items = self.get_items(table)
        elif isinstance(self.block, SeriesSlices):
            items = validate_series_table(table)
        else:
            items = validate_nodule_table(table)
        if not isinstance(items, pd.DataFrame) or len(items) == 0:
            raise DataBlockError(f"step 'get_items' gave no items from {table.attrs.get('source', 'the table')}")
        return items.reset_index(drop=True)

    def _xs(self, items: pd.DataFrame) -> tuple[list[str], np.ndarray | None]:
        needs_center = not isinstance(self.block, SeriesSlices)
        if self.get_x is None:
            uids = items["series_uid"].astype(str).tolist()
            centers = items[["x_mm", "y_mm", "z_mm"]].to_numpy(dtype=np.float64) if needs_center else None
            return uids, centers
        uids, centers = [], []
        for pos, (_, row) in enumerate(items.iterrows()):
            try:
                uid, center = self.get_x(row)
            except Exception as exc:
                raise DataBlockError(f"step 'get_x' failed for item {_describe(row, pos)}: {type(exc).__name__}: {exc}") from exc
            uids.append(str(uid))
            centers.append(center)
        return uids, (np.asarray(centers, dtype=np.float64) if needs_center else None)

    def _ys(self, items: pd.DataFrame) -> list[Any]:
        if self.get_y is None:
            if "label" not in items.columns:
                raise DataBlockError(f"step 'get_y': no 'label' column in {items.attrs.get('source', 'the items')}")
            return items["label"].tolist()
        ys = []
        for pos, (_, row) in enumerate(items.iterrows()):
            try:
                ys.append(self.get_y(row))
            except Exception as exc:
                raise DataBlockError(f"step 'get_y' failed for item {_describe(row, pos)}: {type(exc).__name__}: {exc}") from exc
        return ys

    def _split(self, items: pd.DataFrame) -> dict[str, np.ndarray]:
        splitter = self.splitter if self.splitter is not None else default_splitter(items)
        try:
            splits = splitter(items)
        except Exception as exc:
            raise DataBlockError(f"step 'splitter' ({splitter!r}) failed: {exc}") from exc
        out = {s: np.asarray(splits.get(s, []), dtype=np.int64) for s in SPLITS}
        if len(out["train"]) == 0 or len(out["valid"]) == 0:
            raise DataBlockError(f"step 'splitter' ({splitter!r}): train ({len(out['train'])}) and valid ({len(out['valid'])}) must both have items")
        return out

    def _encode(self, category: Category, ys: list[Any], items: pd.DataFrame) -> np.ndarray:
        out = np.empty(len(ys), dtype=np.int64)
        for pos, y in enumerate(ys):
            try:
                out[pos] = category.encode(y)
            except ValueError as exc:
                raise DataBlockError(f"step 'Category' failed for item {_describe(items.iloc[pos], pos)}: {exc}") from exc
        return out

    def _source(self, source: VolumeSource | str | os.PathLike[str] | None) -> VolumeSource:
        src = source if source is not None else self.source
        if src is None:
            raise DataBlockError("no volume source: pass source=VolumeSource(dicom_root, cache_dir=...) or a DICOM folder")
        if isinstance(src, (str, os.PathLike)):  # a DICOM folder: never written to; the cache lives elsewhere
            src = VolumeSource(src, cache_dir=default_cache_dir())
        return src

    # ------------------------------------------------------------------ public verbs
    def datasets(self, table: pd.DataFrame, source: VolumeSource | str | os.PathLike[str] | None = None) -> tuple[dict[str, BlockDataset], dict[str, pd.DataFrame], Category]:
        """Per-split datasets, the item rows per split, and the set-up `Category`."""
        src = self._source(source)
        items = self._items(table)
        splits = self._split(items)
        uids, centers = self._xs(items)
        ys = self._ys(items)
        try:
            category = self.category.setup(ys)
        except ValueError as exc:
            raise DataBlockError(f"step 'Category': {exc}") from exc
        vocab = [str(v) for v in category.vocab or ()]
        if self.positive is not None and self.positive not in vocab:
            raise DataBlockError(f"step 'Category': the positive class {self.positive!r} is not among the labels {vocab}")
        targets = self._encode(category, ys, items)
        try:
            src.check(uids)
        except KeyError as exc:
            raise DataBlockError(f"step 'source': {exc}") from exc
        descs = [_describe(row, pos) for pos, row in enumerate(items[[c for c in ("nodule_id", "series_uid") if c in items.columns]].to_dict("records"))]
        datasets, item_rows = {}, {}
        for split, idx in splits.items():
            if split == "test" and len(idx) == 0:
                continue
            item_rows[split] = items.iloc[idx].reset_index(drop=True)
            soft = None
            if split == "train" and self.soft_targets is not None:
                try:
                    soft = self.soft_targets(item_rows[split], targets[idx])
                except Exception as exc:
                    raise DataBlockError(f"step 'soft_targets' failed: {type(exc).__name__}: {exc}") from exc
            datasets[split] = BlockDataset(
                [uids[i] for i in idx], None if centers is None else centers[idx], targets[idx], [descs[i] for i in idx],
                self.block, src, augment=self.augment if split == "train" else None, tfms=self.item_tfms,
                soft_targets=soft,
            )
        return datasets, item_rows, category

    def _loader(self, split: str, n: int, ds: BlockDataset, bs: int, num_workers: int, seed: int | None,
                device: str | torch.device | None, drop_last: bool | None) -> BlockLoader:
        """The loader of one split (``n``: its position, which seeds its own generator)."""
        train = split == "train"
        generator = torch.Generator()  # one per split: iterating valid never changes what train draws
        if seed is not None:
            generator.manual_seed(int(seed) * 1000 + n)
        else:
            generator.seed()
        return BlockLoader(
            ds,
            device=device,
            batch_tfms=self.batch_tfms if train else (),
            batch_size=bs,
            sampler=_SeededSampler(len(ds), shuffle=train, generator=generator),
            num_workers=num_workers,
            drop_last=(len(ds) > bs) if (train and drop_last is None) else bool(drop_last and train),
            pin_memory=device is not None and torch.device(device).type == "cuda",
            persistent_workers=num_workers > 0,
            generator=generator,
        )

    def dataloaders(
        self,
        table: pd.DataFrame,
        source: VolumeSource | str | os.PathLike[str] | None = None,
        bs: int = 64,
        num_workers: int = 0,
        seed: int | None = None,
        device: str | torch.device | None = None,
        drop_last: bool | None = None,
    ) -> DataLoaders:
        """Build the loaders. Train is shuffled (and, by default, drops a last incomplete batch when it has
        more than one batch); valid/test keep table order. ``device``: where batches go (default: the GPU
        when one is there and ``batch_tfms`` are given, else they stay on the CPU)."""
        if bs < 1:
            raise ValueError(f"bs must be >= 1, got {bs}")
        datasets, item_rows, category = self.datasets(table, source)
        if device is None and self.batch_tfms and torch.cuda.is_available():
            device = "cuda"
        loaders = {split: self._loader(split, n, ds, bs, num_workers, seed, device, drop_last)
                   for n, (split, ds) in enumerate(datasets.items())}
        return DataLoaders(loaders, item_rows, category, self.block, self)

    def summary(self, table: pd.DataFrame, source: VolumeSource | str | os.PathLike[str] | None = None, split: str = "train",
                index: int = 0, print_fn: Callable[[str], None] = print, seed: int = 0) -> None:
        """Push one item (``index`` of ``split``) through the steps loading runs, printing shapes and dtypes.

        It calls the very code the loaders use (`datasets`, `BlockDataset.sample` with a ``trace``, the
        loader's collate and batch transforms), so it cannot pass where loading fails. On failure it prints
        and raises `DataBlockError` naming the step, the item and the reason.
        """
        p = print_fn
        step, desc = "setup", "(before any item)"
        p(f"DataBlock summary\n  input block: {self.block!r}\n  output shape: {self.block.output_shape}")
        try:
            datasets, item_rows, category = self.datasets(table, source)
            n_items = sum(len(rows) for rows in item_rows.values())
            p(f"  get_items: {n_items} items")
            for s in SPLITS:
                rows = item_rows.get(s)
                n, pats = (0, 0) if rows is None else (len(rows), rows["patient_id"].nunique() if "patient_id" in rows.columns else "?")
                p(f"  splitter: {s} {n} items, {pats} patients")
            p(f"  Category: vocab {list(category.vocab)}" + (f", positive {self.positive!r}" if self.positive else ""))
            if split not in datasets or len(datasets[split]) == 0:
                raise DataBlockError(f"summary: the {split!r} split is empty")
            ds = datasets[split]
            if not 0 <= index < len(ds):
                raise DataBlockError(f"summary: index {index} out of range for {split!r} ({len(ds)} items)")
            desc = ds.descriptions[index]
            p(f"  item: {desc} ({split} #{index})")
            center = None if ds.centers is None else ds.centers[index]
            p(f"    get_x -> series_uid={ds.series_uids[index]}, center_xyz={None if center is None else np.round(center, 2).tolist()}")

            def trace(name: str, value: Any) -> None:
                if name == "source.get":
                    p(f"    source.get -> Volume {value.shape} {value.array.dtype}, spacing "
                      f"{tuple(round(v, 3) for v in value.spacing)} mm, modality {value.modality or '?'}")
                else:
                    label = "block.sample" + (" + Augment (training only)" if name == "block.sample" and ds.augment is not None else "")
                    label = label if name == "block.sample" else name
                    p(f"    {label} -> {value.shape} {value.dtype}, range [{value.min():.3g}, {value.max():.3g}]")

            step = "sample"
            ds.sample(index, seed, trace=trace)
            step = "Category"
            y = int(ds.targets[index])
            p(f"    get_y -> {category.decode(y)!r}; Category -> {y}")
            step = "collate"
            loader = self._loader(split, list(datasets).index(split), ds, 2, 0, seed, None, None)
            xb, yb = loader.collate_fn([ds.item(index, seed), ds.item(index, seed)])
            p(f"  collate (2 items) -> x {tuple(xb.shape)} {xb.dtype}, y {tuple(yb.shape)} {yb.dtype}")
            for t, arity in zip(loader.batch_tfms, loader._arities, strict=True):
                step = f"batch_tfms {t!r}"
                xb, yb = _apply_batch_tfm(t, xb, yb, arity)
                p(f"    {step} -> x {tuple(xb.shape)} {xb.dtype}")
        except DataBlockError as exc:
            p(f"  FAILED: {exc}")
            raise
        except Exception as exc:
            msg = f"step {step!r} failed for item {desc}: {type(exc).__name__}: {exc}"
            p(f"  FAILED: {msg}")
            raise DataBlockError(msg) from exc


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return list(value)
    return [value]
