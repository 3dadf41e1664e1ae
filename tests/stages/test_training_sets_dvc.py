"""DVC retrains the retriever exactly when its training set's bytes change: a real `dvc repro` of
ingest -> validate -> dedup -> index -> kb_questions (which writes the QA splits) ->
retriever_training_set -> finetune_retriever.

The encoder makes the premise hold by construction: a bag of words (a 0-layer BERT, so a token's
vector is its layer-normalised word embedding and a text's the mean) whose KB words share one
direction and whose "alien" words point the other way. A doc of alien words then scores about
-1 against every question, below every KB doc: it enters no mining window and no dev candidate
list. Golds rank first, so every pair's negative is mined and no random fill (a draw that
depends on the KB's length) is made.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from sentence_transformers import SentenceTransformer
from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer
from transformers import BertConfig, BertModel, BertTokenizer

from tasks.lib.core.config import load_params
from tasks.lib.core.io import write_jsonl
from tests.support.projects import dvc, init_dvc_project, make_project, ran_stages
from tests.support.retrieval import QUESTIONS, TOPICS, tiny_docs, tiny_qa
from tests.support.tiny_generator import make_tiny_generator

STAGES = (
    "ingest",
    "validate",
    "dedup",
    "index",
    "feedback_export",  # kb_questions reads its export (empty here)
    "kb_questions",
    "retriever_training_set",
    "finetune_retriever",
)
ALIEN = {"id": "zorblat", "title": "Zorblat", "text": "Zorblat quuxite flimflam wuggle snarf."}
HIDDEN = 32


def words(text: str) -> set[str]:
    return set(re.findall(r"\w+", text.lower()))


def make_bag_of_words_encoder(folder: Path) -> Path:
    """A sentence-transformers folder: mean of word vectors, alien words opposite to KB words."""
    known = set().union(*(words(f"{title} {text}") for title, text in TOPICS + QUESTIONS))
    alien = words(f"{ALIEN['title']} {ALIEN['text']}")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", ",", "?"]
    vocab += sorted(known) + sorted(alien - known)
    raw = folder / "raw"
    raw.mkdir(parents=True)
    (raw / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=HIDDEN,
        num_hidden_layers=0,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    model = BertModel(config)
    shared = torch.tensor([1.0, -1.0] * (HIDDEN // 2))  # zero mean: layer norm keeps it
    generator = torch.Generator().manual_seed(0)
    vectors = torch.zeros(len(vocab), HIDDEN)  # specials and punctuation add nothing
    for row, word in enumerate(vocab):
        if word in known:
            vectors[row] = torch.randn(HIDDEN, generator=generator) + 4 * shared
        elif word in alien:
            vectors[row] = -shared
    with torch.no_grad():
        model.embeddings.word_embeddings.weight.copy_(vectors)
        model.embeddings.position_embeddings.weight.zero_()
        model.embeddings.token_type_embeddings.weight.zero_()
    model.save_pretrained(raw)
    BertTokenizer(vocab=str(raw / "vocab.txt"), do_lower_case=True).save_pretrained(raw)
    encoder = SentenceTransformer(
        modules=[Transformer(str(raw), max_seq_length=64), Pooling(HIDDEN, "mean"), Normalize()],
        device="cpu",
    )
    encoder.save(str(folder / "encoder"))
    return folder / "encoder"


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The retrieval fixtures' KB and questions as a KB folder, the encoder above, one epoch."""
    root = tmp_path_factory.mktemp("training_sets_dvc")
    # Descriptions, so kb_questions makes description questions (the generator stays unused).
    described = [
        d.model_copy(update={"description": d.text.split(" is ")[-1]}) for d in tiny_docs()
    ]
    write_jsonl(root / "my_kb/docs.jsonl", described)
    write_jsonl(root / "my_qa/qa.jsonl", [row for rows in tiny_qa().values() for row in rows])
    make_tiny_generator(root / "models/generator")
    params_file = make_project(
        root,
        source="packaged",  # writes no KB of its own: ingest reads the one written above
        ingest__source="folder",
        ingest__kb_folder="my_kb",
        ingest__qa_folder="my_qa",
        index__encoder=str(make_bag_of_words_encoder(root / "models")),
        paths__generator_base_dir="models/generator",  # a kb_questions dep, unused here
        kb_questions__n_train=4,
        kb_questions__n_dev=2,
        kb_questions__n_heldout=4,
        kb_questions__max_words=20,
        finetune_retriever__use_synthetic=False,
        finetune_retriever__epochs=1,
        finetune_retriever__batch_size=4,
        finetune_retriever__eval_corpus=1,  # the dev gold + candidates: no random fill
        finetune_retriever__negatives={
            "count": 1,
            "range_min": 0,
            "range_max": 8,
            "margin_type": "absolute",
            "margin": 0.0,
        },
    )
    synthetic = load_params(params_file).paths.synthetic_queries
    synthetic.parent.mkdir(parents=True)
    synthetic.write_text("", encoding="utf-8")  # synthesize_queries' empty output: unused
    init_dvc_project(root, STAGES)
    return root


def test_a_doc_no_pair_touches_rebuilds_the_set_but_skips_training(project: Path) -> None:
    paths = load_params(project / "params.yaml").paths
    first = dvc(project, "repro")
    assert ran_stages(first.stdout) == list(STAGES)
    mining = json.loads((paths.retriever_training_set_dir / "metrics.json").read_text())["mining"]
    assert mining["mined"] > 0 and mining["random_filled"] == 0  # the premise, see the docstring
    training_set = paths.retriever_training_set.read_bytes()
    model = (paths.retriever_model / "model.safetensors").read_bytes()

    write_jsonl(project / "data/sources/updates/alien.jsonl", [ALIEN | {"source": "feed"}])
    second = dvc(project, "repro")

    assert ran_stages(second.stdout) == list(STAGES[:-1])
    assert "Stage 'finetune_retriever' didn't change, skipping" in second.stdout
    assert ALIEN["id"] in paths.retrieval_docs.read_text(encoding="utf-8")  # indexed, mined against
    assert paths.retriever_training_set.read_bytes() == training_set
    assert (paths.retriever_model / "model.safetensors").read_bytes() == model
    assert "up to date" in dvc(project, "status", "finetune_retriever").stdout


def changed_stages(project: Path, section: str, key: str, value: object) -> list[str]:
    """Set params `section.key` and return the stages `dvc status` finds changed."""
    params_file = project / "params.yaml"
    params = yaml.safe_load(params_file.read_text(encoding="utf-8"))
    params[section][key] = value
    params_file.write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")
    return sorted(stale(project))


def stale(project: Path) -> dict[str, list]:
    """`dvc status`, but for the always_changed stages (feedback_export), which it lists and
    `dvc repro` runs whatever changed."""
    stages = yaml.safe_load((project / "dvc.yaml").read_text(encoding="utf-8"))["stages"]
    status = json.loads(dvc(project, "status", "--json").stdout)
    return {name: why for name, why in status.items() if not stages[name].get("always_changed")}


def test_each_knob_reaches_only_the_stage_that_reads_it(project: Path) -> None:
    params = yaml.safe_load((project / "params.yaml").read_text(encoding="utf-8"))
    tune = params["finetune_retriever"]
    assert changed_stages(project, "finetune_retriever", "epochs", 2) == ["finetune_retriever"]
    changed_stages(project, "finetune_retriever", "epochs", tune["epochs"])
    in_batch_only = tune["negatives"] | {"count": 0}
    assert changed_stages(project, "finetune_retriever", "negatives", in_batch_only) == [
        "retriever_training_set"
    ]
    # Without negatives the set's bytes change, and that alone makes the training stale.
    assert ran_stages(dvc(project, "repro", "retriever_training_set").stdout) == [
        "feedback_export",  # always runs; its output unchanged, nothing after it reran for it
        "retriever_training_set",
    ]
    training_set = load_params(project / "params.yaml").paths.retriever_training_set
    assert stale(project) == {
        "finetune_retriever": [
            {"changed deps": {str(training_set.relative_to(project)): "modified"}}
        ]
    }


def test_a_killed_repro_resumes_training_on_the_next_repro(project: Path) -> None:
    """`dvc repro` killed with the stage (SIGKILL to the process group, as `timeout -s KILL`
    sends it) once a checkpoint is on disk: DVC leaves the checkpoints alone (not an out), and
    the next `dvc repro` resumes from them and ends with the stage up to date."""
    params_file = project / "params.yaml"
    params = yaml.safe_load(params_file.read_text(encoding="utf-8"))
    params["finetune_retriever"] |= {"epochs": 10, "eval_steps": 1}  # long enough to be killed
    params_file.write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")
    checkpoints = load_params(params_file).paths.checkpoints_dir / "finetune_retriever"
    env = os.environ | {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    repro = [sys.executable, "-m", "dvc", "repro", "finetune_retriever"]
    process = subprocess.Popen(repro, cwd=project, env=env, start_new_session=True)
    deadline = time.monotonic() + 300
    while not list(checkpoints.glob("*/checkpoint-*/trainer_state.json")):
        assert process.poll() is None and time.monotonic() < deadline, "no checkpoint was saved"
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    assert process.wait(timeout=60) == -signal.SIGKILL

    rerun = dvc(project, "repro", "finetune_retriever")
    assert re.search(r"finetune_retriever: resuming from checkpoint-\d+ \(step", rerun.stdout)
    assert not checkpoints.exists()
    assert "up to date" in dvc(project, "status", "finetune_retriever").stdout
