"""The diffusers pipeline (`LiWiDecompositionPipeline`) and a tiny configuration of it for tests."""

from .pipeline_liwi import LiWiDecompositionPipeline, LiWiDecompositionPipelineOutput
from .tiny import build_tiny_pipeline

__all__ = ["LiWiDecompositionPipeline", "LiWiDecompositionPipelineOutput", "build_tiny_pipeline"]
