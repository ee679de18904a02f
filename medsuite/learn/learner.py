"""`Learner`: the event-wrapped training loop (fastai-style) with AMP, checkpoints/resume and DDP.

Every stage of the loop fires named events (see `medsuite.learn.callbacks.core.EVENTS`); callbacks get
the learner and may read or replace its state: ``xb``, ``yb`` (current batch), ``pred``, ``loss_grad``
(the loss that is back-propagated), ``loss`` (its detached copy, recorded), ``training``, ``epoch``,
``iter``, ``train_iter``, ``pct_train``, ``opt``, ``model``.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import json
import logging
import math
import os
import random
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn

from medsuite.learn import distributed as D
from medsuite.learn.callbacks.core import (
    CANCEL_EXCEPTIONS,
    EVENTS,
    Callback,
    CallbackError,
    CancelBackwardException,
    CancelBatchException,
    CancelEpochException,
    CancelFitException,
    CancelStepException,
    CancelTrainException,
    CancelValidateException,
)
from medsuite.learn.callbacks.recorder import Recorder
from medsuite.learn.checkpoint import (
    Checkpoint,
    capture_rng,
    load_checkpoint,
    load_weights,
    restore_checkpoint,
    restore_rng,
    save_checkpoint,
    save_weights,
)
from medsuite.learn.loaders import loader_generators, train_loader, valid_loader
from medsuite.learn.optim import OptFunc, adamw, make_optimizer
from medsuite.learn.schedule import OneCycleSchedule, ParamScheduler, set_hyper

__all__ = ["Learner", "Prediction", "Predictions", "set_seed"]

log = logging.getLogger(__name__)

Metric = Callable[[np.ndarray, np.ndarray], "float | dict[str, float]"]

# Events inside one batch: only these respect a callback's run_train / run_valid.
_INNER = frozenset({"before_batch", "after_pred", "after_loss", "before_backward", "after_cancel_backward",
                    "after_backward", "before_step", "after_cancel_step", "after_step",
                    "after_cancel_batch", "after_batch"})


def _rng_parts() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors, meta = capture_rng()
    return tensors, {"rng": meta}


def set_seed(seed: int) -> None:
    """Seed python, numpy and torch (CPU and CUDA) generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class Predictions(NamedTuple):
    """Output of `Learner.get_preds` (numpy, CPU); ``losses`` / ``embeddings`` are None unless asked."""

    probs: np.ndarray
    targets: np.ndarray
    losses: np.ndarray | None = None
    embeddings: np.ndarray | None = None


@dataclass(frozen=True)
class Prediction:
    """Output of `Learner.predict` for one item."""

    label: Any
    index: int
    probs: np.ndarray


def _metric_name(m: Any) -> str:
    if isinstance(m, functools.partial):
        return _metric_name(m.func)
    return getattr(m, "__name__", type(m).__name__)


def compute_metrics(metrics: Sequence[Metric], probs: np.ndarray, targets: np.ndarray) -> dict[str, float]:
    """Evaluate ``metric(targets, probs)`` (scikit-learn order: ``y_true, y_score``) for each metric. A float is stored under the metric's name;
    a dict's ``"value"`` under the name and its other numeric entries under ``<name>_<key>`` (so
    ``roc_auc_ci`` gives ``roc_auc_ci``, ``roc_auc_ci_ci_low``, ``roc_auc_ci_ci_high``...)."""
    out: dict[str, float] = {}
    for m in metrics:
        name = _metric_name(m)
        try:
            value = m(targets, probs)
        except Exception as e:
            raise RuntimeError(f"metric {name} failed on the validation set: {e}") from e
        if isinstance(value, dict):
            for k, v in value.items():
                if isinstance(v, (int, float, np.number)) and not isinstance(v, bool):
                    out[name if k == "value" else f"{name}_{k}"] = float(v)
        else:
            out[name] = float(value)
    return out


def _resolve_device(device: str | torch.device) -> torch.device:
    if str(device) != "auto":
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda", D.local_rank())
    return torch.device("cpu")


def _resolve_amp(amp: bool | str | None, device: torch.device) -> tuple[torch.dtype | None, bool]:
    """(autocast dtype or None, whether a GradScaler is needed)."""
    if amp in (None, False, "off", "fp32", "no"):
        return None, False
    if amp in ("auto", True):
        if device.type != "cuda":
            return None, False
        return (torch.bfloat16, False) if torch.cuda.is_bf16_supported() else (torch.float16, True)
    if amp == "bf16":
        return torch.bfloat16, False
    if amp == "fp16":  # with a GradScaler; on CPU this is mainly useful to test that code path
        return torch.float16, True
    raise ValueError(f"amp must be 'auto', 'bf16', 'fp16' or False, got {amp!r}")


def _to_device(x: Any, device: torch.device, non_blocking: bool) -> Any:
    if isinstance(x, torch.Tensor):
        return x.to(device, non_blocking=non_blocking)
    if isinstance(x, (list, tuple)):
        return type(x)(_to_device(v, device, non_blocking) for v in x)
    return x


class Learner:
    """Trains ``model`` on ``dls`` (``.train`` / ``.valid`` DataLoaders yielding ``(x, y)``).

    Parameters: ``loss_func`` (default ``nn.CrossEntropyLoss()``); ``opt_func`` (an Optimizer class or
    ``f(param_groups, lr, wd)``, default AdamW without weight decay on norm/bias); ``metrics``
    (``metric(y_true, y_score) -> float | dict`` on the whole validation set); ``cbs`` (callbacks);
    ``path`` (run folder: ``checkpoints/``, ``models/``, logs; default None: nothing is written, not even
    under the current directory); ``device`` ('auto' = CUDA if present);
    ``amp`` ('auto': bf16 on CUDA where supported, else fp16 + GradScaler; fp32 on CPU);
    ``channels_last``; ``compile`` (opt-in `torch.compile`: True or a dict of its keyword arguments);
    ``seed`` (seeds python/numpy/torch at the
    first fit and the data order); ``deterministic`` (deterministic algorithms during fit);
    ``checkpoint`` (atomic checkpoint each epoch; default: when there is a ``path``) and ``checkpoint_every``
    (also every N steps);
    ``progress`` (tqdm bar + epoch table).
    """

    def __init__(self, dls: Any, model: nn.Module, loss_func: Callable | None = None,
                 opt_func: OptFunc | type[torch.optim.Optimizer] = adamw, lr: float = 1e-3, wd: float = 1e-2,
                 metrics: Iterable[Metric] = (), cbs: Iterable[Callback] = (), path: str | Path | None = None,
                 device: str | torch.device = "auto", amp: bool | str | None = "auto",
                 channels_last: bool = False, compile: bool | dict[str, Any] = False, seed: int | None = None,
                 deterministic: bool = False, checkpoint: bool | None = None, checkpoint_every: int | None = None,
                 progress: bool = True) -> None:
        if not hasattr(dls, "train") or not hasattr(dls, "valid"):
            raise TypeError("dls must have .train and .valid DataLoaders")
        if checkpoint_every is not None and checkpoint_every < 1:
            raise ValueError(f"checkpoint_every must be >= 1 or None, got {checkpoint_every}")
        if path is None and (checkpoint or checkpoint_every):
            raise ValueError("checkpoints need a run folder: Learner(..., path='runs/name')")
        self.dls, self.lr, self.wd = dls, float(lr), float(wd)
        D.check_launch()  # under torchrun, the caller joins the process group (`distrib_ctx`), not the learner
        self.device = _resolve_device(device)
        self.amp_dtype, needs_scaler = _resolve_amp(amp, self.device)
        self.scaler = torch.amp.GradScaler(self.device.type) if needs_scaler else None
        self.channels_last = bool(channels_last)
        self.compile: bool | dict[str, Any] = compile if isinstance(compile, dict) else bool(compile)
        self.model = model.to(self.device)
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        if isinstance(loss_func, type):  # Learner(loss_func=nn.CrossEntropyLoss) means an instance of it
            loss_func = loss_func()
        self.loss_func = loss_func if loss_func is not None else nn.CrossEntropyLoss()
        self.opt_func = opt_func
        self.metrics = list(metrics)
        self.path: Path | None = None if path is None else Path(path)
        self.seed, self.deterministic = seed, bool(deterministic)
        # the data order's seed; under DDP every rank must use rank 0's, or the shards would overlap
        self.data_seed = int(seed) if seed is not None else D.gather_objects(
            int(torch.randint(0, 2**31 - 1, ()).item()))[0]
        self.checkpoint = self.path is not None if checkpoint is None else bool(checkpoint)
        self.checkpoint_every = checkpoint_every
        self.opt: torch.optim.Optimizer | None = None
        self._in_lr_find = False
        self.recorder = Recorder()
        self.cbs: list[Callback] = []
        self.add_cbs([self.recorder])
        if progress:
            from medsuite.learn.callbacks.progress import ProgressCallback

            self.add_cbs([ProgressCallback()])
        self.add_cbs(cbs)
        # loop state, readable and replaceable by callbacks
        self.training = False
        self.xb: Any = None
        self.yb: Any = None
        self.pred: Any = None
        self.loss: torch.Tensor | None = None
        self.loss_grad: torch.Tensor | None = None
        self._item_losses: torch.Tensor | None = None
        self.epoch = self.n_epoch = self.iter = self.n_iter = self.train_iter = self.start_iter = 0
        self.total_iter = 1
        self.epochs_done = 0  # completed epochs over all fits (seeds the data order of the next epoch)
        self.train_sampler = None  # a callback may set a sampler in before_fit (class-balanced sampling)
        self.last_valid: dict[str, float] = {}
        self.fit_history: list[dict[str, Any]] = []
        self._fwd_model: nn.Module | None = None
        self._sync_bn = False
        self._n_fits = 0
        self._rng: Checkpoint | None = None  # the learner's own random stream between fits (with a seed)
        self._in_lr_find = False
        self._table: dict[str, list[tuple[Callback, Callable[[], None]]]] = {}
        self._rebuild_table()

    # ---- callbacks ----------------------------------------------------------------------------
    def add_cbs(self, cbs: Iterable[Callback]) -> None:
        for cb in cbs:
            if isinstance(cb, type):
                raise TypeError(f"pass a callback instance, not the class {cb.__name__}")
            cb.learn = self
            self.cbs.append(cb)
        self._rebuild_table()

    def remove_cbs(self, cbs: Iterable[Callback]) -> None:
        for cb in cbs:
            if cb in self.cbs:
                self.cbs.remove(cb)
        self._rebuild_table()

    @contextlib.contextmanager
    def added_cbs(self, cbs: Iterable[Callback]) -> Iterator[None]:
        """Callbacks active only inside the ``with`` block."""
        cbs = list(cbs)
        self.add_cbs(cbs)
        try:
            yield
        finally:
            self.remove_cbs(cbs)

    def _active_cbs(self) -> list[Callback]:
        cbs = sorted(self.cbs, key=lambda c: c.order)  # stable: insertion order among equal orders
        return [c for c in cbs if c.during_lr_find] if self._in_lr_find else cbs

    def _rebuild_table(self) -> None:
        table: dict[str, list[tuple[Callback, Callable[[], None]]]] = {}
        for event in EVENTS:
            entries = []
            for cb in self._active_cbs():
                method = getattr(cb, event, None)
                if callable(method):
                    entries.append((cb, method))
            table[event] = entries
        self._table = table

    def __call__(self, event: str) -> None:
        """Run ``event`` on the callbacks, in order. Cancel exceptions pass through; any other error is
        re-raised as `CallbackError` naming the callback and the event."""
        inner = event in _INNER
        for cb, method in self._table[event]:
            if inner and not (cb.run_train if self.training else cb.run_valid):
                continue
            try:
                method()
            except CANCEL_EXCEPTIONS:
                raise
            except CallbackError:
                raise
            except Exception as e:
                raise CallbackError(cb.name, event, e) from e

    def show_training_loop(self) -> str:
        """Print (and return) which callbacks run at which event, in the order the loop fires them."""
        lines = []
        depth = {"before_fit": 0, "before_epoch": 1, "before_train": 2, "before_batch": 3, "after_batch": 3,
                 "after_train": 2, "before_validate": 2, "after_validate": 2, "after_epoch": 1,
                 "after_fit": 0}
        indent = 0
        for event in EVENTS:
            indent = depth.get(event, indent if event.startswith("after_cancel") else max(indent, 3))
            names = [cb.name for cb, _ in self._table[event]]
            lines.append(f"{'  ' * indent}{event:<22} {', '.join(names) if names else '-'}")
        text = "\n".join(lines)
        print(text)
        return text

    # ---- helpers ------------------------------------------------------------------------------
    @property
    def pct_train(self) -> float:
        """Position in the current fit, in [0, 1] (drives the schedules)."""
        return min(1.0, self.train_iter / max(1, self.total_iter))

    @property
    def is_main(self) -> bool:
        return D.is_main_process()

    def run_dir(self, what: str) -> Path:
        """The run folder, or a clear error naming ``what`` needed it when the learner has none."""
        if self.path is None:
            raise ValueError(f"{what} needs a run folder: this Learner was made without path= (it writes nothing); "
                             "pass path='runs/name'")
        return self.path

    @property
    def checkpoint_path(self) -> Path:
        return self.run_dir("a checkpoint") / "checkpoints" / "last.safetensors"

    def create_opt(self) -> None:
        self.opt = make_optimizer(self.opt_func, self.model, self.lr, self.wd)

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def _prepare_x(self, x: Any) -> Any:
        x = _to_device(x, self.device, non_blocking=self.device.type == "cuda")
        if self.channels_last and isinstance(x, torch.Tensor):
            if x.ndim == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            elif x.ndim == 5:
                x = x.contiguous(memory_format=torch.channels_last_3d)
        return x

    def _split_batch(self, batch: Any) -> tuple[Any, Any]:
        if not isinstance(batch, (list, tuple)) or len(batch) != 2:
            raise ValueError(f"DataLoaders must yield (x, y) pairs; got {type(batch).__name__}"
                             f"{' of length ' + str(len(batch)) if isinstance(batch, (list, tuple)) else ''}")
        return self._prepare_x(batch[0]), _to_device(batch[1], self.device, self.device.type == "cuda")

    @contextlib.contextmanager
    def _determinism(self) -> Iterator[None]:
        if not self.deterministic:
            yield
            return
        prev_det = torch.are_deterministic_algorithms_enabled()
        prev_bench = torch.backends.cudnn.benchmark
        if self.device.type == "cuda":
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
        try:
            yield
        finally:
            torch.use_deterministic_algorithms(prev_det)
            torch.backends.cudnn.benchmark = prev_bench

    def _forward_model(self) -> nn.Module:
        """The training forward: under DDP the model with batch norm over the global batch, wrapped in
        `DistributedDataParallel` (undone at the end of each fit); optionally compiled."""
        if self._fwd_model is None:
            model: nn.Module = self.model
            if D.is_distributed():
                from torch.nn.parallel import DistributedDataParallel as DDP

                self.model = model = D.convert_sync_batchnorm(model, self.device)
                self._sync_bn = True
                model = DDP(model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
            if self.compile:
                model = torch.compile(model, **(self.compile if isinstance(self.compile, dict) else {}))
            self._fwd_model = model
        return self._fwd_model

    def _release_forward_model(self) -> None:
        """After a DDP fit: the user's model gets its own batch-norm classes back (same tensors)."""
        if self._sync_bn:
            self.model = D.revert_sync_batchnorm(self.model)
            self._sync_bn = False
            self._fwd_model = None

    # ---- the loop -----------------------------------------------------------------------------
    def _with_events(self, f: Callable[[], Any], name: str, exc: type[Exception]) -> None:
        try:
            self(f"before_{name}")
            f()
        except exc:
            self(f"after_cancel_{name}")
        self(f"after_{name}")

    def _do_one_batch(self) -> None:
        model = self._forward_model() if self.training else self.model
        with self.autocast():
            self.pred = model(self.xb)
        self("after_pred")
        with self.autocast():
            if self.training:
                self.loss_grad = self.loss_func(self.pred, self.yb)
            else:
                self._item_losses = self._per_item_loss(self.pred, self.yb)
                self.loss_grad = self._item_losses.mean()
        self.loss = self.loss_grad.detach()
        self("after_loss")
        if not self.training:
            return
        self._with_events(self._backward, "backward", CancelBackwardException)
        stepped = True
        try:
            self("before_step")
            self._step()
        except CancelStepException:
            stepped = False
            self("after_cancel_step")
        self("after_step")
        if stepped:
            self.opt.zero_grad(set_to_none=True)

    def _backward(self) -> None:
        loss = self.scaler.scale(self.loss_grad) if self.scaler is not None else self.loss_grad
        loss.backward()

    def _step(self) -> None:
        if self.scaler is not None:
            self.scaler.step(self.opt)
            self.scaler.update()
        else:
            self.opt.step()

    def _per_item_loss(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Loss of each item: ``reduction='none'`` when the loss has that attribute, else item by item.
        (With class weights, the valid loss is then the plain mean of the weighted item losses.)"""
        lf = self.loss_func
        if hasattr(lf, "reduction"):
            old = lf.reduction
            lf.reduction = "none"
            try:
                out = lf(pred, target)
            finally:
                lf.reduction = old
            if out.ndim > 1:
                out = out.reshape(out.shape[0], -1).mean(1)
            return out.float()
        return torch.stack([lf(pred[i:i + 1], target[i:i + 1]).float().reshape(()) for i in range(len(pred))])

    def _train_batches(self, dl: Iterable, start: int) -> None:
        for i, batch in enumerate(dl, start):
            self.iter = i
            self.xb, self.yb = self._split_batch(batch)
            self._with_events(self._do_one_batch, "batch", CancelBatchException)
            self.train_iter += 1
            if (self.checkpoint_every and self.train_iter % self.checkpoint_every == 0
                    and i + 1 < self.n_iter):
                self._save_checkpoint(epoch=self.epoch, iter_done=i + 1)

    def _do_epoch_train(self) -> None:
        self.training = True
        self.model.train()
        start, self._resume_iter = self._resume_iter, 0
        self.start_iter = start  # batches of this epoch already done before a resume (0 normally)
        if self._epoch_sampler is not None:
            self._epoch_sampler.set_epoch(self.epochs_done)
            self._epoch_sampler.set_skip(start * (self.dl_train.batch_size or 1))
            dl: Iterable = self.dl_train
        else:  # the loader's own order: replay its generators from the epoch start, drop done batches
            gens = loader_generators(self.dl_train)
            if self._resume_gen_states is not None:
                if len(self._resume_gen_states) == len(gens):
                    for g, state in zip(gens, self._resume_gen_states, strict=True):
                        g.set_state(state)
                self._resume_gen_states = None
            self._epoch_gen_states = [g.get_state() for g in gens]
            dl = iter(self.dl_train)
            for _ in range(start):
                next(dl)
        self.n_iter = self._n_iter_full
        self._with_events(lambda: self._train_batches(dl, start), "train", CancelTrainException)

    def _eval_batches(self, dl: Iterable, with_events: bool,
                      with_embeddings: bool = False) -> dict[str, list[np.ndarray]]:
        """Forward pass over ``dl`` in eval mode; results moved to the CPU batch by batch."""
        self.training = False
        self.model.eval()
        out: dict[str, list[np.ndarray]] = {"probs": [], "targets": [], "losses": [], "embeddings": []}
        with torch.no_grad():
            for i, batch in enumerate(dl):
                self.iter = i
                self.xb, self.yb = self._split_batch(batch)
                if with_events:
                    try:
                        self("before_batch")
                        self._do_one_batch()
                    except CancelBatchException:
                        self("after_cancel_batch")
                        self("after_batch")
                        continue
                    self("after_batch")
                else:
                    self._do_one_batch()
                if self.pred.ndim != 2:
                    raise ValueError(f"model must return logits of shape (B, n_classes); got "
                                     f"{tuple(self.pred.shape)}")
                out["probs"].append(torch.softmax(self.pred.float(), dim=1).cpu().numpy())
                out["targets"].append(self.yb.cpu().numpy())
                out["losses"].append(self._item_losses.cpu().numpy())
                if with_embeddings:
                    with self.autocast():
                        emb = self.model.embed(self.xb)
                    out["embeddings"].append(emb.float().cpu().numpy())
        return out

    def _gather(self, parts: dict[str, list[np.ndarray]]) -> dict[str, np.ndarray | None]:
        """Concatenate batches, then (DDP) the ranks' disjoint shards in rank order."""
        local = {k: (np.concatenate(v) if v else None) for k, v in parts.items()}
        if not D.is_distributed():
            return local
        shards = D.gather_objects(local)
        return {k: (np.concatenate([s[k] for s in shards if s[k] is not None])
                    if any(s[k] is not None for s in shards) else None) for k in local}

    def _do_epoch_validate(self) -> None:
        self.last_valid = {}
        dl = self.dl_valid
        if dl is None or (len(dl) == 0 and not D.is_distributed()):
            return

        def run() -> None:
            res = self._gather(self._eval_batches(dl, with_events=True))
            if res["probs"] is None or len(res["probs"]) == 0:
                return
            self.last_valid = {"valid_loss": float(res["losses"].mean()),
                               **compute_metrics(self.metrics, res["probs"], res["targets"])}

        self._with_events(run, "validate", CancelValidateException)

    def _log_epoch(self) -> None:
        s, n = self.recorder.epoch_totals()
        s, n = D.all_reduce_sum([s, float(n)], device=self.device if D.is_distributed() else "cpu")
        row = {"epoch": self.epochs_done, "train_loss": s / n if n else math.nan}
        row.update(self.last_valid)
        self.recorder.log_epoch(row)

    def _one_epoch(self) -> None:
        try:
            self("before_epoch")
            self._do_epoch_train()
            self._do_epoch_validate()
        except CancelEpochException:
            self("after_cancel_epoch")
        self.training = False
        self._log_epoch()
        self("after_epoch")
        self.epochs_done += 1
        if self.checkpoint:
            self._save_checkpoint(epoch=self.epoch + 1, iter_done=0)

    def _do_fit(self) -> None:
        for epoch in range(self._start_epoch, self.n_epoch):
            self.epoch = epoch
            self._one_epoch()

    # ---- checkpoints --------------------------------------------------------------------------
    def _cb_states(self) -> dict[str, Any]:
        states, seen = {}, {}
        for cb in self.cbs:
            if cb is self.recorder:
                continue
            k = seen[cb.name] = seen.get(cb.name, -1) + 1
            state = cb.state_dict()
            if state:
                states[f"{cb.name}#{k}"] = state
        return states

    def _load_cb_states(self, states: dict[str, Any]) -> None:
        seen: dict[str, int] = {}
        for cb in self.cbs:
            if cb is self.recorder:
                continue
            k = seen[cb.name] = seen.get(cb.name, -1) + 1
            if f"{cb.name}#{k}" in states:
                cb.load_state_dict(states[f"{cb.name}#{k}"])

    def _save_checkpoint(self, epoch: int, iter_done: int) -> None:
        if self._in_lr_find or not self.is_main:
            return
        state = {"fit": self._fit_config, "epoch": epoch, "iter": iter_done, "train_iter": self.train_iter,
                 "epochs_done": self.epochs_done, "epochs_base": self._epochs_base,
                 "data_seed": self.data_seed, "finished": epoch >= self.n_epoch,
                 "recorder": self.recorder.state_dict(), "callbacks": self._cb_states()}
        extra: dict[str, torch.Tensor] = {}
        if self._epoch_sampler is None:  # the loader's own generators: where this epoch's order started
            states = (self._epoch_gen_states if iter_done else
                      [g.get_state() for g in loader_generators(self.dl_train)])
            extra = {f"loader_gen/{i}": s for i, s in enumerate(states)}
        save_checkpoint(self.checkpoint_path, self.model, self.opt, self.scaler, state, extra)

    def save_checkpoint(self) -> Path:
        """Write the current state to ``path/checkpoints/last.safetensors`` now (e.g. from a callback)."""
        self._save_checkpoint(self.epoch, self.iter + 1 if self.training else 0)
        return self.checkpoint_path

    def save(self, name: str) -> Path:
        """Model weights to ``path/models/<name>.safetensors`` (rank 0 only; atomic)."""
        target = self.run_dir("save()") / "models" / f"{name}.safetensors"
        if self.is_main:
            save_weights(target, self.model)
        return target

    def load(self, name: str | Path) -> Learner:
        """Load weights saved by `save` (a name under ``path/models`` or a file path)."""
        p = Path(name)
        if not p.suffix:
            p = self.run_dir("load(name)") / "models" / f"{name}.safetensors"
        if D.is_distributed():
            import torch.distributed as dist

            dist.barrier()  # rank 0 may still be writing the file
        load_weights(p, self.model)
        return self

    # ---- fitting ------------------------------------------------------------------------------
    def fit(self, n_epoch: int, lr: float | None = None, wd: float | None = None, cbs: Iterable[Callback] = (),
            resume: bool = False) -> None:
        """Train ``n_epoch`` epochs at a constant learning rate."""
        lr = self.lr if lr is None else float(lr)
        config = {"kind": "fit", "n_epoch": int(n_epoch), "lr": lr}
        self._fit(n_epoch, config, lr, wd, [*cbs], resume)

    def fit_one_cycle(self, n_epoch: int, lr_max: float | None = None, pct_start: float = 0.25,
                      div: float = 25.0, final_div: float = 1e4,
                      moms: tuple[float, float, float] | None = (0.95, 0.85, 0.95), wd: float | None = None,
                      cbs: Iterable[Callback] = (), resume: bool = False) -> None:
        """Train with fastai's one-cycle policy: cosine warm-up of lr from ``lr_max/div`` to ``lr_max``
        over ``pct_start`` of the steps, cosine annealing to ``lr_max/final_div``; momentum (or Adam's
        beta1) moves the opposite way through ``moms``. ``resume=True`` continues from the last
        checkpoint in ``path/checkpoints`` if there is one for this same schedule."""
        lr_max = self.lr if lr_max is None else float(lr_max)
        sched = OneCycleSchedule(lr_max, pct_start, div, final_div, None if moms is None else tuple(moms))
        config = {"kind": "one_cycle", "n_epoch": int(n_epoch), "lr_max": lr_max, "pct_start": pct_start,
                  "div": div, "final_div": final_div, "moms": None if moms is None else list(moms)}
        self._fit(n_epoch, config, sched.lr(0.0), wd, [ParamScheduler(sched), *cbs], resume)

    def _load_resume(self, config: dict[str, Any]) -> Any:
        p = self.checkpoint_path
        if not p.is_file():
            log.info("resume: no checkpoint at %s, starting from scratch", p)
            return None
        ckpt = load_checkpoint(p)
        saved = ckpt.meta.get("state", {}).get("fit")
        if json.loads(json.dumps(saved)) != json.loads(json.dumps(config)):
            raise ValueError(f"{p}: cannot resume, the checkpoint is of a different fit ({saved}) than the "
                             f"one requested ({config}); use another path or resume=False")
        return ckpt

    def _fit(self, n_epoch: int, config: dict[str, Any], lr: float, wd: float | None, cbs: list[Callback],
             resume: bool, lr_find: bool = False) -> None:
        if n_epoch < 1:
            raise ValueError(f"n_epoch must be >= 1, got {n_epoch}")
        D.check_launch()
        ckpt = self._load_resume(config) if resume and not lr_find else None
        if self.opt is None:
            self.create_opt()
        if wd is not None:
            for g in self.opt.param_groups:
                if g.get("name") != "no_decay":
                    g["weight_decay"] = float(wd)
        set_hyper(self.opt, lr=lr)
        with self._own_rng(lr_find):
            self._fit_body(n_epoch, config, cbs, ckpt, lr_find)

    @contextlib.contextmanager
    def _own_rng(self, lr_find: bool) -> Iterator[None]:
        """With a ``seed``, the fit draws from the learner's own random stream, not the caller's: the global
        generators (python, numpy, torch) are seeded (first fit) or set to where the last fit left them, and
        given back to the caller afterwards. lr_find draws from a copy, so it does not shift the fit's stream."""
        if self.seed is None:
            yield
            return
        caller = Checkpoint(*_rng_parts())
        if self._rng is None:
            set_seed(self.seed)
        else:
            restore_rng(self._rng)
        try:
            yield
        finally:
            if not lr_find:
                self._rng = Checkpoint(*_rng_parts())
            restore_rng(caller)

    def _fit_body(self, n_epoch: int, config: dict[str, Any], cbs: list[Callback], ckpt: Any, lr_find: bool) -> None:
        self._fit_config = config
        self.n_epoch = int(n_epoch)
        self._start_epoch, self._resume_iter = 0, 0
        self._resume_gen_states: list[torch.Tensor] | None = None
        self._epoch_gen_states: list[torch.Tensor] = []
        self.train_iter = 0
        self._epochs_base = self.epochs_done
        self._in_lr_find = lr_find
        self.add_cbs(cbs)
        try:
            with self._determinism():
                try:
                    self.training = False
                    self("before_fit")
                    if ckpt is not None:
                        self._restore(ckpt)
                    self._setup_loaders()
                    self.total_iter = self.n_epoch * self._n_iter_full
                    if not lr_find:
                        self.fit_history.append({**config, "resumed": ckpt is not None})
                    if self._start_epoch < self.n_epoch:
                        self._do_fit()
                except CancelFitException:
                    self("after_cancel_fit")
                self("after_fit")
        finally:
            self.remove_cbs(cbs)
            self._in_lr_find = False
            self._rebuild_table()
            self.training = False
            self._release_forward_model()
            if not lr_find:
                self._n_fits += 1

    def _restore(self, ckpt: Any) -> None:
        state = restore_checkpoint(ckpt, self.model, self.opt, self.scaler, self.checkpoint_path)
        self.recorder.load_state_dict(state.get("recorder", {}))
        self._load_cb_states(state.get("callbacks", {}))
        self._start_epoch, self._resume_iter = int(state["epoch"]), int(state["iter"])
        self.train_iter = int(state["train_iter"])
        self.epochs_done, self._epochs_base = int(state["epochs_done"]), int(state["epochs_base"])
        self.data_seed = int(state["data_seed"])
        gens = ckpt.section("extra/loader_gen")
        self._resume_gen_states = [gens[k] for k in sorted(gens, key=int)] if gens else None
        log.info("resumed from %s at epoch %d, batch %d", self.checkpoint_path, self._start_epoch,
                 self._resume_iter)

    def _setup_loaders(self) -> None:
        self.dl_train, self._epoch_sampler = train_loader(
            self.dls.train, self.data_seed, self.train_sampler, D.rank(), D.world_size())
        self._n_iter_full = len(self.dl_train)
        valid = getattr(self.dls, "valid", None)
        self.dl_valid = None if valid is None else valid_loader(valid, D.rank(), D.world_size())

    # ---- inference ----------------------------------------------------------------------------
    def get_preds(self, dl: Iterable | None = None, with_loss: bool = False,
                  with_embeddings: bool = False) -> Predictions:
        """Probabilities (softmax), targets and optionally per-item losses and embeddings (``model.embed``)
        over ``dl`` (default: the validation set, sharded and gathered under DDP). No callbacks run."""
        if dl is None:
            if getattr(self.dls, "valid", None) is None:
                raise ValueError("get_preds: no dl given and dls.valid is None")
            dl = valid_loader(self.dls.valid, D.rank(), D.world_size())
            gather = True
        else:
            gather = False
        if with_embeddings and not callable(getattr(self.model, "embed", None)):
            raise TypeError(f"{type(self.model).__name__} has no embed(x) method; with_embeddings needs it")
        was_training = self.model.training
        try:
            parts = self._eval_batches(dl, with_events=False, with_embeddings=with_embeddings)
        finally:
            self.model.train(was_training)
        res = self._gather(parts) if gather else {k: (np.concatenate(v) if v else None)
                                                  for k, v in parts.items()}
        if res["probs"] is None:
            raise ValueError("get_preds: the loader yielded no batches")
        return Predictions(res["probs"], res["targets"], res["losses"] if with_loss else None,
                           res["embeddings"] if with_embeddings else None)

    def validate(self, dl: Iterable | None = None) -> dict[str, float]:
        """``valid_loss`` and the metrics on ``dl`` (default: the validation set)."""
        preds = self.get_preds(dl, with_loss=True)
        return {"valid_loss": float(preds.losses.mean()),
                **compute_metrics(self.metrics, preds.probs, preds.targets)}

    def plain_predictor(self) -> Any:
        """This learner's model as a `medsuite.learn.predict.Predictor` without TTA or calibration (labels
        from ``dls.vocab``, else ``model.n_classes``), at the learner's AMP precision. Pipelines fit the
        bundle's predictor on validation instead (`medsuite.pipelines.tasks.TaskLearner.fit_predictor`)."""
        from medsuite.learn.predict import Predictor

        vocab = getattr(self.dls, "vocab", None)
        labels = [str(v) for v in vocab] if vocab else None
        precision = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.amp_dtype]
        return Predictor.plain(self.model, labels, precision=precision)

    def predict(self, item: Any) -> Prediction:
        """Class probabilities of one item (array or tensor without the batch dimension) and its arg-max
        class, through `plain_predictor` (the one inference chain)."""
        x = np.asarray(item.detach().cpu() if isinstance(item, torch.Tensor) else item, dtype=np.float32)
        probs = self.plain_predictor().predict_proba(x[None])[0]
        idx = int(probs.argmax())
        vocab = getattr(self.dls, "vocab", None)
        return Prediction(label=vocab[idx] if vocab is not None and idx < len(vocab) else idx, index=idx,
                          probs=probs)

    # ---- lr finder, export --------------------------------------------------------------------
    def lr_find(self, start_lr: float = 1e-7, end_lr: float = 10.0, num_it: int = 100, stop_div: bool = True):
        """Exponential learning-rate sweep; see `medsuite.learn.lr_find.lr_find`."""
        from medsuite.learn.lr_find import lr_find

        return lr_find(self, start_lr=start_lr, end_lr=end_lr, num_it=num_it, stop_div=stop_div)

    def snapshot(self) -> dict[str, Any]:
        """In-memory deep copy of weights, optimiser, RNG and history (used by `lr_find`; no files)."""
        return {
            "model": {k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()},
            "opt": None if self.opt is None else copy.deepcopy(self.opt.state_dict()),
            "rng": (random.getstate(), np.random.get_state(), torch.get_rng_state(),
                    torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None),
            "recorder": copy.deepcopy(self.recorder.state_dict()),
            "epochs_done": self.epochs_done,
            "scaler": None if self.scaler is None else copy.deepcopy(self.scaler.state_dict()),
        }

    def restore_snapshot(self, snap: dict[str, Any]) -> None:
        """Undo everything since `snapshot`."""
        self.model.load_state_dict(snap["model"])
        if snap["opt"] is None:
            self.opt = None
        else:
            self.opt.load_state_dict(snap["opt"])
        py, npy, tch, cuda = snap["rng"]
        random.setstate(py)
        np.random.set_state(npy)
        torch.set_rng_state(tch)
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)
        self.recorder.load_state_dict(snap["recorder"])
        self.epochs_done = snap["epochs_done"]
        if snap["scaler"] is not None:
            self.scaler.load_state_dict(snap["scaler"])

    def train_config(self) -> dict[str, Any]:
        """What was trained and how (JSON-able; goes into exported bundles)."""
        dl = self.dls.train
        return {
            "loss_func": repr(self.loss_func), "opt_func": getattr(self.opt_func, "__name__", repr(self.opt_func)),
            "lr": self.lr, "wd": self.wd, "amp": None if self.amp_dtype is None else str(self.amp_dtype),
            "seed": self.seed, "deterministic": self.deterministic, "fits": self.fit_history,
            "batch_size": getattr(dl, "batch_size", None), "world_size": D.world_size(),
            "callbacks": [cb.name for cb in self.cbs], "metrics": [_metric_name(m) for m in self.metrics],
            "epochs_done": self.epochs_done,
        }

    def export(self, path: str | Path, **bundle_fields: Any) -> Path | None:
        """Write a model bundle with `medsuite.learn.bundle.export_bundle` (rank 0 only; None elsewhere).

        ``labels`` defaults to ``dls.vocab``, ``block_spec`` to ``dls.block.spec()``, ``metrics`` to the
        last epoch's validation numbers and ``train_config`` to `train_config`; ``arch``,
        ``arch_kwargs``, ``threshold`` and ``task`` must be given."""
        from medsuite.learn.bundle import export_bundle

        fields = dict(bundle_fields)
        if "labels" not in fields and getattr(self.dls, "vocab", None) is not None:
            fields["labels"] = [str(v) for v in self.dls.vocab]
        block = getattr(self.dls, "block", None)
        if "block_spec" not in fields and block is not None:
            fields["block_spec"] = block.spec()
        if "metrics" not in fields:
            fields["metrics"] = {k: v for k, v in self.recorder.last.items()
                                 if k not in ("epoch", "lr", "mom", "time_s") and isinstance(v, (int, float))}
        fields.setdefault("train_config", self.train_config())
        missing = [k for k in ("arch", "arch_kwargs", "block_spec", "labels", "threshold", "task")
                   if k not in fields]
        if missing:
            raise ValueError(f"export({path}): missing bundle fields {missing} (see docs/contracts.md, Bundles)")
        if not self.is_main:
            return None
        return export_bundle(path, self.model, **fields)
