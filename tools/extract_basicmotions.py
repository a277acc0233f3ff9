"""Extract the BasicMotions data set (6-channel IMU, 100 steps, 4 activities) from the aeon wheel into a small .npz.

    python tools/extract_basicmotions.py [--wheel PATH] [--out examples/har/basicmotions.npz]

The data ships as .ts files inside the ``aeon`` wheel on PyPI. Without --wheel the script runs
``pip download aeon==1.6.0 --no-deps`` into a temporary folder; aeon itself is never installed or imported.
The sktime/aeon .ts text format is parsed here: ``#`` comment lines, ``@`` header lines up to ``@data``, then
one case per line, each dimension a comma-separated series, dimensions separated by ``:``, the class label last.

Writes x_train (40, 100, 6) float32 channel-last, y_train int64, x_test, y_test and ``classes`` (sorted label
names; y is an index into it).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

AEON_VERSION = "1.6.0"
MEMBER = "aeon/datasets/data/BasicMotions/BasicMotions_{split}.ts"


def parse_ts(text: str) -> tuple[np.ndarray, list[str], dict[str, str]]:
    """Parse an equal-length, labelled .ts file. Returns (x of shape (cases, steps, dims) float32, labels, header)."""
    header: dict[str, str] = {}
    cases: list[list[list[float]]] = []
    labels: list[str] = []
    in_data = False
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if not in_data:
            if not line.startswith("@"):
                raise ValueError(f"line {lineno}: expected a header line starting with '@' before @data")
            key, _, value = line[1:].partition(" ")
            key = key.lower()
            if key == "data":
                in_data = True
            else:
                header[key] = value.strip()
            continue
        *dims, label = line.split(":")
        if not dims:
            raise ValueError(f"line {lineno}: no ':' separating the series from the class label")
        series = [[float("nan") if v.strip() == "?" else float(v) for v in d.split(",")] for d in dims]
        cases.append(series)
        labels.append(label.strip())
    if not in_data:
        raise ValueError("no @data line found")
    if not cases:
        raise ValueError("no cases after @data")
    n_dims = {len(c) for c in cases}
    n_steps = {len(s) for c in cases for s in c}
    if len(n_dims) != 1 or len(n_steps) != 1:
        raise ValueError(f"unequal cases: dimensions {sorted(n_dims)}, lengths {sorted(n_steps)}")
    if "dimensions" in header and int(header["dimensions"]) != next(iter(n_dims)):
        raise ValueError("@dimensions does not match the data")
    if "serieslength" in header and int(header["serieslength"]) != next(iter(n_steps)):
        raise ValueError("@seriesLength does not match the data")
    x = np.asarray(cases, dtype=np.float32).transpose(0, 2, 1)  # (cases, dims, steps) -> channel-last
    return np.ascontiguousarray(x), labels, header


def download_wheel(dest: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", f"aeon=={AEON_VERSION}", "--no-deps", "--only-binary=:all:",
           "-d", str(dest)]
    subprocess.run(cmd, check=True)
    wheels = sorted(dest.glob(f"aeon-{AEON_VERSION}-*.whl"))
    if not wheels:
        raise SystemExit(f"pip download left no aeon wheel in {dest}")
    return wheels[0]


def extract(wheel: Path, out: Path) -> None:
    with zipfile.ZipFile(wheel) as zf:
        parsed = {split: parse_ts(zf.read(MEMBER.format(split=split)).decode("utf-8"))
                  for split in ("TRAIN", "TEST")}
    (x_tr, lab_tr, head), (x_te, lab_te, _) = parsed["TRAIN"], parsed["TEST"]
    declared = head.get("classlabel", "").split()
    classes = sorted(set(declared[1:]) if declared[:1] == ["true"] else set(lab_tr) | set(lab_te))
    unknown = (set(lab_tr) | set(lab_te)) - set(classes)
    if unknown:
        raise ValueError(f"labels not declared in @classLabel: {sorted(unknown)}")
    index = {c: i for i, c in enumerate(classes)}
    y_tr = np.array([index[c] for c in lab_tr], dtype=np.int64)
    y_te = np.array([index[c] for c in lab_te], dtype=np.int64)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out, x_train=x_tr, y_train=y_tr, x_test=x_te, y_test=y_te, classes=np.array(classes))
    print(f"wrote {out} ({out.stat().st_size} bytes): x_train {x_tr.shape}, x_test {x_te.shape}, classes {classes}")
    print("train counts", np.bincount(y_tr, minlength=len(classes)).tolist(),
          "test counts", np.bincount(y_te, minlength=len(classes)).tolist())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--wheel", type=Path, help=f"an already downloaded aeon-{AEON_VERSION} wheel")
    ap.add_argument("--out", type=Path,
                    default=Path(__file__).resolve().parents[1] / "examples" / "har" / "basicmotions.npz")
    args = ap.parse_args()
    if args.wheel is not None:
        extract(args.wheel, args.out)
        return
    with tempfile.TemporaryDirectory() as tmp:
        extract(download_wheel(Path(tmp)), args.out)


if __name__ == "__main__":
    main()
