"""The one typed loader of `params.yaml`.

Every knob lives in `params.yaml`; code reads it only through `load_params`, so a default is
never written twice and an unknown key or an out-of-range value fails before any work starts.
The loader also resolves every path against the project folder (the one holding the params
file), so the library receives absolute paths and never needs to know where the file was.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal, get_args

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from tasks.lib.core.io import InputError
from tasks.lib.core.precision import FloatSetting, PrecisionSetting

PROJECT_DIR = "project_dir"  # the validation context key: the folder holding params.yaml

RetrievalMode = Literal["dense", "bm25", "hybrid"]  # hybrid: weighted RRF of the other two
RETRIEVAL_MODES: tuple[RetrievalMode, ...] = get_args(RetrievalMode)


class Section(BaseModel):
    """A params section: unknown keys are errors (a typo must not silently become a default)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    @field_validator("*", mode="after")
    @classmethod
    def _project_relative(cls, value: Any, info: ValidationInfo) -> Any:
        """A relative path in params means relative to the project folder, wherever we run."""
        project = (info.context or {}).get(PROJECT_DIR)
        if project is None:
            return value
        if isinstance(value, dict):
            return {key: _under(project, item) for key, item in value.items()}
        return _under(project, value)


def _under(project: Path, value: Any) -> Any:
    return project / value if isinstance(value, Path) and not value.is_absolute() else value


_INSIDE = {  # PathsParams entry -> the out folder of the stage that writes it
    "generator_model": "generator_dir",
    "fusion": "tune_retrieval_dir",
    "synthetic_queries": "synthetic_queries_dir",
    "retriever_training_set": "retriever_training_set_dir",
    "retriever_model": "retriever_dir",
    "retriever_positives": "retriever_dir",
    "fusion_tuned": "tune_retrieval_tuned_dir",
    "validate_summary": "validate_dir",
    "validate_quarantine": "validate_dir",
    "dedup_qa_dir": "dedup_dir",
    "generation_metrics": "generation_eval_dir",
    "generation_predictions": "generation_eval_dir",
    "retriever_comparison_metrics": "retriever_comparison_dir",
    "evaluate_metrics": "evaluate_dir",
    "evaluate_scores": "evaluate_dir",
    "change_questions": "refresh_questions_dir",
    "deleted_docs": "refresh_questions_dir",
    "feedback_export": "feedback_export_dir",
}


class PathsParams(Section):
    """Where each stage reads and writes; `dvc.yaml` interpolates the same values.

    A file or folder that a second stage reads has its own entry here, so its name is spelled
    once; the stage that writes it does so inside its own (atomically replaced) out folder.
    """

    kb_docs: Path
    qa_dir: Path
    ingest_skipped: Path  # ingest -> the source folders' paths it did not read, and why
    validate_dir: Path
    validate_summary: Path  # validate's summary (in validate_dir): dedup runs after it
    validate_quarantine: Path  # docs validate quarantined, with why (in validate_dir): dedup
    dedup_dir: Path
    dedup_qa_dir: Path  # dedup's remapped QA splits (in dedup_dir): kb_questions reads them
    kb_questions_dir: Path  # kb_questions -> {train,dev,heldout}.jsonl, rejected, metrics, qa/
    retrieved_contexts: Path  # retrieval side -> {"id", "doc_ids"} per question, best first
    generator_base_dir: Path  # prepare_generator -> transformers folder of the base generator
    generator_training_set: Path  # generator_training_set -> {train,dev}.jsonl: finetune_generator
    generator_dir: Path  # finetune_generator -> model/ (merged), adapter/, train_metrics.json
    generator_model: Path  # the merged tuned generator in generator_dir (evaluation, bundle)
    generation_eval_dir: Path  # evaluate_generation -> metrics.json, predictions, samples.md
    generation_metrics: Path  # its systems' scores (in generation_eval_dir): evaluate reads them
    generation_predictions: Path  # their answers per question (in generation_eval_dir): evaluate
    retrieval_docs: Path  # dedup's kept docs (in dedup_dir): the KB every later stage reads
    retrieval_qa_dir: Path  # kb_questions' QA splits (in kb_questions_dir): every later stage's QA
    embedding_cache: Path  # persistent embedding cache; never a dvc out (it must outlive reruns)
    generation_cache: Path  # persistent cache of generated answers; never a dvc out (as above)
    checkpoints_dir: Path  # training checkpoints per stage and run; never a dvc out (see above)
    index_dir: Path  # index -> faiss.index, bm25/, docs.jsonl, manifest.json (base encoder)
    tune_retrieval_dir: Path  # tune_retrieval -> fusion.json (the choice), grid.json
    fusion: Path  # tune_retrieval's chosen fusion for the base index (in tune_retrieval_dir)
    retrieval_eval_dir: Path  # evaluate_retrieval -> metrics.json, report.*, recall_at_k_*.csv
    synthetic_queries_dir: Path  # synthesize_queries -> queries.jsonl, rejected.jsonl, metrics.json
    synthetic_queries: Path  # its kept questions (in synthetic_queries_dir): the retriever's set
    retriever_training_set_dir: Path  # retriever_training_set -> the set, metrics.json
    retriever_training_set: Path  # the set (in its dir): all that finetune_retriever learns from
    retriever_dir: Path  # finetune_retriever -> model/, train_metrics.json, positives.json
    retriever_model: Path  # the tuned encoder folder in retriever_dir (index_tuned, bundle)
    retriever_positives: Path  # doc ids training saw as positives (in retriever_dir)
    index_tuned_dir: Path  # index --encoder <retriever_model> -> the tuned encoder's index
    tune_retrieval_tuned_dir: Path  # tune_retrieval on the tuned index -> fusion.json
    fusion_tuned: Path  # the fusion re-tuned for the tuned index (in tune_retrieval_tuned_dir)
    retriever_comparison_dir: Path  # compare_retrievers -> metrics.json, report.{json,md}
    retriever_comparison_metrics: Path  # its systems (in retriever_comparison_dir): evaluate
    bundle_dir: Path  # bundle -> the RAG system as an MLflow pyfunc model folder
    evaluate_dir: Path  # evaluate -> metrics.json, predictions.jsonl, report.md
    evaluate_metrics: Path  # {system: {metric: mean}} (in evaluate_dir): DVC metrics, status
    evaluate_scores: Path  # per-question scores of every system (in evaluate_dir): the gate
    kb_changes: Path  # kb_changes -> added / modified / deleted ids against the champion's KB
    refresh_index_dir: Path  # refresh_index -> the new KB indexed with the champion's encoder
    refresh_questions_dir: Path  # refresh_questions -> questions, rejected, deleted, metrics
    change_questions: Path  # questions about added / modified docs (in refresh_questions_dir)
    deleted_docs: Path  # json list of deleted doc ids (in refresh_questions_dir)
    refresh_bundle_dir: Path  # refresh_bundle -> new index + the champion's fusion and pins
    refresh_evaluate_dir: Path  # refresh_evaluate -> the refreshed bundle scored
    refresh_decision: Path  # refresh_register -> the refresh gate's decision
    component_cache: Path  # registered components by (store, model, version); never a dvc out
    feedback_export_dir: Path  # feedback_export -> train.jsonl, metrics.json
    feedback_export: Path  # accepted feedback as QA records (in feedback_export_dir): kb_questions

    @field_validator(*_INSIDE, mode="after")
    @classmethod
    def _inside_its_stage_out(cls, value: Path, info: ValidationInfo) -> Path:
        """Its stage writes it inside its one out folder (declared above it), so it lies there."""
        folder_key = _INSIDE[str(info.field_name)]
        folder = info.data.get(folder_key)  # absent when the folder itself was invalid
        project = (info.context or {}).get(PROJECT_DIR, Path())
        inside = folder is None or _under(project, value).is_relative_to(_under(project, folder))
        if not inside:
            raise ValueError(f"must be inside paths.{folder_key} ({folder})")
        return value


class SplitParams(Section):
    """Fractions of QA *groups* per split; test takes the rest."""

    train: float = Field(gt=0, lt=1)
    dev: float = Field(ge=0, lt=1)
    seed: int

    @model_validator(mode="after")
    def _leaves_room_for_test(self) -> SplitParams:
        if self.train + self.dev >= 1:
            raise ValueError(
                f"train + dev must be < 1 to leave a test split (got {self.train} + {self.dev})"
            )
        return self


class IngestParams(Section):
    """`source: packaged` reads the bundled KB and questions; `folder` reads the two folders."""

    source: Literal["packaged", "folder"]
    kb_folder: Path
    qa_folder: Path  # .jsonl files of canonical QA records; empty or absent: no QA set
    updates_folder: Path  # docs added on top of either source (a KB feed); may be empty
    deletions_file: str = Field(pattern=r"^[^/\\]+$")  # a file name in updates_folder
    ignore: list[str]  # glob patterns of file and folder names the three folders never read
    split: SplitParams

    @property
    def deletions_path(self) -> Path:
        """Doc ids to delete, one a line; inside the updates folder, which is ingest's dvc dep."""
        return self.updates_folder / self.deletions_file


FailurePolicy = Literal["stop", "quarantine"]


class DocsFailurePolicy(Section):
    """What a failed docs expectation does: `stop` the pipeline, or `quarantine` the offending
    docs (dedup drops them). The id expectations always stop: a quarantined doc is named by its
    id."""

    text_not_blank: FailurePolicy
    doc_min_chars: FailurePolicy
    doc_max_chars: FailurePolicy
    title_not_blank: FailurePolicy
    title_max_chars: FailurePolicy
    max_control_char_share: FailurePolicy


class ValidateParams(Section):
    doc_min_chars: int = Field(ge=1)
    doc_max_chars: int = Field(ge=1)
    title_max_chars: int = Field(ge=1)
    max_control_char_share: float = Field(ge=0, le=1)
    on_failure: DocsFailurePolicy
    max_quarantined_share: float = Field(ge=0, lt=1)  # more docs quarantined than this: stop
    report_examples: int = Field(ge=1, le=100)

    @model_validator(mode="after")
    def _bounds_ordered(self) -> ValidateParams:
        if self.doc_min_chars > self.doc_max_chars:
            raise ValueError("doc_min_chars must not exceed doc_max_chars")
        return self


class DedupParams(Section):
    threshold: float = Field(gt=0, le=1)
    num_perm: int = Field(ge=16, le=1024)
    shingle_size: int = Field(ge=1, le=20)
    seed: int


class TrackingParams(Section):
    """Where MLflow keeps runs and models; `MLFLOW_TRACKING_URI` in the environment wins."""

    uri: str | None  # None: sqlite mlflow.db in the project folder
    artifacts_dir: Path  # artifacts of the local store; a tracking server keeps its own
    experiment: str = Field(min_length=1)
    enabled: bool
    required: bool  # false: a stage whose store is down warns and runs without logging
    health_timeout_s: float = Field(gt=0)
    request_timeout_s: int = Field(ge=1)  # MLflow reads both as whole numbers
    request_retries: int = Field(ge=0, le=10)  # MLflow refuses more than 10


class GateParams(Section):
    """The promotion rule: what must improve, by how much, and what may not get worse, judged
    on paired bootstrap intervals of per-question differences (see `serving.promotion`)."""

    primary: list[str] = Field(min_length=1)
    tracked: list[str]
    lower_is_better: list[str]
    margin: float = Field(ge=0)  # a primary gain's interval must lie above it
    tolerance: float = Field(ge=0)  # a tracked loss's interval must lie above minus it
    change_metrics: list[str]  # an index refresh must gain on these on the changed docs' questions
    candidate: str = Field(min_length=1)
    baselines: list[str]
    confidence: float = Field(gt=0, lt=1)
    resamples: int = Field(ge=100)
    seed: int

    @model_validator(mode="after")
    def _primary_not_tracked(self) -> GateParams:
        both = sorted(set(self.primary) & set(self.tracked))
        if both:
            raise ValueError(f"metrics {both} are in both primary and tracked")
        return self


class RegisterParams(Section):
    models: dict[str, Path]  # registered model name -> folder a stage wrote
    judged: str = Field(min_length=1)  # the model the gate promotes (the RAG bundle)
    decision_file: Path  # the gate's decision and its numbers
    gate: GateParams

    @model_validator(mode="after")
    def _judged_is_registered(self) -> RegisterParams:
        if self.judged not in self.models:
            raise ValueError(f"judged {self.judged!r} is not one of models {list(self.models)}")
        return self


class PrecisionParams(Section):
    """CPU number format per use; `auto` resolves on the machine that runs (see precision)."""

    encode: PrecisionSetting
    generate: FloatSetting
    train_retriever: FloatSetting
    train_generator: FloatSetting


class RetrainParams(Section):
    retries: int = Field(ge=0, le=10)  # per stage; a user-fixable input error is not retried
    retry_delay_seconds: float = Field(ge=0)


class PrepareGeneratorParams(Section):
    """`packaged` converts the bundled SmolLM2 GGUF; anything else is an HF model name or path."""

    model: str = Field(min_length=1)


class KbQuestionsParams(Section):
    """Questions the KB answers itself: "What is <title>?" -> the doc's description, or a
    question the base generator wrote and answered from the doc (`generated`)."""

    source: Literal["auto", "description", "generated"]
    question_template: str = Field(pattern=r"\{title\}")
    min_words: int = Field(ge=1)  # description length bounds, in words
    max_words: int = Field(ge=1)
    n_train: int = Field(ge=0)
    n_dev: int = Field(ge=0)
    n_heldout: int = Field(ge=1)
    generated_docs: int = Field(ge=1)  # docs sampled in generated mode, one triple each
    max_answer_words: int = Field(ge=1)  # a generated answer is a passage span this short
    round_trip_mode: RetrievalMode  # the retriever a generated question must find its doc with
    round_trip_k: int = Field(ge=1)
    seed: int


GENERATOR_TASKS = ("qa", "describe")


class GeneratorParams(Section):
    """The prompt contract shared by training and evaluation (they must build the same prompts)."""

    top_k: int = Field(ge=1, le=20)  # retrieved passages per prompt
    passage_tokens: int = Field(ge=8)  # each passage (title + text) is cut to this many tokens
    max_new_tokens: int = Field(ge=1)
    instructions: dict[str, str]  # task -> system instruction

    @model_validator(mode="after")
    def _every_task_instructed(self) -> GeneratorParams:
        missing = [t for t in GENERATOR_TASKS if not self.instructions.get(t, "").strip()]
        if missing:
            raise ValueError(f"instructions missing for tasks {missing}")
        return self


class LoraParams(Section):
    r: int = Field(ge=1)
    alpha: float = Field(gt=0)
    dropout: float = Field(ge=0, lt=1)
    target_modules: list[str] = Field(min_length=1)


class FinetuneGeneratorParams(Section):
    method: Literal["lora", "full"]
    lora: LoraParams
    real_answerable_only: bool  # real train QA whose answer is in the gold passage, or all
    gold_passage: Literal["retrieved", "insert"]  # insert: gold replaces the last passage if absent
    epochs: float = Field(gt=0)
    batch_size: int = Field(ge=1)
    learning_rate: float = Field(gt=0)
    warmup_steps: int = Field(ge=0)
    weight_decay: float = Field(ge=0)
    eval_steps: int = Field(ge=1)  # dev loss every this many steps; the best checkpoint is kept
    seed: int
    resume: bool  # a killed run resumes from its last checkpoint (same data and params)


class RetrieveContextsParams(Section):
    mode: RetrievalMode
    k: int = Field(ge=1, le=100)  # ids kept per question (the generator reads its top_k)


class EvaluateGenerationParams(Section):
    batch_size: int = Field(ge=1)
    bootstrap_resamples: int = Field(ge=100)
    confidence: float = Field(gt=0, lt=1)
    samples: int = Field(ge=0)  # sample predictions per evaluation set in samples.md
    seed: int


class FaissParams(Section):
    """The dense index: exact inner product, an HNSW graph, or trained IVF-PQ (large KBs)."""

    type: Literal["flat", "hnsw", "ivfpq"]
    hnsw_m: int = Field(ge=4, le=256)  # graph neighbours per node
    hnsw_ef_construction: int = Field(ge=8)
    hnsw_ef_search: int = Field(ge=1)  # search breadth: recall against speed
    ivf_nlist: int = Field(ge=1)  # IVF cells
    ivf_nprobe: int = Field(ge=1)  # cells visited per query
    pq_m: int = Field(ge=1)  # sub-quantizers; must divide the embedding dimension
    pq_nbits: int = Field(ge=1, le=16)

    @model_validator(mode="after")
    def _probe_within_cells(self) -> FaissParams:
        if self.ivf_nprobe > self.ivf_nlist:
            raise ValueError(f"ivf_nprobe {self.ivf_nprobe} exceeds ivf_nlist {self.ivf_nlist}")
        return self


class Bm25Params(Section):
    method: Literal["robertson", "lucene", "bm25l", "bm25+", "atire"]
    k1: float = Field(gt=0)
    b: float = Field(ge=0, le=1)
    stopwords: str | None  # a bm25s stopword list name ("en"), or None to keep every word


class IndexParams(Section):
    """`encoder`: `packaged:<package>`, a sentence-transformers hub name, or a model folder."""

    encoder: str = Field(min_length=1)
    include_title: bool  # index "title\ntext" rather than the text alone
    batch_size: int = Field(ge=1)
    threads: int = Field(ge=0)  # torch threads for encoding; 0: one per core
    faiss: FaissParams
    bm25: Bm25Params


class RetrievalParams(Section):
    """Hybrid search (weighted RRF) until `tune_retrieval` has chosen its own weights."""

    candidates: int = Field(ge=1)  # docs each side retrieves before fusion
    rrf_k: float = Field(ge=0)  # score = weight / (rrf_k + rank)
    dense_weight: float = Field(ge=0)
    bm25_weight: float = Field(ge=0)

    @model_validator(mode="after")
    def _some_weight(self) -> RetrievalParams:
        if self.dense_weight + self.bm25_weight <= 0:
            raise ValueError("dense_weight and bm25_weight cannot both be 0")
        return self


class TuneRetrievalParams(Section):
    split: Literal["train", "dev"]  # never test: it must stay unseen until evaluation
    metric: str = Field(pattern=r"^[a-z_]+(@\d+)?$")  # a ranx metric name
    rrf_k: list[float] = Field(min_length=1)
    dense_weight: list[float] = Field(min_length=1)  # bm25_weight = 1 - dense_weight
    # fusion is kept only when its paired-bootstrap dev gain over dense alone excludes zero
    require_gain: bool
    confidence: float = Field(gt=0, lt=1)
    bootstrap_resamples: int = Field(ge=100)
    seed: int

    @model_validator(mode="after")
    def _weights_are_shares(self) -> TuneRetrievalParams:
        if any(not 0 <= w <= 1 for w in self.dense_weight):
            raise ValueError(f"dense_weight values must be in [0, 1] (got {self.dense_weight})")
        return self


class EvaluateRetrievalParams(Section):
    splits: list[Literal["train", "dev", "test"]] = Field(min_length=1)
    metrics: list[str] = Field(min_length=1)  # ranx metric names
    curve_depth: int = Field(ge=1)  # the recall@k curve runs k = 1..curve_depth
    equal_rrf_k: float = Field(ge=0)  # the equal-weight baseline: RRF(k), weights 0.5 / 0.5
    bootstrap_resamples: int = Field(ge=100)
    confidence: float = Field(gt=0, lt=1)
    seed: int


class SynthesizeQueriesParams(Section):
    """Doc-to-query: the local generator writes one question per sampled KB doc; a question is
    kept only when the base retriever ranks its source doc in the top `round_trip_k`."""

    n_docs: int = Field(ge=0)  # docs sampled (never a dev/test gold doc), one question each
    prompt: str = Field(pattern=r"\{text\}")  # the user turn; {title} and {text} are filled in
    doc_words: int = Field(ge=8)  # words of the passage shown to the generator
    max_new_tokens: int = Field(ge=4)
    batch_size: int = Field(ge=1)
    round_trip_k: int = Field(ge=1)
    threads: int = Field(ge=0)  # torch threads; 0: one per core
    seed: int


class HardNegativesParams(Section):
    """Negatives mined with the base encoder over the whole KB (the gold docs never qualify)."""

    count: int = Field(ge=0)  # per training pair; 0: in-batch negatives only
    range_min: int = Field(ge=0)  # skip the first ranks (near-duplicates of the gold)
    range_max: int = Field(ge=1)  # candidates looked at per question
    margin_type: Literal["relative", "absolute"]
    margin: float = Field(ge=0)  # skip candidates scoring within this of the gold's score

    @model_validator(mode="after")
    def _range_holds_count(self) -> HardNegativesParams:
        if self.count and self.range_max - self.range_min < self.count:
            raise ValueError("range_max - range_min must be at least count")
        return self


class FinetuneRetrieverParams(Section):
    use_real: bool  # real train QA pairs
    use_synthetic: bool  # synthesize_queries' round-trip-consistent pairs
    loss: Literal["mnrl", "cached_mnrl"]  # cached: big batches in small memory, slower
    cached_mini_batch: int = Field(ge=1)  # cached_mnrl's forward chunk
    epochs: float = Field(gt=0)
    batch_size: int = Field(ge=2)  # in-batch negatives: batch_size - 1 per question
    learning_rate: float = Field(gt=0)
    warmup_ratio: float = Field(ge=0, lt=1)
    negatives: HardNegativesParams
    eval_steps: int = Field(ge=0)  # dev evaluation every this many steps; 0: once per epoch
    early_stopping_patience: int = Field(ge=1)  # evaluations without a new best dev score
    eval_corpus: int = Field(ge=0)  # dev evaluation corpus size; 0: the whole KB
    threads: int = Field(ge=0)  # torch threads; 0: one per core
    seed: int
    resume: bool  # a killed run resumes from its last checkpoint (same data and params)

    @model_validator(mode="after")
    def _has_training_pairs(self) -> FinetuneRetrieverParams:
        if not (self.use_real or self.use_synthetic):
            raise ValueError("use_real and use_synthetic are both false: nothing to train on")
        return self


class CompareRetrieversParams(Section):
    split: Literal["dev", "test"]
    metrics: list[str] = Field(min_length=1)  # ranx metric names
    bootstrap_resamples: int = Field(ge=100)
    confidence: float = Field(gt=0, lt=1)
    seed: int


class BundleParams(Section):
    retriever_model: str  # registered names of the components the bundle pins
    generator_model: str
    mode: RetrievalMode
    depth: int = Field(ge=1, le=100)  # doc ids ranked per question (retrieval metrics read them)
    batch_size: int = Field(ge=1)  # questions generated together


class RefreshParams(Section):
    """The refresh path: a changed KB re-indexed with the champion's encoder, no retraining."""

    max_docs: int = Field(ge=0)  # added / modified docs questioned (a seeded sample beyond it)
    seed: int


class ServeParams(Section):
    """`ragloop serve`: where it listens, which alias it follows, what it accepts."""

    host: str
    port: int = Field(ge=1, le=65535)
    alias: str = Field(min_length=1)
    poll_seconds: float = Field(ge=0)  # 0: the alias is re-read only on POST /reload
    max_question_chars: int = Field(ge=1)
    snippet_chars: int = Field(ge=0)


class FeedbackParams(Section):
    """Where feedback on answers is stored, and when enough of it retrains."""

    database: str = Field(min_length=1)  # SQLAlchemy URL; relative sqlite paths: the project's
    max_text_chars: int = Field(ge=1)
    retrain_threshold: int = Field(ge=1)


class EvaluateParams(Section):
    split: Literal["dev", "test"]
    retrieval_metrics: list[str] = Field(min_length=1)  # ranx names, at most bundle.depth deep
    rescore_champion: bool  # score the registry's champion bundle on the same questions


class Params(Section):
    paths: PathsParams
    ingest: IngestParams
    validate_: ValidateParams = Field(alias="validate")
    dedup: DedupParams
    tracking: TrackingParams
    precision: PrecisionParams
    register_: RegisterParams = Field(alias="register")
    retrain: RetrainParams
    prepare_generator: PrepareGeneratorParams
    kb_questions: KbQuestionsParams
    retrieve_contexts: RetrieveContextsParams
    generator: GeneratorParams
    finetune_generator: FinetuneGeneratorParams
    evaluate_generation: EvaluateGenerationParams
    index: IndexParams
    retrieval: RetrievalParams
    tune_retrieval: TuneRetrievalParams
    evaluate_retrieval: EvaluateRetrievalParams
    synthesize_queries: SynthesizeQueriesParams
    finetune_retriever: FinetuneRetrieverParams
    compare_retrievers: CompareRetrieversParams
    bundle: BundleParams
    evaluate: EvaluateParams
    refresh: RefreshParams
    serve: ServeParams
    feedback: FeedbackParams

    _project_dir: Path = PrivateAttr(default_factory=Path.cwd)

    def model_post_init(self, context: Any) -> None:
        if context and PROJECT_DIR in context:
            self._project_dir = context[PROJECT_DIR]

    @property
    def project_dir(self) -> Path:
        """The folder holding `params.yaml`, where the MLflow store and `dvc.lock` live."""
        return self._project_dir


_UNQUOTED = {  # strict type error -> the fix for a scalar quoted in YAML
    "int_type": "write the number without quotes",
    "float_type": "write the number without quotes",
    "bool_type": "write true or false, without quotes",
}


def load_params(path: Path = Path("params.yaml")) -> Params:
    """Read and check `params.yaml`; errors name the file and the dotted key."""
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise InputError(f"{path}: params file not found") from err
    except yaml.YAMLError as err:
        raise InputError(f"{path}: not valid YAML: {err}") from err
    if not isinstance(raw, dict):
        raise InputError(f"{path}: expected a mapping of sections, got {type(raw).__name__}")
    # Validated as a JSON document, strictly: "128" is no integer and "no" (quoted; unquoted
    # YAML reads it as false) no boolean, while an integer is a float, a string a path and a
    # list a tuple. `default=str` writes what JSON lacks (a YAML date) as text.
    document = json.dumps(raw, default=str)
    try:
        return Params.model_validate_json(
            document, strict=True, context={PROJECT_DIR: path.resolve().parent}
        )
    except ValidationError as err:
        problems = []
        for e in err.errors():
            key = ".".join(str(p) for p in e["loc"]) or "(top level)"
            quoted = isinstance(e.get("input"), str) and e["type"] in _UNQUOTED
            fix = f": {_UNQUOTED[e['type']]}" if quoted else ""
            problems.append(f"  {key}: {e['msg']} (got {e.get('input')!r}){fix}")
        raise InputError(f"{path}: invalid params\n" + "\n".join(problems)) from err


def load_project_params(path: Path, how_to_pass: str) -> Params:
    """`load_params` for a command a user types (`how_to_pass`: how it takes another params
    file): no params.yaml where it defaults to one most likely means it ran outside the project
    folder, and the error says so."""
    if path == Path("params.yaml") and not path.is_file():
        raise InputError(
            f"no params.yaml in {Path.cwd()}; run inside the project folder or {how_to_pass}"
        )
    return load_params(path)
