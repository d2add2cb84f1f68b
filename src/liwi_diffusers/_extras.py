"""Optional dependencies: import one, or say in one line which extra installs it.

    datasets = require("datasets", "build", "liwi-build")

raises, when `datasets` is not installed, ``MissingExtraError: liwi-build needs the 'datasets'
package: pip install "liwi-diffusers[build]"``. The extras are defined in ``setup.py``: build,
eval, train, demo, ray, dev.
"""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["MissingExtraError", "require"]


class MissingExtraError(ImportError):
    """An optional dependency is not installed; the one-line message names the extra to install."""


def require(module: str, extra: str, what: str) -> ModuleType:
    """Import and return ``module``; raise `MissingExtraError` naming ``extra`` when it is missing.

    ``what`` names the feature that needs it (``"liwi-build"``, ``"reading a LiWi dataset"``).
    An `ImportError` raised for another module while ``module`` itself imports (a broken install)
    is left as it is, so that it is not blamed on a missing extra.
    """
    try:
        return importlib.import_module(module)
    except ImportError as error:
        package = module.split(".")[0]
        missing = error.name or ""
        if missing != module and missing.split(".")[0] != package:
            raise
        raise MissingExtraError(
            f"{what} needs the '{package}' package: pip install \"liwi-diffusers[{extra}]\"", name=package
        ) from None
