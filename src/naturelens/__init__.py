"""naturelens: sort photo collections into your classes with large pretrained models."""

__version__ = "0.1.0"

from naturelens.taxonomy import Taxonomy, load_taxonomy  # noqa: E402
from naturelens.workspace.core import Prediction, Workspace  # noqa: E402

__all__ = ["Prediction", "Taxonomy", "Workspace", "__version__", "load_taxonomy"]
