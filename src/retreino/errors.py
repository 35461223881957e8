"""Errors a user can act on. The CLI prints their message on one line, never a traceback."""


class RetreinoError(Exception):
    """Base class: the message alone must tell the user what is wrong and what to do."""


class ModelLoadError(RetreinoError):
    """A model file or name that cannot be loaded faithfully."""


class UnsafeModelError(ModelLoadError):
    """A model that embeds code (Lambda layers, custom objects) and needs --unsafe."""


class DataError(RetreinoError):
    """A dataset that cannot be read or used as asked."""


class TrainingError(RetreinoError):
    """Training could not go on (NaN loss, a full disk ...); the run directory keeps the best model so far."""
