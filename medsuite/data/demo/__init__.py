"""The offline demo cohort: synthetic chest CT series holding real LIDC-IDRI nodules (see `cohort`)."""

from medsuite.data.demo.cohort import (
    MAX_DIAMETER_MM,
    DemoError,
    indexed_lidc_copy,
    make_demo_cohort,
    reader_ratings,
)

__all__ = ["MAX_DIAMETER_MM", "DemoError", "indexed_lidc_copy", "make_demo_cohort", "reader_ratings"]
