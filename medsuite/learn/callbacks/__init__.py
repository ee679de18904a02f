"""Callbacks for the `Learner`: the base class, events and cancel exceptions, and the built-ins.

Heavy optional dependencies (tensorboard, matplotlib) are imported only when used.
"""

from medsuite.learn.callbacks.accumulate import GradientAccumulation, GradientClip
from medsuite.learn.callbacks.activations import ActivationStats
from medsuite.learn.callbacks.core import (
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
from medsuite.learn.callbacks.logging import CSVLogger, TensorBoardLogger
from medsuite.learn.callbacks.mixup import CutMix, MixUp
from medsuite.learn.callbacks.progress import ProgressCallback
from medsuite.learn.callbacks.recorder import Recorder
from medsuite.learn.callbacks.regularize import LabelSmoothingCrossEntropy
from medsuite.learn.callbacks.sampling import ClassBalancedSampler, ClassBalancedSampling
from medsuite.learn.callbacks.tracking import EarlyStopping, SaveBest, TrackerCallback

__all__ = [
    "EVENTS",
    "ActivationStats",
    "CSVLogger",
    "Callback",
    "CallbackError",
    "CancelBackwardException",
    "CancelBatchException",
    "CancelEpochException",
    "CancelFitException",
    "CancelStepException",
    "CancelTrainException",
    "CancelValidateException",
    "ClassBalancedSampler",
    "ClassBalancedSampling",
    "CutMix",
    "EarlyStopping",
    "GradientAccumulation",
    "GradientClip",
    "LabelSmoothingCrossEntropy",
    "MixUp",
    "ProgressCallback",
    "Recorder",
    "SaveBest",
    "TensorBoardLogger",
    "TrackerCallback",
]
