"""Can model B reuse model A's cache? Only if they share architecture shapes, tokenizer and chat template:
then A's token positions, KV shapes and hidden sizes mean the same thing to B."""

from __future__ import annotations

from ..errors import C2CError
from ..kv import ModelGeometry
from ..models.loading import LoadedModel


def check_same_base(a: LoadedModel, b: LoadedModel) -> None:
    """Raise C2CError, naming the first difference, unless B can reuse A's caches."""
    ga, gb = ModelGeometry.from_config(a.model.config), ModelGeometry.from_config(b.model.config)
    if ga != gb:
        raise C2CError(f"{a.name} and {b.name} have different cache shapes ({ga.arch}, {ga.num_layers} layers vs "
                       f"{gb.arch}, {gb.num_layers} layers): not fine-tunes of one base")  # fmt: skip
    ha = a.model.config.get_text_config().hidden_size
    if ha != b.model.config.get_text_config().hidden_size:
        raise C2CError(f"{a.name} and {b.name} have different hidden sizes")
    if a.tokenizer.get_vocab() != b.tokenizer.get_vocab():
        raise C2CError(f"{a.name} and {b.name} use different tokenizers")
    if a.tokenizer.chat_template != b.tokenizer.chat_template:
        raise C2CError(f"{a.name} and {b.name} use different chat templates")
