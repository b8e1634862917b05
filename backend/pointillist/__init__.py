"""Pointillist: one portrait in, an animatable 3D Gaussian-splat head avatar out.

The package root imports nothing heavy, so numpy-only modules (PLY layout, cameras) can be
carried by the Blender add-on without torch.
"""

__version__ = "0.1.0"
