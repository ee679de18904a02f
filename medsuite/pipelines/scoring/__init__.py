"""Batch scoring: discover series, keep the eligible ones, score them with a bundle (locally or on Ray),
write SQLite rows and Parquet/CSV outputs, resume after a crash. Entry point: `score(ScoreConfig(...))`."""

from medsuite.pipelines.scoring.discover import Rules, apply_overrides, rules_from_bundle
from medsuite.pipelines.scoring.runner import (
    EXIT_FAILED,
    EXIT_NOTHING_SCORED,
    EXIT_OK,
    EXIT_SOME_FAILED,
    EXIT_USAGE,
    ScoreConfig,
    Summary,
    UsageError,
    score,
)

__all__ = [
    "EXIT_FAILED", "EXIT_NOTHING_SCORED", "EXIT_OK", "EXIT_SOME_FAILED", "EXIT_USAGE", "Rules", "ScoreConfig", "Summary",
    "UsageError", "apply_overrides", "rules_from_bundle", "score",
]
