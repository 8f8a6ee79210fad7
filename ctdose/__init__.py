"""ctdose: an open compendium for personalised CT dosimetry with neural networks.

Reproduces Kuhlmann, Martin & Pojtinger, *Use of synthetic data for training dose
estimation neural networks in CT dosimetry*, with open stand-ins for the data that
are not public (see README).
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("ctdose")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
