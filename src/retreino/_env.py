"""Process-wide settings that must be in place before TensorFlow is imported."""
import os

# Keras 3 runs on TensorFlow here; oneDNN kernels are TensorFlow's fastest on x86 CPUs but some
# builds leave them off, so ask for them (a user's explicit setting wins).
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
# TensorFlow's C++ start-up chatter buries retreino's own output.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")


def import_tensorflow():
    """Import TensorFlow with its native start-up log lines (absl, oneDNN banner) silenced.

    Those lines are written by C++ straight to file descriptor 2 during import, so Python's
    logging cannot catch them; stderr is pointed at /dev/null for the import only.
    Modules of retreino that use Keras or TensorFlow call this before importing them.
    """
    import sys

    if "tensorflow" in sys.modules:
        return sys.modules["tensorflow"]
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        import tensorflow
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)
    return tensorflow
