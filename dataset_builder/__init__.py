"""ADD: agent-driven data decomposition - photos into a LiWi-format layered dataset.

Installed as the `liwi_dataset_builder` package (folder `dataset_builder/`); command `liwi-build`.
"""
