"""The apps' model store loads outside its lock (issue 10.3) and the apps refuse a port in use with one line."""

from __future__ import annotations

import socket
import threading
from types import SimpleNamespace

import pytest

from dual_attention.model_analysis.app_common import AppError, ModelStore, port_problem


class SlowLoader:
    """A fake loader: ``slow/...`` keys block until released; counts the loads of each key."""

    def __init__(self):
        self.release = threading.Event()
        self.started = threading.Event()
        self.calls: dict[str, int] = {}
        self._lock = threading.Lock()

    def __call__(self, key, device):
        with self._lock:
            self.calls[key] = self.calls.get(key, 0) + 1
        if key.startswith("slow/"):
            self.started.set()
            assert self.release.wait(30), "never released"
        if key.startswith("bad/"):
            raise OSError("Hub unreachable\nsecond line")
        return SimpleNamespace(family="lm", tokenizer=object(), model=SimpleNamespace(vocab_size=256), source=key)


def _in_thread(fn, *args):
    out = {}

    def run():
        try:
            out["value"] = fn(*args)
        except Exception as e:  # noqa: BLE001
            out["error"] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, out


def test_a_slow_load_does_not_block_other_users():
    loader = SlowLoader()
    store = ModelStore("cpu", loader=loader)
    fast_key, fast = store.load("fast/model")
    slow_thread, slow_out = _in_thread(store.load, "slow/model")
    assert loader.started.wait(30)
    # while the slow load runs: another session uses its loaded model and loads another one, without waiting
    assert store.get(fast_key) is fast
    other_thread, other_out = _in_thread(store.load, "other/model")
    other_thread.join(30)
    assert not other_thread.is_alive() and other_out["value"][1].source == "other/model"
    assert slow_thread.is_alive()  # still loading: nothing above waited for it
    same_thread, same_out = _in_thread(store.load, "slow/model")  # a second user asks for the same model
    loader.release.set()
    slow_thread.join(30)
    same_thread.join(30)
    assert slow_out["value"][1] is same_out["value"][1]
    assert loader.calls == {"fast/model": 1, "slow/model": 1, "other/model": 1}  # loaded once, shared
    assert store.load("slow/model")[1] is slow_out["value"][1]  # cached


def test_a_failed_load_is_one_line_for_every_waiter_and_can_be_retried():
    loader = SlowLoader()
    store = ModelStore("cpu", loader=loader)
    for _ in range(2):
        with pytest.raises(AppError) as info:
            store.load("bad/model")
        assert str(info.value) == "could not load 'bad/model': Hub unreachable; second line"
    assert loader.calls == {"bad/model": 2}  # failures are not cached


def test_port_in_use_and_bad_flags_are_one_line(capsys):
    from dual_attention.model_analysis import lm_inference_app, lm_visualization_app

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert "cannot listen on 127.0.0.1" in port_problem("127.0.0.1", port)
        for module in (lm_inference_app, lm_visualization_app):
            for argv, needle in ((["--port", str(port)], f"cannot listen on 127.0.0.1:{port}"),
                                 (["--port", "70000"], "--port must be in 1..65535"),
                                 (["--device", "cuda:7"], "--device='cuda:7'"),
                                 (["--device", "tpu"], "--device='tpu'"),
                                 (["--port", "x"], "invalid int value")):
                with pytest.raises(SystemExit) as info:
                    module.main(argv)
                err = capsys.readouterr().err
                assert info.value.code == 2 and len(err.strip().splitlines()) == 1 and needle in err, err
