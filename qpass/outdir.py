"""The output folder: qpass's own, written whole or not at all, and never anything else.

A run writes into a staging folder beside the output (`.NAME.staging-*`, normal umask permissions) and,
when every stage succeeded, swaps it in. The output folder holds a manifest (`.qpass-manifest.json`)
listing every file and folder a run wrote there:

    out/tiny/ .qpass-manifest.json {"entries": [".qpass-manifest.json", "report.json", "tiny.c", ...]}
    next run:  every entry present is listed (or under `.qpass-cache/`)  →  replace exactly those
               anything else, or no manifest in a non-empty folder      →  ConfigError at codegen.output_dir

The output folder can never be, nor contain, the YAML's folder, the model's, a data file's or a user
pass file's (symlinks resolved). Staging folders of a killed run are removed by the next run of the same
output; an unwritable location is a ConfigError too.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

from qpass import __version__
from qpass.config import Pipeline
from qpass.data import callable_spec
from qpass.errors import ConfigError

log = logging.getLogger(__name__)
MANIFEST = ".qpass-manifest.json"
KEY = "codegen.output_dir"


def qpass_owned_names() -> tuple[str, ...]:
    """Top-level names in an output folder that are qpass's own whatever the manifest lists (whole subtrees)."""
    return (MANIFEST, ".qpass-cache")


@contextlib.contextmanager
def staged_output(pipe: Pipeline) -> Iterator[Path]:
    """A fresh staging folder for the run; on success it replaces the output folder, on failure it goes
    (with the parent folders this run created). Every refusal comes before anything is written."""
    out_dir = pipe.output_dir
    file = str(pipe.source)
    check_output_dir(pipe)
    owned = owned_entries(out_dir, file)
    made = _make_parents(out_dir.parent, file)
    clean_stale_staging(out_dir)
    stage = out_dir.parent / f".{out_dir.name}.staging-{uuid.uuid4().hex[:12]}"
    try:
        stage.mkdir()  # normal umask permissions, unlike tempfile.mkdtemp's 0700
        _write_manifest(stage, [], os.getpid())
    except OSError as exc:
        _remove_empty(made)
        raise ConfigError(file, KEY, f"cannot write in {out_dir.parent}: {exc.strerror or exc}") from None
    try:
        yield stage
        _write_manifest(stage, _walk(stage), None)
        _replace_dir(stage, out_dir, owned, file)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        _remove_empty(made)
        raise


def _protected(pipe: Pipeline) -> list[tuple[str, Path]]:
    """(what, folder) pairs the output folder must never be, nor contain."""
    model = pipe.resolve(pipe.model.path)
    out = [("the YAML's folder", pipe.source.parent.resolve()),
           ("the model's folder", model if model.is_dir() else model.parent)]
    for key, section in (("calibration", pipe.calibration), ("compare", pipe.compare)):
        if section is None:
            continue
        spec = callable_spec(section.path)
        if spec is None:
            out.append((f"the folder of {key}.path", pipe.resolve(section.path).parent))
        elif spec[0].endswith(".py"):
            out.append((f"the folder of {key}.path", pipe.resolve(spec[0]).parent))
    for i, entry in enumerate(pipe.passes):
        target = entry.name.rsplit(":", 1)[0]
        if ":" in entry.name and target.endswith(".py"):
            out.append((f"the folder of passes[{i}]", pipe.resolve(target).parent))
    return out


def check_output_dir(pipe: Pipeline) -> None:
    """Refuse an output folder that is, or contains, one of the user's input folders (symlinks resolved)."""
    out_dir = pipe.output_dir.resolve()
    for what, folder in _protected(pipe):
        folder = folder.resolve()
        if folder == out_dir or out_dir in folder.parents:
            where = "is" if folder == out_dir else "contains"
            raise ConfigError(str(pipe.source), KEY, f"{out_dir} {where} {what} ({folder}); qpass replaces its "
                              "output folder on every run: give it a folder of its own, e.g. build/NAME")


def owned_entries(out_dir: Path, file: str) -> list[str]:
    """The relative paths under an existing output folder that a later run may replace (empty when the folder
    does not exist or is empty); ConfigError when it holds anything qpass did not write."""
    if not out_dir.exists():
        return []
    if not out_dir.is_dir():
        raise ConfigError(file, KEY, f"{out_dir} exists and is not a folder; choose another path")
    try:
        present = _walk(out_dir)
    except OSError as exc:
        raise ConfigError(file, KEY, f"cannot read {out_dir}: {exc.strerror or exc}") from None
    if not present:
        return []
    listed = _read_manifest(out_dir, file)
    foreign = [p for p in present if p not in listed and p.split("/")[0] not in qpass_owned_names()]
    if foreign:
        shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise ConfigError(file, KEY, f"{out_dir} holds files qpass did not write ({shown}); choose another "
                          "folder or move them away")
    return present


def _read_manifest(out_dir: Path, file: str) -> set[str]:
    path = out_dir / MANIFEST
    refuse = f"{out_dir} is not empty and is not a qpass output directory (no valid {MANIFEST}); choose another " \
             "folder or empty it"
    if not path.is_file():
        raise ConfigError(file, KEY, refuse)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        entries = data["entries"]
    except (OSError, ValueError, KeyError, TypeError):
        raise ConfigError(file, KEY, refuse) from None
    if not isinstance(entries, list) or not all(isinstance(e, str) and _plain(e) for e in entries):
        raise ConfigError(file, KEY, refuse)
    return set(entries)


def _plain(rel: str) -> bool:
    parts = rel.split("/")
    return bool(rel) and not rel.startswith("/") and all(p not in ("", ".", "..") for p in parts)


def _walk(root: Path) -> list[str]:
    """Every file and folder under root, as sorted relative posix paths (symlinks are not followed)."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel = Path(dirpath).relative_to(root)
        out += [(rel / n).as_posix() for n in dirnames + filenames]
    return sorted(out)


def _write_manifest(folder: Path, entries: list[str], pid: int | None) -> None:
    data = {"qpass_version": __version__, "entries": sorted(set(entries) | {MANIFEST})}
    if pid is not None:
        data["staging_pid"] = pid
    (folder / MANIFEST).write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")


def _make_parents(folder: Path, file: str) -> list[Path]:
    """Create folder and its missing parents; return the ones created (deepest first) so a failure can undo."""
    missing = []
    for p in [folder, *folder.parents]:
        if p.exists():
            break
        missing.append(p)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        _remove_empty(missing)
        raise ConfigError(file, KEY, f"cannot create {folder}: {exc.strerror or exc}") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ConfigError(file, KEY, f"cannot write in {folder}: permission denied")
    return missing


def _remove_empty(folders: list[Path]) -> None:
    for p in folders:  # deepest first
        try:
            p.rmdir()
        except OSError:
            break


def clean_stale_staging(out_dir: Path) -> None:
    """Remove the `.NAME.staging-*` folders a killed run of this output left behind.

    Only folders holding a qpass manifest: a staging folder whose run is no longer alive goes whole (qpass
    made it and everything in it); an old output caught mid-swap loses only what its manifest lists.
    """
    for stale in sorted(out_dir.parent.glob(f".{out_dir.name}.staging-*")):
        try:
            data = json.loads((stale / MANIFEST).read_text(encoding="utf-8"))
            listed = set(data["entries"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
        pid = data.get("staging_pid")
        if isinstance(pid, int):
            if pid != os.getpid() and _alive(pid):
                continue
            log.info("removing %s, left by an interrupted run", stale)
            shutil.rmtree(stale, ignore_errors=True)
        else:
            log.info("removing the old output %s, left by an interrupted run", stale)
            _remove_entries(stale, [p for p in _walk(stale) if p in listed or p.split("/")[0] in qpass_owned_names()])


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def _remove_entries(root: Path, entries: list[str]) -> None:
    """Remove the listed files and folders under root (deepest first; a folder only once empty), then root."""
    for rel in sorted(entries, key=lambda e: (-e.count("/"), e)):
        p = root / rel
        try:
            if p.is_dir() and not p.is_symlink():
                p.rmdir()
            else:
                p.unlink()
        except FileNotFoundError:
            continue
        except OSError as exc:
            log.warning("left %s in place: %s", p, exc.strerror or exc)
    try:
        root.rmdir()
    except OSError as exc:
        log.warning("left %s in place: %s", root, exc.strerror or exc)


def _replace_dir(new: Path, target: Path, owned: list[str], file: str) -> None:
    """Swap the finished staging folder in; the old output keeps only what its manifest listed, then goes."""
    old = None
    try:
        if target.exists():
            old = target.with_name(f"{new.name}.old")
            target.rename(old)
        new.rename(target)
    except OSError as exc:
        if old is not None and not target.exists():
            old.rename(target)
        raise ConfigError(file, KEY, f"cannot replace {target}: {exc.strerror or exc}") from None
    if old is not None:
        _remove_entries(old, owned)
