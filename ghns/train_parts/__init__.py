"""Stage 1 (paper 3.1): part networks trained with cls + triplet + adversarial losses, the
embedding table of every (image, part), and FilterNet."""
