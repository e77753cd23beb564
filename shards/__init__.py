"""The contract between ``actgen-train`` and ``actgen-build``: file formats, readers and writers.

Both programs import this package; neither imports the other. Every format carries a
``format`` name and a ``format_version``; see ``FORMAT.md`` beside this file.
"""
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("actgen")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

FORMAT_VERSION = 1
