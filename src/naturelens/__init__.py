"""naturelens: sort photo collections into your classes with large pretrained models."""

from naturelens._version import __version__
from naturelens.taxonomy import Taxonomy, load_taxonomy
from naturelens.workspace.core import Prediction, Workspace

__all__ = ["Prediction", "Taxonomy", "Workspace", "__version__", "load_taxonomy"]
