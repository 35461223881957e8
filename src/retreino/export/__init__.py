"""Export a model to other formats, each checked against the Keras model before it is trusted.

Every export is a folder holding the model file, `labels.txt` (Teachable Machine style) and
`retreino.json` (ModelInfo + an `export` record), plus the format's own metadata where it has
any (ONNX `metadata_props`, a zip of both files appended to a `.tflite` as TFLite Support does,
an HDF5 attribute). After writing, the export is run on real images (or, lacking any, smooth
synthetic ones) next to the Keras model and the agreement is recorded: the max absolute
difference of probabilities for float formats, the top-1 agreement for int8. `runtime="auto"`
only ever picks an export that passed.

The package is a face; the work lives in its modules:

- `run`: `export_models` / `export_model`, one format at a time through a scratch folder;
- `formats`: the `FORMATS` table and the writer of each format;
- `parity`: the check against Keras (tolerances, probabilities side by side) and latency;
- `images`: the parity and calibration images (real photos or smooth synthetic ones);
- `tm_contract`: the Teachable Machine contract the `tm` and `tfjs` formats are checked against;
- `keras2_h5`, `tfjs`, `tfjs_page`: the hand-written Keras 2 H5 and TF.js layouts.
"""
from __future__ import annotations

from .. import _env

_env.import_tensorflow()
from .formats import FORMATS  # noqa: E402
from .keras2_h5 import ExportError  # noqa: E402
from .run import ExportResult, export_model, export_models  # noqa: E402
from .tm_contract import check_tm_contract  # noqa: E402

__all__ = ["FORMATS", "ExportError", "ExportResult", "export_model", "export_models", "check_tm_contract"]

# Also importable from here, as before the split (tests and bench use some of them).
from .formats import _WRITERS as _WRITERS  # noqa: E402
from .formats import FEATURE_OUTPUT_FORMATS as FEATURE_OUTPUT_FORMATS  # noqa: E402
from .formats import _Workspace as _Workspace  # noqa: E402
from .images import _image_list as _image_list  # noqa: E402
from .images import _load_pixels as _load_pixels  # noqa: E402
from .images import _split_images as _split_images  # noqa: E402
from .images import _synthetic as _synthetic  # noqa: E402
from .parity import CALIBRATION_IMAGES as CALIBRATION_IMAGES  # noqa: E402
from .parity import FLOAT_TOLERANCE as FLOAT_TOLERANCE  # noqa: E402
from .parity import INT8_MIN_AGREEMENT as INT8_MIN_AGREEMENT  # noqa: E402
from .parity import PARITY_IMAGES as PARITY_IMAGES  # noqa: E402
from .parity import _latency_ms as _latency_ms  # noqa: E402
from .parity import _parity as _parity  # noqa: E402
from .parity import _probs as _probs  # noqa: E402
from .parity import median_latency_ms as median_latency_ms  # noqa: E402
from .run import _export_one as _export_one  # noqa: E402
