"""lmrec: recommender systems where pretrained language models do real work."""

from lmrec.data.schema import Dataset, Vocab
from lmrec.errors import DataError, LmrecError

__version__ = "0.1.0"

__all__ = ["DataError", "Dataset", "LmrecError", "Vocab", "__version__"]
