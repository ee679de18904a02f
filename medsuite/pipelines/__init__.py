"""Applications: nodule malignancy, series classification, batch scoring, reports."""
