"""Parse and validate a DJL workflow (JSON or YAML) into a ``WorkflowSpec``.

Refused at registration, each with a message naming the problem: a missing ``out``, an
unknown model, function or variable, a cycle between variables, an adapter whose model is
not declared.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from loraserve.errors import BadRequestError
from loraserve.names import validate_model_name, validate_workflow_name

BUILTIN_FUNCTIONS = {"adapter", "id", "ensemble", "functionsApply"}
INPUT = "in"


class WorkflowError(BadRequestError):
    error_type = "WorkflowDefinitionException"


@dataclass(slots=True)
class ModelRef:
    url: str
    options: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class AdapterRef:
    model: str
    src: str
    options: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class WorkflowSpec:
    name: str
    version: str | None
    models: dict[str, ModelRef]
    adapters: dict[str, AdapterRef]
    expressions: dict[str, Any]
    base_dir: Path | None = None


def _where(exc: Exception) -> str:
    """Line and column of a parse error, never the text around it: the file may be one the
    caller should not be able to read through our error messages."""
    if isinstance(exc, json.JSONDecodeError):
        return f"{exc.msg} at line {exc.lineno}, column {exc.colno}"
    mark = getattr(exc, "problem_mark", None)
    if mark is not None:
        problem = getattr(exc, "problem", None) or "syntax error"
        return f"{problem} at line {mark.line + 1}, column {mark.column + 1}"
    return type(exc).__name__


MAX_DOCUMENT_BYTES = 1024 * 1024


def read_document_text(path: Path) -> str:
    """A workflow or template file's text: at most 1 MiB of UTF-8 (errors never quote it)."""
    try:
        if path.stat().st_size > MAX_DOCUMENT_BYTES:
            raise WorkflowError(f"workflow file {path} is larger than {MAX_DOCUMENT_BYTES} bytes")
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise WorkflowError(f"workflow file {path} is not UTF-8 text") from None
    except OSError as exc:
        raise WorkflowError(f"workflow file {path} cannot be read: {exc.strerror}") from None


def load_document(text: str, source: str) -> dict:
    try:
        document = json.loads(text) if text.lstrip().startswith("{") else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError, RecursionError) as exc:
        raise WorkflowError(f"workflow {source} is neither valid JSON nor YAML: {_where(exc)}") from None
    if not isinstance(document, dict):
        raise WorkflowError(f"workflow {source} must be an object")
    return document


def _model_ref(name: str, value: Any) -> ModelRef:
    if isinstance(value, str):
        return ModelRef(value)
    if isinstance(value, dict):
        url = value.get("modelUrl") or value.get("url")
        if isinstance(url, str):
            options = {k: str(v) for k, v in value.items() if k not in ("modelUrl", "url")}
            return ModelRef(url, options)
    raise WorkflowError(f'model "{name}" must be a URL or an object with "modelUrl"')


def parse_workflow(document: dict, base_dir: Path | None = None) -> WorkflowSpec:
    name = document.get("name")
    if not isinstance(name, str) or not name:
        raise WorkflowError('a workflow needs a "name"')
    validate_workflow_name(name)
    declared = document.get("models") or {}
    if not isinstance(declared, dict):
        raise WorkflowError('"models" must be an object of name: URL')
    models = {validate_model_name(k): _model_ref(k, v) for k, v in declared.items()}
    adapters = {}
    configs = document.get("configs") or {}
    declared_adapters = configs.get("adapters") if isinstance(configs, dict) else None
    if not isinstance(declared_adapters, dict | None):
        raise WorkflowError('"configs.adapters" must be an object of name: {model, src}')
    for ref, config in (declared_adapters or {}).items():
        if not isinstance(config, dict) or "model" not in config or "src" not in config:
            raise WorkflowError(f'adapter "{ref}" needs "model" and "src"')
        if config["model"] not in models:
            raise WorkflowError(
                f'adapter "{ref}" names model "{config["model"]}", which the workflow does not declare'
            )
        options = {k: str(v) for k, v in (config.get("options") or {}).items()}
        adapters[ref] = AdapterRef(config["model"], str(config["src"]), options)
    expressions = document.get("workflow")
    if not isinstance(expressions, dict) or "out" not in expressions:
        raise WorkflowError('the workflow must define "out" in its "workflow" section')
    version = document.get("version")
    spec = WorkflowSpec(
        name, None if version is None else str(version), models, adapters, expressions, base_dir
    )
    validate(spec)
    return spec


def validate(spec: WorkflowSpec) -> None:
    """Every name resolves, functions are known, and variables do not depend on themselves."""
    for variable, expression in spec.expressions.items():
        _check(spec, expression, variable)
    state: dict[str, str] = {}

    def visit(variable: str, path: list[str]) -> None:
        if state.get(variable) == "done":
            return
        if state.get(variable) == "active":
            raise WorkflowError(f"cycle in workflow: {' -> '.join([*path, variable])}")
        state[variable] = "active"
        for dependency in _variables(spec.expressions[variable], spec):
            visit(dependency, [*path, variable])
        state[variable] = "done"

    for variable in spec.expressions:
        visit(variable, [])


def _check(spec: WorkflowSpec, expression: Any, where: str) -> None:
    if isinstance(expression, str):
        if expression != INPUT and expression not in spec.expressions:
            raise WorkflowError(f'unknown variable "{expression}" in "{where}"')
        return
    if not isinstance(expression, list) or not expression or not isinstance(expression[0], str):
        raise WorkflowError(f'"{where}": an expression is a variable name or [function, args...]')
    head, args = expression[0], expression[1:]
    if head == "adapter":
        if len(args) != 2 or args[0] not in spec.adapters:
            raise WorkflowError(
                f'"{where}": ["adapter", NAME, input] needs an adapter declared '
                f"in configs.adapters (got {args[:1]})"
            )
        _check(spec, args[1], where)
        return
    if head == "functionsApply":
        names = args[0] if args else None
        if len(args) != 2 or not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise WorkflowError(f'"{where}": ["functionsApply", [model or function, ...], input]')
        unknown = [n for n in names if n not in spec.models and n not in BUILTIN_FUNCTIONS]
        if unknown:
            raise WorkflowError(f'"{where}": unknown model or function "{unknown[0]}"')
        _check(spec, args[1], where)
        return
    if head not in spec.models and head not in BUILTIN_FUNCTIONS:
        raise WorkflowError(f'"{where}": unknown model or function "{head}"')
    for arg in args:
        _check(spec, arg, where)


def _variables(expression: Any, spec: WorkflowSpec) -> list[str]:
    if isinstance(expression, str):
        return [] if expression == INPUT else [expression]
    args = expression[2:] if expression[0] in ("adapter", "functionsApply") else expression[1:]
    return [v for arg in args for v in _variables(arg, spec)]
