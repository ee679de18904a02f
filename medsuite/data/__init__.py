"""Mid-tier data: DataBlock, 2.5D input blocks sampled in world millimetres, splitters, augmentation, tables, dataset adapters and the demo cohort.

The names below are the public API of this layer; they load on first use."""

from typing import TYPE_CHECKING

from medsuite._exports import lazy_exports

_EXPORTS = {
    "DataBlock": "medsuite.data.block",
    "DataLoaders": "medsuite.data.block",
    "DataBlockError": "medsuite.data.block",
    "BlockDataset": "medsuite.data.block",
    "BlockLoader": "medsuite.data.block",
    "show_samples": "medsuite.data.block",
    "InputBlock": "medsuite.data.blocks",
    "SliceStack": "medsuite.data.blocks",
    "MultiView": "medsuite.data.blocks",
    "TriPlanar": "medsuite.data.blocks",
    "SeriesSlices": "medsuite.data.blocks",
    "Patch3D": "medsuite.data.blocks",
    "Category": "medsuite.data.blocks",
    "block_from_spec": "medsuite.data.blocks",
    "Augment": "medsuite.data.augment",
    "BatchIntensity": "medsuite.data.augment",
    "VolumeSource": "medsuite.data.source",
    "SourceError": "medsuite.data.source",
    "PatientSplitter": "medsuite.data.splitters",
    "StratifiedPatientSplitter": "medsuite.data.splitters",
    "KFoldPatientSplitter": "medsuite.data.splitters",
    "ColumnSplitter": "medsuite.data.splitters",
    "default_splitter": "medsuite.data.splitters",
    "read_table": "medsuite.data.tables",
    "validate_nodule_table": "medsuite.data.tables",
    "validate_series_table": "medsuite.data.tables",
    "TableError": "medsuite.data.tables",
    "Window": "medsuite.data.windows",
    "resolve_window": "medsuite.data.windows",
    "resolve_windows": "medsuite.data.windows",
    "lidc_nodules": "medsuite.data.lidc",
    "LabelRule": "medsuite.data.lidc",
    "get_label_rule": "medsuite.data.lidc",
    "LidcError": "medsuite.data.lidc",
    "lidc_match_summary": "medsuite.data.lidc",
    "luna16_annotations": "medsuite.data.luna16",
    "luna16_candidates": "medsuite.data.luna16",
    "luna16_match_summary": "medsuite.data.luna16",
    "load_nodulemnist3d": "medsuite.data.nodulemnist",
    "read_series_csv": "medsuite.data.series_csv",
    "make_demo_cohort": "medsuite.data.demo",
    "DemoError": "medsuite.data.demo",
}
__all__ = [
    "Augment",
    "BatchIntensity",
    "BlockDataset",
    "BlockLoader",
    "Category",
    "ColumnSplitter",
    "DataBlock",
    "DataBlockError",
    "DataLoaders",
    "DemoError",
    "InputBlock",
    "KFoldPatientSplitter",
    "LabelRule",
    "LidcError",
    "MultiView",
    "Patch3D",
    "PatientSplitter",
    "SeriesSlices",
    "SliceStack",
    "SourceError",
    "StratifiedPatientSplitter",
    "TableError",
    "TriPlanar",
    "VolumeSource",
    "Window",
    "block_from_spec",
    "default_splitter",
    "get_label_rule",
    "lidc_match_summary",
    "lidc_nodules",
    "load_nodulemnist3d",
    "luna16_annotations",
    "luna16_candidates",
    "luna16_match_summary",
    "make_demo_cohort",
    "read_series_csv",
    "read_table",
    "resolve_window",
    "resolve_windows",
    "show_samples",
    "validate_nodule_table",
    "validate_series_table",
]
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

if TYPE_CHECKING:
    from medsuite.data.augment import Augment, BatchIntensity
    from medsuite.data.block import (
        BlockDataset,
        BlockLoader,
        DataBlock,
        DataBlockError,
        DataLoaders,
        show_samples,
    )
    from medsuite.data.blocks import (
        Category,
        InputBlock,
        MultiView,
        Patch3D,
        SeriesSlices,
        SliceStack,
        TriPlanar,
        block_from_spec,
    )
    from medsuite.data.demo import DemoError, make_demo_cohort
    from medsuite.data.lidc import LabelRule, LidcError, get_label_rule, lidc_match_summary, lidc_nodules
    from medsuite.data.luna16 import luna16_annotations, luna16_candidates, luna16_match_summary
    from medsuite.data.nodulemnist import load_nodulemnist3d
    from medsuite.data.series_csv import read_series_csv
    from medsuite.data.source import SourceError, VolumeSource
    from medsuite.data.splitters import (
        ColumnSplitter,
        KFoldPatientSplitter,
        PatientSplitter,
        StratifiedPatientSplitter,
        default_splitter,
    )
    from medsuite.data.tables import TableError, read_table, validate_nodule_table, validate_series_table
    from medsuite.data.windows import Window, resolve_window, resolve_windows
