"""Map the model's four classes onto a labelled folder's coarser classes.

An external labelled set rarely has the four Kaggle classes: a benign/leukemic pair of
folders is more common. ``evaluate --map Benign=Healthy --map Early,Pre,Pro=ALL`` scores the
cascade on it: each predicted class is renamed by the map, and the paper's metrics are
computed on the folder's classes.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["ClassMapError", "folder_classes", "parse_class_map"]


class ClassMapError(ValueError):
    """A ``--map`` that does not map every model class to exactly one folder class."""


def parse_class_map(items: Sequence[str], model_classes: Sequence[str]) -> dict[str, str]:
    """Read ``MODEL[,MODEL...]=FOLDER`` items into ``{model class: folder class}``.

    Model classes are matched without regard to case and written as the model has them;
    folder classes are kept as written (they name the folders, matched without regard to
    case by the scan).

    Args:
        items: Strings such as ``"Benign=Healthy"`` and ``"Early,Pre,Pro=ALL"``.
        model_classes: The classes the model predicts.

    Returns:
        Every model class with the folder class it counts as.

    Raises:
        ClassMapError: An item without ``=`` or with an empty side, a class the model does
            not know, a class mapped twice, or a model class left unmapped; the message
            names it.
    """
    known = {str(name).casefold(): str(name) for name in model_classes}
    mapping: dict[str, str] = {}
    for item in items:
        left, sep, right = item.partition("=")
        sources = [part.strip() for part in left.split(",") if part.strip()]
        target = right.strip()
        if not sep or not sources or not target:
            msg = (
                f"--map must look like MODEL[,MODEL...]=FOLDER (e.g. Benign=Healthy), got {item!r}"
            )
            raise ClassMapError(msg)
        for source in sources:
            name = known.get(source.casefold())
            if name is None:
                msg = (
                    f"--map {item!r}: the model has no class {source!r}; "
                    f"its classes are {list(known.values())}"
                )
                raise ClassMapError(msg)
            if name in mapping:
                msg = f"--map {item!r}: class {name!r} is already mapped to {mapping[name]!r}"
                raise ClassMapError(msg)
            mapping[name] = target
    missing = [name for name in known.values() if name not in mapping]
    if missing:
        msg = (
            f"--map leaves the model class(es) {missing} unmapped; every class the model "
            "predicts needs a folder class"
        )
        raise ClassMapError(msg)
    return {name: mapping[name] for name in known.values()}


def folder_classes(mapping: dict[str, str]) -> tuple[str, ...]:
    """The folder classes of a map, in the order they first appear."""
    return tuple(dict.fromkeys(mapping.values()))
