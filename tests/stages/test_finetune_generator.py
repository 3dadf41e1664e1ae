"""Generator fine-tuning offline on a tiny Llama (LoRA and full; merged model reloads), and the
generator data plumbing: KB questions, retrieved contexts, the training set (the one thing the
training stage reads), evaluation."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from peft import PeftModel
from safetensors.torch import load_file
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSeq2SeqLM,
    AutoTokenizer,
    T5Config,
    T5ForConditionalGeneration,
)

from tasks import evaluate_generation as evaluate_generation_stage
from tasks import finetune_generator, generator_training_set
from tasks.evaluate_generation import GeneratorSystem, evaluate_generation
from tasks.finetune_generator import finetune
from tasks.kb_questions import make_kb_questions
from tasks.lib.core.config import (
    EvaluateGenerationParams,
    FinetuneGeneratorParams,
    GeneratorParams,
    KbQuestionsParams,
    LoraParams,
    load_params,
)
from tasks.lib.core.io import InputError, write_jsonl
from tasks.lib.core.records import QARecord
from tasks.lib.generation.data import generation_items, read_items, with_gold, write_items
from tasks.lib.generation.generation_cache import GenerationCache
from tasks.lib.generation.generator import Decoding, generate_answers, item_prompt
from tests.support.interrupt import (
    Interrupted,
    every_trainer_calls,
    kill_after_checkpoint,
    raise_after_checkpoint,
)
from tests.support.projects import moved_away
from tests.support.tiny_generator import (
    INSTRUCTIONS,
    doc,
    items,
    make_generator_project,
    make_tiny_generator,
    qa,
    tiny_tokenizer,
)

GENERATOR = GeneratorParams(top_k=2, passage_tokens=12, max_new_tokens=6, instructions=INSTRUCTIONS)


def tune_params(**overrides: object) -> FinetuneGeneratorParams:
    values = {
        "method": "lora",
        "lora": LoraParams(
            r=8, alpha=16, dropout=0.0, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]
        ),
        "real_answerable_only": True,
        "gold_passage": "retrieved",
        "epochs": 20,
        "batch_size": 3,
        "learning_rate": 0.05,
        "warmup_steps": 0,
        "weight_decay": 0.0,
        "eval_steps": 10,
        "seed": 0,
        "resume": True,
    } | overrides
    return FinetuneGeneratorParams.model_validate(values)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_generator(tmp_path_factory.mktemp("tiny") / "generator")


def test_lora_trains_offline_and_the_merged_model_equals_base_plus_adapter(
    tiny_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "tuned"
    report = finetune(
        tiny_dir, items(), items(), GENERATOR, tune_params(), "fp32", out, tmp_path / "ckpt"
    )

    assert json.loads((out / "train_metrics.json").read_text())["steps"] == report["steps"] == 20
    assert report["dev_loss_best"] < report["dev_loss_before"] - 1
    assert report["train_examples_by_task"] == {"qa": 2, "describe": 1}
    assert (out / "adapter/adapter_model.safetensors").is_file()

    tokenizer = AutoTokenizer.from_pretrained(out / "model")
    merged = AutoModelForCausalLM.from_pretrained(out / "model", dtype=torch.float32).eval()
    assert not any("lora" in name for name in merged.state_dict())
    base = AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32)
    adapted = PeftModel.from_pretrained(base, out / "adapter").eval()
    batch = tokenizer(
        [item_prompt(i, tokenizer, INSTRUCTIONS, 12, 2) for i in items()],
        add_special_tokens=False,
        return_tensors="pt",
        padding=True,
    )
    with torch.no_grad():
        merged_logits, adapted_logits = merged(**batch).logits, adapted(**batch).logits
    assert torch.allclose(merged_logits, adapted_logits, atol=1e-4)
    answers = generate_answers(
        merged,
        tokenizer,
        [item_prompt(items()[0], tokenizer, INSTRUCTIONS, 12, 2)],
        batch_size=1,
        decoding=Decoding(6, "fp32"),
    )
    assert isinstance(answers[0], str)


def test_full_finetuning_learns_the_answers(tiny_dir: Path, tmp_path: Path) -> None:
    """The tiny model memorizes three answers; greedy generation from the reloaded folder must
    reproduce them, so prompts, masking, training and saving agree end to end."""
    out = tmp_path / "full"
    report = finetune(
        tiny_dir,
        items(),
        items(),
        GENERATOR,
        tune_params(method="full", epochs=30, learning_rate=0.01),
        "fp32",
        out,
        tmp_path / "ckpt",
    )
    assert report["trainable_params"] > 10_000
    assert not (out / "adapter/adapter_model.safetensors").exists()
    tokenizer = AutoTokenizer.from_pretrained(out / "model")
    model = AutoModelForCausalLM.from_pretrained(out / "model", dtype=torch.float32).eval()
    prompts = [item_prompt(i, tokenizer, INSTRUCTIONS, 12, 2) for i in items()]
    answers = generate_answers(model, tokenizer, prompts, 3, Decoding(6, "fp32"))
    assert answers == ["blue device", "Coastal tower", "slow river of ice"]


def test_evaluate_generation_scores_every_system_on_every_set(
    tiny_dir: Path, tmp_path: Path
) -> None:
    systems = [
        GeneratorSystem("closed_book", tiny_dir, rag=False),
        GeneratorSystem("base_rag", tiny_dir, rag=True),
    ]
    params = EvaluateGenerationParams(
        batch_size=2, bootstrap_resamples=100, confidence=0.9, samples=1, seed=0
    )
    with GenerationCache(tmp_path / "cache") as cache:
        metrics, rows = evaluate_generation(
            systems, {"toy": items()}, GENERATOR, params, "fp32", cache
        )
        assert (cache.hits, cache.misses) == (0, 6)
        again, rows_again = evaluate_generation(
            systems, {"toy": items()}, GENERATOR, params, "fp32", cache
        )
        assert (cache.hits, cache.misses) == (6, 6)  # the second run generates nothing
    assert rows_again == rows and again == metrics  # seconds too: a cached answer keeps its time
    assert set(metrics) == {"toy", "toy_answerable"}  # two of three items are answerable
    assert metrics["toy"]["n"] == 3 and metrics["toy_answerable"]["n"] == 2
    assert metrics["toy"]["answer_in_passages"] == pytest.approx(2 / 3)  # not "Coastal tower"
    f1 = metrics["toy"]["base_rag - closed_book"]["answer_f1"]
    assert f1["low"] <= f1["mean"] <= f1["high"]
    assert len(rows) == 3 and {"closed_book", "base_rag"} <= set(rows[0])


def test_kb_questions_splits_are_disjoint_and_skip_real_gold_docs() -> None:
    docs = [doc(f"d{i}", "small blue measuring device") for i in range(12)]
    docs += [doc("short", "Thing"), doc("stub", "Wikimedia list article")]
    params = KbQuestionsParams(
        source="description",
        generated_docs=10,
        max_answer_words=6,
        round_trip_mode="bm25",
        round_trip_k=10,
        question_template="What is {title}?",
        min_words=2,
        max_words=10,
        n_train=5,
        n_dev=2,
        n_heldout=3,
        seed=0,
    )
    splits = make_kb_questions(docs, params, excluded={"d0"})
    ids = {name: {r.doc_ids[0] for r in records} for name, records in splits.items()}
    assert [len(v) for v in ids.values()] == [5, 2, 3]
    assert not (ids["train"] | ids["dev"]) & ids["heldout"] and not ids["train"] & ids["dev"]
    assert not {"d0", "short", "stub"} & set().union(*ids.values())
    first = splits["heldout"][0]
    assert first.question == f"What is {first.doc_ids[0].title()}?" and first.answerable
    with pytest.raises(InputError, match="12 docs have a usable description, 13 requested"):
        make_kb_questions(docs, params.model_copy(update={"n_train": 8}), excluded=set())


def test_contexts_feed_passages_and_missing_ones_fail() -> None:
    docs = {d.id: d for d in (doc("a", "first thing"), doc("b", "second one"), doc("g", "gold"))}
    record = QARecord(id="q", question="Which?", answers=["gold"], doc_ids=["g"], group="q")
    [item] = generation_items([record], "qa", {"q": ["a", "b", "g"]}, docs, top_k=2)
    assert [p.title for p in item.passages] == ["A", "B"]
    [planted] = generation_items([record], "qa", {"q": ["a", "b"]}, docs, 2, "insert")
    assert [p.title for p in planted.passages] == ["A", "G"]
    assert with_gold(["g", "a"], ["g"], 2) == ["g", "a"]
    with pytest.raises(InputError, match="no entry for question id 'q'"):
        generation_items([record], "qa", {}, docs, top_k=2)


def test_a_seq2seq_generator_without_chat_template_trains_and_answers(tmp_path: Path) -> None:
    """The same stage code drives an encoder-decoder model (plain-text prompt, labels = answer)."""
    tokenizer = tiny_tokenizer()
    tokenizer.chat_template = None
    config = T5Config(
        vocab_size=len(tokenizer),
        d_model=64,
        d_ff=64,
        d_kv=16,
        num_layers=1,
        num_heads=2,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.pad_token_id,
    )
    base = tmp_path / "t5"
    T5ForConditionalGeneration(config).save_pretrained(base)
    tokenizer.save_pretrained(base)
    out = tmp_path / "tuned"
    tune = tune_params(method="full", epochs=60, learning_rate=0.01)
    report = finetune(base, items(), items(), GENERATOR, tune, "fp32", out, tmp_path / "ckpt")
    assert report["dev_loss_best"] < report["dev_loss_before"]
    tokenizer = AutoTokenizer.from_pretrained(out / "model")
    model = AutoModelForSeq2SeqLM.from_pretrained(out / "model", dtype=torch.float32).eval()
    prompts = [item_prompt(i, tokenizer, INSTRUCTIONS, 12, 2) for i in items()]
    assert prompts[0].endswith("\nAnswer:") and "<|im_start|>" not in prompts[0]
    answers = generate_answers(model, tokenizer, prompts, 3, Decoding(6, "fp32"))
    assert answers == ["blue device", "Coastal tower", "slow river of ice"]


def test_items_round_trip_through_a_training_set_file(tmp_path: Path) -> None:
    write_items(tmp_path / "items.jsonl", items())
    assert read_items(tmp_path / "items.jsonl") == items()


def test_the_training_set_holds_every_example_and_training_reads_it_alone(
    tiny_dir: Path, tmp_path: Path
) -> None:
    params_file = make_generator_project(tmp_path, tiny_dir)
    generator_training_set.main(params_file)
    folder = tmp_path / "generator_set"
    train, dev = read_items(folder / "train.jsonl"), read_items(folder / "dev.jsonl")
    # Real train questions answerable or not (real_answerable_only false), then KB questions,
    # the gold planted in the last slot when missed; dev as retrieved, real ones answerable.
    assert [(i.id, i.task) for i in train] == [("t1", "qa"), ("t2", "qa"), ("kb:river", "describe")]
    assert [p.title for p in train[1].passages] == ["River", "Glacier"]
    assert [(i.id, [p.title for p in i.passages]) for i in dev] == [
        ("d1", ["Glacier", "River"]),
        ("kb:widget", ["Lighthouse", "Widget"]),
    ]
    assert train[0].answers == ("widget",)
    assert train[0].passages[0].text == "widget is a widget thing."

    set_bytes = {name: (folder / name).read_bytes() for name in ("train.jsonl", "dev.jsonl")}
    kb = tmp_path / "kb.jsonl"
    kb.write_text(kb.read_text() + doc("volcano", "unrelated").model_dump_json() + "\n")
    generator_training_set.main(params_file)
    assert {name: (folder / name).read_bytes() for name in set_bytes} == set_bytes

    inputs = ["kb.jsonl", "qa", "kb_questions", "contexts.jsonl"]
    with moved_away([tmp_path / name for name in inputs]):
        finetune_generator.main(params_file)
    report = json.loads((tmp_path / "tuned/train_metrics.json").read_text(encoding="utf-8"))
    assert report["train_examples_by_task"] == {"qa": 2, "describe": 1}
    assert report["dev_examples"] == 2 and report["steps"] == 2


def test_without_real_qa_generated_triples_train_and_evaluate_as_short_answers(
    tiny_dir: Path, tmp_path: Path
) -> None:
    """A KB with no QA set: no real train questions, the generated dev / held-out triples are
    the QA dev / test splits, and the KB's own dev and held-out sets are empty."""
    params_file = make_generator_project(tmp_path, tiny_dir)
    triple = {"answers": ["thing"], "answerable": True}
    gen = {d: qa(f"gen:{d}", d, True).model_copy(update=triple) for d in ("river", "widget")}
    for folder, split, records in [
        ("qa", "train", []),
        ("qa", "dev", [gen["widget"]]),
        ("qa", "test", [gen["widget"]]),
        ("kb_questions", "train", [gen["river"]]),
        ("kb_questions", "dev", []),
        ("kb_questions", "heldout", []),
    ]:
        write_jsonl(tmp_path / folder / f"{split}.jsonl", records)
    contexts = [
        {"id": "gen:river", "doc_ids": ["river"]},
        {"id": "gen:widget", "doc_ids": ["widget"]},
    ]
    write_jsonl(tmp_path / "contexts.jsonl", contexts)

    generator_training_set.main(params_file)
    folder = tmp_path / "generator_set"
    train, dev = read_items(folder / "train.jsonl"), read_items(folder / "dev.jsonl")
    assert [(i.id, i.task) for i in train] == [("gen:river", "qa")]
    assert [(i.id, i.task) for i in dev] == [("gen:widget", "qa")]

    params = yaml.safe_load(params_file.read_text(encoding="utf-8"))
    params["paths"] |= {"generator_dir": str(tiny_dir.parent), "generator_model": str(tiny_dir),
                        "generation_eval_dir": "eval",
                        "generation_metrics": "eval/metrics.json",
                        "generation_predictions": "eval/predictions.jsonl"}  # fmt: skip
    params["evaluate_generation"] |= {"bootstrap_resamples": 100, "samples": 1}
    params_file.write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")
    evaluate_generation_stage.main(params_file)
    metrics = json.loads((tmp_path / "eval/metrics.json").read_text(encoding="utf-8"))
    assert list(metrics) == ["real_test"] and metrics["real_test"]["n"] == 1  # no kb_heldout
    samples = (tmp_path / "eval/samples.md").read_text(encoding="utf-8")
    assert samples.startswith("Question sets: test: real questions (1); kb_heldout: held-out")


def resumable_project(root: Path, base: Path) -> Path:
    """The generator project with its training set built and training long enough to be
    killed mid-run: 3 train examples one a step for 3 epochs (9 steps), a checkpoint every 2
    steps, and LoRA dropout on (the resumed run must restore the RNG state)."""
    params_file = make_generator_project(root, base)
    generator_training_set.main(params_file)
    params = yaml.safe_load(params_file.read_text(encoding="utf-8"))
    tune = params["finetune_generator"]
    tune |= {"epochs": 3, "batch_size": 1, "eval_steps": 2, "learning_rate": 0.3}
    tune["lora"]["dropout"] = 0.1
    params_file.write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")
    return params_file


def tuned_adapter(root: Path) -> tuple[dict[str, torch.Tensor], dict]:
    report = json.loads((root / "tuned/train_metrics.json").read_text(encoding="utf-8"))
    return load_file(root / "tuned/adapter/adapter_model.safetensors"), report


def test_a_killed_run_resumes_from_its_last_checkpoint_to_the_same_model(
    tiny_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """SIGKILL once checkpoint-2 is saved, a checkpoint half written after it, then a rerun: it
    resumes from checkpoint-2 and ends with the uninterrupted run's weights and report. On three
    examples the length-grouped order does not depend on the shuffle, so this checks that the
    training state (adapter, optimizer, scheduler, RNG) is restored exactly; on a larger set the
    resumed run redraws the remaining order (see finetune_generator's docstring)."""
    params_file = resumable_project(tmp_path, tiny_dir)
    checkpoints = load_params(params_file).paths.checkpoints_dir / finetune_generator.STAGE
    finetune_generator.main(params_file)
    uninterrupted, first = tuned_adapter(tmp_path)
    assert not checkpoints.exists()  # a successful run leaves none
    shutil.rmtree(tmp_path / "tuned")

    kill_after_checkpoint(tmp_path, "tasks.finetune_generator", step=2)
    assert not (tmp_path / "tuned").exists()
    [run_dir] = checkpoints.iterdir()
    assert sorted(p.name for p in run_dir.glob("checkpoint-*")) == ["checkpoint-2"]
    partial = run_dir / "checkpoint-4"  # what a kill while saving leaves: no trainer state
    shutil.copytree(run_dir / "checkpoint-2", partial)
    (partial / "trainer_state.json").unlink()

    capsys.readouterr()
    finetune_generator.main(params_file)
    log = capsys.readouterr().out
    assert "finetune_generator: removed checkpoint-4: incomplete (killed while saving)" in log
    assert re.search(r"resuming from checkpoint-2 \(step 2 of 9, saved \d+ s ago\)", log), log
    resumed, second = tuned_adapter(tmp_path)
    assert (first["resumed_from_step"], second["resumed_from_step"]) == (0, 2)
    for key in ("steps", "best_step", "dev_loss_before", "dev_loss_best", "train_tokens"):
        assert second[key] == first[key], key
    assert resumed.keys() == uninterrupted.keys()
    for name, weights in uninterrupted.items():  # same seed, same machine: float noise at most
        assert torch.allclose(resumed[name], weights, rtol=0, atol=1e-6), name
    assert not checkpoints.exists()


def test_a_changed_training_set_or_resume_false_starts_over(
    tiny_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    params_file = resumable_project(tmp_path, tiny_dir)
    checkpoints = load_params(params_file).paths.checkpoints_dir / finetune_generator.STAGE
    with every_trainer_calls(raise_after_checkpoint(step=4)), pytest.raises(Interrupted):
        finetune_generator.main(params_file)
    [stale] = checkpoints.iterdir()
    train = tmp_path / "generator_set/train.jsonl"
    train.write_text("".join(train.read_text(encoding="utf-8").splitlines(True)[:2]), "utf-8")

    capsys.readouterr()
    finetune_generator.main(params_file)
    log = capsys.readouterr().out
    assert "removed the checkpoints of an earlier run with other data or params" in log
    assert "resuming" not in log and not stale.exists() and not checkpoints.exists()
    _, report = tuned_adapter(tmp_path)
    assert report["resumed_from_step"] == 0 and report["train_examples"] == 2

    with every_trainer_calls(raise_after_checkpoint(step=4)), pytest.raises(Interrupted):
        finetune_generator.main(params_file)
    params = yaml.safe_load(params_file.read_text(encoding="utf-8"))
    params["finetune_generator"]["resume"] = False
    params_file.write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")
    capsys.readouterr()
    finetune_generator.main(params_file)
    log = capsys.readouterr().out
    assert "removed the checkpoints of an earlier run (resume is false)" in log
    assert "resuming" not in log and not checkpoints.exists()
