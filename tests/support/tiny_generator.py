"""A tiny random-init Llama generator with a word-level tokenizer and a ChatML template, built
offline in milliseconds, so generator code is tested for real without the 135M model; and the
generator side's inputs of a tiny project around it."""

from __future__ import annotations

import re
from pathlib import Path

import torch
import yaml
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from tasks.lib.core.io import write_jsonl
from tasks.lib.core.records import Doc, QARecord
from tasks.lib.generation.generator import GenerationItem, Passage
from tests.support.projects import REPO

SPECIALS = ["<unk>", "<|im_start|>", "<|im_end|>"]
CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + "
    "message['content'] + '<|im_end|>' + '\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
CORPUS = """
Passages Question Answer the question with a few words Say what the question names briefly
system user assistant What is a the of and in which who where how many is it from river ice
The widget is a small blue device that measures river levels every hour
A lighthouse guides ships along dangerous coasts with a rotating lamp
A glacier is a slow river of ice formed from compacted snow over centuries
Blue River Dam Measuring device Coastal tower Widget Lighthouse Glacier : [ ] 1 2 3 ? . ,
"""


def tiny_tokenizer(extra_text: str = "") -> PreTrainedTokenizerFast:
    words = sorted(set(re.findall(r"\w+|[^\w\s]", CORPUS + " " + extra_text)))
    vocab = {token: i for i, token in enumerate(SPECIALS + words)}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token="<unk>",
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|im_end|>",
        additional_special_tokens=["<|im_start|>", "<|im_end|>"],
    )
    tokenizer.chat_template = CHATML
    return tokenizer


def make_tiny_generator(folder: Path, seed: int = 0) -> Path:
    """Save a 2-layer, 32-wide Llama and its tokenizer to `folder` (a normal HF folder)."""
    tokenizer = tiny_tokenizer()
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(config)
    # Tied embeddings at the default 0.02 scale cap the logits near 0.6, so no frozen-embedding
    # (LoRA) run could ever make one token likely; a larger scale makes the model trainable.
    torch.nn.init.normal_(model.get_input_embeddings().weight, std=0.3)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


INSTRUCTIONS = {
    "qa": "Answer the question with a few words",
    "describe": "Say what the question names briefly",
}


def items() -> list[GenerationItem]:
    """Three questions whose answers occur in their passages."""
    widget = Passage("Widget", "The widget is a small blue device that measures river levels")
    lighthouse = Passage("Lighthouse", "A lighthouse guides ships along dangerous coasts")
    glacier = Passage("Glacier", "A glacier is a slow river of ice formed from compacted snow")
    return [
        GenerationItem(
            "q1", "qa", "What is the widget ?", ("blue device",), (widget, glacier), answerable=True
        ),
        GenerationItem(
            "q2",
            "describe",
            "What is a lighthouse ?",
            ("Coastal tower",),
            (lighthouse, widget),
            answerable=False,
        ),
        GenerationItem(
            "q3",
            "qa",
            "What is a glacier ?",
            ("slow river of ice",),
            (glacier, lighthouse),
            answerable=True,
        ),
    ]


def doc(doc_id: str, description: str) -> Doc:
    return Doc(
        id=doc_id,
        title=doc_id.title(),
        text=f"{doc_id} is a {description}.",
        source="test",
        description=description,
    )


def qa(record_id: str, gold: str, answerable: bool | None = None) -> QARecord:
    return QARecord(
        id=record_id,
        question=f"What is {gold} ?",
        answers=[gold],
        doc_ids=[gold],
        group=record_id,
        answerable=answerable,
    )


def make_generator_project(root: Path, base: Path) -> Path:
    """The generator side's inputs written by hand: a KB, real and KB questions, contexts."""
    docs = [doc(d, f"{d} thing") for d in ("widget", "lighthouse", "glacier", "river")]
    splits = {
        "train": [qa("t1", "widget", True), qa("t2", "glacier", False)],
        "dev": [qa("d1", "lighthouse", True), qa("d2", "river", False)],
        "test": [qa("x1", "river", True)],
    }
    kb = {"train": [qa("kb:river", "river", True)], "dev": [qa("kb:widget", "widget", True)]}
    contexts = {  # t2 and d1 miss their gold doc in the top 2
        "t1": ["widget", "river"],
        "t2": ["river", "widget", "glacier"],
        "d1": ["glacier", "river", "lighthouse"],
        "d2": ["river", "glacier"],
        "kb:river": ["river", "lighthouse"],
        "kb:widget": ["lighthouse", "widget"],
    }
    write_jsonl(root / "kb.jsonl", docs)
    for split, records in splits.items():
        write_jsonl(root / "qa" / f"{split}.jsonl", records)
    for split, records in kb.items():
        write_jsonl(root / "kb_questions" / f"{split}.jsonl", records)
    write_jsonl(root / "contexts.jsonl", [{"id": q, "doc_ids": d} for q, d in contexts.items()])
    params = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    params["paths"] |= {
        "retrieval_docs": "kb.jsonl",
        "retrieval_qa_dir": "qa",
        "kb_questions_dir": "kb_questions",
        "retrieved_contexts": "contexts.jsonl",
        "generator_base_dir": str(base),
        "generator_training_set": "generator_set",
        "generator_dir": "tuned",
        "generator_model": "tuned/model",
    }
    params["tracking"]["enabled"] = False
    params["generator"] |= {"top_k": 2, "passage_tokens": 12, "instructions": INSTRUCTIONS}
    params["finetune_generator"] |= {
        "lora": {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]},
        "epochs": 1,
        "batch_size": 2,
        "warmup_steps": 0,
        "eval_steps": 1,
    }
    params["precision"]["train_generator"] = "fp32"
    params_file = root / "params.yaml"
    params_file.write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")
    return params_file
