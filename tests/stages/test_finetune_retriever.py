"""Retriever fine-tuning on a tiny random-init encoder: mining never offers a gold doc, the
training set carries everything training reads (as text, byte-identical on a rerun), the stage
trains offline from that set alone in the precision the CPU resolves, stops early when the dev
score stalls, and the saved encoder reloads with a fingerprint of its own."""

from __future__ import annotations

import json
import re
import shutil
import socket
from pathlib import Path
from typing import Any, NamedTuple

import pytest
import torch
import yaml
from safetensors.torch import load_file
from sentence_transformers import SentenceTransformer
from transformers import TrainerCallback

from tasks import compare_retrievers, index, retriever_training_set, tune_retrieval
from tasks import finetune_retriever as ft
from tasks.lib.core.config import HardNegativesParams, load_params
from tasks.lib.core.io import InputError, write_jsonl
from tasks.lib.core.precision import CPU_BF16_ENV
from tasks.lib.core.records import QARecord, read_qa
from tasks.lib.retrieval import training_set as ts
from tasks.lib.retrieval.encoder import encoder_fingerprint, load_encoder
from tasks.lib.retrieval.index_store import passage_text
from tasks.lib.retrieval.retriever import Fusion, Retriever
from tests.support.interrupt import (
    Interrupted,
    every_trainer_calls,
    kill_after_checkpoint,
    raise_after_checkpoint,
)
from tests.support.projects import moved_away
from tests.support.retrieval import make_retrieval_project, make_tiny_encoder, tiny_docs

TRAIN = [
    ("What is brewed from cured leaves?", ["tea"]),
    ("Which dairy food is made by curdling milk?", ["cheese"]),
    ("What dives beneath the ocean waves?", ["submarine"]),
    ("What brings lightning and thunder?", ["thunderstorm"]),
    ("Which board game has kings and pawns?", ["chess"]),
    ("What receives very little rain?", ["desert"]),
    ("Which sport hits a ball over a net?", ["volleyball"]),
    ("What points north with a needle?", ["compass"]),
    ("Which things are built by polyps or fold paper?", ["coral_reef", "origami"]),
    ("What observes distant stars, and what guides ships?", ["telescope", "lighthouse"]),
]
SYNTHETIC = [("What grows apples, pears and plums?", "orchard")]
MULTI_GOLD = {"coral_reef", "origami"}


def qa_row(i: int, question: str, doc_ids: list[str], prefix: str = "t") -> dict[str, Any]:
    return {
        "id": f"{prefix}{i}",
        "question": question,
        "answers": [],
        "doc_ids": doc_ids,
        "group": f"{prefix}{i}",
    }


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The retrieval fixture project, a richer train split, one synthetic question, the base
    index built, and training sized to a few seconds."""
    root = tmp_path_factory.mktemp("finetune")
    params_file = make_retrieval_project(root, make_tiny_encoder(root))
    write_jsonl(root / "qa/train.jsonl", [qa_row(i, q, d) for i, (q, d) in enumerate(TRAIN)])
    write_jsonl(
        root / "synthetic/queries.jsonl",
        [qa_row(i, q, [d], "syn:") for i, (q, d) in enumerate(SYNTHETIC)],
    )
    params = yaml.safe_load(params_file.read_text(encoding="utf-8"))
    params["paths"] |= {
        "synthetic_queries_dir": "synthetic",
        "synthetic_queries": "synthetic/queries.jsonl",
        "retriever_training_set_dir": "training_set",
        "retriever_training_set": "training_set/set.json",
        "retriever_dir": "tuned",
        "retriever_model": "tuned/model",
        "retriever_positives": "tuned/positives.json",
    }
    params["tracking"]["enabled"] = False
    params["finetune_retriever"] |= {
        "use_synthetic": True,
        "epochs": 2,
        "batch_size": 4,
        "learning_rate": 0.001,
        "eval_corpus": 12,
        "negatives": {
            "count": 2,
            "range_min": 0,
            "range_max": 8,
            "margin_type": "absolute",
            "margin": 0.0,
        },
    }
    params_file.write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")
    index.main(params_file)
    return params_file


def refuse_network(patch: pytest.MonkeyPatch) -> None:
    """Any attempt to open a network connection fails the test."""

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError(f"network access attempted: {args}")

    patch.setattr(socket.socket, "connect", refuse)
    patch.setattr(socket, "create_connection", refuse)


def passages_of(params_file: Path) -> dict[str, str]:
    include_title = load_params(params_file).index.include_title
    return {d.id: passage_text(d, include_title) for d in tiny_docs()}


def test_mined_negatives_never_contain_a_gold_doc(project: Path) -> None:
    passages = passages_of(project)
    pairs = ts.training_pairs(read_qa(project.parent / "qa/train.jsonl"), set(passages), "real")
    assert len(pairs) == len(TRAIN) + 2  # the two-gold questions give two pairs each
    params = load_params(project)
    base = Retriever.load(
        project.parent / "index",
        Fusion.from_params(params.retrieval),
        base=project.parent,
        precision="fp32",
    )
    mining = HardNegativesParams(
        count=5, range_min=0, range_max=15, margin_type="relative", margin=0.0
    )
    negatives, stats = ts.mine_hard_negatives(
        ts.dense_search(base), pairs, list(passages), mining, seed=0
    )

    assert stats["mined"] > 0
    for pair, chosen in zip(pairs, negatives, strict=True):
        assert len(chosen) == 5 and len(set(chosen)) == 5
        assert not set(chosen) & pair.gold, (pair.query, chosen)
    multi = [
        chosen for pair, chosen in zip(pairs, negatives, strict=True) if pair.gold == MULTI_GOLD
    ]
    assert len(multi) == 2 and not {d for chosen in multi for d in chosen} & MULTI_GOLD


def test_margin_range_and_fallback_by_hand() -> None:
    """Gold docs are skipped wherever they rank; near-ties with the weakest gold are skipped;
    a question whose gold lies beyond the window gets random (non-gold) docs."""
    rankings = {
        "two golds": [("b", 0.90), ("x", 0.85), ("a", 0.80), ("y", 0.78), ("z", 0.70)],
        "gold far down": [("x", 0.9), ("y", 0.8), ("z", 0.7)],
    }

    def search(queries: list[str], depth: int) -> list[list[tuple[str, float]]]:
        return [rankings[q][:depth] for q in queries]

    pairs = [
        ts.TrainingPair("two golds", "a", frozenset({"a", "b"}), "real"),
        ts.TrainingPair("two golds", "b", frozenset({"a", "b"}), "real"),
        ts.TrainingPair("gold far down", "g", frozenset({"g"}), "real"),
    ]
    params = HardNegativesParams(
        count=1, range_min=0, range_max=4, margin_type="relative", margin=0.05
    )  # weakest gold 0.80: below 0.76 passes
    negatives, stats = ts.mine_hard_negatives(search, pairs, ["a", "b", "g", "w"], params, 0)
    assert negatives[:2] == [["z"], ["z"]]  # x and y are within 5% of the gold, a and b gold
    assert negatives[2] in (["a"], ["b"], ["w"])
    assert stats == {"mined": 2, "random_filled": 1, "skipped_by_margin": 5}
    absolute = params.model_copy(update={"margin_type": "absolute", "margin": 0.0, "range_min": 1})
    negatives, _ = ts.mine_hard_negatives(search, pairs[:1], ["w"], absolute, 0)
    assert negatives == [["y"]]  # rank 1 after the golds (x) skipped by range_min


def test_evaluation_corpus_keeps_gold_and_candidates() -> None:
    dev = [QARecord(id="q", question="?", answers=[], doc_ids=["g"], group="q")]
    ids = [f"d{i}" for i in range(50)] + ["g"]
    corpus = ts.evaluation_corpus(dev, [["d1", "d2"]], ids, size=10, seed=0)
    assert len(corpus) == 10 and {"g", "d1", "d2"} <= set(corpus)
    assert corpus == ts.evaluation_corpus(dev, [["d1", "d2"]], ids, size=10, seed=0)
    assert ts.evaluation_corpus(dev, [], ids, size=0, seed=0) == sorted(ids)


@pytest.fixture(scope="module")
def training_set(project: Path) -> Path:
    retriever_training_set.main(project)
    return load_params(project).paths.retriever_training_set


def test_training_set_holds_pairs_negatives_and_dev_data_as_text(
    project: Path, training_set: Path
) -> None:
    passages = passages_of(project)
    built = ts.read_training_set(training_set)
    assert [p.source for p in built.pairs] == ["real"] * (len(TRAIN) + 2) + ["synthetic"]
    assert [p.query for p in built.pairs[:3]] == [q for q, _ in TRAIN[:3]]  # the file's order
    gold_of = {q: set(d) for q, d in TRAIN} | {q: {d} for q, d in SYNTHETIC}
    for pair in built.pairs:
        assert pair.positive.id in gold_of[pair.query]
        assert len(pair.negatives) == 2
        assert not {n.id for n in pair.negatives} & gold_of[pair.query]
        for passage in (pair.positive, *pair.negatives):
            assert passage.text == passages[passage.id]
    corpus = [p.id for p in built.dev_corpus]
    assert corpus == sorted(corpus) and len(corpus) >= 12  # gold + candidates, at least the size
    dev = read_qa(project.parent / "qa/dev.jsonl")
    assert [q.id for q in built.dev_queries] == [r.id for r in dev]
    assert all(q.relevant and set(q.relevant) <= set(corpus) for q in built.dev_queries)
    base = load_encoder(load_params(project).index.encoder, project.parent)
    assert built.encoder_fingerprint == encoder_fingerprint(base)
    metrics = json.loads((training_set.parent / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["pairs"] == {"real": len(TRAIN) + 2, "synthetic": 1}
    assert metrics["mining"]["mined"] + metrics["mining"]["random_filled"] == 2 * len(built.pairs)

    first = training_set.read_bytes()
    retriever_training_set.main(project)
    assert training_set.read_bytes() == first


def test_an_empty_train_split_leaves_the_synthetic_pairs(project: Path) -> None:
    """A KB without a QA set: no real pair (use_real still true), the synthetic ones alone."""
    train = project.parent / "qa/train.jsonl"
    kept = train.read_bytes()
    train.write_text("", encoding="utf-8")
    try:
        params = load_params(project)
        built, _ = retriever_training_set.build(params, params.finetune_retriever, "fp32")
    finally:
        train.write_bytes(kept)
    assert [(p.source, p.query) for p in built.pairs] == [("synthetic", SYNTHETIC[0][0])]
    assert len(built.dev_queries) == 5


def test_a_set_mined_with_another_encoder_is_refused(
    project: Path, training_set: Path, tmp_path: Path
) -> None:
    params = load_params(project)
    built = ts.read_training_set(training_set)
    other = built.model_copy(update={"encoder_fingerprint": "0" * 64})
    with pytest.raises(InputError, match="mined with encoder fingerprint 0000"):
        ft.finetune(
            params, params.finetune_retriever, "fp32", other, tmp_path / "out", tmp_path / "ckpt"
        )
    broken = tmp_path / "set.json"
    broken.write_text(training_set.read_text(encoding="utf-8")[:-20], encoding="utf-8")
    with pytest.raises(InputError, match=r"set\.json: malformed JSON"):
        ts.read_training_set(broken)


class TrainingArgsSeen(TrainerCallback):
    """Records the bf16 option of every training run's arguments."""

    def __init__(self) -> None:
        self.bf16: list[bool] = []

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.bf16.append(args.bf16)


class Trained(NamedTuple):
    out: Path  # the stage's output folder
    bf16: list[bool]  # the trainer's bf16 option, per training run


@pytest.fixture(scope="module")
def trained(project: Path, training_set: Path) -> Trained:
    """The stage run once from its training set alone (KB, QA, index and synthetic questions
    moved away), with every network connection refused, on a CPU said to lack bf16 units."""
    paths = load_params(project).paths
    inputs = [paths.retrieval_docs, paths.retrieval_qa_dir, paths.index_dir]
    seen = TrainingArgsSeen()
    with (
        pytest.MonkeyPatch.context() as patch,
        moved_away([*inputs, paths.synthetic_queries_dir]),
        every_trainer_calls(seen),
    ):
        refuse_network(patch)
        patch.setenv(CPU_BF16_ENV, "0")
        ft.main(project)
    return Trained(project.parent / "tuned", seen.bf16)


def test_stage_trains_offline_and_saves_a_new_encoder(project: Path, trained: Trained) -> None:
    base = load_encoder(load_params(project).index.encoder, project.parent)
    out, paths = trained.out, load_params(project).paths
    assert paths.retriever_model == out / "model"
    assert (paths.retriever_model / "model.safetensors").is_file()
    assert not (out / "checkpoints").exists() and not list(out.rglob("pytorch_model.bin"))
    tuned = SentenceTransformer(str(paths.retriever_model), device="cpu", local_files_only=True)
    metrics = json.loads((out / "train_metrics.json").read_text(encoding="utf-8"))
    assert encoder_fingerprint(tuned) == metrics["tuned_fingerprint"]
    assert encoder_fingerprint(tuned) != encoder_fingerprint(base) == metrics["base_fingerprint"]
    assert metrics["pairs"] == {"real": len(TRAIN) + 2, "synthetic": 1}
    assert metrics["steps"] > 0 and len(metrics["dev_history"]) == 2  # one dev score per epoch
    assert metrics["best_dev_ndcg@10"] == max(h["dev_ndcg@10"] for h in metrics["dev_history"])
    assert metrics["dev_tuned"]["ndcg@10"] == round(metrics["best_dev_ndcg@10"], 4)
    assert 0 <= metrics["dev_base"]["ndcg@10"] <= 1
    assert trained.bf16 == [False] and metrics["precision"] == "fp32"  # auto, without bf16 units
    positives = set(json.loads(paths.retriever_positives.read_text(encoding="utf-8")))
    assert positives == {d for _, ds in TRAIN for d in ds} | {"orchard"}


def test_comparison_reports_five_systems_on_whole_and_unseen_subsets(
    project: Path, trained: Trained
) -> None:
    tune_retrieval.main(project)
    encoder = load_params(project).paths.retriever_model
    index.main(project, encoder=str(encoder), out=project.parent / "index_tuned")
    tune_retrieval.main(project, index=project.parent / "index_tuned", out=project.parent / "tt")
    params = yaml.safe_load(project.read_text(encoding="utf-8"))
    params["paths"] |= {
        "index_tuned_dir": "index_tuned",
        "tune_retrieval_tuned_dir": "tt",
        "fusion_tuned": "tt/fusion.json",
        "retriever_comparison_dir": "compare",
        "retriever_comparison_metrics": "compare/metrics.json",
    }
    params["compare_retrievers"] |= {"split": "dev", "bootstrap_resamples": 200}
    project.write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")
    compare_retrievers.main(project)

    report = json.loads((project.parent / "compare/report.json").read_text(encoding="utf-8"))
    markdown = (project.parent / "compare/report.md").read_text(encoding="utf-8")
    assert markdown.startswith("Question sets: dev: real questions (5)\n")
    dev = read_qa(project.parent / "qa/dev.jsonl")
    positives_file = load_params(project).paths.retriever_positives
    positives = set(json.loads(positives_file.read_text(encoding="utf-8")))
    unseen = [r for r in dev if not set(r.doc_ids) & positives]
    assert "lighthouse" in positives and 0 < len(unseen) < len(dev)  # a seen and unseen mix
    assert report["dev"]["questions"] == len(dev)
    assert report["dev_unseen_docs"]["questions"] == len(unseen)
    for subset in ("dev", "dev_unseen_docs"):
        systems = report[subset]["systems"]
        assert list(systems) == list(compare_retrievers.SYSTEMS)
        for by_metric in systems.values():
            for value in by_metric.values():
                assert value["low"] <= value["mean"] <= value["high"]
        gap = report[subset]["differences"]["dense_tuned - dense_base"]["ndcg@10"]
        means = systems["dense_tuned"]["ndcg@10"]["mean"] - systems["dense_base"]["ndcg@10"]["mean"]
        assert gap["mean"] == pytest.approx(means)
    assert report["encoders"]["tuned"]["fingerprint"] != report["encoders"]["base"]["fingerprint"]


def stage_alone(project: Path, root: Path, **tune: Any) -> Path:
    """The stage alone in `root`: the project's params with `tune` over its finetune_retriever
    section, and a copy of its training set."""
    params = yaml.safe_load(project.read_text(encoding="utf-8"))
    params["finetune_retriever"] |= tune
    folder = load_params(project).paths.retriever_training_set_dir
    shutil.copytree(folder, root / folder.relative_to(project.parent))
    params_file = root / "params.yaml"
    params_file.write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")
    return params_file


def resumable_project(project: Path, training_set: Path, root: Path) -> Path:
    """Two epochs with a checkpoint every 3 steps (so a kill lands mid-epoch), no early stop."""
    return stage_alone(project, root, eval_steps=3, early_stopping_patience=100)


def test_a_stalled_dev_score_stops_training_early(
    project: Path, training_set: Path, tmp_path: Path
) -> None:
    """A learning rate too small to move any weight: the dev score never beats the first
    evaluation, so the run stops at the evaluation that exhausts the patience of 2."""
    params_file = stage_alone(
        project, tmp_path, learning_rate=1e-12, eval_steps=1, early_stopping_patience=2
    )
    ft.main(params_file)
    _, report = tuned_weights(params_file)
    assert report["max_steps"] > 3 and report["steps"] == 3  # evaluations at steps 1, 2, 3
    assert [h["step"] for h in report["dev_history"]] == [1, 2, 3]
    assert len({h["dev_ndcg@10"] for h in report["dev_history"]}) == 1
    assert report["best_checkpoint"] == "checkpoint-1"


def tuned_weights(params_file: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    paths = load_params(params_file).paths
    report = json.loads((paths.retriever_dir / "train_metrics.json").read_text(encoding="utf-8"))
    return load_file(paths.retriever_model / "model.safetensors"), report


def test_a_killed_run_resumes_from_its_last_checkpoint_to_the_same_encoder(
    project: Path,
    training_set: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """SIGKILL once checkpoint-6 is saved (mid second epoch), then a rerun: it resumes there,
    reloads the best dev checkpoint (checkpoint-3, from before the kill) at the end, and ends
    with the uninterrupted run's encoder. In bf16, as a CPU with bf16 units trains."""
    monkeypatch.setenv(CPU_BF16_ENV, "1")
    params_file = resumable_project(project, training_set, tmp_path)
    paths = load_params(params_file).paths
    checkpoints = paths.checkpoints_dir / ft.STAGE
    ft.main(params_file)
    uninterrupted, first = tuned_weights(params_file)
    assert first["steps"] > 6 and first["resumed_from_step"] == 0 and not checkpoints.exists()
    assert first["precision"] == "bf16"
    shutil.rmtree(paths.retriever_dir)

    kill_after_checkpoint(tmp_path, "tasks.finetune_retriever", step=6)
    assert not paths.retriever_dir.exists()
    [run_dir] = checkpoints.iterdir()
    kept = sorted(p.name for p in run_dir.glob("checkpoint-*"))
    assert first["best_checkpoint"] == "checkpoint-3"  # from before the kill: it must survive
    assert kept == ["checkpoint-3", "checkpoint-6"]  # save_total_limit: the best and the latest

    capsys.readouterr()
    ft.main(params_file)
    log = capsys.readouterr().out
    total = first["steps"]
    assert re.search(rf"resuming from checkpoint-6 \(step 6 of {total}, saved \d+ s ago\)", log)
    resumed, second = tuned_weights(params_file)
    assert second["resumed_from_step"] == 6
    for key in ("steps", "best_checkpoint", "best_dev_ndcg@10", "dev_history", "dev_tuned"):
        assert second[key] == first[key], key
    assert second["tuned_fingerprint"] == first["tuned_fingerprint"]  # bit for bit
    for name, weights in uninterrupted.items():
        assert torch.allclose(resumed[name], weights, rtol=0, atol=1e-6), name
    assert not checkpoints.exists()


def test_a_changed_training_set_starts_over(
    project: Path, training_set: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    params_file = resumable_project(project, training_set, tmp_path)
    paths = load_params(params_file).paths
    checkpoints = paths.checkpoints_dir / ft.STAGE
    with every_trainer_calls(raise_after_checkpoint(step=3)), pytest.raises(Interrupted):
        ft.main(params_file)
    [stale] = checkpoints.iterdir()
    built = ts.read_training_set(paths.retriever_training_set)
    ts.write_training_set(
        paths.retriever_training_set, built.model_copy(update={"pairs": built.pairs[:-1]})
    )

    capsys.readouterr()
    ft.main(params_file)
    log = capsys.readouterr().out
    assert "removed the checkpoints of an earlier run with other data or params" in log
    assert "resuming" not in log and not stale.exists() and not checkpoints.exists()
    _, report = tuned_weights(params_file)
    assert report["resumed_from_step"] == 0 and report["pairs"]["synthetic"] == 0


def test_a_checkpoint_of_a_bf16_run_does_not_resume_in_fp32(
    project: Path,
    training_set: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    params_file = resumable_project(project, training_set, tmp_path)
    checkpoints = load_params(params_file).paths.checkpoints_dir / ft.STAGE
    monkeypatch.setenv(CPU_BF16_ENV, "1")
    with every_trainer_calls(raise_after_checkpoint(step=3)), pytest.raises(Interrupted):
        ft.main(params_file)
    [stale] = checkpoints.iterdir()

    monkeypatch.setenv(CPU_BF16_ENV, "0")
    capsys.readouterr()
    ft.main(params_file)
    log = capsys.readouterr().out
    assert "removed the checkpoints of an earlier run with other data or params" in log
    assert "resuming" not in log and not stale.exists()
    _, report = tuned_weights(params_file)
    assert report["precision"] == "fp32" and report["resumed_from_step"] == 0
