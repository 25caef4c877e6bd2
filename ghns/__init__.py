"""GHNS: the feature generator of hard negative samples for fine-grained image recognition."""

__version__ = "0.1.0"
