"""PixelCNN++: shifted convolutions, gated resnets over three resolutions, and a
discretized logistic mixture per pixel.

Papers:
  * Salimans, Karpathy, Chen & Kingma 2017, "PixelCNN++: Improving the
    PixelCNN with Discretized Logistic Mixture Likelihood and Other
    Modifications" (the mixture likelihood with linearly coupled colours,
    the edge bins taking the tails; down-shifted and down-right-shifted
    convolutions in two streams, u for the rows above and ul for above and
    to the left, so there is no blind spot; gated resnets with concat_elu;
    down-sampling by strided convolutions, short-cut connections from the
    down-sampling pass to the up-sampling pass; dropout). The network
    follows the authors' code (openai/pixel-cnn, `pixel_cnn_pp/model.py`):
    its "up pass" is our down-sampling pass, its "down pass" our up-sampling one.
  * van den Oord et al. 2016, "Conditional Image Generation with PixelCNN
    Decoders" (class conditioning as a learned bias inside every gate).
  * Ramachandran et al. 2017, "Fast Generation for Convolutional
    Autoregressive Models" (per-layer caches: a sampling step computes each
    layer at the new position only; `CachedSession` below).

How causality holds: a down-shifted convolution (kernel 2x3 over rows i-1..i)
after a one-row down shift sees rows < i only, and so does every u layer
built on it; a down-right-shifted one (2x2 over rows i-1..i, columns j-1..j)
keeps ul at (i, j) a function of pixels before (i, j) in raster order, given
an input that is. Strided 2x2 / 2x3 convolutions padded at the top (and
left) keep both rules at half resolution, where position (p, q) stands for
the full-resolution pixel (2p, 2q); the transposed convolutions write output
row i from input row i // 2 (and ul's column j from input column j // 2)
only. Within a pixel, colours are handled by the likelihood: G's and B's
means read the true earlier colours (`genaug.models.distributions`).

Sizes and speed: the defaults are 16 filters, 1 gated resnet per resolution
in the down-sampling pass (2, 2, 1 in the up-sampling one), 10 logistic
components and no dropout, instead of the paper's 160 filters, 5 resnets
and dropout 0.5 (for CIFAR-10 runs of days on 8 GPUs). Measured on the
project's 2-core CPU at 28x28 grey (batch 128, forward and backward): 16
filters and 1 resnet train at about 80 images/s, 32 filters and 2 resnets
at about 19; at an equal 2 minutes on photo patches the small network
reached 6.5 test bits/dim, the large one 8.7 (it saw a sixth of an epoch),
and PixelCNN 7.1 (benchmarks/README.md). Dropout only pays once a model
overfits, and training keeps the weights of the best validation score
anyway. `channels`, `resnets`, `mixtures` and `dropout` restore the paper's
sizes on a GPU.

NOTE: no weight normalisation and no data-dependent initialisation (the
paper uses both): the one training loop has no initialisation pass, and the
gated resnets' second convolution starts at a tenth of PyTorch's default
scale (the authors' `init_scale=0.1`), so every block starts close to the
identity and deep stacks train stably with Adam.
NOTE: down-sampling gives ceil(H/2) x ceil(W/2) and up-sampling is cropped
to the size of the short-cut it meets, so any H, W >= 1 works (the authors'
code needs multiples of 4).
NOTE: the sampler couples G and B to the drawn *8-bit* earlier colours (the
values the likelihood conditions on), where the authors' sampler uses the
continuous draw clipped to [-1, 1]; so sampling draws exactly from the
distribution the likelihood scores.
NOTE: the sampler draws each colour from the mixture's conditional given the
colours before it in the canvas, re-drawing the component from its posterior
given them; the authors draw one component per pixel, which is the same
distribution when nothing is kept, but a completion that keeps R and draws G
and B must weigh the components by how well they explain the kept R.
NOTE: images with C colours other than 1 or 3 get one coupling coefficient
per pair of colours (k, j < k); for RGB that is the paper's three.
NOTE: a class is a learned bias (an embedding, initialised at N(0, 0.05^2)
like the authors' projection of a one-hot h) added to every gated resnet's
gate inputs; y=None on a conditional model leaves it out.
NOTE: `temperature` T samples a tempered mixture: the logits divided by T and
every logistic scale multiplied by T (T < 1 sharpens both; T = 1 is the model).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genaug.errors import GenaugError
from genaug.models.autoregressive import AutoregressiveModel, NaiveSession, PixelSession, at_least_float32
from genaug.models.base import check_int_options
from genaug.models.distributions import (
    couple_means,
    discretized_logistic_mixture_log_prob,
    draw_discretized_logistic,
    draw_mixture_component,
    logistic_bin_log_prob,
    logistic_mixture_channels,
    split_logistic_mixture,
    to_unit_values,
)

# Largest value of each integer option: far past any useful size, small enough
# that a typo or a hostile checkpoint cannot ask for terabytes of weights.
OPTION_LIMITS = {"channels": 1024, "resnets": 64, "mixtures": 256}
RESOLUTIONS = 3  # full, half and quarter resolution, as in the paper
SECOND_CONV_SCALE = 0.1  # the authors' init_scale of a gated resnet's second convolution
CLASS_BIAS_STD = 0.05  # the authors' initialisation of the class projection


@dataclass
class _Sizes:
    channels: int
    resnets: int
    mixtures: int


@dataclass
class PixelCNNPlusPlusConfig:
    """Constructor options of PixelCNN++ (stored in checkpoints as `init_args`).

    `channels`, `resnets` and `mixtures` are integers in 1..OPTION_LIMITS[name],
    `dropout` a number in [0, 1); anything else is a GenaugError naming the
    option, never coerced.
    """

    channels: int = 16  # filters of every layer (nr_filters)
    resnets: int = 1  # gated resnets per resolution in the down-sampling pass (nr_resnet)
    mixtures: int = 10  # logistic components per pixel (nr_logistic_mix)
    dropout: float = 0.0  # inside every gated resnet, in training mode only

    def __post_init__(self) -> None:
        # check_int_options checks every field of what it is given, so the float is checked apart.
        sizes = _Sizes(self.channels, self.resnets, self.mixtures)
        check_int_options(sizes, OPTION_LIMITS, "PixelCNN++")
        self.channels, self.resnets, self.mixtures = sizes.channels, sizes.resnets, sizes.mixtures
        d = self.dropout
        if isinstance(d, bool) or not isinstance(d, numbers.Real) or not (math.isfinite(d) and 0 <= d < 1):
            shown = repr(d) if len(repr(d)) <= 40 else repr(d)[:37] + "..."
            raise GenaugError(f"PixelCNN++ option dropout must be a number in [0, 1), got {shown}")
        self.dropout = float(d)


def concat_elu(x: Tensor) -> Tensor:
    """ELU of x and of -x, concatenated along the channels (keeps both signs' information)."""
    return F.elu(torch.cat([x, -x], 1))


def down_shift(x: Tensor) -> Tensor:
    """Row i gets row i - 1 (zeros in row 0)."""
    return F.pad(x, (0, 0, 1, 0))[:, :, :-1]


def right_shift(x: Tensor) -> Tensor:
    """Column j gets column j - 1 (zeros in column 0)."""
    return F.pad(x, (1, 0, 0, 0))[:, :, :, :-1]


class ShiftedConv2d(nn.Conv2d):
    """A convolution whose output at (i, j) reads input rows i - kh + 1..i: centred on
    column j ("down-shifted"), or over columns j - kw + 1..j with `right` ("down-right").

    With stride 2 the output (p, q) reads from input row 2p (column 2q) back, so
    half-resolution position (p, q) sees what full-resolution (2p, 2q) sees.
    """

    def __init__(self, cin: int, cout: int, kernel: tuple[int, int], *, right: bool = False, stride: int = 1) -> None:
        super().__init__(cin, cout, kernel, stride=stride)
        kh, kw = kernel
        self.pad = (kw - 1, 0, kh - 1, 0) if right else ((kw - 1) // 2, (kw - 1) // 2, kh - 1, 0)

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(F.pad(x, self.pad))


class ShiftedConvTranspose2d(nn.ConvTranspose2d):
    """Doubles the resolution: output row i reads input row i // 2 only (and, with
    `right`, output column j input column j // 2 only); cropped to `size`."""

    def __init__(self, channels: int, *, right: bool) -> None:
        super().__init__(channels, channels, (2, 2) if right else (2, 3), stride=2)
        # A 3-wide kernel writes columns 2q - 1..2q + 1 once the first column is cropped off.
        self.first_column = 0 if right else 1

    def forward(self, x: Tensor, size: tuple[int, int]) -> Tensor:
        h, w = size
        return super().forward(x)[:, :, :h, self.first_column : self.first_column + w]


class GatedResnet(nn.Module):
    """x + a * sigmoid(b), where (a, b) = conv(dropout(concat_elu(conv(concat_elu(x)) + nin(concat_elu(skip))))),
    plus a per-class bias on (a, b) for conditional models."""

    def __init__(self, channels: int, *, right: bool, skip_channels: int, dropout: float, num_classes: int) -> None:
        super().__init__()
        kernel = (2, 2) if right else (2, 3)
        self.conv1 = ShiftedConv2d(2 * channels, channels, kernel, right=right)
        self.skip = nn.Conv2d(2 * skip_channels, channels, 1) if skip_channels else None
        self.dropout = nn.Dropout(dropout)
        self.conv2 = ShiftedConv2d(2 * channels, 2 * channels, kernel, right=right)
        with torch.no_grad():
            self.conv2.weight.mul_(SECOND_CONV_SCALE)
            self.conv2.bias.mul_(SECOND_CONV_SCALE)
        self.embed = None
        if num_classes > 0:
            self.embed = nn.Embedding(num_classes, 2 * channels)
            nn.init.normal_(self.embed.weight, std=CLASS_BIAS_STD)

    def forward(self, x: Tensor, skip: Tensor | None = None, y: Tensor | None = None) -> Tensor:
        h = self.conv1(concat_elu(x))
        if self.skip is not None:
            h = h + self.skip(concat_elu(skip))
        h = self.conv2(self.dropout(concat_elu(h)))
        if self.embed is not None and y is not None:
            h = h + self.embed(y)[:, :, None, None]
        a, b = h.chunk(2, 1)
        return x + a * torch.sigmoid(b)


class PixelCNNPlusPlusNet(nn.Module):
    """The two-stream network: pixels in [-1, 1] [B, C, H, W] -> mixture parameters [B, P, H, W].

    Modules are indexed by resolution s (0 full, 1 half, 2 quarter):
    `down_u[s]` / `down_ul[s]` are the resnets of the down-sampling pass,
    `downsample_*[s - 1]` lead into resolution s, `upsample_*[s]` lead from
    s + 1 up into s, and `up_u[s]` / `up_ul[s]` are the up-sampling pass's
    resnets (one more than `resnets` at s < 2, as in the authors' code), each
    reading the short-cut the down-sampling pass left at its resolution.
    """

    def __init__(self, colours: int, cfg: PixelCNNPlusPlusConfig, num_classes: int) -> None:
        super().__init__()
        f, r = cfg.channels, cfg.resnets

        def resnets(count: int, right: bool, skip: int) -> nn.ModuleList:
            return nn.ModuleList(
                GatedResnet(f, right=right, skip_channels=skip, dropout=cfg.dropout, num_classes=num_classes)
                for _ in range(count)
            )

        # A channel of ones tells the image's zero padding from black pixels (the authors' x_pad).
        self.u_input = ShiftedConv2d(colours + 1, f, (2, 3))
        self.ul_input_above = ShiftedConv2d(colours + 1, f, (1, 3))
        self.ul_input_left = ShiftedConv2d(colours + 1, f, (2, 1), right=True)
        self.down_u = nn.ModuleList(resnets(r, False, 0) for _ in range(RESOLUTIONS))
        self.down_ul = nn.ModuleList(resnets(r, True, f) for _ in range(RESOLUTIONS))
        self.downsample_u = nn.ModuleList(ShiftedConv2d(f, f, (2, 3), stride=2) for _ in range(RESOLUTIONS - 1))
        self.downsample_ul = nn.ModuleList(
            ShiftedConv2d(f, f, (2, 2), right=True, stride=2) for _ in range(RESOLUTIONS - 1)
        )
        self.upsample_u = nn.ModuleList(ShiftedConvTranspose2d(f, right=False) for _ in range(RESOLUTIONS - 1))
        self.upsample_ul = nn.ModuleList(ShiftedConvTranspose2d(f, right=True) for _ in range(RESOLUTIONS - 1))
        counts = [r + 1] * (RESOLUTIONS - 1) + [r]
        self.up_u = nn.ModuleList(resnets(n, False, f) for n in counts)
        self.up_ul = nn.ModuleList(resnets(n, True, 2 * f) for n in counts)
        self.out = nn.Conv2d(f, logistic_mixture_channels(colours, cfg.mixtures), 1)

    def input_u(self, x: Tensor) -> Tensor:
        """The u stream's first layer: at row i, the pixels of rows i - 2..i - 1."""
        return down_shift(self.u_input(_with_ones(x)))

    def input_ul(self, x: Tensor) -> Tensor:
        """The ul stream's first layer: at (i, j), row i - 1 (columns j - 1..j + 1) and pixels (i - 1..i, j - 1)."""
        x = _with_ones(x)
        return down_shift(self.ul_input_above(x)) + right_shift(self.ul_input_left(x))

    def forward(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        u, ul = self.input_u(x), self.input_ul(x)
        us, uls = [u], [ul]  # the short-cuts, popped in reverse by the up-sampling pass
        for s in range(RESOLUTIONS):
            if s > 0:
                u, ul = self.downsample_u[s - 1](u), self.downsample_ul[s - 1](ul)
                us.append(u)
                uls.append(ul)
            for block_u, block_ul in zip(self.down_u[s], self.down_ul[s]):
                u = block_u(u, None, y)
                ul = block_ul(ul, u, y)
                us.append(u)
                uls.append(ul)
        u, ul = us.pop(), uls.pop()
        for s in reversed(range(RESOLUTIONS)):
            if s < RESOLUTIONS - 1:
                u = self.upsample_u[s](u, us[-1].shape[-2:])
                ul = self.upsample_ul[s](ul, uls[-1].shape[-2:])
            for block_u, block_ul in zip(self.up_u[s], self.up_ul[s]):
                u = block_u(u, us.pop(), y)
                ul = block_ul(ul, torch.cat([u, uls.pop()], 1), y)
        return self.out(F.elu(ul))


def _with_ones(x: Tensor) -> Tensor:
    return torch.cat([x, torch.ones_like(x[:, :1])], 1)


class PixelCNNPlusPlus(AutoregressiveModel):
    """Two streams of shifted convolutions over three resolutions and a discretized
    logistic mixture per pixel; exact likelihood, one joint conditional per pixel."""

    name = "pixelcnn++"

    def __init__(
        self,
        image_shape: tuple[int, int, int],
        num_classes: int = 0,
        *,
        channels: int = PixelCNNPlusPlusConfig.channels,
        resnets: int = PixelCNNPlusPlusConfig.resnets,
        mixtures: int = PixelCNNPlusPlusConfig.mixtures,
        dropout: float = PixelCNNPlusPlusConfig.dropout,
    ) -> None:
        super().__init__(image_shape, num_classes)
        self.config = cfg = PixelCNNPlusPlusConfig(channels, resnets, mixtures, dropout)
        self.net = PixelCNNPlusPlusNet(self.image_shape[0], cfg, num_classes)

    def default_training(self) -> dict:
        # Adam at 2e-3, not the 1e-3 of the other autoregressive families (and of the
        # authors, who also had weight normalisation). After 90 s on 28x28 photo patches
        # (one core) 1e-3 / 2e-3 / 4e-3 reached 8.46 / 8.15 / 6.89 test bits/dim: higher
        # is faster early; 2e-3 keeps a margin from divergence over long runs.
        return {"lr": 2e-3}

    def pixel_params(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """[B, P, h, W] mixture parameters of each pixel given the pixels before it (see
        `split_logistic_mixture`), for a uint8 canvas [B, C, h, W] of any size."""
        return at_least_float32(self.net(to_unit_values(x, self.dtype), y))

    def conditional_log_probs(self, params: Tensor, x: Tensor) -> Tensor:
        """[B, 1, H, W] nats of each pixel, its colours jointly, given the pixels before it."""
        return discretized_logistic_mixture_log_prob(x, params, self.config.mixtures)

    def draw_pixel(self, session, i, j, *, generator, temperature) -> None:
        """One `params` call, then each colour k = R, G, B in turn from the mixture's conditional
        given the colours before it in the canvas: a component drawn from its posterior given
        them, then a discretized logistic with the mean coupled to their 8-bit values.

        Those are the values the canvas holds after each write: the drawn ones, or
        a kept subpixel's value where the caller keeps it (completion), which the
        component's posterior then accounts for as well. With nothing kept this
        is the paper's draw: one component, then R, G and B from it.
        """
        colours = self.image_shape[0]
        logits, means, log_scales, coeffs = split_logistic_mixture(session.params(i, j), colours, self.config.mixtures)
        # The tempered mixture (see the module docstring); T = 1 is the model.
        log_weights, log_scales = logits / temperature, log_scales + math.log(temperature)
        unit = torch.zeros_like(means[:, :, :1])  # [n, C, 1]: the colours so far in [-1, 1]
        for k in range(colours):
            # couple_means reads colours < k only, all of them final in the canvas by now.
            mean = couple_means(means[:, : k + 1], coeffs, unit)[:, k]  # [n, M]: every component's
            component = draw_mixture_component(log_weights, generator)[:, None]
            chosen_mean, chosen_log_scale = (t.gather(1, component)[:, 0] for t in (mean, log_scales[:, k]))
            session.write(i, j, k, draw_discretized_logistic(chosen_mean, chosen_log_scale, generator))
            final = session.canvas[:, k, i, j]
            unit[:, k, 0] = to_unit_values(final, unit.dtype)
            if k < colours - 1:  # the posterior over components given the colours so far
                log_weights = log_weights + logistic_bin_log_prob(final[:, None], mean, log_scales[:, k])

    def fast_session(self, n, y, known=None, keep=None) -> PixelSession:
        """The cached session (`CachedSession`): each step computes every layer at the new position only."""
        if self.training and self.config.dropout > 0:
            # Dropout on: the network as trained, which the naive session runs and the cache does not.
            return NaiveSession(self, n, y, known, keep)
        return CachedSession(self, n, y, known, keep)


class CachedSession(PixelSession):
    """Sampling with per-layer caches (Ramachandran et al. 2017), exact for any H, W.

    Every activation of the network is kept in a plane of its resolution's
    size, filled as soon as everything it depends on is final, so each
    generation step computes every layer at the new position only:

      * When row r starts, the u stream (rows above only) is computed for the
        whole row with the network's own modules on the rows they read: the
        down-sampling pass at full resolution, at half resolution row r / 2
        when r is even, quarter row r / 4 when r % 4 == 0, then the
        up-sampling pass back up the same rows. What the ul stream's resnets
        take from it (their 1x1 short-cuts) is computed for the row there too.
      * At pixel (r, c): the ul stream's down-sampling resnets at (r, c); when
        r and c are even, the half-resolution ones at (r/2, c/2), whose inputs
        (full-res (r-1..r, c-1..c)) are done by now; likewise at quarter
        resolution when both are multiples of 4, then the up-sampling pass
        there, whose transposed convolutions write the 2x2 block above them
        at once (it reads that one position only); then the full-res
        up-sampling resnets at (r, c), which read the block written at step
        (2(r//2), 2(c//2)) <= (r, c), and the output layer.

    The ul convolutions at one position are matrix products with 2x2 patches
    of zero-padded channels-last planes (the convolutions' own zero padding;
    channels last so a patch is four contiguous runs), the same arithmetic as
    the full network to float rounding. A step reads only pixels before
    (r, c), so the steps of pixels the caller keeps whole (no `params` call)
    are caught up at the next `params`. The network runs as in eval mode (no
    dropout): `fast_session` returns this session only then.
    """

    def __init__(self, model: PixelCNNPlusPlus, n, y, known=None, keep=None) -> None:
        super().__init__(model, n, y, known, keep)
        net, f = model.net, model.config.channels
        self.net, self.dtype = net, model.dtype
        colours, h, w = model.image_shape
        self.width = w
        self.sizes = [(h, w)]
        for _ in range(RESOLUTIONS - 1):
            ph, pw = self.sizes[-1]
            self.sizes.append(((ph + 1) // 2, (pw + 1) // 2))
        levels = range(RESOLUTIONS)
        zeros = model.net.out.weight.new_zeros

        def rows_planes(s: int, count: int) -> list[Tensor]:  # [n, f, H, W]: the u stream
            return [zeros((n, f, *self.sizes[s])) for _ in range(count)]

        def padded_planes(s: int, count: int, channels: int) -> list[Tensor]:  # [n, H + 1, W + 1, channels]
            return [zeros((n, self.sizes[s][0] + 1, self.sizes[s][1] + 1, channels)) for _ in range(count)]

        # The u stream: down_u[s][k] is level s's input (k = 0: the first or a down-sampled layer), then
        # each resnet's output; up_u[s][k] the up-sampled input (at the lowest level the down pass's last).
        self.down_u = [rows_planes(s, len(net.down_u[s]) + 1) for s in levels]
        self.up_u = [rows_planes(s, len(net.up_u[s]) + 1) for s in levels]
        self.up_u[-1][0] = self.down_u[-1][-1]
        # The ul stream, padded by a row above and a column left (the image one more right): the
        # pixels in [-1, 1] with the channel of ones, concat_elu of every resnet input and short-cut,
        # the raw last layer of each down-sampling level and each level's up-sampled input.
        self.image = zeros((n, h + 1, w + 2, colours + 1))
        self.image[:, 1:, 1:-1, colours] = 1
        self.ce_down = [padded_planes(s, len(net.down_ul[s]) + 1, 2 * f) for s in levels]
        self.ce_up = [padded_planes(s, len(net.up_ul[s]), 2 * f) for s in levels]
        self.ce_up[-1][0] = self.ce_down[-1][-1]
        self.last_down = [padded_planes(s, 1, f)[0] for s in levels[:-1]]
        self.first_up = [zeros((n, *self.sizes[s], f)) for s in levels[:-1]]
        with torch.no_grad():
            self.down_blocks = [[_CachedResnet(b, n, self.sizes[s], y) for b in net.down_ul[s]] for s in levels]
            self.up_blocks = [[_CachedResnet(b, n, self.sizes[s], y) for b in net.up_ul[s]] for s in levels]
            self.input_above = _matrix(net.ul_input_above.weight, net.ul_input_above.bias)
            self.input_left = _matrix(net.ul_input_left.weight, net.ul_input_left.bias)
            self.downsample = [_matrix(conv.weight, conv.bias) for conv in net.downsample_ul]
            # A transposed convolution from one position: [in] -> [2, 2, out] at once.
            self.upsample = [(conv.weight.permute(0, 2, 3, 1).reshape(f, -1), conv.bias) for conv in net.upsample_ul]
            self.output = _matrix(net.out.weight, net.out.bias)
        # Each ul resnet's first-convolution input from the u stream, for the current row of its level.
        self.down_rows: list[list[Tensor | None]] = [[None] * len(b) for b in self.down_blocks]
        self.up_rows: list[list[Tensor | None]] = [[None] * len(b) for b in self.up_blocks]
        self.steps_done = 0
        self.last: Tensor | None = None

    def written(self, i: int, j: int, k: int) -> None:
        self.image[:, i + 1, j + 1, k] = to_unit_values(self.canvas[:, k, i, j], self.dtype)

    def params(self, i: int, j: int) -> Tensor:
        with torch.no_grad():
            while self.steps_done <= i * self.width + j:
                r, c = divmod(self.steps_done, self.width)
                if c == 0:
                    self._row(r)
                self.last = self._pixel(r, c)
                self.steps_done += 1
        return self.last

    # -- the u stream, a row at a time ----------------------------------------------
    def _row(self, r: int) -> None:
        net, y = self.net, self.y
        x = to_unit_values(self.canvas[:, :, max(0, r - 2) : r + 1], self.dtype)
        self.down_u[0][0][:, :, r] = net.input_u(x)[:, :, -1]
        for s in range(RESOLUTIONS):
            if r % (1 << s):
                break
            p, planes = r >> s, self.down_u[s]
            if s > 0:
                planes[0][:, :, p] = net.downsample_u[s - 1](_rows(self.down_u[s - 1][-1], 2 * p))[:, :, -1]
            for k, block in enumerate(net.down_u[s], 1):
                planes[k][:, :, p] = block(_rows(planes[k - 1], p), None, y)[:, :, -1]
                self.down_rows[s][k - 1] = self.down_blocks[s][k - 1].row_input(planes[k][:, :, p])
        for s in reversed(range(RESOLUTIONS)):
            if r % (1 << s):
                continue
            p, planes, skips = r >> s, self.up_u[s], self.down_u[s]
            if s < RESOLUTIONS - 1:
                source = self.up_u[s + 1][-1][:, :, p // 2 : p // 2 + 1]
                planes[0][:, :, p] = net.upsample_u[s](source, (2, self.sizes[s][1]))[:, :, p % 2]
            for k, block in enumerate(net.up_u[s], 1):
                planes[k][:, :, p] = block(_rows(planes[k - 1], p), _rows(skips[len(planes) - 1 - k], p), y)[:, :, -1]
                self.up_rows[s][k - 1] = self.up_blocks[s][k - 1].row_input(planes[k][:, :, p])

    # -- the ul stream, a pixel at a time ---------------------------------------------
    def _pixel(self, r: int, c: int) -> Tensor:
        x = self._input(r, c)
        self.ce_down[0][0][:, r + 1, c + 1] = _concat_elu(x)
        deepest = 0
        for s in range(RESOLUTIONS):
            if r % (1 << s) or c % (1 << s):
                break
            deepest, p, q = s, r >> s, c >> s
            if s > 0:
                x = _apply(self.downsample[s - 1], self.last_down[s - 1][:, 2 * p : 2 * p + 2, 2 * q : 2 * q + 2])
                self.ce_down[s][0][:, p + 1, q + 1] = _concat_elu(x)
            for k, block in enumerate(self.down_blocks[s], 1):
                x = block(self.ce_down[s][k - 1], p, q, x, self.down_rows[s][k - 1][:, q])
                self.ce_down[s][k][:, p + 1, q + 1] = _concat_elu(x)
            if s < RESOLUTIONS - 1:
                self.last_down[s][:, p + 1, q + 1] = x
        for s in reversed(range(deepest + 1)):
            p, q, blocks = r >> s, c >> s, self.up_blocks[s]
            if s < RESOLUTIONS - 1:
                x = self.first_up[s][:, p, q]  # else: the down pass's last output, just computed
            for k, block in enumerate(blocks, 1):
                skip = self.ce_down[s][len(blocks) - k][:, p + 1, q + 1]
                x = block(self.ce_up[s][k - 1], p, q, x, torch.addmm(self.up_rows[s][k - 1][:, q], skip, block.w_skip))
                if k < len(blocks):
                    self.ce_up[s][k][:, p + 1, q + 1] = _concat_elu(x)
            if s > 0:
                self._upsample(s, p, q, x)
        return at_least_float32(_apply(self.output, F.elu(x)))

    def _input(self, r: int, c: int) -> Tensor:
        """The ul stream's first layer at (r, c): row r - 1 seen through a 1x3 kernel, shifted
        down, plus pixels (r-1..r, c-1) through a 2x1 one, shifted right (zero where shifted in)."""
        out = self.first_up[0].new_zeros((self.n, self.first_up[0].shape[-1]))
        if r > 0:
            out = out + _apply(self.input_above, self.image[:, r, c : c + 3])
        if c > 0:
            out = out + _apply(self.input_left, self.image[:, r : r + 2, c])
        return out

    def _upsample(self, s: int, p: int, q: int, x: Tensor) -> None:
        """Level s - 1's up-sampled input on the 2x2 block the transposed convolution writes from (p, q) of level s."""
        weight, bias = self.upsample[s - 1]
        hs, ws = self.sizes[s - 1]
        rows, cols = min(2, hs - 2 * p), min(2, ws - 2 * q)
        block = ((x @ weight).view(x.shape[0], 2, 2, -1) + bias)[:, :rows, :cols]
        self.first_up[s - 1][:, 2 * p : 2 * p + rows, 2 * q : 2 * q + cols] = block
        self.ce_up[s - 1][0][:, 2 * p + 1 : 2 * p + 1 + rows, 2 * q + 1 : 2 * q + 1 + cols] = _concat_elu(block)


class _CachedResnet:
    """A down-right `GatedResnet` at one position: its two 2x2 convolutions as matrix products
    with patches of zero-padded planes; keeps concat_elu of its hidden layer for later patches."""

    def __init__(self, block: GatedResnet, n: int, size: tuple[int, int], y: Tensor | None) -> None:
        f = block.conv1.out_channels
        self.w1 = _matrix(block.conv1.weight)[0]
        self.w2, b2 = _matrix(block.conv2.weight, block.conv2.bias)
        self.b2 = b2 if block.embed is None or y is None else b2 + block.embed(y)
        self.hidden = b2.new_zeros((n, size[0] + 1, size[1] + 1, 2 * f))
        skip = block.skip.weight[:, :, 0, 0]  # [f, 2 * skip channels] over concat_elu of the short-cut
        self.row_bias = block.conv1.bias + block.skip.bias
        if skip.shape[1] == 2 * f:  # the down pass: the short-cut is u, known a row at a time
            self.w_row, self.w_skip = skip.t(), None
        else:  # the up pass: concat_elu(cat(u, ul)) is (u, ul, -u, -ul) through the ELU
            u_part = torch.cat([torch.arange(f), torch.arange(2 * f, 3 * f)]).to(skip.device)
            self.w_row, self.w_skip = skip[:, u_part].t(), skip[:, u_part + f].t()

    def row_input(self, u: Tensor) -> Tensor:
        """[n, W, f]: the first convolution's bias and the u part of the short-cut, for a row of u [n, f, W]."""
        return self.row_bias + concat_elu(u).transpose(1, 2) @ self.w_row

    def __call__(self, inputs: Tensor, p: int, q: int, x: Tensor, extra: Tensor) -> Tensor:
        """[n, f] the block's output at (p, q) for its input `x` [n, f] there; `inputs` is the
        padded plane of concat_elu of its input, `extra` [n, f] the bias and short-cut terms."""
        n = x.shape[0]
        h = torch.addmm(extra, inputs[:, p : p + 2, q : q + 2].reshape(n, -1), self.w1)
        self.hidden[:, p + 1, q + 1] = _concat_elu(h)
        h = torch.addmm(self.b2, self.hidden[:, p : p + 2, q : q + 2].reshape(n, -1), self.w2)
        a, b = h.chunk(2, 1)
        return x + a * torch.sigmoid(b)


def _concat_elu(x: Tensor) -> Tensor:
    """`concat_elu` of channels-last values (the channels are the last dimension)."""
    return F.elu(torch.cat([x, -x], -1))


def _matrix(weight: Tensor, bias: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
    """A convolution as (matrix [kh * kw * in, out], bias), for flattened channels-last patches."""
    return weight.permute(0, 2, 3, 1).reshape(weight.shape[0], -1).t(), bias


def _apply(matrix: tuple[Tensor, Tensor], patch: Tensor) -> Tensor:
    weight, bias = matrix
    return torch.addmm(bias, patch.reshape(patch.shape[0], -1), weight)


def _rows(plane: Tensor, p: int) -> Tensor:
    """Rows p - 2..p of `plane` (fewer at the top edge): all that a 2-row kernel applied twice,
    or a stride-2 one aligned on an even row, needs for row p; the modules pad the rest."""
    return plane[:, :, max(0, p - 2) : p + 1]
