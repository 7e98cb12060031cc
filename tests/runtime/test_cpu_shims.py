"""runtime/cpu_shims.py: installed exactly on CPU builds of Paddle 3.3.1, idempotent, inert elsewhere.

What each shim fixes is exercised end to end by the multi-process tests
(sharding stages, to_static, pipelines); here: when they are installed, and the
shims whose effect a single process can observe.
"""

from __future__ import annotations

import paddle
import pytest

from runtime import cpu_shims

CPU_331 = not paddle.is_compiled_with_cuda() and paddle.__version__ == cpu_shims.PADDLE_VERSION


@pytest.mark.skipif(not CPU_331, reason="the shims target the CPU build of Paddle 3.3.1")
def test_apply_installs_every_shim_once():
    names = cpu_shims.apply_cpu_shims()
    assert names == tuple(name for name, _ in cpu_shims.SHIMS)
    assert cpu_shims.installed_shims() == names
    from paddle.distributed.auto_parallel import api

    reshard = api.reshard
    assert cpu_shims.apply_cpu_shims() == names
    assert api.reshard is reshard  # a second application does not wrap the wrapper


@pytest.mark.skipif(not CPU_331, reason="the shims target the CPU build of Paddle 3.3.1")
def test_tensor_cuda_is_identity_on_cpu():
    cpu_shims.apply_cpu_shims()
    tensor = paddle.to_tensor([1.0, 2.0])
    assert tensor.cuda() is tensor


def test_other_paddle_version_warns_and_installs_nothing(monkeypatch):
    monkeypatch.setattr(paddle, "__version__", "3.9.0")
    with pytest.warns(RuntimeWarning, match="written for Paddle 3.3.1, found 3.9.0"):
        assert cpu_shims.apply_cpu_shims() == ()


def test_gpu_build_needs_no_shims(monkeypatch):
    from paddle.base import core

    monkeypatch.setattr(core, "is_compiled_with_cuda", lambda: True)
    assert not cpu_shims.shims_needed()
    assert cpu_shims.apply_cpu_shims() == ()
