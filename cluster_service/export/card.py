"""The data card (README.md) beside an exported dataset: what it is, where it came from, under which
licence, how to load it and how to cite the method. Its YAML front matter names the files per
config, so ``datasets.load_dataset(FOLDER, "concepts")`` finds them."""

from __future__ import annotations

import json
from typing import Any

from ..store import RunStore
from .concepts import LabelledTable

CITATION = """@inproceedings{mousi-etal-2023-llms,
  title = {Can {LLM}s Facilitate Interpretation of Pre-trained Language Models?},
  author = {Mousi, Basel and Durrani, Nadir and Dalvi, Fahim},
  booktitle = {Proceedings of the 2023 Conference on Empirical Methods in Natural Language Processing},
  year = {2023}, note = {arXiv:2305.13386}
}
@inproceedings{dalvi2022discovering,
  title = {Discovering Latent Concepts Learned in {BERT}},
  author = {Dalvi, Fahim and Khan, Abdul Rafae and Alam, Firoj and Durrani, Nadir and Xu, Jia and Sajjad, Hassan},
  booktitle = {International Conference on Learning Representations}, year = {2022}
}"""

DEMO_LICENCE = ("WordNet 3.0's usage examples (Debian's `wordnet-base`), © Princeton University under the "
                "WordNet 3.0 licence (permissive, BSD-like): keep its notice with the data "
                "(`data/demo/WORDNET_LICENSE` in the cluster_service repository).")
UNKNOWN_LICENCE = ("Not recorded by the run: the corpus was the user's own file. State its licence here "
                   "before publishing this dataset.")


def _licence(manifest: dict[str, Any]) -> str:
    corpus = manifest.get("config", {}).get("corpus")
    if corpus is not None and not corpus.get("path"):
        return DEMO_LICENCE
    return UNKNOWN_LICENCE


def data_card(store: RunStore, fmt: str, tables: list[LabelledTable], rows: dict[str, int]) -> str:
    manifest = store.read_manifest()
    config = manifest.get("config", {})
    model = manifest.get("model", {}).get("name") or "not recorded (an imported clustering)"
    front = ["---", "configs:"]
    for name in rows:
        front += [f"- config_name: {name}", f"  data_files: {name}.{fmt}"]
    front.append("---")
    labelled = sorted({a for t in tables for a in t.labels})
    analysis = sorted({a for t in tables for a in t.analysis})
    body = [
        "# Latent concepts", "",
        f"Latent concepts of **{model}** found with cluster_service (ConceptX-style Ward clustering of each "
        "layer's contextual word vectors), labelled by " + (", ".join(f"`{a}`" for a in labelled) or "no annotator")
        + ".", "",
        "## Files", "",
        f"- `concepts.{fmt}` ({rows['concepts']} rows): one row per concept: layer, k, concept, label (the default "
        "annotator's), annotator, labels (every annotator's), label_type, size, words (every member occurrence), "
        "top_types, examples (in context), parent (concept at the next smaller K) and children (at the next larger K)"
        + (f", and the analysis columns of {', '.join(analysis)}" if analysis else "; no analysis had been run") + ".",
        f"- `tokens.{fmt}` ({rows['tokens']} rows): one row per word occurrence (row, sentence_id, position, word, "
        "occurrence: ConceptX's running count of the word type) and its concept in every table, as columns "
        + ", ".join(f"`layer{t.layer}_k{t.k}`" for t in tables) + ".",
        f"- `sentences.{fmt}` ({rows['sentences']} rows): sentence_id, text (words joined by single spaces; "
        "`position` indexes `text.split(' ')`).", "",
        "Load with pandas (`" + (f"pd.read_parquet('concepts.{fmt}')" if fmt == "parquet"
                                 else f"pd.read_json('concepts.{fmt}', lines=True)")
        + "`), pyarrow, or `datasets.load_dataset(FOLDER, 'concepts')`.",
        "", "## Source", "",
        f"- Model: {model}" + (f" ({manifest['model'].get('hidden_size')} dims)" if manifest.get("model", {}).get(
            "hidden_size") else ""),
        f"- Layers: {', '.join(str(t.layer) for t in tables)}; K: {', '.join(sorted({str(t.k) for t in tables}))}",
        f"- Corpus: {manifest.get('sentences')} sentences, {manifest.get('tokens')} tokens; fingerprint "
        f"{manifest.get('corpus_fingerprint') or manifest.get('imported', {}).get('fingerprint')}",
        "", "## Settings", "", "```json", json.dumps(config, indent=1, sort_keys=True), "```", "",
        "## Licence of the corpus", "", _licence(manifest), "",
        "## How to cite", "", "```bibtex", CITATION, "```", "",
    ]
    return "\n".join(front + [""] + body)
