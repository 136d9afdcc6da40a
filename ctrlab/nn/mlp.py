"""Multi-layer perceptron."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

_ACTIVATIONS = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "gelu": nn.GELU,
    "leaky_relu": nn.LeakyReLU,
    "prelu": nn.PReLU,
    "identity": nn.Identity,
}


def make_activation(name: str) -> nn.Module:
    """An activation module by name: one of ``relu, tanh, sigmoid, gelu, leaky_relu, prelu, identity``."""
    try:
        return _ACTIVATIONS[name.lower()]()
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; valid: {', '.join(sorted(_ACTIVATIONS))}") from None


def hidden_layer(input_dim: int, units: int, activation: str, batch_norm: bool) -> list[nn.Module]:
    """``Linear -> (BatchNorm) -> activation`` (no Linear bias under batch norm: BN's shift replaces it)."""
    layers: list[nn.Module] = [nn.Linear(input_dim, units, bias=not batch_norm)]
    if batch_norm:
        layers.append(nn.BatchNorm1d(units))
    layers.append(make_activation(activation))
    return layers


class MLP(nn.Module):
    """``[Linear -> (BatchNorm) -> activation -> (Dropout)] * len(hidden_units) [-> Linear(output_dim)]``.

    ``output_dim=None`` ends on the last hidden layer (``out_features = hidden_units[-1]``,
    or ``input_dim`` when there are no hidden layers); ``output_dim=1`` adds a plain linear
    output layer (a logit). With batch_norm the hidden Linear has no bias (BatchNorm's shift
    replaces it; a bias there would get exactly zero gradient).

    Shapes:
        x: float32 ``[B, input_dim]`` -> ``[B, out_features]``
    """

    def __init__(
        self,
        input_dim: int,
        hidden_units: Sequence[int],
        *,
        activation: str = "relu",
        dropout: float = 0.0,
        batch_norm: bool = False,
        output_dim: int | None = None,
    ) -> None:
        super().__init__()
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        layers: list[nn.Module] = []
        width = int(input_dim)
        for units in hidden_units:
            units = int(units)
            if units < 1:
                raise ValueError(f"hidden_units must be positive, got {list(hidden_units)}")
            layers.extend(hidden_layer(width, units, activation, batch_norm))
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = units
        if output_dim is not None:
            layers.append(nn.Linear(width, int(output_dim)))
            width = int(output_dim)
        self.layers = nn.Sequential(*layers)
        self.out_features = width

    def forward(self, x):
        return self.layers(x)
