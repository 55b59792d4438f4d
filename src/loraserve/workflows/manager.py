"""Registered workflows and the models and adapters they share.

Models are de-duplicated by (resolved URL, options): the second workflow that names one gets
the loaded copy, and it is unloaded when the last workflow using it goes. Adapters declared
in ``configs.adapters`` are registered on their model once and counted the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loraserve.adapters.registry import AdapterOrigin
from loraserve.adapters.sources import ensure_inside, exists, local_path_of, server_reads
from loraserve.errors import ConflictError, LoraserveError, ModelNotFoundError
from loraserve.serving.cleanup import prune_adapter_copies
from loraserve.serving.metrics import adapter_label
from loraserve.serving.model_manager import ModelManager
from loraserve.serving.worker_process import WorkerReply
from loraserve.wire.frames import ReplyKind
from loraserve.workflows.executor import WorkflowRun
from loraserve.workflows.spec import WorkflowSpec


@dataclass(slots=True)
class Workflow:
    spec: WorkflowSpec
    served: dict[str, str] = field(default_factory=dict)  # local model name → served name
    adapters: list[tuple[str, str]] = field(default_factory=list)  # (served model, adapter)


class WorkflowManager:
    def __init__(self, models: ModelManager) -> None:
        self.models = models
        self.workflows: dict[str, Workflow] = {}
        self._model_refs: dict[str, int] = {}  # served model name → workflows using it
        self._model_keys: dict[tuple[str, str], str] = {}
        self._adapter_refs: dict[tuple[str, str], tuple[int, str]] = {}  # → (count, src)
        self._lock = asyncio.Lock()

    def _resolve(self, url: str, spec: WorkflowSpec) -> str:
        """A relative URL: next to the workflow file, else in the working directory (DJL's
        rule, e.g. ``src/test/resources/adaptecho``), else in the model store."""
        bases = [spec.base_dir, Path.cwd(), self.models.config.model_store]
        candidates = [local_path_of(url, base) for base in bases if base is not None]
        return str(next((c for c in candidates if exists(c)), candidates[0]))

    async def register(self, spec: WorkflowSpec, roots: list[Path] | None = None) -> Workflow:
        """Load the workflow's models and adapters; with ``roots`` (a workflow registered over
        the API) every model it declares must lie inside them."""
        async with self._lock:
            if spec.name in self.workflows or spec.name in self.models.models:
                raise ConflictError(f"workflow or model {spec.name} is already registered")
            for ref in spec.models.values() if roots is not None else ():
                ensure_inside(Path(self._resolve(ref.url, spec)), roots or [], kind="model")
            workflow = Workflow(spec)
            try:
                for local, ref in spec.models.items():
                    workflow.served[local] = await self._acquire_model(local, ref.url, ref.options, spec)
                for name, adapter in spec.adapters.items():
                    await self._acquire_adapter(workflow, name, adapter.src, adapter.options, adapter.model)
            except BaseException:
                await self._release(workflow)
                await self.models.prune_model_copies()
                raise
            self.workflows[spec.name] = workflow
            return workflow

    async def _acquire_model(self, local: str, url: str, options: dict[str, str], spec: WorkflowSpec) -> str:
        key = (self._resolve(url, spec), json.dumps(options, sort_keys=True))
        served = self._model_keys.get(key)
        if served is None:
            served = local
            if served in self.models.models:
                served = f"{local}-{hashlib.sha256(repr(key).encode()).hexdigest()[:8]}"
            await self.models.register(served, key[0], options=options)
            self._model_keys[key] = served
        self._model_refs[served] = self._model_refs.get(served, 0) + 1
        return served

    async def _acquire_adapter(
        self, workflow: Workflow, name: str, src: str, options: dict[str, str], local_model: str
    ) -> None:
        served = workflow.served[local_model]
        reads = server_reads(src, self.models.get(served).uses_builtin_engine)
        resolved = self._resolve(src, workflow.spec) if reads else src  # DJL: src as written
        count, existing = self._adapter_refs.get((served, name), (0, resolved))
        if existing != resolved:
            raise ConflictError(
                f"adapter {name} is already registered on model {served} from {existing}, not {resolved}"
            )
        if count == 0:
            await self.models.get(served).register_adapter(
                name, resolved, options=options, origin=AdapterOrigin.WORKFLOW
            )
        self._adapter_refs[(served, name)] = (count + 1, resolved)
        workflow.adapters.append((served, name))

    async def unregister(self, name: str) -> None:
        async with self._lock:
            workflow = self.workflows.pop(name, None)
            if workflow is None:
                raise ModelNotFoundError(f"workflow {name} not found")
            await self._release(workflow)

    async def _release(self, workflow: Workflow) -> None:
        for served, adapter in reversed(workflow.adapters):
            count, src = self._adapter_refs.pop((served, adapter))
            if count > 1:
                self._adapter_refs[(served, adapter)] = (count - 1, src)
            elif served in self.models.models:
                model = self.models.get(served)
                with contextlib.suppress(LoraserveError):  # the model may be going away with it
                    await model.unregister_adapter(adapter)
                await prune_adapter_copies(model)
        for served in workflow.served.values():
            self._model_refs[served] -= 1
            if self._model_refs[served] == 0:
                del self._model_refs[served]
                self._model_keys = {k: v for k, v in self._model_keys.items() if v != served}
                if served in self.models.models:
                    await self.models.unregister(served)

    async def execute(self, name: str, request: dict[str, Any]) -> WorkerReply:
        workflow = self.workflows[name]

        async def call(served: str, wire: dict[str, Any]) -> WorkerReply:
            model = self.models.get(served)
            named = [v.decode("utf-8", "replace") for k, v in wire["content"] if k == "adapter"]
            return await model.infer(wire, "handle", adapter_label(model, named))  # counted and logged

        result = await WorkflowRun(workflow.spec, workflow.served, call, request).output()
        output = {
            "code": result.get("code", 200),
            "message": "OK",
            "properties": result["properties"],
            "content": result["content"],
            "streaming": False,
        }
        return WorkerReply(ReplyKind.DJL, output)

    def owned_models(self) -> set[str]:
        """Served models that exist because a workflow declared them."""
        return set(self._model_refs)

    def describe(self, name: str) -> dict[str, Any]:
        workflow = self.workflows.get(name)
        if workflow is None:
            raise ModelNotFoundError(f"workflow {name} not found")
        return {
            "workflowName": name,
            "version": workflow.spec.version,
            "models": [
                self.models.get(s).describe() for s in workflow.served.values() if s in self.models.models
            ],
            "adapters": [{"model": m, "name": a} for m, a in workflow.adapters],
        }
