"""Weight-free tools that take a photo apart, and the training-free decomposer built on them.

Each tool is an interface (a `typing.Protocol`) with a CPU default that needs no weights:

- `ObjectProposer` -> `SaliencyProposer` (saliency, focus and frame hypotheses refined by GrabCut);
- `AlphaMatter` -> `ClosedFormMatter` (pymatting closed-form matting, straight colour estimation);
- `Inpainter` -> `OpenCVInpainter` (coarse-to-fine OpenCV inpainting);
- `ShadowExtractor` -> `DarkeningShadowExtractor` (darkening against a shadow-free reference); the trained
  shadow head plugs in as `LearnedShadowExtractor`.

Adapters for real models (``transformers`` mask-generation / detection / depth pipelines, a
``diffusers`` inpainting pipeline) implement the same call signatures and plug into
`ToolChainDecomposer` (and the ADD dataset builder) as constructor arguments. The learned segmenter is an
`OnnxSegmenter` (`liwi models download isnet`); boxes and points (`BoxPrompt`, `PointPrompt`) choose objects,
the shipped prompt head (`LearnedPromptSegmenter`) turns them into masks from the segmenter's features,
and a `TextPromptDetector` (a ``transformers`` zero-shot detector) turns text into boxes. `decompose_layer`
splits an object layer into its parts with the same peeling (a tree: `LayeredImage.parts`).

Mask operations shared by every tool (and the ADD builder) are public here: `dilate`, `erode`, `mask_box`
(`liwi_diffusers.layers.alpha_bbox` for soft alphas, `liwi_diffusers.layers.to_uint8` for 8-bit conversion).

Importing this package does not import pymatting (its numba compile takes about a minute the first
time); `ClosedFormMatter` imports it when first called.
"""

from ._utils import dilate, erode, mask_box
from .decomposer import DecomposerNote, PeelingProposer, ToolChainDecomposer
from .detector import Detection, DetectorError, TextPromptDetector
from .inpainting import Inpainter, OpenCVInpainter
from .learned_prompts import LearnedPromptSegmenter, PromptHeadError
from .learned_shadows import LearnedShadowExtractor, ShadowHeadError
from .matting import AlphaMatter, ClosedFormMatter, Matte, make_trimap
from .prompts import BoxPrompt, PointPrompt, Prompts, parse_prompts
from .proposals import ObjectProposal, ObjectProposer, SaliencyProposer, focus_map, saliency_map
from .recursive import decompose_layer, decompose_to_depth
from .refiner import MatteRefiner, RefinerError
from .segmenter import OnnxSegmenter, Segmenter, SegmenterError
from .shadows import DarkeningShadowExtractor, ShadowExtractor, remove_attached_shadow

__all__ = [
    "AlphaMatter",
    "BoxPrompt",
    "ClosedFormMatter",
    "DarkeningShadowExtractor",
    "DecomposerNote",
    "Detection",
    "DetectorError",
    "Inpainter",
    "LearnedPromptSegmenter",
    "LearnedShadowExtractor",
    "Matte",
    "MatteRefiner",
    "ObjectProposal",
    "ObjectProposer",
    "OnnxSegmenter",
    "OpenCVInpainter",
    "PeelingProposer",
    "PointPrompt",
    "PromptHeadError",
    "Prompts",
    "RefinerError",
    "SaliencyProposer",
    "Segmenter",
    "SegmenterError",
    "ShadowExtractor",
    "ShadowHeadError",
    "TextPromptDetector",
    "ToolChainDecomposer",
    "decompose_layer",
    "decompose_to_depth",
    "dilate",
    "erode",
    "focus_map",
    "make_trimap",
    "mask_box",
    "parse_prompts",
    "remove_attached_shadow",
    "saliency_map",
]
