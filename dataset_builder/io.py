"""Reading LiWi-format rows back as layered images; lives in the library, re-exported here."""

from liwi_diffusers.layered_dataset import (
    decode_image,
    iter_layered,
    load_layered_dataset,
    read_shard,
    row_composite,
    row_to_layered,
)

__all__ = ["decode_image", "iter_layered", "load_layered_dataset", "read_shard", "row_composite", "row_to_layered"]
