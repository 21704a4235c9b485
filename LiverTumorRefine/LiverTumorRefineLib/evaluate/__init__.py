"""Evaluation: metrics, lesion review, overlays and QA sheets."""
