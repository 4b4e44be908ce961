"""ABC (Lee et al., NeurIPS 2021): an auxiliary balanced classifier, an add-on of FixMatch and FlexMatch (--abc).

An auxiliary dense head (K outputs) on the pooled features of the shared backbone, trained with the model
(and averaged by the EMA); evaluation, evaluate.py and export.py use ITS logits. With N_c the labeled count
of class c, r[c] = min_k N_k / N_c (the classes with labels; 1 for a class without), t/T the fraction of
training done, aux(.) the head's logits on a view's features of the step's one forward pass:
  mask_l_i ~ Bernoulli(r[y_i]);             L_l = mean_l mask_l_i H(y_i, aux(x_i))
  p_a = softmax(aux(weak(u))) (no gradient), y^ = argmax p_a,
  mask_u_i = 1(max p_a >= --abc_confidence) * Bernoulli(1 - (t/T)(1 - r[y^_i]));
                                            L_u = mean_u mask_u_i H(y^_i, aux(strong(u_i)))
  loss += L_l + L_u.
The Bernoulli draws are u < rate, u ~ U[0, 1) stateless in (--seed, step, replica): a resumed run draws the same.
"""
import keras
import numpy as np
import tensorflow as tf

from libml import losses
from libml import models
from libml.settings import Param, in_range

LABELED_SALT, UNLABELED_SALT = 31, 32  # step_seed salts of the Bernoulli draws

PARAMS = dict(
    abc=Param(False, 'ABC (Lee et al., NeurIPS 2021): an auxiliary classifier on the pooled features trained on '
              'class-balanced (Bernoulli-masked) labeled and pseudo-labeled images; evaluation uses it.'),
    abc_confidence=Param(0.95, 'ABC: confidence threshold of the auxiliary pseudo-labels.',
                         check=in_range(0, 1, low_open=True)),
)


def balancing_rates(labeled_counts) -> np.ndarray:
    """r[c] = min_k N_k / N_c over the classes that have labels (1 for a class without), float32."""
    counts = np.asarray(labeled_counts, np.float64)
    present = counts > 0
    low = counts[present].min() if present.any() else 1.0
    return np.where(present, low / np.maximum(counts, 1), 1.0).astype(np.float32)


def labeled_mask(labels, rates, draws):
    """mask_l_i = 1(u_i < r[y_i]) (N,) float, u = `draws`."""
    return tf.cast(draws < tf.gather(rates, tf.cast(labels, tf.int32)), tf.float32)


def unlabeled_mask(probs, rates, progress, draws, confidence):
    """mask_u_i = 1(max p_i >= confidence) * 1(u_i < 1 - progress (1 - r[argmax p_i])) (N,) float."""
    keep = 1 - progress * (1 - tf.gather(rates, tf.argmax(probs, 1)))
    return tf.cast((tf.reduce_max(probs, 1) >= confidence) & (draws < keep), tf.float32)


def abc_terms(aux_labeled, labels, aux_weak, aux_strong, rates, progress, draws_labeled, draws_unlabeled,
              confidence):
    """(L_l, L_u, mask_u) of the module docstring from the auxiliary logits and the draws."""
    mask_l = labeled_mask(labels, rates, draws_labeled)
    term_l = tf.reduce_mean(mask_l * losses.cross_entropy(labels, aux_labeled))
    probs = tf.nn.softmax(tf.stop_gradient(aux_weak))
    mask_u = unlabeled_mask(probs, rates, progress, draws_unlabeled, confidence)
    term_u = tf.reduce_mean(mask_u * losses.cross_entropy(tf.argmax(probs, 1), aux_strong))
    return term_l, term_u, mask_u


def make_head(nclass: int, features: int) -> keras.layers.Dense:
    head = keras.layers.Dense(nclass, kernel_initializer=keras.initializers.GlorotNormal(), dtype='float32',
                              name='abc_head')
    head.build((None, features))
    return head


def with_head(model, head) -> keras.Model:
    """A model sharing `model`'s layers whose output is the auxiliary head's logits on the pooled features."""
    return keras.Model(model.inputs, head(models.features_output(model)), name=model.name + '_abc')


class BalancedHead:
    """The ABC head of one run, made in the strategy scope with the model."""

    def __init__(self, settings, model, labeled_labels, nclass: int, steps_total: int):
        self.settings = settings
        self.model = model
        self.features_model = models.with_features(model)
        self.head = make_head(nclass, self.features_model.outputs[1].shape[-1])
        counts = np.bincount(np.asarray(labeled_labels, np.int64), minlength=nclass)[:nclass]
        self.rates = tf.constant(balancing_rates(counts))
        self.steps_total = steps_total

    def build(self) -> dict:
        return dict(abc_head=self.head)

    def trainable_variables(self) -> list:
        return list(self.head.trainable_variables)

    def loss(self, features_labeled, labels, features_weak, features_strong, step):
        """(L_l + L_u, logs) from this replica's pooled features of the step's pass."""
        s = self.settings
        progress = tf.minimum(tf.cast(step, tf.float32) / max(self.steps_total, 1), 1.0)
        draws_l = tf.random.stateless_uniform(tf.shape(labels)[:1], losses.step_seed(s.seed, step, LABELED_SALT))
        draws_u = tf.random.stateless_uniform(tf.shape(features_weak)[:1],
                                              losses.step_seed(s.seed, step, UNLABELED_SALT))
        aux_labeled, aux_weak, aux_strong = tf.split(self.head(tf.concat(
            [features_labeled, features_weak, features_strong], 0)), [tf.shape(f)[0] for f in
                                                                   (features_labeled, features_weak, features_strong)])
        term_l, term_u, mask_u = abc_terms(aux_labeled, labels, aux_weak, aux_strong, self.rates, progress, draws_l,
                                           draws_u, s.abc_confidence)
        return term_l + term_u, {'losses/abc_labeled': term_l, 'losses/abc_unlabeled': term_u,
                                 'monitors/abc_mask': tf.reduce_mean(mask_u)}

    def classify(self, images, weights=None):
        """The auxiliary logits in inference mode; `weights` {id(variable): value} replaces the trained
        values (the EMA averages)."""
        def values(variables):
            return [weights.get(id(v), v) if weights else v for v in variables]
        model = self.features_model
        features = model.stateless_call(values(model.trainable_variables), model.non_trainable_variables, images,
                                        training=False)[0][1]
        return self.head.stateless_call(values(self.head.trainable_variables), [], features)[0]
