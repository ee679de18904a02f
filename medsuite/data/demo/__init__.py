"""The offline demo cohort: synthetic chest CT series holding real LIDC-IDRI nodules (see `cohort`)."""

from medsuite.data.demo.cohort import DemoError, make_demo_cohort

__all__ = ["DemoError", "make_demo_cohort"]
