"""Process-wide settings that must be in place before TensorFlow is imported, and the silencers of chatter."""
import contextlib
import logging
import os

# Keras 3 runs on TensorFlow here; oneDNN kernels are TensorFlow's fastest on x86 CPUs but some
# builds leave them off, so ask for them (a user's explicit setting wins).
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
# TensorFlow's C++ start-up chatter buries retreino's own output.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")


@contextlib.contextmanager
def quiet_native():
    """Silence native (C++) chatter written straight to file descriptor 2; Python exceptions still propagate.

    The one stderr silencer of retreino (TensorFlow's import, converters, runtimes use it).
    """
    import sys

    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


@contextlib.contextmanager
def quiet_loggers(*names: str, level: int = logging.ERROR):
    """Raise the level of the named Python loggers for the block; the one level silencer
    (`quiet_retracing` drops one message of TensorFlow's at its own level)."""
    levels = {n: logging.getLogger(n).level for n in names}
    for n in names:
        logging.getLogger(n).setLevel(level)
    try:
        yield
    finally:
        for n, old in levels.items():
            logging.getLogger(n).setLevel(old)


class _DropRetracingNotice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "triggered tf.function retracing" not in record.getMessage()


@contextlib.contextmanager
def quiet_retracing():
    """Drop TensorFlow's "N out of the last M calls ... triggered tf.function retracing" notice in the block.

    Cross-validation and tuning build a new model, and with it new tf.functions (Keras' train
    step, the prefix and feature passes), for every fold or trial of one process. TensorFlow
    counts traces by source line, not by function object, so from the fifth fold on it warns of
    a loop that retraces needlessly (16 lines of it in a 6-fold `retreino cv`): here each trace
    is a new model's first. Only that notice, only inside the block; other warnings still show.
    """
    logger = logging.getLogger("tensorflow")
    notice = _DropRetracingNotice()
    logger.addFilter(notice)
    try:
        yield
    finally:
        logger.removeFilter(notice)


def import_tensorflow():
    """Import TensorFlow with its native start-up log lines (absl, oneDNN banner) silenced.

    Those lines are written by C++ straight to file descriptor 2 during import, so Python's
    logging cannot catch them; stderr is pointed at /dev/null for the import only.
    Modules of retreino that use Keras or TensorFlow call this before importing them.
    """
    import sys

    if "tensorflow" in sys.modules:
        return sys.modules["tensorflow"]
    with quiet_native():
        import tensorflow
    return tensorflow
