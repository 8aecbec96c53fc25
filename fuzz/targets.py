"""Fuzz targets over the two places untrusted bytes are parsed: archive intake and image decoding.

Each target takes one generated input, runs the real code on it and checks the contract:

- ``archive_intake``: ``preprocess.intake.read_archive`` then prepare's next steps without models
  (caption csv join, image decoding). Allowed outcomes: an Intake, or ``PreprocessError`` whose
  message starts with ``input_images``. Staged files are regular files named by us inside the
  staging folder; nothing else appears anywhere under the scratch root.
- ``predict_image``: ``sdxl.images.load_image_or_refuse`` (predict's ``image``/``mask``). Allowed: an image of
  the asked mode within MAX_INPUT_PIXELS, or ``InputImageError`` naming the input.
- ``training_image``: ``preprocess.images.load_image_or_none``. Allowed: an RGB image within
  MAX_IMAGE_PIXELS, ``None`` (skipped as unreadable) or ``PreprocessError`` naming input_images.

Anything else (another exception type, a file outside, a wrong mode) is a finding.
Archive limits are scaled down while fuzzing (see ``SMALL_LIMITS``) so the bomb paths are reached
with inputs of a few kilobytes.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import stat
import struct
import tarfile
import tempfile
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

from hypothesis import strategies as st

SMALL_LIMITS = {"MAX_MEMBERS": 40, "MAX_IMAGES": 6, "MAX_MEMBER_BYTES": 256 * 1024, "MAX_TOTAL_BYTES": 1024**2, "RATIO_FLOOR": 16 * 1024}


class Finding(AssertionError):
    """The code under test broke its contract on this input."""


# ---------------------------------------------------------------------------------------------
# images


IMAGE_MODES = ["1", "L", "LA", "P", "PT", "RGB", "RGBA", "CMYK", "I;16", "I", "F"]
IMAGE_FORMATS = ["PNG", "JPEG", "GIF", "WEBP", "BMP", "TIFF", "PPM", "ICO"]


def _picture(mode: str, size: tuple[int, int], seed: int):
    import numpy as np
    from PIL import Image

    rng = np.random.RandomState(seed)
    w, h = size
    if mode in ("I;16", "I"):
        arr = (rng.rand(h, w) * 65535).astype(np.uint16 if mode == "I;16" else np.int32)
        return Image.fromarray(arr)
    if mode == "F":
        return Image.fromarray(rng.rand(h, w).astype(np.float32))
    rgb = Image.fromarray((rng.rand(h, w, 3) * 255).astype(np.uint8), "RGB")
    if mode == "PT":
        p = rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=8)
        p.info["transparency"] = 0
        return p
    if mode == "P":
        return rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    return rgb.convert(mode)


def encode_image(mode: str, fmt: str, size: tuple[int, int], seed: int = 0, orientation: int = 0, frames: int = 1) -> bytes:
    """Encode a picture; formats that cannot hold the mode get it converted (PIL decides), never an error."""
    from PIL import Image

    im = _picture(mode, size, seed)
    buf = io.BytesIO()
    kwargs: dict = {}
    if orientation and fmt in ("JPEG", "PNG", "WEBP", "TIFF"):
        exif = Image.Exif()
        exif[0x0112] = orientation
        kwargs["exif"] = exif.tobytes()
    if frames > 1 and fmt in ("GIF", "PNG", "WEBP"):
        kwargs.update(save_all=True, append_images=[_picture(mode, size, seed + i) for i in range(1, frames)])
    if mode == "PT" and fmt in ("PNG", "GIF"):
        kwargs["transparency"] = 0
    try:
        im.save(buf, fmt, **kwargs)
    except (OSError, ValueError, KeyError, TypeError):
        buf = io.BytesIO()
        im.convert("RGB").save(buf, fmt)
    return buf.getvalue()


def png_with_size(width: int, height: int, color_type: int = 2, bit_depth: int = 8) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` with a few bytes of data: a pixel bomb."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")


def _mutate(data: bytes, mutation: tuple) -> bytes:
    kind = mutation[0]
    if not data or kind == "none":
        return data
    if kind == "truncate":
        return data[: mutation[1] % (len(data) + 1)]
    if kind == "flip":
        out = bytearray(data)
        for pos, value in mutation[1]:
            out[pos % len(out)] ^= value or 1
        return bytes(out)
    if kind == "splice":
        pos = mutation[1] % (len(data) + 1)
        return data[:pos] + mutation[2] + data[pos:]
    raise ValueError(kind)


mutations = st.one_of(
    st.just(("none",)),
    st.tuples(st.just("truncate"), st.integers(0, 1 << 16)),
    st.tuples(st.just("flip"), st.lists(st.tuples(st.integers(0, 1 << 16), st.integers(0, 255)), min_size=1, max_size=8)),
    st.tuples(st.just("splice"), st.integers(0, 1 << 16), st.binary(max_size=64)),
)


@st.composite
def image_bytes(draw) -> bytes:
    """A real encoded image of any mode/format/EXIF/animation, a pixel bomb, or raw bytes; then mutated."""
    choice = draw(st.sampled_from(["image", "image", "image", "bomb", "raw"]))
    if choice == "raw":
        return draw(st.binary(max_size=512))
    if choice == "bomb":
        side = st.integers(1, 200_000)
        data = png_with_size(draw(side), draw(side), draw(st.sampled_from([0, 2, 3, 4, 6])), draw(st.sampled_from([1, 8, 16])))
    else:
        data = encode_image(
            draw(st.sampled_from(IMAGE_MODES)),
            draw(st.sampled_from(IMAGE_FORMATS)),
            (draw(st.integers(1, 48)), draw(st.integers(1, 48))),
            seed=draw(st.integers(0, 3)),
            orientation=draw(st.sampled_from([0, 0, 1, 3, 5, 6, 8, 9, 0xFFFF])),
            frames=draw(st.sampled_from([1, 1, 2])),
        )
    return _mutate(data, draw(mutations))


def predict_image(data: bytes, mode: str = "RGB") -> None:
    from sdxl.images import MAX_INPUT_PIXELS, MIN_INPUT_SIDE, InputImageError, load_image_or_refuse

    with _scratch() as root:
        path = root / "upload"
        path.write_bytes(data)
        name = "mask" if mode == "L" else "image"
        try:
            img = load_image_or_refuse(path, name=name, mode=mode)
        except InputImageError as e:
            if not str(e).startswith(f"{name}:"):
                raise Finding(f"InputImageError does not name the input: {e}") from e
            return
        except Exception as e:
            raise Finding(f"sdxl.images.load_image_or_refuse raised {type(e).__name__}: {e}") from e
        if img.mode != mode or img.width * img.height > MAX_INPUT_PIXELS or min(img.size) < MIN_INPUT_SIDE:
            raise Finding(f"load_image_or_refuse returned mode {img.mode} size {img.size}")


def training_image(data: bytes) -> None:
    from preprocess import PreprocessError
    from preprocess.images import MAX_IMAGE_PIXELS, load_image_or_none

    with _scratch() as root:
        path = root / "00000"
        path.write_bytes(data)
        try:
            img = load_image_or_none(path, "member.png")
        except PreprocessError as e:
            if not str(e).startswith("input_images"):
                raise Finding(f"PreprocessError does not name input_images: {e}") from e
            return
        except Exception as e:
            raise Finding(f"preprocess.images.load_image_or_none raised {type(e).__name__}: {e}") from e
        if img is not None and (img.mode != "RGB" or img.width * img.height > MAX_IMAGE_PIXELS):
            raise Finding(f"load_image_or_none returned mode {img.mode} size {img.size}")


# ---------------------------------------------------------------------------------------------
# archives


@dataclass(frozen=True)
class Entry:
    kind: str  # file, dir, sym, hard, fifo
    name: str
    data: bytes = b""
    target: str = ""


HOSTILE_NAMES = [
    "../evil.png", "../../evil.png", "a/../../evil.png", "/tmp/evil.png", "/evil.png", "C:\\evil.png", "..\\evil.png",
    "./ok.png", "dir/./ok.png", "__MACOSX/._x.png", ".hidden.png", "a" * 300 + ".png", "d/" * 60 + "deep.png",
    "caption.csv", "captions.csv", "sub/captions.csv", "\u00e9t\u00e9.png", "name with spaces.JPG", "x.PNG", "noext",
    "\udcff\udcfe.png", "a\udc80b/c.png", "evil.png/", "//double.png", "x.png\u202e.txt",
]

simple_names = st.builds(
    lambda d, base, ext: f"{d}{base}{ext}",
    st.sampled_from(["", "", "sub/", "a/b/"]),
    st.text("abcxyz019_-", min_size=1, max_size=8),
    st.sampled_from([".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".txt", ".csv", ""]),
)
names = st.one_of(simple_names, simple_names, st.sampled_from(HOSTILE_NAMES))


@st.composite
def payloads(draw) -> bytes:
    choice = draw(st.sampled_from(["image", "image", "raw", "zeros", "csv", "empty"]))
    if choice == "image":
        return draw(image_bytes())
    if choice == "raw":
        return draw(st.binary(max_size=256))
    if choice == "zeros":
        return bytes(draw(st.sampled_from([1, 4096, 64 * 1024, 300 * 1024])))
    if choice == "csv":
        rows = draw(st.lists(st.tuples(st.text(max_size=12), simple_names), max_size=4))
        body = "caption,image_file\n" + "".join(f'"{c.replace(chr(34), "")}",{n}\n' for c, n in rows)
        return draw(st.sampled_from([body.encode(), body.encode("utf-16"), b"\xff\xfe" + body.encode()[:20], b"a,b,c\n1\n"]))
    return b""


entries = st.builds(
    Entry,
    kind=st.sampled_from(["file"] * 8 + ["dir", "sym", "hard", "fifo"]),
    name=names,
    data=payloads(),
    target=st.sampled_from(["", "/etc/passwd", "../outside", "ok.png", "sub", "/tmp"]),
)

containers = st.sampled_from(["zip-stored", "zip-deflated", "zip-bzip2", "zip-lzma", "tar", "tar:gz", "tar:bz2", "tar:xz"])
tar_formats = st.sampled_from([tarfile.GNU_FORMAT, tarfile.PAX_FORMAT, tarfile.USTAR_FORMAT])


def build_archive(container: str, members: list[Entry], tar_format: int = tarfile.GNU_FORMAT) -> bytes:
    buf = io.BytesIO()
    if container.startswith("zip"):
        method = {"stored": zipfile.ZIP_STORED, "deflated": zipfile.ZIP_DEFLATED,
                  "bzip2": zipfile.ZIP_BZIP2, "lzma": zipfile.ZIP_LZMA}[container.split("-")[1]]
        raw_names: dict[bytes, bytes] = {}  # placeholder -> the non-UTF-8 bytes it stands for
        with zipfile.ZipFile(buf, "w", compression=method) as zf:
            for e in members:
                raw = e.name.encode("utf-8", "surrogateescape")
                name = e.name
                if any("\udc80" <= c <= "\udcff" for c in e.name):
                    name = f"~{len(raw_names):0{len(raw) - 1}d}"[: len(raw)]
                    raw_names[name.encode()] = raw
                info = zipfile.ZipInfo(name + ("/" if e.kind == "dir" and not name.endswith("/") else ""))
                info.compress_type = method
                info.create_system = 3
                mode = {"file": stat.S_IFREG, "dir": stat.S_IFDIR, "sym": stat.S_IFLNK,
                        "hard": stat.S_IFREG, "fifo": stat.S_IFIFO}[e.kind]
                info.external_attr = (mode | 0o644) << 16
                data = e.target.encode() if e.kind == "sym" else (b"" if e.kind == "dir" else e.data)
                zf.writestr(info, data)
        return with_raw_zip_names(buf.getvalue(), raw_names)
    mode = "w" if container == "tar" else "w:" + container.split(":")[1]
    with tarfile.open(fileobj=buf, mode=mode, format=tar_format, encoding="utf-8", errors="surrogateescape") as tf:
        for e in members:
            info = tarfile.TarInfo(e.name)
            try:
                if e.kind == "file":
                    info.size = len(e.data)
                    tf.addfile(info, io.BytesIO(e.data))
                    continue
                info.type = {"dir": tarfile.DIRTYPE, "sym": tarfile.SYMTYPE, "hard": tarfile.LNKTYPE,
                             "fifo": tarfile.FIFOTYPE}[e.kind]
                info.linkname = e.target
                tf.addfile(info)
            except ValueError:  # a name the chosen format cannot hold (ustar: too long)
                continue
    return buf.getvalue()


def with_raw_zip_names(data: bytes, raw_names: dict[bytes, bytes]) -> bytes:
    """Put non-UTF-8 bytes in member names, with the UTF-8 flag (bit 11) set as a lying writer would."""
    if not raw_names:
        return data
    out = bytearray(data)
    for sig, name_len_at, flags_at, header in ((b"PK\x03\x04", 26, 6, 30), (b"PK\x01\x02", 28, 8, 46)):
        pos = out.find(sig)
        while pos != -1 and pos + header <= len(out):
            n = int.from_bytes(out[pos + name_len_at : pos + name_len_at + 2], "little")
            name = bytes(out[pos + header : pos + header + n])
            if name in raw_names:
                out[pos + header : pos + header + n] = raw_names[name]
                flags = int.from_bytes(out[pos + flags_at : pos + flags_at + 2], "little") | 0x800
                out[pos + flags_at : pos + flags_at + 2] = flags.to_bytes(2, "little")
            pos = out.find(sig, pos + 4)
    return bytes(out)


@st.composite
def archive_bytes(draw) -> bytes:
    choice = draw(st.sampled_from(["archive"] * 6 + ["raw", "wrapped-raw"]))
    if choice == "raw":
        return draw(st.binary(max_size=1024))
    if choice == "wrapped-raw":  # garbage behind a real magic number
        magic = draw(st.sampled_from([b"PK\x03\x04", b"PK\x05\x06", b"\x1f\x8b\x08", b"BZh9", b"\xfd7zXZ\x00"]))
        return magic + draw(st.binary(max_size=1024))
    data = build_archive(draw(containers), draw(st.lists(entries, max_size=8)), draw(tar_formats))
    return _mutate(data, draw(st.one_of(st.just(("none",)), st.just(("none",)), mutations)))


@contextlib.contextmanager
def _scratch():
    root = Path(tempfile.mkdtemp(prefix="sdxl-fuzz-"))
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


@contextlib.contextmanager
def small_limits():
    """Scale the intake's limits down so that kilobyte inputs reach every refusal path."""
    import preprocess.intake as intake

    saved = {k: getattr(intake, k) for k in SMALL_LIMITS}
    try:
        for k, v in SMALL_LIMITS.items():
            setattr(intake, k, v)
        yield
    finally:
        for k, v in saved.items():
            setattr(intake, k, v)


def archive_intake(data: bytes) -> None:
    from preprocess import PreprocessError
    from preprocess import dataset
    from preprocess.intake import read_archive

    with _scratch() as root:
        upload, staging = root / "uploads" / "input.zip", root / "work" / ".intake"
        upload.parent.mkdir()
        upload.write_bytes(data)
        try:
            intake = read_archive(upload, staging)
            captions = dataset.captions_from_csv(intake.caption_csv, intake.caption_csv_name, intake.images)
            examples = dataset.decode_images(intake.images, upload, 64)
            if captions is not None:
                missing = [ex.name for ex in examples if os.path.basename(ex.name) not in captions]
                if missing:
                    raise Finding(f"caption csv accepted but has no caption for {missing}")
        except PreprocessError as e:
            if not str(e).startswith("input_images"):
                raise Finding(f"PreprocessError does not name input_images: {e}") from e
        except Finding:
            raise
        except Exception as e:
            raise Finding(f"intake raised {type(e).__name__}: {e}") from e
        else:
            for m in intake.images:
                if m.path.parent != staging or m.path.is_symlink() or not m.path.is_file() or not m.path.name.isdigit():
                    raise Finding(f"staged {m.name!r} at {m.path}")
            if any(not ex.image.mode == "RGB" for ex in examples):
                raise Finding("a decoded training image is not RGB")
        for path in root.rglob("*"):  # nothing but the upload and our staging files
            if path == upload or path in (upload.parent, staging.parent, staging):
                continue
            if path.parent != staging or path.is_symlink() or not path.is_file():
                raise Finding(f"intake left {path} behind")


TARGETS = {
    "archive_intake": (archive_intake, archive_bytes()),
    "predict_image": (predict_image, image_bytes()),
    "predict_mask": (lambda data: predict_image(data, mode="L"), image_bytes()),
    "training_image": (training_image, image_bytes()),
}


def _register_predict_request() -> None:
    """Any request the predict schema allows (fuzz/predict_requests.py): works, or fails naming an input."""
    from .predict_requests import predict_request, predict_requests

    TARGETS["predict_request"] = (predict_request, predict_requests())


_register_predict_request()
