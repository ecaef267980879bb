"""One error hierarchy: every error class of the package is a DualAttentionError with its built-in base kept, the
library passes messages on whole, and the command line prints every one as the same single line."""

from __future__ import annotations

import ast
import importlib
import json
from pathlib import Path

import pytest
import torch

import dual_attention
from dual_attention import errors
from dual_attention.cli import main
from dual_attention.errors import CheckpointError, CLIError, DataError, DualAttentionError

PACKAGE = Path(dual_attention.__file__).parent

#: class -> (built-in base its callers catch, modules it is importable from as before)
CLASSES = {
    "ConfigError": (ValueError, ["dual_attention.training.config", "dual_attention.training"]),
    "DataError": (ValueError, ["dual_attention.training.tokenizers", "dual_attention.training.data",
                               "dual_attention.training"]),
    "CheckpointError": (ValueError, ["dual_attention.training.checkpoint", "dual_attention.hf",
                                     "dual_attention.training"]),
    "RunDirError": (ValueError, ["dual_attention.training.trainer", "dual_attention.training"]),
    "VizInputError": (ValueError, ["dual_attention.model_analysis.viz"]),
    "MissingExtraError": (ImportError, ["dual_attention.integrations"]),
    "AppError": (Exception, ["dual_attention.model_analysis.app_common"]),
    "CLIError": (Exception, ["dual_attention.cli"]),
    "UnsupportedConfigError": (NotImplementedError, ["dual_attention.language_models"]),
}


@pytest.mark.parametrize("name", sorted(CLASSES))
def test_each_error_is_one_class_with_its_builtin_base(name):
    base, modules = CLASSES[name]
    cls = getattr(errors, name)
    assert issubclass(cls, DualAttentionError) and issubclass(cls, base)
    for module in modules:
        assert getattr(importlib.import_module(module), name) is cls, module
    assert isinstance(cls("m"), DualAttentionError)


def test_lm_eval_task_error_is_a_package_error():
    pytest.importorskip("lm_eval")
    from dual_attention.integrations.lm_eval_backend import TaskError

    assert TaskError is errors.TaskError and issubclass(TaskError, ValueError)


def test_no_error_class_is_defined_outside_errors_py():
    """Every exception class of the package lives in errors.py (so there is one CheckpointError, one base)."""
    found = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and any(
                    getattr(b, "id", getattr(b, "attr", "")).endswith(("Error", "Exception")) for b in node.bases):
                found.append((path.relative_to(PACKAGE).as_posix(), node.name))
    outside = {(f, n) for f, n in found if f != "errors.py"}
    assert not outside
    assert {n for f, n in found if f == "errors.py"} == set(errors.__all__) - {"message_of"}


def _checkpoint(tmp_path) -> Path:
    from dual_attention.hf import TransformerLM_HFHub

    model = TransformerLM_HFHub(vocab_size=256, d_model=16, n_layers=1, n_heads=2, dff=32, dropout_rate=0.0,
                                activation="gelu", norm_first=True, max_block_size=8)
    model.save_pretrained(tmp_path / "ckpt")
    return tmp_path / "ckpt"


LONG = "x" * 400 + " the end of the first line\nand a second line"


def test_library_passes_a_long_message_on_whole(tmp_path, monkeypatch):
    import safetensors.torch

    from dual_attention.hf import load_pretrained

    ckpt = _checkpoint(tmp_path)

    def broken(*args, **kwargs):
        raise RuntimeError(LONG)

    monkeypatch.setattr(safetensors.torch, "load_file", broken)
    with pytest.raises(CheckpointError) as info:
        load_pretrained(ckpt)
    assert LONG in str(info.value)


def test_cli_prints_one_line_once(tmp_path, monkeypatch, capsys):
    from dual_attention.training import inference

    def fail(*args, **kwargs):
        raise DataError(LONG)

    monkeypatch.setattr(inference, "evaluate_checkpoint", fail)
    rc = main(["eval", str(tmp_path), "--data", "synthetic"])
    err = capsys.readouterr().err
    assert rc == 2 and err == f"dat eval: error: {LONG.replace(chr(10), '; ')}\n"
    monkeypatch.setenv("RANK", "1")  # under torchrun only rank 0 says it
    assert main(["eval", str(tmp_path), "--data", "synthetic"]) == 2 and capsys.readouterr().err == ""


def test_cli_prints_package_errors_raised_outside_the_library_calls(tmp_path, monkeypatch, capsys):
    """A MissingExtraError at import, a CLIError from a flag: the same one line, exit 2."""
    from dual_attention import integrations

    def missing(module, feature):
        raise errors.MissingExtraError(f"{feature} needs the 'transformers' package: pip install x")

    monkeypatch.setattr(integrations, "require", missing)
    monkeypatch.delitem(__import__("sys").modules, "dual_attention.integrations.hf_transformers", raising=False)
    monkeypatch.delitem(__import__("sys").modules, "dual_attention.integrations.hf_transformers.export",
                        raising=False)
    rc = main(["export", "hf", str(_checkpoint(tmp_path)), str(tmp_path / "out")])
    lines = capsys.readouterr().err.splitlines()
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("dat export: error: ") and "pip install x" in lines[0]
    assert issubclass(CLIError, DualAttentionError)
    rc = main(["eval", str(tmp_path), "--data", "synthetic", "--batch-size", "0"])
    assert rc == 2 and capsys.readouterr().err == (
        "dat eval: error: --batch-size and --max-batches must be >= 1, got 0, 50\n")


def test_evaluate_checkpoint_json_is_unchanged_by_the_policy(tmp_path, capsys):
    """The error policy does not touch successful output: --json prints one JSON object."""
    ckpt = _checkpoint(tmp_path)
    (tmp_path / "t.txt").write_text("0123456789" * 10)
    assert main(["eval", str(ckpt), "--data", str(tmp_path / "t.txt"), "--json", "--max-batches", "1"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out) == {"checkpoint", "data", "loss", "ppl", "acc"} and torch.isfinite(torch.tensor(out["loss"]))
