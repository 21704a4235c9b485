"""LiverTumorRefine engine: boundary patch refinement of coarse liver-tumour segmentations.

Pure Python on numpy, torch and SimpleITK; never imports slicer, qt or vtk (except ``logic``,
which only the Slicer module imports).
"""
__version__ = "0.1.0"
