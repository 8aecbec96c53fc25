"""Where trained weights come from: ``local_weights`` turns a ``replicate_weights`` / ``COG_WEIGHTS`` value
into local files, whatever the source; ``sdxl/`` then only reads and applies them.

Accepted values:

- an http(s) URL: downloaded into the weights cache, bounded in bytes (the cache's size) and in time
  (``SDXL_DOWNLOAD_STALL_SECONDS`` without a byte); a tar is extracted there (safely);
- a ``data:`` URI (base64 or percent-encoded): its bytes go into the cache the same way;
- a Hugging Face repo id (``owner/name``, or ``hf:owner/name``): its top-level ``.safetensors`` (and
  ``special_params.json``), through huggingface_hub and its own cache;
- a path on the server: only under the folder the operator names in ``SDXL_LOCAL_WEIGHTS_DIR`` (checked
  after resolving symlinks and ``..``), or anywhere when the operator gave it (``COG_WEIGHTS`` at setup).

A user's value never reads a server file otherwise. A refused path gets one message whether it exists,
is a folder or is missing, and no message quotes a file's bytes or lists a folder. Whatever turns out
unusable (a download that fails, or content the caller refuses) leaves nothing in the cache.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import logging
import os
import re
import shutil
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

from .cache import WeightsCache
from .download import Progress, download
from .errors import WeightsError

log = logging.getLogger(__name__)

LOCAL_WEIGHTS_DIR_ENV = "SDXL_LOCAL_WEIGHTS_DIR"
ACCEPTED_SOURCES = "an http(s) URL, a data: URI or a Hugging Face repo id (owner/name)"
SHOWN_CHARS = 120  # a value quoted in a message is cut to this

_HF_REPO = re.compile(r"^(?:hf:|huggingface:)?(?P<repo>[A-Za-z0-9][\w.-]{0,95}/[\w.-]{1,96})$")


def weights_given_at_setup(value) -> str | None:
    """``COG_WEIGHTS`` as cog hands it to ``setup(weights=...)``: None when unset (cog passes None, "" or the
    placeholder "weights" then)."""
    return None if value is None or str(value) in ("", "weights") else str(value)


@contextlib.contextmanager
def local_weights(value: str, cache: WeightsCache, *, input_name: str, operator_given: bool = False,
                  progress: Progress | None = None) -> Iterator[Path]:
    """The local file or folder holding the weights ``value`` names, for the ``with`` block.

    ``input_name`` is the input blamed by errors (``replicate_weights``, ``COG_WEIGHTS``);
    ``operator_given`` lets a path outside ``SDXL_LOCAL_WEIGHTS_DIR`` through (the operator's own
    ``COG_WEIGHTS``). When the block raises an Exception (the content was refused), the cache entry is
    dropped so the same value is fetched afresh next time; a cancellation keeps a complete entry.
    """
    path = _fetch(str(value), cache, input_name=input_name, operator_given=operator_given, progress=progress)
    try:
        yield path
    except Exception:
        cache.discard(path)
        raise


def kind_of(value: str, *, operator_given: bool = False) -> str:
    """``url``, ``data``, ``hf`` or ``path``: how ``value`` is read (a path still has to be allowed)."""
    lowered = value[:8].lower()
    if lowered.startswith(("http://", "https://")):
        return "url"
    if lowered.startswith("data:"):
        return "data"
    if operator_given and Path(value).exists():  # the operator's own relative path beats a repo id
        return "path"
    return "hf" if hf_repo_id(value) is not None else "path"


def hf_repo_id(value: str) -> str | None:
    """``owner/name`` (optionally ``hf:owner/name``) -> the repo id; None for anything else. Decided by
    the text alone: whether such a path exists on the server plays no part."""
    m = _HF_REPO.match(value)
    if m is None or m["repo"].endswith((".tar", ".safetensors")) or ".." in m["repo"]:
        return None
    return m["repo"]


def _fetch(value: str, cache: WeightsCache, *, input_name: str, operator_given: bool,
           progress: Progress | None) -> Path:
    kind = kind_of(value, operator_given=operator_given)
    if kind == "url":
        return fetch_url(value, cache, input_name=input_name, progress=progress)
    if kind == "data":
        return _fetch_data_uri(value, cache, input_name=input_name)
    if kind == "hf":
        return fetch_hf_repo(hf_repo_id(value), input_name)
    path = Path(value) if operator_given else allowed_path(value, input_name)
    if operator_given and not (path.is_file() or path.is_dir()):
        raise WeightsError(input_name, f"{_shown(value)} is neither {ACCEPTED_SOURCES} nor an existing path")
    if path.is_dir():
        return path  # read in place
    return _copy_file(path, cache, input_name=input_name)


def _shown(value: str) -> str:
    return repr(value if len(value) <= SHOWN_CHARS else value[:SHOWN_CHARS] + "...")


# --- paths on the server -----------------------------------------------------------------------------


def allowed_path(value: str, input_name: str) -> Path:
    """``value`` as a file or folder inside ``SDXL_LOCAL_WEIGHTS_DIR`` (relative values are taken from
    there), after resolving symlinks and ``..``; a folder's own entries must resolve inside it too.

    Anything else (no such folder configured, outside it, missing, not a file or folder) gets the same
    refusal, so the answer tells nothing about the server's files.
    """
    root_text = os.environ.get(LOCAL_WEIGHTS_DIR_ENV, "").strip()
    if not root_text:
        raise WeightsError(input_name, f"{_shown(value)} is not {ACCEPTED_SOURCES}; paths on the server are not "
                                       f"accepted (an operator can allow a folder with {LOCAL_WEIGHTS_DIR_ENV})")
    refusal = WeightsError(input_name, f"{_shown(value)} is not {ACCEPTED_SOURCES}, nor a file or folder inside "
                                       f"the folder this server allows for weights ({LOCAL_WEIGHTS_DIR_ENV})")
    root = Path(os.path.realpath(root_text))
    path = Path(os.path.realpath(root / value))  # an absolute value replaces root; realpath resolves links and ..
    if not _inside(path, root) or not (path.is_file() or path.is_dir()):
        raise refusal
    if path.is_dir() and not all(_inside(Path(os.path.realpath(p)), root) for p in path.iterdir()):
        raise refusal  # a link inside the folder pointing out of it
    return path


def _inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def _copy_file(path: Path, cache: WeightsCache, *, input_name: str) -> Path:
    """A local file (an allowed path, the operator's COG_WEIGHTS) through the cache, so a tar is extracted once."""
    try:
        stat = path.stat()
    except OSError:
        raise WeightsError(input_name, f"{_shown(str(path))} could not be read") from None

    def fill(raw: Path, make_room) -> None:
        make_room(stat.st_size)
        try:
            shutil.copyfile(path, raw)
        except OSError:  # never the OS's words: they may name other files
            raise WeightsError(input_name, f"{_shown(str(path))} could not be read") from None

    key = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
    return cache.fetch(key, fill, input_name=input_name, label=str(path))


# --- URLs and data: URIs -----------------------------------------------------------------------------


def fetch_url(url: str, cache: WeightsCache, *, input_name: str = "replicate_weights",
              progress: Progress | None = None) -> Path:
    """``url`` downloaded into ``cache`` (once; a tar extracted): the local file or folder."""
    def fill(raw: Path, make_room) -> None:
        download(url, raw, input_name=input_name, progress=progress, on_size=make_room, max_bytes=cache.max_bytes)

    return cache.fetch(url, fill, input_name=input_name, label=url)


def data_uri_bytes(value: str, input_name: str, max_bytes: int) -> bytes:
    """The payload of ``data:[<type>][;base64],<payload>``, refused over ``max_bytes``."""
    header, sep, payload = value[len("data:"):].partition(",")
    if not sep:
        raise WeightsError(input_name, "a data: URI needs a comma before its payload "
                                       "(data:[<type>][;base64],<payload>)")
    if header.lower().endswith(";base64") or header.lower() == "base64":
        if len(payload) * 3 // 4 > max_bytes:
            raise WeightsError(input_name, f"the data: URI holds about {len(payload) * 3 // 4} bytes, over the limit "
                                           f"of {max_bytes} bytes (the size of the weights cache)")
        try:
            data = base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError):
            raise WeightsError(input_name, "the data: URI's payload is not valid base64") from None
    else:
        data = urllib.parse.unquote_to_bytes(payload)
    if len(data) > max_bytes:
        raise WeightsError(input_name, f"the data: URI holds {len(data)} bytes, over the limit of {max_bytes} bytes "
                                       "(the size of the weights cache)")
    return data


def _fetch_data_uri(value: str, cache: WeightsCache, *, input_name: str) -> Path:
    data = data_uri_bytes(value, input_name, cache.max_bytes)
    label = f"a data: URI of {len(data)} bytes"

    def fill(raw: Path, make_room) -> None:
        make_room(len(data))
        raw.write_bytes(data)

    return cache.fetch("data:" + hashlib.sha256(data).hexdigest(), fill, input_name=input_name, label=label)


# --- Hugging Face ------------------------------------------------------------------------------------


def fetch_hf_repo(repo_id: str, input_name: str) -> Path:
    """The top-level ``*.safetensors`` (and ``special_params.json``) of a Hugging Face repo, through
    huggingface_hub and its cache; with HF_HUB_OFFLINE the cached snapshot is used."""
    from huggingface_hub import constants, list_repo_files, snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        if constants.HF_HUB_OFFLINE:
            patterns = ["*.safetensors", "special_params.json"]
        else:
            files = list_repo_files(repo_id)
            patterns = [f for f in files if "/" not in f and (f.endswith(".safetensors") or f == "special_params.json")]
            if not any(p.endswith(".safetensors") for p in patterns):
                raise WeightsError(input_name, f"Hugging Face repo {repo_id} has no .safetensors file at its top level")
        return Path(snapshot_download(repo_id, allow_patterns=patterns))
    except LocalEntryNotFoundError:
        raise WeightsError(input_name, f"Hugging Face repo {repo_id} is not in the local cache and the hub is "
                                       "offline (HF_HUB_OFFLINE)") from None
    except WeightsError:
        raise
    except Exception as e:  # noqa: BLE001 - the hub's HTTP client (httpx) raises its own errors (ConnectError, ...)
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise WeightsError(input_name, f"could not get Hugging Face repo {repo_id} ({reason})") from None
