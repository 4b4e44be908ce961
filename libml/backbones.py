"""Every source of a classifier (--arch), pretrained weights (--weights) and the input size (--input_size).

Sources (one --arch value, also the `arch=` keyword of Algorithm.run):
  wrn, resnet18, cnn13   the built-in networks of libml/models.py, unchanged;
  keras:<Name>           keras.applications.<Name> without its top (e.g. keras:ResNet50V2, keras:EfficientNetV2B0,
                         keras:MobileNetV3Small, keras:ConvNeXtTiny);
  hub:<preset>           a KerasHub image backbone, keras_hub.models.Backbone.from_preset(<preset>): a built-in
                         preset name (e.g. hub:resnet_50_imagenet) or a local preset folder (hub:/path/to/folder,
                         written by backbone.save_to_preset);
  <module>:<function>    your builder function(nclass, input_shape) -> keras.Model giving (N, nclass) logits; the
                         module is a dotted name importable from the current folder or a path to a .py file;
  model                  the run directory's model.keras, written by Algorithm.run(model=...) (a keras.Model or a
                         builder callable): evaluate.py, export.py and a resume rebuild the model from that file.

A keras: or hub: backbone becomes the classifier (layer names in quotes)

  images (N, H, W, C) in [-1, 1], the dataset's own size
    -> 'resize'         bilinear resize to --input_size x --input_size (only when that differs from H x W)
    -> 'to_rgb'         the one channel repeated three times (only for one-channel data and a 3-channel backbone)
    -> 'input_scaling'  y = x M + b per pixel (ChannelAffine): the backbone's own input scaling, see below
    -> the backbone (a nested model)
    -> 'pool'           global average pool of a 4-D feature map (N, h, w, F) -> (N, F); for a token sequence
                        (N, T, F) (ViT-style) the class token (token 0) when the backbone's config says
                        use_class_token=True, else the mean over the T tokens (TokenPooling)
    -> 'head_dropout'   (only with dropout > 0)
    -> 'logits'         a new float32 Dense layer with nclass outputs, Glorot-normal kernel, zero bias.

Input scaling. The project's images are x in [-1, 1]; the pixels are p = 127.5 (x + 1) in [0, 255]. For keras:
the application module's own preprocess_input f is measured on probe pixels: f(p) = p A + c with A (3, 3)
(a channel permutation for 'caffe' BGR models) and c (3,) ('tf' mode: x itself; 'torch': ImageNet mean/std;
'caffe': BGR minus the ImageNet means; EfficientNet, ConvNeXt, MobileNetV3: pixels p, as they rescale inside),
so M = 127.5 A and b = 127.5 (1, 1, 1) A + c. For hub: the preset's ImageConverter (image_converter.json) gives
p * scale + offset per channel; a preset without one gets x unchanged.

Weights (--weights): none (random initialisation, seeded by --seed), imagenet (keras: only, the Keras download),
preset (hub: only, the preset's own weights) or PATH, a .weights.h5 or .keras file: first read as the weights of
the whole classifier (the model this run builds, head included); when they do not fit, as the weights of the
backbone alone (the nested keras.applications / KerasHub model; the new head stays randomly initialised); a builder
or built-in model must fit whole. Downloads (imagenet weights, KerasHub presets) need the network: a failed one is
one UserError naming what was fetched and how to give a local file instead.

Settings that fit one source only are refused with one line (`check_settings`).
"""
import dataclasses
import difflib
import importlib
import importlib.util
import io
import os
import sys
import tempfile
import warnings
import zipfile

import keras
import numpy as np

from libml import models
from libml.utils import UserError

BUILTINS = ('wrn', 'resnet18', 'cnn13')
KERAS, HUB, MODEL = 'keras:', 'hub:', 'model'
MODEL_FILE = 'model.keras'  # in the run directory, for --arch=model
WEIGHTS_FILES = ('.weights.h5', '.keras')
SOURCES_TEXT = ('wrn, resnet18, cnn13, keras:<Name> (keras.applications), hub:<preset or folder> (KerasHub), '
                '<module>:<function> (your builder) or model (Algorithm.run(model=...))')


@dataclasses.dataclass(frozen=True)
class Source:
    """One --arch value taken apart: kind is builtin, keras, hub, builder or model; name the part after the prefix."""
    kind: str
    name: str


def parse(arch: str) -> Source:
    """The Source of an --arch value; UserError for a value of no known form."""
    arch = str(arch).strip()
    if arch in BUILTINS:
        return Source('builtin', arch)
    if arch == MODEL:
        return Source('model', arch)
    for prefix, kind in ((KERAS, 'keras'), (HUB, 'hub')):
        if arch.startswith(prefix):
            if not arch[len(prefix):].strip():
                break
            return Source(kind, arch[len(prefix):].strip())
    else:
        module, _, function = arch.rpartition(':')
        if module.strip() and function.strip().isidentifier():
            return Source('builder', arch)
    raise UserError(f'--arch={arch!r} is not a model source; use {SOURCES_TEXT}')


# ----------------------------------------------------------------------------- checks


def keras_application(name: str):
    """The keras.applications builder function `name`; UserError listing close and usual names."""
    known = sorted(n for n in dir(keras.applications) if n[:1].isupper() and callable(getattr(keras.applications, n)))
    if name not in known:
        close = difflib.get_close_matches(name, known, n=4, cutoff=0.5)
        usual = [n for n in ('ResNet50V2', 'EfficientNetV2B0', 'MobileNetV3Small', 'ConvNeXtTiny') if n not in close]
        raise UserError(f'--arch=keras:{name}: keras.applications has no {name}; valid names include '
                        f'{", ".join(close + usual)} (all {len(known)}: dir(keras.applications))')
    return getattr(keras.applications, name)


def is_local_preset(name: str) -> bool:
    return os.path.isdir(os.path.expanduser(name))


def check_hub_preset(name: str) -> None:
    """A hub: preset must be a built-in KerasHub preset, an existing folder or a handle with a scheme (kaggle://,
    hf://)."""
    if is_local_preset(name) or '://' in name:
        return
    import keras_hub
    known = keras_hub.models.Backbone.presets
    if name not in known:
        looks_like_path = os.sep in name or name.startswith(('.', '~'))
        close = difflib.get_close_matches(name, list(known), n=3, cutoff=0.6)
        hint = f' (close: {", ".join(close)})' if close else ''
        what = 'no such folder' if looks_like_path else 'not a KerasHub preset' + hint
        raise UserError(f'--arch=hub:{name}: {what}; give a preset name (keras_hub.models.Backbone.presets) or the '
                        f'folder of a saved preset (backbone.save_to_preset(folder))')


def import_builder(spec: str):
    """The function of '<module>:<function>' ('pkg.module:fn' importable from the current folder, or
    'path/to/file.py:fn'); UserError when the module does not import or has no such function."""
    module_name, _, function = spec.rpartition(':')
    try:
        if module_name.endswith('.py'):
            path = os.path.abspath(os.path.expanduser(module_name))
            if not os.path.isfile(path):
                raise FileNotFoundError(f'no file {path}')
            key = 'fixmatch_builder_' + os.path.splitext(os.path.basename(path))[0]
            spec_ = importlib.util.spec_from_file_location(key, path)
            module = importlib.util.module_from_spec(spec_)
            sys.modules[key] = module
            spec_.loader.exec_module(module)
        else:
            if os.getcwd() not in sys.path and '' not in sys.path:
                sys.path.insert(0, os.getcwd())
            module = importlib.import_module(module_name)
    except Exception as e:  # noqa: BLE001 - any failure of the user's module is the same one line
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f'--arch={spec}: cannot import {module_name} ({type(e).__name__}: {reason}); give a module '
                        f'importable from the current folder or the path of a .py file, then :<function>') from None
    builder = getattr(module, function, None)
    if not callable(builder):
        raise UserError(f'--arch={spec}: {module_name} has no function {function}; define '
                        f'{function}(nclass, input_shape) -> keras.Model there')
    return builder


def check_arch(arch) -> bool:
    """One of wrn, resnet18, cnn13, keras:<Name>, hub:<preset or folder>, <module>:<function> or model"""
    source = parse(arch)
    if source.kind == 'keras':
        keras_application(source.name)
    elif source.kind == 'hub':
        check_hub_preset(source.name)
    elif source.kind == 'builder':
        import_builder(source.name)
    return True


def check_weights(value) -> bool:
    """none, imagenet, preset or the path of an existing .weights.h5 or .keras file"""
    value = str(value)
    if value in ('none', 'imagenet', 'preset'):
        return True
    if not value.endswith(WEIGHTS_FILES):
        raise UserError(f'--weights={value!r} is neither none, imagenet, preset nor a .weights.h5 / .keras file')
    if not os.path.isfile(os.path.expanduser(value)):
        raise UserError(f'--weights={value}: no such file; give the path of a .weights.h5 or .keras file')
    return True


def check_settings(settings, params: dict) -> None:
    """One line for a setting that fits another source only (before anything is written). A WRN setting counts as
    set when it differs from its default (its --local one under --local)."""
    source = parse(settings['arch'])
    arch = settings['arch']
    local = settings.get('local', False)
    if source.kind != 'builtin' or source.name != 'wrn':
        changed = [name for name in ('filters', 'scales', 'repeat')
                   if name in params and settings[name] != params[name].default_for(local)]
        if changed:
            raise UserError(f'--{changed[0]} shapes the WRN only, not --arch={arch}; drop '
                            f'{", ".join("--" + n for n in changed)} or use --arch=wrn')
    weights = settings.get('weights', 'none')
    if weights == 'imagenet' and source.kind != 'keras':
        raise UserError(f'--weights=imagenet is for keras:<Name> (keras.applications), not --arch={arch}; use '
                        f'--weights=none or a weights file (--weights=PATH)')
    if weights == 'preset' and source.kind != 'hub':
        raise UserError(f'--weights=preset is for hub:<preset> (KerasHub), not --arch={arch}; use --weights=none '
                        f'or a weights file (--weights=PATH)')
    if settings.get('input_size', 0) and source.kind not in ('keras', 'hub'):
        raise UserError(f'--input_size resizes the images for a keras: or hub: backbone; --arch={arch} takes the '
                        f'dataset\'s size: drop --input_size')


# ----------------------------------------------------------------------------- layers


@keras.saving.register_keras_serializable(package='fixmatch')
class ChannelAffine(keras.layers.Layer):
    """y[..., j] = sum_i x[..., i] matrix[i][j] + bias[j]: a fixed (not trained) affine map of the channels of
    (N, H, W, C) images, C = len(matrix), C' = len(bias). Computes in float32."""

    def __init__(self, matrix, bias, **kwargs):
        kwargs.setdefault('dtype', 'float32')
        super().__init__(**kwargs)
        self.matrix = [[float(v) for v in row] for row in matrix]
        self.bias = [float(v) for v in bias]

    def call(self, inputs):
        x = keras.ops.cast(inputs, 'float32')
        return keras.ops.matmul(x, np.asarray(self.matrix, np.float32)) + np.asarray(self.bias, np.float32)

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], len(self.bias))

    def get_config(self):
        return {**super().get_config(), 'matrix': self.matrix, 'bias': self.bias}


@keras.saving.register_keras_serializable(package='fixmatch')
class TokenPooling(keras.layers.Layer):
    """(N, T, F) tokens -> (N, F): token 0 (mode 'class', a ViT class token) or the mean over the T tokens ('mean')."""

    def __init__(self, mode='mean', **kwargs):
        super().__init__(**kwargs)
        if mode not in ('class', 'mean'):
            raise ValueError(f'TokenPooling mode must be class or mean, not {mode!r}')
        self.mode = mode

    def call(self, inputs):
        return inputs[:, 0] if self.mode == 'class' else keras.ops.mean(inputs, axis=1)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[2])

    def get_config(self):
        return {**super().get_config(), 'mode': self.mode}


# ----------------------------------------------------------------------------- input scaling


def measured_affine(preprocess, channels=3):
    """(A, c) with preprocess(p) = p A + c for pixels p in [0, 255], measured on probe pixels (0, 255 e_i) and
    checked on two more; UserError when the function is not affine per pixel."""
    probes = np.concatenate([np.zeros((1, channels)), 255 * np.eye(channels), [[100., 50., 200.][:channels]],
                             [[12., 250., 3.][:channels]]]).astype(np.float32)
    out = np.asarray(preprocess(probes.reshape(1, -1, 1, channels).copy()), np.float64).reshape(len(probes), -1)
    c = out[0]
    a = (out[1:channels + 1] - c) / 255
    predicted = probes[channels + 1:].astype(np.float64) @ a + c
    if not np.allclose(predicted, out[channels + 1:], rtol=1e-4, atol=1e-3):
        raise UserError('the backbone\'s preprocess_input is not a per-pixel affine map; use a builder '
                        '(--arch=module:function) that scales the inputs itself')
    return a, c


def from_unit_range(a, c):
    """ChannelAffine arguments for x in [-1, 1] given the pixel map p A + c with p = 127.5 (x + 1):
    M = 127.5 A, b = 127.5 (1 ... 1) A + c."""
    a, c = np.asarray(a, np.float64), np.asarray(c, np.float64)
    return (127.5 * a).tolist(), (127.5 * a.sum(0) + c).tolist()


def converter_affine(converter, channels):
    """(A, c) of a KerasHub ImageConverter: p * scale + offset per channel (scale, offset scalars or per channel)."""
    scale = np.broadcast_to(np.asarray(1.0 if converter.scale is None else converter.scale, np.float64), (channels,))
    offset = np.broadcast_to(np.asarray(0.0 if converter.offset is None else converter.offset, np.float64), (channels,))
    return np.diag(scale), offset


# ----------------------------------------------------------------------------- downloads


def is_download_error(error: BaseException) -> bool:
    """A failed fetch: Keras's 'URL fetch failure' Exception or an OSError (requests' and kagglehub's errors are)."""
    return isinstance(error, OSError) or 'URL fetch failure' in str(error)


def download_failed(what: str, error: BaseException, instead: str) -> UserError:
    reason = str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__
    return UserError(f'could not download {what} ({reason}); with no network, give a local file instead: {instead}')


# ----------------------------------------------------------------------------- building


def build_keras(name, shape, size, weights, dropout, nclass):
    """keras.applications.<name> (no top) as a classifier of (H, W, C) images in [-1, 1]; returns (model, backbone)."""
    builder = keras_application(name)
    try:
        backbone = builder(include_top=False, weights='imagenet' if weights == 'imagenet' else None,
                           input_shape=(size[0], size[1], 3), pooling=None)
    except Exception as e:  # noqa: BLE001
        if weights == 'imagenet' and is_download_error(e):
            raise download_failed(f'the ImageNet weights of keras.applications.{name}', e,
                                  f'--weights=PATH (a .weights.h5 file of {name} without its top, e.g. saved with '
                                  f'keras.applications.{name}(include_top=False).save_weights(...) where there is a '
                                  f'network)') from None
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f'--arch=keras:{name} cannot be built for {size[0]}x{size[1]} images ({reason}); '
                        f'try a larger --input_size') from None
    module = sys.modules[builder.__module__]
    matrix, bias = from_unit_range(*measured_affine(module.preprocess_input))
    return wrap(backbone, shape, size, 3, (matrix, bias), dropout, nclass, name.lower()), backbone


def build_hub(name, shape, input_size, weights, dropout, nclass):
    """A KerasHub backbone from a preset as a classifier; returns (model, backbone)."""
    import keras_hub
    from keras_hub.src.utils import preset_utils
    preset = os.path.expanduser(name) if is_local_preset(name) else name
    instead = ('--arch=hub:/path/to/folder with the preset saved where there is a network '
               '(keras_hub.models.Backbone.from_preset(...).save_to_preset(folder))')
    try:
        backbone = keras_hub.models.Backbone.from_preset(preset, load_weights=weights == 'preset')
        converter = None
        if preset_utils.check_file_exists(preset, preset_utils.IMAGE_CONVERTER_CONFIG_FILE):
            converter = keras_hub.layers.ImageConverter.from_preset(preset)
    except Exception as e:  # noqa: BLE001
        if is_download_error(e) and not is_local_preset(name):
            raise download_failed(f'the KerasHub preset {name}', e, instead) from None
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f'--arch=hub:{name}: cannot load the preset ({type(e).__name__}: {reason}); give the folder '
                        f'of an image backbone saved with backbone.save_to_preset(folder)') from None
    if len(backbone.inputs) != 1 or len(backbone.inputs[0].shape) != 4:
        raise UserError(f'--arch=hub:{name}: {type(backbone).__name__} does not take one batch of images; use an '
                        f'image backbone (e.g. ResNet, ViT, EfficientNet presets)')
    _, height, width, channels = backbone.inputs[0].shape
    if height is not None and width is not None:
        if input_size and (input_size, input_size) != (height, width):
            raise UserError(f'--input_size={input_size}: the preset {name} takes {height}x{width} images only; '
                            f'drop --input_size (the images are resized to {height}x{width})')
        size = (height, width)
    else:
        size = (input_size, input_size) if input_size else tuple(shape[:2])
    channels = channels or shape[-1]
    scaling = from_unit_range(*converter_affine(converter, channels)) if converter is not None else None
    return wrap(backbone, shape, size, channels, scaling, dropout, nclass, backbone.name), backbone


def wrap(backbone, shape, size, channels, scaling, dropout, nclass, name):
    """The classifier around `backbone` (see the module docstring): (N, H, W, C) in [-1, 1] -> (N, nclass) float32."""
    inputs = keras.Input(shape=tuple(shape), dtype='float32', name='images')
    x = inputs
    if tuple(size) != tuple(shape[:2]):
        x = keras.layers.Resizing(size[0], size[1], interpolation='bilinear', dtype='float32', name='resize')(x)
    if shape[-1] == 1 and channels == 3:
        x = keras.layers.Concatenate(dtype='float32', name='to_rgb')([x, x, x])
    elif shape[-1] != channels:
        raise UserError(f'the backbone takes {channels}-channel images and the dataset has {shape[-1]}; use another '
                        f'--arch')
    if scaling is not None:
        x = ChannelAffine(*scaling, name='input_scaling')(x)
    features = backbone(x)
    if isinstance(features, (dict, list, tuple)):
        raise UserError(f'the backbone {backbone.name} gives several outputs; use a backbone with one feature output')
    if len(features.shape) == 4:
        pooled = keras.layers.GlobalAveragePooling2D(name='pool')(features)
    elif len(features.shape) == 3:
        config = backbone.get_config() if hasattr(backbone, 'get_config') else {}
        pooled = TokenPooling('class' if config.get('use_class_token') else 'mean', name='pool')(features)
    else:
        raise UserError(f'the backbone {backbone.name} gives {len(features.shape)}-D features; it must give a feature '
                        f'map (N, h, w, F) or tokens (N, T, F)')
    return keras.Model(inputs, models.dense_head(pooled, nclass, dropout), name=f'{name}_classifier')


def check_user_model(model, nclass, shape, what):
    """UserError unless `model` is a keras.Model taking (N, *shape) and giving (N, nclass) float32 logits."""
    if not isinstance(model, keras.Model):
        raise UserError(f'{what} gave {type(model).__name__}, not a keras.Model; return a keras.Model '
                        f'(nclass, input_shape) -> logits')
    try:
        out = model.compute_output_spec(keras.KerasTensor((None, *shape), 'float32'))
    except Exception as e:  # noqa: BLE001
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f'{what}: the model does not take {tuple(shape)} images ({reason}); build it for '
                        f'input_shape={tuple(shape)}') from None
    if isinstance(out, (list, tuple, dict)) or tuple(out.shape)[1:] != (nclass,):
        got = type(out).__name__ if isinstance(out, (list, tuple, dict)) else tuple(out.shape)
        raise UserError(f'{what}: the model gives {got}, not (N, {nclass}) logits; end it with Dense({nclass})')
    if keras.backend.standardize_dtype(out.dtype) != 'float32':
        raise UserError(f'{what}: the model gives {out.dtype} logits; give its last layer dtype=\'float32\' (mixed '
                        f'precision keeps the logits in float32)')


def build_builder(spec, nclass, shape):
    model = import_builder(spec)(nclass, tuple(shape))
    check_user_model(model, nclass, shape, f'--arch={spec}')
    return model


# ----------------------------------------------------------------------------- run(model=...)


def archive(model, nclass, shape) -> bytes:
    """The .keras file (bytes) of Algorithm.run(model=...): a keras.Model, or a builder (nclass, input_shape) ->
    keras.Model called here. UserError when it is not such a model or cannot be saved."""
    if not isinstance(model, keras.Model):
        if not callable(model):
            raise UserError(f'model= takes a keras.Model or a function (nclass, input_shape) -> keras.Model, not '
                            f'{type(model).__name__}')
        model = model(nclass, tuple(shape))
    check_user_model(model, nclass, shape, 'model=')
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, MODEL_FILE)
        try:
            model.save(path)
        except Exception as e:  # noqa: BLE001
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise UserError(f'model= cannot be saved as a .keras file ({reason}); register its own layers with '
                            f'@keras.saving.register_keras_serializable() (no Lambda layers), or use '
                            f'--arch=module:function') from None
        with open(path, 'rb') as f:
            return f.read()


def from_archive(data: bytes, what: str) -> keras.Model:
    """The keras.Model of a .keras file's bytes (fresh variables, the file's values)."""
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, MODEL_FILE)
        with open(path, 'wb') as f:
            f.write(data)
        try:
            return keras.models.load_model(path, compile=False)
        except Exception as e:  # noqa: BLE001
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise UserError(f'cannot load {what} ({reason}); import the module that registers its layers first') \
                from None


def same_variables(a: bytes, b: bytes) -> bool:
    """Whether two .keras files hold the same variable names and shapes (the same architecture for a checkpoint)."""
    def shapes(data):
        import h5py
        with zipfile.ZipFile(io.BytesIO(data)) as z, h5py.File(io.BytesIO(z.read('model.weights.h5')), 'r') as h:
            found = []
            h.visititems(lambda name, obj: found.append((name, obj.shape)) if isinstance(obj, h5py.Dataset) else None)
            return sorted(found)
    return shapes(a) == shapes(b)


# ----------------------------------------------------------------------------- batch norm, weights


def set_batch_norm(model, momentum: float, synchronized: bool) -> int:
    """Every BatchNormalization layer of `model` (nested ones too) gets `momentum` (moving = momentum moving +
    (1 - momentum) batch) and cross-replica statistics when `synchronized`; returns how many."""
    count = 0
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = float(momentum)
            layer.synchronized = bool(synchronized)
            count += 1
    return count


def load_weights(model, backbone, path: str) -> str:
    """Loads a .weights.h5 / .keras file into the whole classifier, else into `backbone` alone (when not None);
    returns 'classifier' or 'backbone'. UserError when it fits neither."""
    path = os.path.expanduser(path)
    errors = []
    for target, what in ((model, 'classifier'), (backbone, 'backbone')):
        if target is None:
            continue
        try:
            with warnings.catch_warnings():  # a backbone-only file read as the classifier's warns before it fails
                warnings.simplefilter('ignore')
                target.load_weights(path)
            return what
        except Exception as e:  # noqa: BLE001
            errors.append(f'{what}: {str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}'[:200])
    raise UserError(f'--weights={path} fits neither the classifier nor its backbone ({"; ".join(errors)}); give the '
                    f'weights of the same architecture')


def create(source: Source, nclass, shape, weights='none', input_size=0, dropout=0.0, bn_momentum=0.999,
           sync_bn=False, archive_bytes=None) -> keras.Model:
    """The classifier of a non-built-in source (see the module docstring) with its weights loaded, batch norm set."""
    backbone = None
    shape = tuple(int(d) for d in shape)
    if source.kind == 'keras':
        size = (input_size, input_size) if input_size else shape[:2]
        model, backbone = build_keras(source.name, shape, size, weights, dropout, nclass)
    elif source.kind == 'hub':
        model, backbone = build_hub(source.name, shape, input_size, weights, dropout, nclass)
    elif source.kind == 'builder':
        model = build_builder(source.name, nclass, shape)
    elif source.kind == 'model':
        if archive_bytes is None:
            raise UserError('--arch=model is the model.keras that Algorithm.run(model=...) writes in the run '
                            'directory, and there is none; pass model= or another --arch')
        model = from_archive(archive_bytes, MODEL_FILE)
        check_user_model(model, nclass, shape, MODEL_FILE)
    else:
        raise UserError(f'--arch={source.name!r} is not a model source; use {SOURCES_TEXT}')
    if weights not in ('none', 'imagenet', 'preset'):
        load_weights(model, backbone, weights)
    set_batch_norm(model, bn_momentum, sync_bn)
    return model
