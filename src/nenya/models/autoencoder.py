"""The convolutional autoencoder of the radar-image recipe (conv + max-pool blocks, a dense embedding).

Encoder: ``nlayers`` blocks of Conv2d (``2**(layer + numfilters)`` channels, kernel ``poolsize``,
ReLU, "same" padding) + MaxPool2d(``poolsize``); flatten; Linear to ``num_dense`` numbers (the
embedding). Decoder: Linear back to the last block's shape, ReLU; mirrored blocks of Conv2d + ReLU +
nearest upsampling; a final linear Conv2d to the input's channel count; zero padding (bottom and
right) back to the input size when the pooling does not divide it (pooling floors, as Keras's does).
"""

from __future__ import annotations

import torch
from torch import nn


def pooled_size(size: int, poolsize: int, nlayers: int) -> int:
    """Size of one axis after ``nlayers`` floor-divisions by ``poolsize``."""
    for _ in range(nlayers):
        size //= poolsize
    return size


def same_conv(cin: int, cout: int, kernel: int) -> nn.Sequential:
    """Conv2d with Keras's "same" padding (for even kernels the extra row/column goes after)."""
    before = (kernel - 1) // 2
    after = kernel - 1 - before
    return nn.Sequential(nn.ZeroPad2d((before, after, before, after)), nn.Conv2d(cin, cout, kernel))


class ConvAutoencoder(nn.Module):
    """Conv/max-pool encoder, dense embedding of ``num_dense`` numbers, mirrored decoder.

    Args:
        input_shape: (channels, height, width) of the model input (after any crop).
        nlayers: number of conv + pool blocks.
        poolsize: pooling factor and conv kernel size.
        numfilters: block ``k`` has ``2**(k + numfilters)`` channels.
        num_dense: length of the embedding.

    Example:
        >>> ae = ConvAutoencoder((1, 64, 96), nlayers=2, poolsize=4, numfilters=2, num_dense=8)
        >>> ae.encode(torch.zeros(3, 1, 64, 96)).shape, ae(torch.zeros(3, 1, 64, 96)).shape
        (torch.Size([3, 8]), torch.Size([3, 1, 64, 96]))
    """

    def __init__(
        self,
        input_shape: tuple[int, int, int] | list[int],
        *,
        nlayers: int = 4,
        poolsize: int = 4,
        numfilters: int = 4,
        num_dense: int = 50,
    ) -> None:
        super().__init__()
        c, h, w = (int(v) for v in input_shape)
        if nlayers < 1 or poolsize < 1 or num_dense < 1 or numfilters < 0:
            raise ValueError(
                f"nlayers, poolsize and num_dense must be >= 1 and numfilters >= 0; got nlayers={nlayers}, "
                f"poolsize={poolsize}, numfilters={numfilters}, num_dense={num_dense}"
            )
        ph, pw = pooled_size(h, poolsize, nlayers), pooled_size(w, poolsize, nlayers)
        if ph < 1 or pw < 1:
            raise ValueError(
                f"an input of {h}x{w} is too small for {nlayers} layers of pool {poolsize} "
                f"(needs at least {poolsize**nlayers} pixels a side); use fewer layers or a smaller pool"
            )
        self.input_shape = (c, h, w)
        self.nlayers, self.poolsize, self.numfilters, self.num_dense = nlayers, poolsize, numfilters, num_dense
        widths = [2 ** (k + numfilters) for k in range(nlayers)]
        enc: list[nn.Module] = []
        cin = c
        for cout in widths:
            enc += [same_conv(cin, cout, poolsize), nn.ReLU(inplace=True), nn.MaxPool2d(poolsize)]
            cin = cout
        self.encoder = nn.Sequential(*enc)
        self.bottleneck = (widths[-1], ph, pw)
        flat = widths[-1] * ph * pw
        self.embed = nn.Linear(flat, num_dense)
        self.expand = nn.Sequential(nn.Linear(num_dense, flat), nn.ReLU(inplace=True))
        dec: list[nn.Module] = []
        cin = widths[-1]
        for cout in reversed(widths):
            dec += [
                same_conv(cin, cout, poolsize),
                nn.ReLU(inplace=True),
                nn.Upsample(scale_factor=poolsize, mode="nearest"),
            ]
            cin = cout
        dec.append(same_conv(cin, c, poolsize))
        out_h, out_w = ph * poolsize**nlayers, pw * poolsize**nlayers
        dec.append(nn.ZeroPad2d((0, w - out_w, 0, h - out_h)))
        self.decoder = nn.Sequential(*dec)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, num_dense) embedding."""
        return self.embed(torch.flatten(self.encoder(x), 1))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """(B, num_dense) -> (B, C, H, W) reconstruction."""
        return self.decoder(self.expand(z).view(z.shape[0], *self.bottleneck))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))


class EmbeddingHead(nn.Module):
    """The encoder half of a :class:`ConvAutoencoder` as a module whose ``forward`` is ``encode``."""

    def __init__(self, autoencoder: ConvAutoencoder) -> None:
        super().__init__()
        self.autoencoder = autoencoder

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.autoencoder.encode(x)
