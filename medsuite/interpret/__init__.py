"""Interpretation: Captum attributions mapped back onto the scan, the similar-case index, top losses and sanity checks.

The names below are the public API of this layer; they load on first use."""

from typing import TYPE_CHECKING

from medsuite._exports import lazy_exports

_EXPORTS = {
    "Attribution": "medsuite.interpret.attributions",
    "attribute": "medsuite.interpret.attributions",
    "integrated_gradients": "medsuite.interpret.attributions",
    "occlusion": "medsuite.interpret.attributions",
    "grad_cam": "medsuite.interpret.attributions",
    "Explanation": "medsuite.interpret.explain",
    "explain": "medsuite.interpret.explain",
    "CaseIndex": "medsuite.interpret.index",
    "build_case_index": "medsuite.interpret.index",
    "knn_agreement": "medsuite.interpret.index",
    "LossTable": "medsuite.interpret.losses",
    "collect_losses": "medsuite.interpret.losses",
    "loss_table": "medsuite.interpret.losses",
    "splat_to_volume": "medsuite.interpret.mapping",
    "slice_importance": "medsuite.interpret.mapping",
    "randomization_test": "medsuite.interpret.sanity",
    "deletion_insertion": "medsuite.interpret.sanity",
}
__all__ = [
    "Attribution",
    "CaseIndex",
    "Explanation",
    "LossTable",
    "attribute",
    "build_case_index",
    "collect_losses",
    "deletion_insertion",
    "explain",
    "grad_cam",
    "integrated_gradients",
    "knn_agreement",
    "loss_table",
    "occlusion",
    "randomization_test",
    "slice_importance",
    "splat_to_volume",
]
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

if TYPE_CHECKING:
    from medsuite.interpret.attributions import (
        Attribution,
        attribute,
        grad_cam,
        integrated_gradients,
        occlusion,
    )
    from medsuite.interpret.explain import Explanation, explain
    from medsuite.interpret.index import CaseIndex, build_case_index, knn_agreement
    from medsuite.interpret.losses import LossTable, collect_losses, loss_table
    from medsuite.interpret.mapping import slice_importance, splat_to_volume
    from medsuite.interpret.sanity import deletion_insertion, randomization_test
