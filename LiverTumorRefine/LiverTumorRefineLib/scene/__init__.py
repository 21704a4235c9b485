"""The 3D Slicer adapter: the only package that imports slicer/vtk (never qt)."""
