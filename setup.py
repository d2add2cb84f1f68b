"""Packaging for liwi-diffusers (src layout)."""

from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent

# Core: everything `liwi decompose` and `LiWiDecompositionPipeline` need, nothing that downloads.
# torch is left as a range that the CPU build torch==2.13.0 satisfies: install that build first
# (see README) or pip resolves a multi-GB CUDA build.
install_requires = [
    "numpy>=1.26",
    "pillow>=10.0",
    "torch>=2.4",
    "diffusers>=0.42.1",
    "safetensors>=0.4",
    "peft>=0.17",
    "psd-tools>=1.26",
    # contrib: the same cv2 plus cv2.xphoto (shift-map / frequency-selective inpainting)
    "opencv-contrib-python-headless>=4.8",
    # the learned segmenter (ISNet and other ONNX exports); weights are downloaded by `liwi models download`
    "onnxruntime>=1.17",
    # prepares the segmenter once for free input sizes (later peeling rounds run at 640: 0.39 of a pass)
    "onnx>=1.15",
    "scikit-image>=0.22",
    "pymatting>=1.1.12",
    "tqdm>=4.66",
    "python-pptx>=1.0",
]

extras = {
    "eval": ["evaluate>=0.4.3", "datasets>=4.0"],
    "build": ["datasets>=4.0", "transformers>=4.51"],
    "train": ["accelerate>=1.0", "datasets>=4.0", "transformers>=4.51", "tensorboard>=2.14"],
    "demo": ["gradio>=6.0,<7"],
    "ray": ["ray[data]>=2.9"],
}
extras["dev"] = sorted(
    {dep for group in extras.values() for dep in group}
    | {
        "pytest>=8",
        "ruff>=0.6",
        "gradio_client>=1.0",
        "selenium>=4.20",
        "scikit-learn>=1.3",
        "matplotlib>=3.7",
    }
)
extras["all"] = sorted({dep for group in extras.values() for dep in group})

setup(
    name="liwi-diffusers",
    version="0.1.0.dev0",
    description="LiWi: layering in the wild - decompose photos into background, object and shadow layers.",
    long_description=(HERE / "README.md").read_text(encoding="utf-8") if (HERE / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    # src layout: liwi_diffusers (the library) and liwi_dataset_builder (ADD, the `liwi-build` command).
    package_dir={"": "src"},
    packages=find_packages("src"),
    include_package_data=True,
    package_data={
        "liwi_diffusers": [
            "py.typed",
            "metrics/*/*.py",
            "metrics/*/*.md",
            # the shipped checkpoint (liwi_diffusers.checkpoints): model_index, card, component folders
            "checkpoints/*/*.json",
            "checkpoints/*/*.md",
            "checkpoints/*/*/*.json",
            "checkpoints/*/*/*.safetensors",
        ]
    },
    install_requires=install_requires,
    extras_require=extras,
    entry_points={
        "console_scripts": ["liwi=liwi_diffusers.cli:main", "liwi-build=liwi_dataset_builder.cli:main"],
    },
    classifiers=[
        "Programming Language :: Python :: 3",
        "License :: OSI Approved :: Apache Software License",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
        "Topic :: Multimedia :: Graphics",
    ],
)
