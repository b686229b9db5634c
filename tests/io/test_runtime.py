"""bnnmip.io.runtime: ``check_onnx(net, X, *, path=None)``, the old ``check_onnx(net, path, X)`` still
answering (with a DeprecationWarning) for one release, and onnxruntime sessions after fork()."""

from __future__ import annotations

import multiprocessing
import os
import warnings
from collections import OrderedDict

import numpy as np
import pytest

from bnnmip import InvalidArgumentError, OnnxCheck, check_onnx, onnx_logits
from bnnmip.io import runtime
from bnnmip.io.onnx_writer import random_params
from tests.helpers import saved_net


@pytest.fixture(scope="module")
def net_and_inputs(tmp_path_factory):
    path = tmp_path_factory.mktemp("runtime") / "net.onnx"
    net = saved_net(random_params(np.random.default_rng(0), 8, [6, 5], 3), path)
    return net, path, np.random.default_rng(1).random((200, 8))


def _same(a: OnnxCheck, b: OnnxCheck) -> bool:
    return (a.n, a.agree, a.max_logit_error) == (b.n, b.agree, b.max_logit_error) and a.ok == b.ok


def test_check_onnx_takes_the_inputs_second(net_and_inputs):
    net, path, X = net_and_inputs
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)  # the new call warns about nothing
        check = check_onnx(net, X)
        assert check.ok and check.n == check.agree == 200
        assert _same(check_onnx(net, X, path=path), check)


@pytest.mark.parametrize("old_path", [None, "file"], ids=["none", "path"])
def test_the_old_call_still_works_and_warns(net_and_inputs, old_path):
    net, path, X = net_and_inputs
    with pytest.warns(DeprecationWarning, match=r"check_onnx\(net, X, path=path\)"):
        check = check_onnx(net, None if old_path is None else str(path), X)
    assert _same(check, check_onnx(net, X))


def test_mixing_the_two_calls_is_an_error(net_and_inputs):
    net, path, X = net_and_inputs
    for args, kwargs in (((None, X), {"path": path}), ((None, X, X), {})):
        with pytest.raises(InvalidArgumentError, match=r"expected check_onnx\(net, X, \*, path=None\)"):
            check_onnx(net, *args, **kwargs)


def _child_logits(conn, net, X) -> None:
    conn.send(onnx_logits(net, X, threads=5))  # a new session: the cache is full, so one is evicted


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_a_forked_child_builds_its_own_sessions(net_and_inputs, monkeypatch):
    """Destroying a session copied from the parent waits forever on its thread pool in the child; the
    child must leave the parent's sessions alone (it hung once a full cache evicted one)."""
    net, _, X = net_and_inputs
    monkeypatch.setattr(runtime, "_SESSIONS", OrderedDict())
    monkeypatch.setattr(runtime, "_MAX_SESSIONS", 2)
    expected = [onnx_logits(net, X, threads=threads) for threads in (4, 8)][-1]  # a full cache of thread pools
    parent, child = multiprocessing.get_context("fork").Pipe()
    proc = multiprocessing.get_context("fork").Process(target=_child_logits, args=(child, net, X))
    proc.start()
    try:
        assert parent.poll(60), "onnxruntime hung in a forked child"
        np.testing.assert_array_equal(parent.recv(), expected)
    finally:
        proc.join(10)
        if proc.is_alive():
            proc.kill()
