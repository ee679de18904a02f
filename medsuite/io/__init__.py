"""Foundations: DICOM discovery and series -> `Volume`, other formats via SimpleITK, NIfTI export, the volume cache."""

from medsuite.io.volume import Volume

__all__ = ["Volume"]
