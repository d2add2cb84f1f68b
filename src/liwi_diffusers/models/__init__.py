"""LiWi's own models: the shadow head, the alpha decoder and the prompt head.

Each is a `ModelMixin, ConfigMixin`, one per file.

Their module paths are recorded in saved pipelines' ``model_index.json``
(``["liwi_diffusers.models.shadow_head", "ShadowHead"]``): keep them stable.
"""

from .alpha_decoder import AlphaDecoder
from .prompt_head import PromptHead
from .shadow_head import ShadowHead

__all__ = ["AlphaDecoder", "PromptHead", "ShadowHead"]
