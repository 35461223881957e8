"""Starting models dropped on the page: kept in PROJECT/.retreino/models/<name>/, checked before they are offered.

A model from someone else is untrusted input. The files are written to a hidden staging folder
and opened by `retreino inspect` in a child process: the same `load_model` that `retreino train`
will use, with every check of retreino.safety (no Lambda or other code layers, no file arguments,
no HDF5 external links, finite weights). Only a model that opens is moved to its folder and listed;
a refused one is deleted and its reason is one line. The child keeps TensorFlow out of the studio
and a hostile file's parse out of the server process.

The folder is under the hidden `.retreino/` because the data layer skips hidden folders: a visible
`models/` would be read as a class.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from ..atomic import read_json, write_json
from ..errors import RetreinoError
from .project import ProjectError, check_name

KERAS_SUFFIXES = (".h5", ".hdf5", ".keras")
# What a Teachable Machine download holds: a Keras file and labels.txt, or TF.js' model.json, weight shards, metadata.json.
ALLOWED_SUFFIXES = (*KERAS_SUFFIXES, ".json", ".bin", ".txt")
RECORD = "studio.json"  # what inspect said about the model, written once it opened
INSPECT_TIMEOUT_S = float(os.environ.get("RETREINO_STUDIO_INSPECT_TIMEOUT_S", "300"))


def main_file(names: list[str]) -> str:
    """The model file among the uploaded names (a Keras file or a TF.js model.json), or a ProjectError why not."""
    for n in names:
        if Path(n).suffix.lower() not in ALLOWED_SUFFIXES:
            raise ProjectError(f"{n}: not a model file (expected .h5, .keras, or TF.js model.json with its .bin weights "
                               "and metadata.json)", 415, "not_a_model")
    keras_files = [n for n in names if Path(n).suffix.lower() in KERAS_SUFFIXES]
    tfjs = [n for n in names if Path(n).suffix.lower() == ".json" and n != "metadata.json"]
    found = keras_files + tfjs
    if not found:
        raise ProjectError("no model file: drop a .h5 or .keras file, or a TF.js model.json with its weights", 415,
                           "not_a_model")
    if len(found) > 1:
        raise ProjectError(f"one model at a time: {', '.join(found)}", 400, "bad_request")
    if keras_files and any(Path(n).suffix.lower() == ".bin" for n in names):
        raise ProjectError(f"{found[0]} carries its own weights: .bin files go with a TF.js model.json")
    return found[0]


def model_name(main: str, files: dict[str, bytes], wanted: str | None) -> str:
    """The folder name: the one asked for, else TF.js metadata's modelName, else the file's stem."""
    if wanted:
        return check_name(wanted, "model name")
    if main.endswith(".json") and "metadata.json" in files:
        try:
            meta = json.loads(files["metadata.json"])
            name = meta.get("modelName") if isinstance(meta, dict) else None
            if isinstance(name, str) and name.strip():
                return check_name(re.sub(r"[^\w.-]+", "-", name.strip()).lstrip(".")[:60] or "tfjs-model", "model name")
        except ValueError:
            pass
        return "tfjs-model"
    return check_name(Path(main).stem, "model name")


def add_model(models_dir: Path, files: dict[str, bytes], wanted: str | None = None, python: str | None = None) -> dict:
    """Stage, inspect, then keep the model: its record, or a ProjectError (422, one line) for a refused one."""
    names = [check_name(n, "file name") for n in files]
    main = main_file(names)
    base = model_name(main, files, wanted)
    stage = models_dir / f".upload-{os.getpid()}-{time.monotonic_ns()}"
    stage.mkdir(parents=True)
    try:
        for name, data in files.items():
            (stage / name).write_bytes(data)
        summary = inspect_model(stage / main, python)
        for n in range(1, 1000):
            name = base if n == 1 else f"{base}-{n}"
            if (models_dir / name).exists():
                continue
            record = {"name": name, "file": main, "path": str(models_dir / name / main), "format": summary.get("format"),
                      "format_name": summary.get("format_name"), "classes": summary.get("classes"),
                      "input_shape": summary.get("input_shape"), "params": summary.get("params_total"),
                      "files": sorted(names), "added": time.time()}
            write_json(stage / RECORD, record)
            try:
                os.rename(stage, models_dir / name)  # atomic: a listed model is always whole
            except OSError:  # another upload took the name in between
                continue
            return record
        raise ProjectError(f"too many models named {base!r}: remove some from {models_dir}", 409, "name_taken")
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def remove_stale_uploads(models_dir: Path) -> None:
    """Staging folders of a studio that was killed while a model was being opened or removed (its pid is in the name).

    Linux only (/proc tells a live pid from a dead one); elsewhere they stay, never listed."""
    if not Path("/proc/self").exists():
        return
    for folder in [*models_dir.glob(".upload-*"), *models_dir.glob(".remove-*")] if models_dir.is_dir() else []:
        pid = folder.name.split("-")[1]
        if pid.isdigit() and int(pid) != os.getpid() and not Path(f"/proc/{pid}").exists():
            shutil.rmtree(folder, ignore_errors=True)


def inspect_model(path: Path, python: str | None = None) -> dict:
    """`retreino inspect PATH --json` in a child: the summary, or its one-line refusal as a ProjectError."""
    env = {**os.environ, "RETREINO_QUIET": "1", "PYTHONUNBUFFERED": "1"}
    try:
        r = subprocess.run([python or sys.executable, "-m", "retreino", "inspect", str(path), "--json"],
                           capture_output=True, text=True, timeout=INSPECT_TIMEOUT_S, env=env, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise ProjectError(f"{path.name}: opening the model took over {INSPECT_TIMEOUT_S:g} s", 422, "bad_model") from None
    if r.returncode != 0:
        raise ProjectError(refusal(r.stderr, path), 422, "bad_model")
    try:
        return json.loads(r.stdout)
    except ValueError:
        raise ProjectError(f"{path.name}: inspecting the model printed no summary", 422, "bad_model") from None


def refusal(stderr: str, path: Path) -> str:
    """The child's error line, with the staging folder (a name the user never chose) taken out."""
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    line = next((ln for ln in reversed(lines) if "error:" in ln), lines[-1] if lines else "the model did not open")
    line = re.sub(r"^retreino inspect: error: ", "", line.strip())
    line = line.replace(f"{path.parent}{os.sep}", "").replace(str(path.parent), path.name)
    return line if path.name in line else f"{path.name}: {line}"


def remove_model(models_dir: Path, name: str) -> Path:
    """Delete one dropped model's folder: a model listed under `models_dir`, nothing else (404 for any other name).

    Backbone names and the studio's --model are not dropped models: they are never under `models_dir`.
    The folder is first renamed to a hidden one (atomic), so a half-deleted model is never listed."""
    name = check_name(name, "model name")
    folder = models_dir / name
    if not any(Path(m["path"]).parent == folder for m in list_models(models_dir)):
        raise ProjectError(f"no dropped model {name!r}: only models dropped on the page can be removed", 404, "no_such_model")
    doomed = models_dir / f".remove-{os.getpid()}-{time.monotonic_ns()}"
    os.rename(folder, doomed)
    shutil.rmtree(doomed, ignore_errors=True)
    return folder


def list_models(models_dir: Path) -> list[dict]:
    """The models kept so far, newest first (staging folders and folders without a record are not models)."""
    out = []
    for folder in models_dir.iterdir() if models_dir.is_dir() else []:
        if folder.is_dir() and not folder.name.startswith("."):
            try:
                record = read_json(folder / RECORD, default=None)
            except RetreinoError:  # a record cut short by a crash: that folder is not offered
                continue
            if isinstance(record, dict) and (folder / str(record.get("file", ""))).is_file():
                out.append({**record, "path": str(folder / record["file"])})
    return sorted(out, key=lambda r: r.get("added") or 0, reverse=True)
