"""The data path: files, the shipped Census data and generators in; split, preprocessed tensors
and their batches out (DESIGN: schema -> fitted preprocessing -> in-memory tensors -> batches)."""
from mtlkernels.data import census, recsys, synthetic
from mtlkernels.data.errors import DataError
from mtlkernels.data.frames import MultiTaskData, apply_preprocessing, load_file, load_frame, read_table
from mtlkernels.data.preprocess import Preprocessor
from mtlkernels.data.schema import DataSchema, MultiValueField, Split, Task
from mtlkernels.data.table import Bags, TabularData

__all__ = ["Bags", "DataError", "DataSchema", "MultiTaskData", "MultiValueField", "Preprocessor", "Split",
           "TabularData", "Task", "apply_preprocessing", "census", "load_file", "recsys", "synthetic", "load_frame", "read_table"]
