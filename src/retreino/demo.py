"""`make demo` / `python -m retreino.demo`: the notebook's story end to end.

Train -> evaluate -> predict on cats vs dogs ("Gato" / "Cachorro"). Offline it uses the data and
the Teachable Machine export in ../shared when they exist; elsewhere it downloads the public
`cats_and_dogs_filtered` archive and starts from ImageNet MobileNetV2 weights, through Keras.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ARCHIVE = "https://storage.googleapis.com/mledu-datasets/cats_and_dogs_filtered.zip"
NAMES = "cats=Gato,dogs=Cachorro"


def find_shared() -> Path | None:
    for candidate in (os.environ.get("RETREINO_SHARED"), "../shared", "shared"):
        if candidate and (Path(candidate) / "datasets" / "cats_vs_dogs").is_dir():
            return Path(candidate).resolve()
    return None


def download_data() -> Path:
    from . import _env

    _env.import_tensorflow()
    import keras

    try:
        path = Path(keras.utils.get_file("cats_and_dogs_filtered.zip", ARCHIVE, extract=True))
    except Exception as exc:  # Keras wraps every network failure in a bare Exception
        raise SystemExit(
            f"demo: cannot download {ARCHIVE} ({str(exc).splitlines()[0][-80:]}). Offline, put the shared data "
            "beside this checkout (../shared/datasets/cats_vs_dogs) or set RETREINO_SHARED=/path/to/shared"
        ) from None
    for candidate in (path, path.parent / "cats_and_dogs_filtered", path / "cats_and_dogs_filtered"):
        if (candidate / "train").is_dir():
            return candidate
    raise SystemExit(f"downloaded {ARCHIVE} but found no train/ folder under {path}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=10, help="fine-tuning epochs (the notebook's 10)")
    parser.add_argument("--runs-dir", default="runs")
    args = parser.parse_args(argv)

    from .cli import main as cli

    shared = find_shared()
    if shared is not None:
        data = shared / "datasets" / "cats_vs_dogs"
        model = shared / "models" / "teachable_machine" / "water_bottles"
        print(f"Offline demo: {data} with the Teachable Machine export {model.name} as the starting model")
    else:
        data, model = download_data(), "mobilenet_v2"
        print(f"Demo: {data} with ImageNet MobileNetV2 (downloaded by Keras)")

    # The run gets its default name (runs/cats_vs_dogs-water_bottles), the one the README's commands use.
    code = cli(["train", "--model", str(model), "--data", str(data), "--epochs", str(args.epochs),
                "--runs-dir", args.runs_dir])
    if code:
        return code
    runs = [p for p in Path(args.runs_dir).iterdir() if (p / "config.json").is_file()]
    run = max(runs, key=lambda p: (p / "config.json").stat().st_mtime)
    test_dir = data / "test" if (data / "test").is_dir() else data / "validation"
    cat = sorted((test_dir / "cats").iterdir())[0]
    for step in (
        ["evaluate", "--run", str(run)],
        ["predict", str(run), str(cat), "--names", NAMES],
        ["predict", str(run), str(test_dir), "--out", str(run / "test_predictions.csv"),
         "--grid", str(run / "test_grid.png"), "--names", NAMES],
    ):
        print(f"\n$ retreino {' '.join(step)}")
        code = cli(step)
        if code:
            return code
    print(f"\nDone. Open {run / 'report.html'} in a browser.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
