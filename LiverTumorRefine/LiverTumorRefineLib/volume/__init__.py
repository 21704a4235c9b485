"""Volumes in and out: geometry, NIfTI/NRRD/DICOM IO, input checks and atomic writes."""
