"""Weakly supervised localization: object boxes and three part boxes per image."""
