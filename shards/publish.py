"""Publish a finished local data set to a remote location (``s3://``, ``gs://``, ``hf://``, any
fsspec URL): exactly the files its index lists plus its fixed companions (the card,
``_info.json``, the contact sheet, the memory bank), each checked before anything is uploaded.

On a file-system store (``s3://``, ``gs://``, ...) the files go first and ``index.json`` last, so
a reader at the destination never sees an index whose shards are not all there (each object write
is itself all or nothing); with ``overwrite`` the old index is removed first and, once the new one
is in place, every file the old set had and the new one does not. On the Hugging Face Hub
(``hf://datasets/<owner>/<name>[@revision][/<folder>]``) the whole set goes up as one commit
(``HfApi.upload_folder``), which replaces what was there when ``overwrite``.

What is published is what travels: not the builder's resume record (``build.json``, which holds
local paths), hidden temporaries, or anything else in the folder.
"""
from __future__ import annotations

import logging
import re
import time
from pathlib import Path
from typing import NamedTuple, Optional

from .errors import FormatError
from .reader import read_index
from .transfer import filesystem, is_url
from .verify import verify
from .writer import BANK_FILE, CARD_FILE, CONTACT_SHEET_FILE, INDEX_FILE, TIMM_INFO_FILE

_logger = logging.getLogger(__name__)

COMPANIONS = (CARD_FILE, TIMM_INFO_FILE, CONTACT_SHEET_FILE, BANK_FILE)
"""Files published beside the shards when the set has them."""


def files_to_publish(directory: Path) -> list[Path]:
    """The shards ``index.json`` lists and the companions present, in order (the index itself is
    not in the list: it goes last).

    Raises:
        FormatError: a listed shard is missing, or one of the files is a link or not a regular
            file (nothing has been uploaded then).
    """
    index = read_index(directory)
    names = [s.filename for s in index.shards] + [c for c in COMPANIONS if (directory / c).exists()
                                                 or (directory / c).is_symlink()]
    out = []
    for name in names:
        path = directory / name
        if path.is_symlink():
            raise FormatError(str(path), "is a symbolic link; publish copies real files only (nothing was uploaded)")
        if not path.exists():
            raise FormatError(str(path), "is listed in index.json but missing (nothing was uploaded)")
        if not path.is_file():
            raise FormatError(str(path), "is not a regular file (nothing was uploaded)")
        out.append(path)
    return out


def publish(directory: str | Path, url: str, overwrite: bool = False, create_repo: bool = False) -> int:
    """Verify the data set in ``directory`` and upload it to ``url``; return the files uploaded.

    Args:
        create_repo: ``hf://`` only: create the data-set repository when it does not exist.

    Raises:
        ValueError: ``url`` is not a remote location, or already holds a finished data set and
            ``overwrite`` is off.
        FormatError: the local data set does not verify or holds a link, or the store refuses a write.
        ConnectionError: the store cannot be reached.
    """
    directory = Path(directory)
    if not is_url(url) or url.startswith(("http://", "https://")):
        raise ValueError(f"publish: {url} is not an object-store URL (s3://, gs://, hf://, ...); "
                         "copy to a folder with actgen-data merge or fetch instead")
    index_link = directory / INDEX_FILE
    if index_link.is_symlink():
        raise FormatError(str(index_link), "is a symbolic link; publish copies real files only (nothing was uploaded)")
    report = verify(directory)
    files = files_to_publish(directory)
    started = time.monotonic()
    if url.startswith("hf://"):
        n = _publish_hub(directory, url, files, overwrite, create_repo)
    else:
        n = _publish_fs(directory, url, files, overwrite)
    _logger.info("published %s -> %s: %d samples, %d files in %.1f s", directory, url, report.num_samples, n,
                 time.monotonic() - started)
    return n


def _publish_fs(directory: Path, url: str, files: list[Path], overwrite: bool) -> int:
    fs, root = filesystem(url)
    root = root.rstrip("/")
    index_path = f"{root}/{INDEX_FILE}"
    try:
        old: list[str] = []
        if fs.exists(index_path):
            if not overwrite:
                raise ValueError(f"publish: {url} already holds a finished data set (pass overwrite to replace it)")
            old = [p for p in fs.ls(root, detail=False)]
            fs.rm_file(index_path)      # unfinished from here on, for every reader
        for path in files:
            fs.put_file(str(path), f"{root}/{path.name}")
        fs.put_file(str(directory / INDEX_FILE), index_path)
        keep = {f.name for f in files} | {INDEX_FILE}
        stale = [p for p in old if p.rstrip("/").rsplit("/", 1)[-1] not in keep]
        for p in stale:                 # the old set's files the new one does not have
            fs.rm(p, recursive=True)
        if stale:
            _logger.info("publish: removed %d files of the set %s held before", len(stale), url)
    except (ValueError, FormatError):
        raise
    except FileNotFoundError as e:     # s3fs: a bucket that does not exist
        raise FormatError(url, f"no such bucket or place ({' '.join(str(e).split())})") from None
    except PermissionError as e:
        raise FormatError(url, f"the store refuses the write ({' '.join(str(e).split())})") from None
    except OSError as e:
        raise ConnectionError(f"{url}: cannot write ({type(e).__name__}: {' '.join(str(e).split())})") from None
    return len(files) + 1


class HubLocation(NamedTuple):
    repo_id: str
    revision: Optional[str]
    path_in_repo: str


_HF = re.compile(r"^hf://datasets/(?P<repo>[^/@]+/[^/@]+)(?:@(?P<rev>[^/]+))?(?:/(?P<path>.*))?$")


def hub_location(url: str) -> HubLocation:
    """``hf://datasets/<owner>/<name>[@revision][/<folder>]`` parsed; ValueError otherwise."""
    m = _HF.match(url)
    if m is None:
        raise ValueError(f"publish: {url} is not a Hub data-set location; expected "
                         "hf://datasets/<owner>/<name>[@revision][/<folder>]")
    path = "/".join(p for p in (m["path"] or "").split("/") if p not in ("", "."))
    if ".." in path.split("/"):
        raise ValueError(f"publish: {url}: '..' in the folder is not allowed")
    return HubLocation(m["repo"], m["rev"], path)


def _publish_hub(directory: Path, url: str, files: list[Path], overwrite: bool, create_repo: bool) -> int:
    """One commit with the set's files; ``overwrite`` deletes what the folder held in that commit."""
    import shutil
    import tempfile

    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError

    where = hub_location(url)
    api = HfApi()
    index_in_repo = f"{where.path_in_repo}/{INDEX_FILE}".lstrip("/")
    try:
        if create_repo:
            api.create_repo(where.repo_id, repo_type="dataset", exist_ok=True)
        if not overwrite and api.file_exists(where.repo_id, index_in_repo, repo_type="dataset",
                                             revision=where.revision):
            raise ValueError(f"publish: {url} already holds a finished data set (pass overwrite to replace it)")
        with tempfile.TemporaryDirectory(prefix="actgen-publish-") as tmp:
            # Exactly the checked files, copied (never a link) into a folder of their own.
            staging = Path(tmp)
            for path in [*files, directory / INDEX_FILE]:
                shutil.copyfile(path, staging / path.name, follow_symlinks=False)
            api.upload_folder(repo_id=where.repo_id, repo_type="dataset", folder_path=str(staging),
                              path_in_repo=where.path_in_repo or None, revision=where.revision,
                              commit_message=f"actgen: publish data set ({len(files) + 1} files)",
                              delete_patterns=["*"] if overwrite else None)   # relative to the folder
    except RepositoryNotFoundError:
        raise FormatError(url, "no such data-set repository (or no access to it); pass create_repo to create "
                               "it") from None
    except HfHubHTTPError as e:
        raise FormatError(url, f"the Hub refuses the upload ({' '.join(str(e).split())[:300]})") from None
    return len(files) + 1
