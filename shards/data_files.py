"""Where a labeled data set's rows come from, before :mod:`.sources` checks and fingerprints
them: the embedded digits, an image folder (listed within bounds first), a ``save_to_disk``
folder, parquet/arrow/csv/json files or globs, the same in an object store (``s3://``, ``gs://``;
fsspec), or a hub name."""
from __future__ import annotations

import glob
from pathlib import Path

from .errors import FormatError
from .folders import check_folder_size
from .transfer import is_http, is_url

_FILE_BUILDERS = {".parquet": "parquet", ".arrow": "arrow", ".csv": "csv",
                  ".json": "json", ".jsonl": "json"}


def _looks_local(path: str) -> bool:
    """Whether a missing ``path`` was meant as a local file rather than a hub name (owner/name)."""
    if any(c in path for c in "*?[") or path.startswith(("/", ".", "~")):
        return True
    if Path(path).suffix.lower() in _FILE_BUILDERS:
        return True
    return path.count("/") > 1


def load_rows(source):
    """The ``datasets.Dataset`` that ``source`` (a :class:`~.sources.DataSource`) names; FormatError
    naming the path when it cannot be read."""
    import datasets

    from .sources import BUILTIN_DIGITS, digits_dataset

    path = source.path
    if path.startswith("builtin:"):
        if path != BUILTIN_DIGITS:
            raise FormatError(path, f"unknown built-in data set; the only one is {BUILTIN_DIGITS!r}")
        return digits_dataset()
    try:
        if is_url(path) and not is_http(path):
            return _load_remote(path, source)
    except FormatError:
        raise
    except (ValueError, KeyError, FileNotFoundError, OSError) as e:
        raise FormatError(path, f"cannot load split {source.split!r}: {e}") from e
    local = Path(path).expanduser()
    try:
        if local.is_dir():
            return _load_directory(local, source)
        if local.is_file() or any(c in path for c in "*?["):
            return _load_files(str(local), source)
        if _looks_local(path):
            raise FormatError(path, "no such file or directory")
        # A hub name: needs the network; never exercised in tests.
        return datasets.load_dataset(path, split=source.split)
    except FormatError:
        raise
    except (ValueError, KeyError, FileNotFoundError) as e:
        # datasets reports unknown splits and unreadable files with these; re-raise naming the path.
        raise FormatError(path, f"cannot load split {source.split!r}: {e}") from e


def _load_directory(directory: Path, source):
    import datasets

    if (directory / "dataset_dict.json").is_file():
        dd = datasets.load_from_disk(str(directory))
        if source.split not in dd:
            raise FormatError(str(directory), f"split {source.split!r} not found; splits present: {list(dd)}")
        return dd[source.split]
    if (directory / "state.json").is_file() and (directory / "dataset_info.json").is_file():
        return datasets.load_from_disk(str(directory))
    check_folder_size(directory)
    return datasets.load_dataset("imagefolder", data_dir=str(directory), split=source.split)


def _load_remote(url: str, source):
    """A data set in an object store (``s3://``, ``gs://``, ...; fsspec with the scheme's package):
    a ``save_to_disk`` folder (what ``actgen-data import`` writes), or parquet/arrow/csv/json files
    or a glob of them. ``datasets`` copies what it reads into its local cache."""
    import datasets
    import fsspec

    fs, root = fsspec.core.url_to_fs(url)
    scheme = url.split("://", 1)[0]
    if not any(c in root for c in "*?[") and fs.isdir(root):
        if fs.exists(f"{root}/dataset_dict.json"):
            dd = datasets.load_from_disk(url)
            if source.split not in dd:
                raise FormatError(url, f"split {source.split!r} not found; splits present: {list(dd)}")
            return dd[source.split]
        if fs.exists(f"{root}/state.json"):
            return datasets.load_from_disk(url)
        raise FormatError(url, "a folder in an object store is read as a save_to_disk folder (actgen-data import "
                               "writes one), and this one holds no state.json")
    files = sorted(fs.glob(root)) if any(c in root for c in "*?[") else ([root] if fs.exists(root) else [])
    if not files:
        raise FormatError(url, "no such object (or no object matches this pattern)")
    return _load_file_list([f"{scheme}://{f}" for f in files], url, source, "objects")


def _load_files(pattern: str, source):
    files = sorted(glob.glob(pattern)) if any(c in pattern for c in "*?[") else [pattern]
    if not files:
        raise FormatError(pattern, "no files match this pattern")
    return _load_file_list(files, pattern, source, "files")


def _load_file_list(files: list[str], where: str, source, noun: str):
    """``files`` (local paths or URLs) of one kind, read by the ``datasets`` builder for it."""
    import datasets

    suffixes = sorted({Path(f).suffix.lower() for f in files})
    builders = {_FILE_BUILDERS.get(s) for s in suffixes}
    if len(builders) != 1 or None in builders:
        raise FormatError(where, f"expected {noun} ending in one of {sorted(_FILE_BUILDERS)}, got {suffixes}")
    # The files become the requested split, so `split` names the data whatever the files are called.
    return datasets.load_dataset(builders.pop(), data_files={source.split: files}, split=source.split)
