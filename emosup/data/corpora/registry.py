"""The corpus readers by name: `CORPORA`, each read by `emosup.data.corpora.<name>.read(root,
**options)`, imported only when asked for (readers import neither TensorFlow nor JAX)."""
from __future__ import annotations

import importlib
import inspect
from typing import Any, Callable, Dict

from emosup.errors import UserError

CORPORA = ("msp_podcast", "iemocap", "crema_d", "ravdess", "esd", "voxceleb")


class UnknownCorpusError(UserError):
    """A corpus name with no reader (not in `CORPORA`, or its module is not installed)."""


def reader_for(corpus: str) -> Callable[..., Any]:
    """`emosup.data.corpora.<corpus>.read`, imported on demand."""
    if corpus not in CORPORA:
        raise UnknownCorpusError(f"unknown corpus {corpus!r}; one of: {', '.join(CORPORA)}")
    name = f"emosup.data.corpora.{corpus}"
    try:
        module = importlib.import_module(name)
    except ModuleNotFoundError as e:
        if e.name != name:
            raise
        raise UnknownCorpusError(f"the {corpus} reader ({name}) is not available in this "
                                 "installation") from None
    return module.read


def options_of(read: Callable[..., Any]) -> Dict[str, Any]:
    """The reader's keyword options and their defaults, in signature order."""
    return {p.name: p.default for p in inspect.signature(read).parameters.values()
            if p.kind == inspect.Parameter.KEYWORD_ONLY}
