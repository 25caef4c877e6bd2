"""Networks of every stage (``backbones``, ``localizer``, ``parts``, ``classifiers``).

``N_PARTS``: the paper's number of parts per image (three part boxes, three part networks, three
part embeddings per set); every stage reads it from here.
"""

N_PARTS = 3
