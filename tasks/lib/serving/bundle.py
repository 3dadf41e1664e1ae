"""The RAG system as one MLflow pyfunc model, so the registry can serve it.

The bundle carries what only makes sense together: the tuned index (built by one encoder, which
its manifest fingerprints), the hybrid fusion chosen for that index, the prompt contract
(`generator` params) and the `precision` settings it encodes and generates in (`auto` resolved
by the CPU of the machine that loads it: bf16 where that CPU has it, fp32 elsewhere). It does
*not* copy the encoder or the generator: it names them in `components.json`, as local folders
here and as registered versions once `register` has pinned them (`pin_components`), so a
registered bundle is a few MB and always serves with the exact retriever and generator versions
it was evaluated with. On load it re-checks the encoder's fingerprint against the index: a
bundle can never pair an index with another encoder.

`predict` takes questions (a string, a list of strings, or a DataFrame with a `question`
column) and returns, per question, the answer, the cited doc ids (the passages in the prompt)
and the wider ranking the retriever returned. Served, it generates every answer; `evaluate`
gives it the generation cache (`use_generation_cache`), so answers `evaluate_generation` made to
the very same prompts are reused.

`mlflow models serve -m models:/<bundle>@champion --env-manager local`, run from the project's
venv, answers MLflow's scoring protocol: `{"inputs": [...]}`, `{"inputs": {"question": [...]}}`,
`{"dataframe_records": [{"question": ...}]}` and `{"dataframe_split": ...}` alike, an empty
batch with no predictions, a request without usable questions with a 400 saying why. The
signature declares the output only, since MLflow enforces a declared input schema on Python
callers too; the input example shows the `question` column. The recorded pip requirements pin
the third-party distributions the model code imports (`requirements`), not ragloop, which is
on no index: a bundle serves in the environment that built it, not in one MLflow makes.

The pyfunc is saved as a *model from code* (`rag_model.py` beside this file): loading it runs
that file, which is ragloop's own code, and never unpickles anything from the artifact store.
Since loading runs the folder's copy of that file, `load_bundle` first checks that the copy is
byte for byte the installed one, that the MLmodel names no other loader or code path, and that
no pickle lies in the folder; a registered version is also checked file by file against the
sha256 manifest the registry holds (`integrity`), and so is every component it pins.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.models import Model, ModelSignature
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.types import ColSpec, Schema
from mlflow.types.schema import Array
from pydantic import BaseModel

from tasks.lib.core.config import BundleParams, GeneratorParams, PrecisionParams
from tasks.lib.core.io import InputError, atomic_path, read_text, write_json
from tasks.lib.core.precision import FloatSetting, PrecisionSetting, resolve_precision
from tasks.lib.generation.generation_cache import CachedGenerator, GenerationCache
from tasks.lib.generation.generator import Decoding, GenerationItem, Passage, item_prompt
from tasks.lib.generation.loader import load_generator
from tasks.lib.retrieval.encoder import load_encoder
from tasks.lib.retrieval.retriever import Fusion, Retriever
from tasks.lib.serving.component_cache import active_cache, cached_version
from tasks.lib.serving.integrity import verified_download
from tasks.lib.serving.requirements import pinned_requirements

if TYPE_CHECKING:
    from mlflow import MlflowClient

MODEL_CODE = str(Path(__file__).with_name("rag_model.py"))  # the pyfunc as code, not a pickle
COMPONENTS = "components"  # the artifact naming the encoder and generator, and the prompt
COMPONENT_ROLES = ("retriever", "generator")  # the models a bundle names in COMPONENTS
INDEX, FUSION = "index", "fusion"
CODE_LOADER = "mlflow.pyfunc.loaders.code_model"  # pyfunc's loader of models from code
# What pickle, cloudpickle, joblib and dill save under; loading any of them can run code.
PICKLE_SUFFIXES = {".pkl", ".pickle", ".cloudpickle", ".joblib", ".dill"}
PICKLE_PROTOCOLS = range(2, 6)  # a pickle of protocol 2 or later opens with 0x80 and this byte
QUESTION = "question"  # the input column (or key) of the scoring protocol's payloads
QUESTION_FORMS = (
    '{"inputs": ["..."]}, {"inputs": {"question": ["..."]}}, '
    '{"dataframe_records": [{"question": "..."}]} or '
    '{"dataframe_split": {"columns": ["question"], "data": [["..."]]}}'
)
# What `RagAnswerer.answer` returns per question. The input side stays undeclared: MLflow
# would enforce a `question` column on Python callers too and refuse `predict(["..."])`.
SIGNATURE = ModelSignature(
    inputs=None,
    outputs=Schema(
        [
            ColSpec("string", QUESTION),
            ColSpec("string", "answer"),
            ColSpec(Array("string"), "sources"),
            ColSpec(Array("string"), "source_titles"),
            ColSpec(Array("string"), "retrieved"),
        ]
    ),
)
INPUT_EXAMPLE = pd.DataFrame({QUESTION: ["Which planet has bright rings?"]})


class BundlePrecision(BaseModel):
    """The `precision` settings a bundle carries, as written (`auto` resolves on the machine
    that loads it). A bundle saved before it carried them ran in fp32, so that is what it
    still does."""

    encode: PrecisionSetting = "fp32"
    generate: FloatSetting = "fp32"


@dataclass
class RagAnswerer:
    """Retrieve, build the prompt the generator was trained with, answer greedily."""

    retriever: Retriever
    model: CachedGenerator  # with a generation cache only when evaluation gives it one
    generator: GeneratorParams
    settings: BundleParams
    decoding: Decoding  # its precision resolved on the machine that loaded the bundle

    def answer(self, questions: list[str]) -> list[dict[str, Any]]:
        depth = max(self.settings.depth, self.generator.top_k)
        rankings = self.retriever.search(questions, k=depth, mode=self.settings.mode)
        prompts = [
            item_prompt(
                GenerationItem(
                    id=str(i),
                    task="qa",
                    question=question,
                    answers=(),
                    passages=tuple(Passage(hit.title, hit.text) for hit in ranked),
                ),
                self.model.tokenizer,
                self.generator.instructions,
                self.generator.passage_tokens,
                self.generator.top_k,
            )
            for i, (question, ranked) in enumerate(zip(questions, rankings, strict=True))
        ]
        answers, _ = self.model.answers(prompts, self.settings.batch_size, self.decoding)
        return [
            {
                "question": question,
                "answer": answer,
                "sources": [hit.id for hit in ranked[: self.generator.top_k]],
                "source_titles": [hit.title for hit in ranked[: self.generator.top_k]],
                "retrieved": [hit.id for hit in ranked],
            }
            for question, answer, ranked in zip(questions, answers, rankings, strict=True)
        ]


@contextlib.contextmanager
def component_folder(spec: dict[str, str]) -> Iterator[Path]:
    """A pinned registry version (downloaded from the current store and checked against its
    registered manifest) or, before registration, a local folder. Inside `using_cache` the
    version comes from the component cache; otherwise the download is deleted once the
    component is loaded from it (the model is then in memory)."""
    if "version" in spec:
        from mlflow import MlflowClient

        cache = active_cache.get()
        if cache is not None:  # a cached version is kept for the next load
            yield cached_version(MlflowClient(), spec["model"], str(spec["version"]), cache)
            return
        with tempfile.TemporaryDirectory(
            prefix="ragloop-component.", ignore_cleanup_errors=True
        ) as tmp:
            yield verified_download(MlflowClient(), spec["model"], str(spec["version"]), Path(tmp))
        return
    folder = Path(spec["path"])
    if not folder.is_dir():
        raise InputError(f"bundle: component {spec['model']!r} folder {folder} is missing")
    yield folder


def bundle_retriever(
    index_dir: Path, fusion_file: Path, spec: dict[str, Any], dense: bool = True
) -> Retriever:
    """The bundle's retriever: its index and fusion with the encoder its components `spec`
    names (loading raises EncoderMismatchError unless that is the encoder that built the
    index), embedding queries in the format the spec's setting resolves to here. `dense=False`:
    BM25 only, the encoder not even downloaded."""
    precision = resolve_precision(
        BundlePrecision.model_validate(spec.get("precision", {})).encode, "encode"
    )
    fusion = Fusion.from_file(fusion_file)
    if not dense:
        return Retriever.load(index_dir, fusion, precision=precision, dense=False)
    with component_folder(spec["retriever"]) as folder:
        encoder = load_encoder(str(folder), Path())
    return Retriever.load(index_dir, fusion, encoder=encoder, precision=precision)


def protocol_error(message: str) -> MlflowException:
    """A bad scoring request: MLflow's scoring server answers it with 400 and `message`."""
    return MlflowException(
        f"predict: {message}; send questions as {QUESTION_FORMS}",
        error_code=INVALID_PARAMETER_VALUE,
    )


def question_values(model_input: Any) -> list[Any]:
    """The values of one batch's `question` field, in whichever shape the scoring server (which
    parses with no input schema) or a Python caller hands them over."""
    if isinstance(model_input, pd.DataFrame):
        if QUESTION in model_input.columns:
            return model_input[QUESTION].tolist()
        if model_input.empty:  # `{"dataframe_records": []}` parses to a frame with no columns
            return []
        columns = [str(column) for column in model_input.columns]
        raise protocol_error(f"the input has no {QUESTION!r} column (its columns: {columns})")
    if isinstance(model_input, dict):
        if QUESTION not in model_input:
            raise protocol_error(
                f"the input has no {QUESTION!r} key (its keys: {[str(key) for key in model_input]})"
            )
        model_input = model_input[QUESTION]
    if isinstance(model_input, np.ndarray):  # JSON arrays arrive as numpy arrays
        return [model_input.item()] if model_input.ndim == 0 else model_input.tolist()
    if isinstance(model_input, str):
        return [model_input]
    if isinstance(model_input, list | tuple | pd.Series):
        return list(model_input)
    raise protocol_error(f"unreadable input of type {type(model_input).__name__}")


def questions_of(model_input: Any) -> list[str]:
    """The questions of one batch (an empty batch is no questions), each a non-empty string;
    anything else is a `protocol_error` naming the first bad one."""
    questions = question_values(model_input)
    for position, question in enumerate(questions):
        if not isinstance(question, str) or not question.strip():
            raise protocol_error(f"question {position} is {question!r}, not a non-empty string")
    return [str(question) for question in questions]  # numpy's str_ as plain str


class RagBundle(mlflow.pyfunc.PythonModel):
    """The pyfunc face of `RagAnswerer`: loads the components `components.json` names."""

    # Else MLflow wraps `predict` in a check of its input against the annotation (and warns
    # on import that there is none): reading the protocol's shapes is `questions_of`'s job.
    _skip_type_hint_validation = True

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        spec = json.loads(read_text(Path(context.artifacts[COMPONENTS])))
        artifacts = {key: Path(context.artifacts[key]) for key in (INDEX, FUSION)}
        retriever = bundle_retriever(artifacts[INDEX], artifacts[FUSION], spec)
        with component_folder(spec["generator"]) as folder:
            model, tokenizer = load_generator(folder)
        prompt = GeneratorParams.model_validate(spec["prompt"])
        precision = BundlePrecision.model_validate(spec.get("precision", {}))
        self.answerer = RagAnswerer(
            retriever,
            CachedGenerator(model.eval(), tokenizer),
            prompt,
            BundleParams.model_validate(spec["serving"]),
            Decoding(prompt.max_new_tokens, resolve_precision(precision.generate, "generate")),
        )

    # `model_input` is not annotated: from one MLflow can read (`list[str]`) it would infer
    # the signature, then refuse the DataFrame payloads, and run the model at save time.
    def predict(
        self, context: mlflow.pyfunc.PythonModelContext, model_input, params: Any = None
    ) -> list[dict[str, str | list[str]]]:
        questions = questions_of(model_input)
        return self.answerer.answer(questions) if questions else []


def use_generation_cache(bundle: mlflow.pyfunc.PyFuncModel, cache: GenerationCache) -> None:
    """Let a loaded bundle answer through `cache`: reuse the answers stored for its generator,
    prompts and decoding, store the ones it makes."""
    bundle.unwrap_python_model().answerer.model.cache = cache


def show_answer_progress(bundle: mlflow.pyfunc.PyFuncModel, label: str) -> None:
    """Let a loaded bundle print progress lines labelled `label` while it generates answers."""
    bundle.unwrap_python_model().answerer.model.progress = label


def components_spec(
    retriever_dir: Path,
    generator_dir: Path,
    generator: GeneratorParams,
    settings: BundleParams,
    precision: PrecisionParams,
) -> dict[str, Any]:
    return {
        "retriever": {"model": settings.retriever_model, "path": str(retriever_dir.resolve())},
        "generator": {"model": settings.generator_model, "path": str(generator_dir.resolve())},
        "prompt": generator.model_dump(mode="json"),
        "serving": settings.model_dump(mode="json"),
        "precision": {  # settings: `auto` resolves where the bundle is loaded
            "encode": precision.encode,
            "generate": precision.generate,
        },
    }


def is_bundle(folder: Path) -> bool:
    return (folder / "artifacts" / f"{COMPONENTS}.json").is_file()


def pinned_components(bundle_dir: Path) -> dict[str, str]:
    """model -> registered version of each component of a bundle already pinned (one built
    over registered components, as an index refresh builds it); an unpinned one is an error."""
    path = bundle_dir / "artifacts" / f"{COMPONENTS}.json"
    spec = json.loads(read_text(path))
    unpinned = [role for role in ("retriever", "generator") if "version" not in spec[role]]
    if unpinned:
        raise InputError(
            f"{path}: the {' and '.join(unpinned)} are local folders, not registered versions: "
            "a refresh serves the champion's registered components"
        )
    return {spec[role]["model"]: str(spec[role]["version"]) for role in ("retriever", "generator")}


def pin_components(bundle_dir: Path, versions: dict[str, str]) -> None:
    """Replace the bundle's local component folders by the registry versions just made."""
    path = bundle_dir / "artifacts" / f"{COMPONENTS}.json"
    spec = json.loads(read_text(path))
    for role in COMPONENT_ROLES:
        component = spec[role]
        if component["model"] not in versions:
            raise InputError(f"{path}: no registered version of {component['model']!r} to pin")
        spec[role] = {"model": component["model"], "version": versions[component["model"]]}
    write_json(path, spec)


def save_bundle(
    out_dir: Path,
    index_dir: Path,
    fusion_file: Path,
    spec: dict[str, Any],
) -> None:
    with atomic_path(out_dir) as tmp:
        staging = tmp.parent / f"{COMPONENTS}.json"
        write_json(staging, spec)
        mlflow.pyfunc.save_model(
            str(tmp),
            python_model=MODEL_CODE,
            artifacts={INDEX: str(index_dir), FUSION: str(fusion_file), COMPONENTS: str(staging)},
            # All three explicit: inferring any would load the whole model at save time.
            signature=SIGNATURE,
            input_example=INPUT_EXAMPLE,
            pip_requirements=pinned_requirements(Path(MODEL_CODE)),
        )


def is_pickle(path: Path) -> bool:
    """A file named as a pickle, or whose first bytes are a pickle's (protocol 2 and later)."""
    if path.suffix.lower() in PICKLE_SUFFIXES:
        return True
    with path.open("rb") as handle:
        head = handle.read(2)
    return len(head) == 2 and head[0] == 0x80 and head[1] in PICKLE_PROTOCOLS


def check_bundle_folder(folder: Path) -> None:
    """Refuse a folder whose loading would run anything but ragloop's installed model code: a
    pickle anywhere in it, a pyfunc flavor naming another loader, data or code path, or a
    `rag_model.py` that differs from the installed one."""
    rebuild = "rebuild the bundle with this ragloop (`dvc repro bundle`)"
    pickles = [path for path in sorted(folder.rglob("*")) if path.is_file() and is_pickle(path)]
    if pickles:
        raise InputError(
            f"{pickles[0]}: a pickle in a bundle folder (loading it can run any code); ragloop "
            f"bundles are models from code and hold none: {rebuild}"
        )
    mlmodel = folder / "MLmodel"
    if not mlmodel.is_file():
        raise InputError(f"{folder}: not a bundle folder (no MLmodel file)")
    flavor = Model.load(str(mlmodel)).flavors.get("python_function") or {}
    code_file = Path(MODEL_CODE).name
    if (
        flavor.get("loader_module") != CODE_LOADER
        or Path(str(flavor.get("model_code_path", ""))).name != code_file
        or flavor.get("code")
        or "data" in flavor
    ):
        raise InputError(
            f"{mlmodel}: its python_function flavor loads with "
            f"{flavor.get('loader_module')!r} from {flavor.get('model_code_path')!r} (code path "
            f"{flavor.get('code')!r}), not with {CODE_LOADER!r} from {code_file}: {rebuild}"
        )
    copy = folder / code_file
    if not copy.is_file() or copy.read_bytes() != Path(MODEL_CODE).read_bytes():
        raise InputError(
            f"{copy}: not the installed {MODEL_CODE}, and loading the bundle would run it: "
            f"{rebuild}"
        )


def load_bundle(folder: Path) -> mlflow.pyfunc.PyFuncModel:
    """The bundle saved in `folder`, loaded once `check_bundle_folder` found it safe to run."""
    check_bundle_folder(folder)
    return mlflow.pyfunc.load_model(str(folder))


def load_registered_bundle(
    client: MlflowClient, model: str, version: str, dst: Path
) -> mlflow.pyfunc.PyFuncModel:
    """`version` of the bundle `model`, downloaded under `dst` (which must outlive the model),
    checked against its registered manifest, then loaded as a local folder."""
    return load_bundle(verified_download(client, model, version, dst))
