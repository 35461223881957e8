"""What retreino refuses to open, and why: the checks between a hostile file and the machine.

The files this tool opens (a model folder, its exports, a dataset, an upload) are usually
written by someone else: a model downloaded from a repository, a dataset from a colleague.
Every check here answers one question before the file is used: can opening it run code, read
another local file, or take the machine down? A refusal raises a `RetreinoError` subclass whose
one-line message names the file and the reason. See docs/security.md for the threat model.

- Exports: `runtime="auto"` only ever chooses formats that cannot do file or system
  operations: ONNX with default-domain operators only and no external data, TFLite with builtin
  operators only. Both are verified from the file itself when opened; an export's own
  `retreino.json` record is evidence about speed, never about safety. A TensorFlow SavedModel is
  a program (`tf.io.read_file`, `tf.io.write_file` ...): opened only when named and `unsafe`.
- HDF5 files: external storage, external links and virtual datasets read other files; refused
  anywhere in the file before a weight is read.
- Layer configs: an argument naming a file (a `StringLookup` vocabulary path ...) is refused.
- Data: a labels CSV row outside the data folder, or a symlink resolving outside it, is refused.
"""
from __future__ import annotations

import os
from pathlib import Path

from .errors import DataError, ModelLoadError, UnsafeModelError

# Export formats `runtime="auto"` may choose: their files are data for a fixed interpreter.
AUTO_FORMATS = ("onnx", "tflite", "tflite-int8")
# Formats that are programs (TensorFlow graphs with file and system operations).
PROGRAM_FORMATS = ("savedmodel",)
ONNX_DEFAULT_DOMAINS = ("", "ai.onnx")

# --------------------------------------------------------------------------- exports


def may_choose_automatically(record) -> bool:
    """True when `runtime="auto"` may pick this export at all (its file is still checked when opened)."""
    return record.format in AUTO_FORMATS


def check_export(record, *, unsafe: bool = False) -> None:
    """Refuse an export that could run file or system operations; called before any runtime opens it."""
    folder = Path(record.folder)
    file = Path(record.file)
    if not _inside(file, folder):
        raise UnsafeModelError(f"{folder / 'retreino.json'}: its model file {file} lies outside the export folder")
    if record.format in PROGRAM_FORMATS:
        if not unsafe:
            raise UnsafeModelError(
                f"{folder}: a TensorFlow SavedModel is a program that can read and write any file; it is opened "
                "only when named (--runtime savedmodel) with --unsafe, for a folder you trust"
            )
        return
    if record.format == "onnx":
        check_onnx(file)
    elif record.format in ("tflite", "tflite-int8"):
        check_tflite(file)


def check_onnx(path: str | os.PathLike) -> None:
    """Every operator in the default ONNX domain and every tensor stored inside the file."""
    import onnx

    path = Path(path)
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        raise ModelLoadError(f"{path} is not a readable ONNX model ({type(exc).__name__})") from exc
    if model.functions:
        f = model.functions[0]
        raise UnsafeModelError(f"{path}: refused: it defines its own function {f.domain}:{f.name}")
    for node in _onnx_nodes(model.graph):
        if node.domain not in ONNX_DEFAULT_DOMAINS:
            raise UnsafeModelError(
                f"{path}: refused: operator {node.domain}:{node.op_type} ('{node.name}') is outside the default "
                "ONNX domain (custom operators may run any code)"
            )
    for tensor in _onnx_tensors(model.graph):
        if tensor.data_location == onnx.TensorProto.EXTERNAL or len(tensor.external_data):
            where = {e.key: e.value for e in tensor.external_data}.get("location", "?")
            raise UnsafeModelError(
                f"{path}: refused: tensor '{tensor.name}' reads its data from another file ({where})")


def _onnx_graphs(graph):
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("g"):
                yield from _onnx_graphs(attr.g)
            for g in attr.graphs:
                yield from _onnx_graphs(g)


def _onnx_nodes(graph):
    for g in _onnx_graphs(graph):
        yield from g.node


def _onnx_tensors(graph):
    for g in _onnx_graphs(graph):
        yield from g.initializer
        for sparse in g.sparse_initializer:
            yield sparse.values
            yield sparse.indices
        for node in g.node:
            for attr in node.attribute:
                if attr.HasField("t"):
                    yield attr.t
                yield from attr.tensors


def check_tflite(path: str | os.PathLike) -> None:
    """Every operator code of the flatbuffer a TFLite builtin (custom and Flex ops are refused)."""
    from ai_edge_litert import schema_py_generated as schema

    path = Path(path)
    data = path.read_bytes()
    if data[4:8] != b"TFL3":
        raise ModelLoadError(f"{path} is not a TFLite model (no TFL3 identifier)")
    try:
        model = schema.Model.GetRootAs(data, 0)
        codes = [model.OperatorCodes(i) for i in range(model.OperatorCodesLength())]
        ops = [(max(c.BuiltinCode(), c.DeprecatedBuiltinCode()), c.CustomCode()) for c in codes]
    except Exception as exc:  # a flatbuffer that points outside itself
        raise ModelLoadError(f"{path} is a corrupt TFLite model ({type(exc).__name__})") from exc
    custom = [c.decode("utf-8", "replace") if isinstance(c, bytes) else str(c)
              for b, c in ops if b == schema.BuiltinOperator.CUSTOM or c]
    if custom:
        names = ", ".join(f"'{n}'" for n in dict.fromkeys(custom))
        raise UnsafeModelError(
            f"{path}: refused: custom operator(s) {names} are not TFLite builtins (custom and Flex operators "
            "may read or write files)"
        )


# --------------------------------------------------------------------------- HDF5


def check_h5(h5file, path: str | os.PathLike) -> None:
    """Refuse external links, external storage and virtual datasets anywhere in an open HDF5 file."""
    import h5py

    found: list[str] = []
    declared = [0]

    def visit(name, link):
        if found:
            return
        if isinstance(link, h5py.ExternalLink):
            found.append(f"'{name}' is an external link to {link.filename}:{link.path}")
            return
        if isinstance(link, h5py.SoftLink):
            return
        obj = h5file.get(name)
        if isinstance(obj, h5py.Dataset):
            declared[0] += int(obj.size) * obj.dtype.itemsize if obj.shape is not None else 0
            if obj.is_virtual:
                found.append(f"dataset '{name}' is a virtual dataset (its data lives in other files)")
            elif obj.external:
                found.append(f"dataset '{name}' uses external storage ({obj.external[0][0].decode('utf-8', 'replace')})"
                             if isinstance(obj.external[0][0], bytes)
                             else f"dataset '{name}' uses external storage ({obj.external[0][0]})")

    try:
        h5file.visititems_links(visit)
    except Exception as exc:
        raise ModelLoadError(f"{path} is truncated or corrupt: HDF5 cannot list it ({type(exc).__name__})") from exc
    if found:
        raise UnsafeModelError(f"{path}: refused: {found[0]}, which reads another file")
    size = _h5_size(h5file)
    if declared[0] > MAX_H5_EXPANSION * size + (16 << 20):
        raise ModelLoadError(
            f"{path}: refused: its datasets declare {declared[0]:,} bytes of weights in a {size:,}-byte file "
            "(reading them would allocate that much memory)"
        )


# Weights compress little: a file declaring far more bytes than it holds is made to exhaust memory.
MAX_H5_EXPANSION = 16


def _h5_size(h5file) -> int:
    try:
        return int(h5file.id.get_filesize())
    except Exception:  # a file-like object without a size: be lenient, the other checks still hold
        return 1 << 40


def check_finite_weights(model, path) -> None:
    """Refuse NaN or infinite weights: every prediction would be `nan`, shown as `nan%`."""
    import numpy as np

    for var in model.weights:
        value = np.asarray(var.numpy() if hasattr(var, "numpy") else var)
        if value.dtype.kind == "f" and not np.isfinite(value).all():
            bad = int((~np.isfinite(value)).sum())
            name = getattr(var, "path", None) or var.name
            raise ModelLoadError(f"{path}: {bad:,} weight value(s) of '{name}' "
                                 "are NaN or infinite: the model is broken (re-train or re-export it)")


def check_finite_outputs(probs, where: str = "the model") -> None:
    """Refuse NaN/inf probabilities instead of printing `nan%`."""
    import numpy as np

    if not np.isfinite(probs).all():
        from .errors import RetreinoError

        raise RetreinoError(f"{where} gives NaN or infinite outputs for this input: its weights or export are broken")


def check_metadata(meta, where) -> dict:
    """A `retreino.json` (beside or inside a model file) must be an object with the right field types."""
    if not isinstance(meta, dict):
        raise ModelLoadError(f"{where}: retreino metadata is a JSON {type(meta).__name__}, not an object")
    expect = {"format": str, "source": str, "preprocessing": str, "head": str, "backbone": (str, type(None)),
              "keras_version": (str, type(None)), "export": dict, "notes": list}
    for key, kinds in expect.items():
        if key in meta and not isinstance(meta[key], kinds):
            raise ModelLoadError(
                f"{where}: retreino metadata field {key!r} has the wrong type ({type(meta[key]).__name__})")
    size = meta.get("input_size", [224, 224])
    if not (isinstance(size, (list, tuple)) and len(size) == 2
            and all(isinstance(s, int) and not isinstance(s, bool) and 0 < s <= 8192 for s in size)):
        raise ModelLoadError(f"{where}: retreino metadata input_size must be two sizes in pixels, not {str(size)[:40]}")
    names = meta.get("class_names")
    if names is not None and not (isinstance(names, list) and all(isinstance(n, str) for n in names)):
        raise ModelLoadError(f"{where}: retreino metadata class_names must be a list of names")
    return meta


def check_h5_bytes(data: bytes, path: str) -> None:
    """`check_h5` on an HDF5 file held in memory (the weights inside a .keras archive)."""
    import io

    import h5py

    try:
        with h5py.File(io.BytesIO(data), "r") as f:
            check_h5(f, path)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"{path} is truncated or corrupt: HDF5 cannot read it") from exc


# --------------------------------------------------------------------------- layer configs

# Layer arguments that name a file Keras would read when the layer is built.
FILE_ARGUMENTS = {
    "StringLookup": ("vocabulary",),
    "IntegerLookup": ("vocabulary",),
    "TextVectorization": ("vocabulary", "stop_words"),
}
_NAME_KEYS = {"name", "class_name", "module", "registered_name", "dtype"}


def file_arguments(config) -> list[str]:
    """Layer arguments in a (nested) Keras config that name a file: what `refuse_file_arguments` refuses."""
    found: list[str] = []

    def walk(c, layer: str):
        if isinstance(c, dict):
            cls = c.get("class_name")
            cfg = c.get("config")
            if isinstance(cls, str) and isinstance(cfg, dict):
                layer = f"{cls} '{cfg.get('name', '?')}'"
                for key in FILE_ARGUMENTS.get(cls, ()):
                    if isinstance(cfg.get(key), str):
                        found.append(f"{layer} argument {key}={cfg[key]!r}")
            for k, v in c.items():
                if isinstance(v, str) and k not in _NAME_KEYS and _names_a_file(v):
                    found.append(f"{layer} argument {k}={v!r}")
                else:
                    walk(v, layer)
        elif isinstance(c, list):
            for v in c:
                walk(v, layer)

    walk(config, "the model")
    return list(dict.fromkeys(found))


def _names_a_file(value: str) -> bool:
    if len(value) > 4096 or "\x00" in value:
        return False
    if value.startswith(("/", "~", "\\")) or (len(value) > 2 and value[1:3] in (":\\", ":/")):
        return True
    parts = value.replace("\\", "/").split("/")
    return ".." in parts or ("/" in value and os.path.exists(value))


def refuse_file_arguments(config, path) -> None:
    found = file_arguments(config)
    if found:
        raise UnsafeModelError(f"{Path(path).name}: refused: {found[0]} names a file, which loading would read")


# Layers whose config holds Python code (marshalled bytecode or a TF op name run as code).
CODE_LAYERS = frozenset({"Lambda", "TFOpLambda", "SlicingOpLambda"})


def config_nodes(config):
    """Every dict in a nested Keras config (model, layers, nested models, their configs), parents first.

    The one walker of the code checks (`keras3_code` here, `models.legacy_h5.find_code_layers`
    for Keras 2 files): without a stack of its own, a deeply nested hostile config could
    exhaust Python's recursion limit.
    """
    stack = [config]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            yield node
            stack.extend(reversed(list(node.values())))
        elif isinstance(node, list):
            stack.extend(reversed(node))


def keras3_code(config) -> list[str]:
    """What in a Keras 3 config would run code: Lambda layers, lambdas, objects from outside Keras."""
    found: list[str] = []
    for c in config_nodes(config):
        cls, module = c.get("class_name"), c.get("module")
        cfg = c.get("config") if isinstance(c.get("config"), dict) else {}
        if cls in CODE_LAYERS:
            found.append(f"a {cls} layer '{cfg.get('name', '?')}'")
        elif cls == "__lambda__":
            found.append("a Python lambda")
        elif isinstance(cls, str) and isinstance(module, str) and module and module != "builtins" \
                and not (module == "keras" or module.startswith("keras.")):
            found.append(f"{cls} from module {module!r} (code outside Keras)")
    return found


# --------------------------------------------------------------------------- archives

MAX_ARCHIVE_BYTES = 4 << 30  # declared uncompressed size of a whole .keras archive
MAX_RATIO = 200  # declared uncompressed / compressed size of one member


def check_zip(zf, path) -> None:
    """Refuse a zip bomb on the sizes its directory declares, without decompressing anything."""
    total = 0
    for member in zf.infolist():
        total += member.file_size
        if member.file_size > (1 << 20) and member.file_size > MAX_RATIO * max(member.compress_size, 1):
            raise ModelLoadError(
                f"{path}: refused: member {member.filename} declares {member.file_size:,} bytes from "
                f"{member.compress_size:,} compressed (a zip bomb?)"
            )
    if total > MAX_ARCHIVE_BYTES:
        raise ModelLoadError(
            f"{path}: refused: its members declare {total:,} bytes uncompressed (over {MAX_ARCHIVE_BYTES:,})")


# --------------------------------------------------------------------------- data folders


def _inside(path: str | os.PathLike, folder: str | os.PathLike) -> bool:
    real, base = os.path.realpath(path), os.path.realpath(folder)
    return real == base or real.startswith(base.rstrip(os.sep) + os.sep)


def csv_escape(name: str) -> str | None:
    """Why a labels-CSV file name points outside the data folder, or None when it stays inside."""
    p = name.replace("\\", "/")
    if p.startswith(("/", "~")) or (len(p) > 1 and p[1] == ":"):
        return "an absolute path"
    if ".." in p.split("/"):
        return "a '..' path"
    return None


def outside_problem(path, roots, follow_links: bool):
    """A Problem when `path` (a file of the dataset) resolves outside every data root, else None."""
    from .data.scan import Problem

    if any(_inside(path, r) for r in roots):
        return None
    if follow_links and os.path.islink(path) or follow_links and _has_linked_parent(path, roots):
        return None
    return Problem("outside_data", str(path),
                   f"resolves outside the data folder (to {os.path.realpath(path)}); not used "
                   "(--follow-links allows symlinks)")


def _has_linked_parent(path, roots) -> bool:
    p = Path(path)
    return any(os.path.islink(q) for q in [p, *p.parents])


def keep_inside(parts: dict, roots, follow_links: bool, problems: list) -> None:
    """Drop, in place, every file of `parts` ({split: {class: [paths]}}) outside the data roots."""
    for split in parts.values():
        for cls, files in split.items():
            kept = []
            for f in files:
                problem = outside_problem(f, roots, follow_links)
                if problem is None:
                    kept.append(f)
                else:
                    problems.append(problem)
            split[cls] = kept


def walk_files(folder, follow_links: bool = True, max_depth: int = 64, skipped: list | None = None):
    """(dirpath, filenames) below `folder`, sorted, hidden folders skipped, symlink loops broken.

    A folder reached twice (a symlink loop) is walked once; deeper than `max_depth` levels is not
    walked (a 10,000-level folder costs nothing). Only regular files are yielded: FIFOs, sockets and
    devices are never opened; their paths are appended to `skipped` when given.
    """
    seen = set()
    stack = [(os.fspath(folder), 0)]
    while stack:
        top, depth = stack.pop()
        try:
            st = os.stat(top)
        except OSError:
            continue
        if (st.st_dev, st.st_ino) in seen:
            continue
        seen.add((st.st_dev, st.st_ino))
        try:
            entries = sorted(os.scandir(top), key=lambda e: e.name)
        except OSError:
            continue
        files, subdirs = [], []
        for e in entries:
            if e.name.startswith("."):
                continue
            try:
                if e.is_dir(follow_symlinks=follow_links):
                    subdirs.append(e.path)
                elif e.is_file(follow_symlinks=True):
                    files.append(e.name)
                elif skipped is not None and os.path.exists(e.path):
                    skipped.append(e.path)
            except OSError:
                continue
        yield top, files
        if depth < max_depth:
            stack.extend((d, depth + 1) for d in reversed(subdirs))


# No real photo is this large; a sparse 64 GiB ".jpg" costs nothing on disk and everything in memory.
MAX_IMAGE_BYTES = int(float(os.environ.get("RETREINO_MAX_IMAGE_MB", "256")) * (1 << 20))


def image_file_problem(path) -> tuple[str, str] | None:
    """(kind, message) when `path` must not be read as an image, checked by stat before opening."""
    import stat

    try:
        st = os.stat(path)
    except OSError:
        return None  # the reader reports missing or unreadable files itself
    if not stat.S_ISREG(st.st_mode):
        return "unreadable", "not a regular file (a FIFO, socket or device); never opened"
    if st.st_size > MAX_IMAGE_BYTES:
        return "too_large", (f"{st.st_size:,} bytes, over the {MAX_IMAGE_BYTES:,}-byte limit for one image "
                             "(RETREINO_MAX_IMAGE_MB); not read")
    return None


def check_image_file(path) -> None:
    problem = image_file_problem(path)
    if problem:
        raise DataError(f"{path}: {problem[1]}")


# --------------------------------------------------------------------------- temporary files


def hold(fh) -> None:
    """Mark an open temporary file as being written by a live process (see `remove_dead_temps`)."""
    import fcntl

    fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)


def remove_dead_temps(target) -> list[Path]:
    """Remove the hidden temporary files a killed writer of `target` left (`.name.XXXX.csv`).

    A live writer holds an flock on its temporary file (`hold`), so only the dead ones go.
    """
    import fcntl

    target = Path(target)
    suffix = "".join(target.suffixes) or ".tmp"
    removed = []
    for f in target.parent.glob(f".{target.name[:len(target.name) - len(suffix)]}.*{suffix}"):
        try:
            fd = os.open(f, os.O_RDONLY)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            continue  # a live writer's
        finally:
            os.close(fd)
        f.unlink(missing_ok=True)
        removed.append(f)
    return removed
