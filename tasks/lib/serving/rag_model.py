"""The bundle's model-from-code file: MLflow runs it on load to build the pyfunc.

Nothing is unpickled: the model object comes from this code, its state from the artifacts.
"""

from mlflow.models import set_model

from tasks.lib.serving.bundle import RagBundle

set_model(RagBundle())
