"""The bundle an alias serves, loaded the one way `ragloop ask` and `ragloop serve` share.

Both resolve the alias in the project's registry, take the bundle version and the components
it pins from the component cache (downloading and checking only what is not there yet), and
answer through the same pyfunc; the server also needs the passages' texts for its snippets,
which the bundle's own index holds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tasks.lib.serving.bundle import load_bundle
from tasks.lib.serving.component_cache import cached_version, using_cache
from tasks.lib.serving.registry import registry_client

if TYPE_CHECKING:
    import mlflow

    from tasks.lib.core.config import Params


@dataclass(frozen=True)
class ServedBundle:
    model: str  # the registered bundle's name (register.judged)
    version: str
    alias: str  # the alias it was loaded through
    pyfunc: mlflow.pyfunc.PyFuncModel

    @property
    def uri(self) -> str:
        return f"models:/{self.model}/{self.version} (@{self.alias})"

    def docs(self) -> dict[str, dict[str, str]]:
        """id -> {id, title, text} of every passage the bundle's index holds."""
        retriever = self.pyfunc.unwrap_python_model().answerer.retriever
        return {doc["id"]: doc for doc in retriever.docs}

    def answer(self, questions: list[str]) -> list[dict[str, Any]]:
        return self.pyfunc.predict(questions)


def alias_version(params: Params, alias: str) -> str:
    """The version of the served bundle `alias` names now (an MlflowException if none)."""
    client = registry_client(params)
    return str(client.get_model_version_by_alias(params.register_.judged, alias).version)


def load_served_bundle(params: Params, alias: str, version: str | None = None) -> ServedBundle:
    """The bundle `alias` names (or its `version` already resolved), with its components, all
    from the component cache."""
    client = registry_client(params)  # also points mlflow at the project's store
    name = params.register_.judged
    version = version or str(client.get_model_version_by_alias(name, alias).version)
    cache = params.paths.component_cache
    with using_cache(cache):
        pyfunc = load_bundle(cached_version(client, name, version, cache))
    return ServedBundle(name, version, alias, pyfunc)
