"""Qt parts of the Liver Tumor Refine module that do not fit its thin module file.

A package beside ``LiverTumorRefine.py`` rather than a second ``.py`` there: Slicer loads every
top-level ``.py`` of a scripted-module folder as a module and reports an error for a helper file.
Runs only inside 3D Slicer (``qt``); the logic they call is in ``LiverTumorRefineLib.scene``.
"""
