"""LiWi's own models: the shadow head and the alpha decoder (each `ModelMixin, ConfigMixin`, one per file).

Their module paths are recorded in saved pipelines' ``model_index.json``
(``["liwi_diffusers.models.shadow_head", "ShadowHead"]``): keep them stable.
"""

from .alpha_decoder import AlphaDecoder
from .shadow_head import ShadowHead

__all__ = ["AlphaDecoder", "ShadowHead"]
