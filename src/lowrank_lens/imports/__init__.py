"""Importing checkpoint series trained elsewhere (`lowrank-lens import`): Hugging Face checkpoint folders,
hub revisions, and the official ReLoRA / CoLA / SLTrain scripts' layouts, as run directories."""

from .importer import ImportOptions, import_series

__all__ = ["ImportOptions", "import_series"]
