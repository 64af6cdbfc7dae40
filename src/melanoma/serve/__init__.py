"""The app: the champion model (or a model folder) behind a web page and a JSON API.

``app`` builds the FastAPI app, ``holder`` loads the model and hot-swaps it when the ``champion``
alias moves, ``intake`` turns uploads into pixels (or a 4xx), ``explain`` draws Grad-CAM or the
baseline's lesion mask, ``page`` is the self-contained HTML page. ``melanoma serve`` runs it on uvicorn.
"""

from melanoma.serve.app import create_app
from melanoma.serve.holder import ModelHolder, Served, load_folder, registry_holder
from melanoma.serve.intake import IntakeError, Limits

__all__ = ["IntakeError", "Limits", "ModelHolder", "Served", "create_app", "load_folder", "registry_holder"]
