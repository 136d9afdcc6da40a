"""Shared neural blocks for CTR models; every block documents its input/output shapes."""

from ctrlab.nn.attention import MultiHeadSelfAttention
from ctrlab.nn.cin import CIN
from ctrlab.nn.cross import CrossNet, CrossNetV2
from ctrlab.nn.dot import DotInteraction
from ctrlab.nn.embedding import DenseFieldEmbedding, FeatureEmbedding, FieldEmbedding, SequenceInputs, deep_input, numeric
from ctrlab.nn.factorization import FEFMInteraction, FFMInteraction, FMInteraction
from ctrlab.nn.fibinet import BilinearInteraction, SENet
from ctrlab.nn.gates import EmbeddingGate, GatedMLP
from ctrlab.nn.linear import FirstOrder
from ctrlab.nn.mlp import MLP, make_activation
from ctrlab.nn.pairs import num_pairs, pair_indices, projected_pairs
from ctrlab.nn.sequence import (
    AUGRU,
    BSTLayer,
    Dice,
    TargetAttention,
    deep_network,
    dien_auxiliary_loss,
    masked_pool,
    sequence_mask,
)
from ctrlab.nn.two_stream import FeatureSelection, InteractionAggregation

__all__ = [
    "BilinearInteraction",
    "CIN",
    "CrossNet",
    "CrossNetV2",
    "DenseFieldEmbedding",
    "DotInteraction",
    "EmbeddingGate",
    "FEFMInteraction",
    "FFMInteraction",
    "FMInteraction",
    "FeatureEmbedding",
    "FeatureSelection",
    "FieldEmbedding",
    "FirstOrder",
    "GatedMLP",
    "InteractionAggregation",
    "MLP",
    "MultiHeadSelfAttention",
    "SENet",
    "deep_input",
    "make_activation",
    "num_pairs",
    "numeric",
    "pair_indices",
    "projected_pairs",
    "AUGRU",
    "SequenceInputs",
    "deep_network",
    "BSTLayer",
    "Dice",
    "TargetAttention",
    "dien_auxiliary_loss",
    "masked_pool",
    "sequence_mask",
]
