"""`retreino studio`: a local web app to train like Teachable Machine, over an ordinary data folder.

>>> from retreino.studio import studio
>>> studio("my_project", port=8100)   # doctest: +SKIP

The page makes classes, takes images (files, drops, pastes, webcam bursts), trains, evaluates, tries
and exports; every piece of work is the matching `retreino` command run as a child process
(`jobs.py`), so the studio is a page and a job runner, not a second engine. FastAPI and uvicorn
come with the `serve` extra.
"""
from .app import StudioSettings, create_app
from .project import Project
from .server import studio

__all__ = ["Project", "StudioSettings", "create_app", "studio"]
