"""A request for an adapter of a model that is still loading is a 503 "loading", not DJL's 424
"adapter not registered": its start-up adapters are registered only once it has loaded."""

from __future__ import annotations

import pytest

from loraserve.config import ServerConfig
from loraserve.errors import ServiceUnavailableError
from loraserve.serving.model_service import ModelService, ModelStatus


def test_adapters_of_a_loading_model_are_a_503(tmp_path):
    (tmp_path / "serving.properties").write_text("option.model_id=/m\n")
    model = ModelService("m", tmp_path, str(tmp_path), ServerConfig())
    assert model.status is ModelStatus.LOADING
    with pytest.raises(ServiceUnavailableError, match="LOADING"):
        model.check_adapters(["shouty"])
