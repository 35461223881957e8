"""Datasets: scanning and validating image folders, splits, CSV labels, tf.data pipelines.

`load_dataset` and `scan_images` need no TensorFlow; `make_pipeline` and `decode_all` import it
on first use, so `retreino check-data` starts fast.
"""
from .images import open_image, read_image
from .scan import FileInfo, Problem, scan_images
from .sources import Dataset, Split, load_dataset

__all__ = ["Dataset", "FileInfo", "Problem", "Split", "decode_all", "load_dataset", "make_pipeline",
           "open_image", "read_image", "scan_images"]


def __getattr__(name):
    if name in ("make_pipeline", "decode_all"):
        from . import pipeline

        return getattr(pipeline, name)
    raise AttributeError(name)
