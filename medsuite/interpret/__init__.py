"""Interpretation: Captum attributions in world coordinates, similar-case index, sanity checks, top losses."""
