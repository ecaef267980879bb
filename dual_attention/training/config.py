"""Training configuration: four dataclass sections loaded from YAML, with dotted overrides.

A configuration is a :class:`Config` with the sections ``model`` (:class:`ModelConfig`), ``data``
(:class:`DataConfig`), ``optim`` (:class:`OptimConfig`) and ``train`` (:class:`TrainConfig`). It is built
from defaults, then a preset or a YAML file, then dotted overrides such as ``train.max_iters=100``::

    cfg = load_config("lm-tiny-dat", ["train.max_iters=100", "model.arch=transformer"])

Every value is type-checked against its field; an unknown key or a value of the wrong type raises
:class:`ConfigError` (a ``ValueError``) with one line that names the key and the allowed keys or values.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from dual_attention.errors import ConfigError
from dual_attention.symbol_retrieval import SYMBOL_RETRIEVERS

__all__ = [
    "ConfigError",
    "ModelConfig",
    "DataConfig",
    "OptimConfig",
    "TrainConfig",
    "Config",
    "SECTIONS",
    "CHOICES",
    "RANGES",
    "load_config",
    "config_from_dict",
    "apply_overrides",
    "config_to_dict",
    "save_config",
]


@dataclass
class ModelConfig:
    """Which model to build and its sizes.

    ``family`` selects the model family (``lm``, ``seq2seq``, ``vision``) and ``arch`` the architecture:
    ``dat`` (Dual Attention Transformer: ``n_heads_sa`` self-attention heads beside ``n_heads_ra``
    relational-attention heads) or ``transformer`` (the baseline with ``n_heads`` self-attention heads;
    by default ``n_heads = n_heads_sa + n_heads_ra``, so one flag switches a DAT config to its matching
    Transformer). Fields left ``None`` are derived: ``vocab_size`` from the tokenizer, ``image_shape`` and
    ``num_classes`` from the vision data, ``dff = 4 d_model``, ``n_symbols = max_block_size``,
    ``symbol_heads = n_heads_ra``. ``extra_kwargs`` is merged last into the constructor's keyword
    arguments (an escape hatch for options without a field, e.g. ``symbol_retriever_config``).

    Options from the authors' work after the paper: ``ra_type=hadamard`` (Hadamard dual attention; with
    ``symbol_retrieval=none`` it uses no symbols), ``qk_norm`` (RMS-normalised queries/keys, Hadamard only),
    ``symmetric_attn`` (W_k = W_q in the SA and RA heads), ``update_symbols_each_layer=false`` (symbols
    retrieved once from the embeddings). ``pos_enc_type`` applies to every family: ``RoPE``, or ``pos_emb``
    for the published encoding (learned for LM and vision, sinusoidal for seq2seq).
    """

    family: str = "lm"
    arch: str = "dat"
    d_model: int = 64
    n_layers: int = 2
    n_heads: int | None = None
    n_heads_sa: int = 2
    n_heads_ra: int = 2
    n_kv_heads: int | None = None
    n_relations: int | None = None
    rel_activation: str = "identity"
    symmetric_rels: bool = False
    symmetric_attn: bool = False
    qk_norm: bool = False
    update_symbols_each_layer: bool = True
    ra_type: str = "relational_attention"
    share_attn_params: bool = False
    symbol_retrieval: str = "symbolic_attention"
    n_symbols: int | None = None
    symbol_heads: int | None = None
    dff: int | None = None
    dropout: float = 0.0
    activation: str = "gelu"
    norm_first: bool = True
    norm_type: str = "layernorm"
    bias: bool = True
    # language model
    vocab_size: int | None = None
    max_block_size: int = 128
    pos_enc_type: str = "pos_emb"
    # seq2seq
    n_layers_dec: int | None = None
    n_heads_cross: int | None = None
    in_block_size: int | None = None
    out_block_size: int | None = None
    # vision
    image_shape: list[int] | None = None
    patch_size: list[int] = field(default_factory=lambda: [4, 4])
    num_classes: int | None = None
    pool: str = "cls"
    extra_kwargs: dict = field(default_factory=dict)


@dataclass
class DataConfig:
    """Where the data comes from.

    ``train``/``val``/``test`` are paths (or ``synthetic`` for a small generated task per family, or
    ``hf`` for a streamed Hugging Face dataset, LM only). Formats, chosen by ``format='auto'`` from the
    suffix: LM ``.txt`` (any text; tokenized with ``tokenizer``) or ``.bin`` (nanoGPT ``uint16`` token
    memmap) or ``hf`` (streamed from ``hf_dataset``; the first ``hf_val_docs`` documents are the
    validation split; needs the ``datasets`` package); seq2seq ``.tsv`` (``source<TAB>target`` per
    line) or ``source_file,target_file``; vision
    ``.pt`` (``{'images': [N,C,H,W], 'labels': [N]}``) or an image folder (``root/<class>/<image>``,
    needs Pillow). Without ``val``, the last ``val_fraction`` of ``train`` is held out.
    """

    train: str | None = None
    val: str | None = None
    test: str | None = None
    format: str = "auto"
    val_fraction: float = 0.1
    tokenizer: str = "byte"
    block_size: int | None = None
    synthetic_size: int = 4000
    hf_dataset: str = "HuggingFaceFW/fineweb-edu"
    hf_name: str | None = "sample-10BT"
    hf_split: str = "train"
    hf_text_field: str = "text"
    hf_val_docs: int = 200


@dataclass
class OptimConfig:
    """AdamW with linear warmup and cosine decay.

    lr(t) = lr_max (t+1)/warmup_iters for t < warmup_iters; then, with
    p = (t - warmup_iters)/(lr_decay_iters - warmup_iters) clipped to [0, 1],
    lr(t) = min_lr + (lr_max - min_lr) (1 + cos(pi p))/2  (``schedule='cosine'``),
    lr(t) = lr_max - (lr_max - min_lr) p  (``'linear'``) or lr(t) = lr_max (``'constant'``).
    ``min_lr`` defaults to lr_max/10 and ``lr_decay_iters`` to ``train.max_iters``.
    """

    learning_rate: float = 1e-3
    min_lr: float | None = None
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    warmup_iters: int = 100
    lr_decay_iters: int | None = None
    schedule: str = "cosine"


@dataclass
class TrainConfig:
    """The training loop.

    ``batch_size`` is the *global* batch per optimizer step (sequences or images), split into
    ``grad_accum_steps`` micro-batches and, under ``torchrun``, across processes: each process gets
    ``batch_size / (grad_accum_steps * world_size)`` examples per micro-step. ``out_dir=None`` means no
    run directory (nothing written; the CLI fills in ``runs/<name>``). ``eval_batch_size`` defaults to
    ``batch_size`` (evaluated in micro-batch-sized chunks). ``mc_eval_file`` (LM): a HellaSwag-format JSON-lines
    file scored at every evaluation (its first ``mc_eval_limit`` examples; see :mod:`.mc_eval`), logged as split
    ``mc`` with ``acc`` and ``acc_norm``. Checkpoints are written every
    ``checkpoint_interval`` steps, independently of evaluation; ``None`` (the default) means every
    ``ceil(max_iters / 10)`` steps, at most 1000 (a kill loses at most a tenth of the run), ``0`` only at
    the end; a stop (Ctrl-C, SIGTERM, a callback) and the end always write one. ``dtype='auto'`` is
    bfloat16 autocast on a GPU that supports it and float32 on the CPU (``bfloat16`` turns on CPU autocast).
    """

    out_dir: str | None = None
    max_iters: int = 1000
    batch_size: int = 32
    grad_accum_steps: int = 1
    eval_interval: int = 100
    eval_iters: int = 20
    eval_batch_size: int | None = None
    mc_eval_file: str | None = None
    mc_eval_limit: int | None = None
    log_interval: int = 10
    checkpoint_interval: int | None = None
    seed: int = 1337
    device: str = "auto"
    dtype: str = "auto"
    compile: bool = False
    fsdp: bool = False
    progress: bool = True
    tensorboard: bool = False
    wandb: bool = False
    wandb_project: str = "dual-attention"


@dataclass
class Config:
    """A full training configuration: ``name`` plus the four sections."""

    name: str = "run"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


#: section name -> dataclass
SECTIONS: dict[str, type] = {
    "model": ModelConfig,
    "data": DataConfig,
    "optim": OptimConfig,
    "train": TrainConfig,
}

#: dotted key -> allowed string values (checked by :func:`validate_config`)
CHOICES: dict[str, tuple[str, ...]] = {
    "model.family": ("lm", "seq2seq", "vision"),
    "model.arch": ("dat", "transformer"),
    "model.norm_type": ("layernorm", "rmsnorm", "none"),
    "model.ra_type": ("relational_attention", "rca", "disrca", "hadamard"),
    "model.symbol_retrieval": (*SYMBOL_RETRIEVERS, "none"),  # 'none': no symbols (ra_type=hadamard)
    "model.pos_enc_type": ("pos_emb", "RoPE"),
    "model.pool": ("cls", "mean"),
    "data.format": ("auto", "text", "bin", "tsv", "pt", "image_folder", "synthetic", "hf"),
    "data.tokenizer": ("byte", "gpt2"),
    "optim.schedule": ("cosine", "linear", "constant"),
    "train.dtype": ("auto", "float32", "bfloat16", "float16"),
}


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _type_name(tp: Any) -> str:
    if tp is type(None):
        return "null"
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is list:
        (arg,) = typing.get_args(tp) or (Any,)
        return f"list of {_type_name(arg)}"
    return getattr(tp, "__name__", str(tp))


def _coerce(key: str, value: Any, tp: Any) -> Any:
    """Return ``value`` converted to type ``tp`` or raise ConfigError naming ``key``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return _coerce_union(key, value, tp)
    if tp in _SCALARS:
        return _SCALARS[tp](key, value)
    if origin is list:
        return _coerce_list(key, value, tp)
    if tp is dict or origin is dict:
        return _coerce_dict(key, value)
    raise ConfigError(f"config key {key} has an unsupported type {tp!r}")  # pragma: no cover


def _coerce_union(key: str, value: Any, tp: Any) -> Any:
    """``None`` (or the text ``none``/``null``) where ``tp`` allows it, else the first member type that fits."""
    args = typing.get_args(tp)
    if type(None) in args and (value is None or (isinstance(value, str)
                                                 and value.strip().lower() in ("none", "null"))):
        return None
    for arg in (a for a in args if a is not type(None)):
        with contextlib.suppress(ConfigError):
            return _coerce(key, value, arg)
    raise ConfigError(f"config key {key} expects {_type_name(tp)}, got {value!r}")


def _to_bool(key: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "yes", "no", "1", "0"):
        return value.strip().lower() in ("true", "yes", "1")
    raise ConfigError(f"config key {key} expects bool (true/false), got {value!r}")


def _to_int(key: str, value: Any) -> int:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return _to_number(key, value, int, lambda text: int(text.replace("_", "")))


def _to_float(key: str, value: Any) -> float:
    if isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    return _to_number(key, value, float, float)


def _to_number(key: str, value: Any, kind: type, parse) -> Any:
    """``value`` if it is a ``kind`` (a bool is not a number here), else ``parse`` of its text."""
    if isinstance(value, kind) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        try:
            return parse(value.strip())
        except ValueError:
            pass
    raise ConfigError(f"config key {key} expects {kind.__name__}, got {value!r}")


def _to_str(key: str, value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    raise ConfigError(f"config key {key} expects str, got {value!r}")


_SCALARS = {bool: _to_bool, int: _to_int, float: _to_float, str: _to_str}


def _coerce_list(key: str, value: Any, tp: Any) -> list:
    """A list (or ``a,b`` / ``[a, b]`` text, or a tuple) with each item coerced to the item type."""
    (arg,) = typing.get_args(tp)
    if isinstance(value, str):
        value = [v for v in value.replace("[", "").replace("]", "").split(",") if v.strip()]
    if isinstance(value, tuple):
        value = list(value)
    if not isinstance(value, list):
        raise ConfigError(f"config key {key} expects {_type_name(tp)}, got {value!r}")
    return [_coerce(f"{key}[{i}]", v, arg) for i, v in enumerate(value)]


def _coerce_dict(key: str, value: Any) -> dict:
    """A mapping (or its YAML text)."""
    if isinstance(value, str):
        try:
            value = yaml.safe_load(value)
        except yaml.YAMLError:
            pass
    if not isinstance(value, dict):
        raise ConfigError(f"config key {key} expects a mapping, got {value!r}")
    return dict(value)


def _set_key(cfg: Config, key: str, value: Any, parse_str: bool = False) -> None:
    """Set the dotted ``key`` (``section.field`` or ``name``) on ``cfg`` after type-checking ``value``."""
    if key == "name":
        cfg.name = _coerce("name", value, str)
        return
    section, _, fname = key.partition(".")
    if section not in SECTIONS:
        raise ConfigError(
            f"unknown config key {key!r}: the top-level keys are name, {', '.join(SECTIONS)}"
        )
    cls = SECTIONS[section]
    ftypes = _field_types(cls)
    if fname not in ftypes:
        raise ConfigError(
            f"unknown config key {key!r}; allowed keys in {section}: {', '.join(ftypes)}"
        )
    if parse_str and isinstance(value, str):
        value = _parse_scalar(value)
    setattr(getattr(cfg, section), fname, _coerce(key, value, ftypes[fname]))


def _parse_scalar(text: str) -> Any:
    """Parse a command-line value as YAML (``100`` -> int, ``true`` -> bool), keeping odd text as str."""
    try:
        return yaml.safe_load(text) if text.strip() else text
    except yaml.YAMLError:
        return text


def config_from_dict(data: dict, base: Config | None = None, source: str = "config") -> Config:
    """Apply a nested dict ``{'model': {...}, 'train': {...}, 'name': ...}`` on top of ``base`` (or defaults)."""
    cfg = copy.deepcopy(base) if base is not None else Config()
    if not isinstance(data, dict):
        raise ConfigError(f"{source} must be a mapping with keys name, model, data, optim, train")
    for top, sub in data.items():
        if top == "name":
            _set_key(cfg, "name", sub)
            continue
        if top not in SECTIONS:
            raise ConfigError(
                f"unknown config key {top!r} in {source}: the top-level keys are name, {', '.join(SECTIONS)}"
            )
        if sub is None:
            continue
        if not isinstance(sub, dict):
            raise ConfigError(f"config section {top!r} in {source} must be a mapping, got {sub!r}")
        for k, v in sub.items():
            _set_key(cfg, f"{top}.{k}", v)
    return cfg


def apply_overrides(cfg: Config, overrides: list[str] | dict[str, Any]) -> Config:
    """Apply dotted overrides: ``["train.max_iters=100", "--model.arch=transformer"]`` or a dict."""
    items: list[tuple[str, Any, bool]] = []
    if isinstance(overrides, dict):
        items = [(k, v, False) for k, v in overrides.items()]
    else:
        for text in overrides:
            body = text[2:] if text.startswith("--") else text
            key, eq, value = body.partition("=")
            if not eq:
                raise ConfigError(f"override {text!r} must look like --section.key=value")
            items.append((key.strip(), value, True))
    for key, value, parse in items:
        _set_key(cfg, key, value, parse_str=parse)
    validate_config(cfg)
    return cfg


#: dotted key -> the range its value must lie in (``None`` is allowed where the field's type allows it)
RANGES: dict[str, str] = {
    **{f"model.{k}": "> 0" for k in ("d_model", "n_layers", "max_block_size", "n_heads", "n_kv_heads", "n_relations",
                                      "n_symbols", "symbol_heads", "dff", "vocab_size", "n_layers_dec",
                                      "n_heads_cross", "in_block_size", "out_block_size", "num_classes")},
    "model.n_heads_sa": ">= 0",
    "model.n_heads_ra": ">= 0",
    "model.dropout": "[0, 1)",
    "data.val_fraction": "[0, 1)",
    "data.block_size": "> 0",
    "data.synthetic_size": "> 0",
    "data.hf_val_docs": "> 0",
    "optim.learning_rate": "> 0",
    "optim.min_lr": ">= 0",
    "optim.weight_decay": ">= 0",
    "optim.beta1": "[0, 1)",
    "optim.beta2": "[0, 1)",
    "optim.grad_clip": ">= 0",
    "optim.warmup_iters": ">= 0",
    "optim.lr_decay_iters": "> 0",
    **{f"train.{k}": "> 0" for k in ("max_iters", "batch_size", "grad_accum_steps", "eval_iters",
                                      "eval_batch_size", "log_interval", "mc_eval_limit")},
    "train.eval_interval": ">= 0",
    "train.checkpoint_interval": ">= 0",
    "train.seed": ">= 0",
}

_IN_RANGE = {
    "> 0": lambda v: v > 0,
    ">= 0": lambda v: v >= 0,
    "[0, 1)": lambda v: 0 <= v < 1,
}

_DEVICE = re.compile(r"(auto|cpu|mps|cuda(:\d+)?)")


def _check_range(key: str, value: Any, rule: str) -> None:
    if value is None:
        return
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"config key {key} must be a finite number {rule}, got {value!r}")
    if not _IN_RANGE[rule](value):
        where = f"in {rule}" if rule.startswith("[") else rule
        raise ConfigError(f"config key {key} must be {where}, got {value!r}")


def validate_config(cfg: Config) -> None:
    """Check every field's range and string choices; raise ConfigError naming the key and what is allowed."""
    for key, allowed in CHOICES.items():
        section, fname = key.split(".")
        value = getattr(getattr(cfg, section), fname)
        if value not in allowed:
            raise ConfigError(f"config key {key}={value!r} is not one of: {', '.join(allowed)}")
    for key, rule in RANGES.items():
        section, fname = key.split(".")
        _check_range(key, getattr(getattr(cfg, section), fname), rule)
    m, o, t = cfg.model, cfg.optim, cfg.train
    for key, value, n in (("model.image_shape", m.image_shape, 3), ("model.patch_size", m.patch_size, 2)):
        if value is not None and (len(value) != n or min(value) < 1):
            raise ConfigError(f"config key {key} must be {n} positive integers, got {value!r}")
    if o.min_lr is not None and o.min_lr > o.learning_rate:
        raise ConfigError(f"config key optim.min_lr={o.min_lr!r} must be <= optim.learning_rate={o.learning_rate!r}")
    if not _DEVICE.fullmatch(t.device):
        raise ConfigError(f"config key train.device={t.device!r} is not one of: auto, cpu, cuda, cuda:N, mps")
    if t.batch_size % t.grad_accum_steps:
        raise ConfigError(
            f"train.batch_size={t.batch_size} must be divisible by train.grad_accum_steps={t.grad_accum_steps}"
        )
    if not cfg.name.strip():
        raise ConfigError(f"config key name must not be empty, got {cfg.name!r}")


def config_to_dict(cfg: Config) -> dict:
    """The nested plain-dict form (what ``config.yaml`` in a run directory holds)."""
    return {
        "name": cfg.name,
        **{name: dataclasses.asdict(getattr(cfg, name)) for name in SECTIONS},
    }


def save_config(cfg: Config, path: str | Path) -> None:
    """Write ``cfg`` as YAML."""
    Path(path).write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))


def read_yaml(path: str | Path) -> dict:
    """Read a YAML config file; ConfigError on a missing/unreadable/invalid file."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as e:
        raise ConfigError(f"cannot read config file {str(p)!r}: {e.strerror or e}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        line = getattr(getattr(e, "problem_mark", None), "line", None)
        where = f" (line {line + 1})" if line is not None else ""
        raise ConfigError(f"config file {str(p)!r} is not valid YAML{where}") from None
    return data or {}


def load_config(source: str | Path | dict | Config | None = None, overrides: list[str] | dict | None = None) -> Config:
    """Build a Config from a preset name, a YAML path, a dict or a Config, then apply ``overrides``.

    A YAML file may start from a preset with ``base: <preset name>``. A string that is neither an
    existing file nor a preset raises ConfigError listing the presets.
    """
    from dual_attention.training.presets import PRESETS, get_preset

    if source is None:
        cfg = Config()
    elif isinstance(source, Config):
        cfg = copy.deepcopy(source)
    elif isinstance(source, dict):
        cfg = config_from_dict(source)
    else:
        text = str(source)
        path = Path(text)
        if path.suffix.lower() in (".yaml", ".yml") or path.exists():
            if not path.exists():
                raise ConfigError(f"config file {text!r} does not exist")
            data = read_yaml(path)
            if not isinstance(data, dict):
                raise ConfigError(f"config file {text!r} must hold a mapping with keys name, model, data, ...")
            data = dict(data)
            base = data.pop("base", None)
            cfg = get_preset(base) if base else Config()
            data.setdefault("name", path.stem)
            cfg = config_from_dict(data, base=cfg, source=f"config file {text!r}")
        elif text in PRESETS:
            cfg = get_preset(text)
        else:
            raise ConfigError(
                f"{text!r} is neither a config file nor a preset; presets: {', '.join(PRESETS)}"
            )
    if overrides:
        apply_overrides(cfg, overrides)
    validate_config(cfg)
    return cfg
