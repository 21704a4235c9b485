"""Segment Editor effect "Refine boundary" (Slicer application only: imports Qt and the editor's effects).

Registered as Slicer registers its own effects (``SegmentEditorEffects.registerEffects``): this
package is imported first, so ``setPythonSource`` finds the effect class in it (module name: this
folder; class name: the file's name) instead of loading the file a second time.
"""
import os

from .SegmentEditorRefineBoundaryEffect import SegmentEditorRefineBoundaryEffect  # noqa: F401

EFFECT_SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "SegmentEditorRefineBoundaryEffect.py")


def registerEffect() -> None:
    """Add "Refine boundary" to the Segment Editor's effects (the factory ignores a second registration)."""
    import qSlicerSegmentationsEditorEffectsPythonQt as effects

    instance = effects.qSlicerSegmentEditorScriptedEffect(None)
    instance.setPythonSource(EFFECT_SOURCE.replace("\\", "/"))
    instance.self().register()
