"""An adapter echo model, shaped like DJL's ``adaptecho`` test model.

``handle`` echoes each input with the adapter it was called with (found the way DJL's
built-in handlers look: the body's ``adapters`` field, the ``adapter`` content key, the
``adapter`` property). Adapters it does not know are answered too ("dynamic" adapters).
Control fields in a JSON body: ``sleep`` (seconds), ``crash`` (exit the worker),
``raise`` (raise an error), ``stream`` (answer as a stream of N chunks), ``state`` (describe
this worker). Every load and (un)registration is appended to ``$ADAPTECHO_LOG`` if set.
Like a real handler, it refuses an adapter whose source is an absolute path (or ``file://`` URL)
that does not exist; a name or relative path is taken as given (DJL passes ``src`` as written,
for the handler to resolve). Loading fails while
the file named by ``$ADAPTECHO_FAIL_LOAD`` exists (a model that cannot restart).
"""

import json
import os
import time

from djl_python import Input, Output

adapters: dict[str, dict] = {}  # name → {"src": ..., "options": {...}}
loads = {"count": 0}


def _record(event, **fields):
    path = os.environ.get("ADAPTECHO_LOG")
    if path:
        with open(path, "a", encoding="utf-8") as log:
            log.write(json.dumps({"event": event, "pid": os.getpid(), **fields}) + "\n")


def register_adapter(inputs: Input):
    name = inputs.get_properties()["name"]
    src = inputs.get_properties()["src"]
    options = {k: v.decode() for k, v in inputs.get_content().items()}
    if options.get("fail") == "true":
        return Output().error(f"adapter {name} refused on request", code=400)
    path = src[len("file://") :] if src.startswith("file://") else src
    if os.path.isabs(path) and not os.path.exists(path):
        return Output().error(f"adapter {name}: source {src} does not exist", code=404)
    adapters[name] = {"src": src, "options": options}
    _record("register", name=name, src=src, options=options)
    return Output(message=f"Adapter {name} registered")


def update_adapter(inputs: Input):
    name = inputs.get_properties()["name"]
    options = {k: v.decode() for k, v in inputs.get_content().items()}
    adapters[name] = {"src": inputs.get_properties()["src"], "options": options}
    _record("update", name=name, src=inputs.get_properties()["src"], options=options)
    return Output(message=f"Adapter {name} updated")


def unregister_adapter(inputs: Input):
    name = inputs.get_properties()["name"]
    adapters.pop(name, None)
    _record("unregister", name=name)
    return Output(message=f"Adapter {name} unregistered")


def _adapter_of(item: Input, body):
    if isinstance(body, dict) and "adapters" in body:
        return body["adapters"]
    if item.contains_key("adapter"):
        return item.get_as_string("adapter")
    return item.get_property("adapter")


def _echo(item: Input, batch_size: int):
    raw = item.get_as_bytes("data") if item.contains_key("data") else b""
    try:
        body = json.loads(raw) if raw else None
    except ValueError:
        body = raw.decode("utf-8", "replace")
    if isinstance(body, dict):
        if body.get("crash"):
            os._exit(3)
        if body.get("raise"):
            raise RuntimeError(body["raise"])
        time.sleep(float(body.get("sleep", 0)))
    adapter = _adapter_of(item, body)
    known = [a in adapters for a in adapter] if isinstance(adapter, list) else adapter in adapters
    return body, {
        "input": body,
        "adapter": adapter,
        "known": known,
        "pid": os.getpid(),
        "registered": sorted(adapters),
        "batch_size": batch_size,
        "loads": loads["count"],
    }


def handle(inputs: Input):
    if inputs.is_empty():
        fail_flag = os.environ.get("ADAPTECHO_FAIL_LOAD")
        if fail_flag and os.path.exists(fail_flag):
            raise RuntimeError(f"refusing to load while {fail_flag} exists")
        loads["count"] += 1
        _record("load", model_dir=inputs.get_property("model_dir"))
        return None
    batch = inputs.get_batches()
    output = Output()
    for index, item in enumerate(batch):
        body, result = _echo(item, len(batch))
        if isinstance(body, dict) and body.get("stream"):
            chunks = [json.dumps({"chunk": i, **result}) + "\n" for i in range(int(body["stream"]))]
            return output.add_stream_content(iter(chunks), output_formatter=None)  # JSON lines as is
        if inputs.is_batch():
            output.add_as_json(result, batch_index=index)
        else:
            output.add_as_json(result)
    return output
