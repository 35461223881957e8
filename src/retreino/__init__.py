"""retreino: retrain image classifiers on your own pictures.

The public API reads like the notebook's steps. Every name is imported lazily, so
`import retreino` and `retreino --help` answer without loading TensorFlow; the first use of
`train`, `load_model`, ... pays for it once. The command line is a thin layer over these same
functions: `retreino train` calls `retreino.train`, `retreino evaluate` calls `retreino.evaluate`.

The whole story, from a Teachable Machine export to a grid of predictions (MODEL, DATA, IMAGE
and RUNS are paths: a model, a `train/ validation/ test/` image folder, one photo, an output folder):

>>> import retreino
>>> model = retreino.load_model(MODEL)                       # Teachable Machine, .h5, .keras or "mobilenet_v2"
>>> model.class_names, model.input_size
(['5 Galoon', '500ML'], (224, 224))
>>> data = retreino.load_dataset(DATA)                        # look at the data
>>> data.class_names, len(data.train), len(data.validation), len(data.test)
(['cats', 'dogs'], 16, 8, 8)
>>> fig = retreino.show_images(data.train, n=8)              # a grid of labelled thumbnails

Fine-tune the last layers (a new 2-class head starts as a linear probe on the frozen features), then read the learning curves:

>>> run = retreino.train(model=MODEL, data=DATA, epochs=1, warmup_epochs=1, runs_dir=RUNS, name="cats")
... # doctest: +ELLIPSIS, +NORMALIZE_WHITESPACE
Data: ... 2 classes: cats, dogs
...
Next: retreino evaluate --run ...cats
>>> [row["phase"] for row in run.history]
['linear-probe', 'finetune']
>>> best = run.best_model                                      # the checkpoint with the best val_accuracy
>>> best.class_names
['cats', 'dogs']
>>> fig = run.plot_history()                                   # shown inline; saved as learning_curves.png
>>> (run.dir / "learning_curves.png").is_file()
True

Measure on the test split and predict, showing the classes under their Portuguese names:

>>> result = retreino.evaluate(run=run.dir)                  # the best model on the run's own test split
>>> result.metrics["n"], 0.0 <= result.accuracy <= 1.0
(8, True)
>>> print(result.classification_report)  # doctest: +ELLIPSIS, +NORMALIZE_WHITESPACE
precision recall f1-score support
cats ...
dogs ...
>>> fig = result.plot_confusion_matrix()                     # saved as confusion_matrix.png in the run
>>> fig = result.plot_scatter()                              # saved as predictions_scatter.png
>>> gato = retreino.predict(best, IMAGE, names={"cats": "Gato", "dogs": "Cachorro"}, top_k=2)
>>> print("photo:", gato)  # doctest: +ELLIPSIS
photo: ...%
...%
>>> gato.class_name in ("Gato", "Cachorro"), sorted(gato.probabilities)
(True, ['Cachorro', 'Gato'])
>>> rows = retreino.predict_folder(best, DATA / "test", names="cats=Gato,dogs=Cachorro")
>>> len(rows), rows[0]["true"], rows[0]["predicted"] in ("Gato", "Cachorro")
(8, 'Gato', True)
>>> fig = retreino.show_predictions(rows, run.dir / "grid.png")

Keep the model anywhere: `.keras` or `.h5`, its metadata inside and `labels.txt` beside it:

>>> saved = retreino.save_model(best, RUNS / "gato-cachorro.keras")
>>> retreino.load_model(saved).class_names, (RUNS / "labels.txt").read_text().splitlines()
(['cats', 'dogs'], ['0 cats', '1 dogs'])
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Sequence

from . import _env  # noqa: F401  (TensorFlow settings before the first import)
from .errors import RetreinoError

__version__ = "0.1.0"

# name -> (module, attribute). The CLI and this API reach the same objects.
_LAZY = {
    # Models
    "load_model": ("retreino.models", "load_model"),
    "save_model": ("retreino.models", "save_model"),
    "LoadedModel": ("retreino.models", "LoadedModel"),
    "ModelInfo": ("retreino.models", "ModelInfo"),
    # Data
    "load_dataset": ("retreino.data", "load_dataset"),
    "Dataset": ("retreino.data", "Dataset"),
    # Training
    "train": ("retreino.training", "train"),
    "Run": ("retreino.training", "Run"),
    "TrainConfig": ("retreino.config", "TrainConfig"),
    "AugmentConfig": ("retreino.config", "AugmentConfig"),
    "plot_learning_curves": ("retreino.plots", "plot_learning_curves"),
    # Evaluation
    "evaluate": ("retreino.evaluation", "evaluate"),
    "EvaluationResult": ("retreino.evaluation", "EvaluationResult"),
    # Prediction
    "predict": ("retreino.prediction", "predict"),
    "predict_folder": ("retreino.prediction", "predict_folder"),
    "show_predictions": ("retreino.prediction", "show_predictions"),
    "Prediction": ("retreino.prediction", "Prediction"),
    "Predictor": ("retreino.inference", "Predictor"),
    # Why: Grad-CAM (the module is retreino.gradcam, so that `retreino.explain` stays this function)
    "explain": ("retreino.gradcam", "explain"),
    "explanation": ("retreino.gradcam", "explanation"),
    "Explanation": ("retreino.gradcam", "Explanation"),
}

__all__ = ["RetreinoError", "__version__", "show_images", *_LAZY]

if TYPE_CHECKING:  # static checkers and IDEs see the real signatures
    from matplotlib.figure import Figure

    from .config import AugmentConfig, TrainConfig
    from .data import Dataset, load_dataset
    from .evaluation import EvaluationResult, evaluate
    from .gradcam import Explanation, explain, explanation
    from .inference import Predictor
    from .models import LoadedModel, ModelInfo, load_model, save_model
    from .plots import plot_learning_curves
    from .prediction import Prediction, predict, predict_folder, show_predictions
    from .training import Run, train


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(module), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'retreino' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


def show_images(images: Any, n: int = 12, path: str | os.PathLike | None = None,
                title: str | None = None) -> Figure:
    """A grid of labelled thumbnails: the first look at a dataset before training on it.

    `images` is a `Dataset` (its training split), one split of it (`dataset.train`), a folder
    of class sub-folders, or a list of image paths. Classes take turns in the grid, so a sorted
    folder does not show only its first class. Returns the Figure (inline in a notebook);
    with `path` it is also saved as PNG.

    >>> fig = retreino.show_images(retreino.load_dataset(DATA).validation, n=4, path=RUNS / "look.png")
    >>> [ax.get_title() for ax in fig.axes]
    ['cats', 'dogs', 'cats', 'dogs']
    """
    from .plots import image_grid_figure, save_figure, thumbnail

    paths, labels = _labelled_paths(images)
    order = _round_robin(labels)[:n]
    items = [{"image": thumbnail(paths[i]), "caption": labels[i] or os.path.basename(paths[i])} for i in order]
    if title is None:
        classes = sorted({labels[i] for i in order if labels[i]})
        title = f"{len(items)} of {len(paths)} images" + (f" ({', '.join(classes)})" if classes else "")
    fig = image_grid_figure(items, title=title)
    if path is not None:
        save_figure(fig, path)
    return fig


def _labelled_paths(images: Any) -> tuple[list[str], list[str | None]]:
    if hasattr(images, "splits") and hasattr(images, "class_names"):  # a Dataset: show what training sees
        images = next((s for s in images.splits() if len(s)), None)
        if images is None:
            raise RetreinoError("the dataset holds no images")
    if hasattr(images, "paths") and hasattr(images, "labels"):  # a Split
        return list(images.paths), [images.class_names[int(i)] for i in images.labels]
    if isinstance(images, (str, os.PathLike)) and os.path.isdir(images):
        from .prediction import find_images

        paths = [str(p) for p in find_images(images)]
        root = os.path.abspath(images)
        labels = [os.path.relpath(os.path.dirname(os.path.abspath(p)), root) for p in paths]
        return paths, [None if lab == "." else lab for lab in labels]
    if isinstance(images, (str, os.PathLike)):
        if os.path.isfile(images):
            return [str(images)], [None]
        raise RetreinoError(f"{images}: no such file or folder")
    return [str(p) for p in images], [None] * len(images)


def _round_robin(labels: Sequence[str | None]) -> list[int]:
    """Indices ordered so that each class appears in turn: cats, dogs, cats, dogs, ..."""
    by_class: dict[str | None, list[int]] = {}
    for i, label in enumerate(labels):
        by_class.setdefault(label, []).append(i)
    queues = [list(reversed(v)) for v in by_class.values()]
    order = []
    while any(queues):
        for q in queues:
            if q:
                order.append(q.pop())
    return order
