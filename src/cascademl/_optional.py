"""One way to import an optional dependency.

[`require`][cascademl._optional.require] imports a module that ships with one of the
package's extras (``timm``, ``io``, ``example``) and, when it is missing, raises an
``ImportError`` that names the module, what needed it, and the ``pip install
'cascademl[extra]'`` line that brings it in, as httpx does for its ``cli`` extra.
"""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["require"]


def require(module: str, extra: str, *, purpose: str | None = None) -> ModuleType:
    """Import ``module``, or explain which extra installs it.

    Args:
        module: the dotted module name, e.g. ``"timm"`` or ``"safetensors.torch"``.
        extra: the cascademl extra that lists the distribution, e.g. ``"timm"``.
        purpose: what needs the module, for the message (e.g. ``"timm models"``);
            default ``"this feature"``.

    Returns:
        The imported module.

    Raises:
        ImportError: if the module (or one of its own dependencies) cannot be imported;
            the message ends with ``pip install 'cascademl[<extra>]'`` and the original
            error is chained.

    Examples:
        >>> require("json", "example").__name__
        'json'
        >>> require("cascademl_no_such_module", "timm", purpose="timm")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ImportError: timm needs the optional module 'cascademl_no_such_module', ...
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        what = purpose if purpose is not None else "this feature"
        msg = (
            f"{what} needs the optional module {module!r}, which cannot be imported "
            f"({exc}); install it with: pip install 'cascademl[{extra}]'"
        )
        raise ImportError(msg, name=module) from exc
