"""Browser tests of the two Gradio apps: each app is started on a free localhost port with a tiny byte-level DAT
checkpoint, and headless Chromium (Debian's ``chromium``) is driven through Playwright: type, click, check the page.
Screenshots go to ``test-artifacts/``. Skipped (with the reason) when Playwright, Chromium or gradio is missing."""

from __future__ import annotations

import base64
import json
import os
import shutil
import socket
from pathlib import Path

import pytest
import torch

pytestmark = [
    pytest.mark.browser,
    # gradio's queue calls pandas APIs that pandas 3 deprecates; not ours to fix
    pytest.mark.filterwarnings("ignore:'future.no_silent_downcasting' is deprecated"),
    pytest.mark.filterwarnings("ignore:The copy keyword is deprecated"),
]

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
TIMEOUT_MS = 45_000


def _chromium() -> str | None:
    for candidate in (os.environ.get("DAT_CHROMIUM"), shutil.which("chromium"), "/usr/bin/chromium",
                      shutil.which("chromium-browser")):
        if candidate and Path(candidate).is_file():
            return candidate
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
    pytest.importorskip("gradio", reason="gradio is not installed (pip install 'dual_attention[apps]')")
    executable = _chromium()
    if executable is None:
        pytest.skip("chromium not found (apt-get install -y chromium, or set DAT_CHROMIUM)")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=executable, headless=True, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny byte-level DAT LM (context 64), trained for a few steps so that it writes letters and spaces."""
    from dual_attention.model_analysis.demo_checkpoint import make_demo_checkpoint

    return make_demo_checkpoint(tmp_path_factory.mktemp("apps") / "tiny-dat", steps=30, batch_size=8)


@pytest.fixture(scope="module")
def not_dat_checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("apps") / "not-dat"
    path.mkdir()
    (path / "config.json").write_text(json.dumps({"hidden_size": 8, "architectures": ["BertModel"]}))
    (path / "model.safetensors").write_bytes(b"\0" * 16)
    return path


def _serve(module_name: str, model: str | None):
    import importlib

    from dual_attention.model_analysis.app_common import launch

    module = importlib.import_module(f"dual_attention.model_analysis.{module_name}")
    app = module.build_app(model, "cpu")
    port = _free_port()
    launch(app, "127.0.0.1", port, share=False, block=False)
    return app, f"http://127.0.0.1:{port}/"


@pytest.fixture(scope="module")
def inference_url(browser, checkpoint):
    app, url = _serve("lm_inference_app", None)
    yield url
    app.close()


@pytest.fixture(scope="module")
def visualization_url(browser, checkpoint):
    app, url = _serve("lm_visualization_app", str(checkpoint))
    yield url
    app.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1300, "height": 950})
    pg = context.new_page()
    pg.set_default_timeout(TIMEOUT_MS)
    yield pg
    context.close()


def _open(page, url: str) -> None:
    page.goto(url, wait_until="domcontentloaded")
    page.wait_for_selector("#prompt textarea")  # Gradio has hydrated


def _shot(page, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / name
    page.screenshot(path=str(path), full_page=True)
    return path


def _expect():
    from playwright.sync_api import expect

    return expect


def _greedy(checkpoint: Path, prompt: str, n: int) -> str:
    from dual_attention.hf import load_pretrained

    model = load_pretrained(checkpoint)
    idx = torch.tensor([list(prompt.encode())])
    ids = model.generate(idx, n, temperature=0.0)[0, idx.shape[1]:].tolist()
    return bytes(ids).decode("utf-8", errors="replace")


def _normalise(text: str) -> str:  # a textarea's value has its line breaks normalised to \n
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _load(page, path) -> None:
    page.fill("#model-path textarea", str(path))
    page.click("#load-button")


def _generate(page, prompt: str, tokens: int) -> None:
    page.fill("#prompt textarea", prompt)
    page.fill("#temperature input", "0")
    page.fill("#max-tokens input", str(tokens))
    page.click("#generate-button")


# ----------------------------------------------------------------------------------------------- inference app
def test_inference_app_loads_and_streams_generation(page, inference_url, checkpoint):
    expect = _expect()
    _open(page, inference_url)
    expect(page.locator("#model-status")).to_contain_text("enter a checkpoint")
    _load(page, checkpoint)
    expect(page.locator("#model-status")).to_contain_text("Loaded DualAttnTransformerLM")
    expect(page.locator("#model-status")).to_contain_text("2 SA + 2 RA heads")
    prompt = "the cat "
    _generate(page, prompt, 40)
    expect(page.locator("#generation-status")).to_contain_text("done: 40 new tokens")
    expected = _normalise(prompt + _greedy(checkpoint, prompt, 40))
    assert page.input_value("#output textarea") == expected
    assert len(expected) > len(prompt) + 20
    _shot(page, "inference_app.png")


def test_inference_app_bad_inputs_show_messages_and_keep_serving(page, inference_url, checkpoint,
                                                                  not_dat_checkpoint, tmp_path):
    expect = _expect()
    _open(page, inference_url)
    status = page.locator("#model-status")
    _load(page, tmp_path / "no-such-dir")
    expect(status).to_contain_text("Error:")
    expect(status).to_contain_text("does not exist")
    _load(page, not_dat_checkpoint)
    expect(status).to_contain_text("is not a dual_attention model config")
    page.fill("#prompt textarea", "hello")
    page.click("#generate-button")
    expect(page.locator("#generation-status")).to_contain_text("no model loaded")
    _load(page, checkpoint)
    expect(status).to_contain_text("Loaded")
    _generate(page, "x" * 100, 5)
    expect(page.locator("#generation-status")).to_contain_text(
        "the prompt has 100 tokens but the model's context is 64 tokens")
    _shot(page, "inference_app_error.png")
    _generate(page, "the dog ", 6)  # the app still serves
    expect(page.locator("#generation-status")).to_contain_text("done: 6 new tokens")
    assert page.input_value("#output textarea") == _normalise("the dog " + _greedy(checkpoint, "the dog ", 6))


# ------------------------------------------------------------------------------------------- visualization app
def _heatmap_png(page) -> bytes:
    img = page.locator("#heatmap img")
    _expect()(img).to_be_visible()
    src = img.get_attribute("src")
    assert src.startswith("data:image/png;base64,")
    data = base64.b64decode(src.split(",", 1)[1])
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    return data


def _wait_new_heatmap(page, old: bytes) -> bytes:
    page.wait_for_function(
        "old => { const i = document.querySelector('#heatmap img'); return i && i.src.length > 0 && "
        "i.src.slice(-200) !== old; }", arg=base64.b64encode(old).decode()[-200:])
    return _heatmap_png(page)


def test_visualization_app_forward_pass_and_heat_maps(page, visualization_url, checkpoint):
    expect = _expect()
    _open(page, visualization_url)
    expect(page.locator("#model-status")).to_contain_text("Loaded DualAttnTransformerLM")
    page.fill("#prompt textarea", "the cat sat")
    page.click("#run-button")
    expect(page.locator("#run-status")).to_contain_text("forward pass done: 11 tokens, 2 layers")
    relations = _heatmap_png(page)
    table = page.locator("#token-table")
    expect(table).to_contain_text("symbol (head 1)")
    expect(table.locator("[role=grid]")).to_have_attribute("aria-rowcount", "12")  # header + 11 tokens
    expect(table).to_contain_text("␣")  # spaces are shown visibly
    page.get_by_label("Self-attention").check()
    expect(page.locator("#run-status")).to_contain_text("Self-attention, layer 0")
    sa = _wait_new_heatmap(page, relations)
    page.get_by_label("Relations × RA attention").check()
    expect(page.locator("#run-status")).to_contain_text("Relations × RA attention")
    _wait_new_heatmap(page, sa)
    _shot(page, "visualization_app.png")


def test_visualization_app_bad_inputs_show_messages_and_keep_serving(page, visualization_url, tmp_path,
                                                                     not_dat_checkpoint):
    expect = _expect()
    _open(page, visualization_url)
    page.fill("#prompt textarea", "y" * 80)
    page.click("#run-button")
    expect(page.locator("#run-status")).to_contain_text("the prompt has 80 tokens but the model's context is 64")
    _load(page, tmp_path / "missing")
    expect(page.locator("#model-status")).to_contain_text("does not exist")
    _load(page, not_dat_checkpoint)
    expect(page.locator("#model-status")).to_contain_text("is not a dual_attention model config")
    _shot(page, "visualization_app_error.png")
    page.fill("#prompt textarea", "a dog")  # the previously loaded model still serves
    page.click("#run-button")
    expect(page.locator("#run-status")).to_contain_text("forward pass done: 5 tokens")
    _heatmap_png(page)
