"""The build cache: the converted model and the float graph after the passes, reused when nothing they
depend on changed, as a build system would.

    OUT/.qpass-cache/converted/{key, model.onnx}                       the converter's output
    OUT/.qpass-cache/float/{key, model.onnx, records.json}             the graph after the passes

A key is the SHA-256 of everything the entry depends on: the model file's content (every file of a
SavedModel folder, the external-data files an .onnx names), the versions of qpass, tf2onnx, TensorFlow,
Keras, onnx and onnx-ir, the source of qpass's converters (and passes, for the float entry), the model
options (batch_size, opset, safe_mode) and, for the float entry, the pass list with its options and the
content of any user pass file. An entry is used only when its stored key equals the key computed now; `key`
is written last, so a half-written entry never matches.

The cache lives inside the output folder (qpass writes only there). Each run reads the previous output's
cache and copies the entries it uses into its staging folder; entries it does not use are dropped with
the old output. `qpass run --no-cache` neither reads nor writes it; `qpass clean OUT` removes it.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import shutil
from dataclasses import asdict, dataclass, field
from importlib.metadata import PackageNotFoundError, entry_points, version
from pathlib import Path

import onnx_ir as ir

from qpass import __version__
from qpass.config import Pipeline
from qpass.converters import onnx_data_files
from qpass.passes.runner import PassRecord

log = logging.getLogger(__name__)
CACHE_DIR = ".qpass-cache"
KEY_FILE, MODEL_FILE, RECORDS_FILE = "key", "model.onnx", "records.json"
PACKAGES = ("tf2onnx", "tensorflow", "tensorflow-cpu", "tf_keras", "keras", "onnx", "onnx-ir", "numpy")
QPASS_DIR = Path(__file__).parent


def _versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"qpass": __version__}
    for name in PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def _hash_path(h: hashlib._Hash, path: Path) -> None:
    """Feed a file's bytes, or every file of a folder with its relative path, into `h`."""
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for f in files:
        h.update(str(f.relative_to(path) if path.is_dir() else f.name).encode() + b"\0")
        with f.open("rb") as stream:
            for chunk in iter(lambda: stream.read(1 << 20), b""):
                h.update(chunk)
        h.update(b"\0")


def _source_hash(*folders: str) -> str:
    """qpass's own code for a stage: a development install changes it without changing the version."""
    h = hashlib.sha256()
    for folder in folders:
        for f in sorted((QPASS_DIR / folder).glob("*.py")):
            h.update(f.name.encode() + b"\0" + f.read_bytes())
    return h.hexdigest()


def converted_key(pipe: Pipeline) -> str:
    h = hashlib.sha256()
    model = pipe.resolve(pipe.model.path)
    _hash_path(h, model)
    if model.suffix.lower() == ".onnx" and model.is_file():
        for data in onnx_data_files(model):  # weights kept beside the graph (MODEL.onnx.data)
            _hash_path(h, data)
    meta = {"versions": _versions(), "source": _source_hash("converters"),
            "options": pipe.model.model_dump(exclude={"path"})}
    h.update(json.dumps(meta, sort_keys=True, default=str).encode())
    return h.hexdigest()


def float_key(pipe: Pipeline, converted: str) -> str:
    """The float graph's key: the converted model's key, the passes' code, the pass list and options, and the
    code of every user pass or plug-in the list names."""
    h = hashlib.sha256(converted.encode())
    entries = [(p.name, p.options) for p in pipe.passes]
    h.update(json.dumps({"passes": entries, "source": _source_hash("passes")}, sort_keys=True,
                        default=str).encode())
    plugins = {ep.name: ep for ep in entry_points(group="qpass.passes")}
    for name, _ in entries:
        target = name.rpartition(":")[0]
        if target.endswith(".py"):
            path = (pipe.source.parent / target).resolve()
            if path.is_file():
                _hash_path(h, path)
        elif target or name in plugins:
            module = target or plugins[name].module
            spec = importlib.util.find_spec(module.split(".")[0])
            origin = Path(spec.origin) if spec is not None and spec.origin else None
            if origin is not None and origin.is_file():  # a package: all of its folder
                _hash_path(h, origin.parent if origin.name == "__init__.py" else origin)
    return h.hexdigest()


@dataclass
class BuildCache:
    """Entries read from the previous output (`old`) and written into the staging folder (`new`)."""

    old: Path | None
    new: Path | None
    used: dict[str, bool] = field(default_factory=dict)

    @classmethod
    def for_run(cls, out_dir: Path, stage: Path, enabled: bool = True) -> BuildCache:
        if not enabled:
            return cls(None, None)
        old = out_dir / CACHE_DIR
        return cls(old if old.is_dir() else None, stage / CACHE_DIR)

    def _get(self, entry: str, key: str) -> Path | None:
        """The entry's folder in the new cache, copied from the old one, if its stored key equals `key`."""
        self.used[entry] = False
        if self.old is None or self.new is None:
            return None
        src = self.old / entry
        try:
            if (src / KEY_FILE).read_text(encoding="utf-8") != key:
                return None
        except OSError:
            return None
        dst = self.new / entry
        shutil.copytree(src, dst, dirs_exist_ok=True)
        self.used[entry] = True
        log.info("cache: reusing the %s model from %s", entry, src)
        return dst

    def _put(self, entry: str, key: str, model: ir.Model, **json_files: object) -> None:
        if self.new is None:
            return
        dst = self.new / entry
        dst.mkdir(parents=True, exist_ok=True)
        ir.save(model, str(dst / MODEL_FILE))
        for name, obj in json_files.items():
            (dst / name).write_text(json.dumps(obj, indent=1), encoding="utf-8")
        (dst / KEY_FILE).write_text(key, encoding="utf-8")

    def converted(self, key: str) -> ir.Model | None:
        hit = self._get("converted", key)
        return None if hit is None else ir.load(str(hit / MODEL_FILE))

    def save_converted(self, key: str, model: ir.Model) -> None:
        self._put("converted", key, model)

    def float_graph(self, key: str) -> tuple[ir.Model, list[PassRecord]] | None:
        hit = self._get("float", key)
        if hit is None:
            return None
        records = [PassRecord(**r) for r in json.loads((hit / RECORDS_FILE).read_text(encoding="utf-8"))]
        return ir.load(str(hit / MODEL_FILE)), records

    def save_float(self, key: str, model: ir.Model, records: list[PassRecord]) -> None:
        self._put("float", key, model, **{RECORDS_FILE: [asdict(r) for r in records]})


def clear(out_dir: Path) -> bool:
    """Remove OUT/.qpass-cache; True if there was one."""
    cache = Path(out_dir) / CACHE_DIR
    if not cache.is_dir():
        return False
    shutil.rmtree(cache)
    return True
