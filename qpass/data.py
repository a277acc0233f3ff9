"""Calibration and comparison data, read in bounded batches.

Data is a `.npy` file (memory-mapped), an array in a `.npz`, or, for calibration only, a Python
callable named `module:function` or `file.py:function` (relative to the YAML) that takes no argument
and returns an iterable of float32 arrays shaped (n, *input_shape[1:]). A callable is loaded as user
passes are: by import or from its file, no `sys.path` edits, no `eval`.
"""

from __future__ import annotations

import importlib
import importlib.util
import re
import zipfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from qpass.errors import ConfigError

if TYPE_CHECKING:
    from qpass.config import CalibrationSection, Pipeline

_CALLABLE = re.compile(r"(?P<target>.+\.py|[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*):(?P<name>[A-Za-z_]\w*)")


def load_array(path: Path, key: str | None, *, yaml_file: str, yaml_key: str, path_key: str | None = None) \
        -> np.ndarray:
    """The array stored in a .npy (memory-mapped) or under `key` in a .npz (default: its first array).

    A missing array is a ConfigError at `yaml_key`; a file that cannot be read (corrupt, pickled objects) one
    at `path_key` (default: `yaml_key`), naming the file.
    """
    path_key = path_key or yaml_key
    try:
        if path.suffix.lower() == ".npy":
            return np.load(path, mmap_mode="r", allow_pickle=False)
        with np.load(path, allow_pickle=False) as npz:
            names = list(npz.files)
            if not names:
                raise ConfigError(yaml_file, path_key, f"{path.name} holds no arrays")
            name = key or names[0]
            if name not in npz.files:
                raise ConfigError(yaml_file, yaml_key, f"{path.name} has no array {name!r}; it has {names}")
            return npz[name]
    except ConfigError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        if "pickle" in str(exc) or "Python objects" in str(exc):
            raise ConfigError(yaml_file, path_key, f"{path} holds pickled Python objects, which qpass never loads; "
                              "save a plain numeric array") from None
        raise ConfigError(yaml_file, path_key, f"cannot read {path}: {exc}") from None


def check_samples(x: np.ndarray, sample_shape: tuple[int, ...], *, yaml_file: str, yaml_key: str,
                  name: str = "data") -> None:
    """Data (the file `name`) must be shaped (N, *sample_shape), hold a sample and be real numbers (not complex)."""
    if np.issubdtype(x.dtype, np.complexfloating):
        raise ConfigError(yaml_file, yaml_key, f"{name} is complex ({x.dtype}); the model takes real numbers: save "
                          "the real part (or magnitude) you mean")
    if x.ndim == 0 or len(x) == 0:
        raise ConfigError(yaml_file, yaml_key, f"{name} of shape {tuple(x.shape)} holds no sample")
    if tuple(x.shape[1:]) != tuple(sample_shape) or not np.issubdtype(x.dtype, np.number):
        raise ConfigError(yaml_file, yaml_key, f"{name} of shape {tuple(x.shape)} ({x.dtype}) does not fit the "
                          f"model input: expected (N, {', '.join(map(str, sample_shape))})")


def batches(x: np.ndarray, batch_size: int, limit: int | None = None) -> Iterator[np.ndarray]:
    n = len(x) if limit is None else min(limit, len(x))
    for start in range(0, n, batch_size):
        yield np.asarray(x[start:min(n, start + batch_size)], dtype=np.float32)


def callable_spec(path: str) -> tuple[str, str] | None:
    """(target, function) when `path` names a callable (`module:function`, `file.py:function`), else None."""
    m = _CALLABLE.fullmatch(path)
    return (m["target"], m["name"]) if m else None


def load_callable(spec: str, base_dir: Path, *, yaml_file: str, yaml_key: str) -> Callable[[], Any]:
    """The function a `module:function` or `file.py:function` names; ConfigError at `yaml_key` if it cannot."""
    parsed = callable_spec(spec)
    if parsed is None:
        raise ConfigError(yaml_file, yaml_key, f"{spec!r}: write a data callable as `module:function` or "
                          "`file.py:function`")
    target, name = parsed
    if target.endswith(".py"):
        path = (base_dir / target).resolve()
        if not path.is_file():
            raise ConfigError(yaml_file, yaml_key, f"{spec!r}: file {path} does not exist")
        mod_spec = importlib.util.spec_from_file_location(f"qpass_user_data_{path.stem}_{abs(hash(str(path)))}",
                                                          path)
        if mod_spec is None or mod_spec.loader is None:
            raise ConfigError(yaml_file, yaml_key, f"{spec!r}: cannot load {path} as Python")
        module = importlib.util.module_from_spec(mod_spec)
        try:
            mod_spec.loader.exec_module(module)
        except Exception as exc:  # a user's file: report any failure as theirs
            raise ConfigError(yaml_file, yaml_key, f"{spec!r}: importing {path} failed: "
                              f"{type(exc).__name__}: {exc}") from exc
    else:
        try:
            module = importlib.import_module(target)
        except ImportError as exc:
            raise ConfigError(yaml_file, yaml_key, f"{spec!r}: cannot import module {target!r}: {exc}") from exc
    fn = getattr(module, name, None)
    if fn is None:
        raise ConfigError(yaml_file, yaml_key, f"{spec!r}: {target} has no attribute {name!r}")
    if not callable(fn):
        raise ConfigError(yaml_file, yaml_key, f"{spec!r}: {name} is a {type(fn).__name__}, not a function")
    return fn


@dataclass
class Batches:
    """Float32 batches shaped (n, *sample_shape), at most `batch_size` samples each; `total` when known."""

    source: Iterator[np.ndarray]
    total: int | None

    def __iter__(self) -> Iterator[np.ndarray]:
        return self.source


def calibration_batches(section: CalibrationSection, sample_shape: tuple[int, ...], *, base_dir: Path,
                        yaml_file: str) -> Batches:
    """The calibration section's data (file or callable) as checked, bounded float32 batches.

    A batch that is not shaped (n, *sample_shape), is not numeric or holds NaN/infinity raises
    ConfigError at `calibration.path`; so does data with no sample at all.
    """
    key = "calibration.path"
    sample_shape = tuple(int(d) for d in sample_shape)
    if callable_spec(section.path) is None:
        x = load_array(base_dir / section.path, section.key, yaml_file=yaml_file, yaml_key="calibration.key",
                       path_key=key)
        check_samples(x, sample_shape, yaml_file=yaml_file, yaml_key=key, name=section.path)
        total = len(x) if section.limit is None else min(section.limit, len(x))
        raw: Iterable[Any] = batches(x, section.batch_size, section.limit)
        what = section.path
    else:
        fn = section.function or load_callable(section.path, base_dir, yaml_file=yaml_file, yaml_key=key)
        try:
            raw = fn()
            iter(raw)
        except ConfigError:
            raise
        except TypeError:
            raise ConfigError(yaml_file, key, f"{section.path!r} returned {type(raw).__name__}, not an iterable "
                              "of arrays") from None
        except Exception as exc:  # the user's function: report any failure as theirs
            raise ConfigError(yaml_file, key, f"{section.path!r} raised {type(exc).__name__}: {exc}") from exc
        total, what = None, section.path
    return Batches(_checked(raw, sample_shape, section.batch_size, section.limit, what, yaml_file, key), total)


def _checked(raw: Iterable[Any], sample_shape: tuple[int, ...], batch_size: int, limit: int | None, what: str,
             yaml_file: str, key: str) -> Iterator[np.ndarray]:
    seen, it, index = 0, iter(raw), 0
    while limit is None or seen < limit:
        try:
            batch = next(it)
        except StopIteration:
            break
        except Exception as exc:  # the user's generator: report any failure as theirs
            raise ConfigError(yaml_file, key, f"{what!r} raised {type(exc).__name__} at batch {index}: {exc}") \
                from exc
        arr = _as_batch(batch, sample_shape, index, what, yaml_file, key)
        if limit is not None:
            arr = arr[:limit - seen]
        for start in range(0, len(arr), batch_size):
            yield arr[start:start + batch_size]
        seen += len(arr)
        index += 1
    if seen == 0:
        raise ConfigError(yaml_file, key, f"{what!r} gave no samples")


def _as_batch(batch: Any, sample_shape: tuple[int, ...], index: int, what: str, yaml_file: str,
              key: str) -> np.ndarray:
    expected = f"(n, {', '.join(map(str, sample_shape))})"
    try:
        arr = np.asarray(batch)
    except (TypeError, ValueError) as exc:
        raise ConfigError(yaml_file, key, f"batch {index} of {what!r} is not an array: {exc}") from None
    if (arr.ndim != len(sample_shape) + 1 or tuple(arr.shape[1:]) != sample_shape
            or not np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.complexfloating)):
        raise ConfigError(yaml_file, key, f"batch {index} of {what!r} has shape {tuple(arr.shape)} ({arr.dtype}); "
                          f"the model input needs float32 batches shaped {expected}")
    arr = np.asarray(arr, dtype=np.float32)
    if not np.isfinite(arr).all():
        raise ConfigError(yaml_file, key, f"batch {index} of {what!r} holds NaN or infinity")
    return arr


def comparison_data(pipe: Pipeline, sample_shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray | None]:
    """The comparison samples (float32, at most `limit`) and their labels, from `compare` or else `calibration`."""
    file = str(pipe.source)
    section, key = (pipe.compare, "compare") if pipe.compare else (pipe.calibration, "calibration")
    x = load_array(pipe.resolve(section.path), section.key, yaml_file=file, yaml_key=f"{key}.key",
                   path_key=f"{key}.path")
    check_samples(x, sample_shape, yaml_file=file, yaml_key=f"{key}.path", name=section.path)
    n = len(x) if section.limit is None else min(section.limit, len(x))
    labels = None
    if section.labels_key:
        labels = load_array(pipe.resolve(section.path), section.labels_key, yaml_file=file,
                            yaml_key=f"{key}.labels_key", path_key=f"{key}.path")[:n]
        if labels.shape[:1] != (n,) or not np.issubdtype(labels.dtype, np.number) \
                or np.issubdtype(labels.dtype, np.complexfloating):
            raise ConfigError(file, f"{key}.labels_key", f"{section.path}: labels of shape {tuple(labels.shape)} "
                              f"({labels.dtype}) do not fit {n} samples: expected {n} class numbers")
    with np.errstate(over="ignore"):
        out = np.asarray(x[:n], dtype=np.float32)
    bad = ~np.isfinite(out.reshape(n, -1)).all(axis=1)
    if bad.any():
        raise ConfigError(file, f"{key}.path", f"{section.path}: sample {int(np.argmax(bad))} holds NaN or infinity "
                          f"(or a value too large for float32); {int(bad.sum())} of {n} samples do")
    return out, labels
