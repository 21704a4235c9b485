"""Synthetic abdominal CT phantoms with liver and tumour labels, for training and evaluation.

The network must learn liver-tumour boundaries, not this generator, so nearly everything is drawn
at random per case: voxel grid, body habitus, organ shapes and positions, contrast phase, lesion
count, size, shape and appearance, blur and noise.

How it works. Every structure is an implicit function ``F(z, y, x)`` of local millimetre
coordinates, negative inside and close to a signed distance near its surface. Big smooth organs are
evaluated on a coarse grid and upsampled trilinearly (cheap, and a smooth surface loses nothing);
small ones are evaluated in their bounding box. Partial volume comes from the voxel footprint of
``F``: a voxel whose centre has value ``F`` and across which ``F`` changes by ``w`` (sum over the
three axes of ``|dF|``) is ``0.5 - F / w`` inside, clipped to [0, 1]. That is exact for a plane
and widens by itself across thick slices, so a tumour cap filling half a 5 mm slice shows half its
contrast, as on a scanner. Labels are the voxel centres inside (``F < 0``).

Local frame: x towards the patient's left, y posterior, z superior (the LPS axes), origin at the
body centre at mid-liver height. The written image is that frame shifted by a random offset, with
identity direction.

Modules, in the order ``make_phantom`` (generate.py) uses them: anatomy (contrast phase, habitus,
organ placement), voxelgrid (spacing, matrix, field of view), body, organs, skeleton, liver,
bowel, vessels, lesions with look (each lesion's appearance), scanner (shading, kernel blur,
noise). grid, fields, shapes, canvas and blur are the building blocks; case holds ``Case``.
"""
from LiverTumorRefineLib.training.phantom.case import BACKGROUND, LIVER, TUMOUR, Case, write_case
from LiverTumorRefineLib.training.phantom.generate import make_phantom, write_phantoms
from LiverTumorRefineLib.training.phantom.voxelgrid import MAX_VOXELS

__all__ = ["BACKGROUND", "LIVER", "MAX_VOXELS", "TUMOUR", "Case", "make_phantom", "write_case", "write_phantoms"]
