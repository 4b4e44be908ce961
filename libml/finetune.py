"""Layer-wise learning-rate decay (--layer_decay): the depth of every trainable variable of a Keras model.

USB (microsoft/Semi-supervised-learning, semilearn/nets/utils.py param_groups_layer_decay, with the ViT's
group_matcher in semilearn/nets/vit/vit.py) trains a variable at depth d of a model of depth D with the
learning rate lr * layer_decay^(D - d). For a ViT of L blocks D = L + 1 and
  d = 0       the embedding: patch embedding, position embedding, class token;
  d = i + 1   transformer block i (0-based);
  d = L       also the encoder's final norm (USB's matcher maps `norm` to the group of the last block);
  d = L + 1   everything else: the classification head (USB: unmatched names, and variables it does not map).
The same rule for any other model, from the layer names and the topological order of its layers
(`layer_depths`): the layers before the first block are the stem (d = 0), each residual block is one depth,
the weighted layers after the last block are the head (d = D). See `layer_depths` for what a block is.
"""
import re
from typing import Dict, List, Sequence, Tuple

import keras

# The block of a layer from its name: the name up to its first '_'-separated token starting with 'block',
# e.g. stage0_block1_conv1 -> stage0_block1 (this package's WRN and ResNet-18), conv2_block1_1_conv ->
# conv2_block1 (keras.applications ResNet*V2), block1a_dwconv -> block1a (EfficientNet).
BLOCK_NAME = re.compile(r'^((?:[^_]*_)*?block[^_]*)(?:_|$)')
NORM_LAYERS = (keras.layers.BatchNormalization, keras.layers.LayerNormalization, keras.layers.GroupNormalization)


def _is_vit_embedding(layer) -> bool:
    return type(layer).__name__ == 'ViTPatchingAndEmbedding'  # keras_hub.src.models.vit.vit_layers


def _is_vit_encoder(layer) -> bool:
    return type(layer).__name__ == 'ViTEncoder' and hasattr(layer, 'encoder_layers')


def _units(layer) -> List[Tuple[str, str, list]]:
    """The weighted units of `layer` in forward order: (kind, block key, trainable variables), kind one
    of 'embed' (stem by definition), 'block' (key names it), 'norm_after' (a ViT's final norm: joins
    the block before it), 'other'. Nested models are expanded in their own topological order."""
    if _is_vit_embedding(layer):
        return [('embed', '', list(layer.trainable_variables))]
    if _is_vit_encoder(layer):
        units = [('block', f'{layer.name}/{block.name}', list(block.trainable_variables))
                 for block in layer.encoder_layers]
        return units + [('norm_after', '', list(layer.layer_norm.trainable_variables))]
    if isinstance(layer, keras.Model) and getattr(layer, 'layers', None):
        return [unit for sub in layer.layers for unit in _units(sub)]
    variables = list(layer.trainable_variables)
    if not variables:
        return []
    match = BLOCK_NAME.match(layer.name)
    if match:
        return [('block', match.group(1), variables)]
    return [('norm' if isinstance(layer, NORM_LAYERS) else 'other', '', variables)]


def _unit_depths(units) -> Tuple[List[int], int]:
    """(depth of each unit, D): see `layer_depths`."""
    if not any(kind == 'block' for kind, _, _ in units):
        # No blocks: every weighted layer is its own depth, a normalisation joining the layer before it.
        depths, depth = [], -1
        for kind, _, _ in units:
            if not (kind in ('norm', 'norm_after') and depth >= 0):
                depth += 1
            depths.append(depth)
        return depths, max(depth, 0)
    depths, seen, depth, pending = [], {}, 0, []
    for number, (kind, name, _) in enumerate(units):
        if kind == 'block':
            for earlier in pending:  # weighted layers between two blocks belong to the block before
                depths[earlier] = depth
            pending = []
            depth = seen.setdefault(name, len(seen) + 1)  # a block's depth: its rank of first appearance
            depths.append(depth)
        elif kind == 'norm_after':
            depths.append(depth)
        elif not seen:  # before the first block: the stem
            depths.append(0)
        else:
            pending.append(number)
            depths.append(None)
    head = len(seen) + 1
    return [head if d is None else d for d in depths], head


def variable_depths(model: keras.Model) -> Tuple[Dict[int, int], int]:
    """({id(variable): depth} over the model's trainable variables, D the depth of the head)."""
    units = _units(model)
    depths, head = _unit_depths(units)
    found = {}
    for (_, _, variables), depth in zip(units, depths):
        for variable in variables:
            found.setdefault(id(variable), depth)
    for variable in model.trainable_variables:  # a variable no layer listed (shared, custom): the head's
        found.setdefault(id(variable), head)
    return found, head


def layer_depths(model: keras.Model) -> Dict[str, int]:
    """{variable path: depth} of every trainable variable of `model`, any Keras model:

    - a KerasHub ViT backbone (keras_hub.models.ViTBackbone, alone or inside a model): its
      ViTPatchingAndEmbedding (patch and position embeddings, class token) d = 0, transformer block i
      d = i + 1, the encoder's final LayerNorm d = L (USB: with the last block), the rest d = L + 1;
    - otherwise, from the model's layers in topological order (a nested model's layers in its own
      order): a layer belongs to a block when its name has a '_'-separated token starting with 'block'
      (BLOCK_NAME: stage0_block1_conv1 -> block stage0_block1); consecutive layers of one block share a
      depth, the blocks in order get d = 1, 2, ...; weighted layers before the first block are the stem
      (d = 0), weighted layers between two blocks join the block before them, those after the last block
      are the head (d = L + 1). This package's WRN: stem_conv 0, each residual block stage{s}_block{b}
      one depth, head_bn and the logits dense L + 1 (WRN-28-2: L = 12);
    - a model without such names: each weighted layer is its own depth in topological order (a batch
      or layer norm joins the layer before it): the first 0, the last D.
    Variables no layer lists get the head's depth (as USB's default group).
    """
    depths, _ = variable_depths(model)
    return {v.path: depths[id(v)] for v in model.trainable_variables}


def lr_scales(model: keras.Model, variables: Sequence, layer_decay: float) -> List[float]:
    """The learning-rate factor layer_decay^(D - d) of each of `variables` (model variables, and any
    other trained variable, such as an algorithm's own head, at the head's depth D, factor 1)."""
    depths, head = variable_depths(model)
    return [float(layer_decay) ** (head - depths.get(id(v), head)) for v in variables]
