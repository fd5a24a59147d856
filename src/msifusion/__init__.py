"""msifusion: super-resolution fusion of mass spectrometry imaging with microscopy.

The library is usable without the CLI::

    from msifusion import fuse, read_optical, read_ion
    result = fuse(read_optical("he.png").pixels, read_ion("ion.tiff").pixels, method="lcrn")
    result.image  # float32, the optical's shape, in the ion image's units

``fuse_many`` fuses a stack of ions (K, h, w) on one guide, sharing the work.
"""

from msifusion.errors import InputError

__version__ = "0.1.0"

__all__ = ["InputError", "__version__", "fuse", "fuse_many", "read_ion", "read_optical"]


def __getattr__(name: str):
    # Lazy so that `import msifusion` (and the CLI's --help) does not pay for torch.
    if name in ("fuse", "fuse_many"):
        from msifusion import methods

        return getattr(methods, name)
    if name in ("read_ion", "read_optical"):
        from msifusion.io import images

        return getattr(images, name)
    raise AttributeError(name)


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})  # the lazy names too, for tab completion
