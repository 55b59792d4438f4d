"""A server in secure mode (SageMaker's variables) refuses an adapter that carries a pickle
file with a 400 naming it, registers nothing, and serves clean adapters as before."""

from __future__ import annotations

import shutil

from loraserve.testing.server import ServerProcess
from tests.e2e.helpers import make_engine_store


def test_secure_mode_refuses_an_adapter_with_a_pickle_and_keeps_serving(tmp_path):
    store, _ = make_engine_store(tmp_path)
    dirty = store / "extra" / "dirty"
    shutil.copytree(store / "tiny" / "adapters" / "qv", dirty)
    (dirty / "training_args.bin").write_bytes(b"\x80\x04N.")  # a pickle, as trainers leave behind
    env = {"SAGEMAKER_SECURE_MODE": "true", "SAGEMAKER_SECURITY_CONTROLS": "DISALLOW_PICKLE_FILES"}
    with ServerProcess(["--model-store", str(store)], env=env) as server:
        refused = server.client.post(f"/models/tiny/adapters?name=dirty&src={dirty}")
        assert refused.status_code == 400 and "training_args.bin" in refused.json()["message"]
        listed = [a["name"] for a in server.client.get("/models/tiny/adapters").json()["adapters"]]
        assert listed == ["qv"]  # the start-up adapter is clean and served
        body = {"inputs": "hi", "adapters": "qv", "parameters": {"max_new_tokens": 2}}
        assert server.client.post("/predictions/tiny", json=body).status_code == 200
