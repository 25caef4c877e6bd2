"""Stage 3 (paper 3.3): the parts classifier trained with generated hard negatives (Eq. 8-10),
the original-image and object classifiers (cls + triplet), and their fusion (Eq. 11)."""
