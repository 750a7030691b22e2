"""Models: typed cards in a cached registry, and loaders that turn a card into a model.

``resolve`` turns what a user typed into a card once; ``naturelens.models.backbones.load_model``
loads a card's weights once per process; ``naturelens.models.device`` decides where and in
which precision every model runs; ``naturelens.models.vision`` holds one module per vision
architecture family.
"""

from naturelens.models.cards import CardError, ModelCard, all_cards, get_card, make_card, resolve

__all__ = ["CardError", "ModelCard", "all_cards", "get_card", "make_card", "resolve"]
