"""eftclip: find and remove backdoors in CLIP models (EftCLIP).

The package is a library with a thin command line (``eftclip <verb>``) over it.
One sub-package per stage of the defense: ``data``, ``attacks``, ``models``,
``oracles``, ``detection``, ``curation``, ``training``, ``evaluation``,
``reporting``, ``world`` (the built-in synthetic world) and ``pipeline``
(``demo`` and ``study``).
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("eftclip")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+unknown"

from eftclip.errors import EftclipError

__all__ = ["EftclipError", "__version__"]
