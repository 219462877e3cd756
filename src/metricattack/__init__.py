"""metricattack: adversarial metric attack and defence for person re-identification."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("metricattack")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
