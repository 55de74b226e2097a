"""slotrun: finish many simulation tasks on a lab's GPUs, with a live web dashboard.

``create_app()`` is the composition root (used by ``python -m app serve`` and gunicorn);
Flask is imported only there, so the engine and the command line stay light.
"""


def create_app(config=None):
    """Build the Flask application, its engine and its Socket.IO server."""
    from .web import build_app  # imported here on purpose: see the module's docstring

    return build_app(config)
