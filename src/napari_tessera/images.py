"""Image files in and out: TIFF, .npy, zarr and OME-Zarr, read whole or lazily, written
atomically; and the regions of a lazy slice that the block runner reads.

Nothing is allocated for a file whose header declares more data than it holds (a truncated
or hostile .npy or TIFF), or for an image (or a chunk of one) larger than this machine's
memory: each is a one-line :class:`InputError` before any pixel is read.
"""

from __future__ import annotations

import contextlib
import math
import os
import struct
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from .axes import SliceLayout, normalize_axes
from .errors import InputError
from .normalize import slice_levels
from .tiling import mirror_indices


# -- atomic writes ------------------------------------------------------------------------------
def file_sha256(path: str | os.PathLike) -> str:
    """The sha256 of a file's bytes, read a megabyte at a time."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def check_output_folder(path: str | os.PathLike) -> None:
    """The one check that the folder an output goes into exists."""
    parent = Path(path).parent
    if not parent.is_dir():
        raise InputError(f"output folder does not exist: {parent}")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it onto ``path``.

    On any error or interruption (Ctrl-C included) the temporary file is removed and ``path``
    is left as it was: never a half-written file under the final name.
    """
    path = Path(path)
    check_output_folder(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual permissions
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# -- images -------------------------------------------------------------------------------------
def physical_memory() -> int | None:
    """This machine's memory in bytes (None where it cannot be told)."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):  # no sysconf (Windows) or no such name
        pass
    with contextlib.suppress(Exception):  # Windows: GlobalMemoryStatusEx
        import ctypes

        names = ("total", "avail", "page", "apage", "virt", "avirt", "ext")

        class _Status(ctypes.Structure):
            _fields_ = [("length", ctypes.c_ulong), ("load", ctypes.c_ulong)]
            _fields_ += [(n, ctypes.c_ulonglong) for n in names]

        status = _Status()
        status.length = ctypes.sizeof(_Status)
        kernel32 = ctypes.windll.kernel32  # type: ignore[attr-defined]
        if kernel32.GlobalMemoryStatusEx(ctypes.byref(status)):
            return int(status.total)
    return None


def _nbytes_text(n: int) -> str:
    for unit, size in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} bytes"


def _array_text(shape, dtype) -> str:
    """``200000x200000 float32 (149.0 GiB)``"""
    n = math.prod(int(d) for d in shape) * np.dtype(dtype).itemsize
    return f"{'x'.join(str(int(d)) for d in shape)} {np.dtype(dtype)} ({_nbytes_text(n)})"


def check_fits_in_memory(path: str | os.PathLike, shape, dtype) -> None:
    """Refuse to read a whole image that is larger than this machine's memory."""
    memory = physical_memory()
    nbytes = math.prod(int(d) for d in shape) * np.dtype(dtype).itemsize
    if memory is not None and nbytes > memory:
        raise InputError(
            f"{Path(path).name} is a {_array_text(shape, dtype)} image, more than this "
            f"machine's memory ({_nbytes_text(memory)}); segment it into a .zarr output "
            "(-o labels.zarr), which reads it slice by slice"
        )


def check_npy(path: Path) -> tuple[tuple[int, ...], np.dtype] | None:
    """Refuse a .npy file whose header declares more data than the file holds; returns its
    shape and dtype (None for a header that np.load alone can judge)."""
    from numpy.lib import format as npy

    try:
        with open(path, "rb") as f:
            version = npy.read_magic(f)
            if version == (1, 0):
                shape, _, dtype = npy.read_array_header_1_0(f)
            elif version == (2, 0):
                shape, _, dtype = npy.read_array_header_2_0(f)
            else:
                return None  # a newer header: np.load decides
            offset = f.tell()
    except (ValueError, OSError, SyntaxError, TypeError) as err:
        raise InputError(f"{path.name} is not a readable .npy image: {err}") from err
    if dtype.hasobject:
        return None  # np.load refuses it (no pickles)
    need = offset + math.prod(shape) * dtype.itemsize
    size = path.stat().st_size
    if size < need:
        raise InputError(
            f"{path.name} is truncated or corrupt: its header declares a "
            f"{_array_text(shape, dtype)} array but the file holds {size - offset} bytes of data"
        )
    return shape, dtype


def check_tiff_data(path: Path, series) -> None:
    """Refuse a TIFF whose strips or tiles lie beyond the end of the file, or whose
    uncompressed image is larger than the file: it is truncated or its header lies."""
    size = path.stat().st_size

    def refuse():
        raise InputError(
            f"{path.name} is truncated or corrupt: it declares a "
            f"{_array_text(series.shape, series.dtype)} image whose data is not in the file "
            f"({_nbytes_text(size)})"
        )

    def stored(page, nbytes: int) -> int:  # least bytes the uncompressed data takes
        key = getattr(page, "keyframe", None) or page
        if key.compression != 1 or key.dtype is None or getattr(key, "is_subsampled", False):
            return 0
        return nbytes * key.bitspersample // (8 * np.dtype(key.dtype).itemsize)

    if series.dataoffset is not None:  # contiguous uncompressed data
        if series.dataoffset + stored(series.keyframe, series.nbytes) > size:
            refuse()
        return
    total = 0
    for page in series:
        if page is None:
            continue
        offsets = np.asarray(page.dataoffsets, dtype=np.uint64)
        counts = np.asarray(page.databytecounts, dtype=np.uint64)
        if len(offsets) != len(counts) or np.any((counts > 0) & (offsets + counts > size)):
            refuse()
        total += stored(page, page.nbytes)
        if total > size:
            refuse()


def read_image(path: str | os.PathLike) -> tuple[np.ndarray, str | None]:
    """Read a TIFF, .npy or zarr image into memory; returns ``(array, axes or None)``.

    Axes come from the TIFF's ImageJ/OME/shaped metadata when it names only axes Tessera knows
    (T, Z, C, Y, X; S = samples is read as C); otherwise None and the caller guesses.

    Nothing is allocated for a file whose header declares more data than it holds (a truncated
    or hostile .npy or TIFF) or an image larger than this machine's memory: both are an
    :class:`InputError` before any pixel is read.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"input file not found: {path}")
    if path.suffix.lower() == ".zarr":
        lazy, axes = open_image(path)
        check_fits_in_memory(path, lazy.shape, lazy.dtype)
        return np.asarray(lazy[...]), axes
    if path.is_dir():
        raise InputError(f"input is a folder, not an image file: {path}")
    if path.suffix.lower() == ".npy":
        declared = check_npy(path)
        if declared is not None:
            check_fits_in_memory(path, *declared)
        try:
            arr = np.load(path, allow_pickle=False)
        except (ValueError, OSError) as err:
            raise InputError(f"{path.name} is not a readable .npy image: {err}") from err
        return arr, None
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            check_tiff_data(path, series)
            check_fits_in_memory(path, series.shape, series.dtype)
            arr = series.asarray()
            axes = series.axes.upper()
    except InputError:
        raise
    except (tifffile.TiffFileError, ValueError, IndexError, OSError, struct.error) as err:
        raise InputError(f"{path.name} is not a readable TIFF image ({err})") from err
    axes = normalize_axes(axes)
    if len(axes) != arr.ndim or set(axes) - set("TZCYX"):
        # drop length-1 axes tifffile adds, then give up on unknown letters
        axes = None
    return arr, axes


# micrometres per unit, for the unit names TIFF (ImageJ, OME) and OME-Zarr metadata use
_MICRONS = {
    "um": 1.0,
    "µm": 1.0,
    "μm": 1.0,
    "\\u00b5m": 1.0,
    "micron": 1.0,
    "microns": 1.0,
    "micrometer": 1.0,
    "micrometre": 1.0,
    "nm": 1e-3,
    "nanometer": 1e-3,
    "nanometre": 1e-3,
    "mm": 1e3,
    "millimeter": 1e3,
    "millimetre": 1e3,
    "cm": 1e4,
    "centimeter": 1e4,
    "centimetre": 1e4,
    "m": 1e6,
    "meter": 1e6,
    "metre": 1e6,
    "å": 1e-4,
    "angstrom": 1e-4,
}


def _microns(value, unit) -> float | None:
    """``value`` in ``unit`` as micrometres (None: not a positive length in a known unit)."""
    factor = _MICRONS.get(str(unit).strip().lower()) if unit is not None else None
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    if factor is None or not (0 < v < math.inf):
        return None
    return v * factor


def read_voxel_size(path: str | os.PathLike) -> tuple[float, ...] | None:
    """The pixel (voxel) size a file states, in micrometres: ``(Z, Y, X)`` when it gives a Z
    spacing for an image with a Z axis, else ``(Y, X)``; None when it states none.

    Read from OME-TIFF (``PhysicalSizeX/Y/Z`` and their units), ImageJ TIFF (the resolution
    tags in the ImageJ ``unit``, and ``spacing`` for Z), a plain TIFF's resolution tags in
    centimetres (inches are not read: 72, 96 or 300 dpi are an image editor's defaults, not a
    pixel size) and OME-Zarr (the first level's ``scale`` in its axes' units). Pixels, no unit
    or an unknown unit give None. A file that cannot be read gives None (reading the image
    reports it).
    """
    path = Path(path)
    try:
        if is_zarr(path):
            return _zarr_voxel_size(path)
        if path.suffix.lower() not in (".tif", ".tiff"):
            return None
        return _tiff_voxel_size(path)
    except Exception:  # noqa: BLE001 - metadata is optional: an unreadable one is no size
        return None


def _tiff_voxel_size(path: Path) -> tuple[float, ...] | None:
    import tifffile

    with tifffile.TiffFile(path) as tif:
        axes = tif.series[0].axes.upper()
        if tif.is_ome and tif.ome_metadata:
            return _ome_voxel_size(tif.ome_metadata, axes)
        page = tif.pages.first
        tags = page.tags

        def per_pixel(name, factor):  # a resolution tag (pixels per unit) as um per pixel
            tag = tags.get(name)
            if tag is None:
                return None
            num, den = tag.value
            return factor * den / num if num > 0 and den > 0 else None

        if tif.is_imagej:
            meta = tif.imagej_metadata or {}
            unit = _microns(1.0, meta.get("unit"))
            if unit is None:
                return None
            y, x = per_pixel("YResolution", unit), per_pixel("XResolution", unit)
            if y is None or x is None:
                return None
            z = _microns(meta.get("spacing"), meta.get("unit")) if "Z" in axes else None
            return (z, y, x) if z is not None else (y, x)
        res_unit = tags.get("ResolutionUnit")
        if res_unit is None or int(res_unit.value) != 3:  # centimetres only
            return None
        y, x = per_pixel("YResolution", 1e4), per_pixel("XResolution", 1e4)
        return (y, x) if y is not None and x is not None else None


def _ome_voxel_size(xml: str, axes: str) -> tuple[float, ...] | None:
    from xml.etree import ElementTree

    root = ElementTree.fromstring(xml)
    pixels = next((e for e in root.iter() if e.tag.rsplit("}", 1)[-1] == "Pixels"), None)
    if pixels is None:
        return None

    def size(a):
        return _microns(pixels.get(f"PhysicalSize{a}"), pixels.get(f"PhysicalSize{a}Unit", "µm"))

    y, x = size("Y"), size("X")
    if y is None or x is None:
        return None
    z = size("Z") if "Z" in axes else None
    return (z, y, x) if z is not None else (y, x)


def _zarr_voxel_size(path: Path) -> tuple[float, ...] | None:
    import zarr

    node = zarr.open(str(path), mode="r")
    attrs = dict(node.attrs)
    multiscales = attrs.get("multiscales") or attrs.get("ome", {}).get("multiscales")
    if not multiscales:
        return None
    ms = multiscales[0]
    names = [a if isinstance(a, dict) else {"name": a} for a in ms.get("axes", [])]
    scale = np.ones(len(names))
    for transforms in (
        ms["datasets"][0].get("coordinateTransformations", []),
        ms.get("coordinateTransformations", []),
    ):
        for t in transforms:
            if t.get("type") == "scale":
                scale = scale * np.asarray(t["scale"], dtype=float)
    sizes = {}
    for a, s in zip(names, scale):
        name = str(a.get("name", "")).upper()
        if name in ("Z", "Y", "X"):
            sizes[name] = _microns(s, a.get("unit"))
    if sizes.get("Y") is None or sizes.get("X") is None:
        return None
    if sizes.get("Z") is not None:
        return sizes["Z"], sizes["Y"], sizes["X"]
    return sizes["Y"], sizes["X"]


def write_tiff(path: str | os.PathLike, data: np.ndarray, *, axes: str | None = None) -> Path:
    """Write a (zlib-compressed) TIFF atomically: temp file, then rename."""
    import tifffile

    path = Path(path)
    meta = {"axes": axes} if axes else {}
    with atomic_path(path) as tmp:
        tifffile.imwrite(tmp, data, metadata=meta, compression="zlib", photometric="minisblack")
    return path


# -- lazy inputs --------------------------------------------------------------------------------
def is_zarr(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() == ".zarr"


def open_image(path: str | os.PathLike) -> tuple[Any, str | None]:
    """Open an image without reading its pixels: ``(array-like, axes or None)``.

    zarr arrays and OME-Zarr images (their full-resolution level) are opened as zarr arrays,
    TIFFs through tifffile's zarr interface (pages, strips or tiles read on demand), ``.npy``
    memory-mapped. Slicing the result reads only what the slice needs.

    A .npy or TIFF whose header declares data the file does not hold (truncated or hostile), and
    an array whose every chunk is larger than this machine's memory, are refused here with an
    :class:`InputError`, before any pixel is read.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"input file not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".zarr":
        return _open_zarr(path)
    if path.is_dir():
        raise InputError(f"input is a folder, not an image file: {path}")
    if suffix == ".npy":
        check_npy(path)
        try:
            return np.load(path, mmap_mode="r", allow_pickle=False), None
        except (ValueError, OSError) as err:
            raise InputError(f"{path.name} is not a readable .npy image: {err}") from err
    return _open_tiff(path)


def _letters(names: list[str]) -> str | None:
    axes = "".join(str(n) for n in names).upper()
    if len(axes) != len(names) or set(axes) - set("TZCYX") or len(set(axes)) != len(axes):
        return None
    return axes


def _open_zarr(path: Path) -> tuple[Any, str | None]:
    import zarr

    try:
        node = zarr.open(str(path), mode="r")
    except Exception as err:  # zarr raises several types for a store it cannot read
        raise InputError(f"{path.name} is not a readable zarr store ({err})") from err
    if isinstance(node, zarr.Array):
        names = node.attrs.get("axes") or node.attrs.get("_ARRAY_DIMENSIONS")
        axes = _letters(list(names)) if names else None
        _check_chunks(path, node)
        return node, axes
    attrs = dict(node.attrs)
    multiscales = attrs.get("multiscales") or attrs.get("ome", {}).get("multiscales")
    if not multiscales:
        raise InputError(
            f"{path.name} is a zarr group without OME-Zarr 'multiscales'; "
            "give the path of its image array"
        )
    ms = multiscales[0]
    try:
        array = node[ms["datasets"][0]["path"]]
    except (KeyError, IndexError) as err:
        raise InputError(f"{path.name}: its OME-Zarr metadata names no readable level") from err
    names = [a["name"] if isinstance(a, dict) else a for a in ms.get("axes", [])]
    axes = _letters(names) if len(names) == array.ndim else None
    _check_chunks(path, array)
    return array, axes


def _check_chunks(path: Path, array) -> None:
    """Refuse an array whose chunks (the least that can be read of it) do not fit in memory."""
    try:
        chunks = array.chunks
    except (AttributeError, NotImplementedError, TypeError, ValueError):  # no regular grid
        return
    memory = physical_memory()
    if not chunks or memory is None:
        return
    if math.prod(int(c) for c in chunks) * np.dtype(array.dtype).itemsize > memory:
        raise InputError(
            f"{path.name}: its {_array_text(array.shape, array.dtype)} image is stored in "
            f"chunks of {'x'.join(str(int(c)) for c in chunks)}, each more than this machine's "
            f"memory ({_nbytes_text(memory)})"
        )


def _open_tiff(path: Path) -> tuple[Any, str | None]:
    import struct

    import tifffile
    import zarr

    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            check_tiff_data(path, series)
            axes = normalize_axes(series.axes.upper())
            shape = series.shape
        store = tifffile.imread(path, aszarr=True)
        array = zarr.open(store, mode="r")
    except InputError:
        raise
    except (tifffile.TiffFileError, ValueError, IndexError, OSError, struct.error) as err:
        raise InputError(f"{path.name} is not a readable TIFF image ({err})") from err
    if not isinstance(array, zarr.Array):  # a pyramid: level 0
        array = array["0"]
    _check_chunks(path, array)
    if len(axes) != len(shape) or set(axes) - set("TZCYX"):
        axes = None
    return array, axes


Box = tuple[int, int, int, int]  # y0, y1, x0, x1 of a block's kept core


def read_region(image, lay: SliceLayout, s: int, box: Box, margin: int) -> np.ndarray:
    """Block ``box`` of slice ``s`` with ``margin`` pixels of context, ``(C, y, x)``: reads
    only the rows and columns needed, mirrored at the image border as the tiler mirrors."""
    y0, y1, x0, x1 = box
    h, w = lay.yx
    iy = mirror_indices(y0 - margin, y1 + margin, h)
    ix = mirror_indices(x0 - margin, x1 + margin, w)
    ylo, xlo = int(iy.min()), int(ix.min())
    rows, cols = slice(ylo, int(iy.max()) + 1), slice(xlo, int(ix.max()) + 1)
    data = np.asarray(lay.region_view(image, s, rows, cols))
    return data[:, iy - ylo][:, :, ix - xlo]


def lazy_levels(image, lay: SliceLayout, s: int, norm) -> list[tuple[float, float]]:
    """Whole-slice intensity levels of slice ``s``, read as a strided subsample."""
    if isinstance(image, np.ndarray):
        return slice_levels(lay.slice_view(image, s), norm)
    import dask
    import dask.array as da

    chunks = getattr(image, "chunks", "auto")
    image = image if isinstance(image, da.Array) else da.from_array(image, chunks=chunks)
    with dask.config.set(scheduler="synchronous"):  # here, a chunk at a time (not a cluster)
        return slice_levels(lay.slice_view(image, s), norm)
