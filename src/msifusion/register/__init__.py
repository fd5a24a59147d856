"""Registration of the microscope image onto the MSI grid: landmarks (BigWarp) or automatic.

Three modules of algorithms, each readable on its own, and the module that uses them on a user's files:

- :mod:`msifusion.register.transforms`: the :class:`Grid`, the fixed → moving point maps (thin-plate spline,
  affine, displacement field), landmarks to and from a transform, and the landmark sanity checks;
- :mod:`msifusion.register.resample`: tiled resampling of the optical onto a fixed grid (:func:`resample_optical`);
- :mod:`msifusion.register.automatic`: automatic registration (:func:`register_auto`): pose search, SimpleITK polish;
- :mod:`msifusion.register.optical` (imported on its own, not here: it draws the figures a
  registration writes): registration from files, :class:`~msifusion.register.optical.RegisterSettings` and
  :func:`~msifusion.register.optical.register_optical`, and what a registration writes.

Coordinates
-----------
Every image lives on a :class:`Grid`: pixel ``(row i, column j)`` has its centre at the
calibrated point ``x = j·pixel_size + origin_x``, ``y = i·pixel_size + origin_y`` (Fiji's and
ITK's convention: pixel centres at integer indices). Uncalibrated images have pixel size 1.

The optical image is the MOVING image; the FIXED image is the ion grid, or the ion grid
refined by an integer ``scale`` (:meth:`Grid.refined`: each ion pixel split into
``scale × scale`` sub-pixels covering the same area, as ``measurement.upsample`` assumes).
A transform maps FIXED calibrated points to MOVING calibrated points: the pull-back a
resampler needs, and the direction of BigWarp's thin-plate spline.
"""

from msifusion.register.automatic import (AMBIGUOUS_PX, CONVINCING_SCORE, AutoRegisterOptions, Polish, PoseSearch,
                                          Registration, acquired_window, optical_feature, otsu_level, register_auto,
                                          similarity)
from msifusion.register.resample import (PixelMap, ResampleOptions, coarse_lattice, moving_index_map, outside_share,
                                        resample_optical)
from msifusion.register.transforms import (AffineMap, DisplacementMap, Grid, PointMap, ThinPlateSpline, check_landmarks,
                                           landmarks_from_transform, transform_from_landmarks)

__all__ = [
    "AMBIGUOUS_PX", "CONVINCING_SCORE", "AffineMap", "AutoRegisterOptions", "DisplacementMap", "Grid", "PixelMap",
    "PointMap", "Polish", "PoseSearch", "Registration", "ResampleOptions", "ThinPlateSpline", "acquired_window", "check_landmarks",
    "coarse_lattice", "landmarks_from_transform", "moving_index_map", "optical_feature", "otsu_level", "outside_share",
    "register_auto", "resample_optical", "similarity", "transform_from_landmarks",
]
