"""Shared material for the retrieval tests: a tiny random-init sentence encoder, a tiny KB and
QA set, and a project folder whose params.yaml points the retrieval stages at them.

The encoder is a 2-layer BERT with 32 hidden units and a WordPiece vocabulary made of the KB's
words: it knows nothing, but it is a real sentence-transformers model that loads, encodes,
saves and fingerprints like MiniLM, in well under a second and offline.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
import yaml
from sentence_transformers import SentenceTransformer
from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer
from transformers import BertConfig, BertModel, BertTokenizer

from tasks.lib.core.config import IndexParams
from tasks.lib.core.io import write_jsonl
from tasks.lib.core.records import Doc

REPO = Path(__file__).resolve().parents[2]
HIDDEN = 32

TOPICS = [
    ("Glacier", "A glacier is a slow river of ice formed from compacted snow over centuries."),
    ("Volcano", "A volcano vents molten rock, ash and gases from a magma chamber below the crust."),
    ("Lighthouse", "A lighthouse guides ships along dangerous coasts with a rotating lamp."),
    ("Telescope", "A telescope gathers light with lenses or mirrors to observe distant stars."),
    ("Orchard", "An orchard is a planting of fruit trees such as apples, pears and plums."),
    ("Violin", "The violin is a bowed string instrument with four strings tuned in fifths."),
    ("Pyramid", "The pyramids of Giza are ancient tombs built for pharaohs of Egypt."),
    ("Honeybee", "The honeybee collects nectar and pollen and stores honey in wax combs."),
    ("Chess", "Chess is a board game for two players who move kings, queens and pawns."),
    ("Penicillin", "Penicillin is an antibiotic discovered by Alexander Fleming in mould."),
    ("Saturn", "Saturn is the sixth planet from the Sun and is known for its bright rings."),
    ("Bicycle", "A bicycle is a pedal driven vehicle with two wheels and a chain drive."),
    ("Volleyball", "Volleyball is a team sport where players hit a ball over a high net."),
    ("Compass", "A compass shows direction with a magnetised needle that points north."),
    ("Coral reef", "A coral reef is an underwater ecosystem built by colonies of tiny polyps."),
    ("Printing press", "The printing press of Gutenberg made books cheap across Europe."),
    ("Tea", "Tea is an aromatic drink brewed from the cured leaves of the tea plant."),
    ("Desert", "A desert receives very little rain, like the vast Sahara in Africa."),
    ("Submarine", "A submarine is a ship that can dive and travel beneath the ocean waves."),
    ("Windmill", "A windmill turns the energy of wind into rotation to grind grain."),
    ("Origami", "Origami is the Japanese art of folding paper into animals and shapes."),
    ("Thunderstorm", "A thunderstorm brings lightning, thunder, heavy rain and strong gusts."),
    ("Cheese", "Cheese is a dairy food made by curdling milk with rennet and aging it."),
    ("Marathon", "The marathon is a long running race of about forty two kilometres."),
]

# Questions whose gold doc shares a distinctive word with the question (BM25 can find them).
QUESTIONS = [
    ("What slow river of ice forms from snow?", "Glacier"),
    ("What vents molten rock and ash?", "Volcano"),
    ("What guides ships with a rotating lamp?", "Lighthouse"),
    ("Which planet has bright rings?", "Saturn"),
    ("Who discovered the antibiotic penicillin?", "Penicillin"),
    ("What stores honey in wax combs?", "Honeybee"),
    ("What instrument has four strings tuned in fifths?", "Violin"),
    ("Which vehicle has a chain drive and pedals?", "Bicycle"),
    ("What art folds paper into animals?", "Origami"),
    ("Which race is forty two kilometres long?", "Marathon"),
    ("What grinds grain with wind?", "Windmill"),
    ("What made books cheap across Europe?", "Printing press"),
]


def tiny_docs() -> list[Doc]:
    return [
        Doc(id=title.lower().replace(" ", "_"), title=title, text=text, source="tests")
        for title, text in TOPICS
    ]


def tiny_qa() -> dict[str, list[dict[str, Any]]]:
    """dev and test splits (and a train split, which the stages do not read)."""
    rows = [
        {
            "id": f"q{i}",
            "question": question,
            "answers": [title],
            "doc_ids": [title.lower().replace(" ", "_")],
            "group": f"g{i}",
        }
        for i, (question, title) in enumerate(QUESTIONS)
    ]
    return {"train": rows[:2], "dev": rows[2:7], "test": rows[7:]}


def make_tiny_encoder(folder: Path, seed: int = 0) -> Path:
    """A random-init 2-layer BERT + mean pooling + normalization, saved as a ST folder."""
    words = {w for _, text in TOPICS + QUESTIONS for w in re.findall(r"\w+", text.lower())}
    words |= {w for title, _ in TOPICS for w in re.findall(r"\w+", title.lower())}
    raw = folder / f"raw_{seed}"
    raw.mkdir(parents=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", ",", "?", *sorted(words)]
    (raw / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    tokenizer = BertTokenizer(vocab=str(raw / "vocab.txt"), do_lower_case=True)  # WordPiece
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=HIDDEN,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    BertModel(config).save_pretrained(raw)
    tokenizer.save_pretrained(raw)
    transformer = Transformer(str(raw), max_seq_length=64)
    model = SentenceTransformer(
        modules=[transformer, Pooling(HIDDEN, "mean"), Normalize()], device="cpu"
    )
    out = folder / f"encoder_{seed}"
    model.save(str(out))
    return out


def repo_params() -> dict[str, Any]:
    return yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))


def tiny_index_params(**faiss_overrides: Any) -> IndexParams:
    """The repo's `index` section, with faiss settings a 24-doc KB can train."""
    section = repo_params()["index"]
    section["faiss"] |= {"ivf_nlist": 2, "ivf_nprobe": 2, "pq_m": 4, "pq_nbits": 4}
    section["faiss"] |= faiss_overrides
    return IndexParams.model_validate(section)


def build_tiny_index(encoder: Path, out: Path) -> Path:
    """The index stage's library call over the tiny KB with `encoder`, cached beside `out`."""
    from tasks.lib.retrieval.embedding_cache import EmbeddingCache
    from tasks.lib.retrieval.encoder import Embedder, load_encoder
    from tasks.lib.retrieval.index_store import build_index

    embedder = Embedder(load_encoder(str(encoder), Path()), "fp32")
    with EmbeddingCache(out.parent / f"{out.name}.cache") as cache:
        build_index(tiny_docs(), embedder, str(encoder), cache, tiny_index_params(), out, False)
    return out


def make_retrieval_project(root: Path, encoder: Path) -> Path:
    """A project folder: the repo's params.yaml with the retrieval paths and encoder pointed at
    the tiny KB, QA and encoder, and a smaller tuning grid and bootstrap. Returns params.yaml."""
    write_jsonl(root / "kb.jsonl", tiny_docs())
    for split, rows in tiny_qa().items():
        write_jsonl(root / "qa" / f"{split}.jsonl", rows)
    params = repo_params()
    params["paths"] |= {
        "retrieval_docs": "kb.jsonl",
        "retrieval_qa_dir": "qa",
        "embedding_cache": "cache/embeddings",
        "index_dir": "index",
        "tune_retrieval_dir": "tune",
        "fusion": "tune/fusion.json",
        "retrieval_eval_dir": "eval",
    }
    params["index"]["encoder"] = str(encoder)
    params["retrieval"]["candidates"] = 10
    params["tune_retrieval"] |= {"rrf_k": [1, 60], "dense_weight": [0.2, 0.5, 0.8]}
    params["evaluate_retrieval"] |= {"bootstrap_resamples": 200, "curve_depth": 5}
    params_file = root / "params.yaml"
    params_file.write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")
    return params_file
