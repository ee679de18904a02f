"""medsuite: geometry-correct DICOM I/O, 2.5D deep learning, interpretation, batch scoring and review."""

__version__ = "0.1.0"
