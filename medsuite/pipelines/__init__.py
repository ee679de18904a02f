"""Applications: nodule malignancy and series classification (``from medsuite.pipelines import nodule``), training from a YAML config, evaluation and reports, baselines, batch scoring and the demo.

The names below are the public API of this layer; they load on first use."""

from typing import TYPE_CHECKING

from medsuite._exports import lazy_exports

_EXPORTS = {
    "PipelineConfig": "medsuite.pipelines.config",
    "ConfigError": "medsuite.pipelines.config",
    "load_config": "medsuite.pipelines.config",
    "run_training": "medsuite.pipelines.train",
    "TrainResult": "medsuite.pipelines.train",
    "evaluate_bundle": "medsuite.pipelines.evaluate",
    "report_from_scores": "medsuite.pipelines.evaluation",
    "diameter_baseline": "medsuite.pipelines.baselines",
    "radiomics_baseline": "medsuite.pipelines.baselines",
    "score": "medsuite.pipelines.scoring",
    "ScoreConfig": "medsuite.pipelines.scoring",
    "Summary": "medsuite.pipelines.scoring",
    "run_demo": "medsuite.pipelines.demo",
    "series_from_nodules": "medsuite.pipelines.series_pooling",
}
__all__ = [
    "ConfigError",
    "PipelineConfig",
    "ScoreConfig",
    "Summary",
    "TrainResult",
    "diameter_baseline",
    "evaluate_bundle",
    "load_config",
    "radiomics_baseline",
    "report_from_scores",
    "run_demo",
    "run_training",
    "score",
    "series_from_nodules",
]
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

if TYPE_CHECKING:
    from medsuite.pipelines.baselines import diameter_baseline, radiomics_baseline
    from medsuite.pipelines.config import ConfigError, PipelineConfig, load_config
    from medsuite.pipelines.demo import run_demo
    from medsuite.pipelines.evaluate import evaluate_bundle
    from medsuite.pipelines.evaluation import report_from_scores
    from medsuite.pipelines.scoring import ScoreConfig, Summary, score
    from medsuite.pipelines.series_pooling import series_from_nodules
    from medsuite.pipelines.train import TrainResult, run_training
