"""Loading pipeline files: import a Python file, return its module-level ``pipeline``."""

from __future__ import annotations

import hashlib
import importlib.util
import sys
import threading
import traceback
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

from pydantic import ValidationError

from flowcollect.errors import ConfigError

if TYPE_CHECKING:
    from flowcollect.pipeline._model import Pipeline

__all__ = ["PipelineLoadError", "load_pipeline", "validation_problems"]

# sys.path is process-wide: two threads loading pipelines must not undo each other's entry.
_IMPORT_LOCK = threading.Lock()


class PipelineLoadError(ConfigError):
    """A pipeline file is missing, does not import, or holds no valid ``pipeline``.

    ``problems`` has one line per problem, each naming the file (and the line or field).
    """


def validation_problems(exc: ValidationError, prefix: str = "") -> list[str]:
    """One line per pydantic error, naming the field path (``contexts.0.variables.2.address``)."""
    lines = []
    for error in exc.errors():
        message = error["msg"].removeprefix("Value error, ")
        where = ".".join(str(part) for part in error["loc"])
        lines.append(f"{prefix}{where}: {message}" if where else f"{prefix}{message}")
    return lines


def load_pipeline(path: str | Path) -> Pipeline:
    """Import a pipeline file and return its module-level ``pipeline``.

    The file is imported as a module (never evaluated as an expression), with its folder first
    on ``sys.path`` while it imports, so it can import a module beside it (``import plant_tags``).
    Raises ``PipelineLoadError`` naming the file and the problem: missing file, an exception
    while importing (with its type and the file's line), no ``pipeline``, or not a ``Pipeline``.

    Relative paths inside the file (a CSV writer's ``out/line1.csv``) are relative to the
    working directory when they are opened; ``flowcollect`` runs with the pipeline file's folder
    as its working directory, so there they mean "beside the pipeline file".
    """
    from flowcollect.pipeline._model import Pipeline

    file = Path(path)
    if not file.exists():
        raise PipelineLoadError(f"pipeline file {file} does not exist")
    if not file.is_file():
        raise PipelineLoadError(f"pipeline file {file} is not a file")
    module = _import(file)
    if not hasattr(module, "pipeline"):
        raise PipelineLoadError(
            f"pipeline file {file} defines no module-level `pipeline` (it must bind a flowcollect.Pipeline "
            "to that name)"
        )
    pipeline = module.pipeline
    if not isinstance(pipeline, Pipeline):
        raise PipelineLoadError(
            f"`pipeline` in {file} is a {type(pipeline).__name__}, not a flowcollect.Pipeline"
        )
    pipeline._folder_given = file.parent
    pipeline._folder_resolved = file.resolve().parent
    return pipeline


def _import(file: Path) -> ModuleType:
    resolved = file.resolve()
    # One module name per file, so two pipelines with the same file name do not replace each
    # other in sys.modules; the module stays registered, as classes defined in it need that.
    digest = hashlib.sha256(str(resolved).encode()).hexdigest()[:12]
    name = f"flowcollect_pipeline_{_identifier(file.stem)}_{digest}"
    spec = importlib.util.spec_from_file_location(name, resolved)
    if spec is None or spec.loader is None:
        raise PipelineLoadError(f"pipeline file {file} cannot be imported as Python (use a .py file)")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    folder = str(resolved.parent)
    with _IMPORT_LOCK:
        sys.path.insert(0, folder)
        try:
            spec.loader.exec_module(module)
        except (Exception, SystemExit) as exc:
            sys.modules.pop(name, None)
            raise PipelineLoadError(_import_problems(file, resolved, exc)) from exc
        finally:
            # Only the entry added here: the file may have changed sys.path itself.
            if folder in sys.path:
                sys.path.remove(folder)
    return module


def _identifier(text: str) -> str:
    return "".join(ch if ch.isalnum() else "_" for ch in text)


def _import_problems(file: Path, resolved: Path, exc: BaseException) -> list[str]:
    if isinstance(exc, SyntaxError):
        return [f"pipeline file {file} does not import: line {exc.lineno}: SyntaxError: {exc.msg}"]
    line = _last_line_in(resolved, exc)
    where = f"pipeline file {file}" + (f", line {line}" if line is not None else "")
    if isinstance(exc, ValidationError):
        # A model built at import (the Pipeline, a context, a variable) refused a field.
        return [f"{where}: invalid {exc.title}: {p}" for p in validation_problems(exc)]
    if isinstance(exc, ConfigError):
        return [f"{where}: {p}" for p in exc.problems]
    return [f"{where} does not import: {type(exc).__name__}: {exc}"]


def _last_line_in(resolved: Path, exc: BaseException) -> int | None:
    """The line of the pipeline file that led to the exception (the deepest frame in it)."""
    line = None
    for frame in traceback.extract_tb(exc.__traceback__):
        if frame.filename and Path(frame.filename) == resolved:
            line = frame.lineno
    return line
