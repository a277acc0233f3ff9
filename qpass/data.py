"""Calibration and comparison data: `.npy` and `.npz` files, read in bounded batches."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from qpass.errors import ConfigError


def load_array(path: Path, key: str | None, *, yaml_file: str, yaml_key: str) -> np.ndarray:
    """The array stored in a .npy (memory-mapped) or under `key` in a .npz (default: its first array)."""
    try:
        if path.suffix.lower() == ".npy":
            return np.load(path, mmap_mode="r", allow_pickle=False)
        with np.load(path, allow_pickle=False) as npz:
            names = list(npz.files)
            if not names:
                raise ConfigError(yaml_file, yaml_key, f"{path.name} holds no arrays")
            name = key or names[0]
            if name not in npz.files:
                raise ConfigError(yaml_file, yaml_key, f"{path.name} has no array {name!r}; it has {names}")
            return npz[name]
    except ConfigError:
        raise
    except (OSError, ValueError) as exc:
        raise ConfigError(yaml_file, yaml_key, f"cannot read {path.name}: {exc}") from None


def check_samples(x: np.ndarray, sample_shape: tuple[int, ...], *, yaml_file: str, yaml_key: str) -> None:
    """Data must be shaped (N, *sample_shape) and numeric."""
    if x.ndim == 0 or tuple(x.shape[1:]) != tuple(sample_shape) or not np.issubdtype(x.dtype, np.number):
        raise ConfigError(yaml_file, yaml_key, f"data of shape {tuple(x.shape)} ({x.dtype}) does not fit the "
                          f"model input: expected (N, {', '.join(map(str, sample_shape))})")


def batches(x: np.ndarray, batch_size: int, limit: int | None = None) -> Iterator[np.ndarray]:
    n = len(x) if limit is None else min(limit, len(x))
    for start in range(0, n, batch_size):
        yield np.asarray(x[start:min(n, start + batch_size)], dtype=np.float32)
