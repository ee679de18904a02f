"""The clinician viewer (Streamlit): worklist, linked planes, score, why, similar cases, reviews and audit.

Started with ``medsuite view``; the app is ``medsuite/viewer/app.py`` (run by Streamlit). Importing this package
imports nothing heavy; its modules need the ``viewer`` extra (Streamlit).
"""
