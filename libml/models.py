"""Classifier networks: WRN-28-k (FixMatch), ResNet-18 and the 13-layer ConvNet (cnn13).

All models are Keras functional models mapping float32 images (N, H, W, C) with pixel
values in [-1, 1] to float32 logits (N, nclass). Layers follow the global
`keras.mixed_precision` policy; the final dense layer is always float32 so logits are too.

Shared conventions:
- Batch norm: momentum 0.999, epsilon 1e-3 (Keras momentum has the usual meaning:
  moving = momentum * moving + (1 - momentum) * batch).
- Conv kernels: N(0, 1/sqrt(0.5 k^2 out)), i.e. He normal with fan-out, untruncated; dense
  kernels: Glorot normal (truncated, as TF1's glorot_normal_initializer); biases start at 0.
- WRN convolutions have a bias, as the reference's tf.layers.conv2d (every conv output reaches
  a batch norm, so the biases change nothing the network can compute; they are kept for the
  parameter count and a seed-for-seed comparison). ResNet-18 and cnn13 (not in the reference)
  use bias-free convolutions.
- Weight decay applies to conv and dense kernels only, found by what a variable is: the kernel of a
  convolution or dense-like layer (see `decay_variables`); never to biases, batch-norm parameters or
  embeddings.
Other sources of a model (keras.applications, KerasHub, your own builder): libml/backbones.py.
"""
import dataclasses
import math

import keras
import tensorflow as tf

from libml.utils import UserError

BN_MOMENTUM = 0.999
BN_EPSILON = 1e-3
LEAK = 0.1
ARCHS = ('wrn', 'resnet18', 'cnn13')


def conv_init():
    """He normal initializer with fan-out (std = sqrt(2 / (k * k * out_channels))), untruncated."""
    return keras.initializers.VarianceScaling(2.0, 'fan_out', 'untruncated_normal')


def conv(x, filters, kernel, stride=1, padding='same', name=None, bias=False):
    """2-D convolution with fan-out He init (and a zero-initialised bias when `bias`); returns
    (N, H/stride, W/stride, filters)."""
    return keras.layers.Conv2D(filters, kernel, strides=stride, padding=padding, use_bias=bias,
                               kernel_initializer=conv_init(), name=name)(x)


@dataclasses.dataclass(frozen=True)
class Norm:
    """Batch-norm settings shared by every BN layer of a model."""
    momentum: float = BN_MOMENTUM
    synchronized: bool = False  # cross-replica batch statistics under tf.distribute
    fused: bool = True          # FusedBatchNorm for training; False: plain Keras layers (evaluation, export)


class FusedBatchNorm(keras.layers.BatchNormalization):
    """keras.layers.BatchNormalization (same variables, same results) whose training-mode pass over
    (N, H, W, C) images is TensorFlow's fused kernel: the batch moments and the normalisation in one
    op forward and one op backward (oneDNN's on a CPU), instead of Keras's separate moments,
    multiplications and their gradients. Moving statistics: moving = momentum moving + (1 - momentum)
    batch, with the biased batch variance, as Keras. Other cases (inference, masks, renorm,
    synchronized statistics, other ranks) are Keras's own code."""

    def call(self, inputs, training=None, mask=None):
        if not (training and self.trainable) or mask is not None or self.renorm or self.synchronized \
                or len(inputs.shape) != 4 or self.axis not in (-1, 3) or not (self.scale and self.center):
            return super().call(inputs, training=training, mask=mask)
        x = tf.cast(inputs, tf.float32)
        empty = tf.zeros([0], tf.float32)
        y, mean, unbiased, _, _, _ = tf.raw_ops.FusedBatchNormV3(
            x=x, scale=tf.cast(self.gamma, tf.float32), offset=tf.cast(self.beta, tf.float32), mean=empty,
            variance=empty, epsilon=self.epsilon, is_training=True, data_format='NHWC')
        count = tf.cast(tf.size(x) // tf.shape(x)[-1], tf.float32)
        variance = unbiased * ((count - 1) / count)  # the kernel returns the Bessel-corrected variance
        self.moving_mean.assign(self.moving_mean * self.momentum + mean * (1.0 - self.momentum))
        self.moving_variance.assign(self.moving_variance * self.momentum + variance * (1.0 - self.momentum))
        return tf.cast(y, self.compute_dtype)


def bn(x, norm, name=None):
    """Batch norm over the channel axis (epsilon 1e-3, momentum norm.momentum); shape unchanged."""
    layer = FusedBatchNorm if norm.fused and not norm.synchronized else keras.layers.BatchNormalization
    return layer(momentum=norm.momentum, epsilon=BN_EPSILON, synchronized=norm.synchronized, name=name)(x)


def bn_lrelu(x, norm, name):
    """Batch norm then leaky ReLU (slope 0.1); shape unchanged. Layers: `name`_bn, `name`_act."""
    x = bn(x, norm, name + '_bn')
    return keras.layers.LeakyReLU(negative_slope=LEAK, name=name + '_act')(x)


def head(x, nclass, dropout, name='logits'):
    """Global average pool, optional dropout, float32 dense: (N, H, W, C) -> (N, nclass) float32."""
    return dense_head(keras.layers.GlobalAveragePooling2D(name='pool')(x), nclass, dropout, name)


def dense_head(pooled, nclass, dropout, name='logits'):
    """Optional dropout, then the float32 dense classifier: (N, F) pooled features -> (N, nclass) float32 logits."""
    if dropout > 0:
        pooled = keras.layers.Dropout(dropout, name='head_dropout')(pooled)
    return keras.layers.Dense(nclass, kernel_initializer=keras.initializers.GlorotNormal(),
                              dtype='float32', name=name)(pooled)


def auto_scales(shape):
    """Number of WRN stages for an (H, W, C) image: ceil(log2(W)) - 2 (3 for 32 px, 5 for 96 px)."""
    return int(math.ceil(math.log2(shape[1]))) - 2


# ----------------------------------------------------------------------------- WRN

def wrn_block(x, filters, stride, norm, name, activate_before_residual=False):
    """Pre-activation residual block, the reference's `residual`: (N, H, W, Cin) -> (N, H/stride,
    W/stride, filters).

    a = leaky ReLU(BN(x)); main path conv3x3(stride)(a) -> BN -> leaky ReLU -> conv3x3. The
    shortcut is x itself, or a 1x1 conv(stride) of x when the width changes (Cin != filters).
    Only with `activate_before_residual` (the first block of stage 0) does the shortcut start from
    a instead of the raw x. Convolutions have biases.
    """
    act = bn_lrelu(x, norm, name + '_1')
    shortcut = act if activate_before_residual else x
    y = conv(act, filters, 3, stride, name=name + '_conv1', bias=True)
    y = bn_lrelu(y, norm, name + '_2')
    y = conv(y, filters, 3, name=name + '_conv2', bias=True)
    if x.shape[-1] != filters:
        shortcut = conv(shortcut, filters, 1, stride, name=name + '_shortcut', bias=True)
    return keras.layers.Add(name=name + '_add')([shortcut, y])


def wrn(nclass, shape, filters, scales, repeat, norm, dropout):
    """WRN (the reference's ResNet.classifier): stem conv3x3 to 16 channels, `scales` stages of
    `repeat` blocks, then BN -> leaky ReLU -> global average pool -> dense.

    Stage s has `filters << s` channels; its first block has stride 2 for s > 0; only the first
    block of stage 0 activates before the residual. Stage outputs are the Add layers named
    'stage{s}_block{repeat-1}_add'. Name: wrn{depth}_{k}, depth = 2 * repeat * scales + 4 (28 for
    the standard 3 x 4 layout), k = filters / 16. No input whitening (the reference's default).
    """
    inputs = keras.Input(shape=shape, dtype='float32', name='images')
    x = conv(inputs, 16, 3, name='stem_conv', bias=True)
    for s in range(scales):
        for b in range(repeat):
            stride = 2 if s > 0 and b == 0 else 1
            x = wrn_block(x, filters << s, stride, norm, f'stage{s}_block{b}',
                          activate_before_residual=s == 0 and b == 0)
    x = bn_lrelu(x, norm, 'head')
    name = f'wrn{2 * repeat * scales + 4}_{filters / 16:g}'.replace('.', 'p')
    return keras.Model(inputs, head(x, nclass, dropout), name=name)


# ----------------------------------------------------------------------------- ResNet-18

def basic_block(x, filters, stride, norm, name):
    """ResNet BasicBlock (post-activation, ReLU): (N, H, W, Cin) -> (N, H/stride, W/stride, C).

    C = filters. conv3x3(stride) -> BN -> ReLU -> conv3x3 -> BN, plus shortcut (1x1 conv(stride)
    + BN when the shape changes, identity otherwise), then ReLU.
    """
    y = conv(x, filters, 3, stride, name=name + '_conv1')
    y = keras.layers.ReLU(name=name + '_relu1')(bn(y, norm, name + '_bn1'))
    y = bn(conv(y, filters, 3, name=name + '_conv2'), norm, name + '_bn2')
    if x.shape[-1] != filters or stride != 1:
        x = conv(x, filters, 1, stride, name=name + '_shortcut')
        x = bn(x, norm, name + '_shortcut_bn')
    x = keras.layers.Add(name=name + '_add')([x, y])
    return keras.layers.ReLU(name=name + '_relu2')(x)


def resnet18(nclass, shape, norm, dropout):
    """Standard ResNet-18: BasicBlocks [2, 2, 2, 2] with widths 64/128/256/512 (fixed; `filters`
    is not used). Stem: 3x3 conv stride 1 (CIFAR style) when min(H, W) < 64, else 7x7 conv
    stride 2 + 3x3 max-pool stride 2 (ImageNet style). Output stride 8 (CIFAR) or 32.
    """
    inputs = keras.Input(shape=shape, dtype='float32', name='images')
    if min(shape[0], shape[1]) < 64:
        x = conv(inputs, 64, 3, name='stem_conv')
    else:
        x = conv(inputs, 64, 7, 2, name='stem_conv')
    x = keras.layers.ReLU(name='stem_relu')(bn(x, norm, 'stem_bn'))
    if min(shape[0], shape[1]) >= 64:
        x = keras.layers.MaxPooling2D(3, 2, padding='same', name='stem_pool')(x)
    for s in range(4):
        for b in range(2):
            x = basic_block(x, 64 << s, 2 if s > 0 and b == 0 else 1, norm, f'stage{s}_block{b}')
    return keras.Model(inputs, head(x, nclass, dropout), name='resnet18')


# ----------------------------------------------------------------------------- cnn13

def cnn13_layer(x, filters, kernel, norm, name, padding='same'):
    """conv (no bias) -> BN -> leaky ReLU(0.1); spatial size kept ('same') or shrunk by kernel-1."""
    return bn_lrelu(conv(x, filters, kernel, padding=padding, name=name + '_conv'), norm, name)


def cnn13(nclass, shape, norm, dropout):
    """13-layer ConvNet ("conv-large", Laine & Aila / Mean Teacher) with batch norm.

    3 x conv3x3 128 -> maxpool 2 -> dropout 0.5 -> 3 x conv3x3 256 -> maxpool 2 -> dropout 0.5
    -> conv3x3 512 valid -> conv1x1 256 -> conv1x1 128 -> global average pool -> dense.
    Dropout layers draw from Keras's own seeded RNG (keras.utils.set_random_seed).
    """
    inputs = keras.Input(shape=shape, dtype='float32', name='images')
    x = inputs
    for stage, width in enumerate((128, 256)):
        for i in range(3):
            x = cnn13_layer(x, width, 3, norm, f'stage{stage}_{i}')
        x = keras.layers.MaxPooling2D(2, 2, name=f'stage{stage}_pool')(x)
        x = keras.layers.Dropout(0.5, name=f'stage{stage}_dropout')(x)
    x = cnn13_layer(x, 512, 3, norm, 'stage2_0', padding='valid')
    x = cnn13_layer(x, 256, 1, norm, 'stage2_1')
    x = cnn13_layer(x, 128, 1, norm, 'stage2_2')
    return keras.Model(inputs, head(x, nclass, dropout), name='cnn13')


# ----------------------------------------------------------------------------- public API

def create_model(arch, nclass, shape, filters=32, scales=0, repeat=4, sync_bn=False, dropout=0.0,
                 bn_momentum=BN_MOMENTUM, fused_bn=True, weights='none', input_size=0, archive=None):
    """Builds `arch` for (H, W, C) float32 images in [-1, 1]; returns a keras.Model giving
    float32 logits (N, nclass).

    filters/scales/repeat apply to 'wrn' only (scales=0: automatic, see `auto_scales`).
    dropout > 0 adds dropout with that rate before the final dense layer. sync_bn=True
    uses cross-replica batch statistics under tf.distribute; bn_momentum is the decay of the
    batch-norm moving statistics. fused_bn=False builds plain Keras batch-norm layers (the same
    variables and results; for a model saved or exported without this package's classes).
    Any other `arch` (keras:<Name>, hub:<preset>, <module>:<function>, model) is built by
    libml/backbones.py: `weights` none, imagenet, preset or a file; `input_size` the side the images
    are resized to inside the model (0: the dataset's); `archive` the bytes of the run's model.keras
    (arch 'model'). A weights file also loads into a built-in model.
    """
    shape = tuple(int(d) for d in shape)
    norm = Norm(bn_momentum, sync_bn, fused_bn)
    if arch == 'wrn':
        scales = scales or auto_scales(shape)
        model = wrn(nclass, shape, filters, scales, repeat, norm, dropout)
    elif arch == 'resnet18':
        model = resnet18(nclass, shape, norm, dropout)
    elif arch == 'cnn13':
        model = cnn13(nclass, shape, norm, dropout)
    else:
        from libml import backbones
        return backbones.create(backbones.parse(arch), nclass, shape, weights=weights, input_size=input_size,
                                dropout=dropout, bn_momentum=bn_momentum, sync_bn=sync_bn, archive_bytes=archive)
    if weights not in ('none', None):
        from libml import backbones
        if weights in ('imagenet', 'preset'):
            raise UserError(f'--weights={weights} does not apply to --arch={arch}; use --weights=none or a file')
        backbones.load_weights(model, None, weights)
    return model


# Layers with kernels, and the attributes holding them (a Dense/EinsumDense kernel is `_kernel` behind a property).
KERNEL_LAYERS = (keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D, keras.layers.Conv1DTranspose,
                 keras.layers.Conv2DTranspose, keras.layers.Conv3DTranspose, keras.layers.DepthwiseConv1D,
                 keras.layers.DepthwiseConv2D, keras.layers.SeparableConv1D, keras.layers.SeparableConv2D,
                 keras.layers.Dense, keras.layers.EinsumDense)
KERNEL_ATTRIBUTES = ('_kernel', 'kernel', 'depthwise_kernel', 'pointwise_kernel')


def kernel_ids(*objects) -> set:
    """id() of every kernel variable (the kernel, depthwise or pointwise kernel of a convolution or dense-like
    layer) of the given layers and models, nested layers included."""
    found = set()
    for obj in objects:
        layers = obj._flatten_layers(include_self=True, recursive=True) if isinstance(obj, keras.layers.Layer) else []
        for layer in layers:
            if not isinstance(layer, KERNEL_LAYERS):
                continue
            for name in KERNEL_ATTRIBUTES:
                v = layer.__dict__.get(name)
                if v is None and name in ('depthwise_kernel', 'pointwise_kernel'):
                    v = getattr(layer, name, None)
                if isinstance(v, keras.Variable):
                    found.add(id(v))
    return found


def decay_variables(model):
    """The variables weight decay applies to: every trainable conv and dense kernel (no biases, no
    batch-norm parameters, no embeddings), found by identity through the layers, in the order of
    model.trainable_variables."""
    kernels = kernel_ids(model)
    return [v for v in model.trainable_variables if id(v) in kernels]


def features_output(model):
    """The pooled features (N, F) of `model`: the output of its layer 'pool', else the input of the
    Dense layer giving its logits; UserError when it has neither."""
    names = {layer.name for layer in model.layers}
    if 'pool' in names:
        return model.get_layer('pool').output
    last = getattr(model.outputs[0], '_keras_history', None) if getattr(model, 'outputs', None) else None
    layer = last.operation if last is not None else None
    if isinstance(layer, keras.layers.Dense) and len(layer._inbound_nodes) == 1:
        return layer.input
    raise UserError(f'the model {model.name} has no layer named \'pool\' and does not end in one Dense layer, so '
                    f'its pooled features are unknown (ReMixMatch, SimMatch and --abc need them); name the layer '
                    f'giving the features \'pool\'')


def with_features(model):
    """A model sharing `model`'s layers (and variables) that returns [logits (N, nclass), pooled
    features (N, C)]: the features are `features_output(model)` (the layer named 'pool', global average
    pooling in the built-in networks)."""
    return keras.Model(model.inputs, [model.outputs[0], features_output(model)], name=model.name + '_features')
