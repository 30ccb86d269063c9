"""Layers and multi-task ranking models built on grouped matrix products and ``gate_mix``."""
from mtlkernels.nn.aitm import AITM
from mtlkernels.nn.base import MultiTaskModel
from mtlkernels.nn.dselect import DSelectK, DSelectKGates
from mtlkernels.nn.esmm import ESM2, ESMM
from mtlkernels.nn.features import FeatureEmbedding, FeatureSchema, SparseField, WithFeatures
from mtlkernels.nn.gates import Gates
from mtlkernels.nn.grouped import GroupedLinear, GroupedMLP
from mtlkernels.nn.mmoe import MMoE, OMoE, SharedBottom
from mtlkernels.nn.pepnet import GateNUs, PEPNet
from mtlkernels.nn.ple import CGC, PLE
from mtlkernels.nn.towers import Towers

__all__ = ["AITM", "CGC", "DSelectK", "DSelectKGates", "ESM2", "ESMM", "FeatureEmbedding", "FeatureSchema", "GateNUs", "Gates", "GroupedLinear",
           "GroupedMLP", "MMoE", "MultiTaskModel", "OMoE", "PEPNet", "PLE", "SharedBottom", "SparseField", "Towers",
           "WithFeatures"]
