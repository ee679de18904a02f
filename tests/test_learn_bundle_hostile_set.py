"""The hostile-bundle set (tests/hostile_bundles.py, issue 17 item 7): 85 variants built from one complete bundle
(predictor section and case index): lying sizes, shapes and types in bundle.json, bundle.json itself broken,
unlisted / pickled / forged files, forged safetensors headers, zip bombs and zip tricks, links and special
files, broken predictor sections and case indexes. Each is refused with one error naming the bundle: by
`load_bundle`, or for the case index and the eligibility rules (read by higher layers) by the code that reads
them, as `medsuite score` / `explain` / the viewer do. Peak memory on the size variants is measured in a
fresh interpreter by tests/test_learn_bundle_hostile.py."""

from __future__ import annotations

from pathlib import Path

import hostile_bundles as H
import numpy as np
import pytest
import torch

from medsuite.data.blocks import SliceStack
from medsuite.interpret.index import CaseIndex
from medsuite.learn.bundle import BundleError, export_bundle, load_bundle
from medsuite.learn.models import build_model
from medsuite.learn.predict import Calibration, Predictor, PredictorError, PredictorSettings
from medsuite.pipelines.scoring.discover import RuleError, rules_from_bundle

KW = {"in_channels": 3, "n_classes": 2, "width": 4, "depth": 2}


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> Path:
    """A complete folder bundle: a predictor section (flip TTA, isotonic calibration) and a case index."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    n = 24
    index = CaseIndex(rng.standard_normal((n, 8)), [f"case{i}" for i in range(n)],
                      [int(v) for v in rng.integers(0, 2, n)], rng.integers(0, 255, (n, 16, 16), dtype=np.uint8),
                      {"embed_dim": 8})
    predictor = PredictorSettings(labels=("benign", "malignant"), positive="malignant", tta=((), (-1,)),
                                  calibration=Calibration("isotonic", x=(0.0, 0.5, 1.0), y=(0.0, 0.4, 1.0)))
    path = tmp_path_factory.mktemp("good") / "good.bundle"
    return export_bundle(path, build_model("slice_cnn", **KW), arch="slice_cnn", arch_kwargs=KW,
                         block_spec=SliceStack(k=3, size=16, spacing_mm=2.0).spec(), labels=["benign", "malignant"],
                         threshold=0.5, task="nodule", extra_files=index.to_extra_files(),
                         predictor=predictor.to_json())


def test_the_good_bundle_loads(good):
    bundle = load_bundle(good)
    assert bundle.labels == ["benign", "malignant"] and CaseIndex.from_bundle(bundle) is not None


# sections read by the code that uses them (the learn layer cannot import the interpret or pipelines layers):
# refused there, with one line naming the bundle (or the section), when a command opens them
PREDICTOR = {"tta 10^6 flips", "tta axis -99", "predictor positive unknown", "predictor labels differ",
             "predictor not a mapping", "calibration 2M points"}
INDEX = {"index counts disagree", "index embeddings shape forged", "index cases.json not JSON"}
RULES = {"eligibility bogus"}
# well-formed, bounded, and merely a bad model (docs/guarantees.md section 5, "Not promised")
ACCEPTED = {"block pixel 1e-9"}


def _open(path: Path, name: str) -> None:
    """What `medsuite score` / `explain` / the viewer do with a bundle, up to the section the variant spoils."""
    bundle = load_bundle(path)
    if name in PREDICTOR:
        Predictor.from_bundle(bundle)
    elif name in INDEX:
        CaseIndex.from_bundle(bundle)
    elif name in RULES:
        rules_from_bundle(bundle.meta)


@pytest.mark.parametrize("name", [name for name, _ in H.VARIANTS])
def test_each_hostile_bundle_is_refused_naming_it(good, tmp_path, name):
    path = H.build(name, good, tmp_path / "work")
    if name in ACCEPTED:
        _open(path, name)
        return
    with pytest.raises((BundleError, PredictorError, RuleError, ValueError)) as err:  # (the index: ValueError)
        _open(path, name)
    message = str(err.value)
    assert "\n" not in message.strip(), message
    named = path.name in message or str(path) in message
    assert named or (name in RULES and "eligibility" in message), message
