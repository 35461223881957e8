"""Helpers of the TF.js tests: the npm packages `make js` installs, and Node runs of @tensorflow/tfjs."""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT, SHARED, real_images

NODE_MODULES = Path(os.environ.get("RETREINO_NODE_MODULES", ROOT / ".cache" / "npm" / "node_modules"))
TFJS_PREDICT = ROOT / "tests" / "js" / "tfjs_predict.js"
TM_TFJS = SHARED / "models" / "teachable_machine_tfjs"
TFJS_EXPORTS = {"leaves": TM_TFJS / "leaves", "masks": TM_TFJS / "masks"}


def node_modules() -> Path:
    """The installed npm packages; the TF.js tests need them (make test installs them: `make js`)."""
    for pkg in ("@tensorflow/tfjs", "@teachablemachine/image"):
        if not (NODE_MODULES / pkg / "package.json").is_file():
            pytest.fail(f"npm package {pkg} is not installed in {NODE_MODULES}: run `make js` (make test does)")
    return NODE_MODULES


def parity_photos(n: int = 32) -> list[Path]:
    """n/2 cat and n/2 dog test photos."""
    return real_images("test", "cats", n // 2) + real_images("test", "dogs", n // 2)


def tm_pixels(paths, size=(224, 224)) -> np.ndarray:
    """uint8 (N, 224, 224, 3): each photo center-cropped and resized, as Teachable Machine's page does."""
    from retreino.data.images import read_image

    return np.stack([read_image(p, size, "crop") for p in paths]).astype(np.uint8)


def node_env() -> dict:
    return {**os.environ, "NODE_PATH": str(node_modules())}


def tfjs_predict(model_json: Path, x: np.ndarray, tmp: Path) -> np.ndarray:
    """Probabilities of the model run by @tensorflow/tfjs (npm, CPU backend) in Node on exactly `x`."""
    pixels, out = tmp / "pixels.bin", tmp / "tfjs_out.json"
    np.asarray(x, "<f4").tofile(pixels)
    proc = subprocess.run(
        ["node", str(TFJS_PREDICT), str(model_json), str(pixels), str(len(x)), str(out)],
        env=node_env(), capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return np.asarray(json.loads(out.read_text())["probabilities"], np.float32)


def tfjs_decode(model_json: Path, tmp: Path) -> dict[str, np.ndarray]:
    """Every weight of model.json as tfjs-core's io.decodeWeights gives it."""
    out = tmp / "decoded.json"
    proc = subprocess.run(
        ["node", str(TFJS_PREDICT), "--decode", str(model_json), str(out)],
        env=node_env(), capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return {k: np.asarray(v, np.float32) for k, v in json.loads(out.read_text()).items()}
