"""Models: declarative cards in a registry, and loaders that turn a card into a model."""

from naturelens.models.cards import CardError, ModelCard, all_cards, get_card

__all__ = ["CardError", "ModelCard", "all_cards", "get_card"]
