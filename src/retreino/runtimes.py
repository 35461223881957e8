"""Compatibility name: the runtimes and export records now live in `retreino.inference`.

`retreino.runtimes.load_runtime`, `best_export`, `KerasRuntime`, ... keep working from here.
"""
from .inference.exports import *  # noqa: F401,F403
from .inference.exports import (  # noqa: F401  (private helpers some callers reach for)
    _format_of,
    _read_json,
    embedded_metadata,
    export_for,
    exports_folder,
    find_exports,
    model_fingerprint,
)
from .inference.runtimes import *  # noqa: F401,F403
from .inference.runtimes import (  # noqa: F401
    KerasRuntime,
    OnnxRuntime,
    Runtime,
    SavedModelRuntime,
    TFLiteRuntime,
    _dequantize,
    _quantize,
    load_runtime,
    open_record,
    quiet_native,
)
