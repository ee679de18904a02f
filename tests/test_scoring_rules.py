"""Eligibility rules: defaults from a bundle, user overrides, and one decision per series with a reason."""

from __future__ import annotations

import pandas as pd
import pytest

from medsuite.pipelines.scoring.discover import (
    RuleError,
    Rules,
    apply_overrides,
    decide,
    image_type_tokens,
    rules_from_bundle,
)


def _row(uid: str, **kw) -> dict:
    row = {"series_uid": uid, "stack_id": uid, "modality": "CT", "n_instances": 40, "slice_thickness": 1.25,
           "spacing_z": 1.25, "orientation": "axial", "image_type": "ORIGINAL\\PRIMARY\\AXIAL", "status": "ok",
           "problems": "", "files": [f"/x/{uid}/1.dcm"], "patient_id": "P1"}
    row.update(kw)
    return row


def test_default_rules_reasons():
    rules = Rules()
    assert rules.reason_to_skip(_row("a")) is None
    assert "modality MR" in rules.reason_to_skip(_row("a", modality="MR"))
    assert "fewer than min_slices=10" in rules.reason_to_skip(_row("a", n_instances=3))
    assert "above max_slice_thickness=5" in rules.reason_to_skip(_row("a", slice_thickness=7.5))
    assert "LOCALIZER" in rules.reason_to_skip(_row("a", image_type=["ORIGINAL", "PRIMARY", "LOCALIZER"]))
    assert "DERIVED" in rules.reason_to_skip(_row("a", image_type="DERIVED\\SECONDARY\\MPR"))
    # slice thickness missing: falls back to the spacing between slices
    assert "above" in rules.reason_to_skip(_row("a", slice_thickness=None, spacing_z=6.0))


def test_overrides_parse_and_lift():
    rules = apply_overrides(Rules(), ["modality=ct,mr", "min_slices=50", "max_slice_thickness=none",
                                      "orientation=axial", "exclude-image-type=LOCALIZER"])
    assert rules.modality == ("CT", "MR")
    assert rules.min_slices == 50 and rules.max_slice_thickness is None
    assert rules.orientation == ("axial",)
    assert rules.exclude_image_type == ("LOCALIZER",)
    assert rules.reason_to_skip(_row("a", modality="MR", n_instances=60, slice_thickness=8.0)) is None
    assert "orientation coronal" in rules.reason_to_skip(_row("a", n_instances=60, orientation="coronal"))
    assert apply_overrides(Rules(), ["modality=any"]).reason_to_skip(_row("a", modality="PT")) is None


@pytest.mark.parametrize("bad, words", [("min_slices", "key=value"), ("colour=red", "unknown rule 'colour'"),
                                        ("min_slices=ten", "must be a int"), ("max_slice_thickness=-1", "negative")])
def test_bad_overrides_name_the_rule(bad, words):
    with pytest.raises(RuleError, match=words):
        apply_overrides(Rules(), [bad])


def test_rules_from_bundle_meta():
    rules = rules_from_bundle({"modality": "MR", "eligibility": {"min_slices": 30, "orientation": ["axial"],
                                                                  "max_slice_thickness": None, "future": 1}})
    assert rules.modality == ("MR",) and rules.min_slices == 30
    assert rules.orientation == ("axial",) and rules.max_slice_thickness is None
    assert rules_from_bundle({}) == Rules()


def test_image_type_tokens_forms():
    assert image_type_tokens("ORIGINAL\\PRIMARY\\AXIAL") == ["ORIGINAL", "PRIMARY", "AXIAL"]
    assert image_type_tokens(["derived", "secondary"]) == ["DERIVED", "SECONDARY"]
    assert image_type_tokens("['ORIGINAL', 'PRIMARY']") == ["ORIGINAL", "PRIMARY"]
    assert image_type_tokens(None) == []


def test_decide_one_decision_per_series():
    table = pd.DataFrame([
        _row("good"),
        _row("loc", image_type="ORIGINAL\\PRIMARY\\LOCALIZER", n_instances=3),
        _row("bad", status="error", problems="inconsistent rows/cols"),
        # two stacks of one series: the eligible, larger one is scored
        _row("two", stack_id="two#1", n_instances=5),
        _row("two", stack_id="two#2", n_instances=30),
    ])
    decisions = {d.series_uid: d for d in decide(table, Rules())}
    assert set(decisions) == {"good", "loc", "bad", "two"}
    assert decisions["good"].action == "score" and decisions["good"].reason is None
    assert decisions["loc"].action == "skip" and "LOCALIZER" in decisions["loc"].reason
    assert decisions["bad"].action == "error" and "inconsistent rows/cols" in decisions["bad"].reason
    assert decisions["two"].action == "score" and decisions["two"].row["stack_id"] == "two#2"
    assert decide(pd.DataFrame(columns=["series_uid"]), Rules()) == []
