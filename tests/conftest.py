"""Test-wide settings: never reach a model or dataset hub, and keep torch on the 2 CI cores."""

import os
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Hermetic model cache: the tests never see models a developer downloaded (the tool chain would pick up the
# learned segmenter and give other answers); tests that need a model build a tiny one in their own folder.
os.environ["LIWI_MODELS_CACHE"] = tempfile.mkdtemp(prefix="liwi-test-models-")
