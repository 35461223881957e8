"""Inference runtimes behind one call: Keras, ONNX Runtime, LiteRT (TFLite) and TF SavedModel.

A runtime maps a batch already scaled to the model's input range to the model's raw outputs;
scaling and head normalisation stay in `inference.Predictor`, so every runtime sees exactly
the same numbers. ONNX Runtime and LiteRT (`ai_edge_litert`) run without TensorFlow or Keras:
an ONNX or TFLite export opens in well under a second. Only the Keras and SavedModel runtimes
import TensorFlow, and only when one is opened.
"""
from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np

from .. import safety
from .._env import quiet_native  # noqa: F401  (the one stderr silencer; export imports it from here)
from ..errors import RetreinoError
from ..models.info import ModelInfo
from .exports import ExportRecord, read_export


class Runtime:
    """One way to run a model: `runtime(x)` with x scaled float32 (N, H, W, 3) -> raw outputs."""

    name = "?"

    def __init__(self, info: ModelInfo, path: Path | None = None):
        self.info = info
        self.path = path

    def __call__(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    @property
    def output_units(self) -> int:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} {self.path or self.info.source}>"


class KerasRuntime(Runtime):
    name = "keras"

    def __init__(self, model, info: ModelInfo, path: Path | None = None):
        super().__init__(info, path)
        self.model = model
        self._fn = None

    def __call__(self, x):
        if self._fn is None:
            # A traced call skips Keras' per-call Python overhead, which dominates at batch 1.
            import tensorflow as tf

            model = self.model
            self._fn = tf.function(lambda t: model(t, training=False), reduce_retracing=True)
        return np.asarray(self._fn(np.asarray(x, np.float32)))

    @property
    def output_units(self) -> int:
        return int(self.model.output_shape[-1])


class OnnxRuntime(Runtime):
    name = "onnx"

    def __init__(self, path: Path, info: ModelInfo):
        super().__init__(info, path)
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise RetreinoError("the onnx runtime needs onnxruntime: pip install 'retreino[fast]'") from exc
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        self._units = self.session.get_outputs()[0].shape[-1]

    def __call__(self, x):
        return self.session.run(None, {self.input_name: np.asarray(x, np.float32)})[0]

    @property
    def output_units(self) -> int:
        return int(self._units)


class TFLiteRuntime(Runtime):
    """LiteRT interpreter; resizes the batch dimension on demand, (de)quantizes int8 I/O if any."""

    name = "tflite"

    def __init__(self, path: Path, info: ModelInfo, name: str = "tflite"):
        super().__init__(info, path)
        self.name = name
        try:  # LiteRT, not tf.lite: a TFLite export must run without importing TensorFlow
            from ai_edge_litert.interpreter import Interpreter
        except ImportError as exc:
            raise RetreinoError("the tflite runtime needs LiteRT (ai-edge-litert): "
                                "pip install 'retreino[fast]'") from exc
        with quiet_native():  # "INFO: Created TensorFlow Lite XNNPACK delegate" on every load
            self.interpreter = Interpreter(model_path=str(path), num_threads=os.cpu_count() or 1)
            self.interpreter.allocate_tensors()
        self._input = self.interpreter.get_input_details()[0]
        self._output = self.interpreter.get_output_details()[0]
        self._batch = int(self._input["shape"][0])
        # One interpreter owns its tensors: concurrent calls (serve's worker threads) must queue.
        self._lock = threading.Lock()

    def __call__(self, x):
        with self._lock:
            return self._run(np.asarray(x, np.float32))

    def _run(self, x):
        if x.shape[0] != self._batch:
            self.interpreter.resize_tensor_input(self._input["index"], list(x.shape))
            self.interpreter.allocate_tensors()
            self._input = self.interpreter.get_input_details()[0]
            self._output = self.interpreter.get_output_details()[0]
            self._batch = x.shape[0]
        self.interpreter.set_tensor(self._input["index"], _quantize(x, self._input))
        self.interpreter.invoke()
        return _dequantize(self.interpreter.get_tensor(self._output["index"]), self._output)

    @property
    def output_units(self) -> int:
        return int(self._output["shape"][-1])


def _quantize(x: np.ndarray, detail: dict) -> np.ndarray:
    dtype = detail["dtype"]
    if dtype == np.float32:
        return x
    scale, zero = detail["quantization"]
    info = np.iinfo(dtype)
    return np.clip(np.round(x / scale + zero), info.min, info.max).astype(dtype)


def _dequantize(y: np.ndarray, detail: dict) -> np.ndarray:
    if detail["dtype"] == np.float32:
        return np.array(y)
    scale, zero = detail["quantization"]
    return (y.astype(np.float32) - zero) * scale


class SavedModelRuntime(Runtime):
    name = "savedmodel"

    def __init__(self, path: Path, info: ModelInfo):
        super().__init__(info, path)
        from .. import _env

        tf = _env.import_tensorflow()
        self._loaded = tf.saved_model.load(str(path))
        self._fn = self._loaded.signatures["serving_default"]
        self._in = list(self._fn.structured_input_signature[1])[0]
        self._out = list(self._fn.structured_outputs)[0]
        self._units = int(self._fn.structured_outputs[self._out].shape[-1])

    def __call__(self, x):
        return self._fn(**{self._in: np.asarray(x, np.float32)})[self._out].numpy()

    @property
    def output_units(self) -> int:
        return self._units


def load_runtime(path: str | os.PathLike, *, unsafe: bool = False) -> Runtime:
    """Open an exported model (folder or file) for inference, metadata restored from the export."""
    record = read_export(path)
    return open_record(record, unsafe=unsafe)


def open_record(record: ExportRecord, *, unsafe: bool = False) -> Runtime:
    safety.check_export(record, unsafe=unsafe)
    kind = record.runtime
    if kind == "onnx":
        return OnnxRuntime(record.file, record.info)
    if kind in ("tflite", "tflite-int8"):
        return TFLiteRuntime(record.file, record.info, name=kind)
    if kind == "savedmodel":
        return SavedModelRuntime(record.folder, record.info)
    from ..models import load_model

    loaded = load_model(record.file, unsafe=unsafe)
    return KerasRuntime(loaded.model, record.info, record.file)
