"""Device and dtype choice (mmrag.device): auto follows torch, a missing or unknown device is a config error."""

from __future__ import annotations

import pytest
import torch

from mmrag.device import resolve_device
from mmrag.errors import ConfigError


def test_auto_device_follows_torch() -> None:
    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu") == "cpu"


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_a_gpu_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="cuda:1"):
        resolve_device("cuda:1")


def test_an_unknown_device_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="gpu0"):
        resolve_device("gpu0")
