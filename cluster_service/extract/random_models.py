"""``random:`` model specs: untrained networks of a named shape, for work where no weights can be fetched.

The paper's five models (bert-base-cased, roberta-base, xlm-roberta-base, albert-base-v2,
xlnet-base-cased) at full size for throughput and storage planning, and ``tiny-<arch>`` versions of
each (2 layers, 32 wide) for tests. All share the packaged MiniLM's WordPiece tokenizer (the 30,522-
word BERT vocabulary), so each config's ``vocab_size`` and special ids are set to match it; the
vectors mean nothing, but every shape, layer count and attention kind is the real one.
"""

from __future__ import annotations

from typing import Any

#: vocabulary of the packaged tokenizer every random model reads through ([PAD] = 0)
VOCAB = {"vocab_size": 30522, "pad_token_id": 0}
BASE = {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072}
# tiny shapes start from wider weights than the standard 0.02, so that attention is far from uniform
# and a word's vector depends on its context as it does in a trained model (tests rely on that)
TINY = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64,
        "max_position_embeddings": 130, "initializer_range": 0.2}

#: spec name -> (transformers config class name, keyword arguments)
SHAPES: dict[str, tuple[str, dict[str, Any]]] = {
    "bert-base": ("BertConfig", {}),
    "bert-large": ("BertConfig", {"hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16,
                                  "intermediate_size": 4096}),
    "bert-base-cased": ("BertConfig", BASE),
    "roberta-base": ("RobertaConfig", {**BASE, "max_position_embeddings": 514, "type_vocab_size": 1}),
    "xlm-roberta-base": ("XLMRobertaConfig", {**BASE, "max_position_embeddings": 514, "type_vocab_size": 1}),
    "albert-base-v2": ("AlbertConfig", {**BASE, "embedding_size": 128}),
    "xlnet-base-cased": ("XLNetConfig", {"d_model": 768, "n_layer": 12, "n_head": 12, "d_inner": 3072}),
    "tiny-bert": ("BertConfig", TINY),
    "tiny-roberta": ("RobertaConfig", {**TINY, "type_vocab_size": 1}),
    "tiny-xlm-roberta": ("XLMRobertaConfig", {**TINY, "type_vocab_size": 1}),
    "tiny-albert": ("AlbertConfig", {**TINY, "embedding_size": 16}),
    "tiny-xlnet": ("XLNetConfig", {"d_model": 32, "n_layer": 2, "n_head": 2, "d_inner": 64, "initializer_range": 0.2}),
    "tiny-gpt2": ("GPT2Config", {"n_embd": 32, "n_layer": 2, "n_head": 2, "n_positions": 128,
                                 "initializer_range": 0.2}),
}


def shape_config(spec: str):
    """The config of a named shape, or None when ``spec`` names none."""
    import transformers

    if spec not in SHAPES:
        return None
    cls_name, kwargs = SHAPES[spec]
    cls = getattr(transformers, cls_name)
    extra = dict(VOCAB)
    if cls_name == "GPT2Config":
        extra.update(bos_token_id=101, eos_token_id=102)  # [CLS] / [SEP] of the shared vocabulary
    return cls(**{**extra, **kwargs})
