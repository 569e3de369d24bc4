"""cache2cache: language models that talk through their KV caches.

    from cache2cache import load_model, Fuser, C2CModel
    receiver, sharer = load_model("tiny-llama"), load_model("tiny-qwen2")
    fuser = Fuser.for_pair(receiver.name, ..., sharer.name, ...)  # or Fuser.from_pretrained(dir)
    C2CModel(receiver, [sharer], [fuser]).generate(["What is a KV cache?"])
"""

__version__ = "0.1.0"

from .errors import C2CError  # noqa: E402
from .fuser.config import FuserConfig  # noqa: E402
from .fuser.model import Fuser  # noqa: E402
from .inference.pipeline import C2CModel, GenerateOptions  # noqa: E402
from .kv import ModelGeometry  # noqa: E402
from .models.loading import LoadedModel, load_model  # noqa: E402

__all__ = ["C2CError", "C2CModel", "Fuser", "FuserConfig", "GenerateOptions", "LoadedModel", "ModelGeometry",
           "load_model", "__version__"]
