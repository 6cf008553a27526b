"""Fetch a variant's files from the Hugging Face Hub into ComfyUI's model folders or a release folder.

The steps, each through ``huggingface_hub`` (``HF_ENDPOINT`` and ``HF_TOKEN`` apply):

1. **Plan** (:func:`plan_download`): one ``model_info`` call per repository resolves the
   revision (a pinned commit, else ``main`` once, so that every file of a run and of its
   resume comes from one commit), lists the files of an official folder, and gives each
   file's size and the checksum the Hub publishes for it: the SHA256 of a large (LFS) file,
   the git blob id of a small one. A checksum in :mod:`.catalog` must agree.
2. **Check** (:func:`check_space`): what is already in place, what is left to fetch, and the
   free space of every destination disk, before a byte moves.
3. **Fetch** (:func:`fetch`): each file into a hidden ``.<name>.<checksum>.part`` beside its
   destination; a run that stops (a cut connection, Ctrl-C, a reboot) resumes from the bytes
   already there with an HTTP range request, also inside one run when the connection drops.
   The complete file's checksum is verified before it is renamed into place, so a corrupt
   or truncated download never takes a model's name; one that fails verification is deleted
   and reported.

Files already in place are verified once; the verdict is kept (by size and modification
time) in ``verified.json`` of pyramid_core's cache folder, so a second run does not re-read
10 GB.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from ..attention.disk_cache import cache_dir
from .catalog import HubFile

CHUNK = 8 << 20


class ChecksumError(ValueError):
    """A downloaded file whose content is not what the Hub (or the catalog) publishes."""


@dataclass(frozen=True)
class PlannedFile:
    """One file to have at ``destination``: where it comes from and how to recognise it."""

    repo: str
    path: str                   # in the repository
    commit: str                 # the commit it is taken from
    destination: Path
    size: int
    sha256: str | None          # for LFS files
    git_blob: str | None        # for small files kept in git (sha1 of the git blob)

    @property
    def checksum(self) -> str:
        return self.sha256 or self.git_blob or ""

    @property
    def partial(self) -> Path:
        """Where the bytes gather until the file is complete and verified."""
        return self.destination.with_name(f".{self.destination.name}.{self.checksum[:16]}.part")


def endpoint() -> str:
    """The Hub to talk to: ``$HF_ENDPOINT`` (a mirror, or the tests' loopback Hub) or huggingface.co."""
    return os.environ.get("HF_ENDPOINT", "").strip().rstrip("/") or "https://huggingface.co"


# --------------------------------------------------------------------------------------
# 1. plan
# --------------------------------------------------------------------------------------

def _repo_listing(repo: str, revision: str | None) -> tuple[str, dict]:
    """``(commit, {path: sibling})`` of a repository at ``revision`` (``main`` when None)."""
    from huggingface_hub import HfApi

    info = HfApi(endpoint=endpoint()).model_info(repo, revision=revision or "main", files_metadata=True)
    return info.sha, {s.rfilename: s for s in info.siblings or []}


def _planned(file: HubFile, path: str, sibling, commit: str, destination: Path) -> PlannedFile:
    lfs = sibling.lfs
    published = lfs.sha256 if lfs else None
    if file.sha256 and not file.is_folder:
        if published and published != file.sha256:
            raise ChecksumError(f"{file.repo}/{path} at {commit[:12]} has SHA256 {published}, not the published "
                                f"{file.sha256}: the file changed upstream; this pack's catalog needs an update")
        published = file.sha256
    return PlannedFile(file.repo, path, commit, destination, int(sibling.size if sibling.size is not None else
                                                                 (lfs.size if lfs else 0)),
                       published, None if lfs else sibling.blob_id)


def plan_download(files: list[HubFile], place) -> list[PlannedFile]:
    """Every file to fetch, expanded from folders, with its size and checksum.

    Args:
        files: from :func:`.catalog.files_for`.
        place: ``place(file, path_in_repo) -> Path``, the destination of each file.

    Raises:
        FileNotFoundError: a file or folder the catalog names is not in the repository.
    """
    listings: dict[tuple[str, str | None], tuple[str, dict]] = {}
    planned = []
    for file in files:
        key = (file.repo, file.revision)
        if key not in listings:
            listings[key] = _repo_listing(file.repo, file.revision)
        commit, siblings = listings[key]
        paths = sorted(p for p in siblings if p.startswith(file.path)) if file.is_folder else \
            [file.path] if file.path in siblings else []
        if not paths:
            raise FileNotFoundError(f"{file.repo} has no {file.path} at {commit[:12]}: the repository changed; "
                                    f"see {file.url}")
        planned += [_planned(file, path, siblings[path], commit, Path(place(file, path))) for path in paths]
    return planned


# --------------------------------------------------------------------------------------
# 2. what is there, and room for the rest
# --------------------------------------------------------------------------------------

def _record_path() -> Path:
    return cache_dir() / "verified.json"


def _records() -> dict:
    try:
        return json.loads(_record_path().read_text())
    except (OSError, ValueError):
        return {}


def _stamp(path: Path) -> list:
    stat = path.stat()
    return [stat.st_size, stat.st_mtime_ns]


def _remember(path: Path, checksum: str) -> None:
    records = _records()
    records[str(path.resolve())] = [*_stamp(path), checksum]
    target = _record_path()
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(target.name + f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(records, indent=1))
        tmp.replace(target)
    except OSError:
        pass                                    # only costs a re-verification next time


def file_checksum(path: Path, git_blob: bool = False) -> str:
    """SHA256 of a file, or (``git_blob``) the sha1 git names its blob by."""
    digest = hashlib.sha1() if git_blob else hashlib.sha256()
    if git_blob:
        digest.update(f"blob {path.stat().st_size}\0".encode())
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _matches(file: PlannedFile, path: Path) -> bool:
    if not file.checksum:
        return True
    return file_checksum(path, git_blob=file.sha256 is None) == file.checksum


def in_place(file: PlannedFile) -> bool:
    """Whether the destination already holds this file (right size, verified checksum)."""
    path = file.destination
    if not path.is_file() or path.stat().st_size != file.size:
        return False
    record = _records().get(str(path.resolve()))
    if record == [*_stamp(path), file.checksum]:
        return True
    if _matches(file, path):
        _remember(path, file.checksum)
        return True
    return False


def existing_parent(path: Path) -> Path:
    """The nearest folder of ``path`` that exists (where its disk's free space can be read)."""
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def bytes_left(file: PlannedFile) -> int:
    """What a fetch of ``file`` still has to download beside its partial bytes (ask
    :func:`in_place` first: a file in place needs nothing)."""
    partial = file.partial.stat().st_size if file.partial.is_file() else 0
    return max(file.size - partial, 0)


def check_space(planned: list[PlannedFile], left: dict[Path, int], margin: int = 256 << 20) -> list[str]:
    """Problems with the room on the destination disks (empty: there is room).

    ``left``: bytes still to fetch per destination. A file is written next to its
    destination and renamed, so it needs its bytes once; ``margin`` keeps a disk from being
    filled to the last byte."""
    needed: dict[int, int] = {}
    where: dict[int, Path] = {}
    for file in planned:
        parent = existing_parent(file.destination.parent)
        device = parent.stat().st_dev
        needed[device] = needed.get(device, 0) + left[file.destination]
        where.setdefault(device, parent)
    problems = []
    for device, amount in needed.items():
        free = shutil.disk_usage(where[device]).free
        if amount and amount + margin > free:
            problems.append(f"{where[device]} has {human_size(free)} free, the download needs {human_size(amount)}"
                            " (+ a little room): free some space or choose another place")
    return problems


def human_size(count: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if count < 1000 or unit == "GB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1000
    return f"{count:.1f} GB"


# --------------------------------------------------------------------------------------
# 3. fetch
# --------------------------------------------------------------------------------------

def fetch(file: PlannedFile) -> Path:
    """Download ``file`` (resuming its partial bytes), verify it and move it into place.

    Raises:
        ChecksumError: the complete file is not the published one (its partial file is deleted).
    """
    from huggingface_hub import get_hf_file_metadata, hf_hub_url
    from huggingface_hub.file_download import http_get
    from huggingface_hub.utils import build_hf_headers

    if in_place(file):
        return file.destination
    file.destination.parent.mkdir(parents=True, exist_ok=True)
    partial = file.partial
    if partial.is_file() and partial.stat().st_size > file.size:
        partial.unlink()                      # not this file's bytes
    url = hf_hub_url(file.repo, file.path, revision=file.commit, endpoint=endpoint())
    headers = build_hf_headers()
    headers["Accept-Encoding"] = "identity"   # sizes and ranges count the file's own bytes
    location = get_hf_file_metadata(url, headers=headers, endpoint=endpoint()).location
    if urlparse(location).netloc != urlparse(url).netloc:
        headers.pop("authorization", None)    # a signed CDN address needs no token
    with open(partial, "ab") as handle:
        http_get(location, handle, resume_size=handle.tell(), headers=headers, expected_size=file.size,
                 displayed_filename=file.destination.name)
    if not _matches(file, partial):
        partial.unlink()
        kind = "SHA256" if file.sha256 else "git blob id"
        raise ChecksumError(f"{file.repo}/{file.path}: the downloaded file's {kind} is not the published "
                            f"{file.checksum}; it was deleted. Run the command again to download it anew")
    partial.replace(file.destination)
    _remember(file.destination, file.checksum)
    return file.destination
